"""Attach and detach netctl's programs: bpf_links (tcx, XDP) where the kernel has them,
netlink through pyroute2 (never IPDB) where it has not.

Two ways onto each hook, the first where the kernel offers it (``attach_paths``):

* tc: a **tcx** link per direction (BPF_LINK_CREATE with BPF_TCX_INGRESS/EGRESS, kernels
  6.6+), pinned in the namespace's link directory as ``tcx-<direction>-<ifindex>``.  The
  pin holds the attachment: no `tc filter del` or qdisc deletion removes it, and programs
  of others on the same hook (tcx links or tc filters) run beside it.  A new program is
  swapped into the link with BPF_LINK_UPDATE (atomic).  Else (**cls_bpf**) a clsact qdisc
  (created when missing, and removed on detach only if netctl created it and nothing else
  uses it), with one direct-action bpf filter per direction at ``TC_PRIO``/``TC_HANDLE``
  named ``netctl_ingress``/``netctl_egress``; replacing that filter swaps programs
  atomically.  Accepted packets leave with TC_ACT_UNSPEC, which tcx reads as TCX_NEXT: what
  others attached behind netctl still runs (every return code netctl's tc programs use means
  the same under both: tests/unit/test_attach_paths.py).
* XDP: a **link** (BPF_LINK_CREATE with BPF_XDP and the mode's flag), pinned as
  ``xdp-<ifindex>`` and swapped with BPF_LINK_UPDATE; else **netlink** (IFLA_XDP with
  XDP_FLAGS_REPLACE).  An interface holds one XDP program: moving between the two ways takes
  the old one off first.

What is netctl's is recognised by name, so that other people's programs, qdiscs, filters
and links are never touched: an XDP or tcx program is netctl's when its kernel name is one of
netctl's (``XDP_PROG_NAMES``, ``TCX_PROG_NAMES``), a filter by its name and position.  A
foreign XDP program (attached either way) makes the attach fail.

Removing the link pins by hand (or unmounting the bpffs) releases the links: their programs
leave the interfaces with them.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import sched_bpf

from ..errors import AttachError, NetctlError
from ..kernel import bpfsys
from .build import KERNEL_NAMES, prog_pin
from .netns import LINK_DIR_NAME as LINK_DIR_NAME
from .netns import Namespace, pinned_builds

# pyroute2 does not decode the program id and tag of a bpf filter; add them to its
# attribute table (kernel numbering: TCA_BPF_FLAGS_GEN 9, TCA_BPF_TAG 10, TCA_BPF_ID 11)
# so that status can tell which program a filter runs.
if len(sched_bpf.options.nla_map) == 9:
    sched_bpf.options.nla_map = (*sched_bpf.options.nla_map, ("TCA_BPF_FLAGS_GEN", "uint32"),
                                 ("TCA_BPF_TAG", "hex"), ("TCA_BPF_ID", "uint32"))

NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
RTPROT_NETCTL = 203   # the protocol number of kernel routes netctl installs (routes: cc)

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_HW_MODE = 8
XDP_FLAGS_REPLACE = 16
XDP_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
_ATTACHED_MODE = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload"}

XDP_ROLES = ("xdp", "xdp_l3")
XDP_PROG_NAMES = frozenset(KERNEL_NAMES[role] for role in XDP_ROLES)
TC_PROG_NAMES = {"ingress": KERNEL_NAMES["tc_ingress"], "egress": KERNEL_NAMES["tc_egress"]}
# tcx lists programs, not filters: netctl's are known by their kernel names (both variants)
TC_ROLES = {d: (f"tc_{d}", f"tc_{d}_l3") for d in ("ingress", "egress")}
TCX_PROG_NAMES = {d: frozenset(KERNEL_NAMES[role] for role in TC_ROLES[d])
                  for d in ("ingress", "egress")}
TCX_ATTACH_TYPES = {"ingress": bpfsys.TCX_INGRESS, "egress": bpfsys.TCX_EGRESS}

# The ways onto the hooks (status and the state file name them so)
TC_TCX = "tcx"
TC_CLS_BPF = "cls_bpf"
XDP_LINK = "link"
XDP_NETLINK = "netlink"
# What an apply may be asked for (NETCTL_ATTACH): the kernel's best, or the netlink ways
ATTACH_AUTO = "auto"
ATTACH_LEGACY = "legacy"
ATTACH_REQUESTS = (ATTACH_AUTO, ATTACH_LEGACY)
TC_PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
TC_PRIO = 0x4E43          # "NC": away from tc's automatic 49152 and the usual 1
TC_HANDLE = 1
ETH_P_ALL = 0x0003

# Link types (ARPHRD_*, the kernel's if_arp.h) by the header their frames start with.  Those
# with an Ethernet header (the loopback device has one too, zeroed); those that start at the
# IP header, with no header_ops of their own that could put a link-layer header in front at
# egress: tun and WireGuard (NONE), raw-IP modems, PPP, ipip, ip6tnl and sit.  Any other type
# is refused at apply: a frame netctl cannot parse must never pass unjudged.
ETHERNET_LINK_TYPES = {1: "ether", 772: "loopback"}
L3_LINK_TYPES = {65534: "none", 519: "rawip", 512: "ppp", 768: "ipip", 769: "ip6tnl",
                 776: "sit"}
LINK_TYPE_NAMES = {**ETHERNET_LINK_TYPES, **L3_LINK_TYPES, 778: "ipgre", 823: "ip6gre",
                   32: "infiniband", 280: "can", 801: "ieee80211", 803: "ieee80211-radiotap",
                   804: "ieee802154"}
LAYER_ETHERNET = "ethernet"
LAYER_L3 = "l3"


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    kind: str | None           # rtnetlink link kind (veth, bridge...); None for a NIC
    up: bool
    xdp_mode: str | None       # native / generic / offload, or None
    xdp_prog_id: int | None
    mac: str | None = None
    link_type: int = 1            # ARPHRD_*: what the device's frames start with

    @property
    def virtual(self) -> bool:
        return self.kind is not None or self.name == "lo"

    @property
    def layer(self) -> str | None:
        """LAYER_ETHERNET, LAYER_L3 (frames start at the IP header), or None when netctl has
        no parser for this device's frames."""
        if self.link_type in ETHERNET_LINK_TYPES:
            return LAYER_ETHERNET
        if self.link_type in L3_LINK_TYPES:
            return LAYER_L3
        return None

    @property
    def link_type_name(self) -> str:
        return LINK_TYPE_NAMES.get(self.link_type, f"type {self.link_type}")


@dataclass(frozen=True)
class TcFilter:
    direction: str
    prio: int
    handle: int
    kind: str
    name: str | None
    prog_id: int | None

    @property
    def ours(self) -> bool:
        return (self.prio == TC_PRIO and self.kind == "bpf"
                and self.name == TC_PROG_NAMES[self.direction])


@dataclass(frozen=True)
class TcAttachment:
    """netctl's program on a tc hook, however it is attached."""

    path: str                # TC_TCX or TC_CLS_BPF
    prog_id: int | None
    link_id: int = 0         # tcx: the link that holds it


# ---- which ways the kernel offers ------------------------------------------------------------

@cache
def tcx_offered() -> bool:
    """Whether the kernel attaches tc programs as tcx links.  Probed, not told by version:
    BPF_LINK_CREATE of a tiny sched_cls program at BPF_TCX_INGRESS on interface index 0
    reaches the device lookup (ENODEV) only where tcx exists; older kernels refuse the
    attach type (EINVAL).  Nothing is attached either way."""
    return _link_probe(bpfsys.PROG_SCHED_CLS, -1, 0, bpfsys.TCX_INGRESS, 0) == errno_mod.ENODEV


@cache
def xdp_link_offered() -> bool:
    """Whether the kernel attaches XDP programs as links.  Probed on the loopback device
    (index 1 in every namespace) in hardware-offload mode, which it never has: where XDP
    links exist the kernel gets as far as asking the driver (EOPNOTSUPP); where they do not,
    it refuses the link (EINVAL).  Nothing is attached either way."""
    return _link_probe(bpfsys.PROG_XDP, 2, 1, bpfsys.ATTACH_XDP,
                       XDP_FLAGS_HW_MODE) == errno_mod.EOPNOTSUPP


def _link_probe(prog_type: int, retval: int, ifindex: int, attach_type: int,
                flags: int) -> int:
    """The errno of a link create that must fail (0 if it did not: the link is closed)."""
    from ..kernel import insns as asm

    try:
        prog = bpfsys.prog_load(prog_type, asm.return_imm(retval), name="netctl_probe")
    except bpfsys.BpfError as exc:
        return exc.errno or -1
    try:
        os.close(bpfsys.link_create(prog, ifindex, attach_type, flags))
        return 0
    except bpfsys.BpfError as exc:
        return exc.errno or -1
    finally:
        os.close(prog)


def attach_paths(request: str | None) -> tuple[str, str]:
    """(the tc way, the XDP way) for an attach request (NETCTL_ATTACH): ``auto`` (or None)
    takes tcx and XDP links where the kernel offers them, ``legacy`` cls_bpf filters and
    netlink."""
    if request in (None, ATTACH_AUTO):
        return (TC_TCX if tcx_offered() else TC_CLS_BPF,
                XDP_LINK if xdp_link_offered() else XDP_NETLINK)
    if request == ATTACH_LEGACY:
        return TC_CLS_BPF, XDP_NETLINK
    raise NetctlError(f"NETCTL_ATTACH={request!r}: expected one of "
                      f"{', '.join(ATTACH_REQUESTS)}")


def link_pin_name(hook: str, index: int) -> str:
    """The pin of netctl's link on hook ``hook`` (ingress, egress: tcx; xdp) of interface
    ``index``."""
    return f"xdp-{index}" if hook == "xdp" else f"tcx-{hook}-{index}"


def _err(interface: str, exc: NetlinkError, doing: str) -> AttachError:
    return AttachError(interface, exc.code, f"{doing}: {os.strerror(exc.code)} (errno "
                       f"{exc.code})")


def _bpf_err(interface: str, exc: bpfsys.BpfError, doing: str) -> AttachError:
    code = exc.errno or errno_mod.EIO
    return AttachError(interface, code, f"{doing}: {os.strerror(code)} (errno {code})")


class Links:
    """One rtnetlink socket in the current network namespace, and the directory where the
    links netctl attaches are pinned (default: the namespace's, netctl.datapath.netns)."""

    def __init__(self, link_dir: str | None = None):
        self.ipr = IPRoute()
        self._link_dir = link_dir

    @property
    def link_dir(self) -> str:
        if self._link_dir is None:
            self._link_dir = Namespace.current().link_dir
        return self._link_dir

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- links
    def find(self, name: str) -> LinkInfo | None:
        try:
            found = self.ipr.link_lookup(ifname=name)
        except NetlinkError:
            return None
        return self.info(found[0]) if found else None

    def info(self, index: int) -> LinkInfo | None:
        try:
            msg = self.ipr.get_links(index)[0]
        except NetlinkError as exc:
            if exc.code == errno_mod.ENODEV:
                return None
            raise
        linkinfo = msg.get_attr("IFLA_LINKINFO")
        kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
        xdp = msg.get_attr("IFLA_XDP")
        mode = prog_id = None
        if xdp is not None:
            mode = _ATTACHED_MODE.get(xdp.get_attr("IFLA_XDP_ATTACHED"))
            prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if mode else None
        return LinkInfo(index=index, name=msg.get_attr("IFLA_IFNAME"), kind=kind,
                        up=bool(msg["flags"] & 1), xdp_mode=mode, xdp_prog_id=prog_id,
                        mac=msg.get_attr("IFLA_ADDRESS"), link_type=msg["ifi_type"])

    # -- neighbours and addresses (forwarding)
    def neighbour(self, index: int, address: str) -> str | None:
        """The MAC of ``address`` on interface ``index`` in the neighbour table, if usable."""
        try:
            entries = self.ipr.get_neighbours(ifindex=index, dst=address)
        except NetlinkError:
            return None
        for entry in entries:
            state = entry["state"]
            if state & (NUD_INCOMPLETE | NUD_FAILED):
                continue
            mac = entry.get_attr("NDA_LLADDR")
            if mac:
                return mac
        return None

    def addresses(self) -> list[tuple[int, str]]:
        """Every address of every interface here: (family 4/6, address)."""
        out = []
        for msg in self.ipr.get_addr():
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if address:
                out.append((4 if msg["family"] == socket.AF_INET else 6, address))
        return out

    def set_route(self, dst: str, via: str, index: int, cc: str | None) -> None:
        """A kernel route for traffic this host starts (with its congestion control), marked
        as netctl's by its protocol number."""
        kwargs: dict = {"dst": dst, "gateway": via, "oif": index, "proto": RTPROT_NETCTL}
        if cc:
            kwargs["metrics"] = {"RTAX_CC_ALGO": cc}
        try:
            self.ipr.route("replace", **kwargs)
        except NetlinkError as exc:
            raise AttachError(dst, exc.code, f"installing the kernel route via {via}: "
                              f"{os.strerror(exc.code)}") from None

    def netctl_routes(self) -> list[tuple[int, str]]:
        """(family, dst/len) of the kernel routes netctl installed."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self.ipr.get_routes(family=family, proto=RTPROT_NETCTL):
                if msg["proto"] != RTPROT_NETCTL:
                    continue
                dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET
                                                  else "::")
                out.append((family, f"{dst}/{msg['dst_len']}"))
        return out

    def delete_route(self, family: int, dst: str) -> None:
        with contextlib.suppress(NetlinkError):
            self.ipr.route("del", family=family, dst=dst, proto=RTPROT_NETCTL)

    # -- XDP
    def xdp_is_ours(self, link: LinkInfo) -> bool:
        """Whether the interface's XDP program is netctl's: by its kernel name, or, where
        opening a program by id is refused (it needs CAP_SYS_ADMIN), by being one netctl
        has pinned in this namespace (reading a pin needs no more than CAP_BPF)."""
        if link.xdp_prog_id is None:
            return False
        name = prog_name(link.xdp_prog_id)
        if name is not None:
            return name in XDP_PROG_NAMES
        return link.xdp_prog_id in self._pinned_prog_ids(XDP_ROLES)

    def xdp_link_id(self, link: LinkInfo) -> int | None:
        """The bpf_link holding the interface's XDP program, if a link holds it (netlink
        does not say: the links of the system are asked which holds this program here)."""
        if link.xdp_prog_id is None:
            return None
        pinned = self._pinned_info(link_pin_name("xdp", link.index))
        if pinned is not None and (pinned.prog_id, pinned.ifindex) == (link.xdp_prog_id,
                                                                       link.index):
            return pinned.id
        for link_id in _safe_link_ids():
            info = _link_info_by_id(link_id)
            if info is not None and info.type == bpfsys.LINK_TYPE_XDP \
                    and (info.prog_id, info.ifindex) == (link.xdp_prog_id, link.index):
                return link_id
        return None

    def xdp_path(self, link: LinkInfo) -> str | None:
        """How the interface's XDP program is attached (XDP_LINK, XDP_NETLINK), or None."""
        if link.xdp_prog_id is None:
            return None
        return XDP_LINK if self.xdp_link_id(link) is not None else XDP_NETLINK

    def attach_xdp(self, link: LinkInfo, fd: int, mode: str, path: str = XDP_NETLINK) -> None:
        """Attach (or atomically replace netctl's own program) in ``mode``, the ``path``
        way.  A foreign program is never replaced."""
        if link.xdp_prog_id is not None:
            if not self.xdp_is_ours(link):
                raise AttachError(link.name, errno_mod.EBUSY,
                                  f"already has an XDP program that is not netctl's (id "
                                  f"{link.xdp_prog_id}, {prog_name(link.xdp_prog_id)!r}); "
                                  "detach it first or use --xdp-mode off")
            link_id = self.xdp_link_id(link)
            if link.xdp_mode == mode and (link_id is not None) == (path == XDP_LINK):
                if link_id is not None:
                    self._swap_link(link, "xdp", link_id, fd, link.xdp_prog_id)
                else:
                    self._netlink_xdp(link, fd, mode, link.xdp_prog_id)
                return
            # Another mode or the other way: an interface holds one XDP program, so netctl's
            # goes off first and the new one goes on right after.
            self.detach_xdp(link)
        if path == XDP_LINK:
            try:
                link_fd = bpfsys.link_create(fd, link.index, bpfsys.ATTACH_XDP,
                                             XDP_MODE_FLAGS[mode])
            except bpfsys.BpfError as exc:
                raise _bpf_err(link.name, exc, f"attaching the XDP link in {mode} mode") \
                    from None
            self._hold(link, "xdp", link_fd)
        else:
            self._netlink_xdp(link, fd, mode, None)

    def _netlink_xdp(self, link: LinkInfo, fd: int, mode: str, replacing: int | None) -> None:
        flags = XDP_MODE_FLAGS[mode]
        attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd)]
        expected = -1
        if replacing is not None:
            expected = self.open_prog(replacing, XDP_ROLES)
            flags |= XDP_FLAGS_REPLACE
            attrs.append(("IFLA_XDP_EXPECTED_FD", expected))
        else:
            flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
        attrs.append(("IFLA_XDP_FLAGS", flags))
        try:
            self.ipr.link("set", index=link.index, xdp={"attrs": attrs})
        except NetlinkError as exc:
            raise _err(link.name, exc, f"attaching XDP in {mode} mode") from None
        finally:
            if expected >= 0:
                os.close(expected)

    def detach_xdp(self, link: LinkInfo) -> None:
        """Take the interface's XDP program off (callers check it is netctl's): its link
        detached and unpinned, or through netlink."""
        if link.xdp_mode is None or link.xdp_mode not in XDP_MODE_FLAGS:
            return
        link_id = self.xdp_link_id(link)
        if link_id is not None:
            self._release(link, "xdp", link_id)
            return
        attrs = [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", XDP_MODE_FLAGS[link.xdp_mode])]
        try:
            self.ipr.link("set", index=link.index, xdp={"attrs": attrs})
        except NetlinkError as exc:
            if exc.code != errno_mod.ENODEV:
                raise _err(link.name, exc, "detaching XDP") from None

    # -- links: pinned, swapped, released
    def _pin_path(self, hook: str, index: int) -> str:
        return f"{self.link_dir}/{link_pin_name(hook, index)}"

    def _pinned_info(self, name: str) -> bpfsys.LinkInfo | None:
        return _link_info(bpfsys.obj_get, f"{self.link_dir}/{name}")

    def _pinned_progs(self, roles: tuple[str, ...]) -> list[str]:
        """The pins of the programs of ``roles`` in this namespace's builds (the link
        directory's siblings, each pinned as build.prog_pin says)."""
        root = os.path.dirname(self.link_dir)
        return [path for build in pinned_builds(root) for role in roles
                if os.path.exists(path := prog_pin(f"{root}/{build}", role))]

    def _pinned_prog_ids(self, roles: tuple[str, ...]) -> set[int]:
        ids = set()
        for path in self._pinned_progs(roles):
            opened = _open_pinned_prog(path)
            if opened is not None:
                ids.add(opened[1])
                os.close(opened[0])
        return ids

    def open_prog(self, prog_id: int, roles: tuple[str, ...]) -> int:
        """An fd of program ``prog_id``: by id, or, where that is refused (EPERM: it needs
        CAP_SYS_ADMIN), through netctl's pin of it."""
        try:
            return bpfsys.prog_fd_by_id(prog_id)
        except bpfsys.BpfError as exc:
            if exc.errno != errno_mod.EPERM:
                raise
            refused = exc
        for path in self._pinned_progs(roles):
            opened = _open_pinned_prog(path)
            if opened is not None:
                if opened[1] == prog_id:
                    return opened[0]
                os.close(opened[0])
        raise refused

    def _expected_prog(self, hook: str, prog_id: int | None) -> int | None:
        """An fd of program ``prog_id`` for BPF_LINK_UPDATE's "only if it still runs this"
        check (by id, else through netctl's pin), or None (no check) where neither opens
        it: a program netctl has not pinned, without CAP_SYS_ADMIN.  The apply lock keeps
        other netctl processes out either way."""
        if not prog_id:
            return None
        try:
            return self.open_prog(prog_id, XDP_ROLES if hook == "xdp" else TC_ROLES[hook])
        except bpfsys.BpfError as exc:
            if exc.errno == errno_mod.EPERM:
                return None
            raise

    def _open_link(self, hook: str, index: int, link_id: int) -> int:
        """An fd of link ``link_id``: through netctl's pin when it holds that link (opening
        a pin needs no more than reading it), else by id."""
        with contextlib.suppress(OSError):
            fd = bpfsys.obj_get(self._pin_path(hook, index))
            try:
                if bpfsys.link_info(fd).id == link_id:
                    return fd
            except OSError:
                pass
            os.close(fd)
        return bpfsys.link_fd_by_id(link_id)

    def _hold(self, link: LinkInfo, hook: str, link_fd: int) -> None:
        """Pin a new link (closing its fd): the pin is what keeps it attached.  Whatever
        the pin's name held before (a link whose interface is gone) is dropped."""
        path = self._pin_path(hook, link.index)
        try:
            os.makedirs(self.link_dir, mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            bpfsys.obj_pin(link_fd, path)
        except OSError as exc:
            # The fd closes below and the link with it: nothing is left attached.
            code = exc.errno or errno_mod.EIO
            raise AttachError(link.name, code, f"pinning the {hook} link at {path}: "
                              f"{os.strerror(code)}") from None
        finally:
            os.close(link_fd)

    def _swap_link(self, link: LinkInfo, hook: str, link_id: int, fd: int,
                   old_prog_id: int | None) -> None:
        """Run ``fd`` in netctl's link ``link_id`` (BPF_LINK_UPDATE: atomic; refused if the
        link no longer runs ``old_prog_id``), and make sure the link is pinned."""
        try:
            link_fd = self._open_link(hook, link.index, link_id)
        except bpfsys.BpfError as exc:
            raise _bpf_err(link.name, exc, f"opening the {hook} link {link_id}") from None
        try:
            old = self._expected_prog(hook, old_prog_id)
            try:
                bpfsys.link_update(link_fd, fd, old)
            finally:
                if old is not None:
                    os.close(old)
        except bpfsys.BpfError as exc:
            os.close(link_fd)
            raise _bpf_err(link.name, exc, f"swapping the program of the {hook} link") \
                from None
        pinned = self._pinned_info(link_pin_name(hook, link.index))
        if pinned is not None and pinned.id == link_id:
            os.close(link_fd)
        else:
            self._hold(link, hook, link_fd)

    def _release(self, link: LinkInfo, hook: str, link_id: int) -> None:
        """Detach netctl's link ``link_id`` now and remove its pin."""
        with contextlib.suppress(OSError):
            link_fd = self._open_link(hook, link.index, link_id)
            try:
                bpfsys.link_detach(link_fd)
            except bpfsys.BpfError as exc:
                if exc.errno not in (errno_mod.ENOLINK, errno_mod.ENODEV):
                    raise _bpf_err(link.name, exc, f"detaching the {hook} link") from None
            finally:
                os.close(link_fd)
        pinned = self._pinned_info(link_pin_name(hook, link.index))
        if pinned is None or pinned.id == link_id or pinned.defunct:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pin_path(hook, link.index))

    def sweep_link_pins(self) -> list[str]:
        """Remove the pins of links that run nowhere any more (their interface is gone, or
        they were detached): the names removed.  Callers hold the namespace lock."""
        removed = []
        try:
            names = sorted(os.listdir(self.link_dir))
        except OSError:
            return removed
        for name in names:
            info = self._pinned_info(name)
            if info is None or info.defunct:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.link_dir}/{name}")
                removed.append(name)
        return removed

    # -- tc
    def has_clsact(self, link: LinkInfo) -> bool:
        try:
            qdiscs = self.ipr.get_qdiscs(link.index)
        except NetlinkError:
            return False
        return any(q.get_attr("TCA_KIND") == "clsact" for q in qdiscs)

    def ensure_clsact(self, link: LinkInfo) -> bool:
        """Add a clsact qdisc when there is none; True when this call created it."""
        if self.has_clsact(link):
            return False
        try:
            self.ipr.tc("add", "clsact", link.index)
        except NetlinkError as exc:
            if exc.code == errno_mod.EEXIST:
                return False
            raise _err(link.name, exc, "adding a clsact qdisc") from None
        return True

    def filters(self, link: LinkInfo, direction: str) -> list[TcFilter]:
        try:
            msgs = self.ipr.get_filters(index=link.index, parent=TC_PARENTS[direction])
        except NetlinkError:
            return []
        out = []
        for msg in msgs:
            options = msg.get_attr("TCA_OPTIONS")
            if options is None:  # the chain header message of a priority
                continue
            out.append(TcFilter(direction=direction, prio=msg["info"] >> 16,
                                handle=msg["handle"], kind=msg.get_attr("TCA_KIND"),
                                name=options.get_attr("TCA_BPF_NAME"),
                                prog_id=options.get_attr("TCA_BPF_ID")))
        return out

    def tcx_programs(self, link: LinkInfo, direction: str) -> list[bpfsys.Attached]:
        """The programs on the interface's tcx hook, in the order they run ([] where the
        kernel has no tcx)."""
        if not tcx_offered():
            return []
        try:
            return bpfsys.prog_query(link.index, TCX_ATTACH_TYPES[direction])
        except OSError:
            return []

    def tc_ours(self, link: LinkInfo, direction: str) -> list[TcAttachment]:
        """netctl's programs on the tc hook of ``direction``: its tcx link and its cls_bpf
        filter (both only for the moment of a move from one way to the other)."""
        attached = self.tcx_programs(link, direction)
        # netctl's link is the one its pin holds; a program's name, read by id, tells the
        # rest (a pin lost by hand). Opening a program by id needs CAP_SYS_ADMIN, a pin
        # does not: with CAP_BPF alone the pin is what recognises netctl's link.
        pinned = self._pinned_info(link_pin_name(direction, link.index)) if attached else None
        out = [TcAttachment(TC_TCX, a.prog_id, a.link_id)
               for a in attached
               if a.link_id and ((pinned is not None and pinned.id == a.link_id)
                                 or prog_name(a.prog_id) in TCX_PROG_NAMES[direction])]
        out += [TcAttachment(TC_CLS_BPF, f.prog_id)
                for f in self.filters(link, direction) if f.ours]
        return out

    def attach_tcx(self, link: LinkInfo, fd: int, direction: str) -> None:
        """netctl's tcx link on this hook runs ``fd``: the program swapped in when there is
        one (BPF_LINK_UPDATE, atomic), else a link created (behind the programs there) and
        pinned."""
        ours = [a for a in self.tc_ours(link, direction) if a.path == TC_TCX]
        if ours:
            self._swap_link(link, direction, ours[0].link_id, fd, ours[0].prog_id)
            for extra in ours[1:]:
                self._release(link, direction, extra.link_id)
            return
        try:
            link_fd = bpfsys.link_create(fd, link.index, TCX_ATTACH_TYPES[direction])
        except bpfsys.BpfError as exc:
            raise _bpf_err(link.name, exc, f"attaching the tcx {direction} link") from None
        self._hold(link, direction, link_fd)

    def detach_tcx(self, link: LinkInfo, direction: str) -> bool:
        """Detach and unpin netctl's tcx links on this hook; False when there were none."""
        ours = [a for a in self.tc_ours(link, direction) if a.path == TC_TCX]
        for a in ours:
            self._release(link, direction, a.link_id)
        return bool(ours)

    def attach_tc(self, link: LinkInfo, fd: int, direction: str) -> None:
        """Add netctl's cls_bpf filter, or atomically replace the program of the one there
        (the clsact qdisc must be there: ensure_clsact)."""
        try:
            self.ipr.tc("replace-filter", kind="bpf", index=link.index, handle=TC_HANDLE,
                        fd=fd, name=TC_PROG_NAMES[direction], parent=TC_PARENTS[direction],
                        classid=1, direct_action=True, prio=TC_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as exc:
            raise _err(link.name, exc, f"attaching the tc {direction} filter") from None

    def detach_tc(self, link: LinkInfo, direction: str) -> bool:
        """Remove netctl's cls_bpf filter; False when there was none."""
        if not any(f.ours for f in self.filters(link, direction)):
            return False
        try:
            self.ipr.tc("del-filter", kind="bpf", index=link.index, handle=TC_HANDLE,
                        parent=TC_PARENTS[direction], prio=TC_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as exc:
            if exc.code not in (errno_mod.ENOENT, errno_mod.ENODEV, errno_mod.EINVAL):
                raise _err(link.name, exc, f"removing the tc {direction} filter") from None
        return True

    def remove_clsact_if_unused(self, link: LinkInfo) -> bool:
        """Remove the clsact qdisc when no filter is left on it (netctl created it)."""
        if any(self.filters(link, d) for d in TC_PARENTS):
            return False
        with contextlib.suppress(NetlinkError):
            self.ipr.tc("del", "clsact", link.index)
            return True
        return False


def _open_pinned_prog(path: str) -> tuple[int, int] | None:
    """(an fd, the id) of the program pinned at ``path``, or None."""
    try:
        fd = bpfsys.obj_get(path)
    except OSError:
        return None
    try:
        return fd, bpfsys.prog_info(fd).id
    except OSError:
        os.close(fd)
        return None


def prog_name(prog_id: int) -> str | None:
    try:
        fd = bpfsys.prog_fd_by_id(prog_id)
    except OSError:
        return None
    try:
        return bpfsys.prog_info(fd).name
    finally:
        os.close(fd)


def _safe_link_ids() -> list[int]:
    try:
        return bpfsys.link_ids()
    except OSError:
        return []


def _link_info(open_link: Callable[[Any], int], where: Any) -> bpfsys.LinkInfo | None:
    """The info of the link ``open_link(where)`` opens (a pin path, a link id), or None when
    it cannot be opened or read."""
    try:
        fd = open_link(where)
    except OSError:
        return None
    try:
        return bpfsys.link_info(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _link_info_by_id(link_id: int) -> bpfsys.LinkInfo | None:
    return _link_info(bpfsys.link_fd_by_id, link_id)
