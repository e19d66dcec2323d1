"""Checks that load, run and attach: program types, the test-run and ring-buffer paths,
and XDP and tc on a temporary veth pair, each both ways netctl attaches (netlink, and the
bpf_links apply takes where the kernel offers them: tcx, XDP links)."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct

from ...kernel import bpfsys
from ...kernel import insns as asm
from .base import (
    BTF_PATH,
    DEBUGFS,
    HELPER_RINGBUF_OUTPUT,
    KPROBE_PMU,
    PERF_TYPE_TRACEPOINT,
    RAW_TRACEPOINT,
    TC_ACT_OK,
    TC_INGRESS,
    TCA_BPF_FLAG_ACT_DIRECT,
    TRACE_FUNCS,
    TRACEFS,
    TRACEPOINT,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
    XDP_PASS,
    Check,
    Context,
    ProbeFailed,
    _fd,
    _frame,
    _perf_event_open,
    _perf_set_bpf,
    _run,
)

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
        return self.load("xdp", bpfsys.PROG_XDP, asm.return_imm(XDP_PASS))

    def sched_cls(self) -> int:
        return self.load("sched_cls", bpfsys.PROG_SCHED_CLS, asm.return_imm(TC_ACT_OK))

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
    fd = p.load("tracepoint", bpfsys.PROG_TRACEPOINT, asm.return_imm(0))
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
    fd = p.load("raw_tp", bpfsys.PROG_RAW_TRACEPOINT, asm.return_imm(0))
    try:
        link = bpfsys.raw_tracepoint_open(RAW_TRACEPOINT, fd)
    except bpfsys.BpfError as exc:
        raise ProbeFailed(p.ctx.why(exc, f"loads, but attaching to {RAW_TRACEPOINT} "
                                    "failed")) from None
    os.close(link)
    return Check("prog_raw_tracepoint", True, f"loads and attaches to {RAW_TRACEPOINT}", False)


def check_prog_kprobe(p: Probes) -> Check:
    # Loading a kprobe-type program needs no kprobe support: attaching does.
    fd = p.load("kprobe", bpfsys.PROG_KPROBE, asm.return_imm(0))
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
    from ...kernel.btf import vmlinux

    try:
        btf = vmlinux()
    except (OSError, ValueError) as exc:
        raise ProbeFailed(f"no kernel BTF to name the target function ({exc})") from None
    target = next(((f, i) for f in TRACE_FUNCS if (i := btf.func_id(f)) is not None), None)
    if target is None:
        raise ProbeFailed(f"none of {', '.join(TRACE_FUNCS)} is a function in {BTF_PATH}")
    func, btf_id = target
    try:
        fd = p.load("fentry", bpfsys.PROG_TRACING, asm.return_imm(0),
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
        insns = (asm.st_dw_imm(10, -8, marker)
                 + asm.ld_map_fd(1, ring.fd)
                 + asm.mov64_reg(2, 10) + asm.add64_imm(2, -8)
                 + asm.mov64_imm(3, 8) + asm.mov64_imm(4, 0)
                 + asm.call(HELPER_RINGBUF_OUTPUT)
                 + asm.return_imm(XDP_PASS))
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
    names = ("xdp_native_veth", "tc_clsact_veth", "xdp_link_veth", "tcx_veth")
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
                peer = ipr.link_lookup(ifname=b)[0]
            except (NetlinkError, OSError, IndexError) as exc:
                reason = p.ctx.why(exc, f"cannot create veth pair {a}/{b}")
                checks = [Check(n, False, reason, n in names[:2]) for n in names]
            else:
                checks = [_run(n, lambda fn=fn: fn(p, ipr, index, a), True)
                          for n, fn in zip(names[:2], (_xdp_on_veth, _tc_on_veth),
                                           strict=True)]
                # The links go on the peer, which has no program yet; not required: apply
                # falls back to netlink where the kernel has no links.
                checks += [_run(n, lambda fn=fn: fn(p, peer, b), False)
                           for n, fn in zip(names[2:], (_xdp_link_on_veth, _tcx_on_veth),
                                            strict=True)]
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




def _xdp_link_on_veth(p: Probes, index: int, dev: str) -> Check:
    from ...datapath.attach import XDP_MODE_FLAGS, xdp_link_offered

    if not xdp_link_offered():
        raise ProbeFailed("this kernel attaches no XDP program as a link: apply attaches XDP "
                          "through netlink (IFLA_XDP)")
    fd = p.xdp()
    try:
        link = bpfsys.link_create(fd, index, bpfsys.ATTACH_XDP, XDP_MODE_FLAGS["native"])
    except bpfsys.BpfError as exc:
        raise ProbeFailed(p.ctx.why(exc, f"XDP link on veth {dev} refused")) from None
    try:
        info = bpfsys.link_info(link)
    finally:
        os.close(link)   # the last reference: the program leaves the veth
    want = bpfsys.prog_info(fd).id
    if info.prog_id != want or info.ifindex != index:
        raise ProbeFailed(f"the link was created, but reports program {info.prog_id} on "
                          f"interface {info.ifindex} (want {want} on {index})")
    return Check("xdp_link_veth", True, f"XDP link (native) on temporary veth {dev}: link "
                 f"{info.id}, program {info.prog_id}; apply attaches XDP as a link", False)


def _tcx_on_veth(p: Probes, index: int, dev: str) -> Check:
    from ...datapath.attach import tcx_offered

    if not tcx_offered():
        raise ProbeFailed("this kernel has no tcx (it came in 6.6): apply attaches tc "
                          "programs as cls_bpf filters")
    fd = p.sched_cls()
    try:
        link = bpfsys.link_create(fd, index, bpfsys.TCX_INGRESS)
    except bpfsys.BpfError as exc:
        raise ProbeFailed(p.ctx.why(exc, f"tcx link on veth {dev} refused")) from None
    try:
        attached = bpfsys.prog_query(index, bpfsys.TCX_INGRESS)
        info = bpfsys.link_info(link)
    finally:
        os.close(link)
    if [(a.prog_id, a.link_id) for a in attached] != [(info.prog_id, info.id)]:
        raise ProbeFailed(f"the link was created, but ingress of veth {dev} lists "
                          f"{attached} (want program {info.prog_id} by link {info.id})")
    return Check("tcx_veth", True, f"tcx link on ingress of temporary veth {dev}: link "
                 f"{info.id}, program {info.prog_id}; apply attaches tc programs as tcx "
                 "links", False)
