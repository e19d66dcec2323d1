"""The benchmark's rule sets mean what the benchmark says: only the last rule matches each
flood, the rules are disjoint (first-match and any-match agree), the same N gives the same
rules, and every system's translation says the same thing."""

from __future__ import annotations

import hashlib
import ipaddress
import random
import sys
from pathlib import Path

import pytest

from netctl.policy.compile import compile_policy
from netctl.policy.evaluate import evaluate
from netctl.policy.interp import interpret
from netctl.policy.load import load_policy_text
from netctl.policy.model import Direction, Packet

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.rulesets import (  # noqa: E402
    FLOOD_DPORT,
    FLOOD_DST,
    FLOOD_SRC,
    FLOODS,
    MIXED_SINGLES_NET,
    MIXED_TCP_NET,
    MIXES,
    RANDOM_SRC_NET,
    BenchRule,
    iptables_raw,
    netctl_policy,
    nft_linear,
    nft_set,
    rules,
    xdp_filter_addresses,
)

UDP = 17


def _overlap(a: BenchRule, b: BenchRule) -> bool:
    """Whether some packet matches both rules."""
    na, nb = ipaddress.ip_network(a.src), ipaddress.ip_network(b.src)
    if na.version != nb.version or not na.overlaps(nb):
        return False
    if a.proto and b.proto and a.proto != b.proto:
        return False
    if a.dport and b.dport:
        return a.dport[0] <= b.dport[1] and b.dport[0] <= a.dport[1]
    return True


def _matches(rule: BenchRule, src: str, proto: str, dport: int) -> bool:
    net = ipaddress.ip_network(rule.src)
    if ipaddress.ip_address(src) not in net:
        return False
    if rule.proto and rule.proto != proto:
        return False
    return not rule.dport or rule.dport[0] <= dport <= rule.dport[1]


def _flood_sources(flood: str, count: int = 200) -> list[str]:
    if flood == "fixed":
        return [FLOOD_SRC]
    net = ipaddress.ip_network(RANDOM_SRC_NET)
    rng = random.Random(7)
    corners = [net.network_address, net.broadcast_address, ipaddress.ip_address(FLOOD_SRC)]
    return [str(a) for a in corners] + [
        str(net.network_address + rng.randrange(net.num_addresses)) for _ in range(count)]


def test_bench_mix_is_what_it_was():
    """The bench mix's draws are unchanged (its figures stay comparable with older runs):
    the digest of rules(1000) as drawn before the mixed mix and the random flood existed."""
    got = hashlib.sha256(repr(rules(1000)).encode()).hexdigest()
    assert got == "6986fe4dd7ffb900a68b8008f240319e2af3e89392951f0bfcbda1d46babd672", got


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("flood", FLOODS)
def test_only_the_last_rule_matches_the_flood_and_rules_are_disjoint(mix, flood):
    bench = rules(400, mix, flood)
    assert len(bench) == 400
    for src in _flood_sources(flood):
        hits = [i for i, r in enumerate(bench) if _matches(r, src, "udp", FLOOD_DPORT)]
        assert hits == [399], (src, hits)
    for i, a in enumerate(bench):
        for b in bench[i + 1:]:
            assert not _overlap(a, b), (a, b)


@pytest.mark.parametrize("mix", MIXES)
def test_deterministic_and_the_floods_differ_only_in_the_last_rule(mix):
    assert rules(500, mix) == rules(500, mix)
    assert rules(500, mix)[:-1] == rules(500, mix, "random")[:-1]
    assert rules(500, mix) != rules(501, mix)[:500]


def test_mixed_mix_shapes():
    bench = rules(10001, "mixed")[:-1]
    singles = [r for r in bench if r.proto is None]
    tcp = [r for r in bench if r.proto == "tcp"]
    udp = [r for r in bench if r.proto == "udp"]
    assert (len(singles), len(tcp), len(udp)) == (5000, 2500, 2500)
    assert all(r.dport is None and r.src.endswith("/32") and ipaddress.ip_network(r.src)
               .subnet_of(ipaddress.ip_network(MIXED_SINGLES_NET)) for r in singles)
    assert len(set(singles)) == len(singles)
    assert {r.src for r in tcp} == {MIXED_TCP_NET}
    assert len({r.dport for r in tcp}) == 2500 and all(r.dport[0] == r.dport[1] for r in tcp)
    widths = [r.dport[1] - r.dport[0] + 1 for r in udp]
    assert min(widths) >= 1 and max(widths) <= 1000 and len(set(widths)) > 500
    lengths = {ipaddress.ip_network(r.src).prefixlen for r in udp}
    assert lengths == {20, 21, 22, 23, 24}
    assert all(ipaddress.ip_network(r.src).subnet_of(ipaddress.ip_network(RANDOM_SRC_NET))
               for r in udp)
    assert [r.proto for r in bench[:200]].count(None) < 150   # shuffled together


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("flood", FLOODS)
def test_netctl_policy_decides_the_flood_by_the_last_rule(mix, flood):
    """The policy text means the rule set: the reference model and the compiled maps both
    judge the flood by the last rule, and a packet of each other rule by that rule."""
    bench = rules(200, mix, flood)
    policy = load_policy_text(netctl_policy(bench, flow_cache="off"), "bench.yaml")
    assert policy.flow_cache.value == "off"
    plan = compile_policy(policy)
    packets = [Packet(ipaddress.ip_address(src), ipaddress.ip_address(FLOOD_DST), UDP,
                      4000, FLOOD_DPORT) for src in _flood_sources(flood, 20)]
    for i, r in enumerate(bench[:-1]):
        net = ipaddress.ip_network(r.src)
        proto = {"tcp": 6, "udp": 17, None: 17}[r.proto]
        dst = FLOOD_DST if net.version == 4 else "2001:db8::1"
        dport = r.dport[1] if r.dport else 7
        packets.append(Packet(net.broadcast_address, ipaddress.ip_address(dst), proto, 4000,
                              dport))
        got = evaluate(policy, packets[-1], Direction.INGRESS)
        assert got.rule is policy.rules[i], (r, got)
    for packet in packets:
        want = evaluate(policy, packet, Direction.INGRESS).rule
        got = interpret(plan, packet, Direction.INGRESS)
        assert got.rule is not None and policy.rules[got.rule] is want
    for packet in packets[:len(_flood_sources(flood, 20))]:
        assert evaluate(policy, packet, Direction.INGRESS).rule is policy.rules[-1]


def test_translations_of_rules_with_absent_fields():
    src_only = BenchRule("172.16.1.2/32")
    proto_only = BenchRule("192.168.0.0/16", "tcp")
    both = BenchRule("10.1.0.0/20", "udp", (100, 200))
    bench = [src_only, proto_only, both]
    policy = netctl_policy(bench)
    assert "{name: r0, action: drop, src: 172.16.1.2/32}" in policy
    assert "{name: r1, action: drop, src: 192.168.0.0/16, proto: tcp}" in policy
    assert "{name: r2, action: drop, src: 10.1.0.0/20, proto: udp, dport: 100-200}" in policy
    linear = nft_linear(bench, "eth0")
    assert "    ip saddr 172.16.1.2/32 counter drop" in linear
    assert "    ip saddr 192.168.0.0/16 meta l4proto tcp counter drop" in linear
    assert "    ip saddr 10.1.0.0/20 udp dport 100-200 counter drop" in linear
    assert ("elements = { 172.16.1.2/32 . 0-255 . 0-65535, 192.168.0.0/16 . tcp . 0-65535, "
            "10.1.0.0/20 . udp . 100-200 }") in nft_set(bench, "eth0")
    raw = iptables_raw(bench, 4).splitlines()
    assert raw[2:5] == ["-A PREROUTING -s 172.16.1.2/32 -j DROP",
                        "-A PREROUTING -s 192.168.0.0/16 -p tcp -j DROP",
                        "-A PREROUTING -s 10.1.0.0/20 -p udp -m udp --dport 100:200 -j DROP"]
    with pytest.raises(ValueError):
        BenchRule("10.0.0.0/8", None, (1, 2))


def test_xdp_filter_holds_addresses_only():
    fixed = xdp_filter_addresses(rules(300, "mixed"))
    assert fixed[-1] == FLOOD_SRC and fixed.count(FLOOD_SRC) == 1
    assert len(fixed) == len(set(fixed))
    assert xdp_filter_addresses(rules(300, "mixed", "random")) is None
    assert xdp_filter_addresses(rules(300, "bench", "random")) is None
