"""The handshake core (spec §3-§5): negotiation, authentication, KCI, every state x input."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_pair import (
    ALICE,
    BOB,
    MALLORY,
    STATIC,
    det_rand,
    make_handshakes,
    resolve,
)

from didsession.errors import (
    DecryptError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from didsession.session import (
    ChannelState,
    Handshake,
    HandshakeState,
    HandshakeTimedOut,
    Limits,
    PathKind,
    Role,
    SessionClosed,
    SessionConfig,
    SessionEstablished,
    SessionRefused,
    Suite,
    close_message,
    pull_message,
    push_message,
    receive_close_message,
)
from didsession.session.handshake import (
    Accept,
    CloseMessage,
    Message,
    ProblemReport,
    Request,
)
from didsession.session.keyschedule import SessionSecrets


def _run(ih: Handshake, rh: Handshake, now: float = 0.0) -> tuple[list[object], list[object]]:
    request = ih.initiate(now)
    r_events = rh.receive_message(request.plaintext, ALICE, now)
    (accept,) = rh.messages_to_send()
    i_events = ih.receive_message(accept.plaintext, BOB, now)
    return list(i_events), list(r_events)


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("path", list(PathKind))
def test_handshake_establishes(suite: Suite, path: PathKind) -> None:
    ih, rh = make_handshakes(suite=suite, path=path)
    (ei,), (er,) = _run(ih, rh)
    assert isinstance(ei, SessionEstablished) and isinstance(er, SessionEstablished)
    assert ei.peer_did == BOB and er.peer_did == ALICE
    assert ei.session_id == er.session_id and len(ei.session_id) == 16
    assert ih.state is rh.state is HandshakeState.ESTABLISHED
    assert ei.channel is ih.channel and er.channel is rh.channel
    assert ih.channel.suite is suite and ih.channel.path is path
    assert ih.channel.transcript_hash == rh.channel.transcript_hash
    frame = ih.channel.seal(b"ping")
    assert rh.channel.open(frame) == b"ping"


def test_responder_picks_first_of_initiators_lists_and_min_limits() -> None:
    icfg = SessionConfig(
        suites=(Suite.CHACHA20POLY1305, Suite.AES256GCM),
        paths=(PathKind.DATAGRAM, PathKind.STREAM),
        limits=Limits(messages=1000, bytes=1 << 30, seconds=900),
        max_payload=4096,
    )
    rcfg = SessionConfig(
        suites=(Suite.AES256GCM, Suite.CHACHA20POLY1305),
        paths=(PathKind.STREAM, PathKind.DATAGRAM),
        limits=Limits(messages=5000, bytes=1 << 32, seconds=60),
        max_payload=2048,
    )
    ih, rh = make_handshakes(initiator_config=icfg, responder_config=rcfg)
    _run(ih, rh)
    params = ih.channel.params
    assert params == rh.channel.params
    assert params.suite is Suite.CHACHA20POLY1305 and params.path is PathKind.DATAGRAM
    assert params.limits == Limits(messages=1000, bytes=1 << 30, seconds=60)
    assert (params.initiator_max_payload, params.responder_max_payload) == (4096, 2048)
    assert ih.channel.max_payload == 2048 and rh.channel.max_payload == 4096


def test_no_common_suite_is_refused_with_a_problem_report() -> None:
    ih, rh = make_handshakes(
        initiator_config=SessionConfig(suites=(Suite.CHACHA20POLY1305,)),
        responder_config=SessionConfig(suites=(Suite.AES256GCM,)),
    )
    request = ih.initiate(5.0)
    with pytest.raises(RemoteProtocolError) as err:
        rh.receive_message(request.plaintext, ALICE, 5.0)
    assert err.value.code == "e.p.msg.session.suite"
    assert rh.state is HandshakeState.ERROR
    (report,) = rh.messages_to_send()
    assert report.to == ALICE
    msg = pull_message(report.plaintext)
    assert isinstance(msg, ProblemReport) and msg.code == "e.p.msg.session.suite"
    assert ih.receive_message(report.plaintext, BOB, 5.0) == [
        SessionRefused("e.p.msg.session.suite", "no common suite")
    ]
    assert ih.state is HandshakeState.CLOSED
    with pytest.raises(LocalProtocolError):
        _ = ih.channel


def _request_with(ih: Handshake, **changes: object) -> bytes:
    msg = pull_message(ih.initiate(0.0).plaintext)
    assert isinstance(msg, Request)
    return push_message(dataclasses.replace(msg, **changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"versions": ("2.0",)}, "e.p.msg.session.version"),
        ({"paths": ("carrier-pigeon",)}, "e.p.msg.session.path"),
        ({"suites": ("X25519-ROT13-MD5",)}, "e.p.msg.session.suite"),
        ({"epk": bytes(32)}, "e.p.msg.session.key"),
        ({"resume": bytes(16)}, "e.p.msg.session.resume"),
    ],
)
def test_negotiation_failures(changes: dict[str, object], code: str) -> None:
    ih, rh = make_handshakes()
    with pytest.raises(RemoteProtocolError) as err:
        rh.receive_message(_request_with(ih, **changes), ALICE, 0.0)
    assert err.value.code == code
    (report,) = rh.messages_to_send()
    assert pull_message(report.plaintext).code == code  # type: ignore[union-attr]


def test_unknown_suite_names_are_skipped() -> None:
    ih, rh = make_handshakes()
    raw = _request_with(ih, suites=("X25519-FUTURE", Suite.AES256GCM.value))
    (event,) = rh.receive_message(raw, ALICE, 0.0)
    assert isinstance(event, SessionEstablished)
    assert event.channel.suite is Suite.AES256GCM


def test_authenticated_sender_must_match_from() -> None:
    ih, rh = make_handshakes()
    request = ih.initiate(0.0)
    with pytest.raises(RemoteProtocolError) as err:
        rh.receive_message(request.plaintext, MALLORY, 0.0)
    assert err.value.code == "e.p.msg.session.sender"
    assert rh.state is HandshakeState.ERROR
    assert rh.messages_to_send() == []


def test_accept_must_come_from_the_expected_peer() -> None:
    ih, _ = make_handshakes()
    request = ih.initiate(0.0)
    # Mallory answers the request as herself, with a valid envelope of her own.
    mallory = Handshake(
        Role.RESPONDER,
        local_did=MALLORY,
        static_private=STATIC[MALLORY],
        peer_static_key=resolve,
        rand=det_rand("mallory"),
    )
    raw = json.loads(request.plaintext)
    raw["to"] = [MALLORY]
    mallory.receive_message(json.dumps(raw).encode(), ALICE, 0.0)
    (accept,) = mallory.messages_to_send()
    with pytest.raises(RemoteProtocolError) as err:
        ih.receive_message(accept.plaintext, MALLORY, 0.0)
    assert err.value.code == "e.p.msg.session.sender"


def test_message_for_someone_else_is_refused() -> None:
    ih, rh = make_handshakes()
    raw = json.loads(ih.initiate(0.0).plaintext)
    raw["to"] = [MALLORY]
    with pytest.raises(RemoteProtocolError) as err:
        rh.receive_message(json.dumps(raw).encode(), ALICE, 0.0)
    assert err.value.code == "e.p.msg.session.sender"


@pytest.mark.parametrize("policy", [{BOB}, lambda did: did == BOB])
def test_responder_policy(policy: object) -> None:
    ih, rh = make_handshakes(accept_peer=policy)
    with pytest.raises(RemoteProtocolError) as err:
        rh.receive_message(ih.initiate(0.0).plaintext, ALICE, 0.0)
    assert err.value.code == "e.p.msg.session.unauthorized"
    (report,) = rh.messages_to_send()
    assert isinstance(pull_message(report.plaintext), ProblemReport)


def test_responder_restricted_to_one_peer_did() -> None:
    ih, rh = make_handshakes(peer_did=MALLORY)
    with pytest.raises(RemoteProtocolError) as err:
        rh.receive_message(ih.initiate(0.0).plaintext, ALICE, 0.0)
    assert err.value.code == "e.p.msg.session.unauthorized"


def test_unresolvable_initiator_is_refused() -> None:
    ih, rh = make_handshakes()
    raw = json.loads(ih.initiate(0.0).plaintext)
    raw["from"] = "did:example:nobody"
    with pytest.raises(RemoteProtocolError) as err:
        rh.receive_message(json.dumps(raw).encode(), "did:example:nobody", 0.0)
    assert err.value.code == "e.p.msg.session.key"


# -- KCI (spec §11.2) ---------------------------------------------------------------------


def test_kci_forged_accept_yields_no_usable_keys() -> None:
    """Mallory stole ALICE's static key, so ECDH-1PU lets her forge an authcrypt accept
    "from BOB" to ALICE.  She still cannot compute es = DH(e_I, S_BOB): no common keys."""
    ih, _ = make_handshakes()
    request = ih.initiate(0.0)
    forger = Handshake(
        Role.RESPONDER,
        local_did=BOB,  # claims to be BOB...
        static_private=STATIC[MALLORY],  # ...but lacks BOB's static key
        peer_static_key=lambda did: resolve(did),  # knows ALICE's keys, static included
        rand=det_rand("forger"),
    )
    (forged,) = forger.receive_message(request.plaintext, ALICE, 0.0)
    assert isinstance(forged, SessionEstablished)
    (accept,) = forger.messages_to_send()
    # The envelope layer, fooled by the KCI forgery, reports BOB as the sender.
    (event,) = ih.receive_message(accept.plaintext, BOB, 0.0)
    assert isinstance(event, SessionEstablished)
    assert event.session_id != forged.session_id
    with pytest.raises(DecryptError):
        ih.channel.open(forged.channel.seal(b"give me your shares"))


def test_kci_forged_request_yields_no_usable_keys() -> None:
    """The mirror case: Mallory stole BOB's static key and forges a request "from ALICE";
    BOB's se = DH(e_R, S_ALICE) needs ALICE's private key, which Mallory lacks."""
    _, rh = make_handshakes()
    forger = Handshake(
        Role.INITIATOR,
        local_did=ALICE,
        static_private=STATIC[MALLORY],
        peer_static_key=resolve,
        peer_did=BOB,
        rand=det_rand("forger"),
    )
    request = forger.initiate(0.0)
    (event,) = rh.receive_message(request.plaintext, ALICE, 0.0)
    assert isinstance(event, SessionEstablished)
    (accept,) = rh.messages_to_send()
    forger.receive_message(accept.plaintext, BOB, 0.0)
    with pytest.raises(DecryptError):
        rh.channel.open(forger.channel.seal(b"hello, it's alice"))


# -- timers -------------------------------------------------------------------------------


def test_handshake_timeout() -> None:
    ih, rh = make_handshakes()
    assert ih.get_timer() is None
    request = ih.initiate(100.0)
    assert ih.get_timer() == 130.0
    assert ih.handle_timer(129.9) == []
    assert ih.handle_timer(130.0) == [HandshakeTimedOut()]
    assert ih.state is HandshakeState.CLOSED and ih.get_timer() is None
    rh.receive_message(request.plaintext, ALICE, 100.0)
    (accept,) = rh.messages_to_send()
    with pytest.raises(RemoteProtocolError) as err:
        ih.receive_message(accept.plaintext, BOB, 131.0)
    assert err.value.code == "e.p.msg.session.unexpected"


def test_repr_of_secrets_shows_only_ids() -> None:
    """Key material stays out of repr(): a session's secrets or its resumption record in
    a log line or a failed assertion show the ids only."""
    ih, rh = make_handshakes()
    _run(ih, rh)
    resumption = rh.channel.resumption()
    assert repr(resumption.secret) not in repr(resumption)
    assert repr(resumption.session_id) in repr(resumption)
    fields = {f.name: bytes([i]) * 32 for i, f in enumerate(dataclasses.fields(SessionSecrets))}
    shown = repr(SessionSecrets(**fields))
    for name, value in fields.items():
        assert (repr(value) in shown) == (name in ("session_id", "attach_id")), name


# -- rekey: fresh-DH successor session (spec §3.4) ----------------------------------------


def test_rekey_handshake_replaces_a_session() -> None:
    ih, rh = make_handshakes()
    _run(ih, rh)
    old_i, old_r = ih.channel, rh.channel
    table = {old_r.session_id: old_r.resumption()}
    ih2, rh2 = make_handshakes(seed="second", resumptions=table.get)
    ih2 = Handshake(
        Role.INITIATOR,
        local_did=ALICE,
        static_private=STATIC[ALICE],
        peer_static_key=resolve,
        peer_did=BOB,
        rand=det_rand("second/i"),
        resume=old_i.resumption(),
    )
    request = ih2.initiate(1.0)
    assert json.loads(request.plaintext)["type"].endswith("/rekey")
    (er,) = rh2.receive_message(request.plaintext, ALICE, 1.0)
    (accept,) = rh2.messages_to_send()
    (ei,) = ih2.receive_message(accept.plaintext, BOB, 1.0)
    assert isinstance(ei, SessionEstablished) and isinstance(er, SessionEstablished)
    assert ei.resumed == er.resumed == old_i.session_id
    assert ei.session_id == er.session_id != old_i.session_id
    assert rh2.channel.open(ih2.channel.seal(b"new")) == b"new"


def test_rekey_needs_the_same_peer() -> None:
    ih, rh = make_handshakes()
    _run(ih, rh)
    wrong = dataclasses.replace(rh.channel.resumption(), peer_did=MALLORY)
    _, rh2 = make_handshakes(seed="x", resumptions=lambda sid: wrong)
    ih2 = Handshake(
        Role.INITIATOR,
        local_did=ALICE,
        static_private=STATIC[ALICE],
        peer_static_key=resolve,
        peer_did=BOB,
        resume=ih.channel.resumption(),
    )
    with pytest.raises(RemoteProtocolError) as err:
        rh2.receive_message(ih2.initiate(0.0).plaintext, ALICE, 0.0)
    assert err.value.code == "e.p.msg.session.resume"
    with pytest.raises(LocalProtocolError):
        Handshake(
            Role.INITIATOR,
            local_did=ALICE,
            static_private=STATIC[ALICE],
            peer_static_key=resolve,
            peer_did=MALLORY,
            resume=ih.channel.resumption(),
        )


# -- out-of-band close (spec §3.6) --------------------------------------------------------


def test_didcomm_close_message() -> None:
    ih, rh = make_handshakes()
    _run(ih, rh)
    out = close_message(ih.channel, now=2.0, code="e.p.me.res", rand=det_rand("c"))
    assert out.to == BOB and ih.channel.state is ChannelState.CLOSED
    with pytest.raises(RemoteProtocolError):
        receive_close_message(rh.channel, out.plaintext, MALLORY)
    assert receive_close_message(rh.channel, out.plaintext, ALICE) == [
        SessionClosed("e.p.me.res", by_peer=True)
    ]
    assert rh.channel.state is ChannelState.CLOSED
    assert receive_close_message(rh.channel, out.plaintext, ALICE) == []


# -- codec pair ---------------------------------------------------------------------------

_MESSAGES: list[Message] = [
    Request(
        "id-1", ALICE, BOB, 1, ("1.0",), ("a", "b"), ("stream",), bytes(range(32)), Limits(), 65536
    ),
    Request(
        "id-2",
        ALICE,
        BOB,
        2,
        ("1.0",),
        ("a",),
        ("datagram",),
        bytes(32),
        Limits(16, 1 << 24, 1),
        64,
        resume=bytes(range(16)),
    ),
    Accept(
        "id-3",
        BOB,
        ALICE,
        3,
        "id-1",
        "1.0",
        Suite.CHACHA20POLY1305,
        PathKind.DATAGRAM,
        bytes(range(1, 33)),
        Limits(),
        1200,
    ),
    ProblemReport("id-4", BOB, ALICE, 4, "id-1", "e.p.msg.session.suite", "no common suite"),
    CloseMessage("id-5", ALICE, BOB, 5, bytes(16), ""),
]


@pytest.mark.parametrize("msg", _MESSAGES, ids=lambda m: type(m).__name__)
def test_message_codec_round_trip(msg: Message) -> None:
    raw = push_message(msg)
    assert pull_message(raw) == msg
    assert push_message(pull_message(raw)) == raw


def test_message_golden_bytes() -> None:
    assert push_message(_MESSAGES[3]) == (
        b'{"id":"id-4","type":"https://didsession.dev/protocols/session/1.0/problem-report",'
        b'"from":"did:example:bob","to":["did:example:alice"],"created_time":4,"thid":"id-1",'
        b'"body":{"code":"e.p.msg.session.suite","comment":"no common suite"}}'
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["body"].update(max_payload=True),
        lambda d: d["body"].update(epk=d["body"]["epk"] + "="),
        lambda d: d["body"].update(epk="AAAA"),
        lambda d: d["body"]["limits"].update(messages=1),
        lambda d: d["body"].update(versions=[]),
        lambda d: d["body"].update(suites=["x"] * 9),
        lambda d: d.update(to=[BOB, ALICE]),
        lambda d: d.update(created_time=-1),
        lambda d: d.update(body=[]),
        lambda d: d.pop("id"),
        lambda d: d.update(type="https://didcomm.org/basicmessage/2.0/message"),
    ],
)
def test_malformed_messages(mutate: object) -> None:
    ih, rh = make_handshakes()
    raw = json.loads(ih.initiate(0.0).plaintext)
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(RemoteProtocolError):
        rh.receive_message(json.dumps(raw).encode(), ALICE, 0.0)
    assert rh.state is HandshakeState.ERROR


def test_duplicate_members_and_non_json_are_malformed() -> None:
    for raw in (b'{"id":"a","id":"b"}', b"\xff\xfe", b"[" * 100000, b'{"x": NaN}', b""):
        with pytest.raises(RemoteProtocolError) as err:
            pull_message(raw)
        assert err.value.code == "e.p.msg.session.malformed"


def test_unknown_members_are_ignored() -> None:
    ih, rh = make_handshakes()
    raw = json.loads(ih.initiate(0.0).plaintext)
    raw["expires_time"] = 99
    raw["body"]["future"] = {"x": 1}
    (event,) = rh.receive_message(json.dumps(raw).encode(), ALICE, 0.0)
    assert isinstance(event, SessionEstablished)


# -- every (role, state, input) -----------------------------------------------------------

_INPUTS = ["initiate", "request", "rekey", "accept", "problem-report", "close", "garbage"]
_STATES = {
    Role.INITIATOR: ["SEND_REQUEST", "EXPECT_ACCEPT", "ESTABLISHED", "CLOSED", "ERROR"],
    Role.RESPONDER: ["EXPECT_REQUEST", "ESTABLISHED", "ERROR"],
}


def _in_state(role: Role, state: str) -> tuple[Handshake, dict[str, bytes]]:
    """A handshake in ``state`` and one valid message of each kind addressed to it."""
    ih, rh = make_handshakes()
    request = ih.initiate(0.0)
    rh.receive_message(request.plaintext, ALICE, 0.0)
    (accept,) = rh.messages_to_send()
    req_id = json.loads(request.plaintext)["id"]
    me, peer = (ALICE, BOB) if role is Role.INITIATOR else (BOB, ALICE)
    msgs = {
        "request": request.plaintext,
        "rekey": _request_with(make_handshakes(seed="r")[0], resume=bytes(16)),
        "accept": accept.plaintext,
        "problem-report": push_message(ProblemReport("p", peer, me, 0, req_id, "e.p.x", "no")),
        "close": push_message(CloseMessage("c", peer, me, 0, bytes(16), "")),
        "garbage": b"\x00not json",
    }
    if role is Role.INITIATOR:
        hs = {"SEND_REQUEST": make_handshakes(seed="fresh")[0]}.get(state, ih)
        if state == "ESTABLISHED":
            ih.receive_message(accept.plaintext, BOB, 0.0)
        elif state == "CLOSED":
            ih.receive_message(msgs["problem-report"], BOB, 0.0)
        elif state == "ERROR":
            with pytest.raises(RemoteProtocolError):
                ih.receive_message(b"{}", BOB, 0.0)
    else:
        hs = make_handshakes(seed="fresh")[1] if state == "EXPECT_REQUEST" else rh
        if state == "ERROR":
            hs = make_handshakes(seed="fresh")[1]
            with pytest.raises(RemoteProtocolError):
                hs.receive_message(b"{}", ALICE, 0.0)
    assert hs.state.name == state
    return hs, msgs


_VALID = {
    (Role.INITIATOR, "SEND_REQUEST", "initiate"),
    (Role.INITIATOR, "EXPECT_ACCEPT", "accept"),
    (Role.INITIATOR, "EXPECT_ACCEPT", "problem-report"),
    (Role.RESPONDER, "EXPECT_REQUEST", "request"),
}


@pytest.mark.parametrize(
    ("role", "state", "kind"),
    [(r, s, i) for r, states in _STATES.items() for s in states for i in _INPUTS],
    ids=lambda x: x.value if isinstance(x, Role) else x,
)
def test_every_state_input_pair(role: Role, state: str, kind: str) -> None:
    hs, msgs = _in_state(role, state)
    sender = BOB if role is Role.INITIATOR else ALICE
    try:
        if kind == "initiate":
            out = hs.initiate(0.0)
            assert pull_message(out.plaintext)
            result = "ok"
        else:
            events = hs.receive_message(msgs[kind], sender, 0.0)
            assert len(events) == 1
            assert isinstance(events[0], SessionEstablished | SessionRefused)
            result = "ok"
    except ProtocolError as exc:
        expected = LocalProtocolError if kind == "initiate" else RemoteProtocolError
        assert isinstance(exc, expected)
        assert hs.state is HandshakeState.ERROR
        result = "error"
    assert (result == "ok") == ((role, state, kind) in _VALID)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_messages_give_events_or_remote_errors(data: st.DataObject) -> None:
    ih, rh = make_handshakes()
    request = ih.initiate(0.0).plaintext
    raw = bytearray(request)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        events = rh.receive_message(bytes(raw), ALICE, 0.0)
    except RemoteProtocolError:
        assert rh.state is HandshakeState.ERROR
    else:
        assert isinstance(events[0], SessionEstablished)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_remote_errors(blob: bytes) -> None:
    _, rh = make_handshakes()
    with pytest.raises(RemoteProtocolError):
        rh.receive_message(blob, ALICE, 0.0)


# -- address candidates (spec §15.1) ----------------------------------------------------------

_CAND_I = {"type": "host", "proto": "tcp", "host": "192.168.1.10", "port": 4000, "priority": 9}
_CAND_R = {"type": "srflx", "proto": "tcp", "host": "203.0.113.7", "port": 5000, "priority": 7}


def _with_candidates(
    ours: list[dict[str, object]] | None, theirs: list[dict[str, object]] | None
) -> tuple[Handshake, Handshake]:
    ih, _ = make_handshakes()
    ih._candidates = tuple(ours) if ours is not None else None  # as if given to __init__
    rh = Handshake(
        Role.RESPONDER,
        local_did=BOB,
        static_private=STATIC[BOB],
        peer_static_key=resolve,
        candidates=theirs,
    )
    return ih, rh


def test_candidates_travel_in_request_and_accept_and_bind_the_keys() -> None:
    ih, rh = _with_candidates([_CAND_I], [_CAND_R])
    req = ih.initiate(0.0)
    assert json.loads(req.plaintext)["body"]["candidates"] == [_CAND_I]
    rh.receive_message(req.plaintext, ALICE, 0.0)
    (acc,) = rh.messages_to_send()
    ih.receive_message(acc.plaintext, BOB, 0.0)
    assert rh.peer_candidates == (_CAND_I,) and ih.peer_candidates == (_CAND_R,)
    assert ih.channel.session_id == rh.channel.session_id
    # Another address in the request gives another transcript: nobody can swap it.
    ih2, rh2 = _with_candidates([{**_CAND_I, "port": 4001}], [_CAND_R])
    req2 = ih2.initiate(0.0)
    rh2.receive_message(req2.plaintext, ALICE, 0.0)
    assert rh2.channel.transcript_hash != rh.channel.transcript_hash


def test_relay_only_sends_no_candidates() -> None:
    ih, rh = _with_candidates(None, None)
    req = ih.initiate(0.0)
    assert "candidates" not in json.loads(req.plaintext)["body"]
    rh.receive_message(req.plaintext, ALICE, 0.0)
    (acc,) = rh.messages_to_send()
    assert "candidates" not in json.loads(acc.plaintext)["body"]
    assert rh.peer_candidates is None


@pytest.mark.parametrize(
    "bad",
    [
        "not a list",
        [_CAND_I] * 17,
        ["a string"],
        [{"type": "host", "pad": "x" * 300}],
    ],
    ids=["not-list", "too-many", "not-object", "too-large"],
)
def test_malformed_candidates_are_refused(bad: object) -> None:
    ih, rh = make_handshakes()
    req = json.loads(ih.initiate(0.0).plaintext)
    req["body"]["candidates"] = bad
    with pytest.raises(RemoteProtocolError) as info:
        rh.receive_message(json.dumps(req).encode(), ALICE, 0.0)
    assert info.value.code == "e.p.msg.session.malformed"
