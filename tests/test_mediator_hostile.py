"""Hostile and malformed input against the real process: broken JWEs, oversized bodies and
WebSocket frames, clients that do not read, too many connections, slow bodies, fuzzed STUN,
forged relay opens.  Each gets a typed problem-report or is dropped, and the mediator keeps
serving."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import random
import socket
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mediator_proc import MediatorProcess, mediator_process, post

from didsession.envelope import Envelope, new_message
from didsession.identity import Identity, Store
from didsession.mediation import (
    MediatorClient,
    MediatorInfo,
    mediator_info,
    request_mediation,
    send_packed,
)
from didsession.stun_asyncio import stun_binding

BASIC = "https://didcomm.org/basicmessage/2.0/message"
PER_SOURCE = 12


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def mediator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediatorProcess]:
    proc = mediator_process(
        tmp_path_factory.mktemp("hostile") / "data",
        extra=[
            "--max-ws-frame-bytes",
            "65536",
            "--max-connections-per-source",
            str(PER_SOURCE),
            "--ws-send-timeout",
            "1",
            "--request-timeout",
            "2",
        ],
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def info(mediator: MediatorProcess) -> MediatorInfo:
    result: MediatorInfo = run(mediator_info(mediator.url))
    return result


def envelope_of(ident: Identity) -> Envelope:
    env = Envelope()
    assert ident.ed25519_secret is not None and ident.x25519_secret is not None
    env.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
    return env


def still_serving(mediator: MediatorProcess, info: MediatorInfo, tmp_path: Path) -> None:
    assert mediator.proc is not None and mediator.proc.poll() is None
    assert mediator.healthz()["status"] == "ok"
    probe = Store(tmp_path / f"probe{random.random()}").create("probe")

    async def ping() -> None:
        async with MediatorClient(info, probe) as client:
            await client.ping()

    run(ping())


def code_of(body: bytes) -> str:
    doc = json.loads(body)
    assert doc["type"] == "https://didcomm.org/report-problem/2.0/problem-report"
    code: str = doc["body"]["code"]
    return code


def test_broken_and_oversized_posts(
    tmp_path: Path, mediator: MediatorProcess, info: MediatorInfo
) -> None:
    alice = Store(tmp_path / "a").create("alice")
    env = envelope_of(alice)
    good = run(
        env.pack(
            new_message(BASIC, {"content": "x"}, frm=alice.did),
            to=info.did,
            frm=alice.did,
            forward=False,
        )
    ).data
    jwe = json.loads(good)
    flipped = dict(jwe)
    ct = bytearray(base64.urlsafe_b64decode(jwe["ciphertext"] + "=="))
    ct[5] ^= 1
    flipped["ciphertext"] = base64.urlsafe_b64encode(bytes(ct)).rstrip(b"=").decode()
    bad_header = dict(jwe, protected=jwe["protected"][:-4] + "AAAA")
    other = Store(tmp_path / "o").create("other")
    for_other = run(env.pack(new_message(BASIC, {}), to=other.did, frm=alice.did, forward=False))
    many = dict(jwe, recipients=jwe["recipients"] * 17)
    cases = {
        "not json": (b"\x00\xffgarbage", {"e.p.msg"}),
        "json, not a jwe": (b'{"hello": "world"}', {"e.p.msg"}),
        "array": (b"[1, 2, 3]", {"e.p.msg"}),
        "tampered ciphertext": (json.dumps(flipped).encode(), {"e.p.msg.decrypt"}),
        "tampered header": (json.dumps(bad_header).encode(), {"e.p.msg", "e.p.msg.decrypt"}),
        "for someone else": (for_other.data, {"e.p.msg.decrypt"}),
        "17 recipients": (json.dumps(many).encode(), {"e.p.msg"}),
        "nested 5000 deep": (b"[" * 5000, {"e.p.msg"}),  # json's RecursionError
        "nested 200 deep": (b"[" * 200 + b"]" * 200, {"e.p.msg"}),
    }
    for name, (body, codes) in cases.items():
        status, reply, ctype = post(info.endpoint, body)
        assert status == 400, name
        assert ctype == "application/didcomm-plain+json", name
        assert code_of(reply) in codes, name
    status, reply, _ = post(info.endpoint, b"x" * (1024 * 1024 + 10))
    assert status == 413 and code_of(reply) == "e.p.msg.too-big"
    status, reply, _ = post(info.endpoint, good, content_type="text/plain")
    assert status == 415
    rng = random.Random(4)
    for _ in range(40):  # random bytes and random JSON-ish text: 4xx, never a 5xx
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        if rng.random() < 0.5:
            blob = b'{"protected": "' + base64.b64encode(blob) + b'", "recipients": [{}]}'
        status, _, _ = post(info.endpoint, blob)
        assert 400 <= status < 500
    still_serving(mediator, info, tmp_path)


def test_websocket_garbage_and_oversized_frames(
    tmp_path: Path, mediator: MediatorProcess, info: MediatorInfo
) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(info.ws_url) as ws:
                await ws.send_str("this is not DIDComm")
                reply = await ws.receive(timeout=5)
                assert code_of(reply.data.encode()) == "e.p.msg"
                await ws.send_bytes(os.urandom(300))
                reply = await ws.receive(timeout=5)
                assert code_of(reply.data.encode()) == "e.p.msg"
                await ws.send_str("{" * 3000)  # json's RecursionError: refused, not fatal
                reply = await ws.receive(timeout=5)
                assert code_of(reply.data.encode()) == "e.p.msg"
                # the connection survives garbage; an oversized frame closes it (1009)
                await ws.send_str("x" * 70_000)
                msg = await ws.receive(timeout=5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 1009

    run(main())
    metrics = mediator.metrics()
    assert metrics['didsession_mediator_errors_total{kind="ws-frame-too-big"}'] >= 1
    still_serving(mediator, info, tmp_path)


def _ws_handshake(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 65536:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


def _silent_live_client(
    mediator: MediatorProcess, info: MediatorInfo, bob: Identity
) -> socket.socket:
    """A raw WebSocket client with a tiny receive buffer that turns live mode on for
    ``bob``, then never reads."""
    change = new_message(
        "https://didcomm.org/messagepickup/3.0/live-delivery-change",
        {"live_delivery": True},
        frm=bob.did,
        to=[info.did],
    )
    packed = run(envelope_of(bob).pack(change, to=info.did, frm=bob.did, forward=False)).data
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", mediator.port))
    sock.sendall(_ws_handshake(mediator.port, "/ws"))
    time.sleep(0.2)
    sock.sendall(_masked_text(packed))
    time.sleep(0.3)
    assert mediator.metrics()["didsession_mediator_live_connections"] >= 1
    return sock


def _flood_then_pick_up(
    mediator: MediatorProcess, info: MediatorInfo, bob: Identity, alice: Identity, n: int
) -> dict[str, float]:
    """Forward ``n`` messages of 300 kB to ``bob``, wait for its silent live client to be
    dropped, and check that nothing was lost; the mediator's metrics once dropped."""
    env = envelope_of(alice)
    big = "y" * 300_000

    async def flood() -> None:
        for i in range(n):
            msg = new_message(BASIC, {"content": big, "n": i}, frm=alice.did, to=[bob.did])
            await send_packed(await env.pack(msg, to=bob.did, frm=alice.did))

    run(flood(), timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if mediator.metrics()["didsession_mediator_live_connections"] == 0:
            break
        time.sleep(0.2)
    after = mediator.metrics()
    assert after["didsession_mediator_live_connections"] == 0, "slow client not dropped"

    async def pickup() -> int:  # nothing was lost: the queue still holds every message
        async with MediatorClient(info, bob) as client:
            return len(await client.pickup_all(batch=1))

    assert run(pickup(), timeout=60) == n
    return after


def test_a_live_client_that_does_not_read_is_dropped(
    tmp_path: Path, mediator: MediatorProcess, info: MediatorInfo
) -> None:
    bob = Store(tmp_path / "bob").create("bob", mediator=info.did)
    alice = Store(tmp_path / "alice").create("alice")
    run(request_mediation(bob, info))
    sock = _silent_live_client(mediator, info, bob)
    try:
        after = _flood_then_pick_up(mediator, info, bob, alice, 30)
    finally:
        sock.close()
    dropped = sum(v for k, v in after.items() if 'kind="live-' in k)
    assert dropped >= 1
    still_serving(mediator, info, tmp_path)


def test_a_live_client_is_dropped_before_its_outbox_pins_much_memory(tmp_path: Path) -> None:
    """With a send timeout too long to help, 45 pushes of ~400 kB (far fewer than the count
    limit; more than the 8 MiB limit even if the kernel's buffers absorb 4 MB) still drop a
    client that does not read: its outbox is bounded in bytes."""
    mediator = mediator_process(tmp_path / "data", extra=["--ws-send-timeout", "120"])
    mediator.start()
    try:
        info = run(mediator_info(mediator.url))
        bob = Store(tmp_path / "bob").create("bob", mediator=info.did)
        alice = Store(tmp_path / "alice").create("alice")
        run(request_mediation(bob, info))
        sock = _silent_live_client(mediator, info, bob)
        try:
            after = _flood_then_pick_up(mediator, info, bob, alice, 45)
        finally:
            sock.close()
        assert sum(v for k, v in after.items() if 'kind="live-outbox-bytes"' in k) == 1
    finally:
        mediator.kill()


def test_live_dids_per_connection_are_capped(
    tmp_path: Path, mediator: MediatorProcess, info: MediatorInfo
) -> None:
    """One connection turning live delivery on for DID after DID gets a typed refusal once
    it holds the limit (100); re-announcing a DID it holds is still fine."""
    people = [Store(tmp_path / f"p{i}").create(f"p{i}") for i in range(101)]
    env = Envelope()
    for ident in people:
        assert ident.ed25519_secret is not None and ident.x25519_secret is not None
        env.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)

    async def main() -> list[str]:
        async with aiohttp.ClientSession() as session, session.ws_connect(info.ws_url) as ws:
            replies = []
            for ident in [*people, people[0]]:
                change = new_message(
                    "https://didcomm.org/messagepickup/3.0/live-delivery-change",
                    {"live_delivery": True},
                    frm=ident.did,
                    to=[info.did],
                )
                packed = await env.pack(change, to=info.did, frm=ident.did, forward=False)
                await ws.send_str(packed.data.decode())
                reply = (await env.unpack((await ws.receive(timeout=10)).data)).message
                replies.append(reply["body"].get("code", reply["type"].rsplit("/", 1)[-1]))
            return replies

    replies = run(main(), timeout=60)
    assert replies[:100] == ["status"] * 100
    assert replies[100:] == ["e.p.me.res.quota", "status"]
    still_serving(mediator, info, tmp_path)


def test_connections_per_source_and_slow_bodies(
    tmp_path: Path, mediator: MediatorProcess, info: MediatorInfo
) -> None:
    held = []
    try:
        for _ in range(PER_SOURCE):  # idle connections that never finish their headers
            s = socket.create_connection(("127.0.0.1", mediator.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", mediator.port), timeout=5)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert extra.recv(100) == b""  # refused: closed at once
        except ConnectionResetError:
            pass
        extra.close()
        # another source address is not affected
        conn = http.client.HTTPConnection(
            "127.0.0.1", mediator.port, timeout=5, source_address=("127.0.0.2", 0)
        )
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        rejected = [
            ln
            for ln in text.splitlines()
            if ln.startswith("didsession_mediator_connections_rejected_total ")
        ]
        assert float(rejected[0].split()[1]) >= 1
    finally:
        for s in held:
            s.close()
    # a body that never completes: 408 after request_timeout, others are served meanwhile
    slow = socket.create_connection(("127.0.0.1", mediator.port), timeout=10)
    slow.sendall(
        b"POST /didcomm HTTP/1.1\r\nHost: x\r\nContent-Type: application/didcomm-encrypted+json"
        b'\r\nContent-Length: 5000\r\n\r\n{"protected":'
    )
    assert mediator.healthz()["status"] == "ok"
    started = time.monotonic()
    reply = slow.recv(200)
    assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 8
    slow.close()
    time.sleep(0.3)
    still_serving(mediator, info, tmp_path)


def test_fuzzed_stun_packets_are_dropped(mediator: MediatorProcess) -> None:
    rng = random.Random(7)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(400):
            if i % 2:  # a STUN header with garbage after it
                length = rng.randrange(0, 64) & ~3
                data = (
                    b"\x00\x01"
                    + length.to_bytes(2, "big")
                    + b"\x21\x12\xa4\x42"
                    + os.urandom(12)
                    + os.urandom(rng.randrange(0, 80))
                )
            else:
                data = os.urandom(rng.randrange(0, 600))
            sock.sendto(data, ("127.0.0.1", mediator.stun_port))
    finally:
        sock.close()
    # a well-formed request from another source still gets its answer
    result = run(
        stun_binding("127.0.0.1", mediator.stun_port, local_addr=("127.0.0.3", 0), timeout=5)
    )
    assert result.mapped[0] == "127.0.0.3"
    metrics = mediator.metrics()
    dropped = sum(v for k, v in metrics.items() if "stun_events_total" in k and "dropped" in k)
    assert dropped >= 100


def test_forged_relay_opens_are_refused(
    tmp_path: Path, mediator: MediatorProcess, info: MediatorInfo
) -> None:
    alice = Store(tmp_path / "alice").create("alice")
    bob = Store(tmp_path / "bob").create("bob")
    env = envelope_of(alice)

    async def attempt(make: Any) -> tuple[str, int | None]:
        async with aiohttp.ClientSession() as session, session.ws_connect(info.relay_url) as ws:
            challenge = json.loads((await ws.receive(timeout=5)).data)
            await ws.send_str(await make(challenge["body"]["nonce"]))
            reply = await ws.receive(timeout=5)
            code = code_of(reply.data.encode())
            await ws.receive(timeout=5)
            return code, ws.close_code

    async def wrong_nonce(nonce: str) -> str:
        msg = new_message(
            "https://didsession.dev/relay/1.0/open",
            {"nonce": "AAAA" + nonce[4:], "session_id": "s", "peer_did": bob.did},
            frm=alice.did,
            to=[info.did],
        )
        return (await env.pack(msg, to=info.did, frm=alice.did, forward=False)).data.decode()

    async def anonymous(nonce: str) -> str:
        msg = new_message(
            "https://didsession.dev/relay/1.0/open",
            {"nonce": nonce, "session_id": "s", "peer_did": bob.did},
        )
        return (await env.pack(msg, to=info.did, forward=False)).data.decode()

    async def garbage(nonce: str) -> str:
        return "{}"

    async def main() -> None:
        assert await attempt(wrong_nonce) == ("e.p.trust", 1008)
        assert await attempt(anonymous) == ("e.p.trust", 1008)
        assert (await attempt(garbage))[0] == "e.p.msg"

    run(main())
    still_serving(mediator, info, tmp_path)
