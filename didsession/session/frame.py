"""Binary frame layout, control bodies and the stream splitter (spec/session.md §6, §7).

A frame is a 12-byte header, which is also the AEAD nonce, followed by the AEAD output::

    0               4       5                       12
    +---------------+-------+-----------------------+------------------------+
    | L or tag (u32)| flags |   counter (u56, BE)   | ciphertext || 16B tag  |
    +---------------+-------+-----------------------+------------------------+

``flags`` = ``type << 4 | epoch mod 16``; bits 7..5 are reserved and zero.  The channel's
hot path works on the 64-bit word ``flags << 56 | counter`` directly (one ``struct``
unpack, one comparison); the dataclass codecs here are for everything else.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from didsession._dataclass import dataclass
from didsession.errors import FrameError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "COUNTER_MASK",
    "HEADER",
    "HEADER_SIZE",
    "MAX_CLOSE_CODE",
    "MAX_COUNTER",
    "OVERHEAD",
    "TAG_SIZE",
    "Close",
    "Control",
    "ControlType",
    "FrameDecoder",
    "FrameHeader",
    "FrameType",
    "KeyUpdate",
    "pull_control",
    "pull_header",
    "push_control",
    "push_header",
    "push_length_prefixed",
    "word",
]

HEADER = struct.Struct(">IQ")
HEADER_SIZE = 12
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE
COUNTER_MASK = (1 << 56) - 1
# A sender closes rather than use the last counter values (spec §6.3).
MAX_COUNTER = COUNTER_MASK - 1
MAX_CLOSE_CODE = 64
_RESERVED_FLAGS = 0xE0
_U32 = struct.Struct(">I")


class FrameType(IntEnum):
    """Frame type, bit 4 of the flags byte (spec §6.2)."""

    DATA = 0
    CONTROL = 1


class ControlType(IntEnum):
    """First byte of a CONTROL frame's plaintext (spec §7)."""

    KEY_UPDATE = 1
    CLOSE = 2


def word(kind: FrameType, epoch: int, counter: int) -> int:
    """The 64-bit header word ``flags << 56 | counter`` (spec §6.2)."""
    return ((kind << 4) | (epoch & 0x0F)) << 56 | counter


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """A parsed frame header (spec §6.2).

    Attributes:
        first: the length L (stream paths) or the receiver tag (datagram paths) as a u32.
        kind: DATA or CONTROL.
        epoch_bits: the key epoch modulo 16.
        counter: the per-direction frame counter.
    """

    first: int
    kind: FrameType
    epoch_bits: int
    counter: int


def push_header(header: FrameHeader) -> bytes:
    """Encode a frame header (12 bytes)."""
    return HEADER.pack(header.first, word(header.kind, header.epoch_bits, header.counter))


def pull_header(frame: bytes) -> FrameHeader:
    """Decode the header at the start of ``frame``.

    Raises:
        FrameError: fewer than 12 bytes, reserved flag bits set or an unknown frame type.
    """
    if len(frame) < HEADER_SIZE:
        raise FrameError("frame shorter than its header")
    first, w = HEADER.unpack_from(frame)
    flags = w >> 56
    if flags & _RESERVED_FLAGS:
        raise FrameError(f"reserved frame flags 0x{flags:02x}")
    return FrameHeader(first, FrameType(flags >> 4), flags & 0x0F, w & COUNTER_MASK)


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """KEY_UPDATE control body (spec §7.1): the last frame under the old key."""

    request_update: bool


@dataclass(frozen=True, slots=True)
class Close:
    """CLOSE control body (spec §7.2): ``code`` is ``""`` or a problem code (§10)."""

    code: str


Control = KeyUpdate | Close


def push_control(control: Control) -> bytes:
    """Encode a control body (the plaintext of a CONTROL frame)."""
    if isinstance(control, KeyUpdate):
        return bytes((ControlType.KEY_UPDATE, int(control.request_update)))
    code = control.code.encode("ascii")
    if len(code) > MAX_CLOSE_CODE or not _printable(code):
        raise LocalProtocolError("a close code is at most 64 printable ASCII characters")
    return bytes((ControlType.CLOSE,)) + code


def pull_control(body: bytes) -> Control:
    """Decode a control body.

    Raises:
        RemoteProtocolError: unknown control type or malformed body
            (code ``e.p.msg.session.control``).
    """
    if len(body) == 2 and body[0] == ControlType.KEY_UPDATE and body[1] in (0, 1):
        return KeyUpdate(bool(body[1]))
    if body[:1] == bytes((ControlType.CLOSE,)):
        code = body[1:]
        if len(code) <= MAX_CLOSE_CODE and _printable(code):
            return Close(code.decode("ascii"))
    raise RemoteProtocolError("malformed control frame", code="e.p.msg.session.control")


def _printable(data: bytes) -> bool:
    return all(0x21 <= b <= 0x7E for b in data)


def push_length_prefixed(data: bytes) -> bytes:
    """``u32(len(data)) || data``: how packed handshake messages travel on a stream (§4.4).

    Its inverse is :class:`FrameDecoder` (which returns the item with its prefix).
    """
    return _U32.pack(len(data)) + data


class FrameDecoder:
    """Split a byte stream into length-prefixed items (spec §6.4).

    Each item is ``u32 L || L bytes``; :meth:`next_frame` returns it whole, prefix included,
    because a session frame's header (the AEAD nonce) begins with L.  Feeding the bytes one
    at a time yields the same items as feeding them at once.  ``L`` outside
    ``[min_size, max_size]`` raises :class:`FrameError` and poisons the decoder: a stream
    whose framing is lost cannot be resynchronised.

    Args:
        max_size: the largest L accepted (bounded buffering); may be changed between items.
        min_size: the smallest L accepted (24 for session frames: flags+counter+AEAD tag).
    """

    __slots__ = ("_buf", "_error", "_pos", "max_size", "min_size")

    def __init__(self, max_size: int, *, min_size: int = HEADER_SIZE - 4 + TAG_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._error: FrameError | None = None
        self.max_size = max_size
        self.min_size = min_size

    def feed(self, data: bytes) -> None:
        """Append bytes received from the stream."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as an item."""
        return len(self._buf) - self._pos

    def next_frame(self) -> bytes | None:
        """The next complete item (prefix included), or ``None`` if more bytes are needed.

        Raises:
            FrameError: the length prefix is out of bounds (also on every later call).
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _U32.unpack_from(buf, pos)
        if length < self.min_size or length > self.max_size:
            self._error = FrameError(
                f"frame length {length} outside [{self.min_size}, {self.max_size}]"
            )
            raise self._error
        end = pos + 4 + length
        if len(buf) < end:
            return None
        item = bytes(buf[pos:end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > 65536:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return item

    def frames(self) -> list[bytes]:
        """Every complete item currently buffered."""
        out = []
        while (item := self.next_frame()) is not None:
            out.append(item)
        return out
