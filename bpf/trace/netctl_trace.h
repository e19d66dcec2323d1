/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What every tracer shares (kernel side only; each event struct is mirrored by ctypes in
 * netctl/trace/_events.py, and the loader passes the mirror's size as -D<KIND>_EVENT_SIZE
 * so that a drifted layout fails the compile instead of garbling events; without root,
 * tests/unit/test_abi_headers.py compares the fields and #defines with the mirror as text).
 *
 * Every tracer source holds three variants of its entry points, each compiled unless the
 * loader turns it off (-DWITH_FENTRY=0 when the target function is not in the kernel's BTF,
 * -DWITH_TRACEPOINT=0 when a tracepoint is missing: bcc builds a tracepoint's args struct
 * from tracefs, so a missing one would fail the whole compile):
 *   fentry      KFUNC_PROBE on the kernel function;
 *   tracepoint  a function taking `struct tracepoint__<category>__<event> *` (bcc generates
 *               that struct from the running kernel's format file, so its offsets are right
 *               whatever headers we compile with);
 *   kprobe      on the same kernel function, reading arguments from registers only.
 * The kernel headers may be an older release's (Debian 6.1 on a 6.18 kernel), so no
 * variant reads a kernel struct field: their offsets could be wrong.
 *
 * Tracepoint and kprobe entry functions have netctl names, never bcc's magic prefixes
 * (`tracepoint__`, `kprobe__`), which bcc would attach on its own while compiling. fentry
 * needs the `kfunc__<function>` name (bcc finds the BTF id of the target from it); the
 * loader switches bcc's autoload off and attaches explicitly.
 */
#ifndef NETCTL_TRACE_H
#define NETCTL_TRACE_H

#ifndef WITH_FENTRY
#define WITH_FENTRY 1
#endif
#ifndef WITH_TRACEPOINT
#define WITH_TRACEPOINT 1
#endif
#ifndef WITH_KPROBE
#define WITH_KPROBE 1
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif
#ifndef FLOW_ENTRIES
#define FLOW_ENTRIES 16384
#endif

#define NETCTL_AF_INET 2
#define NETCTL_AF_INET6 10

struct trace_head {
    __u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u32 pid;          /* the current task when the event fired (tgid) */
    __u32 tid;
    __u32 cpu;
    __u32 what;         /* which event of the kind (per-kind enum) */
    char comm[16];
};

/* Events go to user space through one ring buffer per tracer; an event the ring buffer
 * cannot take is counted here (per CPU) and reported by Tracer.lost(). */
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);

static __always_inline void trace_head_fill(struct trace_head *h, __u32 what)
{
    __u64 id = bpf_get_current_pid_tgid();

    h->ts_ns = bpf_ktime_get_ns();
    h->pid = id >> 32;
    h->tid = (__u32)id;
    h->cpu = bpf_get_smp_processor_id();
    h->what = what;
    bpf_get_current_comm(h->comm, sizeof(h->comm));
}

static __always_inline void emit(void *event, __u32 size)
{
    if (events.ringbuf_output(event, size, 0) != 0) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            *n += 1;
    }
}

/* bcc 0.26's `increment()` never creates a missing entry of a BPF_PERCPU_HASH (measured:
 * the map stays empty), and bcc refuses map methods inside macros, so each source spells
 * out its per-CPU counters: lookup, then add or create. */

#endif
