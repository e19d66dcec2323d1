"""Compile netctl's BPF programs with bcc.

Constants reach the C as ``-D`` flags (the compiler's capacities, the pin directory),
never by editing source text.  The entry files reach bcc with their quoted includes
inlined (netctl/kernel/bpfsrc.py says why).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoadError
from ..kernel import bpfsys
from ..kernel.bpfsrc import BPF_DIR, INCLUDE_DIR, translation_unit
from . import progcache
from .netns import remove_pins

XDP_SOURCE = BPF_DIR / "xdp" / "netctl_xdp.c"
TC_SOURCE = BPF_DIR / "tc" / "netctl_tc.c"

__all__ = ["INCLUDE_DIR", "TC_SOURCE", "XDP_SOURCE", "Programs", "compile_programs"]


def unconfirmed_pin(ct_pin: str) -> str:
    """The pin of the table of unconfirmed flows that goes with the conntrack table pinned at
    ``ct_pin``."""
    return f"{ct_pin}-unconfirmed"


def cflags(constants: dict[str, int], pin_dir: str, extra: tuple[str, ...] = (),
           ct_pin: str | None = None) -> list[str]:
    flags = [f"-D{name}={value}" for name, value in sorted(constants.items())]
    flags.append(f'-DNETCTL_PIN_DIR="{pin_dir}"')
    ct_pin = ct_pin or pin_dir + "/conntrack"
    flags.append(f'-DNETCTL_CT_PIN="{ct_pin}"')
    flags.append(f'-DNETCTL_CT_UNCONFIRMED_PIN="{unconfirmed_pin(ct_pin)}"')
    flags.extend(extra)
    return flags


def source_digest(extra: tuple[str, ...] = ()) -> str:
    """Identifies the program text: a different digest means the programs must be rebuilt."""
    h = hashlib.sha256()
    for path in (XDP_SOURCE, TC_SOURCE):
        h.update(translation_unit(path).encode())
    h.update(repr(extra).encode())
    return h.hexdigest()[:16]


@dataclass
class Programs:
    """Loaded programs by role (xdp, tc_ingress, tc_egress): owned fds (close() them) and
    the verifier's statistics line of each."""

    fds: dict[str, int]
    verifier: dict[str, str]

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}


# Each role in two variants: for Ethernet devices, and (suffix _l3) for devices whose frames
# start at the IP header (tun, WireGuard, IP tunnels); attach picks one by the link type.
ROLES = {
    "xdp": (XDP_SOURCE, "netctl_xdp_ingress"),
    "tc_ingress": (TC_SOURCE, "netctl_tc_ingress"),
    "tc_egress": (TC_SOURCE, "netctl_tc_egress"),
    "xdp_l3": (XDP_SOURCE, "netctl_xdp_ingress_l3"),
    "tc_ingress_l3": (TC_SOURCE, "netctl_tc_ingress_l3"),
    "tc_egress_l3": (TC_SOURCE, "netctl_tc_egress_l3"),
}
# Kernel names (15 characters at most): how attach tells netctl's programs from others.
KERNEL_NAMES = {"xdp": "netctl_xdp", "tc_ingress": "netctl_ingress",
                "tc_egress": "netctl_egress", "xdp_l3": "netctl_xdp_l3",
                "tc_ingress_l3": "netctl_ingr_l3", "tc_egress_l3": "netctl_egr_l3"}
PROG_TYPES = {role: bpfsys.PROG_XDP if role.startswith("xdp") else bpfsys.PROG_SCHED_CLS
              for role in ROLES}
# The kernel accepts the programs only under a GPL-compatible license string; the BPF
# sources are dual-licensed (SPDX lines in bpf/).
LICENSE = "Dual BSD/GPL"
_LOG_SIZE = 1 << 24


def compile_programs(constants: dict[str, int], pin_dir: str,
                     extra: tuple[str, ...] = (), ct_pin: str | None = None) -> Programs:
    """Compile and load every program against the maps pinned in ``pin_dir`` (bcc creates
    and pins those not there yet), pinned there as ``prog_<role>``.  Raises LoadError with
    the compiler's errors or the verifier's log; nothing is attached here.

    The work happens in a child process: bcc's LLVM ends the whole process on some errors
    (it calls exit(1), e.g. when the stack limit is passed), and holds about 150 MB that the
    controller has no use for afterwards.  The child pins what it loaded; this process opens
    the pins.  Programs compiled before with the same text and constants come from the
    program cache instead (netctl/datapath/progcache.py): no LLVM at all."""
    ct = ct_pin or pin_dir + "/conntrack"
    key = progcache.cache_key([translation_unit(XDP_SOURCE), translation_unit(TC_SOURCE)],
                              cflags(constants, pin_dir, extra, ct_pin))
    cached = progcache.lookup(key)
    if cached is not None:
        try:
            return _load_cached(*cached, pin_dir, ct)
        except OSError:
            # An entry this kernel will not take (another kernel, a cache from elsewhere):
            # start the build over from the compiler, which replaces the entry.
            for name in os.listdir(pin_dir):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(pin_dir, name))

    # bcc opens a map pinned already (the live conntrack table; the second source's view of
    # the maps the first one pinned) by its id, which the kernel allows only with
    # CAP_SYS_ADMIN.  Without it, each source compiles against maps of its own in a scratch
    # directory, and the programs are loaded from the program cache's entry that build
    # made, over this build's maps (opened by their pins).
    scratch = None if _admin() else _scratch_dir(pin_dir)
    try:
        return _build(constants, pin_dir, extra, ct_pin, key, scratch)
    finally:
        if scratch is not None:
            remove_pins(scratch)


def prog_pin(build_dir: str, role: str) -> str:
    """Where a build pins its program of ``role``."""
    return f"{build_dir}/prog_{role}"


def _admin() -> bool:
    from ..kernel import privilege

    return privilege.CAP_SYS_ADMIN in privilege.effective()


def _scratch_dir(pin_dir: str) -> str:
    path = f"{pin_dir}-scratch{os.getpid()}"   # bpffs refuses dots in names
    remove_pins(path)   # a leftover of a build killed before it cleaned up
    os.mkdir(path, 0o700)
    return path


def _build(constants: dict[str, int], pin_dir: str, extra: tuple[str, ...],
           ct_pin: str | None, key: str, scratch: str | None) -> Programs:
    """compile_programs' build in a child process (in ``scratch`` when given)."""
    import json
    import tempfile

    ct = ct_pin or pin_dir + "/conntrack"
    with tempfile.TemporaryFile() as result, tempfile.TemporaryFile() as errors:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.dup2(errors.fileno(), 2)
                if scratch is None:
                    programs = _compile_here(constants, pin_dir, extra, ct_pin, key)
                    for role, fd in programs.fds.items():
                        bpfsys.obj_pin(fd, prog_pin(pin_dir, role))
                else:
                    programs = _compile_here(constants, scratch, extra, None, key, apart=True)
                    programs.close()
                report = {"ok": True, "verifier": programs.verifier}
                code = 0
            except LoadError as exc:
                report = {"ok": False, "message": exc.args[0].split("\n")[0], "log": exc.log}
                code = 3
            except BaseException as exc:  # reported by the parent
                report = {"ok": False, "message": f"{type(exc).__name__}: {exc}", "log": ""}
            try:
                os.write(result.fileno(), json.dumps(report).encode())
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        result.seek(0)
        errors.seek(0)
        raw = result.read()
        stderr = errors.read().decode(errors="replace")
    report = json.loads(raw) if raw else None
    if not report or not report["ok"]:
        if report is None:
            message = (f"the program build died (exit status "
                       f"{os.waitstatus_to_exitcode(status)})")
        else:
            message = report["message"]
        raise LoadError(message, report.get("log") if report and report.get("log")
                        else _compiler_errors(stderr))
    if scratch is not None:
        cached = progcache.lookup(key)
        if cached is None:
            raise LoadError("the programs were built, but loading them over the live maps "
                            "without CAP_SYS_ADMIN goes through the program cache, which "
                            "kept nothing (NETCTL_PROGRAM_CACHE=off, or not writable)", "")
        return _load_cached(*cached, pin_dir, ct)
    fds: dict[str, int] = {}
    try:
        for role in ROLES:
            fds[role] = bpfsys.obj_get(prog_pin(pin_dir, role))
    except OSError:
        Programs(fds, {}).close()
        raise
    return Programs(fds, report["verifier"])


def _compile_here(constants: dict[str, int], pin_dir: str, extra: tuple[str, ...],
                  ct_pin: str | None, key: str | None = None,
                  refused: dict[str, LoadError] | None = None,
                  apart: bool = False) -> Programs:
    """Compile and load every role.  With ``refused`` (the kernel matrix's census of the
    verifier), a role the verifier refuses is recorded there and the others still load.
    ``apart``: each source against maps of its own, in a directory of its own under
    ``pin_dir`` (bcc creates them: it opens a map pinned already only by id, which needs
    CAP_SYS_ADMIN), for the program cache's entry to be loaded over other maps."""
    from bcc import BPF  # the distribution's bcc; imported only where programs are built

    programs = Programs({}, {})
    cache: dict[str, dict] | None = {}
    specs: dict[str, dict] = {}
    dirs: list[tuple[str, str]] = []
    try:
        for source in (XDP_SOURCE, TC_SOURCE):
            if apart:
                src_dir = f"{pin_dir}/{len(dirs)}"
                os.mkdir(src_dir, 0o700)
                src_ct_pin: str | None = src_dir + "/conntrack"
            else:
                src_dir, src_ct_pin = pin_dir, ct_pin
            ct = src_ct_pin or src_dir + "/conntrack"
            dirs.append((src_dir, ct))
            flags = cflags(constants, src_dir, extra, src_ct_pin)
            try:
                module = BPF(text=translation_unit(source), cflags=flags)
            except Exception as exc:
                raise LoadError(f"bcc could not compile {_shown(source)}: {exc}") from None
            try:
                for role, (src, fn) in ROLES.items():
                    if src == source:
                        insns = module.dump_func(fn)
                        try:
                            fd, stats = _load(insns, role, fn)
                        except LoadError as exc:
                            if refused is None:
                                raise
                            refused[role], cache = exc, None
                            continue
                        programs.fds[role] = fd
                        programs.verifier[role] = stats
                        if cache is not None and key is not None:
                            try:   # while bcc's map fds are open
                                cache[role] = {"name": KERNEL_NAMES[role], "insns": insns,
                                               "relocations": progcache.describe(
                                                   insns, src_dir, ct, specs)}
                            except (LookupError, OSError):
                                cache = None
            finally:
                module.cleanup()
        if cache is not None and key is not None:
            with contextlib.suppress(OSError):
                progcache.store(key, cache, specs, *dirs[0])
    except BaseException:
        programs.close()
        raise
    return programs


def _load_cached(meta: dict, insns: dict[str, bytes], pin_dir: str, ct: str) -> Programs:
    """The build's programs from a cache entry: maps created and pinned, programs loaded and
    pinned, as the compiling child would."""
    patched, map_fds = progcache.materialize(meta, insns, pin_dir, ct)
    programs = Programs({}, {})
    try:
        for role, (_src, fn) in ROLES.items():
            fd, stats = _load(patched[role], role, fn)
            programs.fds[role] = fd
            programs.verifier[role] = stats
            bpfsys.obj_pin(fd, prog_pin(pin_dir, role))
    except BaseException:
        programs.close()
        raise
    finally:
        for fd in map_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
    return programs


def _load(insns: bytes, role: str, fn: str) -> tuple[int, str]:
    stats: list[str] = []
    try:
        fd = bpfsys.prog_load(PROG_TYPES[role], insns, KERNEL_NAMES[role], license=LICENSE,
                              log_level=4, log_size=4096, log_out=stats)
    except bpfsys.BpfError:
        # Load again with the full log: it says which instruction the verifier refused.
        try:
            fd = bpfsys.prog_load(PROG_TYPES[role], insns, KERNEL_NAMES[role],
                                  license=LICENSE, log_level=1, log_size=_LOG_SIZE)
        except bpfsys.BpfError as exc:
            raise LoadError(f"the verifier refused {fn} ({exc.strerror})",
                            _log_tail(exc.log)) from None
    return fd, " ".join(line for line in stats[0].splitlines() if line.startswith("processed"))


def _log_tail(log: str, lines: int = 40) -> str:
    kept = log.rstrip().splitlines()
    if len(kept) > lines:
        kept = [f"... ({len(kept) - lines} earlier lines of the verifier log omitted)",
                *kept[-lines:]]
    return "\n".join(kept)


def _compiler_errors(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.strip())


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(BPF_DIR.parent))
    except ValueError:
        return str(path)
