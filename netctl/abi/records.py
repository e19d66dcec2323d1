"""The records of the runtime maps, outside the plan: counters, conntrack entries, next
hops, local addresses and datapath events (struct formats equal to the ctypes mirrors in
``structs``; tests/bpf/test_abi.py checks them against the compiled header)."""

from __future__ import annotations

import struct
from typing import Any

from .codec import ADDR_BYTES
from .constants import CT_F_ACKED, CT_OPENED_BY, CT_STATES, HOOK_NAMES, DropReason

_COUNTER = struct.Struct("<QQ")


def sum_counters(percpu: bytes) -> tuple[int, int]:
    """A per-CPU counter value (one 16-byte slot per possible CPU) -> (packets, bytes)."""
    packets = nbytes = 0
    for p, b in _COUNTER.iter_unpack(percpu):
        packets += p
        nbytes += b
    return packets, nbytes


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


def unpack_ct_entry(value: bytes) -> dict[str, Any]:
    """Every field of a conntrack entry, as in struct netctl_ct_entry."""
    (created, seen, out, inn, state, flags, wscale, start, end, ack, maxwin,
     maxend) = _CT_ENTRY.unpack(value)
    return {"created_ns": created, "seen_ns": seen, "packets_out": out, "packets_in": inn,
            "state": state, "flags": flags, "wscale": wscale, "our_start": start,
            "our_end": end, "our_ack": ack, "our_maxwin": maxwin, "our_maxend": maxend}


def unpack_ct(key: bytes, value: bytes) -> dict[str, Any]:
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


def unpack_event(data: bytes) -> dict[str, Any]:
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
