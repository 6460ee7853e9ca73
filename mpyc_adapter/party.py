"""Who this party is: its identity from its didsession home, its index in the roster.

A party's id is the index of its DID in the roster.  The identity comes from the party's
didsession home (``--didcomm-home``, else ``$DIDSESSION_HOME``, else the XDG default):
the one identity there whose DID is in the roster, or the one named by
``--didcomm-identity``.  ``-I i``, if given, must agree with it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import field
from pathlib import Path
from typing import Any

from didsession._dataclass import dataclass
from didsession.errors import ConfigError, IdentityError
from didsession.identity import Identity, Store, default_home
from mpyc_adapter.roster import Roster, short_did

__all__ = ["DEFAULT_TIMEOUT", "PartyPlan", "load_identity"]

# Seconds without a word from a party's machine after which it is taken as gone
# (--didcomm-timeout; see didsession.tcp_liveness).  Long enough for a brief network outage.
DEFAULT_TIMEOUT = 60.0


@dataclass
class PartyPlan:
    """Everything decided about this party before MPyC's runtime exists.

    Attributes:
        roster: the roster; ``pid`` is this party's index in it.
        identity: this party's unlocked identity (its DID is ``roster.parties[pid].did``).
        private_args: the program's arguments are not compared (``--didcomm-private-args``).
        script: the path of the main script (hashed for program agreement).
        local: in local mode (``-M m --didcomm``), the throw-away directory.
        timeout: seconds without a word from a peer's machine after which it is gone
            (``--didcomm-timeout``; 0: as long as TCP waits).
    """

    roster: Roster
    pid: int
    identity: Identity
    private_args: bool = False
    script: str | None = None
    local: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT


def load_identity(
    roster: Roster,
    *,
    home: str | os.PathLike[str] | None = None,
    name: str | None = None,
    index: int | None = None,
) -> tuple[Identity, int]:
    """This party's unlocked identity and its party id.

    Args:
        home: the didsession home (default: ``$DIDSESSION_HOME`` or XDG).
        name: the identity's name in the home (default: the one whose DID is in the roster).
        index: MPyC's ``-I``, if given: the party id the identity must have.

    Raises:
        IdentityError: no (or more than one) identity of the home is in the roster, or
            ``-I`` names another party; the message says which DIDs were looked at.
        ConfigError: ``index`` outside the roster.
    """
    store = Store(Path(home) if home else default_home())
    if index is not None and not 0 <= index < len(roster):
        raise ConfigError(f"-I {index}: the roster has parties 0 to {len(roster) - 1}")
    names = [name] if name else store.names()
    if not names:
        raise IdentityError(
            f"no identity in {store.home}; create one with 'didsession init' "
            "(or give --didcomm-home)"
        )
    found: list[tuple[Identity, int]] = []
    looked: list[str] = []
    for n in names:
        ident = store.load(n, unlock=False)
        looked.append(f"{n} ({short_did(ident.did)})")
        pid = roster.index(ident.did)
        if pid is not None and (index is None or pid == index):
            found.append((ident, pid))
    if not found:
        want = (
            f"party {index}'s DID ({short_did(roster.parties[index].did)})"
            if index is not None
            else "a DID of the roster"
        )
        raise IdentityError(
            f"no identity in {store.home} has {want}; it holds: {', '.join(looked)}"
        )
    if len(found) > 1:
        raise IdentityError(
            f"several identities in {store.home} are in the roster "
            f"({', '.join(i.name for i, _ in found)}); pick one with --didcomm-identity "
            "or -I"
        )
    ident, pid = found[0]
    passphrase = _passphrase(ident) if ident.encrypted else None
    return store.load(ident.name, passphrase=passphrase), pid


def _passphrase(ident: Identity) -> str:
    env = os.environ.get("DIDSESSION_PASSPHRASE")
    if env:
        return env
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"passphrase of identity {ident.name!r}: ")
    raise IdentityError(
        f"identity {ident.name!r} is passphrase-protected: set $DIDSESSION_PASSPHRASE"
    )
