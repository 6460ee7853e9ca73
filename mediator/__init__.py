"""didsession's mediator: DIDComm v2 mediation with live delivery, STUN, a session relay.

Run it with ``didsession-mediator``; embed it with :func:`create_app` (an aiohttp
application) or :func:`serve`.
"""

from __future__ import annotations

from mediator.app import create_app, serve
from mediator.config import MediatorConfig, load_config

__all__ = ["MediatorConfig", "create_app", "load_config", "serve"]
