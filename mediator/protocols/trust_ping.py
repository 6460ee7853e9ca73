"""Trust Ping 2.0, receiver role (didcomm.org/trust-ping/2.0).

A ``ping`` with ``response_requested`` (the default) gets a ``ping-response`` whose
``thid`` is the ping's id.  An anoncrypted ping is answered in plaintext on the same
connection: the shell has no DID to encrypt to, and a ping-response carries nothing secret.
"""

from __future__ import annotations

from typing import Any

from didsession.errors import MediationError
from mediator.protocols.events import PingReceived
from mediator.protocols.messages import PING_RESPONSE, Codes, body_of, make_reply, thread_of

__all__ = ["parse_ping", "ping_response"]


def parse_ping(message: dict[str, Any], sender: str | None) -> PingReceived:
    requested = body_of(message).get("response_requested", True)
    if not isinstance(requested, bool):
        raise MediationError("ping response_requested must be true or false", code=Codes.MALFORMED)
    return PingReceived(thread_of(message), sender, requested)


def ping_response(
    event: PingReceived, *, mediator_did: str, now: float | None = None
) -> dict[str, Any]:
    return make_reply(
        PING_RESPONSE, {}, frm=mediator_did, to=event.sender, thid=event.thid, now=now
    )
