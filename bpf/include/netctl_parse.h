/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parse a frame into the fields netctl classifies on.
 *
 * The entry file defines NETCTL_LOAD(ctx, offset, buf, len) (bpf_xdp_load_bytes or
 * bpf_skb_load_bytes) before including this header.  Reading through the load helper
 * rather than direct packet access matters at tc: frames sent through a packet socket's TX
 * ring reach tc with only the Ethernet header in the linear area, and a parser limited to
 * linear data would let them through unclassified.  It also covers XDP multi-buffer frames.
 *
 * The rules (and the reference parser netctl/policy/frame.py, which tests hold this code
 * to) are: up to NETCTL_MAX_VLAN VLAN tags are skipped; IPv4 options are skipped; IPv6
 * extension headers (hop-by-hop, routing, fragment, AH, destination options) are walked,
 * at most NETCTL_MAX_EXT_HDRS of them; a non-first fragment has no transport fields; a
 * header the frame ends inside is a drop under its own reason.
 */
#ifndef NETCTL_PARSE_H
#define NETCTL_PARSE_H

#include "netctl_abi.h"

#define NETCTL_PARSED_IP 0
#define NETCTL_PARSED_NON_IP (-1)

#define NETCTL_L4_NONE 0
#define NETCTL_L4_PORTS 1
#define NETCTL_L4_ICMP 2

struct netctl_pkt {
    __u32 len;           /* whole frame, for byte counters */
    __u8 family;         /* 4 or 6 */
    __u8 proto;          /* upper-layer protocol (last IPv6 next header) */
    __u8 fragment;       /* a non-first fragment: no transport fields */
    __u8 l4;             /* NETCTL_L4_* */
    __u16 sport;         /* host byte order */
    __u16 dport;
    __u8 icmp_type;
    __u8 pad[3];
    union {
        struct netctl_lpm4_key v4;
        struct netctl_lpm6_key v6;
    } src, dst;
};

static __always_inline __u16 netctl_be16(const __u8 *b)
{
    return ((__u16)b[0] << 8) | b[1];
}

static __always_inline int netctl_is_ext_hdr(__u8 nh)
{
    return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60;
}

/* Transport fields at `off`.  Returns NETCTL_PARSED_IP or a drop reason. */
static __always_inline int netctl_parse_l4(void *ctx, struct netctl_pkt *p, __u32 off)
{
    __u8 own_icmp = p->family == 4 ? 1 : 58;
    __u8 b[4];

    if (p->fragment)
        return NETCTL_PARSED_IP;
    if (p->proto == 6 || p->proto == 17) {
        __u32 need = p->proto == 6 ? 20 : 8;
        if (p->len < off + need || NETCTL_LOAD(ctx, off, b, 4) < 0)
            return NETCTL_DROP_TRUNC_L4;
        p->sport = netctl_be16(b);
        p->dport = netctl_be16(b + 2);
        p->l4 = NETCTL_L4_PORTS;
    } else if (p->proto == own_icmp) {
        if (p->len < off + 4 || NETCTL_LOAD(ctx, off, b, 4) < 0)
            return NETCTL_DROP_TRUNC_L4;
        p->icmp_type = b[0];
        p->l4 = NETCTL_L4_ICMP;
    }
    return NETCTL_PARSED_IP;
}

static __always_inline int netctl_parse_ipv4(void *ctx, struct netctl_pkt *p, __u32 off)
{
    __u8 ip[20];

    if (p->len < off + 20 || NETCTL_LOAD(ctx, off, ip, 20) < 0)
        return NETCTL_DROP_TRUNC_IPV4;
    __u32 ihl = ip[0] & 15;
    if ((ip[0] >> 4) != 4 || ihl < 5)
        return NETCTL_DROP_BAD_IPV4;
    if (p->len < off + ihl * 4)
        return NETCTL_DROP_TRUNC_IPV4;
    p->family = 4;
    p->proto = ip[9];
    p->fragment = (netctl_be16(ip + 6) & 0x1fff) != 0;
    __builtin_memcpy(p->src.v4.addr, ip + 12, 4);
    __builtin_memcpy(p->dst.v4.addr, ip + 16, 4);
    p->src.v4.prefixlen = p->dst.v4.prefixlen = 32 + 32;
    return netctl_parse_l4(ctx, p, off + ihl * 4);
}

static __always_inline int netctl_parse_ipv6(void *ctx, struct netctl_pkt *p, __u32 off)
{
    __u8 ip[40];
    __u8 ext[4];

    if (p->len < off + 40 || NETCTL_LOAD(ctx, off, ip, 40) < 0)
        return NETCTL_DROP_TRUNC_IPV6;
    if ((ip[0] >> 4) != 6)
        return NETCTL_DROP_BAD_IPV6;
    p->family = 6;
    __builtin_memcpy(p->src.v6.addr, ip + 8, 16);
    __builtin_memcpy(p->dst.v6.addr, ip + 24, 16);
    p->src.v6.prefixlen = p->dst.v6.prefixlen = 32 + 128;
    __u8 nh = ip[6];
    off += 40;

#pragma unroll
    for (int i = 0; i < NETCTL_MAX_EXT_HDRS; i++) {
        if (!netctl_is_ext_hdr(nh))
            break;
        if (p->len < off + 8 || NETCTL_LOAD(ctx, off, ext, 4) < 0)
            return NETCTL_DROP_TRUNC_IPV6;
        if (nh == 44) {
            nh = ext[0];
            if (netctl_be16(ext + 2) >> 3) {  /* non-first fragment: stop here */
                p->fragment = 1;
                break;
            }
            off += 8;
            continue;
        }
        __u32 hlen = nh == 51 ? ((__u32)ext[1] + 2) * 4 : ((__u32)ext[1] + 1) * 8;
        if (p->len < off + hlen)
            return NETCTL_DROP_TRUNC_IPV6;
        nh = ext[0];
        off += hlen;
    }
    if (!p->fragment && netctl_is_ext_hdr(nh))
        return NETCTL_DROP_EXT_LIMIT;
    p->proto = nh;
    return netctl_parse_l4(ctx, p, off);
}

/* Returns NETCTL_PARSED_IP, NETCTL_PARSED_NON_IP or a drop reason. */
static __always_inline int netctl_parse(void *ctx, struct netctl_pkt *p)
{
    __u8 eth[4];
    __u32 off = 12;

    if (p->len < 14 || NETCTL_LOAD(ctx, 12, eth, 2) < 0)
        return NETCTL_DROP_TRUNC_L2;
    __u16 type = netctl_be16(eth);
    off = 14;
#pragma unroll
    for (int i = 0; i < NETCTL_MAX_VLAN; i++) {
        if (type != 0x8100 && type != 0x88a8)
            break;
        if (p->len < off + 4 || NETCTL_LOAD(ctx, off, eth, 4) < 0)
            return NETCTL_DROP_TRUNC_L2;
        type = netctl_be16(eth + 2);
        off += 4;
    }
    if (type == 0x8100 || type == 0x88a8)
        return NETCTL_DROP_VLAN_DEPTH;
    if (type == 0x0800)
        return netctl_parse_ipv4(ctx, p, off);
    if (type == 0x86dd)
        return netctl_parse_ipv6(ctx, p, off);
    return NETCTL_PARSED_NON_IP;
}

#endif /* NETCTL_PARSE_H */
