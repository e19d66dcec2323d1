"""Capabilities: what each verb needs, checked before it changes anything.

The kernel grants BPF by CAP_BPF or CAP_SYS_ADMIN, perf events (tracers) by CAP_PERFMON or
CAP_SYS_ADMIN, and attaching to interfaces by CAP_NET_ADMIN.  Root normally holds them all;
a root shell whose capabilities were dropped does not, so the effective set is what counts,
never the user id.  A missing one is a PrivilegeError (exit 77) naming it.
"""

from __future__ import annotations

from ..errors import PrivilegeError

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
         CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}
# What CAP_SYS_ADMIN stands in for (the kernel's bpf_capable() and perfmon_capable()).
_ADMIN_COVERS = {CAP_BPF, CAP_PERFMON}

DATAPATH = (CAP_BPF, CAP_NET_ADMIN)     # read and write the pinned maps, detach
# Loading the datapath's programs also needs CAP_PERFMON: without it the verifier refuses
# their packet-pointer arithmetic ("pointer -= pointer prohibited").
LOAD = (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)   # load programs, attach them, pin maps
TRACING = (CAP_BPF, CAP_PERFMON)        # tracepoint programs, ring buffers


def effective() -> set[int]:
    """The capability bits this process holds now (CapEff of /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    mask = int(line.split()[1], 16)
                    return {bit for bit in range(64) if mask >> bit & 1}
    except OSError:
        pass
    return set()


def missing(needed: tuple[int, ...], caps: set[int] | None = None) -> list[str]:
    caps = effective() if caps is None else caps
    return [NAMES[c] for c in needed
            if c not in caps and not (c in _ADMIN_COVERS and CAP_SYS_ADMIN in caps)]


def require(what: str, *needed: int) -> None:
    """Raise PrivilegeError unless this process holds every capability in ``needed``."""
    lacking = missing(needed)
    if lacking:
        raise PrivilegeError(f"{what} needs {' and '.join(lacking)}, which this process "
                             "lacks (run it as root)")
