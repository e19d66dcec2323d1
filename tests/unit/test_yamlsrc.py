"""yamlsrc: YAML with 1-based positions, scalar resolution for policy readers, anchors,
one document per file, duplicate keys reported.  (The one-line flow fast path has its own
differential test in test_yamlsrc_fastpath.py.)"""

from __future__ import annotations

import textwrap

import pytest

from netctl.policy.yamlsrc import YMap, YSeq, compose, to_pos


def _compose_ok(text: str):
    root, problems = compose(textwrap.dedent(text))
    assert problems == [], problems
    return root


# -- positions ----------------------------------------------------------------------------

POSITIONS = """\
version: 1
rules:
  - name: ssh
    action: accept
    src:
      - 192.0.2.0/24
      -   198.51.100.7
    dport: [22, "8000-8100"]
"""


def test_root_mapping_position_and_key_positions():
    root = _compose_ok(POSITIONS)
    assert isinstance(root, YMap)
    assert root.pos == (1, 1)
    assert root.keypos("version") == (1, 1)
    assert root.valpos("version") == (1, 10)
    assert root.keypos("rules") == (2, 1)


def test_block_sequence_item_positions():
    root = _compose_ok(POSITIONS)
    rules = root["rules"]
    assert isinstance(rules, YSeq)
    assert root.valpos("rules") == (3, 3)  # a block sequence starts at its first '-'
    assert rules.pos == (3, 3)
    [(rule, mark)] = list(rules.items_with_pos())
    assert to_pos(mark) == (3, 5)  # the item is the mapping that starts after "- "
    assert isinstance(rule, YMap)
    assert rule.pos == (3, 5)


def test_positions_inside_a_block_mapping():
    rule = _compose_ok(POSITIONS)["rules"][0]
    assert rule.keypos("name") == (3, 5)
    assert rule.valpos("name") == (3, 11)
    assert rule.keypos("action") == (4, 5)
    assert rule.valpos("action") == (4, 13)
    assert rule.keypos("dport") == (8, 5)


def test_each_block_list_item_has_its_own_line_and_column():
    src = _compose_ok(POSITIONS)["rules"][0]["src"]
    assert list(src) == ["192.0.2.0/24", "198.51.100.7"]
    assert [to_pos(m) for m in src.itemmarks] == [(6, 9), (7, 11)]


def test_flow_list_item_positions():
    rule = _compose_ok(POSITIONS)["rules"][0]
    dport = rule["dport"]
    assert rule.valpos("dport") == (8, 12)  # the '['
    assert list(dport) == [22, "8000-8100"]
    assert [to_pos(m) for m in dport.itemmarks] == [(8, 13), (8, 17)]


def test_flow_mapping_positions():
    root = _compose_ok("""\
        rules:
          - {name: web, action: accept, dport: 443}
        """)
    rule = root["rules"][0]
    assert rule.pos == (2, 5)
    assert rule.keypos("name") == (2, 6)
    assert rule.valpos("name") == (2, 12)
    assert rule.keypos("dport") == (2, 33)
    assert rule.valpos("dport") == (2, 40)


def test_positions_are_one_based_on_the_first_line():
    root = _compose_ok("a: b\n")
    assert root.keypos("a") == (1, 1)
    assert root.valpos("a") == (1, 4)


def test_to_pos_accepts_packed_ints_from_the_fast_path():
    assert to_pos((7 << 16) + 12) == (7, 12)


# -- scalar resolution --------------------------------------------------------------------

def test_plain_decimal_integers_become_ints():
    root = _compose_ok("""\
        a: 22
        b: -3
        c: +5
        d: 0
        e: 65535
        """)
    assert root == {"a": 22, "b": -3, "c": 5, "d": 0, "e": 65535}
    assert all(type(v) is int for v in root.values())


def test_leading_zero_is_decimal_not_octal():
    root = _compose_ok("a: 010\nb: 07\n")
    assert root == {"a": 10, "b": 7}


def test_quoted_numbers_stay_strings():
    root = _compose_ok("""\
        a: "22"
        b: '22'
        c: ["22", 22, '8000']
        """)
    assert root["a"] == "22" and type(root["a"]) is str
    assert root["b"] == "22" and type(root["b"]) is str
    assert list(root["c"]) == ["22", 22, "8000"]
    assert [type(v) for v in root["c"]] == [str, int, str]


@pytest.mark.parametrize("word", ["off", "on", "no", "yes", "true", "false", "True", "NO", "y",
                                  "n"])
def test_yaml11_booleans_stay_strings(word):
    root = _compose_ok(f"xdp: {word}\n")
    assert root["xdp"] == word
    assert type(root["xdp"]) is str


@pytest.mark.parametrize("text", ["a:\n", "a: ~\n", "a: null\n", "a: Null\n", "a: NULL\n"])
def test_nulls(text):
    assert _compose_ok(text) == {"a": None}


def test_quoted_null_is_a_string():
    assert _compose_ok('a: "null"\nb: ""\n') == {"a": "null", "b": ""}


@pytest.mark.parametrize("plain", ["1.5", "0x1F", "1e3", "1_000", "0o17", ".inf", "2001:db8::1",
                                   "10.0.0.0/8", "8000-8100", "2024-01-01"])
def test_other_plain_scalars_stay_strings(plain):
    root = _compose_ok(f"a: {plain}\n")
    assert root["a"] == plain
    assert type(root["a"]) is str


def test_block_scalars_are_strings():
    root = _compose_ok("""\
        a: |
          one
          two
        """)
    assert root["a"] == "one\ntwo\n"


# -- anchors and aliases -------------------------------------------------------------------

def test_anchor_and_alias_of_a_list():
    root = _compose_ok("""\
        admins: &admins [192.0.2.0/24, 2001:db8::/48]
        rules:
          - {name: ssh, action: accept, src: *admins}
        """)
    assert list(root["rules"][0]["src"]) == ["192.0.2.0/24", "2001:db8::/48"]
    assert root["rules"][0]["src"] is root["admins"]


def test_anchor_and_alias_of_a_mapping_and_a_scalar():
    root = _compose_ok("""\
        base: &base
          action: drop
          log: true
        port: &p 22
        copy: *base
        again: *p
        """)
    assert root["copy"] == {"action": "drop", "log": "true"}
    assert root["copy"] is root["base"]
    assert root["again"] == 22
    assert root.valpos("again") == (6, 8)  # the alias is where it is used


def test_unknown_alias_is_reported_at_its_position():
    root, problems = compose("a: 1\nb: *nowhere\n")
    assert [(p.line, p.column) for p in problems] == [(2, 4)]
    assert "unknown alias *nowhere" in problems[0].message
    assert root["b"] is None


# -- documents ------------------------------------------------------------------------------

def test_one_explicit_document_is_fine():
    assert _compose_ok("---\na: 1\n...\n") == {"a": 1}


def test_multiple_documents_are_rejected_at_the_second():
    root, problems = compose("a: 1\n---\nb: 2\n")
    assert len(problems) == 1
    assert problems[0].line == 2
    assert "one YAML document" in problems[0].message


def test_multiple_explicit_documents_are_rejected():
    _root, problems = compose("---\na: 1\n---\nb: 2\n---\nc: 3\n")
    assert len(problems) == 1
    assert problems[0].line == 3


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "---\n...\n"])
def test_empty_documents_give_no_root_and_no_problem(text):
    assert compose(text) == (None, [])


# -- duplicate keys ---------------------------------------------------------------------------

def test_duplicate_key_is_reported_at_the_second_and_first_value_kept():
    root, problems = compose("a: 1\nb: 2\na: 3\n")
    assert root == {"a": 1, "b": 2}
    assert [(p.line, p.column) for p in problems] == [(3, 1)]
    assert problems[0].message == "duplicate key 'a' (first at line 1)"


def test_duplicate_keys_in_nested_and_flow_mappings():
    _root, problems = compose(textwrap.dedent("""\
        rules:
          - name: a
            action: drop
            name: b
          - {name: c, action: drop, action: accept}
        """))
    assert [(p.line, p.column) for p in problems] == [(4, 5), (5, 29)]
    assert "duplicate key 'name' (first at line 2)" in problems[0].message
    assert "duplicate key 'action' (first at line 5)" in problems[1].message


def test_same_key_in_different_mappings_is_not_a_duplicate():
    _compose_ok("a: {x: 1}\nb: {x: 2}\n")


def test_complex_key_is_reported():
    _root, problems = compose("? [a, b]\n: 1\n")
    assert len(problems) == 1
    assert problems[0].line == 1
    assert "plain value" in problems[0].message


# -- syntax errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, line", [
    ("a: 1\nb: [1, 2\nc: 3\n", 3),
    ("a: 1\n\tb: 2\n", 2),
    ("a: 1\n b: 2\n", 2),
    ("a: 1\nb: 2\nc: 'open\n", 4),
    ("a: 1\nb: {x: 1\n", 3),
    ("a: 1\n- b\n", 2),
])
def test_syntax_errors_name_their_line(text, line):
    root, problems = compose(text)
    assert root is None
    assert len(problems) == 1
    assert problems[0].line == line
    assert problems[0].message.startswith("YAML syntax error")


def test_control_character_is_reported_at_its_line():
    _root, problems = compose('a: 1\nb: 2\nc: "\x01"\n')
    assert [p.line for p in problems] == [3]


def test_lone_surrogate_is_a_problem_not_a_crash():
    root, problems = compose("a: 1\nb: \ud800\n")
    assert root is None and problems
