"""The compiler on the cases that are easy to get wrong, checked two ways: the plan's
interpreter agrees with the reference evaluator, and the plan has the expected layout."""

from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from strategies import make_policy

from netctl.abi import (
    CFG_SLOTS_EGRESS,
    CFG_SLOTS_INGRESS,
    FIELD_DPORT,
    FIELD_DST,
    FIELD_ICMP,
    FIELD_PROTO,
    FIELD_SPORT,
    FIELD_SRC,
    MAX_SHAPES,
)
from netctl.errors import CompileError, MapFullError
from netctl.policy.compile import compile_policy
from netctl.policy.evaluate import evaluate
from netctl.policy.interp import interpret
from netctl.policy.model import Action, Direction, Packet, Policy, PortRange, Rule
from netctl.policy.plan import MAP_NAMES, Limits, MapPlan, diff

IN, OUT = Direction.INGRESS, Direction.EGRESS


def pkt(src, dst="192.0.2.1", proto=6, sport=None, dport=None, icmp_type=None,
        fragment=False, icmp_code=None, ttl=64) -> Packet:
    src = ipaddress.ip_address(src)
    if src.version == 6 and dst == "192.0.2.1":
        dst = "2001:db8:ffff::1"
    if proto in (6, 17) and not fragment:
        sport = 40000 if sport is None else sport
        dport = 80 if dport is None else dport
    return Packet(src=src, dst=ipaddress.ip_address(dst), proto=proto, sport=sport, ttl=ttl,
                  icmp_code=icmp_code if icmp_code is not None or icmp_type is None else 0,
                  dport=dport, icmp_type=icmp_type, fragment=fragment)


def decide(plan: MapPlan, policy: Policy, packet: Packet, direction=IN) -> str:
    """The deciding rule's name (or "default:<verdict>", "ndp"), after checking that the
    plan and the reference evaluator agree."""
    got = interpret(plan, packet, direction)
    want = evaluate(policy, packet, direction)
    assert (got.verdict, got.why, got.name) == (
        want.verdict, want.why, want.rule.name if want.rule else None), packet
    if got.why == "rule":
        return got.name
    return "ndp" if got.why == "ndp" else f"default:{got.verdict.value}"


def compiled(*specs, limits=None, **kw) -> tuple[Policy, MapPlan]:
    policy = make_policy(*specs, **kw)
    return policy, compile_policy(policy, limits or Limits())


# ---- addresses -----------------------------------------------------------------------------


def test_nested_prefixes_longest_match_accounts_for_every_covering_rule():
    policy, plan = compiled(
        {"name": "host", "action": "accept", "src": "10.1.2.3/32"},
        {"name": "net24", "action": "drop", "src": "10.1.2.0/24"},
        {"name": "net8", "action": "accept", "src": "10.0.0.0/8"},
        {"name": "deep-after", "action": "drop", "src": "10.1.2.0/25"},  # shadowed by net24
        ingress="drop")
    assert decide(plan, policy, pkt("10.1.2.3")) == "host"
    assert decide(plan, policy, pkt("10.1.2.2")) == "net24"     # matched /25 entry: net24 first
    assert decide(plan, policy, pkt("10.1.2.200")) == "net24"
    assert decide(plan, policy, pkt("10.1.3.0")) == "net8"
    assert decide(plan, policy, pkt("10.255.255.255")) == "net8"
    assert decide(plan, policy, pkt("11.0.0.0")) == "default:drop"
    assert decide(plan, policy, pkt("9.255.255.255")) == "default:drop"
    # src is the slot's direct field: no class trie, one rule-trie entry per prefix, each
    # holding the first rule among itself and its shorter prefixes (the /25 gets net24's).
    assert not plan.maps()["src_v4"]
    trie = {k[-2:]: v for k, v in plan.maps()["rule_table"].items()}
    assert trie == {(32, 0x0A010203): 0, (24, 0x0A010200): 1, (8, 0x0A000000): 2,
                    (25, 0x0A010200): 1}


def test_nested_prefixes_in_reverse_order_and_across_rules_of_other_shapes():
    policy, plan = compiled(
        {"name": "net8", "action": "drop", "src": "10.0.0.0/8", "proto": 6},
        {"name": "host", "action": "accept", "src": "10.1.2.3/32"},
        {"name": "net16", "action": "accept", "src": "10.1.0.0/16", "dport": 22})
    for address, dport, want in [("10.1.2.3", 22, "net8"), ("10.1.2.3", 80, "net8"),
                                 ("10.9.9.9", 22, "net8")]:
        assert decide(plan, policy, pkt(address, dport=dport)) == want
    # udp: net8 does not apply; host beats net16 since it comes first
    assert decide(plan, policy, pkt("10.1.2.3", proto=17, dport=22)) == "host"
    assert decide(plan, policy, pkt("10.1.2.4", proto=17, dport=22)) == "net16"
    assert decide(plan, policy, pkt("10.1.2.4", proto=17, dport=23)) == "default:accept"


def test_zero_length_prefixes_per_family():
    policy, plan = compiled(
        {"name": "v4-any", "action": "drop", "src": "0.0.0.0/0", "dport": 22},
        {"name": "v6-any", "action": "drop", "dst": "::/0", "proto": 17},
        {"name": "both", "action": "accept", "src": ["0.0.0.0/0", "::/0"], "dst": "10.0.0.0/8"})
    # "both" can only match IPv4 (its dst is IPv4): its ::/0 item is left out.  Direct
    # fields: src for v4-any and both (dst classified), dst for v6-any.
    keys = plan.maps()["rule_table"]
    assert {(k[2], k[-2]) for k in keys} == {(4, 0), (6, 0)}
    assert len({k[0] for k in keys if k[2] == 6}) == 1  # only v6-any's slot has IPv6
    assert not plan.maps()["src_v4"] and not plan.maps()["src_v6"]
    assert set(plan.maps()["dst_v4"]) == {(8, 0x0A000000)} and not plan.maps()["dst_v6"]
    assert decide(plan, policy, pkt("0.0.0.0", dport=22)) == "v4-any"
    assert decide(plan, policy, pkt("255.255.255.255", dport=22)) == "v4-any"
    assert decide(plan, policy, pkt("2001:db8::1", dport=22)) == "default:accept"
    assert decide(plan, policy, pkt("2001:db8::1", proto=17)) == "v6-any"
    assert decide(plan, policy, pkt("1.2.3.4", dst="10.9.9.9", proto=17)) == "both"
    assert decide(plan, policy, pkt("::", proto=47, dst="::1")) == "default:accept"


def test_mixed_family_address_lists_match_only_items_of_the_packet_family():
    policy, plan = compiled(
        {"name": "mixed", "action": "drop", "src": ["192.0.2.0/24", "2001:db8::/32"],
         "dst": "10.0.0.0/8"},
        {"name": "mixed6", "action": "drop", "src": ["192.0.2.0/24", "2001:db8::/32"]})
    # mixed can only match IPv4 (dst is IPv4): its IPv6 item never reaches the rule trie
    v6 = {k[-2:]: v for k, v in plan.maps()["rule_table"].items() if k[2] == 6}
    assert v6 == {(32, 0x20010DB8 << 96): 1}
    assert decide(plan, policy, pkt("192.0.2.9", dst="10.1.1.1")) == "mixed"
    assert decide(plan, policy, pkt("192.0.2.9", dst="11.1.1.1")) == "mixed6"
    assert decide(plan, policy, pkt("2001:db8::5", dst="2001:db8::6")) == "mixed6"
    assert decide(plan, policy, pkt("2001:db9::5", dst="2001:db8::6")) == "default:accept"
    only_v4 = [k for k in plan.maps()["rule_table"] if k[2] == 4]
    only_v6 = [k for k in plan.maps()["rule_table"] if k[2] == 6]
    assert len(only_v4) == 2 and len(only_v6) == 1  # mixed and mixed6 in v4, mixed6 in v6


# ---- ports, protocols, ICMP --------------------------------------------------------------


def test_overlapping_port_ranges_cut_at_every_boundary():
    policy, plan = compiled(
        {"name": "a", "action": "accept", "proto": 6, "dport": "80-90"},
        {"name": "b", "action": "drop", "proto": 6, "dport": ["85-100", 90]},
        {"name": "c", "action": "accept", "dport": ["90", "100-65535"]})
    expect = {79: "default:drop", 80: "a", 84: "a", 85: "a", 90: "a", 91: "b", 100: "b",
              101: "c", 65535: "c"}
    policy = Policy(rules=policy.rules, default_ingress=Action.DROP)
    plan = compile_policy(policy)
    for port, want in expect.items():
        assert decide(plan, policy, pkt("10.0.0.1", dport=port)) == want, port
    # udp: only c
    assert decide(plan, policy, pkt("10.0.0.1", proto=17, dport=90)) == "c"
    assert decide(plan, policy, pkt("10.0.0.1", proto=17, dport=85)) == "default:drop"
    index = plan.maps()["dport_interval"]
    # tcp 80-84 | 85-89 | 90 | 91-99 | 100 | 101-65535 differ; udp 90 and 100-65535 share
    tcp_ids = [index.get(p, 0) for p in (80, 84, 85, 89, 90, 91, 99, 100, 101, 65535)]
    assert len(set(tcp_ids)) == 6 and index.get(79, 0) == 0
    assert index[65536 + 90] == index[65536 + 100] == index[65536 + 65535]


def test_sport_and_dport_together_and_port_edges():
    policy, plan = compiled(
        {"name": "both", "action": "drop", "sport": "1024-65535", "dport": [0, 65535]},
        {"name": "sport", "action": "accept", "proto": 17, "sport": 53})
    assert decide(plan, policy, pkt("10.0.0.1", sport=1024, dport=0)) == "both"
    assert decide(plan, policy, pkt("10.0.0.1", sport=1023, dport=0)) == "default:accept"
    assert decide(plan, policy, pkt("10.0.0.1", proto=17, sport=65535, dport=65535)) == "both"
    assert decide(plan, policy, pkt("10.0.0.1", proto=17, sport=53, dport=1)) == "sport"
    assert decide(plan, policy, pkt("10.0.0.1", proto=6, sport=53, dport=1)) == "default:accept"


def test_icmp_is_ipv4_only_and_icmpv6_ipv6_only_but_any_proto_matches_both():
    policy, plan = compiled(
        {"name": "icmp", "action": "drop", "proto": 1},
        {"name": "echo6", "action": "drop", "proto": 58, "icmp_type": [(6, 128)]},
        {"name": "echo-both", "action": "accept", "proto": [1, 58],
         "icmp_type": [(4, 8), (6, 128)]},
        {"name": "v6-any", "action": "accept", "src": "2001:db8::/32"},
        ingress="drop")
    assert decide(plan, policy, pkt("10.0.0.1", proto=1, icmp_type=8)) == "icmp"
    assert decide(plan, policy, pkt("10.0.0.1", proto=58, icmp_type=128)) == "default:drop"
    # next header 1 in IPv6 is not icmp, but a rule without proto matches it
    assert decide(plan, policy, pkt("2001:db8::1", proto=1, icmp_type=8)) == "v6-any"
    assert decide(plan, policy, pkt("2001:db9::1", proto=1, icmp_type=8)) == "default:drop"
    assert decide(plan, policy, pkt("2001:db9::1", proto=58, icmp_type=128)) == "echo6"
    assert decide(plan, policy, pkt("2001:db9::1", proto=58, icmp_type=8)) == "default:drop"
    keys = plan.maps()["rule_table"]
    assert not [k for k in keys if k[2] == 6 and k[3] == 1]   # no (IPv6, proto 1) entry
    assert not [k for k in keys if k[2] == 4 and k[3] == 58]


def test_ndp_is_accepted_first_unless_disabled():
    specs = ({"name": "no-icmp6", "action": "drop", "proto": 58},)
    policy, plan = compiled(*specs)
    ns = pkt("fe80::1", dst="ff02::1", proto=58, icmp_type=135, ttl=255)
    assert decide(plan, policy, ns) == "ndp"
    assert decide(plan, policy, pkt("fe80::1", proto=58, icmp_type=138, ttl=255)) == "no-icmp6"
    assert decide(plan, policy, pkt("fe80::1", proto=58, icmp_type=135, ttl=255,
                                    fragment=True)) == "no-icmp6"
    policy, plan = compiled(*specs, allow_ndp=False)
    assert decide(plan, policy, ns) == "no-icmp6"


def test_ndp_takes_the_implicit_accept_only_as_a_host_would_process_it():
    # RFC 4861: receivers discard ND whose hop limit is not 255 (it was forwarded), and
    # redirects from a source that is not link-local: those meet the rules.
    policy, plan = compiled({"name": "no-icmp6", "action": "drop", "proto": 58})
    for icmp_type in range(133, 138):
        assert decide(plan, policy, pkt("fe80::1", dst="ff02::1", proto=58,
                                        icmp_type=icmp_type, ttl=255)) == "ndp"
        for ttl in (0, 1, 64, 254):
            assert decide(plan, policy, pkt("fe80::1", dst="ff02::1", proto=58,
                                            icmp_type=icmp_type, ttl=ttl)) == "no-icmp6"
    assert decide(plan, policy, pkt("2001:db8::1", proto=58, icmp_type=135,
                                    ttl=255)) == "ndp"
    assert decide(plan, policy, pkt("2001:db8::1", proto=58, icmp_type=137,
                                    ttl=255)) == "no-icmp6"
    assert decide(plan, policy, pkt("febf::1", proto=58, icmp_type=137, ttl=255)) == "ndp"
    assert decide(plan, policy, pkt("fec0::1", proto=58, icmp_type=137,
                                    ttl=255)) == "no-icmp6"


def test_protocol_number_equals_its_name():
    from netctl.policy.load import load_policy_text

    def plan_of(proto: str):
        text = ("version: 1\nrules:\n"
                f"  - {{name: a, action: drop, proto: {proto}, dport: 22}}\n"
                f"  - {{name: b, action: drop, proto: {proto}}}\n")
        return compile_policy(load_policy_text(text, "p.yaml"))

    assert plan_of("tcp") == plan_of("6")
    assert plan_of("udp") == plan_of("17")
    assert plan_of("[tcp, udp]") == plan_of("[17, 6]")


def test_fragments_match_only_rules_without_l4_fields():
    policy, plan = compiled(
        {"name": "ssh", "action": "accept", "proto": 6, "dport": 22},
        {"name": "icmp-echo", "action": "accept", "proto": 1, "icmp_type": [(4, 8)]},
        {"name": "tcp", "action": "drop", "proto": 6},
        ingress="accept")
    frag = pkt("10.0.0.1", proto=6, fragment=True)
    assert frag.dport is None
    assert decide(plan, policy, frag) == "tcp"
    assert decide(plan, policy, pkt("10.0.0.1", proto=6, dport=22)) == "ssh"
    assert decide(plan, policy, pkt("10.0.0.1", proto=1, icmp_type=8, fragment=True)) \
        == "default:accept"
    # a fragment whose (stale) fields are filled in must still be judged without them
    stale = Packet(src=frag.src, dst=frag.dst, proto=6, sport=1, dport=22, fragment=True)
    assert decide(plan, policy, stale) == "tcp"


def test_directions_are_separate_and_slot_bitmaps_follow_them():
    policy, plan = compiled(
        {"name": "out", "direction": "egress", "action": "drop", "dst": "10.0.0.0/8"},
        {"name": "in", "action": "drop", "src": "10.0.0.0/8", "dport": 22})
    config = plan.config
    assert config[CFG_SLOTS_EGRESS] and config[CFG_SLOTS_INGRESS]
    assert not config[CFG_SLOTS_EGRESS] & config[CFG_SLOTS_INGRESS]
    p = pkt("10.0.0.1", dst="10.0.0.2", dport=22)
    assert decide(plan, policy, p, IN) == "in"
    assert decide(plan, policy, p, OUT) == "out"


def test_a_rule_without_fields_is_the_empty_shape_and_matches_everything():
    policy, plan = compiled(
        {"name": "web", "action": "accept", "dport": 443},
        {"name": "all", "action": "drop"},
        {"name": "never", "action": "accept", "src": "10.0.0.0/8"})
    slot = plan.shape_members.index((0,))
    assert plan.shapes[slot] == 0 and plan.config[CFG_SLOTS_INGRESS] & (1 << slot)
    assert "all" in plan.summary()
    assert decide(plan, policy, pkt("10.0.0.1", dport=443)) == "web"
    assert decide(plan, policy, pkt("10.0.0.1", dport=444)) == "all"
    assert decide(plan, policy, pkt("2001:db8::1", proto=58, icmp_type=1)) == "all"
    assert decide(plan, policy, pkt("2001:db8::1", proto=6, fragment=True)) == "all"
    assert decide(plan, policy, pkt("10.0.0.1", dport=1), OUT) == "default:accept"


def test_rules_that_cannot_match_produce_no_entries():
    contradictory = Rule(name="x", index=0, line=1, direction=IN, action=Action.DROP,
                         proto=(6,), dport=(PortRange(1, 2),), icmp_type=((4, 8),))
    icmp_with_tcp_only = Rule(name="y", index=1, line=2, direction=IN, action=Action.DROP,
                              proto=(6,), icmp_type=((4, 8),))
    policy = Policy(rules=(contradictory, icmp_with_tcp_only))
    plan = compile_policy(policy)
    assert not any(plan.shapes) and not plan.maps()["rule_table"]
    assert plan.rule_names == ("x", "y")
    assert decide(plan, policy, pkt("10.0.0.1", dport=1)) == "default:accept"


def test_rule_index_must_be_its_position():
    rule = Rule(name="x", index=3, line=1, direction=IN, action=Action.DROP)
    with pytest.raises(CompileError, match="index 3 at position 0"):
        compile_policy(Policy(rules=(rule,)))


# ---- shapes ------------------------------------------------------------------------------

# Twelve rules of twelve distinct shapes, five L4 kinds: needs merging into 8 (or 5) slots.
MANY_SHAPES = (
    {"name": "s", "action": "drop", "src": "10.0.0.0/8"},
    {"name": "d", "action": "accept", "dst": "10.1.0.0/16"},
    {"name": "p", "action": "drop", "proto": 47},
    {"name": "sd", "action": "accept", "src": "10.2.0.0/16", "dst": "10.3.0.0/16"},
    {"name": "sp", "action": "drop", "src": ["10.4.0.0/16", "2001:db8::/32"], "proto": [1, 17]},
    {"name": "any6", "action": "drop", "dst": "::/0", "proto": [6, 0]},
    {"name": "dport", "action": "accept", "dport": 22},
    {"name": "sdport", "action": "accept", "src": "10.5.0.0/16", "dport": "80-90"},
    {"name": "sport", "action": "drop", "proto": 17, "sport": 53},
    {"name": "sportdport", "action": "drop", "sport": 1000, "dport": 2000},
    {"name": "icmp", "action": "drop", "proto": 1, "icmp_type": [(4, 8)]},
    {"name": "dicmp", "action": "accept", "dst": "2001:db8::/32", "proto": 58,
     "icmp_type": [(6, 128)]},
)


def _probe_grid():
    addresses = {4: ["10.0.0.1", "10.1.2.3", "10.2.0.1", "10.3.0.1", "10.4.0.1", "10.5.0.1",
                     "11.0.0.1"],
                 6: ["2001:db8::1", "2001:db8:1::1", "2001:db9::1"]}
    for addrs in addresses.values():
        for src, dst in itertools.product(addrs, repeat=2):
            for proto in (6, 17, 1, 58, 47, 0):
                if proto in (6, 17):
                    for sport, dport in itertools.product((53, 1000, 40000), (22, 80, 2000, 91)):
                        yield pkt(src, dst, proto, sport=sport, dport=dport)
                    yield pkt(src, dst, proto, fragment=True)
                else:
                    for t in (8, 128, 0):
                        yield pkt(src, dst, proto, icmp_type=t)


@pytest.mark.parametrize("slots", [MAX_SHAPES, 6, 5])
def test_more_shapes_than_slots_are_merged_by_widening_src_dst_proto(slots):
    policy, plan = compiled(*MANY_SHAPES, limits=Limits(shapes=slots))
    used = [m for m in plan.shapes if m]
    assert len(used) == slots
    members = [m for group in plan.shape_members for m in group]
    assert len(members) == len(set(members)) == 12
    for shape, group in zip(plan.shapes, plan.shape_members, strict=True):
        for m in group:
            # only src/dst/proto are widened; the L4 fields never change
            assert m | shape == shape
            assert m & (FIELD_SPORT | FIELD_DPORT | FIELD_ICMP) == \
                shape & (FIELD_SPORT | FIELD_DPORT | FIELD_ICMP)
    for packet in _probe_grid():
        for direction in (IN, OUT):
            decide(plan, policy, packet, direction)


def test_widened_proto_covers_every_protocol_of_each_family():
    # "s" (src only) merged with "sp" (src+proto): s needs all 256 protocols per family
    policy, plan = compiled(*MANY_SHAPES, limits=Limits(shapes=5))
    slot = next(i for i, g in enumerate(plan.shape_members) if FIELD_SRC in g)
    assert plan.shapes[slot] & FIELD_PROTO
    keys = [k for k, v in plan.maps()["rule_table"].items()
            if k[0] == slot and plan.rule_names[v] == "s"]
    assert sorted({k[3] for k in keys}) == list(range(256))


def test_too_few_slots_for_the_l4_kinds_is_a_compile_error():
    with pytest.raises(CompileError, match="needs at least 5 shape slots"):
        compiled(*MANY_SHAPES, limits=Limits(shapes=4))


# ---- determinism, capacities, diffs --------------------------------------------------------


def blocklist(n: int, *, port_every: int = 5) -> Policy:
    """n rules, mostly distinct source prefixes, some port ranges from a small vocabulary."""
    vocab = [(PortRange(22, 22),), (PortRange(80, 80), PortRange(443, 443)),
             (PortRange(8000, 8100),), (PortRange(1024, 65535),)]
    rules = []
    for i in range(n):
        if i % 10 == 9:
            net = ipaddress.IPv6Network((0x20010DB8 << 96 | i << 64, 64))
        elif i % 3 == 0:
            net = ipaddress.IPv4Network(((10 << 24) | (i << 8) & 0xFFFF00, 24))
        else:
            net = ipaddress.IPv4Network(((11 << 24) + i * 7, 32))
        extra = {}
        if i % port_every == 0:
            extra = {"proto": (6,) if i % 2 else (6, 17), "dport": vocab[i % 4]}
        rules.append(Rule(name=f"r{i}", index=i, line=i + 1,
                          direction=IN if i % 7 else OUT,
                          action=Action.DROP if i % 4 else Action.ACCEPT, src=(net,),
                          families=frozenset({net.version}), **extra))
    return Policy(rules=tuple(rules), default_ingress=Action.ACCEPT)


def test_same_policy_same_plan_even_across_processes():
    policy, plan = compiled(*MANY_SHAPES, limits=Limits(shapes=6))
    again = compile_policy(make_policy(*MANY_SHAPES), Limits(shapes=6))
    assert plan == again and plan.digest() == again.digest()
    code = ("import sys; sys.path[:0] = ['tests/unit', 'tests']; from test_compile import *; "
            "print(compile_policy(blocklist(300)).digest())")
    root = Path(__file__).resolve().parents[2]
    digests = {subprocess.run([sys.executable, "-c", code], cwd=root, check=True, text=True,
                              capture_output=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")}
    assert digests == {compile_policy(blocklist(300)).digest()}


def test_plan_is_plain_ints_and_tuples():
    _, plan = compiled(*MANY_SHAPES)

    def plain(x):
        if isinstance(x, tuple):
            return all(plain(i) for i in x)
        return type(x) is int

    maps = plan.maps()
    assert tuple(maps) == MAP_NAMES
    for contents in maps.values():
        assert all(plain(k) and plain(v) for k, v in contents.items())


def test_map_full_errors_name_the_map_the_need_and_the_capacity():
    policy = blocklist(200)
    with pytest.raises(MapFullError, match=r"^rules: needs 200 entries, capacity 100$"):
        compile_policy(policy, Limits(rules=100))
    # dst is classified (fewer distinct prefixes than src): its class trie needs 60 entries
    classified = make_policy(*({"src": f"10.{i}.0.0/16", "dst": f"192.0.2.{i % 60}/32"}
                               for i in range(200)))
    with pytest.raises(MapFullError, match=r"^dst_v4: needs 60 entries, capacity 50$"):
        compile_policy(classified, Limits(lpm_entries=50))
    with pytest.raises(MapFullError,
                       match=r"^rule_table: needs 231 entries, capacity 100; "
                             r"rule 'r\d+' contributes the most \(\d+\)$") as info:
        compile_policy(policy, Limits(rule_table=100))
    assert (info.value.limit, info.value.needed) == ("rule_table", 231)
    many_ports = make_policy(*({"dport": 2 * i} for i in range(20)))
    with pytest.raises(MapFullError, match=r"^dport_classes: needs 21 entries, capacity 8$"):
        compile_policy(many_ports, Limits(port_intervals=8))


def test_src_heavy_and_dst_heavy_rules_of_one_shape_stay_linear_unless_they_cover():
    # 300 distinct sources with one destination, 300 distinct destinations with one source
    # that does not cover them: the direct field keeps this linear (a cross product of
    # classes would need 300 x 300 entries).
    specs = [{"src": f"10.{i // 256}.{i % 256}.0/24", "dst": "192.168.0.0/16"}
             for i in range(300)]
    specs += [{"src": "172.16.0.0/12", "dst": f"192.{i // 256}.{i % 256}.0/24"}
              for i in range(300)]
    _, plan = compiled(*specs)
    assert len(plan.maps()["rule_table"]) < 700
    # When the broad destination does cover the distinct ones, every src-heavy rule is in
    # every destination class: k x k entries, refused cleanly with the worst rule named.
    covering = [{"src": f"10.{i // 256}.{i % 256}.0/24", "dst": "192.0.0.0/8"}
                for i in range(300)]
    covering += [{"src": "10.0.0.0/8", "dst": f"192.{i // 256}.{i % 256}.0/24"}
                 for i in range(300)]
    with pytest.raises(MapFullError, match=r"rule_table: needs \d+ entries, capacity 50000; "
                                           r"rule 'r\d+' contributes"):
        compiled(*covering, limits=Limits(rule_table=50000))


def test_capacities_grow_to_what_the_policy_needs_up_to_their_ceiling():
    from netctl.policy.compile import compile_fitting
    from netctl.policy.plan import CEILINGS

    # 20,000 distinct destination ports: 40,001 port classes, past the default 16,384
    many_ports = make_policy(*({"proto": 6, "dport": 3 * i} for i in range(20000)))
    with pytest.raises(MapFullError) as info:
        compile_policy(many_ports, Limits())
    assert (info.value.limit, info.value.needed) == ("port_intervals", 20001)
    plan = compile_fitting(many_ports, Limits())
    assert plan.limits.port_intervals == 32768 and plan.limits.rule_table == Limits().rule_table
    assert plan.constants()["NETCTL_DPORT_CLASSES_ENTRIES"] == 32768
    # growth is to a power of two, capped at the ceiling; past it, None
    assert Limits().grown("port_intervals", 70000).port_intervals == 131072
    assert Limits().grown("port_intervals", 131073).port_intervals == CEILINGS["port_intervals"]
    assert Limits().grown("port_intervals", 131074) is None
    assert Limits(rules=100).grown("rules", 101).rules == 200
    # every port of both protocols in its own interval: the whole value space fits
    every = make_policy(*({"proto": proto, "dport": i} for proto in (6, 17)
                          for i in range(0, 65536, 1)))
    plan = compile_fitting(every, Limits(rules=1 << 18, rule_table=1 << 18))
    assert len(plan.maps()["dport_classes"]) < plan.limits.port_intervals


def test_diff_of_a_one_rule_change_touches_few_entries():
    base = blocklist(2000)
    rules = list(base.rules)
    r = rules[1000]  # a dport rule: prefix and ports change
    rules[1000] = Rule(name=r.name, index=r.index, line=r.line, direction=r.direction,
                       action=r.action, src=(ipaddress.ip_network("10.99.0.0/16"),),
                       proto=r.proto, dport=(PortRange(23, 23),), families=r.families)
    r = rules[1001]  # a plain source rule: only the action changes
    rules[1001] = Rule(name=r.name, index=r.index, line=r.line, direction=r.direction,
                       action=Action.ACCEPT if r.action is Action.DROP else Action.DROP,
                       src=r.src, families=r.families)
    old = compile_policy(base)
    new = compile_policy(Policy(rules=tuple(rules)))
    d = diff(old, new)
    assert not d.reload
    assert d.maps["rules"].changed == {1001: (old.rules[1001], new.rules[1001])}
    assert 0 < d.entries() <= 12, d.summary()
    touched = {name for name, m in d.maps.items() if m}
    assert touched <= {"src_v4", "dport_interval", "dport_classes", "rule_table", "rules"}
    assert "rule_table" in d.summary() and diff(new, new).summary() == "no entry changes"
    # applying the diff to the old contents gives the new contents
    for name, m in d.maps.items():
        contents = dict(old.maps()[name])
        for key in m.removed:
            contents.pop(key, None)
        contents.update(m.added)
        contents.update({k: v for k, (_, v) in m.changed.items()})
        assert contents == dict(new.maps()[name]), name


def test_diff_from_nothing_adds_everything_and_marks_a_load():
    _, plan = compiled(*MANY_SHAPES)
    d = diff(None, plan)
    assert d.reload and not any(m.changed or m.removed for m in d.maps.values())
    zero_rules = sum(1 for v in plan.rules if v == (0, 0))  # arrays start zeroed
    assert zero_rules and d.entries() == sum(plan.counts().values()) - zero_rules


def test_compiling_20000_rules_completes():
    policy = blocklist(20000)
    plan = compile_policy(policy)
    assert len(plan.rules) == 20000
    assert FIELD_SRC in plan.shapes and (FIELD_SRC | FIELD_PROTO | FIELD_DPORT) in plan.shapes
    # spot checks against the oracle
    for i in (0, 1, 2, 3, 9, 10, 19999):
        rule = policy.rules[i]
        net = rule.src[0]
        p = pkt(str(net.network_address), proto=6, dport=22 if rule.dport else 80)
        decide(plan, policy, p, rule.direction)
        decide(plan, policy, p, OUT if rule.direction is IN else IN)


def test_unused_fields_and_constants():
    _, plan = compiled({"name": "a", "action": "drop", "dst": "10.0.0.0/8"})
    assert plan.shapes == (FIELD_DST,) + (0,) * (MAX_SHAPES - 1)
    (key,) = plan.maps()["rule_table"]
    # slot 0, ingress, IPv4, no proto, no other class, no ports; dst 10.0.0.0/8 directly
    assert key == (0, 0, 4, 0, 0, 0, 0, 8, 0x0A000000)
    constants = plan.constants()
    assert constants["NETCTL_MAX_SHAPES"] == MAX_SHAPES
    assert constants["NETCTL_RULE_TABLE_ENTRIES"] == Limits().rule_table
    assert FIELD_DPORT == 16 and FIELD_ICMP == 32 and FIELD_DST == 2


# ---- the direct field: address or destination port ---------------------------------------


def _overlapping_ranges(n: int) -> list[dict]:
    """UDP rules whose wide port ranges overlap, each on a prefix of its own: keyed by the
    address, every prefix is written once per port class its range spans (dozens)."""
    specs = []
    for i in range(n):
        lo = (i * 997) % 9000 + 1
        specs.append({"src": f"10.{i // 256}.{i % 256}.0/24", "proto": "udp",
                      "dport": f"{lo}-{lo + 500 + (i * 31) % 500}"})
    return specs


def test_dport_is_the_direct_field_where_ranges_would_multiply_the_address_entries():
    from netctl.abi import CFG_DIRECT_PORT
    policy = make_policy(*_overlapping_ranges(400))
    by_port = compile_policy(policy)
    by_address = compile_policy(policy, direct="address")
    assert by_port.config[CFG_DIRECT_PORT] == 1 and by_address.config[CFG_DIRECT_PORT] == 0
    port_entries = len(by_port.maps()["rule_table"])
    address_entries = len(by_address.maps()["rule_table"])
    assert 2 * port_entries < address_entries, (port_entries, address_entries)
    # the slot keyed by port has no dport classes: the interval arrays stay empty
    assert not by_port.maps()["dport_classes"] and by_address.maps()["dport_classes"]
    # both decide like the reference evaluator on every range edge, inside and outside
    for spec in _overlapping_ranges(400)[:60]:
        lo, hi = map(int, spec["dport"].split("-"))
        net = ipaddress.ip_network(spec["src"])
        for dport in (lo - 1, lo, hi, hi + 1):
            for src in (net.network_address, net.broadcast_address):
                p = pkt(str(src), proto=17, dport=dport)
                assert decide(by_port, policy, p) == decide(by_address, policy, p)
        assert decide(by_port, policy, pkt(str(net.network_address), proto=6, dport=lo)) \
            == "default:accept"


def test_few_prefixes_on_single_ports_stay_keyed_by_the_address():
    from netctl.abi import CFG_DIRECT_PORT
    specs = [{"src": f"10.{i // 256}.{i % 256}.0/24", "proto": "tcp", "dport": 22 + i % 3}
             for i in range(500)]
    _, plan = compiled(*specs)
    assert plan.config[CFG_DIRECT_PORT] == 0


def test_port_keyed_slots_with_a_dst_field_and_fragments_and_other_protocols():
    specs = [{"dst": "192.0.2.0/24", "proto": "tcp", "dport": "1000-3000"},
             {"dst": "192.0.2.128/25", "proto": "tcp", "dport": "2000-4000"},
             {"proto": "udp", "dport": "53"}]
    policy, plan = compiled(*specs)
    forced = compile_policy(policy, direct="port")
    from netctl.abi import CFG_DIRECT_PORT
    assert forced.config[CFG_DIRECT_PORT]
    for p in (pkt("10.0.0.1", "192.0.2.1", 6, dport=1000),
              pkt("10.0.0.1", "192.0.2.200", 6, dport=3500),
              pkt("10.0.0.1", "192.0.2.1", 6, dport=3500),
              pkt("10.0.0.1", "192.0.2.1", 6, dport=4001),
              pkt("10.0.0.1", "198.51.100.1", 17, dport=53),
              pkt("10.0.0.1", "198.51.100.1", 6, dport=53),
              pkt("10.0.0.1", "192.0.2.1", 6, fragment=True),
              pkt("10.0.0.1", "192.0.2.1", 1, icmp_type=8)):
        assert decide(forced, policy, p) == decide(plan, policy, p)
    with pytest.raises(CompileError, match="direct: 'sideways'"):
        compile_policy(policy, direct="sideways")
