"""The apply transaction's steps and crash points, on a fake kernel (no root): the order of
the kernel changes, state writes and crash points that docs/reliability.md's promises rest
on.  The real thing is killed at each point in tests/netns/test_faults.py."""

from __future__ import annotations

import contextlib
import json

import pytest

from netctl.datapath import attach as att
from netctl.datapath import live, transaction
from netctl.datapath.build import ROLES
from netctl.datapath.hooks import decide_hooks, targets
from netctl.datapath.instance import PinsMissing
from netctl.datapath.state import State
from netctl.policy.compile import compile_policy
from netctl.policy.load import load_policy_text
from netctl.policy.plan import diff

POLICY = """version: 1
interfaces: [{name: veth0, tc: [ingress, egress]}]
defaults: {ingress: drop}
rules:
  - {name: ssh, action: accept, proto: tcp, dport: 22}
"""


class Kernel:
    def __init__(self):
        self.events: list[tuple] = []
        self.builds: dict[str, dict] = {}
        self.filters = {"ingress": None, "egress": None}
        self.state_text: str | None = None
        self.plans: dict = {}
        self.texts: dict = {}     # kept policy texts by digest


class FakeDatapath:
    kernel: Kernel   # set by the fixture

    def __init__(self, pin_dir):
        self.pin_dir = pin_dir
        self.ids = self.kernel.builds[pin_dir]["ids"]
        self.programs = dict(self.ids)          # the fake's fds are the program ids
        self.verifier = {}

    @classmethod
    def build(cls, pin_dir, constants, extra_cflags=(), ct_pin=None):
        cls.kernel.events.append(("build",))
        base = 100 * (len(cls.kernel.builds) + 1)
        cls.kernel.builds[pin_dir] = {"ids": {r: base + i for i, r in enumerate(ROLES)},
                                      "active": 0}
        return cls(pin_dir)

    @classmethod
    def open(cls, pin_dir, constants, ct_pin=None):
        if pin_dir not in cls.kernel.builds:
            raise PinsMissing("gone")
        return cls(pin_dir)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def prog_ids(self):
        return dict(self.ids)

    @property
    def active(self):
        return self.kernel.builds[self.pin_dir]["active"]

    def flip(self, gen):
        self.kernel.events.append(("flip", gen))
        self.kernel.builds[self.pin_dir]["active"] = gen

    def write_plan(self, plan, gen, fresh=False, holds=None):
        self.kernel.events.append(("write", gen))
        return diff(holds, plan)

    def write_nexthops(self, gen, nexthops):
        pass

    def set_epoch(self, gen, epoch):
        pass

    def set_local_addresses(self, keys):
        pass

    def rule_counters(self, gen, count):
        return [(1, 60)] * count

    def stats(self):
        return []


class FakeLinks:
    kernel: Kernel   # set by the fixture

    def find(self, name):
        return att.LinkInfo(index=7, name=name, kind="veth", up=True, xdp_mode=None,
                            xdp_prog_id=None) if name == "veth0" else None

    def info(self, index):
        return self.find("veth0") if index == 7 else None

    def filters(self, link, direction):
        pid = self.kernel.filters[direction]
        return [] if pid is None else [att.TcFilter(direction, att.TC_PRIO, 1, "bpf",
                                                     att.TC_PROG_NAMES[direction], pid)]

    def attach_tc(self, link, fd, direction):
        self.kernel.events.append(("attach", direction, fd))
        self.kernel.filters[direction] = fd

    def detach_tc(self, link, direction):
        self.kernel.filters[direction] = None

    def tc_ours(self, link, direction):
        return [att.TcAttachment(att.TC_CLS_BPF, f.prog_id)
                for f in self.filters(link, direction)]

    def detach_tcx(self, link, direction):
        return False

    def sweep_link_pins(self):
        return []

    def ensure_clsact(self, link):
        return False

    def xdp_is_ours(self, link):
        return False

    def addresses(self):
        return []

    def netctl_routes(self):
        return []


class FakeNamespace:
    kernel: Kernel   # set by the fixture
    state_file = None

    def read_state(self):
        text = self.kernel.state_text
        return None if text is None else State.loads(text)

    def write_state(self, state):
        self.kernel.state_text = state.dumps()
        doc = json.loads(self.kernel.state_text)
        self.kernel.events.append(("state", "pending" in doc, doc.get("build", {}).get("id"),
                                   {g: r["digest"] for g, r in doc["generations"].items()}))

    def build_dir(self, build):
        return f"/pins/{build}"

    def ct_pin(self, constants):
        return "/pins/conntrack-v2"

    def builds(self):
        return [p.rsplit("/", 1)[1] for p in self.kernel.builds]

    def remove_build(self, build):
        self.kernel.events.append(("remove_build", build))
        self.kernel.builds.pop(f"/pins/{build}", None)

    def save_plan(self, gen, plan):
        self.kernel.plans[gen] = plan

    def forget_plan(self, gen):
        self.kernel.plans.pop(gen, None)

    def save_text(self, text):
        import hashlib

        digest = hashlib.sha256(text.encode()).hexdigest()
        self.kernel.texts[digest] = text
        return digest

    def remove_texts_but(self, keep):
        for digest in set(self.kernel.texts) - set(keep):
            del self.kernel.texts[digest]

    def load_plan(self, gen, digest):
        plan = self.kernel.plans.get(gen)
        return plan if plan is not None and digest and plan.digest() == digest else None

    @contextlib.contextmanager
    def lock(self):
        yield


@pytest.fixture
def kernel(monkeypatch):
    k = Kernel()
    for fake in (FakeDatapath, FakeLinks, FakeNamespace):
        monkeypatch.setattr(fake, "kernel", k, raising=False)
    monkeypatch.setattr(transaction, "Datapath", FakeDatapath)
    monkeypatch.setattr(live, "Datapath", FakeDatapath)
    monkeypatch.setattr(transaction, "settle", lambda: None)
    monkeypatch.setattr(transaction, "netns_name", lambda: "dut")
    monkeypatch.setattr(transaction, "crash_point", lambda name: k.events.append(("crash", name)))
    monkeypatch.setattr(live.mapio, "contents_digests", lambda *a, **kw: {})
    return k


def run(text: str, extra_cflags=()):
    policy = load_policy_text(text, "<stdin>")
    links = FakeLinks()
    found = [(t, links.find(t.name), decide_hooks(links.find(t.name), t))
             for t in targets(policy, None, None)]
    return transaction.Transaction(FakeNamespace(), links, policy, compile_policy(policy),
                                   found, extra_cflags, []).run()


def kinds(events):
    return [e[0] if e[0] != "crash" else e[1] for e in events]


def test_the_steps_of_a_rebuild(kernel):
    result = run(POLICY)
    assert result.reload and result.generation == 0
    assert kinds(kernel.events) == ["build", "write", "write", "flip", "state", "built",
                                    "attach", "attach", "attached", "state", "recorded",
                                    "flip", "flipped", "state"]
    # Recorded as pending before its programs go live, as the build once they are.
    pending, recorded = [e for e in kernel.events if e[0] == "state"][:2]
    assert pending[1] is True and pending[2] is None
    assert recorded[1] is False and recorded[2] is not None


def test_the_steps_of_a_rule_change(kernel):
    run(POLICY)
    first = dict(kernel.builds)
    kernel.events.clear()
    result = run(POLICY.replace("dport: 22", "dport: 2222"))
    assert not result.reload and result.generation == 1 and kernel.builds == first
    # Written into the inactive generation, described in the state, then one flip; the
    # generation packets left is caught up after the flip.
    assert kinds(kernel.events) == ["write", "written", "attach", "attach", "attached",
                                    "state", "recorded", "flip", "flipped", "state",
                                    "write", "state"]
    described = [e for e in kernel.events if e[0] == "state"][0]
    assert described[3]["1"] == compile_policy(load_policy_text(
        POLICY.replace("dport: 22", "dport: 2222"), "<stdin>")).digest()
    assert kernel.events.index(("flip", 1)) > kernel.events.index(described)


def test_nothing_to_do_reaches_no_crash_point(kernel):
    run(POLICY)
    kernel.events.clear()
    result = run(POLICY)
    assert result.unchanged and kernel.events == []


def test_a_forced_rebuild_replaces_the_old_build_after_the_flip(kernel):
    run(POLICY)
    kernel.events.clear()
    result = run(POLICY, extra_cflags=("-DX=1",))
    assert result.reload
    names = kinds(kernel.events)
    assert names.index("flipped") < names.index("remove_build")
    assert [n for n in names if n in transaction.CRASH_POINTS] == [
        "built", "attached", "recorded", "flipped"]
    assert len(kernel.builds) == 1


def test_every_crash_point_is_a_step():
    assert transaction.CRASH_POINTS == ("built", "written", "attached", "recorded", "flipped")
