"""Sans-IO cores of the mediator's DIDComm protocols: parsed message in, event out; results
in, reply message out.  No module here imports asyncio, sockets or aiohttp."""

from __future__ import annotations

from mediator.protocols.dispatch import TABLE, receive
from mediator.protocols.events import (
    DeliveryRequested,
    Event,
    FeaturesQueried,
    ForwardReceived,
    KeylistAction,
    KeylistQueried,
    KeylistUpdate,
    KeylistUpdateRequested,
    LiveDeliveryChanged,
    MediationRequested,
    MessagesReceived,
    PingReceived,
    ProblemReported,
    StatusRequested,
)
from mediator.protocols.messages import PROTOCOLS, Codes, problem_report

__all__ = [
    "PROTOCOLS",
    "TABLE",
    "Codes",
    "DeliveryRequested",
    "Event",
    "FeaturesQueried",
    "ForwardReceived",
    "KeylistAction",
    "KeylistQueried",
    "KeylistUpdate",
    "KeylistUpdateRequested",
    "LiveDeliveryChanged",
    "MediationRequested",
    "MessagesReceived",
    "PingReceived",
    "ProblemReported",
    "StatusRequested",
    "problem_report",
    "receive",
]
