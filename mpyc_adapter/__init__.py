"""Run unmodified MPyC programs with ``--didcomm``: every link is a didsession session.

    python prog.py --didcomm roster.json [-I i] [MPyC options]   (after pip install)
    python -m mpyc_adapter prog.py --didcomm roster.json ...
    python prog.py -M3 --didcomm                                 (local mode)

Modules: :mod:`~mpyc_adapter.roster` (who the parties are), :mod:`~mpyc_adapter.party`
(who this party is), :mod:`~mpyc_adapter.hook` (how ``--didcomm`` reaches MPyC),
:mod:`~mpyc_adapter.network` (MPyC's links made by sessions), :mod:`~mpyc_adapter.transport`
(one link: the session under MPyC's protocol, with write coalescing),
:mod:`~mpyc_adapter.paths` (direct TCP or the mediator's relay),
:mod:`~mpyc_adapter.agreement` (same program everywhere), :mod:`~mpyc_adapter.launcher`
(local mode).

The package imports nothing heavy until a name is used: the ``.pth`` hook runs in every
interpreter that gets ``-H`` or ``--didcomm``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AgreementError",
    "Party",
    "Program",
    "Roster",
    "load_roster",
    "roster_from_invitations",
]

_WHERE = {
    "AgreementError": "mpyc_adapter.agreement",
    "Program": "mpyc_adapter.agreement",
    "Party": "mpyc_adapter.roster",
    "Roster": "mpyc_adapter.roster",
    "load_roster": "mpyc_adapter.roster",
    "roster_from_invitations": "mpyc_adapter.roster",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mpyc_adapter' has no attribute {name!r}")
