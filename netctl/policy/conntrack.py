"""The reference connection tracker: what `stateful: true` does, in plain Python.

The datapath's tracker (bpf/include/netctl_conntrack.h) is tested against this one packet
by packet: verdicts, what each packet counts, and both tables' entries field by field.  It
reads frames through the reference parser (`netctl.policy.frame`, step 8 for what the
tracker reads besides the rules' fields).  Sequence numbers are 32-bit and compared modulo
2^32, as the kernel does.

The semantics (docs/policy.md, "Stateful filtering"):

* Flows this host sends (egress, accepted) are tracked by the tuple of their replies.  A
  new flow is *unconfirmed*: opened by a SYN, a SYN-ACK, a TCP segment of a flow already
  running ("picked up": its window scale is unknown and taken as the largest), a UDP
  datagram or an echo request.  The first valid reply *confirms* it: the entry moves to the
  table of confirmed flows.  A SYN or SYN-ACK with a new initial sequence number starts its
  tuple over as unconfirmed, whatever was tracked on it.
* At ingress, before the rules, a valid reply is accepted (confirmed flows first).  TCP:
  a bare SYN is never a reply; a RST or FIN must lie in the window this host advertised; the
  first reply to a flow this host opened with a SYN must be a SYN-ACK or RST acknowledging
  the SYN; the first reply to a SYN-ACK or to a picked-up flow must acknowledge what the host
  sent (or be a RST in the window).  Anything else is *invalid*: it changes nothing and
  goes on to the rules.
* An ICMP error about a live tracked flow is *related*: accepted.
* An entry idle longer than its state's timeout is stale: the ingress packet that meets it
  removes it and goes on to the rules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from ..abi import DropReason
from .frame import MAX_WSCALE, FrameVerdict, Ip, Transport, frame_verdict, parse_frame
from .model import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Action,
    Address,
    Conntrack,
    Direction,
    Policy,
)

M32 = 0xFFFFFFFF
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

NEW, ESTABLISHED, CLOSING = 0, 1, 2
F_SYN, F_SYNACK, F_PICKUP, F_ACKED = 1, 2, 4, 8
PICKUP_ACK_WINDOW = 0xFFFF << MAX_WSCALE

# What the tracker counts (the datapath's stat slots NETCTL_STAT_CT_*).
COUNTS = ("new", "confirmed", "expired", "unconfirmed_expired", "invalid", "reply",
          "related")

Key = tuple[int, int, int, int, bytes, bytes]  # family, proto, sport, dport, saddr, daddr


def seq_before(a: int, b: int) -> bool:
    return (a - b) & M32 >= 0x80000000


def seq_after(a: int, b: int) -> bool:
    return (b - a) & M32 >= 0x80000000


@dataclass
class Entry:
    """struct netctl_ct_entry, timestamps in ns."""

    created_ns: int
    seen_ns: int
    packets_out: int = 0
    packets_in: int = 0
    state: int = NEW
    flags: int = 0
    wscale: int = 0
    our_start: int = 0
    our_end: int = 0
    our_ack: int = 0
    our_maxwin: int = 0
    our_maxend: int = 0


def _addr(address: Address) -> bytes:
    return address.packed.ljust(16, b"\0")


def _echo(ip: Ip, types: dict[int, int]) -> bool:
    p = ip.packet
    own = PROTO_ICMP if p.family == 4 else PROTO_ICMPV6
    return p.proto == own and not p.fragment and p.icmp_type == types[p.family]


def reply_key(ip: Ip) -> Key | None:
    """The key of the replies to an outgoing packet (None: not tracked)."""
    p, t = ip.packet, ip.transport
    if p.fragment or t is None:
        return None
    if p.proto in (PROTO_TCP, PROTO_UDP):
        return p.family, p.proto, p.dport, p.sport, _addr(p.dst), _addr(p.src)  # type: ignore[return-value]  # ports: not a fragment
    if _echo(ip, {4: 8, 6: 128}):
        return p.family, p.proto, t.icmp_id, 0, _addr(p.dst), _addr(p.src)
    return None


def own_key(ip: Ip) -> Key | None:
    """The key an incoming packet is a reply under (None: it cannot be one)."""
    p, t = ip.packet, ip.transport
    if p.fragment or t is None:
        return None
    if p.proto in (PROTO_TCP, PROTO_UDP):
        return p.family, p.proto, p.sport, p.dport, _addr(p.src), _addr(p.dst)  # type: ignore[return-value]  # ports: not a fragment
    if _echo(ip, {4: 0, 6: 129}):
        return p.family, p.proto, t.icmp_id, 0, _addr(p.src), _addr(p.dst)
    return None


class Tracker:
    """Both tables (unbounded: the reference never evicts) and the counts."""

    def __init__(self, settings: Conntrack | None = None):
        self.settings = settings or Conntrack()
        self.confirmed: dict[Key, Entry] = {}
        self.unconfirmed: dict[Key, Entry] = {}
        self.counts: Counter[str] = Counter()

    # -- timeouts
    def timeout_ns(self, proto: int, state: int) -> int:
        s = self.settings
        if proto == PROTO_TCP:
            seconds = {ESTABLISHED: s.tcp_established, CLOSING: s.tcp_closing}.get(
                state, s.tcp_unconfirmed)
        elif proto == PROTO_UDP:
            seconds = s.udp
        else:
            seconds = s.icmp
        return seconds * 1_000_000_000

    def _stale(self, entry: Entry, proto: int, now: int) -> bool:
        return now - entry.seen_ns > self.timeout_ns(proto, entry.state)

    # -- egress
    def track(self, ip: Ip, now: int) -> None:
        """An accepted outgoing packet."""
        key = reply_key(ip)
        if key is None:
            return
        t: Transport = ip.transport  # type: ignore[assignment]  # it has a key: not None
        tcp = ip.packet.proto == PROTO_TCP
        if tcp and t.tcp_flags & SYN:
            origin = F_SYNACK if t.tcp_flags & ACK else F_SYN
            entry = self.confirmed.get(key)
            if entry is not None and _same_open(entry, t, origin):
                self._refresh_out(entry, ip, now)
                return
            if entry is not None:
                del self.confirmed[key]
                self.counts["expired"] += 1
            waiting = self.unconfirmed.get(key)
            if waiting is not None and _same_open(waiting, t, origin):
                self._refresh_out(waiting, ip, now)
                return
            new = Entry(now, now, packets_out=1, flags=origin, wscale=t.wscale,
                        our_start=t.tcp_seq, our_end=t.tcp_seq)
            _our_segment(new, t)
            if t.tcp_flags & (FIN | RST):
                new.state = CLOSING
            self.unconfirmed[key] = new
            if waiting is None:
                self.counts["new"] += 1
            return
        entry = self.confirmed.get(key) or self.unconfirmed.get(key)
        if entry is not None:
            self._refresh_out(entry, ip, now)
            return
        if tcp and t.tcp_flags & RST:
            return
        new = Entry(now, now, packets_out=1)
        if tcp:
            new.flags, new.wscale = F_PICKUP, MAX_WSCALE
            new.our_start = new.our_end = t.tcp_seq
            _our_segment(new, t)
            if t.tcp_flags & FIN:
                new.state = CLOSING
        self.unconfirmed[key] = new
        self.counts["new"] += 1

    @staticmethod
    def _refresh_out(entry: Entry, ip: Ip, now: int) -> None:
        entry.seen_ns = now
        entry.packets_out += 1
        if ip.packet.proto == PROTO_TCP:
            # A tracked packet (it has a key): its transport is not None.
            _our_segment(entry, ip.transport)  # type: ignore[arg-type]
            if ip.transport.tcp_flags & (FIN | RST):  # type: ignore[union-attr]
                entry.state = CLOSING

    # -- ingress
    def reply(self, ip: Ip, now: int) -> bool:
        """Whether an incoming packet is a valid reply (accepted; confirms a flow)."""
        key = own_key(ip)
        if key is None:
            return False
        t: Transport = ip.transport  # type: ignore[assignment]  # it has a key: not None
        proto = ip.packet.proto
        tcp = proto == PROTO_TCP
        flags = t.tcp_flags if tcp else 0
        if tcp and flags & SYN and not flags & ACK:
            return False
        entry = self.confirmed.get(key)
        if entry is not None:
            if self._stale(entry, proto, now):
                del self.confirmed[key]
                self.counts["expired"] += 1
                return False
            if flags & (FIN | RST) and not _in_window(entry, t.tcp_seq):
                self.counts["invalid"] += 1
                return False
            entry.seen_ns = now
            entry.packets_in += 1
            if flags & (FIN | RST):
                entry.state = CLOSING
            self.counts["reply"] += 1
            return True
        entry = self.unconfirmed.get(key)
        if entry is None:
            return False
        if self._stale(entry, proto, now):
            del self.unconfirmed[key]
            self.counts["unconfirmed_expired"] += 1
            return False
        confirm = 1
        if tcp:
            confirm = _first_reply(entry, t)
            if confirm < 0:
                self.counts["invalid"] += 1
                return False
            if confirm and entry.flags & F_SYN:
                entry.our_ack = (t.tcp_seq + 1) & M32
                entry.our_maxend = (entry.our_ack + entry.our_maxwin) & M32
                entry.flags |= F_ACKED
        entry.seen_ns = now
        entry.packets_in += 1
        entry.state = CLOSING if flags & (FIN | RST) else ESTABLISHED
        if confirm:
            self.confirmed[key] = replace(entry)
            del self.unconfirmed[key]
            self.counts["confirmed"] += 1
        self.counts["reply"] += 1
        return True

    def related(self, ip: Ip, now: int) -> bool:
        """Whether an incoming packet is an ICMP error about a live tracked flow."""
        key = ip.transport.related if ip.transport is not None else None
        if key is None:
            return False
        entry = self.confirmed.get(key)
        if entry is None:
            entry = self.unconfirmed.get(key)
        if entry is None or self._stale(entry, key[1], now):
            return False
        self.counts["related"] += 1
        return True

    # -- a whole packet, with the policy
    def judge(self, policy: Policy, data: bytes, direction: Direction,
              now: int = 0) -> FrameVerdict:
        """What the datapath does with a frame (``now``: the kernel's clock, ns), tracking
        it when the policy is stateful: why "conntrack" for a valid reply, "related" for an
        ICMP error about a tracked flow, else as `frame_verdict` says."""
        verdict = frame_verdict(policy, data, direction)
        parsed = parse_frame(data)
        if not policy.stateful or not isinstance(parsed, Ip) or verdict.why == "ndp":
            return verdict
        if direction is Direction.INGRESS:
            if self.reply(parsed, now):
                return FrameVerdict(Action.ACCEPT, None, "conntrack", DropReason.NONE)
            if self.related(parsed, now):
                return FrameVerdict(Action.ACCEPT, None, "related", DropReason.NONE)
        elif verdict.verdict is Action.ACCEPT:
            self.track(parsed, now)
        return verdict


def _same_open(entry: Entry, t: Transport, origin: int) -> bool:
    return entry.flags & (F_SYN | F_SYNACK) == origin and entry.our_start == t.tcp_seq


def _our_segment(entry: Entry, t: Transport) -> None:
    """What a segment this host sends says about its side of the flow."""
    flags = t.tcp_flags
    seq_end = (t.tcp_seq + t.payload + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) \
        & M32
    if seq_after(seq_end, entry.our_end):
        entry.our_end = seq_end
    # The window of a SYN or SYN-ACK is never scaled (RFC 7323).
    win = t.tcp_win if flags & SYN else (t.tcp_win << (entry.wscale & 15)) & M32
    entry.our_maxwin = max(entry.our_maxwin, win)
    if not flags & ACK:
        return
    first = not entry.flags & F_ACKED
    if first or seq_after(t.tcp_ack, entry.our_ack):
        entry.our_ack = t.tcp_ack
    right = (t.tcp_ack + win) & M32
    if first or seq_after(right, entry.our_maxend):
        entry.our_maxend = right
    entry.flags |= F_ACKED


def _in_window(entry: Entry, seq: int) -> bool:
    """An incoming RST or FIN: at most the advertised window's right edge, at most the
    largest window below what this host acknowledged (nothing to judge by before it has
    acknowledged anything)."""
    if not entry.flags & F_ACKED:
        return True
    return not seq_after(seq, entry.our_maxend) and \
        not seq_before(seq, (entry.our_ack - entry.our_maxwin) & M32)


def _acks_ours(entry: Entry, t: Transport) -> bool:
    if not t.tcp_flags & ACK or seq_after(t.tcp_ack, entry.our_end):
        return False
    if entry.flags & F_PICKUP:
        return (entry.our_end - t.tcp_ack) & M32 <= PICKUP_ACK_WINDOW
    return seq_after(t.tcp_ack, entry.our_start)


def _first_reply(entry: Entry, t: Transport) -> int:
    """-1 not valid, 0 valid without confirming (a RST), 1 confirms."""
    flags = t.tcp_flags
    if entry.flags & F_SYN:
        if not _acks_ours(entry, t):
            return -1
        if flags & RST:
            return 0
        return 1 if flags & SYN else -1
    if flags & RST:
        return 0 if _in_window(entry, t.tcp_seq) else -1
    if flags & SYN or not _acks_ours(entry, t):
        return -1
    if flags & FIN and not _in_window(entry, t.tcp_seq):
        return -1
    return 1
