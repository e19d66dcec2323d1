// SPDX-License-Identifier: GPL-2.0
/* A program that drops everything and counts: the ceiling of its hook (bench/systems.py). */
BPF_PERCPU_ARRAY(hits, u64, 1);

static __always_inline void hit(void)
{
    u32 k = 0;
    u64 *v = hits.lookup(&k);
    if (v)
        *v += 1;
}

int bare_xdp(struct xdp_md *ctx) { hit(); return XDP_DROP; }
int bare_tc(struct __sk_buff *skb) { hit(); return 2; /* TC_ACT_SHOT */ }
