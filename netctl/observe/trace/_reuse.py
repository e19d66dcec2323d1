"""Compiled tracers kept for reuse within one process, when NETCTL_TRACER_REUSE=1.

A tracer's compile (bcc, LLVM, the kernel headers) is most of what opening it costs: one to
three seconds here, about twenty-five in a virtual machine without KVM (the kernel matrix,
tests/kernels).  With reuse on, a closed tracer's compiled programs and maps stay loaded in
a pool; the next tracer of the same kind with the same compile flags takes them instead of
compiling: its programs are detached, its maps emptied (hashes cleared, arrays zeroed), its
ring buffer drained, so a reused tracer starts as a fresh one does.  Every compile then
covers all hooks the kind may have here, so a forced hook shares the compile too.

Off by default: a long-running `netctl monitor` opens its tracers once, and kept programs
hold kernel memory until the process ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Any

ENV = "NETCTL_TRACER_REUSE"

_pool: dict[tuple, list[Any]] = {}


def enabled() -> bool:
    return os.environ.get(ENV, "") == "1"


def take(key: tuple) -> Any | None:
    """A pooled compile with this key, or None."""
    free = _pool.get(key)
    return free.pop() if free else None


def give(key: tuple, bpf: Any) -> None:
    """Empty every map of ``bpf`` and keep it for the next ``take(key)``; its programs are
    detached by then.  A compile whose maps cannot be emptied is not kept."""
    try:
        _empty(bpf)
    except Exception:
        with contextlib.suppress(Exception):
            bpf.cleanup()
        return
    _pool.setdefault(key, []).append(bpf)


def ring(bpf: Any) -> list[Any]:
    """The one-element holder whose content receives ``bpf``'s ring buffer records (its
    ``_on_event``), opened once per compile: bcc adds a second consumer of the same ring
    when it is opened again, so a reused compile keeps the first and changes its owner."""
    holder = getattr(bpf, "_netctl_ring", None)
    if holder is None:
        holder = [None]

        def deliver(ctx, data, size, holder=holder) -> int:
            owner = holder[0]
            return owner._on_event(ctx, data, size) if owner is not None else 0

        bpf["events"].open_ring_buffer(deliver)
        bpf._netctl_ring = holder
    return holder


def _table_names(bpf: Any) -> list[str]:
    """Every map of the compile (bcc's Python side declares no such call: libbcc's C API)."""
    from bcc.libbcc import lib

    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return [lib.bpf_table_name(bpf.module, i).decode()
            for i in range(lib.bpf_num_tables(bpf.module))]


def _empty(bpf: Any) -> None:
    from bcc.table import RingBuf

    holder = ring(bpf)
    holder[0] = None
    bpf.ring_buffer_consume()          # records of the last owner: dropped
    for name in _table_names(bpf):
        table = bpf.get_table(name)
        if not isinstance(table, RingBuf):
            table.clear()              # arrays: zeroed; stack traces: kept (ids are stable)
