"""``didsession-mediator``: the DIDComm v2 mediator, STUN server and session relay.

    didsession-mediator [--config FILE] [--host H] [--port P] [--public-url URL] ...

Settings: defaults < TOML file < ``DIDSESSION_MEDIATOR_*`` environment < flags (see
:mod:`mediator.config`, or ``--help``).  Errors are one line on stderr and exit status 1
(2 for usage errors); logs are JSON lines on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from didsession.errors import DidSessionError
from mediator.app import serve
from mediator.config import config_as_dict, load_config
from mediator.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, args = load_config(argv)
    except DidSessionError as exc:
        print(f"didsession-mediator: error: {exc.message}", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):
        print(json.dumps(config_as_dict(config), indent=2))
        return 0
    configure_logging(config.log_level, config.log_format)
    try:
        run = _runner()
        run(serve(config))
    except DidSessionError as exc:
        print(f"didsession-mediator: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _runner() -> Any:
    """uvloop's run when it is installed (faster relay and STUN), else asyncio.run."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


if __name__ == "__main__":
    sys.exit(main())
