"""bpf/include/netctl_abi.h and netctl/abi describe the same bytes.

bcc compiles the header and describes every struct it sees as a ctypes type (the Key and
Leaf of a map declared with it); each must have the mirror's size, field names and offsets.
The pack helpers must produce exactly the bytes of the mirror's fields.
"""

from __future__ import annotations

import ctypes

import pytest

from netctl import abi
from netctl.abi import (
    CFG_CLASSIFY,
    CFG_DIRECT_DST,
    CFG_SHAPES,
    CFG_SIZE,
    CFG_STATEFUL,
    CLASSIFY_DST,
    CLASSIFY_SRC,
    MAX_SHAPES,
    RULE_KEY_HEADER_BITS,
)
from netctl.kernel.bpfsrc import INCLUDE_DIR

bcc = pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")

STRUCT_MAPS = {name: f"t_{i}" for i, name in enumerate(abi.STRUCTS)}


@pytest.fixture(scope="module")
def compiled():
    text = '#include "netctl_abi.h"\n'
    for struct_name, table in STRUCT_MAPS.items():
        text += f"BPF_HASH({table}, u32, struct {struct_name}, 1);\n"
    text += "int unused(void *ctx) { return 0; }\n"
    module = bcc.BPF(text=text, cflags=[f"-I{INCLUDE_DIR}", f"-DNETCTL_MAX_SHAPES={MAX_SHAPES}",
                                        f"-DNETCTL_CFG_SIZE={CFG_SIZE}"])
    try:
        yield module
    finally:
        module.cleanup()


def _layout(cls) -> list[tuple[str, int, int]]:
    return [(name, getattr(cls, name).offset, getattr(cls, name).size)
            for name, *_ in cls._fields_]


@pytest.mark.parametrize("struct_name", list(abi.STRUCTS))
def test_struct_layout_matches_the_compiled_header(compiled, struct_name):
    mirror = abi.STRUCTS[struct_name]
    kernel = compiled[STRUCT_MAPS[struct_name]].Leaf
    assert ctypes.sizeof(kernel) == ctypes.sizeof(mirror), struct_name
    assert _layout(kernel) == _layout(mirror), struct_name


def test_constants_match_the_header():
    text = (INCLUDE_DIR / "netctl_abi.h").read_text()
    defines = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[2].lstrip("-").isdigit():
            defines[parts[1]] = int(parts[2])
    assert defines["NETCTL_GENS"] == abi.GENS
    assert defines["NETCTL_MAX_EXT_HDRS"] == abi.MAX_EXT_HDRS
    assert defines["NETCTL_MAX_VLAN"] == abi.MAX_VLAN
    assert defines["NETCTL_STAT_NON_IP"] == abi.STAT_NON_IP
    assert defines["NETCTL_STAT_NDP"] == abi.STAT_NDP
    assert defines["NETCTL_STAT_DEFAULT"] == abi.STAT_DEFAULT
    assert defines["NETCTL_STAT_MAX"] == abi.STAT_MAX
    assert defines["NETCTL_RULE_KEY_HEADER_BITS"] == RULE_KEY_HEADER_BITS
    assert defines["NETCTL_CFG_SHAPES"] == CFG_SHAPES
    assert (defines["NETCTL_CLASSIFY_SRC"], defines["NETCTL_CLASSIFY_DST"]) == (
        CLASSIFY_SRC, CLASSIFY_DST)
    # derived positions: NETCTL_CFG_DIRECT_DST = SHAPES + MAX_SHAPES, CLASSIFY right after
    assert CFG_DIRECT_DST == CFG_SHAPES + MAX_SHAPES and CFG_CLASSIFY == CFG_DIRECT_DST + 1
    assert "#define NETCTL_CFG_DIRECT_DST (NETCTL_CFG_SHAPES + NETCTL_MAX_SHAPES)" in text
    assert "#define NETCTL_CFG_CLASSIFY (NETCTL_CFG_DIRECT_DST + 1)" in text
    assert "#define NETCTL_CFG_STATEFUL (NETCTL_CFG_CLASSIFY + 1)" in text
    assert CFG_STATEFUL == CFG_CLASSIFY + 1
    for offset, name in enumerate(("TCP_ESTABLISHED", "TCP_CLOSING", "UDP", "ICMP"), start=1):
        assert f"#define NETCTL_CFG_CT_{name} (NETCTL_CFG_STATEFUL + {offset})" in text
        assert getattr(abi, f"CFG_CT_{name}") == CFG_STATEFUL + offset
    assert "#define NETCTL_CFG_ROUTES (NETCTL_CFG_CT_ICMP + 1)" in text
    assert abi.CFG_ROUTES == abi.CFG_CT_ICMP + 1
    assert "#define NETCTL_CFG_EVENT_SAMPLE (NETCTL_CFG_ROUTES + 1)" in text
    assert abi.CFG_EVENT_SAMPLE == abi.CFG_ROUTES + 1
    assert "#define NETCTL_CFG_CT_TCP_UNCONFIRMED (NETCTL_CFG_EVENT_SAMPLE + 1)" in text
    assert abi.CFG_CT_TCP_UNCONFIRMED == abi.CFG_EVENT_SAMPLE + 1
    assert "#define NETCTL_CFG_FLOW_CACHE (NETCTL_CFG_CT_TCP_UNCONFIRMED + 1)" in text
    assert abi.CFG_FLOW_CACHE == abi.CFG_CT_TCP_UNCONFIRMED + 1
    assert "#define NETCTL_CFG_DIRECT_PORT (NETCTL_CFG_FLOW_CACHE + 1)" in text
    assert abi.CFG_DIRECT_PORT == abi.CFG_FLOW_CACHE + 1
    assert abi.CFG_SIZE == abi.CFG_DIRECT_PORT + 1
    assert {mode: defines[f"NETCTL_FLOW_CACHE_{mode.upper()}"]
            for mode in abi.FLOW_CACHE_MODES} == abi.FLOW_CACHE_MODES
    for name in ("FWD_LOCAL", "FWD_TTL", "FWD_OPTIONS", "FWD_UNRESOLVED", "FWD_NOT_UNICAST",
                 "FLOW_HIT", "FLOW_MISS"):
        assert defines[f"NETCTL_STAT_{name}"] == getattr(abi, f"STAT_{name}")
    for name in ("CT_REPLY", "CT_NEW", "CT_EXPIRED", "CT_RELATED", "CT_INVALID",
                 "CT_CONFIRMED", "CT_UNCONFIRMED_EXPIRED"):
        assert defines[f"NETCTL_STAT_{name}"] == getattr(abi, f"STAT_{name}")
    slots = [v for k, v in defines.items()
             if k.startswith("NETCTL_STAT_") and k != "NETCTL_STAT_MAX"]
    assert len(slots) == len(set(slots)) and max(slots) < abi.STAT_MAX
    for name in ("NEW", "ESTABLISHED", "CLOSING"):
        assert abi.CT_STATES[defines[f"NETCTL_CT_{name}"]] == name.lower()
    for name in ("SYN", "SYNACK", "PICKUP", "ACKED"):
        assert defines[f"NETCTL_CT_F_{name}"] == getattr(abi, f"CT_F_{name}")
    assert defines["NETCTL_CT_MAX_WSCALE"] == abi.CT_MAX_WSCALE
    for reason in abi.DropReason:
        assert f"NETCTL_DROP_{reason.name} = {reason.value}," in text, reason


def test_pack_helpers_write_the_mirror_fields():
    plan_key = (3, 1, 6, 17, 20, 30, 40, 48, 0x20010DB8 << 96)
    key = abi.RuleKey.from_buffer_copy(abi.pack_rule_key(1, plan_key))
    assert (key.gen, key.slot, key.direction, key.family, key.proto) == (1, 3, 1, 6, 17)
    assert (key.addr_cls, key.sport_cls, key.l4_cls) == (20, 30, 40)
    assert key.prefixlen == 160 + 48 and bytes(key.addr)[:4] == bytes.fromhex("20010db8")
    assert abi.unpack_rule_key(bytes(key)) == (1, plan_key)
    v4 = (0, 0, 4, 6, 0, 0, 9, 24, 0xC0000200)
    key4 = abi.RuleKey.from_buffer_copy(abi.pack_rule_key(0, v4))
    assert bytes(key4.addr) == bytes([192, 0, 2, 0]) + bytes(12)
    assert abi.unpack_rule_key(bytes(key4)) == (0, v4)
    lpm = abi.Lpm6Key.from_buffer_copy(abi.pack_lpm_key(1, 6, 48, 0x20010DB8 << 96))
    assert (lpm.prefixlen, lpm.gen) == (32 + 48, 1)
    assert bytes(lpm.addr)[:4] == bytes.fromhex("20010db8")
    lpm4 = abi.Lpm4Key.from_buffer_copy(abi.pack_lpm_key(0, 4, 24, 0xC0000200))
    assert (lpm4.prefixlen, bytes(lpm4.addr)) == (56, bytes([192, 0, 2, 0]))
    rule = abi.Rule.from_buffer_copy(abi.pack_rule((1, 1)))
    assert (rule.action, rule.flags) == (1, 1)
    words = tuple(range(CFG_SIZE))
    assert tuple(abi.Config.from_buffer_copy(abi.pack_config(words)).word) == words
    classes = tuple(range(1, MAX_SHAPES + 1))
    assert tuple(abi.Classes.from_buffer_copy(abi.pack_classes(classes)).cls) == classes
