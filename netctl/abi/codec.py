"""Plan entries <-> map bytes: the key and value layouts of the policy maps.

A ``MapPlan`` (netctl/policy/plan.py) holds plain ints and tuples; here they become the
bytes of the structs in netctl_abi.h, with the generation in every trie key
(docs/classification.md, "Atomic updates"; an array's generation is its index's stride, see
``maps.MapDef.per_generation``).  Each layout is one ``Codec``; the registry (``maps``)
names the codec of every map's key and value.

The bulk packers (``pack_many``) write hundreds of thousands of entries per apply, back to
back in one pass, each entry exactly as the single-entry packer writes it.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import structs
from .constants import CFG_SIZE, MAX_SHAPES, RULE_KEY_HEADER_BITS, ZERO_CLASSES

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


# A generation's mark in the rule trie: a key of family 0 (no packet's key has it), every
# other bit zero, at full length.  The kernel lists an LPM trie's keys in post-order (longer
# prefixes before the shorter ones holding them, a 0 bit before a 1), and the generation is
# the key's first byte, so the mark is the first key of its generation and every key of it
# follows before any of the other: one generation is read by starting after its mark and
# stopping at the first key of the other (netctl/datapath/maps.py).  No plan holds it.
RULE_MARK = (0, 0, 0, 0, 0, 0, 0, 128, 0)


def rule_mark_key(gen: int) -> bytes:
    """The packed mark of generation ``gen`` in the rule trie."""
    return _RULE_KEY.pack(RULE_KEY_HEADER_BITS + 128, gen, 0, 0, 0, 0, 0, 0, 0, bytes(16))


def pack_u32(value: int) -> bytes:
    return _U32.pack(value)


def unpack_u32(data: bytes) -> int:
    value: int = _U32.unpack(data)[0]
    return value


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


class _RuleHeads(dict[tuple[int, ...], bytes]):
    """Packed rule-key headers of one generation, each packed once."""

    def __init__(self, gen: int):
        super().__init__()
        self.gen = gen

    def __missing__(self, head: tuple[int, ...]) -> bytes:
        packed = self[head] = _RULE_HEAD.pack(self.gen, *head)
        return packed


def pack_rule_keys(gen: int, keys: Iterable[tuple[int, ...]]) -> bytes:
    """Many rule-trie keys back to back, each as ``pack_rule_key`` packs it: a million-prefix
    set is a million keys sharing a few headers, so headers are packed once each."""
    lengths = [_U32.pack(RULE_KEY_HEADER_BITS + plen) for plen in range(129)]
    heads = _RuleHeads(gen)
    shift = _ADDR_SHIFT
    return b"".join([lengths[k[7]] + heads[k[:7]] + (k[8] << shift[k[2]]).to_bytes(16, "big")
                     for k in keys])


def pack_lpm_keys(gen: int, family: int, keys: Iterable[tuple[int, int]]) -> bytes:
    """Many LPM-trie keys ``(prefixlen, network)`` back to back, as ``pack_lpm_key``."""
    n = ADDR_BYTES[family]
    lengths = [_LPM_HEAD.pack(32 + plen, gen) for plen in range(129)]
    return b"".join([lengths[plen] + network.to_bytes(n, "big") for plen, network in keys])


def pack_u32s(values: Iterable[int]) -> bytes:
    """Many u32 back to back, little-endian (as pack_u32 each)."""
    data = array("I", values)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes()


def unpack_u32s(data: bytes) -> list[int]:
    """Many u32 back to back, little-endian (as unpack_u32 each)."""
    values = array("I", data)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def pack_classes_many(values: Iterable[tuple[int, ...]]) -> bytes:
    pack = _CLASSES.pack
    return b"".join([pack(*v) for v in values])


def unpack_rule_keys(blob: bytes, gen: int) -> list[tuple[int, ...] | None]:
    """Rule-trie keys back to back -> the plan's key tuple of each in generation ``gen``
    (None for the other's), as ``unpack_rule_key`` unpacks one: a status at 100,000 rules
    reads a million."""
    head, addr_bytes, from_bytes = RULE_KEY_HEADER_BITS, ADDR_BYTES, int.from_bytes
    return [(slot, direction, family, proto, other, sport, l4, plen - head,
             from_bytes(addr[:addr_bytes.get(family, 16)], "big")) if g == gen else None
            for plen, g, slot, direction, family, proto, other, sport, l4, addr
            in _RULE_KEY.iter_unpack(blob)]


def unpack_lpm_keys(family: int, blob: bytes, gen: int) -> list[tuple[int, int] | None]:
    """LPM-trie keys back to back -> (prefixlen, network) of each in generation ``gen``
    (None for the other's)."""
    layout = struct.Struct(f"<II{ADDR_BYTES[family]}s")
    from_bytes = int.from_bytes
    return [(plen - 32, from_bytes(network, "big")) if g == gen else None
            for plen, g, network in layout.iter_unpack(blob)]


def unpack_rules(blob: bytes) -> list[tuple[int, int]]:
    return [(action, flags) for action, flags, _ in _RULE.iter_unpack(blob)]


# ---- codecs ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Codec:
    """One layout of a map's keys or values: the C type the map is declared with in
    netctl_maps.h, its size, and for the policy maps how plan entries become its bytes.

    Keys of LPM tries carry the generation: ``pack(gen, key)``, ``unpack(data) -> (gen,
    key)``, ``pack_many(gen, keys)``, ``unpack_many(data, gen) -> [key or None, ...]``.  Array
    indexes and values: ``pack(value)``, ``unpack(data)``, ``pack_many(values)``,
    ``unpack_many(data) -> [value, ...]``; ``zero`` is the plan's value for all-zero bytes
    (what an array holds where nothing was written)."""

    ctype: str
    size: int
    pack: Callable[..., bytes] | None = None
    unpack: Callable[[bytes], Any] | None = None
    pack_many: Callable[..., bytes] | None = None
    zero: Any = None
    unpack_many: Callable[..., list[Any]] | None = None
    mark: Callable[[int], bytes] | None = None   # an LPM key's generation mark, if it has one
    mark_plan: Any = None                        # the mark's plan form, never a plan's key
    zero_bytes: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zero_bytes", bytes(self.size))

    def nonzero(self, blob: bytes) -> dict[int, Any]:
        """The entries of an array part (values back to back) that are not all zeros, by
        index, unpacked."""
        size, zero, unpack = self.size, self.zero_bytes, self.unpack
        assert unpack is not None   # a codec with a plan form unpacks
        if size == 4 and unpack is unpack_u32:
            values = array("I", blob if isinstance(blob, bytes) else bytes(blob))
            return {index: value for index, value in enumerate(values) if value}
        part = memoryview(blob)
        out: dict[int, Any] = {}
        for index in range(len(part) // size):
            raw = part[index * size:(index + 1) * size]
            if raw != zero:
                out[index] = unpack(raw.tobytes())
        return out


def _struct(name: str) -> Codec:
    """A record with no plan form (runtime maps): its type and size only."""
    return Codec(f"struct {name}", ctypes.sizeof(structs.STRUCTS[name]))


def _lpm_key(family: int) -> Codec:
    def pack(gen: int, key: tuple[int, int]) -> bytes:
        plen, network = key
        return pack_lpm_key(gen, family, plen, network)

    def unpack(data: bytes) -> tuple[int, tuple[int, int]]:
        gen, plen, network = unpack_lpm_key(data)
        return gen, (plen, network)

    def pack_many(gen: int, keys: Iterable[tuple[int, int]]) -> bytes:
        return pack_lpm_keys(gen, family, keys)

    def unpack_many(data: bytes, gen: int) -> list[tuple[int, int] | None]:
        return unpack_lpm_keys(family, data, gen)

    name = f"netctl_lpm{family}_key"
    return Codec(f"struct {name}", ctypes.sizeof(structs.STRUCTS[name]), pack, unpack,
                 pack_many, unpack_many=unpack_many)


U32 = Codec("u32", 4, pack_u32, unpack_u32, pack_u32s, zero=0, unpack_many=unpack_u32s)
U64 = Codec("u64", 8)
LPM4_KEY = _lpm_key(4)
LPM6_KEY = _lpm_key(6)
RULE_KEY = Codec("struct netctl_rule_key", ctypes.sizeof(structs.RuleKey), pack_rule_key,
                 unpack_rule_key, pack_rule_keys, unpack_many=unpack_rule_keys,
                 mark=rule_mark_key, mark_plan=RULE_MARK)
CLASSES = Codec("struct netctl_classes", ctypes.sizeof(structs.Classes), pack_classes,
                unpack_classes, pack_classes_many, zero=ZERO_CLASSES,
                unpack_many=lambda data: list(_CLASSES.iter_unpack(data)))
RULE = Codec("struct netctl_rule", ctypes.sizeof(structs.Rule), pack_rule, unpack_rule,
             lambda values: b"".join([pack_rule(v) for v in values]), zero=(0, 0),
             unpack_many=unpack_rules)
CONFIG = Codec("struct netctl_config", ctypes.sizeof(structs.Config), pack_config,
               unpack_config, lambda values: b"".join([pack_config(v) for v in values]),
               zero=(0,) * CFG_SIZE)
NEXTHOP = _struct("netctl_nexthop")
COUNTER = _struct("netctl_counter")
LOCAL_KEY = _struct("netctl_local_key")
CT_KEY = _struct("netctl_ct_key")
CT_ENTRY = _struct("netctl_ct_entry")
FLOW_KEY = _struct("netctl_flow_key")
FLOW_STAT = _struct("netctl_flow_stat")
EVENTS_CTL = _struct("netctl_events_ctl")
