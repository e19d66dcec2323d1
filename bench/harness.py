"""Throughput harness: a generator namespace floods a device-under-test namespace over a veth
pair, and each system under test counts what it judges.

Topology (fresh for every measurement, removed after it): namespaces ``gen`` and ``dut``,
a veth pair with one queue per CPU (XDP on a veth runs in one receive context per queue), no
IPv6 on the link (so the kernel adds no traffic of its own), ``FLOOD_SRC`` on the generator
side and ``FLOOD_DST`` on the DUT side.

The generator is trafgen (netsniff-ng): it sends from a packet socket's TX ring with one
worker per CPU, so the generator is not the bottleneck; its own ceiling is measured with the
DUT's end of the link down and reported next to every figure.  It sends one of two floods:
the fixed flood (one frame, one flow) or the random-source flood (trafgen draws the last
three bytes of the source address for every frame and recomputes the IPv4 checksum; the UDP
checksum is 0, "none", which IPv4 allows).  On a veth the DUT's receive
path runs on the sending CPU, so generator and DUT share the two CPUs: rates here are
comparable with each other, not with a NIC.

A rate is what a system *judged* per second, read from its own counters over a window
that starts after a warm-up: netctl's rule counter, the bare programs' counters, nftables and
iptables rule counters, xdp-filter's XDP_DROP statistics, or the kernel's UDP NoPorts count
for "no filter".

The systems and the steps that measure them are in bench/systems.py.  A system is set up
once per topology and may then be measured in several steps (``measure_steps``): each step
installs a rule set (the two floods need different last rules) or a variant of the same
system, then floods.  netctl's variants (default hook, XDP, flow cache off) share one
topology, so its programs are built once per rule set and each later step is an ordinary
apply, as an operator would make it.
"""

from __future__ import annotations

import contextlib
import ipaddress
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
    RANDOM_SRC_NET,
)
from netctl.kernel import netlab

REPO = Path(__file__).resolve().parents[1]
NETCTL = [sys.executable, "-m", "netctl"]
CPUS = os.cpu_count() or 1


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 600,
       stdin: str | None = None) -> subprocess.CompletedProcess:
    return netlab.run(*argv, ns=ns, check=check, timeout=timeout, input=stdin)


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
    with netlab.netns(gen), netlab.netns(dut), netlab.veth(gen, dut, gen_if, dut_if,
                                                           queues=CPUS, quiet=True):
        for ns, ifname, addr in ((gen, gen_if, FLOOD_SRC), (dut, dut_if, FLOOD_DST)):
            sh("ip", "addr", "add", f"{addr}/24", "dev", ifname, ns=ns)
        yield Topology(gen, dut, gen_if, dut_if, netlab.link_mac(dut, dut_if))


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


def trafgen_config(frame: bytes, random_source: bool = False) -> str:
    """trafgen's packet configuration for ``frame``.  With ``random_source``, the last three
    bytes of the IPv4 source address are drawn per frame (``drnd``, within RANDOM_SRC_NET),
    the IPv4 header checksum is computed per frame (``csumip``, after the draw) and the UDP
    checksum is 0 (none): so every frame is valid, also for the stack behind the filters."""
    def hexed(part: bytes) -> list[str]:
        return [f"0x{b:02x}" for b in part]

    if not random_source:
        return "{ " + ", ".join(hexed(frame)) + " }\n"
    net = ipaddress.ip_network(RANDOM_SRC_NET)
    if net.prefixlen != 8 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        raise ValueError("the random-source flood is IPv4 UDP from an /8 of sources")
    cells = (hexed(frame[:24]) + ["csumip(14, 33)"]                  # IPv4 checksum, 24-25
             + hexed(net.network_address.packed[:1]) + ["drnd(3)"]  # source address, 26-29
             + hexed(frame[30:40]) + ["0x00", "0x00"]               # UDP checksum, 40-41
             + hexed(frame[42:]))
    return "{ " + ", ".join(cells) + " }\n"


@dataclass
class Rate:
    pps: float          # judged per second by the system
    sent_pps: float     # what trafgen sent per second over its whole run


def flood(topo: Topology, counter: Callable[[], int], seconds: float,
          warmup: float = 1.0, frame: bytes | None = None,
          random_source: bool = False) -> Rate:
    """Flood with trafgen (one worker per CPU) and read ``counter`` over a window."""
    frame = frame or flood_frame(topo.dut_mac)
    with tempfile.NamedTemporaryFile("w", suffix=".trafgen", delete=False) as f:
        f.write(trafgen_config(frame, random_source))
        conf = f.name
    # The generator is stopped (SIGINT: it then prints its totals) as soon as the window
    # closes; `timeout` ends it anyway a little later, should this process die first.
    run_for = warmup + seconds + 5.0
    started = time.monotonic()
    proc = subprocess.Popen(["ip", "netns", "exec", topo.gen, "timeout", "-s", "INT",
                             f"{run_for:.1f}", "trafgen", "--dev", topo.gen_if, "--conf", conf,
                             "--cpus", str(CPUS), "--no-sock-mem"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(warmup)
        c0, t0 = counter(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = counter(), time.monotonic()
    finally:
        # Stop the whole group before reading the output: a worker that outlived its parent
        # would keep the pipe open.
        stop_group(proc)
        total = time.monotonic() - started
        out = proc.stdout.read()
        proc.stdout.close()
        os.unlink(conf)
    if proc.returncode is not None and proc.returncode > 0 and proc.returncode != 124 \
            and "packets outgoing" not in out:
        raise RuntimeError(f"trafgen failed: {out.strip()[-300:]}")
    match = re.search(r"(\d+) packets outgoing", out)
    sent = int(match.group(1)) if match else 0
    return Rate((c1 - c0) / (t1 - t0), sent / total if total else 0.0)


# ---- systems under test ----------------------------------------------------------------

def start_reader(ns: str, code: str, *args: str, name: str = "?") -> subprocess.Popen:
    """A counter reader that stays in ``ns``: Python ``code`` prints "ready", then one
    figure for every line it reads (ask with ``read_counter``)."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{name}: the counter reader did not start")
    return proc


def read_counter(proc: subprocess.Popen) -> int:
    proc.stdin.write("\n")
    proc.stdin.flush()
    return int(proc.stdout.readline())


def stop_reader(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.stdin.close()
            proc.wait(timeout=10)
