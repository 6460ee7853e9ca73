"""Local mode: ``python prog.py -M m --didcomm`` runs m parties on this machine over sessions.

Like MPyC's own ``-M m`` (which starts parties 1..m-1 as subprocesses and is party 0
itself), but every party gets a fresh identity and every link is a real session:

1. a throw-away directory with one didsession home per party (``party0`` … ``party{m-1}``)
   and a roster listing their DIDs, each with a free loopback port for direct sessions;
2. with ``--didcomm-relay``, an embedded mediator on loopback (when this installation has
   one, :mod:`mediator`), and the roster says ``relay_only``;
3. parties m-1..1 start as ``python -m mpyc_adapter PROGRAM ... --didcomm ROSTER -I i``
   (first of all, so their start-up overlaps with this process creating the identities)
   (their output goes where MPyC sends it: nowhere, or ``party{m}_{i}.log`` with
   ``--output-file``; their errors to this terminal);
4. this process continues as party 0.  When it exits it waits briefly for the others,
   stops what is still running, and removes the directory (which holds the parties'
   keys).  Stopped by a signal (one line; Ctrl-C ends it by SIGINT, SIGTERM and SIGHUP
   with status 128 + n) or by an error, it does not wait: it kills the others at once,
   without closing its sessions with them first (they ignore those signals themselves),
   then cleans up the same way.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mpyc_adapter.hook import WAIT_ENV, our_options, timeout_seconds
from mpyc_adapter.lifetime import child_env, die_with_parent

if TYPE_CHECKING:
    from mpyc_adapter.party import PartyPlan

__all__ = ["LocalParties", "launch_local"]

# How long party 0, when done, waits for the other parties before stopping them.
GRACE = 20.0
# How long a party started by local mode waits for party 0 to write the roster.
WAIT = 60.0
_FLAGS = {
    "debug": "d",
    "inspect": "i",
    "optimize": "O",
    "dont_write_bytecode": "B",
    "no_user_site": "s",
    "no_site": "S",
    "ignore_environment": "E",
    "verbose": "v",
    "bytes_warning": "b",
    "quiet": "q",
    "isolated": "I",
}


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def python_flags() -> list[str]:
    """This interpreter's flags as command-line options, for the child parties."""
    flags = [
        f"-{c * int(getattr(sys.flags, a))}" for a, c in _FLAGS.items() if getattr(sys.flags, a, 0)
    ]
    if sys.flags.dev_mode:
        flags += ["-X", "dev"]
    if sys.flags.utf8_mode:
        flags += ["-X", "utf8"]
    return flags


def main_target(argv0: str) -> list[str]:
    """How a child runs the same program: ``-m module`` if it was run as a module."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    if name and not name.startswith("mpyc_adapter"):
        return ["-m", name.removesuffix(".__main__")]
    return [argv0]


def _exit_for(signum: int) -> None:
    raise SystemExit(128 + signum)


class _Hurry(Exception):
    """A signal while cleanup waits for the other parties."""


class LocalParties:
    """The throw-away directory, the embedded mediator and the child parties."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.children: list[subprocess.Popen[bytes]] = []
        self.mediator: Any = None
        self.logs: list[IO[bytes]] = []
        self.aborted = False  # a signal or an uncaught error ended party 0
        self.signal: int | None = None  # the signal that did

    def watch(self) -> None:
        """Stop the others at once when a signal or an uncaught error ends party 0.
        SIGINT, SIGTERM and SIGHUP become SystemExit with one line (so ``atexit`` runs
        at all; after a Ctrl-C, :meth:`cleanup` ends the process by SIGINT); the other
        parties ignore these signals (see :meth:`start`)."""

        def on_signal(signum: int, frame: Any) -> None:
            first = self.signal is None
            self.aborted = True
            self.signal = self.signal or signum
            if first:
                name = "interrupted" if signum == signal.SIGINT else signal.Signals(signum).name
                with contextlib.suppress(OSError):
                    print(
                        f"didsession: {name}: stopping the local parties",
                        file=sys.stderr,
                        flush=True,
                    )
            # Raised here, between any two bytecodes, the exit can be swallowed (inside a
            # weakref callback, "Exception ignored") or end a task instead of the program:
            # while MPyC's loop runs, it is raised from a loop callback.  A second signal
            # exits here and now.
            aio = sys.modules.get("asyncio")
            loop = aio._get_running_loop() if aio is not None else None
            if first and loop is not None:
                loop.call_soon_threadsafe(_exit_for, signum)
                return
            _exit_for(signum)

        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                signal.signal(sig, on_signal)
        hook = sys.excepthook

        def excepthook(*exc_info: Any) -> None:
            self.aborted = True
            hook(*exc_info)

        sys.excepthook = excepthook

    def start(self, cmd: list[str], stdout: Any, env: dict[str, str]) -> None:
        """Start one party.  It ignores SIGINT, SIGTERM and SIGHUP: a terminal's Ctrl-C
        or hangup, or a service manager's stop, reaches the whole process group, and a
        party dying first would make party 0 report its link broken.  Party 0 owns the
        others' lives: it kills them (SIGKILL) when it stops, and the kernel kills them
        when it dies (``PR_SET_PDEATHSIG``, set by each party as it starts)."""
        ignored = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored}  # exec keeps it
        try:
            self.children.append(subprocess.Popen(cmd, stdout=stdout, env=env))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def cleanup(self) -> None:
        """Wait for the others (not when aborted), stop what still runs, stop the
        mediator, remove the directory.  A signal meanwhile only cuts the wait short:
        the rest must run (the directory holds the parties' keys).  A Ctrl-C ends the
        process by SIGINT, as a shell expects of a program it interrupted."""

        watched = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

        def hurry(signum: int, frame: Any) -> None:
            for sig in watched:
                signal.signal(sig, signal.SIG_IGN)  # one is enough: the rest must run
            self.aborted = True
            self.signal = self.signal or signum
            raise _Hurry

        try:
            for sig in watched:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    signal.signal(sig, hurry)
            deadline = time.monotonic() + GRACE
            for child in [] if self.aborted else self.children:
                child.wait(max(0.1, deadline - time.monotonic()))
            for sig in watched:
                signal.signal(sig, signal.SIG_IGN)
        except (_Hurry, subprocess.TimeoutExpired):
            for sig in watched:
                signal.signal(sig, signal.SIG_IGN)
        # Kill what still runs, all at once (they ignore SIGTERM, see start(), and hold
        # nothing that outlives the directory), so that none reports another's end.
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
        for child in self.children:
            child.wait()
        if self.mediator is not None:
            with contextlib.suppress(Exception):
                self.mediator.stop()
        for f in self.logs:
            f.close()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.signal == signal.SIGINT:
            # The atexit handlers after this one and the interpreter's own exit do not
            # run: flush what a person would miss.
            with contextlib.suppress(Exception):
                logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)


def launch_local(options: argparse.Namespace) -> PartyPlan:
    """Set up local mode (see the module docstring) and return party 0's plan.

    The other parties are started first, before anything heavy is imported here: they
    import MPyC and didsession while this process creates the identities, and wait (up to
    :data:`WAIT`) for the roster, which is written last and atomically.  ``sys.argv`` is
    rewritten for party 0 (``--didcomm ROSTER -I 0 ...``).
    """
    m = int(options.M)
    ours, rest = our_options(sys.argv[1:])
    root = Path(tempfile.mkdtemp(prefix="didsession-mpyc-"))
    local = LocalParties(root)
    local.watch()
    atexit.register(local.cleanup)
    roster_path = root / "roster.json"
    if ours.didcomm_relay:  # it starts while everything else does
        from mpyc_adapter.embedded import start_embedded_mediator

        try:
            local.mediator = start_embedded_mediator(root / "mediator")
        except Exception as exc:
            raise SystemExit(f"didsession: error: {exc}") from None
    extra = ["--didcomm-private-args"] if ours.didcomm_private_args else []
    timeout = timeout_seconds(ours.didcomm_timeout)  # checked by hook._plan already
    if timeout is not None:
        extra += ["--didcomm-timeout", repr(timeout)]
    target = main_target(sys.argv[0])
    env = child_env(dict(os.environ, **{WAIT_ENV: str(WAIT)}))
    for i in range(m - 1, 0, -1):
        cmd = [
            sys.executable,
            *python_flags(),
            "-m",
            "mpyc_adapter",
            *target,
            *rest,
            "--didcomm",
            str(roster_path),
            "--didcomm-home",
            str(root / f"party{i}"),
            "-I",
            str(i),
            *extra,
        ]
        stdout: Any = subprocess.DEVNULL
        if getattr(options, "output_file", False):
            f = open(f"party{m}_{i}.log", "ab")
            f.write(b"\n$> " + " ".join(cmd).encode() + b"\n")
            f.flush()
            local.logs.append(f)
            stdout = f
        try:
            local.start(cmd, stdout, env)
        except OSError as exc:
            raise SystemExit(f"didsession: error: cannot start party {i}: {exc.strerror}") from None

    from didsession.identity import Store
    from mpyc_adapter.party import PartyPlan
    from mpyc_adapter.roster import Party, Roster

    mediator_url = local.mediator.url if local.mediator is not None else None
    identities = [Store(root / f"party{i}").create(f"party{i}") for i in range(m)]
    ports = free_ports(m)
    roster = Roster(
        tuple(
            Party(ident.did, f"party{i}", ("127.0.0.1", ports[i]))
            for i, ident in enumerate(identities)
        ),
        mediator=mediator_url,
        relay_only=bool(ours.didcomm_relay),
    )
    if local.mediator is not None:
        local.mediator.wait_ready()
    roster.save(roster_path)
    sys.argv = [
        sys.argv[0],
        *rest,
        "--didcomm",
        str(roster_path),
        "--didcomm-home",
        str(root / "party0"),
        "-I",
        "0",
        *extra,
    ]
    plan = PartyPlan(
        roster=roster,
        pid=0,
        identity=identities[0],
        private_args=bool(ours.didcomm_private_args),
        script=sys.argv[0],
        local=root,
        extra={"local": local},
    )
    if timeout is not None:
        plan.timeout = timeout
    return plan


def wait_for_roster(path: str) -> None:
    """A party started by local mode: die with party 0 (see :meth:`LocalParties.start`),
    and wait until it has written the roster."""
    die_with_parent()
    limit = float(os.environ.get(WAIT_ENV, "0") or 0)
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
