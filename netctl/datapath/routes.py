"""Routes: next hops resolved at apply time, the host's addresses, netctl's kernel routes.

Routes compile into the route tries with the plan; their next hops are runtime state outside
it (egress ifindex, next hop address, MACs for XDP): docs/datapath.md, Forwarding.
"""

from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass

from .. import abi
from ..errors import AttachError, NetctlError
from ..policy.model import Policy
from . import attach as att
from .hooks import HOOK_TC, Found
from .state import NextHop


@dataclass
class ResolvedRoute:
    """A route's next hop as recorded (``hop``) and as written to the ``nexthops`` map."""

    hop: NextHop
    packed: bytes


def available_cc() -> set[str]:
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            return set(f.read().split())
    except OSError:
        return set()


def resolve_routes(links: att.Links, policy: Policy, warnings: list[str],
                   found: list[Found] = ()) -> list[ResolvedRoute]:  # type: ignore[assignment]
    """Each route's next hop: egress interface, the next hop's MAC from the neighbour table
    (asking the kernel to resolve it when unknown), and the packed map value.  A missing
    interface, one without an Ethernet header or an unknown congestion control is an error
    before anything changes.  ``found`` (target, link, hooks) says where netctl enforces
    egress rules: the XDP path judges them before redirecting there."""
    out = []
    available = None
    egress_judged = {link.index for _t, link, hooks in found if hooks.egress == HOOK_TC}
    for route in policy.routes:
        link = links.find(route.dev)
        if link is None:
            raise AttachError(route.dev, errno.ENODEV, f"route to {route.dst} (line "
                              f"{route.line}): no such interface in this network namespace")
        if link.layer != att.LAYER_ETHERNET:
            raise AttachError(route.dev, errno.EOPNOTSUPP, f"route to {route.dst} (line "
                              f"{route.line}): {route.dev} has no Ethernet header (link type "
                              f"{link.link_type_name}); the forwarding fast path rewrites "
                              "MACs, so leave this route to the kernel's routing table")
        if route.cc:
            available = available if available is not None else available_cc()
            if route.cc not in available:
                raise NetctlError(f"{policy.source}:{route.line}: route to {route.dst}: "
                                  f"congestion control {route.cc!r} is not available here "
                                  f"(available: {', '.join(sorted(available)) or 'none'})")
        via = str(route.via)
        dmac = links.neighbour(link.index, via) or _resolve(links, link.index, via,
                                                             route.via.version)
        if dmac is None:
            warnings.append(f"route to {route.dst}: next hop {via} on {route.dev} is not "
                            "resolved yet; the XDP path leaves its packets to the kernel "
                            "until an apply finds it (the tc path resolves it itself)")
        judged = link.index in egress_judged
        out.append(ResolvedRoute(
            NextHop(dst=str(route.dst), via=via, dev=route.dev, ifindex=link.index,
                    smac=link.mac, dmac=dmac, cc=route.cc, judge_egress=judged),
            abi.pack_nexthop(link.index, route.via.version, int(route.via), link.mac, dmac,
                             judged)))
    return out


def _resolve(links: att.Links, index: int, via: str, family: int,
             wait: float = 1.0) -> str | None:
    """Ask the kernel to resolve ``via`` (a datagram to the discard port makes it send an
    ARP or neighbour solicitation) and wait a little for the answer."""
    import socket as _socket

    af = _socket.AF_INET if family == 4 else _socket.AF_INET6
    with contextlib.suppress(OSError), _socket.socket(af, _socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.sendto(b"", (via, 9))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        mac = links.neighbour(index, via)
        if mac:
            return mac
        time.sleep(0.05)
    return None


def hops(nexthops: list[ResolvedRoute]) -> list[NextHop]:
    """The next hops as recorded in the generation (without their map values)."""
    return [n.hop for n in nexthops]


def packed(nexthops: list[ResolvedRoute]) -> list[bytes]:
    """The ``nexthops`` map values, by route index."""
    return [n.packed for n in nexthops]


def local_keys(links: att.Links) -> set[bytes]:
    """The ``local_addrs`` keys: the host's addresses, which are never forwarded."""
    import ipaddress

    return {abi.pack_local_key(family, int(ipaddress.ip_address(address)))
            for family, address in links.addresses()}


def sync_kernel_routes(links: att.Links, policy: Policy, nexthops: list[ResolvedRoute],
                       warnings: list[str]) -> None:
    """Routes with `cc:` also become kernel routes (for traffic this host starts, with that
    congestion control); netctl's kernel routes no longer wanted go."""
    wanted = {}
    for route, nh in zip(policy.routes, nexthops, strict=True):
        if route.cc:
            wanted[str(route.dst)] = (nh.hop, route.cc)
    for dst, (hop, cc) in wanted.items():
        try:
            links.set_route(dst, hop.via, hop.ifindex, cc)
        except NetctlError as exc:
            warnings.append(str(exc))
    for family, dst in links.netctl_routes():
        if dst not in wanted:
            links.delete_route(family, dst)
