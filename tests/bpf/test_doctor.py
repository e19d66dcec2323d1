"""`netctl doctor` tells the truth about the machine it runs on.

Measured here: kernel 6.18 with BTF, root; XDP, sched_cls, tracepoint and raw tracepoint
programs load; BPF_PROG_TEST_RUN and the ring buffer work; veths take native XDP and a
clsact bpf filter, an XDP link and a tcx link; CONFIG_KPROBES is off and fentry loads get
EPERM; the kernel headers are Debian's 6.1 linked as a fallback.  The doctor must find
exactly that by trying, and leave nothing behind (no veth, no open fd, no link).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netctl.tools import doctor

NETCTL = str(Path(sys.executable).with_name("netctl"))
NAMES = ["kernel", "privilege", "btf", "headers", "jit", "bpffs", "pin_root", "tracefs", "debugfs",
         "prog_xdp", "prog_sched_cls", "prog_tracepoint", "prog_raw_tracepoint",
         "prog_kprobe", "prog_fentry", "test_run", "ringbuf", "xdp_native_veth",
         "tc_clsact_veth", "xdp_link_veth", "tcx_veth"]
REQUIRED = {"kernel", "privilege", "btf", "headers", "pin_root", "prog_xdp", "prog_sched_cls",
            "prog_tracepoint", "test_run", "xdp_native_veth", "tc_clsact_veth"}


def _ndoc_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], check=True, capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if " ndoc" in line]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def checks() -> dict[str, doctor.Check]:
    before_fds = _open_fds()
    result = doctor.run_checks()
    leaked = _open_fds() - before_fds
    assert not leaked, f"doctor left fds open: {leaked}"
    assert _ndoc_links() == []
    return {c.name: c for c in result}


def test_every_check_is_reported_once_in_order(checks):
    assert list(checks) == NAMES
    assert {n for n, c in checks.items() if c.required} == REQUIRED


def test_kernel_btf_and_privilege(checks):
    assert checks["kernel"].ok, checks["kernel"]
    assert os.uname().release in checks["kernel"].detail
    assert checks["btf"].ok and "bytes" in checks["btf"].detail, checks["btf"]
    assert checks["privilege"].ok, checks["privilege"]


def test_headers_are_matching_or_the_debian_fallback(checks):
    headers = checks["headers"]
    assert headers.ok, headers
    assert headers.detail.startswith(("matching", "fallback")), headers.detail
    if headers.detail.startswith("fallback"):
        assert "do not match the running kernel" in headers.detail
        assert "tracepoint arguments" in headers.detail


@pytest.mark.parametrize("name", ["prog_xdp", "prog_sched_cls", "prog_tracepoint",
                                  "prog_raw_tracepoint", "test_run", "ringbuf"])
def test_what_works_here_is_found_working(checks, name):
    assert checks[name].ok is True, checks[name]


def test_raw_tracepoint_really_attaches(checks):
    assert "attaches to kfree_skb" in checks["prog_raw_tracepoint"].detail


def test_kprobes_are_found_exactly_where_the_kernel_offers_them(checks):
    """Decided from sysfs and tracefs, independently of the doctor: a kprobe PMU or the
    legacy kprobe_events file means kprobes attach; without either the doctor names the
    missing PMU."""
    kprobe = checks["prog_kprobe"]
    offered = (os.path.isdir("/sys/bus/event_source/devices/kprobe")
               or os.path.exists("/sys/kernel/tracing/kprobe_events"))
    assert kprobe.ok is offered and kprobe.required is False, kprobe
    if offered:
        assert "loads and attaches as a kprobe" in kprobe.detail
    else:
        assert "no kprobe PMU" in kprobe.detail and "CONFIG_KPROBES" in kprobe.detail


def test_fentry_either_attaches_or_the_refusal_names_its_errno(checks):
    fentry = checks["prog_fentry"]
    assert fentry.required is False
    assert "BTF id" in fentry.detail  # the target was found in BTF: the load was real
    if fentry.ok:
        assert "loads and attaches to" in fentry.detail
    else:
        assert re.search(r"\bE[A-Z]+\b", fentry.detail), fentry.detail


def test_veth_gets_native_xdp_and_a_clsact_filter_and_is_removed(checks):
    assert checks["xdp_native_veth"].ok, checks["xdp_native_veth"]
    assert "mode 'xdp'" in checks["xdp_native_veth"].detail
    assert checks["tc_clsact_veth"].ok, checks["tc_clsact_veth"]
    assert _ndoc_links() == []


def test_veth_takes_an_xdp_link_and_a_tcx_link_and_none_is_left(checks):
    from netctl.kernel import bpfsys

    assert checks["xdp_link_veth"].ok, checks["xdp_link_veth"]
    assert "apply attaches XDP as a link" in checks["xdp_link_veth"].detail
    assert checks["tcx_veth"].ok, checks["tcx_veth"]
    assert "apply attaches tc programs as tcx links" in checks["tcx_veth"].detail
    for link_id in bpfsys.link_ids():     # no link of the doctor's probes is left
        with contextlib.suppress(OSError):
            fd = bpfsys.link_fd_by_id(link_id)
            try:
                prog = bpfsys.prog_fd_by_id(bpfsys.link_info(fd).prog_id)
                try:
                    assert not bpfsys.prog_info(prog).name.startswith("ndoc_")
                finally:
                    os.close(prog)
            finally:
                os.close(fd)


def test_cli_json_report():
    result = subprocess.run([NETCTL, "doctor", "-o", "json"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["kernel"] == os.uname().release
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == NAMES
    for check in report["checks"]:
        assert set(check) == {"name", "ok", "detail", "required"}
        assert isinstance(check["ok"], bool) and check["detail"]
    assert _ndoc_links() == []


def test_cli_text_report_names_every_check():
    result = subprocess.run([NETCTL, "doctor"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(NAMES) + 1
    for name, line in zip(NAMES, lines, strict=False):
        tag, got = line.split()[:2]
        assert got == name, line
        assert tag in {"ok", "FAIL", "warn"}
    by_name = {line.split()[1]: line.split()[0] for line in lines[:-1]}
    assert by_name["prog_xdp"] == "ok"
    assert by_name["prog_kprobe"] == "warn"  # failed, not required
    assert by_name["prog_fentry"] == "warn"
    assert lines[-1].startswith(f"{len(NAMES)} checks:")
    assert "0 failed" in lines[-1]
    assert _ndoc_links() == []


def test_text_format_tags_failures_by_whether_they_are_required():
    text = doctor.format_text([
        doctor.Check("a", True, "fine", True),
        doctor.Check("b", False, "broken", True),
        doctor.Check("c", False, "missing", False),
    ])
    lines = text.splitlines()
    assert lines[0].startswith("ok    a")
    assert lines[1].startswith("FAIL  b")
    assert lines[2].startswith("warn  c")
    assert "1 failed (b)" in lines[3]


def test_veth_pair_is_removed_when_a_veth_step_blows_up(monkeypatch):
    def boom(*_args):
        raise RuntimeError("injected failure")

    from netctl.tools.doctor import probes as probe_checks

    monkeypatch.setattr(probe_checks, "_tc_on_veth", boom)
    probes = doctor.Probes(doctor.Context())
    try:
        result = {c.name: c for c in doctor._veth_checks(probes)}
    finally:
        probes.close()
    assert result["xdp_native_veth"].ok is True
    assert result["tc_clsact_veth"].ok is False
    assert "injected failure" in result["tc_clsact_veth"].detail
    assert _ndoc_links() == []


def test_inside_ip_netns_exec_the_missing_sys_mounts_are_explained():
    ns = f"ndoc-t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        result = subprocess.run(["ip", "netns", "exec", ns, NETCTL, "doctor", "-o", "json"],
                                capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["bpffs"]["ok"] is False
    assert "ip netns exec" in checks["bpffs"]["detail"]
    host_pin_root = doctor.Context().fstype(doctor.PIN_ROOT) == "bpf"
    assert checks["pin_root"]["ok"] is host_pin_root  # a mount under /run is seen inside
    assert checks["prog_tracepoint"]["ok"] is True
    assert checks["xdp_native_veth"]["ok"] is True


def test_jit_is_reported_on_here(checks):
    assert checks["jit"].ok is True and "JIT on" in checks["jit"].detail
    assert checks["jit"].required is False
