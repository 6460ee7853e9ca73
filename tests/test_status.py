"""`didsession status`: status files, their reader, the table, and two real processes."""

from __future__ import annotations

import asyncio
import json
import math
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from session_pair import ALICE, BOB, make_handshakes

from didsession.cli import main
from didsession.errors import ConfigError
from didsession.identity import Store
from didsession.session.stream import Session, accept_session, open_session
from didsession.status import (
    SessionStatus,
    StatusBoard,
    load_status,
    path_entry,
    publish_session,
    read_statuses,
    render_table,
    status_dir,
    with_path_info,
)

SID = "00112233445566778899aabbccddeeff"


def make_status(**changes: Any) -> SessionStatus:
    base = SessionStatus(
        pid=os.getpid(),
        program="connect",
        local_did="did:peer:2.Ez6LSlocal",
        peer_did="did:peer:2.Ez6LSpeerpeerpeerpeerpeer",
        session_id=SID,
        role="initiator",
        state="open",
        started=1000.0,
        updated=1000.0,
        path="direct",
        local="127.0.0.1:40000",
        remote="127.0.0.1:7800",
        bytes_sent=2048,
        bytes_received=100,
        frames_sent=3,
        frames_received=2,
        rekeys=1,
        paths=[
            {
                "kind": "direct",
                "local": "127.0.0.1:40000",
                "remote": "127.0.0.1:7800",
                "state": "active",
                "rtt_ms": 0.25,
            }
        ],
    )
    return replace(base, **changes)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


# -- the status object ------------------------------------------------------------------


def test_status_round_trips_through_json() -> None:
    status = make_status(rtt_ms=1.5, upgrades=1, fallbacks=2, relay_only=True)
    data = json.loads(json.dumps(status.to_json()))
    assert data["version"] == 1
    assert SessionStatus.from_json(data) == status
    # a newer writer's extra keys are ignored, a missing optional value is None
    data.update(future_field={"x": 1}, rtt_ms=None)
    assert SessionStatus.from_json(data) == replace(status, rtt_ms=None)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"version": 2}, "version"),
        ({"pid": None}, "pid"),
        ({"bytes_sent": True}, "bytes_sent"),
        ({"bytes_sent": -1}, "bytes_sent"),
        ({"frames_sent": 1.5}, "frames_sent"),
        ({"started": "yesterday"}, "started"),
        ({"program": "x\x1b]0;pwned\x07"}, "control"),
        ({"peer_did": "not a did"}, "DID"),
        ({"peer_did": "did:" + "x" * 9000}, "peer_did"),
        ({"session_id": "../../etc"}, "session_id"),
        ({"state": "OPEN; rm -rf"}, "state"),
        ({"paths": "direct"}, "paths"),
        ({"paths": [{"kind": "direct"}]}, "paths[0].state"),
        ({"paths": [{}] * 33}, "paths"),
        ({"relay_only": "yes"}, "relay_only"),
    ],
)
def test_from_json_rejects_bad_fields(change: dict[str, Any], why: str) -> None:
    data = make_status().to_json()
    data.update(change)
    with pytest.raises(ConfigError, match=why.replace("[", r"\[").replace("]", r"\]")):
        SessionStatus.from_json(data)
    with pytest.raises(ConfigError):
        SessionStatus.from_json([data])
    missing = make_status().to_json()
    del missing["peer_did"]
    with pytest.raises(ConfigError, match="missing"):
        SessionStatus.from_json(missing)


def test_path_entry_normalizes_multipath_descriptions() -> None:
    entry = path_entry(
        {
            "id": 3,
            "kind": "relay",
            "state": "verified",
            "active": True,
            "rtt_ms": 12,
            "bytes_in": 10,
            "bytes_out": 20,
            "reason": None,
            "local": ("::1", 5000, 0, 0),
            "remote": "wss://mediator.example/relay",
        }
    )
    assert entry == {
        "kind": "relay",
        "local": "[::1]:5000",
        "remote": "wss://mediator.example/relay",
        "state": "active",
        "rtt_ms": 12.0,
        "active": True,
        "bytes_in": 10,
        "bytes_out": 20,
        "reason": None,
    }
    status = make_status(paths=[entry])
    assert SessionStatus.from_json(status.to_json()) == status


def test_with_path_info_takes_a_multipath_transport_status() -> None:
    # the shape of MultipathTransport.status(): the relay first, then upgraded to direct
    info: dict[str, object] = {
        "path": "direct",
        "local": ("10.0.0.2", 40000),
        "remote": ("198.51.100.7", 7800),
        "rtt_ms": 3.5,
        "upgrades": 1,
        "fallbacks": 0,
        "paths": [
            {"id": 0, "kind": "relay", "state": "verified", "active": False, "rtt_ms": 40.0},
            {
                "id": 1,
                "kind": "direct",
                "state": "verified",
                "active": True,
                "rtt_ms": 3.5,
                "local": ("10.0.0.2", 40000),
                "remote": ("198.51.100.7", 7800),
            },
        ],
        "bytes_sent": 999,
        "bytes_received": True,  # wrong type: ignored
        "something_new": 1,
    }
    status = with_path_info(make_status(path="relay", local=None, remote=None), info)
    assert (status.path, status.local, status.remote) == (
        "direct",
        "10.0.0.2:40000",
        "198.51.100.7:7800",
    )
    assert (status.rtt_ms, status.upgrades, status.fallbacks) == (3.5, 1, 0)
    assert (status.bytes_sent, status.bytes_received) == (999, 100)
    assert [(p["kind"], p["state"]) for p in status.paths] == [
        ("relay", "verified"),
        ("direct", "active"),
    ]
    assert SessionStatus.from_json(json.loads(json.dumps(status.to_json()))) == status


# -- the board --------------------------------------------------------------------------


def test_publish_writes_atomically_with_private_modes(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        board = StatusBoard(tmp_path, "connect")
        board.publish(make_status())
    finally:
        os.umask(old_umask)
    folder = status_dir(tmp_path)
    path = folder / f"{os.getpid()}-{SID[:16]}.json"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_status(path) == make_status()
    inode = path.stat().st_ino
    board.publish(make_status(bytes_sent=4096, updated=1001.0))
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert load_status(path).bytes_sent == 4096
    assert sorted(os.listdir(folder)) == [path.name]  # no temp files left


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board = StatusBoard(tmp_path, "connect")
    board.publish(make_status())

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ConfigError, match="No space left"):
        board.publish(make_status(bytes_sent=1))
    monkeypatch.undo()
    (only,) = os.listdir(status_dir(tmp_path))
    assert load_status(status_dir(tmp_path) / only).bytes_sent == 2048


def test_board_tightens_a_loose_directory(tmp_path: Path) -> None:
    folder = status_dir(tmp_path)
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    StatusBoard(tmp_path, "listen").publish(make_status())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_board_without_home_raises_a_typed_error(tmp_path: Path) -> None:
    board = StatusBoard(tmp_path / "missing", "listen")
    with pytest.raises(ConfigError, match="does not exist"):
        board.publish(make_status())


def test_remove_and_close(tmp_path: Path) -> None:
    board = StatusBoard(tmp_path, "listen")
    board.publish(make_status())
    board.publish(make_status(session_id="ff" * 16))
    board.remove(SID)
    assert [s.session_id for s in read_statuses(tmp_path, now=1000.0)] == ["ff" * 16]
    board.remove(SID)  # again: no error
    board.close()  # what atexit runs
    assert os.listdir(status_dir(tmp_path)) == []


def test_files_are_removed_at_interpreter_exit(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from didsession.status import *;"
        "from didsession.status import SessionStatus as S;"
        f"b = StatusBoard(Path({str(tmp_path)!r}), 'connect');"
        "import os, time; now = time.time();"
        f"b.publish(S(os.getpid(), 'connect', 'did:a', 'did:b', {SID!r}, 'initiator', 'open',"
        " now, now));"
        "print(len(os.listdir(b.directory)), flush=True)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert os.listdir(status_dir(tmp_path)) == []


def test_throttle(tmp_path: Path) -> None:
    board = StatusBoard(tmp_path, "connect", min_interval=1.0)
    path = board.file_for(SID)

    def written() -> int:
        return load_status(path).bytes_sent

    assert board.maybe_publish(make_status(bytes_sent=1), 100.0)
    assert not board.maybe_publish(make_status(bytes_sent=2), 100.3)
    assert not board.maybe_publish(make_status(bytes_sent=3), 100.6)
    assert written() == 1
    board.flush(100.9)  # not due yet
    assert written() == 1
    board.flush(101.0)  # the last throttled status goes out once due
    assert written() == 3
    assert board.maybe_publish(make_status(bytes_sent=4), 101.1, force=True)
    assert written() == 4
    # a path change is always written, so is the end of the session
    assert board.maybe_publish(make_status(bytes_sent=5, path="relay"), 101.2)
    assert board.maybe_publish(make_status(bytes_sent=6, path="relay", state="closed"), 101.3)
    assert written() == 6
    assert board.maybe_publish(make_status(bytes_sent=7), 102.3)


def test_throttled_publishing_is_cheap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board = StatusBoard(tmp_path, "connect")
    board.maybe_publish(make_status(), 100.0)
    opened: list[object] = []
    real_open = os.open

    def counting_open(*args: Any, **kwargs: Any) -> int:
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    for i in range(1000):  # a hot path calling on every frame: no I/O until a second passed
        board.maybe_publish(make_status(bytes_sent=i), 100.0 + i * 1e-4)
    assert opened == []
    board.maybe_publish(make_status(bytes_sent=1000), 101.0)
    assert len(opened) == 1


def test_closed_session_file_is_dropped_after_linger(tmp_path: Path) -> None:
    board = StatusBoard(tmp_path, "listen", linger=10.0)
    board.publish(make_status(state="closed", updated=1000.0))
    board.flush(1005.0)
    assert board.file_for(SID).exists()
    board.flush(1010.5)
    assert not board.file_for(SID).exists()


# -- the reader -------------------------------------------------------------------------


def test_reader_deletes_files_of_dead_processes(tmp_path: Path) -> None:
    gone = dead_pid()
    StatusBoard(tmp_path, "listen").publish(make_status(pid=gone, updated=time.time()))
    folder = status_dir(tmp_path)
    leftover = folder / f".{gone}-{SID[:16]}.json.0a1b2c3d.tmp"  # crashed mid-write
    leftover.write_text("{")
    live = make_status(session_id="ab" * 16, updated=time.time())
    StatusBoard(tmp_path, "connect").publish(live)
    assert read_statuses(tmp_path) == [live]
    assert sorted(os.listdir(folder)) == [f"{os.getpid()}-{'ab' * 8}.json"]


def test_reader_shows_live_and_recently_closed_sessions(tmp_path: Path) -> None:
    board = StatusBoard(tmp_path, "listen", linger=60.0)
    board.publish(make_status(session_id="01" * 16, started=3.0, updated=1000.0))
    board.publish(make_status(session_id="02" * 16, started=1.0, updated=995.0, state="closed"))
    board.publish(make_status(session_id="03" * 16, started=2.0, updated=985.0, state="error"))
    board.publish(make_status(session_id="04" * 16, started=4.0, updated=900.0))  # silent
    got = read_statuses(tmp_path, now=1000.0)
    assert [s.session_id[:2] for s in got] == ["02", "01"]  # sorted by start
    # the closed-too-long file is gone, the silent open one is hidden but kept
    names = sorted(os.listdir(status_dir(tmp_path)))
    assert [n.split("-")[1][:2] for n in names] == ["01", "02", "04"]


def test_reader_skips_corrupt_and_hostile_files_with_a_warning(tmp_path: Path) -> None:
    good = make_status(updated=time.time())
    StatusBoard(tmp_path, "connect").publish(good)
    folder = status_dir(tmp_path)
    me = os.getpid()
    bad = {
        f"{me}-0000000000000001.json": b"{not json",
        f"{me}-0000000000000002.json": b"[" * 100_000,  # nesting too deep for json
        f"{me}-0000000000000003.json": json.dumps(
            dict(good.to_json(), session_id="00" * 7 + "03" + "00" * 8, rtt_ms=math.nan)
        ).encode(),
        f"{me}-0000000000000004.json": b" " * (1 << 20),
        f"{me}-0000000000000005.json": json.dumps(good.to_json()).encode(),  # name mismatch
        f"{me}-0000000000000006.json": b"\xff\xfe",
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    (folder / f"{me}-0000000000000007.json").symlink_to("/dev/zero")
    os.mkfifo(folder / f"{me}-0000000000000008.json")  # would block a naive reader
    (folder / "notes.txt").write_text("not a status file")
    warnings: list[str] = []
    started = time.monotonic()
    assert read_statuses(tmp_path, warn=warnings.append) == [good]
    assert time.monotonic() - started < 2
    assert len(warnings) == 8
    assert all(w.startswith("skipped status file ") for w in warnings)
    assert any("not JSON" in w for w in warnings) and any("larger than" in w for w in warnings)
    assert any("regular file" in w or "cannot open" in w for w in warnings)
    assert any("does not match" in w for w in warnings)


def test_reader_default_warning_goes_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = status_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / f"{os.getpid()}-0000000000000001.json").write_text("{}")
    assert read_statuses(tmp_path) == []
    assert "unsupported status version" in caplog.text


def test_reader_of_a_home_without_sessions(tmp_path: Path) -> None:
    assert read_statuses(tmp_path / "nothing-here") == []


# -- publishing a real session ----------------------------------------------------------


def standin_envelope(me: str) -> tuple[Any, Any]:
    """Carries (sender, plaintext) without crypto; the stream layer is what is tested."""

    async def pack(plaintext: bytes, to: str) -> bytes:
        return json.dumps({"from": me}).encode() + b"\n" + plaintext

    async def unpack(packed: bytes) -> tuple[bytes, str]:
        header, _, plaintext = packed.partition(b"\n")
        return plaintext, json.loads(header)["from"]

    return pack, unpack


async def tcp_sessions(**kwargs: Any) -> tuple[Session, Session]:
    ih, rh = make_handshakes(**kwargs)
    (pack_a, unpack_a), (pack_b, unpack_b) = standin_envelope(ALICE), standin_envelope(BOB)
    accepted: asyncio.Future[Session] = asyncio.get_running_loop().create_future()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result(await accept_session(r, w, rh, pack=pack_b, unpack=unpack_b))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = await open_session(reader, writer, ih, pack=pack_a, unpack=unpack_a)
    srv = await accepted
    server.close()
    return client, srv


def test_session_counters_are_published(tmp_path: Path) -> None:
    async def main() -> None:
        client, srv = await tcp_sessions()
        board = StatusBoard(tmp_path, "connect", min_interval=0.05)
        task = asyncio.create_task(publish_session(board, client, poll=0.02))
        await asyncio.sleep(0.05)
        first = load_status(board.file_for(client.session_id.hex()))
        assert first.state == "open" and first.bytes_sent == 0 and first.role == "initiator"
        assert first.local_did == ALICE and first.peer_did == BOB and first.path == "direct"
        assert first.local == f"127.0.0.1:{client.path.local[1]}"
        assert first.remote == f"127.0.0.1:{client.path.remote[1]}"
        assert first.paths[0]["state"] == "active"
        for i in range(20):
            client.send(b"x" * i)
            if i in (5, 10):
                client.rekey()  # a KEY_UPDATE frame each
        srv.send(b"back")
        for _ in range(20):
            await srv.recv()
        assert await client.recv() == b"back"
        await asyncio.sleep(0.15)
        now = load_status(board.file_for(client.session_id.hex()))
        assert now.bytes_sent == client.bytes_sent == srv.bytes_received
        assert now.bytes_sent == sum(28 + i for i in range(20)) + 2 * 30  # + 2 KEY_UPDATEs
        assert now.frames_sent == 22 == srv.frames_received
        assert now.bytes_received == 28 + 4 and now.frames_received == 1
        assert now.rekeys == client.channel.send_epoch == 2
        client.close()
        await asyncio.wait_for(task, 2)  # ends by itself once the session is closed
        final = load_status(board.file_for(client.session_id.hex()))
        assert final.state == "closed" and final.paths[0]["state"] == "closed"
        srv.close()
        board.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_cancelled_publisher_writes_the_final_state(tmp_path: Path) -> None:
    async def main() -> None:
        client, srv = await tcp_sessions()
        board = StatusBoard(tmp_path, "listen")
        task = asyncio.create_task(publish_session(board, srv, poll=10))
        await asyncio.sleep(0.01)
        client.close()
        assert [m async for m in srv] == []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (status,) = read_statuses(tmp_path)
        assert status.state == "closed" and status.role == "responder"

    asyncio.run(asyncio.wait_for(main(), 10))


def test_publisher_survives_an_unwritable_home(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        client, srv = await tcp_sessions()
        board = StatusBoard(tmp_path / "missing", "connect")
        task = asyncio.create_task(publish_session(board, client, poll=0.01))
        client.send(b"still works")
        assert await srv.recv() == b"still works"
        await asyncio.sleep(0.05)
        client.close()
        await asyncio.wait_for(task, 2)
        srv.close()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert caplog.text.count("session status not published") == 1


# -- the table and the CLI --------------------------------------------------------------


def test_render_table() -> None:
    rows = [
        make_status(rtt_ms=0.25, upgrades=1, fallbacks=0, bytes_sent=5 << 20),
        make_status(
            session_id="ff" * 16,
            peer_did="did:peer:4zQmStrangerStrangerStranger",
            program="mpyc party 1\x1b[2J",  # a hostile name cannot reach the terminal
            path=None,
            local=None,
            remote=None,
            state="closed",
            started=1000.0 - 3725,
        ),
    ]
    table = render_table(rows, names={rows[0].peer_did: "bob"}, now=1065.0).splitlines()
    assert table[0].split() == [
        "PEER",
        "PROGRAM",
        "STATE",
        "PATH",
        "RTT",
        "SENT",
        "RECEIVED",
        "REKEYS",
        "UPG/FB",
        "AGE",
    ]
    assert table[1].startswith("bob ")
    assert "direct 127.0.0.1:40000 -> 127.0.0.1:7800" in table[1]
    assert "0.2 ms" in table[1] or "0.3 ms" in table[1]
    assert "5.0 MiB" in table[1] and "100 B" in table[1] and "1/0" in table[1]
    assert table[1].endswith("1m05s")
    assert table[2].startswith("did:peer:4zQmStrangerSt…")
    assert "\x1b" not in table[2] and "mpyc party 1?[2J" in table[2] and "1h03m" in table[2]


def _home_with_contact(tmp_path: Path) -> tuple[Cli, str]:
    home = tmp_path / "alice"
    store = Store(home)
    store.create("alice")
    bob = Store(tmp_path / "bob").create("bob")
    store.add_contact(bob.did, label="Bob", alias="bob", invitation_id=None)
    return Cli(home), bob.did


def test_cli_status_table_and_json(tmp_path: Path) -> None:
    cli, bob_did = _home_with_contact(tmp_path)
    assert cli("status").stdout == f"no sessions running in {cli.home}\n"
    now = time.time()
    status = make_status(peer_did=bob_did, started=now - 5, updated=now)
    board = StatusBoard(cli.home, "connect")
    board.publish(status)
    folder = status_dir(cli.home)
    (folder / f"{os.getpid()}-0000000000000001.json").write_text("garbage")
    table = cli("status")
    lines = table.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("PEER")
    assert lines[1].startswith("bob ") and f"connect ({os.getpid()})" in lines[1]
    assert "warning: skipped status file" in table.stderr and "Traceback" not in table.stderr
    (entry,) = json.loads(cli("status", "--json").stdout)
    assert entry == dict(status.to_json(), peer_contact="bob")
    board.close()
    assert json.loads(cli("status", "--json").stdout) == []


def test_cli_status_help_explains_the_columns(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    text = capsys.readouterr().out
    for column in ("PEER", "PATH", "RTT", "SENT", "RECEIVED", "REKEYS", "UPG/FB", "AGE"):
        assert f"\n  {column} " in text


# -- two real processes -----------------------------------------------------------------


class Proc:
    """A ``didsession`` process whose JSON events on stdout a thread collects."""

    def __init__(self, home: Path, *args: str) -> None:
        env = dict(os.environ, DIDSESSION_HOME=str(home))
        env.pop("DIDSESSION_PASSPHRASE", None)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "didsession.cli", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.pid = self.popen.pid
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._events.put(json.loads(line))
        self._events.put(None)

    def send(self, line: bytes) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line)
        self.popen.stdin.flush()

    def next_event(
        self, accept: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        """The first event that ``accept`` likes."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            assert event is not None, "the process ended"
            if accept(event):
                return event

    def end_input(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()

    def wait(self, timeout: float = 20) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)
        self._reader.join(timeout=10)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def _wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Cli, Cli, str, str]:
    """Alice and Bob, each with the other as a contact (as 'didsession accept' leaves it)."""
    alice, bob = Store(tmp_path / "alice"), Store(tmp_path / "bob")
    a, b = alice.create("alice"), bob.create("bob", method="peer4")
    alice.add_contact(b.did, label="bob", alias="bob", invitation_id=None)
    bob.add_contact(a.did, label="alice", alias="alice", invitation_id=None)
    return Cli(alice.home), Cli(bob.home), a.did, b.did


def _start_pair(alice: Cli, bob: Cli, *listen_args: str) -> tuple[Proc, Proc, int]:
    listener = Proc(alice.home, "listen", "--port", "0", "--json", *listen_args)
    port = int(listener.next_event(lambda e: e["event"] == "listening")["port"])
    connector = Proc(bob.home, "connect", "alice", "--to", f"127.0.0.1:{port}", "--json")
    connector.send(b"hello alice\n")
    listener.send(b"hello bob\n")
    listener.next_event(lambda e: e.get("text") == "hello alice")
    connector.next_event(lambda e: e.get("text") == "hello bob")
    return listener, connector, port


def _sent_and_received(home: Path) -> bool:
    statuses = read_statuses(home)
    return len(statuses) == 1 and statuses[0].bytes_sent > 0 and statuses[0].bytes_received > 0


def test_status_of_two_real_processes(homes: tuple[Cli, Cli, str, str]) -> None:
    alice, bob, alice_did, bob_did = homes
    listener, connector, port = _start_pair(alice, bob, "--once")
    try:
        _wait_for(lambda: _sent_and_received(alice.home) and _sent_and_received(bob.home))
        (at_alice,) = json.loads(alice("status", "--json").stdout)
        (at_bob,) = json.loads(bob("status", "--json").stdout)
        assert at_alice["peer_did"] == bob_did and at_bob["peer_did"] == alice_did
        assert at_alice["local_did"] == alice_did and at_bob["local_did"] == bob_did
        assert at_alice["peer_contact"] == "bob" and at_bob["peer_contact"] == "alice"
        assert at_alice["session_id"] == at_bob["session_id"]
        assert (at_alice["pid"], at_alice["program"]) == (listener.pid, "listen")
        assert (at_bob["pid"], at_bob["program"]) == (connector.pid, "connect")
        assert at_alice["role"] == "responder" and at_bob["role"] == "initiator"
        for s in (at_alice, at_bob):
            assert s["state"] == "open" and s["path"] == "direct" and not s["relay_only"]
            assert s["bytes_sent"] > 0 and s["bytes_received"] > 0
            assert s["frames_sent"] >= 1 and s["frames_received"] >= 1
            assert [p["kind"] for p in s["paths"]] == ["direct"]
        assert at_alice["local"] == at_bob["remote"] == f"127.0.0.1:{port}"
        assert at_alice["remote"] == at_bob["local"]
        table = alice("status").stdout.splitlines()
        assert table[1].startswith("bob ") and f"listen ({listener.pid})" in table[1]
        assert f"direct 127.0.0.1:{port} -> {at_bob['local']}" in table[1]
        connector.end_input()  # bob ends the session; alice's listener exits (--once)
        assert connector.wait() == 0 and listener.wait() == 0
    finally:
        listener.kill()
        connector.kill()
    for cli in (alice, bob):
        assert json.loads(cli("status", "--json").stdout) == []
        assert os.listdir(status_dir(cli.home)) == []  # removed at exit, not just hidden


def test_status_after_a_crash(homes: tuple[Cli, Cli, str, str]) -> None:
    alice, bob, _, bob_did = homes
    listener, connector, _ = _start_pair(alice, bob)
    try:
        _wait_for(lambda: _sent_and_received(bob.home))
        connector.popen.send_signal(signal.SIGKILL)  # no atexit, no CLOSE
        connector.wait()
        assert json.loads(bob("status", "--json").stdout) == []
        assert os.listdir(status_dir(bob.home)) == []  # the dead process's file is deleted
        # alice saw the stream end without CLOSE: the session failed, and shows so for a while
        _wait_for(lambda: [s.state for s in read_statuses(alice.home)] == ["error"])
        (failed,) = read_statuses(alice.home)
        assert failed.peer_did == bob_did and failed.paths[0]["state"] == "closed"
    finally:
        listener.kill()
        connector.kill()
    assert read_statuses(alice.home) == []  # killed too: its file goes with it
