"""The multipath asyncio shell over real loopback sockets: a session starts on a stand-in
"relay" path (a plain TCP connection), a listener and the dialler find the direct path by
its path check, frames move to it, and when it is cut the relay takes over again, all
while a stream of numbered messages flows: none lost, none twice, none out of order."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from didsession.candidates import Candidate, CandidateType, reusable_tcp_socket
from didsession.errors import MediationError
from didsession.relay_transport import MAX_RELAY_FRAME, RelayPath
from didsession.session import Channel, ChannelState, SessionConfig
from didsession.session.frame import HEADER, OVERHEAD, FrameType, word
from didsession.session.multipath import MultipathConfig, MultipathState, PathClosed, PathKind
from didsession.session.multipath_asyncio import (
    MultipathTransport,
    PathListener,
    PathProtocol,
    dial_direct,
    multipath_for,
)
from tests.session_pair import SessionPair

CFG = MultipathConfig(ping_interval=0.2, dead_after=1.0, ack_delay=0.02)


class Upper(asyncio.Protocol):
    """What sits above the multipath transport: opens frames with the channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.got: list[bytes] = []
        self.lost: list[Exception | None] = []
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            n = int.from_bytes(self.buf[:4], "big") + 4
            if len(self.buf) < n:
                break
            frame, self.buf = self.buf[:n], self.buf[n:]
            payload = self.channel.open(frame)
            if payload is not None:
                self.got.append(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def _relay_pair() -> tuple[asyncio.Transport, asyncio.Transport]:
    """Two connected transports standing in for the two ends of a relay link."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    ta, _ = await loop.connect_accepted_socket(PathProtocol, sock=a)
    tb, _ = await loop.connect_accepted_socket(PathProtocol, sock=b)
    return ta, tb


def _host(port: int) -> list[Candidate]:
    return [Candidate(CandidateType.HOST, "tcp", "127.0.0.1", port, 2130706431)]


class _Ends:
    """An established session's two multipath transports, both on a stand-in relay path,
    and a listener that routes direct connections naming b's session to b."""

    async def start(self) -> _Ends:
        loop = asyncio.get_running_loop()
        pair = SessionPair.establish()
        self.ch_a, self.ch_b = pair.initiator, pair.responder
        self.up_a, self.up_b = Upper(self.ch_a), Upper(self.ch_b)
        self.mp_a = MultipathTransport(
            multipath_for(self.ch_a, now=loop.time(), config=CFG), self.up_a
        )
        self.mp_b = MultipathTransport(
            multipath_for(self.ch_b, now=loop.time(), config=CFG), self.up_b
        )
        self.ra, rb = await _relay_pair()
        self.mp_a.add_path(PathKind.RELAY, self.ra, local="relay", remote="relay")
        self.mp_b.add_path(PathKind.RELAY, rb, local="relay", remote="relay")
        self.listener = PathListener()
        await self.listener.start(reusable_tcp_socket(0, "127.0.0.1"))
        self.listener.register(self.ch_b.attach_id, self.mp_b)
        return self


def test_relay_then_direct_then_fallback_over_real_sockets() -> None:
    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        ends = await _Ends().start()
        ch_a, mp_a, up_b, mp_b = ends.ch_a, ends.mp_a, ends.up_b, ends.mp_b
        listener = ends.listener

        sent: list[bytes] = []

        async def pump(n: int) -> None:
            for _ in range(n):
                payload = b"msg %d" % len(sent)
                sent.append(payload)
                mp_a.write(ch_a.seal(payload))
                await asyncio.sleep(0.002)

        pumping = loop.create_task(pump(400))
        await asyncio.sleep(0.1)
        assert mp_a.status()["path"] == "relay"
        up = await dial_direct(mp_a, None, _host(listener.port), timeout=5.0)
        assert up and mp_a.status()["path"] == "direct"
        await asyncio.wait_for(mp_b.direct_up.wait(), 5.0)
        direct = mp_a.mp.active
        await asyncio.sleep(0.2)
        rtt = mp_a.status()["rtt_ms"]
        # Cut the direct path under the stream of messages: fallback to the relay.
        transport = mp_a._transports[direct]
        transport.abort()  # type: ignore[attr-defined]
        await pumping
        await asyncio.sleep(0.5)
        status = mp_a.status()
        listener.close()
        mp_a.close()
        mp_b.close()
        await asyncio.sleep(0.05)
        return {"sent": sent, "got": up_b.got, "status": status, "rtt": rtt}

    result = asyncio.run(scenario())
    assert result["got"] == result["sent"]
    assert result["status"]["path"] == "relay"
    assert result["status"]["upgrades"] == 1 and result["status"]["fallbacks"] == 1
    assert result["rtt"] is not None and result["rtt"] < 100


def test_listener_closes_connections_that_name_no_session() -> None:
    async def scenario() -> bytes:
        listener = PathListener()
        await listener.start(reusable_tcp_socket(0, "127.0.0.1"))
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"DSP\x01" + bytes(16) + b"I" + bytes(16))
        data = await asyncio.wait_for(reader.read(), 5.0)
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", listener.port)
        writer2.write(b"GET / HTTP/1.1\r\n\r\n")
        data += await asyncio.wait_for(reader2.read(), 5.0)
        writer.close()
        writer2.close()
        listener.close()
        return data

    assert asyncio.run(scenario()) == b""


def test_bytes_before_the_path_is_added_are_kept() -> None:
    """A connection can deliver the peer's first bytes before it is added as a path (TCP
    simultaneous open: the peer's HELLO rides on the handshake): they must not be lost."""

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        pair = SessionPair.establish()
        ch_a, ch_b = pair.initiator, pair.responder
        up_b = Upper(ch_b)
        mp_a = MultipathTransport(multipath_for(ch_a, now=loop.time(), config=CFG), Upper(ch_a))
        mp_b = MultipathTransport(multipath_for(ch_b, now=loop.time(), config=CFG), up_b)
        ra, rb = await _relay_pair()
        mp_a.add_path(PathKind.RELAY, ra)
        for i in range(3):
            mp_a.write(ch_a.seal(b"early %d" % i))
        await asyncio.sleep(0.1)  # they arrive at b's PathProtocol, which has no owner yet
        mp_b.add_path(PathKind.RELAY, rb)
        await asyncio.sleep(0.1)
        mp_a.close()
        mp_b.close()
        return up_b.got

    assert asyncio.run(scenario()) == [b"early 0", b"early 1", b"early 2"]


class ClosingUpper(Upper):
    """An upper layer that closes its multipath transport when the peer's CLOSE arrives,
    as MPyC's link does."""

    mpt: MultipathTransport

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.channel.state is ChannelState.CLOSED:
            self.mpt.close()


def test_close_lingers_until_the_peer_has_the_close(monkeypatch: Any) -> None:
    """a closes while b does not read (its CLOSE is in flight): a keeps its paths and its
    upper layer hears nothing until b has read the CLOSE and acknowledged it; if b never
    does, a gives up after CLOSE_LINGER (spec §15.8)."""
    import didsession.session.multipath_asyncio as mpa

    monkeypatch.setattr(mpa, "CLOSE_LINGER", 0.5)

    async def scenario(b_reads: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        pair = SessionPair.establish()
        up_a, up_b = Upper(pair.initiator), ClosingUpper(pair.responder)
        mp_a = MultipathTransport(multipath_for(pair.initiator, now=loop.time()), up_a)
        mp_b = MultipathTransport(multipath_for(pair.responder, now=loop.time()), up_b)
        up_b.mpt = mp_b
        ra, rb = await _relay_pair()
        mp_a.add_path(PathKind.RELAY, ra)
        mp_b.add_path(PathKind.RELAY, rb)
        rb.pause_reading()  # a's CLOSE stays in flight until b reads
        mp_a.write(pair.initiator.seal(b"last words"))
        pair.initiator.close()
        mp_a.write(b"".join(pair.initiator.data_to_send()))
        started = loop.time()
        mp_a.close()
        await asyncio.sleep(0.2)
        lost_while_in_flight = list(up_a.lost)
        if b_reads:
            rb.resume_reading()
        await mp_a.wait_closed()
        took = loop.time() - started
        await asyncio.sleep(0.05)
        mp_b.close()
        return {
            "early": lost_while_in_flight,
            "lost": up_a.lost,
            "took": took,
            "b_got": up_b.got,
            "b_closed": pair.responder.state.name,
        }

    read = asyncio.run(scenario(b_reads=True))
    assert read["early"] == []  # a waited while its CLOSE was in flight
    assert read["lost"] == [None]  # then its upper layer heard a clean close
    assert read["b_got"] == [b"last words"] and read["b_closed"] == "CLOSED"
    assert 0.2 <= read["took"] < 0.45  # settled by b's ACK, not by the time limit

    unread = asyncio.run(scenario(b_reads=False))
    assert unread["early"] == [] and unread["lost"] == [None]
    assert unread["took"] >= 0.5  # gave up after CLOSE_LINGER
    assert unread["b_got"] == []


def test_listener_refuses_a_direct_path_for_a_session_that_has_ended() -> None:
    """A direct connection that names a session whose paths are all gone (the demo's
    program-mismatch stop raced the peer's upgrade) is closed quietly: no error from
    inside the event loop's read callback."""

    async def scenario() -> tuple[bool, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        ends = await _Ends().start()
        mp_a, mp_b, listener = ends.mp_a, ends.mp_b, ends.listener
        ends.ra.pause_reading()  # a does not hear b's CLOSE before it dials
        mp_b.close()  # ended (and so unregistered) ...
        listener.sessions[ends.ch_b.attach_id] = mp_b  # ... but still routed: the race
        await asyncio.sleep(0.05)
        up = await dial_direct(mp_a, None, _host(listener.port), timeout=1.0)
        listener.close()
        mp_a.close()
        await asyncio.sleep(0.05)
        return up, errors

    up, errors = asyncio.run(scenario())
    assert not up
    assert errors == []


class _RelayLink:
    """Stands in for one end of a relay link (didsession.relay_client.RelayLink) with the
    mediator's rule that matters here: a frame over 64 KiB ends the link.  (The relay
    itself is tested against the real mediator in test_mediator_stun_relay.py.)"""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.sizes: list[int] = []

    async def send(self, frame: bytes) -> None:
        if len(frame) > MAX_RELAY_FRAME:
            raise MediationError("relay closed: frame too big", code="e.p.xfer.closed")
        self.sizes.append(len(frame))
        await self.outbox.put(frame)

    async def recv(self) -> bytes:
        return await self.inbox.get()


def test_fallback_to_the_relay_resends_more_than_one_relay_frame() -> None:
    """What the direct path left unacknowledged goes back over the relay in frames the
    mediator accepts (one write of it all made the mediator drop the session)."""

    async def scenario() -> tuple[list[bytes], list[bytes], dict[str, Any], list[int]]:
        loop = asyncio.get_running_loop()
        pair = SessionPair.establish()
        ch_a, ch_b = pair.initiator, pair.responder
        up_a, up_b = Upper(ch_a), Upper(ch_b)
        mp_a = MultipathTransport(multipath_for(ch_a, now=loop.time(), config=CFG), up_a)
        mp_b = MultipathTransport(multipath_for(ch_b, now=loop.time(), config=CFG), up_b)
        ab: asyncio.Queue[bytes] = asyncio.Queue()
        ba: asyncio.Queue[bytes] = asyncio.Queue()
        link_a, link_b = _RelayLink(ba, ab), _RelayLink(ab, ba)
        stacks = contextlib.AsyncExitStack(), contextlib.AsyncExitStack()
        relay_a = RelayPath(link_a, PathProtocol(), stacks[0])
        relay_b = RelayPath(link_b, PathProtocol(), stacks[1])
        mp_a.add_path(PathKind.RELAY, relay_a, local="relay", remote="relay")
        mp_b.add_path(PathKind.RELAY, relay_b, local="relay", remote="relay")
        listener = PathListener()
        await listener.start(reusable_tcp_socket(0, "127.0.0.1"))
        listener.register(ch_b.attach_id, mp_b)
        assert await dial_direct(mp_a, None, _host(listener.port), timeout=5.0)
        await asyncio.wait_for(mp_b.direct_up.wait(), 5.0)
        await asyncio.sleep(0.1)
        # 160 KB in flight on the direct path, cut before anything is acknowledged
        sent = [bytes([i]) * 40_000 for i in range(4)]
        for payload in sent:
            mp_a.write(ch_a.seal(payload))
        mp_a._transports[mp_a.mp.active].abort()  # type: ignore[attr-defined]
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(up_b.got) >= len(sent):
                break
        status = mp_a.status()
        listener.close()
        mp_a.close()
        mp_b.close()
        await asyncio.sleep(0.05)
        return sent, up_b.got, status, link_a.sizes

    sent, got, status, sizes = asyncio.run(scenario())
    assert got == sent
    assert status["path"] == "relay" and status["fallbacks"] == 1
    assert sizes and max(sizes) <= MAX_RELAY_FRAME and sum(sizes) > MAX_RELAY_FRAME


def test_a_path_refuses_frames_longer_than_the_negotiated_payload() -> None:
    """multipath_for bounds frames by this party's max_payload (spec §6.4), not by the
    multipath layer's 16 MiB ceiling: a longer frame is refused from its length alone."""
    pair = SessionPair.establish(responder_config=SessionConfig(max_payload=4096))
    for channel, limit in ((pair.responder, 4096), (pair.initiator, 1 << 20)):
        mp = multipath_for(channel, now=0.0)
        pid = mp.add_path(PathKind.RELAY, 0.0)
        head = (limit + OVERHEAD - 4).to_bytes(4, "big") + bytes(8)  # fits: waits for more
        assert mp.receive(pid, head, 0.0) == []
        pid = mp.add_path(PathKind.RELAY, 0.0)  # (a channel gives one authenticator)
        assert mp.receive(pid, (limit + OVERHEAD - 3).to_bytes(4, "big") + bytes(8), 0.0) == []
        closed = [e for e in mp.events() if isinstance(e, PathClosed)]
        assert closed and "on a multipath path" in closed[0].reason


def test_a_forged_frame_on_the_relay_closes_only_the_relay() -> None:
    """Over real sockets: the "mediator" writes a forged frame with the counter b expects
    next into the relay while the genuine frames travel on the direct path.  b closes the
    relay (an event says why), opens every genuine frame once and in order, and the session
    goes on on the direct path."""

    async def scenario() -> dict[str, Any]:
        ends = await _Ends().start()
        ch_a, mp_a, up_b, mp_b = ends.ch_a, ends.mp_a, ends.up_b, ends.mp_b
        events: list[object] = []
        mp_b.on_event = events.append
        assert await dial_direct(mp_a, None, _host(ends.listener.port), timeout=5.0)
        await asyncio.wait_for(mp_b.direct_up.wait(), 5.0)
        sent = [b"before %d" % i for i in range(3)]
        for payload in sent:
            mp_a.write(ch_a.seal(payload))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(up_b.got) == len(sent):
                break
        forged = HEADER.pack(8 + 48, word(FrameType.DATA, 0, len(sent))) + bytes(48)
        ends.ra.write(forged)  # into the relay, as the mediator could
        await asyncio.sleep(0.1)
        more = [b"after %d" % i for i in range(3)]
        for payload in more:
            mp_a.write(ch_a.seal(payload))
        sent += more
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(up_b.got) == len(sent):
                break
        result = {
            "sent": sent,
            "got": list(up_b.got),
            "events": events,
            "state": mp_b.mp.state,
            "path": mp_b.status()["path"],
            "channel": ends.ch_b.state,
        }
        ends.listener.close()
        mp_a.close()
        mp_b.close()
        await asyncio.sleep(0.05)
        return result

    result = asyncio.run(scenario())
    assert result["got"] == result["sent"]
    assert result["channel"] is ChannelState.ESTABLISHED
    assert result["state"] is MultipathState.OPEN and result["path"] == "direct"
    assert [
        e.kind
        for e in result["events"]
        if isinstance(e, PathClosed) and "failed authentication" in e.reason
    ] == [PathKind.RELAY]


def test_a_session_checks_at_most_max_checking_paths() -> None:
    """One path more than ``max_checking`` being checked (a listener adopts whatever names
    the session) closes the oldest one being checked at once; an evicted path is not kept
    in the status (connections that prove nothing must not push real paths out)."""

    async def scenario() -> tuple[list[bool], list[object]]:
        loop = asyncio.get_running_loop()
        pair = SessionPair.establish()
        cfg = MultipathConfig(max_checking=1)
        mpt = MultipathTransport(
            multipath_for(pair.initiator, now=loop.time(), config=cfg), Upper(pair.initiator)
        )
        transports = []
        others = []
        for _ in range(3):
            t, other = await _relay_pair()
            transports.append(t)
            others.append(other)
        mpt.add_path(PathKind.RELAY, transports[0])
        mpt.add_path(PathKind.DIRECT, transports[1])
        mpt.add_path(PathKind.DIRECT, transports[2])
        closing = [t.is_closing() for t in transports]
        ids = [p["id"] for p in mpt.status()["paths"]]
        mpt.close()
        for t in transports + others:
            t.close()
        await asyncio.sleep(0.01)
        return closing, ids

    closing, ids = asyncio.run(scenario())
    assert closing == [False, True, False]
    assert ids == [0, 2]


def test_a_session_that_ends_leaves_the_listener() -> None:
    """A closed session, and one whose paths are all gone, is unregistered from the
    listener (it kept every session of a long-running process before); a session that has
    ended is not registered again."""

    async def scenario() -> list[bool]:
        ends = await _Ends().start()
        attach_id = ends.ch_a.attach_id  # (both ends of a session share it)
        listener_b = ends.listener  # b's process; b is registered already
        listener_a = PathListener()  # a's process (not listening: routing is what counts)
        listener_a.register(attach_id, ends.mp_a)
        seen = [attach_id in listener_b.sessions, attach_id in listener_a.sessions]
        ends.mp_b.close()  # closed by its owner
        seen.append(attach_id in listener_b.sessions)
        ends.ra.abort()  # a's only path is gone: a's session is lost
        for _ in range(100):
            await asyncio.sleep(0.01)
            if ends.up_a.lost:
                break
        seen.append(ends.mp_a.mp.state is MultipathState.LOST)
        seen.append(attach_id in listener_a.sessions)
        listener_a.register(attach_id, ends.mp_a)
        seen.append(attach_id in listener_a.sessions)
        listener_b.close()
        ends.mp_a.close()
        await asyncio.sleep(0.05)
        return seen

    assert asyncio.run(scenario()) == [True, True, False, True, False, False]
