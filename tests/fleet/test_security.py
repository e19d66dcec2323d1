"""etcd with authentication on, and over TLS with client certificates: the agent and push
log in from options or NETCTL_ETCD_*; a node's role (docs/fleet.md, Security) lets it read
its own assignment and the policies and write only its own registration and status."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fleetlab import fleet, wait_for

from netctl.fleet.keys import FleetError, assignment_key, status_key
from netctl.fleet.store import Endpoint, Store
from netctl.kernel.netlab import inside

pytestmark = pytest.mark.root

POLICY = ("version: 1\ninterfaces:\n  - name: eth0\nrules:\n  - name: drop-9\n"
          "    proto: udp\n    dport: 9\n    action: drop\n")


def node_role(node: str) -> list[list[str]]:
    """The etcdctl commands docs/fleet.md gives for one node's role and user."""
    role = f"netctl-node-{node}"
    return [["role", "add", role],
            ["role", "grant-permission", role, "read", f"/netctl/v1/assignments/{node}"],
            ["role", "grant-permission", role, "--prefix=true", "read",
             "/netctl/v1/policies/"],
            ["role", "grant-permission", role, "readwrite", f"/netctl/v1/nodes/{node}"],
            ["role", "grant-permission", role, "readwrite", f"/netctl/v1/status/{node}"],
            ["user", "add", f"node-{node}", "--new-user-password", f"pw-{node}"],
            ["user", "grant-role", f"node-{node}", role]]


def etcdctl(fl, *args: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", fl.etcd.ns, "etcdctl", "--endpoints",
                             fl.etcd.local_url, *args], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stderr}"


def test_node_roles_with_authentication_on(scratch):
    with fleet(scratch, count=0) as fl:
        for command in (["user", "add", "root", "--new-user-password", "root-pw"],
                        ["user", "grant-role", "root", "root"],
                        ["role", "add", "netctl-push"],
                        ["role", "grant-permission", "netctl-push", "--prefix=true",
                         "readwrite", "/netctl/v1/"],
                        ["user", "add", "pusher", "--new-user-password", "push-pw"],
                        ["user", "grant-role", "pusher", "netctl-push"],
                        *node_role("n1"), *node_role("n2"), ["auth", "enable"]):
            etcdctl(fl, *command)
        # Without a login nothing works, and the error says so (no traceback).
        out = fl.netctl("fleet", "status")
        assert out.returncode == 1 and "refused" in out.stderr and "Traceback" not in \
            out.stderr, out.stderr
        fl.operator_env.update(NETCTL_ETCD_USER="pusher", NETCTL_ETCD_PASSWORD="push-pw")
        (scratch / "pw-n2").write_text("pw-n2\n")
        fl.dry_agent("n1", env={"NETCTL_ETCD_USER": "node-n1", "NETCTL_ETCD_PASSWORD": "pw-n1"})
        fl.dry_agent("n2", env={"NETCTL_ETCD_USER": "node-n2",
                                "NETCTL_ETCD_PASSWORD_FILE": str(scratch / "pw-n2")})
        assert wait_for(lambda: len(fl.status()["nodes"]) == 2, timeout=30, interval=0.5), \
            fl.netctl("fleet", "status").stderr
        path = scratch / "auth.yaml"
        path.write_text(POLICY)
        out = fl.netctl("push", str(path), "--canary", "1")
        assert out.returncode == 0, out.stdout + out.stderr
        assert fl.status()["converged"]
        # n1's user reads its own assignment, but no other node's, and writes only its own
        # status.
        with inside(fl.etcd.ns):
            store = Store(Endpoint(fl.etcd.local_url, user="node-n1", password="pw-n1"))
            assert store.get(assignment_key("n1")) is not None
            with pytest.raises(FleetError, match="permission denied"):
                store.get(assignment_key("n2"))
            with pytest.raises(FleetError, match="permission denied"):
                store.put(status_key("n2"), "{}")
            with pytest.raises(FleetError, match="permission denied"):
                store.put(assignment_key("n1"), "{}")
            store.close()
            with pytest.raises(FleetError, match="authentication failed"):
                Store(Endpoint(fl.etcd.local_url, user="node-n1", password="wrong"))


def make_pki(d: Path) -> dict[str, str]:
    """A CA, etcd's certificate for 127.0.0.1, and a client certificate."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    # etcd's gateway calls etcd itself with the server's certificate: it is a client too.
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\n"
                                 "extendedKeyUsage=serverAuth,clientAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        ssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
            "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))
    return {"ca": str(d / "ca.crt"), "cert": str(d / "server.crt"),
            "key": str(d / "server.key"), "client_cert": str(d / "client.crt"),
            "client_key": str(d / "client.key")}


def test_tls_with_client_certificates(scratch):
    pki = scratch / "pki"
    pki.mkdir()
    tls = make_pki(pki)
    with fleet(scratch, count=0, tls=tls) as fl:
        client = {"NETCTL_ETCD_CA": tls["ca"], "NETCTL_ETCD_CERT": tls["client_cert"],
                  "NETCTL_ETCD_KEY": tls["client_key"]}
        out = fl.netctl("fleet", "status", "--etcd-ca", tls["ca"])   # no client certificate
        assert out.returncode == 1 and "unreachable" in out.stderr and "Traceback" not in \
            out.stderr, out.stderr
        fl.operator_env.update(client)
        fl.dry_agent("t1", env=client)
        assert wait_for(lambda: len(fl.status()["nodes"]) == 1, timeout=30, interval=0.5)
        path = scratch / "tls.yaml"
        path.write_text(POLICY)
        out = fl.netctl("push", str(path))
        assert out.returncode == 0, out.stdout + out.stderr
        assert fl.status()["converged"]
