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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import yaml
from yaml import events as ev

try:  # libyaml's C parser; the pure-Python one is a slow but correct fallback
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - Debian's and PyPI's PyYAML both ship it
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

Pos = tuple[int, int]  # (line, column), 1-based


class LibyamlMark(Protocol):
    """libyaml's position of an event (yaml.error.Mark, or the C parser's): 0-based."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


# Where a node was: libyaml's mark, or from the fast path an int packing
# (line << 16) + column, already 1-based.  to_pos() reads either.
Mark = int | LibyamlMark

_INT = re.compile(r"[-+]?[0-9]+\Z")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})


class YMap(dict[object, object]):
    """A mapping that knows where it, each key and each value were."""

    __slots__ = ("mark", "keymarks", "valmarks")

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.keymarks: dict[object, Mark] = {}
        self.valmarks: dict[object, Mark] = {}

    @property
    def pos(self) -> Pos:
        return to_pos(self.mark)

    def keypos(self, key: object) -> Pos:
        return to_pos(self.keymarks[key])

    def valpos(self, key: object) -> Pos:
        return to_pos(self.valmarks[key])


class YSeq(list[object]):
    """A sequence that knows where it and each item were."""

    __slots__ = ("mark", "itemmarks")

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.itemmarks: list[Mark] = []

    @property
    def pos(self) -> Pos:
        return to_pos(self.mark)

    def items_with_pos(self) -> Iterator[tuple[object, Mark]]:
        """(item, mark) pairs; convert a mark with to_pos() when reporting."""
        return zip(self, self.itemmarks, strict=True)


@dataclass(frozen=True)
class YamlProblem:
    line: int
    column: int | None
    message: str


# -- fast path for one-line flow mappings --------------------------------------------------
# Big generated policies are mostly lines like
#     - {name: bl-17, action: drop, src: 10.0.17.0/24, dport: [22, "8000-8100"]}
# libyaml makes about 15 Python objects per such line.  A line whose content is that simple
# (plain scalars of address/port/name characters, quoted strings without escapes, flat
# lists) is read here directly, and libyaml sees a one-token placeholder on that line, so
# the document's structure and every line number stay as they were.  Anything else on the
# line (anchors, tags, nesting, escapes, comments inside) leaves it to libyaml.  A
# differential test checks this path against libyaml's reading of the same lines.
_PLAIN = r"[A-Za-z0-9_][A-Za-z0-9_./:+-]*(?<!:)"
_SCALAR = rf"""(?:{_PLAIN}|"[ !#-\[\]-~]*"|'[ -&(-~]*')"""  # quoted: printable ASCII
_FAST_LINE = re.compile(r"( *)- \{ *(.*?) *\} *(?:#.*)?\Z")
_FAST_LINES = re.compile(r"^( +)- \{ *([^\n{}#]*?) *\} *(?:#[^\n]*)?$", re.MULTILINE)
_FAST_ITEM = re.compile(
    rf"([A-Za-z_][A-Za-z0-9_]*): +(?:({_SCALAR})|\[ *((?:{_SCALAR})(?: *, *{_SCALAR})*)? *\])"
    r" *(?:,|\Z) *"
)
_FAST_SCALAR = re.compile(_SCALAR)
_BLOCK_SCALAR = re.compile(r"[:-] +[|>]")
_PLACEHOLDER = "_netctl_fast_line_"


def _fast_scalar(token: str) -> object:
    first = token[0]
    if first == '"' or first == "'":
        return token[1:-1]
    if _INT.match(token):
        return int(token, 10)
    return None if token in _NULLS else token


def _fast_line(line: str, lineno: int) -> YMap | None:
    """The mapping on one simple flow item line (0-based `lineno`), or None."""
    m = _FAST_LINE.match(line)
    return None if m is None else _fast_map(m.group(2), lineno, m.start(2), m.end(1))


def _fast_map(body: str, lineno: int, body_col: int, indent: int) -> YMap | None:
    """Read a flow mapping's body; None to leave it to libyaml.  Positions are packed ints
    (see to_pos): this runs once per rule of a big file."""
    if body_col + len(body) > 60000:
        return None
    base = ((lineno + 1) << 16) + body_col + 1  # 1-based column of body[0]
    node = YMap(base - body_col + indent + 2)
    keymarks, valmarks = node.keymarks, node.valmarks
    pos = 0
    for item in _FAST_ITEM.finditer(body):
        if item.start() != pos:
            return None
        pos = item.end()
        key, scalar, items = item.group(1, 2, 3)
        if key in node:
            return None  # let libyaml's reading report the duplicate
        keymarks[key] = base + item.start(1)
        if scalar is not None:
            node[key] = _fast_scalar(scalar)
            valmarks[key] = base + item.start(2)
        else:
            seq = YSeq(base + body.index("[", item.end(1)))
            if items is not None:
                at = base + item.start(3)
                for tok in _FAST_SCALAR.finditer(items):
                    seq.append(_fast_scalar(tok.group()))
                    seq.itemmarks.append(at + tok.start())
            node[key] = seq
            valmarks[key] = seq.mark
    if pos != len(body):
        return None
    return node


def compose(text: str) -> tuple[object, list[YamlProblem]]:
    """Parse one YAML document.  Returns (root or None, problems)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: only reachable from a str
        line = text.count("\n", 0, exc.start) + 1
        return None, [YamlProblem(line, None, "the text is not valid Unicode")]
    fast: dict[int, YMap] = {}
    if text.count("\n") > 1000 and not _BLOCK_SCALAR.search(text):
        where = [0, 0]  # (offset, line) of the last match, to count lines incrementally

        def replace(m: re.Match[str]) -> str:
            start = m.start()
            lineno = where[1] + text.count("\n", where[0], start)
            where[0], where[1] = start, lineno
            node = _fast_map(m.group(2), lineno, m.start(2) - start, m.end(1) - start)
            if node is None:
                return m.group(0)
            fast[lineno] = node
            return f"{m.group(1)}- {_PLACEHOLDER}"

        text = _FAST_LINES.sub(replace, text)
    return _compose(text, fast)


def _compose(text: str, fast: dict[int, YMap]) -> tuple[object, list[YamlProblem]]:
    """Parse one YAML document with libyaml; placeholders stand for `fast` lines.

    This loop runs once per YAML event (about 15 per rule), so it is written for speed:
    positions are libyaml's own Mark objects, converted to (line, column) only when read.
    """
    problems: list[YamlProblem] = []
    anchors: dict[str, object] = {}
    # Each stack frame: [container, pending key (or _NOKEY), pending key mark, anchor]
    stack: list[list[Any]] = []
    root: object = None
    documents = 0
    int_match = _INT.match
    nulls = _NULLS
    scalar_event, alias_event = ev.ScalarEvent, ev.AliasEvent
    map_start, seq_start = ev.MappingStartEvent, ev.SequenceStartEvent
    map_end, seq_end = ev.MappingEndEvent, ev.SequenceEndEvent
    loader = _Loader(text)
    # An event's kind is told by comparing its type with local aliases of the classes (for
    # speed), which mypy cannot narrow by: events, their marks and the node each one makes
    # (a scalar's str, a popped frame's container...) are read as Any.
    get_event: Callable[[], Any] = loader.get_event
    try:
        while (event := get_event()) is not None:
            kind = type(event)
            mark = event.start_mark
            if kind is scalar_event:
                node: Any = event.value
                if event.implicit[0]:  # plain (unquoted, untagged)
                    if int_match(node):
                        node = int(node, 10)
                    elif node in nulls:
                        node = None
                    elif fast and node.startswith(_PLACEHOLDER):
                        node = fast.get(mark.line, node)
                        if type(node) is YMap:
                            mark = node.mark
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
    except yaml.reader.ReaderError as exc:  # control characters, bad encoding
        at = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        what = f"character {exc.character!r} is not allowed in YAML ({exc.reason})"
        problems.append(YamlProblem(line, column, what))
        return None, problems
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "mark", None)
        line = mark.line + 1 if mark is not None else 1
        problems.append(YamlProblem(line, None, f"YAML error: {exc}"))
        return None, problems
    finally:
        loader.dispose()
    return root, problems


def to_pos(mark: Mark) -> Pos:
    """A position as a 1-based (line, column).  Marks are libyaml's (0-based attributes)
    or, from the fast path, ints packing (line << 16) + column, already 1-based."""
    if isinstance(mark, int):
        return (mark >> 16, mark & 0xFFFF)
    return (mark.line + 1, mark.column + 1)


class _NoKey:
    __slots__ = ()


_NOKEY = _NoKey()
