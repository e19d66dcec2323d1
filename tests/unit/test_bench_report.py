"""The README's and docs/performance.md's benchmark figures are the ones `make bench` wrote:
bench/report.py renders the committed results (docs/bench-results.json) again and the
documents must hold exactly that text between their markers.  A figure edited by hand, a
run committed without its text or text without its run fails here, without root."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402


@pytest.mark.parametrize("doc", sorted(report.TARGETS_DOC))
def test_the_documents_hold_what_the_committed_run_renders(doc):
    text = (REPO / doc).read_text()
    held = report.blocks(text)
    assert set(held) >= set(report.TARGETS_DOC[doc]), f"{doc}: markers missing"
    assert report.RESULTS.exists(), "docs/bench-results.json: no run committed"
    rendered = report.render(json.loads(report.RESULTS.read_text()))
    for name in report.TARGETS_DOC[doc]:
        assert held[name] == rendered[name], (
            f"{doc}: the bench:{name} block differs from what `python -m bench.report` "
            "writes from docs/bench-results.json (edited by hand, or a run without its "
            "text): run it and commit")


def test_the_run_is_named_and_its_plots_are_there():
    result = json.loads(report.RESULTS.read_text())
    assert result["mode"] == "full"
    assert result["machine"].get("commit"), "the run does not name its commit"
    for file in result["plots"].values():
        assert (report.DOCS / file).exists(), f"docs/{file}: plot of the run missing"


def test_a_block_edited_by_hand_is_caught(tmp_path):
    text = (REPO / "docs" / "performance.md").read_text()
    held = report.blocks(text)["tables"]
    changed = text.replace(held, held.replace("0.", "9.", 1), 1)
    assert report.blocks(changed)["tables"] != held
