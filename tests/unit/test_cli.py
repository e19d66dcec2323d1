"""The CLI verbs, run in-process: exit codes, FILE:LINE errors, JSON shapes, no tracebacks."""

from __future__ import annotations

import json

import pytest

from netctl.cli import main

POLICY = """\
version: 1
defaults: {ingress: drop}
rules:
  - name: ssh
    action: accept
    src: 198.51.100.0/24
    proto: tcp
    dport: 22
  - name: web
    action: accept
    proto: tcp
    dport: [80, 443]
  - name: web-again
    action: drop
    proto: tcp
    dport: 443
tests:
  - packet: {src: 198.51.100.7, dst: 192.0.2.1, proto: tcp, dport: 22}
    expect: {rule: ssh}
  - packet: {src: 203.0.113.7, dst: 192.0.2.1, proto: tcp, dport: 22}
    expect: drop
"""


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_validate_ok_with_shadow_warning(capsys, policy_file):
    code, out, err = run(capsys, "validate", str(policy_file))
    assert code == 0 and "valid (3 rules, 2 tests, 1 warning)" in out
    assert f"{policy_file}:13: warning: rule 'web-again'" in err
    assert run(capsys, "validate", "--strict", str(policy_file))[0] == 2


def test_validate_errors_are_file_line_and_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    action: block\n  - name: a\n"
                   "    action: drop\n")
    code, out, err = run(capsys, "validate", str(bad))
    assert code == 2
    assert f"{bad}:4:13: action must be one of accept, drop" in err
    assert f"{bad}:5:5: duplicate rule name 'a' (first used at line 3)" in err
    code, out, _ = run(capsys, "validate", "-o", "json", str(bad))
    data = json.loads(out)
    assert code == 2 and data["valid"] is False
    assert [(e["line"], e["column"]) for e in data["errors"]] == [(4, 13), (5, 5)]


def test_validate_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read: No such file or directory" in err


def test_explain_text_and_json(capsys, policy_file):
    code, out, _ = run(capsys, "explain", str(policy_file), "--src", "198.51.100.9",
                       "--dst", "192.0.2.1", "--dport", "22")
    assert code == 0 and "ACCEPT" in out and "rule 'ssh'" in out and "22 is in 22" in out
    code, out, _ = run(capsys, "explain", str(policy_file), "--src", "203.0.113.1",
                       "--dst", "192.0.2.1", "--dport", "22", "-o", "json")
    data = json.loads(out)
    assert data["verdict"] == "drop" and data["why"] == "default"
    assert data["near_misses"][0]["rule"] == "ssh"


def test_explain_icmp_type_infers_protocol_and_ndp(capsys, policy_file):
    code, out, _ = run(capsys, "explain", str(policy_file), "--src", "fe80::1",
                       "--dst", "ff02::1", "--icmp-type", "neighbor-solicitation", "-o", "json")
    data = json.loads(out)
    assert data["verdict"] == "accept" and data["why"] == "ndp"
    # forwarded neighbour discovery (hop limit below 255) is judged by the rules
    code, out, _ = run(capsys, "explain", str(policy_file), "--src", "fe80::1",
                       "--dst", "ff02::1", "--icmp-type", "neighbor-solicitation", "--ttl",
                       "64", "-o", "json")
    assert json.loads(out)["why"] != "ndp"


def test_explain_icmp_code(capsys, tmp_path):
    path = tmp_path / "codes.yaml"
    path.write_text("""
version: 1
defaults: {ingress: drop}
rules:
  - {name: frag-needed, action: accept, proto: icmp, icmp_type: 3, icmp_code: 4}
""")
    base = ["explain", str(path), "--src", "192.0.2.1", "--dst", "192.0.2.2",
            "--icmp-type", "destination-unreachable", "-o", "json"]
    _, out, _ = run(capsys, *base, "--icmp-code", "4")
    assert json.loads(out)["rule"]["name"] == "frag-needed"
    _, out, _ = run(capsys, *base, "--icmp-code", "3")
    data = json.loads(out)
    assert data["why"] == "default"
    assert data["near_misses"][0]["failed"][0]["field"] == "icmp_code"
    assert data["packet"].endswith("code 3")


@pytest.mark.parametrize("args, message", [
    (["--src", "300.0.0.1", "--dst", "10.0.0.1"], "--src: '300.0.0.1' is not an IP address"),
    (["--src", "10.0.0.1", "--dst", "::1"], "same IP version"),
    (["--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "icmp", "--dport", "5"],
     "--sport/--dport need --proto tcp or udp"),
    (["--src", "10.0.0.1", "--dst", "10.0.0.2", "--dport", "70000"], "outside 0-65535"),
    (["--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "bogus"], "unknown protocol"),
])
def test_explain_bad_packet_is_a_clear_error(capsys, policy_file, args, message):
    code, _, err = run(capsys, "explain", str(policy_file), *args)
    assert code == 2 and message in err


def test_test_verb_passes_and_fails(capsys, policy_file, tmp_path):
    code, out, _ = run(capsys, "test", str(policy_file))
    assert code == 0 and "2 passed, 0 failed" in out
    flipped = tmp_path / "flipped.yaml"
    flipped.write_text(POLICY.replace("expect: drop", "expect: accept"))
    code, out, _ = run(capsys, "test", str(flipped))
    assert code == 1 and "1 passed, 1 failed" in out and "FAIL" in out
    code, out, _ = run(capsys, "test", "-o", "json", str(flipped))
    data = json.loads(out)
    assert code == 1 and data["failed"] == 1 and data["results"][1]["passed"] is False


def test_schema_is_json_and_accepts_the_example(capsys, policy_file):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    code, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    assert code == 0
    jsonschema.validate(yaml.safe_load(POLICY), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "rulez": []}, schema)


def test_help_of_each_verb_shows_examples(capsys):
    for verb in ("validate", "explain", "test", "schema", "doctor"):
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert "examples:" in capsys.readouterr().out


# -- `-`: the policy from standard input ---------------------------------------------------

@pytest.fixture
def stdin(monkeypatch):
    """Give the CLI `data` (text or bytes) as its standard input."""
    import io
    import sys

    def feed(data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    return feed


def test_validate_reads_standard_input(capsys, stdin):
    stdin(POLICY)
    code, out, err = run(capsys, "validate", "-")
    assert code == 0 and "<stdin>: valid (3 rules, 2 tests, 1 warning)" in out
    assert "<stdin>:13: warning: rule 'web-again'" in err
    stdin(POLICY)
    code, out, _ = run(capsys, "validate", "-o", "json", "-")
    assert code == 0 and json.loads(out)["file"] == "<stdin>"


def test_validate_errors_from_standard_input_name_stdin_line_and_column(capsys, stdin):
    stdin("version: 1\nrules:\n  - name: a\n    action: block\n  - name: a\n    action: drop\n")
    code, _, err = run(capsys, "validate", "-")
    assert code == 2
    assert "<stdin>:4:13: action must be one of accept, drop" in err
    assert "<stdin>:5:5: duplicate rule name 'a' (first used at line 3)" in err
    assert "<stdin>: invalid (2 errors)" in err
    stdin("version: 1\nrules:\n  - {name: a, action: block}\n")
    code, out, _ = run(capsys, "validate", "-o", "json", "-")
    data = json.loads(out)
    assert code == 2 and data["file"] == "<stdin>"
    assert [(e["file"], e["line"]) for e in data["errors"]] == [("<stdin>", 3)]


@pytest.mark.parametrize("data, message", [
    ("", "<stdin>:1: the policy is empty"),
    (b"version: 1\n\xff\n", "<stdin>: not UTF-8 text"),
    ("version: 1\r\nrules:\r\n  - {name: a, action: block}\r\n", "<stdin>:3:23: action must"),
])
def test_standard_input_problems(capsys, stdin, data, message):
    stdin(data)
    code, _, err = run(capsys, "validate", "-")
    assert code == 2 and message in err


def test_standard_input_closed_or_too_big(capsys, stdin, monkeypatch):
    import sys

    import netctl.policy.load as load

    monkeypatch.setattr(sys, "stdin", None)
    code, _, err = run(capsys, "validate", "-")
    assert code == 2 and "<stdin>: cannot read: standard input is closed" in err
    monkeypatch.setattr(load, "MAX_FILE_BYTES", 2 << 20)
    stdin(POLICY + "# padding\n" * ((3 << 20) // 10))
    code, _, err = run(capsys, "validate", "-")
    assert code == 2
    assert "<stdin>: more than 2 MiB on standard input; policies are limited to 2 MiB" in err


def test_explain_reads_standard_input(capsys, stdin):
    stdin(POLICY)
    code, out, _ = run(capsys, "explain", "-", "--src", "198.51.100.9", "--dst", "192.0.2.1",
                       "--dport", "22")
    assert code == 0 and "decided by rule 'ssh' (<stdin>:4)" in out


def test_test_verb_reads_standard_input(capsys, stdin, monkeypatch):
    import netctl.cli as cli

    monkeypatch.setattr(cli, "_kernel_available", lambda: False)  # the model and the maps
    stdin(POLICY)
    code, out, _ = run(capsys, "test", "-")
    assert code == 0 and "ok   <stdin>:18: " in out and "2 passed, 0 failed" in out
    stdin(POLICY.replace("expect: drop", "expect: accept"))
    code, out, _ = run(capsys, "test", "-o", "json", "-")
    assert code == 1 and json.loads(out)["file"] == "<stdin>"


def test_apply_from_standard_input_never_takes_the_same_file_shortcut(
        capsys, stdin, monkeypatch, tmp_path):
    """`already_live` compares a file's path and content with the live record; `-` is no
    file (a file named `-` in the working directory is not what is applied)."""
    import netctl.cli as cli
    import netctl.datapath.control as control
    from netctl.errors import NetctlError

    (tmp_path / "-").write_text(POLICY.replace("name: ssh", "name: from-the-file"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.privilege, "require", lambda *a: None)
    asked, applied = [], []
    monkeypatch.setattr(control, "already_live", lambda *a: asked.append(a) or {})

    def fake_apply(policy, **_kw):
        applied.append(policy)
        raise NetctlError("stopped here by the test")
    monkeypatch.setattr(control, "apply", fake_apply)
    stdin(POLICY)
    code, _, err = run(capsys, "apply", "-", "--dev", "eth0")
    assert code == 1 and "stopped here by the test" in err
    assert asked == []
    [policy] = applied
    assert policy.source == "<stdin>" and policy.rules[0].name == "ssh"


def test_generation_record_of_standard_input_has_no_file(tmp_path, monkeypatch):
    from netctl.datapath.control import _generation_record
    from netctl.policy.compile import compile_policy
    from netctl.policy.load import load_policy_text

    monkeypatch.chdir(tmp_path)
    (tmp_path / "<stdin>").write_text(POLICY)   # a file that happens to bear the name
    policy = load_policy_text(POLICY, "<stdin>")
    record = _generation_record(policy, compile_policy(policy))
    assert record.policy == "<stdin>" and record.policy_sha256 is None
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy_text(POLICY, "p.yaml")
    record = _generation_record(policy, compile_policy(policy))
    assert record.policy == str(tmp_path / "p.yaml") and record.policy_sha256


def test_lab_refuses_standard_input_before_anything(capsys, stdin):
    stdin(POLICY)
    code, _, err = run(capsys, "lab", "run", "-")
    assert code == 2 and "give the policy as a file" in err


@pytest.mark.parametrize(("argv", "collecting"), [
    (["validate", "x.yaml"], False), (["status"], False), (["apply", "x.yaml"], False),
    (["top"], True), (["exporter"], True), (["monitor"], True)])
def test_short_verbs_run_with_the_cyclic_collector_paused(monkeypatch, argv, collecting):
    """Short verbs (one burst of acyclic allocation: a 100,000-rule apply spent 1.2 s in
    the collector) run with it paused and turn it back on; verbs that run until stopped
    keep it."""
    import gc

    from netctl import cli

    seen = []
    monkeypatch.setitem(cli.HANDLERS, argv[0], lambda args: seen.append(gc.isenabled()))
    assert gc.isenabled()
    assert main(argv) == 0
    assert seen == [collecting] and gc.isenabled()
