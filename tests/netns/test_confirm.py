"""apply --confirm: unless `netctl confirm` comes in time, the policy before comes back by
itself, and traffic proves it; a confirm keeps the new one; killing the watcher (or the CLI)
changes nothing to that, since the programs read the deadline themselves."""

from __future__ import annotations

import json
import os
import signal
import time

from lab import wait_for

ACCEPT_5555 = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: drop-6666, action: drop, proto: udp, dport: 6666}
"""

DROP_5555 = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: drop-5555, action: drop, proto: udp, dport: 5555}
"""


def _confirm_state(the_lab) -> dict:
    return the_lab.status().get("confirm") or {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _apply_awaiting(the_lab, text: str, seconds: int) -> dict:
    out = the_lab.netctl("apply", the_lab.policy(text, "new.yaml"), "--dev", the_lab.dut_if,
                         "--confirm", str(seconds))
    assert "unless 'netctl confirm'" in out.stdout
    pending = _confirm_state(the_lab)["pending"]
    # the deadline is a whole second of the monotonic clock: up to one second later
    assert pending["expired"] is False and 0 < pending["seconds_left"] <= seconds + 1
    assert pending["watcher_alive"] is True
    assert "awaiting 'netctl confirm' until" in the_lab.netctl("status").stdout
    return pending


def test_without_a_confirm_the_policy_before_comes_back_and_the_rollback_is_counted(the_lab):
    the_lab.apply(ACCEPT_5555)
    assert the_lab.udp(5) == 5
    pending = _apply_awaiting(the_lab, DROP_5555, 3)
    assert pending["previous"].endswith("policy.yaml")
    assert the_lab.udp(5) == 0                     # the new policy judges meanwhile
    refused = the_lab.netctl("apply", the_lab.policy(ACCEPT_5555), "--dev", the_lab.dut_if,
                             check=False)
    assert refused.returncode == 1 and "awaits confirmation" in refused.stderr
    assert wait_for(lambda: _confirm_state(the_lab).get("rollbacks") == 1, timeout=15)
    assert the_lab.udp(5) == 5                     # the policy before, in the kernel
    assert the_lab.udp(4, dport=6666) == 0
    report = the_lab.status()
    assert "pending" not in report["confirm"] and report["policy"].endswith("policy.yaml")
    assert report["confirm"]["last_rollback"]["policy"].endswith("new.yaml")
    assert the_lab.netctl("show").stdout == ACCEPT_5555
    assert not _alive(pending["watcher"])
    late = the_lab.netctl("confirm", check=False)
    assert late.returncode == 1 and "nothing awaits confirmation" in late.stderr


def test_a_confirm_in_time_keeps_the_new_policy(the_lab):
    the_lab.apply(ACCEPT_5555)
    pending = _apply_awaiting(the_lab, DROP_5555, 3)
    assert "stays live" in the_lab.netctl("confirm").stdout
    assert wait_for(lambda: not _alive(pending["watcher"]), timeout=10)
    time.sleep(3.5)                                # past the deadline that no longer is
    assert the_lab.udp(5) == 0
    report = the_lab.status()
    assert "confirm" not in report and report["policy"].endswith("new.yaml")
    # and the next apply goes on from there as usual
    the_lab.apply(ACCEPT_5555)
    assert the_lab.udp(5) == 5


def test_the_watcher_killed_with_sigkill_changes_nothing_to_the_rollback(the_lab):
    the_lab.apply(ACCEPT_5555)
    pending = _apply_awaiting(the_lab, DROP_5555, 3)
    os.kill(pending["watcher"], signal.SIGKILL)
    assert wait_for(lambda: not _alive(pending["watcher"]), timeout=10)
    assert the_lab.udp(5) == 0
    assert wait_for(lambda: _confirm_state(the_lab)["pending"]["expired"], timeout=15)
    assert the_lab.udp(5) == 5                     # the programs rolled back by themselves
    assert "not confirmed in time" in the_lab.netctl("status").stdout
    late = the_lab.netctl("confirm", check=False)  # too late: recorded, not kept
    assert late.returncode == 1 and "too late" in late.stderr
    assert _confirm_state(the_lab)["rollbacks"] == 1
    assert the_lab.udp(5) == 5


def test_a_first_apply_with_confirm_falls_back_to_no_policy(the_lab):
    out = json.loads(the_lab.netctl("apply", the_lab.policy(DROP_5555), "--dev",
                                    the_lab.dut_if, "--confirm", "3", "-o", "json").stdout)
    assert out["reload"] is True
    assert the_lab.udp(5) == 0
    assert wait_for(lambda: _confirm_state(the_lab).get("rollbacks") == 1, timeout=15)
    assert the_lab.udp(5) == 5                     # nothing filtered, as before the apply
    assert _confirm_state(the_lab)["last_rollback"]["restored"] is None
