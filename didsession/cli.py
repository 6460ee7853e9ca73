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
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from didsession import __version__
from didsession.did import PeerResolver
from didsession.errors import (
    ConfigError,
    DidSessionError,
    EnvelopeError,
    IdentityError,
    RemoteProtocolError,
)
from didsession.identity import Identity, Store, default_home
from didsession.status import StatusBoard
from didsession.untrusted import parse_json

EXAMPLES = """\
examples:
  didsession init --name alice                 create an identity (did:peer:2)
  didsession invite                            show its invitation URL and QR code
  didsession invite --format png -o inv.png    the QR code as a PNG file
  didsession accept 'https://…?_oob=…'         store the other party as a contact
  didsession contacts                          list contacts
  echo hello | didsession pack --to bob        authcrypt a basic message to contact bob
  didsession unpack packed.json                decrypt a message sent to you
  didsession listen --port 7800                accept sessions from contacts
  didsession connect alice --to 127.0.0.1:7800 open a session and chat line by line
  didsession status                            show the sessions running now

an MPyC computation (every party has an identity and shares its invitation):
  didsession roster make -o roster.json INV0 INV1 INV2
                                               the parties' invitations, in party order
  didsession roster show roster.json           check the parties and the fingerprint
  python prog.py --didcomm roster.json -I 0    run as party 0, each link a session
  didsession demo                              all of this with 3 parties, in temporary homes

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
    grant = None
    if mediator and not args.no_mediation:
        # Ask the mediator first: the new DID must name the mediator's routing DID.
        from didsession.mediation import mediator_info, request_mediation

        info = asyncio.run(mediator_info(mediator))
        ident = store.create(
            args.name, mediator=info.did, method=args.method, passphrase=passphrase
        )
        try:
            grant = asyncio.run(request_mediation(ident, info))
        except DidSessionError as exc:
            raise type(exc)(
                f"identity {ident.name!r} was created, but mediation failed: {exc.message} "
                f"(remove {store.home / 'identities' / ident.name} and try again)",
                code=exc.code,
            ) from None
    else:
        ident = store.create(
            args.name, mediator=mediator, method=args.method, passphrase=passphrase
        )
    if args.json:
        out = dict(ident.public_json(), home=str(store.home))
        if grant is not None:
            out["mediation"] = {
                "mediator_did": grant.mediator_did,
                "routing_did": grant.routing_did,
                "endpoint": grant.endpoint,
                "keylist": list(grant.recipient_dids),
            }
        _print_json(out)
    else:
        print(f"created identity {ident.name!r} in {store.home}")
        print(f"DID: {ident.did}")
        if grant is not None:
            print(f"mediation granted by {grant.endpoint}: messages to you are held there")
        elif ident.mediator:
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
    if args.json:
        if fmt:
            raise ConfigError("--json prints the URL and the invitation together: drop --format")
        doc = {"name": ident.name, "did": ident.did, "url": url, "invitation": inv.message}
        out = (json.dumps(doc, indent=2) + "\n").encode()
        fmt = "json"
    elif fmt == "url":
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
        message = parse_json(raw)
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
        doc = {
            "packed": json.loads(packed.data),
            "endpoint": packed.endpoint,
            "forwarded": packed.forwarded,
        }
        _write_output(args.output, (json.dumps(doc, indent=2) + "\n").encode())
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


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _session_info(session: Any) -> dict[str, Any]:
    path = session.path
    return {
        "peer_did": session.peer_did,
        "session_id": session.session_id.hex(),
        "suite": str(session.suite.value if hasattr(session.suite, "value") else session.suite),
        "path": {
            # "direct" / "relay", as in 'didsession status' (not the framing, "stream")
            "kind": None if path.kind is None else str(path.kind),
            "local": list(path.local) if isinstance(path.local, tuple) else path.local,
            "remote": list(path.remote) if isinstance(path.remote, tuple) else path.remote,
        },
    }


def _emit(args: argparse.Namespace, event: str, human: str, **fields: Any) -> None:
    """One event: a JSON line on stdout with --json, else text (messages on stdout)."""
    if args.json:
        print(json.dumps({"event": event, **fields}), flush=True)
    elif event == "message":
        print(fields["text"], flush=True)
    else:
        print(human, file=sys.stderr, flush=True)


async def _chat(
    args: argparse.Namespace,
    session: Any,
    alias: str | None,
    board: StatusBoard | None = None,
    *,
    snapshot: Callable[[float], Any] | None = None,
) -> None:
    """Exchange lines: stdin -> peer, peer -> stdout, until either side ends.

    With ``board``, the session's status is published for 'didsession status' meanwhile.
    """
    from didsession.status import publish_session

    info = _session_info(session)
    who = f"{alias} ({session.peer_did})" if alias else session.peer_did
    path = info["path"]
    _emit(
        args,
        "established",
        f"session with {who}\n  id {info['session_id']}, suite {info['suite']}, "
        f"path {path['kind']} {path['local']} <-> {path['remote']}",
        alias=alias,
        **info,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )

    async def pump_stdin() -> None:
        while line := await reader.readline():
            session.send(line.rstrip(b"\n"))
            await session.drain()
        session.close()

    sender = asyncio.create_task(pump_stdin())
    # Cancelled in the finally below, it writes the session's final state.
    publisher = (
        asyncio.create_task(publish_session(board, session, snapshot=snapshot)) if board else None
    )
    try:
        async for data in session:
            _emit(args, "message", "", text=data.decode("utf-8", errors="replace"))
    except DidSessionError as exc:
        _emit(args, "error", f"session ended: {exc.message}", error=exc.message, code=exc.code)
        raise
    finally:
        sender.cancel()
        if publisher is not None:
            publisher.cancel()
        transport.close()
    _emit(args, "closed", "session closed", session_id=info["session_id"])


def _os_reason(exc: OSError) -> str:
    """Why a socket call failed, in words ("address already in use"), without the
    "error while attempting to bind on address (...)" that asyncio puts around it."""
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno).lower()
    return str(exc.strerror or exc).lower()


def cmd_listen(args: argparse.Namespace) -> int:
    from didsession.peer import serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    store = _store(args)
    ident = _load(args)
    contacts = store.contacts()
    if args.peer:
        allowed = {store.find_contact(p).did for p in args.peer}
    else:
        allowed = {c.did for c in contacts}
    if not allowed:
        raise ConfigError(
            "no contacts to accept sessions from; accept their invitation first "
            "('didsession accept URL')"
        )
    aliases = {c.did: c.alias for c in contacts}
    board = StatusBoard(store.home, "listen")

    async def main() -> None:
        done = asyncio.Event()

        async def on_session(session: Any) -> None:
            try:
                await _chat(args, session, aliases.get(session.peer_did), board)
            finally:
                if args.once:
                    done.set()

        def on_error(exc: Exception) -> None:
            msg = (
                exc.message if isinstance(exc, DidSessionError) else f"{type(exc).__name__}: {exc}"
            )
            _emit(args, "refused", f"refused a session: {msg}", error=msg)

        from didsession.envelope import Envelope

        try:
            server = await serve(
                ident,
                args.host,
                args.port,
                on_session,
                accept_peer=allowed,
                on_error=on_error,
                envelope=Envelope(_resolver(store)),
            )
        except OSError as exc:
            where = f"[{args.host}]" if ":" in args.host else args.host
            raise ConfigError(f"cannot listen on {where}:{args.port}: {_os_reason(exc)}") from None
        sock = server.sockets[0].getsockname()
        _emit(
            args,
            "listening",
            f"listening on {sock[0]}:{sock[1]} as {ident.name} ({ident.did[:48]}…); "
            f"accepting {len(allowed)} contact(s)",
            host=sock[0],
            port=sock[1],
            did=ident.did,
        )
        mediated = None
        if ident.mediator and not args.no_mediator:
            mediated = asyncio.create_task(
                _serve_mediated(args, store, ident, allowed, aliases, board, done)
            )
        try:
            async with server:
                if args.once:
                    await done.wait()
                else:
                    await server.serve_forever()
        finally:
            if mediated is not None:
                mediated.cancel()
                await asyncio.gather(mediated, return_exceptions=True)

    asyncio.run(main())
    return 0


def _path_event(args: argparse.Namespace) -> Callable[[Any, Any], None]:
    """Path changes of a session through the mediator, as events for the person."""
    from didsession.session.multipath import PathActivated

    def on_event(transport: Any, event: Any) -> None:
        if isinstance(event, PathActivated):
            info: dict[str, Any] = next(
                (p for p in transport.mp.paths() if p["id"] == event.path), {}
            )
            where = (
                f" {info.get('local')} -> {info.get('remote')}"
                if event.kind.value == "direct"
                else ""
            )
            _emit(
                args,
                "path",
                f"now on the {event.kind.value} path{where} ({event.reason})",
                path=event.kind.value,
                reason=event.reason,
                local=info.get("local"),
                remote=info.get("remote"),
            )

    return on_event


def _mediated_snapshot(mediated: Any, program: str, started: float) -> Any:
    from didsession.status import session_status, with_path_info

    def snapshot(now: float) -> Any:
        status = session_status(
            mediated.session, program=program, started=started, now=now, path=None
        )
        info = dict(mediated.transport.status())
        info["relay_only"] = mediated.relay_only
        return with_path_info(status, info)

    return snapshot


def _connect_via_mediator(args: argparse.Namespace, store: Any, ident: Any, contact: Any) -> int:
    from didsession.direct import DirectPaths
    from didsession.envelope import Envelope
    from didsession.rendezvous import connect_via_mediator

    async def main() -> None:
        envelope = Envelope(_resolver(store))
        direct = None if args.relay_only else DirectPaths(ident.mediator, stun=args.stun)
        mediated = await connect_via_mediator(
            ident,
            _envelope_with(envelope, ident),
            contact.did,
            relay_only=args.relay_only,
            direct=direct,
            label=contact.alias,
            on_event=_path_event(args),
        )
        board = StatusBoard(store.home, "connect")
        try:
            await _chat(
                args,
                mediated.session,
                contact.alias,
                board,
                snapshot=_mediated_snapshot(mediated, "connect", time.time()),
            )
        finally:
            await mediated.aclose()

    asyncio.run(main())
    return 0


def _envelope_with(envelope: Any, ident: Any) -> Any:
    from didsession.peer import envelope_for

    return envelope_for(ident, envelope)


async def _serve_mediated(
    args: argparse.Namespace,
    store: Any,
    ident: Any,
    allowed: set[str],
    aliases: dict[str, str],
    board: StatusBoard,
    done: asyncio.Event,
) -> None:
    """``listen``'s second door: session requests through the identity's mediator."""
    from didsession.direct import DirectPaths
    from didsession.envelope import Envelope
    from didsession.rendezvous import serve_via_mediator

    envelope = _envelope_with(Envelope(_resolver(store)), ident)

    async def on_session(mediated: Any) -> None:
        try:
            await _chat(
                args,
                mediated.session,
                aliases.get(mediated.session.peer_did),
                board,
                snapshot=_mediated_snapshot(mediated, "listen", time.time()),
            )
        finally:
            await mediated.aclose()
            if args.once:
                done.set()

    def on_error(exc: Exception) -> None:
        msg = exc.message if isinstance(exc, DidSessionError) else f"{type(exc).__name__}: {exc}"
        _emit(args, "refused", f"refused a session: {msg}", error=msg)

    def on_ready(info: Any) -> None:
        _emit(
            args,
            "listening",
            f"taking session requests through the mediator {info.endpoint}"
            + (" (relay only)" if args.relay_only else ""),
            mediator=info.endpoint,
        )

    try:
        await serve_via_mediator(
            ident,
            envelope,
            on_session,
            accept_peer=allowed,
            relay_only=args.relay_only,
            direct=None if args.relay_only else DirectPaths(ident.mediator, stun=args.stun),
            on_error=on_error,
            on_ready=on_ready,
            on_event=_path_event(args),
        )
    except DidSessionError as exc:
        _emit(args, "error", f"mediator: {exc.message}", error=exc.message, code=exc.code)


def cmd_connect(args: argparse.Namespace) -> int:
    from didsession.envelope import Envelope
    from didsession.peer import connect

    store = _store(args)
    ident = _load(args)
    contact = store.find_contact(args.contact)
    if not args.to:
        return _connect_via_mediator(args, store, ident, contact)
    if args.relay_only:
        raise ConfigError("--relay-only is for sessions through the mediator: drop --to")
    host, port = _parse_hostport(args.to)

    async def main() -> None:
        try:
            session = await connect(
                ident, contact.did, host, port, envelope=Envelope(_resolver(store))
            )
        except OSError as exc:
            raise ConfigError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(
                f"no session with {contact.alias!r} at {host}:{port}: {exc.message} "
                "(is it the right address, and has that party accepted your invitation?)",
                code=exc.code,
            ) from None
        await _chat(args, session, contact.alias, StatusBoard(store.home, "connect"))

    asyncio.run(main())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from didsession.status import read_statuses, render_table

    store = _store(args)

    def warn(line: str) -> None:
        print(f"didsession: warning: {line}", file=sys.stderr)

    statuses = read_statuses(store.home, warn=warn)
    if args.identity:
        did = store.load(args.identity, unlock=False).did
        statuses = [s for s in statuses if s.local_did == did]
    names: dict[str, str] = {}
    try:
        resolver = PeerResolver()
        for c in store.contacts():
            names[c.did] = c.alias
            names[resolver.short_form(c.did) or c.did] = c.alias  # a peer may use either form
    except DidSessionError as exc:
        warn(f"contact names unavailable: {exc.message}")
    if args.json:
        _print_json([dict(s.to_json(), peer_contact=names.get(s.peer_did)) for s in statuses])
    elif not statuses:
        print(f"no sessions running in {store.home}")
    else:
        print(render_table(statuses, names=names))
    return 0


def cmd_candidates(args: argparse.Namespace) -> int:
    from didsession.candidates import MappingBehavior, gather, reusable_tcp_socket

    stun = None
    if args.stun:
        try:
            stun = _parse_hostport(args.stun)
        except ConfigError:
            raise ConfigError(
                f"--stun must be HOST:PORT of a STUN server (e.g. 203.0.113.10:3478), "
                f"got {args.stun!r}"
            ) from None
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    try:  # held while gathering, so that port 0 means one port for every STUN test
        holder = reusable_tcp_socket(args.port)
    except OSError as exc:
        raise ConfigError(f"cannot use TCP port {args.port}: {exc.strerror or exc}") from None
    with holder:
        port = holder.getsockname()[1]
        found = asyncio.run(gather(tcp_port=port, stun=stun))
    if args.json:
        _print_json(found.to_json())
        return 0
    print(f"candidates for TCP port {port} (highest priority first):")
    for c in found.candidates:
        address = f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}"
        print(f"  {c.type.value:<6} {c.proto} {address:<24} priority {c.priority}")
    if stun is None:
        print("NAT mapping: unknown (give --stun HOST:PORT, e.g. your mediator's STUN server)")
    else:
        print(f"NAT mapping: UDP {found.mapping.value}, TCP {found.tcp_mapping.value}")
        if found.tcp_mapping is MappingBehavior.ENDPOINT_INDEPENDENT:
            print("  a peer behind a cone NAT can reach this host by TCP simultaneous open")
        elif found.tcp_mapping is MappingBehavior.ADDRESS_DEPENDENT:
            print("  symmetric NAT: direct TCP only with peers on this LAN or with no NAT")
    for problem in found.problems:
        print(f"problem: {problem}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from didsession.demo import run_demo

    return run_demo(keep=args.keep, verbose=args.verbose, as_json=args.json)


# -- parser -----------------------------------------------------------------------------


def cmd_roster(args: argparse.Namespace) -> int:
    """``roster make`` / ``roster show``: the MPyC roster (mpyc_adapter/roster.py)."""
    from mpyc_adapter.roster import describe, load_roster, roster_from_invitations

    if args.roster_command == "make":
        roster = roster_from_invitations(
            args.invitations,
            addrs=args.addr or (),
            mediator=args.mediator,
            relay_only=args.relay_only,
        )
        roster.save(args.output)
        if args.json:
            _print_json(dict(roster.to_json(), fingerprint=roster.fingerprint, file=args.output))
        else:
            print(
                f"wrote {args.output}: {len(roster)} parties, fingerprint {roster.fingerprint[:16]}"
            )
        return 0
    roster = load_roster(args.roster)
    if args.json:
        _print_json(dict(roster.to_json(), fingerprint=roster.fingerprint))
    else:
        print(describe(roster))
    return 0


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

    # For commands that use no identity (the demo makes its own).
    plain = argparse.ArgumentParser(add_help=False)
    plain.add_argument("--json", action="store_true", help="machine-readable output")
    plain.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")

    def add(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_: str,
        desc: str = "",
        parents: tuple[argparse.ArgumentParser, ...] = (common,),
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=list(parents), help=help_, description=desc or help_)
        p.set_defaults(func=func)
        return p

    p = add(
        "init",
        cmd_init,
        "create an identity (Ed25519 + X25519 keys and a peer DID)",
        "Create a named identity: an Ed25519 authentication key, an X25519 keyAgreement key "
        "and the did:peer:2 (or did:peer:4) that carries them.  With --mediator URL (the "
        "mediator's base or invitation URL) it asks that mediator for mediation (Coordinate "
        "Mediation 2.0) and your DID routes through it, so others reach you while you are "
        "offline or behind NAT.",
    )
    p.add_argument("--name", default="default", help="identity name (default: %(default)s)")
    p.add_argument("--mediator", metavar="URL_OR_DID", help="where others reach you")
    p.add_argument("--method", choices=["peer2", "peer4"], default="peer2", help="DID method")
    p.add_argument("--encrypt", action="store_true", help="protect the keys with a passphrase")
    p.add_argument(
        "--no-mediation",
        action="store_true",
        help="only write --mediator into the DID document; do not contact it",
    )

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
    p.add_argument(
        "--to", required=True, metavar="DID|CONTACT", help="recipient: a contact alias or a DID"
    )
    p.add_argument("--anon", action="store_true", help="anoncrypt: do not reveal the sender")
    p.add_argument("--no-forward", action="store_true", help="no forward wrapping")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE instead of stdout (with --json: the JSON)",
    )

    p = add(
        "listen",
        cmd_listen,
        "accept sessions from contacts and exchange lines typed on stdin",
        "Listen for a session from a contact (any contact, or only --peer ones).  Each "
        "session shows the peer's DID, the session id, the cipher suite and the path; then "
        "lines typed on stdin go to the peer and the peer's lines are printed.  A peer whose "
        "authenticated DID is not an accepted contact is refused.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=int, default=7800, help="TCP port, 0 for any (default: %(default)s)"
    )
    p.add_argument(
        "--peer", action="append", metavar="CONTACT", help="accept only this contact (repeatable)"
    )
    p.add_argument("--once", action="store_true", help="exit after the first session ends")
    p.add_argument(
        "--no-mediator",
        action="store_true",
        help="only TCP: do not take session requests from this identity's mediator",
    )
    p.add_argument(
        "--relay-only",
        action="store_true",
        help="sessions through the mediator stay on its relay; no address candidates",
    )
    p.add_argument(
        "--stun", metavar="HOST:PORT", help="STUN server for candidates (default: the mediator's)"
    )

    p = add(
        "connect",
        cmd_connect,
        "open a session with a contact and exchange lines typed on stdin",
        "Open a session with CONTACT: a DIDComm authcrypt handshake (one round trip) sets "
        "up symmetric keys; then every line is one AEAD frame.  Refused if the DID that "
        "answers is not CONTACT's.\n\n"
        "With --to HOST:PORT the session runs over a TCP connection to that address.  "
        "Without it, everything goes through the mediators (for parties behind NAT): the "
        "handshake as DIDComm messages via the mediator, carrying both sides' address "
        "candidates; the session starts on the mediator's relay at once and moves to a "
        "direct TCP path (hole punching through cone NATs) as soon as one is verified, "
        "falling back to the relay if it dies, without losing a line.  --relay-only sends "
        "no candidates, so the peer never learns your IP address.  'didsession status' "
        "shows which path a session is on.",
    )
    p.add_argument("contact", metavar="CONTACT", help="contact alias or DID")
    p.add_argument("--to", metavar="HOST:PORT", help="the peer's listening address")
    p.add_argument(
        "--relay-only",
        action="store_true",
        help="through the mediator: stay on its relay, send no address candidates",
    )
    p.add_argument(
        "--stun", metavar="HOST:PORT", help="STUN server for candidates (default: the mediator's)"
    )

    p = add(
        "status",
        cmd_status,
        "show what every running session of this home is doing",
        "Show the sessions that processes using this home run right now ('listen',\n"
        "'connect', MPyC parties).  Each keeps one status file per session in\n"
        "HOME/run/sessions/ (mode 0600), rewritten about every second while traffic\n"
        "flows and at least every 2 s.  Sessions of processes that are gone are not\n"
        "shown (their files are deleted); a closed session stays 10 s.\n\n"
        "columns:\n"
        "  PEER      the peer's contact name, else the start of its DID\n"
        "  PROGRAM   the command running the session, and its process id\n"
        "  STATE     open, closed or error\n"
        "  PATH      direct (TCP) or relay (the mediator's relay): local -> remote address\n"
        "  RTT       round-trip time of that path, once measured\n"
        "  SENT      session bytes sent: frames with header and tag, handshake excluded\n"
        "  RECEIVED  session bytes received, counted the same way\n"
        "  REKEYS    key updates so far, both directions\n"
        "  UPG/FB    upgrades to a better path / fallbacks after a path failed\n"
        "  AGE       time since the session opened\n\n"
        "--json prints a JSON list of the statuses with every field (and peer_contact).",
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter

    p = add(
        "candidates",
        cmd_candidates,
        "show the direct-path candidates this host would advertise, and its NAT's behaviour",
        "Gather what a session would offer a peer for a direct TCP path: a host candidate per "
        "address of this machine and, with --stun, the server-reflexive address the NAT gives "
        "the port, plus the NAT's mapping behaviour (RFC 5780 tests against the STUN server "
        "and its OTHER-ADDRESS).  Endpoint-independent mapping (a cone NAT) lets two parties "
        "connect directly by TCP simultaneous open; address-dependent (symmetric) does not.",
    )
    p.add_argument("--stun", metavar="HOST:PORT", help="STUN server, e.g. the mediator's")
    p.add_argument(
        "--port", type=int, default=0, help="TCP port to gather for (default: any free one)"
    )

    p = add(
        "demo",
        cmd_demo,
        "run the end-to-end demo in throw-away homes",
        "Three parties create identities and invitations (one scanned from its QR code), "
        "build a roster, and run a real MPyC computation (sum, maximum, secret santa) in "
        "three processes, every link a session, direct or through an embedded mediator's "
        "relay; then a party running another program is refused.  Every step is this CLI "
        "or an unmodified MPyC program, run for real.  With --json the progress goes to "
        "stderr and stdout gets a summary: results, each link's counters, overhead.",
        parents=(plain,),
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's homes afterwards")
    p.add_argument("--verbose", action="store_true", help="print long outputs whole")

    p = add(
        "roster",
        cmd_roster,
        "make or show an MPyC roster (the parties' DIDs in party order)",
        "A roster lists the DIDs of an MPyC computation's parties in party order; every "
        "party runs its program with '--didcomm roster.json'.",
        parents=(),
    )
    rsub = p.add_subparsers(dest="roster_command", metavar="ACTION", required=True)
    rp = rsub.add_parser(
        "make",
        parents=[plain],
        help="build a roster from the parties' invitations, in party order",
        description="Build a roster from invitations (URLs, JSON or files; - for stdin), "
        "one per party, in party order.",
    )
    rp.add_argument(
        "invitations",
        nargs="+",
        metavar="INVITATION",
        help="invitation URL, JSON, file holding either, or - for stdin",
    )
    rp.add_argument("-o", "--output", required=True, metavar="FILE", help="roster file")
    rp.add_argument(
        "--addr",
        action="append",
        metavar="HOST:PORT",
        help="where each party listens for direct sessions, in party order (repeatable)",
    )
    rp.add_argument("--mediator", metavar="URL_OR_DID", help="mediator whose relay to use")
    rp.add_argument("--relay-only", action="store_true", help="carry every link via the relay")
    rp = rsub.add_parser(
        "show",
        parents=[plain],
        help="show a roster",
        description="Show a roster: each party's id, DID, label and how the others reach "
        "it, the mediator, and the fingerprint.  Every party must run with the same roster "
        "(same fingerprint), or the parties refuse to compute together.",
    )
    rp.add_argument("roster", metavar="FILE", help="roster file made by 'roster make'")

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
