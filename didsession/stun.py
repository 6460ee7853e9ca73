"""STUN codec and sans-IO STUN server/client cores (RFC 8489, RFC 5780, RFC 3489 compatibility).

Theory of operation
-------------------
Nothing in this module touches a socket, a clock or a random source of its own: bytes, the
sender's address, the time (``now``) and randomness (``rand``) go in; parsed values and bytes to
send come out.  ``didsession.stun_asyncio`` is the thin asyncio shell around it.

Wire layer (RFC 8489 §5, §14).  :func:`pull_message` turns one datagram (or one framed TCP
message) into a :class:`Message`, a frozen value holding the method, the class, the transaction
id and the attributes *in wire order*; :func:`push_message` is its inverse.  Parsing is strict
and total: any input is either a :class:`Message` or a :class:`~didsession.errors.StunParseError`
naming what is wrong.  A message whose header carries the magic cookie is an RFC 5389/8489
message with a 12-byte transaction id; without the cookie it is a classic RFC 3489 message whose
16-byte transaction id covers the cookie's place (RFC 8489 §11, RFC 5389 §12).

Attributes come in codec pairs (``pull_address`` / ``push_address`` ...).  The attributes this
module gives meaning to have their own frozen classes (:class:`XorMappedAddress`,
:class:`ErrorCode`, ...); every other attribute, including the ones we know but keep opaque
(MESSAGE-INTEGRITY, USERNAME, ...), is a :class:`RawAttribute` carrying its bytes.
MESSAGE-INTEGRITY is never verified here: the STUN server of didsession runs without
credentials, as public STUN servers for ICE do (RFC 8489 §9).

Server (:class:`StunServer`).  ``handle(data, source, now)`` answers a Binding request with the
source's transport address and returns the bytes to send *back to that source and nowhere
else*.  A STUN server that could be told to send elsewhere (RFC 3489's RESPONSE-ADDRESS, RFC
5780's RESPONSE-PORT) is a reflector for amplification attacks, so those requests get a 420
Unknown Attribute error, sent to the source.  RFC 5780's CHANGE-REQUEST only changes the
address a response leaves *from*; ``respond(..., local=...)`` honours it for a shell serving all
four (IP, port) combinations of the primary and alternate address, and ``handle`` (one socket)
answers it with 420.  Everything that is not a request, or not STUN, is dropped and counted; so
is everything above a per-source token-bucket rate.

Server hot path.  Most traffic is plain Binding requests (magic cookie; SOFTWARE, FINGERPRINT
and attributes the server ignores), so ``respond`` first tries ``_plain_binding``: the checks
:func:`pull_message` makes, made in place on the bytes, and a response built from a template per
local address (header, RESPONSE-ORIGIN, OTHER-ADDRESS, SOFTWARE encoded once) with only
XOR-MAPPED-ADDRESS and FINGERPRINT computed.  Source addresses are parsed once and remembered
(bounded), instead of through :mod:`ipaddress` per request.  Anything else, including anything
the hot path finds wrong, takes the general path; tests hold both to the same bytes and counters.

Client.  :func:`binding_request` and :func:`parse_binding_response` are the two halves of one
Binding transaction; :func:`classify_mapping` turns the mapped addresses of the RFC 5780 §4.3
tests into a :class:`MappingBehavior`.

TCP (RFC 8489 §6.2.2).  STUN messages follow each other on the stream with no extra framing;
the header's length field delimits them.  :func:`split_stream` and :class:`StunStreamReader`
cut a byte stream into whole messages with a bounded buffer.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import ClassVar, Final, TypeVar

from didsession._dataclass import dataclass
from didsession.errors import LocalProtocolError, RemoteProtocolError, StunParseError

__all__ = [
    "DEFAULT_SOFTWARE",
    "HEADER_LENGTH",
    "MAGIC_COOKIE",
    "MAX_MESSAGE_SIZE",
    "Address",
    "AddressAttribute",
    "Attribute",
    "AttributeType",
    "BindingResult",
    "ChangeRequest",
    "ChangedAddress",
    "ErrorCode",
    "Fingerprint",
    "MappedAddress",
    "MappingBehavior",
    "Message",
    "MessageClass",
    "Method",
    "OtherAddress",
    "RateLimit",
    "RawAttribute",
    "ResponseOrigin",
    "Software",
    "SourceAddress",
    "StunReply",
    "StunServer",
    "StunServerConfig",
    "StunServerStats",
    "StunStreamReader",
    "TokenBucketLimiter",
    "UnknownAttributes",
    "XorMappedAddress",
    "binding_request",
    "classify_mapping",
    "mapping_test_targets",
    "parse_binding_response",
    "pull_address",
    "pull_attribute",
    "pull_change_request",
    "pull_error_code",
    "pull_fingerprint",
    "pull_message",
    "pull_software",
    "pull_unknown_attributes",
    "pull_xor_address",
    "push_address",
    "push_attribute",
    "push_change_request",
    "push_error_code",
    "push_fingerprint",
    "push_message",
    "push_software",
    "push_unknown_attributes",
    "push_xor_address",
    "split_stream",
]

#: An IP address (text form, as :mod:`ipaddress` prints it) and a port.
Address = tuple[str, int]

MAGIC_COOKIE: Final = 0x2112A442
HEADER_LENGTH: Final = 20
FINGERPRINT_XOR: Final = 0x5354554E

#: Largest message :func:`pull_message` accepts and :func:`push_message` produces.  1280 bytes is
#: the IPv6 minimum MTU: a STUN message this size crosses any IPv6 path unfragmented, and a
#: Binding exchange needs about 100.  (For IPv4 paths of unknown MTU RFC 8489 §6.1 assumes
#: 576-byte datagrams, i.e. 548 bytes of STUN; our Binding responses stay far below that too.)
MAX_MESSAGE_SIZE: Final = 1280

#: SOFTWARE value the server and client send unless told otherwise (RFC 8489 §14.14).
DEFAULT_SOFTWARE: Final = "didsession"

# RFC 8489 §14.8 and §14.14: reason phrases and SOFTWARE are < 128 characters, <= 763 bytes.
_MAX_TEXT_BYTES: Final = 763
_MAX_TEXT_CHARS: Final = 127

_IPV4: Final = 0x01
_IPV6: Final = 0x02

# Precompiled wire structures (RFC 8489 §5, §14), shared by the codecs and the server's hot path.
_HEADER: Final = struct.Struct("!HHI")  # message type, length, magic cookie
_ATTR_HEADER: Final = struct.Struct("!HH")  # attribute type, value length
_U32: Final = struct.Struct("!I")


class MessageClass(enum.IntEnum):
    """The two class bits of the message type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(enum.IntEnum):
    """STUN methods this module names (RFC 8489 §18.2).  Others stay plain ints."""

    BINDING = 0x001


class AttributeType(enum.IntEnum):
    """Attribute types known to this module (RFC 8489 §18.3, RFC 5780 §7, RFC 3489 §11.2)."""

    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489 only; a reflection vector, never honoured
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    SOURCE_ADDRESS = 0x0004  # RFC 3489
    CHANGED_ADDRESS = 0x0005  # RFC 3489
    USERNAME = 0x0006
    PASSWORD = 0x0007  # RFC 3489
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REFLECTED_FROM = 0x000B  # RFC 3489
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024  # RFC 8445 (ICE)
    USE_CANDIDATE = 0x0025  # RFC 8445 (ICE)
    PADDING = 0x0026  # RFC 5780 §7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 §7.5; a reflection vector, never honoured
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029  # RFC 8445
    ICE_CONTROLLING = 0x802A  # RFC 8445
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 §7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 §7.4


def _type_name(attr_type: int) -> str:
    try:
        return f"{AttributeType(attr_type).name.replace('_', '-')} (0x{attr_type:04x})"
    except ValueError:
        return f"attribute 0x{attr_type:04x}"


# --------------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attribute:
    """Base of every STUN attribute value.  ``type`` is the 16-bit attribute type."""

    TYPE: ClassVar[int] = -1

    @property
    def type(self) -> int:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class RawAttribute(Attribute):
    """An attribute kept as its value bytes: unknown, or known but opaque to this module.

    Raises:
        LocalProtocolError: the type is not 16 bits, the value is longer than 65535 bytes, or
            the type has a dedicated class here (use that class instead).
    """

    attr_type: int
    value: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.attr_type <= 0xFFFF:
            raise LocalProtocolError(f"STUN attribute type {self.attr_type} is not 16 bits")
        if len(self.value) > 0xFFFF:
            raise LocalProtocolError("STUN attribute value is longer than 65535 bytes")
        if self.attr_type in _CODECS:
            raise LocalProtocolError(
                f"{_type_name(self.attr_type)} has its own attribute class; use it"
            )

    @property
    def type(self) -> int:
        return self.attr_type


@dataclass(frozen=True, slots=True)
class AddressAttribute(Attribute):
    """Base of the attributes carrying one transport address (RFC 8489 §14.1)."""

    address: Address
    XOR: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # Canonical text form, so that equal addresses compare equal however they were written.
        host, port = self.address
        _check_port(port)
        object.__setattr__(self, "address", (str(_ip(host)), port))


@dataclass(frozen=True, slots=True)
class MappedAddress(AddressAttribute):
    """MAPPED-ADDRESS (RFC 8489 §14.1): the client's address, plain; for RFC 3489 clients."""

    TYPE: ClassVar[int] = AttributeType.MAPPED_ADDRESS


@dataclass(frozen=True, slots=True)
class XorMappedAddress(AddressAttribute):
    """XOR-MAPPED-ADDRESS (RFC 8489 §14.2): the client's address, obfuscated by XOR."""

    TYPE: ClassVar[int] = AttributeType.XOR_MAPPED_ADDRESS
    XOR: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class ResponseOrigin(AddressAttribute):
    """RESPONSE-ORIGIN (RFC 5780 §7.3): the address the response was sent from."""

    TYPE: ClassVar[int] = AttributeType.RESPONSE_ORIGIN


@dataclass(frozen=True, slots=True)
class OtherAddress(AddressAttribute):
    """OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate address and port."""

    TYPE: ClassVar[int] = AttributeType.OTHER_ADDRESS


@dataclass(frozen=True, slots=True)
class SourceAddress(AddressAttribute):
    """SOURCE-ADDRESS (RFC 3489 §11.2.2): RESPONSE-ORIGIN's RFC 3489 name."""

    TYPE: ClassVar[int] = AttributeType.SOURCE_ADDRESS


@dataclass(frozen=True, slots=True)
class ChangedAddress(AddressAttribute):
    """CHANGED-ADDRESS (RFC 3489 §11.2.3): OTHER-ADDRESS's RFC 3489 name."""

    TYPE: ClassVar[int] = AttributeType.CHANGED_ADDRESS


@dataclass(frozen=True, slots=True)
class Software(Attribute):
    """SOFTWARE (RFC 8489 §14.14): fewer than 128 characters of UTF-8, at most 763 bytes."""

    TYPE: ClassVar[int] = AttributeType.SOFTWARE
    text: str


@dataclass(frozen=True, slots=True)
class Fingerprint(Attribute):
    """FINGERPRINT (RFC 8489 §14.7): CRC-32 of the message before it, XOR 0x5354554e.

    :func:`push_message` always recomputes it; a value given here is ignored when pushing.
    """

    TYPE: ClassVar[int] = AttributeType.FINGERPRINT
    crc: int


@dataclass(frozen=True, slots=True)
class ErrorCode(Attribute):
    """ERROR-CODE (RFC 8489 §14.8): a code 300..699 and a reason phrase."""

    TYPE: ClassVar[int] = AttributeType.ERROR_CODE
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class UnknownAttributes(Attribute):
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): the types a 420 error response did not understand."""

    TYPE: ClassVar[int] = AttributeType.UNKNOWN_ATTRIBUTES
    types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ChangeRequest(Attribute):
    """CHANGE-REQUEST (RFC 5780 §7.2): ask the server to answer from another IP and/or port."""

    TYPE: ClassVar[int] = AttributeType.CHANGE_REQUEST
    change_ip: bool = False
    change_port: bool = False


# --- codec pairs ------------------------------------------------------------------------------


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise LocalProtocolError(f"{host!r} is not an IP address") from None


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"port {port} is out of range")


def push_address(address: Address) -> bytes:
    """Encode MAPPED-ADDRESS-style value bytes (RFC 8489 §14.1).

    Raises:
        LocalProtocolError: the host is not an IP address or the port is out of range.
    """
    host, port = address
    _check_port(port)
    ip = _ip(host)
    family = _IPV4 if ip.version == 4 else _IPV6
    return struct.pack("!BBH", 0, family, port) + ip.packed


def pull_address(value: bytes) -> Address:
    """Decode MAPPED-ADDRESS-style value bytes (RFC 8489 §14.1).

    Raises:
        StunParseError: unknown family or a length that does not fit it.
    """
    if len(value) < 4:
        raise StunParseError(f"STUN address is {len(value)} bytes, shorter than 4")
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0]
    if family == _IPV4:
        if len(value) != 8:
            raise StunParseError(f"STUN IPv4 address is {len(value)} bytes, not 8")
        return str(ipaddress.IPv4Address(value[4:8])), port
    if family == _IPV6:
        if len(value) != 20:
            raise StunParseError(f"STUN IPv6 address is {len(value)} bytes, not 20")
        return str(ipaddress.IPv6Address(value[4:20])), port
    raise StunParseError(f"STUN address family 0x{family:02x} is neither IPv4 nor IPv6")


def _xor_pad(transaction_id: bytes) -> bytes:
    # RFC 8489 §14.2: port XOR the cookie's top 16 bits, IPv4 XOR the cookie, IPv6 XOR cookie ||
    # transaction id.  A classic 16-byte id has no cookie; we use the cookie and its last 12
    # bytes, so the attribute still round-trips in a classic message.
    return struct.pack("!I", MAGIC_COOKIE) + transaction_id[-12:]


def _xor(value: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(value, pad, strict=False))


def push_xor_address(address: Address, transaction_id: bytes) -> bytes:
    """Encode XOR-MAPPED-ADDRESS value bytes (RFC 8489 §14.2).

    Raises:
        LocalProtocolError: the host is not an IP address or the port is out of range.
    """
    plain = push_address(address)
    return plain[:2] + _xor(plain[2:], _xor_pad(transaction_id)[:2] + _xor_pad(transaction_id))


def pull_xor_address(value: bytes, transaction_id: bytes) -> Address:
    """Decode XOR-MAPPED-ADDRESS value bytes (RFC 8489 §14.2).

    Raises:
        StunParseError: unknown family or a length that does not fit it.
    """
    if len(value) < 4:
        raise StunParseError(f"STUN address is {len(value)} bytes, shorter than 4")
    pad = _xor_pad(transaction_id)
    return pull_address(value[:2] + _xor(value[2:], pad[:2] + pad))


def _check_text(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > _MAX_TEXT_BYTES or len(text) > _MAX_TEXT_CHARS:
        raise LocalProtocolError(f"STUN {what} is longer than 127 characters or 763 bytes")
    return raw


def _pull_text(value: bytes, what: str) -> str:
    if len(value) > _MAX_TEXT_BYTES:
        raise StunParseError(f"STUN {what} is {len(value)} bytes, more than 763")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise StunParseError(f"STUN {what} is not valid UTF-8") from None


def push_software(text: str) -> bytes:
    """Encode SOFTWARE value bytes (RFC 8489 §14.14).

    Raises:
        LocalProtocolError: longer than 127 characters or 763 bytes.
    """
    return _check_text(text, "SOFTWARE")


def pull_software(value: bytes) -> str:
    """Decode SOFTWARE value bytes (RFC 8489 §14.14).

    Raises:
        StunParseError: longer than 763 bytes or not UTF-8.
    """
    return _pull_text(value, "SOFTWARE")


def push_fingerprint(crc: int) -> bytes:
    """Encode FINGERPRINT value bytes (RFC 8489 §14.7)."""
    if not 0 <= crc <= 0xFFFFFFFF:
        raise LocalProtocolError(f"FINGERPRINT {crc} is not 32 bits")
    return struct.pack("!I", crc)


def pull_fingerprint(value: bytes) -> int:
    """Decode FINGERPRINT value bytes (RFC 8489 §14.7).

    Raises:
        StunParseError: not exactly 4 bytes.
    """
    if len(value) != 4:
        raise StunParseError(f"STUN FINGERPRINT is {len(value)} bytes, not 4")
    crc: int = struct.unpack("!I", value)[0]
    return crc


def push_error_code(code: int, reason: str) -> bytes:
    """Encode ERROR-CODE value bytes (RFC 8489 §14.8).

    Raises:
        LocalProtocolError: the code is outside 300..699 or the reason is too long.
    """
    if not 300 <= code <= 699:
        raise LocalProtocolError(f"STUN error code {code} is outside 300..699")
    return struct.pack("!HBB", 0, code // 100, code % 100) + _check_text(reason, "reason phrase")


def pull_error_code(value: bytes) -> tuple[int, str]:
    """Decode ERROR-CODE value bytes (RFC 8489 §14.8) into (code, reason).

    Raises:
        StunParseError: shorter than 4 bytes, class outside 3..6, number above 99, or a reason
            that is not UTF-8 or longer than 763 bytes.
    """
    if len(value) < 4:
        raise StunParseError(f"STUN ERROR-CODE is {len(value)} bytes, shorter than 4")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6:
        raise StunParseError(f"STUN ERROR-CODE class {klass} is outside 3..6")
    if number > 99:
        raise StunParseError(f"STUN ERROR-CODE number {number} is above 99")
    return klass * 100 + number, _pull_text(value[4:], "reason phrase")


def push_unknown_attributes(types: tuple[int, ...]) -> bytes:
    """Encode UNKNOWN-ATTRIBUTES value bytes (RFC 8489 §14.13).

    Raises:
        LocalProtocolError: a type is not 16 bits.
    """
    for t in types:
        if not 0 <= t <= 0xFFFF:
            raise LocalProtocolError(f"STUN attribute type {t} is not 16 bits")
    return struct.pack(f"!{len(types)}H", *types)


def pull_unknown_attributes(value: bytes) -> tuple[int, ...]:
    """Decode UNKNOWN-ATTRIBUTES value bytes (RFC 8489 §14.13).

    Raises:
        StunParseError: an odd length.
    """
    if len(value) % 2:
        raise StunParseError(f"STUN UNKNOWN-ATTRIBUTES is {len(value)} bytes, not even")
    return struct.unpack(f"!{len(value) // 2}H", value)


def push_change_request(change_ip: bool, change_port: bool) -> bytes:
    """Encode CHANGE-REQUEST value bytes (RFC 5780 §7.2): flag A=0x4 (IP), B=0x2 (port)."""
    return struct.pack("!I", (0x4 if change_ip else 0) | (0x2 if change_port else 0))


def pull_change_request(value: bytes) -> tuple[bool, bool]:
    """Decode CHANGE-REQUEST value bytes (RFC 5780 §7.2) into (change_ip, change_port).

    Unused bits are ignored, as the RFC asks.

    Raises:
        StunParseError: not exactly 4 bytes.
    """
    if len(value) != 4:
        raise StunParseError(f"STUN CHANGE-REQUEST is {len(value)} bytes, not 4")
    flags: int = struct.unpack("!I", value)[0]
    return bool(flags & 0x4), bool(flags & 0x2)


_Pull = Callable[[bytes, bytes], Attribute]

_CODECS: dict[int, _Pull] = {
    AttributeType.MAPPED_ADDRESS: lambda v, t: MappedAddress(pull_address(v)),
    AttributeType.XOR_MAPPED_ADDRESS: lambda v, t: XorMappedAddress(pull_xor_address(v, t)),
    AttributeType.RESPONSE_ORIGIN: lambda v, t: ResponseOrigin(pull_address(v)),
    AttributeType.OTHER_ADDRESS: lambda v, t: OtherAddress(pull_address(v)),
    AttributeType.SOURCE_ADDRESS: lambda v, t: SourceAddress(pull_address(v)),
    AttributeType.CHANGED_ADDRESS: lambda v, t: ChangedAddress(pull_address(v)),
    AttributeType.SOFTWARE: lambda v, t: Software(pull_software(v)),
    AttributeType.FINGERPRINT: lambda v, t: Fingerprint(pull_fingerprint(v)),
    AttributeType.ERROR_CODE: lambda v, t: ErrorCode(*pull_error_code(v)),
    AttributeType.UNKNOWN_ATTRIBUTES: lambda v, t: UnknownAttributes(pull_unknown_attributes(v)),
    AttributeType.CHANGE_REQUEST: lambda v, t: ChangeRequest(*pull_change_request(v)),
}


def pull_attribute(attr_type: int, value: bytes, transaction_id: bytes) -> Attribute:
    """Decode one attribute's value bytes (without its 4-byte header) into an :class:`Attribute`.

    Raises:
        StunParseError: the value does not fit the type's format.
    """
    pull = _CODECS.get(attr_type)
    if pull is None:
        return RawAttribute(attr_type, bytes(value))
    return pull(value, transaction_id)


def _attribute_value(attr: Attribute, transaction_id: bytes) -> bytes:
    if isinstance(attr, RawAttribute):
        return attr.value
    if isinstance(attr, AddressAttribute):
        if attr.XOR:
            return push_xor_address(attr.address, transaction_id)
        return push_address(attr.address)
    if isinstance(attr, Software):
        return push_software(attr.text)
    if isinstance(attr, Fingerprint):
        return push_fingerprint(attr.crc)
    if isinstance(attr, ErrorCode):
        return push_error_code(attr.code, attr.reason)
    if isinstance(attr, UnknownAttributes):
        return push_unknown_attributes(attr.types)
    if isinstance(attr, ChangeRequest):
        return push_change_request(attr.change_ip, attr.change_port)
    raise LocalProtocolError(f"no STUN codec for {type(attr).__name__}")


def push_attribute(attr: Attribute, transaction_id: bytes) -> bytes:
    """Encode one attribute as type, length, value and zero padding to 4 bytes (RFC 8489 §14).

    Raises:
        LocalProtocolError: the attribute's value cannot be encoded.
    """
    value = _attribute_value(attr, transaction_id)
    return _ATTR_HEADER.pack(attr.type, len(value)) + value + bytes(-len(value) % 4)


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------

_A = TypeVar("_A", bound=Attribute)


@dataclass(frozen=True, slots=True)
class Message:
    """One STUN message (RFC 8489 §5).

    Args:
        method: 12-bit method (:class:`Method` for the ones named here).
        message_class: request, indication, success or error response.
        transaction_id: 12 bytes; 16 bytes for a classic RFC 3489 message (no magic cookie).
        attributes: in wire order, FINGERPRINT included when the message carried one.

    Raises:
        LocalProtocolError: method out of range or transaction id of the wrong length.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.method <= 0xFFF:
            raise LocalProtocolError(f"STUN method 0x{self.method:x} is not 12 bits")
        if len(self.transaction_id) not in (12, 16):
            raise LocalProtocolError("STUN transaction id must be 12 bytes (16 for RFC 3489)")
        if not isinstance(self.attributes, tuple):
            object.__setattr__(self, "attributes", tuple(self.attributes))

    @property
    def classic(self) -> bool:
        """True for an RFC 3489 message: 16-byte transaction id, no magic cookie."""
        return len(self.transaction_id) == 16

    def find(self, kind: type[_A]) -> _A | None:
        """The first attribute of class ``kind`` (RFC 8489 §14: later duplicates are ignored)."""
        for attr in self.attributes:
            if isinstance(attr, kind):
                return attr
        return None

    def find_type(self, attr_type: int) -> Attribute | None:
        """The first attribute whose wire type is ``attr_type``."""
        for attr in self.attributes:
            if attr.type == attr_type:
                return attr
        return None


def _encode_type(method: int, message_class: int) -> int:
    # RFC 8489 §5: M11..M7 C1 M6..M4 C0 M3..M0 in the low 14 bits.
    return (
        ((method & 0xF80) << 2)
        | ((method & 0x070) << 1)
        | (method & 0x00F)
        | ((message_class & 0b10) << 7)
        | ((message_class & 0b01) << 4)
    )


def _decode_type(message_type: int) -> tuple[int, MessageClass]:
    method = ((message_type & 0x3E00) >> 2) | ((message_type & 0x00E0) >> 1) | (message_type & 0xF)
    klass = ((message_type & 0x0100) >> 7) | ((message_type & 0x0010) >> 4)
    try:
        return Method(method), MessageClass(klass)
    except ValueError:
        return method, MessageClass(klass)


def _fingerprint(prefix: bytes) -> int:
    # RFC 8489 §14.7: CRC-32 over the message up to FINGERPRINT, with the header's length
    # already counting the FINGERPRINT attribute (8 bytes).
    length = len(prefix) - HEADER_LENGTH + 8
    patched = prefix[:2] + struct.pack("!H", length) + prefix[4:]
    return (zlib.crc32(patched) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def pull_message(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Parse one whole STUN message (RFC 8489 §5, §6.3; RFC 3489 when the cookie is absent).

    Checks, in order: 20-byte header, ``max_size``, top two bits zero, length a multiple of 4
    and equal to what follows the header, every attribute inside the message, each known
    attribute's format, FINGERPRINT last and correct.  Padding bytes are ignored (§14).

    Args:
        data: exactly one message (a datagram, or one message cut by :func:`split_stream`).
        max_size: largest accepted message, :data:`MAX_MESSAGE_SIZE` by default.

    Returns:
        The message, FINGERPRINT kept as the last attribute when present.

    Raises:
        StunParseError: anything malformed, with a sentence saying what.
    """
    size = len(data)
    if size < HEADER_LENGTH:
        raise StunParseError(f"STUN message is {size} bytes, shorter than the 20-byte header")
    if size > max_size:
        raise StunParseError(f"STUN message is {size} bytes, more than the {max_size} accepted")
    message_type, length, cookie = _HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise StunParseError("not a STUN message: the top two bits of the header are not zero")
    if length % 4:
        raise StunParseError(f"STUN message length {length} is not a multiple of 4")
    if HEADER_LENGTH + length != size:
        raise StunParseError(
            f"STUN header announces {length} bytes of attributes but {size - HEADER_LENGTH} follow"
        )
    transaction_id = bytes(data[8:20]) if cookie == MAGIC_COOKIE else bytes(data[4:20])
    method, message_class = _decode_type(message_type)

    attributes: list[Attribute] = []
    pos = HEADER_LENGTH
    while pos < size:
        if attributes and isinstance(attributes[-1], Fingerprint):
            raise StunParseError("STUN FINGERPRINT is not the last attribute")
        if size - pos < 4:
            raise StunParseError("STUN attribute header is cut short")
        attr_type, attr_length = _ATTR_HEADER.unpack_from(data, pos)
        start = pos + 4
        end = start + attr_length + (-attr_length % 4)
        if end > size:
            raise StunParseError(
                f"STUN {_type_name(attr_type)} claims {attr_length} bytes "
                f"but only {size - start} remain"
            )
        attr = pull_attribute(attr_type, bytes(data[start : start + attr_length]), transaction_id)
        if isinstance(attr, Fingerprint) and attr.crc != _fingerprint(bytes(data[:pos])):
            raise StunParseError("STUN FINGERPRINT does not match the message")
        attributes.append(attr)
        pos = end
    return Message(method, message_class, transaction_id, tuple(attributes))


def push_message(
    msg: Message,
    *,
    fingerprint: bool = True,
    software: str | None = DEFAULT_SOFTWARE,
    max_size: int = MAX_MESSAGE_SIZE,
) -> bytes:
    """Serialize a STUN message (RFC 8489 §5, §6).

    Args:
        msg: the message; any :class:`Fingerprint` among its attributes is left out.
        fingerprint: append a FINGERPRINT computed over the result (RFC 8489 §14.7).
        software: append SOFTWARE with this text unless ``msg`` already has one; None: don't.
        max_size: refuse to produce more than this many bytes.

    Returns:
        The wire bytes: magic cookie + 12-byte id, or the 16-byte id of a classic message.

    Raises:
        LocalProtocolError: an attribute cannot be encoded or the result exceeds ``max_size``.
    """
    attributes = [a for a in msg.attributes if not isinstance(a, Fingerprint)]
    if software is not None and not any(isinstance(a, Software) for a in attributes):
        attributes.append(Software(software))
    body = b"".join(push_attribute(a, msg.transaction_id) for a in attributes)
    cookie = b"" if msg.classic else struct.pack("!I", MAGIC_COOKIE)
    length = len(body) + (8 if fingerprint else 0)
    if HEADER_LENGTH + length > max_size:
        raise LocalProtocolError(
            f"STUN message would be {HEADER_LENGTH + length} bytes, more than {max_size}"
        )
    data = struct.pack("!HH", _encode_type(msg.method, msg.message_class), length)
    data += cookie + msg.transaction_id + body
    if fingerprint:
        data += push_attribute(Fingerprint(_fingerprint(data)), msg.transaction_id)
    return data


# --------------------------------------------------------------------------------------------
# STUN over TCP (RFC 8489 §6.2.2)
# --------------------------------------------------------------------------------------------


def _check_frame_header(buffer: bytes | bytearray, pos: int, max_size: int) -> int:
    first, length = struct.unpack_from("!HH", buffer, pos)
    if first & 0xC000:
        raise StunParseError("not a STUN stream: the top two bits of a message are not zero")
    if length % 4:
        raise StunParseError(f"STUN message length {length} on the stream is not a multiple of 4")
    total: int = HEADER_LENGTH + length
    if total > max_size:
        raise StunParseError(
            f"STUN message on the stream would be {total} bytes, more than {max_size}"
        )
    return total


def split_stream(
    buffer: bytes | bytearray, *, max_size: int = MAX_MESSAGE_SIZE
) -> tuple[list[bytes], bytes]:
    """Cut the whole STUN messages off the front of a TCP byte stream (RFC 8489 §6.2.2).

    Messages follow each other with no framing but their own length field.  The leftover is
    the start of the next message and is always shorter than ``max_size``.  Framing is checked
    as soon as 4 bytes of a message are there; a bad frame after good messages is reported by
    the next call (with the leftover), so feeding a stream byte by byte yields the same messages,
    then the same error, as feeding it at once.

    Returns:
        (whole messages, leftover bytes to prepend to the next data).

    Raises:
        StunParseError: the stream does not start with a plausible STUN header (top bits set,
            a length not a multiple of 4, or a message above ``max_size``); close the connection.
    """
    messages: list[bytes] = []
    pos = 0
    while len(buffer) - pos >= 4:
        try:
            total = _check_frame_header(buffer, pos, max_size)
        except StunParseError:
            if messages:
                break
            raise
        if len(buffer) - pos < total:
            break
        messages.append(bytes(buffer[pos : pos + total]))
        pos += total
    return messages, bytes(buffer[pos:])


class StunStreamReader:
    """Incremental :func:`split_stream` for one TCP connection (h11-style receive/next).

    Args:
        max_size: largest message accepted.
        max_buffer: most undelivered bytes held; :meth:`feed` refuses more.
    """

    def __init__(self, *, max_size: int = MAX_MESSAGE_SIZE, max_buffer: int = 65536) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        self._max_buffer = max_buffer

    def feed(self, data: bytes) -> None:
        """Append bytes received from the stream.

        Raises:
            StunParseError: more than ``max_buffer`` bytes would wait undelivered.
        """
        if len(self._buffer) + len(data) > self._max_buffer:
            raise StunParseError("peer sent more STUN data than the receive buffer holds")
        self._buffer += data

    def next_message(self) -> bytes | None:
        """The next whole message, or None until more bytes are fed.

        Raises:
            StunParseError: the stream is not STUN; close the connection.
        """
        if len(self._buffer) < 4:
            return None
        total = _check_frame_header(self._buffer, 0, self._max_size)
        if len(self._buffer) < total:
            return None
        message = bytes(self._buffer[:total])
        del self._buffer[:total]
        return message

    @property
    def buffered(self) -> int:
        """Bytes received but not yet delivered as a message."""
        return len(self._buffer)


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


def _canonical_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # dual-stack socket: the peer is an IPv4 host
    return ip


def _canonical(address: Address) -> Address:
    """Normalize an address: canonical IP text, IPv4-mapped IPv6 (dual-stack sockets) as IPv4."""
    host, port = address
    _check_port(port)
    return str(_canonical_ip(host)), port


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Per-source token bucket: ``burst`` requests at once, then ``rate`` per second.

    Args:
        rate: tokens added per second.
        burst: bucket size.
        max_sources: most sources tracked; the least recently seen is forgotten first.
        per_port: key buckets on (IP, port) rather than the IP alone.  The IP alone is the
            default: a flooder changes ports for free.
    """

    rate: float = 20.0
    burst: float = 40.0
    max_sources: int = 10_000
    per_port: bool = False

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 1 or self.max_sources < 1:
            raise LocalProtocolError("rate limit needs rate >= 0, burst >= 1, max_sources >= 1")


class TokenBucketLimiter:
    """Token buckets keyed by source, in bounded memory; the clock is the ``now`` argument."""

    def __init__(self, limit: RateLimit) -> None:
        self._limit = limit
        self._rate, self._burst, self._max_sources = limit.rate, limit.burst, limit.max_sources
        # key -> [tokens, time of the last refill], least recently seen first.  Updated in
        # place: this runs for every request.
        self._buckets: OrderedDict[object, list[float]] = OrderedDict()

    def allow(self, key: object, now: float) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = [self._burst, now]
            if len(buckets) > self._max_sources:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket[1]
            # A clock that steps back refills nothing rather than draining the bucket.
            if elapsed > 0.0:
                tokens = bucket[0] + elapsed * self._rate
                bucket[0] = tokens if tokens < self._burst else self._burst
                bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class StunServerConfig:
    """How a :class:`StunServer` answers.

    Args:
        software: SOFTWARE text in responses; None leaves it out.
        local_address: the primary address requests arrive on; sent as RESPONSE-ORIGIN (RFC
            5780 §7.3), or SOURCE-ADDRESS to RFC 3489 clients.
        other_address: the alternate address, differing from ``local_address`` in IP and port;
            sent as OTHER-ADDRESS (RFC 5780 §7.4), or CHANGED-ADDRESS to RFC 3489 clients.
            Advertise it only if the alternate addresses are served too.
        rate_limit: per-source limit; None disables it.
        fingerprint: add FINGERPRINT to responses.
    """

    software: str | None = DEFAULT_SOFTWARE
    local_address: Address | None = None
    other_address: Address | None = None
    rate_limit: RateLimit | None = RateLimit()
    fingerprint: bool = True

    def __post_init__(self) -> None:
        if self.software is not None:
            push_software(self.software)
        if self.local_address is not None:
            object.__setattr__(self, "local_address", _canonical(self.local_address))
        if self.other_address is not None:
            object.__setattr__(self, "other_address", _canonical(self.other_address))


@dataclass(frozen=True, slots=True)
class StunServerStats:
    """Counters of a :class:`StunServer`, for metrics.

    ``responses``: success responses; ``errors``: error responses (420, 400);
    ``indications``: indications consumed silently (keepalives); ``dropped_*``: inputs
    answered with nothing, by reason.
    """

    responses: int = 0
    errors: int = 0
    indications: int = 0
    dropped_malformed: int = 0
    dropped_not_request: int = 0
    dropped_rate_limited: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_malformed + self.dropped_not_request + self.dropped_rate_limited

    def as_dict(self) -> dict[str, int]:
        return {
            "responses": self.responses,
            "errors": self.errors,
            "indications": self.indications,
            "dropped_malformed": self.dropped_malformed,
            "dropped_not_request": self.dropped_not_request,
            "dropped_rate_limited": self.dropped_rate_limited,
        }


# Comprehension-required attributes a Binding request may carry that the server understands and
# may ignore: credentials (it authenticates no one, RFC 8489 §9), ICE's (RFC 8445), and
# response-only attributes.  RESPONSE-ADDRESS, RESPONSE-PORT and PADDING are absent on purpose:
# they ask for behaviour this server refuses, so they earn a 420 (RFC 5389 §12.2, RFC 5780 §6).
_SERVER_IGNORES: Final = frozenset(
    {
        AttributeType.MAPPED_ADDRESS,
        AttributeType.SOURCE_ADDRESS,
        AttributeType.CHANGED_ADDRESS,
        AttributeType.USERNAME,
        AttributeType.PASSWORD,
        AttributeType.MESSAGE_INTEGRITY,
        AttributeType.ERROR_CODE,
        AttributeType.UNKNOWN_ATTRIBUTES,
        AttributeType.REFLECTED_FROM,
        AttributeType.REALM,
        AttributeType.NONCE,
        AttributeType.MESSAGE_INTEGRITY_SHA256,
        AttributeType.PASSWORD_ALGORITHM,
        AttributeType.USERHASH,
        AttributeType.XOR_MAPPED_ADDRESS,
        AttributeType.PRIORITY,
        AttributeType.USE_CANDIDATE,
    }
)


# The server's hot path (StunServer._plain_binding) works on plain ints and precompiled structs.
# A source host: canonical text, IPv4 or not, the address as an int.
_Host = tuple[str, bool, int]
# A plain Binding success response around XOR-MAPPED-ADDRESS: header for an IPv4 and for an IPv6
# mapped address, the constant attributes after it, and whether FINGERPRINT ends it.
_Template = tuple[bytes, bytes, bytes, bool]
_MEMO_SIZE: Final = 4096
_BINDING_REQUEST: Final = 0x0001
_BINDING_SUCCESS: Final = 0x0101
_XOR_MAPPED_ADDRESS: Final = int(AttributeType.XOR_MAPPED_ADDRESS)
_SOFTWARE: Final = int(AttributeType.SOFTWARE)
_FINGERPRINT: Final = int(AttributeType.FINGERPRINT)
_COOKIE_HIGH: Final = MAGIC_COOKIE >> 16
_XOR_V4: Final = struct.Struct("!HHxBHI")  # type, length, reserved, family, port, address
_XOR_V6_HEAD: Final = struct.Struct("!HHxBH")  # the same up to the 16-byte address
_XOR_V4_SIZE: Final = _XOR_V4.size
_XOR_V6_SIZE: Final = _XOR_V6_HEAD.size + 16
_FINGERPRINT_ATTR: Final = struct.Struct("!HHI")
# Types the hot path defers: those with a codec (their value must be checked) except the two it
# checks itself, and nothing it would have to list in a 420 (see _SERVER_IGNORES).
_CODEC_TYPES: Final = frozenset(int(t) for t in _CODECS) - {_SOFTWARE, _FINGERPRINT}
_IGNORED_TYPES: Final = frozenset(int(t) for t in _SERVER_IGNORES)


@dataclass(frozen=True, slots=True, init=False)
class StunReply:
    """A response and the local address to send it from; the destination is always the source.

    Args:
        data: the response bytes.
        origin: local address to send from: the address the request arrived on, or, for an
            honoured RFC 5780 CHANGE-REQUEST, another of the server's addresses.  None when
            the server does not know its local address (send from the receiving socket).
    """

    data: bytes
    origin: Address | None

    def __init__(self, data: bytes, origin: Address | None) -> None:
        # One per answered datagram: filling the slots directly costs half of what the frozen
        # dataclass __init__ (object.__setattr__ per field) does.
        _set_reply_data(self, data)
        _set_reply_origin(self, origin)


_set_reply_data: Final = StunReply.__dict__["data"].__set__
_set_reply_origin: Final = StunReply.__dict__["origin"].__set__


class StunServer:
    """Sans-IO STUN Binding server (RFC 8489 §6.3, RFC 5780 §6, RFC 3489 via RFC 5389 §12.2).

    Responses go to the source of the request and nowhere else.  :meth:`handle` is for a shell
    with one socket; :meth:`respond` also says which local address to answer from, which an
    RFC 5780 shell listening on all four (IP, port) combinations of ``local_address`` and
    ``other_address`` needs to honour CHANGE-REQUEST.

    Args:
        config: what to put in responses and how fast each source may ask.
    """

    def __init__(self, config: StunServerConfig | None = None) -> None:
        self.config = config if config is not None else StunServerConfig()
        limit = self.config.rate_limit
        self._limiter = TokenBucketLimiter(limit) if limit is not None else None
        self._limit_per_port = limit is not None and limit.per_port
        # Hot-path memos, bounded (cleared when full): source IP text -> its canonical form,
        # and local address -> the response template of a plain Binding request.
        self._hosts: dict[str, _Host] = {}
        self._templates: dict[Address | None, _Template] = {}
        self._responses = 0
        self._errors = 0
        self._indications = 0
        self._dropped_malformed = 0
        self._dropped_not_request = 0
        self._dropped_rate_limited = 0

    @property
    def stats(self) -> StunServerStats:
        """A snapshot of the counters."""
        return StunServerStats(
            responses=self._responses,
            errors=self._errors,
            indications=self._indications,
            dropped_malformed=self._dropped_malformed,
            dropped_not_request=self._dropped_not_request,
            dropped_rate_limited=self._dropped_rate_limited,
        )

    def handle(self, data: bytes, source: Address, now: float) -> bytes | None:
        """Process one datagram (or one framed TCP message) from ``source``, for one socket.

        Binding requests get a success response: XOR-MAPPED-ADDRESS (MAPPED-ADDRESS and the
        echoed 16-byte id for RFC 3489 clients), RESPONSE-ORIGIN / OTHER-ADDRESS (SOURCE-ADDRESS
        / CHANGED-ADDRESS for RFC 3489) when configured, SOFTWARE, FINGERPRINT.  Unknown
        comprehension-required attributes get 420 with UNKNOWN-ATTRIBUTES, and so do the ones
        asking to answer elsewhere: RESPONSE-ADDRESS, RESPONSE-PORT, and here, where one
        socket cannot answer from another address, a CHANGE-REQUEST with a flag set.  Other
        methods get 400.

        Args:
            data: the bytes received.
            source: the sender's (IP, port) as the socket reported it.
            now: a monotonic clock reading in seconds, for the rate limit.

        Returns:
            Bytes to send to ``source``, or None: dropped (rate-limited, malformed, not a
            request) and counted in :attr:`stats`.  Never raises, whatever ``data`` holds.
        """
        reply = self.respond(data, source, now, can_change_origin=False)
        return reply.data if reply is not None else None

    def respond(
        self,
        data: bytes,
        source: Address,
        now: float,
        *,
        local: Address | None = None,
        can_change_origin: bool = True,
    ) -> StunReply | None:
        """Like :meth:`handle`, and says which local address to send the response from.

        Args:
            local: the address the request arrived on; ``config.local_address`` when None.
            can_change_origin: the caller can send from the other (IP, port) combinations, so
                a CHANGE-REQUEST (RFC 5780 §7.2) is honoured when ``local_address`` and
                ``other_address`` are configured; otherwise it gets 420.

        Returns:
            The reply for ``source``, or None (dropped and counted).  Never raises.
        """
        host, port = source
        try:
            _check_port(port)
            peer_host = self._hosts.get(host) if type(host) is str else None
            if peer_host is None:
                peer_host = self._learn_host(host)
            if local is None:
                here = self.config.local_address
            else:
                local_host, local_port = local
                _check_port(local_port)
                here = (self._learn_host(local_host)[0], local_port)
        except LocalProtocolError:
            self._dropped_malformed += 1
            return None
        if self._limiter is not None:
            key: object = (peer_host[0], port) if self._limit_per_port else peer_host[0]
            if not self._limiter.allow(key, now):
                self._dropped_rate_limited += 1
                return None
        answer = self._plain_binding(data, peer_host, port, here)
        if answer is not None:
            self._responses += 1
            return StunReply(answer, here)
        peer = (peer_host[0], port)
        try:
            request = pull_message(data)
        except StunParseError:
            self._dropped_malformed += 1
            return None
        if request.message_class == MessageClass.INDICATION:
            self._indications += 1
            return None
        if request.message_class != MessageClass.REQUEST:
            self._dropped_not_request += 1
            return None
        if request.method != Method.BINDING:
            return self._error(request, here, 400, "Bad Request: only Binding is served")
        change = request.find(ChangeRequest)
        origin = here
        if change is not None and (change.change_ip or change.change_port):
            origin = self._changed_origin(here, change) if can_change_origin else None
            if origin is None:
                # RFC 5780 §6.1: a server that cannot answer from the requested address
                # rejects the CHANGE-REQUEST with 420, as an unknown attribute.
                return self._error(
                    request,
                    here,
                    420,
                    "Unknown Attribute",
                    UnknownAttributes(self._unknown_required(request, allow_change=False)),
                )
        unknown = self._unknown_required(request, allow_change=True)
        if unknown:
            return self._error(request, here, 420, "Unknown Attribute", UnknownAttributes(unknown))
        return self._success(request, peer, here, origin)

    def _learn_host(self, host: str) -> _Host:
        """The canonical form of a source IP, parsed once and remembered (bounded)."""
        cached = self._hosts.get(host) if type(host) is str else None
        if cached is not None:
            return cached
        ip = _canonical_ip(host)
        entry = (str(ip), ip.version == 4, int(ip))
        if type(host) is str:
            if len(self._hosts) >= _MEMO_SIZE:
                self._hosts.clear()
            self._hosts[host] = entry
        return entry

    def _template(self, here: Address | None) -> _Template:
        """Header and constant attributes of a plain Binding success response received on
        ``here``: the generic encoder's output around XOR-MAPPED-ADDRESS, computed once."""
        template = self._templates.get(here)
        if template is not None:
            return template
        cfg = self.config
        other = self._other_of(here)
        constant: list[Attribute] = []
        if here is not None:
            constant.append(ResponseOrigin(here))
        if other is not None:
            constant.append(OtherAddress(other))
        if cfg.software is not None:
            constant.append(Software(cfg.software))
        tail = b"".join(push_attribute(a, bytes(12)) for a in constant)
        extra = len(tail) + (8 if cfg.fingerprint else 0)
        template = (
            _HEADER.pack(_BINDING_SUCCESS, _XOR_V4_SIZE + extra, MAGIC_COOKIE),
            _HEADER.pack(_BINDING_SUCCESS, _XOR_V6_SIZE + extra, MAGIC_COOKIE),
            tail,
            cfg.fingerprint,
        )
        if len(self._templates) >= _MEMO_SIZE:
            self._templates.clear()
        self._templates[here] = template
        return template

    def _plain_binding(
        self, data: bytes, peer: _Host, port: int, here: Address | None
    ) -> bytes | None:
        """The success response to a plain RFC 8489 Binding request, or None to defer.

        "Plain": magic cookie, and attributes that need no answer of their own (SOFTWARE,
        FINGERPRINT, ignored or comprehension-optional ones).  Every check :func:`pull_message`
        makes is made here too; whatever fails one, or is anything else (RFC 3489, other
        methods or classes, CHANGE-REQUEST, attributes earning a 420, attributes with their own
        codec), returns None and takes the generic path, which drops, counts or answers it.
        The response is the generic encoder's (a test compares them byte for byte), built from
        :meth:`_template` with only XOR-MAPPED-ADDRESS and FINGERPRINT computed.
        """
        size = len(data)
        if size < HEADER_LENGTH or size > MAX_MESSAGE_SIZE:
            return None
        message_type, length, cookie = _HEADER.unpack_from(data)
        if (
            message_type != _BINDING_REQUEST
            or cookie != MAGIC_COOKIE
            or length & 3
            or length != size - HEADER_LENGTH
        ):
            return None
        pos = HEADER_LENGTH
        while pos < size:
            if size - pos < 4:
                return None
            attr_type, attr_length = _ATTR_HEADER.unpack_from(data, pos)
            start = pos + 4
            end = start + attr_length + (-attr_length & 3)
            if end > size:
                return None
            if attr_type == _FINGERPRINT:
                # RFC 8489 §14.7: last, and over everything before it; the header's length
                # already covers it because it is last.
                if attr_length != 4 or end != size:
                    return None
                if _U32.unpack_from(data, start)[0] != zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR:
                    return None
            elif attr_type == _SOFTWARE:
                if attr_length > _MAX_TEXT_BYTES:
                    return None
                try:
                    data[start : start + attr_length].decode("utf-8")
                except UnicodeDecodeError:
                    return None
            elif attr_type in _CODEC_TYPES or (
                attr_type < 0x8000 and attr_type not in _IGNORED_TYPES
            ):
                return None
            pos = end
        template = self._templates.get(here)
        if template is None:
            template = self._template(here)
        head_v4, head_v6, tail, fingerprint = template
        _, is_v4, ip = peer
        transaction_id = data[8:20]
        if is_v4:
            xor_address = _XOR_V4.pack(
                _XOR_MAPPED_ADDRESS, 8, _IPV4, port ^ _COOKIE_HIGH, ip ^ MAGIC_COOKIE
            )
            out = head_v4 + transaction_id + xor_address + tail
        else:
            # RFC 8489 §14.2: an IPv6 address is XORed with the cookie and the transaction id.
            xored = ip ^ int.from_bytes(data[4:20], "big")
            xor_head = _XOR_V6_HEAD.pack(_XOR_MAPPED_ADDRESS, 20, _IPV6, port ^ _COOKIE_HIGH)
            out = head_v6 + transaction_id + xor_head + xored.to_bytes(16, "big") + tail
        if fingerprint:
            out += _FINGERPRINT_ATTR.pack(_FINGERPRINT, 4, zlib.crc32(out) ^ FINGERPRINT_XOR)
        return out

    def _other_of(self, here: Address | None) -> Address | None:
        """OTHER-ADDRESS for a request received on ``here`` (RFC 5780 §7.4): the address that
        differs from ``here`` in both IP and port."""
        primary, alternate = self.config.local_address, self.config.other_address
        if alternate is None or primary is None or here is None:
            return alternate
        ip = alternate[0] if here[0] == primary[0] else primary[0]
        port = alternate[1] if here[1] == primary[1] else primary[1]
        return ip, port

    def _changed_origin(self, here: Address | None, change: ChangeRequest) -> Address | None:
        other = self._other_of(here)
        if here is None or other is None or self.config.local_address is None:
            return None
        if (change.change_ip and other[0] == here[0]) or (
            change.change_port and other[1] == here[1]
        ):
            return None  # no second IP (or port) to answer from
        return (
            other[0] if change.change_ip else here[0],
            other[1] if change.change_port else here[1],
        )

    @staticmethod
    def _unknown_required(request: Message, *, allow_change: bool) -> tuple[int, ...]:
        unknown: list[int] = []
        for attr in request.attributes:
            t = attr.type
            if t >= 0x8000 or t in _SERVER_IGNORES or t in unknown:
                continue
            if isinstance(attr, ChangeRequest) and (
                allow_change or not (attr.change_ip or attr.change_port)
            ):
                continue  # honoured, or no flag set: nothing asked for
            unknown.append(t)
        return tuple(unknown)

    def _success(
        self, request: Message, peer: Address, here: Address | None, origin: Address | None
    ) -> StunReply:
        cfg = self.config
        other = self._other_of(here)
        attrs: list[Attribute] = []
        if request.classic:
            attrs.append(MappedAddress(peer))
            if origin is not None:
                attrs.append(SourceAddress(origin))
            if other is not None:
                attrs.append(ChangedAddress(other))
        else:
            attrs.append(XorMappedAddress(peer))
            if origin is not None:
                attrs.append(ResponseOrigin(origin))
            if other is not None:
                attrs.append(OtherAddress(other))
        response = Message(
            request.method, MessageClass.SUCCESS, request.transaction_id, tuple(attrs)
        )
        self._responses += 1
        data = push_message(response, fingerprint=cfg.fingerprint, software=cfg.software)
        return StunReply(data, origin)

    def _error(
        self, request: Message, here: Address | None, code: int, reason: str, *extra: Attribute
    ) -> StunReply:
        response = Message(
            request.method,
            MessageClass.ERROR,
            request.transaction_id,
            (ErrorCode(code, reason), *extra),
        )
        self._errors += 1
        data = push_message(
            response, fingerprint=self.config.fingerprint, software=self.config.software
        )
        return StunReply(data, here)


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BindingResult:
    """What a Binding success response told us.

    Args:
        mapped: our address as the server saw it (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
        response_origin: RESPONSE-ORIGIN (or RFC 3489 SOURCE-ADDRESS), if sent.
        other_address: OTHER-ADDRESS (or RFC 3489 CHANGED-ADDRESS), if sent.
        software: the server's SOFTWARE, if sent.
        local: the local address the request left from; filled in by I/O shells that know it.
    """

    mapped: Address
    response_origin: Address | None = None
    other_address: Address | None = None
    software: str | None = None
    local: Address | None = None


# Types this module knows but keeps opaque; a response carrying another comprehension-required
# type we cannot read is discarded (RFC 8489 §6.3.3).
_KNOWN_OPAQUE: Final = frozenset(t for t in AttributeType if t < 0x8000 and t not in _CODECS)


def binding_request(
    txid: bytes | None = None,
    *,
    rand: Callable[[int], bytes] = secrets.token_bytes,
    software: str | None = DEFAULT_SOFTWARE,
    fingerprint: bool = True,
    classic: bool = False,
) -> tuple[bytes, bytes]:
    """Build a Binding request (RFC 8489 §6.1, §7.1).

    Args:
        txid: the transaction id; drawn from ``rand`` when None (12 bytes, 16 if ``classic``).
        rand: randomness source, ``rand(n) -> n bytes``; inject for reproducible tests.
        software: SOFTWARE text, or None.
        fingerprint: add FINGERPRINT.
        classic: build an RFC 3489 request (no magic cookie, no FINGERPRINT, no SOFTWARE).

    Returns:
        (transaction id, request bytes).

    Raises:
        LocalProtocolError: a ``txid`` of the wrong length.
    """
    if txid is None:
        txid = rand(16 if classic else 12)
    if len(txid) != (16 if classic else 12):
        raise LocalProtocolError("Binding request transaction id has the wrong length")
    msg = Message(Method.BINDING, MessageClass.REQUEST, txid)
    if classic:
        return txid, push_message(msg, fingerprint=False, software=None)
    return txid, push_message(msg, fingerprint=fingerprint, software=software)


def parse_binding_response(data: bytes, txid: bytes) -> BindingResult:
    """Check and read the response to the Binding request ``txid`` (RFC 8489 §6.3.3, §6.3.4).

    Raises:
        StunParseError: malformed, another transaction, not a Binding response, an unknown
            comprehension-required attribute, or no mapped address.
        RemoteProtocolError: the server answered with an error response (code in the message).
    """
    msg = pull_message(data)
    if msg.transaction_id != txid:
        raise StunParseError("STUN response is for another transaction")
    if msg.method != Method.BINDING:
        raise StunParseError(f"STUN response is for method 0x{msg.method:03x}, not Binding")
    if msg.message_class == MessageClass.ERROR:
        err = msg.find(ErrorCode)
        detail = f"{err.code} {err.reason}" if err is not None else "no ERROR-CODE"
        raise RemoteProtocolError(
            f"STUN server refused the Binding request: {detail}", code="e.p.stun.error-response"
        )
    if msg.message_class != MessageClass.SUCCESS:
        raise StunParseError("STUN message is not a response")
    for attr in msg.attributes:
        if isinstance(attr, RawAttribute) and attr.type < 0x8000:
            if attr.type not in _KNOWN_OPAQUE:
                raise StunParseError(
                    f"STUN response has unknown comprehension-required {_type_name(attr.type)}"
                )
    xor = msg.find(XorMappedAddress)
    plain = msg.find(MappedAddress)
    mapped = xor if xor is not None else plain
    if mapped is None:
        raise StunParseError("STUN Binding response has no (XOR-)MAPPED-ADDRESS")
    origin = msg.find(ResponseOrigin) or msg.find(SourceAddress)
    other = msg.find(OtherAddress) or msg.find(ChangedAddress)
    software = msg.find(Software)
    return BindingResult(
        mapped=mapped.address,
        response_origin=origin.address if origin is not None else None,
        other_address=other.address if other is not None else None,
        software=software.text if software is not None else None,
    )


class MappingBehavior(enum.Enum):
    """NAT mapping behaviour (RFC 4787 §4.1, found with RFC 5780 §4.3)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


def mapping_test_targets(primary: Address, other: Address) -> tuple[Address, Address]:
    """Server addresses for RFC 5780 §4.3 tests II and III.

    Args:
        primary: the server address test I used.
        other: the OTHER-ADDRESS test I's response carried.

    Returns:
        (alternate IP with the primary port, alternate IP with the alternate port).
    """
    return (other[0], primary[1]), other


def classify_mapping(
    test1: Address, test2: Address, test3: Address | None = None
) -> MappingBehavior:
    """Classify the mapping from the mapped addresses of RFC 5780 §4.3's tests, sent from one
    local socket.

    Args:
        test1: mapped address seen by the primary address.
        test2: mapped address seen by the alternate IP, primary port.
        test3: mapped address seen by the alternate IP and alternate port; only needed when
            test1 and test2 differ.

    Raises:
        LocalProtocolError: test III is needed but ``test3`` is None.
    """
    x1, x2 = _canonical(test1), _canonical(test2)
    if x1 == x2:
        return MappingBehavior.ENDPOINT_INDEPENDENT
    if test3 is None:
        raise LocalProtocolError("mapping differs between tests I and II; test III is needed")
    if _canonical(test3) == x2:
        return MappingBehavior.ADDRESS_DEPENDENT
    return MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
