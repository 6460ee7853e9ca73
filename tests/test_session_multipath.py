"""The multipath core (spec/session.md §13) in memory: two real channels, paths as byte
queues that can be delayed, cut or tampered with.  Whatever happens to the paths, the
receiving channel must see every payload exactly once and in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from didsession.errors import DecryptError, FrameError, LocalProtocolError, RemoteProtocolError
from didsession.session import Channel, ChannelState, Limits
from didsession.session.channel import MAX_EPOCH_SKIP
from didsession.session.frame import HEADER, FrameType, word
from didsession.session.keyschedule import Role, path_check_key
from didsession.session.multipath import (
    HELLO_SIZE,
    Multipath,
    MultipathConfig,
    MultipathState,
    PathActivated,
    PathClosed,
    PathKind,
    PathsLost,
    PathVerified,
    peek_attach_id,
)
from tests.session_pair import SessionPair

CFG = MultipathConfig(ping_interval=1.0, dead_after=3.0, check_timeout=5.0, ack_frames=4)


@dataclass
class Side:
    channel: Channel
    mp: Multipath
    got: list[bytes] = field(default_factory=list)
    events: list[object] = field(default_factory=list)


@dataclass
class Net:
    """Two sides; ``wires[(side, pid)]`` holds bytes in flight from ``side`` on its path
    ``pid`` (both sides number their paths alike)."""

    a: Side
    b: Side
    now: float = 0.0
    wires: dict[tuple[int, int], list[bytes]] = field(default_factory=dict)

    @classmethod
    def make(
        cls, key_b: bytes | None = None, cfg: MultipathConfig = CFG, limits: Limits | None = None
    ) -> Net:
        pair = SessionPair.establish(limits=limits)
        sides = []
        for ch, key in ((pair.initiator, None), (pair.responder, key_b)):
            mp = Multipath(
                role=ch.role,
                key=key or path_check_key(ch.resumption().secret),
                attach_id=ch.attach_id,
                rx_next=0,
                now=0.0,
                config=cfg,
                authenticate=ch.authenticator(),
            )
            sides.append(Side(ch, mp))
        return cls(sides[0], sides[1])

    @classmethod
    def upgraded(cls, cfg: MultipathConfig = CFG) -> tuple[Net, int, int]:
        """A net whose sessions started on the relay and moved to a checked direct path:
        (net, relay, direct)."""
        net = cls.make(cfg=cfg)
        relay = net.add(PathKind.RELAY)
        return net, relay, net.add_path_checked()

    def side(self, i: int) -> Side:
        return self.a if i == 0 else self.b

    def add(self, kind: PathKind) -> int:
        pa = self.a.mp.add_path(kind, self.now)
        pb = self.b.mp.add_path(kind, self.now)
        assert pa == pb
        self.pump()
        return pa

    def add_path_checked(self) -> int:
        """Both ends open a direct path and run its check to completion."""
        pa = self.a.mp.add_path(PathKind.DIRECT, self.now)
        pb = self.b.mp.add_path(PathKind.DIRECT, self.now)
        assert pa == pb
        self.collect(0)
        self.collect(1)
        self.pump((pa,))
        for side in (self.a, self.b):
            assert any(isinstance(e, PathVerified) and e.path == pa for e in side.events)
        return pa

    def send(self, i: int, payload: bytes) -> None:
        s = self.side(i)
        frames = s.channel.seal(payload)
        pid = s.mp.send(frames)
        self.collect(i)
        if pid >= 0:
            self.wires.setdefault((i, pid), []).append(frames)

    def send_all(self, i: int, payloads: list[bytes]) -> list[bytes]:
        for payload in payloads:
            self.send(i, payload)
        return payloads

    def collect(self, i: int) -> None:
        s = self.side(i)
        for pid, data in s.mp.data_to_send():
            self.wires.setdefault((i, pid), []).append(data)
        s.events += s.mp.events()

    def deliver(self, i: int, pid: int, count: int | None = None) -> None:
        """Deliver bytes sent by side ``i`` on path ``pid`` to the other side."""
        queue = self.wires.get((i, pid), [])
        take = len(queue) if count is None else min(count, len(queue))
        chunks, queue[:] = queue[:take], queue[take:]
        r = self.side(1 - i)
        for chunk in chunks:
            for frame in r.mp.receive(pid, chunk, self.now):
                if r.mp.state is MultipathState.CLOSING:
                    continue  # as the shell does: nobody reads after the close
                payload = r.channel.open(frame)
                if payload is not None:
                    r.got.append(payload)
        self.collect(1 - i)

    def pump(self, pids: tuple[int, ...] | None = None) -> None:
        for _ in range(20):
            moved = False
            for (i, pid), queue in list(self.wires.items()):
                if queue and (pids is None or pid in pids):
                    moved = True
                    self.deliver(i, pid)
            if not moved:
                return

    def cut(self, pid: int) -> None:
        """The path dies: bytes in flight are lost, both ends see the connection go."""
        self.wires.pop((0, pid), None)
        self.wires.pop((1, pid), None)
        for i in (0, 1):
            self.side(i).mp.path_lost(pid, self.now)
            self.collect(i)

    def tick(self, dt: float) -> None:
        self.now += dt
        for i in (0, 1):
            self.side(i).mp.handle_timer(self.now)
            self.collect(i)


def _payloads(n: int, start: int = 0) -> list[bytes]:
    return [f"m{i}".encode() * (1 + i % 5) for i in range(start, start + n)]


def test_relay_start_acks_trim_retained() -> None:
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    assert net.a.mp.active == relay
    sent = net.send_all(0, _payloads(50))
    net.pump()
    assert net.b.got == sent
    net.tick(0.1)  # the delayed ACK for the tail
    net.pump()
    assert not net.a.mp._retained  # everything acknowledged


def test_upgrade_while_relay_frames_in_flight_keeps_order() -> None:
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    before = _payloads(10)
    for p in before:
        net.send(0, p)  # still on the relay, not delivered yet
    direct = net.add_path_checked()
    assert net.a.mp.active == direct and net.b.mp.active == direct
    assert net.a.mp.upgrades == 1
    after = net.send_all(0, _payloads(10, 10))
    net.deliver(0, direct)  # the direct path overtakes the relay
    assert net.b.got == []  # waiting for frame 0
    net.deliver(0, relay)
    assert net.b.got == before + after
    kinds = [e for e in net.a.events if isinstance(e, PathActivated)]
    assert [(e.kind, e.reason) for e in kinds] == [
        (PathKind.RELAY, "initial"),
        (PathKind.DIRECT, "upgrade"),
    ]


def test_fallback_retransmits_what_the_dead_path_lost() -> None:
    net, relay, direct = Net.upgraded()
    first = net.send_all(0, _payloads(20))
    net.deliver(0, direct, count=7)  # part arrives, the rest dies with the path
    net.cut(direct)
    assert net.a.mp.active == relay and net.a.mp.fallbacks == 1
    later = net.send_all(0, _payloads(5, 20))
    net.pump()
    assert net.b.got == first + later  # nothing lost, nothing twice
    assert net.a.mp.retransmitted > 0
    assert any(isinstance(e, PathClosed) and e.kind is PathKind.DIRECT for e in net.a.events)


def test_duplicates_after_fallback_are_dropped() -> None:
    net, relay, direct = Net.upgraded()
    sent = net.send_all(0, _payloads(6))
    net.deliver(0, direct)  # all arrived, but the ACK never made it back
    net.wires.pop((1, direct), None)
    net.cut(direct)
    net.pump((relay,))
    assert net.b.got == sent


def test_dead_path_detected_by_ping_timeout() -> None:
    net, relay, direct = Net.upgraded()
    net.tick(0.01)
    net.pump()
    assert net.a.mp.rtt(direct) is not None
    # The direct path goes silent (a NAT dropped its mapping): nothing is delivered on it.
    for _ in range(50):
        net.tick(0.2)
        net.wires.pop((0, direct), None)
        net.wires.pop((1, direct), None)
        net.pump((relay,))
    assert net.a.mp.active == relay
    assert any(
        isinstance(e, PathClosed) and e.path == direct and "no answer" in e.reason
        for e in net.a.events
    )


def test_losing_the_only_path_loses_the_session() -> None:
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    net.cut(relay)
    assert net.a.mp.state is MultipathState.LOST
    assert any(isinstance(e, PathsLost) for e in net.a.events)


def test_mediator_gone_after_upgrade_changes_nothing() -> None:
    net, relay, direct = Net.upgraded()
    net.cut(relay)
    sent = _payloads(8)
    for p in sent:
        net.send(0, p)
        net.send(1, p)
    net.pump()
    assert net.b.got == sent and net.a.got == sent
    assert net.a.mp.state is MultipathState.OPEN and net.a.mp.active == direct


def test_path_check_with_wrong_keys_fails_and_session_goes_on() -> None:
    net = Net.make(key_b=b"\x00" * 32)
    relay = net.add(PathKind.RELAY)
    net.a.mp.add_path(PathKind.DIRECT, net.now)
    net.b.mp.add_path(PathKind.DIRECT, net.now)
    net.collect(0)
    net.collect(1)
    net.pump()
    assert net.a.mp.active == relay
    closed = [e for e in net.a.events if isinstance(e, PathClosed)]
    assert closed and "does not hold" in closed[0].reason


def test_reflected_hello_and_foreign_attach_id_are_refused() -> None:
    net = Net.make()
    net.add(PathKind.RELAY)
    pid = net.a.mp.add_path(PathKind.DIRECT, net.now)
    ((_, hello),) = net.a.mp.data_to_send()
    assert len(hello) == HELLO_SIZE and peek_attach_id(hello) == net.a.channel.attach_id
    net.a.mp.receive(pid, hello, net.now)  # our own HELLO back
    assert [e.reason for e in net.a.mp.events() if isinstance(e, PathClosed)] == [
        "path check from the wrong role (a reflected HELLO?)"
    ]
    pid2 = net.b.mp.add_path(PathKind.DIRECT, net.now)
    net.b.mp.data_to_send()
    forged = hello[:4] + bytes(16) + hello[20:]
    net.b.mp.receive(pid2, forged, net.now)
    assert [e.reason for e in net.b.mp.events() if isinstance(e, PathClosed)] == [
        "path check for another session"
    ]


def test_path_check_times_out() -> None:
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    pid = net.a.mp.add_path(PathKind.DIRECT, net.now)
    net.tick(CFG.check_timeout + 0.1)
    assert net.a.mp.active == relay
    assert any(
        isinstance(e, PathClosed) and e.path == pid and "timed out" in e.reason
        for e in net.a.events
    )


def test_tampered_multipath_message_closes_that_path() -> None:
    net, relay, direct = Net.upgraded()
    net.tick(1.5)  # pings queued
    queue = net.wires[(0, direct)]
    assert queue
    msg = bytearray(queue[0])
    msg[-1] ^= 1
    queue[0] = bytes(msg)
    net.deliver(0, direct)
    assert net.b.mp.active == relay
    assert any(isinstance(e, PathClosed) and "authentication" in e.reason for e in net.b.events)


def test_garbage_on_a_listener_never_raises() -> None:
    with pytest.raises(FrameError):
        peek_attach_id(b"GET / HTTP/1.1\r\n")
    assert peek_attach_id(b"DSP") is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["send_a", "send_b", "deliver", "upgrade", "cut", "tick", "partial"]),
        max_size=60,
    )
)
def test_any_path_history_delivers_exactly_once_in_order(ops: list[str]) -> None:
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    sent: dict[int, list[bytes]] = {0: [], 1: []}
    direct: int | None = None
    n = 0
    for op in ops:
        if op in ("send_a", "send_b"):
            i = 0 if op == "send_a" else 1
            payload = f"{i}:{n}".encode()
            n += 1
            sent[i].append(payload)
            net.send(i, payload)
        elif op == "deliver":
            net.pump()
        elif op == "partial":
            for key in list(net.wires):
                net.deliver(key[0], key[1], count=1)
        elif op == "upgrade" and direct is None:
            direct = net.add_path_checked()
        elif op == "cut" and direct is not None:
            net.cut(direct)
            direct = None
        elif op == "tick":
            net.tick(0.06)
    net.tick(0.06)
    net.pump()
    assert net.b.got == sent[0]
    assert net.a.got == sent[1]
    assert net.a.mp.active == (relay if direct is None else direct)


def test_a_quiet_path_sends_no_multipath_message_before_it_hears_the_peer() -> None:
    """The responder's relay (the handshake's path) must not put a PING or ACK behind the
    accept before the initiator switched to multipath (spec §15.3)."""
    net = Net.make()
    pa = net.a.mp.add_path(PathKind.RELAY, net.now)
    pb = net.b.mp.add_path(PathKind.RELAY, net.now, quiet=True)
    net.collect(0)
    net.collect(1)
    net.tick(2.5)  # pings would be due
    assert net.wires.get((1, pb), []) == []  # b said nothing
    assert net.wires.get((0, pa))  # a pinged
    net.send(1, b"b's data goes out")  # frames are not multipath messages: they flow
    net.pump()
    assert net.a.got == [b"b's data goes out"]
    net.tick(1.1)
    net.pump()
    assert net.b.mp.rtt(pb) is not None  # once it heard a, b pings too


# -- closing (spec §15.8) ---------------------------------------------------------------------


def _closes(net: Net, i: int) -> None:
    """Side ``i`` sends its CLOSE (the last frame) and closes its core."""
    s = net.side(i)
    s.channel.close()
    frames = b"".join(s.channel.data_to_send())
    pid = s.mp.send(frames)
    if pid >= 0:
        net.wires.setdefault((i, pid), []).append(frames)
    s.mp.close(net.now)
    net.collect(i)


def _peer_closed(side: Side) -> bool:
    return side.channel.state is ChannelState.CLOSED


def test_close_is_settled_only_once_the_peer_acknowledged_the_close() -> None:
    net = Net.make()
    net.add(PathKind.RELAY)
    net.send(0, b"one frame, below ack_frames: not acknowledged yet")
    net.pump()
    _closes(net, 0)
    assert net.a.mp.state is MultipathState.CLOSING
    assert not net.a.mp.settled  # the CLOSE is in flight
    # b reads the CLOSE; its shell closes its core, which acknowledges at once (no tick).
    net.pump()
    assert _peer_closed(net.b) and not net.a.mp.settled
    net.b.mp.close(net.now)
    net.collect(1)
    net.pump()
    assert net.a.mp.settled and net.b.mp.settled


def test_a_closing_side_acknowledges_every_frame_at_once() -> None:
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    _closes(net, 0)
    net.wires.pop((0, relay))  # (a's CLOSE is not what this test is about)
    net.send(1, b"b still sends: a acknowledges it without waiting for a tick")
    net.pump()
    assert net.b.mp.settled


def test_a_close_lost_with_its_path_is_sent_again_on_the_next_one() -> None:
    net, relay, direct = Net.upgraded()
    sent = net.send_all(0, _payloads(3))
    _closes(net, 0)
    net.deliver(0, direct, count=1)  # the rest, the CLOSE among it, dies with the path
    net.cut(direct)
    assert net.a.mp.active == relay and not net.a.mp.settled
    net.pump()
    assert net.b.got == sent and _peer_closed(net.b)
    net.b.mp.close(net.now)
    net.collect(1)
    net.pump()
    assert net.a.mp.settled


def test_a_duplicate_is_acknowledged_again() -> None:
    """b got everything, but its ACK was lost with the path: a resends on the fallback, and
    b's answer to the duplicates settles a's close."""
    net, relay, direct = Net.upgraded()
    net.send(0, b"x")
    _closes(net, 0)
    net.deliver(0, direct)
    assert _peer_closed(net.b)
    net.tick(CFG.ack_delay)  # b acknowledges on the direct path...
    assert net.wires.get((1, direct))
    net.wires.pop((1, direct), None)  # ...and that ACK is lost with the path
    net.cut(direct)
    net.pump((relay,))
    assert not net.a.mp.settled  # b dropped the duplicates; its ACK is due shortly
    net.tick(CFG.ack_delay)
    net.pump((relay,))
    assert net.a.mp.settled
    assert net.b.got == [b"x"]


def test_losing_every_path_settles_a_close() -> None:
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    _closes(net, 0)
    assert not net.a.mp.settled
    net.cut(relay)
    assert net.a.mp.settled and net.a.mp.state is MultipathState.LOST


# -- forged frames (spec §15.5) -----------------------------------------------------------------


def _forged(counter: int, size: int = 48, epoch: int = 0) -> bytes:
    """A well-formed stream frame with the given counter that nobody sealed: what a party
    that can only write into one path (the mediator on the relay) can make."""
    body = bytes((counter + i) & 0xFF for i in range(size))
    return HEADER.pack(8 + size, word(FrameType.DATA, epoch, counter)) + body


def _inject(net: Net, i: int, pid: int, data: bytes, *, chunked: bool) -> None:
    """Put ``data`` on path ``pid`` as if side ``i`` had sent it, ahead of what is in flight
    there; ``chunked``: in two pieces (the core's buffering path, not its whole-frame one)."""
    queue = net.wires.setdefault((i, pid), [])
    queue[:0] = [data[:7], data[7:]] if chunked else [data]


def _closed_for_forgery(side: Side, pid: int) -> bool:
    return any(
        isinstance(e, PathClosed) and e.path == pid and "failed authentication" in e.reason
        for e in side.events
    )


def _peer_sees_the_close(net: Net, i: int, pid: int) -> None:
    """Side ``i`` closed its end of ``pid``: the other side's connection goes too."""
    net.wires.pop((0, pid), None)
    net.wires.pop((1, pid), None)
    net.side(1 - i).mp.path_lost(pid, net.now)
    net.collect(1 - i)


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
@pytest.mark.parametrize("ahead", [0, 2], ids=["next-counter", "later-counter"])
def test_a_forged_frame_on_one_path_closes_only_that_path(ahead: int, chunked: bool) -> None:
    """The relay (the mediator) forges the frame b expects next (or a later one) while the
    genuine one is in flight on the direct path: the forgery must not count, must not
    displace the genuine frame and must not fail the session; only the relay closes."""
    net, relay, direct = Net.upgraded()
    first = net.send_all(0, _payloads(2))
    net.pump()
    sent = net.send_all(0, _payloads(5, 2))  # on the direct path, not delivered yet
    target = len(first) + ahead
    _inject(net, 0, relay, _forged(target), chunked=chunked)
    net.pump((relay,))
    assert _closed_for_forgery(net.b, relay)
    assert net.b.got == first and net.b.channel.state is ChannelState.ESTABLISHED
    _peer_sees_the_close(net, 1, relay)
    net.pump()
    assert net.b.got == first + sent  # every genuine frame, once, in order
    assert net.b.mp.state is MultipathState.OPEN and net.b.mp.active == direct
    later = net.send_all(1, _payloads(3, 100))  # and the session goes on both ways
    net.pump()
    assert net.a.got == later


@pytest.mark.parametrize("direct_first", [True, False], ids=["direct-first", "relay-first"])
def test_a_forgery_in_the_relays_tail_after_an_upgrade_loses_nothing(direct_first: bool) -> None:
    """Frames in flight on the relay when the direct path takes over, and a forged frame
    among them: the relay closes at b with the genuine frames behind the forgery, which a
    never sends again by itself (its relay stays open).  b asks for them (NEED) on the
    direct path; every message arrives once, in order, and the session goes on."""
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    tail = net.send_all(0, _payloads(5))  # in flight on the relay
    direct = net.add_path_checked()
    after = net.send_all(0, _payloads(5, 5))  # on the direct path
    net.wires[(0, relay)].insert(3, _forged(3))  # behind frames 0-2, ahead of 3-4
    if direct_first:
        net.deliver(0, direct)
    net.deliver(0, relay)
    assert _closed_for_forgery(net.b, relay) and net.b.got == tail[:3]
    net.pump()
    assert net.b.got == tail + after
    assert net.a.mp.retransmitted > 0 and net.a.mp.state is MultipathState.OPEN
    later = net.send_all(0, _payloads(3, 10)) + net.send_all(1, _payloads(3, 20))
    net.pump()
    assert net.b.got == tail + after + later[:3] and net.a.got == later[3:]
    assert net.b.channel.state is ChannelState.ESTABLISHED and net.b.mp.active == direct


def test_a_flood_of_forged_later_frames_does_not_fill_the_reorder_buffer() -> None:
    """Forged frames with large counters (more than the reorder buffer holds) on the relay:
    the first one closes the relay; none is buffered; the session goes on."""
    cfg = MultipathConfig(ack_frames=4, max_reorder=8 << 10)
    net, relay, direct = Net.upgraded(cfg)
    flood = b"".join(_forged(1_000_000 + k, size=1024) for k in range(32))  # 33 KiB
    _inject(net, 0, relay, flood, chunked=False)
    sent = net.send_all(0, _payloads(10))
    net.pump((relay,))
    assert _closed_for_forgery(net.b, relay)
    assert not net.b.mp._reorder
    _peer_sees_the_close(net, 1, relay)
    net.pump()
    assert net.b.got == sent and net.b.mp.state is MultipathState.OPEN
    assert net.b.mp.active == direct


def test_a_forged_frame_on_the_only_path_loses_the_session() -> None:
    """With no other path, the usual rule applies: no path left, the session is lost
    (as a forged frame fails a single-path stream session, spec §6.4)."""
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    _inject(net, 0, relay, _forged(0), chunked=False)
    net.pump()
    assert _closed_for_forgery(net.b, relay)
    assert net.b.mp.state is MultipathState.LOST and net.b.got == []
    assert any(isinstance(e, PathsLost) for e in net.b.events)


def test_a_forgery_behind_genuine_frames_keeps_them() -> None:
    """Genuine frames and a forged one in the same read: the genuine ones are delivered,
    then the path closes."""
    net, relay, direct = Net.upgraded()
    sent = net.send_all(0, _payloads(3))
    net.wires[(0, direct)].append(_forged(len(sent)))
    net.wires[(0, direct)][:] = [b"".join(net.wires[(0, direct)])]
    net.deliver(0, direct)
    assert net.b.got == sent and _closed_for_forgery(net.b, direct)
    assert net.b.mp.active == relay


def test_frames_ahead_across_key_updates_are_authenticated_once() -> None:
    """Frames that overtake the relay's tail on the direct path after several key updates
    (16 frames per key) wait, authenticated under keys derived ahead, and are opened in
    order without a second decryption."""
    net = Net.make(limits=Limits(messages=16))
    relay = net.add(PathKind.RELAY)
    tail = net.send_all(0, _payloads(5))  # in flight on the relay
    direct = net.add_path_checked()
    net.a.channel.rekey()  # one update at once, two more by the message limit
    after = net.send_all(0, _payloads(45, 5))
    assert net.a.channel.send_epoch == 3
    net.deliver(0, direct)
    assert net.b.got == [] and len(net.b.mp._reorder) >= 45
    net.deliver(0, relay)
    assert net.b.got == tail + after
    assert net.b.channel.receive_epoch == 3
    assert not net.b.channel._authentic  # every plaintext the check kept was used by open
    assert not [e for e in net.b.events if isinstance(e, PathClosed)]


def test_a_direct_path_overtaking_a_gap_of_many_key_updates_waits() -> None:
    """More key updates in the relay's tail gap than the check looks ahead (16 frames per
    key, 12 updates): the direct path's frames beyond MAX_EPOCH_SKIP epochs cannot be
    checked yet; the path waits (it is not closed as forged) and goes on once the relay
    filled the gap."""
    net = Net.make(limits=Limits(messages=16))
    relay = net.add(PathKind.RELAY)
    tail = net.send_all(0, _payloads(5))  # in flight on the relay
    direct = net.add_path_checked()
    after = net.send_all(0, _payloads(200, 5))
    assert net.a.channel.send_epoch > MAX_EPOCH_SKIP + 2
    net.deliver(0, direct)
    assert net.b.got == [] and net.b.mp._paths[direct].held >= 0
    net.deliver(0, relay)
    assert net.b.got == tail + after
    assert not [e for e in net.b.events if isinstance(e, PathClosed)]
    later = net.send_all(0, _payloads(3, 300))
    net.pump()
    assert net.b.got == tail + after + later and net.b.mp.active == direct
    assert net.b.channel.receive_epoch == net.a.channel.send_epoch


def test_what_waits_for_a_gap_is_bounded() -> None:
    """The bytes a path holds for a gap count toward max_reorder; beyond it the path closes
    as a resource problem (not as a forgery) and the session goes on."""
    net = Net.make(cfg=MultipathConfig(ack_frames=4, max_reorder=4 << 10))
    relay = net.add(PathKind.RELAY)
    tail = net.send_all(0, _payloads(5))
    direct = net.add_path_checked()
    for _ in range(MAX_EPOCH_SKIP + 1):
        net.a.channel.rekey()
    after = net.send_all(0, [b"x" * 100 for _ in range(200)])
    net.deliver(0, direct)
    closed = [e for e in net.b.events if isinstance(e, PathClosed) and e.path == direct]
    assert closed and "wait for frame" in closed[0].reason
    assert not _closed_for_forgery(net.b, direct)
    assert net.b.mp.active == relay and net.b.mp._held == 0
    _peer_sees_the_close(net, 1, direct)  # a falls back and sends it all again
    net.pump()
    assert net.b.got == tail + after and net.b.mp.state is MultipathState.OPEN


def test_what_the_check_keeps_counts_toward_the_reorder_buffer() -> None:
    """A frame that waits in the reorder buffer is held twice: its bytes, and the plaintext
    the check kept for it; the limit counts both."""
    net = Net.make(cfg=MultipathConfig(ack_frames=4, max_reorder=16 << 10))
    net.add(PathKind.RELAY)
    net.send(0, b"late")  # in flight on the relay
    direct = net.add_path_checked()
    net.send_all(0, [b"x" * 1000 for _ in range(10)])  # ~10 KiB of frames, ~20 KiB held
    with pytest.raises(RemoteProtocolError, match="reorder buffer"):
        net.deliver(0, direct)


def test_a_frame_that_passed_its_check_and_then_fails_it_is_an_internal_error() -> None:
    seen: set[bytes] = set()

    def check(frame: bytes) -> bool:  # passes each frame once only
        first = frame not in seen
        seen.add(frame)
        return first

    mp = Multipath(
        role=Role.INITIATOR,
        key=bytes(32),
        attach_id=bytes(16),
        rx_next=0,
        now=0.0,
        authenticate=check,
    )
    relay = mp.add_path(PathKind.RELAY, 0.0)
    assert mp.receive(relay, _forged(1), 0.0) == []  # waits for frame 0
    with pytest.raises(LocalProtocolError, match="passed its check"):
        mp.receive(relay, _forged(0), 0.0)


class _CountingAead:
    """An AEAD that counts its decryptions (to show that no frame is decrypted twice)."""

    def __init__(self, aead: Any, calls: list[int]) -> None:
        self._aead, self._calls = aead, calls

    def decrypt(self, nonce: bytes, data: bytes, ad: bytes | None) -> bytes:
        self._calls.append(1)
        return bytes(self._aead.decrypt(nonce, data, ad))


def test_the_authenticator_follows_key_updates_ahead_of_the_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A layer above that reads late (a stream session's reader): the multipath layer
    passes frames across key updates, some ahead of their turn, long before the channel
    opens them; each frame is decrypted once in all."""
    import didsession.session.channel as channel_module

    pair = SessionPair.establish(limits=Limits(messages=16))
    a, b = pair.initiator, pair.responder
    frames = pair.split(b, b"".join(a.seal(b"%d" % i) for i in range(100)))
    calls: list[int] = []
    make_aead = channel_module.make_aead
    monkeypatch.setattr(
        channel_module, "make_aead", lambda suite, key: _CountingAead(make_aead(suite, key), calls)
    )
    b._rx_aead = _CountingAead(b._rx_aead, calls)  # type: ignore[assignment]
    b._rx_decrypt = b._rx_aead.decrypt
    check = b.authenticator()
    assert len(frames) > 100  # KEY_UPDATEs among them
    # As the multipath layer does: later frames first (they overtook the others on another
    # path), then the rest, then the later ones again in their turn.
    assert all(check(f) for f in frames[40:])
    assert all(check(f) for f in frames)
    assert len(calls) == len(frames)
    assert not check(_forged(len(frames)))  # the next counter, not sealed by a
    assert not check(_forged(len(frames) + 5, epoch=a.send_epoch & 0x0F))
    assert b.receive_epoch == 0 and b.frames_received == 0  # the channel itself: unmoved
    assert len(b._authentic) == len(frames)  # plaintexts kept for open
    del calls[:]
    got = [p for f in frames if (p := b.open(f)) is not None]
    assert got == [b"%d" % i for i in range(100)]
    assert calls == [] and not b._authentic  # open decrypted nothing again
    assert b.receive_epoch == a.send_epoch


def test_the_authenticator_looks_at_most_max_epoch_skip_epochs_ahead() -> None:
    """A frame ahead of its turn is checked under a key derived ahead, but not more than
    MAX_EPOCH_SKIP epochs ahead (as on datagram paths, spec §8.3): that bounds the work a
    forger can cause.  A frame further ahead is neither passed nor failed (None: it may be
    genuine) until its turn, unless no genuine frame can be that far ahead."""
    pair = SessionPair.establish(limits=Limits(messages=16))
    a, b = pair.initiator, pair.responder
    frames = pair.split(b, b"".join(a.seal(b"%d" % i) for i in range(200)))
    epochs = [(HEADER.unpack_from(f)[1] >> 56) & 0x0F for f in frames]
    check = b.authenticator()
    near = epochs.index(MAX_EPOCH_SKIP)
    far = epochs.index(MAX_EPOCH_SKIP + 1)
    assert check(frames[near]) and check(frames[far]) is None
    # An epoch further ahead than one key update a frame reaches: not the peer's.
    assert check(_forged(1, epoch=MAX_EPOCH_SKIP + 1)) is False
    assert all(check(f) for f in frames)  # in their turn, every one passes
    with pytest.raises(LocalProtocolError):
        b.authenticator()  # one check per channel


def test_a_forged_frame_never_changes_the_channel() -> None:
    """The check fails a forgery without raising or touching the channel; and the plaintext
    it keeps for a genuine frame serves those bytes only: other bytes with the same header
    are decrypted by ``open`` (and fail it, as on a single stream)."""
    pair = SessionPair.establish()
    a, b = pair.initiator, pair.responder
    check = b.authenticator()
    assert not check(_forged(0)) and not check(b"short")
    assert b.state is ChannelState.ESTABLISHED and not b._authentic
    (frame,) = pair.seal(a, b"hello")
    assert check(frame) and b.open(frame) == b"hello"
    (frame,) = pair.seal(a, b"world")
    assert check(frame)
    tampered = frame[:-1] + bytes([frame[-1] ^ 1])
    with pytest.raises(DecryptError):
        b.open(tampered)
    assert b.state is ChannelState.ERROR


# -- how many paths (spec §15.2) ----------------------------------------------------------------


def _hello_only(net: Net, i: int, count: int) -> list[int]:
    """``count`` connections to side ``i`` from someone who saw a HELLO (the attach id is in
    clear): each sends a HELLO in the peer's role and never a PROOF."""
    s = net.side(i)
    peer_role = net.side(1 - i).mp._own
    pids = []
    for k in range(count):
        pid = s.mp.add_path(PathKind.DIRECT, net.now, via="accepted")
        s.mp.receive(pid, b"DSP\x01" + s.channel.attach_id + peer_role + bytes([k]) * 16, net.now)
        pids.append(pid)
    net.collect(i)
    for pid in pids:
        net.wires.pop((i, pid), None)  # (HELLO, PROOF: to nobody)
    return pids


def _check_one(net: Net, pa: int, pb: int) -> None:
    """Run the path check of a's path ``pa`` and b's path ``pb`` (one connection)."""
    for _ in range(3):
        for i, src, dst in ((0, pa, pb), (1, pb, pa)):
            for pid, data in net.side(i).mp.data_to_send():
                if pid == src:
                    net.side(1 - i).mp.receive(dst, data, net.now)
    for side in (net.a, net.b):
        side.events += side.mp.events()


def test_connections_that_never_prove_anything_do_not_keep_a_genuine_path_out() -> None:
    """Connections holding a HELLO without a PROOF (renewed before they time out) must not
    fill the session's paths: a genuine direct path still verifies and becomes active; the
    oldest unproven connection is evicted instead, and none of them is kept in paths()."""
    net = Net.make()
    relay = net.add(PathKind.RELAY)
    mp = net.b.mp
    old = net.add_path_checked()  # closed, but kept for status displays
    net.cut(old)
    squatters = _hello_only(net, 1, 12)
    pa = net.a.mp.add_path(PathKind.DIRECT, net.now)
    pb = mp.add_path(PathKind.DIRECT, net.now)
    _check_one(net, pa, pb)
    assert mp.active == pb and net.a.mp.active == pa
    assert any(isinstance(e, PathVerified) and e.path == pb for e in net.b.events)
    checking = [p for p in mp._paths.values() if p.state.value == "checking"]
    assert len(checking) <= CFG.max_checking
    evicted = [e for e in net.b.events if isinstance(e, PathClosed) and "evicted" in e.reason]
    assert {e.path for e in evicted} == set(squatters[: len(evicted)]) and evicted
    for _ in range(40):  # churn of squatters
        _hello_only(net, 1, 3)
    mp.handle_timer(net.now + CFG.check_timeout)  # and their timeouts
    listed = {p["id"]: p for p in mp.paths()}
    assert listed[old]["state"] == "closed"  # not pushed out by the squatters
    assert mp.active == pb and mp.state is MultipathState.OPEN and relay in listed


def test_paths_are_capped_and_closed_ones_are_forgotten() -> None:
    """At most max_paths verified paths and max_checking paths being checked: a new one
    beyond max_checking evicts the oldest being checked; a path verified beyond max_paths
    is closed at once with a reason saying why.  Closed paths leave the table (a long
    session's churn must not grow it); the last few stay in paths() for status displays."""
    cfg = MultipathConfig(max_paths=2, max_checking=2)
    net = Net.make(cfg=cfg)
    mp = net.a.mp
    relay = net.add(PathKind.RELAY)
    d1 = mp.add_path(PathKind.DIRECT, net.now)
    d2 = mp.add_path(PathKind.DIRECT, net.now)
    mp.data_to_send()
    mp.events()
    d3 = mp.add_path(PathKind.DIRECT, net.now)
    (evicted,) = mp.events()
    assert isinstance(evicted, PathClosed) and evicted.path == d1
    assert "evicted" in evicted.reason and "2 paths being checked" in evicted.reason
    assert [pid for pid, _ in mp.data_to_send()] == [d3]  # its HELLO
    assert mp.receive(d1, b"DSP\x01", net.now) == []
    assert sorted(mp._paths) == [relay, d2, d3]
    for _ in range(50):  # churn: paths come and go
        mp.path_lost(d2, net.now)
        d2 = mp.add_path(PathKind.DIRECT, net.now)
    assert sorted(mp._paths) == sorted([relay, d2, d3])
    listed = mp.paths()
    assert len(listed) <= 2 * cfg.max_paths + cfg.max_checking
    ids = [int(str(p["id"])) for p in listed]
    assert ids == sorted(ids)
    closed = [p for p in listed if p["state"] == "closed"]
    assert closed and all(p["reason"] for p in closed)
    assert mp.active == relay and mp.state is MultipathState.OPEN


def test_a_path_verified_beyond_max_paths_is_refused() -> None:
    net = Net.make(cfg=MultipathConfig(max_paths=1))
    relay = net.add(PathKind.RELAY)
    pa = net.a.mp.add_path(PathKind.DIRECT, net.now)
    pb = net.b.mp.add_path(PathKind.DIRECT, net.now)
    _check_one(net, pa, pb)
    for side, pid in ((net.a, pa), (net.b, pb)):
        assert side.mp.active == relay and pid not in side.mp._paths
        assert any(
            isinstance(e, PathClosed) and e.path == pid and "1 verified paths" in e.reason
            for e in side.events
        )
        assert pid not in [p["id"] for p in side.mp.paths()]  # refused: not kept
