"""stateful: true end to end: the DUT drops every unsolicited packet (default-deny ingress),
yet a TCP connection and a UDP exchange it starts work, over IPv4 and IPv6; after the flow
closes and its timeout passes, a stray reply is dropped again.  Real sockets on both sides,
netctl as separate processes."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time

import pytest
from lab import DUT4, DUT6, GEN4, GEN6, wait_for
from nsutil import inside, run

POLICY = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
conntrack: {tcp_closing: 1, udp: 2}
rules: []
"""


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
    (flow,) = [f for f in after["flows"] if f["sport"] == 40111]
    assert flow["table"] == "unconfirmed"          # nobody answered it
    assert (after["capacity"], after["unconfirmed"]["capacity"]) == (65536, 8192)
    out = the_lab.netctl("conntrack").stdout
    assert "40111" in out and "unconfirmed" in out
    assert "confirmed: 0 of 65536 entries" in out and "unconfirmed: 1 of 8192 entries" in out
    assert "related ICMP errors accepted" in out and "invalid" in out
    status = the_lab.netctl("status").stdout
    assert "0 of 65536 confirmed, 1 of 8192 unconfirmed" in status, status
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
    """More flows than the tables hold: the least recently used go, every one counted; the
    tables never hold more than their size and new flows still get in.  Answered flows
    fill the table of confirmed flows (64), unanswered ones that of unconfirmed flows (16)."""
    the_lab.apply(SMALL_TABLE)
    flows, unanswered = 300, 100
    with inside(the_lab.gen):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()

    def echo():
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                data, peer = server.recvfrom(100)
                server.sendto(data, peer)

    with server:
        server.bind((GEN4, 7000))
        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        try:
            with inside(the_lab.dut):
                for i in range(flows):   # a distinct source port each: a distinct flow each
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.bind((DUT4, 20000 + i))
                        s.settimeout(2)
                        s.sendto(b"x", (GEN4, 7000))
                        assert s.recv(10) == b"x", i   # the reply of the newest flow gets in
                for i in range(unanswered):
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.bind((DUT4, 30000 + i))
                        s.sendto(b"x", (GEN4, 7001))
        finally:
            stop.set()
            thread.join(timeout=2)
    ct = the_lab.status()["conntrack"]
    waiting = ct["unconfirmed"]
    assert (ct["capacity"], waiting["capacity"]) == (64, 16), ct
    assert ct["confirmed"] >= flows and 0 < ct["entries"] <= ct["capacity"], ct
    assert ct["evicted"] >= flows - ct["capacity"], ct
    assert ct["evicted"] == ct["confirmed"] - ct["expired"] - ct["entries"], ct
    assert ct["created"] >= flows + unanswered and waiting["entries"] <= waiting["capacity"]
    assert waiting["evicted"] >= unanswered - waiting["capacity"], ct
    assert waiting["evicted"] == ct["created"] - ct["confirmed"] - waiting["expired"] - \
        waiting["entries"], ct


# ---- TCP state: reopen, out-of-window resets, unconfirmed flows --------------------------

SHORT_CLOSING = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
conntrack: {tcp_closing: 1}
rules: []
"""


class PushServer:
    """A TCP server in a namespace that keeps every connection it accepts, reads what
    clients send, and sends on a connection when the test says so (a server push, the
    traffic a stale entry would cut under a default drop)."""

    def __init__(self, ns: str, family: int, addr: str, port: int):
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        with inside(ns):
            self.listener = socket.socket(af, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((addr, port))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(3)
            self.conns.append(conn)

    def accepted(self, count: int, timeout: float = 3.0) -> list[socket.socket]:
        deadline = time.monotonic() + timeout
        while len(self.conns) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.conns) >= count, f"accepted {len(self.conns)} of {count}"
        return self.conns

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        for conn in self.conns:
            conn.close()
        self.listener.close()

    def __enter__(self) -> PushServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _client(ns: str, family: int, local: tuple, remote: tuple) -> socket.socket:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with inside(ns):
        conn = socket.socket(af, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    conn.settimeout(3)
    conn.bind(local)
    conn.connect(remote)
    return conn


def _reset_close(conn: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): no TIME_WAIT, so the same tuple can connect again."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _flows(the_lab, port: int) -> list[dict]:
    flows = json.loads(the_lab.netctl("conntrack", "-o", "json").stdout)["flows"]
    return [f for f in flows if f["proto"] == 6 and f["dport"] == port]


@pytest.mark.parametrize("wait", [0.0, 1.5], ids=["closing", "stale"])
def test_a_new_connection_on_a_closed_tuple_is_tracked_afresh(the_lab, wait):
    """A connection ends (RST), and a new one on the same 4-tuple starts while the old
    entry is closing (or already stale): the new one must get an established entry of its
    own, so a server push after more than tcp_closing of idle still arrives."""
    the_lab.apply(SHORT_CLOSING)
    with PushServer(the_lab.gen, 4, GEN4, 8081) as server:
        first = _client(the_lab.dut, 4, (DUT4, 40101), (GEN4, 8081))
        first.sendall(b"one")
        server.accepted(1)
        _reset_close(first)
        time.sleep(wait)
        second = _client(the_lab.dut, 4, (DUT4, 40101), (GEN4, 8081))
        with second:
            second.sendall(b"two")
            conn = server.accepted(2)[1]
            assert conn.recv(10) == b"two"
            time.sleep(1.5)                     # idle longer than tcp_closing (1 s)
            conn.sendall(b"pushed")
            assert second.recv(10) == b"pushed"
            (flow,) = _flows(the_lab, 8081)
            assert flow["state"] == "established" and flow["table"] == "confirmed", flow


def _learn_next_seq(ns: str, ifname: str, send, sport: int) -> int:
    """Call send() and return the sequence number that follows the first data segment from
    port ``sport`` seen leaving ``ifname`` (the sender's next sequence number)."""
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Ether

    with inside(ns):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    with cap:
        cap.bind((ifname, 0))
        cap.settimeout(2)
        send()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            frame = Ether(cap.recv(65536))
            if TCP in frame and frame[TCP].sport == sport and len(frame[TCP].payload):
                return (frame[TCP].seq + len(frame[TCP].payload)) & 0xFFFFFFFF
    raise AssertionError("no data segment seen")


@pytest.mark.parametrize("family", [4, 6])
def test_an_off_path_reset_outside_the_window_leaves_the_flow_established(the_lab, family):
    """A RST with the flow's addresses and ports but a sequence number far outside the
    window (what an off-path attacker guesses) must not end the flow's entry: it is not a
    valid reply, goes to the rules, and the flow keeps working past tcp_closing."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    dut, gen = (DUT4, GEN4) if family == 4 else (DUT6, GEN6)
    the_lab.apply(SHORT_CLOSING)
    with PushServer(the_lab.gen, family, gen, 8082) as server:
        client = _client(the_lab.dut, family, (dut, 40102), (gen, 8082))
        with client:
            client.sendall(b"hello")
            conn = server.accepted(1)[0]
            assert conn.recv(10) == b"hello"
            next_seq = _learn_next_seq(the_lab.gen, the_lab.gen_if,
                                       lambda: conn.sendall(b"data"), 8082)
            assert client.recv(10) == b"data"
            ip = IP(src=gen, dst=dut) if family == 4 else IPv6(src=gen, dst=dut)
            forged = (Ether(src=_mac(the_lab.gen, the_lab.gen_if),
                            dst=_mac(the_lab.dut, the_lab.dut_if))
                      / ip / TCP(sport=8082, dport=40102, flags="R",
                                 seq=(next_seq + 0x40000000) & 0xFFFFFFFF))
            before = the_lab.status()
            _send_raw(the_lab.gen, the_lab.gen_if, bytes(forged))
            time.sleep(1.5)                     # past tcp_closing (1 s), had it counted
            conn.sendall(b"pushed")
            assert client.recv(10) == b"pushed"
            (flow,) = _flows(the_lab, 8082)
            assert flow["state"] == "established", flow
            after = the_lab.status()
            assert after["conntrack"]["invalid"] == before["conntrack"]["invalid"] + 1
            # The forged reset went on to the rules: the default dropped it.
            assert after["defaults"]["ingress"]["drop"]["packets"] >= \
                before["defaults"]["ingress"]["drop"]["packets"] + 1


FLOOD_TABLE = """
version: 1
defaults: {ingress: drop, egress: accept}
stateful: true
conntrack: {size: 64}
rules:
  - {name: web, action: accept, proto: tcp, dport: 8080}
"""


def _syn_frames(dst_mac: str, src_mac: str, count: int, port: int) -> list[bytes]:
    """SYNs from `count` distinct spoofed sources (10.99.0.0/16) to DUT4:port."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    template = Ether(src=src_mac, dst=dst_mac) / IP(src="10.99.0.1", dst=DUT4) / TCP(
        sport=1024, dport=port, flags="S", seq=1)
    out = []
    for i in range(count):
        pkt = template.copy()
        pkt[IP].src = f"10.99.{i >> 8}.{i & 255}"
        pkt[TCP].sport = 1024 + i
        pkt[TCP].seq = 1000 * i + 1
        out.append(bytes(pkt))
    return out


def test_a_spoofed_syn_flood_evicts_no_established_flow(the_lab):
    """A flood of SYNs from spoofed sources to an allowed port, ten times the table's size:
    the host answers each with a SYN-ACK that nobody completes.  Those go to the table of
    unconfirmed flows; the established flows (idle, the first an LRU would pick) stay, and
    a server push on each still arrives under the default drop.

    The established flows fill most of the table on purpose: the kernel's LRU keeps entries
    that were looked up on an active list, and rotates that list towards eviction only
    once it is longer than the inactive one (kernel/bpf/bpf_lru_list.c), so a few busy
    flows in a large table would survive a flood in one table too."""
    the_lab.apply(FLOOD_TABLE)
    # The SYN-ACKs to the spoofed sources leave towards the generator (which drops them).
    run("ip", "route", "add", "10.99.0.0/16", "via", GEN4, ns=the_lab.dut)
    with inside(the_lab.dut):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    flows = 40
    with listener, PushServer(the_lab.gen, 4, GEN4, 9000) as server:
        listener.bind((DUT4, 8080))
        listener.listen(16)
        clients = [_client(the_lab.dut, 4, (DUT4, 41000 + i), (GEN4, 9000))
                   for i in range(flows)]
        try:
            for c in clients:
                c.sendall(b"hi")
            conns = server.accepted(flows)
            for conn in conns:
                assert conn.recv(10) == b"hi"
            assert len(_flows(the_lab, 9000)) == flows
            before = the_lab.status()["conntrack"]
            spoofed = _syn_frames(_mac(the_lab.dut, the_lab.dut_if),
                                  _mac(the_lab.gen, the_lab.gen_if), 640, 8080)
            with inside(the_lab.gen):
                raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            with raw:
                raw.bind((the_lab.gen_if, 0))
                for frame in spoofed:
                    raw.send(frame)
            time.sleep(0.5)
            for i, (c, conn) in enumerate(zip(clients, conns, strict=True)):
                conn.sendall(f"push{i}".encode())
                assert c.recv(10) == f"push{i}".encode(), i
            ct = the_lab.status()["conntrack"]
            assert len(_flows(the_lab, 9000)) == flows
            assert ct["created"] - before["created"] >= 640, ct
            assert ct["evicted"] == 0, ct
            assert ct["unconfirmed"]["evicted"] >= 640 - ct["unconfirmed"]["capacity"], ct
        finally:
            for c in clients:
                c.close()


def _trafgen(ns: str, ifname: str, frame: bytes, count: int, tmp) -> None:
    """Send ``frame`` ``count`` times from a packet socket's TX ring: it reaches tc with
    only its Ethernet header in the linear area (the programs read a copy of the headers).
    Through the qdisc path: trafgen bypasses it by default, and tc egress with it."""
    conf = tmp / f"frame-{len(frame)}.trafgen"
    conf.write_text("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")
    out = run("trafgen", "--dev", ifname, "--conf", str(conf), "--num", str(count),
              "--cpus", "1", "--no-sock-mem", "--qdisc-path", ns=ns, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_what_the_tracker_reads_beyond_the_linear_area_is_read(the_lab, tmp_path):
    """Frames from a TX ring: a SYN the DUT sends with a window scale option (egress) and
    ICMP errors about its flow (ingress) are read through the programs' copy of the
    headers: the shift is recorded and the errors are related."""
    from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror
    from scapy.layers.l2 import Ether

    the_lab.apply(POLICY)
    dut_mac, gen_mac = _mac(the_lab.dut, the_lab.dut_if), _mac(the_lab.gen, the_lab.gen_if)
    syn = Ether(src=dut_mac, dst=gen_mac) / IP(src=DUT4, dst=GEN4) / TCP(
        sport=40200, dport=9, flags="S", seq=1000,
        options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None),
                 ("WScale", 9)])
    _trafgen(the_lab.dut, the_lab.dut_if, bytes(syn), 1, tmp_path)
    (flow,) = _flows(the_lab, 9)
    assert (flow["table"], flow["tcp"]["opened_by"], flow["tcp"]["wscale"]) == (
        "unconfirmed", "syn", 9), flow
    error = Ether(src=gen_mac, dst=dut_mac) / IP(src=GEN4, dst=DUT4) / ICMP(
        type=3, code=1) / IPerror(src=DUT4, dst=GEN4) / TCPerror(sport=40200, dport=9)
    before = the_lab.status()["conntrack"]["related_accepted"]
    _trafgen(the_lab.gen, the_lab.gen_if, bytes(error), 20, tmp_path)
    assert wait_for(lambda: the_lab.status()["conntrack"]["related_accepted"] == before + 20)
