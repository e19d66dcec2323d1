/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* tc (clsact, direct action) ingress and egress: one body, two directions.
 *
 * An accepted packet returns TC_ACT_UNSPEC, not TC_ACT_OK: the next filter on the hook (one
 * that is not netctl's) still runs, as it would without netctl. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

/* bpf_skb_load_bytes reads non-linear data too (see netctl_parse.h). */
#define NETCTL_LOAD(ctx, off, buf, len) \
    bpf_skb_load_bytes((struct __sk_buff *)(ctx), off, buf, len)

#include "netctl_maps.h"
#include "netctl_parse.h"
#include "netctl_judge.h"

static __always_inline int netctl_tc(struct __sk_buff *skb, int dir)
{
    struct netctl_verdict v = netctl_judge(skb, skb->len, dir);
    return v.drop ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

int netctl_tc_ingress(struct __sk_buff *skb)
{
    return netctl_tc(skb, NETCTL_DIR_INGRESS);
}

int netctl_tc_egress(struct __sk_buff *skb)
{
    return netctl_tc(skb, NETCTL_DIR_EGRESS);
}
