"""The datapath's connection tracker and the reference one, packet for packet
(`import lockstep` in the bpf tier).

`Lockstep.run(frame, hook)` sends a frame through one real program (BPF_PROG_TEST_RUN in a
netctl.datapath.sandbox.Sandbox) and through the reference (netctl.policy.conntrack.Tracker
with the same policy), then checks that the verdict and what decided it agree, that the
tracker counted the same things (entries created, confirmed, expired, packets refused as
replies), and that both tables hold the same entries, field for field (timestamps aside).
"""

from __future__ import annotations

from netctl import abi
from netctl.datapath.sandbox import TestRunRefused
from netctl.policy.conntrack import Tracker
from netctl.policy.model import Direction, Policy

COUNT_NAMES = {abi.STAT_CT_NEW: "new", abi.STAT_CT_CONFIRMED: "confirmed",
               abi.STAT_CT_EXPIRED: "expired", abi.STAT_CT_INVALID: "invalid",
               abi.STAT_CT_UNCONFIRMED_EXPIRED: "unconfirmed_expired"}
FIELDS = ("packets_out", "packets_in", "state", "flags", "wscale", "our_start", "our_end",
          "our_ack", "our_maxwin", "our_maxend")
TABLES = ("conntrack", "conntrack_unconfirmed")


def kernel_tables(box) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for table in TABLES:
        out[table] = {}
        for key, value in box.dp.maps[table].items():
            entry = abi.unpack_ct_entry(value)
            out[table][abi.unpack_ct_key(key)] = {f: entry[f] for f in FIELDS}
    return out


def reference_tables(tracker: Tracker) -> dict[str, dict]:
    return {table: {key: {f: getattr(e, f) for f in FIELDS} for key, e in entries.items()}
            for table, entries in zip(TABLES, (tracker.confirmed, tracker.unconfirmed),
                                      strict=True)}


class Lockstep:
    def __init__(self, box, policy: Policy):
        self.box = box
        self.policy = policy
        self.tracker = Tracker(policy.conntrack)
        self.whys: dict[str, int] = {}

    def run(self, frame: bytes, hook: str, context: str = ""):
        """The kernel's outcome (None when the tc test run refuses a short IP frame, which
        the reference finds truncated)."""
        direction = Direction.EGRESS if hook == "tc_egress" else Direction.INGRESS
        before = dict(self.tracker.counts)
        want = self.tracker.judge(self.policy, frame, direction)
        try:
            got = self.box.run(frame, hook)
        except TestRunRefused:
            assert hook != "xdp" and want.why == "malformed", (hook, frame.hex())
            return None
        where = f"{hook} {context}\nframe {frame.hex()}\nwant {want}\ngot {got}"
        want_rule = want.rule.index if want.rule is not None else None
        assert (got.verdict, got.why, got.rule, got.reason) == (
            want.verdict, want.why, want_rule, want.reason), where
        moved = {k for k, v in self.tracker.counts.items() if v != before.get(k, 0)}
        assert {COUNT_NAMES[s] for s in got.ct} == moved - {"reply", "related"}, where
        kernel, reference = kernel_tables(self.box), reference_tables(self.tracker)
        assert kernel == reference, f"{where}\nkernel {kernel}\nreference {reference}"
        self.whys[got.why] = self.whys.get(got.why, 0) + 1
        return got
