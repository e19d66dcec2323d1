"""Every map of the datapath, declared once: the registry the rest of netctl derives from.

bpf/include/netctl_maps.h declares the maps for the programs; ``MAPS`` declares the same ones
for user space, in the header's order: kind, key and value layouts (``codec``), capacity and
what the map is for (``role``).  From it come the plan's map names and specs
(netctl/policy/plan.py), the encoding and decoding of plan entries
(netctl/datapath/maps.py), the array strides and the maps a datapath opens
(netctl/datapath/instance.py).  tests/unit/test_abi_headers.py compares each entry with the
header's BPF_TABLE_PINNED declaration (type, key and value types, max_entries, flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import codec
from .codec import Codec
from .constants import (
    CFG_SIZE,
    EVENTS_BYTES,
    FLOW_CACHE_ENTRIES,
    GENS,
    HDR_WINDOW,
    ICMP_INDEX_SIZE,
    MAX_SHAPES,
    PORT_INDEX_SIZE,
    STAT_MAX,
)

# What a map is for.
PLAN = "plan"              # policy data, one part per generation: written from a MapPlan
STATE = "state"            # runtime state pinned with the programs (netctl/datapath/instance)
CONNTRACK = "conntrack"    # tracked flows, pinned apart so that they outlive the programs
SCRATCH = "scratch"        # per-CPU scratch of the programs: user space never opens it
EVENTS = "events"          # the ring buffer of datapath events


@dataclass(frozen=True, eq=False)
class MapDef:
    """One map.  ``entries`` is max_entries as the header writes it: a macro (a -D constant
    or a #define) or a number; with ``per_gen`` the header declares NETCTL_PER_GEN(entries)
    and every generation has ``entries`` of them (an array's index is gen * entries + the
    plan's index).  ``size`` is set when ``entries`` is a -D constant netctl passes
    (``plan.constants``) and says its value: the name of a field of the compiler's Limits, or
    a fixed number.  ``doc``: key and value, in words (``plan.map_specs``)."""

    name: str
    kind: str                       # as bcc's BPF_TABLE names it: "lpm_trie", "array", ...
    key: Codec | None
    value: Codec | None
    role: str
    entries: str | int
    per_gen: bool = False
    size: str | int | None = None
    flags: str | None = None        # the declaration's map flags, e.g. "BPF_F_NO_PREALLOC"
    doc: tuple[str, str] = ("", "")

    def capacity(self, limits: Any) -> int:
        """Entries per generation in a datapath built for ``limits`` (a plan.Limits)."""
        if isinstance(self.size, str):
            value: int = getattr(limits, self.size)
            return value
        if self.size is None:
            raise ValueError(f"{self.name}: no capacity rule")
        return self.size

    def per_generation(self, constants: dict[str, int]) -> int:
        """Entries of one generation in a build with these -D constants: an array's stride,
        index = gen * stride + plan index."""
        if isinstance(self.size, int):
            return self.size
        entries = self.entries
        if isinstance(entries, int):
            return entries
        return constants[entries] if entries in constants else HEADER_DEFINED[entries]

    def max_entries(self, constants: dict[str, int]) -> int:
        n = self.per_generation(constants)
        return GENS * n if self.per_gen else n


# Capacities the headers #define (the others are -D constants).
HEADER_DEFINED = {"NETCTL_GENS": GENS, "NETCTL_STAT_MAX": STAT_MAX,
                  "NETCTL_EVENTS_BYTES": EVENTS_BYTES,
                  "NETCTL_FLOW_CACHE_ENTRIES": FLOW_CACHE_ENTRIES}

_NO_PREALLOC = "BPF_F_NO_PREALLOC"
_CLASS_IDS = f"u32[{MAX_SHAPES}] class ids"
_LPM4 = "prefixlen u32, addr u8[4]"
_LPM6 = "prefixlen u32, addr u8[16]"


def _plan(name: str, kind: str, key: Codec, value: Codec | None, size: str | int | None,
          doc: tuple[str, str], flags: str | None = None) -> MapDef:
    return MapDef(name, kind, key, value, PLAN, f"NETCTL_{name.upper()}_ENTRIES", True, size,
                  flags, doc)


def _trie(name: str, key: Codec, value: Codec | None, size: str | int | None,
          doc: tuple[str, str]) -> MapDef:
    return _plan(name, "lpm_trie", key, value, size, doc, _NO_PREALLOC)


_PKT_CLASSES = Codec("struct netctl_pkt_classes", 5 * codec.CLASSES.size)
_WINDOW = Codec("struct netctl_window", HDR_WINDOW + 64)
_CT_SCRATCH = Codec("struct netctl_ct_scratch", 8)
_PACKET = Codec("struct netctl_pkt", 88)
_U32, _CLASSES = codec.U32, codec.CLASSES

_DEFS = (
    # Address classes: longest prefix -> class id per shape slot.
    _trie("src_v4", codec.LPM4_KEY, _CLASSES, "lpm_entries", (_LPM4, _CLASS_IDS)),
    _trie("src_v6", codec.LPM6_KEY, _CLASSES, "lpm_entries", (_LPM6, _CLASS_IDS)),
    _trie("dst_v4", codec.LPM4_KEY, _CLASSES, "lpm_entries", (_LPM4, _CLASS_IDS)),
    _trie("dst_v6", codec.LPM6_KEY, _CLASSES, "lpm_entries", (_LPM6, _CLASS_IDS)),
    # Port and ICMP-type classes: value -> interval id -> class id per slot.
    _plan("sport_interval", "array", _U32, _U32, PORT_INDEX_SIZE,
          ("u32 port_slot*65536+port", "u32 interval id")),
    _plan("dport_interval", "array", _U32, _U32, PORT_INDEX_SIZE,
          ("u32 port_slot*65536+port", "u32 interval id")),
    _plan("icmp_interval", "array", _U32, _U32, ICMP_INDEX_SIZE,
          ("u32 icmp_slot*65536+(type<<8|code)", "u32 interval id")),
    _plan("sport_classes", "array", _U32, _CLASSES, "port_intervals",
          ("u32 interval id", _CLASS_IDS)),
    _plan("dport_classes", "array", _U32, _CLASSES, "port_intervals",
          ("u32 interval id", _CLASS_IDS)),
    _plan("icmp_classes", "array", _U32, _CLASSES, "icmp_intervals",
          ("u32 interval id", _CLASS_IDS)),
    # (header of classes, direct address prefix) -> first matching rule.
    _trie("rule_table", codec.RULE_KEY, _U32, "rule_table",
          ("prefixlen u32, u8 gen, slot, direction, family, proto, pad[3], "
           "u32 addr_cls, sport_cls, l4_cls, u8 addr[16]", "u32 rule index")),
    _plan("rules", "array", _U32, codec.RULE, "rules", ("u32 rule index", "u8 action, u8 flags")),
    _plan("config", "array", _U32, codec.CONFIG, 1, ("u32 0", f"u32[{CFG_SIZE}]")),
    MapDef("active", "array", _U32, _U32, STATE, 1),
    # Forwarding: destination prefix -> route index; next hops and their counters.
    _trie("routes_v4", codec.LPM4_KEY, _U32, "routes", (_LPM4, "u32 route index")),
    _trie("routes_v6", codec.LPM6_KEY, _U32, "routes", (_LPM6, "u32 route index")),
    MapDef("nexthops", "array", _U32, codec.NEXTHOP, STATE, "NETCTL_NEXTHOPS_ENTRIES", True,
           "routes"),
    MapDef("route_counters", "percpu_array", _U32, codec.COUNTER, STATE,
           "NETCTL_NEXTHOPS_ENTRIES", True, "routes"),
    MapDef("local_addrs", "hash", codec.LOCAL_KEY, _U32, STATE, 4096),
    # Tracked flows: confirmed, and waiting for a valid reply (sized by the policy's
    # conntrack size, see plan.constants).
    MapDef("conntrack", "lru_hash", codec.CT_KEY, codec.CT_ENTRY, CONNTRACK,
           "NETCTL_CT_ENTRIES"),
    MapDef("conntrack_unconfirmed", "lru_hash", codec.CT_KEY, codec.CT_ENTRY, CONNTRACK,
           "NETCTL_CT_UNCONFIRMED_ENTRIES"),
    MapDef("netctl_scratch", "percpu_array", _U32, _PKT_CLASSES, SCRATCH, 1),
    MapDef("netctl_window_copy", "percpu_array", _U32, _WINDOW, SCRATCH, 1),
    MapDef("netctl_packet", "percpu_array", _U32, _PACKET, SCRATCH, 1),
    MapDef("netctl_ct_scratch", "percpu_array", _U32, _CT_SCRATCH, SCRATCH, 1),
    # The flow cache: per-CPU LRU lists, the epoch of each generation, whether it pays.
    MapDef("flow_cache", "lru_hash", codec.FLOW_KEY, _U32, STATE, "NETCTL_FLOW_CACHE_ENTRIES",
           flags="BPF_F_NO_COMMON_LRU"),
    MapDef("flow_epoch", "array", _U32, _U32, STATE, "NETCTL_GENS"),
    MapDef("flow_stat", "percpu_array", _U32, codec.FLOW_STAT, STATE, 1),
    MapDef("events_ctl", "array", _U32, codec.EVENTS_CTL, STATE, 1),
    MapDef("events", "ringbuf", None, None, EVENTS, "NETCTL_EVENTS_BYTES"),
    # Per rule (index gen * rules + rule) and per stat slot: packets, bytes.
    MapDef("counters", "percpu_array", _U32, codec.COUNTER, STATE, "NETCTL_RULES_ENTRIES",
           True, "rules"),
    MapDef("stats", "percpu_array", _U32, codec.COUNTER, STATE, "NETCTL_STAT_MAX"),
)

MAPS: dict[str, MapDef] = {d.name: d for d in _DEFS}
# The maps a MapPlan fills, in the plan's order (its digest hashes them in this order).
PLAN_MAPS: dict[str, MapDef] = {d.name: d for d in _DEFS if d.role == PLAN}
# The maps a datapath opens from its pin directory by name.
PINNED_MAPS: tuple[str, ...] = tuple(d.name for d in _DEFS if d.role in (PLAN, STATE))


def array_stride(name: str, constants: dict[str, int]) -> int:
    """Per-generation stride of an array map: index = gen * stride + plan index."""
    return MAPS[name].per_generation(constants)
