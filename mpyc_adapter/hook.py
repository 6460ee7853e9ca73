"""How ``--didcomm`` gets into an unmodified MPyC program.

MPyC builds its runtime while ``mpyc.runtime`` is imported: it parses ``sys.argv`` and
creates ``mpc``.  This module wraps that one import (a ``sys.meta_path`` finder that
matches only ``mpyc.runtime``):

* **before** MPyC's code runs: MPyC's option parser learns the ``--didcomm`` options (so
  they appear in ``-H`` and never reach the program), the roster is read, this party's
  identity is loaded and ``-M m -I i`` are added to ``sys.argv`` as MPyC expects them.  In
  local mode (``-M m --didcomm`` without a roster) the launcher creates the identities and
  starts parties 1..m-1 first (:mod:`mpyc_adapter.launcher`);
* **after**: the runtime gets a :class:`~mpyc_adapter.network.DidcommNetwork`, and
  ``Runtime.start``/``shutdown`` are wrapped so that MPyC's own ``start()`` makes its peer
  links through it.

The finder is installed by:

* ``didsession-mpyc.pth``, installed into site-packages with the package: at interpreter
  start it calls :func:`activate`, which installs the finder only if an argument starts with
  ``--didcomm`` or is ``-H``/``--HELP`` (so ``python prog.py --didcomm roster.json`` works,
  and every other Python process pays one scan of its arguments);
* ``python -m mpyc_adapter prog.py ...`` (:mod:`mpyc_adapter.__main__`), which does not
  depend on the ``.pth`` file.

Errors in the options, the roster or the identity print one line
(``didsession: error: ...``) and exit with status 1 before MPyC starts.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.machinery
import itertools
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.abc import Loader as _Loader
    from importlib.abc import MetaPathFinder as _Finder
else:
    # The finder is installed at interpreter start (the .pth file): importlib.abc would
    # pull in importlib.resources, tempfile and more (~10 ms) that MPyC never needs.
    _Loader = _Finder = object

__all__ = [
    "LOCAL",
    "activate",
    "add_options",
    "install",
    "our_options",
    "timeout_seconds",
    "wanted",
]

# ``--didcomm`` without a roster: local mode.
LOCAL = ""
_RUNTIME = "mpyc.runtime"
# Set by local mode for the parties it starts: wait for party 0 to write the roster.
WAIT_ENV = "DIDSESSION_MPYC_WAIT"


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the ``--didcomm`` options (as a group shown by MPyC's ``-H``)."""
    group = parser.add_argument_group("MPyC over didsession sessions")
    group.add_argument(
        "--didcomm",
        nargs="?",
        const=LOCAL,
        metavar="roster",
        help="carry every link over an authenticated, encrypted didsession session: roster "
        "is a JSON file with the parties' DIDs in party order ('didsession roster make'); "
        "this party is the one whose DID its didsession home holds.  Without roster, with "
        "-M m: run m local parties with fresh identities",
    )
    group.add_argument(
        "--didcomm-home",
        metavar="dir",
        help="didsession home of this party's identity (default: $DIDSESSION_HOME)",
    )
    group.add_argument(
        "--didcomm-identity",
        metavar="name",
        help="which identity of the home (default: the one whose DID is in the roster)",
    )
    group.add_argument(
        "--didcomm-private-args",
        action="store_true",
        help="the program's own arguments may differ between parties (private inputs); "
        "everything else must still match",
    )
    group.add_argument(
        "--didcomm-timeout",
        metavar="s",
        help="a party whose machine has not answered for s seconds while a link waits "
        "for it (switched off, asleep, off the network) is taken as gone: every party "
        "stops, saying which (default 60; 0: wait as long as TCP does, up to ~15 minutes "
        "or for ever).  A party busy computing still answers.  On relay links the same "
        "holds for the mediator's machine",
    )
    group.add_argument(
        "--didcomm-relay",
        action="store_true",
        help="local mode: carry every link through the embedded mediator's relay",
    )


def timeout_seconds(text: str | None) -> float | None:
    """The value of ``--didcomm-timeout`` (None: not given).

    Raises:
        ConfigError: not a number of seconds from 0 to a day.
    """
    if text is None:
        return None
    from didsession.errors import ConfigError

    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--didcomm-timeout {text}: not a number of seconds") from None
    if not (value == 0 or 2 <= value <= 86_400):
        raise ConfigError(f"--didcomm-timeout {text}: give 0 (no timeout) or 2 to 86400 seconds")
    return value


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Make ``--didcomm`` without a roster unambiguous: ``prog.py -M3 --didcomm 200`` means
    local mode with program argument 200, not roster "200".  A bare ``--didcomm`` followed by
    something that is not an option, not a ``.json`` name and not an existing file becomes
    ``--didcomm=`` (local mode)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        nxt = out[i + 1]
        if (
            arg == "--didcomm"
            and not nxt.startswith("-")
            and not nxt.endswith(".json")
            and not os.path.exists(nxt)
        ):
            out[i] = "--didcomm="
    return out


def _taken_as_argument(argv: Sequence[str]) -> str | None:
    """What :func:`normalize_argv` left to the program after a bare ``--didcomm`` (the
    roster a person may have meant), or None."""
    for arg, nxt in itertools.pairwise(argv):
        if arg == "--didcomm" and normalize_argv([arg, nxt])[0] != arg:
            return nxt
    return None


def our_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse only the ``--didcomm`` options: (them, every other argument in order)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_options(parser)
    options, rest = parser.parse_known_args(normalize_argv(argv))
    return options, rest


def wanted(argv: Sequence[str]) -> bool:
    """Whether the hook is needed for these arguments (cheap: run at every start-up)."""
    return any(a.startswith("--didcomm") or a in ("-H", "--HELP") for a in argv[1:])


def activate() -> None:
    """Called by ``didsession-mpyc.pth`` at interpreter start-up."""
    try:
        if wanted(sys.argv):
            install()
    except Exception:  # never break an interpreter's start-up
        pass


def install() -> None:
    """Install the ``mpyc.runtime`` import hook (idempotent).

    If ``mpyc.runtime`` is already imported it is too late: MPyC has built its runtime.
    """
    if any(isinstance(f, _RuntimeFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _RuntimeFinder())


class _RuntimeFinder(_Finder):
    """Finds ``mpyc.runtime`` as usual and wraps its loader; ignores everything else."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _RUNTIME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RuntimeLoader(spec.loader)
        return spec


class _RuntimeLoader(_Loader):
    def __init__(self, inner: _Loader) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...
        return getattr(self._inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        plan = _collector_paused(_before_runtime)
        self._inner.exec_module(module)
        if plan is not None:
            _collector_paused(_after_runtime, module, plan)


def _collector_paused(step: Callable[..., Any], *args: Any) -> Any:
    """Run one of our start-up steps with the cyclic garbage collector paused.

    Our start-up (imports, identity, roster) made ~9 young collections of objects that all
    live on, and moved the collector's generation counters: MPyC's second full collection
    then came ~100 ms into AES, on the computation's peak heap (60-140 ms of CPU), instead
    of ~450 ms in (15-40 ms) as under plain TCP.  Paused, our start-up leaves the counters
    near plain MPyC's at ``start()`` (AES: full collections at the same points as under
    TCP).  MPyC's own code never runs paused; a collector the program disabled stays so.
    """
    if not gc.isenabled():
        return step(*args)
    gc.disable()
    try:
        return step(*args)
    finally:
        gc.enable()


def _fail(message: str) -> None:
    print(f"didsession: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _patch_parser(mpyc: ModuleType) -> None:
    original = mpyc._get_arg_parser
    if getattr(original, "_didsession", False):
        return

    @functools.wraps(original)
    def get_arg_parser() -> argparse.ArgumentParser:
        parser = original()
        add_options(parser)
        return parser

    get_arg_parser._didsession = True  # type: ignore[attr-defined]
    setattr(mpyc, "_get_arg_parser", get_arg_parser)  # noqa: B010


def _before_runtime() -> Any:
    """Runs just before MPyC's ``runtime.setup()``; returns the party's plan or None."""
    from didsession.errors import DidSessionError

    mpyc = sys.modules["mpyc"]
    _patch_parser(mpyc)
    taken = _taken_as_argument(sys.argv[1:])
    sys.argv[1:] = normalize_argv(sys.argv[1:])
    options = mpyc._get_arg_parser().parse_known_args(sys.argv[1:])[0]
    if options.didcomm is None or options.HELP or options.VERSION:
        return None
    try:
        return _plan(options, taken)
    except DidSessionError as exc:
        _fail(exc.message)
    return None


def _plan(options: argparse.Namespace, taken: str | None = None) -> Any:
    """This party's plan from the parsed options; ``taken`` is the word after a bare
    ``--didcomm`` that is not a roster file (see :func:`_taken_as_argument`)."""
    from didsession.errors import ConfigError
    from mpyc_adapter.party import PartyPlan, load_identity
    from mpyc_adapter.roster import load_roster

    if options.config or options.parties:
        raise ConfigError("--didcomm replaces -C/-P: the roster says who the parties are")
    timeout = timeout_seconds(options.didcomm_timeout)
    if options.M is not None and options.M < 1:
        raise ConfigError(f"-M {options.M}: the number of parties must be at least 1")
    if options.ssl:
        raise ConfigError(
            "--didcomm and --ssl exclude each other: sessions already encrypt and "
            "authenticate every link"
        )
    if options.didcomm == LOCAL:
        if not options.M and taken is not None:
            raise ConfigError(
                f"--didcomm {taken}: no such roster file (a roster is a .json file, made "
                "with 'didsession roster make'); to run m local parties instead, give -M m"
            )
        if not options.M:
            raise ConfigError(
                "--didcomm needs a roster (--didcomm roster.json), or -M m to run m local parties"
            )
        if options.index is not None:
            raise ConfigError(
                "-M m --didcomm without a roster starts all m parties itself; "
                "to run one party, give --didcomm ROSTER -I i"
            )
        if options.didcomm_home or options.didcomm_identity:
            raise ConfigError(
                "--didcomm-home and --didcomm-identity choose this party's identity in a "
                "roster; local mode (-M m --didcomm without a roster) makes fresh "
                "identities for its parties"
            )
        from mpyc_adapter.launcher import launch_local

        return launch_local(options)
    if options.didcomm_relay:
        raise ConfigError("--didcomm-relay is for local mode; a roster says relay_only itself")
    if os.environ.get(WAIT_ENV):  # started by local mode: party 0 writes the roster
        from mpyc_adapter.launcher import wait_for_roster

        wait_for_roster(options.didcomm)
    roster = load_roster(options.didcomm)
    if options.M is not None and options.M != len(roster):
        raise ConfigError(f"-M {options.M}, but the roster lists {len(roster)} parties")
    identity, pid = load_identity(
        roster, home=options.didcomm_home, name=options.didcomm_identity, index=options.index
    )
    if options.M is None:
        sys.argv += ["-M", str(len(roster))]
    if options.index is None:
        sys.argv += ["-I", str(pid)]
    plan = PartyPlan(
        roster=roster,
        pid=pid,
        identity=identity,
        private_args=options.didcomm_private_args,
        script=sys.argv[0],
    )
    if timeout is not None:
        plan.timeout = timeout
    return plan


def _after_runtime(module: ModuleType, plan: Any) -> None:
    """Runs right after MPyC built ``mpc``: give it its network."""
    from mpyc_adapter.network import DidcommNetwork

    rt = getattr(module, "mpc", None)
    if rt is None:  # MPyC's setup() failed and said why
        return
    for i, party in enumerate(plan.roster.parties):
        if party.addr is not None:
            rt.parties[i].host, rt.parties[i].port = party.addr
    rt._didcomm = DidcommNetwork(plan, rt)
    _patch_runtime(module.Runtime)


def _patch_runtime(cls: Any) -> None:
    if getattr(cls, "_didsession_patched", False):
        return
    original_start = cls.start
    original_shutdown = cls.shutdown

    @functools.wraps(original_start)
    async def start(self: Any) -> None:
        network = getattr(self, "_didcomm", None)
        if network is None:
            await original_start(self)
            return
        # From here, also while start() waits for the others; not in the parties local
        # mode starts: its party 0 stops them itself (and it has its own handlers, which
        # watch_signals leaves alone).
        if not os.environ.get(WAIT_ENV):
            network.watch_signals()
        with network.installed(self._loop):
            await original_start(self)
        network.computing(True)

    @functools.wraps(original_shutdown)
    async def shutdown(self: Any) -> None:
        network = getattr(self, "_didcomm", None)
        if network is not None:
            network.computing(False)
        await original_shutdown(self)
        if network is not None:
            network.done_computing()
            network.unwatch_signals()
            network.log_report()

    cls.start = start
    cls.shutdown = shutdown
    cls._didsession_patched = True
