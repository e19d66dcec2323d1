"""What the cost budget measures (bench/budget.py): the policies, the frames and the packet
classes, each with the hooks it meets and the outcome and header path it must take."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PERF_HEADER = Path(__file__).resolve().parents[1] / "bpf" / "include" / "netctl_perf.h"


def call_kinds() -> tuple[dict[int, str], dict[int, str]]:
    """The counted kinds and the path markers by slot, as netctl_perf.h numbers them."""
    text = PERF_HEADER.read_text()
    slots = {int(n): name.lower()
             for name, n in re.findall(r"NETCTL_CALL_(\w+) = (\d+),", text)}
    markers_from = int(re.search(r"NETCTL_CALL_RUN = (\d+)", text).group(1))
    del slots[max(slots)]   # NETCTL_CALL_SLOTS
    return ({s: n for s, n in slots.items() if s < markers_from},
            {s: n for s, n in slots.items() if s >= markers_from})


# Kinds the verifier inlines: everything else is a call in the running program.
INLINED = frozenset({"array", "percpu_array"})


COPIED = ", header window copied"   # the name suffix of a class whose header window is copied

# ---- what is measured: policies, frames, packet classes ------------------------------------

_RULES = """rules:
  - {name: web, action: accept, src: 10.1.0.0/16, proto: tcp, dport: 80}
  - {name: flood, action: drop, src: 10.200.0.1/32, proto: udp, dport: 9}
  - {name: v6, action: drop, src: "2001:db8::/32", proto: udp, dport: 53}
  - {name: ping, action: accept, proto: icmp, icmp_type: echo-request}
  - {name: no-tftp-out, direction: egress, action: drop, proto: udp, dport: 69}
"""
_ROUTES = "routes:\n  - {dst: 10.2.0.0/16, via: 10.1.0.2, dev: eth1}\n"


def _policy(ingress: str = "accept", extra: str = "") -> str:
    return (f"version: 1\ndefaults: {{ingress: {ingress}, egress: accept}}\n{extra}"
            f"{_RULES}")


POLICIES = {
    "stateless": _policy(),
    "default drop": _policy("drop"),
    "stateful": _policy("drop", "stateful: true\n"),
    "flow cache on": _policy(extra="flow_cache: on\n"),
    "flow cache off": _policy(extra="flow_cache: off\n"),
    "routes": _policy(extra=_ROUTES),
    "routes, egress judged": _policy(extra=_ROUTES),
}
# The next hop of the routes (nexthops map: apply writes it from the neighbour table); a
# test run never sends anything, so any interface index does.
NEXTHOP = {"routes": False, "routes, egress judged": True}   # policy -> judge_egress


def frames() -> dict[str, bytes]:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
    from scapy.layers.l2 import ARP, Ether

    # The destination MAC of a test run's device (loopback: all zeros), so that tc sees
    # the frame as sent to this host (PACKET_HOST), as forwarding requires.
    eth = Ether(src="02:00:00:00:00:01", dst="00:00:00:00:00:00")
    host, peer = "10.200.0.2", "192.0.2.1"
    out_udp = IP(src=host, dst=peer) / UDP(sport=5555, dport=53) / (b"q" * 20)
    l3_peer = "8.0.0.1"   # see below
    built = {
        "accept": eth / IP(src="10.1.2.3", dst=host) / TCP(sport=40000, dport=80, flags="S"),
        "flood": eth / IP(src="10.200.0.1", dst=host) / UDP(sport=4000, dport=9),
        "v6 drop": eth / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(dport=53),
        "echo": eth / IP(src=peer, dst=host) / ICMP(type=8, id=7),
        "default": eth / IP(src=peer, dst=host) / TCP(sport=40000, dport=22, flags="S"),
        "bad ihl": eth / IP(src=peer, dst=host, ihl=4) / UDP(dport=9),
        "arp": eth / ARP(psrc=host, pdst=peer),
        "ndp": eth / IPv6(src="fe80::1", dst="ff02::1:ff00:2", hlim=255) /
               ICMPv6ND_NS(tgt="fe80::2"),
        "out": eth / out_udp,
        "reply": eth / IP(src=peer, dst=host) / UDP(sport=53, dport=5555) / (b"r" * 20),
        # port unreachable, about "out": its IP header and 8 bytes of UDP header
        "icmp error": eth / IP(src="198.51.100.1", dst=host) / ICMP(type=3, code=3) /
                      bytes(out_udp)[:28],
        "syn out": eth / IP(src=host, dst=peer) /
                   TCP(sport=40001, dport=443, flags="S", seq=1000,
                       options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]),
        "tftp out": eth / IP(src=host, dst=peer) / UDP(sport=5000, dport=69),
        "forward": eth / IP(src=peer, dst="10.2.0.5", ttl=64) / UDP(sport=4000, dport=5000),
        # Frames of a device without a link-layer header start at the IP header.  A tc test
        # run takes the bytes where an Ethernet type would be (12-13: the first half of the
        # IPv4 source address) as skb->protocol: a source in 8.0.0.0/16 makes it ETH_P_IP,
        # as a tun device would.
        "l3 in": IP(src=l3_peer, dst=host) / TCP(sport=40000, dport=22, flags="S"),
        "l3 out": IP(src=l3_peer, dst=peer) / UDP(sport=5000, dport=69),
    }
    return {name: bytes(f).ljust(60, b"\0") for name, f in built.items()}


@dataclass(frozen=True)
class PacketClass:
    label: str
    policy: str                               # a key of POLICIES
    hooks: tuple[str, ...]
    frame: str                                # a key of frames()
    verdict: str                              # what the program must do with it
    before: tuple[tuple[str, str], ...] = ()  # (hook, frame) run first; hook "*": the same
    listening: bool = False                   # a monitor holds the events lease
    copied: bool = False                      # tc's header window copied (FORCE_COPY build)

    def key(self, hook: str) -> str:
        return f"{hook} | {self.label}{COPIED if self.copied else ''}"


INGRESS = ("xdp", "tc_ingress")
EGRESS = ("tc_egress",)
_OUT = (("tc_egress", "out"),)
_C = PacketClass
CLASSES = (
    _C("rule accept", "stateless", INGRESS, "accept", "accept"),
    _C("rule drop", "stateless", INGRESS, "flood", "drop"),
    _C("rule drop, a monitor listening", "stateless", INGRESS, "flood", "drop",
       listening=True),
    _C("rule drop, IPv6", "stateless", INGRESS, "v6 drop", "drop"),
    _C("rule accept, ICMP echo", "stateless", INGRESS, "echo", "accept"),
    _C("default accept", "stateless", INGRESS, "default", "accept"),
    _C("default drop", "default drop", INGRESS, "default", "drop"),
    _C("malformed (IPv4 header length)", "stateless", INGRESS, "bad ihl", "drop"),
    _C("non-IP (ARP)", "stateless", INGRESS, "arp", "accept"),
    _C("NDP under a default drop", "default drop", INGRESS, "ndp", "accept"),
    _C("stateful: not a reply", "stateful", INGRESS, "reply", "drop"),
    _C("stateful: reply, confirms the flow", "stateful", INGRESS, "reply", "accept", _OUT),
    _C("stateful: reply to a confirmed flow", "stateful", INGRESS, "reply", "accept",
       (*_OUT, ("*", "reply"))),
    _C("stateful: related ICMP error", "stateful", INGRESS, "icmp error", "accept", _OUT),
    _C("flow cache on: miss", "flow cache on", INGRESS, "flood", "drop"),
    _C("flow cache on: hit", "flow cache on", INGRESS, "flood", "drop", (("*", "flood"),)),
    _C("flow cache off: rule drop", "flow cache off", INGRESS, "flood", "drop"),
    _C("forwarded", "routes", INGRESS, "forward", "redirect"),
    _C("forwarded, egress rules judged", "routes, egress judged", ("xdp",), "forward",
       "redirect"),
    _C("egress default accept", "stateless", EGRESS, "out", "accept"),
    _C("egress rule drop", "stateless", EGRESS, "tftp out", "drop"),
    _C("egress, stateful: new flow tracked", "stateful", EGRESS, "out", "accept"),
    _C("egress, stateful: tracked flow", "stateful", EGRESS, "out", "accept", _OUT),
    _C("egress, stateful: TCP SYN tracked", "stateful", EGRESS, "syn out", "accept"),
    _C("L3 default accept", "stateless", ("xdp_l3", "tc_ingress_l3"), "l3 in", "accept"),
    _C("L3 egress rule drop", "stateless", ("tc_egress_l3",), "l3 out", "drop"),
    # What frames from a packet socket's TX ring take at tc (headers beyond the linear
    # area): a test run's skb is all linear, so a test-only build forces the copy.
    _C("rule accept", "stateless", ("tc_ingress",), "accept", "accept", copied=True),
    _C("rule drop", "stateless", ("tc_ingress",), "flood", "drop", copied=True),
    _C("stateful: related ICMP error", "stateful", ("tc_ingress",), "icmp error", "accept",
       _OUT, copied=True),
    _C("egress, stateful: TCP SYN tracked", "stateful", EGRESS, "syn out", "accept",
       copied=True),
    _C("L3 default accept", "stateless", ("tc_ingress_l3",), "l3 in", "accept",
       copied=True),
)
