"""Live delivery (Message Pickup 3.0 §Live Mode): push new messages down open WebSockets.

A WebSocket connection turns live delivery on for a DID by sending an authcrypted
``live-delivery-change`` from that DID; from then on every message queued for it (on this
instance, or on another sharing the Redis store) is pushed as an unsolicited ``delivery``.
The message stays queued until the recipient acknowledges it, so a push that is lost with
its connection is picked up later.

Memory is per connection: a slotted :class:`Connection` and, only while pushes are
pending, a deque and one task; an idle live client costs nothing more than its socket.
A client that does not read is dropped: when a push waits longer than ``send_timeout``,
or more than ``max_outbox`` pushes or ``max_outbox_bytes`` are pending, its connection is
closed.  Nothing is lost with it: pushed messages stay queued until acknowledged.  One
connection receives at most ``max_live_dids`` DIDs live, so its table stays small too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

from didsession.errors import MediationError
from mediator.logs import short_did
from mediator.metrics import Metrics
from mediator.protocols.messages import Codes
from mediator.store.base import Queued

__all__ = ["Connection", "LiveHub"]

log = logging.getLogger("mediator.live")

PackDelivery = Callable[[str, list[Queued]], Awaitable[str]]


class Connection:
    """One DIDComm WebSocket: which DIDs it receives live, and pushes in flight."""

    __slots__ = ("live", "outbox", "outbox_bytes", "source", "task", "transport", "ws")

    def __init__(
        self, ws: web.WebSocketResponse, source: str, transport: asyncio.BaseTransport | None
    ) -> None:
        self.ws = ws
        self.source = source
        self.transport = transport
        self.live: set[str] | None = None
        self.outbox: deque[tuple[str, Queued]] | None = None
        self.outbox_bytes = 0  # payload bytes in ``outbox``
        self.task: asyncio.Task[None] | None = None

    def is_live(self, did: str) -> bool:
        return self.live is not None and did in self.live


class LiveHub:
    """Connections by live DID, and the push machinery.

    Args:
        pack: encrypts a ``delivery`` of messages to their owner (the mediator's shell).
        send_timeout: seconds one push may wait for the client to read.
        max_outbox: pushes pending per connection before it is dropped.
        max_outbox_bytes: payload bytes pending per connection before it is dropped (one
            push is always accepted, however big).
        max_live_dids: DIDs one connection may receive live.
    """

    def __init__(
        self,
        pack: PackDelivery,
        metrics: Metrics,
        *,
        send_timeout: float = 10.0,
        max_outbox: int = 256,
        max_outbox_bytes: int = 8 << 20,
        max_live_dids: int = 100,
    ) -> None:
        self._pack = pack
        self._metrics = metrics
        self._send_timeout = send_timeout
        self._max_outbox = max_outbox
        self._max_outbox_bytes = max_outbox_bytes
        self._max_live_dids = max_live_dids
        self._by_owner: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()

    @property
    def live_count(self) -> int:
        """Connections with live delivery on for at least one DID."""
        return sum(1 for c in self.connections if c.live)

    def attach(self, conn: Connection) -> None:
        self.connections.add(conn)

    def detach(self, conn: Connection) -> None:
        self.connections.discard(conn)
        for did in conn.live or ():
            peers = self._by_owner.get(did)
            if peers is not None:
                peers.discard(conn)
                if not peers:
                    del self._by_owner[did]
        conn.live = None
        conn.outbox = None
        conn.outbox_bytes = 0
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()

    def set_live(self, conn: Connection, did: str, live: bool) -> None:
        """Turn live delivery of ``did``'s messages on ``conn`` on or off.

        Raises:
            MediationError: ``conn`` already receives ``max_live_dids`` DIDs live
                (``e.p.me.res.quota``).
        """
        if live:
            if conn.live is None:
                conn.live = set()
            if did not in conn.live and len(conn.live) >= self._max_live_dids:
                raise MediationError(
                    f"one connection may receive at most {self._max_live_dids} DIDs live",
                    code=Codes.QUOTA,
                )
            conn.live.add(did)
            self._by_owner.setdefault(did, set()).add(conn)
            log.info("live delivery on", extra={"did": short_did(did), "source": conn.source})
            return
        if conn.live is not None:
            conn.live.discard(did)
            if not conn.live:
                conn.live = None
        peers = self._by_owner.get(did)
        if peers is not None:
            peers.discard(conn)
            if not peers:
                del self._by_owner[did]

    # -- the store's Listener --------------------------------------------------------
    def wants(self, owner: str) -> bool:
        return owner in self._by_owner

    def notify(self, owner: str, message: Queued) -> None:
        for conn in list(self._by_owner.get(owner, ())):
            if conn.outbox is None:
                conn.outbox = deque()
            if len(conn.outbox) >= self._max_outbox:
                self._metrics.error("live-outbox-full")
                self._drop(conn, "too many pushes pending: the client does not read")
                continue
            size = len(message.data)
            if conn.outbox and conn.outbox_bytes + size > self._max_outbox_bytes:
                self._metrics.error("live-outbox-bytes")
                self._drop(conn, "too many bytes pending: the client does not read")
                continue
            conn.outbox.append((owner, message))
            conn.outbox_bytes += size
            if conn.task is None:
                conn.task = asyncio.get_running_loop().create_task(self._drain(conn))

    async def _drain(self, conn: Connection) -> None:
        try:
            while conn.outbox:
                owner, message = conn.outbox.popleft()
                conn.outbox_bytes -= len(message.data)
                if not conn.is_live(owner):
                    continue
                data = await self._pack(owner, [message])
                await asyncio.wait_for(conn.ws.send_str(data), self._send_timeout)
                self._metrics.delivered_live += 1
        except TimeoutError:
            self._metrics.error("live-send-timeout")
            self._drop(conn, "the client does not read its live deliveries")
        except (ConnectionError, RuntimeError) as exc:
            self._metrics.error("live-send-failed")
            log.info("live push failed", extra={"source": conn.source, "error": str(exc)})
            self._drop(conn, "connection lost")
        except Exception:
            self._metrics.error("live-pack-failed")
            log.exception("live push failed", extra={"source": conn.source})
        finally:
            conn.task = None
            if not conn.outbox:
                conn.outbox = None

    def _drop(self, conn: Connection, reason: str) -> None:
        log.info("dropping live client", extra={"source": conn.source, "reason": reason})
        self.detach(conn)
        # abort the transport: close() would wait for the very buffer that is stuck
        if conn.transport is not None:
            with contextlib.suppress(Exception):
                conn.transport.abort()  # type: ignore[attr-defined]
