"""Ethernet frames for model packets (scapy), e.g. to run a policy's tests: packets through
the real programs."""

from __future__ import annotations

from ..abi import IPV6_EXT_HDRS
from ..policy.model import ICMP_PROTOS, PORT_PROTOS, Packet

# A non-first fragment: offset in 8-byte units, anything non-zero.
FRAGMENT_OFFSET = 185
# Fixed MACs: scapy would otherwise look up routes (and warn) to fill them in.
SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


class Unrepresentable(ValueError):
    """No frame carries this packet: in IPv6 an extension-header number (hop-by-hop,
    routing, fragment, destination options) as the upper-layer protocol of a packet that
    is not a non-first fragment would itself be walked as an extension header."""


def frame_for(packet: Packet) -> bytes:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    family = packet.family
    if family == 6 and packet.proto in IPV6_EXT_HDRS and not packet.fragment:
        raise Unrepresentable(f"IPv6 packet with next header {packet.proto} (an extension "
                              "header) as its upper-layer protocol")
    own_icmp = ICMP_PROTOS.get(packet.proto) == family
    if packet.fragment:
        payload = Raw(b"\0" * 16)
    elif packet.proto in PORT_PROTOS:
        cls = TCP if packet.proto == 6 else UDP
        payload = cls(sport=packet.sport or 0, dport=packet.dport or 0)
    elif own_icmp and family == 4:
        payload = ICMP(type=packet.icmp_type or 0, code=packet.icmp_code or 0)
    elif own_icmp:  # ICMPv6: type, code, checksum (not checked by the classifier), body
        payload = Raw(bytes([packet.icmp_type or 0, packet.icmp_code or 0]) + bytes(6))
    else:
        payload = Raw(b"\0" * 16)
    if family == 4:
        ip = IP(src=str(packet.src), dst=str(packet.dst), proto=packet.proto, ttl=packet.ttl,
                frag=FRAGMENT_OFFSET if packet.fragment else 0)
        return bytes(Ether(src=SRC_MAC, dst=DST_MAC) / ip / payload)
    if packet.fragment:
        ip = IPv6(src=str(packet.src), dst=str(packet.dst), hlim=packet.ttl) / \
            IPv6ExtHdrFragment(nh=packet.proto, offset=FRAGMENT_OFFSET)
    else:
        ip = IPv6(src=str(packet.src), dst=str(packet.dst), nh=packet.proto, hlim=packet.ttl)
    return bytes(Ether(src=SRC_MAC, dst=DST_MAC) / ip / payload)
