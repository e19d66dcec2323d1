"""Named sets with real traffic: a policy with a set file drops datagrams from a listed
source; `netctl set add` of another source drops it too without a rebuild (program ids
unchanged), `set del` lets one through; status and `set list` show the edits, another
`netctl apply` of the file (as it is, or refreshed) keeps them, `set reset` drops them,
and bad input changes nothing.  netctl runs as separate processes inside the DUT."""

from __future__ import annotations

import contextlib
import json
import random
import socket

import pytest
from lab import DUT4, DUT6, lab
from nsutil import inside, run

POLICY = """
version: 1
defaults: {ingress: accept, egress: accept}
sets:
  blocked: {file: lists/blocked.txt}
rules:
  - {name: keep-dns, action: accept, proto: udp, dport: 53}
  - {name: drop-blocked, action: drop, src: "@blocked", proto: udp}
"""

# Sources on the generator's side of the lab (its link's subnets).
SOURCES = {"a4": "10.123.0.11", "b4": "10.123.0.12", "c4": "10.123.0.13",
           "a6": "fd00:123::11", "b6": "fd00:123::12"}


def set_file(extra: str = "") -> str:
    """The blocklist: a and its IPv6 twin among 2,000 prefixes nobody sends from."""
    rng = random.Random(7)
    lines = ["# test blocklist", "10.123.0.11 ; a", "fd00:123::11/128"]
    lines += [f"172.{16 + n // 256}.{n % 256}.0/24" for n in rng.sample(range(4096), 1000)]
    lines += [f"2001:db8:{n:x}::/48" for n in rng.sample(range(1 << 16), 1000)]
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
def set_lab(tmp_path):
    with lab(tmp_path) as it:
        for name, address in SOURCES.items():
            plen = "/24" if name.endswith("4") else "/64"
            extra = () if name.endswith("4") else ("nodad",)
            run("ip", "addr", "add", address + plen, "dev", it.gen_if, *extra, ns=it.gen)
        (tmp_path / "lists").mkdir()
        (tmp_path / "lists" / "blocked.txt").write_text(set_file())
        it.policy(POLICY)
        yield it


def arrived(the_lab, source: str, count: int = 10, dport: int = 5555) -> int:
    """Datagrams from one of SOURCES to the DUT that arrive there."""
    address = SOURCES[source]
    af = socket.AF_INET6 if ":" in address else socket.AF_INET
    dst = DUT6 if af == socket.AF_INET6 else DUT4
    with inside(the_lab.dut):
        rx = socket.socket(af, socket.SOCK_DGRAM)
    with inside(the_lab.gen):
        tx = socket.socket(af, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((dst, dport))
        rx.settimeout(0.3)
        tx.bind((address, 0))
        for i in range(count):
            tx.sendto(f"set-{i}".encode(), (dst, dport))
        got = 0
        with contextlib.suppress(TimeoutError):
            while True:
                rx.recv(2048)
                got += 1
    return got


def netctl_json(the_lab, *args: str, check: bool = True) -> dict:
    return json.loads(the_lab.netctl(*args, "-o", "json", check=check).stdout)


def apply(the_lab) -> dict:
    return netctl_json(the_lab, "apply", str(the_lab.tmp / "policy.yaml"), "--dev",
                       the_lab.dut_if)


def program_ids(the_lab) -> dict:
    return the_lab.status()["interfaces"][0]["prog_ids"]


def blocked(the_lab) -> dict:
    return {s: arrived(the_lab, s) == 0 for s in SOURCES}


def test_a_set_blocks_and_live_edits_change_it_without_a_rebuild(set_lab):
    first = apply(set_lab)
    assert first["sets"]["blocked"]["v4"] == 1001 and first["sets"]["blocked"]["v6"] == 1001
    assert blocked(set_lab) == {"a4": True, "b4": False, "c4": False, "a6": True, "b6": False}
    assert arrived(set_lab, "a4", dport=53) == 10     # an earlier rule still decides first
    ids = program_ids(set_lab)

    out = set_lab.netctl("set", "add", "blocked", "10.123.0.12", "fd00:123::12").stdout
    assert "@blocked: added 2; 2,004 prefixes, live edits +2 -0" in out
    assert blocked(set_lab) == {"a4": True, "b4": True, "c4": False, "a6": True, "b6": True}
    assert program_ids(set_lab) == ids                  # maps written, nothing rebuilt
    set_lab.netctl("set", "del", "@blocked", "10.123.0.11")
    assert blocked(set_lab) == {"a4": False, "b4": True, "c4": False, "a6": True, "b6": True}
    assert program_ids(set_lab) == ids

    status = set_lab.status()
    [live] = status["sets"]
    assert (live["name"], live["v4"], live["add"], live["del"]) == (
        "blocked", 1001, ["10.123.0.12/32", "fd00:123::12/128"], ["10.123.0.11/32"])
    assert not status["problems"]
    text = set_lab.netctl("status").stdout
    assert "@blocked" in text and "+2 -1" in text
    listed = netctl_json(set_lab, "set", "list", "blocked")
    assert listed["added"] == ["10.123.0.12/32", "fd00:123::12/128"]
    assert listed["removed"] == ["10.123.0.11/32"] and listed["prefixes"] == 2003
    assert "10.123.0.12/32" in listed["elements"] and "10.123.0.11/32" not in listed["elements"]
    lines = set_lab.netctl("set", "list", "blocked").stdout.splitlines()
    assert lines[1:4] == ["# live edits in force: 2 added, 1 removed", "# + 10.123.0.12/32",
                          "# + fd00:123::12/128"]

    # The same file again: already live, edits in force; a refreshed file: applied, edits kept.
    again = set_lab.netctl("apply", str(set_lab.tmp / "policy.yaml"), "--dev",
                           set_lab.dut_if).stdout
    assert "already live" in again and "set @blocked: live edits in force (+2 -1;" in again
    (set_lab.tmp / "lists" / "blocked.txt").write_text(set_file("10.123.0.13\n"))
    refreshed = apply(set_lab)
    assert not refreshed["unchanged"] and refreshed["sets"]["blocked"]["add"] == [
        "10.123.0.12/32", "fd00:123::12/128"]
    assert blocked(set_lab) == {"a4": False, "b4": True, "c4": True, "a6": True, "b6": True}
    assert program_ids(set_lab) == ids

    counted = set_lab.rule("drop-blocked")["packets"]
    assert counted == 10 * (2 + 4 + 3 + 4)            # every blocked round, carried over

    out = set_lab.netctl("set", "reset", "blocked").stdout
    assert "@blocked: undid 3 edits" in out
    assert blocked(set_lab) == {"a4": True, "b4": False, "c4": True, "a6": True, "b6": False}
    assert set_lab.status()["sets"][0]["add"] == []


def test_bad_set_edits_change_nothing(set_lab):
    apply(set_lab)
    set_lab.netctl("set", "add", "blocked", "10.123.0.12")
    before = set_lab.status()
    for args, message in (
            (("add", "blocked", "10.123.0.13/24"), "has host bits set; the network is "
                                                  "10.123.0.0/24"),
            (("add", "blocked", "10.123.0.13", "not-an-address"), "'not-an-address' is not"),
            (("del", "blocked", "10.123.0.13"), "10.123.0.13/32 is not in set @blocked"),
            (("add", "blockd", "10.123.0.13"), "no set 'blockd'; did you mean 'blocked'?"),
            (("add", "blocked"), "usage: netctl set add NAME PREFIX...")):
        result = set_lab.netctl("set", *args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
    after = set_lab.status()
    assert after["generation"] == before["generation"] and after["sets"] == before["sets"]
    assert blocked(set_lab) == {"a4": True, "b4": True, "c4": False, "a6": True, "b6": False}


def test_set_verbs_without_a_datapath_or_sets(set_lab):
    result = set_lab.netctl("set", "add", "blocked", "10.123.0.13", check=False)
    assert result.returncode == 1 and "nothing is applied in this network namespace" in \
        result.stderr
    set_lab.apply("version: 1\nrules: []\n")
    result = set_lab.netctl("set", "list", check=False)
    assert result.returncode == 1 and "defines no sets" in result.stderr


def test_detach_removes_the_sets_state_too(set_lab):
    apply(set_lab)
    set_lab.netctl("set", "add", "blocked", "10.123.0.12")
    set_lab.netctl("detach", "--all")
    assert set_lab.leftovers() == []
