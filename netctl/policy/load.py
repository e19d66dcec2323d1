"""Policy loader: YAML text -> validated, frozen `Policy`, or `PolicyError` listing every
problem at FILE:LINE:COLUMN.

The loader reads the whole file, reports all problems at once and returns nothing unless
the policy is wholly valid, so a caller can never act on half a policy.  Where a problem
involves two keys (ports with an ICMP protocol, an IPv4 source with an IPv6 destination),
it is reported at the later of the two: the key that made the rule impossible.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import hashlib
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, TypeVar

from ..errors import PolicyError, Problem
from .model import (
    ICMP_PROTOS,
    PORT_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Action,
    Address,
    AddressItem,
    Conntrack,
    Direction,
    Expectation,
    FlowCache,
    Interface,
    Network,
    Packet,
    Policy,
    PolicyTest,
    PortRange,
    PrefixSet,
    Route,
    Rule,
    TcHook,
    XdpMode,
    default_ttl,
    item_families,
)
from .sets import (
    MAX_SET_PREFIXES,
    SET_NAME,
    SET_NAME_MAX,
    SetFileError,
    make_set,
    read_set_file,
)
from .yamlsrc import Mark, YMap, YSeq, compose, to_pos

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


# Limits that keep a runaway file from taking minutes and gigabytes before it is refused:
# the datapath holds MAX_RULES rules (plan.Limits().rules), and a file of that many rules
# with long address lists stays well under MAX_FILE_BYTES.
MAX_RULES = 131072
MAX_FILE_BYTES = 64 << 20


STDIN = "-"                 # the file name that means standard input
STDIN_SOURCE = "<stdin>"    # how problems (and apply's record) name it


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load and validate a policy file, or standard input when `path` is `-` (problems then
    name <stdin>); raise PolicyError naming every problem."""
    source = os.fspath(path)
    if source == STDIN:
        return _load_checked(_read_stdin(), STDIN_SOURCE)
    try:
        size = os.path.getsize(source)
    except OSError as exc:
        raise PolicyError([Problem(source, 0, None, f"cannot read: {exc.strerror}")]) from None
    if size > MAX_FILE_BYTES:
        raise PolicyError([Problem(source, 0, None, f"the file is {size >> 20} MiB; policies "
                                   f"are limited to {MAX_FILE_BYTES >> 20} MiB (the datapath "
                                   f"holds at most {MAX_RULES:,} rules)")])
    try:
        with open(source, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
    except OSError as exc:
        raise PolicyError([Problem(source, 0, None, f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise PolicyError([Problem(source, 0, None, f"not UTF-8 text: {exc.reason}")]) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")   # as open() reads text
    policy = _load_checked(text, source)
    # What was read, not what the file holds by the time it is applied: `apply` records
    # this, and a later apply of the same file compares it.
    return dataclasses.replace(policy, source_sha256=hashlib.sha256(data).hexdigest())


def _read_stdin() -> str:
    """Standard input as a file would be read: UTF-8, newlines translated, size-limited."""
    def refuse(message: str) -> PolicyError:
        return PolicyError([Problem(STDIN_SOURCE, 0, None, message)])

    stream = getattr(sys.stdin, "buffer", None)
    if stream is None or sys.stdin.closed:
        raise refuse("cannot read: standard input is closed")
    try:
        data: bytes = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise refuse(f"more than {MAX_FILE_BYTES >> 20} MiB on standard input; policies are "
                     f"limited to {MAX_FILE_BYTES >> 20} MiB (the datapath holds at most "
                     f"{MAX_RULES:,} rules)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"not UTF-8 text: {exc.reason}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")   # as open() reads a file


def _load_checked(text: str, source: str) -> Policy:
    # Before parsing (which costs seconds and gigabytes for a million rules): every rule has
    # a name, so a file with far more `name:` keys than the datapath holds rules is refused
    # at once.  The exact count is checked again after parsing.
    names = len(_NAME_KEY.findall(text))
    if names > MAX_RULES + 4096:
        raise PolicyError([Problem(source, 0, None, f"about {names:,} rules (name: keys): the "
                                   f"datapath holds at most {MAX_RULES:,}")])
    return load_policy_text(text, source)


_NAME_KEY = re.compile(r"^[ \t]*(?:- )?[ \t]*\{?[ \t]*name[ \t]*:", re.M)


def load_policy_text(text: str, source: str = "<policy>", base_dir: str | None = None
                     ) -> Policy:
    """Load policy text; ``source`` names it in problems.  Set files named by a relative
    path are read from ``base_dir``: by default the policy file's directory, and the working
    directory for standard input (``<stdin>``) and text that is no file (``<policy>``)."""
    if base_dir is None:
        base_dir = "" if source.startswith("<") else os.path.dirname(source)
    # Loading builds millions of small containers that never form cycles; the cyclic
    # collector would walk them again and again (measured: 40% of a 100,000-rule load).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Loader(source, base_dir).load(text)
    finally:
        if was_enabled:
            gc.enable()


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


class _Loader:
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

    def sets_section(self, root: YMap) -> tuple[PrefixSet, ...]:
        """``sets:``, a mapping of names to ``{elements: [...]}`` or ``{file: PATH}``; fills
        ``self._sets`` for the rules' "@NAME" references."""
        node, pos = root["sets"], root.valmarks["sets"]
        if node is None:
            return ()
        if not isinstance(node, YMap):
            self.error(pos, "'sets' must be a mapping of set names to {elements: [...]} or "
                       "{file: PATH}")
            return ()
        budget = MAX_SET_PREFIXES
        out: list[PrefixSet] = []
        for key, value in node.items():
            kpos = node.keymarks[key]
            name = str(key) if type(key) in (str, int) else ""
            if not SET_NAME.match(name):
                self.error(kpos, f"set name {str(key)[:80]!r} must be 1 to {SET_NAME_MAX} "
                           "letters, digits, '_', '.' or '-'")
                continue
            self._sets[name] = None
            pset = self.prefix_set(name, value, kpos, node.valmarks[key], budget)
            if pset is not None:
                self._sets[name] = pset
                budget -= len(pset)
                out.append(pset)
        return tuple(out)

    def prefix_set(self, name: str, node: object, kpos: Pos, pos: Pos,
                   budget: int) -> PrefixSet | None:
        shape = "{elements: [PREFIX, ...]} or {file: PATH}"
        if not isinstance(node, YMap):
            self.error(pos, f"set '{name}' must be {shape}")
            return None
        before = len(self.problems)
        self.check_keys(node, SET_KEYS, f"set '{name}'")
        if len(self.problems) > before:
            return None
        if ("elements" in node) == ("file" in node):
            where = later_pos(node, "elements", "file") if "file" in node else pos
            self.error(where, f"set '{name}' needs exactly one of 'elements' (a list) and "
                       "'file' (a path)")
            return None
        line = to_pos(kpos)[0]
        if "elements" in node:
            return self.set_elements(name, node["elements"], node.valmarks["elements"], line,
                                     budget)
        path, fpos = node["file"], node.valmarks["file"]
        if not isinstance(path, str) or not path.strip():
            self.error(fpos, f"set '{name}': file must be the path of a set file (one prefix "
                       "per line)")
            return None
        path = path.strip()
        resolved = path if os.path.isabs(path) else os.path.join(self.base_dir, path)
        try:
            v4, v6, problems, digest = read_set_file(resolved, resolved, budget)
        except SetFileError as exc:
            self.error(fpos, f"set '{name}': {exc}")
            return None
        if problems:
            self.problems.extend(problems)
            return None
        return PrefixSet(name, v4, v6, os.path.abspath(resolved), line, sha256=digest)

    def set_elements(self, name: str, value: object, pos: Pos, line: int,
                     budget: int) -> PrefixSet | None:
        what = f"set '{name}' elements"
        if value is None:
            self.error(pos, f"{what}: empty (write [] for a set that holds nothing yet)")
            return None
        if isinstance(value, YSeq) and not value:
            return PrefixSet(name, line=line)
        items = self.as_list(value, pos, what, "an IP address or prefix")
        if items is None:
            return None
        if len(items) > budget:
            self.error(pos, f"{what}: {len(items):,} prefixes; a policy's sets hold at most "
                       f"{MAX_SET_PREFIXES:,} in all")
            return None
        prefixes: list[tuple[int, int, int]] = []
        for item, ipos in items:
            text = item.strip() if isinstance(item, str) else None
            net = _parse_network(text) if text and not text.startswith("@") else None
            if isinstance(net, str):
                self.error(ipos, f"{what}: {net}")
            elif net is None:
                self.error(ipos, f"{what}: {item!r} is not an IP address or prefix"
                           + (" (a set holds prefixes, not other sets)"
                              if text and text.startswith("@") else ""))
            else:
                prefixes.append((net.version, net.prefixlen, int(net.network_address)))
        if len(prefixes) != len(items):
            return None
        return make_set(name, prefixes, None, line)

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

    # -- sections ----------------------------------------------------------------------

    def load(self, text: str) -> Policy:
        root, yaml_problems = compose(text)
        for p in yaml_problems:
            self.error((p.line, p.column), p.message)
        if root is None and not yaml_problems:
            self.error((1, None), "the policy is empty (it needs at least 'version: 1')")
        elif root is not None and not isinstance(root, YMap):
            self.error(getattr(root, "mark", (1, None)), "a policy must be a YAML mapping")
        if not isinstance(root, YMap):
            raise PolicyError(self.problems)
        # A YAML-level problem (duplicate key, unknown alias) still leaves a readable
        # document: check the policy too, so every problem is reported at once.
        policy = self.policy(root)
        if self.problems:
            raise PolicyError(self.problems)
        return policy

    def policy(self, root: YMap) -> Policy:
        self.check_keys(root, TOP_KEYS, "the policy")
        fields: dict[str, Any] = {"source": self.source}   # Policy's keyword arguments
        if "version" not in root:
            self.error(root.mark, "missing 'version: 1'")
        else:
            self.version(root["version"], root.valmarks["version"])
        if "interfaces" in root:
            fields["interfaces"] = self.section(root, "interfaces", self.interface)
            seen_ifaces: dict[str, int] = {}
            for iface in fields["interfaces"]:
                if iface.name in seen_ifaces:
                    self.error((iface.line, None), f"interface {iface.name} is listed twice "
                               f"(first at line {seen_ifaces[iface.name]})")
                seen_ifaces.setdefault(iface.name, iface.line)
        if "defaults" in root:
            self.defaults(root["defaults"], root.valmarks["defaults"], fields)
        for key in ("stateful", "allow_ndp"):
            if key in root:
                value: object = self.as_bool(root[key], root.valmarks[key], key)
                if value is not None:
                    fields[key] = value
        if "conntrack" in root:
            self.conntrack(root, fields)
        if "log_sample" in root:
            value, vpos = root["log_sample"], root.valmarks["log_sample"]
            if isinstance(value, str) and _DIGITS.match(value):
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not 1 <= value <= 1_000_000:
                self.error(vpos, "log_sample must be a whole number 1 to 1000000 (1: every "
                           "drop and logged match goes to monitor; N: one in N)")
            else:
                fields["log_sample"] = value
        if "flow_cache" in root:
            mode = self.as_choice(root["flow_cache"], root.valmarks["flow_cache"],
                                  "flow_cache", FlowCache)
            if mode is not None:
                fields["flow_cache"] = mode
        if "sets" in root:
            fields["sets"] = self.sets_section(root)
        self._names: dict[str, Pos] = {}
        self._directions: dict[str, Direction] = {}
        if "rules" in root:
            items = root["rules"]
            if isinstance(items, YSeq) and len(items) > MAX_RULES:
                self.error(root.keymarks["rules"], f"{len(items):,} rules: the datapath holds "
                           f"at most {MAX_RULES:,}")
                raise PolicyError(self.problems)
            fields["rules"] = self.section(root, "rules", self.rule)
        if "routes" in root:
            fields["routes"] = self.section(root, "routes", self.route)
            self.check_duplicate_routes(fields["routes"])
        if "tests" in root:
            fields["tests"] = self.section(root, "tests", lambda n, p, i: self.test(n, p))
        return Policy(**fields)

    def version(self, value: object, pos: Pos) -> None:
        if value == 1 and type(value) is int:
            return
        if isinstance(value, str) and value.strip() == "1":
            self.error(pos, "version must be the number 1, not a string: write 'version: 1' "
                       "without quotes")
        elif value is None:
            self.error(pos, "version must be 1, and it is empty")
        elif isinstance(value, (YMap, YSeq)):
            kind = "a list" if isinstance(value, YSeq) else "a mapping"
            self.error(pos, f"version must be 1, not {kind}")
        else:
            self.error(pos, f"unsupported policy version {value!r} (this netctl reads "
                       "version 1)")

    def conntrack(self, root: YMap, fields: dict[str, Any]) -> None:
        node, pos = root["conntrack"], root.valmarks["conntrack"]
        if not isinstance(node, YMap):
            self.error(pos, "conntrack must be a mapping {size, tcp_established, tcp_closing, "
                       "tcp_unconfirmed, udp, icmp}")
            return
        self.check_keys(node, CONNTRACK_KEYS, "conntrack")
        if not fields.get("stateful"):
            self.error(root.keymarks["conntrack"], "conntrack settings need 'stateful: true' "
                       "(without it no connection is tracked)")
        values: dict[str, int] = {}
        for key in CONNTRACK_KEYS:
            if key not in node:
                continue
            value, vpos = node[key], node.valmarks[key]
            if isinstance(value, str) and _DIGITS.match(value):
                value = int(value)
            top = CONNTRACK_SIZE_MAX if key == "size" else TIMEOUT_MAX
            unit = "entries" if key == "size" else "seconds"
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                self.error(vpos, f"conntrack {key} must be a whole number of {unit}, 1 to {top}")
                continue
            values[key] = value
        fields["conntrack"] = Conntrack(**values)

    def section(self, root: YMap, key: str, build: Callable[[object, Pos, int], _T | None]
                ) -> tuple[_T, ...]:
        value, pos = root[key], root.valmarks[key]
        if value is None:
            return ()
        if not isinstance(value, YSeq):
            self.error(pos, f"'{key}' must be a list")
            return ()
        built: list[_T] = []
        for item, ipos in zip(value, value.itemmarks, strict=True):
            result = build(item, ipos, len(built))
            if result is not None:
                built.append(result)
        return tuple(built)

    def defaults(self, node: object, pos: Pos, fields: dict[str, Any]) -> None:
        if not isinstance(node, YMap):
            self.error(pos, "'defaults' must be a mapping like {ingress: drop, egress: accept}")
            return
        self.check_keys(node, ("ingress", "egress"), "defaults")
        for key in ("ingress", "egress"):
            if key in node:
                action = self.as_choice(node[key], node.valmarks[key], f"defaults.{key}", Action)
                if action is not None:
                    fields[f"default_{key}"] = action

    def interface(self, node: object, pos: Pos, _index: int) -> Interface | None:
        if isinstance(node, str):  # shorthand: "- eth0"
            node_map = YMap(pos)
            node_map["name"] = node
            node_map.keymarks["name"] = node_map.valmarks["name"] = pos
            node = node_map
        if not isinstance(node, YMap):
            self.error(pos, "an interface must be a name or a mapping with 'name'")
            return None
        self.check_keys(node, INTERFACE_KEYS, "an interface")
        if "name" not in node:
            self.error(pos, "an interface needs a 'name'")
            return None
        problem = interface_name_problem(node["name"])
        if problem:
            self.error(node.valmarks["name"], problem)
        fields: dict[str, object] = {"name": node["name"], "line": to_pos(pos)[0]}
        if "xdp" in node:
            fields["xdp"] = self.as_choice(node["xdp"], node.valmarks["xdp"], "xdp", XdpMode)
        if "tc" in node:
            fields["tc"] = self.tc_hooks(node["tc"], node.valmarks["tc"])
        if problem or any(v is None for v in fields.values()):
            return None
        return Interface(**fields)  # type: ignore[arg-type]

    def tc_hooks(self, value: object, pos: Pos) -> tuple[TcHook, ...] | None:
        if isinstance(value, YSeq) and not value:
            return ()
        if value is None or value == "off":
            return ()
        items = self.as_list(value, pos, "tc", "ingress or egress")
        if items is None:
            return None
        hooks = [self.as_choice(item, ipos, "tc hook", TcHook) for item, ipos in items]
        if any(h is None for h in hooks):
            return None
        return tuple(dict.fromkeys(hooks))  # type: ignore[arg-type]

    def rule(self, node: object, pos: Pos, index: int) -> Rule | None:
        if not isinstance(node, YMap):
            self.error(pos, "a rule must be a mapping (name, action, match fields)")
            return None
        before = len(self.problems)
        self.check_keys(node, RULE_KEYS, "a rule")
        name = node.get("name")
        if "name" not in node:
            self.error(pos, "a rule needs a 'name'")
        elif type(name) is not str and (type(name) is not int):
            self.error(node.valmarks["name"], "a rule name must be a non-empty string")
        else:
            name = str(name)
            if not _RULE_NAME.match(name):
                self.error(node.valmarks["name"], f"rule name '{name[:80]}' must be 1 to "
                           f"{RULE_NAME_MAX} characters without spaces")
            first = self._names.get(name)
            if first is not None:
                self.error(node.keymarks["name"],
                           f"duplicate rule name '{name}' (first used at line {to_pos(first)[0]})")
            else:
                self._names[name] = node.keymarks["name"]
                direction_text = node.get("direction", "ingress")
                if isinstance(direction_text, str) and \
                        direction_text in Direction._value2member_map_:
                    self._directions[name] = Direction(direction_text)
        action = None
        if "action" not in node:
            self.error(pos, "a rule needs an 'action' (accept or drop)")
        else:
            action = self.as_choice(node["action"], node.valmarks["action"], "action", Action)
        direction: Direction | None = Direction.INGRESS
        if "direction" in node:
            direction = self.as_choice(node["direction"], node.valmarks["direction"],
                                       "direction", Direction)
        log: bool | None = False
        if "log" in node:
            log = self.as_bool(node["log"], node.valmarks["log"], "log")
        metrics: bool | None = False
        if "metrics" in node:
            metrics = self.as_bool(node["metrics"], node.valmarks["metrics"], "metrics")
        field = self.field
        src = field(node, "src", self.networks)
        dst = field(node, "dst", self.networks)
        proto = field(node, "proto", self.protocols)
        sport = field(node, "sport", self.ports)
        dport = field(node, "dport", self.ports)
        icmp_code = field(node, "icmp_code", self.icmp_codes)
        if (
            (src is None and "src" in node)
            or (dst is None and "dst" in node)
            or (proto is None and "proto" in node)
            or (sport is None and "sport" in node)
            or (dport is None and "dport" in node)
            or (icmp_code is None and "icmp_code" in node)
        ):
            return None  # a field is unreadable: cross-field checks would only add noise
        proto, icmp_type, families = self.rule_constraints(node, src, dst, proto)
        if len(self.problems) > before:
            return None
        # Every field was read: a reader that returned None (and a name that is no str)
        # reported a problem, and the rule was refused above.
        return Rule(name=name, index=index, line=to_pos(pos)[0],  # type: ignore[arg-type]
                    direction=direction,  # type: ignore[arg-type]
                    action=action, src=src, dst=dst, proto=proto, sport=sport,  # type: ignore[arg-type]
                    dport=dport, icmp_type=icmp_type, icmp_code=icmp_code,
                    log=log, metrics=bool(metrics), families=families)  # type: ignore[arg-type]

    def field(self, node: YMap, key: str, reader: Callable[[object, Pos, str], _T | None]
              ) -> _T | None:
        """Read one match field.  Big policies repeat values (ports, protocols, prefixes):
        each distinct one is parsed once.  Only successes are remembered (errors need
        their own line)."""
        if key not in node:
            return None
        value = node[key]
        memo_key = (key, tuple(value) if type(value) is YSeq else value)
        try:
            return self._memo[memo_key]  # type: ignore[return-value]  # reader's result for it
        except KeyError:
            pass
        except TypeError:  # unhashable: a mapping where a value belongs
            return reader(value, node.valmarks[key], key)
        result = reader(value, node.valmarks[key], key)
        if result is not None:
            self._memo[memo_key] = result
        return result

    def rule_constraints(self, node: YMap, src: tuple[AddressItem, ...] | None,
                         dst: tuple[AddressItem, ...] | None, proto: tuple[int, ...] | None
                         ) -> tuple[tuple[int, ...] | None, tuple[tuple[int, int], ...] | None,
                                    frozenset[int]]:
        """Cross-field checks; returns (proto, icmp_type, families)."""
        keypos = node.keymarks
        before = len(self.problems)

        def later(a: str, b: str) -> Pos:
            return max(keypos[a], keypos[b], key=to_pos)

        # Ports need tcp/udp and icmp_type needs icmp/icmpv6.  Walk the keys in file order
        # and report the first one that makes the combination impossible.
        has_ports = "sport" in node or "dport" in node
        has_icmp = "icmp_type" in node or "icmp_code" in node
        if not has_icmp and (not has_ports or proto is None or PORT_PROTOS.issuperset(proto)):
            if has_ports and proto is None:
                proto = (PROTO_TCP, PROTO_UDP)  # ports without proto mean tcp and udp
            l4_keys = []  # nothing can conflict: skip the walk (the common case)
        else:
            l4_keys = sorted((k for k in ("proto", "sport", "dport", *ICMP_KEYS) if k in node),
                             key=lambda k: to_pos(keypos[k]))
        port_key = icmp_seen = None
        for key in l4_keys:
            message = None
            if key == "proto":
                if port_key:
                    names = _names_not_in(proto, PORT_PROTOS)  # type: ignore[arg-type]  # proto was read
                    if names:
                        message = (f"{port_key} needs proto tcp or udp; proto also has "
                                   f"{names}, which has no ports")
                elif icmp_seen:
                    names = _names_not_in(proto, ICMP_PROTOS)  # type: ignore[arg-type]  # proto was read
                    if names:
                        message = (f"{icmp_seen} needs proto icmp or icmpv6; proto also has "
                                   f"{names}")
            elif key in ICMP_KEYS:
                icmp_seen = icmp_seen or key
                if port_key:
                    message = f"{key} and {port_key} cannot match the same packet"
                elif "proto" in l4_keys[: l4_keys.index(key)]:
                    names = _names_not_in(proto, ICMP_PROTOS)  # type: ignore[arg-type]  # proto was read
                    if names:
                        message = f"{key} needs proto icmp or icmpv6; proto also has {names}"
            else:
                if icmp_seen:
                    message = f"{icmp_seen} and {key} cannot match the same packet"
                elif port_key is None and "proto" in l4_keys[: l4_keys.index(key)]:
                    names = _names_not_in(proto, PORT_PROTOS)  # type: ignore[arg-type]  # proto was read
                    if names:
                        message = (f"{key} needs proto tcp or udp; proto also has {names}, "
                                   "which has no ports")
                port_key = port_key or key
            if message:
                self.error(keypos[key], message)
                break
        else:
            if icmp_seen and "proto" not in node:
                self.error(keypos[icmp_seen], f"{icmp_seen} needs proto icmp or icmpv6")
        if port_key and proto is None:
            proto = (PROTO_TCP, PROTO_UDP)  # ports without proto mean tcp and udp
        # Families: each of src, dst and proto may restrict the IP versions a packet can have.
        limits = {"src": _net_families(src), "dst": _net_families(dst)}
        if "proto" in node and proto is not None:
            limits["proto"] = _proto_families(proto)
        families = _BOTH.intersection(*limits.values())
        if not families:  # find the key that made it impossible, in file order
            allowed: frozenset[int] = _BOTH
            seen: list[str] = []
            for key in sorted((k for k in limits if k in node), key=lambda k: to_pos(keypos[k])):
                if not allowed & limits[key]:
                    self.error(keypos[key], f"the rule can never match: {key} is "
                               f"{_family_words(limits[key])} only, but {' and '.join(seen)} "
                               f"{'allows' if len(seen) == 1 else 'allow'} "
                               f"{_family_words(allowed)} only")
                    break
                allowed &= limits[key]
                seen.append(key)
            return proto, None, families
        icmp_type = None
        if "icmp_type" in node and proto is not None and len(self.problems) == before:
            icmp_families = sorted(ICMP_PROTOS[p] for p in proto if p in ICMP_PROTOS
                                   and ICMP_PROTOS[p] in families)
            if icmp_families:
                icmp_type = self.icmp_types(node["icmp_type"], node.valmarks["icmp_type"],
                                            icmp_families, "icmp_type")
        if self._sets:
            families = _content_families(families, src, dst)
        return proto, icmp_type, frozenset(families)

    def route(self, node: object, pos: Pos, _index: int) -> Route | None:
        if not isinstance(node, YMap):
            self.error(pos, "a route must be a mapping {dst, via, dev}")
            return None
        before = len(self.problems)
        self.check_keys(node, ROUTE_KEYS, "a route")
        for key in ROUTE_REQUIRED:
            if key not in node:
                self.error(pos, f"a route needs '{key}'")
        cc = node.get("cc")
        if "cc" in node and (not isinstance(cc, str) or not re.fullmatch(r"[a-z0-9_]{1,15}", cc)):
            self.error(node.valmarks["cc"], "cc must name a TCP congestion control algorithm "
                       "(e.g. cubic, bbr, reno)")
        dst = via = None
        if "dst" in node:
            dst = self.networks(node["dst"], node.valmarks["dst"], "dst", sets=False)
            if dst is not None and len(dst) != 1:
                self.error(node.valmarks["dst"], "a route has exactly one destination prefix")
        if "via" in node:
            via = self.address(node["via"], node.valmarks["via"], "via")
        if "dev" in node:
            problem = interface_name_problem(node["dev"])
            if problem:
                self.error(node.valmarks["dev"], problem)
        if len(self.problems) > before:
            return None
        # Every field was read (a missing or unreadable one was reported above): dst is one
        # network (sets=False), via an address, dev a valid name and cc a str or None.
        if via.version != dst[0].version:  # type: ignore[union-attr, index]
            self.error(later_pos(node, "dst", "via"),
                       f"next hop {via} is IPv{via.version} but the route is IPv{dst[0].version}")  # type: ignore[union-attr, index]
            return None
        return Route(dst=dst[0], via=via, dev=node["dev"], line=to_pos(pos)[0], cc=cc)  # type: ignore[arg-type, index]

    def check_duplicate_routes(self, routes: tuple[Route, ...]) -> None:
        seen: dict[Network, int] = {}
        for route in routes:
            if route.dst in seen:
                self.error((route.line, None), f"duplicate route to {route.dst} "
                           f"(first at line {seen[route.dst]})")
            seen.setdefault(route.dst, route.line)

    def test(self, node: object, pos: Pos) -> PolicyTest | None:
        if not isinstance(node, YMap):
            self.error(pos, "a test must be a mapping {packet, expect}")
            return None
        self.check_keys(node, TEST_KEYS, "a test")
        for key in ("packet", "expect"):
            if key not in node:
                self.error(pos, f"a test needs '{key}'")
        direction: Direction | None = Direction.INGRESS
        if "direction" in node:
            direction = self.as_choice(node["direction"], node.valmarks["direction"],
                                       "direction", Direction)
        # Each part is checked on its own, so independent problems are all reported.
        packet = self.packet(node["packet"], node.valmarks["packet"]) if "packet" in node else None
        expect = None
        if "expect" in node:
            expect = self.expectation(node["expect"], node.valmarks["expect"], direction)
        if packet is None or expect is None or direction is None:
            return None
        return PolicyTest(packet=packet, expect=expect, direction=direction, line=to_pos(pos)[0])

    def packet(self, node: object, pos: Pos) -> Packet | None:
        if not isinstance(node, YMap):
            self.error(pos, "a test packet must be a mapping {src, dst, proto, ...}")
            return None
        before = len(self.problems)
        self.check_keys(node, PACKET_KEYS, "a test packet")
        for key in ("src", "dst", "proto"):
            if key not in node:
                self.error(pos, f"a test packet needs '{key}'")
        readable = set(node)
        for key, noun in _PACKET_SCALARS.items():
            value = node.get(key)
            if isinstance(value, (YSeq, YMap)):
                kind = "a list" if isinstance(value, YSeq) else "a mapping"
                self.error(node.valmarks[key], f"{key}: a test packet has one {noun}, not {kind}")
                readable.discard(key)
        src = self.address(node["src"], node.valmarks["src"], "src") if "src" in readable \
            else None
        dst = self.address(node["dst"], node.valmarks["dst"], "dst") if "dst" in readable \
            else None
        proto = None
        if "proto" in readable:
            proto = self.protocol(node["proto"], node.valmarks["proto"], "proto")
        fields: dict[str, Any] = {}   # Packet's other keyword arguments
        for key in ("sport", "dport"):
            if key in readable:
                port_range = self.port_range(node[key], node.valmarks[key], key)
                if port_range is not None and port_range.lo != port_range.hi:
                    self.error(node.valmarks[key], f"{key}: a test packet has one port")
                elif port_range is not None:
                    fields[key] = port_range.lo
        if "fragment" in node:
            fields["fragment"] = self.as_bool(node["fragment"], node.valmarks["fragment"],
                                              "fragment")
        if len(self.problems) > before:
            return None
        # Here src, dst and proto were read (a missing or unreadable one was reported above).
        if src.version != dst.version:  # type: ignore[union-attr]
            self.error(later_pos(node, "src", "dst"), "src and dst of a test packet must be "
                       "the same IP version")
            return None
        family = src.version  # type: ignore[union-attr]
        if proto in PORT_PROTOS:
            fields.setdefault("sport", 12345)  # a typical ephemeral port when not given
            fields.setdefault("dport", 0)
        elif "sport" in fields or "dport" in fields:
            self.error(later_pos(node, "proto", "dport" if "dport" in node else "sport"),
                       "ports need proto tcp or udp")
            return None
        if ("icmp_type" in node or "icmp_code" in node) and ICMP_PROTOS.get(proto) != family:  # type: ignore[arg-type]
            key = "icmp_type" if "icmp_type" in node else "icmp_code"
            self.error(later_pos(node, "proto", key),
                       f"{key} needs proto {'icmp' if family == 4 else 'icmpv6'} "
                       f"for an IPv{family} packet")
            return None
        if ICMP_PROTOS.get(proto) == family:  # type: ignore[arg-type]
            icmp_type = 0
            if "icmp_type" in node:
                types = self.icmp_types(node["icmp_type"], node.valmarks["icmp_type"], [family],
                                        "icmp_type")
                if types is None or len(types) != 1:
                    if types is not None:
                        self.error(node.valmarks["icmp_type"], "a test packet has one ICMP type")
                    return None
                icmp_type = types[0][1]
            fields["icmp_type"] = icmp_type
            code = node.get("icmp_code", 0)
            if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
                self.error(node.valmarks.get("icmp_code", pos), "icmp_code must be 0-255")
                return None
            fields["icmp_code"] = code
        ttl = node.get("ttl", default_ttl(family, proto, fields.get("icmp_type")))  # type: ignore[arg-type]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 255:
            self.error(node.valmarks.get("ttl", pos), "ttl (the IPv4 TTL or IPv6 hop limit) "
                       "must be 0-255")
            return None
        fields["ttl"] = ttl
        return Packet(src=src, dst=dst, proto=proto, **fields)  # type: ignore[arg-type]

    def expectation(self, value: object, pos: Pos, direction: Direction | None
                    ) -> Expectation | None:
        if isinstance(value, YMap):
            self.check_keys(value, ("rule",), "expect")
            name = value.get("rule")
            if "rule" not in value:
                self.error(pos, "expect must be accept, drop or {rule: NAME}")
                return None
            if str(name) not in self._names:
                self.error(value.valmarks["rule"], f"expect names rule '{name}', which the "
                           "policy does not have")
                return None
            rule_direction = self._directions.get(str(name))
            if direction is not None and rule_direction not in (None, direction):
                self.error(value.valmarks["rule"], f"expect names rule '{name}', an "
                           f"{rule_direction.value} rule, but the test packet is "
                           f"{direction.value}: it can never decide")
                return None
            return Expectation(rule=str(name))
        verdict = self.as_choice(value, pos, "expect", Action)
        return Expectation(verdict=verdict) if verdict is not None else None


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


def packet_from_options(src: str, dst: str, proto: str | None = None,
                        sport: str | None = None, dport: str | None = None,
                        icmp_type: str | None = None, icmp_code: int | None = None,
                        ttl: int | None = None, fragment: bool = False) -> Packet:
    """A Packet from command-line options (``netctl explain``'s), each checked as a policy's
    field would be; the problems are raised together as a PolicyError naming the option."""
    reader = _Loader("command line")
    source = reader.address(src, None, "--src")
    dest = reader.address(dst, None, "--dst")
    if reader.problems:
        raise PolicyError(reader.problems)
    # Here the addresses (and below, after the same test, the protocol) were read.
    if source.version != dest.version:  # type: ignore[union-attr]
        raise PolicyError([Problem("command line", 0, None,
                                   "--src and --dst must be the same IP version")])
    family = source.version  # type: ignore[union-attr]
    if proto is not None:
        number = reader.protocol(int(proto) if proto.isdigit() else proto, None, "--proto")
    elif icmp_type is not None:
        number = 1 if family == 4 else 58
    else:
        number = 6
    if reader.problems:
        raise PolicyError(reader.problems)
    fields: dict[str, Any] = {"fragment": fragment}   # Packet's other keyword arguments
    if number in PORT_PROTOS:
        for name, value, default in (("sport", sport, 12345), ("dport", dport, 0)):
            if value is None:
                fields[name] = default
                continue
            port = reader.port_range(int(value) if value.isdigit() else value, None, f"--{name}")
            if port is not None and port.lo != port.hi:
                reader.error(None, f"--{name}: give one port, not a range")
            elif port is not None:
                fields[name] = port.lo
    elif sport is not None or dport is not None:
        reader.error(None, "--sport/--dport need --proto tcp or udp")
    if ICMP_PROTOS.get(number) == family:  # type: ignore[arg-type]
        type_number = 0
        if icmp_type is not None:
            types = reader.icmp_types(int(icmp_type) if icmp_type.isdigit() else icmp_type,
                                      None, [family], "--icmp-type")
            type_number = types[0][1] if types else 0
        code = icmp_code if icmp_code is not None else 0
        if not 0 <= code <= 255:
            reader.error(None, "--icmp-code must be 0-255")
        fields["icmp_type"], fields["icmp_code"] = type_number, code
    elif icmp_type is not None or icmp_code is not None:
        reader.error(None, f"--icmp-type/--icmp-code need --proto "
                     f"{'icmp' if family == 4 else 'icmpv6'} for IPv{family} addresses")
    hops = ttl if ttl is not None else default_ttl(family, number, fields.get("icmp_type"))  # type: ignore[arg-type]
    if not 0 <= hops <= 255:
        reader.error(None, "--ttl must be 0-255")
    fields["ttl"] = hops
    if reader.problems:
        raise PolicyError(reader.problems)
    return Packet(src=source, dst=dest, proto=number, **fields)  # type: ignore[arg-type]
