"""`make bench` / `make bench-quick`: netctl against the firewalls people use, in one run.

    python -m bench.run            # the full run: N = 1 ... 100,000 (about 20 minutes)
    python -m bench.run --quick    # N = 1, 1,000, 10,000, shorter windows (4 to 5 minutes)
    python -m bench.run --smoke    # the harness works end to end (no figures to read)

For each rule mix (bench, mixed: bench/rulesets.py) and each flood (fixed: one flow;
random: a new source address in every frame), prints a table of what every system judged
per second at each N with ratios to the bare limit of each hook and to the peers; then the
per-packet program cost (BPF_PROG_TEST_RUN), the apply costs of both mixes, one rule on a
named set of a million prefixes (100,000 quick, 1,000 smoke: bench/sets.py), forwarding
through a router namespace (bench/forwarding.py), the tracers' cost, a fleet rollout's time
(bench/fleet.py), and the figures against the targets.  The quick run measures the random
flood and the mixed mix at 10,000 rules only.
Writes bench/results/<time>-<mode>.json and latest-<mode>.json (every figure), a
throughput-versus-N plot per mix and flood, and an apply-time plot.  Figures vary between
machines and runs: read the ratios, which come from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import costs, forwarding, sets, systems, tracers
from bench.rulesets import FLOOD_SRC, FLOODS, MIXES, RANDOM_SRC_NET, rules

RESULTS = Path(__file__).resolve().parent / "results"

FULL_NS = [1, 100, 1000, 10000, 100000]
MODES = {
    # matrix: the rule counts measured for each (mix, flood)
    "full": {"ns": FULL_NS, "matrix": [(mix, flood, FULL_NS) for mix in MIXES
                                       for flood in FLOODS],
             "seconds": 4.0, "warmup": 1.0, "cost_ns": None,
             "apply_ns": [1000, 10000, 100000], "repeat": 1_000_000, "forward_n": 10000,
             "tracer_rounds": 7, "tracer_seconds": 3.0, "event_rates": tracers.RATES,
             "set_n": 1_000_000},
    "quick": {"ns": [1, 1000, 10000],
              "matrix": [("bench", "fixed", [1, 1000, 10000]), ("bench", "random", [10000]),
                         ("mixed", "fixed", [10000]), ("mixed", "random", [10000])],
              "seconds": 1.5, "warmup": 0.8, "cost_ns": None,
              "apply_ns": [10000], "repeat": 1_000_000, "forward_n": 10000,
              "tracer_rounds": 3, "tracer_seconds": 2.0, "event_rates": (10_000, 60_000),
              "set_n": 100_000},
    "smoke": {"ns": [1, 100],
              "matrix": [("bench", "fixed", [1, 100]), ("bench", "random", [100]),
                         ("mixed", "fixed", [100]), ("mixed", "random", [100])],
              "seconds": 0.5, "warmup": 0.5, "cost_ns": None, "apply_ns": [100],
              "repeat": 1000, "forward_n": 100, "tracer_rounds": 1, "tracer_seconds": 1.0,
              "event_rates": (1000,), "set_n": 1000},
}
# Linear filters are measured up to where a run stays reasonable (their load and per-packet
# cost grow with N; the trend is plain long before).
LINEAR_MAX = 10000

FLOOD_TITLES = {"fixed": "fixed flood (one flow)",
                "random": "random-source flood (a new source in every frame)"}
DEFAULT = "netctl (default hook)"
XDP = "netctl (XDP)"
CACHE_OFF = "netctl (default hook, flow cache off)"
BARE_TC, BARE_XDP = "bare tc drop", "bare xdp drop"
NFT_SET = "nftables interval set"
CEILING = "generator ceiling (DUT link down)"
# The targets of the "against the targets" block: (netctl row, other row, at least).
TARGETS = ((DEFAULT, BARE_TC, 0.85), (DEFAULT, NFT_SET, 1.1), (XDP, BARE_XDP, 0.85))


def rule_independent() -> list[systems.System]:
    """The limits, measured once per flood: they judge without rules."""
    return [systems.GeneratorCeiling(), systems.NoFilter(), systems.BareDrop("xdp"),
            systems.BareDrop("tc")]


def peers() -> list[systems.System]:
    return [systems.Nft("set"), systems.Nft("linear"), systems.Iptables(),
            systems.XdpFilter()]


def _limit(system: systems.System) -> int | None:
    if isinstance(system, systems.Nft | systems.Iptables) and getattr(
            system, "style", "linear") == "linear":
        return LINEAR_MAX
    return system.max_rules


def _holds(system: systems.System, bench: list) -> bool:
    limit = _limit(system)
    return (limit is None or len(bench) <= limit) and system.holds(bench)


def plan(matrix: list) -> list[tuple[str, int, list[str]]]:
    """(mix, N, floods) in the order of measurement: by N, then mix."""
    ns = sorted({n for _, _, row in matrix for n in row})
    out = []
    for n in ns:
        for mix in MIXES:
            floods = [f for m, f, row in matrix if m == mix and n in row]
            if floods:
                out.append((mix, n, floods))
    return out


def throughput(matrix: list, seconds: float, warmup: float, say) -> list[dict]:
    """Every system under every (mix, N, flood) of ``matrix``.  Each system gets a fresh
    topology per rule count and mix, on which it is measured under each flood in turn (the
    floods' rule sets differ in the last rule); netctl's three variants share theirs.  A
    rule set measured already (at N = 1 both mixes are the one rule that drops the flood)
    is not measured again: its rows are copied, marked ``same_rules_as``."""
    rows: list[dict] = []
    done: dict[tuple, dict] = {}

    def run(steps: list[systems.Step]) -> None:
        todo = []
        for step in steps:
            key = (step.system.name, step.flood, tuple(step.rules))
            if key in done:
                rows.append(dict(done[key], mix=step.mix, same_rules_as=done[key]["mix"]))
            else:
                todo.append(step)
        for step, row in zip(todo, systems.measure_steps(todo, seconds, warmup) if todo
                             else [], strict=True):
            done[(step.system.name, step.flood, tuple(step.rules))] = row
            rows.append(row)
        for row in rows[len(rows) - len(steps):]:
            pps = f"{row['pps'] / 1e6:6.3f} Mpps" if "pps" in row else "failed"
            if "same_rules_as" in row:
                pps += f" (same rules as {row['same_rules_as']})"
            where = f"{row['mix']:<5} N={row['rules']:<7}" if row["mix"] else f"{'(no rules)':<15}"
            say(f"  {row['flood']:<6} {where} {row['system']:<38} {pps}")

    floods = [f for f in FLOODS if any(f == fl for _, fl, _ in matrix)]
    for system in rule_independent():
        run([systems.Step(system, [], flood) for flood in floods])
    for mix, n, floods in plan(matrix):
        by_flood = {flood: rules(n, mix, flood) for flood in floods}
        variants = {"default": systems.Netctl(None, DEFAULT), "xdp": systems.Netctl("native", XDP),
                    "off": systems.Netctl(None, CACHE_OFF, flow_cache="off")}
        steps = []
        for flood in floods:
            names = ("default", "xdp", "off") if flood == "fixed" else ("default", "xdp")
            steps += [systems.Step(variants[v], by_flood[flood], flood, mix) for v in names]
        run(steps)
        for system in peers():
            run([systems.Step(system, by_flood[flood], flood, mix) for flood in floods
                 if _holds(system, by_flood[flood])])
    return rows


def _at(rows: list[dict], system: str, n: int, mix: str, flood: str) -> float | None:
    for row in rows:
        if row["system"] == system and row["flood"] == flood and "pps" in row and (
                (row["rules"] == n and row["mix"] == mix) or row["mix"] is None):
            return row["pps"]
    return None


def _cases(result: dict) -> list[tuple[str, str, list[int]]]:
    return [(c["mix"], c["flood"], c["ns"]) for c in result["matrix"]]


def _ratio_rows(rows, mix, flood, ns) -> list[tuple[str, list[float | None]]]:
    def ratio(a_name, b_name, n):
        a, b = _at(rows, a_name, n, mix, flood), _at(rows, b_name, n, mix, flood)
        return a / b if a and b else None

    out = [(f"vs {other}", [ratio(DEFAULT, other, n) for n in ns])
           for other in (BARE_TC, NFT_SET, "nftables linear chain",
                         "iptables (raw PREROUTING)", "xdp-filter (addresses)")]
    out.append((f"{XDP} vs {BARE_XDP}", [ratio(XDP, BARE_XDP, n) for n in ns]))
    if flood == "fixed":
        out.append(("vs netctl, flow cache off", [ratio(DEFAULT, CACHE_OFF, n) for n in ns]))
    return [(label, cells) for label, cells in out if any(c is not None for c in cells)]


def throughput_table(result: dict, mix: str, flood: str, ns: list[int]) -> str:
    rows = result["throughput"]
    names = list(dict.fromkeys(r["system"] for r in rows if r["flood"] == flood and (
        r["mix"] in (mix, None))))
    out = [f"Throughput, Mpps judged: {mix} mix, {FLOOD_TITLES[flood]}",
           f"{'system':<40}" + "".join(f"{n:>10,}" for n in ns)]
    for name in names:
        cells = []
        for n in ns:
            v = _at(rows, name, n, mix, flood)
            cells.append(f"{v / 1e6:>10.3f}" if v is not None else f"{'-':>10}")
        out.append(f"{name:<40}" + "".join(cells))
    out.append(f"Ratios ({DEFAULT} / other)")
    for label, cells in _ratio_rows(rows, mix, flood, ns):
        out.append(f"{label:<40}" + "".join(f"{c:>10.2f}" if c is not None else f"{'-':>10}"
                                            for c in cells))
    ceiling = _at(rows, CEILING, 0, mix, flood)
    best = max((r["pps"] for r in rows if "pps" in r and r["flood"] == flood and r["mix"] in (
        mix, None) and r["system"] != CEILING), default=0)
    if ceiling:
        out.append(f"generator ceiling {ceiling / 1e6:.3f} Mpps, highest figure "
                   f"{best / 1e6:.3f} Mpps: the DUT is the bottleneck"
                   if ceiling > best else
                   f"WARNING: generator ceiling {ceiling / 1e6:.3f} Mpps is below the highest "
                   f"figure {best / 1e6:.3f}: figures near it are generator-bound")
    return "\n".join(out)


def _target_row(rows: list[dict], mix: str, flood: str, n: int) -> dict:
    row = {"mix": mix, "flood": flood, "rules": n}
    for mine, other, least in TARGETS:
        a, b = _at(rows, mine, n, mix, flood), _at(rows, other, n, mix, flood)
        row[f"{mine} / {other}"] = {
            "at_least": least, "pps": a, "other_pps": b,
            "ratio": a / b if a and b else None,
            "met": (a / b >= least) if a and b else None}
    return row


def targets(result: dict) -> list[dict]:
    """For each mix, flood and N: each target's ratio and whether it is met; then the sets
    section's (its mix named by the set's size: set1M)."""
    out = [_target_row(result["throughput"], mix, flood, n)
           for mix, flood, ns in _cases(result) for n in ns]
    if result.get("sets"):
        sets_result = result["sets"]
        out.append(_target_row(sets_result["throughput"], sets_result["mix"], "fixed",
                               sets_result["size"]))
    return out


def _ratio(ratio: float, target: float) -> str:
    """Two decimals, or three where two would put the ratio on the other side of its
    target (1.098 against 1.1 is no "1.10")."""
    text = f"{ratio:.2f}"
    return text if (float(text) >= target) == (ratio >= target) else f"{ratio:.3f}"


def targets_table(result: dict) -> str:
    heads = ("default/tc >= 0.85", "default/set >= 1.1", "xdp/xdp >= 0.85")
    out = ["Against the targets (netctl's figure / the other's; yes = at least the target)",
           (f"{'mix':<8} {'flood':<7} {'rules':>9}  "
            + "  ".join(f"{h:<19}" for h in heads)).rstrip()]
    for row in result["targets"]:
        cells = []
        for mine, other, target in TARGETS:
            t = row[f"{mine} / {other}"]
            cells.append(f"{_ratio(t['ratio'], target)} {'yes' if t['met'] else 'no'}"
                         if t["ratio"] is not None else "-")
        out.append((f"{row['mix']:<8} {row['flood']:<7} {row['rules']:>9,}  "
                    + "  ".join(f"{c:<19}" for c in cells)).rstrip())
    return "\n".join(out)


def table(result: dict) -> str:
    out = []
    for mix, flood, ns in _cases(result):
        out += [throughput_table(result, mix, flood, ns), ""]
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
    # status and scrape columns: runs since they were measured (older results lack them)
    reads = all("status_s" in a for a in result["apply"])
    out.append(f"{'mix':<6}{'rules':>8} {'cold s':>7} {'entries':>8} {'warm s':>7} "
               f"{'1-rule s':>8} {'written':>7} {'peak MB':>8} {'maps MB':>8} {'nft -f s':>8}"
               + (f" {'status s':>8} {'scrape s':>8} {'top100 s':>8}" if reads else ""))
    for a in result["apply"]:
        line = (f"{a['mix']:<6}{a['rules']:>8,} {a['cold_s']:>7.2f} "
                f"{a['cold_entries']:>8,} {a['warm_s']:>7.2f} {a['one_rule_s']:>8.2f} "
                f"{a['one_rule_entries']:>7} {a['peak_rss_mb']:>8.0f} "
                f"{a['map_memory_mb']:>8.1f} {a['nft_set_load_s']:>8.2f}")
        if reads:
            line += (f" {a['status_s']:>8.2f} {a['scrape_s']['all']:>8.2f} "
                     f"{a['scrape_s']['top:100']:>8.2f}")
        out.append(line)
    return "\n".join(out)


LIMIT_COLOURS = {"no filter (closed port)": "grey", BARE_XDP: "tab:olive", BARE_TC: "tab:cyan"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rule_axis(ax, ns: list[int]) -> None:
    """A log axis of rule counts, labelled at the counts measured."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(ns, [f"{n:,}" for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(ns) == 1:
        ax.set_xlim(ns[0] / 3, ns[0] * 3)


def plot(result: dict, mix: str, flood: str, ns: list[int], path: Path) -> None:
    plt = _pyplot()
    rows = result["throughput"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    names = dict.fromkeys(r["system"] for r in rows if r["flood"] == flood and r["mix"] in (
        mix, None))
    for name in names:
        if name == CEILING:
            continue
        if any(r["system"] == name and r["mix"] is None for r in rows):
            value = _at(rows, name, 0, mix, flood)
            if value is not None:
                ax.axhline(value / 1e6, linestyle=":", linewidth=1.2, label=name,
                           color=LIMIT_COLOURS.get(name, "grey"))
            continue
        points = [(n, _at(rows, name, n, mix, flood)) for n in ns]
        points = [(n, v / 1e6) for n, v in points if v is not None]
        if not points:
            continue
        style = "-o" if name.startswith("netctl") else "--s"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name,
                linewidth=2.2 if name.startswith("netctl") else 1.2)
    _rule_axis(ax, ns)
    ax.set_yscale("log")
    ax.set_xlabel("rules (only the last matches the flood)")
    ax.set_ylabel("packets judged, Mpps (log)")
    ax.set_title(f"{mix} mix, {FLOOD_TITLES[flood]}: 60-byte UDP over veth, one run",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_apply(result: dict, path: Path) -> None:
    """Apply time against N: netctl cold, warm and one rule changed, and `nft -f` of the
    same rules as an interval set; one line style per mix."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    series = (("cold_s", "netctl cold", "C0"), ("warm_s", "netctl warm (same policy)", "C1"),
              ("one_rule_s", "netctl one rule changed", "C2"),
              ("nft_set_load_s", "nft -f (interval set)", "C3"))
    for mix, style in zip(MIXES, ("-o", "--s"), strict=True):
        applies = sorted((a for a in result["apply"] if a["mix"] == mix),
                         key=lambda a: a["rules"])
        if not applies:
            continue
        for key, label, color in series:
            ax.plot([a["rules"] for a in applies], [a[key] for a in applies], style,
                    color=color, label=f"{label}, {mix} mix")
    _rule_axis(ax, sorted({a["rules"] for a in result["apply"]}))
    ax.set_yscale("log")
    ax.set_xlabel("rules")
    ax.set_ylabel("seconds (log)")
    ax.set_title("Apply: netctl (separate processes) against nft -f of the same rules",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine() -> dict:
    jit = Path("/proc/sys/net/core/bpf_jit_enable")
    import subprocess

    git = subprocess.run(["git", "-C", str(RESULTS.parent.parent), "describe", "--always",
                          "--dirty"], capture_output=True, text=True, check=False)
    return {"kernel": platform.release(), "cpus": os.cpu_count(),
            "commit": git.stdout.strip() or None,
            "bpf_jit_enable": jit.read_text().strip() if jit.exists() else None,
            "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def running_generators(proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command line) of every trafgen on this machine.  A flood left behind (its
    workers outlive a parent killed hard) takes a CPU, and a bench beside it measures
    both."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:   # gone meanwhile
            continue
        if argv and Path(argv[0].decode(errors="replace")).name == "trafgen":
            found.append((int(entry.name), " ".join(a.decode(errors="replace")
                                                    for a in argv if a)))
    return sorted(found)


def _exit_on_signal() -> None:
    """SIGTERM and SIGHUP end the bench as Ctrl-C does: through every ``finally``, so each
    flood's process group is stopped and each namespace removed."""
    import signal

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="4 to 5 minutes")
    group.add_argument("--smoke", action="store_true", help="the harness works (no figures)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, BPF programs, nftables)", file=sys.stderr)
        return 77
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[mode]
    left = running_generators()
    if left:
        print("bench: a traffic generator is running already, and would share the CPUs with "
              "the bench; stop it first:\n" + "\n".join(f"  {pid} {cmd}" for pid, cmd in left),
              file=sys.stderr)
        return 1
    _exit_on_signal()

    def say(text: str) -> None:
        print(text, flush=True)

    started = time.monotonic()

    def section(title: str) -> None:
        say(f"bench ({mode}, {time.monotonic() - started:.0f} s): {title}")

    section("per-packet cost")
    cost_rows = costs.per_packet(cfg["cost_ns"] or cfg["ns"], repeat=cfg["repeat"])
    section("throughput")
    through = throughput(cfg["matrix"], cfg["seconds"], cfg["warmup"], say)
    section("apply costs")
    apply_rows = [row for mix in MIXES for row in costs.apply_costs(cfg["apply_ns"], mix)]
    section(f"sets ({cfg['set_n']:,} prefixes)")
    sets_result = sets.run(cfg["set_n"], cfg["seconds"], cfg["warmup"], say)
    section("forwarding")
    forward_rows = forwarding.run(cfg["forward_n"], cfg["seconds"], say)
    section("tracers")
    tracer_result = tracers.run(cfg["tracer_seconds"], cfg["tracer_rounds"], say,
                                cfg["event_rates"])
    section("fleet rollout")
    from bench import fleet

    fleet_result = fleet.run(5 if mode == "smoke" else 50, 2 if mode == "smoke" else 3, say)
    args.out.mkdir(parents=True, exist_ok=True)
    plots = {f"{mix}-{flood}": f"throughput-{mode}-{mix}-{flood}.png"
             for mix, flood, _ in cfg["matrix"]}
    plots["apply"] = f"apply-{mode}.png"
    result = {"mode": mode, "machine": machine(), "ns": cfg["ns"],
              "matrix": [{"mix": mix, "flood": flood, "ns": ns}
                         for mix, flood, ns in cfg["matrix"]],
              "seconds": cfg["seconds"], "warmup": cfg["warmup"],
              "floods": {"fixed": {"src": FLOOD_SRC, "last_rule": f"{FLOOD_SRC}/32"},
                         "random": {"src": RANDOM_SRC_NET, "last_rule": RANDOM_SRC_NET}},
              "throughput": through, "per_packet": cost_rows, "apply": apply_rows,
              "sets": sets_result, "forwarding": forward_rows, "tracers": tracer_result,
              "fleet": fleet_result, "plots": plots}
    result["targets"] = targets(result)
    result["elapsed_s"] = time.monotonic() - started
    for mix, flood, ns in cfg["matrix"]:
        plot(result, mix, flood, ns, args.out / plots[f"{mix}-{flood}"])
    plot_apply(result, args.out / plots["apply"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"{stamp}-{mode}.json", f"latest-{mode}.json"):
        (args.out / name).write_text(json.dumps(result, indent=1))
    say("")
    say(table(result))
    say("")
    say(sets.table(sets_result))
    say("")
    say(forwarding.table(forward_rows))
    say("")
    say(tracers.table(tracer_result))
    say("")
    say(fleet.table(fleet_result))
    say("")
    say(targets_table(result))
    if mode == "full" and args.out == RESULTS:
        from bench import report

        for path in report.write(result, args.out):
            say(f"bench: wrote {path.relative_to(report.REPO)}")
    say(f"\nresults: {args.out}/latest-{mode}.json and the plots "
        f"{', '.join(plots.values())} ({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
