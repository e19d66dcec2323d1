"""Policy loader: YAML text -> validated, frozen `Policy`, or `PolicyError` listing every
problem at FILE:LINE:COLUMN.

The loader reads the whole file, reports all problems at once and returns nothing unless
the policy is wholly valid, so a caller can never act on half a policy.  Where a problem
involves two keys (ports with an ICMP protocol, an IPv4 source with an IPv6 destination),
it is reported at the later of the two: the key that made the rule impossible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from ..errors import PolicyError, Problem
from ..gcpause import gc_paused
from .load_rules import _RuleReader
from .load_values import (
    _DIGITS,
    _T,
    CONNTRACK_SIZE_MAX,
    ROUTE_REQUIRED,
    TIMEOUT_MAX,
    Pos,
    later_pos,
)

# The language's words, where callers have always found them.
from .load_values import (
    CONNTRACK_KEYS as CONNTRACK_KEYS,
)
from .load_values import (
    EXT_HEADER_NAMES as EXT_HEADER_NAMES,
)
from .load_values import (
    ICMP_KEYS as ICMP_KEYS,
)
from .load_values import (
    ICMP_TYPES as ICMP_TYPES,
)
from .load_values import (
    INTERFACE_KEYS as INTERFACE_KEYS,
)
from .load_values import (
    PACKET_KEYS as PACKET_KEYS,
)
from .load_values import (
    PROTOCOLS as PROTOCOLS,
)
from .load_values import (
    ROUTE_KEYS as ROUTE_KEYS,
)
from .load_values import (
    RULE_KEYS as RULE_KEYS,
)
from .load_values import (
    RULE_NAME_MAX as RULE_NAME_MAX,
)
from .load_values import (
    SET_KEYS as SET_KEYS,
)
from .load_values import (
    TEST_KEYS as TEST_KEYS,
)
from .load_values import (
    TOP_KEYS as TOP_KEYS,
)
from .load_values import (
    closest_keys as closest_keys,
)
from .load_values import (
    edit_distance as edit_distance,
)
from .load_values import (
    interface_name_problem as interface_name_problem,
)
from .load_values import (
    proto_name as proto_name,
)
from .model import (
    ICMP_PROTOS,
    PORT_PROTOS,
    Action,
    Conntrack,
    Direction,
    FlowCache,
    Interface,
    Network,
    Packet,
    Policy,
    Route,
    TcHook,
    XdpMode,
    default_ttl,
)
from .yamlsrc import YMap, YSeq, compose, to_pos

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
    with gc_paused():   # millions of small containers, no cycles (netctl/gcpause.py)
        return dataclasses.replace(_Loader(source, base_dir).load(text), text=text)


class _Loader(_RuleReader):
    """A whole policy: its sections, interfaces and routes, over the rule and value
    readers (load_rules.py, load_values.py)."""

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
        for index, (item, ipos) in enumerate(zip(value, value.itemmarks, strict=True)):
            result = build(item, ipos, len(built))
            # Each node is read once: let it go as soon as its entry is built, or a big
            # file's whole tree stays alive next to the policy built from it (peak memory).
            value[index] = None
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
