// SPDX-License-Identifier: GPL-2.0
/* The floor of classification cost: one LPM lookup on the IPv4 source and nothing else
 * (bench/costs.py compares netctl's per-packet cost with it at the same N). */
struct key4 { u32 prefixlen; u8 addr[4]; };
BPF_F_TABLE("lpm_trie", struct key4, u32, src4, 262144, BPF_F_NO_PREALLOC);

static __always_inline int judge(void *data, void *end)
{
    if (data + 34 > end)
        return 0;
    __u8 *p = data;
    if (p[12] != 0x08 || p[13] != 0x00)
        return 0;
    struct key4 k = { .prefixlen = 32 };
    __builtin_memcpy(k.addr, p + 26, 4);
    return src4.lookup(&k) != 0;
}

int lpm_xdp(struct xdp_md *ctx)
{
    return judge((void *)(long)ctx->data, (void *)(long)ctx->data_end) ? XDP_DROP : XDP_PASS;
}

int lpm_tc(struct __sk_buff *skb)
{
    return judge((void *)(long)skb->data, (void *)(long)skb->data_end) ? 2 : -1;
}
