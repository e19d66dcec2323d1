"""The compiled plan, run by the datapath-faithful interpreter, decides every packet exactly
as the reference evaluator does: same verdict, same rule, same reason."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from strategies import policy_and_packets

from netctl.policy.compile import compile_policy
from netctl.policy.evaluate import evaluate
from netctl.policy.interp import interpret
from netctl.policy.plan import Limits

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])


def check(policy, probes, limits=None, direct="auto"):
    plan = compile_policy(policy, limits or Limits(), direct)
    for packet, direction in probes:
        want = evaluate(policy, packet, direction)
        got = interpret(plan, packet, direction)
        context = f"\npacket {packet}\ndirection {direction.value}\nplan {plan.summary()}"
        assert got.verdict == want.verdict, context
        assert got.why == want.why, context
        assert got.rule == (want.rule.index if want.rule else None), context
        assert got.name == (want.rule.name if want.rule else None), context


@settings(max_examples=2000, **SETTINGS)
@given(policy_and_packets(max_rules=8, n_packets=12))
def test_plan_agrees_with_evaluator(case):
    check(*case)


@settings(max_examples=1000, **SETTINGS)
@given(policy_and_packets(max_rules=8, n_packets=12))
def test_plan_agrees_with_evaluator_when_every_dport_slot_is_keyed_by_port(case):
    check(*case, direct="port")


@settings(max_examples=300, **SETTINGS)
@given(policy_and_packets(max_rules=10, n_packets=12))
def test_plan_agrees_when_merged_shapes_are_keyed_by_port(case):
    policy, probes = case
    check(policy, probes, limits=Limits(shapes=fewest_slots(policy)), direct="port")


def fewest_slots(policy) -> int:
    """The fewest shape slots the policy can be compiled into: one per kind of L4 fields
    (none, sport, dport, both, ICMP type).  Compiling into that many merges every other
    shape difference away, widening src, dst and proto as far as they go."""
    kinds = {(r.sport is not None, r.dport is not None, r.has_icmp)
             for r in policy.rules}
    return max(1, len(kinds))


@settings(max_examples=400, **SETTINGS)
@given(policy_and_packets(max_rules=10, n_packets=12))
def test_plan_agrees_with_evaluator_when_shapes_are_merged(case):
    policy, probes = case
    check(policy, probes, limits=Limits(shapes=fewest_slots(policy)))
