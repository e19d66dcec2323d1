"""Network namespaces for tests: unique names, always removed.

Names start with NS_PREFIX and carry the pid and a counter, so parallel runs never
collide and a leftover is easy to attribute.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator

NS_PREFIX = "nctl-t"
_counter = itertools.count()


def run(*cmd: str, check: bool = True, ns: str | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a command (argv list, never a shell string), optionally inside namespace `ns`."""
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120, **kw)


def namespaces() -> set[str]:
    out = run("ip", "netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@contextlib.contextmanager
def netns(tag: str = "x") -> Iterator[str]:
    name = f"{NS_PREFIX}{os.getpid()}-{next(_counter)}{tag}"[:32]
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "set", "lo", "up", ns=name)
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


@contextlib.contextmanager
def veth_pair(ns_a: str, ns_b: str, addr_a: str, addr_b: str) -> Iterator[tuple[str, str]]:
    """A veth pair with one end in each namespace, addressed and up.  Deleting the
    namespaces deletes the pair; this also removes it if the namespaces outlive it."""
    a, b = f"va{next(_counter)}", f"vb{next(_counter)}"
    run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        run("ip", "link", "set", a, "netns", ns_a)
        run("ip", "link", "set", b, "netns", ns_b)
        run("ip", "addr", "add", addr_a, "dev", a, ns=ns_a)
        run("ip", "addr", "add", addr_b, "dev", b, ns=ns_b)
        run("ip", "link", "set", a, "up", ns=ns_a)
        run("ip", "link", "set", b, "up", ns=ns_b)
        yield a, b
    finally:
        run("ip", "link", "del", a, check=False, ns=ns_a)
        run("ip", "link", "del", a, check=False)


# One copy of entering a namespace, the product's (it raises when entering or returning fails).
from netctl.lab import inside  # noqa: E402, F401


def netns_cookie(ns: str) -> int:
    import socket

    with inside(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 71, 8), "little")
