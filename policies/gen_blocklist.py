#!/usr/bin/env python3
"""Generate policies/blocklist.yaml, a synthetic blocklist of a few thousand prefixes.

    python3 policies/gen_blocklist.py > policies/blocklist.yaml    # regenerate
    python3 policies/gen_blocklist.py --check                       # is the file current?

The output is deterministic (a fixed seed, no clock, no environment): running this twice
gives the same bytes, and tests/unit/test_policies.py checks that the committed file is
exactly what this script prints.

Every prefix comes from ranges that are never routed on the Internet, so the example can
never block a real network by accident:

    10.0.0.0/8        private (RFC 1918)
    100.64.0.0/10     shared address space (RFC 6598)
    198.18.0.0/15     benchmarking (RFC 2544)
    2001:db8::/32     documentation (RFC 3849)

Each list draws from its own pool, and each pool is cut into slots (/24 for IPv4, /48 for
IPv6) of which every prefix takes whole slots or a part of one slot, so no two prefixes
overlap.  That keeps the test expectations at the end of the file easy to reason about:
an address just past a prefix that ends inside its slot is blocked by nothing.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
from pathlib import Path

SEED = 20240601
OUTPUT = Path(__file__).with_name("blocklist.yaml")

# Prefix lengths and how often each is drawn: mostly /24s and /48s, many small IPv4
# blocks and single hosts, a few big ones.
V4_LENGTHS = {16: 1, 18: 1, 20: 2, 22: 2, 24: 10, 25: 2, 26: 3, 27: 3, 28: 4, 29: 4, 30: 4,
              32: 6}
V6_LENGTHS = {40: 1, 44: 2, 48: 10, 52: 2, 56: 5, 60: 2, 64: 8, 128: 4}
SLOT = {4: 24, 6: 48}

# Fixed entries, so the tests can show that a rule earlier in the list wins.
PARTNER = ["10.66.7.0/24", "2001:db8:1066:7::/64"]           # accepted before the blocklist
PARTNER_COVER = ["10.66.0.0/16", "2001:db8:1066::/48"]        # blocked as scanners

# rule name -> (direction, field, pools, number of IPv4 and IPv6 prefixes, extra fields)
LISTS = {
    "bl-scanners": ("ingress", "src", ["10.0.0.0/9", "100.64.0.0/11", "2001:db8:1000::/36"],
                    (1500, 500), {}),
    "bl-botnet": ("ingress", "src", ["10.128.0.0/9", "198.18.0.0/15", "2001:db8:2000::/36"],
                  (1000, 500), {}),
    "bl-mail-abusers": ("ingress", "src", ["100.96.0.0/12", "2001:db8:3000::/36"], (300, 100),
                        {"proto": "tcp", "dport": "[25, 465, 587]"}),
    "bl-egress-c2": ("egress", "dst", ["100.112.0.0/12", "2001:db8:4000::/36"], (200, 100), {}),
}

COMMENTS = {
    "bl-scanners": "sources seen scanning; also covers the partner's 10.66.0.0/16",
    "bl-botnet": "known botnet members",
    "bl-mail-abusers": "spam sources: only their SMTP traffic is dropped",
    "bl-egress-c2": "command-and-control servers this host must never reach",
}


class Pool:
    """Non-overlapping prefixes carved out of some networks, slot by slot."""

    def __init__(self, networks: list[str], used: set[tuple[int, int]]):
        self.networks = [ipaddress.ip_network(n) for n in networks]
        self.used = used  # (version, slot start) pairs taken, shared by every pool

    def carve(self, rng: random.Random, version: int, count: int) -> list:
        lengths = V4_LENGTHS if version == 4 else V6_LENGTHS
        choices, weights = list(lengths), list(lengths.values())
        nets = [n for n in self.networks if n.version == version]
        bits, slot = (32 if version == 4 else 128), SLOT[version]
        cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
        result = []
        while len(result) < count:
            base = rng.choice(nets)
            plen = rng.choices(choices, weights)[0]
            span = max(plen, base.prefixlen)
            # a random aligned prefix of length `span` inside `base`
            offset = rng.randrange(1 << (span - base.prefixlen)) << (bits - span)
            start = int(base.network_address) + offset
            first_slot = start >> (bits - slot) << (bits - slot)
            slots = range(first_slot, start + (1 << (bits - span)), 1 << (bits - slot))
            if any((version, s) in self.used for s in slots):
                continue
            self.used.update((version, s) for s in slots)
            result.append(cls((start, span)))
        return result


def generate() -> str:
    rng = random.Random(SEED)
    used: set[tuple[int, int]] = set()
    for cover in PARTNER_COVER:
        net = ipaddress.ip_network(cover)
        bits, slot = net.max_prefixlen, SLOT[net.version]
        start = int(net.network_address)
        for s in range(start, start + net.num_addresses, 1 << (bits - slot)):
            used.add((net.version, s))
    lists = {}
    for name, (_direction, _field, pools, (n4, n6), _extra) in LISTS.items():
        pool = Pool(pools, used)
        nets = pool.carve(rng, 4, n4) + pool.carve(rng, 6, n6)
        if name == "bl-scanners":
            nets += [ipaddress.ip_network(n) for n in PARTNER_COVER]
        lists[name] = sorted(nets, key=lambda n: (n.version, n))
    total = sum(len(v) for v in lists.values())

    out = [
        "# GENERATED FILE - do not edit by hand.",
        f"# Made by policies/gen_blocklist.py (deterministic, seed {SEED}):",
        "#     python3 policies/gen_blocklist.py > policies/blocklist.yaml",
        "# tests/unit/test_policies.py fails if this file and the script disagree.",
        "#",
        f"# A blocklist of {total} synthetic prefixes, IPv4 and IPv6, /16 to /32 and /40 to "
        "/128,",
        "# all inside private, shared, benchmarking or documentation space (10.0.0.0/8,",
        "# 100.64.0.0/10, 198.18.0.0/15, 2001:db8::/32) so it can never block a real network.",
        "#",
        "# Rules are tried in order: a partner exception first, then the lists (which do not",
        "# overlap each other), then one accept rule per address family for everything else.",
        "# However long the lists grow, the datapath classifies a packet in the same few map",
        "# lookups (longest-prefix-match tries), so a blocklist this size costs no more per",
        "# packet than a single rule.",
        "",
        "version: 1",
        "",
        "interfaces:",
        "  - name: eth0",
        "    xdp: auto",
        "    tc: [ingress, egress]",
        "",
        "defaults:",
        "  ingress: drop   # never reached: accept-rest-v4/v6 below decide first",
        "  egress: accept",
        "",
        "stateful: false   # a pure blocklist needs no connection tracking",
        "",
        "rules:",
        "  - name: allow-partner   # inside bl-scanners' 10.66.0.0/16, allowed because it is first",
        "    action: accept",
        f"    src: [{', '.join(PARTNER)}]",
        "",
    ]
    for name, (direction, field, _pools, _counts, extra) in LISTS.items():
        nets = lists[name]
        v4 = sum(1 for n in nets if n.version == 4)
        out.append(f"  - name: {name}   # {COMMENTS[name]}")
        if direction != "ingress":
            out.append(f"    direction: {direction}")
        out.append("    action: drop")
        out.append("    log: true")
        for key, value in extra.items():
            out.append(f"    {key}: {value}")
        out.append(f"    {field}:   # {v4} IPv4 and {len(nets) - v4} IPv6 prefixes")
        out.extend(f"      - {n}" for n in nets)
        out.append("")
    out += [
        "  - name: accept-rest-v4",
        "    action: accept",
        "    src: 0.0.0.0/0",
        "",
        "  - name: accept-rest-v6",
        "    action: accept",
        "    src: ::/0",
        "",
        "tests:",
    ]
    out += _tests(rng, lists)
    return "\n".join(out) + "\n"


def _inside(net, last: bool = False):
    return net.broadcast_address if last else net.network_address


def _past(net):
    """The address just after `net` when it is still in net's slot (so blocked by
    nothing), else None."""
    slot = SLOT[net.version]
    if net.prefixlen <= slot:
        return None
    after = net.broadcast_address + 1
    return after if (int(after) >> (net.max_prefixlen - slot)) == (
        int(net.network_address) >> (net.max_prefixlen - slot)) else None


def _tests(rng: random.Random, lists: dict) -> list[str]:
    out: list[str] = []

    def q(address) -> str:
        # In a flow mapping, a plain scalar cannot end with ':' (2001:db8::, then ',').
        text = str(address)
        return f'"{text}"' if text.endswith(":") else text

    def add(src, dst, proto, port, expect, direction="ingress", note=""):
        packet = f"{{src: {q(src)}, dst: {q(dst)}, proto: {proto}"
        packet += f", dport: {port}}}" if port is not None else "}"
        out.append(f"  - packet: {packet}" + (f"   # {note}" if note else ""))
        if direction != "ingress":
            out.append(f"    direction: {direction}")
        out.append(f"    expect: {expect}")

    here4, here6 = "203.0.113.10", "2001:db8:f000::10"
    add("10.66.7.9", here4, "tcp", 443, "{rule: allow-partner}", note="partner exception")
    add("2001:db8:1066:7::9", here6, "tcp", 443, "accept")
    add("10.66.8.1", here4, "tcp", 443, "{rule: bl-scanners}",
        note="same /16, outside the exception")
    for name in ("bl-scanners", "bl-botnet"):
        for version in (4, 6):
            nets = [n for n in lists[name] if n.version == version]
            first, last = rng.choice(nets), rng.choice(nets)
            here = here4 if version == 4 else here6
            add(_inside(first), here, "udp", 53, f"{{rule: {name}}}", note=f"first of {first}")
            add(_inside(last, True), here, "tcp", 22, "drop", note=f"last of {last}")
    for version in (4, 6):
        here = here4 if version == 4 else here6
        candidates = [n for n in lists["bl-scanners"] if n.version == version and _past(n)]
        net = rng.choice(candidates)
        add(_past(net), here, "tcp", 443, f"{{rule: accept-rest-v{version}}}",
            note=f"just past {net}")
    mail = rng.choice([n for n in lists["bl-mail-abusers"] if n.version == 4])
    add(_inside(mail), here4, "tcp", 25, "{rule: bl-mail-abusers}", note=f"SMTP from {mail}")
    add(_inside(mail), here4, "tcp", 443, "{rule: accept-rest-v4}", note="not SMTP: allowed")
    mail6 = rng.choice([n for n in lists["bl-mail-abusers"] if n.version == 6])
    add(_inside(mail6, True), here6, "tcp", 587, "drop", note=f"submission from {mail6}")
    c2 = rng.choice([n for n in lists["bl-egress-c2"] if n.version == 6])
    add(here6, _inside(c2), "tcp", 443, "{rule: bl-egress-c2}", "egress", note=f"C2 {c2}")
    add(here4, "198.51.100.80", "tcp", 443, "accept", "egress", note="egress default")
    c2 = rng.choice([n for n in lists["bl-egress-c2"] if n.version == 4])
    add(_inside(c2), here4, "tcp", 443, "{rule: accept-rest-v4}",
        note=f"the C2 list is egress only: {c2} may reach us")
    add("203.0.113.99", here4, "icmp", None, "{rule: accept-rest-v4}", note="not listed")
    add("2001:db8:f000::99", here6, "udp", 443, "{rule: accept-rest-v6}", note="not listed")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless {OUTPUT.name} is exactly what this script prints")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run {sys.argv[0]} > {OUTPUT}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
