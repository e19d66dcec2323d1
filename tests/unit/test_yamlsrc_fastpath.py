"""The one-line flow fast path in yamlsrc must read exactly what libyaml reads: same
values, same types, same positions, or leave the line to libyaml."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netctl.policy.yamlsrc import YMap, YSeq, _compose, _fast_line, compose, to_pos

_KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_PLAIN = st.one_of(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_./:+-]{0,14}", fullmatch=True),
    st.integers(-5, 70000).map(str),
    st.sampled_from(["null", "Null", "true", "off", "no", "07", "1-2", "2001:db8::/32",
                     "10.0.0.0/8", "a:b", "x:", "8000-8100", "1e3", "0x1F"]),
)
_QUOTED = st.one_of(
    st.text(st.characters(blacklist_characters='"\\\n', blacklist_categories=("Cs",)),
            max_size=8).map(lambda s: f'"{s}"'),
    st.text(st.characters(blacklist_characters="'\n", blacklist_categories=("Cs",)),
            max_size=8).map(lambda s: f"'{s}'"),
)
_SCALAR = st.one_of(_PLAIN, _QUOTED)
_VALUE = st.one_of(_SCALAR, st.lists(_SCALAR, max_size=4).map(lambda v: "[" + ", ".join(v) + "]"))
_SPACE = st.sampled_from(["", " ", "  "])


@st.composite
def flow_lines(draw) -> str:
    keys = draw(st.lists(_KEY, min_size=1, max_size=6))
    sep = draw(_SPACE)
    parts = [f"{k}:{draw(st.sampled_from([' ', '  ']))}{draw(_VALUE)}" for k in keys]
    comment = draw(st.sampled_from(["", "  # note", " #x"]))
    return f"  - {{{sep}{(',' + draw(_SPACE)).join(parts)}{sep}}}{comment}"


def _plain(node):
    """A comparable picture: values, types and 1-based positions."""
    if isinstance(node, YMap):
        return ("map", to_pos(node.mark), [
            (k, to_pos(node.keymarks[k]), to_pos(node.valmarks[k]), _plain(v))
            for k, v in node.items()
        ])
    if isinstance(node, YSeq):
        return ("seq", to_pos(node.mark),
                [(to_pos(m), _plain(v)) for v, m in zip(node, node.itemmarks, strict=True)])
    return (type(node).__name__, node)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(flow_lines(), min_size=1, max_size=5))
def test_fast_path_reads_what_libyaml_reads(lines):
    for line in lines:
        fast = _fast_line(line, 1)
        if fast is None:
            continue  # left to libyaml: always correct
        slow_root, slow_problems = _compose(f"rules:\n{line}\n", {})
        assert not slow_problems, (line, slow_problems)
        assert _plain(fast) == _plain(slow_root["rules"][0]), line


def test_big_file_takes_the_fast_path_and_keeps_line_numbers():
    lines = ["version: 1", "rules:"]
    lines += [f"  - {{name: r{i}, action: drop, src: 10.{i // 256 % 256}.{i % 256}.0/24}}"
              for i in range(3000)]
    lines += ["  - name: block-style", "    action: accept", "  - {name: 'odd, one', action: x}"]
    root, problems = compose("\n".join(lines) + "\n")
    assert not problems
    rules = root["rules"]
    assert len(rules) == 3002
    assert rules[0]["src"] == "10.0.0.0/24" and to_pos(rules[0].valmarks["src"])[0] == 3
    assert to_pos(rules[2999].keymarks["name"]) == (3002, 6)
    assert rules[3000]["name"] == "block-style" and to_pos(rules[3000].mark)[0] == 3003
    assert rules[3001]["name"] == "odd, one"
