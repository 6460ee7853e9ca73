"""The session channel (spec §6-§9): frames, tampering, replay, reordering, rekey, close."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_pair import SessionPair, payloads

from didsession.errors import (
    DecryptError,
    FrameError,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
)
from didsession.session import (
    OVERHEAD,
    REPLAY_WINDOW,
    ChannelState,
    Direction,
    FrameDecoder,
    KeyUpdated,
    Limits,
    MessageReceived,
    PathKind,
    SessionClosed,
    Suite,
)
from didsession.session.frame import (
    Close,
    FrameHeader,
    FrameType,
    KeyUpdate,
    pull_control,
    pull_header,
    push_control,
    push_header,
    push_length_prefixed,
)

SMALL = Limits(messages=16, bytes=1 << 24, seconds=60)
_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pair(path: PathKind = PathKind.STREAM, **kw: object) -> SessionPair:
    return SessionPair.establish(path=path, **kw)  # type: ignore[arg-type]


# -- codecs -------------------------------------------------------------------------------


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(FrameType),
    st.integers(0, 15),
    st.integers(0, 2**56 - 1),
)
def test_header_codec_round_trip(first: int, kind: FrameType, epoch: int, counter: int) -> None:
    header = FrameHeader(first, kind, epoch, counter)
    raw = push_header(header)
    assert len(raw) == 12
    assert pull_header(raw) == header


def test_header_golden_bytes() -> None:
    raw = push_header(FrameHeader(0x29, FrameType.CONTROL, 3, 0x0102030405))
    assert raw.hex() == "00000029" + "13" + "00000102030405"
    with pytest.raises(FrameError):
        pull_header(bytes.fromhex("00000029" + "23" + "00000102030405"))  # reserved bit
    with pytest.raises(FrameError):
        pull_header(b"\x00" * 11)


def test_control_codec() -> None:
    for control in (KeyUpdate(True), KeyUpdate(False), Close(""), Close("e.p.msg.decrypt")):
        assert pull_control(push_control(control)) == control
    assert push_control(KeyUpdate(True)) == b"\x01\x01"
    assert push_control(Close("x.y")) == b"\x02x.y"
    for bad in (b"", b"\x01", b"\x01\x02", b"\x01\x00\x00", b"\x03", b"\x02 ", b"\x02" + b"a" * 65):
        with pytest.raises(RemoteProtocolError) as err:
            pull_control(bad)
        assert err.value.code == "e.p.msg.session.control"
    with pytest.raises(LocalProtocolError):
        push_control(Close("not printable\n"))


@given(st.lists(st.binary(max_size=40), max_size=8), st.data())
def test_decoder_byte_at_a_time_equals_all_at_once(items: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(push_length_prefixed(i) for i in items)
    whole = FrameDecoder(100, min_size=0)
    whole.feed(stream)
    expected = whole.frames()
    assert [f[4:] for f in expected] == items
    one = FrameDecoder(100, min_size=0)
    got: list[bytes] = []
    for b in stream:
        one.feed(bytes([b]))
        got += one.frames()
    assert got == expected
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    chunked = FrameDecoder(100, min_size=0)
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        chunked.feed(stream[a:b])
        got += chunked.frames()
    assert got == expected and chunked.buffered == 0


def test_decoder_bounds_poison_it() -> None:
    dec = FrameDecoder(64)
    dec.feed(push_length_prefixed(b"x" * 65))
    with pytest.raises(FrameError):
        dec.next_frame()
    with pytest.raises(FrameError):
        dec.next_frame()
    small = FrameDecoder(64)
    small.feed(push_length_prefixed(b"x" * 23))
    with pytest.raises(FrameError):
        small.next_frame()


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("path", list(PathKind))
def test_round_trip_and_overhead(suite: Suite, path: PathKind) -> None:
    p = pair(path, suite=suite)
    for size in (0, 1, 2, 10, 32, 1000, 65536):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        frame = p.initiator.seal(payload)
        assert len(frame) - len(payload) == OVERHEAD == 28
        assert p.responder.open(frame) == payload
        back = p.responder.seal(payload)
        assert p.initiator.open(back) == payload
    assert p.initiator.frames_sent == 7


def test_receive_returns_events() -> None:
    p = pair()
    assert p.responder.receive(p.initiator.seal(b"m")) == [MessageReceived(b"m")]


def test_oversize_payload_is_a_local_error() -> None:
    p = pair()
    with pytest.raises(LocalProtocolError):
        p.initiator.seal(bytes(p.initiator.max_payload + 1))
    assert p.initiator.state is ChannelState.ERROR


# -- tampering --------------------------------------------------------------------------------


def _flip(frame: bytes, bit: int) -> bytes:
    out = bytearray(frame)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


_KINDS = st.sampled_from(["data", "key_update", "close"])


def _frame_of_kind(p: SessionPair, kind: str, size: int) -> bytes:
    """One frame from the initiator: DATA of ``size`` bytes, KEY_UPDATE or CLOSE."""
    if kind == "data":
        return p.initiator.seal(bytes(size))
    if kind == "key_update":
        p.initiator.rekey(request_peer=size % 2 == 1)
    else:
        p.initiator.close("e.p.me.res" if size % 2 else "")
    (frame,) = p.initiator.data_to_send()
    return frame


@_FAST
@given(_KINDS, st.integers(0, 30), st.data())
def test_stream_bit_flip_is_fatal(kind: str, size: int, data: st.DataObject) -> None:
    p = pair()
    p.responder.open(p.initiator.seal(b"warm-up"))  # a counter above zero
    frame = _frame_of_kind(p, kind, size)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    with pytest.raises((DecryptError, FrameError)):
        p.responder.open(_flip(frame, bit))
    assert p.responder.state is ChannelState.ERROR
    (close,) = p.pending(p.responder)
    if p.initiator.state is ChannelState.ESTABLISHED:
        event = p.initiator.receive(close)[-1]
        assert isinstance(event, SessionClosed) and event.by_peer
        assert event.code in ("e.p.msg.decrypt", "e.p.msg.frame")


@_FAST
@given(_KINDS, st.integers(0, 30), st.data())
def test_datagram_bit_flip_drops_only_that_datagram(
    kind: str, size: int, data: st.DataObject
) -> None:
    p = pair(PathKind.DATAGRAM)
    first = p.initiator.seal(b"first")
    frame = _frame_of_kind(p, kind, size)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    with pytest.raises((DecryptError, FrameError)):
        p.responder.open(_flip(frame, bit))
    assert p.responder.state is ChannelState.ESTABLISHED
    assert p.responder.data_to_send() == []
    assert p.responder.open(first) == b"first"
    assert p.responder.open(frame) == (bytes(size) if kind == "data" else None)
    if kind == "close":
        assert p.responder.state is ChannelState.CLOSED
    else:
        assert p.responder.open(p.initiator.seal(b"next")) == b"next"


@_FAST
@given(st.binary(max_size=80), st.sampled_from(PathKind))
def test_arbitrary_bytes_give_remote_errors(blob: bytes, path: PathKind) -> None:
    p = pair(path)
    decoder = FrameDecoder(1 << 20)
    try:
        if path is PathKind.STREAM:
            decoder.feed(blob)
            for frame in decoder.frames():
                p.responder.open(frame)
        else:
            p.responder.open(blob)
    except RemoteProtocolError:
        pass
    if path is PathKind.DATAGRAM:
        assert p.responder.state is ChannelState.ESTABLISHED
        assert p.responder.open(p.initiator.seal(b"still fine")) == b"still fine"


@pytest.mark.parametrize("path", list(PathKind))
def test_truncated_frames(path: PathKind) -> None:
    p = pair(path)
    frame = p.initiator.seal(b"hello")
    for cut in (0, 5, 12, 27, len(frame) - 1):
        q = pair(path)
        with pytest.raises((DecryptError, FrameError)):
            q.responder.open(frame[:cut])


# -- replay and foreign sessions --------------------------------------------------------------


def test_stream_replay_is_fatal() -> None:
    p = pair()
    frame = p.initiator.seal(b"once")
    assert p.responder.open(frame) == b"once"
    with pytest.raises(ReplayError):
        p.responder.open(frame)
    assert p.responder.state is ChannelState.ERROR


def test_stream_gap_is_fatal() -> None:
    p = pair()
    p.initiator.seal(b"lost")
    with pytest.raises(RemoteProtocolError) as err:
        p.responder.open(p.initiator.seal(b"after the gap"))
    assert err.value.code == "e.p.msg.session.order"


def test_datagram_replay_is_dropped() -> None:
    p = pair(PathKind.DATAGRAM)
    frames = [p.initiator.seal(bytes([i])) for i in range(5)]
    for f in frames:
        p.responder.open(f)
    for f in frames:
        with pytest.raises(ReplayError):
            p.responder.open(f)
    assert p.responder.state is ChannelState.ESTABLISHED


def test_datagram_older_than_window_is_dropped() -> None:
    p = pair(PathKind.DATAGRAM)
    frames = [p.initiator.seal(b"") for _ in range(REPLAY_WINDOW + 1)]
    assert p.responder.open(frames[-1]) == b""
    assert p.responder.open(frames[1]) == b""  # exactly at the window's edge
    with pytest.raises(ReplayError):
        p.responder.open(frames[0])


@pytest.mark.parametrize("path", list(PathKind))
def test_frames_of_another_session_are_rejected(path: PathKind) -> None:
    p, q = pair(path, seed="one"), pair(path, seed="two")
    assert p.initiator.session_id != q.initiator.session_id
    from_q, from_p = q.initiator.seal(b"wrong session"), p.responder.seal(b"wrong session")
    with pytest.raises((DecryptError, FrameError)):
        p.responder.open(from_q)
    with pytest.raises((DecryptError, FrameError)):
        q.initiator.open(from_p)


@_FAST
@given(st.permutations(range(60)))
def test_datagram_reordering_inside_the_window(order: list[int]) -> None:
    p = pair(PathKind.DATAGRAM)
    frames = [p.initiator.seal(i.to_bytes(2, "big")) for i in range(60)]
    got = [p.responder.open(frames[i]) for i in order]
    assert got == [i.to_bytes(2, "big") for i in order]
    with pytest.raises(ReplayError):
        p.responder.open(frames[order[0]])


# -- key update -------------------------------------------------------------------------------


def test_count_based_rekey_on_a_stream_loses_nothing() -> None:
    p = pair(limits=SMALL)
    received: list[bytes] = []
    for i in range(300):
        sender = p.initiator if i % 3 else p.responder
        received += payloads(p.send(sender, i.to_bytes(2, "big")))
    assert received == [i.to_bytes(2, "big") for i in range(300)]
    # 15 data frames + 1 KEY_UPDATE per epoch
    assert p.initiator.send_epoch == p.responder.receive_epoch == 200 // 15
    assert p.responder.send_epoch == p.initiator.receive_epoch == 100 // 15


def test_byte_based_rekey() -> None:
    p = pair(limits=Limits(messages=1 << 20, bytes=1 << 24, seconds=600))
    chunk = bytes(1 << 20)
    events = []
    for _ in range(17):
        events += p.send(p.initiator, chunk)
    assert len(payloads(events)) == 17
    assert KeyUpdated(Direction.RECEIVE, 1) in events
    assert p.initiator.send_epoch == 1


def test_time_based_rekey_and_timers() -> None:
    p = pair(limits=SMALL)
    assert p.initiator.get_timer() == 60.0
    assert p.initiator.handle_timer(59.0) == []
    assert p.initiator.data_to_send() == []
    assert p.initiator.handle_timer(60.0) == [KeyUpdated(Direction.SEND, 1)]
    assert p.initiator.get_timer() == 120.0
    # On a stream the queued KEY_UPDATE goes out ahead of the next data frame.
    frames = p.seal(p.initiator, b"after the update")
    assert len(frames) == 2
    events = p.deliver(p.responder, frames)
    assert events == [KeyUpdated(Direction.RECEIVE, 1), MessageReceived(b"after the update")]


def test_requested_update_covers_both_directions() -> None:
    p = pair()
    p.initiator.rekey(request_peer=True)
    events = p.flush()
    assert KeyUpdated(Direction.RECEIVE, 1) in events
    assert p.initiator.send_epoch == p.responder.send_epoch == 1
    assert p.initiator.receive_epoch == p.responder.receive_epoch == 1
    assert payloads(p.send(p.responder, b"r")) == [b"r"]


def test_stream_frame_in_next_epoch_without_key_update_is_fatal() -> None:
    p = pair()
    p.initiator.rekey()
    p.initiator.data_to_send()  # the KEY_UPDATE is lost
    with pytest.raises(DecryptError):
        p.responder.open(p.initiator.seal(b"epoch 1"))
    assert p.responder.state is ChannelState.ERROR


@_FAST
@given(st.integers(0, 2**32), st.floats(0.0, 0.3))
def test_datagram_rekey_with_loss_and_reordering(seed: int, loss: float) -> None:
    rnd = random.Random(seed)
    p = pair(PathKind.DATAGRAM, limits=SMALL)
    sent: list[tuple[int, bytes]] = []
    for i in range(150):
        sent.append((i, p.initiator.seal(i.to_bytes(2, "big"))))
        sent += [(-1, f) for f in p.initiator.data_to_send()]  # KEY_UPDATEs
    # Delay each frame by up to 10 frames' worth of sending (less than one key epoch: only
    # the previous key is kept, spec §8.4), then lose some, KEY_UPDATEs included.
    order = sorted(range(len(sent)), key=lambda j: j + rnd.uniform(0, 10))
    kept = [sent[j] for j in order if rnd.random() >= loss]
    got = []
    for i, frame in kept:
        payload = p.responder.open(frame)
        if i >= 0:
            assert payload == i.to_bytes(2, "big")
            got.append(i)
    assert sorted(got) == sorted(i for i, _ in kept if i >= 0)
    assert p.initiator.send_epoch == (150 - 1) // 15
    assert p.initiator.send_epoch - 1 <= p.responder.receive_epoch <= p.initiator.send_epoch


def test_datagram_epoch_skip_and_previous_key_grace() -> None:
    p = pair(PathKind.DATAGRAM, limits=SMALL)
    old = p.initiator.seal(b"epoch 0, late")
    for _ in range(3):  # epochs 1 and 2 never reach the responder
        p.initiator.rekey()
    p.initiator.data_to_send()
    assert p.responder.receive(p.initiator.seal(b"epoch 3")) == [
        KeyUpdated(Direction.RECEIVE, 3),
        MessageReceived(b"epoch 3"),
    ]
    # a late frame of epoch 2 would use the previous key; epoch 0 is gone for good
    with pytest.raises(DecryptError):
        p.responder.open(old)
    q = pair(PathKind.DATAGRAM, limits=SMALL)
    late = q.initiator.seal(b"epoch 0, late")
    q.initiator.rekey()
    q.responder.receive(q.initiator.seal(b"epoch 1"), now=10.0)
    assert q.responder.get_timer() == 15.0  # the grace period of the previous key
    assert q.responder.open(late) == b"epoch 0, late"
    r = pair(PathKind.DATAGRAM, limits=SMALL)
    late = r.initiator.seal(b"too late")
    r.initiator.rekey()
    r.responder.receive(r.initiator.seal(b"epoch 1"), now=10.0)
    r.responder.handle_timer(15.0)
    with pytest.raises(DecryptError):
        r.responder.open(late)
    assert r.responder.state is ChannelState.ESTABLISHED


def test_datagram_epoch_too_far_ahead() -> None:
    p = pair(PathKind.DATAGRAM, limits=SMALL)
    for _ in range(9):
        p.initiator.rekey()
    with pytest.raises(DecryptError):
        p.responder.open(p.initiator.seal(b"epoch 9"))


def test_authenticated_bad_control_is_fatal_even_on_datagrams() -> None:
    p = pair(PathKind.DATAGRAM)
    bad = p.initiator._seal_frame(FrameType.CONTROL, b"\x09")
    with pytest.raises(RemoteProtocolError) as err:
        p.responder.open(bad)
    assert err.value.code == "e.p.msg.session.control"
    assert p.responder.state is ChannelState.ERROR


# -- close ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PathKind))
def test_close(path: PathKind) -> None:
    p = pair(path)
    p.initiator.close()
    assert p.initiator.state is ChannelState.CLOSED
    assert p.initiator.events() == [SessionClosed("", by_peer=False)]
    events = p.flush()
    assert events == [SessionClosed("", by_peer=True)]
    assert p.responder.state is ChannelState.CLOSED
    for ch in (p.initiator, p.responder):
        with pytest.raises(LocalProtocolError):
            ch.seal(b"x")
        with pytest.raises(LocalProtocolError):
            ch.open(b"\x00" * 40)
        ch.close()  # idempotent
        assert ch.get_timer() is None
        assert ch.handle_timer(1e9) == []


def test_close_sends_queued_key_update_first() -> None:
    p = pair()
    p.initiator.rekey()
    p.initiator.close("e.p.me.res")
    events = p.flush()
    assert events == [KeyUpdated(Direction.RECEIVE, 1), SessionClosed("e.p.me.res", by_peer=True)]
