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
