/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for `stateful: true`: flows this host sends (seen at tc egress) are
 * remembered in an LRU hash, and their replies are accepted at ingress before any rule.
 *
 * An entry is keyed by the tuple of its replies, so ingress looks a packet up as it is.
 * Tracked: TCP (any outgoing segment but a RST; FIN or RST either way marks it closing),
 * UDP, and ICMP/ICMPv6 echo (the identifier stands for the ports).  Ages come from
 * bpf_ktime_get_ns(); an entry idle longer than its state's timeout is stale: the packet that
 * meets it removes it and goes on to the rules.  A full table evicts the least recently
 * used entry (the kernel's LRU); status derives the evictions from the counts here.
 *
 * Include after netctl_maps.h and netctl_parse.h.
 */
#ifndef NETCTL_CONNTRACK_H
#define NETCTL_CONNTRACK_H

#define NETCTL_TCP_FIN 0x01
#define NETCTL_TCP_SYN 0x02
#define NETCTL_TCP_RST 0x04
#define NETCTL_TCP_ACK 0x10

static __always_inline int netctl_echo_request(struct netctl_pkt *p)
{
    return p->l4 == NETCTL_L4_ICMP && p->icmp_type == (p->family == 4 ? 8 : 128);
}

static __always_inline int netctl_echo_reply(struct netctl_pkt *p)
{
    return p->l4 == NETCTL_L4_ICMP && p->icmp_type == (p->family == 4 ? 0 : 129);
}

/* The key of the replies to an outgoing packet; 0 when its protocol is not tracked. */
static __always_inline int netctl_ct_reply_key(struct netctl_pkt *p, struct netctl_ct_key *k)
{
    if (p->l4 == NETCTL_L4_PORTS) {
        k->sport = p->dport;
        k->dport = p->sport;
    } else if (netctl_echo_request(p)) {
        k->sport = p->icmp_id;
    } else {
        return 0;
    }
    k->family = p->family;
    k->proto = p->proto;
    __builtin_memcpy(k->saddr, p->dst.v6.addr, 16);
    __builtin_memcpy(k->daddr, p->src.v6.addr, 16);
    if (p->family == 4) {
        __builtin_memset(k->saddr + 4, 0, 12);
        __builtin_memset(k->daddr + 4, 0, 12);
    }
    return 1;
}

/* The key an incoming packet is a reply under; 0 when it cannot be one. */
static __always_inline int netctl_ct_own_key(struct netctl_pkt *p, struct netctl_ct_key *k)
{
    if (p->l4 == NETCTL_L4_PORTS) {
        k->sport = p->sport;
        k->dport = p->dport;
    } else if (netctl_echo_reply(p)) {
        k->sport = p->icmp_id;
    } else {
        return 0;
    }
    k->family = p->family;
    k->proto = p->proto;
    __builtin_memcpy(k->saddr, p->src.v6.addr, 16);
    __builtin_memcpy(k->daddr, p->dst.v6.addr, 16);
    if (p->family == 4) {
        __builtin_memset(k->saddr + 4, 0, 12);
        __builtin_memset(k->daddr + 4, 0, 12);
    }
    return 1;
}

static __always_inline __u64 netctl_ct_timeout_ns(struct netctl_config *cfg, __u8 proto,
                                                  __u8 state)
{
    __u32 seconds;
    if (proto == 6)
        seconds = state == NETCTL_CT_ESTABLISHED ? cfg->word[NETCTL_CFG_CT_TCP_ESTABLISHED]
                                                 : cfg->word[NETCTL_CFG_CT_TCP_CLOSING];
    else if (proto == 17)
        seconds = cfg->word[NETCTL_CFG_CT_UDP];
    else
        seconds = cfg->word[NETCTL_CFG_CT_ICMP];
    return (__u64)seconds * 1000000000ull;
}

/* Egress, after the packet was accepted: remember the flow (or refresh it). */
static __always_inline void netctl_ct_track(struct netctl_pkt *p, __u32 len)
{
    struct netctl_ct_key k = {};

    if (p->fragment || !netctl_ct_reply_key(p, &k))
        return;
    if (p->proto == 6 && (p->tcp_flags & NETCTL_TCP_RST) && !conntrack.lookup(&k))
        return;  /* a reset for a flow not tracked: nothing to remember */
    __u64 now = bpf_ktime_get_ns();
    struct netctl_ct_entry *e = conntrack.lookup(&k);
    if (e) {
        e->seen_ns = now;
        e->packets_out += 1;
        if (p->proto == 6 && (p->tcp_flags & (NETCTL_TCP_FIN | NETCTL_TCP_RST)))
            e->state = NETCTL_CT_CLOSING;
        return;
    }
    struct netctl_ct_entry n = {};
    n.created_ns = now;
    n.seen_ns = now;
    n.packets_out = 1;
    /* A bare SYN opens a flow; any other segment continues one this host is part of (an
     * accepted inbound connection, or one older than the policy). */
    if (p->proto == 6 && !((p->tcp_flags & NETCTL_TCP_SYN) && !(p->tcp_flags & NETCTL_TCP_ACK)))
        n.state = (p->tcp_flags & NETCTL_TCP_FIN) ? NETCTL_CT_CLOSING : NETCTL_CT_ESTABLISHED;
    conntrack.update(&k, &n);
    netctl_count_stat(NETCTL_STAT_CT_NEW, len);
}

/* Ingress: whether the packet is a reply to a live tracked flow (then it is accepted). */
static __always_inline int netctl_ct_reply(struct netctl_pkt *p, struct netctl_config *cfg,
                                           __u32 len)
{
    struct netctl_ct_key k = {};

    if (p->fragment || !netctl_ct_own_key(p, &k))
        return 0;
    struct netctl_ct_entry *e = conntrack.lookup(&k);
    if (!e)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    if (now - e->seen_ns > netctl_ct_timeout_ns(cfg, p->proto, e->state)) {
        conntrack.delete(&k);
        netctl_count_stat(NETCTL_STAT_CT_EXPIRED, len);
        return 0;
    }
    e->seen_ns = now;
    e->packets_in += 1;
    if (e->state == NETCTL_CT_NEW)
        e->state = NETCTL_CT_ESTABLISHED;
    if (p->proto == 6 && (p->tcp_flags & (NETCTL_TCP_FIN | NETCTL_TCP_RST)))
        e->state = NETCTL_CT_CLOSING;
    netctl_count_stat(NETCTL_STAT_CT_REPLY, len);
    return 1;
}

#endif /* NETCTL_CONNTRACK_H */
