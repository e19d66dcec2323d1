"""Forwarding (`routes:`) end to end: client -> router -> server namespaces, the router's
kernel forwarding OFF, so only netctl can deliver; on the tc and the XDP path, IPv4 and IPv6.
Frames are captured at the server and checked with scapy: TTL/hop limit decremented, IPv4
checksum valid, MACs those of the router's and the server's interfaces."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab import NETCTL
from nsutil import inside, netns, netns_cookie, run

from netctl.paths import PIN_ROOT, STATE_ROOT


@dataclass
class Routed:
    client: str
    router: str
    server: str
    tmp: Path

    def netctl(self, *args: str, check: bool = True):
        result = run(NETCTL, *args, ns=self.router, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"netctl {' '.join(args)}: {result.stdout}{result.stderr}")
        return result

    def apply(self, text: str, *args: str) -> dict:
        path = self.tmp / "router.yaml"
        path.write_text(text)
        return json.loads(self.netctl("apply", str(path), "-o", "json", *args).stdout)


def _forwarding(ns: str, on: bool) -> None:
    for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        run("sysctl", "-qw", f"{key}={int(on)}", ns=ns)


@contextlib.contextmanager
def routed(tmp: Path) -> Iterator[Routed]:
    with netns("c") as client, netns("r") as router, netns("s") as server:
        # veths with two queues on the router (XDP runs per queue); GRO on the far ends,
        # which gives them the NAPI that XDP_REDIRECT into a veth needs.
        run("ip", "link", "add", "cr", "netns", client, "type", "veth", "peer", "name", "rc",
            "netns", router, "numrxqueues", "2", "numtxqueues", "2")
        run("ip", "link", "add", "sr", "netns", server, "type", "veth", "peer", "name", "rs",
            "netns", router, "numrxqueues", "2", "numtxqueues", "2")
        for ns, dev, a4, a6 in ((client, "cr", "10.31.1.2/24", "fd31:1::2/64"),
                                (router, "rc", "10.31.1.1/24", "fd31:1::1/64"),
                                (router, "rs", "10.31.2.1/24", "fd31:2::1/64"),
                                (server, "sr", "10.31.2.2/24", "fd31:2::2/64")):
            run("ip", "addr", "add", a4, "dev", dev, ns=ns)
            run("ip", "addr", "add", a6, "dev", dev, "nodad", ns=ns)
            run("ip", "link", "set", dev, "up", ns=ns)
        # Checksum offload off on the senders: a veth passes a partial checksum to its peer
        # as metadata, which XDP_REDIRECT cannot carry (frames from a wire are complete).
        for ns, dev in ((client, "cr"), (server, "sr")):
            run("ethtool", "-K", dev, "gro", "on", "tx", "off", ns=ns)
        run("ip", "route", "add", "default", "via", "10.31.1.1", ns=client)
        run("ip", "-6", "route", "add", "default", "via", "fd31:1::1", ns=client)
        run("ip", "route", "add", "default", "via", "10.31.2.1", ns=server)
        run("ip", "-6", "route", "add", "default", "via", "fd31:2::1", ns=server)
        _forwarding(router, False)
        the = Routed(client, router, server, tmp)
        try:
            yield the
        finally:
            run(NETCTL, "detach", "--all", ns=router, check=False)
            cookie = netns_cookie(router)
            import shutil

            shutil.rmtree(f"{PIN_ROOT}/ns{cookie}", ignore_errors=True)
            shutil.rmtree(f"{STATE_ROOT}/ns{cookie}", ignore_errors=True)


ROUTES = """
version: 1
interfaces: [{name: rc}, {name: rs}]
defaults: {ingress: accept, egress: accept}
rules:
  - {name: no-telnet, action: drop, proto: tcp, dport: 23}
routes:
  - {dst: 10.31.2.0/24, via: 10.31.2.2, dev: rs}
  - {dst: 10.31.1.0/24, via: 10.31.1.2, dev: rc}
  - {dst: "fd31:2::/64", via: "fd31:2::2", dev: rs}
  - {dst: "fd31:1::/64", via: "fd31:1::2", dev: rc}
"""


def exchange(the: Routed, family: int, port: int = 7000, count: int = 3) -> int:
    """UDP client -> server and a reply back; how many round trips completed."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    server_addr = "10.31.2.2" if family == 4 else "fd31:2::2"
    with inside(the.server):
        server = socket.socket(af, socket.SOCK_DGRAM)
    with inside(the.client):
        client = socket.socket(af, socket.SOCK_DGRAM)
    done = 0
    with server, client:
        server.bind((server_addr, port))
        server.settimeout(0.5)
        client.settimeout(0.5)
        for i in range(count):
            client.sendto(f"ping {i}".encode(), (server_addr, port))
            try:
                data, peer = server.recvfrom(100)
                server.sendto(b"pong " + data, peer)
                if client.recv(100).startswith(b"pong"):
                    done += 1
            except TimeoutError:
                continue
    return done


def capture_one(the: Routed, family: int, port: int) -> bytes:
    """Send one datagram from the client and return the frame as it reached the server's
    interface."""
    with inside(the.server):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with inside(the.client):
        client = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                               socket.SOCK_DGRAM)
    with cap, client:
        cap.bind(("sr", 0))
        cap.settimeout(2)
        client.sendto(b"probe", ("10.31.2.2" if family == 4 else "fd31:2::2", port))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            frame = cap.recv(2048)
            if b"probe" in frame:
                return frame
    raise AssertionError("the probe never reached the server")


def mac(ns: str, dev: str) -> str:
    return json.loads(run("ip", "-j", "link", "show", dev, ns=ns).stdout)[0]["address"]


@pytest.fixture
def the(tmp_path):
    with routed(tmp_path) as it:
        yield it


@pytest.mark.parametrize("mode,hook", [("off", "tc"), ("native", "xdp-native")])
def test_only_netctl_forwards_and_rewrites_correctly(the, mode, hook):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    assert exchange(the, 4) == 0 and exchange(the, 6) == 0   # kernel forwarding is off
    result = the.apply(ROUTES, "--xdp-mode", mode)
    assert result["interfaces"]["rc"]["ingress"] == hook
    assert exchange(the, 4) == 3 and exchange(the, 6) == 3
    router_mac, server_mac = mac(the.router, "rs"), mac(the.server, "sr")
    for family in (4, 6):
        frame = Ether(capture_one(the, family, 7100))
        assert frame.src == router_mac and frame.dst == server_mac
        if family == 4:
            ip = frame[IP]
            assert ip.ttl == 63
            sent = ip.chksum
            del ip.chksum
            assert IP(bytes(ip)).chksum == sent        # the incremental update is right
        else:
            assert frame[IPv6].hlim == 63
        assert frame[UDP].dport == 7100
    status = json.loads(the.netctl("status", "-o", "json").stdout)
    counted = {r["dst"]: r["packets"] for r in status["routes"]}
    assert counted["10.31.2.0/24"] >= 4 and counted["fd31:2::/64"] >= 4
    assert counted["10.31.1.0/24"] >= 3 and counted["fd31:1::/64"] >= 3
    assert all(r["dmac"] for r in status["routes"])


def test_firewall_rules_apply_before_forwarding(the):
    the.apply(ROUTES)
    with inside(the.server):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind(("10.31.2.2", 23))
        listener.listen(1)
        with inside(the.client):
            conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with conn:
            conn.settimeout(1)
            with pytest.raises(OSError):
                conn.connect(("10.31.2.2", 23))
    status = json.loads(the.netctl("status", "-o", "json").stdout)
    assert next(r for r in status["rules"] if r["name"] == "no-telnet")["packets"] >= 1


def test_route_removal_on_reapply_takes_effect(the):
    the.apply(ROUTES)
    assert exchange(the, 4) == 3
    the.apply(ROUTES.split("routes:")[0])
    assert exchange(the, 4) == 0


def test_unresolved_next_hop_goes_through_the_kernel(the):
    # The server answers no ARP at apply: its MAC cannot be resolved, XDP leaves the
    # packets to the kernel, which (forwarding on for this case) resolves and delivers.
    run("ip", "link", "set", "sr", "arp", "off", ns=the.server)
    result = the.apply(ROUTES, "--xdp-mode", "native")
    assert any("10.31.2.2" in w and "not resolved" in w for w in result["warnings"])
    run("ip", "link", "set", "sr", "arp", "on", ns=the.server)
    _forwarding(the.router, True)
    time.sleep(0.3)
    assert exchange(the, 4) >= 2
    status = json.loads(the.netctl("status", "-o", "json").stdout)
    assert status["forwarding"]["left_to_kernel"]["unresolved"] >= 2


def test_packets_to_the_router_itself_are_delivered_not_forwarded(the):
    the.apply(ROUTES.replace("10.31.2.0/24", "10.31.0.0/16"))
    ping = run("ping", "-c", "2", "-W", "1", "-i", "0.2", "10.31.2.1", ns=the.client,
               check=False)
    assert ping.returncode == 0, ping.stdout
    status = json.loads(the.netctl("status", "-o", "json").stdout)
    assert status["forwarding"]["left_to_kernel"]["local"] >= 2


def test_congestion_control_per_route_becomes_a_kernel_route(the):
    policy = ROUTES.replace('dev: rs}\n', 'dev: rs, cc: reno}\n', 1)
    the.apply(policy)
    routes = run("ip", "route", "show", "10.31.2.0/24", ns=the.router).stdout
    assert "congctl reno" in routes and "proto 203" in routes
    bad = the.tmp / "bad.yaml"
    bad.write_text(ROUTES.replace('dev: rs}\n', 'dev: rs, cc: nosuchcc}\n', 1))
    out = the.netctl("apply", str(bad), check=False)
    assert out.returncode != 0 and "nosuchcc" in out.stderr and "Traceback" not in out.stderr
    the.netctl("detach", "--all")
    assert "proto 203" not in run("ip", "route", "show", ns=the.router).stdout


# ---- what a router must never forward, and egress rules on the XDP path -----------------

DEFAULT_ROUTES = """
version: 1
interfaces: [{name: rc}, {name: rs}]
defaults: {ingress: accept, egress: accept}
routes:
  - {dst: 0.0.0.0/0, via: 10.31.2.2, dev: rs}
  - {dst: "::/0", via: "fd31:2::2", dev: rs}
  - {dst: 10.31.1.0/24, via: 10.31.1.2, dev: rc}
  - {dst: "fd31:1::/64", via: "fd31:1::2", dev: rc}
"""


def send_raw(the: Routed, frames_: list) -> None:
    """Frames put on the client's wire as they are (tags, addresses and all)."""
    with inside(the.client):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind(("cr", 0))
        for frame in frames_:
            sock.send(bytes(frame))
    time.sleep(0.3)


def left_to_kernel(the: Routed) -> tuple[dict, dict]:
    status = json.loads(the.netctl("status", "-o", "json").stdout)
    return status["forwarding"]["left_to_kernel"], {r["dst"]: r["packets"]
                                                    for r in status["routes"]}


@pytest.mark.parametrize("mode", ["off", "native"])
def test_multicast_broadcast_and_link_local_are_never_forwarded(the, mode):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    the.apply(DEFAULT_ROUTES, "--xdp-mode", mode)
    router = mac(the.router, "rc")
    udp = UDP(sport=5000, dport=5001) / b"never forward me"
    frames_ = [
        # addressed to the router's MAC, but not unicast at the IP level
        Ether(dst=router) / IP(src="10.31.1.2", dst="224.1.2.3") / udp,
        Ether(dst=router) / IP(src="10.31.1.2", dst="255.255.255.255") / udp,
        Ether(dst=router) / IP(src="10.31.1.2", dst="169.254.9.9") / udp,
        Ether(dst=router) / IP(src="169.254.1.1", dst="10.31.2.2") / udp,
        Ether(dst=router) / IP(src="10.31.1.2", dst="127.0.0.1") / udp,
        Ether(dst=router) / IPv6(src="fd31:1::2", dst="ff0e::1") / udp,
        Ether(dst=router) / IPv6(src="fd31:1::2", dst="fe80::99") / udp,
        Ether(dst=router) / IPv6(src="fe80::2", dst="fd31:2::2") / udp,
        Ether(dst=router) / IPv6(src="fd31:1::2", dst="::1") / udp,
        # link-layer broadcast and multicast, and a frame for another host's MAC
        Ether(dst="ff:ff:ff:ff:ff:ff") / IP(src="10.31.1.2", dst="10.31.2.2") / udp,
        Ether(dst="33:33:00:00:00:01") / IPv6(src="fd31:1::2", dst="fd31:2::2") / udp,
    ]
    send_raw(the, frames_)
    kernel, routes = left_to_kernel(the)
    assert routes["0.0.0.0/0"] == 0 and routes["::/0"] == 0
    assert kernel["not_unicast"] >= len(frames_)
    # neighbour discovery with the router keeps working under a ::/0 route
    ping = run("ping", "-6", "-c", "2", "-W", "1", "-i", "0.2", "fd31:1::1", ns=the.client,
               check=False)
    assert ping.returncode == 0, ping.stdout
    # and unicast traffic is still forwarded
    assert exchange(the, 4) == 3 and exchange(the, 6) == 3


@pytest.mark.parametrize("mode", ["off", "native"])
def test_vlan_tagged_frames_are_left_to_the_kernel_on_both_hooks(the, mode):
    # At tc ingress the kernel has already moved the tag into the skb (the frame looks
    # untagged there); XDP still sees it in the frame.  Neither may forward it untagged.
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Dot1Q, Ether

    the.apply(ROUTES, "--xdp-mode", mode)
    router = mac(the.router, "rc")
    frame = Ether(dst=router) / Dot1Q(vlan=5) / IP(src="10.31.1.2", dst="10.31.2.2") / \
        UDP(sport=5000, dport=5001) / b"tagged"
    send_raw(the, [frame] * 4)
    kernel, routes = left_to_kernel(the)
    assert routes["10.31.2.0/24"] == 0
    assert kernel["options_or_vlan"] >= 4


EGRESS_RULES = """
version: 1
interfaces: [{name: rc}, {name: rs}]
defaults: {ingress: drop, egress: accept}
stateful: true
rules:
  - {name: from-clients, action: accept, src: ["10.31.1.0/24", "fd31:1::/64"]}
  - {name: no-7200-out, direction: egress, action: drop, proto: udp, dport: 7200}
routes:
  - {dst: 10.31.2.0/24, via: 10.31.2.2, dev: rs}
  - {dst: 10.31.1.0/24, via: 10.31.1.2, dev: rc}
  - {dst: "fd31:2::/64", via: "fd31:2::2", dev: rs}
  - {dst: "fd31:1::/64", via: "fd31:1::2", dev: rc}
"""


@pytest.mark.parametrize("mode", ["off", "native"])
def test_forwarded_traffic_meets_the_egress_rules_and_is_tracked_on_both_hooks(the, mode):
    # tc's redirect passes the egress interface's tc egress hook; XDP's does not, so the XDP
    # path judges the egress rules (and tracks the flow) itself: the same verdicts.
    result = the.apply(EGRESS_RULES, "--xdp-mode", mode)
    assert result["interfaces"]["rc"]["egress"] == "tc"
    # the server's replies come in on rs, where only tracked flows are let in
    assert exchange(the, 4, port=7000) == 3 and exchange(the, 6, port=7000) == 3
    assert exchange(the, 4, port=7200) == 0 and exchange(the, 6, port=7200) == 0
    status = json.loads(the.netctl("status", "-o", "json").stdout)
    rules = {r["name"]: r["packets"] for r in status["rules"]}
    assert rules["no-7200-out"] == 6
    assert status["conntrack"]["entries"] >= 2


def test_auto_picks_xdp_on_veth_when_the_policy_forwards(the):
    # judging alone: tc ingress is the faster hook on a veth; forwarding: XDP's redirect is
    result = the.apply(ROUTES)
    assert result["interfaces"]["rc"]["ingress"] == "xdp-native"
    assert "forwards" in result["interfaces"]["rc"]["why"]
    assert exchange(the, 4) == 3 and exchange(the, 6) == 3
    result = the.apply(ROUTES.split("routes:")[0])
    assert result["interfaces"]["rc"]["ingress"] == "tc"
