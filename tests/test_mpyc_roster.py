"""Rosters (format, validation, ``didsession roster``), party identities and program records."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from didsession.errors import ConfigError, IdentityError, RemoteProtocolError
from didsession.identity import Store
from didsession.tcp_liveness import gone, keep_alive, silence
from mpyc_adapter import hook
from mpyc_adapter.agreement import Program, differences
from mpyc_adapter.hook import normalize_argv, our_options, wanted
from mpyc_adapter.party import load_identity
from mpyc_adapter.paths import PathKind, choose_path
from mpyc_adapter.roster import (
    Party,
    Roster,
    load_roster,
    parse_addr,
    roster_from_invitations,
)


@pytest.fixture(scope="module")
def dids(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    home = tmp_path_factory.mktemp("dids")
    store = Store(home)
    return [store.create(f"p{i}").did for i in range(3)]


def doc(dids: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "didsession-mpyc-roster",
        "version": 1,
        "parties": [{"did": d, "label": f"p{i}"} for i, d in enumerate(dids)],
        **extra,
    }


def test_round_trip_and_fingerprint(tmp_path: Path, dids: list[str]) -> None:
    roster = Roster(
        (Party(dids[0], "a", ("127.0.0.1", 9000)), Party(dids[1]), Party(dids[2], "c", ("::1", 9)))
    )
    path = tmp_path / "roster.json"
    roster.save(path)
    again = load_roster(path)
    assert again == roster
    assert json.loads(path.read_text())["parties"][2]["addr"] == "[::1]:9"
    assert again.index(dids[1]) == 1 and again.index("did:example:nobody") is None
    # The fingerprint covers DIDs, order and policy, not labels or addresses.
    assert Roster(tuple(replace(p, label=None, addr=None) for p in roster.parties)).fingerprint == (
        roster.fingerprint
    )
    swapped = Roster((roster.parties[1], roster.parties[0], roster.parties[2]))
    assert swapped.fingerprint != roster.fingerprint


def test_unknown_members_are_ignored(dids: list[str]) -> None:
    d = doc(dids, future={"x": 1})
    d["parties"][0]["color"] = "blue"
    assert len(Roster.from_json(d)) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "roster version 2 is not supported"),
        (lambda d: d.update(version="1"), "'version' must be an integer"),
        (lambda d: d.update(type="x"), "'type' must be"),
        (lambda d: d.update(parties=[]), "no parties"),
        (lambda d: d.update(parties="x"), "'parties' must be a list"),
        (lambda d: d["parties"].append(dict(d["parties"][0])), "parties 0 and 3 have the same DID"),
        (lambda d: d["parties"][1].update(did="not a did"), "party 1: not a DID"),
        (lambda d: d["parties"][1].update(did="did:example:x"), "party 1's DID cannot be used"),
        (lambda d: d["parties"][2].update(addr="host"), "party 2: address 'host' is not host:port"),
        (lambda d: d["parties"][2].update(addr="h:70000"), "port out of range"),
        (lambda d: d["parties"][0].update(label=7), "'label' must be text"),
        (lambda d: d.update(relay_only="yes"), "'relay_only' must be true or false"),
        (lambda d: d.update(relay_only=True), "relay_only needs a mediator"),
        (lambda d: d.update(mediator=3), "'mediator' must be"),
        (lambda d: d.update(mediator="not a url"), "is not a mediator URL, invitation or DID"),
        (lambda d: d.update(mediator="http://"), "is not a mediator URL"),
        (
            lambda d: [d["parties"][i].update(addr="127.0.0.1:7000") for i in (0, 2)],
            "parties 0 and 2 have the same address 127.0.0.1:7000",
        ),
    ],
)
def test_bad_rosters_are_refused_with_what_is_wrong(
    dids: list[str], change: Callable[[dict[str, Any]], None], message: str
) -> None:
    d = doc(dids)
    change(d)
    with pytest.raises(ConfigError, match=message):
        Roster.from_json(d)


def test_unreadable_roster_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read roster"):
        load_roster(tmp_path / "missing.json")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)  # json's RecursionError, not a traceback
    with pytest.raises(ConfigError, match="not valid JSON: JSON nested deeper"):
        load_roster(deep)
    deep.write_text("[" * 100 + "]" * 100)
    with pytest.raises(ConfigError, match="not valid JSON: JSON nested deeper"):
        load_roster(deep)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_roster(tmp_path / "bad.json")


def test_parse_addr() -> None:
    assert parse_addr("example.org:80") == ("example.org", 80)
    assert parse_addr("[2001:db8::1]:443") == ("2001:db8::1", 443)
    for bad in ("2001:db8::1:443", ":80", "h:", "[x]:1"):
        with pytest.raises(ConfigError):
            parse_addr(bad)


def test_paths_follow_the_roster(dids: list[str]) -> None:
    parties = (Party(dids[0], addr=("127.0.0.1", 1)), Party(dids[1]), Party(dids[2]))
    assert choose_path(Roster(parties), 0, 1) is PathKind.DIRECT  # MPyC's default address
    with_mediator = Roster(parties, mediator="http://127.0.0.1:1")
    assert choose_path(with_mediator, 0, 1) is PathKind.RELAY  # party 1 has no address
    assert choose_path(with_mediator, 1, 2) is PathKind.RELAY
    parties = (Party(dids[0]), Party(dids[1], addr=("127.0.0.1", 2)))
    assert choose_path(Roster(parties, mediator="http://m"), 0, 1) is PathKind.DIRECT
    assert (
        choose_path(Roster(parties, mediator="http://m", relay_only=True), 0, 1) is PathKind.RELAY
    )


def test_this_party_is_the_identity_in_the_roster(tmp_path: Path) -> None:
    stores = [Store(tmp_path / f"h{i}") for i in range(3)]
    idents = [s.create(f"p{i}") for i, s in enumerate(stores)]
    roster = Roster(tuple(Party(i.did) for i in idents))
    ident, pid = load_identity(roster, home=tmp_path / "h2")
    assert (ident.did, pid) == (idents[2].did, 2) and ident.unlocked
    with pytest.raises(IdentityError, match=r"no identity .* has party 0's DID"):
        load_identity(roster, home=tmp_path / "h2", index=0)
    stores[2].create("other")  # not in the roster: ignored
    assert load_identity(roster, home=tmp_path / "h2")[1] == 2
    outsider = Store(tmp_path / "x")
    outsider.create("evil")
    with pytest.raises(IdentityError, match="has a DID of the roster; it holds: evil"):
        load_identity(roster, home=tmp_path / "x")
    with pytest.raises(ConfigError, match="-I 5"):
        load_identity(roster, home=tmp_path / "h2", index=5)


def test_roster_from_invitations_and_the_cli(
    tmp_path: Path, cli_factory: Callable[[str], Any]
) -> None:
    urls = []
    for name in ("alice", "bob"):
        cli = cli_factory(name)
        cli("init", "--name", name)
        urls.append(cli("invite", "--format", "url").stdout.strip())
    (tmp_path / "bob.txt").write_text(urls[1])
    roster = roster_from_invitations([urls[0], str(tmp_path / "bob.txt")], addrs=["h:1"])
    assert [p.label for p in roster.parties] == ["alice", "bob"]
    assert roster.parties[0].addr == ("h", 1) and roster.parties[1].addr is None

    cli = cli_factory("alice")
    out = tmp_path / "r.json"
    made = cli("roster", "make", "-o", str(out), urls[0], urls[1], "--addr", "127.0.0.1:7000")
    assert "2 parties" in made.stdout
    shown = cli("roster", "show", str(out))
    assert "0: did:peer:2." in shown.stdout and "127.0.0.1:7000" in shown.stdout
    as_json = json.loads(cli("roster", "show", str(out), "--json").stdout)
    assert as_json["fingerprint"] == load_roster(out).fingerprint
    bad = cli("roster", "make", "-o", str(out), urls[0], urls[0], check=False)
    assert bad.returncode == 1 and "have the same DID" in bad.stderr
    # What every reader would refuse is not written in the first place.
    for extra in (["--mediator", ""], ["--mediator", "nowhere"], ["--addr", "h:1"] * 2):
        bad = cli("roster", "make", "-o", str(tmp_path / "x.json"), *urls, *extra, check=False)
        assert bad.returncode == 1 and bad.stderr.startswith("didsession: error: roster:")
        assert not (tmp_path / "x.json").exists()
    made_json = json.loads(
        cli("roster", "make", "--json", "-o", str(tmp_path / "j.json"), *urls).stdout
    )
    assert made_json["fingerprint"] == load_roster(tmp_path / "j.json").fingerprint
    assert made_json["file"] == str(tmp_path / "j.json") and len(made_json["parties"]) == 2
    assert "--passphrase-file" not in cli("roster", "make", "--help").stdout
    bad = cli("roster", "make", "-o", str(out), "not-an-invitation", check=False)
    assert bad.returncode == 1 and "invitation 1" in bad.stderr


def program(**changes: Any) -> Program:
    base = Program(
        party=0,
        parties=3,
        threshold=1,
        bit_length=32,
        sec_param=30,
        no_prss=False,
        mix32_64bit=False,
        script_name="prog.py",
        script_sha256="ab" * 32,
        args=("10",),
        roster="cd" * 32,
        mpyc="0.11",
        session="1.0",
    )
    return replace(base, **changes)


def test_program_records_round_trip_and_name_what_differs() -> None:
    ours = program()
    assert Program.decode(ours.encode()) == ours
    assert differences(ours, program(party=2, script_name="other.py")) == []
    theirs = program(script_sha256="ef" * 32, args=("20",), bit_length=64)
    keys = [k for k, _ in differences(ours, theirs)]
    assert keys == ["script", "L", "args"]
    text = "; ".join(t for _, t in differences(ours, theirs))
    assert "bit length -L (32 here, 64 there)" in text and "program arguments (10 here, 20" in text
    assert [k for k, _ in differences(ours, program(args=None))] == ["private-args"]
    assert differences(program(args=None), program(args=None)) == []


@pytest.mark.parametrize(
    "data", [b"hello", b"didsession-mpyc/agreement/1\n{", b"didsession-mpyc/agreement/1\n{}"]
)
def test_foreign_records_are_refused(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Program.decode(data)
    assert info.value.code == "e.p.mpyc.agreement"


def test_argument_handling() -> None:
    assert wanted(["p.py", "--didcomm", "r.json"]) and wanted(["p.py", "-H"])
    assert wanted(["p.py", "--didcomm-home=h"])  # any --didcomm... option wakes the hook
    assert not wanted(["p.py", "-M3"])
    # A bare --didcomm before a program argument is local mode, not roster "200".
    assert normalize_argv(["-M3", "--didcomm", "200"]) == ["-M3", "--didcomm=", "200"]
    assert normalize_argv(["--didcomm", "r.json", "5"]) == ["--didcomm", "r.json", "5"]
    ours, rest = our_options(["-M3", "--didcomm", "200", "--didcomm-private-args", "-T", "1"])
    assert ours.didcomm == "" and ours.didcomm_private_args
    assert rest == ["-M3", "200", "-T", "1"]


def test_our_start_up_runs_with_the_collector_paused_and_mpyc_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, bool]] = []

    def before() -> str:
        seen.append(("ours, before", gc.isenabled()))
        return "plan"

    def after(module: ModuleType, plan: str) -> None:
        seen.append(("ours, after", gc.isenabled()))

    class MPyC:
        def exec_module(self, module: ModuleType) -> None:
            seen.append(("mpyc.runtime", gc.isenabled()))

    monkeypatch.setattr(hook, "_before_runtime", before)
    monkeypatch.setattr(hook, "_after_runtime", after)
    loader = hook._RuntimeLoader(MPyC())
    assert gc.isenabled()
    loader.exec_module(ModuleType("mpyc.runtime"))
    assert seen == [("ours, before", False), ("mpyc.runtime", True), ("ours, after", False)]
    assert gc.isenabled()

    # A collector the program turned off stays off.
    seen.clear()
    gc.disable()
    try:
        loader.exec_module(ModuleType("mpyc.runtime"))
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert [on for _, on in seen] == [False, False, False]

    # A start-up that stops the party (a bad roster: SystemExit) leaves it running again.
    def refuse() -> str:
        raise SystemExit(1)

    monkeypatch.setattr(hook, "_before_runtime", refuse)
    with pytest.raises(SystemExit):
        loader.exec_module(ModuleType("mpyc.runtime"))
    assert gc.isenabled()


def test_direct_paths_get_keepalive_and_report_silence() -> None:
    """keep_alive tunes the kernel's keepalive so that an idle connection whose peer's
    machine went quiet fails ~timeout s later (first probe at half, then every eighth);
    silence reads the kernel's view of the peer; gone needs data in flight unanswered."""

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = writer.transport
        assert keep_alive(transport, 60)
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        tuned = [
            sock.getsockopt(socket.IPPROTO_TCP, opt)
            for opt in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
        ]
        assert tuned == [30, 8, 4]
        quiet = silence(transport)
        assert quiet is not None and quiet[0] < 5 and quiet[1:] == (0, 0)
        assert not gone(quiet, 60)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())

    class NoSocket(asyncio.Transport):
        pass

    assert not keep_alive(NoSocket(), 60) and silence(NoSocket()) is None
    assert gone((61.0, 1, 0), 60)
    assert gone((61.0, 0, 2), 60)  # two window (or keepalive) probes unanswered
    assert not gone((61.0, 0, 1), 60)  # one outstanding: a live peer answers it soon
    assert not gone((61.0, 0, 0), 60)  # nothing in flight (idle, or the peer's window full)
    assert not gone((59.0, 3, 3), 60)
    assert not gone(None, 60) and not gone((1e9, 1, 2), 0)
