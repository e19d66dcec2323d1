"""Plan entries <-> map bytes: the key and value layouts of the policy maps.

A ``MapPlan`` (netctl/policy/plan.py) holds plain ints and tuples; here they become the
bytes of the structs in netctl_abi.h, with the generation in every trie key
(docs/classification.md, "Atomic updates"; an array's generation is its index's stride,
``array_stride``).

The bulk packers write hundreds of thousands of entries per apply, back to
back in one pass, each entry exactly as the single-entry packer writes it.
"""

from __future__ import annotations

import struct
import sys
from array import array

from .constants import (
    CFG_SIZE,
    ICMP_INDEX_SIZE,
    MAX_SHAPES,
    PORT_INDEX_SIZE,
    RULE_KEY_HEADER_BITS,
)

_CLASSES = struct.Struct(f"<{MAX_SHAPES}I")
_RULE_KEY = struct.Struct("<IBBBBB3xIII16s")
_RULE = struct.Struct("<BBH")
_CONFIG = struct.Struct(f"<{CFG_SIZE}I")
_U32 = struct.Struct("<I")
_LPM_HEAD = struct.Struct("<II")

ADDR_BYTES = {4: 4, 6: 16}


# ---- single entries -------------------------------------------------------------------------

def pack_lpm_key(gen: int, family: int, prefixlen: int, network: int) -> bytes:
    n = ADDR_BYTES[family]
    return _LPM_HEAD.pack(32 + prefixlen, gen) + network.to_bytes(n, "big")


def unpack_lpm_key(data: bytes) -> tuple[int, int, int]:
    """-> (gen, prefixlen, network int)"""
    plen, gen = _LPM_HEAD.unpack_from(data)
    return gen, plen - 32, int.from_bytes(data[8:], "big")


def pack_classes(classes: tuple[int, ...]) -> bytes:
    return _CLASSES.pack(*classes)


def unpack_classes(data: bytes) -> tuple[int, ...]:
    return _CLASSES.unpack(data)


def pack_rule_key(gen: int, key: tuple[int, ...]) -> bytes:
    """A rule-trie key: (slot, direction, family, proto, addr_cls, sport_cls, l4_cls,
    prefix length, network) of a plan, in generation ``gen``."""
    slot, direction, family, proto, other, sport, l4, plen, network = key
    addr = network.to_bytes(ADDR_BYTES[family], "big")
    return _RULE_KEY.pack(RULE_KEY_HEADER_BITS + plen, gen, slot, direction, family, proto,
                          other, sport, l4, addr)


def unpack_rule_key(data: bytes) -> tuple[int, tuple[int, ...]]:
    """-> (gen, the plan's key tuple)"""
    prefixlen, gen, slot, direction, family, proto, other, sport, l4, addr = \
        _RULE_KEY.unpack(data)
    network = int.from_bytes(addr[:ADDR_BYTES.get(family, 16)], "big")
    return gen, (slot, direction, family, proto, other, sport, l4,
                 prefixlen - RULE_KEY_HEADER_BITS, network)


def pack_u32(value: int) -> bytes:
    return _U32.pack(value)


def unpack_u32(data: bytes) -> int:
    return _U32.unpack(data)[0]


def pack_rule(value: tuple[int, int]) -> bytes:
    return _RULE.pack(value[0], value[1], 0)


def unpack_rule(data: bytes) -> tuple[int, int]:
    action, flags, _ = _RULE.unpack(data)
    return action, flags


def pack_config(words: tuple[int, ...]) -> bytes:
    return _CONFIG.pack(*words)


def unpack_config(data: bytes) -> tuple[int, ...]:
    return _CONFIG.unpack(data)


# ---- many entries, back to back -------------------------------------------------------------

_RULE_HEAD = struct.Struct("<BBBBB3xIII")   # a rule key after its prefix length
_ADDR_SHIFT = {4: 96, 6: 0}                  # an address as the key's 16 bytes, big-endian


class _RuleHeads(dict):
    """Packed rule-key headers of one generation, each packed once."""

    def __init__(self, gen: int):
        super().__init__()
        self.gen = gen

    def __missing__(self, head: tuple[int, ...]) -> bytes:
        packed = self[head] = _RULE_HEAD.pack(self.gen, *head)
        return packed


def pack_rule_keys(gen: int, keys) -> bytes:
    """Many rule-trie keys back to back, each as ``pack_rule_key`` packs it: a million-prefix
    set is a million keys sharing a few headers, so headers are packed once each."""
    lengths = [_U32.pack(RULE_KEY_HEADER_BITS + plen) for plen in range(129)]
    heads = _RuleHeads(gen)
    shift = _ADDR_SHIFT
    return b"".join([lengths[k[7]] + heads[k[:7]] + (k[8] << shift[k[2]]).to_bytes(16, "big")
                     for k in keys])


def pack_lpm_keys(gen: int, family: int, keys) -> bytes:
    """Many LPM-trie keys ``(prefixlen, network)`` back to back, as ``pack_lpm_key``."""
    n = ADDR_BYTES[family]
    lengths = [_LPM_HEAD.pack(32 + plen, gen) for plen in range(129)]
    return b"".join([lengths[plen] + network.to_bytes(n, "big") for plen, network in keys])


def pack_u32s(values) -> bytes:
    """Many u32 back to back, little-endian (as pack_u32 each)."""
    data = array("I", values)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes()


# Per-generation strides of the array maps: index = gen * stride + plan index.
def array_stride(name: str, constants: dict[str, int]) -> int:
    fixed = {"sport_interval": PORT_INDEX_SIZE, "dport_interval": PORT_INDEX_SIZE,
             "icmp_interval": ICMP_INDEX_SIZE, "config": 1}
    return fixed.get(name) or constants[f"NETCTL_{name.upper()}_ENTRIES"]
