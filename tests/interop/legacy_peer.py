"""Interop peer built on the OLD PyPI libraries ``didcomm==0.3.2`` + ``peerdid==0.5.2``.

Run it with the python of a SEPARATE virtualenv that has
``tests/interop/legacy-requirements.txt`` installed (those libraries pin pydantic 1
and cannot share a venv with didsession).  It must never import didsession.

Subcommands (JSON on stdout; on error one line on stderr and exit status 1)::

    new     --state FILE [--service-uri URI] [--routing-key KID ...]
    pack    --state FILE --to DID [--anon] [--forward] [--anon-enc ENC]   (plaintext JSON on stdin)
    unpack  --state FILE [--state FILE ...] [--new-kid-aliases]            (JWE JSON on stdin)
    resolve DID [--raw] [--new-kid-aliases]

Everything is done with the legacy libraries' own API: ``peerdid.dids`` to create and
resolve did:peer:2, ``didcomm.pack_encrypted`` / ``didcomm.unpack`` with the stock
``SecretsResolverInMemory`` holding JWK secrets.  The only glue is the DID resolver that
didcomm 0.3.2 asks its users to write (it ships none for did:peer); the parts of that
glue that are only needed because the other party is a *new-form* did:peer:2 (as made by
``did-peer-2``/didcomm-messaging) are marked "ADAPTER (what a legacy integrator must
do)".
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import warnings
from typing import Any

# Newer Authlib warns (on import) that authlib.jose is deprecated in favour of joserfc;
# didcomm 0.3.2 is built on authlib.jose.  authlib.deprecate force-enables that warning
# with simplefilter("always") when imported, so import it first and silence it after.
import authlib.deprecate

warnings.filterwarnings("ignore", category=authlib.deprecate.AuthlibDeprecationWarning)

from didcomm import (  # noqa: E402
    AnonCryptAlg,
    DIDDoc,
    PackEncryptedConfig,
    PackEncryptedParameters,
    ResolversConfig,
    SecretsResolverInMemory,
    UnpackConfig,
    pack_encrypted,
    unpack,
)
from didcomm.did_doc.did_resolver import DIDResolver  # noqa: E402
from didcomm.protocols.routing.forward import (  # noqa: E402
    ForwardMessage,
    is_forward,
    resolve_did_services_chain,
    wrap_in_forward,
)
from didcomm.secrets.secrets_util import (  # noqa: E402
    generate_ed25519_keys_as_jwk_dict,
    generate_x25519_keys_as_jwk_dict,
    jwk_to_secret,
)
from peerdid import dids as peerdid_dids  # noqa: E402
from peerdid.keys import Ed25519VerificationKey, X25519KeyAgreementKey  # noqa: E402

FORWARD_TYPE = "https://didcomm.org/routing/2.0/forward"
ANON_ENCS = {a.value.enc: a for a in AnonCryptAlg}

# Abbreviations of the did:peer:2 service encoding (peer DID spec). peerdid 0.5.2 only
# expands them at the top level of a service; did-peer-2 applies them recursively.
_ABBREV = {"t": "type", "s": "serviceEndpoint", "r": "routingKeys", "a": "accept"}


class CliError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 1."""


# --------------------------------------------------------------------------------------
# DID resolution: peerdid 0.5.2 -> didcomm 0.3.2 DIDDoc
# --------------------------------------------------------------------------------------


def stock_resolve(did: str):
    """Resolve with the stock peerdid 0.5.2 resolver (a pydid 0.3 DIDDocument)."""
    try:
        return peerdid_dids.resolve_peer_did(did)
    except Exception as exc:
        if not (did.startswith("did:peer:2") and ".S" in did):
            raise
        # ADAPTER (what a legacy integrator must do): peerdid 0.5.2's PEER_DID_PATTERN only
        # admits ONE service segment written in [0-9a-zA-Z], i.e. it rejects every
        # did:peer:2 whose base64url service encoding happens to contain '-' or '_' (or
        # that has more than one service), although the rest of peerdid parses it fine.
        # Bypass the regex and run the same numalgo-2 document builder.
        try:
            return peerdid_dids._build_did_doc_numalgo_2(did, peerdid_dids.KeyFormat.MULTIBASE)
        except Exception:
            raise exc from None


def _abs(did: str, ref: Any) -> Any:
    """Make a relative DID URL ("#frag") absolute; leave embedded methods alone."""
    if isinstance(ref, str) and ref.startswith("#"):
        return did + ref
    return ref


def _expand_abbrev(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_ABBREV.get(k, k): _expand_abbrev(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand_abbrev(v) for v in obj]
    return obj


def _service_for_didcomm(did: str, svc: dict) -> dict:
    """Shape one service entry the way didcomm 0.3.2 reads it.

    didcomm 0.3.2 reads ``service.service_endpoint`` as a plain URI or DID string and
    ``service.accept`` / ``service.routing_keys`` as attributes, i.e. pydid 0.3's
    ``DIDCommService`` (DIDCommV1Service, which also requires ``recipientKeys``).  The
    stock peerdid 0.5.2 resolver yields a generic service with ``routingKeys``/``accept``
    as untyped extras, so every integrator has to re-shape it.
    """
    svc = copy.deepcopy(svc)
    endpoint = svc.get("serviceEndpoint")
    if isinstance(endpoint, list) and endpoint:
        endpoint = endpoint[0]
    if isinstance(endpoint, dict):
        # ADAPTER (what a legacy integrator must do): a new-form did:peer:2 (DID Core /
        # DIDComm v2.1 style, as written by did-peer-2) nests the service endpoint as
        # {"uri", "accept", "routingKeys"} and abbreviates those inner keys too ("a", "r");
        # peerdid 0.5.2 leaves the inner object as is.  Unadapted, pydid 0.3 parses it as
        # a DIDCommV2Service without ``.accept`` and EVERY pack_encrypted to such a DID
        # raises AttributeError (the service lookup runs even with forward=False); with
        # accept missing the service is silently skipped (no endpoint, no forwarding).
        # Flatten it to the old form.
        endpoint = _expand_abbrev(endpoint)
        svc.setdefault("accept", endpoint.get("accept"))
        svc.setdefault("routingKeys", endpoint.get("routingKeys"))
        endpoint = endpoint.get("uri")
    svc = {
        "id": _abs(did, svc.get("id") or "#didcommmessaging-0"),
        "type": "DIDCommMessaging",
        "serviceEndpoint": endpoint or "",
        "accept": svc.get("accept") or [],
        "routingKeys": list(svc.get("routingKeys") or []),
        "recipientKeys": [],
    }
    return svc


def new_form_kid_aliases(did: str) -> dict[str, str]:
    """Map each legacy kid of ``did`` to the did-peer-2 style kid of the same key.

    did-peer-2 numbers keys ``#key-1``, ``#key-2``... in the order of the key segments in
    the DID string; peerdid 0.5.2 builds its verification methods in that same order.
    """
    raw = stock_resolve(did).serialize()
    return {
        _abs(did, vm["id"]): f"{did}#key-{n}"
        for n, vm in enumerate(raw.get("verificationMethod", []), start=1)
    }


def didcomm_doc(did: str, new_kid_aliases: bool = False) -> DIDDoc:
    """Resolve ``did`` into the DIDDoc that didcomm 0.3.2 needs."""
    raw = stock_resolve(did).serialize()
    doc = {"id": raw["id"]}
    if "@context" in raw:
        doc["@context"] = raw["@context"]
    # didcomm 0.3.2 uses verification-method ids verbatim as JWE kids and requires them
    # to be absolute DID URLs; peerdid 0.5.2 emits relative ones ("#6LSabcde").
    vms = []
    for vm in raw.get("verificationMethod", []):
        vm = dict(vm)
        vm["id"] = _abs(did, vm["id"])
        vms.append(vm)
    if new_kid_aliases:
        # ADAPTER (opt-in; what a legacy integrator must do if the new-form peer keeps
        # its own "#key-N" kids): expose every key a second time under the did-peer-2
        # name, so a skid like "did:peer:2...#key-2" can be found.  The alias is not
        # referenced from keyAgreement, so our own packing still picks the legacy kid.
        aliases = new_form_kid_aliases(did)
        vms += [dict(vm, id=aliases[vm["id"]]) for vm in list(vms) if vm["id"] in aliases]
    doc["verificationMethod"] = vms
    for rel in (
        "authentication",
        "assertionMethod",
        "keyAgreement",
        "capabilityInvocation",
        "capabilityDelegation",
    ):
        if rel in raw:
            doc[rel] = [_abs(did, r) for r in raw[rel]]
    services = []
    for svc in raw.get("service", []) or []:
        if svc.get("type") in ("DIDCommMessaging", "dm"):
            services.append(_service_for_didcomm(did, svc))
    if services:
        doc["service"] = services
    return DIDDoc.deserialize(doc)


class PeerDIDResolver(DIDResolver):
    """didcomm 0.3.2 DIDResolver backed by peerdid 0.5.2 (did:peer:0 and did:peer:2)."""

    def __init__(self, new_kid_aliases: bool = False):
        self.new_kid_aliases = new_kid_aliases

    async def resolve(self, did: str) -> DIDDoc | None:
        if not str(did).startswith("did:peer:"):
            return None
        return didcomm_doc(str(did), self.new_kid_aliases)


# --------------------------------------------------------------------------------------
# State files
# --------------------------------------------------------------------------------------


def load_state(path: str) -> dict:
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read state file {path}: {exc}") from None
    if "did" not in state or "secrets" not in state:
        raise CliError(f"not a legacy peer state file: {path}")
    return state


def resolvers_for(states: list[dict], new_kid_aliases: bool = False) -> ResolversConfig:
    jwks = [jwk for st in states for jwk in st["secrets"]]
    if new_kid_aliases:
        # ADAPTER (opt-in, see didcomm_doc): hold each private key under its did-peer-2
        # kid too, so a JWE recipient kid "did:peer:2...#key-1" finds it.
        extra = []
        for st in states:
            aliases = new_form_kid_aliases(st["did"])
            extra += [dict(j, kid=aliases[j["kid"]]) for j in st["secrets"] if j["kid"] in aliases]
        jwks += extra
    return ResolversConfig(
        secrets_resolver=SecretsResolverInMemory([jwk_to_secret(j) for j in jwks]),
        did_resolver=PeerDIDResolver(new_kid_aliases),
    )


# --------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------


async def cmd_new(args) -> dict:
    x_priv, x_pub = generate_x25519_keys_as_jwk_dict()
    ed_priv, ed_pub = generate_ed25519_keys_as_jwk_dict()
    service = None
    if args.service_uri:
        # peerdid 0.5.2 / didcomm 0.3.2 era service shape: flat string endpoint.
        service = {
            "type": "DIDCommMessaging",
            "serviceEndpoint": args.service_uri,
            "routingKeys": list(args.routing_key or []),
            "accept": ["didcomm/v2"],
        }
    did = str(
        peerdid_dids.create_peer_did_numalgo_2(
            encryption_keys=[X25519KeyAgreementKey.from_jwk(dict(x_pub))],
            signing_keys=[Ed25519VerificationKey.from_jwk(dict(ed_pub))],
            service=service,
        )
    )
    # Secrets are keyed by the kids the stock resolver gives those keys.
    doc = didcomm_doc(did)
    ka = str(doc.key_agreement[0])
    auth = str(doc.authentication[0])
    x_priv["kid"] = ka
    ed_priv["kid"] = auth
    state = {"did": did, "secrets": [x_priv, ed_priv]}
    with open(args.state, "w") as f:
        json.dump(state, f, indent=1)
    return {"did": did, "kids": [auth, ka]}


def _read_stdin_json(what: str) -> Any:
    data = sys.stdin.read()
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CliError(f"stdin is not a JSON {what}: {exc}") from None


async def cmd_pack(args) -> dict:
    state = load_state(args.state)
    message = _read_stdin_json("plaintext message")
    if not isinstance(message, dict):
        raise CliError("plaintext message must be a JSON object")
    rc = resolvers_for([state])
    config = PackEncryptedConfig(forward=args.forward)
    if args.anon_enc:
        config.enc_alg_anon = ANON_ENCS[args.anon_enc]
    frm = None if args.anon else state["did"]
    res = await pack_encrypted(
        resolvers_config=rc,
        message=message,
        to=args.to,
        frm=frm,
        pack_config=config,
        pack_params=PackEncryptedParameters(),
    )
    packed = res.packed_msg
    outer_kids = [r["header"]["kid"] for r in json.loads(packed).get("recipients", [])]
    wrapped_by = "library" if outer_kids != [str(k) for k in res.to_kids] else None
    out_to_kids = [str(k) for k in res.to_kids]
    if args.forward and wrapped_by is None:
        # ADAPTER (what a legacy integrator must do): didcomm 0.3.2 only wraps in a
        # forward when the recipient's service lists routingKeys.  A service whose
        # serviceEndpoint/uri is a mediator DID with empty routingKeys (the DIDComm v2.1
        # "alternative endpoint" form) resolves fine but is NOT wrapped.  Wrap it with the
        # library's own wrap_in_forward(), addressed to that mediator DID.
        chain = await resolve_did_services_chain(rc, args.to)
        mediators = [str(s.service_endpoint) for s in chain[1:]]
        if mediators:
            fwd = await wrap_in_forward(
                resolvers_config=rc,
                packed_msg=json.loads(packed),
                to=args.to,
                routing_keys=mediators,
                enc_alg_anon=config.enc_alg_anon,
            )
            packed = json.dumps(fwd.msg_encrypted.msg)
            wrapped_by = "wrap_in_forward"
    out = {
        "packed": packed,
        "service_uri": (
            str(res.service_metadata.service_endpoint) if res.service_metadata else None
        ),
        "to_kids": out_to_kids,
        "from_kid": str(res.from_kid) if res.from_kid else None,
        "forward_wrapped_by": wrapped_by,
    }
    return out


async def cmd_unpack(args) -> dict:
    states = [load_state(p) for p in args.state]
    packed = _read_stdin_json("JWE")
    rc = resolvers_for(states, args.new_kid_aliases)
    res = await unpack(rc, packed, UnpackConfig())
    msg = res.message.as_dict()
    md = res.metadata
    out = {
        "message": msg,
        "encrypted": md.encrypted,
        "authenticated": md.authenticated,
        "anonymous_sender": md.anonymous_sender,
        "sender_kid": str(md.encrypted_from) if md.encrypted_from else None,
        "recipient_kids": [str(k) for k in (md.encrypted_to or [])],
        "enc_alg": (
            (md.enc_alg_auth or md.enc_alg_anon).value._asdict()
            if (md.enc_alg_auth or md.enc_alg_anon)
            else None
        ),
        "re_wrapped_in_forward": md.re_wrapped_in_forward,
    }
    if msg.get("type") == FORWARD_TYPE and is_forward(msg):
        fwd = ForwardMessage.from_dict(copy.deepcopy(msg))
        out["forward"] = {
            "next": str(fwd.body.next),
            "forwarded": json.dumps(fwd.forwarded_msg),
        }
    return out


async def cmd_resolve(args) -> dict:
    if args.raw:
        return peerdid_dids.resolve_peer_did(args.did).serialize()
    return didcomm_doc(args.did, args.new_kid_aliases).serialize()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="legacy_peer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    n = sub.add_parser("new", help="make a did:peer:2 with peerdid 0.5.2")
    n.add_argument("--state", required=True)
    n.add_argument("--service-uri", help="DIDCommMessaging endpoint (URL or mediator DID)")
    n.add_argument("--routing-key", action="append", help="routingKeys entry (repeatable)")
    n.set_defaults(func=cmd_new)

    k = sub.add_parser("pack", help="pack_encrypted the plaintext JSON read on stdin")
    k.add_argument("--state", required=True)
    k.add_argument("--to", required=True)
    k.add_argument("--anon", action="store_true", help="anoncrypt instead of authcrypt")
    k.add_argument("--forward", action="store_true", help="wrap in forward(s) if routed")
    k.add_argument(
        "--anon-enc", choices=sorted(ANON_ENCS), help="anoncrypt enc (default: library's)"
    )
    k.set_defaults(func=cmd_pack)

    u = sub.add_parser("unpack", help="unpack the JWE read on stdin")
    u.add_argument("--state", required=True, action="append")
    u.add_argument(
        "--new-kid-aliases",
        action="store_true",
        help="ADAPTER: also accept did-peer-2 style '#key-N' kids (default: stock)",
    )
    u.set_defaults(func=cmd_unpack)

    r = sub.add_parser("resolve", help="print the DID document as the legacy libs see it")
    r.add_argument("did")
    r.add_argument("--raw", action="store_true", help="stock peerdid output, no glue at all")
    r.add_argument("--new-kid-aliases", action="store_true", help="as unpack")
    r.set_defaults(func=cmd_resolve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = asyncio.run(args.func(args))
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        cause = exc.__cause__ or exc.__context__
        if cause is not None:
            msg += f" (caused by {type(cause).__name__}: {cause})".replace("\n", " ")
        print(f"legacy_peer {args.cmd}: {msg}", file=sys.stderr)
        return 1
    try:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
