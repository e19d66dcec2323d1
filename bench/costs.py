"""Costs measured without traffic: per-packet program cost (BPF_PROG_TEST_RUN) and the cost of
an apply (time, entries written, controller memory, BPF map memory).

Per-packet: netctl's XDP and tc programs judge the flood's frame against N mixed rules, next
to a program that does nothing but one LPM lookup of the source address in a trie of the same
N source prefixes (the floor of any prefix classifier), in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import NETCTL, flood_frame, sh, topology
from bench.rulesets import BenchRule, netctl_policy, nft_set, rules

REPEAT = 1_000_000

LPM_FLOOR = Path(__file__).resolve().parent / "bpf" / "lpm_floor.c"


def _best(fd: int, frame: bytes, runs: int = 3, repeat: int = REPEAT) -> int:
    from netctl.kernel import bpfsys

    return min(bpfsys.test_run(fd, frame, repeat=repeat).duration_ns for _ in range(runs))


def per_packet(ns: list[int], repeat: int = REPEAT) -> list[dict]:
    """ns per packet for netctl (XDP, tc) and the LPM-only floor (XDP, tc) at each N."""
    import ipaddress

    from bcc import BPF

    from netctl.datapath.sandbox import Sandbox
    from netctl.policy.compile import compile_policy
    from netctl.policy.load import load_policy_text
    from netctl.policy.plan import Limits

    frame = flood_frame("02:00:00:00:00:02")
    out = []
    limits = Limits()
    with Sandbox(limits) as box:
        for n in ns:
            bench = rules(n)
            plan = compile_policy(load_policy_text(netctl_policy(bench), f"bench-{n}.yaml"),
                                  limits)
            box.load(plan)
            got = box.run(frame, "xdp")
            assert got.rule == n - 1, got
            floor = BPF(src_file=str(LPM_FLOOR))
            try:
                trie = floor["src4"]
                for r in bench:
                    net = ipaddress.ip_network(r.src)
                    if net.version == 4:
                        key = trie.Key()
                        key.prefixlen = net.prefixlen
                        key.addr = (type(key.addr))(*net.network_address.packed)
                        trie[key] = trie.Leaf(1)
                lpm = {h: floor.load_func(f"lpm_{h}", BPF.XDP if h == "xdp" else BPF.SCHED_CLS)
                       for h in ("xdp", "tc")}
                row = {"rules": n, "rule_trie_entries": len(plan.maps()["rule_table"]),
                       "netctl_xdp_ns": _best(box.dp.programs["xdp"], frame, repeat=repeat),
                       "netctl_tc_ns": _best(box.dp.programs["tc_ingress"], frame,
                                             repeat=repeat),
                       "lpm_xdp_ns": _best(lpm["xdp"].fd, frame, repeat=repeat),
                       "lpm_tc_ns": _best(lpm["tc"].fd, frame, repeat=repeat)}
            finally:
                floor.cleanup()
            out.append(row)
    return out


def _map_memory(ns: str) -> int:
    """Bytes of kernel memory of netctl's maps in ``ns`` (the kernel's own accounting, the
    memlock line of each map's fdinfo)."""
    code = """
import os, glob
from netctl.datapath.netns import Namespace
from netctl.kernel import bpfsys
total = 0
root = Namespace.current().pin_dir
for path in glob.glob(root + '/*/*'):
    if os.path.basename(path).startswith('prog_'):
        continue
    fd = bpfsys.obj_get(path)
    with open(f'/proc/self/fdinfo/{fd}') as f:
        for line in f:
            if line.startswith('memlock:'):
                total += int(line.split()[1])
    os.close(fd)
print(total)
"""
    return int(sh(sys.executable, "-c", code, ns=ns).stdout)


# A process forked from this (large) one starts with this one's resident pages counted in its
# peak RSS, exec or not; so the apply runs as the grandchild of a small wrapper, which reports
# the apply's own peak on the fd given as its first argument.
_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed_netctl(ns: str, *args: str) -> tuple[float, dict, int, float]:
    """`netctl ARGS -o json` as a separate process in ``ns``: (seconds, its JSON, its peak
    RSS in bytes, the time.monotonic() it was started at)."""
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _WRAPPER, str(write_fd), "ip", "netns",
                             "exec", ns, *NETCTL, *args, "-o", "json"], capture_output=True,
                            text=True, pass_fds=(write_fd,), timeout=1800, check=False)
    took = time.monotonic() - started
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        peak_kb = int(f.read() or 0)
    if result.returncode != 0:
        raise RuntimeError(f"netctl {args[0]} failed: {result.stderr}")
    return took, json.loads(result.stdout), peak_kb * 1024, started


def _timed_apply(ns: str, path: Path, dev: str) -> tuple[float, dict, int]:
    """(seconds, the apply's JSON, that process's peak RSS in bytes)."""
    took, out, peak, _ = timed_netctl(ns, "apply", str(path), "--dev", dev)
    return took, out, peak


# Scrapes /metrics from inside the namespace (the exporter serves its loopback): waits for it
# to answer, then prints the fastest of three scrapes (seconds) and the body's size.
_SCRAPER = """
import sys, time, urllib.request
url = sys.argv[1]
deadline = time.monotonic() + 120
while True:
    try:
        urllib.request.urlopen(url, timeout=60).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
best, size = None, 0
for _ in range(3):
    started = time.monotonic()
    size = len(urllib.request.urlopen(url, timeout=60).read())
    took = time.monotonic() - started
    best = took if best is None else min(best, took)
print(best, size)
"""
SCRAPE_MODES = ("all", "top:100")


def scrape_seconds(ns: str, mode: str, port: int = 9533) -> tuple[float, int]:
    """A `netctl exporter --rules MODE` scrape of the live datapath (no kernel tracers):
    (seconds, bytes), the fastest of three after the first answer."""
    server = subprocess.Popen(["ip", "netns", "exec", ns, *NETCTL, "exporter", "--no-kernel",
                               "--listen", f"127.0.0.1:{port}", "--rules", mode],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        out = sh(sys.executable, "-c", _SCRAPER, f"http://127.0.0.1:{port}/metrics", ns=ns,
                 timeout=600).stdout.split()
        return float(out[0]), int(out[1])
    finally:
        server.terminate()
        server.wait(timeout=30)


def _with_one_rule_changed(bench: list[BenchRule]) -> list[BenchRule]:
    """The same rules with the middle one's source prefix replaced."""
    changed = list(bench)
    i = len(changed) // 2
    changed[i] = BenchRule("203.0.113.0/24", changed[i].proto, changed[i].dport)
    return changed


def apply_costs(ns_list: list[int], mix: str = "bench") -> list[dict]:
    """Cold apply (programs built and attached), warm (same policy), one rule changed; map
    entries written; peak controller RSS (the larger of the cold and the one-rule apply);
    `netctl status` and an exporter scrape (every rule, and the 100 busiest) of the applied
    policy; BPF map memory; and `nft -f` of the same rules as an interval set."""
    out = []
    for n in ns_list:
        bench = rules(n, mix)
        tmp = Path(tempfile.mkdtemp())
        (tmp / "a.yaml").write_text(netctl_policy(bench))
        (tmp / "b.yaml").write_text(netctl_policy(_with_one_rule_changed(bench)))
        with topology("a") as topo:
            try:
                cold_s, cold, rss1 = _timed_apply(topo.dut, tmp / "a.yaml", topo.dut_if)
                warm_s, warm, _ = _timed_apply(topo.dut, tmp / "a.yaml", topo.dut_if)
                one_s, one, rss2 = _timed_apply(topo.dut, tmp / "b.yaml", topo.dut_if)
                status_s = timed_netctl(topo.dut, "status")[0]
                scrapes = {mode: scrape_seconds(topo.dut, mode) for mode in SCRAPE_MODES}
                memory = _map_memory(topo.dut)
                verifier = json.loads(sh(*NETCTL, "status", "-o", "json",
                                         ns=topo.dut).stdout).get("verifier", {})
            finally:
                sh(*NETCTL, "detach", "--all", ns=topo.dut, check=False)
            started = time.monotonic()
            sh("nft", "-f", "-", ns=topo.dut, stdin=nft_set(bench, topo.dut_if), timeout=1800)
            nft_s = time.monotonic() - started
        out.append({"rules": n, "mix": mix, "cold_s": cold_s, "cold_entries": cold["entries"],
                    "warm_s": warm_s, "warm_entries": warm["entries"],
                    "warm_unchanged": warm["unchanged"],
                    "one_rule_s": one_s, "one_rule_entries": one["entries"],
                    "one_rule_reload": one["reload"],
                    "peak_rss_mb": max(rss1, rss2) / 2**20, "map_memory_mb": memory / 2**20,
                    "nft_set_load_s": nft_s, "status_s": status_s,
                    "scrape_s": {mode: took for mode, (took, _) in scrapes.items()},
                    "scrape_bytes": {mode: size for mode, (_, size) in scrapes.items()},
                    "verifier": verifier.get("tc_ingress", "")})
        for f in tmp.iterdir():
            os.unlink(f)
        os.rmdir(tmp)
    return out
