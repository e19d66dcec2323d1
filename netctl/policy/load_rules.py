"""The loader's readers of rules, sets and test packets, over the value readers
(load_values.py): one rule with every cross-field check, the ``sets:`` section, one
policy test with its packet and expectation."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .load_values import (
    _BOTH,
    _PACKET_SCALARS,
    _RULE_NAME,
    _T,
    ICMP_KEYS,
    PACKET_KEYS,
    RULE_KEYS,
    RULE_NAME_MAX,
    SET_KEYS,
    TEST_KEYS,
    Pos,
    _content_families,
    _family_words,
    _names_not_in,
    _net_families,
    _parse_network,
    _proto_families,
    _Reader,
    later_pos,
)
from .model import (
    ICMP_PROTOS,
    PORT_PROTOS,
    PROTO_TCP,
    PROTO_UDP,
    Action,
    AddressItem,
    Direction,
    Expectation,
    Packet,
    PolicyTest,
    PrefixSet,
    Rule,
    default_ttl,
)
from .sets import (
    MAX_SET_PREFIXES,
    SET_NAME,
    SET_NAME_MAX,
    SetFileError,
    make_set,
    read_set_file,
)
from .yamlsrc import YMap, YSeq, to_pos


class _RuleReader(_Reader):
    """Rules, sets and tests (see the module docstring)."""

    # Set by the policy reader (load.py) before it reads the rules and the tests.
    _names: dict[str, Pos]              # rule name -> where it was defined
    _directions: dict[str, Direction]   # rule name -> its direction

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
