"""Cost of stateless DIDComm v2 envelopes: what the session protocol must beat.

Measures, in one run: pack and unpack CPU time (µs) and wire bytes for authcrypt and
anoncrypt at 32 B, 1 KiB and 64 KiB payloads, and authcrypt through one forward (the
sender wraps for the mediator; the mediator unwraps; the recipient unpacks).

    python bench/envelope.py [--json] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from didsession.envelope import Envelope, new_message, parse_forward
from didsession.identity import Identity, Store

SIZES = {"32B": 32, "1KiB": 1024, "64KiB": 64 * 1024}
BASIC = "https://didcomm.org/basicmessage/2.0/message"


def _envelope(*idents: Identity) -> Envelope:
    env = Envelope()
    for i in idents:
        assert i.ed25519_secret is not None and i.x25519_secret is not None
        env.add_identity(i.did, i.ed25519_secret, i.x25519_secret)
    return env


async def _time(fn: Callable[[], Awaitable[Any]], seconds: float) -> float:
    """Median µs per call over 5 rounds, each about seconds/5 long."""
    await fn()  # warm caches (resolution, parsed documents, keys)
    t0 = time.perf_counter()
    await fn()
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(3, int(seconds / 5 / one))
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            await fn()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(rounds)


async def run(seconds: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="bench-envelope-"))
    med = Store(home / "m").create("med", mediator="http://127.0.0.1:9/didcomm")
    alice = Store(home / "a").create("alice")
    bob = Store(home / "b").create("bob")
    carol = Store(home / "c").create("carol", mediator=med.did)
    env_a, env_b, env_c, env_m = _envelope(alice), _envelope(bob), _envelope(carol), _envelope(med)
    per = seconds / (len(SIZES) * 2 * 2 + 3)
    results: dict[str, Any] = {}
    for label, size in SIZES.items():
        msg = new_message(BASIC, {"content": "x" * size}, frm=alice.did, to=[bob.did])
        plain = len(json.dumps(msg, separators=(",", ":")))
        for mode, frm in (("authcrypt", alice.did), ("anoncrypt", None)):
            packed = await env_a.pack(msg, to=bob.did, frm=frm, forward=False)
            data = packed.data
            pack_us = await _time(
                lambda m=msg, f=frm: env_a.pack(m, to=bob.did, frm=f, forward=False), per
            )
            unpack_us = await _time(lambda d=data: env_b.unpack(d), per)
            results[f"{mode}/{label}"] = {
                "payload_bytes": size,
                "plaintext_message_bytes": plain,
                "wire_bytes": len(data),
                "overhead_bytes": len(data) - size,
                "pack_us": round(pack_us, 1),
                "unpack_us": round(unpack_us, 1),
                "pack_plus_unpack_us": round(pack_us + unpack_us, 1),
            }
    # through a forward: sender packs (2 layers), mediator unwraps, recipient unpacks
    msg = new_message(BASIC, {"content": "x" * 32}, frm=alice.did, to=[carol.did])
    fwd = await env_a.pack(msg, to=carol.did, frm=alice.did)
    assert fwd.forwarded
    outer = await env_m.unpack(fwd.data)
    _, inner = parse_forward(outer.message)
    pack_us = await _time(lambda: env_a.pack(msg, to=carol.did, frm=alice.did), per)

    async def mediator_unwrap() -> None:
        parse_forward((await env_m.unpack(fwd.data)).message)

    med_us = await _time(mediator_unwrap, per)
    recv_us = await _time(lambda: env_c.unpack(inner), per)
    results["authcrypt+forward/32B"] = {
        "payload_bytes": 32,
        "wire_bytes_to_mediator": len(fwd.data),
        "wire_bytes_to_recipient": len(inner),
        "pack_us": round(pack_us, 1),
        "mediator_unwrap_us": round(med_us, 1),
        "recipient_unpack_us": round(recv_us, 1),
        "total_us": round(pack_us + med_us + recv_us, 1),
    }
    a32 = results["authcrypt/32B"]
    results["summary"] = {
        "authcrypt_32B_pack_plus_unpack_us": a32["pack_plus_unpack_us"],
        "authcrypt_32B_wire_bytes": a32["wire_bytes"],
        "forward_vs_direct_cpu_ratio": round(
            results["authcrypt+forward/32B"]["total_us"] / a32["pack_plus_unpack_us"], 2
        ),
        "reference_older_library_32B": {"pack_plus_unpack_us": 584, "wire_bytes": 2345},
    }
    return {
        "benchmark": "envelope",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "CPU µs per message on one core, median of 5 rounds; DIDs are did:peer:2",
        "results": results,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", action="store_true", help="JSON only (default: JSON plus a table)")
    p.add_argument("--seconds", type=float, default=15.0, help="total measuring time")
    args = p.parse_args()
    out = asyncio.run(run(args.seconds))
    print(json.dumps(out, indent=2))
    if not args.json:
        for name, r in out["results"].items():
            if name != "summary":
                print(f"{name:24} {r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
