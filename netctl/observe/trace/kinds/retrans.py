"""TCP segments retransmitted (tcp:tcp_retransmit_skb, tcp_retransmit_skb), by flow."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .. import _kernel as kernel
from .._events import STATE_UNKNOWN, RetransEvent
from .base import Flow, Kind, Metric, addr, endpoints, percpu_sum

if TYPE_CHECKING:
    from .._tracer import Tracer


class RetransKind(Kind):
    name = "retrans"
    source = "retrans.c"
    event_type = RetransEvent
    size_macro = "RETRANS_EVENT_SIZE"
    tracepoints = (("tcp:tcp_retransmit_skb", "netctl_retrans_tp"),)
    kprobe_fn = "netctl_retrans_kprobe"
    exported = True
    top_sections = {"retrans": "TCP RETRANSMITS (FLOW)"}

    @staticmethod
    def columns(e: dict) -> tuple[str, str]:
        # The fentry and kprobe variants may not know the socket's state: None.
        return (e.get("state") or ""), f"retransmit #{e.get('count', '')}".rstrip(" #")

    @classmethod
    def top_rows(cls, counts: dict) -> dict[str, Counter]:
        rows: Counter = Counter()
        for flow, n in counts.get("flows", {}).items():
            rows[f"{flow.saddr}:{flow.sport} > {flow.daddr}:{flow.dport}"] += n
        return {"retrans": rows}

    @classmethod
    def metrics(cls, counts: dict) -> list[Metric]:
        total = sum(counts.get("flows", {}).values()) + sum(counts.get("sockets", {}).values())
        return [Metric("netctl_tcp_retransmits", "counter", "TCP segments retransmitted", (),
                       [((), total)])]

    def function(self) -> str | None:
        return "tcp_retransmit_skb"

    def constants(self) -> dict[str, int]:
        fmt = kernel.tracepoint_format("tcp", "tcp_retransmit_skb")
        return {"TP_HAS_ERR": int(bool(fmt and fmt.has("err")))}

    def decode(self, ev: RetransEvent, tracer: Tracer) -> dict:
        out = tracer.base(ev.head)
        out.update(endpoints(ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport))
        out["state"] = (None if ev.state == STATE_UNKNOWN
                        else kernel.tcp_states().get(ev.state, str(ev.state)))
        if ev.has_err:
            out["err"] = ev.err
        out["skaddr"] = f"0x{ev.skaddr:x}"
        return out

    def counts(self, tracer: Tracer) -> dict:
        flows: dict[Flow, int] = {}
        sockets: dict[str, int] = {}
        table = tracer.table("flows")
        for key in table:
            n = percpu_sum(table, key)
            if key.family:
                flow = Flow("tcp", addr(key.family, key.saddr) or "", key.sport,
                            addr(key.family, key.daddr) or "", key.dport)
                flows[flow] = flows.get(flow, 0) + n
            else:
                sockets[f"0x{key.skaddr:x}"] = n
        out: dict[str, dict] = {"flows": flows}
        if sockets:
            out["sockets"] = sockets
        return out


