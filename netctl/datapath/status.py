"""`netctl status` and `netctl conntrack`: what is live, read from the kernel and told
against the state file (the JSON of their ``-o json``; netctl.present formats it)."""

from __future__ import annotations

import os
from typing import Any

from .. import abi
from ..errors import NetctlError
from ..gcpause import without_gc
from ..kernel import privilege
from . import attach as att
from .hooks import attach_paths_live, attachment_problems, prog_ids_shown
from .instance import Datapath
from .live import changed_maps, live_state, open_live
from .netns import Namespace, netns_name
from .state import Carried, Generation, State


def live_record(ns: Namespace, state: State) -> Generation:
    """The record of the generation packets are judged by now."""
    live, why = open_live(ns, state)
    if live is None:
        raise NetctlError(f"{why}: the datapath is gone; 'netctl apply' rebuilds it")
    with live:
        gen = live.active
    record = state.generation(gen)
    if record is None:
        raise NetctlError(f"generation {gen} is live but the state file does not describe it; "
                          "'netctl apply' repairs this")
    return record


def show() -> dict[str, Any]:
    """`netctl show`: the live policy's text as applied, and where it came from."""
    privilege.require("show", *privilege.DATAPATH)
    ns = Namespace.current()
    state, _notes = live_state(ns)
    if state is None or state.build is None:
        raise NetctlError(f"no netctl datapath in netns {netns_name() or 'unnamed'} "
                          "(netctl apply FILE creates one)")
    from .setctl import kept_text

    record = live_record(ns, state)
    text = kept_text(ns, record)
    return {"policy": record.policy, "applied_at": record.applied_at, "digest": record.digest,
            "text_sha256": record.text_sha256, "policy_file": policy_file_drift(record),
            "set_edits": record.set_edits(), "text": text}


def policy_file_drift(record: Generation) -> dict[str, Any]:
    """Whether the file the live policy was applied from still holds what was applied:
    {"path", "state": "same" | "changed" | "missing" | "unknown" (standard input, no digest
    recorded, or the file unreadable)}."""
    from ..policy.sets import file_sha256

    path = record.policy
    if not record.policy_sha256 or not os.path.isabs(path):
        return {"path": path, "state": "unknown"}
    if not os.path.exists(path):
        return {"path": path, "state": "missing"}
    now = file_sha256(path)
    if now is None:
        return {"path": path, "state": "unknown"}
    return {"path": path, "state": "same" if now == record.policy_sha256 else "changed"}


@without_gc
def status(verify: bool = True) -> dict[str, Any]:
    """What is live in this network namespace (the JSON of `netctl status -o json`).

    ``verify`` reads the live generation back from the kernel and reports maps that differ
    from what netctl applied (about 3 s at 100,000 rules; top and the exporter skip it)."""
    privilege.require("status", *privilege.DATAPATH)
    ns = Namespace.current()
    state, notes = live_state(ns)
    out: dict[str, Any] = {"netns": netns_name(), "cookie": ns.cookie, "applied": False,
                           "interfaces": [], "rules": [], "defaults": {}, "drops": [],
                           "problems": list(notes), "attach_offered": attach_offered()}
    _sweep_link_pins(ns)
    if state is None or state.build is None:
        return out
    live, why = open_live(ns, state)
    if live is None:
        out["problems"].append(f"{why}: the datapath is gone (bpffs unmounted, pins "
                               "removed or a reboot); 'netctl apply' rebuilds it")
        out["interfaces"] = [dict(rec.to_json(), live=False)
                             for rec in state.interfaces.values()]
        return out
    with live:
        gen = live.active
        record = state.generation(gen)
        ids = live.prog_ids()
        with att.Links() as links:
            for name, rec in state.interfaces.items():
                problems = attachment_problems(links, name, rec, ids)
                link = links.find(name)
                out["interfaces"].append(dict(
                    rec.to_json(), live=not problems, problems=problems,
                    xdp_prog_id=link.xdp_prog_id if link else None,
                    xdp_mode=link.xdp_mode if link else None,
                    attach=attach_paths_live(links, name, rec),
                    prog_ids=prog_ids_shown(rec, ids)))
                out["problems"].extend(f"{name}: {p}" for p in problems)
        if record is None:
            out["problems"].append(f"generation {gen} is live but the state file does not "
                                   "describe it; 'netctl apply' repairs this")
            return out
        out["verified"] = bool(verify and record.contents)
        changed = changed_maps(live, gen, record) if verify else []
        if changed:
            out["problems"].append(
                f"the live maps differ from what netctl applied ({', '.join(changed)} of "
                f"generation {gen}): changed by hand? 'netctl apply' of the same policy "
                "rewrites them")
        _counters(out, live, gen, record, state.carried or Carried())
        out["flow_cache"]["epoch"] = state.epoch
        out["sets"] = [dict(rec, name=name) for name, rec in (record.sets or {}).items()]
        assert state.build is not None
        from .confirm import status_of

        confirm = status_of(state)
        if confirm:
            out["confirm"] = confirm
        out.update(applied=True, policy=record.policy, digest=record.digest,
                   policy_sha256=record.policy_sha256,
                   policy_file=policy_file_drift(record),
                   generation=gen, applied_at=record.applied_at, build=state.build.id,
                   verifier=state.build.verifier)
    return out


def attach_offered() -> dict[str, str]:
    """The ways onto the hooks this kernel offers (what an apply takes by default):
    {"tc": "tcx" or "cls_bpf", "xdp": "link" or "netlink"}."""
    tc, xdp = att.attach_paths(att.ATTACH_AUTO)
    return {"tc": tc, "xdp": xdp}


def _sweep_link_pins(ns: Namespace) -> None:
    """Remove the pins of links whose interface is gone, when no apply or detach holds the
    namespace (status never waits for one, and never races one over a pin)."""
    if not os.path.isdir(ns.link_dir):
        return
    try:
        with ns.lock(timeout=0), att.Links(ns.link_dir) as links:
            links.sweep_link_pins()
    except (NetctlError, OSError):
        return


def _counters(out: dict[str, Any], live: Datapath, gen: int, record: Generation,
              carried: Carried) -> None:
    """Rules, defaults, drops, passes, conntrack, events, routes, forwarding and the flow
    cache of generation ``gen``, counters carried over from earlier generations added."""
    from ..abi import CFG_EVENT_SAMPLE, CFG_FLOW_CACHE, FLOW_CACHE_MODES

    carried_stats = carried.all_stats()
    counters = live.rule_counters(gen, len(record.rules))
    actions = ("accept", "drop")
    marked = set(record.metrics)
    policy_drops = [0, 0]
    for index, (name, action, (packets, nbytes)) in enumerate(
            zip(record.rules, record.actions, counters, strict=True)):
        cp, cb = carried.rules.get(name, (0, 0))
        packets, nbytes = packets + cp, nbytes + cb
        out["rules"].append({"index": index, "name": name, "action": actions[action],
                             "packets": packets, "bytes": nbytes,
                             "metrics": index in marked})
        if action == 1:
            policy_drops[0] += packets
            policy_drops[1] += nbytes
    stats = [(p + carried_stats[i][0], b + carried_stats[i][1])
             for i, (p, b) in enumerate(live.stats())]
    defaults: dict[str, dict[str, Any]] = {}
    for direction, dir_code in (("ingress", 0), ("egress", 1)):
        for action_code, verdict in enumerate(actions):
            packets, nbytes = stats[abi.stat_default(dir_code, action_code)]
            defaults.setdefault(direction, {})[verdict] = {"packets": packets,
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
    out["conntrack"] = conntrack_summary(live, dp_cfg, stats)
    out["events"] = {"sent": stats[abi.STAT_EVENTS][0],
                     "lost": stats[abi.STAT_EVENTS_LOST][0],
                     "sampled_out": stats[abi.STAT_EVENTS_SAMPLED_OUT][0],
                     "listening": live.listening(),
                     "sample": max(1, dp_cfg[CFG_EVENT_SAMPLE])}
    route_counts = live.route_counters(gen, len(record.nexthops))
    out["routes"] = [dict(nh.to_json(), packets=p, bytes=b)
                     for nh, (p, b) in zip(record.nexthops, route_counts, strict=True)]
    out["forwarding"] = {"left_to_kernel": {
        "local": stats[abi.STAT_FWD_LOCAL][0], "ttl": stats[abi.STAT_FWD_TTL][0],
        "options_or_vlan": stats[abi.STAT_FWD_OPTIONS][0],
        "unresolved": stats[abi.STAT_FWD_UNRESOLVED][0],
        "not_unicast": stats[abi.STAT_FWD_NOT_UNICAST][0]}}
    modes = {v: k for k, v in FLOW_CACHE_MODES.items()}
    out["flow_cache"] = {"mode": modes.get(dp_cfg[CFG_FLOW_CACHE], "?"),
                         "hits": stats[abi.STAT_FLOW_HIT][0],
                         "misses": stats[abi.STAT_FLOW_MISS][0]}


def conntrack_summary(live: Datapath, cfg: tuple[int, ...], stats) -> dict[str, Any]:
    """The two tables and the tracker's counts.  The kernel does not count LRU evictions;
    they are derived: an entry enters the unconfirmed table when created and leaves it
    confirmed, expired or evicted; it enters the confirmed table when confirmed and leaves
    it expired (or ended by a new connection on its tuple) or evicted."""
    from ..abi import CFG_STATEFUL

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
    privilege.require("conntrack", *privilege.DATAPATH)
    ns = Namespace.current()
    state, _notes = live_state(ns)
    live, why = open_live(ns, state)
    if live is None:
        return {"netns": netns_name(), "entries": [], "problem": why}
    with live:
        flows = sorted(live.conntrack(), key=lambda e: (e["idle_s"], e["src"], e["sport"]))
        cfg = live.read_config(live.active)
        summary = conntrack_summary(live, cfg, live.stats())
    return {"netns": netns_name(), **summary, "flows": flows}
