"""Connection tracking in the real programs (BPF_PROG_TEST_RUN, no interface): a flow sent at
tc egress makes its replies pass at ingress (XDP and tc) before the rules; anything else
meets the rules; idle entries expire by their protocol's timeout; TCP FIN/RST shortens it;
entries survive a policy change."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from netctl.datapath.sandbox import Sandbox, sandbox_limits
from netctl.policy.compile import compile_policy
from netctl.policy.load import load_policy_text
from netctl.policy.model import Action

pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")

POLICY = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
conntrack: {udp: 1, tcp_closing: 1, icmp: 1}
rules:
  - {name: ssh-in, action: accept, proto: tcp, dport: 22}
"""
LIMITS = sandbox_limits(4)
HOST4, PEER4 = "10.9.0.1", "10.9.0.2"
HOST6, PEER6 = "2001:db8:9::1", "2001:db8:9::2"


def eth(payload) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / payload)


@pytest.fixture
def box():
    with Sandbox(LIMITS) as sandbox:
        sandbox.load(compile_policy(load_policy_text(POLICY, "ct.yaml"), LIMITS))
        yield sandbox


def ingress_both(box, frame):
    """The verdict of the XDP and the tc ingress program must agree; return it."""
    got = [box.run(frame, hook) for hook in ("xdp", "tc_ingress")]
    assert got[0].verdict == got[1].verdict and got[0].why == got[1].why, got
    return got[0]


@pytest.mark.parametrize("ip_out,ip_in", [
    (IP(src=HOST4, dst=PEER4), IP(src=PEER4, dst=HOST4)),
    (IPv6(src=HOST6, dst=PEER6), IPv6(src=PEER6, dst=HOST6)),
])
def test_udp_reply_passes_unsolicited_does_not_and_idle_expires(box, ip_out, ip_in):
    reply = eth(ip_in / UDP(sport=53, dport=40000) / b"answer")
    assert ingress_both(box, reply).why == "default"        # nothing sent yet: dropped
    sent = box.run(eth(ip_out / UDP(sport=40000, dport=53) / b"question"), "tc_egress")
    assert sent.verdict is Action.ACCEPT and sent.tracked
    got = ingress_both(box, reply)
    assert (got.verdict, got.why) == (Action.ACCEPT, "conntrack")
    other = eth(ip_in / UDP(sport=53, dport=40001))           # another port: not a reply
    assert ingress_both(box, other).verdict is Action.DROP
    spoof = eth(ip_in / UDP(sport=54, dport=40000))
    assert ingress_both(box, spoof).verdict is Action.DROP
    time.sleep(1.2)                                           # udp timeout: 1 s
    got = box.run(reply, "xdp")
    assert (got.verdict, got.why) == (Action.DROP, "default")
    assert not list(box.dp.maps["conntrack"].keys())          # the stale entry went


def test_tcp_handshake_then_fin_closes_after_the_closing_timeout(box):
    out = IP(src=HOST4, dst=PEER4)
    back = IP(src=PEER4, dst=HOST4)
    assert box.run(eth(out / TCP(sport=40000, dport=443, flags="S")), "tc_egress").tracked
    synack = eth(back / TCP(sport=443, dport=40000, flags="SA"))
    assert ingress_both(box, synack).why == "conntrack"
    (entry,) = box.dp.conntrack()
    assert entry["state"] == "established" and entry["dport"] == 443
    assert ingress_both(box, eth(back / TCP(sport=443, dport=40000, flags="FA"))).why == \
        "conntrack"
    (entry,) = box.dp.conntrack()
    assert entry["state"] == "closing"
    time.sleep(1.2)                                           # tcp_closing: 1 s
    stray = eth(back / TCP(sport=443, dport=40000, flags="A"))
    assert box.run(stray, "tc_ingress").verdict is Action.DROP


def test_established_tcp_keeps_the_long_timeout(box):
    out, back = IP(src=HOST4, dst=PEER4), IP(src=PEER4, dst=HOST4)
    box.run(eth(out / TCP(sport=40002, dport=80, flags="S")), "tc_egress")
    ingress_both(box, eth(back / TCP(sport=80, dport=40002, flags="SA")))
    time.sleep(1.2)   # past udp/closing timeouts, far from tcp_established (5 days)
    got = ingress_both(box, eth(back / TCP(sport=80, dport=40002, flags="A")))
    assert got.why == "conntrack"


def test_a_reset_for_an_untracked_flow_is_not_remembered(box):
    sent = box.run(eth(IP(src=HOST4, dst=PEER4) / TCP(sport=22, dport=5555, flags="R")),
                   "tc_egress")
    assert sent.verdict is Action.ACCEPT and not sent.tracked


@pytest.mark.parametrize("family", [4, 6])
def test_echo_replies_match_by_identifier(box, family):
    if family == 4:
        request = IP(src=HOST4, dst=PEER4) / ICMP(type=8, id=0x1234, seq=1)
        reply = IP(src=PEER4, dst=HOST4) / ICMP(type=0, id=0x1234, seq=1)
        other = IP(src=PEER4, dst=HOST4) / ICMP(type=0, id=0x4321, seq=1)
    else:
        request = IPv6(src=HOST6, dst=PEER6) / ICMPv6EchoRequest(id=0x1234, seq=1)
        reply = IPv6(src=PEER6, dst=HOST6) / ICMPv6EchoReply(id=0x1234, seq=1)
        other = IPv6(src=PEER6, dst=HOST6) / ICMPv6EchoReply(id=0x4321, seq=1)
    assert box.run(eth(request), "tc_egress").tracked
    assert ingress_both(box, eth(reply)).why == "conntrack"
    assert ingress_both(box, eth(other)).verdict is Action.DROP


def test_entries_survive_a_policy_change(box):
    box.run(eth(IP(src=HOST4, dst=PEER4) / TCP(sport=40003, dport=25, flags="S")),
            "tc_egress")
    changed = POLICY.replace("dport: 22", "dport: 2222")
    box.load(compile_policy(load_policy_text(changed, "ct2.yaml"), LIMITS))
    got = ingress_both(box, eth(IP(src=PEER4, dst=HOST4) / TCP(sport=25, dport=40003,
                                                              flags="SA")))
    assert got.why == "conntrack"


def test_stateless_policy_tracks_nothing(box):
    stateless = POLICY.replace("stateful: true\nconntrack: {udp: 1, tcp_closing: 1, icmp: 1}\n",
                               "")
    box.load(compile_policy(load_policy_text(stateless, "ct3.yaml"), LIMITS))
    sent = box.run(eth(IP(src=HOST4, dst=PEER4) / UDP(sport=40004, dport=53)), "tc_egress")
    assert not sent.tracked
    got = box.run(eth(IP(src=PEER4, dst=HOST4) / UDP(sport=53, dport=40004)), "xdp")
    assert got.why == "default"
