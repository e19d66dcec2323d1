"""The checklists of docs/contributing.md, as tests: a step forgotten fails here, without root.

Each test walks one registry (the rule's match fields, the tracer kinds, the CLI's verbs)
and checks that every layer that must know an entry does.  Where a layer is code that
cannot be asked (the reference evaluator, explain), the check reads its source for the
field: crude, but it names the file and the step that was skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections import Counter
from pathlib import Path

import pytest

from netctl import cli
from netctl.observe.trace.kinds import EXPORTED, IN_TOP, KIND_TYPES, Kind
from netctl.policy import evaluate, explain, load, model, schema

REPO = Path(__file__).resolve().parents[2]
CONTRIBUTING = (REPO / "docs" / "contributing.md").read_text()

# Rule fields that are not about the packet.
NOT_MATCH = {"name", "index", "line", "direction", "action", "log", "metrics", "families"}
MATCH_FIELDS = [f.name for f in dataclasses.fields(model.Rule) if f.name not in NOT_MATCH]


def test_the_match_fields_are_the_ones_the_checklist_was_written_for():
    # A new field lands here first: then every test below names what it still lacks.
    assert MATCH_FIELDS == ["src", "dst", "proto", "sport", "dport", "icmp_type", "icmp_code"]


@pytest.mark.parametrize("field", MATCH_FIELDS)
def test_a_match_field_is_known_to_every_layer(field):
    missing = []
    if field not in load.RULE_KEYS:
        missing.append("netctl/policy/load_values.py: RULE_KEYS (the loader refuses the key)")
    if field not in load.PACKET_KEYS:
        missing.append("netctl/policy/load_values.py: PACKET_KEYS (a policy's tests cannot set it)")
    rule_schema = schema.policy_schema()["properties"]["rules"]["items"]["properties"]
    if field not in rule_schema:
        missing.append("netctl/policy/schema.py: the rule's properties")
    if field not in {f.name for f in dataclasses.fields(model.Packet)}:
        missing.append("netctl/policy/model.py: Packet (the reference parser cannot fill it)")
    if f"rule.{field}" not in inspect.getsource(evaluate):
        missing.append("netctl/policy/evaluate.py: the reference evaluator never reads it")
    if not re.search(rf"rule\.{field}\b|\"{field}\"", inspect.getsource(explain)):
        missing.append("netctl/policy/explain.py: explain gives no check for it")
    if f"{field}=" not in (REPO / "tests" / "strategies.py").read_text():
        missing.append("tests/strategies.py: no generated rule or packet has it (the property "
                       "and differential tests never see it)")
    if f"`{field}`" not in (REPO / "docs" / "policy.md").read_text():
        missing.append("docs/policy.md: not documented")
    explain_options = _options("explain")
    if f"--{field.replace('_', '-')}" not in explain_options:
        missing.append("netctl/cli_parser.py: `netctl explain` has no option for it")
    assert not missing, f"match field {field!r}:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("name", sorted(KIND_TYPES))
def test_a_tracer_kind_is_complete(name):
    kind = KIND_TYPES[name]
    missing = []
    source = kind().path
    if not source.exists():
        missing.append(f"{source}: its C")
    else:
        text = source.read_text()
        if kind.size_macro not in text:
            missing.append(f"{source.name}: never checks {kind.size_macro} (the event struct "
                           "in netctl/observe/trace/_events.py and the C can drift)")
        for _tracepoint, fn in kind.tracepoints:
            if fn not in text:
                missing.append(f"{source.name}: no entry function {fn}")
        if kind.kprobe_fn not in text:
            missing.append(f"{source.name}: no kprobe entry {kind.kprobe_fn}")
    if kind.columns is Kind.columns:
        missing.append("no columns(): `netctl monitor` cannot print its events")
    if kind.exported and not kind.metrics({}):
        missing.append("exported but metrics() gives no family for the exporter")
    sections = set(kind.top_rows({}))
    if sections != set(kind.top_sections):
        missing.append(f"top_rows() fills {sorted(sections)}, top_sections names "
                       f"{sorted(kind.top_sections)}")
    if f"`{name}`" not in (REPO / "docs" / "observability.md").read_text():
        missing.append("docs/observability.md: not documented")
    if name not in _help("monitor"):
        missing.append("netctl/cli_parser.py: `netctl monitor --type` help does not name it")
    from test_monitor_format import EVENTS

    if not any(e["type"] == name for e in EVENTS.values()):
        missing.append("tests/unit/test_monitor_format.py: no event of the kind is formatted")
    assert not missing, f"tracer kind {name!r}:\n  " + "\n  ".join(missing)


def test_exported_and_top_kinds_present_their_counts():
    counts = {"reason": {"NETFILTER_DROP": 3}, "location": {"nf_hook_slow+0x9a": 3},
              "flows": {}, "sockets": {"0x1": 2}}
    families = {m.name: m for k in EXPORTED for m in KIND_TYPES[k].metrics(counts)}
    assert families["netctl_kernel_drops"].samples == [(("NETFILTER_DROP",), 3)]
    assert families["netctl_tcp_retransmits"].samples == [((), 2)]
    rows = {s: c for k in IN_TOP for s, c in KIND_TYPES[k].top_rows(counts).items()}
    assert rows["kernel_drops"] == Counter({"NETFILTER_DROP": 3})


@pytest.mark.parametrize("verb", sorted(cli.HANDLERS))
def test_a_verb_is_complete(verb):
    missing = []
    if verb not in cli.EXAMPLES:
        missing.append("netctl/cli_parser.py: EXAMPLES (its --help shows how to use it)")
    elif not any(line.strip().startswith(("netctl ", "ip netns exec", "sudo netctl",
                                          "cat ", "echo "))
                 for line in cli.EXAMPLES[verb].splitlines()):
        missing.append("netctl/cli_parser.py: EXAMPLES has no command line")
    if verb not in _verbs():
        missing.append("netctl/cli_parser.py: parser() has no sub-parser")
    if not re.search(rf"`netctl {verb}\b", (REPO / "README.md").read_text()):
        missing.append("README.md: the command table does not list it")
    assert not missing, f"verb {verb!r}:\n  " + "\n  ".join(missing)


def test_every_sub_parser_has_a_handler():
    assert set(_verbs()) == set(cli.HANDLERS)


@pytest.mark.parametrize("title", ["Add a match field", "Add a tracer kind", "Add a verb",
                                   "Add a map"])
def test_the_checklists_exist(title):
    assert f"## {title}" in CONTRIBUTING


def _verbs() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(verb: str) -> set[str]:
    return {o for a in _verbs()[verb]._actions for o in a.option_strings}


def _help(verb: str) -> str:
    return _verbs()[verb].format_help()
