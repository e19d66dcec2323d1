"""The reference model: what a policy decides for one packet, straight from the contract.

This is the oracle the compiled datapath is tested against (the map-plan interpreter in
unit tests, the real programs through BPF_PROG_TEST_RUN and traffic in namespaces).  It is
written from the semantics in docs/policy.md, never from the compiler, and it favours being
obviously right over being fast:

1. ICMPv6 neighbour discovery (types 133-137) that a host would process (hop limit 255, a
   redirect only from a link-local source: ``model.ndp_exempt``) is accepted first unless
   ``allow_ndp: false``.
2. Rules of the packet's direction are tried in order; the first whose every given field
   matches decides.  List items are ORed, fields ANDed, an omitted field matches anything.
   A set ("@NAME") in src or dst is one item: the address is in it when one of its
   prefixes contains the address.
3. Otherwise the direction's default action decides.
"""

from __future__ import annotations

from typing import NamedTuple

from .model import (
    ICMP_PROTOS,
    PORT_PROTOS,
    Action,
    Address,
    AddressItem,
    Direction,
    Packet,
    Policy,
    PortRange,
    Rule,
    address_matches,
    ndp_exempt,
)


class Decision(NamedTuple):
    verdict: Action
    rule: Rule | None
    why: str  # "rule", "default" or "ndp"


def evaluate(policy: Policy, packet: Packet, direction: Direction) -> Decision:
    if policy.allow_ndp and ndp_exempt(packet):
        return Decision(Action.ACCEPT, None, "ndp")
    for rule in policy.rules:
        if rule.direction is direction and rule_matches(rule, packet):
            return Decision(rule.action, rule, "rule")
    return Decision(policy.default(direction), None, "default")


def rule_matches(rule: Rule, packet: Packet) -> bool:
    return (
        _addresses_match(rule.src, packet.src)
        and _addresses_match(rule.dst, packet.dst)
        and _proto_matches(rule, packet)
        and _ports_match(rule.sport, packet, packet.sport)
        and _ports_match(rule.dport, packet, packet.dport)
        and _icmp_matches(rule, packet)
    )


def _addresses_match(items: tuple[AddressItem, ...] | None, address: Address) -> bool:
    # Items are networks and sets (the address is in a set when one of its prefixes of the
    # address's family contains it); items of the other family never match.
    return items is None or address_matches(items, address) is not None


def _proto_matches(rule: Rule, packet: Packet) -> bool:
    # icmp exists only in IPv4 and icmpv6 only in IPv6, whatever the number says.
    family_of_icmp = ICMP_PROTOS.get(packet.proto)
    if family_of_icmp is not None and family_of_icmp != packet.family and rule.proto is not None:
        return False
    return rule.proto is None or packet.proto in rule.proto


def _ports_match(ranges: tuple[PortRange, ...] | None, packet: Packet, port: int | None) -> bool:
    if ranges is None:
        return True
    if packet.fragment or packet.proto not in PORT_PROTOS or port is None:
        return False  # ports never match other protocols, nor non-first fragments
    return any(port in r for r in ranges)


def _icmp_matches(rule: Rule, packet: Packet) -> bool:
    if rule.icmp_type is None and rule.icmp_code is None:
        return True
    is_own_icmp = ICMP_PROTOS.get(packet.proto) == packet.family
    if packet.fragment or not is_own_icmp or packet.icmp_type is None:
        return False
    if rule.icmp_type is not None and (packet.family, packet.icmp_type) not in rule.icmp_type:
        return False
    if rule.icmp_code is not None:
        return packet.icmp_code is not None and any(packet.icmp_code in r
                                                    for r in rule.icmp_code)
    return True
