"""The cost budget: how much work the datapath does per packet, counted, never timed.

    python -m bench.budget            # measure, print the table, check it against the budget
    python -m bench.budget --write    # record what was measured as the budget
    python -m bench.budget --json     # the measurement as JSON

A check that fails when per-packet work grows, whatever the machine's speed or load (CI
runs it: tests/bpf/test_budget.py, `make budget`).  What it measures:

- per program (the six roles): the instructions left after the verifier (xlated), the JIT's
  bytes, the verifier's processed instructions, and the calls left in the xlated code by
  target (the verifier inlines array lookups; every call that remains is a real one);
- per packet class (CLASSES: accepted and dropped by a rule, defaults, malformed, non-IP,
  NDP, connection tracking, the flow cache, forwarding, the L3 variants, tc's copy of the
  header window), through BPF_PROG_TEST_RUN on a build with -DNETCTL_COUNT_CALLS
  (bpf/include/netctl_perf.h): every map operation and helper call the packet made, by kind,
  and which header path tc took;
- that the counting compiles to nothing without the flag: the programs' tags equal those of
  the same source with netctl_perf.h and its one-line calls taken out.

Over budget (a failure): a packet class making more calls of a kind than its budget, or
taking another path or outcome; a program more than ``tolerance`` (3 %) above its budgeted
size or verifier count, or with more call sites of a target.  Sizes and call sites depend
on the kernel and on bcc's LLVM, so they are compared only when the budget was written with
the same kernel version (its build suffix aside) and bcc (else only the per-packet counts
are, and the printout says so).  Anything well under budget is listed too: --write then
records the tighter figures.

Changing the budget is a reviewed decision: a change that adds work on purpose runs
--write and says in its commit message what it added and why (docs/performance.md, "The
cost budget").
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.budget_classes import (
    CLASSES,
    COPIED,
    INLINED,
    NEXTHOP,
    PERF_HEADER,
    POLICIES,
    call_kinds,
    frames,
)

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ROOT / "bench" / "budget.json"
TOLERANCE = 0.03
COUNT_CALLS = "-DNETCTL_COUNT_CALLS"
FORCE_COPY = "-DNETCTL_TEST_FORCE_COPY"
ROLES = ("xdp", "tc_ingress", "tc_egress", "xdp_l3", "tc_ingress_l3", "tc_egress_l3")
# The programs' sizes are budgeted twice: as built for most plans, and (roles with this
# suffix) as built for plans with a slot keyed by the destination port (-DNETCTL_DIRECT_PORT).
PORT_KEYED = "+port"
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
TC_ACT_SHOT, TC_ACT_REDIRECT, TC_ACT_UNSPEC = 2, 7, 0xFFFFFFFF


# ---- programs: size, verifier work, calls left in the code -----------------------------


def _kernel_symbols() -> dict[int, str]:
    """Kernel text symbols by address; empty when /proc/kallsyms hides the addresses
    (kernel.kptr_restrict=2), and then call sites are not resolved."""
    out: dict[int, str] = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            addr, kind, name = line.split()[:3]
            if kind in "tTwW" and int(addr, 16):
                out.setdefault(int(addr, 16), name)
    return out if "__bpf_call_base" in out.values() else {}


def program_figures(fd: int, symbols: dict[int, str]) -> dict:
    from netctl.kernel import insns

    size = insns.prog_size(fd)
    base = next((a for a, n in symbols.items() if n == "__bpf_call_base"), None)
    sites: dict[str, int] = {}
    code = size.xlated
    for at in range(0, len(code), 8):
        op, regs, _, imm = struct.unpack_from("<BBhi", code, at)
        if op == 0x85:   # BPF_JMP | BPF_CALL
            src = regs >> 4
            target = (symbols.get(base + imm, f"helper at {imm:+#x}") if src == 0
                      else "bpf-to-bpf" if src == 1 else "kfunc")
            sites[target] = sites.get(target, 0) + 1
    return {"xlated_insns": len(code) // 8, "jited_bytes": size.jited_bytes,
            "verified_insns": size.verified_insns,
            "call_sites": dict(sorted(sites.items())) if base is not None else None}


@contextlib.contextmanager
def _uninstrumented() -> Iterator[None]:
    """Builds in this block compile the source without netctl_perf.h and without its
    one-line calls (what the code would be had they never been added)."""
    import tempfile

    from netctl.datapath import build

    original = build.translation_unit
    header = f'#line 1 "{PERF_HEADER.resolve()}"\n'
    call = re.compile(r"^\s*netctl_called(_if)?\(.*\);\s*$")

    def stripped(entry: Path) -> str:
        text = original(entry)
        start = text.index(header)
        end = text.index("#line ", start + len(header))
        text = text[:start] + text[end:]
        used.write_text("yes")
        return "".join(line for line in text.splitlines(keepends=True)
                       if not call.match(line))

    with tempfile.TemporaryDirectory() as scratch:
        # The compiler runs in a child process: it says through a file that it compiled
        # this text, so that a loader that stops calling translation_unit cannot turn the
        # comparison into one of the instrumented source with itself.
        used = Path(scratch) / "used"
        build.translation_unit = stripped   # read at call time by the (forked) compiler
        try:
            yield
        finally:
            build.translation_unit = original
        if not used.exists():
            raise RuntimeError("the build did not compile the source without the counting "
                               "lines (netctl.datapath.build.translation_unit not used)")


# ---- packets ------------------------------------------------------------------------------


class _Counting:
    """A sandbox built with -DNETCTL_COUNT_CALLS, its counting map, and the policy loaded."""

    def __init__(self, extra: tuple[str, ...]):
        from netctl.datapath.sandbox import Sandbox
        from netctl.kernel import bpfsys
        from netctl.policy.plan import Limits

        # small rule arrays: reading every counter after each packet stays cheap (calls per
        # packet do not depend on capacities)
        self.limits = Limits(rules=16)
        self.box = Sandbox(self.limits, (COUNT_CALLS, *extra))
        self.rule_stride = self.box.dp.constants["NETCTL_RULES_ENTRIES"]
        self.policy: str | None = None
        self.rule_names: list[str] = []
        self.calls = None
        for map_id in bpfsys.prog_info(self.box.dp.programs["xdp"]).map_ids:
            m = bpfsys.Map(bpfsys.map_fd_by_id(map_id))
            if m.info.name == "netctl_calls":
                self.calls = m
                break
            m.close()
        if self.calls is None:
            self.close()
            raise RuntimeError("the counting build has no netctl_calls map")

    def close(self) -> None:
        if self.calls is not None:
            self.calls.close()
        self.box.close()

    def use(self, policy: str) -> None:
        from netctl import abi
        from netctl.policy.compile import compile_policy
        from netctl.policy.load import load_policy_text

        if policy != self.policy:
            loaded = load_policy_text(POLICIES[policy], "budget.yaml")
            self.box.load(compile_policy(loaded, self.limits))
            self.policy = policy
            self.rule_names = [r.name for r in loaded.rules]
        if policy in NEXTHOP:
            via = int(ipaddress.ip_address("10.1.0.2"))
            self.box.dp.write_nexthops(self.box.dp.active, [abi.pack_nexthop(
                1, 4, via, "02:00:00:00:00:aa", "02:00:00:00:00:bb", NEXTHOP[policy])])

    def reset(self) -> None:
        """No flow tracked or cached, no flow-cache statistics, nobody listening: each
        class starts from the same state."""
        from netctl import abi

        dp = self.box.dp
        self.box.clear_conntrack()
        cache = dp.maps["flow_cache"]
        cache.delete_many(list(cache.keys()))
        stat = dp.maps["flow_stat"]
        stat.update(abi.pack_u32(0), bytes(stat.value_size))
        dp.stop_listening()

    def totals(self) -> list[int]:
        blob = self.calls.read_array()
        size = self.calls.value_size
        return [sum(struct.unpack_from(f"<{size // 8}Q", blob, i * size))
                for i in range(len(blob) // size)]


def _stat_names() -> dict[int, str]:
    from netctl import abi

    names = {slot: reason.label for slot, reason in
             ((r.value, r) for r in abi.DropReason)}
    names.update({value: name[5:].lower() for name, value in vars(abi).items()
                  if name.startswith("STAT_") and isinstance(value, int)})
    for direction, d in enumerate(("ingress", "egress")):
        for action, a in enumerate(("accept", "drop")):
            names[abi.stat_default(direction, action)] = f"default_{d}_{a}"
    return names


def _outcome(box: _Counting, hook: str, retval: int, before) -> str:
    """What the packet did, in words: the program's verdict and every counter it moved
    (the deciding rule or default, and side counts: flows tracked, cache misses, events)."""
    from netctl import abi

    after = box.box.snapshot()
    names = _stat_names()
    moved = []
    for which, (old, new) in enumerate(zip(before, after, strict=True)):
        size = box.box.dp.maps["counters" if which == 0 else "stats"].value_size
        for i in range(len(new) // size):
            chunk = slice(i * size, (i + 1) * size)
            n = abi.sum_counters(new[chunk])[0] - abi.sum_counters(old[chunk])[0]
            if n:
                label = (f"rule {box.rule_names[i % box.rule_stride]}" if which == 0
                         else names.get(i, f"stat {i}"))
                moved.append(label + (f" x{n}" if n > 1 else ""))
    xdp = hook.startswith("xdp")
    verdict = {XDP_DROP if xdp else TC_ACT_SHOT: "drop",
               XDP_PASS if xdp else TC_ACT_UNSPEC: "accept",
               XDP_REDIRECT if xdp else TC_ACT_REDIRECT: "redirect"}.get(retval)
    return f"{verdict or retval}: {', '.join(moved) or 'no counter'}"


def measure_packets(box: _Counting, classes, frame_bytes: dict[str, bytes]) -> dict:
    """Each class on each of its hooks, from the same state: what one packet made."""
    from netctl.kernel import bpfsys

    kinds, markers = call_kinds()
    runs = next(slot for slot, name in markers.items() if name == "run")
    programs = box.box.dp.programs
    out = {}
    for cls in classes:
        for hook in cls.hooks:
            box.use(cls.policy)
            box.reset()
            if cls.listening:
                box.box.dp.listen(60)
            for pre_hook, pre_frame in cls.before:
                bpfsys.test_run(programs[hook if pre_hook == "*" else pre_hook],
                                frame_bytes[pre_frame])
            counters = box.box.snapshot()
            start = box.totals()
            result = bpfsys.test_run(programs[hook], frame_bytes[cls.frame])
            moved = [b - a for a, b in zip(start, box.totals(), strict=True)]
            outcome = _outcome(box, hook, result.retval, counters)
            if not outcome.startswith(f"{cls.verdict}:") or moved[runs] != 1:
                raise AssertionError(f"{cls.key(hook)}: expected {cls.verdict} in one run, "
                                     f"got {outcome} in {moved[runs]}")
            paths = [markers[s].removeprefix("tc_") for s in sorted(markers)
                     if moved[s] and s != runs]
            out[cls.key(hook)] = {
                "outcome": outcome,
                "path": ",".join(paths) or "-",
                "calls": {kinds[s]: moved[s] for s in sorted(kinds) if moved[s]},
            }
    return out


# ---- the measurement -----------------------------------------------------------------------


def measure(progress=lambda text: None) -> dict:
    """Everything the budget holds, measured now (root: BPF loads and test runs)."""
    import bcc

    from netctl.datapath.sandbox import Sandbox
    from netctl.errors import LoadError
    from netctl.kernel import bpfsys
    from netctl.policy.plan import Limits

    symbols = _kernel_symbols()
    out: dict = {"kernel": platform.release(), "bcc": bcc.__version__,
                 "programs": {}, "packets": {}, "tags": {}}
    progress("building the programs")
    with Sandbox(Limits()) as box:
        for role in ROLES:
            out["programs"][role] = program_figures(box.dp.programs[role], symbols)
            out["tags"][role] = bpfsys.prog_info(box.dp.programs[role]).tag
    progress("building them for plans with slots keyed by the destination port")
    with Sandbox(Limits(), direct_port=True) as box:
        for role in ROLES:
            out["programs"][role + PORT_KEYED] = program_figures(box.dp.programs[role], symbols)
    progress("building them without the counting lines")
    try:
        with _uninstrumented(), Sandbox(Limits()) as box:
            out["tags_without_counting"] = {role: bpfsys.prog_info(box.dp.programs[role]).tag
                                            for role in ROLES}
    except LoadError as exc:
        raise LoadError("the source without its netctl_called lines does not build: each "
                        f"must be a statement on a line of its own ({exc.args[0]})",
                        exc.log) from None
    frame_bytes = frames()
    for extra, copied in (((), False), ((FORCE_COPY,), True)):
        progress("building with " + " ".join((COUNT_CALLS, *extra)))
        box = _Counting(extra)
        try:
            out["packets"].update(measure_packets(
                box, [c for c in CLASSES if c.copied == copied], frame_bytes))
        finally:
            box.close()
    return out


# ---- the check -----------------------------------------------------------------------------


def _real(calls: dict[str, int]) -> int:
    return sum(n for kind, n in calls.items() if kind not in INLINED)


def _signed(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:+d} {kind}" for kind, n in counts.items())


def check(now: dict, budget: dict) -> tuple[list[str], list[str], list[str]]:
    """(over budget, well under budget, remarks); anything over budget fails."""
    over: list[str] = []
    under: list[str] = []
    remarks: list[str] = []
    tol = budget.get("tolerance", TOLERANCE)
    if now.get("tags") != now.get("tags_without_counting"):
        differ = [r for r in now.get("tags", {})
                  if now["tags"][r] != now.get("tags_without_counting", {}).get(r)]
        over.append(f"the counting lines change the programs built without "
                    f"{COUNT_CALLS} ({', '.join(differ)}): netctl_called must compile to "
                    "nothing")
    # The kernel's version, not its build: the same version built again (another local
    # suffix after the first "-") verifies and rewrites programs alike.
    same = [k for k in ("kernel", "bcc")
            if _version(budget.get(k)) == _version(now.get(k))]
    if len(same) < 2:
        remarks.append(f"budget written with kernel {budget.get('kernel')}, bcc "
                       f"{budget.get('bcc')}; this is kernel {now['kernel']}, bcc "
                       f"{now['bcc']}: program sizes and call sites not compared, only "
                       "calls per packet")
    else:
        for role, want in budget["programs"].items():
            got = now["programs"].get(role)
            if got is None:
                over.append(f"{role}: program not built")
                continue
            for key in ("xlated_insns", "jited_bytes", "verified_insns"):
                change = got[key] / want[key] - 1
                text = f"{role} {key}: {got[key]:,}, budget {want[key]:,} ({change:+.1%})"
                if got[key] > want[key] * (1 + tol):
                    over.append(text)
                elif got[key] < want[key] * (1 - tol):
                    under.append(text)
            if got["call_sites"] is None or want["call_sites"] is None:
                remarks.append(f"{role}: call sites not compared (/proc/kallsyms hid the "
                               "kernel's addresses)")
                continue
            for target, n in got["call_sites"].items():
                allowed = want["call_sites"].get(target, 0)
                if n > allowed:
                    over.append(f"{role}: {n} call sites of {target}, budget {allowed}")
            for target, allowed in want["call_sites"].items():
                if got["call_sites"].get(target, 0) < allowed:
                    under.append(f"{role}: {got['call_sites'].get(target, 0)} call sites of "
                                 f"{target}, budget {allowed}")
    for key, want in budget["packets"].items():
        got = now["packets"].get(key)
        if got is None:
            over.append(f"{key}: not measured (a class gone from bench/budget.py?)")
            continue
        kinds = sorted(set(got["calls"]) | set(want["calls"]))
        more = {k: got["calls"].get(k, 0) - want["calls"].get(k, 0) for k in kinds
                if got["calls"].get(k, 0) > want["calls"].get(k, 0)}
        fewer = {k: got["calls"].get(k, 0) - want["calls"].get(k, 0) for k in kinds
                 if got["calls"].get(k, 0) < want["calls"].get(k, 0)}
        total, allowed = sum(got["calls"].values()), sum(want["calls"].values())
        problems = []
        if more:
            problems.append(f"{total} calls per packet ({_real(got['calls'])} real), budget "
                            f"{allowed} ({_real(want['calls'])}): {_signed(more)}"
                            + (f", {_signed(fewer)}" if fewer else ""))
        if got["path"] != want["path"]:
            problems.append(f"header path {got['path']}, budget {want['path']}")
        if got["outcome"] != want["outcome"]:
            problems.append(f"did {got['outcome']!r}, budget {want['outcome']!r}"
                            + ("" if more else ": the class no longer measures what it says"))
        if problems:
            over.append(f"{key}: {'; '.join(problems)}")
        elif fewer:
            under.append(f"{key}: {total} calls per packet, budget {allowed}: "
                         f"{_signed(fewer)}")
    for key in now["packets"]:
        if key not in budget["packets"]:
            over.append(f"{key}: no budget for this class (--write records one)")
    return over, under, remarks


# ---- the printout -------------------------------------------------------------------------


def table(now: dict) -> str:
    same = now["tags"] == now["tags_without_counting"]
    lines = [f"kernel {now['kernel']}, bcc {now['bcc']}; program tags without "
             f"{COUNT_CALLS} {'equal' if same else 'DIFFER from'} those of the source "
             "without the counting lines", "",
             f"{'program':<18} {'xlated':>7} {'JIT bytes':>9} {'verified':>9}  call sites "
             "left in the code"]
    for role, p in now["programs"].items():
        sites = ("(not resolved: /proc/kallsyms hides addresses)" if p["call_sites"] is None
                 else ", ".join(f"{t} {n}" for t, n in sorted(p["call_sites"].items(),
                                                              key=lambda item: -item[1])))
        lines.append(f"{role:<18} {p['xlated_insns']:>7,} {p['jited_bytes']:>9,} "
                     f"{p['verified_insns']:>9,}  {sites}")
    rows = []
    for key, p in now["packets"].items():
        hook, label = key.split(" | ", 1)
        rows.append((hook, label.removesuffix(COPIED), sum(p["calls"].values()),
                     _real(p["calls"]), p["path"],
                     ", ".join(f"{k} {n}" for k, n in p["calls"].items()), p["outcome"]))
    wide = max(len(r[1]) for r in rows), max(len(r[5]) for r in rows)
    lines += ["", f"{'hook':<14} {'packet class':<{wide[0]}} calls real  path    "
              f"{'calls by kind':<{wide[1]}}  outcome (counters moved)"]
    for hook, label, calls, real, path, kinds, outcome in rows:
        lines.append(f"{hook:<14} {label:<{wide[0]}} {calls:>5} {real:>4}  {path:<6}  "
                     f"{kinds:<{wide[1]}}  {outcome}")
    return "\n".join(lines)


def load(path: Path = BUDGET) -> dict:
    return json.loads(path.read_text())


def write(now: dict, path: Path = BUDGET) -> None:
    kept = {k: now[k] for k in ("kernel", "bcc", "programs", "packets")}
    path.write_text(json.dumps({"tolerance": TOLERANCE, **kept}, indent=1) + "\n")


def _version(release: str | None) -> str | None:
    return release.split("-")[0] if release else release


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.budget",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true",
                   help="record the measurement as the budget (say why in the commit)")
    p.add_argument("--json", action="store_true",
                   help="print the measurement as JSON (the verdict goes to stderr)")
    p.add_argument("--budget", type=Path, default=BUDGET, help="default: %(default)s")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("budget: needs root (BPF loads, test runs, /proc/kallsyms)", file=sys.stderr)
        return 77
    now = measure(lambda text: print(f"budget: {text}", file=sys.stderr, flush=True))
    print(json.dumps(now, indent=1) if args.json else table(now))
    report = sys.stderr if args.json else sys.stdout
    budget = load(args.budget) if args.budget.exists() else None
    over, under, remarks = check(now, budget or {"programs": {}, "packets": {}})
    print(file=report)
    if args.write and budget is not None and (over or under):
        print("against the budget being replaced:", file=report)
    for line in remarks:
        print(f"note: {line}", file=report)
    for line in under:
        print(f"well under budget: {line}", file=report)
    for line in over:
        print(f"OVER BUDGET: {line}", file=report)
    if args.write:
        if now["tags"] != now["tags_without_counting"]:
            print("budget not written: the counting lines change the programs", file=report)
            return 1
        write(now, args.budget)
        print(f"budget written: {args.budget} (the lines above are what changed; say why "
              "in the commit)", file=report)
        return 0
    if budget is None:
        print(f"no budget at {args.budget}: --write records one", file=report)
        return 1
    print("budget: " + ("FAILED (over budget: see above; a change that adds work on purpose "
                        "records it with --write and says why)" if over else
                        "ok" + (" (well under in places: --write to tighten)" if under else "")),
          file=report)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
