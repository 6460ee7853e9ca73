"""The session relay's control protocol and pairing table (like Tailscale's DERP).

Theory of operation.  Two parties that cannot reach each other directly both open a
WebSocket to the mediator's ``/relay``.  The mediator sends a fresh random ``nonce``
(``challenge``, plaintext).  Each party answers with an ``open`` message *authcrypted* to
the mediator's DID, naming the nonce, a ``session_id`` and its ``peer_did``: authcrypt
proves the sender holds its DID's key, and the nonce proves the proof is fresh, so nobody
can open a slot in another DID's name or replay an old open.  The slot is the triple
(session id, own DID, peer DID).  When the slot (S, A, B) finds its mirror (S, B, A) the
two are linked and both are told ``ready``; from then on every binary WebSocket message
from one is sent unchanged to the other.  The frames are the session protocol's,
encrypted end to end: the mediator relays bytes it cannot read.  When either side leaves,
or uses up its quota, both connections close.

States of one relay connection::

    EXPECT_OPEN --open ok--> WAITING --mirror slot opened--> RELAYING --either leaves--> CLOSED
         \\--bad open--> CLOSED      \\--timeout / leaves--> CLOSED

This module is sans-IO: the pairing table holds whatever slot objects the shell gives it.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import field
from enum import Enum
from typing import Any, Final, Generic, Literal, TypeVar

from didsession._dataclass import dataclass
from didsession.errors import MediationError
from mediator.protocols.events import Event
from mediator.protocols.messages import (
    PLAIN_TYP,
    Codes,
    b64url_decode,
    b64url_encode,
    body_of,
    optional_did,
    require_sender,
    thread_of,
)

__all__ = [
    "MAX_SESSION_ID",
    "RELAY_CHALLENGE",
    "RELAY_OPEN",
    "RELAY_STATUS",
    "Paired",
    "PairingTable",
    "Quota",
    "RelayOpenRequested",
    "State",
    "challenge",
    "parse_open",
    "status",
]

RELAY: Final = "https://didsession.dev/relay/1.0"
RELAY_CHALLENGE: Final = f"{RELAY}/challenge"
RELAY_OPEN: Final = f"{RELAY}/open"
RELAY_STATUS: Final = f"{RELAY}/status"
MAX_SESSION_ID: Final = 128
NONCE_BYTES: Final = 32


class State(Enum):
    EXPECT_OPEN = "expect-open"
    WAITING = "waiting"
    RELAYING = "relaying"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RelayOpenRequested(Event):
    """An authenticated ``open``: ``sender`` wants the slot (session_id, sender, peer_did)."""

    session_id: str
    peer_did: str


def challenge(nonce: bytes, mediator_did: str, *, msg_id: str | None = None) -> dict[str, Any]:
    """The first message on a relay WebSocket (plaintext: it holds nothing secret)."""
    return {
        "id": msg_id or str(uuid.uuid4()),
        "typ": PLAIN_TYP,
        "type": RELAY_CHALLENGE,
        "from": mediator_did,
        "body": {"nonce": b64url_encode(nonce)},
    }


def parse_open(message: dict[str, Any], sender: str | None, nonce: bytes) -> RelayOpenRequested:
    """Validate an ``open`` against the ``nonce`` this connection was challenged with.

    Raises:
        MediationError: not authcrypted or a wrong nonce (``e.p.trust``), malformed.
    """
    if message.get("type") != RELAY_OPEN:
        raise MediationError(
            f"expected {RELAY_OPEN}, got {str(message.get('type'))[:80]!r}", code=Codes.MALFORMED
        )
    owner = require_sender(message, sender)
    body = body_of(message)
    given = b64url_decode(body.get("nonce", ""))
    if not hmac.compare_digest(given, nonce):
        raise MediationError(
            "relay open does not answer this connection's challenge", code=Codes.UNAUTHENTICATED
        )
    session_id = body.get("session_id")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID:
        raise MediationError(
            f"relay open needs a session_id of 1..{MAX_SESSION_ID} characters",
            code=Codes.MALFORMED,
        )
    peer = optional_did(body, "peer_did")
    if peer is None:
        raise MediationError("relay open needs peer_did", code=Codes.MALFORMED)
    if peer == owner:
        raise MediationError("a relay session needs two different DIDs", code=Codes.MALFORMED)
    return RelayOpenRequested(thread_of(message), owner, session_id, peer)


def status(
    thid: str | None, state: Literal["waiting", "ready"], *, reason: str | None = None
) -> dict[str, Any]:
    """``waiting`` (the peer has not opened its slot yet) or ``ready`` (relaying)."""
    body: dict[str, Any] = {"state": state}
    if reason:
        body["reason"] = reason
    msg: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "typ": PLAIN_TYP,
        "type": RELAY_STATUS,
        "body": body,
    }
    if thid:
        msg["thid"] = thid
    return msg


@dataclass(slots=True)
class Quota:
    """What one relay client may still send; 0 means unlimited."""

    max_frames: int
    max_bytes: int
    frames: int = 0
    bytes: int = 0

    def charge(self, size: int) -> bool:
        """Count one frame of ``size`` bytes; False when that goes over a quota."""
        self.frames += 1
        self.bytes += size
        return not (
            (self.max_frames and self.frames > self.max_frames)
            or (self.max_bytes and self.bytes > self.max_bytes)
        )


_S = TypeVar("_S")
SlotKey = tuple[str, str, str]  # (session id, own DID, peer DID)


@dataclass(frozen=True, slots=True)
class Paired(Generic[_S]):
    """The slot just opened found its mirror."""

    peer: _S


@dataclass(slots=True)
class PairingTable(Generic[_S]):
    """Open relay slots by (session id, DID, peer DID); at most ``per_did`` per DID."""

    per_did: int = 16
    _waiting: dict[SlotKey, _S] = field(default_factory=dict)
    _held: dict[SlotKey, _S] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)

    def open(self, event: RelayOpenRequested, slot: _S) -> Paired[_S] | None:
        """Register ``slot``; its waiting mirror if there is one (both are then held).

        Raises:
            MediationError: the same slot is already open (``e.p.req.busy``), or the DID
                holds ``per_did`` slots.
        """
        assert event.sender is not None
        key = (event.session_id, event.sender, event.peer_did)
        if key in self._waiting or key in self._held:
            raise MediationError(
                "this relay slot is already open (the same session from the same DID)",
                code=Codes.BUSY,
            )
        if self._count.get(event.sender, 0) >= self.per_did:
            raise MediationError(
                f"a DID may hold at most {self.per_did} relay slots", code=Codes.QUOTA
            )
        self._count[event.sender] = self._count.get(event.sender, 0) + 1
        mirror = (event.session_id, event.peer_did, event.sender)
        peer = self._waiting.pop(mirror, None)
        if peer is None:
            self._waiting[key] = slot
            return None
        self._held[key] = slot
        self._held[mirror] = peer
        return Paired(peer)

    def close(self, event: RelayOpenRequested) -> None:
        """Forget the slot of ``event`` (its mirror, if linked, is closed by the shell)."""
        assert event.sender is not None
        key = (event.session_id, event.sender, event.peer_did)
        if self._waiting.pop(key, None) is None and self._held.pop(key, None) is None:
            return
        left = self._count.get(event.sender, 1) - 1
        if left:
            self._count[event.sender] = left
        else:
            self._count.pop(event.sender, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def relaying(self) -> int:
        return len(self._held) // 2
