"""Asyncio shell of :class:`~didsession.session.multipath.Multipath` (spec/session.md §15).

:class:`MultipathTransport` is the one transport the layer above sees (MPyC's
``SessionTransport`` or a :class:`~didsession.session.stream.Session`): ``write`` takes
sealed frames, ``data_received`` of the layer above gets the peer's frames in counter
order.  Underneath it drives any number of paths, each an asyncio transport whose protocol
is a :class:`PathProtocol`: the relay link the handshake ran on, and direct TCP
connections, dialled (:func:`dial_direct`) or accepted by a :class:`PathListener`, which
routes a connection to its session by the attach id of its path check.

Like :mod:`didsession.session.stream`, this is a thin shell: it moves bytes between the
core and the transports, drains :meth:`Multipath.data_to_send` after every input, and runs
one recurring tick for the core's timers (ACK delay, pings, dead paths).

Closing lingers (spec §15.8): :meth:`MultipathTransport.close` keeps the paths, reading and
acknowledging, until the peer has acknowledged our last frame (the session's CLOSE) or
``CLOSE_LINGER`` passed; only then are they closed and the layer above hears
``connection_lost``.  A party that closed its sockets (or exited) with its CLOSE still in
flight made the peer see a truncated session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from didsession.errors import FrameError, ProtocolError, RemoteProtocolError
from didsession.relay_transport import can_write_eof
from didsession.session.channel import Channel
from didsession.session.events import Event
from didsession.session.frame import OVERHEAD
from didsession.session.keyschedule import Role, path_check_key
from didsession.session.multipath import (
    Multipath,
    MultipathConfig,
    MultipathState,
    PathActivated,
    PathClosed,
    PathKind,
    PathsLost,
    peek_attach_id,
)

if TYPE_CHECKING:
    from didsession.candidates import Candidate

__all__ = ["MultipathTransport", "PathListener", "PathProtocol", "dial_direct", "multipath_for"]

log = logging.getLogger("didsession.paths")

TICK = 0.05
# How long close() waits at most for the peer to acknowledge our CLOSE (spec §15.8).
CLOSE_LINGER = 5.0
# How long a closed session's TCP paths keep reading after their FIN (see _finish_close()).
CLOSE_GRACE = 2.0
# Connections a listener holds before they named their session, and for how long.
MAX_UNNAMED = 64
UNNAMED_TIMEOUT = 10.0


def multipath_for(
    channel: Channel, *, now: float, config: MultipathConfig | None = None
) -> Multipath:
    """The multipath core of an established channel, taking over after the frames the
    channel already received on the handshake path.  Frames longer than the payload this
    party accepts (its ``max_payload``, spec §6.4) are refused before they are buffered;
    the channel's authenticator checks every frame before it counts (spec §15.5)."""
    config = config or MultipathConfig()
    own = (
        channel.params.initiator_max_payload
        if channel.role is Role.INITIATOR
        else channel.params.responder_max_payload
    )
    config = dataclasses.replace(config, max_frame=min(config.max_frame, own + OVERHEAD))
    return Multipath(
        role=channel.role,
        key=path_check_key(channel.resumption().secret),
        attach_id=channel.attach_id,
        rx_next=channel.frames_received,
        now=now,
        config=config,
        authenticate=channel.authenticator(),
    )


class PathProtocol(asyncio.Protocol):
    """The protocol of one path's transport: hands its bytes to the multipath transport."""

    def __init__(self, owner: MultipathTransport | None = None, pid: int = -1) -> None:
        self.owner = owner
        self.pid = pid
        self.transport: asyncio.BaseTransport | None = None
        # Bytes that arrive before the path is added (the peer's HELLO right behind the
        # handshake of a TCP simultaneous open): kept for add_path, never dropped.
        self.pending: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner._path_data(self.pid, data)
        elif len(self.pending) < 64:
            self.pending.append(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.owner is not None:
            self.owner._path_lost(self.pid, exc)


class MultipathTransport(asyncio.Transport):
    """One session's paths as a single ordered transport (see the module docstring).

    Args:
        mp: the core (:func:`multipath_for`).
        upper: the protocol above (gets ``data_received`` with in-order frames and
            ``connection_lost`` when no path is left or after :meth:`close`).
        label: how logs name the peer.
        on_event: called with every core event (path verified/activated/closed, lost).
    """

    def __init__(
        self,
        mp: Multipath,
        upper: asyncio.Protocol,
        *,
        label: str = "peer",
        on_event: Callable[[Event], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__()
        self.mp = mp
        self._upper = upper
        self.label = label
        self.on_event = on_event
        self._loop = loop or asyncio.get_running_loop()
        self._transports: dict[int, asyncio.BaseTransport] = {}
        self._writes: dict[int, Callable[[bytes], None]] = {}
        self._closing = False  # close() was called: no more writes; lingering
        self._finished = False  # the paths are closed (or closing)
        self._linger: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._lost = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing_paths: list[asyncio.BaseTransport] = []
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(TICK, self._tick)
        self.direct_up = asyncio.Event()
        self.stats = {"bytes_sent": 0, "bytes_received": 0}
        # Listeners that route connections to this session, as (listener, attach id): told
        # when it ends (see _ended()).
        self._listeners: list[tuple[PathListener, bytes]] = []

    # -- paths -----------------------------------------------------------------------

    def add_path(
        self,
        kind: PathKind,
        transport: asyncio.BaseTransport,
        *,
        quiet: bool = False,
        **info: object,
    ) -> int:
        """Run ``transport`` as one of this session's paths (its protocol becomes a
        :class:`PathProtocol`); returns the path id."""
        pid = self.mp.add_path(kind, self._loop.time(), quiet=quiet, **info)
        self._transports[pid] = transport
        self._writes[pid] = transport.write  # type: ignore[attr-defined]
        proto = transport.get_protocol()
        pending: list[bytes] = []
        lost = False
        if isinstance(proto, PathProtocol) and proto.owner is None:
            proto.owner, proto.pid = self, pid
            pending, proto.pending, lost = proto.pending, [], proto.lost
        else:
            transport.set_protocol(PathProtocol(self, pid))
        self._pump()
        for data in pending:
            self._path_data(pid, data)
        if lost:
            self._path_lost(pid, None)
        return pid

    def adopt(self, transport: asyncio.BaseTransport, buffered: bytes, **info: Any) -> int:
        """A direct path a listener accepted, with the bytes it already read."""
        pid = self.add_path(PathKind.DIRECT, transport, **info)
        if buffered:
            self._path_data(pid, buffered)
        return pid

    def _path_data(self, pid: int, data: bytes) -> None:
        if self._finished:
            return  # read and dropped: a closed socket with unread data would send a RST
        try:
            frames = self.mp.receive(pid, data, self._loop.time())
        except ProtocolError as exc:  # (a LocalProtocolError: our bug, fatal all the same)
            self._pump()
            self._fail(exc)
            return
        if self.mp.has_output:
            self._pump()
        if self._closing:
            # Lingering: the ACK that settles the close, or the peer's frames (acknowledged
            # at once by the core), which nobody above reads any more.
            if self.mp.settled:
                self._finish_close()
            return
        if frames:
            self.stats["bytes_received"] += sum(map(len, frames))
            self._upper.data_received(frames[0] if len(frames) == 1 else b"".join(frames))

    def _path_lost(self, pid: int, exc: Exception | None) -> None:
        self._transports.pop(pid, None)
        self._writes.pop(pid, None)
        if self._finished:
            return
        why = f"connection lost: {exc}" if exc else "connection closed"
        self.mp.path_lost(pid, self._loop.time(), why)
        self._pump()
        if self._closing and (self.mp.settled or not self._transports):
            self._finish_close()

    def _pump(self) -> None:
        for pid, data in self.mp.data_to_send():
            write = self._writes.get(pid)
            if write is not None:
                write(data)
        for event in self.mp.events():
            if isinstance(event, PathClosed):
                log.debug(f"didsession: path {event.path} to {self.label} closed: {event.reason}")
                transport = self._transports.pop(event.path, None)
                self._writes.pop(event.path, None)
                if transport is not None:
                    transport.close()
                if not self._closing:  # (a lingering close expects its paths to go)
                    log.info(
                        f"didsession: {event.kind.value} path to {self.label} closed: "
                        f"{event.reason}"
                    )
            elif isinstance(event, PathActivated):
                if event.kind is PathKind.DIRECT:
                    self.direct_up.set()
                info = next((p for p in self.mp.paths() if p["id"] == event.path), {})
                where = f" {info.get('local', '?')} -> {info.get('remote', '?')}"
                log.info(
                    f"didsession: session with {self.label} now on the {event.kind.value} path"
                    f"{where if event.kind is PathKind.DIRECT else ''} ({event.reason})"
                )
            elif isinstance(event, PathsLost) and not self._closing:
                # (While lingering nothing is lost: _path_lost or _tick finishes the close.)
                self._connection_lost(
                    RemoteProtocolError(
                        f"every path to {self.label} is gone: {event.reason}",
                        code="e.p.msg.session.truncated",
                    )
                )
            if self.on_event is not None:
                self.on_event(event)

    def _tick(self) -> None:
        # Also while lingering: a path that dies then is noticed, and the CLOSE is sent
        # again on the next one.
        self._timer = None
        if self._finished or self.mp.state is MultipathState.LOST:
            return
        self.mp.handle_timer(self._loop.time())
        self._pump()
        state: MultipathState = self.mp.state  # (handle_timer may have lost the paths)
        if self._closing and self.mp.settled:
            self._finish_close()
        elif not self._finished and state is not MultipathState.LOST:
            self._timer = self._loop.call_later(TICK, self._tick)

    def spawn(self, coro: Any) -> None:
        """Run a helper task (dialling) that ends with this transport."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning(f"didsession: looking for a direct path to {self.label} failed: {exc!r}")

    # -- the transport the layer above writes to -------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        data = bytes(data)
        self.stats["bytes_sent"] += len(data)
        pid = self.mp.send(data)
        write = self._writes.get(pid)
        if write is not None:
            write(data)

    def close(self) -> None:
        """Stop writing; close every path once the peer acknowledged what we sent (the
        session's CLOSE last) or after ``CLOSE_LINGER`` seconds (spec §15.8).  The layer
        above hears ``connection_lost`` then."""
        if self._closing:
            return
        self._closing = True
        self._ended()
        for task in list(self._tasks):
            task.cancel()
        self.mp.close(self._loop.time())
        self._pump()
        if self.mp.settled or not self._transports:
            self._finish_close()
        else:
            self._linger = self._loop.call_later(CLOSE_LINGER, self._finish_close)

    def _finish_close(self) -> None:
        """Close every path (what was written is flushed by each transport first)."""
        if self._finished:
            return
        self._finished = True
        for handle in (self._timer, self._linger):
            if handle is not None:
                handle.cancel()
        self._timer = self._linger = None
        self._closing_paths = list(self._transports.values())
        for transport in self._closing_paths:
            # Half-close first and keep reading: closing a TCP socket while the peer still
            # sends (its ACKs, its own CLOSE) makes the kernel answer with a RST, which can
            # destroy our CLOSE frame in the peer's receive buffer.
            if can_write_eof(transport):
                with contextlib.suppress(OSError, RuntimeError):
                    transport.write_eof()  # type: ignore[attr-defined]
                    self._loop.call_later(CLOSE_GRACE, transport.close)
                    continue
            transport.close()
        self._transports.clear()
        self._writes.clear()
        self._loop.call_soon(self._connection_lost, None)
        if not self._done.done():
            self._done.set_result(None)

    def abort(self) -> None:
        self.close()

    async def wait_closed(self) -> None:
        """After :meth:`close`: until the close has settled (or given up lingering) and
        the paths that can say so are closed (a relay link's WebSocket, so that nothing is
        left behind when the event loop ends)."""
        if self._closing:
            await asyncio.shield(self._done)
        waits = [t.wait_closed() for t in self._closing_paths if hasattr(t, "wait_closed")]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*waits, return_exceptions=True)

    def is_closing(self) -> bool:
        return self._closing

    def _fail(self, exc: ProtocolError) -> None:
        self._connection_lost(exc)
        self.close()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        if not self._lost:
            self._lost = True
            self._upper.connection_lost(exc)

    @property
    def ended(self) -> bool:
        """Whether the session takes no new path: closing, or every path is gone."""
        return self._closing or self._lost

    def _ended(self) -> None:
        """The session takes no new path: leave the listeners (they would route a late
        connection to it, and keep it alive)."""
        listeners, self._listeners = self._listeners, []
        for listener, attach_id in listeners:
            listener.unregister(attach_id, self)

    def get_write_buffer_size(self) -> int:
        transport = self._transports.get(self.mp.active)
        buffered = getattr(transport, "get_write_buffer_size", None)  # uvloop: duck-typed
        return int(buffered()) if buffered is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "multipath":
            return self
        transport = self._transports.get(self.mp.active)
        if name == "path":
            kind = self.mp.path_kind(self.mp.active)
            return kind.value if kind is not None else None
        if transport is None:
            return default
        return transport.get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        """Path, RTT, counters (for ``didsession status``)."""
        kind = self.mp.path_kind(self.mp.active)
        active = next((p for p in self.mp.paths() if p["active"]), None)
        return {
            "path": kind.value if kind is not None else None,
            "local": active.get("local") if active else None,
            "remote": active.get("remote") if active else None,
            "rtt_ms": active.get("rtt_ms") if active else None,
            "upgrades": self.mp.upgrades,
            "fallbacks": self.mp.fallbacks,
            "paths": self.mp.paths(),
            **self.stats,
        }


class _Unnamed(asyncio.Protocol):
    """A connection accepted by a :class:`PathListener` before its path check named the
    session."""

    def __init__(self, listener: PathListener) -> None:
        self._listener = listener
        self._buf = b""
        # Any: uvloop's transports do not derive from asyncio's classes.
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if len(self._listener._unnamed) >= MAX_UNNAMED:
            transport.close()
            return
        self._listener._unnamed.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(UNNAMED_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buf += data
        try:
            attach_id = peek_attach_id(self._buf)
        except FrameError:
            self._transport.close()
            return
        if attach_id is None:
            return
        self._done()
        owner = self._listener.sessions.get(attach_id)
        if owner is None or owner.is_closing() or owner.mp.state is not MultipathState.OPEN:
            # No such session (here, or any more), or it has ended and is not yet
            # unregistered (a stop racing the peer's upgrade): it takes no new paths.
            log.debug("didsession: a direct connection named no open session of ours; closed")
            self._transport.close()
            return
        owner.adopt(
            self._transport,
            self._buf,
            local=_fmt(self._transport.get_extra_info("sockname")),
            remote=_fmt(self._transport.get_extra_info("peername")),
            via="accepted",
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def _done(self) -> None:
        self._listener._unnamed.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class PathListener:
    """One TCP listener for the direct paths of every session of this process: each
    connection is routed by the attach id its path check starts with (a connection naming
    no live session is closed; the check itself happens in the session's core).  A session
    is routed from :meth:`register` until it ends (closes or loses every path)."""

    def __init__(self) -> None:
        self.sessions: dict[bytes, MultipathTransport] = {}
        self._unnamed: set[_Unnamed] = set()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, sock: socket.socket) -> None:
        """Listen on a bound socket (see :func:`didsession.candidates.reusable_tcp_socket`)."""
        loop = asyncio.get_running_loop()
        sock.listen(64)
        self.port = sock.getsockname()[1]
        # The class's method: an MPyC party shadows the loop's create_server while it starts.
        self._server = await type(loop).create_server(loop, lambda: _Unnamed(self), sock=sock)

    def register(self, attach_id: bytes, transport: MultipathTransport) -> None:
        """Route connections naming ``attach_id`` to ``transport``, until it ends (it
        unregisters itself then)."""
        if transport.ended:
            return
        self.sessions[attach_id] = transport
        transport._listeners.append((self, attach_id))

    def unregister(self, attach_id: bytes, transport: MultipathTransport | None = None) -> None:
        """Stop routing ``attach_id`` (only if it still routes to ``transport``, if given)."""
        if transport is None or self.sessions.get(attach_id) is transport:
            self.sessions.pop(attach_id, None)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._unnamed):
            if conn._transport is not None:
                conn._transport.close()


async def dial_direct(
    transport: MultipathTransport,
    local_port: int | None,
    candidates: Sequence[Candidate],
    *,
    timeout: float = 10.0,
) -> bool:
    """Dial the peer's candidates (TCP, simultaneous open through cone NATs) and run each
    connection as a direct path, until one is verified or ``timeout``.  True if a direct
    path is up."""
    from didsession.candidates import dial

    if not candidates:
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    gen = dial(local_port, candidates, timeout=timeout)

    async def next_connection() -> tuple[socket.socket, Candidate]:
        return await anext(gen)

    waiter = loop.create_task(transport.direct_up.wait())
    nxt: asyncio.Task[tuple[socket.socket, Candidate]] | None = None
    try:
        while not transport.direct_up.is_set() and not transport.is_closing():
            nxt = loop.create_task(next_connection())
            await asyncio.wait(
                {nxt, waiter},
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not nxt.done():
                break
            try:
                sock, cand = nxt.result()
            except StopAsyncIteration:
                break
            finally:
                nxt = None
            if transport.is_closing():
                sock.close()
                break
            log.debug(f"didsession: connected to {transport.label} at {cand.host}:{cand.port}")
            tcp, _ = await type(loop).create_connection(loop, PathProtocol, sock=sock)
            if transport.is_closing() or transport.mp.state is not MultipathState.OPEN:
                tcp.close()  # the session ended while we dialled
                break
            transport.add_path(
                PathKind.DIRECT,
                tcp,
                local=_fmt(tcp.get_extra_info("sockname")),
                remote=_fmt(tcp.get_extra_info("peername")),
                via=f"dialled {cand.type.value}",
            )
        if not transport.direct_up.is_set() and not transport.is_closing():
            # Connected paths may still be finishing their check.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await transport.direct_up.wait()
        return transport.direct_up.is_set()
    finally:
        waiter.cancel()
        if nxt is not None and not nxt.done():
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):
                await aclose()


def _fmt(addr: Any) -> str | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr) if addr else None
