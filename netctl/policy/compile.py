"""Compile a Policy into a MapPlan: per-shape slots, classes and one rule trie.

Pure: no bcc, no pyroute2, no root, no I/O.  Deterministic: the same policy and limits give
an equal plan.  docs/classification.md explains the layout; in short:

* A rule's *shape* is the set of fields it gives (``FIELD_*`` bits; ports and ICMP types
  imply PROTO).  Rules of one shape share a slot; at most ``limits.shapes`` slots are used,
  more distinct shapes are merged by widening SRC/DST/PROTO (never the L4 fields).
* Per slot, one field is looked up directly: an address (src or dst; with both, the one
  with more distinct prefixes), or dport where port ranges would otherwise cut the
  address's entries into many classes.  Every other field falls into equivalence classes: two values
  are in one class when exactly the same rules of that slot match them there (the other
  address through a class trie, ports and ICMP type/code through interval arrays).  Class 0
  is "no rule of this slot matches", which lets the datapath skip the slot.
* ``rule_table`` is one LPM trie for all slots: its key is a header (generation, slot,
  direction, family, protocol, the classes) followed by the direct field's prefix, and its
  value the first rule whose prefix covers that entry's prefix (values propagated down the
  prefix chain), so one longest-prefix lookup per slot gives the slot's first matching
  rule.  A packet costs a fixed number of lookups whatever the number of rules.

Rules are judged from their fields exactly as `netctl.policy.evaluate` does; the IP
versions a rule can match are derived from those fields (they equal ``Rule.families`` for
any policy the loader builds).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from ..abi import (
    CFG_ALLOW_NDP,
    CFG_CLASSIFY,
    CFG_CT_ICMP,
    CFG_CT_TCP_CLOSING,
    CFG_CT_TCP_ESTABLISHED,
    CFG_CT_TCP_UNCONFIRMED,
    CFG_CT_UDP,
    CFG_DEFAULT_EGRESS,
    CFG_DEFAULT_INGRESS,
    CFG_DIRECT_DST,
    CFG_DIRECT_PORT,
    CFG_EVENT_SAMPLE,
    CFG_FLOW_CACHE,
    CFG_ROUTES,
    CFG_SHAPES,
    CFG_SIZE,
    CFG_SLOTS_EGRESS,
    CFG_SLOTS_INGRESS,
    CFG_STATEFUL,
    CLASSIFY_DST,
    CLASSIFY_SRC,
    DIR_EGRESS,
    DIR_INGRESS,
    FIELD_DPORT,
    FIELD_DST,
    FIELD_ICMP,
    FIELD_PROTO,
    FIELD_SPORT,
    FIELD_SRC,
    FLAG_LOG,
    FLOW_CACHE_MODES,
    L4_FIELDS,
    MAX_SHAPES,
)
from ..errors import CompileError, MapFullError
from ..gcpause import without_gc
from .compile_classes import (
    _ACTIONS,
    _DIRECTIONS,
    _ICMP_PROTO_OF,
    _T,
    AddressPart,
    Inverted,
    Prefixes,
    Ranges,
    _address_classes,
    _count,
    _Info,
    _value_classes,
)
from .compile_trie import (
    DIRECT_CHOICES,
    _direct_fields,
    _rule_trie,
)
from .model import (
    ICMP_PROTOS,
    PORT_PROTOS,
    AddressItem,
    Direction,
    Policy,
    PortRange,
    PrefixSet,
    Rule,
    icmp_ranges,
)
from .plan import Limits, MapPlan


def compile_fitting(policy: Policy, limits: Limits = Limits(),  # noqa: B008
                    max_entries: int | None = None) -> MapPlan:
    """``compile_policy`` into ``limits``, grown where the policy needs more room (each
    capacity to the next power of two that holds it, up to its ceiling, or to
    ``max_entries`` when that is lower).  A need past that, or one no capacity names, is
    raised as the MapFullError it is."""
    while True:
        try:
            return compile_policy(policy, limits)
        except MapFullError as exc:
            if max_entries is not None and exc.needed > max_entries:
                raise MapFullError(f"{exc}; --max-entries allows {max_entries}", exc.limit,
                                   exc.needed) from None
            grown = limits.grown(exc.limit, exc.needed) if exc.limit else None
            if grown is None or grown == limits:
                raise
            limits = grown


@without_gc
def compile_policy(policy: Policy, limits: Limits = Limits(),  # noqa: B008
                   direct: str = "auto") -> MapPlan:
    """The plan of ``policy`` within ``limits``.  ``direct`` chooses, for slots that could
    be keyed by the destination port, whether they are: "auto" (when it writes far fewer
    entries), "port" or "address" (tests and the benchmark compare them)."""
    if direct not in DIRECT_CHOICES:
        raise CompileError(f"direct: {direct!r} is not one of {', '.join(DIRECT_CHOICES)}")
    rules = policy.rules
    if len(rules) > limits.rules:
        raise MapFullError(f"rules: needs {len(rules)} entries, capacity {limits.rules}",
                           "rules", len(rules))
    intern: dict[Any, Any] = {}   # each shared part, as itself
    infos: list[_Info] = []
    for position, rule in enumerate(rules):
        if rule.index != position:
            raise CompileError(f"rule {rule.name!r} has index {rule.index} at position "
                               f"{position}")
        info = _rule_info(rule, intern)
        if info is not None:
            infos.append(info)

    shape_of, groups = _assign_shapes(infos, limits.shapes)
    shapes = sorted(groups)
    slot_of = {mask: slot for slot, mask in enumerate(shapes)}
    slot_rules: list[list[_Info]] = [[] for _ in shapes]
    for info in infos:
        slot_rules[slot_of[shape_of[info.mask]]].append(info)

    tables: dict[str, dict[Any, Any]] = {}
    direct_fields = _direct_fields(shapes, slot_rules, direct)
    # inverted indexes: (slot, field, sub) -> {rule index: class id or [class ids]}
    inverted: Inverted = defaultdict(dict)
    for field, prefix in ((FIELD_SRC, "src"), (FIELD_DST, "dst")):
        for family in (4, 6):
            name = f"{prefix}_v{family}"
            tables[name] = _address_classes(name, field, family, shapes, slot_rules, limits,
                                            inverted, direct_fields)
    index: dict[int, int] | int   # an interval index here, a route's index below
    for field, name in ((FIELD_SPORT, "sport"), (FIELD_DPORT, "dport"), (FIELD_ICMP, "icmp")):
        capacity = limits.icmp_intervals if field == FIELD_ICMP else limits.port_intervals
        index, classes = _value_classes(name, field, shapes, slot_rules, capacity, inverted,
                                        "icmp_intervals" if field == FIELD_ICMP
                                        else "port_intervals", direct_fields)
        tables[f"{name}_interval"] = index
        tables[f"{name}_classes"] = classes
    tables["rule_table"] = _rule_trie(shapes, direct_fields, slot_rules, inverted, limits)

    slots_by_dir = [0, 0]
    for slot, members in enumerate(slot_rules):
        for info in members:
            slots_by_dir[info.direction] |= 1 << slot
    config = [0] * CFG_SIZE
    config[CFG_DEFAULT_INGRESS] = _ACTIONS[policy.default_ingress]
    config[CFG_DEFAULT_EGRESS] = _ACTIONS[policy.default_egress]
    config[CFG_ALLOW_NDP] = int(policy.allow_ndp)
    ct = policy.conntrack
    config[CFG_STATEFUL] = int(policy.stateful)
    config[CFG_CT_TCP_ESTABLISHED] = ct.tcp_established
    config[CFG_CT_TCP_CLOSING] = ct.tcp_closing
    config[CFG_CT_UDP] = ct.udp
    config[CFG_CT_ICMP] = ct.icmp
    config[CFG_CT_TCP_UNCONFIRMED] = ct.tcp_unconfirmed
    if len(policy.routes) > limits.routes:
        raise MapFullError(f"routes: needs {len(policy.routes)} entries, capacity "
                           f"{limits.routes}", "routes", len(policy.routes))
    config[CFG_ROUTES] = len(policy.routes)
    config[CFG_EVENT_SAMPLE] = policy.log_sample
    config[CFG_FLOW_CACHE] = FLOW_CACHE_MODES[policy.flow_cache]
    for name in ("routes_v4", "routes_v6"):
        tables[name] = {}
    for index, route in enumerate(policy.routes):
        tables[f"routes_v{route.dst.version}"][
            (route.dst.prefixlen, int(route.dst.network_address))] = index
    config[CFG_SLOTS_INGRESS] = slots_by_dir[DIR_INGRESS]
    config[CFG_SLOTS_EGRESS] = slots_by_dir[DIR_EGRESS]
    for slot, mask in enumerate(shapes):
        config[CFG_SHAPES + slot] = mask
        if direct_fields[slot] == FIELD_DST:
            config[CFG_DIRECT_DST] |= 1 << slot
        elif direct_fields[slot] == FIELD_DPORT:
            config[CFG_DIRECT_PORT] |= 1 << slot
        for field, bit in ((FIELD_SRC, CLASSIFY_SRC), (FIELD_DST, CLASSIFY_DST)):
            if mask & field and direct_fields[slot] != field:
                config[CFG_CLASSIFY] |= bit
    pad = MAX_SHAPES - len(shapes)
    return MapPlan(
        limits=limits,
        shapes=tuple(shapes) + (0,) * pad,
        shape_members=tuple(tuple(sorted(groups[m])) for m in shapes) + ((),) * pad,
        rule_names=tuple(r.name for r in rules),
        config=tuple(config),
        rules=tuple((_ACTIONS[r.action], FLAG_LOG if r.log else 0) for r in rules),
        conntrack_size=ct.size,
        tables=tables,
    )


# ---- rules -------------------------------------------------------------------------------


def _rule_info(rule: Rule, intern: dict[Any, Any]) -> _Info | None:
    """The rule in integers, or None when it can match no packet at all."""
    ports = rule.sport is not None or rule.dport is not None
    icmp = rule.has_icmp
    if ports and icmp:
        return None  # ports never match ICMP
    src = _prefixes(rule.src)
    dst = _prefixes(rule.dst)
    protos: list[tuple[int, tuple[int, ...] | None]] = []
    icmp_types: list[tuple[int, Ranges]] = []
    for family in (4, 6):
        if (src is not None and not src[family == 6]) or (
                dst is not None and not dst[family == 6]):
            continue
        if icmp:
            proto = _ICMP_PROTO_OF[family]
            if rule.proto is not None and proto not in rule.proto:
                continue
            ranges = icmp_ranges(rule, family)
            if not ranges:
                continue
            icmp_types.append((family, ranges))
            protos.append((family, (proto,)))
        elif ports:
            given = PORT_PROTOS if rule.proto is None else PORT_PROTOS.intersection(rule.proto)
            if not given:
                continue
            protos.append((family, tuple(sorted(given))))
        elif rule.proto is None:
            protos.append((family, None))
        else:
            # icmp exists only in IPv4, icmpv6 only in IPv6, whatever the number says
            ok = sorted({p for p in rule.proto if ICMP_PROTOS.get(p, family) == family})
            if not ok:
                continue
            protos.append((family, tuple(ok)))
    sport = _ranges(rule.sport)
    dport = _ranges(rule.dport)
    if not protos or sport == () or dport == ():
        return None
    if len(protos) == 1:  # drop items of a family the rule cannot match
        keep = protos[0][0] == 4
        if src is not None:
            src = (src[0], ()) if keep else ((), src[1])
        if dst is not None:
            dst = (dst[0], ()) if keep else ((), dst[1])
    mask = ((FIELD_SRC if src is not None else 0) | (FIELD_DST if dst is not None else 0)
            | (FIELD_PROTO if rule.proto is not None or ports or icmp else 0)
            | (FIELD_SPORT if sport is not None else 0)
            | (FIELD_DPORT if dport is not None else 0) | (FIELD_ICMP if icmp else 0))

    def shared(value: _T) -> _T:
        return value if value is None else intern.setdefault(value, value)

    return _Info(rule.index, rule.name, _DIRECTIONS[Direction(rule.direction)], mask,
                 shared(tuple(protos)), src, dst, shared(sport), shared(dport),
                 shared(tuple(icmp_types)) if icmp else None)


_NONE: Prefixes = ()


def _prefixes(items: tuple[AddressItem, ...] | None) -> AddressPart | None:
    """An address field as (IPv4 prefixes, IPv6 prefixes), each ((prefixlen, network), ...)
    sorted and unique.  A field that is exactly one set is the set's own tuples (a million
    prefixes are neither copied nor sorted again)."""
    if items is None:
        return None
    if len(items) == 1:
        item = items[0]
        if type(item) is PrefixSet:
            return item.v4, item.v6
        prefix = ((item.prefixlen, int(item.network_address)),)
        return (prefix, _NONE) if item.version == 4 else (_NONE, prefix)
    v4: set[tuple[int, int]] = set()
    v6: set[tuple[int, int]] = set()
    for item in items:
        if type(item) is PrefixSet:
            v4.update(item.v4)
            v6.update(item.v6)
        else:
            (v4 if item.version == 4 else v6).add((item.prefixlen, int(item.network_address)))
    return tuple(sorted(v4)), tuple(sorted(v6))


def _ranges(ranges: tuple[PortRange, ...] | None) -> Ranges | None:
    if ranges is None:
        return None
    out = sorted({(r.lo, r.hi) for r in ranges})
    for lo, hi in out:
        if not 0 <= lo <= hi <= 65535:
            raise CompileError(f"bad port range {lo}-{hi}")
    return tuple(out)


# ---- shapes ------------------------------------------------------------------------------


def _assign_shapes(infos: list[_Info], slots: int
                   ) -> tuple[dict[int, int], dict[int, set[int]]]:
    """Map every rule mask to the shape mask of its slot, merging when there are too many.

    Merging only joins masks with the same L4 bits and widens SRC/DST/PROTO: a non-first
    fragment must still match rules without L4 fields, and ports never match other
    protocols.  Greedy: repeatedly merge the pair whose estimated rule-table growth is least.
    """
    by_mask: dict[int, list[_Info]] = defaultdict(list)
    for info in infos:
        by_mask[info.mask].append(info)
    groups: dict[int, set[int]] = {mask: {mask} for mask in by_mask}
    if len(groups) <= slots:
        return {m: m for m in groups}, groups
    variants = {m & L4_FIELDS for m in groups}
    if len(variants) > slots:
        raise CompileError(f"the policy needs at least {len(variants)} shape slots (kinds of "
                           f"port/ICMP fields), the datapath has {slots}")
    weight: dict[int, int] = {}
    # (mask, field) -> the field's distinct prefixes in the mask's rules: (IPv4, IPv6)
    values: dict[tuple[int, int], tuple[set[tuple[int, int]], set[tuple[int, int]]]] = {}
    members: list[_Info] | set[int]   # a mask's rules here, a shape's masks below
    for mask, members in by_mask.items():
        total = 0
        srcs: tuple[set[tuple[int, int]], set[tuple[int, int]]] = (set(), set())
        dsts: tuple[set[tuple[int, int]], set[tuple[int, int]]] = (set(), set())
        for info in members:
            n = 1
            for part, seen in ((info.src, srcs), (info.dst, dsts)):
                if part is not None:
                    n *= _count(part)
                    seen[0].update(part[0])
                    seen[1].update(part[1])
            n *= sum(len(p) if p is not None else 256 for _, p in info.protos)
            for ranges in (info.sport, info.dport):
                if ranges is not None:
                    n *= len(ranges)
            total += n
        weight[mask] = total
        values[(mask, FIELD_SRC)] = srcs
        values[(mask, FIELD_DST)] = dsts

    def estimate(shape: int, members: set[int]) -> int:
        widen: dict[int, int] = {}
        for field in (FIELD_SRC, FIELD_DST):
            seen4: set[tuple[int, int]] = set()
            seen6: set[tuple[int, int]] = set()
            for m in members:
                if m & field:
                    seen4 |= values[(m, field)][0]
                    seen6 |= values[(m, field)][1]
            widen[field] = len(seen4) + len(seen6) + 1
        widen[FIELD_PROTO] = 512
        total = 0
        for m in members:
            n = weight[m]
            for field in (FIELD_SRC, FIELD_DST, FIELD_PROTO):
                if shape & field and not m & field:
                    n *= widen[field]
            total += n
        return total

    while len(groups) > slots:
        best: tuple[int, int, int, int] | None = None
        for a, b in combinations(sorted(groups), 2):
            if a & L4_FIELDS != b & L4_FIELDS:
                continue
            merged = a | b
            members = groups[a] | groups[b] | groups.get(merged, set())
            cost = (estimate(merged, members) - estimate(a, groups[a]) - estimate(b, groups[b])
                    - (estimate(merged, groups[merged])
                       if merged in groups and merged not in (a, b) else 0))
            candidate = (cost, merged, a, b)
            if best is None or candidate < best:
                best = candidate
        assert best is not None  # variants <= slots guarantees a mergeable pair
        _, merged, a, b = best
        members = groups.pop(a) | groups.pop(b) | groups.pop(merged, set())
        groups[merged] = members
    shape_of = {m: shape for shape, members in groups.items() for m in members}
    return shape_of, groups
