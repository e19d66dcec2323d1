"""A minimal reader of BTF, the kernel's type information (/sys/kernel/btf/vmlinux).

Just enough to find a kernel function's BTF type id by name, which an fentry/fexit program
needs as ``attach_btf_id`` when it is loaded, and the byte offset of a struct member (the
drop tracer reads a few `struct sk_buff` fields, whose offsets in the running kernel the
installed headers may not know).  The format (Documentation/bpf/btf.rst):

* a header: magic 0xEB9F, version, flags, ``hdr_len``, then the offsets (relative to the
  end of the header) and lengths of the type section and the string section;
* the type section: ``struct btf_type`` records (``name_off``, ``info``, ``size``/``type``,
  12 bytes each), numbered from 1 in order, each followed by extra data whose size depends
  on its kind (bits 24-28 of ``info``) and on ``vlen`` (bits 0-15);
* the string section: NUL-terminated names that ``name_off`` points into.

Only the host's byte order is handled (the kernel's own BTF is always in it).  Nothing here
needs privileges: /sys/kernel/btf/vmlinux is world-readable.
"""

from __future__ import annotations

import struct
import sys
from functools import cache

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F

KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# bytes after the 12-byte btf_type: fixed part, and per vlen item
_FIXED = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_ITEM = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8,
             KIND_DATASEC: 12, KIND_ENUM64: 12}
_KNOWN = set(range(KIND_INT, KIND_ENUM64 + 1))
_HEADER = struct.Struct("=HBBIIIII")
_TYPE = struct.Struct("=III")


class BtfError(ValueError):
    """The data is not BTF this reader understands (bad magic, unknown kind, truncated)."""


class Btf:
    """Parsed BTF: ``kinds[id]`` and ``name_offs[id]`` for every type id (id 0 is void)."""

    def __init__(self, data: bytes):
        if len(data) < _HEADER.size:
            raise BtfError("shorter than a BTF header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            _HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            order = "other-endian " if magic == 0x9FEB else ""
            raise BtfError(f"bad magic {magic:#06x} ({order}not BTF for this host)")
        type_start, str_start = hdr_len + type_off, hdr_len + str_off
        if type_start + type_len > len(data) or str_start + str_len > len(data):
            raise BtfError("sections extend past the end of the data")
        self.strings = data[str_start:str_start + str_len]
        kinds = [0]
        name_offs = [0]
        positions = [0]
        pos, end = type_start, type_start + type_len
        unpack = _TYPE.unpack_from
        while pos < end:
            name_off, info, _size = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            if kind not in _KNOWN:
                raise BtfError(f"type id {len(kinds)}: unknown kind {kind}")
            positions.append(pos)
            pos += 12 + _FIXED.get(kind, 0) + _PER_ITEM.get(kind, 0) * (info & 0xFFFF)
            kinds.append(kind)
            name_offs.append(name_off)
        if pos != end:
            raise BtfError("type section does not end on a type boundary")
        self.kinds = kinds
        self.name_offs = name_offs
        self._data = data
        self._positions = positions

    @classmethod
    def from_file(cls, path: str = VMLINUX) -> Btf:
        with open(path, "rb") as f:
            return cls(f.read())

    def __len__(self) -> int:
        """Number of type ids, void (id 0) included."""
        return len(self.kinds)

    def name(self, type_id: int) -> str:
        off = self.name_offs[type_id]
        end = self.strings.find(b"\0", off)
        return self.strings[off:end if end >= 0 else None].decode(errors="replace")

    def _string_offsets(self, name: str) -> set[int]:
        """Offsets in the string section where exactly ``name`` starts."""
        raw = name.encode() + b"\0"
        found = set()
        if self.strings.startswith(raw):
            found.add(0)
        start = 0
        while (hit := self.strings.find(b"\0" + raw, start)) >= 0:
            found.add(hit + 1)
            start = hit + 1
        return found

    def find(self, name: str, kind: int) -> int | None:
        """The id of the first type of ``kind`` called ``name``, or None."""
        if not name:
            return None
        offsets = self._string_offsets(name)
        if not offsets:
            return None
        for type_id, (k, off) in enumerate(zip(self.kinds, self.name_offs, strict=True)):
            if k == kind and off in offsets:
                return type_id
        return None

    def func_id(self, name: str) -> int | None:
        """The BTF id of the kernel function ``name`` (a BTF_KIND_FUNC), or None."""
        return self.find(name, KIND_FUNC)

    def member_offset(self, struct_name: str, member: str) -> int | None:
        """The byte offset of ``member`` in ``struct struct_name``, looking through
        anonymous struct and union members (as C does), or None when there is no such
        member, or it is a bit field."""
        type_id = self.find(struct_name, KIND_STRUCT)
        if type_id is None:
            return None
        return self._member_offset(type_id, member, 0)

    def _member_offset(self, type_id: int, member: str, depth: int) -> int | None:
        if depth > 8:
            return None
        pos = self._positions[type_id]
        _name_off, info, _size = _TYPE.unpack_from(self._data, pos)
        bitfields = bool(info >> 31)
        for i in range(info & 0xFFFF):
            name_off, mtype, moff = struct.unpack_from("=III", self._data, pos + 12 + 12 * i)
            bits = moff & 0xFFFFFF if bitfields else moff
            if bitfields and moff >> 24:
                continue   # a bit field
            if name_off == 0:   # anonymous struct or union: its members are ours
                inner = self._resolve(mtype)
                if self.kinds[inner] in (KIND_STRUCT, KIND_UNION):
                    found = self._member_offset(inner, member, depth + 1)
                    if found is not None and bits % 8 == 0:
                        return bits // 8 + found
                continue
            if self._name_at(name_off) == member:
                return bits // 8 if bits % 8 == 0 else None
        return None

    def raw_tracepoint_args(self, event: str) -> list[str] | None:
        """What a raw tracepoint program gets in ``args[]`` for ``event``: per argument the
        struct a pointer argument points to ("sock", "sk_buff"), or "" for anything else;
        None when the kernel has no such tracepoint.  From the ``btf_trace_<event>``
        typedef, a pointer to the prototype whose first parameter is the tracepoint's
        private data (not passed to the program)."""
        typedef = self.find(f"btf_trace_{event}", KIND_TYPEDEF)
        if typedef is None:
            return None
        ptr = self._resolve(typedef)
        if self.kinds[ptr] != KIND_PTR:
            return None
        proto = self._resolve(_TYPE.unpack_from(self._data, self._positions[ptr])[2])
        if self.kinds[proto] != KIND_FUNC_PROTO:
            return None
        pos = self._positions[proto]
        vlen = _TYPE.unpack_from(self._data, pos)[1] & 0xFFFF
        out = []
        for i in range(1, vlen):   # parameter 0: the tracepoint's data pointer
            _name_off, ptype = struct.unpack_from("=II", self._data, pos + 12 + 8 * i)
            target = self._resolve(ptype)
            name = ""
            if self.kinds[target] == KIND_PTR:
                pointee = self._resolve(_TYPE.unpack_from(self._data,
                                                          self._positions[target])[2])
                if self.kinds[pointee] == KIND_STRUCT:
                    name = self.name(pointee)
            out.append(name)
        return out

    def _resolve(self, type_id: int) -> int:
        """Through typedefs and qualifiers to the type they name."""
        for _ in range(16):
            if self.kinds[type_id] not in (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST,
                                           KIND_RESTRICT, KIND_TYPE_TAG):
                break
            type_id = _TYPE.unpack_from(self._data, self._positions[type_id])[2]
        return type_id

    def _name_at(self, off: int) -> str:
        end = self.strings.find(b"\0", off)
        return self.strings[off:end if end >= 0 else None].decode(errors="replace")


@cache
def vmlinux() -> Btf:
    """The running kernel's BTF, parsed once per process."""
    return Btf.from_file(VMLINUX)


def func_id(name: str, path: str = VMLINUX) -> int | None:
    """The BTF id of kernel function ``name`` in ``path`` (default: the running kernel)."""
    btf = vmlinux() if path == VMLINUX else Btf.from_file(path)
    return btf.func_id(name)


if __name__ == "__main__":  # pragma: no cover - `python -m netctl.kernel.btf NAME...`
    for arg in sys.argv[1:]:
        print(arg, func_id(arg))
