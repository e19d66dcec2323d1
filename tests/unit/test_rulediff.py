"""The rule-level diff of `apply --dry-run` and `netctl diff`: by name, field by field, and
the moves that change which rule matches first."""

from __future__ import annotations

import json
import subprocess
import sys

from netctl.policy.load import load_policy_text
from netctl.policy.rulediff import rule_diff

OLD = """
version: 1
defaults: {ingress: drop, egress: accept}
rules:
  - {name: ssh, action: accept, proto: tcp, dport: 22}
  - {name: web, action: accept, proto: tcp, dport: [80, 443]}
  - {name: dns, action: accept, proto: udp, dport: 53}
  - {name: block, action: drop, src: 203.0.113.0/24}
  - {name: out, direction: egress, action: drop, proto: udp, dport: 9}
"""

NEW = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: block, action: drop, src: 203.0.113.0/24}
  - {name: ssh, action: accept, proto: tcp, dport: 22, src: 10.0.0.0/8}
  - {name: web, action: accept, proto: tcp, dport: [80, 443]}
  - {name: ntp, action: accept, proto: udp, dport: 123}
  - {name: out, direction: egress, action: drop, proto: udp, dport: 9}
"""


def test_added_removed_changed_moved_and_settings():
    d = rule_diff(load_policy_text(OLD), load_policy_text(NEW))
    assert d.added == ["ntp"] and d.removed == ["dns"]
    assert [(c.name, c.fields) for c in d.changed] == [("ssh", {"src": ("any", "10.0.0.0/8")})]
    assert d.moved == ["block"]          # ssh and web kept their order; block went first
    assert d.settings == {"default_ingress": ("drop", "accept")}
    lines = d.lines()
    assert "  + rule ntp" in lines and "  - rule dns" in lines
    assert "  ~ rule ssh: src: any -> 10.0.0.0/8" in lines
    assert "  ~ default_ingress: drop -> accept" in lines


def test_the_same_policy_differs_in_nothing_even_reformatted():
    again = OLD.replace("{name: ssh, action: accept, proto: tcp, dport: 22}",
                        "{name: ssh,   dport: 22, proto: tcp, action: accept}  # comment")
    assert not rule_diff(load_policy_text(OLD), load_policy_text(again))


def test_port_lists_and_ranges_are_shown_as_written():
    new = OLD.replace("dport: [80, 443]", "dport: [80, 8000-8080]")
    (change,) = rule_diff(load_policy_text(OLD), load_policy_text(new)).changed
    assert change.fields == {"dport": ("[80, 443]", "[80, 8000-8080]")}


def test_netctl_diff_needs_no_privilege_and_prints_json(tmp_path):
    (tmp_path / "a.yaml").write_text(OLD)
    (tmp_path / "b.yaml").write_text(NEW)
    out = subprocess.run([sys.executable, "-m", "netctl", "diff", str(tmp_path / "a.yaml"),
                          str(tmp_path / "b.yaml"), "-o", "json"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1, out.stderr          # like diff(1): 1 when they differ
    report = json.loads(out.stdout)
    assert report["added"] == ["ntp"] and report["removed"] == ["dns"]
    same = subprocess.run([sys.executable, "-m", "netctl", "diff", str(tmp_path / "a.yaml"),
                           str(tmp_path / "a.yaml")], capture_output=True, text=True,
                          check=False)
    assert same.returncode == 0 and "no rule changes" in same.stdout
    bad = subprocess.run([sys.executable, "-m", "netctl", "diff", str(tmp_path / "a.yaml"),
                          str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode not in (0, 1) and "Traceback" not in bad.stderr
    assert "missing.yaml" in bad.stderr
