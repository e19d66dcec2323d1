"""Socket events: TCP state changes with each state's duration, and receive-queue and
buffer-limit drops."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from .. import _kernel as kernel
from .._events import (
    SOCK_EXCEED_BUF_LIMIT,
    SOCK_RCVQUEUE_FULL,
    SOCK_STATE,
    STATE_UNKNOWN,
    SocketEvent,
)
from .base import Kind, array_counts, endpoints, percpu_sum

if TYPE_CHECKING:
    from .._tracer import Tracer


SOCKET_DROPS = {SOCK_RCVQUEUE_FULL: ("sock", "sock_rcvqueue_full"),
                SOCK_EXCEED_BUF_LIMIT: ("sock", "sock_exceed_buf_limit")}


class SocketKind(Kind):
    name = "socket"
    source = "socket.c"
    event_type = SocketEvent
    size_macro = "SOCKET_EVENT_SIZE"
    tracepoints = (("sock:inet_sock_set_state", "netctl_sock_state_tp"),
                   ("sock:sock_rcvqueue_full", "netctl_sock_rcvq_tp"),
                   ("sock:sock_exceed_buf_limit", "netctl_sock_buflim_tp"))
    kprobe_fn = "netctl_sock_kprobe"

    @staticmethod
    def columns(e: dict) -> tuple[str, str]:
        what = (f"{e.get('oldstate') or '?'} -> {e.get('newstate') or '?'}" if "newstate" in e
                else e.get("event") or "socket drop")
        if e.get("duration_ms") is not None:
            what += f" ({e['duration_ms']} ms)"
        return (e.get("comm", "") or ""), what

    def function(self) -> str | None:
        return "tcp_set_state"

    def constants(self) -> dict[str, int]:
        sizes = {}
        for what, macro in ((SOCK_RCVQUEUE_FULL, "RCVQ_RAW_SIZE"),
                            (SOCK_EXCEED_BUF_LIMIT, "BUFLIM_RAW_SIZE")):
            fmt = kernel.tracepoint_format(*SOCKET_DROPS[what])
            sizes[macro] = fmt.record_size if fmt else 0
        return {"TCP_CLOSE_STATE": kernel.tcp_close_state(), **sizes}

    def decode(self, ev: SocketEvent, tracer: Tracer) -> dict:
        out = tracer.base(ev.head)
        what = ev.head.what
        if what == SOCK_STATE:
            st = ev.st
            states = kernel.tcp_states()
            out["event"] = "state"
            out["oldstate"] = (None if st.oldstate == STATE_UNKNOWN
                               else states.get(st.oldstate, str(st.oldstate)))
            out["newstate"] = states.get(st.newstate, str(st.newstate))
            out["protocol"] = kernel.sock_protocols().get(st.protocol, str(st.protocol))
            out.update(endpoints(st.family, st.saddr, st.sport, st.daddr, st.dport))
            out["skaddr"] = f"0x{st.skaddr:x}"
            if st.has_duration:
                out["duration_ms"] = st.duration_ns / 1e6
            return out
        category, event = SOCKET_DROPS.get(what, ("sock", "?"))
        out["event"] = event.removeprefix("sock_")
        fmt = kernel.tracepoint_format(category, event)
        if fmt is not None:
            for name, value in fmt.decode(bytes(ev.raw[:ev.raw_len])).items():
                out.setdefault(name, value)
        return out

    def counts(self, tracer: Tracer) -> dict:
        drops = tracer.table("drop_count")
        return {"newstate": array_counts(tracer.table("state_count"), kernel.tcp_states()),
                "drops": {event.removeprefix("sock_"): percpu_sum(drops, ctypes.c_int(what))
                          for what, (_, event) in SOCKET_DROPS.items()}}


