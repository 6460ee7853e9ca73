"""The NAT lab (infra/lab): its NATs, links and cleanup, checked for real in network namespaces.

The pure parts (config, address plan, generated commands) run anywhere.  The rest builds a lab
of its own (``dsl-t<pid>-*``) once per module, probes it with ``infra/lab/probe.py`` and the
project's own STUN code, and always tears it down.  Needs root and ``ip netns``; skipped with
the reason otherwise.  Select with ``-m netlab``.
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

from netlab import (  # noqa: E402
    PROBE,
    ConfigError,
    Impairment,
    Lab,
    LabConfig,
    NatMode,
    Role,
    Topology,
    lab_prefix,
    list_labs,
    teardown,
)
from netlab.commands import impairment_commands, setup_commands  # noqa: E402

pytestmark = pytest.mark.netlab

LAB_CLI = ROOT / "infra" / "lab" / "lab"

CONFIG: dict[str, Any] = {
    "mediator": {"name": "mediator"},
    "home": [
        {"name": "conea", "nat": "cone", "parties": ["a1", "a2"]},
        {"name": "coneb", "nat": "cone", "parties": ["b1"]},
        {"name": "syma", "nat": "symmetric", "parties": ["c1"]},
        {"name": "symb", "nat": "symmetric", "parties": ["d1"]},
        {"name": "uni", "nat": "none", "parties": ["pub"]},
    ],
}


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


# -- pure: config, address plan, commands ----------------------------------------------------


def test_config_files_in_infra_lab_parse() -> None:
    for path in sorted((ROOT / "infra" / "lab").glob("*.toml")):
        config = LabConfig.from_toml(path)
        assert config.homes, path
        assert LabConfig.from_dict(config.as_dict()) == config


def test_config_rejects_what_cannot_be_built() -> None:
    with pytest.raises(ConfigError, match="bad host name"):
        LabConfig.from_dict({"home": [{"name": "home-1", "parties": ["a"]}]})
    with pytest.raises(ConfigError, match="used twice"):
        LabConfig.from_dict({"home": [{"name": "h", "parties": ["h"]}]})
    with pytest.raises(ConfigError, match="NAT mode"):
        LabConfig.from_dict({"home": [{"nat": "fullcone"}]})
    with pytest.raises(ConfigError, match="unknown key"):
        LabConfig.from_dict({"home": [{"dleay": "40ms"}]})
    with pytest.raises(ConfigError, match="duration"):
        Impairment().updated({"delay": "forty"})
    with pytest.raises(ConfigError, match="loss"):
        Impairment().updated({"loss": 1.5})
    with pytest.raises(ConfigError, match="overlaps"):
        LabConfig.from_dict({"home": [{"lan": "203.0.113.128/25"}]})


def test_impairment_spelling() -> None:
    imp = Impairment().updated({"delay": "40ms", "jitter": "5ms", "loss": "5%", "rate": "10mbit"})
    assert imp == Impairment(delay=0.04, jitter=0.005, loss=0.05, rate=10_000_000)
    assert Impairment().updated(imp.as_dict()) == imp
    assert imp.updated({"rate": "none", "delay": "0"}) == Impairment(loss=0.05)


def test_address_plan() -> None:
    topo = Topology.plan(LabConfig.from_dict(CONFIG), lab_prefix("x1"))
    hosts = topo.hosts
    assert hosts["internet"].addresses == ("203.0.113.1",)
    assert hosts["mediator"].addresses == ("203.0.113.10", "203.0.113.11")
    assert hosts["conea"].role is Role.ROUTER
    assert hosts["conea"].addresses == ("203.0.113.101", "192.168.1.1")
    assert [hosts[p].address for p in ("a1", "a2")] == ["192.168.1.10", "192.168.1.11"]
    assert hosts["a1"].public_address == "203.0.113.101" and hosts["a1"].link == "conea"
    assert hosts["syma"].nat is NatMode.SYMMETRIC and hosts["c1"].nat is NatMode.SYMMETRIC
    assert hosts["pub"].role is Role.PUBLIC and hosts["pub"].address == "203.0.113.201"
    assert hosts["pub"].namespace == "dsl-x1-pub"
    assert set(topo.links) == {"mediator", "conea", "coneb", "syma", "symb", "pub"}


def test_every_command_stays_inside_lab_namespaces() -> None:
    """Safety: nothing the lab runs addresses the root namespace's links, routes or rules."""
    prefix = lab_prefix("x1")
    topo = Topology.plan(LabConfig.from_dict(CONFIG), prefix)
    commands = setup_commands(topo)
    for link in topo.links.values():
        commands += impairment_commands(topo, link, Impairment(0.04, 0.01, 0.05, 10_000_000))
        commands += impairment_commands(topo, link, Impairment())
    for cmd in commands:
        argv = cmd.argv
        if argv[:3] == ("ip", "netns", "add") or argv[:3] == ("ip", "netns", "exec"):
            assert argv[3].startswith(prefix), cmd
        else:
            assert argv[0] in ("ip", "tc") and argv[1] == "-n", cmd
            assert argv[2].startswith(prefix), cmd
        # Veth peers are created straight into lab namespaces, never in the root one.
        if "peer" in argv:
            assert argv[argv.index("peer") + 3] == "netns", cmd
    # The core has routes to lab addresses only; no namespace routes anything to the host.
    routes = [c.argv for c in commands if c.argv[3:5] == ("route", "add")]
    for argv in routes:
        target = argv[5]
        assert target == "default" or target.startswith("203.0.113."), argv
        if target == "default":
            assert argv[2] != prefix + "internet", argv


# -- the lab itself --------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _remove_stale_test_labs() -> None:
    """Labs ``t<pid>`` / ``c<pid>`` of test runs that were killed before their finalizer."""
    state = Path(os.environ.get("DSL_LAB_STATE", "/run/dsl-lab"))
    names = set(list_labs())
    names.update(p.name[4:].split(".")[0] for p in state.glob("dsl-*") if state.is_dir())
    for name in names:
        match = re.fullmatch(r"[tc](\d+)", name or "")
        if match and not _pid_alive(int(match.group(1))):
            teardown(name)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    _remove_stale_test_labs()
    name = f"t{os.getpid()}"
    the_lab = Lab.up(CONFIG, name=name)
    try:
        m1, m2 = the_lab.host("mediator").addresses
        reflector = the_lab.popen(
            "mediator",
            probe_argv(
                f"reflect --lifetime 300 --udp {m1}:3478 --udp {m2}:3479 "
                f"--tcp {m1}:3478 --tcp {m2}:3479"
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reflector.stdout is not None
        assert json.loads(reflector.stdout.readline())["event"] == "ready"
        yield the_lab
    finally:
        the_lab.down()
        assert not [ns for ns in _netns() if ns.startswith(lab_prefix(name))]


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def probe_argv(args: str) -> list[str]:
    """``infra/lab/probe.py`` with ``args`` (split on blanks), run by this interpreter."""
    return [sys.executable, str(PROBE), *args.split()]


def probe(lab: Lab, host: str, args: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Run the probe in ``host`` and return its JSON lines."""
    proc = lab.exec(host, probe_argv(args), timeout=timeout)
    assert proc.stderr == "", proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def reflectors(lab: Lab) -> tuple[str, str]:
    m1, m2 = lab.host("mediator").addresses
    return f"{m1}:3478", f"{m2}:3479"


def ping(lab: Lab, host: str, target: str, count: int, interval: float) -> dict[str, float]:
    proc = lab.exec(
        host, ["ping", "-q", "-n", "-c", str(count), "-i", str(interval), "-W", "1", target]
    )
    counts = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    assert counts is not None, proc.stdout + proc.stderr
    sent, received = counts.groups()
    out = {"sent": float(sent), "received": float(received)}
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", proc.stdout)
    if rtt:
        out.update(zip(("min", "avg", "max", "mdev"), map(float, rtt.groups()), strict=True))
    return out


@needs_lab
def test_lab_is_built_as_planned(lab: Lab) -> None:
    assert {h.namespace for h in lab.hosts.values()} <= set(_netns())
    info = lab.describe()
    assert [h["name"] for h in info["hosts"]] == list(lab.hosts)
    # Each namespace holds its planned addresses, and the core routes nothing but lab /32s.
    for host in lab.hosts.values():
        shown = lab.exec(host.name, ["ip", "-4", "-o", "addr", "show"], check=True).stdout
        for address in host.addresses:
            assert f"inet {address}/" in shown, (host.name, shown)
    core_routes = lab.exec("internet", ["ip", "route", "show"], check=True).stdout
    assert "default" not in core_routes
    assert all(line.split()[0].startswith("203.0.113.") for line in core_routes.splitlines())
    # Nothing of the lab shows up in the root namespace.
    root_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    assert not re.search(r"^\d+: (x-|p-)", root_links.stdout, re.M)


@needs_lab
def test_cone_nat_keeps_the_port_and_one_mapping_for_every_destination(lab: Lab) -> None:
    r1, r2 = reflectors(lab)
    wan = lab.host("conea").public_address
    for proto, port in (("udp", 40000), ("tcp", 40001)):
        (result,) = probe(
            lab,
            "a1",
            f"mapping --proto {proto} --local-port {port} --reflector {r1} --reflector {r2}",
        )
        mapped = [m["mapped"] for m in result["mappings"]]
        assert mapped == [f"{wan}:{port}", f"{wan}:{port}"], (proto, result)


@needs_lab
def test_symmetric_nat_maps_each_destination_to_a_new_port(lab: Lab) -> None:
    r1, r2 = reflectors(lab)
    wan = lab.host("syma").public_address
    for proto, port in (("udp", 40000), ("tcp", 40001)):
        (result,) = probe(
            lab,
            "c1",
            f"mapping --proto {proto} --local-port {port} --reflector {r1} --reflector {r2}",
        )
        first, second = (m["mapped"] for m in result["mappings"])
        assert first.startswith(f"{wan}:") and second.startswith(f"{wan}:"), result
        assert first != second, (proto, result)
        assert str(port) not in (first.split(":")[1], second.split(":")[1]), result


@needs_lab
def test_unsolicited_inbound_is_dropped(lab: Lab) -> None:
    """Address-and-port-dependent filtering: only the host a mapping was opened to gets in."""
    r1, _ = reflectors(lab)
    m1, m2 = lab.host("mediator").addresses
    wan = lab.host("conea").public_address
    listener = lab.popen(
        "a1",
        probe_argv(f"listen --port 40020 --hello {r1} --duration 1.2"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None
    opened = json.loads(listener.stdout.readline())
    assert opened["mapped"] == f"{wan}:40020"
    # A stranger, the mediator's other address, the right address from another port, and a
    # port with no mapping at all: none of them may reach a1.
    probe(lab, "pub", f"send --to {wan}:40020 --count 3 --payload STRANGER")
    probe(lab, "mediator", f"send --bind {m2}:5000 --to {wan}:40020 --count 3 --payload OTHERADDR")
    probe(lab, "mediator", f"send --bind {m1}:5001 --to {wan}:40020 --count 3 --payload OTHERPORT")
    probe(lab, "pub", f"send --to {wan}:40021 --count 3 --payload NOMAPPING")
    # TCP to the router: silently dropped (a timeout, not a refusal).
    (tcp,) = probe(lab, "pub", f"send --proto tcp --to {wan}:22 --timeout 0.5")
    out, _ = listener.communicate(timeout=10)
    received = json.loads(out.splitlines()[-1])["received"]
    assert received == [], received
    assert tcp["connected"] is False and "TimeoutError" in tcp["error"], tcp


def punch(lab: Lab, a: str, b: str, proto: str, port: int, timeout: float) -> dict[str, Any]:
    """Both learn their mapping from the reflector, swap them (as the mediator would), punch."""
    r1, _ = reflectors(lab)
    procs = {
        host: lab.popen(
            host,
            probe_argv(
                f"punch --proto {proto} --reflector {r1} --local-port {port} --timeout {timeout}"
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for host in (a, b)
    }
    mapped = {}
    for host, proc in procs.items():
        assert proc.stdout is not None
        mapped[host] = json.loads(proc.stdout.readline())["mapped"]
    for host, other in ((a, b), (b, a)):
        stdin = procs[host].stdin
        assert stdin is not None
        stdin.write(f"{mapped[other]}\n")
        stdin.flush()
    results = {}
    for host, proc in procs.items():
        out, _ = proc.communicate(timeout=timeout + 10)
        results[host] = json.loads(out.splitlines()[-1])
    return {"mapped": mapped, "results": results}


@needs_lab
@pytest.mark.parametrize(
    ("a", "b", "port", "works"),
    [
        ("a1", "b1", 41000, True),  # cone <-> cone
        ("c1", "d1", 41010, False),  # symmetric <-> symmetric
        ("a1", "c1", 41020, False),  # cone <-> symmetric (port-restricted filtering)
        ("c1", "pub", 41030, True),  # symmetric <-> public: the peer-reflexive address works
    ],
    ids=["cone-cone", "symmetric-symmetric", "cone-symmetric", "symmetric-public"],
)
def test_udp_hole_punching(lab: Lab, a: str, b: str, port: int, works: bool) -> None:
    outcome = punch(lab, a, b, "udp", port, timeout=1.5 if not works else 3.0)
    oks = [r["ok"] for r in outcome["results"].values()]
    assert oks == [works, works], outcome
    if works:
        assert max(r["elapsed"] for r in outcome["results"].values()) < 1.0, outcome


@needs_lab
@pytest.mark.parametrize(
    ("a", "b", "port", "works"),
    [("a1", "b1", 42000, True), ("c1", "d1", 42010, False)],
    ids=["cone-cone", "symmetric-symmetric"],
)
def test_tcp_simultaneous_open(lab: Lab, a: str, b: str, port: int, works: bool) -> None:
    outcome = punch(lab, a, b, "tcp", port, timeout=1.5 if not works else 4.0)
    oks = [r["ok"] for r in outcome["results"].values()]
    assert oks == [works, works], outcome


@needs_lab
def test_parties_on_one_lan_reach_each_other_by_host_address(lab: Lab) -> None:
    a1, a2 = lab.host("a1"), lab.host("a2")
    assert a1.home == a2.home
    listener = lab.popen(
        "a2",
        probe_argv("listen --port 43000 --duration 0.8"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None
    json.loads(listener.stdout.readline())
    probe(lab, "a1", f"send --bind {a1.address}:43001 --to {a2.address}:43000")
    out, _ = listener.communicate(timeout=10)
    received = json.loads(out.splitlines()[-1])["received"]
    # Straight over the LAN: the source is a1's own address, not its router's.
    assert [r["from"] for r in received] == [f"{a1.address}:43001"]


@needs_lab
def test_delay_and_jitter_apply_per_direction_and_per_link(lab: Lab) -> None:
    m1 = lab.host("mediator").address
    base = ping(lab, "b1", m1, 5, 0.05)
    assert base["max"] < 5, base
    lab.impair("coneb", delay="40ms")
    delayed = ping(lab, "b1", m1, 10, 0.05)
    # 40 ms each way over one link: the round trip grows by 80 ms.
    assert 80 <= delayed["min"] and delayed["avg"] < 100, delayed
    # A path over two impaired links is delayed by both (mediator uplink + coneb downlink).
    lab.impair("mediator", delay="10ms")
    both = ping(lab, "b1", m1, 5, 0.05)
    assert 100 <= both["min"] < 125, both
    lab.impair("mediator", Impairment())
    lab.impair("coneb", delay="40ms", jitter="15ms")
    jittery = ping(lab, "b1", m1, 20, 0.05)
    assert jittery["mdev"] > 2 and jittery["min"] >= 50, jittery
    lab.impair("coneb", Impairment())
    after = ping(lab, "b1", m1, 5, 0.05)
    assert after["max"] < 5, after
    print(
        f"\nRTT b1->mediator: none {base['avg']:.2f} ms, 40ms {delayed['avg']:.1f} ms, "
        f"40ms+10ms {both['avg']:.1f} ms, 40+-15ms {jittery['avg']:.1f}+-{jittery['mdev']:.1f} ms"
    )


@needs_lab
def test_loss_applies_per_direction(lab: Lab) -> None:
    m1 = lab.host("mediator").address
    lab.impair("pub", loss=0.2)
    try:
        result = ping(lab, "pub", m1, 500, 0.002)
    finally:
        lab.impair("pub", Impairment())
    lost = 1 - result["received"] / result["sent"]
    expected = 1 - (1 - 0.2) ** 2  # request and reply each cross the link once
    assert abs(lost - expected) < 0.08, (lost, expected)
    print(f"\nping loss with loss=0.2 per direction: {lost:.3f} (expected {expected:.2f})")


@needs_lab
def test_rate_limits_each_direction(lab: Lab) -> None:
    r1, _ = reflectors(lab)
    rate = 8_000_000
    lab.impair("pub", rate="8mbit")
    try:
        (up,) = probe(lab, "pub", f"stream --to {r1} --upload 600000")
        (down,) = probe(lab, "pub", f"stream --to {r1} --download 600000")
    finally:
        lab.impair("pub", Impairment())
    for result in (up, down):
        assert 0.5 * rate < result["bps"] < 1.15 * rate, result
    print(
        f"\nthroughput at rate=8mbit: up {up['bps'] / 1e6:.2f}, down {down['bps'] / 1e6:.2f} Mbit/s"
    )


def lab_cli(name: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``infra/lab/lab ARGS`` for the lab ``name`` (given through ``$DSL_LAB``)."""
    env = dict(os.environ, DSL_LAB=name or "")
    return subprocess.run(
        [str(LAB_CLI), *args], env=env, capture_output=True, text=True, timeout=60
    )


@needs_lab
def test_cli_hosts_impair_status_exec(lab: Lab) -> None:
    hosts = lab_cli(lab.name, "hosts", "--json")
    assert hosts.returncode == 0, hosts.stderr
    assert json.loads(hosts.stdout)["hosts"] == lab.describe()["hosts"]
    changed = lab_cli(lab.name, "impair", "coneb", "--delay", "25ms", "--loss", "0.01", "--json")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["impairment"]["delay"] == "25ms"
    try:
        status = json.loads(lab_cli(lab.name, "status", "--json").stdout)
        assert status["healthy"] and status["links"]["coneb"]["delayer"]["alive"], status
        assert ping(lab, "b1", lab.host("mediator").address, 3, 0.05)["min"] >= 50
        shown = lab_cli(lab.name, "exec", "b1", "--", "ip", "-4", "-o", "addr", "show", "eth0")
        assert lab.host("b1").address in shown.stdout
    finally:
        assert lab_cli(lab.name, "impair", "coneb", "--clear").returncode == 0
    assert Lab.attach(lab.name).impairment("coneb").is_none
    assert lab_cli(lab.name, "exec", "nosuchhost", "--", "true").returncode == 1


STUN_SERVER = """
import asyncio, sys
from didsession.stun import StunServer, StunServerConfig
from didsession.stun_asyncio import serve_stun
async def main():
    (a, b) = sys.argv[1:3]
    core = StunServer(StunServerConfig(local_address=(a, 3480), other_address=(b, 3481)))
    async with await serve_stun(a, 3480, core, alternate=(b, 3481)):
        print("ready", flush=True)
        await asyncio.sleep(float(sys.argv[3]))
asyncio.run(main())
"""

STUN_CLIENT = """
import asyncio, json, sys
from didsession.stun_asyncio import stun_binding
async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    first = await stun_binding(host, port, local_addr=("0.0.0.0", 44000), timeout=3)
    other = first.other_address
    second = await stun_binding(other[0], other[1], local_addr=("0.0.0.0", 44000), timeout=3)
    print(json.dumps([list(first.mapped), list(second.mapped), list(other)]))
asyncio.run(main())
"""


@needs_lab
def test_didsession_stun_sees_the_nat_behaviour(lab: Lab) -> None:
    """The project's STUN server on the mediator's two addresses tells cone from symmetric."""
    m1, m2 = lab.host("mediator").addresses
    server = lab.popen(
        "mediator",
        [sys.executable, "-c", STUN_SERVER, m1, m2, "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        seen = {}
        for party in ("a1", "c1"):
            proc = lab.exec(party, [sys.executable, "-c", STUN_CLIENT, m1, "3480"], timeout=20)
            assert proc.returncode == 0, proc.stderr
            seen[party] = json.loads(proc.stdout)
    finally:
        server.terminate()
        server.wait(timeout=5)
    first, second, other = seen["a1"]
    assert other == [m2, 3481]
    assert first == second == [lab.host("conea").public_address, 44000]  # endpoint-independent
    first, second, _ = seen["c1"]
    assert first[0] == second[0] == lab.host("syma").public_address
    assert first[1] != second[1]  # a new mapping for the other address: symmetric


@needs_lab
def test_up_after_a_crash_and_down_leaves_nothing(tmp_path: Path) -> None:
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    _remove_stale_test_labs()
    name = f"c{os.getpid()}"
    prefix = lab_prefix(name)
    config = {"home": [{"name": "h1", "nat": "cone", "parties": ["p1"], "delay": "5ms"}]}
    crashed = Lab.up(config, name=name)
    leftover_pids = list(crashed.delayers.values())
    sleeper = crashed.popen("p1", ["sleep", "300"])
    leftover_pids.append(sleeper.pid)
    try:
        # The crash: the state file is gone, a half-built namespace is left over, every
        # process still runs.
        state = Path(os.environ.get("DSL_LAB_STATE", "/run/dsl-lab")) / prefix.rstrip("-")
        (state / "state.json").unlink()
        subprocess.run(["ip", "netns", "add", prefix + "stale"], check=True)

        config_file = tmp_path / "crash.toml"
        config_file.write_text(
            '[[home]]\nname = "h1"\nnat = "cone"\nparties = ["p1"]\ndelay = "5ms"\n'
        )
        started = time.monotonic()
        up = lab_cli(name, "up", str(config_file), "--json")
        assert up.returncode == 0, up.stderr
        assert "removed leftovers" in up.stderr and prefix + "stale" in up.stderr
        assert {h["name"] for h in json.loads(up.stdout)["hosts"]} == {
            "internet",
            "mediator",
            "h1",
            "p1",
        }
        assert not any(_pid_alive(pid) for pid in leftover_pids)
        fresh = Lab.attach(name)
        new_pids = list(fresh.delayers.values())
        assert new_pids and all(_pid_alive(pid) for pid in new_pids)
        assert ping(fresh, "p1", fresh.host("mediator").address, 3, 0.05)["min"] >= 10

        down = lab_cli(name, "down")
        assert down.returncode == 0, down.stderr
        assert not [ns for ns in _netns() if ns.startswith(prefix)]
        assert not any(_pid_alive(pid) for pid in new_pids)
        assert not state.exists()
        print(f"\ncrash recovery: lab up {time.monotonic() - started:.2f} s")
        again = lab_cli(name, "down")
        assert again.returncode == 0 and "removed 0 namespaces" in again.stderr
    finally:
        for proc in crashed._children:  # reap the killed children of this process
            proc.wait(timeout=5)
        teardown(name)
