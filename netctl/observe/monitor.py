"""`netctl monitor` and `netctl top`: what is dropped, where and why, as it happens.

Two sources, in one stream:

* **policy** events from the datapath of this network namespace: packets a rule or a
  default dropped, malformed frames, and matches of rules with `log: true`, read from the
  datapath's pinned ring buffer (sampled by the policy's `log_sample`; what a full buffer
  refused or sampling left out is counted in the datapath and reported, never hidden);
* **kernel** events from the tracers of `netctl.observe.trace`: kernel drops with the kernel's own
  reason and stack, TCP retransmits, congestion-state changes, socket lifecycle and
  socket-level drops.  Each tracer takes the best hook the running kernel offers
  (fentry, tracepoint, kprobe), and the first line says which and why.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import abi
from ..errors import NetctlError
from .trace.kinds import KIND_TYPES

if TYPE_CHECKING:
    from ..datapath.state import State

DEFAULT_TYPES = ("policy", "drop")
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


@dataclass
class Filters:
    dev: str | None = None
    src: Any = None          # an ip_network or None
    dst: Any = None
    port: int | None = None

    @classmethod
    def parse(cls, dev, src, dst, port) -> Filters:
        def net(text, what):
            if text is None:
                return None
            try:
                return ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise NetctlError(f"--{what}: {text!r} is not an address or prefix") from None
        if port is not None and not 0 <= port <= 65535:
            raise NetctlError("--port must be 0-65535")
        return cls(dev, net(src, "src"), net(dst, "dst"), port)

    def match(self, event: dict) -> bool:
        if self.dev is not None and event.get("dev") not in (None, self.dev) \
                and event.get("type") == "policy":
            return False
        for key, want in (("src", self.src), ("dst", self.dst)):
            if want is None:
                continue
            value = event.get(key) or event.get(f"{key[0]}addr")
            try:
                if value is None or ipaddress.ip_address(value) not in want:
                    return False
            except ValueError:
                return False
        return self.port is None or self.port in (event.get("sport"), event.get("dport"))


@dataclass
class PolicySource:
    """The datapath's events, with rule names and interface names filled in."""

    reader: Any
    datapath: Any
    state: State
    names: dict[int, str] = field(default_factory=dict)
    start_stats: list = field(default_factory=list)
    _lease: Any = None

    @classmethod
    def open(cls) -> PolicySource | None:
        from ..datapath.live import live_state, open_live
        from ..datapath.netns import Namespace
        from ..kernel.ringbuf import RingReader

        ns = Namespace.current()
        state, _notes = live_state(ns)
        live, _why = open_live(ns, state)
        if live is None:
            return None
        source = cls(RingReader(live.maps["events"]), live, state, start_stats=live.stats())
        source._lease = _Lease(ns, live)
        source._learn_names()
        return source

    def _learn_names(self) -> None:
        """Interface names of the attached interfaces, resolved now: the first lookup
        loads the netlink library, which takes long enough for a busy ring to fill."""
        from ..datapath.attach import Links

        with Links() as links:
            for name in self.state.interfaces:
                info = links.find(name)
                if info is not None:
                    self.names[info.index] = info.name

    @staticmethod
    def columns(e: dict) -> tuple[str, str]:
        """WHERE and WHAT of a policy event (a tracer kind's ``columns`` does the same)."""
        return (f"{e['dev']}/{e['hook']} {e['direction'][:3]}",
                f"{e['verdict']} {e['rule'] or e['reason']}")

    def describe(self) -> str:
        gen = self.datapath.active
        sample = self.datapath.read_config(gen)[_cfg_event_sample()]
        share = "every event" if sample <= 1 else f"1 in {sample}"
        return f"policy: datapath ring buffer ({share}, log_sample)"

    def _ifname(self, index: int) -> str:
        if index not in self.names:
            from ..datapath.attach import Links

            with Links() as links:
                info = links.info(index)
            self.names[index] = info.name if info else str(index)
        return self.names[index]

    def poll(self, timeout_ms: int) -> list[dict]:
        if self._lease is not None:
            self._lease.renew()
        if not self.reader.wait(timeout_ms):
            return []
        out = []
        now_mono = time.monotonic_ns()
        now = time.time()
        gens = self.state.generations
        for record in self.reader.records():
            e = abi.unpack_event(record)
            record = gens.get(e["gen"])
            names = record.rules if record is not None else []
            rule = e.pop("rule")
            e["rule"] = names[rule] if rule is not None and rule < len(names) else None
            e["time"] = now - (now_mono - e.pop("ts_ns")) / 1e9
            e["type"] = "policy"
            e["dev"] = self._ifname(e.pop("ifindex"))
            e.pop("gen")
            out.append(e)
        return out

    def losses(self) -> dict[str, int]:
        now = self.datapath.stats()
        return {"lost": now[abi.STAT_EVENTS_LOST][0] - self.start_stats[abi.STAT_EVENTS_LOST][0],
                "sampled_out": now[abi.STAT_EVENTS_SAMPLED_OUT][0]
                - self.start_stats[abi.STAT_EVENTS_SAMPLED_OUT][0]}

    def close(self) -> None:
        if self._lease is not None:
            self._lease.release()
        self.reader.close()
        self.datapath.close()


class _Lease:
    """A monitor's hold on the datapath's events (they are made only while one is held).

    Renewed every second for LEASE_SECONDS, so a monitor killed outright stops costing
    anything a few seconds later.  Monitors hold a shared lock on a file while they run; the
    last to leave (the only one that can take the lock exclusively) ends the lease at once."""

    LEASE_SECONDS = 5.0
    RENEW_EVERY = 1.0

    def __init__(self, ns, datapath) -> None:
        import fcntl

        ns.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file = open(ns.state_dir / "monitor.lock", "a")  # noqa: SIM115 (held open)
        fcntl.flock(self._file, fcntl.LOCK_SH)
        self._datapath = datapath
        self._renewed = 0.0
        self.renew()

    def renew(self) -> None:
        now = time.monotonic()
        if now - self._renewed >= self.RENEW_EVERY:
            self._datapath.listen(self.LEASE_SECONDS)
            self._renewed = now

    def release(self) -> None:
        import fcntl

        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass                       # another monitor still listens
        else:
            self._datapath.stop_listening()
        finally:
            self._file.close()


# Every source of events, the datapath's first: each presents its own events (``columns``).
SOURCES: dict[str, Any] = {"policy": PolicySource, **KIND_TYPES}
TYPES = tuple(SOURCES)


def _cfg_event_sample() -> int:
    from ..abi import CFG_EVENT_SAMPLE

    return CFG_EVENT_SAMPLE


def _open_tracers(kinds: list[str], hook: str | None) -> list:
    if not kinds:
        return []
    from . import trace

    return trace.open_tracers(kinds, hook)


# ---- formatting ------------------------------------------------------------------------

HEADER = f"{'TIME':<12} {'TYPE':<7} {'WHERE':<18} {'WHAT':<24} FLOW"


def _flow(e: dict) -> str:
    proto = e.get("proto")
    name = PROTO_NAMES.get(proto, str(proto)) if proto is not None else ""
    src, dst = e.get("src") or e.get("saddr"), e.get("dst") or e.get("daddr")
    if src is None:
        return name
    sport, dport = e.get("sport"), e.get("dport")
    left = f"{src}:{sport}" if sport is not None else str(src)
    right = f"{dst}:{dport}" if dport is not None else str(dst)
    return f"{name} {left} > {right}".strip()


def format_event(e: dict) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
    stamp += f".{int(e['time'] * 1000) % 1000:03d}"
    kind = e["type"]
    where, what = SOURCES[kind].columns(e)
    line = f"{stamp:<12} {kind:<7} {where[:18]:<18} {what[:24]:<24} {_flow(e)}"
    return line[:100]


def _jsonable(e: dict) -> dict:
    return {k: v for k, v in e.items()}


# ---- monitor ---------------------------------------------------------------------------

def monitor(types: list[str], filters: Filters, output: str = "text", count: int | None = None,
            timeout: float | None = None, hook: str | None = None, out=None,
            err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise NetctlError(f"--type: unknown {', '.join(unknown)} (choose from "
                          f"{', '.join(TYPES)})")
    from ..kernel import privilege

    privilege.require("monitor", *privilege.TRACING)
    policy = PolicySource.open() if "policy" in types else None
    tracers = []
    try:
        tracers = _open_tracers([t for t in types if t != "policy"], hook)
        sources = []
        if "policy" in types:
            sources.append(policy.describe() if policy else
                           "policy: no netctl datapath in this network namespace")
        sources += [f"{t.kind}: {t.hook} ({t.why})" for t in tracers]
        header = "netctl monitor: " + "; ".join(sources)
        if output == "json":
            print(json.dumps({"type": "start", "sources": sources}), file=out, flush=True)
        else:
            print(header, file=out)
            print(HEADER, file=out, flush=True)
        shown = 0
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while True:
                events = []
                if policy:
                    events += policy.poll(50 if tracers else 200)
                for t in tracers:
                    events += t.poll(10)
                events.sort(key=lambda e: e["time"])
                for e in events:
                    if not filters.match(e):
                        continue
                    print(json.dumps(_jsonable(e)) if output == "json" else format_event(e),
                          file=out)
                    shown += 1
                    if count and shown >= count:
                        out.flush()
                        return 0
                out.flush()                     # once per batch, not per event
                if deadline and time.monotonic() >= deadline:
                    return 0
                if not policy and not tracers:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return 0
        finally:
            lost = {}
            if policy:
                lost.update({f"policy_{k}": v for k, v in policy.losses().items()})
            for t in tracers:
                lost[f"{t.kind}_lost"] = t.lost()
            print(f"netctl monitor: {shown} events shown; not shown: "
                  + ", ".join(f"{k} {v}" for k, v in lost.items()), file=err)
    finally:
        for t in tracers:
            t.close()
        if policy:
            policy.close()
