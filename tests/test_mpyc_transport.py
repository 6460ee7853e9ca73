"""SessionTransport in memory: two links joined by an in-memory byte pipe, no sockets.

A real handshake (stand-in envelope, deterministic keys from ``session_pair``), the program
agreement record, MPyC-shaped writes, coalescing, splitting, the party-id check, tampering
and both ways of closing.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from session_pair import ALICE, BOB, make_handshakes

from didsession.errors import DidSessionError
from didsession.session import OVERHEAD
from mpyc_adapter.transport import LinkState, SessionTransport


def standin(me: str) -> tuple[Callable[..., Awaitable[bytes]], Callable[..., Awaitable[Any]]]:
    """Pack/unpack that only carry (sender, plaintext): the handshake is what is tested."""

    async def pack(plaintext: bytes, to: str) -> bytes:
        return json.dumps({"from": me}).encode() + b"\n" + plaintext

    async def unpack(packed: bytes) -> tuple[bytes, str]:
        header, _, plaintext = packed.partition(b"\n")
        return plaintext, json.loads(header)["from"]

    return pack, unpack


class Pipe(asyncio.Transport):
    """One end of an in-memory byte pipe: writes arrive at the other end's protocol on a
    later loop turn, like a socket's."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: Pipe | None = None
        self.protocol: asyncio.Protocol | None = None
        self.writes: list[bytes] = []
        self.closed = False
        self.tamper: Callable[[bytes], bytes] | None = None

    def write(self, data: Any) -> None:
        assert self.peer is not None and not self.closed
        data = bytes(data)
        if self.tamper is not None:
            data = self.tamper(data)
        self.writes.append(data)
        peer = self.peer
        asyncio.get_running_loop().call_soon(lambda: peer.protocol.data_received(data))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = asyncio.get_running_loop()
        assert self.protocol is not None and self.peer is not None
        loop.call_soon(self.protocol.connection_lost, None)
        if not self.peer.closed:
            self.peer.closed = True
            loop.call_soon(self.peer.protocol.connection_lost, None)  # type: ignore[union-attr]

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class App(asyncio.Protocol):
    """Stands in for MPyC's MessageExchanger: records what it is told."""

    def __init__(self, hello: bytes = b"") -> None:
        self.hello = hello
        self.data = bytearray()
        self.lost: list[Exception | None] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.hello:
            transport.writelines([self.hello])

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


Fatal = list[tuple[SessionTransport, DidSessionError]]


async def linked(
    *,
    record_limit: int = 1 << 24,
    max_batch: int = 1 << 20,
    eager_bytes: int = 1 << 30,
    early_limit: int = 1 << 26,
) -> tuple[SessionTransport, SessionTransport, Pipe, Pipe, Fatal]:
    """Two links after handshake and agreement: (initiator, responder, their pipes)."""
    fatal: Fatal = []

    def on_fatal(link: SessionTransport, exc: DidSessionError) -> None:
        fatal.append((link, exc))

    a = SessionTransport(
        on_fatal=on_fatal,
        label="party 1",
        record_limit=record_limit,
        max_batch=max_batch,
        eager_bytes=eager_bytes,
    )
    b = SessionTransport(
        on_fatal=on_fatal, label="party 0", record_limit=record_limit, early_limit=early_limit
    )
    pa, pb = Pipe(), Pipe()
    pa.peer, pb.peer, pa.protocol, pb.protocol = pb, pa, a, b
    a.connection_made(pa)
    b.connection_made(pb)
    ih, rh = make_handshakes()
    await asyncio.gather(a.initiate(ih, *standin(ALICE)), b.respond(rh, *standin(BOB)))
    assert a.peer_did == BOB and b.peer_did == ALICE
    # Keys agreed, but nothing came under them yet: a replayed request looks like this.
    assert not a.peer_proven and not b.peer_proven
    a.send_now(b"record of A")
    b.send_now(b"record of B")
    assert await a.peer_agreement(5) == b"record of B"
    assert await b.peer_agreement(5) == b"record of A"
    assert a.peer_proven and b.peer_proven
    return a, b, pa, pb, fatal


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def frame(pc: int, payload: bytes) -> bytes:
    """An MPyC message as MessageExchanger writes it."""
    return struct.pack("<qI", pc, len(payload)) + payload


def test_writes_of_one_turn_travel_as_one_record() -> None:
    async def main() -> None:
        a, b, pa, _, fatal = await linked()
        app_a, app_b = App(hello=(0).to_bytes(2, "little") + b"k" * 16), App()
        pa.writes.clear()
        a.attach(app_a)
        # MPyC's hello (party id and PRSS keys, one writelines) leaves at once: MPyC goes
        # on computing after it, and the peer's start must not wait for that.
        assert len(pa.writes) == 1
        b.attach(app_b, expect_pid=0)
        await turns()
        pa.writes.clear()
        assert (a.stats.messages, a.stats.records) == (1, 1)  # the hello
        messages = [frame(pc, bytes([pc % 256]) * (pc % 7)) for pc in range(100)]
        for m in messages:
            a.write(m)
        assert pa.writes == []  # nothing leaves before the turn ends
        await turns()
        assert len(pa.writes) == 1  # one sealed record for 100 writes
        assert len(pa.writes[0]) == sum(map(len, messages)) + OVERHEAD
        assert bytes(app_b.data) == app_a.hello + b"".join(messages)
        assert (a.stats.messages, a.stats.records) == (101, 2)
        assert not fatal

    asyncio.run(main())


def test_large_writes_go_at_once_and_batches_are_bounded() -> None:
    async def main() -> None:
        a, b, pa, _, _ = await linked(max_batch=8, eager_bytes=100)
        a.attach(App())
        app_b = App()
        b.attach(app_b)
        pa.writes.clear()
        for pc in range(20):
            a.write(frame(pc, b"x"))
        # Small writes wait for the end of the turn, but never more than 8 of them.
        assert [len(w) - OVERHEAD for w in pa.writes] == [8 * 13, 8 * 13]
        big = frame(20, bytes(100))
        a.write(big)  # a large write goes at once, with the 4 small ones before it
        assert [len(w) - OVERHEAD for w in pa.writes] == [8 * 13, 8 * 13, 4 * 13 + 112]
        a.write(frame(21, b"y"))
        await turns()
        assert [len(w) - OVERHEAD for w in pa.writes][3:] == [13]
        expected = b"".join(frame(pc, b"x") for pc in range(20)) + big + frame(21, b"y")
        assert bytes(app_b.data) == expected
        a.write(frame(99, b"lone"))  # a new turn: the end of it sends it
        assert len(pa.writes) == 4
        await turns()
        assert len(pa.writes) == 5

    asyncio.run(main())


def test_without_coalescing_every_write_is_a_record() -> None:
    async def main() -> None:
        a, b, pa, _, _ = await linked(eager_bytes=0)
        a.attach(App())
        app_b = App()
        b.attach(app_b)
        pa.writes.clear()
        for pc in range(5):
            a.write(frame(pc, b"x"))
        assert [len(w) - OVERHEAD for w in pa.writes] == [13] * 5
        await turns()
        assert len(pa.writes) == 5
        assert bytes(app_b.data) == b"".join(frame(pc, b"x") for pc in range(5))

    asyncio.run(main())


def test_large_writes_are_split_into_records() -> None:
    async def main() -> None:
        a, b, pa, _, _ = await linked(record_limit=1000)
        a.attach(App())
        app_b = App()
        b.attach(app_b)
        pa.writes.clear()
        big = frame(7, bytes(range(256)) * 20)  # 5132 bytes
        a.write(big)
        await turns()
        assert len(pa.writes) == 6 and all(len(w) <= 1000 + OVERHEAD for w in pa.writes)
        assert bytes(app_b.data) == big

    asyncio.run(main())


def test_a_party_claiming_another_id_is_refused() -> None:
    async def main() -> None:
        a, b, _, _, fatal = await linked()
        app_b = App()
        b.attach(app_b, expect_pid=1)  # the roster says this DID is party 1 ...
        a.attach(App(hello=(2).to_bytes(2, "little")))  # ... but it claims to be party 2
        await turns()
        assert app_b.data == b""  # MPyC never saw the claim
        assert [(link, exc.code) for link, exc in fatal] == [
            (b, "e.p.mpyc.party"),
            (a, "e.p.mpyc.party"),
        ]
        assert "claims to be party 2" in fatal[0][1].message
        assert b.state is LinkState.FAILED

    asyncio.run(main())


def test_what_is_held_back_before_mpyc_takes_the_link_is_bounded() -> None:
    """A peer that sends more than ``early_limit`` bytes before this side's MPyC takes the
    link fails it (and hears why), instead of filling memory."""

    async def main() -> None:
        a, b, _, _, fatal = await linked(early_limit=2500)
        a.attach(App())
        for pc in range(2):
            a.write(frame(pc, bytes(1000)))
            await turns()
        assert b.state is LinkState.AGREEMENT  # 2 x 1012 bytes: still held back
        a.write(frame(2, bytes(1000)))
        await turns()
        assert b.state is LinkState.FAILED
        assert [(link, exc.code) for link, exc in fatal] == [(a, "e.p.mpyc.limit")]
        assert "party 1 closed the session: e.p.mpyc.limit" in fatal[0][1].message

    asyncio.run(main())


def test_a_tampered_record_fails_the_link() -> None:
    async def main() -> None:
        a, b, pa, _, fatal = await linked()
        a.attach(App())
        b.attach(App())
        pa.tamper = lambda data: data[:-1] + bytes([data[-1] ^ 1])
        a.write(frame(1, b"secret share"))
        await turns()
        # B refuses the frame; A hears B's CLOSE with the reason.
        assert [(link, exc.code) for link, exc in fatal] == [
            (b, "e.p.msg.decrypt"),
            (a, "e.p.msg.decrypt"),
        ]
        assert "party 1 closed the session" in fatal[1][1].message  # A names its peer

    asyncio.run(main())


def test_close_sends_close_and_both_sides_hear_connection_lost() -> None:
    async def main() -> None:
        a, b, _, _, fatal = await linked()
        app_a, app_b = App(), App()
        a.attach(app_a)
        b.attach(app_b)
        a.write(frame(1, b"last"))
        a.close()  # flushes first
        await turns()
        assert bytes(app_b.data) == frame(1, b"last")
        assert app_a.lost == [None] and app_b.lost == [None]
        assert a.state is LinkState.CLOSED and b.state is LinkState.CLOSED
        assert not fatal

    asyncio.run(main())


def test_connection_lost_without_close_fails_the_open_link() -> None:
    async def main() -> None:
        a, b, pa, _, fatal = await linked()
        a.attach(App())
        b.attach(App())
        pa.close()  # the path breaks; no CLOSE frame
        await turns()
        codes = sorted(exc.code for _, exc in fatal)
        assert codes == ["e.p.msg.session.truncated"] * 2

    asyncio.run(main())


def test_a_peer_closing_before_agreement_is_an_error() -> None:
    async def main() -> None:
        fatal: Fatal = []
        a = SessionTransport(on_fatal=lambda link, exc: fatal.append((link, exc)))
        b = SessionTransport(on_fatal=lambda link, exc: fatal.append((link, exc)))
        pa, pb = Pipe(), Pipe()
        pa.peer, pb.peer, pa.protocol, pb.protocol = pb, pa, a, b
        a.connection_made(pa)
        b.connection_made(pb)
        ih, rh = make_handshakes()
        await asyncio.gather(a.initiate(ih, *standin(ALICE)), b.respond(rh, *standin(BOB)))
        b.close()
        with pytest.raises(DidSessionError, match="before agreeing"):
            await a.peer_agreement(5)
        assert not fatal  # before the link is open, errors go to whoever waits

    asyncio.run(main())
