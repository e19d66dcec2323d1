"""Plan contents <-> map bytes, one generation at a time.

A ``MapPlan`` (netctl/policy/plan.py) is generation-free; here every key or index gets the
generation added (docs/classification.md, "Atomic updates") and entries become the bytes
of netctl_abi.h.  Map I/O goes through ``RawMap``, which the kernel's maps
(``netctl.kernel.bpfsys.Map``) and ``MemoryMap`` (kernel semantics in a dict, for tests without
root) both provide.

Writing a plan is: read what the inactive generation holds (``read_generation``), diff it
against the new plan (``netctl.policy.plan.diff``), and write only the difference
(``write_diff``).  The active generation is never touched, so packets keep being judged
by it until the flip of the one-word ``active`` map.
"""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from .. import abi
from ..abi import PLAN_MAPS
from ..abi.codec import Codec
from ..errors import MapFullError
from ..kernel.bpfsys import BpfError
from ..policy.plan import ARRAY_MAPS, MAP_NAMES, MapDiff


class RawMap(Protocol):
    key_size: int
    value_size: int

    def lookup(self, key: bytes) -> bytes | None: ...
    def update(self, key: bytes, value: bytes, flags: int = 0) -> None: ...
    def delete(self, key: bytes, missing_ok: bool = True) -> bool: ...
    def keys(self) -> Iterator[bytes]: ...
    def items(self) -> Iterator[tuple[bytes, bytes]]: ...
    def update_batch(self, keys: bytes, values: bytes, count: int) -> None: ...
    def update_many(self, pairs, flags: int = 0) -> int: ...
    def delete_many(self, keys) -> int: ...
    def read_array(self, start: int = 0, count: int | None = None) -> bytes: ...
    def lookup_batches(self, chunk: int = 16384,
                       after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...


class MemoryMap:
    """A map with the kernel's semantics for the kinds netctl uses: arrays hold zeros at
    every index and refuse deletes and out-of-range indexes; hash and LPM maps refuse a new
    key when full (E2BIG).  Keys of an LPM trie are stored as given."""

    def __init__(self, kind: str, key_size: int, value_size: int, max_entries: int):
        self.kind = kind
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.data: dict[bytes, bytes] = {}

    def _index(self, key: bytes) -> int:
        index = int.from_bytes(key, "little")
        if index >= self.max_entries:
            raise BpfError(errno.E2BIG, f"index {index} out of range")
        return index

    def lookup(self, key: bytes) -> bytes | None:
        if self.kind == "array":
            self._index(key)
            return self.data.get(key, bytes(self.value_size))
        return self.data.get(key)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        assert len(key) == self.key_size and len(value) == self.value_size
        if self.kind == "array":
            self._index(key)
        elif key not in self.data and len(self.data) >= self.max_entries:
            raise BpfError(errno.E2BIG, "map full")
        self.data[key] = value

    def delete(self, key: bytes, missing_ok: bool = True) -> bool:
        if self.kind == "array":
            raise BpfError(errno.EINVAL, "arrays have no delete")
        if key not in self.data:
            if missing_ok:
                return False
            raise BpfError(errno.ENOENT, "no such key")
        del self.data[key]
        return True

    def update_many(self, pairs, flags: int = 0) -> int:
        count = 0
        for key, value in pairs:
            self.update(key, value, flags)
            count += 1
        return count

    def delete_many(self, keys) -> int:
        return sum(self.delete(key) for key in keys)

    def keys(self) -> Iterator[bytes]:
        if self.kind == "array":
            yield from (i.to_bytes(4, "little") for i in range(self.max_entries))
        else:
            yield from list(self.data)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        ks, vs = self.key_size, self.value_size
        for i in range(count):
            self.update(keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs])

    def read_array(self, start: int = 0, count: int | None = None) -> bytes:
        zero = bytes(self.value_size)
        stop = self.max_entries if count is None else start + count
        return b"".join(self.data.get(i.to_bytes(4, "little"), zero)
                        for i in range(start, stop))

    def lookup_batches(self, chunk: int = 16384,
                       after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """As the kernel lists them: an LPM trie's keys in post-order (see _post_order)."""
        items = list(self.items())
        if self.kind == "lpm_trie":
            items.sort(key=lambda item: _post_order(item[0]))
            if after is not None and after in self.data:
                items = items[[k for k, _ in items].index(after) + 1:]
        for at in range(0, len(items), chunk):
            part = items[at:at + chunk]
            yield b"".join(k for k, _ in part), b"".join(v for _, v in part)


def _post_order(key: bytes) -> str:
    """Where the kernel lists an LPM trie's key (a u32 prefix length, then the data): in
    post-order, that is a key after every longer one it holds, and of two that differ, the
    one with 0 at the first differing bit first.  The prefix's bits, then "2" (past "0" and
    "1"), sort that way."""
    plen = int.from_bytes(key[:4], "little")
    bits = bin(int.from_bytes(b"\x01" + key[4:], "big"))[3:3 + plen]
    return bits + "2"


# ---- the generation-tagged layout of every map ---------------------------------------------
# Each plan map's kind and codecs come from its declaration in netctl/abi/maps.py: an LPM
# trie's key carries the generation, an array's index is gen * stride + the plan's index.

def map_kind(name: str) -> str:
    d = abi.MAPS.get(name)
    return d.kind if d is not None else "hash"


def encode(name: str, gen: int, key: Any, value: Any,
           constants: dict[str, int]) -> tuple[bytes, bytes]:
    """One plan entry of map ``name`` as the (key, value) bytes of generation ``gen``."""
    d = PLAN_MAPS[name]
    if d.kind == "array":
        return abi.pack_u32(gen * d.per_generation(constants) + key), d.value.pack(value)
    return d.key.pack(gen, key), d.value.pack(value)


def read_generation(maps: Mapping[str, RawMap], gen: int, constants: dict[str, int],
                    names: Iterable[str] | None = None, whole: bool = False
                    ) -> dict[str, dict]:
    """What generation ``gen`` holds, in the plan's canonical form (arrays: non-zero only):
    of every plan map, or of ``names``; ``whole`` walks each trie whole (see _read_trie)."""
    out: dict[str, dict] = {}
    for name in PLAN_MAPS if names is None else names:
        d, m = PLAN_MAPS[name], maps[name]
        if d.kind == "array":
            stride = d.per_generation(constants)
            out[name] = d.value.nonzero(m.read_array(gen * stride, stride))
        else:
            out[name] = _read_trie(m, gen, d.key, d.value, whole)
    return out


def _read_trie(m: RawMap, gen: int, key: Codec, value: Codec, whole: bool = False) -> dict:
    """One generation of an LPM trie: in batches where the kernel has them for tries, each
    batch unpacked at once (a million entries in about a second, most of it the kernel's
    walk), else entry by entry.  A trie whose keys have a generation mark is read from the
    mark on, not walked whole (unless ``whole``)."""
    assert key.unpack is not None and value.unpack is not None
    contents: dict = {}
    if _TRIE_BATCHES.get("lookup") is not False:
        assert key.unpack_many is not None and value.unpack_many is not None
        try:
            if key.mark is not None and not whole:
                marked = _read_marked(m, gen, key, value)
                if marked is not None:
                    return marked
            for keys, values in m.lookup_batches():
                pairs = zip(key.unpack_many(keys, gen), value.unpack_many(values), strict=True)
                contents.update([(k, v) for k, v in pairs if k is not None])
            _TRIE_BATCHES["lookup"] = True
            contents.pop(key.mark_plan, None)
            return contents
        except BpfError as exc:
            if exc.errno not in _NO_BATCH or _TRIE_BATCHES.get("lookup"):
                raise
            _TRIE_BATCHES["lookup"] = False
            contents = {}
    for raw in list(m.keys()):
        g, canonical = key.unpack(raw)
        if g != gen:
            continue
        data = m.lookup(raw)
        if data is not None:
            contents[canonical] = value.unpack(data)
    contents.pop(key.mark_plan, None)
    return contents


def _read_marked(m: RawMap, gen: int, key: Codec, value: Codec) -> dict | None:
    """One generation of a trie read from its mark up to the first key of another
    generation (half the kernel's walk of a trie holding two), or None when the kernel did
    not start in that generation (the mark is missing: the caller walks the whole trie).
    If the kernel ever listed keys in another order, what is read would miss entries: a
    caller that compares contents reads the whole trie before calling them changed."""
    assert key.mark is not None and key.unpack_many is not None
    assert value.unpack_many is not None
    contents: dict = {}
    first = True
    for keys, values in m.lookup_batches(after=key.mark(gen)):
        unpacked = key.unpack_many(keys, gen)
        if first and unpacked[0] is None:
            return None
        first = False
        pairs = zip(unpacked, value.unpack_many(values), strict=True)
        contents.update([(k, v) for k, v in pairs if k is not None])
        if None in unpacked:   # past the generation: its keys come in one run
            break
    _TRIE_BATCHES["lookup"] = True
    return contents


def write_marks(maps: Mapping[str, RawMap], gen: int) -> None:
    """(Re)write generation ``gen``'s mark in every trie whose keys have one: the compiler
    leaves a generation room for it (it is never a packet's key, so it judges nothing)."""
    for name, d in PLAN_MAPS.items():
        if d.key.mark is not None:
            assert d.value is not None
            try:
                maps[name].update(d.key.mark(gen), d.value.zero_bytes)
            except BpfError as exc:   # a map a netctl without marks filled: read it whole
                if exc.errno != errno.E2BIG:
                    raise


def contents_digests(contents: Mapping[str, Mapping[Any, Any]],
                     like: Mapping[str, str] | None = None,
                     read_back: bool = False) -> dict[str, str]:
    """Per map, a fingerprint of one generation's contents in canonical form, whatever the
    order they were written or read in: what status compares to tell a map changed by hand
    from the one netctl applied (a plan's ``maps()`` and ``read_generation`` agree on it).

    The fingerprint is the number of entries and the sum of the entries' hashes (ints and
    tuples of ints hash the same in every process), so it needs no sort: 0.1 s at a million
    entries, where sorting their text took seconds.  ``like`` are fingerprints recorded
    earlier: one of the older, sorted kind is computed that way again to compare with it.
    Contents ``read_back`` by read_generation hold no zero array entries to leave out."""
    out = {}
    for name in MAP_NAMES:
        items = contents.get(name, {}).items()
        if name in ARRAY_MAPS and not read_back:   # zero entries are never read back
            items = [(k, v) for k, v in items if not _all_zero(v)]
        if like is not None and not like.get(name, _DIGEST_TAG).startswith(_DIGEST_TAG):
            lines = sorted(repr(item) for item in items)
            out[name] = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]
            continue
        total = sum(map(hash, items)) & 0xFFFFFFFFFFFFFFFF
        out[name] = f"{_DIGEST_TAG}{len(items):x}:{total:016x}"
    return out


_DIGEST_TAG = "h1:"


def _all_zero(value: Any) -> bool:
    if isinstance(value, int):
        return value == 0
    if isinstance(value, (tuple, list)):
        return all(_all_zero(v) for v in value)
    return False


def write_diff(maps: Mapping[str, RawMap], name: str, gen: int, change: MapDiff,
               constants: dict[str, int]) -> None:
    """Apply one map's diff to generation ``gen``, which no packet reads: removed entries
    first (arrays: zeros), so that a map filled to capacity by both generations has room for
    the additions, then added and changed ones (in batches where the map type has them)."""
    m = maps[name]
    if change.changed:
        writes = dict(change.added)
        writes.update((k, new) for k, (_, new) in change.changed.items())
    else:
        writes = change.added
    d = PLAN_MAPS[name]
    try:
        if d.kind == "lpm_trie":
            pack_key = d.key.pack
            m.delete_many(pack_key(gen, k) for k in change.removed)
            # Packed back to back in one pass each (a million-prefix set is a million
            # rule-trie entries: one ``encode`` call per entry would cost seconds).
            if writes and not _batch_trie(m, d.key.pack_many(gen, writes),
                                          d.value.pack_many(writes.values()), len(writes)):
                pack_value = d.value.pack
                m.update_many((pack_key(gen, k), pack_value(v)) for k, v in writes.items())
            return
        # An array: removed entries become zeros.
        base = gen * d.per_generation(constants)
        indexes = [base + k for k in writes]
        indexes += [base + k for k in change.removed]
        values = d.value.pack_many(writes.values()) + d.value.zero_bytes * len(change.removed)
        _batch_blobs(m, abi.pack_u32s(indexes), values, len(indexes))
    except BpfError as exc:
        if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
            raise MapFullError(f"{name}: the kernel refused another entry ({exc.strerror}); "
                               f"raise the capacity or shrink the policy") from None
        raise


_BATCH = 8192
# Whether the running kernel has batch operations on LPM tries (6.18 has them; older kernels
# refuse with EINVAL or ENOTSUPP): tried once per process, then one syscall per entry.
_TRIE_BATCHES: dict[str, bool] = {}
_NO_BATCH = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524)   # 524: the kernel's ENOTSUPP


def _batch_trie(m: RawMap, keys: bytes, values: bytes, count: int) -> bool:
    """Write an LPM trie's entries (packed back to back) in batches; False (nothing
    written) where the kernel has no batch operations on tries."""
    if not count:
        return True
    if _TRIE_BATCHES.get("update") is False:
        return False
    try:
        _batch_blobs(m, keys, values, count)
    except BpfError as exc:
        if exc.errno not in _NO_BATCH or _TRIE_BATCHES.get("update"):
            raise
        _TRIE_BATCHES["update"] = False
        return False
    _TRIE_BATCHES["update"] = True
    return True


def _batch_blobs(m: RawMap, keys: bytes, values: bytes, count: int) -> None:
    """Write ``count`` entries packed back to back, ``_BATCH`` to a syscall."""
    if not count:
        return
    ks, vs = len(keys) // count, len(values) // count
    kview, vview = memoryview(keys), memoryview(values)
    for start in range(0, count, _BATCH):
        n = min(_BATCH, count - start)
        m.update_batch(kview[start * ks:(start + n) * ks].tobytes(),
                       vview[start * vs:(start + n) * vs].tobytes(), n)


def read_active_word(maps: Mapping[str, RawMap]) -> tuple[int, int]:
    """(the generation flipped to, the confirmation deadline in monotonic seconds or 0)."""
    value = maps["active"].lookup(abi.pack_u32(0))
    word = abi.unpack_u32(value) if value else 0
    return word & 1, word >> 1


def monotonic_seconds() -> float:
    """The clock the programs read for a confirmation deadline (bpf_ktime_get_coarse_ns:
    the monotonic clock, a few milliseconds coarser; deadlines are whole seconds)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def read_active(maps: Mapping[str, RawMap]) -> int:
    """The generation packets are judged by now: the one flipped to, or, past a
    confirmation deadline, the one before (as the programs decide)."""
    gen, deadline = read_active_word(maps)
    return gen ^ 1 if deadline and monotonic_seconds() >= deadline else gen


def set_active(maps: Mapping[str, RawMap], gen: int, deadline: int = 0) -> None:
    """Flip to ``gen``; with ``deadline`` (monotonic seconds), only until then."""
    if not 0 <= deadline < 1 << 31:
        raise ValueError(f"deadline {deadline} out of range")
    maps["active"].update(abi.pack_u32(0), abi.pack_u32(gen | deadline << 1))


def memory_maps(constants: dict[str, int]) -> dict[str, MemoryMap]:
    """In-memory maps shaped like the datapath's (for tests without root)."""
    out: dict[str, MemoryMap] = {}
    for name, d in PLAN_MAPS.items():
        out[name] = MemoryMap(d.kind, d.key.size, d.value.size,
                              abi.GENS * d.per_generation(constants))
    out["active"] = MemoryMap("array", 4, 4, 1)
    return out
