/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* tc (clsact, direct action) ingress and egress: one body, two directions; ingress also
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

static __always_inline int netctl_tc(struct __sk_buff *skb, int dir)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    __u32 len = skb->len;
    __u32 linear = end - data;
    struct netctl_pkt p = {};
    struct netctl_verdict v;

    if (linear >= len || linear >= NETCTL_HDR_WINDOW) {
        v = netctl_judge(data, end, 1, len, dir, &p);
    } else {
        /* Headers beyond the linear area (e.g. frames from a packet socket's TX ring):
         * copy the window with one call instead of reading past data_end. */
        __u32 zero = 0;
        struct netctl_window *copy = netctl_window_copy.lookup(&zero);
        if (!copy)
            return TC_ACT_SHOT;
        __u32 n = len < NETCTL_HDR_WINDOW ? len : NETCTL_HDR_WINDOW;
        if (n < 1)
            n = 1;
        if (bpf_skb_load_bytes(skb, 0, copy->b, n) < 0)
            return TC_ACT_SHOT;
        v = netctl_judge(copy->b, copy->b + n, 0, len, dir, &p);
    }
    netctl_emit(&p, &v, skb->ifindex, NETCTL_HOOK_TC, dir);
    if (v.drop)
        return TC_ACT_SHOT;
    if (dir == NETCTL_DIR_INGRESS && v.ip) {
        __u32 gen = v.gen;
        struct netctl_config *cfg = config.lookup(&gen);
        if (cfg) {
            int action = netctl_forward_tc(skb, &p, gen, cfg, len);
            if (action != NETCTL_NOT_FORWARDED)
                return action;
        }
    }
    return TC_ACT_UNSPEC;
}

int netctl_tc_ingress(struct __sk_buff *skb)
{
    return netctl_tc(skb, NETCTL_DIR_INGRESS);
}

int netctl_tc_egress(struct __sk_buff *skb)
{
    return netctl_tc(skb, NETCTL_DIR_EGRESS);
}
