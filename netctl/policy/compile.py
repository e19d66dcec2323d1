"""Compile a Policy into a MapPlan: per-shape slots, classes and one rule trie.

Pure: no bcc, no pyroute2, no root, no I/O.  Deterministic: the same policy and limits give
an equal plan.  docs/classification.md explains the layout; in short:

* A rule's *shape* is the set of fields it gives (``FIELD_*`` bits; ports and ICMP types
  imply PROTO).  Rules of one shape share a slot; at most ``limits.shapes`` slots are used,
  more distinct shapes are merged by widening SRC/DST/PROTO (never the L4 fields).
* Per slot, one address field is looked up directly (src or dst; with both, the one with
  more distinct prefixes).  Every other field falls into equivalence classes: two values
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

import hashlib
import sys
from array import array
from collections import defaultdict
from collections.abc import Collection, Iterable
from itertools import combinations, product
from typing import Any, TypeVar

from ..abi import (
    ACTION_ACCEPT,
    ACTION_DROP,
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
    ICMP_SLOTS,
    L4_FIELDS,
    MAX_SHAPES,
    PORT_SLOTS,
)
from ..errors import CompileError, MapFullError
from .model import (
    ICMP_PROTOS,
    PORT_PROTOS,
    Action,
    AddressItem,
    Direction,
    Policy,
    PortRange,
    PrefixSet,
    Rule,
    icmp_ranges,
)
from .plan import Limits, MapPlan

_BITS = {4: 32, 6: 128}
_ALL_PROTOS = tuple(range(256))
_ICMP_PROTO_OF = {family: proto for proto, family in ICMP_PROTOS.items()}  # 4 -> 1, 6 -> 58
_U32 = 0xFFFFFFFF
_DIRECTIONS = {Direction.INGRESS: DIR_INGRESS, Direction.EGRESS: DIR_EGRESS}
_ACTIONS = {Action.ACCEPT: ACTION_ACCEPT, Action.DROP: ACTION_DROP}

_T = TypeVar("_T")
Prefixes = tuple[tuple[int, int], ...]     # ((prefixlen, network int), ...)
AddressPart = tuple[Prefixes, Prefixes]    # an address field: (IPv4, IPv6)
Ranges = tuple[tuple[int, int], ...]       # ((lo, hi), ...): ports, or ICMP type << 8 | code
Protos = tuple[tuple[int, tuple[int, ...] | None], ...]   # ((family, protocols or None), ...)
IcmpTypes = tuple[tuple[int, Ranges], ...]                 # ((family, ranges), ...)
ClassIndex = dict[int, int | list[int]]    # rule index -> its class id (an int), or ids
Inverted = dict[tuple[int, int, int], ClassIndex]   # (slot, field, sub) -> ClassIndex
Classes = tuple[int, ...] | list[int]      # one rule's class ids in one field


class _Info:
    """What the compiler needs of one live rule, in integers (shared parts interned)."""

    __slots__ = ("index", "name", "direction", "mask", "protos", "src", "dst", "sport",
                 "dport", "icmp")

    def __init__(self, index: int, name: str, direction: int, mask: int, protos: Protos,
                 src: AddressPart | None, dst: AddressPart | None, sport: Ranges | None,
                 dport: Ranges | None, icmp: IcmpTypes | None) -> None:
        self.index = index
        self.name = name
        self.direction = direction
        self.mask = mask          # the rule's own shape mask
        self.protos = protos      # ((family, protocols or None = any), ...) it can match
        self.src = src            # None or (IPv4, IPv6): ((prefixlen, network int), ...) each
        self.dst = dst            # sorted, unique (a set's own tuples when it is the field)
        self.sport = sport        # None or ((lo, hi), ...), sorted, unique
        self.dport = dport
        self.icmp = icmp          # None or ((family, ((type, type), ...)), ...)

    def families(self) -> tuple[int, ...]:
        return tuple(f for f, _ in self.protos)


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


def compile_policy(policy: Policy, limits: Limits = Limits()) -> MapPlan:  # noqa: B008
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
    direct = _direct_fields(shapes, slot_rules)
    # inverted indexes: (slot, field, sub) -> {rule index: class id or [class ids]}
    inverted: Inverted = defaultdict(dict)
    for field, prefix in ((FIELD_SRC, "src"), (FIELD_DST, "dst")):
        for family in (4, 6):
            name = f"{prefix}_v{family}"
            tables[name] = _address_classes(name, field, family, shapes, slot_rules, limits,
                                            inverted, direct)
    index: dict[int, int] | int   # an interval index here, a route's index below
    for field, name in ((FIELD_SPORT, "sport"), (FIELD_DPORT, "dport"), (FIELD_ICMP, "icmp")):
        capacity = limits.icmp_intervals if field == FIELD_ICMP else limits.port_intervals
        index, classes = _value_classes(name, field, shapes, slot_rules, capacity, inverted,
                                        "icmp_intervals" if field == FIELD_ICMP
                                        else "port_intervals")
        tables[f"{name}_interval"] = index
        tables[f"{name}_classes"] = classes
    tables["rule_table"] = _rule_trie(shapes, direct, slot_rules, inverted, limits)

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
        if direct[slot] == FIELD_DST:
            config[CFG_DIRECT_DST] |= 1 << slot
        for field, bit in ((FIELD_SRC, CLASSIFY_SRC), (FIELD_DST, CLASSIFY_DST)):
            if mask & field and direct[slot] != field:
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


def _count(part: AddressPart) -> int:
    return len(part[0]) + len(part[1])


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


# ---- class ids ---------------------------------------------------------------------------
#
# A class is a set of *groups*: the rules of one slot that give identical items (prefixes of
# one family, port ranges of one protocol, ICMP types of one family) in one field.  Groups
# partition the slot's rules, so equal group sets are equal rule sets and the classes are
# the coarsest possible.  A class id is a hash of its groups' items, so it stays the same
# when rules come and go as long as its groups remain: an edit to one rule renumbers only
# the classes whose groups it creates or empties, and a diff stays small.


def _digest_bytes(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _digest_ints(values: Iterable[int]) -> int:
    data = array("Q", values)
    if sys.byteorder != "little":
        data.byteswap()
    return _digest_bytes(data.tobytes())


class _Groups:
    """The groups of one namespace (slot, field, family or protocol slot)."""

    __slots__ = ("ids", "items", "rules", "_digests")

    def __init__(self) -> None:
        self.ids: dict[Ranges, int] = {}
        self.items: list[Ranges] = []   # a group's prefixes or ranges
        self.rules: list[list[int]] = []
        self._digests: dict[int, int] = {}

    def add(self, items: Ranges, rule: int) -> int:
        gid = self.ids.get(items)
        if gid is None:
            gid = self.ids[items] = len(self.items)
            self.items.append(items)
            self.rules.append([])
        self.rules[gid].append(rule)
        return gid

    def digest(self, gid: int) -> int:
        d = self._digests.get(gid)
        if d is None:
            d = self._digests[gid] = _digest_bytes(repr(self.items[gid]).encode())
        return d

    def class_ids(self, sets: Iterable[tuple[int, ...]], index: ClassIndex
                  ) -> dict[tuple[int, ...], int]:
        """Stable u32 ids (never 0) for group sets (sorted gid tuples), collisions resolved
        by probing in (hash, content) order; records in ``index`` each rule's class ids
        (an int for one, else a list)."""
        keyed: list[tuple[int, int, tuple[int, ...]]] = []
        for gids in sets:
            if len(gids) == 1:
                h = self.digest(gids[0])
            else:
                h = _digest_ints(sorted(self.digest(g) for g in gids))
            keyed.append((h % _U32 + 1, h, gids))
        keyed.sort()  # gids only break ties of equal 64-bit hashes
        taken: set[int] = set()
        out: dict[tuple[int, ...], int] = {}
        for cid, _, gids in keyed:
            while cid in taken:
                cid = cid % _U32 + 1
            taken.add(cid)
            out[gids] = cid
            for g in gids:
                for r in self.rules[g]:
                    have = index.get(r)
                    if have is None:
                        index[r] = cid
                    elif type(have) is int:
                        index[r] = [have, cid]
                    else:
                        have.append(cid)  # type: ignore[union-attr]  # not an int: a list
        return out


def _classes_of(index: ClassIndex, rule: int) -> Classes:
    have = index.get(rule, ())
    return (have,) if type(have) is int else have  # type: ignore[return-value]  # else: ids


def _index_ids(vectors: Collection[tuple[int, ...]], capacity: int, name: str,
               limit: str | None = None) -> dict[tuple[int, ...], int]:
    """Ids 1..capacity-1 for distinct non-zero class vectors, hashed then probed in order."""
    if len(vectors) > capacity - 1:
        raise MapFullError(f"{name}: needs {len(vectors) + 1} entries, capacity {capacity}",
                           limit, len(vectors) + 1)
    room = capacity - 1
    keyed = sorted((_digest_ints(v) % room + 1, v) for v in vectors)
    taken: set[int] = set()
    out: dict[tuple[int, ...], int] = {}
    for iid, v in keyed:
        while iid in taken:
            iid = iid % room + 1
        taken.add(iid)
        out[v] = iid
    return out


# ---- addresses ---------------------------------------------------------------------------

_ANY = ((0, 0),)  # the /0 a widened field stands for


def _address_classes(name: str, field: int, family: int, shapes: list[int],
                     slot_rules: list[list[_Info]], limits: Limits, inverted: Inverted,
                     direct: list[int]) -> dict[tuple[int, int], tuple[int, ...]]:
    """One LPM trie: every prefix a slot classifies on this field, valued with each slot's
    class there (slots that look this field up directly in the rule trie have none).

    A prefix's set for a slot is the slot's groups with an item covering it (the prefix
    itself or a shorter one), so the longest match decides for every slot at once.
    """
    own: dict[tuple[int, int], int | list[int]] = {}  # prefix -> gid * 8 + slot (or a list)
    groups = [_Groups() for _ in shapes]
    for slot, mask in enumerate(shapes):
        if not mask & field or direct[slot] == field:
            continue
        for info in slot_rules[slot]:
            if family not in info.families():
                continue
            part = info.src if field == FIELD_SRC else info.dst
            items = _ANY if part is None else part[family == 6]
            gid = groups[slot].add(items, info.index)
            if len(groups[slot].rules[gid]) == 1:
                code = gid * MAX_SHAPES + slot
                for item in items:
                    have = own.get(item)
                    if have is None:
                        own[item] = code
                    elif type(have) is int:
                        own[item] = [have, code]
                    else:
                        have.append(code)  # type: ignore[union-attr]  # not an int: a list
    if len(own) > limits.lpm_entries:
        raise MapFullError(f"{name}: needs {len(own)} entries, capacity {limits.lpm_entries}",
                           "lpm_entries", len(own))
    bits = _BITS[family]
    # Per slot, a prefix's group set (sorted gids; None: no group of the slot covers it).
    intern: list[dict[tuple[int, ...], tuple[int, ...]]] = [{} for _ in shapes]
    empty: list[tuple[int, ...] | None] = [None] * len(shapes)
    stack: list[tuple[int, int, list[tuple[int, ...] | None]]] = []
    rows: list[tuple[tuple[int, int], list[tuple[int, ...] | None]]] = []
    for plen, net in sorted(own, key=lambda k: (k[1], k[0])):
        while stack:
            top_len, top_net, _ = stack[-1]
            shift = bits - top_len
            if top_len <= plen and (net >> shift) == (top_net >> shift):
                break
            stack.pop()
        sets = list(stack[-1][2]) if stack else list(empty)
        codes = own[(plen, net)]
        by_slot: dict[int, list[int]] = {}
        for code in (codes,) if type(codes) is int else codes:  # type: ignore[union-attr]  # else: a list
            by_slot.setdefault(code % MAX_SHAPES, []).append(code // MAX_SHAPES)
        for slot, gids in by_slot.items():
            cur = sets[slot]
            if cur is None:
                new = tuple(sorted(gids))
            elif all(g in cur for g in gids):
                continue
            else:
                new = tuple(sorted(set(cur).union(gids)))
            sets[slot] = intern[slot].setdefault(new, new)
        stack.append((plen, net, sets))
        rows.append(((plen, net), sets))
    del own
    ids = [groups[slot].class_ids(intern[slot], inverted[(slot, field, family)])
           for slot in range(len(shapes))]
    pad = (0,) * (MAX_SHAPES - len(shapes))
    return {key: tuple(ids[slot][s] if s is not None else 0 for slot, s in enumerate(sets)) + pad
            for key, sets in rows}


# ---- ports and ICMP types ----------------------------------------------------------------


def _value_classes(name: str, field: int, shapes: list[int], slot_rules: list[list[_Info]],
                   capacity: int, inverted: Inverted, limit: str
                   ) -> tuple[dict[int, int], dict[int, tuple[int, ...]]]:
    """Interval index and class-vector arrays for sport, dport or ICMP type.

    Per sub-slot (tcp/udp, or ICMP/ICMPv6) the value axis is cut at every range boundary;
    each elementary interval gets, per slot, the set of that slot's groups covering it, so
    the sweep costs intervals x distinct range lists, not intervals x rules.
    """
    domain = 65536   # ports, or ICMP type << 8 | code
    subs = ((4, 0), (6, 1)) if field == FIELD_ICMP else ((6, 0), (17, 1))
    # (sub, lo, hi_exclusive, per slot its class id or 0)
    intervals: list[tuple[int, int, int, tuple[int, ...]]] = []
    for key, sub in subs:
        groups = [_Groups() for _ in shapes]
        for slot, mask in enumerate(shapes):
            if not mask & field:
                continue
            for info in slot_rules[slot]:
                ranges = _field_ranges(info, field, key)
                if ranges:
                    groups[slot].add(ranges, info.index)
        events: dict[int, list[tuple[tuple[int, int], int]]] = defaultdict(list)
        g: _Groups | tuple[int, int]   # a slot's groups here, a (slot, gid) below
        for slot, g in enumerate(groups):
            for gid, ranges in enumerate(g.items):
                for lo, hi in ranges:
                    events[lo].append(((slot, gid), 1))
                    if hi + 1 < domain:
                        events[hi + 1].append(((slot, gid), -1))
        if not events:
            continue
        bounds = sorted(set(events) | {0})
        active: dict[tuple[int, int], int] = defaultdict(int)
        memo: dict[frozenset[tuple[int, int]], list[tuple[int, ...] | None]] = {}
        cuts: list[tuple[int, int, list[tuple[int, ...] | None]]] = []
        for i, lo in enumerate(bounds):
            for g, delta in events.get(lo, ()):
                active[g] += delta
                if not active[g]:
                    del active[g]
            hi = bounds[i + 1] if i + 1 < len(bounds) else domain
            state = frozenset(active)
            sets = memo.get(state)
            if sets is None:
                by_slot: dict[int, list[int]] = defaultdict(list)
                for slot, gid in state:
                    by_slot[slot].append(gid)
                sets = memo[state] = [None] * len(shapes)
                for slot, gids in by_slot.items():
                    sets[slot] = tuple(sorted(gids))
            cuts.append((lo, hi, sets))
        ids = [groups[slot].class_ids({sets[slot] for sets in memo.values()  # type: ignore[misc]  # None: filtered
                                       if sets[slot] is not None},
                                      inverted[(slot, field, sub)])
               for slot in range(len(shapes))]
        pad = (0,) * (MAX_SHAPES - len(shapes))
        for lo, hi, sets in cuts:
            vector = tuple(ids[slot][s] if s is not None else 0
                           for slot, s in enumerate(sets)) + pad
            intervals.append((sub, lo, hi, vector))
    interval_ids = _index_ids({v for *_, v in intervals if any(v)}, capacity,
                              f"{name}_classes", limit)
    index: dict[int, int] = {}
    for sub, lo, hi, vector in intervals:
        iid = interval_ids.get(vector, 0)
        if iid:
            index.update(dict.fromkeys(range(sub * domain + lo, sub * domain + hi), iid))
    classes = {iid: v for v, iid in interval_ids.items()}
    return index, classes


def _field_ranges(info: _Info, field: int, key: int) -> Ranges | None:
    if field == FIELD_ICMP:
        return dict(info.icmp).get(key) if info.icmp else None
    ranges = info.sport if field == FIELD_SPORT else info.dport
    if ranges is None:
        return None
    if any(p is not None and key in p for _, p in info.protos):
        return ranges
    return None


# ---- rule trie ---------------------------------------------------------------------------
#
# Per slot, one address field is looked up directly, not through classes: the rule trie's key
# is a header of everything else (slot, direction, family, protocol, the other address
# field's class, the port or ICMP classes) followed by that address, so the trie's longest
# match on the address, under a fully matched header, finds the rules of that header whose
# prefix covers it.  Each entry holds the first rule among those whose prefix covers the
# entry's own prefix (its value is propagated down from shorter prefixes), so the longest
# match alone gives the first matching rule.  A broad prefix therefore costs one entry per
# header, not one per narrower class beneath it, which a cross product of classes would.


def _direct_fields(shapes: list[int], slot_rules: list[list[_Info]]) -> list[int]:
    """Per slot, the address field looked up directly (FIELD_SRC, FIELD_DST or 0).  With both
    in the shape, the one with more distinct prefixes: the other's classes then multiply
    fewer entries."""
    out: list[int] = []
    for slot, mask in enumerate(shapes):
        if mask & FIELD_SRC and mask & FIELD_DST:
            out.append(FIELD_DST if _distinct(slot_rules[slot], "dst") >
                       _distinct(slot_rules[slot], "src") else FIELD_SRC)
        else:
            out.append(mask & (FIELD_SRC | FIELD_DST))
    return out


def _distinct(infos: list[_Info], name: str) -> int:
    """Distinct prefixes the rules give in one address field (both families)."""
    parts = [getattr(info, name) for info in infos if getattr(info, name) is not None]
    if len(parts) == 1:
        return _count(parts[0])   # already unique (a big set is not copied)
    return sum(len(set().union(*(p[i] for p in parts))) for i in (0, 1))


_ANY_PREFIX = ((0, 0),)


def _direct_prefixes(info: _Info, field: int, family: int) -> Prefixes:
    part = info.src if field == FIELD_SRC else info.dst if field == FIELD_DST else None
    if part is None:
        return _ANY_PREFIX  # the field is not in the shape, or widened: any address
    return part[family == 6]


def _rule_trie(shapes: list[int], direct: list[int], slot_rules: list[list[_Info]],
               inverted: Inverted, limits: Limits) -> dict[tuple[int, ...], int]:
    """Every (header, prefix) some rule matches -> the first rule matching it or a shorter
    prefix of the same header.  Keys: (slot, direction, family, proto, other address class,
    sport class, l4 class, prefix length, network)."""
    capacity = limits.rule_table
    buckets: dict[tuple[int, ...], dict[tuple[int, int], int]] = {}
    mixed: set[tuple[int, ...]] = set()   # buckets that more than one rule wrote into
    total = 0
    added: dict[int, int] = {}
    for slot, mask in enumerate(shapes):
        field = direct[slot]
        for info in slot_rules[slot]:  # in rule order: the first writer of a key wins
            before = total
            index = info.index
            for family, proto, srcs, dsts, sports, l4s in _combos(mask, slot, info, inverted,
                                                                  field):
                others = srcs if field != FIELD_SRC else dsts
                prefixes = _direct_prefixes(info, field, family)
                for other, sp, l4 in product(others, sports, l4s):
                    key = (slot, info.direction, family, proto, other, sp, l4)
                    bucket = buckets.get(key)
                    if bucket is None:   # prefixes are unique: all of them are new
                        buckets[key] = dict.fromkeys(prefixes, index)
                        total += len(prefixes)
                        continue
                    new = [prefix for prefix in prefixes if prefix not in bucket]
                    if new:
                        bucket.update(dict.fromkeys(new, index))
                        total += len(new)
                        mixed.add(key)
            added[index] = total - before
    if total > capacity:
        worst = max(added, key=lambda i: (added[i], -i))
        name = next(x.name for rules in slot_rules for x in rules if x.index == worst)
        raise MapFullError(
            f"rule_table: needs {total} entries, capacity {capacity}; rule {name!r} "
            f"contributes the most ({added[worst]})", "rule_table", total)
    table: dict[tuple[int, ...], int] = {}
    for header, bucket in buckets.items():
        if header in mixed:   # one writer: every entry already holds its only rule
            _propagate(bucket, _BITS[header[2]])
        table.update(zip([header + prefix for prefix in bucket], bucket.values(), strict=True))
    return table


def _propagate(bucket: dict[tuple[int, int], int], bits: int) -> None:
    """Give every prefix the lowest rule index among itself and its shorter prefixes in the
    bucket.  Visiting by length, shortest first, a prefix's shorter prefixes are final, and
    the nearest one present holds the lowest index of everything above it.

    Only lengths where some prefix has a lower index than the one visited can lower it, so
    only those are probed (nearest first): a million-prefix set behind a few other rules'
    prefixes costs a probe or two per prefix, not one per length present."""
    lowest: dict[int, int] = {}   # prefix length -> the lowest rule index at that length
    by_length: dict[int, list[tuple[int, int]]] = {}
    for prefix, rule in bucket.items():
        plen = prefix[0]
        if plen in lowest:
            by_length[plen].append(prefix)
            if rule < lowest[plen]:
                lowest[plen] = rule
        else:
            lowest[plen] = rule
            by_length[plen] = [prefix]
    lengths = sorted(lowest)
    if len(lengths) < 2:
        return
    get = bucket.get
    for i, plen in enumerate(lengths[1:], 1):
        shorter = lengths[:i][::-1]
        probes_for: dict[int, list[int]] = {}   # own rule index -> lengths worth probing
        for prefix in by_length[plen]:
            own = bucket[prefix]
            probes = probes_for.get(own)
            if probes is None:
                probes = probes_for[own] = [q for q in shorter if lowest[q] < own]
            network = prefix[1]
            for q in probes:
                above = get((q, network >> (bits - q) << (bits - q) if q else 0))
                if above is not None:
                    if above < own:
                        bucket[prefix] = above
                    break


_ZERO = (0,)


def _combos(mask: int, slot: int, info: _Info, inverted: Inverted, direct: int
            ) -> list[tuple[int, int, Classes, Classes, Classes, Classes]]:
    """Per family and protocol, the class lists of one rule in its slot (0 = field absent
    or looked up directly)."""
    out: list[tuple[int, int, Classes, Classes, Classes, Classes]] = []
    l4_field = FIELD_DPORT if mask & FIELD_DPORT else FIELD_ICMP if mask & FIELD_ICMP else 0
    for family, protos in info.protos:
        srcs = _classes_of(inverted[(slot, FIELD_SRC, family)], info.index) \
            if mask & FIELD_SRC and direct != FIELD_SRC else _ZERO
        dsts = _classes_of(inverted[(slot, FIELD_DST, family)], info.index) \
            if mask & FIELD_DST and direct != FIELD_DST else _ZERO
        if not srcs or not dsts:
            continue
        if not mask & FIELD_PROTO:
            proto_list: tuple[int, ...] = _ZERO
        else:
            proto_list = _ALL_PROTOS if protos is None else protos
        if not mask & L4_FIELDS:
            out.extend((family, proto, srcs, dsts, _ZERO, _ZERO) for proto in proto_list)
            continue
        for proto in proto_list:
            sub = ICMP_SLOTS[family] if l4_field == FIELD_ICMP else PORT_SLOTS[proto]
            sports = (_classes_of(inverted[(slot, FIELD_SPORT, sub)], info.index)
                      if mask & FIELD_SPORT else _ZERO)
            l4s = _classes_of(inverted[(slot, l4_field, sub)], info.index) if l4_field else _ZERO
            if sports and l4s:
                out.append((family, proto, srcs, dsts, sports, l4s))
    return out
