"""`netctl doctor`: what this machine really offers netctl, found by trying it.

Every check does the real thing where it can: program types are probed by loading tiny
hand-assembled programs with bpf(2) (``netctl.kernel.bpfsys``, never bcc, whose compiles are slow),
attach points by attaching, the test-run and ring-buffer paths by running a program and
reading what it wrote, XDP and tc by attaching to a temporary veth pair.  A failure says
why (errno name and text, the verifier's first words, a missing PMU or mount).

Checks answer in the namespaces the process is in: under `ip netns exec` /sys is a fresh
sysfs, so bpffs, tracefs and debugfs mounted on the host are not visible, and the veth pair
is made in that network namespace.

Nothing is left behind: every fd is closed, the veth pair (with its XDP program, clsact
qdisc and filter) is deleted even when a step fails, and nothing is pinned or mounted.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

from ...paths import PIN_ROOT as PIN_ROOT  # re-exported: the tests read it
from .base import Check as Check
from .base import Context as Context
from .base import ProbeFailed as ProbeFailed
from .base import _run
from .look import (
    check_bpffs,
    check_btf,
    check_debugfs,
    check_headers,
    check_jit,
    check_kernel,
    check_pin_root,
    check_privilege,
    check_tracefs,
)
from .probes import (
    Probes,
    _veth_checks,
    check_prog_fentry,
    check_prog_kprobe,
    check_prog_raw_tracepoint,
    check_prog_sched_cls,
    check_prog_tracepoint,
    check_prog_xdp,
    check_ringbuf,
    check_test_run,
)

# ---- running and reporting ----------------------------------------------------------------


def run_checks() -> list[Check]:
    ctx = Context()
    checks = [_run(fn.__name__.removeprefix("check_"), lambda fn=fn: fn(ctx), True)
              for fn in (check_kernel, check_privilege, check_btf, check_headers)]
    checks.append(_run("jit", lambda: check_jit(ctx), False))
    checks += [_run(name, lambda fn=fn: fn(ctx), req) for name, fn, req in (
        ("bpffs", check_bpffs, False), ("pin_root", check_pin_root, True),
        ("tracefs", check_tracefs, False), ("debugfs", check_debugfs, False))]
    probes = Probes(ctx)
    try:
        for name, fn, required in (
            ("prog_xdp", check_prog_xdp, True),
            ("prog_sched_cls", check_prog_sched_cls, True),
            ("prog_tracepoint", check_prog_tracepoint, True),
            ("prog_raw_tracepoint", check_prog_raw_tracepoint, False),
            ("prog_kprobe", check_prog_kprobe, False),
            ("prog_fentry", check_prog_fentry, False),
            ("test_run", check_test_run, True),
            ("ringbuf", check_ringbuf, False),
        ):
            checks.append(_run(name, lambda fn=fn: fn(probes), required))
        checks += _veth_checks(probes)
    finally:
        probes.close()
    return checks


def report(checks: list[Check]) -> dict:
    return {"kernel": os.uname().release,
            "checks": [asdict(c) for c in checks],
            "ok": all(c.ok for c in checks if c.required)}


def format_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks) + 2
    lines = []
    for c in checks:
        tag = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        lines.append(f"{tag}  {c.name:<{width}}{c.detail}")
    failed = [c.name for c in checks if c.required and not c.ok]
    warned = sum(1 for c in checks if not c.required and not c.ok)
    passed = sum(1 for c in checks if c.ok)
    summary = (f"{len(checks)} checks: {passed} ok, {warned} warning{'s' * (warned != 1)} "
               f"(not required), {len(failed)} failed")
    if failed:
        summary += f" ({', '.join(failed)}): netctl cannot run here as is"
    else:
        summary += ": every required check passed"
    lines.append(summary)
    return "\n".join(lines)


def main(output: str = "text") -> int:
    checks = run_checks()
    data = report(checks)
    if output == "json":
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_text(checks))
    return 0 if data["ok"] else 1
