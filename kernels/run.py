"""`make test-kernels`: netctl's kernel-dependent tests on Debian's stock kernels, each booted
in a virtual machine (virtme-ng, QEMU without KVM) that shares this machine's filesystem.

    python -m kernels.run [--kernels "ENTRY ..."] [--timeout S] [--no-docs]

Per kernel of the list (kernels/fetch.py): fetched and unpacked when not yet, booted with
`vng --run VMLINUZ --disable-kvm --cpus 2 --memory 2G`, where kernels/guest.py runs the
census and the tests in one process and writes build/kernels/<release>/results.json
(guest.log beside it, followed here as it grows).  Then a table kernel x part (passed,
failed, skipped), docs/kernels-results.json and docs/kernels.md rewritten from the run
(kernels/report.py), and exit status 1 when anything failed: a test, a stage, a kernel that
cannot be had, a part without tests, a machine that ended without its results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kernels import fetch, report

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "kernels"


def _follow(path: Path, prefix: str, done: threading.Event) -> None:
    """Print the lines ``path`` gains until ``done`` is set (and what is left then)."""
    pos, partial = 0, ""
    while True:
        finished = done.is_set()
        if path.exists():
            with open(path, errors="replace") as f:
                f.seek(pos)
                chunk = partial + f.read()
                pos = f.tell()
            *lines, partial = chunk.split("\n")
            if finished and partial:
                lines.append(partial)
            for line in lines:
                print(f"{prefix} {line}", flush=True)
        if finished:
            return
        done.wait(2)


def boot(kernel: fetch.Kernel, timeout: float) -> dict:
    """Run kernels/guest.py in a machine booted on ``kernel``; its results, or why none."""
    out = OUT / kernel.release
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    venv_bin = Path(sys.executable).parent
    guest = f"{sys.executable} -m kernels.guest {out}"
    command = [str(venv_bin / "vng"), "--run", str(kernel.vmlinuz), "--memory", "2G",
               "--cpus", "2", "--disable-kvm", "--rwdir", str(out), "--exec", guest]
    env = dict(os.environ, PATH=f"{venv_bin}:{os.environ.get('PATH', '')}")
    done = threading.Event()
    follower = threading.Thread(target=_follow, args=(out / "guest.log",
                                                      f"[{kernel.release}]", done))
    follower.start()
    start = time.monotonic()
    with open(out / "vng.log", "w") as vng_log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=vng_log, stderr=vng_log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:   # timed out or interrupted: vng and its qemu (their own process group)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    done.set()
    follower.join()
    seconds = round(time.monotonic() - start, 1)
    path = out / "results.json"
    result = json.loads(path.read_text()) if path.exists() else {"stages": {}, "tests": []}
    result.update(release=kernel.release, version=kernel.version, entry=kernel.entry,
                  packages=list(kernel.packages), seconds=seconds)
    if timed_out:
        result["problem"] = f"the machine did not finish within {timeout:.0f} s"
    elif "finished" not in result:
        result["problem"] = (f"the machine ended without finishing (see {out}/vng.log and "
                             "guest.log)")
    return result


def _machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
            "host_kernel": os.uname().release, "cpus": os.cpu_count(),
            "accelerator": "tcg"}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="kernels.run", description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default=" ".join(fetch.KERNELS),
                    help="entries of the list, space-separated (default: kernels/fetch.py)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per machine")
    ap.add_argument("--no-docs", action="store_true",
                    help="leave docs/kernels.md and docs/kernels-results.json alone")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("kernels: needs root (unpacks into /lib/modules, BPF in the guests)",
              file=sys.stderr)
        return 1
    missing = [tool for tool in ("qemu-system-x86_64", "depmod")
               if shutil.which(tool, path="/usr/bin:/usr/sbin:/bin:/sbin") is None]
    if not (Path(sys.executable).parent / "vng").exists():
        missing.append("vng (virtme-ng, in the venv)")
    if missing:
        print(f"kernels: missing {', '.join(missing)}: run make setup", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # a killed run stops its VM
    start = time.monotonic()
    runs: list[dict] = []
    for got in fetch.kernels(args.kernels.split()):
        if isinstance(got, fetch.FetchError):
            print(f"kernels: CANNOT BE HAD: {got}", file=sys.stderr, flush=True)
            runs.append({"entry": str(got).split(":")[0], "release": None,
                         "problem": f"cannot be had: {got}", "stages": {}, "tests": []})
            continue
        print(f"kernels: booting {got.release} ({got.entry}, {got.version})", flush=True)
        runs.append(boot(got, args.timeout))
    results = {"machine": _machine(), "seconds": round(time.monotonic() - start, 1),
               "runs": runs}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(report.summary_table(results))
    problems = report.problems(results)
    for line in problems:
        print(f"kernels: FAILED: {line}")
    if not args.no_docs:
        report.write(results)
        print("kernels: docs/kernels.md and docs/kernels-results.json rewritten")
    print(f"kernels: {len(runs)} kernels in {results['seconds'] / 60:.1f} min"
          f" ({'FAILED' if problems else 'all passed'})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
