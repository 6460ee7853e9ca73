"""One MPyC link carried by a session: an asyncio Protocol below, a Transport above.

Theory of operation
-------------------
MPyC's :class:`~mpyc.asyncoro.MessageExchanger` is an asyncio Protocol: it writes its
frames (``<qI`` program counter and length, then the payload) to a transport and parses
whatever bytes arrive.  :class:`SessionTransport` is that transport.  Underneath it is the
protocol of a byte path (a TCP connection, or a relay link, see :mod:`mpyc_adapter.paths`)
and it holds the sans-IO :class:`~didsession.session.Channel` that seals and opens frames.

Its life, in states (``LinkState``)::

    HANDSHAKE --establish()--> AGREEMENT --attach(app)--> OPEN --close()/CLOSE--> CLOSED
        \\___________________________\\______________________\\--error--> FAILED

* HANDSHAKE: the session handshake runs on the same bytes (spec/session.md §4.4): each
  packed DIDComm message is ``u32 length || packed``; items are read on demand, so bytes
  after the ``accept`` stay buffered for the frame layer.
* AGREEMENT: the channel is established.  Each side's first sealed payload is its program
  record (:mod:`mpyc_adapter.agreement`); MPyC payloads that arrive before the app is
  attached are held back.
* OPEN: MPyC's protocol is attached (``connection_made``).  On the accepting side the
  first two bytes MPyC receives (the peer's party id) are checked against the party id the
  authenticated DID has in the roster.

Coalescing (the reason ``--didcomm`` can beat plain TCP): MPyC writes many tiny frames,
and a socket write per frame costs a system call, a wake-up of the peer and a pass of its
event loop.  Here a write of fewer than ``eager_bytes`` bytes only appends to a list;
``_end_turn``, scheduled with ``call_soon`` by the first write of an event-loop turn, seals
them as **one** record: one AEAD operation and one socket write, and no timer (the record
leaves as soon as the callbacks already queued have run).  A write of at least
``eager_bytes`` goes out at once, with whatever is queued before it: a large message is
worth sending while this party computes on, and its own cost dwarfs a record's.  MPyC's
hello (``writelines``: its party id and PRSS keys) also goes at once: MPyC computes right
after it.  A turn that writes ``max_batch`` frames seals them at once, which bounds what
waits in memory.
Measured (bench/mpyc.py, 3 parties on 2 cores; AES has ~3.6 MPyC writes per turn and link):
sending the first write of each turn at once and batching the rest made a scalar-heavy run
~10% slower than batching all small writes, and holding back large writes made a NumPy run
~7% slower than sending them at once.  Records are at most ``record_limit`` bytes (64 KiB by
default, so that the peer decrypts one part of a large message while the next is on its
way) and the peer's ``max_payload``; longer writes are split, since MPyC parses a byte
stream and record boundaries do not matter to it.

Errors: any protocol error on the link (a tampered or replayed frame, a refused party id,
a peer closing with an error code, the connection breaking while open) is fatal for the
link and is handed to ``on_fatal``; the MPyC integration stops the party with a message.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from didsession._dataclass import dataclass
from didsession.errors import (
    DidSessionError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from didsession.relay_transport import can_write_eof
from didsession.session import (
    OVERHEAD,
    Channel,
    ChannelState,
    FrameDecoder,
    Handshake,
    Role,
    SessionClosed,
    SessionRefused,
    push_length_prefixed,
)
from didsession.session.stream import MAX_PACKED_MESSAGE, PackFn, UnpackFn

__all__ = [
    "DEFAULT_EAGER_BYTES",
    "DEFAULT_EARLY_LIMIT",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_RECORD_LIMIT",
    "SILENT",
    "LinkState",
    "LinkStats",
    "SessionTransport",
    "silent",
]

# How many MPyC writes one record carries at most, and its largest payload (see
# "Coalescing" above; 64 KiB also fits the mediator's relay frames with room to spare).
DEFAULT_MAX_BATCH = 1024
DEFAULT_EAGER_BYTES = 256
DEFAULT_RECORD_LIMIT = (64 << 10) - 256
# MPyC payloads held back until MPyC takes a link prepared ahead: a peer computes little
# before every party is connected, so an honest one stays far below this.
DEFAULT_EARLY_LIMIT = 64 << 20
# The close code of a link whose peer's machine stopped answering (didsession.tcp_liveness).
SILENT = "e.p.msg.session.timeout"
_U32 = struct.Struct(">I")
_U16LE = struct.Struct("<H")


class LinkState(Enum):
    """Where a link is; CLOSED and FAILED are terminal."""

    HANDSHAKE = "handshake"
    AGREEMENT = "agreement"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(slots=True)
class LinkStats:
    """Counters of one link, for logs and the demo (not used for control).

    ``messages`` counts MPyC's writes; ``records`` the sealed records they were coalesced
    into; ``payload`` the bytes MPyC wrote and ``wire`` what the records took on the path.
    The handshake, the agreement record and control frames are not counted.
    """

    messages: int = 0
    records: int = 0
    payload: int = 0
    wire: int = 0
    records_in: int = 0
    payload_in: int = 0

    @property
    def overhead_per_message(self) -> float:
        """Bytes the session added per MPyC message (the 28-byte frame overhead, shared)."""
        return (self.wire - self.payload) / self.messages if self.messages else 0.0

    @property
    def messages_per_record(self) -> float:
        return self.messages / self.records if self.records else 0.0


class SessionTransport(asyncio.Transport, asyncio.Protocol):
    """A session link: the protocol of a byte path and the transport MPyC writes to.

    Args:
        on_fatal: called with the link and the error when an OPEN link fails (see the
            module docstring); the link is already closed then.  Before the link is open,
            errors reach whoever drives it (the handshake and agreement coroutines).
        label: how logs and errors name the peer, e.g. ``"party 2 (bob)"``.
        record_limit: the largest record payload this path carries (further capped by the
            peer's ``max_payload`` once the session is established).
        max_batch: seal at once when this many writes are waiting, instead of at the end
            of the event-loop turn (see the module docstring).
        eager_bytes: a write at least this long is sealed at once, with the writes queued
            before it (0: every write is its own record, no coalescing).
        handshake_limit: the largest handshake item (a packed DIDComm message) accepted.
        early_limit: the most payload bytes held back between the agreement and MPyC
            taking the link; a peer sending more fails the link.
    """

    def __init__(
        self,
        *,
        on_fatal: Callable[[SessionTransport, DidSessionError], None],
        label: str = "peer",
        record_limit: int = DEFAULT_RECORD_LIMIT,
        max_batch: int = DEFAULT_MAX_BATCH,
        eager_bytes: int = DEFAULT_EAGER_BYTES,
        handshake_limit: int = MAX_PACKED_MESSAGE,
        early_limit: int = DEFAULT_EARLY_LIMIT,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__()
        self._loop = loop or asyncio.get_running_loop()
        self._call_soon = self._loop.call_soon
        self._on_fatal = on_fatal
        self.label = label
        self.state = LinkState.HANDSHAKE
        self.stats = LinkStats()
        self.path_info: dict[str, Any] = {}
        # Why the peer closed the session, if it gave a reason (e.g. it stopped).
        self.peer_error: RemoteProtocolError | None = None
        self._record_limit = record_limit
        self._lower: asyncio.BaseTransport | None = None
        self._lower_write: Callable[[bytes], None] = _not_connected
        self._lower_lost = False
        self._lower_error: BaseException | None = None
        self._decoder = FrameDecoder(handshake_limit, min_size=1)
        # What may wait unread during the handshake: one item, and what follows the accept
        # (the peer's program record, at most a record).
        self._handshake_buffer = handshake_limit + DEFAULT_RECORD_LIMIT + OVERHEAD
        self._waiter: asyncio.Future[None] | None = None
        self._channel: Channel | None = None
        self._seal: Callable[[bytes], bytes] = _not_established
        self._open: Callable[[bytes], bytes | None] = _not_established_open
        self._max_frame = 0
        self._timer: asyncio.TimerHandle | None = None
        self._agreement: asyncio.Future[bytes] = self._loop.create_future()
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._early_limit = early_limit
        self._deliver: Callable[[bytes], None] = self._deliver_agreement
        self._app: asyncio.Protocol | None = None
        self._app_lost = False
        self._expect_pid: int | None = None
        self._pid_bytes = b""
        self._out: list[bytes] = []
        self._batch = max_batch
        self._eager = eager_bytes
        self._turn = False  # an end-of-turn flush is scheduled
        self._closing = False
        self._heard_control = False  # an authenticated control frame came (see peer_proven)
        # The code close() sends: "" (a normal end, MPyC's shutdown), or why this party
        # drops the link while computing (set by the MPyC integration).
        self.close_code = ""

    # -- the byte path below (asyncio.Protocol) ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._lower = transport
        self._lower_write = transport.write  # type: ignore[attr-defined]
        if self._closing:  # closed before its path came up
            transport.close()
        self._wake()

    async def connected(self) -> None:
        """Wait until the path is up (an accepting side's link gets ``connection_made``
        one loop callback after the listener made it)."""
        while self._lower is None and not self._lower_lost:
            await self._wait()

    async def path_closed(self) -> None:
        """Wait until the path is gone (e.g. the peer closed its side after our CLOSE)."""
        while self._lower is not None and not self._lower_lost:
            await self._wait()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is LinkState.HANDSHAKE:
            self._decoder.feed(data)
            if self._decoder.buffered > self._handshake_buffer and self._lower is not None:
                # More than a handshake needs: drop the connection (the reader sees it lost).
                self._lower.abort()  # type: ignore[attr-defined]
            self._wake()
            return
        if state is LinkState.CLOSED or state is LinkState.FAILED or self._closing:
            return  # what still arrives after CLOSE or an error has nowhere to go
        try:
            decoder = self._decoder
            if not decoder.buffered:
                # Fast path: nothing is buffered and the read begins with whole frames
                # (usually it is one frame, or a few): open them where they are instead of
                # copying them through the decoder, which gets only a partial frame at the
                # end, or a length it must refuse.
                n = len(data)
                top = self._max_frame
                pos = 0
                while n - pos >= OVERHEAD:
                    size = _U32.unpack_from(data, pos)[0] + 4
                    if size > n - pos or size > top or size < OVERHEAD:
                        break
                    self._frame(data if size == n else data[pos : pos + size])
                    if self.state is LinkState.CLOSED or self.state is LinkState.FAILED:
                        return
                    pos += size
                if pos == n:
                    return
                if pos:
                    data = data[pos:]
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                self._frame(frame)
                if self.state is LinkState.CLOSED or self.state is LinkState.FAILED:
                    return
        except RemoteProtocolError as exc:
            self._fail(exc)
        except LocalProtocolError:
            pass  # the channel closed meanwhile (our CLOSE crossed the peer's data)

    def _frame(self, frame: bytes) -> None:
        payload = self._open(frame)
        if payload is not None:
            stats = self.stats
            stats.records_in += 1
            stats.payload_in += len(payload)
            self._deliver(payload)
        else:
            self._control()

    def eof_received(self) -> bool | None:
        return None  # let the path close; connection_lost decides what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self._lower_lost = True
        self._lower_error = exc
        self._cancel_timer()
        self._wake()
        if not self._agreement.done():
            self._agreement.set_exception(
                RemoteProtocolError(
                    f"{self.label} closed the connection before agreeing on the program",
                    code="e.p.msg.session.truncated",
                )
            )
            self._agreement.exception()  # retrieved: whoever awaits it sees it anyway
        if self.state is LinkState.OPEN:
            if self._closing:
                self.state = LinkState.CLOSED
                self._notify_app_lost()
            elif isinstance(exc, TimeoutError) or getattr(exc, "code", None) == SILENT:
                # the kernel's keepalive gave up, or the mediator found the peer gone
                self._fail(silent(self.label))
            else:
                why = f": {exc}" if exc else ""
                self._fail(
                    RemoteProtocolError(
                        f"the connection to {self.label} broke without a session CLOSE{why}",
                        code="e.p.msg.session.truncated",
                    )
                )
        elif self.state is not LinkState.FAILED:
            self.state = LinkState.CLOSED

    def pause_writing(self) -> None:  # MPyC has no flow control; neither do we
        pass

    def resume_writing(self) -> None:
        pass

    # -- the handshake (spec §4.4) ---------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until the next :meth:`_wake` (bytes, a connection made or lost)."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _read_item(self) -> bytes:
        while (item := self._decoder.next_frame()) is None:
            if self._lower_lost:
                raise RemoteProtocolError(
                    f"{self.label} closed the connection during the handshake",
                    code="e.p.msg.session.truncated",
                )
            await self._wait()
        return item[4:]

    def _write_item(self, packed: bytes) -> None:
        if self._lower_lost:
            raise RemoteProtocolError(
                f"{self.label} closed the connection during the handshake",
                code="e.p.msg.session.truncated",
            )
        self._lower_write(push_length_prefixed(packed))

    async def initiate(
        self, handshake: Handshake, pack: PackFn, unpack: UnpackFn, timeout: float = 30.0
    ) -> Channel:
        """Run the initiator's handshake on this link (spec §4.4) and establish it.

        Raises:
            RemoteProtocolError: refused (``SessionRefused``'s code), no answer in time
                (``e.p.msg.session.timeout``), or the peer broke the protocol.
        """
        msg = handshake.initiate(time.time())
        self._write_item(await pack(msg.plaintext, msg.to))
        try:
            async with asyncio.timeout(timeout):
                packed = await self._read_item()
        except TimeoutError:
            raise RemoteProtocolError(
                f"{self.label} did not answer the session request in time",
                code="e.p.msg.session.timeout",
            ) from None
        plaintext, sender = await unpack(packed)
        for event in handshake.receive_message(plaintext, sender, time.time()):
            if isinstance(event, SessionRefused):
                raise RemoteProtocolError(
                    f"{self.label} refused the session: {event.comment}", code=event.code
                )
        self.establish(handshake.channel)
        return handshake.channel

    async def respond(
        self, handshake: Handshake, pack: PackFn, unpack: UnpackFn, timeout: float = 30.0
    ) -> Channel:
        """Run the responder's handshake on this link (spec §4.4) and establish it.

        Raises:
            RemoteProtocolError: refused (a problem-report was sent first), no request in
                time, or the peer broke the protocol.
        """
        try:
            async with asyncio.timeout(timeout):
                packed = await self._read_item()
        except TimeoutError:
            raise RemoteProtocolError(
                "no session request in time", code="e.p.msg.session.timeout"
            ) from None
        plaintext, sender = await unpack(packed)
        try:
            handshake.receive_message(plaintext, sender, time.time())
        finally:
            for msg in handshake.messages_to_send():
                if not self._lower_lost:
                    self._write_item(await pack(msg.plaintext, msg.to))
        self.establish(handshake.channel)
        return handshake.channel

    def establish(self, channel: Channel) -> None:
        """Switch from handshake items to session frames (spec §4.4, §6.4)."""
        if self.state is not LinkState.HANDSHAKE:
            raise LocalProtocolError(f"cannot establish a link in state {self.state.name}")
        self._channel = channel
        self._seal = channel.seal
        self._open = channel.open
        own_max = (
            channel.params.initiator_max_payload
            if channel.role is Role.INITIATOR
            else channel.params.responder_max_payload
        )
        self._max_frame = own_max + OVERHEAD
        self._record_limit = min(self._record_limit, channel.max_payload)
        decoder = self._decoder
        decoder.max_size = own_max + OVERHEAD - 4
        decoder.min_size = OVERHEAD - 4
        self.state = LinkState.AGREEMENT
        self._arm_timer()
        try:
            while (frame := decoder.next_frame()) is not None:
                self._frame(frame)
        except RemoteProtocolError as exc:
            self._fail(exc)

    @property
    def lower(self) -> asyncio.BaseTransport | None:
        """The path under this link (a multipath transport takes it over, §15)."""
        return self._lower

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            raise LocalProtocolError("the link has no session yet")
        return self._channel

    @property
    def peer_did(self) -> str:
        return self.channel.peer_did

    @property
    def peer_proven(self) -> bool:
        """Whether the peer has sent a frame that authenticated under this session's keys.

        Until then, an accepting side knows only that a ``request`` came: a request recorded
        earlier and replayed makes keys nobody else can compute (spec/session.md §11.5),
        so a link that ends before this is true may have had nobody behind it.
        """
        return self.stats.records_in > 0 or self._heard_control

    # -- program agreement ------------------------------------------------------------------

    def send_now(self, payload: bytes) -> None:
        """Seal and write ``payload`` at once, not coalesced and not counted in
        :attr:`stats`: the agreement record."""
        self._flush()
        try:
            record = self._seal(payload)
        except LocalProtocolError as exc:
            self._fail(exc)
            return
        self._lower_write(record)

    async def peer_agreement(self, timeout: float = 30.0) -> bytes:
        """The peer's first payload (its program record)."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._agreement)
        except TimeoutError:
            raise RemoteProtocolError(
                f"{self.label} sent no program agreement in time", code="e.p.mpyc.agreement"
            ) from None

    def _deliver_agreement(self, payload: bytes) -> None:
        if not self._agreement.done():
            self._agreement.set_result(payload)
            return
        self._early_bytes += len(payload)
        if self._early_bytes > self._early_limit:
            self._early = []
            self._fail(
                RemoteProtocolError(
                    f"{self.label} sent more than {self._early_limit:,} bytes before this "
                    "party's MPyC took the link",
                    code="e.p.mpyc.limit",
                )
            )
            return
        self._early.append(payload)

    # -- MPyC's side (asyncio.Transport) ----------------------------------------------------

    def attach(self, app: asyncio.Protocol, *, expect_pid: int | None = None) -> None:
        """Hand the link to MPyC's protocol: ``connection_made``, then held-back data.

        Args:
            expect_pid: accepting side: the party id the peer's DID has in the roster; the
                first two bytes MPyC receives (the id the peer claims) must equal it.
        """
        if self.state is not LinkState.AGREEMENT:
            raise LocalProtocolError(f"cannot attach a link in state {self.state.name}")
        self._app = app
        self.state = LinkState.OPEN
        self._expect_pid = expect_pid
        self._deliver = self._deliver_checked if expect_pid is not None else app.data_received
        app.connection_made(self)
        early, self._early = self._early, []
        for payload in early:
            if self.state is not LinkState.OPEN:
                break
            self._deliver(payload)

    def _deliver_checked(self, payload: bytes) -> None:
        assert self._app is not None and self._expect_pid is not None
        head = self._pid_bytes + payload[: 2 - len(self._pid_bytes)]
        if len(head) < 2:
            self._pid_bytes = head
            return
        (claimed,) = _U16LE.unpack(head)
        if claimed != self._expect_pid:
            self._fail(
                RemoteProtocolError(
                    f"{self.label} claims to be party {claimed}, but its authenticated DID "
                    f"is party {self._expect_pid}'s in the roster; refused",
                    code="e.p.mpyc.party",
                )
            )
            return
        self._deliver = self._app.data_received
        self._app.data_received(self._pid_bytes + payload)
        self._pid_bytes = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        out = self._out
        out.append(data)  # type: ignore[arg-type]
        if len(data) >= self._eager or len(out) >= self._batch:
            self._flush()
        elif not self._turn:
            self._turn = True
            self._call_soon(self._end_turn)

    def writelines(self, list_of_data: Any) -> None:
        # Only MPyC's hello uses this (party id and PRSS keys, once per link), after which
        # MPyC computes, often for tens of ms before its loop turns.  Held to the end of
        # the turn, it made the listening party start that much later (AES benchmark: it
        # saw "all parties connected" 50-90 ms after the others).
        self._out.extend(list_of_data)
        self._flush()

    def _end_turn(self) -> None:
        self._turn = False
        if self._out:
            self._flush()

    def _flush(self) -> None:
        """Seal what MPyC wrote since the last record as one record."""
        out = self._out
        if not out:
            return
        data = b"".join(out)
        self.stats.messages += len(out)
        out.clear()
        self._write_record(data)

    def _write_record(self, data: bytes) -> None:
        if self.state is not LinkState.OPEN and self.state is not LinkState.AGREEMENT:
            return  # closed: what MPyC still writes has nowhere to go
        stats = self.stats
        stats.payload += len(data)
        limit = self._record_limit
        try:
            if len(data) <= limit:
                record = self._seal(data)
                stats.records += 1
                stats.wire += len(record)
                self._lower_write(record)
                return
            # One write per record: a relay path carries each write as one bounded message.
            for i in range(0, len(data), limit):
                record = self._seal(data[i : i + limit])
                stats.records += 1
                stats.wire += len(record)
                self._lower_write(record)
        except LocalProtocolError as exc:
            self._fail(exc)

    def close(self) -> None:
        """Flush, send CLOSE, close the path (spec §9).  MPyC hears ``connection_lost``
        when the path is closed."""
        if self._closing:
            return
        self._closing = True
        self._flush()
        channel = self._channel
        if channel is not None and channel.state is ChannelState.ESTABLISHED:
            channel.close(self.close_code)
            self._send_control(channel)
        self._cancel_timer()
        if self._lower is not None:
            self._lower.close()
        if self.state is LinkState.HANDSHAKE or self.state is LinkState.AGREEMENT:
            self.state = LinkState.CLOSED
        if self._lower_lost and self.state is LinkState.OPEN:
            self.state = LinkState.CLOSED
            self._notify_app_lost()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing or self.state in (LinkState.CLOSED, LinkState.FAILED)

    def get_write_buffer_size(self) -> int:
        lower = self._lower
        size = sum(map(len, self._out))
        buffered = getattr(lower, "get_write_buffer_size", None)  # uvloop: not registered
        if buffered is not None:
            size += buffered()
        return size

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self.path_info:
            return self.path_info[name]
        if name == "session" and self._channel is not None:
            return self._channel
        if self._lower is not None:
            return self._lower.get_extra_info(name, default)
        return default

    # -- internals ----------------------------------------------------------------------------

    def _control(self) -> None:
        channel = self._channel
        assert channel is not None
        self._heard_control = True
        for event in channel.events():
            if isinstance(event, SessionClosed) and event.by_peer:
                self._peer_closed(event.code)
                return
        self._send_control(channel)

    def _send_control(self, channel: Channel) -> None:
        frames = channel.data_to_send()
        if frames and not self._lower_lost:
            self._lower_write(b"".join(frames))

    def _peer_closed(self, code: str) -> None:
        self._cancel_timer()
        if self._lower is not None:
            self._lower.close()
        was_open = self.state is LinkState.OPEN
        if code:
            self.state = LinkState.FAILED
            exc = RemoteProtocolError(f"{self.label} closed the session: {code}", code=code)
            self.peer_error = exc
            if was_open:
                self._on_fatal(self, exc)
        else:
            self.state = LinkState.CLOSED
            exc = RemoteProtocolError(
                f"{self.label} closed the session before agreeing on the program",
                code="e.p.msg.session.truncated",
            )
            if was_open:
                self._notify_app_lost()
        if not self._agreement.done():
            self._agreement.set_exception(exc)
            self._agreement.exception()

    def _notify_app_lost(self) -> None:
        if self._app is not None and not self._app_lost:
            self._app_lost = True
            self._app.connection_lost(None)

    def _fail(self, exc: ProtocolError, *, linger: bool = False) -> None:
        """A fatal error on the link: CLOSE with its code, close the path, report it.

        ``linger``: do not close the path, only end its sending side where it can, and
        read on, so that the CLOSE reaches the peer (a TCP socket closed with unread data
        resets the connection, and the peer may lose the CLOSE with it); the peer
        closes, or this process exits."""
        if self.state is LinkState.FAILED:
            return
        was_open = self.state is LinkState.OPEN
        self.state = LinkState.FAILED
        self._closing = True
        channel = self._channel
        if channel is not None:
            channel.abort(exc)
            self._send_control(channel)
        self._cancel_timer()
        lower = self._lower
        if lower is not None:
            if not linger:
                lower.close()
            elif can_write_eof(lower):
                lower.write_eof()  # type: ignore[attr-defined]
            # else (a relay path): left open; the peer closes it once it read the CLOSE
            # (closed from here, the relay may tell the peer before the CLOSE arrives)
        if not self._agreement.done():
            self._agreement.set_exception(exc)
            self._agreement.exception()
        if was_open:
            self._on_fatal(self, exc)

    def fail(self, exc: ProtocolError, *, linger: bool = False) -> None:
        """Fail the link from outside (e.g. the program agreement failed)."""
        self._fail(exc, linger=linger)

    def _arm_timer(self) -> None:
        self._cancel_timer()
        channel = self._channel
        when = channel.get_timer() if channel is not None else None
        if when is not None:
            self._timer = self._loop.call_later(max(0.0, when - time.time()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        channel = self._channel
        if channel is None or channel.state is not ChannelState.ESTABLISHED:
            return
        self._flush()  # frames sealed under the old key go first
        channel.handle_timer(time.time())
        self._send_control(channel)
        self._arm_timer()


def silent(label: str) -> RemoteProtocolError:
    """The error of a link whose peer's machine stopped answering (spec/session.md §10)."""
    return RemoteProtocolError(f"{label} stopped answering", code=SILENT)


def _not_connected(data: bytes) -> None:
    raise LocalProtocolError("the link has no path yet")


def _not_established(data: bytes) -> bytes:
    raise LocalProtocolError("the link has no session yet")


def _not_established_open(data: bytes) -> bytes | None:
    raise LocalProtocolError("the link has no session yet")
