"""Hooks: where each interface is enforced, attaching there (undoably), and checking it.

The choice (docs/datapath.md, Hooks): ``xdp: auto`` takes native XDP on a NIC, tc ingress
on a virtual device (XDP would start from an skb it copies there), native XDP on a virtual
Ethernet device when the policy forwards; ``native``/``generic``/``off`` are taken as asked.
Egress is tc egress when the interface's ``tc:`` lists it.  Each hook is reached the way
the kernel offers best unless NETCTL_ATTACH=legacy asks for netlink (``with_paths``): tc
as a tcx link or a cls_bpf filter, XDP as a link or through netlink.  What is netctl's is
recognised by program and filter name (netctl.datapath.attach).
"""

from __future__ import annotations

import dataclasses
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
    tc_attach: str | None = None     # attach.TC_TCX / TC_CLS_BPF where a tc hook is used
    xdp_attach: str | None = None    # attach.XDP_LINK / XDP_NETLINK where XDP is used

    @property
    def xdp(self) -> bool:
        return self.ingress in (HOOK_XDP_NATIVE, HOOK_XDP_GENERIC)

    @property
    def tc(self) -> bool:
        return HOOK_TC in (self.ingress, self.egress)


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


def with_paths(hooks: Hooks, tc_path: str, xdp_path: str) -> Hooks:
    """The hooks with the way each is reached (attach.attach_paths), for the hooks used."""
    return dataclasses.replace(hooks, tc_attach=tc_path if hooks.tc else None,
                               xdp_attach=xdp_path if hooks.xdp else None)


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
                           created_clsact=created_clsact, link=link.layer,
                           tc_attach=hooks.tc_attach, xdp_attach=hooks.xdp_attach)


def same_interfaces(previous: dict[str, InterfaceRecord], found: list[Found]) -> bool:
    """Whether the recorded interfaces are exactly these, on the same hooks, reached the
    same ways."""
    if set(previous) != {t.name for t, _, _ in found}:
        return False
    for t, link, hooks in found:
        rec = previous[t.name]
        if (rec.ifindex, rec.ingress, rec.egress, rec.tc_path, rec.xdp_path) != (
                link.index, hooks.ingress, hooks.egress,
                hooks.tc_attach or rec.tc_path, hooks.xdp_attach or rec.xdp_path):
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
    """Attach ``programs`` (role -> fd) on every interface found, the way its hooks say,
    taking netctl's programs off the hooks (and ways) it no longer uses there; each change
    puts its undo on ``undo``."""
    out: dict[str, InterfaceRecord] = {}
    for t, link, hooks in found:
        prev = previous.get(t.name)
        created = prev is not None and prev.created_clsact and prev.ifindex == link.index
        suffix = "_l3" if link.layer == att.LAYER_L3 else ""
        tc_path = hooks.tc_attach or att.TC_CLS_BPF
        # ingress
        if hooks.xdp:
            mode = "native" if hooks.ingress == HOOK_XDP_NATIVE else "generic"
            undo.append(_xdp_restorer(links, link))
            links.attach_xdp(link, programs["xdp" + suffix], mode,
                             hooks.xdp_attach or att.XDP_NETLINK)
            _tc_off(links, link, "ingress", undo)
        else:
            if hooks.ingress == HOOK_TC:
                created |= _tc_on(links, link, "ingress", programs["tc_ingress" + suffix],
                                  tc_path, undo)
            else:
                _tc_off(links, link, "ingress", undo)
            if links.xdp_is_ours(link):
                undo.append(_xdp_restorer(links, link))
                links.detach_xdp(link)
        # egress
        if hooks.egress == HOOK_TC:
            created |= _tc_on(links, link, "egress", programs["tc_egress" + suffix], tc_path,
                              undo)
        else:
            _tc_off(links, link, "egress", undo)
        # A clsact qdisc netctl made for filters it no longer has (moved to tcx) goes too.
        if created and not any(f.ours for d in ("ingress", "egress")
                               for f in links.filters(link, d)) \
                and links.remove_clsact_if_unused(link):
            undo.append(lambda link=link: links.ensure_clsact(link))
            created = False
        out[t.name] = interface_record(t, link, hooks, created)
    return out


def _tc_on(links: att.Links, link: att.LinkInfo, direction: str, fd: int, path: str,
           undo: list) -> bool:
    """netctl's program ``fd`` on the tc hook of ``direction`` the ``path`` way, the other
    way's attachment removed after (for a moment both run: never neither).  True when a
    clsact qdisc was created for it."""
    created = False
    undo.append(_tc_restorer(links, link, direction))
    if path == att.TC_TCX:
        links.attach_tcx(link, fd, direction)
        links.detach_tc(link, direction)
    else:
        created = _ensure_clsact(links, link, undo)
        links.attach_tc(link, fd, direction)
        links.detach_tcx(link, direction)
    return created


def _tc_off(links: att.Links, link: att.LinkInfo, direction: str, undo: list) -> None:
    """No program of netctl's on the tc hook of ``direction``, either way."""
    if links.tc_ours(link, direction):
        undo.append(_tc_restorer(links, link, direction))
        links.detach_tcx(link, direction)
        links.detach_tc(link, direction)


def _ensure_clsact(links: att.Links, link: att.LinkInfo, undo: list) -> bool:
    created = links.ensure_clsact(link)
    if created:
        undo.append(lambda: links.remove_clsact_if_unused(link))
    return created


def _xdp_restorer(links: att.Links, link: att.LinkInfo):
    """Undo for an XDP change: put back netctl's previous program (the same way), or
    nothing."""
    before = links.info(link.index)
    path = links.xdp_path(before) if before is not None else None

    def restore():
        now = links.info(link.index)
        if now is None:
            return
        if before is not None and before.xdp_prog_id is not None and links.xdp_is_ours(before):
            fd = links.open_prog(before.xdp_prog_id, att.XDP_ROLES)
            try:
                links.attach_xdp(now, fd, before.xdp_mode or "native",
                                 path or att.XDP_NETLINK)
            finally:
                os.close(fd)
        elif links.xdp_is_ours(now):
            links.detach_xdp(now)
    return restore


def _tc_restorer(links: att.Links, link: att.LinkInfo, direction: str):
    """Undo for a tc change: netctl's previous program back the way it was attached, or
    none of netctl's on the hook."""
    before = links.tc_ours(link, direction)

    def restore():
        if before and before[0].prog_id:
            fd = links.open_prog(before[0].prog_id, att.TC_ROLES[direction])
            try:
                _tc_on(links, link, direction, fd, before[0].path, [])
            finally:
                os.close(fd)
        else:
            links.detach_tcx(link, direction)
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
        links.detach_tcx(link, direction)
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
        links.tc_ours(link, d) for d in ("ingress", "egress"))


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
        elif links.xdp_path(link) != rec.xdp_path:
            problems.append(f"XDP attached through {links.xdp_path(link)}, not "
                            f"{rec.xdp_path}")
    for direction, hook in (("ingress", ingress), ("egress", egress)):
        if hook != HOOK_TC:
            continue
        noun = "link" if rec.tc_path == att.TC_TCX else "filter"
        ours = links.tc_ours(link, direction)
        if not ours:
            problems.append(f"tc {direction} {noun} missing")
        elif len(ours) > 1:
            problems.append(f"tc {direction}: netctl's program attached twice "
                            f"({' and '.join(a.path for a in ours)})")
        elif ours[0].prog_id != ids.get(role(rec, f"tc_{direction}")):
            problems.append(f"tc {direction} {noun} runs another program")
        elif ours[0].path != rec.tc_path:
            problems.append(f"tc {direction} attached as {ours[0].path}, not {rec.tc_path}")
    return problems


def attach_paths_live(links: att.Links, name: str, rec: InterfaceRecord) -> dict[str, str | None]:
    """How the interface's hooks are reached now (status): {"tc": tcx / cls_bpf, "xdp":
    link / netlink}, None where netctl has nothing."""
    link = links.find(name)
    if link is None:
        return {"tc": None, "xdp": None}
    tc = [a.path for d in ("ingress", "egress") for a in links.tc_ours(link, d)]
    return {"tc": "+".join(sorted(set(tc))) or None,
            "xdp": links.xdp_path(link) if links.xdp_is_ours(link) else None}


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
    return any(a.prog_id in tc_ids
               for direction in ("ingress", "egress") for a in links.tc_ours(link, direction))
