// SPDX-License-Identifier: GPL-2.0
/* The forwarding bench's sink: counts what arrives and drops it (bench/forwarding.py). */
BPF_PERCPU_ARRAY(hits, u64, 1);

int sink(struct xdp_md *ctx)
{
    u32 k = 0;
    u64 *v = hits.lookup(&k);
    if (v)
        *v += 1;
    return XDP_DROP;
}
