"""The client side of a didsession mediator: mediation, pickup, live delivery, the relay.

A party behind NAT asks a mediator to receive for it (Coordinate Mediation 2.0), puts the
mediator's ``routing_did`` in its own DID document (the ``uri`` of its DIDCommMessaging
service), and from then on senders wrap messages to it in Routing 2.0 ``forward`` messages
for the mediator.  The party fetches what was queued (Message Pickup 3.0), or keeps a
WebSocket open and has new messages pushed (live mode).  When two parties cannot reach
each other directly, both open the mediator's relay for one session and exchange opaque
frames through it.

Typical use::

    info = await mediator_info("https://mediator.example")     # its DID and endpoints
    ident = store.create("alice", mediator=info.did)            # DID routed via the mediator
    grant = await request_mediation(ident, info)                # grant + keylist update

    async with MediatorClient(info, ident) as client:           # later: pick up
        for item in await client.pickup():
            print(item.message.message["body"])

    async with MediatorClient(info, ident, transport="ws") as client:
        async for item in client.live():                        # pushed as they arrive
            ...

    async with open_relay(info, ident, session_id, peer_did) as link:
        await link.send(b"opaque frame")
        frame = await link.recv()

All DIDComm crypto goes through :class:`~didsession.envelope.Envelope`, imported when first
needed: importing this module loads neither it nor pydid.  The relay itself, and the light
way to open it (no envelope: a ``pack`` callable, the mediator looked up once per process),
are in :mod:`didsession.relay_client`.  Every refusal by the mediator (a problem-report)
is a :class:`~didsession.errors.MediationError` carrying the report's code; transport
failures are ``MediationError`` with an ``e.p.xfer`` code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp

from didsession import relay_client
from didsession._dataclass import dataclass
from didsession.errors import DidSessionError, EnvelopeError, InvitationError, MediationError
from didsession.relay_client import (
    DEFAULT_TIMEOUT,
    MediatorInfo,
    RelayLink,
    http_base,
    http_get,
    info_for,
    new_message,
    problem_of,
    relay_link,
    why,
)
from didsession.untrusted import parse_json

if TYPE_CHECKING:
    from didsession.envelope import Envelope, Packed, Unpacked
    from didsession.identity import Identity
    from didsession.invitation import Invitation

__all__ = [
    "DEFAULT_TIMEOUT",
    "Delivered",
    "MediationGrant",
    "MediatorClient",
    "MediatorInfo",
    "PickupStatus",
    "Received",
    "RelayLink",
    "mediator_info",
    "new_session_id",
    "open_relay",
    "parse_delivery",
    "request_mediation",
    "send_packed",
]

_CM = "https://didcomm.org/coordinate-mediation/2.0"
_PICKUP = "https://didcomm.org/messagepickup/3.0"
MEDIATE_REQUEST: Final = f"{_CM}/mediate-request"
MEDIATE_GRANT: Final = f"{_CM}/mediate-grant"
MEDIATE_DENY: Final = f"{_CM}/mediate-deny"
KEYLIST_UPDATE: Final = f"{_CM}/keylist-update"
KEYLIST_UPDATE_RESPONSE: Final = f"{_CM}/keylist-update-response"
KEYLIST_QUERY: Final = f"{_CM}/keylist-query"
KEYLIST: Final = f"{_CM}/keylist"
STATUS_REQUEST: Final = f"{_PICKUP}/status-request"
STATUS: Final = f"{_PICKUP}/status"
DELIVERY_REQUEST: Final = f"{_PICKUP}/delivery-request"
DELIVERY: Final = f"{_PICKUP}/delivery"
MESSAGES_RECEIVED: Final = f"{_PICKUP}/messages-received"
LIVE_DELIVERY_CHANGE: Final = f"{_PICKUP}/live-delivery-change"
PING: Final = "https://didcomm.org/trust-ping/2.0/ping"
PING_RESPONSE: Final = "https://didcomm.org/trust-ping/2.0/ping-response"
QUERIES: Final = "https://didcomm.org/discover-features/2.0/queries"
DISCLOSE: Final = "https://didcomm.org/discover-features/2.0/disclose"
PROBLEM_REPORT: Final = relay_client.PROBLEM_REPORT
RELAY_CHALLENGE: Final = relay_client.RELAY_CHALLENGE
RELAY_OPEN: Final = relay_client.RELAY_OPEN
RELAY_STATUS: Final = relay_client.RELAY_STATUS

ENCRYPTED: Final = "application/didcomm-encrypted+json"
_XFER: Final = "e.p.xfer"
_SEEN_IDS: Final = 4096


# -- data ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediationGrant:
    """Mediation granted, and the DIDs now routed.

    Attributes:
        routing_did: the DID senders forward through; the ``uri`` of the party's
            DIDCommMessaging service must be this DID.
        recipient_dids: the DIDs on the party's keylist after the update.
    """

    mediator_did: str
    routing_did: str
    endpoint: str
    recipient_dids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PickupStatus:
    """A Message Pickup 3.0 ``status``."""

    message_count: int
    total_bytes: int | None
    longest_waited_seconds: int | None
    live_delivery: bool | None
    recipient_did: str | None


@dataclass(frozen=True, slots=True)
class Delivered:
    """One queued message as the mediator delivered it: its queue id and packed bytes."""

    id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """A delivered message, decrypted."""

    id: str
    message: Unpacked


# -- finding a mediator --------------------------------------------------------------------


async def mediator_info(
    mediator: str | MediatorInfo,
    *,
    resolver_envelope: Envelope | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> MediatorInfo:
    """Find a mediator's DID and URLs.

    Args:
        mediator: the mediator's base URL (``https://host``; ``…/didcomm`` and
            ``…/invitation`` work too), its invitation URL (``…?_oob=…``) or JSON, or
            its DID.  A :class:`MediatorInfo` is returned as is.

    Raises:
        InvitationError: the invitation is malformed.
        DIDError: the DID is malformed or has no DIDComm service.
        MediationError: the URL cannot be reached (``e.p.xfer``).
    """
    if isinstance(mediator, MediatorInfo):
        return mediator
    from didsession.envelope import Envelope
    from didsession.invitation import parse_invitation

    envelope = resolver_envelope or Envelope()
    text = mediator.strip()
    invitation: Invitation | None = None
    if text.startswith("did:"):
        did = text
    elif "_oob=" in text or text.startswith("{"):
        invitation = parse_invitation(text, envelope.resolver)
        did = invitation.did
    elif text.startswith(("http://", "https://", "ws://", "wss://")):
        url = http_base(text) + "/invitation"
        body = (await http_get(url, timeout)).decode(errors="replace")
        invitation = parse_invitation(body, envelope.resolver)
        did = invitation.did
    else:
        raise InvitationError(
            f"not a mediator URL, invitation or DID: {text[:60]!r} (use http(s)://, "
            "an invitation URL with _oob=, or did:)"
        )
    return info_for(did, _service_uri(envelope, did), invitation)


def _service_uri(envelope: Envelope, did: str) -> str | None:
    """The ``uri`` of the DID's first DIDCommMessaging service (a URL or a DID)."""
    from pydid.service import DIDCommV2Service

    doc = envelope.resolver.parse_sync(did)
    for svc in doc.service or []:
        if isinstance(svc, DIDCommV2Service):
            ep = svc.service_endpoint
            first = ep[0] if isinstance(ep, list) else ep
            return str(first.uri) if first is not None else None
    return None


def _local_did(identity: Identity | str, envelope: Envelope | None) -> tuple[str, Envelope]:
    if isinstance(identity, str):
        if envelope is None or identity not in envelope.dids:
            raise EnvelopeError(f"no keys for {identity[:60]}…: pass its Identity or an Envelope")
        return identity, envelope
    if envelope is None:
        from didsession.envelope import Envelope

        envelope = Envelope()
    if identity.did not in envelope.dids:
        if identity.ed25519_secret is None or identity.x25519_secret is None:
            raise EnvelopeError(f"identity {identity.name!r} is locked: load it with its keys")
        envelope.add_identity(identity.did, identity.ed25519_secret, identity.x25519_secret)
    return identity.did, envelope


def _body(message: dict[str, Any]) -> dict[str, Any]:
    body = message.get("body")
    return body if isinstance(body, dict) else {}


_problem = problem_of


def _b64decode(text: Any) -> bytes:
    if not isinstance(text, str):
        raise MediationError("delivery attachment has no base64 data", code="e.p.msg")
    cleaned = text.strip().rstrip("=").replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise MediationError("delivery attachment is not base64", code="e.p.msg") from None


def parse_delivery(message: dict[str, Any]) -> list[Delivered]:
    """The messages in a pickup ``delivery``.  Raises MediationError if malformed."""
    attachments = message.get("attachments")
    if not isinstance(attachments, list):
        raise MediationError("delivery has no attachments", code="e.p.msg")
    out = []
    for att in attachments:
        if not isinstance(att, dict) or not isinstance(att.get("id"), str):
            raise MediationError("delivery attachment has no id", code="e.p.msg")
        data = att.get("data")
        if not isinstance(data, dict):
            raise MediationError("delivery attachment has no data", code="e.p.msg")
        if isinstance(data.get("json"), dict):
            raw = json.dumps(data["json"]).encode()
        else:
            raw = _b64decode(data.get("base64"))
        out.append(Delivered(att["id"], raw))
    return out


def _status(message: dict[str, Any]) -> PickupStatus:
    body = _body(message)
    count = body.get("message_count")
    if not isinstance(count, int):
        raise MediationError("status has no message_count", code="e.p.msg")
    return PickupStatus(
        count,
        body.get("total_bytes"),
        body.get("longest_waited_seconds"),
        body.get("live_delivery"),
        body.get("recipient_did"),
    )


# -- the client ----------------------------------------------------------------------------


class MediatorClient:
    """Talks to one mediator as one DID: mediation, keylist, pickup, live delivery.

    Args:
        mediator: where the mediator is (anything :func:`mediator_info` takes).
        identity: the party's unlocked :class:`~didsession.identity.Identity`, or its DID
            when ``envelope`` already holds its keys.
        envelope: the envelope to pack and unpack with (a new one by default).
        transport: ``http`` (a POST per request) or ``ws`` (one WebSocket, needed for
            :meth:`live`).
        timeout: seconds for each request and its reply.

    Use it as ``async with``; or call :meth:`connect` and :meth:`close`.
    """

    def __init__(
        self,
        mediator: str | MediatorInfo,
        identity: Identity | str,
        envelope: Envelope | None = None,
        *,
        transport: Literal["http", "ws"] = "http",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.did, self.envelope = _local_did(identity, envelope)
        self._mediator = mediator
        self.info: MediatorInfo | None = mediator if isinstance(mediator, MediatorInfo) else None
        self.transport = transport
        self.timeout = timeout
        self.undecryptable = 0  # delivered messages we could not decrypt (acknowledged)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._live: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def __aenter__(self) -> MediatorClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Find the mediator and, for ``ws``, open the WebSocket."""
        self.info = await mediator_info(
            self._mediator, resolver_envelope=self.envelope, timeout=self.timeout
        )
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        )
        if self.transport == "ws":
            try:
                self._ws = await self._session.ws_connect(
                    self.info.ws_url,
                    max_msg_size=4 << 20,
                    heartbeat=30.0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.timeout),
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                await self.close()
                raise MediationError(
                    f"cannot open {self.info.ws_url}: {why(exc)}", code=_XFER
                ) from None
            self._reader = asyncio.get_running_loop().create_task(self._read_ws())

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._fail_waiting(MediationError("the connection to the mediator closed", code=_XFER))
        self._live.put_nowait(None)

    # -- requests ------------------------------------------------------------------------
    async def request(
        self, type_: str, body: dict[str, Any], *, expect: Iterable[str] = ()
    ) -> dict[str, Any] | None:
        """Send one request (authcrypt, ``return_route: all``); its reply message, if any.

        Raises:
            MediationError: the mediator answered with a problem-report (its code), with
                an unexpected message type, or could not be reached (``e.p.xfer``).
        """
        if self.info is None or self._session is None:
            raise MediationError("call connect() first (or use async with)", code=_XFER)
        message = new_message(type_, body, frm=self.did, to=[self.info.did])
        message["return_route"] = "all"
        packed = await self.envelope.pack(message, to=self.info.did, frm=self.did, forward=False)
        if self._ws is not None:
            reply: dict[str, Any] | None = await self._request_ws(message["id"], packed.data)
        else:
            reply = await self._request_http(packed.data)
        if reply is None:
            return None
        problem = _problem(reply)
        if problem is not None:
            raise problem
        wanted = tuple(expect)
        if wanted and reply.get("type") not in wanted:
            raise MediationError(
                f"expected {' or '.join(wanted)}, got {str(reply.get('type'))[:80]}",
                code="e.p.msg",
            )
        return reply

    async def _request_http(self, data: bytes) -> dict[str, Any] | None:
        assert self.info is not None and self._session is not None
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.post(
                    self.info.endpoint, data=data, headers={"Content-Type": ENCRYPTED}
                ) as resp:
                    body = await resp.read()
                    ctype = resp.content_type
                    status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise MediationError(
                f"cannot reach the mediator at {self.info.endpoint}: {why(exc)}", code=_XFER
            ) from None
        if status == 202 or not body:
            return None
        if ctype not in (ENCRYPTED, "application/didcomm-plain+json", "application/json"):
            raise MediationError(f"mediator answered HTTP {status} ({ctype})", code=_XFER)
        return await self._open(body)

    async def _open(self, data: bytes) -> dict[str, Any]:
        """A reply from the mediator: authcrypt from its DID, or a plaintext message."""
        assert self.info is not None
        try:
            doc = parse_json(data)
        except (ValueError, UnicodeDecodeError):
            raise MediationError("the mediator's reply is not JSON", code="e.p.msg") from None
        if not isinstance(doc, dict):
            raise MediationError("the mediator's reply is not a JSON object", code="e.p.msg")
        if "ciphertext" not in doc:
            return doc  # plaintext: only problem-reports and anonymous ping-responses
        unpacked = await self.envelope.unpack(data)
        if unpacked.sender_did != self.info.did:
            raise MediationError("a reply was not authcrypted by the mediator", code="e.p.trust")
        return unpacked.message

    async def _request_ws(self, msg_id: str, data: bytes) -> dict[str, Any] | None:
        assert self._ws is not None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        try:
            await self._ws.send_str(data.decode())
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise MediationError("the mediator did not answer in time", code=_XFER) from None
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise MediationError(f"WebSocket failed: {why(exc)}", code=_XFER) from None
        finally:
            self._waiting.pop(msg_id, None)

    async def _read_ws(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                raw = msg.data.encode() if isinstance(msg.data, str) else msg.data
                try:
                    message = await self._open(raw)
                except DidSessionError:
                    continue  # not for us or not from the mediator: ignore it
                thread = message.get("thid") or message.get("pthid")
                future = self._waiting.get(thread) if isinstance(thread, str) else None
                if future is not None and not future.done():
                    future.set_result(message)
                elif message.get("type") == DELIVERY:
                    self._live.put_nowait(message)
        finally:
            self._fail_waiting(MediationError("the mediator closed the WebSocket", code=_XFER))
            self._live.put_nowait(None)

    def _fail_waiting(self, exc: MediationError) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(exc)

    # -- Coordinate Mediation 2.0 ----------------------------------------------------------
    async def mediate(self) -> str:
        """Ask for mediation; the ``routing_did``.  MediationError if denied."""
        reply = await self.request(MEDIATE_REQUEST, {}, expect=(MEDIATE_GRANT, MEDIATE_DENY))
        assert reply is not None
        if reply["type"] == MEDIATE_DENY:
            raise MediationError("the mediator denied mediation", code="e.p.req.denied")
        routing = reply.get("body", {}).get("routing_did")
        if isinstance(routing, list) and routing:  # coordinate-mediation 3.0 sends a list
            routing = routing[0]
        if not isinstance(routing, str) or not routing.startswith("did:"):
            raise MediationError("mediate-grant has no routing_did", code="e.p.msg")
        return routing

    async def keylist_update(
        self, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> dict[str, str]:
        """Add and remove routed DIDs; ``{did: result}`` (``success``, ``no_change``,
        ``client_error``, ``server_error``)."""
        updates = [{"recipient_did": d, "action": "add"} for d in add]
        updates += [{"recipient_did": d, "action": "remove"} for d in remove]
        reply = await self.request(
            KEYLIST_UPDATE, {"updates": updates}, expect=(KEYLIST_UPDATE_RESPONSE,)
        )
        assert reply is not None
        updated = reply.get("body", {}).get("updated")
        if not isinstance(updated, list):
            raise MediationError("keylist-update-response has no updated list", code="e.p.msg")
        return {
            str(u.get("recipient_did")): str(u.get("result"))
            for u in updated
            if isinstance(u, dict)
        }

    async def keylist(self) -> list[str]:
        """Every DID routed to this party."""
        out: list[str] = []
        while True:
            reply = await self.request(
                KEYLIST_QUERY, {"paginate": {"limit": 100, "offset": len(out)}}, expect=(KEYLIST,)
            )
            assert reply is not None
            body = reply.get("body", {})
            keys = [k.get("recipient_did") for k in body.get("keys", []) if isinstance(k, dict)]
            out += [k for k in keys if isinstance(k, str)]
            if not keys or not body.get("pagination", {}).get("remaining"):
                return out

    # -- Message Pickup 3.0 ----------------------------------------------------------------
    async def status(self, recipient_did: str | None = None) -> PickupStatus:
        body = {"recipient_did": recipient_did} if recipient_did else {}
        reply = await self.request(STATUS_REQUEST, body, expect=(STATUS,))
        assert reply is not None
        return _status(reply)

    async def fetch(self, limit: int = 10, recipient_did: str | None = None) -> list[Delivered]:
        """``delivery-request``: up to ``limit`` queued messages (still queued until
        :meth:`ack`)."""
        body: dict[str, Any] = {"limit": limit}
        if recipient_did:
            body["recipient_did"] = recipient_did
        reply = await self.request(DELIVERY_REQUEST, body, expect=(DELIVERY, STATUS))
        assert reply is not None
        return parse_delivery(reply) if reply["type"] == DELIVERY else []

    async def ack(self, ids: Sequence[str]) -> PickupStatus:
        """``messages-received``: the mediator deletes these; the queue's new status."""
        reply = await self.request(
            MESSAGES_RECEIVED, {"message_id_list": list(ids)}, expect=(STATUS,)
        )
        assert reply is not None
        return _status(reply)

    async def pickup(self, limit: int = 10) -> list[Received]:
        """Fetch, decrypt and acknowledge up to ``limit`` messages (oldest first).

        Messages that cannot be decrypted are acknowledged too (they would block the
        queue) and counted in :attr:`undecryptable`; duplicates (already received live)
        are acknowledged and skipped.
        """
        delivered = await self.fetch(limit)
        received = await self._unpack_all(delivered)
        if delivered:
            await self.ack([d.id for d in delivered])
        return received

    async def pickup_all(self, batch: int = 50) -> list[Received]:
        """Everything queued, in batches of ``batch``."""
        out: list[Received] = []
        while True:
            got = await self.fetch(batch)
            if not got:
                return out
            out += await self._unpack_all(got)
            await self.ack([d.id for d in got])

    async def _unpack_all(self, delivered: Sequence[Delivered]) -> list[Received]:
        out = []
        for item in delivered:
            if item.id in self._seen:
                continue
            self._seen[item.id] = None
            if len(self._seen) > _SEEN_IDS:
                self._seen.popitem(last=False)
            try:
                out.append(Received(item.id, await self.envelope.unpack(item.data)))
            except DidSessionError:
                self.undecryptable += 1
        return out

    async def live(self, *, catch_up: bool = True) -> AsyncIterator[Received]:
        """Turn live delivery on and yield messages as the mediator pushes them.

        With ``catch_up`` (default), what was queued before is fetched and yielded first;
        a message both pushed and fetched is yielded once.

        Each pushed message is acknowledged once the consumer asks for the next one, or
        when the iteration ends.
        Ends when the WebSocket closes.
        """
        if self._ws is None:
            raise MediationError(
                "live delivery needs transport='ws'", code="e.m.live-mode-not-supported"
            )
        await self.set_live(True)
        pending: list[str] = []
        try:
            while catch_up:  # what was queued before: no gap between pickup and live mode
                delivered = await self.fetch(50)
                if not delivered:
                    break
                pending = [d.id for d in delivered]
                for item in await self._unpack_all(delivered):
                    yield item
                await self.ack(pending)
                pending = []
            while True:
                if pending:
                    await self.ack(pending)
                    pending = []
                message = await self._live.get()
                if message is None:
                    return
                try:
                    delivered = parse_delivery(message)
                except MediationError:
                    continue
                pending = [d.id for d in delivered]
                for item in await self._unpack_all(delivered):
                    yield item
        finally:
            if pending and self._ws is not None and not self._ws.closed:
                with contextlib.suppress(MediationError):
                    await self.ack(pending)

    async def set_live(self, live: bool) -> PickupStatus:
        reply = await self.request(LIVE_DELIVERY_CHANGE, {"live_delivery": live}, expect=(STATUS,))
        assert reply is not None
        return _status(reply)

    # -- Trust Ping, Discover Features ------------------------------------------------------
    async def ping(self) -> None:
        await self.request(PING, {"response_requested": True}, expect=(PING_RESPONSE,))

    async def features(self, match: str = "*") -> list[str]:
        """Protocol URIs the mediator discloses for ``match`` (a glob)."""
        reply = await self.request(
            QUERIES, {"queries": [{"feature-type": "protocol", "match": match}]}, expect=(DISCLOSE,)
        )
        assert reply is not None
        return [
            d["id"]
            for d in reply.get("body", {}).get("disclosures", [])
            if isinstance(d, dict) and isinstance(d.get("id"), str)
        ]


async def request_mediation(
    identity: Identity | str,
    mediator: str | MediatorInfo,
    envelope: Envelope | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    require_routing: bool = True,
) -> MediationGrant:
    """Ask ``mediator`` to receive for ``identity`` and put its DID on the keylist.

    Coordinate Mediation 2.0: ``mediate-request`` (authcrypt from the identity's DID),
    then ``keylist-update`` adding that DID.  The identity's DID should already name the
    mediator as its route: create it with ``Store.create(name, mediator=info.did)`` where
    ``info = await mediator_info(url)`` (the grant's ``routing_did`` is the mediator's
    DID).

    Args:
        require_routing: check that the DID's DIDCommMessaging service ``uri`` is the
            grant's ``routing_did``, so senders really forward through this mediator.

    Raises:
        MediationError: denied (``e.p.req.denied``), the DID not routable there, the DID's
            service not naming ``routing_did``, or the mediator unreachable (``e.p.xfer``).
    """
    async with MediatorClient(mediator, identity, envelope, timeout=timeout) as client:
        assert client.info is not None
        routing_did = await client.mediate()
        results = await client.keylist_update(add=[client.did])
        result = results.get(client.did)
        if result not in ("success", "no_change"):
            raise MediationError(
                f"the mediator would not route {client.did[:60]}…: {result}",
                code="e.p.req.keylist",
            )
        if require_routing:
            uri = _service_uri(client.envelope, client.did)
            if uri != routing_did:
                raise MediationError(
                    f"the DID's service names {uri!r}, not the routing DID the mediator "
                    f"granted ({routing_did[:60]}…): create the identity with "
                    "mediator=<routing_did>",
                    code="e.p.req.routing",
                )
        return MediationGrant(client.info.did, routing_did, client.info.endpoint, (client.did,))


async def send_packed(packed: Packed, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """POST a packed message to its endpoint (a mediator accepts it durably, then 202).

    Raises:
        MediationError: no HTTP endpoint, refused (the problem-report's code if the mediator
            sent one in plaintext) or unreachable (``e.p.xfer``).
    """
    if not packed.endpoint or not packed.endpoint.startswith(("http://", "https://")):
        raise MediationError(f"no HTTP endpoint to send to ({packed.endpoint!r})", code=_XFER)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(
                packed.endpoint, data=packed.data, headers={"Content-Type": ENCRYPTED}
            ) as resp,
        ):
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise MediationError(f"cannot reach {packed.endpoint}: {why(exc)}", code=_XFER) from None
    if 200 <= status < 300:
        return
    try:
        doc = parse_json(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    problem = _problem(doc) if isinstance(doc, dict) else None
    raise problem or MediationError(f"{packed.endpoint} answered HTTP {status}", code=_XFER)


# -- the session relay ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_relay(
    mediator: str | MediatorInfo,
    identity: Identity | str,
    session_id: str,
    peer_did: str,
    *,
    envelope: Envelope | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    wait: float = 60.0,
    max_frame: int = 64 << 10,
) -> AsyncIterator[RelayLink]:
    """Open the mediator's relay for ``session_id`` with ``peer_did``; yields when the peer
    has opened its side too.

    The mediator challenges the connection with a nonce; this side answers with an
    ``open`` authcrypted from its DID, so the slot is provably its own.  Frames are
    relayed as they are: encrypt them end to end (the session protocol does).  This is
    :func:`didsession.relay_client.relay_link` with the envelope packing the ``open``
    (and :func:`mediator_info` finding the mediator).

    Args:
        wait: seconds to wait for the peer (the mediator gives up at its own limit).
        max_frame: the largest frame to accept from the mediator.

    Raises:
        MediationError: refused (``e.p.trust``, ``e.p.req.busy``, ``e.p.me.res.quota``),
            the peer did not come (``e.p.req.time``) or the relay unreachable (``e.p.xfer``).
    """
    me, env = _local_did(identity, envelope)
    info = await mediator_info(mediator, resolver_envelope=env, timeout=timeout)

    async def pack(plaintext: bytes, to: str) -> bytes:
        return (await env.pack_plaintext(plaintext, to=to, frm=me, forward=False)).data

    async with relay_link(
        info, me, session_id, peer_did, pack, timeout=timeout, wait=wait, max_frame=max_frame
    ) as link:
        yield link


def new_session_id() -> str:
    """A fresh random session id for :func:`open_relay` (both sides must use the same)."""
    return uuid.uuid4().hex
