"""Hooks: where each interface is enforced, attaching there (undoably), and checking it.

The choice (docs/datapath.md, Hooks): ``xdp: auto`` takes native XDP on a NIC, tc ingress
on a virtual device (XDP would start from an skb it copies there), native XDP on a virtual
Ethernet device when the policy forwards; ``native``/``generic``/``off`` are taken as asked.
Egress is tc egress when the interface's ``tc:`` lists it.  What is netctl's is recognised
by program and filter name (netctl.datapath.attach).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from ..errors import AttachError, NetctlError
from ..policy.model import Direction, Interface, Policy, TcHook, XdpMode
from . import attach as att
from .state import Interface as InterfaceRecord

HOOK_XDP_NATIVE = "xdp-native"
HOOK_XDP_GENERIC = "xdp-generic"
HOOK_TC = "tc"


# ---- what to attach where ------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    name: str
    xdp: XdpMode
    tc: tuple[TcHook, ...]


@dataclass
class Hooks:
    ingress: str | None          # HOOK_* or None (ingress rules not enforced here)
    egress: str | None
    why: str


# (target, its link, its hooks): an interface found and decided on, as apply goes on with it.
Found = tuple[Target, att.LinkInfo, Hooks]


def targets(policy: Policy, devs: list[str] | None, xdp_mode: str | None) -> list[Target]:
    """The interfaces to enforce on: ``--dev`` replaces the policy's list, taking the
    per-interface settings from the policy's first entry (or the defaults)."""
    if devs:
        template = policy.interfaces[0] if policy.interfaces else Interface(name="")
        wanted = [Target(dev, template.xdp, template.tc) for dev in devs]
    else:
        wanted = [Target(i.name, i.xdp, i.tc) for i in policy.interfaces]
    if not wanted:
        raise NetctlError(f"{policy.source}: the policy lists no interfaces: add "
                          "'interfaces:' or give --dev IF")
    if xdp_mode is not None:
        wanted = [Target(t.name, XdpMode(xdp_mode), t.tc) for t in wanted]
    seen: set[str] = set()
    for t in wanted:
        if t.name in seen:
            raise NetctlError(f"interface {t.name} is listed twice")
        seen.add(t.name)
    return wanted


def check_link_layer(link: att.LinkInfo) -> None:
    """Refuse a device whose frames netctl cannot parse: it must never attach where frames
    would pass unjudged (as non-IP)."""
    if link.layer is None:
        raise AttachError(link.name, errno.EOPNOTSUPP, f"link type {link.link_type_name} "
                          f"(ARPHRD {link.link_type}): netctl parses frames that start with "
                          "an Ethernet header or at the IP header only, and will not attach "
                          "where it would let frames pass unjudged")


def decide_hooks(link: att.LinkInfo, target: Target, forwards: bool = False) -> Hooks:
    """The hook of each direction.  ``xdp: auto`` takes native XDP where it runs before any
    skb exists (a NIC driver); on a virtual device, where XDP starts from an skb it copies,
    tc ingress is the faster hook for judging, but XDP's redirect is the faster one for
    forwarding (measured on veth: docs/performance.md), so a policy with routes gets XDP
    there; devices without a link-layer header never forward."""
    tc_in = TcHook.INGRESS in target.tc
    egress = HOOK_TC if TcHook.EGRESS in target.tc else None
    if target.xdp is XdpMode.NATIVE:
        return Hooks(HOOK_XDP_NATIVE, egress, "xdp: native")
    if target.xdp is XdpMode.GENERIC:
        return Hooks(HOOK_XDP_GENERIC, egress, "xdp: generic")
    if target.xdp is XdpMode.OFF:
        return Hooks(HOOK_TC if tc_in else None, egress,
                     "xdp: off" + ("" if tc_in else ", and tc ingress not listed"))
    kind = link.kind or "loopback"
    if link.virtual and forwards and link.layer == att.LAYER_ETHERNET and link.name != "lo":
        return Hooks(HOOK_XDP_NATIVE, egress, f"xdp: auto, {kind} device, the policy "
                     "forwards: XDP's redirect skips the stack (faster than tc's here)")
    if link.virtual:
        if tc_in:
            return Hooks(HOOK_TC, egress, f"xdp: auto, {kind} device: XDP would start from an "
                         "skb here, tc ingress is faster")
        return Hooks(HOOK_XDP_NATIVE, egress, f"xdp: auto, {kind} device, tc ingress not "
                     "listed: native XDP")
    return Hooks(HOOK_XDP_NATIVE, egress, "xdp: auto, NIC: native XDP runs before any skb")


def coverage_warnings(policy: Policy, found: list[Found]) -> list[str]:
    out = []
    for t, _link, hooks in found:
        if policy.stateful and hooks.egress is None:
            out.append(f"{t.name}: stateful: true tracks flows at tc egress, which is not "
                       "listed: no flow started here is tracked, replies meet the rules")
    has = {d: any(r.direction is d for r in policy.rules) for d in Direction}
    for t, _link, hooks in found:
        if hooks.ingress is None and (has[Direction.INGRESS]
                                      or policy.default_ingress.value == "drop"):
            out.append(f"{t.name}: ingress rules are not enforced (no XDP and no tc ingress "
                       "hook)")
        if hooks.egress is None and (has[Direction.EGRESS]
                                     or policy.default_egress.value == "drop"):
            out.append(f"{t.name}: egress rules are not enforced (tc egress not listed)")
    return out


def interface_record(t: Target, link: att.LinkInfo, hooks: Hooks,
                     created_clsact: bool) -> InterfaceRecord:
    return InterfaceRecord(name=t.name, ifindex=link.index, kind=link.kind,
                           ingress=hooks.ingress, egress=hooks.egress, why=hooks.why,
                           created_clsact=created_clsact, link=link.layer)


def same_interfaces(previous: dict[str, InterfaceRecord], found: list[Found]) -> bool:
    """Whether the recorded interfaces are exactly these, on the same hooks."""
    if set(previous) != {t.name for t, _, _ in found}:
        return False
    for t, link, hooks in found:
        rec = previous[t.name]
        if (rec.ifindex, rec.ingress, rec.egress) != (link.index, hooks.ingress, hooks.egress):
            return False
    return True


def role(rec: InterfaceRecord, base: str) -> str:
    """The program role (build.ROLES) that runs ``base`` (xdp, tc_ingress, tc_egress) on the
    interface of record ``rec``: the L3 variant where frames start at the IP header.
    Records from before link layers were told apart are Ethernet."""
    return f"{base}_l3" if rec.link == att.LAYER_L3 else base


# ---- attaching -----------------------------------------------------------------------------

def attach_all(links: att.Links, programs: dict[str, int], found: list[Found],
               previous: dict[str, InterfaceRecord],
               undo: list) -> dict[str, InterfaceRecord]:
    """Attach ``programs`` (role -> fd) on every interface found, taking netctl's programs
    off the hooks it no longer uses there; each change puts its undo on ``undo``."""
    out: dict[str, InterfaceRecord] = {}
    for t, link, hooks in found:
        prev = previous.get(t.name)
        created = prev is not None and prev.created_clsact and prev.ifindex == link.index
        suffix = "_l3" if link.layer == att.LAYER_L3 else ""
        # ingress
        if hooks.ingress in (HOOK_XDP_NATIVE, HOOK_XDP_GENERIC):
            mode = "native" if hooks.ingress == HOOK_XDP_NATIVE else "generic"
            undo.append(_xdp_restorer(links, link))
            links.attach_xdp(link, programs["xdp" + suffix], mode)
            if any(f.ours for f in links.filters(link, "ingress")):
                undo.append(_tc_restorer(links, link, "ingress"))
                links.detach_tc(link, "ingress")
        else:
            if hooks.ingress == HOOK_TC:
                created |= _ensure_clsact(links, link, undo)
                undo.append(_tc_restorer(links, link, "ingress"))
                links.attach_tc(link, programs["tc_ingress" + suffix], "ingress")
            elif any(f.ours for f in links.filters(link, "ingress")):
                undo.append(_tc_restorer(links, link, "ingress"))
                links.detach_tc(link, "ingress")
            if links.xdp_is_ours(link):
                undo.append(_xdp_restorer(links, link))
                links.detach_xdp(link)
        # egress
        if hooks.egress == HOOK_TC:
            created |= _ensure_clsact(links, link, undo)
            undo.append(_tc_restorer(links, link, "egress"))
            links.attach_tc(link, programs["tc_egress" + suffix], "egress")
        elif any(f.ours for f in links.filters(link, "egress")):
            undo.append(_tc_restorer(links, link, "egress"))
            links.detach_tc(link, "egress")
        out[t.name] = interface_record(t, link, hooks, created)
    return out


def _ensure_clsact(links: att.Links, link: att.LinkInfo, undo: list) -> bool:
    created = links.ensure_clsact(link)
    if created:
        undo.append(lambda: links.remove_clsact_if_unused(link))
    return created


def _xdp_restorer(links: att.Links, link: att.LinkInfo):
    """Undo for an XDP change: put back netctl's previous program, or nothing."""
    before = links.info(link.index)

    def restore():
        now = links.info(link.index)
        if now is None:
            return
        if before is not None and before.xdp_prog_id is not None and links.xdp_is_ours(before):
            from ..kernel import bpfsys

            fd = bpfsys.prog_fd_by_id(before.xdp_prog_id)
            try:
                links.attach_xdp(now, fd, before.xdp_mode or "native")
            finally:
                os.close(fd)
        elif links.xdp_is_ours(now):
            links.detach_xdp(now)
    return restore


def _tc_restorer(links: att.Links, link: att.LinkInfo, direction: str):
    """Undo for a tc change: netctl's previous filter program back, or no filter."""
    before = [f for f in links.filters(link, direction) if f.ours]

    def restore():
        if before and before[0].prog_id:
            from ..kernel import bpfsys

            fd = bpfsys.prog_fd_by_id(before[0].prog_id)
            try:
                links.attach_tc(link, fd, direction)
            finally:
                os.close(fd)
        else:
            links.detach_tc(link, direction)
    return restore


def undo_all(undo: list) -> None:
    """Run the undo steps, last first; best effort (the caller reports the original
    error)."""
    for step in reversed(undo):
        try:
            step()
        except Exception:  # noqa: S112 - best effort: report the original error
            continue


# ---- detaching -----------------------------------------------------------------------------

def detach_interface(links: att.Links, rec: InterfaceRecord) -> bool:
    """Remove netctl's programs from one interface; False when the interface is gone."""
    link = links.info(rec.ifindex) if rec.ifindex else None
    if link is None or link.name != rec.name:
        link = links.find(rec.name)
    if link is None:
        return False
    if links.xdp_is_ours(link):
        links.detach_xdp(link)
    for direction in ("ingress", "egress"):
        links.detach_tc(link, direction)
    if rec.created_clsact:
        links.remove_clsact_if_unused(link)
    return True


def detach_removed(links: att.Links, previous: dict[str, InterfaceRecord],
                   interfaces: dict[str, InterfaceRecord], warnings: list[str]) -> list[str]:
    """Detach from the interfaces recorded before that the policy no longer lists."""
    removed = []
    for name, rec in previous.items():
        if name in interfaces:
            continue
        try:
            detach_interface(links, rec)
            removed.append(name)
        except NetctlError as exc:
            warnings.append(f"{name}: could not detach: {exc}")
    return removed


def has_ours(links: att.Links, link: att.LinkInfo) -> bool:
    return links.xdp_is_ours(link) or any(
        f.ours for d in ("ingress", "egress") for f in links.filters(link, d))


# ---- checking ------------------------------------------------------------------------------

def attachment_problems(links: att.Links, name: str, rec: InterfaceRecord,
                        ids: dict[str, int]) -> list[str]:
    """What differs on interface ``name`` from record ``rec``, given the live programs'
    ids by role."""
    link = links.find(name)
    if link is None:
        return [f"interface {name} is gone"]
    problems = []
    ingress, egress = rec.ingress, rec.egress
    if ingress in (HOOK_XDP_NATIVE, HOOK_XDP_GENERIC):
        want_mode = "native" if ingress == HOOK_XDP_NATIVE else "generic"
        if link.xdp_prog_id != ids.get(role(rec, "xdp")):
            problems.append("XDP program is not netctl's live one"
                            if link.xdp_prog_id else "XDP program missing")
        elif link.xdp_mode != want_mode:
            problems.append(f"XDP attached in {link.xdp_mode} mode, not {want_mode}")
    for direction, hook in (("ingress", ingress), ("egress", egress)):
        if hook != HOOK_TC:
            continue
        ours = [f for f in links.filters(link, direction) if f.ours]
        if not ours:
            problems.append(f"tc {direction} filter missing")
        elif ours[0].prog_id != ids.get(role(rec, f"tc_{direction}")):
            problems.append(f"tc {direction} filter runs another program")
    return problems


def attachments_intact(links: att.Links, ids: dict[str, int],
                       interfaces: dict[str, InterfaceRecord]) -> bool:
    return not any(attachment_problems(links, name, rec, ids)
                   for name, rec in interfaces.items())


def prog_ids_shown(rec: InterfaceRecord, ids: dict[str, int]) -> dict[str, int]:
    """The live program ids of the hooks the interface uses, by base role (status)."""
    return {r: ids[role(rec, r)] for r in ("xdp", "tc_ingress", "tc_egress")
            if (r == "xdp" and (rec.ingress or "").startswith("xdp"))
            or (r == "tc_ingress" and rec.ingress == HOOK_TC)
            or (r == "tc_egress" and rec.egress == HOOK_TC)}


def runs_any(links: att.Links, name: str, ids: dict[str, int]) -> bool:
    """Whether any hook of the interface runs one of these programs."""
    link = links.find(name)
    if link is None:
        return False
    if link.xdp_prog_id is not None and link.xdp_prog_id in (ids.get("xdp"), ids.get("xdp_l3")):
        return True
    tc_ids = {ids.get(r) for r in ("tc_ingress", "tc_egress", "tc_ingress_l3", "tc_egress_l3")}
    return any(f.ours and f.prog_id in tc_ids
               for direction in ("ingress", "egress") for f in links.filters(link, direction))
