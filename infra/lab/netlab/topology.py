"""Where everything goes: namespaces, interfaces and addresses of a lab, computed from its config.

Theory of operation
-------------------
One namespace, ``internet``, is a plain IPv4 router standing for the public internet.  Every
public node hangs off it by its own veth pair (an *access link*): the mediator, each home
router, each party of a ``nat = "none"`` home.  Public nodes hold /32 addresses from the
internet segment (default TEST-NET-3, ``203.0.113.0/24``) and reach each other through the core
(``203.0.113.1``), so every packet between two homes crosses exactly two access links: the
sender's uplink and the receiver's downlink.  Impairments live on access links; the core applies
them, so a NAT router's conntrack never sees a held packet.

Each home router has a ``wan`` interface on the internet and a ``lan`` bridge with one port per
party (``p-NAME``); parties of one home share that LAN and reach each other directly, without
the router's IP layer.  Names are ``<prefix><host>``; the prefix is ``dsl-`` for the default
lab and ``dsl-<lab>-`` for a named one, and host names contain no ``-``, so teardown can tell
exactly which namespaces belong to which lab.

Nothing here touches the system: :mod:`netlab.commands` turns a :class:`Topology` into argv.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from netlab.config import HomeSpec, LabConfig, NatMode
from netlab.errors import ConfigError

__all__ = [
    "CORE",
    "Host",
    "Link",
    "Role",
    "Topology",
    "lab_prefix",
    "parse_namespace",
]

CORE = "internet"
_LAB_NAME = re.compile(r"^[a-z0-9]{1,16}$")
_NAMESPACE = re.compile(r"^dsl-(?:([a-z0-9]{1,16})-)?([a-z][a-z0-9]{0,11})$")


def lab_prefix(name: str | None) -> str:
    """``dsl-`` for the default lab, ``dsl-NAME-`` for a named one."""
    if name is None or name == "":
        return "dsl-"
    if not _LAB_NAME.match(name):
        raise ConfigError(f"bad lab name {name!r}: lowercase letters and digits, at most 16")
    return f"dsl-{name}-"


def parse_namespace(namespace: str) -> tuple[str | None, str] | None:
    """``dsl-t1-alice`` -> ``("t1", "alice")``; ``dsl-alice`` -> ``(None, "alice")``."""
    match = _NAMESPACE.match(namespace)
    if not match:
        return None
    return match.group(1), match.group(2)


class Role(Enum):
    """What a namespace is for."""

    INTERNET = "internet"  # the core router standing for the public internet
    MEDIATOR = "mediator"  # public host with two addresses
    ROUTER = "router"  # a home's NAT router
    PARTY = "party"  # a party on a home LAN, behind its router
    PUBLIC = "public"  # a party with a public address (nat = "none")


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace of the lab, as ``lab hosts --json`` prints it.

    ``addresses``: primary first (mediator: both; router: WAN then LAN gateway).
    ``public_address``: the address the internet sees this host's traffic come from (a party's
    router WAN address; a public host's own).  ``link``: the access link this host sits behind,
    the name ``lab impair`` takes.  ``nat``: the NAT in front of a party, or the router's own.
    """

    name: str
    namespace: str
    role: Role
    addresses: tuple[str, ...]
    interface: str | None = None
    gateway: str | None = None
    home: str | None = None
    nat: NatMode | None = None
    public_address: str | None = None
    link: str | None = None
    lan: str | None = None

    @property
    def address(self) -> str:
        """The primary address."""
        return self.addresses[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "role": self.role.value,
            "addresses": list(self.addresses),
            "interface": self.interface,
            "gateway": self.gateway,
            "home": self.home,
            "nat": self.nat.value if self.nat else None,
            "public_address": self.public_address,
            "link": self.link,
            "lan": self.lan,
        }


@dataclass(frozen=True, slots=True)
class Link:
    """An access link: ``host``'s ``host_interface`` <-> the core's ``core_interface``.

    ``addresses``: routed over the link by the core.  ``up_queue`` / ``down_queue``: the
    NFQUEUE numbers (in the core namespace) its delayer serves, host->internet and back.
    """

    name: str
    host: str
    host_interface: str
    core_interface: str
    addresses: tuple[str, ...]
    up_queue: int
    down_queue: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "host_interface": self.host_interface,
            "core_interface": self.core_interface,
            "addresses": list(self.addresses),
        }


@dataclass(frozen=True, slots=True)
class Topology:
    """All hosts and links of one lab, in build order (core first)."""

    prefix: str
    internet: ipaddress.IPv4Network
    core_address: str
    hosts: dict[str, Host]
    links: dict[str, Link]

    @classmethod
    def plan(cls, config: LabConfig, prefix: str) -> Topology:
        """Assign namespaces, interfaces and addresses (the address plan in README.md)."""
        net = config.internet
        core_address = str(net.network_address + 1)
        hosts: dict[str, Host] = {
            CORE: Host(CORE, prefix + CORE, Role.INTERNET, (core_address,), link=None)
        }
        links: dict[str, Link] = {}
        taken = {net.network_address + 1}
        pinned = {a for h in config.homes if h.wan for a in [h.wan]}
        if config.mediator and config.mediator.addresses:
            pinned.update(config.mediator.addresses)

        def allocate(start: int) -> ipaddress.IPv4Address:
            for offset in range(start, net.num_addresses - 1):
                candidate = net.network_address + offset
                if candidate not in taken and candidate not in pinned:
                    taken.add(candidate)
                    return candidate
            raise ConfigError(f"the internet segment {net} is full")

        def claim(address: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
            if address not in net or address in taken:
                raise ConfigError(f"address {address} is outside {net} or used twice")
            taken.add(address)
            return address

        def add_link(name: str, interface: str, addresses: tuple[str, ...]) -> str:
            index = len(links)
            links[name] = Link(
                name=name,
                host=name,
                host_interface=interface,
                core_interface=f"x-{name}",
                addresses=addresses,
                up_queue=2 * index + 1,
                down_queue=2 * index + 2,
            )
            return name

        if config.mediator is not None:
            spec = config.mediator
            if spec.addresses:
                pair = (claim(spec.addresses[0]), claim(spec.addresses[1]))
            else:
                pair = (allocate(10), allocate(11))
            addresses = (str(pair[0]), str(pair[1]))
            hosts[spec.name] = Host(
                name=spec.name,
                namespace=prefix + spec.name,
                role=Role.MEDIATOR,
                addresses=addresses,
                interface="eth0",
                gateway=core_address,
                public_address=addresses[0],
                link=add_link(spec.name, "eth0", addresses),
            )

        public_index = 0
        for index, home in enumerate(config.homes, start=1):
            if home.nat is NatMode.NONE:
                for party in home.parties:
                    public_index += 1
                    address = str(allocate(200 + public_index))
                    hosts[party] = Host(
                        name=party,
                        namespace=prefix + party,
                        role=Role.PUBLIC,
                        addresses=(address,),
                        interface="eth0",
                        gateway=core_address,
                        home=home.name,
                        nat=NatMode.NONE,
                        public_address=address,
                        link=add_link(party, "eth0", (address,)),
                    )
                continue
            wan = str(claim(home.wan) if home.wan else allocate(100 + index))
            lan = _home_lan(home, index, net)
            gateway = str(lan.network_address + 1)
            hosts[home.name] = Host(
                name=home.name,
                namespace=prefix + home.name,
                role=Role.ROUTER,
                addresses=(wan, gateway),
                interface="wan",
                gateway=core_address,
                home=home.name,
                nat=home.nat,
                public_address=wan,
                link=add_link(home.name, "wan", (wan,)),
                lan=str(lan),
            )
            for k, party in enumerate(home.parties):
                if k + 10 >= lan.num_addresses - 1:
                    raise ConfigError(f"home {home.name}: LAN {lan} too small for its parties")
                hosts[party] = Host(
                    name=party,
                    namespace=prefix + party,
                    role=Role.PARTY,
                    addresses=(str(lan.network_address + 10 + k),),
                    interface="eth0",
                    gateway=gateway,
                    home=home.name,
                    nat=home.nat,
                    public_address=wan,
                    link=home.name,
                    lan=str(lan),
                )
        return cls(prefix, net, core_address, hosts, links)

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise ConfigError(
                f"no host {name!r} in this lab (hosts: {', '.join(self.hosts)})"
            ) from None

    def link(self, name: str) -> Link:
        try:
            return self.links[name]
        except KeyError:
            raise ConfigError(
                f"no link {name!r} in this lab (links: {', '.join(self.links)})"
            ) from None

    def parties(self, home: str) -> list[Host]:
        """The hosts whose traffic leaves through ``home``'s router."""
        return [h for h in self.hosts.values() if h.role is Role.PARTY and h.home == home]

    @property
    def namespaces(self) -> list[str]:
        return [h.namespace for h in self.hosts.values()]


def _home_lan(home: HomeSpec, index: int, internet: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    if home.lan is not None:
        if home.lan.overlaps(internet):
            raise ConfigError(f"home {home.name}: LAN {home.lan} overlaps the internet {internet}")
        if home.lan.prefixlen > 28:
            raise ConfigError(f"home {home.name}: LAN {home.lan} is smaller than a /28")
        return home.lan
    if index > 254:
        raise ConfigError("more than 254 homes need explicit lan = ... subnets")
    # RFC 1918, like a home router's default; pin ``lan`` to make two homes overlap.
    lan = ipaddress.IPv4Network(f"192.168.{index}.0/24")
    if lan.overlaps(internet):
        raise ConfigError(f"home {home.name}: default LAN {lan} overlaps the internet {internet}")
    return lan
