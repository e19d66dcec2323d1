/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* XDP ingress: judge each frame before the kernel builds an skb (on drivers with native
 * XDP).  On veth and other virtual devices XDP starts from an skb it must copy, so
 * `xdp: auto` uses tc ingress there instead (DESIGN.md, measured). */
#include <uapi/linux/bpf.h>

/* bpf_xdp_load_bytes reads across fragments of multi-buffer frames as well. */
#define NETCTL_LOAD(ctx, off, buf, len) bpf_xdp_load_bytes((struct xdp_md *)(ctx), off, buf, len)

#include "netctl_maps.h"
#include "netctl_parse.h"
#include "netctl_judge.h"

int netctl_xdp_ingress(struct xdp_md *ctx)
{
    __u32 len = bpf_xdp_get_buff_len(ctx);
    struct netctl_verdict v = netctl_judge(ctx, len, NETCTL_DIR_INGRESS);
    return v.drop ? XDP_DROP : XDP_PASS;
}
