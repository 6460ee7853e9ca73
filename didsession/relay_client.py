"""The light client of a mediator's session relay: find the mediator, open the relay.

:func:`relay_link` is what an MPyC party (:func:`mpyc_adapter.paths.open_relay_path`) uses
for each relayed link.  It needs aiohttp and :mod:`didsession.authcrypt`, nothing else:

* the mediator's DID and relay URL are learned once per process (:func:`relay_info`,
  cached by the mediator string).  A mediator URL costs one ``GET <url>/invitation``; the
  OOB invitation is parsed here and the endpoint is read from the DID string itself (the
  service elements of a did:peer:2, the document of a long-form did:peer:4), with no DID
  library.  Only a mediator whose DID is of another kind goes through
  :func:`didsession.mediation.mediator_info` (pydid and the DIDComm libraries, imported
  then);
* the relay's ``open`` is authcrypted by a ``pack`` callable (plaintext JSON bytes and the
  recipient DID in, the JWE out): :meth:`didsession.peer.HandshakeCodec.pack` does it on
  ``cryptography`` alone.

:func:`didsession.mediation.open_relay` is the same relay for code that holds an
:class:`~didsession.envelope.Envelope`.  Every failure is a
:class:`~didsession.errors.MediationError` (``e.p.xfer`` when the mediator cannot be
reached), or the :class:`~didsession.errors.InvitationError` /
:class:`~didsession.errors.DIDError` that :func:`~didsession.mediation.mediator_info`
raises for a malformed invitation or DID.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp

from didsession._dataclass import dataclass
from didsession.authcrypt import NeedsFullEnvelope, check_did_syntax, did_keys, new_message
from didsession.errors import DIDError, InvitationError, MediationError
from didsession.tcp_liveness import VANISHED, keep_alive, watch
from didsession.untrusted import parse_json

if TYPE_CHECKING:
    from didsession.invitation import Invitation

__all__ = [
    "DEFAULT_TIMEOUT",
    "MediatorInfo",
    "RelayLink",
    "RelayPackFn",
    "forget_relay_info",
    "http_get",
    "new_message",
    "relay_info",
    "relay_link",
    "service_uri",
]

DEFAULT_TIMEOUT: Final = 15.0

PROBLEM_REPORT: Final = "https://didcomm.org/report-problem/2.0/problem-report"
RELAY_CHALLENGE: Final = "https://didsession.dev/relay/1.0/challenge"
RELAY_OPEN: Final = "https://didsession.dev/relay/1.0/open"
RELAY_STATUS: Final = "https://didsession.dev/relay/1.0/status"
INVITATION_TYPE: Final = "https://didcomm.org/out-of-band/2.0/invitation"
# The same limit as didsession.invitation.
MAX_INVITATION_BYTES: Final = 16 * 1024
XFER: Final = "e.p.xfer"
# The close code of a relayed session whose other client the mediator found gone
# (spec/session.md §10: the peer's machine stopped answering).
PEER_SILENT: Final = "e.p.msg.session.timeout"
# How often a link pings the mediator when it has no liveness timeout.
PING_EVERY: Final = 30.0

RelayPackFn = Callable[[bytes, str], Awaitable[bytes]]
"""Authcrypt plaintext JSON bytes from the local DID to a DID: the packed bytes."""

# did:peer:2 service abbreviations (did:peer spec, "Service Encoding"; did_peer_2).
_EXPAND = {"t": "type", "s": "serviceEndpoint", "r": "routingKeys", "a": "accept"}


# -- finding the mediator ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediatorInfo:
    """Where a mediator is: its DID and URLs (from its invitation or DID document).

    Attributes:
        did: the mediator's DID (what ``routing_did`` usually is).
        endpoint: the HTTP URL DIDComm messages are POSTed to (its DID's service).
        ws_url: the DIDComm WebSocket (live delivery).
        relay_url: the session relay WebSocket.
        invitation: the invitation it was found by, if any (:func:`relay_info` keeps none).
    """

    did: str
    endpoint: str
    ws_url: str
    relay_url: str
    invitation: Invitation | None = None


def info_for(did: str, endpoint: str | None, invitation: Invitation | None = None) -> MediatorInfo:
    """The mediator at ``did`` whose DIDComm service is ``endpoint``.

    Raises:
        DIDError: ``endpoint`` is not an HTTP(S) URL.
    """
    if endpoint is None or not endpoint.startswith(("http://", "https://")):
        raise DIDError(f"the mediator DID {did[:60]}… has no HTTP(S) DIDComm endpoint")
    try:
        base = http_base(endpoint)
    except ValueError as exc:  # urlsplit: e.g. "Invalid IPv6 URL"
        raise DIDError(
            f"the mediator DID {did[:60]}… has a malformed DIDComm endpoint: {exc}"
        ) from None
    ws_base = "ws" + base[4:] if base.startswith("http") else base
    return MediatorInfo(did, endpoint, ws_base + "/ws", ws_base + "/relay", invitation)


def http_base(url: str) -> str:
    """``scheme://host:port[/prefix]`` of a mediator URL, without our route names."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    for suffix in ("/didcomm", "/invitation", "/invitation.json", "/ws", "/relay"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urlunsplit((scheme, parts.netloc, path, "", "")).rstrip("/")


def service_uri(did: str) -> str | None:
    """The ``uri`` of the first DIDCommMessaging service of a did:peer:2 or long-form
    did:peer:4, read from the DID string (what a resolved document says); None if it has
    no such service.

    Raises:
        DIDError: the DID is malformed (or has no usable keyAgreement key).
        NeedsFullEnvelope: a DID of another kind: resolve it with the full resolver.
    """
    keys = did_keys(did)  # the same checks as the full resolver: syntax, keys
    if keys.short is not None:  # long-form did:peer:4: its document is in the DID
        import did_peer_4

        services = did_peer_4.resolve(did).get("service") or []
    else:
        services = [_peer2_service(did, el[1:]) for el in did.split(".")[1:] if el[0] == "S"]
    for service in services:
        found = _messaging_uri(service)
        if found is not None:
            return found
    return None


def _peer2_service(did: str, encoded: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        service = parse_json(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise DIDError(f"malformed peer DID {did[:60]!r}…: undecodable service") from None
    return _expand(service)


def _expand(value: Any) -> Any:
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {_EXPAND.get(k, k): _expand(v) for k, v in value.items()}
    if out.get("type") == "dm":
        out["type"] = "DIDCommMessaging"
    return out


def _messaging_uri(service: Any) -> str | None:
    """The first endpoint ``uri`` of a DIDCommMessaging service, else None."""
    if not isinstance(service, dict) or service.get("type") != "DIDCommMessaging":
        return None
    endpoint = service.get("serviceEndpoint")
    if isinstance(endpoint, list):
        endpoint = endpoint[0] if endpoint else None
    if isinstance(endpoint, dict):
        endpoint = endpoint.get("uri")
    return endpoint if isinstance(endpoint, str) and endpoint else None


def _invitation_did(source: str | bytes) -> str:
    """The inviter's DID of an OOB 2.0 invitation (URL with ``_oob=`` or JSON), checked as
    :func:`didsession.invitation.parse_invitation` checks it.

    Raises:
        InvitationError: malformed, or the inviter's DID unusable.
        NeedsFullEnvelope: a DID the light code cannot read (the full parser can).
    """
    if len(source) > MAX_INVITATION_BYTES:
        raise InvitationError(
            f"invitation is {len(source)} bytes or more; the limit is {MAX_INVITATION_BYTES} bytes"
        )
    try:
        text = source.decode("utf-8") if isinstance(source, bytes) else source
    except UnicodeDecodeError:
        raise InvitationError("invitation is not UTF-8 text") from None
    text = text.strip()
    if not text.startswith(("{", "[")):
        values = parse_qs(urlsplit(text).query).get("_oob") or []
        if len(values) != 1:
            raise InvitationError("invitation URL has no single _oob parameter")
        encoded = values[0].strip().rstrip("=")
        try:
            text = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, ValueError):
            raise InvitationError("the _oob parameter is not base64url UTF-8 JSON") from None
    try:
        message = parse_json(text)
    except ValueError:
        raise InvitationError("invitation is not valid JSON") from None
    if not isinstance(message, dict):
        raise InvitationError("invitation must be a JSON object")
    if message.get("type") != INVITATION_TYPE:
        typ = str(message.get("type"))[:80]
        raise InvitationError(f"not an out-of-band 2.0 invitation: type is {typ!r}")
    inv_id, did, body = message.get("id"), message.get("from"), message.get("body")
    if not isinstance(inv_id, str) or not inv_id or len(inv_id) > 256:
        raise InvitationError("invitation has no valid id")
    if not isinstance(did, str):
        raise InvitationError("invitation has no 'from' DID: there is nobody to connect to")
    if not isinstance(body, dict):
        raise InvitationError("invitation has no body object")
    accept = body.get("accept")
    if accept is not None and (not isinstance(accept, list) or "didcomm/v2" not in accept):
        raise InvitationError("invitation does not accept didcomm/v2")
    try:
        check_did_syntax(did)
        did_keys(did)
    except NeedsFullEnvelope:
        raise
    except DIDError as exc:
        raise InvitationError(f"the inviter's DID is unusable: {exc.message}") from exc
    return did


async def http_get(url: str, timeout: float) -> bytes:
    """GET ``url`` (an invitation): its body, cut just past ``MAX_INVITATION_BYTES`` so
    that the invitation's size check refuses it without reading more."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                raise MediationError(f"{url} answered HTTP {resp.status}", code=XFER)
            data = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 14):
                data += chunk
                if len(data) > MAX_INVITATION_BYTES:
                    break  # refused by the size check of the invitation
            return bytes(data)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise MediationError(f"cannot reach {url}: {why(exc)}", code=XFER) from None


async def _find(mediator: str, timeout: float) -> MediatorInfo:
    text = mediator.strip()
    try:
        if text.startswith("did:"):
            did = text
        elif "_oob=" in text or text.startswith("{"):
            did = _invitation_did(text)
        elif text.startswith(("http://", "https://", "ws://", "wss://")):
            did = _invitation_did(await http_get(http_base(text) + "/invitation", timeout))
        else:
            raise InvitationError(
                f"not a mediator URL, invitation or DID: {text[:60]!r} (use http(s)://, "
                "an invitation URL with _oob=, or did:)"
            )
        return info_for(did, service_uri(did))
    except NeedsFullEnvelope:
        from didsession.mediation import mediator_info  # pydid and the DIDComm libraries

        return await mediator_info(text, timeout=timeout)


_known: dict[str, MediatorInfo] = {}
_finding: dict[str, asyncio.Task[MediatorInfo]] = {}


async def relay_info(
    mediator: str | MediatorInfo, *, timeout: float = DEFAULT_TIMEOUT
) -> MediatorInfo:
    """Find a mediator's DID and URLs, once per process: what
    :func:`didsession.mediation.mediator_info` finds (without the invitation), cached by
    the mediator string.  Concurrent callers share one look-up; a failed one is not kept.

    Raises:
        InvitationError / DIDError: the invitation or the DID is malformed, or the DID has
            no HTTP(S) DIDComm endpoint.
        MediationError: the URL cannot be reached (``e.p.xfer``).
    """
    if isinstance(mediator, MediatorInfo):
        return mediator
    known = _known.get(mediator)
    if known is not None:
        return known
    loop = asyncio.get_running_loop()
    task = _finding.get(mediator)
    if task is None or task.done() or task.get_loop() is not loop:
        task = loop.create_task(_find(mediator, timeout))
        _finding[mediator] = task
        task.add_done_callback(lambda t: _found(mediator, t))
    return await asyncio.shield(task)


def _found(mediator: str, task: asyncio.Task[MediatorInfo]) -> None:
    if _finding.get(mediator) is task:
        del _finding[mediator]
    if not task.cancelled() and task.exception() is None:
        _known[mediator] = task.result()


def forget_relay_info(mediator: str | None = None) -> None:
    """Look ``mediator`` up again next time (every mediator if None)."""
    if mediator is None:
        _known.clear()
    else:
        _known.pop(mediator, None)


# -- the relay -----------------------------------------------------------------------------


def why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def problem_of(message: dict[str, Any]) -> MediationError | None:
    """The MediationError a problem-report stands for (None for any other message)."""
    if message.get("type") != PROBLEM_REPORT:
        return None
    body = message.get("body")
    body = body if isinstance(body, dict) else {}
    code = body.get("code") if isinstance(body.get("code"), str) else "e.p.req"
    comment = str(body.get("comment") or "the mediator refused the request")
    return MediationError(f"mediator: {comment}", code=code)


class RelayLink:
    """One end of a relayed session: opaque frames to and from the peer.

    ``await send(frame)`` / ``await recv()``; ``async for frame in link``; or
    :meth:`streams` for code written against asyncio streams (the session protocol).
    The link ends when either side closes it: :meth:`recv` then raises MediationError
    (``e.p.xfer.closed`` when the peer left, the mediator's reason otherwise).
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession,
        liveness: float = 0.0,
    ) -> None:
        self._ws = ws
        self._session = session
        self.closed_reason: str | None = None
        self._mediator_gone = False
        if liveness > 0:
            keep_alive(ws, liveness)
        self._watch = asyncio.get_running_loop().create_task(self._watching(liveness))

    async def _watching(self, timeout: float) -> None:
        """Ping the mediator every half ``timeout`` (every :data:`PING_EVERY` s without
        one), so NATs and proxies see traffic, without waiting for its pong: this program
        may not run its event loop for minutes (an MPyC party computing), and a pong read
        late must not end the link.  The mediator is gone once its machine has answered
        nothing for ``timeout`` (:mod:`didsession.tcp_liveness`)."""
        ws = self._ws
        every = timeout / 2 if timeout > 0 else PING_EVERY
        if await watch(ws, ws.ping, lambda: ws.closed, every=every, timeout=timeout):
            self._mediator_gone = True
            with contextlib.suppress(Exception):
                await ws.close(message=b"the mediator stopped answering")

    async def send(self, frame: bytes) -> None:
        """Send one frame (waits while the peer reads slowly)."""
        if self._ws.closed:
            raise MediationError(
                f"relay closed: {self.closed_reason or 'closed'}", code="e.p.xfer.closed"
            )
        try:
            await self._ws.send_bytes(frame)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise MediationError(f"relay closed: {why(exc)}", code="e.p.xfer.closed") from None

    async def recv(self) -> bytes:
        """The next frame from the peer."""
        while True:
            msg = await self._ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                return bytes(msg.data)
            if msg.type is aiohttp.WSMsgType.TEXT:
                continue
            if self._mediator_gone or isinstance(self._ws.exception(), TimeoutError):
                # our check, or the kernel's keepalive (ETIMEDOUT)
                self.closed_reason = "the mediator stopped answering"
                raise MediationError(f"relay closed: {self.closed_reason}", code=XFER)
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                reason = msg.extra or self._ws.close_code
                self.closed_reason = str(reason or "closed")
                code = "e.p.xfer.closed"
                if self.closed_reason == VANISHED:
                    code = PEER_SILENT
                if self._ws.close_code == 1008:
                    code = "e.p.me.res.quota" if "quota" in self.closed_reason else XFER
                raise MediationError(f"relay closed: {self.closed_reason}", code=code)
            if msg.type is aiohttp.WSMsgType.ERROR:
                raise MediationError(f"relay failed: {msg.data}", code=XFER)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv()
            except MediationError:
                return

    async def close(self) -> None:
        self._watch.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close()
        await self._session.close()

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The link as an asyncio stream pair: written bytes go out as frames, frames
        arrive as readable bytes (the session protocol's ``open_session`` takes these)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = _RelayTransport(self, protocol, reader)
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer


class _RelayTransport(asyncio.Transport):
    """Bytes written become relay frames, in order; frames received feed the reader."""

    _HIGH = 1 << 18

    def __init__(
        self, link: RelayLink, protocol: asyncio.StreamReaderProtocol, reader: asyncio.StreamReader
    ) -> None:
        super().__init__()
        self._link = link
        self._protocol = protocol
        self._pending: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._closing = False
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._send_loop()),
            loop.create_task(self._recv_loop(reader)),
        ]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._pending.append(bytes(data))
        self._size += len(data)
        self._wake.set()
        if not self._paused and self._size > self._HIGH:
            self._paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._size

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        asyncio.get_running_loop().create_task(self._link.close())

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": "relay", "sockname": "relay"}.get(name, default)

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    frame = self._pending.popleft()
                    await self._link.send(frame)
                    self._size -= len(frame)
                    if self._paused and self._size <= self._HIGH // 4:
                        self._paused = False
                        self._protocol.resume_writing()
                if self._closing:
                    await self._link.close()
                    return
        except MediationError as exc:
            self._closing = True
            self._protocol.connection_lost(exc)

    async def _recv_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await self._link.recv()
                self._protocol.data_received(frame)
        except MediationError:
            self._protocol.eof_received()
            self._protocol.connection_lost(None)


@contextlib.asynccontextmanager
async def relay_link(
    mediator: str | MediatorInfo,
    local_did: str,
    session_id: str,
    peer_did: str,
    pack: RelayPackFn,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    wait: float = 60.0,
    max_frame: int = 64 << 10,
    liveness: float = 60.0,
) -> AsyncIterator[RelayLink]:
    """Open the mediator's relay for ``session_id`` with ``peer_did``; yields when the peer
    has opened its side too.

    The mediator challenges the connection with a nonce; this side answers with an
    ``open`` that ``pack`` authcrypts from ``local_did`` to the mediator, so the slot is
    provably its own.  Frames are relayed as they are: encrypt them end to end (the
    session protocol does).

    Args:
        mediator: anything :func:`relay_info` takes (a string is looked up once per
            process).
        pack: authcrypt plaintext bytes from ``local_did`` to a DID
            (:meth:`didsession.peer.HandshakeCodec.pack`).
        wait: seconds to wait for the peer (the mediator gives up at its own limit).
        max_frame: the largest frame to accept from the mediator.
        liveness: the link ends once the mediator's machine has answered nothing for this
            many seconds (0: only when TCP gives up); see :class:`RelayLink`.

    Raises:
        MediationError: refused (``e.p.trust``, ``e.p.req.busy``, ``e.p.me.res.quota``),
            the peer did not come (``e.p.req.time``) or the relay unreachable (``e.p.xfer``).
        InvitationError / DIDError: as :func:`relay_info`.
    """
    info = await relay_info(mediator, timeout=timeout)
    try:
        link = await _open(
            info, local_did, session_id, peer_did, pack, timeout, wait, max_frame, liveness
        )
    except MediationError as exc:
        if isinstance(mediator, str) and exc.code != "e.p.req.time":
            forget_relay_info(mediator)  # the mediator may have moved or changed its DID
        raise
    try:
        yield link
    finally:
        await link.close()


async def _open(
    info: MediatorInfo,
    me: str,
    session_id: str,
    peer_did: str,
    pack: RelayPackFn,
    timeout: float,
    wait: float,
    max_frame: int,
    liveness: float = 60.0,
) -> RelayLink:
    session = aiohttp.ClientSession()
    try:
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(info.relay_url, max_msg_size=max_frame),
                timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise MediationError(f"cannot open {info.relay_url}: {why(exc)}", code=XFER) from None
    except BaseException:
        await session.close()
        raise
    link = RelayLink(ws, session, liveness)
    try:
        first = await _control(ws, timeout)
        if first.get("type") != RELAY_CHALLENGE:
            raise MediationError("the relay sent no challenge", code="e.p.msg")
        body = first.get("body")
        nonce = body.get("nonce") if isinstance(body, dict) else None
        message = new_message(
            RELAY_OPEN,
            {"nonce": nonce, "session_id": session_id, "peer_did": peer_did},
            frm=me,
            to=[info.did],
        )
        packed = await pack(json.dumps(message).encode(), info.did)
        try:
            await ws.send_str(packed.decode())
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise MediationError(f"the relay closed: {why(exc)}", code=XFER) from None
        while True:
            reply = await _control(ws, wait)
            body = reply.get("body")
            state = body.get("state") if isinstance(body, dict) else None
            if reply.get("type") == RELAY_STATUS and state == "ready":
                return link
            if reply.get("type") != RELAY_STATUS or state != "waiting":
                raise MediationError("unexpected relay message", code="e.p.msg")
    except BaseException:
        await link.close()
        raise


async def _control(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any]:
    """The next control message (JSON text) from the relay; its problem-report raised."""
    try:
        msg = await ws.receive(timeout=timeout)
    except TimeoutError:
        raise MediationError("the relay did not answer in time", code="e.p.req.time") from None
    if msg.type is not aiohttp.WSMsgType.TEXT:
        reason = msg.extra if msg.type is aiohttp.WSMsgType.CLOSE else msg.type.name
        raise MediationError(f"the relay closed: {reason}", code=XFER)
    try:
        doc = parse_json(msg.data)
    except ValueError:
        raise MediationError("the relay sent something that is not JSON", code="e.p.msg") from None
    if not isinstance(doc, dict):
        raise MediationError("the relay sent something that is not an object", code="e.p.msg")
    problem = problem_of(doc)
    if problem is not None:
        raise problem
    return doc
