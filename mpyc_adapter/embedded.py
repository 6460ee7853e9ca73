"""The embedded mediator of local mode: a ``didsession-mediator`` on a free loopback port.

It runs as a child process (``python -m mediator``, through :mod:`mpyc_adapter.lifetime`
so that it dies with its parent), not inside party 0: relayed records
then cost party 0's interpreter nothing, and the mediator's event loop never waits for
MPyC's.  Its data directory is throw-away; STUN is off (everything is on loopback); relay
quotas are off (a long computation may move more than the default 1 GiB).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from didsession.errors import ConfigError
from mpyc_adapter.lifetime import child_env

__all__ = ["EmbeddedMediator", "mediator_available", "start_embedded_mediator"]

HOST = "127.0.0.1"


def mediator_available() -> bool:
    """Whether this installation has the mediator (the ``mediator`` package)."""
    try:
        import mediator.app  # noqa: F401
    except ImportError:
        return False
    return True


class EmbeddedMediator:
    """A mediator child process; :attr:`url` is where it listens."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://{HOST}:{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "mediator.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mpyc_adapter.lifetime",  # dies with this process, whatever kills it
                "mediator",
                "--host",
                HOST,
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--no-stun-enabled",
                "--log-format",
                "json",
                "--log-level",
                "warning",
                "--ws-heartbeat",
                "0",
                "--relay-quota-bytes",
                "0",
                "--relay-quota-frames",
                "0",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            # Not in the terminal's process group: a Ctrl-C goes to whoever started it,
            # which stops it (stop()) after its parties; killed first, it would make them
            # fail with "cannot reach the mediator" instead of stopping quietly.
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/healthz`` answers ok.

        Raises:
            ConfigError: the mediator exited or did not become healthy in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"the embedded mediator exited: {self._tail()}")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                    if json.load(resp).get("status") == "ok":
                        return
            time.sleep(0.02)
        self.stop()
        raise ConfigError(f"the embedded mediator did not start in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip().splitlines()[-1][:300]
        except (OSError, IndexError):
            return "no output"


def start_embedded_mediator(data_dir: Path, port: int | None = None) -> EmbeddedMediator:
    """Start a mediator on a free loopback port (call :meth:`EmbeddedMediator.wait_ready`).

    Raises:
        ConfigError: this installation has no mediator.
    """
    if not mediator_available():
        raise ConfigError("this installation has no mediator (package 'mediator')")
    if port is None:
        from mpyc_adapter.launcher import free_ports

        port = free_ports(1)[0]
    return EmbeddedMediator(data_dir, port)
