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


TWO = "-all,+bpf,+net_admin"
THREE = TWO + ",+perfmon"   # what the datapath needs, and all a pod is given


def _as_root_with(the_lab, caps: str, *args: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess:
    """netctl ``args`` in the lab's DUT namespace as root with only the capabilities
    ``caps`` (setpriv's syntax), and ``env`` set."""
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    return run("setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}",
               f"--ambient-caps={caps}", *prefix, NETCTL, *args, ns=the_lab.dut, check=False)


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
    refused = _as_root_with(the_lab, TWO, "apply", readable_policy, "--dev", the_lab.dut_if)
    assert refused.returncode == 77, refused.stdout + refused.stderr
    assert "CAP_PERFMON" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert _verdicts(the_lab) == (0, 2, 2)
    status = _as_root_with(the_lab, TWO, "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert [r["name"] for r in json.loads(status.stdout)["rules"]] == ["a-drop-1111"]
    applied = _as_root_with(the_lab, THREE, "apply", readable_policy, "--dev", the_lab.dut_if)
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
    with tempfile.TemporaryDirectory(prefix="netctl-sec-") as d:
        path = _readable_file(d, "rebuilt.yaml", rebuilt)
        applied = _as_root_with(the_lab, THREE, "apply", path, "--dev", the_lab.dut_if,
                                "-o", "json", env={"NETCTL_PROGRAM_CACHE": f"{d}/cache"})
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert json.loads(applied.stdout)["reload"] is True
        assert os.listdir(f"{d}/cache")   # the entry the build went through
    assert _verdicts(the_lab) == (2, 0, 2)
    pins = os.path.join(PIN_ROOT, f"ns{netns_cookie(the_lab.dut)}")
    assert not [n for n in os.listdir(pins) if "scratch" in n]


@pytest.mark.parametrize("attach, tc_way, xdp_way", [(None, "tcx", "link"),
                                                     ("legacy", "cls_bpf", "netlink")])
def test_from_nothing_to_detach_with_the_three_capabilities(the_lab, attach, tc_way, xdp_way):
    """What a pod with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON does over its life, on links
    (the kernel's best hooks here) and on tc filters and netlink XDP (NETCTL_ATTACH=legacy):
    the first apply attaches, later applies find netctl's programs again and replace them,
    on the tc hook and on XDP, and detach removes them; each judges as it says.  Opening a
    program or link by id needs CAP_SYS_ADMIN: netctl knows its own by their pins."""
    run(NETCTL, "detach", "--all", ns=the_lab.dut)
    assert _verdicts(the_lab) == (2, 2, 2)
    def with_three(*args: str) -> subprocess.CompletedProcess:
        return _as_root_with(the_lab, THREE, *args,
                             env={"NETCTL_ATTACH": attach} if attach else None)

    def attached() -> dict:
        shown = json.loads(run(NETCTL, "status", "-o", "json", ns=the_lab.dut).stdout)
        return shown["interfaces"][0]["attach"]

    with tempfile.TemporaryDirectory(prefix="netctl-sec-") as d:
        steps = [(POLICY_A, (), (0, 2, 2), {"tc": tc_way, "xdp": None}),
                 (POLICY_B, (), (2, 0, 2), {"tc": tc_way, "xdp": None}),
                 (POLICY_A, ("--xdp-mode", "native"), (0, 2, 2), {"tc": tc_way, "xdp": xdp_way}),
                 (POLICY_B, ("--xdp-mode", "native"), (2, 0, 2), {"tc": tc_way, "xdp": xdp_way})]
        for i, (policy, extra, verdicts, ways) in enumerate(steps):
            applied = with_three("apply", _readable_file(d, f"{i}.yaml", policy), "--dev",
                                 the_lab.dut_if, *extra)
            assert applied.returncode == 0, (i, applied.stdout + applied.stderr)
            assert attached() == ways, i
            assert _verdicts(the_lab) == verdicts, i
    detached = with_three("detach", "--all")
    assert detached.returncode == 0, detached.stdout + detached.stderr
    assert _verdicts(the_lab) == (2, 2, 2)
    status = run(NETCTL, "status", "-o", "json", ns=the_lab.dut, check=False)
    after = json.loads(status.stdout)
    assert after["applied"] is False and after["interfaces"] == [], status.stdout


@pytest.mark.parametrize("attach", [None, "legacy"])
def test_a_failed_apply_rolls_back_with_the_three_capabilities(the_lab, attach):
    """An apply of new programs over two interfaces fails on the second (a veth whose peer's
    MTU is too large for native XDP: the kernel refuses the attach, ERANGE); the first,
    already given the new programs, gets its previous ones back.  That undo opens netctl's
    programs through their pins: opening them by id needs CAP_SYS_ADMIN."""
    def with_three(*args: str) -> subprocess.CompletedProcess:
        return _as_root_with(the_lab, THREE, *args,
                             env={"NETCTL_ATTACH": attach} if attach else None)

    def prog_ids() -> dict:
        shown = json.loads(run(NETCTL, "status", "-o", "json", ns=the_lab.dut).stdout)
        [mine] = [i for i in shown["interfaces"] if i["name"] == the_lab.dut_if]
        return mine["prog_ids"]

    run(NETCTL, "detach", "--all", ns=the_lab.dut)
    run("ip", "link", "add", "zsx0", "mtu", "9000", "type", "veth", "peer", "name", "zsx1",
        "mtu", "9000", ns=the_lab.dut)
    try:
        for dev in ("zsx0", "zsx1"):
            run("ip", "link", "set", dev, "up", ns=the_lab.dut)
        with tempfile.TemporaryDirectory(prefix="netctl-sec-") as d:
            first = with_three("apply", _readable_file(d, "a.yaml", POLICY_A), "--dev",
                               the_lab.dut_if, "--xdp-mode", "native")
            assert first.returncode == 0, first.stdout + first.stderr
            before = prog_ids()
            rebuilt = POLICY_B.replace(   # new programs: another conntrack size
                "rules:", "stateful: true\nconntrack: {size: 8192}\nrules:")
            failed = with_three("apply", _readable_file(d, "b.yaml", rebuilt), "--dev",
                                the_lab.dut_if, "--dev", "zsx0", "--xdp-mode", "native")
        assert failed.returncode == 4, failed.stdout + failed.stderr
        assert "zsx0" in failed.stderr and "errno 34" in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        assert prog_ids() == before          # the previous programs, back on their hooks
        assert _verdicts(the_lab) == (0, 2, 2)
        status = json.loads(run(NETCTL, "status", "-o", "json", ns=the_lab.dut).stdout)
        assert status["problems"] == [] and [r["name"] for r in status["rules"]] == \
            ["a-drop-1111"]
    finally:
        run("ip", "link", "del", "zsx0", ns=the_lab.dut, check=False)
