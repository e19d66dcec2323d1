"""Live set edits: `netctl set list|add|del|reset`, and `netctl apply` keeping them.

An edit changes a named set of the live policy without a new policy file, as ``nft add
element`` does, and goes live through the normal apply path: the policy is compiled again
with the edit, the difference to the inactive generation is written, one word flips.  So
an edit is as atomic and crash-safe as any apply, and counters carry over as they do.

Where the edits live.  The live generation's record in the state file holds, per set, the
overlay of prefixes added and removed by hand (``netctl.policy.sets``); a `netctl apply`
reads it back and applies the policy with the overlay in force, so an address blocked by
hand stays blocked when the policy is applied again, even with a refreshed set file, until
it is deleted again or the set is reset.  Status shows the overlay.

What an edit starts from.  Each apply of a policy with sets also saves the policy as it was
applied, its sets as their files and elements gave them (a pickle in the namespace's
root-only state directory, named in the generation's record by a random token; an edit
keeps it, since it changes no base): the set verbs edit that with the record's overlay in
force, and never read the files again.  So an edit
changes exactly the set, whether or not the policy file or the set files were changed since
(those changes wait for the next `netctl apply`, which keeps the edits), and it works for a
policy applied from standard input.  A snapshot that does not match the live record (a kill
between the two writes) is refused with the way out: apply the policy again.

Edits and applies of one namespace are serialized by a lock of their own (taken before the
apply's), so two edits, or an edit and an apply, never lose one another's overlay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import pickle
import secrets
import time
from collections.abc import Iterator
from typing import Any

from ..errors import NetctlError
from ..kernel import privilege
from ..policy.model import Policy
from ..policy.sets import (
    EditOutcome,
    Prefix3,
    edit_set,
    format_prefix,
    replace_sets,
    set_items,
    sets_record,
    unknown_set,
    with_edits,
)
from .netns import Namespace
from .state import Generation, Request, State

SNAPSHOT = "applied.policy"


@contextlib.contextmanager
def edits_lock(ns: Namespace, timeout: float = 120.0) -> Iterator[None]:
    """Serialize set edits and applies in this namespace (an apply at a million prefixes
    takes seconds: the timeout allows for a few)."""
    ns.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = ns.state_dir / "sets.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() > deadline:
                    raise NetctlError(f"another netctl holds {path} for more than "
                                      f"{timeout:.0f} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


# ---- the snapshot of the applied policy ------------------------------------------------------

def save_snapshot(ns: Namespace, policy: Policy, record: Generation) -> None:
    """Save the policy being applied, its sets as their files and elements give them (the
    edits are in the record), for the set verbs, and name it in its generation's record
    (called by apply before the record is written).  A set edit starts from the snapshot
    and changes no base: then the snapshot is kept, not written again."""
    base = strip_edits(policy)
    known = _SNAPSHOTS.get(str(ns.state_dir))
    if known is not None and known[1] == base and (ns.state_dir / SNAPSHOT).exists():
        record.snapshot = known[0]
        return
    token = secrets.token_hex(8)
    ns.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = ns.state_dir / f".{SNAPSHOT}.{os.getpid()}.tmp"
    # The path as recorded (absolute), so that an edit made from another directory records
    # the same policy file.
    base = dataclasses.replace(base, source=record.policy)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        pickle.dump({"token": token, "policy": base}, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, ns.state_dir / SNAPSHOT)
    _SNAPSHOTS[str(ns.state_dir)] = (token, base)
    record.snapshot = token


# The snapshot this process loaded or saved, per state directory: (token, base policy).
_SNAPSHOTS: dict[str, tuple[str, Policy]] = {}


def strip_edits(policy: Policy) -> Policy:
    """The policy with its sets as their files and elements give them."""
    edited = {s.name: s.base for s in policy.sets if s.base is not None}
    return replace_sets(policy, edited) if edited else policy


def load_snapshot(ns: Namespace, record: Generation) -> Policy:
    """The live policy as it was applied, its sets as their files and elements give them
    (``live_policy`` puts the record's edits in force)."""
    if not record.sets:
        raise NetctlError(f"the live policy ({record.policy}) defines no sets")
    known = _SNAPSHOTS.get(str(ns.state_dir))
    if known is not None and known[0] == record.snapshot:
        return known[1]
    again = (f"run 'netctl apply {record.policy}' again (it keeps the live edits) "
             "and retry")
    try:
        with open(ns.state_dir / SNAPSHOT, "rb") as f:
            saved = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError,
            ValueError) as exc:
        raise NetctlError(f"the snapshot of the applied policy is unreadable ({exc}): "
                          f"{again}") from None
    if not isinstance(saved, dict) or saved.get("token") != record.snapshot \
            or not isinstance(saved.get("policy"), Policy):
        raise NetctlError(f"the snapshot of the applied policy does not match what is live "
                          f"(an apply was interrupted?): {again}")
    _SNAPSHOTS[str(ns.state_dir)] = (saved["token"], saved["policy"])
    return saved["policy"]


def live_policy(ns: Namespace, record: Generation) -> Policy:
    """The live policy: the snapshot with the record's live edits in force."""
    policy, _gone = with_edits(load_snapshot(ns, record), live_edits(record))
    return policy


def kept_text(ns: Namespace, record: Generation) -> str:
    """The text of the policy a generation holds, as it was applied (kept by apply beside
    the state, by its digest)."""
    import hashlib

    again = "apply it again to keep it"
    if not record.text_sha256:
        raise NetctlError(f"the policy {record.policy or '(none)'} was applied by a netctl "
                          f"that did not keep its text; {again}")
    try:
        with open(ns.text_file(record.text_sha256), encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise NetctlError(f"the kept text of {record.policy} is unreadable ({exc.strerror}); "
                          f"{again}") from None
    if hashlib.sha256(text.encode()).hexdigest() != record.text_sha256:
        raise NetctlError(f"the kept text of {record.policy} is not what was applied; {again}")
    return text


def kept_policy(ns: Namespace, record: Generation) -> Policy:
    """The policy a generation holds: its sets as applied and edited (the snapshot), not
    as their files are now; else its kept text, loaded again."""
    if record.sets:
        return live_policy(ns, record)
    from ..policy.load import load_policy_text

    return load_policy_text(kept_text(ns, record), record.policy)


# ---- what is live -----------------------------------------------------------------------------

def live_record(ns: Namespace) -> tuple[State, Generation | None]:
    """(state, the live generation's record or None when nothing is applied)."""
    from .live import live_generation

    state, _gen, record = live_generation(ns)
    return state or State(), record


def live_edits(record: Generation | None) -> dict[str, dict[str, list[str]]]:
    """The overlay of each set in force in a generation's record."""
    return record.set_edits() if record is not None else {}


def apply_keeping_edits(policy: Policy, devs: list[str] | None = None,
                        xdp_mode: str | None = None, dry_run: bool = False,
                        extra_cflags: tuple[str, ...] = (), max_entries: int | None = None,
                        ssh: str | None = None, confirm: int | None = None,
                        attach: str | None = None):
    """`netctl apply`: the policy with the live edits of its sets in force.  Edits of a
    set the policy no longer defines are dropped (a warning says so)."""
    from .control import apply

    privilege.require("apply", *privilege.LOAD)
    ns = Namespace.current()
    if not policy.sets and not _any_edits(_peek_state(ns)):
        return apply(policy, devs=devs, xdp_mode=xdp_mode, dry_run=dry_run,
                     extra_cflags=extra_cflags, max_entries=max_entries, ssh=ssh, confirm=confirm,
                     attach=attach)
    with edits_lock(ns):
        _state, record = live_record(ns)
        merged, gone = with_edits(policy, live_edits(record))
        result = apply(merged, devs=devs, xdp_mode=xdp_mode, dry_run=dry_run,
                       extra_cflags=extra_cflags, max_entries=max_entries, ssh=ssh, confirm=confirm,
                       attach=attach)
    result.sets = sets_record(merged)
    result.warnings += [f"the live edits of set @{name} are dropped: the policy no longer "
                        "defines that set" for name in gone]
    return result


def _peek_state(ns: Namespace) -> State | None:
    try:
        return ns.read_state()
    except OSError:   # unreadable here: the apply itself says why
        return None


def _any_edits(state: State | None) -> bool:
    """Whether any generation of the state has live set edits (read only)."""
    return state is not None and any(live_edits(record)
                                     for record in state.generations.values())


# ---- the verbs -----------------------------------------------------------------------------

def _live_policy(ns: Namespace) -> tuple[State, Generation, Policy]:
    state, record = live_record(ns)
    if record is None:
        raise NetctlError("nothing is applied in this network namespace: 'netctl apply FILE' "
                          "first")
    return state, record, live_policy(ns, record)


def set_list(name: str | None = None) -> dict[str, Any]:
    """The live sets (no name) or one live set with its prefixes."""
    privilege.require("set list", *privilege.DATAPATH)
    ns = Namespace.current()
    _state, record, policy = _live_policy(ns)
    if name is None:
        return {"policy": record.policy,
                "sets": [dict(rec, name=n) for n, rec in (record.sets or {}).items()]}
    pset = policy.prefix_set(name)
    if pset is None:
        from ..errors import PolicyError, Problem

        raise PolicyError([Problem("command line", 0, None, unknown_set(policy, name))])
    rec = (record.sets or {}).get(name, {})
    return {"name": name, "policy": record.policy, "file": pset.source,
            "prefixes": len(pset), "v4": len(pset.v4), "v6": len(pset.v6),
            "added": rec.get("add", []), "removed": rec.get("del", []),
            "elements": [format_prefix(*item) for item in set_items(pset)]}


def set_edit(name: str, add: list[Prefix3] = (), delete: list[Prefix3] = (),  # type: ignore[assignment]
             reset: bool = False) -> tuple[EditOutcome, Any]:
    """Edit one live set (PolicyError, nothing changed, for an unknown set or a prefix to
    delete that it does not hold) and make the edit live; returns the outcome and the
    ApplyResult (None when there was nothing to change)."""
    from .control import apply

    privilege.require("set", *privilege.LOAD)
    ns = Namespace.current()
    with edits_lock(ns):
        state, _record, policy = _live_policy(ns)
        edited, outcome = edit_set(policy, name, add, delete, reset)
        if edited is policy:
            return outcome, None
        request = state.request or Request()
        result = apply(edited, devs=request.devs, xdp_mode=request.xdp_mode,
                       attach=request.attach)
    result.sets = sets_record(edited)
    return outcome, result
