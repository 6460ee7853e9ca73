"""The light authcrypt codec (didsession.authcrypt) against the full Envelope, both ways.

Every interop test moves real JWE bytes between :class:`~didsession.authcrypt.Authcrypt`
and :class:`~didsession.envelope.Envelope` (didcomm-messaging + askar): what one packs the
other must open, with the same sender DID, the same header fields in the same order and the
same key-id dialect.  Then what must be refused, a golden-bytes test with injected
randomness, the fallback to the full envelope, and the MPyC path's imports.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import did_peer_2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parties import envelope_for
from test_interop import Legacy, legacy_python  # noqa: F401  (legacy_python: a fixture)

from didsession import authcrypt as lite_mod
from didsession import did as did_mod
from didsession import envelope as envelope_mod
from didsession.authcrypt import Authcrypt, NeedsFullEnvelope, did_keys
from didsession.did import PeerResolver, create_peer_did, multikey
from didsession.envelope import new_message
from didsession.errors import DecryptError, DIDError, DidSessionError, EnvelopeError
from didsession.identity import Identity
from didsession.peer import HandshakeCodec

run = asyncio.run
BASIC = "https://didcomm.org/basicmessage/2.0/message"


def lite(ident: Identity, rand: Callable[[int], bytes] | None = None) -> Authcrypt:
    assert ident.x25519_secret is not None
    if rand is None:
        return Authcrypt(ident.did, ident.x25519_secret)
    return Authcrypt(ident.did, ident.x25519_secret, rand=rand)


def plaintext(frm: str | None, to: str, content: str = "hi") -> bytes:
    msg = new_message(BASIC, {"content": content}, frm=frm, to=[to], msg_id="m-1", created_time=1)
    return json.dumps(msg, separators=(",", ":")).encode()


def protected(packed: bytes) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(_unb64(json.loads(packed)["protected"]))
    return header


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def parties(make_identity: Callable[..., Identity]) -> dict[str, Identity]:
    med = make_identity("med", mediator="http://127.0.0.1:9/didcomm")
    return {
        "alice": make_identity("alice"),
        "bob": make_identity("bob", method="peer4"),
        "carol": make_identity("carol", mediator=med.did),
        "dave": make_identity("dave", method="peer4", mediator="http://127.0.0.1:9/x"),
        "eve": make_identity("eve"),
    }


PAIRS = [("alice", "bob"), ("bob", "alice"), ("carol", "dave"), ("dave", "carol"), ("alice", "eve")]


# -- interop ---------------------------------------------------------------------------


@pytest.mark.parametrize(("sender", "recipient"), PAIRS)
def test_lite_pack_opens_with_envelope(
    parties: dict[str, Identity], sender: str, recipient: str
) -> None:
    a, b = parties[sender], parties[recipient]
    msg = plaintext(a.did, b.did)
    packed = lite(a).pack(msg, b.did)
    got = run(envelope_for(b).unpack(packed))
    assert got.plaintext == msg
    assert got.authenticated and got.sender_did == a.did
    assert got.sender_kid == a.did + "#key-2" and got.recipient_kid == b.did + "#key-2"


@pytest.mark.parametrize(("sender", "recipient"), PAIRS)
def test_envelope_pack_opens_with_lite(
    parties: dict[str, Identity], sender: str, recipient: str
) -> None:
    a, b = parties[sender], parties[recipient]
    msg = plaintext(a.did, b.did)
    packed = run(envelope_for(a).pack_plaintext(msg, to=b.did, frm=a.did, forward=False))
    assert lite(b).unpack(packed.data) == (msg, a.did)


def test_both_write_the_same_structure(parties: dict[str, Identity]) -> None:
    a, b = parties["alice"], parties["bob"]
    msg = plaintext(a.did, b.did)
    ours = lite(a).pack(msg, b.did)
    theirs = run(envelope_for(a).pack_plaintext(msg, to=b.did, frm=a.did, forward=False)).data
    doc_o, doc_t = json.loads(ours), json.loads(theirs)
    assert list(doc_o) == list(doc_t) == ["protected", "recipients", "iv", "ciphertext", "tag"]
    h_o, h_t = protected(ours), protected(theirs)
    assert list(h_o) == list(h_t) == ["typ", "alg", "enc", "apu", "apv", "epk", "skid"]
    for field in ("typ", "alg", "enc", "apu", "apv", "skid"):
        assert h_o[field] == h_t[field]
    assert list(h_o["epk"]) == list(h_t["epk"]) == ["crv", "kty", "x"]
    # the protected header is serialised the same way (it is the AAD): same separators
    assert json.dumps(h_o).encode() == _unb64(doc_o["protected"])
    assert json.dumps(h_t).encode() == _unb64(doc_t["protected"])
    assert [list(r) for r in doc_o["recipients"]] == [list(r) for r in doc_t["recipients"]]
    assert doc_o["recipients"][0]["header"] == doc_t["recipients"][0]["header"]
    assert len(_unb64(doc_o["iv"])) == len(_unb64(doc_t["iv"])) == 16
    assert len(_unb64(doc_o["tag"])) == len(_unb64(doc_t["tag"])) == 32
    assert len(_unb64(doc_o["recipients"][0]["encrypted_key"])) == 72
    assert len(ours) == len(theirs)


def test_limits_agree_with_the_full_modules() -> None:
    assert lite_mod.MAX_ENVELOPE_BYTES == envelope_mod.MAX_ENVELOPE_BYTES
    assert lite_mod.MAX_RECIPIENTS == envelope_mod.MAX_RECIPIENTS
    assert lite_mod.MAX_DID_LENGTH == did_mod.MAX_DID_LENGTH
    assert lite_mod.TYP == envelope_mod.ENCRYPTED_TYP


def test_keys_agree_with_the_resolver(parties: dict[str, Identity]) -> None:
    resolver = PeerResolver()
    for ident in parties.values():
        keys = did_keys(ident.did)
        assert keys.agreement[0].public == resolver.x25519_public(ident.did)
        assert [k.kid for k in keys.agreement] == resolver.key_agreement_kids(ident.did)
        assert keys.legacy is resolver.is_legacy(ident.did)
        assert keys.short == resolver.short_form(ident.did)


@pytest.mark.parametrize(
    "did",
    [
        "",
        "not a did",
        "did:web:example.com",
        "did:peer:2.Ez6LSbadbadbad0",  # 0 is not base58
        "did:peer:2.Vz6MkqRYqQiSgvZQdnBytw86Qbs2ZWUkGv22od935YF4s8M7V",  # no keyAgreement
        "did:peer:2.Ez6MkqRYqQiSgvZQdnBytw86Qbs2ZWUkGv22od935YF4s8M7V",  # Ed25519 as agreement
        "did:peer:2.Ez6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KC",  # truncated key
        "did:peer:4zQmd8CpeFPci817KDsbSAKWcXAE2mjvCQSasRewvbSF54Bd",  # short form, never seen
        "did:peer:9.xyz",
    ],
)
def test_bad_dids_are_refused_like_the_resolver_does(did: str) -> None:
    with pytest.raises(DIDError):
        PeerResolver().x25519_public(did)
    with pytest.raises(DIDError):
        did_keys(did)


def test_a_short_did_peer_4_resolves_once_its_long_form_was_seen(
    parties: dict[str, Identity],
) -> None:
    bob = parties["bob"]
    codec = lite(parties["alice"])
    short = did_keys(bob.did).short
    assert short is not None
    with pytest.raises(DIDError):
        codec.x25519_public(short)
    codec.x25519_public(bob.did)
    assert codec.x25519_public(short) == did_keys(bob.did).agreement[0].public


# -- what must be refused ----------------------------------------------------------------


def _mutate_b64(text: str, index: int = 0) -> str:
    raw = bytearray(_unb64(text))
    raw[index] ^= 0x01
    return _b64(bytes(raw))


@pytest.mark.parametrize("field", ["ciphertext", "tag", "iv", "encrypted_key"])
def test_tampering_is_refused(parties: dict[str, Identity], field: str) -> None:
    a, b = parties["alice"], parties["bob"]
    doc = json.loads(lite(a).pack(plaintext(a.did, b.did), b.did))
    if field == "encrypted_key":
        doc["recipients"][0][field] = _mutate_b64(doc["recipients"][0][field], 5)
    else:
        doc[field] = _mutate_b64(doc[field])
    data = json.dumps(doc).encode()
    with pytest.raises(DecryptError):
        lite(b).unpack(data)
    with pytest.raises(DecryptError):
        run(envelope_for(b).unpack(data))


def test_a_changed_protected_header_is_refused(parties: dict[str, Identity]) -> None:
    a, b = parties["alice"], parties["bob"]
    doc = json.loads(lite(a).pack(plaintext(a.did, b.did), b.did))
    header = protected(json.dumps(doc).encode())
    header["typ"] = "application/didcomm-encrypted+json "  # AAD changes, nothing else
    doc["protected"] = _b64(json.dumps(header).encode())
    with pytest.raises(DecryptError, match="authentication tag"):
        lite(b).unpack(json.dumps(doc).encode())


def test_another_sender_key_is_refused(parties: dict[str, Identity]) -> None:
    # eve's message relabelled as alice's: the key agreement (Zs) no longer matches
    alice, bob, eve = parties["alice"], parties["bob"], parties["eve"]
    doc = json.loads(lite(eve).pack(plaintext(None, bob.did), bob.did))
    header = protected(json.dumps(doc).encode())
    header["skid"] = alice.did + "#key-2"
    header["apu"] = _b64(header["skid"].encode())
    doc["protected"] = _b64(json.dumps(header).encode())
    with pytest.raises(DecryptError, match="unwrap"):
        lite(bob).unpack(json.dumps(doc).encode())


def test_a_forged_from_is_refused(parties: dict[str, Identity]) -> None:
    alice, bob, eve = parties["alice"], parties["bob"], parties["eve"]
    forged = lite(eve).pack(plaintext(alice.did, bob.did), bob.did)
    with pytest.raises(DecryptError, match="claims to be from"):
        lite(bob).unpack(forged)


def test_a_sender_key_that_is_not_for_key_agreement_is_refused(
    parties: dict[str, Identity],
) -> None:
    alice, bob = parties["alice"], parties["bob"]
    codec = lite(alice)
    packed = codec._pack(
        plaintext(None, bob.did),
        did_keys(bob.did).agreement[0].public,
        bob.did + "#key-2",
        alice.did + "#key-1",  # alice's Ed25519 authentication key
    )
    with pytest.raises(DecryptError, match="not a keyAgreement key"):
        lite(bob).unpack(packed)


def test_a_message_for_someone_else_is_refused(parties: dict[str, Identity]) -> None:
    alice, bob, eve = parties["alice"], parties["bob"], parties["eve"]
    packed = lite(alice).pack(plaintext(alice.did, bob.did), bob.did)
    with pytest.raises(DecryptError, match="not for any of our keys"):
        lite(eve).unpack(packed)
    # relabelled for eve: apv (and the key wrap) do not match
    doc = json.loads(packed)
    doc["recipients"][0]["header"]["kid"] = eve.did + "#key-2"
    with pytest.raises(DecryptError, match="apv"):
        lite(eve).unpack(json.dumps(doc).encode())


def test_anoncrypt_is_not_authcrypt(parties: dict[str, Identity]) -> None:
    bob = parties["bob"]
    packed = run(
        envelope_for(parties["alice"]).pack_plaintext(plaintext(None, bob.did), to=bob.did)
    )
    with pytest.raises(DecryptError, match="anoncrypt"):
        lite(bob).unpack(packed.data)
    with pytest.raises(DecryptError, match="anoncrypt"):
        run(HandshakeCodec(bob).unpack(packed.data))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EnvelopeError),
        (b"[]", EnvelopeError),
        (b"{}", EnvelopeError),
        (b"{" + b" " * (1 << 20) + b"}", EnvelopeError),
        (b'{"protected":"!","recipients":[],"iv":"","ciphertext":"","tag":""}', EnvelopeError),
    ],
)
def test_garbage_is_refused(parties: dict[str, Identity], data: bytes, error: type) -> None:
    with pytest.raises(error):
        lite(parties["bob"]).unpack(data)


def test_a_wrong_secret_is_refused(parties: dict[str, Identity]) -> None:
    alice, bob = parties["alice"], parties["bob"]
    assert bob.x25519_secret is not None
    with pytest.raises(EnvelopeError):
        Authcrypt(alice.did, bob.x25519_secret)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_is_refused_or_harmless(
    parties: dict[str, Identity], position: int, flip: int
) -> None:
    alice, bob = parties["alice"], parties["bob"]
    msg = plaintext(alice.did, bob.did)
    packed = bytearray(lite(alice).pack(msg, bob.did))
    packed[position % len(packed)] ^= flip
    try:
        got = lite(bob).unpack(bytes(packed))
    except DidSessionError:
        return
    # JSON whitespace is outside the JWE's protection: such a change may decrypt, unchanged
    assert got == (msg, alice.did)


# -- golden bytes --------------------------------------------------------------------------


def _fixed_identity(seed: int, name: str) -> Identity:
    ed = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    x_secret = bytes([seed + 1]) * 32
    x_public = X25519PrivateKey.from_private_bytes(x_secret).public_key().public_bytes_raw()
    did = create_peer_did(ed.public_key().public_bytes_raw(), x_public, None, "peer2")
    return Identity(name, did, "peer2", None, 0.0, False, bytes([seed]) * 32, x_secret)


def _counter_rand() -> Callable[[int], bytes]:
    state = {"n": 0}

    def rand(n: int) -> bytes:
        state["n"] += 1
        return hashlib.sha512(b"authcrypt-golden-%d" % state["n"]).digest()[:n]

    return rand


# Made by this module and checked against askar by the interop tests above; pinned so that
# any change of the bytes on the wire is deliberate.
GOLDEN_SHA256 = "b98cf87922fa22be12f5bdff6ec752c48b1d2ae1ab8bacc3013ac1d8620e078e"
GOLDEN_TAG = "uoW3SrjD__TEvvqUwrI4lcGDoJRR8nFtByzudfNQnTU"


def test_golden_bytes_with_injected_randomness() -> None:
    alice, bob = _fixed_identity(1, "alice"), _fixed_identity(3, "bob")
    assert alice.did == (
        "did:peer:2.Vz6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX."
        "Ez6LSqaU49Tn4sboPj9gbrxmcJ7sHF5gu6bzAASfJnh9meXK6"
    )
    msg = plaintext(alice.did, bob.did, "golden")
    packed = lite(alice, _counter_rand()).pack(msg, bob.did)
    assert packed == lite(alice, _counter_rand()).pack(msg, bob.did)
    assert json.loads(packed)["tag"] == GOLDEN_TAG
    assert hashlib.sha256(packed).hexdigest() == GOLDEN_SHA256
    assert run(envelope_for(bob).unpack(packed)).plaintext == msg


# -- the legacy key-id dialect --------------------------------------------------------------


def _legacy_identity(seed: int) -> Identity:
    """A did:peer:2 with the old flat service form, as peerdid 0.5 makes them."""
    ed = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    x_secret = bytes([seed + 1]) * 32
    x_public = X25519PrivateKey.from_private_bytes(x_secret).public_key().public_bytes_raw()
    keys = [
        did_peer_2.KeySpec.verification(
            multikey("ed25519-pub", ed.public_key().public_bytes_raw())
        ),
        did_peer_2.KeySpec.key_agreement(multikey("x25519-pub", x_public)),
    ]
    service = {"type": "DIDCommMessaging", "serviceEndpoint": "http://127.0.0.1:9/legacy"}
    did = str(did_peer_2.generate(keys, [service]))
    return Identity("old", did, "peer2", None, 0.0, False, bytes([seed]) * 32, x_secret)


def test_the_legacy_dialect_both_ways(parties: dict[str, Identity]) -> None:
    old, ours = _legacy_identity(7), parties["alice"]
    assert did_keys(old.did).legacy and PeerResolver().is_legacy(old.did)
    # to a legacy DID both kids are the 8-character aliases, as the full envelope writes them
    packed = lite(ours).pack(plaintext(ours.did, old.did), old.did)
    header = protected(packed)
    legacy_ours = f"{ours.did}#{did_keys(ours.did).agreement[0].multibase[1:9]}"
    assert header["skid"] == legacy_ours
    assert json.loads(packed)["recipients"][0]["header"]["kid"].startswith(old.did + "#6LS")
    got = run(envelope_for(old).unpack(packed))
    assert got.sender_did == ours.did and got.sender_kid == legacy_ours
    # a legacy DID's own messages: opened, and the sender is answered in its dialect
    codec = lite(ours)
    from_old = run(
        envelope_for(old).pack_plaintext(
            plaintext(old.did, ours.did), to=ours.did, frm=old.did, forward=False
        )
    )
    assert codec.unpack(from_old.data)[1] == old.did


def test_a_legacy_kid_from_a_new_form_did_switches_the_reply_dialect(
    parties: dict[str, Identity],
) -> None:
    alice, bob = parties["alice"], parties["bob"]
    key = did_keys(alice.did).agreement[0]
    codec_a, codec_b = lite(alice), lite(bob)
    legacy_packed = codec_a._pack(
        plaintext(alice.did, bob.did),
        did_keys(bob.did).agreement[0].public,
        bob.did + "#key-2",
        key.legacy_kid,
    )
    assert codec_b.unpack(legacy_packed)[1] == alice.did
    reply = codec_b.pack(plaintext(bob.did, alice.did), alice.did)
    assert json.loads(reply)["recipients"][0]["header"]["kid"] == key.legacy_kid
    assert codec_a.unpack(reply)[1] == bob.did
    assert run(envelope_for(alice).unpack(reply)).sender_did == bob.did


# -- the fallback to the full envelope ---------------------------------------------------


def _with_unprotected_header(packed: bytes) -> bytes:
    doc = json.loads(packed)
    doc["unprotected"] = {"x-note": "not authenticated, but valid JWE"}
    return json.dumps(doc).encode()


def test_what_the_light_codec_does_not_handle_goes_to_the_envelope(
    parties: dict[str, Identity],
) -> None:
    alice, bob = parties["alice"], parties["bob"]
    msg = plaintext(alice.did, bob.did)
    unusual = _with_unprotected_header(lite(alice).pack(msg, bob.did))
    with pytest.raises(NeedsFullEnvelope):
        lite(bob).unpack(unusual)
    codec = HandshakeCodec(bob)
    assert run(codec.unpack(unusual)) == (msg, alice.did)
    assert codec.fallbacks == 1
    assert run(codec.unpack(lite(alice).pack(msg, bob.did))) == (msg, alice.did)
    assert codec.fallbacks == 1


def test_the_handshake_codec_round_trip(parties: dict[str, Identity]) -> None:
    alice, bob = parties["alice"], parties["dave"]
    a, b = HandshakeCodec(alice), HandshakeCodec(bob)
    msg = plaintext(alice.did, bob.did)
    assert run(b.unpack(run(a.pack(msg, bob.did)))) == (msg, alice.did)
    assert b.x25519_public(alice.did) == did_keys(alice.did).agreement[0].public
    assert a.fallbacks == b.fallbacks == 0


def test_a_locked_identity_has_no_codec(parties: dict[str, Identity]) -> None:
    alice = parties["alice"]
    locked = Identity(alice.name, alice.did, alice.method, None, 0.0, True)
    with pytest.raises(DIDError, match="locked"):
        HandshakeCodec(locked)


# -- what an MPyC party imports ----------------------------------------------------------


@pytest.fixture
def party_home(tmp_path: Path, make_identity: Callable[..., Identity]) -> Iterator[Path]:
    from mpyc_adapter.roster import Party, Roster

    ident = make_identity("p0")
    other = make_identity("p1")
    Roster((Party(ident.did, "p0"), Party(other.did, "p1"))).save(tmp_path / "roster.json")
    yield tmp_path


_PARTY_CODE = """
import sys
from mpyc_adapter.roster import load_roster
from mpyc_adapter.party import load_identity
import mpyc_adapter.network
from didsession.peer import HandshakeCodec
roster = load_roster(sys.argv[1])
ident, pid = load_identity(roster, home=sys.argv[2])
codec = HandshakeCodec(ident)
codec.x25519_public(roster.parties[1].did)
print(",".join(sorted(m for m in sys.argv[3].split(",") if m in sys.modules)))
"""


def _loaded_by_a_party(home: Path, modules: list[str]) -> list[str]:
    args = [str(home / "roster.json"), str(home / "home-p0"), ",".join(modules)]
    out = subprocess.run(
        [sys.executable, "-c", _PARTY_CODE, *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_a_party_does_not_load_the_envelope(party_home: Path) -> None:
    """Roster, identity, network and a handshake codec: no envelope, no invitations."""
    heavy = [
        "didsession.envelope",
        "didcomm_messaging.crypto.backend.askar",
        "didsession.invitation",
        "segno",
    ]
    assert _loaded_by_a_party(party_home, heavy) == []


def test_a_party_does_not_load_the_didcomm_libraries(party_home: Path) -> None:
    heavy = ["pydid", "didcomm_messaging", "aries_askar", "didsession.did"]
    assert _loaded_by_a_party(party_home, heavy) == []


# -- against an implementation we did not write ---------------------------------------------


@pytest.mark.slow
def test_lite_interop_with_the_legacy_libraries(
    legacy_python: Path,  # noqa: F811  (the fixture imported from test_interop)
    tmp_path: Path,
    make_identity: Callable[..., Identity],
) -> None:
    """PyPI didcomm 0.3.2 + peerdid 0.5.2 (tests/test_interop.py builds their venv): they
    open what the light codec packs, and it opens theirs, in their key-id dialect."""
    old = Legacy(legacy_python, tmp_path / "legacy.json", "http://127.0.0.1:9001/didcomm")
    ours = make_identity("ours", mediator="http://127.0.0.1:9002/didcomm")
    codec = lite(ours)
    theirs = old.pack(
        new_message(BASIC, {"content": "to lite"}, frm=old.did, to=[ours.did]), ours.did
    )
    text, sender = codec.unpack(theirs.encode())
    assert sender == old.did and json.loads(text)["body"] == {"content": "to lite"}
    got = old.unpack(codec.pack(plaintext(ours.did, old.did, "from lite"), old.did))
    assert got["message"]["body"] == {"content": "from lite"}
    assert got["authenticated"] and got["sender_kid"].startswith(ours.did + "#")


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_x25519_constructors_agree_with_cryptography(a: bytes, b: bytes) -> None:
    """The backend-free constructors (didsession._x25519) give cryptography's keys and
    secrets, and refuse what it refuses with the same ValueError the callers catch."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    from didsession import _x25519

    ref_a, ref_b = X25519PrivateKey.from_private_bytes(a), X25519PrivateKey.from_private_bytes(b)
    pub_b = ref_b.public_key().public_bytes_raw()
    ours = _x25519.private_key(a)
    assert ours.public_key().public_bytes_raw() == ref_a.public_key().public_bytes_raw()
    assert ours.exchange(_x25519.public_key(pub_b)) == ref_a.exchange(
        X25519PublicKey.from_public_bytes(pub_b)
    )
    with pytest.raises(ValueError):
        _x25519.public_key(pub_b[:31])
    with pytest.raises(ValueError):
        _x25519.private_key(a[:31])
    with pytest.raises(ValueError):  # the all-zero point: small order, no shared secret
        ours.exchange(_x25519.public_key(bytes(32)))


def test_sessions_do_not_load_cryptographys_openssl_backend_module(tmp_path: Path) -> None:
    """Loading identities, a handshake's key agreement and an envelope each way use X25519
    without importing ``cryptography.hazmat.backends.openssl`` (~5 ms of every MPyC
    party's start-up)."""
    from didsession.identity import Store

    store = Store(tmp_path)
    store.create("a")
    store.create("b")
    code = (
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from didsession.identity import Store\n"
        "from didsession.authcrypt import Authcrypt\n"
        "from didsession.session import keyschedule as k\n"
        f"store = Store(Path({str(tmp_path)!r}))\n"
        "alice, bob = store.load('a'), store.load('b')\n"
        "a = Authcrypt(alice.did, alice.x25519_secret)\n"
        "b = Authcrypt(bob.did, bob.x25519_secret)\n"
        "msg = json.dumps({'id': '1', 'type': 'https://example.org/t', 'body': {}}).encode()\n"
        "assert a.unpack(b.pack(msg, alice.did))[0] == msg\n"
        "k.dh(os.urandom(32), k.public_key(os.urandom(32)))\n"
        "print('cryptography.hazmat.backends.openssl' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_what_strangers_make_us_remember_is_bounded() -> None:
    """Every new did:peer:4 teaches its short form and every legacy peer its dialect;
    both are kept in bounded LRUs, not in maps that grow for the life of a mediator."""

    def fresh_peer4() -> str:
        ed = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        x = X25519PrivateKey.generate().public_key().public_bytes_raw()
        return create_peer_did(ed, x, None, "peer4")

    secret = X25519PrivateKey.generate()
    me = create_peer_did(
        Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
        secret.public_key().public_bytes_raw(),
        None,
    )
    resolver = PeerResolver(capacity=2)
    lite_ = Authcrypt(me, secret.private_bytes_raw(), capacity=2)
    dids = [fresh_peer4() for _ in range(50)]
    for did in dids:
        resolver.resolve_sync(did)
        resolver.add_legacy(did)
        lite_.keys(did)
    for kept in (resolver._short_to_long, resolver._legacy, lite_._short_to_long):
        assert len(kept) == 32  # 16 x capacity: the newest
    short = PeerResolver().short_form(dids[-1])
    assert short is not None and resolver.resolve_sync(short)  # the newest still resolve
    assert resolver.is_legacy(dids[-1]) and not resolver.is_legacy(dids[0])
