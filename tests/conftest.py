"""Test tiers by privilege: tests/unit runs anywhere; tests/bpf and tests/netns need root
and a real kernel.  As root (CI) they always run; otherwise they are skipped with the
reason, never silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT_TIERS = ("bpf", "netns")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real BPF loads and network namespaces "
                            "(run 'make test' as root)")
    for item in items:
        if Path(str(item.fspath)).parent.name in ROOT_TIERS:
            item.add_marker(skip)
