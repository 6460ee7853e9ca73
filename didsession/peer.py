"""Sessions as a local identity: the glue between the identity store, the envelope module
and the session protocol.

:func:`connect` and :func:`serve` run the session handshake (spec/session.md §4.4) on a
TCP connection, each handshake message authcrypt-packed from the local identity to the
peer.  The peer's DID is what authcrypt authenticated; the handshake refuses a peer that
is not the one expected.

:class:`HandshakeCodec` packs those messages with :mod:`didsession.authcrypt` (the same
authcrypt as :class:`~didsession.envelope.Envelope`, on ``cryptography`` alone) and hands
what that module does not handle to the full ``Envelope``, imported on first need: a
process that only runs sessions (an MPyC party) never loads the DIDComm libraries.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING

from didsession.authcrypt import Authcrypt, NeedsFullEnvelope
from didsession.errors import DecryptError, DIDError
from didsession.session import Handshake, Role, SessionConfig
from didsession.session.stream import PackFn, Session, UnpackFn, accept_session, open_session

if TYPE_CHECKING:
    from didsession.envelope import Envelope
    from didsession.identity import Identity

__all__ = ["HandshakeCodec", "connect", "envelope_for", "handshake_codec", "serve"]


def envelope_for(identity: Identity, envelope: Envelope | None = None) -> Envelope:
    """An envelope holding ``identity``'s keys (added to ``envelope`` if given)."""
    from didsession.envelope import Envelope

    env = envelope or Envelope()
    if identity.ed25519_secret is None or identity.x25519_secret is None:
        raise DIDError(f"identity {identity.name!r} is locked: load it with its keys")
    env.add_identity(identity.did, identity.ed25519_secret, identity.x25519_secret)
    return env


def handshake_codec(envelope: Envelope, local_did: str) -> tuple[PackFn, UnpackFn]:
    """``pack``/``unpack`` for the session layer: authcrypt from ``local_did``, nothing else,
    all of it by ``envelope`` (see :class:`HandshakeCodec` for the light way)."""

    async def pack(plaintext: bytes, to: str) -> bytes:
        return (await envelope.pack_plaintext(plaintext, to=to, frm=local_did, forward=False)).data

    async def unpack(packed: bytes) -> tuple[bytes, str]:
        got = await envelope.unpack(packed)
        if not got.authenticated or got.sender_did is None:
            raise DecryptError("session handshake messages must be authcrypt, not anoncrypt")
        return got.plaintext, got.sender_did

    return pack, unpack


class HandshakeCodec:
    """Packs and unpacks the session handshake's messages for one local identity
    (spec/session.md §4.4): authcrypt from its DID, nothing else.

    :class:`~didsession.authcrypt.Authcrypt` does the work; a message or a DID it does not
    handle (:class:`~didsession.authcrypt.NeedsFullEnvelope`) goes to :attr:`envelope`.

    Args:
        identity: the local identity, unlocked.
        envelope: the full envelope to fall back on (default: one made on first need).
        rand: randomness for the light codec (tests inject it).

    Raises:
        DIDError: the identity is locked.
        EnvelopeError: its X25519 secret does not belong to its DID.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        envelope: Envelope | None = None,
        rand: Callable[[int], bytes] | None = None,
    ) -> None:
        if identity.ed25519_secret is None or identity.x25519_secret is None:
            raise DIDError(f"identity {identity.name!r} is locked: load it with its keys")
        self.identity = identity
        self.did = identity.did
        self._given = envelope
        self._envelope: Envelope | None = None
        self.lite: Authcrypt | None
        try:
            self.lite = Authcrypt(identity.did, identity.x25519_secret, rand=rand or os.urandom)
        except NeedsFullEnvelope:  # our own DID is one the light codec cannot read
            self.lite = None
        self.fallbacks = 0  # messages the full envelope handled (for tests and logs)

    @property
    def envelope(self) -> Envelope:
        """The full envelope with this identity's keys (imported and built on first use)."""
        if self._envelope is None:
            self._envelope = envelope_for(self.identity, self._given)
        return self._envelope

    async def pack(self, plaintext: bytes, to: str) -> bytes:
        """Authcrypt ``plaintext`` from our DID to ``to`` (a :data:`PackFn`)."""
        if self.lite is not None:
            try:
                return self.lite.pack(plaintext, to)
            except NeedsFullEnvelope:
                pass
        self.fallbacks += 1
        env = self.envelope
        packed = await env.pack_plaintext(plaintext, to=to, frm=self.did, forward=False)
        return packed.data

    async def unpack(self, packed: bytes) -> tuple[bytes, str]:
        """Decrypt an authcrypt message to us: ``(plaintext, sender DID)`` (an
        :data:`UnpackFn`).  Raises DecryptError for anoncrypt, like any failure."""
        if self.lite is not None:
            try:
                return self.lite.unpack(packed)
            except NeedsFullEnvelope:
                pass
        self.fallbacks += 1
        got = await self.envelope.unpack(packed)
        if not got.authenticated or got.sender_did is None:
            raise DecryptError("session handshake messages must be authcrypt, not anoncrypt")
        fragment = (got.sender_kid or "").partition("#")[2]
        if self.lite is not None and fragment and not fragment.startswith("key-"):
            self.lite.mark_legacy(got.sender_did)
        return got.plaintext, got.sender_did

    def x25519_public(self, did: str) -> bytes:
        """The X25519 keyAgreement key of ``did`` (the handshake's ``peer_static_key``)."""
        if self.lite is not None:
            try:
                return self.lite.x25519_public(did)
            except NeedsFullEnvelope:
                pass
        return self.envelope.resolver.x25519_public(did)


def _handshake(
    role: Role,
    identity: Identity,
    codec: HandshakeCodec,
    *,
    peer_did: str | None,
    accept_peer: Callable[[str], bool] | Collection[str] | None,
    config: SessionConfig | None,
) -> Handshake:
    assert identity.x25519_secret is not None
    return Handshake(
        role,
        local_did=identity.did,
        static_private=identity.x25519_secret,
        peer_static_key=codec.x25519_public,
        peer_did=peer_did,
        accept_peer=accept_peer,
        config=config,
    )


async def connect(
    identity: Identity,
    peer_did: str,
    host: str,
    port: int,
    *,
    envelope: Envelope | None = None,
    config: SessionConfig | None = None,
    timeout: float = 30.0,
) -> Session:
    """Open a TCP connection to ``host:port`` and a session with ``peer_did`` over it."""
    codec = HandshakeCodec(identity, envelope=envelope)
    hs = _handshake(
        Role.INITIATOR, identity, codec, peer_did=peer_did, accept_peer=None, config=config
    )
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
    return await open_session(reader, writer, hs, pack=codec.pack, unpack=codec.unpack)


async def serve(
    identity: Identity,
    host: str,
    port: int,
    on_session: Callable[[Session], Awaitable[None]],
    *,
    accept_peer: Callable[[str], bool] | Collection[str],
    on_error: Callable[[Exception], None] | None = None,
    envelope: Envelope | None = None,
    config: SessionConfig | None = None,
) -> asyncio.Server:
    """Listen on ``host:port``; run ``on_session`` for each session from an accepted peer.

    A peer that ``accept_peer`` refuses gets a problem-report and the connection closes;
    ``on_error`` hears about it (and about any other failed handshake).
    """
    codec = HandshakeCodec(identity, envelope=envelope)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hs = _handshake(
            Role.RESPONDER, identity, codec, peer_did=None, accept_peer=accept_peer, config=config
        )
        try:
            session = await accept_session(reader, writer, hs, pack=codec.pack, unpack=codec.unpack)
        except Exception as exc:  # one bad client must not stop the server
            if on_error is not None:
                on_error(exc)
            return
        try:
            await on_session(session)
        except Exception as exc:
            if on_error is not None:
                on_error(exc)
        finally:
            session.close()

    return await asyncio.start_server(handle, host, port)
