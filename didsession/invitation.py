"""DIDComm Out-of-Band 2.0 invitations: make, encode as URL / QR, and parse strictly.

An invitation is a plaintext DIDComm message of type ``.../out-of-band/2.0/invitation``
whose ``from`` is the inviter's DID (spec: "Out Of Band Messages").  Its URL form is
``BASE?_oob=<base64url(JSON), no padding>``.  Parsing accepts the URL, the JSON, or a
file holding either, and refuses anything else with an :class:`InvitationError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import uuid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import segno

from didsession._dataclass import dataclass
from didsession.did import PeerResolver, check_did_syntax
from didsession.errors import DIDError, InvitationError
from didsession.untrusted import parse_json

__all__ = [
    "DEFAULT_BASE_URL",
    "INVITATION_TYPE",
    "MAX_INVITATION_BYTES",
    "Invitation",
    "make_invitation",
    "parse_invitation",
    "qr_code",
]

INVITATION_TYPE = "https://didcomm.org/out-of-band/2.0/invitation"
GOAL_CODE = "didsession.connect"
DEFAULT_BASE_URL = "https://didsession.dev/invite"
# The largest invitation we make (did:peer:4 long form with a service) is ~2 KB as a URL;
# 16 KiB leaves room for other implementations and still bounds what we parse.
MAX_INVITATION_BYTES = 16 * 1024
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_URL_START = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|didcomm:)")


@dataclass(frozen=True, slots=True)
class Invitation:
    """A validated OOB 2.0 invitation."""

    id: str
    did: str
    label: str | None
    goal_code: str | None
    message: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.message, separators=(",", ":"))

    def to_url(self, base: str = DEFAULT_BASE_URL) -> str:
        encoded = base64.urlsafe_b64encode(self.to_json().encode()).rstrip(b"=").decode()
        return f"{base}?_oob={encoded}"


def make_invitation(did: str, label: str | None = None, *, inv_id: str | None = None) -> Invitation:
    """An invitation to open a didsession session with the holder of ``did``."""
    body: dict[str, Any] = {
        "goal_code": GOAL_CODE,
        "goal": f"Open a didsession session with {label or 'this party'}",
        "accept": ["didcomm/v2"],
    }
    if label:
        body["label"] = label
    # The id is derived from the DID so that every rendering of one identity's invitation
    # (URL, QR, JSON) is the same invitation; it is reusable by design.
    message: dict[str, Any] = {
        "type": INVITATION_TYPE,
        "id": inv_id or str(uuid.uuid5(uuid.NAMESPACE_URL, did)),
        "from": did,
        "body": body,
    }
    return Invitation(message["id"], did, label, GOAL_CODE, message)


def qr_code(url: str) -> segno.QRCode:
    """A QR code for ``url``, at the highest error correction level that fits."""
    for level in ("m", "l"):
        try:
            return segno.make(url, error=level, micro=False)
        except segno.DataOverflowError:
            continue
    raise InvitationError(f"invitation URL ({len(url)} chars) is too long for a QR code")


def render_qr(url: str, kind: Literal["png", "svg", "terminal"], scale: int = 8) -> bytes:
    """The QR code as PNG or SVG bytes, or as text for a terminal (half-block characters)."""
    qr = qr_code(url)
    if kind == "terminal":
        text = io.StringIO()
        qr.terminal(out=text, compact=True, border=2)
        return text.getvalue().encode()
    if kind == "svg":
        return _svg(qr, scale)
    buf = io.BytesIO()
    qr.save(buf, kind=kind, scale=scale, border=4, dark="#000", light="#fff")
    return buf.getvalue()


def _svg(qr: segno.QRCode, scale: int, border: int = 4) -> bytes:
    """SVG of filled squares on an opaque white background.

    segno draws modules as stroked lines, which ImageMagick's SVG renderer (what zbarimg
    uses) widens until the code no longer decodes; filled shapes render the same everywhere.
    """
    size = qr.symbol_size(scale=1, border=border)[0] * scale
    runs = []
    for y, row in enumerate(qr.matrix_iter(scale=1, border=border)):
        cells = list(row)
        x = 0
        while x < len(cells):
            if not cells[x]:
                x += 1
                continue
            start = x
            while x < len(cells) and cells[x]:
                x += 1
            w = (x - start) * scale
            runs.append(f"M{start * scale} {y * scale}h{w}v{scale}h-{w}z")
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}">'
        f'<rect width="{size}" height="{size}" fill="#fff" stroke="none"/>'
        f'<path fill="#000" stroke="none" d="{"".join(runs)}"/></svg>\n'
    ).encode()


def parse_invitation(source: str | bytes, resolver: PeerResolver | None = None) -> Invitation:
    """Parse an invitation URL or JSON (or the bytes of a file holding either).

    Raises:
        InvitationError: with a message saying what is wrong (size, base64, JSON, type,
            id, from, body) — never anything else.
    """
    if isinstance(source, bytes):
        if len(source) > MAX_INVITATION_BYTES:
            raise _too_big(len(source))
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            raise InvitationError("invitation is not UTF-8 text") from None
    if len(source) > MAX_INVITATION_BYTES:
        raise _too_big(len(source))
    text = source.strip()
    if not text:
        raise InvitationError("invitation is empty")
    if text.startswith(("{", "[")):
        payload = text
    elif _URL_START.match(text) or "_oob=" in text:
        payload = _oob_payload(text)
    else:
        raise InvitationError(
            "input is neither an invitation URL (…?_oob=…) nor invitation JSON ({…})"
        )
    try:
        message = parse_json(payload)
    except ValueError:
        raise InvitationError("invitation is not valid JSON") from None
    return _validate(message, resolver or PeerResolver(capacity=8))


def read_invitation_source(arg: str) -> str:
    """The invitation text named by a CLI argument: a URL, ``-`` (stdin) or a file path."""
    import sys

    if not arg.strip():
        raise InvitationError(
            "the invitation argument is empty: give a URL, JSON, a file, or - for stdin"
        )
    if arg == "-":
        data = sys.stdin.buffer.read(MAX_INVITATION_BYTES + 1)
    elif arg.lstrip().startswith(("http://", "https://", "didcomm:", "{")) or "_oob=" in arg:
        return arg
    else:
        path = Path(arg)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_INVITATION_BYTES + 1)
        except OSError as exc:
            raise InvitationError(
                f"{arg!r} is neither an invitation URL nor a readable file: {exc.strerror}"
            ) from None
    if len(data) > MAX_INVITATION_BYTES:
        raise _too_big(len(data))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvitationError(
            "invitation is not UTF-8 text (an image? decode the QR first)"
        ) from None


def _too_big(n: int) -> InvitationError:
    return InvitationError(
        f"invitation is {n} bytes or more; the limit is {MAX_INVITATION_BYTES} bytes"
    )


def _oob_payload(url: str) -> str:
    try:
        query = urlsplit(url).query
    except ValueError:
        raise InvitationError("invitation URL is malformed") from None
    values = parse_qs(query).get("_oob")
    if not values:
        raise InvitationError("invitation URL has no _oob parameter")
    if len(values) > 1:
        raise InvitationError("invitation URL has several _oob parameters")
    encoded = values[0].strip()
    if not _B64URL.match(encoded):
        raise InvitationError("the _oob parameter is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise InvitationError("the _oob parameter is not valid base64url") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvitationError("the _oob parameter does not decode to UTF-8 JSON") from None


def _validate(message: Any, resolver: PeerResolver) -> Invitation:
    if not isinstance(message, dict):
        raise InvitationError("invitation must be a JSON object")
    typ = message.get("type")
    if typ != INVITATION_TYPE:
        raise InvitationError(f"not an out-of-band 2.0 invitation: type is {str(typ)[:80]!r}")
    inv_id = message.get("id")
    if not isinstance(inv_id, str) or not inv_id or len(inv_id) > 256:
        raise InvitationError("invitation has no valid id")
    did = message.get("from")
    if did is None:
        raise InvitationError("invitation has no 'from' DID: there is nobody to connect to")
    if not isinstance(did, str):
        raise InvitationError("invitation 'from' must be a DID string")
    body = message.get("body")
    if not isinstance(body, dict):
        raise InvitationError("invitation has no body object")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > 256):
        raise InvitationError("invitation label must be a string of at most 256 characters")
    goal_code = body.get("goal_code")
    if goal_code is not None and not isinstance(goal_code, str):
        raise InvitationError("invitation goal_code must be a string")
    accept = body.get("accept")
    if accept is not None and (
        not isinstance(accept, list) or not any(a == "didcomm/v2" for a in accept)
    ):
        raise InvitationError("invitation does not accept didcomm/v2")
    try:
        check_did_syntax(did)
        if not resolver.key_agreement_kids(did):
            raise InvitationError("the inviter's DID document has no keyAgreement key")
        resolver.x25519_public(did)
    except DIDError as exc:
        raise InvitationError(f"the inviter's DID is unusable: {exc.message}") from exc
    return Invitation(inv_id, did, label, goal_code, message)
