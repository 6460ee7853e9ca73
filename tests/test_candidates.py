"""Direct-path candidates (didsession/candidates.py): the codec in memory, then gathering and
dialling for real on loopback against the real mediator process.  The NAT cases are in
tests/test_netlab_candidates.py."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mediator_proc import MediatorProcess, free_port, mediator_process

from didsession.candidates import (
    CODE,
    MAX_CANDIDATES,
    Candidate,
    CandidateType,
    Gathered,
    MappingBehavior,
    decode_candidates,
    dial,
    encode_candidates,
    gather,
    host_addresses,
    reusable_tcp_socket,
)
from didsession.cli import main as cli_main
from didsession.errors import LocalProtocolError, RemoteProtocolError
from didsession.stun import StunServer, StunServerConfig
from didsession.stun_asyncio import serve_stun

HOST = CandidateType.HOST
SRFLX = CandidateType.SRFLX
# RFC 8445 §5.1.2.1 with type preference 126 / 100, local preference 65535, component 1.
HOST_PRIORITY = (126 << 24) + (65535 << 8) + 255
SRFLX_PRIORITY = (100 << 24) + (65535 << 8) + 255


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- codec ---------------------------------------------------------------------------------

GOLDEN = (
    '[{"type": "host", "proto": "tcp", "host": "192.168.1.10", "port": 40000, '
    '"priority": 2130706431}, {"type": "srflx", "proto": "tcp", "host": "203.0.113.101", '
    '"port": 40000, "priority": 1694498815}]'
)


def test_golden_json() -> None:
    cands = [
        Candidate(HOST, "tcp", "192.168.1.10", 40000, HOST_PRIORITY),
        Candidate(SRFLX, "tcp", "203.0.113.101", 40000, SRFLX_PRIORITY),
    ]
    assert HOST_PRIORITY == 2130706431 and SRFLX_PRIORITY == 1694498815
    assert json.dumps(encode_candidates(cands)) == GOLDEN
    assert decode_candidates(json.loads(GOLDEN)) == tuple(cands)


def test_round_trip_sorts_by_priority_and_keeps_ties_in_order() -> None:
    cands = [
        Candidate(SRFLX, "tcp", "203.0.113.101", 40000, SRFLX_PRIORITY),
        Candidate(HOST, "tcp", "2001:db8::7", 40000, HOST_PRIORITY - 512),
        Candidate(HOST, "tcp", "192.168.1.10", 40000, HOST_PRIORITY),
        Candidate(HOST, "tcp", "10.0.0.1", 40000, HOST_PRIORITY - 512),
    ]
    decoded = decode_candidates(json.loads(json.dumps(encode_candidates(cands))))
    assert decoded == (cands[2], cands[1], cands[3], cands[0])
    assert decode_candidates([]) == ()
    for cand in cands:
        assert Candidate.from_json(cand.to_json()) == cand
        assert cand.address == (cand.host, cand.port)


def test_hosts_come_back_canonical() -> None:
    obj = {"type": "host", "proto": "tcp", "host": "2001:DB8:0::1", "port": 1, "priority": 1}
    assert Candidate.from_json(obj).host == "2001:db8::1"
    # ... so one address spelled two ways is a duplicate.
    other = dict(obj, host="2001:db8::1", type="srflx")
    with pytest.raises(
        RemoteProtocolError, match=r"candidate 1: tcp \[2001:db8::1\]:1 is listed twice"
    ):
        decode_candidates([obj, other])


VALID: dict[str, Any] = {
    "type": "host",
    "proto": "tcp",
    "host": "192.168.1.10",
    "port": 40000,
    "priority": 2130706431,
}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "must be a JSON object, got list"),
        (None, "must be a JSON object, got NoneType"),
        ({k: v for k, v in VALID.items() if k != "port"}, "lacks port"),
        ({}, "lacks type, proto, host, port, priority"),
        (dict(VALID, extra=1), "unknown field(s) 'extra'"),
        (dict(VALID, type="relay"), "type must be 'host' or 'srflx', got 'relay'"),
        (dict(VALID, type=["host"]), "type must be 'host' or 'srflx'"),
        (dict(VALID, type="HOST"), "type must be 'host' or 'srflx'"),
        (dict(VALID, proto="udp"), "proto must be 'tcp', got 'udp'"),
        (dict(VALID, proto=None), "proto must be 'tcp', got None"),
        (dict(VALID, host="mediator.example"), "must be an IP address (no host names)"),
        (dict(VALID, host=""), "must be an IP address (no host names)"),
        (dict(VALID, host="192.168.1.010"), "must be an IP address"),
        (dict(VALID, host=3232235786), "must be an IP address string, got 3232235786"),
        (dict(VALID, host="fe80::1%eth0"), "must not carry an IPv6 zone"),
        (dict(VALID, host="fe80::1"), "fe80::1 is not a unicast address that can be dialled"),
        (dict(VALID, host="169.254.1.1"), "not a unicast address"),
        (dict(VALID, host="0.0.0.0"), "0.0.0.0 is not a unicast address"),
        (dict(VALID, host="::"), ":: is not a unicast address"),
        (dict(VALID, host="::ffff:0.0.0.0"), "::ffff:0:0 is not a unicast address"),
        (dict(VALID, host="0.1.2.3"), "0.1.2.3 is not a unicast address"),
        (dict(VALID, host="::ffff:224.0.0.1"), "is not a unicast address"),
        (dict(VALID, host="::ffff:255.255.255.255"), "broadcast"),
        (dict(VALID, host="224.0.0.1"), "not a unicast address"),
        (dict(VALID, host="255.255.255.255"), "broadcast"),
        (dict(VALID, host="x" * 1000), "got 'xxxxxxxx"),
        (dict(VALID, port=0), "port must be an integer 1..65535, got 0"),
        (dict(VALID, port=65536), "port must be an integer 1..65535, got 65536"),
        (dict(VALID, port=-1), "port must be an integer 1..65535"),
        (dict(VALID, port=True), "port must be an integer 1..65535, got True"),
        (dict(VALID, port=80.0), "port must be an integer 1..65535, got 80.0"),
        (dict(VALID, port="80"), "port must be an integer 1..65535, got '80'"),
        (dict(VALID, priority=0), "priority must be an integer 1..2147483647, got 0"),
        (dict(VALID, priority=2**31), "priority must be an integer 1..2147483647"),
        (dict(VALID, priority=10**400), "priority must be an integer"),
        (dict(VALID, port=10**5000), "got an integer of 16610 bits"),
    ],
)
def test_malformed_candidate(obj: Any, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Candidate.from_json(obj)
    assert info.value.code == CODE == "e.p.msg.session.candidates"
    assert message in info.value.message
    assert len(info.value.message) < 200
    # In a list, the message names the entry.
    with pytest.raises(RemoteProtocolError, match=r"^candidate 1: ") as info:
        decode_candidates([VALID, obj])
    assert info.value.code == CODE


def test_malformed_list() -> None:
    def port(p: int) -> dict[str, Any]:
        return dict(VALID, port=p)

    cases: list[tuple[Any, str]] = [
        ({"candidates": []}, "candidates must be a JSON array, got dict"),
        ("[]", "candidates must be a JSON array, got str"),
        (None, "candidates must be a JSON array, got NoneType"),
        ([port(p) for p in range(1, 18)], "17 candidates is more than the limit of 16"),
        (
            [VALID, dict(VALID, type="srflx", priority=5)],
            "candidate 1: tcp 192.168.1.10:40000 is listed twice",
        ),
    ]
    for value, message in cases:
        with pytest.raises(RemoteProtocolError) as info:
            decode_candidates(value)
        assert info.value.code == CODE
        assert message in info.value.message, (value, info.value.message)
    assert len(decode_candidates([port(p) for p in range(1, MAX_CANDIDATES + 1)])) == 16


def test_encode_refuses_what_a_peer_would_reject() -> None:
    good = Candidate(HOST, "tcp", "192.168.1.10", 40000, HOST_PRIORITY)
    with pytest.raises(LocalProtocolError, match="listed twice"):
        encode_candidates([good, good])
    many = [Candidate(HOST, "tcp", "10.0.0.1", p, 1) for p in range(1, 18)]
    with pytest.raises(LocalProtocolError, match="more than the limit"):
        encode_candidates(many)
    with pytest.raises(LocalProtocolError, match="no host names"):
        encode_candidates([Candidate(HOST, "tcp", "localhost", 1, 1)])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=30,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["host", "srflx", "tcp", "udp", "::1", "127.0.0.1", "fe80::1%1", "1.2.3.4"]),
    st.integers(min_value=-2, max_value=2**32),
    st.ip_addresses().map(str),
)
near_candidates = st.fixed_dictionaries(
    {},
    optional={name: field_values for name in (*VALID, "extra")},
)


def _check_decoded(value: Any) -> None:
    try:
        out = decode_candidates(value)
    except RemoteProtocolError as exc:
        assert exc.code == CODE and exc.message
        return
    assert isinstance(out, tuple) and len(out) <= MAX_CANDIDATES
    assert [c.priority for c in out] == sorted((c.priority for c in out), reverse=True)
    assert len({(c.proto, c.host, c.port) for c in out}) == len(out)
    assert decode_candidates(encode_candidates(out)) == out


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fuzz_any_json_value(value: Any) -> None:
    _check_decoded(value)
    try:
        Candidate.from_json(value)
    except RemoteProtocolError as exc:
        assert exc.code == CODE


@settings(max_examples=200, deadline=None)
@given(st.lists(near_candidates | st.just(VALID) | json_values, max_size=18))
def test_fuzz_near_valid_lists(value: list[Any]) -> None:
    _check_decoded(value)
    _check_decoded(json.loads(json.dumps(value)))


def _mapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An IPv4-mapped IPv6 address (judged as the IPv4 address it maps, which Python 3.11's
    is_global does not look through)."""
    return isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.builds(
            Candidate,
            type=st.sampled_from(CandidateType),
            proto=st.just("tcp"),
            host=st.ip_addresses()
            .filter(lambda ip: ip.is_global and not ip.is_multicast and not _mapped(ip))
            .map(str),
            port=st.integers(1, 65535),
            priority=st.integers(1, 2**31 - 1),
        ),
        max_size=MAX_CANDIDATES,
        unique_by=lambda c: (c.host, c.port),
    )
)
def test_fuzz_round_trip(cands: list[Candidate]) -> None:
    wire = json.loads(json.dumps(encode_candidates(cands)))
    assert decode_candidates(wire) == tuple(sorted(cands, key=lambda c: -c.priority))


def test_gathered_json() -> None:
    found = Gathered(
        candidates=(Candidate(SRFLX, "tcp", "203.0.113.101", 40000, SRFLX_PRIORITY),),
        mapping=MappingBehavior.ENDPOINT_INDEPENDENT,
        tcp_mapping=MappingBehavior.UNKNOWN,
        udp_mapped=("203.0.113.101", 51000),
        tcp_mapped=None,
        problems=("STUN over TCP to 203.0.113.10:3478: no answer in 2.0 s",),
    )
    assert json.dumps(found.to_json()) == (
        '{"candidates": [{"type": "srflx", "proto": "tcp", "host": "203.0.113.101", '
        '"port": 40000, "priority": 1694498815}], "mapping": "endpoint-independent", '
        '"tcp_mapping": "unknown", "udp_mapped": {"host": "203.0.113.101", "port": 51000}, '
        '"tcp_mapped": null, "problems": ["STUN over TCP to 203.0.113.10:3478: no answer in 2.0 s"]}'
    )


# -- this host ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) is not installed")
def test_host_addresses_match_ip_addr() -> None:
    shown = subprocess.run(
        ["ip", "-o", "addr", "show", "up"], capture_output=True, text=True, check=True
    ).stdout
    expected: list[str] = []
    for line in shown.splitlines():
        fields = line.split()
        family, address = fields[2], fields[3].split("/")[0]
        flags = fields[4:]
        if "link" in flags or "tentative" in flags or "deprecated" in flags:
            continue
        expected.append(address if family == "inet" else str(ipaddress_of(address)))
    ours = host_addresses(include_loopback=True)
    assert sorted(ours) == sorted(set(expected))
    assert not [a for a in host_addresses() if a in ("127.0.0.1", "::1")]
    assert "127.0.0.1" in ours
    # IPv4 first, loopback last.
    versions = [(a in ("127.0.0.1", "::1") or a.startswith("127."), ":" in a) for a in ours]
    assert versions == sorted(versions)


def ipaddress_of(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


def test_reusable_sockets_share_a_port() -> None:
    listener = reusable_tcp_socket(0, "127.0.0.1")
    port = listener.getsockname()[1]
    listener.listen()
    try:
        assert not listener.getblocking()
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        other = reusable_tcp_socket(port)  # 0.0.0.0, same port, while listening
        six = reusable_tcp_socket(port, "::1") if socket.has_ipv6 else None
        other.close()
        if six is not None:
            assert six.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            six.close()
    finally:
        listener.close()
    with socket.socket() as plain:  # a socket without the options keeps its port
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(OSError):
            reusable_tcp_socket(plain.getsockname()[1], "127.0.0.1")


def test_gather_without_stun_gives_host_candidates() -> None:
    found: Gathered = run(gather(tcp_port=40000, stun=None, include_loopback=True))
    assert [c.type for c in found.candidates] == [HOST] * len(found.candidates)
    assert [c.host for c in found.candidates] == host_addresses(include_loopback=True)
    assert {c.port for c in found.candidates} == {40000}
    assert found.candidates[0].priority == HOST_PRIORITY
    assert found.mapping is found.tcp_mapping is MappingBehavior.UNKNOWN
    assert found.udp_mapped is found.tcp_mapped is None and found.problems == ()
    assert decode_candidates(encode_candidates(found.candidates)) == found.candidates
    with pytest.raises(LocalProtocolError, match="listening port"):
        run(gather(tcp_port=0, stun=None))


# -- loopback, against the real mediator ---------------------------------------------------


@pytest.fixture(scope="module")
def mediator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediatorProcess]:
    alternate = free_port(udp=True)
    proc = mediator_process(
        tmp_path_factory.mktemp("candidates") / "data",
        extra=["--stun-alternate", f"127.0.0.2:{alternate}", "--no-relay-enabled"],
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


def test_gather_against_the_mediator(mediator: MediatorProcess) -> None:
    async def main() -> list[Gathered]:
        listener = reusable_tcp_socket(0)
        listener.listen()
        port = listener.getsockname()[1]
        try:
            stun = ("127.0.0.1", mediator.stun_port)
            started = time.monotonic()
            first = await gather(tcp_port=port, stun=stun, include_loopback=True)
            assert time.monotonic() - started < 2.0
            # Again at once, from the same port: the STUN connections left no TIME_WAIT.
            second = await gather(tcp_port=port, stun=stun, include_loopback=True)
            by_name = await gather(tcp_port=port, stun=("localhost", mediator.stun_port))
            return [first, second, by_name]
        finally:
            listener.close()

    first, second, by_name = run(main())
    for found in (first, second):
        assert found.problems == (), found.problems
        port = found.candidates[0].port
        # Loopback: no NAT, so the mapping is a host candidate and no srflx is advertised.
        assert found.tcp_mapped == ("127.0.0.1", port)
        assert ("127.0.0.1", port) in [c.address for c in found.candidates]
        assert found.udp_mapped is not None and found.udp_mapped[0] == "127.0.0.1"
        assert found.mapping is MappingBehavior.ENDPOINT_INDEPENDENT
        assert found.tcp_mapping is MappingBehavior.ENDPOINT_INDEPENDENT
        assert all(c.type is HOST and c.port == port for c in found.candidates)
    # Without loopback host candidates, the loopback mapping is a srflx one (lowest priority).
    assert by_name.problems == () and by_name.tcp_mapped == first.tcp_mapped
    assert by_name.candidates[-1] == Candidate(SRFLX, "tcp", "127.0.0.1", port, SRFLX_PRIORITY)


def test_gather_reports_problems_and_still_returns() -> None:
    async def main() -> tuple[Gathered, Gathered, float]:
        dead = free_port(udp=True)
        started = time.monotonic()
        silent = await gather(tcp_port=40000, stun=("127.0.0.1", dead), timeout=0.5)
        elapsed = time.monotonic() - started
        # A STUN server without an alternate address: no OTHER-ADDRESS, behaviour unknown.
        core = StunServer(StunServerConfig())
        async with await serve_stun("127.0.0.1", 0, core) as service:
            plain = await gather(tcp_port=40001, stun=service.udp_address, timeout=2.0)
        return silent, plain, elapsed

    silent, plain, elapsed = run(main())
    assert elapsed < 1.5
    assert silent.mapping is silent.tcp_mapping is MappingBehavior.UNKNOWN
    assert silent.udp_mapped is silent.tcp_mapped is None
    udp, tcp = silent.problems
    assert udp.startswith("STUN over UDP to 127.0.0.1:") and udp.endswith("no answer in 0.5 s")
    assert tcp.startswith("STUN over TCP to 127.0.0.1:") and tcp.endswith(": Connection refused")
    assert plain.tcp_mapped is not None and plain.udp_mapped is not None
    assert plain.mapping is plain.tcp_mapping is MappingBehavior.UNKNOWN
    assert len(plain.problems) == 2 and all("no OTHER-ADDRESS" in p for p in plain.problems)
    unresolvable = run(gather(tcp_port=40002, stun=("no-such-host.invalid", 3478), timeout=1))
    assert unresolvable.problems[0].startswith("cannot resolve STUN server 'no-such-host.invalid'")


async def _exchange(sock: socket.socket, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    got = b""
    while len(got) < len(data):
        chunk = await loop.sock_recv(sock, 1024)
        if not chunk:
            break
        got += chunk
    return got


def _listener(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = reusable_tcp_socket(port, host)
    sock.listen()
    return sock


def test_dial_from_a_listening_port_to_a_listener() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = _listener("0.0.0.0"), _listener()
        port, peer_port = ours.getsockname()[1], theirs.getsockname()[1]
        cands = [
            Candidate(SRFLX, "tcp", "127.0.0.1", free_port(), SRFLX_PRIORITY),  # dead
            Candidate(HOST, "tcp", "127.0.0.1", peer_port, HOST_PRIORITY),
        ]
        try:
            async with contextlib.aclosing(dial(port, cands, timeout=5)) as attempts:
                started = time.monotonic()
                sock, cand = await anext(attempts)
            # aclose stopped the dead candidate's retries at once.
            assert time.monotonic() - started < 1.0
            with sock:
                assert cand == cands[1] and not sock.getblocking()
                assert sock.getsockname()[1] == port  # from the listening port
                accepted, source = await loop.sock_accept(theirs)
                with accepted:
                    assert source == ("127.0.0.1", port)
                    await loop.sock_sendall(accepted, b"pong")
                    assert await _exchange(sock, b"ping") == b"pong"
                    assert await loop.sock_recv(accepted, 4) == b"ping"
        finally:
            ours.close()
            theirs.close()

    before = fds()
    run(main())
    assert fds() == before


def test_dial_yields_every_candidate_in_priority_order() -> None:
    async def main() -> list[Candidate]:
        listeners = [_listener() for _ in range(3)]
        cands = [
            Candidate(HOST, "tcp", "127.0.0.1", s.getsockname()[1], HOST_PRIORITY - i)
            for i, s in enumerate(listeners)
        ][::-1]
        got = []
        try:
            async for sock, cand in dial(None, cands, timeout=3):
                sock.close()
                got.append(cand)
        finally:
            for s in listeners:
                s.close()
        return got

    got = run(main())
    assert [c.priority for c in got] == [HOST_PRIORITY, HOST_PRIORITY - 1, HOST_PRIORITY - 2]


def test_dial_retries_until_the_peer_listens() -> None:
    async def main() -> tuple[float, Candidate]:
        loop = asyncio.get_running_loop()
        port = free_port()
        cand = Candidate(HOST, "tcp", "127.0.0.1", port, HOST_PRIORITY)
        started = loop.time()
        late: list[socket.socket] = []
        loop.call_later(0.5, lambda: late.append(_listener(port=port)))
        try:
            async with contextlib.aclosing(dial(None, [cand], timeout=3, interval=0.1)) as it:
                sock, got = await anext(it)
                sock.close()
        finally:
            for s in late:
                s.close()
        return loop.time() - started, got

    elapsed, got = run(main())
    assert 0.5 <= elapsed < 0.9 and got.port > 0


def test_dial_to_a_dead_port_ends_at_timeout_and_leaks_nothing() -> None:
    async def main() -> tuple[float, int, list[Any]]:
        loop = asyncio.get_running_loop()
        ours = _listener("0.0.0.0")
        cands = [
            Candidate(HOST, "tcp", "127.0.0.1", free_port(), HOST_PRIORITY),
            Candidate(HOST, "tcp", "127.0.0.2", free_port(), HOST_PRIORITY - 1),
        ]
        before = fds()
        started = loop.time()
        got = [c async for c in dial(ours.getsockname()[1], cands, timeout=0.8, interval=0.1)]
        elapsed = loop.time() - started
        after = fds()
        ours.close()
        return elapsed, after - before, got

    elapsed, leaked, got = run(main())
    assert got == [] and leaked == 0
    assert 0.8 <= elapsed < 1.0


def test_dial_closed_early_closes_its_connections() -> None:
    async def main() -> int:
        listeners = [_listener() for _ in range(4)]
        cands = [
            Candidate(HOST, "tcp", "127.0.0.1", s.getsockname()[1], HOST_PRIORITY - i)
            for i, s in enumerate(listeners)
        ]
        before = fds()
        attempts = dial(None, cands, timeout=3)
        sock, _ = await anext(attempts)
        await asyncio.sleep(0.3)  # the others connect meanwhile and wait in its queue
        await attempts.aclose()
        sock.close()
        after = fds()
        for s in listeners:
            s.close()
        return after - before

    assert run(main()) == 0


def test_dial_cancelled_closes_everything() -> None:
    async def main() -> int:
        cands = [Candidate(HOST, "tcp", "127.0.0.1", free_port(), HOST_PRIORITY)]
        before = fds()

        async def consume() -> None:
            async for sock, _ in dial(None, cands, timeout=10):
                sock.close()

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return fds() - before

    assert run(main()) == 0


# -- the command line --------------------------------------------------------------------


def test_cli_candidates(
    mediator: MediatorProcess,
    cli_factory: Callable[[str], Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli = cli_factory("c")
    out = cli("candidates", "--stun", f"127.0.0.1:{mediator.stun_port}", "--json")
    doc = json.loads(out.stdout)
    assert set(doc) == {
        "candidates",
        "mapping",
        "tcp_mapping",
        "udp_mapped",
        "tcp_mapped",
        "problems",
    }
    assert doc["mapping"] == doc["tcp_mapping"] == "endpoint-independent" and doc["problems"] == []
    port = doc["tcp_mapped"]["port"]
    # Loopback is not advertised, so the loopback mapping shows up as a srflx candidate.
    assert {
        "type": "srflx",
        "proto": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "priority": SRFLX_PRIORITY,
    } in doc["candidates"]
    assert decode_candidates(doc["candidates"])

    # The rest in-process: the same main() the console script runs.
    argv = ["candidates", "--stun", f"127.0.0.1:{mediator.stun_port}", "--port", str(port)]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert f"candidates for TCP port {port}" in text
    assert "NAT mapping: UDP endpoint-independent, TCP endpoint-independent" in text
    assert "srflx  tcp 127.0.0.1:" in text

    for bad in ("nope", "1.2.3.4", "1.2.3.4:0", "1.2.3.4:99999"):
        assert cli_main(["candidates", "--stun", bad]) == 1
        assert capsys.readouterr().err.strip() == (
            f"didsession: error: --stun must be HOST:PORT of a STUN server "
            f"(e.g. 203.0.113.10:3478), got {bad!r}"
        )
    assert cli_main(["candidates", "--port", "70000"]) == 1
    assert "--port must be 0..65535" in capsys.readouterr().err
