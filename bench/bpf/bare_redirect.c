// SPDX-License-Identifier: GPL-2.0
/* The limit of forwarding on each hook (bench/forwarding.py): tc hands every packet to
 * bpf_redirect_neigh (the kernel resolves the MACs), XDP rewrites the MACs and redirects.
 * -D constants: OUT_IFINDEX, VIA_IPV4 (the next hop, network order as a u32), SINK_MAC and
 * ROUTER_MAC (six comma-separated bytes each). */
#include <uapi/linux/pkt_cls.h>

/* bcc 0.26 declares no bpf_redirect_neigh: helper 152. */
static long (*redirect_neigh)(u32, struct bpf_redir_neigh *, int, u64) = (void *)152;

int bare_tc(struct __sk_buff *skb)
{
    struct bpf_redir_neigh nh = { .nh_family = 2 };
    nh.ipv4_nh = VIA_IPV4;
    return redirect_neigh(OUT_IFINDEX, &nh, sizeof(nh), 0);
}

int bare_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    if (data + 14 > end)
        return XDP_PASS;
    unsigned char dst[6] = { SINK_MAC }, src[6] = { ROUTER_MAC };
    __builtin_memcpy(data, dst, 6);
    __builtin_memcpy(data + 6, src, 6);
    return bpf_redirect(OUT_IFINDEX, 0);
}
