"""A node's status record, how often it is written, and the fleet's convergence.

An agent writes one key, /netctl/v1/status/NODE, and only when something in it changed: the
applied digest, the generation of the assignment it acted on, or the error.  Those writes
come at most once a second (a burst of changes ends in one write of the last state);
counters alone, which change all the time on a busy host, refresh the record at most every
``counters_interval`` seconds.  Per-node status writes at every change are what overloaded
etcd in other agents of this kind until they turned them off.

Everything here is pure: the clock is passed in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .keys import Assignment, short

# The fields whose change is news (written within a second); the rest (counters, time) ride
# along or refresh slowly.
SIGNIFICANT = ("policy", "digest", "generation", "error", "error_digest", "dry_run")


@dataclass
class StatusWriter:
    """When to write a node's status.  ``want`` answers for a record: None (nothing new),
    0.0 (write now) or the seconds to wait; ``written`` records a write."""

    min_interval: float = 1.0
    counters_interval: float = 30.0
    last: dict[str, Any] | None = None
    last_time: float = field(default=float("-inf"))

    def want(self, record: dict[str, Any], now: float) -> float | None:
        if self.last is None or _significant(record) != _significant(self.last):
            wait = self.min_interval
        elif record.get("counters") != self.last.get("counters"):
            wait = self.counters_interval
        else:
            return None
        return max(0.0, self.last_time + wait - now)

    def written(self, record: dict[str, Any], now: float) -> None:
        self.last, self.last_time = dict(record), now

    def forget(self) -> None:
        """After a reconnect: the key may have changed meanwhile; write the next one."""
        self.last = None


def _significant(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(k) for k in SIGNIFICANT)


def node_record(policy: str | None, applied: str | None, generation: int,
                error: str | None = None, error_digest: str | None = None,
                counters: dict[str, int] | None = None, dry_run: bool = False,
                now: float | None = None) -> dict[str, Any]:
    """The JSON of a status key."""
    return {"policy": policy, "digest": applied, "generation": generation, "error": error,
            "error_digest": error_digest, "counters": counters or {}, "dry_run": dry_run,
            "time": round(time.time() if now is None else now, 3)}


# ---- the fleet ---------------------------------------------------------------------------

CONVERGED, PENDING, FAILED, DEAD, UNASSIGNED = (
    "converged", "pending", "failed", "dead", "unassigned")


def node_state(assignment: Assignment | None, status: dict[str, Any] | None,
               alive: bool) -> str:
    """One node's state against what it should run:

    * dead: its lease expired (no agent heard from within the lease's TTL);
    * unassigned: alive with nothing to run (a push never selected it);
    * failed: it acted on its assignment and reports an error (the policy before stays live);
    * converged: it runs the assigned digest, no error;
    * pending: it has not acted on its assignment yet.
    """
    if not alive:
        return DEAD
    if assignment is None:
        return UNASSIGNED
    if status is None or status.get("generation") != assignment.generation:
        return PENDING
    if status.get("error"):
        return FAILED
    if status.get("digest") == assignment.digest:
        return CONVERGED
    return PENDING


def is_converged(state: str) -> bool:
    return state in (CONVERGED, UNASSIGNED)


def fleet_rows(registered: dict[str, dict[str, Any]], assignments: dict[str, Assignment],
               statuses: dict[str, dict[str, Any]], heartbeats: dict[str, float | None],
               now: float) -> list[dict[str, Any]]:
    """One row per node known to any of the three key ranges, sorted by name (the JSON of
    `netctl fleet status -o json`'s ``nodes``)."""
    rows = []
    for node in sorted(set(registered) | set(assignments) | set(statuses)):
        a, s, alive = assignments.get(node), statuses.get(node), node in registered
        state = node_state(a, s, alive)
        counters = (s or {}).get("counters") or {}
        rows.append({
            "node": node, "state": state, "converged": is_converged(state),
            "labels": (registered.get(node) or {}).get("labels") or {},
            "policy": a.policy if a else None,
            "desired": a.digest if a else None,
            "desired_generation": a.generation if a else None,
            "applied": (s or {}).get("digest"),
            "generation": (s or {}).get("generation"),
            "heartbeat_age": heartbeats.get(node) if alive else None,
            "status_age": round(now - s["time"], 1) if s and "time" in s else None,
            "error": (s or {}).get("error"),
            "dropped": counters.get("dropped"),
            "dry_run": bool((s or {}).get("dry_run")),
        })
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = (f"{'NODE':<16} {'STATE':<10} {'DESIRED':<12} {'APPLIED':<12} {'GEN':>4} "
            f"{'HEARTBEAT':>9} {'DROPPED':>9}  ERROR")
    lines = [head]
    for r in rows:
        beat = "dead" if r["state"] == DEAD else (
            f"{r['heartbeat_age']:.0f}s ago" if r["heartbeat_age"] is not None else "-")
        dropped = "-" if r["dropped"] is None else f"{r['dropped']:,}"
        gen = "-" if r["generation"] is None else str(r["generation"])
        lines.append(f"{r['node']:<16} {r['state']:<10} {short(r['desired']):<12} "
                     f"{short(r['applied']):<12} {gen:>4} {beat:>9} {dropped:>9}  "
                     f"{(r['error'] or '').splitlines()[0] if r['error'] else ''}")
    done = sum(1 for r in rows if r["converged"])
    lines.append(f"{done} of {len(rows)} node{'s' if len(rows) != 1 else ''} converged")
    return "\n".join(lines)


def loads(raw: bytes | str) -> dict[str, Any] | None:
    """A JSON record from etcd, or None when unreadable (a record is never trusted blindly)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
