"""How a link's bytes travel: the path layer under :class:`~mpyc_adapter.transport.SessionTransport`.

A path is anything that moves bytes in order between two parties and drives an asyncio
Protocol (``connection_made`` / ``data_received`` / ``connection_lost``):

* ``direct``: a TCP connection.  The accepting party listens where the roster (or MPyC's
  defaults) says; the connecting party retries like MPyC does.
* ``relay``: the mediator's session relay (:func:`didsession.mediation.open_relay`): both
  parties open the relay for the same relay session id and exchange whole records as
  WebSocket messages.  Nothing here depends on the relay beyond that function, so the
  layer above works unchanged whether or not a mediator is configured.

Which path a link takes is decided by :func:`choose_path` from the roster, identically on
both sides: direct when the accepting party has an address, else the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from didsession.envelope import Envelope
from didsession.errors import DidSessionError, MediationError
from mpyc_adapter.roster import Roster

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
    """Whether this installation has the relay client (:mod:`didsession.mediation`)."""
    try:
        from didsession.mediation import open_relay  # noqa: F401
    except ImportError:
        return False
    return True


class RelayPath(asyncio.Transport):
    """A relay link as an asyncio transport driving a Protocol: each ``write`` becomes one
    relay frame, each relay frame one ``data_received``; sends keep their order."""

    def __init__(self, link: Any, protocol: asyncio.Protocol, stack: contextlib.AsyncExitStack):
        super().__init__()
        self._link = link
        self._protocol = protocol
        self._stack = stack
        self._pending: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._lost = False
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send_loop())
        self._receiver = loop.create_task(self._recv_loop())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._pending.append(bytes(data))
        self._wake.set()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._wake.set()

    def abort(self) -> None:
        self._closing = True
        self._pending.clear()
        self._wake.set()

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self._pending))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": "relay", "sockname": "relay"}.get(name, default)

    async def _send_loop(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    await self._link.send(self._pending.popleft())
                if self._closing:
                    return
        except DidSessionError as exc:
            error = exc
        finally:
            self._receiver.cancel()
            with contextlib.suppress(Exception):
                await self._stack.aclose()
            self._connection_lost(error)

    async def _recv_loop(self) -> None:
        data_received = self._protocol.data_received
        try:
            while True:
                data_received(await self._link.recv())
        except MediationError as exc:
            self._closing = True
            self._wake.set()
            self._connection_lost(exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if not self._lost:
            self._lost = True
            self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)


async def open_relay_path(
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    mediator: str,
    local_did: str,
    envelope: Envelope,
    session_id: str,
    peer_did: str,
    wait: float,
) -> tuple[RelayPath, asyncio.Protocol]:
    """Open the mediator's relay for ``session_id`` with ``peer_did`` (waits for the peer)
    and run a protocol on it.

    Raises:
        MediationError: the relay refused, is unreachable, or the peer did not come.
    """
    from didsession.mediation import open_relay

    stack = contextlib.AsyncExitStack()
    try:
        link = await stack.enter_async_context(
            open_relay(mediator, local_did, session_id, peer_did, envelope=envelope, wait=wait)
        )
    except BaseException:
        await stack.aclose()
        raise
    protocol = protocol_factory()
    transport = RelayPath(link, protocol, stack)
    protocol.connection_made(transport)
    return transport, protocol
