"""A running lab: build it, run things inside it, impair its links, tear it down.

Cleanup guarantee: everything a lab makes lives in namespaces named ``<prefix><host>``
(:func:`netlab.topology.lab_prefix`), and every process it starts (delayers, and whatever
:meth:`Lab.popen` / :meth:`Lab.exec` run) lives inside one of them.  Teardown therefore needs no
memory of what was built: it lists the namespaces matching the lab's prefix, kills every process
inside them (``ip netns pids``), and deletes them, which deletes their veths with them.  That is
why ``up`` can start by tearing down whatever a crashed run left, and ``down`` is idempotent.
The state file (``$DSL_LAB_STATE/<prefix>/state.json``, default ``/run/dsl-lab``) only lets
later commands (``hosts``, ``impair``, ``status``) see the config and the delayers.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from netlab.commands import Command, impairment_commands, setup_commands
from netlab.config import Impairment, LabConfig
from netlab.errors import CommandError, ConfigError, LabError, NotRunningError
from netlab.topology import CORE, Host, Link, Role, Topology, lab_prefix, parse_namespace

__all__ = ["DELAYER", "PROBE", "Lab", "list_labs", "teardown"]

HERE = Path(__file__).resolve().parent.parent
DELAYER = HERE / "delayer.py"
PROBE = HERE / "probe.py"
STATE_VERSION = 1


def state_root() -> Path:
    return Path(os.environ.get("DSL_LAB_STATE", "/run/dsl-lab"))


def _state_dir(prefix: str) -> Path:
    return state_root() / prefix.rstrip("-")


def run_command(cmd: Command, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one build command; raise :class:`CommandError` unless it succeeds or may fail."""
    try:
        proc = subprocess.run(
            cmd.argv, input=cmd.stdin, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise LabError(
            f"{cmd.argv[0]} is not installed (./run installs iproute2, iptables, conntrack)"
        ) from exc
    if proc.returncode != 0 and not cmd.may_fail:
        raise CommandError(cmd.argv, proc.returncode, proc.stderr)
    return proc


def list_namespaces() -> list[str]:
    """Every named network namespace on the machine (``ip netns list``)."""
    proc = run_command(Command(("ip", "netns", "list")))
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def list_labs() -> dict[str | None, list[str]]:
    """Lab name (None: the default lab) -> its namespaces, for every lab with one left."""
    labs: dict[str | None, list[str]] = {}
    for namespace in list_namespaces():
        parsed = parse_namespace(namespace)
        if parsed is not None:
            labs.setdefault(parsed[0], []).append(namespace)
    return labs


def _namespace_pids(namespace: str) -> list[int]:
    proc = run_command(Command(("ip", "netns", "pids", namespace), may_fail=True))
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill(pids: Sequence[int], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``grace`` seconds."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.02)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def teardown(name: str | None = None, *, every_lab: bool = False) -> list[str]:
    """Remove a lab's namespaces, processes and state, whatever state it was left in.

    Idempotent.  Returns the namespaces removed.  With ``every_lab`` every ``dsl-`` lab on the
    machine goes, whoever made it.
    """
    if every_lab:
        names = set(list_labs())
        root = state_root()
        # Labs that left only a state directory: "dsl" is the default lab, "dsl-NAME" NAME's.
        for path in root.iterdir() if root.is_dir() else []:
            if path.is_dir() and path.name == "dsl":
                names.add(None)
            elif path.is_dir() and path.name.startswith("dsl-"):
                names.add(path.name[4:])
        removed: list[str] = []
        for lab_name in sorted(names, key=lambda n: n or ""):
            with contextlib.suppress(ConfigError):  # not a name this lab would make
                removed += teardown(lab_name)
        return removed
    prefix = lab_prefix(name)
    with _locked(prefix, remove=True):
        return _teardown(name)


def _teardown(name: str | None) -> list[str]:
    """:func:`teardown` for a caller that holds the lab's lock."""
    state_dir = _state_dir(lab_prefix(name))
    namespaces = list_labs().get(name, [])
    pids: list[int] = []
    with contextlib.suppress(OSError, ValueError, KeyError):
        for entry in json.loads((state_dir / "state.json").read_text())["delayers"].values():
            pid = int(entry["pid"])
            if "delayer.py" in _cmdline(pid):
                pids.append(pid)
    for namespace in namespaces:
        pids += _namespace_pids(namespace)
    _kill(sorted(set(pids)))
    for namespace in namespaces:
        run_command(Command(("ip", "netns", "del", namespace), may_fail=True))
    if state_dir.is_dir():
        for path in state_dir.iterdir():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            state_dir.rmdir()
    return namespaces


@contextlib.contextmanager
def _locked(prefix: str, *, remove: bool = False) -> Iterator[None]:
    """One ``up`` / ``down`` / ``impair`` at a time per lab (``remove``: the lab is going)."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{prefix.rstrip('-')}.lock"
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
        if remove:
            path.unlink(missing_ok=True)


class Lab:
    """A lab that is up.  Make one with :meth:`up` (or :meth:`attach` to one already up).

    Use it as a context manager to tear it down on exit::

        with Lab.up(LabConfig.from_toml("infra/lab/example.toml"), name="t1") as lab:
            lab.exec("alice", ["ping", "-c1", lab.host("mediator").address])
    """

    def __init__(
        self,
        name: str | None,
        config: LabConfig,
        impairments: Mapping[str, Impairment] | None = None,
        delayers: Mapping[str, int] | None = None,
    ) -> None:
        self.name = name
        self.prefix = lab_prefix(name)
        self.config = config
        self.topology = Topology.plan(config, self.prefix)
        self.impairments: dict[str, Impairment] = {
            link: Impairment() for link in self.topology.links
        }
        self.impairments.update(impairments or {})
        self.delayers: dict[str, int] = dict(delayers or {})
        self._children: list[subprocess.Popen[Any]] = []

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        config: LabConfig | Mapping[str, Any] | str | Path,
        *,
        name: str | None = None,
        log: IO[str] | None = None,
    ) -> Lab:
        """Build the lab, after removing whatever an earlier run of the same name left.

        Args:
            config: a :class:`LabConfig`, its TOML structure as a dict, or a TOML file path.
            name: the lab's name (namespaces ``dsl-NAME-*``); None is the default lab
                (``dsl-*``).  Different names can be up side by side.
            log: where to say what leftovers were removed.

        Raises:
            ConfigError: the config is invalid.
            LabError: a command failed (the half-built lab is torn down again).
        """
        if isinstance(config, LabConfig):
            cfg = config
        elif isinstance(config, str | Path):
            cfg = LabConfig.from_toml(config)
        else:
            cfg = LabConfig.from_dict(config)
        lab = cls(name, cfg)
        with _locked(lab.prefix):
            removed = _teardown(name)
            if removed and log is not None:
                print(f"lab: removed leftovers of an earlier run: {' '.join(removed)}", file=log)
            try:
                lab._state_dir.mkdir(parents=True, exist_ok=True)
                for cmd in setup_commands(lab.topology):
                    run_command(cmd)
                for link in lab.topology.links.values():
                    impairment = _configured_impairment(cfg, lab.topology.hosts[link.host])
                    if not impairment.is_none:
                        lab._apply(link, impairment)
                lab._save()
            except BaseException:
                lab._reap()
                _teardown(name)
                raise
        return lab

    @classmethod
    def attach(cls, name: str | None = None) -> Lab:
        """The lab of that name that is up, from its state file.

        Raises:
            NotRunningError: no state file for that lab.
        """
        path = _state_dir(lab_prefix(name)) / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            label = f"lab {name!r}" if name else "the default lab"
            raise NotRunningError(f"{label} is not up (no {path})") from None
        if data.get("version") != STATE_VERSION:
            raise LabError(f"{path}: unknown state version; run `lab down` and `lab up` again")
        impairments = {k: Impairment().updated(v) for k, v in data["impairments"].items()}
        delayers = {k: int(v["pid"]) for k, v in data["delayers"].items()}
        return cls(name, LabConfig.from_dict(data["config"]), impairments, delayers)

    def down(self) -> None:
        """Remove every namespace, veth and process of this lab; safe to call twice."""
        with _locked(self.prefix, remove=True):
            self._reap()
            _teardown(self.name)
            self.delayers.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # -- looking around -------------------------------------------------------------------

    @property
    def hosts(self) -> dict[str, Host]:
        return self.topology.hosts

    @property
    def links(self) -> dict[str, Link]:
        return self.topology.links

    def host(self, name: str) -> Host:
        """The host called ``name``; raises :class:`ConfigError` listing the hosts if none."""
        return self.topology.host(name)

    def namespace(self, host: str) -> str:
        return self.topology.host(host).namespace

    def describe(self) -> dict[str, Any]:
        """What ``lab up --json`` and ``lab hosts --json`` print."""
        return {
            "lab": self.name,
            "prefix": self.prefix,
            "internet": str(self.topology.internet),
            "hosts": [h.as_dict() for h in self.hosts.values()],
            "links": [
                {**link.as_dict(), "impairment": self.impairments[link.name].as_dict()}
                for link in self.links.values()
            ],
        }

    def status(self) -> dict[str, Any]:
        """Which namespaces exist, each link's impairment and delayer, each NAT's table size."""
        present = set(list_namespaces())
        links = {}
        for name in self.links:
            pid = self.delayers.get(name)
            links[name] = {
                "impairment": self.impairments[name].as_dict(),
                "delayer": None
                if pid is None
                else {"pid": pid, "alive": _alive(pid) and "delayer.py" in _cmdline(pid)},
            }
        routers = {}
        for host in self.hosts.values():
            if host.role is Role.ROUTER and host.namespace in present:
                proc = self.exec(host.name, ["conntrack", "-C"])
                routers[host.name] = {
                    "nat": host.nat.value if host.nat else None,
                    "conntrack_entries": int(proc.stdout.strip() or 0)
                    if proc.returncode == 0
                    else None,
                }
        missing = [h.namespace for h in self.hosts.values() if h.namespace not in present]
        return {
            "lab": self.name,
            "prefix": self.prefix,
            "healthy": not missing
            and all(v["delayer"] is None or v["delayer"]["alive"] for v in links.values()),
            "missing_namespaces": missing,
            "links": links,
            "routers": routers,
        }

    # -- running things -------------------------------------------------------------------

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``host``'s namespace (``ip netns exec``)."""
        if not argv:
            raise LabError("no command given")
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        check: bool = False,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host``'s namespace and wait; output captured as text.

        Raises:
            subprocess.TimeoutExpired: it ran longer than ``timeout``.
            subprocess.CalledProcessError: ``check`` and a non-zero exit.
        """
        return subprocess.run(
            self.command(host, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=None if env is None else dict(env),
        )

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host``'s namespace (``subprocess.Popen`` keyword arguments).

        The process dies with the lab at :meth:`down` if it is still running then.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(host, argv), **kwargs)
        self._children = [p for p in self._children if p.poll() is None]
        self._children.append(proc)
        return proc

    # -- impairments ----------------------------------------------------------------------

    def impairment(self, link: str) -> Impairment:
        self.topology.link(link)
        return self.impairments[link]

    def impair(
        self, link: str, impairment: Impairment | None = None, **changes: object
    ) -> Impairment:
        """Set ``link``'s impairments at run time; returns the new :class:`Impairment`.

        Either a whole ``impairment`` or field changes in config spelling, e.g.
        ``lab.impair("home1", delay="40ms", loss=0.05)``; ``lab.impair("home1", Impairment())``
        clears everything.
        """
        target = self.topology.link(link)
        with _locked(self.prefix):
            self._reload()  # another process (`lab impair`) may have changed the link
            current = self.impairments[link]
            new = impairment if impairment is not None else current.updated(changes)
            self._apply(target, new)
            self._save()
        return new

    def _apply(self, link: Link, imp: Impairment) -> None:
        params = self._state_dir / f"delay-{link.name}.json"
        pid = self.delayers.get(link.name)
        if pid is not None and not (_alive(pid) and "delayer.py" in _cmdline(pid)):
            pid = None
            del self.delayers[link.name]
        if imp.delay:
            _write_json(params, {"delay": imp.delay, "jitter": imp.jitter})
            if pid is None:
                self.delayers[link.name] = self._start_delayer(link, params)
            else:
                os.kill(pid, signal.SIGHUP)
        for cmd in impairment_commands(self.topology, link, imp):
            run_command(cmd)
        if not imp.delay and pid is not None:
            # The NFQUEUE rule is gone, so nothing new arrives; held packets are released.
            _kill([pid])
            del self.delayers[link.name]
            params.unlink(missing_ok=True)
        self.impairments[link.name] = imp

    def _start_delayer(self, link: Link, params: Path) -> int:
        if importlib.util.find_spec("netfilterqueue") is None:
            raise LabError(
                f"delay on link {link.name} needs the Python package netfilterqueue in "
                f"{sys.executable}: apt-get install libnetfilter-queue-dev, then "
                "pip install -e '.[lab]' (./run does both)"
            )
        log_path = self._state_dir / f"delay-{link.name}.log"
        argv = [sys.executable, str(DELAYER), "--params", str(params)]
        argv += ["--queue", str(link.up_queue), "--queue", str(link.down_queue)]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                self.command(CORE, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        line = proc.stdout.readline().decode().strip() if ready else ""
        proc.stdout.close()
        if line != "ready":
            _kill([proc.pid])
            proc.wait()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise LabError(f"the delayer for link {link.name} did not start:\n{tail}")
        self._children.append(proc)
        return proc.pid

    # -- state ----------------------------------------------------------------------------

    @property
    def _state_dir(self) -> Path:
        return _state_dir(self.prefix)

    def _save(self) -> None:
        _write_json(
            self._state_dir / "state.json",
            {
                "version": STATE_VERSION,
                "name": self.name,
                "prefix": self.prefix,
                "config": self.config.as_dict(),
                "impairments": {k: v.as_dict() for k, v in self.impairments.items()},
                "delayers": {k: {"pid": v} for k, v in self.delayers.items()},
                "hosts": [h.as_dict() for h in self.hosts.values()],
            },
        )

    def _reload(self) -> None:
        """Take the impairments and delayers from the state file, if there is one."""
        try:
            data = json.loads((self._state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return
        for link, values in data.get("impairments", {}).items():
            if link in self.impairments:
                self.impairments[link] = Impairment().updated(values)
        self.delayers = {k: int(v["pid"]) for k, v in data.get("delayers", {}).items()}

    def _reap(self) -> None:
        """Kill and wait for the processes this object started, so none is left a zombie."""
        _kill([p.pid for p in self._children if p.poll() is None])
        for proc in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        self._children.clear()


def _configured_impairment(cfg: LabConfig, host: Host) -> Impairment:
    """What the config asks of the access link ``host`` sits on: the mediator's, or its home's."""
    if host.role is Role.MEDIATOR and cfg.mediator is not None:
        return cfg.mediator.impair
    for home in cfg.homes:
        if home.name == host.home:
            return home.impair
    return Impairment()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
