"""What a peer asked of the mediator: one frozen event per accepted request.

:func:`mediator.protocols.dispatch.receive` turns a decrypted DIDComm message and what
its envelope proved (the authenticated sender DID, or None for anoncrypt) into one of
these, or raises :class:`~didsession.errors.MediationError` with the problem-report code.
The asynchronous shell carries the event out against the store and builds the reply with
the protocol module's reply function.
"""

from __future__ import annotations

from enum import Enum

from didsession._dataclass import dataclass

__all__ = [
    "DeliveryRequested",
    "Event",
    "FeaturesQueried",
    "ForwardReceived",
    "KeylistAction",
    "KeylistQueried",
    "KeylistUpdate",
    "KeylistUpdateRequested",
    "LiveDeliveryChanged",
    "MediationRequested",
    "MessagesReceived",
    "PingReceived",
    "ProblemReported",
    "StatusRequested",
]


@dataclass(frozen=True, slots=True)
class Event:
    """A request that passed validation.

    Attributes:
        thid: the thread the reply belongs to (the request's ``thid``, else its ``id``).
        sender: the DID the envelope authenticated (authcrypt), None for anoncrypt.
    """

    thid: str
    sender: str | None


@dataclass(frozen=True, slots=True)
class MediationRequested(Event):
    """Coordinate Mediation 2.0 ``mediate-request`` from ``sender``."""


class KeylistAction(Enum):
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class KeylistUpdate:
    recipient_did: str
    action: KeylistAction


@dataclass(frozen=True, slots=True)
class KeylistUpdateRequested(Event):
    """``keylist-update``: add or remove DIDs routed to ``sender``."""

    updates: tuple[KeylistUpdate, ...]


@dataclass(frozen=True, slots=True)
class KeylistQueried(Event):
    """``keylist-query``: which DIDs route to ``sender`` (one page)."""

    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class ForwardReceived(Event):
    """Routing 2.0 ``forward``: ``payload`` (an encrypted message) for ``next``.

    Attributes:
        next: the DID (or DID URL) named in ``body.next``.
        recipient_did: ``next`` without a fragment, the keylist entry it must match.
        payload: the attached message, kept opaque.
        expires_time: the sender's ``expires_time`` (epoch seconds), if any.
    """

    next: str
    recipient_did: str
    payload: bytes
    expires_time: int | None


@dataclass(frozen=True, slots=True)
class StatusRequested(Event):
    """Message Pickup 3.0 ``status-request``, optionally for one recipient DID."""

    recipient_did: str | None


@dataclass(frozen=True, slots=True)
class DeliveryRequested(Event):
    """``delivery-request``: up to ``limit`` queued messages."""

    limit: int
    recipient_did: str | None


@dataclass(frozen=True, slots=True)
class MessagesReceived(Event):
    """``messages-received``: the sender has these messages; delete them."""

    message_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LiveDeliveryChanged(Event):
    """``live-delivery-change``: turn live delivery on this connection on or off."""

    live: bool


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """Trust Ping 2.0 ``ping``."""

    response_requested: bool


@dataclass(frozen=True, slots=True)
class FeaturesQueried(Event):
    """Discover Features 2.0 ``queries``: ``(feature-type, match)`` pairs."""

    queries: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ProblemReported(Event):
    """The peer sent us a problem-report; nothing to answer, only to record."""

    code: str
    comment: str
