"""Structured logs: one JSON object per line on stderr (or plain text for people).

Log calls pass facts as ``extra={...}``; the formatter puts them next to ``ts``, ``level``,
``logger`` and ``event``.  What is never logged: message contents, keys, nonces, the Redis
password.  DIDs are public, but long, so :func:`short_did` trims them for the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "LogThrottle", "configure_logging", "short_did"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def short_did(did: str | None) -> str | None:
    """``did:peer:2.Ez6LS…`` trimmed to 40 characters (enough to tell DIDs apart in a log)."""
    if did is None or len(did) <= 40:
        return did
    return did[:24] + "…" + did[-12:]


class LogThrottle:
    """At most one log line per ``interval`` seconds for each key, counting those held back.

    For lines a stranger can cause at will (a refusal at a mediator-wide limit): one line
    an interval is all the operator needs, and the count says how hard it was pressed.

    Args:
        interval: seconds between two lines of one key.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def note(self, key: str, now: float) -> int | None:
        """One more event of ``key`` at ``now`` (seconds, any clock).

        Returns:
            None if its line is held back; else how many events the line to log now stands
            for: this one and those held back since the key's last line.
        """
        count = self._held.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self.interval:
            self._held[key] = count
            return None
        self._last[key] = now
        self._held[key] = 0
        return count


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "event": ..., **extra}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(doc, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname.lower():7} {record.getMessage()} {extra}".rstrip()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Send the ``mediator`` loggers to stderr; aiohttp's access log stays off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("mediator").setLevel(level.upper())
