"""Warnings about a valid policy: rules that can never match, and settings that bite
(neighbour discovery cut, fragmented replies dropped under stateful: true, missing hooks).

Shadowed rules.  A rule can never match when every packet it matches is matched first by
earlier rules of the same direction (one covering rule, or several together).  Each rule is
seen as a union of boxes in the packet space (family, src, dst, proto, sport, dport, ICMP
type), where a packet without ports (another protocol, or a non-first fragment) has port
-1 and a packet without an ICMP type has type -1: so "tcp with no port field" also covers
tcp fragments and "tcp dport 22" does not.  Earlier rules' boxes are subtracted; an empty
remainder means the rule is dead, and the rules whose boxes were subtracted are named.

Box subtraction can fragment; the work per rule is capped and a rule whose check exceeds
the cap gets no warning (a missed warning, never a wrong one).  Earlier rules are found
through an index on source prefixes, so a 100,000-rule blocklist is checked in linear time.

Sets ("@NAME").  A set of at most SMALL_SET prefixes per family is checked like that many
literal prefixes.  A rule with a bigger set is not itself checked (a million boxes to
subtract from; stated in docs/policy.md), but it still covers later rules: only its
prefixes that overlap what is left of the later rule are taken (found in the set by
prefix-length probes and bisection, not by walking it), so a literal rule behind a
blocklist that holds its prefix, or a covering one, is reported.  When more than MAX_BOXES
of them overlap, that rule is not counted as covering (again a missed warning at worst).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from .evaluate import evaluate
from .model import (
    ICMP_PROTOS,
    NDP_TYPES,
    PORT_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Action,
    AddressItem,
    Direction,
    Packet,
    Policy,
    PrefixSet,
    Rule,
    TcHook,
    icmp_ranges,
)
from .sets import static_families, used_sets

MAX_BOXES = 2048          # fragments a single rule's check may create before giving up
MAX_CANDIDATES = 4096     # earlier rules one rule is compared with
_HIGHEST = 1 << 128       # above every address and rule index (a bisect bound)
SMALL_SET = 256           # prefixes per family of a set checked as literal prefixes

_ALL_PROTOS = frozenset(range(256))
_BITS = {4: 32, 6: 128}
_OTHER_FAMILY = {4: 6, 6: 4}
_ICMP_OF = {f: frozenset(p for p, fam in ICMP_PROTOS.items() if fam == f) for f in (4, 6)}


@dataclass(frozen=True)
class Finding:
    line: int
    message: str
    rule: str | None = None
    covered_by: tuple[str, ...] = ()


# A box: (src_lo, src_hi, dst_lo, dst_hi, protos, sp_lo, sp_hi, dp_lo, dp_hi, it_lo, it_hi)
Box = tuple[int, int, int, int, frozenset[int], int, int, int, int, int, int]
Ranges = tuple[tuple[int, int], ...]   # (lo, hi) ranges of one L4 axis


def analyze(policy: Policy) -> list[Finding]:
    findings = shadowed_rules(policy)
    findings += _set_findings(policy)
    findings += _ndp_findings(policy)
    findings += _fragment_findings(policy)
    findings += _hook_findings(policy)
    return sorted(findings, key=lambda f: f.line)


class _TooBig(Exception):
    """A set too big to turn into boxes here (see the module docstring)."""


Windows = list[tuple[int, int]]   # merged address ranges a covering rule is clipped to


def _ranges(items: tuple[AddressItem, ...] | None, family: int, window: Windows | None = None
            ) -> list[tuple[int, int]]:
    """The field's address ranges of ``family``; a big set's only where they overlap
    ``window`` (_TooBig when there is none, or when too many do)."""
    if items is None:
        return [(0, (1 << _BITS[family]) - 1)]
    out: list[tuple[int, int]] = []
    bits = _BITS[family]
    for item in items:
        if type(item) is not PrefixSet:
            if item.version == family:
                out.append((int(item.network_address), int(item.broadcast_address)))
            continue
        prefixes = item.family(family)
        if len(prefixes) <= SMALL_SET:
            out.extend((net, net | ((1 << (bits - plen)) - 1)) for plen, net in prefixes)
            continue
        if window is None:
            raise _TooBig
        for lo, hi in window:
            found = item.overlapping(family, lo, hi, MAX_BOXES - len(out))
            if found is None:
                raise _TooBig
            out.extend(found)
    return sorted(set(out)) if len(out) > 1 else out


def _l4_parts(rule: Rule, family: int) -> list[tuple[frozenset[int], Ranges, Ranges, Ranges]]:
    """Split the rule's protocols into groups with the same L4 shape, as
    (protocols, sport range(s), dport range(s), ICMP range(s) on the ``type << 8 | code``
    axis the datapath uses; -1 stands for "no such header", e.g. a non-first fragment)."""
    own_icmp = _ICMP_OF[family]
    protos = _ALL_PROTOS if rule.proto is None else frozenset(rule.proto)
    # icmp (1) exists only in IPv4 and icmpv6 (58) only in IPv6 under a named protocol.
    if rule.proto is not None:
        protos = protos - _ICMP_OF[_OTHER_FAMILY[family]]
    any_port = ((-1, 65535),)
    no_port = ((-1, -1),)
    parts: list[tuple[frozenset[int], Ranges, Ranges, Ranges]] = []
    if rule.sport is not None or rule.dport is not None:
        ports = protos & PORT_PROTOS
        sp = tuple((r.lo, r.hi) for r in rule.sport) if rule.sport else ((0, 65535),)
        dp = tuple((r.lo, r.hi) for r in rule.dport) if rule.dport else ((0, 65535),)
        if ports:
            parts.append((ports, sp, dp, no_port))
    elif rule.has_icmp:
        ranges = icmp_ranges(rule, family)
        icmp = protos & own_icmp
        if icmp and ranges:
            parts.append((icmp, no_port, no_port, ranges))
    else:
        ports = protos & PORT_PROTOS
        icmp = protos & own_icmp
        other = protos - ports - icmp
        if ports:
            parts.append((ports, any_port, any_port, no_port))
        if icmp:
            parts.append((icmp, no_port, no_port, ((-1, 65535),)))
        if other:
            parts.append((other, no_port, no_port, no_port))
    return parts


def _boxes(rule: Rule, family: int, windows: tuple[Windows, Windows] | None = None
           ) -> list[Box]:
    """The rule's boxes; ``windows`` (src, dst) clip a big set's prefixes to those that can
    matter (raises _TooBig when a big set cannot be clipped)."""
    boxes: list[Box] = []
    src_window, dst_window = windows if windows is not None else (None, None)
    for s_lo, s_hi in _ranges(rule.src, family, src_window):
        for d_lo, d_hi in _ranges(rule.dst, family, dst_window):
            for protos, sps, dps, its in _l4_parts(rule, family):
                for sp in sps:
                    for dp in dps:
                        for it in its:
                            boxes.append((s_lo, s_hi, d_lo, d_hi, protos, *sp, *dp, *it))
    return boxes


def _intersects(a: Box, b: Box) -> bool:
    return (
        a[0] <= b[1] and b[0] <= a[1]
        and a[2] <= b[3] and b[2] <= a[3]
        and not a[4].isdisjoint(b[4])
        and a[5] <= b[6] and b[5] <= a[6]
        and a[7] <= b[8] and b[7] <= a[8]
        and a[9] <= b[10] and b[9] <= a[10]
    )


def _subtract(a: Box, b: Box) -> list[Box]:
    """a minus b, as disjoint boxes (a and b intersect)."""
    out: list[Box] = []
    cur: list[Any] = list(a)   # the axes' ints, and the protocols at 4
    lo: Literal[0, 2, 5, 7, 9]
    hi: Literal[1, 3, 6, 8, 10]
    for lo, hi in ((0, 1), (2, 3), (5, 6), (7, 8), (9, 10)):
        if cur[lo] < b[lo]:
            piece = list(cur)
            piece[hi] = b[lo] - 1
            out.append(tuple(piece))
            cur[lo] = b[lo]
        if cur[hi] > b[hi]:
            piece = list(cur)
            piece[lo] = b[hi] + 1
            out.append(tuple(piece))
            cur[hi] = b[hi]
        if lo == 2:  # protocols sit between dst and the ports in the tuple
            rest = cur[4] - b[4]
            if rest:
                piece = list(cur)
                piece[4] = rest
                out.append(tuple(piece))
                cur[4] = cur[4] & b[4]
    return out


class _SourceIndex:
    """All rules of one (direction, family) by source prefix, built once; queries return
    only rules before the asking one."""

    def __init__(self, rules: list[Rule], family: int) -> None:
        self.family = family
        self.by_prefix: dict[tuple[int, int], list[int]] = defaultdict(list)  # (plen, net)
        self.lengths: list[int] = []
        self.any_src: list[int] = []
        self.order: list[int] = [r.index for r in rules]
        self.big_sets: list[tuple[int, PrefixSet]] = []   # (rule index, set)
        spans: list[tuple[int, int, int]] = []
        bits = _BITS[family]
        for rule in rules:
            if rule.src is None:
                self.any_src.append(rule.index)
                continue
            for item in rule.src:
                if type(item) is PrefixSet:
                    prefixes = item.family(family)
                    if len(prefixes) > SMALL_SET:
                        self.big_sets.append((rule.index, item))
                        continue
                elif item.version == family:
                    prefixes = ((item.prefixlen, int(item.network_address)),)
                else:
                    continue
                for plen, net in prefixes:
                    listed = self.by_prefix[(plen, net)]
                    if not listed or listed[-1] != rule.index:   # ascending, each once
                        listed.append(rule.index)
                    spans.append((net, net | ((1 << (bits - plen)) - 1), rule.index))
        self.lengths = sorted({plen for plen, _ in self.by_prefix})
        spans.sort()
        self.spans = spans

    def candidates(self, rule: Rule) -> set[int] | None:
        """Earlier rules whose source can overlap `rule`'s, or None when too many."""
        before = rule.index
        if rule.src is None:
            earlier = self.order[: bisect.bisect_left(self.order, before)]
            return None if len(earlier) > MAX_CANDIDATES else set(earlier)
        found = {i for i in self.any_src if i < before}
        bits = _BITS[self.family]
        for value, hi in _ranges(rule.src, self.family):
            prefixlen = bits - (hi - value).bit_length()
            for index, pset in self.big_sets:   # blocklists: probed, never walked
                if index < before and index not in found and \
                        pset.overlapping(self.family, value, hi, 0) != []:
                    found.add(index)
            for plen in self.lengths:  # covering prefixes (and the same one)
                if plen > prefixlen:
                    break
                mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
                listed = self.by_prefix.get((plen, value & mask))
                if listed:   # rule indexes, ascending, each once: the earlier ones a head
                    head = bisect.bisect_left(listed, before)
                    if head > MAX_CANDIDATES:
                        return None
                    found.update(listed[:head])
            if len(found) > MAX_CANDIDATES:
                # What the walk below says at its first step (the rule's own prefix is in
                # it), without walking: 25,000 rules on one /16 made this quadratic.
                return None
            # Prefixes inside: the spans that start within [value, hi]; more of them than
            # MAX_CANDIDATES (earlier rules or not) is too many to compare.
            k = bisect.bisect_left(self.spans, (value, -1, -1))
            end = bisect.bisect_right(self.spans, (hi, _HIGHEST, _HIGHEST), k)
            if end - k > MAX_CANDIDATES:
                return None
            found.update([i for _, _, i in self.spans[k:end] if i < before])
            if len(found) > MAX_CANDIDATES:
                return None
        return found


def shadowed_rules(policy: Policy) -> list[Finding]:
    findings: list[Finding] = []
    rules = policy.rules
    indexes = {
        (direction, family): _SourceIndex(
            [r for r in rules if r.direction is direction and family in r.families], family)
        for direction in Direction
        for family in (4, 6)
    }
    for rule in rules:
        covering: set[int] = set()
        dead = True
        if _has_big_set(rule):
            continue   # not checked itself (see the module docstring)
        for family in sorted(rule.families):
            candidates = indexes[(rule.direction, family)].candidates(rule)
            boxes = _boxes(rule, family) if candidates else None
            if boxes == []:
                continue  # nothing of this family to cover
            if not candidates:
                dead = False
                break
            remaining, used = _cover(boxes, [rules[i] for i in sorted(candidates)], family)  # type: ignore[arg-type]  # candidates: boxes
            if remaining:
                dead = False
                break
            covering |= used
        if dead and covering:
            covering = _minimal_cover(rule, covering, rules)
            names = [rules[i].name for i in sorted(covering)]
            lines = ", ".join(f"'{rules[i].name}' (line {rules[i].line})" for i in sorted(covering))
            findings.append(Finding(
                rule.line,
                f"rule '{rule.name}' can never match: earlier rule"
                f"{'s' if len(names) > 1 else ''} {lines} "
                f"{'cover' if len(names) > 1 else 'covers'} every packet it matches",
                rule=rule.name, covered_by=tuple(names)))
    return findings


def _minimal_cover(rule: Rule, covering: set[int], rules: tuple[Rule, ...]) -> set[int]:
    """Drop covering rules that the others make unnecessary (greedy, bounded)."""
    needed = set(covering)
    for candidate in sorted(covering)[:16]:
        trial = needed - {candidate}
        if trial and all(
            not _cover(_boxes(rule, f), [rules[i] for i in sorted(trial)], f)[0]
            for f in rule.families
        ):
            needed = trial
    return needed


def _has_big_set(rule: Rule) -> bool:
    return any(type(item) is PrefixSet and len(item) > SMALL_SET
               for field in (rule.src, rule.dst) if field for item in field)


def _window(boxes: list[Box], lo: Literal[0, 2], hi: Literal[1, 3]) -> Windows:
    """The union of the boxes' ranges on one axis, merged."""
    merged: Windows = []
    for a, b in sorted({(box[lo], box[hi]) for box in boxes}):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _cover(boxes: list[Box], earlier: list[Rule], family: int) -> tuple[list[Box], set[int]]:
    remaining = boxes
    used: set[int] = set()
    for other in earlier:
        if not remaining:
            break
        windows = None
        if _has_big_set(other):
            windows = (_window(remaining, 0, 1), _window(remaining, 2, 3))
        try:
            other_boxes = _boxes(other, family, windows)
        except _TooBig:
            continue   # not counted as covering: at worst a missed warning
        for ob in other_boxes:
            next_remaining: list[Box] = []
            for box in remaining:
                if _intersects(box, ob):
                    used.add(other.index)
                    next_remaining.extend(_subtract(box, ob))
                else:
                    next_remaining.append(box)
            remaining = next_remaining
            if len(remaining) > MAX_BOXES:
                return remaining, used  # too fragmented: give up on this rule
    return remaining, used


def _set_findings(policy: Policy) -> list[Finding]:
    """Sets no rule uses, and rules that match nothing because of what their sets hold
    (an empty set, or none of the IP versions the rule's other fields allow)."""
    used = used_sets(policy)
    findings = [Finding(s.line, f"set '@{s.name}' is used by no rule") for s in policy.sets
                if s.name not in used]
    for rule in policy.rules:
        if rule.families:
            continue
        allowed = static_families(rule)
        reasons = []
        for field in (rule.src, rule.dst):
            for item in field or ():
                if type(item) is not PrefixSet:
                    continue
                if not len(item):
                    reasons.append(f"@{item.name} is empty")
                elif not item.families & allowed:
                    versions = " and ".join(f"IPv{f}" for f in sorted(allowed))
                    reasons.append(f"@{item.name} holds no {versions} prefix")
        why = "; ".join(dict.fromkeys(reasons)) or "its sets hold nothing it can match"
        findings.append(Finding(rule.line, f"rule '{rule.name}' matches no packet with what "
                                f"its sets hold now: {why}", rule=rule.name))
    return findings


def _ndp_findings(policy: Policy) -> list[Finding]:
    """With allow_ndp: false, say so when neighbour discovery would be dropped."""
    if policy.allow_ndp:
        return []
    dropped = []
    for direction in Direction:
        for icmp_type in sorted(NDP_TYPES):
            packet = Packet(src=ipaddress.ip_address("fe80::1"),
                            dst=ipaddress.ip_address("ff02::1"),
                            proto=PROTO_ICMPV6, icmp_type=icmp_type, icmp_code=0, ttl=255)
            decision = evaluate(policy, packet, direction)
            if decision.verdict is Action.DROP:
                by = f"rule '{decision.rule.name}'" if decision.rule else "the default"
                dropped.append(f"{direction.value} type {icmp_type} ({by})")
    if not dropped:
        return []
    return [Finding(0, "allow_ndp is false and IPv6 neighbour discovery would be dropped: "
                    + ", ".join(dropped[:4]) + (" ..." if len(dropped) > 4 else "")
                    + "; hosts on the link may become unreachable")]


# What connection tracking follows (TCP, UDP, ICMP echo), as (name, protocol, family).
_TRACKED = (("tcp", PROTO_TCP, 4), ("tcp", PROTO_TCP, 6), ("udp", PROTO_UDP, 4),
            ("udp", PROTO_UDP, 6), ("icmp", PROTO_ICMP, 4), ("icmpv6", PROTO_ICMPV6, 6))


def _fragment_findings(policy: Policy) -> list[Finding]:
    """stateful: true accepts replies by their ports (or echo identifier), which only a
    packet's first fragment carries: the other fragments of a reply meet the rules.  Under
    a default ingress drop they are dropped unless a rule without ports accepts them."""
    if not policy.stateful or policy.default_ingress is not Action.DROP:
        return []
    missing: dict[str, list[int]] = {}
    for name, proto, family in _TRACKED:
        accepted = any(
            r.direction is Direction.INGRESS and r.action is Action.ACCEPT
            and r.sport is None and r.dport is None and r.icmp_type is None
            and family in r.families and (r.proto is None or proto in r.proto)
            for r in policy.rules)
        if not accepted:
            missing.setdefault(name, []).append(family)
    if not missing:
        return []
    names = [name if len(families) > 1 or name.startswith("icmp")
             else f"{name} over IPv{families[0]}" for name, families in missing.items()]
    what = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return [Finding(0, "stateful: true with a default ingress drop drops fragmented replies: "
                    "their non-first fragments carry no ports, so they match no tracked flow "
                    f"and meet the rules, and no ingress rule without ports accepts fragments "
                    f"of {what}. Accept them from the peers whose replies may be fragmented "
                    "(a rule without ports, e.g. {name: peer-fragments, action: accept, "
                    "src: PEERS, proto: udp}), or ignore this warning if no reply is "
                    "fragmented (large UDP replies such as DNS with EDNS often are)")]


def _hook_findings(policy: Policy) -> list[Finding]:
    """Egress rules need a tc egress hook on the interfaces the policy names."""
    egress_rules = [r for r in policy.rules if r.direction is Direction.EGRESS]
    findings = []
    for iface in policy.interfaces:
        if egress_rules and TcHook.EGRESS not in iface.tc:
            findings.append(Finding(iface.line, f"interface {iface.name} has no tc egress "
                                    f"hook, so its {len(egress_rules)} egress rule(s) never run"))
        if policy.stateful and TcHook.EGRESS not in iface.tc:
            findings.append(Finding(iface.line, f"stateful: true needs tc egress on "
                                    f"{iface.name} to see the flows this host starts"))
    return findings
