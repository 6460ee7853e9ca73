"""Shared fixtures: throw-away identity homes and a runner for the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from didsession.identity import Identity, Store


class Cli:
    """Runs ``didsession`` as a subprocess with its own home, like a person would."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(
        self, *args: str, stdin: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, DIDSESSION_HOME=str(self.home))
        env.pop("DIDSESSION_PASSPHRASE", None)
        proc = subprocess.run(
            [sys.executable, "-m", "didsession.cli", *args],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=60,
        )
        result = subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
        )
        result.stdout_bytes = proc.stdout  # type: ignore[attr-defined]
        if check and proc.returncode != 0:
            raise AssertionError(f"didsession {' '.join(args)} failed:\n{result.stderr}")
        return result


@pytest.fixture
def cli_factory(tmp_path: Path) -> Callable[[str], Cli]:
    def make(name: str) -> Cli:
        return Cli(tmp_path / name)

    return make


@pytest.fixture
def make_identity(tmp_path: Path) -> Callable[..., Identity]:
    def make(name: str, **kwargs: object) -> Identity:
        return Store(tmp_path / f"home-{name}").create(name, **kwargs)  # type: ignore[arg-type]

    return make
