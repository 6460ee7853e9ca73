"""In-memory pair of sans-IO session peers: no sockets, no clock, no randomness.

``SessionPair.establish()`` runs a real handshake between two :class:`Handshake` objects
(deterministic keys and randomness) and wraps the two channels with helpers that move
frames between them, like h11's ``ConnectionPair``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from didsession.session import (
    Channel,
    Event,
    FrameDecoder,
    Handshake,
    Limits,
    MessageReceived,
    PathKind,
    Role,
    SessionConfig,
    Suite,
)
from didsession.session.frame import OVERHEAD
from didsession.session.keyschedule import public_key

ALICE = "did:example:alice"
BOB = "did:example:bob"
MALLORY = "did:example:mallory"


def det_rand(seed: str) -> Callable[[int], bytes]:
    """A deterministic stand-in for ``os.urandom``."""
    state = {"i": 0}

    def rand(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}/{state['i']}".encode()).digest()
            state["i"] += 1
        return out[:n]

    return rand


STATIC = {did: det_rand(f"static/{did}")(32) for did in (ALICE, BOB, MALLORY)}
PUBLIC = {did: public_key(key) for did, key in STATIC.items()}


def resolve(did: str) -> bytes:
    """``peer_static_key`` for the three test DIDs."""
    from didsession.errors import DIDError

    try:
        return PUBLIC[did]
    except KeyError:
        raise DIDError(f"unknown DID {did}") from None


def make_handshakes(
    *,
    suite: Suite = Suite.AES256GCM,
    path: PathKind = PathKind.STREAM,
    limits: Limits | None = None,
    seed: str = "pair",
    initiator_config: SessionConfig | None = None,
    responder_config: SessionConfig | None = None,
    **responder_kwargs: object,
) -> tuple[Handshake, Handshake]:
    """An initiator (ALICE) and a responder (BOB) that have not exchanged anything yet."""
    base = SessionConfig(suites=(suite,), paths=(path,), limits=limits or Limits())
    initiator = Handshake(
        Role.INITIATOR,
        local_did=ALICE,
        static_private=STATIC[ALICE],
        peer_static_key=resolve,
        peer_did=BOB,
        config=initiator_config or base,
        rand=det_rand(f"{seed}/initiator"),
    )
    responder = Handshake(
        Role.RESPONDER,
        local_did=BOB,
        static_private=STATIC[BOB],
        peer_static_key=resolve,
        config=responder_config or base,
        rand=det_rand(f"{seed}/responder"),
        **responder_kwargs,  # type: ignore[arg-type]
    )
    return initiator, responder


@dataclass
class SessionPair:
    """Two established channels and the plumbing between them."""

    initiator: Channel
    responder: Channel
    _decoders: dict[int, FrameDecoder] = field(default_factory=dict)

    @classmethod
    def establish(cls, *, now: float = 0.0, **kwargs: object) -> SessionPair:
        """Run request/accept in memory; arguments as for :func:`make_handshakes`."""
        ih, rh = make_handshakes(**kwargs)  # type: ignore[arg-type]
        request = ih.initiate(now)
        rh.receive_message(request.plaintext, ALICE, now)
        (accept,) = rh.messages_to_send()
        ih.receive_message(accept.plaintext, BOB, now)
        return cls(ih.channel, rh.channel)

    @property
    def stream(self) -> bool:
        return self.initiator.path is PathKind.STREAM

    def other(self, channel: Channel) -> Channel:
        return self.responder if channel is self.initiator else self.initiator

    def split(self, receiver: Channel, data: bytes) -> list[bytes]:
        """Stream paths: cut concatenated output into frames; datagram: one frame."""
        if not self.stream:
            return [data]
        decoder = self._decoders.setdefault(
            id(receiver),
            FrameDecoder(
                max(receiver.params.initiator_max_payload, receiver.params.responder_max_payload)
                + OVERHEAD
            ),
        )
        decoder.feed(data)
        return decoder.frames()

    def seal(self, sender: Channel, payload: bytes) -> list[bytes]:
        """Frames (split) that ``sender.seal(payload)`` produced, for the other side."""
        return self.split(self.other(sender), sender.seal(payload))

    def pending(self, sender: Channel) -> list[bytes]:
        """Frames the sender queued by itself (``data_to_send``), split."""
        out: list[bytes] = []
        for data in sender.data_to_send():
            out += self.split(self.other(sender), data)
        return out

    def deliver(self, receiver: Channel, frames: list[bytes]) -> list[Event]:
        events: list[Event] = []
        for frame in frames:
            events += receiver.receive(frame)
        return events

    def send(self, sender: Channel, payload: bytes) -> list[Event]:
        """Seal, deliver, then shuttle queued control frames both ways until quiet."""
        events = self.deliver(self.other(sender), self.seal(sender, payload))
        return events + self.flush()

    def flush(self) -> list[Event]:
        events: list[Event] = []
        moved = True
        while moved:
            moved = False
            for ch in (self.initiator, self.responder):
                frames = self.pending(ch)
                if frames:
                    moved = True
                    events += self.deliver(self.other(ch), frames)
        return events


def payloads(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageReceived)]
