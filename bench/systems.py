"""The systems under test (bench/harness.py floods them): the limits (generator ceiling, no
filter, bare XDP and tc drops), netctl and its variants, nftables (linear chain, interval
set), iptables and xdp-filter, each set up with a rule set in its own language and read
from its own counters; and the steps that measure them in turn on one topology."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    NETCTL,
    REPO,
    Topology,
    flood,
    read_counter,
    sh,
    start_reader,
    stop_reader,
    topology,
)
from bench.rulesets import (
    BenchRule,
    iptables_raw,
    netctl_policy,
    nft_linear,
    nft_prefix_set,
    nft_set,
    xdp_filter_addresses,
)


class System:
    """Set up on a fresh topology, count what it judged.  ``max_rules``: the most it can
    hold (None: no limit).  ``rule_independent``: it judges without rules (a bare limit),
    so it is measured once per flood, whatever the rule set."""

    name = "?"
    hook = "?"
    max_rules: int | None = None
    rule_independent = False

    def holds(self, rules: list[BenchRule]) -> bool:
        """Whether its rule model can express ``rules`` (enough to drop the flood)."""
        return self.max_rules is None or len(rules) <= self.max_rules

    def setup(self, topo: Topology, rules: list[BenchRule]) -> float:
        """Install ``rules``, replacing what an earlier step on this topology installed;
        returns the seconds it took."""
        return 0.0

    def counter(self, topo: Topology) -> int:
        raise NotImplementedError

    def pause(self, topo: Topology) -> None:
        """The end of a step (the next may install other rules, or another system): a
        resident reader stops (it read the state of the step that started it)."""
        reader, self._reader = self._reader, None
        stop_reader(reader)

    def teardown(self, topo: Topology) -> None:
        """Remove what it installed and stop its helpers (the topology goes next)."""
        self.pause(topo)

    # A counter read by a process that stays in the DUT namespace (start_reader): started
    # on the first read of a step, asked for each later read.
    _reader = None

    def read_resident(self, topo: Topology, code: str, *args: str) -> int:
        if self._reader is None:
            self._reader = start_reader(topo.dut, code, *args, name=self.name)
        return read_counter(self._reader)


class GeneratorCeiling(System):
    name, hook = "generator ceiling (DUT link down)", "-"
    rule_independent = True

    def setup(self, topo, rules):
        sh("ip", "link", "set", topo.dut_if, "down", ns=topo.dut)
        return 0.0

    def counter(self, topo):
        stats = json.loads(sh("ip", "-j", "-s", "link", "show", topo.gen_if,
                              ns=topo.gen).stdout)[0]["stats64"]["tx"]
        return stats["packets"] + stats["dropped"]


class NoFilter(System):
    name, hook = "no filter (closed port)", "stack"
    rule_independent = True

    def counter(self, topo):
        lines = [line.split() for line in sh("cat", "/proc/net/snmp", ns=topo.dut).stdout
                 .splitlines() if line.startswith("Udp:")]
        fields = dict(zip(lines[0][1:], lines[1][1:], strict=True))
        return int(fields["NoPorts"]) + int(fields["InErrors"]) + int(fields["InDatagrams"])


BARE_DROP = REPO / "bench" / "bpf" / "bare_drop.c"


class BareDrop(System):
    """A program that drops everything (and counts): the ceiling of its hook."""

    rule_independent = True

    def __init__(self, hook: str):
        self.hook = hook
        self.name = f"bare {hook} drop"
        self._proc = None

    def setup(self, topo, rules):
        if self._proc is not None:
            return 0.0          # attached in an earlier step; it has no rules to change
        # Loaded and attached from inside the DUT namespace by a helper process that stays
        # alive (holding the counter map) until the topology goes.
        code = f"""
import sys, time
from bcc import BPF
from pyroute2 import IPRoute
b = BPF(src_file='{BARE_DROP}')
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

    def teardown(self, topo):
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
                proc.wait(timeout=10)


class Netctl(System):
    """netctl with its default hook (``xdp_mode`` None: `xdp: auto`) or forced to XDP, and
    its flow cache as the policy says (None: the default, auto).  Variants measured on one
    topology share its live datapath: each step is an apply of its own policy."""

    def __init__(self, xdp_mode: str | None, label: str, flow_cache: str | None = None,
                 policy: str | None = None, rule: str | None = None):
        """``policy``: a policy text to apply instead of the step's rules (then ``rule``
        names the rule whose counter is read; set files it names must be absolute)."""
        self.xdp_mode = xdp_mode
        self.flow_cache = flow_cache
        self.name = label
        self.hook = "xdp" if xdp_mode == "native" else "tc (auto)"
        self.policy = policy
        self.rule = rule
        self.rule_name = None

    def setup(self, topo, rules):
        self.pause(topo)
        path = Path(tempfile.mkdtemp()) / "bench.yaml"
        path.write_text(self.policy if self.policy is not None
                        else netctl_policy(rules, flow_cache=self.flow_cache))
        args = ["apply", str(path), "--dev", topo.dut_if, "-o", "json"]
        if self.xdp_mode:
            args += ["--xdp-mode", self.xdp_mode]
        started = time.monotonic()
        try:
            sh(*NETCTL, *args, ns=topo.dut, timeout=1800)
        finally:
            path.unlink()
            path.parent.rmdir()
        took = time.monotonic() - started
        self.rule_name = self.rule or f"r{len(rules) - 1}"
        self.counter(topo)           # start the reader now, before any flood
        return took

    # The rule's counter read by a process that stays in the DUT namespace with the live
    # datapath open: `netctl status` would start Python and read the whole policy back from
    # the kernel inside the measurement window, on the CPUs the flood uses (measured: 0.75
    # of the bare drop at 10,000 rules read this way against 0.54 with status).
    _READER = """
import sys
from netctl.datapath.live import live_state, open_live
from netctl.datapath.netns import Namespace
state, _ = live_state(Namespace.current())
live, why = open_live(Namespace.current(), state)
gen = live.active
names = state.generations[gen].rules
index = names.index(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    print(live.rule_counters(gen, index + 1)[index][0], flush=True)
"""

    def counter(self, topo):
        # The reader reads the generation that was active when it started: pause() stops it
        # at the end of a step, as the next apply makes another one active.
        return self.read_resident(topo, self._READER, self.rule_name)

    def teardown(self, topo):
        self.pause(topo)
        sh(*NETCTL, "detach", "--all", ns=topo.dut, check=False)


class Nft(System):
    def __init__(self, style: str, elements: list[str] | None = None):
        """``elements``: with the "set" style, an interval set of these IPv4 prefixes
        (``nft_prefix_set``) instead of the step's rules."""
        self.style = style
        self.elements = elements
        self.name = "nftables linear chain" if style == "linear" else "nftables interval set"
        self.hook = "netdev ingress"

    def setup(self, topo, rules):
        if self.elements is not None and self.style == "set":
            text = nft_prefix_set(self.elements, topo.dut_if)
        else:
            text = (nft_linear if self.style == "linear" else nft_set)(rules, topo.dut_if)
        started = time.monotonic()
        # One transaction: the table of an earlier step (if any) goes, the new one comes.
        sh("nft", "-f", "-", ns=topo.dut, stdin="table netdev nctlbench {}\n"
           "delete table netdev nctlbench\n" + text, timeout=1800)
        return time.monotonic() - started

    # The rules' counters read over netlink by a process that stays in the DUT namespace:
    # `nft list` fetches every set element first (with --terse too), half a second at
    # 100,000 prefixes, inside the window and on the flood's CPUs.  Used for every interval
    # set (the linear chain has no set to fetch).
    _READER = """
import sys
from pyroute2.nftables.main import NFTables
from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETRULE, nft_rule_msg
nft = NFTables(nfgen_family=5)   # NFPROTO_NETDEV
print("ready", flush=True)
for line in sys.stdin:
    total = 0
    for msg in nft.request_get(nft_rule_msg(), NFT_MSG_GETRULE):
        if msg.get_attr("NFTA_RULE_TABLE") == "nctlbench":
            for expr in msg.get_attr("NFTA_RULE_EXPRESSIONS") or []:
                if expr.get_attr("NFTA_EXPR_NAME") == "counter":
                    total += expr.get_attr("NFTA_EXPR_DATA").get_attr("NFTA_COUNTER_PACKETS")
    print(total, flush=True)
"""

    def counter(self, topo):
        if self.style == "set":
            return self.read_resident(topo, self._READER)
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
        # iptables-restore replaces the whole raw table (an earlier step's rules too).
        started = time.monotonic()
        sh("iptables-restore", ns=topo.dut, stdin=iptables_raw(rules, 4), timeout=1800)
        return time.monotonic() - started

    def counter(self, topo):
        out = sh("iptables-save", "-c", "-t", "raw", ns=topo.dut).stdout
        return sum(int(m.group(1)) for m in re.finditer(r"^\[(\d+):\d+\] -A PREROUTING", out,
                                                        re.M))


class XdpFilter(System):
    """xdp-tools' xdp-filter: deny lists of addresses (and ports), any match drops.  It cannot
    combine an address with a port, matches whole addresses (no prefixes), and holds 10,000
    IPv4 addresses: the rule set becomes the rules' network addresses, the flood's source
    last; a flood from many sources under one prefix is beyond it."""

    name, hook = "xdp-filter (addresses)", "xdp"
    max_rules = 10000

    def holds(self, rules):
        return super().holds(rules) and xdp_filter_addresses(rules) is not None

    def setup(self, topo, rules):
        addresses = xdp_filter_addresses(rules)
        if addresses is None:
            raise ValueError("xdp-filter cannot express the last rule (a prefix)")
        started = time.monotonic()
        # xdp-filter pins under /sys/fs/bpf, which `ip netns exec` hides: mount a bpffs for
        # this one shell; the program stays attached when it goes (until the topology goes:
        # one step per topology).  Its address list is filled through the map directly (one
        # process per address would take hours).
        code = f"""
import ipaddress, struct, subprocess, sys
subprocess.run(['mount', '-t', 'bpf', 'bpf', '/sys/fs/bpf'], check=True)
subprocess.run(['xdp-filter', 'load', '-m', 'native', '-f', 'ipv4,udp', '{topo.dut_if}'],
               check=True)
subprocess.run(['xdp-filter', 'ip', '-m', 'src', '{addresses[0]}'], check=True)
from netctl.kernel import bpfsys
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
        code = ("from netctl import abi; from netctl.kernel import bpfsys; "
                f"m = bpfsys.Map(bpfsys.map_fd_by_id({self.stats_id})); "
                "print(abi.sum_counters(m.lookup(abi.pack_u32(1)))[0])")
        return int(sh(sys.executable, "-c", code, ns=topo.dut).stdout)


@dataclass(frozen=True)
class Step:
    """One measurement: ``system`` with ``rules`` under ``flood`` ("fixed": one flow;
    "random": a new source address in every frame)."""

    system: System
    rules: list[BenchRule]
    flood: str = "fixed"
    mix: str | None = None      # for the record: which mix the rules come from


def measure_steps(steps: list[Step], seconds: float, warmup: float = 1.0,
                  tag: str = "b") -> list[dict]:
    """Measure ``steps`` in turn on one fresh topology; each system is set up by each of its
    steps (replacing its previous rules) and torn down at the end.  A step that fails is a
    row with an error, and the steps after it still run."""
    rows = []
    with topology(tag) as topo:
        systems = list(dict.fromkeys(step.system for step in steps))
        try:
            for step in steps:
                row = {"system": step.system.name, "hook": step.system.hook,
                       "rules": len(step.rules), "mix": step.mix, "flood": step.flood}
                try:
                    setup = step.system.setup(topo, step.rules)
                    rate = flood(topo, lambda s=step.system: s.counter(topo), seconds,
                                 warmup=warmup, random_source=step.flood == "random")
                    row.update(pps=rate.pps, sent_pps=rate.sent_pps, setup_s=setup)
                except Exception as exc:  # a peer that fails is reported, not fatal
                    row["error"] = str(exc)[:300]
                finally:
                    step.system.pause(topo)
                rows.append(row)
        finally:
            for system in systems:
                system.teardown(topo)
    return rows


def measure(system: System, rules: list[BenchRule], seconds: float,
            tag: str = "b", flood: str = "fixed") -> dict:
    """One system, one rule set, one flood, on a fresh topology."""
    row = measure_steps([Step(system, rules, flood)], seconds, tag=tag)[0]
    if "error" in row:
        raise RuntimeError(row["error"])
    return row
