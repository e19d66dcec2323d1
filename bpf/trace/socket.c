/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Sockets: state changes over a socket's life (like tcplife, with its duration when it
 * reaches CLOSE) and socket-level drops (receive queue full, memory limit exceeded).
 *
 * The duration runs from the first state change this tracer saw for the socket, kept in
 * an LRU hash keyed by socket address (LRU, so sockets whose CLOSE is never seen cannot
 * fill it up); the entry goes when the socket reaches TCP_CLOSE.
 *
 * The two drop tracepoints are copied raw (their whole record, RCVQ_RAW_SIZE and
 * BUFLIM_RAW_SIZE bytes from the format file) and decoded in user space with the field
 * list of the running kernel's format file, so every field the kernel gives is reported
 * and a kernel that adds or drops fields needs no change here.
 *
 * Hooks (netctl_trace.h explains the variants):
 *   tracepoint  sock:inet_sock_set_state, sock:sock_rcvqueue_full,
 *               sock:sock_exceed_buf_limit
 *   fentry      tcp_set_state(sk, state)   (TCP state changes only: the old state is the
 *   kprobe      tcp_set_state               last one seen, addresses live in struct sock)
 *
 * Constants (-D): SOCKET_EVENT_SIZE, TCP_CLOSE_STATE (TCP_CLOSE in the running kernel),
 * RCVQ_RAW_SIZE, BUFLIM_RAW_SIZE, FLOW_ENTRIES.
 */
#include <uapi/linux/ptrace.h>
#include <net/sock.h>

#include "netctl_trace.h"

#define SOCK_STATE 0
#define SOCK_RCVQUEUE_FULL 1
#define SOCK_EXCEED_BUF_LIMIT 2
#define STATE_UNKNOWN (-1)
#define STATE_SLOTS 16
#define RAW_MAX 128

struct sock_state {
    __u64 skaddr;
    __u64 duration_ns;
    __s32 oldstate;         /* STATE_UNKNOWN when not known */
    __s32 newstate;
    __u16 family;           /* 0: addresses not known at this hook */
    __u16 protocol;
    __u16 sport;            /* host order */
    __u16 dport;
    __u8 saddr[16];
    __u8 daddr[16];
    __u8 has_duration;
    __u8 pad[7];
};

struct socket_event {
    struct trace_head head;     /* what: SOCK_STATE, SOCK_RCVQUEUE_FULL, ... */
    __u32 raw_len;              /* bytes of `raw` holding the tracepoint record */
    __u32 pad;
    union {
        struct sock_state st;
        __u8 raw[RAW_MAX];
    };
};
_Static_assert(sizeof(struct socket_event) == SOCKET_EVENT_SIZE,
               "struct socket_event differs from its mirror in netctl/trace/_events.py");
_Static_assert(RCVQ_RAW_SIZE <= RAW_MAX && BUFLIM_RAW_SIZE <= RAW_MAX,
               "a tracepoint record is larger than socket_event.raw");

struct sock_seen {
    __u64 first_ns;
    __s32 last_state;
    __u32 pad;
};

BPF_TABLE("lru_hash", u64, struct sock_seen, seen, FLOW_ENTRIES);
BPF_PERCPU_ARRAY(state_count, u64, STATE_SLOTS);
BPF_PERCPU_ARRAY(drop_count, u64, 3);       /* indexed by SOCK_RCVQUEUE_FULL, ... */

/* Fills in oldstate (when the hook does not know it) and the duration, counts, emits. */
static __always_inline int state_seen(struct socket_event *ev)
{
    u64 sk = ev->st.skaddr;
    u64 now = ev->head.ts_ns;
    struct sock_seen *s = seen.lookup(&sk);
    int slot = ev->st.newstate & (STATE_SLOTS - 1);
    u64 *n = state_count.lookup(&slot);

    if (n)
        *n += 1;
    if (s && ev->st.oldstate == STATE_UNKNOWN)
        ev->st.oldstate = s->last_state;
    if (ev->st.newstate == TCP_CLOSE_STATE) {
        if (s) {
            ev->st.duration_ns = now - s->first_ns;
            ev->st.has_duration = 1;
            seen.delete(&sk);
        }
    } else if (s) {
        s->last_state = ev->st.newstate;
    } else {
        struct sock_seen first = {.first_ns = now, .last_state = ev->st.newstate};
        seen.update(&sk, &first);
    }
    emit(ev, sizeof(*ev));
    return 0;
}

static __always_inline void drop_counted(int slot)
{
    u64 *n = drop_count.lookup(&slot);
    if (n)
        *n += 1;
}

#if WITH_TRACEPOINT
int netctl_sock_state_tp(struct tracepoint__sock__inet_sock_set_state *args)
{
    struct socket_event ev = {};

    trace_head_fill(&ev.head, SOCK_STATE);
    ev.st.skaddr = (u64)args->skaddr;
    ev.st.oldstate = args->oldstate;
    ev.st.newstate = args->newstate;
    ev.st.family = args->family;
    ev.st.protocol = args->protocol;
    ev.st.sport = args->sport;
    ev.st.dport = args->dport;
    if (args->family == NETCTL_AF_INET) {
        __builtin_memcpy(ev.st.saddr, args->saddr, 4);
        __builtin_memcpy(ev.st.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(ev.st.saddr, args->saddr_v6, 16);
        __builtin_memcpy(ev.st.daddr, args->daddr_v6, 16);
    }
    return state_seen(&ev);
}

int netctl_sock_rcvq_tp(struct tracepoint__sock__sock_rcvqueue_full *args)
{
    struct socket_event ev = {};

    drop_counted(SOCK_RCVQUEUE_FULL);
    trace_head_fill(&ev.head, SOCK_RCVQUEUE_FULL);
    ev.raw_len = RCVQ_RAW_SIZE;
    bpf_probe_read_kernel(ev.raw, RCVQ_RAW_SIZE, args);
    emit(&ev, sizeof(ev));
    return 0;
}

int netctl_sock_buflim_tp(struct tracepoint__sock__sock_exceed_buf_limit *args)
{
    struct socket_event ev = {};

    drop_counted(SOCK_EXCEED_BUF_LIMIT);
    trace_head_fill(&ev.head, SOCK_EXCEED_BUF_LIMIT);
    ev.raw_len = BUFLIM_RAW_SIZE;
    bpf_probe_read_kernel(ev.raw, BUFLIM_RAW_SIZE, args);
    emit(&ev, sizeof(ev));
    return 0;
}
#endif

static __always_inline int state_sock_only(u64 sk, int state)
{
    struct socket_event ev = {};

    trace_head_fill(&ev.head, SOCK_STATE);
    ev.st.skaddr = sk;
    ev.st.oldstate = STATE_UNKNOWN;
    ev.st.newstate = state;
    ev.st.protocol = IPPROTO_TCP;
    return state_seen(&ev);
}

#if WITH_FENTRY
KFUNC_PROBE(tcp_set_state, struct sock *sk, int state)
{
    return state_sock_only((u64)sk, state);
}
#endif

#if WITH_KPROBE
int netctl_sock_kprobe(struct pt_regs *ctx)
{
    return state_sock_only(PT_REGS_PARM1(ctx), (int)PT_REGS_PARM2(ctx));
}
#endif
