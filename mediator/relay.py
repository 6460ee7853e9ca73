"""The session relay on ``/relay``: the WebSocket shell around :mod:`mediator.protocols.relay`.

One handler per connection: challenge, authenticated ``open``, then a loop that sends
each binary message to the linked peer.  ``await peer.send_bytes()`` applies backpressure:
a peer that reads slowly slows its sender, and memory stays bounded by the sockets'
buffers.  Relays are local to one instance: both ends of a session must reach the same
mediator process (a deployment behind a load balancer pins ``/relay`` by session).

Liveness: a relay client is pinged every ``ws_heartbeat`` seconds (NATs and proxies see
traffic), but never dropped for a missing pong.  Its program answers pings only while its
event loop runs, and an MPyC party computing locally may not run it for minutes: dropped,
its whole computation would fail.  Whether the client's machine is still there is asked of
the kernel instead (:mod:`didsession.tcp_liveness`): it is gone when it has answered
nothing for twice the interval, and its slot is torn down, telling the peer so
(:data:`~didsession.tcp_liveness.VANISHED`).  Behind a proxy the kernel sees the proxy:
there a vanished client is found when the proxy closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from didsession.errors import DIDError, EnvelopeError, MediationError
from didsession.tcp_liveness import VANISHED, keep_alive, watch
from mediator.config import MediatorConfig
from mediator.identity import MediatorIdentity
from mediator.logs import short_did
from mediator.metrics import Metrics
from mediator.protocols.messages import Codes, problem_report
from mediator.protocols.relay import (
    PairingTable,
    Quota,
    RelayOpenRequested,
    State,
    challenge,
    parse_open,
    status,
)

__all__ = ["RelayService", "RelaySlot"]

log = logging.getLogger("mediator.relay")

OPEN_TIMEOUT = 10.0
CLOSE_PEER_LEFT = 1000
CLOSE_POLICY = 1008


class RelaySlot:
    """One end of a relay session."""

    __slots__ = ("event", "peer", "quota", "state", "timer", "ws")

    def __init__(self, ws: web.WebSocketResponse, event: RelayOpenRequested, quota: Quota) -> None:
        self.ws = ws
        self.event = event
        self.quota = quota
        self.peer: RelaySlot | None = None
        self.state = State.WAITING
        self.timer: asyncio.TimerHandle | None = None


class RelayService:
    """Accepts relay WebSockets and links the two ends of each session.

    Args:
        random_bytes: source of challenge nonces (``os.urandom``), a parameter for tests.
    """

    def __init__(
        self,
        config: MediatorConfig,
        identity: MediatorIdentity,
        metrics: Metrics,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.identity = identity
        self.metrics = metrics
        self.table: PairingTable[RelaySlot] = PairingTable()
        self.sockets: set[web.WebSocketResponse] = set()
        self._vanished: set[web.WebSocketResponse] = set()  # found gone by _watch
        self._tasks: set[asyncio.Task[None]] = set()  # _expire's refusals in flight
        self._random = random_bytes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /relay: one relay connection, from challenge to teardown."""
        ws = web.WebSocketResponse(max_msg_size=self.config.relay_max_frame_bytes)
        await ws.prepare(request)
        self.sockets.add(ws)
        slot: RelaySlot | None = None
        every = self.config.ws_heartbeat
        transport = request.transport
        watch = None
        if every > 0 and transport is not None:
            keep_alive(transport, 2 * every)
            watch = asyncio.get_running_loop().create_task(self._watch(ws, transport, every))
        try:
            slot = await self._open(ws)
            if slot is not None:
                await self._pump(slot)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if watch is not None:
                watch.cancel()
            self.sockets.discard(ws)
            vanished = ws in self._vanished
            self._vanished.discard(ws)
            if slot is not None:
                await self._teardown(slot, VANISHED if vanished else "peer left")
            if not ws.closed:
                await ws.close()
        return ws

    async def _watch(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport, every: float
    ) -> None:
        """Ping every ``every`` s without waiting for a pong; abort the connection once
        the client's machine has answered nothing for twice that (see the module)."""
        if await watch(transport, ws.ping, lambda: ws.closed, every=every, timeout=2 * every):
            log.info("relay client gone: its machine stopped answering")
            self._vanished.add(ws)
            transport.abort()  # the pump ends, and the peer is told

    async def _open(self, ws: web.WebSocketResponse) -> RelaySlot | None:
        config = self.config
        nonce = self._random(32)
        await ws.send_str(json.dumps(challenge(nonce, self.identity.did)))
        try:
            msg = await ws.receive(timeout=OPEN_TIMEOUT)
        except TimeoutError:
            await self._refuse(ws, Codes.EXPIRED, "no relay open within the time limit", None)
            return None
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return None
        sender: str | None = None
        try:
            data = msg.data.encode() if isinstance(msg.data, str) else msg.data
            unpacked = await self.identity.envelope.unpack(data)
            sender = unpacked.sender_did
            event = parse_open(unpacked.message, sender, nonce)
            slot = RelaySlot(ws, event, Quota(config.relay_quota_frames, config.relay_quota_bytes))
            paired = self.table.open(event, slot)
        except (EnvelopeError, DIDError, MediationError) as exc:
            self.metrics.error(exc.code)
            await self._refuse(ws, exc.code, exc.message, sender)
            return None
        try:
            if paired is None:
                slot.timer = asyncio.get_running_loop().call_later(
                    config.relay_wait_timeout, self._expire, slot
                )
                await ws.send_str(json.dumps(status(event.thid, "waiting")))
                log.info(
                    "relay slot waiting",
                    extra={"did": short_did(event.sender), "peer": short_did(event.peer_did)},
                )
                return slot
            peer = paired.peer
            if peer.timer is not None:
                peer.timer.cancel()
                peer.timer = None
            slot.peer, peer.peer = peer, slot
            slot.state = peer.state = State.RELAYING
            self.metrics.relay_sessions_opened += 1
            ready = json.dumps(status(None, "ready"))
            await asyncio.gather(peer.ws.send_str(ready), ws.send_str(ready))
        except BaseException:
            # handle() never gets this slot, so free it (and its peer) here: else the table
            # and the DID's count keep it, and a retry is refused as busy.
            await self._teardown(slot, "peer left")
            raise
        log.info(
            "relay session linked",
            extra={"did": short_did(event.sender), "peer": short_did(event.peer_did)},
        )
        return slot

    async def _pump(self, slot: RelaySlot) -> None:
        """Relay binary messages to the peer until this side or the peer leaves."""
        metrics = self.metrics
        charge = slot.quota.charge
        ws = slot.ws
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                continue  # text after open: nothing to do (pings are handled by aiohttp)
            peer = slot.peer
            data = msg.data
            if peer is None:
                self.metrics.error("relay-frame-before-ready")
                await ws.close(code=CLOSE_POLICY, message=b"frame before the peer is ready")
                return
            if not charge(len(data)):
                metrics.error(Codes.QUOTA)
                log.info("relay quota used up", extra={"did": short_did(slot.event.sender)})
                await self._teardown(slot, "quota exceeded", code=CLOSE_POLICY)
                return
            await peer.ws.send_bytes(data)
            metrics.relay_frames += 1
            metrics.relay_bytes += len(data)

    async def _teardown(self, slot: RelaySlot, reason: str, *, code: int = CLOSE_PEER_LEFT) -> None:
        if slot.state is State.CLOSED:
            return
        slot.state = State.CLOSED
        self.table.close(slot.event)
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        peer, slot.peer = slot.peer, None
        if code != CLOSE_PEER_LEFT and not slot.ws.closed:
            await slot.ws.close(code=code, message=reason.encode())
        if peer is not None:
            peer.peer = None
            peer.state = State.CLOSED
            self.table.close(peer.event)
            with contextlib.suppress(Exception):
                await peer.ws.close(code=code, message=reason.encode())

    def _expire(self, slot: RelaySlot) -> None:
        slot.timer = None
        if slot.state is not State.WAITING:
            return
        self.table.close(slot.event)
        slot.state = State.CLOSED
        task = asyncio.get_running_loop().create_task(
            self._refuse(
                slot.ws, Codes.EXPIRED, "the peer did not open its relay slot in time", None
            )
        )
        # The loop holds tasks only weakly: keep this one until it has run.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refuse(
        self, ws: web.WebSocketResponse, code: str, comment: str, to: str | None
    ) -> None:
        report: dict[str, Any] = problem_report(
            code, comment, frm=self.identity.did, to=to, pthid=None
        )
        with contextlib.suppress(Exception):
            await ws.send_str(json.dumps(report))
            await ws.close(code=CLOSE_POLICY, message=code.encode())

    async def close_all(self) -> None:
        """Graceful shutdown: close every relay connection (1001, going away)."""
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"mediator shutting down")
