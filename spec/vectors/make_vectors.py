"""Generate the session test vectors in this directory from spec/session.md alone.

This is a second, straight-line implementation of spec §3 (messages), §5 (key schedule),
§6-§8 (frames, control frames, key update).  It deliberately imports nothing from
``didsession``: the vector test (tests/test_session_vectors.py) then checks the real
implementation, in both roles, against bytes computed independently.

Run:  python spec/vectors/make_vectors.py   (rewrites spec/vectors/*.json)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

HERE = Path(__file__).resolve().parent
URI = "https://didsession.dev/protocols/session/1.0/"
LABEL = b"didsession/1.0 "
AES = "X25519-AES256GCM-SHA256"
CHACHA = "X25519-CHACHA20POLY1305-SHA256"
NOW = 1_700_000_000
ALICE = "did:example:alice"
BOB = "did:example:bob"


def seeded(label: str, n: int = 32) -> bytes:
    """Fixed 'random' bytes: SHA-256 of a label (repeated if more are needed)."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"didsession vectors/{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


def pub(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def x25519(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def expand(prk: bytes, label: str, n: int) -> bytes:
    """HKDF-Expand-SHA256(prk, "didsession/1.0 " + label, n), RFC 5869 §2.3."""
    info = LABEL + label.encode()
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.digest(prk, t + info + bytes([i]), "sha256")
        out += t
        i += 1
    return out[:n]


def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def msg_id(rand16: bytes) -> str:
    return str(uuid.UUID(bytes=rand16, version=4))


class Sender:
    """One direction's sending state (spec §6.3, §8.2)."""

    def __init__(self, suite: str, stream: bool, secret: bytes, tag: bytes) -> None:
        self.suite, self.stream, self.secret, self.tag = suite, stream, secret, tag
        self.epoch = 0
        self.counter = 0

    def key(self) -> bytes:
        return expand(self.secret, "key", 32)

    def seal(self, ftype: int, plaintext: bytes) -> bytes:
        first = struct.pack(">I", 8 + len(plaintext) + 16) if self.stream else self.tag
        flags = (ftype << 4) | (self.epoch & 0x0F)
        header = first + bytes([flags]) + self.counter.to_bytes(7, "big")
        aead = AESGCM(self.key()) if self.suite == AES else ChaCha20Poly1305(self.key())
        self.counter += 1
        return header + aead.encrypt(header, plaintext, None)

    def key_update(self, request: bool) -> bytes:
        frame = self.seal(1, bytes([1, int(request)]))
        self.secret = expand(self.secret, "key update", 32)
        self.epoch += 1
        return frame


def config(
    suites: list[str], paths: list[str], limits: dict[str, int], max_payload: int
) -> dict[str, Any]:
    return {
        "versions": ["1.0"],
        "suites": suites,
        "paths": paths,
        "limits": limits,
        "max_payload": max_payload,
    }


def meet(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: min(a[k], b[k]) for k in ("messages", "bytes", "seconds")}


def handshake(
    name: str,
    description: str,
    icfg: dict[str, Any],
    rcfg: dict[str, Any],
    resume: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    s_i, s_r = seeded(f"{name}/static/initiator"), seeded(f"{name}/static/responder")
    e_i, e_r = seeded(f"{name}/ephemeral/initiator"), seeded(f"{name}/ephemeral/responder")
    rand_i, rand_r = seeded(f"{name}/rand/initiator", 16), seeded(f"{name}/rand/responder", 16)
    if resume is not None:
        s_i, s_r = resume["s_i"], resume["s_r"]
    # §3.2 request (or §3.4 rekey)
    body: dict[str, Any] = {
        "versions": icfg["versions"],
        "suites": icfg["suites"],
        "paths": icfg["paths"],
        "epk": b64(pub(e_i)),
        "limits": icfg["limits"],
        "max_payload": icfg["max_payload"],
    }
    if resume is not None:
        body["session_id"] = b64(resume["session_id"])
    request_id = msg_id(rand_i)
    request = dumps(
        {
            "id": request_id,
            "type": URI + ("rekey" if resume is not None else "request"),
            "from": ALICE,
            "to": [BOB],
            "created_time": NOW,
            "body": body,
        }
    )
    # §4.2 negotiation: first entry of the initiator's list the responder supports
    version = next(v for v in icfg["versions"] if v in rcfg["versions"])
    suite = next(s for s in icfg["suites"] if s in rcfg["suites"])
    path = next(p for p in icfg["paths"] if p in rcfg["paths"])
    limits = meet(icfg["limits"], rcfg["limits"])
    accept = dumps(
        {
            "id": msg_id(rand_r),
            "type": URI + "accept",
            "from": BOB,
            "to": [ALICE],
            "created_time": NOW,
            "thid": request_id,
            "body": {
                "version": version,
                "suite": suite,
                "path": path,
                "epk": b64(pub(e_r)),
                "limits": limits,
                "max_payload": rcfg["max_payload"],
            },
        }
    )
    # §5.2 DH, §5.3 transcript, §5.4 secrets
    ee, es, se = x25519(e_i, pub(e_r)), x25519(e_i, pub(s_r)), x25519(s_i, pub(e_r))
    h = hashlib.sha256(LABEL + b"transcript")
    for item in (
        version.encode(),
        suite.encode(),
        path.encode(),
        ALICE.encode(),
        BOB.encode(),
        pub(s_i),
        pub(s_r),
        request,
        accept,
    ):
        h.update(lp(item))
    th = h.digest()
    prk = hmac.digest(th, ee + es + se + (resume["secret"] if resume else b""), "sha256")
    out: dict[str, Any] = {
        "name": name,
        "description": description,
        "now": NOW,
        "initiator": {
            "did": ALICE,
            "static_private": s_i.hex(),
            "static_public": pub(s_i).hex(),
            "ephemeral_private": e_i.hex(),
            "ephemeral_public": pub(e_i).hex(),
            "rand": rand_i.hex(),
            "config": icfg,
        },
        "responder": {
            "did": BOB,
            "static_private": s_r.hex(),
            "static_public": pub(s_r).hex(),
            "ephemeral_private": e_r.hex(),
            "ephemeral_public": pub(e_r).hex(),
            "rand": rand_r.hex(),
            "config": rcfg,
        },
        "resume": (
            {"session_id": resume["session_id"].hex(), "secret": resume["secret"].hex()}
            if resume
            else None
        ),
        "request": request.hex(),
        "accept": accept.hex(),
        "negotiated": {
            "version": version,
            "suite": suite,
            "path": path,
            "limits": limits,
            "initiator_max_payload": icfg["max_payload"],
            "responder_max_payload": rcfg["max_payload"],
        },
        "ee": ee.hex(),
        "es": es.hex(),
        "se": se.hex(),
        "transcript_hash": th.hex(),
        "prk": prk.hex(),
        "session_id": expand(prk, "session id", 16).hex(),
        "i2r_secret": expand(prk, "i2r", 32).hex(),
        "r2i_secret": expand(prk, "r2i", 32).hex(),
        "i2r_key": expand(expand(prk, "i2r", 32), "key", 32).hex(),
        "r2i_key": expand(expand(prk, "r2i", 32), "key", 32).hex(),
        "i2r_tag": expand(prk, "tag i2r", 4).hex(),
        "r2i_tag": expand(prk, "tag r2i", 4).hex(),
        "attach_id": expand(prk, "attach", 16).hex(),
        "resumption_secret": expand(prk, "resumption", 32).hex(),
        "_statics": (s_i, s_r),
    }
    return out


def frames(vec: dict[str, Any]) -> None:
    """Append the frame sequence of spec §6-§9 to a handshake vector."""
    neg = vec["negotiated"]
    stream = neg["path"] == "stream"
    i2r = Sender(
        neg["suite"], stream, bytes.fromhex(vec["i2r_secret"]), bytes.fromhex(vec["i2r_tag"])
    )
    r2i = Sender(
        neg["suite"], stream, bytes.fromhex(vec["r2i_secret"]), bytes.fromhex(vec["r2i_tag"])
    )
    ops: list[dict[str, Any]] = []

    def data(src: str, payload: bytes) -> None:
        s = i2r if src == "initiator" else r2i
        ops.append(
            {"op": "data", "from": src, "payload": payload.hex(), "frame": s.seal(0, payload).hex()}
        )

    data("initiator", b"hello from the initiator")
    data("responder", b"hello from the responder")
    data("initiator", b"")
    data("initiator", bytes(range(40)))
    # §8.2: the initiator updates its key and asks the responder to do the same
    ops.append(
        {
            "op": "rekey",
            "from": "initiator",
            "request_update": True,
            "frame": i2r.key_update(True).hex(),
            "next_secret": i2r.secret.hex(),
        }
    )
    # ...the responder answers with its own KEY_UPDATE (queued, not requested)
    ops.append(
        {
            "op": "outbox",
            "from": "responder",
            "frame": r2i.key_update(False).hex(),
            "next_secret": r2i.secret.hex(),
        }
    )
    data("initiator", b"epoch 1, i2r")
    data("responder", b"epoch 1, r2i")
    # §9: close with the normal code
    ops.append(
        {"op": "close", "from": "initiator", "code": "", "frame": i2r.seal(1, b"\x02").hex()}
    )
    vec["frames"] = ops


def main() -> None:
    lim_default = {"messages": 1 << 20, "bytes": 1 << 32, "seconds": 600}
    vectors = []
    v1 = handshake(
        "stream-aes256gcm",
        "Stream path; the initiator offers both suites, the responder picks AES-256-GCM.",
        config([AES, CHACHA], ["stream"], lim_default, 1 << 20),
        config([AES, CHACHA], ["stream", "datagram"], lim_default, 65536),
    )
    frames(v1)
    vectors.append(v1)
    v2 = handshake(
        "datagram-chacha20poly1305",
        "Datagram path, ChaCha20-Poly1305 preferred by the initiator; limits are the "
        "component-wise minimum of both offers.",
        config(
            [CHACHA, AES], ["datagram"], {"messages": 65536, "bytes": 1 << 30, "seconds": 900}, 1200
        ),
        config([AES, CHACHA], ["stream", "datagram"], lim_default | {"seconds": 120}, 1400),
    )
    frames(v2)
    vectors.append(v2)
    s_i, s_r = v1["_statics"]
    v3 = handshake(
        "rekey-resume",
        "A 'rekey' handshake (fresh ephemerals) replacing the session of stream-aes256gcm; "
        "its resumption secret is mixed into the new keys.",
        config([AES], ["stream"], lim_default, 1 << 20),
        config([AES, CHACHA], ["stream"], lim_default, 1 << 20),
        resume={
            "session_id": bytes.fromhex(v1["session_id"]),
            "secret": bytes.fromhex(v1["resumption_secret"]),
            "s_i": s_i,
            "s_r": s_r,
        },
    )
    frames(v3)
    vectors.append(v3)
    for vec in vectors:
        del vec["_statics"]
        path = HERE / f"{vec['name']}.json"
        path.write_text(json.dumps(vec, indent=2) + "\n")
        print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
