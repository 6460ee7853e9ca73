"""From a decrypted message to the event it asks for: the mediator's one entry point.

Theory of operation.  The mediator is a set of request/response protocols with no
conversation state of their own: everything that persists (grants, keylists, queues) is in
the store, and the only per-connection state is whether live delivery is on.  So the core
is a table from message type to a parser (``TABLE``).  A parser checks the message against
its protocol's rules and who the envelope proved sent it, and returns one
:class:`~mediator.protocols.events.Event` or raises
:class:`~didsession.errors.MediationError` carrying the problem-report code.  The shell
(:mod:`mediator.service`) carries the event out and answers with the matching reply
function of the protocol module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from didsession.errors import MediationError
from mediator.protocols import coordinate, discover_features, pickup, routing, trust_ping
from mediator.protocols.events import Event, ProblemReported
from mediator.protocols.messages import (
    FEATURES_QUERIES,
    FORWARD,
    KEYLIST_QUERY,
    KEYLIST_UPDATE,
    LIVE_DELIVERY_CHANGE,
    MEDIATE_REQUEST,
    MESSAGES_RECEIVED,
    PICKUP_DELIVERY_REQUEST,
    PICKUP_STATUS_REQUEST,
    PING,
    PROBLEM_REPORT,
    Codes,
    body_of,
    thread_of,
)

__all__ = ["TABLE", "receive"]

_Parser = Callable[[dict[str, Any], str | None], Event]


def _problem(message: dict[str, Any], sender: str | None) -> ProblemReported:
    body = body_of(message)
    code, comment = body.get("code"), body.get("comment", "")
    if not isinstance(code, str):
        raise MediationError("problem-report has no code", code=Codes.MALFORMED)
    return ProblemReported(thread_of(message), sender, code[:100], str(comment)[:200])


TABLE: Final[dict[str, _Parser]] = {
    MEDIATE_REQUEST: coordinate.parse_mediate_request,
    KEYLIST_UPDATE: coordinate.parse_keylist_update,
    KEYLIST_QUERY: coordinate.parse_keylist_query,
    PICKUP_STATUS_REQUEST: pickup.parse_status_request,
    PICKUP_DELIVERY_REQUEST: pickup.parse_delivery_request,
    MESSAGES_RECEIVED: pickup.parse_messages_received,
    PING: trust_ping.parse_ping,
    FEATURES_QUERIES: discover_features.parse_queries,
    PROBLEM_REPORT: _problem,
}


def receive(
    message: dict[str, Any],
    sender: str | None,
    *,
    live_capable: bool,
    max_payload: int,
) -> Event:
    """The event ``message`` asks for.

    Args:
        message: the decrypted plaintext message (``id`` and ``type`` are strings).
        sender: the DID authcrypt proved, or None (anoncrypt).
        live_capable: the connection can push (a WebSocket), for live-delivery-change.
        max_payload: the largest forwarded message the mediator keeps.

    Raises:
        MediationError: with the problem-report code to answer.
    """
    type_ = message.get("type")
    if type_ == FORWARD:
        return routing.parse_forward_request(message, sender, max_payload=max_payload)
    if type_ == LIVE_DELIVERY_CHANGE:
        return pickup.parse_live_delivery_change(message, sender, live_capable=live_capable)
    parser = TABLE.get(type_) if isinstance(type_, str) else None
    if parser is None:
        raise MediationError(
            f"message type {str(type_)[:100]!r} is not one this mediator handles",
            code=Codes.UNSUPPORTED,
        )
    return parser(message, sender)
