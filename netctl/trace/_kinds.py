"""The four tracer kinds: what each attaches to under each hook, the constants its C
needs, how its events decode and what its counters mean.

Each kind's C (bpf/trace/<kind>.c) holds all three variants of its entry points; a
``Program`` names one entry function and what it attaches to.
"""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _kernel as kernel
from ._events import (
    AF_INET,
    AF_INET6,
    CONG_PROBE,
    CONG_STATE,
    OLD_UNKNOWN,
    REASON_UNKNOWN,
    SOCK_EXCEED_BUF_LIMIT,
    SOCK_RCVQUEUE_FULL,
    SOCK_STATE,
    STATE_UNKNOWN,
    CongEvent,
    DropEvent,
    RetransEvent,
    SocketEvent,
    TraceHead,
)

if TYPE_CHECKING:
    from ._tracer import Tracer

TRACE_DIR = Path(__file__).resolve().parents[2] / "bpf" / "trace"
HOOKS = ("fentry", "tracepoint", "kprobe")

RINGBUF_PAGES = 64                  # 256 KiB per tracer
FLOW_ENTRIES = 16384                # per-flow / per-socket hashes
STACK_ENTRIES = 4096                # distinct drop stacks kept (~1 KiB each, preallocated)
LOCATION_ENTRIES = 4096             # distinct drop locations counted
PROBE_INTERVAL_NS = 100_000_000     # tcp_probe: at most one event per flow per 100 ms


@dataclass(frozen=True)
class Program:
    """One entry function of a compiled tracer and where it attaches: a tracepoint
    ("skb:kfree_skb"), a raw tracepoint ("raw:tcp_probe") or a kernel function (fentry,
    kprobe)."""

    fn: str
    target: str

    @property
    def raw(self) -> str | None:
        """The raw tracepoint's name, for a raw tracepoint program."""
        return self.target.removeprefix("raw:") if self.target.startswith("raw:") else None


class Flow(NamedTuple):
    """A TCP flow as a tracepoint saw it: addresses as text, ports as numbers."""

    proto: str
    saddr: str
    sport: int
    daddr: str
    dport: int


def _addr(family: int, raw) -> str | None:
    data = bytes(raw)
    if family == AF_INET:
        return str(ipaddress.IPv4Address(data[:4]))
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(data[:16]))
    return None


def _sum(table, key) -> int:
    """The total over CPUs of a per-CPU counter."""
    return int(table.sum(key).value)


def _array_counts(table, names: dict[int, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(len(table)):
        n = _sum(table, ctypes.c_int(i))
        if n:
            name = names.get(i, str(i))
            out[name] = out.get(name, 0) + n
    return out


class Kind:
    """What one tracer kind attaches to, how it compiles and decodes."""

    name = ""
    source = ""
    event_type: type[ctypes.Structure] = TraceHead
    size_macro = ""
    tracepoints: tuple[tuple[str, str], ...] = ()   # (tracepoint, entry function)
    kprobe_fn = ""

    @property
    def path(self) -> Path:
        return TRACE_DIR / self.source

    def function(self) -> str | None:
        """The kernel function fentry and kprobe attach to here, None if it has none."""
        raise NotImplementedError

    def plan(self) -> dict[str, list[Program] | str]:
        """Per hook, the programs to attach, or why the hook cannot exist here at all (so
        its variant is not even compiled).  A hook that may exist is left to the real
        load and attach to decide."""
        plan: dict[str, list[Program] | str] = {}
        missing = [tp for tp, _ in self.tracepoints if kernel.tracepoint_format(
            *tp.split(":")) is None]
        plan["tracepoint"] = (f"no tracepoint {', '.join(missing)} in this kernel" if missing
                              else [Program(fn, tp) for tp, fn in self.tracepoints])
        func = self.function()
        if func is None:
            plan["fentry"] = plan["kprobe"] = "no kernel function to attach to"
            return plan
        if kernel.btf_function(func) is None:
            plan["fentry"] = f"{func} is not a function in the kernel's BTF ({kernel.VMLINUX})"
        else:
            plan["fentry"] = [Program(f"kfunc__{func}", func)]
        if func not in kernel.kallsyms_functions():
            plan["kprobe"] = f"{func} is not in {kernel.KALLSYMS}"
        else:
            plan["kprobe"] = [Program(self.kprobe_fn, func)]
        return plan

    def variants(self, hook: str, programs: list[Program]) -> list[list[Program]]:
        """The ways to attach the hook's programs, best first (a kind may offer a raw
        tracepoint before the tracepoint it replaces)."""
        return [programs]

    def cflags(self, hooks: set[str]) -> list[str]:
        flags = {
            "WITH_FENTRY": int("fentry" in hooks),
            "WITH_TRACEPOINT": int("tracepoint" in hooks),
            "WITH_KPROBE": int("kprobe" in hooks),
            "RINGBUF_PAGES": RINGBUF_PAGES,
            "FLOW_ENTRIES": FLOW_ENTRIES,
            self.size_macro: ctypes.sizeof(self.event_type),
            **self.constants(),
        }
        return [f"-D{name}={value}" for name, value in flags.items()]

    def constants(self) -> dict[str, int]:
        return {}

    def decode(self, ev: Any, tracer: Tracer) -> dict:
        raise NotImplementedError

    def counts(self, tracer: Tracer) -> dict:
        raise NotImplementedError


# ---- drop ---------------------------------------------------------------------------------

# Where kfree_skb's tracepoint lives, newest first, with bpf/trace/drop.c's DROP_SIG.
DROP_FUNCTIONS = (("sk_skb_reason_drop", 1), ("kfree_skb_reason", 2), ("kfree_skb", 3))


class DropKind(Kind):
    name = "drop"
    source = "drop.c"
    event_type = DropEvent
    size_macro = "DROP_EVENT_SIZE"
    tracepoints = (("skb:kfree_skb", "netctl_drop_tp"),)
    kprobe_fn = "netctl_drop_kprobe"

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
        src = _addr(ev.family, ev.saddr)
        out["src"], out["dst"] = src, _addr(ev.family, ev.daddr)
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
            by_reason[name] = by_reason.get(name, 0) + _sum(table, key)
        by_location: dict[str, int] = {}
        table = tracer.table("by_location")
        for key in table:
            where = tracer.ksym(key.value)
            by_location[where] = by_location.get(where, 0) + _sum(table, key)
        return {"reason": by_reason, "location": by_location}


# ---- retrans ------------------------------------------------------------------------------


class RetransKind(Kind):
    name = "retrans"
    source = "retrans.c"
    event_type = RetransEvent
    size_macro = "RETRANS_EVENT_SIZE"
    tracepoints = (("tcp:tcp_retransmit_skb", "netctl_retrans_tp"),)
    kprobe_fn = "netctl_retrans_kprobe"

    def function(self) -> str | None:
        return "tcp_retransmit_skb"

    def constants(self) -> dict[str, int]:
        fmt = kernel.tracepoint_format("tcp", "tcp_retransmit_skb")
        return {"TP_HAS_ERR": int(bool(fmt and fmt.has("err")))}

    def decode(self, ev: RetransEvent, tracer: Tracer) -> dict:
        out = tracer.base(ev.head)
        out.update(_endpoints(ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport))
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
            n = _sum(table, key)
            if key.family:
                flow = Flow("tcp", _addr(key.family, key.saddr) or "", key.sport,
                            _addr(key.family, key.daddr) or "", key.dport)
                flows[flow] = flows.get(flow, 0) + n
            else:
                sockets[f"0x{key.skaddr:x}"] = n
        out: dict[str, dict] = {"flows": flows}
        if sockets:
            out["sockets"] = sockets
        return out


def _endpoints(family: int, saddr, sport: int, daddr, dport: int) -> dict:
    if not family:  # fentry/kprobe: the addresses are struct fields, not read
        return {"family": None, "saddr": None, "sport": None, "daddr": None, "dport": None}
    return {"family": kernel.FAMILIES.get(family, str(family)),
            "saddr": _addr(family, saddr), "sport": sport,
            "daddr": _addr(family, daddr), "dport": dport}


# ---- cong ---------------------------------------------------------------------------------


class CongKind(Kind):
    name = "cong"
    source = "cong.c"
    event_type = CongEvent
    size_macro = "CONG_EVENT_SIZE"
    tracepoints = (("tcp:tcp_cong_state_set", "netctl_cong_state_tp"),
                   ("tcp:tcp_probe", "netctl_cong_probe_tp"))
    kprobe_fn = "netctl_cong_kprobe"

    def function(self) -> str | None:
        return "tcp_set_ca_state"

    # tcp_probe fires for every ACK.  As a tracepoint the kernel first copies a dozen
    # fields and two sockaddrs for the program; as a raw tracepoint the program gets the
    # socket and the skb and reads those fields itself, only for the samples it sends.
    raw_probe = True

    def raw_probe_offsets(self) -> dict[str, int] | None:
        """The struct offsets (from BTF) the raw tcp_probe program reads, or None when
        they, or the raw tracepoint's (sock, sk_buff) arguments, are not all known."""
        if not self.raw_probe or kernel.raw_tracepoint_args("tcp_probe") != ("sock",
                                                                              "sk_buff"):
            return None
        common = kernel.struct_offset("sock", "__sk_common")
        out: dict[str, int] = {}
        for macro, (struct_name, member) in RAW_PROBE_FIELDS.items():
            offset = kernel.struct_offset(struct_name, member)
            if offset is None or common is None:
                return None
            out[macro] = offset + (common if struct_name == "sock_common" else 0)
        return out

    def variants(self, hook: str, programs: list[Program]) -> list[list[Program]]:
        if hook != "tracepoint" or self.raw_probe_offsets() is None:
            return [programs]
        raw = [Program("netctl_cong_probe_raw", "raw:tcp_probe") if p.target == "tcp:tcp_probe"
               else p for p in programs]
        return [raw, programs]

    def constants(self) -> dict[str, int]:
        fmt = kernel.tracepoint_format("tcp", "tcp_probe")
        out = {"PROBE_INTERVAL_NS": PROBE_INTERVAL_NS,
               "TP_PROBE_HAS_SKADDR": int(bool(fmt and fmt.has("skaddr"))),
               "TP_PROBE_HAS_COOKIE": int(bool(fmt and fmt.has("sock_cookie")))}
        offsets = self.raw_probe_offsets()
        states = {name: number for number, name in kernel.ca_states().items()}
        if offsets is not None and "CWR" in states and "Recovery" in states:
            out.update(offsets, WITH_RAW_PROBE=1, CA_CWR=states["CWR"],
                       CA_RECOVERY=states["Recovery"])
        return out

    def decode(self, ev: CongEvent, tracer: Tracer) -> dict:
        out = tracer.base(ev.head)
        out.update(_endpoints(ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport))
        out["skaddr"] = f"0x{ev.skaddr:x}" if ev.skaddr else None
        names = kernel.ca_states()
        if ev.head.what == CONG_STATE:
            out["event"] = "state"
            out["state"] = names.get(ev.state, str(ev.state))
            out["old_state"] = (None if ev.old_state == OLD_UNKNOWN
                                else names.get(ev.old_state, str(ev.old_state)))
        elif ev.head.what == CONG_PROBE:
            out["event"] = "probe"
            out.update(snd_cwnd=ev.snd_cwnd, ssthresh=ev.ssthresh, srtt=ev.srtt_us,
                       snd_wnd=ev.snd_wnd, rcv_wnd=ev.rcv_wnd, data_len=ev.data_len,
                       snd_nxt=ev.snd_nxt, snd_una=ev.snd_una,
                       sock_cookie=ev.sock_cookie or None)
        return out

    def counts(self, tracer: Tracer) -> dict:
        probes = tracer.table("probe_count")
        return {"state": _array_counts(tracer.table("state_count"), kernel.ca_states()),
                "probe": {"seen": _sum(probes, ctypes.c_int(0)),
                          "sampled": _sum(probes, ctypes.c_int(1))}}


# What the raw tcp_probe program reads: macro -> (struct, member).
RAW_PROBE_FIELDS = {
    "SK_OFF_FAMILY": ("sock_common", "skc_family"),
    "SK_OFF_NUM": ("sock_common", "skc_num"),
    "SK_OFF_DPORT": ("sock_common", "skc_dport"),
    "SK_OFF_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "SK_OFF_DADDR": ("sock_common", "skc_daddr"),
    "SK_OFF_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
    "SK_OFF_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "SK_OFF_COOKIE": ("sock_common", "skc_cookie"),
    "TP_OFF_SND_CWND": ("tcp_sock", "snd_cwnd"),
    "TP_OFF_SND_SSTHRESH": ("tcp_sock", "snd_ssthresh"),
    "TP_OFF_SRTT_US": ("tcp_sock", "srtt_us"),
    "TP_OFF_SND_WND": ("tcp_sock", "snd_wnd"),
    "TP_OFF_RCV_WND": ("tcp_sock", "rcv_wnd"),
    "TP_OFF_SND_NXT": ("tcp_sock", "snd_nxt"),
    "TP_OFF_SND_UNA": ("tcp_sock", "snd_una"),
    "SKB_OFF_LEN": ("sk_buff", "len"),
    "SKB_OFF_DATA": ("sk_buff", "data"),
}


# ---- socket -------------------------------------------------------------------------------

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
            out.update(_endpoints(st.family, st.saddr, st.sport, st.daddr, st.dport))
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
        return {"newstate": _array_counts(tracer.table("state_count"), kernel.tcp_states()),
                "drops": {event.removeprefix("sock_"): _sum(drops, ctypes.c_int(what))
                          for what, (_, event) in SOCKET_DROPS.items()}}


KIND_TYPES: dict[str, type[Kind]] = {k.name: k for k in (DropKind, RetransKind, CongKind,
                                                          SocketKind)}
