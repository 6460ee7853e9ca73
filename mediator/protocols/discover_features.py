"""Discover Features 2.0, responder role (didcomm.org/discover-features/2.0).

``queries`` carries ``{"feature-type": ..., "match": glob}`` items; the ``disclose`` reply
lists each supported protocol (with the roles the mediator plays) whose URI matches a
``protocol`` query.  Other feature types (goal codes, headers) match nothing here: the
spec lets a responder disclose less than it supports, never more.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from didsession.errors import MediationError
from mediator.protocols.events import FeaturesQueried
from mediator.protocols.messages import DISCLOSE, Codes, body_of, make_reply, thread_of

__all__ = ["MAX_QUERIES", "disclose", "parse_queries"]

MAX_QUERIES = 16


def parse_queries(message: dict[str, Any], sender: str | None) -> FeaturesQueried:
    queries = body_of(message).get("queries")
    if not isinstance(queries, list) or not queries:
        raise MediationError("queries needs body.queries, a non-empty list", code=Codes.MALFORMED)
    if len(queries) > MAX_QUERIES:
        raise MediationError(f"at most {MAX_QUERIES} queries at once", code=Codes.MALFORMED)
    parsed = []
    for q in queries:
        ftype = q.get("feature-type") if isinstance(q, dict) else None
        match = q.get("match") if isinstance(q, dict) else None
        if not isinstance(ftype, str) or not isinstance(match, str) or len(match) > 256:
            raise MediationError(
                "each query needs string feature-type and match", code=Codes.MALFORMED
            )
        parsed.append((ftype, match))
    return FeaturesQueried(thread_of(message), sender, tuple(parsed))


def disclose(
    event: FeaturesQueried,
    protocols: Mapping[str, tuple[str, ...]],
    *,
    mediator_did: str,
    now: float | None = None,
) -> dict[str, Any]:
    disclosures = []
    seen: set[str] = set()
    for ftype, match in event.queries:
        if ftype != "protocol":
            continue
        for uri, roles in protocols.items():
            if uri not in seen and fnmatch.fnmatchcase(uri, match):
                seen.add(uri)
                disclosures.append({"feature-type": "protocol", "id": uri, "roles": list(roles)})
    return make_reply(
        DISCLOSE,
        {"disclosures": disclosures},
        frm=mediator_did,
        to=event.sender,
        thid=event.thid,
        now=now,
    )
