"""`netctl push`: store a policy version and roll it out, canaries first (docs/fleet.md).

1. Validate and compile the file here: an invalid policy never reaches etcd (exit 2).
2. Take the push lock in one transaction that compares the push sequence key's revision
   and the lock's absence, and bumps the sequence: two pushes never interleave; the second
   waits for the first (up to --timeout).  The lock is held under a lease kept alive while
   the push runs, so a killed push frees it within the lease's TTL.  Every write of the push
   compares the lock's create revision: a push that lost its lock writes nothing more.
3. Store the text under /netctl/v1/policies/NAME/DIGEST, assign it to the canaries, wait
   until each reports the digest applied at this push's generation, then the rest.
4. A canary that fails (or does not report within the timeout) stops the rollout: the
   canaries go back to the assignment they had, the other nodes were never touched, and the
   exit status is 1 with the node and its error.  A node of the second wave that reports an
   error is put back on its previous assignment too (its agent kept the policy before
   live); one that does not report (cut off, stopped) keeps the new assignment and applies
   it when its agent is back.  Either way the exit status is 1 and names the node.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .keys import (
    ASSIGNMENTS,
    NODES,
    POLICIES,
    PUSH_LOCK,
    PUSH_SEQ,
    STATUS,
    Assignment,
    FleetError,
    Selector,
    assignment_key,
    check_name,
    digest,
    node_of,
    policy_key,
    policy_of,
)
from .status import loads
from .store import KV, Store, delete_op, put_op, same_create, same_mod

LOCK_TTL = 10
POLL = 0.05


@dataclass
class PushResult:
    policy: str
    digest: str
    generation: int = 0
    nodes: list[str] = field(default_factory=list)
    canaries: list[str] = field(default_factory=list)
    applied: dict[str, float] = field(default_factory=dict)   # node -> seconds to apply
    failed: dict[str, str] = field(default_factory=dict)      # node -> error
    errors: set[str] = field(default_factory=set)   # the failed nodes that reported an error
    restored: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and len(self.applied) == len(self.nodes)

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "digest": self.digest, "generation": self.generation,
                "nodes": self.nodes, "canaries": self.canaries, "converged": self.ok,
                "applied": {n: round(s, 3) for n, s in self.applied.items()},
                "failed": self.failed, "restored": self.restored,
                "untouched": self.untouched, "seconds": round(self.seconds, 3)}


def policy_name(path: str, name: str | None) -> str:
    if name:
        return check_name(name, "policy name")
    base = os.path.basename(path)
    for ext in (".yaml", ".yml"):
        if base.endswith(ext):
            base = base[:-len(ext)]
    return check_name(base or "policy", "policy name (from the file name; give --name)")


def read_policy(path: str) -> str:
    """Validate and compile the file as `netctl validate` would; its text."""
    from ..policy.compile import compile_fitting
    from ..policy.load import load_policy

    policy = load_policy(path)
    compile_fitting(policy)
    assert policy.text is not None
    return policy.text


class PushLock:
    """The push lock: acquired in a transaction on the sequence key's revision, held under
    a lease a thread keeps alive."""

    def __init__(self, store: Store, timeout: float, who: str):
        self.store, self.timeout, self.who = store, timeout, who
        self.lease = 0
        self.create_revision = 0
        self.generation = 0
        self._stop = threading.Event()

    def __enter__(self) -> PushLock:
        deadline = time.monotonic() + self.timeout
        while True:
            _rev, found = self.store.read(keys=(PUSH_SEQ, PUSH_LOCK))
            seq, lock = found.get(PUSH_SEQ), found.get(PUSH_LOCK)
            if lock is None:
                number = int(seq.value or b"0") + 1 if seq else 1
                holder = json.dumps({"by": self.who, "push": number,
                                     "since": round(time.time(), 3)})
                # A lease of its own for each attempt: one granted before a long wait for
                # another push would have expired by now.
                self.lease = self.store.grant(LOCK_TTL)
                if self.store.txn([same_mod(PUSH_SEQ, seq.mod_revision if seq else 0),
                                   same_create(PUSH_LOCK, 0)],
                                  [put_op(PUSH_SEQ, str(number)),
                                   put_op(PUSH_LOCK, holder, self.lease)]):
                    break
                self.store.revoke(self.lease)
                continue   # another push won the race: read again
            if time.monotonic() > deadline:
                raise FleetError(f"another push holds the lock ({lock.value.decode()}); "
                                 "waited --timeout")
            time.sleep(0.2)
        mine = self.store.get(PUSH_LOCK)
        assert mine is not None
        self.create_revision, self.generation = mine.create_revision, number
        threading.Thread(target=self._keep, daemon=True, name="netctl-push-lock").start()
        return self

    def _keep(self) -> None:
        store = Store(self.store.endpoint)
        try:
            while not self._stop.wait(LOCK_TTL / 3):
                store.keepalive(self.lease)
        except FleetError:
            pass
        finally:
            store.close()

    def held(self) -> dict[str, Any]:
        """The comparison every write of the push makes."""
        return same_create(PUSH_LOCK, self.create_revision)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        try:
            self.store.txn([self.held()], [delete_op(PUSH_LOCK)])
            self.store.revoke(self.lease)
        except FleetError:
            pass   # etcd gone: the lease frees the lock


def push(store: Store, path: str, selector: Selector, canary: int = 0,
         timeout: float = 120.0, name: str | None = None,
         say: Callable[[str], None] = lambda _t: None) -> PushResult:
    started = time.monotonic()
    deadline = started + timeout
    text = read_policy(path)
    pname = policy_name(path, name)
    d = digest(text)
    result = PushResult(pname, d)
    who = f"{os.uname().nodename} pid {os.getpid()}"
    with PushLock(store, timeout, who) as lock:
        result.generation = lock.generation
        _rev, found = store.read(prefixes=(NODES, ASSIGNMENTS))
        registered = {node_of(k, NODES): loads(kv.value) or {}
                      for k, kv in found.items() if k.startswith(NODES)}
        before = {node_of(k, ASSIGNMENTS): kv for k, kv in found.items()
                  if k.startswith(ASSIGNMENTS)}
        nodes = selector.pick(registered)
        if not nodes:
            raise FleetError(f"no registered node matches {selector}")
        result.nodes = nodes
        canaries, rest = nodes[:max(0, canary)], nodes[max(0, canary):]
        result.canaries = canaries
        if not store.txn([lock.held()], [put_op(policy_key(pname, d), text)]):
            raise FleetError("lost the push lock (its lease expired)")
        say(f"policy {pname} {d[:12]} stored; push {lock.generation} to {len(nodes)} "
            f"node{'s' if len(nodes) != 1 else ''}"
            + (f", canar{'ies' if len(canaries) != 1 else 'y'} {', '.join(canaries)} first"
               if canaries else ""))
        waves = [w for w in (canaries, rest) if w]
        for number, wave in enumerate(waves):
            is_canary = bool(canaries) and number == 0
            _assign(store, lock, wave, Assignment(pname, d, lock.generation), before)
            _wait(store, wave, pname, d, lock.generation, deadline, result, say)
            failed = [n for n in wave if n in result.failed]
            if failed:
                # Canaries: all back, the rollout stops.  The second wave: a node that
                # reported an error goes back (its agent kept the policy before live); a
                # node that did not report (cut off, stopped) keeps the new assignment and
                # converges when its agent is back.
                back = canaries if is_canary else [n for n in failed if n in result.errors]
                _restore(store, lock, back, before)
                result.restored = back
                if is_canary:
                    result.untouched = rest
                break
        if result.ok:
            _forget_unused(store, lock, pname, d)
    result.seconds = time.monotonic() - started
    return result


def _assign(store: Store, lock: PushLock, nodes: list[str], assignment: Assignment,
            before: dict[str, KV]) -> None:
    for chunk in _chunks(nodes, 100):   # etcd's default limit: 128 operations a transaction
        ops = []
        for node in chunk:
            previous = before.get(node)
            interfaces = (Assignment.from_json(previous.value).interfaces
                          if previous is not None else None)
            ops.append(put_op(assignment_key(node), Assignment(
                assignment.policy, assignment.digest, assignment.generation,
                interfaces).to_json()))
        if not store.txn([lock.held()], ops):
            raise FleetError("lost the push lock (its lease expired); nothing more written")


def _restore(store: Store, lock: PushLock, nodes: list[str], before: dict[str, KV]) -> None:
    """Put ``nodes`` back on the assignment they had before this push (none: unassigned)."""
    for chunk in _chunks(nodes, 100):
        ops = [put_op(assignment_key(n), before[n].value) if n in before
               else delete_op(assignment_key(n)) for n in chunk]
        store.txn([lock.held()], ops)


def _wait(store: Store, nodes: list[str], pname: str, d: str, generation: int,
          deadline: float, result: PushResult, say: Callable[[str], None]) -> None:
    """Until every node of ``nodes`` applied ``d`` at ``generation``, failed, or died."""
    started = time.monotonic()
    waiting = set(nodes)
    while waiting:
        _rev, found = store.read(prefixes=(STATUS, NODES))
        for node in sorted(waiting):
            status = loads(found[STATUS + node].value) if STATUS + node in found else None
            if NODES + node not in found:
                result.failed[node] = "the agent's lease expired (agent stopped or cut off)"
            elif status is None or status.get("generation") != generation:
                continue
            elif status.get("error") and status.get("error_digest") == d:
                result.failed[node] = str(status["error"])
                result.errors.add(node)
            elif status.get("digest") == d:
                result.applied[node] = time.monotonic() - started
                say(f"{node}: applied {pname} {d[:12]} "
                    f"({result.applied[node]:.2f} s)")
            else:
                continue
            waiting.discard(node)
            if node in result.failed:
                say(f"{node}: FAILED: {result.failed[node]}")
        if waiting and time.monotonic() > deadline:
            for node in sorted(waiting):
                result.failed[node] = "no report of the new policy before --timeout"
            return
        if waiting:
            time.sleep(POLL)


def _forget_unused(store: Store, lock: PushLock, pname: str, keep: str) -> None:
    """Delete the versions of ``pname`` no assignment names any more (after a rollout that
    converged; a version an assignment still names is never deleted)."""
    _rev, found = store.read(prefixes=(POLICIES + pname + "/", ASSIGNMENTS))
    named = set()
    for key, kv in found.items():
        if key.startswith(ASSIGNMENTS):
            a = loads(kv.value) or {}
            named.add((a.get("policy"), a.get("digest")))
    stale = [key for key in found if key.startswith(POLICIES)
             and policy_of(key) != (pname, keep) and policy_of(key) not in named]
    for chunk in _chunks(stale, 100):
        store.txn([lock.held()], [delete_op(k) for k in chunk])


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def fleet_status(store: Store) -> list[dict[str, Any]]:
    """`netctl fleet status`: one row per node (netctl/fleet/status.py, fleet_rows)."""
    from .status import fleet_rows

    _rev, found = store.read(prefixes=(NODES, ASSIGNMENTS, STATUS))
    registered, assignments, statuses = {}, {}, {}
    heartbeats: dict[str, float | None] = {}
    for key, kv in found.items():
        if key.startswith(NODES):
            node = node_of(key, NODES)
            registered[node] = loads(kv.value) or {}
            heartbeats[node] = store.lease_age(kv.lease) if kv.lease else None
            if kv.lease and heartbeats[node] is None:   # expired since the read
                del registered[node]
        elif key.startswith(ASSIGNMENTS):
            try:
                assignments[node_of(key, ASSIGNMENTS)] = Assignment.from_json(kv.value)
            except FleetError:
                continue
        elif key.startswith(STATUS):
            record = loads(kv.value)
            if record is not None:
                statuses[node_of(key, STATUS)] = record
    return fleet_rows(registered, assignments, statuses, heartbeats, time.time())
