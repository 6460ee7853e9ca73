"""The embedded store: one SQLite file in WAL mode, written by one thread, group-committed.

Durability.  ``synchronous=FULL`` makes every commit fsync the WAL, so a message is on disk
when :meth:`SqliteStore.enqueue` returns and the mediator acknowledges the sender: a
``kill -9`` (or a power cut) loses nothing acknowledged.  An fsync per message would cap
forwarding at the disk's sync rate, so enqueues that arrive while a commit is in progress
are batched into the next transaction (group commit): one fsync acknowledges them all.

All SQL runs on one worker thread that owns the connection; the event loop never blocks
on the disk.  Per-owner counts and bytes live in the ``quota`` table, the mediator-wide
counts (grants, keylist entries, messages, bytes) in the one row of ``totals``, all kept by
triggers in the transaction that changes the data, so the limit checks of an enqueue are
two primary-key lookups and the totals are right after any crash.  A database made before
``totals`` existed gets it counted once, when it is opened.

The file holds DIDs and keylists: it is created 0600 in a folder created 0700; an older
one (or its -wal and -shm, or the folder) that others may read is narrowed when opened,
with one log line, and one of another user's that others may read is named in another.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import stat
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from didsession.errors import ConfigError, MediationError
from mediator.protocols.coordinate import KeylistResult
from mediator.protocols.events import KeylistAction, KeylistUpdate
from mediator.store.base import (
    Limits,
    MessageStore,
    Queued,
    QueueStatus,
    StorageFull,
    queue_full,
)

__all__ = ["SqliteStore"]

log = logging.getLogger("mediator.store")

_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS mediation (
    did TEXT PRIMARY KEY,
    granted REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keylist (
    recipient_did TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS keylist_owner ON keylist (owner, added);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    recipient_did TEXT NOT NULL,
    data BLOB NOT NULL,
    received REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_owner ON queue (owner, seq);
CREATE INDEX IF NOT EXISTS queue_expires ON queue (expires);
CREATE TABLE IF NOT EXISTS quota (
    owner TEXT PRIMARY KEY,
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS queue_insert AFTER INSERT ON queue BEGIN
    INSERT INTO quota (owner, messages, bytes) VALUES (NEW.owner, 1, length(NEW.data))
    ON CONFLICT (owner) DO UPDATE SET messages = messages + 1, bytes = bytes + length(NEW.data);
END;
CREATE TRIGGER IF NOT EXISTS queue_delete AFTER DELETE ON queue BEGIN
    UPDATE quota SET messages = messages - 1, bytes = bytes - length(OLD.data)
    WHERE owner = OLD.owner;
END;
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    grants INTEGER NOT NULL,
    keys INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT INTO totals (id, grants, keys, messages, bytes)
SELECT 0, (SELECT COUNT(*) FROM mediation), (SELECT COUNT(*) FROM keylist),
       (SELECT COUNT(*) FROM queue), (SELECT COALESCE(SUM(length(data)), 0) FROM queue)
WHERE NOT EXISTS (SELECT 1 FROM totals);
CREATE TRIGGER IF NOT EXISTS totals_grant AFTER INSERT ON mediation BEGIN
    UPDATE totals SET grants = grants + 1;
END;
CREATE TRIGGER IF NOT EXISTS totals_ungrant AFTER DELETE ON mediation BEGIN
    UPDATE totals SET grants = grants - 1;
END;
CREATE TRIGGER IF NOT EXISTS totals_key_add AFTER INSERT ON keylist BEGIN
    UPDATE totals SET keys = keys + 1;
END;
CREATE TRIGGER IF NOT EXISTS totals_key_remove AFTER DELETE ON keylist BEGIN
    UPDATE totals SET keys = keys - 1;
END;
CREATE TRIGGER IF NOT EXISTS totals_queue_insert AFTER INSERT ON queue BEGIN
    UPDATE totals SET messages = messages + 1, bytes = bytes + length(NEW.data);
END;
CREATE TRIGGER IF NOT EXISTS totals_queue_delete AFTER DELETE ON queue BEGIN
    UPDATE totals SET messages = messages - 1, bytes = bytes - length(OLD.data);
END;
"""

_Pending = tuple[str, str, bytes, float, float, Limits, "asyncio.Future[Queued]"]
# What became of one pending enqueue: stored, or the refusal to raise.
_Outcome = Queued | MediationError


_OPEN_TO_CHECK = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _narrow(name: str, folder: int, me: int) -> tuple[bool, str] | None:
    """chmod 0600 the file ``name`` in the open ``folder`` if it is ours and others may read
    it.  None if there was nothing to do; (True, its old mode) if narrowed; else (False,
    why it was left: owned by another user, a symbolic link, an error)."""
    try:
        fd = os.open(name, _OPEN_TO_CHECK, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False, "a symbolic link, not followed"
        return False, str(exc.strerror)
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode) or not mode & 0o077:
            return None
        if st.st_uid != me:
            return False, f"{mode:04o} owned by uid {st.st_uid}"
        os.fchmod(fd, 0o600)
        return True, f"{mode:04o}"
    except OSError as exc:
        return False, str(exc.strerror)
    finally:
        os.close(fd)


class SqliteStore(MessageStore):
    """:class:`MessageStore` in one SQLite database file.

    Args:
        path: the database file (created 0600, its directory 0700).
        synchronous: SQLite ``synchronous`` pragma; ``FULL`` (default) for durability.
        own_folder: the directory is the mediator's own (its data directory), so one that
            exists and others may read is made 0700 too; False for a ``store_path`` the
            operator chose, whose directory may hold other things (a home directory).
    """

    def __init__(self, path: Path, *, synchronous: str = "FULL", own_folder: bool = True) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"unknown SQLite synchronous mode {synchronous!r}")
        self.path = Path(path)
        self.own_folder = own_folder
        self._synchronous = synchronous.upper()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0  # transactions that carried enqueues (for tests and metrics)

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mediator-sqlite")
        try:
            await self._run(self._open_sync)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the message store {self.path}: {exc}") from exc

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # It holds DIDs and keylists: owner-only, whatever the umask.  SQLite gives the
        # -wal and -shm files the database file's mode; those of an earlier version may
        # have been made with the umask's, so they are narrowed first.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._restrict_modes()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # One transaction: a database of an earlier version gets its totals counted
            # from exactly the rows the new triggers then keep them for.
            conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nCOMMIT;")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _restrict_modes(self) -> None:
        """Make the folder 0700 and the database, -wal and -shm files 0600 where others may
        read them and they are ours; one warning names what was narrowed, one what was not.

        Each is checked and changed through a descriptor (fstat, fchmod), the files opened
        relative to the opened folder and without following a symbolic link: what changes
        is what was checked, even if a path is swapped meanwhile, and never a file a link
        points to.  The folder is left alone unless it is ``own_folder``, and if it has the
        sticky bit (a shared one, like /tmp).
        """
        narrowed: list[str] = []
        left: list[str] = []
        me = os.geteuid()
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstat(folder)
            mode = stat.S_IMODE(st.st_mode)
            if self.own_folder and mode & 0o077 and st.st_uid == me and not mode & stat.S_ISVTX:
                os.fchmod(folder, mode & ~0o077)
                narrowed.append(f"{self.path.parent.name}/ {mode:04o}")
            for name in (self.path.name, f"{self.path.name}-wal", f"{self.path.name}-shm"):
                outcome = _narrow(name, folder, me)
                if outcome is not None:
                    done, what = outcome
                    (narrowed if done else left).append(f"{name} {what}")
        finally:
            os.close(folder)
        if narrowed:
            log.warning(
                "message store files were readable by others; now owner-only "
                "(mode 0600, the folder 0700)",
                extra={"path": str(self.path), "files": ", ".join(narrowed)},
            )
        if left:
            log.warning(
                "message store files may be readable by others and were left as they are",
                extra={"path": str(self.path), "files": ", ".join(left)},
            )

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._executor is None:
            return
        if self._conn is not None:
            await self._run(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close_sync(self) -> None:
        assert self._conn is not None
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        self._conn = None

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise MediationError("the message store is closed", code="e.p.me.res.storage")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "store not open"
        return self._conn

    # -- mediation and keylists ------------------------------------------------------
    async def grant(self, did: str, now: float, limits: Limits) -> bool:
        return await self._run(self._grant_sync, did, now, limits)

    def _grant_sync(self, did: str, now: float, limits: Limits) -> bool:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM mediation WHERE did = ?", (did,)).fetchone():
                db.execute("COMMIT")
                return False
            (grants,) = db.execute("SELECT grants FROM totals").fetchone()
            if grants >= limits.max_grants:
                raise StorageFull("max_grants", limits.max_grants)
            db.execute("INSERT INTO mediation (did, granted) VALUES (?, ?)", (did, now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    async def is_granted(self, did: str) -> bool:
        return await self._run(self._is_granted_sync, did)

    def _is_granted_sync(self, did: str) -> bool:
        row = self._db.execute("SELECT 1 FROM mediation WHERE did = ?", (did,)).fetchone()
        return row is not None

    async def update_keylist(
        self, owner: str, updates: Sequence[KeylistUpdate], now: float, limits: Limits
    ) -> list[str]:
        return await self._run(self._update_keylist_sync, owner, list(updates), now, limits)

    def _update_keylist_sync(
        self, owner: str, updates: list[KeylistUpdate], now: float, limits: Limits
    ) -> list[str]:
        db = self._db
        results = []
        db.execute("BEGIN IMMEDIATE")
        try:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM keylist WHERE owner = ?", (owner,)
            ).fetchone()
            (total,) = db.execute("SELECT keys FROM totals").fetchone()
            for update in updates:
                row = db.execute(
                    "SELECT owner FROM keylist WHERE recipient_did = ?", (update.recipient_did,)
                ).fetchone()
                holder = row[0] if row else None
                if holder is not None and holder != owner:
                    results.append(KeylistResult.CLIENT_ERROR)
                elif update.action is KeylistAction.ADD:
                    if holder == owner:
                        results.append(KeylistResult.NO_CHANGE)
                    elif count >= limits.max_keys:
                        results.append(KeylistResult.CLIENT_ERROR)
                    elif total >= limits.max_total_keys:
                        raise StorageFull("keylist_max_total", limits.max_total_keys)
                    else:
                        db.execute(
                            "INSERT INTO keylist (recipient_did, owner, added) VALUES (?, ?, ?)",
                            (update.recipient_did, owner, now),
                        )
                        count += 1
                        total += 1
                        results.append(KeylistResult.SUCCESS)
                elif holder is None:
                    results.append(KeylistResult.NO_CHANGE)
                else:
                    db.execute(
                        "DELETE FROM keylist WHERE recipient_did = ?", (update.recipient_did,)
                    )
                    count -= 1
                    total -= 1
                    results.append(KeylistResult.SUCCESS)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return results

    async def keylist(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        return await self._run(self._keylist_sync, owner, offset, limit)

    def _keylist_sync(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        db = self._db
        (total,) = db.execute("SELECT COUNT(*) FROM keylist WHERE owner = ?", (owner,)).fetchone()
        rows = db.execute(
            "SELECT recipient_did FROM keylist WHERE owner = ? ORDER BY added, recipient_did "
            "LIMIT ? OFFSET ?",
            (owner, limit, offset),
        ).fetchall()
        return [r[0] for r in rows], int(total)

    async def owner_of(self, recipient_did: str) -> str | None:
        return await self._run(self._owner_of_sync, recipient_did)

    def _owner_of_sync(self, recipient_did: str) -> str | None:
        row = self._db.execute(
            "SELECT owner FROM keylist WHERE recipient_did = ?", (recipient_did,)
        ).fetchone()
        return str(row[0]) if row else None

    # -- queues ----------------------------------------------------------------------
    async def enqueue(
        self,
        owner: str,
        recipient_did: str,
        data: bytes,
        *,
        now: float,
        expires: float,
        limits: Limits,
    ) -> Queued:
        future: asyncio.Future[Queued] = asyncio.get_running_loop().create_future()
        self._pending.append((owner, recipient_did, data, now, expires, limits, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        message = await future
        listener = self.listener
        if listener is not None and listener.wants(owner):
            listener.notify(owner, message)
        return message

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes = await self._run(self._insert_batch, batch)
                except BaseException as exc:
                    for item in batch:
                        if not item[6].done():
                            item[6].set_exception(
                                MediationError(
                                    f"the message store failed: {type(exc).__name__}",
                                    code="e.p.me.res.storage",
                                )
                            )
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for item, outcome in zip(batch, outcomes, strict=True):
                    future = item[6]
                    if future.done():
                        continue
                    if isinstance(outcome, Queued):
                        future.set_result(outcome)
                    else:
                        future.set_exception(outcome)
        finally:
            self._flusher = None

    def _insert_batch(self, batch: list[_Pending]) -> list[_Outcome]:
        db = self._db
        outcomes: list[_Outcome] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for owner, recipient_did, data, now, expires, limits, _ in batch:
                row = db.execute(
                    "SELECT messages, bytes FROM quota WHERE owner = ?", (owner,)
                ).fetchone()
                count, size = row if row else (0, 0)
                if count + 1 > limits.max_messages or size + len(data) > limits.max_bytes:
                    outcomes.append(queue_full(limits))
                    continue
                all_count, all_size = db.execute("SELECT messages, bytes FROM totals").fetchone()
                if all_count + 1 > limits.max_total_messages:
                    outcomes.append(
                        StorageFull("queue_max_total_messages", limits.max_total_messages)
                    )
                    continue
                if all_size + len(data) > limits.max_total_bytes:
                    outcomes.append(StorageFull("queue_max_total_bytes", limits.max_total_bytes))
                    continue
                msg_id = uuid.uuid4().hex
                db.execute(
                    "INSERT INTO queue (id, owner, recipient_did, data, received, expires) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (msg_id, owner, recipient_did, data, now, expires),
                )
                outcomes.append(Queued(msg_id, recipient_did, data, now))
            db.execute("COMMIT")  # synchronous=FULL: durable when this returns
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.commits += 1
        return outcomes

    async def status(self, owner: str, recipient_did: str | None, now: float) -> QueueStatus:
        return await self._run(self._status_sync, owner, recipient_did, now)

    def _status_sync(self, owner: str, recipient_did: str | None, now: float) -> QueueStatus:
        sql = (
            "SELECT COUNT(*), COALESCE(SUM(length(data)), 0), MIN(received), MAX(received) "
            "FROM queue WHERE owner = ? AND expires > ?"
        )
        args: tuple[Any, ...] = (owner, now)
        if recipient_did is not None:
            sql += " AND recipient_did = ?"
            args += (recipient_did,)
        count, size, oldest, newest = self._db.execute(sql, args).fetchone()
        return QueueStatus(int(count), int(size), oldest, newest)

    async def fetch(
        self, owner: str, recipient_did: str | None, limit: int, max_bytes: int, now: float
    ) -> list[Queued]:
        return await self._run(self._fetch_sync, owner, recipient_did, limit, max_bytes, now)

    def _fetch_sync(
        self, owner: str, recipient_did: str | None, limit: int, max_bytes: int, now: float
    ) -> list[Queued]:
        sql = "SELECT id, recipient_did, data, received FROM queue WHERE owner = ? AND expires > ?"
        args: tuple[Any, ...] = (owner, now)
        if recipient_did is not None:
            sql += " AND recipient_did = ?"
            args += (recipient_did,)
        sql += " ORDER BY seq LIMIT ?"
        args += (limit,)
        out: list[Queued] = []
        total = 0
        for msg_id, rcpt, data, received in self._db.execute(sql, args):
            if out and total + len(data) > max_bytes:
                break
            out.append(Queued(msg_id, rcpt, bytes(data), received))
            total += len(data)
        return out

    async def get(self, owner: str, message_id: str, now: float) -> Queued | None:
        return await self._run(self._get_sync, owner, message_id, now)

    def _get_sync(self, owner: str, message_id: str, now: float) -> Queued | None:
        row = self._db.execute(
            "SELECT id, recipient_did, data, received FROM queue "
            "WHERE id = ? AND owner = ? AND expires > ?",
            (message_id, owner, now),
        ).fetchone()
        return Queued(row[0], row[1], bytes(row[2]), row[3]) if row else None

    async def delete(self, owner: str, message_ids: Sequence[str]) -> int:
        return await self._run(self._delete_sync, owner, list(message_ids))

    def _delete_sync(self, owner: str, message_ids: list[str]) -> int:
        db = self._db
        deleted = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for msg_id in message_ids:
                cur = db.execute("DELETE FROM queue WHERE id = ? AND owner = ?", (msg_id, owner))
                deleted += cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return deleted

    async def expire(self, now: float) -> int:
        return await self._run(self._expire_sync, now)

    def _expire_sync(self, now: float) -> int:
        cur = self._db.execute("DELETE FROM queue WHERE expires <= ?", (now,))
        return cur.rowcount

    async def totals(self) -> tuple[int, int]:
        return await self._run(self._totals_sync)

    def _totals_sync(self) -> tuple[int, int]:
        row = self._db.execute("SELECT messages, bytes FROM totals").fetchone()
        return int(row[0]), int(row[1])
