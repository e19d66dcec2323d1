"""Checks that only look: the kernel version, privileges, BTF, headers, the JIT and the
mounts netctl uses."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from ...kernel.privilege import CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN
from ...paths import PIN_ROOT
from .base import BPFFS, BTF_PATH, DEBUGFS, MIN_KERNEL, PRIV_HINT, TRACEFS, Check, Context

# ---- checks that only look --------------------------------------------------------------


def check_kernel(_ctx: Context) -> Check:
    release = os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    need = ".".join(map(str, MIN_KERNEL))
    if version >= MIN_KERNEL:
        return Check("kernel", True, f"{release} (>= {need})", True)
    return Check("kernel", False, f"{release} is older than {need}: netctl's programs need "
                 f"bounded loops, ring buffers and BTF of {need}", True)


def check_privilege(ctx: Context) -> Check:
    names = {CAP_BPF: "CAP_BPF", CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_PERFMON: "CAP_PERFMON",
             CAP_SYS_ADMIN: "CAP_SYS_ADMIN"}
    have = ", ".join(n for c, n in names.items() if c in ctx.caps) or "none of them"
    euid = os.geteuid()
    if ctx.privileged:
        return Check("privilege", True, f"euid {euid}; effective: {have}", True)
    how = ("this root process lacks them (reduced capability bounding set?)" if euid == 0
           else "run as root")
    return Check("privilege", False, f"euid {euid}; effective: {have}: {PRIV_HINT} to load and "
                 f"attach programs; {how}", True)


def check_btf(_ctx: Context) -> Check:
    try:
        from ...kernel.btf import vmlinux
        size = os.path.getsize(BTF_PATH)
        types = len(vmlinux()) - 1
    except (OSError, ValueError) as exc:
        reason = f"{exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Check("btf", False, f"cannot read {BTF_PATH}: {reason} (kernel built without "
                     "CONFIG_DEBUG_INFO_BTF?); tracers need it for fentry and drop reasons",
                     True)
    return Check("btf", True, f"{BTF_PATH}: {size} bytes, {types} types", True)


def check_headers(_ctx: Context) -> Check:
    release = os.uname().release
    build = f"/lib/modules/{release}/build"
    is_link = os.path.islink(build)
    target = os.readlink(build) if is_link else ""
    if not os.path.isdir(build):
        dangling = f" (a link to {target}, which does not exist)" if is_link else ""
        return Check("headers", False, f"missing: no kernel headers at {build}{dangling}; bcc "
                     "cannot compile netctl's programs without them: `make setup` links "
                     "Debian's generic headers (linux-headers-amd64, -arm64...)", True)
    if not is_link:
        return Check("headers", True, f"matching: {build} is the running kernel's own "
                     "header tree", True)
    resolved = os.path.realpath(build)
    if release in os.path.basename(resolved.rstrip("/")) or release in target:
        return Check("headers", True, f"matching: {build} -> {target}", True)
    m = re.fullmatch(r"/usr/src/linux-headers-(.+)-(?:amd64|arm64|armmp|686-pae|686|"
                     r"powerpc64le|s390x|riscv64|loong64)", resolved)
    whose = f"Debian's headers of {m.group(1)}" if m else f"headers at {resolved}"
    return Check("headers", True, f"fallback: {build} -> {target}, {whose}, which do not match "
                 f"the running kernel {release}; bcc compiles with them and netctl reads "
                 "tracepoint arguments, never kernel struct fields", True)


JIT_PATH = "/proc/sys/net/core/bpf_jit_enable"


def check_jit(_ctx: Context) -> Check:
    """The BPF JIT: without it programs are interpreted, several times slower, and any
    benchmark figure is meaningless."""
    try:
        with open(JIT_PATH) as f:
            value = f.read().strip()
    except OSError as exc:
        return Check("jit", False, f"cannot read {JIT_PATH} ({exc.strerror}): whether the "
                     "BPF JIT is on is unknown", False)
    if value in ("1", "2"):
        return Check("jit", True, f"BPF JIT on ({JIT_PATH} = {value})", False)
    return Check("jit", False, f"BPF JIT off ({JIT_PATH} = {value}): programs are interpreted; "
                 f"performance figures are meaningless (echo 1 > {JIT_PATH})", False)


def check_bpffs(ctx: Context) -> Check:
    fstype = ctx.fstype(BPFFS)
    if fstype == "bpf":
        return Check("bpffs", True, f"bpffs at {BPFFS}", False)
    what = f"{BPFFS} is {fstype}, not bpffs" if fstype else f"bpffs not mounted at {BPFFS}"
    return Check("bpffs", False, f"{what}{ctx.mount_note()}; netctl pins under {PIN_ROOT}, "
                 "not here", False)


def check_pin_root(ctx: Context) -> Check:
    fstype = ctx.fstype(PIN_ROOT)
    if fstype == "bpf":
        return Check("pin_root", True, f"bpffs at {PIN_ROOT}", True)
    what = f"{PIN_ROOT} is {fstype}, not bpffs" if fstype else f"bpffs not mounted at {PIN_ROOT}"
    return Check("pin_root", False, f"{what}: `make setup` or the first `netctl apply` outside "
                 "`ip netns exec` mounts it", True)


def _mount_check(name: str, path: str, fstype: str, use: str) -> Callable[[Context], Check]:
    def check(ctx: Context) -> Check:
        found = ctx.fstype(path)
        if found == fstype:
            return Check(name, True, f"{fstype} at {path}", False)
        what = f"{path} is {found}, not {fstype}" if found else f"{fstype} not mounted at {path}"
        return Check(name, False, f"{what}{ctx.mount_note()}; {use}", False)
    return check


check_tracefs = _mount_check("tracefs", TRACEFS, "tracefs",
                             "tracers mount it when they need tracepoint ids and formats")
check_debugfs = _mount_check("debugfs", DEBUGFS, "debugfs", "netctl does not need it")


