"""Sessions between two real processes over TCP on loopback: `didsession listen` / `connect`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DIDSESSION_HOME=str(home))
    return subprocess.Popen(
        [sys.executable, "-m", "didsession.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _events(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def _wait_listening(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read().decode() if proc.stderr else "listener died"
    event = json.loads(line)
    assert event["event"] == "listening"
    return event


@pytest.fixture
def pair(cli_factory: Callable[[str], Cli]) -> tuple[Cli, Cli]:
    alice, bob = cli_factory("alice"), cli_factory("bob")
    alice("init", "--name", "alice")
    bob("init", "--name", "bob", "--method", "peer4")
    alice("accept", bob("invite", "--format", "url").stdout.strip(), "--alias", "bob")
    bob("accept", alice("invite", "--format", "url").stdout.strip(), "--alias", "alice")
    return alice, bob


def test_two_processes_exchange_lines(pair: tuple[Cli, Cli]) -> None:
    alice, bob = pair
    port = _free_port()
    listener = _spawn(alice.home, "listen", "--port", str(port), "--once", "--json")
    try:
        _wait_listening(listener)
        lines = [f"line {i} " + "x" * i for i in range(50)]
        connector = _spawn(bob.home, "connect", "alice", "--to", f"127.0.0.1:{port}", "--json")
        assert listener.stdin is not None and connector.stdin is not None
        listener.stdin.write(b"welcome bob\n")
        listener.stdin.flush()
        connector.stdin.write(("\n".join(lines) + "\n").encode())
        connector.stdin.flush()
        # Bob ends the session only once alice's line is in: closing a session drops what
        # is still in flight towards the closing side (spec §9), so wait for it first.
        assert connector.stdout is not None
        early = []
        while not any('"welcome bob"' in line for line in early):
            line = connector.stdout.readline().decode()
            assert line, "connect ended before alice's line arrived"
            early.append(line)
        out_b, err_b = connector.communicate(timeout=30)
        out_b = "".join(early).encode() + out_b
        out_a, err_a = listener.communicate(timeout=30)
    finally:
        listener.kill()
    ev_a, ev_b = _events(out_a), _events(out_b)
    est_a = next(e for e in ev_a if e["event"] == "established")
    est_b = next(e for e in ev_b if e["event"] == "established")
    # both ends agree on who, which session, which suite; each sees the other's DID
    assert est_a["session_id"] == est_b["session_id"]
    assert est_a["suite"] == est_b["suite"] == "X25519-AES256GCM-SHA256"
    assert est_a["alias"] == "bob" and est_b["alias"] == "alice"
    # the path as 'didsession status' names it (not the negotiated framing, "stream")
    assert est_a["path"]["kind"] == est_b["path"]["kind"] == "direct"
    assert est_b["path"]["remote"] == ["127.0.0.1", port]
    received = [e["text"] for e in ev_a if e["event"] == "message"]
    assert received == lines  # every line, in order, once
    assert [e["text"] for e in ev_b if e["event"] == "message"] == ["welcome bob"]
    assert ev_a[-1]["event"] == "closed" and ev_b[-1]["event"] == "closed"
    assert connector.returncode == 0 and listener.returncode == 0, (err_a, err_b)


def test_listener_refuses_a_stranger(
    pair: tuple[Cli, Cli], cli_factory: Callable[[str], Cli]
) -> None:
    alice, _ = pair
    mallory = cli_factory("mallory")
    mallory("init", "--name", "mallory")
    mallory("accept", alice("invite", "--format", "url").stdout.strip(), "--alias", "alice")
    port = _free_port()
    listener = _spawn(alice.home, "listen", "--port", str(port), "--json")
    try:
        _wait_listening(listener)
        proc = mallory("connect", "alice", "--to", f"127.0.0.1:{port}", stdin=b"hi\n", check=False)
        assert proc.returncode == 1
        assert "refused" in proc.stderr and "Traceback" not in proc.stderr
        assert listener.stdout is not None
        refused = json.loads(listener.stdout.readline())
        assert refused["event"] == "refused"
    finally:
        listener.kill()
        listener.wait(timeout=10)


def test_connector_refuses_the_wrong_responder(
    pair: tuple[Cli, Cli], cli_factory: Callable[[str], Cli]
) -> None:
    # bob expects alice at this address, but carol answers: no session, a clear error
    _, bob = pair
    carol = cli_factory("carol")
    carol("init", "--name", "carol")
    carol("accept", bob("invite", "--format", "url").stdout.strip(), "--alias", "bob")
    port = _free_port()
    listener = _spawn(carol.home, "listen", "--port", str(port), "--json")
    try:
        _wait_listening(listener)
        started = time.monotonic()
        proc = bob("connect", "alice", "--to", f"127.0.0.1:{port}", stdin=b"secret\n", check=False)
        assert proc.returncode == 1 and "no session with 'alice'" in proc.stderr
        assert time.monotonic() - started < 20
    finally:
        listener.kill()
        out, _ = listener.communicate(timeout=10)
    assert b"secret" not in out


def test_connect_without_address_explains(pair: tuple[Cli, Cli]) -> None:
    _, bob = pair
    proc = bob("connect", "alice", check=False)
    assert proc.returncode == 1 and "--to HOST:PORT" in proc.stderr
