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
4. For each slot in the direction's bitmap: its directly looked-up address field is dst
   when its ``CFG_DIRECT_DST`` bit is set, else src if the shape has it, else none.  Skip
   the slot when a field it classifies has class 0 there; else look up ``rule_table``, an
   LPM trie, with the header ``(slot, direction, family, proto if PROTO else 0, other
   address class, sport, dport-or-icmp)`` and the direct field's address (longest match),
   and keep the lowest rule index found.
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
    for slot in range(MAX_SHAPES):
        if not bitmap & (1 << slot):
            continue
        mask = cfg[CFG_SHAPES + slot]
        direct = (FIELD_DST if mask & FIELD_DST and cfg[CFG_DIRECT_DST] >> slot & 1
                  else FIELD_SRC if mask & FIELD_SRC else 0)
        other = 0
        if direct != FIELD_SRC and mask & FIELD_SRC:
            other = src[slot]
        elif direct != FIELD_DST and mask & FIELD_DST:
            other = dst[slot]
        sp = sport[slot] if mask & FIELD_SPORT else 0
        l4 = dport[slot] if mask & FIELD_DPORT else icmp[slot] if mask & FIELD_ICMP else 0
        classified = (FIELD_SRC | FIELD_DST) & mask & ~direct
        if ((classified and not other) or (mask & FIELD_SPORT and not sp)
                or (mask & (FIELD_DPORT | FIELD_ICMP) and not l4)):
            continue
        header = (slot, dir_code, family, proto if mask & FIELD_PROTO else 0, other, sp, l4)
        address = int(packet.dst) if direct == FIELD_DST else int(packet.src)
        index = _lpm_keyed(table, header, bits, address)
        if index is not None and (best is None or index < best):
            best = index
    if best is not None:
        action, _flags = maps["rules"].get(best, (0, 0))
        return PlanDecision(_action(action), best, "rule", plan.rule_name(best))
    default = cfg[CFG_DEFAULT_INGRESS if dir_code == DIR_INGRESS else CFG_DEFAULT_EGRESS]
    return PlanDecision(_action(default), None, "default")
