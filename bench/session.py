"""Benchmark: session frames vs the bare AEAD vs stateless authcrypt (spec/session.md §12).

    python bench/session.py          # a table
    python bench/session.py --json   # the same numbers as JSON

Per message it measures seal+open of one frame (the channel's hot path) against the same
``cryptography`` AEAD primitive's encrypt+decrypt with no framing, for both suites and both
path kinds at 32 B, 1 KiB and 64 KiB; then the handshake's CPU per side.  Timings are the
minimum over repeats of a tight loop (timeit), in microseconds per message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from didsession.session import (
    OVERHEAD,
    Channel,
    Handshake,
    PathKind,
    Role,
    SessionConfig,
    Suite,
)
from didsession.session.keyschedule import public_key

SIZES = (32, 1024, 65536)
REPEAT = 25
ALICE, BOB = "did:example:alice", "did:example:bob"
STATIC = {ALICE: bytes(range(32)), BOB: bytes(range(32, 64))}
PUBLIC = {did: public_key(k) for did, k in STATIC.items()}
# Targets set by the issue.
AUTHCRYPT_REFERENCE_US = 500.0
TARGET_SPEEDUP_VS_AUTHCRYPT = 150.0
TARGET_RATIO_VS_AEAD = 2.0
TARGET_OVERHEAD = 32
TARGET_HANDSHAKE_US = 3000.0


def _handshakes(suite: Suite, path: PathKind) -> tuple[Handshake, Handshake]:
    cfg = SessionConfig(suites=(suite,), paths=(path,))
    i = Handshake(
        Role.INITIATOR,
        local_did=ALICE,
        static_private=STATIC[ALICE],
        peer_static_key=PUBLIC.__getitem__,
        peer_did=BOB,
        config=cfg,
    )
    r = Handshake(
        Role.RESPONDER,
        local_did=BOB,
        static_private=STATIC[BOB],
        peer_static_key=PUBLIC.__getitem__,
        config=cfg,
    )
    return i, r


def _pair(suite: Suite, path: PathKind) -> tuple[Channel, Channel]:
    i, r = _handshakes(suite, path)
    request = i.initiate(0.0)
    r.receive_message(request.plaintext, ALICE, 0.0)
    (accept,) = r.messages_to_send()
    i.receive_message(accept.plaintext, BOB, 0.0)
    return i.channel, r.channel


def _paired_best_us(fn_a: Any, fn_b: Any, number: int) -> tuple[float, float]:
    """Best µs per call of two functions, timed in alternation so both see the same noise."""
    best_a = best_b = float("inf")
    for _ in range(REPEAT):
        best_a = min(best_a, timeit.timeit(fn_a, number=number) / number * 1e6)
        best_b = min(best_b, timeit.timeit(fn_b, number=number) / number * 1e6)
    return best_a, best_b


def _number(size: int) -> int:
    # Many short alternating runs: on a shared machine the minimum then catches a quiet
    # moment for both contenders.
    return 4000 if size <= 1024 else 100


def _bare_aead(suite: Suite, size: int) -> Any:
    """encrypt+decrypt of ``size`` bytes with the suite's AEAD, no framing, no AAD."""
    aead = (AESGCM if suite is Suite.AES256GCM else ChaCha20Poly1305)(os.urandom(32))
    payload, nonce = os.urandom(size), bytes(12)
    enc, dec = aead.encrypt, aead.decrypt
    return lambda: dec(nonce, enc(nonce, payload, None), None)


def _session(suite: Suite, path: PathKind, size: int) -> tuple[Any, int]:
    """seal+open of one DATA frame, and the frame's wire size."""
    sender, receiver = _pair(suite, path)
    payload = os.urandom(size)
    seal, open_ = sender.seal, receiver.open
    frame = seal(payload)
    assert open_(frame) == payload
    return (lambda: open_(seal(payload))), len(frame)


def message_costs() -> list[dict[str, Any]]:
    rows = []
    for suite in Suite:
        for size in SIZES:
            for path in PathKind:
                session_fn, wire = _session(suite, path, size)
                us, bare = _paired_best_us(session_fn, _bare_aead(suite, size), _number(size))
                rows.append(
                    {
                        "suite": suite.value,
                        "path": path.value,
                        "payload_bytes": size,
                        "session_seal_open_us": round(us, 3),
                        "bare_aead_encrypt_decrypt_us": round(bare, 3),
                        "ratio_session_vs_bare": round(us / bare, 2),
                        "session_wire_bytes": wire,
                        "bare_aead_wire_bytes": size + 16,
                        "frame_overhead_bytes": wire - size,
                        "speedup_vs_authcrypt_reference_500us": round(
                            AUTHCRYPT_REFERENCE_US / us, 1
                        ),
                    }
                )
    return rows


def handshake_costs(iterations: int = 200) -> dict[str, Any]:
    """CPU per side (median µs), fresh objects and ephemeral keys each time; sizes."""
    ini: list[float] = []
    res: list[float] = []
    sizes: tuple[int, int] = (0, 0)
    for _ in range(iterations):
        i, r = _handshakes(Suite.AES256GCM, PathKind.STREAM)
        t0 = time.perf_counter()
        request = i.initiate(0.0)
        t1 = time.perf_counter()
        r.receive_message(request.plaintext, ALICE, 0.0)
        (accept,) = r.messages_to_send()
        t2 = time.perf_counter()
        i.receive_message(accept.plaintext, BOB, 0.0)
        t3 = time.perf_counter()
        ini.append((t1 - t0) + (t3 - t2))
        res.append(t2 - t1)
        sizes = (len(request.plaintext), len(accept.plaintext))
    return {
        "initiator_cpu_us": round(statistics.median(ini) * 1e6, 1),
        "responder_cpu_us": round(statistics.median(res) * 1e6, 1),
        "round_trips": 1,
        "didcomm_messages": 2,
        "request_plaintext_bytes": sizes[0],
        "accept_plaintext_bytes": sizes[1],
        "note": "median; excludes authcrypt pack/unpack of the two messages (envelope layer)",
    }


def authcrypt_costs(sizes: tuple[int, ...]) -> dict[str, Any]:
    """Stateless DIDComm v2 authcrypt pack+unpack per message (didsession.envelope), and the
    whole handshake per side *including* the authcrypt of its two DIDComm messages."""
    import asyncio
    import tempfile

    from didsession.envelope import new_message
    from didsession.identity import Store
    from didsession.peer import envelope_for, handshake_codec
    from didsession.session import Handshake, Role

    home = Path(tempfile.mkdtemp(prefix="bench-session-"))
    alice = Store(home / "a").create("alice")
    bob = Store(home / "b").create("bob")
    env_a, env_b = envelope_for(alice), envelope_for(bob)

    async def measure() -> dict[str, Any]:
        rows = []
        for size in sizes:
            msg = new_message(
                "https://didcomm.org/basicmessage/2.0/message", {"content": "x" * size}
            )
            packed = await env_a.pack(msg, to=bob.did, frm=alice.did, forward=False)
            await env_b.unpack(packed.data)
            best = float("inf")
            n = 200 if size <= 1024 else 40
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(n):
                    p = await env_a.pack(msg, to=bob.did, frm=alice.did, forward=False)
                    await env_b.unpack(p.data)
                best = min(best, (time.perf_counter() - t0) / n * 1e6)
            rows.append(
                {
                    "payload_bytes": size,
                    "pack_unpack_us": round(best, 1),
                    "wire_bytes": len(packed.data),
                }
            )
        pack_a, unpack_a = handshake_codec(env_a, alice.did)
        pack_b, unpack_b = handshake_codec(env_b, bob.did)
        sides: dict[str, list[float]] = {"initiator": [], "responder": []}
        for _ in range(30):
            assert alice.x25519_secret is not None and bob.x25519_secret is not None
            init = Handshake(
                Role.INITIATOR,
                local_did=alice.did,
                static_private=alice.x25519_secret,
                peer_static_key=env_a.resolver.x25519_public,
                peer_did=bob.did,
            )
            resp = Handshake(
                Role.RESPONDER,
                local_did=bob.did,
                static_private=bob.x25519_secret,
                peer_static_key=env_b.resolver.x25519_public,
                accept_peer={alice.did},
            )
            t0 = time.perf_counter()
            out = init.initiate(time.time())
            request = await pack_a(out.plaintext, out.to)
            t1 = time.perf_counter()
            plain, sender = await unpack_b(request)
            resp.receive_message(plain, sender, time.time())
            (reply,) = resp.messages_to_send()
            accept = await pack_b(reply.plaintext, reply.to)
            t2 = time.perf_counter()
            plain, sender = await unpack_a(accept)
            init.receive_message(plain, sender, time.time())
            t3 = time.perf_counter()
            assert init.channel is not None and resp.channel is not None
            sides["initiator"].append((t1 - t0) + (t3 - t2))
            sides["responder"].append(t2 - t1)
        return {
            "skipped": False,
            "messages": rows,
            "handshake_with_authcrypt_us": {
                k: round(statistics.median(v) * 1e6, 1) for k, v in sides.items()
            },
            "handshake_wire_bytes": {"request": len(request), "accept": len(accept)},
        }

    return asyncio.run(measure())


def targets(rows: list[dict[str, Any]], hs: dict[str, Any], auth: dict[str, Any]) -> dict[str, Any]:
    at32 = [r for r in rows if r["payload_bytes"] == 32]
    aes32 = [r for r in at32 if r["suite"] == Suite.AES256GCM.value]
    worst_ratio = max(r["ratio_session_vs_bare"] for r in at32)
    best_session = min(r["session_seal_open_us"] for r in aes32)
    out: dict[str, Any] = {
        "ratio_vs_bare_aead_at_32B_max": worst_ratio,
        "ratio_vs_bare_aead_at_32B_ok": worst_ratio <= TARGET_RATIO_VS_AEAD,
        "frame_overhead_bytes_max": max(r["frame_overhead_bytes"] for r in rows),
        "frame_overhead_ok": max(r["frame_overhead_bytes"] for r in rows) <= TARGET_OVERHEAD,
        "handshake_cpu_per_side_us_max": max(hs["initiator_cpu_us"], hs["responder_cpu_us"]),
        "handshake_cpu_ok": max(hs["initiator_cpu_us"], hs["responder_cpu_us"])
        <= TARGET_HANDSHAKE_US,
        "handshake_round_trips_ok": hs["round_trips"] == 1,
        "speedup_vs_authcrypt_reference_500us_at_32B": round(
            AUTHCRYPT_REFERENCE_US / best_session, 1
        ),
    }
    if not auth.get("skipped"):
        auth32 = next(r for r in auth["messages"] if r["payload_bytes"] == 32)
        speedup = auth32["pack_unpack_us"] / best_session
        full = max(auth["handshake_with_authcrypt_us"].values())
        out["authcrypt_pack_unpack_at_32B_us"] = auth32["pack_unpack_us"]
        out["speedup_vs_measured_authcrypt_at_32B"] = round(speedup, 1)
        out["speedup_vs_authcrypt_ok"] = speedup >= TARGET_SPEEDUP_VS_AUTHCRYPT
        out["handshake_with_authcrypt_per_side_us_max"] = full
        out["handshake_with_authcrypt_ok"] = full <= TARGET_HANDSHAKE_US
    else:
        out["speedup_vs_measured_authcrypt_at_32B"] = None
        out["speedup_vs_authcrypt_ok"] = (
            AUTHCRYPT_REFERENCE_US / best_session >= TARGET_SPEEDUP_VS_AUTHCRYPT
        )
        out["speedup_note"] = "against the issue's ~500 µs reference; measured slot is empty"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    rows = message_costs()
    hs = handshake_costs()
    auth = authcrypt_costs(SIZES)
    result = {
        "environment": {
            "python": platform.python_version(),
            "cryptography": cryptography.__version__,
            "machine": platform.machine(),
            "processor": _cpu_model(),
            "method": f"min of {REPEAT} timeit runs, session and bare AEAD alternating; µs/message",
        },
        "frame_overhead_bytes": OVERHEAD,
        "messages": rows,
        "handshake": hs,
        "authcrypt": auth,
        "targets": targets(rows, hs, auth),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{'suite':32} {'path':9} {'bytes':>6} {'session':>9} {'bare':>9} {'ratio':>6} {'wire':>6}"
    )
    for r in rows:
        print(
            f"{r['suite']:32} {r['path']:9} {r['payload_bytes']:>6} "
            f"{r['session_seal_open_us']:>9.3f} {r['bare_aead_encrypt_decrypt_us']:>9.3f} "
            f"{r['ratio_session_vs_bare']:>6.2f} {r['session_wire_bytes']:>6}"
        )
    print(json.dumps({"handshake": hs, "authcrypt": auth, "targets": result["targets"]}, indent=2))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
