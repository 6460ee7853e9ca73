"""The identity store: named peer-DID identities and contacts under one home directory.

Layout (home = ``$DIDSESSION_HOME`` or ``$XDG_DATA_HOME/didsession``, mode 0700)::

    config.json                     {"default": NAME}
    identities/NAME/identity.json   public part: DID, method, mediator, public keys
    identities/NAME/secret.json     private keys, mode 0600, optionally passphrase-encrypted
    contacts.json                   accepted invitations: alias -> DID and label

Secret files are written with mode 0600 from the first byte (``os.open`` with the mode,
never chmod after the fact) and replaced atomically, so a crash leaves the old file or the
new one, never half of one.  An encrypted secret file uses scrypt (N=2**15, r=8, p=1) and
ChaCha20-Poly1305 with the identity's DID as associated data, so a secret file cannot be
swapped under another identity unnoticed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from didsession import _x25519 as x25519
from didsession._dataclass import dataclass
from didsession.authcrypt import NeedsFullEnvelope, did_keys
from didsession.errors import ConfigError, IdentityError
from didsession.untrusted import parse_json

if TYPE_CHECKING:
    from didsession.did import Method

__all__ = ["Contact", "Identity", "Store", "default_home"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
FORMAT_VERSION = 1


def default_home() -> Path:
    """``$DIDSESSION_HOME``, else ``$XDG_DATA_HOME/didsession``, else ~/.local/share/..."""
    env = os.environ.get("DIDSESSION_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "didsession"


def _warn_stderr(message: str) -> None:
    print(f"didsession: warning: {message}", file=sys.stderr)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_json(path: Path, what: str) -> Any:
    try:
        return parse_json(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path} is unreadable or not JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Identity:
    """One party's identity: its DID and, once unlocked, its private keys."""

    name: str
    did: str
    method: str
    mediator: str | None
    created: float
    encrypted: bool
    # Kept out of repr(): an identity in a log line or a test failure shows no key.
    ed25519_secret: bytes | None = field(default=None, repr=False)
    x25519_secret: bytes | None = field(default=None, repr=False)

    @property
    def unlocked(self) -> bool:
        return self.ed25519_secret is not None and self.x25519_secret is not None

    def public_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "did": self.did,
            "method": self.method,
            "mediator": self.mediator,
            "created": self.created,
            "encrypted": self.encrypted,
        }


@dataclass(frozen=True, slots=True)
class Contact:
    """A party whose invitation we accepted."""

    alias: str
    did: str
    label: str | None
    accepted: float
    invitation_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "did": self.did,
            "label": self.label,
            "accepted": self.accepted,
            "invitation_id": self.invitation_id,
        }


class Store:
    """Identities and contacts in one home directory."""

    def __init__(
        self, home: Path | None = None, *, warn: Callable[[str], None] | None = None
    ) -> None:
        """The store in ``home``.

        Args:
            home: the home directory (default: :func:`default_home`).
            warn: told about problems that do not stop the work, such as a key file others
                can read (default: a ``didsession: warning:`` line on stderr).
        """
        self.home = Path(home) if home else default_home()
        self.warn = warn or _warn_stderr

    # -- identities ------------------------------------------------------------------
    def _ident_dir(self, name: str) -> Path:
        return self.home / "identities" / name

    def _ensure_home(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.home / "identities").mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            reason = "it is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
            raise ConfigError(f"cannot create home {self.home}: {reason}") from None

    def names(self) -> list[str]:
        root = self.home / "identities"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "identity.json").is_file())

    def default_name(self) -> str | None:
        try:
            cfg = _read_json(self.home / "config.json", "config")
        except FileNotFoundError:
            names = self.names()
            return names[0] if len(names) == 1 else None
        name = cfg.get("default") if isinstance(cfg, dict) else None
        return name if isinstance(name, str) else None

    def set_default(self, name: str) -> None:
        self._ensure_home()
        write_private(self.home / "config.json", json.dumps({"default": name}).encode())

    def create(
        self,
        name: str = "default",
        *,
        mediator: str | None = None,
        method: Method = "peer2",
        passphrase: str | None = None,
        routing_keys: tuple[str, ...] = (),
    ) -> Identity:
        """Create identity ``name``: fresh Ed25519 + X25519 keys and their peer DID."""
        if not _NAME.match(name):
            raise ConfigError(
                f"identity name {name!r} is invalid: use 1-64 letters, digits, '.', '_', '-'"
            )
        if method not in ("peer2", "peer4"):
            raise ConfigError(f"unknown method {method!r}: use peer2 or peer4")
        folder = self._ident_dir(name)
        if (folder / "identity.json").exists():
            raise ConfigError(
                f"identity {name!r} already exists in {self.home}; "
                "choose another --name or remove that folder"
            )
        # Only creating an identity needs askar and the DID libraries (~0.25 s to import);
        # loading one (every MPyC party) does not.
        from aries_askar import Key, KeyAlg

        from didsession.did import ServiceSpec, create_peer_did

        ed = Key.generate(KeyAlg.ED25519)
        x = Key.generate(KeyAlg.X25519)
        service = ServiceSpec(mediator, routing_keys) if mediator else None
        did = create_peer_did(ed.get_public_bytes(), x.get_public_bytes(), service, method)
        ident = Identity(
            name=name,
            did=did,
            method=method,
            mediator=mediator,
            created=time.time(),
            encrypted=passphrase is not None,
            ed25519_secret=bytes(ed.get_secret_bytes()),
            x25519_secret=bytes(x.get_secret_bytes()),
        )
        self._ensure_home()
        pub = dict(ident.public_json(), version=FORMAT_VERSION)
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            write_private(folder / "secret.json", self._seal_secret(ident, passphrase))
            write_private(folder / "identity.json", json.dumps(pub, indent=2).encode())
        except OSError as exc:
            raise ConfigError(
                f"cannot write identity {name!r} in {folder}: {exc.strerror}"
            ) from None
        if self.default_name() is None or len(self.names()) == 1:
            self.set_default(name)
        return ident

    def load(
        self, name: str | None = None, *, passphrase: str | None = None, unlock: bool = True
    ) -> Identity:
        """Load identity ``name`` (default identity if None); ``unlock`` reads its keys."""
        if name is None:
            name = self.default_name()
            if name is None:
                if not self.names():
                    raise IdentityError(
                        f"no identity in {self.home}; create one with 'didsession init'"
                    )
                raise IdentityError(
                    f"several identities in {self.home} ({', '.join(self.names())}) and no "
                    "default; pick one with --identity NAME"
                )
        if not _NAME.match(name):
            raise IdentityError(f"identity name {name!r} is invalid")
        folder = self._ident_dir(name)
        try:
            pub = _read_json(folder / "identity.json", "identity file")
        except FileNotFoundError:
            raise IdentityError(
                f"no identity {name!r} in {self.home}; known: {', '.join(self.names()) or 'none'}"
            ) from None
        try:
            ident = Identity(
                name=pub["name"],
                did=pub["did"],
                method=pub["method"],
                mediator=pub.get("mediator"),
                created=float(pub["created"]),
                encrypted=bool(pub["encrypted"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IdentityError(f"identity file of {name!r} is corrupt: missing {exc}") from exc
        if not unlock:
            return ident
        secret = folder / "secret.json"
        try:
            with secret.open("rb") as f:
                blob = f.read()
                mode = os.fstat(f.fileno()).st_mode
        except OSError as exc:
            raise IdentityError(f"cannot read the keys of identity {name!r}: {exc}") from exc
        if mode & 0o077:
            # Like ssh, say so but go on: refusing would lock the owner out of their keys.
            how = "readable" if mode & 0o044 else "writable"
            self.warn(
                f"key file {secret} is {how} by other users (mode {stat.S_IMODE(mode):04o}); "
                f"protect it with 'chmod 600 {secret}'"
            )
        ed_sk, x_sk = self._open_secret(ident, blob, passphrase)
        return Identity(
            name=ident.name,
            did=ident.did,
            method=ident.method,
            mediator=ident.mediator,
            created=ident.created,
            encrypted=ident.encrypted,
            ed25519_secret=ed_sk,
            x25519_secret=x_sk,
        )

    def _seal_secret(self, ident: Identity, passphrase: str | None) -> bytes:
        assert ident.ed25519_secret is not None and ident.x25519_secret is not None
        keys = {"ed25519": _b64(ident.ed25519_secret), "x25519": _b64(ident.x25519_secret)}
        if passphrase is None:
            doc: dict[str, Any] = {"version": FORMAT_VERSION, "keys": keys}
        else:
            salt = secrets.token_bytes(16)
            nonce = secrets.token_bytes(12)
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            kek = Scrypt(salt=salt, length=32, **_SCRYPT).derive(passphrase.encode())
            ct = ChaCha20Poly1305(kek).encrypt(nonce, json.dumps(keys).encode(), ident.did.encode())
            doc = {
                "version": FORMAT_VERSION,
                "kdf": dict(_SCRYPT, name="scrypt", salt=_b64(salt)),
                "aead": "chacha20-poly1305",
                "nonce": _b64(nonce),
                "ciphertext": _b64(ct),
            }
        return json.dumps(doc, indent=2).encode()

    def _open_secret(
        self, ident: Identity, blob: bytes, passphrase: str | None
    ) -> tuple[bytes, bytes]:
        try:
            doc = parse_json(blob)
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            if "keys" in doc:
                keys = doc["keys"]
            else:
                if not {"kdf", "nonce", "ciphertext"} <= doc.keys():
                    raise KeyError("neither keys nor an encrypted key document")
                if passphrase is None:
                    raise IdentityError(
                        f"identity {ident.name!r} is passphrase-protected: give the passphrase "
                        "(--passphrase-file FILE or DIDSESSION_PASSPHRASE)"
                    )
                from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

                kdf = doc["kdf"]
                kek = Scrypt(
                    salt=_unb64(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]
                ).derive(passphrase.encode())
                try:
                    plain = ChaCha20Poly1305(kek).decrypt(
                        _unb64(doc["nonce"]), _unb64(doc["ciphertext"]), ident.did.encode()
                    )
                except InvalidTag:
                    raise IdentityError(
                        f"wrong passphrase for identity {ident.name!r} (or its key file was "
                        "altered)"
                    ) from None
                keys = parse_json(plain)
            ed_sk, x_sk = _unb64(keys["ed25519"]), _unb64(keys["x25519"])
        except IdentityError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"key file of identity {ident.name!r} is corrupt") from exc
        if len(ed_sk) != 32 or len(x_sk) != 32:
            raise IdentityError(f"key file of identity {ident.name!r} holds keys of wrong size")
        self._check_keys_match(ident, ed_sk, x_sk)
        return ed_sk, x_sk

    @staticmethod
    def _check_keys_match(ident: Identity, ed_sk: bytes, x_sk: bytes) -> None:
        """Refuse a key file that does not belong to the DID next to it."""
        x_pub = x25519.private_key(x_sk).public_key().public_bytes_raw()
        try:
            did_pub = did_keys(ident.did).agreement[0].public
        except NeedsFullEnvelope:  # a DID whose keys only the full resolver reads
            from didsession.did import PeerResolver

            did_pub = PeerResolver(capacity=4).x25519_public(ident.did)
        if x_pub != did_pub:
            raise IdentityError(f"key file of identity {ident.name!r} does not match its DID")

    # -- contacts --------------------------------------------------------------------
    def _contacts_path(self) -> Path:
        return self.home / "contacts.json"

    def contacts(self) -> list[Contact]:
        try:
            doc = _read_json(self._contacts_path(), "contacts file")
        except FileNotFoundError:
            return []
        try:
            return [
                Contact(
                    alias=c["alias"],
                    did=c["did"],
                    label=c.get("label"),
                    accepted=float(c["accepted"]),
                    invitation_id=c.get("invitation_id"),
                )
                for c in doc["contacts"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"contacts file {self._contacts_path()} is corrupt") from exc

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold an exclusive lock on ``name`` in the home: two processes that read, change
        and write the same file (two ``didsession accept`` at once) must not interleave,
        or one's change is lost."""
        self._ensure_home()
        fd = os.open(self.home / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def add_contact(
        self, did: str, *, label: str | None, alias: str | None, invitation_id: str | None
    ) -> Contact:
        """Store a contact; re-accepting the same DID updates it in place."""
        with self._locked("contacts"):
            return self._add_contact(did, label, alias, invitation_id)

    def _add_contact(
        self, did: str, label: str | None, alias: str | None, invitation_id: str | None
    ) -> Contact:
        contacts = self.contacts()
        base = alias or _alias_from(label) or f"peer{len(contacts) + 1}"
        if not _NAME.match(base):
            raise ConfigError(f"contact alias {base!r} is invalid: use letters, digits, . _ -")
        existing = next((c for c in contacts if c.did == did), None)
        taken = {c.alias for c in contacts if c.did != did}
        if alias and alias in taken:
            raise ConfigError(f"contact alias {alias!r} is taken by another DID")
        chosen = base
        n = 2
        while chosen in taken:
            chosen = f"{base}-{n}"
            n += 1
        if existing and not alias:
            chosen = existing.alias
        contact = Contact(chosen, did, label, time.time(), invitation_id)
        kept = [c for c in contacts if c.did != did]
        kept.append(contact)
        doc = {"version": FORMAT_VERSION, "contacts": [c.to_json() for c in kept]}
        write_private(self._contacts_path(), json.dumps(doc, indent=2).encode())
        return contact

    def find_contact(self, alias_or_did: str) -> Contact:
        for c in self.contacts():
            if alias_or_did in (c.alias, c.did):
                return c
        raise ConfigError(
            f"no contact {alias_or_did!r}; accept their invitation first "
            "('didsession accept URL'), see 'didsession contacts'"
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _alias_from(label: str | None) -> str | None:
    if not label:
        return None
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")[:64]
    return cleaned or None
