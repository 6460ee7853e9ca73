"""MPyC links in ``didsession status``: each party publishes one status per link in its
didsession home (:mod:`didsession.status`), about every second while MPyC runs, and a
last one when the link closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from didsession.errors import DidSessionError
from didsession.status import SessionStatus, StatusBoard, format_address, with_path_info

__all__ = ["LinkBoard"]

log = logging.getLogger("didsession.mpyc")

INTERVAL = 1.0


class LinkBoard:
    """The status files of one party's links."""

    def __init__(self, home: Path, party: int, local_did: str) -> None:
        self.board = StatusBoard(home, f"mpyc party {party}")
        self.local_did = local_did
        self._links: dict[int, tuple[Any, str, float, bool]] = {}
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def add(self, peer: int, link: Any, peer_did: str, *, relay_only: bool) -> None:
        """Publish ``link`` (a SessionTransport with an established channel) from now on."""
        self._links[peer] = (link, peer_did, time.time(), relay_only)
        self._publish(peer, force=True)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def close_all(self) -> None:
        """The links are closed (MPyC's shutdown): publish their final state."""
        for peer in list(self._links):
            self._publish(peer, force=True, closed=True)
        self._links.clear()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while self._links:
            await asyncio.sleep(INTERVAL)
            for peer in list(self._links):
                self._publish(peer)

    def _publish(self, peer: int, *, force: bool = False, closed: bool = False) -> None:
        if self._failed or peer not in self._links:
            return
        link, peer_did, started, relay_only = self._links[peer]
        try:
            status = self._snapshot(link, peer_did, started, relay_only, closed)
            self.board.maybe_publish(status, status.updated, force=force)
        except (DidSessionError, OSError) as exc:
            self._failed = True  # status is a convenience: never disturb the computation
            message = exc.message if isinstance(exc, DidSessionError) else str(exc)
            log.warning(f"didsession: cannot publish link status: {message}")

    def _snapshot(
        self, link: Any, peer_did: str, started: float, relay_only: bool, closed: bool
    ) -> SessionStatus:
        channel = link.channel
        stats = link.stats
        path = link.get_extra_info("path")
        status = SessionStatus(
            pid=os.getpid(),
            program=self.board.program,
            local_did=self.local_did,
            peer_did=peer_did,
            session_id=channel.session_id.hex(),
            role=str(channel.role.value),
            state="closed" if closed else "open",
            started=started,
            updated=time.time(),
            path=path,
            local=format_address(link.get_extra_info("sockname")),
            remote=format_address(link.get_extra_info("peername")),
            bytes_sent=stats.wire,
            bytes_received=stats.payload_in + 28 * stats.records_in,
            frames_sent=channel.frames_sent,
            frames_received=channel.frames_received,
            rekeys=channel.send_epoch + channel.receive_epoch,
            relay_only=relay_only,
        )
        multipath = link.get_extra_info("multipath")
        if multipath is not None:
            with contextlib.suppress(Exception):
                info = dict(multipath.status())
                for key in ("bytes_sent", "bytes_received"):
                    info.pop(key, None)  # the link's own counters are the session's
                status = with_path_info(status, info)
        return status
