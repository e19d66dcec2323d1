"""Security: without the capabilities every verb that touches the kernel is refused with the
missing one named (exit 77) and changes nothing; pins and state are root's alone; a map
changed by hand behind netctl's back is reported by status and undone by the next apply.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
import textwrap

import pytest
from lab import NETCTL
from nsutil import netns_cookie, run

from netctl.paths import PIN_ROOT, STATE_ROOT

# A drops UDP 1111; 3333 is decided by the default (accept) in both.
POLICY_A = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: a-drop-1111, action: drop, proto: udp, dport: 1111}
"""
POLICY_B = """
version: 1
defaults: {ingress: accept, egress: accept}
rules:
  - {name: b-drop-2222, action: drop, proto: udp, dport: 2222}
"""
# Run netctl inside the lab's DUT namespace as: nobody; root with no capabilities at all.
UNPRIVILEGED = {
    "nobody": ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    "root-without-capabilities": ["setpriv", "--bounding-set=-all", "--inh-caps=-all"],
}


@pytest.fixture
def readable_policy():
    """A policy file that nobody can read (pytest's tmp_path is root's alone), so the
    refusal tested is the privilege check, not a file permission."""
    with tempfile.TemporaryDirectory(prefix="netctl-sec-") as d:
        yield _readable_file(d, "b.yaml", POLICY_B)


def _readable_file(directory: str, name: str, text: str) -> str:
    """``text`` in ``directory``/``name``, both readable by anyone."""
    os.chmod(directory, 0o755)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def _verdicts(the_lab) -> tuple[int, int, int]:
    """Packets received on UDP 1111, 2222 and 3333 (two sent to each)."""
    return tuple(the_lab.udp(2, dport=port, wait=0.2) for port in (1111, 2222, 3333))


def _tree(root: str) -> dict[str, tuple[int, int, float]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_mode, st.st_uid, st.st_mtime)
    return out


@pytest.mark.parametrize("who", sorted(UNPRIVILEGED))
def test_without_capabilities_every_verb_is_refused_and_nothing_changes(
        the_lab, readable_policy, who):
    the_lab.apply(POLICY_A)
    assert _verdicts(the_lab) == (0, 2, 2)
    key = f"ns{netns_cookie(the_lab.dut)}"
    before = {**_tree(f"{PIN_ROOT}/{key}"), **_tree(f"{STATE_ROOT}/{key}")}
    verbs = {
        "apply": ["apply", readable_policy, "--dev", the_lab.dut_if],
        "apply --dry-run": ["apply", readable_policy, "--dev", the_lab.dut_if, "--dry-run"],
        "status": ["status"],
        "detach": ["detach", "--all"],
        "conntrack": ["conntrack"],
        "monitor": ["monitor", "--timeout", "1"],
        "top": ["top", "--iterations", "1"],
        "exporter": ["exporter", "--once"],
    }
    for verb, args in verbs.items():
        out = run(*UNPRIVILEGED[who], NETCTL, *args, ns=the_lab.dut, check=False)
        assert out.returncode == 77, (verb, out.returncode, out.stdout, out.stderr)
        assert "CAP_BPF" in out.stderr and "Traceback" not in out.stderr, (verb, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, (verb, out.stderr)
    # The policy is still A, enforced and described as it was; no file was touched.
    assert _verdicts(the_lab) == (0, 2, 2)
    assert the_lab.status()["problems"] == []
    assert {**_tree(f"{PIN_ROOT}/{key}"), **_tree(f"{STATE_ROOT}/{key}")} == before


def test_unprivileged_validate_and_test_still_work(readable_policy):
    """Checking a policy needs no privilege: only the kernel part of `test` is left out."""
    for verb in ("validate", "test"):
        out = subprocess.run([*UNPRIVILEGED["nobody"], NETCTL, verb, readable_policy],
                             capture_output=True, text=True)
        assert out.returncode == 0, (verb, out.stdout, out.stderr)


def test_pins_and_state_are_root_only(the_lab):
    the_lab.apply(POLICY_A)
    key = f"ns{netns_cookie(the_lab.dut)}"
    pin_root = os.stat(PIN_ROOT)
    assert pin_root.st_uid == 0 and stat.S_IMODE(pin_root.st_mode) & 0o077 == 0
    found = {**_tree(f"{PIN_ROOT}/{key}"), **_tree(f"{STATE_ROOT}/{key}")}
    assert any(p.endswith("state.json") for p in found) and any("/prog_" in p for p in found)
    loose = {p: oct(stat.S_IMODE(mode)) for p, (mode, uid, _) in found.items()
             if uid != 0 or stat.S_IMODE(mode) & 0o077}
    assert loose == {}, loose


TAMPER = textwrap.dedent("""
    import sys
    from netctl import abi
    from netctl.datapath import control
    from netctl.datapath.netns import Namespace
    ns = Namespace.current()
    live, why = control._open_live(ns, ns.read_state())
    with live:
        gen = live.active
        words = list(live.read_config(gen))
        words[0] ^= 1                     # the ingress default: accept <-> drop
        live.maps["config"].update(abi.pack_u32(gen), abi.pack_config(tuple(words)))
    print(gen)
""")


def test_a_map_changed_by_hand_is_reported_and_the_next_apply_repairs_it(the_lab):
    import sys

    the_lab.apply(POLICY_A)
    assert _verdicts(the_lab) == (0, 2, 2)
    tampered = int(run(sys.executable, "-c", TAMPER, ns=the_lab.dut).stdout)
    assert _verdicts(the_lab) == (0, 0, 0)     # the hand-made change is what runs now
    status = the_lab.status()
    assert any("differ from what netctl applied" in p and "config" in p
               for p in status["problems"]), status["problems"]
    out = the_lab.netctl("status", check=False)
    assert out.returncode == 1 and "config" in out.stdout + out.stderr
    # --no-verify does not read the maps back, and says nothing about them.
    quick = the_lab.netctl("status", "--no-verify", "-o", "json", check=False)
    assert quick.returncode == 0, quick.stdout + quick.stderr
    # The same policy again: not a no-op, it is written afresh and goes live.
    result = the_lab.apply(POLICY_A)
    assert result["unchanged"] is False and result["generation"] != tampered
    assert _verdicts(the_lab) == (0, 2, 2)
    assert the_lab.status()["problems"] == []
    # The tampered generation is read back, not trusted, when B is written into it.
    result = the_lab.apply(POLICY_B)
    assert result["generation"] == tampered
    assert _verdicts(the_lab) == (2, 0, 2)
    assert the_lab.status()["problems"] == []


def test_capabilities_that_load_and_those_that_only_read(the_lab, readable_policy):
    """The programs load with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (without CAP_PERFMON
    the verifier refuses their packet-pointer arithmetic): with the first two only, an
    apply is refused up front, naming CAP_PERFMON (exit 77, one line, nothing changed),
    while status, which only reads the maps, works; with all three, the apply goes live."""
    the_lab.apply(POLICY_A)
    two = "-all,+bpf,+net_admin"
    three = two + ",+perfmon"

    def as_root_with(caps: str, *args: str):
        return run("setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}",
                   f"--ambient-caps={caps}", NETCTL, *args, ns=the_lab.dut, check=False)

    refused = as_root_with(two, "apply", readable_policy, "--dev", the_lab.dut_if)
    assert refused.returncode == 77, refused.stdout + refused.stderr
    assert "CAP_PERFMON" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert _verdicts(the_lab) == (0, 2, 2)
    status = as_root_with(two, "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert [r["name"] for r in json.loads(status.stdout)["rules"]] == ["a-drop-1111"]
    applied = as_root_with(three, "apply", readable_policy, "--dev", the_lab.dut_if)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert _verdicts(the_lab) == (2, 0, 2)


def test_a_rebuild_with_the_three_capabilities(the_lab):
    """A change that builds new programs (another conntrack size) with CAP_BPF,
    CAP_NET_ADMIN and CAP_PERFMON only, from an empty program cache: bcc opens a map pinned
    already by its id, which needs CAP_SYS_ADMIN, so the build compiles against scratch maps
    of its own and loads its programs over the live maps from the cache entry it made.  It
    goes live and judges; no scratch pin is left behind."""
    the_lab.apply(POLICY_A)
    rebuilt = POLICY_B.replace("rules:", "stateful: true\nconntrack: {size: 8192}\nrules:")
    caps = "-all,+bpf,+net_admin,+perfmon"
    with tempfile.TemporaryDirectory(prefix="netctl-sec-") as d:
        path = _readable_file(d, "rebuilt.yaml", rebuilt)
        applied = run("setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}",
                      f"--ambient-caps={caps}", "env", f"NETCTL_PROGRAM_CACHE={d}/cache",
                      NETCTL, "apply", path, "--dev", the_lab.dut_if, "-o", "json",
                      ns=the_lab.dut, check=False)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert json.loads(applied.stdout)["reload"] is True
        assert os.listdir(f"{d}/cache")   # the entry the build went through
    assert _verdicts(the_lab) == (2, 0, 2)
    pins = os.path.join(PIN_ROOT, f"ns{netns_cookie(the_lab.dut)}")
    assert not [n for n in os.listdir(pins) if "scratch" in n]
