"""Test tiers by privilege: tests/unit runs anywhere; tests/bpf and tests/netns need root
and a real kernel.  As root (CI) they always run; otherwise they are skipped with the
reason, never silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests are deterministic in `make test` (and CI): the same examples every run, so a
# red run is a real regression and reproduces.  `make fuzz` (NETCTL_HYPOTHESIS=explore)
# draws fresh examples to find new bugs; a find becomes a fixed test case.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("NETCTL_HYPOTHESIS", "deterministic"))

ROOT_TIERS = ("bpf", "netns")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real BPF loads and network namespaces "
                            "(run 'make test' as root)")
    for item in items:
        if Path(str(item.fspath)).parent.name in ROOT_TIERS:
            item.add_marker(skip)
