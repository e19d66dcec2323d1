"""Where netctl's BPF C lives and how it is handed to bcc: the one place both the datapath
and the tracers take their sources from.

bcc rewrites map operations (``table.lookup(&key)``) only in the main file of a compile,
not in included headers.  So an entry file's own quoted includes (``#include "netctl_*.h"``,
from bpf/include/) are inlined here, each under a ``#line`` directive so that compiler
errors still name the real file and line; system includes stay as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
INCLUDE_DIR = BPF_DIR / "include"
TRACE_DIR = BPF_DIR / "trace"

_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def translation_unit(entry: Path) -> str:
    """The entry file with its quoted includes inlined (each header once)."""
    out: list[str] = []
    _inline(entry, out, set())
    return "".join(out)


def _inline(path: Path, out: list[str], seen: set[Path]) -> None:
    seen.add(path)
    out.append(f'#line 1 "{path}"\n')
    for number, line in enumerate(path.read_text().splitlines(keepends=True), start=1):
        match = _QUOTED_INCLUDE.match(line)
        if not match:
            out.append(line)
            continue
        header = (path.parent / match.group(1))
        if not header.exists():
            header = INCLUDE_DIR / match.group(1)
        header = header.resolve()
        if header not in seen:
            _inline(header, out, seen)
        out.append(f'#line {number + 1} "{path}"\n')


_INCOMPLETE = re.compile(r"incomplete type 'struct (bpf_\w+)'")


def missing_uapi_structs(compiler_errors: str, release: str | None = None) -> str:
    """C definitions of the ``struct bpf_*`` types a compile found incomplete, taken from
    the kernel headers' own uapi ``<linux/bpf.h>``; "" when there were none or the headers
    do not define them all.

    bcc replaces the kernel's uapi ``<linux/bpf.h>`` with the copy it was built with, and
    newer kernel headers take ``sizeof`` of opaque types that copy lacks (bcc 0.26 with the
    6.12 headers: ``struct bpf_wq``, ``bpf_rb_root``, ``bpf_rb_node``, ``bpf_refcount``),
    which fails any program including ``<net/sock.h>``.  Put before the program, the
    kernel's definitions complete them."""
    names = sorted(set(_INCOMPLETE.findall(compiler_errors)))
    if not names:
        return ""
    import os

    release = release or os.uname().release
    text = ""
    for tree in ("source", "build"):
        with_uapi = Path(f"/lib/modules/{release}/{tree}/include/uapi/linux/bpf.h")
        if with_uapi.exists():
            text = with_uapi.read_text(errors="replace")
            break
    out = ["#include <linux/types.h>"]
    for name in names:
        m = re.search(r"^struct " + name + r" \{\n.*?^\}[^;\n]*;", text, re.M | re.S)
        if not m:
            return ""
        out.append(m.group(0))
    return "\n".join(out) + "\n"
