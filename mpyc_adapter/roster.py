"""The roster: who the parties of an MPyC computation are, in party order.

A roster is a small JSON file every party holds a copy of.  Party ``i`` of the computation
is the party whose DID is ``parties[i].did``; each party finds its own index by looking its
DID up (its identity comes from its didsession home).  Version 1::

    {
      "type": "didsession-mpyc-roster",
      "version": 1,
      "parties": [
        {"did": "did:peer:2.Ez6LS…", "label": "alice", "addr": "127.0.0.1:11365"},
        {"did": "did:peer:2.Ez6LS…", "label": "bob"},
        {"did": "did:peer:4zQm…:z…", "label": "carol", "addr": "[2001:db8::7]:11367"}
      ],
      "mediator": "http://127.0.0.1:8765",
      "relay_only": false
    }

* ``parties``: 1 to 1024 entries, DIDs unique and resolvable (did:peer:2, long-form
  did:peer:4).  ``label`` (optional) is for people.  ``addr`` (optional) is where that
  party listens for direct TCP sessions, ``host:port``.  **Interim**: until parties learn
  each other's addresses through DIDComm messages via the mediator, the address comes
  from here; a party without one listens where MPyC would (``localhost``, port
  ``11365 + i`` or ``-B base + i``).
* ``mediator`` (optional): the mediator's URL, DID or invitation URL: its session relay
  carries the links that have no direct path.
* ``relay_only`` (optional, default false): carry every link through the mediator's relay.

Unknown members are ignored (a later minor addition must not break older readers); a
``version`` other than 1 is refused.  The :attr:`Roster.fingerprint` (SHA-256 over the
DIDs in order and the path policy) is what parties compare before computing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from didsession._dataclass import dataclass
from didsession.authcrypt import NeedsFullEnvelope, check_did_syntax, did_keys
from didsession.errors import ConfigError, DIDError, InvitationError
from didsession.untrusted import parse_json

__all__ = [
    "MAX_PARTIES",
    "ROSTER_TYPE",
    "ROSTER_VERSION",
    "Party",
    "Roster",
    "load_roster",
    "parse_addr",
    "roster_from_invitations",
]

ROSTER_TYPE = "didsession-mpyc-roster"
ROSTER_VERSION = 1
# MPyC sends party ids as 2 bytes; far fewer parties are practical (PRSS is exponential).
MAX_PARTIES = 1024
MAX_ROSTER_BYTES = 4 << 20
MAX_LABEL = 64


@dataclass(frozen=True, slots=True)
class Party:
    """One roster entry.

    Attributes:
        did: the party's DID.
        label: a name for people, or None.
        addr: ``(host, port)`` where it listens for direct sessions, or None.
    """

    did: str
    label: str | None = None
    addr: tuple[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"did": self.did}
        if self.label is not None:
            doc["label"] = self.label
        if self.addr is not None:
            doc["addr"] = format_addr(self.addr)
        return doc

    @property
    def name(self) -> str:
        """The label, else a shortened DID (for messages)."""
        return self.label or short_did(self.did)


@dataclass(frozen=True, slots=True)
class Roster:
    """The parties in party order, the mediator and the path policy."""

    parties: tuple[Party, ...]
    mediator: str | None = None
    relay_only: bool = False

    def __post_init__(self) -> None:
        _check_parties(self.parties)
        if self.mediator is not None:
            _check_mediator(self.mediator)
        if self.relay_only and not self.mediator:
            raise ConfigError("roster: relay_only needs a mediator")

    def __len__(self) -> int:
        return len(self.parties)

    @property
    def dids(self) -> tuple[str, ...]:
        return tuple(p.did for p in self.parties)

    def index(self, did: str) -> int | None:
        """The party id of ``did``, or None if it is not in the roster."""
        for i, party in enumerate(self.parties):
            if party.did == did:
                return i
        return None

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) over what all parties must agree on: the DIDs in order, the policy."""
        h = hashlib.sha256(b"didsession-mpyc-roster/1\n")
        for did in self.dids:
            h.update(did.encode() + b"\n")
        h.update(b"relay_only=%d\n" % self.relay_only)
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "type": ROSTER_TYPE,
            "version": ROSTER_VERSION,
            "parties": [p.to_json() for p in self.parties],
            "mediator": self.mediator,
            "relay_only": self.relay_only,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the roster (atomically: a reader never sees half a file)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.dumps())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write roster {target}: {exc.strerror}") from None

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "roster") -> Roster:
        """Validate a parsed roster document.

        Raises:
            ConfigError: naming the member that is wrong.
        """
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: not a JSON object")
        if doc.get("type") != ROSTER_TYPE:
            raise ConfigError(f"{source}: 'type' must be {ROSTER_TYPE!r}")
        version = doc.get("version")
        if type(version) is not int:
            raise ConfigError(f"{source}: 'version' must be an integer")
        if version != ROSTER_VERSION:
            raise ConfigError(
                f"{source}: roster version {version} is not supported (this didsession reads "
                f"version {ROSTER_VERSION})"
            )
        raw = doc.get("parties")
        if not isinstance(raw, list):
            raise ConfigError(f"{source}: 'parties' must be a list")
        parties = tuple(_party(item, f"{source}: party {i}") for i, item in enumerate(raw))
        mediator = doc.get("mediator")
        if mediator is not None and (not isinstance(mediator, str) or not mediator.strip()):
            raise ConfigError(f"{source}: 'mediator' must be a URL, a DID or null")
        relay_only = doc.get("relay_only", False)
        if type(relay_only) is not bool:
            raise ConfigError(f"{source}: 'relay_only' must be true or false")
        try:
            return cls(parties, mediator.strip() if mediator else None, relay_only)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.message.removeprefix('roster: ')}") from None


def _party(item: Any, where: str) -> Party:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: not a JSON object")
    did = item.get("did")
    if not isinstance(did, str):
        raise ConfigError(f"{where}: 'did' must be a DID string")
    try:
        check_did_syntax(did)
    except DIDError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    label = item.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
        raise ConfigError(f"{where}: 'label' must be text of at most {MAX_LABEL} characters")
    addr = item.get("addr")
    if addr is not None:
        if not isinstance(addr, str):
            raise ConfigError(f"{where}: 'addr' must be 'host:port'")
        try:
            addr = parse_addr(addr)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    return Party(did, label, addr)


def _check_parties(parties: Sequence[Party]) -> None:
    if not parties:
        raise ConfigError("roster: no parties")
    if len(parties) > MAX_PARTIES:
        raise ConfigError(f"roster: {len(parties)} parties; at most {MAX_PARTIES}")
    seen: dict[str, int] = {}
    for i, party in enumerate(parties):
        if party.did in seen:
            raise ConfigError(f"roster: parties {seen[party.did]} and {i} have the same DID")
        seen[party.did] = i
        try:
            _check_keys(party.did)
        except DIDError as exc:
            raise ConfigError(f"roster: party {i}'s DID cannot be used: {exc.message}") from None
    listening: dict[tuple[str, int], int] = {}
    for i, party in enumerate(parties):
        if party.addr is None:
            continue
        key = (party.addr[0].lower(), party.addr[1])
        if key in listening:
            raise ConfigError(
                f"roster: parties {listening[key]} and {i} have the same address "
                f"{format_addr(party.addr)}; each party listens on its own"
            )
        listening[key] = i


def _check_mediator(text: str) -> None:
    """ConfigError unless ``text`` has the form of a mediator: a URL, an invitation URL or
    JSON, or a DID (what the relay client accepts; whether it answers is seen at run time)."""
    t = text.strip()
    if not t:
        raise ConfigError("roster: 'mediator' is empty (leave it out, or give a URL or DID)")
    if t.startswith("did:") or "_oob=" in t or t.startswith("{"):
        return
    if t.startswith(("http://", "https://", "ws://", "wss://")) and len(t.split("//", 1)[1]) > 0:
        return
    raise ConfigError(
        f"roster: 'mediator' {t[:60]!r} is not a mediator URL, invitation or DID (use "
        "http(s)://HOST:PORT, an invitation URL with _oob=, or did:)"
    )


def _check_keys(did: str) -> None:
    """DIDError unless ``did`` has an X25519 keyAgreement key, read from the DID itself
    (the DID-document libraries are loaded only for a DID that needs them)."""
    try:
        did_keys(did)
    except NeedsFullEnvelope:
        from didsession.did import PeerResolver

        PeerResolver(capacity=4).x25519_public(did)


def parse_addr(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port).

    Raises:
        ConfigError: no port, a port out of range, or an empty host.
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"address {text!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"address {text!r}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"address {text!r}: not an IPv6 address in brackets") from None
    elif ":" in host:
        raise ConfigError(f"address {text!r}: write IPv6 addresses as [addr]:port")
    return host, port


def format_addr(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def short_did(did: str) -> str:
    """``did:peer:2.Ez6LSbys…`` — enough to tell DIDs apart in a message."""
    return did if len(did) <= 24 else did[:20] + "…"


def load_roster(path: str | os.PathLike[str]) -> Roster:
    """Read and validate a roster file.

    Raises:
        ConfigError: unreadable, not JSON, or invalid (the message names the member).
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_ROSTER_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read roster {p}: {exc.strerror}") from None
    if len(data) > MAX_ROSTER_BYTES:
        raise ConfigError(f"roster {p} is larger than {MAX_ROSTER_BYTES} bytes")
    try:
        doc = parse_json(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"roster {p} is not valid JSON: {exc}") from None
    return Roster.from_json(doc, source=f"roster {p}")


def roster_from_invitations(
    sources: Iterable[str],
    *,
    addrs: Sequence[str] = (),
    mediator: str | None = None,
    relay_only: bool = False,
) -> Roster:
    """Build a roster from invitations (URLs, JSON, files or ``-``), in party order.

    Args:
        sources: one invitation per party; the inviter's DID and label go in the roster.
        addrs: optional ``host:port`` per party, in the same order (fewer is fine).

    Raises:
        InvitationError: an invitation cannot be read or parsed (its position is named).
        ConfigError: duplicate DIDs, too many addresses, bad addresses.
    """
    from didsession.did import PeerResolver
    from didsession.invitation import parse_invitation, read_invitation_source

    sources = list(sources)
    if len(addrs) > len(sources):
        raise ConfigError(f"{len(addrs)} addresses for {len(sources)} invitations")
    resolver = PeerResolver(capacity=max(8, len(sources)))
    parties = []
    for i, source in enumerate(sources):
        try:
            inv = parse_invitation(read_invitation_source(source), resolver)
        except InvitationError as exc:
            raise InvitationError(f"invitation {i + 1} ({source[:40]}): {exc.message}") from None
        label = inv.label[:MAX_LABEL] if inv.label else None
        addr = parse_addr(addrs[i]) if i < len(addrs) else None
        parties.append(Party(inv.did, label, addr))
    return Roster(tuple(parties), mediator, relay_only)


def describe(roster: Roster) -> str:
    """The roster for people: one line per party, then mediator, paths and fingerprint."""
    lines = [f"{len(roster)} parties (party id: DID, label, how the others reach it):"]
    for i, party in enumerate(roster.parties):
        if roster.relay_only:
            reach = "the mediator's relay"
        elif party.addr is not None:
            reach = f"direct TCP to {format_addr(party.addr)}"
        elif roster.mediator:
            reach = "the mediator's relay (no address)"
        else:
            reach = "direct TCP where MPyC would listen (localhost, port 11365 + id)"
        lines.append(f"  {i}: {party.did}")
        lines.append(f"     label {party.label or '-'}; reached by {reach}")
    lines.append(f"mediator:    {roster.mediator or 'none'}")
    lines.append(f"relay only:  {'yes' if roster.relay_only else 'no'}")
    lines.append(f"fingerprint: {roster.fingerprint}")
    return "\n".join(lines)
