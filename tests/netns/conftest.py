"""The namespace tier leaves nothing running: traffic generators are stopped with their
workers (they fork, and a worker outlives a killed parent).

Only this test run's generators are looked at and stopped: other work on the machine (a
benchmark, another checkout's tests) may run trafgen at the same time.  They are told apart
by a marker in the environment, which every process the tests start inherits (`ip netns
exec` and trafgen's forked workers included)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest

_MARKER = "NETCTL_TEST_RUN"
os.environ[_MARKER] = str(os.getpid())


def _generators() -> dict[int, str]:
    """This run's trafgen processes: pid -> command line."""
    out = subprocess.run(["pgrep", "-a", "trafgen"], capture_output=True, text=True)
    mine = f"{_MARKER}={os.environ[_MARKER]}".encode()
    found = {}
    for line in out.stdout.splitlines():
        pid, _, command = line.partition(" ")
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environment = f.read().split(b"\0")
        except OSError:   # gone already
            continue
        if mine in environment:
            found[int(pid)] = command
    return found


@pytest.fixture(autouse=True)
def no_generator_left_running():
    before = _generators()
    yield
    left = {pid: command for pid, command in _generators().items() if pid not in before}
    if left:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"traffic generators left running: {sorted(left.items())}")
