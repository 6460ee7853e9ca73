"""The spec's test vectors (spec/vectors/*.json), checked byte for byte in both roles.

The vectors come from spec/vectors/make_vectors.py, an independent implementation of the
spec; see spec/vectors/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from didsession.session import (
    Channel,
    Handshake,
    Limits,
    PathKind,
    Resumption,
    Role,
    SessionClosed,
    SessionConfig,
    SessionEstablished,
    Suite,
)
from didsession.session.keyschedule import (
    SessionParameters,
    derive_secrets,
    dh,
    hkdf_extract,
    next_traffic_secret,
    traffic_key,
    transcript_hash,
)

VECTOR_DIR = Path(__file__).resolve().parent.parent / "spec" / "vectors"
VECTOR_FILES = sorted(VECTOR_DIR.glob("*.json"))


def _config(cfg: dict[str, Any]) -> SessionConfig:
    return SessionConfig(
        versions=tuple(cfg["versions"]),
        suites=tuple(Suite(s) for s in cfg["suites"]),
        paths=tuple(PathKind(p) for p in cfg["paths"]),
        limits=Limits(**cfg["limits"]),
        max_payload=cfg["max_payload"],
    )


def _rand(hexed: str) -> Callable[[int], bytes]:
    pool = bytearray.fromhex(hexed)

    def rand(n: int) -> bytes:
        assert len(pool) >= n, "the implementation drew more randomness than the vector has"
        out = bytes(pool[:n])
        del pool[:n]
        return out

    return rand


def _h(v: str) -> bytes:
    return bytes.fromhex(v)


@pytest.mark.parametrize(
    "vec",
    [json.loads(p.read_text()) for p in VECTOR_FILES],
    ids=[p.stem for p in VECTOR_FILES],
)
def test_vector(vec: dict[str, Any]) -> None:
    assert VECTOR_FILES, "no vectors"
    ini, res = vec["initiator"], vec["responder"]
    keys = {ini["did"]: _h(ini["static_public"]), res["did"]: _h(res["static_public"])}
    resume = (
        Resumption(_h(vec["resume"]["session_id"]), res["did"], _h(vec["resume"]["secret"]))
        if vec["resume"]
        else None
    )
    now = float(vec["now"])

    # -- handshake, initiator role: produces the request, consumes the accept ----------
    initiator = Handshake(
        Role.INITIATOR,
        local_did=ini["did"],
        static_private=_h(ini["static_private"]),
        peer_static_key=keys.__getitem__,
        peer_did=res["did"],
        config=_config(ini["config"]),
        rand=_rand(ini["rand"]),
        ephemeral_private=_h(ini["ephemeral_private"]),
        resume=resume,
    )
    request = initiator.initiate(now)
    assert request.plaintext == _h(vec["request"])
    assert request.to == res["did"]

    # -- handshake, responder role: consumes the request, produces the accept ----------
    responder_resume = Resumption(resume.session_id, ini["did"], resume.secret) if resume else None
    responder = Handshake(
        Role.RESPONDER,
        local_did=res["did"],
        static_private=_h(res["static_private"]),
        peer_static_key=keys.__getitem__,
        config=_config(res["config"]),
        rand=_rand(res["rand"]),
        ephemeral_private=_h(res["ephemeral_private"]),
        resumptions=lambda sid: responder_resume if resume and sid == resume.session_id else None,
    )
    (established_r,) = responder.receive_message(_h(vec["request"]), ini["did"], now)
    (accept,) = responder.messages_to_send()
    assert accept.plaintext == _h(vec["accept"])
    (established_i,) = initiator.receive_message(_h(vec["accept"]), res["did"], now)
    assert isinstance(established_i, SessionEstablished)
    assert isinstance(established_r, SessionEstablished)
    assert established_i.resumed == established_r.resumed == (resume.session_id if resume else None)

    # -- key schedule -------------------------------------------------------------------
    neg = vec["negotiated"]
    params = SessionParameters(
        neg["version"],
        Suite(neg["suite"]),
        PathKind(neg["path"]),
        Limits(**neg["limits"]),
        neg["initiator_max_payload"],
        neg["responder_max_payload"],
    )
    assert dh(_h(ini["ephemeral_private"]), _h(res["ephemeral_public"])) == _h(vec["ee"])
    assert dh(_h(res["static_private"]), _h(ini["ephemeral_public"])) == _h(vec["es"])
    assert dh(_h(res["ephemeral_private"]), _h(ini["static_public"])) == _h(vec["se"])
    th = transcript_hash(
        params,
        initiator_did=ini["did"],
        responder_did=res["did"],
        initiator_static=_h(ini["static_public"]),
        responder_static=_h(res["static_public"]),
        request=_h(vec["request"]),
        accept=_h(vec["accept"]),
    )
    assert th == _h(vec["transcript_hash"])
    rs = _h(vec["resume"]["secret"]) if vec["resume"] else b""
    assert hkdf_extract(th, _h(vec["ee"]) + _h(vec["es"]) + _h(vec["se"]) + rs) == _h(vec["prk"])
    secrets = derive_secrets(th, _h(vec["ee"]), _h(vec["es"]), _h(vec["se"]), rs)
    for name in ("session_id", "i2r_secret", "r2i_secret", "i2r_tag", "r2i_tag", "attach_id"):
        assert getattr(secrets, name) == _h(vec[name]), name
    assert secrets.resumption_secret == _h(vec["resumption_secret"])
    assert traffic_key(secrets.i2r_secret) == _h(vec["i2r_key"])
    assert traffic_key(secrets.r2i_secret) == _h(vec["r2i_key"])

    ch: dict[str, Channel] = {"initiator": initiator.channel, "responder": responder.channel}
    for side in ch.values():
        assert side.params == params
        assert side.transcript_hash == th
        assert side.session_id == _h(vec["session_id"])
        assert side.attach_id == _h(vec["attach_id"])
    assert ch["initiator"].resumption().secret == _h(vec["resumption_secret"])

    # -- frames: the sender role seals, the receiver role opens -------------------------
    i2r_secret, r2i_secret = secrets.i2r_secret, secrets.r2i_secret
    for op in vec["frames"]:
        sender = ch[op["from"]]
        receiver = ch["responder" if op["from"] == "initiator" else "initiator"]
        frame = _h(op["frame"])
        if op["op"] == "data":
            assert sender.seal(_h(op["payload"])) == frame
            assert receiver.open(frame) == _h(op["payload"])
        elif op["op"] in ("rekey", "outbox"):
            if op["op"] == "rekey":
                sender.rekey(request_peer=op["request_update"])
            assert sender.data_to_send() == [frame]
            assert receiver.open(frame) is None
            if op["from"] == "initiator":
                i2r_secret = next_traffic_secret(i2r_secret)
                assert i2r_secret == _h(op["next_secret"])
            else:
                r2i_secret = next_traffic_secret(r2i_secret)
                assert r2i_secret == _h(op["next_secret"])
        elif op["op"] == "close":
            sender.close(op["code"])
            assert sender.data_to_send() == [frame]
            assert receiver.receive(frame)[-1] == SessionClosed(op["code"], by_peer=True)
        else:
            raise AssertionError(f"unknown op {op['op']}")
    assert ch["initiator"].send_epoch == ch["responder"].receive_epoch == 1
    assert ch["responder"].send_epoch == ch["initiator"].receive_epoch == 1
