"""Run a policy's `tests:` section.

Each test packet is judged by the reference model and by an interpreter of the compiled
map plan (the exact lookups the BPF programs make).  A test passes when the expectation
holds and both engines agree; a disagreement is a compiler bug and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .evaluate import Decision, evaluate
from .model import Policy, PolicyTest


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class

    test: PolicyTest
    decision: Decision
    passed: bool
    engines: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def got(self) -> str:
        d = self.decision
        by = f"rule {d.rule.name}" if d.rule is not None else ("ndp" if d.why == "ndp" else
                                                                "the default")
        return f"{d.verdict.value} ({by})"

    def as_dict(self) -> dict[str, object]:
        return {
            "line": self.test.line,
            "direction": self.test.direction.value,
            "expect": str(self.test.expect),
            "verdict": self.decision.verdict.value,
            "rule": self.decision.rule.name if self.decision.rule is not None else None,
            "why": self.decision.why,
            "passed": self.passed,
            "problems": self.problems,
        }


def expectation_met(test: PolicyTest, decision: Decision) -> bool:
    if test.expect.rule is not None:
        return decision.rule is not None and decision.rule.name == test.expect.rule
    return decision.verdict is test.expect.verdict


def run_policy_tests(policy: Policy) -> list[TestResult]:
    from .compile import compile_policy
    from .interp import interpret

    plan = compile_policy(policy) if policy.tests else None
    engines = ["reference model", "compiled maps"]
    results: list[TestResult] = []
    for test in policy.tests:
        decision = evaluate(policy, test.packet, test.direction)
        problems: list[str] = []
        passed = expectation_met(test, decision)
        compiled = interpret(plan, test.packet, test.direction)  # type: ignore[arg-type]  # tests: a plan
        compiled_rule = compiled.rule
        reference_rule = decision.rule.index if decision.rule is not None else None
        if (compiled.verdict, compiled_rule, compiled.why) != (
            decision.verdict, reference_rule, decision.why
        ):
            passed = False
            problems.append(
                f"compiled maps disagree with the reference model: {compiled.verdict.value} "
                f"(rule index {compiled_rule}, {compiled.why}); this is a netctl bug")
        results.append(TestResult(test, decision, passed, engines, problems))
    return results
