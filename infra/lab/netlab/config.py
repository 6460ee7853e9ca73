"""What a lab should look like: the config file, parsed and checked, with no I/O.

A config names a mediator, home networks and their NAT modes, the parties in each home, and the
impairments of each access link.  It comes from a TOML file (``infra/lab/*.toml``), a dict, or
the ``--home`` flags of ``lab up``.  :mod:`netlab.topology` turns it into namespaces and
addresses; nothing here touches the system.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from netlab.errors import ConfigError

__all__ = [
    "DEFAULT_INTERNET",
    "HomeSpec",
    "Impairment",
    "LabConfig",
    "MediatorSpec",
    "NatMode",
    "format_duration",
    "format_rate",
    "parse_duration",
    "parse_rate",
]

# RFC 5737 TEST-NET-3: reserved for documentation, never routed anywhere, so it stands in for
# "public" addresses; it exists only inside the lab's namespaces.
DEFAULT_INTERNET = ipaddress.IPv4Network("203.0.113.0/24")

# Host names become parts of namespace and interface names ("p-NAME" must fit IFNAMSIZ), and a
# namespace name "dsl-LAB-HOST" must split unambiguously, hence no "-" and at most 12 chars.
_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
RESERVED_NAMES = frozenset({"internet"})


class NatMode(Enum):
    """How a home router treats its parties' traffic.

    ``CONE``: port-preserving MASQUERADE: endpoint-independent mapping, address-and-port-
    dependent filtering (RFC 4787 terms): a "port-restricted cone" home router.
    ``SYMMETRIC``: MASQUERADE --random-fully: a fresh random port per destination
    (address-and-port-dependent mapping), same filtering: a carrier-grade or enterprise NAT.
    ``NONE``: no router at all: each party is a public host on the internet segment.
    """

    CONE = "cone"
    SYMMETRIC = "symmetric"
    NONE = "none"


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.I)
_RATE_UNITS = {
    "bit": 1,
    "kbit": 1_000,
    "mbit": 1_000_000,
    "gbit": 1_000_000_000,
    # tc's spelling: "bps" is bytes per second.
    "bps": 8,
    "kbps": 8_000,
    "mbps": 8_000_000,
    "gbps": 8_000_000_000,
}


def parse_duration(value: str | float | int) -> float:
    """``"40ms"``, ``"0.04s"``, ``"500us"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ConfigError(f"not a duration: {value!r} (try '40ms')")
        number, unit = float(match.group(1)), match.group(2) or "s"
        seconds = number * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
    if seconds < 0 or seconds > 10:
        raise ConfigError(f"duration out of range (0 to 10 s): {value!r}")
    return seconds


def parse_rate(value: str | int | None) -> int | None:
    """``"10mbit"``, ``"512kbit"`` or bits per second -> bits per second; 0/None/"none" -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        bits = value
    else:
        if value.strip().lower() in {"", "none", "0"}:
            return None
        match = _RATE.match(value)
        if not match:
            raise ConfigError(f"not a rate: {value!r} (try '10mbit')")
        bits = int(float(match.group(1)) * _RATE_UNITS[(match.group(2) or "bit").lower()])
    if bits == 0:
        return None
    if bits < 8_000:
        raise ConfigError(f"rate below 8kbit is not useful: {value!r}")
    return bits


def format_duration(seconds: float) -> str:
    return f"{seconds * 1000:g}ms"


def format_rate(bits: int | None) -> str:
    if bits is None:
        return "none"
    for unit, scale in (("gbit", 1_000_000_000), ("mbit", 1_000_000), ("kbit", 1_000)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits}bit"


def parse_loss(value: object) -> float:
    if isinstance(value, str):
        text = value.strip()
        loss = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        loss = float(value)
    else:
        raise ConfigError(f"not a loss probability: {value!r}")
    if not 0.0 <= loss < 1.0:
        raise ConfigError(f"loss must be in [0, 1): {value!r}")
    return loss


@dataclass(frozen=True, slots=True)
class Impairment:
    """What an access link does to packets, in each direction separately.

    ``delay``: added one-way latency in seconds, applied to each direction, so a round trip
    over one impaired link grows by ``2 * delay`` (like netem on both ends of a link).
    ``jitter``: each packet's delay is drawn uniformly from ``delay +- jitter``; packets are
    never reordered.  ``loss``: drop probability per packet per direction.  ``rate``: bits per
    second per direction (token bucket), None for unlimited.
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rate: int | None = None

    def __post_init__(self) -> None:
        if self.jitter > self.delay and self.jitter > 0:
            raise ConfigError("jitter must not exceed delay")

    @property
    def is_none(self) -> bool:
        return self == Impairment()

    def updated(self, values: Mapping[str, object]) -> Impairment:
        """A copy with the given fields (strings as in the config file) replaced."""
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            if key == "delay" or key == "jitter":
                changes[key] = parse_duration(value)  # type: ignore[arg-type]
            elif key == "loss":
                changes[key] = parse_loss(value)
            elif key == "rate":
                changes[key] = parse_rate(value)  # type: ignore[arg-type]
            else:
                raise ConfigError(f"unknown impairment {key!r} (delay, jitter, loss, rate)")
        if "delay" in changes and "jitter" not in changes and changes["delay"] < self.jitter:
            changes["jitter"] = 0.0
        return replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        return {
            "delay": format_duration(self.delay),
            "jitter": format_duration(self.jitter),
            "loss": self.loss,
            "rate": format_rate(self.rate),
        }

    def describe(self) -> str:
        parts = []
        if self.delay:
            jitter = f"+-{format_duration(self.jitter)}" if self.jitter else ""
            parts.append(f"delay {format_duration(self.delay)}{jitter}")
        if self.loss:
            parts.append(f"loss {self.loss:g}")
        if self.rate:
            parts.append(f"rate {format_rate(self.rate)}")
        return ", ".join(parts) or "none"


IMPAIRMENT_KEYS = ("delay", "jitter", "loss", "rate")


@dataclass(frozen=True, slots=True)
class MediatorSpec:
    """The public mediator host: two addresses, so STUN can answer from a second one (RFC 5780)."""

    name: str = "mediator"
    addresses: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
    impair: Impairment = field(default_factory=Impairment)


@dataclass(frozen=True, slots=True)
class HomeSpec:
    """One home network: a router namespace named ``name`` with ``parties`` on its LAN.

    With ``nat = NONE`` there is no router: each party is a public host with its own link.
    ``lan`` and ``wan`` pin the addresses; by default home *i* gets ``192.168.i.0/24`` and
    WAN address ``.100+i`` of the internet segment.
    """

    name: str
    nat: NatMode
    parties: tuple[str, ...]
    lan: ipaddress.IPv4Network | None = None
    wan: ipaddress.IPv4Address | None = None
    impair: Impairment = field(default_factory=Impairment)


@dataclass(frozen=True, slots=True)
class LabConfig:
    """A whole lab: the internet segment, an optional mediator and the homes."""

    homes: tuple[HomeSpec, ...]
    mediator: MediatorSpec | None = field(default_factory=MediatorSpec)
    internet: ipaddress.IPv4Network = DEFAULT_INTERNET

    def __post_init__(self) -> None:
        names: list[str] = ["internet"]
        if self.mediator is not None:
            names.append(self.mediator.name)
        for home in self.homes:
            if home.nat is not NatMode.NONE:
                names.append(home.name)
            if not home.parties:
                raise ConfigError(f"home {home.name!r} has no parties")
            names.extend(home.parties)
        seen: set[str] = set()
        for name in names[1:]:
            if not _NAME.match(name):
                raise ConfigError(
                    f"bad host name {name!r}: lowercase letters and digits, starting with a "
                    "letter, at most 12 characters"
                )
            if name in RESERVED_NAMES or name in seen:
                raise ConfigError(f"host name {name!r} is used twice or reserved")
            seen.add(name)
        for home in self.homes:
            if home.lan is not None and home.lan.overlaps(self.internet):
                raise ConfigError(
                    f"home {home.name}: LAN {home.lan} overlaps the internet {self.internet}"
                )
        if self.internet.prefixlen > 24:
            raise ConfigError("the internet segment needs at least a /24")

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_toml(cls, path: str | Path) -> LabConfig:
        """Read a config file; see ``infra/lab/README.md`` for its keys."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read lab config {path}: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabConfig:
        """Build from the TOML structure: ``internet``, ``mediator``, ``defaults``, ``home``."""
        _only(data, {"internet", "mediator", "defaults", "home"}, "config")
        internet = DEFAULT_INTERNET
        if "internet" in data:
            _only(data["internet"], {"subnet"}, "[internet]")
            internet = _network(data["internet"].get("subnet", str(DEFAULT_INTERNET)))
        defaults = dict(data.get("defaults", {}))
        _only(defaults, {"nat", *IMPAIRMENT_KEYS}, "[defaults]")
        mediator: MediatorSpec | None = MediatorSpec()
        raw_mediator = data.get("mediator", {})
        if raw_mediator is False:
            mediator = None
        else:
            _only(raw_mediator, {"name", "addresses", *IMPAIRMENT_KEYS}, "[mediator]")
            addresses = raw_mediator.get("addresses")
            pair: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
            if addresses is not None:
                if not isinstance(addresses, list) or len(addresses) != 2:
                    raise ConfigError("[mediator] addresses must list exactly two addresses")
                pair = (_address(addresses[0]), _address(addresses[1]))
            mediator = MediatorSpec(
                name=str(raw_mediator.get("name", "mediator")),
                addresses=pair,
                impair=Impairment().updated(_pick(raw_mediator, IMPAIRMENT_KEYS)),
            )
        homes = []
        for index, raw in enumerate(data.get("home", []), start=1):
            _only(raw, {"name", "nat", "parties", "lan", "wan", *IMPAIRMENT_KEYS}, "[[home]]")
            merged = {**defaults, **raw}
            parties = merged.get("parties", [f"h{index}p1"])
            if isinstance(parties, int):
                parties = [f"h{index}p{k}" for k in range(1, parties + 1)]
            homes.append(
                HomeSpec(
                    name=str(merged.get("name", f"home{index}")),
                    nat=_nat(merged.get("nat", "cone")),
                    parties=tuple(str(p) for p in parties),
                    lan=_network(merged["lan"]) if "lan" in merged else None,
                    wan=_address(merged["wan"]) if "wan" in merged else None,
                    impair=Impairment().updated(_pick(merged, IMPAIRMENT_KEYS)),
                )
            )
        return cls(homes=tuple(homes), mediator=mediator, internet=internet)

    @classmethod
    def from_flags(
        cls, homes: Iterable[str], impair: Mapping[str, object] | None = None
    ) -> LabConfig:
        """``--home cone --home symmetric:2``: home *i* is ``home{i}``, parties ``h{i}p{k}``.

        ``impair`` (delay, jitter, loss, rate) applies to every home link.
        """
        raw_homes = []
        for spec in homes:
            mode, _, count = spec.partition(":")
            raw_homes.append({"nat": mode, "parties": int(count or 1)})
        if not raw_homes:
            raise ConfigError("no homes: give a config file or --home MODE[:PARTIES]")
        defaults = {k: v for k, v in (impair or {}).items() if v is not None}
        return cls.from_dict({"defaults": defaults, "home": raw_homes})

    def as_dict(self) -> dict[str, Any]:
        """The TOML structure again, with every default spelled out."""
        out: dict[str, Any] = {"internet": {"subnet": str(self.internet)}, "home": []}
        if self.mediator is None:
            out["mediator"] = False
        else:
            out["mediator"] = {"name": self.mediator.name, **_impair_fields(self.mediator.impair)}
            if self.mediator.addresses:
                out["mediator"]["addresses"] = [str(a) for a in self.mediator.addresses]
        for home in self.homes:
            raw: dict[str, Any] = {
                "name": home.name,
                "nat": home.nat.value,
                "parties": list(home.parties),
                **_impair_fields(home.impair),
            }
            if home.lan is not None:
                raw["lan"] = str(home.lan)
            if home.wan is not None:
                raw["wan"] = str(home.wan)
            out["home"].append(raw)
        return out


def _impair_fields(imp: Impairment) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if imp.delay:
        out["delay"] = format_duration(imp.delay)
    if imp.jitter:
        out["jitter"] = format_duration(imp.jitter)
    if imp.loss:
        out["loss"] = imp.loss
    if imp.rate:
        out["rate"] = format_rate(imp.rate)
    return out


def _only(table: object, allowed: set[str], where: str) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")


def _pick(table: Mapping[str, Any], keys: Iterable[str]) -> dict[str, object]:
    return {k: table[k] for k in keys if k in table}


def _nat(value: object) -> NatMode:
    try:
        return NatMode(str(value))
    except ValueError:
        raise ConfigError(f"unknown NAT mode {value!r} (cone, symmetric, none)") from None


def _network(value: object) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value))
    except ValueError as exc:
        raise ConfigError(f"not an IPv4 network: {value!r}") from exc


def _address(value: object) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError as exc:
        raise ConfigError(f"not an IPv4 address: {value!r}") from exc
