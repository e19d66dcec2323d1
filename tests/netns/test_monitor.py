"""`netctl monitor` shows policy drops as they happen: rule name, 5-tuple, interface and
hook, from the datapath's ring buffer; filters and --count/--timeout end it cleanly."""

from __future__ import annotations

import json
import subprocess

from lab import DUT4, GEN4, NETCTL, finish

POLICY = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: no-5555, action: drop, proto: udp, dport: 5555}
  - {name: watched, action: accept, proto: udp, dport: 6000, log: true}
"""


def _monitor(the_lab, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", the_lab.dut, NETCTL, "monitor", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()   # the sources line: the monitor is ready
    assert first, proc.stderr.read()
    return proc


def test_policy_drop_and_logged_match_appear_with_rule_and_flow(the_lab):
    the_lab.apply(POLICY)
    proc = _monitor(the_lab, "--type", "policy", "-o", "json", "--count", "3",
                    "--timeout", "20")
    assert the_lab.udp(2, dport=5555) == 0
    assert the_lab.udp(1, dport=6000) == 1
    out, err = finish(proc, 30)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 3, out
    drops = [e for e in events if e["verdict"] == "drop"]
    assert len(drops) == 2
    for e in drops:
        assert e["rule"] == "no-5555" and e["reason"] == "policy_rule"
        assert (e["src"], e["dst"], e["proto"], e["dport"]) == (GEN4, DUT4, 17, 5555)
        assert e["dev"] == the_lab.dut_if and e["hook"] == "tc" and e["direction"] == "ingress"
    logged = [e for e in events if e["verdict"] == "accept"]
    assert logged and logged[0]["rule"] == "watched" and logged[0]["dport"] == 6000
    assert "policy_lost 0" in err and "3 events shown" in err


def test_text_output_filters_and_sampling_counts(the_lab):
    the_lab.apply(POLICY.replace("rules:", "log_sample: 1000000\nrules:"))
    proc = _monitor(the_lab, "--type", "policy", "--timeout", "3", "--port", "5555")
    assert the_lab.udp(20, dport=5555) == 0
    out, err = finish(proc, 30)
    assert proc.returncode == 0
    lines = out.splitlines()
    assert lines[0].startswith("TIME") and len(lines) <= 2   # 1 in a million got through
    status = the_lab.status()
    assert status["events"]["sampled_out"] >= 19 and status["events"]["sample"] == 1000000
    assert "sampled_out" in err


def test_monitor_without_a_datapath_says_so_and_ends(the_lab):
    result = subprocess.run(["ip", "netns", "exec", the_lab.dut, NETCTL, "monitor", "--type",
                             "policy", "--timeout", "0.5"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    assert "no netctl datapath" in result.stdout
