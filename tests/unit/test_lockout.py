"""The SSH lockout guard decides from the reference model, both directions of the session."""

from __future__ import annotations

from netctl.policy.load import load_policy_text
from netctl.policy.lockout import lockout, ssh_connection

SESSION = "198.51.100.7 51022 192.0.2.10 22"

DEFAULT_DROP = """
version: 1
defaults: {ingress: drop, egress: accept}
rules:
  - {name: web, action: accept, proto: tcp, dport: 443}
"""


def test_a_default_drop_without_an_ssh_rule_is_named():
    why = lockout(load_policy_text(DEFAULT_DROP, "p.yaml"), SESSION)
    assert why is not None and "the ingress default (drop)" in why
    assert "198.51.100.7 port 51022" in why and "--confirm" in why and "--force" in why


def test_the_rule_that_drops_the_session_is_named_with_its_line():
    text = DEFAULT_DROP.replace("defaults: {ingress: drop", "defaults: {ingress: accept") + \
        "  - {name: no-admins, action: drop, src: 198.51.100.0/24}\n"
    why = lockout(load_policy_text(text, "p.yaml"), SESSION)
    assert why is not None and "rule 'no-admins' (line 6)" in why


def test_replies_dropped_on_egress_count_too():
    text = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: quiet, direction: egress, action: drop, proto: tcp, sport: 22}
"""
    why = lockout(load_policy_text(text, "p.yaml"), SESSION)
    assert why is not None and "replies to" in why and "rule 'quiet'" in why


def test_a_policy_that_keeps_the_session_and_no_session_at_all():
    keeps = DEFAULT_DROP + "  - {name: ssh, action: accept, proto: tcp, dport: 22}\n"
    assert lockout(load_policy_text(keeps, "p.yaml"), SESSION) is None
    assert lockout(load_policy_text(DEFAULT_DROP, "p.yaml"), None) is None
    for junk in ("", "1.2.3.4 22", "a b c d", "10.0.0.1 0 10.0.0.2 22",
                 "10.0.0.1 5 2001:db8::1 22"):
        assert ssh_connection(junk) is None
    assert ssh_connection("fe80::1%eth0 5000 fe80::2%eth0 22") is not None
