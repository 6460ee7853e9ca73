"""Events of the session protocol: facts the sans-IO cores report (spec/session.md §4, §7).

Every event is a frozen, slotted dataclass under :class:`Event`.  The handshake reports
:class:`SessionEstablished`, :class:`SessionRefused` and :class:`HandshakeTimedOut`; the
channel reports :class:`MessageReceived`, :class:`KeyUpdated` and :class:`SessionClosed`.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from didsession._dataclass import dataclass

if TYPE_CHECKING:
    from didsession.session.channel import Channel

__all__ = [
    "Direction",
    "Event",
    "HandshakeTimedOut",
    "KeyUpdated",
    "MessageReceived",
    "SessionClosed",
    "SessionEstablished",
    "SessionRefused",
]


class Direction(Enum):
    """Which half of a channel an event concerns."""

    SEND = "send"
    RECEIVE = "receive"


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of everything the session cores report."""


@dataclass(frozen=True, slots=True)
class SessionEstablished(Event):
    """The handshake finished; ``channel`` carries the session keys (spec §5).

    Attributes:
        channel: the established :class:`~didsession.session.channel.Channel`.
        peer_did: the peer's DID, authenticated by the envelope and by the key schedule.
        session_id: 16-byte session identifier (spec §5.4).
        resumed: the 16-byte id of the session this one replaces (a ``rekey``
            handshake, spec §3.4), else ``None``.
    """

    channel: Channel
    peer_did: str
    session_id: bytes
    resumed: bytes | None = None


@dataclass(frozen=True, slots=True)
class SessionRefused(Event):
    """The responder answered the request with a problem-report (spec §3.5)."""

    code: str
    comment: str


@dataclass(frozen=True, slots=True)
class HandshakeTimedOut(Event):
    """No accept arrived before the initiator's handshake deadline (spec §4.3)."""


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """An application payload arrived in a DATA frame (spec §6)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class KeyUpdated(Event):
    """One direction of the channel moved to key epoch ``epoch`` (spec §8)."""

    direction: Direction
    epoch: int


@dataclass(frozen=True, slots=True)
class SessionClosed(Event):
    """The channel closed (spec §9).

    Attributes:
        code: the close reason: ``""`` for a normal close, else a problem code (spec §10).
        by_peer: ``True`` if the peer sent the CLOSE, ``False`` if we did.
    """

    code: str
    by_peer: bool
