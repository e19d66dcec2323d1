/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forwarding for `routes:`: an accepted ingress packet whose destination matches a route
 * leaves by the route's interface without entering the kernel's stack.
 *
 * The kernel keeps what it does best: packets to this host's own addresses, packets whose
 * TTL or hop limit would expire (the kernel answers with ICMP time exceeded), IPv4 packets
 * with options and VLAN-tagged frames are left to it, and so is an XDP packet whose next
 * hop's MAC is not known yet.  Everything else has its TTL (IPv4, with an incremental
 * checksum update) or hop limit (IPv6) decremented and is redirected:
 *   - tc: bpf_redirect_neigh() to the next hop, so the kernel's neighbour table supplies
 *     the MACs (and resolves an unknown next hop itself);
 *   - XDP: MACs rewritten from the nexthops map (read from the neighbour table at apply
 *     time), then bpf_redirect().  A veth receiving XDP_REDIRECT needs NAPI on its peer
 *     (an XDP program there, or GRO on), or the frames are dropped (docs/datapath.md).
 *
 * Include after netctl_maps.h, netctl_stats.h and netctl_parse.h.
 */
#ifndef NETCTL_FORWARD_H
#define NETCTL_FORWARD_H

#define NETCTL_NOT_FORWARDED (-1)

/* bcc 0.26 declares bpf_redirect_neigh with 3 arguments; the kernel's helper (id 152)
 * takes 4: call it through its id with the right prototype. */
static long (*netctl_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
                                     __u64 flags) = (void *)152;

/* The route and next hop of an accepted ingress packet, or NULL when it is not for this
 * path (counting why, where it matters). */
static __always_inline struct netctl_nexthop *
netctl_route(struct netctl_pkt *p, __u32 gen, struct netctl_config *cfg, __u32 len,
             __u32 *route_index)
{
    if (!cfg->word[NETCTL_CFG_ROUTES])
        return 0;
    struct netctl_local_key local = {};
    local.family = p->family;
    __builtin_memcpy(local.addr, p->dst.v6.addr, 16);
    if (p->family == 4)
        __builtin_memset(local.addr + 4, 0, 12);
    if (local_addrs.lookup(&local)) {
        netctl_count_stat(NETCTL_STAT_FWD_LOCAL, len);
        return 0;
    }
    __u32 *index;
    if (p->family == 4) {
        p->dst.v4.gen = gen;
        index = routes_v4.lookup(&p->dst.v4);
    } else {
        p->dst.v6.gen = gen;
        index = routes_v6.lookup(&p->dst.v6);
    }
    if (!index)
        return 0;
    if (p->ttl <= 1) {
        netctl_count_stat(NETCTL_STAT_FWD_TTL, len);
        return 0;
    }
    if (p->ip_options || p->vlans) {
        netctl_count_stat(NETCTL_STAT_FWD_OPTIONS, len);
        return 0;
    }
    *route_index = gen * NETCTL_NEXTHOPS_ENTRIES + *index;
    struct netctl_nexthop *nh = nexthops.lookup(route_index);
    if (!nh || !nh->ifindex)
        return 0;
    return nh;
}

/* The IPv4 checksum after the TTL byte (high half of its 16-bit word) dropped by one.
 * Both are as they lie in memory (network order), read as native u16s. */
static __always_inline __u16 netctl_csum_ttl_minus_one(__u16 csum)
{
    /* RFC 1624: HC' = ~(~HC + ~m + m').  m - m' is 0x0100 in network order, so
     * ~m + m' = 0xffff - (m - m') = ~htons(0x0100) in the same representation. */
    __u32 sum = (__u16)~csum + (__u16)~bpf_htons(0x0100);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

/* XDP: rewrite and redirect in place (XDP frames are linear: `data` is packet memory). */
static __always_inline int netctl_forward_xdp(struct netctl_pkt *p, __u32 gen,
                                              struct netctl_config *cfg, __u32 len,
                                              __u8 *data, void *end)
{
    __u32 route_index;
    struct netctl_nexthop *nh = netctl_route(p, gen, cfg, len, &route_index);
    if (!nh)
        return NETCTL_NOT_FORWARDED;
    if (!nh->resolved) {
        netctl_count_stat(NETCTL_STAT_FWD_UNRESOLVED, len);
        return NETCTL_NOT_FORWARDED;
    }
    __u32 off = p->l3_off;
    if (off > 64)
        return NETCTL_NOT_FORWARDED;
    __u8 *ip = data + off;
    if (p->family == 4) {
        if ((void *)(ip + 20) > end)
            return NETCTL_NOT_FORWARDED;
        __u16 *csum = (__u16 *)(ip + 10);
        ip[8] -= 1;
        *csum = netctl_csum_ttl_minus_one(*csum);
    } else {
        if ((void *)(ip + 40) > end)
            return NETCTL_NOT_FORWARDED;
        ip[7] -= 1;
    }
    if ((void *)(data + 12) > end)
        return NETCTL_NOT_FORWARDED;
    __builtin_memcpy(data, nh->dmac, 6);
    __builtin_memcpy(data + 6, nh->smac, 6);
    netctl_count(route_counters.lookup(&route_index), len);
    return bpf_redirect(nh->ifindex, 0);
}

#ifdef TC_ACT_SHOT  /* tc entry files (they include pkt_cls.h) */
/* tc: rewrite through helpers (any skb, linear or not) and let the neighbour table fill
 * the MACs. */
static __always_inline int netctl_forward_tc(struct __sk_buff *skb, struct netctl_pkt *p,
                                             __u32 gen, struct netctl_config *cfg, __u32 len)
{
    __u32 route_index;
    struct netctl_nexthop *nh = netctl_route(p, gen, cfg, len, &route_index);
    if (!nh)
        return NETCTL_NOT_FORWARDED;
    __u32 off = p->l3_off;
    __u8 ttl = p->ttl - 1;
    struct bpf_redir_neigh neigh = {};
    if (p->family == 4) {
        /* the 16-bit word holding TTL (high byte) and protocol (low byte) */
        __u16 old_word = bpf_htons(((__u16)p->ttl << 8) | p->proto);
        __u16 new_word = bpf_htons(((__u16)ttl << 8) | p->proto);
        if (bpf_l3_csum_replace(skb, off + 10, old_word, new_word, 2) < 0 ||
            bpf_skb_store_bytes(skb, off + 8, &ttl, 1, 0) < 0)
            return TC_ACT_SHOT;
        neigh.nh_family = 2;   /* AF_INET */
        __builtin_memcpy(&neigh.ipv4_nh, nh->via, 4);
    } else {
        if (bpf_skb_store_bytes(skb, off + 7, &ttl, 1, 0) < 0)
            return TC_ACT_SHOT;
        neigh.nh_family = 10;  /* AF_INET6 */
        __builtin_memcpy(neigh.ipv6_nh, nh->via, 16);
    }
    netctl_count(route_counters.lookup(&route_index), len);
    return netctl_redirect_neigh(nh->ifindex, &neigh, sizeof(neigh), 0);
}
#endif

#endif /* NETCTL_FORWARD_H */
