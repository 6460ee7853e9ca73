"""Direct-path candidates: what a party advertises, how it learns them, how it dials them.

Theory of operation
-------------------
A session starts on the mediator's relay; the session layer then swaps *candidates* with the
peer and tries to open a direct TCP connection (the ICE idea, RFC 8445, for TCP only).  This
module gives it the building blocks; it holds no session state.

Candidates (RFC 8445 §5.1.1).  A *host* candidate is one of this machine's own addresses with
the listening port; a *server-reflexive* (srflx) one is the address and port the NAT gave the
listening port, as the mediator's STUN server saw it.  Each carries a priority computed as in
RFC 8445 §5.1.2.1 (type preference 126 for host, 100 for srflx), so host candidates are tried
first: two parties on one LAN connect without touching their router.  :class:`Candidate` has a
strict JSON codec (:meth:`Candidate.from_json`, :func:`decode_candidates`): anything a peer
sends is either a tuple of valid candidates or a :class:`~didsession.errors.RemoteProtocolError`
with code ``e.p.msg.session.candidates``.

Gathering (:func:`gather`).  STUN over TCP *from the listening port* gives the srflx
candidate: through an endpoint-independent (cone) NAT that mapping is the one a peer's SYN
must hit.  RFC 5780 §4.3 tests (STUN to the mediator's primary and OTHER-ADDRESS from one
local port) tell the NAT's mapping behaviour for UDP and for TCP; an address-dependent
(symmetric) mapping means the srflx candidate is of no use to a peer behind its own NAT, and
the session stays on the relay.  Gathering never raises for the network: what failed is
reported in :attr:`Gathered.problems`, in words.

Dialling (:func:`dial`) and TCP simultaneous open (RFC 9293 §3.5, Figure 8).  Both parties
dial each other's candidates at once, from their listening port.  A SYN that reaches the
other NAT before that NAT has seen its own party's SYN is dropped; but by then the first NAT
has a mapping for the flow, so the other party's SYN gets through it, finds a socket in
SYN-SENT and both ends complete the handshake as a simultaneous open.  Hence every socket
here is bound with ``SO_REUSEADDR`` + ``SO_REUSEPORT`` (:func:`reusable_tcp_socket`): the
listener, the STUN connections and every dial attempt share one port, each with its own
4-tuple.  A connection can equally arrive on the listener (a peer with no NAT, or the same
LAN); the session layer must accept both ways and keep one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import AsyncGenerator, Iterator, Sequence
from enum import StrEnum
from typing import Any, Final

from didsession._dataclass import dataclass
from didsession.errors import DidSessionError, LocalProtocolError, RemoteProtocolError
from didsession.stun import (
    Address,
    BindingResult,
    StunStreamReader,
    binding_request,
    classify_mapping,
    mapping_test_targets,
    parse_binding_response,
)
from didsession.stun import MappingBehavior as StunMapping
from didsession.stun_asyncio import stun_binding

__all__ = [
    "CODE",
    "MAX_CANDIDATES",
    "Candidate",
    "CandidateType",
    "Gathered",
    "MappingBehavior",
    "decode_candidates",
    "dial",
    "encode_candidates",
    "gather",
    "host_addresses",
    "reusable_tcp_socket",
]

#: Problem-report code of every malformed candidate or candidate list.
CODE: Final = "e.p.msg.session.candidates"

#: Most candidates one party may advertise (a peer dials each of them).
MAX_CANDIDATES: Final = 16

_PROTOCOLS: Final = ("tcp",)
_TYPES: Final = ("host", "srflx")
_FIELDS: Final = ("type", "proto", "host", "port", "priority")
_MAX_PRIORITY: Final = 2**31 - 1  # RFC 8445 §5.1.2.1: 1 .. 2**31 - 1

# Seconds between the starts of successive candidates' first attempts (RFC 8445 §14.2's Ta).
_STAGGER: Final = 0.05
# An attempt with no answer is abandoned and started afresh after this long: the kernel's
# initial SYN RTO (RFC 6298 §2.1).  Not shorter: closing a socket in SYN-SENT makes the
# SYN-ACK of a slow but working handshake meet a RST.
_ATTEMPT_TIMEOUT: Final = 1.0
_TCP_SYN_SENT: Final = 2  # linux/tcp_states.h
# Errors after which a candidate is tried again: nobody listens yet, no route yet, or our
# 4-tuple is still taken (the peer's SYN reached our listener first).
_RETRY_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EADDRINUSE,
        errno.EADDRNOTAVAIL,
    }
)


class CandidateType(StrEnum):
    """How a candidate was learned (RFC 8445 §5.1.1.1, §5.1.1.2)."""

    HOST = "host"
    SRFLX = "srflx"


class MappingBehavior(StrEnum):
    """NAT mapping behaviour (RFC 4787 §4.1), as far as hole punching cares.

    Address-and-port-dependent mapping folds into :attr:`ADDRESS_DEPENDENT`: either way a
    new destination gets a new mapping, so a peer cannot use the one STUN saw.
    """

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    UNKNOWN = "unknown"


# RFC 8445 §5.1.2.2 recommended type preferences.
_TYPE_PREFERENCE: Final = {CandidateType.HOST: 126, CandidateType.SRFLX: 100}


def _priority(kind: CandidateType, local_preference: int) -> int:
    """RFC 8445 §5.1.2.1 with component ID 1."""
    return (_TYPE_PREFERENCE[kind] << 24) + (local_preference << 8) + 255


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=CODE)


def _show(value: Any) -> str:
    """``repr(value)``, short enough for a one-line message."""
    if isinstance(value, int) and value.bit_length() > 128:  # repr may refuse (4300 digits)
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def _check_ip(value: Any) -> str:
    """The canonical text of an IP literal a peer may ask us to dial."""
    if not isinstance(value, str):
        raise _bad(f"candidate host must be an IP address string, got {_show(value)}")
    if "%" in value:
        raise _bad(f"candidate host must not carry an IPv6 zone, got {_show(value)}")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise _bad(
            f"candidate host must be an IP address (no host names), got {_show(value)}"
        ) from None
    # An IPv4-mapped IPv6 address is judged as the IPv4 address it maps (Python 3.11's
    # is_unspecified and friends do not look through it); 0.0.0.0/8 means "this host".
    seen = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip
    if (
        seen.is_unspecified
        or seen.is_multicast
        or seen.is_link_local
        or (seen.version == 4 and seen in _THIS_NETWORK)
    ):
        raise _bad(f"candidate host {ip} is not a unicast address that can be dialled")
    if seen.version == 4 and seen == ipaddress.IPv4Address("255.255.255.255"):
        raise _bad("candidate host 255.255.255.255 is the broadcast address")
    return str(ip)


def _check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"candidate {what} must be an integer {low}..{high}, got {_show(value)}")
    return value


@dataclass(frozen=True, slots=True)
class Candidate:
    """One transport address a peer may dial (RFC 8445 §5.1).

    Args:
        type: host or server-reflexive.
        proto: ``"tcp"`` (the only one for now).
        host: an IP literal, IPv4 or IPv6, in canonical form.
        port: 1..65535.
        priority: RFC 8445 §5.1.2.1; higher is tried first; host above srflx.
    """

    type: CandidateType
    proto: str
    host: str
    port: int
    priority: int

    @property
    def address(self) -> Address:
        """(host, port), as ``socket.connect`` wants it."""
        return self.host, self.port

    def to_json(self) -> dict[str, Any]:
        """The wire form: ``{"type", "proto", "host", "port", "priority"}``."""
        return {
            "type": self.type.value,
            "proto": self.proto,
            "host": self.host,
            "port": self.port,
            "priority": self.priority,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Candidate:
        """Read one candidate a peer sent; strict: exactly the fields of :meth:`to_json`.

        The host is returned in canonical form (``2001:DB8::1`` becomes ``2001:db8::1``).

        Raises:
            RemoteProtocolError: code ``e.p.msg.session.candidates``, saying what is wrong.
        """
        if not isinstance(obj, dict):
            raise _bad(f"a candidate must be a JSON object, got {type(obj).__name__}")
        missing = [name for name in _FIELDS if name not in obj]
        if missing:
            raise _bad(f"candidate lacks {', '.join(missing)}")
        unknown = sorted(_show(k) for k in obj if k not in _FIELDS)
        if unknown:
            raise _bad(f"candidate has unknown field(s) {', '.join(unknown)}")
        kind = obj["type"]
        if kind not in _TYPES:
            raise _bad(f"candidate type must be 'host' or 'srflx', got {_show(kind)}")
        proto = obj["proto"]
        if proto not in _PROTOCOLS:
            raise _bad(f"candidate proto must be 'tcp', got {_show(proto)}")
        return cls(
            type=CandidateType(kind),
            proto=proto,
            host=_check_ip(obj["host"]),
            port=_check_int(obj["port"], "port", 1, 65535),
            priority=_check_int(obj["priority"], "priority", 1, _MAX_PRIORITY),
        )


def decode_candidates(value: Any) -> tuple[Candidate, ...]:
    """Read a peer's candidate list: at most :data:`MAX_CANDIDATES`, valid IP literals and
    ports, no transport address twice.

    Returns:
        The candidates, highest priority first (ties keep the peer's order).

    Raises:
        RemoteProtocolError: code ``e.p.msg.session.candidates``, naming the bad entry.
    """
    if not isinstance(value, list):
        raise _bad(f"candidates must be a JSON array, got {type(value).__name__}")
    if len(value) > MAX_CANDIDATES:
        raise _bad(f"{len(value)} candidates is more than the limit of {MAX_CANDIDATES}")
    out: list[Candidate] = []
    seen: set[tuple[str, str, int]] = set()
    for index, item in enumerate(value):
        try:
            cand = Candidate.from_json(item)
        except RemoteProtocolError as exc:
            raise _bad(f"candidate {index}: {exc.message}") from None
        key = (cand.proto, cand.host, cand.port)
        if key in seen:
            raise _bad(f"candidate {index}: {cand.proto} {_format(cand.address)} is listed twice")
        seen.add(key)
        out.append(cand)
    out.sort(key=lambda c: -c.priority)
    return tuple(out)


def encode_candidates(cands: Sequence[Candidate]) -> list[dict[str, Any]]:
    """The JSON array for :func:`decode_candidates`.

    Raises:
        LocalProtocolError: the list breaks a rule the peer's :func:`decode_candidates`
            enforces (too many, a duplicate, a bad field); nothing is sent that it rejects.
    """
    out = [c.to_json() for c in cands]
    try:
        decode_candidates(out)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"cannot advertise these candidates: {exc.message}") from None
    return out


def _format(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address_json(address: Address | None) -> dict[str, Any] | None:
    return None if address is None else {"host": address[0], "port": address[1]}


@dataclass(frozen=True, slots=True)
class Gathered:
    """What :func:`gather` found.

    Args:
        candidates: to advertise, highest priority first.
        mapping: the NAT's UDP mapping behaviour (RFC 5780 §4.3 from one local UDP port).
        tcp_mapping: the same for TCP, from the listening port.
        udp_mapped: the UDP port's mapped address as the STUN primary saw it.
        tcp_mapped: the listening port's mapped address as the STUN primary saw it.
        problems: what went wrong, one sentence each (no STUN answer, no OTHER-ADDRESS...).
    """

    candidates: tuple[Candidate, ...]
    mapping: MappingBehavior
    tcp_mapping: MappingBehavior
    udp_mapped: tuple[str, int] | None
    tcp_mapped: tuple[str, int] | None
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON object; mapped addresses are ``{"host", "port"}`` or null."""
        return {
            "candidates": [c.to_json() for c in self.candidates],
            "mapping": self.mapping.value,
            "tcp_mapping": self.tcp_mapping.value,
            "udp_mapped": _address_json(self.udp_mapped),
            "tcp_mapped": _address_json(self.tcp_mapped),
            "problems": list(self.problems),
        }


# -- this host's addresses ----------------------------------------------------------------

# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_GETADDR = 16, 18, 20, 22
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_IFA_F_DADFAILED, _IFA_F_DEPRECATED, _IFA_F_TENTATIVE = 0x08, 0x20, 0x40
_IFF_UP = 0x1
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def _netlink_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in ``data``."""
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            return
        yield kind, data[pos + _NLMSGHDR.size : pos + length]
        pos += _align(length)


def _rtattrs(data: bytes, pos: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while pos + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, pos)
        if length < _RTATTR.size or pos + length > len(data):
            break
        out.setdefault(kind, data[pos + _RTATTR.size : pos + length])
        pos += _align(length)
    return out


def _netlink_dump(request: int, body: bytes) -> list[tuple[int, bytes]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), request, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
        )
        sock.send(header + body)
        out: list[tuple[int, bytes]] = []
        while True:
            for kind, payload in _netlink_messages(sock.recv(1 << 16)):
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    raise OSError(code, f"rtnetlink dump failed: {errno.errorcode.get(code, code)}")
                out.append((kind, payload))


def _interface_addresses() -> list[tuple[int, str]]:
    """(family, address) of every usable address on an interface that is up (rtnetlink)."""
    up: set[int] = set()
    for kind, payload in _netlink_dump(_RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0)):
        if kind == _RTM_NEWLINK and len(payload) >= _IFINFOMSG.size:
            _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
            if flags & _IFF_UP:
                up.add(index)
    out: list[tuple[int, str]] = []
    for kind, payload in _netlink_dump(_RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0)):
        if kind != _RTM_NEWADDR or len(payload) < _IFADDRMSG.size:
            continue
        family, _, flags, _, index = _IFADDRMSG.unpack_from(payload)
        attrs = _rtattrs(payload, _IFADDRMSG.size)
        if _IFA_FLAGS in attrs and len(attrs[_IFA_FLAGS]) >= 4:
            flags = struct.unpack_from("=I", attrs[_IFA_FLAGS])[0]
        raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
        if (
            index not in up
            or raw is None
            or flags & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED | _IFA_F_DEPRECATED)
        ):
            continue
        if family == socket.AF_INET and len(raw) == 4:
            out.append((family, socket.inet_ntop(family, raw)))
        elif family == socket.AF_INET6 and len(raw) == 16:
            out.append((family, socket.inet_ntop(family, raw)))
    return out


def _routed_address() -> list[tuple[int, str]]:
    """Where rtnetlink is missing: the source address of the IPv4 default route, if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1; a UDP connect sends nothing
        except OSError:
            return []
        return [(socket.AF_INET, sock.getsockname()[0])]


def host_addresses(*, include_loopback: bool = False) -> list[str]:
    """This host's addresses on interfaces that are up: IPv4 first, then IPv6.

    Link-local, tentative and deprecated addresses are left out (a peer cannot dial them),
    and loopback ones unless ``include_loopback`` (then they come last).  Read with rtnetlink
    on Linux; elsewhere only the IPv4 default route's source address.

    Raises:
        OSError: the kernel refused the query.
    """
    found = _interface_addresses() if hasattr(socket, "AF_NETLINK") else _routed_address()
    ips = [ipaddress.ip_address(address) for _, address in found]
    usable = [ip for ip in ips if not (ip.is_link_local or ip.is_unspecified or ip.is_multicast)]
    ordered = sorted(usable, key=lambda ip: (ip.is_loopback, ip.version))  # stable
    out: list[str] = []
    for ip in ordered:
        if (include_loopback or not ip.is_loopback) and str(ip) not in out:
            out.append(str(ip))
    return out


def reusable_tcp_socket(port: int = 0, host: str = "0.0.0.0") -> socket.socket:
    """A non-blocking TCP socket bound to (``host``, ``port``) with ``SO_REUSEADDR`` and
    ``SO_REUSEPORT``.

    Every socket on a port must be made this way: the listener, the STUN connections of
    :func:`gather` and the attempts of :func:`dial` then share it, each with its own 4-tuple.
    An IPv6 ``host`` gives an IPv6-only socket, so ``::`` and ``0.0.0.0`` can both be bound.

    Raises:
        OSError: the port is taken by a socket without these options, or ``host`` is not
            an address of this host.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _any_address(host: str) -> str:
    return "::" if ":" in host else "0.0.0.0"


def _abort(sock: socket.socket) -> None:
    """Close with a RST: no TIME_WAIT holds the (listening port, STUN server) 4-tuple, so a
    later :func:`gather` from the same port can connect again at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- gathering ----------------------------------------------------------------------------


class _StunFailed(Exception):
    """A STUN step failed; ``args[0]`` is the sentence for :attr:`Gathered.problems`."""


def _stun_problem(proto: str, server: Address, exc: BaseException, timeout: float) -> _StunFailed:
    where = f"STUN over {proto} to {_format(server)}"
    if isinstance(exc, TimeoutError) or getattr(exc, "code", None) == "e.p.stun.timeout":
        return _StunFailed(f"{where}: no answer in {timeout:.1f} s")
    if isinstance(exc, DidSessionError):
        return _StunFailed(f"{where}: {exc.message}")
    if isinstance(exc, OSError):  # asyncio's strerror is "Connect call failed (...)"
        return _StunFailed(f"{where}: {os.strerror(exc.errno) if exc.errno else exc}")
    return _StunFailed(f"{where}: {exc}")


async def _udp_binding(server: Address, local: Address, timeout: float) -> BindingResult:
    try:
        return await stun_binding(
            server[0], server[1], timeout=timeout, rto=min(0.25, timeout / 4), local_addr=local
        )
    except (DidSessionError, OSError) as exc:
        raise _stun_problem("UDP", server, exc, timeout) from None


async def _tcp_binding(server: Address, local_port: int, timeout: float) -> BindingResult:
    """One Binding transaction over TCP from ``local_port``, shared with the listener.

    (:func:`~didsession.stun_asyncio.stun_binding` binds without ``SO_REUSEPORT``, so it
    cannot use a port a listener holds.)
    """
    loop = asyncio.get_running_loop()
    try:
        sock = reusable_tcp_socket(local_port, _any_address(server[0]))
    except OSError as exc:
        raise _StunFailed(
            f"cannot use local TCP port {local_port} for STUN: {exc.strerror or exc}"
        ) from None
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, server)
            txid, request = binding_request()
            await loop.sock_sendall(sock, request)
            stream = StunStreamReader()
            while (message := stream.next_message()) is None:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    raise DidSessionError("the server closed the connection without answering")
                stream.feed(data)
            result = parse_binding_response(message, txid)  # our connection: first is ours
            return result
    except (TimeoutError, DidSessionError, OSError) as exc:
        raise _stun_problem("TCP", server, exc, timeout) from None
    finally:
        _abort(sock)


def _fold(behavior: StunMapping) -> MappingBehavior:
    if behavior is StunMapping.ENDPOINT_INDEPENDENT:
        return MappingBehavior.ENDPOINT_INDEPENDENT
    return MappingBehavior.ADDRESS_DEPENDENT


def _no_other(proto: str, server: Address) -> str:
    return (
        f"STUN over {proto} to {_format(server)}: no OTHER-ADDRESS in the answer, so the NAT's "
        "mapping behaviour is unknown (the mediator needs --stun-alternate)"
    )


async def _udp_mapping(
    server: Address, timeout: float, problems: list[str]
) -> tuple[MappingBehavior, Address | None]:
    """RFC 5780 §4.3 tests I-III from one local UDP port."""
    wildcard = _any_address(server[0])
    try:
        first = await _udp_binding(server, (wildcard, 0), timeout)
    except _StunFailed as exc:
        problems.append(str(exc))
        return MappingBehavior.UNKNOWN, None
    if first.other_address is None or first.local is None:
        problems.append(_no_other("UDP", server))
        return MappingBehavior.UNKNOWN, first.mapped
    local = (wildcard, first.local[1])
    test2, test3 = mapping_test_targets(server, first.other_address)
    try:
        second = await _udp_binding(test2, local, timeout)
        third = None
        if _canonical(second.mapped) != _canonical(first.mapped):
            third = (await _udp_binding(test3, local, timeout)).mapped
    except _StunFailed as exc:
        problems.append(str(exc))
        return MappingBehavior.UNKNOWN, first.mapped
    return _fold(classify_mapping(first.mapped, second.mapped, third)), first.mapped


async def _tcp_mapping(
    server: Address, port: int, timeout: float, problems: list[str]
) -> tuple[MappingBehavior, Address | None]:
    """The listening port's mapping seen by the primary, then by OTHER-ADDRESS (another IP
    and port: a different mapping there means at least address-dependent)."""
    try:
        first = await _tcp_binding(server, port, timeout)
    except _StunFailed as exc:
        problems.append(str(exc))
        return MappingBehavior.UNKNOWN, None
    if first.other_address is None:
        problems.append(_no_other("TCP", server))
        return MappingBehavior.UNKNOWN, first.mapped
    try:
        second = await _tcp_binding(first.other_address, port, timeout)
    except _StunFailed as exc:
        problems.append(str(exc))
        return MappingBehavior.UNKNOWN, first.mapped
    if _canonical(second.mapped) == _canonical(first.mapped):
        return MappingBehavior.ENDPOINT_INDEPENDENT, first.mapped
    return MappingBehavior.ADDRESS_DEPENDENT, first.mapped


def _canonical(address: Address) -> Address:
    return str(ipaddress.ip_address(address[0])), address[1]


async def _resolve(stun: tuple[str, int], timeout: float, problems: list[str]) -> Address | None:
    host, port = stun
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        problems.append(f"cannot resolve STUN server {host!r}: {reason}")
        return None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as our listener
    address = infos[0][4]
    return str(address[0]), int(address[1])


async def gather(
    *,
    tcp_port: int,
    stun: tuple[str, int] | None,
    include_loopback: bool = False,
    timeout: float = 2.0,
) -> Gathered:
    """Find this party's candidates for the TCP listener on ``tcp_port``, and the NAT's
    mapping behaviour.

    * host candidates: each :func:`host_addresses` address with ``tcp_port``; listen on
      ``0.0.0.0`` (and ``::`` for IPv6 ones) with :func:`reusable_tcp_socket`.
    * srflx candidate: the mapping STUN over TCP *from* ``tcp_port`` to ``stun`` shows
      (left out if it is a host candidate: no NAT).
    * ``mapping``: RFC 5780 §4.3 over UDP from one local port to ``stun`` and its
      OTHER-ADDRESS; ``tcp_mapping``: STUN over TCP from ``tcp_port`` to OTHER-ADDRESS too.

    The UDP and TCP tests run side by side; each STUN transaction waits at most ``timeout``.
    The STUN connections end with a RST (no TIME_WAIT on the port), so the NAT may forget
    their mapping; Linux NATs and most home routers keep the port for the next flow anyway.
    Two concurrent gathers from one port to one server collide on the 4-tuple: gather once
    per listening port and share the result.

    Args:
        tcp_port: the listening port (1..65535); bound with :func:`reusable_tcp_socket`.
        stun: the mediator's STUN server (host name or IP, port); None: host candidates only.
        include_loopback: advertise loopback addresses too (tests, one-machine setups).
        timeout: seconds per STUN transaction.

    Returns:
        A :class:`Gathered`; what failed is in its ``problems``, never raised.

    Raises:
        LocalProtocolError: ``tcp_port`` is not 1..65535.
    """
    if isinstance(tcp_port, bool) or not 0 < tcp_port < 65536:
        raise LocalProtocolError(f"gather needs the listening port (1..65535), got {tcp_port!r}")
    problems: list[str] = []
    try:
        addresses = host_addresses(include_loopback=include_loopback)
    except OSError as exc:
        addresses = []
        problems.append(f"cannot list this host's addresses: {exc.strerror or exc}")
    mapping = tcp_mapping = MappingBehavior.UNKNOWN
    udp_mapped = tcp_mapped = None
    server = None if stun is None else await _resolve(stun, timeout, problems)
    if server is not None:
        udp_problems: list[str] = []
        tcp_problems: list[str] = []
        (mapping, udp_mapped), (tcp_mapping, tcp_mapped) = await asyncio.gather(
            _udp_mapping(server, timeout, udp_problems),
            _tcp_mapping(server, tcp_port, timeout, tcp_problems),
        )
        problems += udp_problems + tcp_problems
    srflx: list[Candidate] = []
    if tcp_mapped is not None:
        mapped = _canonical(tcp_mapped)
        if not (mapped[0] in addresses and mapped[1] == tcp_port):
            srflx.append(
                Candidate(
                    CandidateType.SRFLX,
                    "tcp",
                    mapped[0],
                    mapped[1],
                    _priority(CandidateType.SRFLX, 65535),
                )
            )
    room = MAX_CANDIDATES - len(srflx)
    if len(addresses) > room:
        problems.append(
            f"{len(addresses)} host addresses; advertising the first {room} "
            f"(at most {MAX_CANDIDATES} candidates)"
        )
    hosts = [
        Candidate(
            CandidateType.HOST, "tcp", address, tcp_port, _priority(CandidateType.HOST, 65535 - i)
        )
        for i, address in enumerate(addresses[:room])
    ]
    candidates = sorted(hosts + srflx, key=lambda c: -c.priority)
    return Gathered(
        candidates=tuple(candidates),
        mapping=mapping,
        tcp_mapping=tcp_mapping,
        udp_mapped=udp_mapped,
        tcp_mapped=tcp_mapped,
        problems=tuple(problems),
    )


# -- dialling -----------------------------------------------------------------------------


def _tcp_state(sock: socket.socket) -> int | None:
    """The kernel's TCP state (``tcpi_state``, the first byte of ``TCP_INFO``), if known."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except (AttributeError, OSError):
        return None


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


async def _connect(sock: socket.socket, address: Address, deadline: float) -> bool:
    """Connect ``sock``: True when connected, False when the attempt should start afresh.

    An attempt still in SYN-SENT after :data:`_ATTEMPT_TIMEOUT` got nothing back and is
    abandoned.  One that moved on (SYN-RECEIVED: the peer's SYN came in, a simultaneous open
    is under way) waits until ``deadline``: starting afresh would answer the peer's SYN-ACK
    with a RST, and on a path whose round trip exceeds the time between the two parties'
    first SYNs that would happen on every attempt.

    Raises:
        OSError: the connection failed (refused, unreachable...).
    """
    loop = asyncio.get_running_loop()
    connecting = asyncio.ensure_future(loop.sock_connect(sock, address))
    # Its outcome may land after we gave up on it (cancelled while uvloop's connect failed):
    # mark it retrieved, or asyncio prints "exception was never retrieved" on stderr.
    connecting.add_done_callback(_retrieve)
    try:
        limit = min(loop.time() + _ATTEMPT_TIMEOUT, deadline)
        while True:
            done, _ = await asyncio.wait({connecting}, timeout=max(0.0, limit - loop.time()))
            if done:
                connecting.result()
                return True
            if limit >= deadline or _tcp_state(sock) in (None, _TCP_SYN_SENT):
                return False
            limit = deadline
    finally:
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting


async def _attempts(
    cand: Candidate,
    local_port: int | None,
    deadline: float,
    interval: float,
    delay: float,
    results: asyncio.Queue[tuple[socket.socket, Candidate] | None],
) -> None:
    """Dial ``cand`` until it connects, fails for good, or ``deadline``; put the socket,
    then None, on ``results``."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(delay)
        while loop.time() < deadline:
            started = loop.time()
            try:
                sock = (
                    reusable_tcp_socket(local_port, _any_address(cand.host))
                    if local_port is not None
                    else _plain_socket(cand.host)
                )
            except OSError as exc:
                if exc.errno not in _RETRY_ERRNOS:
                    return
            else:
                try:
                    connected = await _connect(sock, cand.address, deadline)
                except OSError as exc:
                    sock.close()
                    if exc.errno not in _RETRY_ERRNOS:
                        return
                except BaseException:
                    sock.close()
                    raise
                else:
                    if connected:
                        results.put_nowait((sock, cand))  # no await before: never lost
                        return
                    sock.close()
                    continue  # no answer: a fresh SYN at once
            await asyncio.sleep(max(0.0, min(started + interval, deadline) - loop.time()))
    finally:
        results.put_nowait(None)


def _plain_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def dial(
    local_port: int | None,
    candidates: Sequence[Candidate],
    *,
    timeout: float,
    interval: float = 0.2,
) -> AsyncGenerator[tuple[socket.socket, Candidate], None]:
    """Connect to a peer's candidates from ``local_port``; yield each connection as it is made.

    Every TCP candidate is dialled, highest priority first, each started ``0.05`` s after
    the one before (RFC 8445 §14.2 pacing).  A candidate that refuses, is unreachable or
    whose 4-tuple is still busy is dialled again ``interval`` after its last attempt began;
    one that does not answer at all is given 1 s (a whole SYN RTO) and dialled afresh; all
    until ``timeout`` seconds after the call.  When both parties dial each other's srflx
    candidates like this from their listening ports, the SYNs cross as a TCP simultaneous
    open and both see a connection.

    Args:
        local_port: the port to dial from (the listening port, whose NAT mapping the peer
            learned); each attempt binds it with :func:`reusable_tcp_socket`.  None: any port.
        candidates: the peer's candidates (non-TCP ones are skipped).
        timeout: seconds until the last attempt is given up.
        interval: seconds between attempts on one candidate after a refusal.

    Yields:
        (connected non-blocking socket, its candidate): the socket is the caller's to close.
        The generator ends when every candidate has connected or failed, or at ``timeout``.
        Close it (``contextlib.aclosing``) to stop early: every pending attempt is cancelled
        and closed, and so is any connection made but not yet yielded.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    ordered = sorted((c for c in candidates if c.proto == "tcp"), key=lambda c: -c.priority)
    results: asyncio.Queue[tuple[socket.socket, Candidate] | None] = asyncio.Queue()
    stagger = min(_STAGGER, interval)
    tasks = [
        loop.create_task(_attempts(cand, local_port, deadline, interval, i * stagger, results))
        for i, cand in enumerate(ordered)
    ]
    try:
        running = len(tasks)
        while running:
            item = await results.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while not results.empty():
            item = results.get_nowait()
            if item is not None:
                item[0].close()
