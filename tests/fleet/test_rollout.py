"""Rollouts on three real agents, each enforcing with its own datapath, proved with UDP
traffic from a traffic namespace (tests/fleet/fleetlab.py).  The tests run in order on one
fleet; each leaves every node converged."""

from __future__ import annotations

import json
import re
import signal
import time

from fleetlab import stop, wait_for

pytestmark = __import__("pytest").mark.root


def policy(port: int, extra_if: str = "") -> str:
    """Drop UDP to ``port`` on fl0 (and ``extra_if``), accept the rest."""
    ifs = "  - name: fl0\n" + (f"  - name: {extra_if}\n" if extra_if else "")
    return (f"version: 1\ninterfaces:\n{ifs}defaults: {{ingress: accept, egress: accept}}\n"
            f"rules:\n  - name: drop-{port}\n    proto: udp\n    dport: {port}\n"
            "    action: drop\n")


A, B, C = 7001, 7002, 7003


def all_enforce(fl, dropped: int, passed: int) -> bool:
    return all(fl.enforces(n, dropped, passed) for n in fl.nodes)


def test_push_is_enforced_by_every_node(the_fleet):
    fl = the_fleet
    assert all(fl.arrive(n, A) == 5 for n in fl.nodes)   # nothing applied yet
    out = fl.push(policy(A), "-o", "json")
    assert out.returncode == 0, out.stderr + out.stdout
    result = json.loads(out.stdout)
    assert result["converged"] and sorted(result["applied"]) == ["n1", "n2", "n3"]
    assert all_enforce(fl, A, B)
    status = fl.status()
    assert status["converged"]
    for row in status["nodes"]:
        assert row["applied"] == row["desired"] == result["digest"] and row["error"] is None
        assert row["heartbeat_age"] is not None and row["heartbeat_age"] <= fl.lease_ttl


def test_canary_goes_first(the_fleet):
    fl = the_fleet
    out = fl.push(policy(B), "--canary", "1")
    assert out.returncode == 0, out.stderr + out.stdout
    lines = out.stdout.splitlines()
    applied = [m.group(1) for m in map(re.compile(r"^(n\d): applied ").match, lines) if m]
    assert applied[0] == "n1" and sorted(applied[1:]) == ["n2", "n3"], out.stdout
    assert "canary n1 first" in lines[0]
    assert all_enforce(fl, B, A)


def test_failing_canary_stops_the_rollout_and_is_put_back(the_fleet):
    """The policy names fl1, which only n2 and n3 have: n1, the canary, fails; the rollout
    stops; n1's assignment is back on the policy before; every node still enforces it."""
    from netctl.kernel.netlab import run

    fl = the_fleet
    for node in fl.nodes[1:]:
        run("ip", "link", "add", "fl1", "type", "veth", "peer", "name", "fl1p", ns=node.ns)
    before = fl.rows()
    out = fl.push(policy(C, extra_if="fl1"), "--canary", "1", "--timeout", "60")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "push failed on n1" in out.stderr and "fl1" in out.stderr, out.stderr
    assert "n2, n3" in out.stderr   # not assigned
    after = fl.rows()
    for name in ("n1", "n2", "n3"):
        assert after[name]["desired"] == before[name]["desired"]
    assert fl.converged(timeout=15), fl.status()
    assert all_enforce(fl, B, C)


def test_etcd_killed_during_a_rollout(the_fleet):
    """etcd dies mid-rollout: the agents keep enforcing what they run; once it is back they
    converge on what a push then assigns."""
    fl = the_fleet
    path = fl.tmp / "during.yaml"
    path.write_text(policy(A))
    import subprocess

    from fleetlab import child_env, netctl_argv
    pusher = subprocess.Popen(["ip", "netns", "exec", fl.etcd.ns, *netctl_argv(
        "push", str(path), "--canary", "1", "--timeout", "20", "--etcd", fl.etcd.local_url)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        wait_for(lambda: "stored" in (pusher.stdout.readline() if pusher.stdout else ""),
                 timeout=10, interval=0)
        fl.etcd.kill()
        _out, err = pusher.communicate(timeout=60)
    finally:
        stop(pusher, signal.SIGKILL)
        for pipe in (pusher.stdout, pusher.stderr):
            if pipe is not None:
                pipe.close()
    assert pusher.returncode == 1 and "unreachable" in err, err
    # Every node enforces a whole policy, old (B) or new (A), with etcd gone.
    for node in fl.nodes:
        assert fl.enforces(node, B, A) or fl.enforces(node, A, B), node.name
    time.sleep(1.5)   # agents back off meanwhile
    fl.etcd.start()
    out = fl.push(policy(A), "--timeout", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    assert fl.converged(timeout=20), fl.status()
    assert all_enforce(fl, A, B)
    for node in fl.nodes:
        assert "unreachable" in fl.agent_log(node)


def test_agent_cut_off_keeps_its_policy_and_converges_after_the_heal(the_fleet):
    from netctl.kernel.netlab import run

    fl = the_fleet
    n3 = fl.nodes[2]
    run("ip", "link", "set", "mg0", "down", ns=n3.ns)
    try:
        out = fl.push(policy(B), "--timeout", "8")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "push failed on n3" in out.stderr, out.stderr
        rows = fl.rows()
        assert rows["n1"]["state"] == rows["n2"]["state"] == "converged"
        assert rows["n3"]["state"] == "dead" and not rows["n3"]["converged"]
        assert fl.status()["converged"] is False
        assert fl.enforces(n3, A, B)          # the old policy, still enforced
        assert fl.enforces(fl.nodes[0], B, A)
        # The history n3 would watch from is compacted meanwhile: it must read afresh.
        compacted = fl.compact()
        assert compacted > 0
    finally:
        run("ip", "link", "set", "mg0", "up", ns=n3.ns)
    assert fl.converged(timeout=40), fl.status()
    assert fl.enforces(n3, B, A)


def test_agent_killed_mid_apply_converges_when_restarted(the_fleet):
    """n2's agent dies by SIGKILL in the middle of an apply (after the new generation is
    written, before it goes live); restarted, it converges."""
    fl = the_fleet
    n2 = fl.nodes[1]
    stop(n2.agent, signal.SIGTERM)
    assert "stopped; the datapath stays as it is" in fl.agent_log(n2)
    assert fl.enforces(n2, B, A)     # SIGTERM left the datapath as it was
    fl.start_agent(n2, env={"NETCTL_CRASH_AT": "written"})
    assert fl.registered(["n2"])
    out = fl.push(policy(C), "--timeout", "12")
    assert n2.agent is not None and n2.agent.wait(30) == -signal.SIGKILL
    assert out.returncode == 1 and "n2" in out.stderr, out.stdout + out.stderr
    assert fl.enforces(n2, B, C)     # the apply died before its flip: the policy before
    fl.start_agent(n2)
    assert fl.converged(timeout=40), fl.status()
    assert all_enforce(fl, C, B)


def test_restarted_agent_adopts_the_live_datapath(the_fleet):
    fl = the_fleet
    n1 = fl.nodes[0]
    stop(n1.agent, signal.SIGTERM)
    fl.start_agent(n1)
    assert wait_for(lambda: "adopted, nothing applied" in fl.agent_log(n1), timeout=30), \
        fl.agent_log(n1)
    assert fl.converged(timeout=20)
    assert fl.enforces(n1, C, B)


def test_agent_dev_applies_to_its_own_interface(the_fleet):
    """n3's agent restarted with --dev fl0: a policy naming an interface no node has goes
    live on n3's fl0 and is enforced there; without --dev the same policy fails on n1, which
    keeps the policy before.  Restarted without --dev, n3 takes the next push."""
    fl = the_fleet
    n1, n3 = fl.nodes[0], fl.nodes[2]
    stop(n3.agent, signal.SIGTERM)
    fl.start_agent(n3, "--dev", "fl0")
    assert fl.registered(["n3"])
    assert wait_for(lambda: "policies go on fl0" in fl.agent_log(n3), timeout=30), \
        fl.agent_log(n3)
    elsewhere = policy(A).replace("  - name: fl0\n", "  - name: uplink9\n")
    assert "uplink9" in elsewhere and "fl0" not in elsewhere
    out = fl.push(elsewhere, "--nodes", "n3", name="elsewhere")
    assert out.returncode == 0, out.stdout + out.stderr
    assert fl.enforces(n3, A, C)
    out = fl.push(elsewhere, "--nodes", "n1", "--canary", "1", "--timeout", "60",
                  name="elsewhere")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "push failed on n1" in out.stderr and "uplink9" in out.stderr, out.stderr
    assert fl.enforces(n1, C, A)         # still the policy before
    stop(n3.agent, signal.SIGTERM)
    fl.start_agent(n3)
    assert fl.registered(["n3"])
    out = fl.push(policy(C))
    assert out.returncode == 0, out.stdout + out.stderr
    assert fl.converged(timeout=30), fl.status()
    assert all_enforce(fl, C, B)
