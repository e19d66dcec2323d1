"""Throughput harness: a generator namespace floods a device-under-test namespace over a veth
pair, and each system under test counts what it judges.

Topology (fresh for every measurement, removed after it): namespaces ``gen`` and ``dut``,
a veth pair with one queue per CPU (XDP on a veth runs in one receive context per queue), no
IPv6 on the link (so the kernel adds no traffic of its own), ``FLOOD_SRC`` on the generator
side and ``FLOOD_DST`` on the DUT side.

The generator is trafgen (netsniff-ng): it sends from a packet socket's TX ring with one
worker per CPU, so the generator is not the bottleneck; its own ceiling is measured with the
DUT's end of the link down and reported next to every figure.  On a veth the DUT's receive
path runs on the sending CPU, so generator and DUT share the two CPUs: rates here are
comparable with each other, not with a NIC.

A rate is what a system *judged* per second, read from its own counters over a window
that starts after a warm-up: netctl's rule counter, the bare programs' counters, nftables and
iptables rule counters, xdp-filter's XDP_DROP statistics, or the kernel's UDP NoPorts count
for "no filter".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.rulesets import (
    FLOOD_DPORT,
    FLOOD_DST,
    FLOOD_SPORT,
    FLOOD_SRC,
    BenchRule,
    iptables_raw,
    netctl_policy,
    nft_linear,
    nft_set,
)

REPO = Path(__file__).resolve().parents[1]
NETCTL = [sys.executable, "-m", "netctl"]
CPUS = os.cpu_count() or 1


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 600,
       stdin: str | None = None) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    result = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                            input=stdin, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {result.stderr.strip() or result.stdout}")
    return result


@dataclass
class Topology:
    gen: str
    dut: str
    gen_if: str
    dut_if: str
    dut_mac: str


@contextlib.contextmanager
def topology(tag: str = "b") -> Iterator[Topology]:
    pid = os.getpid() % 100000
    gen, dut = f"nctl-bench{pid}{tag}-gen", f"nctl-bench{pid}{tag}-dut"
    gen_if, dut_if = f"bg{pid}{tag}"[:15], f"bd{pid}{tag}"[:15]
    made = []
    try:
        for ns in (gen, dut):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        q = str(CPUS)
        sh("ip", "link", "add", gen_if, "netns", gen, "numtxqueues", q, "numrxqueues", q,
           "type", "veth", "peer", "name", dut_if, "netns", dut, "numtxqueues", q,
           "numrxqueues", q)
        for ns, ifname, addr in ((gen, gen_if, FLOOD_SRC), (dut, dut_if, FLOOD_DST)):
            sh("sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1", ns=ns, check=False)
            sh("ip", "addr", "add", f"{addr}/24", "dev", ifname, ns=ns)
            sh("ip", "link", "set", ifname, "up", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        mac = sh("ip", "-j", "link", "show", dut_if, ns=dut).stdout
        yield Topology(gen, dut, gen_if, dut_if, json.loads(mac)[0]["address"])
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a generator started with start_new_session=True, and every process it forked
    (trafgen's workers outlive their parent otherwise): SIGINT, then SIGKILL."""
    import signal

    for sig, wait in ((signal.SIGINT, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:   # the leader is gone; are its workers?
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break


def flood_frame(dst_mac: str, src: str = FLOOD_SRC, dst: str = FLOOD_DST,
                src_mac: str = "02:00:00:00:00:01") -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    frame = bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) /
                  UDP(sport=FLOOD_SPORT, dport=FLOOD_DPORT) / (b"x" * 18))
    assert len(frame) == 60
    return frame


@dataclass
class Rate:
    pps: float          # judged per second by the system
    sent_pps: float     # what trafgen sent per second over its whole run


def flood(topo: Topology, counter: Callable[[], int], seconds: float,
          warmup: float = 1.0, frame: bytes | None = None) -> Rate:
    """Flood with trafgen (one worker per CPU) and read ``counter`` over a window."""
    frame = frame or flood_frame(topo.dut_mac)
    with tempfile.NamedTemporaryFile("w", suffix=".trafgen", delete=False) as f:
        f.write("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")
        conf = f.name
    # `timeout` ends trafgen with SIGINT (it then prints its totals) a little after the
    # measurement window.
    run_for = warmup + seconds + 1.0
    proc = subprocess.Popen(["ip", "netns", "exec", topo.gen, "timeout", "-s", "INT",
                             f"{run_for:.1f}", "trafgen", "--dev", topo.gen_if, "--conf", conf,
                             "--cpus", str(CPUS), "--no-sock-mem"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(warmup)
        c0, t0 = counter(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = counter(), time.monotonic()
        # Wait for the process, not for the end of its output: a worker that outlives its
        # parent keeps the pipe open (then only the sent count is lost, not the figure).
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=run_for + 30)
    finally:
        stop_group(proc)
        out = proc.stdout.read()
        proc.stdout.close()
        os.unlink(conf)
    total = run_for
    match = re.search(r"(\d+) packets outgoing", out)
    sent = int(match.group(1)) if match else 0
    return Rate((c1 - c0) / (t1 - t0), sent / total if total else 0.0)


# ---- systems under test ----------------------------------------------------------------

class System:
    """Set up on a fresh topology, count what it judged.  ``max_rules``: the most it can
    hold (None: no limit)."""

    name = "?"
    hook = "?"
    max_rules: int | None = None

    def setup(self, topo: Topology, rules: list[BenchRule]) -> float:
        """Install; returns the seconds it took."""
        return 0.0

    def counter(self, topo: Topology) -> int:
        raise NotImplementedError


class GeneratorCeiling(System):
    name, hook = "generator ceiling (DUT link down)", "-"

    def setup(self, topo, rules):
        sh("ip", "link", "set", topo.dut_if, "down", ns=topo.dut)
        return 0.0

    def counter(self, topo):
        stats = json.loads(sh("ip", "-j", "-s", "link", "show", topo.gen_if,
                              ns=topo.gen).stdout)[0]["stats64"]["tx"]
        return stats["packets"] + stats["dropped"]


class NoFilter(System):
    name, hook = "no filter (closed port)", "stack"

    def counter(self, topo):
        lines = [line.split() for line in sh("cat", "/proc/net/snmp", ns=topo.dut).stdout
                 .splitlines() if line.startswith("Udp:")]
        fields = dict(zip(lines[0][1:], lines[1][1:], strict=True))
        return int(fields["NoPorts"]) + int(fields["InErrors"]) + int(fields["InDatagrams"])


_BARE = """
BPF_PERCPU_ARRAY(hits, u64, 1);
static __always_inline void hit(void) { u32 k = 0; u64 *v = hits.lookup(&k); if (v) *v += 1; }
int bare_xdp(struct xdp_md *ctx) { hit(); return XDP_DROP; }
int bare_tc(struct __sk_buff *skb) { hit(); return 2; }
"""


class BareDrop(System):
    """A program that drops everything (and counts): the ceiling of its hook."""

    def __init__(self, hook: str):
        self.hook = hook
        self.name = f"bare {hook} drop"
        self._maps = None

    def setup(self, topo, rules):
        # Loaded and attached from inside the DUT namespace by a helper process that stays
        # alive (holding the counter map) until the topology goes.
        code = f"""
import sys, time
from bcc import BPF
from pyroute2 import IPRoute
b = BPF(text='''{_BARE}''')
ip = IPRoute(); idx = ip.link_lookup(ifname='{topo.dut_if}')[0]
if '{self.hook}' == 'xdp':
    fn = b.load_func('bare_xdp', BPF.XDP)
    ip.link('set', index=idx, xdp={{'attrs': [('IFLA_XDP_FD', fn.fd), ('IFLA_XDP_FLAGS', 4)]}})
else:
    fn = b.load_func('bare_tc', BPF.SCHED_CLS)
    ip.tc('add', 'clsact', idx)
    ip.tc('add-filter', kind='bpf', index=idx, handle=1, fd=fn.fd, name='bare',
          parent='ffff:fff2', classid=1, direct_action=True, prio=1)
print('ready', flush=True)
hits = b['hits']
for line in sys.stdin:
    print(sum(v for v in hits[hits.Key(0)]), flush=True)
"""
        self._proc = subprocess.Popen(["ip", "netns", "exec", topo.dut, sys.executable, "-c",
                                       code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{self.name}: setup failed")
        return 0.0

    def counter(self, topo):
        self._proc.stdin.write("\n")
        self._proc.stdin.flush()
        return int(self._proc.stdout.readline())

    def close(self):
        with contextlib.suppress(Exception):
            self._proc.stdin.close()
            self._proc.wait(timeout=10)


class Netctl(System):
    def __init__(self, xdp_mode: str | None, label: str):
        self.xdp_mode = xdp_mode
        self.name = label
        self.hook = "xdp" if xdp_mode == "native" else "tc (auto)"
        self.rule_name = None

    def setup(self, topo, rules):
        path = Path(tempfile.mkdtemp()) / "bench.yaml"
        path.write_text(netctl_policy(rules))
        args = ["apply", str(path), "--dev", topo.dut_if, "-o", "json"]
        if self.xdp_mode:
            args += ["--xdp-mode", self.xdp_mode]
        started = time.monotonic()
        sh(*NETCTL, *args, ns=topo.dut, timeout=900)
        took = time.monotonic() - started
        self.rule_name = f"r{len(rules) - 1}"
        self._reader = None
        self.counter(topo)           # start the reader now, before any flood
        return took

    # The rule's counter read by a process that stays in the DUT namespace with the live
    # datapath open: `netctl status` would start Python and read the whole policy back from
    # the kernel inside the measurement window, on the CPUs the flood uses (measured: 0.75
    # of the bare drop at 10,000 rules read this way against 0.54 with status).
    _READER = """
import sys
from netctl.datapath.control import _open_live, live_state
from netctl.datapath.netns import Namespace
state, _ = live_state(Namespace.current())
live, why = _open_live(Namespace.current(), state)
gen = live.active
names = state["generations"][str(gen)]["rules"]
index = names.index(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    print(live.rule_counters(gen, index + 1)[index][0], flush=True)
"""

    def counter(self, topo):
        if getattr(self, "_reader", None) is None:
            self._reader = subprocess.Popen(
                ["ip", "netns", "exec", topo.dut, sys.executable, "-c", self._READER,
                 self.rule_name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if self._reader.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{self.name}: the counter reader did not start")
        self._reader.stdin.write("\n")
        self._reader.stdin.flush()
        return int(self._reader.stdout.readline())

    def close_in(self, topo):
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.stdin.close()
                reader.wait(timeout=10)
        sh(*NETCTL, "detach", "--all", ns=topo.dut, check=False)


class Nft(System):
    def __init__(self, style: str):
        self.style = style
        self.name = "nftables linear chain" if style == "linear" else "nftables interval set"
        self.hook = "netdev ingress"

    def setup(self, topo, rules):
        text = (nft_linear if self.style == "linear" else nft_set)(rules, topo.dut_if)
        started = time.monotonic()
        sh("nft", "-f", "-", ns=topo.dut, stdin=text, timeout=1800)
        return time.monotonic() - started

    def counter(self, topo):
        data = json.loads(sh("nft", "-j", "list", "table", "netdev", "nctlbench",
                             ns=topo.dut).stdout)
        total = 0
        for item in data["nftables"]:
            rule = item.get("rule")
            if rule:
                for expr in rule["expr"]:
                    if "counter" in expr:
                        total += expr["counter"]["packets"]
        return total


class Iptables(System):
    name, hook = "iptables (raw PREROUTING)", "netfilter"

    def setup(self, topo, rules):
        started = time.monotonic()
        sh("iptables-restore", ns=topo.dut, stdin=iptables_raw(rules, 4), timeout=1800)
        return time.monotonic() - started

    def counter(self, topo):
        out = sh("iptables-save", "-c", "-t", "raw", ns=topo.dut).stdout
        return sum(int(m.group(1)) for m in re.finditer(r"^\[(\d+):\d+\] -A PREROUTING", out,
                                                        re.M))


class XdpFilter(System):
    """xdp-tools' xdp-filter: deny lists of addresses (and ports), any match drops.  It cannot
    combine an address with a port, and holds 10,000 IPv4 addresses: the rule set becomes
    the rules' network addresses, the flood's source last."""

    name, hook = "xdp-filter (addresses)", "xdp"
    max_rules = 10000

    def setup(self, topo, rules):
        import ipaddress

        addresses = [str(ipaddress.ip_network(r.src).network_address) for r in rules
                     if ipaddress.ip_network(r.src).version == 4]
        if FLOOD_SRC in addresses[:-1]:
            addresses = [a for a in addresses[:-1] if a != FLOOD_SRC] + [FLOOD_SRC]
        started = time.monotonic()
        # xdp-filter pins under /sys/fs/bpf, which `ip netns exec` hides: mount a bpffs for
        # this one shell; the program stays attached when it goes.  Its address list is
        # filled through the map directly (one process per address would take hours).
        code = f"""
import ipaddress, struct, subprocess, sys
subprocess.run(['mount', '-t', 'bpf', 'bpf', '/sys/fs/bpf'], check=True)
subprocess.run(['xdp-filter', 'load', '-m', 'native', '-f', 'ipv4,udp', '{topo.dut_if}'],
               check=True)
subprocess.run(['xdp-filter', 'ip', '-m', 'src', '{addresses[0]}'], check=True)
from netctl import bpfsys
from netctl.datapath.attach import Links
with Links() as links:
    info = bpfsys.prog_info(bpfsys.prog_fd_by_id(links.find('{topo.dut_if}').xdp_prog_id))
maps = {{m.info.name: m for m in (bpfsys.Map(bpfsys.map_fd_by_id(i)) for i in info.map_ids)}}
table = maps['filter_ipv4']
value = struct.pack('<Q', 1) * bpfsys.possible_cpus()
for line in sys.stdin:
    table.update(ipaddress.IPv4Address(line.strip()).packed, value)
print(maps['xdp_stats_map'].info.id)
"""
        out = sh(sys.executable, "-c", code, ns=topo.dut, stdin="\n".join(addresses) + "\n",
                 timeout=900)
        self.stats_id = int(out.stdout.split()[-1])
        return time.monotonic() - started

    def counter(self, topo):
        code = (f"from netctl import bpfsys, abi; m = bpfsys.Map(bpfsys.map_fd_by_id("
                f"{self.stats_id})); print(abi.sum_counters(m.lookup(abi.pack_u32(1)))[0])")
        return int(sh(sys.executable, "-c", code, ns=topo.dut).stdout)


def measure(system: System, rules: list[BenchRule], seconds: float,
            tag: str = "b") -> dict:
    with topology(tag) as topo:
        try:
            setup = system.setup(topo, rules)
            rate = flood(topo, lambda: system.counter(topo), seconds)
        finally:
            if isinstance(system, BareDrop):
                system.close()
            if isinstance(system, Netctl):
                system.close_in(topo)
    return {"system": system.name, "hook": system.hook, "rules": len(rules),
            "pps": rate.pps, "sent_pps": rate.sent_pps, "setup_s": setup}
