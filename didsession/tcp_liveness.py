"""Is the machine at the other end of a TCP connection still there?  Asked of the kernel.

A machine that vanishes (power, network, sleep) closes nothing.  TCP alone then never
tells a side that waits for it (that side has nothing to send), and tells one with data
in flight only when it gives up retransmitting, after ~15 minutes.  An application-level
ping is no better: the peer's program answers it only while its event loop runs, and an
MPyC party computing locally may not run it for minutes.  So both checks here watch only
the peer's kernel, which answers while its program is busy:

* :func:`keep_alive`: the kernel's keepalive, tuned to a timeout.  It probes an idle
  connection and fails it (``ETIMEDOUT``) when the probes go unanswered;
* :func:`silence` and :func:`gone`, asked now and then: data in flight that the peer's
  machine has not acknowledged for the timeout means it is gone (the kernel does not
  probe a connection with data in flight), and so do window probes it left unanswered
  while its receive window was full (nor one with data queued).

``TCP_USER_TIMEOUT`` is not used: it also fails a connection whose peer is alive but
reads nothing for that long, its receive window full (measured:
``test_a_busy_party_is_not_given_up`` fails with it).  A live peer with a full window
answers each window probe, so at most one is ever outstanding; two mean it is gone.
Window probes back off (up to 2 minutes apart), so that case may take longer than the
timeout.  Behind a proxy, the kernel sees the proxy, not the client.

Used by the MPyC links on direct paths (``--didcomm-timeout``), by relay clients for
their connection to the mediator, and by the mediator's relay for its clients'.  Linux
has every option; elsewhere what exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = ["VANISHED", "Connection", "gone", "keep_alive", "silence", "watch"]

# The mediator's relay closes a session with this reason when it found the other client's
# machine gone; the relay client reports it with the close code of a silent peer.
VANISHED = "peer stopped answering"


class Connection(Protocol):
    """What these functions need of a connection: an asyncio transport, or anything that
    passes ``get_extra_info("socket")`` on (an aiohttp WebSocket)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def keep_alive(transport: Connection, timeout: float) -> bool:
    """Turn on the kernel's keepalive for a TCP connection, tuned so that an idle one
    whose peer's machine stopped answering fails (``ETIMEDOUT``) about ``timeout`` seconds
    after it last heard from it: the first probe after half of it, then every eighth.

    Returns whether it could (a TCP socket; Linux has every option, others some).
    """
    sock = transport.get_extra_info("socket")
    if sock is None or timeout <= 0:
        return False
    # Linux allows idle and interval up to 32767 s and 127 probes.
    idle = min(32767, max(1, round(timeout / 2)))
    interval = min(32767, max(1, round(timeout / 8)))
    count = min(127, max(1, math.ceil((timeout - idle) / interval)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # macOS names the idle time TCP_KEEPALIVE.
        idle_option = "TCP_KEEPIDLE" if hasattr(socket, "TCP_KEEPIDLE") else "TCP_KEEPALIVE"
        for name, value in (
            (idle_option, idle),
            ("TCP_KEEPINTVL", interval),
            ("TCP_KEEPCNT", count),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        return False
    return True


# struct tcp_info (Linux, include/uapi/linux/tcp.h): tcpi_probes (unanswered window or
# keepalive probes) at byte 3, tcpi_unacked at 24, tcpi_last_data_recv and
# tcpi_last_ack_recv (ms ago) at 52 and 56.
_TCP_INFO = struct.Struct("=3xB20xI24xII")


def silence(transport: Connection) -> tuple[float, int, int] | None:
    """For a TCP connection: (seconds since the peer's machine last sent anything,
    segments we sent that it has not acknowledged, probes it has not answered), from the
    kernel; None where it does not say."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None or not sys.platform.startswith("linux"):
        return None  # other systems' tcp_info differs (FreeBSD's leaves these fields 0)
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except OSError:
        return None
    if len(info) < _TCP_INFO.size:
        return None
    probes, unacked, last_data, last_ack = _TCP_INFO.unpack_from(info)
    return min(last_data, last_ack) / 1000, unacked, probes


def gone(quiet: tuple[float, int, int] | None, timeout: float) -> bool:
    """Whether the peer's machine is gone, from :func:`silence`: nothing from it for
    ``timeout`` seconds while data is in flight, or while two probes are unanswered.
    (Idle, or with its receive window full, a live peer's machine answers the probes.)"""
    if quiet is None or timeout <= 0 or quiet[0] < timeout:
        return False
    return quiet[1] > 0 or quiet[2] >= 2


async def watch(
    connection: Connection,
    ping: Callable[[], Awaitable[object]],
    closed: Callable[[], bool],
    *,
    every: float,
    timeout: float,
) -> bool:
    """``ping()`` every ``every`` s without waiting for the pong (NATs and proxies see
    traffic; the peer's program may not run its event loop for minutes, and a pong read
    late must not end the connection), looking at the kernel's view four times in
    between.  Returns True once the peer's machine is gone (:func:`gone` with
    ``timeout``; 0: never), False once ``closed()``."""
    while not closed():
        for _ in range(4):
            await asyncio.sleep(every / 4)
            if timeout > 0 and gone(silence(connection), timeout):
                return True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ping(), every)  # not stuck on a full send buffer
    return False
