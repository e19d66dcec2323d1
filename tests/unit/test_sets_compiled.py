"""Sets through the compiler, the map encoding, the analysis and explain: a set compiles to
what the same prefixes written out would, the shortcuts taken for a million prefixes
(propagation, bulk packing, diffs, fingerprints) give what the general code gives, and
explain and the shadow analysis speak of sets."""

from __future__ import annotations

import ipaddress
import random

import pytest

from netctl import abi
from netctl.datapath import maps as mapio
from netctl.policy.analyze import analyze
from netctl.policy.compile import compile_policy
from netctl.policy.compile_trie import _propagate
from netctl.policy.evaluate import evaluate
from netctl.policy.explain import explain
from netctl.policy.interp import interpret
from netctl.policy.load import load_policy_text
from netctl.policy.model import Direction, Packet
from netctl.policy.plan import Limits, MapPlan, diff
from netctl.policy.sets import make_set, replace_sets

SOURCE = "test.yaml"


def random_prefixes(rng: random.Random, n: int) -> list[tuple[int, int, int]]:
    out = []
    for _ in range(n):
        if rng.random() < 0.8:
            plen = rng.choice((8, 16, 20, 24, 24, 28, 32))
            out.append((4, plen, rng.getrandbits(plen) << (32 - plen)))
        else:
            plen = rng.choice((32, 48, 64, 128))
            out.append((6, plen, rng.getrandbits(plen) << (128 - plen)))
    return out


def text_of(item) -> str:
    family, plen, net = item
    cls = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    return str(cls((net, plen)))


POLICY = """\
version: 1
sets:
  s: {elements: []}
rules:
  - {name: allow, action: accept, src: [10.0.0.0/8, "2001:db8::/32"]}
  - {name: drop-set, action: drop, src: "@s"}
  - {name: web, action: accept, src: ["@s", 192.0.2.0/24], proto: tcp, dport: [80, 443]}
  - {name: late, action: accept, src: [0.0.0.0/1, 10.1.0.0/16]}
"""


def with_set(prefixes) -> object:
    policy = load_policy_text(POLICY, SOURCE)
    return replace_sets(policy, {"s": make_set("s", prefixes)})


def test_a_set_compiles_to_what_its_prefixes_written_out_compile_to():
    rng = random.Random(3)
    prefixes = random_prefixes(rng, 3000) + [(4, 8, 10 << 24), (4, 16, (10 << 24) | (1 << 16))]
    policy = with_set(prefixes)
    listed = ", ".join(f'"{text_of(p)}"' for p in dict.fromkeys(prefixes))
    written = POLICY.replace('src: "@s"', f"src: [{listed}]").replace(
        'src: ["@s", 192.0.2.0/24]', f"src: [{listed}, 192.0.2.0/24]")
    literal = load_policy_text(written, SOURCE)
    a, b = compile_policy(policy), compile_policy(literal)
    assert a.maps() == b.maps()


def test_a_big_set_beside_other_rules_in_its_buckets_agrees_with_the_model():
    """Rules before and after the set's rule write into its buckets (shared propagation);
    packets at the edges of the set's prefixes and inside the other rules' prefixes."""
    rng = random.Random(5)
    prefixes = random_prefixes(rng, 5000)
    policy = with_set(prefixes)
    plan = compile_policy(policy)
    probes = []
    for family, plen, net in rng.sample(prefixes, 500):
        bits = 32 if family == 4 else 128
        last = net | ((1 << (bits - plen)) - 1)
        probes += [(family, a) for a in (net, last, max(net - 1, 0),
                                        min(last + 1, (1 << bits) - 1))]
    probes += [(4, (10 << 24) | rng.getrandbits(24)) for _ in range(200)]
    probes += [(4, rng.getrandbits(32)) for _ in range(500)]
    for family, value in probes:
        make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        dst = make(1)
        for proto, dport in ((6, 80), (17, 53), (1, None)):
            packet = Packet(make(value), dst, proto, 1 if dport else None, dport,
                            0 if dport is None else None, 0 if dport is None else None)
            if family == 6 and proto == 1:
                continue
            want = evaluate(policy, packet, Direction.INGRESS)
            got = interpret(plan, packet, Direction.INGRESS)
            assert (got.verdict, got.rule) == (want.verdict, want.rule.index if want.rule
                                               else None), packet


def brute_force_propagation(bucket, bits):
    out = {}
    for (plen, net), value in bucket.items():
        best = value
        for (q, m), w in bucket.items():
            if q < plen and (net >> (bits - q) << (bits - q) if q else 0) == m:
                best = min(best, w)
        out[(plen, net)] = best
    return out


def test_propagation_gives_each_prefix_the_lowest_rule_above_it():
    rng = random.Random(11)
    for _ in range(3000):
        bits = rng.choice((32, 128, 8))
        bucket = {}
        lengths = sorted(rng.sample(range(bits + 1), rng.randint(1, 6)))
        for _ in range(rng.randint(1, 30)):
            plen = rng.choice(lengths)
            net = (rng.getrandbits(3) << (bits - 3)) >> (bits - plen) << (bits - plen) \
                if plen else 0
            bucket.setdefault((plen, net), rng.randint(0, 5))
        want = brute_force_propagation(bucket, bits)
        _propagate(bucket, bits)
        assert bucket == want


def test_bulk_packing_equals_packing_one_by_one():
    rng = random.Random(2)
    keys = [(rng.randint(0, 7), rng.randint(0, 1), family, rng.choice((0, 6, 17)),
             rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32), plen,
             rng.getrandbits(plen) << ((32 if family == 4 else 128) - plen))
            for family in (4, 6) for plen in (0, 1, 24, 32) for _ in range(50)]
    for gen in (0, 1):
        assert abi.pack_rule_keys(gen, keys) == b"".join(abi.pack_rule_key(gen, k)
                                                         for k in keys)
        pairs = [(plen, rng.getrandbits(plen) << (32 - plen)) for plen in range(33)]
        assert abi.pack_lpm_keys(gen, 4, pairs) == b"".join(
            abi.pack_lpm_key(gen, 4, p, n) for p, n in pairs)
    values = [rng.getrandbits(32) for _ in range(100)]
    assert abi.pack_u32s(values) == b"".join(abi.pack_u32(v) for v in values)


def test_a_million_prefix_set_writes_through_the_bulk_path_into_memory_maps():
    prefixes = [(4, 32, i << 3) for i in range(20000)] + [(6, 64, i << 64) for i in range(500)]
    plan = compile_policy(with_set(prefixes), Limits(rules=16))
    maps = mapio.memory_maps(plan.constants())
    for name, change in diff(None, plan).maps.items():
        mapio.write_diff(maps, name, 1, change, plan.constants())
    held = mapio.read_generation(maps, 1, plan.constants())
    assert held["rule_table"] == dict(plan.maps()["rule_table"])
    assert mapio.contents_digests(held) == mapio.contents_digests(plan.maps())


def test_diffs_between_plans_turn_one_into_the_other():
    rng = random.Random(8)
    base = random_prefixes(rng, 2000)
    plans = [compile_policy(with_set(p)) for p in (
        base, base[:-10], base + random_prefixes(rng, 10), base[5:] + [(4, 0, 0)], [])]
    for old in plans:
        for new in plans:
            change = diff(old, new)
            for name, d in change.maps.items():
                contents = dict(old.maps()[name])
                for key in d.removed:
                    del contents[key]
                for key, (before, after) in d.changed.items():
                    assert contents[key] == before
                    contents[key] = after
                assert not set(d.added) & set(contents)
                contents.update(d.added)
                assert contents == dict(new.maps()[name]), name
            assert bool(change) == (old is not new and old.maps() != new.maps())


def test_fingerprints_recorded_the_older_way_are_compared_the_older_way():
    import hashlib

    plan = compile_policy(with_set(random_prefixes(random.Random(1), 100)))
    old_style = {}
    for name, contents in plan.maps().items():
        items = contents.items()
        if name in mapio.ARRAY_MAPS:
            items = [(k, v) for k, v in items if not mapio._all_zero(v)]
        lines = sorted(repr(item) for item in items)
        old_style[name] = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]
    assert mapio.contents_digests(plan.maps(), like=old_style) == old_style
    new_style = mapio.contents_digests(plan.maps())
    assert all(d.startswith("h1:") for d in new_style.values())
    assert mapio.contents_digests(plan.maps(), like=new_style) == new_style
    edited = dict(plan.maps())
    table = dict(edited["rule_table"])
    key = next(iter(table))
    table[key] += 1
    edited["rule_table"] = table
    assert mapio.contents_digests(edited)["rule_table"] != new_style["rule_table"]


def test_a_plan_with_a_set_pickles_and_fingerprints_stably():
    import pickle

    plan = compile_policy(with_set(random_prefixes(random.Random(4), 500)))
    again = pickle.loads(pickle.dumps(plan))
    assert isinstance(again, MapPlan) and again == plan and again.digest() == plan.digest()


# -- explain -------------------------------------------------------------------------------

EXPLAINED = """\
version: 1
sets:
  blk: {elements: [192.0.2.0/24, 192.0.2.128/25, "2001:db8::/32"]}
  v4only: {elements: [198.51.100.0/24]}
rules:
  - {name: v6-only, action: drop, src: "@v4only", proto: icmpv6}
  - {name: blk, action: drop, src: ["@blk", 10.0.0.0/8], proto: udp}
"""


def test_explain_names_the_set_and_the_prefix_that_holds_the_address():
    policy = load_policy_text(EXPLAINED, SOURCE)

    def why(src: str, proto: int = 17) -> dict:
        packet = Packet(ipaddress.ip_address(src), ipaddress.ip_address(
            "2001:db8::9" if ":" in src else "10.9.9.9"), proto, 1, 2)
        return explain(policy, packet, Direction.INGRESS).as_dict()

    hit = why("192.0.2.200")
    assert hit["rule"]["name"] == "blk"
    assert hit["matched"][0]["detail"] == "192.0.2.200 is in set @blk (via 192.0.2.128/25)"
    miss = why("192.0.3.1")
    assert miss["near_misses"][0]["failed"][0]["detail"] == \
        "192.0.3.1 is not in set @blk (3 prefixes), 10.0.0.0/8"
    v6 = explain(policy, Packet(ipaddress.ip_address("2001:db8::1"),
                                ipaddress.ip_address("2001:db8::2"), 58, icmp_type=128,
                                icmp_code=0), Direction.INGRESS).as_dict()
    assert v6["near_misses"][0]["failed"][0]["detail"] == \
        "src has no IPv6 item (set @v4only holds no IPv6 prefix)"


# -- the shadow analysis -----------------------------------------------------------------

def analyzed(text: str, **sets) -> list[str]:
    policy = load_policy_text(text, SOURCE)
    policy = replace_sets(policy, {name: make_set(name, prefixes)
                                   for name, prefixes in sets.items()})
    return [f"{f.line}: {f.message}" for f in analyze(policy)]


BIG = [(4, 24, (i * 7919 % (1 << 24)) << 8) for i in range(20000)] + [(4, 16, 198 << 24 | 51 << 16)]


def test_a_literal_rule_behind_a_big_set_that_covers_it_is_found():
    found = analyzed("""\
version: 1
sets:
  big: {elements: []}
rules:
  - {name: big, action: drop, src: "@big"}
  - {name: inside, action: drop, src: 198.51.100.7, proto: tcp}
  - {name: outside, action: drop, src: 203.0.113.7, proto: tcp}
  - {name: any, action: drop}
  - {name: after-any, action: drop, src: "@big"}
""", big=BIG)
    assert found == [
        "6: rule 'inside' can never match: earlier rule 'big' (line 5) covers every packet "
        "it matches",
        # a rule with a big set is not itself checked (rule 'after-any' is dead, unreported)
    ]


def test_a_big_set_counts_as_covering_only_where_it_is_cheap():
    found = analyzed("""\
version: 1
sets:
  big: {elements: []}
rules:
  - {name: big, action: drop, src: "@big"}
  - {name: broad, action: drop, src: 0.0.0.0/1}
""", big=BIG)
    assert found == []   # thousands of prefixes inside 0.0.0.0/1: not counted, no warning


def test_small_sets_are_checked_as_their_prefixes():
    found = analyzed("""\
version: 1
sets:
  small: {elements: [10.0.0.0/8, "2001:db8::/32"]}
  unused: {elements: []}
  empty: {elements: []}
rules:
  - {name: small, action: accept, src: "@small"}
  - {name: under, action: drop, src: [10.1.0.0/16, "2001:db8:1::/48"], proto: udp}
  - {name: covers-set, action: drop, src: "@small", dst: 192.0.2.0/24}
  - {name: empty, action: drop, src: "@empty"}
  - {name: no-v6, action: drop, src: "@small", proto: icmp, dst: "@small"}
""")
    assert found == [
        "4: set '@unused' is used by no rule",
        "8: rule 'under' can never match: earlier rule 'small' (line 7) covers every packet "
        "it matches",
        "9: rule 'covers-set' can never match: earlier rule 'small' (line 7) covers every "
        "packet it matches",
        "10: rule 'empty' matches no packet with what its sets hold now: @empty is empty",
        "11: rule 'no-v6' can never match: earlier rule 'small' (line 7) covers every packet "
        "it matches",
    ]


def test_schema_takes_sets_and_references():
    import jsonschema
    import yaml

    from netctl.policy.schema import policy_schema

    schema = policy_schema()
    jsonschema.validate(yaml.safe_load(EXPLAINED + "  - {name: f, action: drop, dst: "
                                                   "\"@blk\"}\n"), schema)
    for bad in ({"version": 1, "sets": {"bad name": {"elements": []}}},
                {"version": 1, "sets": {"a": {"elements": [], "file": "x"}}},
                {"version": 1, "sets": {"a": {}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
