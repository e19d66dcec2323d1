"""The benchmark harness works end to end (`python -m bench.run --smoke`): every system
under test is set up, flooded and counted, and the report has every part.  Benchmarks are
not tests: no figure is asserted, only that each was measured."""

from __future__ import annotations

import json
import subprocess
import sys

from lab import REPO
from nsutil import namespaces


def test_bench_smoke_run_measures_every_system(tmp_path):
    before = namespaces()
    result = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out",
                             str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "latest-smoke.json").read_text())
    systems = {r["system"] for r in report["throughput"]}
    assert {"netctl (default hook)", "netctl (XDP)", "nftables interval set",
            "nftables linear chain", "iptables (raw PREROUTING)", "xdp-filter (addresses)",
            "bare tc drop", "bare xdp drop", "no filter (closed port)",
            "generator ceiling (DUT link down)"} <= systems
    failed = [r for r in report["throughput"] if "error" in r]
    assert not failed, failed
    assert all(r["pps"] > 0 for r in report["throughput"])
    assert [c["rules"] for c in report["per_packet"]] == [1, 100]
    assert report["apply"][0]["warm_unchanged"] is True
    assert report["apply"][0]["one_rule_entries"] < report["apply"][0]["cold_entries"]
    assert (tmp_path / "throughput-smoke.png").stat().st_size > 10_000
    forwarded = {r["system"]: r for r in report["forwarding"]}
    assert {"kernel forwarding", "kernel forwarding + nftables set", "bare tc redirect",
            "bare xdp redirect", "netctl (default hook: tc)", "netctl (XDP)"} <= set(forwarded)
    assert not [r for r in report["forwarding"] if "error" in r]
    assert all(r["pps"] > 0 for r in report["forwarding"]), report["forwarding"]
    over = report["tracers"]["overhead"]
    assert over["off_median"] > 0 and over["on_median"] > 0
    assert any(s.startswith("cong: tracepoint") for s in over["sources"]), over["sources"]
    assert report["tracers"]["event_rate"][0]["shown"] > 0
    assert "tracer overhead" in result.stdout
    assert "Throughput" in result.stdout and "Per-packet" in result.stdout
    assert namespaces() == before
