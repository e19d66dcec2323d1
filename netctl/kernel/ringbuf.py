"""Read a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) from user space, by mmap.

The kernel's layout (kernel/bpf/ringbuf.c): a consumer page the reader may write (its
position, u64, at offset 0), then a read-only producer page (the producer position) followed
by the data area mapped twice in a row, so a record never needs unwrapping.  A record is an
8-byte header (u32 length with bit 31 "busy" and bit 30 "discarded", u32 page offset), the
data, padded to 8 bytes.  Positions only grow; the data offset is position & (size - 1).

Used for the datapath's events, whose map is pinned and shared by short processes
(`netctl monitor`), where bcc's reader (tied to the bcc object that created the map) cannot
be used.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Iterator

from .bpfsys import Map

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8


class RingReader:
    def __init__(self, ring: Map):
        self.ring = ring
        self.size = ring.info.max_entries
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(ring.fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(ring.fd, page + 2 * self.size, mmap.MAP_SHARED,
                                   mmap.PROT_READ, offset=page)
        self._page = page
        self._poll = select.poll()
        self._poll.register(ring.fd, select.POLLIN)
        # Start at the end: a monitor shows what happens from now on.
        self._set_consumer(self._producer_pos())

    def _producer_pos(self) -> int:
        return struct.unpack_from("<Q", self._producer, 0)[0]

    def _consumer_pos(self) -> int:
        return struct.unpack_from("<Q", self._consumer, 0)[0]

    def _set_consumer(self, pos: int) -> None:
        struct.pack_into("<Q", self._consumer, 0, pos)

    def records(self) -> Iterator[bytes]:
        """Every complete record now in the buffer (discarded ones skipped)."""
        cons = self._consumer_pos()
        prod = self._producer_pos()
        mask = self.size - 1
        while cons < prod:
            off = self._page + (cons & mask)
            length, _ = struct.unpack_from("<II", self._producer, off)
            if length & _BUSY:
                break  # still being written
            n = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                yield bytes(self._producer[off + _HDR:off + _HDR + n])
            cons += (_HDR + n + 7) & ~7
            self._set_consumer(cons)

    def wait(self, timeout_ms: int) -> bool:
        """Wait until the buffer has data (or the timeout passes)."""
        if self._consumer_pos() < self._producer_pos():
            return True
        return bool(self._poll.poll(timeout_ms))

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()
