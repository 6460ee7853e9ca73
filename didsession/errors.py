"""The one error tree of didsession.

Every error a user, a peer or a test can see is a :class:`DidSessionError`.  Each carries
``message`` (what to tell a person) and ``code`` (what to tell a peer: a DIDComm
problem-report code such as ``e.p.msg.decrypt`` or a session close reason).  The CLI turns
any of them into one line on stderr and a non-zero exit; nothing else escapes as a
traceback.

    DidSessionError
    ├── ConfigError           bad configuration, identity store or roster on disk
    │   └── IdentityError     missing/locked/corrupt identity
    ├── DIDError              malformed or unresolvable DID / DID document
    ├── InvitationError       malformed, oversized or unsupported invitation
    ├── EnvelopeError         a DIDComm v2 message cannot be packed or unpacked
    │   └── DecryptError      (also a RemoteProtocolError) tampered, wrong recipient, unknown key
    └── ProtocolError         a protocol state machine refused input
        ├── LocalProtocolError    we were asked to do something the protocol forbids
        └── RemoteProtocolError   the peer sent something the protocol forbids
            ├── DecryptError
            ├── ReplayError
            ├── StunParseError
            ├── FrameError
            └── MediationError    a mediator refused a request (its problem-report code)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DIDError",
    "DecryptError",
    "DidSessionError",
    "EnvelopeError",
    "FrameError",
    "IdentityError",
    "InvitationError",
    "LocalProtocolError",
    "MediationError",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplayError",
    "StunParseError",
]


class DidSessionError(Exception):
    """Base of every error didsession raises on purpose.

    Args:
        message: one sentence a person understands (no secrets, no key material).
        code: what to tell the peer, a DIDComm problem-report code or close reason.
    """

    code: str = "e.p.me.res"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(DidSessionError):
    """Configuration, store or roster on disk is missing or invalid."""

    code = "e.p.me.res.config"


class IdentityError(ConfigError):
    """An identity is missing, locked (needs a passphrase) or corrupt."""

    code = "e.p.me.res.identity"


class DIDError(DidSessionError):
    """A DID or DID document is malformed, unsupported or unresolvable."""

    code = "e.p.did"


class InvitationError(DidSessionError):
    """An out-of-band invitation is malformed, oversized or unsupported."""

    code = "e.p.msg.invitation"


class EnvelopeError(DidSessionError):
    """A DIDComm v2 message cannot be packed or unpacked."""

    code = "e.p.msg"


class ProtocolError(DidSessionError):
    """A protocol state machine refused input; its connection moves to a terminal state."""

    code = "e.p.msg.protocol"


class LocalProtocolError(ProtocolError):
    """We tried something the protocol forbids in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class DecryptError(EnvelopeError, RemoteProtocolError):
    """An encrypted message or frame failed authentication or has no key of ours."""

    code = "e.p.msg.decrypt"


class ReplayError(RemoteProtocolError):
    """A frame was seen before, or is older than the replay window."""

    code = "e.p.msg.replay"


class StunParseError(RemoteProtocolError):
    """A STUN packet is malformed."""

    code = "e.p.stun.parse"


class FrameError(RemoteProtocolError):
    """A session frame is malformed (before any decryption is attempted)."""

    code = "e.p.msg.frame"


class MediationError(RemoteProtocolError):
    """A mediation, pickup or relay request was refused, or the other side broke the protocol.

    On the mediator it becomes a problem-report with ``code``; on the client it carries the
    code of the problem-report the mediator sent.
    """

    code = "e.p.req"
