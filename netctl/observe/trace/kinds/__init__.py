"""The tracer kinds, one module each, and the registry every list of kinds derives from
(the tracers, `netctl monitor --type`, `netctl top`, `netctl exporter`, the CLI's help).

A kind is a ``Kind`` subclass: its C (bpf/trace/<kind>.c), what it attaches to, how its
events decode and its counters read, and how they are presented (``columns``, ``top_rows``,
``metrics``).  docs/contributing.md lists the steps to add one.
"""

from __future__ import annotations

from .base import HOOKS, Flow, Kind, Metric, Program
from .cong import RAW_PROBE_FIELDS, CongKind
from .drop import DROP_FUNCTIONS, DropKind
from .retrans import RetransKind
from .socket import SOCKET_DROPS, SocketKind

KIND_TYPES: dict[str, type[Kind]] = {k.name: k for k in (DropKind, RetransKind, CongKind,
                                                          SocketKind)}
# What `netctl exporter` opens unless --no-kernel, and `netctl top` shows.
EXPORTED = tuple(name for name, k in KIND_TYPES.items() if k.exported)
IN_TOP = tuple(name for name, k in KIND_TYPES.items() if k.top_sections)

__all__ = ["DROP_FUNCTIONS", "EXPORTED", "HOOKS", "IN_TOP", "KIND_TYPES", "RAW_PROBE_FIELDS",
           "SOCKET_DROPS", "CongKind", "DropKind", "Flow", "Kind", "Metric", "Program",
           "RetransKind", "SocketKind"]
