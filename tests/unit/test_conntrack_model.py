"""The reference connection tracker (netctl.policy.conntrack) and what it reads of a frame
(netctl.policy.frame, step 8), without a kernel: the window scale walk, the flow an ICMP
error is about, the TCP state machine, timeouts; and the `tcp_unconfirmed` setting from
file to config word.  The bpf tier holds the real programs to this reference."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether

from netctl.abi import CFG_CT_TCP_UNCONFIRMED
from netctl.errors import PolicyError
from netctl.policy.compile import compile_policy
from netctl.policy.conntrack import (
    CLOSING,
    ESTABLISHED,
    F_ACKED,
    F_PICKUP,
    F_SYN,
    NEW,
    Tracker,
    seq_after,
    seq_before,
)
from netctl.policy.frame import Ip, parse_frame
from netctl.policy.load import load_policy_text
from netctl.policy.model import Conntrack, Direction
from netctl.policy.plan import unconfirmed_size

HOST, PEER = "10.9.0.1", "10.9.0.2"


def eth(payload) -> bytes:
    return bytes(Ether() / payload)


def parsed(payload) -> Ip:
    result = parse_frame(eth(payload))
    assert isinstance(result, Ip), result
    return result


def wscale_of(options) -> int:
    return parsed(IP(src=HOST, dst=PEER) / TCP(flags="S", options=options)).transport.wscale


# ---- step 8: the window scale option --------------------------------------------------

@pytest.mark.parametrize("options,shift", [
    ([], 0),
    ([("WScale", 7)], 7),
    ([("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
      ("WScale", 9)], 9),                                          # Linux
    ([("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None),
      ("SAckOK", b"")], 8),                                        # Windows
    ([("WScale", 15)], 14),                                        # capped, as the kernel
    ([("WScale", 255)], 14),
    ([("MSS", 1460), ("EOL", None), ("WScale", 5)], 0),            # after the end of list
    ([("NOP", None)] * 7 + [("WScale", 3)], 3),                    # the eighth step
    ([("NOP", None)] * 8 + [("WScale", 3)], 14),                   # past the steps: largest
    ([("NOP", None)] * 8, 0),                                      # ... but the list ended
])
def test_the_window_scale_walk(options, shift):
    assert wscale_of(options) == shift


def test_malformed_option_lists_end_the_walk():
    def with_options(raw: bytes) -> int:
        tcp = bytes(TCP(flags="S", dataofs=5 + len(raw) // 4))[:20] + raw
        return parsed(IP(src=HOST, dst=PEER, proto=6) / tcp).transport.wscale

    assert with_options(b"\x03\x03\x06\x00") == 6
    assert with_options(b"\x02\x01\x03\x03\x06\x00\x00\x00") == 0   # a length below 2
    assert with_options(b"\x02\x09\x00\x00\x03\x03\x06\x00") == 0   # an option past the header
    assert with_options(b"\x03\x04\x06\x00\x03\x03\x07\x00") == 7   # wrong length: skipped
    # The data offset says options the frame does not have: nothing read past it.
    short = bytes(TCP(flags="S", dataofs=8))[:20] + b"\x03\x03"
    assert parsed(IP(src=HOST, dst=PEER, proto=6) / short).transport.wscale == 0


def test_payload_is_the_frame_past_the_tcp_header():
    t = parsed(IP(src=HOST, dst=PEER) / TCP(options=[("NOP", None)] * 4) / (b"x" * 100))
    assert (t.transport.tcp_hlen, t.transport.payload) == (24, 100)


# ---- step 8: the flow an ICMP error is about ------------------------------------------

def key(proto, sport, dport, saddr=PEER, daddr=HOST, family=4):
    pack = ipaddress.ip_address
    return (family, proto, sport, dport, pack(saddr).packed.ljust(16, b"\0"),
            pack(daddr).packed.ljust(16, b"\0"))


def related_of(payload):
    return parsed(payload).transport.related


def test_an_icmp_error_names_the_reply_tuple_of_the_packet_it_quotes():
    outer = IP(src="192.0.2.254", dst=HOST)
    tcp = IPerror(src=HOST, dst=PEER) / TCPerror(sport=40000, dport=443)
    assert related_of(outer / ICMP(type=3, code=4) / tcp) == key(6, 443, 40000)
    udp = IPerror(src=HOST, dst=PEER) / UDPerror(sport=40000, dport=53)
    assert related_of(outer / ICMP(type=11) / udp) == key(17, 53, 40000)
    echo = IPerror(src=HOST, dst=PEER) / ICMP(type=8, id=77)
    assert related_of(outer / ICMP(type=12) / echo) == key(1, 77, 0)
    # Not an error type; an error to another host than the quoted packet's source; a
    # quoted echo reply; a quote cut inside its transport header.
    assert related_of(outer / ICMP(type=5) / tcp) is None
    assert related_of(IP(src="192.0.2.254", dst="10.9.0.3") / ICMP(type=3) / tcp) is None
    assert related_of(outer / ICMP(type=3) / IPerror(src=HOST, dst=PEER) /
                      ICMP(type=0, id=77)) is None
    assert related_of(outer / ICMP(type=3) / bytes(tcp)[:27]) is None
    assert related_of(outer / ICMP(type=3) / bytes(tcp)[:28]) == key(6, 443, 40000)


def test_icmpv6_packet_too_big_names_the_flow():
    host6, peer6 = "2001:db8::1", "2001:db8::2"
    quoted = bytes(IPv6(src=host6, dst=peer6) / TCP(sport=40000, dport=443))
    error = IPv6(src="2001:db8::fe", dst=host6) / ICMPv6PacketTooBig(mtu=1280) / quoted
    assert related_of(error) == key(6, 443, 40000, peer6, host6, family=6)
    echo = IPv6(src="2001:db8::fe", dst=host6) / ICMPv6EchoRequest() / quoted
    assert parsed(echo).transport.related is None


# ---- the tracker ----------------------------------------------------------------------

class Conversation:
    """Host 10.9.0.1:40000 talks to 10.9.0.2:443 through a Tracker."""

    def __init__(self, **settings):
        self.tracker = Tracker(Conntrack(**settings))
        self.now = 0

    def out(self, flags, seq, ack=0, window=502, options=(), payload=b""):
        ip = parsed(IP(src=HOST, dst=PEER) / TCP(sport=40000, dport=443, flags=flags,
                                                 seq=seq, ack=ack, window=window,
                                                 options=list(options)) / payload)
        self.tracker.track(ip, self.now)

    def back(self, flags, seq, ack=0) -> bool:
        ip = parsed(IP(src=PEER, dst=HOST) / TCP(sport=443, dport=40000, flags=flags,
                                                 seq=seq, ack=ack))
        return self.tracker.reply(ip, self.now)

    @property
    def entry(self):
        (table, entry), = [(name, e) for name, t in (("confirmed", self.tracker.confirmed),
                                                     ("unconfirmed", self.tracker.unconfirmed))
                           for e in t.values()]
        return table, entry


def test_sequence_numbers_compare_modulo_2_32():
    assert seq_after(5, 0xFFFFFFF0) and seq_before(0xFFFFFFF0, 5)
    assert not seq_after(5, 5) and not seq_before(5, 5)


def test_a_handshake_confirms_and_records_both_sides():
    c = Conversation()
    c.out("S", 1000, window=64240, options=[("WScale", 7)])
    table, e = c.entry
    assert (table, e.state, e.flags, e.wscale, e.our_end) == ("unconfirmed", NEW, F_SYN, 7, 1001)
    assert not c.back("SA", 5000, ack=1000)               # acknowledges nothing sent
    assert c.back("SA", 5000, ack=1001)
    table, e = c.entry
    assert (table, e.state, e.our_ack, e.our_maxend) == ("confirmed", ESTABLISHED, 5001,
                                                         5001 + 64240)
    c.out("A", 1001, ack=5001, window=1000)
    assert c.entry[1].our_maxend == 5001 + (1000 << 7)
    assert c.tracker.counts == {"new": 1, "confirmed": 1, "reply": 1, "invalid": 1}


def test_out_of_window_resets_are_invalid_and_in_window_ones_close():
    c = Conversation()
    c.out("S", 1000, window=100)
    c.back("SA", 5000, ack=1001)
    c.out("A", 1001, ack=5001, window=100)
    assert not c.back("R", 5001 + 101) and not c.back("R", 5001 - 101)
    assert c.entry[1].state == ESTABLISHED and c.tracker.counts["invalid"] == 2
    assert c.back("R", 5001 - 100)
    assert c.entry[1].state == CLOSING


def test_a_new_isn_starts_the_tuple_over_and_a_retransmission_does_not():
    c = Conversation()
    c.out("S", 1000)
    c.back("SA", 5000, ack=1001)
    c.out("FA", 1001, ack=5001)
    assert c.entry[1].state == CLOSING
    c.out("S", 1000)                                  # the old ISN: not a new connection
    assert c.entry[0] == "confirmed"
    c.out("S", 777)
    table, e = c.entry
    assert (table, e.state, e.packets_out) == ("unconfirmed", NEW, 1)
    assert c.tracker.counts["expired"] == 1 and c.tracker.counts["new"] == 2


def test_a_picked_up_flow_assumes_the_largest_window_scale():
    c = Conversation()
    c.out("A", 50, ack=9, window=2)
    table, e = c.entry
    assert (table, e.flags, e.wscale, e.our_maxwin) == ("unconfirmed", F_PICKUP | F_ACKED,
                                                        14, 2 << 14)
    assert c.back("A", 9, ack=50)


def test_stale_entries_are_removed_by_the_packet_that_meets_them():
    c = Conversation(tcp_unconfirmed=2)
    c.out("S", 1000)
    c.now = 2_000_000_001
    assert not c.back("SA", 5000, ack=1001)
    assert c.tracker.counts["unconfirmed_expired"] == 1 and not c.tracker.unconfirmed


def test_judge_puts_replies_and_related_errors_before_the_rules():
    policy = load_policy_text("version: 1\ndefaults: {ingress: drop}\nstateful: true\n",
                              "p.yaml")
    tracker = Tracker(policy.conntrack)
    udp_out = eth(IP(src=HOST, dst=PEER) / UDP(sport=40000, dport=53))
    assert tracker.judge(policy, udp_out, Direction.EGRESS).why == "default"
    error = eth(IP(src=PEER, dst=HOST) / ICMP(type=3, code=3) /
                IPerror(src=HOST, dst=PEER) / UDPerror(sport=40000, dport=53))
    assert tracker.judge(policy, error, Direction.INGRESS).why == "related"
    reply = eth(IP(src=PEER, dst=HOST) / UDP(sport=53, dport=40000))
    assert tracker.judge(policy, reply, Direction.INGRESS).why == "conntrack"
    stateless = load_policy_text("version: 1\ndefaults: {ingress: drop}\n", "p.yaml")
    assert Tracker().judge(stateless, reply, Direction.INGRESS).why == "default"


# ---- the setting ----------------------------------------------------------------------

def test_tcp_unconfirmed_is_a_setting_with_a_config_word():
    policy = load_policy_text("version: 1\nstateful: true\nconntrack: {tcp_unconfirmed: 30}\n",
                              "p.yaml")
    assert policy.conntrack.tcp_unconfirmed == 30
    assert compile_policy(policy).config[CFG_CT_TCP_UNCONFIRMED] == 30
    assert compile_policy(load_policy_text("version: 1\n", "p.yaml")).config[
        CFG_CT_TCP_UNCONFIRMED] == 60
    with pytest.raises(PolicyError, match="tcp_unconfirmed must be a whole number"):
        load_policy_text("version: 1\nstateful: true\nconntrack: {tcp_unconfirmed: 0}\n",
                         "p.yaml")


def test_the_unconfirmed_table_is_an_eighth_of_the_size_and_at_least_16():
    assert unconfirmed_size(65536) == 8192
    assert unconfirmed_size(64) == 16 and unconfirmed_size(1) == 16
    constants = compile_policy(load_policy_text(
        "version: 1\nstateful: true\nconntrack: {size: 1024}\n", "p.yaml")).constants()
    assert (constants["NETCTL_CT_ENTRIES"], constants["NETCTL_CT_UNCONFIRMED_ENTRIES"]) == (
        1024, 128)
