"""Fast symmetric sessions between DIDs, set up by two DIDComm v2 messages.

See ``spec/session.md``.  The sans-IO cores are :class:`Handshake` and :class:`Channel`;
:mod:`didsession.session.stream` runs them over an asyncio stream.
"""

from __future__ import annotations

from didsession.session.channel import MAX_EPOCH_SKIP, REPLAY_WINDOW, Channel, ChannelState
from didsession.session.events import (
    Direction,
    Event,
    HandshakeTimedOut,
    KeyUpdated,
    MessageReceived,
    SessionClosed,
    SessionEstablished,
    SessionRefused,
)
from didsession.session.frame import OVERHEAD, FrameDecoder, push_length_prefixed
from didsession.session.handshake import (
    PROTOCOL_URI,
    Handshake,
    HandshakeState,
    MessageType,
    OutboundMessage,
    SessionConfig,
    close_message,
    pull_message,
    push_message,
    receive_close_message,
)
from didsession.session.keyschedule import (
    PROTOCOL_VERSION,
    Limits,
    PathKind,
    Resumption,
    Role,
    SessionParameters,
    Suite,
)

__all__ = [
    "MAX_EPOCH_SKIP",
    "OVERHEAD",
    "PROTOCOL_URI",
    "PROTOCOL_VERSION",
    "REPLAY_WINDOW",
    "Channel",
    "ChannelState",
    "Direction",
    "Event",
    "FrameDecoder",
    "Handshake",
    "HandshakeState",
    "HandshakeTimedOut",
    "KeyUpdated",
    "Limits",
    "MessageReceived",
    "MessageType",
    "OutboundMessage",
    "PathKind",
    "Resumption",
    "Role",
    "SessionClosed",
    "SessionConfig",
    "SessionEstablished",
    "SessionParameters",
    "SessionRefused",
    "Suite",
    "close_message",
    "pull_message",
    "push_length_prefixed",
    "push_message",
    "receive_close_message",
]
