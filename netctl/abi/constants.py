"""Every number the programs and user space share: bpf/include/netctl_abi.h's #defines and
enums, under the same names without the ``NETCTL_`` prefix.

tests/unit/test_abi_headers.py reads the header as text and checks every numeric #define
and enum member there against this module (and the other way round for the families of
names below), so a number changed on one side only fails without root.  Numbers here are a
stable interface: never renumber a drop reason or a stat slot, only append.
"""

from __future__ import annotations

import enum

GENS = 2                # generations every policy map holds (NETCTL_GENS)

# ---- the compiler's layout (passed to the programs as -D or #defined in the header) ----

MAX_SHAPES = 8          # shape slots; every class vector has this many u32 entries

# Field bits of a shape mask.
FIELD_SRC = 1
FIELD_DST = 2
FIELD_PROTO = 4
FIELD_SPORT = 8
FIELD_DPORT = 16
FIELD_ICMP = 32
L4_FIELDS = FIELD_SPORT | FIELD_DPORT | FIELD_ICMP

ACTION_ACCEPT = 0
ACTION_DROP = 1
FLAG_LOG = 1

DIR_INGRESS = 0
DIR_EGRESS = 1

PORT_INDEX = 65536                  # interval index stride of a port slot
ICMP_INDEX = 65536                  # ... of an icmp slot: type << 8 | code
PORT_SLOTS = {6: 0, 17: 1}          # protocol -> port slot (tcp, udp)
ICMP_SLOTS = {4: 0, 6: 1}           # family -> icmp slot (ICMP proto 1, ICMPv6 proto 58)
PORT_INDEX_SIZE = len(PORT_SLOTS) * PORT_INDEX   # entries of a port interval array, per gen
ICMP_INDEX_SIZE = len(ICMP_SLOTS) * ICMP_INDEX

# Positions in the config entry.
CFG_DEFAULT_INGRESS = 0   # ACTION_*
CFG_DEFAULT_EGRESS = 1
CFG_ALLOW_NDP = 2         # 0/1
CFG_SLOTS_INGRESS = 3     # bitmap of slots that hold ingress rules
CFG_SLOTS_EGRESS = 4
CFG_SHAPES = 5            # CFG_SHAPES + slot: that slot's shape mask
# A slot is in use when a direction's bitmap has it.  Its mask may be 0: the shape of rules
# that give no field at all (they match every IP packet of their direction).
CFG_DIRECT_DST = CFG_SHAPES + MAX_SHAPES   # bitmap: slots whose rule trie is keyed by dst
CFG_CLASSIFY = CFG_DIRECT_DST + 1          # CLASSIFY_*: which address class tries to read
CFG_STATEFUL = CFG_CLASSIFY + 1           # 0/1: connection tracking on
CFG_CT_TCP_ESTABLISHED = CFG_STATEFUL + 1  # idle timeouts, seconds
CFG_CT_TCP_CLOSING = CFG_STATEFUL + 2
CFG_CT_UDP = CFG_STATEFUL + 3
CFG_CT_ICMP = CFG_STATEFUL + 4
CFG_ROUTES = CFG_CT_ICMP + 1               # number of routes (0: no forwarding)
CFG_EVENT_SAMPLE = CFG_ROUTES + 1          # events: one in this many goes to monitor
CFG_CT_TCP_UNCONFIRMED = CFG_EVENT_SAMPLE + 1  # idle timeout of TCP before its handshake
CFG_FLOW_CACHE = CFG_CT_TCP_UNCONFIRMED + 1   # FLOW_CACHE_*
CFG_DIRECT_PORT = CFG_FLOW_CACHE + 1          # bitmap: slots whose rule trie is keyed by dport
CFG_SIZE = CFG_DIRECT_PORT + 1                # words of struct netctl_config (-D)
CFG_WORDS = CFG_SIZE

FLOW_CACHE_OFF = 0
FLOW_CACHE_AUTO = 1       # on, and bypassed while it does not pay
FLOW_CACHE_ON = 2         # on, never bypassed
FLOW_CACHE_MODES = {"off": FLOW_CACHE_OFF, "auto": FLOW_CACHE_AUTO, "on": FLOW_CACHE_ON}
FLOW_WINDOW = 1024        # auto mode: lookups per verdict on whether the cache pays
FLOW_MIN_HIT_SHARE = 4    # ... it pays when at least one in this many hits
FLOW_BYPASS = 65536       # ... else it is bypassed for this many packets
FLOW_CACHE_ENTRIES = 65536  # flow cache entries (per CPU), unless -D says otherwise

# A slot's directly looked-up field: the destination port when its CFG_DIRECT_PORT bit is set
# (only for shapes with dport and at most one address field), else dst when its
# CFG_DIRECT_DST bit is set (and the shape has dst), else src when the shape has src, else
# none.  An address field that is not direct is looked up as a class.  A port goes into the
# key where an address would, big-endian in its first two bytes (a prefix of at most 16).
CLASSIFY_SRC = 1
CLASSIFY_DST = 2
RULE_KEY_HEADER_BITS = 160  # gen, slot, direction, family, proto, pad, three class ids

ZERO_CLASSES: tuple[int, ...] = (0,) * MAX_SHAPES

# The -D constants fixed by this ABI (the capacities come from the compiler's Limits).
BUILD_DEFINES = {"NETCTL_MAX_SHAPES": MAX_SHAPES, "NETCTL_CFG_SIZE": CFG_SIZE}

# ---- the parser -------------------------------------------------------------------------

MAX_EXT_HDRS = 6
MAX_VLAN = 2
HDR_WINDOW = 512

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)
# IPv6 extension headers the datapath walks: hop-by-hop, routing, fragment, destination
# options.  Anything else (AH, ESP, no-next-header, mobility...) is the upper-layer protocol.
IPV6_EXT_HDRS = frozenset({0, 43, 44, 60})
IPV6_FRAGMENT = 44


class DropReason(enum.IntEnum):
    """enum netctl_drop.  POLICY_* are counted per rule/default, never in ``stats``."""

    NONE = 0
    POLICY_RULE = 1
    POLICY_DEFAULT = 2
    TRUNC_L2 = 3
    VLAN_DEPTH = 4
    BAD_IPV4 = 5
    TRUNC_IPV4 = 6
    BAD_IPV6 = 7
    TRUNC_IPV6 = 8
    EXT_LIMIT = 9
    TRUNC_L4 = 10
    HDR_TOO_LONG = 11

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def description(self) -> str:
        return _DROP_TEXT[self]


_DROP_TEXT = {
    DropReason.NONE: "not dropped",
    DropReason.POLICY_RULE: "dropped by a rule",
    DropReason.POLICY_DEFAULT: "dropped by the default action",
    DropReason.TRUNC_L2: "frame ends inside its Ethernet or VLAN header",
    DropReason.VLAN_DEPTH: f"more than {MAX_VLAN} VLAN tags",
    DropReason.BAD_IPV4: "IPv4 header with a wrong version or IHL below 5",
    DropReason.TRUNC_IPV4: "frame ends inside the IPv4 header or its options",
    DropReason.BAD_IPV6: "IPv6 header with a wrong version",
    DropReason.TRUNC_IPV6: "frame ends inside the IPv6 header or an extension header",
    DropReason.EXT_LIMIT: f"more than {MAX_EXT_HDRS} IPv6 extension headers",
    DropReason.TRUNC_L4: "frame ends inside its TCP, UDP or ICMP header",
    DropReason.HDR_TOO_LONG: f"headers reach past the frame's first {HDR_WINDOW} bytes",
}

# ---- stat slots (the per-CPU `stats` array) ---------------------------------------------

DROP_MAX = 32
STAT_NON_IP = 32
STAT_NDP = 33
STAT_DEFAULT = 34            # + direction * 2 + action
STAT_NO_POLICY = 38
STAT_CT_REPLY = 39           # a reply to a tracked flow, accepted before the rules
STAT_CT_NEW = 40             # a flow this host started: entry created
STAT_CT_EXPIRED = 41         # a stale entry met by a packet: removed
STAT_FWD_LOCAL = 42         # forwarding: to a local address, left to the kernel
STAT_FWD_TTL = 43           # forwarding: TTL/hop limit would expire, left to the kernel
STAT_FWD_OPTIONS = 44       # forwarding: IPv4 options or VLAN tags, left to the kernel
STAT_FWD_UNRESOLVED = 45    # forwarding (XDP): next hop's MAC unknown, left to the kernel
STAT_EVENTS = 46            # events written to the ring buffer
STAT_EVENTS_LOST = 47       # events a full ring buffer refused
STAT_EVENTS_SAMPLED_OUT = 48  # events left out by log_sample
STAT_CT_RELATED = 49         # an ICMP error about a tracked flow, accepted before the rules
STAT_CT_INVALID = 50         # a tracked flow's packet refused as a reply: on to the rules
STAT_CT_CONFIRMED = 51       # an unconfirmed entry confirmed by a reply: moved to conntrack
STAT_CT_UNCONFIRMED_EXPIRED = 52  # a stale unconfirmed entry met by a packet: removed
STAT_FWD_NOT_UNICAST = 53    # forwarding: multicast, broadcast or link-local, left to the kernel
STAT_FLOW_HIT = 54           # classified from the flow cache
STAT_FLOW_MISS = 55          # classified by the lookups (and cached)
STAT_MAX = 56


def stat_default(direction: int, action: int) -> int:
    return STAT_DEFAULT + direction * 2 + action


# ---- events ------------------------------------------------------------------------------

HOOK_XDP = 0
HOOK_TC = 1
HOOK_NAMES = {HOOK_XDP: "xdp", HOOK_TC: "tc"}
EVENTS_BYTES = 256 * 1024

# ---- connection tracking -----------------------------------------------------------------

CT_NEW = 0                # no valid reply yet (TCP: handshake not complete)
CT_ESTABLISHED = 1        # a valid reply came
CT_CLOSING = 2            # TCP: a FIN or RST seen either way
CT_STATES = {CT_NEW: "new", CT_ESTABLISHED: "established", CT_CLOSING: "closing"}
# struct netctl_ct_entry flags: how this host's side of a TCP flow was first seen.
CT_F_SYN = 1
CT_F_SYNACK = 2
CT_F_PICKUP = 4
CT_F_ACKED = 8
CT_MAX_WSCALE = 14
CT_OPENED_BY = {CT_F_SYN: "syn", CT_F_SYNACK: "syn-ack", CT_F_PICKUP: "mid-stream"}
# The conntrack tables' layout: part of their pin names, so that programs built for a new
# layout never open a table pinned with an old one.
CT_LAYOUT = 2
