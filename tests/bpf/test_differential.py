"""The real XDP and tc programs agree with the reference model, packet for packet.

One sandbox (netctl.datapath.sandbox: the programs and maps, built once, tied to no
interface) takes policy after policy the way `netctl apply` does (write the inactive
generation, flip), and every packet goes through BPF_PROG_TEST_RUN on each hook of its
direction.  The verdict, the deciding rule (read from the counter the packet moved) and the
reason must equal `netctl.policy.frame.frame_verdict`, the reference parser plus the
reference evaluator.  Inputs: hypothesis policies with packets aimed at their edges,
random well-formed frames (VLAN, options, extension chains, fragments), mutated frames,
frames from scapy's fuzz() (header fields at random, lengths and checksums included),
the named malformed cases (truncated at every offset, bad IHL, versions, too many
VLAN tags or extension headers, tiny fragments), frames that take every branch of the
extension-header walk, and frames as devices without a link-layer header carry them
(through the XDP program's L3 variant; the tc L3 variant meets the same frames on a real tun
device in tests/netns).  Stateful policies: conversations and ICMP errors run in lockstep
through the programs and the reference connection tracker (netctl.policy.conntrack), tables
compared after every packet.  In all, well over 10,000 packets.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import frames
import pytest
from hypothesis import HealthCheck, given, settings
from lockstep import Lockstep
from strategies import expand, policies, policy_and_packets

from netctl.abi import DropReason
from netctl.datapath.frames import Unrepresentable, frame_for
from netctl.datapath.sandbox import HOOKS, Sandbox, TestRunRefused, hooks_for
from netctl.policy.compile import compile_policy
from netctl.policy.evaluate import evaluate
from netctl.policy.frame import LINK_ETHERNET, LINK_L3, frame_verdict
from netctl.policy.load import load_policy_text
from netctl.policy.model import Direction, Packet
from netctl.policy.plan import Limits

pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")

LIMITS = Limits(rules=16)
# The kernel matrix (make test-kernels, tests/kernels) runs this module in virtual machines
# without KVM, some twenty times slower: it sets NETCTL_TEST_SCALE to run that share of each
# generated test's examples (and leaves out the CI floor of compared packets).
SCALE = float(os.environ.get("NETCTL_TEST_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
RUNS = {"packets": 0, "refused": 0}
PORT_KEYED = {"plans": 0}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(LIMITS) as box:
        yield box


@pytest.fixture(scope="module")
def port_sandbox():
    """Programs built for plans with slots keyed by the destination port."""
    with Sandbox(LIMITS, direct_port=True) as box:
        yield box


def direction_of(hook: str) -> Direction:
    return Direction.EGRESS if hook.startswith("tc_egress") else Direction.INGRESS


def check(sandbox, policy, frame: bytes, hook: str, context: str = "") -> None:
    link = LINK_L3 if hook.endswith("_l3") else LINK_ETHERNET
    want = frame_verdict(policy, frame, direction_of(hook), link)
    try:
        got = sandbox.run(frame, hook)
    except TestRunRefused:
        # The tc test run refuses IP frames shorter than their IP header; nothing else.
        assert not hook.startswith("xdp") and want.reason in (DropReason.TRUNC_IPV4,
                                                 DropReason.TRUNC_IPV6), (hook, frame.hex())
        RUNS["refused"] += 1
        return
    RUNS["packets"] += 1
    want_rule = want.rule.index if want.rule is not None else None
    assert (got.verdict, got.why, got.rule, got.reason) == (
        want.verdict, want.why, want_rule, want.reason), (
        f"{hook} {context}\nframe {frame.hex()}\nwant {want}\ngot {got}")


@settings(max_examples=examples(500), **SETTINGS)
@given(policy_and_packets(max_rules=8, n_packets=12))
def test_programs_agree_with_the_model_on_generated_policies(sandbox, case):
    agree_on_probes(sandbox, *case)


@settings(max_examples=200, **SETTINGS)
@given(policy_and_packets(max_rules=8, n_packets=12))
def test_programs_agree_when_every_dport_slot_is_keyed_by_port(sandbox, port_sandbox, case):
    """The same with each slot that can be keyed by the destination port keyed by it (the
    compiler picks that only where it writes far fewer entries), on programs built for it."""
    policy, probes = case
    plan = compile_policy(policy, LIMITS, "port")
    box = port_sandbox if plan.constants() == port_sandbox.dp.constants else sandbox
    PORT_KEYED["plans"] += box is port_sandbox
    agree_on_probes(box, policy, probes, "port")


def test_enough_plans_were_keyed_by_port():
    assert PORT_KEYED["plans"] >= 50, PORT_KEYED


def agree_on_probes(sandbox, policy, probes, direct="auto"):
    sandbox.load(compile_policy(policy, LIMITS, direct))
    for packet, direction in probes:
        try:
            frame = frame_for(packet)
        except Unrepresentable:
            continue  # no frame carries it (the model's unit tests cover it)
        # The frame means what the packet means (the reference parser reads it back) ...
        reference = evaluate(policy, packet, direction)
        assert frame_verdict(policy, frame, direction)[:3] == (
            reference.verdict, reference.rule, reference.why), packet
        # ... and every hook of that direction judges it the same way, twice: the second
        # time from the flow cache when the policy has it on.
        for hook in hooks_for(direction):
            check(sandbox, policy, frame, hook, str(packet))
            check(sandbox, policy, frame, hook, f"{packet}, again")


@settings(max_examples=examples(60), **SETTINGS)
@given(policies(max_rules=8))
def test_programs_agree_on_random_and_mutated_frames(sandbox, policy):
    sandbox.load(compile_policy(policy, LIMITS))
    rng = random.Random(len(policy.rules) * 7919 + sum(len(r.name) for r in policy.rules))
    addresses = sorted({str(a) for r in policy.rules for nets in (r.src, r.dst) if nets
                        for n in expand(nets) for a in (n.network_address, n.broadcast_address)})
    ports = sorted({p for r in policy.rules for ranges in (r.sport, r.dport) if ranges
                    for pr in ranges for p in (pr.lo, pr.hi, max(pr.lo - 1, 0),
                                               min(pr.hi + 1, 65535))})
    for i in range(120):
        frame = frames.random_frame(rng, addresses, ports)
        if i % 3 == 2:
            frame = frames.mutate(rng, frame)
        if len(frame) < frames.MIN_TEST_RUN_LEN:
            continue
        check(sandbox, policy, frame, HOOKS[i % 3])


def _scapy_fuzzed_frames(seed: int, count: int) -> list[bytes]:
    """Frames from scapy's fuzz(): every field not pinned here (lengths, IHL, flags, offsets,
    checksums, options, next headers, ports, types) drawn at random, so headers lie about
    themselves in ways no hand-made case does.  Seeded: the same frames in every run."""
    from scapy.all import (
        ICMP,
        IP,
        TCP,
        UDP,
        Dot1Q,
        Ether,
        ICMPv6EchoRequest,
        IPv6,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        Raw,
        fuzz,
    )

    random.seed(seed)
    stacks = [
        lambda: Ether() / fuzz(IP()) / fuzz(TCP()),
        lambda: Ether() / fuzz(IP()) / fuzz(UDP()) / Raw(b"x" * 8),
        lambda: Ether() / fuzz(IP(version=4)) / fuzz(ICMP()),
        lambda: Ether() / IP() / fuzz(TCP()),
        lambda: Ether() / Dot1Q() / fuzz(IP()) / fuzz(UDP()),
        lambda: Ether() / fuzz(IPv6()) / fuzz(TCP()),
        lambda: Ether() / IPv6() / fuzz(IPv6ExtHdrHopByHop()) / fuzz(UDP()),
        lambda: Ether() / IPv6() / fuzz(IPv6ExtHdrFragment()) / fuzz(TCP()),
        lambda: Ether() / IPv6() / fuzz(ICMPv6EchoRequest()),
        lambda: fuzz(Ether(type=0x0800)) / fuzz(IP()),
    ]
    out = []
    while len(out) < count:
        try:
            frame = bytes(stacks[len(out) % len(stacks)]())
        except Exception:  # noqa: S112 - scapy cannot build some drawn combinations
            continue
        if len(frame) >= frames.MIN_TEST_RUN_LEN:
            out.append(frame)
    return out


@settings(max_examples=examples(15), **SETTINGS)
@given(policies(max_rules=8))
def test_programs_agree_on_scapy_fuzzed_frames(sandbox, policy):
    sandbox.load(compile_policy(policy, LIMITS))
    seed = len(policy.rules) * 104729 + sum(len(r.name) for r in policy.rules)
    for i, frame in enumerate(_scapy_fuzzed_frames(seed, 200)):
        check(sandbox, policy, frame, HOOKS[i % 3], "scapy fuzz()")


def test_malformed_frames_are_dropped_under_their_reason(sandbox):
    from strategies import make_policy

    policy = make_policy({"action": "drop", "proto": "udp", "dport": 53},
                         {"action": "accept", "src": "10.0.0.0/8"}, ingress="drop")
    sandbox.load(compile_policy(policy, LIMITS))
    seen = 0
    reasons = set()
    for name, frame in frames.malformed_frames():
        if len(frame) < frames.MIN_TEST_RUN_LEN:
            continue
        for hook in HOOKS:
            check(sandbox, policy, frame, hook, name)
        want = frame_verdict(policy, frame, Direction.INGRESS)
        if want.why == "malformed":
            reasons.add(want.reason)
        seen += 1
    assert seen > 700
    assert reasons == {r for r in DropReason if r >= DropReason.TRUNC_L2}


def test_every_branch_of_the_extension_header_walk(sandbox):
    """Each header type, length class and next protocol, whole and cut: among them headers
    longer than the 512-byte window followed by a protocol without transport fields, which
    a window check that wraps around would let through classified."""
    from strategies import make_policy

    policy = make_policy({"action": "accept", "proto": [50, 51, 59, 47]},
                         {"action": "drop", "proto": "tcp", "dport": 80}, ingress="drop",
                         egress="drop")
    sandbox.load(compile_policy(policy, LIMITS))
    count = 0
    for i, (name, frame) in enumerate(frames.branch_frames()):
        check(sandbox, policy, frame, HOOKS[i % 3], name)
        count += 1
    assert count > 1500


def _l3_policy():
    from strategies import make_policy

    return make_policy({"action": "drop", "proto": "udp", "dport": 53},
                       {"action": "accept", "src": ["10.0.0.0/8", "2001:db8::/32"]},
                       {"action": "accept", "proto": "icmpv6", "icmp_type": [(6, 128)]},
                       ingress="drop")


def test_l3_variant_agrees_on_frames_without_a_link_layer_header(sandbox):
    """What tun, WireGuard or an IP tunnel delivers starts at the IP header: the XDP
    program's L3 variant must judge it as the reference does (the version nibble decides
    the family), never as Ethernet (which would pass it all as non-IP)."""
    policy = _l3_policy()
    sandbox.load(compile_policy(policy, LIMITS))
    rng = random.Random(4242)
    verdicts = set()
    for i in range(1500):
        frame = frames.l3(frames.random_frame(rng, ["10.1.2.3", "2001:db8::5"], [53]))
        if i % 3 == 2:
            frame = frames.mutate(rng, frame)
        if len(frame) < frames.MIN_TEST_RUN_LEN:
            continue
        check(sandbox, policy, frame, "xdp_l3", "l3")
        verdicts.add(frame_verdict(policy, frame, Direction.INGRESS, LINK_L3).why)
    for name, frame in [*frames.malformed_frames(), *frames.branch_frames()]:
        frame = frames.l3(frame)
        if len(frame) >= frames.MIN_TEST_RUN_LEN:
            check(sandbox, policy, frame, "xdp_l3", name)
    assert {"rule", "default", "malformed", "non-ip"} <= verdicts


STATEFUL = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
rules:
  - {name: ssh-in, action: accept, proto: tcp, dport: 22}
  - {name: no-50000, direction: egress, action: drop, proto: tcp, sport: 40001, dport: 50000}
"""


def _lockstep(sandbox) -> Lockstep:
    policy = load_policy_text(STATEFUL, "stateful.yaml")
    sandbox.load(compile_policy(policy, LIMITS))
    sandbox.clear_conntrack()
    return Lockstep(sandbox, policy)


@pytest.mark.parametrize("seed", range(24))
def test_connection_tracking_agrees_with_the_reference_tracker(sandbox, seed):
    """Conversations between the host and a few peers over few ports (flows meet again),
    TCP numbers aimed at the edges of what is tracked, ICMP errors about tracked tuples,
    some frames mutated: verdicts, counts and both tables equal the reference's after every
    packet (tests/lockstep.py)."""
    both = _lockstep(sandbox)
    rng = random.Random(seed)
    for i in range(125):
        direction, frame = frames.conntrack_step(rng, both.tracker)
        if rng.random() < 0.1:
            frame = frames.mutate(rng, frame)
        if len(frame) < frames.MIN_TEST_RUN_LEN:
            continue
        hook = "tc_egress" if direction == "egress" else rng.choice(["xdp", "tc_ingress"])
        if both.run(frame, hook, f"seed {seed} step {i}") is not None:
            RUNS["packets"] += 1
    RUNS["ct_whys"] = RUNS.get("ct_whys", Counter()) + Counter(both.whys)


def test_icmp_errors_about_tracked_flows_agree_with_the_reference(sandbox):
    """Every named ICMP error case (tests/frames.py icmp_error_frames: each type, each inner
    protocol, the wrong family or addressee, fragments, options, extension headers, cut at
    every length) against tracked flows, on both ingress programs."""
    both = _lockstep(sandbox)
    for direction, frame in frames.icmp_error_flows():
        both.run(frame, "tc_egress" if direction == "egress" else "xdp")
    for name, frame in frames.icmp_error_frames():
        if len(frame) < frames.MIN_TEST_RUN_LEN:
            continue
        for hook in ("xdp", "tc_ingress"):
            if both.run(frame, hook, name) is not None:
                RUNS["packets"] += 1
    # Every kind of outcome was met: related, malformed (outer headers cut), and errors
    # the rules judged (unrelated ones).
    assert both.whys["related"] > 100 and both.whys["malformed"] > 100, both.whys
    assert both.whys["default"] > 500, both.whys


def test_the_conversations_met_every_outcome():
    """Runs after the conversations: their frames were valid replies, related errors,
    refused replies (counted as invalid, judged by the rules), rule and default verdicts."""
    whys = RUNS.get("ct_whys", Counter())
    assert all(whys[w] > 50 for w in ("conntrack", "related", "rule", "default")), whys


def test_a_set_of_thousands_agrees_with_the_model(sandbox):
    """A named set of 4,000 prefixes (mixed lengths, both families, nested) as a rule's
    whole source, in the buckets of rules before and after it, as a destination beside
    ports, and a set of 300 as the classified field (an LPM class trie) of a rule with both
    addresses; packets at the edges of their prefixes, both directions, every hook."""
    import ipaddress

    from netctl.policy.sets import make_set, replace_sets

    rng = random.Random(1234)

    def draw(n: int) -> list[tuple[int, int, int]]:
        out = []
        for _ in range(n):
            if rng.random() < 0.8:
                plen = rng.choice((8, 12, 16, 20, 24, 24, 25, 30, 32))
                out.append((4, plen, rng.getrandbits(plen) << (32 - plen)))
            else:
                plen = rng.choice((16, 32, 48, 64, 127, 128))
                out.append((6, plen, rng.getrandbits(plen) << (128 - plen)))
        return out

    blk, mid = draw(4000), draw(300)
    policy = load_policy_text("""\
version: 1
sets:
  blk: {elements: []}
  mid: {elements: []}
rules:
  - {name: allow, action: accept, src: [10.0.0.0/8, "2001:db8::/32"]}
  - {name: both, action: accept, src: "@blk", dst: ["@mid", 198.51.100.0/24], proto: tcp}
  - {name: drop-blk, action: drop, src: "@blk"}
  - {name: to-blk-dns, action: drop, dst: "@blk", proto: udp, dport: 53}
  - {name: late, action: drop, src: [0.0.0.0/1, "8000::/1"], proto: icmp}
  - {name: out-blk, action: drop, direction: egress, dst: "@blk"}
""", "sets.yaml")
    policy = replace_sets(policy, {"blk": make_set("blk", blk), "mid": make_set("mid", mid)})
    plan = compile_policy(policy, LIMITS)
    assert any(plan.maps()[f"dst_v{f}"] for f in (4, 6))   # @mid is classified
    sandbox.load(plan)
    seen = Counter()

    def edges(family, plen, net):
        bits = 32 if family == 4 else 128
        last = net | ((1 << (bits - plen)) - 1)
        return (rng.choice((net, last, (net + last) // 2)),
                rng.choice((max(net - 1, 0), min(last + 1, (1 << bits) - 1))))

    for family, plen, net in rng.sample(blk, 300):
        make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        inside, outside = (make(a) for a in edges(family, plen, net))
        own_mid = [m for m in mid if m[0] == family]
        near, far = (make(a) for a in edges(*rng.choice(own_mid)))
        other = make(rng.choice((0x0A010203, 0xC0000207, 0xC6336405)) if family == 4
                     else rng.choice((0x20010DB8 << 96 | 1, 0x20010DB8_0005 << 80 | 1)))
        for src, dst in ((inside, other), (outside, other), (other, inside), (other, outside),
                         (inside, near), (inside, far)):
            for proto, sport, dport in ((6, 1234, 80), (17, 1234, 53), (1, None, None)):
                if family == 6 and proto == 1:
                    proto = 58
                icmp = (8, 0) if proto in (1, 58) else (None, None)
                packet = Packet(src, dst, proto, sport, dport, *icmp)
                frame = frame_for(packet)
                for direction in (Direction.INGRESS, Direction.EGRESS):
                    want = evaluate(policy, packet, direction)
                    seen[want.rule.name if want.rule else want.why] += 1
                    for hook in hooks_for(direction):
                        check(sandbox, policy, frame, hook, f"{packet} {direction.value}")
    assert all(seen[name] > 20 for name in ("allow", "both", "drop-blk", "to-blk-dns",
                                            "late", "out-blk", "default")), seen


def test_enough_packets_were_compared():
    """Runs last in this module (pytest keeps file order): the CI floor of 10,000."""
    assert RUNS["packets"] >= 10_000, RUNS


def test_the_flow_cache_never_outlives_the_policy_that_filled_it(sandbox):
    """A flow classified (and cached) under one policy is judged by the next policy as soon
    as it is live, in both directions: the cache is keyed by each apply's epoch."""
    from strategies import make_policy

    from netctl.policy.model import FlowCache

    frame = frames._eth(frames.ETH_P_IP) + frames._ipv4_raw(proto=17, tail=frames.UDP_HDR)
    drop = make_policy({"action": "drop", "proto": "udp", "dport": 53},
                       {"direction": "egress", "action": "drop", "proto": "udp"})
    # another rule index decides there, so a stale cached index would show
    accept = make_policy({"action": "drop", "proto": "tcp", "dport": 1},
                         {"action": "accept", "proto": "udp", "dport": 53},
                         {"direction": "egress", "action": "accept", "proto": "udp"})
    import dataclasses

    drop = dataclasses.replace(drop, flow_cache=FlowCache.ON)
    accept = dataclasses.replace(accept, flow_cache=FlowCache.ON)
    for policy in (drop, accept, drop, accept):
        sandbox.load(compile_policy(policy, LIMITS))
        for hook in HOOKS:
            for _ in range(3):
                check(sandbox, policy, frame, hook, "cached")
    stats = sandbox.dp.stats()
    from netctl import abi

    assert stats[abi.STAT_FLOW_HIT][0] >= 4 * 3 * 2   # most runs came from the cache
