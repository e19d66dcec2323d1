"""The bench's guard against measuring beside a flood: it finds every trafgen left running,
and a SIGTERM or SIGHUP ends it through its ``finally`` blocks (where floods are stopped)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.run import running_generators  # noqa: E402


def _proc(tmp_path: Path, pid: int, argv: list[str]) -> None:
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_finds_trafgen_by_program_name_only(tmp_path):
    _proc(tmp_path, 12, ["/usr/sbin/trafgen", "--dev", "veth0", "--cpus", "2"])
    _proc(tmp_path, 7, ["trafgen", "--conf", "x"])
    _proc(tmp_path, 30, ["timeout", "-s", "INT", "9", "trafgen"])   # not trafgen itself
    _proc(tmp_path, 31, ["vim", "trafgen.conf"])
    (tmp_path / "self").mkdir()                                     # not a pid
    (tmp_path / "40").mkdir()                                       # exited: no cmdline
    assert running_generators(tmp_path) == [(7, "trafgen --conf x"),
                                            (12, "/usr/sbin/trafgen --dev veth0 --cpus 2")]


def test_finds_nothing_in_an_empty_table(tmp_path):
    assert running_generators(tmp_path) == []


_SLEEPER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from bench.run import _exit_on_signal
_exit_on_signal()
try:
    print("ready", flush=True)
    time.sleep(60)
finally:
    print("cleaned", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_termination_signal_runs_the_finally_blocks(sig):
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER, str(REPO)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out.strip() == "cleaned"
    assert proc.returncode == 128 + sig
