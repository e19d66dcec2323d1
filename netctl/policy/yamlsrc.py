"""YAML with positions: plain Python containers that remember where each item was.

PyYAML's node composer keeps positions but builds heavy objects (about 6 s for a
100,000-rule file here); its plain loader is fast but forgets lines.  This composer walks
libyaml's event stream once and builds `YMap` / `YSeq` (dict and list subclasses carrying
1-based line and column positions), which is all the policy loader needs: every error it
reports names a line.

Scalars are resolved the way a policy reader expects, not by YAML 1.1's surprising rules
(`off` and `no` stay strings): a plain decimal integer becomes an int, a plain
``~``/``null``/empty becomes None, everything else is a str.  Booleans are decided by the
field that reads them.  Duplicate keys in one mapping are reported, not silently
overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml
from yaml import events as ev

try:  # libyaml's C parser; the pure-Python one is a slow but correct fallback
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - Debian's and PyPI's PyYAML both ship it
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

Pos = tuple[int, int]  # (line, column), 1-based

_INT = re.compile(r"[-+]?[0-9]+\Z")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})


class YMap(dict):
    """A mapping that knows where it, each key and each value were."""

    __slots__ = ("mark", "keymarks", "valmarks")

    def __init__(self, mark):
        super().__init__()
        self.mark = mark
        self.keymarks: dict[object, object] = {}
        self.valmarks: dict[object, object] = {}

    @property
    def pos(self) -> Pos:
        return to_pos(self.mark)

    def keypos(self, key: object) -> Pos:
        return to_pos(self.keymarks[key])

    def valpos(self, key: object) -> Pos:
        return to_pos(self.valmarks[key])


class YSeq(list):
    """A sequence that knows where it and each item were."""

    __slots__ = ("mark", "itemmarks")

    def __init__(self, mark):
        super().__init__()
        self.mark = mark
        self.itemmarks: list[object] = []

    @property
    def pos(self) -> Pos:
        return to_pos(self.mark)

    def items_with_pos(self):
        """(item, mark) pairs; convert a mark with to_pos() when reporting."""
        return zip(self, self.itemmarks, strict=True)


class Mark:
    """A position made up by hand (for shorthand expansions), shaped like libyaml's."""

    __slots__ = ("line", "column")

    def __init__(self, pos: Pos):
        self.line, self.column = pos[0] - 1, (pos[1] or 1) - 1


@dataclass(frozen=True)
class YamlProblem:
    line: int
    column: int | None
    message: str


def compose(text: str) -> tuple[object, list[YamlProblem]]:
    """Parse one YAML document.  Returns (root or None, problems).

    This loop runs once per YAML event (about 15 per rule), so it is written for speed:
    positions are libyaml's own Mark objects, converted to (line, column) only when read.
    """
    problems: list[YamlProblem] = []
    anchors: dict[str, object] = {}
    # Each stack frame: [container, pending key (or _NOKEY), pending key mark, anchor]
    stack: list[list] = []
    root: object = None
    documents = 0
    int_match = _INT.match
    nulls = _NULLS
    scalar_event, alias_event = ev.ScalarEvent, ev.AliasEvent
    map_start, seq_start = ev.MappingStartEvent, ev.SequenceStartEvent
    map_end, seq_end = ev.MappingEndEvent, ev.SequenceEndEvent
    loader = _Loader(text)
    get_event = loader.get_event
    try:
        while (event := get_event()) is not None:
            kind = type(event)
            mark = event.start_mark
            if kind is scalar_event:
                node: object = event.value
                if event.implicit[0]:  # plain (unquoted, untagged)
                    if int_match(node):
                        node = int(node, 10)
                    elif node in nulls:
                        node = None
                anchor = event.anchor
            elif kind is map_start:
                stack.append([YMap(mark), _NOKEY, None, event.anchor])
                continue
            elif kind is seq_start:
                stack.append([YSeq(mark), _NOKEY, None, event.anchor])
                continue
            elif kind is map_end or kind is seq_end:
                frame = stack.pop()
                node, anchor = frame[0], frame[3]
                mark = node.mark
            elif kind is alias_event:
                if event.anchor not in anchors:
                    problems.append(YamlProblem(*to_pos(mark), f"unknown alias *{event.anchor}"))
                node, anchor = anchors.get(event.anchor), None
            elif kind is ev.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    problems.append(YamlProblem(*to_pos(mark),
                                                "a policy file holds one YAML document"))
                    break
                continue
            else:
                continue
            if anchor is not None:
                anchors[anchor] = node
            if not stack:
                root = node
                continue
            frame = stack[-1]
            container = frame[0]
            if type(container) is YSeq:
                container.append(node)
                container.itemmarks.append(mark)
            elif frame[1] is _NOKEY:
                if isinstance(node, (YMap, YSeq)):
                    problems.append(YamlProblem(*to_pos(mark),
                                                "a mapping key must be a plain value"))
                    node = f"<complex key at line {to_pos(mark)[0]}>"
                frame[1], frame[2] = node, mark
            else:
                key = frame[1]
                if key in container:
                    first = to_pos(container.keymarks[key])[0]
                    problems.append(YamlProblem(*to_pos(frame[2]),
                                                f"duplicate key '{key}' (first at line {first})"))
                else:
                    container[key] = node
                    container.keymarks[key] = frame[2]
                    container.valmarks[key] = mark
                frame[1] = _NOKEY
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = to_pos(mark) if mark else (1, None)
        what = exc.problem or exc.context or "invalid YAML"
        problems.append(YamlProblem(line, column, f"YAML syntax error: {what}"))
        return None, problems
    except yaml.YAMLError as exc:  # reader errors (bad encoding, control characters)
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "mark", None)
        line = mark.line + 1 if mark is not None else 1
        problems.append(YamlProblem(line, None, f"YAML error: {exc}"))
        return None, problems
    finally:
        loader.dispose()
    return root, problems


def to_pos(mark) -> Pos:
    """A libyaml mark (0-based) as a 1-based (line, column)."""
    return (mark.line + 1, mark.column + 1)


class _NoKey:
    __slots__ = ()


_NOKEY = _NoKey()
