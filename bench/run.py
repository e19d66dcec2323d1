"""`make bench` / `make bench-quick`: netctl against the firewalls people use, in one run.

    python -m bench.run            # the full run: N = 1 ... 100,000 (about 8 minutes)
    python -m bench.run --quick    # N = 1, 1,000, 10,000, shorter windows (about 2 minutes)
    python -m bench.run --smoke    # the harness works end to end (seconds; no figures)

Prints a table of what every system judged per second at each N with ratios to the bare
limit of each hook and to the peers, the per-packet program cost (BPF_PROG_TEST_RUN), the
apply costs, and forwarding through a router namespace (bench/forwarding.py); writes
bench/results/<time>.json (and latest.json) and bench/results/throughput.png.  Figures vary
between machines and runs: read the ratios, which come from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import costs, forwarding, harness, tracers
from bench.rulesets import rules

RESULTS = Path(__file__).resolve().parent / "results"

MODES = {
    "full": {"ns": [1, 100, 1000, 10000, 100000], "seconds": 4.0, "cost_ns": None,
             "apply_ns": [1000, 10000, 100000], "repeat": 1_000_000, "forward_n": 10000,
             "tracer_rounds": 7, "tracer_seconds": 3.0, "event_rates": tracers.RATES},
    "quick": {"ns": [1, 1000, 10000], "seconds": 2.0, "cost_ns": None,
              "apply_ns": [10000], "repeat": 1_000_000, "forward_n": 10000,
              "tracer_rounds": 3, "tracer_seconds": 2.0, "event_rates": (10_000, 60_000)},
    "smoke": {"ns": [1, 100], "seconds": 0.5, "cost_ns": None, "apply_ns": [100],
              "repeat": 1000, "forward_n": 100, "tracer_rounds": 1, "tracer_seconds": 1.0,
              "event_rates": (1000,)},
}
# Linear filters are measured up to where a run stays reasonable (their load and per-packet
# cost grow with N; the trend is plain long before).
LINEAR_MAX = 10000


def systems() -> list[harness.System]:
    return [harness.GeneratorCeiling(), harness.NoFilter(), harness.BareDrop("xdp"),
            harness.BareDrop("tc"), harness.Netctl(None, "netctl (default hook)"),
            harness.Netctl("native", "netctl (XDP)"), harness.Nft("set"),
            harness.Nft("linear"), harness.Iptables(), harness.XdpFilter()]


def _limit(system: harness.System) -> int | None:
    if isinstance(system, harness.Nft | harness.Iptables) and getattr(
            system, "style", "linear") == "linear":
        return LINEAR_MAX
    return system.max_rules


def throughput(ns: list[int], seconds: float, say) -> list[dict]:
    rows = []
    for n in ns:
        bench = rules(n)
        for system in systems():
            limit = _limit(system)
            if limit is not None and n > limit:
                continue
            if n > 1 and isinstance(system, harness.GeneratorCeiling | harness.NoFilter
                                    | harness.BareDrop):
                continue  # they do not depend on N: measured once, at N = 1
            try:
                row = harness.measure(system, bench, seconds)
            except Exception as exc:  # a peer that fails is reported, not fatal
                row = {"system": system.name, "hook": system.hook, "rules": n,
                       "error": str(exc)[:300]}
            rows.append(row)
            pps = f"{row['pps'] / 1e6:6.3f} Mpps" if "pps" in row else "failed"
            say(f"  N={n:<7} {row['system']:<36} {pps}")
    return rows


def _at(rows: list[dict], system: str, n: int) -> float | None:
    for row in rows:
        if row["system"] == system and row["rules"] == n and "pps" in row:
            return row["pps"]
    for row in rows:  # N-independent systems were measured at N = 1
        if row["system"] == system and row["rules"] == 1 and "pps" in row and system in (
                "bare xdp drop", "bare tc drop", "no filter (closed port)",
                "generator ceiling (DUT link down)"):
            return row["pps"]
    return None


def table(result: dict) -> str:
    rows, ns = result["throughput"], result["ns"]
    names = list(dict.fromkeys(r["system"] for r in rows))
    out = ["Throughput, Mpps judged (60-byte UDP flood over veth; only the last rule matches)",
           f"{'system':<36}" + "".join(f"{n:>10,}" for n in ns)]
    for name in names:
        cells = []
        for n in ns:
            v = _at(rows, name, n)
            cells.append(f"{v / 1e6:>10.3f}" if v is not None else f"{'-':>10}")
        out.append(f"{name:<36}" + "".join(cells))
    out.append("")
    out.append("Ratios (netctl default hook / other)")
    default = "netctl (default hook)"
    for other in ("bare tc drop", "nftables interval set", "nftables linear chain",
                  "iptables (raw PREROUTING)", "xdp-filter (addresses)"):
        cells = []
        for n in ns:
            a, b = _at(rows, default, n), _at(rows, other, n)
            cells.append(f"{a / b:>10.2f}" if a and b else f"{'-':>10}")
        out.append(f"{'vs ' + other:<36}" + "".join(cells))
    cells = []
    for n in ns:
        a, b = _at(rows, "netctl (XDP)", n), _at(rows, "bare xdp drop", n)
        cells.append(f"{a / b:>10.2f}" if a and b else f"{'-':>10}")
    out.append(f"{'netctl (XDP) vs bare xdp drop':<36}" + "".join(cells))
    ceiling = _at(rows, "generator ceiling (DUT link down)", 1)
    best = max((r["pps"] for r in rows if "pps" in r and not r["system"].startswith("gen")),
               default=0)
    if ceiling:
        out.append(f"generator ceiling {ceiling / 1e6:.3f} Mpps, highest figure "
                   f"{best / 1e6:.3f} Mpps: the DUT is the bottleneck"
                   if ceiling > best else
                   f"WARNING: generator ceiling {ceiling / 1e6:.3f} Mpps is below the highest "
                   f"figure {best / 1e6:.3f}: figures near it are generator-bound")
    out.append("")
    out.append("Per-packet cost, ns (BPF_PROG_TEST_RUN; floor = one LPM lookup of the source)")
    out.append(f"{'rules':>8} {'entries':>9} {'xdp':>6} {'floor':>6} {'ratio':>6} "
               f"{'tc':>6} {'floor':>6} {'ratio':>6}")
    for c in result["per_packet"]:
        out.append(f"{c['rules']:>8,} {c['rule_trie_entries']:>9,} {c['netctl_xdp_ns']:>6} "
                   f"{c['lpm_xdp_ns']:>6} {c['netctl_xdp_ns'] / c['lpm_xdp_ns']:>6.2f} "
                   f"{c['netctl_tc_ns']:>6} {c['lpm_tc_ns']:>6} "
                   f"{c['netctl_tc_ns'] / c['lpm_tc_ns']:>6.2f}")
    first = result["per_packet"][0]
    last = result["per_packet"][-1]
    out.append(f"cost at {last['rules']:,} rules / at {first['rules']:,}: xdp "
               f"{last['netctl_xdp_ns'] / first['netctl_xdp_ns']:.2f}, tc "
               f"{last['netctl_tc_ns'] / first['netctl_tc_ns']:.2f}")
    out.append("")
    out.append("Apply (netctl apply as a separate process; cold includes building programs)")
    out.append(f"{'rules':>8} {'cold s':>7} {'entries':>8} {'warm s':>7} {'1-rule s':>8} "
               f"{'written':>7} {'peak MB':>8} {'maps MB':>8} {'nft -f s':>8}")
    for a in result["apply"]:
        out.append(f"{a['rules']:>8,} {a['cold_s']:>7.2f} {a['cold_entries']:>8,} "
                   f"{a['warm_s']:>7.2f} {a['one_rule_s']:>8.2f} {a['one_rule_entries']:>7} "
                   f"{a['peak_rss_mb']:>8.0f} {a['map_memory_mb']:>8.1f} "
                   f"{a['nft_set_load_s']:>8.2f}")
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, ns = result["throughput"], result["ns"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name in dict.fromkeys(r["system"] for r in rows):
        if name.startswith("generator"):
            continue
        points = [(n, _at(rows, name, n)) for n in ns]
        points = [(n, v / 1e6) for n, v in points if v is not None]
        if len(points) == 1 or name.startswith(("bare", "no filter")):
            ax.axhline(points[0][1], linestyle=":", linewidth=1, label=name,
                       color="grey" if name.startswith("no") else None)
            continue
        style = "-o" if name.startswith("netctl") else "--s"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name,
                linewidth=2.2 if name.startswith("netctl") else 1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rules (only the last matches the flood)")
    ax.set_ylabel("packets judged, Mpps (log)")
    ax.set_title("60-byte UDP flood over veth, one run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine() -> dict:
    jit = Path("/proc/sys/net/core/bpf_jit_enable")
    return {"kernel": platform.release(), "cpus": os.cpu_count(),
            "bpf_jit_enable": jit.read_text().strip() if jit.exists() else None,
            "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="about 2 minutes")
    group.add_argument("--smoke", action="store_true", help="the harness works (no figures)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, BPF programs, nftables)", file=sys.stderr)
        return 77
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[mode]

    def say(text: str) -> None:
        print(text, flush=True)

    started = time.monotonic()
    say(f"bench ({mode}): per-packet cost")
    cost_rows = costs.per_packet(cfg["cost_ns"] or cfg["ns"], repeat=cfg["repeat"])
    say("bench: throughput")
    through = throughput(cfg["ns"], cfg["seconds"], say)
    say("bench: apply costs")
    apply_rows = costs.apply_costs(cfg["apply_ns"])
    say("bench: forwarding")
    forward_rows = forwarding.run(cfg["forward_n"], cfg["seconds"], say)
    tracer_result = tracers.run(cfg["tracer_seconds"], cfg["tracer_rounds"], say,
                                cfg["event_rates"])
    result = {"mode": mode, "machine": machine(), "ns": cfg["ns"], "seconds": cfg["seconds"],
              "throughput": through, "per_packet": cost_rows, "apply": apply_rows,
              "forwarding": forward_rows, "tracers": tracer_result,
              "elapsed_s": time.monotonic() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"{stamp}-{mode}.json", f"latest-{mode}.json"):
        (args.out / name).write_text(json.dumps(result, indent=1))
    plot(result, args.out / f"throughput-{mode}.png")
    say("")
    say(table(result))
    say("")
    say(forwarding.table(forward_rows))
    say("")
    say(tracers.table(tracer_result))
    say(f"\nresults: {args.out}/latest-{mode}.json, {args.out}/throughput-{mode}.png "
        f"({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
