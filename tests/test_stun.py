"""Tests of didsession.stun: codecs (golden bytes, round trips, RFC 5769 vectors), the server and
client cores in memory, TCP framing, fuzzing, then the asyncio shell over loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ports import free_port_pair

from didsession.errors import (
    DidSessionError,
    LocalProtocolError,
    RemoteProtocolError,
    StunParseError,
)
from didsession.stun import (
    MAGIC_COOKIE,
    MAX_MESSAGE_SIZE,
    Address,
    Attribute,
    AttributeType,
    BindingResult,
    ChangedAddress,
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    MappingBehavior,
    Message,
    MessageClass,
    Method,
    OtherAddress,
    RateLimit,
    RawAttribute,
    ResponseOrigin,
    Software,
    SourceAddress,
    StunServer,
    StunServerConfig,
    StunStreamReader,
    TokenBucketLimiter,
    UnknownAttributes,
    XorMappedAddress,
    binding_request,
    classify_mapping,
    mapping_test_targets,
    parse_binding_response,
    pull_attribute,
    pull_message,
    push_attribute,
    push_message,
    split_stream,
)
from didsession.stun_asyncio import (
    UDP_ANSWERS_PER_ITERATION,
    StunService,
    _ServerDatagramProtocol,
    _SocketDatagramTransport,
    _udp_worker,
    _UdpResponder,
    serve_stun,
    stun_binding,
)

# --------------------------------------------------------------------------------------------
# RFC 5769 test vectors (§2.1 request, §2.2 IPv4 response, §2.3 IPv6 response), from the RFC.
# Their padding bytes are spaces (0x20) and they carry MESSAGE-INTEGRITY, kept opaque here.
# --------------------------------------------------------------------------------------------

RFC5769_TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"  # SOFTWARE "STUN test client"
    "002400046e0001ff"  # PRIORITY
    "80290008932ff9b151263b36"  # ICE-CONTROLLED
    "000600096576746a3a68367659202020"  # USERNAME "evtj:h6vY"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"  # MESSAGE-INTEGRITY
    "80280004e57a3bcf"  # FINGERPRINT
)

RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"  # SOFTWARE "test vector"
    "002000080001a147e112a643"  # XOR-MAPPED-ADDRESS 192.0.2.1:32853
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"  # MESSAGE-INTEGRITY
    "80280004c07d4c96"  # FINGERPRINT
)

RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"  # [2001:db8:1234:5678:11:2233:4455:6677]
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)

TXID16 = bytes(range(16))


def without_fingerprint(msg: Message) -> Message:
    return Message(
        msg.method,
        msg.message_class,
        msg.transaction_id,
        tuple(a for a in msg.attributes if not isinstance(a, Fingerprint)),
    )


def crc_fingerprint(prefix: bytes) -> bytes:
    """FINGERPRINT attribute for ``prefix`` computed independently of the module."""
    patched = prefix[:2] + struct.pack("!H", len(prefix) - 20 + 8) + prefix[4:]
    return bytes.fromhex("80280004") + struct.pack("!I", zlib.crc32(patched) ^ 0x5354554E)


# --------------------------------------------------------------------------------------------
# Attribute codecs: golden bytes and round trips
# --------------------------------------------------------------------------------------------

ATTRIBUTE_GOLDEN: list[tuple[str, Attribute, str]] = [
    # RFC 5769 §2.2 and §2.3, byte for byte.
    ("xor-mapped-v4-rfc5769", XorMappedAddress(("192.0.2.1", 32853)), "002000080001a147e112a643"),
    (
        "xor-mapped-v6-rfc5769",
        XorMappedAddress(("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
        "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9",
    ),
    ("mapped-v4", MappedAddress(("192.0.2.1", 32853)), "0001000800018055c0000201"),
    (
        "mapped-v6",
        MappedAddress(("2001:db8::1", 3478)),
        "0001001400020d9620010db8000000000000000000000001",
    ),
    ("response-origin-v4", ResponseOrigin(("127.0.0.1", 3478)), "802b000800010d967f000001"),
    (
        "response-origin-v6",
        ResponseOrigin(("::1", 3478)),
        "802b001400020d9600000000000000000000000000000001",
    ),
    ("other-address-v4", OtherAddress(("127.0.0.2", 3479)), "802c000800010d977f000002"),
    (
        "other-address-v6",
        OtherAddress(("fe80::2", 3479)),
        "802c001400020d97fe800000000000000000000000000002",
    ),
    ("source-address", SourceAddress(("10.0.0.1", 1)), "000400080001 00010a000001"),
    ("changed-address", ChangedAddress(("10.0.0.2", 65535)), "000500080001ffff0a000002"),
    ("software-padded", Software("test vector"), "8022000b7465737420766563746f7200"),
    ("software-aligned", Software("abcd"), "8022000461626364"),
    ("software-empty", Software(""), "80220000"),
    ("fingerprint", Fingerprint(0xC07D4C96), "80280004c07d4c96"),
    (
        "error-420",
        ErrorCode(420, "Unknown Attribute"),
        "000900150000041455 6e6b6e6f776e2041747472696275746500 0000",
    ),
    ("error-400-empty", ErrorCode(400, ""), "0009000400000400"),
    ("error-699", ErrorCode(699, "x"), "000900050000066378000000"),
    ("unknown-attributes-2", UnknownAttributes((0x0002, 0x0027)), "000a000400020027"),
    ("unknown-attributes-1", UnknownAttributes((0x7777,)), "000a000277770000"),
    ("change-request-both", ChangeRequest(True, True), "0003000400000006"),
    ("change-request-ip", ChangeRequest(True, False), "0003000400000004"),
    ("change-request-port", ChangeRequest(False, True), "0003000400000002"),
    ("change-request-none", ChangeRequest(), "0003000400000000"),
    ("raw-integrity", RawAttribute(0x0008, bytes(range(20))), "00080014" + bytes(range(20)).hex()),
    ("raw-odd", RawAttribute(0x7F01, b"\x01\x02\x03"), "7f01000301020300"),
]


@pytest.mark.parametrize(
    ("attr", "golden"),
    [(a, g) for _, a, g in ATTRIBUTE_GOLDEN],
    ids=[name for name, _, _ in ATTRIBUTE_GOLDEN],
)
def test_attribute_golden_and_round_trip(attr: Attribute, golden: str) -> None:
    wire = bytes.fromhex(golden.replace(" ", ""))
    assert push_attribute(attr, RFC5769_TXID) == wire
    attr_type, length = struct.unpack_from("!HH", wire)
    assert attr_type == attr.type
    assert pull_attribute(attr_type, wire[4 : 4 + length], RFC5769_TXID) == attr


@pytest.mark.parametrize(
    "address", [("0.0.0.0", 0), ("255.255.255.255", 65535), ("::", 1), ("::ffff:1.2.3.4", 7)]
)
def test_xor_address_round_trip_classic_and_modern(address: Address) -> None:
    for txid in (RFC5769_TXID, TXID16):
        wire = push_attribute(XorMappedAddress(address), txid)
        assert pull_attribute(0x0020, wire[4:], txid) == XorMappedAddress(address)


@pytest.mark.parametrize(
    ("attr_type", "value", "fragment"),
    [
        (0x0001, b"\x00\x01\x00", "shorter than 4"),
        (0x0001, b"\x00\x01\x00\x01\x7f\x00\x00", "not 8"),
        (0x0020, b"\x00\x02" + bytes(10), "not 20"),
        (0x802C, b"\x00\x03" + bytes(6), "neither IPv4 nor IPv6"),
        (0x0009, b"\x00\x00\x02", "shorter than 4"),
        (0x0009, b"\x00\x00\x02\x00", "class 2"),
        (0x0009, b"\x00\x00\x07\x00", "class 7"),
        (0x0009, b"\x00\x00\x04\x64", "above 99"),
        (0x0009, b"\x00\x00\x04\x00\xff", "UTF-8"),
        (0x8022, b"\xc3\x28", "UTF-8"),
        (0x8022, b"a" * 764, "more than 763"),
        (0x000A, b"\x00\x01\x00", "not even"),
        (0x0003, b"\x00\x00\x06", "not 4"),
        (0x8028, b"\x00\x00\x00", "not 4"),
    ],
)
def test_attribute_parse_errors(attr_type: int, value: bytes, fragment: str) -> None:
    with pytest.raises(StunParseError, match=fragment):
        pull_attribute(attr_type, value, RFC5769_TXID)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: push_attribute(MappedAddress(("nothost", 1)), RFC5769_TXID), "not an IP"),
        (lambda: push_attribute(MappedAddress(("1.2.3.4", 70000)), RFC5769_TXID), "port"),
        (lambda: push_attribute(ErrorCode(200, "ok"), RFC5769_TXID), "300..699"),
        (lambda: push_attribute(Software("x" * 128), RFC5769_TXID), "127 characters"),
        (lambda: push_attribute(UnknownAttributes((0x10000,)), RFC5769_TXID), "16 bits"),
        (lambda: RawAttribute(0x8028, b"1234"), "own attribute class"),
        (lambda: RawAttribute(0x10000, b""), "16 bits"),
        (lambda: Message(0x1000, MessageClass.REQUEST, bytes(12)), "12 bits"),
        (lambda: Message(1, MessageClass.REQUEST, bytes(13)), "transaction id"),
    ],
)
def test_local_errors(make: Callable[[], object], fragment: str) -> None:
    with pytest.raises(LocalProtocolError, match=fragment):
        make()


# --------------------------------------------------------------------------------------------
# Whole messages
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vector", "mapped"),
    [
        (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
    ids=["rfc5769-ipv4", "rfc5769-ipv6"],
)
def test_rfc5769_responses(vector: bytes, mapped: Address) -> None:
    msg = pull_message(vector)
    assert (msg.method, msg.message_class) == (Method.BINDING, MessageClass.SUCCESS)
    assert msg.transaction_id == RFC5769_TXID and not msg.classic
    assert [type(a) for a in msg.attributes] == [
        Software,
        XorMappedAddress,
        RawAttribute,
        Fingerprint,
    ]
    assert msg.find(Software) == Software("test vector")
    assert msg.find(XorMappedAddress) == XorMappedAddress(mapped)
    assert msg.find_type(AttributeType.MESSAGE_INTEGRITY) is not None
    assert parse_binding_response(vector, RFC5769_TXID).mapped == mapped
    # Re-encoding normalizes the space padding to zeros; the content survives.
    again = pull_message(push_message(msg, software=None))
    assert without_fingerprint(again) == without_fingerprint(msg)


def test_rfc5769_request_is_served() -> None:
    msg = pull_message(RFC5769_REQUEST)
    assert msg.message_class == MessageClass.REQUEST
    assert msg.find(Software) == Software("STUN test client")
    assert msg.find_type(AttributeType.USERNAME) == RawAttribute(0x0006, b"evtj:h6vY")
    assert msg.find_type(AttributeType.PRIORITY) == RawAttribute(0x0024, bytes.fromhex("6e0001ff"))
    # USERNAME, MESSAGE-INTEGRITY, PRIORITY are understood (and ignored) by a credential-less
    # server: a success, not a 420.
    server = StunServer(StunServerConfig(rate_limit=None))
    response = server.handle(RFC5769_REQUEST, ("192.0.2.1", 32853), 0.0)
    assert response is not None
    assert parse_binding_response(response, RFC5769_TXID).mapped == ("192.0.2.1", 32853)


def test_binding_request_golden() -> None:
    txid = bytes(range(12))
    header = bytes.fromhex("000100002112a442000102030405060708090a0b")
    assert binding_request(txid, software=None, fingerprint=False) == (txid, header)
    prefix = bytes.fromhex("000100082112a442") + txid
    assert binding_request(txid, software=None) == (txid, prefix + crc_fingerprint(prefix))
    # randomness is injected: the same rand gives the same bytes
    calls: list[int] = []

    def rand(n: int) -> bytes:
        calls.append(n)
        return b"\xaa" * n

    assert binding_request(rand=rand)[0] == b"\xaa" * 12 and calls == [12]
    assert binding_request(rand=rand, classic=True)[0] == b"\xaa" * 16


def test_success_response_golden() -> None:
    msg = Message(
        Method.BINDING,
        MessageClass.SUCCESS,
        RFC5769_TXID,
        (XorMappedAddress(("192.0.2.1", 32853)),),
    )
    body = "002000080001a147e112a643"
    assert push_message(msg, software=None, fingerprint=False).hex() == (
        "0101000c2112a442b7e7a701bc34d686fa87dfae" + body
    )
    with_sw = push_message(msg, software="abcd", fingerprint=False)
    assert with_sw.hex().endswith(body + "8022000461626364")
    full = push_message(msg, software="abcd")
    assert full[:-8] == with_sw[:2] + struct.pack("!H", len(with_sw) - 20 + 8) + with_sw[4:]
    assert full[-8:] == crc_fingerprint(full[:-8])
    assert push_message(pull_message(full), software=None) == full


def test_classic_message_golden() -> None:
    request = Message(Method.BINDING, MessageClass.REQUEST, TXID16)
    wire = push_message(request, software=None, fingerprint=False)
    assert wire == bytes.fromhex("00010000") + TXID16
    parsed = pull_message(wire)
    assert parsed.classic and parsed.transaction_id == TXID16
    response = Message(
        Method.BINDING, MessageClass.SUCCESS, TXID16, (MappedAddress(("192.0.2.1", 32853)),)
    )
    assert push_message(response, software=None, fingerprint=False) == bytes.fromhex(
        "0101000c" + TXID16.hex() + "0001000800018055c0000201"
    )


@pytest.mark.parametrize(
    ("method", "klass", "type_hex"),
    [
        (0x001, MessageClass.REQUEST, "0001"),
        (0x001, MessageClass.INDICATION, "0011"),
        (0x001, MessageClass.SUCCESS, "0101"),
        (0x001, MessageClass.ERROR, "0111"),
        (0x003, MessageClass.REQUEST, "0003"),
        (0xFFF, MessageClass.SUCCESS, "3fef"),
    ],
)
def test_message_type_golden(method: int, klass: MessageClass, type_hex: str) -> None:
    wire = push_message(Message(method, klass, bytes(12)), software=None, fingerprint=False)
    assert wire[:2].hex() == type_hex
    parsed = pull_message(wire)
    assert (parsed.method, parsed.message_class) == (method, klass)


def _header(type_: int, length: int, body: bytes = b"", cookie: int = MAGIC_COOKIE) -> bytes:
    return struct.pack("!HHI", type_, length, cookie) + bytes(12) + body


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "shorter than the 20-byte header"),
        (bytes(19), "shorter than the 20-byte header"),
        (_header(1, 1300, bytes(1300)), "more than the 1280"),
        (_header(0x8001, 0), "top two bits"),
        (_header(0x4001, 0), "top two bits"),
        (_header(1, 2, b"\x00\x00"), "multiple of 4"),
        (_header(1, 4), "4 bytes of attributes but 0 follow"),
        (_header(1, 0, bytes(4)), "0 bytes of attributes but 4 follow"),
        (_header(1, 8, bytes.fromhex("80220008") + b"abcd"), "claims 8 bytes but only 4"),
        (_header(1, 8, bytes.fromhex("80220005") + b"abcd"), "claims 5 bytes"),
        (_header(1, 8, bytes.fromhex("8028000400000000")), "FINGERPRINT does not match"),
        (_header(1, 12, bytes.fromhex("000100080003000000000000")), "neither IPv4"),
    ],
)
def test_message_parse_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(StunParseError, match=fragment):
        pull_message(data)


def test_fingerprint_must_be_last() -> None:
    _, request = binding_request(bytes(12), software=None)
    # append an attribute after a correct FINGERPRINT and fix the header length
    tail = bytes.fromhex("8022000461626364")
    data = request[:2] + struct.pack("!H", len(request) - 20 + 8) + request[4:] + tail
    with pytest.raises(StunParseError, match="not the last"):
        pull_message(data)


def test_size_limit_is_a_parameter() -> None:
    msg = Message(1, MessageClass.REQUEST, bytes(12), (RawAttribute(0x7000, bytes(1300)),))
    with pytest.raises(LocalProtocolError, match="more than 1280"):
        push_message(msg)
    wire = push_message(msg, max_size=2000)
    with pytest.raises(StunParseError):
        pull_message(wire)
    assert pull_message(wire, max_size=2000).attributes[0] == RawAttribute(0x7000, bytes(1300))
    assert MAX_MESSAGE_SIZE == 1280


def test_padding_is_ignored_and_duplicates_kept() -> None:
    body = bytes.fromhex("8022000161ffffff" + "8022000162000000")
    msg = pull_message(_header(0x0101, len(body), body))
    assert msg.attributes == (Software("a"), Software("b"))
    assert msg.find(Software) == Software("a")


# --------------------------------------------------------------------------------------------
# Server core
# --------------------------------------------------------------------------------------------

CLIENT: Address = ("192.0.2.10", 40000)


def make_server(**kwargs: Any) -> StunServer:
    kwargs.setdefault("rate_limit", None)
    return StunServer(StunServerConfig(**kwargs))


def request_with(*attrs: Attribute, txid: bytes = RFC5769_TXID, method: int = 1) -> bytes:
    return push_message(Message(method, MessageClass.REQUEST, txid, attrs), software=None)


def test_server_answers_modern_binding() -> None:
    server = make_server()
    txid, request = binding_request()
    response = server.handle(request, CLIENT, 0.0)
    assert response is not None
    msg = pull_message(response)
    assert msg.transaction_id == txid and msg.message_class == MessageClass.SUCCESS
    assert [type(a) for a in msg.attributes] == [XorMappedAddress, Software, Fingerprint]
    assert msg.find(XorMappedAddress) == XorMappedAddress(CLIENT)
    assert msg.find(MappedAddress) is None
    assert server.stats.responses == 1 and server.stats.dropped == 0


@pytest.mark.parametrize(
    ("source", "mapped"),
    [
        (("2001:db8::7", 5), ("2001:db8::7", 5)),
        (("2001:DB8:0:0::7", 5), ("2001:db8::7", 5)),
        (("::ffff:192.0.2.1", 9), ("192.0.2.1", 9)),  # dual-stack socket: answer IPv4
    ],
)
def test_server_ipv6_sources(source: Address, mapped: Address) -> None:
    txid, request = binding_request()
    response = make_server().handle(request, source, 0.0)
    assert response is not None
    assert parse_binding_response(response, txid).mapped == mapped


def test_server_response_origin_and_other_address() -> None:
    server = make_server(local_address=("198.51.100.1", 3478), other_address=("198.51.100.2", 3479))
    txid, request = binding_request()
    response = server.handle(request, CLIENT, 0.0)
    assert response is not None
    assert parse_binding_response(response, txid) == BindingResult(
        mapped=CLIENT,
        response_origin=("198.51.100.1", 3478),
        other_address=("198.51.100.2", 3479),
        software="didsession",
    )


def test_server_rfc3489_client() -> None:
    server = make_server(local_address=("198.51.100.1", 3478), other_address=("198.51.100.2", 3479))
    _, request = binding_request(TXID16, classic=True)
    assert request == bytes.fromhex("00010000") + TXID16
    response = server.handle(request, CLIENT, 0.0)
    assert response is not None
    # No magic cookie: the 16-byte transaction id is echoed in bytes 4..20.
    assert response[4:20] == TXID16 and response[:2] == b"\x01\x01"
    msg = pull_message(response)
    assert msg.classic
    assert msg.find(XorMappedAddress) is None
    assert msg.find(MappedAddress) == MappedAddress(CLIENT)
    assert msg.find(SourceAddress) == SourceAddress(("198.51.100.1", 3478))
    assert msg.find(ChangedAddress) == ChangedAddress(("198.51.100.2", 3479))
    assert isinstance(msg.attributes[-1], Fingerprint)
    result = parse_binding_response(response, TXID16)
    assert result.mapped == CLIENT and result.other_address == ("198.51.100.2", 3479)


def test_server_420_lists_unknown_comprehension_required_only() -> None:
    server = make_server()
    request = request_with(
        RawAttribute(0x7777, b"abcd"),
        RawAttribute(0x8888, b"optional"),  # comprehension-optional: ignored
        RawAttribute(0x7777, b"again"),  # listed once
        RawAttribute(0x0006, b"user"),  # USERNAME: understood
        RawAttribute(0x0002, push_attribute(MappedAddress(("203.0.113.9", 53)), b"")[4:]),
    )
    response = server.handle(request, CLIENT, 0.0)
    assert response is not None
    msg = pull_message(response)
    assert msg.message_class == MessageClass.ERROR and msg.transaction_id == RFC5769_TXID
    assert msg.find(ErrorCode) == ErrorCode(420, "Unknown Attribute")
    assert msg.find(UnknownAttributes) == UnknownAttributes((0x7777, 0x0002))
    assert msg.find(XorMappedAddress) is None
    assert server.stats.errors == 1 and server.stats.responses == 0
    with pytest.raises(RemoteProtocolError, match="420") as info:
        parse_binding_response(response, RFC5769_TXID)
    assert not isinstance(info.value, StunParseError)
    assert info.value.code == "e.p.stun.error-response"


def test_server_420_for_classic_client() -> None:
    response = make_server().handle(
        request_with(RawAttribute(0x0002, bytes(8)), txid=TXID16), CLIENT, 0.0
    )
    assert response is not None
    msg = pull_message(response)
    assert msg.classic and msg.find(ErrorCode) == ErrorCode(420, "Unknown Attribute")


VICTIM: Address = ("203.0.113.66", 53)


@pytest.mark.parametrize(
    "attr",
    [
        RawAttribute(
            AttributeType.RESPONSE_ADDRESS, push_attribute(MappedAddress(VICTIM), b"")[4:]
        ),
        RawAttribute(AttributeType.RESPONSE_PORT, b"\x00\x35\x00\x00"),
        RawAttribute(AttributeType.PADDING, bytes(400)),
        ChangeRequest(True, True),
        ChangeRequest(True, False),
        ChangeRequest(False, True),
    ],
    ids=["response-address", "response-port", "padding", "change-both", "change-ip", "change-port"],
)
def test_server_never_reflects(attr: Attribute) -> None:
    """Requests naming another destination or origin are answered with 420, to the source."""
    server = make_server(local_address=("198.51.100.1", 3478), other_address=("198.51.100.2", 3479))
    for classic in (False, True):
        request = request_with(attr, txid=TXID16 if classic else RFC5769_TXID)
        response = server.handle(request, CLIENT, 0.0)
        assert response is not None
        msg = pull_message(response)
        assert msg.find(ErrorCode) == ErrorCode(420, "Unknown Attribute")
        assert msg.find(UnknownAttributes) == UnknownAttributes((attr.type,))
        reply = server.respond(request, CLIENT, 0.0, can_change_origin=False)
        assert reply is not None and reply.origin == ("198.51.100.1", 3478)
        # the victim's address appears nowhere in what we send
        assert VICTIM[0] not in repr(msg)


def test_change_request_without_flags_is_a_plain_binding() -> None:
    txid = RFC5769_TXID
    response = make_server().handle(request_with(ChangeRequest()), CLIENT, 0.0)
    assert response is not None
    assert parse_binding_response(response, txid).mapped == CLIENT


def test_change_request_honoured_by_respond_with_four_addresses() -> None:
    primary, alternate = ("198.51.100.1", 3478), ("198.51.100.2", 3479)
    server = make_server(local_address=primary, other_address=alternate)
    cases = {
        (False, False): primary,
        (True, False): ("198.51.100.2", 3478),
        (False, True): ("198.51.100.1", 3479),
        (True, True): alternate,
    }
    for (ip, port), origin in cases.items():
        request = request_with(ChangeRequest(ip, port))
        reply = server.respond(request, CLIENT, 0.0, local=primary)
        assert reply is not None and reply.origin == origin
        result = parse_binding_response(reply.data, RFC5769_TXID)
        assert result.mapped == CLIENT  # always about, and sent to, the source
        assert result.response_origin == origin
        assert result.other_address == alternate
    # Received on the alternate corner: OTHER-ADDRESS is the primary (RFC 5780 §7.4).
    reply = server.respond(request_with(), CLIENT, 0.0, local=alternate)
    assert reply is not None
    assert parse_binding_response(reply.data, RFC5769_TXID).other_address == primary
    reply = server.respond(request_with(ChangeRequest(True, False)), CLIENT, 0.0, local=alternate)
    assert reply is not None and reply.origin == ("198.51.100.1", 3479)


def test_change_request_refused_without_second_ip() -> None:
    server = make_server(local_address=("198.51.100.1", 3478), other_address=("198.51.100.1", 3479))
    reply = server.respond(request_with(ChangeRequest(True, False)), CLIENT, 0.0)
    assert reply is not None
    assert pull_message(reply.data).find(ErrorCode) == ErrorCode(420, "Unknown Attribute")
    reply = server.respond(request_with(ChangeRequest(False, True)), CLIENT, 0.0)
    assert reply is not None and reply.origin == ("198.51.100.1", 3479)


def test_server_drops_and_counts() -> None:
    server = make_server()
    txid = RFC5769_TXID
    indication = push_message(Message(1, MessageClass.INDICATION, txid))
    success = push_message(Message(1, MessageClass.SUCCESS, txid, (XorMappedAddress(CLIENT),)))
    error = push_message(Message(1, MessageClass.ERROR, txid, (ErrorCode(400, "x"),)))
    assert server.handle(indication, CLIENT, 0.0) is None
    assert server.handle(success, CLIENT, 0.0) is None
    assert server.handle(error, CLIENT, 0.0) is None
    assert server.handle(b"GET / HTTP/1.1\r\n\r\n", CLIENT, 0.0) is None
    assert server.handle(RFC5769_REQUEST[:-1], CLIENT, 0.0) is None
    assert server.handle(RFC5769_REQUEST, ("not-an-ip", 1), 0.0) is None
    stats = server.stats
    assert stats.as_dict() == {
        "responses": 0,
        "errors": 0,
        "indications": 1,
        "dropped_malformed": 3,
        "dropped_not_request": 2,
        "dropped_rate_limited": 0,
    }
    assert stats.dropped == 5


def test_server_400_for_other_methods() -> None:
    server = make_server()
    response = server.handle(request_with(method=0x003), CLIENT, 0.0)  # Allocate
    assert response is not None
    msg = pull_message(response)
    assert msg.method == 0x003 and msg.message_class == MessageClass.ERROR
    error = msg.find(ErrorCode)
    assert error is not None and error.code == 400


def test_server_without_software_or_fingerprint() -> None:
    server = make_server(software=None, fingerprint=False)
    _, request = binding_request()
    response = server.handle(request, CLIENT, 0.0)
    assert response is not None
    assert pull_message(response).attributes == (XorMappedAddress(CLIENT),)


def test_rate_limit_with_injected_clock() -> None:
    server = StunServer(StunServerConfig(rate_limit=RateLimit(rate=1.0, burst=3.0)))
    _, request = binding_request()
    other = ("192.0.2.11", 40000)
    assert [server.handle(request, CLIENT, 0.0) is not None for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert server.handle(request, other, 0.0) is not None  # another source has its own bucket
    assert server.handle(request, (CLIENT[0], 1), 0.0) is None  # keyed by IP: ports don't help
    assert server.handle(request, CLIENT, 0.5) is None  # half a token
    assert server.handle(request, CLIENT, 1.0) is not None  # refilled to one
    assert server.handle(request, CLIENT, 1.0) is None
    assert server.handle(request, CLIENT, 100.0) is not None  # capped at burst...
    assert server.handle(request, CLIENT, 100.0) is not None
    assert server.handle(request, CLIENT, 100.0) is not None
    assert server.handle(request, CLIENT, 100.0) is None  # ...of three
    assert server.handle(request, CLIENT, 50.0) is None  # clock stepping back refills nothing
    stats = server.stats
    assert stats.dropped_rate_limited == 6 and stats.responses == 8


def test_rate_limit_per_port_and_bounded_memory() -> None:
    limiter = TokenBucketLimiter(RateLimit(rate=0.0, burst=1.0, max_sources=3))
    assert all(limiter.allow(i, 0.0) for i in range(10))
    assert len(limiter) == 3
    assert not limiter.allow(9, 0.0)  # still tracked, empty
    server = StunServer(StunServerConfig(rate_limit=RateLimit(rate=0.0, burst=1.0, per_port=True)))
    _, request = binding_request()
    assert server.handle(request, (CLIENT[0], 1), 0.0) is not None
    assert server.handle(request, (CLIENT[0], 2), 0.0) is not None
    assert server.handle(request, (CLIENT[0], 1), 0.0) is None
    with pytest.raises(LocalProtocolError):
        RateLimit(burst=0.5)


# --- the server's hot path: plain Binding requests answered from a template -----------------


class GenericOnly(StunServer):
    """A StunServer that never takes the hot path: the reference the hot path must equal."""

    def _plain_binding(self, *args: Any) -> None:
        return None


HOT_CONFIGS: list[dict[str, Any]] = [
    {},
    {"software": None},
    {"fingerprint": False},
    {"software": None, "fingerprint": False},
    {"software": "\u00e9" * 127},
    {"local_address": ("198.51.100.1", 3478), "other_address": ("198.51.100.2", 3479)},
    {"local_address": ("2001:db8::1", 3478)},
]
HOT_SOURCES: list[Address] = [
    CLIENT,
    ("0.0.0.0", 0),
    ("255.255.255.255", 65535),
    ("2001:db8::7", 5),
    ("2001:DB8:0:0::7", 5),
    ("::ffff:192.0.2.1", 9),
]


def plain_requests() -> list[bytes]:
    """Binding requests the hot path answers: SOFTWARE, FINGERPRINT, ignored attributes."""
    return [
        binding_request(RFC5769_TXID)[1],
        binding_request(RFC5769_TXID, software=None)[1],
        binding_request(RFC5769_TXID, fingerprint=False)[1],
        binding_request(RFC5769_TXID, software=None, fingerprint=False)[1],
        RFC5769_REQUEST,  # PRIORITY, ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY
        request_with(RawAttribute(0x8888, b"opt"), RawAttribute(0x0025, b""), Software("\u00e9")),
    ]


@pytest.mark.parametrize("config", HOT_CONFIGS, ids=lambda c: ",".join(c) or "default")
def test_plain_binding_template_equals_generic_encoder(config: dict[str, Any]) -> None:
    """The hot path's answers are the generic encoder's, byte for byte, and it counts alike."""
    fast, slow = make_server(**config), GenericOnly(make_server(**config).config)
    cfg = fast.config
    locals_: list[Address | None] = [None, cfg.local_address, ("198.51.100.2", 3479)]
    for source in HOT_SOURCES:
        host = fast._learn_host(source[0])
        for request in plain_requests():
            assert fast._plain_binding(request, host, source[1], None) is not None
            for local in locals_:
                reply = fast.respond(request, source, 0.0, local=local)
                assert reply is not None
                assert reply == slow.respond(request, source, 0.0, local=local)
            response = fast.handle(request, source, 0.0)
            assert response == slow.handle(request, source, 0.0)
            if cfg.local_address is None:
                txid = pull_message(request).transaction_id
                mapped = parse_binding_response(response or b"", txid).mapped
                expected = Message(1, MessageClass.SUCCESS, txid, (XorMappedAddress(mapped),))
                assert response == push_message(
                    expected, fingerprint=cfg.fingerprint, software=cfg.software
                )
    assert fast.stats == slow.stats and fast.stats.responses > 0


@pytest.mark.parametrize(
    ("source", "xor_mapped"),
    [
        (("192.0.2.1", 32853), "002000080001a147e112a643"),
        (
            ("2001:db8:1234:5678:11:2233:4455:6677", 32853),
            "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9",
        ),
    ],
    ids=["ipv4", "ipv6"],
)
def test_plain_binding_golden_rfc5769(source: Address, xor_mapped: str) -> None:
    """The RFC 5769 §2.2/§2.3 XOR-MAPPED-ADDRESS bytes, from the template path."""
    server = make_server(software="test vector")
    response = server.handle(RFC5769_REQUEST, source, 0.0)
    # SOFTWARE "test vector", padded with a zero where RFC 5769 pads with a space
    attributes = xor_mapped + "8022000b7465737420766563746f7200"
    prefix = bytes.fromhex(
        f"0101{len(attributes) // 2 + 8:04x}2112a442{RFC5769_TXID.hex()}{attributes}"
    )
    assert response == prefix + crc_fingerprint(prefix)


def test_hot_path_defers_whatever_it_does_not_answer() -> None:
    """Malformed, non-plain and refused requests get exactly the generic path's treatment."""
    fast, slow = make_server(), GenericOnly(make_server().config)
    good = binding_request(RFC5769_TXID)[1]
    bad_fingerprint = good[:-1] + bytes([good[-1] ^ 1])
    # SOFTWARE whose value is not UTF-8: malformed, dropped by the generic path
    not_utf8 = bytes.fromhex("000100082112a442") + RFC5769_TXID + bytes.fromhex("80220002fffe0000")
    cases = [
        bad_fingerprint,
        good[:-8] + good[-4:] + good[-8:-4],  # FINGERPRINT header mangled
        not_utf8,
        request_with(ChangeRequest()),
        request_with(RawAttribute(AttributeType.RESPONSE_PORT, b"\x00\x35\x00\x00")),
        request_with(RawAttribute(0x7777, b"abcd")),
        request_with(MappedAddress(("203.0.113.9", 53))),
        request_with(method=0x003),
        binding_request(TXID16, classic=True)[1],
        good + b"\x00\x00\x00\x00",
        good[:-4],
    ]
    for data in cases:
        assert fast._plain_binding(data, fast._learn_host(CLIENT[0]), CLIENT[1], None) is None
        assert fast.respond(data, CLIENT, 0.0) == slow.respond(data, CLIENT, 0.0)
    assert fast.stats == slow.stats
    # CHANGE-REQUEST without flags, MAPPED-ADDRESS and RFC 3489 succeed; 420, 420, 400
    assert (fast.stats.responses, fast.stats.errors, fast.stats.dropped_malformed) == (3, 3, 5)


class ReferenceBuckets:
    """The token bucket written plainly: what TokenBucketLimiter must behave like."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.buckets: dict[object, tuple[float, float]] = {}

    def allow(self, key: object, now: float) -> bool:
        limit = self.limit
        tokens, last = self.buckets.pop(key, (limit.burst, now))
        tokens = min(limit.burst, tokens + max(0.0, now - last) * limit.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self.buckets[key] = (tokens, max(now, last))
        while len(self.buckets) > limit.max_sources:
            del self.buckets[next(iter(self.buckets))]
        return allowed


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0, 50),
    st.floats(1, 10),
    st.integers(1, 4),
    st.lists(st.tuples(st.integers(0, 6), st.floats(0, 20)), max_size=80),
)
def test_token_bucket_equals_reference(
    rate: float, burst: float, max_sources: int, events: list[tuple[int, float]]
) -> None:
    limit = RateLimit(rate=rate, burst=burst, max_sources=max_sources)
    limiter, reference = TokenBucketLimiter(limit), ReferenceBuckets(limit)
    for key, now in events:
        assert limiter.allow(key, now) == reference.allow(key, now)
        assert len(limiter) == len(reference.buckets)


# --------------------------------------------------------------------------------------------
# Client core
# --------------------------------------------------------------------------------------------


def test_client_server_pair_in_memory() -> None:
    server = make_server(local_address=("198.51.100.1", 3478), other_address=("198.51.100.2", 3479))
    txid, request = binding_request(rand=lambda n: b"\x01" * n)
    response = server.handle(request, ("2001:db8::5", 6000), 1.0)
    assert response is not None
    result = parse_binding_response(response, txid)
    assert result.mapped == ("2001:db8::5", 6000)
    assert result.response_origin == ("198.51.100.1", 3478)
    assert result.software == "didsession" and result.local is None


def test_client_rejects_wrong_responses() -> None:
    txid, request = binding_request()
    response = make_server().handle(request, CLIENT, 0.0)
    assert response is not None
    with pytest.raises(StunParseError, match="another transaction"):
        parse_binding_response(response, bytes(12))
    with pytest.raises(StunParseError, match="not a response"):
        parse_binding_response(request, txid)
    no_mapped = push_message(Message(1, MessageClass.SUCCESS, txid))
    with pytest.raises(StunParseError, match="no \\(XOR-\\)MAPPED-ADDRESS"):
        parse_binding_response(no_mapped, txid)
    other_method = push_message(Message(3, MessageClass.SUCCESS, txid, (XorMappedAddress(CLIENT),)))
    with pytest.raises(StunParseError, match="not Binding"):
        parse_binding_response(other_method, txid)
    unknown = push_message(
        Message(
            1, MessageClass.SUCCESS, txid, (XorMappedAddress(CLIENT), RawAttribute(0x7FFF, b""))
        )
    )
    with pytest.raises(StunParseError, match="unknown comprehension-required"):
        parse_binding_response(unknown, txid)
    with pytest.raises(StunParseError):
        parse_binding_response(response[:-1], txid)
    # MAPPED-ADDRESS alone (an RFC 3489 server) is enough; XOR wins when both differ.
    both = push_message(
        Message(
            1,
            MessageClass.SUCCESS,
            txid,
            (MappedAddress(("10.0.0.1", 1)), XorMappedAddress(CLIENT)),
        )
    )
    assert parse_binding_response(both, txid).mapped == CLIENT


def test_mapping_classifier() -> None:
    x1, x2, x3 = ("203.0.113.1", 1000), ("203.0.113.1", 1001), ("203.0.113.1", 1002)
    assert classify_mapping(x1, x1) == MappingBehavior.ENDPOINT_INDEPENDENT
    assert (
        classify_mapping(x1, ("::ffff:203.0.113.1", 1000)) == MappingBehavior.ENDPOINT_INDEPENDENT
    )
    assert classify_mapping(x1, x2, x2) == MappingBehavior.ADDRESS_DEPENDENT
    assert classify_mapping(x1, x2, x3) == MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
    with pytest.raises(LocalProtocolError, match="test III"):
        classify_mapping(x1, x2)
    assert mapping_test_targets(("198.51.100.1", 3478), ("198.51.100.2", 3479)) == (
        ("198.51.100.2", 3478),
        ("198.51.100.2", 3479),
    )
    assert MappingBehavior.ADDRESS_DEPENDENT.value == "address-dependent"


class FakeNat:
    """An in-memory NAT with a given mapping behaviour (RFC 4787 §4.1)."""

    def __init__(self, behavior: MappingBehavior) -> None:
        self.behavior = behavior
        self.table: dict[tuple[Address, object], Address] = {}

    def map(self, internal: Address, destination: Address) -> Address:
        key: object = {
            MappingBehavior.ENDPOINT_INDEPENDENT: None,
            MappingBehavior.ADDRESS_DEPENDENT: destination[0],
            MappingBehavior.ADDRESS_AND_PORT_DEPENDENT: destination,
        }[self.behavior]
        return self.table.setdefault((internal, key), ("203.0.113.1", 20000 + len(self.table)))


@pytest.mark.parametrize("behavior", list(MappingBehavior))
def test_rfc5780_mapping_tests_through_fake_nat(behavior: MappingBehavior) -> None:
    primary, alternate = ("198.51.100.1", 3478), ("198.51.100.2", 3479)
    server = make_server(local_address=primary, other_address=alternate)
    nat = FakeNat(behavior)
    internal: Address = ("10.0.0.5", 5000)

    def binding(to: Address) -> BindingResult:
        txid, request = binding_request()
        reply = server.respond(request, nat.map(internal, to), 0.0, local=to)
        assert reply is not None
        return parse_binding_response(reply.data, txid)

    first = binding(primary)
    assert first.other_address == alternate
    test2_target, test3_target = mapping_test_targets(primary, first.other_address)
    x1, x2, x3 = first.mapped, binding(test2_target).mapped, binding(test3_target).mapped
    assert classify_mapping(x1, x2, x3) == behavior


# --------------------------------------------------------------------------------------------
# TCP framing
# --------------------------------------------------------------------------------------------


def some_messages() -> list[bytes]:
    return [binding_request(bytes([i]) * 12)[1] for i in range(3)] + [
        RFC5769_IPV4_RESPONSE,
        RFC5769_REQUEST,
    ]


def test_split_stream_whole_and_partial() -> None:
    messages = some_messages()
    stream = b"".join(messages)
    assert split_stream(stream) == (messages, b"")
    assert split_stream(stream + messages[0][:7]) == (messages, messages[0][:7])
    assert split_stream(b"") == ([], b"")
    assert split_stream(messages[0][:3]) == ([], messages[0][:3])


def feed_bytewise(stream: bytes) -> list[bytes]:
    reader = StunStreamReader()
    out: list[bytes] = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (message := reader.next_message()) is not None:
            out.append(message)
    return out


def test_byte_at_a_time_equals_whole() -> None:
    messages = some_messages()
    stream = b"".join(messages)
    assert feed_bytewise(stream) == messages
    # split_stream with the leftover carried along, one byte at a time
    out: list[bytes] = []
    leftover = b""
    for i in range(len(stream)):
        got, leftover = split_stream(leftover + stream[i : i + 1])
        out.extend(got)
        assert len(leftover) < MAX_MESSAGE_SIZE
    assert out == messages and leftover == b""


@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=40))
def test_any_chunking_equals_whole(cuts: list[int]) -> None:
    messages = some_messages()
    stream = b"".join(messages)
    reader = StunStreamReader()
    out: list[bytes] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[pos : pos + cut])
        pos += cut
        while (message := reader.next_message()) is not None:
            out.append(message)
    assert out == messages and reader.buffered == 0


@pytest.mark.parametrize(
    ("prefix", "fragment"),
    [
        (b"GET / HTTP/1.1\r\n", "top two bits"),
        (b"\x00\x01\x00\x03", "multiple of 4"),
        (b"\x00\x01\xff\xfc", "more than 1280"),
    ],
)
def test_split_stream_rejects_non_stun(prefix: bytes, fragment: str) -> None:
    good = some_messages()[0]
    with pytest.raises(StunParseError, match=fragment):
        split_stream(prefix)
    # After good messages the bad frame is reported on the next call, as byte-wise feeding does.
    messages, leftover = split_stream(good + prefix)
    assert messages == [good] and leftover == prefix
    with pytest.raises(StunParseError, match=fragment):
        split_stream(leftover)
    reader = StunStreamReader()
    reader.feed(good + prefix)
    assert reader.next_message() == good
    with pytest.raises(StunParseError, match=fragment):
        reader.next_message()


def test_stream_reader_is_bounded() -> None:
    reader = StunStreamReader(max_buffer=100)
    reader.feed(bytes(100))
    with pytest.raises(StunParseError, match="receive buffer"):
        reader.feed(b"x")


# --------------------------------------------------------------------------------------------
# Robustness: any bytes give a Message or StunParseError; the server never raises
# --------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KNOWN_TYPES = [int(t) for t in AttributeType] + [0x7777, 0xC001]


@st.composite
def raw_stun(draw: st.DrawFn) -> bytes:
    """Plausibly framed STUN messages with random attributes: reaches the attribute codecs."""
    attrs = b""
    for _ in range(draw(st.integers(0, 5))):
        attr_type = draw(st.sampled_from(KNOWN_TYPES))
        value = draw(
            st.one_of(
                st.binary(max_size=24),
                st.sampled_from(
                    [b"\x00\x01\x12\x34\x7f\x00\x00\x01", b"\x00\x02\x00\x01" + bytes(16)]
                ),
            )
        )
        length = draw(st.one_of(st.just(len(value)), st.integers(0, 40)))
        attrs += struct.pack("!HH", attr_type, length) + value + bytes(-len(value) % 4)
    type_ = draw(
        st.one_of(st.sampled_from([0x0001, 0x0011, 0x0101, 0x0111]), st.integers(0, 0xFFFF))
    )
    cookie = draw(st.sampled_from([MAGIC_COOKIE, 0x01020304]))
    data = struct.pack("!HHI", type_, len(attrs), cookie) + draw(
        st.binary(min_size=12, max_size=12)
    )
    data += attrs
    if draw(st.booleans()):
        data += crc_fingerprint(data)
        data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    return data


VALID = [
    RFC5769_REQUEST,
    RFC5769_IPV4_RESPONSE,
    RFC5769_IPV6_RESPONSE,
    binding_request(bytes(12))[1],
    binding_request(TXID16, classic=True)[1],
    push_message(
        Message(
            1,
            MessageClass.ERROR,
            bytes(12),
            (ErrorCode(420, "Unknown"), UnknownAttributes((2, 3)), ChangeRequest(True, True)),
        ),
        fingerprint=False,
    ),
    push_message(
        Message(
            1,
            MessageClass.SUCCESS,
            bytes(12),
            (OtherAddress(("::1", 1)), ResponseOrigin(("1.2.3.4", 5))),
        ),
        fingerprint=False,
    ),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


def assert_total(data: bytes) -> None:
    try:
        msg = pull_message(data)
    except StunParseError as exc:
        assert exc.message
        return
    assert isinstance(msg, Message)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_parse_or_stun_parse_error(data: bytes) -> None:
    assert_total(data)


@FUZZ
@given(raw_stun())
def test_framed_random_attributes_parse_or_stun_parse_error(data: bytes) -> None:
    assert_total(data)


@FUZZ
@given(mutated())
def test_mutated_messages_parse_or_stun_parse_error(data: bytes) -> None:
    assert_total(data)


SOURCES = st.one_of(
    st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    st.tuples(st.sampled_from(["", "x", "1.2.3", "::ffff:1.2.3.4"]), st.integers(-1, 70000)),
)


@FUZZ
@given(st.one_of(st.binary(max_size=120), raw_stun(), mutated()), SOURCES, st.floats(0, 1e9))
def test_server_never_raises(data: bytes, source: Address, now: float) -> None:
    server = StunServer(
        StunServerConfig(local_address=("198.51.100.1", 3478), other_address=("198.51.100.2", 3479))
    )
    response = server.handle(data, source, now)
    reply = server.respond(data, source, now, local=("198.51.100.2", 3478))
    for out in (response, reply.data if reply is not None else None):
        if out is not None:
            assert pull_message(out).message_class in (MessageClass.SUCCESS, MessageClass.ERROR)


@st.composite
def plain_ish(draw: st.DrawFn) -> bytes:
    """Binding requests near the hot path's edge: plain ones, then perhaps one byte changed."""
    attrs = draw(
        st.lists(
            st.one_of(
                st.builds(Software, st.text(max_size=12)),
                st.builds(
                    RawAttribute,
                    st.sampled_from([0x0006, 0x0008, 0x0024, 0x0025, 0x8029, 0xC001, 0x7777]),
                    st.binary(max_size=9),
                ),
                st.builds(ChangeRequest, st.booleans(), st.booleans()),
            ),
            max_size=4,
        )
    )
    txid = draw(st.binary(min_size=12, max_size=12))
    data = bytearray(
        push_message(
            Message(1, MessageClass.REQUEST, txid, tuple(attrs)),
            software=None,
            fingerprint=draw(st.booleans()),
        )
    )
    if draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@FUZZ
@given(st.one_of(plain_ish(), raw_stun(), mutated()), SOURCES, st.floats(0, 1e9))
def test_hot_path_answers_and_counts_as_the_generic_path(
    data: bytes, source: Address, now: float
) -> None:
    config = StunServerConfig(
        local_address=("198.51.100.1", 3478), other_address=("198.51.100.2", 3479)
    )
    fast, slow = StunServer(config), GenericOnly(config)
    for local in (None, ("198.51.100.2", 3478)):
        assert fast.respond(data, source, now, local=local) == slow.respond(
            data, source, now, local=local
        )
    assert fast.handle(data, source, now) == slow.handle(data, source, now)
    assert fast.stats == slow.stats


@FUZZ
@given(st.binary(max_size=120))
def test_split_stream_total(data: bytes) -> None:
    try:
        messages, leftover = split_stream(data)
    except StunParseError:
        return
    assert b"".join(messages) + leftover == data


ADDRESSES = st.tuples(st.ip_addresses().map(str), st.integers(0, 65535))
ATTRIBUTES = st.one_of(
    st.builds(MappedAddress, ADDRESSES),
    st.builds(XorMappedAddress, ADDRESSES),
    st.builds(ResponseOrigin, ADDRESSES),
    st.builds(OtherAddress, ADDRESSES),
    st.builds(SourceAddress, ADDRESSES),
    st.builds(ChangedAddress, ADDRESSES),
    st.builds(Software, st.text(max_size=40)),
    st.builds(ErrorCode, st.integers(300, 699), st.text(max_size=40)),
    st.builds(UnknownAttributes, st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple)),
    st.builds(ChangeRequest, st.booleans(), st.booleans()),
    st.builds(
        RawAttribute,
        st.integers(0, 0xFFFF).filter(
            lambda t: (
                t not in {0x1, 0x3, 0x4, 0x5, 0x9, 0xA, 0x20}
                and t not in {0x8022, 0x8028, 0x802B, 0x802C}
            )
        ),
        st.binary(max_size=30),
    ),
)


@FUZZ
@given(
    st.integers(0, 0xFFF),
    st.sampled_from(MessageClass),
    st.one_of(st.binary(min_size=12, max_size=12), st.binary(min_size=16, max_size=16)),
    st.lists(ATTRIBUTES, max_size=6),
    st.booleans(),
)
def test_message_round_trip(
    method: int,
    klass: MessageClass,
    txid: bytes,
    attrs: list[Attribute],
    fingerprint: bool,
) -> None:
    if len(txid) == 16 and txid[:4] == struct.pack("!I", MAGIC_COOKIE):
        txid = b"\x00" + txid[1:]  # a classic id that happens to start with the cookie is modern
    msg = Message(method, klass, txid, tuple(attrs))
    wire = push_message(msg, software=None, fingerprint=fingerprint)
    parsed = pull_message(wire)
    assert without_fingerprint(parsed) == msg
    assert isinstance(parsed.attributes[-1], Fingerprint) if fingerprint else True
    assert push_message(parsed, software=None, fingerprint=fingerprint) == wire


# --------------------------------------------------------------------------------------------
# The asyncio shell over loopback
# --------------------------------------------------------------------------------------------


def run(coro: Any, timeout: float = 10.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class RecordingServer(StunServer):
    """A StunServer that remembers the sources it saw and can lose the first N requests."""

    def __init__(self, config: StunServerConfig | None = None, lose: int = 0) -> None:
        super().__init__(config)
        self.sources: list[Address] = []
        self.lose = lose

    def respond(self, data: bytes, source: Address, now: float, **kwargs: Any) -> Any:
        self.sources.append(source)
        if self.lose > 0:
            self.lose -= 1
            return None
        return super().respond(data, source, now, **kwargs)


def test_udp_and_tcp_binding_over_loopback() -> None:
    async def main() -> tuple[BindingResult, BindingResult, list[Address], StunService]:
        core = RecordingServer()
        async with await serve_stun("127.0.0.1", 0, core) as service:
            assert service.udp_address[1] == service.tcp_address[1]
            udp = await stun_binding("127.0.0.1", service.udp_address[1], timeout=3)
            tcp = await stun_binding(
                "127.0.0.1", service.tcp_address[1], timeout=3, transport="tcp"
            )
        return udp, tcp, core.sources, service

    udp, tcp, sources, _ = run(main())
    for result in (udp, tcp):
        assert result.local is not None
        assert result.mapped == result.local
        assert result.software == "didsession"
    assert sources == [udp.local, tcp.local]


def test_udp_retransmission() -> None:
    async def main() -> tuple[BindingResult, RecordingServer]:
        core = RecordingServer(lose=2)
        async with await serve_stun("127.0.0.1", 0, core, tcp=False) as service:
            result = await stun_binding("127.0.0.1", service.udp_address[1], timeout=3, rto=0.02)
        return result, core

    result, core = run(main())
    assert result.mapped == result.local
    assert len(core.sources) == 3 and len(set(core.sources)) == 1  # same socket, three sends


def test_udp_timeout_is_bounded() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        with pytest.raises(DidSessionError, match="did not answer") as info:
            run(stun_binding("127.0.0.1", port, timeout=0.3, rto=0.05))
        assert info.value.code == "e.p.stun.timeout"
        packets = 0
        silent.setblocking(False)
        while True:
            try:
                silent.recv(2048)
            except BlockingIOError:
                break
            packets += 1
        assert 2 <= packets <= 7  # retransmitted, and no more than Rc = 7 times
    finally:
        silent.close()


def test_error_response_reaches_the_client_over_udp() -> None:
    class Refusing(StunServer):
        def respond(self, data: bytes, source: Address, now: float, **kwargs: Any) -> Any:
            msg = pull_message(data)
            return super().respond(
                push_message(
                    Message(
                        msg.method,
                        msg.message_class,
                        msg.transaction_id,
                        (RawAttribute(0x7777, b""),),
                    )
                ),
                source,
                now,
                **kwargs,
            )

    async def main() -> None:
        async with await serve_stun("127.0.0.1", 0, Refusing(), tcp=False) as service:
            await stun_binding("127.0.0.1", service.udp_address[1], timeout=2)

    with pytest.raises(RemoteProtocolError, match="420"):
        run(main())


def test_never_reflects_over_real_sockets() -> None:
    """A request naming a victim address is answered with 420 to its source; the victim
    socket receives nothing."""
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.1", 0))
    victim.settimeout(0.3)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2.0)
    victim_address = victim.getsockname()
    request = request_with(
        RawAttribute(
            AttributeType.RESPONSE_ADDRESS,
            push_attribute(MappedAddress(victim_address), b"")[4:],
        ),
        RawAttribute(AttributeType.RESPONSE_PORT, struct.pack("!HH", victim_address[1], 0)),
        ChangeRequest(True, True),
    )

    async def main() -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        async with await serve_stun("127.0.0.1", 0, StunServer(), tcp=False) as service:
            client.sendto(request, service.udp_address)
            return await loop.run_in_executor(None, client.recvfrom, 2048)

    try:
        data, _ = run(main())
        msg = pull_message(data)
        assert msg.find(ErrorCode) == ErrorCode(420, "Unknown Attribute")
        assert set(msg.find(UnknownAttributes).types) == {0x0002, 0x0027, 0x0003}  # type: ignore[union-attr]
        with pytest.raises(TimeoutError):
            victim.recvfrom(2048)
    finally:
        victim.close()
        client.close()


def test_rfc5780_server_on_four_addresses() -> None:
    """Our RFC 5780 shell on 127.0.0.1 and 127.0.0.2: CHANGE-REQUEST responses leave from the
    changed address, and the mapping tests classify loopback as endpoint-independent."""
    port = free_port_pair(("127.0.0.1", "127.0.0.2"))
    primary, alternate = ("127.0.0.1", port), ("127.0.0.2", port + 1)
    core = StunServer(StunServerConfig(local_address=primary, other_address=alternate))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2.0)
    local = client.getsockname()

    async def main() -> tuple[list[tuple[Address, Address | None]], MappingBehavior]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[Address, Address | None]] = []
        async with await serve_stun("127.0.0.1", port, core, alternate=alternate) as service:
            assert len(service.udp_addresses) == 4 and len(service.tcp_addresses) == 4
            for flags in [(False, False), (True, False), (False, True), (True, True)]:
                txid = bytes([len(seen)]) * 12
                client.sendto(request_with(ChangeRequest(*flags), txid=txid), primary)
                data, sender = await loop.run_in_executor(None, client.recvfrom, 2048)
                result = parse_binding_response(data, txid)
                assert result.mapped == local
                seen.append((sender, result.response_origin))
            # RFC 5780 §4.3 tests I-III from one local port, through stun_binding.
            mapped: list[Address] = []
            first = await stun_binding(*primary, timeout=2, local_addr=("127.0.0.1", 0))
            assert first.other_address == alternate and first.local is not None
            for target in (primary, *mapping_test_targets(primary, alternate)):
                result = await stun_binding(*target, timeout=2, local_addr=first.local)
                mapped.append(result.mapped)
            tcp = await stun_binding(*alternate, timeout=2, transport="tcp")
            assert tcp.response_origin == alternate and tcp.other_address == primary
            assert service.origin_drops == 0
        return seen, classify_mapping(*mapped)

    try:
        seen, behavior = run(main())
    finally:
        client.close()
    expected = [primary, ("127.0.0.2", port), ("127.0.0.1", port + 1), alternate]
    assert seen == [(e, e) for e in expected]
    assert behavior == MappingBehavior.ENDPOINT_INDEPENDENT


def test_udp_queue_drops_when_full() -> None:
    async def main() -> StunService:
        service = StunService()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)
        protocol = _ServerDatagramProtocol(service, queue, None)
        for _ in range(5):
            protocol.datagram_received(b"x", ("127.0.0.1", 1))
        assert queue.qsize() == 2
        return service

    assert run(main()).queue_drops == 3


def test_tcp_framing_error_closes_connection() -> None:
    async def main() -> tuple[bytes, bytes, StunService]:
        async with await serve_stun("127.0.0.1", 0, StunServer(), udp=False) as service:
            reader, writer = await asyncio.open_connection(*service.tcp_address)
            txid, request = binding_request()
            # two requests back to back in one write, then garbage
            writer.write(request + request + b"GET / HTTP/1.1\r\n\r\n")
            await writer.drain()
            data = await reader.read()  # until the server closes
            writer.close()
            messages, leftover = split_stream(data)
            assert len(messages) == 2 and leftover == b""
            for message in messages:
                parse_binding_response(message, txid)
            return data, leftover, service

    _, _, service = run(main())
    assert service.tcp_framing_errors == 1


def test_service_survives_a_raising_handler_and_serves_forever() -> None:
    class BrokenOnce(StunServer):
        broken = True

        def respond(self, data: bytes, source: Address, now: float, **kwargs: Any) -> Any:
            if self.broken:
                self.broken = False
                raise RuntimeError("handler bug")
            return super().respond(data, source, now, **kwargs)

    async def main() -> tuple[BindingResult, StunService]:
        service = await serve_stun("127.0.0.1", 0, BrokenOnce(), tcp=False)
        forever = asyncio.create_task(service.serve_forever())
        result = await stun_binding("127.0.0.1", service.udp_address[1], timeout=2, rto=0.05)
        assert not forever.done()
        await service.close()
        await asyncio.wait_for(forever, 1)
        return result, service

    result, service = run(main())
    assert result.mapped == result.local
    assert service.handler_errors == 1


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((data, addr))


def test_udp_answers_inline_within_the_budget_then_queues() -> None:
    """Datagrams are answered as they arrive up to the per-iteration budget; the rest wait in
    the bounded queue (dropped when full) for the worker, which answers them next iteration."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        service, out = StunService(), FakeTransport()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
        sockets: dict[Any, Any] = {None: out}
        responder = _UdpResponder(service, make_server(), sockets, False, loop)
        protocol = _ServerDatagramProtocol(service, queue, None, responder)
        txid, request = binding_request()
        for _ in range(UDP_ANSWERS_PER_ITERATION + 6):
            protocol.datagram_received(request, CLIENT)
        assert len(out.sent) == UDP_ANSWERS_PER_ITERATION  # at once, no task switch
        assert queue.qsize() == 4 and service.queue_drops == 2
        worker = asyncio.create_task(_udp_worker(queue, responder))
        for _ in range(3):
            await asyncio.sleep(0)
        assert queue.qsize() == 0 and len(out.sent) == UDP_ANSWERS_PER_ITERATION + 4
        protocol.datagram_received(request, CLIENT)  # a new iteration: a new budget
        assert len(out.sent) == UDP_ANSWERS_PER_ITERATION + 5
        worker.cancel()
        for data, addr in out.sent:
            assert addr == CLIENT  # back to the source, always
            assert parse_binding_response(data, txid).mapped == CLIENT

    run(main())


def test_udp_burst_is_answered_in_full() -> None:
    """A burst larger than a read batch and the budget: every request answered, to its sender."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)  # room for every answer
    client.bind(("127.0.0.1", 0))
    client.settimeout(3.0)
    requests = [binding_request() for _ in range(300)]
    core = StunServer(StunServerConfig(rate_limit=None))

    async def main() -> tuple[set[bytes], StunService]:
        loop = asyncio.get_running_loop()
        async with await serve_stun("127.0.0.1", 0, core, tcp=False) as service:
            sock = service._closers[0].get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 400_000
            for _, request in requests:
                client.sendto(request, service.udp_address)
            seen: set[bytes] = set()
            while len(seen) < len(requests):
                data, sender = await loop.run_in_executor(None, client.recvfrom, 2048)
                assert sender == service.udp_address
                seen.add(data[8:20])
        return seen, service

    try:
        seen, service = run(main())
    finally:
        client.close()
    assert seen == {txid for txid, _ in requests}
    assert service.queue_drops == service.send_drops == service.handler_errors == 0
    assert core.stats.responses == len(requests)


def test_udp_on_a_loop_that_cannot_watch_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without add_reader (Windows' proactor loop) the loop's own datagram transport serves."""

    async def main() -> BindingResult:
        loop = asyncio.get_running_loop()

        def no_add_reader(*args: Any) -> None:
            raise NotImplementedError

        monkeypatch.setattr(loop, "add_reader", no_add_reader)
        async with await serve_stun("127.0.0.1", 0, StunServer(), tcp=False) as service:
            transport = service._closers[0]
            assert not isinstance(transport, _SocketDatagramTransport)
            return await stun_binding("127.0.0.1", service.udp_address[1], timeout=3)

    result = run(main())
    assert result.mapped == result.local
