"""Soak: traffic, tracers on, and a policy change every few seconds, for a long time.

    python -m bench.soak 600      # make soak: ten minutes
    python -m bench.soak 60       # the CI version (tests/netns/test_soak.py)

A generator namespace sends UDP to the DUT without pause while `netctl monitor` (policy
events and the kernel tracers) runs in the DUT, and `netctl apply` alternates two policies
every few seconds.  After each apply the probe ports must be judged by the new policy.
Sampled throughout: BPF programs and maps in the system, the monitor's open file descriptors
and memory, the pins and state files.  Nothing may grow: the report compares the first and
the last samples and exits non-zero on growth, on a failed apply or on a wrong verdict.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import FLOOD_DST, NETCTL, sh, topology
from netctl.kernel.netlab import inside

POLICY_A = """
version: 1
defaults: {ingress: accept, egress: accept}
stateful: true
rules:
  - {name: a-drop-1111, action: drop, proto: udp, dport: 1111, log: true}
  - {name: keep-ssh, action: accept, proto: tcp, dport: 22}
"""
POLICY_B = """
version: 1
defaults: {ingress: accept, egress: accept}
stateful: true
rules:
  - {name: b-drop-2222, action: drop, proto: udp, dport: 2222, log: true}
  - {name: keep-ssh, action: accept, proto: tcp, dport: 22}
"""


def _udp_socket(ns: str, bind: tuple | None = None) -> socket.socket:
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if bind:
        s.bind(bind)
    return s


def _probe(gen: str, dut: str, port: int) -> bool:
    rx = _udp_socket(dut, (FLOOD_DST, port))
    tx = _udp_socket(gen)
    with rx, tx:
        rx.settimeout(0.3)
        for _ in range(3):
            tx.sendto(b"probe", (FLOOD_DST, port))
            try:
                rx.recv(100)
                return True
            except TimeoutError:
                continue
    return False


def _sample(monitor: subprocess.Popen, pin_dir: str) -> dict:
    from netctl.kernel import bpfsys

    pid = monitor.pid
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                              text=True).stdout.split()
    target = children[0] if children else str(pid)   # `ip netns exec` execs the monitor
    rss = 0
    with open(f"/proc/{target}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"progs": len(bpfsys.prog_ids()), "maps": len(bpfsys.map_ids()),
            "monitor_fds": len(os.listdir(f"/proc/{target}/fd")), "monitor_rss_kb": rss,
            "pins": sum(len(files) for _, _, files in os.walk(pin_dir))}


def soak(seconds: float, period: float = 3.0, say=print) -> dict:
    tmp = Path(tempfile.mkdtemp())
    paths = [tmp / "a.yaml", tmp / "b.yaml"]
    paths[0].write_text(POLICY_A)
    paths[1].write_text(POLICY_B)
    report: dict = {"seconds": seconds, "applies": 0, "failed_applies": 0,
                    "wrong_verdicts": 0, "samples": [], "events": 0}
    with topology("k") as topo:
        sh(*NETCTL, "apply", str(paths[0]), "--dev", topo.dut_if, ns=topo.dut)
        monitor = subprocess.Popen(["ip", "netns", "exec", topo.dut, *NETCTL, "monitor",
                                    "--type", "policy,drop,retrans,socket", "-o", "json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The soak starts when the monitor is up (its first line): compiling its tracers
        # takes seconds on a busy machine, and what it loads must not count as growth.
        first = monitor.stdout.readline()
        if not first:
            raise RuntimeError(f"netctl monitor did not start: {monitor.stderr.read()}")
        stop = threading.Event()

        def count_events():
            for _ in monitor.stdout:
                report["events"] += 1

        def traffic():
            tx = _udp_socket(topo.gen)
            with tx:
                n = 0
                while not stop.is_set():
                    tx.sendto(b"load", (FLOOD_DST, 1111 + (n % 3) * 1111))
                    n += 1
                    time.sleep(0.001)

        threads = [threading.Thread(target=count_events, daemon=True),
                   threading.Thread(target=traffic, daemon=True)]
        for t in threads:
            t.start()
        cookie_dir = None
        try:
            time.sleep(1)
            status = json.loads(sh(*NETCTL, "status", "-o", "json", ns=topo.dut).stdout)
            cookie_dir = f"/run/netctl/bpf/ns{status['cookie']}"
            started = time.monotonic()
            which = 0
            while time.monotonic() - started < seconds:
                which = 1 - which
                result = subprocess.run(["ip", "netns", "exec", topo.dut, *NETCTL, "apply",
                                         str(paths[which]), "--dev", topo.dut_if],
                                        capture_output=True, text=True)
                report["applies"] += 1
                if result.returncode != 0:
                    report["failed_applies"] += 1
                    say(f"apply failed: {result.stderr.strip()}")
                # A drops 1111, B drops 2222; the other port passes.
                dropped, passed = (1111, 2222) if which == 0 else (2222, 1111)
                if _probe(topo.gen, topo.dut, dropped) or not _probe(topo.gen, topo.dut,
                                                                      passed):
                    report["wrong_verdicts"] += 1
                    say(f"wrong verdict after apply {report['applies']}")
                sample = _sample(monitor, cookie_dir)
                sample["t"] = round(time.monotonic() - started, 1)
                report["samples"].append(sample)
                time.sleep(period)
        finally:
            stop.set()
            monitor.terminate()
            try:
                monitor.wait(timeout=15)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.wait(timeout=15)
            threads[0].join(timeout=5)   # the reader sees end of file, then its pipes close
            for pipe in (monitor.stdout, monitor.stderr):
                pipe.close()
            sh(*NETCTL, "detach", "--all", ns=topo.dut, check=False)
    first, last = report["samples"][1], report["samples"][-1]   # [0]: still settling
    report["growth"] = {k: last[k] - first[k] for k in first if k != "t"}
    report["ok"] = (report["failed_applies"] == 0 and report["wrong_verdicts"] == 0
                    and report["growth"]["progs"] <= 0 and report["growth"]["maps"] <= 0
                    and report["growth"]["monitor_fds"] <= 0 and report["growth"]["pins"] <= 0
                    and last["monitor_rss_kb"] <= first["monitor_rss_kb"] * 1.1 + 2048)
    return report


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 600.0
    report = soak(seconds)
    samples = report.pop("samples")
    print(json.dumps(report, indent=1))
    print(f"first sample {samples[1]}\nlast sample  {samples[-1]}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

