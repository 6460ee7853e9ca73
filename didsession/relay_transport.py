"""A relay link as an asyncio transport, so that any asyncio Protocol can run over the
mediator's relay (:func:`didsession.relay_client.relay_link`,
:func:`didsession.mediation.open_relay`): MPyC links and multipath sessions alike.  Kept
apart from both so that importing it costs nothing (no sockets, no DIDComm libraries)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from didsession.errors import DidSessionError, MediationError

__all__ = ["MAX_RELAY_FRAME", "RelayPath"]


def can_write_eof(transport: Any) -> bool:
    """Whether ``transport`` can half-close now.  Duck-typed (uvloop's transports are not
    registered as ``asyncio.WriteTransport``) and tolerant (``asyncio.Transport``'s own
    ``can_write_eof`` raises ``NotImplementedError``)."""
    try:
        return bool(transport.can_write_eof()) and not transport.is_closing()
    except (NotImplementedError, AttributeError):
        return False


# The mediator's default largest relayed frame (its relay_max_frame_bytes).
MAX_RELAY_FRAME = 64 << 10


class RelayPath(asyncio.Transport):
    """A relay link as an asyncio transport driving a Protocol: each ``write`` becomes one
    relay frame, or several of at most ``max_frame`` bytes (the mediator drops a relay
    client whose frame is larger; what runs over the path parses a byte stream, so where
    frames split does not matter); each relay frame becomes one ``data_received``; sends
    keep their order."""

    def __init__(
        self,
        link: Any,
        protocol: asyncio.Protocol,
        stack: contextlib.AsyncExitStack,
        max_frame: int = MAX_RELAY_FRAME,
    ):
        super().__init__()
        self._max_frame = max_frame
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

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        step = self._max_frame
        if len(data) <= step:
            self._pending.append(bytes(data))
        else:  # e.g. a multipath fallback resending what the lost path left unacknowledged
            view = memoryview(data)
            self._pending.extend(bytes(view[i : i + step]) for i in range(0, len(view), step))
        self._wake.set()

    async def wait_closed(self) -> None:
        """Until the relay link is closed (what was written went out first)."""
        with contextlib.suppress(BaseException):
            await asyncio.shield(self._sender)

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

    def can_write_eof(self) -> bool:
        return False  # a relay link has no half-close; close() sends what is queued first

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
        try:
            while True:
                data = await self._link.recv()
                # Looked up per frame: the protocol changes when multipath takes over.
                self._protocol.data_received(data)
        except MediationError as exc:
            self._closing = True
            self._wake.set()
            self._connection_lost(exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if not self._lost:
            self._lost = True
            self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)
