"""The state file (netctl.datapath.state): dataclasses to JSON and back, files in the format
netctl has always written (they must load, and be written back the same), files of older
netctl (keys missing), keys of a newer one kept, and another version refused."""

from __future__ import annotations

import copy
import json
import os

import pytest

from netctl import abi
from netctl.datapath import state as statefile
from netctl.datapath.state import (
    STATE_VERSION,
    Build,
    Carried,
    Generation,
    Interface,
    NextHop,
    Pending,
    Request,
    State,
)
from netctl.errors import NetctlError
from netctl.policy.plan import Limits

CONSTANTS = {"NETCTL_MAX_SHAPES": 8, "NETCTL_CFG_SIZE": 24, "NETCTL_CT_ENTRIES": 65536,
             "NETCTL_CT_UNCONFIRMED_ENTRIES": 8192, "NETCTL_NEXTHOPS_ENTRIES": 4096,
             "NETCTL_RULE_TABLE_ENTRIES": 1048576, "NETCTL_RULES_ENTRIES": 131072}
LIMITS = {"lpm_entries": 262144, "rule_table": 1048576, "rules": 131072,
          "port_intervals": 16384, "shapes": 8, "routes": 4096, "icmp_intervals": 4096}
CONTENTS = {"dport_interval": "h1:5:c28fd0e0ada31a1c", "rule_table": "h1:1c:538e6f891f8c136e",
            "rules": "h1:3:03fca90d792bd92b", "config": "h1:1:9c9c87e8dbd1abe9",
            "routes_v4": "h1:0:0000000000000000"}

# What `netctl apply` writes (netctl/datapath/control.py before the state was typed: the
# build dict, _generation_record + nexthops + the sets' snapshot token, _interface_record,
# _carried_before, _record_request), here after a rebuild then a rule change, of a policy
# with a set (edited live) and a route, on a veth (tc both ways) and a tun device (L3).
GEN_0 = {"policy": "/etc/netctl/router.yaml",
         "policy_sha256": "9b1c6f0d1e2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4",
         "digest": "4504ff5e1552df06db9c3e195a884fb8918ad0c35f66da9466916a7c1f7e9a11",
         "contents": CONTENTS, "applied_at": 1765090000.25,
         "rules": ["drop-bogons", "accept-web", "accept-ssh-admins", "drop-ssh-others"],
         "actions": [1, 0, 0, 1], "metrics": [1],
         "sets": {"blk": {"file": "/etc/netctl/blk.txt",
                          "sha256": "0f1e2d3c4b5a6978" * 4,
                          "v4": 3, "v6": 1, "base": 3, "add": ["203.0.113.9/32"], "del": []}},
         "nexthops": [{"dst": "10.2.0.0/16", "via": "10.1.0.2", "dev": "veth0", "ifindex": 7,
                       "smac": "02:00:00:00:00:01", "dmac": "02:00:00:00:00:02",
                       "cc": "cubic", "judge_egress": True}],
         "snapshot": "5f2a9c0e11d3b7a4"}
GEN_1 = dict(GEN_0, digest=None, contents=None, applied_at=1765089000.5,
             rules=["drop-bogons", "accept-web"], actions=[1, 0], metrics=[])
TODAY = {
    "build": {"id": "b1880f2a9c3d4e5f", "constants": CONSTANTS,
              "source": "7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e",
              "limits": LIMITS,
              "verifier": {"xdp": "processed 508123 insns (limit 1000000) "
                                  "max_states_per_insn 4 total_states 20511",
                           "tc_ingress": "processed 270311 insns (limit 1000000)"},
              "created": 1765089000.125},
    "generations": {"0": GEN_0, "1": GEN_1},
    "interfaces": {
        "veth0": {"name": "veth0", "ifindex": 7, "kind": "veth", "ingress": "tc",
                  "egress": "tc", "why": "xdp: auto, veth device: XDP would start from an "
                  "skb here, tc ingress is faster", "created_clsact": True,
                  "link": "ethernet"},
        "tun0": {"name": "tun0", "ifindex": 9, "kind": "tun", "ingress": "tc", "egress": None,
                 "why": "xdp: auto, tun device: XDP would start from an skb here, tc ingress "
                 "is faster", "created_clsact": False, "link": "l3"}},
    "carried": {"rules": {"accept-web": [120, 9840], "drop-bogons": [3, 180]},
                "stats": [[i, 60 * i] for i in range(abi.STAT_MAX)]},
    "netns": "dut", "epoch": 4,
    "request": {"devs": ["veth0", "tun0"], "xdp_mode": None},
    "version": 1}


def test_todays_file_loads_into_the_typed_state():
    state = State.from_json(copy.deepcopy(TODAY))
    assert state.build.id == "b1880f2a9c3d4e5f" and state.build.constants == CONSTANTS
    assert state.build.capacities() == Limits()
    assert set(state.generations) == {0, 1}
    live = state.generation(0)
    assert live.digest == GEN_0["digest"] and live.rules[1] == "accept-web"
    assert live.nexthops == [NextHop("10.2.0.0/16", "10.1.0.2", "veth0", 7,
                                     "02:00:00:00:00:01", "02:00:00:00:00:02", "cubic", True)]
    assert live.set_edits() == {"blk": {"add": ["203.0.113.9/32"], "del": []}}
    assert live.snapshot == "5f2a9c0e11d3b7a4"
    assert state.generation(1).digest is None and state.generation(1).contents is None
    assert state.interfaces["tun0"].link == "l3" and state.interfaces["tun0"].egress is None
    assert state.interfaces["veth0"].created_clsact is True
    assert state.carried.rules["accept-web"] == [120, 9840]
    assert state.request == Request(["veth0", "tun0"], None)
    assert state.epoch == 4 and state.netns == "dut" and state.pending is None
    assert state.extra == {} and live.extra == {}


def test_todays_file_is_written_back_as_it_was():
    """Same JSON on disk: an older netctl reads what this one writes."""
    assert State.from_json(copy.deepcopy(TODAY)).to_json() == TODAY
    assert json.loads(State.loads(json.dumps(TODAY)).dumps()) == TODAY


def test_a_pending_rebuild_of_a_first_apply_round_trips():
    """What the first apply of a namespace writes before it attaches: the pending record
    alone (no build: an older netctl tests "build" in state, so it must stay absent)."""
    first = {"pending": {"build": TODAY["build"], "generation": GEN_0,
                         "interfaces": {"veth0": dict(TODAY["interfaces"]["veth0"],
                                                      created_clsact=False)}},
             "version": 1}
    state = State.from_json(copy.deepcopy(first))
    assert state.build is None and state.pending.build.id == "b1880f2a9c3d4e5f"
    assert state.pending.interfaces["veth0"].created_clsact is False
    written = state.to_json()
    assert "build" not in written and written["pending"] == first["pending"]
    assert written["version"] == STATE_VERSION
    # Once the apply completes, "pending" is absent, never null (tests/netns/test_faults.py).
    done = State.from_json(copy.deepcopy(TODAY))
    done.pending = None
    assert "pending" not in done.to_json()


def test_dataclasses_round_trip_through_json():
    record = Generation(policy="<stdin>", policy_sha256=None, digest="d" * 64,
                        contents={"rules": "h1:1:00"}, applied_at=1.5, rules=["a", "b"],
                        actions=[0, 1], metrics=[0],
                        nexthops=[NextHop("2001:db8::/32", "fe80::1", "eth1", 3, None, None)])
    state = State(
        build=Build("b1", {"NETCTL_CT_ENTRIES": 16}, source="s", limits=LIMITS,
                    verifier={"xdp": "ok"}, created=2.0),
        generations={0: record, 1: record.unvouched()},
        interfaces={"eth1": Interface("eth1", 3, None, "xdp-native", "tc", "xdp: native",
                                      True, "ethernet")},
        carried=Carried({"a": [1, 2]}, [[0, 0]] * abi.STAT_MAX), netns=None, epoch=7,
        request=Request(None, "generic"),
        pending=Pending(Build("b2", {}), record, {}))
    again = State.loads(state.dumps())
    assert again == state
    assert again.generation(1).digest is None and again.generation(0).digest == "d" * 64


def test_an_older_file_loads_with_the_defaults_the_code_assumed():
    """Before link layers, capacities, fingerprints, epochs, requests and routes were
    recorded: Ethernet, default capacities, taken on trust, epoch 0, no request."""
    old = copy.deepcopy(TODAY)
    del old["build"]["limits"], old["epoch"], old["request"]
    for rec in old["generations"].values():
        del rec["contents"], rec["nexthops"], rec["sets"], rec["snapshot"]
    for rec in old["interfaces"].values():
        del rec["link"]
    state = State.from_json(old)
    assert state.build.limits is None and state.build.capacities() == Limits()
    assert state.epoch == 0 and state.request is None
    assert state.generation(0).contents is None and state.generation(0).nexthops == []
    assert state.generation(0).sets is None and state.generation(0).set_edits() == {}
    assert state.interfaces["tun0"].link is None
    written = state.to_json()
    assert "limits" not in written["build"] and "link" not in written["interfaces"]["tun0"]
    assert "sets" not in written["generations"]["0"]


def test_keys_of_a_newer_netctl_are_kept():
    newer = copy.deepcopy(TODAY)
    newer["shiny"] = {"x": 1}
    newer["build"]["arch"] = "x86_64"
    newer["generations"]["0"]["hooks_hash"] = "abc"
    newer["generations"]["0"]["nexthops"][0]["weight"] = 3
    newer["interfaces"]["veth0"]["queues"] = 4
    newer["carried"]["events"] = [1, 2]
    assert State.from_json(copy.deepcopy(newer)).to_json() == newer


@pytest.mark.parametrize("version", [2, 17])
def test_a_newer_version_is_refused(tmp_path, version):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(dict(TODAY, version=version)))
    with pytest.raises(NetctlError) as exc:
        statefile.read(path)
    message = str(exc.value)
    assert str(path) in message and f"state version {version}" in message
    assert "newer netctl" in message and "reads version 1 only" in message


@pytest.mark.parametrize("version", [None, 0, "1", True, 1.0])
def test_an_unknown_version_is_refused(version):
    data = dict(TODAY)
    if version is None:
        del data["version"]
    else:
        data["version"] = version
    with pytest.raises(NetctlError, match="unknown writer"):
        State.from_json(data)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"version": 1, "build": {}}',
                                  '{"version": 1, "generations": {"x": {}}}',
                                  '{"version": 1, "interfaces": {"eth0": {"ifindex": 1}}}'])
def test_a_corrupt_file_is_refused_with_the_way_out(tmp_path, text):
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(NetctlError, match="corrupt.*netctl detach --all"):
        statefile.read(path)


def test_write_is_atomic_and_root_only(tmp_path):
    path = tmp_path / "ns1" / "state.json"
    assert statefile.read(path) is None
    state = State.from_json(copy.deepcopy(TODAY))
    statefile.write(path, state)
    assert json.loads(path.read_text()) == TODAY
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]
    assert statefile.read(path) == state


def test_carried_counters_default_to_zero():
    carried = Carried.from_json(None)
    assert carried.rules == {} and carried.all_stats() == [[0, 0]] * abi.STAT_MAX
    copied = carried.copy()
    copied.rules["a"] = [1, 1]
    assert carried.rules == {}


def test_generation_record_of_an_apply_has_todays_keys(tmp_path, monkeypatch):
    """The record an apply makes now carries the keys the old one did, nothing renamed."""
    from netctl.datapath.transaction import generation_record
    from netctl.policy.compile import compile_policy
    from netctl.policy.load import load_policy_text

    text = ("version: 1\ninterfaces: [{name: eth0}]\ndefaults: {ingress: drop}\n"
            "rules:\n  - {name: web, action: accept, proto: tcp, dport: 80, metrics: true}\n")
    (tmp_path / "p.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    policy = load_policy_text(text, "p.yaml")
    record = generation_record(policy, compile_policy(policy)).to_json()
    assert list(record) == ["policy", "policy_sha256", "digest", "contents", "applied_at",
                            "rules", "actions", "metrics", "nexthops"]
    assert record["rules"] == ["web"] and record["actions"] == [0] and record["metrics"] == [0]
    assert record["policy"] == str(tmp_path / "p.yaml") and len(record["policy_sha256"]) == 64
