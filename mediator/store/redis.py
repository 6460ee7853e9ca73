"""The shared store: Redis, so several mediator instances serve one deployment.

Every instance reads and writes the same keys, and every enqueue is published on one
channel; each instance listens, and pushes a message to a live WebSocket of its owner if
one is attached there.  So a message forwarded to instance A reaches a client connected
live to instance B.

Keys (``prefix`` defaults to ``didsession:``)::

    {p}granted              HASH   did -> grant time (HLEN: DIDs granted in all)
    {p}route                HASH   recipient DID -> owner DID (HLEN: keylist entries in all)
    {p}keys:{owner}         ZSET   recipient DIDs of one owner, scored by time added
    {p}q:{owner}            ZSET   message ids of one owner, scored by a global sequence (FIFO)
    {p}qr:{owner}|{rcpt}    ZSET   the same, of one recipient DID of that owner
    {p}m:{id}               HASH   owner, rcpt, data, recv, exp
    {p}exp                  ZSET   message ids scored by expiry (ZCARD: messages in all)
    {p}bytes                HASH   owner -> queued bytes
    {p}rbytes:{owner}       HASH   recipient DID -> queued bytes
    {p}bytes_total          STRING queued bytes in all
    {p}seq                  STRING the sequence
    {p}schema               STRING "2" once data of an earlier version got the qr and rbytes keys
    channel {p}queued       "owner id" for each enqueue

Every multi-key change is one Lua script, so it is atomic and checks limits and ownership
where the data is, and keeps the counters with the data.  ``status`` and ``fetch`` read
only counters and message metadata, in a script: what they cost does not grow with the
bytes queued, and a pickup for a recipient with nothing queued reads one empty key.  Data of
an earlier version is indexed once when the store is opened; upgrade every instance of a
deployment together, since an earlier version does not keep the new counters.

Expired messages are deleted by :meth:`RedisStore.expire`; until then ``status`` and
``fetch`` skip them after a bounded look (the first 1000 expired messages of the
deployment, the first 1000 of a queue), so a sweep overdue by much more than that may
count some briefly.

Durability is Redis's: an acknowledged message is in Redis's memory and
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
from mediator.store.base import (
    Limits,
    MessageStore,
    Queued,
    QueueStatus,
    StorageFull,
    queue_full,
)

__all__ = ["RedisStore"]

log = logging.getLogger("mediator.store")

# KEYS: q, m, exp, seq, bytes, qr, rbytes, bytes_total
# ARGV: owner, id, rcpt, data, recv, exp, max_messages, max_bytes, channel,
#       max_total_messages, max_total_bytes
# 1: queued; 0: the owner's queue is full; -1, -2: all queues hold the most messages, bytes
_ENQUEUE = """
local size = #ARGV[4]
local n = redis.call('ZCARD', KEYS[1])
local b = tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0')
if n + 1 > tonumber(ARGV[7]) or b + size > tonumber(ARGV[8]) then return 0 end
if redis.call('ZCARD', KEYS[3]) + 1 > tonumber(ARGV[10]) then return -1 end
if tonumber(redis.call('GET', KEYS[8]) or '0') + size > tonumber(ARGV[11]) then return -2 end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], seq, ARGV[2])
redis.call('ZADD', KEYS[6], seq, ARGV[2])
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'rcpt', ARGV[3], 'data', ARGV[4],
           'recv', ARGV[5], 'exp', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
redis.call('HINCRBY', KEYS[5], ARGV[1], size)
redis.call('HINCRBY', KEYS[7], ARGV[3], size)
redis.call('INCRBY', KEYS[8], size)
redis.call('PUBLISH', ARGV[9], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""

# KEYS: exp, bytes, bytes_total; ARGV: prefix, owner (or '' for any), ids...
_DELETE = """
local deleted = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local mkey = ARGV[1] .. 'm:' .. id
  local meta = redis.call('HMGET', mkey, 'owner', 'rcpt')
  local owner, rcpt = meta[1], meta[2]
  if owner and (ARGV[2] == '' or owner == ARGV[2]) then
    local size = redis.call('HSTRLEN', mkey, 'data')
    redis.call('DEL', mkey)
    redis.call('ZREM', ARGV[1] .. 'q:' .. owner, id)
    redis.call('ZREM', KEYS[1], id)
    if redis.call('HINCRBY', KEYS[2], owner, -size) <= 0 then
      redis.call('HDEL', KEYS[2], owner)
    end
    redis.call('DECRBY', KEYS[3], size)
    if rcpt and redis.call('ZREM', ARGV[1] .. 'qr:' .. owner .. '|' .. rcpt, id) == 1 then
      local rbytes = ARGV[1] .. 'rbytes:' .. owner
      if redis.call('HINCRBY', rbytes, rcpt, -size) <= 0 then
        redis.call('HDEL', rbytes, rcpt)
      end
    end
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

# KEYS: queue (q or qr), its byte counter hash, exp; ARGV: prefix, counter field, now.
# {count, bytes, oldest recv, newest recv} of the unexpired messages, from the counters.
_STATUS = """
local now = tonumber(ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then return {0, 0, false, false} end
local b = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3], 'LIMIT', 0, 1000)) do
  if redis.call('ZSCORE', KEYS[1], id) then
    n = n - 1
    b = b - redis.call('HSTRLEN', ARGV[1] .. 'm:' .. id, 'data')
  end
end
if n <= 0 then return {0, 0, false, false} end
local function edge(step)
  local i = step > 0 and 0 or -1
  for _ = 1, 1000 do
    local ids = redis.call('ZRANGE', KEYS[1], i, i)
    if #ids == 0 then return false end
    local m = redis.call('HMGET', ARGV[1] .. 'm:' .. ids[1], 'recv', 'exp')
    if m[2] and tonumber(m[2]) > now then return m[1] end
    i = i + step
  end
  return false
end
return {n, math.max(b, 0), edge(1), edge(-1)}
"""

# KEYS: queue (q or qr); ARGV: prefix, now, limit, max_bytes.  The ids to deliver, oldest
# first: unexpired, at most limit, within max_bytes (but at least one); looks at 1000.
_FETCH = """
local now, limit, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out, total = {}, 0
for start = 0, 999, 100 do
  local ids = redis.call('ZRANGE', KEYS[1], start, start + 99)
  for _, id in ipairs(ids) do
    local mkey = ARGV[1] .. 'm:' .. id
    local exp = redis.call('HGET', mkey, 'exp')
    if exp and tonumber(exp) > now then
      local size = redis.call('HSTRLEN', mkey, 'data')
      if #out > 0 and total + size > cap then return out end
      table.insert(out, id)
      total = total + size
      if #out >= limit then return out end
    end
  end
  if #ids < 100 then return out end
end
return out
"""

# KEYS: granted; ARGV: did, now, max_grants.  1: new; 0: granted before; -1: full
_GRANT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: route, keys:{owner}; ARGV: owner, now, max_keys, max_total_keys, then (action, did)
# pairs.  The results, or {'full'} with nothing changed when an add would pass
# max_total_keys: the updates are decided first, then written.
_KEYLIST = """
local out, ops, holders = {}, {}, {}
local count = redis.call('ZCARD', KEYS[2])
local total = redis.call('HLEN', KEYS[1])
for i = 5, #ARGV, 2 do
  local action, did = ARGV[i], ARGV[i + 1]
  local holder = holders[did]
  if holder == nil then holder = redis.call('HGET', KEYS[1], did) end
  if holder and holder ~= ARGV[1] then
    table.insert(out, 'client_error')
  elseif action == 'add' then
    if holder then
      table.insert(out, 'no_change')
    elseif count >= tonumber(ARGV[3]) then
      table.insert(out, 'client_error')
    elseif total >= tonumber(ARGV[4]) then
      return {'full'}
    else
      holders[did] = ARGV[1]
      table.insert(ops, {'add', did})
      count = count + 1
      total = total + 1
      table.insert(out, 'success')
    end
  elseif not holder then
    table.insert(out, 'no_change')
  else
    holders[did] = false
    table.insert(ops, {'remove', did})
    count = count - 1
    total = total - 1
    table.insert(out, 'success')
  end
end
for _, op in ipairs(ops) do
  if op[1] == 'add' then
    redis.call('HSET', KEYS[1], op[2], ARGV[1])
    redis.call('ZADD', KEYS[2], ARGV[2], op[2])
  else
    redis.call('HDEL', KEYS[1], op[2])
    redis.call('ZREM', KEYS[2], op[2])
  end
end
return out
"""

# KEYS: bytes_total, bytes.  Counts the total once, from the per-owner counters, for data
# an earlier version queued.  1 if it did.
_INIT_TOTAL = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local sum = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do sum = sum + tonumber(v) end
redis.call('SET', KEYS[1], sum)
return 1
"""

# ARGV: prefix, ids...  Adds messages of an earlier version to their qr queue and rbytes
# counter; idempotent (ZADD NX), so instances opening at once do no harm.
_INDEX = """
for i = 2, #ARGV do
  local id = ARGV[i]
  local mkey = ARGV[1] .. 'm:' .. id
  local meta = redis.call('HMGET', mkey, 'owner', 'rcpt')
  if meta[1] and meta[2] then
    local seq = redis.call('ZSCORE', ARGV[1] .. 'q:' .. meta[1], id)
    local qr = ARGV[1] .. 'qr:' .. meta[1] .. '|' .. meta[2]
    if seq and redis.call('ZADD', qr, 'NX', seq, id) == 1 then
      redis.call('HINCRBY', ARGV[1] .. 'rbytes:' .. meta[1], meta[2],
                 redis.call('HSTRLEN', mkey, 'data'))
    end
  end
end
return 0
"""

_SCHEMA = b"2"


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
            ("status", _STATUS),
            ("fetch", _FETCH),
            ("grant", _GRANT),
            ("keylist", _KEYLIST),
            ("init_total", _INIT_TOTAL),
            ("index", _INDEX),
        ):
            self._scripts[name] = self._redis.register_script(source)
        try:
            await self._upgrade()
        except RedisError as exc:
            raise ConfigError(f"cannot prepare the Redis store: {exc}") from exc
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

    async def _upgrade(self) -> None:
        """Give data of an earlier version the byte total and the per-recipient queues."""
        if await self._scripts["init_total"](keys=[self._k("bytes_total"), self._k("bytes")]):
            log.info("redis store: queued bytes counted once for the mediator-wide limit")
        if await self._r.get(self._k("schema")) == _SCHEMA:
            return
        indexed = 0
        # ZSCAN returns every message present from start to end (some twice: harmless).
        cursor = 0
        while True:
            cursor, batch = await self._r.zscan(self._k("exp"), cursor, count=500)
            ids = [member for member, _score in batch]
            if ids:
                await self._scripts["index"](keys=[], args=[self.prefix, *ids])
                indexed += len(ids)
            if cursor == 0:
                break
        await self._r.set(self._k("schema"), _SCHEMA)
        if indexed:
            log.info("redis store: queues indexed by recipient", extra={"messages": indexed})

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
    async def grant(self, did: str, now: float, limits: Limits) -> bool:
        outcome = int(
            await self._scripts["grant"](
                keys=[self._k("granted")], args=[did, repr(now), limits.max_grants]
            )
        )
        if outcome < 0:
            raise StorageFull("max_grants", limits.max_grants)
        return outcome == 1

    async def is_granted(self, did: str) -> bool:
        return bool(await self._r.hexists(self._k("granted"), did))

    async def update_keylist(
        self, owner: str, updates: Sequence[KeylistUpdate], now: float, limits: Limits
    ) -> list[str]:
        args: list[Any] = [owner, repr(now), limits.max_keys, limits.max_total_keys]
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
        if results == ["full"]:
            raise StorageFull("keylist_max_total", limits.max_total_keys)
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
        outcome = await self._scripts["enqueue"](
            keys=[
                self._k("q", owner),
                self._k("m", msg_id),
                self._k("exp"),
                self._k("seq"),
                self._k("bytes"),
                self._queue_key(owner, recipient_did),
                self._k("rbytes", owner),
                self._k("bytes_total"),
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
                limits.max_total_messages,
                limits.max_total_bytes,
            ],
        )
        if outcome == 0:
            raise queue_full(limits)
        if outcome == -1:
            raise StorageFull("queue_max_total_messages", limits.max_total_messages)
        if outcome == -2:
            raise StorageFull("queue_max_total_bytes", limits.max_total_bytes)
        return Queued(msg_id, recipient_did, data, now)

    def _queue_key(self, owner: str, recipient_did: str | None) -> str:
        """The owner's queue, or its part for one recipient (DIDs have no ``|``)."""
        if recipient_did is None:
            return self._k("q", owner)
        return self._k("qr", f"{owner}|{recipient_did}")

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
        if recipient_did is None:
            counter, field = self._k("bytes"), owner
        else:
            counter, field = self._k("rbytes", owner), recipient_did
        count, size, oldest, newest = await self._scripts["status"](
            keys=[self._queue_key(owner, recipient_did), counter, self._k("exp")],
            args=[self.prefix, field, repr(now)],
        )
        return QueueStatus(
            int(count),
            int(size),
            float(oldest) if oldest is not None else None,
            float(newest) if newest is not None else None,
        )

    async def fetch(
        self, owner: str, recipient_did: str | None, limit: int, max_bytes: int, now: float
    ) -> list[Queued]:
        ids = await self._scripts["fetch"](
            keys=[self._queue_key(owner, recipient_did)],
            args=[self.prefix, repr(now), limit, max_bytes],
        )
        if not ids:
            return []
        return [m for _, m in await self._messages(owner, _ids(ids), now)]

    async def get(self, owner: str, message_id: str, now: float) -> Queued | None:
        found = await self._messages(owner, [message_id.encode()], now)
        return found[0][1] if found else None

    async def delete(self, owner: str, message_ids: Sequence[str]) -> int:
        if not message_ids:
            return 0
        n = await self._scripts["delete"](
            keys=[self._k("exp"), self._k("bytes"), self._k("bytes_total")],
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
                    keys=[self._k("exp"), self._k("bytes"), self._k("bytes_total")],
                    args=[self.prefix, "", *[i.decode() for i in ids]],
                )
            )
            if len(ids) < 500:
                return total

    async def totals(self) -> tuple[int, int]:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zcard(self._k("exp"))
            pipe.get(self._k("bytes_total"))
            count, size = await pipe.execute()
        return int(count), int(size or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ids(values: Sequence[Any]) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in values]


def _now() -> float:
    return time.time()
