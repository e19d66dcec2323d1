/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counting: per-CPU packets and bytes, per rule and per stat slot (netctl_abi.h).  Per-CPU
 * values need no atomics: a program runs to completion on one CPU.  Include after
 * netctl_maps.h. */
#ifndef NETCTL_STATS_H
#define NETCTL_STATS_H

static __always_inline void netctl_count(struct netctl_counter *c, __u32 len)
{
    if (c) {
        c->packets += 1;
        c->bytes += len;
    }
}

static __always_inline void netctl_count_stat(__u32 slot, __u32 len)
{
    netctl_called(PERCPU_ARRAY);
    netctl_count(stats.lookup(&slot), len);
}

#endif /* NETCTL_STATS_H */
