"""A small wrapper of the bpf(2) system call: maps, pins, program loads, test runs, links.

bcc compiles netctl's programs; everything else a short-lived netctl process does with BPF
objects (create and pin maps, open pins, read and write map entries, run a program on a
packet with BPF_PROG_TEST_RUN, ask the kernel about a program, attach one with a bpf_link
and swap the program a link runs) goes through here, with
keys and values as ``bytes``.  Errors are ``BpfError`` carrying the errno, so callers can
name the failing object and say why.

The attribute layouts are those of ``union bpf_attr`` in include/uapi/linux/bpf.h; each
command zeroes a fresh buffer and fills only the fields it uses, as the kernel requires.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from . import syscalls

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@cache
def _nr() -> int:
    """bpf(2)'s number on this machine; UnknownMachineError (a NetctlError) on a machine
    netctl has no number for, at the first call rather than at import."""
    return syscalls.number("bpf")


# commands
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
PROG_GET_NEXT_ID = 11
MAP_GET_NEXT_ID = 12
PROG_GET_FD_BY_ID = 13
MAP_GET_FD_BY_ID = 14
OBJ_GET_INFO_BY_FD = 15
PROG_QUERY = 16
RAW_TRACEPOINT_OPEN = 17
MAP_LOOKUP_BATCH = 24
MAP_UPDATE_BATCH = 26
MAP_DELETE_BATCH = 27
LINK_CREATE = 28
LINK_UPDATE = 29
LINK_GET_FD_BY_ID = 30
LINK_GET_NEXT_ID = 31
LINK_DETACH = 34

# map types
MAP_HASH = 1
MAP_ARRAY = 2
MAP_PERCPU_ARRAY = 6
MAP_LPM_TRIE = 11
MAP_RINGBUF = 27
PERCPU_TYPES = frozenset({5, MAP_PERCPU_ARRAY, 10})

# map flags
F_NO_PREALLOC = 1
F_RDONLY_PROG = 1 << 7

# update flags
ANY = 0
NOEXIST = 1
EXIST = 2

# program types
PROG_KPROBE = 2
PROG_SCHED_CLS = 3
PROG_TRACEPOINT = 5
PROG_XDP = 6
PROG_RAW_TRACEPOINT = 17
PROG_TRACING = 26

# attach types
TRACE_FENTRY = 24
ATTACH_XDP = 37
TCX_INGRESS = 46
TCX_EGRESS = 47

# link types (enum bpf_link_type)
LINK_TYPE_XDP = 6
LINK_TYPE_TCX = 11

# BPF_LINK_UPDATE: swap only if the link still runs old_prog_fd
F_REPLACE = 1 << 2

_ATTR_SIZE = 144


class BpfError(OSError):
    """A bpf(2) command failed; ``errno`` is the kernel's answer."""

    def __init__(self, err: int, what: str, log: str = ""):
        self.log = log
        super().__init__(err, f"{what}: {os.strerror(err)}")


def _call(cmd: int, attr: ctypes.Array, what: str) -> int:
    ret = _libc.syscall(_nr(), cmd, ctypes.byref(attr), _ATTR_SIZE)
    if ret < 0:
        raise BpfError(ctypes.get_errno(), what)
    return ret


def _attr() -> ctypes.Array:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


@cache
def possible_cpus() -> int:
    """Per-CPU map values hold one slot per *possible* CPU (not online)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


# ---- maps --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


class Map:
    """An open BPF map.  Keys and values are ``bytes`` of the map's sizes; for per-CPU maps
    a value is ``possible_cpus()`` slots of ``value_size`` rounded up to 8 bytes."""

    def __init__(self, fd: int, info: MapInfo | None = None):
        self.fd = fd
        self.info = info or map_info(fd)
        self.key_size = self.info.key_size
        value_size = self.info.value_size
        if self.info.type in PERCPU_TYPES:
            value_size = ((value_size + 7) & ~7) * possible_cpus()
        self.value_size = value_size
        self._key = ctypes.create_string_buffer(max(self.key_size, 1))
        self._next = ctypes.create_string_buffer(max(self.key_size, 1))
        self._value = ctypes.create_string_buffer(max(self.value_size, 1))

    # -- lifecycle
    @classmethod
    def create(cls, map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0, name: str = "") -> Map:
        attr = _attr()
        struct.pack_into("IIIII", attr, 0, map_type, key_size, value_size, max_entries, flags)
        encoded = name.encode()[:15]
        attr[28:28 + len(encoded)] = encoded
        fd = _call(MAP_CREATE, attr, f"create map {name or map_type}")
        return cls(fd)

    @classmethod
    def open_pinned(cls, path: str) -> Map:
        return cls(obj_get(path))

    def pin(self, path: str) -> None:
        obj_pin(self.fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    # -- elements
    def _elem_attr(self, key: bytes, value_ptr: int, flags: int = 0) -> ctypes.Array:
        if len(key) != self.key_size:
            raise ValueError(f"key of {len(key)} bytes for a map with {self.key_size}-byte keys")
        ctypes.memmove(self._key, key, self.key_size)
        attr = _attr()
        struct.pack_into("IIQQQ", attr, 0, self.fd, 0, ctypes.addressof(self._key),
                         value_ptr, flags)
        return attr

    def lookup(self, key: bytes) -> bytes | None:
        attr = self._elem_attr(key, ctypes.addressof(self._value))
        if _libc.syscall(_nr(), MAP_LOOKUP_ELEM, ctypes.byref(attr), _ATTR_SIZE) < 0:
            err = ctypes.get_errno()
            if err == errno_mod.ENOENT:
                return None
            raise BpfError(err, f"lookup in map {self.info.name}")
        return self._value.raw[:self.value_size]

    def update(self, key: bytes, value: bytes, flags: int = ANY) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"value of {len(value)} bytes for a map with "
                             f"{self.value_size}-byte values")
        ctypes.memmove(self._value, value, self.value_size)
        attr = self._elem_attr(key, ctypes.addressof(self._value), flags)
        _call(MAP_UPDATE_ELEM, attr, f"update map {self.info.name}")

    def update_many(self, pairs, flags: int = ANY) -> int:
        """update() for many (key, value) pairs with one reused attribute block: the loop
        for maps without batch operations (LPM tries), where per-call setup would dominate.
        Returns the number written; stops at the first error (raised)."""
        ksz, vsz = self.key_size, self.value_size
        key, value = self._key, self._value
        attr = _attr()
        struct.pack_into("IIQQQ", attr, 0, self.fd, 0, ctypes.addressof(key),
                         ctypes.addressof(value), flags)
        syscall, memmove, ref, nr = _libc.syscall, ctypes.memmove, ctypes.byref(attr), _nr()
        count = 0
        for k, v in pairs:
            if len(k) != ksz or len(v) != vsz:
                raise ValueError("key or value of the wrong size")
            memmove(key, k, ksz)
            memmove(value, v, vsz)
            if syscall(nr, MAP_UPDATE_ELEM, ref, _ATTR_SIZE) < 0:
                raise BpfError(ctypes.get_errno(), f"update map {self.info.name}")
            count += 1
        return count

    def delete_many(self, keys) -> int:
        """delete() for many keys (missing ones are skipped); returns how many were there."""
        ksz = self.key_size
        key = self._key
        attr = _attr()
        struct.pack_into("IIQ", attr, 0, self.fd, 0, ctypes.addressof(key))
        syscall, memmove, ref, nr = _libc.syscall, ctypes.memmove, ctypes.byref(attr), _nr()
        count = 0
        for k in keys:
            memmove(key, k, ksz)
            if syscall(nr, MAP_DELETE_ELEM, ref, _ATTR_SIZE) < 0:
                err = ctypes.get_errno()
                if err != errno_mod.ENOENT:
                    raise BpfError(err, f"delete from map {self.info.name}")
                continue
            count += 1
        return count

    def delete(self, key: bytes, missing_ok: bool = True) -> bool:
        attr = self._elem_attr(key, 0)
        if _libc.syscall(_nr(), MAP_DELETE_ELEM, ctypes.byref(attr), _ATTR_SIZE) < 0:
            err = ctypes.get_errno()
            if err == errno_mod.ENOENT and missing_ok:
                return False
            raise BpfError(err, f"delete from map {self.info.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key (GET_NEXT_KEY from no key).  Keys deleted meanwhile may restart the
        walk in a hash map; callers that delete while iterating collect the keys first."""
        attr = _attr()
        struct.pack_into("IIQQ", attr, 0, self.fd, 0, 0, ctypes.addressof(self._next))
        while _libc.syscall(_nr(), MAP_GET_NEXT_KEY, ctypes.byref(attr), _ATTR_SIZE) == 0:
            key = self._next.raw[:self.key_size]
            yield key
            ctypes.memmove(self._key, key, self.key_size)
            struct.pack_into("Q", attr, 8, ctypes.addressof(self._key))
        err = ctypes.get_errno()
        if err != errno_mod.ENOENT:
            raise BpfError(err, f"iterate map {self.info.name}")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                yield key, value

    # -- batches (hash and array maps; LPM tries where the kernel has them: maps.py probes)
    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        """Write ``count`` elements whose keys and values are packed back to back."""
        if count == 0:
            return
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        vbuf = ctypes.create_string_buffer(values, len(values))
        attr = _attr()
        struct.pack_into("QQQQII", attr, 0, 0, 0, ctypes.addressof(kbuf),
                         ctypes.addressof(vbuf), count, self.fd)
        _call(MAP_UPDATE_BATCH, attr, f"batch update of map {self.info.name}")

    def read_array(self, start: int = 0, count: int | None = None) -> bytes:
        """Values ``start`` .. ``start + count - 1`` of an array map (default: all), back to
        back in index order, read with as few batch syscalls as the kernel allows."""
        n = self.info.max_entries - start if count is None else count
        ksz, vsz = self.key_size, self.value_size
        keys = ctypes.create_string_buffer(ksz * n)
        values = ctypes.create_string_buffer(vsz * n)
        token_in = ctypes.create_string_buffer(struct.pack("I", start - 1) if start else 8)
        token_out = ctypes.create_string_buffer(8)
        done = 0
        while done < n:
            attr = _attr()
            struct.pack_into("QQQQII", attr, 0, ctypes.addressof(token_in) if done or start else 0,
                             ctypes.addressof(token_out), ctypes.addressof(keys) + done * ksz,
                             ctypes.addressof(values) + done * vsz, n - done, self.fd)
            ret = _libc.syscall(_nr(), MAP_LOOKUP_BATCH, ctypes.byref(attr), _ATTR_SIZE)
            err = ctypes.get_errno() if ret < 0 else 0
            got = struct.unpack_from("I", attr, 32)[0]
            if ret < 0 and err != errno_mod.ENOENT:
                raise BpfError(err, f"batch lookup in map {self.info.name}")
            done += got
            if ret < 0 or got == 0:
                break
            ctypes.memmove(token_in, token_out, 8)
        return values.raw[:done * vsz]

    def lookup_batches(self, chunk: int = 16384,
                       after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every element, as (keys, values) packed back to back, ``chunk`` elements a
        syscall (hash and array maps, and LPM tries where the kernel has batches for
        them), for callers that unpack a whole batch at once (``struct.iter_unpack``).
        With ``after``, the elements the kernel lists after that key (from the first one if
        the key is not in the map); a caller may stop reading at any batch."""
        ksz, vsz = self.key_size, self.value_size
        kbuf = ctypes.create_string_buffer(ksz * chunk)
        vbuf = ctypes.create_string_buffer(vsz * chunk)
        token_in = ctypes.create_string_buffer(max(ksz, 8))
        token_out = ctypes.create_string_buffer(max(ksz, 8))
        first = after is None
        if after is not None:
            ctypes.memmove(token_in, after, len(after))
        while True:
            attr = _attr()
            struct.pack_into("QQQQII", attr, 0, 0 if first else ctypes.addressof(token_in),
                             ctypes.addressof(token_out), ctypes.addressof(kbuf),
                             ctypes.addressof(vbuf), chunk, self.fd)
            ret = _libc.syscall(_nr(), MAP_LOOKUP_BATCH, ctypes.byref(attr), _ATTR_SIZE)
            err = ctypes.get_errno() if ret < 0 else 0
            count = struct.unpack_from("I", attr, 32)[0]
            if ret < 0 and err != errno_mod.ENOENT:
                raise BpfError(err, f"batch lookup in map {self.info.name}")
            if count:
                yield kbuf.raw[:count * ksz], vbuf.raw[:count * vsz]
            if ret < 0:  # ENOENT: that was the last batch
                return
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False


def map_info(fd: int) -> MapInfo:
    buf = ctypes.create_string_buffer(96)
    attr = _attr()
    struct.pack_into("IIQ", attr, 0, fd, len(buf), ctypes.addressof(buf))
    _call(OBJ_GET_INFO_BY_FD, attr, "map info")
    mtype, mid, ksz, vsz, maxe, flags = struct.unpack_from("IIIIII", buf, 0)
    name = buf.raw[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(mtype, mid, ksz, vsz, maxe, flags, name)


# ---- pins ----------------------------------------------------------------------------------


def obj_pin(fd: int, path: str) -> None:
    raw = ctypes.create_string_buffer(path.encode())
    attr = _attr()
    struct.pack_into("QI", attr, 0, ctypes.addressof(raw), fd)
    _call(OBJ_PIN, attr, f"pin {path}")


def obj_get(path: str, flags: int = 0) -> int:
    raw = ctypes.create_string_buffer(path.encode())
    attr = _attr()
    struct.pack_into("QII", attr, 0, ctypes.addressof(raw), 0, flags)
    return _call(OBJ_GET, attr, f"open pin {path}")


# ---- programs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    tag: str
    name: str
    map_ids: tuple[int, ...]


def prog_info(fd: int) -> ProgInfo:
    ids = (ctypes.c_uint32 * 64)()
    buf = ctypes.create_string_buffer(232)
    struct.pack_into("I", buf, 52, 64)
    struct.pack_into("Q", buf, 56, ctypes.addressof(ids))
    attr = _attr()
    struct.pack_into("IIQ", attr, 0, fd, len(buf), ctypes.addressof(buf))
    _call(OBJ_GET_INFO_BY_FD, attr, "program info")
    ptype, pid = struct.unpack_from("II", buf, 0)
    tag = buf.raw[8:16].hex()
    nr_maps = struct.unpack_from("I", buf, 52)[0]
    name = buf.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(ptype, pid, tag, name, tuple(ids[:min(nr_maps, 64)]))


def _ids(cmd: int) -> list[int]:
    out: list[int] = []
    attr = _attr()
    current = 0
    while True:
        struct.pack_into("II", attr, 0, current, 0)
        if _libc.syscall(_nr(), cmd, ctypes.byref(attr), _ATTR_SIZE) < 0:
            err = ctypes.get_errno()
            if err == errno_mod.ENOENT:
                return out
            raise BpfError(err, "list BPF objects")
        current = struct.unpack_from("I", attr, 4)[0]
        out.append(current)


def prog_ids() -> list[int]:
    """Every BPF program loaded in the system (for leak checks)."""
    return _ids(PROG_GET_NEXT_ID)


def map_ids() -> list[int]:
    """Every BPF map in the system (for leak checks)."""
    return _ids(MAP_GET_NEXT_ID)


def prog_fd_by_id(prog_id: int) -> int:
    attr = _attr()
    struct.pack_into("I", attr, 0, prog_id)
    return _call(PROG_GET_FD_BY_ID, attr, f"open program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    attr = _attr()
    struct.pack_into("I", attr, 0, map_id)
    return _call(MAP_GET_FD_BY_ID, attr, f"open map id {map_id}")


def prog_load(prog_type: int, insns: bytes, name: str = "", license: str = "GPL",
              expected_attach_type: int = 0, attach_btf_id: int = 0,
              log_size: int = 65536, log_level: int = 1, log_out: list[str] | None = None) -> int:
    """Load instructions (capability probes, and the programs bcc compiled for netctl).
    A refusal raises BpfError whose ``log`` holds the verifier's log; on success the log
    (e.g. the statistics of ``log_level=4``) is appended to ``log_out`` when given."""
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size)
    attr = _attr()
    struct.pack_into("IIQQIIQ", attr, 0, prog_type, len(insns) // 8,
                     ctypes.addressof(insn_buf), ctypes.addressof(lic), log_level, log_size,
                     ctypes.addressof(log))
    encoded = name.encode()[:15]
    attr[48:48 + len(encoded)] = encoded
    struct.pack_into("I", attr, 68, expected_attach_type)
    struct.pack_into("I", attr, 108, attach_btf_id)
    ret = _libc.syscall(_nr(), PROG_LOAD, ctypes.byref(attr), _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        text = log.value.decode(errors="replace")
        raise BpfError(err, f"load {name or 'program'}", text)
    if log_out is not None:
        log_out.append(log.value.decode(errors="replace"))
    return ret


@dataclass(frozen=True)
class TestRun:
    __test__ = False

    retval: int
    duration_ns: int
    data_out: bytes


def test_run(prog_fd: int, data: bytes, repeat: int = 1, out_size: int | None = None) -> TestRun:
    """Run a program on ``data`` with BPF_PROG_TEST_RUN (XDP and sched_cls take a frame).
    ``duration_ns`` is the kernel's mean time per run."""
    data_in = ctypes.create_string_buffer(data, len(data))
    size_out = out_size if out_size is not None else len(data) + 256
    data_out = ctypes.create_string_buffer(max(size_out, 1))
    attr = _attr()
    struct.pack_into("IIIIQQII", attr, 0, prog_fd, 0, len(data), size_out,
                     ctypes.addressof(data_in), ctypes.addressof(data_out), repeat, 0)
    _call(PROG_TEST_RUN, attr, "test run")
    _, retval, _, got = struct.unpack_from("IIII", attr, 0)
    duration = struct.unpack_from("I", attr, 36)[0]
    return TestRun(retval, duration, data_out.raw[:min(got, size_out)])


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    raw = ctypes.create_string_buffer(name.encode())
    attr = _attr()
    struct.pack_into("QI", attr, 0, ctypes.addressof(raw), prog_fd)
    return _call(RAW_TRACEPOINT_OPEN, attr, f"attach to raw tracepoint {name}")


# ---- links -------------------------------------------------------------------------------


def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> int:
    """A bpf_link of ``prog_fd`` to ``target_fd`` (an interface index for XDP and tcx); the
    program stays attached while the link is open or pinned."""
    attr = _attr()
    struct.pack_into("IIII", attr, 0, prog_fd, target_fd, attach_type, flags)
    return _call(LINK_CREATE, attr, "link create")


def link_update(link_fd: int, prog_fd: int, old_prog_fd: int | None = None) -> None:
    """Make the link run ``prog_fd`` instead, atomically (each packet sees one program or the
    other).  With ``old_prog_fd`` the kernel swaps only if the link still runs that program
    (else EPERM): nobody else's change is overwritten unseen."""
    attr = _attr()
    flags = F_REPLACE if old_prog_fd is not None else 0
    struct.pack_into("IIII", attr, 0, link_fd, prog_fd, flags,
                     old_prog_fd if old_prog_fd is not None else 0)
    _call(LINK_UPDATE, attr, "link update")


def link_detach(link_fd: int) -> None:
    """Take the link's program off its hook now; the link object stays (defunct) until its
    last fd and pin are gone."""
    attr = _attr()
    struct.pack_into("I", attr, 0, link_fd)
    _call(LINK_DETACH, attr, "link detach")


@dataclass(frozen=True)
class LinkInfo:
    type: int           # LINK_TYPE_*
    id: int
    prog_id: int
    ifindex: int        # XDP and tcx links: the interface (0 once it is gone or detached)
    attach_type: int    # tcx links: TCX_INGRESS or TCX_EGRESS; XDP links: ATTACH_XDP

    @property
    def defunct(self) -> bool:
        """Detached, or its interface is gone: it runs nowhere any more."""
        return self.ifindex == 0


def link_info(fd: int) -> LinkInfo:
    # struct bpf_link_info: type, id, prog_id, then a union 8-aligned at 16 whose XDP
    # member is {ifindex} and whose tcx member is {ifindex, attach_type}.
    buf = ctypes.create_string_buffer(64)
    attr = _attr()
    struct.pack_into("IIQ", attr, 0, fd, len(buf), ctypes.addressof(buf))
    _call(OBJ_GET_INFO_BY_FD, attr, "link info")
    ltype, lid, prog_id, ifindex, attach_type = struct.unpack_from("IIIxxxxII", buf, 0)
    if ltype == LINK_TYPE_XDP:
        attach_type = ATTACH_XDP
    elif ltype != LINK_TYPE_TCX:
        ifindex = attach_type = 0
    return LinkInfo(ltype, lid, prog_id, ifindex, attach_type)


def link_fd_by_id(link_id: int) -> int:
    attr = _attr()
    struct.pack_into("I", attr, 0, link_id)
    return _call(LINK_GET_FD_BY_ID, attr, f"open link id {link_id}")


def link_ids() -> list[int]:
    """Every bpf_link in the system (for leak checks)."""
    return _ids(LINK_GET_NEXT_ID)


@dataclass(frozen=True)
class Attached:
    """One program on a multi-program hook (tcx), in the order they run."""

    prog_id: int
    link_id: int        # 0: attached without a link (BPF_PROG_ATTACH)


def prog_query(ifindex: int, attach_type: int, room: int = 64) -> list[Attached]:
    """The programs on a tcx hook of interface ``ifindex`` (in this network namespace), in
    the order they run."""
    prog_ids = (ctypes.c_uint32 * room)()
    link_ids = (ctypes.c_uint32 * room)()
    attr = _attr()
    struct.pack_into("IIIIQI", attr, 0, ifindex, attach_type, 0, 0,
                     ctypes.addressof(prog_ids), room)
    struct.pack_into("Q", attr, 40, ctypes.addressof(link_ids))
    _call(PROG_QUERY, attr, f"query programs of interface {ifindex}")
    count = min(struct.unpack_from("I", attr, 24)[0], room)
    return [Attached(prog_ids[i], link_ids[i]) for i in range(count)]
