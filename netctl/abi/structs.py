"""ctypes mirrors of the structs in bpf/include/netctl_abi.h: same fields, same names.

tests/bpf/test_abi.py compiles the header with bcc and compares every size and offset with
these; tests/unit/test_abi_headers.py compares the field lists (names, types, array lengths)
with the header's text, without root.
"""

from __future__ import annotations

import ctypes

from .constants import CFG_SIZE, MAX_SHAPES

# ---- structs (ctypes mirrors; field names equal the C ones) ------------------------------

class Lpm4Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("gen", ctypes.c_uint32),
                ("addr", ctypes.c_uint8 * 4)]


class Lpm6Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("gen", ctypes.c_uint32),
                ("addr", ctypes.c_uint8 * 16)]


class Classes(ctypes.Structure):
    _fields_ = [("cls", ctypes.c_uint32 * MAX_SHAPES)]


class RuleKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("gen", ctypes.c_uint8),
                ("slot", ctypes.c_uint8), ("direction", ctypes.c_uint8),
                ("family", ctypes.c_uint8), ("proto", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 3), ("addr_cls", ctypes.c_uint32),
                ("sport_cls", ctypes.c_uint32), ("l4_cls", ctypes.c_uint32),
                ("addr", ctypes.c_uint8 * 16)]


class Rule(ctypes.Structure):
    _fields_ = [("action", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("pad", ctypes.c_uint16)]


class Config(ctypes.Structure):
    _fields_ = [("word", ctypes.c_uint32 * CFG_SIZE)]


class Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class CtKey(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint8), ("proto", ctypes.c_uint8),
                ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
                ("pad", ctypes.c_uint16), ("saddr", ctypes.c_uint8 * 16),
                ("daddr", ctypes.c_uint8 * 16)]


class CtEntry(ctypes.Structure):
    _fields_ = [("created_ns", ctypes.c_uint64), ("seen_ns", ctypes.c_uint64),
                ("packets_out", ctypes.c_uint32), ("packets_in", ctypes.c_uint32),
                ("state", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("wscale", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 5),
                ("our_start", ctypes.c_uint32), ("our_end", ctypes.c_uint32),
                ("our_ack", ctypes.c_uint32), ("our_maxwin", ctypes.c_uint32),
                ("our_maxend", ctypes.c_uint32), ("pad2", ctypes.c_uint32)]


class Nexthop(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_uint32), ("family", ctypes.c_uint8),
                ("resolved", ctypes.c_uint8), ("smac", ctypes.c_uint8 * 6),
                ("dmac", ctypes.c_uint8 * 6), ("judge_egress", ctypes.c_uint8),
                ("pad", ctypes.c_uint8), ("via", ctypes.c_uint8 * 16)]


class LocalKey(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3),
                ("addr", ctypes.c_uint8 * 16)]


class Event(ctypes.Structure):
    _fields_ = [("ts_ns", ctypes.c_uint64), ("ifindex", ctypes.c_uint32),
                ("rule", ctypes.c_uint32), ("len", ctypes.c_uint32),
                ("direction", ctypes.c_uint8), ("hook", ctypes.c_uint8),
                ("drop", ctypes.c_uint8), ("reason", ctypes.c_uint8),
                ("family", ctypes.c_uint8), ("proto", ctypes.c_uint8),
                ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
                ("icmp_type", ctypes.c_uint8), ("gen", ctypes.c_uint8),
                ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16)]


class FlowKey(ctypes.Structure):
    _fields_ = [("epoch", ctypes.c_uint32), ("direction", ctypes.c_uint8),
                ("family", ctypes.c_uint8), ("proto", ctypes.c_uint8),
                ("fragment", ctypes.c_uint8), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16), ("saddr", ctypes.c_uint8 * 16),
                ("daddr", ctypes.c_uint8 * 16)]


class FlowStat(ctypes.Structure):
    _fields_ = [("lookups", ctypes.c_uint32), ("hits", ctypes.c_uint32),
                ("bypass", ctypes.c_uint32), ("pending", ctypes.c_uint32),
                ("key", FlowKey)]


class EventsCtl(ctypes.Structure):
    _fields_ = [("until_ns", ctypes.c_uint64)]


STRUCTS = {"netctl_event": Event, "netctl_events_ctl": EventsCtl, "netctl_nexthop": Nexthop,
           "netctl_flow_key": FlowKey, "netctl_flow_stat": FlowStat,
           "netctl_local_key": LocalKey,
           "netctl_lpm4_key": Lpm4Key, "netctl_lpm6_key": Lpm6Key, "netctl_classes": Classes,
           "netctl_rule_key": RuleKey, "netctl_rule": Rule, "netctl_config": Config,
           "netctl_counter": Counter, "netctl_ct_key": CtKey, "netctl_ct_entry": CtEntry}
