"""What the running kernel says about itself, for the tracers: tracepoint formats (fields,
offsets and the ``__print_symbolic`` tables that name drop reasons, TCP states, protocols),
enums from its BTF, the functions in /proc/kallsyms, and the tracefs mount they need.

Names always come from the running kernel, never from a table of our own that would go
stale: the format file first (it is what the kernel itself prints), BTF second, the bare
number last.  Nothing here needs bcc.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import re
import socket
import struct
import sys
import time
from dataclasses import dataclass
from functools import cache

from ...errors import NetctlError

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TRACEFS_MOUNT = "/sys/kernel/tracing"
VMLINUX = "/sys/kernel/btf/vmlinux"
KALLSYMS = "/proc/kallsyms"
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"

FAMILIES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}

# Ethertypes (IEEE registry numbers, not kernel-internal values), for skb->protocol.
ETHERTYPES = {
    0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp", 0x8035: "rarp", 0x8100: "vlan",
    0x88A8: "qinq", 0x8847: "mpls", 0x8848: "mpls-mc", 0x8863: "pppoe-disc",
    0x8864: "pppoe", 0x88CC: "lldp", 0x88E5: "macsec", 0x88F7: "ptp", 0x8906: "fcoe",
    0x0004: "802.2", 0x0003: "all",
}


class TraceSetupError(NetctlError):
    """The kernel cannot give a tracer what it needs (tracefs, a format file)."""


def errno_text(err: int | None) -> str:
    """``EPERM: Operation not permitted``."""
    if not err:
        return "no errno"
    return f"{errno_mod.errorcode.get(err, str(err))}: {os.strerror(err)}"


def ethertype_name(value: int) -> str:
    return ETHERTYPES.get(value, f"0x{value:04x}")


def monotonic_to_unix() -> float:
    """Seconds to add to a CLOCK_MONOTONIC time (bpf_ktime_get_ns) to get a Unix time."""
    return time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)


# ---- tracefs ------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def tracefs() -> str:
    """A directory where tracefs is mounted, mounting it at /sys/kernel/tracing when it is
    nowhere (at boot here, and always inside `ip netns exec`, which remounts /sys: such a
    mount lives as long as that mount namespace, which is what a tracer needs)."""
    for path in TRACEFS_DIRS:
        if os.path.isdir(f"{path}/events"):
            return path
    if _libc.mount(b"tracefs", TRACEFS_MOUNT.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise TraceSetupError(f"tracefs is not mounted and mounting it at {TRACEFS_MOUNT} "
                              f"failed ({errno_text(err)}): tracers need it for tracepoint "
                              "ids and formats")
    return TRACEFS_MOUNT


@dataclass(frozen=True)
class Field:
    """One field of a tracepoint record, as its format file declares it."""

    name: str
    ctype: str          # without the name and the array suffix: "__u8", "const void *"
    offset: int
    size: int
    signed: bool
    count: int | None   # array length, None for a scalar


_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
                    r"\s*signed:(?P<signed>\d+);")
_DECL = re.compile(r"^(?P<type>.*?)\s*\b(?P<name>\w+)\s*(?:\[(?P<count>\w*)\])?$")


@dataclass(frozen=True)
class TracepointFormat:
    category: str
    event: str
    fields: tuple[Field, ...]
    print_fmt: str

    @property
    def name(self) -> str:
        return f"{self.category}:{self.event}"

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def has(self, name: str) -> bool:
        return self.field(name) is not None

    @property
    def record_size(self) -> int:
        return max(f.offset + f.size for f in self.fields)

    def symbolic(self, field: str, resolve: dict[str, int] | None = None) -> dict[int, str]:
        """The ``__print_symbolic(REC->field, {value, "NAME"}, ...)`` table of ``field``.
        A value the kernel wrote as a constant's name (``TCP_ESTABLISHED``) is looked up in
        ``resolve``; one that cannot be is left out."""
        if resolve:
            return print_symbolic(self.print_fmt, field, resolve)
        return _symbolic(self.print_fmt, field)

    def decode(self, raw: bytes, skip_common: bool = True) -> dict[str, object]:
        """The record's fields by name: integers, lists for integer arrays, text for char
        arrays, hex for pointers; values with a ``__print_symbolic`` table get its name."""
        out: dict[str, object] = {}
        for f in self.fields:
            if skip_common and f.name.startswith("common_"):
                continue
            if f.offset + f.size > len(raw):
                continue
            chunk = raw[f.offset:f.offset + f.size]
            if f.count is not None and "char" in f.ctype and f.size == f.count:
                out[f.name] = chunk.split(b"\0", 1)[0].decode(errors="replace")
            elif f.count:
                width = f.size // f.count
                out[f.name] = [_int(chunk[i:i + width], f.signed)
                               for i in range(0, f.size, width)]
            else:
                value = _int(chunk, f.signed)
                if "*" in f.ctype:
                    out[f.name] = f"0x{value:x}"
                    continue
                names = self.symbolic(f.name)
                out[f.name] = names.get(value, value) if names else value
        return out


def _int(chunk: bytes, signed: bool) -> int:
    return int.from_bytes(chunk, sys.byteorder, signed=signed)


def parse_format(category: str, event: str, text: str) -> TracepointFormat:
    fields = []
    for m in _FIELD.finditer(text):
        decl = _DECL.match(m.group("decl").strip())
        if not decl:
            continue
        count = decl.group("count")
        fields.append(Field(
            name=decl.group("name"), ctype=decl.group("type").strip(),
            offset=int(m.group("off")), size=int(m.group("size")),
            signed=m.group("signed") == "1",
            count=int(count) if count and count.isdigit() else None))
    fmt = text.split("print fmt:", 1)[1].strip() if "print fmt:" in text else ""
    return TracepointFormat(category, event, tuple(fields), fmt)


@cache
def tracepoint_format(category: str, event: str) -> TracepointFormat | None:
    """The format of tracepoint ``category:event`` in the running kernel, None if it has no
    such tracepoint."""
    try:
        with open(f"{tracefs()}/events/{category}/{event}/format") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TraceSetupError(f"cannot read the format of {category}:{event} "
                              f"({errno_text(exc.errno)})") from None
    return parse_format(category, event, text)


@cache
def _symbolic(print_fmt: str, field: str) -> dict[int, str]:
    return print_symbolic(print_fmt, field, {})


def print_symbolic(print_fmt: str, field: str, resolve: dict[str, int]) -> dict[int, str]:
    m = re.search(r"__print_symbolic\(\s*REC->" + re.escape(field) + r"\s*,", print_fmt)
    if not m:
        return {}
    depth, end, quoted = 1, len(print_fmt), False
    for i in range(m.end(), len(print_fmt)):
        c = print_fmt[i]
        if c == '"' and print_fmt[i - 1] != "\\":
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
            if depth == 0:
                end = i
                break
    table: dict[int, str] = {}
    for value, name in re.findall(r'\{\s*([^,{}]+?)\s*,\s*"([^"]*)"\s*\}',
                                  print_fmt[m.end():end]):
        try:
            number = int(value, 0)
        except ValueError:
            if value not in resolve:
                continue
            number = resolve[value]
        table[number] = name
    return table


# ---- BTF enums ----------------------------------------------------------------------------

_BTF_HEADER = struct.Struct("=HBBIIIII")
_BTF_TYPE = struct.Struct("=III")
_KIND_ENUM, _KIND_ENUM64 = 6, 19
# bytes after the 12-byte btf_type: fixed part by kind, and per vlen item by kind
_BTF_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
_BTF_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


@dataclass(frozen=True)
class BtfEnum:
    name: str                   # "" for an anonymous enum
    values: dict[str, int]      # enumerator -> value


@cache
def btf_enums(path: str = VMLINUX) -> tuple[BtfEnum, ...]:
    """Every enum of the kernel's BTF (empty when the kernel has none)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ()
    if len(data) < _BTF_HEADER.size:
        return ()
    magic, _v, _f, hdr_len, type_off, type_len, str_off, str_len = \
        _BTF_HEADER.unpack_from(data, 0)
    if magic != 0xEB9F:
        return ()
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]

    def name(off: int) -> str:
        return strings[off:strings.index(b"\0", off)].decode(errors="replace")

    enums = []
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        name_off, info, _size = _BTF_TYPE.unpack_from(data, pos)
        kind, vlen, signed = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
        body = pos + _BTF_TYPE.size
        if kind == _KIND_ENUM:
            fmt = "=Ii" if signed else "=II"
            values = {name(n): v for n, v in (struct.unpack_from(fmt, data, body + 8 * i)
                                              for i in range(vlen))}
            enums.append(BtfEnum(name(name_off), values))
        elif kind == _KIND_ENUM64:
            values = {}
            for i in range(vlen):
                n, lo, hi = struct.unpack_from("=III", data, body + 12 * i)
                value = hi << 32 | lo
                values[name(n)] = value - (1 << 64) if signed and hi >> 31 else value
            enums.append(BtfEnum(name(name_off), values))
        pos = body + _BTF_FIXED.get(kind, 0) + _BTF_ITEM.get(kind, 0) * vlen
    return tuple(enums)


def btf_enum(name: str = "", member: str = "") -> dict[str, int]:
    """The enumerators of enum ``name``, or of the first enum that has ``member``."""
    for e in btf_enums():
        if (name and e.name == name) or (member and member in e.values):
            return dict(e.values)
    return {}


# ---- names by kind of value ---------------------------------------------------------------


@dataclass(frozen=True)
class DropReasons:
    names: dict[int, str]       # code -> name without the SKB_DROP_REASON_ prefix
    source: str                 # where the names came from
    not_dropped_yet: int | None  # codes that are not drops (BTF's SKB_NOT_DROPPED_YET, ...)
    consumed: int | None


@cache
def drop_reasons() -> DropReasons:
    """Drop-reason names: skb:kfree_skb's ``__print_symbolic`` table, completed from BTF's
    ``enum skb_drop_reason``.  The two codes that are no drops (``SKB_NOT_DROPPED_YET``,
    ``SKB_CONSUMED``) are not in the format's table; BTF has them."""
    enum = btf_enum("skb_drop_reason")
    names: dict[int, str] = {}
    sources = []
    for member, value in enum.items():
        short = member.removeprefix("SKB_DROP_REASON_").removeprefix("SKB_")
        names.setdefault(value, short)
    if enum:
        sources.append("BTF enum skb_drop_reason")
    fmt = tracepoint_format("skb", "kfree_skb")
    table = fmt.symbolic("reason") if fmt else {}
    if table:
        names.update(table)
        sources.insert(0, "skb:kfree_skb format")
    return DropReasons(names, " + ".join(sources) or "none (numbers only)",
                       enum.get("SKB_NOT_DROPPED_YET"), enum.get("SKB_CONSUMED"))


@cache
def tcp_states() -> dict[int, str]:
    """TCP states by number ("ESTABLISHED"): sock:inet_sock_set_state's table, else the
    kernel's anonymous enum of TCP states in BTF."""
    fmt = tracepoint_format("sock", "inet_sock_set_state")
    table = fmt.symbolic("newstate") if fmt else {}
    if not table:
        table = {v: k for k, v in btf_enum(member="TCP_ESTABLISHED").items()}
    return {value: name.removeprefix("TCP_") for value, name in table.items()}


def tcp_state_values() -> dict[str, int]:
    """TCP state numbers by full constant name (``TCP_ESTABLISHED``), for format tables that
    name states by their constants."""
    values = btf_enum(member="TCP_ESTABLISHED")
    if not values:
        values = {f"TCP_{name}": v for v, name in tcp_states().items()}
    return values


# TCP_CLOSE has been 7 since Linux 1.x; used only when neither tracefs nor BTF can say.
_TCP_CLOSE_FALLBACK = 7


def tcp_close_state() -> int:
    return next((v for v, n in tcp_states().items() if n == "CLOSE"), _TCP_CLOSE_FALLBACK)


@cache
def ca_states() -> dict[int, str]:
    """TCP congestion states by number ("Loss"), from BTF's ``enum tcp_ca_state``."""
    return {v: k.removeprefix("TCP_CA_") for k, v in btf_enum("tcp_ca_state").items()}


@cache
def sock_protocols() -> dict[int, str]:
    """IP protocols of inet_sock_set_state ("tcp"), from its format's table."""
    fmt = tracepoint_format("sock", "inet_sock_set_state")
    table = fmt.symbolic("protocol") if fmt else {}
    return {v: n.removeprefix("IPPROTO_").lower() for v, n in table.items()}


# ---- kernel functions ---------------------------------------------------------------------


@cache
def kallsyms_functions() -> frozenset[str]:
    """Names of the kernel's text symbols (functions)."""
    names = set()
    with contextlib.suppress(OSError), open(KALLSYMS) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("t", "T"):
                names.add(parts[2])
    return frozenset(names)


@cache
def btf_function(name: str) -> int | None:
    """The BTF id of kernel function ``name`` (what fentry attaches by), or None.  Cached:
    the drop tracer asks for every event it decodes under fentry, and one lookup scans the
    kernel's whole BTF (170 ms each in the kernel matrix's virtual machines)."""
    from ...kernel.btf import BtfError, func_id

    try:
        return func_id(name)
    except (OSError, BtfError):
        return None


def skb_offset(member: str) -> int | None:
    """The byte offset of ``member`` in the running kernel's struct sk_buff (from its BTF),
    or None when BTF is missing or has no such member."""
    return struct_offset("sk_buff", member)


@cache
def struct_offset(struct_name: str, member: str) -> int | None:
    """The byte offset of ``member`` in the running kernel's ``struct struct_name``, or None
    when BTF is missing or has no such member (or it is a bit field)."""
    from ...kernel.btf import BtfError, vmlinux

    try:
        return vmlinux().member_offset(struct_name, member)
    except (OSError, BtfError):
        return None


@cache
def raw_tracepoint_args(event: str) -> tuple[str, ...] | None:
    """The structs a raw tracepoint's pointer arguments point to (btf.Btf), or None."""
    from ...kernel.btf import BtfError, vmlinux

    try:
        args = vmlinux().raw_tracepoint_args(event)
    except (OSError, BtfError):
        return None
    return None if args is None else tuple(args)


def kprobe_support() -> str | None:
    """None when the kernel can attach kprobes, else why not."""
    if os.path.exists(KPROBE_PMU):
        return None
    legacy = any(os.path.exists(f"{d}/kprobe_events") for d in TRACEFS_DIRS)
    if legacy:
        return None
    return (f"no kprobe PMU ({os.path.dirname(KPROBE_PMU)} is missing: kernel built without "
            "CONFIG_KPROBES) and no kprobe_events in tracefs")
