/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forwarding for `routes:`: an accepted ingress packet whose destination matches a route
 * leaves by the route's interface without entering the kernel's stack.
 *
 * The kernel keeps what it does best: packets to this host's own addresses, packets whose
 * TTL or hop limit would expire (the kernel answers with ICMP time exceeded), IPv4 packets
 * with options and VLAN-tagged frames are left to it, and so is an XDP packet whose next
 * hop's MAC is not known yet.  What a router must never forward is left to the kernel too
 * (which delivers or drops it): frames sent to a link-layer multicast or broadcast address
 * or to another host's MAC, multicast, broadcast, loopback and unspecified destinations,
 * and link-local sources or destinations (IPv6 neighbour discovery among them).  Everything
 * else has its TTL (IPv4, with an incremental checksum update) or hop limit (IPv6)
 * decremented and is redirected:
 *   - tc: bpf_redirect_neigh() to the next hop, so the kernel's neighbour table supplies
 *     the MACs (and resolves an unknown next hop itself);
 *   - XDP: MACs rewritten from the nexthops map (read from the neighbour table at apply
 *     time), then bpf_redirect().  A veth receiving XDP_REDIRECT needs NAPI on its peer
 *     (an XDP program there, or GRO on), or the frames are dropped (docs/datapath.md).
 *     A redirected frame never meets the egress interface's tc egress hook, where tc's
 *     redirect would have it judged: so when netctl enforces egress rules there (the next
 *     hop's judge_egress), the XDP path judges them (and tracks the flow) before the
 *     redirect, and both hooks give the same verdict.
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

/* Whether a router may forward the packet: unicast, global or private scope, both ways.
 * IPv4: not 0/8, 127/8, 169.254/16 (either address), 224/4 or above (multicast, reserved,
 * broadcast) as destination.  IPv6: not ::, ::1, fe80::/10 (either address), ff00::/8. */
static __always_inline int netctl_unicast(struct netctl_pkt *p)
{
    __u8 *s = p->src.v6.addr, *d = p->dst.v6.addr;
    if (p->family == 4) {
        if (d[0] == 0 || d[0] == 127 || d[0] >= 224)
            return 0;
        if ((d[0] == 169 && d[1] == 254) || (s[0] == 169 && s[1] == 254))
            return 0;
        return 1;
    }
    if (d[0] == 0xff)
        return 0;
    if ((d[0] == 0xfe && (d[1] & 0xc0) == 0x80) || (s[0] == 0xfe && (s[1] & 0xc0) == 0x80))
        return 0;
    __u64 hi, lo;
    __builtin_memcpy(&hi, d, 8);
    __builtin_memcpy(&lo, d + 8, 8);
    if (hi == 0 && (lo == 0 || lo == bpf_htonll(1)))
        return 0;
    return 1;
}

/* The route and next hop of an accepted ingress packet, or NULL when it is not for this
 * path (counting why, where it matters). */
static __always_inline struct netctl_nexthop *
netctl_route(struct netctl_pkt *p, __u32 gen, struct netctl_config *cfg, __u32 len,
             __u32 *route_index)
{
    if (!cfg->word[NETCTL_CFG_ROUTES])
        return 0;
    if (!netctl_unicast(p)) {
        netctl_count_stat(NETCTL_STAT_FWD_NOT_UNICAST, len);
        return 0;
    }
    struct netctl_local_key local = {};
    local.family = p->family;
    __builtin_memcpy(local.addr, p->dst.v6.addr, 16);
    if (p->family == 4)
        __builtin_memset(local.addr + 4, 0, 12);
    netctl_called(HASH);
    if (local_addrs.lookup(&local)) {
        netctl_count_stat(NETCTL_STAT_FWD_LOCAL, len);
        return 0;
    }
    __u32 *index;
    netctl_called(LPM);
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
    netctl_called(ARRAY);
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
    if (!cfg->word[NETCTL_CFG_ROUTES] || (void *)(data + 6) > end)
        return NETCTL_NOT_FORWARDED;
    if (data[0] & 1) {   /* to a link-layer multicast or broadcast address */
        netctl_count_stat(NETCTL_STAT_FWD_NOT_UNICAST, len);
        return NETCTL_NOT_FORWARDED;
    }
    struct netctl_nexthop *nh = netctl_route(p, gen, cfg, len, &route_index);
    if (!nh)
        return NETCTL_NOT_FORWARDED;
    if (!nh->resolved) {
        netctl_count_stat(NETCTL_STAT_FWD_UNRESOLVED, len);
        return NETCTL_NOT_FORWARDED;
    }
    if (nh->judge_egress) {
        struct netctl_verdict ev = { .rule = NETCTL_NO_RULE, .gen = gen,
                                     .sample = cfg->word[NETCTL_CFG_EVENT_SAMPLE] };
        __u32 out_ifindex = nh->ifindex;
        netctl_decide(data, end, 1, p, gen, cfg, NETCTL_DIR_EGRESS, len, &ev);
        netctl_emit(p, &ev, out_ifindex, NETCTL_HOOK_XDP, NETCTL_DIR_EGRESS);
        if (ev.drop)
            return XDP_DROP;
        /* the lookups above may have moved the nexthop value: look it up again */
        netctl_called(ARRAY);
        nh = nexthops.lookup(&route_index);
        if (!nh)
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
    netctl_called(PERCPU_ARRAY);
    netctl_count(route_counters.lookup(&route_index), len);
    netctl_called(REDIRECT);
    return bpf_redirect(nh->ifindex, 0);
}

#ifdef TC_ACT_SHOT  /* tc entry files (they include pkt_cls.h) */
/* tc: rewrite through helpers (any skb, linear or not) and let the neighbour table fill
 * the MACs. */
static __always_inline int netctl_forward_tc(struct __sk_buff *skb, struct netctl_pkt *p,
                                             __u32 gen, struct netctl_config *cfg, __u32 len)
{
    __u32 route_index;
    /* PACKET_HOST: sent to this interface's MAC, not to a multicast or broadcast address or
     * to another host */
    if (skb->pkt_type != 0 && cfg->word[NETCTL_CFG_ROUTES]) {
        netctl_count_stat(NETCTL_STAT_FWD_NOT_UNICAST, len);
        return NETCTL_NOT_FORWARDED;
    }
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
        netctl_called(CSUM);
        netctl_called(STORE_BYTES);
        if (bpf_l3_csum_replace(skb, off + 10, old_word, new_word, 2) < 0 ||
            bpf_skb_store_bytes(skb, off + 8, &ttl, 1, 0) < 0)
            return TC_ACT_SHOT;
        neigh.nh_family = 2;   /* AF_INET */
        __builtin_memcpy(&neigh.ipv4_nh, nh->via, 4);
    } else {
        netctl_called(STORE_BYTES);
        if (bpf_skb_store_bytes(skb, off + 7, &ttl, 1, 0) < 0)
            return TC_ACT_SHOT;
        neigh.nh_family = 10;  /* AF_INET6 */
        __builtin_memcpy(neigh.ipv6_nh, nh->via, 16);
    }
    netctl_called(PERCPU_ARRAY);
    netctl_count(route_counters.lookup(&route_index), len);
    netctl_called(REDIRECT);
    return netctl_redirect_neigh(nh->ifindex, &neigh, sizeof(neigh), 0);
}
#endif

#endif /* NETCTL_FORWARD_H */
