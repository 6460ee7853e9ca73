"""Run the real ``didsession-mediator`` (and a real ``redis-server``) for tests.

Every process listens on loopback only, on ports found free just before; its output goes
to a log file (shown when a start fails); callers kill it in a finalizer; every wait is
bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
REDIS_SERVER = shutil.which("redis-server")


def free_port(*, udp: bool = False) -> int:
    """A port free for TCP (and UDP too, with ``udp``) on the loopback address."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not udp:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((HOST, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@dataclass
class MediatorProcess:
    """One running mediator process."""

    data_dir: Path
    port: int
    stun_port: int
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 20.0) -> MediatorProcess:
        self.starts += 1
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mediator", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mediator exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                if self.healthz()["status"] == "ok":
                    return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mediator did not become healthy in {timeout} s:\n{self.log_tail()}")

    def healthz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {"name{labels}": value}."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait (bounded) for the process to end."""
        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._close_log()

    def stop(self) -> int:
        """Graceful stop (SIGTERM); the exit status."""
        self.kill(signal.SIGTERM)
        assert self.proc is not None
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def mediator_process(
    data_dir: Path,
    *,
    port: int | None = None,
    stun_port: int | None = None,
    public_url: str | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> MediatorProcess:
    """A mediator process description (call ``.start()``); loopback ports are picked free."""
    port = port or free_port()
    stun_port = stun_port or free_port(udp=True)
    args = [
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--stun-port",
        str(stun_port),
        "--log-format",
        "json",
        "--ws-heartbeat",
        "0",
    ]
    if public_url:
        args += ["--public-url", public_url]
    args += extra or []
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIDSESSION_MEDIATOR_")}
    full_env.update(env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    return MediatorProcess(
        data_dir, port, stun_port, args, full_env, data_dir.parent / f"{data_dir.name}.log"
    )


@dataclass
class RedisProcess:
    proc: subprocess.Popen[bytes]
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_redis(workdir: Path, timeout: float = 10.0) -> RedisProcess:
    """A private ``redis-server`` on a free loopback port, data in ``workdir``."""
    assert REDIS_SERVER is not None, "redis-server is not installed"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "redis.log").read_text())
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return RedisProcess(proc, port, workdir)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def post(
    url: str,
    data: bytes,
    content_type: str = "application/didcomm-encrypted+json",
    timeout: float = 10.0,
) -> tuple[int, bytes, str]:
    """POST raw bytes; (status, body, content type) also for 4xx/5xx."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get_content_type()


# -- a relay peer, run as its own process: python tests/mediator_proc.py relay-peer ... ------


def _frame(name: str, i: int, size: int) -> bytes:
    import hashlib

    seed = hashlib.sha256(f"{name}:{i}".encode()).digest()
    return (seed * (size // 32 + 1))[:size]


async def _relay_peer(args: Any) -> dict[str, Any]:
    import asyncio

    from didsession.envelope import Envelope
    from didsession.identity import Store
    from didsession.mediation import open_relay
    from didsession.peer import handshake_codec
    from didsession.session import Handshake, Role
    from didsession.session.stream import accept_session, open_session

    ident = Store(Path(args.home)).load(args.name)
    assert ident.ed25519_secret is not None and ident.x25519_secret is not None
    env = Envelope()
    env.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
    result: dict[str, Any] = {"did": ident.did}

    # 1. opaque frames, both directions at once
    async with open_relay(
        args.mediator, ident, args.session + "-raw", args.peer, envelope=env
    ) as link:

        async def send_all() -> None:
            for i in range(args.frames):
                await link.send(_frame(args.name, i, 1 + i % 700))

        sender = asyncio.create_task(send_all())
        got = [await link.recv() for _ in range(args.frames)]
        await sender
        expected = [_frame(args.peer_name, i, 1 + i % 700) for i in range(args.frames)]
        result["raw_ok"] = got == expected
        result["raw_frames"] = len(got)

    # 2. a real session (authcrypt handshake, then AEAD frames) over the relay
    pack, unpack = handshake_codec(env, ident.did)

    async with open_relay(args.mediator, ident, args.session, args.peer, envelope=env) as link:
        reader, writer = await link.streams()
        if args.role == "initiator":
            hs = Handshake(
                Role.INITIATOR,
                local_did=ident.did,
                static_private=ident.x25519_secret,
                peer_static_key=env.resolver.x25519_public,
                peer_did=args.peer,
            )
            session = await open_session(reader, writer, hs, pack=pack, unpack=unpack)
            for i in range(args.messages):
                session.send(b"secret %d" % i)
            await session.drain()
            replies = [await session.recv() for _ in range(args.messages)]
            result["session_ok"] = replies == [b"terces %d" % i for i in range(args.messages)]
            session.close()
            await session.wait_closed()
        else:
            hs = Handshake(
                Role.RESPONDER,
                local_did=ident.did,
                static_private=ident.x25519_secret,
                peer_static_key=env.resolver.x25519_public,
            )
            session = await accept_session(reader, writer, hs, pack=pack, unpack=unpack)
            for _ in range(args.messages):
                data = await session.recv()
                session.send(b"terces " + data.split(b" ", 1)[1])
            await session.drain()
            result["session_ok"] = True
            with contextlib.suppress(Exception):
                await session.recv()  # until the initiator closes
            session.close()
        result["peer"] = session.peer_did
        result["session_id"] = session.session_id.hex()
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("relay-peer")
    p.add_argument("--home", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--mediator", required=True)
    p.add_argument("--session", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--peer-name", required=True)
    p.add_argument("--role", choices=["initiator", "responder"], required=True)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--messages", type=int, default=50)
    args = parser.parse_args(argv)
    result = asyncio.run(asyncio.wait_for(_relay_peer(args), 60))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
