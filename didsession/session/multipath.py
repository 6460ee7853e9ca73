"""One session over several byte paths: path checks, upgrade, fallback (spec/session.md §15).

Theory of operation
-------------------
A session's frames carry one counter per direction (spec §6.2), continuous across key
epochs.  That counter is all a receiver needs to merge several paths into one ordered
stream, so :class:`Multipath` sits *below* the :class:`~didsession.session.Channel`: it
moves the channel's sealed stream frames over whichever path is best and hands the
receiving channel its peer's frames in counter order, each exactly once.  It holds no
keys: the channel's :meth:`~didsession.session.Channel.authenticator` is injected to tell
it whether a frame is the peer's before the frame counts.

* **Paths** (``PathKind``): the mediator's relay, where a session starts at once, and
  direct TCP connections found from the candidates of the handshake.  A direct path is
  CHECKING until a path check (§15.2) proves that the other end holds this session's keys;
  then VERIFIED.  A relay path is added VERIFIED: the handshake itself ran on it.
* **Sending**: every frame goes out on the *active* path: the best verified path (direct
  before relay, then the one verified first).  A frame stays *retained* until the peer
  acknowledges its counter (``ACK``, at most every ``ack_frames`` frames or ``ack_delay``
  seconds).  When a direct path is verified the active path becomes it (an *upgrade*);
  when the active path dies the next best takes over (a *fallback*) and every retained
  frame is sent again on it, before any new frame.
* **Receiving**: a frame whose counter is the next expected one is delivered, older ones
  are duplicates (a retransmission) and are dropped, newer ones wait in a bounded reorder
  buffer (frames sent on the new path overtaking the old path's tail).  So nothing is lost,
  duplicated or reordered, whichever way the paths change.
* **Liveness**: every verified path is pinged every ``ping_interval``; the answer gives its
  RTT.  A path that received nothing for ``dead_after`` seconds while a ping is
  outstanding is dead.
* **Forged frames** (spec §15.5): whoever can write into one path (the mediator on the
  relay, anyone on the route of a TCP path) can put frames with any counter in it.  Counted
  unchecked, a forged frame with the next counter would make the genuine one a "duplicate"
  and fail the channel, and forged later counters would fill the reorder buffer: one bad
  path would end a session that another path could carry.  So a frame counts (next or
  later) only once the authenticator passed it; one that fails closes the path it came on,
  as a failed path check does, and the session goes on over the others.  Duplicates are
  dropped unchecked (they change nothing but an ACK).  The check decrypts; the channel
  keeps the plaintext for its ``open``, so no frame is decrypted twice.  A frame ahead
  whose key the check cannot derive yet (more key updates hide in the gap than it looks
  ahead) is *held*: its path's bytes wait, unparsed and bounded, until its turn.
* **Gaps** (``NEED``): the frames in flight on a path that closes here are lost, and the
  peer resends only on a fallback of its own, which it may never see (a path closed for a
  forgery stays open at its end).  So the first gap seen after a path closed (or a
  non-active path is held) is asked for on the active path, and the peer resends those
  frames from what it retains.
* **At most** ``max_paths`` verified paths and ``max_checking`` paths being checked (a
  listener takes any connection that names the session, and the attach id is in clear):
  a path verified beyond the first cap is closed, and a new path beyond the second closes
  the *oldest* being checked, so connections that never prove anything cannot hold a
  genuine path out.  Closed paths are forgotten, but for the last few verified ones and
  (apart) the last few that never were, which :meth:`Multipath.paths` still reports with
  why they closed; refused and evicted paths are not kept.
* **Closing** (``MultipathState``: OPEN --close()--> CLOSING; OPEN or CLOSING --no path
  left--> LOST): the session's CLOSE is its last frame, and it is retained like any other.
  Closing the paths while it is still in flight (a lost TCP segment being retransmitted)
  would destroy it: the peer would see a truncated session.  So after :meth:`close` the
  shell keeps the paths until :attr:`settled` (the peer acknowledged every frame, the CLOSE
  included) or a time limit, and the core acknowledges every frame at once, since the peer
  lingers too.  Pings, dead paths and fallback go on meanwhile: a CLOSE lost with a dying
  path is sent again on the next one.  A duplicate frame means our ACK was lost with a path:
  it is answered with a fresh ACK.

Wire format on a path (§15.3): session stream frames as they are (``u32 L`` with the top
bit clear), interleaved with multipath messages ``u32 (0x80000000 | n) || type || fields ||
mac16``, ``mac16`` an HMAC-SHA256 (truncated) under the path-check key over the sender's
role, the type and the fields.  The core takes bytes in (:meth:`receive`) and gives
``(path id, bytes)`` out (:meth:`data_to_send`, and the path id :meth:`send` returns for
the hot path); time comes in as ``now``; it never does I/O.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import field
from enum import Enum, StrEnum

from didsession._dataclass import dataclass
from didsession.errors import FrameError, LocalProtocolError, RemoteProtocolError
from didsession.session.events import Event
from didsession.session.frame import COUNTER_MASK, OVERHEAD
from didsession.session.keyschedule import Role

__all__ = [
    "HELLO_SIZE",
    "Multipath",
    "MultipathConfig",
    "MultipathState",
    "PathActivated",
    "PathClosed",
    "PathKind",
    "PathState",
    "PathVerified",
    "PathsLost",
    "peek_attach_id",
]

HELLO_MAGIC = b"DSP\x01"
PROOF_MAGIC = b"DSPK"
_NONCE = 16
_ATTACH = 16
_MAC = 16
HELLO_SIZE = len(HELLO_MAGIC) + _ATTACH + 1 + _NONCE
PROOF_SIZE = len(PROOF_MAGIC) + _MAC
_MUX_FLAG = 0x80000000
_MAX_MUX = 64
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HDR_U32_U64 = struct.Struct(">IQ")
_U64_U64 = struct.Struct(">QQ")
_ACK, _PING, _PONG, _NEED = 1, 2, 3, 4
_MSG_SIZE = {_ACK: 8, _PING: 8, _PONG: 8, _NEED: 16}
_ROLE_BYTE = {Role.INITIATOR: b"I", Role.RESPONDER: b"R"}


class PathKind(StrEnum):
    """What a path is; direct paths are preferred."""

    DIRECT = "direct"
    RELAY = "relay"


class PathState(Enum):
    """A path's life: CHECKING --check passed--> VERIFIED --lost/dead/closed--> CLOSED."""

    CHECKING = "checking"
    VERIFIED = "verified"
    CLOSED = "closed"


class MultipathState(Enum):
    """OPEN while frames flow; CLOSING once the session above sent its last frame (its
    CLOSE), until the shell closes the paths; LOST when no path can carry (terminal)."""

    OPEN = "open"
    CLOSING = "closing"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class PathVerified(Event):
    """A path passed its check (or is a relay path) and may carry frames."""

    path: int
    kind: PathKind


@dataclass(frozen=True, slots=True)
class PathActivated(Event):
    """Frames now leave on ``path``.  ``reason``: ``"initial"``, ``"upgrade"`` (a better
    path was verified) or ``"fallback"`` (the active path died; retained frames resent)."""

    path: int
    kind: PathKind
    reason: str
    previous: int | None


@dataclass(frozen=True, slots=True)
class PathClosed(Event):
    """A path is gone; ``reason`` says why (for logs; the session goes on if it can)."""

    path: int
    kind: PathKind
    reason: str


@dataclass(frozen=True, slots=True)
class PathsLost(Event):
    """No path is left: the session cannot go on."""

    reason: str


@dataclass(frozen=True, slots=True)
class MultipathConfig:
    """Tuning of :class:`Multipath` (seconds, frames, bytes)."""

    ping_interval: float = 1.0
    dead_after: float = 5.0
    check_timeout: float = 10.0
    ack_frames: int = 32
    ack_bytes: int = 32 << 10
    ack_delay: float = 0.05
    max_retained: int = 32 << 20
    max_reorder: int = 32 << 20
    max_frame: int = (1 << 24) + OVERHEAD
    max_paths: int = 8  # verified at once
    max_checking: int = 8  # being checked at once (the oldest goes for a new one)


@dataclass(slots=True)
class _Path:
    id: int
    kind: PathKind
    state: PathState
    info: dict[str, object]
    opened: float
    nonce: bytes = b""
    peer_nonce: bytes | None = None
    buf: bytearray = field(default_factory=bytearray)
    last_rx: float = 0.0
    ping_id: int = 0
    ping_sent: float | None = None
    next_ping: float = 0.0
    rtt: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    verified_at: float | None = None
    reason: str = ""
    heard: bool = True  # multipath messages may be sent (see add_path's quiet)
    held: int = -1  # >= 0: the counter of a frame ahead not checkable yet; buf waits for it


def peek_attach_id(data: bytes) -> bytes | None:
    """The attach id of a path check HELLO at the start of ``data`` (for a listener that
    must find the session before it can check the path), or None if it is not one yet.

    Raises:
        FrameError: the bytes cannot start a HELLO.
    """
    head = data[: len(HELLO_MAGIC)]
    if not HELLO_MAGIC.startswith(head):
        raise FrameError("not a didsession path check")
    if len(data) < HELLO_SIZE:
        return None
    return data[len(HELLO_MAGIC) : len(HELLO_MAGIC) + _ATTACH]


class Multipath:
    """The paths of one established session (see the module docstring).

    Args:
        role: our handshake role (path checks and multipath messages are bound to it).
        key: :func:`~didsession.session.keyschedule.path_check_key` of the session.
        attach_id: the session's attach id (it opens every path check).
        rx_next: the counter of the next frame the channel expects (frames it already
            received on the handshake path before multipath took over).
        now: current time.
        config: tuning.
        rand: randomness for path-check nonces.
        authenticate: whether a frame is the peer's (the channel's
            :meth:`~didsession.session.Channel.authenticator`, starting at ``rx_next``).
            Without it counters are trusted, and a forged frame on any path fails the
            channel: only for a layer that has a single path.
    """

    def __init__(
        self,
        *,
        role: Role,
        key: bytes,
        attach_id: bytes,
        rx_next: int,
        now: float,
        config: MultipathConfig | None = None,
        rand: Callable[[int], bytes] = os.urandom,
        authenticate: Callable[[bytes], bool | None] | None = None,
    ) -> None:
        if len(attach_id) != _ATTACH:
            raise LocalProtocolError("attach id must be 16 bytes")
        self.role = role
        self._key = key
        self._attach_id = attach_id
        self._cfg = config or MultipathConfig()
        self._rand = rand
        self._now = now
        self.state = MultipathState.OPEN
        self._paths: dict[int, _Path] = {}  # open paths (CHECKING or VERIFIED)
        # For paths(): the last closed paths that had been verified, and apart (so that
        # connections that never prove anything cannot push those out) the last that had
        # not; paths refused or evicted by the caps are not kept at all.
        self._closed: deque[_Path] = deque(maxlen=self._cfg.max_paths)
        self._failed: deque[_Path] = deque(maxlen=self._cfg.max_checking)
        self._next_id = 0
        self.active: int = -1
        self._outbox: list[tuple[int, bytes]] = []
        self._events: list[Event] = []
        # Sending side: frames not yet acknowledged, oldest first: (last counter, bytes).
        self._retained: deque[tuple[int, bytes]] = deque()
        self._retained_bytes = 0
        self._acked = 0  # every frame below this counter arrived
        self._dropped_to = 0  # retained frames below this were dropped (over the limit)
        # Receiving side.
        self._rx_next = rx_next
        self._auth = authenticate
        self._reorder: dict[int, bytes] = {}  # authentic frames ahead of _rx_next
        # Their bytes, twice with an authenticator: it keeps each one's plaintext too.
        self._reorder_bytes = 0
        self._weight = 1 if authenticate is None else 2
        self._held = 0  # paths whose buffer waits (_Path.held)
        self._unacked_frames = 0
        self._unacked_bytes = 0
        self._ack_due: float | None = None
        # A verified path closed: the frames in flight on it are lost, and the first frame
        # that waits for a gap after that asks the peer for the gap (NEED).
        self._gap_watch = False
        self._own = _ROLE_BYTE[role]
        self._peer = _ROLE_BYTE[Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR]
        self.upgrades = 0
        self.fallbacks = 0
        self.retransmitted = 0

    # -- paths -------------------------------------------------------------------------

    def add_path(self, kind: PathKind, now: float, *, quiet: bool = False, **info: object) -> int:
        """Register a path; a relay path is verified at once, a direct path starts its check
        (its HELLO is queued in :meth:`data_to_send`).

        ``quiet``: send no multipath message on this path until something arrives on it.  For
        the responder's side of the path its handshake ran on: the initiator switches that
        path to multipath only once it has read the ``accept``, and must not find a
        multipath message behind it before that (spec §15.3)."""
        self._now = now
        if self.state is not MultipathState.OPEN:
            raise LocalProtocolError("the session has no paths any more")
        pid = self._next_id
        self._next_id += 1
        path = _Path(pid, kind, PathState.CHECKING, dict(info), now, last_rx=now)
        path.heard = not quiet
        self._paths[pid] = path
        if kind is PathKind.RELAY:
            self._verified(path, now)
        else:
            checking = [p for p in self._paths.values() if p.state is PathState.CHECKING]
            if len(checking) > self._cfg.max_checking:
                # Anyone who saw a HELLO (its attach id is in clear) can open connections
                # that never prove anything: the oldest goes, so that holding connections
                # open cannot keep a genuine check out; only opening them faster than a
                # check takes (one round trip) could (spec §15.2).
                self._close_path(
                    checking[0],
                    f"evicted: more than {self._cfg.max_checking} paths being checked",
                    keep=False,
                )
            path.nonce = self._rand(_NONCE)
            self._outbox.append((pid, HELLO_MAGIC + self._attach_id + self._own + path.nonce))
        return pid

    def path_lost(self, pid: int, now: float, reason: str = "connection lost") -> None:
        """The path's connection is gone."""
        self._now = now
        path = self._paths.get(pid)
        if path is not None:
            self._close_path(path, reason)

    def close_path(self, pid: int, now: float, reason: str = "closed") -> None:
        """Stop using a path (the caller closes its connection)."""
        self.path_lost(pid, now, reason)

    def paths(self) -> list[dict[str, object]]:
        """What each path is doing (for status displays): the open ones, the last
        ``max_paths`` closed ones that had been verified and the last ``max_checking``
        that had not (refused and evicted ones are not kept), by id."""
        out = []
        listed = [*self._paths.values(), *self._closed, *self._failed]
        for p in sorted(listed, key=lambda p: p.id):
            out.append(
                {
                    "id": p.id,
                    "kind": p.kind.value,
                    "state": p.state.value,
                    "active": p.id == self.active,
                    "rtt_ms": None if p.rtt is None else round(p.rtt * 1000, 2),
                    "bytes_in": p.bytes_in,
                    "bytes_out": p.bytes_out,
                    **({"reason": p.reason} if p.reason else {}),
                    **p.info,
                }
            )
        return out

    def path_kind(self, pid: int) -> PathKind | None:
        path = self._paths.get(pid)
        return path.kind if path is not None else None

    def rtt(self, pid: int | None = None) -> float | None:
        path = self._paths.get(self.active if pid is None else pid)
        return path.rtt if path is not None else None

    # -- sending (hot path) ------------------------------------------------------------------

    def send(self, frames: bytes) -> int:
        """Take sealed stream frames (what :meth:`Channel.seal` returned, in order) and
        return the path to write them on, or -1 if there is none (they stay retained and go
        out on the next path that is verified)."""
        n = len(frames)
        if n >= OVERHEAD:
            length, w = _HDR_U32_U64.unpack_from(frames)
            if length + 4 != n:  # several frames: the last one's counter counts
                w = _last_word(frames)
            self._retained.append((w & COUNTER_MASK, frames))
            self._retained_bytes += n
            if self._retained_bytes > self._cfg.max_retained:
                self._trim_retained()
        active = self.active
        if active >= 0:
            self._paths[active].bytes_out += n
        return active

    def _trim_retained(self) -> None:
        # Over the limit: the peer stopped acknowledging.  Forget the oldest frames; a
        # fallback that would need them fails the session instead of losing data silently.
        while self._retained_bytes > self._cfg.max_retained // 2 and self._retained:
            last, data = self._retained.popleft()
            self._retained_bytes -= len(data)
            self._dropped_to = last + 1

    # -- closing (see "Closing" in the module docstring) -------------------------------------

    def close(self, now: float) -> None:
        """The session above sent its last frame (its CLOSE): acknowledge what arrived now,
        and every frame at once from now on.  The paths stay until :attr:`settled`."""
        self._now = now
        if self.state is not MultipathState.OPEN:
            return
        self.state = MultipathState.CLOSING
        if self._unacked_frames or self._ack_due is not None:
            self._send_ack()

    @property
    def settled(self) -> bool:
        """Whether the paths can be closed without losing a frame: the peer acknowledged
        every frame we sent (or no path is left to carry one)."""
        return not self._retained or self.state is MultipathState.LOST

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, pid: int, data: bytes, now: float) -> list[bytes]:
        """Bytes from path ``pid``: returns the session frames to open, in counter order
        (each passed by the authenticator, spec §15.5).

        Path-check failures, malformed bytes and frames that fail authentication close that
        path (an event says why); they never raise, since anyone can connect to a listener
        and anyone on a path's route can write into it.

        Raises:
            RemoteProtocolError: the peer's (authentic) frames overflow the reorder buffer,
                or it needs a frame again that was dropped from the retained ones.
            LocalProtocolError: the authenticator failed a frame it had passed (a bug).
        """
        path = self._paths.get(pid)
        if path is None:
            return []  # closed (or never ours)
        path.last_rx = now
        path.bytes_in += len(data)
        path.heard = True
        self._now = now
        if path.state is PathState.VERIFIED and not path.buf:
            n = len(data)
            if n >= OVERHEAD:
                length, w = _HDR_U32_U64.unpack_from(data)
                if length + 4 == n and (w & COUNTER_MASK) == self._rx_next:
                    auth = self._auth
                    if auth is not None and not auth(data):
                        self._close_path(path, _forged(self._rx_next))
                        return []
                    self._rx_next += 1
                    self._count_delivery(n)
                    if self._reorder or self._held:
                        return self._resume(self._drain_reorder([data]))
                    return [data]
        path.buf += data
        out: list[bytes] = []
        if path.held >= 0:
            self._check_held(path)
            return out
        try:
            if path.state is PathState.CHECKING and not self._check(path):
                return out
            self._split(path, out)
        except FrameError as exc:
            # (Frames in ``out`` counted already: they are delivered all the same.)
            self._close_path(path, exc.message)
        if self._held:
            self._resume(out)
        return out

    def _split(self, path: _Path, out: list[bytes]) -> None:
        buf = path.buf
        pos = 0
        end = len(buf)
        max_frame = self._cfg.max_frame
        while end - pos >= 4:
            (length,) = _U32.unpack_from(buf, pos)
            if length & _MUX_FLAG:
                size = length & ~_MUX_FLAG
                if size > _MAX_MUX or size < 1 + _MAC:
                    raise FrameError("malformed multipath message")
                if end - pos < 4 + size:
                    break
                self._mux_message(path, bytes(buf[pos + 4 : pos + 4 + size]))
                pos += 4 + size
                continue
            if length + 4 > max_frame or length + 4 < OVERHEAD:
                raise FrameError(f"frame of {length + 4} bytes on a multipath path")
            if end - pos < 4 + length:
                break
            frame = bytes(buf[pos : pos + 4 + length])
            (w,) = _U64.unpack_from(frame, 4)
            if not self._accept_frame(w & COUNTER_MASK, frame, out):
                del buf[:pos]
                self._hold(path, w & COUNTER_MASK)
                return
            pos += 4 + length
        del buf[:pos]

    def _accept_frame(self, counter: int, frame: bytes, out: list[bytes]) -> bool:
        """Count one frame; False: it is ahead and cannot be checked yet (see _hold)."""
        nxt = self._rx_next
        auth = self._auth
        if counter == nxt:
            if auth is not None and not auth(frame):
                raise FrameError(_forged(counter))
            self._rx_next = nxt + 1
            self._count_delivery(len(frame))
            out.append(frame)
            if self._reorder:
                self._drain_reorder(out)
        elif counter > nxt:
            # A copy of a frame that waits already is a duplicate or a forgery: the one
            # that waits is authentic, so this one is dropped either way.
            if counter not in self._reorder:
                if auth is not None:
                    ok = auth(frame)
                    if ok is None:
                        return False
                    if not ok:
                        raise FrameError(_forged(counter))
                self._reorder[counter] = frame
                self._reorder_bytes += len(frame) * self._weight
                if self._gap_watch:
                    self._need(counter)
                if self._reorder_bytes > self._cfg.max_reorder:
                    raise RemoteProtocolError(
                        f"frame {nxt} missing while {len(self._reorder)} later frames wait "
                        "(more than the reorder buffer holds)",
                        code="e.p.msg.session.order",
                    )
        else:
            # A duplicate, resent after a fallback: the peer never saw our ACK for it (it
            # was lost with the old path).  Drop it and acknowledge again.
            if self.state is MultipathState.CLOSING:
                self._send_ack()
            elif self._ack_due is None:
                self._ack_due = self._now + self._cfg.ack_delay
        return True

    def _drain_reorder(self, out: list[bytes]) -> list[bytes]:
        reorder = self._reorder
        auth = self._auth
        weight = self._weight
        while (frame := reorder.pop(self._rx_next, None)) is not None:
            # Passed when it arrived; passed again in its turn (no second decryption) so
            # that the check moves past it and follows the peer's key updates.
            if auth is not None and not auth(frame):
                raise LocalProtocolError(f"frame {self._rx_next} passed its check, then failed it")
            self._reorder_bytes -= len(frame) * weight
            self._rx_next += 1
            self._count_delivery(len(frame))
            out.append(frame)
        # Duplicates of delivered frames may still wait there: drop them.
        for c in [c for c in reorder if c < self._rx_next]:
            self._reorder_bytes -= len(reorder.pop(c)) * weight
        return out

    # -- frames ahead that cannot be checked yet (spec §15.5) -----------------------------------

    def _hold(self, path: _Path, counter: int) -> None:
        """A frame ahead of its turn whose key the check cannot tell yet (the peer updated
        its key more often than the check can look ahead, and a gap hides the updates):
        neither counted nor refused.  The path's bytes wait, unparsed, from that frame on,
        until the gap before it is filled; then it is checked in its turn.  TCP's flow
        control slows the sender meanwhile; what waits counts toward ``max_reorder``."""
        path.held = counter
        self._held += 1
        self._check_held(path)
        if path.state is PathState.VERIFIED and path.id != self.active:
            # The frames behind it on this path are out of reach for now: if they are the
            # gap, nobody else would send them (as for a closed path).
            self._gap_watch = True
            if self._reorder:
                self._need(min(self._reorder))

    def _check_held(self, path: _Path) -> None:
        if len(path.buf) + self._reorder_bytes > self._cfg.max_reorder:
            # Too much waiting for a gap: a resource limit, not a forgery (this frame may
            # be genuine); the peer's frames go on over the other paths.
            self._close_path(
                path,
                f"{len(path.buf)} bytes wait for frame {self._rx_next} "
                f"(frame {path.held} cannot be checked before it)",
            )

    def _resume(self, out: list[bytes]) -> list[bytes]:
        """Parse the paths whose held frame's turn has come (each only moves forward)."""
        progress = True
        while progress and self._held:
            progress = False
            for path in list(self._paths.values()):
                if 0 <= path.held <= self._rx_next:
                    path.held = -1
                    self._held -= 1
                    progress = True
                    try:
                        self._split(path, out)
                    except FrameError as exc:
                        self._close_path(path, exc.message)
        return out

    def _count_delivery(self, n: int) -> None:
        self._unacked_frames += 1
        self._unacked_bytes += n
        if (
            self._unacked_frames >= self._cfg.ack_frames
            or self._unacked_bytes >= self._cfg.ack_bytes
            or self.state is MultipathState.CLOSING  # the peer waits for it to close
        ):
            self._send_ack()
        elif self._ack_due is None:
            self._ack_due = self._now + self._cfg.ack_delay

    def _need(self, end: int) -> None:
        """Ask the peer to send the frames from the next expected one to ``end`` (excluded)
        again, on the active path: a closed path may have taken them (spec §15.5)."""
        self._gap_watch = False
        if self.active >= 0:
            self._queue_mux(self.active, _NEED, _U64_U64.pack(self._rx_next, end))

    def _send_ack(self) -> None:
        self._unacked_frames = 0
        self._unacked_bytes = 0
        self._ack_due = None
        if self.active >= 0:
            self._queue_mux(self.active, _ACK, _U64.pack(self._rx_next))

    # -- path checks (spec §15.2) ---------------------------------------------------------------

    def _check(self, path: _Path) -> bool:
        """Advance a CHECKING path; True once it is VERIFIED (the rest of its buffer is then
        multipath stream)."""
        buf = path.buf
        if path.peer_nonce is None:
            if not HELLO_MAGIC.startswith(bytes(buf[: len(HELLO_MAGIC)])):
                raise FrameError("not a didsession path check")
            if len(buf) < HELLO_SIZE:
                return False
            hello = bytes(buf[:HELLO_SIZE])
            del buf[:HELLO_SIZE]
            attach = hello[4 : 4 + _ATTACH]
            role = hello[4 + _ATTACH : 5 + _ATTACH]
            if not hmac.compare_digest(attach, self._attach_id):
                raise FrameError("path check for another session")
            if role != self._peer:
                raise FrameError("path check from the wrong role (a reflected HELLO?)")
            path.peer_nonce = hello[5 + _ATTACH :]
            self._outbox.append(
                (path.id, PROOF_MAGIC + self._proof(self._own, path.nonce, path.peer_nonce))
            )
        if len(buf) < PROOF_SIZE:
            return False
        proof = bytes(buf[:PROOF_SIZE])
        del buf[:PROOF_SIZE]
        expected = self._proof(self._peer, path.peer_nonce, path.nonce)
        if proof[:4] != PROOF_MAGIC or not hmac.compare_digest(proof[4:], expected):
            raise FrameError("path check failed: the other end does not hold this session's keys")
        self._verified(path, self._now)
        return True

    def _proof(self, role: bytes, own_nonce: bytes, peer_nonce: bytes) -> bytes:
        msg = b"didsession path check" + role + self._attach_id + own_nonce + peer_nonce
        return hmac.digest(self._key, msg, "sha256")[:_MAC]

    def _verified(self, path: _Path, now: float) -> None:
        verified = sum(p.state is PathState.VERIFIED for p in self._paths.values())
        if verified >= self._cfg.max_paths:
            # Only the peer can prove a path, and it needs only a few: a resource limit,
            # refused like a failed check (an event, never an exception).
            self._close_path(
                path, f"refused: this session has {verified} verified paths", keep=False
            )
            return
        path.state = PathState.VERIFIED
        path.verified_at = now
        path.last_rx = now
        path.next_ping = now  # the first ping measures the RTT at once
        self._events.append(PathVerified(path.id, path.kind))
        best = self._best()
        if best is not None and best.id != self.active:
            previous = self.active
            reason = "initial" if previous < 0 else "upgrade"
            if previous >= 0:
                self.upgrades += 1
            self._activate(best, reason, previous)

    def _best(self) -> _Path | None:
        best: _Path | None = None
        for p in self._paths.values():
            if p.state is not PathState.VERIFIED:
                continue
            if best is None or (p.kind is PathKind.DIRECT and best.kind is PathKind.RELAY):
                best = p
        return best

    def _activate(self, path: _Path, reason: str, previous: int) -> None:
        self.active = path.id
        # Everything the peer has not acknowledged may be lost with the old path (or never
        # sent, if there was none): send it again first; the peer drops what it has.
        if reason != "upgrade" and self._retained:
            if self._dropped_to > self._acked:
                raise self._lose(
                    f"{self._dropped_to - self._acked} frames were neither acknowledged nor "
                    "kept for retransmission"
                )
            data = b"".join(d for _, d in self._retained)
            self.retransmitted += len(self._retained)
            self._outbox.append((path.id, data))
            path.bytes_out += len(data)
        self._events.append(
            PathActivated(path.id, path.kind, reason, previous if previous >= 0 else None)
        )

    def _close_path(self, path: _Path, reason: str, *, keep: bool = True) -> None:
        was_verified = path.state is PathState.VERIFIED
        path.state = PathState.CLOSED
        path.reason = reason
        path.buf.clear()
        if path.held >= 0:
            path.held = -1
            self._held -= 1
        if self._paths.pop(path.id, None) is not None and keep:
            (self._closed if was_verified else self._failed).append(path)
        self._events.append(PathClosed(path.id, path.kind, reason))
        if path.id == self.active:
            best = self._best()
            if best is None:
                self.active = -1
                if was_verified:
                    self._lose(f"every path is gone (last: {path.kind.value}, {reason})")
                return
            self.fallbacks += 1
            try:
                self._activate(best, "fallback", path.id)
            except RemoteProtocolError:
                pass  # _lose recorded it
        if was_verified and self.state is not MultipathState.LOST:
            # Frames the peer sent on this path and we did not count are lost with it (the
            # peer resends only on a fallback of its own, which it may never see: a path
            # closed for a forged frame stays open at its end).  A gap we see now, or the
            # first one we see later, is asked for again (spec §15.5).
            self._gap_watch = True
            if self._reorder:
                self._need(min(self._reorder))

    def _lose(self, reason: str) -> RemoteProtocolError:
        if self.state is not MultipathState.LOST:
            self.state = MultipathState.LOST
            self._events.append(PathsLost(reason))
        return RemoteProtocolError(
            f"the session lost its paths: {reason}", code="e.p.msg.session.paths"
        )

    # -- multipath messages (spec §15.3) -------------------------------------------------------

    def _queue_mux(self, pid: int, kind: int, fields: bytes) -> None:
        if not self._paths[pid].heard:
            return  # a quiet path: the peer may not read multipath messages yet
        body = bytes((kind,)) + fields
        mac = hmac.digest(self._key, b"didsession mux" + self._own + body, "sha256")[:_MAC]
        msg = _U32.pack(_MUX_FLAG | (len(body) + _MAC)) + body + mac
        self._outbox.append((pid, msg))

    def _mux_message(self, path: _Path, msg: bytes) -> None:
        body, mac = msg[:-_MAC], msg[-_MAC:]
        expected = hmac.digest(self._key, b"didsession mux" + self._peer + body, "sha256")[:_MAC]
        if not hmac.compare_digest(mac, expected):
            raise FrameError("multipath message failed authentication")
        kind = body[0]
        if _MSG_SIZE.get(kind) != len(body) - 1:
            return  # unknown (a later version's) message: ignore, it is authentic
        (value,) = _U64.unpack_from(body, 1)
        if kind == _NEED:
            self._on_need(value, _U64.unpack_from(body, 9)[0])
        elif kind == _ACK:
            self._on_ack(value)
        elif kind == _PING:
            self._queue_mux(path.id, _PONG, body[1:])
        elif kind == _PONG and path.ping_sent is not None and value == path.ping_id:
            path.rtt = self._now - path.ping_sent
            path.ping_sent = None

    def _on_ack(self, nxt: int) -> None:
        if nxt <= self._acked:
            return
        self._acked = nxt
        retained = self._retained
        while retained and retained[0][0] < nxt:
            _, data = retained.popleft()
            self._retained_bytes -= len(data)

    def _on_need(self, start: int, end: int) -> None:
        # Every frame below ``start`` arrived; ``start`` up to ``end`` were lost with a path
        # the peer closed: resend them on the active path (the peer drops what it has).
        self._on_ack(start)
        if self.active < 0 or end <= start or not self._retained:
            return  # (with no path, the fallback to the next one resends everything)
        if self._dropped_to > start:
            raise self._lose(
                f"the peer needs frame {start}, which was neither acknowledged nor kept for "
                "retransmission"
            )
        data = []
        first = self._acked
        for last, frames in self._retained:
            if first >= end:
                break
            data.append(frames)
            first = last + 1
        joined = b"".join(data)
        self.retransmitted += len(data)
        self._outbox.append((self.active, joined))
        self._paths[self.active].bytes_out += len(joined)

    # -- time ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next (None: nothing pending)."""
        if self.state is MultipathState.LOST:
            return None
        when = self._ack_due
        for p in self._paths.values():
            if p.state is PathState.CHECKING:
                t = p.opened + self._cfg.check_timeout
            elif p.ping_sent is not None:
                t = max(p.last_rx, p.ping_sent) + self._cfg.dead_after
            elif p.heard:
                t = p.next_ping
            else:
                continue  # a quiet path: nothing to do until it hears from the peer
            when = t if when is None else min(when, t)
        return when

    def handle_timer(self, now: float) -> None:
        """Send due ACKs and pings; close paths that failed their check or died."""
        self._now = now
        if self._ack_due is not None and now >= self._ack_due:
            self._send_ack()
        cfg = self._cfg
        for p in list(self._paths.values()):
            if p.state is PathState.CHECKING and now >= p.opened + cfg.check_timeout:
                self._close_path(p, "path check timed out")
            elif p.state is PathState.VERIFIED:
                if p.ping_sent is not None:
                    if now >= max(p.last_rx, p.ping_sent) + cfg.dead_after:
                        self._close_path(p, f"no answer for {cfg.dead_after:g} s")
                elif now >= p.next_ping and p.heard:
                    p.ping_id += 1
                    p.ping_sent = now
                    p.next_ping = now + cfg.ping_interval
                    self._queue_mux(p.id, _PING, _U64.pack(p.ping_id))

    # -- output --------------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` or :meth:`events` has something (cheap: hot path)."""
        return bool(self._outbox or self._events)

    def data_to_send(self) -> list[tuple[int, bytes]]:
        """Drain what the core wants written: ``(path id, bytes)`` in order."""
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[Event]:
        """Drain the events since the last call."""
        out, self._events = self._events, []
        return out


def _forged(counter: int) -> str:
    return f"frame {counter} failed authentication (forged on this path?)"


def _last_word(frames: bytes) -> int:
    """The header word of the last frame in a run of stream frames."""
    pos = 0
    w = 0
    n = len(frames)
    while pos + 12 <= n:
        length, w = _HDR_U32_U64.unpack_from(frames, pos)
        pos += 4 + length
    return w
