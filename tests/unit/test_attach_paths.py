"""The ways onto the hooks, without root: the verdicts of netctl's tc programs mean the same
under tcx as under a cls_bpf filter (read from the C), the request NETCTL_ATTACH makes, the
records that remember the way, and the order of a move between ways (never neither)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from netctl.datapath import apply as apply_mod
from netctl.datapath import attach as att
from netctl.datapath import hooks
from netctl.datapath.hooks import Hooks, Target, same_interfaces, with_paths
from netctl.datapath.state import Interface, Request, State
from netctl.errors import NetctlError
from netctl.policy.model import TcHook, XdpMode
from netctl.present import format_status

ROOT = Path(__file__).resolve().parents[2]

# include/uapi/linux/pkt_cls.h, and enum tcx_action_base of include/uapi/linux/bpf.h (6.6)
TC_ACT = {"TC_ACT_UNSPEC": -1, "TC_ACT_OK": 0, "TC_ACT_SHOT": 2, "TC_ACT_REDIRECT": 7}
TCX = {"TCX_NEXT": -1, "TCX_PASS": 0, "TCX_DROP": 2, "TCX_REDIRECT": 7}
# What a direct-action cls_bpf filter's return means, and what tcx makes of the same number
# (net/core/dev.c, tcx_action_code(): PASS, DROP and REDIRECT are kept, anything else is
# NEXT, which runs the next program and then the tc filters)
TC_MEANING = {-1: "next", 0: "accept", 2: "drop", 7: "redirect"}
TCX_MEANING = {TCX["TCX_NEXT"]: "next", TCX["TCX_PASS"]: "accept", TCX["TCX_DROP"]: "drop",
               TCX["TCX_REDIRECT"]: "redirect"}
# bpf_redirect() and bpf_redirect_neigh() return TC_ACT_REDIRECT, or TC_ACT_SHOT on error
HELPER_RESULTS = {"netctl_redirect_neigh": ("TC_ACT_REDIRECT", "TC_ACT_SHOT"),
                  "bpf_redirect": ("TC_ACT_REDIRECT", "TC_ACT_SHOT")}


def _tc_returns() -> set[str]:
    """Every value netctl's tc programs return, as constant names: the entry file's returns
    and those of the tc forwarder they pass on (``return action``)."""
    entry = (ROOT / "bpf/tc/netctl_tc.c").read_text()
    forward = (ROOT / "bpf/include/netctl_forward.h").read_text()
    tc_forward = forward[forward.index("#ifdef TC_ACT_SHOT"):]
    names = set()
    for text in (entry, tc_forward):
        for expr in re.findall(r"\breturn\s+([^;]+);", text):
            expr = expr.strip()
            call = re.match(r"(\w+)\s*\(", expr)
            if expr.startswith("TC_ACT_"):
                names.add(expr)
            elif call and call.group(1) in HELPER_RESULTS:
                names.update(HELPER_RESULTS[call.group(1)])
            elif call and call.group(1).startswith("netctl_tc"):
                continue                        # the entry points call the body
            elif expr in ("action", "NETCTL_NOT_FORWARDED"):
                continue                        # the forwarder's result, read above
            else:
                raise AssertionError(f"a tc return this test does not know: {expr!r}")
    return names


def test_every_verdict_of_the_tc_programs_means_the_same_under_tcx():
    returned = _tc_returns()
    assert {"TC_ACT_UNSPEC", "TC_ACT_SHOT", "TC_ACT_REDIRECT"} <= returned
    for name in returned:
        value = TC_ACT[name]
        assert TCX_MEANING.get(value, "next") == TC_MEANING[value], name
    # An accepted packet goes on to what others attached behind netctl: TC_ACT_UNSPEC is
    # TCX_NEXT, not TCX_PASS.
    assert TC_ACT["TC_ACT_UNSPEC"] == TCX["TCX_NEXT"]


def test_the_kernel_header_agrees_on_tc_act_values():
    header = Path("/usr/include/linux/pkt_cls.h")
    if not header.exists():
        pytest.skip("no linux/pkt_cls.h")
    text = header.read_text()
    for name, value in TC_ACT.items():
        m = re.search(rf"#define\s+{name}\s+\(?(-?\d+)\)?", text)
        assert m and int(m.group(1)) == value, name


def test_attach_requests():
    assert att.attach_paths("legacy") == (att.TC_CLS_BPF, att.XDP_NETLINK)
    with pytest.raises(NetctlError, match="NETCTL_ATTACH='tcx'"):
        att.attach_paths("tcx")
    assert apply_mod.normal_attach(None) is None
    assert apply_mod.normal_attach("") is None
    assert apply_mod.normal_attach("auto") is None        # the default is not recorded
    assert apply_mod.normal_attach("legacy") == "legacy"
    with pytest.raises(NetctlError, match="expected one of auto, legacy"):
        apply_mod.normal_attach("links")


def test_link_pins_are_named_by_hook_and_interface_index():
    assert att.link_pin_name("ingress", 7) == "tcx-ingress-7"
    assert att.link_pin_name("egress", 7) == "tcx-egress-7"
    assert att.link_pin_name("xdp", 12) == "xdp-12"


def test_with_paths_names_the_way_of_the_hooks_used_only():
    tc_only = with_paths(Hooks("tc", "tc", "why"), "tcx", "link")
    assert (tc_only.tc_attach, tc_only.xdp_attach) == ("tcx", None)
    xdp_only = with_paths(Hooks("xdp-native", None, "why"), "tcx", "link")
    assert (xdp_only.tc_attach, xdp_only.xdp_attach) == (None, "link")
    both = with_paths(Hooks("xdp-generic", "tc", "why"), "cls_bpf", "netlink")
    assert (both.tc_attach, both.xdp_attach) == ("cls_bpf", "netlink")


def test_records_keep_the_way_and_older_records_read_as_netlink_ways():
    rec = Interface(name="eth0", ifindex=2, ingress="xdp-native", egress="tc",
                    tc_attach="tcx", xdp_attach="link")
    back = Interface.from_json(rec.to_json())
    assert back == rec and (back.tc_path, back.xdp_path) == ("tcx", "link")
    old = Interface.from_json({"name": "eth0", "ifindex": 2, "ingress": "xdp-native",
                               "egress": "tc", "created_clsact": True})
    assert (old.tc_path, old.xdp_path) == ("cls_bpf", "netlink")
    assert "tc_attach" not in old.to_json()
    assert Interface(name="x", ingress=None, egress=None).tc_path is None
    # The request remembers a legacy attach (set edits apply the same way); auto is absent.
    state = State(request=Request(["eth0"], None, "legacy"))
    assert State.loads(state.dumps()).request == Request(["eth0"], None, "legacy")
    assert "attach" not in Request(["eth0"]).to_json()


def test_another_way_is_not_the_same_interfaces():
    link = att.LinkInfo(index=2, name="eth0", kind="veth", up=True, xdp_mode=None,
                        xdp_prog_id=None)
    target = Target("eth0", XdpMode.OFF, (TcHook.INGRESS, TcHook.EGRESS))
    tcx = with_paths(Hooks("tc", "tc", "why"), "tcx", "link")
    legacy = with_paths(Hooks("tc", "tc", "why"), "cls_bpf", "netlink")
    recorded = {"eth0": hooks.interface_record(target, link, tcx, False)}
    assert same_interfaces(recorded, [(target, link, tcx)])
    assert not same_interfaces(recorded, [(target, link, legacy)])
    older = {"eth0": Interface(name="eth0", ifindex=2, ingress="tc", egress="tc")}
    assert same_interfaces(older, [(target, link, legacy)])
    assert not same_interfaces(older, [(target, link, tcx)])


class _Hooked:
    """The tc side of attach.Links for one interface: netctl's attachment of each direction
    (a way and a program), and every call in order."""

    def __init__(self, have: dict[str, tuple[str, int] | None]):
        self.have = dict(have)
        self.calls: list[tuple] = []
        self.clsact = any(v and v[0] == att.TC_CLS_BPF for v in have.values())
        self.program_of = lambda fd: fd      # what a program fd stands for (the undo test)
        self.opened: dict[int, int] = {}     # fds open_prog gave out -> program ids

    def open_prog(self, prog_id, roles):
        fd = os.open(os.devnull, os.O_RDONLY)
        self.opened[fd] = prog_id
        return fd

    def tc_ours(self, link, direction):
        got = self.have.get(direction)
        return [att.TcAttachment(got[0], got[1], 1)] if got else []

    def filters(self, link, direction):
        got = self.have.get(direction)
        return [att.TcFilter(direction, att.TC_PRIO, 1, "bpf", att.TC_PROG_NAMES[direction],
                             got[1])] if got and got[0] == att.TC_CLS_BPF else []

    def attach_tcx(self, link, fd, direction):
        self.calls.append(("attach_tcx", direction))
        self.have[direction] = (att.TC_TCX, self.program_of(fd))

    def detach_tcx(self, link, direction):
        self.calls.append(("detach_tcx", direction))
        if (self.have.get(direction) or ("",))[0] == att.TC_TCX:
            self.have[direction] = None

    def attach_tc(self, link, fd, direction):
        self.calls.append(("attach_tc", direction))
        self.have[direction] = (att.TC_CLS_BPF, self.program_of(fd))

    def detach_tc(self, link, direction):
        self.calls.append(("detach_tc", direction))
        if (self.have.get(direction) or ("",))[0] == att.TC_CLS_BPF:
            self.have[direction] = None
        return True

    def ensure_clsact(self, link):
        created = not self.clsact
        self.clsact = True
        return created

    def remove_clsact_if_unused(self, link):
        self.calls.append(("remove_clsact",))
        self.clsact = False
        return True

    def xdp_is_ours(self, link):
        return False


def _attach(fake: _Hooked, tc_path: str, created_before: bool):
    link = att.LinkInfo(index=2, name="veth0", kind="veth", up=True, xdp_mode=None,
                        xdp_prog_id=None)
    target = Target("veth0", XdpMode.OFF, (TcHook.INGRESS, TcHook.EGRESS))
    found_hooks = with_paths(Hooks("tc", "tc", "why"), tc_path, "link")
    previous = {"veth0": Interface(name="veth0", ifindex=2, ingress="tc", egress="tc",
                                   created_clsact=created_before)}
    programs = {"tc_ingress": 11, "tc_egress": 12}
    undo: list = []
    out = hooks.attach_all(fake, programs, [(target, link, found_hooks)],  # type: ignore[arg-type]
                           previous, undo)
    return out["veth0"], undo


def test_a_move_to_tcx_attaches_the_link_before_the_filter_goes():
    fake = _Hooked({"ingress": (att.TC_CLS_BPF, 5), "egress": (att.TC_CLS_BPF, 6)})
    rec, _undo = _attach(fake, att.TC_TCX, created_before=True)
    for direction in ("ingress", "egress"):
        assert fake.calls.index(("attach_tcx", direction)) < \
            fake.calls.index(("detach_tc", direction))
    assert fake.have == {"ingress": (att.TC_TCX, 11), "egress": (att.TC_TCX, 12)}
    # netctl's clsact qdisc, made for the filters, goes with them
    assert fake.calls[-1] == ("remove_clsact",) and not rec.created_clsact
    assert rec.tc_attach == "tcx"


def test_a_move_to_cls_bpf_adds_the_filter_before_the_link_goes_and_undo_restores():
    fake = _Hooked({"ingress": (att.TC_TCX, 5), "egress": (att.TC_TCX, 6)})
    rec, undo = _attach(fake, att.TC_CLS_BPF, created_before=False)
    for direction in ("ingress", "egress"):
        assert fake.calls.index(("attach_tc", direction)) < \
            fake.calls.index(("detach_tcx", direction))
    assert rec.created_clsact and rec.tc_attach == "cls_bpf"
    assert fake.have == {"ingress": (att.TC_CLS_BPF, 11), "egress": (att.TC_CLS_BPF, 12)}
    # The undo puts netctl's programs before back the way they were: tcx links.
    fake.program_of = fake.opened.__getitem__
    hooks.undo_all(undo)
    assert fake.have == {"ingress": (att.TC_TCX, 5), "egress": (att.TC_TCX, 6)}
    assert not fake.clsact


def test_status_text_names_the_ways():
    report = {"netns": "dut", "cookie": 1, "applied": False, "attach_offered":
              {"tc": "tcx", "xdp": "link"},
              "interfaces": [{"name": "veth0", "ingress": "tc", "egress": "tc", "live": True,
                              "attach": {"tc": "tcx", "xdp": None},
                              "prog_ids": {"tc_ingress": 3, "tc_egress": 4}}],
              "rules": [], "defaults": {}, "drops": [], "problems": []}
    text = format_status(report)
    assert "tc as tcx, XDP as link" in text
    line = next(x for x in text.splitlines() if x.startswith("veth0"))
    assert " tcx " in line and len(line) < 80
