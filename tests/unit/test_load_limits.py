"""Runaway policy files are refused with a clear message before they cost minutes and
gigabytes: a million rules, a file beyond the size limit, one rule more than the datapath
holds."""

from __future__ import annotations

import pytest

from netctl.errors import PolicyError
from netctl.policy import load
from netctl.policy.load import MAX_RULES, load_policy


def test_a_million_rules_are_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "million.yaml"
    with open(path, "w") as f:
        f.write("version: 1\nrules:\n")
        for i in range(1_000_000):
            f.write(f"  - {{name: r{i}, action: drop, src: 10.{i >> 16 & 255}.{i >> 8 & 255}."
                    f"{i & 255}}}\n")
    # Parsing must not even start.
    monkeypatch.setattr(load, "load_policy_text", lambda *a: pytest.fail("parsed"))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    (problem,) = info.value.problems
    assert "about 1,000,000 rules" in problem.message and f"{MAX_RULES:,}" in problem.message


def test_files_beyond_the_size_limit_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(load, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text("version: 1\n" + "# padding\n" * 200)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert "limited to" in str(info.value)


def test_one_rule_more_than_the_datapath_holds_is_refused_at_rules(tmp_path, monkeypatch):
    monkeypatch.setattr(load, "MAX_RULES", 50)
    text = "version: 1\nrules: [" + ", ".join(
        f"{{name: r{i}, action: drop}}" for i in range(51)) + "]\n"
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    (problem,) = info.value.problems
    assert problem.line == 2 and "51 rules" in problem.message
