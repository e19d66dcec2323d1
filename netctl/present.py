"""Text presentation of the reports the verbs print (status, sets): shared by the CLI and
the namespace lab, and free of argument parsing."""

from __future__ import annotations

import time


def format_status(report: dict) -> str:
    lines = []
    where = f"netns {report['netns'] or 'unnamed'} (cookie {report['cookie']})"
    if not report["applied"] and not report["interfaces"]:
        return f"{where}: no netctl datapath (netctl apply FILE creates one)"
    if report["applied"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["applied_at"]))
        lines.append(f"policy  {report['policy']}")
        lines.append(f"        generation {report['generation']}, applied {when}, "
                     f"digest {report['digest'][:12]}, {where}")
        confirm = (report.get("confirm") or {}).get("pending")
        if confirm and not confirm["expired"]:
            until = time.strftime("%H:%M:%S", time.localtime(confirm["deadline"]))
            lines.append(f"        awaiting 'netctl confirm' until {until} "
                         f"({confirm['seconds_left']:.0f} s left); else "
                         f"{confirm['previous'] or 'no policy'} comes back")
        elif confirm:
            lines.append(f"        not confirmed in time: {confirm['previous'] or 'no policy'}"
                         " judges again (recorded at the next confirm or apply)")
        rolled = (report.get("confirm") or {}).get("rollbacks")
        if rolled:
            lines.append(f"        rollbacks for want of a confirmation: {rolled}")
        drift = report.get("policy_file") or {}
        if drift.get("state") == "changed":
            lines.append("        the file has changed since it was applied ('netctl show' "
                         "prints what is live; 'netctl apply --dry-run FILE' what would change)")
        elif drift.get("state") == "missing":
            lines.append("        the file is gone ('netctl show' prints what is live)")
    offered = report.get("attach_offered")
    if offered:
        lines.append(f"hooks   tc as {offered['tc']}, XDP as {offered['xdp']} (this kernel's "
                     "best; NETCTL_ATTACH=legacy: cls_bpf and netlink)")
    lines.append("")
    lines.append(f"{'INTERFACE':<16} {'INGRESS':<11} {'EGRESS':<6} {'VIA':<9} "
                 f"{'PROGRAM IDS':<26} STATE")
    for rec in report["interfaces"]:
        ids = " ".join(f"{role.replace('tc_', '')}={pid}"
                       for role, pid in rec.get("prog_ids", {}).items())
        state = "ok" if rec.get("live") else "; ".join(rec.get("problems") or ["gone"])
        via = ",".join(v for v in (rec.get("attach") or {}).values() if v) or "-"
        lines.append(f"{rec['name']:<16} {rec['ingress'] or '-':<11} {rec['egress'] or '-':<6} "
                     f"{via:<9} {ids or '-':<26} {state}")
    if report["rules"]:
        lines.append("")
        lines.append(f"{'RULE':<32} {'ACTION':<7} {'PACKETS':>12} {'BYTES':>14}")
        for r in report["rules"]:
            lines.append(f"{r['name'][:32]:<32} {r['action']:<7} {r['packets']:>12} "
                         f"{r['bytes']:>14}")
    if report.get("sets"):
        lines.append("")
        lines.append(f"{'SET':<24} {'PREFIXES':>10} {'LIVE EDITS':<12} SOURCE")
        for rec in report["sets"]:
            edits = f"+{len(rec['add'])} -{len(rec['del'])}" if rec["add"] or rec["del"] \
                else "-"
            lines.append(f"{'@' + rec['name']:<24} {rec['v4'] + rec['v6']:>10,} {edits:<12} "
                         f"{rec['file'] or 'elements'}")
    if report["defaults"]:
        lines.append("")
        for direction, d in report["defaults"].items():
            lines.append(f"default {direction:<8} {d['action']:<7} accepted "
                         f"{d['accept']['packets']:>10} pkts   dropped "
                         f"{d['drop']['packets']:>10} pkts")
    drops = [d for d in report["drops"] if d["packets"]]
    if report["applied"]:
        lines.append("")
        if drops:
            lines.append(f"{'DROP REASON':<16} {'PACKETS':>12} {'BYTES':>14}")
            for d in drops:
                lines.append(f"{d['reason']:<16} {d['packets']:>12} {d['bytes']:>14}")
        else:
            lines.append("no drops")
    if report.get("routes"):
        lines.append("")
        lines.append(f"{'ROUTE':<24} {'VIA':<26} {'DEV':<12} {'NEXT HOP MAC':<18} "
                     f"{'PACKETS':>10}")
        for r in report["routes"]:
            lines.append(f"{r['dst']:<24} {r['via']:<26} {r['dev']:<12} "
                         f"{r['dmac'] or 'unresolved':<18} {r['packets']:>10}")
        kernel = report["forwarding"]["left_to_kernel"]
        lines.append("left to the kernel: " + ", ".join(f"{k} {v}" for k, v in kernel.items()))
    ct = report.get("conntrack")
    if ct and ct["enabled"]:
        waiting = ct["unconfirmed"]
        lines.append("")
        lines.append(f"conntrack {ct['entries']} of {ct['capacity']} confirmed, "
                     f"{waiting['entries']} of {waiting['capacity']} unconfirmed; "
                     f"{ct['replies_accepted']} replies and {ct['related_accepted']} related "
                     f"accepted, {ct['invalid']} invalid; evicted {ct['evicted']} confirmed, "
                     f"{waiting['evicted']} unconfirmed")
    for problem in report["problems"]:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def format_sets(report: dict) -> str:
    lines = [f"policy  {report['policy']}", "",
             f"{'SET':<24} {'PREFIXES':>10} {'IPv4':>10} {'IPv6':>10} {'LIVE EDITS':<12} SOURCE"]
    for rec in report["sets"]:
        edits = f"+{len(rec['add'])} -{len(rec['del'])}" if rec["add"] or rec["del"] else "-"
        lines.append(f"{'@' + rec['name']:<24} {rec['v4'] + rec['v6']:>10,} {rec['v4']:>10,} "
                     f"{rec['v6']:>10,} {edits:<12} {rec['file'] or 'elements'}")
    return "\n".join(lines)


def format_set(report: dict) -> str:
    """One set as a set file: comments saying what it is, then its prefixes."""
    lines = [f"# set @{report['name']} of {report['policy']}: {report['prefixes']:,} prefixes "
             f"({report['v4']:,} IPv4, {report['v6']:,} IPv6), from "
             f"{report['file'] or 'its elements'}"]
    if report["added"] or report["removed"]:
        lines.append(f"# live edits in force: {len(report['added'])} added, "
                     f"{len(report['removed'])} removed")
        lines += [f"# + {p}" for p in report["added"]]
        lines += [f"# - {p}" for p in report["removed"]]
    lines += report["elements"]
    return "\n".join(lines)
