"""A two-namespace lab for datapath tests: a traffic generator and a device under test
joined by a veth pair, addressed for IPv4 and IPv6, with netctl run inside the DUT
through `ip netns exec` as separate processes.  Everything is removed on exit, even when
the test fails: netctl's attachments, pins and state, the namespaces and the link."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nsutil import inside, netns, netns_cookie, run

from netctl.kernel.netlab import udp_arrivals, veth
from netctl.paths import PIN_ROOT, STATE_ROOT

REPO = Path(__file__).resolve().parents[2]
NETCTL = str(Path(sys.executable).with_name("netctl"))

GEN4, DUT4 = "10.123.0.1", "10.123.0.2"
GEN6, DUT6 = "fd00:123::1", "fd00:123::2"


@dataclass
class Lab:
    gen: str
    dut: str
    gen_if: str
    dut_if: str
    tmp: Path

    def netctl(self, *args: str, check: bool = True, env: dict | None = None):
        import os

        full_env = dict(os.environ, **(env or {}))
        result = run(NETCTL, *args, ns=self.dut, check=False, env=full_env)
        if check and result.returncode != 0:
            raise AssertionError(f"netctl {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def policy(self, text: str, name: str = "policy.yaml") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def apply(self, text: str, *args: str) -> dict:
        out = self.netctl("apply", self.policy(text), "--dev", self.dut_if, "-o", "json", *args)
        return json.loads(out.stdout)

    def status(self) -> dict:
        return json.loads(self.netctl("status", "-o", "json", check=False).stdout)

    def rule(self, name: str) -> dict:
        return next(r for r in self.status()["rules"] if r["name"] == name)

    # -- traffic
    def udp(self, count: int, family: int = 4, dport: int = 5555, to_dut: bool = True,
            wait: float = 0.3) -> int:
        """Send ``count`` datagrams (generator -> DUT, or back) through real sockets and
        return how many arrived."""
        dst = (DUT4 if family == 4 else DUT6) if to_dut else (GEN4 if family == 4 else GEN6)
        sender_ns, receiver_ns = (self.gen, self.dut) if to_dut else (self.dut, self.gen)
        return udp_arrivals(sender_ns, receiver_ns, dst, dport, count, wait)

    def ping(self, family: int = 4, count: int = 1) -> bool:
        target = DUT4 if family == 4 else DUT6
        result = run("ping", f"-{family}", "-c", str(count), "-W", "1", "-i", "0.2", target,
                     ns=self.gen, check=False)
        return result.returncode == 0

    def tcx_programs(self) -> list[tuple[str, int, str | None]]:
        """(direction, link id, program name) of every program on the DUT interface's tcx
        hooks (none where the kernel has no tcx)."""
        from netctl.datapath import attach as att

        with inside(self.dut), att.Links(link_dir="/nonexistent") as links:
            link = links.find(self.dut_if)
            if link is None:
                return []
            return [(d, a.link_id, att.prog_name(a.prog_id))
                    for d in ("ingress", "egress") for a in links.tcx_programs(link, d)]

    def leftovers(self) -> list[str]:
        """Anything netctl left behind in the DUT: XDP, tc filters, tcx links, clsact, pins,
        state."""
        out = []
        link = run("ip", "-d", "link", "show", self.dut_if, ns=self.dut).stdout
        if "xdp" in link.split("link/ether")[0] or " prog/xdp" in link:
            out.append(f"xdp on {self.dut_if}: {link}")
        for parent in ("ingress", "egress"):
            filters = run("tc", "filter", "show", "dev", self.dut_if, parent, ns=self.dut,
                          check=False).stdout
            if filters.strip():
                out.append(f"tc {parent} filters: {filters}")
        tcx = self.tcx_programs()
        if tcx:
            out.append(f"tcx programs: {tcx}")
        qdiscs = run("tc", "qdisc", "show", "dev", self.dut_if, ns=self.dut).stdout
        if "clsact" in qdiscs:
            out.append(f"qdisc: {qdiscs}")
        cookie = netns_cookie(self.dut)
        for path in (Path(PIN_ROOT) / f"ns{cookie}", Path(STATE_ROOT) / f"ns{cookie}"):
            if path.exists():
                out.append(f"{path} remains")
        return out


def _remove_netctl_state(ns: str) -> None:
    cookie = netns_cookie(ns)
    run(NETCTL, "detach", "--all", ns=ns, check=False)
    shutil.rmtree(Path(PIN_ROOT) / f"ns{cookie}", ignore_errors=True)
    shutil.rmtree(Path(STATE_ROOT) / f"ns{cookie}", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (Path(STATE_ROOT) / f"ns{cookie}.lock").unlink()


@contextlib.contextmanager
def lab(tmp: Path, queues: int = 1) -> Iterator[Lab]:
    with netns("g") as gen, netns("d") as dut:
        gen_if, dut_if = f"lg{gen[-8:]}"[:15], f"ld{dut[-8:]}"[:15]
        with veth(gen, dut, gen_if, dut_if, queues=queues):
            for ns, ifname, a4, a6 in ((gen, gen_if, GEN4, GEN6), (dut, dut_if, DUT4, DUT6)):
                run("ip", "addr", "add", f"{a4}/24", "dev", ifname, ns=ns)
                run("ip", "addr", "add", f"{a6}/64", "dev", ifname, "nodad", ns=ns)
            # Resolve neighbours before any policy is applied, so tests count only their own
            # packets.
            for family, target in ((4, DUT4), (6, DUT6)):
                if not wait_for(lambda f=family, t=target: run(
                        "ping", f"-{f}", "-c", "1", "-W", "1", t, ns=gen,
                        check=False).returncode == 0, timeout=10):
                    raise RuntimeError(f"lab: {target} unreachable before any policy")
            the_lab = Lab(gen, dut, gen_if, dut_if, tmp)
            try:
                yield the_lab
            finally:
                _remove_netctl_state(dut)


def wait_for(predicate, timeout: float = 3.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def finish(proc, timeout: float = 60) -> tuple[str, str]:
    """Wait for a process whose first line was read with readline() and return the rest of
    its stdout and its stderr.  (communicate() would read the pipes beneath the text
    wrappers and lose what readline() buffered.)  Its stderr must stay small."""
    import threading

    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        with proc.stdout, proc.stderr:
            out = proc.stdout.read()
            err = proc.stderr.read()
        proc.wait()
    finally:
        timer.cancel()
    return out, err
