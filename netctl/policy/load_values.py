"""The loader's ground floor: the policy language's words (keys, protocol and ICMP names,
limits) and the readers of its values (booleans, choices, lists, addresses and sets
references, ports, protocols, ICMP types), each reporting a problem at its FILE:LINE and
returning None.  netctl/policy/load.py builds on it."""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from collections.abc import Iterable
from functools import lru_cache
from typing import TypeVar

from ..errors import Problem
from .model import (
    ICMP_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Address,
    AddressItem,
    Network,
    PortRange,
    PrefixSet,
    item_families,
)
from .yamlsrc import Mark, YMap, YSeq, to_pos

Pos = Mark  # where a value was: a libyaml mark or a packed int (see yamlsrc)
# What a problem is reported at: a value's position, a (line, column) pair, or nothing
# (command-line options).
Where = Pos | tuple[int, int | None] | None
_E = TypeVar("_E", bound=enum.Enum)
_T = TypeVar("_T")

PROTOCOLS = {
    "icmp": PROTO_ICMP,
    "tcp": PROTO_TCP,
    "udp": PROTO_UDP,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": PROTO_ICMPV6,
    "sctp": 132,
}

ICMP_TYPES = {
    4: {
        "echo-reply": 0,
        "destination-unreachable": 3,
        "source-quench": 4,
        "redirect": 5,
        "echo-request": 8,
        "router-advertisement": 9,
        "router-solicitation": 10,
        "time-exceeded": 11,
        "parameter-problem": 12,
        "timestamp-request": 13,
        "timestamp-reply": 14,
    },
    6: {
        "destination-unreachable": 1,
        "packet-too-big": 2,
        "time-exceeded": 3,
        "parameter-problem": 4,
        "echo-request": 128,
        "echo-reply": 129,
        "mld-listener-query": 130,
        "mld-listener-report": 131,
        "mld-listener-done": 132,
        "router-solicitation": 133,
        "router-advertisement": 134,
        "neighbor-solicitation": 135,
        "neighbour-solicitation": 135,
        "neighbor-advertisement": 136,
        "neighbour-advertisement": 136,
        "redirect": 137,
    },
}

TOP_KEYS = ("version", "interfaces", "defaults", "stateful", "conntrack", "allow_ndp",
            "log_sample", "flow_cache", "sets", "rules", "routes",
            "tests")
SET_KEYS = ("elements", "file")
RULE_KEYS = ("name", "direction", "action", "src", "dst", "proto", "sport", "dport",
             "icmp_type", "icmp_code", "log", "metrics")
ICMP_KEYS = ("icmp_type", "icmp_code")
# IPv6 extension headers the datapath walks past: never a packet's protocol.
EXT_HEADER_NAMES = {0: "hop-by-hop options", 43: "routing", 44: "fragment",
                    60: "destination options"}
INTERFACE_KEYS = ("name", "xdp", "tc")
ROUTE_KEYS = ("dst", "via", "dev", "cc")
ROUTE_REQUIRED = ("dst", "via", "dev")
CONNTRACK_KEYS = ("size", "tcp_established", "tcp_closing", "tcp_unconfirmed", "udp", "icmp")
CONNTRACK_SIZE_MAX = 1 << 24
TIMEOUT_MAX = 1 << 31  # seconds; the datapath keeps them in 32 bits
TEST_KEYS = ("packet", "direction", "expect")
PACKET_KEYS = ("src", "dst", "proto", "sport", "dport", "icmp_type", "icmp_code", "ttl",
               "fragment")
RULE_NAME_MAX = 64

_DIGITS = re.compile(r"[0-9]+\Z")  # ASCII only: str.isdigit() also takes '٨'
_RULE_NAME = re.compile(rf"\S{{1,{RULE_NAME_MAX}}}\Z")
_KEYSETS: dict[tuple[str, ...], frozenset[str]] = {}
_TRUE = frozenset({"true", "yes", "on"})
_FALSE = frozenset({"false", "no", "off"})



def interface_name_problem(name: object) -> str | None:
    """Why `name` cannot be a Linux interface name (the kernel's dev_valid_name), or None."""
    if not isinstance(name, str) or not name:
        return "an interface name must be a non-empty string"
    if len(name.encode()) > 15:
        return f"interface name '{name}' is longer than 15 bytes"
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        return f"'{name}' is not a valid interface name (no '/', ':', spaces, '.' or '..')"
    return None


@lru_cache(maxsize=65536)
def _parse_network(text: str) -> Network | str:
    """A network in network form, or an error message.  Cached: blocklists repeat."""
    address, slash, length = text.partition("/")
    if address.count(".") == 3 and ":" not in address:
        # Fast path for dotted IPv4 (ipaddress's parser is the slow part of big loads).
        try:
            value = int.from_bytes(socket.inet_aton(address), "big")
            plen = int(length) if slash else 32
        except (OSError, ValueError):
            plen = -1
        octets = address.split(".")
        canonical = all(_DIGITS.match(o) and (o[0] != "0" or o == "0") for o in octets)
        if (canonical and 0 <= plen <= 32 and (not slash or _DIGITS.match(length))
                and value & ((1 << (32 - plen)) - 1) == 0):
            return ipaddress.IPv4Network((value, plen))
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            network = ipaddress.ip_network(text, strict=False)
            return f"{text} has host bits set; the network is {network}"
        return f"'{text}' is not an IP address or prefix"


class _Reader:
    def __init__(self, source: str, base_dir: str = ""):
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self._memo: dict[tuple[str, object], object] = {}
        self._sets: dict[str, PrefixSet | None] = {}   # None: defined, but unreadable

    # -- reporting -----------------------------------------------------------------

    def error(self, where: Where, message: str) -> None:
        if where is None:
            line, column = 0, None
        elif isinstance(where, tuple):
            line, column = where
        else:
            line, column = to_pos(where)
        self.problems.append(Problem(self.source, line, column, message))

    def check_keys(self, node: YMap, allowed: tuple[str, ...], what: str) -> None:
        if node.keys() <= _KEYSETS.setdefault(allowed, frozenset(allowed)):
            return
        for key in node:
            if key not in allowed:
                hint = " or ".join(f"'{k}'" for k in closest_keys(str(key), allowed))
                suggestion = f"; did you mean {hint}?" if hint else ""
                self.error(node.keymarks[key], f"unknown key '{key}' in {what}{suggestion} "
                           f"(allowed: {', '.join(allowed)})")

    # -- scalar readers: each returns the value or None after reporting ---------------

    def as_bool(self, value: object, pos: Pos | None, what: str) -> bool | None:
        if isinstance(value, str) and value.lower() in _TRUE:
            return True
        if isinstance(value, str) and value.lower() in _FALSE:
            return False
        self.error(pos, f"{what} must be true or false, not {value!r}")
        return None

    def as_choice(self, value: object, pos: Pos | None, what: str, enum_type: type[_E]
                  ) -> _E | None:
        try:
            return enum_type._value2member_map_[value]  # type: ignore[return-value]  # a member of enum_type
        except (KeyError, TypeError):
            pass
        choices = [m.value for m in enum_type]
        self.error(pos, f"{what} must be one of {', '.join(choices)}, not {value!r}")
        return None

    def as_list(self, value: object, pos: Pos | None, what: str, expected: str
                ) -> list[tuple[object, Pos | None]] | None:
        """A scalar or a list of scalars, as (item, position) pairs; None after reporting
        every item that is not a scalar (`expected` says what an item should be)."""
        if isinstance(value, YSeq):
            if not value:
                self.error(pos, f"{what}: empty list (omit the field to match anything)")
                return None
            items: list[tuple[object, Pos | None]] = []
            for item, ipos in zip(value, value.itemmarks, strict=True):
                if isinstance(item, YSeq):
                    self.error(ipos, f"{what}: a list item must be {expected}, not a list "
                               "(lists do not nest: write the items in one list)")
                elif isinstance(item, YMap):
                    self.error(ipos, f"{what}: a list item must be {expected}, not a mapping")
                elif item is None:
                    self.error(ipos, f"{what}: a list item is empty (expected {expected})")
                else:
                    items.append((item, ipos))
            # All or nothing: a list with an unreadable item must not be read as a shorter
            # (or empty) list that matches less than the user wrote.
            return items if len(items) == len(value) else None
        if isinstance(value, YMap):
            self.error(pos, f"{what} must be a value or a list, not a mapping")
            return None
        if value is None:
            self.error(pos, f"{what} is empty (omit the field to match anything)")
            return None
        return [(value, pos)]

    def networks(self, value: object, pos: Pos, what: str, sets: bool = True
                 ) -> tuple[AddressItem, ...] | None:
        """Addresses and prefixes, and with ``sets`` "@NAME" references to sets."""
        if type(value) is str:  # the common case, kept fast for 100,000-rule files
            net = _parse_network(value.strip())
            if not isinstance(net, str):
                return (net,)
        items = self.as_list(value, pos, what, "an IP address or prefix")
        if items is None:
            return None
        result: list[AddressItem] = []
        for item, ipos in items:
            if not isinstance(item, str):
                self.error(ipos, f"{what}: {item!r} is not an IP address or prefix")
                continue
            if item.strip().startswith("@"):
                pset = self.set_reference(item.strip(), ipos, what, sets)
                if pset is not None:
                    result.append(pset)
                continue
            net = _parse_network(item.strip())
            if isinstance(net, str):
                self.error(ipos, f"{what}: {net}")
            else:
                result.append(net)
        return tuple(dict.fromkeys(result)) if len(result) == len(items) else None

    def set_reference(self, text: str, pos: Pos | None, what: str, allowed: bool
                      ) -> PrefixSet | None:
        """The set a "@NAME" item names, or None after reporting why not (an unknown name,
        with the closest defined ones; a set that failed to load is not reported again)."""
        name = text[1:]
        if not allowed:
            self.error(pos, f"{what}: {text!r}: a set cannot be used here (one prefix)")
            return None
        if not name:
            self.error(pos, f"{what}: '@' must be followed by the name of a set")
            return None
        if name in self._sets:
            return self._sets[name]
        known = tuple(self._sets)
        hint = " or ".join(f"'@{k}'" for k in closest_keys(name, known))
        if hint:
            advice = f"; did you mean {hint}?"
        elif known:
            advice = f" (sets: {', '.join('@' + k for k in known[:8])}" \
                     f"{' ...' if len(known) > 8 else ''})"
        else:
            advice = " (the policy defines no sets: add them under 'sets:')"
        self.error(pos, f"{what}: unknown set '{text}'{advice}")
        return None

    def address(self, value: object, pos: Pos | None, what: str) -> Address | None:
        if isinstance(value, str):
            try:
                return ipaddress.ip_address(value.strip())
            except ValueError:
                pass
        self.error(pos, f"{what}: {value!r} is not an IP address")
        return None

    def ports(self, value: object, pos: Pos, what: str,
              top: int = 65535) -> tuple[PortRange, ...] | None:
        noun = "a port" if top == 65535 else "a code"
        items = self.as_list(value, pos, what, f"{noun} or a range 'lo-hi'")
        if items is None:
            return None
        result: list[PortRange] = []
        for item, ipos in items:
            port_range = self.port_range(item, ipos, what, top)
            if port_range is not None:
                result.append(port_range)
        return tuple(dict.fromkeys(result)) if len(result) == len(items) else None

    def icmp_codes(self, value: object, pos: Pos, what: str) -> tuple[PortRange, ...] | None:
        return self.ports(value, pos, what, top=255)

    def port_range(self, item: object, pos: Pos | None, what: str,
                   top: int = 65535) -> PortRange | None:
        noun = "port" if top == 65535 else "code"
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str):
            text = item.strip()
            lo_text, dash, hi_text = text.partition("-")
            if not dash:
                hi_text = lo_text
            if not (_DIGITS.match(lo_text.strip()) and _DIGITS.match(hi_text.strip())):
                self.error(pos, f"{what}: {item!r} is not a {noun} or a range 'lo-hi'")
                return None
            lo, hi = int(lo_text), int(hi_text)
        else:
            self.error(pos, f"{what}: {item!r} is not a {noun} or a range 'lo-hi'")
            return None
        for port in (lo, hi):
            if not 0 <= port <= top:
                self.error(pos, f"{what}: {noun} {port} is outside 0-{top}")
                return None
        if lo > hi:
            self.error(pos, f"{what}: range {lo}-{hi} has its low end above its high end")
            return None
        return PortRange(lo, hi)

    def protocols(self, value: object, pos: Pos, what: str) -> tuple[int, ...] | None:
        items = self.as_list(value, pos, what, "a protocol name or number")
        if items is None:
            return None
        result: list[int] = []
        for item, ipos in items:
            number = self.protocol(item, ipos, what)
            if number is not None:
                result.append(number)
        return tuple(dict.fromkeys(result)) if len(result) == len(items) else None

    def protocol(self, item: object, pos: Pos | None, what: str) -> int | None:
        if isinstance(item, str) and _DIGITS.match(item.strip()):
            item = int(item)  # a quoted number, as ports allow
        if isinstance(item, int) and not isinstance(item, bool):
            if item in EXT_HEADER_NAMES:
                self.error(pos, f"{what}: {item} is the IPv6 {EXT_HEADER_NAMES[item]} "
                           "extension header, never a packet's protocol: netctl walks past "
                           "it to the protocol that follows (match that one)")
                return None
            if 0 <= item <= 255:
                return item
            self.error(pos, f"{what}: protocol number {item} is outside 0-255")
            return None
        if isinstance(item, str) and item.lower() in PROTOCOLS:
            return PROTOCOLS[item.lower()]
        names = ", ".join(PROTOCOLS)
        self.error(pos, f"{what}: unknown protocol {item!r} (use {names} or a number 0-255)")
        return None

    def icmp_types(self, value: object, pos: Pos | None, families: list[int], what: str
                   ) -> tuple[tuple[int, int], ...] | None:
        """Resolve names/numbers into (family, type) pairs for the ICMP families given."""
        items = self.as_list(value, pos, what, "an ICMP type name or number")
        if items is None:
            return None
        result: list[tuple[int, int]] = []
        ok = True
        for item, ipos in items:
            if isinstance(item, str) and _DIGITS.match(item.strip()):
                item = int(item)  # a quoted number, as ports allow
            if isinstance(item, int) and not isinstance(item, bool):
                if not 0 <= item <= 255:
                    self.error(ipos, f"{what}: ICMP type {item} is outside 0-255")
                    ok = False
                    continue
                result.extend((family, item) for family in families)
            elif isinstance(item, str):
                name = item.strip().lower()
                found = [(f, ICMP_TYPES[f][name]) for f in families if name in ICMP_TYPES[f]]
                if not found:
                    known = sorted({n for f in families for n in ICMP_TYPES[f]})
                    kinds = " or ".join("ICMPv6" if f == 6 else "ICMP" for f in families)
                    self.error(ipos, f"{what}: {item!r} is not an {kinds} type name "
                               f"(known: {', '.join(known)}; or use a number)")
                    ok = False
                result.extend(found)
            else:
                self.error(ipos, f"{what}: {item!r} is not an ICMP type")
                ok = False
        return tuple(dict.fromkeys(result)) if ok else None


_BOTH = frozenset({4, 6})
# Fields of a test packet that hold exactly one value (icmp_type reads like a rule's, and a
# list of one type is accepted there).
_PACKET_SCALARS = {"src": "address", "dst": "address", "proto": "protocol", "sport": "port",
                   "dport": "port"}


def _net_families(networks: tuple[AddressItem, ...] | None) -> frozenset[int]:
    """The IP versions a field allows, a set counting as both: its contents are data that
    change without the policy changing (a refreshed file, live edits), so they never make a
    rule invalid; what they hold now narrows ``Rule.families`` (``_content_families``)."""
    if networks is None:
        return _BOTH
    if len(networks) == 1:
        net = networks[0]
        if type(net) is PrefixSet:
            return _BOTH
        return _V4 if net.version == 4 else _V6
    if any(type(n) is PrefixSet for n in networks):
        return _BOTH
    return frozenset(n.version for n in networks)  # type: ignore[union-attr]  # no set: above


def _content_families(families: Iterable[int], src: tuple[AddressItem, ...] | None,
                      dst: tuple[AddressItem, ...] | None) -> frozenset[int]:
    """``families`` narrowed to what the address fields' items hold now: a field with a set
    matches only the families its literal items and its sets' contents have."""
    out = frozenset(families)
    for field in (src, dst):
        if field is not None and any(type(i) is PrefixSet for i in field):
            held: set[int] = set()
            for item in field:
                held |= item_families(item)
            out &= held
    return out


_V4, _V6 = frozenset({4}), frozenset({6})


@lru_cache(maxsize=1024)
def _proto_families(protos: tuple[int, ...]) -> frozenset[int]:
    families: set[int] = set()
    for p in protos:
        families |= {ICMP_PROTOS[p]} if p in ICMP_PROTOS else _BOTH
    return frozenset(families)


def later_pos(node: YMap, a: str, b: str) -> Pos:
    """The position of whichever of two keys comes later in the file."""
    return max(node.keymarks[a], node.keymarks[b], key=to_pos)


def _names_not_in(protos: tuple[int, ...], allowed: Iterable[int]) -> str:
    return ", ".join(proto_name(p) for p in protos if p not in allowed)


def proto_name(number: int) -> str:
    for name, value in PROTOCOLS.items():
        if value == number:
            return name
    return str(number)


def _family_words(families: set[int] | frozenset[int]) -> str:
    return " and ".join(f"IPv{f}" for f in sorted(families)) or "no IP version"


def closest_keys(key: str, allowed: tuple[str, ...]) -> list[str]:
    """The allowed keys nearest to a mistyped `key` (all of them on a tie, in `allowed`
    order), or none when every key is too far: within 1 edit for a key of up to 4
    characters, 2 up to 8, 3 beyond.  Case is ignored."""
    typed = key.lower()
    limit = 1 if len(typed) <= 4 else 2 if len(typed) <= 8 else 3
    scored = [(distance, name) for name in allowed
              if abs(len(name) - len(typed)) <= limit   # the distance is at least that
              and (distance := edit_distance(typed, name)) <= limit]
    best = min((distance for distance, _ in scored), default=None)
    return [name for distance, name in scored if distance == best]


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): an insertion, a deletion,
    a substitution or a swap of two adjacent characters costs one edit each, so 'dprot' is
    one edit from 'dport' and two from 'proto'."""
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1,
                             previous[j - 1] + (char_a != char_b))
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], before[j - 2] + 1)
        before, previous = previous, current
    return previous[-1]


