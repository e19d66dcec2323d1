/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counting what one packet costs, for the cost budget (bench/budget.py, docs/performance.md).
 *
 * Every map operation and helper call of the datapath has a one-line netctl_called(KIND)
 * in front of it (netctl_called_if(COND, KIND) where the call happens only when COND
 * holds), and a few lines mark which path a packet took.  Built with -DNETCTL_COUNT_CALLS,
 * each adds one to its slot of the per-CPU array `netctl_calls` (pinned next to the other
 * maps), so a test run shows exactly what a packet did, whatever the machine's speed.
 * Without the flag they compile to nothing: the programs are instruction for instruction
 * (program tag for tag) those of the same source without these lines.
 *
 * Kinds are by cost, not by map: an array or per-CPU array lookup is inlined by the
 * verifier (a few instructions), the others stay calls.  bench/budget.py reads the names
 * and slots below; add kinds at the end of the calls, never renumber.
 *
 * Include after netctl_maps.h.
 */
#ifndef NETCTL_PERF_H
#define NETCTL_PERF_H

enum netctl_call_kind {
    NETCTL_CALL_ARRAY = 0,         /* array lookup (inlined) */
    NETCTL_CALL_PERCPU_ARRAY = 1,  /* per-CPU array lookup (inlined) */
    NETCTL_CALL_LPM = 2,           /* LPM trie lookup */
    NETCTL_CALL_HASH = 3,          /* hash lookup */
    NETCTL_CALL_LRU_LOOKUP = 4,    /* LRU hash lookup */
    NETCTL_CALL_LRU_UPDATE = 5,    /* LRU hash update */
    NETCTL_CALL_LRU_DELETE = 6,    /* LRU hash delete */
    NETCTL_CALL_KTIME = 7,         /* bpf_ktime_get_ns */
    NETCTL_CALL_KTIME_COARSE = 8,  /* bpf_ktime_get_coarse_ns */
    NETCTL_CALL_PRANDOM = 9,       /* bpf_get_prandom_u32 */
    NETCTL_CALL_RINGBUF = 10,      /* ring buffer output */
    NETCTL_CALL_LOAD_BYTES = 11,   /* bpf_skb_load_bytes */
    NETCTL_CALL_CSUM = 12,         /* bpf_l3_csum_replace */
    NETCTL_CALL_STORE_BYTES = 13,  /* bpf_skb_store_bytes */
    NETCTL_CALL_REDIRECT = 14,     /* bpf_redirect, bpf_redirect_neigh */
    /* markers, not calls */
    NETCTL_CALL_RUN = 24,          /* a program run */
    NETCTL_CALL_TC_DIRECT = 25,    /* tc: headers read in packet memory */
    NETCTL_CALL_TC_COPY = 26,      /* tc: header window copied (bpf_skb_load_bytes) */
    NETCTL_CALL_SLOTS = 32,
};

#ifdef NETCTL_COUNT_CALLS
BPF_TABLE_PINNED("percpu_array", u32, u64, netctl_calls, NETCTL_CALL_SLOTS,
                 NETCTL_PIN(netctl_calls));

static __always_inline void netctl_count_call(__u32 slot)
{
    __u64 *c = netctl_calls.lookup(&slot);
    if (c)
        *c += 1;
}

#define netctl_called(kind) netctl_count_call(NETCTL_CALL_##kind)
#define netctl_called_if(cond, kind)                  \
    do {                                              \
        if (cond)                                     \
            netctl_count_call(NETCTL_CALL_##kind);    \
    } while (0)
#else
#define netctl_called(kind) do { } while (0)
#define netctl_called_if(cond, kind) do { } while (0)
#endif

#endif /* NETCTL_PERF_H */
