"""Live delivery (Message Pickup 3.0 §Live Mode): push new messages down open WebSockets.

A WebSocket connection turns live delivery on for a DID by sending an authcrypted
``live-delivery-change`` from that DID; from then on every message queued for it (on this
instance, or on another sharing the Redis store) is pushed as an unsolicited ``delivery``.
The message stays queued until the recipient acknowledges it, so a push that is lost with
its connection is picked up later.

Memory is per connection: a slotted :class:`Connection` and, only while pushes are
pending, a deque and one task; an idle live client costs nothing more than its socket.
A client that does not read is dropped: when a push waits longer than ``send_timeout`` or
more than ``max_outbox`` pushes are pending, its connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

from mediator.logs import short_did
from mediator.metrics import Metrics
from mediator.store.base import Queued

__all__ = ["Connection", "LiveHub"]

log = logging.getLogger("mediator.live")

PackDelivery = Callable[[str, list[Queued]], Awaitable[str]]


class Connection:
    """One DIDComm WebSocket: which DIDs it receives live, and pushes in flight."""

    __slots__ = ("live", "outbox", "source", "task", "transport", "ws")

    def __init__(
        self, ws: web.WebSocketResponse, source: str, transport: asyncio.BaseTransport | None
    ) -> None:
        self.ws = ws
        self.source = source
        self.transport = transport
        self.live: set[str] | None = None
        self.outbox: deque[tuple[str, Queued]] | None = None
        self.task: asyncio.Task[None] | None = None

    def is_live(self, did: str) -> bool:
        return self.live is not None and did in self.live


class LiveHub:
    """Connections by live DID, and the push machinery.

    Args:
        pack: encrypts a ``delivery`` of messages to their owner (the mediator's shell).
        send_timeout: seconds one push may wait for the client to read.
        max_outbox: pushes pending per connection before it is dropped.
    """

    def __init__(
        self,
        pack: PackDelivery,
        metrics: Metrics,
        *,
        send_timeout: float = 10.0,
        max_outbox: int = 256,
    ) -> None:
        self._pack = pack
        self._metrics = metrics
        self._send_timeout = send_timeout
        self._max_outbox = max_outbox
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
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()

    def set_live(self, conn: Connection, did: str, live: bool) -> None:
        if live:
            if conn.live is None:
                conn.live = set()
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
            conn.outbox.append((owner, message))
            if conn.task is None:
                conn.task = asyncio.get_running_loop().create_task(self._drain(conn))

    async def _drain(self, conn: Connection) -> None:
        try:
            while conn.outbox:
                owner, message = conn.outbox.popleft()
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
