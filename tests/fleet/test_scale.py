"""50 agents with --dry-run (they load and compile, never touch the kernel): how long a push
takes until every one reports the new digest applied."""

from __future__ import annotations

import json

import pytest
from fleetlab import fleet, wait_for

pytestmark = pytest.mark.root

AGENTS = 50
POLICY = ("version: 1\ninterfaces:\n  - name: eth0\ndefaults: {{ingress: accept, egress: "
          "accept}}\nrules:\n  - name: drop-{port}\n    proto: udp\n    dport: {port}\n"
          "    action: drop\n")


def test_fifty_dry_run_agents_converge(scratch, capsys):
    with fleet(scratch, count=0) as fl:
        for i in range(AGENTS):
            fl.dry_agent(f"dry-{i:02d}")
        assert wait_for(lambda: len(fl.status()["nodes"]) == AGENTS, timeout=90, interval=1)
        seconds = []
        for port in (9001, 9002):
            out = fl.push(POLICY.format(port=port), "-o", "json", name="scale")
            assert out.returncode == 0, out.stdout + out.stderr
            result = json.loads(out.stdout)
            assert result["converged"] and len(result["applied"]) == AGENTS
            seconds.append(result["seconds"])
        assert fl.status()["converged"]
        with capsys.disabled():
            print(f"\n  push to {AGENTS} dry-run agents converged in "
                  f"{', '.join(f'{s:.2f}' for s in seconds)} s")
        assert max(seconds) < 20


def test_concurrent_pushes_are_serialised(scratch):
    """Two pushes started together: the lock transaction lets one in, the other waits; both
    converge, with consecutive generations, and the fleet ends on the later one's policy."""
    import subprocess

    from fleetlab import child_env, netctl_argv

    with fleet(scratch, count=0) as fl:
        for i in range(5):
            fl.dry_agent(f"c-{i}")
        assert wait_for(lambda: len(fl.status()["nodes"]) == 5, timeout=60, interval=0.5)
        procs = []
        for port in (9101, 9102):
            path = scratch / f"p{port}.yaml"
            path.write_text(POLICY.format(port=port))
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", fl.etcd.ns, *netctl_argv(
                    "push", str(path), "-o", "json", "--name", f"p{port}", "--etcd",
                    fl.etcd.local_url)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()))
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, out + err
            results.append(json.loads(out))
        assert all(r["converged"] for r in results)
        first, last = sorted(results, key=lambda r: r["generation"])
        assert last["generation"] == first["generation"] + 1
        rows = fl.status()["nodes"]
        assert {r["desired"] for r in rows} == {r["applied"] for r in rows} == {last["digest"]}


def test_a_member_that_does_not_answer_is_passed_over(scratch):
    """--etcd names a cluster's members, tried in turn.  The first one here answers nothing
    (no etcd on its port): an agent still registers and applies, a push converges and
    fleet status reads through the next member; with no member answering, status names
    each one and fails."""
    dead, dead2 = "http://127.0.0.1:9", "http://127.0.0.1:10"
    with fleet(scratch, count=0) as fl:
        members = f"{dead},{fl.etcd.local_url}"
        fl.dry_agent("fo-1", etcd=members)
        assert wait_for(lambda: len(fl.status()["nodes"]) == 1, timeout=60, interval=0.5)
        path = scratch / "fo.yaml"
        path.write_text(POLICY.format(port=9201))
        out = fl.netctl("push", str(path), "-o", "json", "--name", "fo", etcd=members)
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["converged"]
        out = fl.netctl("fleet", "status", "-o", "json", etcd=members)
        assert out.returncode == 0, out.stderr
        assert [r["node"] for r in json.loads(out.stdout)["nodes"]] == ["fo-1"]
        out = fl.netctl("fleet", "status", etcd=f"{dead},{dead2}")
        assert out.returncode != 0
        assert "every member" in out.stderr and "127.0.0.1:9 " in out.stderr \
            and "127.0.0.1:10 " in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
