"""The reference frame parser (netctl.policy.frame) follows its spec, branch by branch, and
agrees with scapy's dissection; the generators in tests/frames.py make what they promise.

Hand-written frames are built byte by byte here (not with scapy) so that every expectation
is visible in the test; the property tests build frames with scapy and take the expected
fields from scapy's own dissection of the bytes, and the expected reason of a truncated frame
from the lengths of the headers scapy built.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re
import struct

import frames
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.inet6 import (
    ICMPv6Unknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
    PadN,
    _ICMPv6,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from netctl.abi import IPV6_EXT_HDRS, DropReason
from netctl.policy.frame import (
    LINK_L3,
    FrameVerdict,
    Ip,
    Malformed,
    NonIp,
    frame_verdict,
    parse_frame,
)
from netctl.policy.model import Action, Direction, Packet, Policy, PortRange, Rule

R = DropReason
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARSE_REASONS = {R.TRUNC_L2, R.VLAN_DEPTH, R.BAD_IPV4, R.TRUNC_IPV4, R.BAD_IPV6, R.TRUNC_IPV6,
                 R.EXT_LIMIT, R.TRUNC_L4, R.HDR_TOO_LONG}

# ---- byte builders for hand-written frames -------------------------------------------

A4, B4 = "192.0.2.1", "198.51.100.254"
A6, B6 = "2001:db8::1", "fe80::ffff:2"


def eth(*types: int) -> bytes:
    """Ethernet header; each type after the first adds a VLAN tag (TCI 5) before it."""
    out = bytes.fromhex("0a0b0c0d0e0f" "010203040506") + struct.pack("!H", types[0])
    for inner in types[1:]:
        out += struct.pack("!HH", 5, inner)
    return out


def ipv4(proto: int, *, ihl: int = 5, version: int = 4, frag: int = 0, options: bytes = b"",
         total_length: int = 40) -> bytes:
    return struct.pack("!BBHHHBBH", version << 4 | ihl, 0, total_length, 7, frag, 64, proto,
                       0) + ipaddress.IPv4Address(A4).packed + ipaddress.IPv4Address(B4).packed \
        + options


def ipv6(nh: int, *, version: int = 6, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB", version << 28, 0, nh, hlim) + ipaddress.IPv6Address(A6).packed \
        + ipaddress.IPv6Address(B6).packed


def tcp(sport: int = 40000, dport: int = 22) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 8192, 0, 0)


def udp(sport: int = 5353, dport: int = 53) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8, 0)


def icmp(icmp_type: int, code: int) -> bytes:
    return bytes([icmp_type, code, 0xAB, 0xCD])


def opt(nh: int, units: int = 0) -> bytes:
    """Hop-by-hop/routing/destination options header: (units + 1) * 8 bytes."""
    return bytes([nh, units]) + b"\x01" * (6 + 8 * units)


def frag6(nh: int, offset: int, more: int = 0, reserved: int = 0) -> bytes:
    return bytes([nh, reserved]) + struct.pack("!HI", offset << 3 | more, 0x1234)


def ah(nh: int, payloadlen: int = 1) -> bytes:
    """Authentication header: (payloadlen + 2) * 4 bytes."""
    return bytes([nh, payloadlen, 0, 0]) + b"\x07" * ((payloadlen + 2) * 4 - 4)


def pkt4(proto: int, **fields) -> Packet:
    return Packet(ipaddress.IPv4Address(A4), ipaddress.IPv4Address(B4), proto, **fields)


def pkt6(proto: int, **fields) -> Packet:
    return Packet(ipaddress.IPv6Address(A6), ipaddress.IPv6Address(B6), proto, **fields)


E4, E6 = eth(0x0800), eth(0x86DD)
TCP4 = pkt4(6, sport=40000, dport=22)
TCP6 = pkt6(6, sport=40000, dport=22)
UDP6 = pkt6(17, sport=5353, dport=53)

CASES = [
    # 1. Ethernet
    ("empty", b"", R.TRUNC_L2),
    ("13 bytes", E4[:13], R.TRUNC_L2),
    ("arp", eth(0x0806) + bytes(28), NonIp()),
    ("arp, header only", eth(0x0806), NonIp()),
    ("lldp", eth(0x88CC) + bytes(20), NonIp()),
    ("ethertype 0", eth(0x0000) + bytes(40), NonIp()),
    ("ipv4 ethertype, nothing after", E4, R.TRUNC_IPV4),
    ("ipv6 ethertype, nothing after", E6, R.TRUNC_IPV6),
    # 2. VLAN tags
    ("802.1q tag cut", eth(0x8100) + b"\x00\x05\x08", R.TRUNC_L2),
    ("802.1ad tag, nothing after", eth(0x88A8), R.TRUNC_L2),
    ("second tag cut", eth(0x88A8, 0x8100) + b"\x00", R.TRUNC_L2),
    ("802.1q ipv4 tcp", eth(0x8100, 0x0800) + ipv4(6) + tcp(), TCP4),
    ("802.1ad ipv4 tcp", eth(0x88A8, 0x0800) + ipv4(6) + tcp(), TCP4),
    ("qinq ipv6 udp", eth(0x88A8, 0x8100, 0x86DD) + ipv6(17) + udp(), UDP6),
    ("two 802.1q ipv6 udp", eth(0x8100, 0x8100, 0x86DD) + ipv6(17) + udp(), UDP6),
    ("tag then arp", eth(0x8100, 0x0806) + bytes(28), NonIp()),
    ("two tags then arp", eth(0x88A8, 0x8100, 0x0806), NonIp()),
    ("two tags then ipv4 cut", eth(0x88A8, 0x8100, 0x0800) + ipv4(6)[:10], R.TRUNC_IPV4),
    ("three tags", eth(0x8100, 0x8100, 0x8100, 0x0800) + ipv4(6) + tcp(), R.VLAN_DEPTH),
    ("three tags 802.1ad", eth(0x88A8, 0x88A8, 0x88A8, 0x86DD) + ipv6(6) + tcp(), R.VLAN_DEPTH),
    ("third tag has no bytes", eth(0x88A8, 0x8100, 0x8100), R.VLAN_DEPTH),
    # 3. IPv4
    ("ipv4 19 bytes", E4 + ipv4(6)[:19], R.TRUNC_IPV4),
    ("ipv4 19 bytes, bad version too", E4 + ipv4(6, version=6)[:19], R.TRUNC_IPV4),
    ("ipv4 version 6", E4 + ipv4(6, version=6) + tcp(), R.BAD_IPV4),
    ("ipv4 version 0", E4 + ipv4(6, version=0) + tcp(), R.BAD_IPV4),
    ("ipv4 version 15", E4 + ipv4(6, version=15) + tcp(), R.BAD_IPV4),
    *[(f"ipv4 ihl {ihl}", E4 + ipv4(6, ihl=ihl) + tcp(), R.BAD_IPV4) for ihl in range(5)],
    ("ipv4 ihl 6, no options", E4 + ipv4(6, ihl=6), R.TRUNC_IPV4),
    ("ipv4 ihl 15, 36 option bytes", E4 + ipv4(6, ihl=15, options=bytes(36)), R.TRUNC_IPV4),
    ("ipv4 ihl 6 options then tcp", E4 + ipv4(6, ihl=6, options=b"\x01\x01\x01\x00") + tcp(),
     TCP4),
    ("ipv4 ihl 15 options then tcp", E4 + ipv4(6, ihl=15, options=b"\x01" * 40) + tcp(), TCP4),
    ("ipv4 total length 0 ignored", E4 + ipv4(6, total_length=0) + tcp(), TCP4),
    ("ipv4 total length 65535 ignored", E4 + ipv4(6, total_length=65535) + tcp(), TCP4),
    ("ipv4 trailing bytes ignored", E4 + ipv4(6) + tcp() + bytes(100), TCP4),
    # 6. transport in IPv4
    ("ipv4 tcp 20 bytes", E4 + ipv4(6) + tcp(1, 65535), pkt4(6, sport=1, dport=65535)),
    ("ipv4 tcp 19 bytes", E4 + ipv4(6) + tcp()[:19], R.TRUNC_L4),
    ("ipv4 tcp 0 bytes", E4 + ipv4(6), R.TRUNC_L4),
    ("ipv4 udp 8 bytes", E4 + ipv4(17) + udp(0, 1), pkt4(17, sport=0, dport=1)),
    ("ipv4 udp 7 bytes", E4 + ipv4(17) + udp()[:7], R.TRUNC_L4),
    ("ipv4 icmp 4 bytes", E4 + ipv4(1) + icmp(3, 3), pkt4(1, icmp_type=3, icmp_code=3)),
    ("ipv4 echo request 8 bytes", E4 + ipv4(1) + icmp(8, 3) + b"\x12\x34\x00\x01",
     pkt4(1, icmp_type=8, icmp_code=3)),
    ("ipv4 echo request 7 bytes: no whole identifier", E4 + ipv4(1) + icmp(8, 0) + b"\x12\x34\x00",
     R.TRUNC_L4),
    ("ipv4 echo reply 4 bytes", E4 + ipv4(1) + icmp(0, 0), R.TRUNC_L4),
    ("ipv4 icmp 3 bytes", E4 + ipv4(1) + icmp(8, 0)[:3], R.TRUNC_L4),
    ("ipv4 icmpv6 number: no fields", E4 + ipv4(58), pkt4(58)),
    ("ipv4 icmpv6 number with bytes", E4 + ipv4(58) + icmp(135, 0), pkt4(58)),
    ("ipv4 gre, no bytes", E4 + ipv4(47), pkt4(47)),
    ("ipv4 proto 0 is not walked", E4 + ipv4(0) + opt(6) + tcp(), pkt4(0)),
    ("ipv4 proto 51 is not walked", E4 + ipv4(51) + ah(6) + tcp(), pkt4(51)),
    # 3. IPv4 fragments: only the 13-bit offset counts
    ("ipv4 non-first fragment, nothing after", E4 + ipv4(6, frag=1), pkt4(6, fragment=True)),
    ("ipv4 non-first fragment, offset 0x1fff", E4 + ipv4(17, frag=0x1FFF) + b"\x01",
     pkt4(17, fragment=True)),
    ("ipv4 non-first fragment with MF", E4 + ipv4(1, frag=0x2000 | 185) + icmp(8, 0),
     pkt4(1, fragment=True)),
    ("ipv4 first fragment (MF) tcp", E4 + ipv4(6, frag=0x2000) + tcp(), TCP4),
    ("ipv4 first fragment (MF) tcp cut", E4 + ipv4(6, frag=0x2000) + tcp()[:8], R.TRUNC_L4),
    ("ipv4 DF, MF and reserved bits", E4 + ipv4(6, frag=0xE000) + tcp(), TCP4),
    # 4. IPv6
    ("ipv6 39 bytes", E6 + ipv6(6)[:39], R.TRUNC_IPV6),
    ("ipv6 39 bytes, bad version too", E6 + ipv6(6, version=4)[:39], R.TRUNC_IPV6),
    ("ipv6 version 4", E6 + ipv6(6, version=4) + tcp(), R.BAD_IPV6),
    ("ipv6 version 0", E6 + ipv6(6, version=0) + tcp(), R.BAD_IPV6),
    ("ipv6 version 7", E6 + ipv6(6, version=7) + tcp(), R.BAD_IPV6),
    ("ipv6 carrying an ipv4 header", E6 + ipv4(6) + tcp(), R.BAD_IPV6),
    ("ipv4 ethertype, ipv6 header", E4 + ipv6(6) + tcp(), R.BAD_IPV4),
    ("ipv6 tcp", E6 + ipv6(6) + tcp(), TCP6),
    ("ipv6 tcp 19 bytes", E6 + ipv6(6) + tcp()[:19], R.TRUNC_L4),
    ("ipv6 udp", E6 + ipv6(17) + udp(), UDP6),
    ("ipv6 udp 7 bytes", E6 + ipv6(17) + udp()[:7], R.TRUNC_L4),
    ("ipv6 icmpv6", E6 + ipv6(58) + icmp(135, 0), pkt6(58, icmp_type=135, icmp_code=0)),
    ("ipv6 icmpv6 3 bytes", E6 + ipv6(58) + icmp(135, 0)[:3], R.TRUNC_L4),
    ("ipv6 icmp number: no fields", E6 + ipv6(1), pkt6(1)),
    ("ipv6 no next header", E6 + ipv6(59), pkt6(59)),
    ("ipv6 esp ends the walk", E6 + ipv6(50) + opt(6) + tcp(), pkt6(50)),
    ("ipv6 trailing bytes ignored", E6 + ipv6(6) + tcp() + bytes(64), TCP6),
    # 4. extension headers
    ("hop-by-hop 7 bytes", E6 + ipv6(0) + opt(6)[:7], R.TRUNC_IPV6),
    ("hop-by-hop, nothing after the header", E6 + ipv6(0), R.TRUNC_IPV6),
    ("hop-by-hop len 1, 8 bytes there", E6 + ipv6(0) + opt(6, 1)[:8], R.TRUNC_IPV6),
    ("hop-by-hop len 1, 15 bytes there", E6 + ipv6(0) + opt(6, 1)[:15], R.TRUNC_IPV6),
    ("hop-by-hop len 1 then tcp", E6 + ipv6(0) + opt(6, 1) + tcp(), TCP6),
    ("hop-by-hop len 255 past the end", E6 + ipv6(0) + opt(6, 255)[:100], R.TRUNC_IPV6),
    ("routing len 2 then udp", E6 + ipv6(43) + opt(17, 2) + udp(), UDP6),
    ("destination options then icmpv6", E6 + ipv6(60) + opt(58) + icmp(128, 1) + bytes(4),
     pkt6(58, icmp_type=128, icmp_code=1)),
    ("icmpv6 echo reply of 4 bytes", E6 + ipv6(58) + icmp(129, 0), R.TRUNC_L4),
    ("icmpv6 packet-too-big of 4 bytes", E6 + ipv6(58) + icmp(2, 0),
     pkt6(58, icmp_type=2, icmp_code=0)),
    ("destination options then icmpv6 cut", E6 + ipv6(60) + opt(58) + b"\x80", R.TRUNC_L4),
    ("destination options then esp", E6 + ipv6(60) + opt(50) + bytes(8), pkt6(50)),
    # AH is the protocol, as in IPv4: the walk ends there and nothing after it is read
    ("ah then tcp: ah is the protocol", E6 + ipv6(51) + ah(6, 1) + tcp(), pkt6(51)),
    ("ah then udp", E6 + ipv6(51) + ah(17, 4) + udp(), pkt6(51)),
    ("ah, nothing after", E6 + ipv6(51), pkt6(51)),
    ("ah 7 bytes", E6 + ipv6(51) + ah(6, 1)[:7], pkt6(51)),
    ("ah len 255 past the end", E6 + ipv6(51) + ah(6, 255)[:64], pkt6(51)),
    ("ah after destination options", E6 + ipv6(60) + opt(51) + ah(6) + tcp(), pkt6(51)),
    ("fragment header 7 bytes", E6 + ipv6(44) + frag6(6, 0)[:7], R.TRUNC_IPV6),
    ("first fragment then tcp", E6 + ipv6(44) + frag6(6, 0, more=1) + tcp(), TCP6),
    ("first fragment, offset bits 0 but res/M set", E6 + ipv6(44) + b"\x06\x00\x00\x07"
     + bytes(4) + tcp(), TCP6),
    ("first fragment: byte 1 is no length", E6 + ipv6(44) + frag6(6, 0, reserved=255) + tcp(),
     TCP6),
    ("first fragment then tcp cut", E6 + ipv6(44) + frag6(6, 0, more=1) + tcp()[:10],
     R.TRUNC_L4),
    ("non-first fragment, nothing after", E6 + ipv6(44) + frag6(6, 1),
     pkt6(6, fragment=True)),
    ("non-first fragment, offset 8191", E6 + ipv6(44) + frag6(58, 8191, more=1) + b"\x87",
     pkt6(58, fragment=True)),
    ("non-first fragment of hop-by-hop: not walked", E6 + ipv6(44) + frag6(0, 9) + b"\xff",
     pkt6(0, fragment=True)),
    ("non-first fragment after routing", E6 + ipv6(43) + opt(44, 1) + frag6(17, 100),
     pkt6(17, fragment=True)),
    ("chain hop/routing/first frag/dest then udp",
     E6 + ipv6(0) + opt(43) + opt(44, 1) + frag6(60, 0, more=1) + opt(17) + udp(), UDP6),
    ("chain hop/routing then ah", E6 + ipv6(0) + opt(43) + opt(51, 1) + ah(6) + tcp(),
     pkt6(51)),
    # 4. the extension header limit
    ("6 extension headers then tcp", E6 + ipv6(60) + opt(60) * 5 + opt(6) + tcp(), TCP6),
    ("6 mixed headers then tcp", E6 + ipv6(0) + opt(43) + opt(60) + opt(44) + frag6(60, 0)
     + opt(60) + opt(6) + tcp(), TCP6),
    ("6 headers then ah", E6 + ipv6(60) + opt(60) * 5 + opt(51) + ah(6), pkt6(51)),
    ("7 extension headers", E6 + ipv6(60) + opt(60) * 6 + opt(6) + tcp(), R.EXT_LIMIT),
    ("6 headers, the 7th missing", E6 + ipv6(60) + opt(60) * 5 + opt(0), R.EXT_LIMIT),
    ("6 headers, the 6th a first fragment", E6 + ipv6(60) + opt(60) * 4 + opt(44)
     + frag6(43, 0) + opt(6) + tcp(), R.EXT_LIMIT),
    ("6 headers, the 6th a non-first fragment of options", E6 + ipv6(60) + opt(60) * 4
     + opt(44) + frag6(60, 3), pkt6(60, fragment=True)),
    ("7 fragment headers", E6 + ipv6(44) + frag6(44, 0) * 6 + frag6(6, 0) + tcp(), R.EXT_LIMIT),
    # 5. the header window: everything read must lie in the first 512 bytes
    ("tcp header ends at byte 506", E6 + ipv6(60) + opt(6, 53) + tcp(), TCP6),
    ("tcp header ends at byte 514", E6 + ipv6(60) + opt(6, 54) + tcp(), R.HDR_TOO_LONG),
    ("a 2048-byte extension header", E6 + ipv6(60) + opt(6, 255) + tcp(), R.HDR_TOO_LONG),
    ("a 2048-byte header cut short: truncation first", E6 + ipv6(60) + opt(6, 255)[:600],
     R.TRUNC_IPV6),
    # headers longer than the window itself: too long, whatever protocol follows
    ("a 520-byte header then esp", E6 + ipv6(60) + opt(50, 64) + bytes(16), R.HDR_TOO_LONG),
    ("a 520-byte header then ah", E6 + ipv6(43) + opt(51, 64) + ah(6), R.HDR_TOO_LONG),
    ("a 2048-byte header then no next header", E6 + ipv6(0) + opt(59, 255), R.HDR_TOO_LONG),
    ("a 512-byte header then gre", E6 + ipv6(60) + opt(47, 63), R.HDR_TOO_LONG),
]

# Devices without a link-layer header (tun, WireGuard): (name, frame, the skb's protocol at
# tc or 0 at XDP, expected).
L3_CASES = [
    ("xdp ipv4 tcp", ipv4(6) + tcp(), 0, TCP4),
    ("xdp ipv6 udp", ipv6(17) + udp(), 0, UDP6),
    ("xdp empty: not ip", b"", 0, NonIp()),
    ("xdp version 5: not ip", bytes([0x50]) + ipv4(6)[1:] + tcp(), 0, NonIp()),
    ("xdp version 0: not ip", bytes(40), 0, NonIp()),
    ("xdp ipv4 cut", ipv4(6)[:19], 0, R.TRUNC_IPV4),
    ("xdp one byte of ipv6", b"\x60", 0, R.TRUNC_IPV6),
    ("xdp ipv4 ihl 4", ipv4(6, ihl=4) + tcp(), 0, R.BAD_IPV4),
    ("xdp ipv4 tcp cut", ipv4(6) + tcp()[:10], 0, R.TRUNC_L4),
    ("xdp an ethernet frame: read as ipv4 garbage", E4 + ipv4(6) + tcp(), 0, NonIp()),
    ("tc ipv4 by protocol", ipv4(6) + tcp(), 0x0800, TCP4),
    ("tc ipv6 by protocol", ipv6(17) + udp(), 0x86DD, UDP6),
    ("tc protocol ipv4, version 6", ipv6(17) + udp(), 0x0800, R.BAD_IPV4),
    ("tc protocol ipv6, version 4", ipv4(6) + tcp(), 0x86DD, R.BAD_IPV6),
    ("tc protocol ipv6, empty", b"", 0x86DD, R.TRUNC_IPV6),
    ("tc protocol arp: not ip", bytes(28), 0x0806, NonIp()),
    ("tc no vlan parsing", struct.pack("!HH", 5, 0x0800) + ipv4(6), 0x8100, NonIp()),
]


@pytest.mark.parametrize(("data", "l3_type", "want"), [c[1:] for c in L3_CASES],
                         ids=[c[0] for c in L3_CASES])
def test_l3_link(data, l3_type, want):
    if isinstance(want, DropReason):
        want = Malformed(want)
    elif isinstance(want, Packet):
        want = Ip(want)
    assert parse_frame(data, LINK_L3, l3_type) == want


def test_l3_link_is_the_ethernet_parse_without_the_ethernet_header():
    rng = random.Random(11)
    for _ in range(300):
        data = frames.random_frame(rng)
        ethertype = 0x0800 if isinstance(scapy_view(data).src, ipaddress.IPv4Address) else 0x86DD
        for l3_type in (0, ethertype):
            assert parse_frame(frames.l3(data), LINK_L3, l3_type) == parse_frame(data)


def test_vlan_tags_taken_out_by_the_kernel_count():
    # tc sees the outer tag in the skb's metadata, XDP in the frame: the same limit
    one_tag = eth(0x8100, 0x0800) + ipv4(6) + tcp()
    two_tags = eth(0x8100, 0x8100, 0x0800) + ipv4(6) + tcp()
    assert parse_frame(one_tag, vlans=1) == Ip(TCP4)
    assert parse_frame(two_tags, vlans=1) == Malformed(R.VLAN_DEPTH)
    assert parse_frame(E4 + ipv4(6) + tcp(), vlans=1) == Ip(TCP4)


@pytest.mark.parametrize(("data", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hand_written(data, want):
    if isinstance(want, DropReason):
        want = Malformed(want)
    elif isinstance(want, Packet):
        want = Ip(want)
    assert parse_frame(data) == want


def test_every_parse_reason_is_covered():
    covered = {c[2] for c in CASES if isinstance(c[2], DropReason)}
    assert covered == PARSE_REASONS


def test_accepts_bytearray_and_memoryview():
    data = E4 + ipv4(6) + tcp()
    assert parse_frame(bytearray(data)) == parse_frame(memoryview(data)) == Ip(TCP4)


# ---- frame_verdict --------------------------------------------------------------------

IN, OUT = Direction.INGRESS, Direction.EGRESS
SSH = Rule(name="ssh", index=0, line=1, direction=IN, action=Action.DROP, proto=(6,),
           dport=(PortRange(22, 22),))
WEB = Rule(name="web", index=1, line=2, direction=IN, action=Action.ACCEPT, proto=(6,),
           dport=(PortRange(80, 80),))
POLICY = Policy(rules=(SSH, WEB), default_ingress=Action.DROP, default_egress=Action.ACCEPT)


def test_frame_verdict():
    v4 = E4 + ipv4(6)
    assert frame_verdict(POLICY, v4 + tcp(dport=22), IN) == FrameVerdict(
        Action.DROP, SSH, "rule", R.POLICY_RULE)
    assert frame_verdict(POLICY, v4 + tcp(dport=80), IN) == FrameVerdict(
        Action.ACCEPT, WEB, "rule", R.NONE)
    assert frame_verdict(POLICY, v4 + tcp(dport=81), IN) == FrameVerdict(
        Action.DROP, None, "default", R.POLICY_DEFAULT)
    assert frame_verdict(POLICY, v4 + tcp(dport=22), OUT) == FrameVerdict(
        Action.ACCEPT, None, "default", R.NONE)
    # a non-first fragment carries no ports: the port rules cannot match it
    assert frame_verdict(POLICY, E4 + ipv4(6, frag=3), IN) == FrameVerdict(
        Action.DROP, None, "default", R.POLICY_DEFAULT)
    ns = E6 + ipv6(58, hlim=255) + icmp(135, 0)
    assert frame_verdict(POLICY, ns, IN) == FrameVerdict(Action.ACCEPT, None, "ndp", R.NONE)
    # neighbour discovery that was forwarded (hop limit below 255) meets the rules
    assert frame_verdict(POLICY, E6 + ipv6(58) + icmp(135, 0), IN) == FrameVerdict(
        Action.DROP, None, "default", R.POLICY_DEFAULT)
    assert frame_verdict(POLICY, eth(0x0806) + bytes(28), IN) == FrameVerdict(
        Action.ACCEPT, None, "non-ip", R.NONE)
    assert frame_verdict(POLICY, E4 + ipv4(6) + tcp()[:5], OUT) == FrameVerdict(
        Action.DROP, None, "malformed", R.TRUNC_L4)
    assert frame_verdict(POLICY, E6 + ipv6(60) + opt(60) * 6, OUT) == FrameVerdict(
        Action.DROP, None, "malformed", R.EXT_LIMIT)


# ---- scapy: the independent dissection -----------------------------------------------

# AH is not among them: the parser takes it as the protocol, in IPv6 as in IPv4.
V6_EXT_LAYERS = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrSegmentRouting,
                 IPv6ExtHdrDestOpt, IPv6ExtHdrFragment)


def _has_code(layer) -> bool:
    """Whether scapy's class for the ICMP message names byte 1 "code" (MLDv2 reports call it
    "res": those are left out of the comparison)."""
    return any(f.name == "code" for f in layer.fields_desc)


def scapy_view(data: bytes) -> Packet | None:
    """The Packet scapy's dissection of `data` describes (None: not IP)."""
    layer = Ether(data).payload
    while isinstance(layer, Dot1Q):  # Dot1AD is a Dot1Q
        layer = layer.payload
    if isinstance(layer, IP):
        proto, fragment, upper, own_icmp = layer.proto, layer.frag != 0, layer.payload, ICMP
        ttl = layer.ttl
    elif isinstance(layer, IPv6):
        proto, fragment, upper, own_icmp = layer.nh, False, layer.payload, _ICMPv6
        ttl = layer.hlim
        while isinstance(upper, V6_EXT_LAYERS):
            proto = upper.nh
            if isinstance(upper, IPv6ExtHdrFragment) and upper.offset != 0:
                fragment = True
                break
            upper = upper.payload
    else:
        return None
    fields = {}
    if not fragment and isinstance(upper, TCP | UDP):
        fields = dict(sport=upper.sport, dport=upper.dport)
    elif not fragment and isinstance(upper, own_icmp) and _has_code(upper):
        fields = dict(icmp_type=upper.type, icmp_code=upper.code)
    return Packet(ipaddress.ip_address(layer.src), ipaddress.ip_address(layer.dst), proto,
                  fragment=fragment, ttl=ttl, **fields)


def assert_not_vacuous(want: Packet) -> None:
    """Scapy dissected the transport header wherever the parser must read one."""
    if not want.fragment and want.proto in (6, 17):
        assert want.sport is not None and want.dport is not None
    if not want.fragment and want.proto == {4: 1, 6: 58}[want.family]:
        assert want.icmp_type is not None and want.icmp_code is not None


# ---- well-formed frames built with scapy ---------------------------------------------

# ICMPv6 types scapy dissects into a class with type and code (others stay Raw)
SCAPY_ICMP6_TYPES = [1, 2, 3, 4, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 141, 142,
                     144, 145, 146, 147, 155]
OTHER = {4: [0, 2, 4, 41, 43, 44, 47, 50, 51, 58, 60, 132, 255],
         6: [1, 4, 41, 47, 50, 51, 59, 103, 132, 253, 255]}
EXT_NUMBER = {"hop": 0, "routing": 43, "frag": 44, "dest": 60}
payloads = st.binary(max_size=24)


def addresses(family: int):
    bits = 32 if family == 4 else 128
    edges = st.sampled_from([0, 1, 2**bits - 1, 2**(bits - 1), 2**(bits - 1) - 1])
    cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    return (st.integers(0, 2**bits - 1) | edges).map(lambda n: str(cls(n)))


@st.composite
def upper_layers(draw, family: int):
    """(proto, transport layer with payload, bytes of it the parser needs)"""
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    ports = st.integers(0, 65535)
    if kind == "tcp":
        options = draw(st.sampled_from([[], [("MSS", 1460)], [("NOP", None), ("WScale", 3)]]))
        layer = TCP(sport=draw(ports), dport=draw(ports), flags=draw(st.integers(0, 255)),
                    options=options) / Raw(draw(payloads))
        return 6, layer, 20
    if kind == "udp":
        return 17, UDP(sport=draw(ports), dport=draw(ports)) / Raw(draw(payloads)), 8
    # the parser needs 4 bytes of an ICMP header, 8 of an echo request or reply
    if kind == "icmp" and family == 4:
        icmp_type = draw(st.integers(0, 255))
        layer = ICMP(type=icmp_type, code=draw(st.integers(0, 255)))
        return 1, layer / Raw(draw(payloads)), 8 if icmp_type in (0, 8) else 4
    if kind == "icmp":
        icmp_type = draw(st.sampled_from(SCAPY_ICMP6_TYPES))
        layer = ICMPv6Unknown(type=icmp_type, code=draw(st.integers(0, 255)),
                              msgbody=draw(st.binary(min_size=40, max_size=48)))
        return 58, layer, 8 if icmp_type in (128, 129) else 4
    return draw(st.sampled_from(OTHER[family])), Raw(draw(payloads)), 0


@st.composite
def ipv4_part(draw):
    proto, upper, need = draw(upper_layers(4))
    src, dst = draw(addresses(4)), draw(addresses(4))
    kind = draw(st.sampled_from(["whole", "first", "non-first"]))
    flags = draw(st.sampled_from([0, 2] if kind == "whole" else [1, 3]))  # 1 MF, 2 DF
    frag = 0
    if kind == "non-first":
        flags, frag = draw(st.sampled_from([0, 1])), draw(st.integers(1, 0x1FFF))
        upper, need = Raw(draw(payloads)), 0
    options = [IPOption_NOP()] * draw(st.integers(0, 12))
    if options and draw(st.booleans()):
        options.append(IPOption_EOL())
    header = IP(src=src, dst=dst, proto=proto, flags=flags, frag=frag,
                id=draw(st.integers(0, 65535)), options=options, ttl=draw(st.integers(0, 255)))
    segments = [(len(bytes(header)), R.TRUNC_IPV4)]
    return header / upper, segments, need


def _ext_header(draw, kind: str, nh: int):
    if kind in ("hop", "dest"):
        cls = IPv6ExtHdrHopByHop if kind == "hop" else IPv6ExtHdrDestOpt
        return cls(nh=nh, options=[PadN(optdata=bytes(draw(st.integers(0, 30))))])
    if kind == "routing":
        hops = draw(st.lists(addresses(6), max_size=3))
        return IPv6ExtHdrRouting(nh=nh, addresses=hops, segleft=0)
    return IPv6ExtHdrFragment(nh=nh, offset=0, m=draw(st.integers(0, 1)))


@st.composite
def ipv6_part(draw):
    proto, upper, need = draw(upper_layers(6))
    kinds = draw(st.lists(st.sampled_from(sorted(EXT_NUMBER)), max_size=6))
    nonfirst = draw(st.booleans())
    if nonfirst:  # the chain ends in a non-first fragment header; nothing after is parsed
        kinds = [*kinds[:draw(st.integers(0, 5))], "frag"]
        proto = draw(st.sampled_from([proto, 0, 43, 44, 51, 60]))
        upper, need = Raw(draw(payloads)), 0
    numbers = [EXT_NUMBER[k] for k in kinds]
    nexts = [*numbers, proto][1:]
    headers = [_ext_header(draw, k, nh) for k, nh in zip(kinds, nexts, strict=True)]
    if nonfirst:
        headers[-1] = IPv6ExtHdrFragment(nh=proto, offset=draw(st.integers(1, 8191)),
                                         m=draw(st.integers(0, 1)))
    pkt = IPv6(src=draw(addresses(6)), dst=draw(addresses(6)), nh=[*numbers, proto][0],
               hlim=draw(st.sampled_from([0, 1, 64, 254, 255])))
    segments = [(40, R.TRUNC_IPV6)]
    for header in headers:
        segments.append((len(bytes(header)), R.TRUNC_IPV6))
        pkt = pkt / header
    return pkt / upper, segments, need


@st.composite
def well_formed(draw):
    """(frame, [(header length, reason when the frame ends inside it), ...]): the headers
    the parser reads, in order, ending with the part of the transport header it needs."""
    family = draw(st.sampled_from([4, 6]))
    tpids = draw(st.lists(st.sampled_from([0x8100, 0x88A8]), max_size=2))
    types = [*tpids, 0x0800 if family == 4 else 0x86DD]
    # explicit MACs: without a dst, scapy would resolve one (ARP/ND on the network)
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=types[0])
    segments = [(14, R.TRUNC_L2)]
    for tpid, inner in zip(tpids, types[1:], strict=True):
        pkt = pkt / (Dot1AD if tpid == 0x88A8 else Dot1Q)(vlan=draw(st.integers(0, 4095)),
                                                          type=inner)
        segments.append((4, R.TRUNC_L2))
    l3, l3_segments, need = draw(ipv4_part() if family == 4 else ipv6_part())
    segments += [*l3_segments, (need, R.TRUNC_L4)]
    return bytes(pkt / l3), segments


def expected_for_cut(segments, n: int) -> DropReason | None:
    """The reason for a frame cut to n bytes: that of the header the cut falls in (None:
    every header the parser reads is whole)."""
    end = 0
    for length, reason in segments:
        end += length
        if n < end:
            return reason
    return None


@settings(max_examples=400, **SETTINGS)
@given(well_formed())
def test_agrees_with_scapy(case):
    data, _ = case
    want = scapy_view(data)
    assert_not_vacuous(want)
    assert parse_frame(data) == Ip(want)


@settings(max_examples=300, **SETTINGS)
@given(well_formed())
def test_every_truncation(case):
    data, segments = case
    whole = parse_frame(data)
    assert isinstance(whole, Ip)
    assert expected_for_cut(segments, len(data)) is None
    for n in range(len(data)):
        want = expected_for_cut(segments, n)
        got = parse_frame(data[:n])
        assert got == (whole if want is None else Malformed(want)), f"cut at {n}"


# ---- arbitrary bytes -----------------------------------------------------------------

PREFIXES = [b"", E4, E6, eth(0x8100), eth(0x8100, 0x0800), eth(0x88A8, 0x8100, 0x86DD),
            E4 + ipv4(6)[:1], E4 + ipv4(6), E4 + ipv4(17, frag=0x2000), E6 + ipv6(0),
            E6 + ipv6(51), E6 + ipv6(44), E6 + ipv6(60) + opt(60) * 4]


def check_consistent(got) -> None:
    assert isinstance(got, NonIp | Malformed | Ip)
    if isinstance(got, Malformed):
        assert got.reason in PARSE_REASONS
    if isinstance(got, Ip):
        p = got.packet
        assert p.src.version == p.dst.version
        has_ports = not p.fragment and p.proto in (6, 17)
        assert (p.sport is not None) == has_ports == (p.dport is not None)
        has_icmp = not p.fragment and p.proto == {4: 1, 6: 58}[p.family]
        assert (p.icmp_type is not None) == has_icmp == (p.icmp_code is not None)
        if p.family == 6 and not p.fragment:
            assert p.proto not in IPV6_EXT_HDRS


@settings(max_examples=500, **SETTINGS)
@given(st.sampled_from(PREFIXES), st.binary(max_size=120))
def test_random_bytes(prefix, tail):
    data = prefix + tail
    got = parse_frame(data)
    check_consistent(got)
    if isinstance(got, Ip | NonIp):  # bytes past what the parser reads never matter
        assert parse_frame(data + b"\xff" * 9) == got


@settings(max_examples=300, **SETTINGS)
@given(st.binary(max_size=200))
def test_random_bytes_unprefixed(data):
    check_consistent(parse_frame(data))


# ---- tests/frames.py -----------------------------------------------------------------

def _tags(data: bytes) -> int:
    count, off = 0, 12
    while data[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
        count, off = count + 1, off + 4
    return count


def test_random_frame_is_well_formed_and_varied():
    rng = random.Random(7)
    seen = set()
    for _ in range(300):
        data = frames.random_frame(rng)
        assert len(data) >= frames.MIN_TEST_RUN_LEN
        want, got = scapy_view(data), parse_frame(data)
        assert isinstance(got, Ip)
        if want.proto == 58 and want.family == 6 and not want.fragment and want.icmp_type is None:
            # an ICMPv6 type scapy does not dissect (or has no code field): compare the rest
            got = Ip(dataclasses.replace(got.packet, icmp_type=None, icmp_code=None))
        assert got == Ip(want)
        exts = sum(isinstance(x, V6_EXT_LAYERS) for x in Ether(data).iterpayloads())
        seen |= {("tags", _tags(data)), ("family", want.family), ("proto", want.proto),
                 ("fragment", want.family, want.fragment), ("ext", min(exts, 2)),
                 ("options", want.family == 4 and data[14 + 4 * _tags(data)] != 0x45)}
    wanted = {("tags", 0), ("tags", 1), ("tags", 2), ("family", 4), ("family", 6),
              ("proto", 1), ("proto", 6), ("proto", 17), ("proto", 58),
              ("fragment", 4, True), ("fragment", 6, True), ("ext", 0), ("ext", 1), ("ext", 2),
              ("options", True)}
    assert wanted <= seen
    assert any(k == "proto" and p not in (1, 6, 17, 58) for k, p, *_ in seen)


def test_random_frame_uses_the_pools():
    rng = random.Random(8)
    pool = ["10.9.8.7", "2001:db8::77"]
    hits = ports = 0
    for _ in range(200):
        got = parse_frame(frames.random_frame(rng, addresses=pool, ports=[4242]))
        assert isinstance(got, Ip)
        hits += str(got.packet.src) in pool or str(got.packet.dst) in pool
        ports += 4242 in (got.packet.sport, got.packet.dport)
    assert hits > 80 and ports > 20


MALFORMED = {
    "vlan-tag-cut": R.TRUNC_L2, "three-vlan-tags": R.VLAN_DEPTH,
    "three-vlan-tags-qinq": R.VLAN_DEPTH, "third-tag-no-bytes": R.VLAN_DEPTH,
    **{f"ipv4-ihl{i}": R.BAD_IPV4 for i in range(5)}, "ipv4-ihl15-short": R.TRUNC_IPV4,
    "ipv4-ihl6-no-options": R.TRUNC_IPV4, "ipv4-version0": R.BAD_IPV4,
    "ipv4-version6": R.BAD_IPV4, "ipv4-version15": R.BAD_IPV4,
    "ipv4-ethertype-ipv6-packet": R.BAD_IPV4, "ipv4-tcp-19": R.TRUNC_L4,
    "ipv4-udp-7": R.TRUNC_L4, "ipv4-icmp-3": R.TRUNC_L4,
    "ipv4-tiny-first-fragment-tcp": R.TRUNC_L4, "ipv4-tiny-first-fragment-udp": R.TRUNC_L4,
    "vlan-ipv4-tcp-12": R.TRUNC_L4, "ipv6-version0": R.BAD_IPV6, "ipv6-version4": R.BAD_IPV6,
    "ipv6-version7": R.BAD_IPV6, "ipv6-ethertype-ipv4-packet": R.BAD_IPV6,
    "ipv6-39": R.TRUNC_IPV6, "ipv6-tcp-19": R.TRUNC_L4, "ipv6-icmpv6-3": R.TRUNC_L4,
    "ipv6-ext-7-bytes": R.TRUNC_IPV6, "ipv6-hbh-len-past-end": R.TRUNC_IPV6,
    "ipv6-routing-len-past-end": R.TRUNC_IPV6, "ipv6-fragment-header-cut": R.TRUNC_IPV6,
    "ipv6-tiny-first-fragment": R.TRUNC_L4, "ipv6-seven-ext-headers": R.EXT_LIMIT,
    "ipv6-seventh-ext-header-missing": R.EXT_LIMIT, "ipv6-seven-fragment-headers": R.EXT_LIMIT,
    "ipv6-six-ext-then-tcp-cut": R.TRUNC_L4, "empty": R.TRUNC_L2, "ethernet-13": R.TRUNC_L2,
    "ipv6-dest-opts-2048-bytes": R.HDR_TOO_LONG, "ipv6-tcp-past-window": R.HDR_TOO_LONG,
    "ipv6-520-byte-ext-then-esp": R.HDR_TOO_LONG,
    "ipv6-2048-byte-ext-then-no-next": R.HDR_TOO_LONG,
    "ipv6-1024-byte-routing-then-ah": R.HDR_TOO_LONG,
}
WELL_FORMED = {"ipv6-tcp-inside-window", "ipv6-ah-is-the-protocol-len255",
               "ipv6-ah-is-the-protocol-tcp-cut"}


def test_malformed_frames():
    named, cut_bases, cut_outcomes = {}, set(), set()
    for name, data in frames.malformed_frames():
        assert name not in named, f"duplicate name {name}"
        named[name] = data
        if "/cut" in name:
            base, _, n = name.partition("/cut")
            assert len(data) == int(n)
            cut_bases.add(base)
            got = parse_frame(data)
            check_consistent(got)
            cut_outcomes.add(got.reason if isinstance(got, Malformed) else type(got))
    assert {n: parse_frame(d) for n, d in named.items()
            if "/cut" not in n and n not in WELL_FORMED} == {
        n: Malformed(r) for n, r in MALFORMED.items()}
    assert all(isinstance(parse_frame(named[n]), Ip) for n in WELL_FORMED)
    assert len(cut_bases) >= 10
    assert {R.TRUNC_L2, R.TRUNC_IPV4, R.TRUNC_IPV6, R.TRUNC_L4, Ip} <= cut_outcomes


def test_mutate():
    rng = random.Random(9)
    shorter = longer = 0
    for _ in range(500):
        data = frames.random_frame(rng)
        out = frames.mutate(rng, data)
        assert isinstance(out, bytes) and out != data
        shorter += len(out) < len(data)
        longer += len(out) > len(data)
        check_consistent(parse_frame(out))
    assert shorter > 50 and longer > 50


def test_branch_frames_take_every_branch():
    outcomes: dict[str, set] = {}
    names = set()
    for name, data in frames.branch_frames():
        assert name not in names
        names.add(name)
        got = parse_frame(data)
        check_consistent(got)
        kind = re.match("[a-z]+", name).group(0)
        outcomes.setdefault(kind, set()).add(got.reason if isinstance(got, Malformed)
                                             else type(got))
    for kind in ("hop", "routing", "dest"):
        assert outcomes[kind] == {Ip, R.TRUNC_IPV6, R.TRUNC_L4, R.HDR_TOO_LONG}, kind
    assert {Ip, R.TRUNC_IPV6, R.TRUNC_L4} <= outcomes["frag"]
    # every header longer than the window is too long, whatever follows it
    for name, data in frames.branch_frames():
        match = re.match(r"(hop|routing|dest)(\d+)-", name)
        if match and int(match.group(2)) >= 64 and "cut-inside" not in name \
                and "nothing-after" not in name:
            assert parse_frame(data) == Malformed(R.HDR_TOO_LONG), name
