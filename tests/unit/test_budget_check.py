"""The cost budget's verdicts (bench/budget.py check), on made-up measurements: what fails,
what is only reported, and what is not compared on another kernel."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.budget import check  # noqa: E402

BUDGET = {
    "tolerance": 0.03, "kernel": "6.18.1", "bcc": "0.26.0",
    "programs": {"xdp": {"xlated_insns": 1000, "jited_bytes": 5000, "verified_insns": 20000,
                         "call_sites": {"trie_lookup_elem": 4, "bpf_ktime_get_ns": 1}}},
    "packets": {"xdp | rule drop": {"outcome": "drop: rule flood", "path": "-",
                                    "calls": {"array": 6, "lpm": 1}}},
}


def measured(**changes) -> dict:
    now = copy.deepcopy(BUDGET)
    del now["tolerance"]
    now["tags"] = now["tags_without_counting"] = {"xdp": "00"}
    for path, value in changes.items():
        *parents, last = path.split("/")
        node = now
        for p in parents:
            node = node[p]
        node[last] = value
    return now


def test_the_budget_itself_passes():
    assert check(measured(), BUDGET) == ([], [], [])


def test_one_more_call_per_packet_fails_and_says_which():
    over, _, _ = check(measured(**{"packets/xdp | rule drop/calls":
                                   {"array": 6, "lpm": 1, "ktime": 1, "ringbuf": 1}}), BUDGET)
    assert len(over) == 1
    assert "xdp | rule drop: 9 calls per packet (3 real), budget 7 (1)" in over[0]
    assert "+1 ktime, +1 ringbuf" in over[0]


def test_a_cheaper_kind_does_not_pay_for_a_dearer_one():
    over, _, _ = check(measured(**{"packets/xdp | rule drop/calls":
                                   {"array": 5, "lpm": 2}}), BUDGET)
    assert over and "+1 lpm, -1 array" in over[0]


def test_fewer_calls_are_reported_as_well_under():
    over, under, _ = check(measured(**{"packets/xdp | rule drop/calls": {"array": 5,
                                                                        "lpm": 1}}), BUDGET)
    assert not over and under == ["xdp | rule drop: 6 calls per packet, budget 7: -1 array"]


def test_another_outcome_or_path_fails():
    over, _, _ = check(measured(**{"packets/xdp | rule drop/outcome": "accept: non_ip"}),
                       BUDGET)
    assert over and "no longer measures what it says" in over[0]
    over, _, _ = check(measured(**{"packets/xdp | rule drop/path": "copy"}), BUDGET)
    assert over == ["xdp | rule drop: header path copy, budget -"]


def test_a_class_without_a_budget_or_a_budget_without_a_class_fails():
    now = measured()
    now["packets"]["xdp | new class"] = now["packets"].pop("xdp | rule drop")
    over, _, _ = check(now, BUDGET)
    assert len(over) == 2


def test_sizes_have_a_tolerance():
    assert check(measured(**{"programs/xdp/xlated_insns": 1030}), BUDGET)[0] == []
    over, _, _ = check(measured(**{"programs/xdp/xlated_insns": 1031}), BUDGET)
    assert over == ["xdp xlated_insns: 1,031, budget 1,000 (+3.1%)"]
    over, under, _ = check(measured(**{"programs/xdp/verified_insns": 15000}), BUDGET)
    assert not over and "verified_insns" in under[0]


def test_a_new_call_site_fails():
    over, _, _ = check(measured(**{"programs/xdp/call_sites":
                                   {"trie_lookup_elem": 4, "bpf_ktime_get_ns": 1,
                                    "bpf_ringbuf_output": 1}}), BUDGET)
    assert over == ["xdp: 1 call sites of bpf_ringbuf_output, budget 0"]


def test_on_another_kernel_only_calls_per_packet_are_compared():
    now = measured(kernel="6.1.0", **{"programs/xdp/xlated_insns": 5000})
    over, _, remarks = check(now, BUDGET)
    assert not over and "not compared" in remarks[0]
    now["packets"]["xdp | rule drop"]["calls"]["lpm"] = 2
    assert check(now, BUDGET)[0]


def test_counting_that_changes_the_programs_fails():
    over, _, _ = check(measured(tags={"xdp": "01"}), BUDGET)
    assert over and "compile to nothing" in over[0]


def test_call_sites_hidden_by_kallsyms_are_not_compared():
    over, _, remarks = check(measured(**{"programs/xdp/call_sites": None}), BUDGET)
    assert not over and "call sites not compared" in remarks[0]
