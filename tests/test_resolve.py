"""Peer DID resolution: both methods, short forms, the cache, legacy key-id aliases."""

from __future__ import annotations

import pytest
from aries_askar import Key, KeyAlg

from didsession.did import PeerResolver, ServiceSpec, create_peer_did
from didsession.errors import DIDError


def _keys() -> tuple[bytes, bytes]:
    ed = Key.generate(KeyAlg.ED25519).get_public_bytes()
    x = Key.generate(KeyAlg.X25519).get_public_bytes()
    return bytes(ed), bytes(x)


@pytest.mark.parametrize("method", ["peer2", "peer4"])
def test_document_has_ed25519_auth_and_x25519_agreement(method: str) -> None:
    ed, x = _keys()
    did = create_peer_did(ed, x, ServiceSpec("https://m.example/didcomm"), method)  # type: ignore[arg-type]
    r = PeerResolver()
    doc = r.resolve_sync(did)
    assert doc["id"].startswith(did[:20])
    assert r.x25519_public(did) == x
    (auth,) = r.authentication_kids(did)
    vm = r.verification_method(auth)
    assert vm.public_key_multibase and vm.public_key_multibase.startswith("z6Mk")  # ed25519
    (agree,) = r.key_agreement_kids(did)
    assert r.verification_method(agree).public_key_multibase.startswith("z6LS")  # x25519


def test_peer4_short_form_only_after_long_form_seen() -> None:
    ed, x = _keys()
    long = create_peer_did(ed, x, None, "peer4")
    short = PeerResolver().short_form(long)
    assert short is not None and short.startswith("did:peer:4zQm") and ":" not in short[10:]
    fresh = PeerResolver()
    with pytest.raises(DIDError, match="long form"):
        fresh.resolve_sync(short)
    fresh.resolve_sync(long)
    assert fresh.resolve_sync(short)["id"] == short
    assert fresh.x25519_public(short) == x


def test_cache_resolves_each_did_once() -> None:
    ed, x = _keys()
    did = create_peer_did(ed, x, None, "peer2")
    r = PeerResolver()
    for _ in range(5):
        r.resolve_sync(did)
        r.parse_sync(did)
        r.x25519_public(did)
    assert r.misses == 1


def test_cache_is_bounded() -> None:
    r = PeerResolver(capacity=3)
    dids = [create_peer_did(*_keys(), None, "peer2") for _ in range(5)]
    for d in dids:
        r.parse_sync(d)
    assert len(r._raw) == 3 and len(r._parsed) == 3


def test_legacy_key_id_alias_dereferences_to_same_key() -> None:
    ed, x = _keys()
    did = create_peer_did(ed, x, None, "peer2")
    r = PeerResolver()
    (agree,) = r.key_agreement_kids(did)
    vm = r.verification_method(agree)
    legacy = f"{did}#{vm.public_key_multibase[1:]}"  # what peerdid 0.5.2 calls it
    assert r.verification_method(legacy).public_key_multibase == vm.public_key_multibase
    with pytest.raises(DIDError, match="names no key"):
        r.verification_method(f"{did}#6LSnotakey")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not a did",
        "did:web:example.com",
        "did:peer:2.Vz6Mkbad",
        "did:peer:2.Sabc",
        "did:peer:2.Ez6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",  # ed25519 as agreement is fine, but...
        "did:peer:4zQmShort",
        "did:peer:4zQm" + "a" * 44 + ":zgarbage",
        "did:peer:2." + "V" * 9000,
    ],
)
def test_malformed_dids_raise_dierror(bad: str) -> None:
    r = PeerResolver()
    try:
        r.resolve_sync(bad)
        r.x25519_public(bad)
    except DIDError as exc:
        assert exc.message  # a sentence for a person
    else:
        pytest.fail(f"{bad[:40]!r} resolved to a usable X25519 key")


def test_a_mediator_did_with_a_malformed_endpoint_is_a_did_error() -> None:
    """``http://[foo`` passes the scheme check but urlsplit refuses it (ValueError)."""
    import asyncio

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from didsession.relay_client import relay_info

    did = create_peer_did(
        Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
        X25519PrivateKey.generate().public_key().public_bytes_raw(),
        ServiceSpec(uri="http://[foo"),
    )
    with pytest.raises(DIDError, match="malformed DIDComm endpoint"):
        asyncio.run(relay_info(did))
