"""`netctl lab run` (the README's `make demo`) on every example policy: each tests: packet
sent as real frames is counted where the reference model says, and nothing is left."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lab import NETCTL, REPO
from nsutil import namespaces, run

POLICIES = sorted((REPO / "policies").glob("*.yaml"))


def _left_behind(before: set[str], stdout: str) -> set[str]:
    """The lab's own namespaces (named in its first line) and any new nctl-lab namespace
    that still exist; other runs' namespaces on a shared machine are not the lab's."""
    named = set(re.findall(r"lab: namespaces (\S+) and ([^\s,]+)", stdout)[0]) if \
        "lab: namespaces" in stdout else set()
    now = namespaces()
    return (named & now) | {n for n in now - before if n.startswith("nctl-lab")}


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_lab_runs_every_example_policy_and_cleans_up(policy: Path):
    before = namespaces()
    result = run(NETCTL, "lab", "run", str(policy), "--count", "3", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all counted as expected" in result.stdout
    assert "FAIL" not in result.stdout and "Traceback" not in result.stderr
    assert not _left_behind(before, result.stdout)


ROUTED = [p for p in POLICIES if "\nroutes:" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("policy", ROUTED, ids=lambda p: p.name)
def test_lab_runs_a_policy_with_routes_and_xdp_off(policy: Path, tmp_path: Path):
    """The lab applies a copy without the routes; `xdp: off` must stay the string off in
    it (a YAML 1.1 round trip made it false, which the loader refuses)."""
    text = policy.read_text(encoding="utf-8")
    changed = text.replace("tc: [ingress, egress]}", "xdp: off, tc: [ingress, egress]}")
    assert "xdp: off" in changed and changed != text
    path = tmp_path / policy.name
    path.write_text(changed, encoding="utf-8")
    before = namespaces()
    result = run(NETCTL, "lab", "run", str(path), "--count", "3", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ingress tc, egress tc (xdp: off)" in result.stdout
    assert "all counted as expected" in result.stdout
    assert "FAIL" not in result.stdout and "Traceback" not in result.stderr
    assert not _left_behind(before, result.stdout)
