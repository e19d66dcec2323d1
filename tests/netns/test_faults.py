"""Faults: netctl keeps the policy it had, or the one it was given, never a mix, and the next
apply repairs whatever a failure left.

- `kill -9` of `netctl apply` at 50 points spread over the whole apply (rule changes and
  rebuilds of the programs): afterwards traffic is judged wholly by the old or wholly by the
  new policy, `netctl status` says which, and the next apply repairs the rest;
- two applies at once are serialised by the lock, both succeed, in some order;
- an interface that vanishes and comes back; pins removed by hand; a full rule table.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from lab import NETCTL, wait_for
from nsutil import netns_cookie, run

from netctl.paths import PIN_ROOT, STATE_ROOT

# A and B disagree on two probe ports: A drops 1111 and passes 2222, B the other way round.
POLICY_A = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: a-drop-1111, action: drop, proto: udp, dport: 1111}
  - {name: a-keep, action: accept, src: 198.51.100.0/24}
"""
POLICY_B = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: b-keep, action: accept, src: 203.0.113.0/24}
  - {name: b-drop-2222, action: drop, proto: udp, dport: 2222}
"""
TRIALS = 50
# Where in an apply the kills land, as fractions of its measured duration.  Most of an apply
# is starting Python and loading the policy; its map writes and the flip come in the last
# fifth, so the points are densest there, and the last one may find the apply finished.
KILL_POINTS = (0.05, 0.3, 0.55, 0.7, 0.8, 0.85, 0.9, 0.94, 0.98, 1.1)


def _which_policy(the_lab) -> str:
    """What the traffic says is live: 'A', 'B', or a description of a mix."""
    p1111 = the_lab.udp(2, dport=1111, wait=0.2)
    p2222 = the_lab.udp(2, dport=2222, wait=0.2)
    return {(0, 2): "A", (2, 0): "B"}.get((p1111, p2222), f"mix 1111:{p1111} 2222:{p2222}")


def _status_policy(the_lab, paths: dict[str, str]) -> str | None:
    status = the_lab.status()
    return next((name for name, path in paths.items() if status.get("policy") == path), None)


def test_kill_minus_9_at_fifty_points_never_leaves_a_mix(the_lab):
    paths = {"A": the_lab.policy(POLICY_A, "a.yaml"), "B": the_lab.policy(POLICY_B, "b.yaml")}
    base = ["ip", "netns", "exec", the_lab.dut, NETCTL, "apply"]
    run(*base[4:], paths["A"], "--dev", the_lab.dut_if, ns=the_lab.dut)
    live = "A"
    # How long an apply takes, so the kill points spread over all of it: a rule change, and
    # a rebuild (forced by an extra compile flag).
    started = time.monotonic()
    run(*base[4:], paths["B"], "--dev", the_lab.dut_if, ns=the_lab.dut)
    change_s = time.monotonic() - started
    live = "B"
    rebuild_env = dict(os.environ, NETCTL_EXTRA_CFLAGS="-DNETCTL_REBUILD_TRIAL=1")
    started = time.monotonic()
    subprocess.run([*base, paths["A"], "--dev", the_lab.dut_if], env=rebuild_env,
                   check=True, capture_output=True)
    rebuild_s = time.monotonic() - started
    live = "A"
    outcomes = {"old": 0, "new": 0}
    for trial in range(TRIALS):
        rebuild = trial % 5 == 4
        target = "B" if live == "A" else "A"
        span = rebuild_s if rebuild else change_s
        delay = span * KILL_POINTS[trial % 10]
        proc = subprocess.Popen([*base, paths[target], "--dev", the_lab.dut_if],
                                env=rebuild_env if rebuild else None,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.05)
        seen = _which_policy(the_lab)
        assert seen in ("A", "B"), f"trial {trial} ({'rebuild' if rebuild else 'change'}, " \
                                   f"killed after {delay:.2f} s): {seen}"
        said = _status_policy(the_lab, paths)
        assert said == seen, f"trial {trial}: traffic says {seen}, status says {said}"
        outcomes["new" if seen == target else "old"] += 1
        live = seen
        # The next apply repairs whatever the kill left (and flips to the other policy).
        other = "B" if live == "A" else "A"
        run(*base[4:], paths[other], "--dev", the_lab.dut_if, ns=the_lab.dut)
        assert _which_policy(the_lab) == other
        status = the_lab.status()
        assert status["problems"] == [], status["problems"]
        live = other
    # The kills landed both before and after the switch.
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes
    builds = os.listdir(f"{PIN_ROOT}/ns{netns_cookie(the_lab.dut)}")
    assert len([b for b in builds if b.startswith("b")]) == 1, builds


# Each step of an apply, hit exactly (NETCTL_CRASH_AT kills the apply there as kill -9
# would): what the traffic must say afterwards, for a rule change and for a rebuild.
CRASHES = [("change", "written", "A"), ("change", "attached", "A"), ("change", "recorded", "A"),
           ("change", "flipped", "B"), ("rebuild", "built", "A"), ("rebuild", "attached", "B"),
           ("rebuild", "recorded", "B"), ("rebuild", "flipped", "B")]


@pytest.mark.parametrize(("kind", "point", "expected"), CRASHES,
                         ids=[f"{k}-{p}" for k, p, _ in CRASHES])
def test_a_crash_at_each_step_leaves_one_policy_and_status_says_which(the_lab, kind, point,
                                                                      expected):
    from netctl.datapath.control import CRASH_POINTS

    assert point in CRASH_POINTS
    paths = {"A": the_lab.policy(POLICY_A, "a.yaml"), "B": the_lab.policy(POLICY_B, "b.yaml")}
    the_lab.netctl("apply", paths["A"], "--dev", the_lab.dut_if)
    env = dict(os.environ, NETCTL_CRASH_AT=point)
    if kind == "rebuild":
        env["NETCTL_EXTRA_CFLAGS"] = "-DNETCTL_REBUILD_TRIAL=1"
    crashed = subprocess.run(["ip", "netns", "exec", the_lab.dut, NETCTL, "apply", paths["B"],
                              "--dev", the_lab.dut_if], env=env, capture_output=True)
    assert crashed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), crashed
    assert _which_policy(the_lab) == expected
    assert _status_policy(the_lab, paths) == expected
    if (kind, point) == ("rebuild", "attached"):
        assert any("was killed after attaching" in p for p in the_lab.status()["problems"])
        live_build = the_lab.status()["build"]
    # The next apply completes whatever the crash left, and leaves one build behind: also
    # an apply of the policy that survived, which has nothing to write.
    if expected == "A":
        again = the_lab.netctl("apply", paths["A"], "--dev", the_lab.dut_if, "-o", "json")
        assert json.loads(again.stdout)["reload"] is False
        assert _status_policy(the_lab, paths) == "A"
        assert the_lab.status()["problems"] == []
    done = json.loads(the_lab.netctl("apply", paths["B"], "--dev", the_lab.dut_if, "-o",
                                     "json").stdout)
    if (kind, point) == ("rebuild", "attached"):   # completed: the pending build kept
        assert done["reload"] is False and the_lab.status()["build"] == live_build
    assert _which_policy(the_lab) == "B"
    assert the_lab.status()["problems"] == []
    builds = os.listdir(f"{PIN_ROOT}/ns{netns_cookie(the_lab.dut)}")
    assert len([b for b in builds if b.startswith("b")]) == 1, builds
    with open(f"{STATE_ROOT}/ns{netns_cookie(the_lab.dut)}/state.json") as f:
        state = json.load(f)
    assert "pending" not in state


def test_applies_are_serialised_by_the_lock(the_lab):
    import fcntl

    a, b = the_lab.policy(POLICY_A, "a.yaml"), the_lab.policy(POLICY_B, "b.yaml")
    the_lab.apply(POLICY_A)
    # While someone holds the namespace's lock, an apply waits and changes nothing ...
    with open(f"{STATE_ROOT}/ns{netns_cookie(the_lab.dut)}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = subprocess.Popen(["ip", "netns", "exec", the_lab.dut, NETCTL, "apply", b,
                                    "--dev", the_lab.dut_if], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert waiting.poll() is None and _which_policy(the_lab) == "A"
        fcntl.flock(lock, fcntl.LOCK_UN)
    # ... and proceeds once it is free.
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert _which_policy(the_lab) == "B"
    # Three at once: all succeed, one after the other; what is live is whole and says so.
    procs = [subprocess.Popen(["ip", "netns", "exec", the_lab.dut, NETCTL, "apply", path,
                               "--dev", the_lab.dut_if], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for path in (a, b, a)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    seen = _which_policy(the_lab)
    assert seen in ("A", "B") and _status_policy(the_lab, {"A": a, "B": b}) == seen
    assert the_lab.status()["problems"] == []


def test_interface_vanishes_and_comes_back(the_lab):
    the_lab.apply(POLICY_A)
    run("ip", "link", "set", the_lab.dut_if, "netns", "1", ns=the_lab.dut)  # gone from here
    try:
        status = the_lab.status()
        assert any("gone" in p for p in status["problems"]), status["problems"]
        out = the_lab.netctl("status", check=False)
        assert out.returncode == 1 and "gone" in out.stdout and "Traceback" not in out.stderr
    finally:
        run("ip", "link", "set", the_lab.dut_if, "netns", the_lab.dut)
    run("ip", "addr", "add", "10.123.0.2/24", "dev", the_lab.dut_if, ns=the_lab.dut,
        check=False)
    run("ip", "link", "set", the_lab.dut_if, "up", ns=the_lab.dut)
    the_lab.apply(POLICY_A)                     # re-attaches
    assert the_lab.status()["problems"] == []
    assert wait_for(lambda: _which_policy(the_lab) == "A", timeout=5)


def test_pins_removed_by_hand_are_explained_and_rebuilt(the_lab):
    the_lab.apply(POLICY_A)
    shutil.rmtree(f"{PIN_ROOT}/ns{netns_cookie(the_lab.dut)}")
    status = the_lab.status()
    assert status["problems"] and "gone" in status["problems"][0]
    out = the_lab.netctl("status", check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    result = the_lab.apply(POLICY_A)
    assert result["reload"] is True
    assert the_lab.status()["problems"] == []
    assert _which_policy(the_lab) == "A"


def test_a_corrupt_state_file_does_not_block_detach_all(the_lab):
    """The corrupt-state message names `netctl detach --all` as the way out: it must work
    without the state (the programs are found on the interfaces), and leave nothing."""
    the_lab.apply(POLICY_A)
    assert _which_policy(the_lab) == "A"
    state = f"{STATE_ROOT}/ns{netns_cookie(the_lab.dut)}/state.json"
    with open(state, "w") as f:
        f.write("{not json")
    out = the_lab.netctl("status", check=False)
    assert out.returncode != 0 and "corrupt" in out.stderr and "detach --all" in out.stderr
    out = the_lab.netctl("detach", "--dev", the_lab.dut_if, check=False)
    assert out.returncode != 0 and "corrupt" in out.stderr   # one interface: refused
    out = the_lab.netctl("detach", "--all")
    assert "could not be read" in out.stdout and f"detached from {the_lab.dut_if}" in out.stdout
    # Programs, filters, pins and state are gone; the clsact qdisc stays, since without the
    # state netctl cannot know it made it (it never removes a qdisc it may not own).
    assert [x for x in the_lab.leftovers() if not x.startswith("qdisc")] == []
    assert _which_policy(the_lab) == "mix 1111:2 2222:2"    # nothing filters any more


def test_a_policy_too_big_for_the_rule_table_changes_nothing(the_lab):
    the_lab.apply(POLICY_A)
    # 1,100 sources x 1,100 destinations that all cover each other: about 1.2 million
    # rule-trie entries, past what --max-entries allows (without it the table would grow).
    lines = ["version: 1", "defaults: {ingress: accept, egress: accept}", "rules:"]
    lines += [f"  - {{name: s{i}, action: drop, src: 10.{i // 250}.{i % 250}.0/24, "
              f"dst: 192.0.0.0/8}}" for i in range(1100)]
    lines += [f"  - {{name: d{i}, action: drop, src: 10.0.0.0/8, "
              f"dst: 192.{i // 250}.{i % 250}.0/24}}" for i in range(1100)]
    big = the_lab.policy("\n".join(lines) + "\n", "big.yaml")
    out = the_lab.netctl("apply", big, "--dev", the_lab.dut_if, "--max-entries", "500000",
                         check=False)
    assert out.returncode == 5, out.stdout + out.stderr
    assert "rule_table" in out.stderr and "--max-entries allows 500000" in out.stderr
    assert "Traceback" not in out.stderr
    assert _which_policy(the_lab) == "A"
    assert json.loads(the_lab.netctl("status", "-o", "json").stdout)["problems"] == []


@pytest.mark.parametrize("way", ["links", "legacy"])
@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_programs_removed_by_hand_are_reported_and_reattached(the_lab, hook, way):
    mode = ("--xdp-mode", "generic") if hook == "xdp" else ()
    env = {"NETCTL_ATTACH": "legacy"} if way == "legacy" else None
    path = the_lab.policy(POLICY_A)
    the_lab.netctl("apply", path, "--dev", the_lab.dut_if, *mode, env=env)
    assert _which_policy(the_lab) == "A"
    if hook == "xdp":
        expected = "XDP program missing"
        if way == "legacy":
            run("ip", "link", "set", "dev", the_lab.dut_if, "xdpgeneric", "off",
                ns=the_lab.dut)
        else:
            _detach_link_by_hand(the_lab, hook)
    else:
        if way == "legacy":
            run("tc", "filter", "del", "dev", the_lab.dut_if, "ingress", ns=the_lab.dut)
            expected = "tc ingress filter missing"
        else:
            _detach_link_by_hand(the_lab, hook)
            expected = "tc ingress link missing"
    assert _which_policy(the_lab) == "mix 1111:2 2222:2"   # nothing filters now
    status = the_lab.status()
    assert any(expected in p for p in status["problems"]), status["problems"]
    out = the_lab.netctl("status", check=False)
    assert out.returncode == 1 and expected in out.stdout + out.stderr
    # The same policy again is not a no-op: it attaches what is missing.
    out = the_lab.netctl("apply", path, "--dev", the_lab.dut_if, *mode, "-o", "json",
                         env=env)
    assert json.loads(out.stdout)["unchanged"] is False
    assert _which_policy(the_lab) == "A"
    assert the_lab.status()["problems"] == []


def _detach_link_by_hand(the_lab, hook: str) -> None:
    """BPF_LINK_DETACH of netctl's link on the hook, as `bpftool link detach` does: the
    pin stays, holding a link that runs nowhere."""
    from nsutil import inside

    from netctl.datapath import attach as att
    from netctl.kernel import bpfsys

    with inside(the_lab.dut), att.Links() as links:
        link = links.find(the_lab.dut_if)
        if hook == "xdp":
            link_id = links.xdp_link_id(link)
        else:
            link_id = next(a.link_id for a in links.tc_ours(link, "ingress")
                           if a.path == att.TC_TCX)
        assert link_id is not None
        fd = bpfsys.link_fd_by_id(link_id)
        try:
            bpfsys.link_detach(fd)
        finally:
            os.close(fd)
