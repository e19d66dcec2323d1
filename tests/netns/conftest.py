"""The namespace tier leaves nothing running: traffic generators are stopped with their
workers (they fork, and a worker outlives a killed parent).

Only this test session's generators are looked at and stopped, never another user's: the
session marks its environment, which every process it starts inherits (through `ip netns
exec`, forks and a dead parent alike), and a generator counts as ours only if its
environment carries that mark.  They are stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

SESSION_MARK = "NETCTL_TEST_SESSION"
os.environ[SESSION_MARK] = str(os.getpid())


def _our_generators() -> dict[int, str]:
    """pid -> command line of the trafgen processes this session started."""
    mark = f"{SESSION_MARK}={os.environ[SESSION_MARK]}".encode()
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/comm", "rb") as f:
                if f.read().strip() != b"trafgen":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                out[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
    return out


@pytest.fixture(autouse=True)
def no_generator_left_running():
    before = set(_our_generators())
    yield
    left = {pid: cmd for pid, cmd in _our_generators().items() if pid not in before}
    if left:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"traffic generators left running: {sorted(left.values())}")
