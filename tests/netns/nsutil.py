"""Network namespaces for tests, on netctl's own lab module (netctl/kernel/netlab.py): unique
names, always removed.

Names start with NS_PREFIX and carry the pid and a counter, so parallel runs never
collide and a leftover is easy to attribute.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

from netctl.kernel import netlab
from netctl.kernel.netlab import inside, namespaces, netns_cookie, run

__all__ = ["NS_PREFIX", "inside", "namespaces", "netns", "netns_cookie", "run", "veth_pair"]

NS_PREFIX = "nctl-t"
_counter = itertools.count()


@contextlib.contextmanager
def netns(tag: str = "x") -> Iterator[str]:
    with netlab.netns(netlab.unique(NS_PREFIX, tag)) as name:
        yield name


@contextlib.contextmanager
def veth_pair(ns_a: str, ns_b: str, addr_a: str, addr_b: str) -> Iterator[tuple[str, str]]:
    """A veth pair with one end in each namespace, addressed and up, removed on exit."""
    n = next(_counter)
    with netlab.veth(ns_a, ns_b, f"va{n}", f"vb{n}") as (a, b):
        run("ip", "addr", "add", addr_a, "dev", a, ns=ns_a)
        run("ip", "addr", "add", addr_b, "dev", b, ns=ns_b)
        yield a, b
