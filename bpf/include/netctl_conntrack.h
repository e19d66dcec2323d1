/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for `stateful: true`: flows this host sends (seen at tc egress) are
 * remembered, and at ingress, before any rule, their valid replies are accepted, and so are
 * ICMP errors about them (what nf_conntrack calls related).
 *
 * Two LRU hashes, both keyed by the tuple of the replies, so ingress looks a packet up as
 * it is:
 *   conntrack_unconfirmed  flows no valid reply has confirmed yet: what a SYN, a SYN-ACK,
 *                          a segment of a flow older than the policy, a UDP datagram or an
 *                          echo request opens.  Small: a flood of flows nobody answers
 *                          (the SYN-ACKs a host sends to spoofed SYNs) pushes out only
 *                          other unanswered flows.
 *   conntrack              confirmed flows; an entry moves here with the first valid reply.
 * Ingress looks in the confirmed table first.  A SYN or SYN-ACK this host sends with a new
 * initial sequence number starts its tuple over as an unconfirmed flow, whatever was tracked
 * on it (closing, stale, or a connection the host no longer has).
 *
 * TCP validity, after nf_conntrack: per entry, what this host sent (the highest sequence
 * number, the highest acknowledgement, the largest window, scaled by the shift of its SYN or
 * SYN-ACK, or by the largest shift when the flow was picked up mid-stream).  An incoming
 * RST or FIN must lie in the window this host advertised; an answer to the host's SYN or
 * SYN-ACK, or the first reply of a picked-up flow, must acknowledge what the host sent.
 * Anything else is not a valid reply: it changes nothing, is counted (INVALID) and goes on
 * to the rules.  A bare SYN is never a reply.
 *
 * Ages come from bpf_ktime_get_ns(); an entry idle longer than its state's timeout is stale:
 * the packet that meets it at ingress removes it and goes on to the rules.  A full table
 * evicts its least recently used entry (the kernel's LRU); status derives the evictions of
 * each table from the counts kept here.
 *
 * Include after netctl_maps.h and netctl_parse.h.
 */
#ifndef NETCTL_CONNTRACK_H
#define NETCTL_CONNTRACK_H

#define NETCTL_TCP_FIN 0x01
#define NETCTL_TCP_SYN 0x02
#define NETCTL_TCP_RST 0x04
#define NETCTL_TCP_ACK 0x10

/* A flow picked up mid-stream: the peer's first reply may acknowledge data up to this far
 * behind what this host sent (the largest window there can be). */
#define NETCTL_CT_PICKUP_ACK_WINDOW (0xffffu << NETCTL_CT_MAX_WSCALE)

/* "Need n bytes at off" for the tracker's own reads (TCP options, the packet inside an
 * ICMP error), in the header window netctl_parse reads (see NETCTL_NEED there), of a frame
 * of `flen` bytes.  Bytes missing are no error of the packet: the statement `fail` runs
 * instead.  The empty asm pins the checked pointer: the compiler may otherwise recompute
 * data + off for a later read into a register the verifier knows no bound for. */
#define NETCTL_CT_READ(h, off, n, fail)                                               \
    do {                                                                             \
        if ((off) + (n) > flen || (off) > NETCTL_HDR_WINDOW - (n))                   \
            fail;                                                                    \
        (h) = data + (off);                                                          \
        if (is_pkt && (void *)((h) + (n)) > end)                                     \
            fail;                                                                    \
        asm volatile("" : "+r"(h));                                                  \
    } while (0)

/* Sequence numbers compared modulo 2^32, as the kernel's before() and after(). */
static __always_inline int netctl_seq_before(__u32 a, __u32 b)
{
    return (__s32)(a - b) < 0;
}

static __always_inline int netctl_seq_after(__u32 a, __u32 b)
{
    return (__s32)(b - a) < 0;
}

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
                : state == NETCTL_CT_CLOSING     ? cfg->word[NETCTL_CFG_CT_TCP_CLOSING]
                                                 : cfg->word[NETCTL_CFG_CT_TCP_UNCONFIRMED];
    else if (proto == 17)
        seconds = cfg->word[NETCTL_CFG_CT_UDP];
    else
        seconds = cfg->word[NETCTL_CFG_CT_ICMP];
    return (__u64)seconds * 1000000000ull;
}

/* The window scale option of a SYN or SYN-ACK this host sends: its shift (capped at 14, as
 * RFC 7323 and the kernel cap it), or 0 without one.  The options are walked the way the
 * kernel's tcp_parse_options walks them: end of list (0) stops, no-op (1) is one byte, any
 * other option has a length byte; a length below 2 or past the header ends the walk, and an
 * option of the wrong length is skipped.  Each step reads 3 bytes (an option, a no-op
 * included, with fewer left in the frame cannot be followed by a window scale option).
 * The walk takes at most NETCTL_CT_OPT_STEPS steps (every common stack puts the option
 * within five); a list still going after them gets the largest shift, which can only make
 * the tracked window larger than the real one. */
#define NETCTL_CT_OPT_STEPS 8
static __always_inline __u8 netctl_ct_wscale(__u8 *data, void *end, int is_pkt,
                                             struct netctl_pkt *p)
{
    /* 64-bit offsets: a 32-bit one is zero-extended into a fresh register for the pointer
     * arithmetic, which loses the bound the verifier learnt from the check. */
    __u64 off = p->l4_off + 20;
    __u64 stop = p->l4_off + p->tcp_hlen;
    __u64 flen = p->len;
    __u8 shift = 0;
    __u8 *h;

    /* Every step has one way on and a few ways out: a no-op's length is computed, not
     * branched on, so the verifier follows one path through the walk instead of one per
     * mix of no-ops and options (2^steps). */
#pragma unroll
    for (int i = 0; i < NETCTL_CT_OPT_STEPS; i++) {
        if (off >= stop)
            goto done;
        NETCTL_CT_READ(h, off, 3, goto done);
        __u64 kind = h[0], len1 = h[1], arg = h[2];
        if (kind == 0)
            goto done;
        __u64 nop = ((kind ^ 1) - 1) >> 63;      /* 1 for a no-op, else 0 */
        asm volatile("" : "+r"(nop));           /* keep it arithmetic, not a branch */
        __u64 optlen = len1 + nop * (1 - len1);  /* a no-op: 1 */
        if (off + 2 - nop > stop || optlen + nop < 2 || off + optlen > stop)
            goto done;
        if (kind == 3 && optlen == 3) {
            shift = arg > NETCTL_CT_MAX_WSCALE ? NETCTL_CT_MAX_WSCALE : arg;
            goto done;
        }
        off += optlen;
    }
    if (off < stop)
        shift = NETCTL_CT_MAX_WSCALE;
done:
    return shift;
}

/* Egress, before the rules: a SYN or SYN-ACK's window scale, for netctl_ct_track.  Read
 * here, while the parse's view of the frame is live anyway: read after the classification,
 * it would keep that view live through it, and the verifier could no longer prune the
 * classification's states of different parse paths as one.  Handed over in a per-CPU map
 * rather than in *p, where each of the walk's exits would leave a different value for the
 * verifier to carry through the classification (measured: the egress program's
 * verification 1.7 and 1.2 times as long). */
static __always_inline void netctl_ct_prepare(__u8 *data, void *end, int is_pkt,
                                              struct netctl_pkt *p)
{
    if (p->proto == 6 && !p->fragment && (p->tcp_flags & NETCTL_TCP_SYN)) {
        __u8 shift = netctl_ct_wscale(data, end, is_pkt, p);
        __u32 zero = 0;
        netctl_called(PERCPU_ARRAY);
        struct netctl_ct_scratch *w = netctl_ct_scratch.lookup(&zero);
        if (w)
            w->wscale = shift;
    }
}

/* What a segment this host sends tells about its side of the flow: how far it has sent,
 * what it acknowledged, the window it offers.  The payload is the frame past the TCP
 * header (a short frame's Ethernet padding counts too: the tracked window only grows). */
static __always_inline void netctl_ct_our_segment(struct netctl_ct_entry *e,
                                                  struct netctl_pkt *p)
{
    __u8 f = p->tcp_flags;
    __u32 hdr = p->l4_off + (p->tcp_hlen < 20 ? 20 : p->tcp_hlen);
    __u32 payload = p->len > hdr ? p->len - hdr : 0;
    __u32 seq_end = p->tcp_seq + payload + ((f & NETCTL_TCP_SYN) ? 1 : 0) +
                    ((f & NETCTL_TCP_FIN) ? 1 : 0);
    if (netctl_seq_after(seq_end, e->our_end))
        e->our_end = seq_end;
    /* The window of a SYN or SYN-ACK is never scaled (RFC 7323); shifts are at most 14. */
    __u32 win = (f & NETCTL_TCP_SYN) ? p->tcp_win : (__u32)p->tcp_win << (e->wscale & 15);
    if (win > e->our_maxwin)
        e->our_maxwin = win;
    if (!(f & NETCTL_TCP_ACK))
        return;
    int first = !(e->flags & NETCTL_CT_F_ACKED);
    if (first || netctl_seq_after(p->tcp_ack, e->our_ack))
        e->our_ack = p->tcp_ack;
    __u32 right = p->tcp_ack + win;
    if (first || netctl_seq_after(right, e->our_maxend))
        e->our_maxend = right;
    e->flags |= NETCTL_CT_F_ACKED;
}

/* A SYN or SYN-ACK this host sends again (the same initial sequence number): a
 * retransmission of the one the entry was opened by. */
static __always_inline int netctl_ct_same_open(struct netctl_ct_entry *e, struct netctl_pkt *p,
                                               __u8 origin)
{
    return (e->flags & (NETCTL_CT_F_SYN | NETCTL_CT_F_SYNACK)) == origin &&
           e->our_start == p->tcp_seq;
}

static __always_inline void netctl_ct_refresh_out(struct netctl_ct_entry *e,
                                                  struct netctl_pkt *p, __u64 now)
{
    e->seen_ns = now;
    e->packets_out += 1;
    if (p->proto == 6) {
        netctl_ct_our_segment(e, p);
        if (p->tcp_flags & (NETCTL_TCP_FIN | NETCTL_TCP_RST))
            e->state = NETCTL_CT_CLOSING;
    }
}

/* Egress, after the packet was accepted: remember the flow (or refresh it). */
static __always_inline void netctl_ct_track(struct netctl_pkt *p, __u32 len)
{
    struct netctl_ct_key k = {};

    if (p->fragment || !netctl_ct_reply_key(p, &k))
        return;
    netctl_called(KTIME);
    __u64 now = bpf_ktime_get_ns();
    __u8 f = p->tcp_flags;
    struct netctl_ct_entry *e;
    struct netctl_ct_entry *u;

    if (p->proto == 6 && (f & NETCTL_TCP_SYN)) {
        /* This host opens (SYN) or accepts (SYN-ACK) a connection: unless it is sending
         * the same one again, whatever the tuple tracked has ended (the host's own stack
         * says so), and the new connection starts unconfirmed. */
        __u8 origin = (f & NETCTL_TCP_ACK) ? NETCTL_CT_F_SYNACK : NETCTL_CT_F_SYN;
        netctl_called(LRU_LOOKUP);
        e = conntrack.lookup(&k);
        if (e && netctl_ct_same_open(e, p, origin)) {
            netctl_ct_refresh_out(e, p, now);
            return;
        }
        netctl_called_if(e, LRU_DELETE);
        if (e && conntrack.delete(&k) == 0)
            netctl_count_stat(NETCTL_STAT_CT_EXPIRED, len);
        netctl_called(LRU_LOOKUP);
        u = conntrack_unconfirmed.lookup(&k);
        if (u && netctl_ct_same_open(u, p, origin)) {
            netctl_ct_refresh_out(u, p, now);
            return;
        }
        struct netctl_ct_entry n = {};
        n.created_ns = now;
        n.seen_ns = now;
        n.packets_out = 1;
        n.flags = origin;
        __u32 zero = 0;
        netctl_called(PERCPU_ARRAY);
        struct netctl_ct_scratch *w = netctl_ct_scratch.lookup(&zero);
        n.wscale = w ? w->wscale : NETCTL_CT_MAX_WSCALE;
        n.our_start = p->tcp_seq;
        n.our_end = p->tcp_seq;
        netctl_ct_our_segment(&n, p);
        if (f & (NETCTL_TCP_FIN | NETCTL_TCP_RST))
            n.state = NETCTL_CT_CLOSING;
        netctl_called(LRU_UPDATE);
        conntrack_unconfirmed.update(&k, &n);
        if (!u)
            netctl_count_stat(NETCTL_STAT_CT_NEW, len);
        return;
    }
    netctl_called(LRU_LOOKUP);
    e = conntrack.lookup(&k);
    netctl_called_if(!e, LRU_LOOKUP);
    if (!e)
        e = conntrack_unconfirmed.lookup(&k);
    if (e) {
        netctl_ct_refresh_out(e, p, now);
        return;
    }
    if (p->proto == 6 && (f & NETCTL_TCP_RST))
        return;  /* a reset for a flow not tracked: nothing to remember */
    struct netctl_ct_entry n = {};
    n.created_ns = now;
    n.seen_ns = now;
    n.packets_out = 1;
    if (p->proto == 6) {
        /* A segment of a flow older than the policy (or than its entry): picked up, with
         * the largest window scale there can be, since the SYN that told it was missed. */
        n.flags = NETCTL_CT_F_PICKUP;
        n.wscale = NETCTL_CT_MAX_WSCALE;
        n.our_start = p->tcp_seq;
        n.our_end = p->tcp_seq;
        netctl_ct_our_segment(&n, p);
        if (f & NETCTL_TCP_FIN)
            n.state = NETCTL_CT_CLOSING;
    }
    netctl_called(LRU_UPDATE);
    conntrack_unconfirmed.update(&k, &n);
    netctl_count_stat(NETCTL_STAT_CT_NEW, len);
}

/* An incoming RST or FIN lies in the window this host advertised (as nf_conntrack's
 * tcp_in_window judges it): at most the window's right edge, and at most the largest window
 * below what the host acknowledged (a FIN sent again).  Before the host has acknowledged
 * anything there is nothing to judge by. */
static __always_inline int netctl_ct_in_window(struct netctl_ct_entry *e, __u32 seq)
{
    if (!(e->flags & NETCTL_CT_F_ACKED))
        return 1;
    return !netctl_seq_after(seq, e->our_maxend) &&
           !netctl_seq_before(seq, e->our_ack - e->our_maxwin);
}

/* An incoming segment acknowledges what this host sent: nothing beyond it, and after the
 * SYN or SYN-ACK that opened the entry (a flow picked up mid-stream: at most the largest
 * window behind it). */
static __always_inline int netctl_ct_acks_ours(struct netctl_ct_entry *e, struct netctl_pkt *p)
{
    if (!(p->tcp_flags & NETCTL_TCP_ACK) || netctl_seq_after(p->tcp_ack, e->our_end))
        return 0;
    if (e->flags & NETCTL_CT_F_PICKUP)
        return e->our_end - p->tcp_ack <= NETCTL_CT_PICKUP_ACK_WINDOW;
    return netctl_seq_after(p->tcp_ack, e->our_start);
}

/* The first reply to an unconfirmed TCP flow: -1 not valid, 0 valid but it confirms
 * nothing (a RST), 1 it confirms the flow.  The host sent the SYN: a SYN-ACK or RST that
 * acknowledges it.  The host sent the SYN-ACK, or was picked up mid-stream: a RST in the
 * window, or a segment without SYN that acknowledges what the host sent (and, a FIN, lies
 * in the window). */
static __always_inline int netctl_ct_first_reply(struct netctl_ct_entry *e, struct netctl_pkt *p)
{
    __u8 f = p->tcp_flags;
    if (e->flags & NETCTL_CT_F_SYN) {
        if (!netctl_ct_acks_ours(e, p))
            return -1;
        if (f & NETCTL_TCP_RST)
            return 0;
        return (f & NETCTL_TCP_SYN) ? 1 : -1;
    }
    if (f & NETCTL_TCP_RST)
        return netctl_ct_in_window(e, p->tcp_seq) ? 0 : -1;
    if ((f & NETCTL_TCP_SYN) || !netctl_ct_acks_ours(e, p))
        return -1;
    if ((f & NETCTL_TCP_FIN) && !netctl_ct_in_window(e, p->tcp_seq))
        return -1;
    return 1;
}

/* Ingress: whether the packet is a valid reply to a live tracked flow (then it is
 * accepted, and an unconfirmed flow is confirmed). */
static __always_inline int netctl_ct_reply(struct netctl_pkt *p, struct netctl_config *cfg,
                                           __u32 len)
{
    struct netctl_ct_key k = {};

    if (p->fragment || !netctl_ct_own_key(p, &k))
        return 0;
    int tcp = p->proto == 6;
    __u8 f = p->tcp_flags;
    if (tcp && (f & NETCTL_TCP_SYN) && !(f & NETCTL_TCP_ACK))
        return 0;  /* a bare SYN opens a connection: never a reply */
    /* The clock is read only for a packet that meets an entry: most packets at a busy
     * ingress are no reply, and the read costs about as much as the lookups. */
    __u64 now;
    netctl_called(LRU_LOOKUP);
    struct netctl_ct_entry *e = conntrack.lookup(&k);
    if (e) {
        netctl_called(KTIME);
        now = bpf_ktime_get_ns();
        if (now - e->seen_ns > netctl_ct_timeout_ns(cfg, p->proto, e->state)) {
            netctl_called(LRU_DELETE);
            conntrack.delete(&k);
            netctl_count_stat(NETCTL_STAT_CT_EXPIRED, len);
            return 0;
        }
        if (tcp && (f & (NETCTL_TCP_FIN | NETCTL_TCP_RST)) &&
            !netctl_ct_in_window(e, p->tcp_seq)) {
            netctl_count_stat(NETCTL_STAT_CT_INVALID, len);
            return 0;
        }
        e->seen_ns = now;
        e->packets_in += 1;
        if (tcp && (f & (NETCTL_TCP_FIN | NETCTL_TCP_RST)))
            e->state = NETCTL_CT_CLOSING;
        netctl_count_stat(NETCTL_STAT_CT_REPLY, len);
        return 1;
    }
    netctl_called(LRU_LOOKUP);
    e = conntrack_unconfirmed.lookup(&k);
    if (!e)
        return 0;
    netctl_called(KTIME);
    now = bpf_ktime_get_ns();
    if (now - e->seen_ns > netctl_ct_timeout_ns(cfg, p->proto, e->state)) {
        netctl_called(LRU_DELETE);
        conntrack_unconfirmed.delete(&k);
        netctl_count_stat(NETCTL_STAT_CT_UNCONFIRMED_EXPIRED, len);
        return 0;
    }
    int confirm = 1;
    if (tcp) {
        confirm = netctl_ct_first_reply(e, p);
        if (confirm < 0) {
            netctl_count_stat(NETCTL_STAT_CT_INVALID, len);
            return 0;
        }
        if (confirm && (e->flags & NETCTL_CT_F_SYN)) {
            /* The SYN-ACK to this host's SYN: the peer sends from its ISN + 1 on, into the
             * window the SYN offered. */
            e->our_ack = p->tcp_seq + 1;
            e->our_maxend = e->our_ack + e->our_maxwin;
            e->flags |= NETCTL_CT_F_ACKED;
        }
    }
    e->seen_ns = now;
    e->packets_in += 1;
    e->state = tcp && (f & (NETCTL_TCP_FIN | NETCTL_TCP_RST)) ? NETCTL_CT_CLOSING
                                                               : NETCTL_CT_ESTABLISHED;
    netctl_called_if(confirm, LRU_UPDATE);
    if (confirm && conntrack.update(&k, e) == 0) {
        netctl_called(LRU_DELETE);
        conntrack_unconfirmed.delete(&k);
        netctl_count_stat(NETCTL_STAT_CT_CONFIRMED, len);
    }
    netctl_count_stat(NETCTL_STAT_CT_REPLY, len);
    return 1;
}

/* Ingress: whether the packet is an ICMP error (IPv4 destination unreachable, time
 * exceeded, parameter problem; ICMPv6 types 1-4, packet too big among them) about a live
 * flow this host tracks.  The error carries the start of the packet it is about, one this
 * host sent: its IP header (IPv4 options skipped; IPv6 without extension headers) and 8
 * bytes of transport header, whose destination is the peer of the flow.  As nf_conntrack
 * does, the error must be addressed to that packet's source.  A truncated or malformed
 * inner packet makes the error unrelated, never malformed. */
static __always_inline int netctl_ct_related(__u8 *data, void *end, int is_pkt,
                                             struct netctl_pkt *p, struct netctl_config *cfg,
                                             __u32 len)
{
    struct netctl_ct_key k = {};
    __u8 *h;
    __u64 l4;   /* 64-bit offsets, as in netctl_ct_wscale */
    __u8 proto;

    if (p->l4 != NETCTL_L4_ICMP || p->fragment)
        return 0;
    __u8 t = p->icmp_type;
    if (p->family == 4 ? (t != 3 && t != 11 && t != 12) : (t < 1 || t > 4))
        return 0;
    __u64 flen = p->len;
    __u64 off = p->l4_off + 8;
    if (p->family == 4) {
        NETCTL_CT_READ(h, off, 20, return 0);
        __u64 ihl = h[0] & 15;
        if ((h[0] >> 4) != 4 || ihl < 5 || (netctl_be16(h + 6) & 0x1fff))
            return 0;  /* not IPv4, or a non-first fragment (no ports) */
        proto = h[9];
        __builtin_memcpy(k.daddr, h + 12, 4);   /* its source: this host */
        __builtin_memcpy(k.saddr, h + 16, 4);   /* its destination: the peer */
        l4 = off + ihl * 4;
    } else {
        NETCTL_CT_READ(h, off, 40, return 0);
        if ((h[0] >> 4) != 6)
            return 0;
        proto = h[6];
        __builtin_memcpy(k.daddr, h + 8, 16);
        __builtin_memcpy(k.saddr, h + 24, 16);
        l4 = off + 40;
    }
    __u32 *mine = (__u32 *)k.daddr;
    __u32 *to = (__u32 *)p->dst.v6.addr;
    if (mine[0] != to[0] ||
        (p->family == 6 && (mine[1] != to[1] || mine[2] != to[2] || mine[3] != to[3])))
        return 0;
    NETCTL_CT_READ(h, l4, 8, return 0);
    if (proto == 6 || proto == 17) {
        k.sport = netctl_be16(h + 2);
        k.dport = netctl_be16(h);
    } else if (proto == (p->family == 4 ? 1 : 58) && h[0] == (p->family == 4 ? 8 : 128)) {
        k.sport = netctl_be16(h + 4);   /* an echo request: its identifier */
    } else {
        return 0;
    }
    k.family = p->family;
    k.proto = proto;
    netctl_called(LRU_LOOKUP);
    struct netctl_ct_entry *e = conntrack.lookup(&k);
    netctl_called_if(!e, LRU_LOOKUP);
    if (!e)
        e = conntrack_unconfirmed.lookup(&k);
    netctl_called_if(e, KTIME);
    if (!e || bpf_ktime_get_ns() - e->seen_ns > netctl_ct_timeout_ns(cfg, proto, e->state))
        return 0;
    netctl_count_stat(NETCTL_STAT_CT_RELATED, len);
    return 1;
}

/* Ingress, before the rules: a valid reply to a tracked flow, or an ICMP error about one. */
static __always_inline int netctl_ct_ingress(__u8 *data, void *end, int is_pkt,
                                             struct netctl_pkt *p, struct netctl_config *cfg,
                                             __u32 len)
{
    return netctl_ct_reply(p, cfg, len) || netctl_ct_related(data, end, is_pkt, p, cfg, len);
}

#endif /* NETCTL_CONNTRACK_H */
