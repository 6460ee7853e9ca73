"""The aiohttp application: routes, lifecycle (``cleanup_ctx``), limits, graceful shutdown.

URLs (all under the public URL):

========================  ================================================================
``GET  /healthz``         ``{"status": "ok", "did": ..., ...}``; 503 when the store fails
``GET  /invitation``      the OOB 2.0 invitation (JSON); ``/invitation.url`` as text,
                          ``/invitation.png`` and ``/invitation.svg`` as a QR code
``POST /didcomm``         one packed DIDComm message (``application/didcomm-encrypted+json``);
                          the reply, if any, is the response body (``return_route: all``)
``GET  /ws``              DIDComm over a WebSocket: one message per frame, replies and live
                          deliveries on the same socket
``GET  /relay``           the session relay (:mod:`mediator.relay`)
``GET  /metrics``         Prometheus text format
========================  ================================================================

Lifecycle: :func:`create_app` builds the application; its ``cleanup_ctx`` opens, in order,
the identity, the store, the mediator service with its live hub and expiry sweeper, the
STUN server and the relay, and closes them in reverse order.  :func:`serve` runs it until
SIGTERM/SIGINT, then stops accepting, closes WebSockets (1001), lets running requests
finish, and closes the store last, so every acknowledged message is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web

from didsession import __version__
from didsession._dataclass import dataclass
from didsession.errors import ConfigError, DidSessionError
from didsession.invitation import render_qr
from didsession.stun import RateLimit, StunServer, StunServerConfig
from didsession.stun_asyncio import StunService, serve_stun
from mediator.config import MediatorConfig, parse_host_port
from mediator.identity import MediatorIdentity, load_or_create
from mediator.live import Connection
from mediator.metrics import Metrics
from mediator.protocols.messages import Codes, problem_report
from mediator.relay import RelayService
from mediator.service import Mediator, Reply
from mediator.store.base import MessageStore
from mediator.store.redis import RedisStore
from mediator.store.sqlite import SqliteStore
from mediator.stun import CachedStun

__all__ = [
    "CONFIG",
    "IDENTITY",
    "MEDIATOR",
    "METRICS",
    "RELAY",
    "STORE",
    "STUN",
    "Stun",
    "create_app",
    "open_store",
    "serve",
]

log = logging.getLogger("mediator")

ENCRYPTED = "application/didcomm-encrypted+json"
PLAIN = "application/didcomm-plain+json"
_ACCEPTED_TYPES = frozenset({ENCRYPTED, "application/json", "application/didcomm-envelope-enc"})


@dataclass(frozen=True, slots=True)
class Stun:
    """The running STUN server: the cached core (its counters) and the sockets."""

    handler: CachedStun
    service: StunService


CONFIG = web.AppKey("config", MediatorConfig)
METRICS = web.AppKey("metrics", Metrics)
IDENTITY = web.AppKey("identity", MediatorIdentity)
STORE = web.AppKey("store", MessageStore)
MEDIATOR = web.AppKey("mediator", Mediator)
STUN = web.AppKey("stun", Stun)
RELAY = web.AppKey("relay", RelayService)
STARTED = web.AppKey("started", float)


def open_store(config: MediatorConfig) -> MessageStore:
    """The store the configuration names (not yet opened)."""
    if config.store_backend == "redis":
        return RedisStore(config.store_redis_url, prefix=config.store_redis_prefix)
    return SqliteStore(
        config.sqlite_path,
        synchronous=config.store_synchronous,
        own_folder=config.store_path is None,  # DATA_DIR, not a folder the operator named
    )


# -- cleanup contexts ----------------------------------------------------------------------


async def _identity_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[IDENTITY] = await asyncio.to_thread(
        load_or_create, config.data_dir, config.endpoint, config.label
    )
    yield


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = open_store(app[CONFIG])
    await store.open()
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()
        log.info("store closed")


async def _mediator_ctx(app: web.Application) -> AsyncIterator[None]:
    config, metrics, store = app[CONFIG], app[METRICS], app[STORE]
    mediator = Mediator(config, app[IDENTITY], store, metrics)
    store.listener = mediator.hub
    app[MEDIATOR] = mediator
    sweeper = asyncio.get_running_loop().create_task(_sweep(mediator))
    try:
        yield
    finally:
        store.listener = None
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


async def _sweep(mediator: Mediator) -> None:
    """Delete expired messages every ``queue_expire_interval`` seconds."""
    while True:
        await asyncio.sleep(mediator.config.queue_expire_interval)
        try:
            n = await mediator.store.expire(time.time())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            mediator.metrics.error("expire")
            log.warning("expiry sweep failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            continue
        if n:
            mediator.metrics.expired += n
            log.info("expired messages deleted", extra={"count": n})


async def _stun_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.stun_enabled:
        yield
        return
    host = config.stun_host or config.host
    alternate = (
        parse_host_port(config.stun_alternate, "stun_alternate") if config.stun_alternate else None
    )
    core = StunServer(
        StunServerConfig(
            software=f"didsession-mediator {__version__}",
            local_address=(host, config.stun_port) if alternate else None,
            other_address=alternate,
            rate_limit=None,  # CachedStun applies it, to cached answers too
        )
    )
    limit = RateLimit(config.stun_rate, config.stun_burst) if config.stun_rate > 0 else None
    handler = CachedStun(core, limit)
    try:
        service = await serve_stun(
            host, config.stun_port, handler, alternate=alternate, queue_size=config.stun_queue
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve STUN on {host}:{config.stun_port}: {exc.strerror or exc}"
        ) from exc
    app[STUN] = Stun(handler, service)
    log.info(
        "stun listening",
        extra={"udp": service.udp_addresses, "tcp": service.tcp_addresses},
    )
    try:
        yield
    finally:
        await service.close()


async def _relay_ctx(app: web.Application) -> AsyncIterator[None]:
    app[RELAY] = RelayService(app[CONFIG], app[IDENTITY], app[METRICS])
    yield


async def _on_shutdown(app: web.Application) -> None:
    """Close WebSockets first: their handlers return, and aiohttp can finish the rest."""
    if MEDIATOR in app:
        for conn in list(app[MEDIATOR].hub.connections):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"mediator shutting down")
    if RELAY in app:
        await app[RELAY].close_all()


# -- handlers ------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    body: dict[str, Any] = {
        "status": "ok",
        "did": app[IDENTITY].did,
        "endpoint": app[IDENTITY].endpoint,
        "store": app[CONFIG].store_backend,
        "uptime": round(time.monotonic() - app[STARTED], 3),
    }
    if STUN in app:
        stun = app[STUN].service
        body["stun"] = {"udp": stun.udp_addresses, "tcp": stun.tcp_addresses}
    try:
        await asyncio.wait_for(app[STORE].totals(), 5)
    except Exception as exc:
        body["status"] = "unavailable"
        body["error"] = f"store: {type(exc).__name__}"
        return web.json_response(body, status=503)
    return web.json_response(body)


def _invitation_url(app: web.Application) -> str:
    return app[IDENTITY].invitation.to_url(f"{app[CONFIG].base_url}/invitation")


async def invitation_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[IDENTITY].invitation.message)


async def invitation_url(request: web.Request) -> web.Response:
    return web.Response(text=_invitation_url(request.app) + "\n")


async def invitation_png(request: web.Request) -> web.Response:
    data = await asyncio.to_thread(render_qr, _invitation_url(request.app), "png")
    return web.Response(body=data, content_type="image/png")


async def invitation_svg(request: web.Request) -> web.Response:
    data = render_qr(_invitation_url(request.app), "svg")
    return web.Response(body=data, content_type="image/svg+xml")


async def metrics_page(request: web.Request) -> web.Response:
    app = request.app
    mediator = app[MEDIATOR]
    gauges: dict[str, float] = {
        "live_connections": mediator.hub.live_count,
        "websocket_connections": len(mediator.hub.connections),
        "relay_slots_waiting": app[RELAY].table.waiting,
        "relay_sessions_active": app[RELAY].table.relaying,
    }
    with contextlib.suppress(Exception):
        count, size = await asyncio.wait_for(app[STORE].totals(), 5)
        gauges["queue_messages"] = count
        gauges["queue_bytes"] = size
    stun_counts: dict[str, int] | None = None
    if STUN in app:
        handler, service = app[STUN].handler, app[STUN].service
        stun_counts = handler.stats()
        stun_counts["queue_drops"] = service.queue_drops
        stun_counts["send_drops"] = service.send_drops
        stun_counts["tcp_rejected"] = service.tcp_rejected
        stun_counts["tcp_framing_errors"] = service.tcp_framing_errors
    text = app[METRICS].render(gauges, stun_counts)
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )


async def didcomm_post(request: web.Request) -> web.Response:
    """One DIDComm message by HTTP POST; the reply in the response (return_route all)."""
    app = request.app
    ctype = request.content_type
    if ctype not in _ACCEPTED_TYPES:
        app[METRICS].error("http-content-type")
        return _http_error(
            request, 415, "e.p.xfer.content-type", f"Content-Type must be {ENCRYPTED}, not {ctype}"
        )
    try:
        async with asyncio.timeout(app[CONFIG].request_timeout):
            data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        app[METRICS].error(Codes.TOO_BIG)
        return _http_error(
            request, 413, Codes.TOO_BIG, f"body over {app[CONFIG].max_request_bytes} bytes"
        )
    except TimeoutError:
        app[METRICS].error("http-body-timeout")
        return _http_error(request, 408, "e.p.xfer.timeout", "request body too slow")
    app[METRICS].requests["http"] += 1
    reply = await app[MEDIATOR].handle(data, None)
    if reply is None:
        return web.Response(status=202)
    return _http_reply(reply)


def _http_reply(reply: Reply) -> web.Response:
    status = 200
    if reply.error is not None:
        status = 503 if reply.error.startswith("e.p.me") else 400
    return web.Response(
        body=reply.data, status=status, content_type=ENCRYPTED if reply.encrypted else PLAIN
    )


def _http_error(request: web.Request, status: int, code: str, comment: str) -> web.Response:
    report = problem_report(code, comment, frm=request.app[IDENTITY].did, to=None, pthid=None)
    return web.Response(body=json.dumps(report).encode(), status=status, content_type=PLAIN)


async def didcomm_ws(request: web.Request) -> web.StreamResponse:
    """DIDComm over a WebSocket: requests in, replies and live deliveries out."""
    app = request.app
    config = app[CONFIG]
    ws = web.WebSocketResponse(
        max_msg_size=config.max_ws_frame_bytes,
        heartbeat=config.ws_heartbeat or None,
    )
    await ws.prepare(request)
    mediator = app[MEDIATOR]
    conn = Connection(ws, request.remote or "?", request.transport)
    mediator.hub.attach(conn)
    metrics = app[METRICS]
    try:
        while True:
            # Nothing of one message may stay referenced while waiting for the next: an idle
            # live client should cost its socket, not its last request and reply.
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                data = msg.data
                del msg
                await _ws_message(mediator, conn, data, config.ws_send_timeout)
                del data
                metrics.requests["ws"] += 1
            elif kind is WSMsgType.ERROR:  # oversized (1009) or malformed framing
                too_big = getattr(msg.data, "code", None) == 1009
                metrics.error("ws-frame-too-big" if too_big else "ws-protocol")
            elif kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
    except (TimeoutError, ConnectionError):
        metrics.error("ws-send")
    finally:
        mediator.hub.detach(conn)
    return ws


async def _ws_message(
    mediator: Mediator, conn: Connection, data: str | bytes, send_timeout: float
) -> None:
    reply = await mediator.handle(data.encode() if isinstance(data, str) else data, conn)
    if reply is not None:
        await asyncio.wait_for(conn.ws.send_str(reply.data.decode()), send_timeout)


# -- connection limits ---------------------------------------------------------------------


class SourceLimiter:
    """Counts open TCP connections per client IP; refuses those over the limit.

    It wraps the ``connection_made`` / ``connection_lost`` hooks of the aiohttp server (the
    per-connection manager every request handler reports to), so a refused connection is
    closed before a byte of it is parsed.
    """

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.open: Counter[str] = Counter()

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost
        peers: dict[int, str] = {}

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else "?"
            made(handler, transport)
            if self.open[ip] >= self.limit:
                self.metrics.connections_rejected += 1
                transport.abort()
                return
            self.open[ip] += 1
            peers[id(handler)] = ip

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            ip = peers.pop(id(handler), None)
            if ip is not None:
                self.open[ip] -= 1
                if not self.open[ip]:
                    del self.open[ip]
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]


# -- factory and runner --------------------------------------------------------------------


def create_app(config: MediatorConfig, *, metrics: Metrics | None = None) -> web.Application:
    """The mediator application; nothing is opened until it starts (``cleanup_ctx``)."""
    app = web.Application(client_max_size=config.max_request_bytes)
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics()
    app[STARTED] = time.monotonic()
    app.cleanup_ctx.extend([_identity_ctx, _store_ctx, _mediator_ctx, _stun_ctx, _relay_ctx])
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/invitation", invitation_json)
    app.router.add_get("/invitation.json", invitation_json)
    app.router.add_get("/invitation.url", invitation_url)
    app.router.add_get("/invitation.png", invitation_png)
    app.router.add_get("/invitation.svg", invitation_svg)
    app.router.add_post("/didcomm", didcomm_post)
    app.router.add_post("/", didcomm_post)
    app.router.add_get("/ws", didcomm_ws)
    app.router.add_get("/metrics", metrics_page)
    if config.relay_enabled:

        async def relay(request: web.Request) -> web.StreamResponse:
            return await request.app[RELAY].handle(request)

        app.router.add_get("/relay", relay)
    return app


async def serve(config: MediatorConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run the mediator until SIGTERM/SIGINT (or ``stop``), then shut down gracefully.

    Raises:
        ConfigError: a port cannot be bound, the store cannot be opened, ...
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    app = create_app(config)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=config.request_timeout,
        shutdown_timeout=10.0,
    )
    try:
        await runner.setup()
    except DidSessionError:
        await runner.cleanup()
        raise
    assert runner.server is not None
    SourceLimiter(config.max_connections_per_source, app[METRICS]).install(runner.server)
    site = web.TCPSite(runner, config.host, config.port, backlog=4096, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from exc
    log.info(
        "mediator listening",
        extra={
            "url": config.base_url,
            "did": app[IDENTITY].did,
            "store": config.store_backend,
            "invitation": f"{config.base_url}/invitation",
        },
    )
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
        log.info("stopped")
