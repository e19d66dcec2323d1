"""The plan <-> map-bytes layer that `netctl apply` uses (netctl/datapath/maps.py), without
root or bcc: `MemoryMap` has the kernel's semantics (arrays hold zeros everywhere and refuse
deletes, hash and LPM maps refuse a new key when full).

Checked: a plan written into a generation reads back as exactly that plan; a write into one
generation never touches a byte of the other; a plan written over another writes exactly
``diff(old, new).entries()`` entries (few for a one-rule edit); array entries that leave a
plan become zeros; a full map is a `MapFullError` naming the map.  See
docs/classification.md, "Atomic updates".
"""

from __future__ import annotations

import errno
import os
from array import array
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import make_policy, policies

from netctl import abi
from netctl.datapath.instance import contents_plan
from netctl.datapath.maps import (
    MemoryMap,
    contents_digests,
    encode,
    map_kind,
    memory_maps,
    read_active,
    read_generation,
    set_active,
    write_diff,
    write_marks,
)
from netctl.errors import MapFullError
from netctl.kernel.bpfsys import BpfError
from netctl.policy.compile import compile_policy
from netctl.policy.load import load_policy, load_policy_text
from netctl.policy.model import Policy, PortRange
from netctl.policy.plan import ARRAY_MAPS, MAP_NAMES, Limits, MapPlan, diff

POLICIES = Path(__file__).resolve().parents[2] / "policies"
LIMITS = Limits(rules=64, port_intervals=64, lpm_entries=8192, rule_table=16384)


# ---- helpers -------------------------------------------------------------------------------

def compiled(policy, limits: Limits = LIMITS) -> MapPlan:
    return compile_policy(policy, limits)


def _is_zero(value) -> bool:
    return not any(value) if isinstance(value, tuple) else value == 0


def canonical(plan: MapPlan) -> dict[str, dict]:
    """What ``read_generation`` must return for ``plan``: every entry, except the zero
    entries of arrays (an array cannot tell a zero entry from an absent one).  Hash values
    0 (rule index 0) stay."""
    return {name: {k: v for k, v in contents.items()
                   if not (name in ARRAY_MAPS and _is_zero(v))}
            for name, contents in plan.maps().items()}


def write_plan(maps, gen: int, new: MapPlan, old=None):
    """Write ``diff(old, new)`` into generation ``gen``, every map (as the loader does)."""
    change = diff(old, new)
    for name, map_change in change.maps.items():
        write_diff(maps, name, gen, map_change, new.constants())
    return change


def rewrite(maps, gen: int, new: MapPlan):
    """Make ``gen`` hold ``new`` by diffing against what the maps hold (netctl apply)."""
    held = contents_plan(read_generation(maps, gen, new.constants()), new)
    return write_plan(maps, gen, new, held)


def snapshot(maps) -> dict[str, dict[bytes, bytes]]:
    return {name: dict(maps[name].data) for name in MAP_NAMES}


def gen_keys(name: str, gen: int, plans, constants: dict[str, int]) -> set[bytes]:
    """The raw keys of map ``name`` that holding any of ``plans`` in ``gen`` uses."""
    return {encode(name, gen, k, v, constants)[0] for p in plans for k, v in p.maps()[name].items()}


def assert_only_gen_written(before, maps, gen: int, plans, other_plans,
                            constants: dict[str, int]) -> None:
    """Since ``before``, only keys of generation ``gen`` changed (any value, added or
    removed): array indexes in ``gen``'s stride, hash and trie keys that ``plans`` encode
    to in ``gen``, none of which is a key ``other_plans`` use in the other generation.
    Whatever the other generation holds is therefore byte for byte the same."""
    for name in MAP_NAMES:
        old, new = before[name], maps[name].data
        touched = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        if name in ARRAY_MAPS:
            stride = abi.array_stride(name, constants)
            outside = [k for k in touched
                       if not gen * stride <= int.from_bytes(k, "little") < (gen + 1) * stride]
            assert not outside, (name, outside[:5])
        else:
            mine = gen_keys(name, gen, plans, constants)
            assert touched <= mine, name
            assert not mine & gen_keys(name, 1 - gen, other_plans, constants), name


class CountingMap(MemoryMap):
    """A MemoryMap that counts single-entry writes (batches go through ``update``)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.updates = 0
        self.deletes = 0

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self.updates += 1
        super().update(key, value, flags)

    def delete(self, key: bytes, missing_ok: bool = True) -> bool:
        self.deletes += 1
        return super().delete(key, missing_ok)


def counting_maps(constants: dict[str, int]) -> dict[str, CountingMap]:
    return {name: CountingMap(m.kind, m.key_size, m.value_size, m.max_entries)
            for name, m in memory_maps(constants).items()}


def writes(maps) -> int:
    return sum(m.updates + m.deletes for m in maps.values())


def reset_counts(maps) -> None:
    for m in maps.values():
        m.updates = m.deletes = 0


class FastArrayMap(MemoryMap):
    """MemoryMap with the same contents and errors, faster where the port arrays (262144
    entries) make it slow: ``read_array`` costs O(entries written) instead of O(capacity),
    ``update_batch`` on an array stores a whole batch at once (test_fast_map_agrees)."""

    def read_array(self, start: int = 0, count: int | None = None) -> bytes:
        stop = self.max_entries if count is None else start + count
        size = self.value_size
        out = bytearray(size * (stop - start))
        for key, value in self.data.items():
            index = int.from_bytes(key, "little")
            if start <= index < stop:
                out[(index - start) * size:(index - start + 1) * size] = value
        return bytes(out)

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        ks, vs = self.key_size, self.value_size
        if self.kind != "array" or ks != 4:
            return super().update_batch(keys, values, count)
        assert len(keys) == ks * count and len(values) == vs * count
        indexes = array("I", keys)
        good = count
        for i, index in enumerate(indexes):
            if index >= self.max_entries:
                good = i
                break
        self.data.update(zip([keys[i * ks:(i + 1) * ks] for i in range(good)],
                             [values[i * vs:(i + 1) * vs] for i in range(good)], strict=True))
        if good < count:
            raise BpfError(errno.E2BIG, f"index {indexes[good]} out of range")


def fast_maps(constants: dict[str, int]) -> dict[str, MemoryMap]:
    return {name: FastArrayMap(m.kind, m.key_size, m.value_size, m.max_entries)
            for name, m in memory_maps(constants).items()}


def blocklist_style(n: int = 300, changed: int | None = None) -> MapPlan:
    """``n`` one-prefix drop rules (a few with ports, some egress); rule ``changed`` gets
    another prefix."""
    specs = []
    for i in range(n):
        net = f"10.{i // 200}.{i % 200}.0/24" if i != changed else "172.16.9.0/24"
        if i % 50 == 7:
            specs.append({"src": net, "proto": 6, "dport": [25, 465]})
        elif i % 3 == 2:
            specs.append({"direction": "egress", "dst": net})
        else:
            specs.append({"src": net})
    return compiled(make_policy(*specs), Limits(rules=512, port_intervals=64,
                                                lpm_entries=8192, rule_table=16384))


@pytest.fixture(scope="module")
def real_plans() -> dict[str, MapPlan]:
    out = {name: compiled(load_policy(POLICIES / f"{name}.yaml"))
           for name in ("web-server", "dual-stack", "blocklist", "router")}
    out["small"] = compiled(make_policy(
        {"src": "10.0.0.0/8", "dport": 22, "action": "accept"},
        {"src": ["2001:db8::/32", "192.0.2.0/24"], "proto": 1, "icmp_type": [(4, 8)]},
        {"direction": "egress", "dst": "198.51.100.7/32", "sport": "1000-2000", "log": True},
        {"action": "accept"},
        # src + dst: one address is looked up as a class (the src_*/dst_* tries)
        {"src": ["10.0.0.0/8", "10.0.0.0/16", "2001:db8::/32", "2001:db8:1::/48"],
         "dst": ["192.0.2.0/24", "192.0.3.0/24", "192.0.4.0/25", "192.0.5.0/24",
                 "2001:db8:5::/48", "2001:db8:6::/48", "2001:db8:7::/64", "2001:db8:8::/48"]},
        {"src": ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/24", "10.4.0.0/24",
                 "2001:db8:a::/48", "2001:db8:b::/48", "2001:db8:c::/64", "2001:db8:d::/64"],
         "dst": ["198.51.100.0/24", "198.51.100.0/25", "2001:db8:ff::/48", "2001:db8:fe::/48"],
         "proto": 47, "action": "accept", "log": True},
        ingress="drop", allow_ndp=False))
    return out


# ---- 1. round trip -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["web-server", "dual-stack", "blocklist", "small"])
@pytest.mark.parametrize("gen", [0, 1])
def test_round_trip(real_plans, name, gen):
    plan = real_plans[name]
    constants = plan.constants()
    maps = memory_maps(constants)
    write_plan(maps, gen, plan)
    assert read_generation(maps, gen, constants) == canonical(plan)
    assert read_generation(maps, 1 - gen, constants) == {n: {} for n in MAP_NAMES}
    assert read_active(maps) == 0   # nothing flipped
    # What status compares: the plan's fingerprints and those of what was read back.
    assert contents_digests(read_generation(maps, gen, constants)) == \
        contents_digests(plan.maps())


def test_contents_digests_name_the_map_changed_by_hand(real_plans):
    plan = real_plans["web-server"]
    constants = plan.constants()
    maps = memory_maps(constants)
    write_plan(maps, 0, plan)
    want = contents_digests(plan.maps())
    words = list(read_generation(maps, 0, constants)["config"][0])
    words[0] ^= 1
    maps["config"].update(abi.pack_u32(0), abi.pack_config(tuple(words)))
    have = contents_digests(read_generation(maps, 0, constants))
    assert [name for name in MAP_NAMES if have[name] != want[name]] == ["config"]


def test_round_trip_exercises_the_edge_values(real_plans):
    """The plans above do contain what a careless decoder would lose: rule_table values 0
    (rule index 0), all-zero array entries the plan lists (accept rules without log), and
    entries in every map kind."""
    plans = real_plans.values()
    assert any(0 in p.maps()["rule_table"].values() for p in plans)
    assert any((0, 0) in p.rules for p in plans)
    for name in MAP_NAMES:
        assert any(p.maps()[name] for p in plans), name
    plan = real_plans["web-server"]
    maps = memory_maps(plan.constants())
    write_plan(maps, 1, plan)
    back = read_generation(maps, 1, plan.constants())
    zero_rules = [i for i, r in enumerate(plan.rules) if r == (0, 0)]
    assert zero_rules and not set(zero_rules) & set(back["rules"])
    assert back["rule_table"] == dict(plan.maps()["rule_table"])


def test_last_array_index_of_each_generation_stays_apart():
    """A plan that fills ``rules`` to its capacity: gen 0's last index and gen 1's first
    are neighbours in the doubled array, and neither spills into the other."""
    plan = compiled(make_policy(*({"src": f"10.0.{i}.0/24", "log": True} for i in range(8))),
                    Limits(rules=8, port_intervals=4, lpm_entries=64, rule_table=64))
    other = compiled(make_policy(*({"src": f"10.1.{i}.0/24"} for i in range(8))),
                     Limits(rules=8, port_intervals=4, lpm_entries=64, rule_table=64))
    assert len(plan.rules) == 8 == plan.constants()["NETCTL_RULES_ENTRIES"]
    constants = plan.constants()
    maps = memory_maps(constants)
    write_plan(maps, 0, plan)
    write_plan(maps, 1, other)
    assert read_generation(maps, 0, constants) == canonical(plan)
    assert read_generation(maps, 1, constants) == canonical(other)
    assert maps["rules"].max_entries == 16
    assert abi.pack_u32(15) in maps["rules"].data and abi.pack_u32(7) in maps["rules"].data


@pytest.mark.parametrize("kind", ["array", "hash"])
def test_fast_map_agrees(kind):
    """FastArrayMap (used by the property test) behaves as MemoryMap."""
    slow, fast = MemoryMap(kind, 4, 8, 40), FastArrayMap(kind, 4, 8, 40)
    for i, v in ((0, 1), (3, 7), (39, 2), (20, 0)):
        for m in (slow, fast):
            m.update(abi.pack_u32(i), v.to_bytes(8, "little"))
    batch = [(5, 9), (3, 8), (44 if kind == "array" else 6, 1), (7, 7)]
    keys = b"".join(abi.pack_u32(i) for i, _ in batch)
    values = b"".join(v.to_bytes(8, "little") for _, v in batch)
    for m in (slow, fast):
        if kind == "array":
            with pytest.raises(BpfError) as info:
                m.update_batch(keys, values, len(batch))
            assert info.value.errno == errno.E2BIG
        else:
            m.update_batch(keys, values, len(batch))
    assert fast.data == slow.data
    assert len(slow.data) == (5 if kind == "array" else 7)
    if kind == "array":
        for start, count in ((0, None), (0, 20), (20, 20), (3, 1), (39, 1)):
            assert fast.read_array(start, count) == slow.read_array(start, count)


# ---- 2. generations are isolated -----------------------------------------------------------

@pytest.mark.parametrize("gen", [0, 1])
def test_writing_one_generation_leaves_the_other_alone(real_plans, gen):
    a, b, c = real_plans["dual-stack"], real_plans["web-server"], real_plans["small"]
    constants = a.constants()
    assert b.constants() == constants == c.constants()
    maps = memory_maps(constants)
    write_plan(maps, 1 - gen, a)
    set_active(maps, 1 - gen)
    other = snapshot(maps)
    assert sum(map(len, other.values())) == diff(None, a).entries()

    before = snapshot(maps)
    write_plan(maps, gen, b)
    assert_only_gen_written(before, maps, gen, [b], [a], constants)
    assert read_generation(maps, 1 - gen, constants) == canonical(a)
    assert read_generation(maps, gen, constants) == canonical(b)
    assert read_active(maps) == 1 - gen        # writing never flips

    # and over it again (adds, changes and removes), still nothing on the other side
    before = snapshot(maps)
    rewrite(maps, gen, c)
    assert_only_gen_written(before, maps, gen, [b, c], [a], constants)
    assert read_generation(maps, gen, constants) == canonical(c)
    assert read_generation(maps, 1 - gen, constants) == canonical(a)
    # every raw entry generation 1 - gen had is still there, unchanged
    for name in MAP_NAMES:
        assert other[name].items() <= maps[name].data.items(), name


def test_active_flips_one_word(real_plans):
    plan = real_plans["web-server"]
    constants = plan.constants()
    maps = memory_maps(constants)
    write_plan(maps, 0, plan)
    snapshot = {n: dict(maps[n].data) for n in MAP_NAMES}
    assert read_active(maps) == 0              # a fresh map reads as generation 0
    for gen in (1, 0, 1):
        set_active(maps, gen)
        assert read_active(maps) == gen
        assert maps["active"].data == {abi.pack_u32(0): abi.pack_u32(gen)}
    assert {n: maps[n].data for n in MAP_NAMES} == snapshot


# ---- 3. minimal diffs ----------------------------------------------------------------------

@pytest.mark.parametrize("a_name,b_name", [("web-server", "dual-stack"),
                                           ("dual-stack", "small"),
                                           ("small", "web-server"),
                                           ("web-server", "web-server")])
def test_rewrite_writes_exactly_the_diff(real_plans, a_name, b_name):
    a, b = real_plans[a_name], real_plans[b_name]
    constants = a.constants()
    maps = counting_maps(constants)
    write_plan(maps, 1, a)
    assert writes(maps) == diff(None, a).entries()
    reset_counts(maps)

    change = rewrite(maps, 1, b)
    assert change.entries() == diff(a, b).entries()
    assert writes(maps) == diff(a, b).entries()
    assert read_generation(maps, 1, constants) == canonical(b)
    assert all(maps[n].deletes == 0 for n in ARRAY_MAPS)
    if a_name == b_name:
        assert writes(maps) == 0


def test_one_rule_edit_of_a_big_policy_writes_a_few_entries():
    a, b = blocklist_style(), blocklist_style(changed=123)
    constants = a.constants()
    assert b.constants() == constants
    total = sum(a.counts().values())
    assert total >= 600
    maps = counting_maps(constants)
    write_plan(maps, 0, a)
    reset_counts(maps)

    rewrite(maps, 0, b)
    assert 0 < writes(maps) == diff(a, b).entries() < 30
    assert read_generation(maps, 0, constants) == canonical(b)


def _edited_blocklist(old: str, new: str) -> MapPlan:
    text = (POLICIES / "blocklist.yaml").read_text()
    assert text.count(old) == 1
    return compiled(load_policy_text(text.replace(old, new), "blocklist-edited.yaml"))


def test_one_action_changed_in_the_real_blocklist(real_plans):
    a = real_plans["blocklist"]
    b = _edited_blocklist("- name: bl-botnet   # known botnet members\n    action: drop",
                          "- name: bl-botnet   # known botnet members\n    action: accept")
    constants = a.constants()
    maps = counting_maps(constants)
    write_plan(maps, 1, a)
    reset_counts(maps)

    rewrite(maps, 1, b)
    assert writes(maps) == maps["rules"].updates == diff(a, b).entries() == 1
    assert read_generation(maps, 1, constants) == canonical(b)


def test_one_prefix_removed_from_the_real_blocklist(real_plans):
    """Exactly the diff is written, whatever its size (the compiler decides how many
    entries one prefix renumbers), and the other rules' maps are not touched."""
    a = real_plans["blocklist"]
    b = _edited_blocklist("      - 10.0.52.128/25\n", "")
    constants = a.constants()
    maps = counting_maps(constants)
    write_plan(maps, 1, a)
    reset_counts(maps)

    rewrite(maps, 1, b)
    assert 0 < writes(maps) == diff(a, b).entries()
    for name in ("dst_v4", "dst_v6", "dport_interval", "dport_classes", "rules", "config"):
        assert maps[name].updates == maps[name].deletes == 0, name
    back = read_generation(maps, 1, constants)
    assert back == canonical(b)
    gone = (25, int.from_bytes(bytes([10, 0, 52, 128]), "big"))   # keys end (plen, network)
    assert any(k[-2:] == gone for n in ("src_v4", "rule_table") for k in canonical(a)[n])
    assert not any(k[-2:] == gone for n in ("src_v4", "rule_table") for k in back[n])


# ---- 4. arrays: removed entries become zeros -----------------------------------------------

def test_removed_array_entries_are_written_as_zeros():
    a = compiled(make_policy({"dport": 22, "log": True}, {"proto": 1, "icmp_type": [(4, 8)]},
                             {"sport": 53, "action": "drop"}, ingress="drop"))
    b = compiled(make_policy({"dport": 80}, ingress="accept", allow_ndp=False))
    constants = a.constants()
    maps = counting_maps(constants)
    write_plan(maps, 1, a)
    reset_counts(maps)

    change = rewrite(maps, 1, b)
    removed = {n: d.removed for n, d in change.maps.items() if n in ARRAY_MAPS and d.removed}
    # rules 1, 2 and the ICMP and source-port lookups leave the plan
    assert {"rules", "icmp_interval", "sport_interval"} <= set(removed)
    assert all(maps[n].deletes == 0 for n in ARRAY_MAPS)
    for name, entries in removed.items():
        for key in entries:
            raw_key = encode(name, 1, key, entries[key], constants)[0]
            assert maps[name].data[raw_key] == bytes(maps[name].value_size), (name, key)
            assert maps[name].lookup(raw_key) == bytes(maps[name].value_size)
    back = read_generation(maps, 1, constants)
    assert back == canonical(b)
    assert 22 not in back["dport_interval"] and 80 in back["dport_interval"]


def test_wide_port_ranges():
    """Tens of thousands of port-array entries (more than one 8192-entry batch) in, then
    out again as zeros."""
    a = compiled(make_policy({"dport": "1024-65535", "proto": 6},
                             {"sport": ["0-40000", 50000], "proto": 17, "action": "accept"}))
    b = compiled(make_policy({"dport": ["1024-1030", 65535], "proto": 6}))
    constants = a.constants()
    maps = counting_maps(constants)
    write_plan(maps, 0, a)
    assert len(a.maps()["dport_interval"]) >= 64512 and len(a.maps()["sport_interval"]) > 40000
    assert read_generation(maps, 0, constants) == canonical(a)
    reset_counts(maps)

    rewrite(maps, 0, b)
    assert writes(maps) == diff(a, b).entries() > 64512
    back = read_generation(maps, 0, constants)
    assert back == canonical(b)
    assert back["sport_interval"] == {}
    assert set(back["dport_interval"]) == {*range(1024, 1031), 65535}
    stride = abi.array_stride("sport_interval", constants)
    assert maps["sport_interval"].read_array(0, stride) == bytes(4 * stride)
    assert read_generation(maps, 1, constants) == {n: {} for n in MAP_NAMES}


def test_memory_array_refuses_delete():
    """The guarantee test 4 leans on: a delete on an array would fail loudly."""
    m = MemoryMap("array", 4, 4, 2)
    with pytest.raises(BpfError) as info:
        m.delete(abi.pack_u32(0))
    assert info.value.errno == errno.EINVAL


# ---- 5. capacity ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rule_table", "src_v4", "dst_v6"])
def test_full_map_is_map_full_error_naming_the_map(real_plans, name):
    plan = real_plans["small"]
    constants = plan.constants()
    need = len(plan.maps()[name])
    assert need >= 2
    maps = memory_maps(constants)
    small = maps[name]
    maps[name] = MemoryMap(small.kind, small.key_size, small.value_size, need - 1)
    assert map_kind(name) == maps[name].kind != "array"
    change = diff(None, plan)
    with pytest.raises(MapFullError) as info:
        write_diff(maps, name, 0, change.maps[name], constants)
    assert str(info.value).startswith(f"{name}: ")
    assert info.value.exit_code == 5

    # exactly enough room is fine
    maps[name] = MemoryMap(small.kind, small.key_size, small.value_size, need)
    write_diff(maps, name, 0, change.maps[name], constants)
    assert len(maps[name].data) == need


def test_array_index_out_of_range_is_map_full_error_naming_the_map(real_plans):
    plan = real_plans["web-server"]
    constants = plan.constants()
    maps = memory_maps(constants)
    rules = maps["rules"]
    maps["rules"] = MemoryMap("array", rules.key_size, rules.value_size,
                              constants["NETCTL_RULES_ENTRIES"])   # room for gen 0 only
    write_diff(maps, "rules", 0, diff(None, plan).maps["rules"], constants)
    with pytest.raises(MapFullError, match=r"^rules: "):
        write_diff(maps, "rules", 1, diff(None, plan).maps["rules"], constants)


def _at_capacity(variant: str) -> tuple[MapPlan, MapPlan]:
    """Two plans that fill ``src_v4`` and ``rule_table`` to their capacity, ``b`` with one
    source prefix replaced (so both maps lose some keys and gain as many)."""
    def policy(third: str):
        srcs = ["10.0.0.0/24", "10.1.0.0/24", third]
        return make_policy(*({"src": srcs[i % 3], "dst": f"192.0.{i}.0/24"} for i in range(12)))
    a, b = compile_policy(policy("10.2.0.0/24")), compile_policy(policy(variant))
    limits = Limits(rules=12, port_intervals=4,
                    lpm_entries=max(len(p.maps()["src_v4"]) for p in (a, b)),
                    rule_table=max(len(p.maps()["rule_table"]) for p in (a, b)) + 1)
    return compiled(policy("10.2.0.0/24"), limits), compiled(policy(variant), limits)


def test_rewrite_at_capacity_removes_first():
    """Both generations full (the maps hold 2x Limits): the inactive one is rewritten with
    as many keys leaving as arriving.  Adding before removing would need 2x + the added
    keys for a moment and fail; removed-first (the generation is inactive) fits."""
    a, b = _at_capacity("10.3.0.0/24")
    constants = a.constants()
    maps = memory_maps(constants)
    for gen in (0, 1):              # active, and inactive holding what it held before
        write_plan(maps, gen, a)
        write_marks(maps, gen)
    set_active(maps, 0)
    change = diff(a, b)
    # the compiler accepts them: a generation of the rule trie has one entry for its mark
    for name, limit in (("src_v4", a.limits.lpm_entries),
                        ("rule_table", a.limits.rule_table - 1)):
        assert len(a.maps()[name]) == len(b.maps()[name]) == limit
    for name, limit in (("src_v4", a.limits.lpm_entries), ("rule_table", a.limits.rule_table)):
        assert len(maps[name].data) == maps[name].max_entries == 2 * limit   # full
        d = change.maps[name]
        assert d.added and len(d.added) == len(d.removed), name
    rewrite(maps, 1, b)
    assert read_generation(maps, 1, constants) == canonical(b)
    assert read_generation(maps, 0, constants) == canonical(a)
    for name in ("src_v4", "rule_table"):
        assert len(maps[name].data) == maps[name].max_entries


def test_rewrite_past_capacity_is_map_full_error():
    """The other side of the same coin: a plan that does not fit next to the other
    generation is refused, naming the map, not silently truncated."""
    a, _ = _at_capacity("10.3.0.0/24")
    bigger = compile_policy(make_policy(*({"src": f"10.{i}.0.0/24"} for i in range(20))))
    need = len(bigger.maps()["rule_table"])
    assert need > a.limits.rule_table
    constants = a.constants()
    maps = memory_maps(constants)
    write_plan(maps, 0, a)
    with pytest.raises(MapFullError, match=r"^rule_table: "):
        write_diff(maps, "rule_table", 1, diff(None, bigger).maps["rule_table"], constants)
    assert read_generation(maps, 0, constants) == canonical(a)


# ---- 6. property: any A then any B ---------------------------------------------------------

@pytest.fixture(scope="module")
def bystander() -> MapPlan:
    """What the other generation holds during the property test (differs from A and B)."""
    return compiled(load_policy(POLICIES / "dual-stack.yaml"))


NARROW = 255


def _narrow(ranges):
    if ranges is None:
        return None
    return tuple(dict.fromkeys(PortRange(r.lo, min(r.hi, r.lo + NARROW)) for r in ranges))


def narrow_ports(policy: Policy) -> Policy:
    """``policy`` with every port range cut to at most 256 ports.  A wide range costs
    ~0.1 s per example (60k port-array entries to encode, write and read) and exercises
    nothing the narrow ones do not (test_wide_port_ranges has them); the edges stay
    (lo, and hi 65535 from lo >= 65280)."""
    return replace(policy, rules=tuple(replace(r, sport=_narrow(r.sport), dport=_narrow(r.dport))
                                       for r in policy.rules))


# Each example reads a generation twice, ~25 ms each (read_generation scans the 2 x 65536
# entries of both port arrays): `make test` runs 100 examples (the same ones every run),
# `make fuzz` (explore profile) 300 fresh ones.
EXAMPLES = 300 if os.environ.get("NETCTL_HYPOTHESIS") == "explore" else 100


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=policies(max_rules=6).map(narrow_ports), b=policies(max_rules=6).map(narrow_ports),
       gen=st.integers(0, 1))
def test_any_plan_over_any_plan(bystander, a, b, gen):
    plan_a, plan_b = compiled(a), compiled(b)
    constants = plan_b.constants()
    assert plan_a.constants() == constants == bystander.constants()
    maps = fast_maps(constants)
    write_plan(maps, 1 - gen, bystander)
    set_active(maps, 1 - gen)
    before = snapshot(maps)

    write_plan(maps, gen, plan_a)
    held = read_generation(maps, gen, constants)
    assert held == canonical(plan_a)
    assert contents_digests(held) == contents_digests(plan_a.maps())
    change = diff(contents_plan(held, plan_b), plan_b)
    assert change.entries() == diff(plan_a, plan_b).entries()
    for name, map_change in change.maps.items():
        write_diff(maps, name, gen, map_change, constants)

    assert read_generation(maps, gen, constants) == canonical(plan_b)
    assert contents_digests(read_generation(maps, gen, constants)) == \
        contents_digests(plan_b.maps())
    assert_only_gen_written(before, maps, gen, [plan_a, plan_b], [bystander], constants)
    assert read_active(maps) == 1 - gen


@pytest.mark.parametrize("name", ["web-server", "dual-stack", "blocklist"])
def test_bulk_unpack_agrees_with_one_by_one(real_plans, name):
    """read_generation unpacks a whole batch at once (struct.iter_unpack); each entry comes
    out as the single-entry unpacker gives it, and the other generation's as None."""
    plan = real_plans[name]
    for map_name, d in abi.PLAN_MAPS.items():
        if d.kind == "array":
            continue
        entries = list(plan.maps()[map_name].items())
        for gen in (0, 1):
            keys = b"".join(d.key.pack(gen, k) for k, _ in entries)
            values = b"".join(d.value.pack(v) for _, v in entries)
            assert d.key.unpack_many(keys, gen) == [d.key.unpack(d.key.pack(gen, k))[1]
                                                    for k, _ in entries]
            assert d.key.unpack_many(keys, 1 - gen) == [None] * len(entries)
            assert d.value.unpack_many(values) == [v for _, v in entries], map_name


# ---- 7. a generation read from its mark ----------------------------------------------------

def test_memory_trie_lists_keys_in_post_order():
    """MemoryMap lists an LPM trie's keys as the kernel does (tests/bpf checks the kernel
    against it): a key after the longer ones it holds, 0 before 1 at the first difference."""
    m = MemoryMap("lpm_trie", 5, 1, 16)
    order = [(8, 0x00), (1, 0x00), (8, 0x80), (2, 0x80), (8, 0xC0), (1, 0x80), (0, 0x00)]
    for plen, byte in reversed(order):
        m.update(plen.to_bytes(4, "little") + bytes([byte]), b"\x01")
    keys = b"".join(k for k, _ in m.lookup_batches(chunk=3))
    assert [(keys[i], keys[i + 4]) for i in range(0, len(keys), 5)] == order
    after = b"".join(k for k, _ in m.lookup_batches(after=(8).to_bytes(4, "little") + b"\x80"))
    assert [(after[i], after[i + 4]) for i in range(0, len(after), 5)] == order[3:]
    missing = (8).to_bytes(4, "little") + b"\x81"   # not in the map: from the first key
    assert b"".join(k for k, _ in m.lookup_batches(after=missing)) == keys


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), policies())
def test_a_generation_is_read_from_its_mark(pa: Policy, pb: Policy):
    """Two plans in the two generations with their marks: each generation reads back as its
    plan while the kernel's walk covers only that generation (and the mark of the other),
    and without its mark (a map changed by hand) by the whole walk, still right."""
    a, b = compiled(pa), compiled(pb, replace(LIMITS))
    constants = a.constants()
    maps = memory_maps(constants)
    for gen, plan in enumerate((a, b)):
        write_plan(maps, gen, plan)
        write_marks(maps, gen)
    trie = maps["rule_table"]
    starts: list[bytes | None] = []
    listing = trie.lookup_batches

    def recording(chunk: int = 16384, after: bytes | None = None):
        starts.append(after)
        return listing(chunk, after)
    trie.lookup_batches = recording  # type: ignore[method-assign]
    for gen, plan in enumerate((a, b)):
        starts.clear()
        assert read_generation(maps, gen, constants) == canonical(plan)
        if plan.maps()["rule_table"]:   # one listing, from the mark (an empty one: two)
            assert starts == [abi.codec.rule_mark_key(gen)]
    mark = abi.codec.rule_mark_key(1)
    trie.delete(mark)
    assert read_generation(maps, 1, constants) == canonical(b)
    assert read_generation(maps, 1, constants, whole=True) == canonical(b)


def test_a_full_trie_has_no_room_for_a_mark_and_is_read_whole():
    """A datapath built before marks can have a generation filled to capacity: the mark is
    then left out (no error), and the generation still reads back right, walked whole."""
    plan = compiled(make_policy(*({"src": f"10.{i}.0.0/16"} for i in range(5))))
    constants = plan.constants()
    maps = memory_maps(constants)
    entries = len(plan.maps()["rule_table"])
    trie = maps["rule_table"]
    maps["rule_table"] = MemoryMap("lpm_trie", trie.key_size, trie.value_size, entries)
    write_plan(maps, 1, plan)
    write_marks(maps, 1)
    assert abi.codec.rule_mark_key(1) not in maps["rule_table"].data
    assert read_generation(maps, 1, constants) == canonical(plan)
