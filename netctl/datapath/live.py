"""What is live in this network namespace: the state as it describes what runs, the live
datapath opened from its pins, and the checks every verb shares (is a build reusable, do
the maps hold what was written, which builds are stale)."""

from __future__ import annotations

import dataclasses
import os

from ..policy.plan import Limits, MapPlan
from . import attach as att
from . import maps as mapio
from .build import source_digest, unconfirmed_pin
from .hooks import runs_any
from .instance import Datapath, PinsMissing
from .netns import Namespace
from .state import Build, Generation, State


def open_live(ns: Namespace, state: State | None) -> tuple[Datapath | None, str | None]:
    """The live datapath from its pins, or (None, why not)."""
    if state is None or state.build is None:
        return None, "nothing applied"
    return _open_build(ns, state.build)


def _open_build(ns: Namespace, build: Build) -> tuple[Datapath | None, str | None]:
    try:
        return Datapath.open(ns.build_dir(build.id), build.constants,
                             ct_pin=ns.ct_pin(build.constants)), None
    except PinsMissing as exc:
        return None, str(exc)


def live_state(ns: Namespace) -> tuple[State | None, list[str]]:
    """The state file as it describes what runs, and what it had to correct.

    A rebuild records its new build as pending, attaches its programs, then records it as
    the build.  A kill between the two leaves interfaces running the pending build: then it
    is what judges their traffic, and what status, conntrack and the monitor must read."""
    state = ns.read_state()
    if state is None or state.pending is None:
        return state, []
    pending = state.pending
    dp, _why = _open_build(ns, pending.build)
    if dp is None:
        return state, []
    with dp:
        ids = dp.prog_ids()
    with att.Links() as links:
        running = [name for name in pending.interfaces if runs_any(links, name, ids)]
    if not running:
        return state, []
    record = pending.generation
    interfaces = dict(state.interfaces)
    interfaces.update((name, pending.interfaces[name]) for name in running)
    note = (f"an apply of {record.policy} was killed after attaching its new programs to "
            f"{', '.join(running)} and before recording them: they are live (any hook still "
            "on the old programs is listed below); 'netctl apply' completes the apply")
    return dataclasses.replace(state, build=pending.build, generations={0: record, 1: record},
                               interfaces=interfaces), [note]


def live_generation(ns: Namespace) -> tuple[State | None, int | None, Generation | None]:
    """(state as it describes what runs, the active generation, its record): the generation
    None when no datapath is live, the record None when the state does not describe it."""
    state, _notes = live_state(ns)
    live, _why = open_live(ns, state)
    if live is None:
        return state, None, None
    with live:
        gen = live.active
    return state, gen, state.generation(gen) if state is not None else None


# ---- builds ---------------------------------------------------------------------------------

def build_limits(state: State | None) -> Limits:
    """The capacities the live build was made with (the defaults when nothing is built)."""
    return state.build.capacities() if state is not None and state.build is not None \
        else Limits()


def larger(a: Limits, b: Limits) -> Limits:
    return Limits(**{f.name: max(getattr(a, f.name), getattr(b, f.name))
                     for f in dataclasses.fields(Limits)})


def fits(want: Limits, have: Limits) -> bool:
    return all(getattr(want, f.name) <= getattr(have, f.name)
               for f in dataclasses.fields(Limits))


def reusable(state: State | None, plan: MapPlan) -> bool:
    """Whether the live build runs this plan's programs with its capacities."""
    build = state.build if state is not None else None
    return build is not None and build.constants == plan.constants() \
        and build.source == source_digest()


def stale_builds(ns: Namespace, build: Build) -> list[str]:
    """Builds no state refers to: the old one after a rebuild, or one an apply killed half
    way left behind."""
    ct_pin = ns.ct_pin(build.constants)
    keep = (build.id, os.path.basename(ct_pin), os.path.basename(unconfirmed_pin(ct_pin)))
    return [b for b in ns.builds() if b not in keep]


def remove_stale_builds(ns: Namespace, build: Build) -> None:
    """Remove the stale builds (their programs are attached nowhere: the live build's are,
    or this apply has just attached them)."""
    for stale in stale_builds(ns, build):
        ns.remove_build(stale)


def changed_maps(dp: Datapath, gen: int, record: Generation) -> list[str]:
    """The maps whose generation ``gen`` does not hold what ``record`` says was written there
    (a map changed by hand): read back and compared in canonical form.  Records written
    before netctl kept these fingerprints vouch for nothing and are taken on trust."""
    want = record.contents
    if not want:
        return []
    have = mapio.contents_digests(dp.read_generation(gen), like=want, read_back=True)
    changed = [name for name, digest in want.items() if have.get(name) != digest]
    if changed:   # a trie read from its generation's mark on is read whole before blamed
        again = mapio.contents_digests(dp.read_generation(gen, changed, whole=True),
                                        like=want, read_back=True)
        have.update((name, again[name]) for name in changed)
        changed = [name for name, digest in want.items() if have.get(name) != digest]
    return changed
