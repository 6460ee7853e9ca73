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
    {p}bytes_counted        HASH   owner -> its queued bytes as counted in bytes_sum
    {p}bytes_sum            STRING queued bytes in all (the sum of bytes_counted)
    {p}seq                  STRING the sequence
    {p}schema               STRING "3" once data of an earlier version was repaired in full
    channel {p}queued       "owner id" for each enqueue

Every multi-key change is one Lua script, so it is atomic and checks limits and ownership
where the data is, and keeps the counters with the data.  ``status`` and ``fetch`` read
only counters and message metadata, in a script: what they cost does not grow with the
bytes queued, and a pickup for a recipient with nothing queued reads one empty key.

Theory of repair.  ``q:``, ``m:``, ``exp`` and ``bytes`` are kept by every version of the
mediator; ``qr:``, ``rbytes:``, ``bytes_counted`` and ``bytes_sum`` only by this one.  An
instance of an earlier version using the store at the same time (a rolling upgrade, a
downgrade) leaves them wrong: its enqueues are missing from ``qr:`` and from the sum, its
deletes leave ids in ``qr:`` whose ``m:`` is gone.  So they are derived data, and one
script (``_REPAIR_OWNER``) derives them again for one owner from its ``q:`` and ``m:``; the
sum moves by the owner's change only, so it stays the sum of ``bytes_counted`` whatever
runs meanwhile.  Each owner is repaired when ``status`` or ``fetch`` meets an id whose
message is gone, when a delete leaves it nothing queued, and by a pass over every granted
DID that each expiry sweep takes on by ``repair_budget`` messages (and that a store last
opened by an earlier version runs in full before it serves).  Once the instances of earlier
versions are stopped, the next whole pass makes everything right.  (Version 2's
``bytes_total`` is no longer read, so its instances cannot make the sum count twice.)

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
from mediator.protocols.messages import Codes
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

# repair(p, o, also): make owner o's per-recipient queues (qr:), their byte counters
# (rbytes:), its byte counter (bytes) and its share of the byte total (bytes_counted,
# bytes_sum) agree with its messages (q: and m:, which every version of the mediator keeps
# right).  ``also``: a recipient whose queue to clean even if no counter names it (or
# false).  Reads o's queue and per-recipient queues once: bounded by its queue limits and
# by what another version left behind.  Returns the messages examined and the fixes made.
# Prepended to the scripts that call it.
_REPAIR_OWNER = """
local function repair(p, o, also)
  local q = p .. 'q:' .. o
  local entries = redis.call('ZRANGE', q, 0, -1, 'WITHSCORES')
  local order, live, sizes, total, fixed = {}, {}, {}, 0, 0
  -- sets a counter (deleted at 0, as the scripts keep them); 1 if it was wrong
  local function put(key, field, value)
    local had = redis.call('HGET', key, field)
    local was = tonumber(had or '0')
    if value > 0 and was ~= value then
      redis.call('HSET', key, field, value)
    elseif value <= 0 and had then
      redis.call('HDEL', key, field)
    end
    if was == value then return 0 end
    return 1
  end
  local function recipient(r)
    if not live[r] then
      live[r], sizes[r] = {}, 0
      table.insert(order, r)
    end
  end
  for i = 1, #entries, 2 do
    local id = entries[i]
    local mkey = p .. 'm:' .. id
    local meta = redis.call('HMGET', mkey, 'owner', 'rcpt')
    local r = meta[2]
    if meta[1] == o and r then
      recipient(r)
      local size = redis.call('HSTRLEN', mkey, 'data')
      table.insert(live[r], {id, entries[i + 1]})
      sizes[r] = sizes[r] + size
      total = total + size
    else
      redis.call('ZREM', q, id)
      fixed = fixed + 1
    end
  end
  local rbytes = p .. 'rbytes:' .. o
  for _, r in ipairs(redis.call('HKEYS', rbytes)) do recipient(r) end
  if also then recipient(also) end
  for _, r in ipairs(order) do
    local qr = p .. 'qr:' .. o .. '|' .. r
    local want = {}
    for _, e in ipairs(live[r]) do want[e[1]] = true end
    for _, id in ipairs(redis.call('ZRANGE', qr, 0, -1)) do
      if not want[id] then
        redis.call('ZREM', qr, id)
        fixed = fixed + 1
      end
    end
    for _, e in ipairs(live[r]) do
      fixed = fixed + redis.call('ZADD', qr, 'NX', e[2], e[1])
    end
    fixed = fixed + put(rbytes, r, sizes[r])
  end
  fixed = fixed + put(p .. 'bytes', o, total)
  local counted = p .. 'bytes_counted'
  local share = tonumber(redis.call('HGET', counted, o) or '0')
  if share ~= total then redis.call('INCRBY', p .. 'bytes_sum', total - share) end
  fixed = fixed + put(counted, o, total)
  return #entries / 2, fixed
end
"""

# KEYS: q, m, exp, seq, bytes, qr, rbytes, bytes_sum, bytes_counted
# ARGV: owner, id, rcpt, data, recv, exp, max_messages, max_bytes, channel,
#       max_total_messages, max_total_bytes
# 1: queued; 0: the owner's queue is full; -1, -2: all queues hold the most messages, bytes;
# -3: the id is taken (nothing changed, so nothing is counted twice)
_ENQUEUE = """
local size = #ARGV[4]
if redis.call('EXISTS', KEYS[2]) == 1 then return -3 end
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
redis.call('HINCRBY', KEYS[9], ARGV[1], size)
redis.call('INCRBY', KEYS[8], size)
redis.call('PUBLISH', ARGV[9], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""

# KEYS: exp, bytes, bytes_sum, bytes_counted; ARGV: prefix, owner (or '' for any), ids...
# An owner left with nothing queued is repaired: whatever another version left in its
# counters and per-recipient queues goes (a few keys, usually none).
_DELETE = (
    _REPAIR_OWNER
    + """
local deleted = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local mkey = ARGV[1] .. 'm:' .. id
  local meta = redis.call('HMGET', mkey, 'owner', 'rcpt')
  local owner, rcpt = meta[1], meta[2]
  if owner and (ARGV[2] == '' or owner == ARGV[2]) then
    local size = redis.call('HSTRLEN', mkey, 'data')
    local q = ARGV[1] .. 'q:' .. owner
    redis.call('DEL', mkey)
    redis.call('ZREM', q, id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('HINCRBY', KEYS[2], owner, -size)
    redis.call('HINCRBY', KEYS[4], owner, -size)
    redis.call('DECRBY', KEYS[3], size)
    if rcpt and redis.call('ZREM', ARGV[1] .. 'qr:' .. owner .. '|' .. rcpt, id) == 1 then
      local rbytes = ARGV[1] .. 'rbytes:' .. owner
      if redis.call('HINCRBY', rbytes, rcpt, -size) <= 0 then
        redis.call('HDEL', rbytes, rcpt)
      end
    end
    if redis.call('ZCARD', q) == 0 then repair(ARGV[1], owner, false) end
    deleted = deleted + 1
  elseif not owner and ARGV[2] == '' then
    redis.call('ZREM', KEYS[1], id)
  end
end
return deleted
"""
)

_EXPIRED = """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
"""

# KEYS: queue (q or qr), its byte counter hash, exp; ARGV: prefix, counter field, now,
# owner, recipient ('' for the whole queue).  {count, bytes, oldest recv, newest recv} of
# the unexpired messages, from the counters.  An entry whose message is gone (deleted by an
# earlier version, which does not know the per-recipient queues) makes it repair the owner
# and count again.
_STATUS = (
    _REPAIR_OWNER
    + """
local now = tonumber(ARGV[3])
local function measure(strict)
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
  local stale = false
  local function edge(step)
    local i = step > 0 and 0 or -1
    for _ = 1, 1000 do
      local ids = redis.call('ZRANGE', KEYS[1], i, i)
      if #ids == 0 then return false end
      local m = redis.call('HMGET', ARGV[1] .. 'm:' .. ids[1], 'recv', 'exp')
      if not m[2] then
        stale = true
        if strict then return false end
      elseif tonumber(m[2]) > now then
        return m[1]
      end
      i = i + step
    end
    return false
  end
  local oldest = edge(1)
  if strict and stale then return nil end
  local newest = edge(-1)
  if strict and stale then return nil end
  return {n, math.max(b, 0), oldest, newest}
end
local out = measure(true)
if out == nil then
  repair(ARGV[1], ARGV[4], ARGV[5] ~= '' and ARGV[5])
  out = measure(false)
end
return out
"""
)

# KEYS: queue (q or qr); ARGV: prefix, now, limit, max_bytes, owner, recipient ('' for the
# whole queue).  The ids to deliver, oldest first: unexpired, at most limit, within
# max_bytes (but at least one); looks at 1000.  An entry whose message is gone makes it
# repair the owner and look again, so such entries never hide the messages after them.
_FETCH = (
    _REPAIR_OWNER
    + """
local now, limit, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function walk(strict)
  local out, total = {}, 0
  for start = 0, 999, 100 do
    local ids = redis.call('ZRANGE', KEYS[1], start, start + 99)
    for _, id in ipairs(ids) do
      local mkey = ARGV[1] .. 'm:' .. id
      local exp = redis.call('HGET', mkey, 'exp')
      if not exp then
        if strict then return nil end
      elseif tonumber(exp) > now then
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
end
local out = walk(true)
if out == nil then
  repair(ARGV[1], ARGV[5], ARGV[6] ~= '' and ARGV[6])
  out = walk(false)
end
return out
"""
)

# ARGV: prefix, budget, owners...  Repairs the owners in order until ``budget`` messages
# are examined (at least one owner).  {owners repaired, messages examined, fixes made}.
_REPAIR = (
    _REPAIR_OWNER
    + """
local budget = tonumber(ARGV[2])
local done, examined, fixed = 0, 0, 0
for i = 3, #ARGV do
  if done > 0 and examined >= budget then break end
  local n, f = repair(ARGV[1], ARGV[i], false)
  done, examined, fixed = done + 1, examined + n, fixed + f
end
return {done, examined, fixed}
"""
)

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

# Bumped when the keys change meaning; a store opened with an older one is repaired in full
# (every granted DID) before the instance serves.  "2": qr and rbytes; "3": bytes_counted
# and bytes_sum (version 2's bytes_total is no longer read).
_SCHEMA = b"3"

# Repair pass: messages (and DIDs) looked at per expiry sweep, and per script call.
REPAIR_SWEEP_BUDGET = 50_000
_REPAIR_CALL_BUDGET = 5_000


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
        # The repair pass over the granted DIDs: HSCAN cursor (None: no pass under way),
        # the DIDs of the last page not yet repaired, the fixes made so far in this pass.
        self.repair_budget = REPAIR_SWEEP_BUDGET
        self._repair_cursor: int | None = None
        self._repair_owners: list[bytes] = []
        self._repair_fixed = 0

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
            ("repair", _REPAIR),
            ("grant", _GRANT),
            ("keylist", _KEYLIST),
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
        """Index and count data of an earlier version: a whole repair pass, then the mark."""
        if await self._r.get(self._k("schema")) == _SCHEMA:
            return
        self._repair_cursor, self._repair_owners, self._repair_fixed = None, [], 0
        fixed = None
        while fixed is None:
            fixed = await self._repair(_REPAIR_CALL_BUDGET)
        await self._r.set(self._k("schema"), _SCHEMA)
        log.info(
            "redis store: queues indexed by recipient and bytes counted", extra={"fixes": fixed}
        )

    async def _repair(self, budget: int) -> int | None:
        """Go on with the repair pass for about ``budget`` messages and DIDs.

        The pass repairs every granted DID (see ``_REPAIR_OWNER``), a page of the
        ``granted`` HSCAN at a time; each DID is repaired atomically, so instances serving
        meanwhile, or repairing too, do no harm.  Returns the fixes the pass made when it
        ends in this call, else None.
        """
        spent = 0
        while spent < budget:
            if not self._repair_owners:
                if self._repair_cursor == 0:
                    fixed, self._repair_fixed, self._repair_cursor = self._repair_fixed, 0, None
                    return fixed
                cursor, page = await self._r.hscan(
                    self._k("granted"), self._repair_cursor or 0, count=200
                )
                self._repair_cursor = int(cursor)
                self._repair_owners = _ids(list(page))
                spent += 1
                continue
            done, examined, fixed = await self._scripts["repair"](
                keys=[],
                args=[
                    self.prefix,
                    min(budget - spent, _REPAIR_CALL_BUDGET),
                    *self._repair_owners[:100],
                ],
            )
            del self._repair_owners[: int(done)]
            spent += int(done) + int(examined)
            self._repair_fixed += int(fixed)
        return None

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
        for _ in range(3):
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
                    self._k("bytes_sum"),
                    self._k("bytes_counted"),
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
            if outcome != -3:  # -3: the id is taken (never, with uuid4): draw another
                break
        else:
            raise MediationError("could not draw a free message id", code=Codes.INTERNAL)
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
            args=[self.prefix, field, repr(now), owner, recipient_did or ""],
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
            args=[self.prefix, repr(now), limit, max_bytes, owner, recipient_did or ""],
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
            keys=self._delete_keys,
            args=[self.prefix, owner, *message_ids],
        )
        return int(n)

    @property
    def _delete_keys(self) -> list[str]:
        return [self._k("exp"), self._k("bytes"), self._k("bytes_sum"), self._k("bytes_counted")]

    async def expire(self, now: float) -> int:
        """Delete expired messages, then go on with the repair pass (``repair_budget``)."""
        total = 0
        while True:
            ids = await self._scripts["expired"](keys=[self._k("exp")], args=[repr(now)])
            if ids:
                total += int(
                    await self._scripts["delete"](
                        keys=self._delete_keys,
                        args=[self.prefix, "", *[i.decode() for i in ids]],
                    )
                )
            if len(ids) < 500:
                break
        try:
            fixed = await self._repair(self.repair_budget)
        except RedisError as exc:  # the next sweep goes on where this one stopped
            log.warning("redis store: repair pass failed", extra={"error": str(exc)})
            return total
        if fixed:
            log.warning(
                "redis store: per-recipient queues or byte counters were wrong, now repaired; "
                "is an instance of an earlier version using this store?",
                extra={"fixes": fixed},
            )
        return total

    async def totals(self) -> tuple[int, int]:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zcard(self._k("exp"))
            pipe.get(self._k("bytes_sum"))
            count, size = await pipe.execute()
        return int(count), int(size or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ids(values: Sequence[Any]) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in values]


def _now() -> float:
    return time.time()
