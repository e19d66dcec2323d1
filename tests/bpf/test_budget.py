"""Per-packet work stays within the committed budget (bench/budget.json): every map operation
and helper call each packet class makes, counted on an instrumented build through
BPF_PROG_TEST_RUN, and the programs' sizes and verifier work.  Counts, not times: the same
on a fast machine and a loaded one.  A change that adds work on purpose records it with
`python -m bench.budget --write` and says why in its commit (docs/performance.md, "The cost
budget")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from bench import budget  # noqa: E402

pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")


@pytest.fixture(scope="module")
def measured() -> dict:
    return budget.measure()


def test_per_packet_work_is_within_the_budget(measured):
    over, _under, remarks = budget.check(measured, budget.load())
    for line in remarks:
        print(f"note: {line}")
    assert not over, ("over the cost budget (bench/budget.json):\n  " + "\n  ".join(over) +
                      "\nIf the change adds this work on purpose: python -m bench.budget "
                      "--write, and say why in the commit message.")


def test_the_counting_compiles_to_nothing_without_its_flag(measured):
    """The programs built without -DNETCTL_COUNT_CALLS are those of the source without
    netctl_perf.h and its netctl_called lines, tag for tag: counting costs production
    nothing."""
    assert measured["tags"] == measured["tags_without_counting"]

