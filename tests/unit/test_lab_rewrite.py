"""The lab applies a policy without its routes (it has no interfaces for them).  The copy it
writes must mean exactly what the file means, minus the routes: the loader reads scalars
its own way (`xdp: off` is the string off, `010` is ten, `1:2:3:4:5:6:7:8` an address), and
a YAML 1.1 round trip does not (false, eight, a sexagesimal number)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from test_load_fuzz import SMALL, mutated

from netctl.errors import PolicyError
from netctl.policy.load import load_policy, load_policy_text
from netctl.policy.model import Policy
from netctl.tools.lab import policy_text_without_routes

POLICIES = sorted((Path(__file__).resolve().parents[2] / "policies").glob("*.yaml"))
ROUTER = Path(__file__).resolve().parents[2] / "policies" / "router.yaml"


def meaning(policy: Policy) -> Policy:
    """The policy without what a rewrite may change: where things were, and its routes."""
    return dataclasses.replace(
        policy, source="", routes=(),
        rules=tuple(dataclasses.replace(r, line=0) for r in policy.rules),
        interfaces=tuple(dataclasses.replace(i, line=0) for i in policy.interfaces),
        tests=tuple(dataclasses.replace(t, line=0) for t in policy.tests))


def check_rewrite(text: str) -> str:
    original = load_policy_text(text, "original.yaml")
    rewritten = policy_text_without_routes(text)
    copy = load_policy_text(rewritten, "copy.yaml")
    assert copy.routes == () and "routes" not in rewritten
    assert meaning(copy) == meaning(original)
    return rewritten


def test_every_example_policy_survives_the_rewrite():
    for path in POLICIES:
        check_rewrite(path.read_text(encoding="utf-8"))


def test_router_with_xdp_off_and_yaml_1_1_lookalikes_survives_the_rewrite():
    text = ROUTER.read_text(encoding="utf-8")
    assert "routes:" in text
    text = text.replace("  - {name: lan0, tc: [ingress, egress]}",
                        "  - {name: lan0, xdp: off, tc: [ingress, egress]}")
    text = text.replace("  - {name: srv0, tc: [ingress, egress]}",
                        "  - {name: srv0, xdp: off, tc: off}")
    text = text.replace("    log: true\n", "    log: on\n", 1)
    text = text.replace("rules:\n", "allow_ndp: yes\nrules:\n"
                        "  - {name: '09', action: accept, proto: tcp, dport: [010, '31']}\n"
                        "  - {name: no, action: drop, dst: 1:2:3:4:5:6:7:8}\n", 1)
    policy = load_policy_text(text)
    assert [i.xdp.value for i in policy.interfaces] == ["off", "off"]
    assert policy.rules[0].name == "09" and policy.rules[1].name == "no"
    assert [(r.lo, r.hi) for r in policy.rules[0].dport] == [(10, 10), (31, 31)]
    rewritten = check_rewrite(text)
    assert "false" not in rewritten


def test_a_policy_without_routes_key_is_rewritten_unchanged_in_meaning():
    check_rewrite("version: 1\nrules: [{name: a, action: drop}]\n")


# Spellings the loader accepts that a YAML 1.1 reader reads as something else.
TEMPLATE = """\
version: 1
interfaces:
  - {{name: eth0, xdp: {xdp}, tc: {tc}}}
  - eth1
stateful: {stateful}
allow_ndp: {allow_ndp}
rules:
  - name: {name}
    action: accept
    proto: {proto}
    dport: [{port}, {port2}]
    src: {src}
    log: {log}
routes:
  - {{dst: 10.2.0.0/16, via: 10.1.0.2, dev: eth1}}
tests:
  - packet: {{src: 192.0.2.1, dst: 10.0.0.1, proto: tcp, dport: 22, fragment: {log}}}
    expect: {{rule: {name}}}
"""
BOOLS = ["true", "false", "yes", "no", "on", "off", "True", "OFF", '"yes"', "'off'"]
SPELLINGS = {
    "xdp": ["auto", "native", "generic", "off", '"off"', "'off'"],
    "tc": ["off", "[ingress]", "[ingress, egress]", '"off"', "[]", "egress"],
    "stateful": BOOLS, "allow_ndp": BOOLS, "log": BOOLS,
    "name": ["r1", "09", '"09"', "1:20", "1e3", "0x10", "1_000", ".inf", "no", "off", "y",
             "'~'", "'null'", "2001:db8::1"],
    "proto": ["tcp", "6", "'6'", "[tcp, udp]", "[06, 17]"],
    "port": ["22", "'22'", "010", "0022", '"8000-8100"', "8000-8100", "+22"],
    "port2": ["443", "'0443'", "10"],
    "src": ["10.0.0.0/8", '"10.0.0.0/8"', "1:2:3:4:5:6:7:8", "2001:db8::/32",
            '[10.0.0.0/8, "2001:db8::/32", 1:2:3:4:5:6:7:0/112]'],
}


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in SPELLINGS.items()}))
def test_yaml_1_1_lookalikes_survive_the_rewrite(spelling):
    text = TEMPLATE.format(**spelling)
    try:
        load_policy_text(text)
    except PolicyError as exc:   # the template's spellings are all valid: show which is not
        raise AssertionError(f"{spelling}: {exc}") from None
    check_rewrite(text)


@settings(max_examples=300, deadline=None)
@given(mutated([SMALL]))
def test_mutated_valid_policies_survive_the_rewrite(text):
    try:
        load_policy_text(text)
    except PolicyError:
        return   # most mutations are invalid; the lab rewrites only valid policies
    check_rewrite(text)


def test_the_example_with_routes_is_found():
    # The lab rewrites only policies with routes; keep one among the examples.
    assert any(load_policy(p).routes for p in POLICIES)
