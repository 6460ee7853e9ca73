"""Asyncio shell around the sans-IO STUN cores of :mod:`didsession.stun`.

:func:`stun_binding` runs one Binding transaction over UDP (RFC 8489 §6.2.1 retransmissions) or
TCP (§6.2.2).  :func:`serve_stun` runs a :class:`~didsession.stun.StunServer` (or anything with
its ``handle`` method) on a UDP socket and a TCP listener on the same port.  UDP input goes
through a bounded queue that drops when full, so a flood costs memory proportional to the
queue, not to the flood.  All protocol decisions are in the core; this file only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

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
    ``queue_drops`` (UDP input dropped, queue full), ``origin_drops`` (the core asked to answer
    from an address not served here), ``tcp_rejected`` (over the connection limit),
    ``tcp_framing_errors`` (connections closed for non-STUN bytes), ``handler_errors`` (the
    core raised; a :class:`~didsession.stun.StunServer` never does).
    """

    udp_addresses: list[Address] = field(default_factory=list)
    tcp_addresses: list[Address] = field(default_factory=list)
    queue_drops: int = 0
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


# A queued datagram: bytes, source, and the local address it arrived on (None: single socket).
_Datagram = tuple[bytes, Address, Address | None]


class _ServerDatagramProtocol(asyncio.DatagramProtocol):
    def __init__(
        self, service: StunService, queue: asyncio.Queue[_Datagram], local: Address | None
    ) -> None:
        self._service = service
        self._queue = queue
        self._local = local

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._queue.put_nowait((data, (str(addr[0]), int(addr[1])), self._local))
        except asyncio.QueueFull:
            self._service.queue_drops += 1

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a client that went away; nothing to do


async def _udp_worker(
    service: StunService,
    core: StunHandler,
    queue: asyncio.Queue[_Datagram],
    sockets: dict[Address | None, asyncio.DatagramTransport],
    rfc5780: bool,
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        data, source, local = await queue.get()
        try:
            reply = core.respond(data, source, loop.time(), local=local, can_change_origin=rfc5780)
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
        transport.sendto(reply.data, source)


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
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_ServerDatagramProtocol, service, queue, local),
                local_addr=(host, port),
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
        service._tasks.add(loop.create_task(_udp_worker(service, core, queue, sockets, rfc5780)))


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
