"""The rule trie for the compiler (netctl/policy/compile.py): per slot, the header of classes
and the directly looked-up address, each entry holding the first rule that covers it."""

from __future__ import annotations

from itertools import product

from ..abi import (
    FIELD_DPORT,
    FIELD_DST,
    FIELD_ICMP,
    FIELD_PROTO,
    FIELD_SPORT,
    FIELD_SRC,
    ICMP_SLOTS,
    L4_FIELDS,
    PORT_SLOTS,
)
from ..errors import MapFullError
from .compile_classes import (
    _ALL_PROTOS,
    _BITS,
    Classes,
    Inverted,
    Prefixes,
    _classes_of,
    _count,
    _Info,
)
from .plan import Limits

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
