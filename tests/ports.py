"""Free loopback ports for tests that start servers."""

from __future__ import annotations

import socket


def free_port_pair(hosts: tuple[str, ...]) -> int:
    """A port P such that P and P+1 are free for UDP and TCP on every host."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((hosts[0], 0))
        port = probe.getsockname()[1]
        probe.close()
        if port >= 65535:
            continue
        held: list[socket.socket] = []
        try:
            for host in hosts:
                for p in (port, port + 1):
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        s = socket.socket(socket.AF_INET, kind)
                        held.append(s)
                        s.bind((host, p))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return port
    raise RuntimeError("no free port pair on loopback")
