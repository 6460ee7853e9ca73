"""The ``didsession`` command line.

Every command reads its identity from the home directory (``--home``, ``$DIDSESSION_HOME``
or the XDG data dir) and prints plain text for people or ``--json`` for scripts.  Errors
are one line on stderr and exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from didsession import __version__
from didsession.did import PeerResolver
from didsession.errors import ConfigError, DidSessionError, EnvelopeError, IdentityError
from didsession.identity import Identity, Store, default_home

EXAMPLES = """\
examples:
  didsession init --name alice                 create an identity (did:peer:2)
  didsession invite                            show its invitation URL and QR code
  didsession invite --format png -o inv.png    the QR code as a PNG file
  didsession accept 'https://…?_oob=…'         store the other party as a contact
  didsession contacts                          list contacts
  echo hello | didsession pack --to bob        authcrypt a basic message to contact bob
  didsession unpack packed.json                decrypt a message sent to you

Identities live in --home, $DIDSESSION_HOME or $XDG_DATA_HOME/didsession.
"""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> str | None:
    """Passphrase from --passphrase-file, $DIDSESSION_PASSPHRASE, or a prompt on a tty."""
    if getattr(args, "passphrase_file", None):
        try:
            return Path(args.passphrase_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read passphrase file: {exc.strerror}") from None
    env = os.environ.get("DIDSESSION_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("repeat passphrase: ") != first:
        raise ConfigError("the passphrases differ")
    return first


def _store(args: argparse.Namespace) -> Store:
    return Store(Path(args.home) if args.home else default_home())


def _load(args: argparse.Namespace, *, unlock: bool = True) -> Identity:
    store = _store(args)
    ident = store.load(args.identity, unlock=False)
    if not unlock:
        return ident
    passphrase = _passphrase(args) if ident.encrypted else None
    return store.load(ident.name, passphrase=passphrase)


def _resolver(store: Store) -> PeerResolver:
    """A resolver that has seen the long forms of our identities and contacts.

    A short-form did:peer:4 can only be resolved after its long form was seen.
    """
    resolver = PeerResolver()
    dids = [c.did for c in store.contacts()]
    for name in store.names():
        try:
            dids.append(store.load(name, unlock=False).did)
        except DidSessionError:
            continue
    for did in dids:
        try:
            resolver.resolve_sync(did)
        except DidSessionError:
            continue
    return resolver


def _read_input(arg: str | None, limit: int) -> bytes:
    if arg in (None, "-"):
        data = sys.stdin.buffer.read(limit + 1)
    else:
        try:
            with open(arg, "rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {arg}: {exc.strerror}") from None
    if len(data) > limit:
        raise EnvelopeError(f"input is larger than the limit of {limit} bytes")
    return data


def _write_output(path: str | None, data: bytes) -> None:
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


# -- commands ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    store = _store(args)
    passphrase = _passphrase(args, confirm=True) if args.encrypt else None
    if args.encrypt and not passphrase:
        raise ConfigError(
            "--encrypt needs a passphrase: --passphrase-file FILE, $DIDSESSION_PASSPHRASE "
            "or a terminal to type it in"
        )
    mediator = args.mediator
    if mediator and not (mediator.startswith(("http://", "https://", "ws://", "wss://", "did:"))):
        raise ConfigError(f"--mediator must be a URL (http, https, ws, wss) or a DID: {mediator!r}")
    ident = store.create(args.name, mediator=mediator, method=args.method, passphrase=passphrase)
    if args.json:
        _print_json(dict(ident.public_json(), home=str(store.home)))
    else:
        print(f"created identity {ident.name!r} in {store.home}")
        print(f"DID: {ident.did}")
        if ident.mediator:
            print(f"reachable through: {ident.mediator}")
        print("next: 'didsession invite' shows your invitation for the other parties")
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    store = _store(args)
    ident = _load(args, unlock=False)
    resolver = PeerResolver()
    info = dict(ident.public_json(), home=str(store.home))
    short = resolver.short_form(ident.did)
    if short:
        info["short_did"] = short
    info["default"] = store.default_name() == ident.name
    if args.json:
        _print_json(info)
    else:
        print(f"name:     {ident.name}{' (default)' if info['default'] else ''}")
        print(f"DID:      {ident.did}")
        if short:
            print(f"short:    {short}")
        print(f"method:   did:{ident.method[:4]}:{ident.method[4:]}")
        print(f"mediator: {ident.mediator or '(none: reachable only directly)'}")
        print(
            f"keys:     {'passphrase-protected' if ident.encrypted else 'unencrypted (mode 0600)'}"
        )
        print(f"created:  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ident.created))}")
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    from didsession.invitation import make_invitation, render_qr

    ident = _load(args, unlock=False)
    inv = make_invitation(ident.did, args.label or ident.name)
    url = inv.to_url(args.base_url)
    fmt = args.format
    if fmt == "url":
        out = (url + "\n").encode()
    elif fmt == "json":
        out = (json.dumps(inv.message, indent=2) + "\n").encode()
    elif fmt == "did-doc":
        out = (json.dumps(PeerResolver().resolve_sync(ident.did), indent=2) + "\n").encode()
    elif fmt in ("png", "svg"):
        if args.output in (None, "-") and sys.stdout.isatty():
            raise ConfigError(f"--format {fmt} writes binary data: give -o FILE")
        out = render_qr(url, fmt)
    elif fmt == "qr":
        out = render_qr(url, "terminal")
    else:  # default: URL and the QR code, for a person at a terminal
        out = render_qr(url, "terminal") + f"\n{url}\n".encode()
    _write_output(args.output, out)
    if args.output not in (None, "-"):
        print(f"wrote {fmt or 'invitation'} to {args.output}", file=sys.stderr)
    return 0


def cmd_accept(args: argparse.Namespace) -> int:
    from didsession.invitation import parse_invitation, read_invitation_source

    store = _store(args)
    inv = parse_invitation(read_invitation_source(args.invitation))
    own = set()
    for name in store.names():
        own.add(store.load(name, unlock=False).did)
    if inv.did in own:
        raise ConfigError("that is your own invitation; accept the other party's")
    contact = store.add_contact(inv.did, label=inv.label, alias=args.alias, invitation_id=inv.id)
    if args.json:
        _print_json(contact.to_json())
    else:
        print(f"accepted: contact {contact.alias!r} ({inv.label or 'no label'})")
        print(f"DID: {contact.did}")
    return 0


def cmd_contacts(args: argparse.Namespace) -> int:
    contacts = _store(args).contacts()
    if args.json:
        _print_json([c.to_json() for c in contacts])
        return 0
    if not contacts:
        print("no contacts yet; accept an invitation with 'didsession accept URL'")
        return 0
    width = max(len(c.alias) for c in contacts)
    for c in contacts:
        did = c.did if len(c.did) <= 72 else c.did[:69] + "…"
        print(f"{c.alias:<{width}}  {did}")
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    resolver = _resolver(_store(args))
    doc = resolver.resolve_sync(args.did)
    if args.json:
        _print_json(doc)
        return 0
    print(f"id: {doc.get('id')}")
    for vm in doc.get("verificationMethod", []):
        uses = [u for u in ("authentication", "keyAgreement") if vm.get("id") in doc.get(u, [])]
        print(f"key {vm.get('id')}: {vm.get('publicKeyMultibase')} ({', '.join(uses) or '-'})")
    for svc in doc.get("service", []):
        ep = svc.get("serviceEndpoint")
        uri = ep.get("uri") if isinstance(ep, dict) else ep
        print(f"service {svc.get('type')}: {uri}")
    for aka in doc.get("alsoKnownAs", []):
        print(f"also known as: {aka}")
    return 0


def _recipient(store: Store, name_or_did: str) -> str:
    if name_or_did.startswith("did:"):
        return name_or_did
    return store.find_contact(name_or_did).did


def cmd_pack(args: argparse.Namespace) -> int:
    from didsession.envelope import MAX_ENVELOPE_BYTES, Envelope, new_message

    store = _store(args)
    to = _recipient(store, args.to)
    raw = _read_input(args.input, MAX_ENVELOPE_BYTES)
    try:
        message = json.loads(raw)
    except ValueError:
        message = None
    envelope = Envelope(_resolver(store))
    frm: str | None = None
    if not args.anon:
        ident = _load(args)
        assert ident.ed25519_secret is not None and ident.x25519_secret is not None
        envelope.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
        frm = ident.did
    if not (isinstance(message, dict) and isinstance(message.get("type"), str)):
        text = raw.decode("utf-8", errors="replace").rstrip("\n")
        message = new_message(
            "https://didcomm.org/basicmessage/2.0/message",
            {"content": text},
            frm=frm,
            to=[to],
        )
    else:
        message.setdefault("to", [to])
        if frm:
            message.setdefault("from", frm)
    packed = asyncio.run(envelope.pack(message, to=to, frm=frm, forward=not args.no_forward))
    if args.json:
        _print_json(
            {
                "packed": json.loads(packed.data),
                "endpoint": packed.endpoint,
                "forwarded": packed.forwarded,
            }
        )
    else:
        _write_output(args.output, packed.data + b"\n")
        if packed.endpoint:
            how = "forward via mediator" if packed.forwarded else "directly"
            print(f"send to {packed.endpoint} ({how})", file=sys.stderr)
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from didsession.envelope import FORWARD_TYPE, MAX_ENVELOPE_BYTES, Envelope

    store = _store(args)
    raw = _read_input(args.input, MAX_ENVELOPE_BYTES)
    envelope = Envelope(_resolver(store))
    names = [args.identity] if args.identity else store.names()
    if not names:
        raise IdentityError(f"no identity in {store.home}; create one with 'didsession init'")
    for name in names:
        ident = store.load(name, unlock=False)
        passphrase = _passphrase(args) if ident.encrypted else None
        ident = store.load(name, passphrase=passphrase)
        assert ident.ed25519_secret is not None and ident.x25519_secret is not None
        envelope.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
    result = asyncio.run(envelope.unpack(raw))
    contacts = {c.did: c.alias for c in store.contacts()}
    sender = result.sender_did
    info = {
        "message": result.message,
        "authenticated": result.authenticated,
        "sender": sender,
        "sender_contact": contacts.get(sender) if sender else None,
        "sender_kid": result.sender_kid,
        "recipient_kid": result.recipient_kid,
    }
    if args.json:
        _print_json(info)
        return 0
    if sender:
        who = f"{contacts[sender]!r} ({sender})" if sender in contacts else sender
        print(f"from: {who} (authenticated: authcrypt)")
    else:
        print("from: anonymous (anoncrypt: the sender is not authenticated)")
    print(f"to:   {result.recipient_kid}")
    if result.message.get("type") == FORWARD_TYPE:
        print(f"forward for: {result.message.get('body', {}).get('next')}")
    print(json.dumps(result.message, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from didsession.demo import run_demo

    return run_demo(keep=args.keep, verbose=args.verbose)


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="didsession",
        description="Peer-DID identities, invitations and DIDComm v2 messages for MPyC parties.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"didsession {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="identity store (default: $DIDSESSION_HOME or XDG)")
    common.add_argument(
        "-i", "--identity", metavar="NAME", help="which identity (default: the default one)"
    )
    common.add_argument("--passphrase-file", metavar="FILE", help="passphrase for encrypted keys")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str, desc: str = ""
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=desc or help_)
        p.set_defaults(func=func)
        return p

    p = add(
        "init",
        cmd_init,
        "create an identity (Ed25519 + X25519 keys and a peer DID)",
        "Create a named identity: an Ed25519 authentication key, an X25519 keyAgreement key "
        "and the did:peer:2 (or did:peer:4) that carries them.  With --mediator the DID "
        "document says how to reach you: the mediator's URL or DID.",
    )
    p.add_argument("--name", default="default", help="identity name (default: %(default)s)")
    p.add_argument("--mediator", metavar="URL_OR_DID", help="where others reach you")
    p.add_argument("--method", choices=["peer2", "peer4"], default="peer2", help="DID method")
    p.add_argument("--encrypt", action="store_true", help="protect the keys with a passphrase")

    add("whoami", cmd_whoami, "show the current identity")

    p = add(
        "invite",
        cmd_invite,
        "print your out-of-band invitation (URL and QR code)",
        "Print a DIDComm Out-of-Band 2.0 invitation naming your DID.  Default: the QR code "
        "and the URL.  The other party runs 'didsession accept' on the URL, the JSON or a "
        "file; a phone can scan the QR code.",
    )
    p.add_argument(
        "--format",
        choices=["url", "json", "did-doc", "qr", "png", "svg"],
        help="url, json (the invitation message), did-doc (your resolved DID document), "
        "qr (terminal), png, svg",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--label", help="name shown to the other party (default: identity name)")
    p.add_argument("--base-url", default="https://didsession.dev/invite", help="URL before ?_oob=")

    p = add("accept", cmd_accept, "accept an invitation and store the party as a contact")
    p.add_argument(
        "invitation", metavar="URL|FILE|-", help="invitation URL, JSON, file, or - for stdin"
    )
    p.add_argument("--alias", help="contact name (default: the invitation's label)")

    add("contacts", cmd_contacts, "list contacts")

    p = add("resolve", cmd_resolve, "resolve a did:peer:2 or did:peer:4 to its DID document")
    p.add_argument("did")

    p = add(
        "pack",
        cmd_pack,
        "encrypt a DIDComm v2 message (authcrypt, or anoncrypt with --anon)",
        "Encrypt a message to a DID or contact.  Input is a DIDComm plaintext message (JSON "
        "with a 'type') or any text, which becomes a basic message.  Authcrypt from your "
        "identity unless --anon.  A recipient reached through a mediator DID gets forward "
        "wrapping unless --no-forward.",
    )
    p.add_argument("input", nargs="?", metavar="FILE|-", help="message file (default: stdin)")
    p.add_argument("--to", required=True, metavar="DID|CONTACT")
    p.add_argument("--anon", action="store_true", help="anoncrypt: do not reveal the sender")
    p.add_argument("--no-forward", action="store_true", help="no forward wrapping")
    p.add_argument("-o", "--output", metavar="FILE")

    p = add(
        "demo",
        cmd_demo,
        "run the end-to-end demo in throw-away homes",
        "Two parties, their invitations (scanned from a QR code), authcrypt and anoncrypt "
        "messages, and refused tampering: every step is this CLI, run for real.",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's homes afterwards")
    p.add_argument("--verbose", action="store_true", help="print long outputs whole")

    p = add("unpack", cmd_unpack, "decrypt a DIDComm v2 message sent to one of your identities")
    p.add_argument("input", nargs="?", metavar="FILE|-", help="packed message (default: stdin)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DidSessionError as exc:
        print(f"didsession: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("didsession: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"didsession: internal error: {type(exc).__name__}: {exc} "
            "(please report it; --debug shows the traceback)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
