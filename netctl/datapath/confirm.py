"""`apply --confirm SECONDS` and `netctl confirm`: never lock the operator out.

An apply with --confirm makes the new policy live in one generation while the other keeps
the policy before, and writes a deadline next to the generation bit of the `active` word.
The programs themselves read the clock against it (netctl_judge): past the deadline the
generation before judges again.  So the rollback needs no process to survive: not the CLI
(killed, or its terminal closed), not the watcher.

The watcher (this module run as a process of its own session, started by the apply) makes
the rollback a recorded fact on time: at the deadline it clears the word to the generation
before, counts the rollback in the state file and logs it (syslog).  Were it killed, the
next `netctl confirm` or `netctl apply` records the rollback the programs already made, and
`netctl status` shows it meanwhile.  `netctl confirm` before the deadline clears the
deadline: the new policy stays.

A rebuild (new programs) keeps the policy before by writing it into the new build's other
generation, compiled for the new maps; with nothing live before, that generation is left
empty, and an empty generation lets every packet pass, as no datapath did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ..errors import NetctlError
from ..kernel import privilege
from ..policy.model import Policy
from ..policy.plan import MapPlan
from . import maps as mapio
from .instance import Datapath
from .live import open_live
from .netns import Namespace
from .state import Confirm, Generation, State

MAX_SECONDS = 86400
WATCHER = "netctl.datapath.confirm"


def check_seconds(seconds: int) -> None:
    if not 1 <= seconds <= MAX_SECONDS:
        raise NetctlError(f"--confirm {seconds}: give 1 to {MAX_SECONDS} seconds")


def deadline_after(seconds: int) -> tuple[int, float]:
    """(monotonic seconds, wall-clock time) ``seconds`` from now."""
    check_seconds(seconds)
    return math.ceil(mapio.monotonic_seconds() + seconds), time.time() + seconds


def expired(confirm: Confirm) -> bool:
    return mapio.monotonic_seconds() >= confirm.deadline


def previous_plan(ns: Namespace, record: Generation | None, plan: MapPlan
                  ) -> tuple[MapPlan, Generation]:
    """The policy before, compiled for the maps ``plan`` is built for, and its record (an
    empty one when nothing was live)."""
    from ..errors import MapFullError
    from ..policy.compile import compile_policy
    from .setctl import kept_policy
    from .transaction import generation_record

    try:
        policy = kept_policy(ns, record) if record is not None and record.policy else None
    except NetctlError as exc:
        raise NetctlError(f"--confirm: the policy before could not come back: {exc}") from None
    try:
        before = compile_policy(policy or Policy(), plan.limits)
    except MapFullError as exc:
        raise NetctlError(f"--confirm: the policy before does not fit the new programs' maps "
                          f"({exc}), so it could not come back; apply without --confirm") \
            from None
    if policy is None or record is None:
        return before, Generation(digest=before.digest())
    return before, dataclasses.replace(record, digest=before.digest(),
                                       contents=generation_record(policy, before).contents)


def spawn_watcher() -> int:
    """Start the watcher in a session of its own (no terminal, no process group of the CLI's
    to be killed with); its pid."""
    proc = subprocess.Popen([sys.executable, "-m", WATCHER], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True)
    return proc.pid


def stop_watcher(pid: int | None) -> None:
    """SIGTERM the watcher, when that pid is still one."""
    if pid is None:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if WATCHER.encode() not in f.read():
                return
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


def watcher_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return WATCHER.encode() in f.read()
    except OSError:
        return False


def record_rollback(ns: Namespace, state: State, dp: Datapath) -> State:
    """The rollback the programs made at the deadline, made permanent and recorded: the
    word flipped back without a deadline, counted, logged.  Call with the lock held."""
    confirm = state.confirm
    assert confirm is not None
    before = 1 - confirm.gen
    dp.flip(before)
    state.confirm = None
    state.rollbacks += 1
    state.last_rollback = {"at": confirm.wall_deadline, "policy": confirm.policy,
                           "restored": confirm.previous}
    ns.write_state(state)
    restored = confirm.previous or "no policy (everything passes)"
    _log(f"netctl: {confirm.policy} was not confirmed in time: rolled back to {restored}")
    return state


def _log(message: str) -> None:
    with contextlib.suppress(OSError):
        import syslog

        syslog.openlog("netctl", 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING, message)


def settle(ns: Namespace) -> None:
    """Before an apply (lock held): record a rollback the deadline made; refuse while an
    apply still awaits its confirmation."""
    state = ns.read_state()
    if state is None or state.confirm is None:
        return
    confirm = state.confirm
    if not expired(confirm):
        left = confirm.deadline - mapio.monotonic_seconds()
        raise NetctlError(f"{confirm.policy} awaits confirmation for {left:.0f} s more: "
                          "'netctl confirm' keeps it, or wait for the policy before to come "
                          "back, then apply")
    live, why = open_live(ns, state)
    if live is None:
        raise NetctlError(f"{why}: the datapath is gone; 'netctl detach --all' starts over")
    with live:
        record_rollback(ns, state, live)
    stop_watcher(confirm.watcher)


def confirm() -> dict[str, Any]:
    """`netctl confirm`: keep the policy that awaits confirmation."""
    privilege.require("confirm", *privilege.LOAD)
    ns = Namespace.current()
    with ns.lock():
        state = ns.read_state()
        if state is None or state.confirm is None:
            raise NetctlError("nothing awaits confirmation in this network namespace")
        pending = state.confirm
        live, why = open_live(ns, state)
        if live is None:
            raise NetctlError(f"{why}: the datapath is gone")
        with live:
            if expired(pending):
                record_rollback(ns, state, live)
                stop_watcher(pending.watcher)
                at = time.strftime("%H:%M:%S", time.localtime(pending.wall_deadline))
                raise NetctlError(f"too late: the deadline passed at {at} and "
                                  f"{pending.previous or 'no policy'} came back; apply "
                                  f"{pending.policy} again to retry")
            live.flip(pending.gen)
        state.confirm = None
        ns.write_state(state)
    stop_watcher(pending.watcher)
    return {"confirmed": pending.policy, "generation": pending.gen}


def status_of(state: State) -> dict[str, Any] | None:
    """What `netctl status` says of a pending confirmation and of rollbacks."""
    out: dict[str, Any] = {}
    if state.confirm is not None:
        c = state.confirm
        out["pending"] = {"policy": c.policy, "previous": c.previous,
                          "deadline": c.wall_deadline, "expired": expired(c),
                          "seconds_left": max(0.0, c.deadline - mapio.monotonic_seconds()),
                          "watcher": c.watcher, "watcher_alive": watcher_alive(c.watcher)}
    if state.rollbacks:
        out["rollbacks"] = state.rollbacks
        out["last_rollback"] = state.last_rollback
    return out or None


def _watch() -> int:
    """The watcher: sleep until the deadline, then record the rollback (if still due)."""
    ns = Namespace.current()
    with ns.lock():   # the apply that started this holds it until its state is written
        pass
    while True:
        state = ns.read_state()
        if state is None or state.confirm is None or state.confirm.watcher != os.getpid():
            return 0                     # confirmed, detached, or another apply's watcher
        left = state.confirm.deadline - mapio.monotonic_seconds()
        if left <= 0:
            break
        time.sleep(min(left + 0.05, 1.0))
    with ns.lock():
        state = ns.read_state()
        if state is None or state.confirm is None or state.confirm.watcher != os.getpid():
            return 0
        live, _why = open_live(ns, state)
        if live is None:
            return 1
        with live:
            record_rollback(ns, state, live)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(_watch())
