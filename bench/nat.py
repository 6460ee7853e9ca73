"""Benchmark: sessions and MPyC across real NATs (the lab of infra/lab), direct vs relay.

    sudo .venv/bin/python bench/nat.py            # a table
    sudo .venv/bin/python bench/nat.py --json     # the same numbers as JSON
    sudo .venv/bin/python bench/nat.py --runs 5 --parts upgrade

Builds its own lab (``dsl-natb<pid>-*``, torn down at the end): homes cone A (a1, a2 on one
LAN), cone B (b1), symmetric C (c1, c2), symmetric D (d1), cone E (e1), and the real mediator
(relay, STUN), as ``tests/netlab_world.py`` describes.  Every process runs in its host's
namespace.  Two parts:

* **upgrade**: for each NAT pair, ``didsession listen --once`` on one party and ``didsession
  connect`` (through the mediator, no ``--to``) from the other; the time from the session's
  start on the relay (the connector's first ``path``/``relay``/``initial`` event, which comes
  right before ``established``) to its ``path``/``direct``/``upgrade`` event, i.e. until the
  direct path passed its check and session bytes go that way.  ``relay`` when there is no
  upgrade within the dial timeout (10 s) plus 1 s.  Median over ``--runs`` runs; the time
  from starting ``connect`` (a new Python process: imports included) to the session on the
  relay (handshake through the mediator) is given too.  The two
  symmetric pairs (which wait out the dial timeout) run side by side.
* **mpyc**: one MPyC program (``--program``, default ``sums.py 200``) on a1, b1 and e1, each
  behind its own cone NAT, with a roster that gives no addresses: links start on the relay
  and upgrade to direct paths (``direct``), or stay there (``relay_only``).  Per run the wall
  time (first party started to last party exited) and the computation time (MPyC's elapsed
  time of the party that connected last, as in bench/mpyc.py); medians, minima and the ratio
  relay_only/direct.  The link ends that really ended on a direct path are counted per run:
  a "direct" run whose links stayed on the relay measures the relay twice.

``--delay D`` adds D one way on every home link and on the mediator's link (a relayed byte
crosses four such links, a direct one two); without it the lab's links add nothing, and on
one machine the relay then costs little more than the direct path.  The machine, the lab's
homes and the load average are in the output.  Needs root.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from netlab_world import (  # noqa: E402
    CONFIG,
    DIAL_TIMEOUT,
    HOMES,
    MPYC_PARTIES,
    World,
    build_world,
    lab_unavailable,
    make_roster,
    on_path,
    remove_stale_labs,
    run_mpyc,
    session,
)

# name: (listener, connector); the symmetric pairs wait out the dial timeout side by side.
NAT_PAIRS = {
    "cone-cone": ("b1", "a1"),
    "same-lan": ("a2", "a1"),
    "cone-sym": ("b1", "c1"),
    "sym-sym": ("c2", "d1"),
}
SIDE_BY_SIDE = (("cone-sym", "sym-sym"),)
MODES = ("direct", "relay_only")


def measure_upgrade(world: World, listener: str, connector: str) -> dict[str, Any]:
    """One session's times: from starting ``connect`` to the session on the relay, and from
    there to the direct path (None: it stayed on the relay)."""
    with session(world, listener, connector) as (_lis, con):
        relay = con.wait_for(on_path("relay", "initial"), 5, "session on the relay")[0]
        est = con.wait_for(lambda e: e.get("event") == "established", 5, "established")[0]
        start = min(relay, est)
        try:
            up = con.wait_for(on_path("direct", "upgrade"), DIAL_TIMEOUT + 1, "upgrade")[0]
        except AssertionError:
            up = None
        return {
            "start_to_relay_ms": round((start - con.started) * 1000, 1),
            "to_direct_ms": None if up is None else round((up - start) * 1000, 1),
        }


def bench_upgrades(world: World, runs: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in NAT_PAIRS}
    together = {name for group in SIDE_BY_SIDE for name in group}
    for _ in range(runs):
        for name, (lis, con) in NAT_PAIRS.items():
            if name not in together:
                samples[name].append(measure_upgrade(world, lis, con))
        for group in SIDE_BY_SIDE:
            with ThreadPoolExecutor(len(group)) as pool:
                futures = {n: pool.submit(measure_upgrade, world, *NAT_PAIRS[n]) for n in group}
            for name, future in futures.items():
                samples[name].append(future.result())
    out = {}
    for name, runs_ in samples.items():
        lis, con = NAT_PAIRS[name]
        direct = [r["to_direct_ms"] for r in runs_ if r["to_direct_ms"] is not None]
        out[name] = {
            "connector": f"{con} ({_nat(con)})",
            "listener": f"{lis} ({_nat(lis)})",
            "path": "direct" if len(direct) == len(runs_) else "relay" if not direct else "mixed",
            "to_direct_median_ms": round(statistics.median(direct), 1) if direct else "relay",
            "direct_runs": len(direct),
            "start_to_relay_median_ms": round(
                statistics.median(r["start_to_relay_ms"] for r in runs_), 1
            ),
            "runs": runs_,
        }
    return out


def _nat(host: str) -> str:
    for home in CONFIG["home"]:
        if host in home["parties"]:
            return f"{home['name']}, {home['nat']}"
    return "?"


def run_once(world: World, roster: Path, program: Sequence[str], work: Path) -> dict[str, Any]:
    """One computation; ``error`` says why it failed (a failed run is reported, not timed)."""
    started = time.monotonic()
    parties = run_mpyc(world, MPYC_PARTIES, program, roster, work, timeout=300)
    wall = time.monotonic() - started
    ends = [path for p in parties for path in p.final_paths]
    run: dict[str, Any] = {
        "wall": wall,
        "direct_link_ends": ends.count("direct"),
        "output": parties[0].printed,
    }
    failed = [p for p in parties if p.code != 0]
    elapsed = [p.elapsed for p in parties if p.elapsed is not None]
    if failed:
        tail = failed[0].err.strip().splitlines()[-1:] or [f"exit {failed[0].code}"]
        run["error"] = f"{failed[0].host}: {tail[0]}"
    elif len({tuple(p.printed) for p in parties}) != 1:
        run["error"] = f"the parties disagree: {[p.printed for p in parties]}"
    elif len(elapsed) != len(parties):
        run["error"] = "a party printed no MPyC elapsed time"
    else:
        run["compute"] = min(elapsed)
    return run


def bench_mpyc(world: World, runs: int, program: Sequence[str]) -> dict[str, Any]:
    rosters = {
        mode: make_roster(
            world, MPYC_PARTIES, world.base / f"roster-{mode}.json", relay_only=mode != "direct"
        )
        for mode in MODES
    }
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for i in range(runs):
        for mode in MODES:  # alternate, so that a change in load hits both alike
            work = world.base / f"mpyc-{mode}-{i}"
            samples[mode].append(run_once(world, rosters[mode], program, work))
            shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {}
    for mode, all_runs in samples.items():
        ss = [s for s in all_runs if "error" not in s]
        results[mode] = {
            "wall_s": _median([s["wall"] for s in ss]),
            "compute_s": _median([s["compute"] for s in ss]),
            "wall_min_s": round(min(s["wall"] for s in ss), 3) if ss else None,
            "compute_min_s": round(min(s["compute"] for s in ss), 3) if ss else None,
            "wall_runs": [round(s["wall"], 3) for s in ss],
            "compute_runs": [round(s["compute"], 3) for s in ss],
            "direct_link_ends_runs": [s["direct_link_ends"] for s in ss],
            "failed_runs": [s["error"] for s in all_runs if "error" in s],
        }
    links = 2 * len(MPYC_PARTIES)
    short = [n for n in results["direct"]["direct_link_ends_runs"] if n < links]
    if short:
        results["note"] = (
            f"in {len(short)} of the 'direct' runs fewer than {links} link ends ended on a "
            f"direct path ({short}); the others stayed on the relay"
        )
    outputs = {tuple(s["output"]) for ss in samples.values() for s in ss if "error" not in s}
    results["outputs_agree"] = len(outputs) == 1
    results["output"] = list(next(iter(outputs))) if len(outputs) == 1 else None
    return results


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def ratios(mpyc: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    a, b = mpyc["relay_only"], mpyc["direct"]
    out: dict[str, float | None] = {}
    for kind in ("wall", "compute", "wall_min", "compute_min"):
        x, y = a[f"{kind}_s"], b[f"{kind}_s"]
        out[kind] = round(x / y, 3) if x is not None and y else None
    return {"relay_only/direct": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--runs", type=int, default=3, help="runs per NAT pair and MPyC mode")
    parser.add_argument("--parts", default="upgrade,mpyc", help="upgrade,mpyc")
    parser.add_argument(
        "--delay", help="one-way delay on every home link and the mediator's link, e.g. 10ms"
    )
    parser.add_argument(
        "--program", default="sums.py 200", help="MPyC program in tests/mpyc_programs, and args"
    )
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in ("upgrade", "mpyc"):
            parser.error(f"unknown part {p!r}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    reason = lab_unavailable()
    if reason:
        print(f"bench/nat.py: {reason}", file=sys.stderr)
        return 1
    program = args.program.split()
    remove_stale_labs("natb")
    base = Path(tempfile.mkdtemp(prefix="bench-nat-"))
    started = time.monotonic()
    world = build_world(f"natb{os.getpid()}", base)
    result: dict[str, Any] = {}
    try:
        setup_s = time.monotonic() - started
        if args.delay:
            for link in (*HOMES, "mediator"):
                world.lab.impair(link, delay=args.delay)
        if "upgrade" in parts:
            result["upgrade"] = bench_upgrades(world, args.runs)
        if "mpyc" in parts:
            world.mediator.ensure()
            result["mpyc"] = bench_mpyc(world, args.runs, program)
            result["ratios"] = ratios(result["mpyc"])
    finally:
        world.mediator.kill()
        world.lab.down()
        shutil.rmtree(base, ignore_errors=True)
    doc = {
        "machine": {
            "python": platform.python_version(),
            "mpyc": importlib.metadata.version("mpyc"),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "lab": {
            "homes": {
                h["name"]: {"nat": h["nat"], "parties": h["parties"]} for h in CONFIG["home"]
            },
            "impairment": f"delay {args.delay} on every link" if args.delay else "none",
            "setup_s": round(setup_s, 2),
        },
        "runs": args.runs,
        "dial_timeout_s": DIAL_TIMEOUT,
        "mpyc_program": " ".join(program),
        "mpyc_parties": [f"{p} ({_nat(p)})" for p in MPYC_PARTIES],
        **result,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print_table(doc)
    return 0


def print_table(doc: dict[str, Any]) -> None:
    if "upgrade" in doc:
        print(f"session start on the relay -> direct path, median of {doc['runs']} runs")
        print(f"{'pair':10} {'connector':22} {'listener':22} {'to direct':>10} {'to relay':>10}")
        for name, r in doc["upgrade"].items():
            to = r["to_direct_median_ms"]
            to_s = f"{to:8.1f}ms" if isinstance(to, float) else f"{to:>10}"
            print(
                f"{name:10} {r['connector']:22} {r['listener']:22} {to_s} "
                f"{r['start_to_relay_median_ms']:8.1f}ms"
            )
    if "mpyc" in doc:
        print(f"\nMPyC {doc['mpyc_program']} on {', '.join(doc['mpyc_parties'])}")
        for mode in MODES:
            r = doc["mpyc"][mode]
            print(
                f"  {mode:10} wall {r['wall_s']} s  compute {r['compute_s']} s  "
                f"direct link ends per run {r['direct_link_ends_runs']}"
                + (f"  failed: {r['failed_runs']}" if r["failed_runs"] else "")
            )
        for name, r in doc["ratios"].items():
            print(f"  {name}: wall {r['wall']}, compute {r['compute']}")
        if "note" in doc["mpyc"]:
            print(f"  note: {doc['mpyc']['note']}")


if __name__ == "__main__":
    sys.exit(main())
