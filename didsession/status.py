"""What every running session of a home is doing: the files behind ``didsession status``.

Theory of operation
-------------------
Each process that runs sessions (``didsession listen`` / ``connect``, an MPyC party) owns a
:class:`StatusBoard` for its home and writes one small JSON file per session::

    <home>/run/sessions/             mode 0700
        <pid>-<session id[:16]>.json mode 0600, replaced atomically (temp file + rename)

:func:`read_statuses` lists the live ones.  Nobody has to clean up for the listing to be
right: a file belongs to a process, and a reader drops (and deletes) files whose process
is gone, so a crash (``kill -9``) leaves nothing visible.  A closed session stays visible
for :data:`LINGER` seconds so that a short session can still be seen ending.  A file
whose writer is alive but silent for :data:`STALE_AFTER` seconds (a hung process, or a
reused pid) is hidden but left alone.

Writers pay little: :meth:`StatusBoard.maybe_publish` writes at most once per
``min_interval`` per session (state or path changes always go out), and
:func:`publish_session` polls a session's counters in the background: on open, about every
second while traffic flows, at least every :data:`HEARTBEAT` seconds, and on close.

The files are not secrets (DIDs, addresses, counters; never keys), but they show who talks
to whom, so they get the same 0600/0700 treatment as the identity store.  A reader treats
every file as hostile: size-capped, no symlinks or FIFOs, strict types; a bad file is a
:class:`~didsession.errors.ConfigError` that :func:`read_statuses` reports as a warning and
skips.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict

from didsession._dataclass import dataclass
from didsession.errors import ConfigError, DidSessionError
from didsession.untrusted import parse_json

__all__ = [
    "HEARTBEAT",
    "LINGER",
    "MIN_INTERVAL",
    "STALE_AFTER",
    "STATUS_VERSION",
    "TERMINAL_STATES",
    "PathStatus",
    "SessionLike",
    "SessionStatus",
    "StatusBoard",
    "format_address",
    "load_status",
    "path_entry",
    "publish_session",
    "read_statuses",
    "render_table",
    "session_status",
    "short_did",
    "status_dir",
    "with_path_info",
]

log = logging.getLogger("didsession.status")

STATUS_VERSION = 1
MIN_INTERVAL = 1.0  # seconds between two writes of one session's file (unless forced)
HEARTBEAT = 2.0  # an open session's file is rewritten at least this often
LINGER = 10.0  # a closed session stays visible this long after its last update
STALE_AFTER = 60.0  # an open session silent this long is hidden (hung writer or reused pid)
TERMINAL_STATES = frozenset({"closed", "error"})

_MAX_FILE = 64 << 10
_MAX_STR = 8192  # a long-form did:peer:4 is a few KiB
_MAX_PATHS = 32
_MAX_COUNT = (1 << 63) - 1
_WORD = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_HEX = re.compile(r"[0-9a-f]{2,128}")
_FILE = re.compile(r"([0-9]{1,10})-([0-9a-f]{2,16})\.json")
_TEMP = re.compile(r"\.([0-9]{1,10})-[0-9a-f]{2,16}\.json\.[0-9a-f]+\.tmp")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Channel states (didsession.session.ChannelState values) as status states.
_CHANNEL_STATES = {"established": "open", "closed": "closed", "error": "error"}


class PathStatus(TypedDict):
    """One path of a session, as :func:`path_entry` normalizes it."""

    kind: str  # "direct" | "relay"
    local: str | None
    remote: str | None
    state: str  # e.g. "active", "checking", "verified", "closed"
    rtt_ms: float | None
    active: NotRequired[bool]
    bytes_in: NotRequired[int]
    bytes_out: NotRequired[int]
    reason: NotRequired[str | None]


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """A snapshot of one session, as written to its status file.

    Counters are cumulative since the session opened.  ``bytes_*`` and ``frames_*`` count
    session frames on the wire (header and tag included, handshake excluded); ``rekeys``
    counts key updates in both directions; ``upgrades`` / ``fallbacks`` count changes of
    the active path.  Times are unix seconds.  The field names are a stable interface.
    """

    pid: int
    program: str  # "listen", "connect", "mpyc party 1", ...
    local_did: str
    peer_did: str
    session_id: str  # hex
    role: str  # "initiator" | "responder"
    state: str  # "open", then "closed" or "error"
    started: float
    updated: float
    path: str | None = None  # kind of the active path: "direct" | "relay"
    local: str | None = None  # its local address, "host:port"
    remote: str | None = None
    rtt_ms: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    rekeys: int = 0
    upgrades: int = 0
    fallbacks: int = 0
    paths: list[PathStatus] = field(default_factory=list)
    relay_only: bool = False

    @property
    def terminal(self) -> bool:
        """True once the session ended (closed or failed)."""
        return self.state in TERMINAL_STATES

    def to_json(self) -> dict[str, Any]:
        """The JSON object of a status file (with its format ``version``)."""
        out: dict[str, Any] = {"version": STATUS_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = [dict(p) for p in value] if f.name == "paths" else value
        return out

    @classmethod
    def from_json(cls, data: object) -> SessionStatus:
        """Parse and validate a status object; unknown keys are ignored (newer writers).

        Raises:
            ConfigError: wrong version, a missing field, a wrong type, a negative counter,
                a non-finite number, an over-long string or one with control characters.
        """
        if not isinstance(data, dict):
            raise ConfigError("status is not a JSON object")
        if data.get("version") != STATUS_VERSION:
            raise ConfigError(f"unsupported status version {_brief(data.get('version'))}")
        get = _Fields(data)
        return cls(
            pid=get.count("pid"),
            program=get.text("program", 64),
            local_did=get.did("local_did"),
            peer_did=get.did("peer_did"),
            session_id=get.match("session_id", _HEX),
            role=get.match("role", _WORD),
            state=get.match("state", _WORD),
            started=get.time("started"),
            updated=get.time("updated"),
            path=get.match("path", _WORD) if get.present("path") else None,
            local=get.maybe_text("local"),
            remote=get.maybe_text("remote"),
            rtt_ms=get.maybe_time("rtt_ms"),
            bytes_sent=get.count("bytes_sent"),
            bytes_received=get.count("bytes_received"),
            frames_sent=get.count("frames_sent"),
            frames_received=get.count("frames_received"),
            rekeys=get.count("rekeys"),
            upgrades=get.count("upgrades"),
            fallbacks=get.count("fallbacks"),
            paths=get.paths("paths"),
            relay_only=get.flag("relay_only"),
        )


class _Fields:
    """Typed, bounded access to the fields of an untrusted JSON object."""

    def __init__(self, data: Mapping[str, object], where: str = "") -> None:
        self.data = data
        self.where = where

    def _get(self, key: str) -> object:
        if key not in self.data:
            raise ConfigError(f"status field {self.where}{key} is missing")
        return self.data[key]

    def _bad(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"status field {self.where}{key} must be {what}")

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def maybe_time(self, key: str) -> float | None:
        return self.time(key) if self.present(key) else None

    def maybe_text(self, key: str, limit: int = 256) -> str | None:
        return self.text(key, limit) if self.present(key) else None

    def count(self, key: str) -> int:
        value = self._get(key)
        if type(value) is not int or not 0 <= value <= _MAX_COUNT:
            raise self._bad(key, "a non-negative integer")
        return value

    def time(self, key: str) -> float:
        value = self._get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise self._bad(key, "a non-negative number")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if type(value) is not bool:
            raise self._bad(key, "true or false")
        return value

    def text(self, key: str, limit: int = _MAX_STR) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value or len(value) > limit:
            raise self._bad(key, f"a string of 1 to {limit} characters")
        if _CONTROL.search(value):
            raise self._bad(key, "free of control characters")
        return value

    def match(self, key: str, pattern: re.Pattern[str]) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self._bad(key, f"a string matching {pattern.pattern}")
        return value

    def did(self, key: str) -> str:
        value = self.text(key)
        if not value.startswith("did:") or any(c.isspace() for c in value):
            raise self._bad(key, "a DID")
        return value

    def paths(self, key: str) -> list[PathStatus]:
        value = self._get(key)
        if not isinstance(value, list) or len(value) > _MAX_PATHS:
            raise self._bad(key, f"a list of at most {_MAX_PATHS} paths")
        out: list[PathStatus] = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self._bad(f"{key}[{i}]", "an object")
            get = _Fields(item, f"{key}[{i}].")
            entry = PathStatus(
                kind=get.match("kind", _WORD),
                local=get.maybe_text("local"),
                remote=get.maybe_text("remote"),
                state=get.match("state", _WORD),
                rtt_ms=get.maybe_time("rtt_ms"),
            )
            if "active" in item:
                entry["active"] = get.flag("active")
            if "bytes_in" in item:
                entry["bytes_in"] = get.count("bytes_in")
            if "bytes_out" in item:
                entry["bytes_out"] = get.count("bytes_out")
            if "reason" in item:
                entry["reason"] = get.maybe_text("reason")
            out.append(entry)
        return out


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- building a status from a session ---------------------------------------------------


class _ChannelLike(Protocol):
    @property
    def state(self) -> Enum: ...
    @property
    def role(self) -> Enum: ...
    @property
    def send_epoch(self) -> int: ...
    @property
    def receive_epoch(self) -> int: ...
    @property
    def frames_sent(self) -> int: ...


class _PathInfoLike(Protocol):
    @property
    def local(self) -> Any: ...
    @property
    def remote(self) -> Any: ...


class SessionLike(Protocol):
    """What :func:`session_status` reads; :class:`didsession.session.stream.Session` has it."""

    @property
    def session_id(self) -> bytes: ...
    @property
    def local_did(self) -> str: ...
    @property
    def peer_did(self) -> str: ...
    @property
    def channel(self) -> _ChannelLike: ...
    @property
    def path(self) -> _PathInfoLike: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def frames_received(self) -> int: ...


def format_address(addr: object) -> str | None:
    """``"host:port"`` (``"[v6]:port"``) for a socket address tuple; strings pass through."""
    if addr is None:
        return None
    if isinstance(addr, tuple | list) and len(addr) >= 2:
        host, port = str(addr[0]), addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def path_entry(info: Mapping[str, object]) -> PathStatus:
    """Normalize a path description (e.g. ``Multipath.paths()`` items) to a :class:`PathStatus`.

    ``local`` / ``remote`` may be socket address tuples; ``state`` is taken as is, or
    ``"active"`` when the path is the active one.  Unknown keys are dropped.
    """
    rtt = info.get("rtt_ms")
    active = info.get("active")
    entry = PathStatus(
        kind=str(info.get("kind", "direct")),
        local=format_address(info.get("local")),
        remote=format_address(info.get("remote")),
        state="active" if active is True else str(info.get("state", "open")),
        rtt_ms=_number(rtt),
    )
    if isinstance(active, bool):
        entry["active"] = active
    bytes_in, bytes_out = info.get("bytes_in"), info.get("bytes_out")
    if isinstance(bytes_in, int):
        entry["bytes_in"] = bytes_in
    if isinstance(bytes_out, int):
        entry["bytes_out"] = bytes_out
    if "reason" in info:
        reason = info["reason"]
        entry["reason"] = None if reason is None else str(reason)
    return entry


_COUNTERS = (
    "bytes_sent",
    "bytes_received",
    "frames_sent",
    "frames_received",
    "rekeys",
    "upgrades",
    "fallbacks",
)


def with_path_info(status: SessionStatus, info: Mapping[str, object]) -> SessionStatus:
    """``status`` updated from what a transport knows about its paths.

    ``info`` has any of the keys of :class:`SessionStatus` (e.g. the dict of
    ``MultipathTransport.status()``): ``path``, ``local``, ``remote`` (address tuples are
    formatted), ``rtt_ms``, ``relay_only``, the counters, and ``paths`` (each through
    :func:`path_entry`).  Other keys and values of the wrong type are ignored.
    """
    changes: dict[str, Any] = {}
    if "path" in info:
        changes["path"] = None if info["path"] is None else str(info["path"])
    for key in ("local", "remote"):
        if key in info:
            changes[key] = format_address(info[key])
    if "rtt_ms" in info:
        changes["rtt_ms"] = _number(info["rtt_ms"])
    for key in _COUNTERS:
        value = info.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            changes[key] = value
    paths = info.get("paths")
    if isinstance(paths, list):
        changes["paths"] = [path_entry(p) for p in paths if isinstance(p, Mapping)]
    if isinstance(info.get("relay_only"), bool):
        changes["relay_only"] = info["relay_only"]
    return replace(status, **changes)


def session_status(
    session: SessionLike,
    *,
    program: str,
    started: float,
    now: float,
    path: str | None = "direct",
) -> SessionStatus:
    """A snapshot of a single-path session (a :class:`~didsession.session.stream.Session`).

    Args:
        program: what runs the session, e.g. ``"connect"`` or ``"mpyc party 1"``.
        started: when the session opened (unix time).
        now: the snapshot's ``updated`` time.
        path: the kind of path the session runs on (``"direct"``, ``"relay"``).
    """
    channel = session.channel
    state = _CHANNEL_STATES.get(str(channel.state.value), str(channel.state.value))
    info = session.path
    local, remote = format_address(info.local), format_address(info.remote)
    paths: list[PathStatus] = []
    if path is not None:
        paths.append(
            PathStatus(
                kind=path,
                local=local,
                remote=remote,
                state="active" if state == "open" else "closed",
                rtt_ms=None,
            )
        )
    return SessionStatus(
        pid=os.getpid(),
        program=program,
        local_did=session.local_did,
        peer_did=session.peer_did,
        session_id=session.session_id.hex(),
        role=str(channel.role.value),
        state=state,
        started=started,
        updated=now,
        path=path,
        local=local,
        remote=remote,
        bytes_sent=session.bytes_sent,
        bytes_received=session.bytes_received,
        frames_sent=channel.frames_sent,
        frames_received=session.frames_received,
        rekeys=channel.send_epoch + channel.receive_epoch,
        paths=paths,
        relay_only=path == "relay",
    )


# -- writing ----------------------------------------------------------------------------


def status_dir(home: Path) -> Path:
    """Where the status files of ``home`` live."""
    return Path(home) / "run" / "sessions"


class StatusBoard:
    """The status files of this process's sessions in one home.

    Args:
        home: the identity home (``--home`` / ``$DIDSESSION_HOME``).
        program: what this process is, e.g. ``"listen"``; :func:`publish_session` puts it
            in every status it builds.
        min_interval: :meth:`maybe_publish` writes one session at most this often.
        linger: how long a closed session's file is kept (the reader hides it after that
            anyway).

    The directory is created on the first write, so a board never fails to exist; writes
    raise :class:`ConfigError`.  Files left at interpreter exit are removed (``atexit``).
    """

    def __init__(
        self,
        home: Path,
        program: str,
        *,
        min_interval: float = MIN_INTERVAL,
        linger: float = LINGER,
    ) -> None:
        self.directory = status_dir(home)
        self.program = program
        self.min_interval = min_interval
        self.linger = linger
        self._pid = os.getpid()
        self._ready = False
        self._files: dict[str, Path] = {}  # session id -> its file
        self._last: dict[str, tuple[float, tuple[object, ...]]] = {}  # when, what changed
        self._pending: dict[str, SessionStatus] = {}  # throttled, not yet written
        self._ended: dict[str, float] = {}  # closed sessions: when
        atexit.register(self.close)

    def file_for(self, session_id: str, pid: int | None = None) -> Path:
        """The file of a session of this process (or of ``pid``)."""
        return self.directory / f"{self._pid if pid is None else pid}-{session_id[:16]}.json"

    def publish(self, status: SessionStatus) -> None:
        """Write ``status`` now (atomically, mode 0600 from creation).

        Raises:
            ConfigError: the directory or the file cannot be written.
        """
        self._write(status, status.updated)

    def maybe_publish(self, status: SessionStatus, now: float, *, force: bool = False) -> bool:
        """Write ``status`` unless this session was written less than ``min_interval`` ago.

        Cheap enough for every change on a hot path: a skipped status is kept and written
        by :meth:`flush` once due.  A change of state or path is always written.

        Returns:
            True if it was written now.

        Raises:
            ConfigError: as :meth:`publish`.
        """
        sid = status.session_id
        last = self._last.get(sid)
        if (
            force
            or last is None
            or now - last[0] >= self.min_interval
            or last[1] != _signature(status)
        ):
            self._write(status, now)
            return True
        self._pending[sid] = status
        return False

    def flush(self, now: float) -> None:
        """Write throttled statuses that are due, and drop closed sessions past ``linger``."""
        for sid, status in list(self._pending.items()):
            last = self._last.get(sid)
            if last is None or now - last[0] >= self.min_interval:
                self._write(status, now)
        self._expire(now)

    def remove(self, session_id: str) -> None:
        """Remove a session's file (no error if it is gone)."""
        self._pending.pop(session_id, None)
        self._last.pop(session_id, None)
        self._ended.pop(session_id, None)
        path = self._files.pop(session_id, None)
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove status file %s: %s", path.name, exc.strerror)

    def close(self) -> None:
        """Remove every file of this board (runs at interpreter exit)."""
        atexit.unregister(self.close)
        if os.getpid() != self._pid:
            return  # a forked child must not delete its parent's files
        for sid in list(self._files):
            self.remove(sid)

    def __enter__(self) -> StatusBoard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ensure_directory(self) -> None:
        if self._ready:
            return
        try:
            for folder in (self.directory.parent, self.directory):
                try:
                    folder.mkdir(mode=0o700)  # not parents=True: that ignores the mode
                except FileExistsError:
                    pass
            info = os.stat(self.directory, follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode):
                raise ConfigError(f"{self.directory} is not a directory")
            if info.st_mode & 0o077 and info.st_uid == os.getuid():
                os.chmod(self.directory, 0o700)
        except FileNotFoundError:
            raise ConfigError(f"the home {self.directory.parent.parent} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot create {self.directory}: {exc.strerror}") from None
        self._ready = True

    def _write(self, status: SessionStatus, now: float) -> None:
        self._ensure_directory()
        sid = status.session_id
        path = self.file_for(sid, status.pid)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        data = json.dumps(status.to_json(), separators=(",", ":")).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                # No fsync: the file is rewritten every few seconds and means nothing after
                # a reboot (its pid is dead then, and readers delete it).
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ConfigError(f"cannot write status file {path.name}: {exc.strerror}") from None
        self._files[sid] = path
        self._last[sid] = (now, _signature(status))
        self._pending.pop(sid, None)
        if status.terminal:
            self._ended.setdefault(sid, now)
        self._expire(now)

    def _expire(self, now: float) -> None:
        for sid, ended in list(self._ended.items()):
            if now - ended > self.linger:
                self.remove(sid)


def _signature(status: SessionStatus) -> tuple[object, ...]:
    """What makes a write urgent: the state and the path."""
    return (status.state, status.path, status.local, status.remote)


async def publish_session(
    board: StatusBoard,
    session: SessionLike,
    *,
    path: str | None = "direct",
    started: float | None = None,
    snapshot: Callable[[float], SessionStatus] | None = None,
    poll: float = 0.5,
    heartbeat: float = HEARTBEAT,
    clock: Callable[[], float] = time.time,
) -> None:
    """Publish ``session``'s status on ``board`` until it ends; run it as a task.

    Writes on start, when counters moved (at most every ``board.min_interval``), at least
    every ``heartbeat`` seconds, and once the session is closed or failed; then returns.
    Cancelled, it writes the status as it is at that moment before it ends.  A write that
    fails is logged once and does not disturb the session.

    Args:
        path: the path kind of a single-path session, for the default snapshot.
        started: when the session opened (default: now).
        snapshot: ``now -> SessionStatus``, instead of :func:`session_status`: for sessions
            with several paths or MPyC links that know their RTT, upgrades and fallbacks,
            e.g. ``lambda now: with_path_info(session_status(...), transport.status())``.
        poll: how often the counters are looked at (seconds).
    """
    opened = clock() if started is None else started

    def take(now: float) -> SessionStatus:
        if snapshot is not None:
            return snapshot(now)
        return session_status(session, program=board.program, started=opened, now=now, path=path)

    failed = False

    def write(status: SessionStatus, now: float, force: bool) -> bool:
        nonlocal failed
        try:
            written = board.maybe_publish(status, now, force=force)
            board.flush(now)
            return written
        except DidSessionError as exc:
            if not failed:
                log.warning("session status not published: %s", exc.message)
            failed = True
            return False

    last_counters: tuple[int, ...] | None = None
    last_write = -math.inf
    try:
        while True:
            now = clock()
            status = take(now)
            if status.terminal:
                write(status, now, True)
                return
            counters = _counters(status)
            if (counters != last_counters or now - last_write >= heartbeat) and write(
                status, now, False
            ):
                last_counters, last_write = counters, now
            await asyncio.sleep(poll)
    except asyncio.CancelledError:
        now = clock()
        write(take(now), now, True)
        raise


def _counters(status: SessionStatus) -> tuple[int, ...]:
    return (
        status.bytes_sent,
        status.bytes_received,
        status.frames_sent,
        status.frames_received,
        status.rekeys,
        status.upgrades,
        status.fallbacks,
    )


# -- reading ----------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # 0 would signal our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive (staleness hides a reused pid)
    except OverflowError:
        return False
    return True


def _read_file(path: Path) -> bytes:
    """The bytes of a regular file, at most ``_MAX_FILE``; no symlinks, FIFOs or devices."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConfigError(f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("not a regular file")
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise ConfigError(f"larger than {_MAX_FILE} bytes")
    return data


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number")


def load_status(path: Path) -> SessionStatus:
    """Read one status file.

    Raises:
        ConfigError: unreadable, not a regular file, too large, not JSON, or invalid.
        FileNotFoundError: it was removed meanwhile.
    """
    data = _read_file(path)
    try:
        value = parse_json(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"not JSON ({type(exc).__name__})") from None
    return SessionStatus.from_json(value)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # not ours to delete after all (another user's home): just skip it


def read_statuses(
    home: Path,
    *,
    now: float | None = None,
    warn: Callable[[str], None] | None = None,
    linger: float = LINGER,
    stale_after: float = STALE_AFTER,
    pid_alive: Callable[[int], bool] = _pid_alive,
) -> list[SessionStatus]:
    """The sessions of ``home`` that are running (or closed less than ``linger`` ago).

    Files of dead processes, their leftover temp files and closed sessions past ``linger``
    are deleted.  A corrupt or hostile file is skipped with a warning.

    Args:
        now: the current unix time (default: the clock).
        warn: gets one line per skipped file (default: the ``didsession.status`` logger).

    Returns:
        Statuses sorted by start time, then pid and session id.
    """
    now = time.time() if now is None else now
    folder = status_dir(home)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ConfigError(f"cannot list {folder}: {exc.strerror}") from None
    report = warn or (lambda line: log.warning("%s", line))
    found: list[SessionStatus] = []
    for entry in entries:
        path = Path(entry.path)
        temp = _TEMP.fullmatch(entry.name)
        if temp:
            if not pid_alive(int(temp.group(1))):
                _unlink(path)  # a writer crashed between create and rename
            continue
        m = _FILE.fullmatch(entry.name)
        if not m:
            continue  # not a status file
        pid = int(m.group(1))
        if not pid_alive(pid):
            _unlink(path)
            continue
        try:
            status = load_status(path)
            if status.pid != pid or not status.session_id.startswith(m.group(2)):
                raise ConfigError("its pid or session id does not match its name")
        except FileNotFoundError:
            continue  # removed while we looked
        except ConfigError as exc:
            report(f"skipped status file {_printable(entry.name)}: {exc.message}")
            continue
        age = now - status.updated
        if status.terminal and age > linger:
            _unlink(path)
            continue
        if age > stale_after:
            continue
        found.append(status)
    found.sort(key=lambda s: (s.started, s.pid, s.session_id))
    return found


# -- showing ----------------------------------------------------------------------------


def _printable(text: str) -> str:
    return _CONTROL.sub("?", text)


def short_did(did: str, width: int = 24) -> str:
    """The start of a DID, where peer DIDs differ (their key), cut with an ellipsis."""
    return did if len(did) <= width else did[: width - 1] + "…"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    unit = "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _path_text(status: SessionStatus) -> str:
    if status.path is None:
        return "-"
    text = status.path
    if status.local or status.remote:
        text += f" {status.local or '?'} -> {status.remote or '?'}"
    if status.relay_only:
        text += " (relay only)"
    return text


TABLE_COLUMNS = (
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
)


def render_table(
    statuses: Iterable[SessionStatus],
    *,
    names: Mapping[str, str] | None = None,
    now: float | None = None,
) -> str:
    """The statuses as an aligned text table (see ``didsession status --help``).

    Args:
        names: DID -> contact name; other peers show as the start of their DID.
        now: for the AGE column (default: the clock).
    """
    now = time.time() if now is None else now
    names = names or {}
    rows = [list(TABLE_COLUMNS)]
    for s in statuses:
        rows.append(
            [
                names.get(s.peer_did) or short_did(s.peer_did),
                f"{s.program} ({s.pid})",
                s.state,
                _path_text(s),
                "-" if s.rtt_ms is None else f"{s.rtt_ms:.1f} ms",
                _size(s.bytes_sent),
                _size(s.bytes_received),
                str(s.rekeys),
                f"{s.upgrades}/{s.fallbacks}",
                _age(now - s.started),
            ]
        )
    rows = [[_printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    right = {4, 5, 6, 7, 8, 9}  # numbers align right
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
