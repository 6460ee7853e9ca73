"""The mediator's STUN server and session relay, against the real process.

The relay carries opaque frames and then a real session (authcrypt handshake, AEAD frames)
between two client processes; quotas, timeouts and teardown are checked in-process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast

import pytest
from mediator_proc import MediatorProcess, free_port, mediator_process

from didsession.errors import MediationError
from didsession.identity import Store
from didsession.mediation import mediator_info, new_session_id, open_relay
from didsession.stun_asyncio import stun_binding
from mediator.protocols.messages import b64url_encode

TESTS = Path(__file__).parent


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def mediator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediatorProcess]:
    proc = mediator_process(
        tmp_path_factory.mktemp("relay") / "data",
        extra=["--relay-quota-frames", "5000", "--relay-wait-timeout", "2"],
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


def test_stun_is_answered_by_the_mediator(mediator: MediatorProcess) -> None:
    async def main() -> None:
        transports: tuple[Literal["udp", "tcp"], ...] = ("udp", "tcp")
        for transport in transports:
            result = await stun_binding(
                "127.0.0.1", mediator.stun_port, transport=transport, timeout=5
            )
            assert result.mapped == result.local  # loopback: no NAT between us

    run(main())
    client = shutil.which("turnutils_stunclient")
    if client:  # coturn's client reads the right address from the mediator's server
        out = subprocess.run(
            [client, "-p", str(mediator.stun_port), "127.0.0.1"],
            capture_output=True,
            timeout=20,
            text=True,
        )
        assert "127.0.0.1" in out.stdout + out.stderr
    metrics = mediator.metrics()
    assert metrics["didsession_mediator_stun_responses_total"] >= 2


def test_stun_rfc5780_other_address(tmp_path: Path) -> None:
    alternate = free_port(udp=True)
    proc = mediator_process(
        tmp_path / "data",
        extra=["--stun-alternate", f"127.0.0.2:{alternate}", "--no-relay-enabled"],
    )
    proc.start()
    try:
        result = run(stun_binding("127.0.0.1", proc.stun_port, timeout=5))
        assert result.response_origin == ("127.0.0.1", proc.stun_port)
        assert result.other_address == ("127.0.0.2", alternate)
        other = run(stun_binding("127.0.0.2", alternate, timeout=5))  # the alternate answers too
        assert other.response_origin == ("127.0.0.2", alternate)
    finally:
        proc.kill()


def test_relay_carries_frames_and_a_real_session_between_processes(
    tmp_path: Path, mediator: MediatorProcess
) -> None:
    alice = Store(tmp_path / "alice").create("alice")
    bob = Store(tmp_path / "bob").create("bob")
    session = new_session_id()
    before = mediator.metrics()

    def peer(name: str, me: Any, other: Any, role: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                str(TESTS / "mediator_proc.py"),
                "relay-peer",
                "--home",
                str(tmp_path / name),
                "--name",
                name,
                "--mediator",
                mediator.url,
                "--session",
                session,
                "--peer",
                other.did,
                "--peer-name",
                other.name,
                "--role",
                role,
                "--frames",
                "300",
                "--messages",
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = [peer("alice", alice, bob, "initiator"), peer("bob", bob, alice, "responder")]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert a["raw_ok"] and b["raw_ok"] and a["raw_frames"] == 300
    assert a["session_ok"] and b["session_ok"]
    assert a["peer"] == bob.did and b["peer"] == alice.did
    assert a["session_id"] == b["session_id"]
    after = mediator.metrics()
    frames = (
        after["didsession_mediator_relay_frames_total"]
        - before["didsession_mediator_relay_frames_total"]
    )
    assert frames >= 600 + 120  # both raw directions, then the session's frames
    assert (
        after["didsession_mediator_relay_sessions_total"]
        - before["didsession_mediator_relay_sessions_total"]
        == 2
    )
    assert after["didsession_mediator_relay_sessions_active"] == 0  # torn down


def test_relay_teardown_quota_and_timeout(tmp_path: Path, mediator: MediatorProcess) -> None:
    alice = Store(tmp_path / "alice").create("alice")
    bob = Store(tmp_path / "bob").create("bob")
    mallory = Store(tmp_path / "mallory").create("mallory")

    async def main() -> None:
        info = await mediator_info(mediator.url)
        sid = new_session_id()

        # teardown: when one side leaves, the other's recv ends with e.p.xfer.closed
        async def side(me: Any, other: Any, leave: bool) -> str:
            async with open_relay(info, me, sid, other.did) as link:
                if leave:
                    await link.send(b"bye")
                    return "left"
                assert await link.recv() == b"bye"
                with pytest.raises(MediationError) as err:
                    await link.recv()
                return err.value.code

        results = await asyncio.gather(side(alice, bob, False), side(bob, alice, True))
        assert results == ["e.p.xfer.closed", "left"]

        # the same slot twice is refused while held; a third DID cannot join the pair
        sid2 = new_session_id()
        opening = asyncio.create_task(_hold(info, alice, sid2, bob.did))
        await asyncio.sleep(0.3)
        with pytest.raises(MediationError) as err:
            async with open_relay(info, alice, sid2, bob.did):
                pass
        assert err.value.code == "e.p.req.busy"
        with pytest.raises(MediationError) as err:  # mallory waits for *her* mirror: timeout
            async with open_relay(info, mallory, sid2, bob.did):
                pass
        assert err.value.code == "e.p.req.time"
        opening.cancel()

        # quota: 5000 frames per client, then both ends are closed
        sid3 = new_session_id()

        async def flooder() -> str:
            async with open_relay(info, alice, sid3, bob.did) as link:
                try:
                    for _ in range(6000):
                        await link.send(b"x")
                    await link.recv()
                except MediationError as exc:
                    return exc.code
            return "no error"

        async def reader() -> int:
            n = 0
            async with open_relay(info, bob, sid3, alice.did) as link:
                async for _ in link:
                    n += 1
            return n

        code, received = await asyncio.gather(flooder(), reader())
        assert code == "e.p.me.res.quota"
        assert received == 5000

    run(main(), timeout=40)


async def _hold(info: Any, me: Any, sid: str, peer: str) -> None:
    try:
        async with open_relay(info, me, sid, peer):
            await asyncio.sleep(30)
    except MediationError:
        pass


# -- the relay shell in memory: failures no real client can time ------------------------------


class _FakeWs:
    """The part of a WebSocketResponse that ``RelayService._open`` uses."""

    def __init__(self, open_message: str, *, fail_on: str | None = None) -> None:
        self.open_message = open_message
        self.fail_on = fail_on
        self.sent: list[str] = []
        self.closed = False

    async def send_str(self, data: str) -> None:
        if self.fail_on is not None and self.fail_on in data:
            raise ConnectionResetError("Cannot write to closing transport")
        self.sent.append(data)

    async def receive(self, timeout: float | None = None) -> Any:
        from aiohttp import WSMsgType

        return SimpleNamespace(type=WSMsgType.TEXT, data=self.open_message)

    async def close(self, **_: Any) -> bool:
        self.closed = True
        return True


def test_relay_slot_is_freed_when_ready_cannot_be_sent(tmp_path: Path) -> None:
    """A client whose connection breaks just as ``ready`` goes out must not keep its slot
    (a retry would be busy); the peer is closed rather than left waiting for nothing."""
    from mediator.config import load_config
    from mediator.metrics import Metrics
    from mediator.protocols.relay import RELAY_OPEN
    from mediator.relay import RelayService

    alice, bob = "did:peer:2.Ez6LSalice.Vz6MkA", "did:peer:2.Ez6LSbob.Vz6MkB"
    nonce = bytes(32)

    def open_from(sender: str, peer: str) -> str:
        body = {"nonce": b64url_encode(nonce), "session_id": "s1", "peer_did": peer}
        return json.dumps({"id": "o", "type": RELAY_OPEN, "from": sender, "body": body})

    async def unpack(data: bytes) -> Any:
        message = json.loads(data)
        return SimpleNamespace(sender_did=message["from"], message=message)

    identity = SimpleNamespace(
        did="did:peer:2.Ez6LSmediator", envelope=SimpleNamespace(unpack=unpack)
    )
    config, _ = load_config([], {})
    service = RelayService(config, cast(Any, identity), Metrics(), random_bytes=lambda n: nonce)

    async def main() -> None:
        waiting = _FakeWs(open_from(alice, bob))
        assert await service._open(cast(Any, waiting)) is not None
        assert service.table.waiting == 1
        broken = _FakeWs(open_from(bob, alice), fail_on='"ready"')
        with pytest.raises(ConnectionResetError):
            await service._open(cast(Any, broken))
        assert (service.table.waiting, service.table.relaying) == (0, 0)
        assert waiting.closed
        retry = _FakeWs(open_from(bob, alice))
        slot = await service._open(cast(Any, retry))  # not e.p.req.busy
        assert slot is not None and service.table.waiting == 1
        assert slot.timer is not None
        slot.timer.cancel()

    run(main())
