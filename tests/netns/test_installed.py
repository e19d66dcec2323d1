"""netctl as an operator installs it: the wheel built from this checkout, installed into a
fresh virtual environment in a temporary directory (with --system-site-packages, for
Debian's bcc), run from elsewhere with the checkout nowhere on sys.path, judges real traffic
in a namespace from the BPF sources it carries (datapath and tracers), says clearly when
one of them is missing, and detaches without a trace.  Everything (namespaces, link,
netctl's pins and state, the environment) is removed even on failure."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lab import lab
from nsutil import run

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"   # Debian's, which sees python3-bpfcc

POLICY = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: drop-udp-5556, action: drop, proto: udp, dport: 5556}
"""


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that would lead Python to the checkout
    or to the development environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _sh(*argv: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@contextlib.contextmanager
def installed_netctl() -> Iterator[tuple[Path, Path]]:
    """(the environment's netctl, the working directory) for a wheel of this checkout
    installed into a new environment under a temporary directory, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="nctl-t-install-") as tmp_name:
        tmp = Path(tmp_name)
        assert not tmp.resolve().is_relative_to(REPO)
        dist, venv, work, src = tmp / "dist", tmp / "venv", tmp / "work", tmp / "src"
        work.mkdir()
        # A copy of the sources (links kept as links), so that nothing left in the
        # checkout's build/ from an earlier build can slip into the wheel.
        shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
            "results"))
        # The wheel as `pip wheel .` makes it; the build backend is the development
        # environment's setuptools (the floor pyproject.toml asks for), so no download.
        _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--wheel-dir", str(dist), str(src), cwd=work)
        wheels = list(dist.glob("netctl-*.whl"))
        assert len(wheels) == 1, wheels
        _sh(SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv), cwd=work)
        _sh(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0]),
            cwd=work)
        yield venv / "bin" / "netctl", work


def test_the_installed_wheel_judges_real_traffic_from_its_own_sources():
    with installed_netctl() as (netctl, work):
        venv = netctl.parents[1]
        python = str(venv / "bin" / "python")

        # Where the installed package finds itself and its sources: inside the environment.
        where = _sh(python, "-c", (
            "import json, sys, netctl\n"
            "from netctl.kernel import bpfsrc\n"
            "print(json.dumps({'package': netctl.__file__, 'bpf': str(bpfsrc.BPF_DIR),\n"
            "                  'policies': str(bpfsrc.POLICIES_DIR), 'path': sys.path}))\n"),
            cwd=work)
        found = json.loads(where.stdout)
        for key in ("package", "bpf", "policies"):
            assert Path(found[key]).resolve().is_relative_to(venv.resolve()), found
        assert not any(p and Path(p).resolve().is_relative_to(REPO) for p in found["path"]), \
            found["path"]
        shipped = Path(found["bpf"])
        for name in ("xdp/netctl_xdp.c", "tc/netctl_tc.c", "include/netctl_abi.h",
                     "trace/drop.c", "trace/netctl_trace.h"):
            assert (shipped / name).is_file(), name
        assert not shipped.is_symlink()

        import netctl as checkout

        version = _sh(str(netctl), "--version", cwd=work)
        assert version.stdout.strip() == f"netctl {checkout.__version__}"

        # The packaged examples are there and valid.
        example = Path(found["policies"]) / "web-server.yaml"
        validated = _sh(str(netctl), "validate", str(example), cwd=work)
        assert "valid (" in validated.stdout

        policy = work / "policy.yaml"
        with lab(work) as the_lab:
            def installed(*args: str, check: bool = True) -> subprocess.CompletedProcess:
                result = run(str(netctl), *args, ns=the_lab.dut, check=False, cwd=work,
                             env=_clean_env())
                if check and result.returncode != 0:
                    raise AssertionError(f"netctl {' '.join(args)} exited "
                                         f"{result.returncode}:\n{result.stdout}\n"
                                         f"{result.stderr}")
                return result

            policy.write_text(POLICY)
            applied = installed("apply", str(policy), "--dev", the_lab.dut_if, "-o", "json")
            assert "generation" in json.loads(applied.stdout)

            assert the_lab.udp(10, dport=5556) == 0
            assert the_lab.udp(10, dport=5555) == 10
            status = json.loads(installed("status", "-o", "json").stdout)
            assert status["problems"] == []
            rules = {r["name"]: r for r in status["rules"]}
            assert rules["drop-udp-5556"]["packets"] == 10

            # The tracers compile from the installed sources too.
            watched = installed("monitor", "--type", "drop", "--timeout", "1", "-o", "json")
            first = json.loads(watched.stdout.splitlines()[0])
            assert first["type"] == "start", first
            assert re.match(r"drop: (fentry|tracepoint|kprobe)\b", first["sources"][0]), first
            assert "Traceback" not in watched.stderr

            # A source missing from the installation: a clear error, no traceback, and the
            # live policy keeps judging.
            (shipped / "include" / "netctl_stats.h").unlink()
            policy.write_text(POLICY.replace("5556", "5557"))
            broken = installed("apply", str(policy), "--dev", the_lab.dut_if, check=False)
            assert broken.returncode == 1, broken.stdout + broken.stderr
            assert "Traceback" not in broken.stderr
            assert "netctl_stats.h" in broken.stderr and "reinstall" in broken.stderr, \
                broken.stderr
            assert the_lab.udp(5, dport=5556) == 0

            detached = installed("detach", "--all")
            assert detached.returncode == 0
            assert the_lab.leftovers() == []
            assert the_lab.udp(5, dport=5556) == 5

