"""Asyncio shell around the sans-IO STUN cores of :mod:`didsession.stun`.

:func:`stun_binding` runs one Binding transaction over UDP (RFC 8489 §6.2.1 retransmissions) or
TCP (§6.2.2).  :func:`serve_stun` runs a :class:`~didsession.stun.StunServer` (or anything with
its ``handle`` method) on a UDP socket and a TCP listener on the same port.  All protocol
decisions are in the core; this file only moves bytes.

UDP input.  A datagram is answered in ``datagram_received`` itself, which saves a queue hop and
a task switch per datagram.  A service answers at most :data:`UDP_ANSWERS_PER_ITERATION`
datagrams per event-loop iteration; past that budget input goes through a bounded queue that
drops when full, drained by a worker task under the same budget.  So a flood costs memory
proportional to the queue, not to the flood, and other tasks run between every budget's worth
of answers.  (Answers may overtake queued requests; UDP promises no order.)  Where the loop can
watch a socket (any loop but Windows' proactor), the sockets are read and written directly
(:class:`_SocketDatagramTransport`) rather than through the loop's datagram transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import field, replace
from typing import Any, Literal, Protocol

from didsession._dataclass import dataclass
from didsession.errors import DidSessionError, LocalProtocolError, StunParseError
from didsession.stun import (
    Address,
    BindingResult,
    StunReply,
    StunStreamReader,
    binding_request,
    parse_binding_response,
)

__all__ = ["StunHandler", "StunService", "serve_stun", "stun_binding"]

# RFC 8489 §6.2.1: Rm, the final wait after the last retransmission, in units of the initial RTO.
_RM = 16

#: UDP datagrams a :func:`serve_stun` service answers per event-loop iteration, all its sockets
#: together; more wait in its bounded queue.  A readable UDP socket delivers up to 32 datagrams
#: per iteration (libuv, so uvloop), so one busy socket is answered inline.
UDP_ANSWERS_PER_ITERATION = 64

#: Kernel receive and send buffer asked for each UDP socket of :func:`serve_stun`: 2 MiB, as
#: coturn sizes its listeners (``UR_SERVER_SOCK_BUF_SIZE``).  The default (about 200 KiB, a
#: few hundred datagrams at the kernel's accounting) overflows under a burst that the server
#: would answer a moment later.
UDP_SOCKET_BUFFER = 2 * 1024 * 1024

# Datagrams read per readable event and socket, as libuv does; the largest UDP payload.
_READS_PER_WAKEUP = 32
_MAX_DATAGRAM = 65535


def _timeout_error(host: str, port: int, transport: str, timeout: float) -> DidSessionError:
    return DidSessionError(
        f"STUN server {host}:{port} did not answer over {transport} within {timeout:g} s",
        code="e.p.stun.timeout",
    )


class _BindingClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, txid: bytes, future: asyncio.Future[BindingResult]) -> None:
        self._txid = txid
        self._future = future
        self.closed: asyncio.Future[None] = future.get_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._future.done():
            return
        try:
            result = parse_binding_response(data, self._txid)
        except StunParseError:
            return  # stray, mangled or foreign: discard and keep waiting (RFC 8489 §6.3)
        except DidSessionError as exc:  # an error response to our transaction
            self._future.set_exception(exc)
            return
        self._future.set_result(result)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) on a connected UDP socket: keep retransmitting;
        # a server that is starting may answer the next one.
        pass


async def stun_binding(
    host: str,
    port: int,
    *,
    timeout: float = 5.0,
    retries: int = 6,
    transport: Literal["udp", "tcp"] = "udp",
    rto: float = 0.5,
    local_addr: Address | None = None,
) -> BindingResult:
    """Ask the STUN server at ``host``:``port`` for our mapped address (RFC 8489 §6.2, §7).

    Over UDP the request is sent ``1 + retries`` times, RTO doubling from ``rto``, then the
    client waits ``16 * rto`` (RFC 8489 §6.2.1: Rc = 7, Rm = 16); ``timeout`` bounds all of it.
    Over TCP it is sent once on a fresh connection.

    Returns:
        The :class:`BindingResult`, with ``local`` set to the socket's local address.

    Raises:
        DidSessionError: no answer within ``timeout`` (code ``e.p.stun.timeout``) or the
            connection failed.
        RemoteProtocolError: the server sent an error response.
    """
    if transport == "tcp":
        return await _binding_tcp(host, port, timeout=timeout, local_addr=local_addr)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    txid, request = binding_request()
    future: asyncio.Future[BindingResult] = loop.create_future()
    udp, protocol = await loop.create_datagram_endpoint(
        lambda: _BindingClientProtocol(txid, future),
        remote_addr=(host, port),
        local_addr=local_addr,
    )
    try:
        local = udp.get_extra_info("sockname")
        wait = rto
        for attempt in range(retries + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            udp.sendto(request)
            budget = rto * _RM if attempt == retries else wait
            try:
                result = await asyncio.wait_for(asyncio.shield(future), min(budget, remaining))
            except TimeoutError:
                wait *= 2
                continue
            return replace(result, local=(local[0], local[1]))
        raise _timeout_error(host, port, "UDP", timeout)
    finally:
        udp.close()
        if not future.done():
            future.cancel()
        # The socket is really closed a loop iteration later; wait, so that the caller can bind
        # the same local port again at once (RFC 5780 tests reuse one local port).
        await asyncio.shield(protocol.closed)


async def _binding_tcp(
    host: str, port: int, *, timeout: float, local_addr: Address | None
) -> BindingResult:
    async def transact() -> BindingResult:
        txid, request = binding_request()
        reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
        try:
            local = writer.get_extra_info("sockname")
            writer.write(request)
            await writer.drain()
            stream = StunStreamReader()
            while True:
                data = await reader.read(4096)
                if not data:
                    raise DidSessionError(
                        f"STUN server {host}:{port} closed the TCP connection without answering",
                        code="e.p.stun.closed",
                    )
                stream.feed(data)
                message = stream.next_message()
                if message is not None:
                    # Our own fresh connection: the first message must be our answer.
                    result = parse_binding_response(message, txid)
                    return replace(result, local=(local[0], local[1]))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(transact(), timeout)
    except TimeoutError:
        raise _timeout_error(host, port, "TCP", timeout) from None
    except OSError as exc:
        raise DidSessionError(
            f"cannot reach STUN server {host}:{port} over TCP: {exc.strerror or exc}",
            code="e.p.stun.unreachable",
        ) from None


class StunHandler(Protocol):
    """What :func:`serve_stun` drives: a :class:`~didsession.stun.StunServer` or a wrapper."""

    def respond(
        self,
        data: bytes,
        source: Address,
        now: float,
        *,
        local: Address | None = None,
        can_change_origin: bool = True,
    ) -> StunReply | None: ...


@dataclass
class StunService:
    """A running :func:`serve_stun`.  Close it with :meth:`close` or ``async with``.

    ``udp_addresses`` / ``tcp_addresses``: bound addresses, primary first.  Counters:
    ``queue_drops`` (UDP input dropped, queue full), ``send_drops`` (UDP responses dropped, the
    kernel's send buffer full), ``origin_drops`` (the core asked to answer
    from an address not served here), ``tcp_rejected`` (over the connection limit),
    ``tcp_framing_errors`` (connections closed for non-STUN bytes), ``handler_errors`` (the
    core raised; a :class:`~didsession.stun.StunServer` never does).
    """

    udp_addresses: list[Address] = field(default_factory=list)
    tcp_addresses: list[Address] = field(default_factory=list)
    queue_drops: int = 0
    send_drops: int = 0
    origin_drops: int = 0
    tcp_rejected: int = 0
    tcp_framing_errors: int = 0
    handler_errors: int = 0
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _closers: list[asyncio.BaseTransport | asyncio.Server] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def udp_address(self) -> Address:
        """The primary UDP address."""
        return self.udp_addresses[0]

    @property
    def tcp_address(self) -> Address:
        """The primary TCP address."""
        return self.tcp_addresses[0]

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called (from another task)."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop listening, stop the worker and close every connection."""
        self._closed.set()
        for closer in self._closers:
            closer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for closer in self._closers:
            if isinstance(closer, asyncio.Server):
                await closer.wait_closed()

    async def __aenter__(self) -> StunService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# A datagram waiting for the worker: bytes, the source as the socket reported it, and the local
# address it arrived on (None: single socket).
_Datagram = tuple[bytes, Any, Address | None]


class _UdpResponder:
    """Answers datagrams: the core decides, each answer goes back to its source only.

    Shared by every UDP socket of a service and its worker; it also keeps the service's budget
    of answers for the current event-loop iteration.
    """

    __slots__ = ("_core", "_loop", "_rfc5780", "_service", "_sockets", "_spent")

    def __init__(
        self,
        service: StunService,
        core: StunHandler,
        sockets: dict[Address | None, asyncio.DatagramTransport],
        rfc5780: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._service = service
        self._core = core
        self._sockets = sockets
        self._rfc5780 = rfc5780
        self._loop = loop
        self._spent = 0  # answers in this loop iteration

    def take_turns(self, wanted: int) -> int:
        """Count up to ``wanted`` answers against this iteration's budget; how many it allows."""
        spent = self._spent
        granted = min(wanted, UDP_ANSWERS_PER_ITERATION - spent)
        if granted <= 0:
            return 0
        if not spent:
            self._loop.call_soon(self._new_iteration)
        self._spent = spent + granted
        return granted

    def _new_iteration(self) -> None:
        self._spent = 0

    def answer(self, datagrams: Sequence[tuple[bytes, Any]], local: Address | None) -> None:
        """Answer ``datagrams`` (bytes, source) that arrived on ``local``.  One loop over a
        batch: this is the per-datagram cost of the server besides the core."""
        service, sockets, rfc5780 = self._service, self._sockets, self._rfc5780
        respond = self._core.respond
        now = self._loop.time()  # one reading per batch: read in one loop iteration
        for data, addr in datagrams:
            source: Address = addr if len(addr) == 2 else (addr[0], addr[1])  # IPv6: 4-tuple
            try:
                reply = respond(data, source, now, local=local, can_change_origin=rfc5780)
            except Exception:
                service.handler_errors += 1  # a broken handler must not stop the server
                continue
            if reply is None:
                continue
            # The destination is always the source; only the socket it leaves from may change.
            origin = local if reply.origin is None or not rfc5780 else reply.origin
            transport = sockets.get(origin)
            if transport is None:
                service.origin_drops += 1
                continue
            transport.sendto(reply.data, addr)


class _ServerDatagramProtocol(asyncio.DatagramProtocol):
    """One UDP socket of a service.  Without a responder it only feeds the queue."""

    def __init__(
        self,
        service: StunService,
        queue: asyncio.Queue[_Datagram],
        local: Address | None,
        responder: _UdpResponder | None = None,
    ) -> None:
        self._service = service
        self._queue = queue
        self._local = local
        self._responder = responder

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.datagrams_received([(data, addr)])

    def datagrams_received(self, datagrams: list[tuple[bytes, Any]]) -> None:
        """Datagrams read together (:class:`_SocketDatagramTransport` reads several at once):
        answered now within the budget, queued beyond it, dropped when the queue is full."""
        responder = self._responder
        inline = 0
        if responder is not None:
            inline = responder.take_turns(len(datagrams))
            if inline:
                responder.answer(
                    datagrams if inline == len(datagrams) else datagrams[:inline], self._local
                )
        if inline < len(datagrams):
            for data, addr in datagrams[inline:]:
                try:
                    self._queue.put_nowait((data, addr, self._local))
                except asyncio.QueueFull:
                    self._service.queue_drops += 1

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a client that went away; nothing to do

    def send_dropped(self) -> None:
        self._service.send_drops += 1


async def _udp_worker(queue: asyncio.Queue[_Datagram], responder: _UdpResponder) -> None:
    while True:
        data, addr, local = await queue.get()
        while not responder.take_turns(1):
            await asyncio.sleep(0)  # this iteration's budget is spent: let other tasks run
        responder.answer(((data, addr),), local)


async def serve_stun(
    host: str,
    port: int,
    core: StunHandler,
    *,
    alternate: Address | None = None,
    udp: bool = True,
    tcp: bool = True,
    queue_size: int = 1024,
    max_tcp_connections: int = 256,
    tcp_idle_timeout: float = 30.0,
) -> StunService:
    """Serve STUN on ``host``:``port`` over UDP and TCP until the returned service is closed.

    With ``port`` 0 the UDP socket gets a free port and TCP listens on the same one.

    With ``alternate`` (RFC 5780 §6), the service listens on all four combinations of
    (``host``, alternate IP) x (``port``, alternate port), tells the core which one each
    request arrived on, and sends UDP responses from the address the core picks, so
    CHANGE-REQUEST works.  The core's ``local_address`` and ``other_address`` must then be
    (``host``, ``port``) and ``alternate``, and the ports must be given.

    Args:
        core: answers each message, usually a :class:`~didsession.stun.StunServer`.
        queue_size: UDP datagrams waiting for the core; more are dropped and counted.
        max_tcp_connections: further connections are closed at once and counted.
        tcp_idle_timeout: a TCP connection silent this long is closed.

    Raises:
        OSError: the sockets cannot be bound.
        LocalProtocolError: ``alternate`` with port 0.
    """
    loop = asyncio.get_running_loop()
    if alternate is not None:
        if port == 0 or alternate[1] == 0:
            raise LocalProtocolError("serve_stun with an alternate address needs fixed ports")
        corners = [(h, p) for h in (host, alternate[0]) for p in (port, alternate[1])]
        service = StunService()
        try:
            await _start(
                service,
                loop,
                corners,
                core,
                True,
                udp,
                tcp,
                queue_size,
                max_tcp_connections,
                tcp_idle_timeout,
            )
        except BaseException:
            await service.close()
            raise
        return service
    for _ in range(20):
        service = StunService()
        try:
            await _start(
                service,
                loop,
                [(host, port)],
                core,
                False,
                udp,
                tcp,
                queue_size,
                max_tcp_connections,
                tcp_idle_timeout,
            )
        except OSError as exc:
            await service.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue  # the UDP port drawn is taken for TCP: draw again
            raise
        except BaseException:
            await service.close()
            raise
        return service
    raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")


async def _start(
    service: StunService,
    loop: asyncio.AbstractEventLoop,
    addresses: list[Address],
    core: StunHandler,
    rfc5780: bool,
    udp: bool,
    tcp: bool,
    queue_size: int,
    max_tcp_connections: int,
    tcp_idle_timeout: float,
) -> None:
    queue: asyncio.Queue[_Datagram] = asyncio.Queue(maxsize=queue_size)
    sockets: dict[Address | None, asyncio.DatagramTransport] = {}
    responder = _UdpResponder(service, core, sockets, rfc5780, loop)
    connections: set[asyncio.Task[None]] = set()

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local: Address | None
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(connections) >= max_tcp_connections:
            service.tcp_rejected += 1
            writer.close()
            return
        connections.add(task)
        service._tasks.add(task)
        try:
            await _serve_tcp(service, core, reader, writer, local, tcp_idle_timeout)
        finally:
            connections.discard(task)
            service._tasks.discard(task)
            writer.close()

    for host, port in addresses:
        local = _canonical_local(host, port) if rfc5780 else None
        if udp:
            transport = await _open_udp(
                loop, host, port, _ServerDatagramProtocol(service, queue, local, responder)
            )
            service._closers.append(transport)
            sockname = transport.get_extra_info("sockname")
            service.udp_addresses.append((sockname[0], sockname[1]))
            port = sockname[1]
            sockets[local] = transport
        if tcp:
            server = await asyncio.start_server(
                functools.partial(on_connection, local=local), host, port
            )
            service._closers.append(server)
            sockname = server.sockets[0].getsockname()
            service.tcp_addresses.append((sockname[0], sockname[1]))
    if udp:
        service._tasks.add(loop.create_task(_udp_worker(queue, responder)))


async def _open_udp(
    loop: asyncio.AbstractEventLoop, host: str, port: int, protocol: _ServerDatagramProtocol
) -> asyncio.DatagramTransport:
    """A UDP socket bound to (``host``, ``port``) feeding ``protocol``: a
    :class:`_SocketDatagramTransport` where the loop can watch a socket, else the loop's own
    datagram transport (Windows' proactor loop)."""
    infos = await loop.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP, flags=socket.AI_PASSIVE
    )
    error: OSError = OSError(f"no address to bind for {host!r}")
    for family, kind, proto, _, address in infos:  # the first that binds, as asyncio does
        sock = socket.socket(family, kind, proto)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)
            sock.bind(address)
            sock.setblocking(False)
            try:
                return _SocketDatagramTransport(loop, sock, protocol)
            except NotImplementedError:  # the loop cannot watch sockets
                transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
                return transport
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error


class _SocketDatagramTransport(asyncio.DatagramTransport):
    """The least a UDP server socket needs, watched with ``loop.add_reader``.

    Per datagram this does one ``recvfrom`` and one ``sendto``, where a loop's datagram
    transport adds a context switch, an address cache and write-buffer bookkeeping.  A readable
    event reads up to :data:`_READS_PER_WAKEUP` datagrams and hands them to the protocol in one
    call; the answers given meanwhile leave together when it returns, so a client wakes once
    per batch rather than once per answer (a wake-up the sender's ``sendto`` pays for).  There
    is no write buffer: an answer that finds the kernel's send buffer full is dropped and
    counted (the service's ``send_drops``), as UDP may.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: _ServerDatagramProtocol,
    ) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._closing = False
        self._held: list[tuple[Any, Any]] | None = None  # answers held while a batch is handled
        loop.add_reader(sock.fileno(), self._read_ready)  # NotImplementedError: no selector
        protocol.connection_made(self)

    def _read_ready(self) -> None:
        recvfrom = self._sock.recvfrom
        datagrams: list[tuple[bytes, Any]] = []
        for _ in range(_READS_PER_WAKEUP):
            try:
                datagrams.append(recvfrom(_MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._protocol.error_received(exc)
                break
        if not datagrams:
            return
        held: list[tuple[Any, Any]] = []
        self._held = held
        try:
            self._protocol.datagrams_received(datagrams)
        finally:
            self._held = None
            if held:
                self._send_all(held)

    def sendto(self, data: Any, addr: Any = None) -> None:
        held = self._held
        if held is not None:
            held.append((data, addr))
        else:
            self._send_all(((data, addr),))

    def _send_all(self, answers: Sequence[tuple[Any, Any]]) -> None:
        if self._closing:
            return
        protocol, sendto = self._protocol, self._sock.sendto
        for data, addr in answers:
            try:
                sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                protocol.send_dropped()
            except OSError as exc:
                protocol.error_received(exc)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def _canonical_local(host: str, port: int) -> Address:
    return str(ipaddress.ip_address(host)), port


async def _serve_tcp(
    service: StunService,
    core: StunHandler,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    local: Address | None,
    idle_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    peer = writer.get_extra_info("peername")
    source: Address = (peer[0], peer[1])
    stream = StunStreamReader()
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), idle_timeout)
            if not data:
                return
            stream.feed(data)
            while (message := stream.next_message()) is not None:
                # A TCP response can only leave on its own connection: no CHANGE-REQUEST.
                reply = core.respond(
                    message, source, loop.time(), local=local, can_change_origin=False
                )
                if reply is not None:
                    writer.write(reply.data)
            await asyncio.wait_for(writer.drain(), idle_timeout)
    except StunParseError:
        service.tcp_framing_errors += 1
    except (TimeoutError, ConnectionError):
        pass
    except Exception:
        service.handler_errors += 1
