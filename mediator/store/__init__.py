"""Where the mediator keeps grants, keylists and queues: SQLite (default) or Redis."""

from __future__ import annotations

from mediator.store.base import Limits, Listener, MessageStore, Queued, QueueStatus, queue_full

__all__ = ["Limits", "Listener", "MessageStore", "QueueStatus", "Queued", "queue_full"]
