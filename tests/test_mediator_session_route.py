"""The whole route for parties behind NAT: the session handshake travels as DIDComm messages
through the mediator's mailboxes (forward, then pickup), and the established session runs
over the mediator's relay, which sees only opaque frames."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mediator_proc import MediatorProcess, mediator_process

from didsession.envelope import Envelope
from didsession.identity import Identity, Store
from didsession.mediation import (
    MediatorClient,
    mediator_info,
    open_relay,
    request_mediation,
    send_packed,
)
from didsession.peer import envelope_for
from didsession.session import Channel, Handshake, Role
from didsession.session.stream import attach_session, read_attach_id


@pytest.fixture
def mediator(tmp_path: Path) -> Iterator[MediatorProcess]:
    proc = mediator_process(tmp_path / "mediator").start()
    try:
        yield proc
    finally:
        proc.stop()


async def _relay_side(
    url: str, me: Identity, env: Envelope, channel: Channel, peer: str, outgoing: list[bytes]
) -> list[bytes]:
    async with open_relay(url, me.did, channel.session_id.hex(), peer, envelope=env) as link:
        reader, writer = await link.streams()
        if channel.role is Role.RESPONDER:
            assert await read_attach_id(reader) == channel.attach_id
        session = await attach_session(reader, writer, channel)
        for item in outgoing:
            session.send(item)
        await session.drain()
        got = [await session.recv() for _ in range(len(outgoing))]
        session.close()
        return got


def test_handshake_via_mailboxes_then_session_over_relay(
    mediator: MediatorProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        info = await mediator_info(mediator.url)
        alice = Store(tmp_path / "a").create("alice", mediator=info.did)
        bob = Store(tmp_path / "b").create("bob", mediator=info.did)
        await request_mediation(alice, info)
        await request_mediation(bob, info)
        env_a, env_b = envelope_for(alice), envelope_for(bob)
        assert alice.x25519_secret is not None and bob.x25519_secret is not None

        # alice -> (forward via the mediator) -> bob's mailbox: the request
        init = Handshake(
            Role.INITIATOR,
            local_did=alice.did,
            static_private=alice.x25519_secret,
            peer_static_key=env_a.resolver.x25519_public,
            peer_did=bob.did,
        )
        out = init.initiate(time.time())
        packed = await env_a.pack_plaintext(out.plaintext, to=out.to, frm=alice.did)
        assert packed.forwarded  # bob's DID routes through the mediator
        await send_packed(packed)
        async with MediatorClient(info, bob.did, env_b) as client:
            (request,) = await client.pickup_all()
        assert request.message.sender_did == alice.did

        # bob answers the same way: accept -> alice's mailbox
        resp = Handshake(
            Role.RESPONDER,
            local_did=bob.did,
            static_private=bob.x25519_secret,
            peer_static_key=env_b.resolver.x25519_public,
            accept_peer={alice.did},
        )
        resp.receive_message(request.message.plaintext, alice.did, time.time())
        (reply,) = resp.messages_to_send()
        await send_packed(await env_b.pack_plaintext(reply.plaintext, to=reply.to, frm=bob.did))
        async with MediatorClient(info, alice.did, env_a) as client:
            (accept,) = await client.pickup_all()
        init.receive_message(accept.message.plaintext, accept.message.sender_did or "", time.time())
        ch_a, ch_b = init.channel, resp.channel
        assert ch_a is not None and ch_b is not None and ch_a.session_id == ch_b.session_id

        # the session itself runs over the relay
        to_bob = [f"share {i}".encode() * (i + 1) for i in range(40)]
        to_alice = [b"ack %d" % i for i in range(40)]
        got_b, got_a = await asyncio.wait_for(
            asyncio.gather(
                _relay_side(mediator.url, bob, env_b, ch_b, alice.did, to_alice),
                _relay_side(mediator.url, alice, env_a, ch_a, bob.did, to_bob),
            ),
            timeout=60,
        )
        assert got_b == to_bob and got_a == to_alice

    asyncio.run(scenario())
    # the frames went through the mediator's relay (80 data frames plus attach and close)
    metrics = mediator.metrics()
    relayed = sum(v for k, v in metrics.items() if "relay" in k and "frames" in k)
    assert relayed >= 80
    assert 'didsession_mediator_stun_events_total{outcome="send_drops"}' in metrics
