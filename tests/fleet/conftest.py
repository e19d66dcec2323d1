"""The fleet tier: a real etcd and agents in network namespaces (root).  One fleet per test
module: starting etcd and three agents, and their first compile, is most of the cost."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fleetlab import fleet  # noqa: E402


@pytest.fixture(scope="module")
def the_fleet():
    tmp = Path(tempfile.mkdtemp(prefix="nctl-fleet-"))
    try:
        with fleet(tmp) as it:
            yield it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def scratch():
    tmp = Path(tempfile.mkdtemp(prefix="nctl-fleet-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
