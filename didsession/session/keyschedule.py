"""Key schedule of a didsession session (spec/session.md §5 and §8).

Everything the keys depend on lives here: roles, suites, path kinds, the negotiated
parameters, the transcript hash, the HKDF-SHA256 derivations and the per-direction
traffic-secret ratchet.  No state, no I/O: pure functions over bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import field
from enum import Enum, StrEnum

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from didsession import _x25519 as x25519
from didsession._dataclass import dataclass
from didsession.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
    "Limits",
    "PathKind",
    "Resumption",
    "Role",
    "SessionParameters",
    "SessionSecrets",
    "Suite",
    "derive_secrets",
    "dh",
    "hkdf_expand",
    "hkdf_extract",
    "make_aead",
    "next_traffic_secret",
    "path_check_key",
    "public_key",
    "traffic_key",
    "transcript_hash",
]

PROTOCOL_VERSION = "1.0"
_LABEL = b"didsession/1.0 "
_U32 = struct.Struct(">I")

# Bounds of the negotiable parameters (spec §4.2).
MIN_MESSAGES, MAX_MESSAGES = 16, 1 << 32
MIN_BYTES, MAX_BYTES = 1 << 24, 1 << 38
MIN_SECONDS, MAX_SECONDS = 1, 86_400
MIN_PAYLOAD, MAX_PAYLOAD = 64, 1 << 24


class Role(Enum):
    """Which end of the handshake a party is."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


class Suite(StrEnum):
    """Cipher suites (spec §5.6).  Both use X25519 and HKDF-SHA256; they differ in the AEAD."""

    AES256GCM = "X25519-AES256GCM-SHA256"
    CHACHA20POLY1305 = "X25519-CHACHA20POLY1305-SHA256"


class PathKind(StrEnum):
    """How frames travel (spec §6.1): a reliable ordered byte stream, or datagrams."""

    STREAM = "stream"
    DATAGRAM = "datagram"


@dataclass(frozen=True, slots=True)
class Limits:
    """Key-update limits per direction and epoch (spec §8.1): whichever comes first."""

    messages: int = 1 << 20
    bytes: int = 1 << 32
    seconds: int = 600

    def check(self) -> None:
        """Raise :class:`LocalProtocolError` if a limit is outside the bounds of spec §4.2."""
        if not (
            MIN_MESSAGES <= self.messages <= MAX_MESSAGES
            and MIN_BYTES <= self.bytes <= MAX_BYTES
            and MIN_SECONDS <= self.seconds <= MAX_SECONDS
        ):
            raise LocalProtocolError(f"key-update limits out of range: {self}")

    def meet(self, other: Limits) -> Limits:
        """The component-wise minimum: what a responder picks (spec §4.2)."""
        return Limits(
            min(self.messages, other.messages),
            min(self.bytes, other.bytes),
            min(self.seconds, other.seconds),
        )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class SessionParameters:
    """What the handshake negotiated (spec §4.2); bound into the transcript hash."""

    version: str
    suite: Suite
    path: PathKind
    limits: Limits
    initiator_max_payload: int
    responder_max_payload: int


@dataclass(frozen=True, slots=True)
class SessionSecrets:
    """Output of the key schedule (spec §5.4).  Treat every field but the ids as secret;
    repr() shows only the ids."""

    transcript_hash: bytes = field(repr=False)
    session_id: bytes
    i2r_secret: bytes = field(repr=False)
    r2i_secret: bytes = field(repr=False)
    i2r_tag: bytes = field(repr=False)
    r2i_tag: bytes = field(repr=False)
    attach_id: bytes
    resumption_secret: bytes = field(repr=False)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 §2.2)."""
    return hmac.digest(salt, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 §2.3); ``length`` <= 255 * 32."""
    out = b""
    block = b""
    i = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((i,)), "sha256")
        out += block
        i += 1
    return out[:length]


def _expand(secret: bytes, label: str, length: int) -> bytes:
    return hkdf_expand(secret, _LABEL + label.encode("ascii"), length)


def _lp(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    if len(private) != 32:
        raise LocalProtocolError("an X25519 private key is 32 bytes")
    return x25519.private_key(private).public_key().public_bytes_raw()


def dh(private: bytes, public: bytes) -> bytes:
    """X25519(private, public), refusing the all-zero output of small-order points (spec §5.2).

    Raises:
        RemoteProtocolError: ``public`` is not 32 bytes or is a small-order point
            (code ``e.p.msg.session.key``).
    """
    if len(public) != 32:
        raise RemoteProtocolError("an X25519 public key is 32 bytes", code="e.p.msg.session.key")
    try:
        return x25519.private_key(private).exchange(x25519.public_key(public))
    except ValueError:
        raise RemoteProtocolError(
            "X25519 with a small-order public key", code="e.p.msg.session.key"
        ) from None


def transcript_hash(
    params: SessionParameters,
    *,
    initiator_did: str,
    responder_did: str,
    initiator_static: bytes,
    responder_static: bytes,
    request: bytes,
    accept: bytes,
) -> bytes:
    """TH of spec §5.3: SHA-256 over the label, parameters, identities and both messages."""
    h = hashlib.sha256(_LABEL + b"transcript")
    for item in (
        params.version.encode(),
        params.suite.value.encode(),
        params.path.value.encode(),
        initiator_did.encode(),
        responder_did.encode(),
        initiator_static,
        responder_static,
        request,
        accept,
    ):
        h.update(_lp(item))
    return h.digest()


def derive_secrets(
    th: bytes, ee: bytes, es: bytes, se: bytes, resumption: bytes = b""
) -> SessionSecrets:
    """The session secrets of spec §5.4.

    Args:
        th: the transcript hash (§5.3), used as the HKDF salt.
        ee: X25519(e_I, E_R).  es: X25519(e_I, S_R).  se: X25519(s_I, E_R).
        resumption: the replaced session's resumption secret for a ``rekey`` handshake
            (spec §3.4), else empty.
    """
    prk = hkdf_extract(th, ee + es + se + resumption)
    return SessionSecrets(
        transcript_hash=th,
        session_id=_expand(prk, "session id", 16),
        i2r_secret=_expand(prk, "i2r", 32),
        r2i_secret=_expand(prk, "r2i", 32),
        i2r_tag=_expand(prk, "tag i2r", 4),
        r2i_tag=_expand(prk, "tag r2i", 4),
        attach_id=_expand(prk, "attach", 16),
        resumption_secret=_expand(prk, "resumption", 32),
    )


def next_traffic_secret(secret: bytes) -> bytes:
    """ts[n+1] = HKDF-Expand(ts[n], "didsession/1.0 key update", 32)  (spec §8.2)."""
    return _expand(secret, "key update", 32)


def traffic_key(secret: bytes) -> bytes:
    """k[n] = HKDF-Expand(ts[n], "didsession/1.0 key", 32)  (spec §5.5)."""
    return _expand(secret, "key", 32)


def make_aead(suite: Suite, key: bytes) -> AESGCM | ChaCha20Poly1305:
    """The AEAD object for a suite; created once per key epoch and cached (spec §5.6)."""
    if suite is Suite.AES256GCM:
        return AESGCM(key)
    return ChaCha20Poly1305(key)


def path_check_key(resumption_secret: bytes) -> bytes:
    """The key that authenticates path checks and multipath messages (spec §15.2): from
    the resumption secret, so only the two ends of the session can derive it."""
    return _expand(resumption_secret, "path check", 32)


@dataclass(frozen=True, slots=True)
class Resumption:
    """What a ``rekey`` handshake needs from the session it replaces (spec §3.4)."""

    session_id: bytes
    peer_did: str
    secret: bytes = field(repr=False)
