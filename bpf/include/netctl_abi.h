/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* netctl ABI: the one header shared by the BPF programs and user space.
 *
 * Mirrored field by field in netctl/abi/ (constants.py, structs.py): without root,
 * tests/unit/test_abi_headers.py compares the two as text; tests/bpf/test_abi.py compiles
 * this header with bcc and checks every size and offset against the mirror.  Numbers here
 * are a stable interface: never renumber a drop reason or a stat slot, only append.
 *
 * Capacities come from the compiler's Limits as -D flags (NETCTL_*_ENTRIES, per
 * generation); every map that holds policy data has room for NETCTL_GENS generations, and
 * the packet's generation (read once from `active`) is part of every key or index, so a
 * packet is judged wholly by one policy while the other is rewritten.
 */
#ifndef NETCTL_ABI_H
#define NETCTL_ABI_H

#ifndef NETCTL_MAX_SHAPES
#error "compile with -DNETCTL_MAX_SHAPES=... (netctl passes the compiler's constants)"
#endif

#define NETCTL_GENS 2

/* Field bits of a shape mask (FIELD_* in netctl/abi/constants.py). */
#define NETCTL_FIELD_SRC 1
#define NETCTL_FIELD_DST 2
#define NETCTL_FIELD_PROTO 4
#define NETCTL_FIELD_SPORT 8
#define NETCTL_FIELD_DPORT 16
#define NETCTL_FIELD_ICMP 32

#define NETCTL_ACTION_ACCEPT 0
#define NETCTL_ACTION_DROP 1
#define NETCTL_FLAG_LOG 1

#define NETCTL_DIR_INGRESS 0
#define NETCTL_DIR_EGRESS 1

/* Positions in a generation's config words. */
#define NETCTL_CFG_DEFAULT_INGRESS 0
#define NETCTL_CFG_DEFAULT_EGRESS 1
#define NETCTL_CFG_ALLOW_NDP 2
#define NETCTL_CFG_SLOTS_INGRESS 3
#define NETCTL_CFG_SLOTS_EGRESS 4
#define NETCTL_CFG_SHAPES 5
#define NETCTL_CFG_DIRECT_DST (NETCTL_CFG_SHAPES + NETCTL_MAX_SHAPES)
#define NETCTL_CFG_CLASSIFY (NETCTL_CFG_DIRECT_DST + 1)
#define NETCTL_CLASSIFY_SRC 1
#define NETCTL_CLASSIFY_DST 2
/* Connection tracking (stateful: true): on/off, then idle timeouts in seconds. */
#define NETCTL_CFG_STATEFUL (NETCTL_CFG_CLASSIFY + 1)
#define NETCTL_CFG_CT_TCP_ESTABLISHED (NETCTL_CFG_STATEFUL + 1)
#define NETCTL_CFG_CT_TCP_CLOSING (NETCTL_CFG_STATEFUL + 2)
#define NETCTL_CFG_CT_UDP (NETCTL_CFG_STATEFUL + 3)
#define NETCTL_CFG_CT_ICMP (NETCTL_CFG_STATEFUL + 4)
/* Forwarding (routes:): the number of routes (0: none, nothing is forwarded). */
#define NETCTL_CFG_ROUTES (NETCTL_CFG_CT_ICMP + 1)
/* Events (policy drops, log: true matches): one in this many goes to the ring buffer. */
#define NETCTL_CFG_EVENT_SAMPLE (NETCTL_CFG_ROUTES + 1)
/* Connection tracking: idle timeout (seconds) of TCP before its handshake completed. */
#define NETCTL_CFG_CT_TCP_UNCONFIRMED (NETCTL_CFG_EVENT_SAMPLE + 1)
/* The flow cache (netctl_judge.h): NETCTL_FLOW_CACHE_* */
#define NETCTL_CFG_FLOW_CACHE (NETCTL_CFG_CT_TCP_UNCONFIRMED + 1)
#define NETCTL_FLOW_CACHE_OFF 0
#define NETCTL_FLOW_CACHE_AUTO 1     /* on, and bypassed while it does not pay */
#define NETCTL_FLOW_CACHE_ON 2       /* on, never bypassed */
/* Bitmap: slots whose rule trie is keyed by the destination port (big-endian, in the first
 * two bytes of the key's address) rather than by an address.  Read only by programs built
 * with -DNETCTL_DIRECT_PORT=1, which the compiler asks for when a plan has such a slot:
 * the others are verified and run without that code. */
#define NETCTL_CFG_DIRECT_PORT (NETCTL_CFG_FLOW_CACHE + 1)

#define NETCTL_PORT_INDEX 65536    /* port slot stride: tcp 0, udp 1 */
#define NETCTL_ICMP_INDEX 65536    /* icmp slot stride: ICMP 0, ICMPv6 1; type << 8 | code */

/* IPv6 extension headers walked before giving up (more: NETCTL_DROP_EXT_LIMIT). */
#define NETCTL_MAX_EXT_HDRS 6
/* VLAN tags skipped (a third: NETCTL_DROP_VLAN_DEPTH). */
#define NETCTL_MAX_VLAN 2
/* The headers the parser reads must lie in the frame's first this many bytes. */
#define NETCTL_HDR_WINDOW 512

/* Why the datapath dropped a packet that no rule judged.  Policy drops are counted per rule
 * and per default; reasons 1 and 2 name them in user space and are never counted here. */
enum netctl_drop {
    NETCTL_DROP_NONE = 0,
    NETCTL_DROP_POLICY_RULE = 1,
    NETCTL_DROP_POLICY_DEFAULT = 2,
    NETCTL_DROP_TRUNC_L2 = 3,     /* frame ends inside its Ethernet or VLAN header */
    NETCTL_DROP_VLAN_DEPTH = 4,   /* more than NETCTL_MAX_VLAN VLAN tags */
    NETCTL_DROP_BAD_IPV4 = 5,     /* version is not 4, or IHL < 5 */
    NETCTL_DROP_TRUNC_IPV4 = 6,   /* frame ends inside the IPv4 header or its options */
    NETCTL_DROP_BAD_IPV6 = 7,     /* version is not 6 */
    NETCTL_DROP_TRUNC_IPV6 = 8,   /* frame ends inside the IPv6 header or an extension */
    NETCTL_DROP_EXT_LIMIT = 9,    /* more than NETCTL_MAX_EXT_HDRS extension headers */
    NETCTL_DROP_TRUNC_L4 = 10,    /* frame ends inside the TCP, UDP or ICMP header */
    NETCTL_DROP_HDR_TOO_LONG = 11, /* headers reach past the first NETCTL_HDR_WINDOW bytes */
    NETCTL_DROP_MAX = 32,
};

/* Slots of the per-CPU `stats` array: drop reasons 0..31, then verdicts no rule gave. */
#define NETCTL_STAT_NON_IP 32           /* not IPv4/IPv6 (ARP...): passed */
#define NETCTL_STAT_NDP 33              /* ICMPv6 neighbour discovery: accepted */
#define NETCTL_STAT_DEFAULT 34          /* + direction * 2 + action */
#define NETCTL_STAT_NO_POLICY 38        /* no generation active yet: passed */
#define NETCTL_STAT_CT_REPLY 39         /* a reply to a tracked flow: accepted, no rules */
#define NETCTL_STAT_CT_NEW 40           /* a flow this host started: entry created */
#define NETCTL_STAT_CT_EXPIRED 41       /* a stale entry met by a packet: removed */
#define NETCTL_STAT_FWD_LOCAL 42        /* to a local address: left to the kernel */
#define NETCTL_STAT_FWD_TTL 43          /* TTL/hop limit would expire: left to the kernel */
#define NETCTL_STAT_FWD_OPTIONS 44      /* IPv4 options or VLAN tags: left to the kernel */
#define NETCTL_STAT_FWD_UNRESOLVED 45   /* XDP: next hop's MAC unknown: left to the kernel */
#define NETCTL_STAT_EVENTS 46           /* events written to the ring buffer */
#define NETCTL_STAT_EVENTS_LOST 47      /* events the full ring buffer refused */
#define NETCTL_STAT_EVENTS_SAMPLED_OUT 48 /* events left out by sampling */
#define NETCTL_STAT_CT_RELATED 49       /* an ICMP error about a tracked flow: accepted */
#define NETCTL_STAT_CT_INVALID 50       /* a tracked flow's packet refused as a reply (a
                                         * RST/FIN outside the window, a handshake reply
                                         * acknowledging nothing sent): on to the rules */
#define NETCTL_STAT_CT_CONFIRMED 51     /* an unconfirmed entry confirmed by a reply: moved
                                         * to the table of confirmed flows */
#define NETCTL_STAT_CT_UNCONFIRMED_EXPIRED 52 /* a stale unconfirmed entry met: removed */
#define NETCTL_STAT_FWD_NOT_UNICAST 53  /* multicast, broadcast, link-local: left to the kernel */
#define NETCTL_STAT_FLOW_HIT 54         /* classified from the flow cache */
#define NETCTL_STAT_FLOW_MISS 55        /* classified by the lookups (and cached) */
#define NETCTL_STAT_MAX 56

struct netctl_lpm4_key {
    __u32 prefixlen;   /* 32 (the generation) + the address prefix length */
    __u32 gen;
    __u8 addr[4];
};

struct netctl_lpm6_key {
    __u32 prefixlen;
    __u32 gen;
    __u8 addr[16];
};

struct netctl_classes {
    __u32 cls[NETCTL_MAX_SHAPES];   /* class id per shape slot; 0 = no rule of that slot */
};

/* The rule trie's key: a header matched in full, then the slot's directly looked-up field:
 * an address (IPv4 in the first 4 bytes) or, in a NETCTL_CFG_DIRECT_PORT slot, the
 * destination port (big-endian, first 2 bytes).  prefixlen = NETCTL_RULE_KEY_HEADER_BITS +
 * that field's prefix length. */
struct netctl_rule_key {
    __u32 prefixlen;
    __u8 gen;
    __u8 slot;
    __u8 direction;
    __u8 family;      /* 4 or 6 */
    __u8 proto;       /* 0 unless the slot's shape has NETCTL_FIELD_PROTO */
    __u8 pad[3];
    __u32 addr_cls;   /* class of the address field that is not direct, if the shape has one */
    __u32 sport_cls;
    __u32 l4_cls;     /* dport class (0 when dport is direct), or ICMP type class */
    __u8 addr[16];
};

#define NETCTL_RULE_KEY_HEADER_BITS 160

struct netctl_rule {
    __u8 action;
    __u8 flags;
    __u16 pad;
};

struct netctl_config {
    __u32 word[NETCTL_CFG_SIZE];
};

/* Connection tracking: an entry is keyed by the tuple its *replies* carry (remote address
 * and port as source, this host's as destination), so an ingress packet looks itself up as
 * it is.  ICMP echo: sport is the echo identifier, dport 0. */
struct netctl_ct_key {
    __u8 family;
    __u8 proto;
    __u16 sport;      /* host byte order */
    __u16 dport;
    __u16 pad;
    __u8 saddr[16];   /* IPv4 in the first 4 bytes */
    __u8 daddr[16];
};

#define NETCTL_CT_NEW 0           /* no valid reply yet (TCP: handshake not complete) */
#define NETCTL_CT_ESTABLISHED 1   /* a valid reply came */
#define NETCTL_CT_CLOSING 2       /* TCP: a FIN or RST seen either way */

/* How this host's side of a TCP flow was first seen (netctl_ct_entry.flags). */
#define NETCTL_CT_F_SYN 1         /* it sent the SYN: the window scale is known */
#define NETCTL_CT_F_SYNACK 2      /* it sent a SYN-ACK: the window scale is known */
#define NETCTL_CT_F_PICKUP 4      /* mid-stream: window scale assumed NETCTL_CT_MAX_WSCALE */
#define NETCTL_CT_F_ACKED 8       /* it has sent an ACK: our_ack, our_maxend are set */
#define NETCTL_CT_MAX_WSCALE 14

/* A tracked flow.  Confirmed flows (a valid reply seen) live in `conntrack`, flows still
 * waiting for one in `conntrack_unconfirmed`, a smaller table: a flood of unanswered flows
 * can only push out other unanswered flows.  For TCP, the entry keeps what this host sent,
 * enough to tell whether an incoming RST or FIN lies in the window it advertised (sequence
 * numbers modulo 2^32, host byte order). */
struct netctl_ct_entry {
    __u64 created_ns;    /* bpf_ktime_get_ns() */
    __u64 seen_ns;       /* last packet either way */
    __u32 packets_out;
    __u32 packets_in;
    __u8 state;          /* NETCTL_CT_* */
    __u8 flags;          /* NETCTL_CT_F_* */
    __u8 wscale;         /* this host's window scale (shift) */
    __u8 pad[5];
    __u32 our_start;     /* sequence number of the first segment seen (the ISN after a SYN) */
    __u32 our_end;       /* highest sequence number sent, plus its length (SYN, FIN: 1) */
    __u32 our_ack;       /* highest acknowledgement sent: what the peer sends next */
    __u32 our_maxwin;    /* largest window advertised, scaled */
    __u32 our_maxend;    /* highest our_ack + window advertised: the receive window's end */
    __u32 pad2;
};

/* Where a route's packets go: the egress interface, the next hop's address (for the tc
 * path, which lets the kernel's neighbour table fill the MACs) and, for the XDP path, the
 * MACs read from the neighbour table at apply time. */
struct netctl_nexthop {
    __u32 ifindex;
    __u8 family;
    __u8 resolved;       /* the MACs below are known */
    __u8 smac[6];
    __u8 dmac[6];
    __u8 judge_egress;   /* XDP: judge the egress rules here (the redirect skips tc egress) */
    __u8 pad;
    __u8 via[16];        /* IPv4 in the first 4 bytes */
};

/* This host's own addresses: packets to them are delivered, never forwarded. */
struct netctl_local_key {
    __u8 family;
    __u8 pad[3];
    __u8 addr[16];
};

/* What `netctl monitor` receives from the datapath: a packet a rule or default dropped, a
 * malformed one, or a match of a rule with log: true. */
struct netctl_event {
    __u64 ts_ns;         /* bpf_ktime_get_ns() */
    __u32 ifindex;
    __u32 rule;          /* rule index in generation `gen`, or 0xffffffff */
    __u32 len;           /* frame length */
    __u8 direction;      /* NETCTL_DIR_* */
    __u8 hook;           /* NETCTL_HOOK_* */
    __u8 drop;           /* 1: dropped */
    __u8 reason;         /* enum netctl_drop */
    __u8 family;         /* 4, 6, or 0 when the frame was not parsed that far */
    __u8 proto;
    __u16 sport;
    __u16 dport;
    __u8 icmp_type;
    __u8 gen;
    __u8 saddr[16];
    __u8 daddr[16];
};

/* The flow cache: what classification decided for a flow, valid for one apply (`epoch`).
 * Ports: TCP/UDP source and destination; ICMP: 0 and type << 8 | code. */
struct netctl_flow_key {
    __u32 epoch;
    __u8 direction;
    __u8 family;
    __u8 proto;
    __u8 fragment;
    __u16 sport;
    __u16 dport;
    __u8 saddr[16];   /* IPv4 in the first 4 bytes */
    __u8 daddr[16];
};

/* Per CPU: whether the cache pays.  Every NETCTL_FLOW_WINDOW lookups, a hit rate below one
 * in NETCTL_FLOW_MIN_HIT_SHARE turns it off for NETCTL_FLOW_BYPASS packets (auto mode). */
struct netctl_flow_stat {
    __u32 lookups;
    __u32 hits;
    __u32 bypass;
    __u32 pending;                /* scratch: the mode of a miss to insert, or 0 */
    struct netctl_flow_key key;   /* scratch: the flow being looked up */
};
#define NETCTL_FLOW_WINDOW 1024
#define NETCTL_FLOW_MIN_HIT_SHARE 4
#define NETCTL_FLOW_BYPASS 65536

/* The listeners' lease on events: until this CLOCK_MONOTONIC_COARSE time (ns) the datapath
 * sends them (0: nobody listens). */
struct netctl_events_ctl {
    __u64 until_ns;
};

#define NETCTL_HOOK_XDP 0
#define NETCTL_HOOK_TC 1
#define NETCTL_EVENTS_BYTES (256 * 1024)

struct netctl_counter {
    __u64 packets;
    __u64 bytes;
};

#endif /* NETCTL_ABI_H */
