"""The two stores behind one interface: SQLite (WAL, group commit) and a real redis-server."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mediator_proc import REDIS_SERVER, RedisProcess, start_redis

from didsession.errors import ConfigError, MediationError
from mediator.protocols.events import KeylistAction, KeylistUpdate
from mediator.store.base import Limits, MessageStore, Queued
from mediator.store.redis import RedisStore
from mediator.store.sqlite import SqliteStore

OWNER, OTHER = "did:peer:2.owner", "did:peer:2.other"
R1, R2 = "did:peer:2.r1", "did:peer:2.r2"
LIMITS = Limits(max_messages=5, max_bytes=1000, max_keys=3)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.kill()


StoreFactory = Callable[[], Awaitable[MessageStore]]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    counter = iter(range(100))

    async def make() -> MessageStore:
        if request.param == "sqlite":
            store: MessageStore = SqliteStore(tmp_path / "m.sqlite3")
        else:
            server = request.getfixturevalue("redis_server")
            store = RedisStore(server.url, prefix=f"{request.node.name}:{next(counter)}:")
        await store.open()
        return store

    return make


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


def test_keylists_are_owned(make_store: StoreFactory) -> None:
    async def main() -> None:
        store = await make_store()
        try:
            add = KeylistAction.ADD
            assert await store.grant(OWNER, 1.0) is True
            assert await store.grant(OWNER, 2.0) is False
            assert await store.is_granted(OWNER) and not await store.is_granted(OTHER)
            res = await store.update_keylist(
                OWNER, [KeylistUpdate(R1, add), KeylistUpdate(R1, add)], 1.0, LIMITS
            )
            assert res == ["success", "no_change"]
            # R1 is OWNER's: OTHER can neither take nor remove it
            assert await store.update_keylist(
                OTHER,
                [KeylistUpdate(R1, add), KeylistUpdate(R1, KeylistAction.REMOVE)],
                1.0,
                LIMITS,
            ) == ["client_error", "client_error"]
            assert await store.owner_of(R1) == OWNER and await store.owner_of(R2) is None
            more = [KeylistUpdate(f"did:peer:2.k{i}", add) for i in range(3)]
            assert await store.update_keylist(OWNER, more, 2.0, LIMITS) == [
                "success",
                "success",
                "client_error",  # max_keys = 3
            ]
            dids, total = await store.keylist(OWNER, 1, 10)
            assert total == 3 and dids == ["did:peer:2.k0", "did:peer:2.k1"]
            assert await store.update_keylist(
                OWNER,
                [KeylistUpdate(R1, KeylistAction.REMOVE), KeylistUpdate(R2, KeylistAction.REMOVE)],
                3.0,
                LIMITS,
            ) == ["success", "no_change"]
            assert await store.owner_of(R1) is None
        finally:
            await store.close()

    run(main())


def test_queue_fetch_delete_expire_and_limits(make_store: StoreFactory) -> None:
    async def main() -> None:
        T = time.time()  # the Redis listener reads with the real clock
        store = await make_store()
        heard: list[tuple[str, Queued]] = []

        class Ear:
            def wants(self, owner: str) -> bool:
                return owner == OWNER

            def notify(self, owner: str, message: Queued) -> None:
                heard.append((owner, message))

        store.listener = Ear()
        try:
            q1 = await store.enqueue(
                OWNER, R1, b"one", now=T + 10.0, expires=T + 100.0, limits=LIMITS
            )
            q2 = await store.enqueue(
                OWNER, R2, b"two!", now=T + 11.0, expires=T + 20.0, limits=LIMITS
            )
            await store.enqueue(OTHER, R1, b"x", now=T + 12.0, expires=T + 100.0, limits=LIMITS)
            status = await store.status(OWNER, None, T + 15.0)
            assert (status.message_count, status.total_bytes) == (2, 7)
            assert (status.oldest_received, status.newest_received) == (T + 10.0, T + 11.0)
            assert (await store.status(OWNER, R2, T + 15.0)).message_count == 1
            got = await store.fetch(OWNER, None, 10, 10**6, T + 15.0)
            assert [m.data for m in got] == [b"one", b"two!"]  # oldest first
            assert [m.id for m in await store.fetch(OWNER, R2, 10, 10**6, T + 15.0)] == [q2.id]
            assert len(await store.fetch(OWNER, None, 10, 3, T + 15.0)) == 1  # byte cap, >= 1
            assert (await store.get(OWNER, q1.id, T + 15.0)) == q1
            assert await store.get(OTHER, q1.id, T + 15.0) is None  # not OTHER's
            # expired messages are invisible at once, deleted by expire()
            assert [m.id for m in await store.fetch(OWNER, None, 10, 10**6, T + 25.0)] == [q1.id]
            assert await store.expire(T + 25.0) == 1
            assert await store.delete(OTHER, [q1.id]) == 0  # a stranger deletes nothing
            assert await store.delete(OWNER, [q1.id, q1.id, "nope"]) == 1
            assert (await store.status(OWNER, None, T + 25.0)).message_count == 0
            for _ in range(5):
                await store.enqueue(OWNER, R1, b"m", now=T + 30.0, expires=T + 99.0, limits=LIMITS)
            with pytest.raises(MediationError) as info:
                await store.enqueue(OWNER, R1, b"m", now=T + 30.0, expires=T + 99.0, limits=LIMITS)
            assert info.value.code == "e.p.me.res.storage"
            assert await store.totals() == (6, 6)
            await asyncio.sleep(0.2)  # Redis: the publication comes back through the channel
            assert {m.data for o, m in heard if o == OWNER} >= {b"one", b"two!", b"m"}
            assert all(o == OWNER for o, _ in heard)
        finally:
            await store.close()

    run(main())


def test_sqlite_group_commit_and_durability(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "g.sqlite3")
        await store.open()
        results = await asyncio.gather(
            *(
                store.enqueue(OWNER, R1, b"%d" % i, now=1.0, expires=99.0, limits=Limits())
                for i in range(200)
            )
        )
        assert len({r.id for r in results}) == 200
        assert store.commits < 200  # batched: one fsync acknowledged many
        await store.close()
        again = SqliteStore(tmp_path / "g.sqlite3")
        await again.open()
        assert (await again.status(OWNER, None, 2.0)).message_count == 200
        await again.close()

    run(main())


def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    """The database holds DIDs and keylists: 0600 even under a permissive umask."""

    async def main() -> None:
        store = SqliteStore(tmp_path / "p.sqlite3")
        await store.open()
        try:
            await store.grant(OWNER, 1.0)  # writes, so the -wal and -shm files exist
            files = sorted(tmp_path.glob("p.sqlite3*"))
            assert [f.name for f in files] == ["p.sqlite3", "p.sqlite3-shm", "p.sqlite3-wal"]
            assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
                f.name: "0o600" for f in files
            }
        finally:
            await store.close()

    old = os.umask(0o022)
    try:
        run(main())
    finally:
        os.umask(old)


def test_redis_errors_do_not_show_the_password() -> None:
    url = "redis://127.0.0.1:1/0?password=secret"  # nothing listens on port 1
    with pytest.raises(ConfigError) as err:
        run(RedisStore(url).open())
    assert "secret" not in str(err.value) and "password=***" in str(err.value)
