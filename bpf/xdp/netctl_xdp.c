/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* XDP ingress: judge each frame before the kernel builds an skb (on drivers with native
 * XDP), and forward what a route takes.  On veth and other virtual devices XDP starts from
 * an skb it must copy, so `xdp: auto` uses tc ingress there instead (measured: see
 * docs/performance.md).
 *
 * Two entry points over one body: netctl_xdp_ingress for Ethernet devices, and
 * netctl_xdp_ingress_l3 for devices without a link-layer header (tun, WireGuard, IP
 * tunnels), whose frames start at the IP header; attach picks one by the device's type.
 *
 * The program is loaded without the multi-buffer (frags) flag, so the kernel only runs it
 * on frames that are wholly linear: the header window is always packet memory. */
#include <uapi/linux/bpf.h>

#include "netctl_maps.h"
#include "netctl_stats.h"
#include "netctl_parse.h"
#include "netctl_conntrack.h"
#include "netctl_judge.h"
#include "netctl_forward.h"

static __always_inline int netctl_xdp(struct xdp_md *ctx, int l3)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    netctl_called(RUN);
    /* The parsed packet lives in per-CPU map memory (netctl_maps.h says why). */
    __u32 slot = 0;
    netctl_called(PERCPU_ARRAY);
    struct netctl_pkt *p = netctl_packet.lookup(&slot);
    if (!p)
        return XDP_PASS;   /* never: a one-entry array read at 0 */
    __builtin_memset(p, 0, sizeof(*p));
    struct netctl_verdict v = netctl_judge(data, end, 1, end - data, NETCTL_DIR_INGRESS, p,
                                           l3, 0, 0);
    netctl_emit(p, &v, ctx->ingress_ifindex, NETCTL_HOOK_XDP, NETCTL_DIR_INGRESS);
    if (v.drop)
        return XDP_DROP;
    /* Forwarding rewrites MACs: only frames that have them (routes never leave by a device
     * without a link-layer header: apply refuses those). */
    if (v.ip && !l3) {
        __u32 gen = v.gen;
        netctl_called(ARRAY);
        struct netctl_config *cfg = config.lookup(&gen);
        if (cfg) {
            int action = netctl_forward_xdp(p, gen, cfg, end - data,
                                            (void *)(long)ctx->data,
                                            (void *)(long)ctx->data_end);
            if (action != NETCTL_NOT_FORWARDED)
                return action;
        }
    }
    return XDP_PASS;
}

int netctl_xdp_ingress(struct xdp_md *ctx)
{
    return netctl_xdp(ctx, 0);
}

int netctl_xdp_ingress_l3(struct xdp_md *ctx)
{
    return netctl_xdp(ctx, 1);
}
