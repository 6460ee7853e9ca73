"""Message types, problem codes and the small codecs every mediator protocol shares.

Type URIs are the DIDComm protocol registry's (didcomm.org): Coordinate Mediation 2.0,
Routing 2.0, Message Pickup 3.0, Trust Ping 2.0, Discover Features 2.0, Report Problem 2.0.
Problem codes follow DIDComm Messaging v2 §"Problem Reports": ``e`` (error), ``p`` (the
protocol is abandoned) or ``m`` (only this message failed), then a descriptor from the
spec's list (``trust``, ``trust.crypto``, ``xfer``, ``did``, ``msg``, ``me``, ``me.res``,
``req``, ``req.time``, ``legal``), optionally refined by one more word of ours.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any, Final

from didsession.did import check_did_syntax
from didsession.errors import DIDError, MediationError

__all__ = [
    "DISCLOSE",
    "FEATURES_QUERIES",
    "FORWARD",
    "KEYLIST",
    "KEYLIST_QUERY",
    "KEYLIST_UPDATE",
    "KEYLIST_UPDATE_RESPONSE",
    "LIVE_DELIVERY_CHANGE",
    "MEDIATE_DENY",
    "MEDIATE_GRANT",
    "MEDIATE_REQUEST",
    "MESSAGES_RECEIVED",
    "PICKUP_DELIVERY",
    "PICKUP_DELIVERY_REQUEST",
    "PICKUP_STATUS",
    "PICKUP_STATUS_REQUEST",
    "PING",
    "PING_RESPONSE",
    "PROBLEM_REPORT",
    "PROTOCOLS",
    "Codes",
    "b64url_decode",
    "b64url_encode",
    "body_of",
    "make_reply",
    "optional_did",
    "problem_report",
    "require_sender",
    "thread_of",
]

COORDINATE_MEDIATION: Final = "https://didcomm.org/coordinate-mediation/2.0"
MEDIATE_REQUEST: Final = f"{COORDINATE_MEDIATION}/mediate-request"
MEDIATE_GRANT: Final = f"{COORDINATE_MEDIATION}/mediate-grant"
MEDIATE_DENY: Final = f"{COORDINATE_MEDIATION}/mediate-deny"
KEYLIST_UPDATE: Final = f"{COORDINATE_MEDIATION}/keylist-update"
KEYLIST_UPDATE_RESPONSE: Final = f"{COORDINATE_MEDIATION}/keylist-update-response"
KEYLIST_QUERY: Final = f"{COORDINATE_MEDIATION}/keylist-query"
KEYLIST: Final = f"{COORDINATE_MEDIATION}/keylist"

ROUTING: Final = "https://didcomm.org/routing/2.0"
FORWARD: Final = f"{ROUTING}/forward"

PICKUP: Final = "https://didcomm.org/messagepickup/3.0"
PICKUP_STATUS_REQUEST: Final = f"{PICKUP}/status-request"
PICKUP_STATUS: Final = f"{PICKUP}/status"
PICKUP_DELIVERY_REQUEST: Final = f"{PICKUP}/delivery-request"
PICKUP_DELIVERY: Final = f"{PICKUP}/delivery"
MESSAGES_RECEIVED: Final = f"{PICKUP}/messages-received"
LIVE_DELIVERY_CHANGE: Final = f"{PICKUP}/live-delivery-change"

TRUST_PING: Final = "https://didcomm.org/trust-ping/2.0"
PING: Final = f"{TRUST_PING}/ping"
PING_RESPONSE: Final = f"{TRUST_PING}/ping-response"

DISCOVER_FEATURES: Final = "https://didcomm.org/discover-features/2.0"
FEATURES_QUERIES: Final = f"{DISCOVER_FEATURES}/queries"
DISCLOSE: Final = f"{DISCOVER_FEATURES}/disclose"

PROBLEM_REPORT: Final = "https://didcomm.org/report-problem/2.0/problem-report"

# What Discover Features discloses: protocol URI -> roles the mediator plays in it.
PROTOCOLS: Final[dict[str, tuple[str, ...]]] = {
    COORDINATE_MEDIATION: ("mediator",),
    ROUTING: ("mediator",),
    PICKUP: ("mediator",),
    TRUST_PING: ("receiver",),
    DISCOVER_FEATURES: ("responder",),
    "https://didcomm.org/report-problem/2.0": ("notified",),
}

PLAIN_TYP: Final = "application/didcomm-plain+json"


class Codes:
    """Problem-report codes the mediator sends (DIDComm v2 §Problem Reports descriptors)."""

    MALFORMED: Final = "e.p.msg"  # a field is missing or of the wrong type
    UNSUPPORTED: Final = "e.p.msg.unsupported"  # a message type we do not handle
    TOO_BIG: Final = "e.p.msg.too-big"  # over the mediator's size limit
    UNAUTHENTICATED: Final = "e.p.trust"  # needs authcrypt from the DID it concerns
    NOT_GRANTED: Final = "e.p.req.not-granted"  # no mediation granted to the sender
    DENIED: Final = "e.p.req.denied"  # mediation refused by policy
    UNKNOWN_RECIPIENT: Final = "e.p.xfer.cant-use-endpoint"  # forward to a DID on no keylist
    EXPIRED: Final = "e.p.req.time"  # a forward whose expires_time has passed
    # the recipient's queue is at its limit, or a mediator-wide one is reached (grants,
    # keylist entries, queued messages or bytes of all DIDs)
    STORAGE_FULL: Final = "e.p.me.res.storage"
    QUOTA: Final = "e.p.me.res.quota"  # a relay quota is used up
    BUSY: Final = "e.p.req.busy"  # the relay slot is already held
    INTERNAL: Final = "e.p.me"  # our fault
    LIVE_MODE_NOT_SUPPORTED: Final = "e.m.live-mode-not-supported"  # pickup 3.0 §Live Mode


def b64url_encode(data: bytes) -> str:
    """base64url without padding, as DIDComm attachments carry it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode`; also accepts padding and the standard alphabet.

    Raises:
        MediationError: not base64 (code ``e.p.msg``).
    """
    if not isinstance(text, str):
        raise MediationError("attachment data is not a base64 string", code=Codes.MALFORMED)
    cleaned = text.strip().rstrip("=").replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MediationError("attachment data is not valid base64", code=Codes.MALFORMED) from exc


def make_reply(
    type_: str,
    body: dict[str, Any],
    *,
    frm: str,
    to: str | None,
    thid: str | None,
    now: float | None = None,
    msg_id: str | None = None,
    attachments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A plaintext DIDComm v2 message from the mediator (spec §2.4 message structure)."""
    msg: dict[str, Any] = {
        "id": msg_id or str(uuid.uuid4()),
        "typ": PLAIN_TYP,
        "type": type_,
        "from": frm,
    }
    if to:
        msg["to"] = [to]
    if thid:
        msg["thid"] = thid
    msg["created_time"] = int(time.time() if now is None else now)
    msg["body"] = body
    if attachments is not None:
        msg["attachments"] = attachments
    return msg


def problem_report(
    code: str,
    comment: str,
    *,
    frm: str,
    to: str | None,
    pthid: str | None,
    now: float | None = None,
    msg_id: str | None = None,
) -> dict[str, Any]:
    """A Report Problem 2.0 message; ``pthid`` names the thread the problem belongs to."""
    msg = make_reply(
        PROBLEM_REPORT,
        {"code": code, "comment": comment[:500]},
        frm=frm,
        to=to,
        thid=None,
        now=now,
        msg_id=msg_id,
    )
    if pthid:
        msg["pthid"] = pthid
    return msg


# -- field access shared by the parsers ----------------------------------------------------


def thread_of(message: dict[str, Any]) -> str:
    """The thread a reply to ``message`` belongs to: its ``thid``, else its ``id``."""
    thid = message.get("thid")
    if isinstance(thid, str) and thid:
        return thid[:256]
    msg_id = message.get("id")
    if not isinstance(msg_id, str) or not msg_id:
        raise MediationError("message has no id", code=Codes.MALFORMED)
    return msg_id[:256]


def body_of(message: dict[str, Any]) -> dict[str, Any]:
    """The message body; a missing body is an empty one (mediate-request has none)."""
    body = message.get("body", {})
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise MediationError("message body is not a JSON object", code=Codes.MALFORMED)
    return body


def require_sender(message: dict[str, Any], sender: str | None) -> str:
    """The authenticated sender, or MediationError: this request needs authcrypt."""
    if sender is None:
        raise MediationError(
            f"{str(message.get('type'))[:80]} must be authcrypted by the DID it concerns",
            code=Codes.UNAUTHENTICATED,
        )
    return sender


def optional_did(body: dict[str, Any], *names: str) -> str | None:
    """The first of ``names`` present in ``body``, checked to be a DID (or None)."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        try:
            return check_did_syntax(value.split("#", 1)[0] if isinstance(value, str) else value)
        except DIDError as exc:
            raise MediationError(f"{name}: {exc.message}", code=Codes.MALFORMED) from exc
    return None
