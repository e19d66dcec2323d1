/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Judge one packet: parse, classify by the compiled maps, count, return a verdict.
 *
 * Precedence (the reference model's, netctl/policy/evaluate.py):
 *   1. malformed frames are dropped under their reason; non-IP frames pass;
 *   2. ICMPv6 neighbour discovery (133-137, not a fragment) with hop limit 255 (RFC 4861:
 *      anything else was forwarded and receivers discard it), and for a redirect (137) a
 *      link-local source, is accepted when allowed; other ND goes through the rules;
 *   3. with stateful: true, at ingress, a valid reply to a tracked flow, or an ICMP error
 *      about one, is accepted (netctl_conntrack.h); at egress, an accepted packet is
 *      tracked after step 4 or 5;
 *   4. the first rule of the packet's direction that matches decides;
 *   5. otherwise the direction's default.
 * Step 3 is a fixed number of lookups whatever the number of rules (docs/classification.md):
 * two address tries, two array lookups per transport field, then one rule_table lookup
 * per shape slot in use, keeping the lowest rule index.  The generation is read once, so
 * every lookup of one packet sees the same policy.
 *
 * Include after netctl_maps.h, netctl_parse.h and netctl_conntrack.h.
 */
#ifndef NETCTL_JUDGE_H
#define NETCTL_JUDGE_H

#define NETCTL_NO_RULE 0xffffffffu

struct netctl_verdict {
    __u8 drop;        /* 1: drop */
    __u8 reason;      /* enum netctl_drop when dropped */
    __u8 ip;          /* an IP packet judged by the policy (p is filled in) */
    __u8 log;         /* the deciding rule has log: true */
    __u32 rule;       /* deciding rule index or NETCTL_NO_RULE */
    __u32 gen;        /* the generation that judged it */
    __u32 sample;     /* events: one in this many (0 or 1: all) */
};

/* Copy a class vector out of its map, or zeros on a miss.  Working on stack copies keeps
 * the verifier from tracking a maybe-null pointer per field through every slot, which
 * multiplies its states past the complexity limit. */
static __always_inline void netctl_load_classes(struct netctl_classes *to,
                                                struct netctl_classes *from)
{
    if (from)
        __builtin_memcpy(to, from, sizeof(*to));
}

static __always_inline struct netctl_classes *
netctl_port_classes(__u32 gen, __u32 port_slot, __u16 port, int dst)
{
    __u32 index = gen * NETCTL_SPORT_INTERVAL_ENTRIES + port_slot * NETCTL_PORT_INDEX + port;
    netctl_called(ARRAY);
    __u32 *iid = dst ? dport_interval.lookup(&index) : sport_interval.lookup(&index);
    if (!iid || !*iid)
        return 0;
    netctl_called(ARRAY);
    if (dst) {
        index = gen * NETCTL_DPORT_CLASSES_ENTRIES + *iid;
        return dport_classes.lookup(&index);
    }
    index = gen * NETCTL_SPORT_CLASSES_ENTRIES + *iid;
    return sport_classes.lookup(&index);
}

static __always_inline struct netctl_classes *
netctl_icmp_classes(__u32 gen, __u32 icmp_slot, __u32 type_code)
{
    __u32 index = gen * NETCTL_ICMP_INTERVAL_ENTRIES + icmp_slot * NETCTL_ICMP_INDEX + type_code;
    netctl_called(ARRAY);
    __u32 *iid = icmp_interval.lookup(&index);
    if (!iid || !*iid)
        return 0;
    index = gen * NETCTL_ICMP_CLASSES_ENTRIES + *iid;
    netctl_called(ARRAY);
    return icmp_classes.lookup(&index);
}



/* The rule deciding an IP packet, or NETCTL_NO_RULE. */
static __always_inline __u32 netctl_classify(struct netctl_pkt *p, __u32 gen,
                                             struct netctl_config *cfg, int dir)
{
    /* Per-CPU scratch rather than the stack: the tc program inlines this body twice and
     * would pass the 512-byte stack limit. */
    __u32 zero = 0;
    netctl_called(PERCPU_ARRAY);
    struct netctl_pkt_classes *cp = netctl_scratch.lookup(&zero);
    if (!cp)
        return NETCTL_NO_RULE;
    __builtin_memset(cp, 0, sizeof(*cp));

    __u32 classify = cfg->word[NETCTL_CFG_CLASSIFY];
    netctl_called_if(classify & NETCTL_CLASSIFY_SRC, LPM);
    netctl_called_if(classify & NETCTL_CLASSIFY_DST, LPM);
    if (p->family == 4) {
        p->src.v4.gen = p->dst.v4.gen = gen;
        if (classify & NETCTL_CLASSIFY_SRC)
            netctl_load_classes(&cp->src, src_v4.lookup(&p->src.v4));
        if (classify & NETCTL_CLASSIFY_DST)
            netctl_load_classes(&cp->dst, dst_v4.lookup(&p->dst.v4));
    } else {
        p->src.v6.gen = p->dst.v6.gen = gen;
        if (classify & NETCTL_CLASSIFY_SRC)
            netctl_load_classes(&cp->src, src_v6.lookup(&p->src.v6));
        if (classify & NETCTL_CLASSIFY_DST)
            netctl_load_classes(&cp->dst, dst_v6.lookup(&p->dst.v6));
    }
    if (p->l4 == NETCTL_L4_PORTS) {
        __u32 port_slot = p->proto == 17;
        netctl_load_classes(&cp->sport, netctl_port_classes(gen, port_slot, p->sport, 0));
        netctl_load_classes(&cp->dport, netctl_port_classes(gen, port_slot, p->dport, 1));
    } else if (p->l4 == NETCTL_L4_ICMP) {
        netctl_load_classes(&cp->icmp, netctl_icmp_classes(gen, p->family == 6,
                                                           ((__u32)p->icmp_type << 8) |
                                                           p->icmp_code));
    }

    __u32 bitmap = cfg->word[dir == NETCTL_DIR_INGRESS ? NETCTL_CFG_SLOTS_INGRESS
                                                       : NETCTL_CFG_SLOTS_EGRESS];
    __u32 direct_dst = cfg->word[NETCTL_CFG_DIRECT_DST];
#if defined(NETCTL_DIRECT_PORT) && NETCTL_DIRECT_PORT
    __u32 direct_port = cfg->word[NETCTL_CFG_DIRECT_PORT];
#else
    __u32 direct_port = 0;   /* built for plans without port-keyed slots: none is */
#endif
    __u32 best = NETCTL_NO_RULE;
    struct netctl_rule_key key = {};
    key.gen = gen;
    key.direction = dir;
    key.family = p->family;
    __u32 addr_bits = p->family == 4 ? 32 : 128;

#pragma unroll
    for (int slot = 0; slot < NETCTL_MAX_SHAPES; slot++) {
        if (!(bitmap & (1u << slot)))
            continue;
        __u32 mask = cfg->word[NETCTL_CFG_SHAPES + slot];
        /* The slot's direct field goes into the key: the destination port, dst or src.
         * An address field that is not direct, the ports and the ICMP type go in as
         * classes; a class of 0 rules the slot out. */
        int use_port = (direct_port >> slot) & 1;
        int use_dst = !use_port && (mask & NETCTL_FIELD_DST) && ((direct_dst >> slot) & 1);
        __u32 classified = mask & (NETCTL_FIELD_SRC | NETCTL_FIELD_DST);
        if (!use_port)
            classified &= use_dst ? NETCTL_FIELD_SRC : NETCTL_FIELD_DST;
        __u32 other = 0;
        if (classified) {
            other = classified & NETCTL_FIELD_SRC ? cp->src.cls[slot] : cp->dst.cls[slot];
            if (!other)
                continue;
        }
        __u32 sp = mask & NETCTL_FIELD_SPORT ? cp->sport.cls[slot] : 0;
        if ((mask & NETCTL_FIELD_SPORT) && !sp)
            continue;
        __u32 l = 0;
        if (use_port) {
            if (p->l4 != NETCTL_L4_PORTS)
                continue;
        } else {
            l = mask & NETCTL_FIELD_DPORT ? cp->dport.cls[slot]
              : mask & NETCTL_FIELD_ICMP ? cp->icmp.cls[slot] : 0;
            if ((mask & (NETCTL_FIELD_DPORT | NETCTL_FIELD_ICMP)) && !l)
                continue;
        }
        key.prefixlen = NETCTL_RULE_KEY_HEADER_BITS + addr_bits;
        key.slot = slot;
        key.proto = mask & NETCTL_FIELD_PROTO ? p->proto : 0;
        key.addr_cls = other;
        key.sport_cls = sp;
        key.l4_cls = l;
        if (use_port) {
            __builtin_memset(key.addr, 0, 16);
            key.addr[0] = p->dport >> 8;
            key.addr[1] = p->dport & 0xff;
        } else if (use_dst) {
            __builtin_memcpy(key.addr, p->dst.v6.addr, 16);
        } else {
            __builtin_memcpy(key.addr, p->src.v6.addr, 16);
        }
        netctl_called(LPM);
        __u32 *rule = rule_table.lookup(&key);
        if (rule && *rule < best)
            best = *rule;
    }
    return best;
}

/* The rule deciding an IP packet, from the flow cache when the flow was classified under
 * this apply already, else by netctl_classify (and remembered).
 *
 * A flow is what classification reads: direction, family, protocol, addresses, ports or
 * ICMP type and code, non-first fragment or not.  Entries are keyed by the epoch that
 * apply writes for the generation before the flip, so a new policy never meets an old
 * decision.  A hit is one hash lookup, whatever the number of rules; a miss costs the
 * classification plus an insert.  In auto mode a CPU whose hit rate over its last
 * NETCTL_FLOW_WINDOW lookups is below one in NETCTL_FLOW_MIN_HIT_SHARE (a flood of new
 * flows: random sources, scans) stops using the cache for NETCTL_FLOW_BYPASS packets, so
 * such traffic pays little more than the classification alone. */
static __always_inline __u32 netctl_classify_cached(struct netctl_pkt *p, __u32 gen,
                                                    struct netctl_config *cfg, int dir,
                                                    __u32 len)
{
    /* Everything the miss path needs after the classification lives in the per-CPU
     * `flow_stat` value, not in registers: every way to netctl_classify then reaches it
     * in the same verifier state, and the classification is verified once, not once per
     * way (which passed the verifier's 1,000,000-instruction limit). */
    __u32 zero = 0;
    netctl_called(PERCPU_ARRAY);
    struct netctl_flow_stat *st = flow_stat.lookup(&zero);
    netctl_called(ARRAY);
    __u32 *epoch = flow_epoch.lookup(&gen);
    if (!st || !epoch)
        return NETCTL_NO_RULE;   /* never: both are arrays read at an index they have */
    __u32 mode = cfg->word[NETCTL_CFG_FLOW_CACHE];
    st->pending = 0;
    if (mode != NETCTL_FLOW_CACHE_OFF) {
        if (st->bypass) {
            st->bypass -= 1;
        } else {
            struct netctl_flow_key *k = &st->key;
            __builtin_memset(k, 0, sizeof(*k));
            k->epoch = *epoch;
            k->direction = dir;
            k->family = p->family;
            k->proto = p->proto;
            k->fragment = p->fragment;
            if (p->l4 == NETCTL_L4_PORTS) {
                k->sport = p->sport;
                k->dport = p->dport;
            } else if (p->l4 == NETCTL_L4_ICMP) {
                k->dport = ((__u16)p->icmp_type << 8) | p->icmp_code;
            }
            if (p->family == 4) {
                __builtin_memcpy(k->saddr, p->src.v4.addr, 4);
                __builtin_memcpy(k->daddr, p->dst.v4.addr, 4);
            } else {
                __builtin_memcpy(k->saddr, p->src.v6.addr, 16);
                __builtin_memcpy(k->daddr, p->dst.v6.addr, 16);
            }
            netctl_called(LRU_LOOKUP);
            __u32 *hit = flow_cache.lookup(k);
            if (hit) {
                __u32 rule = *hit;
                st->lookups += 1;
                st->hits += 1;
                netctl_count_stat(NETCTL_STAT_FLOW_HIT, len);
                return rule;
            }
            st->pending = mode;
        }
    }
    __u32 rule = netctl_classify(p, gen, cfg, dir);
    if (st->pending) {
        netctl_called(LRU_UPDATE);
        flow_cache.update(&st->key, &rule);
        netctl_count_stat(NETCTL_STAT_FLOW_MISS, len);
        st->lookups += 1;
        if (st->lookups >= NETCTL_FLOW_WINDOW) {
            if (st->pending == NETCTL_FLOW_CACHE_AUTO &&
                st->hits < st->lookups / NETCTL_FLOW_MIN_HIT_SHARE)
                st->bypass = NETCTL_FLOW_BYPASS;
            st->lookups = 0;
            st->hits = 0;
        }
    }
    return rule;
}

/* Whether the packet is neighbour discovery that a host would process (RFC 4861 7.1.1,
 * 8.1): types 133-137 with hop limit 255, and a redirect only from a link-local router. */
static __always_inline int netctl_is_ndp(struct netctl_pkt *p)
{
    if (p->family != 6 || p->l4 != NETCTL_L4_ICMP || p->icmp_type < 133 || p->icmp_type > 137)
        return 0;
    if (p->ttl != 255)
        return 0;
    if (p->icmp_type == 137)
        return p->src.v6.addr[0] == 0xfe && (p->src.v6.addr[1] & 0xc0) == 0x80;
    return 1;
}

/* Decide an IP packet that netctl_parse filled in `pp` from the header window at `data`
 * (connection tracking reads further in it), by generation `gen` (whose config is `cfg`),
 * in direction `dir`: steps 2-5 of the precedence above, counted.  `v` comes with the
 * generation and sampling filled in. */
static __always_inline void netctl_decide(__u8 *data, void *end, int is_pkt,
                                          struct netctl_pkt *pp, __u32 gen,
                                          struct netctl_config *cfg, int dir, __u32 len,
                                          struct netctl_verdict *v)
{
    v->ip = 1;
    if (cfg->word[NETCTL_CFG_ALLOW_NDP] && netctl_is_ndp(pp)) {
        netctl_count_stat(NETCTL_STAT_NDP, len);
        return;
    }
    int stateful = cfg->word[NETCTL_CFG_STATEFUL];
    if (stateful && dir == NETCTL_DIR_INGRESS &&
        netctl_ct_ingress(data, end, is_pkt, pp, cfg, len))
        return;
    if (stateful && dir == NETCTL_DIR_EGRESS)
        netctl_ct_prepare(data, end, is_pkt, pp);

#ifdef NETCTL_TEST_VERIFIER_REJECT
    /* Test-only (tests/netns): a read at an unbounded offset, which the verifier refuses,
     * to show that a refused program leaves the live datapath untouched. */
    if (((volatile __u32 *)cfg->word)[pp->len] == 0x4e43)
        return;
#endif
    __u32 rule = netctl_classify_cached(pp, gen, cfg, dir, len);
    if (rule != NETCTL_NO_RULE) {
        __u32 index = gen * NETCTL_RULES_ENTRIES + rule;
        netctl_called(ARRAY);
        struct netctl_rule *r = rules.lookup(&index);
        netctl_called(PERCPU_ARRAY);
        netctl_count(counters.lookup(&index), len);
        v->rule = rule;
        v->log = r && (r->flags & NETCTL_FLAG_LOG);
        if (r && r->action == NETCTL_ACTION_DROP) {
            v->drop = 1;
            v->reason = NETCTL_DROP_POLICY_RULE;
        } else if (stateful && dir == NETCTL_DIR_EGRESS) {
            netctl_ct_track(pp, len);
        }
        return;
    }
    __u32 action = cfg->word[dir == NETCTL_DIR_INGRESS ? NETCTL_CFG_DEFAULT_INGRESS
                                                       : NETCTL_CFG_DEFAULT_EGRESS] & 1;
    netctl_count_stat(NETCTL_STAT_DEFAULT + dir * 2 + action, len);
    if (action == NETCTL_ACTION_DROP) {
        v->drop = 1;
        v->reason = NETCTL_DROP_POLICY_DEFAULT;
    } else if (stateful && dir == NETCTL_DIR_EGRESS) {
        netctl_ct_track(pp, len);
    }
}

/* Judge the frame whose header window is at `data` (see netctl_parse for the window, `l3`,
 * `l3_type` and `vlans`; `len`: the whole frame's length). */
static __always_inline struct netctl_verdict netctl_judge(__u8 *data, void *end, int is_pkt,
                                                          __u32 len, int dir,
                                                          struct netctl_pkt *pp, int l3,
                                                          __u16 l3_type, __u8 vlans)
{
    struct netctl_verdict v = { .drop = 0, .reason = 0, .ip = 0, .rule = NETCTL_NO_RULE };
    __u32 zero = 0;

    netctl_called(ARRAY);
    __u32 *live = active.lookup(&zero);
    __u32 word = live ? *live : 0;
    __u32 gen = word & 1;
    /* An apply awaiting `netctl confirm` (apply --confirm) sets a deadline above the
     * generation bit, in seconds of the monotonic clock: past it the generation before
     * judges again, whatever happened to the processes meant to restore it. */
    if (word >> 1) {
        netctl_called(KTIME_COARSE);
        if (bpf_ktime_get_coarse_ns() / 1000000000ULL >= (word >> 1))
            gen ^= 1;
    }
    netctl_called(ARRAY);
    struct netctl_config *cfg = config.lookup(&gen);
    if (!cfg) {
        netctl_count_stat(NETCTL_STAT_NO_POLICY, len);
        return v;
    }
    v.gen = gen;
    v.sample = cfg->word[NETCTL_CFG_EVENT_SAMPLE];

    pp->len = len;
    int parsed = netctl_parse(data, end, is_pkt, pp, l3, l3_type, vlans);
    if (parsed == NETCTL_PARSED_NON_IP) {
        netctl_count_stat(NETCTL_STAT_NON_IP, len);
        return v;
    }
    if (parsed != NETCTL_PARSED_IP) {
        v.drop = 1;
        v.reason = parsed;
        netctl_count_stat(parsed & (NETCTL_DROP_MAX - 1), len);
        return v;
    }
    netctl_decide(data, end, is_pkt, pp, gen, cfg, dir, len, &v);
    return v;
}

/* Send the packet to `netctl monitor` when it was dropped or its rule logs, one in
 * v->sample (random: bpf_get_prandom_u32), counting what was sent, refused by a full ring
 * buffer, or sampled out: nothing is lost without a count.  Only while a monitor holds the
 * lease in events_ctl: making an event costs about as much as judging the packet (the
 * timestamp and the ring), so with nobody listening none is made; an unbroken lease is one
 * map read, a stale one (a monitor killed) one coarse clock read. */
static __always_inline void netctl_emit(struct netctl_pkt *p, struct netctl_verdict *v,
                                        __u32 ifindex, int hook, int dir)
{
    if (!v->drop && !v->log)
        return;
    __u32 zero = 0;
    netctl_called(ARRAY);
    struct netctl_events_ctl *ctl = events_ctl.lookup(&zero);
    netctl_called_if(ctl && ctl->until_ns, KTIME_COARSE);
    if (!ctl || !ctl->until_ns || bpf_ktime_get_coarse_ns() > ctl->until_ns)
        return;
    netctl_called_if(v->sample > 1, PRANDOM);
    if (v->sample > 1 && bpf_get_prandom_u32() % v->sample) {
        netctl_count_stat(NETCTL_STAT_EVENTS_SAMPLED_OUT, p->len);
        return;
    }
    struct netctl_event e = {};
    netctl_called(KTIME);
    e.ts_ns = bpf_ktime_get_ns();
    e.ifindex = ifindex;
    e.rule = v->rule;
    e.len = p->len;
    e.direction = dir;
    e.hook = hook;
    e.drop = v->drop;
    e.reason = v->reason;
    e.family = p->family;
    e.proto = p->proto;
    e.sport = p->sport;
    e.dport = p->dport;
    e.icmp_type = p->icmp_type;
    e.gen = v->gen;
    __builtin_memcpy(e.saddr, p->src.v6.addr, 16);
    __builtin_memcpy(e.daddr, p->dst.v6.addr, 16);
    netctl_called(RINGBUF);
    if (events.ringbuf_output(&e, sizeof(e), 0) < 0)
        netctl_count_stat(NETCTL_STAT_EVENTS_LOST, p->len);
    else
        netctl_count_stat(NETCTL_STAT_EVENTS, p->len);
}

#endif /* NETCTL_JUDGE_H */
