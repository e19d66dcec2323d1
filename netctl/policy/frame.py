"""The reference frame parser: a raw Ethernet frame -> what the datapath classifies.

This is the pure-Python reference for the parse step of the XDP/tc programs, which are
tested against it frame for frame.  The numbered comments (steps 0-8) below are the spec,
and the spec is part of the contract (docs/policy.md cites it): change it only together
with the C parser.  All multi-byte fields are big-endian; "need n at off" means "if fewer
than n bytes remain from off, the frame is malformed under the named reason".

Step 8 is what connection tracking reads besides (`Transport`, the reference for
bpf/include/netctl_conntrack.h's own reads): TCP sequence numbers, window and window scale
option, and the packet inside an ICMP error.  It never makes a frame malformed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple

from ..abi import (
    ETH_P_IP,
    ETH_P_IPV6,
    HDR_WINDOW,
    IPV6_EXT_HDRS,
    IPV6_FRAGMENT,
    MAX_EXT_HDRS,
    MAX_VLAN,
    VLAN_TPIDS,
    DropReason,
)
from .evaluate import evaluate
from .model import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Action,
    Address,
    Direction,
    Packet,
    Policy,
    Rule,
)

ETH_HLEN = 14
VLAN_HLEN = 4
IPV4_MIN_HLEN = 20
IPV6_HLEN = 40
IPV6_EXT_MIN_HLEN = 8
TCP_MIN_HLEN = 20
UDP_HLEN = 8
ICMP_MIN_HLEN = 4  # type, code, checksum
ICMP_ECHO_HLEN = 8  # ... and for echo request/reply the identifier and sequence number
ECHO_TYPES = {PROTO_ICMP: (0, 8), PROTO_ICMPV6: (128, 129)}


@dataclass(frozen=True)
class NonIp:
    """Not IPv4 or IPv6 (ARP, LLDP...): the frame passes unclassified."""


@dataclass(frozen=True)
class Malformed:
    """A truncated or invalid header: the frame is dropped under ``reason``."""

    reason: DropReason


CtKey = tuple[int, int, int, int, bytes, bytes]  # family, proto, sport, dport, saddr, daddr


@dataclass(frozen=True)
class Transport:
    """What connection tracking reads of a packet besides ``Packet`` (step 8).

    ``wscale`` is the window scale option's shift as the tracker reads it (TCP; used for
    SYNs), ``payload`` the bytes past the TCP header, ``related`` the reply tuple of the
    flow an ICMP error is about (None when it is not one, or its inner packet does not
    name a flow), as a conntrack key.
    """

    l4_off: int
    tcp_flags: int = 0
    tcp_seq: int = 0
    tcp_ack: int = 0
    tcp_win: int = 0
    tcp_hlen: int = 0
    wscale: int = 0
    payload: int = 0
    icmp_id: int = 0
    related: CtKey | None = None


@dataclass(frozen=True)
class Ip:
    """An IP packet: ``packet`` is what the rules are matched against; ``transport`` what
    connection tracking reads besides (None for a non-first fragment)."""

    packet: Packet
    transport: Transport | None = field(default=None, compare=False)


Parsed = NonIp | Malformed | Ip
_L3 = tuple[Address, Address, int, bool, int]  # src, dst, proto, non-first fragment, L4 offset


class FrameVerdict(NamedTuple):
    verdict: Action
    rule: Rule | None
    why: str  # "rule", "default", "ndp" (as evaluate says), "non-ip" or "malformed"
    reason: DropReason


class _Drop(Exception):
    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason)
        self.reason = reason


def _need(data: bytes, off: int, n: int, reason: DropReason) -> None:
    # The frame ends first: the header's truncation reason.  Else the bytes must lie in the
    # header window the datapath reads (its first HDR_WINDOW bytes): HDR_TOO_LONG.
    if len(data) - off < n:
        raise _Drop(reason)
    if off + n > HDR_WINDOW:
        raise _Drop(DropReason.HDR_TOO_LONG)


def _be16(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 2], "big")


LINK_ETHERNET = "ethernet"
LINK_L3 = "l3"


def parse_frame(data: bytes, link: str = LINK_ETHERNET, l3_type: int = 0,
                vlans: int = 0) -> Parsed:
    """Parse a frame as it reaches the datapath.  ``link``: LINK_ETHERNET, or LINK_L3 for a
    device whose frames start at the IP header (tun, WireGuard, IP tunnels), where
    ``l3_type`` is the ethertype the skb carries (tc) or 0 (XDP: none is known).  ``vlans``:
    tags the kernel already took out of the frame into the skb (tc)."""
    try:
        return _parse(bytes(data), link, l3_type, vlans)
    except _Drop as drop:
        return Malformed(drop.reason)


def _parse(data: bytes, link: str, l3_type: int, vlans: int) -> Parsed:
    if link == LINK_L3:
        # 0. No link-layer header: the IP header is at 0.  Its ethertype is the skb's
        #    protocol when there is one; else (XDP) the version nibble says: 4 is IPv4, 6 is
        #    IPv6, anything else (or an empty frame) is not IP.
        ethertype, off = l3_type, 0
        if not ethertype:
            nibble = data[0] >> 4 if data else 0
            ethertype = {4: ETH_P_IP, 6: ETH_P_IPV6}.get(nibble, 0)
    else:
        # 1. Ethernet: need 14 at 0 else TRUNC_L2; the ethertype is bytes 12-13.
        _need(data, 0, ETH_HLEN, DropReason.TRUNC_L2)
        ethertype = _be16(data, 12)
        off = ETH_HLEN

        # 2. Up to MAX_VLAN tags (TPID 0x8100 or 0x88a8), counting those the kernel already
        #    took out of the frame: need 4 else TRUNC_L2; the inner ethertype is the tag's
        #    bytes 2-3.  A tag beyond MAX_VLAN: VLAN_DEPTH.
        seen = vlans
        while ethertype in VLAN_TPIDS:
            if seen >= MAX_VLAN:
                raise _Drop(DropReason.VLAN_DEPTH)
            _need(data, off, VLAN_HLEN, DropReason.TRUNC_L2)
            ethertype = _be16(data, off + 2)
            off += VLAN_HLEN
            seen += 1

    if ethertype == ETH_P_IP:
        src, dst, proto, fragment, l4 = _ipv4(data, off)
        family_icmp, ttl = PROTO_ICMP, data[off + 8]
    elif ethertype == ETH_P_IPV6:
        src, dst, proto, fragment, l4 = _ipv6(data, off)
        family_icmp, ttl = PROTO_ICMPV6, data[off + 7]
    else:
        # 5. Any other ethertype: not IP, passes unclassified.
        return NonIp()

    # 6. Transport, only for a packet that is not a non-first fragment.
    sport = dport = icmp_type = icmp_code = None
    transport = None
    if not fragment:
        transport = Transport(l4)
        if proto == PROTO_TCP:
            _need(data, l4, TCP_MIN_HLEN, DropReason.TRUNC_L4)
            sport, dport = _be16(data, l4), _be16(data, l4 + 2)
            transport = _tcp_transport(data, l4)
        elif proto == PROTO_UDP:
            _need(data, l4, UDP_HLEN, DropReason.TRUNC_L4)
            sport, dport = _be16(data, l4), _be16(data, l4 + 2)
        elif proto == family_icmp:  # ICMP in IPv4 only, ICMPv6 in IPv6 only
            _need(data, l4, ICMP_MIN_HLEN, DropReason.TRUNC_L4)
            icmp_type, icmp_code = data[l4], data[l4 + 1]
            # Echo request and reply: their 8-byte header (with the identifier) must be
            # whole, since connection tracking reads the identifier.
            if icmp_type in ECHO_TYPES[family_icmp]:
                _need(data, l4, ICMP_ECHO_HLEN, DropReason.TRUNC_L4)
                transport = Transport(l4, icmp_id=_be16(data, l4 + 4))
            else:
                family = 4 if family_icmp == PROTO_ICMP else 6
                transport = Transport(l4, related=_icmp_error_flow(data, l4, family,
                                                                   icmp_type, dst))
        # any other protocol: no transport fields, nothing checked

    # 7. The classified fields; None for the absent ones.
    return Ip(Packet(src=src, dst=dst, proto=proto, sport=sport, dport=dport,
                     icmp_type=icmp_type, icmp_code=icmp_code, fragment=fragment, ttl=ttl),
              transport)


# 8. What connection tracking reads besides, never an error of the frame.  Its reads must
#    lie in the frame and in the header window, like the parser's; bytes missing mean
#    "not there" (no window scale, not a related error).
WSCALE_STEPS = 8       # option-walk steps (NETCTL_CT_OPT_STEPS)
MAX_WSCALE = 14
ICMP_ERROR_TYPES = {4: frozenset({3, 11, 12}), 6: frozenset({1, 2, 3, 4})}
ECHO_REQUEST = {4: 8, 6: 128}


def _have(data: bytes, off: int, n: int) -> bool:
    return off + n <= len(data) and off <= HDR_WINDOW - n


def _tcp_transport(data: bytes, l4: int) -> Transport:
    """8a. TCP: sequence and acknowledgement numbers, window, flags, the header length from
    the data offset (bytes 12-15 of the 20 the parser needs), the window scale option, and
    the payload: the frame past max(header length, 20) (padding included)."""
    hlen = (data[l4 + 12] >> 4) * 4
    header_end = l4 + max(hlen, TCP_MIN_HLEN)
    return Transport(l4, tcp_flags=data[l4 + 13],
                     tcp_seq=int.from_bytes(data[l4 + 4:l4 + 8], "big"),
                     tcp_ack=int.from_bytes(data[l4 + 8:l4 + 12], "big"),
                     tcp_win=_be16(data, l4 + 14), tcp_hlen=hlen,
                     wscale=_window_scale(data, l4 + TCP_MIN_HLEN, l4 + hlen),
                     payload=max(0, len(data) - header_end))


def _window_scale(data: bytes, off: int, stop: int) -> int:
    """8b. The window scale option's shift (at most 14), as the kernel's tcp_parse_options
    walks options: end of list (0) stops; a no-op (1) is one byte; any other option has a
    length byte, and a length below 2, a length byte or option past the header ends the
    walk; an option of the wrong length is skipped.  Each step needs 3 bytes at its offset
    (fewer cannot hold a window scale option after them).  A walk still inside the header
    after WSCALE_STEPS steps gives MAX_WSCALE."""
    for _ in range(WSCALE_STEPS):
        if off >= stop or not _have(data, off, 3):
            return 0
        kind, length, shift = data[off], data[off + 1], data[off + 2]
        if kind == 0:
            return 0
        nop = kind == 1
        optlen = 1 if nop else length
        if not nop and (off + 2 > stop or optlen < 2 or off + optlen > stop):
            return 0
        if kind == 3 and optlen == 3:
            return min(shift, MAX_WSCALE)
        off += optlen
    return MAX_WSCALE if off < stop else 0


def _icmp_error_flow(data: bytes, l4: int, family: int, icmp_type: int,
                     outer_dst: Address) -> CtKey | None:
    """8c. An ICMP error (IPv4 types 3, 11, 12; ICMPv6 1-4) carries, after its 8-byte
    header, the start of the packet it is about: an IP header (IPv4: version 4, IHL >= 5,
    fragment offset 0, options skipped; IPv6: version 6, no extension headers walked) of
    the error's own family, and 8 bytes of its transport header.  That packet was sent to
    the flow's peer by the error's addressee: its source must be the error's destination.
    The flow's reply tuple: TCP/UDP its destination port as source port and its source
    port as destination; an echo request (own family's ICMP) its identifier as source port.
    """
    if icmp_type not in ICMP_ERROR_TYPES[family]:
        return None
    off = l4 + ICMP_ECHO_HLEN
    if family == 4:
        if not _have(data, off, IPV4_MIN_HLEN):
            return None
        ihl = data[off] & 0x0F
        if data[off] >> 4 != 4 or ihl < 5 or _be16(data, off + 6) & 0x1FFF:
            return None
        proto, inner_src, inner_dst = data[off + 9], data[off + 12:off + 16], \
            data[off + 16:off + 20]
        inner_l4 = off + ihl * 4
    else:
        if not _have(data, off, IPV6_HLEN) or data[off] >> 4 != 6:
            return None
        proto, inner_src, inner_dst = data[off + 6], data[off + 8:off + 24], \
            data[off + 24:off + 40]
        inner_l4 = off + IPV6_HLEN
    if inner_src != outer_dst.packed or not _have(data, inner_l4, 8):
        return None
    if proto in (PROTO_TCP, PROTO_UDP):
        sport, dport = _be16(data, inner_l4 + 2), _be16(data, inner_l4)
    elif proto == (PROTO_ICMP if family == 4 else PROTO_ICMPV6) and \
            data[inner_l4] == ECHO_REQUEST[family]:
        sport, dport = _be16(data, inner_l4 + 4), 0
    else:
        return None
    return family, proto, sport, dport, inner_dst.ljust(16, b"\0"), \
        inner_src.ljust(16, b"\0")


def _ipv4(data: bytes, off: int) -> _L3:
    # 3. IPv4: need 20 else TRUNC_IPV4; version != 4 or IHL < 5: BAD_IPV4; need IHL*4 else
    #    TRUNC_IPV4.  A non-first fragment has a non-zero fragment offset (low 13 bits of
    #    bytes 6-7; the flag bits DF and MF do not count).  The total-length field is not
    #    checked: the kernel does that, and GSO/BIG TCP packets make it unreliable at tc.
    _need(data, off, IPV4_MIN_HLEN, DropReason.TRUNC_IPV4)
    version, ihl = data[off] >> 4, data[off] & 0x0F
    if version != 4 or ihl < 5:
        raise _Drop(DropReason.BAD_IPV4)
    _need(data, off, ihl * 4, DropReason.TRUNC_IPV4)
    proto = data[off + 9]
    fragment = (_be16(data, off + 6) & 0x1FFF) != 0
    src = ipaddress.IPv4Address(data[off + 12:off + 16])
    dst = ipaddress.IPv4Address(data[off + 16:off + 20])
    return src, dst, proto, fragment, off + ihl * 4


def _ipv6(data: bytes, off: int) -> _L3:
    # 4. IPv6: need 40 else TRUNC_IPV6; version != 6: BAD_IPV6.
    _need(data, off, IPV6_HLEN, DropReason.TRUNC_IPV6)
    if data[off] >> 4 != 6:
        raise _Drop(DropReason.BAD_IPV6)
    nh = data[off + 6]
    src = ipaddress.IPv6Address(data[off + 8:off + 24])
    dst = ipaddress.IPv6Address(data[off + 24:off + 40])
    off += IPV6_HLEN
    fragment = False

    # Walk at most MAX_EXT_HDRS extension headers (IPV6_EXT_HDRS: hop-by-hop, routing,
    # fragment, destination options); any other next header (TCP, UDP, ICMPv6, AH, ESP,
    # no-next-header...) ends the walk and is the upper protocol.
    for _ in range(MAX_EXT_HDRS):
        if nh not in IPV6_EXT_HDRS:
            break
        _need(data, off, IPV6_EXT_MIN_HLEN, DropReason.TRUNC_IPV6)
        if nh == IPV6_FRAGMENT:
            # Always 8 bytes (byte 1 is reserved, not a length).  A non-first fragment
            # (offset != 0) stops the walk: nothing after its fragment header is parsed.
            nh, frag_offset = data[off], _be16(data, off + 2) >> 3
            if frag_offset != 0:
                fragment = True
                break
            off += IPV6_EXT_MIN_HLEN
        else:
            hlen = (data[off + 1] + 1) * 8  # 8-byte units, not counting the first 8
            _need(data, off, hlen, DropReason.TRUNC_IPV6)
            nh = data[off]
            off += hlen
    # Still an extension header after MAX_EXT_HDRS of them (and not past a non-first
    # fragment header): too many.  Exactly MAX_EXT_HDRS followed by TCP is fine.
    if nh in IPV6_EXT_HDRS and not fragment:
        raise _Drop(DropReason.EXT_LIMIT)
    return src, dst, nh, fragment, off


def frame_verdict(policy: Policy, data: bytes, direction: Direction,
                  link: str = LINK_ETHERNET, l3_type: int = 0, vlans: int = 0) -> FrameVerdict:
    """What the datapath does with a frame: parse it, then evaluate the policy on it."""
    parsed = parse_frame(data, link, l3_type, vlans)
    if isinstance(parsed, NonIp):
        return FrameVerdict(Action.ACCEPT, None, "non-ip", DropReason.NONE)
    if isinstance(parsed, Malformed):
        return FrameVerdict(Action.DROP, None, "malformed", parsed.reason)
    decision = evaluate(policy, parsed.packet, direction)
    if decision.verdict is Action.ACCEPT:
        reason = DropReason.NONE
    elif decision.rule is not None:
        reason = DropReason.POLICY_RULE
    else:
        reason = DropReason.POLICY_DEFAULT
    return FrameVerdict(decision.verdict, decision.rule, decision.why, reason)
