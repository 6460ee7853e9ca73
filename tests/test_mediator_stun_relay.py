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
from typing import Any, Literal

import pytest
from mediator_proc import MediatorProcess, free_port, mediator_process

from didsession.errors import MediationError
from didsession.identity import Store
from didsession.mediation import mediator_info, new_session_id, open_relay
from didsession.stun_asyncio import stun_binding

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
