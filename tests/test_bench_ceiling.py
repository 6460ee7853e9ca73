"""bench/mpyc.py's ``coalesced`` mode (the ceiling of coalescing, bench/ceiling/): plain
MPyC parties over TCP that really join their writes and compute what plain TCP computes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from mpyc_adapter.launcher import free_ports

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "tests" / "mpyc_programs" / "sums.py"


def _run(tmp_path: Path, ceiling: bool) -> tuple[str, list[str]]:
    ports = free_ports(3)
    addrs = [a for p in ports for a in ("-P", f"127.0.0.1:{p}")]
    env = dict(os.environ, CEILING_STATS="1")
    if ceiling:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "bench" / "ceiling"), env.get("PYTHONPATH")) if p
        )
    procs = [
        subprocess.Popen(
            [sys.executable, str(PROGRAM), *addrs, "-I", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        for i in (2, 1, 0)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    result = re.search(r"^parties 3 .*$", outs[2][0].decode(), re.M)
    assert result is not None, outs[2][0].decode()
    return result.group(0), [err.decode() for _, err in outs]


def test_the_coalesced_mode_joins_writes_and_computes_the_same(tmp_path: Path) -> None:
    plain, plain_err = _run(tmp_path, ceiling=False)
    coalesced, errs = _run(tmp_path, ceiling=True)
    assert coalesced == plain
    assert not any("ceiling:" in e for e in plain_err)
    for err in errs:
        m = re.search(r"ceiling: (\d+) writes in (\d+)", err)
        assert m is not None, err
        writes, records = int(m[1]), int(m[2])
        assert writes >= 3 * records > 0, err  # several MPyC messages per socket write
