"""Program agreement: before computing, parties confirm they run the same program.

Every link's first message in each direction, before MPyC sees the link, is this party's
:class:`Program` record.  Each side compares the peer's record with its own; if anything
that must match differs, both stop, naming what differs, and nothing is computed (the
record travels inside the session, so it is authenticated as the peer's DID).

What must match:

* the main script: SHA-256 of its bytes (its file name is shown, not compared);
* the MPyC version, the didsession session protocol version and this adapter's version;
* the roster fingerprint (DIDs in order and path policy, see :mod:`mpyc_adapter.roster`);
* MPyC's options that change the messages: number of parties, threshold ``-T``, bit length
  ``-L``, security parameter ``-K``, ``--no-prss``, ``--mix32-64bit``;
* the program's own arguments, unless every party runs with ``--didcomm-private-args``
  (for programs that take private inputs on the command line).

Each record also names the sender's party id, which the receiver checks against the
roster index of the DID the session authenticated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from didsession._dataclass import dataclass
from didsession.errors import ProtocolError, RemoteProtocolError
from didsession.untrusted import parse_json

__all__ = [
    "ADAPTER_VERSION",
    "KEY_NAMES",
    "MAGIC",
    "AgreementError",
    "Program",
    "differences",
    "script_digest",
]

ADAPTER_VERSION = "1"
MAGIC = b"didsession-mpyc/agreement/1\n"
MAX_RECORD = 64 << 10


class AgreementError(ProtocolError):
    """The parties do not run the same program (or a peer's record is unusable)."""

    code = "e.p.mpyc.program"


@dataclass(frozen=True, slots=True)
class Program:
    """What a party runs.  Everything but ``party`` and ``script_name`` must match."""

    party: int
    parties: int
    threshold: int
    bit_length: int
    sec_param: int
    no_prss: bool
    mix32_64bit: bool
    script_name: str
    script_sha256: str
    args: tuple[str, ...] | None  # None: private arguments (--didcomm-private-args)
    roster: str
    mpyc: str
    session: str
    adapter: str = ADAPTER_VERSION

    def encode(self) -> bytes:
        doc = asdict(self)
        doc["args"] = list(self.args) if self.args is not None else None
        return MAGIC + json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Program:
        """Parse a peer's record.

        Raises:
            RemoteProtocolError: not an agreement record (code ``e.p.mpyc.agreement``).
        """
        if not data.startswith(MAGIC) or len(data) > MAX_RECORD:
            raise RemoteProtocolError(
                "the peer did not start with a program agreement record (not a didsession "
                "MPyC party, or an incompatible version)",
                code="e.p.mpyc.agreement",
            )
        try:
            doc = parse_json(data[len(MAGIC) :])
            args = doc["args"]
            return cls(
                party=_int(doc["party"]),
                parties=_int(doc["parties"]),
                threshold=_int(doc["threshold"]),
                bit_length=_int(doc["bit_length"]),
                sec_param=_int(doc["sec_param"]),
                no_prss=_bool(doc["no_prss"]),
                mix32_64bit=_bool(doc["mix32_64bit"]),
                script_name=_str(doc["script_name"]),
                script_sha256=_str(doc["script_sha256"]),
                args=None if args is None else tuple(_str(a) for a in args),
                roster=_str(doc["roster"]),
                mpyc=_str(doc["mpyc"]),
                session=_str(doc["session"]),
                adapter=_str(doc["adapter"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteProtocolError(
                f"malformed program agreement record: {exc}", code="e.p.mpyc.agreement"
            ) from None


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError("expected true or false")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


# The keys of :func:`differences`, for people.
KEY_NAMES = {
    "script": "main script",
    "mpyc": "MPyC version",
    "session": "session protocol",
    "adapter": "MPyC adapter",
    "roster": "roster",
    "m": "number of parties",
    "T": "threshold -T",
    "L": "bit length -L",
    "K": "security parameter -K",
    "no-prss": "--no-prss",
    "mix32-64bit": "--mix32-64bit",
    "private-args": "--didcomm-private-args",
    "args": "program arguments",
}


def script_digest(path: str | None) -> tuple[str, str]:
    """(file name, SHA-256 hex) of the main script; ``("-c", "")``-like for no file."""
    if not path or path in ("-c", "-"):
        return (path or "<none>", "")
    p = Path(path)
    try:
        return p.name, hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return p.name, ""


def differences(ours: Program, theirs: Program) -> list[tuple[str, str]]:
    """What differs: ``(key, phrase)`` per item, ours first ("here"), theirs ("there").

    The keys are short and stable (``script``, ``mpyc``, ``args``, ...): they travel in
    session close codes to parties that did not see the mismatch themselves.
    """
    out: list[tuple[str, str]] = []

    def cmp(key: str, what: str, a: object, b: object) -> None:
        if a != b:
            out.append((key, f"{what} ({a} here, {b} there)"))

    if ours.script_sha256 != theirs.script_sha256:
        out.append(
            (
                "script",
                f"main script ({ours.script_name} sha256 {ours.script_sha256[:12] or '?'} "
                f"here, {theirs.script_name} sha256 {theirs.script_sha256[:12] or '?'} there)",
            )
        )
    cmp("mpyc", "MPyC version", ours.mpyc, theirs.mpyc)
    cmp("session", "didsession session protocol", ours.session, theirs.session)
    cmp("adapter", "didsession MPyC adapter", ours.adapter, theirs.adapter)
    if ours.roster != theirs.roster:
        out.append(
            (
                "roster",
                f"roster (fingerprint {ours.roster[:12]} here, {theirs.roster[:12]} there: "
                "different DIDs, order or relay policy)",
            )
        )
    cmp("m", "number of parties", ours.parties, theirs.parties)
    cmp("T", "threshold -T", ours.threshold, theirs.threshold)
    cmp("L", "bit length -L", ours.bit_length, theirs.bit_length)
    cmp("K", "security parameter -K", ours.sec_param, theirs.sec_param)
    cmp("no-prss", "--no-prss", ours.no_prss, theirs.no_prss)
    cmp("mix32-64bit", "--mix32-64bit", ours.mix32_64bit, theirs.mix32_64bit)
    if (ours.args is None) != (theirs.args is None):
        cmp(
            "private-args",
            "--didcomm-private-args",
            "on" if ours.args is None else "off",
            "on" if theirs.args is None else "off",
        )
    elif ours.args != theirs.args:
        out.append(
            ("args", f"program arguments ({_args(ours.args)} here, {_args(theirs.args)} there)")
        )
    return out


def _args(args: Sequence[str] | None) -> str:
    text = " ".join(args or ()) or "none"
    return text if len(text) <= 60 else text[:57] + "..."
