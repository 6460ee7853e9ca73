"""Sessions between parties that cannot reach each other: everything through the mediator.

The session handshake travels as DIDComm messages through the mediator (spec/session.md
§4.4: the ``request`` forwarded to the responder's mailbox, the ``accept`` to the
initiator's, both picked up live), carrying each side's address candidates unless it is
relay-only.  The established session then runs over the mediator's relay at once, as a
:class:`~didsession.session.multipath_asyncio.MultipathTransport` that upgrades to a direct
TCP path when one is verified and falls back to the relay when it dies
(:mod:`didsession.direct`).  The relay only ever sees sealed frames.

* :func:`connect_via_mediator`: the initiator (``didsession connect NAME`` without
  ``--to``);
* :func:`serve_via_mediator`: the responder (``didsession listen`` of an identity with a
  mediator): picks requests up live and runs each accepted session.

The initiator's mailbox keeps what arrived while nobody listened, and a connect picks that
backlog up first: the late ``accept`` or ``problem-report`` of an earlier attempt (one that
timed out), a ``close`` of an older session, another protocol's message.  Only an answer in
the thread of this attempt's ``request`` (its ``thid``, spec §3.3, §3.5) is handed to the
handshake; the rest is logged at debug level and skipped (:func:`_stale`).

The responder's mailbox keeps what arrived while nobody listened too: the ``request`` of an
initiator that has since given up, or retried.  Answering it would open a relay slot that
waits :data:`RELAY_WAIT` for nobody (a DID holds few), and report an error when it expires.
So the responder turns live delivery on, takes that backlog at once and skips (debug log)
each request that is stale by what its authenticated sender wrote in it
(:func:`_stale_requests`): one created more than :data:`REQUEST_MAX_AGE` ago, or one
superseded by a later request of the same peer in the backlog.  A request pushed while it
listens is answered as it comes: its initiator sent it just now, whatever its clock says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from didsession.direct import DirectPaths
from didsession.envelope import Envelope, Unpacked
from didsession.errors import ConfigError, DidSessionError, RemoteProtocolError
from didsession.identity import Identity
from didsession.mediation import (
    MediatorClient,
    MediatorInfo,
    mediator_info,
    open_relay,
    send_packed,
)
from didsession.relay_transport import RelayPath
from didsession.session import (
    PROTOCOL_URI,
    Channel,
    Event,
    Handshake,
    MessageType,
    Role,
    SessionRefused,
    pull_message,
)
from didsession.session.handshake import Accept, ProblemReport, Request
from didsession.session.multipath import PathKind
from didsession.session.multipath_asyncio import (
    MultipathTransport,
    PathProtocol,
    multipath_for,
)
from didsession.session.stream import Session
from didsession.untrusted import parse_json

__all__ = ["MediatedSession", "connect_via_mediator", "serve_via_mediator"]

log = logging.getLogger("didsession.paths")

HANDSHAKE_TIMEOUT = 30.0
RELAY_WAIT = 30.0
# A request that waited in the responder's mailbox longer than this, by its own
# created_time (spec §3.1), is from an initiator that gave up: it waits HANDSHAKE_TIMEOUT
# (§4.3).  CLOCK_SKEW is for the two parties' clocks, which need not agree, and is
# generous: a request skipped wrongly costs a waiting initiator its attempt, one answered
# wrongly only a relay slot for RELAY_WAIT.
CLOCK_SKEW = 90.0
REQUEST_MAX_AGE = HANDSHAKE_TIMEOUT + CLOCK_SKEW


class MediatedSession:
    """An established session on the relay (and later direct paths): the stream
    :class:`Session` to use, and its multipath transport (paths, RTT, for status)."""

    def __init__(self, session: Session, transport: MultipathTransport, relay_only: bool):
        self.session = session
        self.transport = transport
        self.relay_only = relay_only

    async def aclose(self) -> None:
        """Close the session and wait until its paths are closed."""
        self.session.close()
        self.transport.close()
        await self.transport.wait_closed()


def _mediator_of(identity: Identity) -> str:
    if not identity.mediator:
        raise ConfigError(
            f"identity {identity.name!r} has no mediator: give the peer's address with "
            "--to HOST:PORT, or create an identity with 'didsession init --mediator URL'"
        )
    return identity.mediator


async def _on_relay(
    identity: Identity,
    envelope: Envelope,
    info: MediatorInfo,
    channel: Channel,
    peer_candidates: Any,
    direct: DirectPaths | None,
    label: str,
    relay_only: bool,
    on_event: Callable[[MultipathTransport, Event], None] | None,
) -> MediatedSession:
    """Open the relay for the session, run the session over multipath on it."""
    loop = asyncio.get_running_loop()
    stack = contextlib.AsyncExitStack()
    try:
        link = await stack.enter_async_context(
            open_relay(
                info,
                identity.did,
                channel.session_id.hex(),
                channel.peer_did,
                envelope=envelope,
                wait=RELAY_WAIT,
            )
        )
    except BaseException:
        await stack.aclose()
        raise
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    mpt = MultipathTransport(multipath_for(channel, now=loop.time()), protocol, label=label)
    if on_event is not None:
        mpt.on_event = lambda event: on_event(mpt, event)
    protocol.connection_made(mpt)
    writer = asyncio.StreamWriter(mpt, protocol, reader, loop)
    relay = RelayPath(link, PathProtocol(), stack)
    mpt.add_path(PathKind.RELAY, relay, local="relay", remote=info.relay_url)
    if direct is not None and not relay_only:
        direct.attach(mpt, channel, peer_candidates)
    return MediatedSession(Session(reader, writer, channel), mpt, relay_only)


async def connect_via_mediator(
    identity: Identity,
    envelope: Envelope,
    peer_did: str,
    *,
    relay_only: bool = False,
    direct: DirectPaths | None = None,
    label: str | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    on_event: Callable[[MultipathTransport, Event], None] | None = None,
) -> MediatedSession:
    """A session with ``peer_did`` through the mediators (see the module docstring).

    Raises:
        ConfigError: this identity has no mediator.
        RemoteProtocolError: refused, no answer within ``timeout``, or the handshake broke.
        MediationError: the mediator or the relay failed.
    """
    info = await mediator_info(_mediator_of(identity), resolver_envelope=envelope)
    if direct is None and not relay_only:
        direct = DirectPaths(info.endpoint)
    cands = None if relay_only or direct is None else await direct.candidates()
    assert identity.x25519_secret is not None
    hs = Handshake(
        Role.INITIATOR,
        local_did=identity.did,
        static_private=identity.x25519_secret,
        peer_static_key=envelope.resolver.x25519_public,
        peer_did=peer_did,
        candidates=cands,
    )
    async with MediatorClient(info, identity.did, envelope, transport="ws") as client:
        live = client.live()
        out = hs.initiate(time.time())
        request_id = pull_message(out.plaintext).id
        packed = await envelope.pack_plaintext(out.plaintext, to=out.to, frm=identity.did)
        await send_packed(packed)
        try:
            async with asyncio.timeout(timeout):
                async for received in live:
                    msg = received.message
                    if msg.sender_did != peer_did:
                        log.warning(f"didsession: ignored a message from {msg.sender_did}")
                        continue
                    stale = _stale(msg.plaintext, request_id)
                    if stale is not None:
                        log.debug(f"didsession: ignored {stale} from {peer_did[:48]}")
                        continue
                    events = hs.receive_message(msg.plaintext, msg.sender_did, time.time())
                    for event in events:
                        if isinstance(event, SessionRefused):
                            raise RemoteProtocolError(
                                f"the peer refused the session: {event.comment}", code=event.code
                            )
                    break
        except TimeoutError:
            raise RemoteProtocolError(
                f"no answer to the session request within {timeout:g} s (is the peer "
                "listening, and has it accepted your invitation?)",
                code="e.p.msg.session.timeout",
            ) from None
        finally:
            await live.aclose()  # type: ignore[attr-defined]
    return await _on_relay(
        identity,
        envelope,
        info,
        hs.channel,
        hs.peer_candidates,
        direct,
        label or peer_did[:24],
        relay_only,
        on_event,
    )


async def serve_via_mediator(
    identity: Identity,
    envelope: Envelope,
    on_session: Callable[[MediatedSession], Awaitable[None]],
    *,
    accept_peer: Collection[str],
    relay_only: bool = False,
    direct: DirectPaths | None = None,
    on_error: Callable[[Exception], None] | None = None,
    on_ready: Callable[[MediatorInfo], None] | None = None,
    on_event: Callable[[MultipathTransport, Event], None] | None = None,
) -> None:
    """Answer session requests that arrive in this identity's mailbox, forever.

    Each accepted request becomes a session on the relay (upgrading to a direct path when
    it can) handed to ``on_session``; a refused one gets a problem-report through the
    mediator and ``on_error`` hears about it.  A request that waited in the mailbox and
    is stale (too old, or followed by a later one of the same peer: see
    :func:`_stale_requests`) gets no answer at all (spec §4.3, §11.5).
    """
    info = await mediator_info(_mediator_of(identity), resolver_envelope=envelope)
    if direct is None and not relay_only:
        direct = DirectPaths(info.endpoint)
    if direct is not None and not relay_only:
        await direct.candidates()  # gather before the first request, not during it
    tasks: set[asyncio.Task[None]] = set()
    static_private = identity.x25519_secret
    assert static_private is not None

    async def run(hs: Handshake, label: str) -> None:
        try:
            mediated = await _on_relay(
                identity,
                envelope,
                info,
                hs.channel,
                hs.peer_candidates,
                direct,
                label,
                relay_only,
                on_event,
            )
        except DidSessionError as exc:
            if on_error is not None:
                on_error(exc)
            return
        await on_session(mediated)

    async def answer(msg: Unpacked) -> None:
        if _message_type(msg.plaintext) != MessageType.REQUEST or msg.sender_did is None:
            return
        cands = None if relay_only or direct is None else await direct.candidates()
        hs = Handshake(
            Role.RESPONDER,
            local_did=identity.did,
            static_private=static_private,
            peer_static_key=envelope.resolver.x25519_public,
            accept_peer=accept_peer,
            candidates=cands,
        )
        try:
            hs.receive_message(msg.plaintext, msg.sender_did, time.time())
        except DidSessionError as exc:
            if on_error is not None:
                on_error(exc)
            return
        finally:
            for reply in hs.messages_to_send():
                with contextlib.suppress(DidSessionError):
                    packed = await envelope.pack_plaintext(
                        reply.plaintext, to=reply.to, frm=identity.did
                    )
                    await send_packed(packed)
        task = asyncio.create_task(run(hs, msg.sender_did[:24]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async with MediatorClient(info, identity.did, envelope, transport="ws") as client:
        # Live delivery first, so nothing that arrives during the pickup is missed (a
        # message both pushed and picked up is yielded once); then the backlog, whole,
        # because whether a request is superseded depends on what follows it.
        await client.set_live(True)
        if on_ready is not None:
            on_ready(info)
        backlog = await client.pickup_all()
        stale = _stale_requests(
            [(r.message.plaintext, r.message.sender_did) for r in backlog],
            identity.did,
            time.time(),
        )
        for received, why in zip(backlog, stale, strict=True):
            if why is not None:
                sender = str(received.message.sender_did)[:48]
                log.debug(f"didsession: did not answer {why} from {sender}")
                continue
            await answer(received.message)
        async for received in client.live(catch_up=False):
            await answer(received.message)


def _message_type(plaintext: bytes) -> str | None:
    try:
        doc = parse_json(plaintext)
    except ValueError:
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else None


def _stale(plaintext: bytes, request_id: str) -> str | None:
    """What a message from the peer is, if it is no answer to our ``request`` ``request_id``
    (the initiator skips it then); ``None`` if the handshake should have it.

    An answer is an ``accept`` or ``problem-report`` whose ``thid`` is the request's id
    (spec §3.3, §3.5).  A message of this protocol that does not parse is handed on too, and
    so is a plaintext that is not even JSON: the handshake rejects them (a broken peer, not a
    late one).  Other messages of this protocol, answers in other threads and other
    protocols' messages are stale.
    """
    kind = _message_type(plaintext)
    if kind is not None and not kind.startswith(PROTOCOL_URI):
        return f"a message of another protocol ({kind[:80]!r})"
    try:
        msg = pull_message(plaintext)
    except RemoteProtocolError:
        return None
    name = str(kind).removeprefix(PROTOCOL_URI)
    if not isinstance(msg, Accept | ProblemReport):
        return f"a {name!r} message"
    if msg.thid != request_id:
        return f"a {name!r} for another request (thid {msg.thid[:40]!r})"
    return None


def _stale_requests(
    backlog: Sequence[tuple[bytes, str | None]], local_did: str, now: float
) -> list[str | None]:
    """Which ``request`` messages of the responder's backlog not to answer: for each
    message, what it is if it is one, else ``None``.

    Only what the requests' authenticated senders wrote counts: a ``request`` is weighed
    only if its ``from`` is the DID the envelope authenticated and its ``to`` is
    ``local_did`` (spec §3.1 rule 4); any other message gets ``None`` and is left to the
    handshake, which rejects it as before.  Such a request is stale if

    * it was created (its ``created_time``, the initiator's clock) more than
      :data:`REQUEST_MAX_AGE` before ``now``: its initiator stopped waiting (§4.3), or it
      is a replay (authcrypt has no freshness, §11.1, §11.5);
    * a later request of the same peer is in the backlog (created later, or in the same
      second and queued later): an initiator waits for the answer to its latest request.
      This compares the peer's clock with itself, so skew does not matter, and a replayed
      request cannot supersede a newer one.  The same request twice counts once.
    """
    requests: list[Request | None] = []
    latest: dict[str, tuple[int, int]] = {}  # peer DID -> (created_time, index)
    for index, (plaintext, sender) in enumerate(backlog):
        req = None
        if _message_type(plaintext) == MessageType.REQUEST:
            with contextlib.suppress(RemoteProtocolError):
                msg = pull_message(plaintext)
                if isinstance(msg, Request) and msg.sender == sender and msg.recipient == local_did:
                    req = msg
        requests.append(req)
        if req is not None and req.created_time >= latest.get(req.sender, (-1, -1))[0]:
            latest[req.sender] = (req.created_time, index)
    out: list[str | None] = []
    for index, req in enumerate(requests):
        if req is None:
            out.append(None)
        elif now - req.created_time > REQUEST_MAX_AGE:
            out.append(f"a request created {now - req.created_time:.0f} s ago")
        elif latest[req.sender][1] != index:
            out.append("a request superseded by a later one")
        else:
            out.append(None)
    return out
