"""The map plan: every BPF map entry a compiled policy needs, as plain ints and tuples.

`netctl.policy.compile.compile_policy` builds a `MapPlan` from a `Policy`; the loader
writes it into the datapath's maps (adding the generation tag to every key, see
docs/classification.md); `netctl.policy.interp.interpret` runs the datapath's lookups on
it in pure Python.  netctl/abi/maps.py declares every map (kind, key and value codecs,
capacity); the layout of the plan's, per map (``maps()`` gives exactly these names):

``src_v4``, ``src_v6``, ``dst_v4``, ``dst_v6`` (LPM tries)
    key ``(prefixlen, network as int)``, value a tuple of ``MAX_SHAPES`` class ids, one per
    shape slot (0: no rule of that slot matches on this field).
``sport_interval``, ``dport_interval`` (arrays of ``PORT_INDEX_SIZE``)
    index ``port_slot * 65536 + port`` (port slots: tcp 0, udp 1), value an interval id.
``icmp_interval`` (array of ``ICMP_INDEX_SIZE``)
    index ``icmp_slot * 65536 + (type << 8 | code)`` (icmp slots: ICMP in IPv4 0, ICMPv6
    1), value an interval id.
``sport_classes``, ``dport_classes``, ``icmp_classes`` (arrays)
    index an interval id, value a tuple of ``MAX_SHAPES`` class ids.  Interval id 0 is
    "no range of any rule covers the value" and its classes are all 0.
``rule_table`` (LPM trie)
    key ``(slot, direction, family, proto, addr_cls, sport_cls, l4_cls, prefixlen,
    network)``: a header of classes, then a prefix of the slot's directly looked-up field:
    src or dst (see ``CFG_DIRECT_DST``; length 0 when the shape has no address), or dport
    (see ``CFG_DIRECT_PORT``: the port prefix in the top 16 of the family's bits).
    ``addr_cls`` is the class of the address field that is not direct, else 0; ``l4_cls``
    the dport class (0 when dport is direct) or the ICMP-type class (no rule has both);
    absent fields 0.
    The value is the index of the first rule of that slot, direction and header whose
    prefix covers the entry's prefix, so the longest match gives the first matching rule.
``rules`` (array)
    index a rule index, value ``(action, flags)``.
``config`` (array of one entry)
    index 0, value the tuple described by the ``CFG_*`` positions.
``routes_v4``, ``routes_v6`` (LPM tries)
    key ``(prefixlen, network)`` of a route's destination, value the route's index in
    ``Policy.routes`` (its next hop is resolved at apply time, outside the plan).

Array maps list only non-zero entries (an absent index holds zeros, as in the kernel);
`diff` compares them that way.  Class ids of addresses and ports are derived from the set
of rules a class stands for (a hash, collisions resolved in a canonical order), so an edit
to one rule renumbers only the classes containing that rule and a diff stays small.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import IO, Any

from ..abi import BUILD_DEFINES, CFG_DIRECT_PORT, MAPS, MAX_SHAPES, PLAN_MAPS
from ..abi.constants import FIELD_DPORT, FIELD_DST, FIELD_ICMP, FIELD_PROTO, FIELD_SPORT, FIELD_SRC

FIELD_NAMES = {FIELD_SRC: "src", FIELD_DST: "dst", FIELD_PROTO: "proto",
               FIELD_SPORT: "sport", FIELD_DPORT: "dport", FIELD_ICMP: "icmp_type"}

# The plan's maps, in order: netctl/abi/maps.py declares them (PLAN_MAPS).
MAP_NAMES = tuple(PLAN_MAPS)
ARRAY_MAPS = frozenset(n for n, d in PLAN_MAPS.items() if d.kind == "array")


@dataclass(frozen=True)
class Limits:
    """Map capacities (``max_entries``) of a datapath build.  The compiler refuses a plan
    that does not fit (MapFullError naming the capacity and the entries needed); `netctl
    apply` then builds with ``grown`` capacities, so only a need past ``CEILINGS`` is
    refused.  The defaults hold most policies; growing means a rebuild (the capacities are
    the programs' -D constants), shrinking never happens by itself."""

    lpm_entries: int = 262144       # per address trie
    rule_table: int = 1048576
    rules: int = 131072
    port_intervals: int = 16384     # entries of sport_classes / dport_classes (ids 0..n-1)
    shapes: int = MAX_SHAPES        # slots the compiler may use (<= MAX_SHAPES)
    routes: int = 4096              # routes (per family trie, and next hops)
    icmp_intervals: int = 4096      # entries of icmp_classes

    def __post_init__(self) -> None:
        if not 1 <= self.shapes <= MAX_SHAPES:
            raise ValueError(f"shapes must be 1..{MAX_SHAPES}")
        if self.port_intervals < 2 or self.icmp_intervals < 2:
            raise ValueError("port_intervals and icmp_intervals must be at least 2")

    def grown(self, limit: str, needed: int) -> Limits | None:
        """These limits with ``limit`` raised to hold ``needed`` entries (the next power of
        two, at most its ceiling), or None when ``needed`` is past the ceiling."""
        ceiling = CEILINGS.get(limit)
        if ceiling is None or needed > ceiling:
            return None
        size = max(getattr(self, limit), 1)
        while size < needed:
            size *= 2
        return replace(self, **{limit: min(size, ceiling)})


# How far `netctl apply` grows each capacity.  Class vectors have one id per distinct vector,
# and there are never more than elementary intervals of the value axis: 2 x 65,536 ports
# (tcp, udp) or ICMP type-and-code values, plus "none".  The others are bounded by memory
# (LPM tries take memory per entry used; arrays are allocated whole, per generation).
CEILINGS = {
    "port_intervals": 2 * 65536 + 1,
    "icmp_intervals": 2 * 65536 + 1,
    "lpm_entries": 1 << 24,
    "rule_table": 1 << 24,
    "rules": 1 << 21,
    "routes": 1 << 20,
}


@dataclass(frozen=True)
class MapSpec:
    name: str
    kind: str        # "lpm_trie" | "array" | "hash"
    key: str         # layout, for humans and the ctypes mirror
    value: str
    max_entries: int


def map_specs(limits: Limits) -> dict[str, MapSpec]:
    return {name: MapSpec(name, d.kind, *d.doc, d.capacity(limits))
            for name, d in PLAN_MAPS.items()}


# The table of unconfirmed flows (no valid reply yet) is this share of the conntrack size,
# and at least UNCONFIRMED_MIN entries.
UNCONFIRMED_SHARE = 8
UNCONFIRMED_MIN = 16


def unconfirmed_size(conntrack_size: int) -> int:
    """Entries of the table of unconfirmed flows next to a conntrack table of this size."""
    return max(UNCONFIRMED_MIN, conntrack_size // UNCONFIRMED_SHARE)


def constants(limits: Limits, conntrack_size: int = 65536, direct_port: bool = False
              ) -> dict[str, int]:
    """The -D constants of a datapath built for ``limits``, a conntrack table size and,
    with ``direct_port``, rule-trie slots keyed by the destination port (code that other
    plans are built without)."""
    out = dict(BUILD_DEFINES)
    if direct_port:
        out["NETCTL_DIRECT_PORT"] = 1
    out["NETCTL_CT_ENTRIES"] = conntrack_size
    out["NETCTL_CT_UNCONFIRMED_ENTRIES"] = unconfirmed_size(conntrack_size)
    for d in MAPS.values():
        if d.size is not None and isinstance(d.entries, str):   # capacity is a -D constant
            out[d.entries] = d.capacity(limits)
    return out


def _zero(name: str) -> Any:
    value = PLAN_MAPS[name].value
    assert value is not None   # every map a plan fills has a value codec
    return value.zero


@dataclass(frozen=True, eq=False)
class MapPlan:
    """A compiled policy: map contents plus what humans need to read them.

    Generation-free: the loader adds the generation tag to keys when it writes.  Treat
    the dicts as read-only (``maps()`` hands out read-only views).
    """

    limits: Limits
    shapes: tuple[int, ...]                       # slot -> shape mask (0 if unused)
    shape_members: tuple[tuple[int, ...], ...]    # slot -> rule masks merged into it, () unused
    rule_names: tuple[str, ...]
    config: tuple[int, ...]
    rules: tuple[tuple[int, int], ...]
    tables: Mapping[str, Mapping[Any, Any]] = field(repr=False)  # every map but rules/config
    conntrack_size: int = 65536   # entries of the (generation-free) conntrack table

    def maps(self) -> dict[str, Mapping[Any, Any]]:
        """Every map's canonical contents: ``{map_name: {key: value}}``."""
        return dict(self._maps)

    @cached_property
    def _maps(self) -> dict[str, Mapping[Any, Any]]:
        out: dict[str, Mapping[Any, Any]] = {}
        for name in MAP_NAMES:
            if name == "rules":
                out[name] = MappingProxyType(dict(enumerate(self.rules)))
            elif name == "config":
                out[name] = MappingProxyType({0: self.config})
            else:
                out[name] = MappingProxyType(self.tables[name])
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MapPlan):
            return NotImplemented
        return (self.limits == other.limits and self.shapes == other.shapes
                and self.conntrack_size == other.conntrack_size
                and self.shape_members == other.shape_members
                and self.rule_names == other.rule_names
                and all(dict(a) == dict(b) for a, b in zip(self._maps.values(),
                                                           other._maps.values(), strict=True)))

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        # The read-only views of maps() are derived (and cannot be pickled).
        state = dict(self.__dict__)
        state.pop("_maps", None)
        state.pop("_digest", None)
        return state

    def digest(self) -> str:
        """A stable fingerprint of the whole plan (names included), e.g. to record what is live.

        The compiler is deterministic down to the order of its dicts (the same policy gives
        the same insertion order in any process, whatever the hash seed: a test checks it),
        so the contents are hashed in that order, without sorting 100,000s of entries."""
        return self._digest

    @cached_property
    def _digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.limits.__dict__, self.shapes, self.shape_members,
                             self.rule_names, self.conntrack_size]).encode())
        for name, contents in self._maps.items():
            h.update(name.encode())
            h.update(_pickled(list(contents.items()) if name in ("rules", "config")
                              else self.tables[name]))
        return h.hexdigest()

    def constants(self) -> dict[str, int]:
        """The -D constants the datapath is compiled with (a change needs a reload)."""
        return constants(self.limits, self.conntrack_size,
                         bool(self.config[CFG_DIRECT_PORT]))

    def rule_name(self, index: int | None) -> str | None:
        return None if index is None else self.rule_names[index]

    def counts(self) -> dict[str, int]:
        return {name: len(contents) for name, contents in self._maps.items()}

    def summary(self) -> str:
        used = [f"{s}:{_mask_words(m)}" for s, (m, members)
                in enumerate(zip(self.shapes, self.shape_members, strict=True)) if members]
        sizes = ", ".join(f"{n} {c}" for n, c in self.counts().items() if c)
        return f"{len(self.rules)} rules in {len(used)} shapes ({'; '.join(used)}); {sizes}"


def _pickled(value: Any) -> memoryview:
    """Plain data (dicts, tuples, ints) pickled without the memo: nothing in a plan refers
    to itself, and the memo is most of the cost at a million entries (0.2 s against 1.6 s)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=5)
    pickler.fast = True
    pickler.dump(value)
    return out.getbuffer()


def dump_plan(plan: MapPlan, file: IO[bytes]) -> None:
    """Pickle a plan to an open binary file, as ``_pickled`` (no memo)."""
    pickler = pickle.Pickler(file, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(plan)


def _mask_words(mask: int) -> str:
    return "+".join(name for bit, name in FIELD_NAMES.items() if mask & bit) or "all"


@dataclass(frozen=True)
class MapDiff:
    added: dict[Any, Any]
    changed: dict[Any, tuple[Any, Any]]   # key -> (old, new)
    removed: dict[Any, Any]               # key -> old (arrays: write zeros)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def __len__(self) -> int:
        return len(self.added) + len(self.changed) + len(self.removed)


@dataclass(frozen=True)
class PlanDiff:
    maps: dict[str, MapDiff]
    reload: bool   # no old plan, or compile-time constants (map capacities) differ

    def __bool__(self) -> bool:
        return self.reload or any(self.maps.values())

    def entries(self) -> int:
        return sum(len(d) for d in self.maps.values())

    def summary(self) -> str:
        parts = [f"{name} +{len(d.added)} ~{len(d.changed)} -{len(d.removed)}"
                 for name, d in self.maps.items() if d]
        head = "programs and maps must be (re)created; " if self.reload else ""
        if not parts:
            return head + "no entry changes"
        return head + f"{self.entries()} entries: " + ", ".join(parts)


_MISSING = object()


def diff(old: MapPlan | None, new: MapPlan) -> PlanDiff:
    """Per map, the keys to add, change and remove to turn ``old`` into ``new``.

    ``old`` None means empty maps.  In array maps an absent index holds zeros: an index that
    leaves the plan is "removed" (write zeros) unless it already held zeros, and an index
    whose value does not change is left out whether or not the plan lists it.
    """
    old_maps = old._maps if old is not None else {}
    out: dict[str, MapDiff] = {}
    for name, new_c in new._maps.items():
        old_c = old_maps.get(name, {})
        # The dicts beneath a plan's read-only views: a view's get() costs twice a dict's.
        if isinstance(old, MapPlan) and name in old.tables:
            old_c = old.tables[name]
        if name in new.tables:
            new_c = new.tables[name]
        added: dict[Any, Any] = {}
        changed: dict[Any, tuple[Any, Any]] = {}
        removed: dict[Any, Any] = {}
        if name in ARRAY_MAPS:
            zero = _zero(name)
            for key, value in new_c.items():
                before = old_c.get(key, zero)
                if before == value:
                    continue
                if key not in old_c:
                    added[key] = value
                else:
                    changed[key] = (before, value)
            for key, value in old_c.items():
                if key not in new_c and value != zero:
                    removed[key] = value
        elif not old_c:
            added = new_c.copy()   # type: ignore[attr-defined]  # a dict's copy (a plan's maps are read-only views)
        elif old_c != new_c:   # equal maps (most, after a small edit) compare in C
            get = old_c.get
            for key, value in [(k, v) for k, v in new_c.items() if get(k, _MISSING) != v]:
                before = get(key)
                if before is None:
                    added[key] = value
                else:
                    changed[key] = (before, value)
            if len(old_c) + len(added) != len(new_c):
                removed = {k: v for k, v in old_c.items() if k not in new_c}
        out[name] = MapDiff(added, changed, removed)
    reload = old is None or old.constants() != new.constants()
    return PlanDiff(out, reload)
