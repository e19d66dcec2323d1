"""What every doctor check is made of: the result type, the context (mounts, namespaces),
the constants of the probes and small helpers (errno text, perf events, frames)."""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ...kernel import privilege, syscalls
from ...kernel.privilege import CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN

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

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_SET_BPF = syscalls.ioc_write("$", 8, 4)  # _IOW('$', 8, __u32)
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
    try:
        nr = syscalls.number("perf_event_open")
    except syscalls.UnknownMachineError as exc:
        raise OSError(errno_mod.ENOSYS, str(exc)) from None
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


def _run(name: str, fn: Callable[[], Check], required: bool) -> Check:
    """One check; a failure of any kind becomes a failed check, never a traceback."""
    try:
        return fn()
    except ProbeFailed as exc:
        return Check(name, False, str(exc), required)
    except Exception as exc:  # a doctor reports what broke rather than stopping
        return Check(name, False, f"{type(exc).__name__}: {exc}", required)
