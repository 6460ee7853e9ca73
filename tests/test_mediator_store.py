"""The two stores behind one interface: SQLite (WAL, group commit) and a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from mediator_proc import REDIS_SERVER, RedisProcess, start_redis

from didsession.errors import ConfigError, MediationError
from mediator.protocols.events import KeylistAction, KeylistUpdate
from mediator.store.base import Limits, MessageStore, Queued, StorageFull
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


async def reopen(store: MessageStore) -> MessageStore:
    """Close ``store``, then open the same database (file, or Redis prefix) anew."""
    await store.close()
    again: MessageStore
    if isinstance(store, SqliteStore):
        again = SqliteStore(store.path)
    else:
        assert isinstance(store, RedisStore)
        again = RedisStore(store.url, prefix=store.prefix)
    await again.open()
    return again


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


def test_keylists_are_owned(make_store: StoreFactory) -> None:
    async def main() -> None:
        store = await make_store()
        try:
            add = KeylistAction.ADD
            assert await store.grant(OWNER, 1.0, LIMITS) is True
            assert await store.grant(OWNER, 2.0, LIMITS) is False
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
            assert await store.fetch(OWNER, R2, 10, 10**6, T + 25.0) == []
            status = await store.status(OWNER, None, T + 25.0)
            assert (status.message_count, status.total_bytes) == (1, 3)
            assert (status.oldest_received, status.newest_received) == (T + 10.0, T + 10.0)
            assert (await store.status(OWNER, R2, T + 25.0)).message_count == 0
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
            await store.grant(OWNER, 1.0, LIMITS)  # writes, so the -wal and -shm files exist
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


ADD, REMOVE = KeylistAction.ADD, KeylistAction.REMOVE
WIDE = Limits(
    max_messages=100,
    max_bytes=10_000,
    max_keys=10,
    max_grants=2,
    max_total_keys=3,
    max_total_messages=4,
    max_total_bytes=20,
)


async def refused(limit: str, call: Awaitable[Any]) -> None:
    with pytest.raises(StorageFull) as info:
        await call
    assert (info.value.code, info.value.limit) == ("e.p.me.res.storage", limit)


def test_mediator_wide_limits_refuse_new_data_and_keep_the_old(make_store: StoreFactory) -> None:
    """With mediation open to all, fresh DIDs cannot fill the disk or Redis: grants, keylist
    entries, messages and bytes are capped in all; a refusal changes nothing; the counts
    survive a restart."""

    async def main() -> None:
        T = time.time()
        store = await make_store()
        try:
            a, b, c = "did:peer:2.a", "did:peer:2.b", "did:peer:2.c"
            assert await store.grant(a, T, WIDE) and await store.grant(b, T, WIDE)
            assert await store.grant(a, T, WIDE) is False  # a DID granted before still is
            await refused("max_grants", store.grant(c, T, WIDE))
            assert not await store.is_granted(c)

            k = [f"did:peer:2.k{i}" for i in range(6)]
            assert await store.update_keylist(a, [KeylistUpdate(k[0], ADD)], T, WIDE) == ["success"]
            assert await store.update_keylist(
                b, [KeylistUpdate(k[1], ADD), KeylistUpdate(k[2], ADD)], T, WIDE
            ) == ["success", "success"]
            await refused(
                "keylist_max_total", store.update_keylist(a, [KeylistUpdate(k[3], ADD)], T, WIDE)
            )
            # all or nothing: the remove made room for one add, not for two
            batch = [
                KeylistUpdate(k[0], REMOVE),
                KeylistUpdate(k[3], ADD),
                KeylistUpdate(k[4], ADD),
            ]
            await refused("keylist_max_total", store.update_keylist(a, batch, T, WIDE))
            assert await store.owner_of(k[0]) == a and await store.owner_of(k[3]) is None
            assert await store.update_keylist(a, batch[:2], T, WIDE) == ["success", "success"]
            assert await store.keylist(a, 0, 10) == ([k[3]], 1)

            def put(owner: str, rcpt: str, data: bytes) -> Awaitable[Queued]:
                return store.enqueue(owner, rcpt, data, now=T, expires=T + 99, limits=WIDE)

            kept = [await put(a, k[3], b"a%04d" % i) for i in range(3)]
            kept.append(await put(b, k[1], b"b0000"))  # 4 messages, 20 bytes: both full
            await refused("queue_max_total_messages", put(b, k[1], b"x"))
            assert await store.delete(a, [kept[0].id]) == 1
            await refused("queue_max_total_bytes", put(b, k[1], b"b00001"))
            kept[0] = await put(b, k[2], b"b0001")
            assert await store.totals() == (4, 20)

            store = await reopen(store)
            assert await store.totals() == (4, 20)
            await refused("queue_max_total_messages", put(b, k[1], b"x"))
            await refused("max_grants", store.grant(c, T, WIDE))
            await refused(
                "keylist_max_total", store.update_keylist(b, [KeylistUpdate(k[5], ADD)], T, WIDE)
            )
            # nothing stored was dropped to make room
            got = await store.fetch(a, None, 10, 10**6, T) + await store.fetch(
                b, None, 10, 10**6, T
            )
            assert sorted(m.data for m in got) == sorted(m.data for m in kept)
            assert await store.expire(T + 100) == 4  # expiry gives the room back
            assert await store.totals() == (0, 0)
            assert (await put(b, k[1], b"y" * 20)).data == b"y" * 20
        finally:
            await store.close()

    run(main())


def test_totals_of_an_earlier_version_are_counted_when_opened(make_store: StoreFactory) -> None:
    """A database of a version without the kept totals (SQLite: no ``totals`` table and
    triggers; Redis: no byte total, no per-recipient queues) is counted once on open."""

    async def main() -> None:
        T = time.time()
        store = await make_store()
        try:
            for did in (OWNER, OTHER):
                await store.grant(did, T, WIDE)
            await store.update_keylist(OWNER, [KeylistUpdate(R1, ADD)], T, WIDE)
            await store.update_keylist(OTHER, [KeylistUpdate(R2, ADD)], T, WIDE)
            for rcpt, data in ((R1, b"one"), (R2, b"two"), (R1, b"three")):
                owner = OWNER if rcpt == R1 else OTHER
                await store.enqueue(owner, rcpt, data, now=T, expires=T + 99, limits=WIDE)
            await store.close()
            await forget_the_counters(store)
            store = await reopen(store)
            assert await store.totals() == (3, 11)
            status = await store.status(OWNER, R1, T)
            assert (status.message_count, status.total_bytes) == (2, 8)
            assert [m.data for m in await store.fetch(OWNER, R1, 10, 10**6, T)] == [
                b"one",
                b"three",
            ]
            await refused("max_grants", store.grant("did:peer:2.new", T, WIDE))
            await refused(
                "keylist_max_total",
                store.update_keylist(
                    OWNER, [KeylistUpdate(R2 + "x", ADD), KeylistUpdate(R2 + "y", ADD)], T, WIDE
                ),
            )
            await store.enqueue(OWNER, R1, b"four", now=T, expires=T + 99, limits=WIDE)
            await refused(
                "queue_max_total_messages",
                store.enqueue(OWNER, R1, b"5", now=T, expires=T + 99, limits=WIDE),
            )
            ids = [m.id for m in await store.fetch(OWNER, R1, 10, 10**6, T)]
            assert await store.delete(OWNER, ids) == 3
            assert await store.totals() == (1, 3)
            assert (await store.status(OWNER, R1, T)).total_bytes == 0
        finally:
            await store.close()

    run(main())


async def forget_the_counters(store: MessageStore) -> None:
    """Make ``store``'s (closed) database look like one of the previous version."""
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        names = db.execute(
            "SELECT type, name FROM sqlite_master WHERE name LIKE 'totals%'"
        ).fetchall()
        assert len(names) == 7
        for kind, name in names:
            if kind == "trigger":
                db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE totals")
        db.commit()
        db.close()
        return
    assert isinstance(store, RedisStore)
    r = aioredis.Redis.from_url(store.url)
    try:
        p = store.prefix
        gone = [f"{p}bytes_sum", f"{p}bytes_counted", f"{p}schema"]
        gone += [k.decode() async for k in r.scan_iter(match=f"{glob_escape(p)}qr:*")]
        gone += [k.decode() async for k in r.scan_iter(match=f"{glob_escape(p)}rbytes:*")]
        assert len(gone) == 7 and await r.delete(*gone) == 7
    finally:
        await r.aclose()


def glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def redis_output_bytes(url: str) -> int:
    """How many bytes redis-server has sent to all its clients."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_net_output_bytes"])
    finally:
        client.close()


def test_redis_status_and_a_pickup_that_matches_nothing_do_not_read_the_queue(
    redis_server: RedisProcess,
) -> None:
    """status and a delivery-request that matches nothing cost counters, not the queue:
    Redis sends the mediator a few hundred bytes, not the 4 MiB queued."""

    async def main() -> None:
        T = time.time()
        store = RedisStore(redis_server.url, prefix="cheap:")
        await store.open()
        try:
            big = Limits(max_bytes=64 << 20)
            blob = os.urandom(128 << 10)
            for i in range(32):
                rcpt = R1 if i < 31 else R2
                await store.enqueue(OWNER, rcpt, blob, now=T + i, expires=T + 99, limits=big)
            await asyncio.sleep(0.1)  # the publications have come back to the listener
            before = redis_output_bytes(redis_server.url)
            everything = await store.status(OWNER, None, T + 50)
            for_r2 = await store.status(OWNER, R2, T + 50)
            nobody = await store.status(OWNER, "did:peer:2.nobody", T + 50)
            nothing = await store.fetch(OWNER, "did:peer:2.nobody", 10, 1 << 20, T + 50)
            sent = redis_output_bytes(redis_server.url) - before
            assert sent < 16 << 10, sent
            assert (everything.message_count, everything.total_bytes) == (32, 32 * len(blob))
            assert (everything.oldest_received, everything.newest_received) == (T, T + 31)
            assert (for_r2.message_count, for_r2.total_bytes) == (1, len(blob))
            assert for_r2.oldest_received == for_r2.newest_received == T + 31
            assert nobody.message_count == 0 and nothing == []
            before = redis_output_bytes(redis_server.url)
            only = await store.fetch(OWNER, R2, 10, 1 << 20, T + 50)
            assert [m.data for m in only] == [blob]
            assert redis_output_bytes(redis_server.url) - before < len(blob) + (16 << 10)
        finally:
            await store.close()

    run(main())


def test_sqlite_files_of_an_earlier_version_are_made_owner_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database (and its -wal, -shm) made 0644 by an earlier version is narrowed to 0600
    on open, and the folder it is in (mkdir's mode is ignored for one that exists) to
    0700, with one log line; a file that was 0600 already is not mentioned."""
    path = tmp_path / "data" / "old.sqlite3"
    old = os.umask(0o022)
    try:
        path.parent.mkdir()
        db = sqlite3.connect(path)  # as an earlier version left it: the umask's mode
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.commit()
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files)

        async def main() -> None:
            store = SqliteStore(path)
            await store.open()
            try:
                await store.grant(OWNER, 1.0, LIMITS)
                modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
                assert modes == {f.name: "0o600" for f in files}
                assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            finally:
                await store.close()
            again = SqliteStore(path)
            await again.open()
            await again.close()

        with caplog.at_level(logging.INFO, logger="mediator.store"):
            run(main())
        db.close()
    finally:
        os.umask(old)
    said = [r for r in caplog.records if "mode 0600" in r.getMessage()]
    assert len(said) == 1
    assert said[0].__dict__["files"] == (
        "data/ 0755, old.sqlite3 0644, old.sqlite3-wal 0644, old.sqlite3-shm 0644"
    )
    assert not [r for r in caplog.records if "left as they are" in r.getMessage()]


def test_sqlite_mode_check_follows_no_symbolic_link(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A -shm that is a symbolic link to a file of ours elsewhere: the check opens it without
    following (no stat-then-chmod by path), so the file it points to keeps its mode, and
    the link is named in a warning."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "notes.txt"
    victim.write_text("not the mediator's\n")
    victim.chmod(0o644)
    path = tmp_path / "data" / "m.sqlite3"
    path.parent.mkdir(mode=0o700)
    Path(f"{path}-shm").symlink_to(victim)

    async def main() -> None:
        store = SqliteStore(path)
        with contextlib.suppress(ConfigError):  # whatever SQLite makes of such a -shm
            await store.open()
        await store.close()

    with caplog.at_level(logging.WARNING, logger="mediator.store"):
        run(main())
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    said = [r for r in caplog.records if "left as they are" in r.getMessage()]
    assert [r.__dict__["files"] for r in said] == ["m.sqlite3-shm a symbolic link, not followed"]


def test_sqlite_files_of_another_user_readable_by_others_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files the mediator does not own, that others may read, are not changed (chmod would
    fail) but named in one warning, not skipped in silence; so is neither the folder."""
    path = tmp_path / "data" / "m.sqlite3"
    path.parent.mkdir(mode=0o755)
    path.parent.chmod(0o755)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    path.chmod(0o644)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)  # as if another user's

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    with caplog.at_level(logging.WARNING, logger="mediator.store"):
        run(main())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    said = [r for r in caplog.records if "left as they are" in r.getMessage()]
    assert [r.__dict__["files"] for r in said] == [f"m.sqlite3 0644 owned by uid {os.getuid()}"]
    assert not [r for r in caplog.records if "now owner-only" in r.getMessage()]


class EarlierInstance:
    """What a mediator of the version before the per-recipient index (16e63e6^) does to a
    Redis store: its enqueue and delete scripts, as plain commands.  It keeps ``q:``,
    ``m:``, ``exp``, ``bytes`` and ``seq``, and knows nothing of ``qr:``, ``rbytes:`` or
    the byte total."""

    def __init__(self, store: RedisStore) -> None:
        self.p = store.prefix
        self.r = aioredis.Redis.from_url(store.url)

    async def enqueue(self, owner: str, rcpt: str, data: bytes, *, now: float, exp: float) -> str:
        msg_id = os.urandom(16).hex()
        seq = await self.r.incr(f"{self.p}seq")
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zadd(f"{self.p}q:{owner}", {msg_id: seq})
            pipe.hset(
                f"{self.p}m:{msg_id}",
                mapping={"owner": owner, "rcpt": rcpt, "data": data, "recv": now, "exp": exp},
            )
            pipe.zadd(f"{self.p}exp", {msg_id: exp})
            pipe.hincrby(f"{self.p}bytes", owner, len(data))
            await pipe.execute()
        return msg_id

    async def delete(self, owner: str, ids: list[str]) -> None:
        for msg_id in ids:
            size = await self.r.hstrlen(f"{self.p}m:{msg_id}", "data")
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.delete(f"{self.p}m:{msg_id}")
                pipe.zrem(f"{self.p}q:{owner}", msg_id)
                pipe.zrem(f"{self.p}exp", msg_id)
                pipe.hincrby(f"{self.p}bytes", owner, -size)
                await pipe.execute()

    async def close(self) -> None:
        await self.r.aclose()


def test_redis_repairs_what_an_earlier_version_running_alongside_leaves(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade, or a downgrade and upgrade again: an instance of the earlier
    version deletes messages this one indexed by recipient and enqueues messages it does
    not index or count.  status and fetch repair ids whose message is gone at once (even
    more than 1000 of them ahead of a live one); the expiry sweep's repair pass indexes and
    counts the rest, so scoped status and fetch see every message and the byte total is
    right both ways again."""

    async def main() -> None:
        T = time.time()
        store = RedisStore(redis_server.url, prefix="rolling:")
        await store.open()
        old = EarlierInstance(store)
        caps = Limits(max_messages=5000, max_total_bytes=5000)
        try:

            def put(owner: str, rcpt: str, data: bytes, limits: Limits = caps) -> Awaitable[Queued]:
                return store.enqueue(owner, rcpt, data, now=T, expires=T + 99, limits=limits)

            for did in (OWNER, OTHER):
                await store.grant(did, T, caps)
            # OWNER: 1001 messages for R1, picked up through the earlier instance, then one
            # more: 1001 ids ahead of it whose message is gone.
            gone = [(await put(OWNER, R1, b"g")).id for _ in range(1001)]
            keep = await put(OWNER, R1, b"keep")
            await old.delete(OWNER, gone)
            assert [m.id for m in await store.fetch(OWNER, R1, 10, 10**6, T)] == [keep.id]
            status = await store.status(OWNER, R1, T)
            assert (status.message_count, status.total_bytes) == (1, 4)
            assert await store.totals() == (1, 4)  # the 1001 bytes deleted are out of the sum

            # OTHER: a live message, one deleted behind it (out of reach of status's look at
            # the ends), one enqueued by the earlier instance.
            a1 = await put(OTHER, R1, b"a1")
            a2 = await put(OTHER, R1, b"a2..")
            a3 = await put(OTHER, R1, b"a3")
            await old.delete(OTHER, [a2.id])
            theirs = await old.enqueue(OTHER, R2, b"theirs", now=T, exp=T + 99)
            assert (await store.status(OTHER, R1, T)).message_count == 3  # not yet seen
            assert await store.totals() == (4, 12)  # 2 + 4 + 2, not 4 + 2 + 2 + 6

            with caplog.at_level(logging.WARNING, logger="mediator.store"):
                assert await store.expire(T) == 0
            assert [r.__dict__["fixes"] for r in caplog.records if "repaired" in r.message]
            status = await store.status(OTHER, R1, T)
            assert (status.message_count, status.total_bytes) == (2, 4)
            status = await store.status(OTHER, R2, T)
            assert (status.message_count, status.total_bytes) == (1, 6)
            assert [m.id for m in await store.fetch(OTHER, R2, 10, 10**6, T)] == [theirs]
            assert [m.id for m in await store.fetch(OTHER, R1, 10, 10**6, T)] == [a1.id, a3.id]
            assert await store.totals() == (4, 14)

            # the total holds both ways: no false refusal, no cap passed
            tight = Limits(max_total_bytes=16)
            xx = await put(OTHER, R2, b"xx", tight)
            await refused("queue_max_total_bytes", put(OTHER, R2, b"y", tight))
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="mediator.store"):
                await store.expire(T)
            assert not [r for r in caplog.records if "repaired" in r.message]  # nothing left
            assert await store.delete(OTHER, [a1.id, a3.id, theirs]) == 3
            assert await store.totals() == (2, 6)
            assert await store.delete(OTHER, [xx.id]) + await store.delete(OWNER, [keep.id]) == 2
            # nothing is left over: no counter at 0, no index entry
            left = {k.decode() async for k in old.r.scan_iter(match="rolling:*")}
            assert left == {f"rolling:{k}" for k in ("granted", "seq", "schema", "bytes_sum")}
            assert await store.totals() == (0, 0)
        finally:
            await old.close()
            await store.close()

    run(main())


def test_redis_repair_pass_is_bounded_per_sweep(redis_server: RedisProcess) -> None:
    """The sweep's repair pass goes on by ``repair_budget`` messages and DIDs a sweep, and
    gets round every granted DID in the end."""

    async def main() -> None:
        T = time.time()
        store = RedisStore(redis_server.url, prefix="bounded:")
        await store.open()
        old = EarlierInstance(store)
        try:
            owners = [f"did:peer:2.o{i}" for i in range(20)]
            for did in owners:
                await store.grant(did, T, LIMITS)
                await old.enqueue(did, R1, b"old", now=T, exp=T + 99)
            assert await store.totals() == (20, 0)
            store.repair_budget = 4
            await store.expire(T)
            assert 0 < (await store.totals())[1] < 60
            for _ in range(20):
                await store.expire(T)
            assert await store.totals() == (20, 60)
            assert all([(await store.status(d, R1, T)).message_count == 1 for d in owners])
        finally:
            await old.close()
            await store.close()

    run(main())


def test_redis_enqueue_never_counts_an_id_twice(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An enqueue under an id that is taken changes nothing (the script checks ``m:``), so
    a message can never be counted twice; the store draws another id, and gives up with
    e.p.me if every one is taken."""
    import types
    import uuid

    import mediator.store.redis as redis_store

    ids = iter([uuid.UUID(int=1)] * 4 + [uuid.UUID(int=2)])
    monkeypatch.setattr(redis_store, "uuid", types.SimpleNamespace(uuid4=lambda: next(ids)))

    async def main() -> None:
        T = time.time()
        store = RedisStore(redis_server.url, prefix="dup:")
        await store.open()
        try:
            first = await store.enqueue(OWNER, R1, b"one", now=T, expires=T + 99, limits=LIMITS)
            with pytest.raises(MediationError) as info:
                await store.enqueue(OWNER, R1, b"two!", now=T, expires=T + 99, limits=LIMITS)
            assert info.value.code == "e.p.me"
            assert await store.totals() == (1, 3)
            assert await store.fetch(OWNER, None, 10, 10**6, T) == [first]
            again = await store.enqueue(OWNER, R1, b"two!", now=T, expires=T + 99, limits=LIMITS)
            assert again.id == uuid.UUID(int=2).hex and await store.totals() == (2, 7)
            status = await store.status(OWNER, R1, T)
            assert (status.message_count, status.total_bytes) == (2, 7)
        finally:
            await store.close()

    run(main())


def test_sqlite_a_folder_the_operator_chose_is_left_alone(tmp_path: Path) -> None:
    """``store_path`` in a folder of the operator's (a home directory): only the files are
    narrowed, not the folder, which may hold other things."""
    path = tmp_path / "home" / "m.sqlite3"
    path.parent.mkdir()
    path.parent.chmod(0o755)

    async def main() -> None:
        store = SqliteStore(path, own_folder=False)
        await store.open()
        await store.close()

    run(main())
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
