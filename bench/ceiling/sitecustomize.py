"""The ``coalesced`` mode of bench/mpyc.py: plain MPyC over TCP whose peer links coalesce
writes per event-loop turn the way ``--didcomm`` does (writes under 256 bytes wait for the
end of the turn, larger ones go at once with what is queued), with no session, handshake or
cryptography: what coalescing alone can buy on this machine, the ceiling of any coalescing
transport.  Python imports this file at start-up when its folder is on ``PYTHONPATH``; it
wraps ``mpyc.asyncoro.MessageExchanger`` when MPyC imports it and changes nothing else.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any

EAGER_BYTES = 256  # as mpyc_adapter.transport.DEFAULT_EAGER_BYTES
_counts = [0, 0]  # MPyC's writes, socket writes

if os.environ.get("CEILING_STATS"):  # for the test that this mode coalesces
    atexit.register(lambda: print(f"ceiling: {_counts[0]} writes in {_counts[1]}", file=sys.stderr))


class _Coalescing:
    """MPyC's transport, with the writes of one loop turn joined into one ``write``."""

    __slots__ = ("_loop", "_out", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._out: list[bytes] = []
        self._loop = loop

    def write(self, data: bytes) -> None:
        out = self._out
        out.append(data)
        if len(data) >= EAGER_BYTES:
            self._flush()
        elif len(out) == 1:
            self._loop.call_soon(self._flush)

    def writelines(self, lines: Any) -> None:
        self._out.extend(lines)
        self._flush()

    def _flush(self) -> None:
        if self._out:
            _counts[0] += len(self._out)
            _counts[1] += 1
            data, self._out = b"".join(self._out), []
            self._transport.write(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _wrap(asyncoro: ModuleType) -> None:
    exchanger = asyncoro.MessageExchanger
    connection_made = exchanger.connection_made

    def coalescing_connection_made(self: Any, transport: Any) -> None:
        connection_made(self, transport)  # a client writes its id and keys at once
        self.transport = _Coalescing(transport, asyncio.get_running_loop())

    exchanger.connection_made = coalescing_connection_made


class _WrapOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "mpyc.asyncoro":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module: ModuleType) -> None:
            exec_module(module)
            _wrap(module)

        spec.loader.exec_module = exec_and_wrap  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _WrapOnImport())
