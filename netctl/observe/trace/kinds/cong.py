"""TCP congestion: state changes (tcp:tcp_cong_state_set, tcp_set_ca_state) and sampled
tcp_probe readings (window, RTT)."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from .. import _kernel as kernel
from .._events import CONG_PROBE, CONG_STATE, OLD_UNKNOWN, CongEvent
from .base import PROBE_INTERVAL_NS, Kind, Program, array_counts, endpoints, percpu_sum

if TYPE_CHECKING:
    from .._tracer import Tracer


class CongKind(Kind):
    name = "cong"
    source = "cong.c"
    event_type = CongEvent
    size_macro = "CONG_EVENT_SIZE"
    tracepoints = (("tcp:tcp_cong_state_set", "netctl_cong_state_tp"),
                   ("tcp:tcp_probe", "netctl_cong_probe_tp"))
    kprobe_fn = "netctl_cong_kprobe"

    @staticmethod
    def columns(e: dict) -> tuple[str, str]:
        what = (f"cwnd {e['snd_cwnd']} srtt {e.get('srtt', '?')}us" if "snd_cwnd" in e
                else f"{e.get('old_state') or '?'} -> {e.get('state') or '?'}")
        return (e.get("event") or ""), what

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
        out.update(endpoints(ev.family, ev.saddr, ev.sport, ev.daddr, ev.dport))
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
        return {"state": array_counts(tracer.table("state_count"), kernel.ca_states()),
                "probe": {"seen": percpu_sum(probes, ctypes.c_int(0)),
                          "sampled": percpu_sum(probes, ctypes.c_int(1))}}


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


