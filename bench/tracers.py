"""What watching costs: TCP throughput with every tracer on against off, and the event rate
`netctl monitor` keeps up with.

    python -m bench.tracers            # 3 s windows, 7 rounds (part of make bench)
    python -m bench.tracers --quick    # 2 s windows, 3 rounds

Throughput: iperf3 from a generator namespace to the DUT over a veth pair, with a netctl
policy live on the DUT in both cases.  "On" is `netctl monitor --type
policy,drop,retrans,cong,socket -o json` running in the DUT (every kernel tracer attached,
its events formatted and written); "off" is no monitor.  Rounds alternate off and on, so
drift of a shared machine falls on both; the ratio is of the medians.

Event rate: a policy that drops and logs one UDP port with the default `log_sample: 1`
(every event), trafgen at stepped rates (evenly spaced packets from one worker; it reaches
what it reaches, so the table shows the drops per second achieved), then a flood from every
CPU, the monitor writing JSON to /dev/null.  For each
rate: events the monitor showed per second, and what the ring buffer could not take (counted
by the datapath, never hidden).  The sustained rate is the highest step with no loss.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.harness import (
    CPUS,
    FLOOD_DPORT,
    FLOOD_DST,
    NETCTL,
    flood_frame,
    sh,
    stop_group,
    topology,
)

POLICY = f"""
version: 1
defaults: {{ingress: accept, egress: accept}}
rules:
  - {{name: iperf, action: accept, proto: tcp, dport: 5201}}
  - {{name: flood-drop, action: drop, proto: udp, dport: {FLOOD_DPORT}, log: true}}
"""
ALL_TYPES = "policy,drop,retrans,cong,socket"
RATES = (10_000, 20_000, 40_000, 80_000, 0)   # packets/s asked for; 0: flood


def _apply(topo, tmp: str) -> None:
    path = os.path.join(tmp, "policy.yaml")
    with open(path, "w") as f:
        f.write(POLICY)
    sh(*NETCTL, "apply", path, "--dev", topo.dut_if, ns=topo.dut)


class Monitor:
    """`netctl monitor` in the DUT, writing to /dev/null; ready once its header is out."""

    def __init__(self, topo, types: str = ALL_TYPES):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.dut, *NETCTL, "monitor", "--type", types, "-o",
             "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        first = self.proc.stdout.readline()
        if not first.startswith('{"type": "start"'):
            stop_group(self.proc)
            raise RuntimeError(f"monitor did not start: {first}{self.proc.stderr.read()}")
        self.sources = json.loads(first)["sources"]
        # From here on the output goes nowhere, as fast as the monitor writes it.
        self._sink = subprocess.Popen(["cat"], stdin=self.proc.stdout,
                                      stdout=subprocess.DEVNULL)

    def stop(self) -> str:
        """Stop it (SIGINT, as Ctrl-C) and return its closing line."""
        import signal

        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            stop_group(self.proc)
            _, err = self.proc.communicate()
        self._sink.wait(timeout=10)
        # The summary line, wherever it is among what the monitor wrote to stderr (a warning
        # after it made the last line something else: a run read 0 events shown).
        lines = err.strip().splitlines()
        return next((line for line in reversed(lines) if " events shown" in line),
                    "\n".join(lines[-5:]))


def iperf(topo, seconds: float) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", topo.dut, "iperf3", "-s", "-1", "-B",
                               FLOOD_DST], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(50):   # the server is listening
            if f"{FLOOD_DST}:5201" in sh("ss", "-ltn", ns=topo.dut).stdout:
                break
            time.sleep(0.1)
        out = sh("iperf3", "-c", FLOOD_DST, "-t", f"{seconds:g}", "-J", ns=topo.gen,
                 timeout=seconds + 60).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]
    finally:
        stop_group(server)


def overhead(topo, seconds: float, rounds: int, say, types: str = ALL_TYPES) -> dict:
    off, on = [], []
    sources: list[str] = []
    for i in range(rounds):
        off.append(iperf(topo, seconds))
        mon = Monitor(topo, types)
        sources = mon.sources
        time.sleep(1.0)   # the monitor's start-up work (compiling, symbols) is over
        try:
            on.append(iperf(topo, seconds))
        finally:
            mon.stop()
        say(f"  round {i + 1}: off {off[-1] / 1e9:.2f} Gbit/s, on {on[-1] / 1e9:.2f} Gbit/s")
    return {"off_bps": off, "on_bps": on, "off_median": statistics.median(off),
            "on_median": statistics.median(on),
            "ratio": statistics.median(on) / statistics.median(off), "sources": sources}


def _trafgen(topo, rate: int, seconds: float) -> subprocess.Popen:
    frame = flood_frame(topo.dut_mac)
    with tempfile.NamedTemporaryFile("w", suffix=".trafgen", delete=False) as f:
        f.write("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n")
        conf = f.name
    # A gap between packets (one worker) sends evenly; trafgen's --rate sends in bursts.
    # Rate 0: a flood from every CPU, to show what a full ring buffer does.
    pace = ["--cpus", "1", "--gap", f"{10**9 // rate}ns"] if rate else ["--cpus", str(CPUS)]
    proc = subprocess.Popen(["ip", "netns", "exec", topo.gen, "timeout", "-s", "INT",
                             f"{seconds:.1f}", "trafgen", "--dev", topo.gen_if, "--conf",
                             conf, *pace, "--no-sock-mem"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    proc.conf = conf
    return proc


def _stats(topo) -> dict:
    report = json.loads(sh(*NETCTL, "status", "-o", "json", ns=topo.dut, check=False).stdout)
    drops = {d["reason"]: d["packets"] for d in report["drops"]}
    return {"events": report["events"], "dropped": drops.get("policy_rule", 0)}


def event_rate(topo, seconds: float, say, rates=RATES) -> list[dict]:
    rows = []
    for rate in rates:
        mon = Monitor(topo, "policy")
        try:
            before = _stats(topo)
            gen = _trafgen(topo, rate, seconds)
            try:
                gen.wait(timeout=seconds + 30)
            finally:
                stop_group(gen)
                os.unlink(gen.conf)
            time.sleep(0.5)   # let the monitor drain what is in the ring
            after = _stats(topo)
        finally:
            closing = mon.stop()
        # No summary line: the row says so (with what the monitor wrote) rather than 0.
        shown = (int(closing.split(" events shown")[0].rsplit(" ", 1)[-1])
                 if " events shown" in closing else None)
        dropped = after["dropped"] - before["dropped"]
        lost = after["events"]["lost"] - before["events"]["lost"]
        row = {"offered_pps": rate, "dropped_pps": dropped / seconds, "events": dropped,
               "shown": shown, "shown_per_s": None if shown is None else shown / seconds,
               "lost": lost}
        if shown is None:
            row["error"] = f"netctl monitor wrote no summary: {closing}"
        rows.append(row)
        say(f"  {rate or 'flood':>8} pps asked: {row['dropped_pps']:>9.0f} drops/s, "
            + (f"{row['shown_per_s']:>9.0f} events/s shown, {lost} lost" if shown is not None
               else row["error"]))
    return rows


def run(seconds: float = 3.0, rounds: int = 7, say=print, rates=RATES) -> dict:
    with topology("t") as topo, tempfile.TemporaryDirectory() as tmp:
        _apply(topo, tmp)
        try:
            say("bench: tracer overhead (iperf3, all tracers on vs off)")
            over = overhead(topo, seconds, rounds, say)
            say("bench: events per second through netctl monitor")
            rows = event_rate(topo, seconds, say, rates)
        finally:
            sh(*NETCTL, "detach", "--all", ns=topo.dut, check=False)
    lossless = [r["shown_per_s"] for r in rows if r["lost"] == 0 and r["shown"] is not None]
    return {"overhead": over, "event_rate": rows,
            "sustained_events_per_s": max(lossless) if lossless else 0.0}


def table(result: dict) -> str:
    o = result["overhead"]
    lines = ["tracer overhead (TCP, iperf3 between namespaces, medians of "
             f"{len(o['off_bps'])} alternating rounds)",
             f"  {'tracers off':<34} {o['off_median'] / 1e9:>8.2f} Gbit/s",
             f"  {'all tracers on + netctl monitor':<34} {o['on_median'] / 1e9:>8.2f} Gbit/s",
             f"  {'ratio on/off':<34} {o['ratio']:>8.3f}   (target >= 0.9)",
             "", "netctl monitor event rate (log_sample 1: every event)",
             f"  {'ASKED PPS':>12} {'EVENTS/S':>10} {'SHOWN/S':>10} {'LOST':>9}"]
    for r in result["event_rate"]:
        shown = (f"{r['shown_per_s']:>10.0f}" if r.get("shown_per_s") is not None
                 else f"{'no summary':>10}")
        lines.append(f"  {r['offered_pps'] or 'flood':>12} {r['dropped_pps']:>10.0f} "
                     f"{shown} {r['lost']:>9}")
    lines.append(f"  sustained without loss: {result['sustained_events_per_s']:.0f} events/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s windows, 3 rounds")
    parser.add_argument("--per-kind", action="store_true",
                        help="the overhead of each kind of event alone (5 rounds each)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.tracers needs root (namespaces, BPF)", file=sys.stderr)
        return 1
    if args.per_kind:
        say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        print("tracer overhead per kind (TCP, iperf3, medians of 5 alternating rounds)")
        with topology("t") as topo, tempfile.TemporaryDirectory() as tmp:
            _apply(topo, tmp)
            try:
                for kind in ALL_TYPES.split(","):
                    say(f"bench: {kind}")
                    r = overhead(topo, 3.0, 5, say, kind)
                    print(f"  {kind:<8} off {r['off_median'] / 1e9:6.2f} Gbit/s, on "
                          f"{r['on_median'] / 1e9:6.2f} Gbit/s, ratio {r['ratio']:.3f}",
                          flush=True)
            finally:
                sh(*NETCTL, "detach", "--all", ns=topo.dut, check=False)
        return 0
    result = run(2.0 if args.quick else 3.0, 3 if args.quick else 7,
                 say=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
