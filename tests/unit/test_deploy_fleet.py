"""The fleet's packaging, read without a cluster or root: the Kubernetes DaemonSet is valid
against Kubernetes' own schemas (kubernetes-validate ships them: no cluster, no network),
runs the agent on the host's network with only the capabilities the datapath needs and
the node's name from the downward API, and its command line is one netctl's parser takes;
the systemd unit runs the agent, leaves the datapath on stop, and systemd's analyzer
accepts it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import systemd_unit
import yaml

from netctl.cli_parser import parser

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kubernetes" / "netctl-agent.yaml"
UNIT_FILE = REPO / "deploy" / "systemd" / "netctl-agent.service"
UNIT = systemd_unit.settings(UNIT_FILE.read_text())


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def daemonset() -> dict:
    [ds] = [d for d in documents() if d["kind"] == "DaemonSet"]
    return ds


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_every_document_is_valid_kubernetes(version):
    import kubernetes_validate

    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)   # raises when invalid


def test_the_agent_runs_on_the_host_network_with_only_the_datapath_capabilities():
    spec = daemonset()["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["automountServiceAccountToken"] is False
    [agent] = spec["containers"]
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "NET_ADMIN"}
    assert "hostPID" not in spec and "hostIPC" not in spec
    # netctl finds its links again by their pins (tests/netns/test_security.py runs a pod's
    # life with these three capabilities): the pod takes the kernel's best hooks.
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert "NETCTL_ATTACH" not in env


def test_the_node_name_comes_from_the_downward_api_and_the_command_parses():
    [agent] = daemonset()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "configMapKeyRef" in env["NETCTL_ETCD"]["valueFrom"]
    argv = [a.replace("$(NODE_NAME)", "worker-1") for a in agent["command"] + agent["args"]]
    assert argv[:2] == ["netctl", "agent"]
    args = parser().parse_args(argv[1:])
    assert args.verb == "agent" and args.node == "worker-1" and not args.dry_run


def test_pins_and_state_are_the_hosts():
    spec = daemonset()["spec"]["template"]["spec"]
    [agent] = spec["containers"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    run = mounts["/run/netctl"]   # the bpffs at /run/netctl/bpf and the state files
    assert volumes[run["name"]]["hostPath"]["path"] == "/run/netctl"
    assert run["mountPropagation"] == "HostToContainer"
    state = mounts["/var/lib/netctl/agent"]
    assert volumes[state["name"]]["hostPath"]["path"] == "/var/lib/netctl/agent"
    assert agent["args"][agent["args"].index("--state-dir") + 1] == "/var/lib/netctl/agent"


def test_the_unit_runs_the_agent_and_stop_leaves_the_datapath():
    env = systemd_unit.environment({"Service": [(k, v) for k, v in UNIT["Service"]
                                                if k != "EnvironmentFile"]})
    env["NETCTL_NODE"] = "web-1"
    [start] = systemd_unit.values(UNIT, "Service", "ExecStart")
    argv = systemd_unit.command(start, env)
    assert argv[0] == "/opt/netctl/bin/netctl" and argv[1] == "agent"
    args = parser().parse_args(argv[1:])
    assert args.node == "web-1" and args.state_dir == "/var/lib/netctl/agent"
    assert not systemd_unit.values(UNIT, "Service", "ExecStop")   # SIGTERM only
    assert systemd_unit.values(UNIT, "Service", "KillSignal") == ["SIGTERM"]
    assert systemd_unit.values(UNIT, "Service", "Restart") == ["always"]
    assert "netctl.service" in systemd_unit.words(UNIT, "Unit", "Conflicts")
    keys = {k for k, _ in UNIT["Service"]}
    assert not keys & {"ProtectSystem", "PrivateMounts", "PrivateTmp", "MountFlags"}


def test_systemd_analyze_verify_accepts_the_agent_unit(tmp_path):
    analyzer = shutil.which("systemd-analyze")
    assert analyzer, "systemd-analyze is missing: make setup installs Debian's systemd"
    unit = tmp_path / "netctl-agent.service"
    unit.write_text(UNIT_FILE.read_text().replace(
        "/opt/netctl/bin/netctl", str(Path(sys.executable).with_name("netctl")))
        .replace("EnvironmentFile=/etc/default/netctl-agent",
                 f"EnvironmentFile={REPO / 'deploy' / 'netctl-agent.default'}")
        .replace("RequiresMountsFor=/opt/netctl", f"RequiresMountsFor={tmp_path}"))
    result = subprocess.run([analyzer, "verify", str(unit)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "netctl-agent.service" not in result.stderr, result.stderr


def test_the_schema_check_is_real():
    """A DaemonSet with a mistake is refused: the validation above is not vacuous."""
    import kubernetes_validate

    ds = daemonset()
    ds["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, "1.37.0", strict=True)
    ds = daemonset()
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilties"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, "1.37.0", strict=True)
