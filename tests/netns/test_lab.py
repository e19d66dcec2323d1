"""`netctl lab run` (the README's `make demo`) on every example policy: each tests: packet
sent as real frames is counted where the reference model says, and nothing is left."""

from __future__ import annotations

from pathlib import Path

import pytest
from lab import NETCTL, REPO
from nsutil import namespaces, run

POLICIES = sorted((REPO / "policies").glob("*.yaml"))


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_lab_runs_every_example_policy_and_cleans_up(policy: Path):
    before = namespaces()
    result = run(NETCTL, "lab", "run", str(policy), "--count", "3", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all counted as expected" in result.stdout
    assert "FAIL" not in result.stdout and "Traceback" not in result.stderr
    assert namespaces() == before
