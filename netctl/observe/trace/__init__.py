"""Kernel tracers for `netctl monitor`, `netctl top`, `netctl exporter` and `netctl doctor`.

Four kinds (``KINDS``), each a bcc program in bpf/trace/<kind>.c:

    drop      skb:kfree_skb: drop reason (named by the running kernel), ethertype,
              location and kernel stack; counted per reason and per location
    retrans   tcp:tcp_retransmit_skb: flow and TCP state; counted per flow
    cong      tcp:tcp_cong_state_set (Open, Disorder, CWR, Recovery, Loss, with the last
              state seen) and tcp:tcp_probe (cwnd, ssthresh, srtt; sampled in the kernel)
    socket    sock:inet_sock_set_state (lifecycle, duration at CLOSE),
              sock:sock_rcvqueue_full and sock:sock_exceed_buf_limit (socket-level drops)

Each tracer takes the best hook that really loads and attaches, fentry > tracepoint >
kprobe, and says which (``Tracer.hook``) and why (``Tracer.why``).  Usage::

    tracers = open_tracers(["drop", "retrans"])
    try:
        while True:
            for t in tracers:
                for event in t.poll(100):
                    print(event["type"], event)
    finally:
        for t in tracers:
            t.close()

Every event is a dict with "type" (the kind), "time" (Unix seconds), "cpu", "pid", "tid"
and "comm" (the task current when the event fired) and the kind's fields; see the
``decode`` methods in ``kinds/`` and docs of each kind's C file.
"""

from ._kernel import TraceSetupError
from ._tracer import KINDS, HookError, Tracer, open_tracers, probe_hooks
from .kinds import HOOKS, Flow

__all__ = ["HOOKS", "KINDS", "Flow", "HookError", "TraceSetupError", "Tracer", "open_tracers",
           "probe_hooks"]
