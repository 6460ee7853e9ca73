"""SessionTransport's receive path: however the stream is cut into reads, MPyC gets the
same bytes, and a bad frame anywhere in a read fails the link.

The sending link's records are captured from its pipe, then handed to the receiving link
in reads cut at arbitrary places: whole frames, several frames, partial frames, single
bytes (the fast path for whole frames and the decoder for the rest must agree).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_mpyc_transport import App, Fatal, linked

from didsession.session import OVERHEAD
from mpyc_adapter.transport import LinkState, SessionTransport

MESSAGES = [bytes([i % 251]) * (1 + (i * 37) % 300) for i in range(40)]


async def captured_stream(
    messages: list[bytes], *, record_limit: int = 1 << 24
) -> tuple[SessionTransport, App, bytes, Fatal]:
    """A receiving link with its app attached, the bytes the sender put on the wire for
    ``messages`` (written over several event-loop turns, so several records), and the list
    the links' fatal errors go to."""
    a, b, _, pb, errors = await linked(record_limit=record_limit, max_batch=8, eager_bytes=200)
    sink = App()
    pb.protocol = sink  # what A writes now lands here instead of at B
    app_a, app_b = App(), App()
    a.attach(app_a)
    b.attach(app_b)
    for i, msg in enumerate(messages):
        a.write(msg)
        if i % 7 == 6:
            await asyncio.sleep(0)  # end the turn: its writes leave as one record
    for _ in range(3):
        await asyncio.sleep(0)  # the last turn's record, then its delivery
    assert not errors
    return b, app_b, bytes(sink.data), errors


def feed(link: SessionTransport, wire: bytes, cuts: list[int]) -> None:
    bounds = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for start, end in itertools.pairwise(bounds):
        link.data_received(wire[start:end])


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_cut_of_the_stream_delivers_the_same_bytes(cuts: list[int]) -> None:
    async def main() -> None:
        b, app, wire, _ = await captured_stream(MESSAGES)
        feed(b, wire, cuts)
        assert bytes(app.data) == b"".join(MESSAGES)
        assert b.state is LinkState.OPEN

    asyncio.run(main())


def test_one_read_with_every_record_and_one_byte_reads_agree() -> None:
    async def main() -> tuple[bytes, bytes, int]:
        b1, app1, wire, _ = await captured_stream(MESSAGES, record_limit=200)
        b1.data_received(wire)
        b2, app2, wire2, _ = await captured_stream(MESSAGES, record_limit=200)
        for i in range(len(wire2)):
            b2.data_received(wire2[i : i + 1])
        return bytes(app1.data), bytes(app2.data), b1.stats.records_in

    one, bytewise, records = asyncio.run(main())
    assert one == bytewise == b"".join(MESSAGES)
    assert records > 20  # many records arrived in the single read


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_tampered_frame_inside_a_read_fails_the_link(where: str) -> None:
    async def main() -> tuple[SessionTransport, App, Fatal]:
        b, app, wire, fatal = await captured_stream(MESSAGES, record_limit=200)
        bad = bytearray(wire)
        index = {"first": OVERHEAD, "middle": len(wire) // 2, "last": len(wire) - 1}[where]
        bad[index] ^= 0x40
        b.data_received(bytes(bad))
        return b, app, fatal

    b, app, fatal = asyncio.run(main())
    assert b.state is LinkState.FAILED
    assert [exc.code for link, exc in fatal if link is b] == ["e.p.msg.decrypt"]
    # the records before the tampered one arrived intact, nothing after it
    sent = b"".join(MESSAGES)
    assert len(app.data) < len(sent) and sent.startswith(bytes(app.data))
    if where == "first":
        assert app.data == b""


def test_a_length_out_of_bounds_fails_the_link() -> None:
    async def main() -> tuple[SessionTransport, App, Fatal]:
        b, app, wire, fatal = await captured_stream(MESSAGES[:3])
        b.data_received(wire + b"\x7f\xff\xff\xff" + b"\x00" * 40)
        return b, app, fatal

    b, app, fatal = asyncio.run(main())
    assert b.state is LinkState.FAILED
    assert [exc.code for link, exc in fatal if link is b] == ["e.p.msg.frame"]
    assert bytes(app.data) == b"".join(MESSAGES[:3])  # what came before is delivered
