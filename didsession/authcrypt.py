"""DIDComm v2 authcrypt for the session handshake, on ``cryptography`` alone.

Theory of operation
-------------------
The session handshake (spec/session.md §4.4) sends two DIDComm messages per session, each
authcrypt-packed from one party's DID to the other's.  :class:`~didsession.envelope.Envelope`
does that with didcomm-messaging, askar and pydid: complete, but importing them costs
~0.25 s of CPU in every process, and an MPyC party needs nothing else from them.  This
module is the same authcrypt, byte for byte, for the case the handshake meets:

* keys come straight out of the DID string (did:peer:2, long-form did:peer:4), never from a
  parsed DID document: :func:`did_keys`;
* :class:`Authcrypt` packs and unpacks ECDH-1PU+A256KW / A256CBC-HS512 with X25519 keys in
  the JWE general JSON serialization (DIDComm v2 §5.1.4), with the same header order, the
  same ``apu``/``apv``/``skid``/``kid`` rules and the same legacy key-id dialect as
  ``Envelope`` (see :mod:`didsession.did`);
* anything else (another algorithm, a flattened JWE, unprotected headers, a DID whose keys
  are JWKs...) raises :class:`NeedsFullEnvelope`, and the caller
  (:class:`didsession.peer.HandshakeCodec`) hands the message to the full ``Envelope``,
  imported only then.

Crypto (RFC 7518 §4.6, §5.2.5, §4.8 and draft-madden-jose-ecdh-1pu-04 §2.3)::

    Z   = X25519(epk, recipient) || X25519(sender, recipient)
    KEK = SHA-256(0x00000001 || Z || lp("ECDH-1PU+A256KW") || lp(apu) || lp(apv)
                  || u32(256) || lp(tag))                    # lp = u32 length prefix
    encrypted_key = AES-KW(KEK, CEK)                         # CEK: 64 bytes
    ciphertext = AES-256-CBC(CEK[32:], iv, PKCS#7(plaintext))
    tag = HMAC-SHA-512(CEK[:32], aad || iv || ciphertext || u64(8 * len(aad)))[:32]

``aad`` is the base64url protected header.  The authentication tag is part of the key
derivation, so the content is encrypted before the key is wrapped.  On receipt the key is
unwrapped (AES-KW checks its integrity), the tag is compared in constant time, and only
then is anything decrypted.

The sender authentication is ECDH-1PU's: the sender's static keyAgreement key.  As with
``Envelope`` it is repudiable, and KCI-vulnerable (spec §11.2): the handshake does not rely
on it alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from didsession import _x25519 as x25519
from didsession._dataclass import dataclass
from didsession.errors import DecryptError, DIDError, EnvelopeError
from didsession.untrusted import parse_json, remember

__all__ = [
    "ALG",
    "ENC",
    "MAX_DID_LENGTH",
    "MAX_ENVELOPE_BYTES",
    "AgreementKey",
    "Authcrypt",
    "DIDKeys",
    "NeedsFullEnvelope",
    "check_did_syntax",
    "did_keys",
]

ALG = "ECDH-1PU+A256KW"
ENC = "A256CBC-HS512"
TYP = "application/didcomm-encrypted+json"
# The same limits as didsession.envelope and didsession.did (tests check they agree).
MAX_ENVELOPE_BYTES = 1 << 20
MAX_RECIPIENTS = 16
MAX_DID_LENGTH = 8192

_DID_SYNTAX = re.compile(r"^did:[a-z0-9]+:[A-Za-z0-9._:%-]+$")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_PEER2 = re.compile(rf"^did:peer:2(\.[AEVID]z[{_B58}]+|\.S[A-Za-z0-9_-]+)+$")
_PEER4_LONG = re.compile(rf"^did:peer:4zQm[{_B58}]{{44}}:z[{_B58}]{{6,}}$")
_PEER4_SHORT = re.compile(rf"^did:peer:4zQm[{_B58}]{{44}}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
# The multicodecs didcomm-messaging knows (didsession.did decodes keys with it).
_CODECS = {
    b"\xed\x01": "ed25519-pub",
    b"\x80\x26": "ed25519-priv",
    b"\xec\x01": "x25519-pub",
    b"\x82\x26": "x25519-priv",
    b"\xea\x01": "bls12_381-g1-pub",
    b"\xeb\x01": "bls12_381-g2-pub",
    b"\xee\x01": "bls12_381-g1g2-pub",
    b"\xe7\x01": "secp256k1-pub",
}
_KEY_SIZES = {"ed25519-pub": 32, "x25519-pub": 32}
_ALG_BYTES = ALG.encode()
_U32 = struct.Struct(">I")
_KDF_LEN = _U32.pack(256)  # SuppPubInfo starts with keydatalen in bits (A256KW: 256)


class NeedsFullEnvelope(EnvelopeError):
    """The message or DID is valid DIDComm that this module does not handle itself: give
    it to :class:`~didsession.envelope.Envelope`."""


# -- keys out of peer DIDs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgreementKey:
    """One X25519 keyAgreement key of a DID.

    Attributes:
        kid: ``did#key-N``, the key id did-peer-2 / did-peer-4 documents give it.
        multibase: its ``publicKeyMultibase`` (``z6LS…``).
        public: the raw 32-byte X25519 public key.
    """

    kid: str
    multibase: str
    public: bytes

    @property
    def legacy_kid(self) -> str:
        """``did#<8 chars>``: the name peerdid 0.5 has for this key (see didsession.did)."""
        return f"{self.kid.split('#', 1)[0]}#{self.multibase[1:9]}"

    def names(self, did: str) -> tuple[str, ...]:
        """Every kid under ``did`` that names this key: ``#key-N`` and both legacy forms."""
        fragment = self.kid.split("#", 1)[1]
        return (f"{did}#{fragment}", f"{did}#{self.multibase[1:9]}", f"{did}#{self.multibase[1:]}")


@dataclass(frozen=True, slots=True)
class DIDKeys:
    """What authcrypt needs of a DID document, read from the DID itself.

    Attributes:
        did: the DID.
        agreement: its keyAgreement keys in document order (the first is the default).
        legacy: the DID has the old flat DIDCommMessaging service form (peerdid <= 0.5),
            so its owner names keys the legacy way.
        short: the did:peer:4 short form of a long-form did:peer:4, else None.
    """

    did: str
    agreement: tuple[AgreementKey, ...]
    legacy: bool = False
    short: str | None = None

    def find(self, kid: str) -> AgreementKey | None:
        """The keyAgreement key ``kid`` names (``#key-N`` or a legacy alias), else None."""
        did, _, fragment = kid.partition("#")
        if did not in (self.did, self.short) or not fragment:
            return None
        for key in self.agreement:
            if fragment in (key.kid.split("#", 1)[1], key.multibase[1:9], key.multibase[1:]):
                return key
        return None


def check_did_syntax(did: str) -> str:
    """Return ``did`` if it is a syntactically valid DID of a sane length, else DIDError.

    The same rule as :func:`didsession.did.check_did_syntax`.
    """
    if not isinstance(did, str) or not did:
        raise DIDError("a DID must be a non-empty string")
    if len(did) > MAX_DID_LENGTH:
        raise DIDError(f"DID is {len(did)} characters long; the limit is {MAX_DID_LENGTH}")
    if not _DID_SYNTAX.match(did):
        raise DIDError(f"not a DID: {did[:60]!r}")
    return did


def did_keys(did: str) -> DIDKeys:
    """The keyAgreement keys of a did:peer:2 or long-form did:peer:4, without resolving it
    into a parsed document.

    Checks what :class:`didsession.did.PeerResolver` checks of the keys: each multibase key
    decodes, Ed25519/X25519 keys have 32 bytes, the first keyAgreement key is X25519.

    Raises:
        DIDError: malformed, unsupported method, or no usable keyAgreement key.
        NeedsFullEnvelope: a valid peer DID whose keys this module does not read (JWK
            keys, embedded or external keyAgreement references).
    """
    check_did_syntax(did)
    if _PEER2.match(did):
        return _peer2_keys(did)
    if _PEER4_LONG.match(did):
        return _peer4_keys(did)
    if _PEER4_SHORT.match(did):
        raise DIDError(
            "cannot resolve a short-form did:peer:4 before its long form was "
            "seen; ask the party for its invitation"
        )
    if did.startswith("did:peer:"):
        raise DIDError(f"unsupported or malformed peer DID: {did[:60]!r}")
    method = did.split(":")[1]
    raise DIDError(f"DID method {method!r} is not supported (only did:peer:2/4)")


def _peer2_keys(did: str) -> DIDKeys:
    # did:peer:2 numbers its keys key-1, key-2... in order, whatever their purpose.
    agreement: list[AgreementKey] = []
    legacy = False
    index = 0
    for element in did.split(".")[1:]:
        purpose, value = element[0], element[1:]
        if purpose == "S":
            legacy = _flat_service(did, value) or legacy
            continue
        index += 1
        codec, raw = _decode_multikey(did, value)
        if purpose == "E":
            kid = f"{did}#key-{index}"
            agreement.append(_agreement_key(did, kid, value, codec, raw, first=not agreement))
    if index == 0:
        raise DIDError(f"{did[:60]}… has no keys")
    if not agreement:
        raise DIDError(f"{did[:60]}… has no keyAgreement key")
    return DIDKeys(did, tuple(agreement), legacy)


def _peer4_keys(did: str) -> DIDKeys:
    import did_peer_4  # ~10 ms, and only for did:peer:4

    try:
        doc = did_peer_4.resolve(did)
    except Exception as exc:  # the library raises ValueError, KeyError, ...
        raise DIDError(f"malformed peer DID {did[:60]!r}…: {exc}") from exc
    methods = doc.get("verificationMethod")
    if not isinstance(methods, list) or not methods:
        raise DIDError(f"{did[:60]}… has no keys")
    by_id: dict[str, tuple[str, str, bytes]] = {}
    for vm in methods:
        if not isinstance(vm, dict) or not isinstance(vm.get("id"), str):
            raise NeedsFullEnvelope("did:peer:4 document with an unusual verification method")
        value = vm.get("publicKeyMultibase")
        if not isinstance(value, str):
            continue  # JWK keys: read by the full resolver if they are ever used
        codec, raw = _decode_multikey(did, value)
        by_id[vm["id"]] = (value, codec, raw)
    refs = doc.get("keyAgreement") or []
    if not refs:
        raise DIDError(f"{did[:60]}… has no keyAgreement key")
    agreement: list[AgreementKey] = []
    for ref in refs:
        if not isinstance(ref, str) or not ref.startswith("#") or ref not in by_id:
            raise NeedsFullEnvelope("did:peer:4 keyAgreement that is not a local multikey")
        value, codec, raw = by_id[ref]
        agreement.append(_agreement_key(did, did + ref, value, codec, raw, first=not agreement))
    return DIDKeys(did, tuple(agreement), False, str(did_peer_4.long_to_short(did)))


def _agreement_key(
    did: str, kid: str, value: str, codec: str, raw: bytes, *, first: bool
) -> AgreementKey:
    if codec != "x25519-pub":
        if first:
            raise DIDError(f"expected a x25519-pub key, found {codec}")
        raise NeedsFullEnvelope(f"{did[:40]}… has a {codec} keyAgreement key")
    return AgreementKey(kid, value, raw)


def _decode_multikey(did: str, value: str) -> tuple[str, bytes]:
    try:
        if not value.startswith("z"):
            raise ValueError("not base58btc")
        data = _b58decode(value[1:])
    except ValueError:
        raise DIDError(f"{did[:60]}… has an undecodable key {value[:16]!r}…") from None
    codec = _CODECS.get(data[:2])
    if codec is None:
        raise DIDError(f"{did[:60]}… has an undecodable key {value[:16]!r}…")
    raw = data[2:]
    expected = _KEY_SIZES.get(codec)
    if expected is not None and len(raw) != expected:
        raise DIDError(f"{did[:60]}… has a {codec} key of {len(raw)} bytes, not {expected}")
    return codec, raw


def _flat_service(did: str, encoded: str) -> bool:
    """Whether a did:peer:2 service element is the old flat DIDCommMessaging form."""
    try:
        service = parse_json(_b64decode(encoded))
    except (ValueError, UnicodeDecodeError):
        raise DIDError(f"malformed peer DID {did[:60]!r}…: undecodable service") from None
    if not isinstance(service, dict):
        raise DIDError(f"malformed peer DID {did[:60]!r}…: a service is not an object")
    kind = service.get("t", service.get("type"))
    endpoint = service.get("s", service.get("serviceEndpoint"))
    return kind in ("dm", "DIDCommMessaging") and isinstance(endpoint, str)


def _b58decode(text: str) -> bytes:
    n = 0
    try:
        for ch in text:
            n = n * 58 + _B58_INDEX[ch]
    except KeyError:
        raise ValueError("not base58") from None
    zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    """Unpadded base64url; ValueError on anything else."""
    if not isinstance(text, str) or not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


# -- the codec ---------------------------------------------------------------------------


class Authcrypt:
    """Authcrypt pack/unpack for one local identity (sans-IO, synchronous).

    Args:
        did: our DID (did:peer:2 or long-form did:peer:4).
        x25519_secret: the 32-byte secret of its (first) keyAgreement key.
        rand: the source of the ephemeral key, content key and IV (tests inject it).
        capacity: how many DIDs' keys to keep.

    Raises:
        EnvelopeError: the secret is not the one of the DID's keyAgreement key.
    """

    def __init__(
        self,
        did: str,
        x25519_secret: bytes,
        *,
        rand: Callable[[int], bytes] = os.urandom,
        capacity: int = 1024,
    ) -> None:
        self._capacity = capacity
        self._cache: OrderedDict[str, DIDKeys] = OrderedDict()
        # Kept longer than the keys (they cannot be derived again), bounded all the same.
        self._kept = 16 * capacity
        self._short_to_long: OrderedDict[str, str] = OrderedDict()
        self._legacy_peers: OrderedDict[str, None] = OrderedDict()
        self._rand = rand
        self.did = did
        keys = self.keys(did)
        self._secret = x25519.private_key(x25519_secret)
        own = keys.agreement[0]
        if self._secret.public_key().public_bytes_raw() != own.public:
            raise EnvelopeError(f"the X25519 secret given is not the key of {did[:60]}…")
        self._own = own
        # Every kid a sender may address us by (as Envelope.add_identity registers them).
        names: set[str] = set()
        for key in keys.agreement:
            names.update(key.names(did))
            if keys.short:
                names.add(keys.short + key.kid[len(did) :])
        self._names = frozenset(names)

    # -- keys ----------------------------------------------------------------------------

    def keys(self, did: str) -> DIDKeys:
        """:func:`did_keys`, cached; a short-form did:peer:4 once its long form was seen."""
        cached = self._cache.get(did)
        if cached is not None:
            self._cache.move_to_end(did)
            return cached
        long = self._short_to_long.get(did)
        if long is not None:
            found = self.keys(long)
            found = DIDKeys(did, found.agreement, found.legacy, did)
        else:
            found = did_keys(did)
            if found.short:
                remember(self._short_to_long, found.short, did, self._kept)
        remember(self._cache, did, found, self._capacity)
        return found

    def x25519_public(self, did: str) -> bytes:
        """The raw X25519 key of ``did``'s first keyAgreement key (what the handshake's
        ``peer_static_key`` needs).  Raises DIDError / NeedsFullEnvelope."""
        return self.keys(did).agreement[0].public

    def is_legacy(self, did: str) -> bool:
        """Whether ``did`` names keys the peerdid 0.5 way (its DID says so, or it did)."""
        return did in self._legacy_peers or self.keys(did).legacy

    def mark_legacy(self, did: str) -> None:
        """Answer ``did`` in the legacy dialect from now on (it used a legacy kid)."""
        remember(self._legacy_peers, did, None, self._kept)

    # -- pack ----------------------------------------------------------------------------

    def pack(self, plaintext: bytes, to: str) -> bytes:
        """Authcrypt ``plaintext`` (sent as is) from our DID to ``to``'s default key.

        Returns:
            The JWE (general JSON serialization) as UTF-8 JSON bytes.

        Raises:
            DIDError: ``to`` is malformed or unresolvable.
            NeedsFullEnvelope: ``to`` is a DID this module cannot read the keys of.
        """
        recipient = self.keys(to)
        key = recipient.agreement[0]
        if self.is_legacy(to):
            recipient_kid, sender_kid = key.legacy_kid, self._own.legacy_kid
        else:
            recipient_kid, sender_kid = key.kid, self._own.kid
        return self._pack(plaintext, key.public, recipient_kid, sender_kid)

    def _pack(self, plaintext: bytes, public: bytes, recipient_kid: str, sender_kid: str) -> bytes:
        epk = x25519.private_key(self._rand(32))
        cek = self._rand(64)
        iv = self._rand(16)
        apu = sender_kid.encode()
        apv = hashlib.sha256(recipient_kid.encode()).digest()  # sorted kids, joined by "."
        epk_jwk = {
            "crv": "X25519",
            "kty": "OKP",
            "x": _b64encode(epk.public_key().public_bytes_raw()),
        }
        protected = {
            "typ": TYP,
            "alg": ALG,
            "enc": ENC,
            "apu": _b64encode(apu),
            "apv": _b64encode(apv),
            "epk": epk_jwk,
            "skid": sender_kid,
        }
        aad = _b64encode(json.dumps(protected).encode()).encode()
        ciphertext, tag = _cbc_hs512_encrypt(cek, iv, plaintext, aad)
        recipient_public = x25519.public_key(public)
        try:
            z = epk.exchange(recipient_public) + self._secret.exchange(recipient_public)
        except ValueError:  # a low-order point: no shared secret
            raise DIDError("the recipient's keyAgreement key is not a usable X25519 key") from None
        wrapped = aes_key_wrap(_kdf(z, apu, apv, tag), cek)
        jwe = {
            "protected": aad.decode(),
            "recipients": [
                {"encrypted_key": _b64encode(wrapped), "header": {"kid": recipient_kid}}
            ],
            "iv": _b64encode(iv),
            "ciphertext": _b64encode(ciphertext),
            "tag": _b64encode(tag),
        }
        return json.dumps(jwe).encode()

    # -- unpack --------------------------------------------------------------------------

    def unpack(self, data: bytes | str) -> tuple[bytes, str]:
        """Decrypt an authcrypt message to us; return ``(plaintext, sender DID)``.

        The sender DID is the one whose keyAgreement key the message proves (``skid``);
        the plaintext's ``from``, if any, must be that DID.

        Raises:
            EnvelopeError: not a DIDComm encrypted message, or its plaintext is malformed.
            DecryptError: tampered, not for us, anoncrypt, or from a key that is not a
                keyAgreement key of the sender's DID.
            DIDError: the sender's DID cannot be resolved.
            NeedsFullEnvelope: valid DIDComm this module does not handle (see module doc).
        """
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise EnvelopeError(f"message is {len(raw)} bytes; the limit is {MAX_ENVELOPE_BYTES}")
        jwe = _parse_jwe(raw)
        kids = jwe.kids
        if not any(k in self._names for k in kids):
            shown = ", ".join(k[-24:] for k in kids[:3]) or "none"
            raise DecryptError(f"message is not for any of our keys (recipients: …{shown})")
        header = jwe.protected
        alg, enc = header.get("alg"), header.get("enc")
        if not isinstance(alg, str) or "ECDH-1PU" not in alg:
            raise DecryptError(f"cannot decrypt message: unsupported algorithm {str(alg)[:40]!r}")
        if alg != ALG or enc != ENC:
            if alg == "ECDH-1PU+A128KW" or enc == "A128CBC-HS256":
                raise NeedsFullEnvelope(f"authcrypt with {alg} / {enc}")
            raise DecryptError(f"cannot decrypt message: unsupported {alg!r} / {str(enc)[:40]!r}")
        apv_text = header.get("apv")
        expected_apv = _b64encode(hashlib.sha256(".".join(kids).encode()).digest())
        if not isinstance(apv_text, str) or not hmac.compare_digest(
            apv_text.encode(), expected_apv.encode()
        ):
            raise DecryptError("cannot decrypt message: invalid apv")
        sender_kid = self._sender_kid(header)
        sender_did = sender_kid.split("#", 1)[0]
        sender = self.keys(sender_did).find(sender_kid)
        if sender is None:
            raise DecryptError("sender key is not a keyAgreement key of the sender's DID")
        epk = _epk(header.get("epk"))
        index = next(i for i, k in enumerate(kids) if k in self._names)
        try:
            z = self._secret.exchange(epk) + self._secret.exchange(x25519.public_key(sender.public))
            apv = _b64decode(apv_text)
        except ValueError:
            raise DecryptError("cannot decrypt message: unusable ephemeral or sender key") from None
        kek = _kdf(z, sender_kid.encode(), apv, jwe.tag)
        try:
            cek = aes_key_unwrap(kek, jwe.encrypted_keys[index])
        except (InvalidUnwrap, ValueError):
            raise DecryptError("cannot decrypt message: the content key does not unwrap") from None
        plaintext = _cbc_hs512_decrypt(cek, jwe.iv, jwe.ciphertext, jwe.tag, jwe.aad)
        message = _parse_plaintext(plaintext)
        frm = message.get("from")
        if frm is not None and frm != sender_did:
            raise DecryptError(
                f"message claims to be from {str(frm)[:60]}… but was encrypted by {sender_did[:60]}…"
            )
        if not sender_kid.split("#", 1)[1].startswith("key-"):
            remember(self._legacy_peers, sender_did, None, self._kept)  # its own dialect
        return plaintext, sender_did

    @staticmethod
    def _sender_kid(header: dict[str, Any]) -> str:
        apu = header.get("apu")
        if not isinstance(apu, str) or not apu:
            raise DecryptError("cannot decrypt message: missing apu header")
        try:
            from_apu = _b64decode(apu).decode()
        except (ValueError, UnicodeDecodeError):
            raise DecryptError("cannot decrypt message: invalid apu value") from None
        skid = header.get("skid") or from_apu
        if skid != from_apu:
            raise DecryptError("cannot decrypt message: skid and apu differ")
        if not isinstance(skid, str) or "#" not in skid:
            raise DecryptError("cannot decrypt message: the sender key id is not a DID URL")
        return skid


@dataclass(frozen=True, slots=True)
class _Jwe:
    protected: dict[str, Any]
    aad: bytes
    kids: list[str]
    encrypted_keys: list[bytes]
    iv: bytes
    ciphertext: bytes
    tag: bytes


_TOP = frozenset({"protected", "recipients", "iv", "ciphertext", "tag"})


def _parse_jwe(raw: bytes) -> _Jwe:
    try:
        doc = parse_json(raw)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("not a DIDComm encrypted message: not JSON") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("not a DIDComm encrypted message: not a JSON object")
    for name in ("protected", "iv", "ciphertext", "tag"):
        if not isinstance(doc.get(name), str):
            raise EnvelopeError(f"not a DIDComm encrypted message: no {name}")
    recipients = doc.get("recipients")
    if not isinstance(recipients, list):
        raise NeedsFullEnvelope("not the general JWE JSON serialization")
    if len(recipients) > MAX_RECIPIENTS:
        raise EnvelopeError(f"message has {len(recipients)} recipients; limit {MAX_RECIPIENTS}")
    if not doc.keys() <= _TOP:
        raise NeedsFullEnvelope("JWE with unprotected headers or extra AAD")
    try:
        protected = parse_json(_b64decode(doc["protected"]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"not a DIDComm encrypted message: {exc}") from None
    if not isinstance(protected, dict):
        raise EnvelopeError("not a DIDComm encrypted message: protected header is not an object")
    alg = protected.get("alg")
    if isinstance(alg, str) and "ECDH-ES" in alg:
        raise DecryptError("not an authcrypt message (anoncrypt: the sender is anonymous)")
    kids: list[str] = []
    keys: list[bytes] = []
    try:
        for recipient in recipients:
            if not isinstance(recipient, dict):
                raise ValueError("invalid recipient")
            header = recipient.get("header")
            if not isinstance(header, dict) or header.keys() != {"kid"}:
                raise NeedsFullEnvelope("recipient header other than a kid alone")
            if not isinstance(header["kid"], str):
                raise ValueError("invalid recipient kid")
            kids.append(header["kid"])
            keys.append(_b64decode(recipient["encrypted_key"]))
        iv = _b64decode(doc["iv"])
        ciphertext = _b64decode(doc["ciphertext"])
        tag = _b64decode(doc["tag"])
    except NeedsFullEnvelope:
        raise
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise EnvelopeError(f"not a DIDComm encrypted message: {exc}") from None
    if "recipients" in protected or "encrypted_key" in protected or "kid" in protected:
        raise NeedsFullEnvelope("recipients in the protected header")
    return _Jwe(protected, doc["protected"].encode(), kids, keys, iv, ciphertext, tag)


def _epk(jwk: Any) -> X25519PublicKey:
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "X25519":
        raise DecryptError("cannot decrypt message: the ephemeral key is not an X25519 JWK")
    try:
        raw = _b64decode(jwk.get("x", ""))
        if len(raw) != 32:
            raise ValueError("wrong size")
        return x25519.public_key(raw)
    except ValueError:
        raise DecryptError("cannot decrypt message: invalid ephemeral key") from None


def _parse_plaintext(plaintext: bytes) -> dict[str, Any]:
    try:
        message = parse_json(plaintext)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("decrypted content is not JSON") from None
    if not isinstance(message, dict):
        raise EnvelopeError("decrypted content is not a JSON object")
    for field in ("id", "type"):
        if not isinstance(message.get(field), str):
            raise EnvelopeError(f"decrypted message has no string {field!r}")
    return message


def _lp(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _kdf(z: bytes, apu: bytes, apv: bytes, tag: bytes) -> bytes:
    """Concat KDF (one SHA-256 block: the A256KW key) with ECDH-1PU's tag in SuppPubInfo."""
    other = _lp(_ALG_BYTES) + _lp(apu) + _lp(apv) + _KDF_LEN + _lp(tag)
    return hashlib.sha256(b"\x00\x00\x00\x01" + z + other).digest()


def _cbc_hs512_encrypt(cek: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    pad = 16 - len(plaintext) % 16
    encryptor = Cipher(algorithms.AES(cek[32:]), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plaintext + bytes([pad]) * pad) + encryptor.finalize()
    return ciphertext, _cbc_hs512_tag(cek[:32], aad, iv, ciphertext)


def _cbc_hs512_decrypt(cek: bytes, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes:
    if len(cek) != 64 or len(iv) != 16 or not ciphertext or len(ciphertext) % 16:
        raise DecryptError("cannot decrypt message: malformed A256CBC-HS512 content")
    if not hmac.compare_digest(tag, _cbc_hs512_tag(cek[:32], aad, iv, ciphertext)):
        raise DecryptError("cannot decrypt message: authentication tag mismatch")
    decryptor = Cipher(algorithms.AES(cek[32:]), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    pad = padded[-1]
    # Authenticated above, so a bad padding is the sender's bug, not an oracle.
    if not 1 <= pad <= 16 or padded[-pad:] != bytes([pad]) * pad:
        raise DecryptError("cannot decrypt message: invalid padding")
    return padded[:-pad]


def _cbc_hs512_tag(mac_key: bytes, aad: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    al = struct.pack(">Q", 8 * len(aad))
    return hmac.new(mac_key, aad + iv + ciphertext + al, hashlib.sha512).digest()[:32]


# -- plaintext messages (shared with didsession.envelope and didsession.relay_client) ---------

PLAIN_TYP = "application/didcomm-plain+json"


def new_message(
    type_: str,
    body: dict[str, Any],
    *,
    frm: str | None = None,
    to: Sequence[str] | None = None,
    thid: str | None = None,
    msg_id: str | None = None,
    created_time: int | None = None,
) -> dict[str, Any]:
    """A DIDComm v2 plaintext message (spec §2.4 message structure)."""
    msg: dict[str, Any] = {
        "id": msg_id or str(uuid.uuid4()),
        "typ": PLAIN_TYP,
        "type": type_,
    }
    if frm:
        msg["from"] = frm
    if to:
        msg["to"] = list(to)
    if thid:
        msg["thid"] = thid
    msg["created_time"] = int(time.time()) if created_time is None else created_time
    msg["body"] = body
    return msg
