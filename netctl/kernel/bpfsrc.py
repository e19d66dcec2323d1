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
