"""Path MTU discovery through a stateful default drop: a client (netctl on its interface,
`stateful: true`, ingress dropped by default) uploads over TCP to a server through a router
whose link towards the server has a smaller MTU.  The router answers the client's full-size
segments with ICMP "fragmentation needed" (IPv4) or "packet too big" (ICMPv6); only if the
client's ingress accepts those as related to the tracked flow does its TCP lower its segment
size and the upload complete.  Without that the upload stalls for good (the kernel's TCP
does no MTU probing by default); the test gives it a few seconds.

    client (DUT) --- 1500 --- router --- 1280 (router's end only) --- server

The server's end of the narrow link keeps MTU 1500, so the server announces an MSS of 1460
and the client sends segments the router cannot forward."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab import NETCTL, wait_for
from nsutil import inside, netns, netns_cookie, run

from netctl.paths import PIN_ROOT, STATE_ROOT

NARROW_MTU = 1280
UPLOAD = 1 << 20
SERVER = {4: "10.41.2.2", 6: "fd41:2::2"}
CLIENT = {4: "10.41.1.2", 6: "fd41:1::2"}

POLICY = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
rules: []
"""


@dataclass
class Path3:
    client: str
    router: str
    server: str
    tmp: Path

    def netctl(self, *args: str):
        result = run(NETCTL, *args, ns=self.client, check=False)
        if result.returncode != 0:
            raise AssertionError(f"netctl {' '.join(args)}: {result.stdout}{result.stderr}")
        return result

    def status(self) -> dict:
        return json.loads(self.netctl("status", "-o", "json").stdout)


@contextlib.contextmanager
def narrow_path(tmp: Path) -> Iterator[Path3]:
    with netns("c") as client, netns("r") as router, netns("s") as server:
        run("ip", "link", "add", "cr", "netns", client, "type", "veth", "peer", "name", "rc",
            "netns", router)
        run("ip", "link", "add", "sr", "netns", server, "type", "veth", "peer", "name", "rs",
            "netns", router)
        for ns, dev, a4, a6 in ((client, "cr", "10.41.1.2/24", "fd41:1::2/64"),
                                (router, "rc", "10.41.1.1/24", "fd41:1::1/64"),
                                (router, "rs", "10.41.2.1/24", "fd41:2::1/64"),
                                (server, "sr", "10.41.2.2/24", "fd41:2::2/64")):
            run("ip", "addr", "add", a4, "dev", dev, ns=ns)
            run("ip", "addr", "add", a6, "dev", dev, "nodad", ns=ns)
            run("ip", "link", "set", dev, "up", ns=ns)
        run("ip", "link", "set", "rs", "mtu", str(NARROW_MTU), ns=router)
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            run("sysctl", "-qw", f"{key}=1", ns=router)
        # No MTU probing: the only way for the client to learn the path MTU is the ICMP
        # error (the kernel's default, set here so that the stall cannot be rescued).
        run("sysctl", "-qw", "net.ipv4.tcp_mtu_probing=0", ns=client)
        run("ip", "route", "add", "default", "via", "10.41.1.1", ns=client)
        run("ip", "-6", "route", "add", "default", "via", "fd41:1::1", ns=client)
        run("ip", "route", "add", "default", "via", "10.41.2.1", ns=server)
        run("ip", "-6", "route", "add", "default", "via", "fd41:2::1", ns=server)
        for family in (4, 6):   # neighbours resolved (small packets: no MTU learnt)
            if not wait_for(lambda f=family: run(
                    "ping", f"-{f}", "-c", "1", "-W", "1", SERVER[f], ns=client,
                    check=False).returncode == 0, timeout=10):
                raise RuntimeError(f"{SERVER[family]} unreachable before any policy")
        the = Path3(client, router, server, tmp)
        try:
            yield the
        finally:
            run(NETCTL, "detach", "--all", ns=client, check=False)
            cookie = netns_cookie(client)
            shutil.rmtree(f"{PIN_ROOT}/ns{cookie}", ignore_errors=True)
            shutil.rmtree(f"{STATE_ROOT}/ns{cookie}", ignore_errors=True)


@pytest.fixture
def the(tmp_path):
    with narrow_path(tmp_path) as it:
        yield it


def upload(the: Path3, family: int, port: int, seconds: float) -> int:
    """Send UPLOAD bytes from the client to the server; the bytes the server got before
    the client finished or ``seconds`` passed."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with inside(the.server):
        listener = socket.socket(af, socket.SOCK_STREAM)
    with inside(the.client):
        conn = socket.socket(af, socket.SOCK_STREAM)
    received = [0]

    def sink():
        with contextlib.suppress(OSError):
            peer, _ = listener.accept()
            with peer:
                peer.settimeout(seconds)
                while data := peer.recv(65536):
                    received[0] += len(data)

    with listener, conn:
        listener.bind((SERVER[family], port))
        listener.listen(1)
        listener.settimeout(seconds)
        thread = threading.Thread(target=sink, daemon=True)
        thread.start()
        conn.settimeout(seconds)
        with contextlib.suppress(OSError):
            conn.connect((SERVER[family], port))
            conn.sendall(b"u" * UPLOAD)
            conn.shutdown(socket.SHUT_WR)
        thread.join(timeout=seconds + 1)
    return received[0]


@pytest.mark.parametrize("family", [4, 6])
def test_tracked_upload_through_a_narrower_link_completes(the, family):
    the.netctl("apply", str(_policy(the)), "--dev", "cr")
    got = upload(the, family, 5000 + family, seconds=6)
    assert got == UPLOAD, f"the server got {got} of {UPLOAD} bytes: the path MTU was never " \
                          "learnt (the router's ICMP errors were dropped?)"
    ct = the.status()["conntrack"]
    assert ct["related_accepted"] >= 1, ct
    # The client did learn the narrower MTU from the router.
    route = run("ip", f"-{family}", "route", "get", SERVER[family], ns=the.client).stdout
    assert f"mtu {NARROW_MTU}" in route, route


def _policy(the: Path3) -> Path:
    path = the.tmp / "client.yaml"
    path.write_text(POLICY)
    return path


@pytest.mark.parametrize("family", [4, 6])
def test_the_narrow_path_works_without_netctl(the, family):
    """The control: with nothing on the client, its TCP learns the path MTU and the upload
    completes (so a stall with netctl is netctl's doing)."""
    assert upload(the, family, 5100 + family, seconds=6) == UPLOAD
    route = run("ip", f"-{family}", "route", "get", SERVER[family], ns=the.client).stdout
    assert f"mtu {NARROW_MTU}" in route, route
