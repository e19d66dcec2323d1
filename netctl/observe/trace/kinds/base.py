"""What every tracer kind is made of: where it attaches under each hook, the constants its
C needs, how its events decode and what its counters mean, and how monitor, top and the
exporter present them.  Each kind's C (bpf/trace/<kind>.c) holds all three variants of its
entry points; a ``Program`` names one entry function and what it attaches to.
"""

from __future__ import annotations

import ctypes
import ipaddress
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ....kernel.bpfsrc import TRACE_DIR
from .. import _kernel as kernel
from .._events import AF_INET, AF_INET6, TraceHead

if TYPE_CHECKING:
    from .._tracer import Tracer

HOOKS = ("fentry", "tracepoint", "kprobe")

RINGBUF_PAGES = 64                  # 256 KiB per tracer
FLOW_ENTRIES = 16384                # per-flow / per-socket hashes
STACK_ENTRIES = 4096                # distinct drop stacks kept (~1 KiB each, preallocated)
LOCATION_ENTRIES = 4096             # distinct drop locations counted
PROBE_INTERVAL_NS = 100_000_000     # tcp_probe: at most one event per flow per 100 ms


@dataclass(frozen=True)
class Program:
    """One entry function of a compiled tracer and where it attaches: a tracepoint
    ("skb:kfree_skb"), a raw tracepoint ("raw:tcp_probe") or a kernel function (fentry,
    kprobe)."""

    fn: str
    target: str

    @property
    def raw(self) -> str | None:
        """The raw tracepoint's name, for a raw tracepoint program."""
        return self.target.removeprefix("raw:") if self.target.startswith("raw:") else None


class Flow(NamedTuple):
    """A TCP flow as a tracepoint saw it: addresses as text, ports as numbers."""

    proto: str
    saddr: str
    sport: int
    daddr: str
    dport: int


def addr(family: int, raw) -> str | None:
    data = bytes(raw)
    if family == AF_INET:
        return str(ipaddress.IPv4Address(data[:4]))
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(data[:16]))
    return None


def percpu_sum(table, key) -> int:
    """The total over CPUs of a per-CPU counter."""
    return int(table.sum(key).value)


def array_counts(table, names: dict[int, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(len(table)):
        n = percpu_sum(table, ctypes.c_int(i))
        if n:
            name = names.get(i, str(i))
            out[name] = out.get(name, 0) + n
    return out


class Kind:
    """What one tracer kind attaches to, how it compiles and decodes."""

    name = ""
    source = ""
    event_type: type[ctypes.Structure] = TraceHead
    size_macro = ""
    tracepoints: tuple[tuple[str, str], ...] = ()   # (tracepoint, entry function)
    kprobe_fn = ""

    @property
    def path(self) -> Path:
        return TRACE_DIR / self.source

    def function(self) -> str | None:
        """The kernel function fentry and kprobe attach to here, None if it has none."""
        raise NotImplementedError

    def plan(self) -> dict[str, list[Program] | str]:
        """Per hook, the programs to attach, or why the hook cannot exist here at all (so
        its variant is not even compiled).  A hook that may exist is left to the real
        load and attach to decide."""
        plan: dict[str, list[Program] | str] = {}
        missing = [tp for tp, _ in self.tracepoints if kernel.tracepoint_format(
            *tp.split(":")) is None]
        plan["tracepoint"] = (f"no tracepoint {', '.join(missing)} in this kernel" if missing
                              else [Program(fn, tp) for tp, fn in self.tracepoints])
        func = self.function()
        if func is None:
            plan["fentry"] = plan["kprobe"] = "no kernel function to attach to"
            return plan
        if kernel.btf_function(func) is None:
            plan["fentry"] = f"{func} is not a function in the kernel's BTF ({kernel.VMLINUX})"
        else:
            plan["fentry"] = [Program(f"kfunc__{func}", func)]
        if func not in kernel.kallsyms_functions():
            plan["kprobe"] = f"{func} is not in {kernel.KALLSYMS}"
        else:
            plan["kprobe"] = [Program(self.kprobe_fn, func)]
        return plan

    def variants(self, hook: str, programs: list[Program]) -> list[list[Program]]:
        """The ways to attach the hook's programs, best first (a kind may offer a raw
        tracepoint before the tracepoint it replaces)."""
        return [programs]

    def cflags(self, hooks: set[str]) -> list[str]:
        flags = {
            "WITH_FENTRY": int("fentry" in hooks),
            "WITH_TRACEPOINT": int("tracepoint" in hooks),
            "WITH_KPROBE": int("kprobe" in hooks),
            "RINGBUF_PAGES": RINGBUF_PAGES,
            "FLOW_ENTRIES": FLOW_ENTRIES,
            self.size_macro: ctypes.sizeof(self.event_type),
            **self.constants(),
        }
        return [f"-D{name}={value}" for name, value in flags.items()]

    def constants(self) -> dict[str, int]:
        return {}

    def decode(self, ev: Any, tracer: Tracer) -> dict:
        raise NotImplementedError

    def counts(self, tracer: Tracer) -> dict:
        raise NotImplementedError

    # ---- presentation (no kernel needed: decoded events and counts in, text out) --------

    exported = False                  # `netctl exporter` opens it unless --no-kernel
    top_sections: dict[str, str] = {}  # `netctl top`'s sections it fills: name -> title

    @staticmethod
    def columns(e: dict) -> tuple[str, str]:
        """`netctl monitor`'s WHERE and WHAT columns for one decoded event."""
        raise NotImplementedError

    @classmethod
    def top_rows(cls, counts: dict) -> dict[str, Counter]:
        """Per section of ``top_sections``, the counters of ``counts()`` by row label."""
        return {}

    @classmethod
    def metrics(cls, counts: dict) -> list[Metric]:
        """The exporter's metric families for ``counts()`` (an exported kind has some)."""
        return []


class Metric(NamedTuple):
    """One exporter metric family: name (without ``_total``), Prometheus type, help text,
    label names and samples as (label values, value)."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], int]]




def endpoints(family: int, saddr, sport: int, daddr, dport: int) -> dict:
    """A socket's endpoints as events carry them (all None where the hook did not read
    them: fentry and kprobe get the addresses as struct fields it does not follow)."""
    if not family:
        return {"family": None, "saddr": None, "sport": None, "daddr": None, "dport": None}
    return {"family": kernel.FAMILIES.get(family, str(family)),
            "saddr": addr(family, saddr), "sport": sport,
            "daddr": addr(family, daddr), "dport": dport}
