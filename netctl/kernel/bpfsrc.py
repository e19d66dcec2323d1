"""Where netctl's BPF C lives and how it is handed to bcc: the one place both the datapath
and the tracers take their sources from.

The sources ship inside the package (``netctl/bpf``, package data in the wheel) and are
found with importlib.resources, so an installed netctl needs no checkout.  In the source
tree ``netctl/bpf`` and ``netctl/policies`` are symbolic links to the repository's ``bpf/``
and ``policies/``: a checkout (or an editable install of it) reads the repository's files
through the same lookup.

bcc rewrites map operations (``table.lookup(&key)``) only in the main file of a compile,
not in included headers.  So an entry file's own quoted includes (``#include "netctl_*.h"``,
from bpf/include/) are inlined here, each under a ``#line`` directive so that compiler
errors still name the real file and line; system includes stay as they are.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from ..errors import InstallError


def package_dir(name: str) -> Path:
    """The directory ``name`` of netctl's package data (``bpf``, ``policies``), resolved.

    Not checked here: a missing file is reported where it is read (``translation_unit``),
    so that importing netctl never fails for want of its BPF sources."""
    return (Path(str(resources.files("netctl"))) / name).resolve()


BPF_DIR = package_dir("bpf")
INCLUDE_DIR = BPF_DIR / "include"
TRACE_DIR = BPF_DIR / "trace"
POLICIES_DIR = package_dir("policies")

_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def translation_unit(entry: Path) -> str:
    """The entry file with its quoted includes inlined (each header once).

    Raises InstallError when the entry file or one of its headers is missing or unreadable
    (an incomplete installation: the files ship with netctl)."""
    out: list[str] = []
    _inline(entry, out, set(), None)
    return "".join(out)


def _inline(path: Path, out: list[str], seen: set[Path], included_at: str | None) -> None:
    seen.add(path)
    try:
        text = path.read_text()
    except OSError as exc:
        what = f"BPF header {path.name} (included at {included_at})" if included_at \
            else f"BPF source {path}"
        raise InstallError(
            f"{what} cannot be read: {exc.strerror or exc}; netctl's installation is "
            f"incomplete (its BPF sources belong in {BPF_DIR}): reinstall the package"
        ) from None
    out.append(f'#line 1 "{path}"\n')
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        match = _QUOTED_INCLUDE.match(line)
        if not match:
            out.append(line)
            continue
        header = (path.parent / match.group(1))
        if not header.exists():
            header = INCLUDE_DIR / match.group(1)
        header = header.resolve()
        if header not in seen:
            _inline(header, out, seen, f"{path}:{number}")
        out.append(f'#line {number + 1} "{path}"\n')


_OPAQUE = re.compile(r"^struct (bpf_\w+) \{\n((?:\s*__u(?:32|64)\s+\w+(?:\[\d+\])?;\n)+)\}[^;\n]*;",
                     re.M)


def missing_uapi_structs(release: str | None = None) -> str:
    """C definitions of the opaque ``struct bpf_*`` types (fields of __u32/__u64 only) that
    the kernel headers' uapi ``<linux/bpf.h>`` has and bcc's copy of that header lacks;
    "" when there are none.

    bcc replaces the kernel's uapi ``<linux/bpf.h>`` with the copy it was built with, and
    newer kernel headers take ``sizeof`` of opaque types that copy lacks (bcc 0.26 with the
    6.12 headers: ``struct bpf_wq``, ``bpf_rb_root``, ``bpf_rb_node``, ``bpf_refcount``),
    which fails every program that includes ``<net/sock.h>``.  Put before the program,
    the kernel's own definitions complete them.  bcc's copy is read from libbcc, which
    holds it as text."""
    import os

    release = release or os.uname().release
    text = ""
    for tree in ("source", "build"):
        uapi = Path(f"/lib/modules/{release}/{tree}/include/uapi/linux/bpf.h")
        if uapi.exists():
            text = uapi.read_text(errors="replace")
            break
    found = list(_OPAQUE.finditer(text))
    if not found:
        return ""
    bundled = b""
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "/libbcc.so" in line}
    for lib in sorted(libs):
        with open(lib, "rb") as f:
            bundled += f.read()
    if not bundled:
        return ""
    missing = [m.group(0) for m in found
               if f"struct {m.group(1)} {{".encode() not in bundled]
    return "\n".join(["#include <linux/types.h>", *missing, ""]) if missing else ""
