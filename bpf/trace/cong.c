/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* TCP congestion: congestion-state changes (Open, Disorder, CWR, Recovery, Loss) and
 * samples of the congestion window, slow-start threshold and smoothed RTT.
 *
 * The kernel says only the new state; the old one is what this tracer last saw for the
 * socket (an LRU hash keyed by socket address), OLD_UNKNOWN the first time.  Setting the
 * state a socket already has is no change and makes no event.
 *
 * tcp:tcp_probe fires for every ACK received, so it is sampled here, in the kernel: at most
 * one event per flow (direction included) per PROBE_INTERVAL_NS, decided with a per-flow
 * last-time LRU hash.  Monitoring a busy host thus cannot swamp the ring buffer; the
 * probes seen and sent are counted.
 *
 * Hooks (netctl_trace.h explains the variants):
 *   tracepoint  tcp:tcp_cong_state_set and tcp:tcp_probe, or tcp_probe as a raw
 *               tracepoint where BTF gives the offsets it reads (WITH_RAW_PROBE): the
 *               kernel then copies nothing for the ACKs that are not sampled
 *   fentry      tcp_set_ca_state(sk, ca_state)  (state changes only: cwnd and the
 *   kprobe      tcp_set_ca_state                  addresses live in struct fields)
 *
 * Constants (-D): CONG_EVENT_SIZE, PROBE_INTERVAL_NS, FLOW_ENTRIES; for the raw
 * tcp_probe WITH_RAW_PROBE, CA_CWR, CA_RECOVERY and the SK_OFF_*, TP_OFF_*, SKB_OFF_*
 * offsets (netctl/trace/_kinds.py RAW_PROBE_FIELDS).
 */
#include <uapi/linux/ptrace.h>
#include <net/sock.h>

#include "netctl_trace.h"

#define CONG_STATE 0
#define CONG_PROBE 1
#define OLD_UNKNOWN 0xff
#define STATE_SLOTS 16

struct cong_event {
    struct trace_head head;     /* what: CONG_STATE or CONG_PROBE */
    __u64 skaddr;
    __u64 sock_cookie;
    __u16 family;               /* 0: addresses not known at this hook */
    __u16 sport;                /* host order */
    __u16 dport;
    __u8 state;                 /* CONG_STATE: the new state */
    __u8 old_state;             /* CONG_STATE: the last state seen, or OLD_UNKNOWN */
    __u8 saddr[16];
    __u8 daddr[16];
    __u32 snd_cwnd;             /* CONG_PROBE: packets */
    __u32 ssthresh;
    __u32 srtt_us;
    __u32 snd_wnd;
    __u32 rcv_wnd;
    __u32 data_len;
    __u32 snd_nxt;
    __u32 snd_una;
};
_Static_assert(sizeof(struct cong_event) == CONG_EVENT_SIZE,
               "struct cong_event differs from its mirror in netctl/trace/_events.py");

struct probe_key {
    __u16 family;
    __u16 sport;
    __u16 dport;
    __u16 pad;
    __u8 saddr[16];
    __u8 daddr[16];
};

BPF_TABLE("lru_hash", u64, u8, last_state, FLOW_ENTRIES);
#if TP_PROBE_HAS_SKADDR || defined(WITH_RAW_PROBE)
BPF_TABLE("lru_hash", u64, u64, probe_last_sk, FLOW_ENTRIES);
#endif
#if !TP_PROBE_HAS_SKADDR
BPF_TABLE("lru_hash", struct probe_key, u64, probe_last, FLOW_ENTRIES);
#endif
BPF_PERCPU_ARRAY(state_count, u64, STATE_SLOTS);
BPF_PERCPU_ARRAY(probe_count, u64, 2);      /* [0] seen, [1] sent */

static __always_inline int state_seen(struct cong_event *ev)
{
    u64 sk = ev->skaddr;
    u8 state = ev->state;
    u8 *old = last_state.lookup(&sk);
    int slot = state & (STATE_SLOTS - 1);
    u64 *n = state_count.lookup(&slot);

    if (old && *old == state)
        return 0;   /* set again to what it was: no change */
    ev->old_state = old ? *old : OLD_UNKNOWN;
    last_state.update(&sk, &state);
    if (n)
        *n += 1;
    emit(ev, sizeof(*ev));
    return 0;
}

static __always_inline void probe_counted(int slot)
{
    u64 *n = probe_count.lookup(&slot);
    if (n)
        *n += 1;
}

#if WITH_TRACEPOINT
int netctl_cong_state_tp(struct tracepoint__tcp__tcp_cong_state_set *args)
{
    struct cong_event ev = {};

    trace_head_fill(&ev.head, CONG_STATE);
    ev.skaddr = (u64)args->skaddr;
    ev.family = args->family;
    ev.sport = args->sport;
    ev.dport = args->dport;
    ev.state = args->cong_state;
    if (args->family == NETCTL_AF_INET) {
        __builtin_memcpy(ev.saddr, args->saddr, 4);
        __builtin_memcpy(ev.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(ev.saddr, args->saddr_v6, 16);
        __builtin_memcpy(ev.daddr, args->daddr_v6, 16);
    }
    return state_seen(&ev);
}

/* saddr/daddr of tcp_probe are a struct sockaddr_in or sockaddr_in6 (28 bytes, zeroed
 * first by the kernel): the address starts at byte 4 (IPv4) or 8 (IPv6). */
int netctl_cong_probe_tp(struct tracepoint__tcp__tcp_probe *args)
{
    struct probe_key key = {};
    u64 now = bpf_ktime_get_ns();

    probe_counted(0);
#if TP_PROBE_HAS_SKADDR
    /* This runs for every ACK: the socket's address is the flow, and an 8-byte key hashes
     * five times faster than the 40-byte tuple (which kernels without skaddr fall back to). */
    u64 sk = (u64)args->skaddr;
    u64 *seen = probe_last_sk.lookup(&sk);
    if (seen && now - *seen < PROBE_INTERVAL_NS)
        return 0;
    probe_last_sk.update(&sk, &now);
#endif
    key.family = args->family;
    key.sport = args->sport;
    key.dport = args->dport;
    if (args->family == NETCTL_AF_INET) {
        __builtin_memcpy(key.saddr, &args->saddr[4], 4);
        __builtin_memcpy(key.daddr, &args->daddr[4], 4);
    } else {
        __builtin_memcpy(key.saddr, &args->saddr[8], 16);
        __builtin_memcpy(key.daddr, &args->daddr[8], 16);
    }
#if !TP_PROBE_HAS_SKADDR
    u64 *last = probe_last.lookup(&key);
    if (last && now - *last < PROBE_INTERVAL_NS)
        return 0;
    probe_last.update(&key, &now);
#endif
    probe_counted(1);

    struct cong_event ev = {};
    trace_head_fill(&ev.head, CONG_PROBE);
#if TP_PROBE_HAS_SKADDR
    ev.skaddr = (u64)args->skaddr;
#endif
#if TP_PROBE_HAS_COOKIE
    ev.sock_cookie = args->sock_cookie;
#endif
    ev.family = key.family;
    ev.sport = key.sport;
    ev.dport = key.dport;
    __builtin_memcpy(ev.saddr, key.saddr, 16);
    __builtin_memcpy(ev.daddr, key.daddr, 16);
    ev.snd_cwnd = args->snd_cwnd;
    ev.ssthresh = args->ssthresh;
    ev.srtt_us = args->srtt;
    ev.snd_wnd = args->snd_wnd;
    ev.rcv_wnd = args->rcv_wnd;
    ev.data_len = args->data_len;
    ev.snd_nxt = args->snd_nxt;
    ev.snd_una = args->snd_una;
    emit(&ev, sizeof(ev));
    return 0;
}
#endif

#if WITH_TRACEPOINT && defined(WITH_RAW_PROBE)
static __always_inline u32 read_u32(u64 base, int off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

/* tcp_probe as a raw tracepoint: args[0] is the socket, args[1] the skb.  An ACK that is
 * not sampled costs a clock read and one lookup; a sample reads its fields at the BTF
 * offsets, with the tracepoint's meaning: srtt in microseconds (srtt_us >> 3), ssthresh as
 * tcp_current_ssthresh() gives it (the CA state is this tracer's own record of the socket,
 * Open when it has none), data_len the bytes after the TCP header (not cut to the
 * tracepoint's 16 bits).  sock_cookie is the socket's cookie if one was ever made (the
 * tracepoint makes one), else 0. */
int netctl_cong_probe_raw(struct bpf_raw_tracepoint_args *ctx)
{
    u64 sk = ctx->args[0];
    u64 skb = ctx->args[1];
    u64 now = bpf_ktime_get_ns();

    probe_counted(0);
    u64 *seen = probe_last_sk.lookup(&sk);
    if (seen && now - *seen < PROBE_INTERVAL_NS)
        return 0;
    probe_last_sk.update(&sk, &now);
    probe_counted(1);

    struct cong_event ev = {};
    u16 family = 0, num = 0, dport = 0;
    trace_head_fill(&ev.head, CONG_PROBE);
    ev.skaddr = sk;
    bpf_probe_read_kernel(&family, sizeof(family), (void *)(sk + SK_OFF_FAMILY));
    bpf_probe_read_kernel(&num, sizeof(num), (void *)(sk + SK_OFF_NUM));
    bpf_probe_read_kernel(&dport, sizeof(dport), (void *)(sk + SK_OFF_DPORT));
    ev.family = family;
    ev.sport = num;                         /* skc_num: host order already */
    ev.dport = __builtin_bswap16(dport);    /* skc_dport: network order (x86 host) */
    if (family == NETCTL_AF_INET) {
        bpf_probe_read_kernel(ev.saddr, 4, (void *)(sk + SK_OFF_RCV_SADDR));
        bpf_probe_read_kernel(ev.daddr, 4, (void *)(sk + SK_OFF_DADDR));
    } else {
        bpf_probe_read_kernel(ev.saddr, 16, (void *)(sk + SK_OFF_V6_RCV_SADDR));
        bpf_probe_read_kernel(ev.daddr, 16, (void *)(sk + SK_OFF_V6_DADDR));
    }
    bpf_probe_read_kernel(&ev.sock_cookie, sizeof(ev.sock_cookie),
                          (void *)(sk + SK_OFF_COOKIE));

    u32 cwnd = read_u32(sk, TP_OFF_SND_CWND);
    u32 ssthresh = read_u32(sk, TP_OFF_SND_SSTHRESH);
    u8 *state = last_state.lookup(&sk);
    if (!state || (*state != CA_CWR && *state != CA_RECOVERY)) {
        u32 floor = (cwnd >> 1) + (cwnd >> 2);
        if (floor > ssthresh)
            ssthresh = floor;
    }
    ev.snd_cwnd = cwnd;
    ev.ssthresh = ssthresh;
    ev.srtt_us = read_u32(sk, TP_OFF_SRTT_US) >> 3;
    ev.snd_wnd = read_u32(sk, TP_OFF_SND_WND);
    ev.rcv_wnd = read_u32(sk, TP_OFF_RCV_WND);
    ev.snd_nxt = read_u32(sk, TP_OFF_SND_NXT);
    ev.snd_una = read_u32(sk, TP_OFF_SND_UNA);

    u32 len = read_u32(skb, SKB_OFF_LEN);
    u64 data = 0;
    u8 doff = 0;
    bpf_probe_read_kernel(&data, sizeof(data), (void *)(skb + SKB_OFF_DATA));
    bpf_probe_read_kernel(&doff, sizeof(doff), (void *)(data + 12));
    u32 hdr = (doff >> 4) * 4;
    ev.data_len = len > hdr ? len - hdr : 0;
    emit(&ev, sizeof(ev));
    return 0;
}
#endif

static __always_inline int state_sock_only(u64 sk, u8 state)
{
    struct cong_event ev = {};

    trace_head_fill(&ev.head, CONG_STATE);
    ev.skaddr = sk;
    ev.state = state;
    return state_seen(&ev);
}

#if WITH_FENTRY
KFUNC_PROBE(tcp_set_ca_state, struct sock *sk, const u8 ca_state)
{
    return state_sock_only((u64)sk, ca_state);
}
#endif

#if WITH_KPROBE
int netctl_cong_kprobe(struct pt_regs *ctx)
{
    return state_sock_only(PT_REGS_PARM1(ctx), (u8)PT_REGS_PARM2(ctx));
}
#endif
