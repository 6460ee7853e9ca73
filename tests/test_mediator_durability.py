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


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_mediator_wide_limits_are_refused_logged_and_kept(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Fresh DIDs cannot fill the store: past the mediator-wide limits a grant, a keylist
    add and a forward get e.p.me.res.storage and a warning naming the limit; the counts
    survive a restart; picking up makes room."""
    extra = [
        "--max-grants",
        "2",
        "--keylist-max-total",
        "3",
        "--queue-max-total-messages",
        "3",
        "--queue-max-total-bytes",
        "60000",
        "--no-keylist-key-proof",
    ]
    if backend == "redis":
        server: RedisProcess = request.getfixturevalue("redis_server")
        extra += ["--store-backend", "redis", "--store-redis-url", server.url]
    proc = mediator_process(tmp_path / "data", extra=extra)
    proc.start()
    try:
        info = run(mediator_info(proc.url))
        bob, carol, dave = (
            Store(tmp_path / name).create(name, mediator=info.did)
            for name in ("bob", "carol", "dave")
        )
        alice = Store(tmp_path / "alice").create("alice")
        env = envelope_of(alice)
        run(request_mediation(bob, info))
        run(request_mediation(carol, info))
        with pytest.raises(MediationError) as err:
            run(request_mediation(dave, info))
        assert err.value.code == "e.p.me.res.storage"

        async def fill() -> None:
            async with MediatorClient(info, bob) as client:
                assert await client.keylist_update(add=["did:example:b2"]) == {
                    "did:example:b2": "success"
                }
            async with MediatorClient(info, carol) as client:
                with pytest.raises(MediationError) as err:
                    await client.keylist_update(add=["did:example:c2"])
                assert err.value.code == "e.p.me.res.storage"
                assert await client.keylist() == [carol.did]
            with pytest.raises(MediationError) as err:  # 80 kB: over the byte total
                await send_packed(await packed_for(alice, env, bob.did, "x" * 60000))
            assert err.value.code == "e.p.me.res.storage"
            for to in (bob, bob, carol):
                await send_packed(await packed_for(alice, env, to.did, f"for {to.did[-6:]}"))
            with pytest.raises(MediationError) as err:  # a fourth message
                await send_packed(await packed_for(alice, env, carol.did, "one too many"))
            assert err.value.code == "e.p.me.res.storage"

        run(fill())
        assert proc.stop() == 0
        proc.start()

        async def after_restart() -> None:
            with pytest.raises(MediationError) as err:
                await send_packed(await packed_for(alice, env, carol.did, "still too many"))
            assert err.value.code == "e.p.me.res.storage"
            async with MediatorClient(info, bob) as client:
                assert len(await client.pickup_all()) == 2  # nothing was dropped
            await send_packed(await packed_for(alice, env, carol.did, "room again"))
            async with MediatorClient(info, carol) as client:
                got = await client.pickup_all()
                assert sorted(r.message.message["body"]["content"] for r in got) == [
                    f"for {carol.did[-6:]}",
                    "room again",
                ]

        run(after_restart())
    finally:
        proc.kill()
    warned = [e for e in proc.log_events() if e["event"].startswith("request refused: mediator")]
    # each the first refusal at its limit in its process: one line each, counting one
    assert [(e["level"], e["limit"], e["code"], e["refused"]) for e in warned] == [
        ("warning", "max_grants", "e.p.me.res.storage", 1),
        ("warning", "keylist_max_total", "e.p.me.res.storage", 1),
        ("warning", "queue_max_total_bytes", "e.p.me.res.storage", 1),
        ("warning", "queue_max_total_messages", "e.p.me.res.storage", 1),
        ("warning", "queue_max_total_messages", "e.p.me.res.storage", 1),
    ]
    assert warned[0]["sender"] != dave.did and warned[0]["sender"].endswith(dave.did[-12:])
    text = proc.log_path.read_text()
    assert "ciphertext" not in text and "one too many" not in text
