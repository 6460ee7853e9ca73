"""The shared store: Redis, so several mediator instances serve one deployment.

Every instance reads and writes the same keys, and every enqueue is published on one
channel; each instance listens, and pushes a message to a live WebSocket of its owner if
one is attached there.  So a message forwarded to instance A reaches a client connected
live to instance B.

Keys (``prefix`` defaults to ``didsession:``)::

    {p}granted          HASH  did -> grant time
    {p}route            HASH  recipient DID -> owner DID
    {p}keys:{owner}     ZSET  recipient DIDs of one owner, scored by time added
    {p}q:{owner}        ZSET  message ids of one owner, scored by a global sequence (FIFO)
    {p}m:{id}           HASH  owner, rcpt, data, recv, exp
    {p}exp              ZSET  message ids scored by expiry
    {p}bytes            HASH  owner -> queued bytes
    {p}seq              STRING the sequence
    channel {p}queued   "owner id" for each enqueue

Every multi-key change is one Lua script, so it is atomic and checks limits and ownership
where the data is.  Durability is Redis's: an acknowledged message is in Redis's memory and
in its append-only file as its ``appendfsync`` setting says (``always`` for no loss on a
Redis crash); losing a mediator instance loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from didsession.errors import ConfigError, MediationError
from mediator.config import redact_url
from mediator.protocols.coordinate import KeylistResult
from mediator.protocols.events import KeylistAction, KeylistUpdate
from mediator.store.base import Limits, MessageStore, Queued, QueueStatus, queue_full

__all__ = ["RedisStore"]

log = logging.getLogger("mediator.store")

_ENQUEUE = """
local n = redis.call('ZCARD', KEYS[1])
local b = tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0')
if n + 1 > tonumber(ARGV[7]) or b + #ARGV[4] > tonumber(ARGV[8]) then return 0 end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], seq, ARGV[2])
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'rcpt', ARGV[3], 'data', ARGV[4],
           'recv', ARGV[5], 'exp', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
redis.call('HINCRBY', KEYS[5], ARGV[1], #ARGV[4])
redis.call('PUBLISH', ARGV[9], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""

# KEYS: exp, bytes; ARGV: prefix, owner (or '' for any), ids...
_DELETE = """
local deleted = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local mkey = ARGV[1] .. 'm:' .. id
  local owner = redis.call('HGET', mkey, 'owner')
  if owner and (ARGV[2] == '' or owner == ARGV[2]) then
    local size = redis.call('HSTRLEN', mkey, 'data')
    redis.call('DEL', mkey)
    redis.call('ZREM', ARGV[1] .. 'q:' .. owner, id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('HINCRBY', KEYS[2], owner, -size)
    deleted = deleted + 1
  elseif not owner and ARGV[2] == '' then
    redis.call('ZREM', KEYS[1], id)
  end
end
return deleted
"""

_EXPIRED = """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
"""

# KEYS: route, keys:{owner}; ARGV: owner, now, max_keys, then (action, did) pairs
_KEYLIST = """
local out = {}
local count = redis.call('ZCARD', KEYS[2])
for i = 4, #ARGV, 2 do
  local action, did = ARGV[i], ARGV[i + 1]
  local holder = redis.call('HGET', KEYS[1], did)
  if holder and holder ~= ARGV[1] then
    table.insert(out, 'client_error')
  elseif action == 'add' then
    if holder then
      table.insert(out, 'no_change')
    elseif count >= tonumber(ARGV[3]) then
      table.insert(out, 'client_error')
    else
      redis.call('HSET', KEYS[1], did, ARGV[1])
      redis.call('ZADD', KEYS[2], ARGV[2], did)
      count = count + 1
      table.insert(out, 'success')
    end
  elseif not holder then
    table.insert(out, 'no_change')
  else
    redis.call('HDEL', KEYS[1], did)
    redis.call('ZREM', KEYS[2], did)
    count = count - 1
    table.insert(out, 'success')
  end
end
return out
"""


class RedisStore(MessageStore):
    """:class:`MessageStore` in Redis, shared by every instance of one deployment.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` for a socket).
        prefix: key prefix, so several deployments can share one Redis.
    """

    def __init__(self, url: str, *, prefix: str = "didsession:") -> None:
        self.url = url
        self.prefix = prefix
        self._redis: aioredis.Redis | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}
        self._ready = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        try:
            # Fail fast when Redis is gone: a forward is refused (e.p.me) in well under a
            # second instead of hanging in retries; the sender retries later.
            self._redis = aioredis.Redis.from_url(
                self.url,
                decode_responses=False,
                socket_connect_timeout=2.0,
                socket_timeout=10.0,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            )
            await self._redis.ping()
        except (RedisError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot reach Redis at {redact_url(self.url)}: {exc}") from exc
        for name, source in (
            ("enqueue", _ENQUEUE),
            ("delete", _DELETE),
            ("expired", _EXPIRED),
            ("keylist", _KEYLIST),
        ):
            self._scripts[name] = self._redis.register_script(source)
        self._listen_task = asyncio.get_running_loop().create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._listen_task
            self._listen_task = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @property
    def _r(self) -> aioredis.Redis:
        if self._redis is None:
            raise MediationError("the message store is closed", code="e.p.me.res.storage")
        return self._redis

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def channel(self) -> str:
        return self._k("queued")

    async def _listen(self) -> None:
        """Hear every instance's enqueues; hand those for live owners to the listener.

        While Redis is unreachable it retries with a backoff (0.25 s doubling to 10 s) and
        logs only when the subscription is lost and when it is back.
        """
        delay = 0.25
        lost = False
        while True:
            pubsub = self._r.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._ready.set()
                if lost:
                    log.warning("redis subscription restored")
                    lost, delay = False, 0.25
                async for item in pubsub.listen():
                    if item.get("type") not in (b"message", "message"):
                        continue
                    owner_b, _, msg_id_b = bytes(item["data"]).partition(b" ")
                    owner, msg_id = owner_b.decode(), msg_id_b.decode()
                    listener = self.listener
                    if listener is None or not listener.wants(owner):
                        continue
                    message = await self.get(owner, msg_id, _now())
                    if message is not None:
                        listener.notify(owner, message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if not lost:
                    log.warning("redis subscription lost, retrying", extra={"error": str(exc)})
                    lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()

    # -- mediation and keylists ------------------------------------------------------
    async def grant(self, did: str, now: float) -> bool:
        return bool(await self._r.hsetnx(self._k("granted"), did, repr(now)))

    async def is_granted(self, did: str) -> bool:
        return bool(await self._r.hexists(self._k("granted"), did))

    async def update_keylist(
        self, owner: str, updates: Sequence[KeylistUpdate], now: float, limits: Limits
    ) -> list[str]:
        args: list[Any] = [owner, repr(now), limits.max_keys]
        for u in updates:
            args += ["add" if u.action is KeylistAction.ADD else "remove", u.recipient_did]
        out = await self._scripts["keylist"](
            keys=[self._k("route"), self._k("keys", owner)], args=args
        )
        known = {
            KeylistResult.SUCCESS,
            KeylistResult.NO_CHANGE,
            KeylistResult.CLIENT_ERROR,
        }
        results = [r.decode() if isinstance(r, bytes) else str(r) for r in out]
        return [r if r in known else KeylistResult.SERVER_ERROR for r in results]

    async def keylist(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        key = self._k("keys", owner)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zcard(key)
            pipe.zrange(key, offset, offset + limit - 1)
            total, dids = await pipe.execute()
        return [_text(d) for d in dids], int(total)

    async def owner_of(self, recipient_did: str) -> str | None:
        owner = await self._r.hget(self._k("route"), recipient_did)
        return _text(owner) if owner is not None else None

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
        msg_id = uuid.uuid4().hex
        ok = await self._scripts["enqueue"](
            keys=[
                self._k("q", owner),
                self._k("m", msg_id),
                self._k("exp"),
                self._k("seq"),
                self._k("bytes"),
            ],
            args=[
                owner,
                msg_id,
                recipient_did,
                data,
                repr(now),
                repr(expires),
                limits.max_messages,
                limits.max_bytes,
                self.channel,
            ],
        )
        if not ok:
            raise queue_full(limits)
        return Queued(msg_id, recipient_did, data, now)

    async def _messages(
        self, owner: str, ids: Sequence[bytes], now: float
    ) -> list[tuple[str, Queued]]:
        async with self._r.pipeline(transaction=False) as pipe:
            for msg_id in ids:
                pipe.hmget(self._k("m", msg_id.decode()), "owner", "rcpt", "data", "recv", "exp")
            rows = await pipe.execute()
        out = []
        for msg_id, (own, rcpt, data, recv, exp) in zip(ids, rows, strict=True):
            if own is None or own.decode() != owner or float(exp) <= now:
                continue
            out.append((rcpt.decode(), Queued(msg_id.decode(), rcpt.decode(), data, float(recv))))
        return out

    async def status(self, owner: str, recipient_did: str | None, now: float) -> QueueStatus:
        count = size = 0
        oldest: float | None = None
        newest: float | None = None
        start = 0
        while True:
            ids = _ids(await self._r.zrange(self._k("q", owner), start, start + 499))
            if not ids:
                break
            start += len(ids)
            for rcpt, m in await self._messages(owner, ids, now):
                if recipient_did is not None and rcpt != recipient_did:
                    continue
                count += 1
                size += len(m.data)
                oldest = m.received if oldest is None else min(oldest, m.received)
                newest = m.received if newest is None else max(newest, m.received)
        return QueueStatus(count, size, oldest, newest)

    async def fetch(
        self, owner: str, recipient_did: str | None, limit: int, max_bytes: int, now: float
    ) -> list[Queued]:
        out: list[Queued] = []
        total = 0
        start = 0
        while len(out) < limit:
            ids = _ids(await self._r.zrange(self._k("q", owner), start, start + 99))
            if not ids:
                break
            start += len(ids)
            for rcpt, m in await self._messages(owner, ids, now):
                if recipient_did is not None and rcpt != recipient_did:
                    continue
                if out and total + len(m.data) > max_bytes:
                    return out
                out.append(m)
                total += len(m.data)
                if len(out) >= limit:
                    break
        return out

    async def get(self, owner: str, message_id: str, now: float) -> Queued | None:
        found = await self._messages(owner, [message_id.encode()], now)
        return found[0][1] if found else None

    async def delete(self, owner: str, message_ids: Sequence[str]) -> int:
        if not message_ids:
            return 0
        n = await self._scripts["delete"](
            keys=[self._k("exp"), self._k("bytes")],
            args=[self.prefix, owner, *message_ids],
        )
        return int(n)

    async def expire(self, now: float) -> int:
        total = 0
        while True:
            ids = await self._scripts["expired"](keys=[self._k("exp")], args=[repr(now)])
            if not ids:
                return total
            total += int(
                await self._scripts["delete"](
                    keys=[self._k("exp"), self._k("bytes")],
                    args=[self.prefix, "", *[i.decode() for i in ids]],
                )
            )
            if len(ids) < 500:
                return total

    async def totals(self) -> tuple[int, int]:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zcard(self._k("exp"))
            pipe.hvals(self._k("bytes"))
            count, sizes = await pipe.execute()
        return int(count), sum(int(s) for s in sizes)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ids(values: Sequence[Any]) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in values]


def _now() -> float:
    return time.time()
