"""A person's path to a mediator: run it, accept its invitation (from the QR code), and
create an identity that routes through it with `didsession init --mediator`."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Cli
from mediator_proc import MediatorProcess, mediator_process

from didsession.did import PeerResolver


@pytest.fixture
def mediator(tmp_path: Path) -> Iterator[MediatorProcess]:
    proc = mediator_process(tmp_path / "mediator").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbarimg missing: ./run installs it")
def test_scan_invitation_then_init_with_mediation(
    mediator: MediatorProcess, cli_factory: Callable[[str], Cli], tmp_path: Path
) -> None:
    png = tmp_path / "mediator.png"
    with urllib.request.urlopen(f"{mediator.url}/invitation.png", timeout=10) as resp:
        png.write_bytes(resp.read())
    scanned = (
        subprocess.run(
            ["zbarimg", "-q", "--raw", str(png)], capture_output=True, timeout=30, check=True
        )
        .stdout.decode()
        .strip()
    )
    cli = cli_factory("alice")
    accepted = json.loads(cli("accept", scanned, "--json", "--alias", "mediator").stdout)
    health = json.loads(urllib.request.urlopen(f"{mediator.url}/healthz", timeout=10).read())
    assert accepted["did"] == health["did"]

    made = json.loads(cli("init", "--name", "alice", "--mediator", mediator.url, "--json").stdout)
    grant = made["mediation"]
    assert grant["routing_did"] == health["did"] and made["did"] in grant["keylist"]
    # the new DID routes through the mediator: its service names the mediator's DID
    (svc,) = PeerResolver().resolve_sync(made["did"])["service"]
    assert svc["serviceEndpoint"]["uri"] == health["did"]


def test_init_with_unreachable_mediator_is_a_clean_error(cli_factory: Callable[[str], Cli]) -> None:
    from mediator_proc import free_port

    proc = cli_factory("x")("init", "--mediator", f"http://127.0.0.1:{free_port()}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("didsession: error: ")
