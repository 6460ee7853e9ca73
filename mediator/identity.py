"""The mediator's own peer DID: created on first start, kept in its data directory.

It is an ordinary didsession identity (``DATA_DIR/identities/mediator/``, the secret file
mode 0600 from the first byte) whose DIDCommMessaging service is the mediator's public
endpoint.  The DID never changes: a peer DID *is* its document, so moving the mediator to
another URL means a new identity (delete the folder) and parties requesting mediation anew.
Several instances of one deployment share the same identity folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from didsession._dataclass import dataclass
from didsession.envelope import Envelope
from didsession.identity import Identity, Store
from didsession.invitation import Invitation, make_invitation
from mediator.logs import short_did

__all__ = ["IDENTITY_NAME", "MEDIATE_GOAL_CODE", "MediatorIdentity", "load_or_create"]

IDENTITY_NAME = "mediator"
MEDIATE_GOAL_CODE = "didsession.mediate"

log = logging.getLogger("mediator")


@dataclass(frozen=True, slots=True)
class MediatorIdentity:
    """The mediator's DID, its keys loaded into an envelope, and its invitation."""

    did: str
    identity: Identity
    envelope: Envelope
    invitation: Invitation
    endpoint: str  # the service endpoint in the DID document


def load_or_create(data_dir: Path, endpoint: str, label: str) -> MediatorIdentity:
    """Load the mediator identity from ``data_dir``, creating it on first start.

    Raises:
        ConfigError / IdentityError: the folder is unreadable or its keys are corrupt.
    """
    store = Store(data_dir)
    if IDENTITY_NAME in store.names():
        ident = store.load(IDENTITY_NAME)
        if ident.mediator != endpoint:
            log.warning(
                "the mediator DID names another endpoint than public_url; peers will use the "
                "DID's; delete the identity folder to get a new DID",
                extra={"did_endpoint": ident.mediator, "public_endpoint": endpoint},
            )
        created = False
    else:
        ident = store.create(IDENTITY_NAME, mediator=endpoint)
        created = True
    assert ident.ed25519_secret is not None and ident.x25519_secret is not None
    envelope = Envelope()
    envelope.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
    log.info(
        "mediator identity created" if created else "mediator identity loaded",
        extra={"did": short_did(ident.did), "endpoint": ident.mediator},
    )
    return MediatorIdentity(
        did=ident.did,
        identity=ident,
        envelope=envelope,
        invitation=mediator_invitation(ident.did, label),
        endpoint=ident.mediator or endpoint,
    )


def mediator_invitation(did: str, label: str) -> Invitation:
    """An Out-of-Band 2.0 invitation to request mediation from ``did``."""
    base = make_invitation(did, label)
    message: dict[str, Any] = dict(base.message)
    message["body"] = dict(
        base.message["body"],
        goal_code=MEDIATE_GOAL_CODE,
        goal=f"Request mediation from {label}",
    )
    return Invitation(base.id, did, label, MEDIATE_GOAL_CODE, message)
