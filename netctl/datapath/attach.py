"""Attach and detach netctl's programs with pyroute2 (netlink; never IPDB).

What is netctl's is recognised by name and position, so that other people's programs,
qdiscs and filters are never touched:

* XDP: the program attached to the interface is netctl's when its kernel name is one of
  ``XDP_PROG_NAMES`` (the Ethernet and the L3 variant).  A foreign XDP program makes the
  attach fail (an interface holds one).
* tc: a clsact qdisc (created when missing, and removed on detach only if netctl created
  it and nothing else uses it), with one direct-action bpf filter per direction at
  ``TC_PRIO``/``TC_HANDLE`` named ``netctl_ingress``/``netctl_egress``.  Replacing that
  filter swaps programs atomically.  Accepted packets leave netctl's filter with
  TC_ACT_UNSPEC, so filters of others behind it still run.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import sched_bpf

from ..errors import AttachError
from ..kernel import bpfsys
from .build import KERNEL_NAMES

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
XDP_FLAGS_REPLACE = 16
XDP_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
_ATTACHED_MODE = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload"}

XDP_PROG_NAMES = frozenset({KERNEL_NAMES["xdp"], KERNEL_NAMES["xdp_l3"]})
TC_PROG_NAMES = {"ingress": KERNEL_NAMES["tc_ingress"], "egress": KERNEL_NAMES["tc_egress"]}
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


def _err(interface: str, exc: NetlinkError, doing: str) -> AttachError:
    return AttachError(interface, exc.code, f"{doing}: {os.strerror(exc.code)} (errno "
                       f"{exc.code})")


class Links:
    """One rtnetlink socket in the current network namespace."""

    def __init__(self):
        self.ipr = IPRoute()

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
        return link.xdp_prog_id is not None and prog_name(link.xdp_prog_id) in XDP_PROG_NAMES

    def attach_xdp(self, link: LinkInfo, fd: int, mode: str) -> None:
        """Attach (or atomically replace netctl's own program) in ``mode``."""
        flags = XDP_MODE_FLAGS[mode]
        attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd)]
        expected = -1
        if link.xdp_prog_id is not None:
            if not self.xdp_is_ours(link):
                raise AttachError(link.name, errno_mod.EBUSY,
                                  f"already has an XDP program that is not netctl's (id "
                                  f"{link.xdp_prog_id}, {prog_name(link.xdp_prog_id)!r}); "
                                  "detach it first or use --xdp-mode off")
            if link.xdp_mode != mode:
                self.detach_xdp(link)
            else:
                expected = bpfsys.prog_fd_by_id(link.xdp_prog_id)
                flags |= XDP_FLAGS_REPLACE
                attrs.append(("IFLA_XDP_EXPECTED_FD", expected))
        if not flags & XDP_FLAGS_REPLACE:
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
        if link.xdp_mode is None or link.xdp_mode not in XDP_MODE_FLAGS:
            return
        attrs = [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", XDP_MODE_FLAGS[link.xdp_mode])]
        try:
            self.ipr.link("set", index=link.index, xdp={"attrs": attrs})
        except NetlinkError as exc:
            if exc.code != errno_mod.ENODEV:
                raise _err(link.name, exc, "detaching XDP") from None

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

    def attach_tc(self, link: LinkInfo, fd: int, direction: str) -> None:
        """Add netctl's filter, or atomically replace the program of the one there."""
        try:
            self.ipr.tc("replace-filter", kind="bpf", index=link.index, handle=TC_HANDLE,
                        fd=fd, name=TC_PROG_NAMES[direction], parent=TC_PARENTS[direction],
                        classid=1, direct_action=True, prio=TC_PRIO, protocol=ETH_P_ALL)
        except NetlinkError as exc:
            raise _err(link.name, exc, f"attaching the tc {direction} filter") from None

    def detach_tc(self, link: LinkInfo, direction: str) -> bool:
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


def prog_name(prog_id: int) -> str | None:
    try:
        fd = bpfsys.prog_fd_by_id(prog_id)
    except OSError:
        return None
    try:
        return bpfsys.prog_info(fd).name
    finally:
        os.close(fd)
