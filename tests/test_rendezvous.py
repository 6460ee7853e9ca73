"""Sessions through the mediator (didsession/rendezvous.py): which messages in the
initiator's mailbox answer the pending request, which requests in the responder's backlog
still wait for an answer, in memory first, then with the real mediator."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mediator_proc import MediatorProcess, mediator_process
from session_pair import ALICE, BOB, MALLORY, STATIC, det_rand, make_handshakes, resolve

from didsession import rendezvous
from didsession.envelope import Envelope
from didsession.errors import RemoteProtocolError
from didsession.identity import Identity, Store
from didsession.mediation import (
    MediatorClient,
    MediatorInfo,
    mediator_info,
    request_mediation,
    send_packed,
)
from didsession.peer import envelope_for
from didsession.rendezvous import (
    REQUEST_MAX_AGE,
    MediatedSession,
    _stale,
    _stale_requests,
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


def _request(created: float, seed: str = "", frm: str = ALICE) -> bytes:
    """A ``request`` from ``frm`` to BOB created at ``created``."""
    hs = Handshake(
        Role.INITIATOR,
        local_did=frm,
        static_private=STATIC[frm],
        peer_static_key=resolve,
        peer_did=BOB,
        rand=det_rand(f"{seed}/{created}/{frm}"),
    )
    return hs.initiate(created).plaintext


NOW = 1_700_000_000.0


def test_a_backlog_request_is_stale_when_old_or_followed_by_a_later_one() -> None:
    retried, latest = _request(NOW - 40), _request(NOW - 5)
    superseded = "a request superseded by a later one"
    assert _stale_requests([(latest, ALICE)], BOB, NOW) == [None]
    assert _stale_requests([(retried, ALICE), (latest, ALICE)], BOB, NOW) == [superseded, None]
    # created_time decides, not the queue: an older request queued later (a replay) loses
    assert _stale_requests([(latest, ALICE), (retried, ALICE)], BOB, NOW) == [None, superseded]
    # in the same second, the one queued later; the same request twice is answered once
    twin = _request(NOW - 5, seed="twin")
    assert _stale_requests([(latest, ALICE), (twin, ALICE)], BOB, NOW) == [superseded, None]
    assert _stale_requests([(latest, ALICE), (latest, ALICE)], BOB, NOW) == [superseded, None]
    # alone, by its age: the initiator stopped waiting long ago
    edge, old = _request(NOW - REQUEST_MAX_AGE), _request(NOW - REQUEST_MAX_AGE - 1)
    assert _stale_requests([(edge, ALICE)], BOB, NOW) == [None]
    assert _stale_requests([(old, ALICE)], BOB, NOW) == [
        f"a request created {REQUEST_MAX_AGE + 1:.0f} s ago"
    ]
    # one from the future (the initiator's clock is ahead) is no older than one from now
    assert _stale_requests([(_request(NOW + 600), ALICE)], BOB, NOW) == [None]


def test_only_authenticated_requests_to_us_weigh_in_the_backlog() -> None:
    retried, latest = _request(NOW - 40), _request(NOW - 5)
    mallorys = _request(NOW - 1, frm=MALLORY)
    # another peer's request supersedes nothing of alice's
    assert _stale_requests([(retried, ALICE), (mallorys, MALLORY)], BOB, NOW) == [None, None]
    # a later request claiming alice whose envelope is not alice's (or anoncrypt) supersedes
    # nothing either, and is left to the handshake, which rejects it
    for sender in (MALLORY, None):
        assert _stale_requests([(retried, ALICE), (latest, sender)], BOB, NOW) == [None, None]
    # requests to another DID are the handshake's to reject as well
    assert _stale_requests([(retried, ALICE), (latest, ALICE)], MALLORY, NOW) == [None, None]
    # other messages are no requests to answer or skip
    _, accept = _answer("an answer")
    basic = json.dumps({"id": "1", "type": "https://didcomm.org/basicmessage/2.0/message"})
    broken = json.dumps({"type": PROTOCOL_URI + "request", "created_time": 0}).encode()
    others = [(accept, BOB), (basic.encode(), ALICE), (broken, ALICE), (b"\xff", ALICE)]
    assert _stale_requests(others, BOB, NOW) == [None] * 4


# -- with the real mediator -------------------------------------------------------------


@pytest.fixture
def mediator(tmp_path: Path) -> Iterator[MediatorProcess]:
    proc = mediator_process(tmp_path / "mediator").start()
    try:
        yield proc
    finally:
        proc.stop()


async def _parties(
    mediator: MediatorProcess, tmp_path: Path
) -> tuple[MediatorInfo, tuple[Identity, Envelope], tuple[Identity, Envelope]]:
    """The mediator, and alice and bob with mailboxes there."""
    info = await mediator_info(mediator.url)
    alice = Store(tmp_path / "a").create("alice", mediator=info.did)
    bob = Store(tmp_path / "b").create("bob", mediator=info.did)
    await request_mediation(alice, info)
    await request_mediation(bob, info)
    return info, (alice, envelope_for(alice)), (bob, envelope_for(bob))


@dataclass
class _Responder:
    """``serve_via_mediator`` running as a task, and what it did."""

    task: asyncio.Task[None]
    ready: asyncio.Event
    accepted: asyncio.Queue[MediatedSession]
    errors: list[Exception]

    @classmethod
    def start(cls, bob: Identity, env_b: Envelope, accept_peer: set[str]) -> _Responder:
        accepted: asyncio.Queue[MediatedSession] = asyncio.Queue()
        ready = asyncio.Event()
        errors: list[Exception] = []
        task = asyncio.create_task(
            serve_via_mediator(
                bob,
                env_b,
                accepted.put,
                accept_peer=accept_peer,
                relay_only=True,
                on_error=errors.append,
                on_ready=lambda _: ready.set(),
            )
        )
        return cls(task, ready, accepted, errors)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _mailbox_holds(info: MediatorInfo, who: Identity, env: Envelope, count: int) -> None:
    """Wait until ``who``'s mailbox holds ``count`` messages."""
    async with MediatorClient(info, who, env) as client:
        async with asyncio.timeout(20):
            while (await client.status()).message_count != count:
                await asyncio.sleep(0.05)


def test_a_late_accept_in_the_mailbox_does_not_abort_connect(
    mediator: MediatorProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An earlier attempt timed out; bob's accept to it reached alice's mailbox afterwards.
    The next connect picks that up first, skips it, and gets its session."""
    caplog.set_level(logging.DEBUG, logger="didsession.paths")

    async def scenario() -> None:
        _, (alice, env_a), (bob, env_b) = await _parties(mediator, tmp_path)
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

        responder = _Responder.start(bob, env_b, {alice.did})
        try:
            await asyncio.wait_for(responder.ready.wait(), 20)
            a = await connect_via_mediator(alice, env_a, bob.did, relay_only=True, timeout=20)
            b = await asyncio.wait_for(responder.accepted.get(), 20)
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
            await responder.stop()
        assert responder.errors == []

    asyncio.run(scenario())
    skipped = [r.getMessage() for r in caplog.records if r.name == "didsession.paths"]
    assert any("'accept' for another request" in line for line in skipped), skipped


@pytest.mark.parametrize(
    ("age", "why", "retried_before_listening"),
    [
        (40, "a request superseded by a later one", True),
        (600, "a request created 60", False),
    ],
    ids=["retried", "expired"],
)
def test_a_stale_request_in_the_responders_backlog_is_not_answered(
    mediator: MediatorProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    age: float,
    why: str,
    retried_before_listening: bool,
) -> None:
    """Alice's earlier request waits in bob's mailbox, its connect long given up: bob was
    not listening.  Alice connects again, before bob listens (retried: both requests are
    in his backlog) or after (expired: the earlier one is old).  Bob answers the new
    request only: no accept to alice, no relay slot, one session, the new one."""
    caplog.set_level(logging.DEBUG, logger="didsession.paths")
    relayed: list[bytes] = []  # the sessions bob took to the relay
    on_relay = rendezvous._on_relay

    async def counting_on_relay(identity: Identity, *args: Any) -> MediatedSession:
        if identity.name == "bob":
            relayed.append(args[2].session_id)  # args: envelope, info, channel, ...
        return await on_relay(identity, *args)

    monkeypatch.setattr(rendezvous, "_on_relay", counting_on_relay)

    async def scenario() -> None:
        info, (alice, env_a), (bob, env_b) = await _parties(mediator, tmp_path)
        old = Handshake(
            Role.INITIATOR,
            local_did=alice.did,
            static_private=alice.x25519_secret or b"",
            peer_static_key=env_a.resolver.x25519_public,
            peer_did=bob.did,
        ).initiate(time.time() - age)
        await send_packed(await env_a.pack_plaintext(old.plaintext, to=old.to, frm=alice.did))

        def connect() -> asyncio.Task[MediatedSession]:
            return asyncio.create_task(
                connect_via_mediator(alice, env_a, bob.did, relay_only=True, timeout=20)
            )

        if retried_before_listening:
            connecting = connect()
            await _mailbox_holds(info, bob, env_b, 2)
            responder = _Responder.start(bob, env_b, {alice.did})
        else:
            responder = _Responder.start(bob, env_b, {alice.did})
            await asyncio.wait_for(responder.ready.wait(), 20)
            await _mailbox_holds(info, bob, env_b, 0)  # it took its backlog
            connecting = connect()
        try:
            a = await connecting
            b = await asyncio.wait_for(responder.accepted.get(), 20)
            try:
                assert a.session.session_id == b.session.session_id
                assert relayed == [b.session.session_id]
                a.session.send(b"hello bob")
                assert await asyncio.wait_for(b.session.recv(), 20) == b"hello bob"
            finally:
                await a.aclose()
                await b.aclose()
        finally:
            await responder.stop()
        assert responder.errors == []
        assert responder.accepted.empty()

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "didsession.paths"]
    assert any(f"did not answer {why}" in line for line in lines), lines
    # no accept for the old request reached alice's mailbox
    assert not any("for another request" in line for line in lines), lines
