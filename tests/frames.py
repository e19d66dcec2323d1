"""Frame generators for differential tests of the datapath's parser (`import frames`).

The BPF tier runs these frames through the real XDP/tc programs (BPF_PROG_TEST_RUN) and
compares what they do with `netctl.policy.frame.frame_verdict`, the reference:

* `random_frame(rng, addresses, ports)`: a well-formed IPv4/IPv6 frame (0-2 VLAN tags, TCP,
  UDP, ICMP, ICMPv6 and other protocols, IPv4 options, IPv6 extension chains of up to
  MAX_EXT_HDRS headers, first and non-first fragments).  Addresses and ports come from the
  caller's pools about half the time (pass a policy's prefix edges and port bounds).
* `malformed_frames()`: named cases, mostly malformed: every well-formed base frame cut
  at every offset (cuts past the headers the parser reads are well-formed on purpose: no
  length field beyond the spec is checked), bad IHLs, version mismatches, too many VLAN tags
  or extension headers, tiny first fragments, lengths running past the end...
* `branch_frames()`: every branch of the IPv6 extension-header walk: each header type
  (hop-by-hop, routing, destination options, first and non-first fragment) at each length
  class (short, around the end of the header window, past it, the largest) followed by each
  kind of next protocol (transport, ICMP, AH, ESP, no-next-header, another extension
  header), whole and cut short.
* `l3(frame)`: a frame without its Ethernet header and VLAN tags, as a device without a
  link-layer header (tun, WireGuard) carries it.
* `mutate(rng, frame)`: a changed copy (bit flips, inserted/deleted bytes, cuts, poked
  length, version and next-header fields, extra VLAN tags).

BPF_PROG_TEST_RUN refuses frames shorter than 14 bytes (ETH_HLEN) with EINVAL, and ones
longer than about a page minus head- and tailroom.  `random_frame` never yields fewer than
14 bytes; `malformed_frames` (cuts at 0-13) and `mutate` can: callers filter with
`len(frame) >= MIN_TEST_RUN_LEN` (or compare those through another path).  All frames stay
under 1,000 bytes.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterator

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6Unknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from netctl.abi import MAX_EXT_HDRS

MIN_TEST_RUN_LEN = 14  # ETH_HLEN: BPF_PROG_TEST_RUN returns EINVAL below it

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
TPID_8021Q, TPID_8021AD = 0x8100, 0x88A8
EXT_NUMBERS = {"hop": 0, "routing": 43, "frag": 44, "dest": 60}

PORT_EDGES = [0, 1, 22, 53, 80, 443, 1023, 1024, 8080, 65534, 65535]
ICMP4_TYPES = [0, 3, 5, 8, 11, 13, 255]
ICMP6_TYPES = [1, 2, 3, 4, 128, 129, 133, 134, 135, 136, 137, 143, 255]
# Not TCP, UDP or own-family ICMP; includes the other family's ICMP number, AH (the protocol
# in both families, never walked) and in IPv4 the numbers of IPv6 extension headers (walked
# only in IPv6).
OTHER_PROTOS = {4: [0, 2, 4, 41, 43, 47, 50, 51, 58, 60, 132, 255],
                6: [1, 4, 41, 47, 50, 51, 51, 59, 103, 132, 135, 253, 255]}
SPECIAL_ADDRESSES = {4: ["0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1"],
                     6: ["::", "::1", "fe80::1", "ff02::1",
                         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]}


# ---- well-formed frames --------------------------------------------------------------

def _address(rng: random.Random, family: int, pool: list[str]) -> str:
    own = [a for a in pool if ipaddress.ip_address(a).version == family]
    if own and rng.random() < 0.5:
        return rng.choice(own)
    if rng.random() < 0.1:
        return rng.choice(SPECIAL_ADDRESSES[family])
    if family == 4:
        return str(ipaddress.IPv4Address(rng.getrandbits(32)))
    return str(ipaddress.IPv6Address(rng.getrandbits(128)))


def _port(rng: random.Random, pool: list[int]) -> int:
    if pool and rng.random() < 0.5:
        return rng.choice(pool)
    return rng.choice(PORT_EDGES) if rng.random() < 0.3 else rng.randrange(65536)


def _junk(rng: random.Random, lo: int = 0, hi: int = 32) -> bytes:
    return rng.randbytes(rng.randint(lo, hi))


def _mac(rng: random.Random) -> str:
    return ":".join(f"{b:02x}" for b in rng.randbytes(6))


def _l2(rng: random.Random, ethertype: int, tags: int) -> Packet:
    """Ether plus `tags` VLAN tags, ending in `ethertype`."""
    tpids = [rng.choice([TPID_8021Q, TPID_8021Q, TPID_8021AD]) for _ in range(tags)]
    if tags == 2 and rng.random() < 0.6:
        tpids = [TPID_8021AD, TPID_8021Q]  # the usual QinQ
    types = [*tpids, ethertype]
    pkt = Ether(src=_mac(rng), dst=_mac(rng), type=types[0])
    for tpid, inner in zip(tpids, types[1:], strict=True):
        cls = Dot1AD if tpid == TPID_8021AD else Dot1Q
        pkt = pkt / cls(vlan=rng.randrange(4096), prio=rng.randrange(8), type=inner)
    return pkt


def _upper(rng: random.Random, family: int, kind: str, ports: list[int]) -> tuple[int, Packet]:
    """(protocol number, transport layer with payload)."""
    if kind == "tcp":
        options = rng.choice([[], [], [("MSS", 1460)], [("NOP", None), ("WScale", 7)]])
        return 6, TCP(sport=_port(rng, ports), dport=_port(rng, ports),
                      flags=rng.randrange(256), options=options) / Raw(_junk(rng))
    if kind == "udp":
        return 17, UDP(sport=_port(rng, ports), dport=_port(rng, ports)) / Raw(_junk(rng))
    if kind == "icmp" and family == 4:
        icmp_type = rng.choice(ICMP4_TYPES) if rng.random() < 0.7 else rng.randrange(256)
        return 1, ICMP(type=icmp_type, code=rng.randrange(4)) / Raw(_junk(rng))
    if kind == "icmp":
        icmp_type = rng.choice(ICMP6_TYPES) if rng.random() < 0.7 else rng.randrange(256)
        return 58, ICMPv6Unknown(type=icmp_type, code=rng.randrange(4),
                                 msgbody=_junk(rng, 4, 40))
    proto = rng.choice(OTHER_PROTOS[family])
    if proto == 51:  # AH, as IPsec sends it: the transport header follows it
        icv = rng.randbytes(rng.choice([4, 12, 0, 8]))
        inner = TCP(sport=_port(rng, ports), dport=_port(rng, ports))
        return 51, AH(nh=6, payloadlen=len(icv) // 4 + 1, spi=rng.getrandbits(32),
                      icv=icv) / inner / Raw(_junk(rng))
    return proto, Raw(_junk(rng))


def _ipv4(rng: random.Random, src: str, dst: str, upper_kind: str,
          ports: list[int]) -> Packet:
    proto, upper = _upper(rng, 4, upper_kind, ports)
    flags, frag = rng.choice([0, 0, 2, 1]), 0  # none, DF, MF (a first fragment)
    if rng.random() < 0.15:  # a non-first fragment: no transport header, any payload
        flags, frag = rng.choice([0, 1]), rng.choice([1, 2, 185, 0x1FFF, rng.randrange(1, 8192)])
        upper = Raw(_junk(rng, 0, 40))
    options = []
    if rng.random() < 0.25:
        options = [IPOption_NOP()] * rng.randint(1, 8)
        if rng.random() < 0.5:
            options.append(IPOption_RR(routers=[_address(rng, 4, [])] * rng.randint(0, 4)))
    ip = IP(src=src, dst=dst, proto=proto, flags=flags, frag=frag, ttl=rng.randint(1, 255),
            id=rng.randrange(65536), tos=rng.randrange(256), options=options)
    return ip / upper


def _ext(rng: random.Random, kind: str, nh: int) -> Packet:
    if kind == "hop":
        return IPv6ExtHdrHopByHop(nh=nh, options=[PadN(optdata=bytes(rng.randint(0, 20)))])
    if kind == "dest":
        return IPv6ExtHdrDestOpt(nh=nh, options=[PadN(optdata=bytes(rng.randint(0, 20)))])
    if kind == "routing":
        hops = [_address(rng, 6, []) for _ in range(rng.randint(0, 3))]
        return IPv6ExtHdrRouting(nh=nh, addresses=hops, segleft=rng.randint(0, len(hops)))
    # a first fragment here; non-first ones are built by the caller
    return IPv6ExtHdrFragment(nh=nh, offset=0, m=rng.randrange(2), id=rng.getrandbits(32))


def _ipv6(rng: random.Random, src: str, dst: str, upper_kind: str,
          ports: list[int]) -> Packet:
    proto, upper = _upper(rng, 6, upper_kind, ports)
    count = 0 if rng.random() < 0.45 else rng.randint(1, MAX_EXT_HDRS)
    kinds = [rng.choice(["hop", "routing", "dest", "dest", "frag"]) for _ in range(count)]
    nonfirst = None
    if rng.random() < 0.15:  # the chain ends in a non-first fragment header
        nonfirst = rng.randrange(count) if count else 0
        kinds = [*kinds[:nonfirst], "frag"]
    numbers = [EXT_NUMBERS[k] for k in kinds]
    if nonfirst is not None:  # what follows the fragment header is never parsed
        after = rng.choice([proto, proto, 6, 17, 58, 0, 43, 44, 60, 51])
        headers = [_ext(rng, k, nh) for k, nh in zip(kinds[:-1], numbers[1:], strict=True)]
        headers.append(IPv6ExtHdrFragment(nh=after, offset=rng.randrange(1, 8192),
                                          m=rng.randrange(2), id=rng.getrandbits(32)))
        upper = Raw(_junk(rng, 0, 40))
    else:
        nexts = [*numbers, proto][1:]
        headers = [_ext(rng, k, nh) for k, nh in zip(kinds, nexts, strict=True)]
    pkt = IPv6(src=src, dst=dst, nh=numbers[0] if numbers else proto,
               tc=rng.randrange(256), fl=rng.getrandbits(20), hlim=rng.randint(1, 255))
    for header in headers:
        pkt = pkt / header
    return pkt / upper


def random_frame(rng: random.Random, addresses: list[str] | None = None,
                 ports: list[int] | None = None) -> bytes:
    """A well-formed IPv4 or IPv6 frame (at least 14 bytes, parses as `Ip`)."""
    family = rng.choice([4, 6])
    tags = rng.choices([0, 1, 2], weights=[5, 3, 2])[0]
    pool = addresses or []
    src, dst = _address(rng, family, pool), _address(rng, family, pool)
    kind = rng.choices(["tcp", "udp", "icmp", "other"], weights=[3, 3, 2, 2])[0]
    build = _ipv4 if family == 4 else _ipv6
    l3 = build(rng, src, dst, kind, list(ports or []))
    return bytes(_l2(rng, ETH_P_IP if family == 4 else ETH_P_IPV6, tags) / l3)


# ---- malformed frames ----------------------------------------------------------------

def _eth(*types: int) -> bytes:
    """An Ethernet header with len(types) - 1 VLAN tags; the last type is the payload's."""
    out = bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", types[0])
    for inner in types[1:]:
        out += struct.pack("!HH", 0x0005, inner)
    return out


def _base_frames() -> list[tuple[str, bytes]]:
    a4, b4 = "192.0.2.1", "198.51.100.2"
    a6, b6 = "2001:db8::1", "2001:db8:ffff::2"
    e4 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    icmp6 = ICMPv6Unknown(type=135, code=0, msgbody=bytes(20))
    frames = {
        "ipv4-tcp": e4 / IP(src=a4, dst=b4) / TCP(sport=40000, dport=22) / Raw(b"hello"),
        "ipv4-udp-options": e4 / IP(src=a4, dst=b4, options=[IPOption_NOP()] * 6)
        / UDP(sport=53, dport=5353) / Raw(b"x"),
        "ipv4-icmp": e4 / IP(src=a4, dst=b4) / ICMP(type=8, code=0),
        "ipv4-first-fragment": e4 / IP(src=a4, dst=b4, flags=1, frag=0) / UDP(sport=1, dport=2),
        "ipv4-nonfirst-fragment": e4 / IP(src=a4, dst=b4, proto=6, frag=185) / Raw(b"abcd"),
        "ipv4-gre": e4 / IP(src=a4, dst=b4, proto=47) / Raw(b"\0\0\x08\0"),
        "vlan-ipv4-tcp": e4 / Dot1Q(vlan=7) / IP(src=a4, dst=b4) / TCP(sport=1, dport=443),
        "qinq-ipv6-udp": e4 / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IPv6(src=a6, dst=b6)
        / UDP(sport=546, dport=547),
        "ipv6-tcp": e4 / IPv6(src=a6, dst=b6) / TCP(sport=22, dport=50000),
        "ipv6-icmpv6-ns": e4 / IPv6(src=a6, dst=b6, nh=58) / icmp6,
        "ipv6-ext-chain-udp": e4 / IPv6(src=a6, dst=b6, nh=0)
        / IPv6ExtHdrHopByHop(nh=43) / IPv6ExtHdrRouting(nh=60, addresses=[b6])
        / IPv6ExtHdrDestOpt(nh=17) / UDP(sport=7, dport=9),
        "ipv6-ah-tcp": e4 / IPv6(src=a6, dst=b6, nh=51) / AH(nh=6, payloadlen=2, icv=bytes(4))
        / TCP(sport=22, dport=2222),
        "ipv4-ah-udp": e4 / IP(src=a4, dst=b4, proto=51) / AH(nh=17, payloadlen=2, icv=bytes(4))
        / UDP(sport=500, dport=500),
        "ipv6-first-fragment": e4 / IPv6(src=a6, dst=b6, nh=44)
        / IPv6ExtHdrFragment(nh=6, offset=0, m=1) / TCP(sport=3, dport=4),
        "ipv6-nonfirst-fragment": e4 / IPv6(src=a6, dst=b6, nh=44)
        / IPv6ExtHdrFragment(nh=6, offset=100) / Raw(b"0123"),
        "ipv6-esp": e4 / IPv6(src=a6, dst=b6, nh=50) / Raw(bytes(8)),
    }
    return [(name, bytes(pkt)) for name, pkt in frames.items()]


def _ipv4_raw(ihl: int = 5, version: int = 4, proto: int = 6, frag: int = 0,
              tail: bytes = b"") -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, 20 + len(tail), 1, frag, 64,
                         proto, 0, bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]))
    return header + tail


def _ipv6_raw(nh: int, tail: bytes = b"", version: int = 6) -> bytes:
    src = ipaddress.IPv6Address("2001:db8::1").packed
    dst = ipaddress.IPv6Address("2001:db8::2").packed
    return struct.pack("!IHBB", version << 28, len(tail), nh, 64) + src + dst + tail


def _opt_hdr(nh: int, units: int = 0) -> bytes:
    """A hop-by-hop/destination/routing-shaped header of (units + 1) * 8 bytes."""
    return bytes([nh, units]) + bytes(6 + 8 * units)


TCP_HDR = struct.pack("!HHIIBBHHH", 1234, 80, 0, 0, 0x50, 0x02, 8192, 0, 0)
UDP_HDR = struct.pack("!HHHH", 1234, 53, 8, 0)


def malformed_frames() -> Iterator[tuple[str, bytes]]:
    """Named cases (unique names).  Every case except those named ``BASE/cutN``,
    ``ipv6-tcp-inside-window`` and ``ipv6-ah-is-the-protocol-*`` is malformed under the
    parser's spec; cuts are whatever the spec makes of them."""
    for name, frame in _base_frames():
        for n in range(len(frame)):
            yield f"{name}/cut{n}", frame[:n]
    e4, e6 = _eth(ETH_P_IP), _eth(ETH_P_IPV6)
    # Ethernet and VLAN
    yield "vlan-tag-cut", _eth(TPID_8021Q)[:14] + b"\x00\x05"
    yield "three-vlan-tags", _eth(TPID_8021Q, TPID_8021Q, TPID_8021Q, ETH_P_IP) + _ipv4_raw(
        tail=TCP_HDR)
    yield "three-vlan-tags-qinq", _eth(TPID_8021AD, TPID_8021Q, TPID_8021Q, ETH_P_IPV6) + \
        _ipv6_raw(6, TCP_HDR)
    yield "third-tag-no-bytes", _eth(TPID_8021AD, TPID_8021Q, TPID_8021Q)
    # IPv4
    for ihl in range(5):
        yield f"ipv4-ihl{ihl}", e4 + _ipv4_raw(ihl=ihl, tail=TCP_HDR)
    yield "ipv4-ihl15-short", e4 + _ipv4_raw(ihl=15, tail=TCP_HDR)
    yield "ipv4-ihl6-no-options", e4 + _ipv4_raw(ihl=6)
    for version in (0, 6, 15):
        yield f"ipv4-version{version}", e4 + _ipv4_raw(version=version, tail=TCP_HDR)
    yield "ipv4-ethertype-ipv6-packet", e4 + _ipv6_raw(6, TCP_HDR)
    yield "ipv4-tcp-19", e4 + _ipv4_raw(tail=TCP_HDR[:19])
    yield "ipv4-udp-7", e4 + _ipv4_raw(proto=17, tail=UDP_HDR[:7])
    yield "ipv4-icmp-3", e4 + _ipv4_raw(proto=1, tail=b"\x08\x00\x00")
    yield "ipv4-tiny-first-fragment-tcp", e4 + _ipv4_raw(frag=0x2000, tail=TCP_HDR[:8])
    yield "ipv4-tiny-first-fragment-udp", e4 + _ipv4_raw(proto=17, frag=0x2000,
                                                         tail=UDP_HDR[:4])
    yield "vlan-ipv4-tcp-12", _eth(TPID_8021Q, ETH_P_IP) + _ipv4_raw(tail=TCP_HDR[:12])
    # IPv6
    for version in (0, 4, 7):
        yield f"ipv6-version{version}", e6 + _ipv6_raw(6, TCP_HDR, version=version)
    yield "ipv6-ethertype-ipv4-packet", e6 + _ipv4_raw(tail=TCP_HDR)
    yield "ipv6-39", e6 + _ipv6_raw(6)[:39]
    yield "ipv6-tcp-19", e6 + _ipv6_raw(6, TCP_HDR[:19])
    yield "ipv6-icmpv6-3", e6 + _ipv6_raw(58, b"\x87\x00\x00")
    yield "ipv6-ext-7-bytes", e6 + _ipv6_raw(0, _opt_hdr(6)[:7])
    yield "ipv6-hbh-len-past-end", e6 + _ipv6_raw(0, bytes([6, 255]) + bytes(6) + TCP_HDR)
    yield "ipv6-routing-len-past-end", e6 + _ipv6_raw(43, bytes([6, 3]) + bytes(22))
    # AH ends the walk: its length byte and what follows it are never read
    yield "ipv6-ah-is-the-protocol-len255", e6 + _ipv6_raw(51, bytes([6, 255]) + bytes(10)
                                                            + TCP_HDR)
    yield "ipv6-ah-is-the-protocol-tcp-cut", e6 + _ipv6_raw(51, bytes([6, 1]) + bytes(10)
                                                             + TCP_HDR[:19])
    yield "ipv6-fragment-header-cut", e6 + _ipv6_raw(44, bytes([6, 0, 0, 1]))
    yield "ipv6-tiny-first-fragment", e6 + _ipv6_raw(44, bytes([17, 0, 0, 1, 0, 0, 0, 9])
                                                     + UDP_HDR[:4])
    chain7 = b"".join(_opt_hdr(60) for _ in range(6)) + _opt_hdr(6)
    yield "ipv6-seven-ext-headers", e6 + _ipv6_raw(60, chain7 + TCP_HDR)
    chain6 = b"".join(_opt_hdr(0 if i == 5 else 60) for i in range(6))
    yield "ipv6-seventh-ext-header-missing", e6 + _ipv6_raw(60, chain6)
    first_frags = b"".join(bytes([44, 0, 0, 0, 0, 0, 0, i]) for i in range(6))
    yield "ipv6-seven-fragment-headers", e6 + _ipv6_raw(44, first_frags
                                                        + bytes([6, 0, 0, 0]) + bytes(4))
    yield "ipv6-six-ext-then-tcp-cut", e6 + _ipv6_raw(60, b"".join(
        _opt_hdr(6 if i == 5 else 60) for i in range(6)) + TCP_HDR[:10])
    # headers past the 512-byte window the datapath reads (HDR_TOO_LONG), and just inside
    yield "ipv6-dest-opts-2048-bytes", e6 + _ipv6_raw(60, _opt_hdr(6, 255) + TCP_HDR)
    yield "ipv6-tcp-past-window", e6 + _ipv6_raw(60, _opt_hdr(6, 56) + TCP_HDR)
    yield "ipv6-tcp-inside-window", e6 + _ipv6_raw(60, _opt_hdr(6, 53) + TCP_HDR)
    # a header longer than the window itself, then a protocol with no transport fields: the
    # window check must not wrap around (an unsigned WINDOW - n) and let it be classified
    yield "ipv6-520-byte-ext-then-esp", e6 + _ipv6_raw(60, _opt_hdr(50, 64) + bytes(16))
    yield "ipv6-2048-byte-ext-then-no-next", e6 + _ipv6_raw(0, _opt_hdr(59, 255))
    yield "ipv6-1024-byte-routing-then-ah", e6 + _ipv6_raw(43, _opt_hdr(51, 127) + bytes(12))
    # too short for BPF_PROG_TEST_RUN: for callers that compare through another path
    yield "empty", b""
    yield "ethernet-13", _eth(ETH_P_IP)[:13]


# ---- every branch of the extension-header walk --------------------------------------

# (units of 8 bytes beyond the first 8) of a header: short ones, around the end of the
# 512-byte window (after 14 + 40 bytes, units 56 ends the header at byte 518), longer than
# the window itself (64 and up: 520 bytes or more), and the largest
EXT_UNITS = [0, 1, 2, 53, 54, 55, 56, 57, 62, 63, 64, 65, 100, 127, 128, 200, 255]
# what follows: transport and ICMP headers (read), protocols with no fields (AH, ESP,
# no-next-header, GRE, the other family's ICMP) and more extension headers (walked)
NEXT_PROTOS = [6, 17, 58, 1, 51, 50, 59, 47, 0, 43, 44, 60]
_NEXT_BYTES = {6: TCP_HDR, 17: UDP_HDR, 58: bytes([128, 0, 0, 0, 0, 1, 0, 1]),
               44: bytes([6, 0, 0, 0, 0, 0, 0, 1]) + TCP_HDR}


def branch_frames() -> Iterator[tuple[str, bytes]]:
    """Named frames that take every branch of the parser's extension-header walk: each
    header type, each length class, each kind of next protocol; each whole (with what
    follows the header) and cut at the header's end (nothing follows) and inside it."""
    e6 = _eth(ETH_P_IPV6)
    for kind, number in (("hop", 0), ("routing", 43), ("dest", 60)):
        for units in EXT_UNITS:
            for nh in NEXT_PROTOS:
                header = _opt_hdr(nh, units)
                after = _NEXT_BYTES.get(nh, _opt_hdr(6) + TCP_HDR if nh in (0, 43, 60)
                                        else bytes(24))
                name = f"{kind}{units}-then-{nh}"
                yield name, e6 + _ipv6_raw(number, header + after)
                yield f"{name}-nothing-after", e6 + _ipv6_raw(number, header)
                yield f"{name}-cut-inside", e6 + _ipv6_raw(number, header[:len(header) // 2 + 1])
    for nh in NEXT_PROTOS:  # fragment headers are always 8 bytes; first and non-first
        after = _NEXT_BYTES.get(nh, _opt_hdr(6) + TCP_HDR if nh in (0, 43, 60) else bytes(24))
        for offset, more in ((0, 0), (0, 1), (1, 0), (8191, 1)):
            frag = bytes([nh, 0]) + struct.pack("!HI", offset << 3 | more, 7)
            name = f"frag{offset}m{more}-then-{nh}"
            yield name, e6 + _ipv6_raw(44, frag + after)
            yield f"{name}-nothing-after", e6 + _ipv6_raw(44, frag)
            yield f"{name}-cut-inside", e6 + _ipv6_raw(44, frag[:5])


def l3(frame: bytes) -> bytes:
    """The frame as a device without a link-layer header carries it: from the IP header on
    (after the Ethernet header and any VLAN tags); frames too short for that lose all."""
    off, _ethertype = _l3_offset(frame)
    return frame[off:]


# ---- mutations -----------------------------------------------------------------------

def _l3_offset(frame: bytes) -> tuple[int, int]:
    """(offset, ethertype) after at most two VLAN tags; (len, 0) if the frame ends first."""
    off, ethertype = 14, int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
    for _ in range(2):
        if ethertype in (TPID_8021Q, TPID_8021AD) and len(frame) >= off + 4:
            ethertype = int.from_bytes(frame[off + 2:off + 4], "big")
            off += 4
    return min(off, len(frame)), ethertype


def _poke(frame: bytearray, index: int, value: int) -> None:
    if 0 <= index < len(frame):
        frame[index] = value & 0xFF


def _mutate_once(rng: random.Random, frame: bytearray) -> None:
    op = rng.choice(["flip", "byte", "insert", "delete", "cut", "append", "length",
                     "length", "version", "nexthdr", "tag"])
    pos = rng.randrange(len(frame) + 1)
    l3, ethertype = _l3_offset(bytes(frame))
    if op == "flip" and frame:
        index = rng.randrange(len(frame))
        frame[index] ^= 1 << rng.randrange(8)
    elif op == "byte" and frame:
        frame[rng.randrange(len(frame))] = rng.randrange(256)
    elif op == "insert":
        frame[pos:pos] = rng.randbytes(rng.randint(1, 8))
    elif op == "delete":
        del frame[pos:pos + rng.randint(1, 8)]
    elif op == "cut":
        del frame[pos:]
    elif op == "append":
        frame += rng.randbytes(rng.randint(1, 16))
    elif op == "length" and ethertype == ETH_P_IP and l3 < len(frame):
        if rng.random() < 0.5:  # IHL
            frame[l3] = (frame[l3] & 0xF0) | rng.randrange(16)
        else:  # fragment offset and flags
            _poke(frame, l3 + 6, rng.randrange(256))
            _poke(frame, l3 + 7, rng.randrange(256))
    elif op == "length" and ethertype == ETH_P_IPV6:
        # the length byte of the first extension header, if any (or the transport header)
        _poke(frame, l3 + 41, rng.choice([0, 1, 2, 255, rng.randrange(256)]))
    elif op == "version" and l3 < len(frame):
        frame[l3] = (rng.randrange(16) << 4) | (frame[l3] & 0x0F)
    elif op == "nexthdr":
        if ethertype == ETH_P_IP:
            _poke(frame, l3 + 9, rng.choice([1, 6, 17, 58, rng.randrange(256)]))
        else:
            _poke(frame, l3 + 6, rng.choice([0, 6, 17, 43, 44, 51, 58, 60, rng.randrange(256)]))
    elif op == "tag":  # one more VLAN tag in front of whatever follows
        frame[12:12] = struct.pack("!HH", rng.choice([TPID_8021Q, TPID_8021AD]), 5)
    else:  # an op that did not apply to this frame: flip a byte instead
        if frame:
            frame[rng.randrange(len(frame))] ^= 0xFF
        else:
            frame += rng.randbytes(1)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """A changed copy of `frame` (1-3 mutations; never equal to the input)."""
    out = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        _mutate_once(rng, out)
    while bytes(out) == frame:
        _mutate_once(rng, out)
    return bytes(out)


# ---- connection tracking: conversations and ICMP errors ------------------------------

CT_HOSTS = {4: "192.0.2.1", 6: "2001:db8::1"}
CT_PEERS = {4: ["198.51.100.7", "198.51.100.8"], 6: ["2001:db8:ffff::7", "2001:db8:ffff::8"]}
CT_HOST_PORTS = [40000, 40001, 22]
CT_PEER_PORTS = [443, 50000]
CT_ECHO_IDS = [0x4242, 0x4243]
M32 = 0xFFFFFFFF


def _ip(family: int, src: str, dst: str, **kw) -> Packet:
    return IP(src=src, dst=dst, **kw) if family == 4 else IPv6(src=src, dst=dst)


def _eth_frame(payload: Packet) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / payload)


def _ct_key(family: int, proto: int, sport: int, dport: int, saddr: str, daddr: str):
    pack = ipaddress.ip_address
    return (family, proto, sport, dport, pack(saddr).packed.ljust(16, b"\0"),
            pack(daddr).packed.ljust(16, b"\0"))


def _near(rng: random.Random, *anchors: int) -> int:
    """A 32-bit number on or next to one of the anchors (the edges of a window), or any."""
    if anchors and rng.random() < 0.85:
        return (rng.choice(anchors) + rng.choice([-1, 0, 0, 1])) & M32
    return rng.getrandbits(32)


def _tcp_options(rng: random.Random) -> list:
    return rng.choice([
        [], [("WScale", rng.choice([0, 7, 14, 15, 255]))],
        [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
         ("WScale", rng.randrange(16))],
        [("NOP", None)] * 9 + [("WScale", 3)],         # past the walk's steps: largest shift
        [("MSS", 1460), ("NOP", None), ("NOP", None), ("EOL", None), ("WScale", 5)],
        [("Timestamp", (5, 6)), ("NOP", None), ("NOP", None)],
    ])


def conntrack_step(rng: random.Random, tracker) -> tuple[str, bytes]:
    """One packet between this host (CT_HOSTS) and its peers, for a stateful differential
    test: ("egress" | "ingress", frame).  Tuples come from small pools so that flows meet
    again; TCP sequence and acknowledgement numbers are aimed at the edges of what the
    reference ``tracker`` holds for the tuple (window ends, the host's ISN and next byte)."""
    family = rng.choice([4, 6])
    host, peer = CT_HOSTS[family], rng.choice(CT_PEERS[family])
    hport, pport = rng.choice(CT_HOST_PORTS), rng.choice(CT_PEER_PORTS)
    kind = rng.choices(["tcp", "udp", "echo", "error"], weights=[8, 2, 1, 2])[0]
    if kind == "error":
        return "ingress", icmp_error(rng, family, tracker)
    egress = rng.random() < 0.5
    src, dst = (host, peer) if egress else (peer, host)
    if kind == "udp":
        sport, dport = (hport, pport) if egress else (pport, hport)
        return ("egress" if egress else "ingress",
                _eth_frame(_ip(family, src, dst) / UDP(sport=sport, dport=dport) / b"u"))
    if kind == "echo":
        ident = rng.choice(CT_ECHO_IDS)
        if family == 4:
            icmp = ICMP(type=8 if egress else 0, id=ident)
        else:
            from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest
            icmp = (ICMPv6EchoRequest if egress else ICMPv6EchoReply)(id=ident)
        return "egress" if egress else "ingress", _eth_frame(_ip(family, src, dst) / icmp)
    key = _ct_key(family, 6, pport, hport, peer, host)
    e = tracker.confirmed.get(key) or tracker.unconfirmed.get(key)
    if egress:
        flags = rng.choice(["S", "S", "SA", "A", "PA", "FA", "RA", "R", "A"])
        anchors = (e.our_start, e.our_end) if e else ()
        seq = _near(rng, *anchors)
        ack = _near(rng, *((e.our_ack,) if e else ()))
        tcp = TCP(sport=hport, dport=pport, flags=flags, seq=seq, ack=ack,
                  window=rng.choice([0, 1, 300, 65535, rng.randrange(65536)]),
                  options=_tcp_options(rng) if "S" in flags else [])
    else:
        flags = rng.choice(["SA", "SA", "A", "PA", "FA", "R", "RA", "S", "A"])
        seqs = (e.our_ack, e.our_maxend, (e.our_ack - e.our_maxwin) & M32) if e else ()
        acks = (e.our_end, e.our_start, (e.our_start + 1) & M32,
                (e.our_end - (0xFFFF << 14)) & M32) if e else ()
        tcp = TCP(sport=pport, dport=hport, flags=flags, seq=_near(rng, *seqs),
                  ack=_near(rng, *acks), window=rng.randrange(65536))
    payload = _junk(rng, 0, 60) if rng.random() < 0.4 else b""
    return "egress" if egress else "ingress", _eth_frame(_ip(family, src, dst) / tcp / payload)


ICMP_ERRORS = {4: [3, 11, 12], 6: [1, 2, 3, 4]}
ICMP_NOT_ERRORS = {4: [0, 4, 5, 8], 6: [128, 129, 135]}


def _icmp_error_frame(family: int, icmp_type: int, inner: bytes, to: str | None = None,
                      outer_family: int | None = None) -> bytes:
    """An ICMP error from a router to this host (or ``to``) carrying ``inner``."""
    outer_family = outer_family or family
    router = "192.0.2.254" if outer_family == 4 else "2001:db8::fe"
    dst = to or CT_HOSTS[outer_family]
    if outer_family == 4:
        return _eth_frame(IP(src=router, dst=dst) / ICMP(type=icmp_type, code=4) / Raw(inner))
    return _eth_frame(IPv6(src=router, dst=dst) / ICMPv6Unknown(
        type=icmp_type, code=0, msgbody=b"\0\0\x05\x00" + inner))


def _inner(family: int, what: str, peer: str, hport: int = 40000, pport: int = 443,
           ident: int = CT_ECHO_IDS[0], **ip_kw) -> bytes:
    """A packet this host sent (the start of it, as an ICMP error quotes it)."""
    ip = _ip(family, CT_HOSTS[family], peer, **ip_kw)
    if what == "tcp":
        return bytes(ip / TCP(sport=hport, dport=pport, flags="A", seq=1001) / (b"d" * 40))
    if what == "udp":
        return bytes(ip / UDP(sport=hport, dport=pport) / b"q")
    if what in ("echo", "echo-reply"):
        request = what == "echo"
        if family == 4:
            return bytes(ip / ICMP(type=8 if request else 0, id=ident))
        from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest
        return bytes(ip / (ICMPv6EchoRequest if request else ICMPv6EchoReply)(id=ident))
    return bytes(ip / Raw(b"\0" * 12)) if family == 6 else bytes(
        IP(src=CT_HOSTS[4], dst=peer, proto=47, **ip_kw) / Raw(b"\0" * 12))


def icmp_error(rng: random.Random, family: int, tracker) -> bytes:
    """An ICMP error to this host, mostly about a tuple the tracker holds."""
    keys = [k for k in (*tracker.confirmed, *tracker.unconfirmed) if k[0] == family]
    what = rng.choice(["tcp", "udp", "echo"])
    peer, hport, pport = rng.choice(CT_PEERS[family]), rng.choice(CT_HOST_PORTS), \
        rng.choice(CT_PEER_PORTS)
    if keys and rng.random() < 0.7:
        _, proto, sport, dport, saddr, _ = rng.choice(keys)
        peer = str(ipaddress.ip_address(saddr[:4] if family == 4 else saddr))
        what = {6: "tcp", 17: "udp"}.get(proto, "echo")
        hport, pport = dport, sport
    inner = _inner(family, what, peer, hport, pport, ident=pport if what == "echo" else 0)
    types = ICMP_ERRORS[family] if rng.random() < 0.85 else ICMP_NOT_ERRORS[family]
    frame = _icmp_error_frame(family, rng.choice(types), inner)
    if rng.random() < 0.2:
        frame = frame[:rng.randrange(14, len(frame) + 1)]
    return frame


def icmp_error_frames() -> Iterator[tuple[str, bytes]]:
    """Named ICMP errors about the flows `icmp_error_flows` sets up (and others): every
    error type and some that are not errors, each inner protocol, inner packets that are
    not the error's family, fragments, IPv4 options, an IPv6 extension header, the wrong
    addressee, and every base case cut at every length."""
    for family in (4, 6):
        peer = CT_PEERS[family][0]
        bases = {what: _inner(family, what, peer, pport=53 if what == "udp" else 443)
                 for what in ("tcp", "udp", "echo", "echo-reply", "other")}
        for what, inner in bases.items():
            for icmp_type in ICMP_ERRORS[family] + ICMP_NOT_ERRORS[family]:
                yield (f"v{family}-{what}-type{icmp_type}",
                       _icmp_error_frame(family, icmp_type, inner))
            frame = _icmp_error_frame(family, ICMP_ERRORS[family][0], inner)
            for n in range(len(frame)):
                yield f"v{family}-{what}/cut{n}", frame[:n]
            yield (f"v{family}-{what}-to-another-host",
                   _icmp_error_frame(family, ICMP_ERRORS[family][0], inner,
                                     to=CT_PEERS[family][1]))
            yield (f"v{family}-{what}-inside-v{10 - family}-error",
                   _icmp_error_frame(family, ICMP_ERRORS[10 - family][0], inner,
                                     outer_family=10 - family))
        first = ICMP_ERRORS[family][0]
        yield f"v{family}-other-peer", _icmp_error_frame(
            family, first, _inner(family, "tcp", CT_PEERS[family][1]))
        yield f"v{family}-other-port", _icmp_error_frame(
            family, first, _inner(family, "tcp", peer, hport=40001))
        yield f"v{family}-other-echo-id", _icmp_error_frame(
            family, first, _inner(family, "echo", peer, ident=CT_ECHO_IDS[1]))
    peer4, peer6 = CT_PEERS[4][0], CT_PEERS[6][0]
    yield "v4-inner-options", _icmp_error_frame(4, 3, _inner(
        4, "tcp", peer4, options=[IPOption_NOP()] * 4))
    yield "v4-inner-first-fragment", _icmp_error_frame(4, 3, _inner(4, "udp", peer4,
                                                                    pport=53, flags=1))
    yield "v4-inner-nonfirst-fragment", _icmp_error_frame(4, 3, _inner(4, "udp", peer4,
                                                                       pport=53, frag=7))
    bad_ihl = bytearray(_inner(4, "tcp", peer4))
    bad_ihl[0] = 0x44
    yield "v4-inner-ihl4", _icmp_error_frame(4, 3, bytes(bad_ihl))
    ext = bytes(IPv6(src=CT_HOSTS[6], dst=peer6) / IPv6ExtHdrHopByHop() /
                TCP(sport=40000, dport=443, flags="A"))
    yield "v6-inner-extension-header", _icmp_error_frame(6, 2, ext)
    # Extension headers push the quoted packet past the header window the datapath reads:
    # not related (and not malformed: the error's own headers lie inside it).
    padding = IPv6ExtHdrDestOpt(nh=58, options=[PadN(optdata=bytes(253)),
                                                PadN(optdata=bytes(189))])
    yield "v6-inner-past-the-window", _eth_frame(
        IPv6(src="2001:db8::fe", dst=CT_HOSTS[6]) / padding / ICMPv6Unknown(
            type=2, code=0, msgbody=b"\0\0\x05\x00" + _inner(6, "tcp", peer6)))


def icmp_error_flows() -> Iterator[tuple[str, bytes]]:
    """(direction, frame) that make the flows icmp_error_frames is about: per family a TCP
    connection confirmed by the peer's SYN-ACK, a UDP query and an echo request (left
    unconfirmed)."""
    for family in (4, 6):
        host, peer = CT_HOSTS[family], CT_PEERS[family][0]
        yield "egress", _eth_frame(_ip(family, host, peer) / TCP(sport=40000, dport=443,
                                                                 flags="S", seq=1000))
        yield "ingress", _eth_frame(_ip(family, peer, host) / TCP(
            sport=443, dport=40000, flags="SA", seq=5000, ack=1001))
        yield "egress", _eth_frame(_ip(family, host, peer) / UDP(sport=40000, dport=53))
        ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02",
                      type=ETH_P_IP if family == 4 else ETH_P_IPV6)
        yield "egress", bytes(ether) + _inner(family, "echo", peer)
