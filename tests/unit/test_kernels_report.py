"""docs/kernels.md's matrix is the one `make test-kernels` wrote: kernels/report.py renders
the committed results (docs/kernels-results.json) again and the document must hold exactly
that text between its markers; and a run's failures are never lost on the way."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kernels import report  # noqa: E402


def test_the_document_holds_what_the_committed_run_renders():
    held = report.blocks(report.DOC.read_text())
    assert set(held) == {"run", "hooks", "verifier", "failures"}, "markers missing"
    assert report.RESULTS.exists(), "docs/kernels-results.json: no run committed"
    rendered = report.render(json.loads(report.RESULTS.read_text()))
    for name, text in rendered.items():
        assert held[name] == text, (
            f"docs/kernels.md: the kernels:{name} block differs from what `python -m "
            "kernels.report` writes from docs/kernels-results.json: run it and commit")


def _run(tests: list[tuple[str, str, str]], **extra) -> dict:
    return {"release": "6.1.0-57-amd64", "entry": "linux-image-amd64", "version": "1",
            "seconds": 60, "stages": {}, "finished": 1.0,
            "tests": [{"nodeid": n, "part": p, "outcome": o} for n, p, o in tests], **extra}


def test_every_failure_and_every_empty_part_is_a_problem():
    ok = [("a", "tracers", "passed"), ("b", "differential", "passed"), ("c", "netns", "passed")]
    assert report.problems({"runs": [_run(ok)]}) == []
    failing = _run([*ok, ("d", "differential", "error")])
    assert report.problems({"runs": [failing]}) == ["6.1.0-57-amd64: error: d"]
    empty = _run(ok[:2])
    assert report.problems({"runs": [empty]}) == ["6.1.0-57-amd64: netns: no test ran"]
    refused = _run(ok, stages={"verifier": {"result": {"xdp": {
        "ok": False, "error": "the verifier refused netctl_xdp_ingress", "processed": 9,
        "log_tail": ["processed 9 insns"]}}}})
    assert report.problems({"runs": [refused]}) == [
        "6.1.0-57-amd64: xdp: the verifier refused netctl_xdp_ingress; the log ends: "
        "`processed 9 insns`"]
    missing = {"entry": "linux-image-9", "release": None, "problem": "cannot be had: x",
               "stages": {}, "tests": []}
    assert report.problems({"runs": [missing]}) == ["linux-image-9: cannot be had: x"]
    assert "cannot be had" in report.summary_table({"runs": [missing]})
