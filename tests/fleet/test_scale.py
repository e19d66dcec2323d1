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
