"""The user-space mirror of bpf/include/netctl_abi.h.

Every struct the programs share with user space is declared here as a ctypes Structure with
the same fields; tests/bpf/test_abi.py compiles the header with bcc and compares sizes and
offsets, so the two cannot drift.  Numbers (drop reasons, stat slots) are a stable interface.

The pack/unpack helpers turn plan entries (netctl/policy/plan.py) into map bytes and back,
with the generation added to every key or index (docs/classification.md, "Atomic updates").
"""

from __future__ import annotations

import array
import ctypes
import enum
import struct
import sys

from .policy.plan import (
    CFG_SIZE,
    ICMP_INDEX_SIZE,
    MAX_SHAPES,
    PORT_INDEX_SIZE,
    RULE_KEY_HEADER_BITS,
)

GENS = 2
CFG_WORDS = CFG_SIZE
MAX_EXT_HDRS = 6
MAX_VLAN = 2
HDR_WINDOW = 512

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)
# IPv6 extension headers the datapath walks: hop-by-hop, routing, fragment, destination
# options.  Anything else (AH, ESP, no-next-header, mobility...) is the upper-layer protocol.
IPV6_EXT_HDRS = frozenset({0, 43, 44, 60})
IPV6_FRAGMENT = 44


class DropReason(enum.IntEnum):
    """enum netctl_drop.  POLICY_* are counted per rule/default, never in ``stats``."""

    NONE = 0
    POLICY_RULE = 1
    POLICY_DEFAULT = 2
    TRUNC_L2 = 3
    VLAN_DEPTH = 4
    BAD_IPV4 = 5
    TRUNC_IPV4 = 6
    BAD_IPV6 = 7
    TRUNC_IPV6 = 8
    EXT_LIMIT = 9
    TRUNC_L4 = 10
    HDR_TOO_LONG = 11

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def description(self) -> str:
        return _DROP_TEXT[self]


_DROP_TEXT = {
    DropReason.NONE: "not dropped",
    DropReason.POLICY_RULE: "dropped by a rule",
    DropReason.POLICY_DEFAULT: "dropped by the default action",
    DropReason.TRUNC_L2: "frame ends inside its Ethernet or VLAN header",
    DropReason.VLAN_DEPTH: f"more than {MAX_VLAN} VLAN tags",
    DropReason.BAD_IPV4: "IPv4 header with a wrong version or IHL below 5",
    DropReason.TRUNC_IPV4: "frame ends inside the IPv4 header or its options",
    DropReason.BAD_IPV6: "IPv6 header with a wrong version",
    DropReason.TRUNC_IPV6: "frame ends inside the IPv6 header or an extension header",
    DropReason.EXT_LIMIT: f"more than {MAX_EXT_HDRS} IPv6 extension headers",
    DropReason.TRUNC_L4: "frame ends inside its TCP, UDP or ICMP header",
    DropReason.HDR_TOO_LONG: f"headers reach past the frame's first {HDR_WINDOW} bytes",
}

DROP_MAX = 32
STAT_NON_IP = 32
STAT_NDP = 33
STAT_DEFAULT = 34            # + direction * 2 + action
STAT_NO_POLICY = 38
STAT_CT_REPLY = 39           # a reply to a tracked flow, accepted before the rules
STAT_CT_NEW = 40             # a flow this host started: entry created
STAT_CT_EXPIRED = 41         # a stale entry met by a packet: removed
STAT_FWD_LOCAL = 42         # forwarding: to a local address, left to the kernel
STAT_FWD_TTL = 43           # forwarding: TTL/hop limit would expire, left to the kernel
STAT_FWD_OPTIONS = 44       # forwarding: IPv4 options or VLAN tags, left to the kernel
STAT_FWD_UNRESOLVED = 45    # forwarding (XDP): next hop's MAC unknown, left to the kernel
STAT_EVENTS = 46            # events written to the ring buffer
STAT_EVENTS_LOST = 47       # events a full ring buffer refused
STAT_EVENTS_SAMPLED_OUT = 48  # events left out by log_sample
STAT_CT_RELATED = 49         # an ICMP error about a tracked flow, accepted before the rules
STAT_CT_INVALID = 50         # a tracked flow's packet refused as a reply: on to the rules
STAT_CT_CONFIRMED = 51       # an unconfirmed entry confirmed by a reply: moved to conntrack
STAT_CT_UNCONFIRMED_EXPIRED = 52  # a stale unconfirmed entry met by a packet: removed
STAT_FWD_NOT_UNICAST = 53    # forwarding: multicast, broadcast or link-local, left to the kernel
STAT_FLOW_HIT = 54           # classified from the flow cache
STAT_FLOW_MISS = 55          # classified by the lookups (and cached)
STAT_MAX = 56
HOOK_NAMES = {0: "xdp", 1: "tc"}
EVENTS_BYTES = 256 * 1024

CT_STATES = {0: "new", 1: "established", 2: "closing"}
# struct netctl_ct_entry flags: how this host's side of a TCP flow was first seen.
CT_F_SYN = 1
CT_F_SYNACK = 2
CT_F_PICKUP = 4
CT_F_ACKED = 8
CT_MAX_WSCALE = 14
CT_OPENED_BY = {CT_F_SYN: "syn", CT_F_SYNACK: "syn-ack", CT_F_PICKUP: "mid-stream"}
# The conntrack tables' layout: part of their pin names, so that programs built for a new
# layout never open a table pinned with an old one.
CT_LAYOUT = 2


def stat_default(direction: int, action: int) -> int:
    return STAT_DEFAULT + direction * 2 + action


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

# ---- packing (struct formats equal to the layouts above; checked by the ABI test) --------

_CLASSES = struct.Struct(f"<{MAX_SHAPES}I")
_RULE_KEY = struct.Struct("<IBBBBB3xIII16s")
_RULE = struct.Struct("<BBH")
_CONFIG = struct.Struct(f"<{CFG_SIZE}I")
_U32 = struct.Struct("<I")
_LPM_HEAD = struct.Struct("<II")
_COUNTER = struct.Struct("<QQ")

ADDR_BYTES = {4: 4, 6: 16}


def pack_lpm_key(gen: int, family: int, prefixlen: int, network: int) -> bytes:
    n = ADDR_BYTES[family]
    return _LPM_HEAD.pack(32 + prefixlen, gen) + network.to_bytes(n, "big")


def unpack_lpm_key(data: bytes) -> tuple[int, int, int]:
    """-> (gen, prefixlen, network int)"""
    plen, gen = _LPM_HEAD.unpack_from(data)
    return gen, plen - 32, int.from_bytes(data[8:], "big")


def pack_classes(classes: tuple[int, ...]) -> bytes:
    return _CLASSES.pack(*classes)


def unpack_classes(data: bytes) -> tuple[int, ...]:
    return _CLASSES.unpack(data)


def pack_rule_key(gen: int, key: tuple[int, ...]) -> bytes:
    """A rule-trie key: (slot, direction, family, proto, addr_cls, sport_cls, l4_cls,
    prefix length, network) of a plan, in generation ``gen``."""
    slot, direction, family, proto, other, sport, l4, plen, network = key
    addr = network.to_bytes(ADDR_BYTES[family], "big")
    return _RULE_KEY.pack(RULE_KEY_HEADER_BITS + plen, gen, slot, direction, family, proto,
                          other, sport, l4, addr)


_RULE_HEAD = struct.Struct("<BBBBB3xIII")   # a rule key after its prefix length
_ADDR_SHIFT = {4: 96, 6: 0}                  # an address as the key's 16 bytes, big-endian


class _RuleHeads(dict):
    """Packed rule-key headers of one generation, each packed once."""

    def __init__(self, gen: int):
        super().__init__()
        self.gen = gen

    def __missing__(self, head: tuple[int, ...]) -> bytes:
        packed = self[head] = _RULE_HEAD.pack(self.gen, *head)
        return packed


def pack_rule_keys(gen: int, keys) -> bytes:
    """Many rule-trie keys back to back, each as ``pack_rule_key`` packs it: a million-prefix
    set is a million keys sharing a few headers, so headers are packed once each."""
    lengths = [_U32.pack(RULE_KEY_HEADER_BITS + plen) for plen in range(129)]
    heads = _RuleHeads(gen)
    shift = _ADDR_SHIFT
    return b"".join([lengths[k[7]] + heads[k[:7]] + (k[8] << shift[k[2]]).to_bytes(16, "big")
                     for k in keys])


def pack_lpm_keys(gen: int, family: int, keys) -> bytes:
    """Many LPM-trie keys ``(prefixlen, network)`` back to back, as ``pack_lpm_key``."""
    n = ADDR_BYTES[family]
    lengths = [_LPM_HEAD.pack(32 + plen, gen) for plen in range(129)]
    return b"".join([lengths[plen] + network.to_bytes(n, "big") for plen, network in keys])


def pack_u32s(values) -> bytes:
    """Many u32 back to back, little-endian (as pack_u32 each)."""
    data = array.array("I", values)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes()


def unpack_rule_key(data: bytes) -> tuple[int, tuple[int, ...]]:
    """-> (gen, the plan's key tuple)"""
    prefixlen, gen, slot, direction, family, proto, other, sport, l4, addr = \
        _RULE_KEY.unpack(data)
    network = int.from_bytes(addr[:ADDR_BYTES.get(family, 16)], "big")
    return gen, (slot, direction, family, proto, other, sport, l4,
                 prefixlen - RULE_KEY_HEADER_BITS, network)


def pack_u32(value: int) -> bytes:
    return _U32.pack(value)


def unpack_u32(data: bytes) -> int:
    return _U32.unpack(data)[0]


def pack_rule(value: tuple[int, int]) -> bytes:
    return _RULE.pack(value[0], value[1], 0)


def unpack_rule(data: bytes) -> tuple[int, int]:
    action, flags, _ = _RULE.unpack(data)
    return action, flags


def pack_config(words: tuple[int, ...]) -> bytes:
    return _CONFIG.pack(*words)


def unpack_config(data: bytes) -> tuple[int, ...]:
    return _CONFIG.unpack(data)


def sum_counters(percpu: bytes) -> tuple[int, int]:
    """A per-CPU counter value (one 16-byte slot per possible CPU) -> (packets, bytes)."""
    packets = nbytes = 0
    for p, b in _COUNTER.iter_unpack(percpu):
        packets += p
        nbytes += b
    return packets, nbytes


# Per-generation strides of the array maps: index = gen * stride + plan index.
def array_stride(name: str, constants: dict[str, int]) -> int:
    fixed = {"sport_interval": PORT_INDEX_SIZE, "dport_interval": PORT_INDEX_SIZE,
             "icmp_interval": ICMP_INDEX_SIZE, "config": 1}
    return fixed.get(name) or constants[f"NETCTL_{name.upper()}_ENTRIES"]


_CT_KEY = struct.Struct("<BBHHH16s16s")
_CT_ENTRY = struct.Struct("<QQIIBBB5xIIIII4x")


def unpack_ct_key(key: bytes) -> tuple[int, int, int, int, bytes, bytes]:
    """-> (family, proto, sport, dport, saddr, daddr) as stored: the replies' tuple."""
    family, proto, sport, dport, _, saddr, daddr = _CT_KEY.unpack(key)
    return family, proto, sport, dport, saddr, daddr


def pack_ct_key(family: int, proto: int, sport: int, dport: int, saddr: bytes,
                daddr: bytes) -> bytes:
    return _CT_KEY.pack(family, proto, sport, dport, 0, saddr.ljust(16, b"\0"),
                        daddr.ljust(16, b"\0"))


def unpack_ct_entry(value: bytes) -> dict:
    """Every field of a conntrack entry, as in struct netctl_ct_entry."""
    (created, seen, out, inn, state, flags, wscale, start, end, ack, maxwin,
     maxend) = _CT_ENTRY.unpack(value)
    return {"created_ns": created, "seen_ns": seen, "packets_out": out, "packets_in": inn,
            "state": state, "flags": flags, "wscale": wscale, "our_start": start,
            "our_end": end, "our_ack": ack, "our_maxwin": maxwin, "our_maxend": maxend}


def unpack_ct(key: bytes, value: bytes) -> dict:
    """A conntrack entry as the flow this host started: (local -> remote), its state, ages
    (from the kernel's monotonic clock, ns) and packet counts; for TCP also how this host's
    side was first seen and what it sent (sequence numbers, window)."""
    import ipaddress

    family, proto, sport, dport, saddr, daddr = unpack_ct_key(key)
    entry = unpack_ct_entry(value)
    n = ADDR_BYTES.get(family, 16)
    remote = ipaddress.ip_address(saddr[:n])
    local = ipaddress.ip_address(daddr[:n])
    out = {"family": family, "proto": proto, "src": str(local), "sport": dport,
           "dst": str(remote), "dport": sport,
           "state": CT_STATES.get(entry["state"], str(entry["state"])),
           "created_ns": entry["created_ns"], "seen_ns": entry["seen_ns"],
           "packets_out": entry["packets_out"], "packets_in": entry["packets_in"]}
    if proto == 6:
        flags = entry["flags"]
        out["tcp"] = {
            "opened_by": next((text for bit, text in CT_OPENED_BY.items() if flags & bit),
                              None),
            "wscale": entry["wscale"], "our_end": entry["our_end"],
            "our_ack": entry["our_ack"] if flags & CT_F_ACKED else None,
            "our_maxwin": entry["our_maxwin"],
            "our_maxend": entry["our_maxend"] if flags & CT_F_ACKED else None}
    return out


_NEXTHOP = struct.Struct("<IBB6s6sBx16s")
_LOCAL_KEY = struct.Struct("<B3x16s")


def _mac(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else bytes(6)


def pack_nexthop(ifindex: int, family: int, via: int, smac: str | None,
                 dmac: str | None, judge_egress: bool = False) -> bytes:
    """A route's next hop; resolved when both MACs are known (the XDP path needs them).
    ``judge_egress``: netctl enforces egress rules on the route's interface, so the XDP
    path (whose redirect skips that interface's tc egress hook) judges them itself."""
    resolved = int(bool(smac and dmac))
    return _NEXTHOP.pack(ifindex, family, resolved, _mac(smac), _mac(dmac), int(judge_egress),
                         via.to_bytes(ADDR_BYTES[family], "big").ljust(16, b"\0"))


def pack_local_key(family: int, address: int) -> bytes:
    return _LOCAL_KEY.pack(family, address.to_bytes(ADDR_BYTES[family], "big").ljust(16, b"\0"))


_EVENT = struct.Struct("<QIIIBBBBBBHHBB16s16s")


def unpack_event(data: bytes) -> dict:
    """A datapath event as plain fields (addresses as text, None when not parsed)."""
    import ipaddress

    (ts, ifindex, rule, length, direction, hook, drop, reason, family, proto, sport, dport,
     icmp_type, gen, saddr, daddr) = _EVENT.unpack_from(data)
    n = ADDR_BYTES.get(family)
    return {"ts_ns": ts, "ifindex": ifindex, "rule": None if rule == 0xFFFFFFFF else rule,
            "len": length, "direction": "egress" if direction else "ingress",
            "hook": HOOK_NAMES.get(hook, str(hook)), "verdict": "drop" if drop else "accept",
            "reason": DropReason(reason).label if reason in DropReason._value2member_map_
            else str(reason), "family": family or None, "proto": proto if n else None,
            "src": str(ipaddress.ip_address(saddr[:n])) if n else None,
            "dst": str(ipaddress.ip_address(daddr[:n])) if n else None,
            "sport": sport if proto in (6, 17) else None,
            "dport": dport if proto in (6, 17) else None,
            "icmp_type": icmp_type if n and proto in (1, 58) else None, "gen": gen}
