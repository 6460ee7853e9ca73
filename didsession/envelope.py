"""DIDComm v2 envelopes: the one module through which all DIDComm crypto flows.

- authcrypt: ECDH-1PU+A256KW key wrapping, A256CBC-HS512 content encryption; the sender
  is authenticated by its keyAgreement key (not by a signature: the recipient can forge
  such a message to itself, which is what DIDComm calls repudiable authentication).
- anoncrypt: ECDH-ES+A256KW, A256CBC-HS512; the sender stays anonymous.
- forward: a message to a party whose DIDCommMessaging service names a mediator DID is
  anoncrypt-wrapped in a Routing 2.0 ``forward`` for each hop (mediator DID, then its
  routing keys), so the mediator learns only the next hop.

Built on didcomm-messaging (askar backend).  Everything that library or the peer DID
libraries can raise on hostile input is turned into our typed errors here, so callers
see :class:`~didsession.errors.EnvelopeError` / ``DecryptError`` / ``DIDError`` only.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from aries_askar import AskarError, Key, KeyAlg, ecdh
from didcomm_messaging.crypto.backend.askar import AskarCryptoService, AskarKey, AskarSecretKey
from didcomm_messaging.crypto.backend.basic import InMemorySecretsManager
from didcomm_messaging.crypto.base import CryptoServiceError
from didcomm_messaging.crypto.jwe import JweBuilder, JweEnvelope, JweRecipient, b64url
from didcomm_messaging.packaging import PackagingService, PackagingServiceError
from didcomm_messaging.routing import RoutingService, RoutingServiceError
from pydid import VerificationMethod
from pydid.service import DIDCommV2Service

from didsession._dataclass import dataclass
from didsession.authcrypt import new_message
from didsession.did import PeerResolver, check_did_syntax, legacy_fragments
from didsession.errors import DecryptError, DIDError, DidSessionError, EnvelopeError
from didsession.untrusted import parse_json

__all__ = [
    "FORWARD_TYPE",
    "MAX_ENVELOPE_BYTES",
    "Envelope",
    "Packed",
    "Unpacked",
    "new_message",
    "parse_forward",
]

FORWARD_TYPE = "https://didcomm.org/routing/2.0/forward"
ENCRYPTED_TYP = "application/didcomm-encrypted+json"
# Larger messages are refused before any parsing; a mediator may set a lower limit.
MAX_ENVELOPE_BYTES = 1 << 20
MAX_RECIPIENTS = 16


@dataclass(frozen=True, slots=True)
class Packed:
    """A packed message and where to send it."""

    data: bytes
    endpoint: str | None  # URI of the first hop (the recipient's or its mediator's)
    forwarded: bool  # True when wrapped in at least one forward


@dataclass(frozen=True, slots=True)
class Unpacked:
    """The plaintext of a received message and what the envelope proved about it."""

    message: dict[str, Any]
    plaintext: bytes
    encrypted: bool
    authenticated: bool
    sender_did: str | None  # None for anoncrypt: the `from` inside is then only a claim
    sender_kid: str | None
    recipient_kid: str


class _CopyingRouting(RoutingService):
    """RoutingService that never mutates cached documents.

    didcomm-messaging 0.1.1 prepends to ``service_endpoint.routing_keys`` in place; with
    our parsed-document cache that would grow the cached list on every pack.
    """

    async def _resolve_services(self, resolver: Any, to: str) -> list[DIDCommV2Service]:
        services = await super()._resolve_services(resolver, to)
        return [copy.deepcopy(s) for s in services]


class _Packaging(PackagingService[AskarKey, AskarSecretKey]):
    """Speaks a legacy peer's key-id dialect (see didsession.did), for every layer.

    To a legacy DID (the recipient, or a mediator in a forward chain) the recipient kid
    and our sender kid are the 8-character aliases; the kid chosen is kept instead of the
    document's ``#key-N``.
    """

    async def pack(
        self,
        crypto: Any,
        resolver: Any,
        secrets: Any,
        message: bytes,
        to: Sequence[str],
        frm: str | None = None,
        **options: Any,
    ) -> bytes:
        kids = list(to)
        if isinstance(resolver, PeerResolver):
            legacy = [("#" not in t and resolver.is_legacy(t)) for t in to]
            kids = [resolver.legacy_kid(t) if old else t for t, old in zip(to, legacy, strict=True)]
            if frm and "#" not in frm and any(legacy):
                frm = resolver.legacy_kid(frm)
        packed: bytes = await super().pack(crypto, resolver, secrets, message, kids, frm, **options)
        return packed

    async def recip_for_kid_or_default_for_did(
        self, crypto: Any, resolver: Any, kid_or_did: str
    ) -> AskarKey:
        key: AskarKey = await super().recip_for_kid_or_default_for_did(crypto, resolver, kid_or_did)
        if "#" in kid_or_did and key.kid != kid_or_did:
            return AskarKey(key.key, kid_or_did)
        return key


class _CryptoService(AskarCryptoService):
    """askar backend with the DIDComm spec's ``typ`` on authcrypt envelopes.

    didcomm-messaging 0.1.1 writes typ ``application/didcomm+encrypted``; the spec (§5.1)
    says ``application/didcomm-encrypted+json``.  The protected header is AAD, so the fix
    is at encryption time: this is the library's method with that one header corrected.

    It also caches public keys by verification method: building an askar key from a
    multikey costs ~0.1 ms of FFI calls, and every pack and unpack needs one or two.
    """

    def __init__(self) -> None:
        self._keys: OrderedDict[tuple[str, str], AskarKey] = OrderedDict()

    def verification_method_to_public_key(self, vm: VerificationMethod) -> AskarKey:
        cache_key = (str(vm.id), str(vm.public_key_multibase or vm.public_key_jwk))
        key = self._keys.get(cache_key)
        if key is None:
            key = AskarKey.from_verification_method(vm)
            self._keys[cache_key] = key
            if len(self._keys) > 4096:
                self._keys.popitem(last=False)
        return key

    async def ecdh_es_encrypt(self, to_keys: Sequence[AskarKey], message: bytes) -> bytes:
        """Anoncrypt with A256CBC-HS512, the content encryption DIDComm v2 requires.

        (0.1.1 hard-wires XC20P, which the spec lists as optional.)
        """
        if not to_keys:
            raise CryptoServiceError("No message recipients")
        alg_id = "ECDH-ES+A256KW"
        try:
            cek = Key.generate(KeyAlg.A256CBC_HS512)
        except AskarError as exc:
            raise CryptoServiceError("Error creating content encryption key") from exc
        apv = hashlib.sha256(".".join(sorted(r.kid for r in to_keys)).encode()).digest()
        builder = JweBuilder(with_flatten_recipients=False)
        for recip in to_keys:
            epk = Key.generate(KeyAlg.X25519, ephemeral=True)
            wrapped = ecdh.EcdhEs(alg_id, None, apv).sender_wrap_key(
                KeyAlg.A256KW, epk, recip.key, cek
            )
            builder.add_recipient(
                JweRecipient(
                    encrypted_key=wrapped.ciphertext,
                    header={"kid": recip.kid, "epk": json.loads(epk.get_jwk_public())},
                )
            )
        builder.set_protected(
            OrderedDict(
                [
                    ("typ", ENCRYPTED_TYP),
                    ("alg", alg_id),
                    ("enc", "A256CBC-HS512"),
                    ("apv", b64url(apv)),
                ]
            )
        )
        payload = cek.aead_encrypt(message, aad=builder.protected_bytes)
        builder.set_payload(payload.ciphertext, payload.nonce, payload.tag)
        return builder.build().to_json().encode()

    async def ecdh_1pu_encrypt(
        self, to_keys: Sequence[AskarKey], sender_key: AskarSecretKey, message: bytes
    ) -> bytes:
        if not to_keys:
            raise CryptoServiceError("No message recipients")
        alg_id = "ECDH-1PU+A256KW"
        # X25519 only: our DIDs' keyAgreement keys are X25519, and reading a key's algorithm
        # is an FFI call per key.
        agree_alg = KeyAlg.X25519
        try:
            cek = Key.generate(KeyAlg.A256CBC_HS512)
            epk = Key.generate(agree_alg, ephemeral=True)
        except AskarError as exc:
            raise CryptoServiceError("Error creating keys") from exc
        apu = sender_key.kid
        apv = hashlib.sha256(".".join(sorted(r.kid for r in to_keys)).encode()).digest()
        builder = JweBuilder(with_flatten_recipients=False)
        builder.set_protected(
            OrderedDict(
                [
                    ("typ", ENCRYPTED_TYP),
                    ("alg", alg_id),
                    ("enc", "A256CBC-HS512"),
                    ("apu", b64url(apu)),
                    ("apv", b64url(apv)),
                    ("epk", json.loads(epk.get_jwk_public())),
                    ("skid", sender_key.kid),
                ]
            )
        )
        payload = cek.aead_encrypt(message, aad=builder.protected_bytes)
        builder.set_payload(payload.ciphertext, payload.nonce, payload.tag)
        for recip in to_keys:
            wrapped = ecdh.Ecdh1PU(alg_id, apu, apv).sender_wrap_key(
                KeyAlg.A256KW, epk, sender_key.key, recip.key, cek, cc_tag=payload.tag
            )
            builder.add_recipient(
                JweRecipient(encrypted_key=wrapped.ciphertext, header={"kid": recip.kid})
            )
        return builder.build().to_json().encode()


def parse_forward(message: dict[str, Any]) -> tuple[str, bytes]:
    """``(next, inner packed message)`` of a Routing 2.0 forward; EnvelopeError if malformed."""
    if message.get("type") != FORWARD_TYPE:
        raise EnvelopeError(f"not a forward message: type {message.get('type')!r}")
    body = message.get("body")
    nxt = body.get("next") if isinstance(body, dict) else None
    if not isinstance(nxt, str) or not nxt:
        raise EnvelopeError("forward message has no body.next")
    atts = message.get("attachments")
    if not isinstance(atts, list) or len(atts) != 1 or not isinstance(atts[0], dict):
        raise EnvelopeError("forward message must carry exactly one attachment")
    data = atts[0].get("data")
    if not isinstance(data, dict):
        raise EnvelopeError("forward attachment has no data")
    if isinstance(data.get("json"), dict):
        return nxt, json.dumps(data["json"]).encode()
    if isinstance(data.get("base64"), str):
        try:
            return nxt, base64.urlsafe_b64decode(data["base64"] + "==")
        except ValueError as exc:
            raise EnvelopeError("forward attachment has invalid base64") from exc
    raise EnvelopeError("forward attachment has neither data.json nor data.base64")


class Envelope:
    """Packs and unpacks DIDComm v2 messages for the identities registered with it.

    One instance per process is enough: it owns the resolver cache and the secrets.
    """

    def __init__(self, resolver: PeerResolver | None = None) -> None:
        self.resolver = resolver or PeerResolver()
        self.secrets: InMemorySecretsManager[AskarSecretKey] = InMemorySecretsManager()
        self.crypto = _CryptoService()
        self.packaging = _Packaging()
        self.routing = _CopyingRouting()
        self.dids: set[str] = set()

    def add_identity(self, did: str, ed25519_secret: bytes, x25519_secret: bytes) -> None:
        """Register a local identity's keys under every kid its keys may be named by."""
        del ed25519_secret  # DIDComm encryption uses the keyAgreement key only
        key = Key.from_secret_bytes(KeyAlg.X25519, x25519_secret)
        names = set(self.resolver.key_agreement_kids(did))
        multibase_names = set()
        for kid in names:
            vm = self.resolver.verification_method(kid)
            if vm.public_key_multibase:
                multibase_names |= {f"{did}#{f}" for f in legacy_fragments(vm.public_key_multibase)}
        short = self.resolver.short_form(did)
        all_names = names | multibase_names
        if short:
            all_names |= {short + kid[len(did) :] for kid in names}
        for kid in all_names:
            self.secrets.secrets[kid] = AskarSecretKey(key, kid)
        self.dids.add(did)
        if short:
            self.dids.add(short)

    async def pack(
        self,
        message: dict[str, Any],
        *,
        to: str,
        frm: str | None = None,
        forward: bool = True,
    ) -> Packed:
        """Encrypt ``message`` to DID ``to``: authcrypt from ``frm``, else anoncrypt.

        With ``forward`` (default) and a recipient whose service names a mediator DID, the
        result is wrapped in forward messages and ``endpoint`` is the mediator's.
        """
        try:
            plaintext = json.dumps(message, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(f"message is not JSON-serialisable: {exc}") from exc
        return await self.pack_plaintext(plaintext, to=to, frm=frm, forward=forward)

    async def pack_plaintext(
        self, plaintext: bytes, *, to: str, frm: str | None = None, forward: bool = True
    ) -> Packed:
        """:meth:`pack` for a plaintext message that is already serialised.

        The session handshake hashes the exact bytes it sends, so it packs them unchanged.
        """
        check_did_syntax(to)
        if frm is not None and frm not in self.dids:
            raise EnvelopeError(f"no keys for sender {frm[:60]}…: not a local identity")
        try:
            packed = await self.packaging.pack(
                self.crypto, self.resolver, self.secrets, plaintext, [to], frm
            )
            endpoint = self._direct_endpoint(to)
            if not forward or endpoint is None:
                # No DIDComm service: the caller delivers by other means (a session path).
                return Packed(packed, endpoint, False)
            data, services = await self.routing.prepare_forward(
                self.crypto, self.packaging, self.resolver, self.secrets, to, packed
            )
        except DidSessionError:
            raise
        except (
            PackagingServiceError,
            CryptoServiceError,
            RoutingServiceError,
            AskarError,
            ValueError,
        ) as exc:
            raise EnvelopeError(f"cannot pack a message to {to[:60]}…: {exc}") from exc
        endpoint = services[0].service_endpoint.uri if services else None
        return Packed(bytes(data), endpoint, data is not packed)

    def _direct_endpoint(self, did: str) -> str | None:
        """URI of the DID's first DIDCommMessaging service (a URL or a mediator DID)."""
        doc = self.resolver.parse_sync(did)
        for svc in doc.service or []:
            if isinstance(svc, DIDCommV2Service):
                ep = svc.service_endpoint
                first = ep[0] if isinstance(ep, list) else ep
                return str(first.uri) if first is not None else None
        return None

    async def unpack(self, data: bytes | str) -> Unpacked:
        """Decrypt a packed message addressed to one of our identities.

        Raises:
            EnvelopeError: not a DIDComm encrypted message, or its plaintext is malformed.
            DecryptError: tampered, not for us, or from a key that is not the sender's.
            DIDError: the sender's DID cannot be resolved.
        """
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise EnvelopeError(f"message is {len(raw)} bytes; the limit is {MAX_ENVELOPE_BYTES}")
        env = self._parse_jwe(raw)
        kids = list(env.recipient_key_ids)
        if not any(k in self.secrets.secrets for k in kids):
            shown = ", ".join(k[-24:] for k in kids[:3]) or "none"
            raise DecryptError(f"message is not for any of our keys (recipients: …{shown})")
        try:
            plaintext, meta = await self.packaging.unpack(
                self.crypto, self.resolver, self.secrets, raw
            )
        except DidSessionError:
            raise
        except (PackagingServiceError, CryptoServiceError) as exc:
            raise DecryptError(f"cannot decrypt message: {exc}") from exc
        except Exception as exc:  # askar/pydid raise assorted types on hostile headers
            raise DecryptError(f"cannot decrypt message: {type(exc).__name__}: {exc}") from exc
        message = self._parse_plaintext(plaintext)
        sender_kid = meta.sender_kid
        sender_did = sender_kid.split("#", 1)[0] if sender_kid else None
        if sender_did is not None and sender_kid is not None:
            self._check_sender(message, sender_did, sender_kid)
            if not sender_kid.split("#", 1)[1].startswith("key-"):
                self.resolver.add_legacy(sender_did)  # answer it in its own dialect
        return Unpacked(
            message=message,
            plaintext=plaintext,
            encrypted=True,
            authenticated=sender_did is not None,
            sender_did=sender_did,
            sender_kid=sender_kid,
            recipient_kid=meta.recip_key.kid,
        )

    def _check_sender(self, message: dict[str, Any], sender_did: str, sender_kid: str) -> None:
        # Spec §5.1.4 (authcrypt): the skid must be a keyAgreement key of the `from` DID.
        frm = message.get("from")
        if frm is not None and frm != sender_did:
            raise DecryptError(
                f"message claims to be from {str(frm)[:60]}… "
                f"but was encrypted by {sender_did[:60]}…"
            )
        agree = self.resolver.key_agreement_kids(sender_did)
        vm = self.resolver.verification_method(sender_kid)
        if not any(self.resolver.verification_method(k).id == vm.id for k in agree):
            raise DecryptError("sender key is not a keyAgreement key of the sender's DID")

    @staticmethod
    def _parse_jwe(raw: bytes) -> JweEnvelope:
        try:
            doc = parse_json(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError("not a DIDComm encrypted message: not JSON") from exc
        if not isinstance(doc, dict):
            raise EnvelopeError("not a DIDComm encrypted message: not a JSON object")
        try:
            env = JweEnvelope.deserialize(doc)
        except Exception as exc:  # ValueError, binascii.Error, KeyError, TypeError...
            raise EnvelopeError(f"not a DIDComm encrypted message: {exc}") from exc
        if len(env.recipients) > MAX_RECIPIENTS:
            raise EnvelopeError(
                f"message has {len(env.recipients)} recipients; limit {MAX_RECIPIENTS}"
            )
        return env

    @staticmethod
    def _parse_plaintext(plaintext: bytes) -> dict[str, Any]:
        try:
            message = parse_json(plaintext)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError("decrypted content is not JSON") from exc
        if not isinstance(message, dict):
            raise EnvelopeError("decrypted content is not a JSON object")
        for field in ("id", "type"):
            if not isinstance(message.get(field), str):
                raise EnvelopeError(f"decrypted message has no string {field!r}")
        return message


def is_did_or_kid(value: str) -> bool:
    try:
        check_did_syntax(value.split("#", 1)[0])
    except DIDError:
        return False
    return True
