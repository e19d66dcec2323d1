"""Datapath events cost nothing while nobody listens: a dropped packet makes an event (ring
buffer, timestamp) only while a monitor holds the lease, and a lease that runs out (a
monitor killed) stops them by itself."""

from __future__ import annotations

import time

import pytest
from strategies import make_policy

from netctl import abi
from netctl.datapath.sandbox import Sandbox
from netctl.policy.compile import compile_policy
from netctl.policy.plan import Limits

pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")

LIMITS = Limits(rules=16)


def _events(box: Sandbox) -> int:
    return box.dp.stats()[abi.STAT_EVENTS][0]


def test_events_only_while_a_listener_holds_the_lease():
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    frame = bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(dport=53))
    with Sandbox(LIMITS) as box:
        box.load(compile_policy(make_policy({"action": "drop", "proto": "udp", "dport": 53}),
                                LIMITS))
        for hook in ("xdp", "tc_ingress"):
            before = _events(box)
            assert box.run(frame, hook).why == "rule"
            assert _events(box) == before and not box.dp.listening()
            box.dp.listen(5)
            assert box.dp.listening()
            box.run(frame, hook)
            assert _events(box) == before + 1
            box.dp.stop_listening()
            box.run(frame, hook)
            assert _events(box) == before + 1
        box.dp.listen(0.05)              # a listener that stopped renewing: the lease ends
        time.sleep(0.1)
        before = _events(box)
        box.run(frame, "xdp")
        assert _events(box) == before and not box.dp.listening()
