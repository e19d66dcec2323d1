"""Observability verbs end to end in a lab: `netctl monitor` with the kernel tracers (a
kernel drop with its reason, a TCP retransmit of a flow the policy starves), `netctl top`
(rates and totals of rules and kernel drops) and `netctl exporter` (a real HTTP scrape
inside the namespace agrees with `netctl status`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
from lab import DUT4, GEN4, NETCTL, finish, wait_for
from nsutil import inside, run

POLICY = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: no-5555, action: drop, proto: udp, dport: 5555}
  - {name: udp-6000, action: accept, proto: udp, dport: 6000}
"""

STARVE = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: starve-7000, action: drop, proto: tcp, dport: 7000}
"""


def _spawn(the_lab, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", the_lab.dut, NETCTL, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _send_udp(ns: str, count: int, dport: int) -> None:
    with inside(ns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tx:
        for i in range(count):
            tx.sendto(f"netctl-{i}".encode(), (DUT4, dport))
            time.sleep(0.01)


def test_monitor_shows_a_kernel_drop_with_its_reason(the_lab):
    the_lab.apply(POLICY)
    proc = _spawn(the_lab, "monitor", "--type", "drop", "--src", GEN4, "--dst", DUT4,
                  "--port", "6001", "-o", "json", "--count", "1", "--timeout", "30")
    start = json.loads(proc.stdout.readline() or "{}")
    assert start.get("type") == "start", proc.stderr.read()
    assert any(s.startswith("drop: ") for s in start["sources"])
    # Nothing listens on 6001: the policy accepts, the kernel drops (no socket).
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            _send_udp(the_lab.gen, 5, 6001)
            stop.wait(0.2)
    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        out, err = finish(proc, 60)
    finally:
        stop.set()
        sender.join()
    assert proc.returncode == 0, err
    event = json.loads(out.splitlines()[0])
    assert event["type"] == "drop" and event["reason"] == "NO_SOCKET", event
    assert (event["src"], event["dst"], event["dport"]) == (GEN4, DUT4, 6001)
    assert event["location"] and event["stack"]


def test_a_flooded_udp_socket_shows_receive_buffer_drops_for_its_port(the_lab):
    """A UDP socket with the smallest receive buffer, never read, flooded from the other
    namespace: the kernel drops what does not fit, under its own reason, for that flow."""
    the_lab.apply(POLICY)
    proc = _spawn(the_lab, "monitor", "--type", "drop,socket", "--port", "6002", "-o",
                  "json", "--count", "3", "--timeout", "30")
    start = json.loads(proc.stdout.readline() or "{}")
    assert start.get("type") == "start", proc.stderr.read()
    with inside(the_lab.dut):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            _send_udp(the_lab.gen, 20, 6002)
    with rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)   # the kernel's minimum
        rx.bind((DUT4, 6002))
        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            out, err = finish(proc, 60)
        finally:
            stop.set()
            sender.join()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 3, (events, err)
    for event in events:
        assert event["type"] == "drop" and event["reason"] == "SOCKET_RCVBUFF", event
        assert (event["src"], event["dst"], event["dport"]) == (GEN4, DUT4, 6002), event


def test_retransmits_and_loss_while_the_policy_starves_a_flow_then_it_completes(the_lab):
    payload = 300_000
    with inside(the_lab.dut):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with inside(the_lab.gen):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with server, client:
        server.bind((DUT4, 7000))
        server.listen(1)
        client.connect((DUT4, 7000))
        peer, _ = server.accept()
        with peer:
            peer.settimeout(30)
            the_lab.apply(STARVE)
            proc = _spawn(the_lab, "monitor", "--type", "retrans,cong", "--dst", DUT4,
                          "--port", "7000", "-o", "json", "--timeout", "6")
            assert json.loads(proc.stdout.readline() or "{}").get("type") == "start", \
                proc.stderr.read()
            sender = threading.Thread(target=client.sendall, args=(b"x" * payload,))
            sender.start()                 # mid-stream: the DUT drops every segment
            time.sleep(3)
            the_lab.apply(POLICY)          # the starving rule goes: the transfer resumes
            got = 0
            while got < payload:
                chunk = peer.recv(65536)
                assert chunk, f"connection closed after {got} bytes"
                got += len(chunk)
            sender.join(timeout=30)
            out, err = finish(proc, 60)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    retrans = [e for e in events if e["type"] == "retrans"]
    assert len(retrans) >= 2, (out, err)
    for e in retrans:
        assert (e["saddr"], e["daddr"], e["dport"]) == (GEN4, DUT4, 7000), e
        assert e["state"] == "ESTABLISHED"
    states = [e["state"] for e in events if e["type"] == "cong" and e["event"] == "state"]
    assert "Loss" in states, (states, out)
    assert got == payload
    assert the_lab.rule("udp-6000")["packets"] == 0      # POLICY is live again


def test_top_reports_rule_rates_and_kernel_drops(the_lab):
    the_lab.apply(POLICY)
    proc = _spawn(the_lab, "top", "--interval", "1", "--iterations", "4", "-o", "json")
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            _send_udp(the_lab.gen, 10, 5555)    # policy drops
            _send_udp(the_lab.gen, 10, 6000)    # policy accepts, no socket: kernel drops
    time.sleep(1.5)       # top has opened its tracers and taken its first snapshot
    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        out, err = finish(proc, 90)
    finally:
        stop.set()
        sender.join()
    assert proc.returncode == 0, err
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 4
    assert frames[-1]["tracers"] == {"drop": "tracepoint", "retrans": "tracepoint"}
    last = frames[-1]
    rules = {r["name"]: r for r in last["rules"]}
    assert rules["no-5555 (drop)"]["total"] > 0 and rules["udp-6000 (accept)"]["total"] > 0
    assert any(r["rate"] > 0 for f in frames for r in f["rules"])
    reasons = {r["name"]: r["total"] for r in last["kernel_drops"]}
    assert reasons.get("NO_SOCKET", 0) >= rules["udp-6000 (accept)"]["total"] // 2
    status = the_lab.status()
    assert rules["no-5555 (drop)"]["total"] <= the_lab.rule("no-5555")["packets"]
    assert status["applied"]


def test_top_text_without_a_datapath(the_lab):
    result = run(NETCTL, "top", "--iterations", "1", "--interval", "0.2", "--no-kernel",
                 ns=the_lab.dut, check=False)
    assert result.returncode == 0, result.stderr
    assert "no netctl datapath" in result.stdout and "kernel tracers: off" in result.stdout


def _scrape(ns: str, port: int) -> str:
    code = (f"import urllib.request; print(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/metrics', timeout=10).read().decode())")
    return run(sys.executable, "-c", code, ns=ns).stdout


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample of a scrape, read with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in scrape:\n{text}")


def test_exporter_serves_metrics_that_agree_with_status(the_lab):
    the_lab.apply(POLICY)
    run("ip", "link", "set", "lo", "up", ns=the_lab.dut)
    proc = _spawn(the_lab, "exporter", "--listen", "127.0.0.1:9561")
    try:
        line = proc.stdout.readline()
        assert "serving http://127.0.0.1:9561/metrics" in line, proc.stderr.read()
        assert "drop via tracepoint" in line
        assert the_lab.udp(7, dport=5555) == 0
        text = _scrape(the_lab.dut, 9561)
        rule = the_lab.rule("no-5555")
        assert _metric(text, "netctl_datapath_up") == 1.0
        assert _metric(text, "netctl_rule_packets_total", rule="no-5555",
                       action="drop") == rule["packets"] == 7
        assert _metric(text, "netctl_drops_total", reason="policy_rule") == 7
        assert _metric(text, "netctl_tracer_events_lost_total", tracer="drop") >= 0
        assert "netctl_kernel_drops_total" in text
        # A second scrape sees new packets: counters are read live, not cached.
        assert the_lab.udp(3, dport=5555) == 0
        assert wait_for(lambda: _metric(_scrape(the_lab.dut, 9561),
                                        "netctl_rule_packets_total", rule="no-5555",
                                        action="drop") == 10, timeout=10)
        # Bound to loopback: the lab's own address does not answer.
        with inside(the_lab.gen), pytest.raises(OSError):
            socket.create_connection((DUT4, 9561), timeout=2).close()
    finally:
        proc.terminate()
        _, err = finish(proc, 30)
    assert proc.returncode == 0, err


def test_exporter_refuses_a_bad_or_busy_address(the_lab):
    bad = run(NETCTL, "exporter", "--listen", "localhost", ns=the_lab.dut, check=False)
    assert bad.returncode != 0 and "--listen 'localhost'" in bad.stderr
    assert "Traceback" not in bad.stderr
    run("ip", "link", "set", "lo", "up", ns=the_lab.dut)
    with inside(the_lab.dut):
        holder = socket.socket()
    with holder:
        holder.bind(("127.0.0.1", 9562))
        holder.listen(1)
        busy = run(NETCTL, "exporter", "--listen", "127.0.0.1:9562", "--no-kernel",
                   ns=the_lab.dut, check=False)
    assert busy.returncode != 0 and "cannot serve there" in busy.stderr, busy.stderr
    assert "Traceback" not in busy.stderr
