"""ctypes mirrors of the event structs in bpf/trace/*.c, and the numbers they carry: the
tracers' ABI (imports only the standard library).

The loader passes each mirror's size to the compile (``-D<KIND>_EVENT_SIZE``) and the C
asserts it, so a field added on one side only fails the build instead of garbling events;
tests/unit/test_abi_headers.py compares every mirror's fields (names, types, array lengths)
and the constants below with the C sources as text, without root.
"""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_int32, c_uint8, c_uint16, c_uint32, c_uint64

Addr16 = c_uint8 * 16

AF_INET = 2          # NETCTL_AF_INET: an event's family
AF_INET6 = 10


class TraceHead(ctypes.Structure):
    _fields_ = [
        ("ts_ns", c_uint64),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("cpu", c_uint32),
        ("what", c_uint32),
        ("comm", c_char * 16),
    ]


class DropEvent(ctypes.Structure):
    _fields_ = [
        ("head", TraceHead),
        ("skbaddr", c_uint64),
        ("location", c_uint64),
        ("reason", c_uint32),
        ("protocol", c_uint16),
        ("has_protocol", c_uint8),
        ("pad", c_uint8),
        ("stack_id", c_int32),
        ("family", c_uint16),
        ("l4proto", c_uint8),
        ("pad2", c_uint8),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("pad3", c_uint32),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
    ]


REASON_UNKNOWN = 0xFFFFFFFF


class RetransEvent(ctypes.Structure):
    _fields_ = [
        ("head", TraceHead),
        ("skaddr", c_uint64),
        ("skbaddr", c_uint64),
        ("family", c_uint16),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("has_err", c_uint16),
        ("state", c_int32),
        ("err", c_int32),
        ("saddr", Addr16),
        ("daddr", Addr16),
    ]


CONG_STATE, CONG_PROBE = 0, 1
OLD_UNKNOWN = 0xFF


class CongEvent(ctypes.Structure):
    _fields_ = [
        ("head", TraceHead),
        ("skaddr", c_uint64),
        ("sock_cookie", c_uint64),
        ("family", c_uint16),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("state", c_uint8),
        ("old_state", c_uint8),
        ("saddr", Addr16),
        ("daddr", Addr16),
        ("snd_cwnd", c_uint32),
        ("ssthresh", c_uint32),
        ("srtt_us", c_uint32),
        ("snd_wnd", c_uint32),
        ("rcv_wnd", c_uint32),
        ("data_len", c_uint32),
        ("snd_nxt", c_uint32),
        ("snd_una", c_uint32),
    ]


SOCK_STATE, SOCK_RCVQUEUE_FULL, SOCK_EXCEED_BUF_LIMIT = 0, 1, 2
STATE_UNKNOWN = -1
RAW_MAX = 128


class SockState(ctypes.Structure):
    _fields_ = [
        ("skaddr", c_uint64),
        ("duration_ns", c_uint64),
        ("oldstate", c_int32),
        ("newstate", c_int32),
        ("family", c_uint16),
        ("protocol", c_uint16),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("saddr", Addr16),
        ("daddr", Addr16),
        ("has_duration", c_uint8),
        ("pad", c_uint8 * 7),
    ]


class _SocketBody(ctypes.Union):
    _fields_ = [("st", SockState), ("raw", c_uint8 * RAW_MAX)]


class SocketEvent(ctypes.Structure):
    _anonymous_ = ("body",)
    _fields_ = [
        ("head", TraceHead),
        ("raw_len", c_uint32),
        ("pad", c_uint32),
        ("body", _SocketBody),
    ]


# The C name of every mirror (struct <name> in bpf/trace/netctl_trace.h or <kind>.c).
EVENT_STRUCTS = {"trace_head": TraceHead, "drop_event": DropEvent,
                 "retrans_event": RetransEvent, "cong_event": CongEvent,
                 "sock_state": SockState, "socket_event": SocketEvent}
