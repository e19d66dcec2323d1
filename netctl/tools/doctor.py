"""`netctl doctor`: what this machine really offers netctl, found by trying it.

Every check does the real thing where it can: program types are probed by loading tiny
hand-assembled programs with bpf(2) (``netctl.bpfsys``, never bcc, whose compiles are slow),
attach points by attaching, the test-run and ring-buffer paths by running a program and
reading what it wrote, XDP and tc by attaching to a temporary veth pair.  A failure says
why (errno name and text, the verifier's first words, a missing PMU or mount).

Checks answer in the namespaces the process is in: under `ip netns exec` /sys is a fresh
sysfs, so bpffs, tracefs and debugfs mounted on the host are not visible, and the veth pair
is made in that network namespace.

Nothing is left behind: every fd is closed, the veth pair (with its XDP program, clsact
qdisc and filter) is deleted even when a step fails, and nothing is pinned or mounted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import json
import mmap
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from ..kernel import bpfsys, privilege
from ..kernel.privilege import CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN
from ..paths import PIN_ROOT

MIN_KERNEL = (5, 10)
BTF_PATH = "/sys/kernel/btf/vmlinux"
BPFFS = "/sys/fs/bpf"
TRACEFS = "/sys/kernel/tracing"
DEBUGFS = "/sys/kernel/debug"
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"
PRIV_HINT = "needs CAP_BPF/CAP_NET_ADMIN"

# functions an fentry or kprobe probe attaches to, first found wins
# (kfree_skb_reason became an inline wrapper of sk_skb_reason_drop in 6.11)
TRACE_FUNCS = ("tcp_retransmit_skb", "kfree_skb_reason", "sk_skb_reason_drop")
RAW_TRACEPOINT = "kfree_skb"
TRACEPOINT = ("skb", "kfree_skb")

XDP_PASS = 2
TC_ACT_OK = 0
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_DRV_MODE = 1 << 2
TC_INGRESS = "ffff:fff2"
TCA_BPF_FLAG_ACT_DIRECT = 1
HELPER_RINGBUF_OUTPUT = 130

_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
_PERF_ATTR_SIZE = 72                 # PERF_ATTR_SIZE_VER1: up to config2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool


class ProbeFailed(Exception):
    """A probe failed for a reason already phrased for the user."""


# ---- small helpers ------------------------------------------------------------------------


def _errno_text(err: int) -> str:
    return f"{errno_mod.errorcode.get(err, str(err))} ({os.strerror(err)})"


def _verifier_hint(log: str) -> str:
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return f"; verifier: {lines[-1].strip()}" if lines else ""


class Context:
    """What every probe needs to know: privileges and the mount table."""

    def __init__(self) -> None:
        self.caps = privilege.effective()
        self.privileged = (CAP_NET_ADMIN in self.caps
                           and (CAP_BPF in self.caps or CAP_SYS_ADMIN in self.caps))
        self.mounts = _mounts()
        self.host_mount_ns = _in_host_mount_ns()
        self.netns_name = _named_netns()

    def why(self, exc: BaseException, action: str) -> str:
        """``action`` failed with ``exc``: the reason, privilege first."""
        err = getattr(exc, "errno", None)
        if err is None and hasattr(exc, "code"):  # pyroute2's NetlinkError
            err = exc.code
        if err in (errno_mod.EPERM, errno_mod.EACCES) and not self.privileged:
            return f"{PRIV_HINT} ({action}: {_errno_text(err)})"
        if isinstance(err, int) and err > 0:
            text = f"{action}: {_errno_text(err)}"
        else:
            text = f"{action}: {exc}"
        return text + _verifier_hint(getattr(exc, "log", "") or "")

    def fstype(self, path: str) -> str | None:
        return self.mounts.get(path)

    def mount_note(self) -> str:
        """Why a mount under /sys may be missing here although the host has it."""
        if self.host_mount_ns is False:
            where = (f"; it runs in network namespace {self.netns_name}" if self.netns_name
                     else ", e.g. under `ip netns exec`")
            return (f" (this process is not in PID 1's mount namespace{where}: `ip netns exec` "
                    "remounts /sys)")
        if self.host_mount_ns is None and self.netns_name:
            return (f" (this process runs in network namespace {self.netns_name}: `ip netns "
                    "exec` remounts /sys in a mount namespace of its own)")
        return ""


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> dict[str, str]:
    """Mount point -> filesystem type; of stacked mounts the last (visible) one wins."""
    table: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                table[_unescape(parts[1])] = parts[2]
    return table


def _in_host_mount_ns() -> bool | None:
    try:
        return os.readlink("/proc/self/ns/mnt") == os.readlink("/proc/1/ns/mnt")
    except OSError:
        return None


def _named_netns() -> str | None:
    """The name under /run/netns of this process's network namespace, if it has one."""
    try:
        mine = os.stat("/proc/self/ns/net")
        names = sorted(os.listdir("/run/netns"))
    except OSError:
        return None
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{name}")
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return name
    return None


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _perf_event_open(ptype: int, config: int, config1: int = 0, config2: int = 0) -> int:
    nr = _NR_PERF_EVENT_OPEN.get(os.uname().machine)
    if nr is None:
        raise OSError(errno_mod.ENOSYS, f"perf_event_open number unknown on {os.uname().machine}")
    attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
    struct.pack_into("IIQQ", attr, 0, ptype, _PERF_ATTR_SIZE, config, 1)  # sample_period 1
    struct.pack_into("I", attr, 48, 1)                                     # wakeup_events 1
    struct.pack_into("QQ", attr, 56, config1, config2)
    fd = _libc.syscall(nr, ctypes.byref(attr), -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _perf_set_bpf(perf_fd: int, prog_fd: int) -> None:
    if _libc.ioctl(perf_fd, ctypes.c_ulong(PERF_EVENT_IOC_SET_BPF), prog_fd) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _frame(size: int = 64) -> bytes:
    """An Ethernet/IPv4/UDP frame padded to ``size`` bytes."""
    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    ip = bytes.fromhex("4500002e00004000401100000a0000010a000002")
    udp = struct.pack("!HHHH", 40000, 53, 26, 0)
    body = eth + ip + udp
    return body + bytes(size - len(body))


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
        from ..kernel.btf import vmlinux
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
                     "Debian's linux-headers-amd64", True)
    if not is_link:
        return Check("headers", True, f"matching: {build} is the running kernel's own "
                     "header tree", True)
    resolved = os.path.realpath(build)
    if release in os.path.basename(resolved.rstrip("/")) or release in target:
        return Check("headers", True, f"matching: {build} -> {target}", True)
    m = re.fullmatch(r"/usr/src/linux-headers-(.+)-amd64", resolved)
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


# ---- checks that load, run and attach ---------------------------------------------------


class Probes:
    """The probe programs, loaded once and shared by the checks that use them; closed by
    ``close()``."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.fds: dict[str, int] = {}
        self.errors: dict[str, str] = {}

    def load(self, key: str, prog_type: int, insns: bytes, **kw) -> int:
        if key in self.fds:
            return self.fds[key]
        if key in self.errors:
            raise ProbeFailed(self.errors[key])
        try:
            fd = bpfsys.prog_load(prog_type, insns, name=f"ndoc_{key}"[:15], **kw)
        except bpfsys.BpfError as exc:
            self.errors[key] = self.ctx.why(exc, "load refused")
            raise ProbeFailed(self.errors[key]) from None
        self.fds[key] = fd
        return fd

    def xdp(self) -> int:
        return self.load("xdp", bpfsys.PROG_XDP, bpfsys.return_imm(XDP_PASS))

    def sched_cls(self) -> int:
        return self.load("sched_cls", bpfsys.PROG_SCHED_CLS, bpfsys.return_imm(TC_ACT_OK))

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def check_prog_xdp(p: Probes) -> Check:
    p.xdp()
    return Check("prog_xdp", True, "loads (r0 = XDP_PASS; exit)", True)


def check_prog_sched_cls(p: Probes) -> Check:
    p.sched_cls()
    return Check("prog_sched_cls", True, "loads (r0 = TC_ACT_OK; exit)", True)


def check_prog_tracepoint(p: Probes) -> Check:
    fd = p.load("tracepoint", bpfsys.PROG_TRACEPOINT, bpfsys.return_imm(0))
    tracefs = next((d for d in (TRACEFS, f"{DEBUGFS}/tracing")
                    if p.ctx.fstype(d) == "tracefs"), None)
    event = "/".join(TRACEPOINT)
    if tracefs is None:
        return Check("prog_tracepoint", True, f"loads; attaching to {event} not tried: tracefs "
                     f"is not mounted{p.ctx.mount_note()}, and it gives the tracepoint id", True)
    try:
        with open(f"{tracefs}/events/{event}/id") as f:
            tp_id = int(f.read())
    except (OSError, ValueError) as exc:
        raise ProbeFailed(p.ctx.why(exc, f"loads, but the id of {event} is unreadable")) from None
    try:
        with _fd(_perf_event_open(PERF_TYPE_TRACEPOINT, tp_id)) as perf:
            _perf_set_bpf(perf, fd)
    except OSError as exc:
        raise ProbeFailed(p.ctx.why(exc, f"loads, but attaching to {event} failed")) from None
    return Check("prog_tracepoint", True, f"loads and attaches to {event} (perf event)", True)


def check_prog_raw_tracepoint(p: Probes) -> Check:
    fd = p.load("raw_tp", bpfsys.PROG_RAW_TRACEPOINT, bpfsys.return_imm(0))
    try:
        link = bpfsys.raw_tracepoint_open(RAW_TRACEPOINT, fd)
    except bpfsys.BpfError as exc:
        raise ProbeFailed(p.ctx.why(exc, f"loads, but attaching to {RAW_TRACEPOINT} "
                                    "failed")) from None
    os.close(link)
    return Check("prog_raw_tracepoint", True, f"loads and attaches to {RAW_TRACEPOINT}", False)


def check_prog_kprobe(p: Probes) -> Check:
    # Loading a kprobe-type program needs no kprobe support: attaching does.
    fd = p.load("kprobe", bpfsys.PROG_KPROBE, bpfsys.return_imm(0))
    try:
        with open(KPROBE_PMU) as f:
            pmu = int(f.read())
    except (OSError, ValueError):
        raise ProbeFailed(f"the program type loads, but the kernel has no kprobe PMU "
                          f"({os.path.dirname(KPROBE_PMU)} is missing: built without "
                          "CONFIG_KPROBES), so kprobes cannot be attached") from None
    errors = []
    for func in TRACE_FUNCS:
        name = ctypes.create_string_buffer(func.encode())
        try:
            with _fd(_perf_event_open(pmu, 0, ctypes.addressof(name), 0)) as perf:
                _perf_set_bpf(perf, fd)
        except OSError as exc:
            errors.append(p.ctx.why(exc, f"kprobe on {func}"))
            continue
        return Check("prog_kprobe", True, f"loads and attaches as a kprobe on {func}", False)
    raise ProbeFailed("the program type loads, but no kprobe attaches: " + "; ".join(errors))


def check_prog_fentry(p: Probes) -> Check:
    from ..kernel.btf import vmlinux

    try:
        btf = vmlinux()
    except (OSError, ValueError) as exc:
        raise ProbeFailed(f"no kernel BTF to name the target function ({exc})") from None
    target = next(((f, i) for f in TRACE_FUNCS if (i := btf.func_id(f)) is not None), None)
    if target is None:
        raise ProbeFailed(f"none of {', '.join(TRACE_FUNCS)} is a function in {BTF_PATH}")
    func, btf_id = target
    try:
        fd = p.load("fentry", bpfsys.PROG_TRACING, bpfsys.return_imm(0),
                    expected_attach_type=bpfsys.TRACE_FENTRY, attach_btf_id=btf_id)
    except ProbeFailed as exc:
        text = f"fentry on {func} (BTF id {btf_id}): {exc}"
        if p.ctx.privileged and "EPERM" in str(exc):
            text += (" although this process has CAP_BPF and CAP_PERFMON: the kernel refuses "
                     "fentry programs here (a security policy such as lockdown or an LSM)")
        raise ProbeFailed(text) from None
    try:
        link = bpfsys.link_create(fd, 0, bpfsys.TRACE_FENTRY)
    except bpfsys.BpfError as exc:
        raise ProbeFailed(p.ctx.why(exc, f"fentry on {func} loads, but attaching "
                                    "failed")) from None
    os.close(link)
    return Check("prog_fentry", True, f"loads and attaches to {func} (BTF id {btf_id})", False)


def check_test_run(p: Probes) -> Check:
    try:
        fd = p.xdp()
    except ProbeFailed as exc:
        raise ProbeFailed(f"no XDP probe to run ({exc})") from None
    try:
        result = bpfsys.test_run(fd, _frame(64))
    except bpfsys.BpfError as exc:
        raise ProbeFailed(p.ctx.why(exc, "BPF_PROG_TEST_RUN failed")) from None
    if result.retval != XDP_PASS:
        raise ProbeFailed(f"the XDP probe returned {result.retval}, not XDP_PASS ({XDP_PASS})")
    return Check("test_run", True, "BPF_PROG_TEST_RUN of the XDP probe on a 64-byte frame "
                 "returns XDP_PASS", True)


def check_ringbuf(p: Probes) -> Check:
    size = mmap.PAGESIZE
    marker = 0x6E657463  # "netc", stored as a sign-extended 64-bit value
    try:
        ring = bpfsys.Map.create(bpfsys.MAP_RINGBUF, 0, 0, size, name="ndoc_ringbuf")
    except bpfsys.BpfError as exc:
        raise ProbeFailed(p.ctx.why(exc, "cannot create a ring buffer")) from None
    with ring:
        insns = (bpfsys.st_dw_imm(10, -8, marker)
                 + bpfsys.ld_map_fd(1, ring.fd)
                 + bpfsys.mov64_reg(2, 10) + bpfsys.add64_imm(2, -8)
                 + bpfsys.mov64_imm(3, 8) + bpfsys.mov64_imm(4, 0)
                 + bpfsys.call(HELPER_RINGBUF_OUTPUT)
                 + bpfsys.return_imm(XDP_PASS))
        fd = p.load("ringbuf", bpfsys.PROG_XDP, insns)
        try:
            bpfsys.test_run(fd, _frame(64))
        except bpfsys.BpfError as exc:
            raise ProbeFailed(p.ctx.why(exc, "test run of the writer failed")) from None
        try:
            with (mmap.mmap(ring.fd, size, mmap.MAP_SHARED, mmap.PROT_READ, offset=0) as cons,
                  mmap.mmap(ring.fd, 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                            offset=size) as prod):
                consumer = struct.unpack_from("Q", cons, 0)[0]
                producer = struct.unpack_from("Q", prod, 0)[0]
                length, _pg_off = struct.unpack_from("II", prod, size)
                data = prod[size + 8:size + 16]
        except OSError as exc:
            raise ProbeFailed(p.ctx.why(exc, "cannot mmap the ring buffer")) from None
    if producer - consumer != 16:
        raise ProbeFailed(f"the producer position advanced by {producer - consumer}, not 16 "
                          "(8-byte header + 8 bytes)")
    if length != 8 or data != struct.pack("=q", marker):
        raise ProbeFailed(f"the record reads back wrong (length {length:#x}, data "
                          f"{data.hex()})")
    return Check("ringbuf", True, "bpf_ringbuf_output from XDP under test run: the producer "
                 "advanced by 16 and the record reads back through mmap", False)


# ---- the veth pair ------------------------------------------------------------------------


def _veth_checks(p: Probes) -> list[Check]:
    names = ("xdp_native_veth", "tc_clsact_veth")
    try:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError as exc:
        return [Check(n, False, f"pyroute2 is not importable: {exc}", True) for n in names]
    a, b = f"ndoc{os.getpid()}a"[:15], f"ndoc{os.getpid()}b"[:15]
    with IPRoute() as ipr:
        try:
            try:
                ipr.link("add", ifname=a, kind="veth", peer=b)
                index = ipr.link_lookup(ifname=a)[0]
            except (NetlinkError, OSError, IndexError) as exc:
                reason = p.ctx.why(exc, f"cannot create veth pair {a}/{b}")
                checks = [Check(n, False, reason, True) for n in names]
            else:
                checks = [_run(n, lambda fn=fn: fn(p, ipr, index, a), True)
                          for n, fn in zip(names, (_xdp_on_veth, _tc_on_veth), strict=True)]
        finally:
            left = _remove_links(ipr, (a, b), NetlinkError)
    if left:  # say so loudly: doctor must leave nothing behind
        for c in checks:
            c.ok = False
            c.detail += f"; and the veth pair could NOT be removed ({left})"
    return checks


def _remove_links(ipr, names: tuple[str, ...], netlink_error: type[Exception]) -> str:
    """Delete the links called ``names`` (deleting one end of a veth deletes both); return
    what could not be deleted, or ""."""
    problems = []
    for name in names:
        for index in ipr.link_lookup(ifname=name):
            try:
                ipr.link("del", index=index)
            except (netlink_error, OSError) as exc:
                if ipr.link_lookup(ifname=name):
                    problems.append(f"{name}: {exc}")
    return "; ".join(problems)


def _xdp_on_veth(p: Probes, ipr, index: int, dev: str) -> Check:
    fd = p.xdp()
    flags = XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_DRV_MODE
    try:
        ipr.link("set", index=index,
                 xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]})
    except Exception as exc:  # NetlinkError and friends
        raise ProbeFailed(p.ctx.why(exc, f"native XDP attach to veth {dev} refused")) from None
    xdp = ipr.get_links(index)[0].get_attr("IFLA_XDP")
    mode = xdp.get_attr("IFLA_XDP_ATTACHED") if xdp else None
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
    want = bpfsys.prog_info(fd).id
    if mode != "xdp" or prog_id != want:
        raise ProbeFailed(f"attach accepted, but veth {dev} reports mode {mode!r} with program "
                          f"{prog_id} (want 'xdp' with {want})")
    return Check("xdp_native_veth", True, f"attached in native (driver) mode to temporary "
                 f"veth {dev}: mode 'xdp', program {prog_id}", True)


def _tc_on_veth(p: Probes, ipr, index: int, dev: str) -> Check:
    fd = p.sched_cls()
    try:
        ipr.tc("add", "clsact", index)
        ipr.tc("add-filter", kind="bpf", index=index, fd=fd, name="netctl_probe",
               parent=TC_INGRESS, classid=1, direct_action=True, prio=1, handle=1)
    except Exception as exc:  # NetlinkError and friends
        raise ProbeFailed(p.ctx.why(exc, f"clsact/bpf filter on veth {dev} refused")) from None
    found = False
    for msg in ipr.get_filters(index=index, parent=0xFFFFFFF2):
        opts = msg.get_attr("TCA_OPTIONS")
        if msg.get_attr("TCA_KIND") == "bpf" and opts is not None:
            name = opts.get_attr("TCA_BPF_NAME") or ""
            flags = opts.get_attr("TCA_BPF_FLAGS") or 0
            found = found or (name.startswith("netctl_probe")
                              and bool(flags & TCA_BPF_FLAG_ACT_DIRECT))
    if not found:
        raise ProbeFailed(f"the filter was accepted, but veth {dev}'s ingress shows no "
                          "direct-action bpf filter netctl_probe")
    return Check("tc_clsact_veth", True, "clsact + direct-action bpf filter on ingress of "
                 f"temporary veth {dev}", True)


# ---- running and reporting ----------------------------------------------------------------


def _run(name: str, fn: Callable[[], Check], required: bool) -> Check:
    """One check; a failure of any kind becomes a failed check, never a traceback."""
    try:
        return fn()
    except ProbeFailed as exc:
        return Check(name, False, str(exc), required)
    except Exception as exc:  # a doctor reports what broke rather than stopping
        return Check(name, False, f"{type(exc).__name__}: {exc}", required)


def run_checks() -> list[Check]:
    ctx = Context()
    checks = [_run(fn.__name__.removeprefix("check_"), lambda fn=fn: fn(ctx), True)
              for fn in (check_kernel, check_privilege, check_btf, check_headers)]
    checks.append(_run("jit", lambda: check_jit(ctx), False))
    checks += [_run(name, lambda fn=fn: fn(ctx), req) for name, fn, req in (
        ("bpffs", check_bpffs, False), ("pin_root", check_pin_root, True),
        ("tracefs", check_tracefs, False), ("debugfs", check_debugfs, False))]
    probes = Probes(ctx)
    try:
        for name, fn, required in (
            ("prog_xdp", check_prog_xdp, True),
            ("prog_sched_cls", check_prog_sched_cls, True),
            ("prog_tracepoint", check_prog_tracepoint, True),
            ("prog_raw_tracepoint", check_prog_raw_tracepoint, False),
            ("prog_kprobe", check_prog_kprobe, False),
            ("prog_fentry", check_prog_fentry, False),
            ("test_run", check_test_run, True),
            ("ringbuf", check_ringbuf, False),
        ):
            checks.append(_run(name, lambda fn=fn: fn(probes), required))
        checks += _veth_checks(probes)
    finally:
        probes.close()
    return checks


def report(checks: list[Check]) -> dict:
    return {"kernel": os.uname().release,
            "checks": [asdict(c) for c in checks],
            "ok": all(c.ok for c in checks if c.required)}


def format_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks) + 2
    lines = []
    for c in checks:
        tag = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        lines.append(f"{tag}  {c.name:<{width}}{c.detail}")
    failed = [c.name for c in checks if c.required and not c.ok]
    warned = sum(1 for c in checks if not c.required and not c.ok)
    passed = sum(1 for c in checks if c.ok)
    summary = (f"{len(checks)} checks: {passed} ok, {warned} warning{'s' * (warned != 1)} "
               f"(not required), {len(failed)} failed")
    if failed:
        summary += f" ({', '.join(failed)}): netctl cannot run here as is"
    else:
        summary += ": every required check passed"
    lines.append(summary)
    return "\n".join(lines)


def main(output: str = "text") -> int:
    checks = run_checks()
    data = report(checks)
    if output == "json":
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_text(checks))
    return 0 if data["ok"] else 1
