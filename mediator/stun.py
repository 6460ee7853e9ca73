"""The mediator's STUN service: the sans-IO :class:`~didsession.stun.StunServer` behind a
per-source rate limit and a cache of its answers.

Why a cache.  The core parses every request and builds every response attribute by
attribute (about 30 µs of Python per request); a STUN client asks the same question again
and again (keepalives, NAT probing).  For a request from an IPv4 source the core's answer
is a function of the request *without its transaction id*: XOR-MAPPED-ADDRESS is XORed
with the magic cookie only (RFC 8489 §14.2), and nothing else in a response depends on the
transaction id except the header and FINGERPRINT.  So :class:`CachedStun` keys answers by
(source, local address, request bytes minus transaction id and FINGERPRINT value), and for
a repeated request splices the new transaction id into the cached answer and recomputes
FINGERPRINT, after checking the request's own FINGERPRINT exactly as the core would.
Everything else (first requests, IPv6 sources, RFC 3489 requests, errors, drops) goes to
the core unchanged.  The rate limit runs here, for every request, so the core is built
without one.  Bounded memory: the cache is cleared when it reaches ``max_entries``.
"""

from __future__ import annotations

import zlib
from typing import Final

from didsession.stun import Address, RateLimit, StunReply, StunServer, TokenBucketLimiter

__all__ = ["CachedStun"]

_COOKIE: Final = b"\x21\x12\xa4\x42"
_FINGERPRINT_HEAD: Final = b"\x80\x28\x00\x04"  # FINGERPRINT attribute type and length
_FINGERPRINT_XOR: Final = 0x5354554E
_BINDING_REQUEST: Final = b"\x00\x01"
_BINDING_SUCCESS: Final = b"\x01\x01"
_MAX_REQUEST: Final = 548  # larger requests are unusual: leave them to the core


def _crc(data: bytes) -> int:
    return (zlib.crc32(data) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF


class CachedStun:
    """A :class:`~didsession.stun_asyncio.StunHandler`: rate limit, cache, then the core.

    Args:
        core: the sans-IO server, configured without a rate limit (this class applies it).
        rate_limit: per-source limit (None: unlimited).
        max_entries: cached answers kept before the cache is cleared.
    """

    def __init__(
        self, core: StunServer, rate_limit: RateLimit | None, *, max_entries: int = 4096
    ) -> None:
        self.core = core
        self._limit = rate_limit
        self._limiter = TokenBucketLimiter(rate_limit) if rate_limit is not None else None
        self._cache: dict[tuple[object, ...], tuple[bytes, bytes, bool, Address | None]] = {}
        self._max = max_entries
        self.hits = 0  # success responses answered from the cache
        self.rate_limited = 0

    def stats(self) -> dict[str, int]:
        """The core's counters with the cache's answers and the rate limit's drops added."""
        out = self.core.stats.as_dict()
        out["responses"] += self.hits
        out["dropped_rate_limited"] += self.rate_limited
        out["cache_hits"] = self.hits
        return out

    def respond(
        self,
        data: bytes,
        source: Address,
        now: float,
        *,
        local: Address | None = None,
        can_change_origin: bool = True,
    ) -> StunReply | None:
        limiter = self._limiter
        if limiter is not None:
            assert self._limit is not None
            if not limiter.allow(source if self._limit.per_port else source[0], now):
                self.rate_limited += 1
                return None
        n = len(data)
        if (
            n < 20
            or n > _MAX_REQUEST
            or data[4:8] != _COOKIE
            or data[:2] != _BINDING_REQUEST
            or ":" in source[0]  # IPv6: XOR-MAPPED-ADDRESS depends on the transaction id
        ):
            return self.core.respond(
                data, source, now, local=local, can_change_origin=can_change_origin
            )
        fingerprinted = n >= 28 and data[n - 8 : n - 4] == _FINGERPRINT_HEAD
        shape = data[:8] + data[20 : n - 4] if fingerprinted else data[:8] + data[20:]
        key = (source, local, can_change_origin, shape)
        entry = self._cache.get(key)
        if entry is not None and (
            not fingerprinted or _crc(data[: n - 8]) == int.from_bytes(data[n - 4 :], "big")
        ):
            head, tail, with_fingerprint, origin = entry
            body = head + data[8:20] + tail
            if with_fingerprint:
                body += _FINGERPRINT_HEAD + _crc(body).to_bytes(4, "big")
            self.hits += 1
            return StunReply(body, origin)
        reply = self.core.respond(
            data, source, now, local=local, can_change_origin=can_change_origin
        )
        if reply is not None and reply.data[:2] == _BINDING_SUCCESS and entry is None:
            self._remember(key, reply)
        return reply

    def _remember(self, key: tuple[object, ...], reply: StunReply) -> None:
        out = reply.data
        with_fingerprint = len(out) >= 28 and out[-8:-4] == _FINGERPRINT_HEAD
        tail = out[20:-8] if with_fingerprint else out[20:]
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = (out[:8], tail, with_fingerprint, reply.origin)
