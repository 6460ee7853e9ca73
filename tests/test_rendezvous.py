"""Sessions through the mediator (didsession/rendezvous.py): which messages in the
initiator's mailbox answer the pending request, in memory first, then with the real mediator."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mediator_proc import MediatorProcess, mediator_process
from session_pair import ALICE, BOB, make_handshakes

from didsession.errors import RemoteProtocolError
from didsession.identity import Store
from didsession.mediation import mediator_info, request_mediation, send_packed
from didsession.peer import envelope_for
from didsession.rendezvous import (
    MediatedSession,
    _stale,
    connect_via_mediator,
    serve_via_mediator,
)
from didsession.session import (
    PROTOCOL_URI,
    Handshake,
    HandshakeState,
    Role,
    SessionEstablished,
    close_message,
    pull_message,
)
from didsession.session.multipath import PathKind as Route

# -- in memory --------------------------------------------------------------------------


def _answer(seed: str, accept_peer: set[str] | None = None) -> tuple[bytes, bytes]:
    """An initiator's request and the responder's answer to it: accept, or problem-report
    when ``accept_peer`` leaves the initiator out."""
    ih, rh = make_handshakes(seed=seed, accept_peer=accept_peer)
    request = ih.initiate(0.0).plaintext
    try:
        rh.receive_message(request, ALICE, 0.0)
    except RemoteProtocolError:
        pass  # refused: the problem-report is queued
    (answer,) = rh.messages_to_send()
    return request, answer.plaintext


def _id(plaintext: bytes) -> str:
    return pull_message(plaintext).id


def test_only_answers_in_the_requests_thread_reach_the_handshake() -> None:
    request, accept = _answer("now")
    refused_request, refusal = _answer("refused now", accept_peer=set())
    _, late_accept = _answer("an attempt that timed out")
    _, late_refusal = _answer("a refused attempt", accept_peer=set())
    rid = _id(request)
    assert _stale(accept, rid) is None
    assert _stale(refusal, _id(refused_request)) is None
    stale = _stale(late_accept, rid)
    assert stale is not None and "'accept' for another request" in stale
    stale = _stale(late_refusal, rid)
    assert stale is not None and "'problem-report' for another request" in stale


def test_other_messages_are_stale_but_broken_ones_are_not() -> None:
    request, _ = _answer("now")
    rid = _id(request)
    ih, rh = make_handshakes(seed="an older session")
    rh.receive_message(ih.initiate(0.0).plaintext, ALICE, 0.0)
    (accept,) = rh.messages_to_send()
    ih.receive_message(accept.plaintext, BOB, 0.0)
    close = close_message(rh.channel, now=0.0).plaintext
    basic = json.dumps(
        {"id": "1", "type": "https://didcomm.org/basicmessage/2.0/message", "body": {}}
    ).encode()
    assert _stale(close, rid) == "a 'close' message"
    assert _stale(request, rid) == "a 'request' message"  # the peer's own attempt, not ours
    assert "another protocol" in str(_stale(basic, rid))
    # the peer is broken, not late: the handshake rejects these, as before
    broken = json.dumps({"type": PROTOCOL_URI + "accept", "thid": rid}).encode()
    assert _stale(broken, rid) is None
    assert _stale(b"\xff not json", rid) is None


def test_the_handshake_itself_would_abort_on_a_late_accept() -> None:
    # why the initiator filters: the core treats an accept in another thread as an error
    _, late_accept = _answer("an attempt that timed out")
    ih, _ = make_handshakes(seed="now")
    ih.initiate(0.0)
    with pytest.raises(RemoteProtocolError, match="another request"):
        ih.receive_message(late_accept, BOB, 0.0)
    assert ih.state is HandshakeState.ERROR
    # and, skipped instead, the real answer establishes the session
    ih, rh = make_handshakes(seed="now")
    request = ih.initiate(0.0)
    assert _stale(late_accept, _id(request.plaintext)) is not None
    rh.receive_message(request.plaintext, ALICE, 0.0)
    (accept,) = rh.messages_to_send()
    (event,) = ih.receive_message(accept.plaintext, BOB, 0.0)
    assert isinstance(event, SessionEstablished)


# -- with the real mediator -------------------------------------------------------------


@pytest.fixture
def mediator(tmp_path: Path) -> Iterator[MediatorProcess]:
    proc = mediator_process(tmp_path / "mediator").start()
    try:
        yield proc
    finally:
        proc.stop()


def test_a_late_accept_in_the_mailbox_does_not_abort_connect(
    mediator: MediatorProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An earlier attempt timed out; bob's accept to it reached alice's mailbox afterwards.
    The next connect picks that up first, skips it, and gets its session."""
    caplog.set_level(logging.DEBUG, logger="didsession.paths")

    async def scenario() -> None:
        info = await mediator_info(mediator.url)
        alice = Store(tmp_path / "a").create("alice", mediator=info.did)
        bob = Store(tmp_path / "b").create("bob", mediator=info.did)
        await request_mediation(alice, info)
        await request_mediation(bob, info)
        env_a, env_b = envelope_for(alice), envelope_for(bob)
        assert alice.x25519_secret is not None and bob.x25519_secret is not None

        earlier = Handshake(
            Role.INITIATOR,
            local_did=alice.did,
            static_private=alice.x25519_secret,
            peer_static_key=env_a.resolver.x25519_public,
            peer_did=bob.did,
        )
        answering = Handshake(
            Role.RESPONDER,
            local_did=bob.did,
            static_private=bob.x25519_secret,
            peer_static_key=env_b.resolver.x25519_public,
            accept_peer={alice.did},
        )
        answering.receive_message(earlier.initiate(time.time()).plaintext, alice.did, time.time())
        (late,) = answering.messages_to_send()
        await send_packed(await env_b.pack_plaintext(late.plaintext, to=late.to, frm=bob.did))

        accepted: asyncio.Queue[MediatedSession] = asyncio.Queue()
        ready = asyncio.Event()
        errors: list[Exception] = []
        server = asyncio.create_task(
            serve_via_mediator(
                bob,
                env_b,
                accepted.put,
                accept_peer={alice.did},
                relay_only=True,
                on_error=errors.append,
                on_ready=lambda _: ready.set(),
            )
        )
        try:
            await asyncio.wait_for(ready.wait(), 20)
            a = await connect_via_mediator(alice, env_a, bob.did, relay_only=True, timeout=20)
            b = await asyncio.wait_for(accepted.get(), 20)
            try:
                assert a.session.session_id == b.session.session_id
                # relay only: the path is the relay's, named as 'didsession status' does
                assert a.session.path.kind is b.session.path.kind is Route.RELAY
                assert a.transport.status()["path"] == "relay"
                a.session.send(b"hello bob")
                assert await asyncio.wait_for(b.session.recv(), 20) == b"hello bob"
                b.session.send(b"hello alice")
                assert await asyncio.wait_for(a.session.recv(), 20) == b"hello alice"
            finally:
                await a.aclose()
                await b.aclose()
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
        assert errors == []

    asyncio.run(scenario())
    skipped = [r.getMessage() for r in caplog.records if r.name == "didsession.paths"]
    assert any("'accept' for another request" in line for line in skipped), skipped
