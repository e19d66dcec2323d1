"""netctl.service as systemd would run it, on a namespace instead of a host: `make install`
into a temporary directory (its own environment, the unit with that installation's paths,
the example configuration), `systemd-analyze verify` on the installed unit, then the unit's
ExecStart, ExecReload and ExecStop command lines, read from the installed file and run
through `ip netns exec` with the unit's environment: the policy is live after start,
changed after a reload of an edited file, still live after stop, and gone after a stop
with NETCTL_DETACH_ON_STOP=1; a second install keeps the edited configuration, and
uninstall removes the unit and the environment.  Everything is removed even on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import systemd_unit
from lab import lab
from nsutil import run

REPO = Path(__file__).resolve().parents[2]

POLICY = """
version: 1
interfaces:
  - {{name: {dev}, tc: [ingress, egress]}}
defaults: {{ingress: accept, egress: accept}}
rules:
  - {{name: drop-udp-{port}, action: drop, proto: udp, dport: {port}}}
"""


@dataclass
class Installed:
    root: Path
    prefix: Path
    unit: Path
    config: Path
    defaults: Path
    log: str


@contextlib.contextmanager
def make_install() -> Iterator[Installed]:
    with tempfile.TemporaryDirectory(prefix="nctl-t-service-") as name:
        root = Path(name)
        paths = {"PREFIX": root / "opt" / "netctl", "UNIT_DIR": root / "systemd",
                 "CONF_DIR": root / "etc" / "netctl",
                 "DEFAULTS": root / "etc" / "default" / "netctl"}
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        result = subprocess.run(
            ["make", "-C", str(REPO), "--no-print-directory", "install", "BIN_LINK=",
             *(f"{k}={v}" for k, v in paths.items())],
            cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        yield Installed(root, paths["PREFIX"], paths["UNIT_DIR"] / "netctl.service",
                        paths["CONF_DIR"] / "netctl.yaml", paths["DEFAULTS"], result.stdout)


def test_the_installed_unit_starts_reloads_and_stops_as_documented():
    with make_install() as inst:
        # What make install put there.
        assert "command:" not in inst.log          # BIN_LINK= : no link on PATH
        expected = (REPO / "deploy" / "systemd" / "netctl.service").read_text()
        for old, new in (("/opt/netctl", str(inst.prefix)),
                         ("/etc/netctl", str(inst.config.parent)),
                         ("/etc/default/netctl", str(inst.defaults))):
            expected = expected.replace(old, new)
        assert inst.unit.read_text() == expected
        assert inst.config.read_text() == (REPO / "deploy" / "netctl.yaml").read_text()
        assert inst.defaults.read_text() == (REPO / "deploy" / "netctl.default").read_text()
        netctl = inst.prefix / "bin" / "netctl"
        assert netctl.exists()

        analyzer = shutil.which("systemd-analyze")
        assert analyzer, "systemd-analyze is missing: make setup installs Debian's systemd"
        verified = subprocess.run([analyzer, "verify", str(inst.unit)], capture_output=True,
                                  text=True, timeout=120, check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr

        # A second install keeps the edited configuration.
        inst.config.write_text("# edited\n" + inst.config.read_text())
        again = _install_script(inst)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"kept {inst.config}" in again.stdout
        assert inst.config.read_text().startswith("# edited\n")

        unit = systemd_unit.settings(inst.unit.read_text())

        with lab(inst.root) as the_lab:
            def systemctl(action: str) -> None:
                """Run what `systemctl ACTION netctl` runs, in the lab's DUT namespace."""
                key = {"start": "ExecStart", "reload": "ExecReload", "stop": "ExecStop"}[action]
                env = systemd_unit.environment(unit)
                lines = systemd_unit.values(unit, "Service", key)
                assert lines, key
                for line in lines:
                    argv = systemd_unit.command(line, env)
                    result = run(*argv, ns=the_lab.dut, check=False, cwd="/", env=env,
                                 stdin=subprocess.DEVNULL)
                    assert result.returncode == 0, \
                        f"{key} {argv}: exit {result.returncode}\n{result.stdout}{result.stderr}"

            def live_rules() -> list[str]:
                return [r["name"] for r in the_lab.status().get("rules", [])]

            inst.config.write_text(POLICY.format(dev=the_lab.dut_if, port=5556))
            systemctl("start")
            assert live_rules() == ["drop-udp-5556"]
            assert the_lab.udp(5, dport=5556) == 0 and the_lab.udp(5, dport=5555) == 5

            inst.config.write_text(POLICY.format(dev=the_lab.dut_if, port=5555))
            systemctl("reload")
            assert live_rules() == ["drop-udp-5555"]
            assert the_lab.udp(5, dport=5555) == 0 and the_lab.udp(5, dport=5556) == 5

            systemctl("stop")   # the installed /etc/default/netctl: NETCTL_DETACH_ON_STOP=0
            assert live_rules() == ["drop-udp-5555"]
            assert the_lab.udp(5, dport=5555) == 0

            systemctl("start")  # a start after a stop that kept it: nothing changes
            assert live_rules() == ["drop-udp-5555"]

            inst.defaults.write_text("NETCTL_DETACH_ON_STOP=1\n")
            systemctl("stop")
            assert the_lab.leftovers() == []
            assert the_lab.udp(5, dport=5555) == 5

            inst.defaults.unlink()   # optional file: start works without it
            systemctl("start")
            assert live_rules() == ["drop-udp-5555"]

        removed = _install_script(inst, "uninstall")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert not inst.unit.exists() and not inst.prefix.exists()
        assert inst.config.exists()


def _install_script(inst: Installed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), *args], cwd=inst.root,
        env=dict(os.environ, PREFIX=str(inst.prefix), UNIT_DIR=str(inst.unit.parent),
                 CONF_DIR=str(inst.config.parent), DEFAULTS=str(inst.defaults), BIN_LINK=""),
        capture_output=True, text=True, timeout=900, check=False)
