"""Identity store: creation, key files, passphrases, several identities, bad input."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest

from didsession.did import PeerResolver
from didsession.errors import ConfigError, IdentityError
from didsession.identity import Store


def test_create_and_load_roundtrip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    made = store.create("alice")
    loaded = store.load("alice")
    assert loaded.did == made.did
    assert loaded.ed25519_secret == made.ed25519_secret
    assert loaded.x25519_secret == made.x25519_secret
    assert made.did.startswith("did:peer:2.")
    # the X25519 secret in the file belongs to the DID's keyAgreement key
    from aries_askar import Key, KeyAlg

    assert loaded.x25519_secret is not None
    pub = bytes(Key.from_secret_bytes(KeyAlg.X25519, loaded.x25519_secret).get_public_bytes())
    assert pub == PeerResolver().x25519_public(made.did)


def test_key_files_are_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    store.create("alice")
    secret = tmp_path / "home" / "identities" / "alice" / "secret.json"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    # no private key material in the public file
    public = json.loads((secret.parent / "identity.json").read_text())
    assert set(public) >= {"did", "name", "method"}
    assert "keys" not in public and "ed25519" not in json.dumps(public)


def test_passphrase_protects_keys(tmp_path: Path) -> None:
    store = Store(tmp_path)
    made = store.create("carol", passphrase="correct horse")
    blob = (tmp_path / "identities" / "carol" / "secret.json").read_text()
    assert made.x25519_secret is not None
    import base64

    raw = base64.urlsafe_b64encode(made.x25519_secret).rstrip(b"=").decode()
    assert raw not in blob and '"keys"' not in blob
    with pytest.raises(IdentityError, match="passphrase-protected"):
        store.load("carol")
    with pytest.raises(IdentityError, match="wrong passphrase"):
        store.load("carol", passphrase="wrong")
    assert store.load("carol", passphrase="correct horse").x25519_secret == made.x25519_secret
    assert store.load("carol", unlock=False).encrypted


def test_secret_file_swapped_between_identities_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create("a")
    store.create("b")
    a_secret = tmp_path / "identities" / "a" / "secret.json"
    b_secret = tmp_path / "identities" / "b" / "secret.json"
    b_secret.write_bytes(a_secret.read_bytes())
    with pytest.raises(IdentityError, match="does not match its DID"):
        store.load("b")


def test_several_identities_and_default(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = store.create("one")
    store.create("two", method="peer4")
    assert store.names() == ["one", "two"]
    assert store.load().did == first.did  # the first one stays the default
    assert store.load("two").did.startswith("did:peer:4")
    store.set_default("two")
    assert store.load().name == "two"


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-x", "x" * 65, "sp ace"])
def test_invalid_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        Store(tmp_path).create(name)


def test_duplicate_and_missing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create("alice")
    with pytest.raises(ConfigError, match="already exists"):
        store.create("alice")
    with pytest.raises(IdentityError, match="no identity 'bob'"):
        store.load("bob")
    with pytest.raises(IdentityError, match="didsession init"):
        Store(tmp_path / "empty").load()


def test_corrupt_files_give_typed_errors(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create("alice")
    for junk in ("{not json", '{"x": 1}', "[]", '"keys"'):
        # Not mistaken for a passphrase-protected file (which would ask for a passphrase).
        (tmp_path / "identities" / "alice" / "secret.json").write_text(junk)
        with pytest.raises(IdentityError, match="key file of identity 'alice' is corrupt"):
            store.load("alice")
    (tmp_path / "identities" / "alice" / "identity.json").write_text("[]")
    with pytest.raises(IdentityError):
        store.load("alice")


def test_mediator_service_in_did_document(tmp_path: Path) -> None:
    store = Store(tmp_path)
    med = store.create("med")
    by_url = store.create("u", mediator="https://mediator.example/didcomm")
    by_did = store.create("d", mediator=med.did, method="peer4")
    resolver = PeerResolver()
    for ident, uri in ((by_url, "https://mediator.example/didcomm"), (by_did, med.did)):
        doc = resolver.resolve_sync(ident.did)
        (svc,) = doc["service"]
        assert svc["type"] == "DIDCommMessaging"
        assert svc["serviceEndpoint"]["uri"] == uri
        assert svc["serviceEndpoint"]["accept"] == ["didcomm/v2"]


def test_contacts(tmp_path: Path) -> None:
    store = Store(tmp_path)
    other = Store(tmp_path / "other").create("bob")
    c = store.add_contact(other.did, label="Bob's laptop", alias=None, invitation_id="i1")
    assert c.alias == "Bob-s-laptop"
    again = store.add_contact(other.did, label="Bob", alias=None, invitation_id="i2")
    assert again.alias == c.alias and len(store.contacts()) == 1
    assert store.find_contact(c.alias).did == other.did
    with pytest.raises(ConfigError, match="accept their invitation"):
        store.find_contact("nobody")


def _accept_many(home: str, worker: int, start: Any) -> None:
    store = Store(Path(home))
    start.wait()
    for k in range(6):
        did = f"did:peer:2.Ez6LSworker{worker}x{k}"
        store.add_contact(did, label=f"w{worker}-{k}", alias=None, invitation_id=None)


def test_concurrent_accepts_lose_no_contact(tmp_path: Path) -> None:
    """Several processes adding contacts to one home at once (``didsession accept`` run
    twice in parallel): every contact is kept, each alias is unique."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(5)
    procs = [ctx.Process(target=_accept_many, args=(str(tmp_path), w, start)) for w in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 5
    contacts = Store(tmp_path).contacts()
    assert len(contacts) == 30
    assert len({c.alias for c in contacts}) == 30
    assert stat.S_IMODE((tmp_path / ".contacts.lock").stat().st_mode) == 0o600


def test_repr_shows_no_private_key(tmp_path: Path) -> None:
    """An identity in a log line, an error or a failed assertion does not print its keys."""
    ident = Store(tmp_path).create("alice")
    assert ident.ed25519_secret is not None and ident.x25519_secret is not None
    shown = repr(ident) + str(ident)
    assert ident.did in shown
    for secret in (ident.ed25519_secret, ident.x25519_secret):
        assert repr(secret) not in shown and secret.hex() not in shown


def test_home_that_cannot_be_a_directory_is_a_config_error(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"cannot create home .*: it is not a directory"):
        Store(a_file).create("alice")
    with pytest.raises(ConfigError, match=r"cannot create home .*: Not a directory"):
        Store(a_file / "home").create("alice")


@pytest.mark.parametrize(
    "mode,how", [(0o644, "readable"), (0o640, "readable"), (0o620, "writable")]
)
def test_key_file_open_to_others_warns_once_per_load(tmp_path: Path, mode: int, how: str) -> None:
    warnings: list[str] = []
    store = Store(tmp_path, warn=warnings.append)
    made = store.create("alice")
    secret = tmp_path / "identities" / "alice" / "secret.json"
    assert store.load("alice").x25519_secret == made.x25519_secret
    assert warnings == []
    secret.chmod(mode)
    store.load("alice", unlock=False)  # reads no key: nothing to warn about
    assert warnings == []
    assert store.load("alice").x25519_secret == made.x25519_secret
    assert warnings == [
        f"key file {secret} is {how} by other users (mode {mode:04o}); "
        f"protect it with 'chmod 600 {secret}'"
    ]
    assert stat.S_IMODE(secret.stat().st_mode) == mode
