"""What the mediator keeps: grants, keylists and message queues, behind one async interface.

Queues are per *owner*, the DID that was granted mediation and put the recipient DID on
its keylist; only that DID, authenticated by authcrypt, reads or deletes them.  Each
message records which keylist DID it was forwarded to (``recipient_did``) so pickup can
filter by it.  :meth:`MessageStore.enqueue` returns only once the message is durable (the
mediator acknowledges the sender after that), and refuses a message that would take the
owner's queue over its limits.  Expired messages are invisible at once and deleted by
:meth:`MessageStore.expire`, which the mediator calls periodically.

Besides the per-owner limits, mediator-wide ones bound what strangers can make it keep
when mediation is open to all: DIDs granted, keylist entries, queued messages and bytes.
Each store keeps those totals next to the data (a counter row, a counter key), updated
in the transaction or script that changes the data, so a check costs one read and the
totals survive restarts.  A request that would go over one is refused with
:class:`StorageFull`; nothing stored is ever dropped to make room.

Live delivery: a :class:`Listener` hears of every message enqueued for an owner it
``wants``, from this process (SQLite) or from any instance sharing the store (Redis).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from didsession._dataclass import dataclass
from didsession.errors import MediationError
from mediator.protocols.events import KeylistUpdate
from mediator.protocols.messages import Codes
from mediator.protocols.pickup import Queued, QueueStatus

__all__ = [
    "Limits",
    "Listener",
    "MessageStore",
    "QueueStatus",
    "Queued",
    "StorageFull",
    "queue_full",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-owner bounds (queued messages, queued bytes, keylist entries), then the
    mediator-wide ones (DIDs granted, keylist entries, queued messages and bytes in all)."""

    max_messages: int = 10_000
    max_bytes: int = 64 << 20
    max_keys: int = 1_000
    max_grants: int = 100_000
    max_total_keys: int = 100_000
    max_total_messages: int = 1_000_000
    max_total_bytes: int = 1 << 30


class StorageFull(MediationError):
    """A mediator-wide limit is reached (``e.p.me.res.storage``).

    The message, which the sender gets in the problem-report, says which kind of limit but
    not its value: the operator's settings are not a stranger's business (the log says).

    Args:
        limit: the setting that was reached (``max_grants``, ``keylist_max_total``,
            ``queue_max_total_messages``, ``queue_max_total_bytes``), for the log.
        maximum: its value, for the log.
    """

    code = Codes.STORAGE_FULL

    def __init__(self, limit: str, maximum: int) -> None:
        what = _LIMIT_NOUNS.get(limit, "data")
        super().__init__(f"the mediator holds as many {what} as it may; try later")
        self.limit = limit
        self.maximum = maximum


_LIMIT_NOUNS = {
    "max_grants": "mediation grants",
    "keylist_max_total": "keylist entries",
    "queue_max_total_messages": "queued messages",
    "queue_max_total_bytes": "queued bytes",
}


def queue_full(limits: Limits) -> MediationError:
    """The error for a forward that would overflow a queue (``e.p.me.res.storage``)."""
    return MediationError(
        f"the recipient's queue is full ({limits.max_messages} messages or "
        f"{limits.max_bytes} bytes); try later",
        code=Codes.STORAGE_FULL,
    )


class Listener(Protocol):
    """Hears of newly queued messages (the live-delivery hub)."""

    def wants(self, owner: str) -> bool:
        """Whether a live connection of ``owner`` is attached here (cheap, synchronous)."""
        ...

    def notify(self, owner: str, message: Queued) -> None:
        """``message`` was queued for ``owner``; must not block."""
        ...


class MessageStore(ABC):
    """The mediator's durable state.  All methods may raise OSError-like backend errors."""

    listener: Listener | None = None

    @abstractmethod
    async def open(self) -> None:
        """Connect, create the schema, start background work."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect; nothing acknowledged is lost."""

    @abstractmethod
    async def grant(self, did: str, now: float, limits: Limits) -> bool:
        """Record that ``did`` was granted mediation; True if it was new.

        Raises:
            StorageFull: ``did`` is new and ``limits.max_grants`` DIDs are granted already.
        """

    @abstractmethod
    async def is_granted(self, did: str) -> bool: ...

    @abstractmethod
    async def update_keylist(
        self, owner: str, updates: Sequence[KeylistUpdate], now: float, limits: Limits
    ) -> list[str]:
        """Apply ``updates`` for ``owner``; one keylist-update ``result`` per update.

        A DID on another owner's keylist is a ``client_error`` (neither added nor removed),
        so is an add beyond ``limits.max_keys`` for this owner.  The updates apply in order,
        all or none: an add that would take the keylists of all owners beyond
        ``limits.max_total_keys`` raises :class:`StorageFull` and nothing is changed (a
        client at the limit removes first, in the same message or before).
        """

    @abstractmethod
    async def keylist(self, owner: str, offset: int, limit: int) -> tuple[list[str], int]:
        """One page of ``owner``'s keylist (oldest first) and its total length."""

    @abstractmethod
    async def owner_of(self, recipient_did: str) -> str | None:
        """The owner whose keylist holds ``recipient_did``."""

    @abstractmethod
    async def enqueue(
        self,
        owner: str,
        recipient_did: str,
        data: bytes,
        *,
        now: float,
        expires: float,
        limits: Limits,
    ) -> Queued:
        """Queue ``data`` durably.

        Raises:
            MediationError: the owner's queue is full (:func:`queue_full`).
            StorageFull: the queues of all owners hold ``limits.max_total_messages`` or
                ``limits.max_total_bytes`` already.
        """

    @abstractmethod
    async def status(self, owner: str, recipient_did: str | None, now: float) -> QueueStatus:
        """Count and bytes of ``owner``'s unexpired messages (for ``recipient_did`` only, if
        given), without reading the messages' contents."""

    @abstractmethod
    async def fetch(
        self, owner: str, recipient_did: str | None, limit: int, max_bytes: int, now: float
    ) -> list[Queued]:
        """Oldest first, up to ``limit`` messages and ``max_bytes`` (at least one message)."""

    @abstractmethod
    async def get(self, owner: str, message_id: str, now: float) -> Queued | None: ...

    @abstractmethod
    async def delete(self, owner: str, message_ids: Sequence[str]) -> int:
        """Delete those of ``message_ids`` that are ``owner``'s; how many were."""

    @abstractmethod
    async def expire(self, now: float) -> int:
        """Delete messages whose expiry has passed; how many.

        Called every ``queue_expire_interval``; a store may do other bounded upkeep here
        (Redis: the repair pass of its derived keys).
        """

    @abstractmethod
    async def totals(self) -> tuple[int, int]:
        """Messages and bytes queued in all (the kept counters), for metrics."""
