"""How a link's bytes travel: the path layer under :class:`~mpyc_adapter.transport.SessionTransport`.

A path is anything that moves bytes in order between two parties and drives an asyncio
Protocol (``connection_made`` / ``data_received`` / ``connection_lost``):

* ``direct``: a TCP connection.  The accepting party listens where the roster (or MPyC's
  defaults) says; the connecting party retries like MPyC does.
* ``relay``: the mediator's session relay (:func:`didsession.relay_client.relay_link`):
  both parties open the relay for the same relay session id and exchange whole records as
  WebSocket messages.  Nothing here depends on the relay beyond that function, so the
  layer above works unchanged whether or not a mediator is configured.  Given the party's
  ``pack`` (its :class:`~didsession.peer.HandshakeCodec`), opening a relay loads neither
  the DIDComm libraries nor pydid, and the mediator is looked up once per process.

Which path a link takes is decided by :func:`choose_path` from the roster, identically on
both sides: direct when the accepting party has an address, else the relay.

Direct paths are watched for a peer whose machine vanished
(:mod:`didsession.tcp_liveness`, ``--didcomm-timeout``); relay paths by the mediator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING

from didsession.relay_transport import RelayPath
from mpyc_adapter.roster import Roster

if TYPE_CHECKING:
    from didsession.envelope import Envelope

__all__ = [
    "RELAY_RECORD_LIMIT",
    "PathKind",
    "RelayPath",
    "bind_host",
    "choose_path",
    "open_relay_path",
    "relay_available",
    "relay_session_id",
]

# The mediator's default largest relayed frame is 64 KiB; a record is its payload + 28
# bytes, and a key update may ride in front of it (30 bytes).
RELAY_RECORD_LIMIT = (64 << 10) - 256


class PathKind(StrEnum):
    """What carries a link."""

    DIRECT = "direct"
    RELAY = "relay"


def choose_path(roster: Roster, low: int, high: int) -> PathKind:
    """The path of link (``low``, ``high``); party ``low`` connects to party ``high``.

    Both parties compute the same answer from the roster:

    * ``relay_only``: the relay;
    * ``high`` has an address: direct TCP to it;
    * ``high`` has none and the roster names a mediator: the relay (nobody can reach it);
    * else direct TCP to where MPyC would look (``localhost``, ``11365 + high`` or ``-B``).
    """
    if roster.relay_only:
        return PathKind.RELAY
    if roster.parties[high].addr is None and roster.mediator:
        return PathKind.RELAY
    return PathKind.DIRECT


def bind_host(host: str | None) -> str | None:
    """Where to listen for a roster address: a loopback host as given, else every
    interface (as MPyC does: the advertised address may be a NAT's)."""
    if host is None:
        return None
    if host == "localhost":
        return host
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return host
    return None


def relay_session_id(roster: Roster, low: int, high: int, round_: int) -> str:
    """The relay session id of link (low, high) in start round ``round_``: both parties
    compute the same one, and it differs per roster, link and round."""
    h = hashlib.sha256(f"{roster.fingerprint}/{low}/{high}/{round_}".encode())
    return h.hexdigest()[:32]


def relay_available() -> bool:
    """Whether this installation has the relay client (:mod:`didsession.relay_client`)."""
    try:
        from didsession.relay_client import relay_link  # noqa: F401
    except ImportError:
        return False
    return True


async def open_relay_path(
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    mediator: str,
    local_did: str,
    session_id: str,
    peer_did: str,
    wait: float,
    pack: Callable[[bytes, str], Awaitable[bytes]] | None = None,
    envelope: Envelope | None = None,
    liveness: float = 60.0,
) -> tuple[RelayPath, asyncio.Protocol]:
    """Open the mediator's relay for ``session_id`` with ``peer_did`` (waits for the peer)
    and run a protocol on it.

    The relay's ``open`` is authcrypted from ``local_did`` by ``pack`` (plaintext bytes and
    the recipient DID in, the packed bytes out: :meth:`HandshakeCodec.pack
    <didsession.peer.HandshakeCodec.pack>`), or else by ``envelope``, which must hold the
    keys of ``local_did``.  With ``pack``, the path ends once the mediator's machine has
    answered nothing for ``liveness`` seconds (0: only when TCP gives up).

    Raises:
        MediationError: the relay refused, is unreachable, or the peer did not come.
        InvitationError / DIDError: the mediator's invitation or DID is unusable.
    """
    stack = contextlib.AsyncExitStack()
    try:
        if pack is not None:
            from didsession.relay_client import relay_link

            opening = relay_link(
                mediator, local_did, session_id, peer_did, pack, wait=wait, liveness=liveness
            )
        elif envelope is not None:
            from didsession.mediation import open_relay

            opening = open_relay(
                mediator, local_did, session_id, peer_did, envelope=envelope, wait=wait
            )
        else:
            raise TypeError("open_relay_path needs pack or envelope")
        link = await stack.enter_async_context(opening)
    except BaseException:
        await stack.aclose()
        raise
    protocol = protocol_factory()
    transport = RelayPath(link, protocol, stack)
    protocol.connection_made(transport)
    return transport, protocol
