/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet drops: every skb the kernel frees as dropped, with the drop reason, where it was
 * dropped (the caller's address) and the kernel stack.  Each drop is counted per reason
 * and per location in per-CPU hashes before it is offered to the ring buffer, so a flood
 * is counted exactly even when the ring buffer overflows and events are lost.
 *
 * Hooks (netctl_trace.h explains the variants):
 *   tracepoint  skb:kfree_skb (reason since 5.17; location is in the record)
 *   fentry      the function the tracepoint sits in, by DROP_SIG:
 *                 1 sk_skb_reason_drop(sk, skb, reason)   6.11+ (kfree_skb_reason is
 *                   an inline wrapper of it there)
 *                 2 kfree_skb_reason(skb, reason)          5.17 .. 6.10
 *                 3 kfree_skb(skb)                         older: no reason
 *   kprobe      the same function; arguments from registers, location from the return
 *               address on top of the stack at entry
 *
 * Constants (-D, from netctl/trace): DROP_EVENT_SIZE, DROP_SIG, REASON_NOT_DROPPED_YET and
 * REASON_CONSUMED (values of enum skb_drop_reason in the running kernel's BTF; not defined
 * when the kernel has no such value), TP_HAS_REASON (the tracepoint record has `reason`),
 * STACK_ENTRIES, LOCATION_ENTRIES; SKB_OFF_HEAD, SKB_OFF_NETWORK_HEADER,
 * SKB_OFF_TRANSPORT_HEADER, SKB_OFF_PROTOCOL (offsets of those struct sk_buff members in
 * the running kernel, from its BTF; not defined when BTF lacks one: then events carry no
 * addresses).
 *
 * The flow (addresses, protocol, ports) is read from the packet's headers through
 * skb->head + skb->network_header with bpf_probe_read_kernel; only IPv4 and IPv6, ports
 * only for TCP and UDP in a first fragment.  A header the kernel had not parsed yet
 * (network_header unset) leaves the flow empty.
 */
#include <uapi/linux/ptrace.h>
#include <net/sock.h>
#include <net/dropreason.h>     /* enum skb_drop_reason: the tracepoint's args struct uses it */

#include "netctl_trace.h"

#define REASON_UNKNOWN 0xffffffffu

struct drop_event {
    struct trace_head head;
    __u64 skbaddr;
    __u64 location;     /* 0: not known at this hook (user space takes it from the stack) */
    __u32 reason;       /* REASON_UNKNOWN: not known at this hook */
    __u16 protocol;     /* ethertype, host order */
    __u8 has_protocol;
    __u8 pad;
    __s32 stack_id;     /* in `stacks`, or a negative errno */
    __u16 family;       /* NETCTL_AF_INET(6), or 0: no flow read */
    __u8 l4proto;
    __u8 pad2;
    __u16 sport;        /* host order; 0: none */
    __u16 dport;
    __u32 pad3;
    __u8 saddr[16];
    __u8 daddr[16];
};
_Static_assert(sizeof(struct drop_event) == DROP_EVENT_SIZE,
               "struct drop_event differs from its mirror in netctl/trace/_events.py");

BPF_STACK_TRACE(stacks, STACK_ENTRIES);
BPF_PERCPU_HASH(by_reason, u32, u64, 1024);
BPF_PERCPU_HASH(by_location, u64, u64, LOCATION_ENTRIES);

static __always_inline void count_reason(u32 reason)
{
    u64 one = 1;
    u64 *n = by_reason.lookup(&reason);
    if (n)
        *n += 1;
    else
        by_reason.update(&reason, &one);
}

static __always_inline void count_location(u64 location)
{
    u64 one = 1;
    u64 *n = by_location.lookup(&location);
    if (n)
        *n += 1;
    else
        by_location.update(&location, &one);
}

#if defined(SKB_OFF_HEAD) && defined(SKB_OFF_NETWORK_HEADER) && \
    defined(SKB_OFF_TRANSPORT_HEADER) && defined(SKB_OFF_PROTOCOL)
#define HEADER_UNSET 0xffff
static __always_inline void read_flow(struct drop_event *ev, u64 skb)
{
    unsigned char *head = 0;
    u16 nh = HEADER_UNSET, th = HEADER_UNSET;
    __be16 proto = 0;
    u32 l4off = 0;
    u8 l4 = 0;

    bpf_probe_read_kernel(&head, sizeof(head), (void *)(skb + SKB_OFF_HEAD));
    bpf_probe_read_kernel(&nh, sizeof(nh), (void *)(skb + SKB_OFF_NETWORK_HEADER));
    bpf_probe_read_kernel(&th, sizeof(th), (void *)(skb + SKB_OFF_TRANSPORT_HEADER));
    bpf_probe_read_kernel(&proto, sizeof(proto), (void *)(skb + SKB_OFF_PROTOCOL));
    if (!head || nh == HEADER_UNSET)
        return;
    if (proto == bpf_htons(0x0800)) {
        u8 ip[20];
        if (bpf_probe_read_kernel(ip, sizeof(ip), head + nh) || (ip[0] >> 4) != 4)
            return;
        ev->family = NETCTL_AF_INET;
        __builtin_memcpy(ev->saddr, &ip[12], 4);
        __builtin_memcpy(ev->daddr, &ip[16], 4);
        l4 = ip[9];
        if (((ip[6] & 0x1f) << 8 | ip[7]) != 0)
            l4off = 0;      /* not the first fragment: no ports */
        else
            l4off = nh + (ip[0] & 0xf) * 4;
    } else if (proto == bpf_htons(0x86DD)) {
        u8 ip6[40];
        if (bpf_probe_read_kernel(ip6, sizeof(ip6), head + nh) || (ip6[0] >> 4) != 6)
            return;
        ev->family = NETCTL_AF_INET6;
        __builtin_memcpy(ev->saddr, &ip6[8], 16);
        __builtin_memcpy(ev->daddr, &ip6[24], 16);
        l4 = ip6[6];
        l4off = nh + 40;
    } else {
        return;
    }
    ev->l4proto = l4;
    if ((l4 == IPPROTO_TCP || l4 == IPPROTO_UDP) && l4off) {
        u16 ports[2];
        u32 off = th != HEADER_UNSET && th > nh ? th : l4off;
        if (!bpf_probe_read_kernel(ports, sizeof(ports), head + off)) {
            ev->sport = bpf_ntohs(ports[0]);
            ev->dport = bpf_ntohs(ports[1]);
        }
    }
}
#else
static __always_inline void read_flow(struct drop_event *ev, u64 skb) {}
#endif

static __always_inline int drop_seen(void *ctx, u64 skbaddr, u32 reason, u64 location,
                                     u16 protocol, u8 has_protocol)
{
    /* Freed but not dropped: these are no drops (consumed packets, or not yet decided). */
#ifdef REASON_NOT_DROPPED_YET
    if (reason == REASON_NOT_DROPPED_YET)
        return 0;
#endif
#ifdef REASON_CONSUMED
    if (reason == REASON_CONSUMED)
        return 0;
#endif
    count_reason(reason);
    if (location)
        count_location(location);

    struct drop_event ev = {};
    trace_head_fill(&ev.head, 0);
    ev.skbaddr = skbaddr;
    ev.location = location;
    ev.reason = reason;
    ev.protocol = protocol;
    ev.has_protocol = has_protocol;
    ev.stack_id = stacks.get_stackid(ctx, 0);
    read_flow(&ev, skbaddr);
    emit(&ev, sizeof(ev));
    return 0;
}

#if WITH_TRACEPOINT
int netctl_drop_tp(struct tracepoint__skb__kfree_skb *args)
{
#if TP_HAS_REASON
    u32 reason = args->reason;
#else
    u32 reason = REASON_UNKNOWN;
#endif
    return drop_seen(args, (u64)args->skbaddr, reason, (u64)args->location, args->protocol, 1);
}
#endif

#if WITH_FENTRY
#if DROP_SIG == 1
KFUNC_PROBE(sk_skb_reason_drop, struct sock *sk, struct sk_buff *skb,
            enum skb_drop_reason reason)
{
    return drop_seen(ctx, (u64)skb, reason, 0, 0, 0);
}
#elif DROP_SIG == 2
KFUNC_PROBE(kfree_skb_reason, struct sk_buff *skb, enum skb_drop_reason reason)
{
    return drop_seen(ctx, (u64)skb, reason, 0, 0, 0);
}
#else
KFUNC_PROBE(kfree_skb, struct sk_buff *skb)
{
    return drop_seen(ctx, (u64)skb, REASON_UNKNOWN, 0, 0, 0);
}
#endif
#endif

#if WITH_KPROBE
int netctl_drop_kprobe(struct pt_regs *ctx)
{
    u64 ret = 0;    /* at function entry the return address is on top of the stack */
    bpf_probe_read_kernel(&ret, sizeof(ret), (void *)PT_REGS_SP(ctx));
#if DROP_SIG == 1
    return drop_seen(ctx, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), ret, 0, 0);
#elif DROP_SIG == 2
    return drop_seen(ctx, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), ret, 0, 0);
#else
    return drop_seen(ctx, PT_REGS_PARM1(ctx), REASON_UNKNOWN, ret, 0, 0);
#endif
}
#endif
