/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The datapath's maps, pinned under NETCTL_PIN_DIR (-D flag, a string literal).
 *
 * bcc opens a map that is already pinned there and creates and pins it otherwise, so the
 * first program compiled for a datapath creates the maps and every later one (the other
 * hook, a later process) shares them.  Sizes are per generation (-D NETCTL_*_ENTRIES from
 * the compiler's Limits) times NETCTL_GENS.  Layouts: netctl_abi.h and
 * docs/classification.md.  User space declares the same maps once, in netctl/abi/maps.py
 * (MAPS, in this order); tests/unit/test_abi_headers.py compares the two.
 */
#ifndef NETCTL_MAPS_H
#define NETCTL_MAPS_H

#include "netctl_abi.h"

#ifndef NETCTL_PIN_DIR
#error "compile with -DNETCTL_PIN_DIR='\"/path\"'"
#endif

#define NETCTL_PIN(name) NETCTL_PIN_DIR "/" #name
#define NETCTL_PER_GEN(n) (NETCTL_GENS * (n))

/* Address classes: longest prefix -> class id per shape slot.  LPM tries must not be
 * preallocated (the kernel insists on BPF_F_NO_PREALLOC). */
BPF_TABLE_PINNED("lpm_trie", struct netctl_lpm4_key, struct netctl_classes, src_v4,
                 NETCTL_PER_GEN(NETCTL_SRC_V4_ENTRIES), NETCTL_PIN(src_v4), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct netctl_lpm6_key, struct netctl_classes, src_v6,
                 NETCTL_PER_GEN(NETCTL_SRC_V6_ENTRIES), NETCTL_PIN(src_v6), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct netctl_lpm4_key, struct netctl_classes, dst_v4,
                 NETCTL_PER_GEN(NETCTL_DST_V4_ENTRIES), NETCTL_PIN(dst_v4), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct netctl_lpm6_key, struct netctl_classes, dst_v6,
                 NETCTL_PER_GEN(NETCTL_DST_V6_ENTRIES), NETCTL_PIN(dst_v6), BPF_F_NO_PREALLOC);

/* Port and ICMP-type classes: value -> interval id -> class id per slot.  Two array
 * lookups replace a range match. */
BPF_TABLE_PINNED("array", u32, u32, sport_interval,
                 NETCTL_PER_GEN(NETCTL_SPORT_INTERVAL_ENTRIES), NETCTL_PIN(sport_interval));
BPF_TABLE_PINNED("array", u32, u32, dport_interval,
                 NETCTL_PER_GEN(NETCTL_DPORT_INTERVAL_ENTRIES), NETCTL_PIN(dport_interval));
BPF_TABLE_PINNED("array", u32, u32, icmp_interval,
                 NETCTL_PER_GEN(NETCTL_ICMP_INTERVAL_ENTRIES), NETCTL_PIN(icmp_interval));
BPF_TABLE_PINNED("array", u32, struct netctl_classes, sport_classes,
                 NETCTL_PER_GEN(NETCTL_SPORT_CLASSES_ENTRIES), NETCTL_PIN(sport_classes));
BPF_TABLE_PINNED("array", u32, struct netctl_classes, dport_classes,
                 NETCTL_PER_GEN(NETCTL_DPORT_CLASSES_ENTRIES), NETCTL_PIN(dport_classes));
BPF_TABLE_PINNED("array", u32, struct netctl_classes, icmp_classes,
                 NETCTL_PER_GEN(NETCTL_ICMP_CLASSES_ENTRIES), NETCTL_PIN(icmp_classes));

/* (header of classes, direct address prefix) -> first matching rule (longest match). */
BPF_TABLE_PINNED("lpm_trie", struct netctl_rule_key, u32, rule_table,
                 NETCTL_PER_GEN(NETCTL_RULE_TABLE_ENTRIES), NETCTL_PIN(rule_table),
                 BPF_F_NO_PREALLOC);

BPF_TABLE_PINNED("array", u32, struct netctl_rule, rules,
                 NETCTL_PER_GEN(NETCTL_RULES_ENTRIES), NETCTL_PIN(rules));
BPF_TABLE_PINNED("array", u32, struct netctl_config, config,
                 NETCTL_PER_GEN(NETCTL_CONFIG_ENTRIES), NETCTL_PIN(config));

/* The generation packets are judged by: one word, flipped by `netctl apply` after the
 * other generation is complete.  Bit 0 is the generation; the bits above, when not zero,
 * a deadline in seconds of the monotonic clock after which the other generation judges
 * (apply --confirm; netctl_judge reads it). */
BPF_TABLE_PINNED("array", u32, u32, active, 1, NETCTL_PIN(active));

/* Forwarding (netctl_forward.h): destination prefix -> route index, per generation; the
 * route's next hop and counters by gen * ROUTES + index; this host's addresses. */
BPF_TABLE_PINNED("lpm_trie", struct netctl_lpm4_key, u32, routes_v4,
                 NETCTL_PER_GEN(NETCTL_ROUTES_V4_ENTRIES), NETCTL_PIN(routes_v4),
                 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct netctl_lpm6_key, u32, routes_v6,
                 NETCTL_PER_GEN(NETCTL_ROUTES_V6_ENTRIES), NETCTL_PIN(routes_v6),
                 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", u32, struct netctl_nexthop, nexthops,
                 NETCTL_PER_GEN(NETCTL_NEXTHOPS_ENTRIES), NETCTL_PIN(nexthops));
BPF_TABLE_PINNED("percpu_array", u32, struct netctl_counter, route_counters,
                 NETCTL_PER_GEN(NETCTL_NEXTHOPS_ENTRIES), NETCTL_PIN(route_counters));
BPF_TABLE_PINNED("hash", struct netctl_local_key, u32, local_addrs, 4096,
                 NETCTL_PIN(local_addrs));

/* Tracked flows (netctl_conntrack.h).  Not per generation, and pinned outside the build
 * directory (NETCTL_CT_PIN, NETCTL_CT_UNCONFIRMED_PIN), so that flows survive policy
 * changes and program rebuilds.  Two tables: confirmed flows, and the smaller one of flows
 * no valid reply has confirmed yet, which a flood of unanswered flows fills instead. */
#ifndef NETCTL_CT_PIN
#error "compile with -DNETCTL_CT_PIN='\"/path\"'"
#endif
#ifndef NETCTL_CT_UNCONFIRMED_PIN
#error "compile with -DNETCTL_CT_UNCONFIRMED_PIN='\"/path\"'"
#endif
BPF_TABLE_PINNED("lru_hash", struct netctl_ct_key, struct netctl_ct_entry, conntrack,
                 NETCTL_CT_ENTRIES, NETCTL_CT_PIN);
BPF_TABLE_PINNED("lru_hash", struct netctl_ct_key, struct netctl_ct_entry,
                 conntrack_unconfirmed, NETCTL_CT_UNCONFIRMED_ENTRIES,
                 NETCTL_CT_UNCONFIRMED_PIN);

/* Per-CPU scratch space (programs run to completion on one CPU): the class vectors of the
 * packet being judged, and a copy of the header window for frames whose headers are not all
 * linear.  Pinned like every map, so a build that outlives its compiler keeps them. */
struct netctl_pkt_classes {
    struct netctl_classes src, dst, sport, dport, icmp;
};
/* The copy is NETCTL_HDR_WINDOW bytes; the slack after it keeps every read the parser can
 * make at an offset it has checked against the window inside the map value, whatever
 * pointer arithmetic the compiler reuses between two checks. */
struct netctl_window {
    __u8 b[NETCTL_HDR_WINDOW + 64];
};
BPF_TABLE_PINNED("percpu_array", u32, struct netctl_pkt_classes, netctl_scratch, 1,
                 NETCTL_PIN(netctl_scratch));
BPF_TABLE_PINNED("percpu_array", u32, struct netctl_window, netctl_window_copy, 1,
                 NETCTL_PIN(netctl_window_copy));
/* The packet being judged, as netctl_parse reads it (netctl_parse.h; l4 is a NETCTL_L4_*
 * there).  The programs keep it in per-CPU map memory, not on their stack: a field read
 * back from a map is a value the verifier does not know, so the ways through the parser
 * (VLAN tags, IPv6 extension headers, protocols) meet again in one state instead of each
 * carrying its own constants through classification, connection tracking and forwarding.
 * It costs one inlined per-CPU array lookup per packet, and divides the instructions the
 * verifier walks by six to nine (6.18: XDP 467,505 to 52,373); on 6.1, whose verifier
 * prunes less, it is what keeps XDP and tc egress under the 1,000,000 limit at all. */
struct netctl_pkt {
    __u32 len;           /* whole frame, for byte counters */
    __u8 family;         /* 4 or 6 */
    __u8 proto;          /* upper-layer protocol (last IPv6 next header) */
    __u8 fragment;       /* a non-first fragment: no transport fields */
    __u8 l4;             /* NETCTL_L4_* */
    __u16 sport;         /* host byte order */
    __u16 dport;
    __u8 icmp_type;
    __u8 icmp_code;
    __u16 icmp_id;       /* ICMP echo request/reply: the identifier (host order) */
    __u8 tcp_flags;      /* TCP: the flags byte (FIN 1, SYN 2, RST 4, ACK 16) */
    __u8 pad1;
    __u16 l3_off;        /* offset of the IP header (forwarding rewrites it) */
    __u8 vlans;          /* VLAN tags before it */
    __u8 ttl;            /* IPv4 TTL or IPv6 hop limit */
    __u8 ip_options;     /* IPv4 header longer than 20 bytes */
    __u8 pad2[1];
    union {
        struct netctl_lpm4_key v4;
        struct netctl_lpm6_key v6;
    } src, dst;
    /* For connection tracking (netctl_conntrack.h), which reads further on its own: */
    __u16 l4_off;        /* offset of the transport header (when l4 is not NONE) */
    __u16 tcp_win;       /* TCP: the window field, unscaled */
    __u32 tcp_seq;       /* TCP: sequence and acknowledgement numbers (host order) */
    __u32 tcp_ack;
    __u8 tcp_hlen;       /* TCP: header length in bytes, from the data offset field */
    __u8 pad3[3];
};
BPF_TABLE_PINNED("percpu_array", u32, struct netctl_pkt, netctl_packet, 1,
                 NETCTL_PIN(netctl_packet));
/* Connection tracking's per-packet scratch (netctl_conntrack.h, netctl_ct_prepare). */
struct netctl_ct_scratch {
    __u64 wscale;   /* an egress SYN's window scale, from netctl_ct_prepare to netctl_ct_track */
};
BPF_TABLE_PINNED("percpu_array", u32, struct netctl_ct_scratch, netctl_ct_scratch, 1,
                 NETCTL_PIN(netctl_ct_scratch));

/* The flow cache (netctl_judge.h): per-CPU LRU lists (no lock shared between CPUs); the
 * epoch of each generation, written by apply before the flip, keys what a generation's
 * policy decided, so no entry outlives the policy that made it. */
#ifndef NETCTL_FLOW_CACHE_ENTRIES
#define NETCTL_FLOW_CACHE_ENTRIES 65536
#endif
BPF_TABLE_PINNED("lru_hash", struct netctl_flow_key, u32, flow_cache,
                 NETCTL_FLOW_CACHE_ENTRIES, NETCTL_PIN(flow_cache), BPF_F_NO_COMMON_LRU);
BPF_TABLE_PINNED("array", u32, u32, flow_epoch, NETCTL_GENS, NETCTL_PIN(flow_epoch));
BPF_TABLE_PINNED("percpu_array", u32, struct netctl_flow_stat, flow_stat, 1,
                 NETCTL_PIN(flow_stat));

/* Whether anyone listens for events: `netctl monitor` holds a lease, renewed while it runs
 * (netctl_abi.h, struct netctl_events_ctl).  Nobody listening: no event is made at all. */
BPF_TABLE_PINNED("array", u32, struct netctl_events_ctl, events_ctl, 1,
                 NETCTL_PIN(events_ctl));

/* Events for `netctl monitor`: a ring buffer (bcc's BPF_RINGBUF_OUTPUT, pinned). */
struct events_table_t {
    int key;
    u32 leaf;
    int (*ringbuf_output)(void *, u64, u64);
    void *(*ringbuf_reserve)(u64);
    void (*ringbuf_discard)(void *, u64);
    void (*ringbuf_submit)(void *, u64);
    u32 max_entries;
};
__attribute__((section("maps/ringbuf:" NETCTL_PIN(events))))
struct events_table_t events = { .max_entries = NETCTL_EVENTS_BYTES };

/* Per rule (index gen * RULES + rule) and per stat slot (netctl_abi.h): packets, bytes. */
BPF_TABLE_PINNED("percpu_array", u32, struct netctl_counter, counters,
                 NETCTL_PER_GEN(NETCTL_RULES_ENTRIES), NETCTL_PIN(counters));
BPF_TABLE_PINNED("percpu_array", u32, struct netctl_counter, stats, NETCTL_STAT_MAX,
                 NETCTL_PIN(stats));

#include "netctl_perf.h"

#endif /* NETCTL_MAPS_H */
