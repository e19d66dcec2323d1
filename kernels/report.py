"""docs/kernels.md's matrix, written from one `make test-kernels` run.

    python -m kernels.report                     # from docs/kernels-results.json
    python -m kernels.report RESULTS.json        # from another run (build/kernels/results.json)

`make test-kernels` ends by calling ``write``: the run's results are copied to
docs/kernels-results.json and the text between ``<!-- kernels:NAME:begin -->`` and
``<!-- kernels:NAME:end -->`` in docs/kernels.md is rendered from them again.
tests/unit/test_kernels_report.py renders the committed results and compares.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "kernels.md"
RESULTS = REPO / "docs" / "kernels-results.json"
PARTS = ("tracers", "differential", "netns")
HOOKS = ("fentry", "tracepoint", "kprobe")
KINDS = ("drop", "retrans", "cong", "socket")
ROLES = ("xdp", "tc_ingress", "tc_egress", "xdp_l3", "tc_ingress_l3", "tc_egress_l3")
SCENARIO = {"drop": "test_drop_udp_to_closed_port",
            "retrans": "test_retransmits_and_congestion_while_the_receiver_drops",
            "cong": "test_retransmits_and_congestion_while_the_receiver_drops",
            "socket": "test_socket_lifecycle_with_duration"}
_BLOCK = re.compile(r"<!-- kernels:(\w+):begin -->\n(.*?)<!-- kernels:\1:end -->", re.S)


def _name(run: dict) -> str:
    return run.get("release") or run.get("entry", "?")


def counts(run: dict, part: str) -> Counter:
    return Counter(t["outcome"] for t in run.get("tests", []) if t["part"] == part)


def _cell(c: Counter) -> str:
    if not c:
        return "no tests"
    text = f"{c['passed']} passed"
    for outcome in ("failed", "error", "skipped"):
        if c[outcome]:
            text += f", {c[outcome]} {outcome}"
    return text


def problems(results: dict) -> list[str]:
    """Everything that makes the run fail, one line each."""
    out = []
    for run in results["runs"]:
        name = _name(run)
        if run.get("problem"):
            out.append(f"{name}: {run['problem']}")
        for stage, value in run.get("stages", {}).items():
            if isinstance(value.get("result"), dict) and "error" in value["result"]:
                out.append(f"{name}: stage {stage}: {value['result']['error']}")
        for role, entry in run.get("stages", {}).get("verifier", {}).get("result",
                                                                          {}).items():
            if isinstance(entry, dict) and entry.get("ok") is False:
                last = (entry.get("log_tail") or ["no log"])[-1]
                out.append(f"{name}: {role}: {entry['error']}; the log ends: `{last}`")
        for part in PARTS:
            if run.get("release") and not counts(run, part):
                out.append(f"{name}: {part}: no test ran")
        for t in run.get("tests", []):
            if t["outcome"] in ("failed", "error"):
                out.append(f"{name}: {t['outcome']}: {t['nodeid']}")
    return out


def summary_table(results: dict) -> str:
    lines = ["| kernel | " + " | ".join(PARTS) + " | time in VM |",
             "| --- | " + " | ".join("---" for _ in PARTS) + " | --- |"]
    for run in results["runs"]:
        if not run.get("release"):
            lines.append(f"| {_name(run)} | " + " | ".join("cannot be had" for _ in PARTS)
                         + " | - |")
            continue
        cells = [_cell(counts(run, part)) for part in PARTS]
        lines.append(f"| {_name(run)} | " + " | ".join(cells)
                     + f" | {run.get('seconds', 0) / 60:.1f} min |")
    return "\n".join(lines)


def _short(why: str, width: int = 110) -> str:
    why = " ".join(why.split()).replace("|", "/")
    return why if len(why) <= width else why[:width - 3] + "..."


def _test(run: dict, name: str) -> dict | None:
    return next((t for t in run.get("tests", []) if t["nodeid"].endswith(name)), None)


def hooks_table(run: dict) -> str:
    probe = run.get("stages", {}).get("hooks", {}).get("result", {})
    if "error" in probe or not probe:
        return f"no tracer census: {probe.get('error', 'not run')}"
    lines = ["| tracer | " + " | ".join(HOOKS) + " | automatic |",
             "| --- | " + " | ".join("---" for _ in HOOKS) + " | --- |"]
    for kind in KINDS:
        cells = []
        for hook in HOOKS:
            entry = probe.get(kind, {}).get(hook, {})
            test = _test(run, f"{SCENARIO[kind]}[{hook}]")
            if not entry.get("ok"):
                cells.append(f"refused: {_short(entry.get('why', '?'))}")
            elif test is None:
                cells.append("attaches (no scenario ran)")
            elif test["outcome"] == "passed":
                cells.append("works")
            else:
                cells.append(f"attaches; scenario {test['outcome']}")
        best = next((h for h in HOOKS if probe.get(kind, {}).get(h, {}).get("ok")), None)
        cells.append(best or "none")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verifier_table(results: dict) -> str:
    runs = [r for r in results["runs"] if r.get("release")]
    lines = ["| program | " + " | ".join(_name(r) for r in runs) + " |",
             "| --- | " + " | ".join("---" for _ in runs) + " |"]
    for role in ROLES:
        cells = []
        for run in runs:
            census = run.get("stages", {}).get("verifier", {}).get("result", {})
            entry = census.get(role)
            if not isinstance(entry, dict):
                cells.append(_short(census.get("error", "not run"), 60))
            elif entry["ok"]:
                cells.append(f"{entry['processed']:,} insns")
            else:
                n = entry.get("processed")
                cells.append(f"**refused** at {n:,} insns" if n else "**refused**")
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: dict) -> dict[str, str]:
    m = results["machine"]
    run_text = [f"One `make test-kernels` run ({m['time'][:10]}, commit {m['commit']}, "
                f"host kernel {m['host_kernel']}, {m['cpus']} CPUs, QEMU without KVM), "
                f"{results['seconds'] / 60:.1f} minutes in all:", "", summary_table(results)]
    hooks = []
    for run in results["runs"]:
        if run.get("release"):
            hooks += [f"**{run['release']}** (`{run['entry']}`, {run['version']})", "",
                      hooks_table(run), ""]
    failures = [f"- {line}" for line in problems(results)] or ["None."]
    return {"run": "\n".join(run_text) + "\n", "hooks": "\n".join(hooks),
            "verifier": verifier_table(results) + "\n", "failures": "\n".join(failures) + "\n"}


def blocks(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _BLOCK.finditer(text)}


def rewrite(text: str, rendered: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        body = rendered.get(m.group(1), m.group(2))
        return f"<!-- kernels:{m.group(1)}:begin -->\n{body}<!-- kernels:{m.group(1)}:end -->"

    return _BLOCK.sub(sub, text)


def write(results: dict) -> None:
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    DOC.write_text(rewrite(DOC.read_text(), render(results)))


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else RESULTS
    results = json.loads(source.read_text())
    if source != RESULTS:
        write(results)
    else:
        DOC.write_text(rewrite(DOC.read_text(), render(results)))
    print(summary_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
