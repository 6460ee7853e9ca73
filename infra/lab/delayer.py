#!/usr/bin/env python3
"""Delay packets on one lab link: an NFQUEUE consumer standing in for netem's ``delay``.

This kernel has no ``sch_netem``, so the lab's core namespace sends a link's packets to two
netfilter queues (one per direction, see ``netlab/commands.py``) and this process holds each
packet until its release time, then accepts it.  Packets are held as kernel verdict ids
(``COPY_META``: no payload is copied to user space).

Release time is ``arrival + delay + U(-jitter, +jitter)``, but never earlier than the previous
packet of the same direction: jitter never reorders a flow (like netem with ``rate``, unlike
plain netem jitter).

Parameters come from a small JSON file (``{"delay": 0.04, "jitter": 0.0}``, seconds) read at
start and again on SIGHUP, so ``lab impair`` changes the delay without a gap in which packets
would have no queue to go to.  On SIGTERM every held packet is released at once, then the
process exits.  It prints ``ready`` on stdout once both queues are bound, and nothing after.

Usage: ``delayer.py --params FILE --queue UP --queue DOWN`` (run inside the core namespace).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

from netfilterqueue import COPY_META, NetfilterQueue, Packet

MAX_HELD = 20_000  # per direction: the kernel queue length; beyond it the kernel drops


class Direction:
    """One netfilter queue and the packets held from it, in release order."""

    def __init__(self, number: int, params: dict[str, float]) -> None:
        self.number = number
        self.params = params
        self.held: collections.deque[tuple[float, Packet]] = collections.deque()
        self.last_release = 0.0
        self.queue = NetfilterQueue()
        self.queue.bind(number, self.arrive, max_len=MAX_HELD, mode=COPY_META)
        self.fd = self.queue.get_fd()

    def arrive(self, packet: Packet) -> None:
        now = time.monotonic()
        delay = self.params["delay"]
        jitter = self.params["jitter"]
        if jitter:
            delay = max(0.0, delay + random.uniform(-jitter, jitter))
        release = max(now + delay, self.last_release)
        self.last_release = release
        self.held.append((release, packet))

    def release_due(self, now: float) -> None:
        held = self.held
        while held and held[0][0] <= now:
            held.popleft()[1].accept()

    def release_all(self) -> None:
        while self.held:
            self.held.popleft()[1].accept()

    def next_due(self) -> float | None:
        return self.held[0][0] if self.held else None


def read_params(path: Path) -> dict[str, float]:
    data: dict[str, Any] = json.loads(path.read_text())
    return {"delay": float(data.get("delay", 0.0)), "jitter": float(data.get("jitter", 0.0))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, required=True, help="JSON file with delay, jitter")
    parser.add_argument("--queue", type=int, action="append", required=True, help="queue number")
    args = parser.parse_args(argv)

    params = read_params(args.params)
    state = {"reload": False, "stop": False}

    def on_hup(_signum: int, _frame: object) -> None:
        state["reload"] = True

    def on_term(_signum: int, _frame: object) -> None:
        state["stop"] = True

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    # Signals interrupt select() through this pipe (PEP 475 would otherwise resume the wait).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    directions = [Direction(number, params) for number in args.queue]
    by_fd = {d.fd: d for d in directions}
    print("ready", flush=True)
    # Nothing may be written to stdout from here on: the launcher has closed its end.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    while not state["stop"]:
        if state["reload"]:
            state["reload"] = False
            try:
                params.update(read_params(args.params))
            except (OSError, ValueError) as exc:
                print(f"delayer: keeping old parameters: {exc}", file=sys.stderr, flush=True)
        dues = [t for t in (d.next_due() for d in directions) if t is not None]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else 1.0
        readable, _, _ = select.select([wake_r, *by_fd], [], [], timeout)
        for fd in readable:
            if fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            else:
                by_fd[fd].queue.run(block=False)
        now = time.monotonic()
        for direction in directions:
            direction.release_due(now)

    for direction in directions:
        direction.release_all()
        direction.queue.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main())
