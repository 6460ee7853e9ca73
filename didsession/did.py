"""Peer DIDs: creating did:peer:2 / did:peer:4 and resolving them with a cache.

Resolution itself is cheap (~30 µs for did:peer:2), but turning the document into a
``pydid.DIDDocument`` costs ~0.5 ms, and one authcrypt pack needs the recipient's document
two or three times (recipient key, services, forward chain).  So :class:`PeerResolver`
caches both the raw and the parsed document per DID, in a bounded LRU.

Key-id aliases (interop).  did-peer-2 (current peer DID spec) names keys ``#key-1``,
``#key-2``...; PyPI ``peerdid`` 0.5.x names the same keys after the first 8 characters of
their multibase value without the leading ``z`` (``#6LSksafy``), and peerdid < 0.5 after
all of it.  All name one key, so dereferencing accepts each.  We emit ``#key-N`` except to
a peer known to be legacy (its DID has the old flat service form, or it sent us a legacy
kid): a peerdid 0.5 resolver knows no other name for either party's key.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Literal

import did_peer_2
import did_peer_4
from didcomm_messaging.multiformats import multibase, multicodec
from didcomm_messaging.resolver import DIDResolver
from pydid import DIDDocument, DIDUrl, Resource, VerificationMethod

from didsession._dataclass import dataclass
from didsession.errors import DIDError
from didsession.untrusted import remember

__all__ = [
    "MAX_DID_LENGTH",
    "Method",
    "PeerResolver",
    "ServiceSpec",
    "create_peer_did",
    "multikey",
    "multikey_bytes",
]

Method = Literal["peer2", "peer4"]

# A did:peer:2 with two keys and one service is ~300 chars, a did:peer:4 long form ~1 KB.
# Anything far beyond that is not a DID we make or need, and costs memory to cache.
MAX_DID_LENGTH = 8192

_DID_SYNTAX = re.compile(r"^did:[a-z0-9]+:[A-Za-z0-9._:%-]+$")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Where a party is reached: a URL (its mediator's endpoint) or a mediator DID."""

    uri: str
    routing_keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "DIDCommMessaging",
            "serviceEndpoint": {
                "uri": self.uri,
                "accept": ["didcomm/v2"],
                "routingKeys": list(self.routing_keys),
            },
        }


def multikey(codec: str, public: bytes) -> str:
    """Multibase (base58btc) multicodec key, e.g. ``z6Mk...`` for ``ed25519-pub``."""
    return str(multibase.encode(multicodec.wrap(codec, public), "base58btc"))


def multikey_bytes(value: str, expected_codec: str) -> bytes:
    """Inverse of :func:`multikey`; raises DIDError on a wrong codec or bad encoding."""
    try:
        codec, raw = multicodec.unwrap(multibase.decode(value))
    except Exception as exc:  # the multiformats helpers raise bare ValueError/KeyError
        raise DIDError(f"invalid multibase key {value[:16]!r}…") from exc
    if codec.name != expected_codec:
        raise DIDError(f"expected a {expected_codec} key, found {codec.name}")
    if len(raw) != 32:
        raise DIDError(f"{expected_codec} key has {len(raw)} bytes, expected 32")
    return bytes(raw)


def create_peer_did(
    ed25519_public: bytes,
    x25519_public: bytes,
    service: ServiceSpec | None,
    method: Method = "peer2",
) -> str:
    """Make a peer DID for an Ed25519 authentication + X25519 keyAgreement key pair.

    Returns the did:peer:2 or the *long form* did:peer:4 (its short form is in the
    resolved document's ``alsoKnownAs``).
    """
    auth = multikey("ed25519-pub", ed25519_public)
    agree = multikey("x25519-pub", x25519_public)
    services = [service.to_json()] if service else []
    if method == "peer2":
        keys = [did_peer_2.KeySpec.verification(auth), did_peer_2.KeySpec.key_agreement(agree)]
        return str(did_peer_2.generate(keys, services))
    if method == "peer4":
        doc: dict[str, Any] = {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "verificationMethod": [
                {"id": "#key-1", "type": "Multikey", "publicKeyMultibase": auth},
                {"id": "#key-2", "type": "Multikey", "publicKeyMultibase": agree},
            ],
            "authentication": ["#key-1"],
            "assertionMethod": ["#key-1"],
            "keyAgreement": ["#key-2"],
            "service": [dict(s, id=f"#service-{i}") for i, s in enumerate(services)],
        }
        if not services:
            del doc["service"]
        return str(did_peer_4.encode(doc))
    raise DIDError(f"unknown DID method {method!r}: use peer2 or peer4")


def check_did_syntax(did: str) -> str:
    """Return ``did`` if it is a syntactically valid DID of a sane length, else DIDError."""
    if not isinstance(did, str) or not did:
        raise DIDError("a DID must be a non-empty string")
    if len(did) > MAX_DID_LENGTH:
        raise DIDError(f"DID is {len(did)} characters long; the limit is {MAX_DID_LENGTH}")
    if not _DID_SYNTAX.match(did):
        raise DIDError(f"not a DID: {did[:60]!r}")
    return did


class PeerResolver(DIDResolver):
    """Resolves did:peer:2 and did:peer:4 (long form; short form once the long was seen).

    A bounded LRU holds raw and parsed documents.  Documents are immutable (a peer DID *is*
    its document), so the cache never needs invalidation.  What cannot be resolved again
    from the DID alone (the long form behind a did:peer:4 short form, the key-id dialect a
    peer speaks) is kept longer, but bounded too: senders are free to make new DIDs.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._raw: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._parsed: OrderedDict[str, DIDDocument] = OrderedDict()
        self._kept = 16 * capacity
        self._short_to_long: OrderedDict[str, str] = OrderedDict()
        # DIDs of peers that name keys the peerdid 0.5 way (see module docstring)
        self._legacy: OrderedDict[str, None] = OrderedDict()
        self.misses = 0

    # -- the DIDResolver interface ---------------------------------------------------
    async def is_resolvable(self, did: str) -> bool:
        return self.can_resolve(did)

    async def resolve(self, did: str) -> dict[str, Any]:
        return self.resolve_sync(did)

    async def resolve_and_parse(self, did: str) -> DIDDocument:
        return self.parse_sync(did)

    async def resolve_and_dereference(self, did_url: str) -> Resource:
        return self.dereference_sync(did_url)

    # -- synchronous core ------------------------------------------------------------
    def can_resolve(self, did: str) -> bool:
        if not isinstance(did, str) or len(did) > MAX_DID_LENGTH:
            return False
        if did_peer_2.PATTERN.match(did) or did_peer_4.LONG_PATTERN.match(did):
            return True
        return bool(did_peer_4.SHORT_PATTERN.match(did)) and did in self._short_to_long

    def resolve_sync(self, did: str) -> dict[str, Any]:
        """Resolve ``did`` to its DID document (a dict).  Raises DIDError."""
        cached = self._raw.get(did)
        if cached is not None:
            self._raw.move_to_end(did)
            return cached
        check_did_syntax(did)
        self.misses += 1
        try:
            if did_peer_2.PATTERN.match(did):
                doc = did_peer_2.resolve(did)
                if _normalize_legacy_services(doc):
                    self.add_legacy(did)
            elif did_peer_4.LONG_PATTERN.match(did):
                doc = did_peer_4.resolve(did)
                for aka in doc.get("alsoKnownAs", []):
                    if did_peer_4.SHORT_PATTERN.match(aka):
                        remember(self._short_to_long, aka, did, self._kept)
            elif did_peer_4.SHORT_PATTERN.match(did):
                long = self._short_to_long.get(did)
                if long is None:
                    raise DIDError(
                        "cannot resolve a short-form did:peer:4 before its long form was "
                        "seen; ask the party for its invitation"
                    )
                doc = did_peer_4.resolve_short(long)
            elif did.startswith("did:peer:"):
                raise DIDError(f"unsupported or malformed peer DID: {did[:60]!r}")
            else:
                method = did.split(":")[1]
                raise DIDError(f"DID method {method!r} is not supported (only did:peer:2/4)")
            _check_keys(did, doc)
        except DIDError:
            raise
        except Exception as exc:  # the peer DID libraries raise ValueError, KeyError, ...
            raise DIDError(f"malformed peer DID {did[:60]!r}…: {exc}") from exc
        self._put(self._raw, did, doc)
        return doc

    def parse_sync(self, did: str) -> DIDDocument:
        cached = self._parsed.get(did)
        if cached is not None:
            self._parsed.move_to_end(did)
            return cached
        raw = self.resolve_sync(did)
        try:
            parsed = DIDDocument.deserialize(raw)
        except Exception as exc:
            raise DIDError(f"DID document of {did[:60]!r}… is invalid: {exc}") from exc
        self._put(self._parsed, did, parsed)
        return parsed

    def dereference_sync(self, did_url: str) -> Resource:
        """Dereference ``did#fragment``; accepts the legacy ``#6LS...`` key-id alias."""
        try:
            url = DIDUrl.parse(did_url)
        except Exception as exc:
            raise DIDError(f"not a DID URL: {did_url[:80]!r}") from exc
        if not url.did:
            raise DIDError(f"DID URL must be absolute: {did_url[:80]!r}")
        doc = self.parse_sync(str(url.did))
        try:
            return doc.dereference(url)
        except Exception:
            pass
        fragment = url.fragment or ""
        for vm in doc.verification_method or []:
            if vm.public_key_multibase and fragment in legacy_fragments(vm.public_key_multibase):
                return vm
        raise DIDError(f"{did_url[:80]!r} names no key or service in its DID document")

    def verification_method(self, did_url: str) -> VerificationMethod:
        res = self.dereference_sync(did_url)
        if not isinstance(res, VerificationMethod):
            raise DIDError(f"{did_url[:80]!r} is not a verification method")
        return res

    def key_agreement_kids(self, did: str) -> list[str]:
        """Absolute kids of the document's keyAgreement keys, in document order."""
        doc = self.parse_sync(did)
        return [_absolute(did, ref) for ref in (doc.key_agreement or [])]

    def authentication_kids(self, did: str) -> list[str]:
        doc = self.parse_sync(did)
        return [_absolute(did, ref) for ref in (doc.authentication or [])]

    def x25519_public(self, did: str) -> bytes:
        """The raw X25519 public key of the DID's first keyAgreement key."""
        kids = self.key_agreement_kids(did)
        if not kids:
            raise DIDError(f"{did[:60]}… has no keyAgreement key")
        vm = self.verification_method(kids[0])
        if not vm.public_key_multibase:
            raise DIDError(f"{kids[0][:60]}… has no publicKeyMultibase")
        return multikey_bytes(vm.public_key_multibase, "x25519-pub")

    def is_legacy(self, did: str) -> bool:
        """True for a peer that names keys the peerdid 0.5 way (see module docstring)."""
        self.resolve_sync(did)
        return did in self._legacy

    def add_legacy(self, did: str) -> None:
        """``did``'s party speaks the peerdid 0.5 dialect: answer it in that dialect."""
        remember(self._legacy, did, None, self._kept)

    def legacy_kid(self, did: str) -> str:
        """``did#<8 chars>``: the only name a peerdid 0.5 resolver has for the agreement key."""
        kids = self.key_agreement_kids(did)
        if not kids:
            raise DIDError(f"{did[:60]}… has no keyAgreement key")
        multibase_value = self.verification_method(kids[0]).public_key_multibase or ""
        return f"{did}#{legacy_fragments(multibase_value)[0]}"

    def short_form(self, did: str) -> str | None:
        """The did:peer:4 short form of a long-form DID (None for other methods)."""
        if did_peer_4.LONG_PATTERN.match(did):
            return str(did_peer_4.long_to_short(did))
        return None

    def _put(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        if len(cache) > self._capacity:
            cache.popitem(last=False)


def legacy_fragments(multibase_value: str) -> tuple[str, str]:
    """Key-id fragments older peer DID libraries use for a ``z...`` multibase key.

    peerdid 0.5.x: the first 8 characters after the ``z``; peerdid < 0.5: all of them.
    """
    return multibase_value[1:9], multibase_value[1:]


def _normalize_legacy_services(doc: dict[str, Any]) -> bool:
    """Rewrite the old flat DIDCommMessaging service form to the DIDComm v2.1 nested form.

    peerdid <= 0.5 encodes ``{"serviceEndpoint": "<uri>", "routingKeys": [...], "accept": [...]}``;
    didcomm-messaging's routing reads ``serviceEndpoint.uri``.  Returns True if it did.
    """
    changed = False
    for svc in doc.get("service") or []:
        if not isinstance(svc, dict):
            continue
        endpoint = svc.get("serviceEndpoint")
        if svc.get("type") == "DIDCommMessaging" and isinstance(endpoint, str):
            svc["serviceEndpoint"] = {
                "uri": endpoint,
                "accept": svc.pop("accept", ["didcomm/v2"]),
                "routingKeys": svc.pop("routingKeys", []),
            }
            changed = True
    return changed


_KEY_SIZES = {"ed25519-pub": 32, "x25519-pub": 32}


def _check_keys(did: str, doc: dict[str, Any]) -> None:
    """The peer DID libraries do not decode keys; a DID with a truncated key would resolve."""
    methods = doc.get("verificationMethod")
    if not isinstance(methods, list) or not methods:
        raise DIDError(f"{did[:60]}… has no keys")
    for vm in methods:
        value = vm.get("publicKeyMultibase") if isinstance(vm, dict) else None
        if not isinstance(value, str):
            continue  # JWK keys: checked when used
        try:
            codec, raw = multicodec.unwrap(multibase.decode(value))
        except Exception as exc:
            raise DIDError(f"{did[:60]}… has an undecodable key {value[:16]!r}…") from exc
        expected = _KEY_SIZES.get(codec.name)
        if expected is not None and len(raw) != expected:
            raise DIDError(
                f"{did[:60]}… has a {codec.name} key of {len(raw)} bytes, not {expected}"
            )


def _absolute(did: str, ref: Any) -> str:
    """A verification-method reference (DIDUrl or embedded method) as ``did#fragment``."""
    if isinstance(ref, VerificationMethod):
        ref = ref.id
    text = str(ref)
    return did + text if text.startswith("#") else text
