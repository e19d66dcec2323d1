"""The fleet's rollout time: from `netctl push` to every node reporting the new digest
applied, for 3 agents that apply for real (each in its own network namespace) and for 50
`--dry-run` agents (load and compile only), all on one real etcd (docs/fleet.md, Figures).

    python -m bench.fleet              # 3 real, 50 dry-run agents, 3 pushes each
    python -m bench.fleet --dry 10     # fewer dry-run agents

The lab is the fleet tier's (tests/fleet/fleetlab.py): everything it makes is removed
after.  The figure is push's own `seconds` (-o json): from its start, through validation,
the lock, the writes and both waves, to the last node's report.  The first push to a set of
agents is reported apart: real agents compile their programs then (bcc), later pushes only
write maps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fleet"))

from fleetlab import fleet, wait_for  # noqa: E402

POLICY = ("version: 1\ninterfaces:\n  - name: {dev}\ndefaults: {{ingress: accept, egress: "
          "accept}}\nrules:\n  - name: drop-{port}\n    proto: udp\n    dport: {port}\n"
          "    action: drop\n")
TARGET_DRY_S = 2.0   # the target for 50 dry-run agents


def _pushes(fl, count: int, dev: str, say) -> list[float]:
    seconds = []
    for i in range(count):
        out = fl.push(POLICY.format(dev=dev, port=9100 + i), "-o", "json", name="bench")
        if out.returncode != 0:
            raise RuntimeError(f"push failed: {out.stdout}{out.stderr}")
        result = json.loads(out.stdout)
        seconds.append(float(result["seconds"]))
        say(f"  push {i + 1}: {len(result['applied'])} nodes in {seconds[-1]:.2f} s")
        time.sleep(1.1)   # agents write status at most once a second: measure each push alone
    return seconds


def run(dry: int = 50, pushes: int = 3, say=print) -> dict:
    rows = {}
    tmp = Path(tempfile.mkdtemp(prefix="nctl-fleet-bench-"))
    try:
        say("fleet: 3 agents applying for real")
        with fleet(tmp / "real") as fl:
            rows["real"] = {"agents": 3, "seconds": _pushes(fl, pushes, "fl0", say)}
        say(f"fleet: {dry} --dry-run agents")
        with fleet(tmp / "dry", count=0) as fl:
            for i in range(dry):
                fl.dry_agent(f"dry-{i:03d}")
            if not wait_for(lambda: len(fl.status()["nodes"]) == dry, timeout=180,
                            interval=1):
                raise RuntimeError("the dry-run agents did not all register")
            rows["dry"] = {"agents": dry, "seconds": _pushes(fl, pushes, "eth0", say)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def table(rows: dict) -> str:
    out = ["Fleet rollout: netctl push to every node applied (seconds)",
           f"{'agents':<24}{'first push':>12}{'later (median)':>16}{'later (max)':>13}"]
    for kind, label in (("real", "real (own netns)"), ("dry", "--dry-run")):
        row = rows.get(kind)
        if not row:
            continue
        first, later = row["seconds"][0], row["seconds"][1:] or row["seconds"]
        out.append(f"{row['agents']:>3} {label:<20}{first:>12.2f}"
                   f"{statistics.median(later):>16.2f}{max(later):>13.2f}")
    if "dry" in rows and rows["dry"]["agents"] >= 50:
        worst = max(rows["dry"]["seconds"])
        out.append(f"target: <= {TARGET_DRY_S:.0f} s for 50 dry-run agents: "
                   f"{'met' if worst <= TARGET_DRY_S else 'MISSED'} (worst {worst:.2f} s)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", type=int, default=50, help="dry-run agents (default 50)")
    parser.add_argument("--pushes", type=int, default=3, help="pushes per fleet (default 3)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.fleet: needs root (namespaces, BPF programs)", file=sys.stderr)
        return 77
    rows = run(args.dry, max(2, args.pushes))
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
