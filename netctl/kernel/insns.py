"""Programs as bytes: hand-assembled instructions for the capability probes (netctl doctor,
the tests), and what a loaded program is made of (its verified instructions, JIT size and
the verifier's count, for the cost budget)."""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from .bpfsys import OBJ_GET_INFO_BY_FD, _attr, _call


@dataclass(frozen=True)
class ProgSize:
    xlated: bytes          # the instructions as the verifier left them (calls resolved)
    jited_bytes: int
    verified_insns: int    # the verifier's "processed N insns"


def prog_size(fd: int) -> ProgSize:
    """What a loaded program is made of, for the cost budget (bench/budget.py)."""
    buf = ctypes.create_string_buffer(232)
    attr = _attr()
    struct.pack_into("IIQ", attr, 0, fd, len(buf), ctypes.addressof(buf))
    _call(OBJ_GET_INFO_BY_FD, attr, "program info")
    jited, xlated = struct.unpack_from("II", buf, 16)
    verified = struct.unpack_from("I", buf, 216)[0]
    code = ctypes.create_string_buffer(max(xlated, 1))
    buf = ctypes.create_string_buffer(232)
    struct.pack_into("I", buf, 20, xlated)
    struct.pack_into("Q", buf, 32, ctypes.addressof(code))
    struct.pack_into("IIQ", attr, 0, fd, len(buf), ctypes.addressof(buf))
    _call(OBJ_GET_INFO_BY_FD, attr, "program instructions")
    return ProgSize(code.raw[:xlated], jited, verified)



def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def mov64_imm(dst: int, imm: int) -> bytes:
    return insn(0xB7, dst, 0, 0, imm)


def mov64_reg(dst: int, src: int) -> bytes:
    return insn(0xBF, dst, src)


def add64_imm(dst: int, imm: int) -> bytes:
    return insn(0x07, dst, 0, 0, imm)


def st_dw_imm(dst: int, off: int, imm: int) -> bytes:
    return insn(0x7A, dst, 0, off, imm)


def ld_map_fd(dst: int, fd: int) -> bytes:
    # a 16-byte load of a map by fd (src=BPF_PSEUDO_MAP_FD)
    return insn(0x18, dst, 1, 0, fd) + insn(0, 0, 0, 0, 0)


def call(helper: int) -> bytes:
    return insn(0x85, 0, 0, 0, helper)


def exit_insn() -> bytes:
    return insn(0x95)


def return_imm(value: int) -> bytes:
    return mov64_imm(0, value) + exit_insn()
