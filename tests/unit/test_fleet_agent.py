"""The agent's decisions on a store kept in memory (no etcd, no kernel: --dry-run agents
compile only): what it applies, what it reports, what it leaves alone."""

from __future__ import annotations

import io
import json

from netctl.fleet.agent import Agent
from netctl.fleet.keys import Assignment, assignment_key, digest, policy_key, status_key
from netctl.fleet.store import KV, Endpoint

GOOD = "version: 1\ninterfaces:\n  - name: eth0\nrules:\n  - name: r\n    action: drop\n"
OTHER = GOOD.replace("name: r", "name: s")
BAD = "version: 1\nrules:\n  - name: r\n    action: maybe\n"


class MemoryStore:
    """The few Store methods the agent's act/resync/status use."""

    def __init__(self):
        self.data: dict[str, tuple[bytes, int]] = {}
        self.revision = 1
        self.puts: list[str] = []

    def set(self, key: str, value: str) -> int:
        self.revision += 1
        self.data[key] = (value.encode(), self.revision)
        return self.revision

    def read(self, keys=(), prefixes=()):
        found = {k: KV(k, v, rev, rev, 0) for k, (v, rev) in self.data.items()
                 if k in keys or any(k.startswith(p) for p in prefixes)}
        return self.revision, found

    def get(self, key):
        return self.read(keys=(key,))[1].get(key)

    def put(self, key, value, lease=None):
        self.puts.append(key)
        self.set(key, value if isinstance(value, str) else value.decode())


def agent() -> Agent:
    return Agent(Endpoint("http://127.0.0.1:1"), "n1", dry_run=True, log=io.StringIO())


def assign(store: MemoryStore, text: str, generation: int, name: str = "web") -> None:
    store.set(policy_key(name, digest(text)), text)
    store.set(assignment_key("n1"), Assignment(name, digest(text), generation).to_json())


def status(store: MemoryStore) -> dict:
    return json.loads(store.data[status_key("n1")][0])


def test_applies_reports_and_keeps_the_policy_before_on_a_bad_one():
    store, a = MemoryStore(), agent()
    assert a.resync(store) == store.revision
    a.write_status(store)
    assert status_key("n1") not in store.data        # nothing assigned: nothing to say
    assign(store, GOOD, 1)
    a.resync(store)
    a.write_status(store)
    assert status(store)["digest"] == digest(GOOD) and status(store)["generation"] == 1
    assert status(store)["error"] is None
    assign(store, BAD, 2)
    a.resync(store)
    a.writer.last_time -= 5                           # a second later
    a.write_status(store)
    s = status(store)
    assert s["digest"] == digest(GOOD) and s["generation"] == 2   # the policy before
    assert s["error_digest"] == digest(BAD) and "maybe" in s["error"]
    # Put back on the policy before: the error goes, nothing new is applied.
    store.set(assignment_key("n1"), Assignment("web", digest(GOOD), 1).to_json())
    a.resync(store)
    a.writer.last_time -= 5
    a.write_status(store)
    assert status(store)["error"] is None and status(store)["generation"] == 1


def test_same_assignment_is_not_acted_on_twice_and_status_is_not_rewritten():
    store, a = MemoryStore(), agent()
    assign(store, GOOD, 1)
    a.resync(store)
    a.write_status(store)
    writes = len(store.puts)
    for _ in range(5):
        a.resync(store)
        a.write_status(store)
    assert len(store.puts) == writes


def test_a_missing_or_altered_policy_text_is_an_error():
    store, a = MemoryStore(), agent()
    store.set(assignment_key("n1"), Assignment("web", digest(OTHER), 3).to_json())
    a.resync(store)
    assert "not in etcd" in (a.error or "") and a.applied is None
    store.set(policy_key("web", digest(GOOD)), OTHER)   # text that is not its digest's
    store.set(assignment_key("n1"), Assignment("web", digest(GOOD), 4).to_json())
    a.resync(store)
    assert "does not match its digest" in (a.error or "")


def test_watch_events_act_once_in_revision_order():
    store, a = MemoryStore(), agent()
    assign(store, GOOD, 1)
    kv = store.get(assignment_key("n1"))
    event = {"type": "PUT", "kv": {"value": kv.value, "mod_revision": str(kv.mod_revision)}}
    a._on_event(store, event)
    assert a.applied == digest(GOOD)
    a.applied = "something else"
    a._on_event(store, event)                         # an old event: not acted on again
    assert a.applied == "something else"
    a._on_event(store, {"type": "DELETE", "kv": {"mod_revision": "99"}})
    assert a.applied == "something else"              # unassigned: the datapath stays
