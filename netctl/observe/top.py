"""`netctl top`: a refreshing table of what the datapath and the kernel are doing now.

Every interval it reads the datapath's counters (rules, defaults, drop reasons, routes;
the same numbers as `netctl status`) and the aggregates the kernel tracers keep in BPF maps
(kernel drops by reason and location, TCP retransmits by flow), and shows the busiest of
each as rates over the last interval with totals since `top` started.  The aggregates are
exact: they are counted in the kernel, not rebuilt from events a full ring buffer may have
refused.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from typing import Any

from ..errors import NetctlError
from ..kernel import privilege
from .trace.kinds import IN_TOP as KINDS
from .trace.kinds import KIND_TYPES

# The datapath's sections (from `netctl status`), then each tracer kind's.
TITLES = {"rules": "RULE", "defaults": "DEFAULT", "drops": "DATAPATH DROP REASON",
          "routes": "ROUTE",
          **{section: title for kind in KINDS
             for section, title in KIND_TYPES[kind].top_sections.items()}}


def snapshot(report: dict[str, Any], tracers: list) -> dict[str, Counter]:
    """Every counter `top` shows, flat, keyed by section then row label."""
    snap: dict[str, Counter] = {s: Counter() for s in TITLES}
    for r in report.get("rules", []):
        snap["rules"][f"{r['name']} ({r['action']})"] = r["packets"]
    for direction, d in report.get("defaults", {}).items():
        for verdict in ("accept", "drop"):
            snap["defaults"][f"{direction} {verdict}"] = d[verdict]["packets"]
    for d in report.get("drops", []):
        snap["drops"][d["reason"]] = d["packets"]
    for r in report.get("routes", []) or []:
        snap["routes"][f"{r['dst']} via {r['dev']}"] = r["packets"]
    for t in tracers:
        for section, counts in KIND_TYPES[t.kind].top_rows(t.counts()).items():
            snap[section].update(counts)
    return snap


def rows(first: dict[str, Counter], prev: dict[str, Counter], now: dict[str, Counter],
         seconds: float, limit: int) -> dict[str, list[dict]]:
    """Per section the busiest rows: rate over the last interval, then total since start."""
    out: dict[str, list[dict]] = {}
    for section, counts in now.items():
        table = []
        for label, value in counts.items():
            total = value - first[section].get(label, 0)
            delta = value - prev[section].get(label, 0)
            if total <= 0 and delta <= 0:
                continue
            table.append({"name": label, "rate": delta / seconds if seconds > 0 else 0.0,
                          "total": total})
        table.sort(key=lambda r: (-r["rate"], -r["total"], r["name"]))
        out[section] = table[:limit]
    return out



def render(report: dict[str, Any], table: dict[str, list[dict]], tracers: list,
           width: int) -> str:
    lines = []
    stamp = time.strftime("%H:%M:%S")
    if report.get("applied"):
        devs = ", ".join(i["name"] for i in report.get("interfaces", []))
        state = "intact" if not report.get("problems") else "PROBLEMS: " + "; ".join(
            report["problems"])
        lines.append(f"netctl top {stamp}  netns {report.get('netns') or '-'}  generation "
                     f"{report.get('generation')}  on {devs or '-'}  {state}")
    else:
        lines.append(f"netctl top {stamp}  no netctl datapath in this network namespace")
    lines.append("kernel tracers: " + (", ".join(f"{t.kind} via {t.hook}" for t in tracers)
                                       or "off"))
    name_width = max(24, width - 26)
    for section, title in TITLES.items():
        entries = table.get(section, [])
        if not entries:
            continue
        lines.append("")
        lines.append(f"{title:<{name_width}} {'PKTS/S':>12} {'TOTAL':>12}")
        for r in entries:
            lines.append(f"{r['name'][:name_width]:<{name_width}} {r['rate']:>12.1f} "
                         f"{r['total']:>12}")
    if all(not v for v in table.values()):
        lines.append("")
        lines.append("(no packets counted yet)")
    return "\n".join(lines)


def top(interval: float = 1.0, iterations: int | None = None, limit: int = 10,
        output: str = "text", kernel: bool = True, out=None, err=None) -> int:
    from ..datapath.control import status
    from . import trace

    out = out or sys.stdout
    err = err or sys.stderr
    if interval <= 0:
        raise NetctlError("--interval must be greater than 0")
    if iterations is not None and iterations < 1:
        raise NetctlError("--iterations must be at least 1")
    privilege.require("top", *privilege.TRACING)
    tracers: list = []
    try:
        if kernel:
            try:
                tracers = trace.open_tracers(list(KINDS))
            except NetctlError as exc:
                print(f"netctl top: kernel tracers unavailable ({exc}); showing the datapath "
                      "only", file=err)
        clear = output == "text" and out.isatty()
        report = status(verify=False)
        first = prev = snapshot(report, tracers)
        last = time.monotonic()
        done = 0
        while iterations is None or done < iterations:
            time.sleep(interval)
            for t in tracers:   # keep the rings drained; top reads the maps, not the events
                t.poll(0)
            report = status(verify=False)
            now = snapshot(report, tracers)
            moment = time.monotonic()
            table = rows(first, prev, now, moment - last, limit)
            prev, last = now, moment
            done += 1
            if output == "json":
                print(json.dumps({"time": time.time(), "applied": report.get("applied"),
                                  "generation": report.get("generation"),
                                  "problems": report.get("problems", []),
                                  "tracers": {t.kind: t.hook for t in tracers}, **table}),
                      file=out, flush=True)
                continue
            width = shutil.get_terminal_size((100, 24)).columns
            text = render(report, table, tracers, width)
            if clear:
                out.write("\x1b[H\x1b[2J")
            print(text, file=out, flush=True)
            if not clear:
                print(file=out, flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for t in tracers:
            t.close()
