"""Interop, both directions, with PyPI didcomm 0.3.2 + peerdid 0.5.2 in their own venv.

The legacy libraries pin pydantic 1 and older typing-extensions, so they live in
``.venv-legacy`` (built here from tests/interop/legacy-requirements.txt, reused while that
file is unchanged) and run as ``tests/interop/legacy_peer.py`` subprocesses.  Every
message crosses as real JWE bytes between the two implementations.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from parties import envelope_for

from didsession.envelope import FORWARD_TYPE, new_message, parse_forward
from didsession.identity import Identity, Store

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "tests" / "interop" / "legacy-requirements.txt"
PEER = ROOT / "tests" / "interop" / "legacy_peer.py"
LEGACY_VENV = Path(os.environ.get("DIDSESSION_LEGACY_VENV", ROOT / ".venv-legacy"))
BASIC = "https://didcomm.org/basicmessage/2.0/message"
run = asyncio.run

pytestmark = pytest.mark.slow


def _base_python() -> str:
    """The interpreter our venv was made from (a venv's python cannot make a clean venv)."""
    for cand in (
        Path(sys.base_prefix) / "bin" / "python3",
        Path(sys.base_prefix) / "bin" / "python",
    ):
        if cand.exists():
            return str(cand)
    return sys.executable


@pytest.fixture(scope="session")
def legacy_python() -> Path:
    py = LEGACY_VENV / "bin" / "python"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = LEGACY_VENV / ".requirements-sha256"
    if not py.exists() or not stamp.exists() or stamp.read_text() != want:
        subprocess.run([_base_python(), "-m", "venv", "--clear", str(LEGACY_VENV)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            check=True,
            timeout=600,
        )
        subprocess.run([str(py), "-m", "pip", "check"], check=True)
        stamp.write_text(want)
    return py


class Legacy:
    """One party on the legacy libraries (its state file holds DID and JWK secrets)."""

    def __init__(self, python: Path, state: Path, service_uri: str | None = None) -> None:
        self.python, self.state = python, state
        args = ["new", "--state", str(state)]
        if service_uri:
            args += ["--service-uri", service_uri]
        self.did: str = self._run(args)["did"]

    def _run(self, args: list[str], stdin: str | None = None) -> Any:
        proc = subprocess.run(
            [str(self.python), str(PEER), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"legacy peer {args[0]} failed: {proc.stderr}"
        return json.loads(proc.stdout)

    def pack(
        self,
        message: dict[str, Any],
        to: str,
        *,
        anon: bool = False,
        enc: str | None = None,
        forward: bool = False,
    ) -> str:
        args = ["pack", "--state", str(self.state), "--to", to]
        if anon:
            args.append("--anon")
        if enc:
            args += ["--anon-enc", enc]
        if forward:
            args.append("--forward")
        return str(self._run(args, json.dumps(message))["packed"])

    def unpack(self, packed: bytes | str) -> Any:
        text = packed.decode() if isinstance(packed, bytes) else packed
        return self._run(["unpack", "--state", str(self.state)], text)


@pytest.fixture
def legacy(legacy_python: Path, tmp_path: Path) -> Legacy:
    return Legacy(legacy_python, tmp_path / "legacy.json", "http://127.0.0.1:9001/didcomm")


@pytest.fixture
def ours(tmp_path: Path) -> Identity:
    return Store(tmp_path / "ours").create("ours", mediator="http://127.0.0.1:9002/didcomm")


def test_a_legacy_authcrypt_to_us(legacy: Legacy, ours: Identity) -> None:
    msg = new_message(BASIC, {"content": "a"}, frm=legacy.did, to=[ours.did])
    got = run(envelope_for(ours).unpack(legacy.pack(msg, ours.did)))
    assert got.message["body"] == {"content": "a"}
    assert got.authenticated and got.sender_did == legacy.did


@pytest.mark.parametrize("enc", ["XC20P", "A256CBC-HS512", "A256GCM"])
def test_b_legacy_anoncrypt_to_us(legacy: Legacy, ours: Identity, enc: str) -> None:
    msg = new_message(BASIC, {"content": f"b-{enc}"}, to=[ours.did])
    got = run(envelope_for(ours).unpack(legacy.pack(msg, ours.did, anon=True, enc=enc)))
    assert got.message["body"] == {"content": f"b-{enc}"} and not got.authenticated


def test_c_our_authcrypt_to_legacy(legacy: Legacy, ours: Identity) -> None:
    msg = new_message(BASIC, {"content": "c"}, frm=ours.did, to=[legacy.did])
    packed = run(envelope_for(ours).pack(msg, to=legacy.did, frm=ours.did))
    got = legacy.unpack(packed.data)
    assert got["message"]["body"] == {"content": "c"}
    assert got["authenticated"] and got["sender_kid"].startswith(ours.did + "#")


def test_d_our_anoncrypt_to_legacy(legacy: Legacy, ours: Identity) -> None:
    msg = new_message(BASIC, {"content": "d"}, to=[legacy.did])
    packed = run(envelope_for(ours).pack(msg, to=legacy.did))
    got = legacy.unpack(packed.data)
    assert got["message"]["body"] == {"content": "d"}
    assert (
        not got["authenticated"]
        and got["enc_alg"]
        and "A256CBC-HS512" in json.dumps(got["enc_alg"])
    )


def test_e_our_forward_through_legacy_mediator(
    legacy_python: Path, tmp_path: Path, ours: Identity
) -> None:
    mediator = Legacy(legacy_python, tmp_path / "med.json", "http://127.0.0.1:9100/didcomm")
    recipient = Legacy(legacy_python, tmp_path / "r.json", mediator.did)
    ours_behind = Store(tmp_path / "o2").create("o2", mediator=mediator.did)
    env = envelope_for(ours)
    for final, opener in ((recipient.did, recipient.unpack), (ours_behind.did, None)):
        msg = new_message(BASIC, {"content": "e"}, frm=ours.did, to=[final])
        packed = run(env.pack(msg, to=final, frm=ours.did))
        assert packed.forwarded and packed.endpoint == "http://127.0.0.1:9100/didcomm"
        outer = mediator.unpack(packed.data)
        assert outer["message"]["type"] == FORWARD_TYPE and outer["forward"]["next"] == final
        inner = outer["forward"]["forwarded"]
        if opener is not None:
            got = opener(inner)
            assert got["message"]["body"] == {"content": "e"} and got["authenticated"]
        else:
            mine = run(envelope_for(ours_behind).unpack(inner))
            assert mine.message["body"] == {"content": "e"} and mine.sender_did == ours.did


def test_f_legacy_forward_to_us_through_our_parsing(
    legacy_python: Path, tmp_path: Path, legacy: Legacy
) -> None:
    # the legacy side wraps for a mediator of ours; we open the forward and then the inner message
    med = Store(tmp_path / "m").create("m", mediator="http://127.0.0.1:9200/didcomm")
    final = Store(tmp_path / "f").create("f", mediator=med.did)
    msg = new_message(BASIC, {"content": "f"}, frm=legacy.did, to=[final.did])
    packed = legacy.pack(msg, final.did, forward=True)
    outer = run(envelope_for(med).unpack(packed))
    nxt, inner = parse_forward(outer.message)
    assert nxt == final.did
    got = run(envelope_for(final).unpack(inner))
    assert got.message["body"] == {"content": "f"} and got.sender_did == legacy.did


def test_reply_to_legacy_sender_uses_its_dialect(legacy: Legacy, ours: Identity) -> None:
    env = envelope_for(ours)
    hello = new_message(BASIC, {"content": "hello"}, frm=legacy.did, to=[ours.did])
    run(env.unpack(legacy.pack(hello, ours.did)))
    reply = new_message(BASIC, {"content": "reply"}, frm=ours.did, to=[legacy.did])
    got = legacy.unpack(run(env.pack(reply, to=legacy.did, frm=ours.did)).data)
    assert got["message"]["body"] == {"content": "reply"} and got["authenticated"]
