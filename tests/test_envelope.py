"""DIDComm v2 envelopes: authcrypt, anoncrypt, forward, and what must be refused."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parties import envelope_for

from didsession.envelope import FORWARD_TYPE, new_message, parse_forward
from didsession.errors import DecryptError, DidSessionError, EnvelopeError
from didsession.identity import Identity

run = asyncio.run
BASIC = "https://didcomm.org/basicmessage/2.0/message"


@pytest.fixture
def parties(make_identity: Callable[..., Identity]) -> dict[str, Identity]:
    med = make_identity("med", mediator="http://127.0.0.1:9/didcomm")
    return {
        "alice": make_identity("alice"),
        "bob": make_identity("bob", method="peer4"),
        "carol": make_identity("carol", mediator=med.did),
        "med": med,
        "eve": make_identity("eve"),
    }


def test_authcrypt_roundtrip(parties: dict[str, Identity]) -> None:
    alice, bob = parties["alice"], parties["bob"]
    msg = new_message(BASIC, {"content": "secret-plaintext-42"}, frm=alice.did, to=[bob.did])
    packed = run(envelope_for(alice).pack(msg, to=bob.did, frm=alice.did))
    header = json.loads(base64.urlsafe_b64decode(json.loads(packed.data)["protected"] + "=="))
    assert header["alg"] == "ECDH-1PU+A256KW" and header["enc"] == "A256CBC-HS512"
    assert header["typ"] == "application/didcomm-encrypted+json"
    assert b"secret-plaintext-42" not in packed.data
    got = run(envelope_for(bob).unpack(packed.data))
    assert got.message == msg
    assert got.authenticated and got.sender_did == alice.did
    assert got.recipient_kid.startswith(bob.did)


def test_anoncrypt_hides_sender(parties: dict[str, Identity]) -> None:
    alice, bob = parties["alice"], parties["bob"]
    msg = new_message(BASIC, {"content": "anon"}, to=[bob.did])
    packed = run(envelope_for(alice).pack(msg, to=bob.did))
    header = json.loads(base64.urlsafe_b64decode(json.loads(packed.data)["protected"] + "=="))
    assert header["alg"] == "ECDH-ES+A256KW" and header["enc"] == "A256CBC-HS512"
    assert alice.did.encode() not in packed.data
    got = run(envelope_for(bob).unpack(packed.data))
    assert got.message["body"] == {"content": "anon"}
    assert not got.authenticated and got.sender_did is None


def test_forward_through_mediator(parties: dict[str, Identity]) -> None:
    alice, carol, med = parties["alice"], parties["carol"], parties["med"]
    msg = new_message(BASIC, {"content": "via mediator"}, frm=alice.did, to=[carol.did])
    packed = run(envelope_for(alice).pack(msg, to=carol.did, frm=alice.did))
    assert packed.forwarded and packed.endpoint == "http://127.0.0.1:9/didcomm"
    # the mediator can open the outer layer only, and learns just the next hop
    outer = run(envelope_for(med).unpack(packed.data))
    assert outer.message["type"] == FORWARD_TYPE and not outer.authenticated
    nxt, inner = parse_forward(outer.message)
    assert nxt == carol.did
    assert b"via mediator" not in packed.data and b"via mediator" not in inner
    with pytest.raises(DecryptError):
        run(envelope_for(med).unpack(inner))
    got = run(envelope_for(carol).unpack(inner))
    assert got.message["body"]["content"] == "via mediator" and got.sender_did == alice.did
    # --no-forward: addressed straight to carol
    direct = run(envelope_for(alice).pack(msg, to=carol.did, frm=alice.did, forward=False))
    assert not direct.forwarded
    assert run(envelope_for(carol).unpack(direct.data)).sender_did == alice.did


def _flip_b64(value: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(value + "=="))
    raw[index % len(raw)] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("field", ["ciphertext", "tag", "iv", "protected"])
def test_tampering_is_refused(parties: dict[str, Identity], field: str) -> None:
    alice, bob = parties["alice"], parties["bob"]
    msg = new_message(BASIC, {"content": "x" * 40}, frm=alice.did, to=[bob.did])
    doc = json.loads(run(envelope_for(alice).pack(msg, to=bob.did, frm=alice.did)).data)
    doc[field] = _flip_b64(doc[field], 5)
    with pytest.raises((DecryptError, EnvelopeError)):
        run(envelope_for(bob).unpack(json.dumps(doc)))


def test_tampered_wrapped_key_is_refused(parties: dict[str, Identity]) -> None:
    alice, bob = parties["alice"], parties["bob"]
    msg = new_message(BASIC, {}, frm=alice.did, to=[bob.did])
    doc = json.loads(run(envelope_for(alice).pack(msg, to=bob.did, frm=alice.did)).data)
    recip = doc["recipients"][0]
    recip["encrypted_key"] = _flip_b64(recip["encrypted_key"], 3)
    with pytest.raises(DecryptError):
        run(envelope_for(bob).unpack(json.dumps(doc)))


def test_wrong_recipient_and_unknown_key(parties: dict[str, Identity]) -> None:
    alice, bob, eve = parties["alice"], parties["bob"], parties["eve"]
    packed = run(envelope_for(alice).pack(new_message(BASIC, {}), to=bob.did, frm=alice.did))
    with pytest.raises(DecryptError, match="not for any of our keys"):
        run(envelope_for(eve).unpack(packed.data))
    doc = json.loads(packed.data)
    doc["recipients"][0]["header"]["kid"] = eve.did + "#key-9"
    with pytest.raises(DecryptError):
        run(envelope_for(eve, bob).unpack(json.dumps(doc)))


def test_sender_cannot_claim_another_from(parties: dict[str, Identity]) -> None:
    alice, bob, eve = parties["alice"], parties["bob"], parties["eve"]
    forged = new_message(BASIC, {"content": "I am alice"}, frm=alice.did, to=[bob.did])
    packed = run(envelope_for(eve).pack(forged, to=bob.did, frm=eve.did))
    with pytest.raises(DecryptError, match="claims to be from"):
        run(envelope_for(bob).unpack(packed.data))


def test_pack_refuses_unknown_sender_and_bad_recipient(parties: dict[str, Identity]) -> None:
    alice, bob = parties["alice"], parties["bob"]
    with pytest.raises(EnvelopeError, match="not a local identity"):
        run(envelope_for(bob).pack(new_message(BASIC, {}), to=bob.did, frm=alice.did))
    with pytest.raises(DidSessionError):
        run(envelope_for(alice).pack(new_message(BASIC, {}), to="did:web:x.example"))


def test_plaintext_must_be_a_didcomm_message(parties: dict[str, Identity]) -> None:
    alice, bob = parties["alice"], parties["bob"]
    env = envelope_for(alice)
    # bypass our pack to encrypt a non-message payload with the same library
    from didcomm_messaging.crypto.backend.askar import AskarKey

    vm = env.resolver.verification_method(env.resolver.key_agreement_kids(bob.did)[0])
    key = AskarKey.from_verification_method(vm)
    raw = run(env.crypto.ecdh_es_encrypt([key], b"[1, 2, 3]"))
    with pytest.raises(EnvelopeError, match="not a JSON object"):
        run(envelope_for(bob).unpack(raw))


def test_oversized_message_refused_before_parsing(parties: dict[str, Identity]) -> None:
    with pytest.raises(EnvelopeError, match="limit"):
        run(envelope_for(parties["bob"]).unpack(b"{" + b" " * (1 << 20) + b"}"))


# -- robustness: random and mutated envelopes yield only our typed errors ---------------

_FUZZ: dict[str, Any] = {}


def _fuzz_setup(tmp_factory: Any) -> dict[str, Any]:
    if not _FUZZ:
        from didsession.identity import Store

        home = tmp_factory.mktemp("fuzz")
        alice = Store(home / "a").create("alice")
        bob = Store(home / "b").create("bob")
        env_a, env_b = envelope_for(alice), envelope_for(bob)
        msg = new_message(BASIC, {"content": "fuzz"}, frm=alice.did, to=[bob.did])
        _FUZZ.update(
            bob=env_b,
            auth=run(env_a.pack(msg, to=bob.did, frm=alice.did)).data,
            anon=run(env_a.pack(msg, to=bob.did)).data,
        )
    return _FUZZ


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=8,
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_typed_errors(tmp_path_factory: Any, data: bytes) -> None:
    f = _fuzz_setup(tmp_path_factory)
    with pytest.raises(DidSessionError):
        run(f["bob"].unpack(data))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["auth", "anon"]),
    path=st.lists(
        st.sampled_from(
            [
                "protected",
                "recipients",
                0,
                "header",
                "kid",
                "epk",
                "encrypted_key",
                "iv",
                "tag",
                "ciphertext",
                "x",
                "crv",
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    value=_json_values(),
    protected_edit=st.booleans(),
)
def test_mutated_envelopes_only_typed_errors(
    tmp_path_factory: Any, which: str, path: list[Any], value: Any, protected_edit: bool
) -> None:
    f = _fuzz_setup(tmp_path_factory)
    doc = json.loads(f[which])
    if protected_edit:
        # edit inside the protected header (which is base64url JSON and the AAD)
        header = json.loads(base64.urlsafe_b64decode(doc["protected"] + "=="))
        _set_path(header, [p for p in path if isinstance(p, str)][:2] or ["alg"], value)
        doc["protected"] = (
            base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        )
    else:
        _set_path(doc, path, value)
    try:
        got = run(f["bob"].unpack(json.dumps(doc)))
    except DidSessionError:
        return
    # a mutation that changed nothing authenticated may still decrypt, but never to other content
    assert got.message["body"] == {"content": "fuzz"}


def _set_path(doc: Any, path: list[Any], value: Any) -> None:
    cur = doc
    for key in path[:-1]:
        try:
            cur = cur[key]
        except (KeyError, IndexError, TypeError):
            return
    try:
        cur[path[-1]] = value
    except (IndexError, TypeError):
        return
