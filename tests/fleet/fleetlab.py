"""A fleet in network namespaces: a real etcd in its own namespace, nodes each in a
namespace of their own with a management veth to etcd's and a data veth to one traffic
namespace, and `netctl agent` in every node.  Every namespace, process, pin and temporary
directory is removed on exit, even when the test fails.

    traffic ns  tf1 ─── fl0  node n1  mg0 ─── em1  etcd ns (etcd on 0.0.0.0:PORT)
                tf2 ─── fl0  node n2  mg0 ─── em2
                tf3 ─── fl0  node n3  mg0 ─── em3

Interface names inside the nodes are the same everywhere (fl0, mg0), as on real hosts, so
one policy fits them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netctl.kernel.netlab import (
    inside,
    netns,
    netns_cookie,
    run,
    udp_arrivals,
    unique,
    veth,
)
from netctl.paths import PIN_ROOT, STATE_ROOT

REPO = Path(__file__).resolve().parents[2]
NS_PREFIX = "nctl-f"
ETCD_IP = "10.79.{k}.1"
NODE_IP = "10.79.{k}.2"
TRAFFIC_IP = "10.88.{k}.1"
DATA_IP = "10.88.{k}.2"


def netctl_argv(*args: str) -> list[str]:
    """netctl from this checkout (not whatever `netctl` on PATH imports)."""
    return [sys.executable, "-m", "netctl", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
    env.pop("NETCTL_ETCD", None)
    return env


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Etcd:
    """etcd in namespace ``ns``, data in ``data_dir``; restartable on the same data."""

    ns: str
    data_dir: Path
    port: int
    proc: subprocess.Popen | None = None
    tls: dict[str, str] | None = None    # ca, cert, key (the server's); None: plain HTTP

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def local_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, extra: tuple[str, ...] = ()) -> None:
        peer = self.port + 1
        tls = ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
               "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"] if self.tls else []
        log = open(self.data_dir.parent / "etcd.log", "ab")   # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "etcd", "--name", "fleet-test",
             "--data-dir", str(self.data_dir), *tls,
             "--listen-client-urls", f"{self.scheme}://0.0.0.0:{self.port}",
             "--advertise-client-urls", self.local_url,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"fleet-test=http://127.0.0.1:{peer}", *extra],
            stdout=log, stderr=log)
        log.close()
        if not wait_for(self.healthy, timeout=20, interval=0.2):
            raise RuntimeError(f"etcd did not start: {self.log_tail()}")

    def healthy(self) -> bool:
        import ssl

        with inside(self.ns), socket.socket() as raw:
            raw.settimeout(0.5)
            try:
                raw.connect(("127.0.0.1", self.port))
                s = raw
                if self.tls:
                    ctx = ssl.create_default_context(cafile=self.tls["ca"])
                    ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
                    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                with s:
                    s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                    return b'"health":"true"' in s.recv(4096)
            except OSError:
                return False

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)
            self.proc = None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.data_dir.parent / "etcd.log").read_text()[-2000:]
        return ""


@dataclass
class Node:
    name: str
    k: int
    ns: str
    url: str            # etcd as this node reaches it
    agent: subprocess.Popen | None = None
    log: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Fleet:
    etcd: Etcd
    traffic: str
    nodes: list[Node]
    tmp: Path
    lease_ttl: int = 3
    dry: list[subprocess.Popen] = field(default_factory=list)

    # -- agents
    def start_agent(self, node: Node, *extra: str, env: dict[str, str] | None = None) -> None:
        node.log = self.tmp / f"agent-{node.name}.log"
        with open(node.log, "ab") as log:
            node.agent = subprocess.Popen(
                ["ip", "netns", "exec", node.ns, *netctl_argv(
                    "agent", "--etcd", node.url, "--node", node.name,
                    "--lease-ttl", str(self.lease_ttl), "--state-dir", str(self.tmp / "state"),
                    "--label", f"slot={'first' if node.k == 1 else 'other'}", *extra)],
                stdout=log, stderr=log, env=child_env(**(env or {})))

    def agent_log(self, node: Node) -> str:
        return node.log.read_text() if node.log and node.log.exists() else ""

    # -- the operator's side, run in etcd's namespace
    operator_env: dict[str, str] = field(default_factory=dict)   # NETCTL_ETCD_* of pushes

    def netctl(self, *args: str, timeout: float = 120, etcd: str | None = None
               ) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.etcd.ns, *netctl_argv(
            *args, "--etcd", etcd or self.etcd.local_url)], capture_output=True, text=True,
            timeout=timeout, env=child_env(**self.operator_env))

    def compact(self) -> int:
        """Compact etcd's history up to its current revision (what a watch from an older
        revision can no longer be served from); the revision."""
        def etcdctl(*args: str) -> str:
            return run("etcdctl", "--endpoints", self.etcd.local_url, *args,
                       ns=self.etcd.ns).stdout
        revision = json.loads(etcdctl("endpoint", "status", "-w", "json"))[0]["Status"][
            "header"]["revision"]
        etcdctl("compact", str(revision))
        return int(revision)

    def dry_agent(self, name: str, env: dict[str, str] | None = None,
                  etcd: str | None = None) -> subprocess.Popen:
        """A --dry-run agent in etcd's namespace (no node namespace of its own)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.etcd.ns, *netctl_argv(
                "agent", "--etcd", etcd or self.etcd.local_url, "--node", name, "--dry-run",
                "--lease-ttl", "10", "--state-dir", str(self.tmp / "state"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(**(env or {})))
        self.dry.append(proc)
        return proc

    def push(self, text: str, *args: str, name: str = "fleet",
             timeout: float = 120) -> subprocess.CompletedProcess:
        path = self.tmp / f"{name}.yaml"
        path.write_text(text)
        return self.netctl("push", str(path), *args, timeout=timeout)

    def status(self) -> dict:
        out = self.netctl("fleet", "status", "-o", "json")
        if not out.stdout.strip():
            raise AssertionError(f"fleet status: exit {out.returncode}: {out.stderr}")
        return json.loads(out.stdout)

    def rows(self) -> dict[str, dict]:
        return {r["node"]: r for r in self.status()["nodes"]}

    def converged(self, timeout: float = 30) -> bool:
        return wait_for(lambda: self.status()["converged"], timeout, interval=0.3)

    def registered(self, names: list[str], timeout: float = 30) -> bool:
        return wait_for(lambda: all(self.rows().get(n, {}).get("state") not in
                                    (None, "dead") for n in names), timeout, interval=0.3)

    # -- traffic: UDP datagrams from the traffic namespace to a node
    def arrive(self, node: Node, dport: int, count: int = 5, wait: float = 0.3) -> int:
        return udp_arrivals(self.traffic, node.ns, DATA_IP.format(k=node.k), dport, count,
                            wait, tag="fleet")

    def enforces(self, node: Node, dropped: int, passed: int) -> bool:
        """``node`` drops UDP to port ``dropped`` and lets ``passed`` through."""
        return self.arrive(node, dropped) == 0 and self.arrive(node, passed) == 5


def _remove_netctl_state(ns: str) -> None:
    cookie = netns_cookie(ns)
    run(*netctl_argv("detach", "--all"), ns=ns, check=False, env=child_env())
    shutil.rmtree(Path(PIN_ROOT) / f"ns{cookie}", ignore_errors=True)
    shutil.rmtree(Path(STATE_ROOT) / f"ns{cookie}", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (Path(STATE_ROOT) / f"ns{cookie}.lock").unlink()


def free_port(ns: str) -> int:
    with inside(ns), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port if port < 65000 else 23790


@contextlib.contextmanager
def fleet(tmp: Path, count: int = 3, agents: bool = True,
          tls: dict[str, str] | None = None) -> Iterator[Fleet]:
    """``count`` nodes and etcd (over TLS with ``tls``), agents running (unless not
    ``agents``)."""
    with contextlib.ExitStack() as stack:
        ens = stack.enter_context(netns(unique(NS_PREFIX, "e")))
        tns = stack.enter_context(netns(unique(NS_PREFIX, "t")))
        nodes = []
        for k in range(1, count + 1):
            ns = stack.enter_context(netns(unique(NS_PREFIX, f"n{k}")))
            stack.callback(_remove_netctl_state, ns)
            stack.enter_context(veth(ns, ens, "mg0", f"em{k}"))
            run("ip", "addr", "add", f"{NODE_IP.format(k=k)}/24", "dev", "mg0", ns=ns)
            run("ip", "addr", "add", f"{ETCD_IP.format(k=k)}/24", "dev", f"em{k}", ns=ens)
            stack.enter_context(veth(ns, tns, "fl0", f"tf{k}"))
            run("ip", "addr", "add", f"{DATA_IP.format(k=k)}/24", "dev", "fl0", ns=ns)
            run("ip", "addr", "add", f"{TRAFFIC_IP.format(k=k)}/24", "dev", f"tf{k}", ns=tns)
            nodes.append(Node(f"n{k}", k, ns, ""))
        (tmp / "etcd").mkdir(parents=True)
        etcd = Etcd(ens, tmp / "etcd" / "data", free_port(ens), tls=tls)
        for node in nodes:
            node.url = f"{etcd.scheme}://{ETCD_IP.format(k=node.k)}:{etcd.port}"
        etcd.start()
        stack.callback(etcd.kill)
        the_fleet = Fleet(etcd, tns, nodes, tmp)

        def stop_agents() -> None:
            for p in [n.agent for n in nodes if n.agent] + the_fleet.dry:
                stop(p, signal.SIGKILL)
        stack.callback(stop_agents)
        # Neighbours resolved before any policy, so traffic counts only the tests' packets.
        for node in nodes:
            run("ping", "-c", "1", "-W", "2", DATA_IP.format(k=node.k), ns=tns)
        if agents:
            for node in nodes:
                the_fleet.start_agent(node)
            if not the_fleet.registered([n.name for n in nodes]):
                raise RuntimeError("agents did not register: " + " | ".join(
                    the_fleet.agent_log(n)[-500:] for n in nodes))
        yield the_fleet
