"""Direct paths for sessions that start on the mediator's relay (spec/session.md §15).

A session whose peers cannot reach each other's addresses in advance runs its handshake
over the mediator; its request and accept carry each side's address candidates (host
addresses, and the server-reflexive address the mediator's STUN saw; none in relay-only
mode).  Once established, the session runs over a
:class:`~didsession.session.multipath_asyncio.MultipathTransport`: frames flow on the relay
at once while both sides dial each other's candidates from their listening port (TCP
simultaneous open through cone NATs); the first path whose check proves the session's keys
takes over, and the relay stays as the fallback.

One :class:`DirectPaths` per process: one TCP listener for all its sessions, candidates
gathered once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from didsession.errors import DidSessionError
from didsession.session.channel import Channel
from didsession.session.multipath_asyncio import (
    MultipathTransport,
    PathListener,
    dial_direct,
)

__all__ = ["DIAL_TIMEOUT", "STUN_ENV", "DirectPaths"]

log = logging.getLogger("didsession.paths")

# HOST:PORT of the STUN server to ask for our server-reflexive address (default: the
# mediator's host, port 3478, the mediator's default).
STUN_ENV = "DIDSESSION_STUN"
DEFAULT_STUN_PORT = 3478
GATHER_TIMEOUT = 1.5
DIAL_TIMEOUT = 10.0


class DirectPaths:
    """The direct-path machinery of one process (see the module docstring).

    Args:
        mediator: the mediator's URL or DID (its host answers STUN).
        stun: HOST:PORT of the STUN server, if not the mediator's default.
    """

    def __init__(self, mediator: str | None, *, stun: str | None = None) -> None:
        self._mediator = mediator
        self._stun_override = stun or os.environ.get(STUN_ENV)
        self._listener: PathListener | None = None
        self._candidates: list[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self.mapping = "unknown"

    async def candidates(self) -> list[dict[str, Any]]:
        """This process's candidates (gathered on first use), as sent in a handshake."""
        async with self._lock:
            if self._candidates is None:
                self._candidates = await self._gather()
        return self._candidates

    @property
    def port(self) -> int | None:
        return self._listener.port if self._listener is not None else None

    async def _gather(self) -> list[dict[str, Any]]:
        from didsession.candidates import encode_candidates, gather, reusable_tcp_socket

        listener = PathListener()
        await listener.start(reusable_tcp_socket(0))
        self._listener = listener
        stun, local_only = await self._stun()
        if local_only:
            stun = None  # on one machine there is no NAT to learn about
        gathered = await gather(
            tcp_port=listener.port, stun=stun, include_loopback=local_only, timeout=GATHER_TIMEOUT
        )
        # The listener is IPv4 (0.0.0.0): an IPv6 candidate would only be dialled in vain.
        cands = [c for c in gathered.candidates if ipaddress.ip_address(c.host).version == 4]
        if local_only:  # a mediator on loopback: a run on this machine; stay on loopback
            cands = [c for c in cands if ipaddress.ip_address(c.host).is_loopback]
        self.mapping = gathered.tcp_mapping.value
        for problem in gathered.problems:
            log.info(f"didsession: candidate gathering: {problem}")
        log.info(
            "didsession: direct-path candidates: "
            + (", ".join(f"{c.type.value} {c.host}:{c.port}" for c in cands) or "none")
            + f"; NAT mapping {gathered.tcp_mapping.value}"
        )
        return encode_candidates(cands)

    async def _stun(self) -> tuple[tuple[str, int] | None, bool]:
        """The STUN server to ask (the mediator's), and whether it is on loopback."""
        override = self._stun_override
        if override:
            name, _, port = override.rpartition(":")
            return (name.strip("[]"), int(port)), _loopback(name.strip("[]"))
        url: str | None = self._mediator
        if url is not None and not url.startswith(("http://", "https://", "ws://", "wss://")):
            try:
                from didsession.mediation import mediator_info

                url = (await mediator_info(url)).endpoint
            except DidSessionError as exc:
                log.info(f"didsession: no STUN server ({exc.message})")
                return None, False
        host = urlparse(url).hostname if url else None
        if host is None:
            return None, False
        return (host, DEFAULT_STUN_PORT), _loopback(host)

    def attach(
        self,
        mpt: MultipathTransport,
        channel: Channel,
        peer_candidates: Sequence[dict[str, Any]] | None,
    ) -> None:
        """Let ``mpt`` (a session just established on the relay) take direct paths: the
        listener routes the peer's connections to it, and the peer's candidates are dialled."""
        from didsession.candidates import decode_candidates

        listener = self._listener
        if listener is None:
            return
        listener.register(channel.attach_id, mpt)
        try:
            theirs = decode_candidates(list(peer_candidates)) if peer_candidates else ()
        except DidSessionError as exc:
            log.warning(f"didsession: {mpt.label} sent unusable candidates: {exc.message}")
            theirs = ()
        if theirs:
            mpt.spawn(self._dial(mpt, listener.port, theirs))

    async def _dial(self, mpt: MultipathTransport, port: int, theirs: Sequence[Any]) -> None:
        log.debug(f"didsession: dialling {len(theirs)} candidates of {mpt.label}")
        if not await dial_direct(mpt, port, theirs, timeout=DIAL_TIMEOUT):
            log.info(
                f"didsession: no direct path to {mpt.label} within {DIAL_TIMEOUT:g} s; "
                "staying on the relay"
            )

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
