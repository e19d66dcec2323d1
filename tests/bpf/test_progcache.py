"""The program cache: a build from it loads the very programs a compile would (same tags),
on freshly created and pinned maps, and an entry that does not load is replaced by a
compile, never an error."""

from __future__ import annotations

import json

import pytest
from strategies import make_policy

from netctl.datapath import progcache
from netctl.datapath.sandbox import Sandbox, sandbox_limits
from netctl.kernel import bpfsys
from netctl.policy.compile import compile_policy

pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")

LIMITS = sandbox_limits(16)


def _tags(box: Sandbox) -> dict[str, str]:
    return {role: bpfsys.prog_info(fd).tag for role, fd in box.dp.programs.items()}


def _judges(box: Sandbox) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    box.load(compile_policy(make_policy({"action": "drop", "proto": "udp", "dport": 53}),
                            LIMITS))
    frame = bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(dport=53))
    for hook in ("xdp", "tc_ingress", "xdp_l3"):
        data = frame[14:] if hook.endswith("_l3") else frame
        assert box.run(data + bytes(max(0, 14 - len(data))), hook).why == "rule"


def test_a_cached_build_loads_the_programs_a_compile_makes(tmp_path, monkeypatch):
    monkeypatch.setenv("NETCTL_PROGRAM_CACHE", str(tmp_path))
    with Sandbox(LIMITS) as compiled:
        compiled_tags = _tags(compiled)
        _judges(compiled)
    entries = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert set(meta["roles"]) == set(compiled_tags)
    assert "events" in meta["maps"] and "@ct" in meta["maps"]
    with Sandbox(LIMITS) as cached:
        assert _tags(cached) == compiled_tags
        _judges(cached)


def test_an_entry_that_does_not_load_is_compiled_over(tmp_path, monkeypatch):
    monkeypatch.setenv("NETCTL_PROGRAM_CACHE", str(tmp_path))
    with Sandbox(LIMITS) as first:
        tags = _tags(first)
    entry = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    meta = json.loads((entry / "meta.json").read_text())
    for spec in meta["maps"].values():
        spec["type"] = 9999               # no such map type: creating it fails
    (entry / "meta.json").write_text(json.dumps(meta))
    with Sandbox(LIMITS) as again:
        assert _tags(again) == tags
        _judges(again)
    assert json.loads((entry / "meta.json").read_text())["maps"]["events"]["type"] != 9999


def test_the_cache_key_ignores_pin_paths_only():
    sources = ["int x;"]
    base = ["-DNETCTL_RULES_ENTRIES=16", '-DNETCTL_PIN_DIR="/a"', '-DNETCTL_CT_PIN="/a/ct"']
    moved = ["-DNETCTL_RULES_ENTRIES=16", '-DNETCTL_PIN_DIR="/b"', '-DNETCTL_CT_PIN="/c/ct"']
    other = ["-DNETCTL_RULES_ENTRIES=32", '-DNETCTL_PIN_DIR="/a"', '-DNETCTL_CT_PIN="/a/ct"']
    assert progcache.cache_key(sources, base) == progcache.cache_key(sources, moved)
    assert progcache.cache_key(sources, base) != progcache.cache_key(sources, other)
    assert progcache.cache_key(sources, base) != progcache.cache_key(["int y;"], base)
