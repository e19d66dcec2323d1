"""Class ids for the compiler (netctl/policy/compile.py): the rule as the classifier sees it
(``_Info``), and the classes of each slot's address, port and ICMP fields."""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections import defaultdict
from collections.abc import Collection, Iterable
from typing import TypeVar

from ..abi import (
    ACTION_ACCEPT,
    ACTION_DROP,
    DIR_EGRESS,
    DIR_INGRESS,
    FIELD_ICMP,
    FIELD_SPORT,
    FIELD_SRC,
    MAX_SHAPES,
)
from ..errors import MapFullError
from .model import (
    ICMP_PROTOS,
    Action,
    Direction,
)
from .plan import Limits

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
                   capacity: int, inverted: Inverted, limit: str, direct: list[int]
                   ) -> tuple[dict[int, int], dict[int, tuple[int, ...]]]:
    """Interval index and class-vector arrays for sport, dport or ICMP type (slots that
    look this field up directly in the rule trie have no classes of it).

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
            if not mask & field or direct[slot] == field:
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


def _count(part: AddressPart) -> int:
    return len(part[0]) + len(part[1])
