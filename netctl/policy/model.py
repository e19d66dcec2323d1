"""The frozen policy model: what a validated policy file means.

Everything here is plain data.  The loader (`netctl.policy.load`) builds it from YAML
and is the only place that knows about files and line numbers; the compiler and the
reference evaluator read it and never see YAML.

Normal forms the loader guarantees, so that readers need no special cases:

* An omitted field is ``None`` ("matches anything"); a given field is a non-empty tuple.
* Addresses are ``ipaddress`` networks in network form (host bits are an error).
* Protocols are numbers.  A rule with ports and no ``proto`` gets ``(6, 17)``.
* ``icmp_type`` holds ``(family, type)`` pairs, resolved per family from names, so
  ``echo-request`` under ``proto: [icmp, icmpv6]`` becomes ``((4, 8), (6, 128))``.
  ``icmp_code`` holds code ranges (``PortRange`` over 0-255).
* ``proto`` never holds an IPv6 extension-header number (0, 43, 44, 60): those headers
  are walked past, never a packet's protocol, and the loader refuses them.
* ``families`` is the set of IP versions (4, 6) a packet must have for the rule to match
  at all; it is never empty (an empty set is a validation error).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PORT_PROTOS = frozenset({PROTO_TCP, PROTO_UDP})
ICMP_PROTOS = {PROTO_ICMP: 4, PROTO_ICMPV6: 6}  # protocol -> the only family it exists in

# ICMPv6 neighbour discovery (RFC 4861): router solicitation/advertisement, neighbour
# solicitation/advertisement, redirect.  Accepted before any rule unless allow_ndp: false,
# when it is what a host would process (see ndp_exempt).
NDP_TYPES = frozenset(range(133, 138))
NDP_REDIRECT = 137
NDP_HOP_LIMIT = 255
# IPv6 extension headers: the parser walks past them, so no packet has one as its protocol.
# AH (51) is not among them: it ends the walk and is the protocol, in IPv6 as in IPv4.
IPV6_EXT_HDRS = frozenset({0, 43, 44, 60})
_LINK_LOCAL_V6 = ipaddress.IPv6Network("fe80::/10")


class Action(enum.StrEnum):
    ACCEPT = "accept"
    DROP = "drop"


class Direction(enum.StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class XdpMode(enum.StrEnum):
    AUTO = "auto"
    NATIVE = "native"
    GENERIC = "generic"
    OFF = "off"


class FlowCache(enum.StrEnum):
    AUTO = "auto"    # on, bypassed while a CPU's hit rate is too low to pay
    ON = "on"
    OFF = "off"


class TcHook(enum.StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True)
class PortRange:
    lo: int
    hi: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


@dataclass(frozen=True)
class Rule:
    """One ordered rule.  ``index`` is its position among all rules (0-based)."""

    name: str
    index: int
    line: int
    direction: Direction
    action: Action
    src: tuple[Network, ...] | None = None
    dst: tuple[Network, ...] | None = None
    proto: tuple[int, ...] | None = None
    sport: tuple[PortRange, ...] | None = None
    dport: tuple[PortRange, ...] | None = None
    icmp_type: tuple[tuple[int, int], ...] | None = None
    icmp_code: tuple[PortRange, ...] | None = None   # code ranges, 0-255
    log: bool = False
    metrics: bool = False    # `netctl exporter --rules marked` exports its counters
    families: frozenset[int] = frozenset({4, 6})

    @property
    def has_l4(self) -> bool:
        """Whether the rule needs the transport header (ports or ICMP type)."""
        return (self.sport is not None or self.dport is not None
                or self.icmp_type is not None or self.icmp_code is not None)

    @property
    def has_icmp(self) -> bool:
        """Whether the rule matches on the ICMP header (type, code or both)."""
        return self.icmp_type is not None or self.icmp_code is not None


@dataclass(frozen=True)
class Interface:
    name: str
    xdp: XdpMode = XdpMode.AUTO
    tc: tuple[TcHook, ...] = (TcHook.INGRESS, TcHook.EGRESS)
    line: int = 0


@dataclass(frozen=True)
class Route:
    dst: Network
    via: Address
    dev: str
    line: int = 0
    cc: str | None = None    # TCP congestion control for this host's flows to dst


@dataclass(frozen=True)
class Conntrack:
    """Connection tracking settings (used with ``stateful: true``): table size in entries,
    idle timeouts in seconds."""

    size: int = 65536
    tcp_established: int = 432000   # 5 days, as the kernel's own conntrack
    tcp_closing: int = 120          # after FIN or RST
    tcp_unconfirmed: int = 60       # before the handshake completes (the kernel's SYN_RECV)
    udp: int = 60
    icmp: int = 30


@dataclass(frozen=True)
class Packet:
    """The header fields the datapath classifies on, after VLAN and extension headers.

    ``proto`` is the upper-layer protocol (the last IPv6 next header).  ``fragment`` is
    True for a non-first fragment, which carries no transport header: its ports and ICMP
    type are unknown and ignored.
    """

    src: Address
    dst: Address
    proto: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    fragment: bool = False
    ttl: int = 64          # IPv4 TTL or IPv6 hop limit

    @property
    def family(self) -> int:
        return self.src.version


def icmp_ranges(rule: Rule, family: int) -> tuple[tuple[int, int], ...]:
    """The rule's ICMP types and codes of one family as ranges of ``type << 8 | code``, the
    value the datapath looks up (one 16-bit axis for both fields); adjacent ranges merged."""
    if rule.icmp_type is None:
        types: list[int] = list(range(256))
    else:
        types = sorted({t for f, t in rule.icmp_type if f == family})
    codes = [(0, 255)] if rule.icmp_code is None else sorted({(r.lo, r.hi)
                                                               for r in rule.icmp_code})
    out = [(t << 8 | lo, t << 8 | hi) for t in types for lo, hi in codes]
    merged: list[tuple[int, int]] = []
    for lo, hi in out:  # adjacent ranges (every code of consecutive types) as one
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def default_ttl(family: int, proto: int, icmp_type: int | None) -> int:
    """The TTL (hop limit) a packet gets when a test or explain does not give one: 255 for
    neighbour discovery, which is always sent with it, else 64."""
    if family == 6 and proto == PROTO_ICMPV6 and icmp_type in NDP_TYPES:
        return NDP_HOP_LIMIT
    return 64


def ndp_exempt(packet: Packet) -> bool:
    """ICMPv6 neighbour discovery that a host would process, which ``allow_ndp`` accepts
    before any rule: types 133-137 with hop limit 255 (RFC 4861 discards any other: it
    was forwarded), a redirect only from a link-local source.  Other ND meets the rules."""
    if not (packet.family == 6 and packet.proto == PROTO_ICMPV6 and not packet.fragment
            and packet.icmp_type in NDP_TYPES and packet.ttl == NDP_HOP_LIMIT):
        return False
    return packet.icmp_type != NDP_REDIRECT or packet.src in _LINK_LOCAL_V6


@dataclass(frozen=True)
class Expectation:
    """What a policy test expects: a verdict, or that a named rule decides."""

    verdict: Action | None = None
    rule: str | None = None

    def __str__(self) -> str:
        return f"rule {self.rule}" if self.rule is not None else str(self.verdict.value)


@dataclass(frozen=True)
class PolicyTest:
    packet: Packet
    expect: Expectation
    direction: Direction = Direction.INGRESS
    line: int = 0


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    default_ingress: Action = Action.ACCEPT
    default_egress: Action = Action.ACCEPT
    stateful: bool = False
    conntrack: Conntrack = Conntrack()
    allow_ndp: bool = True
    log_sample: int = 1      # one in this many drops and log: true matches goes to monitor
    flow_cache: FlowCache = FlowCache.AUTO  # remember each flow's classification
    routes: tuple[Route, ...] = ()
    tests: tuple[PolicyTest, ...] = ()
    version: int = 1
    source: str = "<policy>"

    def default(self, direction: Direction) -> Action:
        return self.default_ingress if direction is Direction.INGRESS else self.default_egress

    def rule(self, name: str) -> Rule | None:
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None
