/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parse a frame into the fields netctl classifies on.
 *
 * The parser reads a window of the frame's first NETCTL_HDR_WINDOW bytes: straight from
 * packet memory when that much (or the whole frame) is linear, the fast and usual case,
 * else from a copy made with one load-bytes call (netctl_judge.h).  The copy matters at tc:
 * frames sent through a packet socket's TX ring reach tc with only the Ethernet header in
 * the linear area, and a parser limited to linear data would let them through unclassified.
 *
 * The rules (and the reference parser netctl/policy/frame.py, which tests hold this code
 * to) are: on an Ethernet device, up to NETCTL_MAX_VLAN VLAN tags are skipped (a tag the
 * kernel already moved into the skb's metadata counts as one); on a device without a
 * link-layer header (tun, WireGuard, IP tunnels) the frame starts at the IP header and the
 * family comes from the skb's protocol (tc) or the version nibble (XDP); IPv4 options are
 * skipped; IPv6 extension headers (hop-by-hop, routing, fragment, destination options) are
 * walked, at most NETCTL_MAX_EXT_HDRS of them, and anything else, AH included, is the
 * upper-layer protocol (as in IPv4, where AH is a protocol like any other); a non-first
 * fragment has no transport fields; a header the frame ends inside is a drop under its own
 * reason, and headers that reach past the window are dropped as NETCTL_DROP_HDR_TOO_LONG.
 */
#ifndef NETCTL_PARSE_H
#define NETCTL_PARSE_H

#include "netctl_abi.h"

#define NETCTL_PARSED_IP 0
#define NETCTL_PARSED_NON_IP (-1)

#define NETCTL_L4_NONE 0
#define NETCTL_L4_PORTS 1
#define NETCTL_L4_ICMP 2

/* struct netctl_pkt, the parser's output, is declared with its per-CPU map in netctl_maps.h. */


static __always_inline __u16 netctl_be16(const __u8 *b)
{
    return ((__u16)b[0] << 8) | b[1];
}

/* The IPv6 extension headers the parser walks past.  AH (51) is not one of them: it ends
 * the walk and is the packet's protocol, as it is in IPv4. */
static __always_inline int netctl_is_ext_hdr(__u8 nh)
{
    return nh == 0 || nh == 43 || nh == 44 || nh == 60;
}

/* "Need n bytes at off" (and point h at them), in a window of header bytes that starts at
 * the frame's first byte.  Reads go through h: the verifier learns the bounds of that very
 * pointer from the last test.  In order: the frame ends before (the header's truncation
 * reason); the bytes lie beyond NETCTL_HDR_WINDOW (NETCTL_DROP_HDR_TOO_LONG: a header longer
 * than the window itself is tested first, since WINDOW - n would wrap); and, for packet
 * memory, the verifier's bounds check against data_end (equal to the first test there: the
 * callers pass packet memory only when the window is all linear). */
#define NETCTL_NEED(h, off, n, trunc)                                                 \
    do {                                                                             \
        if ((off) + (n) > p->len)                                                    \
            return (trunc);                                                          \
        if ((n) > NETCTL_HDR_WINDOW || (off) > NETCTL_HDR_WINDOW - (n))              \
            return NETCTL_DROP_HDR_TOO_LONG;                                         \
        (h) = data + (off);                                                          \
        if (is_pkt && (void *)((h) + (n)) > end)                                     \
            return (trunc);                                                          \
    } while (0)

/* Transport fields at `off`.  Returns NETCTL_PARSED_IP or a drop reason. */
static __always_inline int netctl_parse_l4(__u8 *data, void *end, int is_pkt,
                                           struct netctl_pkt *p, __u32 off)
{
    __u8 own_icmp = p->family == 4 ? 1 : 58;
    __u8 *h;

    if (p->fragment)
        return NETCTL_PARSED_IP;
    p->l4_off = off;
    if (p->proto == 6) {
        NETCTL_NEED(h, off, 20, NETCTL_DROP_TRUNC_L4);
        p->sport = netctl_be16(h);
        p->dport = netctl_be16(h + 2);
        p->tcp_flags = h[13];
        p->tcp_seq = ((__u32)netctl_be16(h + 4) << 16) | netctl_be16(h + 6);
        p->tcp_ack = ((__u32)netctl_be16(h + 8) << 16) | netctl_be16(h + 10);
        p->tcp_win = netctl_be16(h + 14);
        p->tcp_hlen = (h[12] >> 4) * 4;
        p->l4 = NETCTL_L4_PORTS;
    } else if (p->proto == 17) {
        NETCTL_NEED(h, off, 8, NETCTL_DROP_TRUNC_L4);
        p->sport = netctl_be16(h);
        p->dport = netctl_be16(h + 2);
        p->l4 = NETCTL_L4_PORTS;
    } else if (p->proto == own_icmp) {
        NETCTL_NEED(h, off, 4, NETCTL_DROP_TRUNC_L4);
        p->icmp_type = h[0];
        p->icmp_code = h[1];
        p->l4 = NETCTL_L4_ICMP;
        /* Echo request and reply carry an identifier (connection tracking reads it): their
         * header is 8 bytes. */
        if (p->icmp_type == (p->family == 4 ? 8 : 128) ||
            p->icmp_type == (p->family == 4 ? 0 : 129)) {
            NETCTL_NEED(h, off, 8, NETCTL_DROP_TRUNC_L4);
            p->icmp_id = netctl_be16(h + 4);
        }
    }
    return NETCTL_PARSED_IP;
}

static __always_inline int netctl_parse_ipv4(__u8 *data, void *end, int is_pkt,
                                             struct netctl_pkt *p, __u32 off)
{
    __u8 *ip, *h;
    NETCTL_NEED(ip, off, 20, NETCTL_DROP_TRUNC_IPV4);
    __u32 ihl = ip[0] & 15;
    if ((ip[0] >> 4) != 4 || ihl < 5)
        return NETCTL_DROP_BAD_IPV4;
    p->family = 4;
    p->proto = ip[9];
    p->l3_off = off;
    p->ttl = ip[8];
    p->ip_options = ihl > 5;
    p->fragment = (netctl_be16(ip + 6) & 0x1fff) != 0;
    __builtin_memcpy(p->src.v4.addr, ip + 12, 4);
    __builtin_memcpy(p->dst.v4.addr, ip + 16, 4);
    p->src.v4.prefixlen = p->dst.v4.prefixlen = 32 + 32;
    NETCTL_NEED(h, off, ihl * 4, NETCTL_DROP_TRUNC_IPV4);
    return netctl_parse_l4(data, end, is_pkt, p, off + ihl * 4);
}

static __always_inline int netctl_parse_ipv6(__u8 *data, void *end, int is_pkt,
                                             struct netctl_pkt *p, __u32 off)
{
    __u8 *ip, *ext, *h;
    NETCTL_NEED(ip, off, 40, NETCTL_DROP_TRUNC_IPV6);
    if ((ip[0] >> 4) != 6)
        return NETCTL_DROP_BAD_IPV6;
    p->family = 6;
    p->l3_off = off;
    p->ttl = ip[7];
    __builtin_memcpy(p->src.v6.addr, ip + 8, 16);
    __builtin_memcpy(p->dst.v6.addr, ip + 24, 16);
    p->src.v6.prefixlen = p->dst.v6.prefixlen = 32 + 128;
    __u8 nh = ip[6];
    off += 40;

#pragma unroll
    for (int i = 0; i < NETCTL_MAX_EXT_HDRS; i++) {
        if (!netctl_is_ext_hdr(nh))
            break;
        NETCTL_NEED(ext, off, 8, NETCTL_DROP_TRUNC_IPV6);
        if (nh == 44) {
            nh = ext[0];
            if (netctl_be16(ext + 2) >> 3) {  /* non-first fragment: stop here */
                p->fragment = 1;
                break;
            }
            off += 8;
            continue;
        }
        __u32 hlen = ((__u32)ext[1] + 1) * 8;
        nh = ext[0];
        NETCTL_NEED(h, off, hlen, NETCTL_DROP_TRUNC_IPV6);
        off += hlen;
    }
    if (!p->fragment && netctl_is_ext_hdr(nh))
        return NETCTL_DROP_EXT_LIMIT;
    p->proto = nh;
    return netctl_parse_l4(data, end, is_pkt, p, off);
}

/* Parse the window [data, data + min(p->len, NETCTL_HDR_WINDOW)).  `is_pkt` (a constant at
 * each call site): the window is packet memory ending at `end`, else a copy in a map value
 * of NETCTL_HDR_WINDOW bytes.  `l3` (a constant at each call site): the frame starts at the
 * IP header (a device without a link-layer header), and `l3_type` is its ethertype (tc: the
 * skb's protocol; 0: read the IP version nibble, as XDP must).  `vlans`: tags the kernel
 * has already taken out of the frame (tc: the skb's VLAN metadata).  Returns
 * NETCTL_PARSED_IP, NETCTL_PARSED_NON_IP or a drop reason. */
static __always_inline int netctl_parse(__u8 *data, void *end, int is_pkt,
                                        struct netctl_pkt *p, int l3, __u16 l3_type,
                                        __u8 vlans)
{
    __u32 off = 0;
    __u16 type;
    __u8 *h;

    if (l3) {
        type = l3_type;
        if (!type) {
            if (p->len < 1)
                return NETCTL_PARSED_NON_IP;
            NETCTL_NEED(h, 0, 1, NETCTL_DROP_TRUNC_IPV4);
            type = (h[0] >> 4) == 4 ? 0x0800 : (h[0] >> 4) == 6 ? 0x86dd : 0;
        }
    } else {
        NETCTL_NEED(h, off, 14, NETCTL_DROP_TRUNC_L2);
        type = netctl_be16(h + 12);
        off = 14;
        p->vlans = vlans;
#pragma unroll
        for (int i = 0; i < NETCTL_MAX_VLAN; i++) {
            if (type != 0x8100 && type != 0x88a8)
                break;
            if (p->vlans >= NETCTL_MAX_VLAN)
                return NETCTL_DROP_VLAN_DEPTH;
            NETCTL_NEED(h, off, 4, NETCTL_DROP_TRUNC_L2);
            type = netctl_be16(h + 2);
            off += 4;
            p->vlans += 1;
        }
        if (type == 0x8100 || type == 0x88a8)
            return NETCTL_DROP_VLAN_DEPTH;
    }
    if (type == 0x0800)
        return netctl_parse_ipv4(data, end, is_pkt, p, off);
    if (type == 0x86dd)
        return netctl_parse_ipv6(data, end, is_pkt, p, off);
    return NETCTL_PARSED_NON_IP;
}

#endif /* NETCTL_PARSE_H */
