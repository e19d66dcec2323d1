"""System call numbers that differ from one machine to the next.

bcc makes its own system calls; netctl calls bpf(2) itself (netctl.kernel.bpfsys) and
perf_event_open(2) in `netctl doctor`, through libc's syscall(), which needs the number.
The numbers come from each architecture's syscall table (asm-generic for aarch64, riscv64
and loongarch64).  On a machine missing here, the first call says so as a NetctlError
(importing netctl, validating or explaining a policy never needs them).
"""

from __future__ import annotations

import platform

from ..errors import NetctlError

# machine (platform.machine()) -> {system call: number}
_GENERIC = {"bpf": 280, "perf_event_open": 241}
NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {"bpf": 321, "perf_event_open": 298},
    "aarch64": _GENERIC,
    "arm64": _GENERIC,
    "riscv64": _GENERIC,
    "loongarch64": _GENERIC,
    "i386": {"bpf": 357, "perf_event_open": 336},
    "i686": {"bpf": 357, "perf_event_open": 336},
    "armv7l": {"bpf": 386, "perf_event_open": 364},
    "armv6l": {"bpf": 386, "perf_event_open": 364},
    "ppc64le": {"bpf": 361, "perf_event_open": 319},
    "ppc64": {"bpf": 361, "perf_event_open": 319},
    "s390x": {"bpf": 351, "perf_event_open": 331},
}


class UnknownMachineError(NetctlError):
    """netctl does not know a system call's number on this machine."""


def number(call: str, machine: str | None = None) -> int:
    """The number of system call ``call`` on ``machine`` (default: this one)."""
    machine = machine or platform.machine()
    try:
        return NUMBERS[machine][call]
    except KeyError:
        raise UnknownMachineError(
            f"the {call}(2) system call number is not known for machine {machine!r} "
            f"(known: {', '.join(sorted(NUMBERS))}); add it to netctl/kernel/syscalls.py "
            f"from the kernel's syscall table of that architecture") from None


def ioc_write(kind: str, nr: int, size: int, machine: str | None = None) -> int:
    """_IOW(kind, nr, size): ioctl numbers whose direction bits differ by architecture
    (powerpc, mips and sparc put a 3-bit direction at bit 29 with 'write' = 4; the others a
    2-bit one at bit 30 with 'write' = 1)."""
    machine = machine or platform.machine()
    three_bit = machine.startswith(("ppc", "mips", "sparc"))
    direction = (4 << 29) if three_bit else (1 << 30)
    return direction | (size << 16) | (ord(kind) << 8) | nr
