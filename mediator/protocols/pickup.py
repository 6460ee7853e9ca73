"""Message Pickup 3.0, mediator role (didcomm.org/messagepickup/3.0).

``status-request`` -> ``status``; ``delivery-request`` -> ``delivery`` (or ``status`` when
nothing is queued); ``messages-received`` -> ``status``; ``live-delivery-change`` ->
``status``, or problem-report ``e.m.live-mode-not-supported`` on a transport that cannot
push (HTTP).  All must be authcrypted: the authenticated sender sees and deletes only the
messages forwarded to DIDs on its own keylist.

Delivered messages stay queued until ``messages-received`` names them (spec: "MUST NOT be
deleted until delivery is acknowledged"), in live mode too: a connection that breaks
before the acknowledgement loses nothing, and the recipient drops duplicates by the
attachment id.  Attachment ids are the mediator's queue ids, opaque to the recipient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from didsession._dataclass import dataclass
from didsession.errors import MediationError
from mediator.protocols.events import (
    DeliveryRequested,
    Event,
    LiveDeliveryChanged,
    MessagesReceived,
    StatusRequested,
)
from mediator.protocols.messages import (
    PICKUP_DELIVERY,
    PICKUP_STATUS,
    Codes,
    b64url_encode,
    body_of,
    make_reply,
    optional_did,
    require_sender,
    thread_of,
)

__all__ = [
    "MAX_ACK_IDS",
    "MAX_DELIVERY_LIMIT",
    "QueueStatus",
    "Queued",
    "delivery",
    "parse_delivery_request",
    "parse_live_delivery_change",
    "parse_messages_received",
    "parse_status_request",
    "status",
]

MAX_DELIVERY_LIMIT = 100
MAX_ACK_IDS = 1000


@dataclass(frozen=True, slots=True)
class Queued:
    """One queued message as pickup delivers it."""

    id: str
    recipient_did: str
    data: bytes
    received: float


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The state of one recipient's queue (the ``status`` message's fields)."""

    message_count: int
    total_bytes: int
    oldest_received: float | None
    newest_received: float | None


def parse_status_request(message: dict[str, Any], sender: str | None) -> StatusRequested:
    owner = require_sender(message, sender)
    # Pickup 3.0 was published with ``recipient_key`` and later renamed it ``recipient_did``.
    did = optional_did(body_of(message), "recipient_did", "recipient_key")
    return StatusRequested(thread_of(message), owner, did)


def parse_delivery_request(message: dict[str, Any], sender: str | None) -> DeliveryRequested:
    owner = require_sender(message, sender)
    body = body_of(message)
    limit = body.get("limit")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise MediationError(
            "delivery-request needs body.limit, a positive integer", code=Codes.MALFORMED
        )
    did = optional_did(body, "recipient_did", "recipient_key")
    return DeliveryRequested(thread_of(message), owner, min(limit, MAX_DELIVERY_LIMIT), did)


def parse_messages_received(message: dict[str, Any], sender: str | None) -> MessagesReceived:
    owner = require_sender(message, sender)
    ids = body_of(message).get("message_id_list")
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 128 for i in ids):
        raise MediationError(
            "messages-received needs body.message_id_list, a list of ids", code=Codes.MALFORMED
        )
    if len(ids) > MAX_ACK_IDS:
        raise MediationError(
            f"messages-received names {len(ids)} messages; at most {MAX_ACK_IDS} at once",
            code=Codes.MALFORMED,
        )
    return MessagesReceived(thread_of(message), owner, tuple(dict.fromkeys(ids)))


def parse_live_delivery_change(
    message: dict[str, Any], sender: str | None, *, live_capable: bool
) -> LiveDeliveryChanged:
    owner = require_sender(message, sender)
    live = body_of(message).get("live_delivery")
    if not isinstance(live, bool):
        raise MediationError(
            "live-delivery-change needs body.live_delivery, true or false", code=Codes.MALFORMED
        )
    if live and not live_capable:
        raise MediationError(
            "this connection cannot carry live delivery: use the WebSocket endpoint",
            code=Codes.LIVE_MODE_NOT_SUPPORTED,
        )
    return LiveDeliveryChanged(thread_of(message), owner, live)


def status(
    event: Event,
    queue: QueueStatus,
    *,
    mediator_did: str,
    live: bool,
    recipient_did: str | None = None,
    now: float,
) -> dict[str, Any]:
    """The ``status`` message answering ``event`` (spec §Status)."""
    body: dict[str, Any] = {"message_count": queue.message_count}
    if recipient_did is not None:
        body["recipient_did"] = recipient_did
    if queue.message_count:
        assert queue.oldest_received is not None and queue.newest_received is not None
        body["longest_waited_seconds"] = max(0, int(now - queue.oldest_received))
        body["newest_received_time"] = int(queue.newest_received)
        body["oldest_received_time"] = int(queue.oldest_received)
    body["total_bytes"] = queue.total_bytes
    body["live_delivery"] = live
    return make_reply(
        PICKUP_STATUS, body, frm=mediator_did, to=event.sender, thid=event.thid, now=now
    )


def delivery(
    to: str,
    messages: Sequence[Queued],
    *,
    mediator_did: str,
    thid: str | None,
    recipient_did: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """A ``delivery`` of ``messages`` to ``to``: the answer to a delivery-request
    (``thid`` set), or a live push (``thid`` None)."""
    body: dict[str, Any] = {}
    if recipient_did is not None:
        body["recipient_did"] = recipient_did
    attachments = [
        {
            "id": m.id,
            "media_type": "application/didcomm-encrypted+json",
            "data": {"base64": b64url_encode(m.data)},
        }
        for m in messages
    ]
    return make_reply(
        PICKUP_DELIVERY,
        body,
        frm=mediator_did,
        to=to,
        thid=thid,
        now=now,
        attachments=attachments,
    )
