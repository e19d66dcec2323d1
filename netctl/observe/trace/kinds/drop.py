"""Packets the kernel frees as dropped (skb:kfree_skb and the functions behind it), with
the kernel's drop reason and the location that dropped them."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .. import _kernel as kernel
from .._events import REASON_UNKNOWN, DropEvent
from .base import LOCATION_ENTRIES, STACK_ENTRIES, Kind, Metric, addr, percpu_sum

if TYPE_CHECKING:
    from .._tracer import Tracer


# Where kfree_skb's tracepoint lives, newest first, with bpf/trace/drop.c's DROP_SIG.
DROP_FUNCTIONS = (("sk_skb_reason_drop", 1), ("kfree_skb_reason", 2), ("kfree_skb", 3))


class DropKind(Kind):
    name = "drop"
    source = "drop.c"
    event_type = DropEvent
    size_macro = "DROP_EVENT_SIZE"
    tracepoints = (("skb:kfree_skb", "netctl_drop_tp"),)
    kprobe_fn = "netctl_drop_kprobe"
    exported = True
    top_sections = {"kernel_drops": "KERNEL DROP REASON",
                    "kernel_locations": "KERNEL DROP LOCATION"}

    @staticmethod
    def columns(e: dict) -> tuple[str, str]:
        return (e.get("location") or "?"), f"drop {e.get('reason') or '?'}"

    @classmethod
    def top_rows(cls, counts: dict) -> dict[str, Counter]:
        return {"kernel_drops": Counter(counts.get("reason", {})),
                "kernel_locations": Counter(counts.get("location", {}))}

    @classmethod
    def metrics(cls, counts: dict) -> list[Metric]:
        return [Metric("netctl_kernel_drops", "counter", "packets the kernel dropped, by the "
                       "kernel's drop reason", ("reason",),
                       [((reason,), n) for reason, n in sorted(counts.get("reason",
                                                                          {}).items())])]

    def function(self) -> str | None:
        known = kernel.kallsyms_functions()
        return next((f for f, _ in DROP_FUNCTIONS
                     if kernel.btf_function(f) is not None or f in known), None)

    def constants(self) -> dict[str, int]:
        reasons = kernel.drop_reasons()
        fmt = kernel.tracepoint_format("skb", "kfree_skb")
        func = self.function()
        out = {
            "DROP_SIG": dict(DROP_FUNCTIONS).get(func or "", 3),
            "TP_HAS_REASON": int(bool(fmt and fmt.has("reason"))),
            "STACK_ENTRIES": STACK_ENTRIES,
            "LOCATION_ENTRIES": LOCATION_ENTRIES,
        }
        for member in ("head", "network_header", "transport_header", "protocol"):
            offset = kernel.skb_offset(member)
            if offset is not None:
                out[f"SKB_OFF_{member.upper()}"] = offset
        if reasons.not_dropped_yet is not None:
            out["REASON_NOT_DROPPED_YET"] = reasons.not_dropped_yet
        if reasons.consumed is not None:
            out["REASON_CONSUMED"] = reasons.consumed
        return out

    def decode(self, ev: DropEvent, tracer: Tracer) -> dict:
        out = tracer.base(ev.head)
        if ev.reason == REASON_UNKNOWN:
            out["reason"] = out["reason_code"] = None
        else:
            out["reason_code"] = ev.reason
            out["reason"] = kernel.drop_reasons().names.get(ev.reason, str(ev.reason))
        if ev.has_protocol:
            out["protocol"] = kernel.ethertype_name(ev.protocol)
            out["ethertype"] = ev.protocol
        else:
            out["protocol"] = out["ethertype"] = None
        stack = tracer.stack(ev.stack_id)
        if ev.location:
            out["location"] = tracer.ksym(ev.location)
        else:  # fentry: the first frame that is not the hooked function
            func = (self.function() or "") + "+"
            out["location"] = next((f for f in stack if not f.startswith(func)),
                                   stack[0] if stack else None)
        out["stack"] = stack
        out["skbaddr"] = f"0x{ev.skbaddr:x}"
        src = addr(ev.family, ev.saddr)
        out["src"], out["dst"] = src, addr(ev.family, ev.daddr)
        out["proto"] = ev.l4proto if src else None
        ports = src is not None and ev.l4proto in (6, 17) and (ev.sport or ev.dport)
        out["sport"] = ev.sport if ports else None
        out["dport"] = ev.dport if ports else None
        return out

    def counts(self, tracer: Tracer) -> dict:
        names = kernel.drop_reasons().names
        by_reason: dict[str, int] = {}
        table = tracer.table("by_reason")
        for key in table:
            name = names.get(key.value, str(key.value))
            by_reason[name] = by_reason.get(name, 0) + percpu_sum(table, key)
        by_location: dict[str, int] = {}
        table = tracer.table("by_location")
        for key in table:
            where = tracer.ksym(key.value)
            by_location[where] = by_location.get(where, 0) + percpu_sum(table, key)
        return {"reason": by_reason, "location": by_location}


