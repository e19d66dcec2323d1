"""netctl's programs held by bpf_links (tcx for tc, an XDP link for XDP) on real veths.

With tcx a `tc filter del` or the clsact qdisc's deletion leaves netctl's program judging;
programs of others on the same hook (a cls_bpf filter, another tcx link) run beside it and
outlive a detach; a rebuild swaps the program inside the same link; moving between tcx and
cls_bpf (NETCTL_ATTACH=legacy) leaves one attachment of netctl's; detach leaves no link and
no pin; a link whose interface is gone loses its pin at the next status, apply or detach; a
foreign XDP program (netlink or link) makes apply refuse, naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from nsutil import inside, netns_cookie, run

from netctl.datapath import attach as att
from netctl.kernel import bpfsys
from netctl.kernel import insns as asm
from netctl.paths import PIN_ROOT

pytestmark = pytest.mark.skipif(not att.tcx_offered() or not att.xdp_link_offered(),
                                reason="this kernel offers no tcx or XDP links")

DROP_UDP_5555 = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: drop-5555, action: drop, proto: udp, dport: 5555}
"""
LEGACY = {"NETCTL_ATTACH": "legacy"}
REBUILD = {"NETCTL_EXTRA_CFLAGS": "-DNETCTL_REBUILD_TRIAL=1"}
TC_ACT_SHOT = 2
TC_ACT_UNSPEC = -1


def _apply(lab, *args: str, env: dict | None = None, text: str = DROP_UDP_5555) -> dict:
    out = lab.netctl("apply", lab.policy(text), "--dev", lab.dut_if, "-o", "json", *args,
                     env=env)
    return json.loads(out.stdout)


def _tcx(lab, direction: str = "ingress") -> list[tuple[int, int, str | None]]:
    """(program id, link id, program name) on the DUT interface's tcx hook, in order."""
    with inside(lab.dut), att.Links(link_dir="/nonexistent") as links:
        link = links.find(lab.dut_if)
        return [(a.prog_id, a.link_id, att.prog_name(a.prog_id))
                for a in links.tcx_programs(link, direction)]


def _ours(lab, direction: str = "ingress") -> list[att.TcAttachment]:
    with inside(lab.dut), att.Links(link_dir="/nonexistent") as links:
        return links.tc_ours(links.find(lab.dut_if), direction)


def _link_pins(lab) -> list[str]:
    path = Path(PIN_ROOT) / f"ns{netns_cookie(lab.dut)}" / att.LINK_DIR_NAME
    return sorted(os.listdir(path)) if path.is_dir() else []


def _interface(lab) -> dict:
    status = lab.status()
    assert status["problems"] == [], status["problems"]
    return next(i for i in status["interfaces"] if i["name"] == lab.dut_if)


@contextlib.contextmanager
def _foreign_tcx(lab, retval: int):
    """Someone else's tcx link (a program returning ``retval``), behind what is there,
    held by this process's fd."""
    prog = bpfsys.prog_load(bpfsys.PROG_SCHED_CLS, asm.return_imm(retval), "foreign_tcx")
    try:
        with inside(lab.dut), att.Links(link_dir="/nonexistent") as links:
            index = links.find(lab.dut_if).index
            link = bpfsys.link_create(prog, index, bpfsys.TCX_INGRESS)
        try:
            yield bpfsys.link_info(link)
        finally:
            os.close(link)
    finally:
        os.close(prog)


def _foreign_filter(lab, retval: int) -> None:
    """Someone else's clsact qdisc and cls_bpf filter (a program returning ``retval``)."""
    from pyroute2 import IPRoute

    run("tc", "qdisc", "add", "dev", lab.dut_if, "clsact", ns=lab.dut)
    prog = bpfsys.prog_load(bpfsys.PROG_SCHED_CLS, asm.return_imm(retval), "foreign")
    try:
        with inside(lab.dut), IPRoute() as ipr:
            index = ipr.link_lookup(ifname=lab.dut_if)[0]
            ipr.tc("add-filter", kind="bpf", index=index, handle=1, fd=prog, name="foreign",
                   parent="ffff:fff2", classid=1, direct_action=True, prio=7)
    finally:
        os.close(prog)


def test_tcx_survives_tc_filter_and_qdisc_deletion(the_lab):
    result = _apply(the_lab, "--xdp-mode", "off")
    assert result["interfaces"][the_lab.dut_if]["tc_attach"] == "tcx"
    rec = _interface(the_lab)
    assert rec["attach"] == {"tc": "tcx", "xdp": None}
    assert _link_pins(the_lab) == [f"tcx-egress-{rec['ifindex']}",
                                   f"tcx-ingress-{rec['ifindex']}"]
    assert the_lab.udp(4) == 0
    # What removes a cls_bpf filter does not reach a tcx link.
    run("tc", "qdisc", "add", "dev", the_lab.dut_if, "clsact", ns=the_lab.dut)
    run("tc", "filter", "del", "dev", the_lab.dut_if, "ingress", ns=the_lab.dut)
    assert the_lab.udp(4) == 0
    run("tc", "qdisc", "del", "dev", the_lab.dut_if, "clsact", ns=the_lab.dut)
    assert the_lab.udp(4) == 0
    assert the_lab.rule("drop-5555")["packets"] == 12
    assert _interface(the_lab)["live"]


@pytest.mark.parametrize("foreign", ["tcx", "cls_bpf"])
def test_a_foreign_tc_program_runs_beside_netctl_and_outlives_its_detach(the_lab, foreign):
    _apply(the_lab, "--xdp-mode", "off")
    assert the_lab.udp(3, dport=6666) == 3
    # The foreign program drops everything: it runs after netctl's (which passes what it
    # accepts on: TC_ACT_UNSPEC, TCX_NEXT), so UDP to 6666 goes, and UDP to 5555 is still
    # netctl's drop, counted by its rule.
    with contextlib.ExitStack() as stack:
        if foreign == "tcx":
            info = stack.enter_context(_foreign_tcx(the_lab, TC_ACT_SHOT))
            assert [p[1] for p in _tcx(the_lab)][-1] == info.id   # behind netctl's
        else:
            _foreign_filter(the_lab, TC_ACT_SHOT)
        assert the_lab.udp(3, dport=6666) == 0
        assert the_lab.udp(4) == 0
        assert the_lab.rule("drop-5555")["packets"] == 4
        assert _interface(the_lab)["live"]
        the_lab.netctl("detach", "--all")
        assert _ours(the_lab) == []
        assert the_lab.udp(3, dport=6666) == 0   # the foreign program is still there
        if foreign == "tcx":
            assert [name for _p, _l, name in _tcx(the_lab)] == ["foreign_tcx"]
        else:
            filters = run("tc", "filter", "show", "dev", the_lab.dut_if, "ingress",
                          ns=the_lab.dut).stdout
            assert "foreign" in filters and "netctl" not in filters
            run("tc", "qdisc", "del", "dev", the_lab.dut_if, "clsact", ns=the_lab.dut)
    assert the_lab.udp(3, dport=6666) == 3
    assert the_lab.leftovers() == []


def test_a_rebuild_swaps_the_program_inside_the_same_links(the_lab):
    _apply(the_lab)
    before = {d: _ours(the_lab, d) for d in ("ingress", "egress")}
    assert all(len(a) == 1 and a[0].path == "tcx" for a in before.values())
    result = _apply(the_lab, env=REBUILD)
    assert result["reload"] is True
    after = {d: _ours(the_lab, d) for d in ("ingress", "egress")}
    for d in before:
        assert after[d][0].link_id == before[d][0].link_id          # the same link
        assert after[d][0].prog_id != before[d][0].prog_id          # a new program in it
    assert the_lab.udp(4) == 0 and the_lab.udp(2, dport=6666) == 2
    assert len(_link_pins(the_lab)) == 2 and _interface(the_lab)["live"]


def test_moving_between_cls_bpf_and_tcx_leaves_one_attachment(the_lab):
    result = _apply(the_lab, env=LEGACY)
    assert result["interfaces"][the_lab.dut_if]["tc_attach"] == "cls_bpf"
    assert [a.path for a in _ours(the_lab)] == ["cls_bpf"] and _link_pins(the_lab) == []
    assert the_lab.udp(3) == 0
    assert _interface(the_lab)["attach"]["tc"] == "cls_bpf"
    # The same file again, the default way: not "already live", moved to tcx, and the
    # filter and the clsact qdisc netctl made for it are gone.
    result = _apply(the_lab)
    assert result["unchanged"] is False
    assert result["interfaces"][the_lab.dut_if]["tc_attach"] == "tcx"
    assert [a.path for a in _ours(the_lab)] == ["tcx"]
    assert [a.path for a in _ours(the_lab, "egress")] == ["tcx"]
    assert "clsact" not in run("tc", "qdisc", "show", "dev", the_lab.dut_if,
                               ns=the_lab.dut).stdout
    assert the_lab.udp(3) == 0
    assert _interface(the_lab)["attach"]["tc"] == "tcx"
    # And back.
    _apply(the_lab, env=LEGACY)
    assert [a.path for a in _ours(the_lab)] == ["cls_bpf"] and _link_pins(the_lab) == []
    assert the_lab.udp(3) == 0
    assert the_lab.rule("drop-5555")["packets"] == 9
    the_lab.netctl("detach", "--all")
    assert the_lab.leftovers() == []


def test_detach_leaves_no_link_and_no_pin(the_lab):
    _apply(the_lab, "--xdp-mode", "generic")
    assert len(_link_pins(the_lab)) == 2     # XDP and tc egress
    made = _pinned_link_ids(the_lab)
    assert len(made) == 2
    the_lab.netctl("detach", "--dev", the_lab.dut_if)
    assert _link_pins(the_lab) == [] and _ours(the_lab, "egress") == []
    assert the_lab.udp(3) == 3
    _apply(the_lab)
    made |= _pinned_link_ids(the_lab)
    assert len(made) == 4
    the_lab.netctl("detach", "--all")
    assert the_lab.leftovers() == []
    # Every link netctl made is gone from the kernel, not only unpinned.
    assert not made & set(bpfsys.link_ids())


def _pinned_link_ids(lab) -> set[int]:
    """The ids of the links pinned in the DUT namespace's link directory."""
    path = Path(PIN_ROOT) / f"ns{netns_cookie(lab.dut)}" / att.LINK_DIR_NAME
    out = set()
    for name in _link_pins(lab):
        fd = bpfsys.obj_get(str(path / name))
        try:
            out.add(bpfsys.link_info(fd).id)
        finally:
            os.close(fd)
    return out


def test_the_pin_of_a_link_whose_interface_is_gone_is_swept(the_lab):
    extra = "lx" + the_lab.dut_if[2:]
    run("ip", "link", "add", extra, "type", "veth", "peer", "name", extra + "p",
        ns=the_lab.dut)
    run("ip", "link", "set", extra, "up", ns=the_lab.dut)
    the_lab.netctl("apply", the_lab.policy(DROP_UDP_5555), "--dev", the_lab.dut_if,
                   "--dev", extra)
    pins = _link_pins(the_lab)
    assert len(pins) == 4
    run("ip", "link", "del", extra, ns=the_lab.dut)
    status = the_lab.status()
    assert any("gone" in p for p in status["problems"]), status["problems"]
    assert len(_link_pins(the_lab)) == 2      # status swept the gone interface's pins
    the_lab.netctl("apply", the_lab.policy(DROP_UDP_5555), "--dev", the_lab.dut_if)
    assert len(_link_pins(the_lab)) == 2 and the_lab.status()["problems"] == []


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_link_apply_reapply_detach(the_lab, mode):
    result = _apply(the_lab, "--xdp-mode", mode)
    rec = result["interfaces"][the_lab.dut_if]
    assert rec["xdp_attach"] == "link" and rec["ingress"] == f"xdp-{mode}"
    live = _interface(the_lab)
    assert live["attach"] == {"tc": "tcx", "xdp": "link"}
    assert f"xdp-{live['ifindex']}" in _link_pins(the_lab)
    assert the_lab.udp(4) == 0
    # netlink cannot take a program a link holds off
    off = run("ip", "link", "set", "dev", the_lab.dut_if,
              "xdpgeneric" if mode == "generic" else "xdpdrv", "off", ns=the_lab.dut,
              check=False)
    assert off.returncode != 0
    assert the_lab.udp(4) == 0
    prog_before = live["xdp_prog_id"]
    result = _apply(the_lab, "--xdp-mode", mode, env=REBUILD)   # swapped in the link
    assert result["reload"] is True
    live = _interface(the_lab)
    assert live["xdp_prog_id"] != prog_before and live["attach"]["xdp"] == "link"
    assert the_lab.udp(4) == 0 and the_lab.udp(2, dport=6666) == 2
    # netlink (legacy) and back: one XDP program of netctl's at every step
    _apply(the_lab, "--xdp-mode", mode, env=LEGACY)
    live = _interface(the_lab)
    assert live["attach"]["xdp"] == "netlink" and _link_pins(the_lab) == []
    assert the_lab.udp(4) == 0
    _apply(the_lab, "--xdp-mode", mode)
    assert _interface(the_lab)["attach"]["xdp"] == "link"
    the_lab.netctl("detach", "--all")
    assert the_lab.leftovers() == []
    assert the_lab.udp(3) == 3


@pytest.mark.parametrize("way", ["netlink", "link"])
def test_a_foreign_xdp_program_makes_apply_refuse_naming_it(the_lab, way):
    prog = bpfsys.prog_load(bpfsys.PROG_XDP, asm.return_imm(2), "foreign_xdp")
    link = None
    try:
        with inside(the_lab.dut), att.Links(link_dir="/nonexistent") as links:
            dev = links.find(the_lab.dut_if)
            if way == "link":
                link = bpfsys.link_create(prog, dev.index, bpfsys.ATTACH_XDP,
                                          att.XDP_FLAGS_SKB_MODE)
            else:
                links.ipr.link("set", index=dev.index, xdp={"attrs": [
                    ("IFLA_XDP_FD", prog), ("IFLA_XDP_FLAGS", att.XDP_FLAGS_SKB_MODE)]})
        out = the_lab.netctl("apply", the_lab.policy(DROP_UDP_5555), "--dev",
                             the_lab.dut_if, "--xdp-mode", "generic", check=False)
        assert out.returncode == 4, out.stdout + out.stderr
        assert "not netctl's" in out.stderr and "foreign_xdp" in out.stderr
        assert "Traceback" not in out.stderr
        with inside(the_lab.dut), att.Links(link_dir="/nonexistent") as links:
            dev = links.find(the_lab.dut_if)
            assert att.prog_name(dev.xdp_prog_id) == "foreign_xdp"   # untouched
            assert links.tc_ours(dev, "egress") == []                # nothing attached
        assert _link_pins(the_lab) == []
    finally:
        if link is not None:
            os.close(link)
        else:
            run("ip", "link", "set", "dev", the_lab.dut_if, "xdpgeneric", "off",
                ns=the_lab.dut, check=False)
        os.close(prog)
