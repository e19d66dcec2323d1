"""Benchmark rule sets: N rules of which only the last matches the flood.

Two floods of 60-byte UDP frames to FLOOD_DST:FLOOD_DPORT: the fixed flood, one flow from
FLOOD_SRC; and the random-source flood, whose source is drawn anew for every frame within
RANDOM_SRC_NET (16,777,216 addresses: far more flows than a flow cache holds, so nearly
every frame is a flow never seen before).  The last rule drops the flood: FLOOD_SRC/32 for
the fixed flood, RANDOM_SRC_NET for the random one (``rules(n, mix, flood)``); the N-1 rules
before it are the same for both floods and none of them matches either flood.

Two mixes of those N-1 rules (``MIXES``):

- ``bench``: the rules of real rule sets, drawn one shape at a time: source prefixes of
  many lengths in both families, TCP and UDP, single ports and ranges from a few common
  starting ports, and some rules on the flood's own source but another port (a linear
  filter must look at the port as well to pass them).
- ``mixed``: rules of three shapes over regions of their own.  Half are single IPv4
  sources with nothing else (any protocol, any port) in MIXED_SINGLES_NET; a quarter are TCP
  rules on one prefix, MIXED_TCP_NET, each with its own destination port (thousands of
  ports at 10,000 rules); a quarter are UDP port ranges (random start, 1 to 1,000 ports)
  on /20 to /24 prefixes inside RANDOM_SRC_NET, so the random flood's sources fall in them
  and only the port tells them apart (no range holds FLOOD_DPORT).  Shuffled together.

Deterministic: the same N, mix and flood give the same rules.  The rules are disjoint (no
packet matches two), so first-match and any-match semantics agree.  Each system under test
gets the same rules in its own language: a netctl policy, an nftables linear chain, an
nftables interval set (one rule), iptables-restore input for the raw table, and an address
list for xdp-filter where its rule model reaches (it matches on addresses or ports, not on
both together, and on whole addresses, not prefixes).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

FLOOD_SRC = "10.200.0.1"
FLOOD_DST = "10.200.0.2"
FLOOD_SPORT = 4000
FLOOD_DPORT = 9
SEED = 20261125
# The random-source flood draws the last three bytes of its source address per frame.
RANDOM_SRC_NET = "10.0.0.0/8"
MIXED_SINGLES_NET = "172.16.0.0/12"
MIXED_TCP_NET = "192.168.0.0/16"

MIXES = ("bench", "mixed")
FLOODS = ("fixed", "random")


@dataclass(frozen=True)
class BenchRule:
    src: str                             # prefix
    proto: str | None = None             # tcp | udp; None: any protocol (and no port)
    dport: tuple[int, int] | None = None  # None: any port

    def __post_init__(self):
        if self.dport is not None and self.proto is None:
            raise ValueError(f"{self}: a port needs a protocol here")

    @property
    def family(self) -> int:
        return ipaddress.ip_network(self.src).version


class _Boxes:
    """The rules drawn so far, to keep every new one disjoint from them: a rule may share
    addresses with another of its protocol only with disjoint ports.  Disjoint rules mean
    the same with first-match (netctl, linear chains) and any-match (sets) semantics, and
    nftables' concatenated interval sets refuse overlapping elements."""

    def __init__(self):
        self.at: dict[tuple, list[tuple[str, int, int]]] = {}    # prefix -> (proto, lo, hi)
        self.below: dict[tuple, list[tuple]] = {}                 # ancestor -> prefixes
        self.lengths = {4: set(), 6: set()}

    @staticmethod
    def _key(net) -> tuple:
        return (net.version, net.prefixlen, int(net.network_address))

    def _ancestors(self, net) -> list[tuple]:
        bits = net.max_prefixlen
        value = int(net.network_address)
        return [(net.version, plen, value >> (bits - plen) << (bits - plen) if plen else 0)
                for plen in self.lengths[net.version] if plen <= net.prefixlen]

    def fits(self, net, proto: str, lo: int, hi: int) -> bool:
        near = self._ancestors(net) + self.below.get(self._key(net), [])
        for key in near:
            for p, a, b in self.at.get(key, ()):
                if p == proto and a <= hi and lo <= b:
                    return False
        return True

    def add(self, net, proto: str, lo: int, hi: int) -> None:
        key = self._key(net)
        if key not in self.at:
            self.lengths[net.version].add(net.prefixlen)
            bits = net.max_prefixlen
            value = int(net.network_address)
            for plen in range(net.prefixlen):
                anc = (net.version, plen, value >> (bits - plen) << (bits - plen) if plen else 0)
                self.below.setdefault(anc, []).append(key)
        self.at.setdefault(key, []).append((proto, lo, hi))


def last_rule(flood: str) -> BenchRule:
    """The rule that drops the flood."""
    if flood not in FLOODS:
        raise ValueError(f"unknown flood {flood!r} (one of {', '.join(FLOODS)})")
    src = f"{FLOOD_SRC}/32" if flood == "fixed" else RANDOM_SRC_NET
    return BenchRule(src, "udp", (FLOOD_DPORT, FLOOD_DPORT))


def rules(n: int, mix: str = "bench", flood: str = "fixed") -> list[BenchRule]:
    """N rules of ``mix`` of which only the last matches ``flood``."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r} (one of {', '.join(MIXES)})")
    last = last_rule(flood)
    if n < 1:
        raise ValueError("at least one rule (the one that matches the flood)")
    return (_bench_mix(n) if mix == "bench" else _mixed_mix(n)) + [last]


def _bench_mix(n: int) -> list[BenchRule]:
    rng = random.Random(SEED + n)
    out: list[BenchRule] = []
    boxes = _Boxes()
    flood = ipaddress.ip_address(FLOOD_SRC)
    boxes.add(ipaddress.ip_network(f"{FLOOD_SRC}/32"), "udp", FLOOD_DPORT, FLOOD_DPORT)
    while len(out) < n - 1:
        kind = rng.random()
        proto = rng.choice(("tcp", "udp"))
        lo = rng.choice((22, 25, 53, 80, 123, 443, 1024, 3306, 5000, 8080, 10000))
        dport = (lo, lo) if rng.random() < 0.6 else (lo, lo + rng.choice((1, 10, 100, 999)))
        if FLOOD_DPORT in range(dport[0], dport[1] + 1):
            continue
        if kind < 0.05:
            src = f"{FLOOD_SRC}/32"              # the flood's source, another port
        elif kind < 0.8:
            plen = rng.choice((8, 12, 16, 20, 22, 24, 24, 24, 26, 28, 30, 32, 32))
            net = ipaddress.IPv4Network((rng.getrandbits(32), plen), strict=False)
            if flood in net or net.overlaps(ipaddress.ip_network("10.200.0.0/16")):
                continue
            src = str(net)
        else:
            plen = rng.choice((32, 40, 48, 48, 56, 64, 64, 128))
            value = 0x20010DB8 << 96 | rng.getrandbits(96)
            src = str(ipaddress.IPv6Network((value, plen), strict=False))
        net = ipaddress.ip_network(src)
        if not boxes.fits(net, proto, *dport):
            continue
        boxes.add(net, proto, *dport)
        out.append(BenchRule(src, proto, dport))
    return out


def _mixed_mix(n: int) -> list[BenchRule]:
    rng = random.Random(f"mixed/{SEED}/{n}")
    singles = (n - 1) // 2
    tcp = (n - 1) // 4
    udp = n - 1 - singles - tcp
    if tcp > 65535:
        raise ValueError(f"{n} rules: more TCP rules than ports")
    out: list[BenchRule] = []
    base = ipaddress.ip_network(MIXED_SINGLES_NET)
    # Neither the network nor the broadcast address of the region: plain host addresses.
    for offset in rng.sample(range(1, base.num_addresses - 1), singles):
        out.append(BenchRule(f"{base.network_address + offset}/32"))
    out += [BenchRule(MIXED_TCP_NET, "tcp", (port, port))
            for port in rng.sample(range(1, 65536), tcp)]
    region = ipaddress.ip_network(RANDOM_SRC_NET)
    boxes = _Boxes()
    drawn = 0
    while drawn < udp:
        plen = rng.randint(20, 24)
        net = ipaddress.IPv4Network(
            (int(region.network_address) | rng.getrandbits(32 - region.prefixlen), plen),
            strict=False)
        width = rng.randint(1, 1000)
        lo = rng.randint(1, 65536 - width)
        hi = lo + width - 1
        if lo <= FLOOD_DPORT <= hi or not boxes.fits(net, "udp", lo, hi):
            continue
        boxes.add(net, "udp", lo, hi)
        out.append(BenchRule(str(net), "udp", (lo, hi)))
        drawn += 1
    rng.shuffle(out)
    return out


def _port(dport: tuple[int, int]) -> str:
    lo, hi = dport
    return str(lo) if lo == hi else f"{lo}-{hi}"


def netctl_policy(bench: list[BenchRule], dev: str | None = None,
                  flow_cache: str | None = None) -> str:
    lines = ["version: 1"]
    if dev:
        lines.append(f"interfaces: [{{name: {dev}}}]")
    if flow_cache:
        lines.append(f"flow_cache: {flow_cache}")
    lines += ["defaults: {ingress: accept, egress: accept}", "rules:"]
    for i, r in enumerate(bench):
        fields = [f"name: r{i}", "action: drop", f"src: {r.src}"]
        if r.proto:
            fields.append(f"proto: {r.proto}")
        if r.dport:
            fields.append(f"dport: {_port(r.dport)}")
        lines.append(f"  - {{{', '.join(fields)}}}")
    return "\n".join(lines) + "\n"


def nft_linear(bench: list[BenchRule], dev: str) -> str:
    """One rule per bench rule in an ingress-hook chain (as early as nftables goes)."""
    out = ["table netdev nctlbench {", f"  chain ingress {{ type filter hook ingress device "
           f'"{dev}" priority -500; policy accept;']
    for r in bench:
        fam = "ip" if r.family == 4 else "ip6"
        match = f"{fam} saddr {r.src}"
        if r.dport:
            match += f" {r.proto} dport {_port(r.dport)}"
        elif r.proto:
            match += f" meta l4proto {r.proto}"
        out.append(f"    {match} counter drop")
    out += ["  }", "}"]
    return "\n".join(out) + "\n"


def _element(r: BenchRule) -> str:
    """A rule as a set element; an absent field is its whole range.  (A packet whose
    protocol has no ports reaches a set element only through `th dport`'s bytes, or not at
    all: none of the floods is such a packet.)"""
    proto = r.proto or "0-255"
    port = _port(r.dport) if r.dport else "0-65535"
    return f"{r.src} . {proto} . {port}"


def nft_set(bench: list[BenchRule], dev: str) -> str:
    """The rules as interval-set elements: (source prefix, protocol, port range) per family,
    one lookup rule per family."""
    v4 = [r for r in bench if r.family == 4]
    v6 = [r for r in bench if r.family == 6]
    out = ["table netdev nctlbench {"]
    for fam, items, addr in (("4", v4, "ipv4_addr"), ("6", v6, "ipv6_addr")):
        out.append(f"  set rules{fam} {{ type {addr} . inet_proto . inet_service; "
                   "flags interval; ")
        if items:
            unique = dict.fromkeys(_element(r) for r in items)
            elems = ", ".join(unique)
            out.append(f"    elements = {{ {elems} }}")
        out.append("  }")
    out += [f"  chain ingress {{ type filter hook ingress device \"{dev}\" priority -500; "
            "policy accept;",
            "    ip saddr . meta l4proto . th dport @rules4 counter drop",
            "    ip6 saddr . meta l4proto . th dport @rules6 counter drop", "  }", "}"]
    return "\n".join(out) + "\n"


def nft_prefix_set(prefixes: list[str], dev: str) -> str:
    """An IPv4 interval set of ``prefixes`` (disjoint) and one rule that drops its sources:
    nftables' way of holding an address set."""
    out = ["table netdev nctlbench {", "  set blk { type ipv4_addr; flags interval;"]
    if prefixes:
        out.append("    elements = { " + ",\n      ".join(prefixes) + " }")
    out += ["  }", f"  chain ingress {{ type filter hook ingress device \"{dev}\" "
            "priority -500; policy accept;", "    ip saddr @blk counter drop", "  }", "}"]
    return "\n".join(out) + "\n"


def iptables_raw(bench: list[BenchRule], family: int) -> str:
    out = ["*raw", ":PREROUTING ACCEPT [0:0]"]
    for r in bench:
        if r.family != family:
            continue
        match = f"-s {r.src}"
        if r.proto:
            match += f" -p {r.proto}"
        if r.dport:
            match += f" -m {r.proto} --dport {_port(r.dport).replace('-', ':')}"
        out.append(f"-A PREROUTING {match} -j DROP")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def xdp_filter_addresses(bench: list[BenchRule]) -> list[str] | None:
    """What xdp-filter can hold of the rules: their IPv4 network addresses, each once, the
    last rule's last; None when the last rule (the one the flood must meet) is a prefix,
    which xdp-filter's whole-address model cannot express."""
    last = ipaddress.ip_network(bench[-1].src)
    if last.version != 4 or last.prefixlen != 32:
        return None
    addresses = dict.fromkeys(str(ipaddress.ip_network(r.src).network_address)
                              for r in bench[:-1] if ipaddress.ip_network(r.src).version == 4)
    addresses.pop(str(last.network_address), None)
    return [*addresses, str(last.network_address)]
