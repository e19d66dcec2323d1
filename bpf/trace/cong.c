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
 *   tracepoint  tcp:tcp_cong_state_set and tcp:tcp_probe
 *   fentry      tcp_set_ca_state(sk, ca_state)  (state changes only: cwnd and the
 *   kprobe      tcp_set_ca_state                  addresses live in struct fields)
 *
 * Constants (-D): CONG_EVENT_SIZE, PROBE_INTERVAL_NS, FLOW_ENTRIES.
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
#if TP_PROBE_HAS_SKADDR
BPF_TABLE("lru_hash", u64, u64, probe_last_sk, FLOW_ENTRIES);
#else
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
