"""How the tracers read names and records from the kernel's own descriptions (tracepoint
format files, BTF enums), on fixed texts: no root, no kernel.  The root tier
(tests/bpf/test_tracers.py) checks the same against the running kernel."""

from __future__ import annotations

import struct

from netctl.observe.trace import _kernel as kernel

KFREE_SKB = """name: kfree_skb
ID: 2310
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->protocol, \
REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, \
{ 0x10, "WEIRD (x)" })
"""

BUF_LIMIT = """name: sock_exceed_buf_limit
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char name[8];\toffset:8;\tsize:8;\tsigned:0;
\tfield:long sysctl_mem[3];\toffset:16;\tsize:24;\tsigned:1;
\tfield:int kind;\toffset:40;\tsize:4;\tsigned:1;
\tfield:const void * skaddr;\toffset:48;\tsize:8;\tsigned:0;

print fmt: "proto:%s kind=%s state=%s", REC->name, __print_symbolic(REC->kind, \
{ 0, "SK_MEM_SEND" }, { 1, "SK_MEM_RECV" }), __print_symbolic(REC->state, \
{ TCP_ESTABLISHED, "TCP_ESTABLISHED" }, { TCP_CLOSE, "TCP_CLOSE" })
"""


def test_fields_offsets_and_record_size():
    fmt = kernel.parse_format("skb", "kfree_skb", KFREE_SKB)
    assert [f.name for f in fmt.fields] == ["common_type", "common_pid", "skbaddr", "location",
                                            "protocol", "reason"]
    reason = fmt.field("reason")
    assert reason and (reason.ctype, reason.offset, reason.size) == (
        "enum skb_drop_reason", 36, 4)
    assert fmt.field("skbaddr").ctype == "void *"
    assert fmt.record_size == 40 and fmt.has("protocol") and not fmt.has("rx_sk")


def test_print_symbolic_tables_come_from_the_format():
    fmt = kernel.parse_format("skb", "kfree_skb", KFREE_SKB)
    assert fmt.symbolic("reason") == {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 16: "WEIRD (x)"}
    assert fmt.symbolic("protocol") == {}


def test_symbolic_constants_resolve_through_a_table():
    fmt = kernel.parse_format("sock", "sock_exceed_buf_limit", BUF_LIMIT)
    assert fmt.symbolic("kind") == {0: "SK_MEM_SEND", 1: "SK_MEM_RECV"}
    assert fmt.symbolic("state") == {}      # names only: unresolved values are left out
    assert fmt.symbolic("state", {"TCP_ESTABLISHED": 1, "TCP_CLOSE": 7}) == {
        1: "TCP_ESTABLISHED", 7: "TCP_CLOSE"}


def test_raw_records_decode_by_the_format():
    fmt = kernel.parse_format("sock", "sock_exceed_buf_limit", BUF_LIMIT)
    raw = (struct.pack("=H6x", 77) + b"TCP\0\0\0\0\0" + struct.pack("=3q", 1, -2, 3)
           + struct.pack("=i4xQ", 1, 0xFFFF8881))
    assert fmt.decode(raw) == {"name": "TCP", "sysctl_mem": [1, -2, 3], "kind": "SK_MEM_RECV",
                               "skaddr": "0xffff8881"}
    assert fmt.decode(raw[:44]) == {"name": "TCP", "sysctl_mem": [1, -2, 3],
                                    "kind": "SK_MEM_RECV"}     # short: fields cut off go


def _btf(types: list[bytes], strings: bytes) -> bytes:
    body = b"".join(types)
    header = struct.pack("=HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + body + strings


def test_btf_enums_named_anonymous_signed_and_64_bit(tmp_path):
    strings = b"\0int\0tcp_ca_state\0TCP_CA_Open\0TCP_CA_Loss\0TCP_CLOSE\0big\0HUGE\0NEG\0"

    def off(name: bytes) -> int:
        return strings.index(name + b"\0")

    int_type = struct.pack("=III", off(b"int"), 1 << 24, 4) + struct.pack("=I", 32)
    ca = (struct.pack("=III", off(b"tcp_ca_state"), 6 << 24 | 2, 4)
          + struct.pack("=Ii", off(b"TCP_CA_Open"), 0) + struct.pack("=Ii", off(b"TCP_CA_Loss"), 4))
    anon = (struct.pack("=III", 0, 1 << 31 | 6 << 24 | 2, 4)
            + struct.pack("=Ii", off(b"TCP_CLOSE"), 7) + struct.pack("=Ii", off(b"NEG"), -1))
    big = (struct.pack("=III", off(b"big"), 19 << 24 | 1, 8)
           + struct.pack("=III", off(b"HUGE"), 1, 2))
    path = tmp_path / "vmlinux"
    path.write_bytes(_btf([int_type, ca, anon, big], strings))
    enums = {e.name: e.values for e in kernel.btf_enums(str(path))}
    assert enums == {"tcp_ca_state": {"TCP_CA_Open": 0, "TCP_CA_Loss": 4},
                     "": {"TCP_CLOSE": 7, "NEG": -1},
                     "big": {"HUGE": 2 << 32 | 1}}


def test_btf_that_is_not_btf_gives_no_enums(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\x00" * 64)
    assert kernel.btf_enums(str(path)) == ()
    assert kernel.btf_enums(str(tmp_path / "missing")) == ()


def test_ethertypes_and_errno_text():
    assert kernel.ethertype_name(0x0800) == "ipv4"
    assert kernel.ethertype_name(0x86DD) == "ipv6"
    assert kernel.ethertype_name(0x1234) == "0x1234"
    assert kernel.errno_text(1) == "EPERM: Operation not permitted"
    assert kernel.errno_text(None) == "no errno"
