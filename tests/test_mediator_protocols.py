"""The mediator's sans-IO protocol cores in memory: parsers, replies, relay pairing, config."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from didsession.errors import ConfigError, MediationError
from didsession.mediation import _status, parse_delivery
from mediator.config import load_config
from mediator.protocols import coordinate, discover_features, pickup, relay, routing
from mediator.protocols.dispatch import receive
from mediator.protocols.events import (
    DeliveryRequested,
    FeaturesQueried,
    ForwardReceived,
    KeylistAction,
    KeylistQueried,
    KeylistUpdateRequested,
    LiveDeliveryChanged,
    MediationRequested,
    MessagesReceived,
    PingReceived,
    StatusRequested,
)
from mediator.protocols.messages import (
    FORWARD,
    PROTOCOLS,
    Codes,
    b64url_decode,
    b64url_encode,
)

A = "did:peer:2.Ez6LSexample.Vz6MkA"
B = "did:peer:2.Ez6LSexample.Vz6MkB"
M = "did:peer:2.Ez6LSmediator.Vz6MkM"
CM = "https://didcomm.org/coordinate-mediation/2.0"
PU = "https://didcomm.org/messagepickup/3.0"


def msg(type_: str, body: Any = None, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"id": "req-1", "type": type_, **extra}
    if body is not None:
        m["body"] = body
    return m


def parse(message: dict[str, Any], sender: str | None = A, *, live: bool = True) -> Any:
    return receive(message, sender, live_capable=live, max_payload=1000)


def refused(message: dict[str, Any], sender: str | None = A, *, live: bool = True) -> str:
    with pytest.raises(MediationError) as info:
        parse(message, sender, live=live)
    return info.value.code


# -- dispatch --------------------------------------------------------------------------------


def test_each_request_becomes_its_event() -> None:
    cases: list[tuple[dict[str, Any], type]] = [
        (msg(f"{CM}/mediate-request"), MediationRequested),
        (
            msg(f"{CM}/keylist-update", {"updates": [{"recipient_did": B, "action": "add"}]}),
            KeylistUpdateRequested,
        ),
        (msg(f"{CM}/keylist-query", {"paginate": {"limit": 5, "offset": 2}}), KeylistQueried),
        (msg(f"{PU}/status-request", {}), StatusRequested),
        (msg(f"{PU}/delivery-request", {"limit": 3}), DeliveryRequested),
        (msg(f"{PU}/messages-received", {"message_id_list": ["a", "b", "a"]}), MessagesReceived),
        (msg(f"{PU}/live-delivery-change", {"live_delivery": True}), LiveDeliveryChanged),
        (msg("https://didcomm.org/trust-ping/2.0/ping", {}), PingReceived),
        (
            msg(
                "https://didcomm.org/discover-features/2.0/queries",
                {"queries": [{"feature-type": "protocol", "match": "*"}]},
            ),
            FeaturesQueried,
        ),
    ]
    for message, kind in cases:
        event = parse(message)
        assert event.thid == "req-1" and event.sender == A
        assert type(event) is kind
    assert parse(cases[5][0]).message_ids == ("a", "b")  # duplicates folded
    assert parse(cases[2][0]).offset == 2
    top = {"paginate": {"limit": 10**30, "offset": coordinate.MAX_KEYLIST_OFFSET}}
    edge = parse(msg(f"{CM}/keylist-query", top))
    assert (edge.offset, edge.limit) == (coordinate.MAX_KEYLIST_OFFSET, coordinate.MAX_KEYLIST_PAGE)


def test_thid_of_a_threaded_request_is_kept() -> None:
    event = parse(msg(f"{PU}/status-request", {}, thid="thread-9"))
    assert event.thid == "thread-9"


def test_everything_but_forward_ping_and_features_needs_authcrypt() -> None:
    needs = [
        msg(f"{CM}/mediate-request"),
        msg(f"{CM}/keylist-query", {}),
        msg(f"{PU}/status-request", {}),
        msg(f"{PU}/delivery-request", {"limit": 1}),
        msg(f"{PU}/messages-received", {"message_id_list": []}),
        msg(f"{PU}/live-delivery-change", {"live_delivery": False}),
    ]
    for message in needs:
        assert refused(message, None) == Codes.UNAUTHENTICATED
    assert isinstance(parse(msg("https://didcomm.org/trust-ping/2.0/ping"), None), PingReceived)


@pytest.mark.parametrize(
    "message",
    [
        msg(f"{CM}/keylist-update", {"updates": "nope"}),
        msg(f"{CM}/keylist-update", {"updates": [{"recipient_did": "not a did", "action": "add"}]}),
        msg(f"{CM}/keylist-update", {"updates": [{"recipient_did": B, "action": "steal"}]}),
        msg(f"{CM}/keylist-update", {"updates": [{"recipient_did": B, "action": "add"}] * 101}),
        msg(f"{CM}/keylist-query", {"paginate": {"limit": -1, "offset": 0}}),
        # limit 0 would be ZRANGE key 0 -1 on Redis: the whole keylist.
        msg(f"{CM}/keylist-query", {"paginate": {"limit": 0, "offset": 0}}),
        # past int64: SQLite and Redis fail, which would be reported as our fault.
        msg(f"{CM}/keylist-query", {"paginate": {"limit": 1, "offset": 10**30}}),
        msg(f"{CM}/keylist-query", {"paginate": {"limit": 1, "offset": 2**63 - 1}}),
        msg(f"{PU}/delivery-request", {"limit": 0}),
        msg(f"{PU}/delivery-request", {"limit": True}),
        msg(f"{PU}/delivery-request", {}),
        msg(f"{PU}/messages-received", {"message_id_list": [1, 2]}),
        msg(f"{PU}/live-delivery-change", {"live_delivery": "yes"}),
        msg(f"{PU}/status-request", "not an object"),
        msg("https://didcomm.org/trust-ping/2.0/ping", {"response_requested": "sure"}),
        msg("https://didcomm.org/discover-features/2.0/queries", {"queries": []}),
        msg(FORWARD, {"next": B}),
        msg(FORWARD, {"next": "nobody"}, attachments=[{"data": {"json": {}}}]),
    ],
    ids=lambda m: m["type"].rsplit("/", 1)[-1],
)
def test_malformed_requests_are_refused_with_e_p_msg(message: dict[str, Any]) -> None:
    assert refused(message) == Codes.MALFORMED


def test_unknown_type_and_live_mode_on_http() -> None:
    assert refused(msg("https://example.org/x/1.0/y")) == Codes.UNSUPPORTED
    change = msg(f"{PU}/live-delivery-change", {"live_delivery": True})
    assert refused(change, live=False) == Codes.LIVE_MODE_NOT_SUPPORTED
    assert parse(msg(f"{PU}/live-delivery-change", {"live_delivery": False}), live=False)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "type", "body", "thid", "attachments", "expires_time"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        ),
    ),
    st.sampled_from([None, A]),
    st.sampled_from(
        [FORWARD, f"{CM}/keylist-update", f"{PU}/delivery-request", f"{PU}/messages-received"]
    ),
)
def test_any_message_yields_an_event_or_a_mediation_error(
    message: dict[str, Any], sender: str | None, type_: str
) -> None:
    message.setdefault("type", type_)
    try:
        parse(message, sender)
    except MediationError as exc:
        assert exc.code.startswith(("e.p.", "e.m."))


# -- forward ---------------------------------------------------------------------------------


def forward(next_: str = B, size: int = 10, **extra: Any) -> dict[str, Any]:
    return msg(
        FORWARD,
        {"next": next_},
        attachments=[{"data": {"base64": b64url_encode(b"x" * size)}}],
        **extra,
    )


def test_forward_event_and_expiry() -> None:
    event = parse(forward(B + "#key-2", expires_time=2000))
    assert isinstance(event, ForwardReceived)
    assert event.recipient_did == B and event.next == B + "#key-2" and event.payload == b"x" * 10
    assert routing.expiry(event, now=1000, ttl=60) == 1060
    assert routing.expiry(event, now=1000, ttl=5000) == 2000
    with pytest.raises(MediationError) as info:
        routing.expiry(event, now=2000, ttl=60)
    assert info.value.code == Codes.EXPIRED
    assert refused(forward(size=1001)) == Codes.TOO_BIG
    assert refused(forward(expires_time="soon")) == Codes.MALFORMED
    # float() of these overflows: the sender's mistake, not a server fault.
    assert refused(forward(expires_time=10**400)) == Codes.MALFORMED
    assert refused(forward(expires_time=-(10**400))) == Codes.MALFORMED
    assert refused(forward(expires_time=routing.MAX_EXPIRES_TIME + 1)) == Codes.MALFORMED
    latest = parse(forward(expires_time=routing.MAX_EXPIRES_TIME))
    assert routing.expiry(latest, now=1000, ttl=60) == 1060
    assert parse(forward(), None).sender is None  # anoncrypt forwards are fine


# -- replies ---------------------------------------------------------------------------------


def test_grant_keylist_and_status_shapes() -> None:
    req = parse(msg(f"{CM}/mediate-request"))
    grant = coordinate.mediate_grant(req, mediator_did=M, routing_did=M, now=5)
    assert grant["type"] == f"{CM}/mediate-grant" and grant["body"] == {"routing_did": M}
    assert grant["thid"] == "req-1" and grant["from"] == M and grant["to"] == [A]
    query = parse(msg(f"{CM}/keylist-query", {"paginate": {"limit": 2, "offset": 1}}))
    page = coordinate.keylist(query, [B], 5, mediator_did=M, now=5)
    assert page["body"]["pagination"] == {"count": 1, "offset": 1, "remaining": 3}
    update = parse(
        msg(
            f"{CM}/keylist-update",
            {
                "updates": [
                    {"recipient_did": B, "action": "add"},
                    {"recipient_did": A, "action": "remove"},
                ]
            },
        )
    )
    assert [u.action for u in update.updates] == [KeylistAction.ADD, KeylistAction.REMOVE]
    resp = coordinate.keylist_update_response(update, ["success", "no_change"], mediator_did=M)
    assert resp["body"]["updated"][1] == {
        "recipient_did": A,
        "action": "remove",
        "result": "no_change",
    }
    status_req = parse(msg(f"{PU}/status-request", {"recipient_did": B}))
    queue = pickup.QueueStatus(2, 300, 100.0, 150.0)
    status = pickup.status(status_req, queue, mediator_did=M, live=True, recipient_did=B, now=160)
    assert status["body"] == {
        "message_count": 2,
        "recipient_did": B,
        "longest_waited_seconds": 60,
        "newest_received_time": 150,
        "oldest_received_time": 100,
        "total_bytes": 300,
        "live_delivery": True,
    }
    assert _status(status).message_count == 2  # the client reads what the server writes


def test_delivery_round_trips_through_the_client_parser() -> None:
    items = [
        pickup.Queued("id1", B, b'{"a": 1}', 1.0),
        pickup.Queued("id2", B, bytes(range(256)), 2.0),
    ]
    delivery = pickup.delivery(A, items, mediator_did=M, thid="req-1")
    assert delivery["thid"] == "req-1" and len(delivery["attachments"]) == 2
    assert [(d.id, d.data) for d in parse_delivery(delivery)] == [(i.id, i.data) for i in items]
    assert b64url_decode(b64url_encode(b"\xff\xfe") + "==") == b"\xff\xfe"


def test_discover_features_matches_globs() -> None:
    q = parse(
        msg(
            "https://didcomm.org/discover-features/2.0/queries",
            {
                "queries": [
                    {"feature-type": "protocol", "match": "https://didcomm.org/messagepickup/*"},
                    {"feature-type": "goal-code", "match": "*"},
                ]
            },
        )
    )
    out = discover_features.disclose(q, PROTOCOLS, mediator_did=M)
    assert out["body"]["disclosures"] == [
        {
            "feature-type": "protocol",
            "id": "https://didcomm.org/messagepickup/3.0",
            "roles": ["mediator"],
        }
    ]


def test_may_register_needs_the_same_did_or_a_shared_key() -> None:
    assert coordinate.may_register(A, A, [], [])
    assert coordinate.may_register(A, B, [b"k1", b"k2"], [b"k2"])
    assert not coordinate.may_register(A, B, [b"k1"], [b"k3"])


# -- relay -----------------------------------------------------------------------------------


def open_msg(nonce: bytes, session: str = "s1", peer: str = B) -> dict[str, Any]:
    return {
        "id": "o1",
        "type": relay.RELAY_OPEN,
        "body": {"nonce": b64url_encode(nonce), "session_id": session, "peer_did": peer},
    }


def test_relay_open_checks_nonce_sender_and_fields() -> None:
    nonce = bytes(32)
    event = relay.parse_open(open_msg(nonce), A, nonce)
    assert (event.sender, event.session_id, event.peer_did) == (A, "s1", B)
    for bad, sender, code in [
        (open_msg(b"\x01" * 32), A, Codes.UNAUTHENTICATED),
        (open_msg(nonce), None, Codes.UNAUTHENTICATED),
        (open_msg(nonce, session=""), A, Codes.MALFORMED),
        (open_msg(nonce, session="x" * 129), A, Codes.MALFORMED),
        (open_msg(nonce, peer=A), A, Codes.MALFORMED),
        (dict(open_msg(nonce), type="other"), A, Codes.MALFORMED),
    ]:
        with pytest.raises(MediationError) as info:
            relay.parse_open(bad, sender, nonce)
        assert info.value.code == code
    challenge = relay.challenge(nonce, M, msg_id="c1")
    assert (
        challenge["body"]["nonce"] == b64url_encode(nonce)
        and challenge["type"] == relay.RELAY_CHALLENGE
    )


def test_pairing_table_links_mirrors_only() -> None:
    nonce = bytes(32)
    table: relay.PairingTable[str] = relay.PairingTable(per_did=2)
    a = relay.parse_open(open_msg(nonce, peer=B), A, nonce)
    b = relay.parse_open(open_msg(nonce, peer=A), B, nonce)
    c_for_b = relay.parse_open(open_msg(nonce, peer=B), M, nonce)  # someone else, same session
    assert table.open(a, "slot-a") is None
    with pytest.raises(MediationError) as info:
        table.open(a, "slot-a2")
    assert info.value.code == Codes.BUSY
    assert table.open(c_for_b, "slot-c") is None  # waits: it is not B's mirror
    paired = table.open(b, "slot-b")
    assert paired is not None and paired.peer == "slot-a"
    assert (table.waiting, table.relaying) == (1, 1)
    table.close(a)
    table.close(b)
    table.close(c_for_b)
    assert (table.waiting, table.relaying) == (0, 0)
    s2 = relay.parse_open(open_msg(nonce, session="s2"), A, nonce)
    s3 = relay.parse_open(open_msg(nonce, session="s3"), A, nonce)
    s4 = relay.parse_open(open_msg(nonce, session="s4"), A, nonce)
    table.open(s2, "x")
    table.open(s3, "y")
    with pytest.raises(MediationError) as info:
        table.open(s4, "z")
    assert info.value.code == Codes.QUOTA


def test_quota_counts_frames_and_bytes() -> None:
    q = relay.Quota(max_frames=3, max_bytes=100)
    assert q.charge(50) and q.charge(50)
    assert not q.charge(1)  # 101 bytes
    q = relay.Quota(max_frames=2, max_bytes=0)
    assert q.charge(10**9) and q.charge(1) and not q.charge(1)


# -- configuration precedence ---------------------------------------------------------------


def test_config_precedence_file_env_flags(tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text(
        'port = 1111\nlabel = "from file"\n[stun]\nport = 2222\nenabled = false\n'
        "[queue]\nttl = 10.5\n"
    )
    env = {
        "DIDSESSION_MEDIATOR_CONFIG": str(toml),
        "DIDSESSION_MEDIATOR_PORT": "3333",
        "DIDSESSION_MEDIATOR_STUN_ENABLED": "yes",
    }
    config, _ = load_config([], env)
    assert (config.port, config.stun_port, config.label) == (3333, 2222, "from file")
    assert config.stun_enabled is True and config.queue_ttl == 10.5
    config, _ = load_config(["--port", "4444", "--no-stun-enabled"], env)
    assert config.port == 4444 and config.stun_enabled is False
    assert config.endpoint == "http://127.0.0.1:4444/didcomm"


@pytest.mark.parametrize(
    ("text", "env", "argv"),
    [
        ("bogus = 1\n", {}, []),
        ("port = 'eighty'\n", {}, []),
        ("", {"DIDSESSION_MEDIATOR_NOPE": "1"}, []),
        ("", {"DIDSESSION_MEDIATOR_OPEN_MEDIATION": "maybe"}, []),
        ("", {}, ["--store-backend", "mongo"]),
        ("", {}, ["--port", "70000"]),
        ("[stun]\nalternate = 'nowhere'\n", {}, []),
        ("not toml at all [[[", {}, []),
    ],
)
def test_config_errors_are_config_errors(
    tmp_path: Path, text: str, env: dict[str, str], argv: list[str]
) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError):
        load_config(["--config", str(toml), *argv], env)


def test_print_config_masks_the_redis_password(tmp_path: Path) -> None:
    from mediator.config import config_as_dict

    config, _ = load_config(["--store-redis-url", "redis://:hunter2@127.0.0.1:1/0"], {})
    assert "hunter2" not in json.dumps(config_as_dict(config))
    config, _ = load_config(["--store-redis-url", "redis://127.0.0.1:1/0?password=hunter2"], {})
    assert "hunter2" not in json.dumps(config_as_dict(config))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("redis://u:se@cret@h/0", "redis://***@h/0"),
        ("redis://h:6379/0?password=secret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("rediss://h/0?db=1&password=se%40cret", "rediss://h/0?db=1&password=***"),
        ("unix:///run/redis.sock?password=secret", "unix:///run/redis.sock?password=***"),
        ("redis://[::1/0?password=secret", "redis://***"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redact_url_hides_every_form_of_the_password(url: str, shown: str) -> None:
    from mediator.config import redact_url

    assert redact_url(url) == shown


# -- the STUN answer cache ---------------------------------------------------------------------


def test_cached_stun_answers_exactly_what_the_core_answers() -> None:
    from didsession.stun import RateLimit, StunServer, StunServerConfig, binding_request
    from mediator.stun import CachedStun

    def core() -> StunServer:
        return StunServer(
            StunServerConfig(
                local_address=("127.0.0.1", 3478),
                other_address=("127.0.0.2", 3479),
                rate_limit=None,
            )
        )

    cached, plain = CachedStun(core(), None), core()
    rng = random.Random(1)
    sources = [("127.0.0.1", 5000), ("10.1.2.3", 6000), ("::1", 7000)]
    requests = []
    for i in range(300):
        txid = rng.randbytes(12)
        kind = i % 4
        if kind == 3:
            requests.append(binding_request(rng.randbytes(16), classic=True)[1])
        else:
            requests.append(
                binding_request(txid, fingerprint=kind != 1, software=None if kind == 2 else "c")[1]
            )
    for i, request in enumerate(requests):
        src = sources[i % 3]
        local = ("127.0.0.1", 3478)
        assert cached.respond(request, src, 1.0, local=local) == plain.respond(
            request, src, 1.0, local=local
        )
    assert cached.hits > 100
    assert cached.stats()["responses"] == plain.stats.responses
    # a repeated request whose FINGERPRINT is wrong is dropped, as the core drops it
    good = binding_request(bytes(12))[1]
    assert cached.respond(good, sources[0], 1.0) is not None
    bad = good[:-1] + bytes([good[-1] ^ 1])
    assert cached.respond(bad, sources[0], 1.0) is None
    assert plain.respond(bad, sources[0], 1.0) is None
    # the rate limit applies to cached answers too
    limited = CachedStun(core(), RateLimit(rate=0.0, burst=3))
    answers = [limited.respond(good, sources[0], 1.0) for _ in range(5)]
    assert [a is not None for a in answers] == [True, True, True, False, False]
    assert limited.stats()["dropped_rate_limited"] == 2
