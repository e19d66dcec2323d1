"""The datapath end to end: real veths in real namespaces, real sockets, netctl as separate
processes inside the DUT (`ip netns exec`).

Each test: traffic arrives -> apply a drop rule -> blocked, counted exactly -> change the
policy -> arrives again; on tc ingress, native XDP and tc egress, IPv4 and IPv6; and
detach leaves no trace.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from lab import wait_for
from nsutil import inside, run

ACCEPT_ALL = """
version: 1
defaults: {ingress: accept, egress: accept}
rules: []
"""

DROP_UDP_5555 = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: keep-dns, action: accept, proto: udp, dport: 53}
  - {name: drop-5555, action: drop, proto: udp, dport: 5555}
"""

DROP_UDP_6666 = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: drop-6666, action: drop, proto: udp, dport: 6666}
"""


def _add_foreign_filter(ns: str, dev: str) -> None:
    import os

    from nsutil import inside
    from pyroute2 import IPRoute

    from netctl.kernel import bpfsys
    from netctl.kernel import insns as asm

    fd = bpfsys.prog_load(bpfsys.PROG_SCHED_CLS, asm.return_imm(-1), "foreign")
    try:
        with inside(ns), IPRoute() as ipr:
            index = ipr.link_lookup(ifname=dev)[0]
            ipr.tc("add-filter", kind="bpf", index=index, handle=1, fd=fd, name="foreign",
                   parent="ffff:fff2", classid=1, direct_action=True, prio=7)
    finally:
        os.close(fd)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("xdp_mode,hook", [("off", "tc"), ("native", "xdp-native"),
                                           ("generic", "xdp-generic")])
def test_ingress_block_then_unblock(the_lab, family, xdp_mode, hook):
    the_lab.apply(ACCEPT_ALL, "--xdp-mode", xdp_mode)
    assert the_lab.udp(20, family) == 20

    result = the_lab.apply(DROP_UDP_5555, "--xdp-mode", xdp_mode)
    assert result["interfaces"][the_lab.dut_if]["ingress"] == hook
    assert the_lab.udp(25, family) == 0
    rule = the_lab.rule("drop-5555")
    assert rule["packets"] == 25, rule
    assert rule["bytes"] == 25 * (14 + (20 if family == 4 else 40) + 8 + len("netctl-0")) + 15
    assert the_lab.rule("keep-dns")["packets"] == 0

    the_lab.apply(DROP_UDP_6666, "--xdp-mode", xdp_mode)
    assert the_lab.udp(20, family) == 20
    assert the_lab.udp(7, family, dport=6666) == 0
    assert the_lab.rule("drop-6666")["packets"] == 7


@pytest.mark.parametrize("family", [4, 6])
def test_egress_rule_blocks_replies_leaving_the_dut(the_lab, family):
    egress = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: no-udp-out, direction: egress, action: drop, proto: udp, dport: 7777}
"""
    assert the_lab.udp(10, family, dport=7777, to_dut=False) == 10
    result = the_lab.apply(egress)
    assert result["interfaces"][the_lab.dut_if]["egress"] == "tc"
    assert the_lab.udp(12, family, dport=7777, to_dut=False) == 0
    assert the_lab.rule("no-udp-out")["packets"] == 12
    assert the_lab.udp(5, family, dport=7778, to_dut=False) == 5


def test_default_drop_keeps_neighbour_discovery_and_counts_defaults(the_lab):
    policy = """
version: 1
defaults: {ingress: drop, egress: accept}
rules:
  - {name: ping4, action: accept, proto: icmp, icmp_type: echo-request}
  - {name: ping6, action: accept, proto: icmpv6, icmp_type: echo-request}
"""
    the_lab.apply(policy)
    assert the_lab.udp(9) == 0
    # Flush the neighbour caches: IPv6 must resolve again through NDP (accepted under a
    # default drop), IPv4 through ARP (not IP: passes).
    for ns in (the_lab.gen, the_lab.dut):
        run("ip", "neigh", "flush", "all", ns=ns, check=False)
    assert the_lab.ping(4)
    assert the_lab.ping(6)
    status = the_lab.status()
    assert status["defaults"]["ingress"]["drop"]["packets"] >= 9
    assert status["defaults"]["ingress"]["action"] == "drop"
    assert status["passed"]["ndp"] >= 1
    assert the_lab.rule("ping6")["packets"] >= 1


@pytest.mark.parametrize("xdp_mode", ["off", "native"])
def test_only_neighbour_discovery_a_host_would_process_takes_the_implicit_accept(
        the_lab, xdp_mode):
    # RFC 4861: ND with a hop limit below 255 was forwarded and is discarded by receivers,
    # and a redirect comes from a link-local router: anything else meets the rules.
    from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6ND_Redirect, IPv6
    from scapy.layers.l2 import Ether

    the_lab.apply("""
version: 1
defaults: {ingress: drop, egress: accept}
""", "--xdp-mode", xdp_mode)
    dut_mac = json.loads(run("ip", "-j", "link", "show", the_lab.dut_if,
                             ns=the_lab.dut).stdout)[0]["address"]
    target = "fd00:123::2"
    # The generator's own IPv6 start-up chatter (MLD reports with hop limit 1, which the
    # default drop counts, router solicitations) goes on for seconds after the link comes
    # up and would land between two counts: the generator sends only this test's frames
    # (through a packet socket, which needs no IPv6 on the interface).
    run("sysctl", "-qw", f"net.ipv6.conf.{the_lab.gen_if}.disable_ipv6=1", ns=the_lab.gen)
    time.sleep(0.2)

    def send(*packets):
        with inside(the_lab.gen):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        with sock:
            sock.bind((the_lab.gen_if, 0))
            for packet in packets:
                sock.send(bytes(Ether(dst=dut_mac) / packet))
        time.sleep(0.3)

    def counts():
        status = the_lab.status()
        return status["passed"]["ndp"], status["defaults"]["ingress"]["drop"]["packets"]

    ndp0, dropped0 = counts()
    send(*[IPv6(src="fe80::1", dst=target, hlim=255) / ICMPv6ND_NS(tgt=target)] * 3)
    ndp1, dropped1 = counts()
    assert ndp1 - ndp0 >= 3 and dropped1 == dropped0
    send(*[IPv6(src="fe80::1", dst=target, hlim=hlim) / ICMPv6ND_NS(tgt=target)
           for hlim in (254, 64, 1, 0)],
         IPv6(src="fd00:123::1", dst=target, hlim=255) / ICMPv6ND_Redirect(tgt="fd00::9",
                                                                          dst="fd00::8"))
    ndp2, dropped2 = counts()
    assert dropped2 - dropped1 == 5
    send(IPv6(src="fe80::1", dst=target, hlim=255) / ICMPv6ND_Redirect(tgt="fd00::9",
                                                                       dst="fd00::8"))
    ndp3, dropped3 = counts()
    assert ndp3 - ndp2 >= 1 and dropped3 == dropped2


def test_rule_changes_write_maps_without_rebuilding(the_lab):
    the_lab.apply(DROP_UDP_5555)
    before = the_lab.status()
    result = the_lab.apply(DROP_UDP_6666)
    after = the_lab.status()
    assert result["reload"] is False
    assert after["build"] == before["build"]
    assert after["interfaces"][0]["prog_ids"] == before["interfaces"][0]["prog_ids"]
    assert after["generation"] == 1 - before["generation"]
    again = the_lab.apply(DROP_UDP_6666)
    assert again["unchanged"] is True and again["entries"] == 0


def test_dry_run_changes_nothing(the_lab):
    the_lab.apply(DROP_UDP_5555)
    before = the_lab.status()
    out = the_lab.netctl("apply", the_lab.policy(DROP_UDP_6666), "--dev", the_lab.dut_if,
                         "--dry-run")
    assert "would write" in out.stdout and "rule_table" in out.stdout
    assert the_lab.status()["digest"] == before["digest"]
    assert the_lab.udp(5) == 0  # still the old policy


def test_detach_leaves_no_trace_and_keeps_foreign_tc(the_lab):
    dev = the_lab.dut_if
    # Someone else's clsact qdisc and bpf filter (a program that passes everything), there
    # before netctl.
    run("tc", "qdisc", "add", "dev", dev, "clsact", ns=the_lab.dut)
    _add_foreign_filter(the_lab.dut, dev)
    the_lab.apply(DROP_UDP_5555)
    assert the_lab.udp(4) == 0
    the_lab.netctl("detach", "--dev", dev)
    assert the_lab.udp(4) == 4
    filters = run("tc", "filter", "show", "dev", dev, "ingress", ns=the_lab.dut).stdout
    assert "foreign" in filters and "netctl" not in filters
    run("tc", "qdisc", "del", "dev", dev, "clsact", ns=the_lab.dut)
    assert the_lab.leftovers() == []


def test_detach_removes_everything_netctl_added(the_lab):
    the_lab.apply(DROP_UDP_5555, "--xdp-mode", "native")
    the_lab.apply(DROP_UDP_5555, "--xdp-mode", "off")  # moves ingress from XDP to tc
    assert the_lab.udp(3) == 0
    out = the_lab.netctl("detach", "--all")
    assert "pins and state removed" in out.stdout
    assert the_lab.leftovers() == []
    assert the_lab.udp(3) == 3
    status = the_lab.status()
    assert status["applied"] is False and status["interfaces"] == []


def test_packet_socket_tx_ring_frames_are_classified_at_tc(the_lab, tmp_path):
    """trafgen sends through a TX ring: such frames reach tc with only the Ethernet header
    in the linear area.  They must be judged like any other, not slip through."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    mac = run("cat", f"/sys/class/net/{the_lab.dut_if}/address", ns=the_lab.dut).stdout.strip()
    frame = bytes(Ether(dst=mac) / IP(src="10.123.0.1", dst="10.123.0.2") /
                  UDP(sport=1234, dport=5555) / (b"x" * 18))
    conf = tmp_path / "udp.trafgen"
    conf.write_text("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")
    the_lab.apply(DROP_UDP_5555, "--xdp-mode", "off")
    sent = 200
    out = run("trafgen", "--dev", the_lab.gen_if, "--conf", str(conf), "--num", str(sent),
              "--cpus", "1", "--no-sock-mem", ns=the_lab.gen, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert wait_for(lambda: the_lab.rule("drop-5555")["packets"] == sent), the_lab.status()
    assert the_lab.rule("drop-5555")["bytes"] == sent * len(frame)


def test_missing_interface_changes_nothing(the_lab):
    the_lab.apply(DROP_UDP_5555)
    before = the_lab.status()
    out = the_lab.netctl("apply", the_lab.policy(DROP_UDP_6666), "--dev", "nosuch0",
                         check=False)
    assert out.returncode == 4
    assert "nosuch0" in out.stderr and "Traceback" not in out.stderr
    assert the_lab.status()["digest"] == before["digest"]


def test_verifier_refusal_keeps_the_old_policy(the_lab):
    the_lab.apply(DROP_UDP_5555)
    before = the_lab.status()
    out = the_lab.netctl("apply", the_lab.policy(DROP_UDP_6666), "--dev", the_lab.dut_if,
                         check=False, env={"NETCTL_EXTRA_CFLAGS":
                                           "-DNETCTL_TEST_VERIFIER_REJECT=1"})
    assert out.returncode == 3, out.stdout + out.stderr
    assert "verifier refused" in out.stderr
    assert "R" in out.stderr and "Traceback" not in out.stderr  # the log's register lines
    after = the_lab.status()
    assert after["digest"] == before["digest"] and after["build"] == before["build"]
    assert after["problems"] == []
    assert the_lab.udp(5) == 0 and the_lab.udp(5, dport=6666) == 5


def test_compile_error_keeps_the_old_policy(the_lab):
    the_lab.apply(DROP_UDP_5555)
    out = the_lab.netctl("apply", the_lab.policy(DROP_UDP_6666), "--dev", the_lab.dut_if,
                         check=False, env={"NETCTL_EXTRA_CFLAGS": "-DNETCTL_MAX_SHAPES=x"})
    assert out.returncode == 3, out.stdout + out.stderr
    assert "could not compile" in out.stderr
    assert the_lab.udp(5) == 0


def _overlapping_port_ranges() -> tuple[str, list[tuple[int, int]]]:
    """200 UDP rules with 600-port ranges overlapping each other: the compiler keys their
    slot by the destination port (and the programs are built for it)."""
    ranges = [(10000 + 37 * i, 10600 + 37 * i) for i in range(200)]
    lines = ["version: 1", "defaults: {ingress: accept, egress: accept}", "rules:"]
    lines += [f"  - {{name: r{i}, action: drop, proto: udp, dport: {lo}-{hi}}}"
              for i, (lo, hi) in enumerate(ranges)]
    return "\n".join(lines) + "\n", ranges


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("xdp_mode,hook", [("off", "tc"), ("native", "xdp-native")])
def test_a_slot_keyed_by_port_judges_real_traffic(the_lab, family, xdp_mode, hook):
    from netctl.abi import CFG_DIRECT_PORT
    from netctl.policy.compile import compile_policy
    from netctl.policy.load import load_policy_text

    text, ranges = _overlapping_port_ranges()
    assert compile_policy(load_policy_text(text)).config[CFG_DIRECT_PORT] == 1
    the_lab.apply(ACCEPT_ALL, "--xdp-mode", xdp_mode)
    result = the_lab.apply(text, "--xdp-mode", xdp_mode)
    assert result["interfaces"][the_lab.dut_if]["ingress"] == hook
    assert result["reload"] is True          # programs built with the port-keyed code
    for port in (10000, 12345, 17963, 10600 + 37 * 199):
        first = next(i for i, (lo, hi) in enumerate(ranges) if lo <= port <= hi)
        before = the_lab.rule(f"r{first}")["packets"]
        assert the_lab.udp(6, family, dport=port) == 0, port
        assert the_lab.rule(f"r{first}")["packets"] == before + 6, port
    for port in (9999, 10600 + 37 * 199 + 1, 5555):
        assert the_lab.udp(6, family, dport=port) == 6, port
    # back to a plan without such a slot: rebuilt without that code, traffic passes
    result = the_lab.apply(DROP_UDP_6666, "--xdp-mode", xdp_mode)
    assert result["reload"] is True
    assert the_lab.udp(6, family, dport=12345) == 6
    assert the_lab.udp(5, family, dport=6666) == 0


def test_show_prints_the_live_text_and_status_tells_when_the_file_changed(the_lab):
    text = DROP_UDP_5555 + "# the operator's comment\n"
    path = the_lab.policy(text, "live.yaml")
    the_lab.netctl("apply", path, "--dev", the_lab.dut_if)
    assert the_lab.netctl("show").stdout == text
    shown = json.loads(the_lab.netctl("show", "-o", "json").stdout)
    assert shown["text"] == text and shown["policy_file"]["state"] == "same"
    assert the_lab.status()["policy_file"]["state"] == "same"

    # the file edited after the apply: status says so, show still prints what is live
    the_lab.policy(DROP_UDP_6666, "live.yaml")
    assert the_lab.status()["policy_file"]["state"] == "changed"
    assert "the file has changed since it was applied" in the_lab.netctl("status").stdout
    assert the_lab.netctl("show").stdout == text

    # the dry run names the rule-level changes before the map-level counts
    dry = json.loads(the_lab.netctl("apply", path, "--dev", the_lab.dut_if, "--dry-run",
                                    "-o", "json").stdout)
    assert dry["rules"]["added"] == ["drop-6666"]
    assert dry["rules"]["removed"] == ["keep-dns", "drop-5555"]
    out = the_lab.netctl("apply", path, "--dev", the_lab.dut_if, "--dry-run").stdout
    assert "  + rule drop-6666" in out and "  - rule drop-5555" in out
    assert out.index("rule changes against the live policy") < out.index("map entries")
    assert the_lab.netctl("show").stdout == text     # a dry run changes nothing

    the_lab.netctl("apply", path, "--dev", the_lab.dut_if)
    assert the_lab.netctl("show").stdout == DROP_UDP_6666
    from netctl.paths import STATE_ROOT

    kept = list(Path(STATE_ROOT).glob(f"ns{the_lab.status()['cookie']}/applied-*.yaml"))
    assert len(kept) == 2          # the texts of the two generations, no more
    the_lab.netctl("detach", "--all")
    gone = the_lab.netctl("show", check=False)
    assert gone.returncode != 0 and "no netctl datapath" in gone.stderr
    assert "Traceback" not in gone.stderr
    assert not any(path.exists() for path in kept)


def test_an_apply_from_ssh_refuses_a_policy_that_would_cut_the_session(the_lab):
    from lab import DUT4, GEN4

    session = {"SSH_CONNECTION": f"{GEN4} 51022 {DUT4} 22"}    # the generator ssh'd in
    drop_all = the_lab.policy("version: 1\ndefaults: {ingress: drop, egress: accept}\n"
                              "rules: []\n", "drop.yaml")
    refused = the_lab.netctl("apply", drop_all, "--dev", the_lab.dut_if, check=False,
                             env=session)
    assert refused.returncode == 6, refused.stderr
    assert "the ingress default (drop) would drop this SSH session" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not the_lab.status()["applied"]          # nothing was changed
    dry = the_lab.netctl("apply", drop_all, "--dev", the_lab.dut_if, "--dry-run", env=session)
    assert "would drop this SSH session" in dry.stderr

    keeps = the_lab.policy("version: 1\ndefaults: {ingress: drop, egress: accept}\nrules:\n"
                           "  - {name: ssh, action: accept, proto: tcp, dport: 22}\n",
                           "keeps.yaml")
    the_lab.netctl("apply", keeps, "--dev", the_lab.dut_if, env=session)
    # a session whose route leaves through an interface the policy is not enforced on
    local = {"SSH_CONNECTION": "127.0.0.1 51022 127.0.0.1 22"}
    the_lab.netctl("apply", drop_all, "--dev", the_lab.dut_if, env=local)
    assert the_lab.udp(3) == 0
    # --force: the operator's call
    the_lab.netctl("apply", keeps, "--dev", the_lab.dut_if)
    the_lab.netctl("apply", drop_all, "--dev", the_lab.dut_if, "--force", env=session)
    assert the_lab.status()["policy"].endswith("drop.yaml")
