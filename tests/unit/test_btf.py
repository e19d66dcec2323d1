"""The minimal BTF reader (netctl.kernel.btf) finds kernel functions by name.

Synthetic BTF blobs check the format handling anywhere; the running kernel's
/sys/kernel/btf/vmlinux (world-readable, no root needed) checks it on real data.
"""

from __future__ import annotations

import os
import re
import struct

import pytest

from netctl.kernel import btf
from netctl.kernel.btf import Btf, BtfError

# ---- synthetic BTF --------------------------------------------------------------------------


def _blob(types: list[bytes], strings: bytes, magic: int = btf.MAGIC) -> bytes:
    type_sec = b"".join(types)
    header = struct.pack("=HBBIIIII", magic, 1, 0, 24, 0, len(type_sec), len(type_sec),
                         len(strings))
    return header + type_sec + strings


def _type(name_off: int, kind: int, vlen: int = 0, size_or_type: int = 0) -> bytes:
    return struct.pack("=III", name_off, (kind << 24) | vlen, size_or_type)


STRINGS = b"\0int\0pair\0a\0b\0add\0x\0pair_add\0"
OFF = {name: STRINGS.index(b"\0" + name.encode() + b"\0") + 1
       for name in ("int", "pair", "a", "b", "add", "x", "pair_add")}


def _sample() -> bytes:
    types = [
        # 1: int, 4 bytes, 32 bits
        _type(OFF["int"], btf.KIND_INT, 0, 4) + struct.pack("=I", 32),
        # 2: struct pair { int a; int b; }
        _type(OFF["pair"], btf.KIND_STRUCT, 2, 8)
        + struct.pack("=III", OFF["a"], 1, 0) + struct.pack("=III", OFF["b"], 1, 32),
        # 3: int (*)(int x)
        _type(0, btf.KIND_FUNC_PROTO, 1, 1) + struct.pack("=II", OFF["x"], 1),
        # 4: func add, 5: a struct and a function sharing no name, 6: func pair_add
        _type(OFF["add"], btf.KIND_FUNC, 0, 3),
        _type(OFF["x"], btf.KIND_VAR, 0, 1) + struct.pack("=I", 0),
        _type(OFF["pair_add"], btf.KIND_FUNC, 0, 3),
    ]
    return _blob(types, STRINGS)


def test_synthetic_functions_are_found_by_name_with_their_ids():
    parsed = Btf(_sample())
    assert len(parsed) == 7  # void + 6
    assert parsed.func_id("add") == 4
    assert parsed.func_id("pair_add") == 6
    assert parsed.name(6) == "pair_add"


def test_synthetic_other_kinds_and_unknown_names_are_not_functions():
    parsed = Btf(_sample())
    assert parsed.func_id("pair") is None       # a struct
    assert parsed.func_id("x") is None          # a variable
    assert parsed.func_id("pair_") is None      # a prefix of a name is not the name
    assert parsed.func_id("dd") is None         # nor a suffix
    assert parsed.func_id("") is None
    assert parsed.find("pair", btf.KIND_STRUCT) == 2


def test_bad_magic_unknown_kind_and_truncation_are_errors():
    with pytest.raises(BtfError, match="magic"):
        Btf(_blob([], b"\0", magic=0x1234))
    with pytest.raises(BtfError, match="unknown kind"):
        Btf(_blob([_type(0, 31)], b"\0"))
    with pytest.raises(BtfError):
        Btf(_sample()[:-12])
    with pytest.raises(BtfError, match="boundary"):
        Btf(_blob([_type(0, btf.KIND_INT)], b"\0"))  # INT without its 4 extra bytes


# ---- the running kernel ---------------------------------------------------------------------

kernel_btf = pytest.mark.skipif(not os.access(btf.VMLINUX, os.R_OK),
                                reason=f"{btf.VMLINUX} is not readable (kernel without "
                                "CONFIG_DEBUG_INFO_BTF, or no sysfs)")


def _kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    assert m, os.uname().release
    return int(m.group(1)), int(m.group(2))


@kernel_btf
def test_vmlinux_has_tcp_retransmit_skb():
    type_id = btf.func_id("tcp_retransmit_skb")
    assert type_id is not None and type_id > 0
    parsed = btf.vmlinux()
    assert parsed.kinds[type_id] == btf.KIND_FUNC
    assert parsed.name(type_id) == "tcp_retransmit_skb"


@kernel_btf
def test_vmlinux_has_the_skb_drop_function_of_its_version():
    """kfree_skb_reason is a function up to 6.10; since 6.11 it is an inline wrapper of
    sk_skb_reason_drop, which BTF lists instead."""
    drop = "sk_skb_reason_drop" if _kernel_version() >= (6, 11) else "kfree_skb_reason"
    type_id = btf.func_id(drop)
    assert type_id is not None, f"{drop} not found in {btf.VMLINUX}"
    assert btf.vmlinux().name(type_id) == drop


@kernel_btf
def test_vmlinux_returns_none_for_nonsense_and_for_non_functions():
    assert btf.func_id("netctl_no_such_function_xyzzy") is None
    assert btf.func_id("sk_buff") is None  # a struct, not a function
    assert btf.vmlinux().find("sk_buff", btf.KIND_STRUCT) is not None


# ---- struct member offsets ------------------------------------------------------------------

MSTRINGS = b"\0int\0outer\0first\0deep\0flags\0named\0"
MOFF = {n: MSTRINGS.index(b"\0" + n.encode() + b"\0") + 1
        for n in ("int", "outer", "first", "deep", "flags", "named")}


def _nested() -> bytes:
    """struct outer { int first; union { struct { int pad; int deep; }; int named; };
    int flags:3 (a bit field, at bit 128) }: deep at byte 8 through two anonymous levels."""
    types = [
        _type(MOFF["int"], btf.KIND_INT, 0, 4) + struct.pack("=I", 32),          # 1
        # 2: anonymous struct { int (unnamed pad); int deep; }
        _type(0, btf.KIND_STRUCT, 2, 8) + struct.pack("=III", MOFF["first"] + 100, 1, 0)
        + struct.pack("=III", MOFF["deep"], 1, 32),
        # 3: anonymous union { struct 2; int named; }
        _type(0, btf.KIND_UNION, 2, 8) + struct.pack("=III", 0, 2, 0)
        + struct.pack("=III", MOFF["named"], 1, 0),
        # 4: struct outer, kind_flag set (bit-field encoding of offsets)
        struct.pack("=III", MOFF["outer"], (1 << 31) | (btf.KIND_STRUCT << 24) | 3, 20)
        + struct.pack("=III", MOFF["first"], 1, 0)
        + struct.pack("=III", 0, 3, 32)
        + struct.pack("=III", MOFF["flags"], 1, (3 << 24) | 128),
    ]
    return _blob(types, MSTRINGS + b"\0" * 120)


def test_member_offsets_through_anonymous_structs_and_unions():
    parsed = Btf(_nested())
    assert parsed.member_offset("outer", "first") == 0
    assert parsed.member_offset("outer", "deep") == 4 + 4
    assert parsed.member_offset("outer", "named") == 4
    assert parsed.member_offset("outer", "flags") is None        # a bit field
    assert parsed.member_offset("outer", "missing") is None
    assert parsed.member_offset("nothing", "first") is None


def test_vmlinux_sk_buff_members_the_drop_tracer_reads():
    offsets = {m: btf.vmlinux().member_offset("sk_buff", m)
               for m in ("head", "data", "network_header", "transport_header", "protocol")}
    assert all(v is not None for v in offsets.values()), offsets
    assert len(set(offsets.values())) == len(offsets)
    assert offsets["data"] == offsets["head"] + 8    # adjacent pointers in every release


RSTRINGS = b"\0sock\0sk_buff\0btf_trace_probe\0btf_trace_odd\0int\0"
ROFF = {n: RSTRINGS.index(b"\0" + n.encode() + b"\0") + 1
        for n in ("sock", "sk_buff", "btf_trace_probe", "btf_trace_odd", "int")}


def _raw_tracepoints() -> bytes:
    """typedef void (*btf_trace_probe)(void *, struct sock *, const struct sk_buff *), and
    btf_trace_odd taking (void *, int, struct sock *)."""
    types = [
        _type(ROFF["int"], btf.KIND_INT, 0, 4) + struct.pack("=I", 32),           # 1
        _type(ROFF["sock"], btf.KIND_STRUCT, 0, 8),                               # 2
        _type(ROFF["sk_buff"], btf.KIND_STRUCT, 0, 8),                            # 3
        _type(0, btf.KIND_PTR, 0, 0),                                             # 4 void *
        _type(0, btf.KIND_PTR, 0, 2),                                             # 5 sock *
        _type(0, btf.KIND_CONST, 0, 3),                                           # 6
        _type(0, btf.KIND_PTR, 0, 6),                                             # 7
        _type(0, btf.KIND_FUNC_PROTO, 3, 0)                                       # 8
        + struct.pack("=IIIIII", 0, 4, 0, 5, 0, 7),
        _type(0, btf.KIND_PTR, 0, 8),                                             # 9
        _type(ROFF["btf_trace_probe"], btf.KIND_TYPEDEF, 0, 9),                   # 10
        _type(0, btf.KIND_FUNC_PROTO, 3, 0)                                       # 11
        + struct.pack("=IIIIII", 0, 4, 0, 1, 0, 5),
        _type(0, btf.KIND_PTR, 0, 11),                                            # 12
        _type(ROFF["btf_trace_odd"], btf.KIND_TYPEDEF, 0, 12),                    # 13
    ]
    return _blob(types, RSTRINGS)


def test_raw_tracepoint_arguments_are_the_structs_pointed_to():
    parsed = Btf(_raw_tracepoints())
    assert parsed.raw_tracepoint_args("probe") == ["sock", "sk_buff"]     # through const
    assert parsed.raw_tracepoint_args("odd") == ["", "sock"]
    assert parsed.raw_tracepoint_args("missing") is None


def test_vmlinux_tcp_probe_and_the_fields_the_raw_cong_probe_reads():
    from netctl.observe.trace.kinds import RAW_PROBE_FIELDS

    assert btf.vmlinux().raw_tracepoint_args("tcp_probe") == ["sock", "sk_buff"]
    offsets = {macro: btf.vmlinux().member_offset(*where)
               for macro, where in RAW_PROBE_FIELDS.items()}
    assert all(v is not None for v in offsets.values()), offsets
    assert offsets["SK_OFF_DADDR"] + 4 == offsets["SK_OFF_RCV_SADDR"]     # skc_addrpair
