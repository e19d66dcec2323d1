"""The benchmark harness works end to end (`python -m bench.run --smoke`): every system
under test is set up, flooded and counted under both rule mixes and both floods and with
one rule on a named set, and the report has every part.  Benchmarks are not tests: no
figure is asserted, only that each was measured."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from lab import REPO
from nsutil import namespaces

SYSTEMS = {"netctl (default hook)", "netctl (XDP)", "nftables interval set",
           "nftables linear chain", "iptables (raw PREROUTING)", "bare tc drop",
           "bare xdp drop", "no filter (closed port)", "generator ceiling (DUT link down)"}
# Only under the fixed flood: xdp-filter matches whole addresses (the random flood's last
# rule is a prefix), and the flow cache's effect is shown on the flow it caches.
SET_SYSTEMS = {"netctl (default hook)", "netctl (XDP)", "nftables interval set", "bare tc drop",
               "bare xdp drop"}
FIXED_ONLY = {"xdp-filter (addresses)", "netctl (default hook, flow cache off)"}


def test_bench_smoke_run_measures_every_system(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", "--smoke", "--out",
                             str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "latest-smoke.json").read_text())
    rows = report["throughput"]
    failed = [r for r in rows if "error" in r]
    assert not failed, failed
    assert all(r["pps"] > 0 for r in rows), [r for r in rows if r["pps"] <= 0]
    # Every system under every mix, flood and rule count of the run: a translation that a
    # system refuses leaves a hole here, one that lets another rule take the flood a zero
    # above (each rate is the last rule's counter, or the flood's drops).
    cases = {(c["mix"], c["flood"]) for c in report["matrix"]}
    assert cases == {("bench", "fixed"), ("bench", "random"), ("mixed", "fixed"),
                     ("mixed", "random")}
    for case in report["matrix"]:
        mix, flood = case["mix"], case["flood"]
        assert 100 in case["ns"]
        for n in case["ns"]:
            got = {r["system"] for r in rows if r["flood"] == flood and (
                r["mix"] is None or (r["mix"] == mix and r["rules"] == n))}
            want = SYSTEMS | (FIXED_ONLY if flood == "fixed" else set())
            assert got == want, (mix, flood, n, want ^ got)
        assert (tmp_path / report["plots"][f"{mix}-{flood}"]).stat().st_size > 10_000
    assert len(report["targets"]) == sum(len(c["ns"]) for c in report["matrix"]) + 1
    for target in report["targets"]:
        assert all(t["ratio"] > 0 for key, t in target.items() if " / " in key), target
    assert "Against the targets" in result.stdout
    assert [c["rules"] for c in report["per_packet"]] == [1, 100]
    fleet = report["fleet"]   # bench/fleet.py: 3 real agents, 5 dry-run agents in smoke
    assert fleet["real"]["agents"] == 3 and fleet["dry"]["agents"] == 5
    assert all(s > 0 for row in fleet.values() for s in row["seconds"])
    assert "Fleet rollout" in result.stdout
    assert {a["mix"] for a in report["apply"]} == {"bench", "mixed"}
    for applied in report["apply"]:
        assert applied["warm_unchanged"] is True
        assert applied["one_rule_entries"] < applied["cold_entries"]
        assert applied["status_s"] > 0
        # every rule's counters in the scrape: more text than the 100 busiest give
        assert set(applied["scrape_s"]) == {"all", "top:100"}
        assert applied["scrape_bytes"]["all"] > applied["scrape_bytes"]["top:100"] > 0 \
            if applied["rules"] > 100 else applied["scrape_bytes"]["all"] > 0
    assert (tmp_path / report["plots"]["apply"]).stat().st_size > 10_000
    # The sets section: one rule on a 1,000-prefix set, on the wire and in the controller.
    sets = report["sets"]
    assert (sets["size"], sets["mix"]) == (1000, "set1k")
    assert not [r for r in sets["throughput"] if "error" in r], sets["throughput"]
    assert {r["system"] for r in sets["throughput"]} == SET_SYSTEMS
    assert all(r["pps"] > 0 and r["rules"] == 1000 for r in sets["throughput"])
    applied = sets["apply"]
    assert applied["cold_entries"] >= 1000 and applied["warm_unchanged"] is True
    assert 0 < applied["change_entries"] < applied["cold_entries"]
    assert 0 < applied["change_flip_s"] < applied["change_s"]
    assert applied["set_add_done"] and applied["set_add_s"] > 0
    assert applied["peak_rss_mb"] > 0 and applied["nft_set_load_s"] > 0
    assert set(applied["targets"]) == {"cold_s", "warm_s", "change_flip_s", "peak_rss_mb"}
    set_targets = [t for t in report["targets"] if t["mix"] == "set1k"]
    assert len(set_targets) == 1 and all(
        t["ratio"] > 0 for key, t in set_targets[0].items() if " / " in key), set_targets
    assert "Sets: one rule on a set of 1,000" in result.stdout
    assert "Sets apply against the targets" in result.stdout
    assert re.search(r"^set1k +fixed +1,000 ", result.stdout, re.M), result.stdout[-3000:]
    forwarded = {r["system"]: r for r in report["forwarding"]}
    assert {"kernel forwarding", "kernel forwarding + nftables set", "bare tc redirect",
            "bare xdp redirect", "netctl (default hook)", "netctl (XDP)"} <= set(forwarded)
    assert not [r for r in report["forwarding"] if "error" in r]
    assert all(r["pps"] > 0 for r in report["forwarding"]), report["forwarding"]
    over = report["tracers"]["overhead"]
    assert over["off_median"] > 0 and over["on_median"] > 0
    assert any(s.startswith("cong: tracepoint") for s in over["sources"]), over["sources"]
    assert report["tracers"]["event_rate"][0]["shown"] > 0
    assert "tracer overhead" in result.stdout
    assert "Throughput" in result.stdout and "Per-packet" in result.stdout
    # The run's namespaces carry its pid (others' may come and go on a shared machine).
    ours = re.compile(rf"nctl-(bench|fwd){proc.pid % 100000}\D")
    assert not [ns for ns in namespaces() if ours.match(ns)]
