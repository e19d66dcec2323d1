"""Named address sets: set files read fast, prefixes as integers, and live edits.

A set file holds one prefix (or address) per line, IPv4 and IPv6 mixed, as blocklists are
published (FireHOL ``.netset``, Spamhaus DROP, country zone files): blank lines are skipped,
and ``#`` or ``;`` starts a comment, on a line of its own or after the prefix
(``192.0.2.0/24 ; SBL123``).  A million lines are read in about a second: each line is
split and converted with ``inet_pton`` and ``int.from_bytes``, never through ``ipaddress``
(whose objects would cost seconds and hundreds of MB at that size).  The syntax accepted is
``ipaddress``'s strict one (no leading zeros in IPv4, no zone ids), with a decimal prefix
length; a bad line is reported as ``FILE:LINE: message``, with host bits set as in a rule.

Live edits (``netctl set add/del``) are an overlay of added and removed prefixes per set,
kept in the namespace's state: ``with_edits`` gives the policy with them in force, whatever
its files say, so the next ``netctl apply`` keeps them.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import os
import re
import socket
from collections.abc import Iterable, Mapping
from itertools import repeat

from ..errors import PolicyError, Problem
from .model import BITS, AddressItem, Policy, PrefixSet, Rule, item_families

# A set's name: what follows '@' in a rule.
SET_NAME_MAX = 64
SET_NAME = re.compile(rf"[A-Za-z0-9_.-]{{1,{SET_NAME_MAX}}}\Z")

# Ceilings, checked before the work they would cost: a set file is refused past
# MAX_SET_FILE_BYTES (a million IPv6 prefixes written out in full, with comments, fit
# comfortably), and a policy past MAX_SET_PREFIXES prefixes in all its sets (twice the
# million the datapath is measured with; each costs about half a KB while it is compiled).
MAX_SET_FILE_BYTES = 256 << 20
MAX_SET_PREFIXES = 2_097_152
MAX_FILE_PROBLEMS = 20   # bad lines reported one by one; the rest are counted

_PTON = socket.inet_pton
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_HOSTMASK = {f: [(1 << (b - plen)) - 1 for plen in range(b + 1)] for f, b in BITS.items()}
_DIGITS = re.compile(r"[0-9]{1,3}\Z")

Prefix3 = tuple[int, int, int]   # (family, prefix length, network int)


def parse_prefix(text: str) -> Prefix3 | str:
    """``(family, prefix length, network)`` of an address or prefix in network form, or the
    reason it is not one (the loader's wording for rules)."""
    address, slash, length = text.partition("/")
    family = 6 if ":" in address else 4
    try:
        value = int.from_bytes(_PTON(_AF[family], address), "big")
    except (OSError, ValueError):   # ValueError: an embedded NUL
        return f"'{text}' is not an IP address or prefix"
    if slash:
        if not _DIGITS.match(length) or int(length) > BITS[family]:
            return f"'{text}' is not an IP address or prefix"
        plen = int(length)
    else:
        plen = BITS[family]
    if value & _HOSTMASK[family][plen]:
        network = value & ~_HOSTMASK[family][plen]
        return (f"{text} has host bits set; the network is "
                f"{format_prefix(family, plen, network)}")
    return family, plen, value


def format_prefix(family: int, plen: int, network: int) -> str:
    address = socket.inet_ntop(_AF[family], network.to_bytes(BITS[family] // 8, "big"))
    return f"{address}/{plen}"


def format_item(item: Prefix3) -> str:
    return format_prefix(*item)


class SetFileError(Exception):
    """A set file that cannot be read at all (missing, too big, not text)."""


def read_set_file(path: str, shown: str | None = None, budget: int = MAX_SET_PREFIXES
                  ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...],
                             list[Problem], str]:
    """The prefixes of a set file as ``(v4, v6, problems, sha256 of the file)``: per family
    sorted unique ``(prefix length, network)``; problems name ``shown`` (default ``path``)
    and the line.  Raises SetFileError when the file cannot be read or is past a ceiling
    (``budget``: the prefixes the policy has room for)."""
    shown = shown or path
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise SetFileError(f"cannot read set file {shown}: {exc.strerror}") from None
    if size > MAX_SET_FILE_BYTES:
        raise SetFileError(f"set file {shown} is {size >> 20} MiB; set files are limited to "
                           f"{MAX_SET_FILE_BYTES >> 20} MiB")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SET_FILE_BYTES + 1)
    except OSError as exc:
        raise SetFileError(f"cannot read set file {shown}: {exc.strerror}") from None
    if len(data) > MAX_SET_FILE_BYTES:   # it grew since its size was read
        raise SetFileError(f"set file {shown} is over {MAX_SET_FILE_BYTES >> 20} MiB; set "
                           f"files are limited to {MAX_SET_FILE_BYTES >> 20} MiB")
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SetFileError(f"set file {shown}:{line}: not UTF-8 text ({exc.reason})") from None
    del data
    return (*parse_set_text(text, shown, budget), digest)


def file_sha256(path: str) -> str | None:
    """A set file's digest now (None when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def parse_set_text(text: str, shown: str, budget: int = MAX_SET_PREFIXES
                   ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...],
                              list[Problem]]:
    """``read_set_file`` on text already read."""
    # Per family, per prefix length, the networks in file order: a published list is sorted
    # by address, so each length's list is sorted already and sorting it costs one pass.
    by_length: dict[int, list[list[int]]] = {4: [[] for _ in range(33)],
                                             6: [[] for _ in range(129)]}
    add4 = [networks.append for networks in by_length[4]]
    add6 = [networks.append for networks in by_length[6]]
    lengths4 = {str(plen): plen for plen in range(33)}
    lengths6 = {str(plen): plen for plen in range(129)}
    mask4, mask6 = _HOSTMASK[4], _HOSTMASK[6]
    pton, af4, af6, from_bytes = _PTON, socket.AF_INET, socket.AF_INET6, int.from_bytes
    problems: list[Problem] = []
    bad = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        # The common line, a bare prefix, inline (a million times); anything else (blank,
        # comment, spaces, an error) takes the careful path below.
        address, slash, length = line.partition("/")
        try:
            if ":" in address:
                value = from_bytes(pton(af6, address), "big")
                plen = lengths6[length] if slash else 128
                if not value & mask6[plen]:
                    add6[plen](value)
                    continue
            else:
                value = from_bytes(pton(af4, address), "big")
                plen = lengths4[length] if slash else 32
                if not value & mask4[plen]:
                    add4[plen](value)
                    continue
        except (OSError, ValueError, KeyError):
            pass
        parsed = _careful_line(line)
        if parsed is None:
            continue
        if isinstance(parsed, str):
            if not _bad(problems, bad, shown, lineno, parsed):
                return (), (), problems
            bad += 1
            continue
        family, plen, value = parsed
        by_length[family][plen].append(value)
    if bad > MAX_FILE_PROBLEMS:
        problems.append(Problem(shown, 0, None, f"{bad - MAX_FILE_PROBLEMS:,} more lines with "
                                "problems (the first are shown)"))
    v4, v6 = _from_lengths(by_length[4]), _from_lengths(by_length[6])
    if len(v4) + len(v6) > budget:
        problems.append(Problem(shown, 0, None, f"{len(v4) + len(v6):,} prefixes: "
                                f"{_budget_words(budget)}"))
        return (), (), problems
    return v4, v6, problems


def _budget_words(budget: int) -> str:
    if budget == MAX_SET_PREFIXES:
        return f"a policy's sets hold at most {MAX_SET_PREFIXES:,} prefixes in all"
    return (f"more than the {budget:,} left of the {MAX_SET_PREFIXES:,} a policy's sets hold "
            "in all")


def _bad(problems: list[Problem], bad: int, shown: str, lineno: int, message: str) -> bool:
    """Report one bad line (the first MAX_FILE_PROBLEMS in full); False to stop reading: a
    file that is mostly not prefixes (a wrong format) is not read to the end."""
    if bad < MAX_FILE_PROBLEMS:
        problems.append(Problem(shown, lineno, None, message))
    if bad >= 1000 and bad * 2 > lineno:
        problems.append(Problem(shown, lineno, None, f"stopped reading: {bad:,} of the first "
                                f"{lineno:,} lines are not prefixes (is this a set file?)"))
        return False
    return True


def _careful_line(line: str) -> Prefix3 | str | None:
    """One line of a set file that is not a bare prefix: None for a blank or comment line,
    else the prefix or what is wrong with the line."""
    parts = _COMMENT.split(line, maxsplit=1)[0].split()
    if not parts:
        return None
    if len(parts) > 1:
        return ("one prefix per line (after the prefix only a '#' or ';' comment may follow, "
                f"not {' '.join(parts[1:])[:40]!r})")
    return parse_prefix(parts[0])


_COMMENT = re.compile("[#;]")


def _from_lengths(by_length: list[list[int]]) -> tuple[tuple[int, int], ...]:
    """Networks listed per prefix length as sorted unique (length, network) tuples."""
    out: list[tuple[int, int]] = []
    for plen, networks in enumerate(by_length):
        if networks:
            networks.sort()
            out.extend(zip(repeat(plen), dict.fromkeys(networks)))
    return tuple(out)


def make_set(name: str, prefixes: Iterable[Prefix3], source: str | None = None,
             line: int = 0) -> PrefixSet:
    by_length: dict[int, list[list[int]]] = {4: [[] for _ in range(33)],
                                             6: [[] for _ in range(129)]}
    for family, plen, net in prefixes:
        by_length[family][plen].append(net)
    return PrefixSet(name, _from_lengths(by_length[4]), _from_lengths(by_length[6]), source,
                     line)


def set_items(pset: PrefixSet) -> list[Prefix3]:
    """Every prefix of a set as (family, prefix length, network), IPv4 first, each family
    sorted by network then length (the order ``netctl set list`` prints)."""
    out: list[Prefix3] = []
    for family in (4, 6):
        out.extend((family, plen, net) for net, plen in
                   sorted((net, plen) for plen, net in pset.family(family)))
    return out


# ---- live edits --------------------------------------------------------------------------
#
# An overlay per set of prefixes added and removed by hand (``netctl set add/del``), relative
# to the set as its file or elements give it (the base).  It is recorded as given and stays
# in force until undone, reset, or the set leaves the policy: re-applying the policy, even
# with a changed file, keeps it (the live set is the base less the removed plus the added).
# An edit that undoes another takes it back (adding a prefix removed by hand, removing one
# added by hand), so the overlay never holds a prefix both ways.

Edits = Mapping[str, Mapping[str, list[str]]]   # set name -> {"add": [...], "del": [...]}


def with_set(pset: PrefixSet, added: Iterable[Prefix3], removed: Iterable[Prefix3]
             ) -> PrefixSet:
    """The set's base (its file or elements) with exactly these edits in force."""
    base = pset.base or pset
    added = tuple(sorted(set(added)))
    removed = tuple(sorted(set(removed) - set(added)))
    if not added and not removed:
        return base
    live = []
    for family, own in ((4, base.v4), (6, base.v6)):
        gone = {(plen, net) for f, plen, net in removed if f == family}
        kept = [p for p in own if p not in gone] if gone else list(own)
        new = [(plen, net) for f, plen, net in added if f == family
               and not _holds(own, (plen, net))]
        if new:
            kept.extend(new)
            kept.sort()   # one sorted run and a short one: merged in a pass
        live.append(tuple(kept))
    return dataclasses.replace(base, v4=live[0], v6=live[1], added=added, removed=removed,
                               base=base)


def _holds(prefixes: tuple[tuple[int, int], ...], prefix: tuple[int, int]) -> bool:
    """Whether a sorted tuple of prefixes has this one (bisection, not a million-entry set)."""
    at = bisect.bisect_left(prefixes, prefix)
    return at < len(prefixes) and prefixes[at] == prefix


def has_prefix(pset: PrefixSet, item: Prefix3) -> bool:
    family, plen, net = item
    return _holds(pset.family(family), (plen, net))


def with_edits(policy: Policy, edits: Edits) -> tuple[Policy, list[str]]:
    """The policy (sets as their files and elements give them) with these live edits in
    force.  Returns it and the names of edited sets the policy does not have (their edits
    are dropped)."""
    by_name = {s.name: s for s in policy.sets}
    gone = sorted(name for name, e in edits.items()
                  if name not in by_name and (e.get("add") or e.get("del")))
    replaced: dict[str, PrefixSet] = {}
    for pset in policy.sets:
        added, removed = parse_edits(edits.get(pset.name, {}))
        new = with_set(pset, added, removed)
        if new is not pset:
            replaced[pset.name] = new
    if not replaced:
        return policy, gone
    return replace_sets(policy, replaced), gone


def parse_edits(edits: Mapping[str, list[str]]) -> tuple[list[Prefix3], list[Prefix3]]:
    """A recorded overlay ({"add": [...], "del": [...]}, prefixes as text) as integers."""
    out: tuple[list[Prefix3], list[Prefix3]] = ([], [])
    for key, dest in (("add", out[0]), ("del", out[1])):
        for text in edits.get(key, ()):
            parsed = parse_prefix(text)
            if isinstance(parsed, str):
                raise PolicyError([Problem("<live set edits>", 0, None, parsed)])
            dest.append(parsed)
    return out


def edits_record(pset: PrefixSet) -> dict[str, list[str]]:
    """A set's live edits as recorded in the state (text, sorted)."""
    return {"add": [format_item(i) for i in pset.added],
            "del": [format_item(i) for i in pset.removed]}


@dataclasses.dataclass
class EditOutcome:
    """What one ``netctl set add/del/reset`` did to a set."""

    name: str
    done: list[str]          # prefixes added or removed now
    already: list[str]       # add: prefixes the set held already (nothing to do)
    size: int                # prefixes in the live set afterwards
    added: int               # the overlay afterwards: prefixes added by hand ...
    removed: int             # ... and removed by hand


def parse_prefixes(texts: Iterable[str], source: str = "command line") -> list[Prefix3]:
    """Prefixes given on the command line; PolicyError naming every bad one."""
    out: list[Prefix3] = []
    problems = []
    for text in texts:
        parsed = parse_prefix(text.strip())
        if isinstance(parsed, str):
            problems.append(Problem(source, 0, None, parsed))
        else:
            out.append(parsed)
    if problems:
        raise PolicyError(problems)
    return list(dict.fromkeys(out))


def edit_set(policy: Policy, name: str, add: Iterable[Prefix3] = (),
             delete: Iterable[Prefix3] = (), reset: bool = False
             ) -> tuple[Policy, EditOutcome]:
    """The policy with one set edited live: ``add`` prefixes (those it holds already change
    nothing), ``delete`` prefixes (each must be in the set: PolicyError otherwise, nothing
    changed), or ``reset`` (every edit dropped: the set as its file or elements give it)."""
    pset = policy.prefix_set(name)
    if pset is None:
        raise PolicyError([Problem("command line", 0, None, unknown_set(policy, name))])
    base = pset.base or pset
    added, removed = set(pset.added), set(pset.removed)
    done: list[str] = []
    already: list[str] = []
    if reset:
        done = [format_item(i) for i in sorted(added | removed)]
        added, removed = set(), set()
    for item in add:
        if has_prefix(pset, item):
            already.append(format_item(item))
            continue
        removed.discard(item)
        if not has_prefix(base, item):
            added.add(item)
        done.append(format_item(item))
    missing = [format_item(i) for i in delete if not has_prefix(pset, i)]
    if missing:
        raise PolicyError([Problem("command line", 0, None, f"{text} is not in set @{name} "
                                   "(nothing changed)") for text in missing])
    for item in delete:
        added.discard(item)
        if has_prefix(base, item):
            removed.add(item)
        done.append(format_item(item))
    new = with_set(base, added, removed)
    outcome = EditOutcome(name, done, already, len(new), len(new.added), len(new.removed))
    if new == pset:
        return policy, outcome
    return replace_sets(policy, {name: new}), outcome


def unknown_set(policy: Policy, name: str) -> str:
    """The message for a set name the policy does not define, with the closest ones."""
    from .load import closest_keys

    known = tuple(s.name for s in policy.sets)
    hint = " or ".join(f"'{k}'" for k in closest_keys(name, known))
    if hint:
        return f"the live policy has no set '{name}'; did you mean {hint}?"
    if known:
        return f"the live policy has no set '{name}' (its sets: {', '.join(known)})"
    return "the live policy defines no sets"


def replace_sets(policy: Policy, replaced: Mapping[str, PrefixSet]) -> Policy:
    """The policy with some sets' contents replaced, in every rule that uses them (the
    rules' families follow the new contents)."""
    rules = []
    for rule in policy.rules:
        new_rule = rule
        if _uses(rule, replaced):
            src = _swap(rule.src, replaced)
            dst = _swap(rule.dst, replaced)
            new_rule = dataclasses.replace(rule, src=src, dst=dst,
                                           families=content_families(rule, src, dst))
        rules.append(new_rule)
    sets = tuple(replaced.get(s.name, s) for s in policy.sets)
    return dataclasses.replace(policy, rules=tuple(rules), sets=sets)


def _uses(rule: Rule, names: Mapping[str, PrefixSet]) -> bool:
    return any(isinstance(item, PrefixSet) and item.name in names
               for field in (rule.src, rule.dst) if field for item in field)


def _swap(field: tuple[AddressItem, ...] | None, replaced: Mapping[str, PrefixSet]
          ) -> tuple[AddressItem, ...] | None:
    if field is None:
        return None
    return tuple(replaced.get(i.name, i) if isinstance(i, PrefixSet) else i for i in field)


_BOTH = frozenset({4, 6})


def static_families(rule: Rule) -> frozenset[int]:
    """The IP versions the rule's fields allow, a set counting as both (its contents are
    data that may change)."""
    from .model import ICMP_PROTOS

    families = set(_BOTH)
    for field in (rule.src, rule.dst):
        if field is not None and not any(isinstance(i, PrefixSet) for i in field):
            families &= {i.version for i in field}  # type: ignore[union-attr]  # no set
    if rule.proto is not None:
        allowed: set[int] = set()
        for p in rule.proto:
            allowed |= {ICMP_PROTOS[p]} if p in ICMP_PROTOS else _BOTH
        families &= allowed
    return frozenset(families)


def content_families(rule: Rule, src: tuple[AddressItem, ...] | None,
                     dst: tuple[AddressItem, ...] | None) -> frozenset[int]:
    """What ``Rule.families`` is with these address fields: the static families narrowed
    by what the fields' items (a set's contents) hold now."""
    families = set(static_families(dataclasses.replace(rule, src=src, dst=dst)))
    for field in (src, dst):
        if field is not None:
            held: set[int] = set()
            for item in field:
                held |= item_families(item)
            families &= held
    return frozenset(families)


def used_sets(policy: Policy) -> set[str]:
    return {item.name for rule in policy.rules for field in (rule.src, rule.dst) if field
            for item in field if isinstance(item, PrefixSet)}


def sets_record(policy: Policy) -> dict[str, dict[str, object]]:
    """What `apply` records of a policy's sets: per set its source, sizes and live edits
    (status shows it; the next apply and the set verbs read the edits back)."""
    out: dict[str, dict[str, object]] = {}
    for pset in policy.sets:
        base = pset.base or pset
        out[pset.name] = {"file": pset.source, "sha256": pset.sha256, "v4": len(pset.v4),
                          "v6": len(pset.v6), "base": len(base), **edits_record(pset)}
    return out
