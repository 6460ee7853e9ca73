"""The mediator role: decrypt, dispatch to the protocol cores, carry events out, answer.

This is the asynchronous shell between the transports (:mod:`mediator.app`), the sans-IO
protocol cores (:mod:`mediator.protocols`), the store and the live hub.  One call,
:meth:`Mediator.handle`, takes the bytes of one DIDComm message and returns the one reply
to send back on the same connection (DIDComm ``return_route: all``), or None.

Replies to an authenticated sender are authcrypted to it, and never forward-wrapped: they
go back on the connection the request came in on.  A sender that did not authenticate
(anoncrypt, or a message we could not decrypt) can only get a plaintext reply: a
problem-report, or the answer to a ping.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from didsession._dataclass import dataclass
from didsession.did import PeerResolver
from didsession.errors import DIDError, EnvelopeError, MediationError
from mediator.config import MediatorConfig
from mediator.identity import MediatorIdentity
from mediator.live import Connection, LiveHub
from mediator.logs import LogThrottle, short_did
from mediator.metrics import Metrics
from mediator.protocols import coordinate, discover_features, pickup, routing, trust_ping
from mediator.protocols.coordinate import KeylistResult
from mediator.protocols.dispatch import receive
from mediator.protocols.events import (
    DeliveryRequested,
    Event,
    FeaturesQueried,
    ForwardReceived,
    KeylistAction,
    KeylistQueried,
    KeylistUpdateRequested,
    LiveDeliveryChanged,
    MediationRequested,
    MessagesReceived,
    PingReceived,
    ProblemReported,
    StatusRequested,
)
from mediator.protocols.messages import FORWARD, PROTOCOLS, Codes, problem_report, thread_of
from mediator.store.base import Limits, MessageStore, Queued, StorageFull

__all__ = ["Mediator", "Reply"]

log = logging.getLogger("mediator")

# Seconds between two log lines about refusals at one mediator-wide limit.
REFUSAL_LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send back: ``data``, encrypted or plaintext; ``error``: a problem-report."""

    data: bytes
    encrypted: bool
    error: str | None = None


class Mediator:
    """Handles DIDComm messages for one mediator identity; owns the live hub.

    Args:
        clock: wall-clock seconds (``time.time``); a parameter so tests can move time.
    """

    def __init__(
        self,
        config: MediatorConfig,
        identity: MediatorIdentity,
        store: MessageStore,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.did = identity.did
        self.envelope = identity.envelope
        self.resolver: PeerResolver = identity.envelope.resolver
        self.store = store
        self.metrics = metrics
        self.hub = LiveHub(self.pack_delivery, metrics, send_timeout=config.ws_send_timeout)
        self.clock = clock
        self.limits = Limits(
            max_messages=config.queue_max_messages,
            max_bytes=config.queue_max_bytes,
            max_keys=config.keylist_max,
            max_grants=config.max_grants,
            max_total_keys=config.keylist_max_total,
            max_total_messages=config.queue_max_total_messages,
            max_total_bytes=config.queue_max_total_bytes,
        )
        # A stranger gets refused at a mediator-wide limit as often as it sends: one line
        # a minute per limit, saying how many were refused since the last.
        self._refusals = LogThrottle(REFUSAL_LOG_INTERVAL)

    # -- entry point -----------------------------------------------------------------
    async def handle(self, data: bytes, conn: Connection | None) -> Reply | None:
        """Process one packed DIDComm message; the reply for the same connection, if any.

        Never raises for anything the peer sent: every refusal is a problem-report.
        """
        try:
            unpacked = await self.envelope.unpack(data)
        except (EnvelopeError, DIDError) as exc:
            self.metrics.error(exc.code)
            return self._plain(
                problem_report(exc.code, exc.message, frm=self.did, to=None, pthid=None),
                error=exc.code,
            )
        sender = unpacked.sender_did
        message = unpacked.message
        try:
            event = receive(
                message,
                sender,
                live_capable=conn is not None,
                max_payload=self.config.queue_max_message_bytes,
            )
            reply = await self._execute(event, conn, unpacked.sender_kid)
        except MediationError as exc:
            self.metrics.error(exc.code)
            if message.get("type") == FORWARD:
                self.metrics.forwards_refused += 1
            facts: dict[str, Any] = {
                "code": exc.code,
                "type": str(message.get("type"))[:80],
                "sender": short_did(sender),
            }
            if isinstance(exc, StorageFull):  # the operator's business: a warning, and which
                refused = self._refusals.note(exc.limit, self.clock())
                if refused is not None:
                    facts.update(limit=exc.limit, maximum=exc.maximum, refused=refused)
                    log.warning("request refused: mediator-wide limit reached", extra=facts)
            else:
                log.info("request refused", extra=facts)
            report = problem_report(
                exc.code, exc.message, frm=self.did, to=sender, pthid=_thread(message)
            )
            return await self._reply(report, sender, error=exc.code)
        except Exception as exc:  # the store failed (disk, Redis): our fault, not the peer's
            self.metrics.error(Codes.INTERNAL)
            log.error(
                "request failed",
                extra={"type": str(message.get("type"))[:80], "error": type(exc).__name__},
            )
            report = problem_report(
                Codes.INTERNAL,
                "the mediator could not carry out the request; try again later",
                frm=self.did,
                to=sender,
                pthid=_thread(message),
            )
            return await self._reply(report, sender, error=Codes.INTERNAL)
        if reply is None:
            return None
        return await self._reply(reply, event.sender)

    async def _reply(
        self, message: dict[str, Any], to: str | None, *, error: str | None = None
    ) -> Reply:
        if to is None:
            return self._plain(message, error=error)
        try:
            packed = await self.envelope.pack(message, to=to, frm=self.did, forward=False)
        except (EnvelopeError, DIDError) as exc:
            # The sender authenticated with a DID we cannot encrypt to: answer in the clear.
            self.metrics.error("reply-pack")
            log.warning("cannot encrypt a reply", extra={"to": short_did(to), "error": exc.code})
            return self._plain(message, error=error)
        return Reply(packed.data, True, error)

    @staticmethod
    def _plain(message: dict[str, Any], *, error: str | None) -> Reply:
        return Reply(json.dumps(message, separators=(",", ":")).encode(), False, error)

    async def pack_delivery(self, owner: str, messages: list[Queued]) -> str:
        """A live ``delivery`` of ``messages``, authcrypted to ``owner``."""
        message = pickup.delivery(owner, messages, mediator_did=self.did, thid=None)
        packed = await self.envelope.pack(message, to=owner, frm=self.did, forward=False)
        return packed.data.decode()

    # -- events ----------------------------------------------------------------------
    async def _execute(
        self, event: Event, conn: Connection | None, sender_kid: str | None = None
    ) -> dict[str, Any] | None:
        now = self.clock()
        did = self.did
        if isinstance(event, ForwardReceived):
            await self._forward(event, now)
            return None
        if isinstance(event, MediationRequested):
            assert event.sender is not None
            if not self.config.open_mediation:
                log.info("mediation denied", extra={"did": short_did(event.sender)})
                return coordinate.mediate_deny(event, mediator_did=did, now=now)
            if await self.store.grant(event.sender, now, self.limits):
                log.info("mediation granted", extra={"did": short_did(event.sender)})
            return coordinate.mediate_grant(event, mediator_did=did, routing_did=did, now=now)
        if isinstance(event, KeylistUpdateRequested):
            results = await self._update_keylist(event, now, sender_kid)
            return coordinate.keylist_update_response(event, results, mediator_did=did, now=now)
        if isinstance(event, KeylistQueried):
            assert event.sender is not None
            dids, total = await self.store.keylist(event.sender, event.offset, event.limit)
            return coordinate.keylist(event, dids, total, mediator_did=did, now=now)
        if isinstance(event, StatusRequested):
            assert event.sender is not None
            queue = await self.store.status(event.sender, event.recipient_did, now)
            return pickup.status(
                event,
                queue,
                mediator_did=did,
                live=conn is not None and conn.is_live(event.sender),
                recipient_did=event.recipient_did,
                now=now,
            )
        if isinstance(event, DeliveryRequested):
            return await self._deliver(event, conn, now)
        if isinstance(event, MessagesReceived):
            assert event.sender is not None
            deleted = await self.store.delete(event.sender, event.message_ids)
            self.metrics.acked += deleted
            queue = await self.store.status(event.sender, None, now)
            return pickup.status(
                event,
                queue,
                mediator_did=did,
                live=conn is not None and conn.is_live(event.sender),
                now=now,
            )
        if isinstance(event, LiveDeliveryChanged):
            assert event.sender is not None and conn is not None
            self.hub.set_live(conn, event.sender, event.live)
            queue = await self.store.status(event.sender, None, now)
            return pickup.status(event, queue, mediator_did=did, live=event.live, now=now)
        if isinstance(event, PingReceived):
            if not event.response_requested:
                return None
            return trust_ping.ping_response(event, mediator_did=did, now=now)
        if isinstance(event, FeaturesQueried):
            return discover_features.disclose(event, PROTOCOLS, mediator_did=did, now=now)
        if isinstance(event, ProblemReported):
            log.info(
                "problem-report received",
                extra={"code": event.code, "sender": short_did(event.sender)},
            )
            return None
        raise MediationError(f"unhandled event {type(event).__name__}", code=Codes.INTERNAL)

    async def _forward(self, event: ForwardReceived, now: float) -> None:
        owner = await self.store.owner_of(event.recipient_did)
        if owner is None:
            raise MediationError(
                "no keylist holds the forward's next DID: the recipient has not asked this "
                "mediator to route it",
                code=Codes.UNKNOWN_RECIPIENT,
            )
        expires = routing.expiry(event, now=now, ttl=self.config.queue_ttl)
        await self.store.enqueue(
            owner, event.recipient_did, event.payload, now=now, expires=expires, limits=self.limits
        )
        self.metrics.queued += 1

    async def _update_keylist(
        self, event: KeylistUpdateRequested, now: float, sender_kid: str | None
    ) -> list[str]:
        owner = event.sender
        assert owner is not None
        if not await self.store.is_granted(owner):
            raise MediationError(
                "mediation has not been granted to this DID: send mediate-request first",
                code=Codes.NOT_GRANTED,
            )
        results: list[str | None] = []
        allowed = []
        for update in event.updates:
            if (
                update.action is KeylistAction.ADD
                and self.config.keylist_key_proof
                and not self._controls(owner, sender_kid, update.recipient_did)
            ):
                results.append(KeylistResult.CLIENT_ERROR)
            else:
                results.append(None)
                allowed.append(update)
        stored = iter(await self.store.update_keylist(owner, allowed, now, self.limits))
        out = [r if r is not None else next(stored) for r in results]
        log.info(
            "keylist updated",
            extra={"did": short_did(owner), "results": ",".join(out)},
        )
        return out

    def _controls(self, owner: str, sender_kid: str | None, recipient_did: str) -> bool:
        """Does ``recipient_did`` use the key ``owner`` proved it holds?

        authcrypt proves only the key the request was encrypted from (``sender_kid``), not
        every key ``owner``'s document lists: a DID may list someone else's public key.
        """
        if owner == recipient_did:
            return True
        if sender_kid is None:
            return False
        try:
            vm = self.resolver.verification_method(sender_kid)
            proven = [str(vm.public_key_multibase or vm.public_key_jwk).encode()]
            theirs = self._agreement_keys(recipient_did)
        except DIDError:
            return False
        return coordinate.may_register(owner, recipient_did, proven, theirs)

    def _agreement_keys(self, did: str) -> list[bytes]:
        keys = []
        for kid in self.resolver.key_agreement_kids(did):
            vm = self.resolver.verification_method(kid)
            keys.append(str(vm.public_key_multibase or vm.public_key_jwk).encode())
        return keys

    async def _deliver(
        self, event: DeliveryRequested, conn: Connection | None, now: float
    ) -> dict[str, Any]:
        owner = event.sender
        assert owner is not None
        messages = await self.store.fetch(
            owner, event.recipient_did, event.limit, self.config.queue_max_message_bytes, now
        )
        if not messages:
            queue = await self.store.status(owner, event.recipient_did, now)
            return pickup.status(
                event,
                queue,
                mediator_did=self.did,
                live=conn is not None and conn.is_live(owner),
                recipient_did=event.recipient_did,
                now=now,
            )
        self.metrics.delivered_pickup += len(messages)
        return pickup.delivery(
            owner,
            messages,
            mediator_did=self.did,
            thid=event.thid,
            recipient_did=event.recipient_did,
            now=now,
        )


def _thread(message: dict[str, Any]) -> str | None:
    try:
        return thread_of(message)
    except MediationError:
        return None
