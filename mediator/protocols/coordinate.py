"""Coordinate Mediation 2.0, mediator role (didcomm.org/coordinate-mediation/2.0).

``mediate-request`` -> ``mediate-grant`` (``routing_did``: the mediator's DID, which the
recipient puts as the ``uri`` of its DIDCommMessaging service) or ``mediate-deny``;
``keylist-update`` -> ``keylist-update-response`` (per update: ``success``, ``no_change``,
``client_error``, ``server_error``); ``keylist-query`` -> ``keylist``.

Every request must be authcrypted: the authenticated sender is the DID mediation is
granted to, and it owns the messages forwarded to the DIDs on its keylist.

Who may add a DID to a keylist (the spec leaves this open and names the risk: a stranger
registering someone else's DID first).  Here a sender may add its own DID or a DID that
uses the keyAgreement key the request was authcrypted from: authcrypt proves the sender
holds that key, and only that one (a DID document may list anybody's public keys);
:func:`may_register` is the rule and the shell can switch it off.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from didsession.errors import MediationError
from mediator.protocols.events import (
    KeylistAction,
    KeylistQueried,
    KeylistUpdate,
    KeylistUpdateRequested,
    MediationRequested,
)
from mediator.protocols.messages import (
    KEYLIST,
    KEYLIST_UPDATE_RESPONSE,
    MEDIATE_DENY,
    MEDIATE_GRANT,
    Codes,
    body_of,
    make_reply,
    optional_did,
    require_sender,
    thread_of,
)

__all__ = [
    "MAX_KEYLIST_OFFSET",
    "MAX_KEYLIST_PAGE",
    "MAX_UPDATES",
    "KeylistResult",
    "keylist",
    "keylist_update_response",
    "may_register",
    "mediate_deny",
    "mediate_grant",
    "parse_keylist_query",
    "parse_keylist_update",
    "parse_mediate_request",
]

MAX_UPDATES = 100  # updates in one keylist-update
MAX_KEYLIST_PAGE = 100
# offset + limit must still fit a signed 64-bit integer (SQLite's OFFSET, Redis's ZRANGE).
MAX_KEYLIST_OFFSET = 2**63 - 1 - MAX_KEYLIST_PAGE


class KeylistResult:
    """The ``result`` values of a keylist-update-response."""

    SUCCESS = "success"
    NO_CHANGE = "no_change"
    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"


def parse_mediate_request(message: dict[str, Any], sender: str | None) -> MediationRequested:
    body_of(message)
    return MediationRequested(thread_of(message), require_sender(message, sender))


def parse_keylist_update(message: dict[str, Any], sender: str | None) -> KeylistUpdateRequested:
    owner = require_sender(message, sender)
    updates = body_of(message).get("updates")
    if not isinstance(updates, list):
        raise MediationError("keylist-update needs body.updates, a list", code=Codes.MALFORMED)
    if len(updates) > MAX_UPDATES:
        raise MediationError(
            f"keylist-update has {len(updates)} updates; at most {MAX_UPDATES} per message",
            code=Codes.MALFORMED,
        )
    parsed = []
    for update in updates:
        if not isinstance(update, dict):
            raise MediationError("each keylist update must be an object", code=Codes.MALFORMED)
        did = optional_did(update, "recipient_did")
        if did is None:
            raise MediationError("a keylist update has no recipient_did", code=Codes.MALFORMED)
        try:
            action = KeylistAction(update.get("action"))
        except ValueError:
            raise MediationError(
                f"keylist update action must be 'add' or 'remove', not {update.get('action')!r}",
                code=Codes.MALFORMED,
            ) from None
        parsed.append(KeylistUpdate(did, action))
    return KeylistUpdateRequested(thread_of(message), owner, tuple(parsed))


def parse_keylist_query(message: dict[str, Any], sender: str | None) -> KeylistQueried:
    """Validate a keylist-query; ``limit`` is capped at :data:`MAX_KEYLIST_PAGE`.

    Raises:
        MediationError: ``paginate`` malformed, ``offset`` not in ``0..MAX_KEYLIST_OFFSET``
            or ``limit`` below 1 (``e.p.msg``).
    """
    owner = require_sender(message, sender)
    paginate = body_of(message).get("paginate")
    offset, limit = 0, MAX_KEYLIST_PAGE
    if paginate is not None:
        if not isinstance(paginate, dict):
            raise MediationError("keylist-query paginate must be an object", code=Codes.MALFORMED)
        offset, limit = paginate.get("offset", 0), paginate.get("limit", MAX_KEYLIST_PAGE)
        if not _integer(offset, 0, MAX_KEYLIST_OFFSET) or not _integer(limit, 1, None):
            raise MediationError(
                f"paginate.offset must be an integer from 0 to {MAX_KEYLIST_OFFSET} and "
                "paginate.limit a positive integer",
                code=Codes.MALFORMED,
            )
    return KeylistQueried(thread_of(message), owner, offset, min(limit, MAX_KEYLIST_PAGE))


def may_register(
    sender: str,
    recipient_did: str,
    sender_keys: Iterable[bytes],
    recipient_keys: Iterable[bytes],
) -> bool:
    """Whether ``sender`` may route ``recipient_did``: its own DID, or one sharing a key.

    Args:
        sender_keys: the keys the sender proved it holds (the one its request was
            authcrypted from), not every key its document lists.
        recipient_keys: the keyAgreement public keys of ``recipient_did``.
    """
    if sender == recipient_did:
        return True
    return bool(set(sender_keys) & set(recipient_keys))


def mediate_grant(
    event: MediationRequested, *, mediator_did: str, routing_did: str, now: float | None = None
) -> dict[str, Any]:
    # Coordinate Mediation 2.0 §Mediate Grant: routing_did is one DID (3.0 makes it a list).
    return make_reply(
        MEDIATE_GRANT,
        {"routing_did": routing_did},
        frm=mediator_did,
        to=event.sender,
        thid=event.thid,
        now=now,
    )


def mediate_deny(
    event: MediationRequested, *, mediator_did: str, now: float | None = None
) -> dict[str, Any]:
    return make_reply(MEDIATE_DENY, {}, frm=mediator_did, to=event.sender, thid=event.thid, now=now)


def keylist_update_response(
    event: KeylistUpdateRequested,
    results: Sequence[str],
    *,
    mediator_did: str,
    now: float | None = None,
) -> dict[str, Any]:
    updated = [
        {"recipient_did": u.recipient_did, "action": u.action.value, "result": r}
        for u, r in zip(event.updates, results, strict=True)
    ]
    return make_reply(
        KEYLIST_UPDATE_RESPONSE,
        {"updated": updated},
        frm=mediator_did,
        to=event.sender,
        thid=event.thid,
        now=now,
    )


def keylist(
    event: KeylistQueried,
    dids: Sequence[str],
    total: int,
    *,
    mediator_did: str,
    now: float | None = None,
) -> dict[str, Any]:
    body = {
        "keys": [{"recipient_did": did} for did in dids],
        "pagination": {
            "count": len(dids),
            "offset": event.offset,
            "remaining": max(0, total - event.offset - len(dids)),
        },
    }
    return make_reply(KEYLIST, body, frm=mediator_did, to=event.sender, thid=event.thid, now=now)


def _integer(value: object, low: int, high: int | None) -> bool:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        return False
    return high is None or value <= high
