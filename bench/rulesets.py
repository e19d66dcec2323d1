"""Benchmark rule sets: N rules of which only the last matches the flood.

The flood is 60-byte UDP frames from FLOOD_SRC to FLOOD_DST:FLOOD_DPORT.  The first N-1 rules
are mixed, as real rule sets are: source prefixes of many lengths in both families, TCP and
UDP, single ports and ranges, and some rules on the flood's own source but another port (a
linear filter must look at the port as well to pass them).  None of them matches the flood;
rule N drops it.  Deterministic: the same N gives the same rules.

The rules are disjoint (no packet matches two), so first-match and any-match semantics
agree.  Each system under test gets the same rules in its own language: a netctl policy, an nftables
linear chain, an nftables interval set (one rule), iptables-restore input for the raw table,
and xdp-filter commands where its rule model reaches (it matches on addresses or ports, not
on both together).
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


@dataclass(frozen=True)
class BenchRule:
    src: str               # prefix
    proto: str             # tcp | udp
    dport: tuple[int, int]

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


def rules(n: int) -> list[BenchRule]:
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
    out.append(BenchRule(f"{FLOOD_SRC}/32", "udp", (FLOOD_DPORT, FLOOD_DPORT)))
    return out


def _port(dport: tuple[int, int]) -> str:
    lo, hi = dport
    return str(lo) if lo == hi else f"{lo}-{hi}"


def netctl_policy(bench: list[BenchRule], dev: str | None = None) -> str:
    lines = ["version: 1"]
    if dev:
        lines.append(f"interfaces: [{{name: {dev}}}]")
    lines += ["defaults: {ingress: accept, egress: accept}", "rules:"]
    for i, r in enumerate(bench):
        action = "drop"
        lines.append(f"  - {{name: r{i}, action: {action}, src: {r.src}, proto: {r.proto}, "
                     f"dport: {_port(r.dport)}}}")
    return "\n".join(lines) + "\n"


def nft_linear(bench: list[BenchRule], dev: str) -> str:
    """One rule per bench rule in an ingress-hook chain (as early as nftables goes)."""
    out = ["table netdev nctlbench {", f"  chain ingress {{ type filter hook ingress device "
           f'"{dev}" priority -500; policy accept;']
    for r in bench:
        fam = "ip" if r.family == 4 else "ip6"
        out.append(f"    {fam} saddr {r.src} {r.proto} dport {_port(r.dport)} counter drop")
    out += ["  }", "}"]
    return "\n".join(out) + "\n"


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
            unique = dict.fromkeys(f"{r.src} . {r.proto} . {_port(r.dport)}" for r in items)
            elems = ", ".join(unique)
            out.append(f"    elements = {{ {elems} }}")
        out.append("  }")
    out += [f"  chain ingress {{ type filter hook ingress device \"{dev}\" priority -500; "
            "policy accept;",
            "    ip saddr . meta l4proto . th dport @rules4 counter drop",
            "    ip6 saddr . meta l4proto . th dport @rules6 counter drop", "  }", "}"]
    return "\n".join(out) + "\n"


def iptables_raw(bench: list[BenchRule], family: int) -> str:
    out = ["*raw", ":PREROUTING ACCEPT [0:0]"]
    for r in bench:
        if r.family != family:
            continue
        out.append(f"-A PREROUTING -s {r.src} -p {r.proto} -m {r.proto} --dport "
                   f"{_port(r.dport).replace('-', ':')} -j DROP")
    out.append("COMMIT")
    return "\n".join(out) + "\n"
