"""Run a session over an asyncio stream, e.g. TCP (spec/session.md §4.4, §4.5, §6.4).

A thin shell around the sans-IO cores: it moves bytes between an
``asyncio.StreamReader``/``StreamWriter`` pair and a :class:`Handshake` / :class:`Channel`,
and keeps one timer armed.  Two ways in:

* :func:`open_session` / :func:`accept_session` run the handshake on the same connection:
  each packed DIDComm message travels as ``u32 length || packed bytes``.  Packing and
  unpacking are injected (``pack(plaintext, to_did) -> packed``, ``unpack(packed) ->
  (plaintext, sender_did)``) so this module does not depend on the envelope module.
* :func:`attach_session` attaches a channel whose handshake went over another DIDComm route;
  the initiator first writes the channel's 16-byte attach id, which the accepting side reads
  with :func:`read_attach_id` to find the channel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from didsession._dataclass import dataclass
from didsession.errors import LocalProtocolError, RemoteProtocolError
from didsession.session.channel import Channel, ChannelState
from didsession.session.events import SessionClosed, SessionRefused
from didsession.session.frame import (
    OVERHEAD,
    FrameDecoder,
    push_length_prefixed,
)
from didsession.session.handshake import Handshake, OutboundMessage
from didsession.session.keyschedule import PathKind, Role, Suite
from didsession.session.multipath import PathKind as Route

__all__ = [
    "MAX_PACKED_MESSAGE",
    "PackFn",
    "PathInfo",
    "Session",
    "UnpackFn",
    "accept_session",
    "attach_session",
    "open_session",
    "read_attach_id",
]

PackFn = Callable[[bytes, str], Awaitable[bytes]]
UnpackFn = Callable[[bytes], Awaitable[tuple[bytes, str]]]
# Upper bound of a packed handshake message on the stream (spec §4.4).
MAX_PACKED_MESSAGE = 1 << 18
_READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class PathInfo:
    """What carries a session now: the kind of path and the socket addresses, if any.

    ``kind`` names the path as ``didsession status`` does: ``direct`` (a connection between
    the parties) or ``relay`` (the mediator's relay); ``None`` once a multipath session has
    no path left.  The framing negotiated in the handshake (``stream``, spec §6.1) is
    another thing: ``session.channel.path``.
    """

    kind: Route | None
    local: Any
    remote: Any


class Session:
    """An established session on an asyncio stream.

    Not created directly: use :func:`open_session`, :func:`accept_session` or
    :func:`attach_session`.  One task may :meth:`recv` at a time; :meth:`send` never blocks
    (call :meth:`drain` for flow control).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        channel: Channel,
        *,
        decoder: FrameDecoder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if channel.path is not PathKind.STREAM:
            raise LocalProtocolError("a stream session needs a channel negotiated for 'stream'")
        self._reader = reader
        self._writer = writer
        self._channel = channel
        self._clock = clock
        own_max = (
            channel.params.initiator_max_payload
            if channel.role is Role.INITIATOR
            else channel.params.responder_max_payload
        )
        self._decoder = decoder if decoder is not None else FrameDecoder(own_max + OVERHEAD)
        # Handshake items may still be buffered; from here on only session frames follow.
        self._decoder.max_size = own_max + OVERHEAD - 4
        self._decoder.min_size = OVERHEAD - 4
        self._timer: asyncio.TimerHandle | None = None
        # Wire counters for status displays (didsession/status.py): session frames only.
        self._bytes_sent = 0
        self._bytes_received = 0
        self._frames_received = 0
        self._arm_timer()

    # -- properties ------------------------------------------------------------------

    @property
    def channel(self) -> Channel:
        """The sans-IO channel underneath."""
        return self._channel

    @property
    def peer_did(self) -> str:
        """The authenticated DID of the peer."""
        return self._channel.peer_did

    @property
    def local_did(self) -> str:
        """Our DID."""
        return self._channel.local_did

    @property
    def session_id(self) -> bytes:
        """The 16-byte session id (spec §5.4)."""
        return self._channel.session_id

    @property
    def suite(self) -> Suite:
        """The negotiated cipher suite."""
        return self._channel.suite

    @property
    def path(self) -> PathInfo:
        """The path the frames travel now and its socket addresses (see :class:`PathInfo`)."""
        writer = self._writer
        kind: Route | None
        if writer.get_extra_info("multipath") is not None:
            active = writer.get_extra_info("path")  # the active path's kind, None: none left
            kind = None if active is None else Route(active)
        elif writer.get_extra_info("peername") == "relay":  # what relay links call their peer
            kind = Route.RELAY
        else:
            kind = Route.DIRECT
        return PathInfo(kind, writer.get_extra_info("sockname"), writer.get_extra_info("peername"))

    @property
    def closed(self) -> bool:
        """True once the channel left ESTABLISHED."""
        return self._channel.state is not ChannelState.ESTABLISHED

    @property
    def bytes_sent(self) -> int:
        """Bytes of session frames written so far (headers and tags included)."""
        return self._bytes_sent

    @property
    def bytes_received(self) -> int:
        """Bytes of session frames received so far (headers and tags included)."""
        return self._bytes_received

    @property
    def frames_sent(self) -> int:
        """Frames sealed so far, control frames included."""
        return self._channel.frames_sent

    @property
    def frames_received(self) -> int:
        """Frames received so far, control frames included."""
        return self._frames_received

    # -- data ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Seal ``data`` into a frame and write it (spec §6.3).

        Raises:
            LocalProtocolError: the session is closed or ``data`` is too large.
        """
        frame = self._channel.seal(data)
        self._bytes_sent += len(frame)
        self._writer.write(frame)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        await self._writer.drain()

    async def recv(self) -> bytes:
        """The next payload from the peer.

        Raises:
            LocalProtocolError: the session is closed (``code`` is the close code).
            RemoteProtocolError: (and its subclasses) the peer or the network broke the
                stream; the session is closed with that code.
        """
        channel = self._channel
        decoder = self._decoder
        while True:
            try:
                frame = decoder.next_frame()
                if frame is None:
                    if channel.state is not ChannelState.ESTABLISHED:
                        raise LocalProtocolError("session is closed")
                    data = await self._reader.read(_READ_SIZE)
                    if not data and channel.state is not ChannelState.ESTABLISHED:
                        raise LocalProtocolError("session is closed")  # we closed meanwhile
                    if not data:
                        raise RemoteProtocolError(
                            "stream ended without CLOSE", code="e.p.msg.session.truncated"
                        )
                    decoder.feed(data)
                    continue
                self._frames_received += 1
                self._bytes_received += len(frame)
                payload = channel.open(frame)
            except RemoteProtocolError as exc:
                channel.abort(exc)
                self._shutdown()
                raise
            if payload is not None:
                return payload
            for event in channel.events():
                if isinstance(event, SessionClosed):
                    self._shutdown()
                    raise LocalProtocolError("session closed by peer", code=event.code)
            self._transmit()
            self._arm_timer()

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> bytes:
        """Payloads until the session closes cleanly; protocol errors still raise."""
        try:
            return await self.recv()
        except LocalProtocolError:
            if self._channel.state is ChannelState.CLOSED:
                raise StopAsyncIteration from None
            raise

    def rekey(self, *, request_peer: bool = False) -> None:
        """Update our sending key now (spec §8.2)."""
        self._channel.rekey(request_peer=request_peer)
        self._transmit()

    def close(self, code: str = "") -> None:
        """Send CLOSE and close the transport (spec §9).  Idempotent."""
        self._channel.close(code)
        self._shutdown()

    async def wait_closed(self) -> None:
        """Wait until the transport is closed."""
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # -- internals -------------------------------------------------------------------

    def _transmit(self) -> None:
        frames = self._channel.data_to_send()
        if frames and not self._writer.is_closing():
            data = b"".join(frames)
            self._bytes_sent += len(data)
            self._writer.write(data)

    def _shutdown(self) -> None:
        self._transmit()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._writer.is_closing():
            self._writer.close()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self._channel.get_timer()
        if when is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, when - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._channel.handle_timer(self._clock())
        self._transmit()
        self._arm_timer()


async def _read_message(reader: asyncio.StreamReader, decoder: FrameDecoder) -> bytes:
    while (item := decoder.next_frame()) is None:
        data = await reader.read(_READ_SIZE)
        if not data:
            raise RemoteProtocolError(
                "stream ended during the handshake", code="e.p.msg.session.truncated"
            )
        decoder.feed(data)
    return item[4:]


async def _write_message(writer: asyncio.StreamWriter, pack: PackFn, msg: OutboundMessage) -> None:
    writer.write(push_length_prefixed(await pack(msg.plaintext, msg.to)))
    await writer.drain()


async def open_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handshake: Handshake,
    *,
    pack: PackFn,
    unpack: UnpackFn,
    clock: Callable[[], float] = time.time,
) -> Session:
    """Run the initiator's handshake on this stream and return the session (spec §4.4).

    Args:
        handshake: an INITIATOR :class:`Handshake` in SEND_REQUEST, offering ``stream``.
        pack: packs a plaintext for a DID (authcrypt in production).
        unpack: unpacks a packed message into (plaintext, authenticated sender DID).
        clock: the time source given to the cores (seconds).

    Raises:
        RemoteProtocolError: the responder refused (its problem code), did not answer within
            the handshake timeout (``e.p.msg.session.timeout``) or broke the protocol.
    """
    decoder = FrameDecoder(MAX_PACKED_MESSAGE, min_size=1)
    try:
        await _write_message(writer, pack, handshake.initiate(clock()))
        try:
            async with asyncio.timeout(handshake.config.timeout):
                packed = await _read_message(reader, decoder)
        except TimeoutError:
            deadline = handshake.get_timer()
            if deadline is not None:
                handshake.handle_timer(deadline)  # -> CLOSED, HandshakeTimedOut
            raise RemoteProtocolError(
                "no accept before the handshake timeout", code="e.p.msg.session.timeout"
            ) from None
        plaintext, sender = await unpack(packed)
        for event in handshake.receive_message(plaintext, sender, clock()):
            if isinstance(event, SessionRefused):
                raise RemoteProtocolError(f"session refused: {event.comment}", code=event.code)
        return Session(reader, writer, handshake.channel, decoder=decoder, clock=clock)
    except BaseException:
        writer.close()
        raise


async def accept_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handshake: Handshake,
    *,
    pack: PackFn,
    unpack: UnpackFn,
    clock: Callable[[], float] = time.time,
    timeout: float = 30.0,
) -> Session:
    """Run the responder's handshake on this stream and return the session (spec §4.4).

    The session is usable at once: the responder may send right after its ``accept``.

    Raises:
        RemoteProtocolError: the request was refused (a problem-report was sent first),
            did not arrive within ``timeout`` or broke the protocol.
    """
    decoder = FrameDecoder(MAX_PACKED_MESSAGE, min_size=1)
    try:
        try:
            async with asyncio.timeout(timeout):
                packed = await _read_message(reader, decoder)
        except TimeoutError:
            raise RemoteProtocolError(
                "no request before the handshake timeout", code="e.p.msg.session.timeout"
            ) from None
        plaintext, sender = await unpack(packed)
        try:
            handshake.receive_message(plaintext, sender, clock())
        finally:
            for msg in handshake.messages_to_send():
                await _write_message(writer, pack, msg)
        return Session(reader, writer, handshake.channel, decoder=decoder, clock=clock)
    except BaseException:
        writer.close()
        raise


async def read_attach_id(reader: asyncio.StreamReader) -> bytes:
    """Read the 16-byte attach id an initiator writes first on an attached stream (§4.5)."""
    try:
        return await reader.readexactly(16)
    except asyncio.IncompleteReadError:
        raise RemoteProtocolError(
            "stream ended before the attach id", code="e.p.msg.session.truncated"
        ) from None


async def attach_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    channel: Channel,
    *,
    clock: Callable[[], float] = time.time,
) -> Session:
    """Run an already established ``channel`` on this stream (spec §4.5).

    The initiator's side writes ``channel.attach_id`` first; the responder's side must have
    consumed it already (see :func:`read_attach_id`).  A channel is attached to one stream
    in its life: frames continue its counters.
    """
    if channel.role is Role.INITIATOR:
        writer.write(channel.attach_id)
    return Session(reader, writer, channel, clock=clock)
