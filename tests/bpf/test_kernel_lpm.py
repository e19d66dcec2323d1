"""The plan interpreter's longest-prefix match is the kernel's.

`netctl.policy.interp` emulates the BPF LPM tries in Python, and the property tests trust it.
Here the compiled address class tries and the rule trie (a header of classes, then an
address) are loaded into real BPF_MAP_TYPE_LPM_TRIE maps and looked up by the kernel (a
user-space lookup on an LPM trie is a longest-prefix match), for edge and random addresses:
every answer must equal the interpreter's.
"""

from __future__ import annotations

import ctypes
import ipaddress
import random

import pytest

from netctl import abi
from netctl.abi import CFG_SIZE, MAX_SHAPES, ZERO_CLASSES
from netctl.kernel.bpfsrc import INCLUDE_DIR
from netctl.policy.compile import compile_policy
from netctl.policy.interp import _lpm, _lpm_keyed
from netctl.policy.load import load_policy_text

bcc = pytest.importorskip("bcc", reason="bcc comes from Debian's python3-bpfcc (make setup)")

PROGRAM = f"""
#include "netctl_abi.h"
struct key4 {{ u32 prefixlen; u8 addr[4]; }};
struct key6 {{ u32 prefixlen; u8 addr[16]; }};
struct classes {{ u32 cls[{MAX_SHAPES}]; }};
BPF_LPM_TRIE(src_v4, struct key4, struct classes, 65536);
BPF_LPM_TRIE(src_v6, struct key6, struct classes, 65536);
BPF_LPM_TRIE(dst_v4, struct key4, struct classes, 65536);
BPF_LPM_TRIE(dst_v6, struct key6, struct classes, 65536);
BPF_LPM_TRIE(rule_table, struct netctl_rule_key, u32, 65536);
int unused(void *ctx) {{ return 0; }}
"""


def _policy_text(rng: random.Random) -> str:
    lines = ["version: 1", "rules:"]
    for i in range(300):
        if rng.random() < 0.7:
            plen = rng.choice([0, 1, 8, 12, 16, 20, 24, 28, 31, 32])
            net = ipaddress.ip_network((rng.getrandbits(32) >> (32 - plen) << (32 - plen)
                                        if plen else 0, plen))
        else:
            plen = rng.choice([0, 1, 16, 32, 48, 64, 100, 127, 128])
            value = rng.getrandbits(128) >> (128 - plen) << (128 - plen) if plen else 0
            net = ipaddress.ip_network((value, plen))
        field = rng.choice(["src", "dst"])
        other = "dst" if field == "src" else "src"
        # the other field: one of a few broad prefixes of the same family, so that in the
        # src+dst shape one field is looked up directly and the other by class
        broad = rng.choice(["0.0.0.0/0", "10.0.0.0/8", "192.0.0.0/2"]) if net.version == 4 \
            else rng.choice(["::/0", "2000::/3"])
        both = f", {other}: '{broad}'" if rng.random() < 0.5 else ""
        port = f", proto: tcp, dport: {rng.randint(1, 3)}" if rng.random() < 0.5 else ""
        lines.append(f"  - {{name: r{i}, action: drop, {field}: '{net}'{both}{port}}}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tries():
    b = bcc.BPF(text=PROGRAM, cflags=[f"-I{INCLUDE_DIR}", f"-DNETCTL_MAX_SHAPES={MAX_SHAPES}",
                                      f"-DNETCTL_CFG_SIZE={CFG_SIZE}"])
    try:
        yield b
    finally:
        b.cleanup()


def _key(table, plen: int, value: int, nbytes: int):
    key = table.Key()
    key.prefixlen = plen
    key.addr = (ctypes.c_ubyte * nbytes)(*value.to_bytes(nbytes, "big"))
    return key


def test_kernel_lpm_lookups_equal_the_interpreter(tries):
    rng = random.Random(20261125)
    plan = compile_policy(load_policy_text(_policy_text(rng), "lpm.yaml"))
    maps = plan.maps()
    checked = 0
    assert any(maps[n] for n in ("src_v4", "dst_v4", "src_v6", "dst_v6"))
    for name, bits in (("src_v4", 32), ("dst_v4", 32), ("src_v6", 128), ("dst_v6", 128)):
        table, nbytes = tries[name], bits // 8
        table.clear()
        for (plen, network), classes in maps[name].items():
            leaf = table.Leaf()
            leaf.cls = (ctypes.c_uint32 * MAX_SHAPES)(*classes)
            table[_key(table, plen, network, nbytes)] = leaf
        if not maps[name]:
            continue
        probes = [rng.getrandbits(bits) for _ in range(500)]
        for plen, network in list(maps[name])[:200]:  # each entry's first and last address
            span = (1 << (bits - plen)) - 1
            probes += [network, network + span, max(network - 1, 0),
                       min(network + span + 1, (1 << bits) - 1)]
        for address in probes:
            leaf = table.get(_key(table, bits, address, nbytes))
            kernel = tuple(leaf.cls) if leaf is not None else ZERO_CLASSES
            assert kernel == _lpm(maps[name], bits, address), (name, hex(address))
            checked += 1
    assert checked > 2000


def test_kernel_rule_trie_lookups_equal_the_interpreter(tries):
    rng = random.Random(20261126)
    plan = compile_policy(load_policy_text(_policy_text(rng), "rules.yaml"))
    rules = plan.maps()["rule_table"]
    table = tries["rule_table"]
    table.clear()
    for key, value in rules.items():
        table[table.Key.from_buffer_copy(abi.pack_rule_key(0, key))] = table.Leaf(value)
    headers = sorted({k[:7] for k in rules})
    checked = 0
    for header in headers:
        bits = 32 if header[2] == 4 else 128
        probes = [rng.getrandbits(bits) for _ in range(20)]
        for *_, plen, network in [k for k in rules if k[:7] == header][:30]:
            span = (1 << (bits - plen)) - 1
            probes += [network, network + span, max(network - 1, 0),
                       min(network + span + 1, (1 << bits) - 1)]
        for address in probes:
            key = table.Key.from_buffer_copy(abi.pack_rule_key(0, (*header, bits, address)))
            leaf = table.get(key)
            kernel = leaf.value if leaf is not None else None
            assert kernel == _lpm_keyed(rules, header, bits, address), (header, hex(address))
            checked += 1
    assert checked > 2000 and len(headers) > 3


def test_kernel_lists_a_generation_from_its_mark(tries):
    """Status and applies read one generation of the rule trie from its mark on and stop at
    the first key of the other (netctl/datapath/maps.py): that holds only if the kernel lists
    an LPM trie's keys in the post-order MemoryMap models.  Two policies in the two
    generations of a real trie: the kernel's listing equals the model's, each mark comes
    first of its generation, and a marked read equals a whole walk and the plan."""
    from netctl.abi.maps import PLAN_MAPS
    from netctl.datapath.maps import MemoryMap, _read_trie, write_diff, write_marks
    from netctl.kernel import bpfsys
    from netctl.policy.plan import diff

    plans = [compile_policy(load_policy_text(_policy_text(random.Random(seed)), "rules.yaml"))
             for seed in (7, 8)]
    d = PLAN_MAPS["rule_table"]
    size = 4 * max(len(p.maps()["rule_table"]) for p in plans)
    kernel = bpfsys.Map.create(bpfsys.MAP_LPM_TRIE, d.key.size, d.value.size, size,
                               bpfsys.F_NO_PREALLOC, "test_marks")
    model = MemoryMap("lpm_trie", d.key.size, d.value.size, size)
    with kernel:
        for m in (kernel, model):
            for gen, plan in enumerate(plans):
                write_diff({"rule_table": m}, "rule_table", gen,
                           diff(None, plan).maps["rule_table"], plan.constants())
                write_marks({"rule_table": m}, gen)
        listed = [[keys[i:i + d.key.size] for i in range(0, len(keys), d.key.size)]
                  for m in (kernel, model) for keys, _ in [_joined(m.lookup_batches(chunk=97))]]
        assert listed[0] == listed[1]
        gens = [key[4] for key in listed[0]]
        assert gens == sorted(gens)                       # one run per generation
        for gen in (0, 1):
            assert listed[0][gens.index(gen)] == d.key.mark(gen)
            want = plans[gen].maps()["rule_table"]
            assert _read_trie(kernel, gen, d.key, d.value) == want
            assert _read_trie(kernel, gen, d.key, d.value, whole=True) == want
        kernel.delete(d.key.mark(1))                      # no mark: the whole walk
        assert _read_trie(kernel, 1, d.key, d.value) == plans[1].maps()["rule_table"]


def _joined(batches) -> tuple[bytes, bytes]:
    keys, values = zip(*batches, strict=True)
    return b"".join(keys), b"".join(values)
