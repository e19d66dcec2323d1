"""Connection tracking in the real programs (BPF_PROG_TEST_RUN, no interface): a flow sent at
tc egress makes its valid replies pass at ingress (XDP and tc) before the rules, and ICMP
errors about it too; anything else meets the rules.  The TCP state machine: a flow waits in
the table of unconfirmed flows until a reply acknowledges what the host sent; a new SYN on
a tuple starts it over; a RST or FIN outside the advertised window (window scale option
read from the SYN) changes nothing; a flood of unanswered flows evicts no confirmed one.
Idle entries expire by their state's timeout; entries survive a policy change.

Most scenarios run in lockstep with the reference tracker (netctl.policy.conntrack): the
verdicts, the counts and both tables must equal the kernel's (tests/lockstep.py)."""

from __future__ import annotations

import time

import pytest
from lockstep import Lockstep
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
)
from scapy.layers.l2 import Ether

from netctl import abi
from netctl.datapath.sandbox import Sandbox, sandbox_limits
from netctl.policy.compile import compile_policy
from netctl.policy.load import load_policy_text
from netctl.policy.model import Action

pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")

POLICY = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
conntrack: {udp: 1, tcp_closing: 1, tcp_unconfirmed: 1, icmp: 1}
rules:
  - {name: ssh-in, action: accept, proto: tcp, dport: 22}
"""
LIMITS = sandbox_limits(4)
HOST4, PEER4 = "10.9.0.1", "10.9.0.2"
HOST6, PEER6 = "2001:db8:9::1", "2001:db8:9::2"
OUT4, BACK4 = IP(src=HOST4, dst=PEER4), IP(src=PEER4, dst=HOST4)
WSCALE7 = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
           ("WScale", 7)]


def eth(payload) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / payload)


def out(flags, seq, ack=0, window=502, options=(), payload=b"", sport=40000, dport=443,
        ip=OUT4) -> bytes:
    return eth(ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack,
                        window=window, options=list(options)) / payload)


def back(flags, seq, ack=0, window=1000, payload=b"", sport=443, dport=40000,
         ip=BACK4) -> bytes:
    return eth(ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack,
                        window=window) / payload)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(LIMITS) as built:
        yield built


@pytest.fixture
def box(sandbox):
    """The module's sandbox with POLICY live and both tables empty."""
    sandbox.load(compile_policy(load_policy_text(POLICY, "ct.yaml"), LIMITS))
    sandbox.clear_conntrack()
    return sandbox


def ingress_both(box, frame):
    """The verdict of the XDP and the tc ingress program must agree; return it."""
    got = [box.run(frame, hook) for hook in ("xdp", "tc_ingress")]
    assert got[0].verdict == got[1].verdict and got[0].why == got[1].why, got
    return got[0]


def flows(box) -> dict[tuple, dict]:
    """(local port, remote port, proto) -> the entry as `netctl conntrack` shows it."""
    return {(f["sport"], f["dport"], f["proto"]): f for f in box.dp.conntrack()}


def Both(box):   # noqa: N802 - reads as the pair it is
    """The real programs and the reference tracker in lockstep (tests/lockstep.py)."""
    return Lockstep(box, load_policy_text(POLICY, "ct.yaml"))


@pytest.mark.parametrize("ip_out,ip_in", [
    (IP(src=HOST4, dst=PEER4), IP(src=PEER4, dst=HOST4)),
    (IPv6(src=HOST6, dst=PEER6), IPv6(src=PEER6, dst=HOST6)),
])
def test_udp_reply_passes_unsolicited_does_not_and_idle_expires(box, ip_out, ip_in):
    reply = eth(ip_in / UDP(sport=53, dport=40000) / b"answer")
    assert ingress_both(box, reply).why == "default"        # nothing sent yet: dropped
    sent = box.run(eth(ip_out / UDP(sport=40000, dport=53) / b"question"), "tc_egress")
    assert sent.verdict is Action.ACCEPT and sent.tracked
    assert flows(box)[(40000, 53, 17)]["table"] == "unconfirmed"
    got = ingress_both(box, reply)
    assert (got.verdict, got.why) == (Action.ACCEPT, "conntrack")
    assert flows(box)[(40000, 53, 17)]["table"] == "confirmed"   # the reply confirmed it
    other = eth(ip_in / UDP(sport=53, dport=40001))           # another port: not a reply
    assert ingress_both(box, other).verdict is Action.DROP
    spoof = eth(ip_in / UDP(sport=54, dport=40000))
    assert ingress_both(box, spoof).verdict is Action.DROP
    time.sleep(1.2)                                           # udp timeout: 1 s
    got = box.run(reply, "xdp")
    assert (got.verdict, got.why) == (Action.DROP, "default")
    assert abi.STAT_CT_EXPIRED in got.ct
    assert not list(box.dp.maps["conntrack"].keys())          # the stale entry went


def test_tcp_handshake_confirms_then_fin_closes_after_the_closing_timeout(box):
    assert box.run(out("S", 1000), "tc_egress").tracked
    (entry,) = box.dp.conntrack()
    assert (entry["table"], entry["state"], entry["tcp"]["opened_by"]) == (
        "unconfirmed", "new", "syn")
    assert ingress_both(box, back("SA", 5000, ack=1001)).why == "conntrack"
    (entry,) = box.dp.conntrack()
    assert (entry["table"], entry["state"], entry["dport"]) == ("confirmed", "established", 443)
    box.run(out("A", 1001, ack=5001), "tc_egress")
    assert ingress_both(box, back("FA", 5001, ack=1001)).why == "conntrack"
    (entry,) = box.dp.conntrack()
    assert entry["state"] == "closing"
    time.sleep(1.2)                                           # tcp_closing: 1 s
    assert box.run(back("A", 5002, ack=1001), "tc_ingress").verdict is Action.DROP


def test_established_tcp_keeps_the_long_timeout(box):
    box.run(out("S", 1, sport=40002, dport=80), "tc_egress")
    ingress_both(box, back("SA", 7, ack=2, sport=80, dport=40002))
    time.sleep(1.2)   # past the udp, closing and unconfirmed timeouts, far from 5 days
    got = ingress_both(box, back("A", 8, ack=2, sport=80, dport=40002))
    assert got.why == "conntrack"


def test_an_unanswered_syn_expires_with_the_unconfirmed_timeout(box):
    box.run(out("S", 1000), "tc_egress")
    time.sleep(1.2)                                           # tcp_unconfirmed: 1 s
    got = box.run(back("SA", 5000, ack=1001), "xdp")
    assert (got.why, got.ct) == ("default", {abi.STAT_CT_UNCONFIRMED_EXPIRED})
    assert box.dp.conntrack() == []


def test_a_reset_for_an_untracked_flow_is_not_remembered(box):
    sent = box.run(out("R", 77, sport=22, dport=5555), "tc_egress")
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
    box.run(out("S", 10, sport=40003, dport=25), "tc_egress")
    changed = POLICY.replace("dport: 22", "dport: 2222")
    box.load(compile_policy(load_policy_text(changed, "ct2.yaml"), LIMITS))
    got = ingress_both(box, back("SA", 99, ack=11, sport=25, dport=40003))
    assert got.why == "conntrack"


def test_stateless_policy_tracks_nothing(box):
    stateless = POLICY.replace(
        "stateful: true\nconntrack: {udp: 1, tcp_closing: 1, tcp_unconfirmed: 1, icmp: 1}\n",
        "")
    box.load(compile_policy(load_policy_text(stateless, "ct3.yaml"), LIMITS))
    sent = box.run(eth(IP(src=HOST4, dst=PEER4) / UDP(sport=40004, dport=53)), "tc_egress")
    assert not sent.tracked
    got = box.run(eth(IP(src=PEER4, dst=HOST4) / UDP(sport=53, dport=40004)), "xdp")
    assert got.why == "default"


# ---- the handshake: only a reply acknowledging the host's segment confirms -------------

def test_a_syn_ack_that_does_not_acknowledge_the_syn_is_invalid(box):
    both = Both(box)
    both.run(out("S", 1000), "tc_egress")
    for ack in (0, 1000, 1002, 0x80001000):                   # not isn + 1
        got = both.run(back("SA", 5000, ack=ack), "xdp")
        assert (got.verdict, got.why) == (Action.DROP, "default")
        assert got.ct == {abi.STAT_CT_INVALID}
    assert both.run(back("A", 5000, ack=1001), "xdp").ct == {abi.STAT_CT_INVALID}  # no SYN
    assert both.run(back("S", 5000), "xdp").ct == frozenset()   # a SYN is never a reply
    assert flows(box)[(40000, 443, 6)]["table"] == "unconfirmed"
    got = both.run(back("SA", 5000, ack=1001), "tc_ingress")
    assert (got.why, got.ct) == ("conntrack", {abi.STAT_CT_CONFIRMED})


@pytest.mark.parametrize("flags,ack,valid", [("RA", 1001, True), ("RA", 1000, False),
                                             ("R", 1001, False), ("RA", 1002, False)])
def test_a_reset_answers_the_syn_only_if_it_acknowledges_it(box, flags, ack, valid):
    both = Both(box)
    both.run(out("S", 1000), "tc_egress")
    got = both.run(back(flags, 0, ack=ack), "xdp")
    assert got.why == ("conntrack" if valid else "default")
    (entry,) = box.dp.conntrack()
    assert (entry["table"], entry["state"]) == ("unconfirmed", "closing" if valid else "new")


def test_the_host_accepting_a_connection_waits_for_the_peers_ack(box):
    """The host answers a SYN (ssh-in allows it) with a SYN-ACK: unconfirmed until the
    peer's ACK acknowledges it."""
    both = Both(box)
    syn = back("S", 7000, sport=50000, dport=22)
    assert both.run(syn, "xdp").why == "rule"
    both.run(out("SA", 3000, ack=7001, sport=22, dport=50000, options=WSCALE7), "tc_egress")
    (entry,) = box.dp.conntrack()
    assert (entry["table"], entry["tcp"]["opened_by"], entry["tcp"]["wscale"]) == (
        "unconfirmed", "syn-ack", 7)
    # An ACK of something else: invalid for the tracker, and the rule still takes it.
    got = both.run(back("A", 7001, ack=3005, sport=50000, dport=22), "xdp")
    assert (got.why, got.ct) == ("rule", {abi.STAT_CT_INVALID})
    got = both.run(back("A", 7001, ack=3001, sport=50000, dport=22), "tc_ingress")
    assert (got.why, got.ct) == ("conntrack", {abi.STAT_CT_CONFIRMED})
    (entry,) = box.dp.conntrack()
    assert (entry["table"], entry["state"]) == ("confirmed", "established")


def test_a_segment_of_a_running_flow_is_picked_up_and_confirmed_by_the_peers_ack(box):
    both = Both(box)
    both.run(out("PA", 100, ack=900, window=1000, payload=b"x" * 50), "tc_egress")
    (entry,) = box.dp.conntrack()
    assert (entry["table"], entry["tcp"]["opened_by"], entry["tcp"]["wscale"]) == (
        "unconfirmed", "mid-stream", 14)
    assert entry["tcp"]["our_maxwin"] == 1000 << 14          # the largest scale assumed
    assert both.run(back("A", 900, ack=151), "xdp").ct == {abi.STAT_CT_INVALID}  # beyond
    assert both.run(back("A", 900, ack=150), "xdp").ct == {abi.STAT_CT_CONFIRMED}


# ---- a new connection on a tuple starts it over -----------------------------------------

@pytest.mark.parametrize("how", ["closing", "stale", "established"])
def test_a_new_syn_starts_its_tuple_over(box, how):
    both = Both(box)
    both.run(out("S", 1000), "tc_egress")
    both.run(back("SA", 5000, ack=1001), "xdp")
    both.run(out("A", 1001, ack=5001), "tc_egress")
    if how != "established":
        both.run(out("RA", 1001, ack=5001), "tc_egress")       # the host resets it
        assert flows(box)[(40000, 443, 6)]["state"] == "closing"
    if how == "stale":
        time.sleep(1.2)                                       # tcp_closing: 1 s
    got = both.run(out("S", 90000), "tc_egress")               # a new ISN: a new connection
    assert got.ct == {abi.STAT_CT_EXPIRED, abi.STAT_CT_NEW}
    (entry,) = box.dp.conntrack()
    assert (entry["table"], entry["state"], entry["packets_out"]) == ("unconfirmed", "new", 1)
    assert both.run(back("SA", 1, ack=90001), "xdp").why == "conntrack"
    (entry,) = box.dp.conntrack()
    assert (entry["table"], entry["state"]) == ("confirmed", "established")


def test_a_retransmitted_syn_is_the_same_connection(box):
    both = Both(box)
    both.run(out("S", 1000, options=WSCALE7), "tc_egress")
    got = both.run(out("S", 1000, options=WSCALE7), "tc_egress")
    assert not got.tracked and got.ct == frozenset()
    (entry,) = box.dp.conntrack()
    assert (entry["packets_out"], entry["tcp"]["wscale"]) == (2, 7)


# ---- RST and FIN must lie in the window the host advertised -----------------------------

@pytest.mark.parametrize("options,shift", [(WSCALE7, 7), ((), 0),
                                           ([("WScale", 20)], 14)])
def test_resets_and_fins_outside_the_window_change_nothing(box, options, shift):
    both = Both(box)
    both.run(out("S", 1000, window=64240, options=options), "tc_egress")
    both.run(back("SA", 5000, ack=1001), "xdp")
    both.run(out("A", 1001, ack=5001, window=300), "tc_egress")
    # The SYN's own window (unscaled) counts too: the peer may send that far from its ISN.
    maxwin = max(300 << shift, 64240)
    right = 5001 + maxwin
    low = (5001 - maxwin) & 0xFFFFFFFF
    for seq in (right + 1, (low - 1) & 0xFFFFFFFF, (5001 + 0x80000000) & 0xFFFFFFFF):
        for flags in ("R", "RA", "FA"):
            got = both.run(back(flags, seq, ack=1001), "tc_ingress")
            assert (got.why, got.ct) == ("default", {abi.STAT_CT_INVALID}), (flags, seq)
    assert flows(box)[(40000, 443, 6)]["state"] == "established"
    assert both.run(back("A", 0x12345678, ack=1001), "xdp").why == "conntrack"  # not checked
    assert both.run(back("R", low, ack=1001), "xdp").why == "conntrack"   # the lower edge
    assert flows(box)[(40000, 443, 6)]["state"] == "closing"


def test_a_reset_at_the_windows_right_edge_is_accepted(box):
    both = Both(box)
    both.run(out("S", 1000, options=WSCALE7), "tc_egress")
    both.run(back("SA", 5000, ack=1001), "xdp")
    both.run(out("A", 1001, ack=5001, window=300), "tc_egress")
    assert both.run(back("R", 5001 + (300 << 7), ack=1001), "xdp").why == "conntrack"


def test_the_host_acknowledging_more_moves_the_window(box):
    both = Both(box)
    both.run(out("S", 1000, options=WSCALE7), "tc_egress")
    both.run(back("SA", 5000, ack=1001), "xdp")
    both.run(out("A", 1001, ack=5001, window=10), "tc_egress")
    both.run(back("PA", 5001, ack=1001, payload=b"y" * 3000), "xdp")
    both.run(out("A", 1001, ack=8001, window=10), "tc_egress")
    assert both.run(back("FA", 8001 + (10 << 7) + 1, ack=1001), "xdp").why == "default"
    assert both.run(back("FA", 8001 + (10 << 7), ack=1001), "xdp").why == "conntrack"


# ---- a flood of unanswered flows --------------------------------------------------------

def test_a_syn_ack_flood_evicts_no_confirmed_flow():
    """640 SYN-ACKs (answers to spoofed SYNs) against a 64-entry table: they fill the
    16-entry table of unconfirmed flows; the 40 confirmed flows all stay."""
    small = POLICY.replace("icmp: 1}", "icmp: 1, size: 64}")
    with Sandbox(LIMITS, conntrack_size=64) as box:
        box.load(compile_policy(load_policy_text(small, "ct.yaml"), LIMITS))
        assert box.dp.constants["NETCTL_CT_UNCONFIRMED_ENTRIES"] == 16
        for i in range(40):
            box.run(out("S", 1000, sport=41000 + i), "tc_egress")
            assert box.run(back("SA", 5, ack=1001, dport=41000 + i), "xdp").why == "conntrack"
        for i in range(640):
            spoofed = IP(src=f"10.99.{i >> 8}.{i & 255}", dst=HOST4)
            box.run(out("SA", 77, ack=1000 + i, sport=22, dport=1024 + i,
                        ip=IP(src=HOST4, dst=spoofed.src)), "tc_egress")
        confirmed = list(box.dp.maps["conntrack"].keys())
        waiting = list(box.dp.maps["conntrack_unconfirmed"].keys())
        assert len(confirmed) == 40 and 0 < len(waiting) <= 16
        for i in range(40):
            assert box.run(back("A", 6, ack=1001, dport=41000 + i), "xdp").why == "conntrack"


# ---- ICMP errors about tracked flows ----------------------------------------------------

def _tcp_flow(both, ip_out=OUT4, ip_back=BACK4):
    both.run(out("S", 1000, ip=ip_out), "tc_egress")
    both.run(back("SA", 5000, ack=1001, ip=ip_back), "xdp")


def test_icmp_errors_about_a_tracked_flow_are_related(box):
    both = Both(box)
    _tcp_flow(both)
    about = IPerror(src=HOST4, dst=PEER4) / TCPerror(sport=40000, dport=443, seq=1001)
    router = "192.0.2.254"
    for icmp in (ICMP(type=3, code=4, nexthopmtu=1280), ICMP(type=11), ICMP(type=12)):
        got = both.run(eth(IP(src=router, dst=HOST4) / icmp / about), "xdp")
        assert (got.verdict, got.why) == (Action.ACCEPT, "related"), icmp.type
    # not an error type; about another flow; addressed to someone else; cut short
    for frame in (eth(IP(src=router, dst=HOST4) / ICMP(type=5) / about),
                  eth(IP(src=router, dst=HOST4) / ICMP(type=3) /
                      IPerror(src=HOST4, dst=PEER4) / TCPerror(sport=40001, dport=443)),
                  eth(IP(src=router, dst="10.9.0.3") / ICMP(type=3) / about),
                  eth(IP(src=router, dst=HOST4) / ICMP(type=3) / bytes(about)[:27])):
        assert both.run(frame, "tc_ingress").why == "default", frame.hex()
    ok = bytes(eth(IP(src=router, dst=HOST4) / ICMP(type=3) / bytes(about)[:28]))
    assert both.run(ok, "tc_ingress").why == "related"          # 8 transport bytes: enough


def test_icmpv6_packet_too_big_about_a_tracked_flow_is_related(box):
    both = Both(box)
    ip_out, ip_back = IPv6(src=HOST6, dst=PEER6), IPv6(src=PEER6, dst=HOST6)
    _tcp_flow(both, ip_out, ip_back)
    about = bytes(ip_out / TCP(sport=40000, dport=443, flags="A", seq=1001) / (b"z" * 1400))
    router = IPv6(src="2001:db8:9::fe", dst=HOST6)
    for icmp in (ICMPv6PacketTooBig(mtu=1280), ICMPv6DestUnreach()):
        got = both.run(eth(router / icmp / about[:1232]), "xdp")
        assert got.why == "related"
    assert both.run(eth(router / ICMPv6EchoRequest() / about[:100]), "xdp").why == "default"


def test_port_unreachable_for_an_unanswered_datagram_is_related(box):
    both = Both(box)
    both.run(eth(OUT4 / UDP(sport=40010, dport=53) / b"q"), "tc_egress")
    error = BACK4 / ICMP(type=3, code=3) / IPerror(src=HOST4, dst=PEER4) / UDPerror(
        sport=40010, dport=53)
    assert both.run(eth(error), "xdp").why == "related"
    assert flows(box)[(40010, 53, 17)]["table"] == "unconfirmed"   # related confirms nothing


def test_an_error_about_an_echo_request_matches_its_identifier(box):
    both = Both(box)
    both.run(eth(OUT4 / ICMP(type=8, id=0x4242, seq=1)), "tc_egress")
    for ident, why in ((0x4242, "related"), (0x4243, "default")):
        error = BACK4 / ICMP(type=11) / IPerror(src=HOST4, dst=PEER4) / ICMP(type=8, id=ident)
        assert both.run(eth(error), "xdp").why == why


def test_an_error_about_a_stale_flow_is_not_related(box):
    both = Both(box)
    both.run(eth(OUT4 / UDP(sport=40011, dport=53) / b"q"), "tc_egress")
    time.sleep(1.2)                                           # udp: 1 s
    error = BACK4 / ICMP(type=3, code=3) / IPerror(src=HOST4, dst=PEER4) / UDPerror(
        sport=40011, dport=53)
    assert box.run(eth(error), "xdp").why == "default"
