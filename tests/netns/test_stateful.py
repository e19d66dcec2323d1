"""stateful: true end to end: the DUT drops every unsolicited packet (default-deny ingress),
yet a TCP connection and a UDP exchange it starts work, over IPv4 and IPv6; after the flow
closes and its timeout passes, a stray reply is dropped again.  Real sockets on both sides,
netctl as separate processes."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
from lab import DUT4, DUT6, GEN4, GEN6, lab
from nsutil import inside, run

POLICY = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
conntrack: {tcp_closing: 1, udp: 2}
rules: []
"""


@pytest.fixture
def the_lab(tmp_path):
    with lab(tmp_path) as it:
        yield it


def _tcp_echo_server(ns: str, family: int, addr: str, port: int, stop: threading.Event):
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with inside(ns):
        server = socket.socket(af, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((addr, port))
    server.listen(4)
    server.settimeout(0.2)

    def loop():
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        while data := conn.recv(4096):
                            conn.sendall(data)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _send_raw(ns: str, ifname: str, frame: bytes) -> None:
    with inside(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind((ifname, 0))
        sock.send(frame)


def _mac(ns: str, ifname: str) -> str:
    return run("cat", f"/sys/class/net/{ifname}/address", ns=ns).stdout.strip()


@pytest.mark.parametrize("family", [4, 6])
def test_flows_started_inside_work_unsolicited_and_stale_replies_do_not(the_lab, family):
    dut, gen = (DUT4, GEN4) if family == 4 else (DUT6, GEN6)
    the_lab.apply(POLICY)

    # Unsolicited inbound: dropped.
    assert the_lab.udp(5, family) == 0
    dropped = the_lab.status()["defaults"]["ingress"]["drop"]["packets"]
    assert dropped >= 5

    # A UDP exchange started from the DUT: the reply comes back.
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with inside(the_lab.gen):
        server = socket.socket(af, socket.SOCK_DGRAM)
    with inside(the_lab.dut):
        client = socket.socket(af, socket.SOCK_DGRAM)
    with server, client:
        server.bind((gen, 5353))
        client.bind((dut, 40053))
        client.settimeout(2)
        client.sendto(b"query", (gen, 5353))
        server.settimeout(2)
        data, peer = server.recvfrom(100)
        server.sendto(b"answer:" + data, peer)
        assert client.recv(100) == b"answer:query"

    # A TCP connection started from the DUT: handshake, data both ways, close.
    stop = threading.Event()
    thread = _tcp_echo_server(the_lab.gen, family, gen, 8080, stop)
    try:
        with inside(the_lab.dut):
            conn = socket.socket(af, socket.SOCK_STREAM)
        with conn:
            conn.settimeout(3)
            conn.bind((dut, 40080))
            conn.connect((gen, 8080))
            payload = b"x" * 100_000
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += conn.recv(65536)
            assert got == payload
            flows = json.loads(the_lab.netctl("conntrack", "-o", "json").stdout)["flows"]
            tcp = [f for f in flows if f["proto"] == 6 and f["dport"] == 8080]
            assert tcp and tcp[0]["state"] == "established" and tcp[0]["packets_in"] > 10
            assert tcp[0]["src"] == dut and tcp[0]["sport"] == 40080
    finally:
        stop.set()
        thread.join(timeout=5)

    # After the close and the closing timeout (1 s), a stray reply of that flow is dropped.
    time.sleep(1.5)
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    ip = IP(src=gen, dst=dut) if family == 4 else IPv6(src=gen, dst=dut)
    stray = Ether(src=_mac(the_lab.gen, the_lab.gen_if), dst=_mac(the_lab.dut, the_lab.dut_if))
    stray = stray / ip / TCP(sport=8080, dport=40080, flags="A", seq=1, ack=1)
    before = the_lab.status()["defaults"]["ingress"]["drop"]["packets"]
    _send_raw(the_lab.gen, the_lab.gen_if, bytes(stray))
    time.sleep(0.2)
    status = the_lab.status()
    assert status["defaults"]["ingress"]["drop"]["packets"] == before + 1
    assert status["conntrack"]["enabled"] and status["conntrack"]["replies_accepted"] > 10


def test_conntrack_entries_survive_a_policy_change_and_detach_clears_them(the_lab):
    the_lab.apply(POLICY)
    with inside(the_lab.dut):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with client:
        client.bind((DUT4, 40111))
        client.sendto(b"hello", (GEN4, 9999))
    before = json.loads(the_lab.netctl("conntrack", "-o", "json").stdout)
    assert any(f["sport"] == 40111 for f in before["flows"])
    the_lab.apply(POLICY.replace("rules: []", "rules:\n  - {name: web, action: accept, "
                                             "proto: tcp, dport: 80}"))
    after = json.loads(the_lab.netctl("conntrack", "-o", "json").stdout)
    assert any(f["sport"] == 40111 for f in after["flows"])
    assert after["capacity"] == 65536
    out = the_lab.netctl("conntrack")
    assert "40111" in out.stdout and "of 65536 entries" in out.stdout
    the_lab.netctl("detach", "--all")
    assert the_lab.leftovers() == []


SMALL_TABLE = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
conntrack: {size: 64, udp: 60}
rules: []
"""


def test_a_full_table_evicts_and_counts_it(the_lab):
    """More flows than the table holds: the least recently used go, every one counted;
    the table never holds more than its size and new flows still get in."""
    the_lab.apply(SMALL_TABLE)
    flows = 300
    with inside(the_lab.dut):
        for i in range(flows):   # a distinct source port each: a distinct flow each
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((DUT4, 20000 + i))
                s.sendto(b"x", (GEN4, 7000))
    ct = the_lab.status()["conntrack"]
    assert ct["capacity"] == 64, ct
    assert ct["created"] >= flows and 0 < ct["entries"] <= ct["capacity"], ct
    assert ct["evicted"] >= flows - ct["capacity"], ct
    assert ct["evicted"] == ct["created"] - ct["expired"] - ct["entries"], ct
    # The newest flow is tracked: its reply is let in although ingress drops by default.
    with inside(the_lab.dut):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(the_lab.gen):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, server:
        server.bind((GEN4, 7001))
        rx.bind((DUT4, 0))
        rx.settimeout(2)
        rx.sendto(b"ping", (GEN4, 7001))
        data, peer = server.recvfrom(100)
        server.sendto(b"pong", peer)
        assert rx.recv(100) == b"pong"
