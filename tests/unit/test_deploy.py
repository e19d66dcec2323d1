"""What `make install` puts on a host, read without root: netctl.service is ordered and typed
as nftables.service is (applied before network-pre.target, a oneshot that stays active,
reload = apply again, stop leaves the datapath unless told to detach), systemd's own
analyzer accepts it, and the example policy and environment file are valid.  (Installing
and running the unit's command lines against a real namespace is
tests/netns/test_service.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import systemd_unit

from netctl.policy.evaluate import evaluate
from netctl.policy.load import load_policy

REPO = Path(__file__).resolve().parents[2]
UNIT_FILE = REPO / "deploy" / "systemd" / "netctl.service"
UNIT = systemd_unit.settings(UNIT_FILE.read_text())
NETCTL = "/opt/netctl/bin/netctl"
CONFIG = "/etc/netctl/netctl.yaml"


def test_applied_before_the_network_as_a_oneshot_that_stays_active():
    assert "network-pre.target" in systemd_unit.words(UNIT, "Unit", "Before")
    assert "network-pre.target" in systemd_unit.words(UNIT, "Unit", "Wants")
    assert systemd_unit.values(UNIT, "Unit", "DefaultDependencies") == ["no"]
    assert "shutdown.target" in systemd_unit.words(UNIT, "Unit", "Conflicts")
    assert systemd_unit.values(UNIT, "Service", "Type") == ["oneshot"]
    assert systemd_unit.values(UNIT, "Service", "RemainAfterExit") == ["yes"]
    assert systemd_unit.values(UNIT, "Install", "WantedBy") == ["sysinit.target"]


def test_start_and_reload_apply_the_file_and_stop_detaches_only_when_told():
    env = systemd_unit.environment(UNIT)   # /etc/default/netctl absent here: optional
    start = [systemd_unit.command(v, env) for v in systemd_unit.values(UNIT, "Service",
                                                                        "ExecStart")]
    reload = [systemd_unit.command(v, env) for v in systemd_unit.values(UNIT, "Service",
                                                                         "ExecReload")]
    assert start == [[NETCTL, "apply", CONFIG]] and reload == start
    assert systemd_unit.values(UNIT, "Service", "EnvironmentFile") == ["-/etc/default/netctl"]
    [stop] = systemd_unit.values(UNIT, "Service", "ExecStop")
    argv = systemd_unit.command(stop, env)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert "${NETCTL_DETACH_ON_STOP:-0}" in argv[2] and f"{NETCTL} detach --all" in argv[2]


def test_no_mount_sandboxing_that_would_hide_the_bpffs_mount():
    """netctl mounts its bpffs under /run when missing; in a private mount namespace that
    mount (and the pins in it) would vanish with the process."""
    keys = {k for k, _ in UNIT["Service"]}
    assert not keys & {"ProtectSystem", "PrivateMounts", "PrivateTmp", "ProtectKernelTunables",
                       "ReadOnlyPaths", "TemporaryFileSystem", "MountFlags"}


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """The analyzer checks that the commands exist: point them at this environment's
    netctl, as `make install` points them at its own."""
    analyzer = shutil.which("systemd-analyze")
    assert analyzer, "systemd-analyze is missing: make setup installs Debian's systemd"
    unit = tmp_path / "netctl.service"
    unit.write_text(UNIT_FILE.read_text().replace(
        NETCTL, str(Path(sys.executable).with_name("netctl"))))
    result = subprocess.run([analyzer, "verify", str(unit)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "netctl.service" not in result.stderr, result.stderr


def test_the_example_policy_is_valid_and_its_tests_pass():
    policy = load_policy(str(REPO / "deploy" / "netctl.yaml"))
    assert policy.tests
    for test in policy.tests:
        decision = evaluate(policy, test.packet, test.direction)
        if test.expect.rule is not None:
            assert decision.rule is not None and decision.rule.name == test.expect.rule
        else:
            assert decision.verdict is test.expect.verdict


def test_the_example_environment_file_keeps_the_datapath_on_stop():
    text = (REPO / "deploy" / "netctl.default").read_text()
    assert "NETCTL_DETACH_ON_STOP=0" in text.splitlines()
