"""A cache of compiled programs, so that a datapath is built without LLVM when the same
programs were compiled before.

bcc's compile (LLVM) is most of a cold `netctl apply`: about 3 to 4 seconds for the six
programs here, where loading them (the verifier) takes about one.  The bytecode depends only
on the program text, the `-D` constants other than the pin paths, bcc and the kernel headers
it compiled against, so it is kept after a compile under a key of exactly those, with what a
later build needs to reproduce bcc's work without it:

* every map the programs use, as bcc created it (type, key and value size, entries, flags,
  name) and where it is pinned (relative to the build's pin directory, or to the conntrack
  pin, which builds share);
* for each program its instructions with the map references found in them (BPF_LD_IMM64
  with a map fd: the instruction index and the map it names).

A build from the cache creates the maps (opening those already pinned, as bcc does), writes
their file descriptors into the instructions, loads and pins the programs.  The verifier
checks them as it checks a fresh compile.  The cache lives in /var/cache/netctl/programs
(root only; set NETCTL_PROGRAM_CACHE to another directory, or to "off"), keeps the most
recently used entries, and an entry that does not read back is ignored and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from ..kernel import bpfsys

DEFAULT_DIR = "/var/cache/netctl/programs"
KEEP = 16                  # entries kept; the least recently used go first
_FORMAT = 1
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
_PSEUDO_MAP_VALUE = 2


def cache_dir() -> Path | None:
    setting = os.environ.get("NETCTL_PROGRAM_CACHE", DEFAULT_DIR)
    return None if setting == "off" else Path(setting)


def cache_key(sources: list[str], flags: list[str]) -> str:
    """What the bytecode depends on: the translation units, the flags but the pin paths,
    bcc's version and the headers bcc compiles against."""
    h = hashlib.sha256(f"netctl-programs-{_FORMAT}".encode())
    for text in sources:
        h.update(hashlib.sha256(text.encode()).digest())
    for flag in flags:
        if "_PIN" not in flag.split("=", 1)[0]:
            h.update(flag.encode() + b"\0")
    try:
        import bcc

        h.update(str(getattr(bcc, "__version__", "?")).encode())
    except ImportError:
        pass
    release = os.uname().release
    h.update(os.path.realpath(f"/lib/modules/{release}/build").encode())
    return h.hexdigest()[:32]


def _map_references(insns: bytes) -> list[tuple[int, int]]:
    """(instruction index, map fd) of every map reference in the instructions."""
    out = []
    i = 0
    while i + 16 <= len(insns):
        code, regs = insns[i], insns[i + 1]
        if code == _LD_IMM64:
            if (regs >> 4) in (_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE):
                out.append((i // 8, struct.unpack_from("<i", insns, i + 4)[0]))
            i += 16
        else:
            i += 8
    return out


def _pins(pin_dir: str, ct_pin: str) -> dict[int, str]:
    """Map id -> where it is pinned, as a path relative to the pin directory, or "@ct" plus
    the suffix of a pin next to the conntrack pin."""
    out: dict[int, str] = {}
    candidates = [(os.path.join(pin_dir, n), n) for n in os.listdir(pin_dir)]
    ct_parent = os.path.dirname(ct_pin)
    if os.path.isdir(ct_parent):
        base = os.path.basename(ct_pin)
        candidates += [(os.path.join(ct_parent, n), "@ct" + n[len(base):])
                       for n in os.listdir(ct_parent) if n.startswith(base)]
    for path, name in candidates:
        try:
            fd = bpfsys.obj_get(path)
        except OSError:
            continue
        try:
            out[bpfsys.map_info(fd).id] = name
        except OSError:   # a program's pin
            pass
        finally:
            os.close(fd)
    return out


def _pinned_specs(pin_dir: str, ct_pin: str) -> dict[str, dict]:
    """The layout of every map pinned for a build, by where it is pinned (opened by its pin:
    opening a map by id would need CAP_SYS_ADMIN)."""
    out: dict[str, dict] = {}
    by_id = _pins(pin_dir, ct_pin)
    paths = {where: (ct_pin + where[3:] if where.startswith("@ct")
                     else os.path.join(pin_dir, where)) for where in by_id.values()}
    for where, path in paths.items():
        fd = bpfsys.obj_get(path)
        try:
            out[where] = _spec(bpfsys.map_info(fd))
        finally:
            os.close(fd)
    return out


def describe(insns: bytes, pin_dir: str, ct_pin: str, specs: dict[str, dict],
             by_id: dict[int, str] | None = None) -> list[list]:
    """The map references of a program's instructions as [index, where] pairs (``where``:
    the map's pin, see _pins), adding each map's layout to ``specs``.  Run where the program
    was compiled, while bcc's map fds are open.  Raises LookupError for a map that is not
    pinned where a build can find it (then nothing is cached)."""
    by_id = by_id if by_id is not None else _pins(pin_dir, ct_pin)
    relocations = []
    for index, fd in _map_references(insns):
        info = bpfsys.map_info(fd)
        where = by_id.get(info.id)
        if where is None:
            raise LookupError(f"map {info.name} is not pinned")
        specs[where] = _spec(info)
        relocations.append([index, where])
    return relocations


def _spec(info: bpfsys.MapInfo) -> dict:
    return {"type": info.type, "key_size": info.key_size, "value_size": info.value_size,
            "max_entries": info.max_entries, "flags": info.flags, "name": info.name}


def store(key: str, roles: dict[str, dict], specs: dict[str, dict], pin_dir: str,
          ct_pin: str) -> None:
    """Keep a build's programs: role -> {"name": kernel name, "insns": bytes, "relocations":
    from describe()}, and the layout of every map pinned for the build (also those no
    program refers to: status reads them).  Best effort: a cache that cannot be written only
    means that the next build compiles again."""
    root = cache_dir()
    if root is None:
        return
    specs = dict(specs)
    for where, spec in _pinned_specs(pin_dir, ct_pin).items():
        specs.setdefault(where, spec)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".new-"))
    try:
        meta_roles = {}
        for role, info in roles.items():
            (tmp / f"{role}.insns").write_bytes(info["insns"])
            meta_roles[role] = {"name": info["name"], "relocations": info["relocations"]}
        (tmp / "meta.json").write_text(json.dumps({"format": _FORMAT, "maps": specs,
                                                   "roles": meta_roles}))
        target = root / key
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root)


def _prune(root: Path) -> None:
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def lookup(key: str) -> tuple[dict, dict[str, bytes]] | None:
    """The cached entry (meta, role -> instructions), or None."""
    root = cache_dir()
    if root is None:
        return None
    entry = root / key
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != _FORMAT:
            return None
        insns = {role: (entry / f"{role}.insns").read_bytes() for role in meta["roles"]}
        os.utime(entry)
    except (OSError, ValueError, KeyError):
        return None
    return meta, insns


def materialize(meta: dict, insns: dict[str, bytes], pin_dir: str,
                ct_pin: str) -> tuple[dict[str, bytes], dict[str, int]]:
    """Create (or open, when pinned already) and pin every map of a cached entry, and return
    the instructions with their map references pointing at them, and the maps' fds (close
    them once the programs are loaded: the programs and the pins hold the maps then)."""
    fds: dict[str, int] = {}
    try:
        for where, spec in meta["maps"].items():
            path = ct_pin + where[3:] if where.startswith("@ct") else os.path.join(pin_dir,
                                                                                  where)
            if os.path.exists(path):
                fd = bpfsys.obj_get(path)
                have = bpfsys.map_info(fd)
                if (have.type, have.key_size, have.value_size, have.max_entries) != (
                        spec["type"], spec["key_size"], spec["value_size"],
                        spec["max_entries"]):
                    os.close(fd)
                    raise OSError(f"{path} is pinned with another layout")
            else:
                m = bpfsys.Map.create(spec["type"], spec["key_size"], spec["value_size"],
                                      spec["max_entries"], spec["flags"], spec["name"])
                fd, m.fd = m.fd, -1
                bpfsys.obj_pin(fd, path)
            fds[where] = fd
        out = {}
        for role, code in insns.items():
            patched = bytearray(code)
            for index, where in meta["roles"][role]["relocations"]:
                struct.pack_into("<i", patched, index * 8 + 4, fds[where])
            out[role] = bytes(patched)
        return out, fds
    except BaseException:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
