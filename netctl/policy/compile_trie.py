"""The rule trie for the compiler (netctl/policy/compile.py): per slot, the header of classes
and the directly looked-up field (an address or the destination port), each entry holding
the first rule that covers it."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from functools import lru_cache
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
# Per slot, one field is looked up directly, not through classes: the rule trie's key is a
# header of everything else (slot, direction, family, protocol, the class of an address
# field, the port or ICMP classes) followed by that field, so the trie's longest match on it,
# under a fully matched header, finds the rules of that header whose prefix covers it.  The
# field is an address, or the destination port for slots whose port ranges would cut the
# address's entries into too many classes (a port range is a few port prefixes).  Each
# entry holds the first rule among those whose prefix covers the entry's own prefix (its
# value is propagated down from shorter prefixes), so the longest match alone gives the
# first matching rule.  A broad prefix therefore costs one entry per
# header, not one per narrower class beneath it, which a cross product of classes would.


DIRECT_CHOICES = ("auto", "address", "port")


def _direct_fields(shapes: list[int], slot_rules: list[list[_Info]],
                   choice: str = "auto") -> list[int]:
    """Per slot, the field looked up directly (FIELD_SRC, FIELD_DST, FIELD_DPORT or 0).

    With both addresses in the shape, the one with more distinct prefixes: the other's
    classes then multiply fewer entries.  With dport and at most one address, dport when
    that is estimated to write far fewer entries (see ``_port_direct_pays``), or always
    (``choice`` "port"), or never ("address"): the plans differ, the verdicts do not."""
    out: list[int] = []
    for slot, mask in enumerate(shapes):
        address = mask & (FIELD_SRC | FIELD_DST)
        if address == FIELD_SRC | FIELD_DST:
            out.append(FIELD_DST if _distinct(slot_rules[slot], "dst") >
                       _distinct(slot_rules[slot], "src") else FIELD_SRC)
        elif mask & FIELD_DPORT and choice != "address" and (
                choice == "port" or _port_direct_pays(slot_rules[slot], address)):
            out.append(FIELD_DPORT)
        else:
            out.append(address)
    return out


def _distinct(infos: list[_Info], name: str) -> int:
    """Distinct prefixes the rules give in one address field (both families)."""
    parts = [getattr(info, name) for info in infos if getattr(info, name) is not None]
    if len(parts) == 1:
        return _count(parts[0])   # already unique (a big set is not copied)
    return sum(len(set().union(*(p[i] for p in parts))) for i in (0, 1))


def _port_direct_pays(infos: list[_Info], address: int) -> bool:
    """Whether keying a slot's rule trie by dport writes at most half the entries that
    keying it by its address does (by ``address`` = 0: by nothing).

    Keyed by the address, each of a rule's prefixes is written once per dport class its
    ranges span, and overlapping ranges cut each other into many classes.  Keyed by the
    port, each of its ranges' port prefixes (at most 30 a range) is written once per
    address class its prefixes span (the slot's prefixes nested in them).  Both are
    estimated per rule from sorted boundaries; the lower bound of the port side (every
    prefix spans one class) is tried first, so a large set on a few ports costs nothing."""
    field = "src" if address == FIELD_SRC else "dst" if address == FIELD_DST else None
    cuts: dict[int, set[int]] = {6: set(), 17: set()}
    for info in infos:
        for proto in _port_protos(info):
            for lo, hi in info.dport or ():
                cuts[proto].update((lo, hi + 1))
    bounds = {proto: sorted(values) for proto, values in cuts.items()}
    by_address = lower = 0
    for info in infos:
        n_prefixes = _count(getattr(info, field)) if field and getattr(info, field) else 1
        ranges = info.dport or ((0, 65535),)
        for proto in _port_protos(info):
            b = bounds[proto]
            spans = sum(bisect_right(b, hi) - bisect_right(b, lo) + 1 for lo, hi in ranges)
            by_address += n_prefixes * spans
            lower += n_prefixes * len(_port_prefixes(ranges))
    if 2 * lower >= by_address:
        return False
    if field is None:
        return True
    parts = [getattr(info, field) for info in infos if getattr(info, field)]
    starts = {family: sorted({net for part in parts for _, net in part[i]})
              for family, i in ((4, 0), (6, 1))}
    by_port = 0
    for info in infos:
        part = getattr(info, field)
        spans = 0
        for family, prefixes in ((4, part[0]), (6, part[1])) if part else ((4, _ANY_PREFIX),):
            s, bits = starts[family], _BITS[family]
            for plen, net in prefixes:
                spans += max(1, bisect_left(s, net + (1 << (bits - plen))) - bisect_left(s, net))
        by_port += spans * len(_port_prefixes(info.dport or ((0, 65535),))) * len(
            _port_protos(info))
        if 2 * by_port >= by_address:
            return False
    return True


def _port_protos(info: _Info) -> tuple[int, ...]:
    """The port protocols a rule of a dport slot can match (any protocol: both)."""
    out: set[int] = set()
    for _, protos in info.protos:
        out.update(p for p in (protos or PORT_SLOTS) if p in PORT_SLOTS)
    return tuple(sorted(out))


@lru_cache(maxsize=65536)
def _port_prefixes(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """The fewest 16-bit prefixes (length, value) covering exactly the port ranges (asked
    for each rule several times, by the estimate and per header: kept)."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        while lo <= hi:
            size = lo & -lo if lo else 1 << 16
            while size > hi - lo + 1:
                size >>= 1
            out.append((16 - size.bit_length() + 1, lo))
            lo += size
    return tuple(dict.fromkeys(out))


_ANY_PREFIX = ((0, 0),)


def _direct_prefixes(info: _Info, field: int, family: int) -> Prefixes:
    """The prefixes a rule writes under its headers: of its direct address, or of its
    destination ports placed where an address would be (the top 16 of the family's bits)."""
    if field == FIELD_DPORT:
        shift = _BITS[family] - 16
        return tuple((plen, value << shift) for plen, value in
                     _port_prefixes(info.dport or ((0, 65535),)))
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
            for family, proto, others, sports, l4s in _combos(mask, slot, info, inverted,
                                                              field):
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
    if total + 1 > capacity:   # one entry of each generation is its mark (abi.codec)
        worst = max(added, key=lambda i: (added[i], -i))
        name = next(x.name for rules in slot_rules for x in rules if x.index == worst)
        raise MapFullError(
            f"rule_table: needs {total + 1} entries, capacity {capacity}; rule {name!r} "
            f"contributes the most ({added[worst]})", "rule_table", total + 1)
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
            ) -> list[tuple[int, int, Classes, Classes, Classes]]:
    """Per family and protocol, the class lists of one rule in its slot: the address field
    that is not direct, sport, dport or ICMP type (0 = field absent or looked up
    directly; at most one address field is looked up as a class)."""
    out: list[tuple[int, int, Classes, Classes, Classes]] = []
    l4_field = FIELD_DPORT if mask & FIELD_DPORT else FIELD_ICMP if mask & FIELD_ICMP else 0
    if l4_field == direct:
        l4_field = 0
    classified = mask & (FIELD_SRC | FIELD_DST) & ~direct
    for family, protos in info.protos:
        others = _classes_of(inverted[(slot, classified, family)], info.index) \
            if classified else _ZERO
        if not others:
            continue
        if not mask & FIELD_PROTO:
            proto_list: tuple[int, ...] = _ZERO
        else:
            proto_list = _ALL_PROTOS if protos is None else protos
        if not mask & L4_FIELDS:
            out.extend((family, proto, others, _ZERO, _ZERO) for proto in proto_list)
            continue
        for proto in proto_list:
            sub = ICMP_SLOTS[family] if mask & FIELD_ICMP else PORT_SLOTS[proto]
            sports = (_classes_of(inverted[(slot, FIELD_SPORT, sub)], info.index)
                      if mask & FIELD_SPORT else _ZERO)
            l4s = _classes_of(inverted[(slot, l4_field, sub)], info.index) if l4_field else _ZERO
            if sports and l4s:
                out.append((family, proto, others, sports, l4s))
    return out
