"""Why a rule does or does not match a packet, field by field, for `netctl explain`.

The verdict itself always comes from the reference evaluator; this module only puts words
on it, so an explanation can never disagree with the decision it explains.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .evaluate import Decision, evaluate, rule_matches
from .load import ICMP_TYPES, proto_name
from .model import (
    ICMP_PROTOS,
    PORT_PROTOS,
    Address,
    AddressItem,
    Direction,
    Packet,
    Policy,
    PrefixSet,
    Rule,
)
from .sets import format_prefix


@dataclass(frozen=True)
class FieldCheck:
    field: str
    ok: bool
    detail: str


def describe_packet(packet: Packet) -> str:
    text = f"{packet.src} -> {packet.dst} {proto_name(packet.proto)}"
    if packet.fragment:
        return text + " (non-first fragment)"
    if packet.proto in PORT_PROTOS:
        text += f" {packet.sport} -> {packet.dport}"
    elif ICMP_PROTOS.get(packet.proto) == packet.family and packet.icmp_type is not None:
        names = [n for n, t in ICMP_TYPES[packet.family].items() if t == packet.icmp_type]
        text += f" type {packet.icmp_type}" + (f" ({names[0]})" if names else "")
        if packet.icmp_code:
            text += f" code {packet.icmp_code}"
    return text


def _list(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items)


def _item_words(item: AddressItem) -> str:
    """An address item for humans: a set with its size."""
    if isinstance(item, PrefixSet):
        return f"set @{item.name} ({len(item):,} prefixes)"
    return str(item)


def _address_check(name: str, items: tuple[AddressItem, ...], address: Address) -> FieldCheck:
    for item in items:
        if isinstance(item, PrefixSet):
            hit = item.match(address)
            if hit is not None:
                via = format_prefix(address.version, *hit)
                return FieldCheck(name, True, f"{address} is in set @{item.name} (via {via})")
        elif item.version == address.version and address in item:
            return FieldCheck(name, True, f"{address} is in {item}")
    own = [i for i in items if isinstance(i, PrefixSet) or i.version == address.version]
    if not own:
        return FieldCheck(name, False, f"{name} has no IPv{address.version} item")
    if all(isinstance(i, PrefixSet) and not i.family(address.version) for i in own):
        sets = ", ".join(f"@{i.name}" for i in own)  # type: ignore[union-attr]  # all sets
        return FieldCheck(name, False, f"{name} has no IPv{address.version} item (set"
                          f"{'s' if len(own) > 1 else ''} {sets} "
                          f"{'hold' if len(own) > 1 else 'holds'} no IPv{address.version} "
                          "prefix)")
    shown = ", ".join(_item_words(i) for i in items[:4]) + (" ..." if len(items) > 4 else "")
    return FieldCheck(name, False, f"{address} is not in {shown}")


def check_fields(rule: Rule, packet: Packet) -> list[FieldCheck]:
    """Each field the rule sets, with whether the packet satisfies it and how."""
    checks = []
    for name in ("src", "dst"):
        items = getattr(rule, name)
        if items is not None:
            checks.append(_address_check(name, items, getattr(packet, name)))
    if rule.proto is not None:
        allowed = _list(proto_name(p) for p in rule.proto)
        family_ok = ICMP_PROTOS.get(packet.proto, packet.family) == packet.family
        ok = packet.proto in rule.proto and family_ok
        detail = f"{proto_name(packet.proto)} is {'' if ok else 'not '}in {allowed}"
        if packet.proto in rule.proto and not family_ok:
            detail = f"protocol {packet.proto} in an IPv{packet.family} packet is not {allowed}"
        checks.append(FieldCheck("proto", ok, detail))
    for name in ("sport", "dport"):
        ranges = getattr(rule, name)
        if ranges is None:
            continue
        port = getattr(packet, name)
        if packet.fragment:
            checks.append(FieldCheck(name, False, "a non-first fragment has no ports"))
        elif packet.proto not in PORT_PROTOS or port is None:
            checks.append(FieldCheck(name, False, "the packet has no ports"))
        else:
            ok = any(port in r for r in ranges)
            checks.append(FieldCheck(name, ok, f"{port} is {'' if ok else 'not '}in "
                                     f"{_list(ranges)}"))
    if rule.icmp_type is not None:
        types = [t for f, t in rule.icmp_type if f == packet.family]
        if packet.fragment:
            checks.append(FieldCheck("icmp_type", False, "a non-first fragment has no ICMP type"))
        elif ICMP_PROTOS.get(packet.proto) != packet.family or packet.icmp_type is None:
            checks.append(FieldCheck("icmp_type", False, "the packet is not ICMP of its family"))
        else:
            ok = packet.icmp_type in types
            checks.append(FieldCheck("icmp_type", ok, f"type {packet.icmp_type} is "
                                     f"{'' if ok else 'not '}in {_list(types) or 'none'}"))
    if rule.icmp_code is not None:
        if packet.fragment:
            checks.append(FieldCheck("icmp_code", False, "a non-first fragment has no ICMP code"))
        elif ICMP_PROTOS.get(packet.proto) != packet.family or packet.icmp_code is None:
            checks.append(FieldCheck("icmp_code", False, "the packet is not ICMP of its family"))
        else:
            ok = any(packet.icmp_code in r for r in rule.icmp_code)
            checks.append(FieldCheck("icmp_code", ok, f"code {packet.icmp_code} is "
                                     f"{'' if ok else 'not '}in {_list(rule.icmp_code)}"))
    return checks


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    packet: Packet
    direction: Direction
    matched: list[FieldCheck]  # the deciding rule's fields (empty for default/ndp)
    near_misses: list[tuple[Rule, list[FieldCheck]]]  # earlier rules failing on one field

    def as_dict(self) -> dict[str, object]:
        rule = self.decision.rule
        return {
            "verdict": self.decision.verdict.value,
            "why": self.decision.why,
            "rule": None if rule is None else {"name": rule.name, "line": rule.line,
                                               "action": rule.action.value},
            "direction": self.direction.value,
            "packet": describe_packet(self.packet),
            "matched": [c.__dict__ for c in self.matched],
            "near_misses": [
                {"rule": r.name, "line": r.line,
                 "failed": [c.__dict__ for c in checks if not c.ok]}
                for r, checks in self.near_misses
            ],
        }


def explain(policy: Policy, packet: Packet, direction: Direction, max_misses: int = 5
            ) -> Explanation:
    decision = evaluate(policy, packet, direction)
    matched = check_fields(decision.rule, packet) if decision.rule is not None else []
    stop = decision.rule.index if decision.rule is not None else len(policy.rules)
    misses: list[tuple[Rule, list[FieldCheck]]] = []
    for rule in policy.rules[:stop]:
        if rule.direction is not direction or len(misses) >= max_misses:
            continue
        checks = check_fields(rule, packet)
        failed = [c for c in checks if not c.ok]
        if len(failed) == 1 and len(checks) > 1:
            misses.append((rule, checks))
    assert decision.rule is None or rule_matches(decision.rule, packet)
    return Explanation(decision, packet, direction, matched, misses)
