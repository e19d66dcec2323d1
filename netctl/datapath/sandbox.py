"""Run packets through the real programs with BPF_PROG_TEST_RUN, away from any interface.

A ``Sandbox`` builds netctl's programs and maps in a temporary pin directory and unlinks
the pins at once (its open fds keep everything alive until ``close``), so it never touches
the live datapath and leaves nothing behind.  ``load`` writes a plan into the inactive
generation and flips, exactly as `netctl apply` does, so one compile serves many policies.
``run`` reports the verdict and what decided it, read from the counters the packet moved.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass

from .. import abi
from ..kernel import bpfsys
from ..paths import PIN_ROOT
from ..policy.model import Action
from ..policy.plan import Limits, MapPlan
from .instance import Datapath
from .netns import ensure_pin_root, remove_pins

HOOKS = ("xdp", "tc_ingress", "tc_egress")
# Counted besides the decision: connection tracking's bookkeeping (an entry created,
# confirmed or expired, a packet refused as a reply before the rules judged it) and events.
CT_SIDE_STATS = frozenset({abi.STAT_CT_NEW, abi.STAT_CT_EXPIRED, abi.STAT_CT_CONFIRMED,
                           abi.STAT_CT_UNCONFIRMED_EXPIRED, abi.STAT_CT_INVALID})
_SIDE_STATS = CT_SIDE_STATS | {abi.STAT_EVENTS, abi.STAT_EVENTS_LOST,
                               abi.STAT_EVENTS_SAMPLED_OUT, abi.STAT_FLOW_HIT,
                               abi.STAT_FLOW_MISS}
XDP_DROP, XDP_PASS = 1, 2
TC_ACT_SHOT, TC_ACT_UNSPEC = 2, 0xFFFFFFFF


@dataclass(frozen=True)
class Outcome:
    verdict: Action
    why: str                     # rule / default / ndp / conntrack / related / non-ip /
                                 # malformed
    rule: int | None             # deciding rule index
    reason: abi.DropReason       # drop reason (NONE when accepted)
    retval: int
    tracked: bool = False        # connection tracking created an entry for it (egress)
    ct: frozenset[int] = frozenset()  # the tracker's side counts it moved (abi.STAT_CT_*)


class TestRunRefused(Exception):
    """The kernel's BPF_PROG_TEST_RUN would not run this frame (EINVAL).  For tc it refuses
    IPv4/IPv6 frames too short for their IP header (such frames do reach tc on a real
    interface; the XDP test run takes them and exercises the same parser)."""

    __test__ = False


def sandbox_limits(rules: int) -> Limits:
    """Capacities for a sandbox: small rule arrays, so reading every counter after each
    packet is one cheap syscall."""
    size = 16
    while size < rules:
        size *= 2
    return Limits(rules=size)


class Sandbox:
    def __init__(self, limits: Limits, extra_cflags: tuple[str, ...] = (),
                 conntrack_size: int | None = None, direct_port: bool = False):
        ensure_pin_root()
        self.limits = limits
        pin_dir = f"{PIN_ROOT}/sandbox-{os.getpid()}-{id(self):x}"
        from ..policy.compile import compile_policy
        from ..policy.model import Conntrack, Policy

        sized = Policy(conntrack=Conntrack(size=conntrack_size)) if conntrack_size else Policy()
        constants = compile_policy(sized, limits).constants()
        if direct_port:   # built for plans with slots keyed by the destination port
            constants["NETCTL_DIRECT_PORT"] = 1
        try:
            self.dp = Datapath.build(pin_dir, constants, extra_cflags)
        finally:
            remove_pins(pin_dir)
        self.plan: MapPlan | None = None
        self._held: dict[int, MapPlan] = {}   # generation -> the plan written there

    def close(self) -> None:
        self.dp.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self, plan: MapPlan) -> int:
        """Make ``plan`` the live policy of the sandbox; returns the entries written."""
        if plan.constants() != self.dp.constants:
            raise ValueError("the plan was compiled with other limits than the sandbox")
        gen = 1 - self.dp.active if self.plan is not None else 0
        change = self.dp.write_plan(plan, gen, fresh=self.plan is None,
                                    holds=self._held.get(gen))
        self._epoch = getattr(self, "_epoch", 0) + 1
        self.dp.set_epoch(gen, self._epoch)
        self.dp.flip(gen)
        self._held[gen] = plan
        self.plan = plan
        return change.entries()

    def clear_conntrack(self) -> None:
        for name in ("conntrack", "conntrack_unconfirmed"):
            m = self.dp.maps[name]
            m.delete_many(list(m.keys()))

    def _snapshot(self) -> tuple[bytes, bytes]:
        return self.dp.maps["counters"].read_array(), self.dp.maps["stats"].read_array()

    def snapshot(self) -> tuple[bytes, bytes]:
        """The counters now, for ``observe`` after a packet went through another way (a
        program of this sandbox attached to an interface)."""
        return self._snapshot()

    def run(self, frame: bytes, hook: str) -> Outcome:
        if len(frame) < 14:
            raise ValueError("BPF_PROG_TEST_RUN needs at least an Ethernet header (14 bytes)")
        before = self._snapshot()
        try:
            result = bpfsys.test_run(self.dp.programs[hook], frame)
        except bpfsys.BpfError as exc:
            if exc.errno == errno.EINVAL:
                raise TestRunRefused(f"{hook}: test run refused a {len(frame)}-byte frame") \
                    from None
            raise
        dropped = result.retval == (XDP_DROP if hook.startswith("xdp") else TC_ACT_SHOT)
        passed = result.retval == (XDP_PASS if hook.startswith("xdp") else TC_ACT_UNSPEC)
        if not (dropped or passed):
            raise AssertionError(f"{hook} returned {result.retval}")
        outcome = self.observe(before)
        if outcome is None:
            raise AssertionError("the packet moved no counter")
        if outcome.verdict is not (Action.DROP if dropped else Action.ACCEPT):
            raise AssertionError(f"{hook} returned {result.retval}, its counters say {outcome}")
        return dataclasses.replace(outcome, retval=result.retval)

    def observe(self, before: tuple[bytes, bytes]) -> Outcome | None:
        """What one packet did since ``before`` (a ``snapshot``), read from the counters it
        moved alone; None when it moved none (it has not reached the program yet)."""
        after = self._snapshot()
        moved = _moved(before[0], after[0], self.dp.maps["counters"].value_size)
        stat = _moved(before[1], after[1], self.dp.maps["stats"].value_size)
        # Connection tracking counts a new or expired entry besides the decision.
        tracked = abi.STAT_CT_NEW in stat
        ct = frozenset(s for s in stat if s in CT_SIDE_STATS)
        # ... and events (to monitor) besides the decision.
        stat = [s for s in stat if s not in _SIDE_STATS]
        if not moved and not stat:
            return None
        if len(moved) + len(stat) != 1:
            raise AssertionError(f"one packet moved {len(moved)} rule and {len(stat)} stat "
                                 "counters, expected exactly one")
        if moved:
            stride = self.dp.constants["NETCTL_RULES_ENTRIES"]
            gen, rule = divmod(moved[0], stride)
            if gen != self.dp.active:
                raise AssertionError(f"counted in generation {gen}, not the active one")
            assert self.plan is not None
            dropped = self.plan.rules[rule][0] == 1
            verdict = Action.DROP if dropped else Action.ACCEPT
            reason = abi.DropReason.POLICY_RULE if dropped else abi.DropReason.NONE
            return Outcome(verdict, "rule", rule, reason, -1, tracked, ct)
        slot = stat[0]
        if slot < abi.DROP_MAX:
            return Outcome(Action.DROP, "malformed", None, abi.DropReason(slot), -1)
        if slot == abi.STAT_NON_IP:
            return Outcome(Action.ACCEPT, "non-ip", None, abi.DropReason.NONE, -1)
        if slot == abi.STAT_NDP:
            return Outcome(Action.ACCEPT, "ndp", None, abi.DropReason.NONE, -1)
        if slot == abi.STAT_CT_REPLY:
            return Outcome(Action.ACCEPT, "conntrack", None, abi.DropReason.NONE, -1, ct=ct)
        if slot == abi.STAT_CT_RELATED:
            return Outcome(Action.ACCEPT, "related", None, abi.DropReason.NONE, -1, ct=ct)
        if abi.STAT_DEFAULT <= slot < abi.STAT_DEFAULT + 4:
            dropped = (slot - abi.STAT_DEFAULT) % 2 == 1
            reason = abi.DropReason.POLICY_DEFAULT if dropped else abi.DropReason.NONE
            return Outcome(Action.DROP if dropped else Action.ACCEPT, "default", None, reason,
                           -1, tracked, ct)
        raise AssertionError(f"unexpected stat slot {slot}")


def _moved(before: bytes, after: bytes, value_size: int) -> list[int]:
    """Indexes of per-CPU counter entries that differ."""
    if before == after:
        return []
    out = []
    for i in range(len(after) // value_size):
        lo, hi = i * value_size, (i + 1) * value_size
        if before[lo:hi] != after[lo:hi]:
            out.append(i)
    return out


def hooks_for(direction) -> tuple[str, ...]:
    return ("xdp", "tc_ingress") if direction.value == "ingress" else ("tc_egress",)


def run_policy_tests_in_kernel(policy, results) -> str:
    """Run each `tests:` packet through the real programs (every hook of its direction) and
    add a problem to its result wherever the kernel disagrees with the reference model.
    Returns the engine's name for the report."""
    from ..policy.compile import compile_fitting
    from .frames import Unrepresentable, frame_for

    # Grown where the policy needs more room (a set of more than a million prefixes).
    plan = compile_fitting(policy, sandbox_limits(len(policy.rules)))
    with Sandbox(plan.limits) as sandbox:
        sandbox.load(plan)
        for result in results:
            want = result.decision
            want_rule = want.rule.index if want.rule is not None else None
            try:
                frame = frame_for(result.test.packet)
            except Unrepresentable as exc:
                result.problems.append(f"not run in the kernel: {exc}")
                continue
            for hook in hooks_for(result.test.direction):
                # Each test packet is judged on its own: no flow another one started.
                sandbox.clear_conntrack()
                got = sandbox.run(frame, hook)
                if (got.verdict, got.rule, got.why) != (want.verdict, want_rule, want.why):
                    rule = (f"rule {policy.rules[got.rule].name}" if got.rule is not None
                            else got.why)
                    result.passed = False
                    result.problems.append(
                        f"the {hook} program disagrees with the reference model: "
                        f"{got.verdict.value} ({rule}); this is a netctl bug")
    return "BPF programs (BPF_PROG_TEST_RUN)"
