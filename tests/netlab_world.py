"""A NAT lab with the real mediator and didsession identities in it, for sessions across NATs.

Used by ``tests/test_netlab_sessions.py`` and ``bench/nat.py``.  :func:`build_world` brings up
one lab (``infra/lab``) with the homes of :data:`CONFIG`, starts the mediator process in the
mediator's namespace (HTTP and relay on 203.0.113.10:8080, STUN on .10:3478 with its RFC 5780
alternate on .11:3479), and creates one identity per party, inside the party's namespace, with
``didsession init --mediator URL`` (which asks the mediator for mediation).  Everything then
runs as the real CLI (``didsession listen`` / ``connect`` / ``status``) or as real MPyC
programs, each process in its host's namespace:

* :class:`Chat`: a ``listen``/``connect --json`` process: lines go to its stdin, its JSON
  events are collected with the time they arrived;
* :func:`session`: ``listen --once`` on one party, ``connect`` from another, both established;
* :func:`run_mpyc`: one MPyC program with ``--didcomm roster.json`` on several parties at once.

Needs root and ``ip netns``: :func:`lab_unavailable` says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "infra" / "lab") not in sys.path:
    sys.path.insert(0, str(ROOT / "infra" / "lab"))

from netlab import Impairment, Lab, lab_prefix, list_labs, teardown  # noqa: E402

__all__ = [
    "CONFIG",
    "DIAL_TIMEOUT",
    "HOMES",
    "HTTP_PORT",
    "MPYC_PARTIES",
    "PAIRS",
    "PARTIES",
    "Chat",
    "Impairment",  # re-exported from netlab: importers need not touch sys.path
    "Lab",
    "Mediator",
    "MpycParty",
    "World",
    "build_world",
    "established",
    "lab_namespaces",
    "lab_unavailable",
    "make_roster",
    "on_path",
    "plain_mpyc",
    "remove_stale_labs",
    "run_mpyc",
    "session",
]

PROGRAMS = ROOT / "tests" / "mpyc_programs"
PY = sys.executable

# Homes: cone A with two parties on one LAN, cone B, symmetric C (two parties, so that a
# sym<->cone and a sym<->sym session can run at once without sharing an identity),
# symmetric D, and cone E (the third cone home of the MPyC runs: a1, b1, e1).
CONFIG: dict[str, Any] = {
    "mediator": {"name": "mediator"},
    "home": [
        {"name": "conea", "nat": "cone", "parties": ["a1", "a2"]},
        {"name": "coneb", "nat": "cone", "parties": ["b1"]},
        {"name": "symc", "nat": "symmetric", "parties": ["c1", "c2"]},
        {"name": "symd", "nat": "symmetric", "parties": ["d1"]},
        {"name": "conee", "nat": "cone", "parties": ["e1"]},
    ],
}
PARTIES = ("a1", "a2", "b1", "c1", "c2", "d1", "e1")
HOMES = ("conea", "coneb", "symc", "symd", "conee")
# Pairs that accept each other's invitations (listener, connector).
PAIRS = (("b1", "a1"), ("a2", "a1"), ("b1", "c1"), ("c2", "d1"))
MPYC_PARTIES = ("a1", "b1", "e1")
HTTP_PORT, STUN_PORT, ALTERNATE_PORT = 8080, 3478, 3479
# didsession.direct.DIAL_TIMEOUT: how long a session dials the peer's candidates.
DIAL_TIMEOUT = 10.0


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, iptables)"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"ip netns is unavailable here: {proc.stderr.strip()}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def remove_stale_labs(prefix: str) -> None:
    """Labs ``<prefix><pid>`` whose process is gone (a run killed before its cleanup)."""
    for name in list_labs():
        match = re.fullmatch(rf"{re.escape(prefix)}(\d+)", name or "")
        if match and not _pid_alive(int(match.group(1))):
            teardown(name)


def lab_namespaces(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [ns for ns in names if ns.startswith(lab_prefix(name))]


class Mediator:
    """The mediator process in the lab's mediator namespace; can be killed and restarted
    (same data directory: same DID, same mediation grants)."""

    def __init__(self, lab: Lab, base: Path) -> None:
        self.lab = lab
        self.data = base / "data"
        self.log = base / "mediator.log"
        self.address = lab.host("mediator").addresses[0]
        self.alternate = lab.host("mediator").addresses[1]
        self.url = f"http://{self.address}:{HTTP_PORT}"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [
            PY,
            "-m",
            "mediator",
            "--host",
            self.address,
            "--port",
            str(HTTP_PORT),
            "--public-url",
            self.url,
            "--data-dir",
            str(self.data),
            "--stun-port",
            str(STUN_PORT),
            "--stun-alternate",
            f"{self.alternate}:{ALTERNATE_PORT}",
            "--stun-rate",
            "0",
            "--log-format",
            "json",
        ]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIDSESSION_MEDIATOR_")}
        with self.log.open("ab") as out:
            self.proc = self.lab.popen(
                "mediator", self.argv(), stdout=out, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            if '"mediator listening"' in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the mediator did not start:\n{self.log.read_text(errors='replace')}")

    def ensure(self) -> None:
        if not self.running:
            self.start()

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone (its sockets are reset by the kernel)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)


@dataclass
class World:
    """A lab that is up, its mediator, and one didsession home per party."""

    name: str
    lab: Lab
    base: Path
    mediator: Mediator

    def home(self, host: str) -> Path:
        return self.base / "homes" / host

    def env(self, host: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIDSESSION_")}
        env["DIDSESSION_HOME"] = str(self.home(host))
        return env

    def public(self, host: str) -> str:
        """The address the internet sees ``host`` at (its router's WAN address)."""
        address = self.lab.host(host).public_address
        assert address is not None
        return address

    def address(self, host: str) -> str:
        return self.lab.host(host).address

    def cli(self, host: str, *args: str, timeout: float = 60.0) -> str:
        """``didsession ARGS`` in ``host``'s namespace with its home; its stdout."""
        proc = self.lab.exec(
            host, [PY, "-m", "didsession.cli", *args], env=self.env(host), timeout=timeout
        )
        if proc.returncode != 0:
            raise AssertionError(f"{host}: didsession {' '.join(args)} failed:\n{proc.stderr}")
        return proc.stdout

    def chat(self, host: str, *args: str, name: str | None = None) -> Chat:
        return Chat(self, host, args, name or f"{host}-{args[0]}")

    def status(self, host: str) -> list[dict[str, Any]]:
        """``didsession status --json`` in ``host``'s home."""
        doc: list[dict[str, Any]] = json.loads(self.cli(host, "status", "--json"))
        return doc

    def wait_status(
        self,
        host: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float,
        program: str = "connect",
    ) -> dict[str, Any]:
        """The first open session of ``program`` in ``host``'s status passing ``check``
        (status files are rewritten about every second)."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            seen = [
                s for s in self.status(host) if s["program"] == program and s["state"] == "open"
            ]
            for s in seen:
                if check(s):
                    return s
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{host}: no {program} session as expected in {timeout:g} s; status:\n"
                    + json.dumps(seen, indent=1)
                )
            time.sleep(0.3)


def build_world(name: str, base: Path, log: IO[str] | None = None) -> World:
    """Bring the lab up, start the mediator, create the identities and introduce the
    :data:`PAIRS`.  The caller owns the lab (``world.lab.down()``)."""
    lab = Lab.up(CONFIG, name=name, log=log)
    try:
        (base / "homes").mkdir(parents=True, exist_ok=True)
        mediator = Mediator(lab, base)
        mediator.start()
        world = World(name, lab, base, mediator)
        with ThreadPoolExecutor(len(PARTIES)) as pool:
            inits = [
                pool.submit(world.cli, p, "init", "--name", p, "--mediator", mediator.url)
                for p in PARTIES
            ]
            for f in inits:
                f.result()
            invites = dict(
                zip(
                    PARTIES,
                    pool.map(lambda p: world.cli(p, "invite", "--format", "url").strip(), PARTIES),
                    strict=True,
                )
            )
            # One home's accepts one after the other: 'didsession accept' rewrites the
            # contacts file without a lock, so concurrent ones in one home lose contacts.
            peers: dict[str, list[str]] = {}
            for a, b in PAIRS:
                peers.setdefault(a, []).append(b)
                peers.setdefault(b, []).append(a)

            def accept_all(me: str) -> None:
                for other in peers[me]:
                    world.cli(me, "accept", invites[other], "--alias", other)

            for done in [pool.submit(accept_all, me) for me in peers]:
                done.result()
        return world
    except BaseException:
        lab.down()
        raise


def _is(event: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == event


class Chat:
    """A ``didsession listen``/``connect --json`` process in a lab host: :meth:`send`
    writes a line to its stdin; its JSON events are kept with their arrival time
    (``time.monotonic()``); its stderr goes to ``BASE/NAME.err``."""

    def __init__(self, world: World, host: str, args: Sequence[str], name: str) -> None:
        self.host = host
        self.err_path = world.base / f"{name}.err"
        self._err = self.err_path.open("wb")
        self.started = time.monotonic()
        self.proc: subprocess.Popen[str] = world.lab.popen(
            host,
            [PY, "-m", "didsession.cli", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=world.env(host),
            text=True,
            bufsize=1,
        )
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "text": line.rstrip("\n")}
            with self._cond:
                self.events.append((time.monotonic(), event))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def find(self, check: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]] | None:
        with self._cond:
            return next(((t, e) for t, e in self.events if check(e)), None)

    def wait_for(
        self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> tuple[float, dict[str, Any]]:
        """The first event passing ``check`` (with its arrival time), waiting up to
        ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next(((t, e) for t, e in self.events if check(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "exited" if self._eof else f"nothing in {timeout:g} s"
                    raise AssertionError(f"{self.host}: no {what} ({why})\n{self.describe()}")
                self._cond.wait(left)

    def messages(self) -> list[str]:
        with self._cond:
            return [e["text"] for _, e in self.events if e.get("event") == "message"]

    def wait_messages(self, n: int, timeout: float) -> list[str]:
        """The first ``n`` lines received, waiting up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [e["text"] for _, e in self.events if e.get("event") == "message"]
                left = deadline - time.monotonic()
                if len(got) >= n:
                    return got[:n]
                if self._eof or left <= 0:
                    raise AssertionError(
                        f"{self.host}: {len(got)} of {n} lines arrived\n{self.describe()}"
                    )
                self._cond.wait(left)

    def path_events(self) -> list[tuple[str, str]]:
        with self._cond:
            return [(e["path"], e["reason"]) for _, e in self.events if e.get("event") == "path"]

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def describe(self) -> str:
        with self._cond:
            events = "\n".join(json.dumps(e)[:300] for _, e in self.events)
        err = self.err_path.read_text(errors="replace")[-3000:]
        return f"--- {self.host} events:\n{events}\n--- {self.host} stderr:\n{err}"

    def close(self, timeout: float = 15.0) -> int | None:
        """End stdin (which ends the session), wait for the process; kill it if it hangs.
        Returns its exit status (None: killed)."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        code: int | None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            code = None
        self._reader.join(5)
        self._err.close()
        return code


def established(event: dict[str, Any]) -> bool:
    return event.get("event") == "established"


def on_path(kind: str, reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == "path" and e["path"] == kind and e["reason"] == reason


@contextlib.contextmanager
def session(
    world: World, listener: str, connector: str, *, relay_only: bool = False
) -> Iterator[tuple[Chat, Chat]]:
    """``listen --once`` on ``listener`` (through the mediator), then ``connect`` from
    ``connector`` (no ``--to``); yields both once both say the session is established.
    Leaving ends the connector's stdin, which ends the session and both processes."""
    extra = ["--relay-only"] if relay_only else []
    lis = world.chat(
        listener, "listen", "--port", "0", "--once", "--json", "--peer", connector, *extra
    )
    try:
        lis.wait_for(
            lambda e: e.get("event") == "listening" and "mediator" in e, 30, "mediator listening"
        )
        con = world.chat(connector, "connect", listener, "--json", *extra)
        try:
            con.wait_for(established, 30, "established session")
            lis.wait_for(established, 30, "established session")
            yield lis, con
        finally:
            con.close()
    finally:
        lis.close()


# -- MPyC -----------------------------------------------------------------------------------


@dataclass
class MpycParty:
    """One party's run: exit status (None: killed), stdout (MPyC's log and the program's
    lines), stderr."""

    host: str
    code: int | None
    out: str
    err: str
    wall: float

    @property
    def printed(self) -> list[str]:
        """What the program printed: stdout without MPyC's timestamped log lines."""
        return [ln for ln in self.out.splitlines() if ln and not ln[:4].isdigit()]

    @property
    def upgrades(self) -> int:
        """Links this party saw move to a direct path."""
        return len(re.findall(r"now on the direct path .* \(upgrade\)", self.out))

    @property
    def elapsed(self) -> float | None:
        """MPyC's own elapsed time (``Stop MPyC -- elapsed time: H:MM:SS.ffffff``)."""
        m = re.search(r"elapsed time: (\d+):(\d+):(\d+(?:\.\d+)?)", self.out)
        return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None

    @property
    def final_paths(self) -> list[str]:
        """The path of each link in MPyC's report at shutdown (``link with ...: direct,``)."""
        return re.findall(r"link with party \d+ \([^)]*\): (direct|relay), \d+ messages", self.out)


def make_roster(world: World, hosts: Sequence[str], path: Path, *, relay_only: bool) -> Path:
    """A roster of ``hosts`` in that order with the mediator and no addresses (every link
    starts on the relay), built with ``didsession roster make`` from their invitations."""
    invites = [world.cli(h, "invite", "--format", "url").strip() for h in hosts]
    args = ["roster", "make", "-o", str(path), *invites, "--mediator", world.mediator.url]
    world.cli(hosts[0], *args, *(["--relay-only"] if relay_only else []))
    return path


def run_mpyc(
    world: World,
    hosts: Sequence[str],
    program: Sequence[str],
    roster: Path,
    workdir: Path,
    *,
    timeout: float = 120.0,
    watch: Callable[[list[str]], None] | None = None,
) -> list[MpycParty]:
    """Run ``program`` (a file in tests/mpyc_programs and its arguments) with ``--didcomm
    roster -I i`` on every host at once, highest party first (like MPyC's -M).  ``watch``
    gets every party's stdout so far about every 0.1 s while they run."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    files: list[IO[bytes]] = []
    started = time.monotonic()
    ends: dict[int, float] = {}
    try:
        for i in reversed(range(len(hosts))):
            host = hosts[i]
            out = (workdir / f"p{i}.out").open("wb")
            err = (workdir / f"p{i}.err").open("wb")
            files += [out, err]
            argv = [PY, str(PROGRAMS / program[0]), *program[1:], "--didcomm", str(roster)]
            argv += ["--didcomm-home", str(world.home(host)), "-I", str(i)]
            procs[i] = world.lab.popen(
                host, argv, stdout=out, stderr=err, env=world.env(host), cwd=workdir
            )
        deadline = started + timeout
        while len(ends) < len(procs) and time.monotonic() < deadline:
            for i, proc in procs.items():
                if i not in ends and proc.poll() is not None:
                    ends[i] = time.monotonic()
            if watch is not None:
                watch([_read(workdir / f"p{i}.out") for i in range(len(hosts))])
            time.sleep(0.1)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        for f in files:
            f.close()
    return [
        MpycParty(
            host,
            procs[i].returncode if i in ends else None,
            _read(workdir / f"p{i}.out"),
            _read(workdir / f"p{i}.err"),
            ends.get(i, time.monotonic()) - started,
        )
        for i, host in enumerate(hosts)
    ]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def plain_mpyc(program: Sequence[str], workdir: Path, timeout: float = 120.0) -> list[str]:
    """The program's printed lines when run by plain MPyC on loopback (``-M3``, no didcomm)."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [PY, str(PROGRAMS / program[0]), "-M3", "--no-log", *program[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=workdir,
    )
    if proc.returncode != 0:
        raise AssertionError(f"plain MPyC failed:\n{proc.stderr}")
    return [ln for ln in proc.stdout.splitlines() if ln]
