"""The example policies in policies/: each loads, each has an interfaces section, defaults
and a `tests:` section of 6+ cases covering accept, drop and {rule: NAME}, and every one of
its tests passes under the reference evaluator.  A flipped expectation must be caught, and
the generated blocklist must be exactly what its generator prints."""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from pathlib import Path

import pytest

from netctl.policy.evaluate import Decision, evaluate
from netctl.policy.load import load_policy, load_policy_text
from netctl.policy.model import Action, Policy, PolicyTest
from netctl.policy.yamlsrc import compose

POLICIES = Path(__file__).resolve().parents[2] / "policies"
FILES = sorted(POLICIES.glob("*.yaml"))
REQUIRED = ("web-server.yaml", "blocklist.yaml", "dual-stack.yaml")


def expectation_met(test: PolicyTest, decision: Decision) -> bool:
    if test.expect.rule is not None:
        return decision.rule is not None and decision.rule.name == test.expect.rule
    return decision.verdict is test.expect.verdict


def failures(policy: Policy) -> list[tuple[PolicyTest, Decision]]:
    """The policy's tests whose expectation the reference evaluator does not meet."""
    found = []
    for test in policy.tests:
        decision = evaluate(policy, test.packet, test.direction)
        if not expectation_met(test, decision):
            found.append((test, decision))
    return found


def describe(failed: list[tuple[PolicyTest, Decision]]) -> str:
    return "\n".join(
        f"line {t.line}: expected {t.expect}, got {d.verdict.value} "
        f"({'rule ' + d.rule.name if d.rule else d.why})" for t, d in failed)


@pytest.fixture(scope="module")
def loaded() -> dict[str, Policy]:
    return {path.name: load_policy(path) for path in FILES}


def test_the_example_policies_exist():
    names = {path.name for path in FILES}
    assert set(REQUIRED) <= names, f"missing: {set(REQUIRED) - names}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_policy_loads(path, loaded):
    policy = loaded[path.name]
    assert policy.source == str(path)
    assert policy.rules
    assert policy.interfaces, "every example names its interfaces"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_policy_has_interfaces_and_defaults_sections(path):
    root, problems = compose(path.read_text(encoding="utf-8"))
    assert problems == []
    assert "interfaces" in root
    assert "defaults" in root
    assert set(root["defaults"]) == {"ingress", "egress"}, "spell out both defaults"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_policy_tests_cover_accept_drop_and_rule(path, loaded):
    tests = loaded[path.name].tests
    assert len(tests) >= 6
    kinds = {t.expect.verdict for t in tests if t.expect.verdict is not None}
    assert kinds == {Action.ACCEPT, Action.DROP}
    assert any(t.expect.rule is not None for t in tests)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_policy_test_passes(path, loaded):
    policy = loaded[path.name]
    failed = failures(policy)
    assert not failed, describe(failed)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_rule_expectations_see_the_rule_decide(path, loaded):
    """A test naming a rule must be decided by that rule, not by the default or NDP."""
    policy = loaded[path.name]
    for test in policy.tests:
        if test.expect.rule is not None:
            decision = evaluate(policy, test.packet, test.direction)
            assert decision.why == "rule"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_rule_is_exercised_by_a_test(path, loaded):
    """Each rule decides at least one of the policy's tests (a rule nothing reaches is a
    sign the example is wrong)."""
    policy = loaded[path.name]
    deciding = {evaluate(policy, t.packet, t.direction).rule for t in policy.tests}
    unused = [r.name for r in policy.rules if r not in deciding]
    assert not unused, f"rules no test reaches: {unused}"


# -- a wrong expectation is caught ------------------------------------------------------------

_VERDICT = re.compile(r"^(\s*(?:-\s+)?expect:\s*)(accept|drop)\b", re.MULTILINE)
_RULE = re.compile(r"^(\s*(?:-\s+)?expect:\s*\{\s*rule:\s*)([^\s},]+)", re.MULTILINE)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_flipped_verdict_is_detected(path):
    text = path.read_text(encoding="utf-8")
    matches = list(_VERDICT.finditer(text))
    assert matches
    for m in (matches[0], matches[-1]):
        flipped = "drop" if m.group(2) == "accept" else "accept"
        bad = text[:m.start(2)] + flipped + text[m.end(2):]
        policy = load_policy_text(bad, str(path))
        failed = failures(policy)
        assert len(failed) == 1, describe(failed)
        test, decision = failed[0]
        assert test.expect.verdict.value == flipped
        assert decision.verdict.value == m.group(2)
        # the failing test is the one whose expect line was changed
        assert test.line < _line_of(text, m.start()) <= test.line + 3


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_wrong_rule_expectation_is_detected(path, loaded):
    text = path.read_text(encoding="utf-8")
    names = [r.name for r in loaded[path.name].rules]
    m = next(_RULE.finditer(text))
    other = next(n for n in names if n != m.group(2))
    bad = text[:m.start(2)] + other + text[m.end(2):]
    failed = failures(load_policy_text(bad, str(path)))
    assert len(failed) == 1, describe(failed)
    assert failed[0][0].expect.rule == other
    assert failed[0][1].rule.name == m.group(2)


def test_an_expectation_naming_a_missing_rule_does_not_load():
    text = (POLICIES / "web-server.yaml").read_text(encoding="utf-8")
    bad = text.replace("expect: {rule: accept-web}", "expect: {rule: accept-wbe}", 1)
    assert bad != text
    from netctl.errors import PolicyError
    with pytest.raises(PolicyError) as info:
        load_policy_text(bad)
    assert ["accept-wbe" in p.message for p in info.value.problems] == [True]


# -- specifics of each example -----------------------------------------------------------------

def test_web_server_shape(loaded):
    policy = loaded["web-server.yaml"]
    assert policy.default_ingress is Action.DROP
    bogons = policy.rule("drop-bogons")
    assert bogons.log and bogons.action is Action.DROP and bogons.index == 0
    assert {n.version for n in bogons.src} == {4, 6}
    ssh = policy.rule("accept-ssh-admins")
    assert ssh.dport[0].lo == 22 and ssh.src is not None
    assert policy.rule("accept-ping").icmp_type == ((4, 8), (6, 128))


_DOC = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                          "2001:db8::/32", "10.0.0.0/8")]


def test_web_server_hosts_use_documentation_addresses(loaded):
    """Test packets to and from the server use documentation prefixes (or RFC 1918 10/8,
    link-local for neighbour discovery)."""
    extra = [ipaddress.ip_network("fe80::/10")]
    for test in loaded["web-server.yaml"].tests:
        for address in (test.packet.src, test.packet.dst):
            assert any(address in n for n in _DOC + extra if n.version == address.version), (
                f"line {test.line}: {address}")


def test_dual_stack_shape(loaded):
    policy = loaded["dual-stack.yaml"]
    assert policy.allow_ndp is True
    assert any(r.direction.value == "egress" for r in policy.rules)
    mixed = [r for r in policy.rules if r.src and len({n.version for n in r.src}) == 2]
    assert mixed, "shows a mixed-family address list"
    assert {f for r in policy.rules if r.icmp_type for f, _ in r.icmp_type} == {4, 6}
    assert any(r.families == frozenset({6}) for r in policy.rules)
    assert {i.name for i in policy.interfaces} >= {"eth0"}


def test_dual_stack_ndp_is_cut_without_allow_ndp():
    """The NDP tests of dual-stack pass only because of allow_ndp: setting it false makes
    them fail, which is what the comment in the file warns about."""
    text = (POLICIES / "dual-stack.yaml").read_text(encoding="utf-8")
    bad = text.replace("allow_ndp: true", "allow_ndp: false", 1)
    assert bad != text
    failed = failures(load_policy_text(bad))
    assert failed
    assert all(t.packet.proto == 58 and 133 <= t.packet.icmp_type <= 137 for t, _ in failed)


# -- the generated blocklist ------------------------------------------------------------------

def _generator():
    spec = importlib.util.spec_from_file_location("gen_blocklist",
                                                  POLICIES / "gen_blocklist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blocklist_is_what_the_generator_prints():
    gen = _generator()
    text = gen.generate()
    assert text == gen.generate(), "the generator is not deterministic"
    committed = (POLICIES / "blocklist.yaml").read_text(encoding="utf-8")
    assert committed == text, ("policies/blocklist.yaml is out of date: run "
                               "python3 policies/gen_blocklist.py > policies/blocklist.yaml")
    assert gen.main(["--check"]) == 0
    assert committed.startswith("# GENERATED FILE")


_SAFE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "100.64.0.0/10", "198.18.0.0/15",
                                           "2001:db8::/32")]


def test_blocklist_size_and_ranges(loaded):
    policy = loaded["blocklist.yaml"]
    blocked = [n for r in policy.rules if r.action is Action.DROP for n in (r.src or r.dst)]
    assert len(blocked) >= 2000
    assert {n.version for n in blocked} == {4, 6}
    assert len({n.prefixlen for n in blocked if n.version == 4}) >= 8
    assert len({n.prefixlen for n in blocked if n.version == 6}) >= 5
    for n in blocked:
        assert any(n.subnet_of(s) for s in _SAFE if s.version == n.version), n
    assert len(set(blocked)) == len(blocked)
    last = policy.rules[-2:]
    assert [r.action for r in last] == [Action.ACCEPT, Action.ACCEPT]
    assert {r.src[0].prefixlen for r in last} == {0}
