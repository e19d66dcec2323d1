"""netctl run through `ip netns exec`, as operators and later tiers run it.

`ip netns exec` gives the command a new mount namespace with a fresh /sys, so bpffs,
tracefs and debugfs mounted on the host are not visible inside: the CLI must work there and
`netctl doctor` must say what it sees, not what the host has.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from nsutil import namespaces, netns, run, veth_pair

REPO = Path(__file__).resolve().parents[2]
NETCTL = str(Path(sys.executable).with_name("netctl"))
WEB = str(REPO / "policies" / "web-server.yaml")


def test_netctl_entry_point_exists():
    assert Path(NETCTL).exists(), "the venv's netctl script is missing: run make setup"


def test_validate_and_test_inside_a_namespace():
    with netns("v") as ns:
        ok = run(NETCTL, "validate", WEB, ns=ns, check=False)
        assert ok.returncode == 0, ok.stderr
        assert "valid" in ok.stdout
        tested = run(NETCTL, "test", WEB, ns=ns, check=False)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert " 0 failed" in tested.stdout


def test_invalid_policy_exit_code_and_line_inside_a_namespace(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    action: drop\n    dport: 99999\n")
    with netns("i") as ns:
        result = run(NETCTL, "validate", str(bad), ns=ns, check=False)
    assert result.returncode == 2
    assert f"{bad}:5:" in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_inside_a_namespace_reports_what_it_sees():
    """Inside `ip netns exec` /sys is a fresh sysfs: the host's bpffs is not there, yet
    XDP still loads and attaches natively to a veth created in that namespace."""
    with netns("d") as ns:
        result = run(NETCTL, "doctor", "-o", "json", ns=ns, check=False)
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["bpffs"]["ok"] is False, checks["bpffs"]
    assert checks["xdp_native_veth"]["ok"] is True, checks["xdp_native_veth"]
    assert checks["prog_xdp"]["ok"] is True


def test_namespace_and_veth_are_removed_even_when_the_body_fails():
    made: list[str] = []
    made_ns: list[str] = []
    with (
        pytest.raises(RuntimeError),
        netns("f") as a,
        netns("g") as b,
        veth_pair(a, b, "10.99.0.1/30", "10.99.0.2/30") as pair,
    ):
        made.extend(pair)
        made_ns.extend((a, b))
        ping = run("ping", "-c", "1", "-W", "2", "10.99.0.2", ns=a, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        raise RuntimeError("test body failed")
    # Only this test's namespaces matter (another run may be making its own meanwhile).
    assert len(made_ns) == 2 and not set(made_ns) & namespaces()
    host_links = run("ip", "-o", "link").stdout
    for name in made:
        assert f" {name}@" not in host_links and f" {name}:" not in host_links


def test_same_file_is_already_live_whatever_the_plan_chose(tmp_path):
    """The "same file, already live" shortcut holds for plans whose build carries what the
    plan itself chose: rule-trie slots keyed by the destination port (40 rules whose wide
    port ranges would cut each prefix into 80 entries) and a conntrack size of its own.
    (It once compared the build with the defaults and loaded and compiled such a file again
    on every apply: 8.4 s at 100,000 rules.)"""
    from lab import lab

    rules = "".join(f"  - {{name: r{i}, action: drop, src: 10.{i}.0.0/24, proto: tcp, "
                    f"dport: {1000 + i * 10}-{30000 + i * 10}}}\n" for i in range(40))
    port_keyed = tmp_path / "port-keyed.yaml"
    port_keyed.write_text(f"version: 1\nrules:\n{rules}")
    sized = tmp_path / "sized.yaml"
    sized.write_text("version: 1\nstateful: true\nconntrack: {size: 4096}\nrules:\n"
                     "  - {name: web, action: accept, proto: tcp, dport: 80}\n")
    with lab(tmp_path) as the_lab:
        for policy in (port_keyed, sized):
            first = run(NETCTL, "apply", str(policy), "--dev", the_lab.dut_if,
                        ns=the_lab.dut, check=False)
            assert first.returncode == 0, first.stdout + first.stderr
            again = run(NETCTL, "apply", str(policy), "--dev", the_lab.dut_if,
                        ns=the_lab.dut, check=False)
            assert again.returncode == 0, again.stdout + again.stderr
            assert f"{policy}: already live" in again.stdout, again.stdout
            # ... and by the shortcut: a full apply that finds nothing to write says the
            # same, so the shortcut itself is asked.
            asked = run(sys.executable, "-c",
                        "import sys; from netctl.datapath.control import already_live; "
                        "print(already_live(sys.argv[1], [sys.argv[2]], None) is not None)",
                        str(policy), the_lab.dut_if, ns=the_lab.dut, check=False)
            assert asked.stdout.strip() == "True", asked.stdout + asked.stderr
        status = the_lab.status()
        assert status["problems"] == []


def test_apply_from_standard_input(tmp_path):
    """`netctl apply -` reads the policy from standard input: it goes live and status names
    it <stdin> with no file digest; a file named `-` in the working directory, live and
    unchanged, does not make it "already live"; bad input names <stdin>:LINE:COL and
    changes nothing."""
    from lab import lab

    from_file = ("version: 1\nrules:\n"
                 "  - {name: from-the-file, action: accept, proto: udp, dport: 5555}\n")
    from_stdin = ("version: 1\nrules:\n"
                  "  - {name: from-stdin, action: drop, proto: udp, dport: 5555}\n")
    (tmp_path / "-").write_text(from_file)
    with lab(tmp_path) as the_lab:
        def apply(*args: str, text: str | None = None):
            return run(NETCTL, "apply", *args, "--dev", the_lab.dut_if, ns=the_lab.dut,
                       check=False, cwd=tmp_path, input=text)

        for _ in range(2):   # the second takes the "same file, already live" shortcut
            result = apply("./-")
            assert result.returncode == 0, result.stdout + result.stderr
        assert "./-: already live" in result.stdout
        assert the_lab.udp(5) == 5

        result = apply("-", text=from_stdin)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("<stdin>: live as generation ")
        status = the_lab.status()
        assert status["policy"] == "<stdin>" and status["policy_sha256"] is None
        assert [r["name"] for r in status["rules"]] == ["from-stdin"]
        assert status["problems"] == []
        assert the_lab.udp(5) == 0 and the_lab.rule("from-stdin")["packets"] == 5

        again = apply("-", text=from_stdin)   # compiled and diffed: nothing to write
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.startswith(f"<stdin>: already live (generation "
                                       f"{status['generation']}); nothing to do")

        bad = apply("-", text="version: 1\nrules:\n  - {name: x, action: block}\n")
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        assert "<stdin>:3:23: action must be one of accept, drop" in bad.stderr
        after = the_lab.status()
        assert after["generation"] == status["generation"]
        assert [r["name"] for r in after["rules"]] == ["from-stdin"]
        assert the_lab.udp(3) == 0
