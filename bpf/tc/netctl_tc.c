/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* tc (clsact, direct action) ingress and egress: one body, two directions, each for
 * Ethernet devices and for devices without a link-layer header (tun, WireGuard, IP
 * tunnels: the frame starts at the IP header and skb->protocol says which); ingress also
 * forwards what a route takes.
 *
 * An accepted packet returns TC_ACT_UNSPEC, not TC_ACT_OK: the next filter on the hook (one
 * that is not netctl's) still runs, as it would without netctl. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "netctl_maps.h"
#include "netctl_stats.h"
#include "netctl_parse.h"
#include "netctl_conntrack.h"
#include "netctl_judge.h"
#include "netctl_forward.h"

static __always_inline int netctl_tc(struct __sk_buff *skb, int dir, int l3)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    __u32 len = skb->len;
    __u32 linear = end - data;
    struct netctl_verdict v;
    /* The kernel takes a frame's outer VLAN tag out of the data into the skb before tc
     * ingress sees it (and egress may carry one there too): it counts as a tag, as on XDP,
     * where it is still in the frame. */
    __u8 vlans = skb->vlan_present ? 1 : 0;
    __u16 l3_type = l3 ? bpf_ntohs(skb->protocol) : 0;

    netctl_called(RUN);
    /* The parsed packet lives in per-CPU map memory (netctl_maps.h says why). */
    __u32 slot = 0;
    netctl_called(PERCPU_ARRAY);
    struct netctl_pkt *p = netctl_packet.lookup(&slot);
    if (!p)
        return TC_ACT_UNSPEC;   /* never: a one-entry array read at 0 */
    __builtin_memset(p, 0, sizeof(*p));
#ifdef NETCTL_TEST_FORCE_COPY
    /* Test-only (bench/budget.py): the copy path for every frame, which a test run never
     * takes on its own (its skb is all linear). */
    linear = 0;
#endif
    if (linear >= len || linear >= NETCTL_HDR_WINDOW) {
        netctl_called(TC_DIRECT);
        v = netctl_judge(data, end, 1, len, dir, p, l3, l3_type, vlans);
    } else {
        /* Headers beyond the linear area (e.g. frames from a packet socket's TX ring):
         * copy the window with one call instead of reading past data_end. */
        __u32 zero = 0;
        netctl_called(TC_COPY);
        netctl_called(PERCPU_ARRAY);
        struct netctl_window *copy = netctl_window_copy.lookup(&zero);
        if (!copy)
            return TC_ACT_SHOT;
        __u32 n = len < NETCTL_HDR_WINDOW ? len : NETCTL_HDR_WINDOW;
        if (n < 1)
            n = 1;
        netctl_called(LOAD_BYTES);
        if (bpf_skb_load_bytes(skb, 0, copy->b, n) < 0)
            return TC_ACT_SHOT;
        v = netctl_judge(copy->b, copy->b + n, 0, len, dir, p, l3, l3_type, vlans);
    }
    netctl_emit(p, &v, skb->ifindex, NETCTL_HOOK_TC, dir);
    if (v.drop)
        return TC_ACT_SHOT;
    /* Forwarding from devices without a link-layer header is left to the kernel. */
    if (dir == NETCTL_DIR_INGRESS && v.ip && !l3) {
        __u32 gen = v.gen;
        netctl_called(ARRAY);
        struct netctl_config *cfg = config.lookup(&gen);
        if (cfg) {
            int action = netctl_forward_tc(skb, p, gen, cfg, len);
            if (action != NETCTL_NOT_FORWARDED)
                return action;
        }
    }
    return TC_ACT_UNSPEC;
}

int netctl_tc_ingress(struct __sk_buff *skb)
{
    return netctl_tc(skb, NETCTL_DIR_INGRESS, 0);
}

int netctl_tc_egress(struct __sk_buff *skb)
{
    return netctl_tc(skb, NETCTL_DIR_EGRESS, 0);
}

int netctl_tc_ingress_l3(struct __sk_buff *skb)
{
    return netctl_tc(skb, NETCTL_DIR_INGRESS, 1);
}

int netctl_tc_egress_l3(struct __sk_buff *skb)
{
    return netctl_tc(skb, NETCTL_DIR_EGRESS, 1);
}
