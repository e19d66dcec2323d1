"""The reference frame parser: a raw Ethernet frame -> what the datapath classifies.

This is the pure-Python reference for the parse step of the XDP/tc programs, which are
tested against it frame for frame.  The numbered comments (steps 0-7) below are the spec,
and the spec is part of the contract (docs/policy.md cites it): change it only together
with the C parser.  All multi-byte fields are big-endian; "need n at off" means "if fewer
than n bytes remain from off, the frame is malformed under the named reason".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Ip:
    """An IP packet: ``packet`` is what the rules are matched against."""

    packet: Packet


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
    if not fragment:
        if proto == PROTO_TCP:
            _need(data, l4, TCP_MIN_HLEN, DropReason.TRUNC_L4)
            sport, dport = _be16(data, l4), _be16(data, l4 + 2)
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
        # any other protocol: no transport fields, nothing checked

    # 7. The classified fields; None for the absent ones.
    return Ip(Packet(src=src, dst=dst, proto=proto, sport=sport, dport=dport,
                     icmp_type=icmp_type, icmp_code=icmp_code, fragment=fragment, ttl=ttl))


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
