"""The multipath core (spec/session.md §13) in memory: two real channels, paths as byte
queues that can be delayed, cut or tampered with.  Whatever happens to the paths, the
receiving channel must see every payload exactly once and in order."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from didsession.errors import FrameError
from didsession.session import Channel, ChannelState
from didsession.session.keyschedule import path_check_key
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
    def make(cls, key_b: bytes | None = None, cfg: MultipathConfig = CFG) -> Net:
        pair = SessionPair.establish()
        sides = []
        for ch, key in ((pair.initiator, None), (pair.responder, key_b)):
            mp = Multipath(
                role=ch.role,
                key=key or path_check_key(ch.resumption().secret),
                attach_id=ch.attach_id,
                rx_next=0,
                now=0.0,
                config=cfg,
            )
            sides.append(Side(ch, mp))
        return cls(sides[0], sides[1])

    @classmethod
    def upgraded(cls) -> tuple[Net, int, int]:
        """A net whose sessions started on the relay and moved to a checked direct path:
        (net, relay, direct)."""
        net = cls.make()
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
