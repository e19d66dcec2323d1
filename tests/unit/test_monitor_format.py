"""`netctl monitor`'s text line for every event kind, as each tracer variant decodes it.

The events below carry the keys the kinds' decoders write (netctl/observe/trace/kinds/), once as
the tracepoint variant fills them and once as the fentry and kprobe variants do, where the
addresses, the socket state or the previous state can be unknown (None).  No kernel needed:
formatting is pure."""

from __future__ import annotations

import pytest

from netctl.observe.monitor import format_event

BASE = {"time": 1_700_000_000.25, "cpu": 1, "pid": 42, "tid": 42, "comm": "curl"}
UNKNOWN_FLOW = {"family": None, "saddr": None, "sport": None, "daddr": None, "dport": None}
FLOW = {"family": "AF_INET", "saddr": "10.0.0.1", "sport": 40000, "daddr": "10.0.0.2",
        "dport": 80}

EVENTS = {
    "policy": {"type": "policy", "dev": "eth0", "hook": "tc", "direction": "ingress",
               "verdict": "drop", "rule": None, "reason": "default", "proto": 6,
               "src": "192.0.2.1", "dst": "192.0.2.2", "sport": 1234, "dport": 22},
    "drop": {"type": "drop", "reason": "NETFILTER_DROP", "location": "nf_hook_slow+0x9a",
             **FLOW},
    "drop-unknown": {"type": "drop", "reason": None, "location": None, **UNKNOWN_FLOW},
    "retrans": {"type": "retrans", "state": "ESTABLISHED", "skaddr": "0x1", **FLOW},
    "retrans-unknown": {"type": "retrans", "state": None, "skaddr": "0x1", **UNKNOWN_FLOW},
    "cong-state": {"type": "cong", "event": "state", "state": "Recovery",
                   "old_state": "Open", "skaddr": "0x1", **FLOW},
    "cong-state-unknown": {"type": "cong", "event": "state", "state": "Loss",
                           "old_state": None, "skaddr": None, **UNKNOWN_FLOW},
    "cong-probe": {"type": "cong", "event": "probe", "snd_cwnd": 10, "ssthresh": 7,
                   "srtt": 120, "snd_wnd": 1, "rcv_wnd": 1, "data_len": 0, "snd_nxt": 1,
                   "snd_una": 1, "sock_cookie": None, "skaddr": "0x1", **FLOW},
    "socket-state": {"type": "socket", "event": "state", "oldstate": "SYN_SENT",
                     "newstate": "ESTABLISHED", "protocol": "IPPROTO_TCP", "skaddr": "0x1",
                     "duration_ms": 1.5, **FLOW},
    "socket-state-unknown": {"type": "socket", "event": "state", "oldstate": None,
                             "newstate": "CLOSE", "protocol": "IPPROTO_TCP",
                             "skaddr": "0x1", **UNKNOWN_FLOW},
    "socket-drop": {"type": "socket", "event": "rcvqueue_full", "skaddr": "0x1"},
}

WANT = {
    "policy": ("drop default", "192.0.2.1:1234 > 192.0.2.2:22"),
    "drop": ("drop NETFILTER_DROP", "10.0.0.1:40000 > 10.0.0.2:80"),
    "drop-unknown": ("drop ?", None),
    "retrans": ("retransmit", "ESTABLISHED"),
    "retrans-unknown": ("retransmit", None),
    "cong-state": ("Open -> Recovery", "state"),
    "cong-state-unknown": ("? -> Loss", "state"),
    "cong-probe": ("cwnd 10 srtt 120us", "probe"),
    "socket-state": ("SYN_SENT -> ESTABLISHED", "curl"),
    "socket-state-unknown": ("? -> CLOSE", "curl"),
    "socket-drop": ("rcvqueue_full", "curl"),
}


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_every_kind_and_variant_formats(name):
    line = format_event({**BASE, **EVENTS[name]})
    what, also = WANT[name]
    assert what in line, line
    if also is not None:
        assert also in line, line
    assert "None" not in line and len(line) <= 100, line


def test_every_monitor_type_has_an_event_here():
    from netctl.observe.monitor import TYPES

    assert set(TYPES) <= {e["type"] for e in EVENTS.values()}


def test_the_kinds_are_one_list_and_the_cli_names_them_all():
    import contextlib
    import io

    from netctl.cli import main
    from netctl.observe.monitor import TYPES
    from netctl.observe.trace import KINDS

    assert ("policy", *KINDS) == TYPES
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["monitor", "--help"])
    assert all(kind in out.getvalue() for kind in TYPES), out.getvalue()
