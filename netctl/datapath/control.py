"""apply, status and detach: the verbs that change or read the live datapath.

apply, in order (each step leaves the previous policy running if it fails):

1. load and compile the policy (pure; an invalid policy changes nothing);
2. find every interface and decide its hooks (a missing interface changes nothing);
3. under the namespace lock, open the live datapath from its pins, or build a new one when
   there is none or the programs or map capacities changed (a compile or verifier error
   changes nothing: the new pin directory is removed);
4. write the plan into the inactive generation (only the difference to what it holds);
5. attach the programs where they are not yet (undone on failure);
6. record the new generation in the state file, then flip the one-word ``active`` map:
   from here on every packet is judged wholly by the new policy;
7. detach from interfaces the policy no longer lists, carry the old generation's counters
   over (by rule name), remove an old build's pins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from .. import abi, privilege
from ..errors import AttachError, NetctlError
from ..policy.compile import compile_fitting
from ..policy.load import STDIN_SOURCE
from ..policy.model import Direction, Interface, Policy, TcHook, XdpMode
from ..policy.plan import Limits, MapPlan, PlanDiff, diff
from ..policy.plan import constants as plan_constants
from ..policy.sets import file_sha256, sets_record
from . import attach as att
from . import maps as mapio
from .build import source_digest, unconfirmed_pin
from .instance import Datapath, PinsMissing, contents_plan, settle
from .netns import Namespace, ensure_pin_root, netns_name

HOOK_XDP_NATIVE = "xdp-native"
HOOK_XDP_GENERIC = "xdp-generic"
HOOK_TC = "tc"


def require_privilege(what: str) -> None:
    privilege.require(what, *privilege.DATAPATH)


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


# ---- apply -----------------------------------------------------------------------------------

def _file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def already_live(path: str, devs: list[str] | None, xdp_mode: str | None,
                 limits: Limits = Limits()) -> dict | None:  # noqa: B008
    """The live generation's record when the very same file (by content), applied the same
    way, is live and intact: then there is nothing to load, compile or write.  None when
    anything differs; the caller then does a full apply (which may still find nothing to
    write)."""
    require_privilege("apply")
    ns = Namespace.current()
    state = ns.read_state()
    if not state or "build" not in state:
        return None
    request = {"devs": devs, "xdp_mode": xdp_mode}
    built = build_limits(state)
    if state.get("request") != request or state["build"].get("constants") != \
            plan_constants(built) or not _fits(limits, built) or \
            state["build"].get("source") != source_digest():
        return None
    if state.get("pending") or _stale_builds(ns, state["build"]):
        return None                     # an apply was killed: a full one cleans up after it
    live, _ = _open_live(ns, state)
    if live is None:
        return None
    with live:
        record = state.get("generations", {}).get(str(live.active))
        if (not record or record.get("policy") != os.path.abspath(path)
                or record.get("policy_sha256") != _file_sha256(path)
                or record.get("nexthops")):   # routes: an apply refreshes their next hops
            return None
        for rec in record.get("sets", {}).values():   # a set file changed: apply it
            if rec.get("file") and file_sha256(rec["file"]) != rec.get("sha256"):
                return None
        with att.Links() as links:
            for rec in state.get("interfaces", {}).values():
                link = links.find(rec["name"])
                if link is None or link.index != rec.get("ifindex"):
                    return None
            if not _attachments_intact(links, live, state):
                return None
        if _changed_maps(live, live.active, record):   # changed by hand: apply rewrites
            return None
        return dict(record, generation=live.active, interfaces=state.get("interfaces", {}))


@dataclass
class ApplyResult:
    policy: str
    generation: int
    reload: bool
    change: PlanDiff
    interfaces: dict[str, dict[str, Any]]
    detached: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchanged: bool = False
    dry_run: bool = False
    seconds: float = 0.0
    sets: dict[str, dict] = field(default_factory=dict)   # sets_record of what is live

    def as_dict(self) -> dict[str, Any]:
        return {
            **({"sets": self.sets} if self.sets else {}),
            "policy": self.policy, "generation": self.generation, "reload": self.reload,
            "dry_run": self.dry_run, "unchanged": self.unchanged,
            "entries": self.change.entries(),
            "changes": {name: {"added": len(d.added), "changed": len(d.changed),
                               "removed": len(d.removed)}
                        for name, d in self.change.maps.items() if d},
            "interfaces": self.interfaces, "detached": self.detached,
            "warnings": self.warnings, "seconds": round(self.seconds, 3),
        }


def apply(policy: Policy, devs: list[str] | None = None, xdp_mode: str | None = None,
          dry_run: bool = False, limits: Limits = Limits(),  # noqa: B008
          extra_cflags: tuple[str, ...] = (), max_entries: int | None = None) -> ApplyResult:
    started = time.monotonic()
    wanted = targets(policy, devs, xdp_mode)
    require_privilege("apply")
    ns = Namespace.current()
    # Capacities only grow: into the live build's when the policy fits there (no rebuild),
    # else as large as the policy needs (a rebuild).
    plan = compile_fitting(policy, _larger(limits, build_limits(live_state(ns)[0])),
                           max_entries)
    with att.Links() as links:
        found: list[tuple[Target, att.LinkInfo, Hooks]] = []
        for t in wanted:
            link = links.find(t.name)
            if link is None:
                raise AttachError(t.name, errno.ENODEV, "no such interface in this network "
                                  f"namespace ({netns_name() or 'unnamed'})")
            check_link_layer(link)
            found.append((t, link, decide_hooks(link, t, bool(policy.routes))))
        warnings = _coverage_warnings(policy, found)
        nexthops = resolve_routes(links, policy, warnings, found)
        if dry_run:
            return _dry_run(ns, plan, policy, found, warnings, started)
        ensure_pin_root()
        with ns.lock():
            result = _apply_locked(ns, links, policy, plan, found, extra_cflags, nexthops)
            _record_request(ns, devs, xdp_mode)
    result.warnings = warnings + result.warnings
    result.seconds = time.monotonic() - started
    return result


def _record_request(ns: Namespace, devs, xdp_mode) -> None:
    state = ns.read_state() or {}
    state["request"] = {"devs": devs, "xdp_mode": xdp_mode}
    ns.write_state(state)


def _available_cc() -> set[str]:
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            return set(f.read().split())
    except OSError:
        return set()


def resolve_routes(links: att.Links, policy: Policy, warnings: list[str],
                   found=()) -> list[dict]:
    """Each route's next hop: egress interface, the next hop's MAC from the neighbour table
    (asking the kernel to resolve it when unknown), and the packed map value.  A missing
    interface, one without an Ethernet header or an unknown congestion control is an error
    before anything changes.  ``found`` (target, link, hooks) says where netctl enforces
    egress rules: the XDP path judges them before redirecting there."""
    out = []
    available = None
    egress_judged = {link.index for _t, link, hooks in found if hooks.egress == HOOK_TC}
    for route in policy.routes:
        link = links.find(route.dev)
        if link is None:
            raise AttachError(route.dev, errno.ENODEV, f"route to {route.dst} (line "
                              f"{route.line}): no such interface in this network namespace")
        if link.layer != att.LAYER_ETHERNET:
            raise AttachError(route.dev, errno.EOPNOTSUPP, f"route to {route.dst} (line "
                              f"{route.line}): {route.dev} has no Ethernet header (link type "
                              f"{link.link_type_name}); the forwarding fast path rewrites "
                              "MACs, so leave this route to the kernel's routing table")
        if route.cc:
            available = available if available is not None else _available_cc()
            if route.cc not in available:
                raise NetctlError(f"{policy.source}:{route.line}: route to {route.dst}: "
                                  f"congestion control {route.cc!r} is not available here "
                                  f"(available: {', '.join(sorted(available)) or 'none'})")
        via = str(route.via)
        dmac = links.neighbour(link.index, via) or _resolve(links, link.index, via,
                                                             route.via.version)
        if dmac is None:
            warnings.append(f"route to {route.dst}: next hop {via} on {route.dev} is not "
                            "resolved yet; the XDP path leaves its packets to the kernel "
                            "until an apply finds it (the tc path resolves it itself)")
        out.append({"dst": str(route.dst), "via": via, "dev": route.dev,
                    "ifindex": link.index, "smac": link.mac, "dmac": dmac, "cc": route.cc,
                    "judge_egress": link.index in egress_judged,
                    "packed": abi.pack_nexthop(link.index, route.via.version, int(route.via),
                                               link.mac, dmac, link.index in egress_judged)})
    return out


def _resolve(links: att.Links, index: int, via: str, family: int,
             wait: float = 1.0) -> str | None:
    """Ask the kernel to resolve ``via`` (a datagram to the discard port makes it send an
    ARP or neighbour solicitation) and wait a little for the answer."""
    import socket as _socket

    af = _socket.AF_INET if family == 4 else _socket.AF_INET6
    with contextlib.suppress(OSError), _socket.socket(af, _socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.sendto(b"", (via, 9))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        mac = links.neighbour(index, via)
        if mac:
            return mac
        time.sleep(0.05)
    return None


def _public(nexthops: list[dict]) -> list[dict]:
    return [{k: v for k, v in n.items() if k != "packed"} for n in nexthops]


def _local_keys(links: att.Links) -> set[bytes]:
    import ipaddress

    return {abi.pack_local_key(family, int(ipaddress.ip_address(address)))
            for family, address in links.addresses()}


def _sync_kernel_routes(links: att.Links, policy: Policy, nexthops: list[dict],
                        warnings: list[str]) -> None:
    """Routes with `cc:` also become kernel routes (for traffic this host starts, with that
    congestion control); netctl's kernel routes no longer wanted go."""
    wanted = {}
    for route, nh in zip(policy.routes, nexthops, strict=True):
        if route.cc:
            wanted[str(route.dst)] = (nh, route.cc)
    for dst, (nh, cc) in wanted.items():
        try:
            links.set_route(dst, nh["via"], nh["ifindex"], cc)
        except NetctlError as exc:
            warnings.append(str(exc))
    for family, dst in links.netctl_routes():
        if dst not in wanted:
            links.delete_route(family, dst)


def _coverage_warnings(policy: Policy, found) -> list[str]:
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


def _interface_record(t: Target, link: att.LinkInfo, hooks: Hooks,
                      created_clsact: bool) -> dict[str, Any]:
    return {"name": t.name, "ifindex": link.index, "kind": link.kind, "ingress": hooks.ingress,
            "egress": hooks.egress, "why": hooks.why, "created_clsact": created_clsact,
            "link": link.layer}


def role(rec: dict, base: str) -> str:
    """The program role (build.ROLES) that runs ``base`` (xdp, tc_ingress, tc_egress) on the
    interface of record ``rec``: the L3 variant where frames start at the IP header.
    Records from before link layers were told apart are Ethernet."""
    return f"{base}_l3" if rec.get("link") == att.LAYER_L3 else base


def _dry_run(ns: Namespace, plan: MapPlan, policy: Policy, found, warnings,
             started) -> ApplyResult:
    state, _notes = live_state(ns)
    live, _ = _open_live(ns, state)
    reload = True
    try:
        if live is not None and _reusable(state, plan):
            gen = live.active
            current = ns.load_plan(gen, state.get("generations", {}).get(str(gen), {})
                                   .get("digest")) or contents_plan(live.read_generation(gen),
                                                                    plan)
            change = diff(current, plan)
            reload = False
        else:
            change = diff(None, plan)
    finally:
        if live is not None:
            live.close()
    interfaces = {t.name: _interface_record(t, link, hooks, False)
                  for t, link, hooks in found}
    previous = set((state or {}).get("interfaces", {}))
    return ApplyResult(policy.source, -1, reload, change, interfaces,
                       detached=sorted(previous - set(interfaces)), warnings=warnings,
                       dry_run=True, seconds=time.monotonic() - started)


def _open_live(ns: Namespace, state: dict | None) -> tuple[Datapath | None, str | None]:
    """The live datapath from its pins, or (None, why not)."""
    if not state or "build" not in state:
        return None, "nothing applied"
    build = state["build"]
    try:
        return Datapath.open(ns.build_dir(build["id"]), build["constants"],
                             ct_pin=ns.ct_pin(build["constants"])), None
    except PinsMissing as exc:
        return None, str(exc)


def live_state(ns: Namespace) -> tuple[dict | None, list[str]]:
    """The state file as it describes what runs, and what it had to correct.

    A rebuild records its new build as pending, attaches its programs, then records it as
    the build.  A kill between the two leaves interfaces running the pending build: then it
    is what judges their traffic, and what status, conntrack and the monitor must read."""
    state = ns.read_state()
    pending = (state or {}).get("pending")
    if not pending:
        return state, []
    build = pending["build"]
    try:
        dp = Datapath.open(ns.build_dir(build["id"]), build["constants"],
                           ct_pin=ns.ct_pin(build["constants"]))
    except PinsMissing:
        return state, []
    with dp:
        ids = dp.prog_ids()
    with att.Links() as links:
        running = [name for name in pending["interfaces"] if _runs_any(links, name, ids)]
    if not running:
        return state, []
    record = pending["generation"]
    interfaces = dict(state.get("interfaces", {}))
    interfaces.update((name, pending["interfaces"][name]) for name in running)
    note = (f"an apply of {record['policy']} was killed after attaching its new programs to "
            f"{', '.join(running)} and before recording them: they are live (any hook still "
            "on the old programs is listed below); 'netctl apply' completes the apply")
    return dict(state, build=build, generations={"0": record, "1": record},
                interfaces=interfaces), [note]


def _runs_any(links: att.Links, name: str, ids: dict[str, int]) -> bool:
    """Whether any hook of the interface runs one of these programs."""
    link = links.find(name)
    if link is None:
        return False
    if link.xdp_prog_id is not None and link.xdp_prog_id in (ids.get("xdp"), ids.get("xdp_l3")):
        return True
    tc_ids = {ids.get(r) for r in ("tc_ingress", "tc_egress", "tc_ingress_l3", "tc_egress_l3")}
    return any(f.ours and f.prog_id in tc_ids
               for direction in ("ingress", "egress") for f in links.filters(link, direction))


CRASH_POINTS = ("built", "written", "attached", "recorded", "flipped")


def _crash_point(name: str) -> None:
    """Die here, as a kill -9 would, when NETCTL_CRASH_AT names this point: the fault tests
    use it to hit each step of an apply exactly, besides killing it at random times."""
    if os.environ.get("NETCTL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def build_limits(state: dict | None) -> Limits:
    """The capacities the live build was made with (the defaults for builds recorded before
    capacities could grow, which had them)."""
    recorded = ((state or {}).get("build") or {}).get("limits")
    try:
        return Limits(**recorded) if recorded else Limits()
    except (TypeError, ValueError):
        return Limits()


def _larger(a: Limits, b: Limits) -> Limits:
    return Limits(**{f.name: max(getattr(a, f.name), getattr(b, f.name))
                     for f in dataclasses.fields(Limits)})


def _fits(want: Limits, have: Limits) -> bool:
    return all(getattr(want, f.name) <= getattr(have, f.name)
               for f in dataclasses.fields(Limits))


def _reusable(state: dict | None, plan: MapPlan) -> bool:
    build = (state or {}).get("build") or {}
    return build.get("constants") == plan.constants() and build.get("source") == source_digest()


def _generation_record(policy: Policy, plan: MapPlan) -> dict[str, Any]:
    source = policy.source
    file_hash = policy.source_sha256   # the file as it was read, when the loader read it
    if source != STDIN_SOURCE and os.path.isfile(source):   # standard input has no file
        if file_hash is None:
            with open(source, "rb") as f:
                file_hash = hashlib.sha256(f.read()).hexdigest()
        source = os.path.abspath(source)
    record = {"policy": source, "policy_sha256": file_hash,
              "digest": plan.digest(), "contents": mapio.contents_digests(plan.maps()),
              "applied_at": time.time(),
              "rules": list(plan.rule_names),
              "actions": [action for action, _ in plan.rules],
              "metrics": [r.index for r in policy.rules if r.metrics]}
    if policy.sets:   # sizes and live edits (netctl set add/del) of its named sets
        record["sets"] = sets_record(policy)
    return record


def _apply_locked(ns: Namespace, links: att.Links, policy: Policy, plan: MapPlan,
                  found, extra_cflags, nexthops: list[dict]) -> ApplyResult:
    # What runs: after a rebuild killed once its programs were attached, that pending build
    # is the live one, and this apply completes it (no rebuild when it can be reused).
    state = live_state(ns)[0] or {}
    live, _why = _open_live(ns, state)
    reload = live is None or not _reusable(state, plan) or bool(extra_cflags)
    old = live
    tampered = None
    # The flow cache's epoch of the generation written now: new for every apply that flips,
    # so no packet judged by the new policy meets a decision an earlier one made.
    epoch = int(state.get("epoch", 0)) + 1
    if reload:
        build_id = f"b{time.time_ns():x}"
        dp = Datapath.build(ns.build_dir(build_id), plan.constants(), extra_cflags,
                            ct_pin=ns.ct_pin(plan.constants()))
        gen = 0
        # Both generations start with the policy, so that the next apply's inactive
        # generation already holds it and a one-rule change writes a few entries.
        change = dp.write_plan(plan, 0, fresh=True)
        dp.write_plan(plan, 1, fresh=True)
        for g in (0, 1):
            dp.write_nexthops(g, [n["packed"] for n in nexthops])
            dp.set_epoch(g, epoch)
        dp.set_local_addresses(_local_keys(links))
        dp.flip(0)
        for g in (0, 1):
            ns.save_plan(g, plan)
        build = {"id": build_id, "constants": plan.constants(), "source": source_digest(),
                 "limits": dataclasses.asdict(plan.limits),
                 "verifier": dp.verifier, "created": time.time()}
    else:
        dp = live
        active = dp.active
        gens = state.get("generations", {})
        same_interfaces = _same_interfaces(state, found)
        if gens.get(str(active), {}).get("digest") == plan.digest() and same_interfaces \
                and _public(nexthops) == gens.get(str(active), {}).get("nexthops", []) \
                and gens.get(str(active), {}).get("sets") == (sets_record(policy)
                                                              if policy.sets else None) \
                and _attachments_intact(links, dp, state):
            # Nothing to do, unless the live maps were changed by hand: then the policy is
            # written afresh into the other generation, and this one is no longer vouched for.
            if not _changed_maps(dp, active, gens[str(active)]):
                dp.close()
                _remove_stale_builds(ns, state["build"])
                if state.pop("pending", None):
                    ns.write_state(state)
                return ApplyResult(policy.source, active, False, diff(plan, plan),
                                   dict(state.get("interfaces", {})), unchanged=True)
            tampered = active
        gen = 1 - active
        # What the inactive generation holds: the plan recorded when it was written, if the
        # state file vouches for it; else read back from the maps.
        holds = ns.load_plan(gen, gens.get(str(gen), {}).get("digest"))
        ns.forget_plan(gen)
        change = dp.write_plan(plan, gen, holds=holds)
        dp.write_nexthops(gen, [n["packed"] for n in nexthops])
        dp.set_epoch(gen, epoch)
        dp.set_local_addresses(_local_keys(links))
        ns.save_plan(gen, plan)
        _crash_point("written")
        build = state["build"]

    record = dict(_generation_record(policy, plan), nexthops=_public(nexthops))
    if policy.sets:   # what `netctl set add/del` edit from (netctl/datapath/setctl.py)
        from .setctl import save_snapshot

        save_snapshot(ns, policy, record)
    if reload:
        # Attaching the new build's programs is what makes it live, and a kill may land
        # between that and the state write below: so the build is recorded as pending first,
        # and status believes the programs the interfaces actually run.
        ns.write_state(dict(state, pending={
            "build": build, "generation": record,
            "interfaces": {t.name: _interface_record(t, link, hooks, False)
                           for t, link, hooks in found}}))
        _crash_point("built")
    undo: list = []
    try:
        interfaces = _attach_all(links, dp, found, state, undo)
        _crash_point("attached")
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except Exception:  # noqa: S112 - best effort: report the original error
                continue
        if reload:
            dp.close()
            ns.remove_build(build["id"])
            if state:
                ns.write_state(state)
            else:
                ns.state_file.unlink(missing_ok=True)
        elif old is not None:
            old.close()
        raise

    previous = state.get("generations", {})
    old_active = None if reload else dp.active
    generations = {} if reload else dict(previous)
    generations[str(gen)] = record
    if tampered is not None:   # its saved plan is not what it holds: read it back next time
        generations[str(tampered)] = dict(generations[str(tampered)], digest=None,
                                          contents=None)
    if reload:
        generations["1"] = generations["0"]
    carried = _carried_before(state, reload)
    new_state = dict(state, build=build, generations=generations, interfaces=interfaces,
                     carried=carried, netns=netns_name(), epoch=epoch)
    new_state.pop("pending", None)
    ns.write_state(new_state)           # the new generation is described ...
    _crash_point("recorded")
    dp.flip(gen)                        # ... then made live, in one word
    _crash_point("flipped")
    warnings: list[str] = []
    detached = _detach_removed(links, state, interfaces, warnings)
    _sync_kernel_routes(links, policy, nexthops, warnings)

    # Counters of the generation (or build) packets just left, carried over by rule name.
    settle()
    if reload and old is not None:
        old_gen = old.active
        _carry(carried, previous.get(str(old_gen)), old, old_gen)
        _carry_stats(carried, old)
        old.close()
    elif old_active is not None:
        _carry(carried, previous.get(str(old_active)), dp, old_active)
        if old_active != gen:
            _catch_up(ns, dp, old_active, plan, previous, nexthops, new_state, record)
    _remove_stale_builds(ns, build)
    keep = set(plan.rule_names)
    carried["rules"] = {k: v for k, v in carried["rules"].items() if k in keep}
    new_state["carried"] = carried
    ns.write_state(new_state)
    dp.close()
    return ApplyResult(policy.source, gen, reload, change, interfaces, detached, warnings)


def _catch_up(ns: Namespace, dp: Datapath, gen: int, plan: MapPlan, previous: dict,
              nexthops: list[dict], new_state: dict, record: dict) -> None:
    """After the flip (and once no packet is judged by it any more: settle()), write the
    new policy into the generation packets just left too, so that both hold it and the
    next apply's inactive generation differs from its plan by that apply's change alone: a
    one-rule edit right after a large one writes a few entries, not the large one again.
    Off the critical path: the new policy is live before this starts.  A kill half way
    leaves that generation's saved plan forgotten: the next apply reads it back."""
    # The record as this apply left it: a generation changed by hand is no longer vouched
    # for (digest None), so what it holds is read back from the maps, not taken on trust.
    holds = ns.load_plan(gen, new_state["generations"].get(str(gen), {}).get("digest"))
    ns.forget_plan(gen)
    new_state["generations"][str(gen)] = dict(previous.get(str(gen), {}), digest=None,
                                              contents=None)
    ns.write_state(new_state)
    dp.write_plan(plan, gen, holds=holds)
    dp.write_nexthops(gen, [n["packed"] for n in nexthops])
    ns.save_plan(gen, plan)
    new_state["generations"][str(gen)] = record


def _stale_builds(ns: Namespace, build: dict) -> list[str]:
    """Builds no state refers to: the old one after a rebuild, or one an apply killed half
    way left behind."""
    ct_pin = ns.ct_pin(build["constants"])
    keep = (build["id"], os.path.basename(ct_pin), os.path.basename(unconfirmed_pin(ct_pin)))
    return [b for b in ns.builds() if b not in keep]


def _remove_stale_builds(ns: Namespace, build: dict) -> None:
    """Remove the stale builds (their programs are attached nowhere: the live build's are,
    or this apply has just attached them)."""
    for stale in _stale_builds(ns, build):
        ns.remove_build(stale)


def _carried_before(state: dict, reload: bool) -> dict[str, Any]:
    carried = state.get("carried") or {}
    return {"rules": dict(carried.get("rules", {})),
            "stats": list(carried.get("stats", [[0, 0]] * abi.STAT_MAX))}


def _carry(carried: dict, record: dict | None, dp: Datapath, gen: int) -> None:
    if not record:
        return
    names = record["rules"]
    for name, (packets, nbytes) in zip(names, dp.rule_counters(gen, len(names)), strict=True):
        if packets or nbytes:
            p, b = carried["rules"].get(name, (0, 0))
            carried["rules"][name] = [p + packets, b + nbytes]


def _carry_stats(carried: dict, dp: Datapath) -> None:
    stats = carried["stats"]
    for i, (packets, nbytes) in enumerate(dp.stats()):
        stats[i] = [stats[i][0] + packets, stats[i][1] + nbytes]


def _same_interfaces(state: dict, found) -> bool:
    previous = state.get("interfaces", {})
    if set(previous) != {t.name for t, _, _ in found}:
        return False
    for t, link, hooks in found:
        rec = previous[t.name]
        if (rec.get("ifindex"), rec.get("ingress"), rec.get("egress")) != (
                link.index, hooks.ingress, hooks.egress):
            return False
    return True


def _changed_maps(dp: Datapath, gen: int, record: dict) -> list[str]:
    """The maps whose generation ``gen`` does not hold what ``record`` says was written there
    (a map changed by hand): read back and compared in canonical form.  Records written
    before netctl kept these fingerprints vouch for nothing and are taken on trust."""
    want = record.get("contents")
    if not want:
        return []
    have = mapio.contents_digests(dp.read_generation(gen), like=want)
    return [name for name, digest in want.items() if have.get(name) != digest]


def _attachments_intact(links: att.Links, dp: Datapath, state: dict) -> bool:
    ids = dp.prog_ids()
    for name, rec in state.get("interfaces", {}).items():
        if _attachment_problems(links, name, rec, ids):
            return False
    return True


def _attach_all(links: att.Links, dp: Datapath, found, state: dict,
                undo: list) -> dict[str, dict[str, Any]]:
    previous = state.get("interfaces", {})
    out: dict[str, dict[str, Any]] = {}
    for t, link, hooks in found:
        prev = previous.get(t.name, {})
        created = bool(prev.get("created_clsact")) and prev.get("ifindex") == link.index
        suffix = "_l3" if link.layer == att.LAYER_L3 else ""
        # ingress
        if hooks.ingress in (HOOK_XDP_NATIVE, HOOK_XDP_GENERIC):
            mode = "native" if hooks.ingress == HOOK_XDP_NATIVE else "generic"
            undo.append(_xdp_restorer(links, link))
            links.attach_xdp(link, dp.programs["xdp" + suffix], mode)
            if any(f.ours for f in links.filters(link, "ingress")):
                undo.append(_tc_restorer(links, link, "ingress"))
                links.detach_tc(link, "ingress")
        else:
            if hooks.ingress == HOOK_TC:
                created |= _ensure_clsact(links, link, undo)
                undo.append(_tc_restorer(links, link, "ingress"))
                links.attach_tc(link, dp.programs["tc_ingress" + suffix], "ingress")
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
            links.attach_tc(link, dp.programs["tc_egress" + suffix], "egress")
        elif any(f.ours for f in links.filters(link, "egress")):
            undo.append(_tc_restorer(links, link, "egress"))
            links.detach_tc(link, "egress")
        out[t.name] = _interface_record(t, link, hooks, created)
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
            from .. import bpfsys

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
            from .. import bpfsys

            fd = bpfsys.prog_fd_by_id(before[0].prog_id)
            try:
                links.attach_tc(link, fd, direction)
            finally:
                os.close(fd)
        else:
            links.detach_tc(link, direction)
    return restore


def _detach_removed(links: att.Links, state: dict, interfaces: dict,
                    warnings: list[str]) -> list[str]:
    removed = []
    for name, rec in state.get("interfaces", {}).items():
        if name in interfaces:
            continue
        try:
            _detach_interface(links, rec)
            removed.append(name)
        except NetctlError as exc:
            warnings.append(f"{name}: could not detach: {exc}")
    return removed


def _detach_interface(links: att.Links, rec: dict) -> bool:
    """Remove netctl's programs from one interface; False when the interface is gone."""
    link = links.info(rec["ifindex"]) if rec.get("ifindex") else None
    if link is None or link.name != rec["name"]:
        link = links.find(rec["name"])
    if link is None:
        return False
    if links.xdp_is_ours(link):
        links.detach_xdp(link)
    for direction in ("ingress", "egress"):
        links.detach_tc(link, direction)
    if rec.get("created_clsact"):
        links.remove_clsact_if_unused(link)
    return True


# ---- status -------------------------------------------------------------------------------

def _attachment_problems(links: att.Links, name: str, rec: dict,
                         ids: dict[str, int]) -> list[str]:
    link = links.find(name)
    if link is None:
        return [f"interface {name} is gone"]
    problems = []
    ingress, egress = rec.get("ingress"), rec.get("egress")
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


def status(verify: bool = True) -> dict[str, Any]:
    """What is live in this network namespace (the JSON of `netctl status -o json`).

    ``verify`` reads the live generation back from the kernel and reports maps that differ
    from what netctl applied (about 3 s at 100,000 rules; top and the exporter skip it)."""
    require_privilege("status")
    ns = Namespace.current()
    state, notes = live_state(ns)
    out: dict[str, Any] = {"netns": netns_name(), "cookie": ns.cookie, "applied": False,
                           "interfaces": [], "rules": [], "defaults": {}, "drops": [],
                           "problems": list(notes)}
    if not state or "build" not in state:
        return out
    live, why = _open_live(ns, state)
    if live is None:
        out["problems"].append(f"{why}: the datapath is gone (bpffs unmounted, pins "
                               "removed or a reboot); 'netctl apply' rebuilds it")
        out["interfaces"] = [dict(rec, live=False) for rec in state["interfaces"].values()]
        return out
    with live:
        gen = live.active
        record = state.get("generations", {}).get(str(gen))
        ids = live.prog_ids()
        with att.Links() as links:
            for name, rec in state.get("interfaces", {}).items():
                problems = _attachment_problems(links, name, rec, ids)
                link = links.find(name)
                out["interfaces"].append(dict(
                    rec, live=not problems, problems=problems,
                    xdp_prog_id=link.xdp_prog_id if link else None,
                    xdp_mode=link.xdp_mode if link else None,
                    prog_ids={r: ids[role(rec, r)] for r in ("xdp", "tc_ingress", "tc_egress")
                              if (r == "xdp" and (rec.get("ingress") or "").startswith("xdp"))
                              or (r == "tc_ingress" and rec.get("ingress") == HOOK_TC)
                              or (r == "tc_egress" and rec.get("egress") == HOOK_TC)}))
                out["problems"].extend(f"{name}: {p}" for p in problems)
        if record is None:
            out["problems"].append(f"generation {gen} is live but the state file does not "
                                   "describe it; 'netctl apply' repairs this")
            return out
        out["verified"] = bool(verify and record.get("contents"))
        changed = _changed_maps(live, gen, record) if verify else []
        if changed:
            out["problems"].append(
                f"the live maps differ from what netctl applied ({', '.join(changed)} of "
                f"generation {gen}): changed by hand? 'netctl apply' of the same policy "
                "rewrites them")
        carried = state.get("carried") or {}
        carried_rules = carried.get("rules", {})
        carried_stats = carried.get("stats") or [[0, 0]] * abi.STAT_MAX
        counters = live.rule_counters(gen, len(record["rules"]))
        actions = ("accept", "drop")
        marked = set(record.get("metrics", ()))
        policy_drops = [0, 0]
        for index, (name, action, (packets, nbytes)) in enumerate(
                zip(record["rules"], record["actions"], counters, strict=True)):
            cp, cb = carried_rules.get(name, (0, 0))
            packets, nbytes = packets + cp, nbytes + cb
            out["rules"].append({"index": index, "name": name, "action": actions[action],
                                 "packets": packets, "bytes": nbytes,
                                 "metrics": index in marked})
            if action == 1:
                policy_drops[0] += packets
                policy_drops[1] += nbytes
        stats = [(p + carried_stats[i][0], b + carried_stats[i][1])
                 for i, (p, b) in enumerate(live.stats())]
        defaults = {}
        for direction, dir_code in (("ingress", 0), ("egress", 1)):
            for action_code, action in enumerate(actions):
                packets, nbytes = stats[abi.stat_default(dir_code, action_code)]
                defaults.setdefault(direction, {})[action] = {"packets": packets,
                                                              "bytes": nbytes}
        dp_cfg = live.read_config(gen)
        for direction, word in (("ingress", 0), ("egress", 1)):
            defaults[direction]["action"] = actions[dp_cfg[word] & 1]
        out["defaults"] = defaults
        drops = [{"reason": abi.DropReason.POLICY_RULE.label, "code": 1,
                  "packets": policy_drops[0], "bytes": policy_drops[1]},
                 {"reason": abi.DropReason.POLICY_DEFAULT.label, "code": 2,
                  "packets": sum(stats[abi.stat_default(d, 1)][0] for d in (0, 1)),
                  "bytes": sum(stats[abi.stat_default(d, 1)][1] for d in (0, 1))}]
        for reason in abi.DropReason:
            if reason.value >= abi.DropReason.TRUNC_L2:
                packets, nbytes = stats[reason.value]
                drops.append({"reason": reason.label, "code": reason.value,
                              "packets": packets, "bytes": nbytes,
                              "description": reason.description})
        out["drops"] = drops
        out["passed"] = {"non_ip": stats[abi.STAT_NON_IP][0], "ndp": stats[abi.STAT_NDP][0],
                         "conntrack_replies": stats[abi.STAT_CT_REPLY][0],
                         "conntrack_related": stats[abi.STAT_CT_RELATED][0]}
        out["conntrack"] = _conntrack_summary(live, dp_cfg, stats)
        from ..policy.plan import CFG_EVENT_SAMPLE

        out["events"] = {"sent": stats[abi.STAT_EVENTS][0],
                         "lost": stats[abi.STAT_EVENTS_LOST][0],
                         "sampled_out": stats[abi.STAT_EVENTS_SAMPLED_OUT][0],
                         "listening": live.listening(),
                         "sample": max(1, dp_cfg[CFG_EVENT_SAMPLE])}
        route_counts = live.route_counters(gen, len(record.get("nexthops", [])))
        out["routes"] = [dict(nh, packets=p, bytes=b)
                         for nh, (p, b) in zip(record.get("nexthops", []), route_counts,
                                               strict=True)]
        out["forwarding"] = {"left_to_kernel": {
            "local": stats[abi.STAT_FWD_LOCAL][0], "ttl": stats[abi.STAT_FWD_TTL][0],
            "options_or_vlan": stats[abi.STAT_FWD_OPTIONS][0],
            "unresolved": stats[abi.STAT_FWD_UNRESOLVED][0],
            "not_unicast": stats[abi.STAT_FWD_NOT_UNICAST][0]}}
        from ..policy.plan import CFG_FLOW_CACHE, FLOW_CACHE_MODES

        modes = {v: k for k, v in FLOW_CACHE_MODES.items()}
        out["flow_cache"] = {"mode": modes.get(dp_cfg[CFG_FLOW_CACHE], "?"),
                             "hits": stats[abi.STAT_FLOW_HIT][0],
                             "misses": stats[abi.STAT_FLOW_MISS][0],
                             "epoch": state.get("epoch", 0)}
        out["sets"] = [dict(rec, name=name) for name, rec in record.get("sets", {}).items()]
        out.update(applied=True, policy=record["policy"], digest=record["digest"],
                   policy_sha256=record.get("policy_sha256"),
                   generation=gen, applied_at=record["applied_at"], build=state["build"]["id"],
                   verifier=state["build"].get("verifier", {}))
    return out


def _conntrack_summary(live: Datapath, cfg: tuple[int, ...], stats) -> dict[str, Any]:
    """The two tables and the tracker's counts.  The kernel does not count LRU evictions;
    they are derived: an entry enters the unconfirmed table when created and leaves it
    confirmed, expired or evicted; it enters the confirmed table when confirmed and leaves
    it expired (or ended by a new connection on its tuple) or evicted."""
    from ..policy.plan import CFG_STATEFUL

    def count(slot: int) -> int:
        return stats[slot][0]

    entries = live.conntrack_count("conntrack")
    waiting = live.conntrack_count("conntrack_unconfirmed")
    created, confirmed = count(abi.STAT_CT_NEW), count(abi.STAT_CT_CONFIRMED)
    expired, expired_unconfirmed = (count(abi.STAT_CT_EXPIRED),
                                    count(abi.STAT_CT_UNCONFIRMED_EXPIRED))
    return {"enabled": bool(cfg[CFG_STATEFUL]), "entries": entries,
            "capacity": live.constants.get("NETCTL_CT_ENTRIES", 0), "created": created,
            "confirmed": confirmed, "expired": expired,
            "evicted": max(0, confirmed - expired - entries),
            "unconfirmed": {
                "entries": waiting,
                "capacity": live.constants.get("NETCTL_CT_UNCONFIRMED_ENTRIES", 0),
                "expired": expired_unconfirmed,
                "evicted": max(0, created - confirmed - expired_unconfirmed - waiting)},
            "replies_accepted": count(abi.STAT_CT_REPLY),
            "related_accepted": count(abi.STAT_CT_RELATED),
            "invalid": count(abi.STAT_CT_INVALID)}


def conntrack() -> dict[str, Any]:
    """The tracked flows of this namespace's datapath (`netctl conntrack -o json`)."""
    require_privilege("conntrack")
    ns = Namespace.current()
    state, _notes = live_state(ns)
    live, why = _open_live(ns, state)
    if live is None:
        return {"netns": netns_name(), "entries": [], "problem": why}
    with live:
        flows = sorted(live.conntrack(), key=lambda e: (e["idle_s"], e["src"], e["sport"]))
        cfg = live.read_config(live.active)
        summary = _conntrack_summary(live, cfg, live.stats())
    return {"netns": netns_name(), **summary, "flows": flows}


# ---- detach -------------------------------------------------------------------------------

def detach(devs: list[str] | None = None, everything: bool = False) -> dict[str, Any]:
    """Remove netctl's programs (and the clsact qdiscs it created) from the given interfaces,
    or from all; with all, remove the pins and the state too."""
    require_privilege("detach")
    ns = Namespace.current()
    with ns.lock():
        state = ns.read_state() or {}
        recorded = dict(state.get("interfaces", {}))
        names = list(recorded) if (everything or not devs) else devs
        detached, gone = [], []
        with att.Links() as links:
            for name in names:
                rec = recorded.get(name)
                if rec is None:
                    link = links.find(name)
                    if link is None:
                        raise AttachError(name, errno.ENODEV, "no such interface")
                    rec = {"name": name, "ifindex": link.index, "created_clsact": False}
                if _detach_interface(links, rec):
                    detached.append(name)
                else:
                    gone.append(name)
                recorded.pop(name, None)
            if everything or not devs:
                # Anything of netctl's left on an interface the state does not list (a
                # crashed apply, a lost state file) goes too.
                for link_msg in links.ipr.get_links():
                    link = links.info(link_msg["index"])
                    if link is not None and link.name not in detached:
                        rec = {"name": link.name, "ifindex": link.index,
                               "created_clsact": False}
                        if _has_ours(links, link):
                            _detach_interface(links, rec)
                            detached.append(link.name)
            if not recorded:
                for family, dst in links.netctl_routes():
                    links.delete_route(family, dst)
        if recorded:
            state["interfaces"] = recorded
            ns.write_state(state)
        else:
            ns.remove_all_pins()
            ns.remove_state()
    return {"detached": detached, "gone": gone, "removed_pins": not recorded}


def _has_ours(links: att.Links, link: att.LinkInfo) -> bool:
    return links.xdp_is_ours(link) or any(
        f.ours for d in ("ingress", "egress") for f in links.filters(link, d))
