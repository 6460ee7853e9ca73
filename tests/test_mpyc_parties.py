"""Real MPyC parties as separate processes on loopback: ``--didcomm`` against plain TCP.

Every party is its own process (its own process group, killed at the end whatever
happens), listening on ports found free just before, with a bounded wait.  The programs
are in ``tests/mpyc_programs``; their output is deterministic, so a run over sessions must
print exactly what the plain TCP run printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from mediator_proc import mediator_process

from didsession.identity import Identity, Store
from mpyc_adapter.embedded import EmbeddedMediator, mediator_available, start_embedded_mediator
from mpyc_adapter.launcher import free_ports
from mpyc_adapter.roster import Party, Roster, load_roster

PROGRAMS = Path(__file__).parent / "mpyc_programs"
PY = sys.executable
RUN_TIMEOUT = 120.0
pytestmark = pytest.mark.slow


@dataclass
class Result:
    code: int | None  # None: still running when the run ended (then killed)
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """What the program printed: stdout without MPyC's timestamped log lines."""
        return [ln for ln in self.out.splitlines() if ln and not ln[:4].isdigit()]


def run_parties(
    cmds: Sequence[Sequence[str]],
    tmp: Path,
    *,
    env: dict[str, str] | None = None,
    homes: Sequence[Path | None] = (),
    delays: dict[int, float] | None = None,
    done: Callable[[list[subprocess.Popen[bytes]]], bool] | None = None,
    timeout: float = RUN_TIMEOUT,
    before: dict[int, Callable[[], None]] | None = None,
) -> list[Result]:
    """Run one process per command (highest party first, like MPyC) until all exit, or
    until ``done(procs)``; then give the rest 2 s and kill them.  ``before[i]`` runs just
    before party i starts.  Output goes to files, so nothing blocks on a full pipe."""
    tmp.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes] | None] = [None] * len(cmds)
    files = []
    try:
        order = sorted(range(len(cmds)), key=lambda i: (delays or {}).get(i, 0.0) * 1000 - i)
        t0 = time.monotonic()
        for i in order:
            wait = (delays or {}).get(i, 0.0) - (time.monotonic() - t0)
            if wait > 0:
                time.sleep(wait)
            if before and i in before:
                before[i]()
            out, err = tmp / f"p{i}.out", tmp / f"p{i}.err"
            fo, fe = out.open("wb"), err.open("wb")
            files += [fo, fe]
            penv = dict(os.environ, **(env or {}))
            home = homes[i] if i < len(homes) else None
            if home is not None:
                penv["DIDSESSION_HOME"] = str(home)
            procs[i] = subprocess.Popen(
                list(cmds[i]), stdout=fo, stderr=fe, env=penv, cwd=tmp, start_new_session=True
            )
        started = [p for p in procs if p is not None]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.poll() is not None for p in started) or (done and done(started)):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"parties still running after {timeout} s:\n{_tails(tmp, len(cmds))}")
        grace = time.monotonic() + 2.0
        while time.monotonic() < grace and any(p.poll() is None for p in started):
            time.sleep(0.05)
    finally:
        for p in procs:
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for f in files:
            f.close()
    return [
        Result(
            p.returncode
            if p is not None and p.returncode is not None and p.returncode >= 0
            else None,
            (tmp / f"p{i}.out").read_text(errors="replace"),
            (tmp / f"p{i}.err").read_text(errors="replace"),
        )
        for i, p in enumerate(procs)
    ]


def _tails(tmp: Path, n: int) -> str:
    out = []
    for i in range(n):
        for ext in ("out", "err"):
            with contextlib.suppress(OSError):
                text = (tmp / f"p{i}.{ext}").read_text(errors="replace")
                out.append(f"--- party {i} {ext}:\n{text[-1500:]}")
    return "\n".join(out)


def ok(results: list[Result]) -> list[Result]:
    for i, r in enumerate(results):
        assert r.code == 0, f"party {i} exited {r.code}:\n{r.err[-3000:]}\n{r.out[-1500:]}"
    return results


def tcp(program: str, args: Sequence[str], n: int, tmp: Path) -> list[Result]:
    addrs = [a for p in free_ports(n) for a in ("-P", f"127.0.0.1:{p}")]
    cmds = [[PY, str(PROGRAMS / program), *args, *addrs, "-I", str(i)] for i in range(n)]
    return ok(run_parties(cmds, tmp))


@dataclass
class Parties:
    """Homes with one identity each, and rosters over them."""

    root: Path
    homes: list[Path]
    identities: list[Identity]

    def roster(
        self, n: int, *, mediator: str | None = None, relay_only: bool = False, name: str = "r"
    ) -> Path:
        ports = free_ports(n)
        roster = Roster(
            tuple(
                Party(self.identities[i].did, f"p{i}", ("127.0.0.1", ports[i])) for i in range(n)
            ),
            mediator=mediator,
            relay_only=relay_only,
        )
        path = self.root / f"{name}-{ports[0]}.json"
        roster.save(path)
        return path

    def didcomm(
        self, program: str, args: Sequence[str], roster: Path, n: int, tmp: Path, **kw: object
    ) -> list[Result]:
        cmds = [[PY, str(PROGRAMS / program), *args, "--didcomm", str(roster)] for _ in range(n)]
        return run_parties(cmds, tmp, homes=self.homes[:n], **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Parties:
    root = tmp_path_factory.mktemp("parties")
    homes = [root / f"home{i}" for i in range(5)]
    identities = [Store(h).create(f"p{i}") for i, h in enumerate(homes)]
    return Parties(root, homes, identities)


@pytest.fixture(scope="module")
def mediator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMediator]:
    if not mediator_available():
        pytest.skip("this installation has no mediator")
    med = start_embedded_mediator(tmp_path_factory.mktemp("mediator") / "data")
    try:
        med.wait_ready()
        yield med
    finally:
        med.stop()


WORKLOAD = ("workload.py", ["1000", "6", "100000"])


@pytest.fixture(scope="module")
def tcp_workload(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    results = tcp(*WORKLOAD, 3, tmp_path_factory.mktemp("tcp"))
    lines = results[0].lines
    assert all(r.lines[:-1] == lines[:-1] for r in results)
    return lines


def check_workload(results: list[Result], expected: list[str], path: str) -> None:
    ok(results)
    for r in results:
        # Identical output; the last line is the largest message (share sizes vary a bit).
        assert r.lines[:-1] == expected[:-1]
        assert int(r.lines[-1].split()[-1]) > 1_000_000
        # Three start()s: every link set up three times, each over the expected path.
        assert r.out.count("didsession: link with party") >= 2 * 3 * 2
        assert f": {path}" in r.out


def test_workload_over_direct_sessions_matches_tcp(
    parties: Parties, tcp_workload: list[str], tmp_path: Path
) -> None:
    """Thousands of scalar operations, mpc.np_*, >1 MB messages, start/shutdown 3 times."""
    results = parties.didcomm(*WORKLOAD, parties.roster(3), 3, tmp_path)
    check_workload(results, tcp_workload, "direct")


def test_workload_over_the_relay_matches_tcp(
    parties: Parties, tcp_workload: list[str], mediator: EmbeddedMediator, tmp_path: Path
) -> None:
    roster = parties.roster(3, mediator=mediator.url, relay_only=True)
    results = parties.didcomm(*WORKLOAD, roster, 3, tmp_path)
    check_workload(results, tcp_workload, "relay")


def test_five_parties_with_mixed_paths(
    parties: Parties, mediator: EmbeddedMediator, tmp_path: Path
) -> None:
    """Five parties; party 4 has no address, so the links to it go through the relay."""
    expected = tcp("arrays.py", ["5"], 5, tmp_path / "tcp")[0].lines
    path = parties.roster(5, mediator=mediator.url)
    roster = Roster.from_json(json.loads(path.read_text()))
    last = roster.parties[4]
    Roster((*roster.parties[:4], Party(last.did, last.label)), mediator=mediator.url).save(path)
    results = ok(parties.didcomm("arrays.py", ["5"], path, 5, tmp_path))
    for r in results:
        assert r.lines == expected, r.out
    # Links to party 4 start on the relay (then look for a direct path, see below).
    assert "session with party 4 (p4) now on the relay path (initial)" in results[0].out
    assert "link with party 1 (p1): direct" in results[0].out
    assert "session with party 3 (p3) now on the relay path (initial)" in results[4].out


def test_an_unreachable_address_falls_back_to_the_relay(
    parties: Parties, mediator: EmbeddedMediator, tmp_path: Path
) -> None:
    """Party 2's roster address does not answer (TEST-NET-1): the others use the relay."""
    path = parties.roster(3, mediator=mediator.url)
    roster = Roster.from_json(json.loads(path.read_text()))
    port = roster.parties[2].addr[1]  # type: ignore[index]
    unreachable = Party(roster.parties[2].did, "p2", ("192.0.2.1", port))
    Roster((*roster.parties[:2], unreachable), mediator=mediator.url).save(path)
    results = ok(parties.didcomm("sums.py", ["20"], path, 3, tmp_path))
    assert len({tuple(r.lines) for r in results}) == 1
    assert "no direct path to party 2 (p2) at 192.0.2.1" in results[0].out
    # The link starts on the relay (it may then find a direct path from the candidates).
    assert "session with party 2 (p2) now on the relay path (initial)" in results[0].out
    assert "link with party 1 (p1): direct" in results[0].out


def test_a_party_joining_late(parties: Parties, tmp_path: Path) -> None:
    """Party 2 starts 3 s after the others; they wait for it (MPyC retries every 0.1 s)."""
    expected = tcp("sums.py", ["50"], 3, tmp_path / "tcp")[0].lines
    roster = parties.roster(3)
    results = ok(parties.didcomm("sums.py", ["50"], roster, 3, tmp_path, delays={2: 3.0}))
    assert all(r.lines == expected for r in results)


def test_parties_say_whom_they_wait_for(parties: Parties, tmp_path: Path) -> None:
    """Party 0 starts 11 s late: the parties that accept its links (plain MPyC waits
    silently there) say after 10 s whom they are waiting for, then compute as usual."""
    roster = parties.roster(3)
    results = ok(parties.didcomm("sums.py", ["5"], roster, 3, tmp_path, delays={0: 11.0}))
    assert len({tuple(r.lines) for r in results}) == 1
    for r in results[1:]:
        assert "waiting for party 0 (p0) to connect (10 s so far)" in r.out, r.out
        assert "party 2 (p2) to connect" not in r.out and "party 1 (p1) to connect" not in r.out
    assert "to connect" not in results[0].out


def test_a_wrong_did_is_refused(parties: Parties, tmp_path: Path) -> None:
    """Party 1 is run by an identity outside the roster (with a roster of its own naming
    it): the honest parties refuse its sessions, and it stops with a clear error."""
    roster = parties.roster(3)
    doc = json.loads(roster.read_text())
    doc["parties"][1]["did"] = parties.identities[3].did  # the impostor's own roster
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    cmds = [
        [PY, str(PROGRAMS / "sums.py"), "20", "--didcomm", str(path)]
        for path in (roster, forged, roster)
    ]
    homes = [parties.homes[0], parties.homes[3], parties.homes[2]]
    results = run_parties(
        cmds, tmp_path, homes=homes, done=lambda ps: ps[1].poll() is not None, timeout=60
    )
    impostor = results[1]
    assert impostor.code == 1
    assert "didsession: error: party 1: party 2 (p2) refused the session" in impostor.err
    assert "refused a session from did:peer:2." in results[2].out
    assert "not a party of the roster" in results[2].out
    # The honest parties computed nothing and were still waiting for the real party 1.
    assert results[0].lines == [] and results[2].lines == []


def _capture_request(port: int, cmd: Sequence[str], home: Path, tmp: Path) -> bytes:
    """Listen on ``port`` in place of the party there, start ``cmd`` (the party below it),
    and record the first handshake item it sends: ``u32 length || packed request``."""
    tmp.mkdir(parents=True, exist_ok=True)
    with socket.create_server(("127.0.0.1", port)) as server:
        server.settimeout(30)
        with (tmp / "capture.out").open("wb") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, DIDSESSION_HOME=str(home)),
                cwd=tmp,
                start_new_session=True,
            )
            try:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(30)
                    buf = b""
                    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                        chunk = conn.recv(65536)
                        assert chunk, "the party hung up before sending its request"
                        buf += chunk
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    return buf[: 4 + struct.unpack(">I", buf[:4])[0]]


def _connect_when_listening(port: int) -> socket.socket:
    """A connection to 127.0.0.1:``port`` once a party listens there (within 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"nothing listened on port {port}"
            time.sleep(0.05)


def test_a_replayed_session_request_does_not_stop_a_party(parties: Parties, tmp_path: Path) -> None:
    """An outsider who recorded party 0's session request in an earlier run replays it to
    party 1 and hangs up.  It authenticates as party 0, but nobody can compute its keys
    (spec/session.md §11.5): party 1 warns, drops the link and goes on waiting; the real
    party 0 then connects and both compute what plain TCP computes."""
    expected = tcp("sums.py", ["20"], 2, tmp_path / "tcp")[0].lines
    roster = parties.roster(2)
    port = int(json.loads(roster.read_text())["parties"][1]["addr"].rsplit(":", 1)[1])
    cmd = [PY, str(PROGRAMS / "sums.py"), "20", "--didcomm", str(roster)]
    request = _capture_request(port, cmd, parties.homes[0], tmp_path / "capture")

    def replay_then_start_party_0() -> None:
        with _connect_when_listening(port) as conn:
            conn.sendall(request)
            # Party 1 answers (accept, then its sealed program record), then we hang up.
            assert conn.recv(65536), "party 1 did not answer the replayed request"
            time.sleep(0.3)

    results = run_parties(
        [cmd, cmd],
        tmp_path / "run",
        homes=parties.homes[:2],
        before={0: replay_then_start_party_0},
    )
    ok(results)
    assert all(r.lines == expected for r in results)
    assert "ended before its peer proved it holds the session keys" in results[1].out


def test_another_program_at_a_party_address_is_named(parties: Parties, tmp_path: Path) -> None:
    """An SSH server (say) listens where the roster puts party 1: party 0's warning says
    that what answers there does not speak the session protocol, at which address."""
    roster = parties.roster(2)
    port = int(json.loads(roster.read_text())["parties"][1]["addr"].rsplit(":", 1)[1])
    cmd = [PY, str(PROGRAMS / "sums.py"), "5", "--didcomm", str(roster)]
    hint = f"what answers at 127.0.0.1:{port} does not speak the session protocol"
    with socket.create_server(("127.0.0.1", port)) as server:
        server.settimeout(0.2)

        def answered(procs: list[subprocess.Popen[bytes]]) -> bool:
            with contextlib.suppress(TimeoutError), server.accept()[0] as conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            return hint in (tmp_path / "p0.out").read_text()

        results = run_parties([cmd], tmp_path, homes=parties.homes[:1], done=answered, timeout=30)
    assert results[0].code is None  # still waiting for party 1, as MPyC does
    assert "didsession: session with party 1 (p1) failed: frame length" in results[0].out
    assert hint in results[0].out
    assert "Traceback" not in results[0].out + results[0].err


def test_a_party_whose_program_fails_stops_the_others(parties: Parties, tmp_path: Path) -> None:
    """Party 0's program raises inside ``async with mpc:``; MPyC closes its links without
    a shutdown.  Under plain TCP the others would wait for ever; here they stop at once,
    saying that party 0 stopped on an error."""
    roster = parties.roster(3)
    cmd = [PY, str(PROGRAMS / "fails.py"), "--didcomm", str(roster)]
    results = run_parties([cmd] * 3, tmp_path, homes=parties.homes[:3], timeout=60)
    assert results[0].code == 1 and "RuntimeError: party 0 fails on purpose" in results[0].err
    # Party 0 printed the sum before failing; the others may stop before their print
    # (party 0's share and its CLOSE can arrive in one read).
    assert results[0].lines[:1] == ["sum 6"], results[0].out
    said = "stopped on an error (its own output says which)"
    for r in results[1:]:
        assert r.code == 1, r.err
        # Directly from party 0, or from the other party that heard it first.
        assert f"party 0 (p0) {said}" in r.err or f"stopped: party 0 {said}" in r.err, r.err


def _kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _default_sigint() -> None:
    # A shell's background job ignores SIGINT, and a Python started so never raises
    # KeyboardInterrupt: give the party what a terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signalable_parties(
    files: contextlib.ExitStack,
    cmd: list[str],
    parties: Parties,
    tmp_path: Path,
    ids: Sequence[int],
) -> list[subprocess.Popen[bytes]]:
    """Parties ``ids`` started in that order, each in its own session (a signal sent to
    one reaches it alone) and taking Ctrl-C as from a terminal; output in pN.out/err."""
    return [
        subprocess.Popen(
            cmd,
            stdout=files.enter_context((tmp_path / f"p{i}.out").open("wb")),
            stderr=files.enter_context((tmp_path / f"p{i}.err").open("wb")),
            env=dict(os.environ, DIDSESSION_HOME=str(parties.homes[i])),
            cwd=tmp_path,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        for i in ids
    ]


@pytest.mark.parametrize(
    ("sig", "code", "said", "relay"),
    [
        (signal.SIGINT, -signal.SIGINT, "was interrupted (Ctrl-C)", False),
        (signal.SIGTERM, 128 + signal.SIGTERM, "was stopped by SIGTERM", False),
        (signal.SIGTERM, 128 + signal.SIGTERM, "was stopped by SIGTERM", True),
    ],
    ids=["ctrl-c", "sigterm", "sigterm-relay"],
)
def test_a_stopped_party_tells_the_others_why(
    parties: Parties,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    sig: int,
    code: int,
    said: str,
    relay: bool,
) -> None:
    """Ctrl-C in party 0's terminal (or ``kill``) while the three compute, on direct or
    relay links: parties 1 and 2 stop saying so, not that their connection broke (party
    0 sends a CLOSE with the reason on each link and waits for the peers to read it)."""
    if relay:
        med: EmbeddedMediator = request.getfixturevalue("mediator")
        roster = parties.roster(3, mediator=med.url, relay_only=True)
    else:
        roster = parties.roster(3)
    cmd = [PY, str(PROGRAMS / "sums.py"), "100000", "--didcomm", str(roster)]
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as files:
        files.callback(_kill_all, procs)  # whatever happens
        procs += _signalable_parties(files, cmd, parties, tmp_path, (2, 1, 0))
        party0 = procs[-1]
        deadline = time.monotonic() + 60
        while " parties connected." not in (tmp_path / "p0.out").read_text():
            assert party0.poll() is None and time.monotonic() < deadline, _tails(tmp_path, 3)
            time.sleep(0.05)
        time.sleep(0.5)  # computing now
        party0.send_signal(sig)
        for p in procs:
            p.wait(30)
    # Ctrl-C: Python's own exit on KeyboardInterrupt (by SIGINT); a signal: 128+n.  One
    # line says so, not a traceback through the event loop.
    assert party0.returncode == code
    err = (tmp_path / "p0.err").read_text()
    name = "interrupted (Ctrl-C)" if sig == signal.SIGINT else signal.Signals(sig).name
    assert f"didsession: party 0: {name}: stopping\n" in err and "Traceback" not in err, err
    for i in (1, 2):
        err = (tmp_path / f"p{i}.err").read_text()
        assert procs[2 - i].returncode == 1, err
        assert f"party 0 (p0) {said}; stopping too" in err or f"stopped: party 0 {said}" in err, err
        assert "broke" not in err and "Traceback" not in err


def test_ctrl_c_while_waiting_for_a_party(parties: Parties, tmp_path: Path) -> None:
    """Ctrl-C in party 1 while ``start()`` waits for party 2 (never started): party 1 says
    whom it waited for, in one line, and exits by SIGINT; party 0, already linked with
    it, learns why instead of waiting on."""
    roster = parties.roster(3)
    cmd = [PY, str(PROGRAMS / "sums.py"), "--didcomm", str(roster)]
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as files:
        files.callback(_kill_all, procs)
        procs += _signalable_parties(files, cmd, parties, tmp_path, (1, 0))
        party1, party0 = procs
        deadline = time.monotonic() + 60
        while "link with party 0" not in _both(tmp_path, 1):
            assert party1.poll() is None and time.monotonic() < deadline, _tails(tmp_path, 2)
            time.sleep(0.05)
        party1.send_signal(signal.SIGINT)
        party1.wait(30)
        party0.wait(30)
    err1 = (tmp_path / "p1.err").read_text()
    assert party1.returncode == -signal.SIGINT, err1
    assert (
        "didsession: party 1: interrupted (Ctrl-C): stopping "
        "(it was waiting for party 2 (p2) to connect)\n"
    ) in err1
    assert "Traceback" not in err1, err1
    err0 = (tmp_path / "p0.err").read_text()
    assert party0.returncode == 1, err0
    assert "party 1 (p1) was interrupted (Ctrl-C); stopping too" in err0, err0


def _both(tmp_path: Path, i: int) -> str:
    return (tmp_path / f"p{i}.out").read_text() + (tmp_path / f"p{i}.err").read_text()


@contextlib.contextmanager
def _namespace() -> Iterator[str]:
    """A network namespace with loopback only: what a test does to packets stays in it."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"):
        pytest.skip("needs root, ip and iptables (network namespaces)")
    name = f"dsv{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _link_port(ns: str, pid: int, port: int) -> int:
    """The local port of process ``pid``'s connection to ``port`` in namespace ``ns``."""
    ss = ["ip", "netns", "exec", ns, "ss", "-Htnp", "state", "established", "dport", f":{port}"]
    for line in subprocess.run(ss, capture_output=True, text=True, check=True).stdout.splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[2].rpartition(":")[2])
    raise AssertionError(f"no connection of {pid} to port {port}")


@pytest.mark.parametrize("mode", ["idle", "busy", "partial", "full-window"])
def test_a_vanished_party_is_given_up(parties: Parties, tmp_path: Path, mode: str) -> None:
    """Party 2's machine drops off the network while the three compute (every packet to
    or from it is dropped; nothing is closed).  With ``--didcomm-timeout 3`` every party
    stops within seconds, naming the party that stopped answering, instead of waiting
    for ever (idle: the others wait for party 2, and the kernel's keepalive finds it
    gone) or for TCP's ~15 minutes of retransmissions (busy: data in flight to it).
    Partial: only the path between parties 0 and 2 breaks (party 2 waits 30 s itself);
    party 2 hears from party 1 that a party lost it.  Full window: the same, while party
    2 computes locally and party 0's data to it fills its window (nothing in flight, no
    keepalive: party 0 finds its window probes unanswered)."""
    roster = parties.roster(3)
    addr = load_roster(roster).parties[2].addr
    assert addr is not None
    cut: list[float] = []
    with _namespace() as ns:

        def cut_when_computing(procs: list[subprocess.Popen[bytes]]) -> bool:
            outs = [(tmp_path / f"p{i}.out").read_text() for i in range(3)]
            if not cut and all("computing" in out for out in outs):
                # busy: rounds in full swing; full window: party 0 has sent what fits
                time.sleep(2.5 if mode == "full-window" else 0.3)
                if mode in ("partial", "full-window"):
                    p0 = str(_link_port(ns, procs[0].pid, addr[1]))
                    pairs = [("--sport", p0, "--dport", str(addr[1]))]
                    pairs.append(("--sport", str(addr[1]), "--dport", p0))
                else:
                    pairs = [("--dport", str(addr[1])), ("--sport", str(addr[1]))]
                for match in pairs:
                    rule = ["INPUT", "-p", "tcp", *match, "-j", "DROP"]
                    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-I", *rule], check=True)
                cut.append(time.monotonic())
            return False

        program = {"partial": ["idle"], "full-window": ["block", "8"]}.get(mode, [mode])
        cmd = ["ip", "netns", "exec", ns, PY, str(PROGRAMS / "vanish.py"), *program]
        cmd += ["--didcomm", str(roster), "--didcomm-timeout", "3"]
        cmds = [cmd, cmd, [*cmd[:-1], "3" if mode in ("idle", "busy") else "30"]]
        results = run_parties(
            cmds, tmp_path, homes=parties.homes[:3], done=cut_when_computing, timeout=60
        )
    assert cut, _tails(tmp_path, 3)
    took = time.monotonic() - cut[0]
    assert took < 20, f"{took:.1f} s after the cut:\n{_tails(tmp_path, 3)}"
    for i, r in enumerate(results):
        assert r.code == 1 and "Traceback" not in r.err, f"party {i}: {r.code}\n{r.err}"
    for r in results[:2]:
        assert "party 2 (p2) stopped answering" in r.err or "party 2 stopped answering" in r.err
        assert "nothing from its machine for 3 s" in r.err or "stopped: party 2 stopped" in r.err
    if mode in ("partial", "full-window"):
        assert "party 0: party 2 (p2) stopped answering: nothing" in results[0].err
        said = "party 1 (p1) stopped: a party heard nothing from this party for too long"
        assert said in results[2].err, results[2].err
    else:
        assert re.search(r"party [01] \(p[01]\) stopped answering", results[2].err), results[2].err


# A mediator that pings its relay clients every 2 s (the default is 60 s; the other tests
# run it without pings).
HEARTBEAT = ["--ws-heartbeat", "2", "--relay-quota-bytes", "0", "--relay-quota-frames", "0"]


@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relay"])
def test_a_busy_party_is_not_given_up(parties: Parties, tmp_path: Path, relay: bool) -> None:
    """Party 2's event loop stands still for three times the timeout (direct) or the
    mediator's ping interval (relay) while party 0 sends it 100,000 numbers, so its
    receive window fills: its machine still answers, so no party is given up, and the sum
    is right.  (The relay dropped such a party when it took a missing pong for a vanished
    client: a long local step in an MPyC program ended the computation.)"""
    med = None
    try:
        if relay:
            med = mediator_process(tmp_path / "mediator", extra=HEARTBEAT).start()
            roster = parties.roster(3, mediator=med.url, relay_only=True)
        else:
            roster = parties.roster(3)
        args = ["block", "6", "--didcomm-timeout", "2"]
        results = ok(parties.didcomm("vanish.py", args, roster, 3, tmp_path))
    finally:
        if med is not None:
            med.stop()
    for r in results:
        assert "sum 4999950000" in r.lines, r.out


def _mediator_in(ns: str, tmp: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """The mediator in namespace ``ns`` (loopback), pinging its relay clients every 2 s."""
    port = free_ports(1)[0]
    cmd = ["ip", "netns", "exec", ns, PY, "-m", "mediator", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--data-dir", str(tmp / "mediator"), "--no-stun-enabled"]
    log = (tmp / "mediator.log").open("wb")
    proc = subprocess.Popen([*cmd, *HEARTBEAT], stdout=log, stderr=subprocess.STDOUT)
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
    deadline = time.monotonic() + 30
    while subprocess.run(["ip", "netns", "exec", ns, PY, "-c", probe]).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"the mediator did not start:\n{(tmp / 'mediator.log').read_text()}")
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}", proc


def test_a_vanished_party_on_the_relay_is_given_up(parties: Parties, tmp_path: Path) -> None:
    """Party 2's machine drops off the network while the three wait on relay links: the
    mediator finds it gone (its kernel answers nothing for twice the ping interval) and
    tears its relay sessions down, so parties 0 and 1 stop within seconds; party 2 finds
    the mediator gone (``--didcomm-timeout 3``) and stops too."""
    with _namespace() as ns:
        url, med = _mediator_in(ns, tmp_path)
        try:
            roster = parties.roster(3, mediator=url, relay_only=True)
            port = int(url.rpartition(":")[2])
            cut: list[float] = []

            def cut_when_computing(procs: list[subprocess.Popen[bytes]]) -> bool:
                outs = [(tmp_path / f"p{i}.out").read_text() for i in range(3)]
                if not cut and all("computing" in out for out in outs):
                    ss = ["ip", "netns", "exec", ns, "ss", "-Htnp", "state", "established"]
                    listing = subprocess.run(
                        [*ss, "dport", f":{port}"], capture_output=True, text=True, check=True
                    ).stdout
                    mine = [
                        line.split()[2].rpartition(":")[2]
                        for line in listing.splitlines()
                        if f"pid={procs[2].pid}," in line
                    ]
                    assert len(mine) == 2, listing  # party 2's relay connections
                    for local in mine:
                        for side in ("--sport", "--dport"):
                            rule = ["INPUT", "-p", "tcp", side, local, "-j", "DROP"]
                            iptables = ["ip", "netns", "exec", ns, "iptables", "-I", *rule]
                            subprocess.run(iptables, check=True)
                    cut.append(time.monotonic())
                return False

            cmd = ["ip", "netns", "exec", ns, PY, str(PROGRAMS / "vanish.py"), "idle"]
            cmd += ["--didcomm", str(roster), "--didcomm-timeout", "3"]
            results = run_parties(
                [cmd] * 3, tmp_path, homes=parties.homes[:3], done=cut_when_computing, timeout=60
            )
        finally:
            med.kill()
            med.wait()
    assert cut, _tails(tmp_path, 3)
    took = time.monotonic() - cut[0]
    assert took < 20, f"{took:.1f} s after the cut:\n{_tails(tmp_path, 3)}"
    for i in (0, 1):
        err = results[i].err
        assert results[i].code == 1 and "Traceback" not in err, f"party {i}: {err}"
        first = "party 2 (p2) stopped answering: the mediator found its machine gone"
        assert first in err or "stopped: party 2 stopped answering" in err, err
    assert results[2].code == 1 and "relay closed: the mediator stopped answering" in results[2].err


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _pid_running(marker: str) -> int:
    """The process whose command line contains ``marker`` (only one may)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    return int(proc.name)
    raise AssertionError(f"no process with {marker!r}")


def test_a_connection_flood_is_bounded_and_the_party_still_computes(
    parties: Parties, tmp_path: Path
) -> None:
    """Before party 0 starts, 400 connections without keys hit party 1: half announce a
    handshake item over the limit, half a valid length they never complete.  Party 1
    closes all but a bounded number at once, its memory stays flat, its log stays short,
    and once the flood is gone party 0 connects and both compute what TCP computes."""
    expected = tcp("sums.py", ["20"], 2, tmp_path / "tcp")[0].lines
    roster = parties.roster(2)
    port = int(json.loads(roster.read_text())["parties"][1]["addr"].rsplit(":", 1)[1])
    cmd = [PY, str(PROGRAMS / "sums.py"), "20", "--didcomm", str(roster)]

    def flood_then_start_party_0() -> None:
        _connect_when_listening(port).close()
        pid = _pid_running(str(roster))
        rss_before = _rss_kib(pid)
        socks = []
        try:
            for i in range(400):
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
                length = (1 << 18) if i % 2 else (32 << 10) - 1
                c.sendall(struct.pack(">I", length) + bytes(16 << 10))
                socks.append(c)
            time.sleep(2.0)
            closed = 0
            for c in socks:
                c.setblocking(False)
                try:
                    closed += c.recv(1) == b""
                except BlockingIOError:
                    pass  # still open, nothing to read
                except ConnectionResetError:
                    closed += 1
            # The handshake cap (32 KiB) and the pending caps (16 from one address).
            assert closed >= 400 - 16, closed
            assert _rss_kib(pid) - rss_before < 20 << 10  # KiB: far below 400 x 16 KiB x 2
        finally:
            for c in socks:
                c.close()
        time.sleep(0.5)

    results = run_parties(
        [cmd, cmd], tmp_path / "run", homes=parties.homes[:2], before={0: flood_then_start_party_0}
    )
    ok(results)
    assert all(r.lines == expected for r in results)
    warnings = [ln for ln in results[1].out.splitlines() if "WARNING" in ln or "didsession:" in ln]
    assert len(warnings) < 20, "\n".join(warnings)
    assert "too many connections waiting for a session" in results[1].out


def test_a_party_that_cannot_listen_stops_with_a_clear_error(
    parties: Parties, tmp_path: Path
) -> None:
    """Party 1's roster address is taken by another program: party 1 says so in one line
    and exits 1 (no traceback)."""
    roster = parties.roster(2)
    port = int(json.loads(roster.read_text())["parties"][1]["addr"].rsplit(":", 1)[1])
    cmd = [PY, str(PROGRAMS / "sums.py"), "5", "--didcomm", str(roster)]
    with socket.create_server(("127.0.0.1", port)):
        results = run_parties(
            [cmd, cmd],
            tmp_path,
            homes=parties.homes[:2],
            done=lambda ps: ps[1].poll() is not None,
            timeout=60,
        )
    assert results[1].code == 1
    assert results[1].err.startswith(
        f"didsession: error: party 1: cannot listen on 127.0.0.1:{port} (this party's "
        "address in the roster): "
    )
    assert "Traceback" not in results[1].err + results[1].out


def test_a_program_mismatch_stops_every_party(parties: Parties, tmp_path: Path) -> None:
    roster = parties.roster(3)
    cmds = [
        [PY, str(PROGRAMS / "sums.py"), "20", "--didcomm", str(roster)],
        [PY, str(PROGRAMS / "sums.py"), "20", "--didcomm", str(roster)],
        [PY, str(PROGRAMS / "sums.py"), "21", "--didcomm", str(roster), "-L", "64"],
    ]
    results = run_parties(cmds, tmp_path, homes=parties.homes[:3], timeout=60)
    for i, r in enumerate(results):
        assert r.code == 1, f"party {i}: {r.err}"
        assert r.lines == []  # nothing computed, nothing printed
        assert "runs a different program" in r.err
    assert "bit length -L (64 here, 32 there)" in results[2].err
    assert "program arguments (21 here, 20 there)" in results[2].err
    # Party 0 or 1 may have heard it from another party first; either way it says what.
    for r in results[:2]:
        assert "bit length -L" in r.err and "program arguments" in r.err


def test_local_mode_and_module_entry(tmp_path: Path) -> None:
    """``prog.py -M3 --didcomm`` and ``python -m mpyc_adapter prog.py ...`` work like -M3."""
    prog = str(PROGRAMS / "sums.py")
    plain = subprocess.run(
        [PY, prog, "-M3", "--no-log", "40"], capture_output=True, timeout=RUN_TIMEOUT, cwd=tmp_path
    )
    assert plain.returncode == 0, plain.stderr
    env = dict(os.environ, TMPDIR=str(tmp_path))
    for cmd in (
        [PY, prog, "-M3", "--didcomm", "40"],
        [PY, "-m", "mpyc_adapter", prog, "40", "-M3", "--didcomm"],
    ):
        run = subprocess.run(cmd, capture_output=True, timeout=RUN_TIMEOUT, cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr.decode()
        out = run.stdout.decode()
        printed = [ln for ln in out.splitlines() if not ln[:4].isdigit()]
        assert printed == plain.stdout.decode().splitlines()
        assert "didsession: link with party 2 (party2): direct" in out
    # The throw-away identities and roster are gone.
    assert not list(tmp_path.glob("didsession-mpyc-*"))


@pytest.mark.parametrize(
    ("sig", "said", "code"),
    [
        (signal.SIGTERM, "SIGTERM", 128 + signal.SIGTERM),
        # Ends by SIGINT itself, so that a shell loop running it stops too.
        (signal.SIGINT, "interrupted", -signal.SIGINT),
    ],
    ids=["sigterm", "ctrl-c"],
)
def test_local_mode_stopped_by_a_signal_cleans_up(
    tmp_path: Path, sig: int, said: str, code: int
) -> None:
    """SIGTERM (a service manager's stop) or a terminal's Ctrl-C, to the whole process
    group of ``-M3 --didcomm --didcomm-relay`` while it computes: one line, the other parties
    and the embedded mediator stopped at once, the directory with the parties' keys
    removed (atexit alone never runs on SIGTERM); no traceback, no party's error."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cmd = [PY, str(PROGRAMS / "sums.py"), "100000", "-M3", "--didcomm", "--didcomm-relay"]
    with (tmp_path / "out").open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TMPDIR=str(tmp)),
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        try:
            made = _local_directory(proc, tmp)
            time.sleep(1.5)  # computing now
            assert proc.poll() is None
            os.killpg(proc.pid, sig)
            assert proc.wait(15) == code
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = (tmp_path / "out").read_text(errors="replace")
    assert f"didsession: {said}: stopping the local parties" in output
    assert "Traceback" not in output and "didsession: error" not in output
    assert list(tmp.iterdir()) == []
    left = _running_from(made)
    assert left == "", f"left running: {left}"


def _local_directory(proc: subprocess.Popen[bytes], tmp: Path) -> Path:
    """Local mode's throw-away directory in ``tmp``, once party 0 wrote the roster."""
    deadline = time.monotonic() + 60
    while not list(tmp.glob("*/roster.json")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    (made,) = list(tmp.iterdir())
    return made


def _running_from(directory: Path) -> str:
    """The processes whose command line names ``directory`` (pids, one per line)."""
    found = subprocess.run(["pgrep", "-f", str(directory)], capture_output=True, text=True)
    return found.stdout.strip()


def test_local_mode_parties_die_with_party_0(tmp_path: Path) -> None:
    """Party 0 of ``-M3 --didcomm --didcomm-relay`` killed outright (SIGKILL: no cleanup
    runs): neither the parties it started, which ignore SIGTERM, nor the embedded
    mediator, in a session of its own, linger (``PR_SET_PDEATHSIG``)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cmd = [PY, str(PROGRAMS / "sums.py"), "100000", "-M3", "--didcomm", "--didcomm-relay"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TMPDIR=str(tmp)),
        start_new_session=True,
    )
    try:
        made = _local_directory(proc, tmp)
        proc.kill()  # before it connects: nothing would ever end the others' wait
        proc.wait()
        deadline = time.monotonic() + 10
        while (left := _running_from(made)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == "", f"left running: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_help_lists_didcomm_and_bad_options_fail_early(tmp_path: Path) -> None:
    prog = str(PROGRAMS / "sums.py")
    help_ = subprocess.run([PY, prog, "-H"], capture_output=True, timeout=60)
    assert help_.returncode == 0 and b"--didcomm [roster]" in help_.stdout
    assert b"--didcomm-timeout s" in help_.stdout
    for args, message in (
        (["--didcomm", "missing.json"], "cannot read roster"),
        (["--didcomm"], "or -M m to run m local parties"),
        (["--didcomm", "myroster"], "--didcomm myroster: no such roster file"),
        (["-M3", "--didcomm", "--didcomm-home", "h"], "local mode (-M m --didcomm without"),
        (["-M3", "--didcomm", "--didcomm-identity", "a"], "makes fresh identities"),
        (["--didcomm", "r.json", "--ssl"], "exclude each other"),
        (["-M3", "-I", "1", "--didcomm"], "starts all m parties itself"),
        (["--didcomm", "r.json", "--didcomm-timeout", "soon"], "not a number of seconds"),
        (["-M3", "--didcomm", "--didcomm-timeout", "-1"], "give 0 (no timeout) or 2 to 86400"),
        (["-M0", "--didcomm"], "-M 0: the number of parties must be at least 1"),
        (["-M-1", "--didcomm"], "-M -1: the number of parties must be at least 1"),
    ):
        run = subprocess.run([PY, prog, *args], capture_output=True, timeout=60, cwd=tmp_path)
        assert run.returncode == 1, args
        assert (
            run.stderr.decode().startswith("didsession: error: ") and message in run.stderr.decode()
        )


def test_links_without_addresses_start_on_the_relay_and_go_direct(
    parties: Parties, tcp_workload: list[str], mediator: EmbeddedMediator, tmp_path: Path
) -> None:
    """No party has an address: every link starts on the relay with candidates in its
    handshake, then moves to a verified direct path; outputs stay identical to TCP."""
    path = parties.roster(3, mediator=mediator.url)
    roster = Roster.from_json(json.loads(path.read_text()))
    Roster(tuple(Party(p.did, p.label) for p in roster.parties), mediator=mediator.url).save(path)
    results = parties.didcomm(*WORKLOAD, path, 3, tmp_path)
    ok(results)
    for r in results:
        assert r.lines[:-1] == tcp_workload[:-1]
        assert "direct-path candidates: host 127.0.0.1:" in r.out
        assert "now on the direct path" in r.out and "(upgrade)" in r.out


def test_links_appear_in_status_once_the_run_lasts(parties: Parties, tmp_path: Path) -> None:
    """Links are published to ``didsession status`` STATUS_AFTER (1 s) into a run: a run
    that lasts shows them; a shorter one never writes a status file."""
    path = parties.roster(3)
    results = ok(parties.didcomm("linger.py", ["1.6"], path, 3, tmp_path / "long"))
    for i, r in enumerate(results):
        assert f"party {i} links in status: 2" in r.lines, r.out
    for home in parties.homes[:3]:
        shutil.rmtree(home / "run", ignore_errors=True)
    results = ok(parties.didcomm("linger.py", ["0.2"], path, 3, tmp_path / "short"))
    for i, r in enumerate(results):
        assert f"party {i} links in status: 0" in r.lines, r.out
    for home in parties.homes[:3]:
        sessions = home / "run" / "sessions"
        assert not sessions.exists() or not any(sessions.iterdir())
