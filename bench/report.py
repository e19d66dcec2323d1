"""The figures in the README and docs/performance.md, written from one `make bench` run.

    python -m bench.report                      # from bench/results/latest-full.json
    python -m bench.report RESULTS.json         # from another run's results

`make bench` (the full run) ends by calling it.  It copies the run's results to
docs/bench-results.json and its plots to docs/, and rewrites the text between the
``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` markers: the README's summary
and docs/performance.md's tables.  tests/unit/test_bench_report.py renders the committed
results again and compares: a figure edited by hand, or results without the text that goes
with them, fail without root and without a benchmark.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS = DOCS / "bench-results.json"
TARGETS_DOC = {"README.md": ("summary",), "docs/performance.md": ("run", "tables")}


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _target(result: dict, mix: str, flood: str, n: int, key: str) -> float | None:
    for row in result["targets"]:
        if (row["mix"], row["flood"], row["rules"]) == (mix, flood, n):
            return row[key]["ratio"]
    return None


def summary(result: dict) -> str:
    """The README's paragraph: netctl's default hook against the bare tc drop and the
    nftables set, per mix under the fixed flood, at the largest N measured for both."""
    from bench.run import BARE_TC, DEFAULT, NFT_SET

    m = result["machine"]
    lines = [f"One `make bench` run ({m['time'][:10]}, commit {m.get('commit', '?')}, kernel "
             f"{m['kernel']}, {m['cpus']} CPUs), netctl's default hook, fixed flood:", ""]
    lines.append("| rule mix | rules | / bare tc drop | / nftables interval set |")
    lines.append("| --- | --- | --- | --- |")

    def row(label: str, mix: str, n: int, rules: str) -> str:
        tc = _target(result, mix, "fixed", n, f"{DEFAULT} / {BARE_TC}")
        nft = _target(result, mix, "fixed", n, f"{DEFAULT} / {NFT_SET}")
        return f"| {label} | {rules} | {_fmt_ratio(tc)} | {_fmt_ratio(nft)} |"

    for case in result["matrix"]:
        if case["flood"] == "fixed":
            for n in sorted({10000, max(case["ns"])} & set(case["ns"])):
                lines.append(row(case["mix"], case["mix"], n, f"{n:,}"))
    sets_result = result.get("sets")
    if sets_result:
        size = sets_result["size"]
        lines.append(row(f"a set of {size:,} prefixes", sets_result["mix"], size, "1"))
    return "\n".join(lines)


def run_line(result: dict) -> str:
    m = result["machine"]
    return (f"One run: {m['time']}, commit {m.get('commit', '?')}, kernel {m['kernel']}, "
            f"{m['cpus']} CPUs, BPF JIT {m.get('bpf_jit_enable')}, {result['mode']} mode, "
            f"{result['elapsed_s'] / 60:.0f} minutes; every figure: "
            f"[bench-results.json](bench-results.json).")


def tables(result: dict) -> str:
    from bench import forwarding, sets, tracers
    from bench.run import table, targets_table

    parts = [table(result)]
    if result.get("sets"):
        parts.append(sets.table(result["sets"]))
    parts += [forwarding.table(result["forwarding"]), tracers.table(result["tracers"]),
              targets_table(result)]
    plots = "\n".join(f"![{name}]({file})" for name, file in result["plots"].items())
    return plots + "\n\n```\n" + "\n\n".join(parts) + "\n```"


def render(result: dict) -> dict[str, str]:
    return {"summary": summary(result), "run": run_line(result), "tables": tables(result)}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- bench:{name}:begin -->\n)(.*?)(<!-- bench:{name}:end -->)",
                      re.S)


def blocks(text: str) -> dict[str, str]:
    """The generated blocks a document holds now, by name."""
    return {m.group(1): m.group(2).rstrip("\n") for m in re.finditer(
        r"<!-- bench:(\w+):begin -->\n(.*?)<!-- bench:\1:end -->", text, re.S)}


def write(result: dict, results_dir: Path | None = None) -> list[Path]:
    """Copy the results and plots into docs/ and rewrite every generated block."""
    written = []
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    written.append(RESULTS)
    if results_dir is not None:
        for file in result["plots"].values():
            if (results_dir / file).exists():
                shutil.copyfile(results_dir / file, DOCS / file)
                written.append(DOCS / file)
    texts = render(result)
    for doc, names in TARGETS_DOC.items():
        path = REPO / doc
        text = path.read_text()
        for name in names:
            pattern = _block(name)
            if not pattern.search(text):
                raise SystemExit(f"bench.report: {doc} has no <!-- bench:{name}:begin --> "
                                 "block")
            text = pattern.sub(lambda m, n=name: m.group(1) + texts[n] + "\n" + m.group(3),
                               text)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else REPO / "bench" / "results" / "latest-full.json"
    if not source.exists():
        print(f"bench.report: no results at {source}: run `make bench` first", file=sys.stderr)
        return 1
    result = json.loads(source.read_text())
    for path in write(result, source.parent):
        print(f"bench.report: wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
