"""What others send us: JSON whose every failure is a ``ValueError``, and bounded memory.

``json.loads`` raises ``RecursionError``, not ``ValueError``, on deeply nested input
(``[[[[...`` of a few KB), and a value nested just below that limit can still exhaust the
stack later, in whatever walks it (``copy.deepcopy``, ``json.dumps``, validation).  Every
parser of input from the network or from files a person hands us catches ``ValueError``
and reports it as its own typed error; this keeps that true and bounds the nesting.

Whatever a stranger can make us remember (a DID's short form, the key-id dialect it
speaks) is kept in a bounded LRU (:func:`remember`), never in a plain dict or set.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, TypeVar

__all__ = ["MAX_DEPTH", "parse_json", "remember"]

K = TypeVar("K")
V = TypeVar("V")

# Far deeper than any DIDComm message, DID document, roster or status file nests.
MAX_DEPTH = 64


def parse_json(data: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """``json.loads(data, **kwargs)``, refusing values nested deeper than ``max_depth``.

    Raises:
        ValueError: not JSON, or nested too deeply (``json.JSONDecodeError`` is one too);
            what a ``kwargs`` hook raises passes through.
    """
    try:
        value = json.loads(data, **kwargs)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    if isinstance(value, dict | list) and _deeper_than(value, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return value


def _deeper_than(value: dict[str, Any] | list[Any], limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def remember(cache: OrderedDict[K, V], key: K, value: V, capacity: int) -> None:
    """Put ``key`` in the LRU ``cache`` (most recent last), dropping the oldest beyond
    ``capacity`` entries."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > capacity:
        cache.popitem(last=False)
