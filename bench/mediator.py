"""The mediator under load, each comparison side by side in one run (loopback only).

1. STUN Binding responses/s: the mediator's STUN server vs coturn's ``turnserver``
   (STUN-only), driven by the same load client (uvloop, several UDP sockets, a window of
   requests in flight each).
2. Relay: frames/s and bytes/s for small frames through ``/relay``, one session and several.
3. Live clients: WebSockets in live mode held open, and the mediator's RSS per client.
4. Forward -> pickup: forwards accepted (durable) per second, then picked up per second.

Every server and load client is its own process; all stop by themselves (bounded waits)
and are killed at the end.

    python bench/mediator.py [--json] [--seconds S] [--clients N] [--messages M]
                             [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SECTIONS = ("stun", "relay", "live", "forward_pickup")
ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "stun_vs_coturn": 0.7,
    "relay_frames_per_s": 50_000,
    "live_clients": 5_000,
    "rss_per_client_kib": 20.0,
}


# -- processes -----------------------------------------------------------------------------


def free_port(udp: bool = False) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if not udp:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((HOST, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Mediator:
    """A ``didsession-mediator`` process on free loopback ports."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.stun_port = free_port(udp=True)
        self.data = workdir / f"mediator-{self.port}"
        self.log = workdir / f"mediator-{self.port}.log"
        args = [
            sys.executable,
            "-m",
            "mediator",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--stun-port",
            str(self.stun_port),
            "--data-dir",
            str(self.data),
            "--log-level",
            "warning",
            *extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIDSESSION_MEDIATOR_")}
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                args,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mediator exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                if self.get("/healthz")["status"] == "ok":
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("mediator did not start")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if path != "/metrics" else body.decode()

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def coturn(workdir: Path) -> Iterator[int]:
    """coturn's ``turnserver``, STUN only, on a free loopback port."""
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        raise RuntimeError("turnserver (Debian package coturn) is not installed")
    port = free_port(udp=True)
    log = workdir / "turnserver.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                turnserver,
                "-n",
                "--stun-only",
                "--listening-ip",
                HOST,
                "--listening-port",
                str(port),
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--log-file",
                "stdout",
                "--simple-log",
                "--pidfile",
                str(workdir / "turnserver.pid"),
                "--userdb",
                str(workdir / "turndb"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _stun_ping(port):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"turnserver did not start: {log.read_text()[-1000:]}")
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _stun_ping(port: int) -> bool:
    sys.path.insert(0, str(ROOT))
    from didsession.stun import binding_request

    _, req = binding_request()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(req, (HOST, port))
            return bool(s.recv(2048))
        except OSError:
            return False


def load(kind: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run a load client (this file, ``_load KIND``) in its own process; its JSON result."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_load", kind, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load client {kind} failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- load clients (run in their own process, with uvloop) ----------------------------------


async def stun_load(
    port: int, seconds: float, sockets: int = 8, window: int = 64
) -> dict[str, Any]:
    from didsession.stun import binding_request

    loop = asyncio.get_running_loop()
    requests = [binding_request()[1] for _ in range(256)]

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.sent = self.received = self.lost = self.ok = 0
            self.last = 0
            self.i = 0

        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.fill()

        def fill(self) -> None:
            while self.sent - self.received - self.lost < window:
                self.t.sendto(requests[self.i & 255])
                self.i += 1
                self.sent += 1

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.received += 1
            if data[:2] == b"\x01\x01":
                self.ok += 1
            self.fill()

        def tick(self) -> None:  # requests lost (dropped when a queue was full): refill
            if self.received == self.last:
                self.lost = self.sent - self.received
                self.fill()
            self.last = self.received

    clients = []
    for _ in range(sockets):
        _, proto = await loop.create_datagram_endpoint(Client, remote_addr=(HOST, port))
        clients.append(proto)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.02)
            for c in clients:
                c.tick()

    tick = loop.create_task(ticker())
    await asyncio.sleep(0.5)  # warm up
    ok0 = sum(c.ok for c in clients)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    ok = sum(c.ok for c in clients) - ok0
    elapsed = time.perf_counter() - t0
    tick.cancel()
    for c in clients:
        c.t.close()
    return {"responses_per_s": round(ok / elapsed), "responses": ok, "seconds": round(elapsed, 2)}


def _ws_upgrade(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _masked(payload: bytes, opcode: int = 0x1, mask: bytes | None = None) -> bytes:
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    if mask == b"\0\0\0\0":
        return head + mask + payload
    m = int.from_bytes(mask * (n // 4 + 1), "big") >> (8 * ((4 - n % 4) % 4))
    body = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big") if n else b""
    return head + mask + body


class WsClient(asyncio.Protocol):
    """A minimal WebSocket client: upgrade, then count (or collect) server frames."""

    __slots__ = (
        "buf",
        "bytes",
        "collect",
        "frames",
        "messages",
        "ready",
        "t",
        "upgraded",
        "waiter",
    )

    def __init__(self, collect: bool = True) -> None:
        self.buf = bytearray()
        self.frames = 0
        self.bytes = 0
        self.upgraded = False
        self.collect = collect
        self.messages: list[bytes] = []
        self.ready = asyncio.get_running_loop().create_future()
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(bytes(buf[:200]).decode(errors="replace")))
                return
            pos = end + 4
            self.upgraded = True
            self.ready.set_result(None)
        n = len(buf)
        while n - pos >= 2:
            ln = buf[pos + 1] & 0x7F
            head = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if n - pos < head + ln:
                break
            if self.collect:
                self.messages.append(bytes(buf[pos + head : pos + head + ln]))
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(None)
            self.frames += 1
            self.bytes += ln
            pos += head + ln
        del buf[:pos]

    async def next_message(self, timeout: float = 30) -> bytes:
        while not self.messages:
            self.waiter = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self.waiter, timeout)
        return self.messages.pop(0)


async def _connect(port: int, path: str, collect: bool = True) -> WsClient:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(lambda: WsClient(collect), HOST, port)
    transport.write(_ws_upgrade(port, path))
    await asyncio.wait_for(proto.ready, 30)
    return proto


def _identity(home: Path, name: str) -> tuple[Any, Any]:
    from didsession.envelope import Envelope
    from didsession.identity import Store

    ident = Store(home).create(name)
    assert ident.ed25519_secret is not None and ident.x25519_secret is not None
    env = Envelope()
    env.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
    return ident, env


async def relay_load(
    port: int, mediator_did: str, seconds: float, pairs: int, size: int
) -> dict[str, Any]:
    from didsession.envelope import new_message

    home = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    ends = []
    for p in range(pairs):
        a, env_a = _identity(home / f"a{p}", "a")
        b, env_b = _identity(home / f"b{p}", "b")
        sid = f"bench-{p}-{os.urandom(4).hex()}"
        for me, env, peer in ((a, env_a, b), (b, env_b, a)):
            c = await _connect(port, "/relay")
            challenge = json.loads(await c.next_message())
            msg = new_message(
                "https://didsession.dev/relay/1.0/open",
                {"nonce": challenge["body"]["nonce"], "session_id": sid, "peer_did": peer.did},
                frm=me.did,
                to=[mediator_did],
            )
            packed = await env.pack(msg, to=mediator_did, frm=me.did, forward=False)
            c.t.write(_masked(packed.data))
            ends.append(c)
    for c in ends:  # both ends opened: every one sees "ready"
        while True:
            state = json.loads(await c.next_message())["body"]["state"]
            if state == "ready":
                break
        c.collect = False
    senders, receivers = ends[0::2], ends[1::2]
    batch = _masked(b"x" * size, opcode=0x2, mask=b"\0\0\0\0") * 64
    window = 8192
    sent = [0] * pairs
    t0 = time.perf_counter()
    base = [r.frames for r in receivers]
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for i, (s, r) in enumerate(zip(senders, receivers, strict=True)):
            if sent[i] - (r.frames - base[i]) < window:
                s.t.write(batch)
                sent[i] += 64
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - t0
    frames = sum(r.frames - b for r, b in zip(receivers, base, strict=True))
    for c in ends:
        c.t.close()
    shutil.rmtree(home, ignore_errors=True)
    return {
        "pairs": pairs,
        "frame_bytes": size,
        "frames_per_s": round(frames / elapsed),
        "bytes_per_s": round(frames * size / elapsed),
        "seconds": round(elapsed, 2),
    }


async def live_load(port: int, mediator_did: str, clients: int, hold: float) -> dict[str, Any]:
    """``clients`` WebSockets, each a distinct DID with live delivery on."""
    from aries_askar import Key, KeyAlg

    from didsession.did import create_peer_did
    from didsession.envelope import Envelope, new_message

    t0 = time.perf_counter()
    packed = []
    env = Envelope()
    for _ in range(clients):  # keys in memory: a Store would fsync 5000 key files
        ed, x = Key.generate(KeyAlg.ED25519), Key.generate(KeyAlg.X25519)
        did = create_peer_did(ed.get_public_bytes(), x.get_public_bytes(), None)
        env.add_identity(did, bytes(ed.get_secret_bytes()), bytes(x.get_secret_bytes()))
        msg = new_message(
            "https://didcomm.org/messagepickup/3.0/live-delivery-change",
            {"live_delivery": True},
            frm=did,
            to=[mediator_did],
        )
        packed.append(_masked((await env.pack(msg, to=mediator_did, frm=did, forward=False)).data))
    prepared = time.perf_counter() - t0
    conns: list[WsClient] = []
    sem = asyncio.Semaphore(64)

    async def one(data: bytes) -> None:
        async with sem:
            c = await _connect(port, "/ws")
            c.t.write(data)
            await c.next_message(60)  # the status reply: live delivery is on
            c.messages.clear()
            c.collect = False
            conns.append(c)

    t1 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in packed))
    connected = time.perf_counter() - t1
    print(json.dumps({"connected": len(conns)}), flush=True)  # the driver measures RSS now
    await asyncio.sleep(hold)
    for c in conns:
        c.t.close()
    return {
        "clients": len(conns),
        "prepare_s": round(prepared, 2),
        "connect_s": round(connected, 2),
    }


async def forward_pickup_load(url: str, messages: int, concurrency: int = 32) -> dict[str, Any]:
    import aiohttp

    from didsession.envelope import new_message
    from didsession.identity import Store
    from didsession.mediation import MediatorClient, mediator_info, request_mediation

    home = Path(tempfile.mkdtemp(prefix="bench-fwd-"))
    info = await mediator_info(url)
    bob = Store(home / "bob").create("bob", mediator=info.did)
    await request_mediation(bob, info)
    alice, env = _identity(home / "alice", "alice")
    datas = []
    for i in range(messages):
        msg = new_message(
            "https://didcomm.org/basicmessage/2.0/message",
            {"content": f"m{i}"},
            frm=alice.did,
            to=[bob.did],
        )
        datas.append((await env.pack(msg, to=bob.did, frm=alice.did)).data)
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def post(data: bytes) -> None:
            async with (
                sem,
                session.post(
                    info.endpoint,
                    data=data,
                    headers={"Content-Type": "application/didcomm-encrypted+json"},
                ) as resp,
            ):
                assert resp.status == 202, resp.status

        t0 = time.perf_counter()
        await asyncio.gather(*(post(d) for d in datas))
        forward_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    async with MediatorClient(info, bob) as client:
        got = await client.pickup_all(batch=50)
    pickup_s = time.perf_counter() - t1
    assert len(got) == messages, len(got)
    shutil.rmtree(home, ignore_errors=True)
    return {
        "messages": messages,
        "forward_per_s": round(messages / forward_s),
        "pickup_per_s": round(messages / pickup_s),
        "forward_to_pickup_per_s": round(messages / (forward_s + pickup_s)),
        "note": "forwards packed beforehand; pickup includes the client's decryption",
    }


def _load_main(argv: list[str]) -> None:
    import uvloop

    raise_nofile()
    kind, *rest = argv
    if kind == "stun":
        coro: Any = stun_load(int(rest[0]), float(rest[1]))
    elif kind == "relay":
        coro = relay_load(int(rest[0]), rest[1], float(rest[2]), int(rest[3]), int(rest[4]))
    elif kind == "live":
        coro = live_load(int(rest[0]), rest[1], int(rest[2]), float(rest[3]))
    elif kind == "forward":
        coro = forward_pickup_load(rest[0], int(rest[1]))
    else:
        raise SystemExit(f"unknown load {kind}")
    result = uvloop.run(asyncio.wait_for(coro, 600))
    print(json.dumps(result), flush=True)


# -- the driver ----------------------------------------------------------------------------


def bench_stun(workdir: Path, seconds: float, rounds: int = 3) -> dict[str, Any]:
    """Both servers up at once (an idle one costs nothing); alternate rounds; medians."""
    med = Mediator(workdir, "--stun-rate", "0", "--stun-queue", "4096")
    ours: list[int] = []
    theirs: list[int] = []
    try:
        with coturn(workdir) as coturn_port:
            for _ in range(rounds):
                ours.append(load("stun", str(med.stun_port), str(seconds))["responses_per_s"])
                theirs.append(load("stun", str(coturn_port), str(seconds))["responses_per_s"])
        counter = med.metric("didsession_mediator_stun_responses_total")
    finally:
        med.stop()
    mine, other = statistics.median(ours), statistics.median(theirs)
    return {
        "didsession_mediator": {
            "responses_per_s": round(mine),
            "rounds": ours,
            "server_counter": counter,
        },
        "coturn": {"responses_per_s": round(other), "rounds": theirs},
        "ratio": round(mine / max(1, other), 3),
        "client": "uvloop, 8 UDP sockets x 64 requests in flight, the same for both servers",
    }


def bench_relay(workdir: Path, seconds: float) -> dict[str, Any]:
    med = Mediator(workdir, "--relay-quota-frames", "0", "--relay-quota-bytes", "0")
    try:
        did = med.get("/healthz")["did"]
        runs = [load("relay", str(med.port), did, str(seconds), str(p), "32") for p in (1, 8)]
        relayed = med.metric("didsession_mediator_relay_frames_total")
    finally:
        med.stop()
    return {"runs": runs, "server_counter_frames": relayed}


def bench_live(workdir: Path, clients: int) -> dict[str, Any]:
    med = Mediator(workdir, "--max-connections-per-source", str(clients + 100))
    try:
        did = med.get("/healthz")["did"]
        med.get("/metrics")
        time.sleep(0.5)
        before = med.rss_kib()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_load",
                "live",
                str(med.port),
                did,
                str(clients),
                "4",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            if not first:
                raise RuntimeError(
                    f"live load failed: {proc.stderr.read()[-3000:] if proc.stderr else ''}"
                )
            time.sleep(1.0)
            after = med.rss_kib()
            live = med.metric("didsession_mediator_live_connections")
            rest, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode != 0:
            raise RuntimeError(f"live load failed: {err[-3000:]}")
        result: dict[str, Any] = json.loads(rest.strip().splitlines()[-1])
    finally:
        med.stop()
    result.update(
        {
            "live_connections_metric": live,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "rss_per_client_kib": round((after - before) / max(1, clients), 2),
        }
    )
    return result


def bench_forward(workdir: Path, messages: int) -> dict[str, Any]:
    med = Mediator(workdir)
    try:
        return load("forward", med.url, str(messages))
    finally:
        med.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each rate run")
    parser.add_argument("--clients", type=int, default=5000, help="live WebSocket clients")
    parser.add_argument("--messages", type=int, default=1000, help="forwarded messages")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)}); default: all",
    )
    args = parser.parse_args()
    nofile = raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="bench-mediator-"))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "nofile": nofile},
    }
    try:
        for name, fn in (
            ("stun", lambda: bench_stun(workdir, args.seconds)),
            ("relay", lambda: bench_relay(workdir, args.seconds)),
            ("live", lambda: bench_live(workdir, args.clients)),
            ("forward_pickup", lambda: bench_forward(workdir, args.messages)),
        ):
            if name not in args.only:
                continue
            if not args.json:
                print(f"running {name} ...", file=sys.stderr)
            try:
                results[name] = fn()
            except Exception as exc:  # report what failed, keep the other figures
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    best_relay = max(
        (r["frames_per_s"] for r in results.get("relay", {}).get("runs", [])), default=0
    )
    live = results.get("live", {})
    results["targets"] = {
        "stun_ratio_vs_coturn": {
            "target": TARGETS["stun_vs_coturn"],
            "value": results.get("stun", {}).get("ratio"),
        },
        "relay_frames_per_s": {"target": TARGETS["relay_frames_per_s"], "value": best_relay},
        "live_clients": {"target": TARGETS["live_clients"], "value": live.get("clients")},
        "rss_per_client_kib": {
            "target": TARGETS["rss_per_client_kib"],
            "value": live.get("rss_per_client_kib"),
        },
    }
    section_of = {"stun_ratio_vs_coturn": "stun", "relay_frames_per_s": "relay"}
    for name in list(results["targets"]):
        if section_of.get(name, "live") not in args.only:
            del results["targets"][name]  # not measured in this run
    for t in results["targets"].values():
        v = t["value"]
        if v is None:
            t["met"] = False
        elif t is results["targets"].get("rss_per_client_kib"):
            t["met"] = v <= t["target"]
        else:
            t["met"] = v >= t["target"]
    print(json.dumps(results, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        sys.path.insert(0, str(ROOT))
        _load_main(sys.argv[2:])
    else:
        sys.exit(main())
