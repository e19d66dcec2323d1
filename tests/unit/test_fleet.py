"""The fleet's pure logic: key layout, selectors, labels, URLs, backoff, the status rate
limit and convergence (netctl/fleet/keys.py, backoff.py, status.py)."""

from __future__ import annotations

import json

import pytest

from netctl.fleet import keys
from netctl.fleet.backoff import Backoff
from netctl.fleet.keys import Assignment, FleetError, Selector, parse_labels, parse_url
from netctl.fleet.status import (
    CONVERGED,
    DEAD,
    FAILED,
    PENDING,
    UNASSIGNED,
    StatusWriter,
    fleet_rows,
    format_rows,
    node_record,
    node_state,
)
from netctl.fleet.store import Endpoint

# -- key space ------------------------------------------------------------------------------

def test_keys_live_under_the_versioned_prefix():
    d = keys.digest("version: 1\n")
    assert keys.policy_key("web", d) == f"/netctl/v1/policies/web/{d}"
    assert keys.assignment_key("n1") == "/netctl/v1/assignments/n1"
    assert keys.node_key("n1") == "/netctl/v1/nodes/n1"
    assert keys.status_key("n1") == "/netctl/v1/status/n1"
    assert keys.PUSH_SEQ.startswith(keys.PREFIX) and keys.PUSH_LOCK.startswith(keys.PREFIX)
    assert keys.policy_of(keys.policy_key("web", d)) == ("web", d)
    assert keys.node_of(keys.status_key("n-7"), keys.STATUS) == "n-7"


def test_digest_is_sha256_of_utf8_text():
    import hashlib

    assert keys.digest("é") == hashlib.sha256("é".encode()).hexdigest()


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x" * 64, "a b", "..", "é"])
def test_bad_names_are_refused(name):
    with pytest.raises(FleetError):
        keys.check_name(name)


def test_assignment_round_trips_and_refuses_garbage():
    a = Assignment("web", "ab" * 32, 7, ("eth0", "eth1"))
    assert Assignment.from_json(a.to_json()) == a
    assert Assignment.from_json(Assignment("web", "cd" * 32, 1).to_json()).interfaces is None
    for raw in (b"{", b"[]", b'{"policy": "x"}'):
        with pytest.raises(FleetError):
            Assignment.from_json(raw)


# -- selectors, labels, URLs -----------------------------------------------------------------

REGISTERED = {"n1": {"labels": {"role": "web"}}, "n2": {"labels": {"role": "db"}},
              "n3": {"labels": {"role": "web"}}, "n4": {}}


def test_selector_forms():
    assert Selector.parse(None).pick(REGISTERED) == ["n1", "n2", "n3", "n4"]
    assert Selector.parse("  ").pick(REGISTERED) == ["n1", "n2", "n3", "n4"]
    assert Selector.parse("n3,n1, n3").pick(REGISTERED) == ["n1", "n3"]
    assert Selector.parse("role=web").pick(REGISTERED) == ["n1", "n3"]
    assert Selector.parse("role = db").pick(REGISTERED) == ["n2"]
    assert Selector.parse("role=none").pick(REGISTERED) == []
    assert str(Selector.parse("role=web")) == "role=web"
    assert str(Selector.parse(None)) == "every registered node"


@pytest.mark.parametrize("text", ["n1,,n2", "role=", "=web", "a=b=c", "role=web,db", "n/1"])
def test_bad_selectors_are_refused(text):
    with pytest.raises(FleetError):
        Selector.parse(text)


def test_selector_names_must_be_registered():
    with pytest.raises(FleetError, match="not registered.*n9"):
        Selector.parse("n1,n9").pick(REGISTERED)


def test_labels():
    assert parse_labels(["role=web", "zone=eu-1", "kubernetes.io/os=linux"]) == {
        "role": "web", "zone": "eu-1", "kubernetes.io/os": "linux"}
    assert parse_labels(None) == {}
    for bad in (["role"], ["=x"], ["role="], ["role=a,b"]):
        with pytest.raises(FleetError):
            parse_labels(bad)


def test_urls():
    assert parse_url("http://127.0.0.1:2379") == ("http", "127.0.0.1", 2379)
    assert parse_url("https://etcd.example:2379/") == ("https", "etcd.example", 2379)
    assert parse_url("http://etcd") == ("http", "etcd", 2379)
    assert parse_url("http://[fd00::1]:23790") == ("http", "fd00::1", 23790)
    for bad in ("etcd:2379", "ftp://x:1", "http://x:0", "http://x:99999", "http://",
                "http://a:1,http://b:2"):
        with pytest.raises(FleetError):
            parse_url(bad)
    # a cluster: its members comma-separated, each checked, tried in this order
    members = Endpoint.from_options("http://[fd00::1]:23790, http://other:1,").urls
    assert members == ("http://[fd00::1]:23790", "http://other:1")
    with pytest.raises(FleetError, match="'ftp://b:1'"):
        Endpoint.from_options("http://a:1,ftp://b:1")


def test_endpoint_from_options_and_environment(monkeypatch, tmp_path):
    for var in ("NETCTL_ETCD", "NETCTL_ETCD_USER", "NETCTL_ETCD_PASSWORD", "NETCTL_ETCD_CA",
                "NETCTL_ETCD_CERT", "NETCTL_ETCD_KEY", "NETCTL_ETCD_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FleetError, match="--etcd URL or set NETCTL_ETCD"):
        Endpoint.from_options(None)
    monkeypatch.setenv("NETCTL_ETCD", "https://etcd:2379")
    monkeypatch.setenv("NETCTL_ETCD_CA", "/ca.pem")
    e = Endpoint.from_options(None)
    assert (e.url, e.ca, e.user) == ("https://etcd:2379", "/ca.pem", None)
    assert Endpoint.from_options("http://other:1").url == "http://other:1"   # option first
    monkeypatch.setenv("NETCTL_ETCD_USER", "node-n1")
    with pytest.raises(FleetError, match="no password"):
        Endpoint.from_options(None)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert Endpoint.from_options(None, password_file=str(secret)).password == "s3cret"
    monkeypatch.setenv("NETCTL_ETCD_PASSWORD", "from-env")
    assert Endpoint.from_options(None).password == "from-env"
    with pytest.raises(FleetError, match="needs its key"):
        Endpoint.from_options(None, cert="/c.pem")


# -- backoff -----------------------------------------------------------------------------------

def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half():
    low = Backoff(base=0.5, cap=4.0, rand=lambda: 0.0)
    assert [low.step() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    high = Backoff(base=0.5, cap=4.0, rand=lambda: 0.999999)
    assert [round(high.step(), 3) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    high.reset()
    assert round(high.step(), 3) == 0.5


def test_backoff_spreads_agents():
    delays = {round(Backoff(cap=10).step() + Backoff(cap=10).step(), 6) for _ in range(50)}
    assert len(delays) > 40   # two agents that fail together retry apart
    with pytest.raises(ValueError):
        Backoff(base=0)


# -- status writes -------------------------------------------------------------------------------

def rec(digest="d1", generation=1, error=None, dropped=0):
    return node_record("web", digest, generation, error, None, {"dropped": dropped},
                       now=1000.0)


def test_status_written_at_once_then_at_most_once_a_second():
    w = StatusWriter()
    assert w.want(rec(), 10.0) == 0.0
    w.written(rec(), 10.0)
    assert w.want(rec(), 10.5) is None                      # nothing new: never written
    assert w.want(rec(generation=2), 10.2) == pytest.approx(0.8)   # news, but too soon
    assert w.want(rec(generation=2), 11.0) == 0.0
    w.written(rec(generation=2), 11.0)
    assert w.want(rec(generation=2, error="boom"), 13.0) == 0.0


def test_counters_alone_refresh_slowly():
    w = StatusWriter(counters_interval=30.0)
    w.written(rec(), 0.0)
    assert w.want(rec(dropped=5), 1.0) == pytest.approx(29.0)
    assert w.want(rec(dropped=5), 30.0) == 0.0
    assert w.want(dict(rec(), time=5.0), 40.0) is None     # the time alone is no news


def test_a_reconnect_writes_the_next_status():
    w = StatusWriter()
    w.written(rec(), 0.0)
    w.forget()
    assert w.want(rec(), 0.1) == pytest.approx(0.9)   # still at most once a second
    assert w.want(rec(), 1.0) == 0.0


# -- convergence ---------------------------------------------------------------------------------

A = Assignment("web", "d2", 5)


@pytest.mark.parametrize(("assignment", "status", "alive", "state"), [
    (A, rec("d2", 5), False, DEAD),
    (None, None, True, UNASSIGNED),
    (A, None, True, PENDING),
    (A, rec("d1", 4), True, PENDING),                 # not acted on generation 5 yet
    (A, rec("d1", 5, error="eth1: no such interface"), True, FAILED),
    (A, rec("d2", 5), True, CONVERGED),
    (A, rec("d1", 5), True, PENDING),
])
def test_node_state(assignment, status, alive, state):
    assert node_state(assignment, status, alive) == state


def test_fleet_rows_and_text():
    rows = fleet_rows({"n1": {"labels": {"role": "web"}}, "n2": {}},
                      {"n1": A, "n2": A, "n3": A},
                      {"n1": rec("d2", 5, dropped=1234), "n2": rec("d1", 5, error="bad\nlog"),
                       "n3": rec("d2", 5)},
                      {"n1": 1.0, "n2": 2.0}, now=1010.0)
    by = {r["node"]: r for r in rows}
    assert [r["node"] for r in rows] == ["n1", "n2", "n3"]
    assert by["n1"]["converged"] and by["n1"]["dropped"] == 1234
    assert by["n2"]["state"] == FAILED and by["n3"]["state"] == DEAD
    assert by["n3"]["heartbeat_age"] is None and by["n1"]["status_age"] == 10.0
    json.dumps(rows)
    text = format_rows(rows)
    assert "1 of 3 nodes converged" in text and "1,234" in text and "log" not in text
    assert all(len(line) <= 100 for line in text.splitlines())


# -- the verbs' expected failures: one line, no traceback -------------------------------------

POLICY = "version: 1\ninterfaces:\n  - name: eth0\nrules:\n  - name: r\n    action: drop\n"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from netctl.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_etcd_unreachable_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("NETCTL_ETCD", raising=False)
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    for argv in (["fleet", "status", "--etcd", "http://127.0.0.1:1"],
                 ["push", str(path), "--etcd", "http://127.0.0.1:1", "--timeout", "1"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1 and err.startswith("netctl: etcd at http://127.0.0.1:1 unreachable")
        assert "Traceback" not in err and err.count("\n") == 1, err
    code, _, err = run_cli(capsys, "fleet", "status")
    assert code == 1 and "--etcd URL or set NETCTL_ETCD" in err


def test_push_refuses_an_invalid_policy_before_etcd(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nrules:\n  - name: r\n    action: maybe\n")
    code, _, err = run_cli(capsys, "push", str(path), "--etcd", "http://127.0.0.1:1")
    assert code == 2 and "bad.yaml:4" in err, err


@pytest.mark.parametrize("argv", [["push", "p.yaml", "--etcd", "http://x", "--nodes", "a,,b"],
                                  ["agent", "--etcd", "http://x", "--node", "a/b",
                                   "--dry-run"],
                                  ["agent", "--etcd", "ftp://x", "--node", "a", "--dry-run"],
                                  ["agent", "--etcd", "http://x", "--node", "a", "--dry-run",
                                   "--label", "novalue"],
                                  ["agent", "--etcd", "http://x", "--node", "a", "--dry-run",
                                   "--dev", "eth0", "--dev", "a-name-of-16-byte"]])
def test_bad_options_are_one_line(capsys, argv):
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and err.startswith("netctl: ") and "Traceback" not in err, err
    if "--dev" in argv:
        assert "a-name-of-16-byte" in err and "15 bytes" in err, err


@pytest.mark.parametrize("verb", [["agent"], ["push"], ["fleet"]])
def test_help_has_examples(capsys, verb):
    with pytest.raises(SystemExit):
        run_cli(capsys, *verb, "--help")
    out = capsys.readouterr().out
    assert "examples:" in out and "--etcd" in out
