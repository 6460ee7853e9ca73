"""Direct paths for MPyC links that start on the mediator's relay (parties behind NAT).

A link whose roster gives the accepting party no address runs its session handshake over
the relay, with both sides' address candidates in it (:mod:`didsession.direct`); right
after the handshake :meth:`NatPaths.upgrade` puts a
:class:`~didsession.session.multipath_asyncio.MultipathTransport` under the link's
``SessionTransport``, with the relay as its first path, and dials the peer's candidates.
MPyC sees none of this: its frames arrive whole and in order whichever path carried them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from didsession.direct import DirectPaths
from didsession.session import Role
from didsession.session.multipath import PathActivated, PathClosed, PathKind
from didsession.session.multipath_asyncio import MultipathTransport, multipath_for

__all__ = ["NatPaths"]

log = logging.getLogger("didsession.mpyc")


class NatPaths(DirectPaths):
    """One party's direct paths: :class:`DirectPaths` plus MPyC's links."""

    def __init__(self, mediator: str) -> None:
        super().__init__(mediator)
        self.transports: list[MultipathTransport] = []

    def upgrade(self, link: Any, peer_candidates: Sequence[dict[str, Any]] | None) -> None:
        """Run ``link`` (a SessionTransport just established on the relay) over multipath,
        and dial the peer's candidates."""
        loop = asyncio.get_running_loop()
        channel = link.channel
        relay = link.lower  # the relay path the handshake ran on
        mpt = MultipathTransport(
            multipath_for(channel, now=loop.time()),
            link,
            label=link.label,
            on_event=lambda event: _log_event(link.label, event),
        )
        # The responder's relay stays quiet until the initiator, which reads the accept
        # before it switches to multipath, has sent something (spec §15.3).
        quiet = channel.role is Role.RESPONDER
        mpt.add_path(PathKind.RELAY, relay, quiet=quiet, local="relay", remote="relay")
        link.connection_made(mpt)
        # The multipath transport answers "path" from now on; "setup" keeps where the link
        # was set up (the log line and run-e3's report name that path).
        link.path_info["setup"] = link.path_info.pop("path", None)
        self.transports.append(mpt)
        self.attach(mpt, channel, peer_candidates)


def _log_event(label: str, event: object) -> None:
    if isinstance(event, PathActivated) and event.reason == "fallback":
        log.warning(f"didsession: link with {label} fell back to the {event.kind.value} path")
    elif isinstance(event, PathClosed) and event.kind is PathKind.RELAY:
        log.info(f"didsession: relay path of the link with {label} closed ({event.reason})")
