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

**Liveness of direct paths.**  A party whose machine vanishes (power, network, sleep)
closes nothing.  TCP alone then never tells a party that waits for it (that party has
nothing to send), and tells one with data in flight only when it gives up retransmitting,
after ~15 minutes.  So a direct path gets the kernel's keepalive (:func:`keep_alive`:
probes while idle; the kernel fails the connection with ``ETIMEDOUT``), and the party
looks at the kernel's TCP state now and then (:func:`silence`, :func:`gone`): data in
flight that the peer's machine has not answered for the timeout means it is gone.  Both
watch only the peer's kernel, which answers while the peer's program is busy: a long local
computation is never taken for a vanished party.  (``TCP_USER_TIMEOUT`` is not used: it
also fails a connection whose peer is alive but reads nothing for that long, its receive
window full.)  Not for relay paths (the TCP peer is the mediator, whose WebSocket
heartbeat watches each party's connection) nor for paths found by NAT traversal, which
ping each other (spec/session.md §15.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import math
import socket
import struct
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
    "gone",
    "keep_alive",
    "open_relay_path",
    "relay_available",
    "relay_session_id",
    "silence",
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


def keep_alive(transport: asyncio.BaseTransport, timeout: float) -> bool:
    """Turn on the kernel's keepalive for a direct path, tuned so that an idle connection
    whose peer's machine stopped answering fails (``ETIMEDOUT``) about ``timeout`` seconds
    after it last heard from it: the first probe after half of it, then every eighth.

    Returns whether it could (a TCP socket; Linux has every option, others some).
    """
    sock = transport.get_extra_info("socket")
    if sock is None or timeout <= 0:
        return False
    idle = max(1, round(timeout / 2))
    interval = max(1, round(timeout / 8))
    count = max(1, math.ceil((timeout - idle) / interval))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", interval),
            ("TCP_KEEPCNT", count),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        return False
    return True


# struct tcp_info (Linux, include/uapi/linux/tcp.h): tcpi_unacked at byte 24,
# tcpi_last_data_recv and tcpi_last_ack_recv (ms ago) at 52 and 56.
_TCP_INFO = struct.Struct("=24xI24xII")


def silence(transport: asyncio.BaseTransport) -> tuple[float, int] | None:
    """For a TCP path: (seconds since the peer's machine last sent anything, segments we
    sent that it has not acknowledged), from the kernel; None where it does not say."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except OSError:
        return None
    if len(info) < _TCP_INFO.size:
        return None
    unacked, last_data, last_ack = _TCP_INFO.unpack_from(info)
    return min(last_data, last_ack) / 1000, unacked


def gone(quiet: tuple[float, int] | None, timeout: float) -> bool:
    """Whether a direct path's peer machine is gone, from :func:`silence`: data in flight
    and nothing from it for ``timeout`` seconds.  (A full receive window at the peer is
    not in flight: its machine answers the window probes.)"""
    return quiet is not None and timeout > 0 and quiet[1] > 0 and quiet[0] >= timeout


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
) -> tuple[RelayPath, asyncio.Protocol]:
    """Open the mediator's relay for ``session_id`` with ``peer_did`` (waits for the peer)
    and run a protocol on it.

    The relay's ``open`` is authcrypted from ``local_did`` by ``pack`` (plaintext bytes and
    the recipient DID in, the packed bytes out: :meth:`HandshakeCodec.pack
    <didsession.peer.HandshakeCodec.pack>`), or else by ``envelope``, which must hold the
    keys of ``local_did``.

    Raises:
        MediationError: the relay refused, is unreachable, or the peer did not come.
        InvitationError / DIDError: the mediator's invitation or DID is unusable.
    """
    stack = contextlib.AsyncExitStack()
    try:
        if pack is not None:
            from didsession.relay_client import relay_link

            opening = relay_link(mediator, local_did, session_id, peer_did, pack, wait=wait)
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
