"""Fuzzing the loader: whatever the text, `load_policy_text` returns a Policy or raises
PolicyError with at least one Problem on a line of the file (0 for the whole file, up to
one past the last line for "unexpected end of input"); never any other exception.

Inputs: random text (YAML-flavoured and arbitrary), and mutations of valid policies (lines
deleted, duplicated, swapped, re-indented; characters inserted; truncation at a random
offset; random YAML values substituted at random keys).  One seed is over 1000 lines, so
yamlsrc's one-line fast path is fuzzed too.

Loader bugs this fuzzer found (Mark comparison in later_pos, lone surrogates) are fixed and
pinned by the regression tests below and in test_load.py / test_yamlsrc.py.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from netctl.errors import PolicyError, Problem
from netctl.policy.load import load_policy_text
from netctl.policy.model import Policy

POLICIES = Path(__file__).resolve().parents[2] / "policies"

SMALL = """\
version: 1
interfaces:
  - name: eth0
    xdp: auto
    tc: [ingress, egress]
  - eth1
defaults: {ingress: drop, egress: accept}
stateful: true
allow_ndp: true
rules:
  - name: drop-bogons
    direction: ingress
    action: drop
    src: [192.0.2.0/24, 2001:db8::/32]
    dst: 10.0.0.0/8
    log: true
  - name: ssh
    action: accept
    proto: tcp
    sport: 1024-65535
    dport: [22, "8000-8100"]
    src:
      - 198.51.100.0/24
      - 2001:db8:1::/48
  - {name: ping, action: accept, proto: [icmp, icmpv6], icmp_type: echo-request}
  - name: out
    direction: egress
    action: drop
    proto: udp
    dport: 25
routes:
  - {dst: 10.2.0.0/16, via: 10.1.0.2, dev: eth1}
  - dst: 2001:db8:2::/48
    via: 2001:db8:1::2
    dev: eth1
tests:
  - packet: {src: 192.0.2.7, dst: 10.0.0.1, proto: tcp, dport: 22}
    expect: drop
  - packet: {src: 198.51.100.7, dst: 203.0.113.1, proto: tcp, sport: 40000, dport: 22}
    expect: {rule: ssh}
  - packet:
      src: 2001:db8:5::1
      dst: 2001:db8::2
      proto: icmpv6
      icmp_type: echo-request
      icmp_code: 0
    direction: ingress
    expect: accept
  - packet: {src: 10.0.0.1, dst: 10.0.0.2, proto: udp, dport: 25, fragment: false}
    direction: egress
    expect: {rule: out}
"""


def _big_flow_seed() -> str:
    """Over 1000 lines of one-line flow rules: the yamlsrc fast path handles these."""
    rules = [f'  - {{name: r{i}, action: {"drop" if i % 2 else "accept"}, '
             f'src: 10.{i // 256}.{i % 256}.0/24, proto: tcp, dport: [{i}, "8000-8100"]}}'
             for i in range(1010)]
    return ("version: 1\ndefaults: {ingress: drop}\nrules:\n" + "\n".join(rules) +
            "\n  - name: last\n    action: accept\n"
            "tests:\n  - packet: {src: 10.0.1.9, dst: 10.9.9.9, proto: tcp, dport: 1}\n"
            "    expect: {rule: r1}\n")


SEEDS = [SMALL, (POLICIES / "web-server.yaml").read_text(encoding="utf-8"),
         (POLICIES / "dual-stack.yaml").read_text(encoding="utf-8")]
BIG_SEED = _big_flow_seed()


# -- the property ---------------------------------------------------------------------------

def _line_count(text: str) -> int:
    # libyaml breaks lines at \n, \r, \r\n, \x85, \u2028 and \u2029; str.splitlines breaks
    # at all of those and a few more, so it is the generous count.
    return max(len(text.splitlines()), text.count("\n") + 1)


def check_property(text: str) -> None:
    try:
        policy = load_policy_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.problems, "PolicyError without problems"
        limit = _line_count(text) + 1
        for p in exc.problems:
            assert isinstance(p, Problem)
            assert p.source == "fuzz.yaml"
            assert isinstance(p.message, str) and p.message
            assert isinstance(p.line, int) and 0 <= p.line <= limit, (p, limit)
            assert p.column is None or (isinstance(p.column, int) and p.column >= 1), p
        return
    assert isinstance(policy, Policy)
    names = [r.name for r in policy.rules]
    assert len(set(names)) == len(names)
    assert [r.index for r in policy.rules] == list(range(len(policy.rules)))
    for rule in policy.rules:
        assert rule.families and rule.families <= {4, 6}
        for field in (rule.src, rule.dst, rule.proto, rule.sport, rule.dport, rule.icmp_type):
            assert field is None or (isinstance(field, tuple) and field)
        if rule.sport or rule.dport:
            assert rule.proto and set(rule.proto) <= {6, 17}
    for test in policy.tests:
        if test.expect.rule is not None:
            assert test.expect.rule in names


# Example counts keep this file around 10-15 s on the 2-core CI machines (budget: 30 s).
# `make fuzz` sets NETCTL_FUZZ_EXAMPLES=100000 for the long run: every test takes that many.
LONG_RUN = int(os.environ.get("NETCTL_FUZZ_EXAMPLES", "0"))


def examples(ci_count: int) -> int:
    return LONG_RUN or ci_count


FUZZ = settings(max_examples=examples(1000), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- random text ------------------------------------------------------------------------------

_TOKENS = (list("abcdefxyz0123456789 \n\t:-[]{},#&*!|>'\"%@`?~./\\") +
           ["version", "rules", "name", "action", "src", "dst", "proto", "dport", "icmp_type",
            "interfaces", "tests", "expect", "packet", "routes", "via", "dev", "1", ": ",
            "\n  - ", "\n    ", "drop", "accept", "10.0.0.0/8", "2001:db8::", "icmp", "tcp",
            "---\n", "\r\n", "\r", "\x85", "\u2028", "\ufeff", "\x00", "\x07", "\u00e9"])
_YAMLISH = st.lists(st.sampled_from(_TOKENS), max_size=120).map("".join)


@FUZZ
@given(st.text(max_size=400))
@example("")
@example("\x00")
@example("version: 1\nrules:\n  - \x07\n")
@example("a: \x85b\n")
@example("version: 1\n\u2028rules: [\n")
@example("---\n---\n")
def test_random_text(text):
    check_property(text)


@FUZZ
@given(_YAMLISH)
@example("version: 1\nrules: [{name: a, action: drop, src: *x}]\n")
@example("version: 1\nrules:\n  - &r {name: a, action: drop}\n  - *r\n")
@example("version: 1\nrules:\n  - {name: a, action: drop, <<: {log: true}}\n")
def test_yamlish_text(text):
    check_property(text)


# -- mutations of valid policies ----------------------------------------------------------------

_VALUES = st.one_of(
    st.integers(-70000, 70000).map(str),
    st.sampled_from(["~", "null", "", "off", "on", "no", "yes", "true", "[]", "{}", "[a, b]",
                     "{x: 1}", "{rule: ssh}", "{rule: nope}", "0", "-1", "65536", "256",
                     "1-2-3", "9-1", "0.0.0.0/0", "::/0", "10.0.0.1/8", "2001:db8::1/32",
                     "fe80::1%eth0", "10.0.0.256", "icmp", "icmpv6", "tcp", "udp", "gre",
                     "[icmp, icmpv6]", "[tcp, icmp]", "echo-request", "packet-too-big",
                     "neighbor-solicitation", "egress", "ingress", "accept", "drop", "native",
                     "eth0", "a/b", "'x y'", '"22"', "'8000-8100'", "*alias", "&anchor x",
                     "!!str 5", "|\n  block", ">-", "[[1]]", "{a: {b: c}}", '"\\u00e9"',
                     "x" * 80, "2001:db8::", "10.1.0.2", "2001:db8::2", "192.0.2.7",
                     "fe80::1", "203.0.113.0/24", "2001:db8:1::/48",
                     "[10.0.0.0/8, 2001:db8::/32]", "1.5", "0x10"]),
    st.text(max_size=12).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"')
                              .replace("\n", "\\n") + '"'),
)


_KEY = re.compile(r"[A-Za-z_]+: ")
_VALUE_END = re.compile(r"[^,}\n]*")
_ADDRESS = re.compile(r"\b(?:\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]*:[0-9a-f]*)(?:/\d+)?",
                      re.IGNORECASE)
_V4 = ["10.1.0.2", "192.0.2.0/24", "0.0.0.0/0", "198.51.100.7"]
_V6 = ["2001:db8::2", "2001:db8:1::/48", "::/0", "fe80::1"]


@st.composite
def mutated(draw, seeds=None):
    text = draw(st.sampled_from(seeds or SEEDS))
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "truncate",
                                   "value", "value", "family", "indent"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            at = draw(st.integers(0, len(lines[i])))
            junk = draw(st.text(min_size=1, max_size=5) |
                        st.sampled_from([":", "- ", "#", "[", "}", ",", "&a ", "*a", "\t", "'",
                                         '"', "? ", "\n", " ", "  "]))
            lines[i] = lines[i][:at] + junk + lines[i][at:]
        elif op == "truncate":
            joined = "".join(lines)
            joined = joined[:draw(st.integers(0, len(joined)))]
            lines = joined.splitlines(keepends=True)
        elif op == "value":  # a random key's value, block or flow style, replaced
            line = lines[i]
            keys = list(_KEY.finditer(line))
            if not keys:
                continue
            start = draw(st.sampled_from(keys)).end()
            rest = line[start:]
            close = rest.find("]") if rest.startswith("[") else -1
            end = start + (close + 1 if close >= 0 else len(_VALUE_END.match(rest).group()))
            lines[i] = line[:start] + draw(_VALUES) + line[end:]
        elif op == "family":  # an address or prefix swapped for one of the other family
            found = list(_ADDRESS.finditer(lines[i]))
            if not found:
                continue
            m = draw(st.sampled_from(found))
            other = draw(st.sampled_from(_V6 if "." in m.group() else _V4))
            lines[i] = lines[i][:m.start()] + other + lines[i][m.end():]
        elif op == "indent":
            shift = draw(st.sampled_from([-2, -1, 1, 2, 4]))
            stripped = lines[i].lstrip(" ")
            indent = max(0, len(lines[i]) - len(stripped) + shift)
            lines[i] = " " * indent + stripped
    return "".join(lines)


def test_seeds_are_valid():
    for seed in [*SEEDS, BIG_SEED]:
        assert isinstance(load_policy_text(seed), Policy)


@settings(FUZZ, max_examples=examples(3000))
@given(mutated())
def test_mutated_policies(text):
    check_property(text)


@settings(FUZZ, max_examples=examples(250))
@given(mutated([BIG_SEED]))
def test_mutated_big_policy_on_the_fast_path(text):
    check_property(text)


@settings(FUZZ, max_examples=examples(300))
@given(st.sampled_from(SEEDS), st.data())
def test_truncation_at_every_kind_of_offset(seed, data):
    cut = data.draw(st.integers(0, len(seed)))
    check_property(seed[:cut])


# -- crashes the fuzzer found, pinned ----------------------------------------------------------

def test_found_route_family_mismatch():
    text = SMALL.replace("via: 10.1.0.2", "via: 2001:db8::2")
    with pytest.raises(PolicyError):
        load_policy_text(text)


def test_found_test_packet_family_mismatch():
    text = SMALL.replace("dst: 10.0.0.2, proto: udp", "dst: 2001:db8::2, proto: udp")
    with pytest.raises(PolicyError):
        load_policy_text(text)


# -- coverage-guided (atheris) ----------------------------------------------------------------


def test_atheris_harness_runs_clean_from_the_example_policies(tmp_path):
    """A short run of `make fuzz-atheris` (which runs 100,000): the harness works and the
    loader survives what libFuzzer makes of the examples."""
    if importlib.util.find_spec("atheris") is None:
        assert platform.machine() != "x86_64", "make setup installs atheris on x86_64"
        pytest.skip(f"atheris has no wheel for {platform.machine()}")
    root = Path(__file__).resolve().parents[2]
    for policy in (root / "policies").glob("*.yaml"):
        shutil.copy(policy, tmp_path)
    run = subprocess.run([sys.executable, str(root / "tests/fuzz/atheris_loader.py"),
                          "-runs=2000", "-max_len=4096", "-seed=1", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 2000 runs" in run.stderr
