"""The session handshake: two DIDComm messages set up a :class:`Channel` (spec/session.md §3-§5).

Theory of operation
-------------------
The initiator sends ``request`` (its ephemeral X25519 key and what it offers), the responder
answers ``accept`` (its ephemeral key and what it picked) or ``problem-report``.  Both are
DIDComm v2 *plaintext* messages; the layer above packs them with authcrypt and, on receipt,
reports the sender DID that authcrypt authenticated.  This module never sees an envelope:
it takes plaintext bytes plus that sender DID, and returns plaintext bytes to pack.

After ``accept`` both sides hold ee, es and se (Noise KK's DH set without ss), hash both
messages' exact bytes into the transcript, and run HKDF (keyschedule.py).  The responder
can send frames as soon as it has sent ``accept``; the initiator as soon as it has read it:
one round trip.  A ``rekey`` message is a ``request`` that also names a live session and
mixes its resumption secret into the new keys: a fresh-DH successor session (§3.4).

The envelope's sender authentication (ECDH-1PU) is not trusted alone: it is KCI-vulnerable,
so a party whose static key leaked can be sent forged handshake messages "from" anyone.
Such a forgery cannot yield usable keys, because es and se each need a private key the
forger lacks (spec §11.2).

States (``HandshakeState``) and the transition table ``_TRANSITIONS``::

    INITIATOR: SEND_REQUEST --initiate()--> EXPECT_ACCEPT --accept---------> ESTABLISHED
                                                          --problem-report-> CLOSED
                                                          --timer----------> CLOSED
    RESPONDER: EXPECT_REQUEST --request|rekey (accepted)--> ESTABLISHED

Any (role, state, input) not in the table, and any invalid message, raises a
:class:`~didsession.errors.ProtocolError` and moves to ERROR.  A responder that refuses an
authenticated request queues a ``problem-report`` first (see :meth:`messages_to_send`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import field
from enum import Enum, StrEnum
from typing import Any

from didsession._dataclass import dataclass
from didsession.errors import (
    DidSessionError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from didsession.session.channel import DEFAULT_GRACE, Channel
from didsession.session.events import (
    Event,
    HandshakeTimedOut,
    SessionEstablished,
    SessionRefused,
)
from didsession.session.keyschedule import (
    DEFAULT_LIMITS,
    MAX_BYTES,
    MAX_MESSAGES,
    MAX_PAYLOAD,
    MAX_SECONDS,
    MIN_BYTES,
    MIN_MESSAGES,
    MIN_PAYLOAD,
    MIN_SECONDS,
    PROTOCOL_VERSION,
    Limits,
    PathKind,
    Resumption,
    Role,
    SessionParameters,
    Suite,
    derive_secrets,
    dh,
    public_key,
    transcript_hash,
)
from didsession.untrusted import parse_json

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PROTOCOL_URI",
    "Accept",
    "CloseMessage",
    "Handshake",
    "HandshakeState",
    "Message",
    "MessageType",
    "OutboundMessage",
    "ProblemReport",
    "Request",
    "SessionConfig",
    "close_message",
    "pull_message",
    "push_message",
    "receive_close_message",
]

PROTOCOL_URI = "https://didsession.dev/protocols/session/1.0/"
MAX_MESSAGE_SIZE = 65536
_MAX_LIST = 8
_MAX_NAME = 64
_MAX_DID = 8192
_MAX_COMMENT = 1024
_MALFORMED = "e.p.msg.session.malformed"
# Address candidates in request/accept (spec §15.1).
MAX_CANDIDATES = 16
_MAX_CANDIDATE_JSON = 256


class MessageType(StrEnum):
    """DIDComm message types of the protocol (spec §3)."""

    REQUEST = PROTOCOL_URI + "request"
    ACCEPT = PROTOCOL_URI + "accept"
    REKEY = PROTOCOL_URI + "rekey"
    CLOSE = PROTOCOL_URI + "close"
    PROBLEM_REPORT = PROTOCOL_URI + "problem-report"


# -- messages and their codec (spec §3) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """``request`` (spec §3.2), or ``rekey`` (§3.4) when ``resume`` names a session."""

    id: str
    sender: str
    recipient: str
    created_time: int
    versions: tuple[str, ...]
    suites: tuple[str, ...]
    paths: tuple[str, ...]
    epk: bytes
    limits: Limits
    max_payload: int
    resume: bytes | None = None
    candidates: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True, slots=True)
class Accept:
    """``accept`` (spec §3.3)."""

    id: str
    sender: str
    recipient: str
    created_time: int
    thid: str
    version: str
    suite: Suite
    path: PathKind
    epk: bytes
    limits: Limits
    max_payload: int
    candidates: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True, slots=True)
class ProblemReport:
    """``problem-report`` (spec §3.5)."""

    id: str
    sender: str
    recipient: str
    created_time: int
    thid: str
    code: str
    comment: str


@dataclass(frozen=True, slots=True)
class CloseMessage:
    """``close`` (spec §3.6): ends a session out of band."""

    id: str
    sender: str
    recipient: str
    created_time: int
    session_id: bytes
    code: str


Message = Request | Accept | ProblemReport | CloseMessage


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _limits_json(limits: Limits) -> dict[str, int]:
    return {"messages": limits.messages, "bytes": limits.bytes, "seconds": limits.seconds}


def push_message(msg: Message) -> bytes:
    """Serialize a message as compact JSON in the field order of spec §3.1."""
    out: dict[str, Any] = {"id": msg.id}
    body: dict[str, Any]
    if isinstance(msg, Request):
        out["type"] = MessageType.REKEY if msg.resume is not None else MessageType.REQUEST
        body = {
            "versions": list(msg.versions),
            "suites": list(msg.suites),
            "paths": list(msg.paths),
            "epk": _b64(msg.epk),
            "limits": _limits_json(msg.limits),
            "max_payload": msg.max_payload,
        }
        if msg.resume is not None:
            body["session_id"] = _b64(msg.resume)
        if msg.candidates is not None:
            body["candidates"] = list(msg.candidates)
    elif isinstance(msg, Accept):
        out["type"] = MessageType.ACCEPT
        body = {
            "version": msg.version,
            "suite": msg.suite.value,
            "path": msg.path.value,
            "epk": _b64(msg.epk),
            "limits": _limits_json(msg.limits),
            "max_payload": msg.max_payload,
        }
        if msg.candidates is not None:
            body["candidates"] = list(msg.candidates)
    elif isinstance(msg, ProblemReport):
        out["type"] = MessageType.PROBLEM_REPORT
        body = {"code": msg.code, "comment": msg.comment}
    else:
        out["type"] = MessageType.CLOSE
        body = {"session_id": _b64(msg.session_id), "code": msg.code}
    out["from"] = msg.sender
    out["to"] = [msg.recipient]
    out["created_time"] = msg.created_time
    if isinstance(msg, Accept | ProblemReport):
        out["thid"] = msg.thid
    out["body"] = body
    return json.dumps(out, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed handshake message: {what}", code=_MALFORMED)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _malformed(f"duplicate member {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise _malformed(f"non-finite number {name}")


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not an object")
    return value


def _str(d: dict[str, Any], key: str, max_len: int, *, min_len: int = 1) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not min_len <= len(value) <= max_len:
        raise _malformed(f"{key!r} is not a string of {min_len}..{max_len} characters")
    return value


def _int(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = d.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise _malformed(f"{key!r} is not an integer in [{lo}, {hi}]")
    return value


def _names(d: dict[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key)
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_LIST:
        raise _malformed(f"{key!r} is not a list of 1..{_MAX_LIST} names")
    for item in value:
        if not isinstance(item, str) or not 1 <= len(item) <= _MAX_NAME:
            raise _malformed(f"{key!r} holds something other than a short string")
    return tuple(value)


def _bytes(d: dict[str, Any], key: str, size: int) -> bytes:
    text = _str(d, key, 64)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"{key!r} is not base64url") from None
    if len(raw) != size or _b64(raw) != text:
        raise _malformed(f"{key!r} is not {size} bytes in unpadded base64url")
    return raw


def _limits(d: dict[str, Any]) -> Limits:
    lim = _obj(d.get("limits"), "limits")
    return Limits(
        messages=_int(lim, "messages", MIN_MESSAGES, MAX_MESSAGES),
        bytes=_int(lim, "bytes", MIN_BYTES, MAX_BYTES),
        seconds=_int(lim, "seconds", MIN_SECONDS, MAX_SECONDS),
    )


def _candidates(body: dict[str, Any]) -> tuple[dict[str, Any], ...] | None:
    """The optional ``candidates`` member (spec §15.1): a short list of small objects.  Their
    fields are checked where they are used (:mod:`didsession.candidates`); here only that
    they cannot be large."""
    value = body.get("candidates")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise _malformed(f"'candidates' is not a list of at most {MAX_CANDIDATES}")
    for item in value:
        if not isinstance(item, dict) or len(json.dumps(item)) > _MAX_CANDIDATE_JSON:
            raise _malformed("a candidate is not a small JSON object")
    return tuple(value)


def pull_message(data: bytes) -> Message:
    """Parse and validate a plaintext message of this protocol (spec §3).

    Unknown members are ignored; duplicate members, wrong types and out-of-range values are
    not.

    Raises:
        RemoteProtocolError: code ``e.p.msg.session.malformed``.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise _malformed("larger than 64 KiB")
    try:
        parsed = parse_json(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except RemoteProtocolError:
        raise
    except (ValueError, RecursionError):
        raise _malformed("not UTF-8 JSON") from None
    top = _obj(parsed, "message")
    mid = _str(top, "id", 128)
    mtype = _str(top, "type", 256)
    sender = _str(top, "from", _MAX_DID)
    to = top.get("to")
    if not isinstance(to, list) or len(to) != 1 or not isinstance(to[0], str):
        raise _malformed("'to' is not a list of one DID")
    recipient = to[0]
    created = _int(top, "created_time", 0, 2**53)
    body = _obj(top.get("body"), "body")
    if mtype in (MessageType.REQUEST, MessageType.REKEY):
        resume = _bytes(body, "session_id", 16) if mtype == MessageType.REKEY else None
        return Request(
            id=mid,
            sender=sender,
            recipient=recipient,
            created_time=created,
            versions=_names(body, "versions"),
            suites=_names(body, "suites"),
            paths=_names(body, "paths"),
            epk=_bytes(body, "epk", 32),
            limits=_limits(body),
            max_payload=_int(body, "max_payload", MIN_PAYLOAD, MAX_PAYLOAD),
            resume=resume,
            candidates=_candidates(body),
        )
    if mtype == MessageType.ACCEPT:
        suite = _str(body, "suite", _MAX_NAME)
        path = _str(body, "path", _MAX_NAME)
        if suite not in Suite.__members__.values() or path not in PathKind.__members__.values():
            raise _malformed("unknown suite or path in accept")
        return Accept(
            id=mid,
            sender=sender,
            recipient=recipient,
            created_time=created,
            thid=_str(top, "thid", 128),
            version=_str(body, "version", _MAX_NAME),
            suite=Suite(suite),
            path=PathKind(path),
            epk=_bytes(body, "epk", 32),
            limits=_limits(body),
            max_payload=_int(body, "max_payload", MIN_PAYLOAD, MAX_PAYLOAD),
            candidates=_candidates(body),
        )
    if mtype == MessageType.PROBLEM_REPORT:
        return ProblemReport(
            id=mid,
            sender=sender,
            recipient=recipient,
            created_time=created,
            thid=_str(top, "thid", 128),
            code=_str(body, "code", _MAX_NAME),
            comment=_str(body, "comment", _MAX_COMMENT, min_len=0),
        )
    if mtype == MessageType.CLOSE:
        return CloseMessage(
            id=mid,
            sender=sender,
            recipient=recipient,
            created_time=created,
            session_id=_bytes(body, "session_id", 16),
            code=_str(body, "code", _MAX_NAME, min_len=0),
        )
    raise RemoteProtocolError(
        f"not a session protocol message: {mtype[:80]!r}", code="e.p.msg.session.unexpected"
    )


def _new_id(rand: Callable[[int], bytes]) -> str:
    """A random UUID (version 4), as ``str(uuid.UUID(bytes=..., version=4))`` writes it
    (without importing :mod:`uuid`, which an MPyC party would load for this alone)."""
    b = bytearray(rand(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- the state machine --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A plaintext message for the layer above to pack (authcrypt) and deliver to ``to``."""

    plaintext: bytes
    to: str


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a party offers (initiator) or supports (responder) (spec §4.2).

    Attributes:
        versions, suites, paths: in preference order; the responder picks the first entry
            of the initiator's list that it supports.
        limits: key-update limits; the responder picks the component-wise minimum.
        max_payload: the largest payload this party accepts in one frame.
        timeout: how long an initiator waits for ``accept`` (seconds).
        grace: how long a datagram receiver keeps the previous key (spec §8.4).
    """

    versions: tuple[str, ...] = (PROTOCOL_VERSION,)
    suites: tuple[Suite, ...] = (Suite.AES256GCM, Suite.CHACHA20POLY1305)
    paths: tuple[PathKind, ...] = (PathKind.STREAM,)
    limits: Limits = field(default=DEFAULT_LIMITS)
    max_payload: int = 1 << 20
    timeout: float = 30.0
    grace: float = DEFAULT_GRACE

    def check(self) -> None:
        """Raise :class:`LocalProtocolError` if the configuration is unusable."""
        self.limits.check()
        if not (self.versions and set(self.versions) <= {PROTOCOL_VERSION}):
            raise LocalProtocolError(f"only session protocol version {PROTOCOL_VERSION}")
        if not self.suites or not self.paths:
            raise LocalProtocolError("offer at least one suite and one path")
        if not MIN_PAYLOAD <= self.max_payload <= MAX_PAYLOAD:
            raise LocalProtocolError("max_payload out of range")


class HandshakeState(Enum):
    """Where a handshake is; CLOSED and ERROR are terminal, ESTABLISHED is final."""

    SEND_REQUEST = "send request"
    EXPECT_REQUEST = "expect request"
    EXPECT_ACCEPT = "expect accept"
    ESTABLISHED = "established"
    CLOSED = "closed"
    ERROR = "error"


class _Input(Enum):
    INITIATE = "initiate"
    REQUEST = "request"
    ACCEPT = "accept"
    PROBLEM_REPORT = "problem-report"
    CLOSE = "close"
    TIMEOUT = "timeout"


_I, _R, _H = Role.INITIATOR, Role.RESPONDER, HandshakeState
_TRANSITIONS: dict[tuple[Role, HandshakeState, _Input], HandshakeState] = {
    (_I, _H.SEND_REQUEST, _Input.INITIATE): _H.EXPECT_ACCEPT,
    (_I, _H.EXPECT_ACCEPT, _Input.ACCEPT): _H.ESTABLISHED,
    (_I, _H.EXPECT_ACCEPT, _Input.PROBLEM_REPORT): _H.CLOSED,
    (_I, _H.EXPECT_ACCEPT, _Input.TIMEOUT): _H.CLOSED,
    (_R, _H.EXPECT_REQUEST, _Input.REQUEST): _H.ESTABLISHED,
}

PeerPolicy = Callable[[str], bool] | Collection[str]


class Handshake:
    """One side of the session handshake (spec §4).

    Args:
        role: INITIATOR or RESPONDER.
        local_did: our DID (``from`` of what we send).
        static_private: the 32-byte X25519 private key of our DID's keyAgreement key, the
            one the envelope uses.
        peer_static_key: resolves a DID to its 32-byte X25519 keyAgreement public key.
        peer_did: the initiator's peer (required); for a responder, the only DID accepted.
        accept_peer: responder policy: a set of acceptable initiator DIDs, or a predicate.
        config: what we offer or support.
        rand: randomness source (message ids; the ephemeral key if not given).
        ephemeral_private: inject the 32-byte ephemeral X25519 private key (test vectors).
        resume: initiator only: replace this session with a fresh-DH successor (``rekey``).
        resumptions: responder only: look up a live session by id for ``rekey``.

    Raises:
        LocalProtocolError: inconsistent arguments.
    """

    def __init__(
        self,
        role: Role,
        *,
        local_did: str,
        static_private: bytes,
        peer_static_key: Callable[[str], bytes],
        peer_did: str | None = None,
        accept_peer: PeerPolicy | None = None,
        config: SessionConfig | None = None,
        rand: Callable[[int], bytes] = os.urandom,
        ephemeral_private: bytes | None = None,
        resume: Resumption | None = None,
        resumptions: Callable[[bytes], Resumption | None] | None = None,
        candidates: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.role = role
        self.local_did = local_did
        self.config = config if config is not None else SessionConfig()
        self.config.check()
        if role is Role.INITIATOR and peer_did is None:
            raise LocalProtocolError("an initiator needs peer_did")
        if resume is not None and (role is not Role.INITIATOR or resume.peer_did != peer_did):
            raise LocalProtocolError("resume is for an initiator talking to the same peer")
        self.peer_did = peer_did
        self._static = static_private
        self._static_public = public_key(static_private)
        self._peer_static_key = peer_static_key
        self._accept_peer = accept_peer
        self._rand = rand
        self._ephemeral = ephemeral_private
        self._resume = resume
        self._resumptions = resumptions
        self._state = (
            HandshakeState.SEND_REQUEST if role is Role.INITIATOR else HandshakeState.EXPECT_REQUEST
        )
        self._request: Request | None = None
        self._request_bytes = b""
        self._deadline: float | None = None
        self._channel: Channel | None = None
        self._outbox: list[OutboundMessage] = []
        self._candidates = tuple(candidates) if candidates is not None else None
        # The candidates the peer sent (None: it sent none, e.g. relay-only).
        self.peer_candidates: tuple[dict[str, Any], ...] | None = None

    @property
    def state(self) -> HandshakeState:
        """The current :class:`HandshakeState`."""
        return self._state

    @property
    def channel(self) -> Channel:
        """The established channel.

        Raises:
            LocalProtocolError: the handshake is not ESTABLISHED.
        """
        if self._channel is None:
            raise LocalProtocolError(f"no channel: handshake is {self._state.name}")
        return self._channel

    def messages_to_send(self) -> list[OutboundMessage]:
        """Drain the messages produced by :meth:`receive_message` (accept, problem-report)."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """The initiator's deadline for ``accept``, or ``None``."""
        return self._deadline if self._state is HandshakeState.EXPECT_ACCEPT else None

    def handle_timer(self, now: float) -> list[Event]:
        """Give up waiting for ``accept`` once the deadline passed (spec §4.3)."""
        if self._deadline is None or self._state is not HandshakeState.EXPECT_ACCEPT:
            return []
        if now < self._deadline:
            return []
        self._advance(_Input.TIMEOUT)
        return [HandshakeTimedOut()]

    def initiate(self, now: float) -> OutboundMessage:
        """Build the ``request`` (or ``rekey``) message (spec §3.2, §4.1).

        Returns:
            The plaintext to pack for and send to ``peer_did``.

        Raises:
            LocalProtocolError: not an initiator in SEND_REQUEST.
        """
        self._advance(_Input.INITIATE, local=True)
        assert self.peer_did is not None
        eph = self._ephemeral if self._ephemeral is not None else self._rand(32)
        self._ephemeral = eph
        cfg = self.config
        request = Request(
            id=_new_id(self._rand),
            sender=self.local_did,
            recipient=self.peer_did,
            created_time=int(now),
            versions=cfg.versions,
            suites=tuple(s.value for s in cfg.suites),
            paths=tuple(p.value for p in cfg.paths),
            epk=public_key(eph),
            limits=cfg.limits,
            max_payload=cfg.max_payload,
            resume=self._resume.session_id if self._resume is not None else None,
            candidates=self._candidates,
        )
        self._request = request
        self._request_bytes = push_message(request)
        self._deadline = now + cfg.timeout
        return OutboundMessage(self._request_bytes, self.peer_did)

    def receive_message(self, plaintext: bytes, sender: str, now: float) -> list[Event]:
        """Consume a handshake message the envelope layer unpacked (spec §4).

        Args:
            plaintext: the DIDComm plaintext, byte for byte as the peer packed it.
            sender: the sender DID the envelope authenticated (authcrypt ``skid``'s DID).
            now: current time in seconds.

        Returns:
            ``[SessionEstablished]``, or ``[SessionRefused]`` for a problem-report.

        Raises:
            RemoteProtocolError: malformed or unexpected message, sender mismatch, failed
                negotiation or key agreement.  The handshake moves to ERROR; a responder may
                have queued a problem-report (see :meth:`messages_to_send`).
        """
        try:
            msg = pull_message(plaintext)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        kind = _input_of(msg)
        if (self.role, self._state, kind) not in _TRANSITIONS:
            raise self._fail(
                RemoteProtocolError(
                    f"unexpected {kind.value} in state {self._state.name}",
                    code="e.p.msg.session.unexpected",
                )
            )
        if msg.sender != sender or msg.recipient != self.local_did:
            raise self._fail(
                RemoteProtocolError(
                    "message 'from'/'to' do not match the authenticated envelope",
                    code="e.p.msg.session.sender",
                )
            )
        if isinstance(msg, Request):
            return self._on_request(msg, plaintext, now)
        if isinstance(msg, Accept):
            return self._on_accept(msg, plaintext, now)
        assert isinstance(msg, ProblemReport)
        return self._on_problem_report(msg)

    # -- internals -------------------------------------------------------------------

    def _advance(self, event: _Input, *, local: bool = False) -> None:
        try:
            self._state = _TRANSITIONS[self.role, self._state, event]
        except KeyError:
            msg = f"{self.role.value} cannot {event.value} in state {self._state.name}"
            exc = LocalProtocolError(msg) if local else RemoteProtocolError(msg)
            raise self._fail(exc) from None
        if self._state is not HandshakeState.EXPECT_ACCEPT:
            self._ephemeral = None

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._state = HandshakeState.ERROR
        self._ephemeral = None
        return exc

    def _refuse(self, request: Request, code: str, comment: str, now: float) -> ProtocolError:
        report = ProblemReport(
            id=_new_id(self._rand),
            sender=self.local_did,
            recipient=request.sender,
            created_time=int(now),
            thid=request.id,
            code=code,
            comment=comment,
        )
        self._outbox.append(OutboundMessage(push_message(report), request.sender))
        return self._fail(RemoteProtocolError(comment, code=code))

    def _peer_allowed(self, did: str) -> bool:
        if self.peer_did is not None and did != self.peer_did:
            return False
        policy = self._accept_peer
        if policy is None:
            return True
        if callable(policy):
            return bool(policy(did))
        return did in policy

    def _resolve(self, did: str) -> bytes:
        try:
            key = self._peer_static_key(did)
        except DidSessionError as exc:
            raise RemoteProtocolError(
                f"cannot resolve the key of {did[:80]}: {exc.message}", code="e.p.msg.session.key"
            ) from None
        if len(key) != 32:
            raise RemoteProtocolError("peer static key is not X25519", code="e.p.msg.session.key")
        return key

    def _on_request(self, req: Request, raw: bytes, now: float) -> list[Event]:
        """Responder: negotiate (spec §4.2), derive (§5), answer ``accept`` (§3.3)."""
        cfg = self.config
        if not self._peer_allowed(req.sender):
            raise self._refuse(req, "e.p.msg.session.unauthorized", "initiator refused", now)
        resumption = None
        if req.resume is not None:
            resumption = self._resumptions(req.resume) if self._resumptions else None
            if resumption is None or resumption.peer_did != req.sender:
                raise self._refuse(req, "e.p.msg.session.resume", "unknown session", now)
        version = next((v for v in req.versions if v in cfg.versions), None)
        if version is None:
            raise self._refuse(req, "e.p.msg.session.version", "no common version", now)
        suite = next((Suite(s) for s in req.suites if s in [c.value for c in cfg.suites]), None)
        if suite is None:
            raise self._refuse(req, "e.p.msg.session.suite", "no common suite", now)
        path = next((PathKind(p) for p in req.paths if p in [c.value for c in cfg.paths]), None)
        if path is None:
            raise self._refuse(req, "e.p.msg.session.path", "no common path", now)
        try:
            initiator_static = self._resolve(req.sender)
            eph = self._ephemeral if self._ephemeral is not None else self._rand(32)
            ee = dh(eph, req.epk)
            es = dh(self._static, req.epk)
            se = dh(eph, initiator_static)
        except RemoteProtocolError as exc:
            raise self._refuse(req, exc.code, exc.message, now) from None
        accept = Accept(
            id=_new_id(self._rand),
            sender=self.local_did,
            recipient=req.sender,
            created_time=int(now),
            thid=req.id,
            version=version,
            suite=suite,
            path=path,
            epk=public_key(eph),
            limits=req.limits.meet(cfg.limits),
            max_payload=cfg.max_payload,
            candidates=self._candidates,
        )
        accept_bytes = push_message(accept)
        params = SessionParameters(
            version, suite, path, accept.limits, req.max_payload, cfg.max_payload
        )
        th = transcript_hash(
            params,
            initiator_did=req.sender,
            responder_did=self.local_did,
            initiator_static=initiator_static,
            responder_static=self._static_public,
            request=raw,
            accept=accept_bytes,
        )
        secrets = derive_secrets(th, ee, es, se, resumption.secret if resumption else b"")
        self._channel = Channel(
            role=Role.RESPONDER,
            params=params,
            secrets=secrets,
            local_did=self.local_did,
            peer_did=req.sender,
            now=now,
            grace=cfg.grace,
        )
        self._outbox.append(OutboundMessage(accept_bytes, req.sender))
        self.peer_candidates = req.candidates
        self._advance(_Input.REQUEST)
        return [SessionEstablished(self._channel, req.sender, secrets.session_id, req.resume)]

    def _on_accept(self, acc: Accept, raw: bytes, now: float) -> list[Event]:
        """Initiator: check the responder's picks against our offer (§4.2), derive (§5)."""
        req = self._request
        assert req is not None and self._ephemeral is not None
        if acc.thid != req.id:
            raise self._fail(
                RemoteProtocolError("accept for another request", code="e.p.msg.session.unexpected")
            )
        if acc.sender != self.peer_did:
            raise self._fail(
                RemoteProtocolError("accept from the wrong DID", code="e.p.msg.session.sender")
            )
        offered = self.config
        if acc.version not in offered.versions:
            raise self._fail(
                RemoteProtocolError("version not offered", code="e.p.msg.session.version")
            )
        if acc.suite not in offered.suites:
            raise self._fail(RemoteProtocolError("suite not offered", code="e.p.msg.session.suite"))
        if acc.path not in offered.paths:
            raise self._fail(RemoteProtocolError("path not offered", code="e.p.msg.session.path"))
        if acc.limits.meet(offered.limits) != acc.limits:
            raise self._fail(
                RemoteProtocolError("limits above the offer", code="e.p.msg.session.params")
            )
        try:
            responder_static = self._resolve(acc.sender)
            ee = dh(self._ephemeral, acc.epk)
            es = dh(self._ephemeral, responder_static)
            se = dh(self._static, acc.epk)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        params = SessionParameters(
            acc.version, acc.suite, acc.path, acc.limits, offered.max_payload, acc.max_payload
        )
        th = transcript_hash(
            params,
            initiator_did=self.local_did,
            responder_did=acc.sender,
            initiator_static=self._static_public,
            responder_static=responder_static,
            request=self._request_bytes,
            accept=raw,
        )
        resume = self._resume
        secrets = derive_secrets(th, ee, es, se, resume.secret if resume is not None else b"")
        self._channel = Channel(
            role=Role.INITIATOR,
            params=params,
            secrets=secrets,
            local_did=self.local_did,
            peer_did=acc.sender,
            now=now,
            grace=offered.grace,
        )
        self.peer_candidates = acc.candidates
        self._advance(_Input.ACCEPT)
        return [
            SessionEstablished(
                self._channel,
                acc.sender,
                secrets.session_id,
                resume.session_id if resume is not None else None,
            )
        ]

    def _on_problem_report(self, report: ProblemReport) -> list[Event]:
        assert self._request is not None
        if report.thid != self._request.id or report.sender != self.peer_did:
            raise self._fail(
                RemoteProtocolError(
                    "problem-report for another request", code="e.p.msg.session.unexpected"
                )
            )
        self._advance(_Input.PROBLEM_REPORT)
        return [SessionRefused(report.code, report.comment)]


def _input_of(msg: Message) -> _Input:
    if isinstance(msg, Request):
        return _Input.REQUEST
    if isinstance(msg, Accept):
        return _Input.ACCEPT
    if isinstance(msg, ProblemReport):
        return _Input.PROBLEM_REPORT
    return _Input.CLOSE


# -- out-of-band close (spec §3.6) --------------------------------------------------------


def close_message(
    channel: Channel,
    *,
    now: float,
    code: str = "",
    rand: Callable[[int], bytes] = os.urandom,
) -> OutboundMessage:
    """Close ``channel`` and build the DIDComm ``close`` message for its peer (spec §3.6).

    Use it when no frame path is left; otherwise prefer :meth:`Channel.close`.
    """
    channel.close(code)
    msg = CloseMessage(
        id=_new_id(rand),
        sender=channel.local_did,
        recipient=channel.peer_did,
        created_time=int(now),
        session_id=channel.session_id,
        code=code,
    )
    return OutboundMessage(push_message(msg), channel.peer_did)


def receive_close_message(channel: Channel, plaintext: bytes, sender: str) -> list[Event]:
    """Apply a DIDComm ``close`` message to ``channel`` (spec §3.6).

    Returns:
        ``[SessionClosed(code, by_peer=True)]``, or ``[]`` if the channel was already closed.

    Raises:
        RemoteProtocolError: not a ``close`` for this session from its peer.
    """
    msg = pull_message(plaintext)
    if (
        not isinstance(msg, CloseMessage)
        or msg.sender != sender
        or sender != channel.peer_did
        or msg.recipient != channel.local_did
        or msg.session_id != channel.session_id
    ):
        raise RemoteProtocolError(
            "not a close message for this session from its peer", code="e.p.msg.session.sender"
        )
    return channel.peer_closed(msg.code)
