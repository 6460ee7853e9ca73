"""MPyC's peer links, made by sessions: what replaces ``create_server``/``create_connection``.

MPyC 0.11's ``Runtime.start()`` listens with ``loop.create_server`` (party i, for the
parties below it) and connects with ``loop.create_connection`` (to the parties above it),
retrying every 0.1 s.  While ``start()`` runs, :meth:`DidcommNetwork.installed` puts two
coroutines with the same signatures on the event loop instance; everything else in
``start()`` and ``shutdown()`` (MPyC's retry, its party-id and PRSS-key exchange, its
shutdown barrier) runs unchanged, over :class:`~mpyc_adapter.transport.SessionTransport`.

For each link (lower party connects to higher party):

1. the path (:mod:`mpyc_adapter.paths`): a TCP connection, or the mediator's relay;
2. the session handshake on it (spec/session.md §4.4), authcrypt from this party's DID.
   The connecting side names the roster DID of the party it wants; the accepting side
   accepts only the DIDs of the parties below it;
3. program agreement (:mod:`mpyc_adapter.agreement`): each side sends its record, checks
   the peer's (same program, and the party id it states is its DID's roster index);
4. MPyC's ``MessageExchanger`` is attached.  The accepting side checks that the 2-byte
   party id MPyC's client sends equals the roster index of the authenticated DID.

Errors: a connection that fails or a handshake that breaks off is retried (by MPyC's own
loop on the connecting side), with a warning.  A refusal by a roster party, a program
mismatch, a wrong party id, or a link failing while the computation runs stops this party:
one line on stderr (``didsession: error: …``), ``CLOSE`` with a reason to every peer, exit
status 1.  A party that stops while links are still being set up first tells the parties
it has no session with yet (:meth:`DidcommNetwork.stop`), so a mismatch stops every party.
The reason travels as the close code (``e.p.mpyc.program.p2:L,args``: party 2 differs in
``-L`` and the arguments), so every party's message says what differs.  Sessions from DIDs
outside the roster are refused and logged; they never stop the party (an outsider must
not be able to end a computation).  Nor does a link that ends before the peer sent one
frame under the session's keys (``SessionTransport.peer_proven``): a session request
recorded in an earlier run and replayed authenticates as the roster party, but nobody can
compute its keys (spec/session.md §11.5), so such a link is dropped with a warning and
the party goes on waiting (accepting side) or MPyC connects again (connecting side).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from didsession.errors import (
    DidSessionError,
    EnvelopeError,
    FrameError,
    ProtocolError,
    RemoteProtocolError,
)
from didsession.peer import HandshakeCodec
from didsession.session import PROTOCOL_VERSION, Handshake, Role, SessionConfig
from didsession.tcp_liveness import gone, keep_alive, silence
from mpyc_adapter.agreement import (
    KEY_NAMES,
    AgreementError,
    Program,
    differences,
    script_digest,
)
from mpyc_adapter.party import PartyPlan
from mpyc_adapter.paths import (
    RELAY_RECORD_LIMIT,
    PathKind,
    bind_host,
    choose_path,
    open_relay_path,
    relay_session_id,
)
from mpyc_adapter.roster import format_addr, short_did
from mpyc_adapter.transport import (
    DEFAULT_EAGER_BYTES,
    DEFAULT_MAX_BATCH,
    DEFAULT_RECORD_LIMIT,
    SILENT,
    LinkState,
    SessionTransport,
    silent,
)

__all__ = ["REPORT_ENV", "DidcommNetwork"]

log = logging.getLogger("didsession.mpyc")

# If set, each party appends one JSON line per link to this file at every shutdown.
REPORT_ENV = "DIDSESSION_MPYC_REPORT"
# Override the transport's coalescing (for measurements): the largest batch of MPyC writes
# per record, and the size from which a write is sealed at once (bytes; "0": no coalescing).
BATCH_ENV = "DIDSESSION_MPYC_BATCH"
EAGER_ENV = "DIDSESSION_MPYC_EAGER"
HANDSHAKE_TIMEOUT = 30.0
# An accepted connection must bring its session request this soon (a party sends it right
# after connecting).
REQUEST_TIMEOUT = 10.0
# Handshake items on MPyC links: a request or accept is ~2 KB (its DIDs, keys, candidates).
MAX_HANDSHAKE_ITEM = 32 << 10
# Accepted connections not yet handed to MPyC (handshake or agreement running), in all and
# from one address: beyond these a connection is closed at once.  Honest parties have one
# each (a retry may briefly make two); they connect again when closed.
MAX_PENDING = 64
MAX_PENDING_PER_HOST = 16
# Distinct warnings about refused or failed incoming sessions: outsiders choose how many
# there are, so the log gets this many and then one line saying the rest are not shown.
MAX_REFUSAL_WARNINGS = 100
# How long a direct TCP connect may take before the relay is tried (if there is one).
CONNECT_TIMEOUT = 3.0
# A refused connection is tried again every REFUSED_POLL s for up to REFUSED_PATIENCE s
# before MPyC hears of it (MPyC then retries every 0.1 s, as it always does).
REFUSED_POLL = 0.005
REFUSED_PATIENCE = 1.0
# After this long without reaching a party directly, say once that we wait for it; after
# this long without some party's link (any side, any path), say which, and again every
# WAIT_REPEAT seconds (plain MPyC waits silently).
WAIT_NOTICE = 10.0
WAIT_REPEAT = 60.0
# How long a party that stops during start() goes on telling the others why.
STOP_GRACE = 2.0
RELAY_WAIT = 60.0
# Links appear in ``didsession status`` once this party has computed for this long: a
# short run does not pay for the status files (nor delay its start writing them).
STATUS_AFTER = 1.0
# Set to "0" to keep links that start on the relay there (no candidates, no direct paths).
DIRECT_ENV = "DIDSESSION_MPYC_DIRECT"
# How long a link that started on the relay tries its peer's candidates for a direct path.
DIAL_TIMEOUT = 10.0
# Why a party left with its links open (``_at_exit``): ``e.p.mpyc.<why>.p<party>``, and
# how its peers say it.
_LEFT_PHRASES = {
    "interrupted": "was interrupted (Ctrl-C)",
    "terminated": "was stopped by SIGTERM",
    "hangup": "was stopped by SIGHUP (its terminal closed?)",
    "crashed": "stopped on an error (its own output says which)",
    "exited": "exited before mpc.shutdown()",
    "lost": "stopped answering (its machine is off, asleep or off the network?)",
    "failed": "",  # e.p.mpyc.failed.pN: the session with party N failed (see _peer_stopped)
}
_SIGNAL_REASONS: dict[int, str] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hangup",
}
# The signals watch_signals takes, with the disposition it takes them from.
_WATCHED = (
    (signal.SIGINT, signal.default_int_handler),
    (signal.SIGTERM, signal.SIG_DFL),
    (signal.SIGHUP, signal.SIG_DFL),
)
# How long a stopping party reads on at most (its links half-closed), until its peers have
# read its CLOSE and closed: closing a socket with unread data resets the connection, and
# a busy peer may then lose the CLOSE.
LEAVE_GRACE = 2.0
# Refusals a retry cannot fix (spec/session.md §10): stop instead of retrying forever.
_FATAL_REFUSALS = ("e.p.msg.session.unauthorized", "e.p.mpyc")


class _Agreement(Enum):
    """How a program agreement ended."""

    AGREED = "agreed"
    STOPPING = "stopping"  # a mismatch, or a proven peer failed: this party stops
    UNPROVEN = "unproven"  # the link ended before the peer proved it holds the keys


class _Server:
    """What ``create_server`` returns to MPyC: ``close()`` stops listening and stops
    waiting for relayed peers."""

    def __init__(self, listener: asyncio.AbstractServer | None, tasks: set[asyncio.Task[None]]):
        self._listener = listener
        self._tasks = tasks

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._listener is not None:
            await self._listener.wait_closed()


def _left(code: str) -> tuple[str, int] | None:
    """(why, party) from the close code of a party that left (see ``_at_exit``)."""
    head, _, who = code.rpartition(".p")
    why = head.removeprefix("e.p.mpyc.")
    if why in _LEFT_PHRASES and head != why and who.isdigit():
        return why, int(who)
    return None


def _stranger_hint(link: SessionTransport, exc: DidSessionError, host: Any, port: Any) -> str:
    """For a handshake that failed on a direct path: a hint that something other than the
    party may listen at its address (what a person would check first)."""
    if link.path_info.get("path") != "direct":
        return ""
    if isinstance(exc, (FrameError, EnvelopeError)):
        return (
            f" (what answers at {host}:{port} does not speak the session protocol: "
            "is another program using that address?)"
        )
    if exc.code == "e.p.msg.session.timeout":
        return f" (is a didsession party listening at {host}:{port}?)"
    return ""


class DidcommNetwork:
    """The links of one MPyC runtime, carried by sessions.

    Args:
        plan: roster, party id, identity.
        runtime: MPyC's runtime (``mpyc.runtime.mpc``).
    """

    def __init__(self, plan: PartyPlan, runtime: Any) -> None:
        self.plan = plan
        self.rt = runtime
        self.roster = plan.roster
        self.pid = plan.pid
        self.identity = plan.identity
        self.codec = HandshakeCodec(plan.identity)
        self._pack, self._unpack = self.codec.pack, self.codec.unpack
        self.program = self._program()
        self.links: dict[int, SessionTransport] = {}
        self.round = 0
        self._via_relay: set[int] = set()  # peers whose direct address did not answer
        # Links to higher parties being prepared while MPyC connects to a lower one.
        self._ahead: dict[int, asyncio.Task[SessionTransport]] = {}
        self._ahead_started = False
        self._warned: set[tuple[int, str]] = set()
        self._unreached: dict[int, float] = {}  # peer -> when a direct connect first failed
        self._noticed: set[int] = set()  # peers _waiting already said we wait for
        self._refusals: set[str] = set()
        self._pending: dict[str, int] = {}  # accepted, not yet with MPyC: per remote host
        self._stopping = False
        self._stop_code = "e.p.mpyc.stopped"
        self._starting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._orig_create_connection: Callable[..., Any] | None = None
        self._orig_create_server: Callable[..., Any] | None = None
        self.started_at = 0.0
        self._direct: Any = None  # the NatPaths of this party, once a relay link needs them
        self._board: Any = None
        self._no_board = False
        self._board_timer: asyncio.TimerHandle | None = None
        self.max_batch = int(os.environ.get(BATCH_ENV) or DEFAULT_MAX_BATCH)
        self.eager_bytes = int(os.environ.get(EAGER_ENV) or DEFAULT_EAGER_BYTES)
        self._signals: dict[int, Any] = {}  # watch_signals: signal -> previous handler
        self._signal: int | None = None  # the signal that stops this party
        self.timeout = plan.timeout  # seconds of silence after which a peer is gone
        self._liveness: asyncio.TimerHandle | None = None
        atexit.register(self._at_exit)

    # -- what MPyC's start() calls -----------------------------------------------------------

    @contextlib.contextmanager
    def installed(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """Put this network's ``create_server``/``create_connection`` on ``loop`` while
        MPyC's ``start()`` runs (instance attributes shadow the loop's methods)."""
        self._loop = loop
        self._orig_create_connection = loop.create_connection
        self._orig_create_server = loop.create_server
        self.round += 1
        self.links = {}
        self._ahead_started = False
        self.started_at = time.monotonic()
        setattr(loop, "create_connection", self.create_connection)  # noqa: B010
        setattr(loop, "create_server", self.create_server)  # noqa: B010
        self._starting = True
        watcher = loop.create_task(self._say_who_is_missing())
        try:
            yield
        finally:
            watcher.cancel()
            self._starting = False
            self._drop_prepared()
            for name in ("create_connection", "create_server"):
                with contextlib.suppress(AttributeError):
                    delattr(loop, name)

    async def _say_who_is_missing(self) -> None:
        """While MPyC's ``start()`` waits: after :data:`WAIT_NOTICE` s, and every
        :data:`WAIT_REPEAT` s after, say which parties have no link yet, on either side
        and either path (a party that is not started, or waits at another mediator)."""
        wait = WAIT_NOTICE
        while True:
            await asyncio.sleep(wait)
            wait = WAIT_REPEAT
            missing = [i for i in self._missing() if i not in self._noticed]
            if missing:
                names = ", ".join(self.party_label(i) for i in missing)
                waited = time.monotonic() - self.started_at
                log.warning(
                    f"didsession: waiting for {names} to connect ({waited:.0f} s so far); "
                    "the computation starts once every party has started"
                )

    def _missing(self) -> list[int]:
        """The parties with no link yet in this ``start()``."""
        return [i for i in range(len(self.roster)) if i != self.pid and i not in self.links]

    async def create_connection(
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None, **kw: Any
    ) -> tuple[asyncio.BaseTransport, Any]:
        """Connect to a higher party (MPyC's connecting side).

        MPyC connects to the higher parties one after another; the first call starts the
        sessions with all of them at once (:meth:`_prepare`), so that later calls find
        their link ready instead of waiting through another handshake.

        Any ordinary exception makes MPyC retry in 0.1 s; a refusal or program mismatch
        raises SystemExit.
        """
        assert self._orig_create_connection is not None
        protocol = protocol_factory()
        peer = getattr(protocol, "peer_pid", None)
        if not isinstance(peer, int) or not 0 <= peer < len(self.roster):
            # Not one of MPyC's peer links: leave it alone.
            return await self._orig_create_connection(lambda: protocol, host, port, **kw)
        if not self._ahead_started:
            self._ahead_started = True
            loop = asyncio.get_running_loop()
            for other in range(peer + 1, len(self.roster)):
                party = self.rt.parties[other]
                task = loop.create_task(self._prepare(other, party.host, party.port))
                self._ahead[other] = task
        if peer in self._ahead:
            link = await self._ahead.pop(peer)
        else:
            link = await self._prepare(peer, host, port)
        self._attach(link, protocol, peer, expect_pid=None)
        return link, protocol

    async def _prepare(self, peer: int, host: Any, port: Any) -> SessionTransport:
        """A link to higher party ``peer``, up to the program agreement: ready for MPyC.

        Raises:
            ConnectionError: the session failed (MPyC tries again).
        """
        label = self.party_label(peer)
        link: SessionTransport | None = None
        try:
            link = await self._open_path(peer, host, port)
            hs = self._handshake(
                Role.INITIATOR,
                peer_did=self.roster.parties[peer].did,
                candidates=await self._candidates(link),
            )
            await link.initiate(hs, self._pack, self._unpack, HANDSHAKE_TIMEOUT)
            self._upgrade(link, hs)
            agreed = await self._agree(link, peer)
            if agreed is _Agreement.UNPROVEN:  # _agree warned; MPyC connects again
                raise ConnectionError("the link ended before the program agreement")
        except DidSessionError as exc:
            why = exc.message
            if link is not None:
                if link.state is LinkState.HANDSHAKE:
                    why += _stranger_hint(link, exc, host, port)
                link.close()
            if isinstance(exc, RemoteProtocolError) and exc.code.startswith(_FATAL_REFUSALS):
                self.stop(f"{exc.message} (is our roster the same as party {peer}'s?)")
                await self._halted()
            self._warn(peer, f"session with {label} failed: {why}; retrying")
            raise ConnectionError(exc.message) from None
        except BaseException:
            if link is not None:
                link.close()
            raise
        if agreed is _Agreement.STOPPING:
            await self._halted()  # never return to MPyC's start(): this party is stopping
        return link

    def _drop_prepared(self, exc: ProtocolError | None = None) -> set[int]:
        """Links prepared ahead that MPyC has not taken.

        With ``exc`` (stopping): fail the ready ones with it, so that their peers hear
        why, and let the others run on (they see the stop at the program agreement).
        Without (``start()`` ended): cancel and close them all.  Returns the peers told.
        """
        told = set()
        for peer, task in list(self._ahead.items()):
            if not task.done():
                if exc is None:
                    task.cancel()
                continue
            del self._ahead[peer]
            if not task.cancelled() and task.exception() is None:
                link = task.result()
                link.path_info["stopping"] = True
                if exc is not None:
                    link.fail(exc, linger=True)
                    told.add(peer)
                else:
                    link.close()
        if exc is None:
            self._ahead = {}
        return told

    async def _open_path(self, peer: int, host: Any, port: Any) -> SessionTransport:
        """A link to ``peer`` on its path: the relay if the roster says so; else direct
        TCP, falling back to the relay (if the roster has a mediator) when the address
        cannot be reached at all.  A refused connection is not a reason to fall back: the
        party is just not listening yet, and MPyC retries."""
        path = choose_path(self.roster, self.pid, peer)
        if path is PathKind.RELAY or peer in self._via_relay:
            link = self._new_link(peer, PathKind.RELAY)
            await self._relay(link, peer)
            return link
        link = self._new_link(peer, PathKind.DIRECT)
        loop = asyncio.get_running_loop()
        patience = loop.time() + REFUSED_PATIENCE
        try:
            while True:
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        await self._orig_create_connection(lambda: link, host, port)  # type: ignore[misc]
                    break
                except ConnectionRefusedError:
                    # Not listening yet (parties start at different times): look again soon,
                    # not at MPyC's next try 0.1 s later.  A refused connect never reaches
                    # the protocol (asyncio and uvloop alike), so the link is reused.
                    if loop.time() >= patience:
                        raise
                    await asyncio.sleep(REFUSED_POLL)
        except ConnectionRefusedError:
            self._waiting(peer, host, port, "nothing listens there yet")
            raise
        except (OSError, TimeoutError) as exc:
            if not self.roster.mediator:
                why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
                self._waiting(peer, host, port, why)
                raise
            why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            log.warning(
                f"didsession: no direct path to {link.label} at {host}:{port} ({why}); "
                "using the mediator's relay"
            )
            self._via_relay.add(peer)
            link = self._new_link(peer, PathKind.RELAY)
            await self._relay(link, peer)
            return link
        self._unreached.pop(peer, None)
        link.path_info["path"] = "direct"
        self._keep_alive(link)
        return link

    def _waiting(self, peer: int, host: Any, port: Any, why: str) -> None:
        """A direct connect failed and MPyC will try again: after :data:`WAIT_NOTICE`,
        say once what we are waiting for (plain MPyC waits silently)."""
        now = time.monotonic()
        since = self._unreached.setdefault(peer, now)
        if now - since >= WAIT_NOTICE:
            self._noticed.add(peer)
            self._warn(
                peer,
                f"still waiting for {self.party_label(peer)} at {host}:{port} ({why}); "
                "MPyC keeps trying",
            )

    async def create_server(
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None, **kw: Any
    ) -> _Server:
        """Accept the lower parties' links (MPyC's listening side)."""
        assert self._orig_create_server is not None and self._loop is not None
        lower = {self.roster.parties[i].did: i for i in range(self.pid)}
        relayed = {
            did: i
            for did, i in lower.items()
            if choose_path(self.roster, i, self.pid) is PathKind.RELAY
        }
        direct = {did: i for did, i in lower.items() if did not in relayed}
        tasks: set[asyncio.Task[None]] = set()

        def track(task: asyncio.Task[None]) -> None:
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for did, peer in relayed.items():
            track(self._loop.create_task(self._accept_relayed(peer, did, protocol_factory)))
        if self.roster.mediator:
            # Direct links fall back to the relay when the address cannot be reached: wait
            # there too (until MPyC closes this server, once every link is up).
            for did, peer in direct.items():
                task = self._accept_relayed(peer, did, protocol_factory, standby=True)
                track(self._loop.create_task(task))
        listener = None
        if direct:
            own = self.roster.parties[self.pid].addr
            listen_host = bind_host(own[0]) if own else None

            def accept() -> SessionTransport:
                link = self._new_link(None, PathKind.DIRECT)
                link.path_info["path"] = "direct"
                track(self._loop.create_task(self._accept(link, direct, protocol_factory)))  # type: ignore[union-attr]
                return link

            try:
                listener = await self._orig_create_server(accept, host=listen_host, port=port)
            except OSError as exc:
                for pending_task in list(tasks):
                    pending_task.cancel()
                where = format_addr((listen_host, int(port))) if listen_host else f"port {port}"
                self.stop(
                    f"cannot listen on {where} (this party's address in the roster): "
                    f"{exc.strerror or exc}"
                )
                await self._halted()
            log.debug(f"didsession: listening on {listen_host or '*'}:{port}")
        return _Server(listener, tasks)

    # -- one link --------------------------------------------------------------------------------

    def _new_link(self, peer: int | None, path: PathKind) -> SessionTransport:
        label = self.party_label(peer) if peer is not None else "a connecting party"
        limit = RELAY_RECORD_LIMIT if path is PathKind.RELAY else DEFAULT_RECORD_LIMIT
        return SessionTransport(
            on_fatal=self._on_link_fatal,
            label=label,
            record_limit=limit,
            max_batch=self.max_batch,
            eager_bytes=self.eager_bytes,
            handshake_limit=MAX_HANDSHAKE_ITEM,
        )

    def _handshake(
        self,
        role: Role,
        *,
        peer_did: str | None = None,
        accept: Any = None,
        candidates: list[dict[str, Any]] | None = None,
    ) -> Handshake:
        ident = self.identity
        assert ident.x25519_secret is not None
        return Handshake(
            role,
            local_did=ident.did,
            static_private=ident.x25519_secret,
            peer_static_key=self.codec.x25519_public,
            peer_did=peer_did,
            accept_peer=accept,
            config=SessionConfig(timeout=HANDSHAKE_TIMEOUT),
            candidates=candidates,
        )

    # -- direct paths for links that start on the relay (spec/session.md §15) -------------

    def _nat_traversal(self, link: SessionTransport) -> bool:
        return (
            link.path_info.get("path") == "relay"
            and not self.roster.relay_only
            and os.environ.get(DIRECT_ENV, "1") != "0"
        )

    async def _candidates(self, link: SessionTransport) -> list[dict[str, Any]] | None:
        """Our address candidates for a link on the relay (None: send none)."""
        if not self._nat_traversal(link):
            return None
        if self._direct is None:
            from mpyc_adapter.nat import NatPaths

            assert self.roster.mediator is not None
            self._direct = NatPaths(self.roster.mediator)
        return await self._direct.candidates()

    def _upgrade(self, link: SessionTransport, hs: Handshake) -> None:
        """After the handshake on the relay: run the link over multipath and dial the
        peer's candidates; the link moves to a direct path as soon as one is verified."""
        if self._direct is None or not self._nat_traversal(link):
            return
        self._direct.upgrade(link, hs.peer_candidates)

    async def _relay(self, link: SessionTransport, peer: int) -> None:
        mediator = self.roster.mediator
        assert mediator is not None
        low, high = sorted((self.pid, peer))
        await open_relay_path(
            lambda: link,
            mediator=mediator,
            local_did=self.identity.did,
            pack=self.codec.pack,  # the light authcrypt: no DIDComm libraries to import
            session_id=relay_session_id(self.roster, low, high, self.round),
            peer_did=self.roster.parties[peer].did,
            wait=RELAY_WAIT,
            liveness=self.timeout,
        )
        link.path_info["path"] = "relay"

    async def _accept(
        self, link: SessionTransport, lower: dict[str, int], factory: Callable[[], Any]
    ) -> None:
        await link.connected()
        self._keep_alive(link)
        remote = link.get_extra_info("peername")
        host = str(remote[0]) if isinstance(remote, tuple) and remote else "?"
        pending = self._pending
        if sum(pending.values()) >= MAX_PENDING or pending.get(host, 0) >= MAX_PENDING_PER_HOST:
            link.close()
            self._refused(
                f"didsession: too many connections waiting for a session (from {host}): closed one"
            )
            return
        pending[host] = pending.get(host, 0) + 1
        try:
            await self._accept_session(link, lower, factory)
        finally:
            pending[host] -= 1
            if not pending[host]:
                del pending[host]

    async def _accept_session(
        self, link: SessionTransport, lower: dict[str, int], factory: Callable[[], Any]
    ) -> None:
        senders: list[str] = []

        async def unpack(packed: bytes) -> tuple[bytes, str]:
            plaintext, sender = await self._unpack(packed)
            senders.append(sender)
            return plaintext, sender

        hs = self._handshake(Role.RESPONDER, accept=set(lower))
        try:
            await link.respond(hs, self._pack, unpack, REQUEST_TIMEOUT)
        except DidSessionError as exc:
            link.close()
            who = short_did(senders[0]) if senders else "an unknown party"
            if senders and senders[0] not in lower:
                why = (
                    "not a party of the roster"
                    if self.roster.index(senders[0]) is None
                    else f"party {self.roster.index(senders[0])} connects to us only if "
                    "it is below us"
                )
                self._refused(f"didsession: refused a session from {who}: {why}")
            else:
                self._refused(f"didsession: a session from {who} failed: {exc.message}")
            return
        except asyncio.CancelledError:
            link.close()
            raise
        peer = lower[link.peer_did]
        link.label = self.party_label(peer)
        await self._accepted(link, peer, factory)

    async def _accept_relayed(
        self, peer: int, did: str, factory: Callable[[], Any], *, standby: bool = False
    ) -> None:
        """Wait for a lower party on the relay; retry (like MPyC's connecting side) until
        it comes or MPyC closes the server.  ``standby``: the link is meant to be direct;
        this only catches the connecting party's fallback, quietly."""
        while True:
            link = self._new_link(peer, PathKind.RELAY)
            try:
                await self._relay(link, peer)
                hs = self._handshake(
                    Role.RESPONDER, accept={did}, candidates=await self._candidates(link)
                )
                await link.respond(hs, self._pack, self._unpack, HANDSHAKE_TIMEOUT)
                self._upgrade(link, hs)
            except DidSessionError as exc:
                link.close()
                if not standby:
                    self._warn(peer, f"relayed session with {link.label} failed: {exc.message}")
            except asyncio.CancelledError:
                link.close()
                raise
            else:
                if await self._accepted(link, peer, factory):
                    return
            await asyncio.sleep(0.1)

    async def _accepted(
        self, link: SessionTransport, peer: int, factory: Callable[[], Any]
    ) -> bool:
        """Agree on the program with a lower party that connected, and hand the link to
        MPyC.  Returns False if the link ended before the peer proved itself (keep
        waiting for that party), True otherwise."""
        current = self.links.get(peer)
        if current is not None and current.state is LinkState.OPEN:
            link.fail(RemoteProtocolError("duplicate link", code="e.p.mpyc.duplicate"))
            log.warning(f"didsession: refused a second link from {link.label}")
            return True
        if self._stopping:  # tell a late party why we stop, then stop answering
            link.fail(RemoteProtocolError("stopping", code=self._stop_code))
            return True
        try:
            agreed = await self._agree(link, peer)
        except asyncio.CancelledError:
            link.close()
            raise
        if agreed is _Agreement.AGREED:
            self._attach(link, factory(), peer, expect_pid=peer)
        return agreed is not _Agreement.UNPROVEN

    async def _agree(self, link: SessionTransport, peer: int) -> _Agreement:
        """Exchange program records (:mod:`mpyc_adapter.agreement`).

        A mismatch, or a peer that proved itself and then sent no usable record, stops
        this party (STOPPING).  A link that ends before the peer sent anything under the
        session's keys is dropped with a warning (UNPROVEN): see the module docstring."""
        link.send_now(self.program.encode())
        try:
            theirs = Program.decode(await link.peer_agreement(HANDSHAKE_TIMEOUT))
        except ProtocolError as exc:
            link.fail(exc)
            if not link.peer_proven:
                self._warn(
                    peer,
                    f"a session as {link.label} ended before its peer proved it holds the "
                    f"session keys ({exc.message}); the party may connect again",
                )
                return _Agreement.UNPROVEN
            if exc.code.startswith("e.p.mpyc."):  # the peer stopped first: say why
                self._peer_stopped(link, exc)
            else:
                self.stop(f"no program agreement with {link.label}: {exc.message}")
            return _Agreement.STOPPING
        if self._stopping:
            link.fail(RemoteProtocolError("stopping", code=self._stop_code))
            return _Agreement.STOPPING
        if theirs.party != peer:
            err = RemoteProtocolError(
                f"{link.label} states it is party {theirs.party}", code="e.p.mpyc.party"
            )
            link.fail(err)
            self.stop(f"{err.message}, but its DID is party {peer}'s in the roster")
            return _Agreement.STOPPING
        diffs = differences(self.program, theirs)
        if diffs:
            keys = ",".join(key for key, _ in diffs)
            link.fail(AgreementError("program mismatch", code="e.p.mpyc.program"))
            self.stop(
                f"{link.label} runs a different program: "
                + "; ".join(text for _, text in diffs)
                + ". Nothing was computed.",
                code=f"e.p.mpyc.program.p{peer}:{keys}"[:64],
            )
            return _Agreement.STOPPING
        return _Agreement.AGREED

    def _attach(
        self, link: SessionTransport, protocol: Any, peer: int, expect_pid: int | None
    ) -> None:
        if link.state is not LinkState.AGREEMENT:
            if self._stopping:
                return
            why = link.peer_error
            if why is not None and why.code.startswith("e.p.mpyc."):
                self._peer_stopped(link, why)  # it stopped after agreeing with us: say why
            else:
                self.stop(f"the link with {link.label} closed before the computation began")
            return
        self.links[peer] = link
        link.attach(protocol, expect_pid=expect_pid)
        if self._board is not None:
            self._publish_link(peer, link)
        elif self._board_timer is None and not self._no_board:
            loop = asyncio.get_running_loop()
            self._board_timer = loop.call_later(STATUS_AFTER, self._publish_links)
        chan = link.channel
        # Where the link was set up: a link prepared ahead may have gone direct meanwhile
        # (that is logged as it happens).
        path = link.path_info.get("setup") or link.get_extra_info("path")
        where = ""
        if path == "direct":
            sock, remote = link.get_extra_info("sockname"), link.get_extra_info("peername")
            if sock and remote:
                where = f" {_addr(sock)} -> {_addr(remote)}"
        log.info(
            f"didsession: link with {link.label}: {path or '?'}{where}, "
            f"session {chan.session_id.hex()[:8]}, {chan.suite.value}"
        )

    # -- stopping ----------------------------------------------------------------------------------

    def _on_link_fatal(self, link: SessionTransport, exc: DidSessionError) -> None:
        if link.path_info.get("stopping"):
            return
        peer = next((p for p, other in self.links.items() if other is link), None)
        if exc.code == SILENT and exc is link.peer_error:
            # The peer's CLOSE says it heard nothing from us (so it did get through).
            self.stop(
                f"{link.label} stopped: it heard nothing from this party for too long "
                "(is the network between us down?)",
                code=f"e.p.mpyc.lost.p{self.pid}",
            )
        elif exc.code == SILENT:
            if link.path_info.get("path") == "relay":
                how = "the mediator found its machine gone"
            elif self.timeout > 0:
                how = f"nothing from its machine for {self.timeout:g} s (--didcomm-timeout)"
            else:
                how = "TCP gave up on its machine"
            self.stop(
                f"{link.label} stopped answering: {how}; is it off, asleep or off the network?",
                code=f"e.p.mpyc.lost.p{peer}" if peer is not None else "e.p.mpyc.stopped",
            )
        elif exc.code.startswith("e.p.mpyc."):
            self._peer_stopped(link, exc)
        else:
            self.stop(
                f"the session with {link.label} failed: {exc.message}",
                code=f"e.p.mpyc.failed.p{peer}" if peer is not None else "e.p.mpyc.stopped",
            )

    def _peer_stopped(self, link: SessionTransport, exc: DidSessionError) -> None:
        """A peer closed its session with an ``e.p.mpyc`` reason: stop too, saying why,
        and pass the same reason on to our other peers."""
        code = exc.code
        if code.startswith("e.p.mpyc.program.p") and ":" in code:
            who, _, keys = code.removeprefix("e.p.mpyc.program.p").partition(":")
            what = ", ".join(KEY_NAMES.get(k, k) for k in keys.split(",") if k)
            self.stop(
                f"{link.label} stopped: it found that party {who} runs a different "
                f"program from its own ({what} differ). Nothing was computed.",
                code=code,
            )
        elif code == "e.p.mpyc.program":
            self.stop(f"{link.label} runs a different program (it said so)", code=code)
        elif left := _left(code):
            why, party = left
            phrase = _LEFT_PHRASES[why]
            itself = 0 <= party < len(self.roster) and self.party_label(party) == link.label
            if why == "failed":
                whom = "this party" if party == self.pid else f"party {party}"
                self.stop(f"{link.label} stopped: a session with {whom} failed", code=code)
            elif why == "lost" and (party == self.pid or itself):  # passed on about the sender
                whom = "this party" if party == self.pid else "it"
                self.stop(
                    f"{link.label} stopped: a party heard nothing from {whom} for too long "
                    "(is the network down somewhere?)",
                    code=code,
                )
            elif itself:
                self.stop(f"{link.label} {phrase}; stopping too", code=code)
            else:
                self.stop(f"{link.label} stopped: party {party} {phrase}", code=code)
        else:
            self.stop(f"{link.label} stopped ({code}); stopping too", code=code)

    def stop(self, message: str, *, code: str = "e.p.mpyc.stopped") -> None:
        """Stop this party: one line on stderr, CLOSE with ``code`` to every peer, exit 1.

        During ``start()`` some parties may have no session with us yet: for
        :data:`STOP_GRACE` seconds this party tells the higher ones (connecting to them)
        and answers the lower ones (which retry) with a session that closes with ``code``,
        so that they stop too, saying why.  The exit is a SystemExit raised from a plain
        event-loop callback, so it leaves ``run_until_complete`` and the program.
        """
        if self._stopping or self._local_aborted():
            return  # already stopping, or local mode's party 0 stops everything itself
        self._stopping = True
        self._stop_code = code
        print(f"didsession: error: party {self.pid}: {message}", file=sys.stderr, flush=True)
        told = self._drop_prepared(RemoteProtocolError("stopped", code=code))
        for link in list(self.links.values()):
            link.path_info["stopping"] = True
            if link.state is LinkState.OPEN:
                link.fail(RemoteProtocolError("stopped", code=code), linger=True)
        loop = self._loop or asyncio.get_event_loop()
        if self._starting:
            self._tasks.add(loop.create_task(self._tell_and_exit(told)))
        else:
            self._tasks.add(loop.create_task(self._linger_and(_exit)))

    def _at_exit(self) -> None:
        """The process exits with links still open (Ctrl-C, an uncaught error, a program
        that never calls ``shutdown()``): CLOSE each with why, so that the peers stop
        saying so instead of blaming a broken connection.  Best effort: the event loop no
        longer runs, so only what the path writes at once (a TCP socket) gets out; a
        relay path's writes are lost (a signal while the loop runs does better, see
        :meth:`watch_signals`)."""
        if self._local_aborted():
            return  # local mode's party 0 kills the others itself, quietly
        kind = getattr(sys, "last_type", None)  # set by an uncaught exception
        if self._signal is not None:
            self._leave(_SIGNAL_REASONS[self._signal])
        elif isinstance(kind, type) and issubclass(kind, KeyboardInterrupt):
            self._leave("interrupted")
        else:
            self._leave("crashed" if kind is not None else "exited")

    def _local_aborted(self) -> bool:
        """Local mode's party 0 is being stopped (a signal, an error): it kills the other
        parties itself, and what its links do meanwhile is no news (a signal handler
        that raises may end a relay path's task, which then reports the path lost)."""
        local = self.plan.extra.get("local")
        return local is not None and bool(local.aborted)

    def _leave(self, why: str) -> None:
        """CLOSE every link with ``e.p.mpyc.<why>.p<pid>`` (see :data:`_LEFT_PHRASES`)."""
        if self._stopping:
            return
        self._stopping = True
        exc = RemoteProtocolError(why, code=f"e.p.mpyc.{why}.p{self.pid}")
        self._drop_prepared(exc)
        for link in list(self.links.values()):
            if link.state is LinkState.OPEN and not link.is_closing():
                link.path_info["stopping"] = True
                with contextlib.suppress(Exception):
                    link.fail(exc, linger=True)  # the process exits soon: it closes

    def computing(self, now: bool) -> None:
        """MPyC computes (``now``: between ``start()`` and ``shutdown()``): a link MPyC
        closes meanwhile, as ``async with mpc:`` does when its body raises, is closed
        with ``crashed`` as the reason, so the peers stop saying so instead of waiting
        for ever (as they do under plain TCP)."""
        code = f"e.p.mpyc.crashed.p{self.pid}" if now else ""
        for link in self.links.values():
            link.close_code = code
        if now and self.timeout > 0 and self._loop is not None and self._liveness is None:
            self._liveness = self._loop.call_later(self.timeout / 8, self._check_liveness)

    def done_computing(self) -> None:
        """After MPyC's ``shutdown()`` (its barrier included): stop watching the links."""
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None

    def _keep_alive(self, link: SessionTransport) -> None:
        """A direct TCP link: the kernel probes it while idle, and _check_liveness looks
        at it (see didsession.tcp_liveness)."""
        if link.lower is not None and keep_alive(link.lower, self.timeout):
            link.path_info["watched"] = True

    def _check_liveness(self) -> None:
        """Every eighth of the timeout while computing: a direct link whose peer's machine
        has answered nothing for the timeout, with data in flight or window probes out,
        is failed (its peer is gone; see didsession.tcp_liveness).  The kernel's
        keepalive covers idle links."""
        self._liveness = None
        for link in list(self.links.values()):
            lower = link.lower
            if link.state is LinkState.OPEN and lower is not None and link.path_info.get("watched"):
                if gone(silence(lower), self.timeout):
                    link.fail(silent(link.label))
        if not self._stopping and self._loop is not None:
            self._liveness = self._loop.call_later(self.timeout / 8, self._check_liveness)

    def watch_signals(self) -> None:
        """From ``start()`` to ``shutdown()``, Ctrl-C, SIGTERM and SIGHUP (``kill``,
        ``timeout``, a closed terminal) CLOSE this party's links with why before it exits,
        instead of dropping them unexplained; the exit is what it would have been
        (KeyboardInterrupt, status 128 + n), with one line instead of a traceback through
        the event loop.  Only signals at their default disposition are taken.

        The handler runs between any two bytecodes, perhaps inside ``seal``, so it only
        hands the signal to the event loop; the loop callback closes the links and
        gives the CLOSEs :data:`LEAVE_GRACE` to go out (a relay path writes from a task).
        When the loop is not running (a synchronous program between ``mpc.run`` calls),
        the handler exits at once and :meth:`_at_exit` says why."""
        for sig, default in _WATCHED:
            if sig not in self._signals and signal.getsignal(sig) is default:
                with contextlib.suppress(ValueError):  # not the main thread
                    signal.signal(sig, self._on_signal)
                    self._signals[sig] = default
        if sys.excepthook is sys.__excepthook__:
            sys.excepthook = self._excepthook

    def _excepthook(self, kind: type[BaseException], value: BaseException, tb: Any) -> None:
        """The KeyboardInterrupt a Ctrl-C we took raises has been said in one line
        (:meth:`_signalled`): its traceback would only show the event loop's insides.
        Python still exits by SIGINT, as a shell expects."""
        if not (issubclass(kind, KeyboardInterrupt) and self._signal == signal.SIGINT):
            sys.__excepthook__(kind, value, tb)

    def unwatch_signals(self) -> None:
        """Restore the handlers; a signal taken meanwhile and not yet acted on (it came
        as ``shutdown()`` ended) exits now, as it would have."""
        for sig, previous in self._signals.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._signals.clear()
        if self._signal is not None:
            _raise_for(self._signal)

    def _on_signal(self, sig: int, frame: Any) -> None:
        loop = self._loop
        if self._signal is None and loop is not None and loop.is_running():
            self._signal = sig
            loop.call_soon_threadsafe(self._signalled, sig)
            return
        self._signal = self._signal or sig  # a second signal: go now
        _raise_for(sig)

    def _signalled(self, sig: int) -> None:
        if self._stopping:  # stop() or _leave already ends this party
            return
        missing = [self.party_label(i) for i in self._missing()] if self._starting else []
        self._leave(_SIGNAL_REASONS[sig])
        name = "interrupted (Ctrl-C)" if sig == signal.SIGINT else signal.Signals(sig).name
        waiting = f" (it was waiting for {', '.join(missing)} to connect)" if missing else ""
        try:
            print(f"didsession: party {self.pid}: {name}: stopping{waiting}", file=sys.stderr)
        except OSError:  # a closed terminal (SIGHUP): later writes would fail the exit
            sys.stdout = sys.stderr = open(os.devnull, "w")
        assert self._loop is not None
        self._tasks.add(self._loop.create_task(self._linger_and(lambda: _raise_for(sig))))

    async def _linger_and(self, then: Callable[[], None]) -> None:
        """Read on until every link's peer has closed its side (it read our CLOSE), at
        most :data:`LEAVE_GRACE`; then ``then`` from a plain loop callback, where the
        exit it raises leaves ``run_until_complete``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEAVE_GRACE):
                for link in list(self.links.values()):
                    await link.path_closed()
        asyncio.get_running_loop().call_soon(then)

    async def _tell_and_exit(self, told: set[int]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE
        higher = [
            p
            for p in range(self.pid + 1, len(self.roster))
            if p not in self.links and p not in told
        ]
        if higher:
            tells = [loop.create_task(self._tell(p)) for p in higher]
            _, pending = await asyncio.wait(tells, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        loop.call_soon(_exit)

    async def _tell(self, peer: int) -> None:
        """Best effort: a session with ``peer`` that closes at once with the stop code."""
        party = self.rt.parties[peer]
        with contextlib.suppress(Exception):
            link = await self._open_path(peer, party.host, party.port)
            try:
                hs = self._handshake(Role.INITIATOR, peer_did=self.roster.parties[peer].did)
                await link.initiate(hs, self._pack, self._unpack, STOP_GRACE)
                link.fail(RemoteProtocolError("stopping", code=self._stop_code))
            finally:
                link.close()

    async def _halted(self) -> None:
        """Wait for the exit (``stop`` was called): MPyC's ``start()`` must not go on."""
        await asyncio.sleep(STOP_GRACE + 60.0)
        raise SystemExit(1)

    def _refused(self, message: str) -> None:
        """Log a refused or failed incoming session: once per distinct message, and at most
        :data:`MAX_REFUSAL_WARNINGS` of them."""
        if message in self._refusals or len(self._refusals) > MAX_REFUSAL_WARNINGS:
            return
        self._refusals.add(message)
        if len(self._refusals) <= MAX_REFUSAL_WARNINGS:
            log.warning(message)
        elif len(self._refusals) == MAX_REFUSAL_WARNINGS + 1:
            log.warning("didsession: more refused sessions; they are not logged")

    def _warn(self, peer: int, message: str) -> None:
        key = (peer, message)
        if key not in self._warned:
            self._warned.add(key)
            log.warning(f"didsession: {message}")

    # -- reports -------------------------------------------------------------------------------------

    def party_label(self, peer: int) -> str:
        party = self.roster.parties[peer]
        return f"party {peer} ({party.label})" if party.label else f"party {peer}"

    def report(self) -> list[dict[str, Any]]:
        """One dict per link of the last round: path, counters, overhead."""
        out = []
        for peer, link in sorted(self.links.items()):
            s = link.stats
            out.append(
                {
                    "party": self.pid,
                    "peer": peer,
                    "peer_did": self.roster.parties[peer].did,
                    "round": self.round,
                    "path": link.get_extra_info("path"),
                    # where the link was set up (it moves to a direct path when it can)
                    "started": link.path_info.get("setup") or link.get_extra_info("path"),
                    "local": _addr(link.get_extra_info("sockname")),
                    "remote": _addr(link.get_extra_info("peername")),
                    "suite": link.channel.suite.value,
                    "messages": s.messages,
                    "records": s.records,
                    "payload_bytes": s.payload,
                    "wire_bytes": s.wire,
                    "records_in": s.records_in,
                    "overhead_per_message": round(s.overhead_per_message, 2),
                    "messages_per_record": round(s.messages_per_record, 2),
                }
            )
        return out

    def _publish_links(self) -> None:
        """Put the open links on the status board (``STATUS_AFTER`` into the run)."""
        self._board_timer = None
        for peer, link in self.links.items():
            if link.state is LinkState.OPEN:
                self._publish_link(peer, link)

    def _publish_link(self, peer: int, link: SessionTransport) -> None:
        board = self._link_board()
        if board is not None:
            board.add(peer, link, self.roster.parties[peer].did, relay_only=self.roster.relay_only)

    def _link_board(self) -> Any:
        """The status files of this party's links (``didsession status``), or None."""
        if self._board is None and not self._no_board:
            from didsession.identity import default_home
            from mpyc_adapter.status import LinkBoard

            home = getattr(self.rt.options, "didcomm_home", None) or default_home()
            try:
                self._board = LinkBoard(Path(home), self.pid, self.identity.did)
            except (DidSessionError, OSError) as exc:
                self._no_board = True
                log.warning(f"didsession: no link status for 'didsession status': {exc}")
        return self._board

    def log_report(self) -> None:
        if self._board_timer is not None:
            self._board_timer.cancel()
            self._board_timer = None
        if self._board is not None:
            self._board.close_all()
        rows = self.report()
        for row in rows:
            log.info(
                f"didsession: link with {self.party_label(row['peer'])}: {row['path']}, "
                f"{row['messages']} messages in {row['records']} records "
                f"({row['messages_per_record']}/record), "
                f"{row['overhead_per_message']} bytes of session overhead per message"
            )
        target = os.environ.get(REPORT_ENV)
        if target and rows:
            with contextlib.suppress(OSError), open(target, "a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")

    def _program(self) -> Program:
        import mpyc

        rt = self.rt
        opts = rt.options
        name, digest = script_digest(self.plan.script)
        return Program(
            party=self.pid,
            parties=len(rt.parties),
            threshold=int(rt.threshold),
            bit_length=int(opts.bit_length),
            sec_param=int(opts.sec_param),
            no_prss=bool(opts.no_prss),
            mix32_64bit=bool(opts.mix32_64bit or os.getenv("MPYC_MIX32_64BIT") == "1"),
            script_name=name,
            script_sha256=digest,
            args=None if self.plan.private_args else tuple(sys.argv[1:]),
            roster=self.roster.fingerprint,
            mpyc=str(mpyc.__version__),
            session=PROTOCOL_VERSION,
        )


def _exit() -> None:
    raise SystemExit(1)


def _raise_for(sig: int) -> None:
    """Exit as the signal's default action would have: Python's KeyboardInterrupt for
    SIGINT, else status 128 + n."""
    if sig == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + sig)


def _addr(addr: Any) -> str | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return format_addr((str(addr[0]), int(addr[1])))
    return str(addr) if addr else None
