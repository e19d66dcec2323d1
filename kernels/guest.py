"""Inside one virtual machine of the kernel matrix: everything in one process, each program
compiled once.

    python -m kernels.guest OUTDIR       # run by kernels.run through virtme-ng, as root

1. mounts bpffs (/sys/fs/bpf and netctl's pin root), tracefs and debugfs where missing;
2. verifier census: the datapath's six programs (XDP and tc, Ethernet and L3 variants)
   compiled once with the sandbox's constants and each loaded on its own: the verifier's
   "processed N insns" line, or its refusal with the log's last lines.  When all load,
   the build is in the program cache, so the differential tests' sandbox takes it;
3. tracer census: every kind under every hook, really loaded and attached (probe_hooks);
   with compiles kept for reuse (NETCTL_TRACER_REUSE=1) the tests below take them;
4. one pytest session: tests/bpf/test_tracers.py (every kind, each hook and automatic
   selection, induced events), tests/bpf/test_differential.py (real programs against
   the reference model through BPF_PROG_TEST_RUN; generated examples and the drop flood
   scaled by NETCTL_TEST_SCALE, the CI floor of compared packets left out) and a namespace smoke
   test (veth, `netctl apply` under XDP then tc, traffic, `netctl status`, `netctl
   detach`).

OUTDIR/results.json is rewritten after every stage (a run cut short keeps what it has),
OUTDIR/guest.log holds everything printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCALE = "0.1"
PARTS = {
    "tracers": ["tests/bpf/test_tracers.py"],
    "differential": ["tests/bpf/test_differential.py"],
    "netns": ["tests/netns/test_datapath.py::test_detach_removes_everything_netctl_added"],
}
DESELECT = ["tests/bpf/test_differential.py::test_enough_packets_were_compared"]


def _mount(fstype: str, where: str) -> None:
    with open("/proc/self/mounts") as f:
        if any(line.split()[1] == where for line in f):
            return
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-t", fstype, fstype, where], check=True)


class Results:
    def __init__(self, out: Path):
        self.path = out / "results.json"
        self.data: dict = {"release": os.uname().release, "started": time.time(),
                           "cpus": os.cpu_count(), "stages": {}, "tests": []}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def _processed(text: str) -> int | None:
    found = re.findall(r"processed (\d+) insns", text)
    return int(found[-1]) if found else None


def verifier_census(out: Path) -> dict:
    """Per datapath role: {"ok", "processed", "stats"} or the refusal, from a forked child
    (bcc's LLVM may end the process it runs in)."""
    from netctl.datapath import build, progcache
    from netctl.datapath.netns import ensure_pin_root
    from netctl.kernel.bpfsrc import translation_unit
    from netctl.paths import PIN_ROOT
    from netctl.policy.compile import compile_policy
    from netctl.policy.model import Policy
    from netctl.policy.plan import Limits

    ensure_pin_root()
    constants = compile_policy(Policy(), Limits(rules=16)).constants()
    pin_dir = f"{PIN_ROOT}/matrix-census"
    os.makedirs(pin_dir, exist_ok=True)
    ct = f"{pin_dir}/conntrack"
    key = progcache.cache_key([translation_unit(build.XDP_SOURCE),
                               translation_unit(build.TC_SOURCE)],
                              build.cflags(constants, pin_dir, (), ct))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        with open(out / "census-compile.log", "w") as compiler:   # LLVM's warnings
            os.dup2(compiler.fileno(), 2)
        report: dict = {}
        try:
            refused: dict = {}
            programs = build._compile_here(constants, pin_dir, (), ct, key, refused)
            for role, stats in programs.verifier.items():
                report[role] = {"ok": True, "processed": _processed(stats), "stats": stats}
            for role, exc in refused.items():
                log = exc.log or ""
                report[role] = {"ok": False, "error": str(exc).splitlines()[0],
                                "processed": _processed(log),
                                "log_tail": log.rstrip().splitlines()[-12:]}
            programs.close()
        except BaseException as exc:  # reported by the parent
            report = {"error": f"{type(exc).__name__}: {exc}",
                      "log": getattr(exc, "log", "")}
        with os.fdopen(write, "w") as f:
            f.write(json.dumps(report))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        raw = f.read()
    os.waitpid(pid, 0)
    subprocess.run(["rm", "-rf", pin_dir], check=False)
    return json.loads(raw) if raw else {"error": "the census child died"}


def tracer_census() -> dict:
    from netctl.observe.trace import probe_hooks

    return {kind: {hook: {k: entry[k] for k in ("ok", "why", "errno", "compiled", "loaded")}
                   for hook, entry in hooks.items()}
            for kind, hooks in probe_hooks().items()}


class Recorder:
    """A pytest plugin keeping each test's outcome (setup and teardown errors included)."""

    def __init__(self, results: Results):
        self.results = results

    def pytest_runtest_logreport(self, report) -> None:
        part = next((p for p, files in PARTS.items()
                     if any(report.nodeid.startswith(f.split("::")[0]) for f in files)), "?")
        if report.when == "call" or report.outcome != "passed":
            outcome = report.outcome if report.when == "call" else (
                "skipped" if report.skipped else "error")
            detail = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                detail = str(report.longrepr[2])
            elif report.failed:
                detail = "\n".join(str(report.longrepr).splitlines()[-15:])
            self.results.data["tests"].append({
                "nodeid": report.nodeid, "part": part, "when": report.when,
                "outcome": outcome, "duration": round(report.duration, 2),
                "detail": detail})
            self.results.save()


def _stage(results: Results, name: str, fn) -> None:
    start = time.monotonic()
    print(f"guest: {name} ...", flush=True)
    try:
        value = fn()
    except Exception as exc:   # kept in the results: the run goes on
        value = {"error": f"{type(exc).__name__}: {exc}"}
    results.data["stages"][name] = {"seconds": round(time.monotonic() - start, 1),
                                    "result": value}
    results.save()
    print(f"guest: {name} done in {time.monotonic() - start:.0f} s", flush=True)


def main(out: Path) -> int:
    os.environ.update(NETCTL_TRACER_REUSE="1", NETCTL_TEST_SCALE=SCALE,
                      PYTHONDONTWRITEBYTECODE="1",
                      PATH="/usr/local/sbin:/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    sys.dont_write_bytecode = True
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    for fstype, where in (("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing"),
                          ("debugfs", "/sys/kernel/debug")):
        _mount(fstype, where)
    results = Results(out)
    results.save()
    _stage(results, "verifier", lambda: verifier_census(out))
    _stage(results, "hooks", tracer_census)

    import pytest

    args = ["-q", "-p", "no:cacheprovider", "-o", "addopts=-ra --strict-markers"]
    args += [t for files in PARTS.values() for t in files]
    args += [f"--deselect={d}" for d in DESELECT]
    start = time.monotonic()
    print("guest: pytest " + " ".join(args), flush=True)
    code = pytest.main(args, plugins=[Recorder(results)])
    results.data["stages"]["pytest"] = {"seconds": round(time.monotonic() - start, 1),
                                        "result": {"exit": int(code)}}
    results.data["finished"] = time.time()
    results.save()
    return 0


if __name__ == "__main__":
    target = Path(sys.argv[1])
    with open(target / "guest.log", "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        sys.exit(main(target))
