"""The user-space side of bpf/include/netctl_abi.h and netctl_maps.h: the ground floor.

Everything the programs and user space must agree on lives here, and this package imports
nothing from the rest of netctl (only the standard library), so the compiler, the datapath
and the tools all build on it:

``constants``  every #define and enum of netctl_abi.h (config positions, field bits, stat
               slots, drop reasons, conntrack states...)
``structs``    ctypes mirrors of its structs
``codec``      plan entries <-> map bytes, one ``Codec`` per key or value layout
``maps``       ``MAPS``: every map, declared once (kind, codecs, capacity, role)
``records``    the runtime records: counters, conntrack entries, next hops, events

tests/bpf/test_abi.py compiles the headers with bcc and compares sizes and offsets;
tests/unit/test_abi_headers.py compares constants, struct fields and map declarations with
the headers' text, without root.  Everything is re-exported here (``abi.pack_u32``,
``abi.STAT_MAX``, ``abi.MAPS``...).
"""

from .codec import *  # noqa: F403
from .constants import *  # noqa: F403
from .maps import *  # noqa: F403
from .records import *  # noqa: F403
from .structs import *  # noqa: F403
