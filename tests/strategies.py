"""Hypothesis strategies: valid Policy objects built straight from the model, and packets
aimed at the edges of those policies.

Policies honour the loader's normal forms (see netctl.policy.model): omitted field None,
given field a non-empty tuple, networks in network form, protocols as numbers, ports
without proto normalised to (6, 17), icmp_type as (family, type) pairs for the ICMP
families the rule can match, ``families`` computed as the loader does, ``index`` equal to
the position.  Addresses come from a few nearby anchors so prefixes nest and overlap;
ports and ICMP types from small vocabularies so ranges share boundaries.  Some policies
have small named sets (both families, sometimes empty, sometimes shared by rules) that
address fields use alone or beside literal prefixes.

Packets are biased to edges: a prefix's first and last address and the ones just outside,
a range's lo/hi and lo-1/hi+1, both families, TCP/UDP/ICMP/ICMPv6 and other protocols
(including ICMP numbers in the wrong family), NDP types, fragments, both directions.
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from netctl.policy.model import (
    ICMP_PROTOS,
    PORT_PROTOS,
    Action,
    Direction,
    FlowCache,
    Packet,
    Policy,
    PortRange,
    PrefixSet,
    Rule,
)
from netctl.policy.sets import make_set

ANCHORS = {
    4: [int(ipaddress.ip_address(a)) for a in
        ("10.1.2.3", "10.1.2.200", "10.1.130.7", "10.200.0.1", "192.0.2.7", "0.0.0.0",
         "255.255.255.255")],
    6: [int(ipaddress.ip_address(a)) for a in
        ("2001:db8::1", "2001:db8::ff", "2001:db8:1::1", "2001:db8:8000::1", "fe80::1", "::",
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")],
}
BITS = {4: 32, 6: 128}
PLENS = {4: [0, 1, 8, 9, 16, 17, 23, 24, 25, 31, 32],
         6: [0, 1, 16, 32, 33, 48, 64, 112, 127, 128]}
PORT_ANCHORS = [0, 1, 21, 22, 23, 80, 443, 1023, 1024, 8000, 8080, 65534, 65535]
ICMP_TYPES = [0, 3, 8, 11, 128, 129, 133, 134, 135, 136, 137, 255]
OTHER_PROTOS = [47, 51, 132, 255]   # 0, 43, 44, 60: IPv6 extension headers, refused
PROTO_CHOICES = [1, 6, 17, 58, *OTHER_PROTOS]


@st.composite
def networks(draw, family: int | None = None):
    family = family or draw(st.sampled_from([4, 6]))
    anchor = draw(st.sampled_from(ANCHORS[family]))
    plen = draw(st.sampled_from(PLENS[family]) | st.integers(0, BITS[family]))
    bits = BITS[family]
    net = (anchor >> (bits - plen)) << (bits - plen)
    cls = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    return cls((net, plen))


def address_lists(families: list[int], pool: tuple[PrefixSet, ...] = ()):
    """1-3 items: networks, and (with a pool of sets) sometimes sets."""
    fams = st.sampled_from(families)
    items = fams.flatmap(networks)
    if pool:
        items = items | st.sampled_from(pool)
    return st.lists(items, min_size=1, max_size=3, unique=True).map(tuple)


@st.composite
def prefix_sets(draw, name: str):
    """A small set: 0-6 prefixes of either family, near the anchors like any prefix."""
    nets = draw(st.lists(networks(), max_size=6))
    return make_set(name, [(n.version, n.prefixlen, int(n.network_address)) for n in nets],
                    line=1)


def expand(items) -> list:
    """A field's items as ipaddress networks (a set's prefixes one by one)."""
    out = []
    for item in items or ():
        if isinstance(item, PrefixSet):
            for family in (4, 6):
                cls = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
                out.extend(cls((net, plen)) for plen, net in item.family(family))
        else:
            out.append(item)
    return out


@st.composite
def port_ranges(draw):
    lo = draw(st.sampled_from(PORT_ANCHORS) | st.integers(0, 65535))
    hi = draw(st.sampled_from([lo, lo + 1, 1023, 8100, 65535]) | st.integers(lo, 65535))
    return PortRange(lo, min(max(hi, lo), 65535))


def port_lists():
    return st.lists(port_ranges(), min_size=1, max_size=3, unique=True).map(tuple)


def _families_of(networks_, static: bool = False) -> frozenset[int]:
    """The families a field allows: its items' (a set's contents), or with ``static`` as the
    loader checks conflicts, a set counting as both."""
    if networks_ is None:
        return frozenset({4, 6})
    out: set[int] = set()
    for item in networks_:
        if isinstance(item, PrefixSet):
            out |= {4, 6} if static else item.families
        else:
            out.add(item.version)
    return frozenset(out)


def _proto_families(protos) -> frozenset[int]:
    fams: set[int] = set()
    for p in protos:
        fams |= {ICMP_PROTOS[p]} if p in ICMP_PROTOS else {4, 6}
    return frozenset(fams)


@st.composite
def rules(draw, index: int, families=(4, 6), pool: tuple[PrefixSet, ...] = ()):
    """One valid rule, or None when the drawn fields cannot match together (as the loader
    would refuse it).  Its ``families`` narrow to what its sets hold (maybe to none: the rule
    then matches nothing, as the loader allows)."""
    fams = list(families)
    src = draw(st.none() | address_lists(fams, pool))
    dst = draw(st.none() | address_lists(fams, pool))
    kind = draw(st.sampled_from(["none", "proto", "ports", "icmp"]))
    proto = sport = dport = icmp_type = icmp_code = None
    if kind == "proto":
        proto = tuple(draw(st.lists(st.sampled_from(PROTO_CHOICES), min_size=1, max_size=3,
                                    unique=True)))
    elif kind == "ports":
        proto = draw(st.sampled_from([(6, 17), (6,), (17,)]))
        sport = draw(st.none() | port_lists())
        dport = draw(port_lists() if sport is None else st.none() | port_lists())
    family_set = _families_of(src, True) & _families_of(dst, True)
    if proto is not None:
        family_set &= _proto_families(proto)
    if kind == "icmp":
        proto = tuple(draw(st.lists(st.sampled_from([1, 58]), min_size=1, max_size=2,
                                    unique=True)))
        family_set &= _proto_families(proto)
        icmp_fams = sorted(ICMP_PROTOS[p] for p in proto if ICMP_PROTOS[p] in family_set)
        if not icmp_fams:
            return None
        codes = draw(st.none() | st.lists(code_ranges(), min_size=1, max_size=2, unique=True))
        icmp_code = tuple(codes) if codes else None
        if icmp_code is None or draw(st.integers(0, 3)):
            types = draw(st.lists(st.sampled_from(ICMP_TYPES) | st.integers(0, 255),
                                  min_size=1, max_size=3, unique=True))
            # a name may exist in one family only: sometimes keep a type for one family only
            only = draw(st.none() | st.sampled_from(icmp_fams))
            icmp_type = tuple((f, t) for f in icmp_fams for t in types if only in (None, f))
    if not family_set:
        return None
    family_set &= _families_of(src) & _families_of(dst)
    return Rule(
        name=f"r{index}", index=index, line=index + 1,
        direction=draw(st.sampled_from([Direction.INGRESS, Direction.EGRESS])),
        action=draw(st.sampled_from([Action.ACCEPT, Action.DROP])),
        src=src, dst=dst, proto=proto, sport=sport, dport=dport, icmp_type=icmp_type,
        icmp_code=icmp_code, log=draw(st.booleans()), families=family_set)


@st.composite
def code_ranges(draw):
    lo = draw(st.sampled_from([0, 1, 3, 4, 255]) | st.integers(0, 255))
    hi = draw(st.sampled_from([lo, min(lo + 1, 255), 255]) | st.integers(lo, 255))
    return PortRange(lo, hi)


@st.composite
def policies(draw, max_rules: int = 8, families=(4, 6)):
    n = draw(st.integers(0, max_rules))
    pool: tuple[PrefixSet, ...] = ()
    if families == (4, 6) and draw(st.integers(0, 3)) == 0:   # a quarter have sets
        pool = tuple(draw(prefix_sets(f"s{i}")) for i in range(draw(st.integers(1, 2))))
    out: list[Rule] = []
    for _ in range(n):
        rule = draw(rules(len(out), families, pool))
        if rule is not None:
            out.append(rule)
    return Policy(
        rules=tuple(out),
        sets=pool,
        default_ingress=draw(st.sampled_from([Action.ACCEPT, Action.DROP])),
        default_egress=draw(st.sampled_from([Action.ACCEPT, Action.DROP])),
        allow_ndp=draw(st.booleans()),
        flow_cache=draw(st.sampled_from(list(FlowCache))))


# ---- packets -----------------------------------------------------------------------------


def _edges(net) -> list[int]:
    """A prefix's first and last address and the ones just outside it."""
    top = (1 << BITS[net.version]) - 1
    first, last = int(net.network_address), int(net.broadcast_address)
    return sorted({first, last, max(first - 1, 0), min(last + 1, top)})


def _port_edges(ranges) -> list[int]:
    return sorted({p for r in ranges for p in (r.lo, r.hi, max(r.lo - 1, 0),
                                              min(r.hi + 1, 65535))})


class _Edges:
    """Edge values of a whole policy, computed once per policy."""

    def __init__(self, policy: Policy):
        self.addresses = {f: set(ANCHORS[f]) for f in (4, 6)}
        ports = set(PORT_ANCHORS)
        for rule in policy.rules:
            for nets in (rule.src, rule.dst):
                for net in expand(nets):
                    self.addresses[net.version].update(_edges(net))
            for ranges in (rule.sport, rule.dport):
                ports.update(_port_edges(ranges or ()))
        self.address_lists = {f: sorted(v) for f, v in self.addresses.items()}
        self.ports = sorted(ports)


def _address(draw, edges: _Edges, family: int, nets) -> int:
    own = [n for n in expand(nets) if n.version == family]
    choice = draw(st.integers(0, 9))
    if own and choice < 6:
        return draw(st.sampled_from(_edges(draw(st.sampled_from(own)))))
    if choice < 9:
        return draw(st.sampled_from(edges.address_lists[family]))
    return draw(st.integers(0, (1 << BITS[family]) - 1))


def _port(draw, edges: _Edges, ranges) -> int:
    choice = draw(st.integers(0, 9))
    if ranges and choice < 6:
        return draw(st.sampled_from(_port_edges(ranges)))
    if choice < 9:
        return draw(st.sampled_from(edges.ports))
    return draw(st.integers(0, 65535))


@st.composite
def packets(draw, policy: Policy, edges: _Edges | None = None):
    """(packet, target rule or None): a packet near one rule of the policy (its prefixes'
    and ranges' edges, its protocols) most of the time, else near anything or anywhere."""
    edges = edges or _Edges(policy)
    target = draw(st.sampled_from(policy.rules)) if policy.rules and draw(st.integers(0, 4)) \
        else None
    if target is not None and target.families and draw(st.integers(0, 5)):
        family = draw(st.sampled_from(sorted(target.families)))
    else:
        family = draw(st.sampled_from([4, 6]))
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    src = _address(draw, edges, family, target.src if target else None)
    dst = _address(draw, edges, family, target.dst if target else None)
    if target is not None and target.proto is not None and draw(st.integers(0, 4)):
        proto = draw(st.sampled_from(target.proto))
    else:
        proto = draw(st.sampled_from([6, 17, 1, 58, *OTHER_PROTOS]) | st.integers(0, 255))
    fragment = draw(st.integers(0, 7)) == 0
    sport = dport = icmp_type = icmp_code = None
    types = st.sampled_from(ICMP_TYPES) | st.integers(0, 255)
    if target is not None and target.icmp_type and draw(st.booleans()):
        types = st.sampled_from([t for _, t in target.icmp_type])
    codes = st.sampled_from([0, 1, 4, 255]) | st.integers(0, 255)
    if target is not None and target.icmp_code and draw(st.booleans()):
        codes = st.sampled_from(sorted({c for r in target.icmp_code
                                        for c in (r.lo, r.hi, max(r.lo - 1, 0),
                                                  min(r.hi + 1, 255))}))
    if not fragment and proto in PORT_PROTOS:
        sport = _port(draw, edges, target.sport if target else None)
        dport = _port(draw, edges, target.dport if target else None)
    elif not fragment and ICMP_PROTOS.get(proto) == family:
        icmp_type, icmp_code = draw(types), draw(codes)
    elif draw(st.integers(0, 3)) == 0:
        # fields the datapath never reads here (fragment, wrong family): must be ignored
        if proto in PORT_PROTOS:
            sport, dport = _port(draw, edges, None), _port(draw, edges, None)
        else:
            icmp_type, icmp_code = draw(types), draw(codes)
    # neighbour discovery is exempt only with hop limit 255: draw both sides of that
    ttl = draw(st.sampled_from([64, 255, 255, 1]) | st.integers(0, 255))
    if family == 6 and draw(st.integers(0, 9)) == 0:
        src = int(ipaddress.IPv6Address("fe80::1"))   # a link-local router (redirects)
    return Packet(src=make(src), dst=make(dst), proto=proto, sport=sport, dport=dport,
                  icmp_type=icmp_type, icmp_code=icmp_code, fragment=fragment,
                  ttl=ttl), target


directions = st.sampled_from([Direction.INGRESS, Direction.EGRESS])


@st.composite
def probes(draw, policy: Policy, edges: _Edges | None = None):
    """(packet, direction): mostly the direction of the rule the packet was aimed at."""
    packet, target = draw(packets(policy, edges))
    if target is not None and draw(st.integers(0, 4)):
        return packet, target.direction
    return packet, draw(directions)


@st.composite
def policy_and_packets(draw, max_rules: int = 8, n_packets: int = 12):
    policy = draw(policies(max_rules))
    edges = _Edges(policy)
    return policy, draw(st.lists(probes(policy, edges), min_size=1, max_size=n_packets))


# ---- hand-written policies in the same normal forms ----------------------------------------


def _ranges(spec) -> tuple[PortRange, ...] | None:
    if spec is None:
        return None
    out = []
    for item in spec if isinstance(spec, list | tuple) else [spec]:
        if isinstance(item, int):
            out.append(PortRange(item, item))
        else:
            lo, _, hi = str(item).partition("-")
            out.append(PortRange(int(lo), int(hi or lo)))
    return tuple(out)


def _nets(spec):
    if spec is None:
        return None
    items = spec if isinstance(spec, list | tuple) else [spec]
    return tuple(ipaddress.ip_network(i) for i in items)


def make_rule(index: int, *, name: str | None = None, direction: str = "ingress",
              action: str = "drop", src=None, dst=None, proto=None, sport=None, dport=None,
              icmp_type=None, log: bool = False) -> Rule:
    """A Rule in normal form from short specs: addresses as strings, ports as 22 or
    "80-90", proto as numbers or names, icmp_type as (family, type) pairs."""
    src, dst = _nets(src), _nets(dst)
    sport, dport = _ranges(sport), _ranges(dport)
    if proto is not None:
        from netctl.policy.load import PROTOCOLS

        proto = tuple(proto) if isinstance(proto, list | tuple) else (proto,)
        proto = tuple(PROTOCOLS[p] if isinstance(p, str) else p for p in proto)
    elif sport is not None or dport is not None:
        proto = (6, 17)
    families = _families_of(src) & _families_of(dst)
    if proto is not None:
        families &= _proto_families(proto)
    return Rule(name=name or f"r{index}", index=index, line=index + 1,
                direction=Direction(direction), action=Action(action), src=src, dst=dst,
                proto=proto, sport=sport, dport=dport,
                icmp_type=tuple(icmp_type) if icmp_type is not None else None, log=log,
                families=families)


def make_policy(*specs: dict, ingress: str = "accept", egress: str = "accept",
                allow_ndp: bool = True) -> Policy:
    return Policy(rules=tuple(make_rule(i, **spec) for i, spec in enumerate(specs)),
                  default_ingress=Action(ingress), default_egress=Action(egress),
                  allow_ndp=allow_ndp)
