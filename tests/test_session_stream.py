"""The asyncio layer over a real TCP loopback socket (spec §4.4, §4.5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from session_pair import ALICE, BOB, SessionPair, make_handshakes

from didsession.errors import DecryptError, LocalProtocolError, RemoteProtocolError
from didsession.session import (
    ChannelState,
    Handshake,
    Limits,
    PathKind,
    SessionConfig,
    Suite,
)
from didsession.session.multipath import PathKind as Route
from didsession.session.stream import (
    Session,
    accept_session,
    attach_session,
    open_session,
    read_attach_id,
)

# ---------------------------------------------------------------------------------------
# STAND-IN for the DIDComm envelope.  It neither encrypts nor authenticates: it only
# carries (sender DID, plaintext) so that the stream plumbing can be tested without
# didsession/envelope.py (authcrypt), which the lead wires in later.
# ---------------------------------------------------------------------------------------


def standin_envelope(
    me: str,
) -> tuple[
    Callable[[bytes, str], Awaitable[bytes]], Callable[[bytes], Awaitable[tuple[bytes, str]]]
]:
    async def pack(plaintext: bytes, to: str) -> bytes:
        return json.dumps({"stand-in": True, "from": me, "to": to}).encode() + b"\n" + plaintext

    async def unpack(packed: bytes) -> tuple[bytes, str]:
        header, _, plaintext = packed.partition(b"\n")
        return plaintext, json.loads(header)["from"]

    return pack, unpack


Server = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]


async def _serve(handler: Server) -> tuple[asyncio.Server, int, asyncio.Future[Any]]:
    result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            result.set_result(await handler(reader, writer))
        except Exception as exc:
            result.set_exception(exc)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, result


async def _tcp_sessions(ih: Handshake, rh: Handshake) -> tuple[Session, Session]:
    pack_a, unpack_a = standin_envelope(ALICE)
    pack_b, unpack_b = standin_envelope(BOB)

    async def respond(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Session:
        return await accept_session(r, w, rh, pack=pack_b, unpack=unpack_b)

    server, port, accepted = await _serve(respond)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = await open_session(reader, writer, ih, pack=pack_a, unpack=unpack_a)
    srv = await accepted
    server.close()
    return client, srv


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def test_handshake_and_messages_over_tcp() -> None:
    async def main() -> None:
        pack_a, unpack_a = standin_envelope(ALICE)
        pack_b, unpack_b = standin_envelope(BOB)
        ih, rh = make_handshakes()

        async def respond(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Session:
            s = await accept_session(r, w, rh, pack=pack_b, unpack=unpack_b)
            s.send(b"the responder speaks first")  # right after accept, spec §4.1
            return s

        server, port, accepted = await _serve(respond)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = await open_session(reader, writer, ih, pack=pack_a, unpack=unpack_a)
        assert await client.recv() == b"the responder speaks first"
        srv = await accepted
        server.close()
        assert client.peer_did == BOB and srv.peer_did == ALICE
        assert client.local_did == ALICE
        assert client.session_id == srv.session_id
        assert client.suite is Suite.AES256GCM
        # the path, named as 'didsession status' does; the framing is the channel's
        assert client.path.kind is srv.path.kind is Route.DIRECT
        assert client.channel.path is PathKind.STREAM
        assert client.path.remote == srv.path.local
        for i in range(200):
            client.send(i.to_bytes(4, "big"))
            srv.send(bytes(i % 11))
        await client.drain()
        assert [await srv.recv() for _ in range(200)] == [i.to_bytes(4, "big") for i in range(200)]
        assert [await client.recv() for _ in range(200)] == [bytes(i % 11) for i in range(200)]
        client.close()
        with pytest.raises(LocalProtocolError):
            await srv.recv()
        assert srv.closed and srv.channel.state is ChannelState.CLOSED
        await client.wait_closed()
        srv.close()
        await srv.wait_closed()

    run(main())


def test_rekey_under_load_over_tcp() -> None:
    async def main() -> None:
        client, srv = await _tcp_sessions(
            *make_handshakes(limits=Limits(messages=16, bytes=1 << 24, seconds=600))
        )
        for i in range(500):
            client.send(i.to_bytes(2, "big"))
            if i == 250:
                client.rekey(request_peer=True)
        got = [await srv.recv() for _ in range(500)]
        assert got == [i.to_bytes(2, "big") for i in range(500)]
        srv.send(b"back")
        assert await client.recv() == b"back"
        assert client.channel.send_epoch > 30 and srv.channel.receive_epoch > 30
        assert srv.channel.send_epoch == 1  # the requested update
        async with client, srv:
            pass

    run(main())


def test_time_based_rekey_over_tcp() -> None:
    async def main() -> None:
        client, srv = await _tcp_sessions(
            *make_handshakes(limits=Limits(messages=1 << 20, bytes=1 << 24, seconds=1))
        )
        client.send(b"epoch 0")
        assert await srv.recv() == b"epoch 0"
        await asyncio.sleep(1.1)
        client.send(b"epoch 1")
        assert await srv.recv() == b"epoch 1"
        assert client.channel.send_epoch == srv.channel.receive_epoch == 1
        client.close()
        srv.close()

    run(main())


def test_async_iteration_ends_on_clean_close() -> None:
    async def main() -> None:
        client, srv = await _tcp_sessions(*make_handshakes())
        for m in (b"a", b"b", b"c"):
            client.send(m)
        client.close()
        assert [m async for m in srv] == [b"a", b"b", b"c"]
        srv.close()

    run(main())


def test_refused_handshake_over_tcp() -> None:
    async def main() -> None:
        ih, rh = make_handshakes(
            initiator_config=SessionConfig(suites=(Suite.CHACHA20POLY1305,)),
            responder_config=SessionConfig(suites=(Suite.AES256GCM,)),
        )
        pack_a, unpack_a = standin_envelope(ALICE)
        pack_b, unpack_b = standin_envelope(BOB)

        async def respond(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Session:
            return await accept_session(r, w, rh, pack=pack_b, unpack=unpack_b)

        server, port, accepted = await _serve(respond)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(RemoteProtocolError) as err:
            await open_session(reader, writer, ih, pack=pack_a, unpack=unpack_a)
        assert err.value.code == "e.p.msg.session.suite"
        with pytest.raises(RemoteProtocolError):
            await accepted
        server.close()

    run(main())


def test_garbage_on_the_wire_closes_both_ends() -> None:
    async def main() -> None:
        client, srv = await _tcp_sessions(*make_handshakes())
        srv._writer.write(bytes.fromhex("00000020") + bytes(32))  # a forged frame
        with pytest.raises(DecryptError):
            await client.recv()
        assert client.channel.state is ChannelState.ERROR
        with pytest.raises(LocalProtocolError) as err:  # the CLOSE the client sent
            await srv.recv()
        assert err.value.code == "e.p.msg.decrypt"

    run(main())


def test_truncated_stream() -> None:
    async def main() -> None:
        client, srv = await _tcp_sessions(*make_handshakes())
        srv._writer.transport.abort()
        with pytest.raises(RemoteProtocolError) as err:
            await client.recv()
        assert err.value.code in ("e.p.msg.session.truncated",)

    run(main())


def test_attach_a_channel_from_another_route() -> None:
    async def main() -> None:
        # The handshake travels elsewhere (e.g. via a mediator): here, in memory.
        ih, rh = make_handshakes()
        request = ih.initiate(0.0)
        rh.receive_message(request.plaintext, ALICE, 0.0)
        (accept,) = rh.messages_to_send()
        ih.receive_message(accept.plaintext, BOB, 0.0)
        channels = {rh.channel.attach_id: rh.channel}

        async def respond(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Session:
            channel = channels.pop(await read_attach_id(r))
            return await attach_session(r, w, channel)

        server, port, accepted = await _serve(respond)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = await attach_session(reader, writer, ih.channel)
        client.send(b"over the attached stream")
        srv = await accepted
        server.close()
        assert await srv.recv() == b"over the attached stream"
        srv.send(b"and back")
        assert await client.recv() == b"and back"
        client.close()
        srv.close()

    run(main())


def test_stream_session_needs_a_stream_channel() -> None:
    async def main() -> None:
        channel = SessionPair.establish(path=PathKind.DATAGRAM).responder
        with pytest.raises(LocalProtocolError):
            await attach_session(None, None, channel)  # type: ignore[arg-type]

    run(main())


def test_initiator_gives_up_after_the_handshake_timeout() -> None:
    async def main() -> None:
        ih, _ = make_handshakes(initiator_config=SessionConfig(timeout=0.2))
        pack_a, unpack_a = standin_envelope(ALICE)

        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read(1 << 16)  # reads the request, never answers

        server, port, _ = await _serve(silent)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(RemoteProtocolError) as err:
            await open_session(reader, writer, ih, pack=pack_a, unpack=unpack_a)
        assert err.value.code == "e.p.msg.session.timeout"
        assert ih.state.name == "CLOSED"
        server.close()

    run(main())
