"""Benchmark: MPyC over plain TCP, MPyC's --ssl, --didcomm direct and --didcomm relay.

    python bench/mpyc.py            # a table
    python bench/mpyc.py --json     # the same numbers as JSON
    python bench/mpyc.py --runs 7 --programs scalar --modes tcp,direct
    python bench/mpyc.py --modes tcp,direct,direct@../other-checkout   # A/B two versions

Three parties on loopback, each a separate process started the way a party would start it
(``-P``/``-I`` for TCP and SSL, ``--didcomm roster.json -I i`` with identities made
beforehand), for three programs from ``tests/mpyc_programs``:

* scalar: ``aes.py 4`` (AES-128 on secret-shared bytes: thousands of tiny messages),
* numpy: ``arrays.py 24`` (secure NumPy matrices: product, sort, max),
* large: ``large.py 150000`` (messages of about 2 MB),
* startup, only when named: ``empty.py`` (start and stop MPyC, compute nothing: the fixed
  cost of a run).

Per mode and program: the median over ``--runs`` runs of the wall time (first party
started to last party exited), of the computation time (MPyC's own elapsed time from
``start()`` to ``shutdown()`` of the party that connected last, i.e. from the moment every
link was up) and of the CPU time of all parties together, and the ratios the issue sets
targets for.  Runs of the modes alternate, forwards then backwards (tcp, direct, direct,
tcp, ...), so a change in machine load hits all modes alike; the minimum over the runs is
given too, as a figure less sensitive to other load, and the median of the runs' own
wall-time ratios (run i of one mode against run i of the other), with their quartiles: how
far one run's ratio wanders on this machine.  That median comes with a 95% confidence
interval (distribution-free, from 6 runs on), and each target with a verdict by it: "met"
or "not met" when the whole interval is on one side of the limit, "undecided" when it
straddles the limit (more runs narrow it, with the square root of their number: on this
2-core VM, where one run's ratio wanders by +-5%, the interval was 2-8% wide at 41 runs).
SSL certificates are generated into a temporary ``.config/`` as MPyC expects; the relay
mode uses a mediator started for the benchmark.

The event loop matters as much as the transport: MPyC runs on uvloop when it is installed
(it is in this project's test extras), where socket writes and TLS are cheap; with
``--no-uvloop`` every party runs on asyncio's own loop, as after ``pip install mpyc
didsession``.  The JSON names the loop (``machine.event_loop``).

The machine's own state matters too: on a virtual machine the hypervisor may take CPU time
from it (Linux counts it as *steal* in ``/proc/stat``).  Each run records the share of the
machine's CPU time stolen while it ran (``steal_pct``, per mode the median), and the
benchmark as a whole (``machine.cpu_steal_pct``); the table warns when it exceeds
``STEAL_WARN_PCT``.  This VM has shown ~1% on a quiet day and 22% on a busy one, when plain
TCP's AES took 4-5.7 s instead of 2.6 s: figures from such a run say more about the host
than about the code.

The ``coalesced`` mode, run only when named (``--modes tcp,direct,coalesced``), is plain
MPyC over TCP whose links join the writes of one event-loop turn as ``--didcomm`` does, with
no session, handshake or cryptography (``bench/ceiling/sitecustomize.py``): ``coalesced/tcp``
is the most that coalescing can gain on the machine at hand, and ``direct/coalesced`` what
the sessions cost on top.  On this 2-core VM the first is 0.96-0.97 for AES: coalescing
saves 10% of the CPU but not the wall time, since a record's first message waits for the
end of its turn while a core may be idle.

A mode written ``MODE@DIR`` runs the parties with ``PYTHONPATH=DIR``: the didsession and
mpyc_adapter packages of another checkout, alternating with this one's in the same run (an
A/B comparison under the same machine load).  Before the runs, the packages' bytecode is
compiled (``--no-compile``: leave it), as an installed package has it: with
``PYTHONDONTWRITEBYTECODE`` set and an editable install, every party would otherwise compile
didsession from source at each start, which plain MPyC (installed) never does.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# This file is named mpyc.py: keep its folder off sys.path so "mpyc" stays MPyC.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
sys.path.insert(0, str(ROOT))

PROGRAMS = ROOT / "tests" / "mpyc_programs"
WORKLOADS = {
    "scalar": ["aes.py", "4"],
    "numpy": ["arrays.py", "24"],
    "large": ["large.py", "150000"],
    # Not run unless named (--programs startup): no computation, the fixed cost of a run.
    "startup": ["empty.py"],
}
DEFAULT_PROGRAMS = ("scalar", "numpy", "large")
MODES = ("tcp", "ssl", "direct", "relay")
# Run only when named: plain TCP with --didcomm's per-turn coalescing and no cryptography
# (bench/ceiling/sitecustomize.py), the most any coalescing transport can gain here.
CEILING = ROOT / "bench" / "ceiling"
EXTRA_MODES = ("coalesced",)
PACKAGES = ("didsession", "mpyc_adapter", "mediator")
PARTIES = 3
TIMEOUT = 300.0
# Targets set by the issue (ratios of median times).
TARGETS = {
    "direct/tcp scalar": 0.95,
    "direct/tcp numpy": 1.05,
    "direct/tcp large": 1.05,
    "direct/ssl scalar": 0.90,
    "relay/direct": 1.5,
}
_ELAPSED = re.compile(r"elapsed time: (\d+):(\d+):(\d+\.\d+)")
STEAL_WARN_PCT = 5.0


def cpu_ticks() -> tuple[int, int] | None:
    """All CPU time of the machine and the part the hypervisor stole, in ticks (``/proc/stat``
    line ``cpu``); ``None`` where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    # already counted in user, so the first eight are the whole.
    ticks = [int(x) for x in fields[1:9]]
    return sum(ticks), ticks[7]


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time stolen between two :func:`cpu_ticks` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return 100.0 * (after[1] - before[1]) / (after[0] - before[0])


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_certificates(config: Path, parties: int) -> None:
    """The files MPyC's --ssl reads: .config/mpyc_ca.crt, party_{i}.crt and party_{i}.key
    (certificate subject ``MPyC party i``, signed by the CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    config.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MPyC benchmark CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (config / "mpyc_ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for i in range(parties):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"MPyC party {i}")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256())
        )
        (config / f"party_{i}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (config / f"party_{i}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )


class Setup:
    """Identities, certificates and (for relay) a mediator, made once per benchmark."""

    def __init__(self, root: Path, modes: list[str]) -> None:
        from didsession.identity import Store

        self.root = root
        self.homes = [root / f"home{i}" for i in range(PARTIES)]
        self.identities = [Store(home).create(f"party{i}") for i, home in enumerate(self.homes)]
        make_certificates(root / ".config", PARTIES)
        self.mediator: Any = None
        if "relay" in modes:
            from mpyc_adapter.embedded import start_embedded_mediator

            self.mediator = start_embedded_mediator(root / "mediator")
            self.mediator.wait_ready()

    def roster(self, relay: bool) -> Path:
        from mpyc_adapter.roster import Party, Roster

        ports = free_ports(PARTIES)
        roster = Roster(
            tuple(
                Party(ident.did, f"party{i}", ("127.0.0.1", ports[i]))
                for i, ident in enumerate(self.identities)
            ),
            mediator=self.mediator.url if relay else None,
            relay_only=relay,
        )
        path = self.root / ("roster-relay.json" if relay else "roster.json")
        roster.save(path)
        return path

    def commands(self, mode: str, program: list[str]) -> list[tuple[list[str], dict[str, str]]]:
        mode, _, tree = mode.partition("@")
        script = [sys.executable, str(PROGRAMS / program[0]), *program[1:]]
        out = []
        if tree:
            return [
                (cmd, dict(env, PYTHONPATH=str(Path(tree).resolve())))
                for cmd, env in self.commands(mode, program)
            ]
        if mode in ("tcp", "ssl", "coalesced"):
            addrs = [a for p in free_ports(PARTIES) for a in ("-P", f"127.0.0.1:{p}")]
            env = dict(os.environ)
            if mode == "coalesced":
                env["PYTHONPATH"] = os.pathsep.join(
                    p for p in (str(CEILING), env.get("PYTHONPATH")) if p
                )
            for i in range(PARTIES):
                extra = ["--ssl"] if mode == "ssl" else []
                out.append(([*script, *addrs, "-I", str(i), *extra], dict(env)))
        else:
            roster = self.roster(relay=mode == "relay")
            for i in range(PARTIES):
                cmd = [*script, "--didcomm", str(roster), "--didcomm-home", str(self.homes[i])]
                out.append(([*cmd, "-I", str(i)], dict(os.environ)))
        return out

    def close(self) -> None:
        if self.mediator is not None:
            self.mediator.stop()


def run_once(setup: Setup, mode: str, program: list[str]) -> dict[str, float]:
    """One computation: wall time, MPyC's computation time, CPU time of all parties.

    MPyC's clock starts when a party's own links are up, so a party that connects early
    also counts the others still connecting; the party that connects last (the smallest
    elapsed time) starts its clock when every link is up: that is the computation time.
    """
    cmds = setup.commands(mode, program)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = cpu_ticks()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd,
            cwd=setup.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for cmd, env in reversed(cmds)
    ]
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            outputs.append((proc.returncode, stdout.decode(errors="replace"), stderr.decode()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - t0
    stolen = steal_pct(ticks, cpu_ticks())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    compute = float("inf")
    for code, out, err in outputs:
        if code != 0:
            raise RuntimeError(f"{mode} {program[0]} failed ({code}):\n{err[-2000:]}")
        match = _ELAPSED.search(out)
        if match is None:
            raise RuntimeError(f"{mode} {program[0]}: no elapsed time in\n{out[-2000:]}")
        h, m, s = match.groups()
        compute = min(compute, int(h) * 3600 + int(m) * 60 + float(s))
    sample = {"wall": wall, "compute": compute, "cpu": cpu}
    if stolen is not None:
        sample["steal"] = stolen
    return sample


def bench(runs: int, programs: list[str], modes: list[str]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-mpyc-"))
    setup = Setup(root, modes)
    results: dict[str, Any] = {}
    try:
        for name in programs:
            samples: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            for run in range(runs):
                # Every other run goes through the modes backwards (ABBA): a mode never
                # always follows the same one, so what one run leaves behind (a warm page
                # cache, a CPU still busy finishing the last exit) is shared out evenly.
                for mode in modes if run % 2 == 0 else modes[::-1]:
                    samples[mode].append(run_once(setup, mode, WORKLOADS[name]))
            results[name] = {
                mode: {
                    "wall_s": round(statistics.median(s["wall"] for s in runs_), 3),
                    "compute_s": round(statistics.median(s["compute"] for s in runs_), 3),
                    "cpu_s": round(statistics.median(s["cpu"] for s in runs_), 3),
                    "wall_min_s": round(min(s["wall"] for s in runs_), 3),
                    "compute_min_s": round(min(s["compute"] for s in runs_), 3),
                    "wall_runs": [round(s["wall"], 3) for s in runs_],
                    "compute_runs": [round(s["compute"], 3) for s in runs_],
                    **_steal(runs_),
                }
                for mode, runs_ in samples.items()
            }
    finally:
        setup.close()
        shutil.rmtree(root, ignore_errors=True)
    return results


def _steal(runs: list[dict[str, float]]) -> dict[str, Any]:
    steals = [s["steal"] for s in runs if "steal" in s]
    if not steals:
        return {}
    return {
        "steal_pct": round(statistics.median(steals), 1),
        "steal_runs": [round(x, 1) for x in steals],
    }


def compile_packages(trees: list[Path]) -> None:
    """Write the bytecode of our packages in each tree (see the module docstring)."""
    for tree in trees:
        for package in PACKAGES:
            if (tree / package).is_dir():
                compileall.compile_dir(tree / package, quiet=1)


def mode_pairs(modes: list[str]) -> list[tuple[str, str]]:
    """The ratios to report: the targets' pairs, and each ``MODE@DIR`` against tcp, MODE."""
    pairs = [("direct", "tcp"), ("direct", "ssl"), ("relay", "direct"), ("ssl", "tcp")]
    pairs += [("coalesced", "tcp"), ("direct", "coalesced")]
    for mode in modes:
        base, _, tree = mode.partition("@")
        if tree:
            pairs += [(mode, "tcp"), (mode, base)]
    return pairs


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``a/b program`` -> {"wall": ..., "compute": ...} for the pairs the targets name."""
    out: dict[str, dict[str, float]] = {}
    for name, modes in results.items():
        for a, b in mode_pairs(list(modes)):
            if a in modes and b in modes:
                out[f"{a}/{b} {name}"] = {
                    kind: round(modes[a][f"{kind}_s"] / modes[b][f"{kind}_s"], 3)
                    for kind in ("wall", "compute", "wall_min", "compute_min")
                    if modes[b][f"{kind}_s"] > 0  # no computation: no compute ratio
                }
                # Runs alternate, so run i of a and of b saw the same machine load: the
                # median of their ratios is less moved by a slow stretch than the above.
                # Their quartiles show how far one run's ratio wanders on this machine.
                pairs = zip(modes[a]["wall_runs"], modes[b]["wall_runs"], strict=True)
                per_run = [x / y for x, y in pairs]
                out[f"{a}/{b} {name}"]["wall_paired"] = round(statistics.median(per_run), 3)
                if len(per_run) >= 2:
                    q1, _, q3 = statistics.quantiles(per_run, n=4)
                    out[f"{a}/{b} {name}"]["wall_paired_q1"] = round(q1, 3)
                    out[f"{a}/{b} {name}"]["wall_paired_q3"] = round(q3, 3)
                ci = median_ci95(per_run)
                if ci is not None:
                    out[f"{a}/{b} {name}"]["wall_paired_ci95_lo"] = round(ci[0], 3)
                    out[f"{a}/{b} {name}"]["wall_paired_ci95_hi"] = round(ci[1], 3)
    return out


def median_ci95(values: list[float]) -> tuple[float, float] | None:
    """A 95% confidence interval for the median of ``values``, or None below 6 values.

    Distribution-free (no assumption about how this machine's noise is shaped): the k-th
    smallest and k-th largest value, with k the largest rank such that the median falls
    below the k-th smallest with probability at most 2.5% (binomial, p = 1/2).
    """
    n = len(values)
    k, tail = 0, 0.0
    while True:
        tail += math.comb(n, k) / 2**n  # P(at most k values below the median)
        if tail > 0.025:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def targets(rat: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for key, limit in TARGETS.items():
        names = [k for k in rat if k == key] or [k for k in rat if k.startswith(key + " ")]
        for name in names:
            if name.rpartition(" ")[2] not in DEFAULT_PROGRAMS:
                continue  # the targets are the issue's, for its three programs
            out[name] = {"limit": limit}
            for kind in ("wall", "compute", "wall_min", "compute_min"):
                out[name][kind] = rat[name][kind]
                out[name][f"met_{kind}"] = rat[name][kind] <= limit
            out[name]["verdict"] = verdict(rat[name], limit)
    return out


def verdict(r: dict[str, float], limit: float) -> str:
    """What the runs say about a target, given how much one run's ratio wanders here:
    "met" or "not met" when the whole 95% interval of the median paired wall ratio is on
    one side of the limit, "undecided" when it straddles it (more runs narrow it), "too
    few runs" below 6."""
    if "wall_paired_ci95_lo" not in r:
        return "too few runs"
    if r["wall_paired_ci95_hi"] <= limit:
        return "met"
    if r["wall_paired_ci95_lo"] > limit:
        return "not met"
    return "undecided"


def event_loop() -> str:
    """The event loop MPyC runs the parties on: uvloop if it is installed and not disabled.

    It moves the ratios: uvloop's socket writes are cheap (C), which shrinks what coalescing
    saves over plain TCP, and its TLS is cheaper than asyncio's, which shrinks the cost of
    ``--ssl``."""
    if os.environ.get("MPYC_NOUVLOOP", "0") not in ("", "0"):
        return "asyncio (uvloop disabled)"
    try:
        return f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        return "asyncio (uvloop not installed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--runs", type=int, default=5, help="runs per mode and program")
    parser.add_argument(
        "--programs",
        default=",".join(DEFAULT_PROGRAMS),
        help="scalar,numpy,large (the default), startup (start and stop only)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="tcp,ssl,direct,relay (the default); coalesced: plain TCP with --didcomm's "
        "coalescing and no cryptography (the ceiling); MODE@DIR: another checkout",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="do not write our packages' bytecode first"
    )
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="run every party on asyncio's own event loop (MPYC_NOUVLOOP=1), as MPyC does "
        "when uvloop is not installed (pip install mpyc didsession does not install it)",
    )
    args = parser.parse_args()
    if args.no_uvloop:
        os.environ["MPYC_NOUVLOOP"] = "1"  # the parties inherit it, all modes alike
    programs = [p for p in args.programs.split(",") if p]
    modes = [m for m in args.modes.split(",") if m]
    for p in programs:
        if p not in WORKLOADS:
            parser.error(f"unknown program {p!r}")
    for m in modes:
        base, _, tree = m.partition("@")
        if base not in MODES + EXTRA_MODES:
            parser.error(f"unknown mode {m!r}")
        if tree and not (Path(tree) / "mpyc_adapter").is_dir():
            parser.error(f"{m!r}: {tree} is not a didsession checkout")
    from mpyc_adapter.embedded import mediator_available

    if not mediator_available():
        modes = [m for m in modes if m.partition("@")[0] != "relay"]
    trees = [ROOT] + [Path(m.partition("@")[2]).resolve() for m in modes if "@" in m]
    if not args.no_compile:
        compile_packages(trees)
    load_before = [round(x, 2) for x in os.getloadavg()]
    ticks = cpu_ticks()
    results = bench(args.runs, programs, modes)
    stolen = steal_pct(ticks, cpu_ticks())
    rat = ratios(results)
    result = {
        "machine": {
            "python": platform.python_version(),
            "mpyc": importlib.metadata.version("mpyc"),
            "cpus": os.cpu_count(),
            "event_loop": event_loop(),
            "load_average_before": load_before,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "cpu_steal_pct": None if stolen is None else round(stolen, 1),
        },
        "bytecode": "left as found" if args.no_compile else "compiled before the runs",
        "parties": PARTIES,
        "runs": args.runs,
        "programs": {name: " ".join(WORKLOADS[name]) for name in programs},
        "results": results,
        "ratios": rat,
        "targets": targets(rat),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{PARTIES} parties on loopback, {result['machine']['event_loop']}, median of "
        f"{args.runs} runs (seconds); load average {load_before[0]} before, "
        f"{result['machine']['load_average'][0]} after"
        + ("" if stolen is None else f"; {stolen:.1f}% of the CPU time stolen by the host")
    )
    if stolen is not None and stolen > STEAL_WARN_PCT:
        print(
            f"warning: the hypervisor took {stolen:.1f}% of this machine's CPU time during "
            "the runs; the times and ratios say more about the host than about the code"
        )
    mw = max(7, *(len(m) for m in modes))
    print(
        f"{'program':8} {'mode':{mw}} {'wall':>7} {'compute':>8} {'cpu':>7}   (min: wall compute)"
        "  steal %"
    )
    for name, modes_ in results.items():
        for mode, r in modes_.items():
            print(
                f"{name:8} {mode:{mw}} {r['wall_s']:7.3f} {r['compute_s']:8.3f} {r['cpu_s']:7.3f}"
                f"   {r['wall_min_s']:7.3f} {r['compute_min_s']:7.3f}"
                f"  {r.get('steal_pct', float('nan')):7.1f}"
            )
    print(
        "\nratios of medians (wall, compute), of minima (wall, compute), median of the runs' "
        "wall ratios (their quartiles; its 95% interval), and targets (verdict by that "
        "interval):"
    )
    rw = max(24, *(len(n) for n in rat))
    for name, r in rat.items():
        t = result["targets"].get(name)
        limit = f"  target <= {t['limit']}: {t['verdict']}" if t else ""
        compute, compute_min = r.get("compute", float("nan")), r.get("compute_min", float("nan"))
        print(
            f"  {name:{rw}} {r['wall']:6.3f} {compute:8.3f}   "
            f"{r['wall_min']:6.3f} {compute_min:8.3f}   {r['wall_paired']:6.3f}"
            f"{_quartiles(r)}{_interval(r)}{limit}"
        )


def _quartiles(r: dict[str, float]) -> str:
    if "wall_paired_q1" not in r:
        return ""
    return f" ({r['wall_paired_q1']:.3f}-{r['wall_paired_q3']:.3f})"


def _interval(r: dict[str, float]) -> str:
    if "wall_paired_ci95_lo" not in r:
        return ""
    return f" [{r['wall_paired_ci95_lo']:.3f}, {r['wall_paired_ci95_hi']:.3f}]"


if __name__ == "__main__":
    main()
