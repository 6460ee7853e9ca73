"""Sessions as a local identity: the glue between the identity store, the envelope module
and the session protocol.

:func:`connect` and :func:`serve` run the session handshake (spec/session.md §4.4) on a
TCP connection, each handshake message authcrypt-packed by :class:`Envelope` from the
local identity to the peer.  The peer's DID is what authcrypt authenticated; the handshake
refuses a peer that is not the one expected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

from didsession.envelope import Envelope
from didsession.errors import DecryptError, DIDError
from didsession.identity import Identity
from didsession.session import Handshake, Role, SessionConfig
from didsession.session.stream import PackFn, Session, UnpackFn, accept_session, open_session

__all__ = ["connect", "envelope_for", "handshake_codec", "serve"]


def envelope_for(identity: Identity, envelope: Envelope | None = None) -> Envelope:
    """An envelope holding ``identity``'s keys (added to ``envelope`` if given)."""
    env = envelope or Envelope()
    if identity.ed25519_secret is None or identity.x25519_secret is None:
        raise DIDError(f"identity {identity.name!r} is locked: load it with its keys")
    env.add_identity(identity.did, identity.ed25519_secret, identity.x25519_secret)
    return env


def handshake_codec(envelope: Envelope, local_did: str) -> tuple[PackFn, UnpackFn]:
    """``pack``/``unpack`` for the session layer: authcrypt from ``local_did``, nothing else."""

    async def pack(plaintext: bytes, to: str) -> bytes:
        return (await envelope.pack_plaintext(plaintext, to=to, frm=local_did, forward=False)).data

    async def unpack(packed: bytes) -> tuple[bytes, str]:
        got = await envelope.unpack(packed)
        if not got.authenticated or got.sender_did is None:
            raise DecryptError("session handshake messages must be authcrypt, not anoncrypt")
        return got.plaintext, got.sender_did

    return pack, unpack


def _handshake(
    role: Role,
    identity: Identity,
    envelope: Envelope,
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
        peer_static_key=envelope.resolver.x25519_public,
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
    env = envelope_for(identity, envelope)
    pack, unpack = handshake_codec(env, identity.did)
    hs = _handshake(
        Role.INITIATOR, identity, env, peer_did=peer_did, accept_peer=None, config=config
    )
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
    return await open_session(reader, writer, hs, pack=pack, unpack=unpack)


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
    env = envelope_for(identity, envelope)
    pack, unpack = handshake_codec(env, identity.did)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hs = _handshake(
            Role.RESPONDER, identity, env, peer_did=None, accept_peer=accept_peer, config=config
        )
        try:
            session = await accept_session(reader, writer, hs, pack=pack, unpack=unpack)
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
