"""Devices without a link-layer header (tun here; WireGuard and IP tunnels are the same link
types): their frames start at the IP header, and netctl must judge them, never pass them as
non-IP.  A tun device in a namespace, the test holding its file descriptor: what the test
writes into it arrives at the kernel as if from a peer (tc ingress and XDP see it), what the
kernel sends out through it (tc egress sees it) the test reads back."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import select
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import frames
import pytest
from lab import NETCTL
from nsutil import inside, netns, netns_cookie, run

from netctl.paths import PIN_ROOT, STATE_ROOT
from netctl.policy.frame import LINK_L3, frame_verdict
from netctl.policy.model import Direction

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
DEV = "nctun0"
HOST4, PEER4 = "10.77.0.1", "10.77.0.2"
HOST6, PEER6 = "fd77::1", "fd77::2"


@dataclass
class Tun:
    ns: str
    fd: int
    pi: bool
    tmp: Path

    def netctl(self, *args: str, check: bool = True):
        result = run(NETCTL, *args, ns=self.ns, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"netctl {' '.join(args)}: {result.stdout}{result.stderr}")
        return result

    def apply(self, text: str, *args: str) -> dict:
        path = self.tmp / "tun.yaml"
        path.write_text(text)
        return json.loads(self.netctl("apply", str(path), "--dev", DEV, "-o", "json",
                                      *args).stdout)

    def status(self) -> dict:
        return json.loads(self.netctl("status", "-o", "json").stdout)

    def write(self, packet: bytes, ethertype: int = 0) -> None:
        if self.pi:   # struct tun_pi: flags, then the protocol the skb will carry
            packet = struct.pack("!HH", 0, ethertype) + packet
        os.write(self.fd, packet)

    def drain(self) -> list[bytes]:
        out = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 65536)
            out.append(data[4:] if self.pi else data)
        return out

    def pings(self, family: int, count: int = 5) -> int:
        """Echo requests written in from the peer; how many replies the host sent out."""
        from scapy.layers.inet import ICMP, IP
        from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

        self.drain()
        for seq in range(count):
            if family == 4:
                packet = IP(src=PEER4, dst=HOST4) / ICMP(type=8, id=0x77, seq=seq) / (b"x" * 8)
            else:
                packet = IPv6(src=PEER6, dst=HOST6) / ICMPv6EchoRequest(id=0x77, seq=seq)
            self.write(bytes(packet), 0x0800 if family == 4 else 0x86DD)
        replies, deadline = 0, time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if not select.select([self.fd], [], [], 0.1)[0]:
                continue
            data = os.read(self.fd, 65536)
            data = data[4:] if self.pi else data
            if family == 4 and data[:1] and data[0] >> 4 == 4:
                replies += ICMP in IP(data) and IP(data)[ICMP].type == 0
            elif family == 6 and data[:1] and data[0] >> 4 == 6:
                replies += ICMPv6EchoReply in IPv6(data)
        return replies


@contextlib.contextmanager
def tun_device(tmp: Path, pi: bool = False) -> Iterator[Tun]:
    with netns("tun") as ns:
        with inside(ns):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            flags = IFF_TUN | (0 if pi else IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", DEV.encode(), flags))
        try:
            run("ip", "link", "set", DEV, "addrgenmode", "none", ns=ns)
            run("ip", "addr", "add", f"{HOST4}/24", "dev", DEV, ns=ns)
            run("ip", "-6", "addr", "add", f"{HOST6}/64", "dev", DEV, "nodad", ns=ns)
            run("ip", "link", "set", DEV, "up", ns=ns)
            yield Tun(ns, fd, pi, tmp)
        finally:
            run(NETCTL, "detach", "--all", ns=ns, check=False)
            os.close(fd)
            cookie = netns_cookie(ns)
            shutil.rmtree(f"{PIN_ROOT}/ns{cookie}", ignore_errors=True)
            shutil.rmtree(f"{STATE_ROOT}/ns{cookie}", ignore_errors=True)


@pytest.fixture
def tun(tmp_path):
    with tun_device(tmp_path) as it:
        yield it


DROP_ALL = """
version: 1
defaults: {ingress: drop, egress: accept}
"""


def default_count(status: dict, direction: str, action: str) -> int:
    return status["defaults"][direction][action]["packets"]


def test_the_kernel_answers_pings_through_the_tun_without_netctl(tun):
    assert tun.pings(4) == 5 and tun.pings(6) == 5


@pytest.mark.parametrize("mode,hook", [("auto", "tc"), ("generic", "xdp-generic")])
def test_default_drop_filters_a_tun_device(tun, mode, hook):
    # The case that passed everything before: frames starting at the IP header were read as
    # Ethernet, counted as non-IP and let through.
    result = tun.apply(DROP_ALL, "--xdp-mode", mode)
    record = result["interfaces"][DEV]
    assert (record["link"], record["ingress"], record["egress"]) == ("l3", hook, "tc")
    assert tun.pings(4) == 0 and tun.pings(6) == 0
    status = tun.status()
    assert status["problems"] == []
    assert default_count(status, "ingress", "drop") >= 10
    assert status["interfaces"][0]["live"]


def test_native_xdp_refused_by_the_device_changes_nothing(tun):
    path = tun.tmp / "drop.yaml"
    path.write_text(DROP_ALL)
    out = tun.netctl("apply", str(path), "--dev", DEV, "--xdp-mode", "native", check=False)
    assert out.returncode == 4 and "nctun0" in out.stderr and "errno 95" in out.stderr
    assert "Traceback" not in out.stderr
    assert not tun.status()["applied"] and tun.pings(4) == 5
    assert "bpf" not in run("tc", "filter", "show", "dev", DEV, "ingress", ns=tun.ns).stdout


def test_rules_match_on_a_tun_device_both_ways(tun):
    tun.apply("""
version: 1
defaults: {ingress: drop, egress: accept}
rules:
  - {name: ping4-in, action: accept, proto: icmp, icmp_type: echo-request}
  - {name: ping6-in, action: accept, proto: icmpv6, icmp_type: echo-request}
  - {name: no-reply6, direction: egress, action: drop, proto: icmpv6, icmp_type: echo-reply}
""")
    assert tun.pings(4) == 5
    assert tun.pings(6) == 0              # the request is let in, the reply stopped going out
    rules = {r["name"]: r["packets"] for r in tun.status()["rules"]}
    assert rules == {"ping4-in": 5, "ping6-in": 5, "no-reply6": 5}


def test_routes_through_a_device_without_mac_addresses_are_refused(tun):
    path = tun.tmp / "route.yaml"
    path.write_text(f"""
version: 1
routes:
  - {{dst: 10.99.0.0/16, via: {PEER4}, dev: {DEV}}}
""")
    out = tun.netctl("apply", str(path), "--dev", DEV, check=False)
    assert out.returncode == 4, out.stderr
    assert "no Ethernet header" in out.stderr and "Traceback" not in out.stderr
    assert tun.netctl("status", "-o", "json").stdout and not tun.status()["applied"]


# ---- the tc L3 programs against the reference, frame by frame ---------------------------

def _attach(sandbox, ns: str, role: str, direction: str) -> None:
    from netctl.datapath import attach as att

    with inside(ns), att.Links() as links:
        link = links.find(DEV)
        links.ensure_clsact(link)
        links.attach_tc(link, sandbox.dp.programs[role], direction)


def _wait(sandbox, before, timeout: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = sandbox.observe(before)
        if outcome is not None:
            return outcome
        time.sleep(0.001)
    return None


def test_tc_l3_programs_agree_with_the_model_on_real_tun_traffic(tmp_path):
    """Random, mutated, malformed and extension-header frames without an Ethernet header,
    written into a tun device with the protocol the skb will carry (ingress), or sent out
    through it by a packet socket (egress): what netctl's tc programs count for each equals
    the reference parser and evaluator with that protocol."""
    from strategies import make_policy

    from netctl.datapath.sandbox import Sandbox
    from netctl.policy.compile import compile_policy
    from netctl.policy.plan import Limits

    policy = make_policy({"action": "drop", "proto": "udp", "dport": 53},
                         {"action": "accept", "src": ["10.0.0.0/8", "2001:db8::/32"]},
                         {"direction": "egress", "action": "drop", "proto": "tcp",
                          "dport": "1-1024"},
                         ingress="drop", egress="accept")
    limits = Limits(rules=16)
    rng = random.Random(77)
    inputs = []
    for i in range(400):
        frame = frames.l3(frames.random_frame(rng, ["10.1.2.3", "2001:db8::5"], [53, 80]))
        inputs.append(frames.mutate(rng, frame) if i % 3 == 2 else frame)
    inputs += [frames.l3(f) for _, f in frames.malformed_frames() if len(f) > 14]
    inputs += [frames.l3(f) for i, (_, f) in enumerate(frames.branch_frames()) if i % 7 == 0]
    inputs = [f for f in inputs if f]
    with Sandbox(limits) as sandbox, tun_device(tmp_path, pi=True) as tun:
        sandbox.load(compile_policy(policy, limits))
        _attach(sandbox, tun.ns, "tc_ingress_l3", "ingress")
        _attach(sandbox, tun.ns, "tc_egress_l3", "egress")
        with inside(tun.ns):
            out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
        compared = {"ingress": 0, "egress": 0}
        verdicts = set()
        with out:
            for i, frame in enumerate(inputs):
                # mostly the protocol the version nibble names; sometimes the other one
                ethertype = rng.choice([0x0800, 0x86DD]) if i % 5 == 0 else \
                    (0x0800 if frame[0] >> 4 == 4 else 0x86DD)
                if i % 2 == 0 or len(frame) > 1500:   # the device's MTU bounds sends
                    direction, before = Direction.INGRESS, sandbox.snapshot()
                    tun.write(frame, ethertype)
                else:
                    direction, before = Direction.EGRESS, sandbox.snapshot()
                    try:
                        out.sendto(frame, (DEV, ethertype))
                    except OSError as exc:   # what tc egress drops fails with ENOBUFS
                        assert exc.errno == errno.ENOBUFS, exc
                got = _wait(sandbox, before)
                tun.drain()
                assert got is not None, f"{direction} frame never judged: {frame.hex()}"
                want = frame_verdict(policy, frame, direction, LINK_L3, ethertype)
                want_rule = want.rule.index if want.rule is not None else None
                assert (got.verdict, got.why, got.rule, got.reason) == (
                    want.verdict, want.why, want_rule, want.reason), (
                    f"{direction} proto {ethertype:#x} frame {frame.hex()}\n"
                    f"want {want}\ngot {got}")
                compared[direction.value] += 1
                verdicts.add((direction.value, want.why))
    assert compared["ingress"] > 300 and compared["egress"] > 300
    assert {("ingress", "rule"), ("ingress", "default"), ("ingress", "malformed"),
            ("egress", "rule"), ("egress", "malformed")} <= verdicts
