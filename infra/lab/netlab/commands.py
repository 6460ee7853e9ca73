"""The system commands that build a lab and set its impairments, as data.

Every function here returns a list of :class:`Command` (argv plus optional stdin) and runs
nothing, so ``lab up --dry-run`` can print the whole build and tests can read it without root.
All commands address a lab namespace explicitly (``ip -n NS``, ``tc -n NS``, ``ip netns exec
NS``): none of them touches the root namespace's links, routes or firewall.

Rules, per namespace (see README.md for why):

* home router, ``cone``: ``nat POSTROUTING -o wan -j MASQUERADE`` (Linux keeps the source port
  when it is free: endpoint-independent mapping); ``symmetric``: the same with
  ``--random-fully`` (a random port per connection tuple).  Both drop unsolicited inbound
  (``--ctstate NEW,INVALID`` on ``wan`` in INPUT and FORWARD): without that, an early inbound
  punch creates a conntrack entry of its own and the NAT remaps the party's next packet.
* internet core: no conntrack at all (``raw NOTRACK``); per link two mangle chains,
  ``up-LINK`` (PREROUTING ``-i x-LINK``) and ``dn-LINK`` (POSTROUTING ``-o x-LINK``), hold the
  loss rule (``-m statistic``) and the NFQUEUE rule for the delayer.  Uplink and downlink sit in
  different hooks, so a packet crossing two impaired links is impaired by both.
* rate: ``tc tbf`` on the egress of both ends of the link.
"""

from __future__ import annotations

from dataclasses import dataclass

from netlab.config import Impairment, NatMode
from netlab.topology import CORE, Host, Link, Role, Topology

__all__ = [
    "Command",
    "impairment_commands",
    "setup_commands",
    "tbf_burst",
]


@dataclass(frozen=True, slots=True)
class Command:
    """One system command; ``may_fail``: a non-zero exit is expected at times and ignored."""

    argv: tuple[str, ...]
    stdin: str | None = None
    may_fail: bool = False

    def __str__(self) -> str:
        text = " ".join(self.argv)
        if self.stdin is not None:
            text += " <<EOF\n" + self.stdin + "EOF"
        return text


# Commands are written as in a shell; no name or address in them contains a blank.
def _ip(namespace: str, args: str) -> Command:
    """``ip -n NAMESPACE ARGS``."""
    return Command(("ip", "-n", namespace, *args.split()))


def _tc(namespace: str, args: str, may_fail: bool = False) -> Command:
    """``tc -n NAMESPACE ARGS``."""
    return Command(("tc", "-n", namespace, *args.split()), may_fail=may_fail)


def _in(namespace: str, args: str, stdin: str | None = None) -> Command:
    """``ip netns exec NAMESPACE ARGS``."""
    return Command(("ip", "netns", "exec", namespace, *args.split()), stdin=stdin)


_SYSCTL_ALL = (
    # IPv4 only: no router advertisements, MLD or link-local chatter in captures.
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)
_SYSCTL_FORWARD = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)
# A router's LAN bridge must not feed bridged frames through iptables (br_netfilter is
# loaded on many hosts, and its switch is per namespace).
_SYSCTL_BRIDGE = ("net.bridge.bridge-nf-call-iptables=0",)


def setup_commands(topo: Topology) -> list[Command]:
    """Everything ``lab up`` runs, in order, before impairments and delayers."""
    out: list[Command] = []
    for host in topo.hosts.values():
        out.append(Command(("ip", "netns", "add", host.namespace)))
    for host in topo.hosts.values():
        sysctls = list(_SYSCTL_ALL)
        if host.role in (Role.INTERNET, Role.ROUTER):
            sysctls += _SYSCTL_FORWARD
        out.append(_in(host.namespace, "sysctl -q -w " + " ".join(sysctls)))
        if host.role is Role.ROUTER:
            # -e: the key exists only where the bridge netfilter module is loaded.
            out.append(_in(host.namespace, "sysctl -q -e -w " + " ".join(_SYSCTL_BRIDGE)))
        out.append(_ip(host.namespace, "link set lo up"))
    core = topo.hosts[CORE]
    for link in topo.links.values():
        out += _link_commands(topo, core, topo.hosts[link.host], link)
    for host in topo.hosts.values():
        if host.role is Role.ROUTER:
            out += _home_commands(topo, host)
    out.append(_in(core.namespace, "iptables-restore", stdin=_core_rules(topo)))
    return out


def _link_commands(topo: Topology, core: Host, host: Host, link: Link) -> list[Command]:
    cns, hns = core.namespace, host.namespace
    cif, hif = link.core_interface, link.host_interface
    gateway = topo.core_address
    out = [
        # Both ends are created inside lab namespaces: nothing ever appears in the root one.
        _ip(cns, f"link add {cif} type veth peer name {hif} netns {hns}"),
        _ip(cns, f"addr add {gateway}/32 dev {cif}"),
        _ip(cns, f"link set {cif} up"),
    ]
    for address in link.addresses:
        out.append(_ip(cns, f"route add {address}/32 dev {cif}"))
        out.append(_ip(hns, f"addr add {address}/32 dev {hif}"))
    out += [
        _ip(hns, f"link set {hif} up"),
        _ip(hns, f"route add {gateway}/32 dev {hif}"),
        _ip(hns, f"route add default via {gateway} dev {hif} src {link.addresses[0]}"),
    ]
    return out


def _home_commands(topo: Topology, router: Host) -> list[Command]:
    assert router.lan is not None
    prefixlen = router.lan.split("/")[1]
    ns = router.namespace
    gateway = router.addresses[1]
    out = [
        _ip(ns, "link add lan type bridge"),
        _ip(ns, f"addr add {gateway}/{prefixlen} dev lan"),
        _ip(ns, "link set lan up"),
    ]
    for party in topo.parties(router.name):
        port, pns = f"p-{party.name}", party.namespace
        out += [
            _ip(ns, f"link add {port} type veth peer name eth0 netns {pns}"),
            _ip(ns, f"link set {port} master lan"),
            _ip(ns, f"link set {port} up"),
            _ip(pns, f"addr add {party.address}/{prefixlen} dev eth0"),
            _ip(pns, "link set eth0 up"),
            _ip(pns, f"route add default via {gateway}"),
        ]
    out.append(_in(ns, "iptables-restore", stdin=router_rules(router.nat)))
    return out


def router_rules(nat: NatMode | None) -> str:
    """The home router's whole ruleset, for ``iptables-restore``."""
    masquerade = "-A POSTROUTING -o wan -j MASQUERADE"
    if nat is NatMode.SYMMETRIC:
        masquerade += " --random-fully"
    return "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            masquerade,
            "COMMIT",
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            "-A INPUT -i wan -m conntrack --ctstate NEW,INVALID -j DROP",
            "-A FORWARD -i wan -m conntrack --ctstate NEW,INVALID -j DROP",
            "COMMIT",
            "",
        ]
    )


def _core_rules(topo: Topology) -> str:
    lines = [
        "*raw",
        ":PREROUTING ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        "-A PREROUTING -j NOTRACK",
        "-A OUTPUT -j NOTRACK",
        "COMMIT",
        "*mangle",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
    ]
    for link in topo.links.values():
        lines += [f":up-{link.name} - [0:0]", f":dn-{link.name} - [0:0]"]
    for link in topo.links.values():
        lines.append(f"-A PREROUTING -i {link.core_interface} -j up-{link.name}")
        lines.append(f"-A POSTROUTING -o {link.core_interface} -j dn-{link.name}")
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def tbf_burst(rate: int) -> int:
    """Token bucket size in bytes: 4 ms of traffic, at least two full frames."""
    return max(2 * 1514, rate // 8 // 250)


def impairment_commands(topo: Topology, link: Link, imp: Impairment) -> list[Command]:
    """Replace ``link``'s impairments by ``imp`` (the delayer itself is run by the caller)."""
    core = topo.hosts[CORE].namespace
    host = topo.hosts[link.host].namespace
    rules = ["*mangle"]
    for chain, queue in ((f"up-{link.name}", link.up_queue), (f"dn-{link.name}", link.down_queue)):
        rules.append(f"-F {chain}")
        if imp.loss:
            rules.append(
                f"-A {chain} -m statistic --mode random --probability {imp.loss:.6f} -j DROP"
            )
        if imp.delay:
            rules.append(f"-A {chain} -j NFQUEUE --queue-num {queue}")
    rules += ["COMMIT", ""]
    out = [_in(core, "iptables-restore --noflush", stdin="\n".join(rules))]
    for namespace, interface in ((core, link.core_interface), (host, link.host_interface)):
        if imp.rate:
            burst = tbf_burst(imp.rate)
            out.append(
                _tc(
                    namespace,
                    f"qdisc replace dev {interface} root tbf rate {imp.rate}bit burst {burst} "
                    "latency 100ms",
                )
            )
        else:
            out.append(_tc(namespace, f"qdisc del dev {interface} root", may_fail=True))
    return out
