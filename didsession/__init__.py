"""didsession: peer-DID identities, DIDComm v2 invitations and fast symmetric sessions."""

from __future__ import annotations

from didsession.errors import (
    ConfigError,
    DecryptError,
    DIDError,
    DidSessionError,
    EnvelopeError,
    IdentityError,
    InvitationError,
    ProtocolError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DIDError",
    "DecryptError",
    "DidSessionError",
    "EnvelopeError",
    "IdentityError",
    "InvitationError",
    "ProtocolError",
    "__version__",
]
