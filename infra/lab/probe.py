#!/usr/bin/env python3
"""A tiny UDP/TCP probe for checking what the lab's NATs and links do.  Standard library only.

Run it inside lab hosts (``lab exec HOST -- python3 infra/lab/probe.py ...`` or
``Lab.popen(host, [sys.executable, str(netlab.PROBE), ...])``).  Every subcommand prints JSON,
one object per line, and stops by itself (each has a time bound).

``reflect``   on the mediator: answer each UDP datagram with the source address it came from;
              on TCP send that address as a line, then ``SINK`` (count bytes until EOF, report)
              or ``SOURCE N`` (send N bytes).  Lives ``--lifetime`` seconds.
``mapping``   from one local port, ask several reflectors what they see: the NAT's mappings.
``punch``     learn our mapping from a reflector, print it, read the peer's ``ip:port`` from
              stdin, then punch: UDP (PUNCH/ACK exchange) or TCP simultaneous open.
``listen``    optionally open a mapping via a reflector, then report every UDP datagram
              received for ``--duration`` seconds (are unsolicited packets let in?).
``send``      send UDP datagrams, or try one TCP connect, to an address.
``stream``    TCP: upload N bytes to a reflector (``SINK``) or download N (``SOURCE``); report
              the throughput.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Addr = tuple[str, int]


def addr(text: str) -> Addr:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


def fmt(address: Any) -> str:
    return f"{address[0]}:{address[1]}"


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# -- reflect ---------------------------------------------------------------------------------


def _serve_udp(sock: socket.socket, stop: threading.Event) -> None:
    local = fmt(sock.getsockname())
    while not stop.is_set():
        ready, _, _ = select.select([sock], [], [], 0.2)
        if not ready:
            continue
        data, source = sock.recvfrom(2048)
        reply = {
            "observed": fmt(source),
            "via": local,
            "payload": data[:64].decode(errors="replace"),
        }
        sock.sendto(json.dumps(reply).encode(), source)


def _serve_tcp_conn(conn: socket.socket, source: Addr, local: str) -> None:
    with conn:
        conn.settimeout(30)
        try:
            conn.sendall(json.dumps({"observed": fmt(source), "via": local}).encode() + b"\n")
            command = b""
            while not command.endswith(b"\n"):
                chunk = conn.recv(1)
                if not chunk:
                    return
                command += chunk
            words = command.decode().split()
            if words[:1] == ["SINK"]:
                total, started = 0, 0.0
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    if not total:
                        started = time.monotonic()
                    total += len(chunk)
                elapsed = time.monotonic() - started if total else 0.0
                conn.sendall(json.dumps({"bytes": total, "seconds": elapsed}).encode() + b"\n")
            elif words[:1] == ["SOURCE"]:
                remaining = int(words[1])
                block = b"x" * 65536
                while remaining > 0:
                    conn.sendall(block[: min(remaining, len(block))])
                    remaining -= len(block)
        except OSError:
            return


def _serve_tcp(sock: socket.socket, stop: threading.Event) -> None:
    local = fmt(sock.getsockname())
    while not stop.is_set():
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            conn, source = sock.accept()
            threading.Thread(
                target=_serve_tcp_conn, args=(conn, source, local), daemon=True
            ).start()


def cmd_reflect(args: argparse.Namespace) -> int:
    stop = threading.Event()
    threads = []
    bound = []
    for text in args.udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(addr(text))
        bound.append("udp " + fmt(sock.getsockname()))
        threads.append(threading.Thread(target=_serve_udp, args=(sock, stop), daemon=True))
    for text in args.tcp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr(text))
        sock.listen(64)
        bound.append("tcp " + fmt(sock.getsockname()))
        threads.append(threading.Thread(target=_serve_tcp, args=(sock, stop), daemon=True))
    for thread in threads:
        thread.start()
    emit(event="ready", listening=bound)
    stop.wait(args.lifetime)
    stop.set()
    return 0


# -- mapping ---------------------------------------------------------------------------------


def _udp_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    return sock


def _tcp_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", port))
    return sock


def udp_query(sock: socket.socket, reflector: Addr, timeout: float = 1.5) -> str | None:
    """Ask a reflector what it sees; retransmit every 0.25 s; None if it never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendto(b"MAP", reflector)
        ready, _, _ = select.select(
            [sock], [], [], min(0.25, max(0.0, deadline - time.monotonic()))
        )
        if ready:
            data, source = sock.recvfrom(2048)
            if source == reflector:
                observed: str = json.loads(data)["observed"]
                return observed
    return None


def tcp_query(port: int, reflector: Addr, timeout: float = 3.0) -> tuple[socket.socket, str] | None:
    """Connect from ``port`` to a reflector; the socket stays open (keeps the NAT mapping)."""
    sock = _tcp_socket(port)
    sock.settimeout(timeout)
    try:
        sock.connect(reflector)
        line = sock.makefile("rb").readline()
        return sock, json.loads(line)["observed"]
    except (OSError, ValueError):
        sock.close()
        return None


def cmd_mapping(args: argparse.Namespace) -> int:
    mappings = []
    if args.proto == "udp":
        sock = _udp_socket(args.local_port)
        local = fmt(sock.getsockname())
        for text in args.reflector:
            mappings.append(
                {"reflector": text, "mapped": udp_query(sock, addr(text), args.timeout)}
            )
    else:
        port = args.local_port
        keep = []
        local = f"0.0.0.0:{port}"
        for text in args.reflector:
            result = tcp_query(port, addr(text), args.timeout)
            if result is not None:
                keep.append(result[0])
                port = result[0].getsockname()[1]
                local = fmt(result[0].getsockname())
            mappings.append({"reflector": text, "mapped": result[1] if result else None})
        for sock_ in keep:
            sock_.close()
    emit(local=local, proto=args.proto, mappings=mappings)
    return 0


# -- punch -----------------------------------------------------------------------------------


def _read_peer(timeout: float) -> Addr | None:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return None
    line = sys.stdin.readline().strip()
    return addr(line) if line else None


def _punch_udp(sock: socket.socket, peer: Addr, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + timeout
    got_punch = got_ack = False
    heard_from: str | None = None
    done_at: float | None = None
    elapsed = 0.0
    next_send = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline or (done_at is not None and now >= done_at):
            break
        if now >= next_send and not got_ack:
            sock.sendto(b"PUNCH", peer)
            next_send = now + 0.02
        wait = max(0.0, min(next_send, deadline, done_at or deadline) - now)
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            continue
        data, source = sock.recvfrom(2048)
        if data == b"PUNCH":
            got_punch = True
            heard_from = fmt(source)
            # Answer where it came from and punch there from now on: a peer-reflexive
            # address, as ICE learns one (RFC 8445 §7.3.1.3).
            peer = source
            sock.sendto(b"ACK", source)
        elif data == b"ACK" and not got_ack:
            got_ack = True
            heard_from = heard_from or fmt(source)
            elapsed = time.monotonic() - started
            # Stay a little to answer the peer's PUNCHes, so it completes too.
            done_at = time.monotonic() + 0.3
    ok = got_ack
    return {
        "ok": ok,
        "got_punch": got_punch,
        "elapsed": round(elapsed, 4) if ok else None,
        "heard_from": heard_from,
    }


def _punch_tcp(port: int, peer: Addr, mapped: str, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + timeout
    attempts = 0
    last_error = ""
    while time.monotonic() < deadline:
        attempts += 1
        sock = _tcp_socket(port)
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            sock.connect(peer)
            sock.sendall(f"HELLO {mapped}\n".encode())
            line = sock.makefile("rb").readline().decode().strip()
            elapsed = time.monotonic() - started
            sock.close()
            return {
                "ok": line.startswith("HELLO"),
                "elapsed": round(elapsed, 4),
                "attempts": attempts,
                "peer_said": line,
            }
        except OSError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            sock.close()
            time.sleep(0.05)
    return {"ok": False, "elapsed": None, "attempts": attempts, "error": last_error}


def cmd_punch(args: argparse.Namespace) -> int:
    reflector = addr(args.reflector)
    if args.proto == "udp":
        sock = _udp_socket(args.local_port)
        mapped = udp_query(sock, reflector)
        emit(event="mapped", proto="udp", local=fmt(sock.getsockname()), mapped=mapped)
        peer = _read_peer(args.wait_peer)
        if peer is None or mapped is None:
            emit(event="result", ok=False, error="no mapping or no peer address")
            return 1
        result = _punch_udp(sock, peer, args.timeout)
    else:
        query = tcp_query(args.local_port, reflector)
        if query is None:
            emit(event="mapped", proto="tcp", mapped=None)
            emit(event="result", ok=False, error="no mapping")
            return 1
        keep, mapped = query
        port = keep.getsockname()[1]
        emit(event="mapped", proto="tcp", local=fmt(keep.getsockname()), mapped=mapped)
        peer = _read_peer(args.wait_peer)
        if peer is None:
            emit(event="result", ok=False, error="no peer address")
            return 1
        result = _punch_tcp(port, peer, mapped, args.timeout)
        keep.close()
    emit(event="result", peer=fmt(peer), **result)
    return 0 if result["ok"] else 1


# -- listen, send, stream --------------------------------------------------------------------


def cmd_listen(args: argparse.Namespace) -> int:
    sock = _udp_socket(args.port)
    mapped = udp_query(sock, addr(args.hello)) if args.hello else None
    emit(event="mapped", local=fmt(sock.getsockname()), mapped=mapped)
    received = []
    deadline = time.monotonic() + args.duration
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], remaining)
        if ready:
            data, source = sock.recvfrom(2048)
            received.append({"from": fmt(source), "payload": data[:64].decode(errors="replace")})
    emit(event="result", received=received)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    target = addr(args.to)
    if args.proto == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if args.bind:
            sock.bind(addr(args.bind))
        sock.settimeout(args.timeout)
        started = time.monotonic()
        try:
            sock.connect(target)
            emit(connected=True, elapsed=round(time.monotonic() - started, 4))
        except OSError as exc:
            elapsed = round(time.monotonic() - started, 4)
            emit(connected=False, error=f"{type(exc).__name__}: {exc}", elapsed=elapsed)
        sock.close()
        return 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.bind:
        sock.bind(addr(args.bind))
    for i in range(args.count):
        sock.sendto(f"{args.payload} {i}".encode(), target)
        if args.interval:
            time.sleep(args.interval)
    emit(sent=args.count, source=fmt(sock.getsockname()))
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    sock = socket.create_connection(addr(args.to), timeout=args.timeout)
    reader = sock.makefile("rb")
    reader.readline()  # the reflector's "observed" line
    if args.upload:
        sock.sendall(b"SINK\n")
        started = time.monotonic()
        block = b"y" * 65536
        remaining = args.upload
        while remaining > 0:
            sock.sendall(block[: min(remaining, len(block))])
            remaining -= len(block)
        sock.shutdown(socket.SHUT_WR)
        report = json.loads(reader.readline())
        total = report["bytes"]
        elapsed = time.monotonic() - started
        direction = "up"
    else:
        sock.sendall(f"SOURCE {args.download}\n".encode())
        started = time.monotonic()
        total = 0
        while chunk := reader.read1(65536):
            total += len(chunk)
        elapsed = time.monotonic() - started
        direction = "down"
    sock.close()
    emit(
        direction=direction, bytes=total, seconds=round(elapsed, 4), bps=round(8 * total / elapsed)
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("reflect")
    p.add_argument("--udp", action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--tcp", action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds")

    p = sub.add_parser("mapping")
    p.add_argument("--reflector", action="append", required=True, metavar="HOST:PORT")
    p.add_argument("--local-port", type=int, default=0)
    p.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    p.add_argument("--timeout", type=float, default=1.5)

    p = sub.add_parser("punch")
    p.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    p.add_argument("--reflector", required=True, metavar="HOST:PORT")
    p.add_argument("--local-port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3.0, help="give up punching after this")
    p.add_argument("--wait-peer", type=float, default=10.0, help="wait this long for stdin")

    p = sub.add_parser("listen")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--hello", metavar="HOST:PORT", help="a reflector to open a mapping with")
    p.add_argument("--duration", type=float, default=1.0)

    p = sub.add_parser("send")
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    p.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    p.add_argument("--bind", metavar="HOST:PORT")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--payload", default="PROBE")
    p.add_argument("--timeout", type=float, default=1.0)

    p = sub.add_parser("stream")
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--upload", type=int, metavar="BYTES")
    group.add_argument("--download", type=int, metavar="BYTES")
    p.add_argument("--timeout", type=float, default=20.0)

    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "reflect": cmd_reflect,
        "mapping": cmd_mapping,
        "punch": cmd_punch,
        "listen": cmd_listen,
        "send": cmd_send,
        "stream": cmd_stream,
    }
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
