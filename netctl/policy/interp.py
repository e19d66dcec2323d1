"""Run the datapath's classification on a MapPlan, in Python.

`interpret` performs exactly the lookups the BPF programs perform, in the same order, and
reads nothing but the plan's map contents (``plan.maps()``); rule names come from the plan
for humans.  Unit tests check it against the reference evaluator; BPF tests check the
programs against both.

Per packet (after VLAN tags and IPv6 extension headers):

1. ``config[0]``.  Neighbour discovery a host would process (``model.ndp_exempt``: ICMPv6
   133-137, not a non-first fragment, hop limit 255, a redirect from a link-local source)
   and allow_ndp: accept ("ndp").
2. The family's ``src_*`` and ``dst_*`` class tries (longest prefix; a miss is all class
   0); only the fields some slot classifies (``CFG_CLASSIFY``) have entries.
3. TCP/UDP and not a fragment: ``sport_interval``/``dport_interval`` at
   ``port_slot * 65536 + port``, then ``sport_classes``/``dport_classes`` at that id.
   ICMP in IPv4 or ICMPv6 in IPv6, not a fragment: ``icmp_interval`` at
   ``icmp_slot * 65536 + (type << 8 | code)``, then ``icmp_classes``.  Otherwise those
   classes are all 0.
4. For each slot in the direction's bitmap: its directly looked-up field is the
   destination port when its ``CFG_DIRECT_PORT`` bit is set (a packet without ports skips
   the slot), else dst when its ``CFG_DIRECT_DST`` bit is set, else src (which may be
   absent from the shape: then no address is classified).  Skip the slot when a field it
   classifies has class 0 there; else look up ``rule_table``, an LPM trie, with the header
   ``(slot, direction, family, proto if PROTO else 0, the classified address's class,
   sport, dport-or-icmp unless dport is direct)`` and the direct field (longest match; a
   port in the top 16 of the family's bits), and keep the lowest rule index found.
5. A rule found: its action ("rule").  Else the direction's default ("default").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ..abi import (
    ACTION_DROP,
    CFG_ALLOW_NDP,
    CFG_DEFAULT_EGRESS,
    CFG_DEFAULT_INGRESS,
    CFG_DIRECT_DST,
    CFG_DIRECT_PORT,
    CFG_SHAPES,
    CFG_SLOTS_EGRESS,
    CFG_SLOTS_INGRESS,
    DIR_EGRESS,
    DIR_INGRESS,
    FIELD_DPORT,
    FIELD_DST,
    FIELD_ICMP,
    FIELD_PROTO,
    FIELD_SPORT,
    FIELD_SRC,
    ICMP_SLOTS,
    MAX_SHAPES,
    PORT_SLOTS,
    ZERO_CLASSES,
)
from .model import Action, Direction, Packet, ndp_exempt
from .plan import MapPlan

_ICMP_OF_FAMILY = {4: 1, 6: 58}
_BITS = {4: 32, 6: 128}


class PlanDecision(NamedTuple):
    verdict: Action
    rule: int | None      # rule index
    why: str              # "rule", "default" or "ndp"
    name: str | None = None


def _action(code: int) -> Action:
    return Action.DROP if code == ACTION_DROP else Action.ACCEPT


def _lpm(trie: Mapping[Any, Any], bits: int, address: int) -> tuple[int, ...]:
    # A software LPM trie lookup: the longest prefix length first.
    for plen in range(bits, -1, -1):
        value: tuple[int, ...] | None = trie.get(
            (plen, (address >> (bits - plen)) << (bits - plen)))
        if value is not None:
            return value
    return ZERO_CLASSES


def _lpm_keyed(trie: Mapping[Any, Any], header: tuple[int, ...], bits: int, address: int
               ) -> int | None:
    # The rule trie: a fully matched header, then the longest prefix of the address.
    for plen in range(bits, -1, -1):
        value: int | None = trie.get((*header, plen, (address >> (bits - plen)) << (bits - plen)))
        if value is not None:
            return value
    return None


def interpret(plan: MapPlan, packet: Packet, direction: Direction) -> PlanDecision:
    maps = plan.maps()
    cfg: tuple[int, ...] = maps["config"].get(0)  # type: ignore[assignment]  # a plan has it
    family = packet.family
    fragment = packet.fragment
    proto = packet.proto
    if cfg[CFG_ALLOW_NDP] and ndp_exempt(packet):
        return PlanDecision(Action.ACCEPT, None, "ndp")

    bits = _BITS[family]
    src = _lpm(maps[f"src_v{family}"], bits, int(packet.src))
    dst = _lpm(maps[f"dst_v{family}"], bits, int(packet.dst))
    sport = dport = icmp = ZERO_CLASSES
    if not fragment and proto in PORT_SLOTS:
        base = PORT_SLOTS[proto] * 65536
        if packet.sport is not None:
            iid = maps["sport_interval"].get(base + packet.sport, 0)
            sport = maps["sport_classes"].get(iid, ZERO_CLASSES)
        if packet.dport is not None:
            iid = maps["dport_interval"].get(base + packet.dport, 0)
            dport = maps["dport_classes"].get(iid, ZERO_CLASSES)
    elif not fragment and proto == _ICMP_OF_FAMILY[family] and packet.icmp_type is not None:
        value = packet.icmp_type << 8 | (packet.icmp_code or 0)
        iid = maps["icmp_interval"].get(ICMP_SLOTS[family] * 65536 + value, 0)
        icmp = maps["icmp_classes"].get(iid, ZERO_CLASSES)

    dir_code = DIR_INGRESS if direction is Direction.INGRESS else DIR_EGRESS
    bitmap = cfg[CFG_SLOTS_INGRESS if dir_code == DIR_INGRESS else CFG_SLOTS_EGRESS]
    table = maps["rule_table"]
    best: int | None = None
    has_ports = not fragment and proto in PORT_SLOTS and packet.dport is not None
    for slot in range(MAX_SHAPES):
        if not bitmap & (1 << slot):
            continue
        mask = cfg[CFG_SHAPES + slot]
        use_port = cfg[CFG_DIRECT_PORT] >> slot & 1
        use_dst = not use_port and mask & FIELD_DST and cfg[CFG_DIRECT_DST] >> slot & 1
        classified = mask & (FIELD_SRC | FIELD_DST)
        if not use_port:
            classified &= FIELD_SRC if use_dst else FIELD_DST
        other = 0
        if classified:
            other = src[slot] if classified & FIELD_SRC else dst[slot]
            if not other:
                continue
        sp = sport[slot] if mask & FIELD_SPORT else 0
        if mask & FIELD_SPORT and not sp:
            continue
        l4 = 0
        if use_port:
            if not has_ports:
                continue
            address = packet.dport << (bits - 16)  # type: ignore[operator]  # has_ports
        else:
            l4 = dport[slot] if mask & FIELD_DPORT else icmp[slot] if mask & FIELD_ICMP else 0
            if mask & (FIELD_DPORT | FIELD_ICMP) and not l4:
                continue
            address = int(packet.dst) if use_dst else int(packet.src)
        header = (slot, dir_code, family, proto if mask & FIELD_PROTO else 0, other, sp, l4)
        index = _lpm_keyed(table, header, bits, address)
        if index is not None and (best is None or index < best):
            best = index
    if best is not None:
        action, _flags = maps["rules"].get(best, (0, 0))
        return PlanDecision(_action(action), best, "rule", plan.rule_name(best))
    default = cfg[CFG_DEFAULT_INGRESS if dir_code == DIR_INGRESS else CFG_DEFAULT_EGRESS]
    return PlanDecision(_action(default), None, "default")
