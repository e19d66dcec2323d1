"""The soak run (`make soak`, ten minutes) in its CI length of 60 seconds: traffic, the
monitor with its tracers, an apply every few seconds; every apply succeeds, every verdict is
right, and no BPF object, descriptor, pin or memory grows."""

from __future__ import annotations

import sys

from lab import REPO


def test_sixty_seconds_of_applies_under_traffic_with_tracers_on():
    sys.path.insert(0, str(REPO))
    from bench.soak import soak

    report = soak(60, period=2.0, say=print)
    assert report["applies"] >= 15, report
    assert report["failed_applies"] == 0 and report["wrong_verdicts"] == 0, report
    assert report["events"] > 0, "the monitor saw nothing"
    assert report["growth"]["progs"] <= 0 and report["growth"]["maps"] <= 0, report["growth"]
    assert report["growth"]["monitor_fds"] <= 0 and report["growth"]["pins"] <= 0, \
        report["growth"]
    assert report["ok"], report
