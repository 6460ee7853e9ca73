"""The mediator's STUN service: the sans-IO :class:`~didsession.stun.StunServer` behind a
per-source rate limit and a cache of its answers.

Why a cache.  A STUN client asks the same question again and again (keepalives, NAT
probing), and for a request from an IPv4 source the core's answer is a function of the
request *without its transaction id*: XOR-MAPPED-ADDRESS is XORed with the magic cookie only
(RFC 8489 §14.2), and nothing else in a response depends on the transaction id except the
header and FINGERPRINT.  So :class:`CachedStun` keys answers by (source, local address,
request bytes minus transaction id and FINGERPRINT value), and for a repeated request
splices the new transaction id into the cached answer and recomputes FINGERPRINT, after
checking the request's own FINGERPRINT exactly as the core would.  A hit skips the core's
checks of every attribute and its address handling: about 1.8 µs against 2.6 µs for the
core's own fast path for plain Binding requests (30 µs before it had one).  A request is
cached only if its FINGERPRINT-or-not look (the key's basis) matches how it really ends, so a
value that merely looks like a FINGERPRINT cannot let a malformed variant hit.  Everything
else (first requests, IPv6 sources, RFC 3489 requests, errors, drops) goes to the core
unchanged.  The rate limit runs here, for every request, so the core is built without one.
Bounded memory: the cache is cleared when it reaches ``max_entries``.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

from didsession.stun import Address, RateLimit, StunReply, StunServer, TokenBucketLimiter

__all__ = ["CachedStun"]

_COOKIE: Final = b"\x21\x12\xa4\x42"
_FINGERPRINT: Final = 0x8028
_FINGERPRINT_HEAD: Final = b"\x80\x28\x00\x04"  # FINGERPRINT attribute type and length
_FINGERPRINT_XOR: Final = 0x5354554E
_BINDING_REQUEST: Final = b"\x00\x01"
_BINDING_SUCCESS: Final = b"\x01\x01"
_MAX_REQUEST: Final = 548  # larger requests are unusual: leave them to the core
_ATTR_HEADER: Final = struct.Struct("!HH")
_U32: Final = struct.Struct("!I")
_FINGERPRINT_ATTR: Final = struct.Struct("!HHI")

# (source, local address, can_change_origin, header, attributes without FINGERPRINT's value)
_Key = tuple[Address, Address | None, bool, bytes, bytes]
# (response header, response attributes but FINGERPRINT, FINGERPRINT at the end, origin)
_Entry = tuple[bytes, bytes, bool, Address | None]


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
        self._limiter = TokenBucketLimiter(rate_limit) if rate_limit is not None else None
        self._per_port = rate_limit is not None and rate_limit.per_port
        self._cache: dict[_Key, _Entry] = {}
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
        if limiter is not None and not limiter.allow(source if self._per_port else source[0], now):
            self.rate_limited += 1
            return None
        n = len(data)
        if n > _MAX_REQUEST:
            return self.core.respond(
                data, source, now, local=local, can_change_origin=can_change_origin
            )
        # The key holds every byte but the transaction id and, when the request looks
        # fingerprinted, the FINGERPRINT value.  Only requests whose look is the truth are
        # cached (_remember), so a hit has the cached request's attributes exactly.
        fingerprinted = n >= 28 and data.startswith(_FINGERPRINT_HEAD, n - 8)
        key = (
            source,
            local,
            can_change_origin,
            data[:8],
            data[20 : n - 4] if fingerprinted else data[20:],
        )
        entry = self._cache.get(key)
        if entry is None:
            reply = self.core.respond(
                data, source, now, local=local, can_change_origin=can_change_origin
            )
            if reply is not None:
                self._remember(key, data, fingerprinted, reply)
            return reply
        if (
            fingerprinted
            and zlib.crc32(data[: n - 8]) ^ _FINGERPRINT_XOR != _U32.unpack_from(data, n - 4)[0]
        ):
            # As the core would: a wrong FINGERPRINT makes the request malformed.
            return self.core.respond(
                data, source, now, local=local, can_change_origin=can_change_origin
            )
        head, tail, with_fingerprint, origin = entry
        body = head + data[8:20] + tail
        if with_fingerprint:
            body += _FINGERPRINT_ATTR.pack(_FINGERPRINT, 4, zlib.crc32(body) ^ _FINGERPRINT_XOR)
        self.hits += 1
        return StunReply(body, origin)

    def _remember(self, key: _Key, data: bytes, fingerprinted: bool, reply: StunReply) -> None:
        out = reply.data
        if (
            out[:2] != _BINDING_SUCCESS
            or data[:2] != _BINDING_REQUEST
            or data[4:8] != _COOKIE
            or ":" in key[0][0]  # IPv6: XOR-MAPPED-ADDRESS depends on the transaction id
            or _ends_with_fingerprint(data) != fingerprinted
        ):
            return
        with_fingerprint = _ends_with_fingerprint(out)
        tail = out[20:-8] if with_fingerprint else out[20:]
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = (out[:8], tail, with_fingerprint, reply.origin)


def _ends_with_fingerprint(data: bytes) -> bool:
    """Whether the last attribute of a well-formed STUN message is FINGERPRINT."""
    pos, last = 20, -1
    while pos + 4 <= len(data):
        last, length = _ATTR_HEADER.unpack_from(data, pos)
        pos += 4 + length + (-length & 3)
    return last == _FINGERPRINT
