"""netctl as a package: its BPF sources and example policies are package data found through
importlib.resources, every file the programs need is listed for the wheel, the version has
one source, the light verbs import no heavy dependency, machine-specific numbers are looked
up by machine, and a missing source is a clear NetctlError.  (Building and installing the
wheel, then running it against real traffic, is tests/netns/test_installed.py.)"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import netctl
from netctl.errors import InstallError, NetctlError
from netctl.kernel import bpfsrc, syscalls

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_package_data_is_the_repositorys_bpf_and_policies_folders():
    """In a checkout the lookup lands on the repository's own folders (links in netctl/),
    so an edit to bpf/ is what the next compile reads."""
    assert (REPO / "bpf").resolve() == bpfsrc.BPF_DIR
    assert (REPO / "policies").resolve() == bpfsrc.POLICIES_DIR
    assert (bpfsrc.BPF_DIR / "xdp" / "netctl_xdp.c").is_file()
    assert (bpfsrc.POLICIES_DIR / "web-server.yaml").is_file()


def test_every_bpf_source_and_example_policy_is_listed_as_package_data():
    """A new header or tracer under bpf/ (or a new example policy) cannot be left out of the
    wheel: each file matches a package-data pattern."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["netctl"]
    shipped = [p for folder in ("bpf", "policies")
               for p in sorted((REPO / folder).rglob("*")) if p.is_file()]
    not_for_the_wheel = {"bpf/README.md", "policies/gen_blocklist.py"}
    missing = []
    for path in shipped:
        rel = path.relative_to(REPO).as_posix()
        if rel in not_for_the_wheel or "__pycache__" in rel or path.name.startswith("."):
            continue
        if not any(fnmatch.fnmatchcase(rel, pattern) and rel.count("/") == pattern.count("/")
                   for pattern in patterns):
            missing.append(rel)
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_one_version_source():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "netctl.__version__"}
    assert importlib.metadata.version("netctl") == netctl.__version__


def test_license_file_matches_the_declared_license():
    text = (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter (what it imports is its own)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["validate", str(REPO / "policies" / "web-server.yaml")],
    ["explain", str(REPO / "policies" / "web-server.yaml"), "--src", "198.51.100.7",
     "--dst", "203.0.113.10", "--proto", "tcp", "--dport", "22"],
])
def test_light_verbs_import_no_scapy_bcc_or_pyroute2(argv):
    """scapy (and bcc, pyroute2) are imported only by the verbs that use them: the CLI
    starts fast and validates where they are not even installed."""
    probe = (
        "import sys\n"
        "from netctl import cli\n"
        "try:\n"
        f"    rc = cli.main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules}\n"
        "               & {'scapy', 'bcc', 'pyroute2', 'prometheus_client'})\n"
        "print('HEAVY', rc, heavy, file=sys.stderr)\n"
    )
    result = _python(probe)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("HEAVY 0 "), result.stderr
    assert last == "HEAVY 0 []", f"imported: {last}"


def test_syscall_numbers_are_chosen_by_machine():
    assert syscalls.number("bpf", "x86_64") == 321
    assert syscalls.number("bpf", "aarch64") == 280
    assert syscalls.number("perf_event_open", "aarch64") == 241
    assert syscalls.number("bpf", "riscv64") == 280
    assert syscalls.ioc_write("$", 8, 4, "x86_64") == 0x40042408
    assert syscalls.ioc_write("$", 8, 4, "aarch64") == 0x40042408
    assert syscalls.ioc_write("$", 8, 4, "ppc64le") == 0x80042408
    with pytest.raises(NetctlError, match=r"bpf\(2\) system call number is not known for "
                                          r"machine 'vax'"):
        syscalls.number("bpf", "vax")


def test_an_unknown_machine_is_a_clear_error_at_the_first_bpf_call_not_at_import():
    probe = (
        "import platform\n"
        "platform.machine = lambda: 'vax'\n"
        "from netctl.errors import NetctlError\n"
        "from netctl.kernel import bpfsys\n"
        "try:\n"
        "    bpfsys.obj_get('/nonexistent')\n"
        "except NetctlError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    result = _python(probe)
    assert result.returncode == 0, result.stderr
    assert "ERROR the bpf(2) system call number is not known for machine 'vax'" in result.stdout


def test_a_missing_bpf_source_is_an_install_error(tmp_path):
    with pytest.raises(InstallError, match=r"BPF source .*nothere\.c cannot be read.*"
                                           r"reinstall the package"):
        bpfsrc.translation_unit(tmp_path / "nothere.c")


def test_a_missing_header_names_the_including_line(tmp_path):
    entry = tmp_path / "entry.c"
    entry.write_text('int x;\n#include "netctl_missing.h"\n')
    with pytest.raises(InstallError, match=r"BPF header netctl_missing\.h \(included at "
                                           r".*entry\.c:2\) cannot be read"):
        bpfsrc.translation_unit(entry)


def test_the_datapath_build_reports_a_missing_source_as_an_install_error(monkeypatch,
                                                                          tmp_path):
    from netctl.datapath import build

    monkeypatch.setattr(build, "XDP_SOURCE", tmp_path / "netctl_xdp.c")
    with pytest.raises(InstallError):
        build.source_digest()
