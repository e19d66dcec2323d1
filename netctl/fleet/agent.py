"""`netctl agent`: one node's side of the fleet (docs/fleet.md).

    register   /netctl/v1/nodes/NODE under a lease, kept alive by its own thread
    resync     read the assignment (one transaction: value and revision), act on it
    watch      the assignment key from the next revision; every ``check`` seconds a fresh
               read as well, which catches what a watch can miss (a compacted revision, a
               stream cut without a word)
    act        fetch the assigned policy version, check its digest, apply it through the
               path `netctl apply` takes (netctl/datapath/applyfile.py), or with --dry-run
               load and compile it only; report to /netctl/v1/status/NODE

A failed apply leaves the policy before live (the apply's own guarantee) and is reported.
When etcd is unreachable nothing touches the datapath: the agent backs off with jitter and
resynchronises when etcd is back.  SIGTERM ends the agent and leaves the datapath running;
a restarted agent finds the same policy file already live and applies nothing.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import NetctlError
from .backoff import Backoff
from .keys import (
    Assignment,
    FleetError,
    assignment_key,
    digest,
    node_key,
    policy_key,
    status_key,
)
from .status import StatusWriter, node_record
from .store import Endpoint, Store


class _Reconnect(Exception):
    """The lease was lost or the keepalive thread lost etcd: start a new session."""


@dataclass
class Agent:
    endpoint: Endpoint
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    devs: tuple[str, ...] = ()         # --dev: this node's interfaces, whatever the policy names
    dry_run: bool = False
    lease_ttl: int = 10
    check: float = 5.0                 # seconds between fresh reads of the assignment
    state_dir: str = "/var/lib/netctl/agent"
    log: Any = sys.stderr

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.writer = StatusWriter()
        self.backoff = Backoff()
        # What this node runs, as far as the agent knows.
        self.policy: str | None = None
        self.applied: str | None = None
        self.generation = 0
        self.error: str | None = None
        self.error_digest: str | None = None
        self.counters: dict[str, int] = {}
        self.counters_time = float("-inf")
        self.seen_revision = 0      # mod revision of the assignment acted on
        self.pending: dict[str, Any] | None = None   # a status record not yet written

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.say(f"node {self.node}: agent {__version__} for {self.endpoint.url}"
                 f"{' (dry run: the kernel is never touched)' if self.dry_run else ''}"
                 f"{'; policies go on ' + ', '.join(self.devs) if self.devs else ''}")
        self._warm_up()
        store: Store | None = None
        while not self.stop.is_set():
            try:
                if store is None:
                    store = Store(self.endpoint)
                self.session(store)
            except (FleetError, _Reconnect) as exc:
                delay = self.backoff.step()
                self.say(f"{exc}; the datapath stays as it is; retrying in {delay:.1f} s")
                self.writer.forget()
                self.stop.wait(delay)
        if store is not None:
            store.close()
        self.say("stopped; the datapath stays as it is")
        return 0

    def _warm_up(self) -> None:
        """Import the loader and compiler (and, applying for real, the datapath) now: the
        first assignment then costs its own work only (50 agents importing at once took a
        push 2.5 s instead of 0.9)."""
        from ..policy import compile, load  # noqa: F401

        if not self.dry_run:
            from ..datapath import applyfile, control  # noqa: F401

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stop.set()
        self.events.put(None)

    def say(self, text: str) -> None:
        print(f"netctl agent: {text}", file=self.log, flush=True)

    # -- one connection to etcd ---------------------------------------------------------
    def session(self, store: Store) -> None:
        lease = store.grant(self.lease_ttl)
        lost = threading.Event()
        registration = json.dumps({"labels": self.labels, "version": __version__,
                                   "host": socket.gethostname(), "pid": os.getpid(),
                                   "dry_run": self.dry_run, "lease": lease,
                                   "started": round(time.time(), 3)}, sort_keys=True)
        store.put(node_key(self.node), registration, lease=lease)
        keeper = threading.Thread(target=self._keep_alive, args=(lease, lost), daemon=True,
                                  name="netctl-keepalive")
        keeper.start()
        cancel = None
        try:
            revision = self.resync(store)
            self.backoff.reset()
            self.say(f"registered (lease {lease:x}); watching {assignment_key(self.node)}")
            cancel = store.watch(assignment_key(self.node), revision + 1, self.events.put)
            next_check = time.monotonic() + self.check
            while not self.stop.is_set():
                if lost.is_set():
                    raise _Reconnect("lost the lease or the connection to etcd")
                now = time.monotonic()
                due = self._status_due(now)
                timeout = max(0.0, min(next_check - now, 1.0, due if due is not None else 1.0))
                try:
                    event = self.events.get(timeout=timeout)
                except queue.Empty:
                    event = None
                if event is not None:
                    self._on_event(store, event)
                if time.monotonic() >= next_check:
                    self.resync(store)
                    next_check = time.monotonic() + self.check
                self.write_status(store)
        finally:
            if cancel is not None:
                cancel()
            if self.stop.is_set():   # a clean stop: the node is gone from the fleet at once
                try:
                    self.write_status(store, force=True)
                    store.revoke(lease)
                except FleetError:
                    pass
            lost.set()

    def _keep_alive(self, lease: int, lost: threading.Event) -> None:
        """Refresh the lease every third of its TTL on a client of its own (the main thread
        may be busy applying for seconds); any failure ends the session."""
        store = Store(self.endpoint)
        try:
            while not lost.wait(self.lease_ttl / 3):
                if store.keepalive(lease) < 0:
                    break
        except FleetError:
            pass
        finally:
            store.close()
            lost.set()
            self.events.put(None)   # wake the main loop

    # -- assignments ----------------------------------------------------------------------
    def resync(self, store: Store) -> int:
        """A fresh read of the assignment, acted on when it changed; the store's revision."""
        revision, found = store.read(keys=(assignment_key(self.node),))
        kv = found.get(assignment_key(self.node))
        if kv is not None and kv.mod_revision != self.seen_revision:
            self.act(store, Assignment.from_json(kv.value), kv.mod_revision)
        elif kv is None and self.seen_revision:
            self.seen_revision = 0   # unassigned: the datapath stays as it is
        return revision

    def _on_event(self, store: Store, event: dict[str, Any]) -> None:
        kv = event.get("kv") or {}
        if event.get("type") == "DELETE" or "value" not in kv:
            return
        revision = int(kv.get("mod_revision", 0))
        if revision > self.seen_revision:
            self.act(store, Assignment.from_json(kv["value"]), revision)

    def act(self, store: Store, assignment: Assignment, revision: int) -> None:
        """Make ``assignment`` live (or report why not); the policy before stays live on any
        failure."""
        if assignment.digest == self.applied and self.error_digest is None:
            self.policy, self.generation = assignment.policy, assignment.generation
            self.seen_revision = revision
            return
        # etcd failing here raises: the assignment is not marked seen, the next session
        # acts on it again.
        kv = store.get(policy_key(assignment.policy, assignment.digest))
        error = None
        if kv is None:
            error = (f"policy {assignment.policy} version {assignment.digest[:12]} is not in "
                     "etcd")
        else:
            text = kv.value.decode("utf-8", "replace")
            if digest(text) != assignment.digest:
                error = f"policy {assignment.policy}: its text does not match its digest"
            else:
                error = self.apply(assignment, text)
        if error is None:
            self.policy, self.applied = assignment.policy, assignment.digest
            self.error = self.error_digest = None
            self.say(f"applied {assignment.policy} {assignment.digest[:12]} (generation "
                     f"{assignment.generation})")
        else:
            self.error, self.error_digest = error, assignment.digest
            self.say(f"{assignment.policy} {assignment.digest[:12]} not applied, the policy "
                     f"before stays live: {error}")
        self.generation, self.seen_revision = assignment.generation, revision
        self.counters_time = float("-inf")

    def apply(self, assignment: Assignment, text: str) -> str | None:
        """None when the policy is live (or, dry run, compiles); else the error."""
        try:
            if self.dry_run:
                from ..policy.compile import compile_fitting
                from ..policy.load import load_policy_text

                compile_fitting(load_policy_text(text, f"{assignment.policy}.yaml"))
                return None
            from ..datapath.applyfile import apply_file

            # This node's own --dev first, then the assignment's interfaces, else the
            # policy's.
            devs = self.devs or assignment.interfaces
            done = apply_file(self._policy_file(text), devs=list(devs) if devs else None)
            if done.live is not None:
                self.say("the live datapath already runs this policy: adopted, nothing "
                         "applied")
            return None
        except NetctlError as exc:
            return " ".join(str(exc).split())[:2000] or type(exc).__name__
        except Exception as exc:   # a bug: reported, logged in full, the agent goes on
            import traceback

            traceback.print_exc(file=self.log)
            return f"internal error: {type(exc).__name__}: {exc}"[:2000]

    def _policy_file(self, text: str) -> str:
        """The policy as a file, at the same path every time: `netctl apply`'s check for
        the same file live then lets a restarted agent adopt the datapath as it is."""
        directory = os.path.join(self.state_dir, self.node)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, "policy.yaml")
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return path
        except OSError:
            pass
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    # -- status ---------------------------------------------------------------------------
    def _read_counters(self) -> dict[str, int]:
        if self.dry_run or self.applied is None:
            return {}
        now = time.monotonic()
        if now - self.counters_time < self.writer.counters_interval:
            return self.counters
        self.counters_time = now
        try:
            from ..datapath.control import status

            report = status(verify=False)
            self.counters = {
                "dropped": sum(int(d.get("packets", 0)) for d in report.get("drops", [])),
                "problems": len(report.get("problems", [])),
            }
        except (NetctlError, OSError):
            self.counters = {}
        return self.counters

    def record(self) -> dict[str, Any]:
        return node_record(self.policy, self.applied, self.generation, self.error,
                           self.error_digest, self._read_counters(), self.dry_run)

    def _status_due(self, now: float) -> float | None:
        if not self.seen_revision and self.applied is None:
            return None
        return self.writer.want(self.record(), now)

    def write_status(self, store: Store, force: bool = False) -> None:
        if not self.seen_revision and self.applied is None and not force:
            return   # nothing assigned yet: nothing to report
        record = self.record()
        now = time.monotonic()
        wait = self.writer.want(record, now)
        if wait is None or (wait > 0 and not force):
            return
        store.put(status_key(self.node), json.dumps(record, sort_keys=True))
        self.writer.written(record, now)
