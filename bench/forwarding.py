"""Forwarding benchmark: packets per second forwarded through a router namespace.

    generator --veth--> router --veth--> sink

trafgen floods 60-byte UDP frames to the router's MAC, addressed to the sink; what the sink
receives per second is the rate (a counting XDP drop program on the sink's end, which also
gives that veth the NAPI that XDP_REDIRECT into it needs).  Every veth has one queue per CPU.

Systems, in one run: the kernel forwarding (`ip_forward=1`, no BPF); the kernel forwarding
behind nftables with N rules in an interval set that the flood passes; a bare redirect
program per hook (the limit: tc `bpf_redirect_neigh`, XDP MAC rewrite and `bpf_redirect`);
netctl with its default hook (on veth, native XDP for a policy with routes: `xdp: auto`) and
forced to XDP, each without rules and with the same N rules.  The flood matches none of the
N rules (it must be forwarded): every filter judges it against all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import CPUS, NETCTL, flood, flood_frame, sh
from bench.rulesets import BenchRule, netctl_policy, nft_set, rules
from netctl.kernel import netlab

BPF_DIR = Path(__file__).resolve().parent / "bpf"

GEN, ROUTER_IN, ROUTER_OUT, SINK = "10.40.1.2", "10.40.1.1", "10.40.2.1", "10.40.2.2"


@dataclass
class Routed:
    gen: str
    router: str
    sink: str
    gen_if: str = "fg"
    rin: str = "fri"
    rout: str = "fro"
    sink_if: str = "fs"
    router_mac: str = ""
    sink_mac: str = ""

    @property
    def dut_mac(self) -> str:  # what harness.flood aims at
        return self.router_mac


@contextlib.contextmanager
def routed(tag: str = "f") -> Iterator[Routed]:
    pid = os.getpid() % 100000
    names = [f"nctl-fwd{pid}{tag}-{role}" for role in ("gen", "router", "sink")]
    r = Routed(*names)
    with contextlib.ExitStack() as stack:
        for ns in names:
            stack.enter_context(netlab.netns(ns))
        for a, a_ns, b, b_ns in ((r.gen_if, r.gen, r.rin, r.router),
                                 (r.rout, r.router, r.sink_if, r.sink)):
            stack.enter_context(netlab.veth(a_ns, b_ns, a, b, queues=CPUS, quiet=True))
        for ns, dev, addr in ((r.gen, r.gen_if, GEN), (r.router, r.rin, ROUTER_IN),
                              (r.router, r.rout, ROUTER_OUT), (r.sink, r.sink_if, SINK)):
            sh("ip", "addr", "add", f"{addr}/24", "dev", dev, ns=ns)
        sh("ethtool", "-K", r.sink_if, "gro", "on", ns=r.sink, check=False)
        sh("ip", "route", "add", "default", "via", ROUTER_OUT, ns=r.sink)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=r.router)
        r.router_mac = netlab.link_mac(r.router, r.rin)
        r.sink_mac = netlab.link_mac(r.sink, r.sink_if)
        sh("ping", "-c", "1", "-W", "2", SINK, ns=r.router)   # the router knows the sink
        yield r


_SINK = """
import sys
from bcc import BPF
from pyroute2 import IPRoute
b = BPF(src_file=sys.argv[2])
fn = b.load_func('sink', BPF.XDP)
ip = IPRoute(); idx = ip.link_lookup(ifname=sys.argv[1])[0]
ip.link('set', index=idx, xdp={'attrs': [('IFLA_XDP_FD', fn.fd), ('IFLA_XDP_FLAGS', 4)]})
print('ready', flush=True)
hits = b['hits']
for line in sys.stdin:
    print(sum(v for v in hits[hits.Key(0)]), flush=True)
"""

_BARE = """
import socket, sys
from bcc import BPF
from pyroute2 import IPRoute
hook, rin, rout, via, router_mac, sink_mac = sys.argv[1:7]
ip = IPRoute()
i_in, i_out = ip.link_lookup(ifname=rin)[0], ip.link_lookup(ifname=rout)[0]
mac = lambda m: ','.join('0x' + x for x in m.split(':'))
via_be = int.from_bytes(socket.inet_aton(via), 'little')
b = BPF(src_file=sys.argv[7], cflags=[f'-DOUT_IFINDEX={i_out}', f'-DVIA_IPV4={via_be}u',
                                      f'-DSINK_MAC={mac(sink_mac)}',
                                      f'-DROUTER_MAC={mac(router_mac)}'])
if hook == 'xdp':
    fn = b.load_func('bare_xdp', BPF.XDP)
    ip.link('set', index=i_in, xdp={'attrs': [('IFLA_XDP_FD', fn.fd), ('IFLA_XDP_FLAGS', 4)]})
else:
    fn = b.load_func('bare_tc', BPF.SCHED_CLS)
    ip.tc('add', 'clsact', i_in)
    ip.tc('add-filter', kind='bpf', index=i_in, handle=1, fd=fn.fd, name='bare',
          parent='ffff:fff2', classid=1, direct_action=True, prio=1)
print('ready', flush=True)
sys.stdin.read()
"""


class Helper:
    """A Python process inside a namespace that holds BPF programs until closed."""

    def __init__(self, ns: str, code: str, *args: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code,
                                      *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a benchmark helper failed to start")

    def ask(self) -> int:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def _netctl_policy(r: Routed, filter_rules: list[BenchRule]) -> str:
    text = netctl_policy(filter_rules) if filter_rules else \
        "version: 1\ndefaults: {ingress: accept, egress: accept}\nrules: []\n"
    return text + (f"routes:\n  - {{dst: 10.40.2.0/24, via: {SINK}, dev: {r.rout}}}\n"
                   f"  - {{dst: 10.40.1.0/24, via: {GEN}, dev: {r.rin}}}\n")


def measure(system: str, n: int, seconds: float) -> dict:
    filter_rules = rules(n + 1)[:-1] if n else []   # without the rule the flood matches
    with routed() as r:
        sink = Helper(r.sink, _SINK, r.sink_if, str(BPF_DIR / "sink.c"))
        extra = None
        try:
            if system == "generator ceiling (router link down)":
                sh("ip", "link", "set", r.rin, "down", ns=r.router)
                def counter():
                    tx = json.loads(sh("ip", "-j", "-s", "link", "show", r.gen_if,
                                       ns=r.gen).stdout)[0]["stats64"]["tx"]
                    return tx["packets"] + tx["dropped"]
            else:
                counter = sink.ask
            if system.startswith("kernel"):
                sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=r.router)
                if "nftables" in system:
                    sh("nft", "-f", "-", ns=r.router, stdin=nft_set(filter_rules, r.rin))
            elif system.startswith("bare"):
                hook = "xdp" if "xdp" in system else "tc"
                extra = Helper(r.router, _BARE, hook, r.rin, r.rout, SINK, r.router_mac,
                               r.sink_mac, str(BPF_DIR / "bare_redirect.c"))
            elif system.startswith("netctl"):
                path = Path(tempfile.mkdtemp()) / "router.yaml"
                path.write_text(_netctl_policy(r, filter_rules))
                args = ["--xdp-mode", "native"] if "XDP" in system else []
                sh(*NETCTL, "apply", str(path), "--dev", r.rin, *args, ns=r.router,
                   timeout=900)
            frame = flood_frame(r.router_mac, src=GEN, dst=SINK)
            rate = flood(r, counter, seconds, frame=frame)
        finally:
            if extra:
                extra.close()
            if system.startswith("netctl"):
                sh(*NETCTL, "detach", "--all", ns=r.router, check=False)
            sink.close()
    return {"system": system, "rules": n, "pps": rate.pps}


SYSTEMS = [("generator ceiling (router link down)", False), ("kernel forwarding", False),
           ("kernel forwarding + nftables set", True), ("bare tc redirect", False),
           ("bare xdp redirect", False), ("netctl (default hook)", False),
           ("netctl (XDP)", False), ("netctl (default hook)", True), ("netctl (XDP)", True)]


def run(n: int, seconds: float, say) -> list[dict]:
    out = []
    for system, filtered in SYSTEMS:
        rules_n = n if filtered else 0
        try:
            row = measure(system, rules_n, seconds)
        except Exception as exc:  # reported, not fatal
            row = {"system": system, "rules": rules_n, "error": str(exc)[:300]}
        out.append(row)
        shown = f"{row['pps'] / 1e6:6.3f} Mpps" if "pps" in row else f"failed: {row['error']}"
        say(f"  forwarding  {system:<38} rules={rules_n:<6} {shown}")
    return out


def table(rows: list[dict]) -> str:
    def get(system: str, n: int) -> float | None:
        return next((r["pps"] for r in rows if r["system"] == system and r["rules"] == n
                     and "pps" in r), None)

    n = max(r["rules"] for r in rows)
    out = ["Forwarding through a router namespace, Mpps delivered (60-byte UDP over veth)",
           f"{'system':<40} {'no filter':>10} {f'{n:,} rules':>12}"]
    def cell(v: float | None, width: int) -> str:
        return f"{v / 1e6:>{width}.3f}" if v else f"{'-':>{width}}"

    for system in dict.fromkeys(r["system"] for r in rows):
        out.append(f"{system:<40} {cell(get(system, 0), 10)} {cell(get(system, n), 12)}")
    # Results older than commit 30a3e1a call that row "netctl (default hook: tc)".
    default = next((r["system"] for r in rows if r["system"].startswith(
        "netctl (default hook")), "netctl (default hook)")
    ratios = [(default, 0, "kernel forwarding", 0),
              (default, 0, "bare tc redirect", 0),
              (default, n, "kernel forwarding + nftables set", n),
              ("netctl (XDP)", 0, "bare xdp redirect", 0)]
    for a_name, a_n, b_name, b_n in ratios:
        a, b = get(a_name, a_n), get(b_name, b_n)
        if a and b:
            out.append(f"{a_name}{' + rules' if a_n else ''} / {b_name}: {a / b:.2f}")
    return "\n".join(out)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    got = run(n, float(sys.argv[2]) if len(sys.argv) > 2 else 4.0, print)
    print(table(got))
