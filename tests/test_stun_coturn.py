"""Interop with coturn, a STUN implementation we did not write (Debian package ``coturn``).

1. coturn's ``turnutils_stunclient`` asks our asyncio STUN server for its mapped address.
2. Our client asks coturn's ``turnserver`` (STUN-only, on 127.0.0.1 and 127.0.0.2) over UDP
   and TCP, and runs the RFC 5780 mapping tests against it.

Loopback addresses only; every process is killed by a finalizer; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ports import free_port_pair

from didsession.stun import (
    Address,
    BindingResult,
    MappingBehavior,
    StunReply,
    StunServer,
    StunServerConfig,
    XorMappedAddress,
    binding_request,
    classify_mapping,
    mapping_test_targets,
    parse_binding_response,
    pull_message,
)
from didsession.stun_asyncio import serve_stun, stun_binding

TURNSERVER = shutil.which("turnserver")
STUNCLIENT = shutil.which("turnutils_stunclient")

pytestmark = pytest.mark.skipif(
    TURNSERVER is None or STUNCLIENT is None,
    reason="coturn is not installed (apt-get install -y coturn provides turnserver and "
    "turnutils_stunclient)",
)

PRIMARY_IP, ALTERNATE_IP = "127.0.0.1", "127.0.0.2"


def run(coro: Any, timeout: float = 15.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=3)


# --------------------------------------------------------------------------------------------
# 1. turnutils_stunclient -> our server
# --------------------------------------------------------------------------------------------


class RecordingServer(StunServer):
    """Our server core, remembering every source it answered."""

    def __init__(self, config: StunServerConfig | None = None) -> None:
        super().__init__(config)
        self.sources: list[Address] = []

    def respond(self, data: bytes, source: Address, now: float, **kwargs: Any) -> StunReply | None:
        reply = super().respond(data, source, now, **kwargs)
        if reply is not None:
            self.sources.append(source)
        return reply


REFLEXIVE = re.compile(r"UDP reflexive addr: (\d+\.\d+\.\d+\.\d+):(\d+)")


def test_turnutils_stunclient_against_our_server() -> None:
    assert STUNCLIENT is not None
    core = RecordingServer(StunServerConfig(rate_limit=None))

    async def main() -> tuple[str, int]:
        async with await serve_stun(PRIMARY_IP, 0, core) as service:
            port = service.udp_address[1]
            process = await asyncio.create_subprocess_exec(
                STUNCLIENT,
                "-p",
                str(port),
                PRIMARY_IP,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(process.communicate(), 10)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            return out.decode(errors="replace"), process.returncode or 0

    output, returncode = run(main())
    print(output)
    assert returncode == 0, output
    found = {(ip, int(port)) for ip, port in REFLEXIVE.findall(output)}
    assert found, f"no reflexive address in turnutils_stunclient output:\n{output}"
    # It printed exactly the address our server saw the request come from.
    assert found == set(core.sources) and len(core.sources) == 1
    assert core.stats.responses == 1 and core.stats.dropped == 0 and core.stats.errors == 0


# --------------------------------------------------------------------------------------------
# 2. our client -> coturn turnserver (STUN only)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coturn:
    port: int
    log: Path

    @property
    def primary(self) -> Address:
        return PRIMARY_IP, self.port

    @property
    def alternate(self) -> Address:
        # coturn's RFC 5780 alternate: the second listening IP, listening port + 1.
        return ALTERNATE_IP, self.port + 1


async def wait_ready(address: Address, deadline: float) -> None:
    while True:
        try:
            await stun_binding(*address, timeout=0.3, retries=1, rto=0.1)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    assert TURNSERVER is not None
    last_log = ""
    for _attempt in range(3):
        port = free_port_pair((PRIMARY_IP, ALTERNATE_IP))
        log = tmp_path / f"turnserver-{port}.log"
        command = [
            TURNSERVER,
            "-n",  # no configuration file
            "--stun-only",
            "--listening-ip",
            PRIMARY_IP,
            "--listening-ip",
            ALTERNATE_IP,
            "--listening-port",
            str(port),
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
            "--simple-log",
            "--pidfile",
            str(tmp_path / "turnserver.pid"),
            "--userdb",
            str(tmp_path / "turndb"),
        ]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            run(wait_ready((PRIMARY_IP, port), time.monotonic() + 8), timeout=10)
        except Exception:
            stop(process)
            last_log = log.read_text(errors="replace")
            continue
        try:
            yield Coturn(port=port, log=log)
        finally:
            stop(process)
            print(log.read_text(errors="replace")[-3000:])
        return
    pytest.fail(f"turnserver did not start; its log:\n{last_log[-3000:]}")


def test_our_client_against_coturn_udp_and_tcp(coturn: Coturn) -> None:
    async def main() -> list[BindingResult]:
        return [
            await stun_binding(*coturn.primary, timeout=3, transport="udp"),
            await stun_binding(*coturn.primary, timeout=3, transport="tcp"),
            await stun_binding(*coturn.alternate, timeout=3, transport="udp"),
        ]

    udp, tcp, udp_alternate = run(main())
    for result in (udp, tcp, udp_alternate):
        print(result)
        assert result.local is not None
        assert result.mapped == result.local  # no NAT on loopback: we see our own socket
        assert result.software is not None and "coturn" in result.software.lower()
    # coturn runs RFC 5780 with two listening IPs; we read its RESPONSE-ORIGIN / OTHER-ADDRESS.
    assert udp.response_origin == coturn.primary
    assert udp.other_address == coturn.alternate
    assert udp_alternate.response_origin == coturn.alternate


def test_rfc5780_mapping_tests_against_coturn(coturn: Coturn) -> None:
    async def main() -> tuple[list[Address], MappingBehavior]:
        first = await stun_binding(*coturn.primary, timeout=3, local_addr=(PRIMARY_IP, 0))
        assert first.local is not None and first.other_address is not None
        mapped = [first.mapped]
        for target in mapping_test_targets(coturn.primary, first.other_address):
            result = await stun_binding(*target, timeout=3, local_addr=first.local)
            assert result.local == first.local
            mapped.append(result.mapped)
        return mapped, classify_mapping(*mapped)

    mapped, behavior = run(main())
    print(mapped, behavior)
    assert len(set(mapped)) == 1
    assert behavior == MappingBehavior.ENDPOINT_INDEPENDENT


def test_rfc3489_request_to_coturn(coturn: Coturn) -> None:
    """A classic RFC 3489 request (16-byte id, no magic cookie): coturn answers in kind and our
    parser reads its MAPPED-ADDRESS."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((PRIMARY_IP, 0))
    client.settimeout(1.0)
    try:
        txid, request = binding_request(classic=True)
        data = b""
        for _ in range(3):  # UDP: retransmit a few times, bounded
            client.sendto(request, coturn.primary)
            try:
                data = client.recv(2048)
                break
            except TimeoutError:
                continue
        assert data, "coturn did not answer the RFC 3489 request"
        msg = pull_message(data)
        print(msg)
        assert msg.classic and msg.transaction_id == txid
        assert msg.find(XorMappedAddress) is None
        assert parse_binding_response(data, txid).mapped == client.getsockname()
    finally:
        client.close()
