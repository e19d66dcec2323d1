"""One apply under the namespace lock, as named steps.  The steps that end where a kill
leaves a state worth testing end with a crash point of that name (``NETCTL_CRASH_AT=NAME``
kills the apply there as kill -9 would: tests/netns/test_faults.py):

* a rule change: ``write`` the plan into the inactive generation (**written**);
* a rebuild: ``build`` new programs and maps holding the plan in both generations, then
  ``record_pending`` the new build in the state file before its programs go live
  (**built**);
* ``attach`` the programs where they are not yet, undone on failure (**attached**);
* ``record`` the new generation in the state file (**recorded**);
* ``flip`` the one-word ``active`` map: from here every packet is judged wholly by the new
  policy (**flipped**);
* ``finish``: detach from interfaces no longer listed, sync kernel routes, carry the old
  generation's (or build's) counters over by rule name, write the new policy into the
  generation packets left too, remove stale builds.

Each step before the flip leaves the previous policy running if it fails or is killed
(docs/datapath.md, docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from ..policy.load import STDIN_SOURCE
from ..policy.model import Policy
from ..policy.plan import MapPlan, PlanDiff, diff
from ..policy.sets import sets_record
from . import attach as att
from . import maps as mapio
from .build import source_digest
from .hooks import Found, attach_all, detach_removed, interface_record, undo_all
from .hooks import attachments_intact as _attachments_intact
from .hooks import same_interfaces as _same_interfaces
from .instance import Datapath, settle
from .live import changed_maps, live_state, open_live, remove_stale_builds, reusable
from .netns import Namespace, netns_name
from .routes import ResolvedRoute, hops, local_keys, packed, sync_kernel_routes
from .state import Build, Carried, Confirm, Generation, Interface, Pending, State

CRASH_POINTS = ("built", "written", "attached", "recorded", "flipped")


def crash_point(name: str) -> None:
    """Die here, as a kill -9 would, when NETCTL_CRASH_AT names this point: the fault tests
    use it to hit each step of an apply exactly, besides killing it at random times."""
    if os.environ.get("NETCTL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class ApplyResult:
    policy: str
    generation: int
    reload: bool
    change: PlanDiff
    interfaces: dict[str, dict[str, Any]]   # Interface.to_json() by name
    detached: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchanged: bool = False
    dry_run: bool = False
    seconds: float = 0.0
    sets: dict[str, dict] = field(default_factory=dict)   # sets_record of what is live
    # --dry-run: the rule-level changes against the live policy (policy.rulediff), or why
    # they are unknown ({"unknown": reason})
    rules: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **({"sets": self.sets} if self.sets else {}),
            **({"rules": self.rules} if self.rules is not None else {}),
            "policy": self.policy, "generation": self.generation, "reload": self.reload,
            "dry_run": self.dry_run, "unchanged": self.unchanged,
            "entries": self.change.entries(),
            "changes": {name: {"added": len(d.added), "changed": len(d.changed),
                               "removed": len(d.removed)}
                        for name, d in self.change.maps.items() if d},
            "interfaces": self.interfaces, "detached": self.detached,
            "warnings": self.warnings, "seconds": round(self.seconds, 3),
        }


def as_json(interfaces: dict[str, Interface]) -> dict[str, dict[str, Any]]:
    return {name: rec.to_json() for name, rec in interfaces.items()}


def generation_record(policy: Policy, plan: MapPlan) -> Generation:
    """What the state file says of a generation holding ``plan`` (next hops and the sets'
    snapshot are added by the apply)."""
    source = policy.source
    file_hash = policy.source_sha256   # the file as it was read, when the loader read it
    if source != STDIN_SOURCE and os.path.isfile(source):   # standard input has no file
        if file_hash is None:
            with open(source, "rb") as f:
                file_hash = hashlib.sha256(f.read()).hexdigest()
        source = os.path.abspath(source)
    return Generation(policy=source, policy_sha256=file_hash, digest=plan.digest(),
                      contents=mapio.contents_digests(plan.maps()), applied_at=time.time(),
                      rules=list(plan.rule_names),
                      actions=[action for action, _ in plan.rules],
                      metrics=[r.index for r in policy.rules if r.metrics],
                      # sizes and live edits (netctl set add/del) of its named sets
                      sets=sets_record(policy) if policy.sets else None)


class Transaction:
    """An apply of ``plan`` in namespace ``ns`` (its lock held), on the interfaces found."""

    def __init__(self, ns: Namespace, links: att.Links, policy: Policy, plan: MapPlan,
                 found: list[Found], extra_cflags: tuple[str, ...],
                 nexthops: list[ResolvedRoute], confirm: int | None = None):
        self.ns, self.links, self.policy, self.plan = ns, links, policy, plan
        # --confirm SECONDS: the generation packets leave keeps the policy before, and the
        # flip carries a deadline (netctl/datapath/confirm.py)
        self.confirm = confirm
        self.previous: tuple[MapPlan, Generation] | None = None
        self.deadline: tuple[int, float] = (0, 0.0)   # (monotonic s, wall clock) at the flip
        self.found, self.extra_cflags, self.nexthops = found, extra_cflags, nexthops
        # What runs: after a rebuild killed once its programs were attached, that pending
        # build is the live one, and this apply completes it (no rebuild when it can be
        # reused).
        state = live_state(ns)[0]
        self.had_state = state is not None
        self.state: State = state if state is not None else State()
        self.old, _why = open_live(ns, self.state)
        self.reload = self.old is None or not reusable(self.state, plan) or bool(extra_cflags)
        self.tampered: int | None = None
        # The flow cache's epoch of the generation written now: new for every apply that
        # flips, so no packet judged by the new policy meets a decision an earlier one made.
        self.epoch = self.state.epoch + 1
        self.dp: Datapath | None = None
        self.gen = 0
        self.change: PlanDiff | None = None
        self.build_rec: Build | None = None
        self.record: Generation | None = None
        self.interfaces: dict[str, Interface] = {}
        self.new_state: State | None = None
        self.carried = Carried()

    def run(self) -> ApplyResult:
        # Pins of links whose interface is gone (or that were detached by hand) hold
        # nothing any more.
        self.links.sweep_link_pins()
        if self.reload:
            self.build()
        else:
            unchanged = self.unchanged()
            if unchanged is not None:
                return unchanged
            self.write()                      # crash point "written"
        self.describe()
        if self.reload:
            self.record_pending()             # crash point "built"
        self.attach()                         # crash point "attached"
        self.record_state()                   # crash point "recorded"
        self.flip()                           # crash point "flipped"
        return self.finish()

    # ---- the steps ---------------------------------------------------------------------------

    def build(self) -> None:
        """New programs and maps, both generations holding the plan (so that the next
        apply's inactive generation already holds it and a one-rule change writes a few
        entries); nothing attached yet."""
        plan, ns = self.plan, self.ns
        build_id = f"b{time.time_ns():x}"
        dp = self.dp = Datapath.build(ns.build_dir(build_id), plan.constants(),
                                      self.extra_cflags, ct_pin=ns.ct_pin(plan.constants()))
        self.gen = 0
        self.change = dp.write_plan(plan, 0, fresh=True)
        other = plan
        if self.confirm is not None:   # the policy before, to come back without a confirm
            from .confirm import previous_plan

            live = self.state.generation(self.old.active) if self.old is not None else None
            self.previous = previous_plan(ns, live, plan)
            other = self.previous[0]
        dp.write_plan(other, 1, fresh=True)
        for g in (0, 1):
            dp.write_nexthops(g, packed(self.nexthops))
            dp.set_epoch(g, self.epoch)
        dp.set_local_addresses(local_keys(self.links))
        dp.flip(0)
        ns.save_plan(0, plan)
        ns.save_plan(1, other)
        self.build_rec = Build(id=build_id, constants=plan.constants(),
                               source=source_digest(),
                               limits=dataclasses.asdict(plan.limits), verifier=dp.verifier,
                               created=time.time())

    def unchanged(self) -> ApplyResult | None:
        """The result when the live generation already holds this policy, attached as
        asked; None when there is something to write.  A live generation changed by hand
        is written afresh into the other one, and no longer vouched for."""
        dp, state, plan, policy = self.old, self.state, self.plan, self.policy
        assert dp is not None
        active = dp.active
        rec = state.generation(active)
        if rec is not None and rec.digest == plan.digest() \
                and _same_interfaces(state.interfaces, self.found) \
                and hops(self.nexthops) == rec.nexthops \
                and rec.sets == (sets_record(policy) if policy.sets else None) \
                and _attachments_intact(self.links, dp.prog_ids(), state.interfaces):
            if not changed_maps(dp, active, rec):
                dp.close()
                assert state.build is not None   # a recorded generation has its build
                remove_stale_builds(self.ns, state.build)
                if state.pending is not None:
                    self.state = state = dataclasses.replace(state, pending=None)
                    self.ns.write_state(state)
                return ApplyResult(policy.source, active, False, diff(plan, plan),
                                   as_json(state.interfaces), unchanged=True)
            self.tampered = active
        return None

    def write(self) -> None:
        """The plan into the inactive generation of the live build: only the difference to
        what it holds (the plan saved when it was written, if the state file vouches for
        it; else read back from the maps)."""
        dp = self.dp = self.old
        assert dp is not None and self.state.build is not None
        ns, plan = self.ns, self.plan
        gen = self.gen = 1 - dp.active
        rec = self.state.generation(gen)
        holds = ns.load_plan(gen, rec.digest if rec is not None else None)
        ns.forget_plan(gen)
        self.change = dp.write_plan(plan, gen, holds=holds)
        dp.write_nexthops(gen, packed(self.nexthops))
        dp.set_epoch(gen, self.epoch)
        dp.set_local_addresses(local_keys(self.links))
        ns.save_plan(gen, plan)
        crash_point("written")
        self.build_rec = self.state.build

    def describe(self) -> None:
        """The new generation's record (and, for a policy with sets, the snapshot the set
        verbs edit from: netctl/datapath/setctl.py)."""
        self.record = dataclasses.replace(generation_record(self.policy, self.plan),
                                          nexthops=hops(self.nexthops))
        if self.policy.text is not None:   # for netctl show
            self.record.text_sha256 = self.ns.save_text(self.policy.text)
        if self.policy.sets:
            from .setctl import save_snapshot

            save_snapshot(self.ns, self.policy, self.record)

    def record_pending(self) -> None:
        """Attaching the new build's programs is what makes it live, and a kill may land
        between that and the state write after it: so the build is recorded as pending
        first, and status believes the programs the interfaces actually run."""
        assert self.build_rec is not None and self.record is not None
        self.ns.write_state(dataclasses.replace(self.state, pending=Pending(
            self.build_rec, self.record,
            {t.name: interface_record(t, link, hooks, False) for t, link, hooks in self.found})))
        crash_point("built")

    def attach(self) -> None:
        """The programs on every interface; on any failure every change is undone, a new
        build removed and the state file put back as it was."""
        dp = self.dp
        assert dp is not None and self.build_rec is not None
        undo: list = []
        try:
            self.interfaces = attach_all(self.links, dp.programs, self.found,
                                         self.state.interfaces, undo)
            crash_point("attached")
        except BaseException:
            undo_all(undo)
            if self.reload:
                dp.close()
                self.ns.remove_build(self.build_rec.id)
                if self.had_state:
                    self.ns.write_state(self.state)
                else:
                    self.ns.state_file.unlink(missing_ok=True)
            elif self.old is not None:
                self.old.close()
            raise

    def record_state(self) -> None:
        """The new generation described in the state file (not yet live)."""
        assert self.dp is not None and self.record is not None and self.build_rec is not None
        previous = self.state.generations
        generations = {} if self.reload else dict(previous)
        generations[self.gen] = self.record
        if self.tampered is not None:   # its saved plan is not what it holds: read it back
            generations[self.tampered] = generations[self.tampered].unvouched()
        if self.reload:
            generations[1] = generations[0] if self.previous is None else self.previous[1]
        self.carried = (self.state.carried or Carried()).copy()
        self.new_state = dataclasses.replace(
            self.state, build=self.build_rec, generations=generations,
            interfaces=self.interfaces, carried=self.carried, netns=netns_name(),
            epoch=self.epoch, pending=None)
        self.ns.write_state(self.new_state)
        self.ns.remove_texts_but({g.text_sha256 for g in generations.values()
                                  if g.text_sha256})
        crash_point("recorded")

    def flip(self) -> None:
        """The new generation made live, in one word (with --confirm, until a deadline)."""
        assert self.dp is not None
        if self.confirm is not None:
            from .confirm import deadline_after

            self.deadline = deadline_after(self.confirm)
            self.dp.flip(self.gen, self.deadline[0])
        else:
            self.dp.flip(self.gen)
        crash_point("flipped")

    def finish(self) -> ApplyResult:
        dp, ns, new_state, carried = self.dp, self.ns, self.new_state, self.carried
        assert dp is not None and new_state is not None and self.build_rec is not None
        previous = self.state.generations
        old_active = None if self.reload else 1 - self.gen
        warnings: list[str] = []
        detached = detach_removed(self.links, self.state.interfaces, self.interfaces, warnings)
        sync_kernel_routes(self.links, self.policy, self.nexthops, warnings)

        # Counters of the generation (or build) packets just left, carried over by rule name.
        settle()
        if self.reload and self.old is not None:
            old_gen = self.old.active
            carry_rules(carried, previous.get(old_gen), self.old, old_gen)
            carry_stats(carried, self.old)
            self.old.close()
        elif old_active is not None:
            carry_rules(carried, previous.get(old_active), dp, old_active)
            if old_active != self.gen and self.confirm is None:   # --confirm: it holds the
                self.catch_up(old_active)                          # policy to come back
        remove_stale_builds(ns, self.build_rec)
        keep = set(self.plan.rule_names)
        carried.rules = {k: v for k, v in carried.rules.items() if k in keep}
        new_state.carried = carried
        if self.confirm is not None:
            from .confirm import spawn_watcher

            before = new_state.generations.get(1 - self.gen)
            new_state.confirm = Confirm(
                gen=self.gen, deadline=self.deadline[0], wall_deadline=self.deadline[1],
                policy=self.record.policy if self.record else self.policy.source,
                previous=(before.policy or None) if before is not None else None,
                watcher=spawn_watcher())
        ns.write_state(new_state)
        dp.close()
        assert self.change is not None
        return ApplyResult(self.policy.source, self.gen, self.reload, self.change,
                           as_json(self.interfaces), detached, warnings)

    def catch_up(self, gen: int) -> None:
        """After the flip (and once no packet is judged by it any more: settle()), write the
        new policy into the generation packets just left too, so that both hold it and the
        next apply's inactive generation differs from its plan by that apply's change alone:
        a one-rule edit right after a large one writes a few entries, not the large one
        again.  Off the critical path: the new policy is live before this starts.  A kill
        half way leaves that generation's saved plan forgotten: the next apply reads it
        back."""
        dp, ns, new_state = self.dp, self.ns, self.new_state
        assert dp is not None and new_state is not None and self.record is not None
        # The record as this apply left it: a generation changed by hand is no longer
        # vouched for (digest None), so what it holds is read back from the maps, not taken
        # on trust.
        rec = new_state.generations.get(gen)
        holds = ns.load_plan(gen, rec.digest if rec is not None else None)
        ns.forget_plan(gen)
        new_state.generations[gen] = (self.state.generations.get(gen)
                                      or Generation()).unvouched()
        ns.write_state(new_state)
        dp.write_plan(self.plan, gen, holds=holds)
        dp.write_nexthops(gen, packed(self.nexthops))
        ns.save_plan(gen, self.plan)
        new_state.generations[gen] = self.record


# ---- counters carried over -------------------------------------------------------------------

def carry_rules(carried: Carried, record: Generation | None, dp: Datapath, gen: int) -> None:
    """Add generation ``gen``'s per-rule counters to ``carried``, by rule name."""
    if record is None:
        return
    names = record.rules
    for name, (packets, nbytes) in zip(names, dp.rule_counters(gen, len(names)), strict=True):
        if packets or nbytes:
            p, b = carried.rules.get(name, (0, 0))
            carried.rules[name] = [p + packets, b + nbytes]


def carry_stats(carried: Carried, dp: Datapath) -> None:
    """Add a build's stat slots to ``carried`` (before the build goes)."""
    stats = carried.all_stats()
    for i, (packets, nbytes) in enumerate(dp.stats()):
        stats[i] = [stats[i][0] + packets, stats[i][1] + nbytes]
    carried.stats = stats
