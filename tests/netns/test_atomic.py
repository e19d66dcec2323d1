"""A policy change is atomic under load: while trafgen floods the DUT, 50 applies alternate
two policies, and no packet is judged by a mix of them; with netctl's programs held by tcx
links, and by cls_bpf filters (NETCTL_ATTACH=legacy).

How it is observed: the flood matches exactly one rule in each policy (``hit-a`` in A,
``hit-b`` in B).  Each policy also has a rule named ``decoy`` after its hit, which a
half-written policy would let the flood reach (in A it catches UDP to port 9 once ``hit-a``
is not found, in B all UDP), and the defaults are counted too.  Counters of a rule name are
carried across policy changes, and default counters count across all of them, so after the
run ``decoy`` and the defaults must read zero while the hits read many.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from lab import REPO

sys.path.insert(0, str(REPO))
from bench.harness import NETCTL, flood_frame, sh, stop_group, topology  # noqa: E402
from bench.rulesets import FLOOD_DPORT, FLOOD_SRC  # noqa: E402

POLICY_A = f"""
version: 1
defaults: {{ingress: accept, egress: accept}}
rules:
  - {{name: other-a, action: accept, proto: tcp, dport: 22}}
  - {{name: hit-a, action: drop, src: {FLOOD_SRC}, proto: udp, dport: {FLOOD_DPORT}}}
  - {{name: decoy, action: accept, proto: udp, dport: {FLOOD_DPORT}}}
"""
POLICY_B = f"""
version: 1
defaults: {{ingress: drop, egress: accept}}
rules:
  - {{name: hit-b, action: accept, src: {FLOOD_SRC}/32, proto: udp, dport: 1-100}}
  - {{name: decoy, action: drop, proto: udp}}
  - {{name: other-b, action: drop, src: 192.0.2.0/24}}
"""
APPLIES = 50


@pytest.mark.parametrize("attach", ["auto", "legacy"])
def test_fifty_alternating_applies_under_load_judge_no_packet_by_a_mix(monkeypatch, attach):
    from netctl.datapath import attach as att

    if attach == "auto" and not att.tcx_offered():
        pytest.skip("this kernel has no tcx: auto is cls_bpf, tested as legacy")
    monkeypatch.setenv("NETCTL_ATTACH", attach)   # every netctl below inherits it
    tmp = Path(tempfile.mkdtemp())
    a, b = tmp / "a.yaml", tmp / "b.yaml"
    a.write_text(POLICY_A)
    b.write_text(POLICY_B)
    with topology("t") as topo:
        conf = tmp / "flood.trafgen"
        conf.write_text("{ " + ", ".join(f"0x{x:02x}" for x in flood_frame(topo.dut_mac))
                        + " }\n")
        # trafgen forks its workers: it runs in a session of its own, so that the whole
        # group can be stopped, whatever happens to the test.
        flood = subprocess.Popen(["ip", "netns", "exec", topo.gen, "trafgen", "--dev",
                                  topo.gen_if, "--conf", str(conf), "--cpus", "1",
                                  "--no-sock-mem", "--gap", "2us"], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            sh(*NETCTL, "apply", str(a), "--dev", topo.dut_if, ns=topo.dut)
            time.sleep(0.5)
            for i in range(APPLIES):
                sh(*NETCTL, "apply", str(b if i % 2 == 0 else a), "--dev", topo.dut_if,
                   ns=topo.dut)
            status = json.loads(sh(*NETCTL, "status", "-o", "json", ns=topo.dut).stdout)
            dev = next(i for i in status["interfaces"] if i["name"] == topo.dut_if)
        finally:
            stop_group(flood)
            sh(*NETCTL, "detach", "--all", ns=topo.dut, check=False)
    assert dev["attach"]["tc"] == ("cls_bpf" if attach == "legacy" else "tcx"), dev
    assert dev["live"], dev
    counts = {r["name"]: r["packets"] for r in status["rules"]}
    # The live policy is A (after 50 applies); "decoy" was in every generation, A's and B's.
    assert counts["hit-a"] > 10_000, counts
    assert counts["decoy"] == 0 and counts["other-a"] == 0, counts
    defaults = status["defaults"]["ingress"]
    assert defaults["accept"]["packets"] == 0 and defaults["drop"]["packets"] == 0, defaults
    parse_drops = [d for d in status["drops"] if d["code"] >= 3 and d["packets"]]
    assert not parse_drops, parse_drops
