"""The didsession CLI end to end, as subprocesses: happy paths, --json, and clean errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Cli


def test_help_teaches(cli_factory: Callable[[str], Cli]) -> None:
    cli = cli_factory("x")
    out = cli("--help").stdout
    for word in ("init", "invite", "accept", "pack", "unpack", "examples:"):
        assert word in out
    assert "--format" in cli("invite", "--help").stdout


def test_init_whoami_json(cli_factory: Callable[[str], Cli]) -> None:
    cli = cli_factory("alice")
    made = json.loads(cli("init", "--name", "alice", "--json").stdout)
    who = json.loads(cli("whoami", "--json").stdout)
    assert who["did"] == made["did"] and who["name"] == "alice" and who["default"]
    secret = cli.home / "identities" / "alice" / "secret.json"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_peer4_whoami_shows_short_form(cli_factory: Callable[[str], Cli]) -> None:
    cli = cli_factory("p4")
    cli("init", "--method", "peer4")
    who = json.loads(cli("whoami", "--json").stdout)
    assert (
        who["did"].startswith("did:peer:4zQm")
        and who["short_did"] == who["did"].split(":z")[0] + ""
    )
    # the short form resolves because the long form is known locally
    doc = json.loads(cli("resolve", who["short_did"], "--json").stdout)
    assert doc["id"] == who["short_did"]


def test_invite_accept_pack_unpack_both_ways(cli_factory: Callable[[str], Cli]) -> None:
    alice, bob = cli_factory("alice"), cli_factory("bob")
    alice("init", "--name", "alice")
    bob("init", "--name", "bob", "--method", "peer4")
    bob("accept", alice("invite", "--format", "url").stdout.strip())
    alice("accept", bob("invite", "--format", "json").stdout, "--alias", "bobby")
    contacts = json.loads(alice("contacts", "--json").stdout)
    assert [c["alias"] for c in contacts] == ["bobby"]

    packed = alice("pack", "--to", "bobby", stdin=b"hello bob").stdout_bytes  # type: ignore[attr-defined]
    got = json.loads(bob("unpack", "--json", stdin=packed).stdout)
    assert got["message"]["body"]["content"] == "hello bob"
    assert got["authenticated"] and got["sender_contact"] == "alice"

    msg = {"id": "m1", "type": "https://example.org/ping/1.0/ping", "body": {"n": 1}}
    packed = bob("pack", "--to", "alice", "--anon", stdin=json.dumps(msg).encode()).stdout_bytes  # type: ignore[attr-defined]
    got = json.loads(alice("unpack", "--json", stdin=packed).stdout)
    assert got["message"]["body"] == {"n": 1} and got["sender"] is None


def test_encrypted_identity_needs_passphrase(
    cli_factory: Callable[[str], Cli], tmp_path: Path
) -> None:
    cli = cli_factory("enc")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cli("init", "--encrypt", "--passphrase-file", str(pw))
    other = cli_factory("other")
    other("init")
    other("accept", cli("invite", "--format", "url").stdout.strip(), "--alias", "enc")
    packed = other("pack", "--to", "enc", stdin=b"x").stdout_bytes  # type: ignore[attr-defined]
    denied = cli("unpack", stdin=packed, check=False)
    assert denied.returncode == 1 and "passphrase" in denied.stderr
    ok = cli("unpack", "--json", "--passphrase-file", str(pw), stdin=packed)
    assert json.loads(ok.stdout)["message"]["body"]["content"] == "x"


@pytest.mark.parametrize(
    "args,stdin,needle",
    [
        (["whoami"], None, "didsession init"),
        (["resolve", "did:peer:2.Vz6Mkbad"], None, "undecodable key"),
        (["resolve", "did:example:123"], None, "not supported"),
        (["unpack"], b"garbage", "not JSON"),
        (["unpack"], b'{"protected": 1}', "not a DIDComm encrypted message"),
        (["pack", "--to", "nobody"], b"x", "no contact"),
        (["accept", "-"], b"https://x/?_oob=eyJ0eXBlIjoxfQ", "out-of-band"),
        (["init", "--name", "../evil"], None, "invalid"),
        (["init", "--mediator", "ftp://x"], None, "--mediator"),
    ],
)
def test_errors_are_one_line_without_traceback(
    cli_factory: Callable[[str], Cli], args: list[str], stdin: bytes | None, needle: str
) -> None:
    cli = cli_factory("err")
    if args[0] in ("unpack", "pack", "accept"):
        cli("init")
    proc = cli(*args, stdin=stdin, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("didsession: error: ") and proc.stderr.count("\n") == 1
    assert needle in proc.stderr


def test_usage_error_exits_2(cli_factory: Callable[[str], Cli]) -> None:
    proc = cli_factory("u")("invite", "--format", "gif", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def _demo_env(tmp: Path) -> dict[str, str]:
    """The demo's temporary directory goes under ``tmp``, to see that it is removed."""
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop("DIDSESSION_HOME", None)
    return env


def test_demo_runs_and_summarises_as_json(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    proc = subprocess.run(
        [sys.executable, "-m", "didsession.cli", "demo", "--json"],
        capture_output=True,
        env=_demo_env(tmp),
        timeout=120,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    # The progress went to stderr...
    assert "Done in" in err
    assert "sender authenticated: True" in err
    # the MPyC computation ran over sessions and every party agrees on the result
    assert err.count("sum of the inputs: 158") >= 3
    assert "Nothing was computed" in err  # the mismatching program was refused
    # ...and stdout is one JSON document.
    summary = json.loads(proc.stdout)
    assert summary["printed"] == ["sum of the inputs: 158", "maximum: 99, held by party 2"]
    santa = summary["secret_santa"]
    assert sorted(santa) == sorted(santa.values()) == ["alice", "bob", "carol"]
    assert all(giver != taker for giver, taker in santa.items())
    assert len(summary["links"]) == 6 and summary["messages"] >= summary["records"] > 0
    assert {row["path"] for row in summary["links"]} <= {"direct", "relay"}
    # carol has no address: her links start on the relay; alice's and bob's are direct
    for row in summary["links"]:
        assert row["started"] == ("relay" if 2 in (row["party"], row["peer"]) else "direct")
    assert 0 < summary["overhead_per_message"] <= 28
    assert summary["mismatch_refused"] is True
    assert list(tmp.iterdir()) == []  # its temporary directory is gone


def test_demo_help_offers_only_what_it_uses(cli_factory: Callable[[str], Cli]) -> None:
    out = cli_factory("h")("demo", "--help").stdout
    assert "--json" in out and "--keep" in out
    assert "--home" not in out and "--passphrase-file" not in out


def test_demo_cleans_up_when_terminated(tmp_path: Path) -> None:
    """SIGTERM while the MPyC parties run: the demo stops them and its mediator and removes
    its temporary directory, as it does on Ctrl-C."""
    tmp = tmp_path / "tmp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "didsession.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_demo_env(tmp),
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(
        target=lambda: lines.extend(raw.decode(errors="replace") for raw in proc.stdout),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any("[carol] " in ln for ln in lines):  # the parties are running
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        made = list(tmp.iterdir())
        assert len(made) == 1  # the demo's directory, while it runs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5)
    out = "".join(lines)
    assert "didsession: interrupted" in out and "Traceback" not in out
    assert list(tmp.iterdir()) == []
    # No party or mediator of the demo is left: each had the directory on its command line.
    deadline = time.monotonic() + 10
    while True:
        left = subprocess.run(["pgrep", "-f", str(made[0])], capture_output=True, text=True)
        if not left.stdout.strip():
            break
        assert time.monotonic() < deadline, f"left running: {left.stdout}"
        time.sleep(0.1)


def _alice_knows_bob(cli_factory: Callable[[str], Cli]) -> Cli:
    alice, bob = cli_factory("alice"), cli_factory("bob")
    alice("init", "--name", "alice")
    bob("init", "--name", "bob")
    alice("accept", bob("invite", "--format", "url").stdout.strip())
    return alice


def _clean_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("didsession: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_listen_on_a_taken_port_or_bad_address_is_a_clean_error(
    cli_factory: Callable[[str], Cli],
) -> None:
    alice = _alice_knows_bob(cli_factory)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = alice("listen", "--port", str(port), check=False)
    _clean_error(proc, f"cannot listen on 127.0.0.1:{port}: address already in use")
    _clean_error(alice("listen", "--port", "99999", check=False), "--port must be 0..65535")
    # TEST-NET-1: no interface of this host has it
    proc = alice("listen", "--host", "192.0.2.1", "--port", "0", check=False)
    _clean_error(proc, "cannot listen on 192.0.2.1:0: ")


def test_invite_json_is_one_object(cli_factory: Callable[[str], Cli], tmp_path: Path) -> None:
    cli = cli_factory("alice")
    did = json.loads(cli("init", "--name", "alice", "--json").stdout)["did"]
    doc = json.loads(cli("invite", "--json").stdout)
    assert doc["did"] == did and doc["invitation"]["from"] == did
    assert doc["url"] == cli("invite", "--format", "url").stdout.strip()
    cli("invite", "--json", "-o", str(tmp_path / "inv.json"))
    assert json.loads((tmp_path / "inv.json").read_text()) == doc


def test_pack_json_honours_output(cli_factory: Callable[[str], Cli], tmp_path: Path) -> None:
    alice = _alice_knows_bob(cli_factory)
    out = tmp_path / "p2.json"
    proc = alice("pack", "--to", "bob", "-o", str(out), "--json", stdin=b"hi")
    assert proc.stdout == ""
    doc = json.loads(out.read_text())
    assert set(doc) == {"packed", "endpoint", "forwarded"} and "ciphertext" in doc["packed"]


def test_init_in_an_impossible_home_is_a_clean_error(
    cli_factory: Callable[[str], Cli], tmp_path: Path
) -> None:
    cli = cli_factory("x")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    proc = cli("init", "--home", str(a_file), check=False)
    _clean_error(proc, f"cannot create home {a_file}: it is not a directory")
    below = a_file / "home"
    _clean_error(cli("init", "--home", str(below), check=False), f"cannot create home {below}: ")


def test_key_file_readable_by_others_is_used_with_one_warning(
    cli_factory: Callable[[str], Cli],
) -> None:
    alice = _alice_knows_bob(cli_factory)
    secret = alice.home / "identities" / "alice" / "secret.json"
    secret.chmod(0o644)
    proc = alice("pack", "--to", "bob", stdin=b"hi")
    assert json.loads(proc.stdout)["ciphertext"]
    warning = (
        f"didsession: warning: key file {secret} is readable by other users (mode 0644); "
        f"protect it with 'chmod 600 {secret}'\n"
    )
    assert proc.stderr == warning
    assert stat.S_IMODE(secret.stat().st_mode) == 0o644  # warned about, not changed
    secret.chmod(0o600)
    assert alice("pack", "--to", "bob", stdin=b"hi").stderr == ""


@pytest.mark.parametrize(
    "args,stdin,needle",
    [
        (["accept", "-"], b"not json\n", "neither an invitation URL (…?_oob=…) nor invitation"),
        (["accept", ""], None, "the invitation argument is empty"),
        (["accept", " "], None, "the invitation argument is empty"),
    ],
)
def test_accept_says_what_is_wrong_with_the_input(
    cli_factory: Callable[[str], Cli], args: list[str], stdin: bytes | None, needle: str
) -> None:
    cli = cli_factory("bob")
    cli("init")
    proc = cli(*args, stdin=stdin, check=False)
    _clean_error(proc, needle)
    assert "_oob parameter" not in proc.stderr and "directory" not in proc.stderr


def test_help_shows_the_mpyc_workflow_and_every_option(cli_factory: Callable[[str], Cli]) -> None:
    cli = cli_factory("h")
    top = cli("--help").stdout
    for text in ("roster make -o roster.json", "roster show", "--didcomm roster.json", "demo"):
        assert text in top
    assert "didsession status" in top
    assert "fingerprint" in cli("roster", "show", "--help").stdout
    assert "JSON" in cli("roster", "make", "--help").stdout.split("positional arguments:")[1]
    pack = cli("pack", "--help").stdout
    assert "recipient" in pack and "instead of stdout" in pack
