"""The frozen policy model: what a validated policy file means.

Everything here is plain data.  The loader (`netctl.policy.load`) builds it from YAML
and is the only place that knows about files and line numbers; the compiler and the
reference evaluator read it and never see YAML.

Normal forms the loader guarantees, so that readers need no special cases:

* An omitted field is ``None`` ("matches anything"); a given field is a non-empty tuple.
* Addresses are ``ipaddress`` networks in network form (host bits are an error), or
  ``PrefixSet`` items: a named set (``sets:``, written ``"@NAME"`` in a rule) whose
  prefixes are kept as integers.  A field may hold both kinds; each item appears once.
* Protocols are numbers.  A rule with ports and no ``proto`` gets ``(6, 17)``.
* ``icmp_type`` holds ``(family, type)`` pairs, resolved per family from names, so
  ``echo-request`` under ``proto: [icmp, icmpv6]`` becomes ``((4, 8), (6, 128))``.
  ``icmp_code`` holds code ranges (``PortRange`` over 0-255).
* ``proto`` never holds an IPv6 extension-header number (0, 43, 44, 60): those headers
  are walked past, never a packet's protocol, and the loader refuses them.
* ``families`` is the set of IP versions (4, 6) a packet must have for the rule to match
  at all.  Literal fields never leave it empty (that is a validation error); a set's
  contents may (a set with no IPv6 prefix under ``proto: icmpv6``, an empty set): the rule
  then matches nothing, and validate warns.  Sets are data that change without the policy
  changing (a refreshed file, live edits), so their contents never make a policy invalid.
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from typing import Any, final

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


BITS = {4: 32, 6: 128}
Prefix = tuple[int, int]   # (prefix length, network as an int), host bits zero


@final   # readers test ``type(item) is PrefixSet``
@dataclass(frozen=True, eq=False)
class PrefixSet:
    """A named address set: prefixes of both families, used in rules as ``"@NAME"``.

    Sets are what large rule counts usually are (blocklists, country lists): up to millions
    of prefixes, so the contents are integers, never ``ipaddress`` objects (a million of
    those cost hundreds of MB and seconds to build).  ``v4`` and ``v6`` are tuples of
    ``(prefix length, network int)``, sorted and unique: the compiler reads them as they are.

    ``source`` is the absolute path of the file the set was read from (None for
    ``elements:``) and ``sha256`` that file's digest as read.  ``added`` and ``removed`` are
    the live edits (``netctl set add/del``) in force, as ``(family, prefix length,
    network)``, and ``base`` the set as its file or elements give it (None without edits):
    ``v4``/``v6`` hold ``base`` less ``removed`` plus ``added``.  Equality is by contents;
    the hash only by name and sizes (hashing a million tuples again and again would be slow,
    and equal sets have equal sizes).
    """

    name: str
    v4: tuple[Prefix, ...] = ()
    v6: tuple[Prefix, ...] = ()
    source: str | None = None
    line: int = 0
    added: tuple[tuple[int, int, int], ...] = ()
    removed: tuple[tuple[int, int, int], ...] = ()
    sha256: str | None = None
    base: PrefixSet | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrefixSet):
            return NotImplemented
        return self is other or (
            self.name == other.name and self.source == other.source
            and self.line == other.line and self.sha256 == other.sha256
            and self.added == other.added and self.removed == other.removed
            and self.v4 == other.v4 and self.v6 == other.v6 and self.base == other.base)

    def __hash__(self) -> int:
        return hash((self.name, len(self.v4), len(self.v6)))

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)

    def __str__(self) -> str:
        return f"@{self.name}"

    def __repr__(self) -> str:
        return f"PrefixSet(@{self.name}: {len(self.v4)} IPv4, {len(self.v6)} IPv6)"

    def __getstate__(self) -> dict[str, Any]:
        # The lookup indexes are derived: rebuilt on demand, never pickled.  The contents
        # are pickled packed (one bytes object per family, not a million tuples for the
        # pickler to remember).
        state = {k: v for k, v in self.__dict__.items()
                 if k not in _PREFIXSET_CACHES and k not in ("v4", "v6")}
        state["packed"] = (_PACKED_FORMAT, _pack_prefixes(self.v4, 4),
                           _pack_prefixes(self.v6, 6))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        form, v4, v6 = state.pop("packed", (None, None, None))
        if form != _PACKED_FORMAT:
            raise ValueError("a set pickled in another format (by another netctl)")
        state["v4"] = _unpack_prefixes(v4, 4)
        state["v6"] = _unpack_prefixes(v6, 6)
        self.__dict__.update(state)

    @property
    def families(self) -> frozenset[int]:
        """The IP versions the set has prefixes of (empty for an empty set)."""
        return frozenset(f for f, part in ((4, self.v4), (6, self.v6)) if part)

    def family(self, family: int) -> tuple[Prefix, ...]:
        return self.v4 if family == 4 else self.v6

    def match(self, address: Address) -> Prefix | None:
        """The longest prefix of the set that contains ``address``, or None."""
        value = int(address)
        bits = BITS[address.version]
        for plen, networks in self._lengths[address.version]:
            masked = value >> (bits - plen) << (bits - plen) if plen else 0
            if masked in networks:
                return plen, masked
        return None

    def __contains__(self, address: object) -> bool:
        return isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
            and self.match(address) is not None

    @cached_property
    def _lengths(self) -> dict[int, list[tuple[int, frozenset[int]]]]:
        """Per family, per prefix length present (longest first), the set of networks:
        a membership test is one set probe per distinct length."""
        out: dict[int, list[tuple[int, frozenset[int]]]] = {}
        for family in (4, 6):
            by_len: dict[int, list[int]] = {}
            for plen, network in self.family(family):
                by_len.setdefault(plen, []).append(network)
            out[family] = [(plen, frozenset(nets)) for plen, nets in
                           sorted(by_len.items(), reverse=True)]
        return out

    def overlapping(self, family: int, lo: int, hi: int, limit: int
                    ) -> list[tuple[int, int]] | None:
        """The set's prefixes of ``family`` that overlap the address range [lo, hi], as
        (first, last) address ranges; None when there are more than ``limit``.  Those that
        contain ``lo`` are found by a probe per prefix length, those that start after it by
        bisection of the prefixes sorted by first address."""
        bits = BITS[family]
        out = []
        for plen, networks in self._lengths[family]:
            masked = lo >> (bits - plen) << (bits - plen) if plen else 0
            if masked in networks:
                out.append((masked, masked | ((1 << (bits - plen)) - 1)))
        starts, ends = self._spans[family]
        k = bisect.bisect_right(starts, lo)
        while k < len(starts) and starts[k] <= hi:
            out.append((starts[k], ends[k]))
            if len(out) > limit:
                return None
            k += 1
        return out if len(out) <= limit else None

    @cached_property
    def _spans(self) -> dict[int, tuple[list[int], list[int]]]:
        """Per family, the prefixes as address ranges sorted by first address."""
        out = {}
        for family in (4, 6):
            bits = BITS[family]
            spans = sorted((net, net | ((1 << (bits - plen)) - 1))
                           for plen, net in self.family(family))
            out[family] = ([s for s, _ in spans], [e for _, e in spans])
        return out


_PREFIXSET_CACHES = frozenset({"_lengths", "_spans"})


def _pack_prefixes(prefixes: tuple[Prefix, ...], family: int) -> list[int]:
    """Prefixes as one int each, (length << bits) | network: ints are pickled without the
    memo a million tuples would fill."""
    shift = BITS[family]
    return [plen << shift | net for plen, net in prefixes]


def _unpack_prefixes(data: list[int], family: int) -> tuple[Prefix, ...]:
    return tuple(map(divmod, data, repeat(1 << BITS[family])))


_PACKED_FORMAT = 1


AddressItem = Network | PrefixSet   # an item of Rule.src / Rule.dst


def item_families(item: AddressItem) -> frozenset[int]:
    """The IP versions an address item can match: a network's own, a set's contents'."""
    if isinstance(item, PrefixSet):
        return item.families
    return _V4 if item.version == 4 else _V6


_V4, _V6 = frozenset({4}), frozenset({6})


def address_matches(items: tuple[AddressItem, ...], address: Address) -> AddressItem | None:
    """The first item of a src/dst field that contains ``address``, or None.  Items of the
    other family never match (an IPv4Address is never "in" an IPv6Network)."""
    for item in items:
        if isinstance(item, PrefixSet):
            if item.match(address) is not None:
                return item
        elif item.version == address.version and address in item:
            return item
    return None


@dataclass(frozen=True)
class Rule:
    """One ordered rule.  ``index`` is its position among all rules (0-based)."""

    name: str
    index: int
    line: int
    direction: Direction
    action: Action
    src: tuple[AddressItem, ...] | None = None
    dst: tuple[AddressItem, ...] | None = None
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
        # An expectation holds a verdict or a rule name, never neither.
        return f"rule {self.rule}" if self.rule is not None else str(self.verdict.value)  # type: ignore[union-attr]


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
    sets: tuple[PrefixSet, ...] = ()   # every set the policy defines, used or not
    source_sha256: str | None = None   # the policy file's digest as it was read
    # The text as read (newlines translated), kept with the state by apply (`netctl show`);
    # not part of what the policy means.
    text: str | None = field(default=None, compare=False, repr=False)

    def default(self, direction: Direction) -> Action:
        return self.default_ingress if direction is Direction.INGRESS else self.default_egress

    def rule(self, name: str) -> Rule | None:
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None

    def prefix_set(self, name: str) -> PrefixSet | None:
        for item in self.sets:
            if item.name == name:
                return item
        return None
