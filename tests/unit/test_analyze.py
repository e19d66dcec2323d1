"""Warnings: rules that can never match (single and union coverage), NDP, hooks."""

from __future__ import annotations

import ipaddress
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from netctl.policy.analyze import analyze, shadowed_rules
from netctl.policy.evaluate import evaluate
from netctl.policy.load import load_policy_text
from netctl.policy.model import Direction, Packet


def policy(rules: str, extra: str = ""):
    return load_policy_text(f"version: 1\n{extra}rules:\n{rules}", "p.yaml")


def dead(p) -> dict[str, tuple[str, ...]]:
    return {f.rule: f.covered_by for f in shadowed_rules(p)}


def test_single_covering_rule_is_named_with_its_line():
    p = policy("  - {name: a, action: drop, src: 10.0.0.0/8}\n"
               "  - {name: b, action: accept, src: 10.1.2.0/24, proto: tcp, dport: 22}\n")
    [finding] = shadowed_rules(p)
    assert finding.line == 4 and finding.covered_by == ("a",)
    assert "'a' (line 3)" in finding.message


def test_union_of_rules_covers_and_only_needed_rules_are_named():
    p = policy("  - {name: lo, action: drop, proto: tcp, dport: 0-1000}\n"
               "  - {name: unrelated, action: drop, src: 10.0.0.0/8}\n"
               "  - {name: hi, action: drop, proto: tcp, dport: 1001-65535}\n"
               "  - {name: web, action: accept, proto: tcp, dport: 80}\n"
               "  - {name: ssh, action: accept, proto: tcp, dport: [22, 5000]}\n")
    assert dead(p) == {"web": ("lo",), "ssh": ("lo", "hi")}


def test_fragments_keep_a_portless_rule_alive():
    p = policy("  - {name: all-ports, action: drop, proto: tcp, dport: 0-65535}\n"
               "  - {name: tcp, action: accept, proto: tcp}\n")
    assert dead(p) == {}


def test_direction_and_family_matter():
    p = policy("  - {name: v4, action: drop, src: 0.0.0.0/0}\n"
               "  - {name: out, action: drop, direction: egress}\n"
               "  - {name: any-in, action: accept}\n"
               "  - {name: v6-in, action: accept, src: 2001:db8::/32}\n")
    assert dead(p) == {"v6-in": ("any-in",)}


def test_icmp_number_and_name_are_the_same_protocol():
    p = policy("  - {name: ping, action: accept, proto: 1}\n"
               "  - {name: echo, action: drop, proto: icmp, icmp_type: echo-request}\n"
               "  - {name: v6, action: drop, proto: icmpv6, icmp_type: echo-request}\n")
    assert dead(p) == {"echo": ("ping",)}


def test_mixed_family_list_needs_both_families_covered():
    p = policy("  - {name: v4, action: drop, src: 10.0.0.0/8}\n"
               "  - {name: both, action: accept, src: [10.1.0.0/16, 2001:db8::/32]}\n")
    assert dead(p) == {}


def test_ndp_warning_only_when_allow_ndp_is_false():
    rules = "  - {name: x, action: accept, proto: tcp}\n"
    assert not [f for f in analyze(policy(rules, "defaults: {ingress: drop}\n"))]
    findings = analyze(policy(rules, "allow_ndp: false\ndefaults: {ingress: drop}\n"))
    assert any("neighbour discovery" in f.message for f in findings)


def test_egress_rules_without_tc_egress_warn():
    p = policy("  - {name: out, action: drop, direction: egress}\n",
               "interfaces:\n  - {name: eth0, tc: [ingress]}\n")
    assert any("no tc egress" in f.message and f.line == 3 for f in analyze(p))


STATEFUL_DROP = "stateful: true\ndefaults: {ingress: drop}\n"


def fragment_findings(p) -> list:
    return [f for f in analyze(p) if "fragment" in f.message]


def test_stateful_default_drop_warns_that_fragmented_replies_are_dropped():
    p = policy("  - {name: web, action: accept, proto: tcp, dport: [80, 443]}\n"
               "  - {name: ping, action: accept, proto: [icmp, icmpv6], icmp_type: 8}\n",
               STATEFUL_DROP)
    [finding] = fragment_findings(p)
    message = finding.message
    # what happens, why, and what to do
    assert message.startswith("stateful: true with a default ingress drop drops fragmented "
                              "replies: ")
    assert "non-first fragments carry no ports" in message
    assert "no ingress rule without ports accepts fragments of tcp, udp, icmp or icmpv6" \
        in message
    assert "action: accept, src: PEERS, proto: udp" in message
    assert "ignore this warning if" in message


def test_fragment_warning_names_only_what_no_rule_accepts():
    p = policy("  - {name: peers, action: accept, src: [192.0.2.0/24, 2001:db8::/32], "
               "proto: udp}\n"
               "  - {name: v4-tcp, action: accept, src: 192.0.2.0/24, proto: tcp}\n"
               "  - {name: out, action: accept, direction: egress}\n"
               "  - {name: dns, action: accept, proto: [tcp, udp], sport: 53}\n",
               STATEFUL_DROP)
    [finding] = fragment_findings(p)
    assert "accepts fragments of tcp over IPv6, icmp or icmpv6." in finding.message


def test_no_fragment_warning_when_rules_accept_them_or_nothing_is_tracked():
    peers = "  - {name: peers, action: accept, src: [192.0.2.0/24, 2001:db8::/32]}\n"
    assert not fragment_findings(policy(peers, STATEFUL_DROP))
    ports = "  - {name: web, action: accept, proto: tcp, dport: 80}\n"
    assert not fragment_findings(policy(ports, "defaults: {ingress: drop}\n"))
    assert not fragment_findings(policy(ports, "stateful: true\n"))
    assert not fragment_findings(policy(ports, "stateful: true\ndefaults: {egress: drop}\n"))


def _random_rule(rng: random.Random, i: int) -> str:
    fields = [f"name: r{i}", f"action: {rng.choice(['accept', 'drop'])}"]
    if rng.random() < 0.5:
        fields.append(f"src: 10.{rng.choice([0, 1])}.0.0/{rng.choice([8, 15, 16])}"
                      .replace("10.1.0.0/8", "10.0.0.0/8").replace("10.1.0.0/15", "10.0.0.0/15"))
    kind = rng.random()
    if kind < 0.4:
        lo = rng.choice([0, 10, 20, 25])
        fields.append(f"proto: {rng.choice(['tcp', 'udp', '[tcp, udp]'])}")
        fields.append(f"dport: {lo}-{lo + rng.choice([0, 5, 10])}")
    elif kind < 0.6:
        fields.append(f"proto: {rng.choice(['tcp', 'icmp', 47])}")
    return "  - {" + ", ".join(fields) + "}\n"


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32))
def test_a_rule_reported_dead_never_decides_any_probe_packet(seed):
    """Soundness: if analyze says a rule is dead, no packet is ever decided by it."""
    rng = random.Random(seed)
    p = policy("".join(_random_rule(rng, i) for i in range(rng.randint(2, 8))))
    reported = dead(p)
    if not reported:
        return
    for _ in range(300):
        proto = rng.choice([6, 17, 1, 47, 58])
        packet = Packet(
            src=ipaddress.ip_address(rng.choice(["10.0.0.1", "10.1.255.255", "10.2.0.1",
                                                 "192.0.2.1"])),
            dst=ipaddress.ip_address("192.0.2.9"), proto=proto,
            sport=rng.randint(0, 40) if proto in (6, 17) else None,
            dport=rng.randint(0, 40) if proto in (6, 17) else None,
            icmp_type=rng.randint(0, 10) if proto == 1 else None,
            fragment=rng.random() < 0.1,
        )
        if packet.fragment:
            packet = Packet(packet.src, packet.dst, proto, fragment=True)
        decision = evaluate(p, packet, Direction.INGRESS)
        assert decision.rule is None or decision.rule.name not in reported, (packet, reported)


def test_candidates_too_many_and_a_few_on_one_crowded_prefix():
    """Many rules on one prefix (the mixed bench mix puts 25,000 on one /16): a rule with
    more earlier rules on its prefix, or more prefixes inside its own, than the analysis
    compares is left unchecked, without building the list first (that made validate
    quadratic: 25 s at 100,000 rules); one with few is still checked, and a rule a covering
    one makes dead is still found."""
    from netctl.policy import analyze as an

    many = an.MAX_CANDIDATES + 10
    rules = "".join(f"  - {{name: r{i}, action: drop, src: 192.168.0.0/16, proto: tcp, "
                    f"dport: {1000 + i}}}\n" for i in range(many))
    text = ("version: 1\nrules:\n  - {name: wide, action: drop, src: 192.168.0.0/16}\n"
            "  - {name: dead, action: accept, src: 192.168.7.0/24}\n" + rules)
    policy = load_policy_text(text)
    index = an._SourceIndex([r for r in policy.rules if r.direction is Direction.INGRESS], 4)
    assert index.candidates(policy.rules[1]) == {0}         # the /24 inside the /16
    assert index.candidates(policy.rules[2]) is None         # thousands of prefixes inside
    assert index.candidates(policy.rules[-1]) is None        # thousands of rules before it
    findings = shadowed_rules(policy)
    dead = [f for f in findings if f.rule == "dead"]
    assert dead and dead[0].covered_by == ("wide",)
