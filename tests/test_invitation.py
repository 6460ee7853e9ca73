"""Out-of-band invitations: URL/JSON round trip, QR codes decoded by zbarimg, bad input."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Cli
from hypothesis import given, settings
from hypothesis import strategies as st

from didsession.errors import InvitationError
from didsession.identity import Identity
from didsession.invitation import (
    INVITATION_TYPE,
    MAX_INVITATION_BYTES,
    make_invitation,
    parse_invitation,
    read_invitation_source,
)

ZBARIMG = shutil.which("zbarimg")
needs_zbar = pytest.mark.skipif(
    ZBARIMG is None, reason="zbarimg missing: ./run test installs zbar-tools"
)


def _b64(obj: object) -> str:
    return _b64raw(json.dumps(obj).encode())


def _b64raw(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("method", ["peer2", "peer4"])
def test_url_and_json_roundtrip(make_identity: Callable[..., Identity], method: str) -> None:
    ident = make_identity("alice", method=method, mediator="https://m.example/didcomm")
    inv = make_invitation(ident.did, "Alice")
    url = inv.to_url()
    assert "?_oob=" in url
    for form in (url, inv.to_json(), url.encode()):
        got = parse_invitation(form)
        assert got.did == ident.did and got.label == "Alice" and got.id == inv.id
    assert make_invitation(ident.did, "Alice").to_url() == url  # stable for one identity


@needs_zbar
@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_qr_decodes_to_exactly_the_printed_url(
    cli_factory: Callable[[str], Cli], tmp_path: Path, fmt: str
) -> None:
    cli = cli_factory("alice")
    cli("init")
    out = tmp_path / f"i.{fmt}"
    cli("invite", "--format", fmt, "-o", str(out))
    url = cli("invite", "--format", "url").stdout
    decoded = subprocess.run(
        [ZBARIMG, "-q", "--raw", str(out)], capture_output=True, timeout=60, check=True
    ).stdout.decode()
    assert decoded == url  # both end in one newline
    assert decoded.startswith("https://") and "_oob=" in decoded


@needs_zbar
def test_long_peer4_invitation_still_decodes(
    cli_factory: Callable[[str], Cli], tmp_path: Path
) -> None:
    cli = cli_factory("p4")
    cli(
        "init",
        "--method",
        "peer4",
        "--no-mediation",
        "--mediator",
        "https://mediator.example.org/didcomm/v2",
    )
    out = tmp_path / "i.png"
    cli("invite", "--format", "png", "-o", str(out))
    decoded = subprocess.run(
        [ZBARIMG, "-q", "--raw", str(out)], capture_output=True, timeout=60
    ).stdout
    assert decoded.decode() == cli("invite", "--format", "url").stdout


def test_did_doc_format_shows_both_keys(cli_factory: Callable[[str], Cli]) -> None:
    cli = cli_factory("alice")
    cli("init")
    doc = json.loads(cli("invite", "--format", "did-doc").stdout)
    methods = {vm["id"]: vm for vm in doc["verificationMethod"]}
    (auth,) = doc["authentication"]
    (agree,) = doc["keyAgreement"]
    assert methods[auth]["publicKeyMultibase"].startswith("z6Mk")  # Ed25519 multicodec
    assert methods[agree]["publicKeyMultibase"].startswith("z6LS")  # X25519 multicodec


def test_terminal_qr_and_url_by_default(cli_factory: Callable[[str], Cli]) -> None:
    cli = cli_factory("alice")
    cli("init")
    out = cli("invite").stdout
    assert "█" in out or "▀" in out
    assert out.rstrip().splitlines()[-1] == cli("invite", "--format", "url").stdout.strip()


def _valid(did: str) -> dict[str, object]:
    return make_invitation(did, "x").message


BAD_CASES: list[tuple[str, Callable[[str], str], str]] = [
    (
        "wrong type",
        lambda d: (
            "https://x/?_oob="
            + _b64(dict(_valid(d), type="https://didcomm.org/out-of-band/1.1/invitation"))
        ),
        "not an out-of-band 2.0",
    ),
    ("bad base64", lambda d: "https://x/?_oob=%%%###", "base64url"),
    (
        "not json",
        lambda d: "https://x/?_oob=" + base64.urlsafe_b64encode(b"hello").decode(),
        "not valid JSON",
    ),
    (
        "missing from",
        lambda d: "https://x/?_oob=" + _b64({k: v for k, v in _valid(d).items() if k != "from"}),
        "no 'from'",
    ),
    (
        "from not a DID",
        lambda d: (
            _b64(dict(_valid(d), **{"from": "mailto:x"}))
            and json.dumps(dict(_valid(d), **{"from": "mailto:x"}))
        ),
        "unusable",
    ),
    (
        "unresolvable DID",
        lambda d: json.dumps(dict(_valid(d), **{"from": "did:peer:2.Vz6Mkbad"})),
        "unusable",
    ),
    ("no _oob", lambda d: "https://x/?oob=abc", "no _oob"),
    ("oversized", lambda d: "https://x/?_oob=" + "A" * (MAX_INVITATION_BYTES + 1), "limit"),
    ("array", lambda d: "[1,2]", "not valid JSON|JSON object"),
    ("nested", lambda d: "[" * 5000, "not valid JSON"),
    ("nested in a URL", lambda d: "https://x/?_oob=" + _b64raw(b"[" * 3000), "not valid JSON"),
    ("empty", lambda d: "   ", "empty"),
    (
        "neither URL nor JSON",
        lambda d: "not json",
        "neither an invitation URL .* nor invitation JSON",
    ),
    ("URL without _oob", lambda d: "https://example.org/", "no _oob"),
    ("no body", lambda d: json.dumps({k: v for k, v in _valid(d).items() if k != "body"}), "body"),
    ("no id", lambda d: json.dumps({k: v for k, v in _valid(d).items() if k != "id"}), "id"),
]


@pytest.mark.parametrize("name,make,match", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_invitations_are_typed_errors(
    make_identity: Callable[..., Identity], name: str, make: Callable[[str], str], match: str
) -> None:
    did = make_identity("alice").did
    with pytest.raises(InvitationError, match=match):
        parse_invitation(make(did))


def test_cli_refuses_bad_invitation_without_traceback(
    cli_factory: Callable[[str], Cli], tmp_path: Path
) -> None:
    cli = cli_factory("bob")
    cli("init")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    for arg in ("https://x/?_oob=%%%", str(junk), str(tmp_path / "missing.txt")):
        proc = cli("accept", arg, check=False)
        assert proc.returncode == 1
        assert proc.stderr.startswith("didsession: error: ") and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("arg", ["", "  "])
def test_empty_invitation_argument_says_it_is_empty(arg: str) -> None:
    with pytest.raises(InvitationError, match="the invitation argument is empty"):
        read_invitation_source(arg)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400), st.binary(max_size=400)))
def test_random_input_only_invitation_errors(data: str | bytes) -> None:
    try:
        parse_invitation(data)
    except InvitationError:
        pass


_REAL = make_invitation(
    "did:peer:2.Vz6MkoDtyBCrQgtMrofX6sQtthKBBVhj7sWBEjTo8prydXsBX.Ez6LSrfKzL7TdwjNoQVnBCyeHFdR85s9cki37emadDPbVUbJ3",
    "x",
).to_json()


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(_REAL) - 1), char=st.characters(), delete=st.booleans())
def test_mutated_invitations_only_invitation_errors(pos: int, char: str, delete: bool) -> None:
    mutated = _REAL[:pos] + ("" if delete else char) + _REAL[pos + 1 :]
    for form in (
        mutated,
        "https://x/?_oob="
        + base64.urlsafe_b64encode(mutated.encode("utf-8", "surrogatepass")).decode(),
    ):
        try:
            inv = parse_invitation(form)
        except InvitationError:
            continue
        assert inv.message["type"] == INVITATION_TYPE
