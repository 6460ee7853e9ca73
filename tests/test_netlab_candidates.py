"""Candidates across real NATs (infra/lab): gathering behind cone and symmetric NATs, and TCP
between parties dialling each other's candidates from their listening ports.

One lab per module (``dsl-cand<pid>-*``), always torn down; the real mediator process serves
STUN on 203.0.113.10:3478 with its RFC 5780 alternate on 203.0.113.11:3479.  Parties run
:data:`PEER` (the public API only, as the session layer will) in their own namespaces.  Needs
root and ``ip netns``; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "infra" / "lab"))

from netlab import Impairment, Lab, lab_prefix, list_labs, teardown  # noqa: E402

pytestmark = pytest.mark.netlab

CONFIG: dict[str, Any] = {
    "mediator": {"name": "mediator"},
    "home": [
        {"name": "conea", "nat": "cone", "parties": ["a1", "a2"]},
        {"name": "coneb", "nat": "cone", "parties": ["b1"]},
        {"name": "syma", "nat": "symmetric", "parties": ["c1"]},
    ],
}
STUN_PORT, ALTERNATE_PORT = 3478, 3479

# A party: listen on PORT (as the session layer does), gather, print the candidates; read the
# peer's from stdin; dial them from PORT while accepting on the listener; say hello on every
# connection; report the first one on which the peer's hello arrived.
PEER = r"""
import asyncio, contextlib, json, sys
from didsession.candidates import (
    decode_candidates, dial, encode_candidates, gather, reusable_tcp_socket)

async def main():
    stun, port, name, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    host, _, stun_port = stun.rpartition(":")
    loop = asyncio.get_running_loop()
    listener = reusable_tcp_socket(port)
    listener.listen()
    found = await gather(tcp_port=port, stun=(host, int(stun_port)))
    print(json.dumps({"gathered": found.to_json(),
                      "candidates": encode_candidates(found.candidates)}), flush=True)
    if len(sys.argv) > 5:  # gather only
        return
    peer = decode_candidates(json.loads(await loop.run_in_executor(None, sys.stdin.readline)))
    started = loop.time()
    first = loop.create_future()
    talks, socks = set(), []

    async def talk(sock, how, cand):
        connected = loop.time() - started
        socks.append(sock)
        with contextlib.suppress(OSError):
            await loop.sock_sendall(sock, f"HELLO {name}\n".encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = await loop.sock_recv(sock, 100)
                if not chunk:
                    return
                data += chunk
            if not first.done():
                first.set_result({
                    "ok": True, "how": how, "candidate": cand and cand.to_json(),
                    "local": list(sock.getsockname()), "remote": list(sock.getpeername()),
                    "connected": round(connected, 4),
                    "exchanged": round(loop.time() - started, 4),
                    "said": data.decode().strip()})

    def spawn(sock, how, cand):
        task = loop.create_task(talk(sock, how, cand))
        talks.add(task)
        task.add_done_callback(talks.discard)

    async def dialling():
        async with contextlib.aclosing(dial(port, peer, timeout=timeout)) as attempts:
            async for sock, cand in attempts:
                spawn(sock, "dial", cand)

    async def accepting():
        listener.setblocking(False)
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            spawn(sock, "accept", None)

    workers = [loop.create_task(dialling()), loop.create_task(accepting())]
    try:
        result = await asyncio.wait_for(first, timeout)
    except TimeoutError:
        result = {"ok": False, "elapsed": round(loop.time() - started, 4)}
    await asyncio.sleep(0.3)  # let the peer read our hello before our sockets close
    for task in [*workers, *talks]:
        task.cancel()
    await asyncio.gather(*workers, *talks, return_exceptions=True)
    for sock in socks:
        sock.close()
    print(json.dumps(result), flush=True)

asyncio.run(main())
"""


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, iptables)"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"ip netns is unavailable here: {proc.stderr.strip()}"
    return None


needs_lab = pytest.mark.skipif(_lab_unavailable() is not None, reason=_lab_unavailable() or "")


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _remove_stale_labs() -> None:
    """Labs ``cand<pid>`` of earlier runs of this module that died before their finalizer."""
    for name in list_labs():
        match = re.fullmatch(r"cand(\d+)", name or "")
        if match and not _pid_alive(int(match.group(1))):
            teardown(name)


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _start_mediator(lab: Lab, data: Path) -> subprocess.Popen[bytes]:
    m1, m2 = lab.host("mediator").addresses
    log = data.parent / "mediator.log"
    argv = [
        sys.executable,
        "-m",
        "mediator",
        "--host",
        m1,
        "--port",
        "8080",
        "--data-dir",
        str(data),
        "--stun-port",
        str(STUN_PORT),
        "--stun-alternate",
        f"{m2}:{ALTERNATE_PORT}",
        "--stun-rate",
        "0",
        "--no-relay-enabled",
        "--log-format",
        "json",
        "--ws-heartbeat",
        "0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIDSESSION_MEDIATOR_")}
    with log.open("wb") as out:
        proc = lab.popen("mediator", argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "stun listening" in text:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the mediator did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    _remove_stale_labs()
    name = f"cand{os.getpid()}"
    started = time.monotonic()
    the_lab = Lab.up(CONFIG, name=name)
    try:
        mediator = _start_mediator(the_lab, tmp_path_factory.mktemp("labmediator") / "data")
        print(f"\nlab up + mediator: {time.monotonic() - started:.2f} s")
        yield the_lab
        mediator.terminate()
        mediator.wait(timeout=10)
    finally:
        the_lab.down()
        assert not [ns for ns in _netns() if ns.startswith(lab_prefix(name))]


def _stun(lab: Lab) -> str:
    return f"{lab.host('mediator').address}:{STUN_PORT}"


def _peer_argv(lab: Lab, port: int, name: str, timeout: float, *extra: str) -> list[str]:
    return [sys.executable, "-c", PEER, _stun(lab), str(port), name, str(timeout), *extra]


def _gather(lab: Lab, host: str, port: int) -> dict[str, Any]:
    proc = lab.exec(host, _peer_argv(lab, port, host, 1.0, "gather-only"), timeout=20)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)["gathered"]
    return doc


def _connect(
    lab: Lab, sides: dict[str, int], timeout: float, skew: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Both parties gather, swap candidates (as the relay would carry them) and dial, the
    second ``skew`` seconds after the first."""
    procs = {
        host: lab.popen(
            host,
            _peer_argv(lab, port, host, timeout),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for host, port in sides.items()
    }
    try:
        offered = {}
        for host, proc in procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, proc.communicate()[1]
            offered[host] = json.loads(line)
        (a, b) = procs
        for me, other in ((a, b), (b, a)):
            if me == b:
                time.sleep(skew)
            stdin = procs[me].stdin
            assert stdin is not None
            stdin.write(json.dumps(offered[other]["candidates"]) + "\n")
            stdin.flush()
        results = {}
        for host, proc in procs.items():
            out, err = proc.communicate(timeout=timeout + 10)
            assert proc.returncode == 0, err
            results[host] = json.loads(out.splitlines()[-1])
            results[host]["offered"] = offered[host]
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@needs_lab
def test_cone_party_gathers_its_router_address(lab: Lab) -> None:
    found = _gather(lab, "a1", 45000)
    wan = lab.host("conea").public_address
    assert found["problems"] == []
    assert found["mapping"] == found["tcp_mapping"] == "endpoint-independent"
    assert found["tcp_mapped"] == {"host": wan, "port": 45000}  # port preserving
    assert found["candidates"] == [
        {"type": "host", "proto": "tcp", "host": lab.host("a1").address, "port": 45000,
         "priority": 2130706431},
        {"type": "srflx", "proto": "tcp", "host": wan, "port": 45000, "priority": 1694498815},
    ]  # fmt: skip
    assert found["udp_mapped"]["host"] == wan


@needs_lab
def test_symmetric_party_sees_address_dependent_mapping(lab: Lab) -> None:
    found = _gather(lab, "c1", 45001)
    wan = lab.host("syma").public_address
    assert found["problems"] == []
    assert found["mapping"] == found["tcp_mapping"] == "address-dependent"
    assert found["tcp_mapped"]["host"] == wan and found["udp_mapped"]["host"] == wan
    assert [c["type"] for c in found["candidates"]] == ["host", "srflx"]


@needs_lab
def test_cone_to_cone_by_simultaneous_open(lab: Lab) -> None:
    results = _connect(lab, {"a1": 46000, "b1": 46001}, timeout=4.0)
    wans = {"a1": lab.host("conea").public_address, "b1": lab.host("coneb").public_address}
    for me, other in (("a1", "b1"), ("b1", "a1")):
        result = results[me]
        assert result["ok"], results
        assert result["said"] == f"HELLO {other}"
        # The path goes from my listening port to the peer's router, at the peer's port.
        assert result["local"][1] == (46000 if me == "a1" else 46001)
        assert result["remote"] == [wans[other], 46001 if me == "a1" else 46000]
        assert result["how"] == "dial" and result["candidate"]["type"] == "srflx", result
    print(
        "\ncone<->cone simultaneous open: connected after "
        + ", ".join(f"{h} {r['connected'] * 1000:.1f} ms" for h, r in results.items())
    )


@needs_lab
def test_cone_to_cone_on_a_slow_path_with_skewed_starts(lab: Lab) -> None:
    """600 ms round trip, b1 starting 0.5 s after a1: a1's first SYN dies at b1's router,
    b1's gets through, and a1's socket sits in SYN-RECEIVED past its 1 s attempt timer.  Had
    it started afresh, its new socket would have met b1's SYN-ACK with a RST, every time."""
    lab.impair("coneb", delay="300ms")
    try:
        results = _connect(lab, {"a1": 46040, "b1": 46041}, timeout=4.0, skew=0.5)
    finally:
        lab.impair("coneb", Impairment())
    assert [r["ok"] for r in results.values()] == [True, True], results
    assert {r["candidate"]["type"] for r in results.values()} == {"srflx"}
    assert 1.0 < results["a1"]["connected"] < 2.0, results  # 0.5 s skew + 1.5 RTT
    print(
        "\ncone<->cone, 300 ms one way, 0.5 s skew: connected after "
        + ", ".join(f"{h} {r['connected'] * 1000:.0f} ms" for h, r in results.items())
    )


@needs_lab
def test_symmetric_to_cone_does_not_connect(lab: Lab) -> None:
    started = time.monotonic()
    results = _connect(lab, {"c1": 46020, "a1": 46021}, timeout=2.5)
    assert [r["ok"] for r in results.values()] == [False, False], results
    assert all(2.5 <= r["elapsed"] < 3.0 for r in results.values()), results
    assert results["c1"]["offered"]["gathered"]["tcp_mapping"] == "address-dependent"
    print(f"\nsymmetric<->cone: no connection in 2.5 s ({time.monotonic() - started:.1f} s)")


@needs_lab
def test_same_lan_connects_by_host_candidates(lab: Lab) -> None:
    results = _connect(lab, {"a1": 46030, "a2": 46031}, timeout=4.0)
    lan = {"a1": lab.host("a1").address, "a2": lab.host("a2").address}
    for me, other in (("a1", "a2"), ("a2", "a1")):
        result = results[me]
        assert result["ok"] and result["said"] == f"HELLO {other}", results
        # Straight over the LAN: the peer's own address (no hairpinning through the router).
        assert result["remote"][0] == lan[other], result
        if result["how"] == "dial":
            assert result["candidate"]["type"] == "host"
    print(
        "\nsame LAN: connected after "
        + ", ".join(f"{h} {r['connected'] * 1000:.1f} ms ({r['how']})" for h, r in results.items())
    )
