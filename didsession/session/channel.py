"""The session channel: sealed frames after the handshake (spec/session.md §6-§9).

Theory of operation
-------------------
A :class:`Channel` is created by the handshake (or by a test from known secrets) with one
traffic secret per direction.  It never does I/O and never reads a clock: bytes in, bytes
and events out, time passed in.

* ``seal(payload)`` returns one DATA frame.  On a STREAM path it may return more than one
  frame concatenated: control frames queued since the last call (key updates) always go
  out first, so frames leave in counter order.
* ``open(frame)`` is the hot path for input: it returns the payload of a DATA frame, or
  ``None`` after consuming a CONTROL frame (its effects are queued as events and frames).
  ``receive(frame)`` is the same, returning events instead.
* ``data_to_send()`` drains frames the channel produced on its own (KEY_UPDATE, CLOSE);
  call it after ``receive``/``open``/``handle_timer``/``rekey``/``close``.
* ``get_timer()`` / ``handle_timer(now)`` drive the time-based key update (§8.1) and the
  expiry of the previous receive key on datagram paths (§8.4).

The hot path compares one 64-bit word.  Every frame header holds
``word = flags << 56 | counter``.  The receiver keeps ``_rx_w``, the word the next
in-order DATA frame of the current epoch must carry; one comparison checks type, epoch,
reserved bits and counter at once, and everything else takes the slow path.  The sender
keeps ``_tx_gate``: the first word that needs the slow path (message limit reached, frames
waiting in the outbox on a stream, channel no longer established; ``-1`` forces it); the
byte budget and the peer's payload limit are two more comparisons.

States (``ChannelState``) and the transition table ``_TRANSITIONS``::

    ESTABLISHED --close()-------------> CLOSED   (we sent CLOSE)
    ESTABLISHED --CLOSE frame---------> CLOSED   (peer sent CLOSE)
    ESTABLISHED --protocol error------> ERROR    (CLOSE with the error code queued)

A tampered, replayed or foreign frame is fatal on a STREAM path (the peer or the network
broke the stream, as in TLS) but only drops that datagram on a DATAGRAM path (anyone can
spoof a datagram; spec §6.5): the error is raised and the channel stays ESTABLISHED.

Several paths (spec §15.5): the multipath layer below the channel merges its paths by the
frames' counters, so it must know a frame is the peer's before the frame counts, or a
party on one path could displace a genuine frame with a forged one and fail the session.
``authenticator()`` gives it that check: it decrypts each frame once, never raises and
never touches the channel's state, and keeps the plaintext (``_authentic``, by header
word) for the ``open`` of the same bytes, which the layer above makes later and which then
only checks order.  So nothing is decrypted twice, and a frame that fails the check costs
only the path it came on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from didsession.errors import (
    DecryptError,
    FrameError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ReplayError,
)
from didsession.session.events import (
    Direction,
    Event,
    KeyUpdated,
    MessageReceived,
    SessionClosed,
)
from didsession.session.frame import (
    COUNTER_MASK,
    HEADER,
    HEADER_SIZE,
    MAX_COUNTER,
    OVERHEAD,
    Close,
    Control,
    FrameType,
    KeyUpdate,
    pull_control,
    pull_header,
    push_control,
    word,
)
from didsession.session.keyschedule import (
    PathKind,
    Resumption,
    Role,
    SessionParameters,
    SessionSecrets,
    Suite,
    make_aead,
    next_traffic_secret,
    traffic_key,
)

__all__ = ["MAX_EPOCH_SKIP", "REPLAY_WINDOW", "Channel", "ChannelState"]

# Replay window of datagram paths in frames (spec §6.5), a power of two.
REPLAY_WINDOW = 2048
# How many epochs ahead a datagram receiver looks for a key (spec §8.3).
MAX_EPOCH_SKIP = 8
# Default grace period of the previous receive key on datagram paths (spec §8.4).
DEFAULT_GRACE = 5.0

_AEAD = AESGCM | ChaCha20Poly1305
_pack = HEADER.pack
_unpack_from = HEADER.unpack_from
_WINDOW_MASK = REPLAY_WINDOW - 1
assert _WINDOW_MASK == 2047  # the hot path spells it as a literal
_LEN_ADD = OVERHEAD - 4  # L = flags+counter (8) + ciphertext + tag (16)
_CONTROL = FrameType.CONTROL
_DATA = FrameType.DATA


class ChannelState(Enum):
    """Where a channel is; both non-ESTABLISHED states are terminal."""

    ESTABLISHED = "established"
    CLOSED = "closed"
    ERROR = "error"


class _Input(Enum):
    SEAL = "seal"
    FRAME = "frame"
    TIMER = "timer"
    CLOSE = "close"
    PEER_CLOSE = "peer close"
    ERROR = "error"


_S = ChannelState
_ESTABLISHED = ChannelState.ESTABLISHED
_TRANSITIONS: dict[tuple[ChannelState, _Input], ChannelState] = {
    (_S.ESTABLISHED, _Input.SEAL): _S.ESTABLISHED,
    (_S.ESTABLISHED, _Input.FRAME): _S.ESTABLISHED,
    (_S.ESTABLISHED, _Input.TIMER): _S.ESTABLISHED,
    (_S.ESTABLISHED, _Input.CLOSE): _S.CLOSED,
    (_S.ESTABLISHED, _Input.PEER_CLOSE): _S.CLOSED,
    (_S.ESTABLISHED, _Input.ERROR): _S.ERROR,
    (_S.CLOSED, _Input.TIMER): _S.CLOSED,
    (_S.CLOSED, _Input.CLOSE): _S.CLOSED,
    (_S.ERROR, _Input.TIMER): _S.ERROR,
    (_S.ERROR, _Input.CLOSE): _S.ERROR,
}


class Channel:
    """One established session: seals and opens frames (spec §6-§9).

    Normally created by :class:`~didsession.session.handshake.Handshake`; construct it
    directly only from secrets the key schedule produced.

    Args:
        role: our handshake role; selects the traffic secret of each direction.
        params: the negotiated parameters.
        secrets: the key schedule's output.
        local_did: our DID.  peer_did: the peer's DID.
        now: current time in seconds (the same clock later given to ``handle_timer``).
        grace: how long a datagram receiver keeps the previous epoch's key (spec §8.4).
    """

    __slots__ = (
        "_authentic",
        "_checked",
        "_events",
        "_grace",
        "_ids",
        "_lim_bytes",
        "_lim_messages",
        "_lim_seconds",
        "_now",
        "_outbox",
        "_params",
        "_resumption_secret",
        "_role",
        "_rx_aead",
        "_rx_decrypt",
        "_rx_epoch",
        "_rx_future",
        "_rx_max",
        "_rx_prev_aead",
        "_rx_prev_expiry",
        "_rx_secret",
        "_rx_tag",
        "_rx_w",
        "_seen",
        "_state",
        "_stream",
        "_suite",
        "_tx_aead",
        "_tx_deadline",
        "_tx_encrypt",
        "_tx_epoch",
        "_tx_epoch_start",
        "_tx_gate",
        "_tx_left",
        "_tx_max",
        "_tx_secret",
        "_tx_tag",
        "_tx_w",
        "local_did",
        "peer_did",
    )

    def __init__(
        self,
        *,
        role: Role,
        params: SessionParameters,
        secrets: SessionSecrets,
        local_did: str,
        peer_did: str,
        now: float,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self._role = role
        self._params = params
        # Keep the identifiers and the resumption secret, not the epoch-0 traffic secrets:
        # holding those would undo the ratchet's forward secrecy (spec §8.5).
        self._ids = (secrets.session_id, secrets.transcript_hash, secrets.attach_id)
        self._resumption_secret = secrets.resumption_secret
        self._suite = params.suite
        self._stream = params.path is PathKind.STREAM
        self.local_did = local_did
        self.peer_did = peer_did
        self._state = ChannelState.ESTABLISHED
        self._now = now
        self._grace = grace
        self._lim_messages = params.limits.messages
        self._lim_bytes = params.limits.bytes
        self._lim_seconds = params.limits.seconds
        self._outbox: list[bytes] = []
        self._events: list[Event] = []
        initiator = role is Role.INITIATOR
        # Frames carry the receiver's tag (spec §6.2); I->R frames carry tag_i2r.
        tx_secret, rx_secret = (
            (secrets.i2r_secret, secrets.r2i_secret)
            if initiator
            else (secrets.r2i_secret, secrets.i2r_secret)
        )
        tx_tag, rx_tag = (
            (secrets.i2r_tag, secrets.r2i_tag) if initiator else (secrets.r2i_tag, secrets.i2r_tag)
        )
        self._tx_max, self._rx_max = (
            (params.responder_max_payload, params.initiator_max_payload)
            if initiator
            else (params.initiator_max_payload, params.responder_max_payload)
        )
        self._tx_secret = tx_secret
        self._tx_aead: _AEAD = make_aead(self._suite, traffic_key(tx_secret))
        self._tx_encrypt = self._tx_aead.encrypt
        self._tx_epoch = 0
        self._tx_epoch_start = 0
        self._tx_w = word(_DATA, 0, 0)
        self._tx_left = self._lim_bytes
        self._tx_tag = int.from_bytes(tx_tag, "big")
        self._tx_deadline = now + self._lim_seconds
        self._tx_gate = 0
        self._rx_secret = rx_secret
        self._rx_aead: _AEAD = make_aead(self._suite, traffic_key(rx_secret))
        self._rx_decrypt = self._rx_aead.decrypt
        self._rx_epoch = 0
        self._rx_w = word(_DATA, 0, 0)
        self._rx_tag = int.from_bytes(rx_tag, "big")
        self._rx_prev_aead: _AEAD | None = None
        self._rx_prev_expiry = 0.0
        self._rx_future: list[tuple[bytes, _AEAD]] = []
        # Replay window (spec §6.5): slot c mod W holds the header word of the newest frame
        # accepted with a counter = c mod W; -1 masks to a counter no frame can carry.
        self._seen: list[int] = [-1] * REPLAY_WINDOW
        # Plaintexts of frames an authenticator() passed, by header word: (frame, plaintext).
        self._authentic: dict[int, tuple[bytes, bytes]] = {}
        self._checked = False  # whether authenticator() gave its check (there is one)
        self._recompute_gate()

    # -- properties ------------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        """The current :class:`ChannelState`."""
        return self._state

    @property
    def role(self) -> Role:
        """Our role in the handshake that created this channel."""
        return self._role

    @property
    def params(self) -> SessionParameters:
        """The negotiated parameters (spec §4.2)."""
        return self._params

    @property
    def suite(self) -> Suite:
        """The negotiated cipher suite."""
        return self._suite

    @property
    def path(self) -> PathKind:
        """STREAM or DATAGRAM (spec §6.1)."""
        return self._params.path

    @property
    def session_id(self) -> bytes:
        """The 16-byte session id (spec §5.4)."""
        return self._ids[0]

    @property
    def transcript_hash(self) -> bytes:
        """The handshake transcript hash (spec §5.3)."""
        return self._ids[1]

    @property
    def attach_id(self) -> bytes:
        """16 bytes the initiator writes first when attaching to a new stream (spec §4.5)."""
        return self._ids[2]

    @property
    def send_epoch(self) -> int:
        """Key epoch of our sending direction."""
        return self._tx_epoch

    @property
    def receive_epoch(self) -> int:
        """Key epoch of our receiving direction."""
        return self._rx_epoch

    @property
    def frames_sent(self) -> int:
        """Frames sealed so far (the next send counter)."""
        return self._tx_w & COUNTER_MASK

    @property
    def frames_received(self) -> int:
        """Stream paths: frames opened so far (the next expected counter)."""
        return self._rx_w & COUNTER_MASK

    @property
    def max_payload(self) -> int:
        """Largest payload :meth:`seal` accepts (the peer's announced limit)."""
        return self._tx_max

    def resumption(self) -> Resumption:
        """What a ``rekey`` handshake needs to replace this session (spec §3.4)."""
        return Resumption(self.session_id, self.peer_did, self._resumption_secret)

    # -- hot path --------------------------------------------------------------------

    def seal(self, payload: bytes) -> bytes:
        """Encrypt ``payload`` into a DATA frame (spec §6.3).

        Returns:
            The frame; on a STREAM path possibly preceded by queued control frames.

        Raises:
            LocalProtocolError: the channel is not ESTABLISHED, or the payload exceeds
                :attr:`max_payload`.
        """
        w = self._tx_w
        n = len(payload)
        left = self._tx_left - n
        if w >= self._tx_gate or left < 0 or n > self._tx_max:
            return self._seal_slow(payload)
        self._tx_w = w + 1
        self._tx_left = left
        # Literals, not constants, on the hot path: 24 = L - len(payload), 12 = header size.
        header = _pack(n + 24 if self._stream else self._tx_tag, w)
        return header + self._tx_encrypt(header, payload, None)

    def open(self, frame: bytes) -> bytes | None:
        """Authenticate and decrypt one frame (spec §6.4, §6.5).

        Args:
            frame: a whole frame: on STREAM paths as returned by
                :class:`~didsession.session.frame.FrameDecoder`; on DATAGRAM paths one
                datagram.

        A frame that an :meth:`authenticator` passed is not decrypted again: its plaintext
        was kept (for exactly these bytes).

        Returns:
            The payload of a DATA frame, or ``None`` if a CONTROL frame was consumed (its
            events are available from :meth:`events`, its replies from :meth:`data_to_send`).

        Raises:
            DecryptError: authentication failed or no key for the frame's epoch.
            ReplayError: an authentic frame that was already received or is too old.
            FrameError: malformed frame, or (datagram) not for this session.
            RemoteProtocolError: any other violation by the peer.
            LocalProtocolError: the channel is closed.
        """
        try:
            first, w = _unpack_from(frame)
        except struct.error:
            return self._open_slow(frame)
        if w == self._rx_w:
            if self._stream:
                if first == len(frame) - 4:
                    authentic = self._authentic
                    if authentic and (entry := authentic.pop(w, None)) and entry[0] == frame:
                        payload = entry[1]  # the multipath layer's check decrypted it
                    else:
                        try:
                            payload = self._rx_decrypt(frame[:12], frame[12:], None)
                        except InvalidTag:
                            raise self._fail(DecryptError("frame failed authentication")) from None
                    self._rx_w = w + 1
                    return payload
            elif first == self._rx_tag:
                try:
                    payload = self._rx_decrypt(frame[:12], frame[12:], None)
                except InvalidTag:
                    raise DecryptError("datagram failed authentication") from None
                self._rx_w = w + 1
                self._seen[w & 2047] = w  # 2047 == _WINDOW_MASK; the slot keeps the word
                return payload
        return self._open_slow(frame)

    # -- general API -----------------------------------------------------------------

    def receive(self, frame: bytes, now: float | None = None) -> list[Event]:
        """Like :meth:`open`, returning events: :class:`MessageReceived`, :class:`KeyUpdated`,
        :class:`SessionClosed`.  Raises what :meth:`open` raises.

        Args:
            now: the current time, if known (refreshes the channel's clock, spec §8.4).
        """
        if now is not None and now > self._now:
            self._now = now
        payload = self.open(frame)
        events = self.events()
        if payload is not None:
            events.append(MessageReceived(payload))
        return events

    def authenticator(self) -> Callable[[bytes], bool | None]:
        """A check that a stream frame is the peer's, for a layer below the channel that
        merges several paths by counter and must not let a forged frame count (spec §15.5).

        The check takes one whole frame (``u32 L`` included) whose counter is the next one
        it has not passed yet, or a later one; it returns whether the frame authenticates
        under the key of its epoch (the current one or up to ``MAX_EPOCH_SKIP`` later).  A
        frame ahead of its turn whose 4 epoch bits name an epoch further ahead than that (but
        no further than one key update a frame can reach) gets ``None``: it may be genuine,
        after more key updates than the check can look ahead; ask again in its turn, where
        the answer is True or False.  (Epochs are known mod 16: a genuine frame 16 or more
        epochs ahead whose bits name one in reach fails, as before a gap that long.)  The check
        never raises and never changes the channel's state: a frame that fails costs only
        the path it came on.  The frames it passes must reach :meth:`open` unchanged and in
        counter order; ``open`` then does not decrypt them again.  A frame passed ahead of
        its turn is passed again when its turn comes (without a second decryption), so
        that the check follows the peer's key updates.

        Returns:
            The check, starting at the next frame this channel expects
            (:attr:`frames_received`).

        Raises:
            LocalProtocolError: a datagram channel (each datagram is checked on its own),
                or a second call (two checks would each keep their own frontier, and
                the plaintexts the channel keeps are for one).
        """
        if not self._stream:
            raise LocalProtocolError("only a stream channel runs over several paths")
        if self._checked:
            raise LocalProtocolError("this channel gave its authenticator already")
        self._checked = True
        return _Authenticator(self).check

    def events(self) -> list[Event]:
        """Drain the events queued by :meth:`open`, :meth:`seal` and the timers."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """Drain the frames the channel produced itself (KEY_UPDATE, CLOSE), in order."""
        frames, self._outbox = self._outbox, []
        self._recompute_gate()
        return frames

    def rekey(self, *, request_peer: bool = False) -> None:
        """Update our sending key now (spec §8.2); queue the KEY_UPDATE frame.

        Args:
            request_peer: ask the peer to update its sending key too.

        Raises:
            LocalProtocolError: the channel is not ESTABLISHED.
        """
        self._require(_Input.SEAL)
        self._update_send_key(request_peer)
        self._recompute_gate()

    def close(self, code: str = "") -> None:
        """Queue a CLOSE frame and move to CLOSED (spec §9).  No-op if already closed.

        Args:
            code: ``""`` for a normal close, or a problem code (spec §10).
        """
        if self._state is not ChannelState.ESTABLISHED:
            self._transition(_Input.CLOSE)
            return
        body = push_control(Close(code))
        self._outbox.append(self._seal_frame(_CONTROL, body))
        self._transition(_Input.CLOSE)
        self._events.append(SessionClosed(code, by_peer=False))

    def abort(self, error: ProtocolError) -> None:
        """Fail because of an error found outside the channel, e.g. by the stream decoder or
        a truncated stream: move to ERROR and queue a CLOSE carrying ``error.code`` (§9).
        No-op if the channel is no longer ESTABLISHED."""
        self._fail(error)

    def peer_closed(self, code: str) -> list[Event]:
        """The peer closed the session out of band (a DIDComm ``close``, spec §3.6).

        Returns:
            The queued events, ending with :class:`SessionClosed`; ``[]`` if already closed.
        """
        if self._state is not ChannelState.ESTABLISHED:
            return []
        self._transition(_Input.PEER_CLOSE)
        self._events.append(SessionClosed(code, by_peer=True))
        return self.events()

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or ``None``."""
        if self._state is not ChannelState.ESTABLISHED:
            return None
        t = self._tx_deadline
        if self._rx_prev_aead is not None and self._rx_prev_expiry < t:
            t = self._rx_prev_expiry
        return t

    def handle_timer(self, now: float) -> list[Event]:
        """Run what is due at ``now``: the time-based key update (§8.1, frame queued for
        :meth:`data_to_send`) and the expiry of the previous receive key (§8.4).

        Returns:
            The queued events (see :meth:`events`).
        """
        if now > self._now:
            self._now = now
        self._transition(_Input.TIMER)
        if self._state is ChannelState.ESTABLISHED:
            if now >= self._tx_deadline:
                self._update_send_key(False)
                self._recompute_gate()
            if self._rx_prev_aead is not None and now >= self._rx_prev_expiry:
                self._rx_prev_aead = None
        return self.events()

    # -- internals -------------------------------------------------------------------

    def _transition(self, event: _Input) -> None:
        try:
            self._state = _TRANSITIONS[self._state, event]
        except KeyError:
            raise LocalProtocolError(f"cannot {event.value} in state {self._state.name}") from None
        if self._state is not ChannelState.ESTABLISHED:
            self._tx_gate = -1
            self._rx_w = -1
            self._authentic.clear()  # nothing is opened any more

    def _require(self, event: _Input) -> None:
        if (self._state, event) not in _TRANSITIONS:
            raise LocalProtocolError(f"cannot {event.value}: channel is {self._state.name}")

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        """Move to ERROR, queue a CLOSE carrying the error code (spec §9), return ``exc``."""
        if self._state is ChannelState.ESTABLISHED:
            try:
                body = push_control(Close(exc.code))
            except LocalProtocolError:
                body = push_control(Close("e.p.msg.protocol"))
            if (self._tx_w & COUNTER_MASK) <= MAX_COUNTER:
                self._outbox.append(self._seal_frame(_CONTROL, body))
            self._transition(_Input.ERROR)
        return exc

    def _recompute_gate(self) -> None:
        if self._state is not ChannelState.ESTABLISHED or (self._stream and self._outbox):
            self._tx_gate = -1
        else:
            limit = min(self._tx_epoch_start + self._lim_messages - 1, MAX_COUNTER)
            self._tx_gate = word(_DATA, self._tx_epoch, limit)

    def _seal_frame(self, kind: FrameType, plaintext: bytes) -> bytes:
        counter = self._tx_w & COUNTER_MASK
        header = _pack(
            len(plaintext) + _LEN_ADD if self._stream else self._tx_tag,
            word(kind, self._tx_epoch, counter),
        )
        self._tx_w = word(_DATA, self._tx_epoch, counter + 1)
        return header + self._tx_aead.encrypt(header, plaintext, None)

    def _seal_slow(self, payload: bytes) -> bytes:
        self._require(_Input.SEAL)
        n = len(payload)
        if n > self._tx_max:
            raise self._fail(
                LocalProtocolError(f"payload of {n} bytes exceeds the peer's {self._tx_max}")
            )
        counter = self._tx_w & COUNTER_MASK
        if counter >= MAX_COUNTER:
            raise self._fail(LocalProtocolError("frame counter exhausted; start a new session"))
        if counter - self._tx_epoch_start >= self._lim_messages - 1 or self._tx_left < n:
            self._update_send_key(False)
        self._tx_left -= n
        frame = self._seal_frame(_DATA, payload)
        if self._stream and self._outbox:
            frame = b"".join(self._outbox) + frame
            self._outbox.clear()
        self._recompute_gate()
        return frame

    def _update_send_key(self, request_update: bool) -> None:
        """The KEY_UPDATE ratchet of spec §8.2 for our sending direction."""
        body = push_control(KeyUpdate(request_update))
        self._outbox.append(self._seal_frame(_CONTROL, body))
        self._tx_epoch += 1
        self._tx_secret = next_traffic_secret(self._tx_secret)
        self._tx_aead = make_aead(self._suite, traffic_key(self._tx_secret))
        self._tx_encrypt = self._tx_aead.encrypt
        counter = self._tx_w & COUNTER_MASK
        self._tx_w = word(_DATA, self._tx_epoch, counter)
        self._tx_epoch_start = counter
        self._tx_left = self._lim_bytes
        self._tx_deadline = self._now + self._lim_seconds
        self._events.append(KeyUpdated(Direction.SEND, self._tx_epoch))

    def _open_slow(self, frame: bytes) -> bytes | None:
        if self._state is not ChannelState.ESTABLISHED:
            raise LocalProtocolError(f"cannot receive: channel is {self._state.name}")
        try:
            if self._stream:
                return self._open_stream(frame)
            return self._open_datagram(frame)
        except RemoteProtocolError as exc:
            # Spec §6.5: on datagram paths an unauthenticated failure only drops the datagram.
            if self._stream or not isinstance(exc, DecryptError | ReplayError | FrameError):
                self._fail(exc)
            raise

    def _open_stream(self, frame: bytes) -> bytes | None:
        """Spec §6.4: structure, then authentication, then strict order."""
        header = pull_header(frame)
        if header.first != len(frame) - 4 or len(frame) < OVERHEAD:
            raise FrameError("frame length does not match its length field")
        if header.epoch_bits != self._rx_epoch & 0x0F:
            raise DecryptError(f"no key for epoch {header.epoch_bits} (mod 16)")
        entry = self._authentic.pop(_unpack_from(frame)[1], None) if self._authentic else None
        if entry is not None and entry[0] == frame:
            payload = entry[1]  # the multipath layer's check decrypted it
        else:
            payload = _decrypt(self._rx_aead, frame)
        expected = self._rx_w & COUNTER_MASK
        if header.counter < expected:
            raise ReplayError(f"frame {header.counter} replayed (expected {expected})")
        if header.counter > expected:
            raise RemoteProtocolError(
                f"frame {header.counter} out of order (expected {expected})",
                code="e.p.msg.session.order",
            )
        self._rx_w = word(_DATA, self._rx_epoch, expected + 1)
        if header.kind is _DATA:
            return payload
        self._handle_control(pull_control(payload))
        return None

    def _open_datagram(self, frame: bytes) -> bytes | None:
        """Spec §6.5: structure, key by epoch, authentication, then the replay window."""
        if len(frame) < OVERHEAD:
            raise FrameError("datagram shorter than a frame")
        header = pull_header(frame)
        if header.first != self._rx_tag:
            raise FrameError("datagram is not for this session")
        skip = (header.epoch_bits - self._rx_epoch) & 0x0F
        if skip == 0:
            aead = self._rx_aead
        elif skip == 15:
            if self._rx_prev_aead is None:
                raise DecryptError("no key for the previous epoch (grace period over)")
            aead = self._rx_prev_aead
        elif skip <= MAX_EPOCH_SKIP:
            aead = self._future_aead(skip)
        else:
            raise DecryptError(f"no key for epoch {header.epoch_bits} (mod 16)")
        payload = _decrypt(aead, frame)
        counter = header.counter
        top = (self._rx_w & COUNTER_MASK) - 1
        if counter <= top:
            if top - counter >= REPLAY_WINDOW:
                raise ReplayError(f"frame {counter} is older than the replay window")
            if self._seen[counter & _WINDOW_MASK] & COUNTER_MASK == counter:
                raise ReplayError(f"frame {counter} replayed")
        self._seen[counter & _WINDOW_MASK] = word(header.kind, header.epoch_bits, counter)
        if 0 < skip < 15:
            self._advance_receive(skip, keep_previous=True)
        self._rx_w = word(_DATA, self._rx_epoch, max(top, counter) + 1)
        if header.kind is _DATA:
            return payload
        self._handle_control(pull_control(payload))
        return None

    def _future_aead(self, skip: int) -> _AEAD:
        future = self._rx_future
        secret = future[-1][0] if future else self._rx_secret
        while len(future) < skip:
            secret = next_traffic_secret(secret)
            future.append((secret, make_aead(self._suite, traffic_key(secret))))
        return future[skip - 1][1]

    def _advance_receive(self, skip: int, *, keep_previous: bool) -> None:
        self._future_aead(skip)
        previous = self._rx_future[skip - 2][1] if skip > 1 else self._rx_aead
        self._rx_secret, self._rx_aead = self._rx_future[skip - 1]
        self._rx_decrypt = self._rx_aead.decrypt
        del self._rx_future[:skip]
        self._rx_epoch += skip
        if keep_previous:
            self._rx_prev_aead = previous
            self._rx_prev_expiry = self._now + self._grace
        self._events.append(KeyUpdated(Direction.RECEIVE, self._rx_epoch))

    def _handle_control(self, control: Control) -> None:
        if isinstance(control, KeyUpdate):
            if self._stream:
                # The last frame of the old epoch (spec §8.3); the old key is useless now.
                self._advance_receive(1, keep_previous=False)
                self._rx_w = word(_DATA, self._rx_epoch, self._rx_w & COUNTER_MASK)
            if control.request_update:
                self._update_send_key(False)
                self._recompute_gate()
            return
        self._transition(_Input.PEER_CLOSE)
        self._events.append(SessionClosed(control.code, by_peer=True))


class _Authenticator:
    """:meth:`Channel.authenticator`'s check.  It keeps its own receive frontier (the next
    counter, and the epoch of the last frame it passed in order, with its key), ahead of
    the channel's, which moves only when the layer above opens the frames; and the keys of
    up to ``MAX_EPOCH_SKIP`` later epochs, derived once (as on datagram paths, spec §8.3),
    for the frame after a KEY_UPDATE and for frames ahead of their turn.  Whether a frame
    it passes keeps the rules of §8.3 (its epoch, its order) is for ``open`` to decide: a
    frame that authenticates is the peer's, and what the peer breaks is fatal."""

    __slots__ = ("_ahead", "_authentic", "_channel", "_decrypt", "_epoch", "_keys", "_w")

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._authentic = channel._authentic
        self._epoch = channel._rx_epoch
        # _keys[i]: (secret, AEAD) of epoch _epoch + i.
        self._keys: list[tuple[bytes, _AEAD]] = [(channel._rx_secret, channel._rx_aead)]
        self._decrypt = channel._rx_aead.decrypt
        # The word the next in-order DATA frame carries (the channel's _rx_w, but ours).
        self._w = word(_DATA, self._epoch, channel._rx_w & COUNTER_MASK)
        # Frames passed ahead of their turn: counter -> (frame, plaintext, absolute epoch).
        self._ahead: dict[int, tuple[bytes, bytes, int]] = {}

    def check(self, frame: bytes) -> bool | None:
        """See :meth:`Channel.authenticator`."""
        try:
            first, w = _unpack_from(frame)
        except struct.error:
            return False
        # Hot path: the next DATA frame of the current epoch, nothing passed ahead.  (A
        # length field that does not match fails as any other change would: it is in the
        # nonce, spec §6.2.)
        if w == self._w and not self._ahead:
            try:
                payload = self._decrypt(frame[:12], frame[12:], None)
            except InvalidTag:
                return False
            self._w = w + 1
            if self._channel._state is _ESTABLISHED:
                self._authentic[w] = (frame, payload)
            return True
        return self._check_slow(frame, first, w)

    def _check_slow(self, frame: bytes, first: int, w: int) -> bool | None:
        flags = w >> 56
        if first != len(frame) - 4 or len(frame) < OVERHEAD or flags & 0xE0:
            return False  # the peer never sends that (reserved flag bits, spec §6.2)
        counter = w & COUNTER_MASK
        nxt = self._w & COUNTER_MASK
        if counter < nxt:
            return False  # passed already: a duplicate is the multipath layer's to drop
        ahead = self._ahead.pop(counter, None) if counter == nxt else None
        if ahead is not None and ahead[0] == frame:
            plaintext, epoch = ahead[1], ahead[2]
        else:
            skip = ((flags & 0x0F) - self._epoch) & 0x0F
            if skip > MAX_EPOCH_SKIP:
                # No key derived that far: an older epoch, or impossibly far ahead (the peer
                # updates its key at most once a frame: a KEY_UPDATE is a frame), or, ahead
                # of its turn, a genuine frame after more updates than we can look ahead.
                return None if nxt + skip <= counter + 1 else False
            try:
                plaintext = self._key(skip).decrypt(frame[:12], frame[12:], None)
            except InvalidTag:
                return False
            epoch = self._epoch + skip
            if counter > nxt:
                self._ahead[counter] = (frame, plaintext, epoch)
                return True
        # Its turn: the frontier moves past it, and into its epoch (the frame after a
        # KEY_UPDATE comes here once, with the next epoch's bits).
        if epoch > self._epoch:
            self._key(epoch - self._epoch)
            del self._keys[: epoch - self._epoch]
            self._epoch = epoch
            self._decrypt = self._keys[0][1].decrypt
        self._w = word(_DATA, self._epoch, counter + 1)
        if self._channel._state is _ESTABLISHED:
            self._authentic[w] = (frame, plaintext)
        return True

    def _key(self, skip: int) -> _AEAD:
        keys = self._keys
        while len(keys) <= skip:
            secret = next_traffic_secret(keys[-1][0])
            keys.append((secret, make_aead(self._channel._suite, traffic_key(secret))))
        return keys[skip][1]


def _decrypt(aead: _AEAD, frame: bytes) -> bytes:
    try:
        return aead.decrypt(frame[:HEADER_SIZE], frame[HEADER_SIZE:], None)
    except InvalidTag:
        raise DecryptError("frame failed authentication") from None
