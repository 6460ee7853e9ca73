"""Nothing acknowledged is lost: ``kill -9`` with messages queued and in flight, then a
restart; and two mediator instances sharing one real redis-server."""

from __future__ import annotations

import asyncio
import signal
import urllib.error
from collections import Counter
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mediator_proc import REDIS_SERVER, RedisProcess, mediator_process, start_redis

from didsession.envelope import Envelope, new_message
from didsession.errors import MediationError
from didsession.identity import Identity, Store
from didsession.mediation import MediatorClient, mediator_info, request_mediation, send_packed

BASIC = "https://didcomm.org/basicmessage/2.0/message"


def run(coro: Awaitable[Any], timeout: float = 40.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def envelope_of(ident: Identity) -> Envelope:
    env = Envelope()
    assert ident.ed25519_secret is not None and ident.x25519_secret is not None
    env.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
    return env


async def packed_for(sender: Identity, env: Envelope, to: str, text: str) -> Any:
    return await env.pack(
        new_message(BASIC, {"content": text}, frm=sender.did, to=[to]), to=to, frm=sender.did
    )


def test_kill_9_with_messages_queued_then_restart(tmp_path: Path) -> None:
    proc = mediator_process(tmp_path / "data")
    proc.start()
    try:
        info = run(mediator_info(proc.url))
        bob = Store(tmp_path / "bob").create("bob", mediator=info.did)
        alice = Store(tmp_path / "alice").create("alice")
        run(request_mediation(bob, info))
        env = envelope_of(alice)
        acked: list[str] = []
        unacked: list[str] = []

        async def flood() -> None:
            """Send until the mediator dies; remember which forwards it acknowledged."""
            packs = [await packed_for(alice, env, bob.did, f"m{i}") for i in range(400)]
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with sem:
                    if i == 150:
                        proc.kill(signal.SIGKILL)  # mid-flood, with requests in flight
                    try:
                        await send_packed(packs[i], timeout=5)
                        acked.append(f"m{i}")
                    except MediationError:
                        unacked.append(f"m{i}")

            await asyncio.gather(*(one(i) for i in range(400)))

        run(flood(), timeout=60)
        assert proc.proc is not None and proc.proc.returncode == -signal.SIGKILL
        assert len(acked) >= 100 and unacked  # the kill cut the flood
        proc.start()  # same data dir, same port: the same DID and endpoint

        async def drain() -> list[str]:
            async with MediatorClient(info, bob) as client:
                got = await client.pickup_all(batch=40)
                assert (await client.status()).message_count == 0
                return [r.message.message["body"]["content"] for r in got]

        delivered = run(drain())
        counts = Counter(delivered)
        assert all(counts[m] == 1 for m in acked), "an acknowledged message was lost"
        assert max(counts.values()) == 1, "a message was delivered twice"
        assert set(delivered) <= set(acked) | set(unacked)
        # and the next pickup, after another restart, finds nothing again
        proc.kill(signal.SIGKILL)
        proc.start()
        assert run(drain()) == []
    finally:
        proc.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.kill()


def test_two_instances_on_one_redis(tmp_path: Path, redis_server: RedisProcess) -> None:
    shared = tmp_path / "mediator"  # one deployment: one identity, one Redis
    redis_args = ["--store-backend", "redis", "--store-redis-url", redis_server.url]
    a = mediator_process(shared, extra=redis_args)
    a.start()
    b = mediator_process(shared, extra=redis_args, public_url=a.url)
    b.log_path = tmp_path / "b.log"
    try:
        b.start()
        assert a.healthz()["did"] == b.healthz()["did"]
        info_a = run(mediator_info(a.url))
        info_b = run(mediator_info(b.url))
        assert info_b.endpoint == info_a.endpoint  # the DID names the deployment's URL (A's)
        # B's URLs, for connecting to B
        info_b = type(info_b)(
            info_b.did,
            f"{b.url}/didcomm",
            f"ws://127.0.0.1:{b.port}/ws",
            f"ws://127.0.0.1:{b.port}/relay",
        )
        bob = Store(tmp_path / "bob").create("bob", mediator=info_a.did)
        alice = Store(tmp_path / "alice").create("alice")
        run(request_mediation(bob, info_a))  # granted through A ...
        env = envelope_of(alice)

        async def main() -> None:
            async with MediatorClient(info_b, bob) as client:  # ... known to B
                assert await client.keylist() == [bob.did]
            # offline: forwarded to A, picked up from B
            await send_packed(await packed_for(alice, env, bob.did, "via A, offline"))
            async with MediatorClient(info_b, bob) as client:
                got = await client.pickup_all()
                assert [r.message.message["body"]["content"] for r in got] == ["via A, offline"]
            # live: connected to B, forwarded to A (the packed message's endpoint is A's)
            async with MediatorClient(info_b, bob, transport="ws") as client:
                received: list[str] = []

                async def listen() -> None:
                    async for item in client.live():
                        received.append(item.message.message["body"]["content"])
                        if len(received) == 3:
                            return

                listener = asyncio.create_task(listen())
                await asyncio.sleep(0.3)
                for i in range(3):
                    packed = await packed_for(alice, env, bob.did, f"live {i}")
                    assert packed.endpoint == info_a.endpoint
                    await send_packed(packed)
                await asyncio.wait_for(listener, 10)
                assert received == ["live 0", "live 1", "live 2"]

        run(main())
        metrics_a, metrics_b = a.metrics(), b.metrics()
        assert metrics_a["didsession_mediator_messages_queued_total"] == 4
        assert metrics_b['didsession_mediator_messages_delivered_total{mode="live"}'] == 3
        # Redis gone: forwards are refused as our fault (e.p.me), health says so, nobody dies
        redis_server.kill()

        async def redis_down() -> None:
            with pytest.raises(MediationError) as err:
                await send_packed(await packed_for(alice, env, bob.did, "lost?"), timeout=10)
            assert err.value.code == "e.p.me"

        run(redis_down())
        with pytest.raises(urllib.error.HTTPError) as http_err:
            a.healthz()
        assert http_err.value.code == 503
        assert a.proc is not None and a.proc.poll() is None
    finally:
        a.kill()
        b.kill()


def test_ttl_expiry_and_queue_limit(tmp_path: Path) -> None:
    proc = mediator_process(
        tmp_path / "data",
        extra=["--queue-ttl", "1", "--queue-expire-interval", "0.3", "--queue-max-messages", "3"],
    )
    proc.start()
    try:
        info = run(mediator_info(proc.url))
        bob = Store(tmp_path / "bob").create("bob", mediator=info.did)
        alice = Store(tmp_path / "alice").create("alice")
        run(request_mediation(bob, info))
        env = envelope_of(alice)

        async def main() -> None:
            for i in range(3):
                await send_packed(await packed_for(alice, env, bob.did, f"m{i}"))
            with pytest.raises(MediationError) as err:  # the fourth overflows bob's queue
                await send_packed(await packed_for(alice, env, bob.did, "one too many"))
            assert err.value.code == "e.p.me.res.storage"
            await asyncio.sleep(1.8)  # past the TTL, and a sweep
            async with MediatorClient(info, bob) as client:
                assert (await client.status()).message_count == 0
                assert await client.pickup() == []

        run(main())
        metrics = proc.metrics()
        assert metrics["didsession_mediator_messages_expired_total"] == 3
        assert metrics["didsession_mediator_forwards_refused_total"] == 1
        assert metrics['didsession_mediator_errors_total{kind="e.p.me.res.storage"}'] == 1
    finally:
        proc.kill()
