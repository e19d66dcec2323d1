/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* TCP retransmits: one event per retransmitted segment, and a per-CPU count per flow
 * (kept before the ring buffer, so counts stay exact when events are lost).
 *
 * Hooks (netctl_trace.h explains the variants):
 *   tracepoint  tcp:tcp_retransmit_skb: addresses, ports, state (and err since 6.9)
 *   fentry      tcp_retransmit_skb(sk, skb, segs)
 *   kprobe      tcp_retransmit_skb, arguments from registers
 * Addresses and ports live in struct sock, which fentry and kprobe do not read (the
 * compile-time headers may not match the kernel): there the flow is the socket address.
 *
 * Constants (-D): RETRANS_EVENT_SIZE, TP_HAS_ERR, FLOW_ENTRIES.
 */
#include <uapi/linux/ptrace.h>
#include <net/sock.h>

#include "netctl_trace.h"

#define STATE_UNKNOWN (-1)

struct retrans_event {
    struct trace_head head;
    __u64 skaddr;
    __u64 skbaddr;
    __u16 family;       /* 0: addresses not known at this hook */
    __u16 sport;        /* host order */
    __u16 dport;
    __u16 has_err;
    __s32 state;        /* TCP state, STATE_UNKNOWN at fentry/kprobe */
    __s32 err;
    __u8 saddr[16];     /* IPv4 in the first 4 bytes */
    __u8 daddr[16];
};
_Static_assert(sizeof(struct retrans_event) == RETRANS_EVENT_SIZE,
               "struct retrans_event differs from its mirror in netctl/trace/_events.py");

struct flow_key {
    __u64 skaddr;       /* only when the addresses are not known (family 0) */
    __u16 family;
    __u16 sport;
    __u16 dport;
    __u16 pad;
    __u8 saddr[16];
    __u8 daddr[16];
};

BPF_PERCPU_HASH(flows, struct flow_key, u64, FLOW_ENTRIES);

static __always_inline void count_flow(struct flow_key *key)
{
    u64 one = 1;
    u64 *n = flows.lookup(key);
    if (n)
        *n += 1;
    else
        flows.update(key, &one);
}

static __always_inline int retrans_seen(struct retrans_event *ev)
{
    struct flow_key key = {};

    key.family = ev->family;
    key.sport = ev->sport;
    key.dport = ev->dport;
    if (ev->family) {
        __builtin_memcpy(key.saddr, ev->saddr, 16);
        __builtin_memcpy(key.daddr, ev->daddr, 16);
    } else {
        key.skaddr = ev->skaddr;
    }
    count_flow(&key);
    emit(ev, sizeof(*ev));
    return 0;
}

#if WITH_TRACEPOINT
int netctl_retrans_tp(struct tracepoint__tcp__tcp_retransmit_skb *args)
{
    struct retrans_event ev = {};

    trace_head_fill(&ev.head, 0);
    ev.skaddr = (u64)args->skaddr;
    ev.skbaddr = (u64)args->skbaddr;
    ev.family = args->family;
    ev.sport = args->sport;
    ev.dport = args->dport;
    ev.state = args->state;
#if TP_HAS_ERR
    ev.err = args->err;
    ev.has_err = 1;
#endif
    if (args->family == NETCTL_AF_INET) {
        __builtin_memcpy(ev.saddr, args->saddr, 4);
        __builtin_memcpy(ev.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(ev.saddr, args->saddr_v6, 16);
        __builtin_memcpy(ev.daddr, args->daddr_v6, 16);
    }
    return retrans_seen(&ev);
}
#endif

static __always_inline int retrans_sock_only(u64 sk, u64 skb)
{
    struct retrans_event ev = {};

    trace_head_fill(&ev.head, 0);
    ev.skaddr = sk;
    ev.skbaddr = skb;
    ev.state = STATE_UNKNOWN;
    return retrans_seen(&ev);
}

#if WITH_FENTRY
KFUNC_PROBE(tcp_retransmit_skb, struct sock *sk, struct sk_buff *skb, int segs)
{
    return retrans_sock_only((u64)sk, (u64)skb);
}
#endif

#if WITH_KPROBE
int netctl_retrans_kprobe(struct pt_regs *ctx)
{
    return retrans_sock_only(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx));
}
#endif
