"""Named address sets: set files (the fast line parser against ipaddress, every error at
FILE:LINE, the ceilings), `sets:` in a policy (names, elements, files, "@NAME" references,
families), the value object, and live edits (the overlay's semantics)."""

from __future__ import annotations

import ipaddress
import os
import pickle
import random
import textwrap
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netctl.errors import PolicyError
from netctl.policy import sets as setmod
from netctl.policy.evaluate import evaluate
from netctl.policy.load import load_policy, load_policy_text
from netctl.policy.model import Direction, Packet, PrefixSet
from netctl.policy.sets import (
    edit_set,
    edits_record,
    parse_prefix,
    parse_prefixes,
    parse_set_text,
    read_set_file,
    with_edits,
)

SOURCE = "test.yaml"


def net(text: str):
    return ipaddress.ip_network(text)


def pair(text: str) -> tuple[int, int]:
    n = net(text)
    return n.prefixlen, int(n.network_address)


def write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def policy_with(tmp_path, body: str, **files: str):
    for name, text in files.items():
        write(tmp_path / name, text)
    return load_policy(write(tmp_path / "p.yaml", body))


def problems_of(tmp_path, body: str, **files: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy_with(tmp_path, body, **files)
    return [str(p) for p in info.value.problems]


# -- set files ----------------------------------------------------------------------------

GOOD_FILE = """\
# FireHOL-style header
; Spamhaus-style header

192.0.2.0/24 ; SBL123
  198.51.100.7
10.0.0.0/8# no space before the comment
2001:db8::/32
2001:db8:1::1
10.0.0.0/8
203.0.113.0/24\r
"""


def test_a_set_file_with_comments_blank_lines_and_both_families(tmp_path):
    path = write(tmp_path / "blk.txt", GOOD_FILE)
    v4, v6, problems, digest = read_set_file(path)
    assert problems == []
    assert v4 == tuple(sorted([pair("192.0.2.0/24"), pair("198.51.100.7/32"),
                               pair("10.0.0.0/8"), pair("203.0.113.0/24")]))
    assert v6 == tuple(sorted([pair("2001:db8::/32"), pair("2001:db8:1::1/128")]))
    import hashlib
    assert digest == hashlib.sha256((tmp_path / "blk.txt").read_bytes()).hexdigest()


def test_an_empty_set_file_is_an_empty_set(tmp_path):
    v4, v6, problems, _ = read_set_file(write(tmp_path / "e.txt", "# nothing yet\n"))
    assert (v4, v6, problems) == ((), (), [])


@pytest.mark.parametrize("line, message", [
    ("10.0.0.1/8", "10.0.0.1/8 has host bits set; the network is 10.0.0.0/8"),
    ("2001:db8::1/32", "2001:db8::1/32 has host bits set; the network is 2001:db8::/32"),
    ("1.2.3.4/024", "1.2.3.4/024 has host bits set; the network is 1.2.3.0/24"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or prefix"),
    ("10.0.0.0/", "'10.0.0.0/' is not an IP address or prefix"),
    ("10.0.0.0/x", "'10.0.0.0/x' is not an IP address or prefix"),
    ("010.0.0.1", "'010.0.0.1' is not an IP address or prefix"),
    ("10.0.0", "'10.0.0' is not an IP address or prefix"),
    ("fe80::1%eth0", "'fe80::1%eth0' is not an IP address or prefix"),
    ("example.com", "'example.com' is not an IP address or prefix"),
    ("10.0.0.0/8 10.1.0.0/16", "one prefix per line (after the prefix only a '#' or ';' "
                               "comment may follow, not '10.1.0.0/16')"),
    ("10.0.0.0/8 - range", "one prefix per line"),
])
def test_each_bad_line_is_reported_at_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.txt", f"# header\n192.0.2.0/24\n{line}\n198.51.100.0/24\n")
    _, _, problems, _ = read_set_file(path)
    assert [(p.source, p.line) for p in problems] == [(path, 3)]
    assert message in problems[0].message


def test_a_set_file_error_names_the_file_and_line_through_the_policy(tmp_path):
    found = problems_of(tmp_path, """\
        version: 1
        sets:
          blk: {file: blk.txt}
        rules:
          - {name: a, action: drop, src: "@blk"}
        """, **{"blk.txt": "192.0.2.0/24\n10.0.0.1/8\nnonsense\n"})
    blk = os.path.join(str(tmp_path), "blk.txt")
    assert found == [f"{blk}:2: 10.0.0.1/8 has host bits set; the network is 10.0.0.0/8",
                     f"{blk}:3: 'nonsense' is not an IP address or prefix"]


def test_many_bad_lines_are_counted_and_a_file_of_another_format_is_not_read_on(tmp_path):
    lines = ["192.0.2.0/24"] * 10 + ["10.0.0.1/8"] * 30 + ["192.0.2.0/24"] * 10
    _, _, problems, _ = read_set_file(write(tmp_path / "b.txt", "\n".join(lines)))
    assert len(problems) == setmod.MAX_FILE_PROBLEMS + 1
    assert [p.line for p in problems[:3]] == [11, 12, 13]
    assert problems[-1].message == "10 more lines with problems (the first are shown)"
    junk = "\n".join(f"{i},something,else" for i in range(5000))
    _, _, problems, _ = read_set_file(write(tmp_path / "csv.txt", junk))
    assert "stopped reading: 1,000 of the first 1,001 lines are not prefixes (is this a " \
           "set file?)" in problems[-1].message


def test_set_file_ceilings(tmp_path, monkeypatch):
    path = write(tmp_path / "big.txt", "".join(f"10.0.{i}.0/24\n" for i in range(200)))
    monkeypatch.setattr(setmod, "MAX_SET_FILE_BYTES", 1000)
    with pytest.raises(setmod.SetFileError, match=r"big.txt is 0 MiB; set files are limited"):
        read_set_file(path)
    monkeypatch.undo()
    _, _, problems, _ = read_set_file(path, budget=100)
    assert problems[-1].message.startswith("200 prefixes: more than the 100 left of the")
    monkeypatch.setattr(setmod, "MAX_SET_PREFIXES", 150)
    import netctl.policy.load_rules as set_reader  # the sets: section's reader

    monkeypatch.setattr(set_reader, "MAX_SET_PREFIXES", 150)
    found = problems_of(tmp_path, """\
        version: 1
        sets:
          a: {elements: [192.0.2.0/24]}
          big: {file: big.txt}
        """)
    assert found == [f"{path}: 200 prefixes: more than the 149 left of the 150 a policy's "
                     "sets hold in all"]


def test_unreadable_set_files_are_reported_at_the_file_key(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"192.0.2.0/24\n\xff\xfe\n")
    found = problems_of(tmp_path, """\
        version: 1
        sets:
          missing: {file: nowhere.txt}
          binary: {file: bin.txt}
          blank: {file: ""}
        """)
    assert found[0].startswith(f"{tmp_path}/p.yaml:3:19: set 'missing': cannot read set file "
                               f"{tmp_path}/nowhere.txt: No such file or directory")
    assert found[1].startswith(f"{tmp_path}/p.yaml:4:18: set 'binary': set file "
                               f"{tmp_path}/bin.txt:2: not UTF-8 text")
    assert found[2] == (f"{tmp_path}/p.yaml:5:17: set 'blank': file must be the path of a "
                        "set file (one prefix per line)")


def test_set_files_are_relative_to_the_policy_or_absolute_or_the_working_directory(
        tmp_path, monkeypatch):
    sub = tmp_path / "lists"
    sub.mkdir()
    write(sub / "a.txt", "192.0.2.0/24\n")
    write(tmp_path / "b.txt", "198.51.100.0/24\n")
    body = f"version: 1\nsets:\n  a: {{file: lists/a.txt}}\n  b: {{file: {tmp_path}/b.txt}}\n"
    policy = load_policy(write(tmp_path / "p.yaml", body))
    assert [s.source for s in policy.sets] == [str(sub / "a.txt"), str(tmp_path / "b.txt")]
    monkeypatch.chdir(tmp_path)
    for source in ("<stdin>", "<policy>"):   # standard input: the working directory
        policy = load_policy_text(body, source)
        assert policy.sets[0].v4 == (pair("192.0.2.0/24"),)
    monkeypatch.chdir(sub)
    with pytest.raises(PolicyError, match=r"cannot read set file lists/a.txt"):
        load_policy_text(body, "<stdin>")


def test_standard_input_reads_set_files_from_the_working_directory(capsys, monkeypatch,
                                                                    tmp_path):
    import io
    import sys

    from netctl.cli import main

    write(tmp_path / "a.txt", "192.0.2.0/24\n")
    monkeypatch.chdir(tmp_path)
    body = ("version: 1\nsets:\n  a: {file: a.txt}\nrules:\n"
            "  - {name: r, action: drop, src: \"@a\"}\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body.encode()),
                                                       encoding="utf-8"))
    assert main(["explain", "-", "--src", "192.0.2.9", "--dst", "10.0.0.1"]) == 0
    assert "192.0.2.9 is in set @a (via 192.0.2.0/24)" in capsys.readouterr().out


def test_a_million_line_set_file_loads_in_seconds(tmp_path, record_property):
    """A figure, not a timed assertion: the machine is shared.  (About 1 s of CPU here for
    the parse of a million random prefixes of mixed lengths, both families.)"""
    rng = random.Random(1)
    lines = []
    for i in range(1_000_000):
        if i % 10:
            plen = rng.choice((16, 22, 24, 24, 28, 32))
            lines.append(f"{ipaddress.IPv4Address(rng.getrandbits(plen) << (32 - plen))}/{plen}")
        else:
            lines.append(f"{ipaddress.IPv6Address(rng.getrandbits(48) << 80)}/48")
    path = write(tmp_path / "m.txt", "\n".join(lines) + "\n")
    started, cpu = time.perf_counter(), time.process_time()
    v4, v6, problems, _ = read_set_file(path)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    record_property("million_line_set_file_seconds", round(seconds, 2))
    print(f"\n1,000,000-line set file: {seconds:.2f} s ({cpu:.2f} s CPU)")
    assert problems == []
    assert len(v4) + len(v6) == len(set(lines))
    assert list(v4) == sorted(v4) and list(v6) == sorted(v6)


# -- the fast parser is ipaddress's strict syntax ----------------------------------------

def _by_ipaddress(text: str):
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    return network.version, network.prefixlen, int(network.network_address)


ADDRESSY = st.text(alphabet="0123456789abcdefABCDEF.:/x ", max_size=24)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(ADDRESSY, st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(),
                                     st.integers(0, 130)),
                 st.ip_addresses().map(str), st.ip_addresses().map(lambda a: str(a).upper())))
def test_the_line_parser_accepts_exactly_what_ipaddress_does(text):
    """For decimal prefix lengths (ipaddress also takes netmasks after the '/', which a set
    file does not), both on a line alone and through the careful path."""
    if "/" in text and not text.partition("/")[2].isdigit():
        return
    if text != text.strip():
        return
    want = _by_ipaddress(text)
    got = parse_prefix(text)
    assert (got if not isinstance(got, str) else None) == want, text
    v4, v6, problems, = parse_set_text(text + "\n", "f")[:3]
    if not text:
        assert (v4, v6, problems) == ((), (), [])
    elif want is None:
        assert len(problems) == 1 and problems[0].line == 1
    else:
        family, plen, network = want
        assert (v4 if family == 4 else v6) == ((plen, network),) and problems == []
        v4, v6, problems = parse_set_text(f"  {text}  # with a comment\n", "f")[:3]
        assert (v4 if family == 4 else v6) == ((plen, network),) and problems == []


# -- `sets:` in a policy ----------------------------------------------------------------

def test_sets_and_references_in_normal_form(tmp_path):
    policy = policy_with(tmp_path, """\
        version: 1
        sets:
          blk: {file: blk.txt}
          admins:
            elements: [203.0.113.0/24, "2001:db8:1::1", 203.0.113.0/24]
          empty: {elements: []}
        rules:
          - {name: drop-blk, action: drop, src: "@blk"}
          - {name: ssh, action: accept, src: ["@admins", 10.0.0.0/8, "@admins"], dport: 22}
          - {name: to-blk, action: drop, direction: egress, dst: " @blk "}
        """, **{"blk.txt": GOOD_FILE})
    blk, admins, empty = policy.sets
    assert (blk.name, blk.line, blk.source) == ("blk", 3, str(tmp_path / "blk.txt"))
    assert admins.v4 == (pair("203.0.113.0/24"),) and admins.v6 == (pair("2001:db8:1::1/128"),)
    assert admins.source is None and len(empty) == 0 and empty.families == frozenset()
    drop, ssh, to_blk = policy.rules
    assert drop.src == (blk,) and drop.src[0] is blk and to_blk.dst[0] is blk
    assert ssh.src == (admins, net("10.0.0.0/8"))   # each item once
    assert drop.families == ssh.families == frozenset({4, 6})


@pytest.mark.parametrize("body, where, message", [
    ('  "bad name": {elements: []}\n', (3, 3), "set name 'bad name' must be 1 to 64"),
    (f'  {"x" * 65}: {{elements: []}}\n', (3, 3), "must be 1 to 64 letters, digits"),
    ('  a: [192.0.2.0/24]\n', (3, 6), "set 'a' must be {elements: [PREFIX, ...]} or {file: "
                                      "PATH}"),
    ('  a: {elements: [192.0.2.0/24], file: x.txt}\n', (3, 33),
     "set 'a' needs exactly one of 'elements' (a list) and 'file' (a path)"),
    ('  a: {}\n', (3, 6), "set 'a' needs exactly one of"),
    ('  a: {fiel: x.txt}\n', (3, 7), "unknown key 'fiel' in set 'a'; did you mean 'file'?"),
    ('  a: {elements: }\n', (3, 17), "set 'a' elements: empty (write [] for a set that holds "
                                     "nothing yet)"),
    ('  a:\n    elements:\n      - 192.0.2.0/24\n      - 10.0.0.1/8\n', (6, 9),
     "set 'a' elements: 10.0.0.1/8 has host bits set; the network is 10.0.0.0/8"),
    ('  a:\n    elements:\n      - 192.0.2.0/24\n      - "@b"\n', (6, 9),
     "set 'a' elements: '@b' is not an IP address or prefix (a set holds prefixes, not "
     "other sets)"),
    ('  a: {elements: [192.0.2.0/24, [10.0.0.0/8]]}\n', (3, 32),
     "set 'a' elements: a list item must be an IP address or prefix, not a list"),
])
def test_set_definition_errors_at_their_line(body, where, message):
    with pytest.raises(PolicyError) as info:
        load_policy_text("version: 1\nsets:\n" + body, SOURCE)
    [problem] = info.value.problems
    assert (problem.line, problem.column) == where and message in problem.message


def test_duplicate_set_names_are_reported_at_the_second(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy_text("version: 1\nsets:\n  a: {elements: []}\n  b: {elements: []}\n"
                         "  a: {elements: [192.0.2.0/24]}\n", SOURCE)
    [problem] = info.value.problems
    assert (problem.line, problem.message) == (5, "duplicate key 'a' (first at line 3)")


@pytest.mark.parametrize("item, message", [
    ('"@blok"', "src: unknown set '@blok'; did you mean '@blk'?"),
    ('"@zzz"', "src: unknown set '@zzz' (sets: @blk, @other)"),
    ('"@"', "src: '@' must be followed by the name of a set"),
])
def test_unknown_set_references_at_the_item(item, message):
    text = ("version: 1\nsets:\n  blk: {elements: []}\n  other: {elements: []}\nrules:\n"
            f"  - name: a\n    action: drop\n    src:\n      - 10.0.0.0/8\n      - {item}\n")
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, SOURCE)
    [problem] = info.value.problems
    assert (problem.line, problem.column) == (10, 9) and problem.message == message


def test_a_reference_without_sets_and_a_set_where_one_prefix_belongs():
    with pytest.raises(PolicyError) as info:
        load_policy_text("version: 1\nrules:\n  - {name: a, action: drop, dst: \"@x\"}\n"
                         "routes:\n  - {dst: \"@x\", via: 10.0.0.1, dev: eth0}\n", SOURCE)
    assert [(p.line, p.message) for p in info.value.problems] == [
        (3, "dst: unknown set '@x' (the policy defines no sets: add them under 'sets:')"),
        (5, "dst: '@x': a set cannot be used here (one prefix)")]


def test_a_broken_set_is_reported_once_not_at_each_reference(tmp_path):
    found = problems_of(tmp_path, """\
        version: 1
        sets:
          blk: {file: blk.txt}
        rules:
          - {name: a, action: drop, src: "@blk"}
          - {name: b, action: drop, dst: "@blk"}
        """, **{"blk.txt": "10.0.0.1/8\n"})
    assert len(found) == 1 and ":1: 10.0.0.1/8 has host bits set" in found[0]


def test_families_follow_the_contents_and_contents_never_make_a_rule_invalid():
    policy = load_policy_text("""\
version: 1
sets:
  v4: {elements: [192.0.2.0/24]}
  both: {elements: [192.0.2.0/24, "2001:db8::/32"]}
  empty: {elements: []}
rules:
  - {name: v4-to-v6, action: drop, src: "@v4", dst: "2001:db8::1"}
  - {name: icmpv6, action: drop, src: "@v4", proto: icmpv6, icmp_type: echo-request}
  - {name: both-icmp, action: drop, src: "@both", proto: [icmp, icmpv6], icmp_type: echo-request}
  - {name: mixed, action: drop, src: ["@v4", "2001:db8::/32"]}
  - {name: empty, action: drop, src: "@empty"}
""", SOURCE)
    families = {r.name: r.families for r in policy.rules}
    assert families == {"v4-to-v6": frozenset(), "icmpv6": frozenset(),
                        "both-icmp": frozenset({4, 6}), "mixed": frozenset({4, 6}),
                        "empty": frozenset()}
    # ICMP types resolve by what the fields allow, whatever the set holds now
    assert policy.rule("icmpv6").icmp_type == ((6, 128),)
    assert policy.rule("both-icmp").icmp_type == ((4, 8), (6, 128))
    # a rule whose family conflict is literal is still an error
    with pytest.raises(PolicyError, match="the rule can never match: proto is IPv4 only, "
                                          "but src and dst allow IPv6 only"):
        load_policy_text("version: 1\nsets:\n  v4: {elements: []}\nrules:\n"
                         "  - {name: a, action: drop, src: [\"@v4\", 10.0.0.0/8], "
                         "dst: \"2001:db8::1\", proto: icmp}\n", SOURCE)


def test_the_reference_model_matches_set_members_of_the_packets_family():
    policy = load_policy_text("""\
version: 1
sets:
  blk: {elements: [192.0.2.0/24, 10.0.0.0/8, 10.1.0.0/16, "2001:db8::/32", "::/0"]}
  none: {elements: []}
rules:
  - {name: nothing, action: accept, src: "@none"}
  - {name: blk, action: drop, src: "@blk", dst: ["@blk", 198.51.100.0/24]}
""", SOURCE)
    pset = policy.sets[0]

    def decide(src: str, dst: str) -> str | None:
        packet = Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst), 17, 1, 2)
        rule = evaluate(policy, packet, Direction.INGRESS).rule
        return rule.name if rule else None

    assert decide("10.1.2.3", "198.51.100.9") == "blk"
    assert decide("10.1.2.3", "192.0.2.255") == "blk"
    assert decide("11.0.0.1", "192.0.2.1") is None
    assert decide("2001:db9::1", "::1") == "blk"          # ::/0 holds every IPv6 address
    assert pset.match(ipaddress.ip_address("10.1.2.3")) == pair("10.1.0.0/16")
    assert pset.match(ipaddress.ip_address("10.2.0.1")) == pair("10.0.0.0/8")
    assert ipaddress.ip_address("192.0.3.0") not in pset


def test_a_set_pickles_compactly_and_back_and_shares_itself():
    policy = load_policy_text("""\
version: 1
sets:
  blk: {elements: [192.0.2.0/24, 10.0.0.0/8, "2001:db8::/32", "::1"]}
rules:
  - {name: a, action: drop, src: "@blk"}
  - {name: b, action: drop, dst: "@blk"}
""", SOURCE)
    ipaddress.ip_address("10.0.0.1") in policy.sets[0]   # noqa: B015  (builds the index)
    again = pickle.loads(pickle.dumps(policy))
    assert again == policy and again.rules[0].src[0] is again.sets[0] is again.rules[1].dst[0]
    assert "_lengths" not in again.sets[0].__dict__
    state = policy.sets[0].__getstate__()
    with pytest.raises(ValueError, match="another format"):
        PrefixSet.__new__(PrefixSet).__setstate__(dict(state, packed=(0, [], [])))


# -- live edits (the overlay) -----------------------------------------------------------------

EDITED = """\
version: 1
sets:
  blk: {elements: [192.0.2.0/24, 198.51.100.0/24]}
  other: {elements: ["2001:db8::/32"]}
rules:
  - {name: blk, action: drop, src: "@blk"}
  - {name: v6, action: drop, src: "@blk", proto: icmpv6}
"""


def test_add_del_and_reset_keep_an_overlay_relative_to_the_file():
    base = load_policy_text(EDITED, SOURCE)
    p, out = edit_set(base, "blk", add=parse_prefixes(["203.0.113.9", "192.0.2.0/24"]))
    assert (out.done, out.already, out.size, out.added, out.removed) == (
        ["203.0.113.9/32"], ["192.0.2.0/24"], 3, 1, 0)
    p, out = edit_set(p, "blk", delete=parse_prefixes(["198.51.100.0/24", "203.0.113.9"]))
    pset = p.prefix_set("blk")
    assert edits_record(pset) == {"add": [], "del": ["198.51.100.0/24"]}  # the add undone
    assert pset.v4 == (pair("192.0.2.0/24"),) and pset.base == base.prefix_set("blk")
    p, _ = edit_set(p, "blk", add=parse_prefixes(["198.51.100.0/24", "2001:db8:bad::/48"]))
    pset = p.prefix_set("blk")
    assert edits_record(pset) == {"add": ["2001:db8:bad::/48"], "del": []}
    assert p.rule("v6").families == frozenset({6})      # families follow the contents
    assert base.rule("v6").families == frozenset()
    p, out = edit_set(p, "blk", reset=True)
    assert p == base and out.done == ["2001:db8:bad::/48"]


def test_deleting_what_the_set_does_not_hold_changes_nothing():
    base = load_policy_text(EDITED, SOURCE)
    with pytest.raises(PolicyError) as info:
        edit_set(base, "blk", delete=parse_prefixes(["192.0.2.0/24", "10.9.9.9",
                                                     "192.0.2.0/25"]))
    assert [p.message for p in info.value.problems] == [
        "10.9.9.9/32 is not in set @blk (nothing changed)",
        "192.0.2.0/25 is not in set @blk (nothing changed)"]
    with pytest.raises(PolicyError, match="no set 'blj'; did you mean 'blk'"):
        edit_set(base, "blj", add=parse_prefixes(["10.9.9.9"]))
    with pytest.raises(PolicyError) as info:
        parse_prefixes(["10.0.0.1/8", "nonsense", "192.0.2.1"])
    assert sorted(str(p) for p in info.value.problems) == [
        "command line: 'nonsense' is not an IP address or prefix",
        "command line: 10.0.0.1/8 has host bits set; the network is 10.0.0.0/8"]


def test_the_overlay_stays_in_force_when_the_file_changes():
    """Recorded edits applied to a changed base: added prefixes stay (even when the file now
    has them, and after it drops them again), removed ones stay out."""
    edited, _ = edit_set(load_policy_text(EDITED, SOURCE), "blk",
                         add=parse_prefixes(["203.0.113.9"]),
                         delete=parse_prefixes(["198.51.100.0/24"]))
    edits = {"blk": edits_record(edited.prefix_set("blk")), "gone": {"add": ["10.0.0.0/8"]}}
    changed = EDITED.replace("198.51.100.0/24]", "198.51.100.0/24, 203.0.113.9, 10.1.0.0/16]")
    policy, gone = with_edits(load_policy_text(changed, SOURCE), edits)
    pset = policy.prefix_set("blk")
    assert gone == ["gone"] and edits_record(pset) == edits["blk"]
    assert pset.v4 == tuple(sorted([pair("192.0.2.0/24"), pair("203.0.113.9/32"),
                                    pair("10.1.0.0/16")]))
    policy, _ = with_edits(load_policy_text(EDITED, SOURCE), edits)   # the file drops it
    assert pair("203.0.113.9/32") in policy.prefix_set("blk").v4
    assert policy.rule("blk").src[0] is policy.prefix_set("blk")


def test_edits_of_a_million_prefix_set_take_a_pass_not_a_sort():
    big = setmod.make_set("big", [(4, 32, i << 8) for i in range(1_000_000)])
    policy = load_policy_text("version: 1\nsets:\n  big: {elements: []}\nrules:\n"
                              "  - {name: a, action: drop, src: \"@big\"}\n", SOURCE)
    policy = setmod.replace_sets(policy, {"big": big})
    started = time.process_time()
    edited, out = edit_set(policy, "big", add=parse_prefixes(["10.0.0.1"]),
                           delete=parse_prefixes(["0.0.1.0/32"]))
    assert out.size == 1_000_000 and time.process_time() - started < 10   # a sanity bound
    assert list(edited.prefix_set("big").v4) == sorted(edited.prefix_set("big").v4)


# -- the CLI, without a datapath -----------------------------------------------------------

@pytest.mark.parametrize("argv, usage", [
    (["set", "add", "blk"], "usage: netctl set add NAME PREFIX..."),
    (["set", "add"], "usage: netctl set add NAME PREFIX..."),
    (["set", "del", "blk"], "usage: netctl set del NAME PREFIX..."),
    (["set", "reset"], "usage: netctl set reset NAME"),
    (["set", "reset", "blk", "10.0.0.0/8"], "usage: netctl set reset NAME"),
    (["set", "list", "blk", "10.0.0.0/8"], "usage: netctl set list [NAME]: no prefixes"),
])
def test_set_verb_usage_errors_exit_2_before_anything(capsys, argv, usage):
    from netctl.cli import main

    assert main(argv) == 2
    assert usage in capsys.readouterr().err


def test_bad_prefixes_exit_2_before_anything_is_read(capsys, monkeypatch):
    import netctl.datapath.setctl as setctl
    from netctl.cli import main

    monkeypatch.setattr(setctl, "set_edit", lambda *a, **k: pytest.fail("reached the edit"))
    assert main(["set", "add", "@blk", "10.0.0.1/8", "192.0.2.1", "x"]) == 2
    err = capsys.readouterr().err
    assert "error: command line: 10.0.0.1/8 has host bits set; the network is 10.0.0.0/8" in err
    assert "error: command line: 'x' is not an IP address or prefix" in err


def test_set_list_prints_a_set_file(tmp_path):
    from netctl.present import format_set, format_sets

    report = {"name": "blk", "policy": "/p.yaml", "file": "/blk.txt", "prefixes": 3, "v4": 2,
              "v6": 1, "added": ["203.0.113.9/32"], "removed": ["198.51.100.0/24"],
              "elements": ["192.0.2.0/24", "203.0.113.9/32", "2001:db8::/32"]}
    text = format_set(report)
    assert text.splitlines()[:4] == [
        "# set @blk of /p.yaml: 3 prefixes (2 IPv4, 1 IPv6), from /blk.txt",
        "# live edits in force: 1 added, 1 removed", "# + 203.0.113.9/32",
        "# - 198.51.100.0/24"]
    v4, v6, problems = parse_set_text(text, "listed")[:3]   # it reads back as a set file
    assert problems == [] and len(v4) == 2 and len(v6) == 1
    table = format_sets({"policy": "/p.yaml", "sets": [
        {"name": "blk", "v4": 2, "v6": 1, "add": ["203.0.113.9/32"], "del": [],
         "file": "/blk.txt"},
        {"name": "admins", "v4": 1, "v6": 0, "add": [], "del": [], "file": None}]})
    assert table.splitlines()[3].split() == ["@blk", "3", "2", "1", "+1", "-0", "/blk.txt"]
    assert table.splitlines()[4].split() == ["@admins", "1", "1", "0", "-", "elements"]


def test_apply_keeps_the_live_edits_and_drops_those_of_sets_gone(monkeypatch, tmp_path):
    import netctl.datapath.control as control
    import netctl.datapath.setctl as setctl
    from netctl.datapath.control import ApplyResult
    from netctl.policy.compile import compile_policy
    from netctl.policy.plan import diff

    monkeypatch.setattr(setctl.privilege, "require", lambda *a: None)
    monkeypatch.setattr(setctl, "edits_lock", lambda ns: _nothing())
    from netctl.datapath.state import Generation, State

    record = Generation(sets={"blk": {"add": ["203.0.113.9/32"], "del": ["198.51.100.0/24"]},
                              "gone": {"add": ["10.0.0.0/8"], "del": []}})
    monkeypatch.setattr(setctl, "live_record", lambda ns: (State(), record))
    applied = []

    def fake_apply(policy, **_kw):
        applied.append(policy)
        plan = compile_policy(policy)
        return ApplyResult(policy.source, 1, False, diff(plan, plan), {})
    monkeypatch.setattr(control, "apply", fake_apply)
    result = setctl.apply_keeping_edits(load_policy_text(EDITED, SOURCE))
    [policy] = applied
    assert edits_record(policy.prefix_set("blk")) == {"add": ["203.0.113.9/32"],
                                                      "del": ["198.51.100.0/24"]}
    assert result.sets["blk"]["add"] == ["203.0.113.9/32"] and result.sets["blk"]["v4"] == 2
    assert result.warnings == ["the live edits of set @gone are dropped: the policy no longer "
                               "defines that set"]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
