"""The namespace tier leaves nothing running: traffic generators are stopped with their
workers (they fork, and a worker outlives a killed parent).

Only this test session's generators are checked and killed: every process the session
starts inherits a marker in its environment, so a benchmark or another test run on the same
machine is never mistaken for a leak (nor killed)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest
from lab import lab

MARKER = "NETCTL_TEST_SESSION"
os.environ.setdefault(MARKER, str(os.getpid()))


def _generators() -> dict[int, str]:
    """This session's trafgen processes: pid -> command line."""
    out = subprocess.run(["pgrep", "-a", "trafgen"], capture_output=True, text=True)
    mine = f"{MARKER}={os.environ[MARKER]}".encode()
    found = {}
    for line in out.stdout.splitlines():
        pid_text, _, command = line.partition(" ")
        with contextlib.suppress(OSError), open(f"/proc/{pid_text}/environ", "rb") as f:
            if mine in f.read().split(b"\0"):
                found[int(pid_text)] = command
    return found


@pytest.fixture(autouse=True)
def no_generator_left_running():
    before = set(_generators())
    yield
    left = {pid: cmd for pid, cmd in _generators().items() if pid not in before}
    if left:
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"traffic generators left running: {sorted(left.values())}")


@pytest.fixture
def the_lab(tmp_path):
    """A DUT and a generator namespace joined by a veth pair (tests/netns/lab.py), removed
    with everything netctl made there when the test ends."""
    with lab(tmp_path) as it:
        yield it
