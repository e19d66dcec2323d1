"""The sets section of `make bench`: one rule on a named set of N IPv4 prefixes (a million in
the full run), on the wire and in the controller.

Wire rate: the fixed flood's source is one element of the set (FLOOD_SRC/32), so the set rule
is what drops the flood; netctl with its default hook and forced to XDP against the bare tc
and XDP drops, and against nftables holding the same prefixes in an interval set with one
rule (``ip saddr @blk``).

Apply, each `netctl` a separate process in a fresh namespace (bench/costs.py): cold (programs
built, a million prefixes written), warm (the same policy again), 1% of the set file's
prefixes replaced and applied again (timed to its exit and, by a watcher polling the live
``active`` word, from the process's start to the flip), `netctl set add` of one prefix, the
peak RSS of those processes, and `nft -f` of the same set in the same namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import costs, harness, systems
from bench.rulesets import FLOOD_SRC, nft_prefix_set

SEED = 20261204
SET_NAME = "blk"
RULE = "drop-set"
# The /16 the flood's source and destination live in: no block is drawn from it, so no
# element but FLOOD_SRC/32 covers the flood's source.
_FLOOD_NET = ipaddress.ip_network(f"{FLOOD_SRC}/16", strict=False)

# Targets of the issue (seconds, MB).
APPLY_TARGETS = {"cold_s": 3.0, "warm_s": 1.0, "change_flip_s": 0.3, "peak_rss_mb": 300.0}


def label(n: int) -> str:
    """The mix name of a set of ``n`` prefixes in tables: set1M, set100k, set1k."""
    for unit, div in (("M", 1_000_000), ("k", 1000)):
        if n >= div and n % div == 0:
            return f"set{n // div}{unit}"
    return f"set{n}"


def _draw(seed: int = SEED) -> Iterator[tuple[int, int]]:
    """Endless disjoint IPv4 prefixes ``(prefix length, network)``, none in _FLOOD_NET, in
    the shapes of published blocklists: mostly /24 and /32, some /25 to /31 and /16 to /23.
    Each /16 (drawn in a random order from 1.0.0.0 to 223.255.255.255) is used by one
    shape: the whole /16; a few /17 to /23 in it; or a few /24 slots, each a /24 element or
    one /24 holding a few /32s (or /25 to /31s).  So no two prefixes overlap."""
    rng = random.Random(seed)
    blocks = list(range(1 << 8, 224 << 8))
    rng.shuffle(blocks)
    flood16 = int(_FLOOD_NET.network_address) >> 16
    for block in blocks:
        if block == flood16:
            continue
        base = block << 16
        roll = rng.random()
        if roll < 0.005:
            yield 16, base
        elif roll < 0.03:
            plen = rng.randint(17, 23)
            for sub in rng.sample(range(1 << (plen - 16)), rng.randint(1, 1 << (plen - 17))):
                yield plen, base | sub << (32 - plen)
        else:
            for slot in rng.sample(range(256), rng.randint(1, 64)):
                net24 = base | slot << 8
                kind = rng.random()
                if kind < 0.5:
                    yield 24, net24
                elif kind < 0.92:
                    for host in rng.sample(range(256), rng.randint(1, 4)):
                        yield 32, net24 | host
                else:
                    plen = rng.randint(25, 31)
                    room = 1 << (plen - 24)
                    for sub in rng.sample(range(room), rng.randint(1, min(4, room))):
                        yield plen, net24 | sub << (32 - plen)
    raise ValueError("out of address space")


def _text(item: tuple[int, int]) -> str:
    plen, net = item
    return f"{net >> 24}.{net >> 16 & 255}.{net >> 8 & 255}.{net & 255}/{plen}"


def prefixes(n: int, extra: int = 0, seed: int = SEED) -> tuple[list[str], list[str]]:
    """``n`` distinct disjoint IPv4 prefixes, one of them FLOOD_SRC/32 (in the middle), and
    ``extra`` more disjoint from them all (for changes); deterministic."""
    if n < 1:
        raise ValueError("a set of at least one prefix (the flood's source)")
    draw = _draw(seed)
    out = [_text(next(draw)) for _ in range(n - 1)]
    out.insert((n - 1) // 2, f"{FLOOD_SRC}/32")
    return out, [_text(next(draw)) for _ in range(extra)]


def changed(items: list[str], fresh: list[str], seed: int = SEED) -> list[str]:
    """``items`` with ``len(fresh)`` of them (never the flood's source) replaced by ``fresh``
    (appended), the order otherwise kept."""
    rng = random.Random(seed + 1)
    flood = f"{FLOOD_SRC}/32"
    candidates = [i for i in rng.sample(range(len(items)), min(len(items), 2 * len(fresh) + 1))
                  if items[i] != flood][:len(fresh)]
    gone = set(candidates)
    return [p for i, p in enumerate(items) if i not in gone] + fresh


def write_set_file(path: Path, items: list[str]) -> None:
    with open(path, "w") as f:
        f.write(f"# bench blocklist: {len(items)} prefixes\n")
        f.write("\n".join(items))
        f.write("\n")


def policy(set_file: Path) -> str:
    """An unrelated accept rule first, then the set rule; defaults accept."""
    return ("version: 1\n"
            "defaults: {ingress: accept, egress: accept}\n"
            f"sets:\n  {SET_NAME}: {{file: {set_file}}}\n"
            "rules:\n"
            "  - {name: keep-ssh, action: accept, proto: tcp, dport: 22}\n"
            f"  - {{name: {RULE}, action: drop, src: \"@{SET_NAME}\"}}\n")


# Polls the live datapath's `active` word in the DUT namespace, and prints the moment
# (time.monotonic(), one clock for every namespace) it changes; "none" when its standard
# input closes (the apply is over) or the time limit passes without a flip (an apply that
# rebuilt flips another build's word).
_FLIP_WATCHER = """
import select, sys, time
from netctl.datapath.live import live_state, open_live
from netctl.datapath.netns import Namespace
state, _ = live_state(Namespace.current())
live, why = open_live(Namespace.current(), state)
before = live.active
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[1])
done = False
while time.monotonic() < deadline:
    if live.active != before:
        print(time.monotonic(), flush=True)
        break
    if done:
        print("none", flush=True)
        break
    done = bool(select.select([sys.stdin], [], [], 0.0005)[0])
else:
    print("none", flush=True)
"""


@contextlib.contextmanager
def flip_watcher(ns: str, limit: float = 600.0) -> Iterator[list[float | None]]:
    """Yields a list that holds, once the block ends, the time.monotonic() of the flip of
    the live generation in ``ns`` during the block (None: none seen)."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _FLIP_WATCHER,
                             str(limit)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the flip watcher did not start")
        got: list[float | None] = []
        yield got
        proc.stdin.close()
        line = proc.stdout.readline().strip()
        got.append(None if line in ("", "none") else float(line))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def throughput(n: int, items: list[str], set_file: Path, seconds: float, warmup: float,
               say) -> list[dict]:
    """The set rule's wire rate: netctl's two hooks on one topology, nftables' interval set
    and the bare drops each on their own (a bare program stays attached until its topology
    goes)."""
    from bench import run

    text = policy(set_file)
    mix = label(n)
    groups = [
        [systems.Netctl(None, run.DEFAULT, policy=text, rule=RULE),
         systems.Netctl("native", run.XDP, policy=text, rule=RULE)],
        [systems.Nft("set", elements=items)],
        [systems.BareDrop("tc")], [systems.BareDrop("xdp")]]
    rows = []
    for group in groups:
        steps = [systems.Step(system, [], "fixed", mix) for system in group]
        for row in systems.measure_steps(steps, seconds, warmup, tag="s"):
            row.update(rules=n, set_size=n)
            pps = f"{row['pps'] / 1e6:6.3f} Mpps" if "pps" in row else \
                f"failed: {row.get('error', '')[:200]}"
            say(f"  fixed  {mix:<7} {row['system']:<38} {pps}")
            rows.append(row)
    return rows


def apply_costs(n: int, items: list[str], fresh: list[str], add: str, tmp: Path) -> dict:
    """Cold, warm, 1% changed, `netctl set add`, peak RSS; then `nft -f` of the same set."""
    set_file = tmp / "blk.txt"
    write_set_file(set_file, items)
    path = tmp / "sets.yaml"
    path.write_text(policy(set_file))
    out: dict = {"size": n, "changed": len(fresh)}
    with harness.topology("a") as topo:
        peaks = []
        try:
            took, cold, peak, _ = costs.timed_netctl(topo.dut, "apply", str(path), "--dev",
                                                     topo.dut_if)
            out.update(cold_s=took, cold_entries=cold["entries"], cold_reload=cold["reload"])
            peaks.append(peak)
            took, warm, peak, _ = costs.timed_netctl(topo.dut, "apply", str(path), "--dev",
                                                     topo.dut_if)
            out.update(warm_s=took, warm_unchanged=warm["unchanged"])
            peaks.append(peak)
            write_set_file(set_file, changed(items, fresh))
            with flip_watcher(topo.dut) as flipped:
                took, one, peak, started = costs.timed_netctl(
                    topo.dut, "apply", str(path), "--dev", topo.dut_if)
            out.update(change_s=took, change_entries=one["entries"],
                       change_reload=one["reload"],
                       change_flip_s=flipped[0] - started if flipped[0] else None)
            peaks.append(peak)
            took, added, peak, _ = costs.timed_netctl(topo.dut, "set", "add", SET_NAME, add)
            out.update(set_add_s=took, set_add_done=added.get("done"))
            peaks.append(peak)
            out["peak_rss_mb"] = max(peaks) / 2**20
        finally:
            harness.sh(*harness.NETCTL, "detach", "--all", ns=topo.dut, check=False)
        started = time.monotonic()
        harness.sh("nft", "-f", "-", ns=topo.dut, stdin=nft_prefix_set(items, topo.dut_if),
                   timeout=1800)
        out["nft_set_load_s"] = time.monotonic() - started
    out["targets"] = {key: {"at_most": limit, "value": out.get(key),
                            "met": out[key] <= limit if out.get(key) is not None else None}
                      for key, limit in APPLY_TARGETS.items()}
    return out


def run(n: int, seconds: float, warmup: float, say) -> dict:
    """The sets section at ``n`` prefixes."""
    started = time.monotonic()
    items, fresh = prefixes(n, extra=max(1, n // 100) + 1)
    add = fresh.pop()
    say(f"  {label(n)}: {n:,} prefixes drawn in {time.monotonic() - started:.1f} s")
    tmp = Path(tempfile.mkdtemp(prefix="nctl-sets-"))
    try:
        set_file = tmp / "wire.txt"
        write_set_file(set_file, items)
        rows = throughput(n, items, set_file, seconds, warmup, say)
        applied = apply_costs(n, items, fresh, add, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"size": n, "mix": label(n), "set_add_prefix": add, "throughput": rows,
            "apply": applied}


def table(sets: dict) -> str:
    from bench import run as bench_run

    rows = sets["throughput"]
    by = {r["system"]: r.get("pps") for r in rows}
    out = [f"Sets: one rule on a set of {sets['size']:,} IPv4 prefixes "
           f"({sets['mix']}), fixed flood, Mpps judged"]
    for name, pps in by.items():
        out.append(f"{name:<48}{pps / 1e6:>10.3f}" if pps else f"{name:<48}{'failed':>10}")

    def ratio(a: str, b: str) -> str:
        x, y = by.get(a), by.get(b)
        return f"{x / y:>10.2f}" if x and y else f"{'-':>10}"

    for mine, other in ((bench_run.DEFAULT, bench_run.BARE_TC),
                        (bench_run.DEFAULT, bench_run.NFT_SET),
                        (bench_run.XDP, bench_run.BARE_XDP)):
        out.append(f"{mine + ' vs ' + other:<48}" + ratio(mine, other))
    a = sets["apply"]

    def cell(key: str, fmt: str = ".2f") -> str:
        v = a.get(key)
        return f"{v:>{10}{fmt}}" if v is not None else f"{'-':>10}"

    out += ["", f"Sets apply ({a['size']:,} prefixes; netctl as separate processes; "
            f"1% = {a['changed']:,} prefixes replaced in the file)",
            f"{'cold s':>10}{'warm s':>10}{'1% s':>10}{'1% flip s':>10}{'set add s':>10}"
            f"{'peak MB':>10}{'nft -f s':>10}",
            cell("cold_s") + cell("warm_s") + cell("change_s") + cell("change_flip_s", ".3f")
            + cell("set_add_s") + cell("peak_rss_mb", ".0f") + cell("nft_set_load_s")]
    names = {"cold_s": "cold apply", "warm_s": "warm apply",
             "change_flip_s": "1% change, process start to flip", "peak_rss_mb": "peak RSS"}
    out.append("Sets apply against the targets")
    for key, t in a["targets"].items():
        unit = "MB" if key.endswith("mb") else "s"
        value = "-" if t["value"] is None else f"{t['value']:.3f} {unit}"
        met = "-" if t["met"] is None else "yes" if t["met"] else "no"
        limit = f"<= {t['at_most']:g} {unit}"
        out.append(f"  {names[key]:<34} {limit:<10} {value:>12}  {met}")
    return "\n".join(out)
