"""Network namespace labs: namespaces and veth pairs that are always removed, commands run
inside a namespace, and a thread entered into one.  The one copy used by `netctl lab`, the
namespace tests (tests/netns) and the benchmarks (bench/).

Names carry the creating process's pid and a counter, so parallel runs never collide and a
leftover is easy to attribute.  Every command is an argv list, never a shell string.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import subprocess
from collections.abc import Iterator

from ..errors import NetctlError

_CLONE_NEWNET = 0x40000000
_SO_NETNS_COOKIE = 71
_counter = itertools.count()


class LabError(NetctlError):
    """A command of the lab failed: names the command and what it printed."""


def run(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 120,
        **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` (inside namespace ``ns`` when given), output captured as text; with
    ``check``, a non-zero exit raises LabError naming the command and its error output."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False,
                            **kw)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(full)}: exit {result.returncode}: "
                       f"{(result.stderr or result.stdout).strip()[-500:]}")
    return result


def unique(prefix: str, tag: str = "") -> str:
    """A namespace name no other run uses: ``prefix``, this pid, a counter, ``tag``."""
    return f"{prefix}{os.getpid() % 100000}-{next(_counter)}{tag}"[:32]


def namespaces() -> set[str]:
    """The named network namespaces that exist now."""
    out = run("ip", "netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """Namespace ``name`` with its loopback up, deleted on exit (its links with it)."""
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "set", "lo", "up", ns=name)
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


@contextlib.contextmanager
def veth(ns_a: str, ns_b: str, name_a: str, name_b: str, queues: int = 1,
         quiet: bool = False) -> Iterator[tuple[str, str]]:
    """A veth pair, ``name_a`` in ``ns_a`` and ``name_b`` in ``ns_b``, both up, removed on
    exit.  ``queues``: RX and TX queues per end (one per CPU spreads a flood).  ``quiet``:
    IPv6 off on both ends, so the kernel sends nothing of its own (neighbour discovery,
    router solicitations) and every frame counted is one the caller sent."""
    qargs = ["numtxqueues", str(queues), "numrxqueues", str(queues)] if queues > 1 else []
    run("ip", "link", "add", name_a, "netns", ns_a, *qargs, "type", "veth", "peer", "name",
        name_b, "netns", ns_b, *qargs)
    try:
        for ns, ifname in ((ns_a, name_a), (ns_b, name_b)):
            if quiet:
                run("sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1", ns=ns,
                    check=False)
            run("ip", "link", "set", ifname, "up", ns=ns)
        yield name_a, name_b
    finally:
        run("ip", "link", "del", name_a, ns=ns_a, check=False)


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread in network namespace ``ns`` for the body (sockets keep theirs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    except OSError as exc:
        os.close(home)
        raise LabError(f"no network namespace {ns}: {exc.strerror}") from None
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise LabError(f"cannot enter namespace {ns}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            # A thread left in the lab's namespace would make every later socket there:
            # a failed return is an error, never ignored.
            if libc.setns(home, _CLONE_NEWNET) != 0:
                raise LabError("cannot return to the original network namespace: "
                               f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(target)
        os.close(home)


def netns_cookie(ns: str) -> int:
    """The kernel's cookie of namespace ``ns`` (netctl names its pins and state by it)."""
    import socket

    with inside(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8), "little")


def udp_arrivals(sender: str, receiver: str, dst: str, dport: int, count: int,
                 wait: float = 0.3, tag: str = "netctl") -> int:
    """Send ``count`` datagrams from namespace ``sender`` to ``dst``:``dport``, bound in
    namespace ``receiver``, through real sockets; how many arrived (the wait for the next
    one ends after ``wait`` seconds)."""
    import socket

    af = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with inside(receiver):
        rx = socket.socket(af, socket.SOCK_DGRAM)
    with inside(sender):
        tx = socket.socket(af, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((dst, dport))
        rx.settimeout(wait)
        for i in range(count):
            tx.sendto(f"{tag}-{i}".encode(), (dst, dport))
        got = 0
        with contextlib.suppress(TimeoutError):
            while got < count:
                rx.recv(2048)
                got += 1
    return got


def link_mac(ns: str, ifname: str) -> str:
    """The MAC address of ``ifname`` in ``ns``."""
    out = run("ip", "-j", "link", "show", ifname, ns=ns).stdout
    return json.loads(out)[0]["address"]
