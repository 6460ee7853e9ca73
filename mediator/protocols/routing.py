"""Routing 2.0 ``forward``, mediator role (DIDComm Messaging v2 §Routing Protocol 2.0).

A forward names ``body.next`` (the recipient's DID, or a key of it) and carries exactly
one attachment, the encrypted message for it.  The mediator accepts it only if ``next`` is
on some keylist; it stores the attachment unopened for the DID that registered ``next``,
and acknowledges the sender only once the store said it is durable.  Forwards may be
anoncrypted: the mediator never needs to know who sent one.
"""

from __future__ import annotations

from typing import Any

from didsession.envelope import parse_forward
from didsession.errors import EnvelopeError, MediationError
from mediator.protocols.events import ForwardReceived
from mediator.protocols.messages import Codes, optional_did, thread_of

__all__ = ["MAX_EXPIRES_TIME", "expiry", "parse_forward_request"]

# The largest integer a float holds exactly: anything later is no deadline at all, and
# float() of a far bigger one overflows.
MAX_EXPIRES_TIME = 2**53


def parse_forward_request(
    message: dict[str, Any], sender: str | None, *, max_payload: int
) -> ForwardReceived:
    """Validate a forward.

    Raises:
        MediationError: malformed, ``expires_time`` not an integer in
            ``0..MAX_EXPIRES_TIME`` (``e.p.msg``), or an attachment over ``max_payload``
            bytes (``e.p.msg.too-big``).
    """
    try:
        nxt, payload = parse_forward(message)
    except EnvelopeError as exc:
        raise MediationError(exc.message, code=Codes.MALFORMED) from exc
    recipient = optional_did({"next": nxt}, "next")
    assert recipient is not None
    if len(payload) > max_payload:
        raise MediationError(
            f"forwarded message is {len(payload)} bytes; this mediator keeps at most {max_payload}",
            code=Codes.TOO_BIG,
        )
    expires = message.get("expires_time")
    if expires is not None and (
        not isinstance(expires, int)
        or isinstance(expires, bool)
        or not 0 <= expires <= MAX_EXPIRES_TIME
    ):
        raise MediationError(
            f"forward expires_time must be an integer from 0 to {MAX_EXPIRES_TIME}",
            code=Codes.MALFORMED,
        )
    return ForwardReceived(thread_of(message), sender, nxt, recipient, payload, expires)


def expiry(event: ForwardReceived, *, now: float, ttl: float) -> float:
    """When the queued message expires: after ``ttl``, or earlier if the sender said so.

    Raises:
        MediationError: the sender's ``expires_time`` has already passed (``e.p.req.time``).
    """
    deadline = now + ttl
    if event.expires_time is not None:
        if event.expires_time <= now:
            raise MediationError("forward arrived after its expires_time", code=Codes.EXPIRED)
        deadline = min(deadline, float(event.expires_time))
    return deadline
