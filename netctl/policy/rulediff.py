"""What changes between two policies, rule by rule: `apply --dry-run` against the live
policy, and `netctl diff OLD NEW` between two files (no privilege needed).

Rules are matched by name (names are unique within a policy).  A rule is *added* or
*removed* when its name is in one policy only; *changed* when a field differs (each field
named, with its old and new value); *moved* when only its place among the rules of its
direction changed, which matters because the first matching rule decides.  The policy's
own settings (defaults, conntrack, flow cache, interfaces, routes, sets) are compared too.
Pure: no kernel, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import Policy, PrefixSet

# The fields of a rule an operator writes, in the order the docs give them.
RULE_FIELDS = ("direction", "action", "src", "dst", "proto", "sport", "dport", "icmp_type",
               "icmp_code", "log", "metrics")
SETTINGS = ("default_ingress", "default_egress", "stateful", "conntrack", "allow_ndp",
            "log_sample", "flow_cache", "interfaces", "routes")


@dataclass
class RuleChange:
    name: str
    fields: dict[str, tuple[str, str]]   # field -> (old, new), as text

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name,
                "fields": {k: {"old": old, "new": new} for k, (old, new) in self.fields.items()}}


@dataclass
class RuleDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[RuleChange] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    settings: dict[str, tuple[str, str]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)   # set name -> added/removed/changed

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.moved or self.settings
                    or self.sets)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed,
                "changed": [c.as_dict() for c in self.changed], "moved": self.moved,
                "settings": {k: {"old": old, "new": new}
                             for k, (old, new) in self.settings.items()},
                "sets": self.sets}

    def lines(self) -> list[str]:
        return diff_lines(self.as_dict())


def diff_lines(report: dict[str, Any]) -> list[str]:
    """A diff (``RuleDiff.as_dict()``, as apply's JSON carries it) for people, one change a
    line (empty when the policies agree)."""
    out = [f"  + rule {name}" for name in report["added"]]
    out += [f"  - rule {name}" for name in report["removed"]]
    for change in report["changed"]:
        parts = [f"{k}: {v['old']} -> {v['new']}" for k, v in change["fields"].items()]
        out.append(f"  ~ rule {change['name']}: {'; '.join(parts)}")
    out += [f"  ~ rule {name}: moved (order decides which rule matches first)"
            for name in report["moved"]]
    out += [f"  ~ {k}: {v['old']} -> {v['new']}" for k, v in report["settings"].items()]
    out += [f"  ~ set {name}: {what}" for name, what in report["sets"].items()]
    return out


def rule_diff(old: Policy, new: Policy) -> RuleDiff:
    out = RuleDiff()
    before = {r.name: r for r in old.rules}
    after = {r.name: r for r in new.rules}
    out.added = [r.name for r in new.rules if r.name not in before]
    out.removed = [r.name for r in old.rules if r.name not in after]
    for rule in new.rules:
        was = before.get(rule.name)
        if was is None:
            continue
        fields = {name: (text(getattr(was, name)), text(getattr(rule, name)))
                  for name in RULE_FIELDS
                  if _as_written(getattr(was, name)) != _as_written(getattr(rule, name))}
        if fields:
            out.changed.append(RuleChange(rule.name, fields))
    # Moved: the kept rules of a direction in another relative order.  Those not in the
    # longest run kept in order are the ones that moved.
    for direction in {r.direction for r in new.rules}:
        kept = [r.name for r in new.rules if r.name in before and r.direction == direction]
        order = {r.name: i for i, r in enumerate(r for r in old.rules
                                                 if r.direction == direction)}
        stay = _longest_increasing([order[n] for n in kept if n in order])
        out.moved += [n for n in kept if n in order and order[n] not in stay]
    out.moved.sort(key=lambda n: after[n].index)
    for name in SETTINGS:
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            out.settings[name] = (text(a), text(b))
    old_sets = {s.name: s for s in old.sets}
    new_sets = {s.name: s for s in new.sets}
    for name in sorted(old_sets.keys() | new_sets.keys()):
        if name not in old_sets:
            out.sets[name] = "added"
        elif name not in new_sets:
            out.sets[name] = "removed"
        elif (old_sets[name].v4, old_sets[name].v6) != (new_sets[name].v4, new_sets[name].v6):
            sizes = [len(s.v4) + len(s.v6) for s in (old_sets[name], new_sets[name])]
            out.sets[name] = f"changed ({sizes[0]:,} -> {sizes[1]:,} prefixes)"
    return out


def _as_written(value: Any) -> Any:
    """A rule field as the rule writes it: a set by its name (its contents are the set's
    own change, reported once)."""
    if isinstance(value, tuple):
        return tuple(("@", v.name) if isinstance(v, PrefixSet) else v for v in value)
    return value


def _longest_increasing(values: list[int]) -> set[int]:
    """The values of a longest strictly increasing subsequence."""
    import bisect

    tails: list[int] = []        # smallest tail value of an increasing run of each length
    tail_at: list[int] = []      # its position in values
    parent = [-1] * len(values)
    for i, v in enumerate(values):
        k = bisect.bisect_left(tails, v)
        if k == len(tails):
            tails.append(v)
            tail_at.append(i)
        else:
            tails[k] = v
            tail_at[k] = i
        parent[i] = tail_at[k - 1] if k else -1
    out: set[int] = set()
    i = tail_at[-1] if tail_at else -1
    while i >= 0:
        out.add(values[i])
        i = parent[i]
    return out


def text(value: Any) -> str:
    """A field's value as the policy language writes it."""
    if value is None:
        return "any"
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "value") and not isinstance(value, tuple):   # an enum
        return str(value.value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_item(v) for v in value) + "]" if len(value) != 1 \
            else _item(value[0])
    return str(value)


def _item(value: Any) -> str:
    if isinstance(value, PrefixSet):
        return f"@{value.name}"
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return str(value[0]) if value[0] == value[1] else f"{value[0]}-{value[1]}"
    return str(value)   # networks, port ranges, protocol numbers, interfaces, routes
