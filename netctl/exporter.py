"""`netctl exporter`: Prometheus metrics of the datapath and the kernel tracers.

Every scrape reads the live datapath of this network namespace (rule, default, drop-reason,
conntrack, forwarding and event counters, exactly what `netctl status` shows) and the
aggregates the kernel tracers keep in their maps (kernel drops by reason, TCP retransmits).
It binds to loopback unless told otherwise: metrics name hosts and flows.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
from typing import Any

from .errors import NetctlError

DEFAULT_LISTEN = "127.0.0.1:9433"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise NetctlError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise NetctlError(f"--listen {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


class Collector:
    def __init__(self, tracers: list):
        self.tracers = tracers
        self.lock = threading.Lock()

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from .datapath.control import status

        with self.lock:
            report: dict[str, Any] = status(verify=False)
        up = GaugeMetricFamily("netctl_datapath_up", "1 when a netctl datapath is live in "
                               "this network namespace and intact")
        up.add_metric([], 1.0 if report["applied"] and not report["problems"] else 0.0)
        yield up
        if report["applied"]:
            gen = GaugeMetricFamily("netctl_generation", "the live policy generation (0 or 1)")
            gen.add_metric([], report["generation"])
            yield gen
            packets = CounterMetricFamily("netctl_rule_packets", "packets decided by a rule",
                                          labels=["rule", "action"])
            nbytes = CounterMetricFamily("netctl_rule_bytes", "bytes decided by a rule",
                                         labels=["rule", "action"])
            for r in report["rules"]:
                packets.add_metric([r["name"], r["action"]], r["packets"])
                nbytes.add_metric([r["name"], r["action"]], r["bytes"])
            yield packets
            yield nbytes
            default = CounterMetricFamily("netctl_default_packets", "packets no rule decided, "
                                          "by direction and default verdict",
                                          labels=["direction", "verdict"])
            for direction, d in report["defaults"].items():
                for verdict in ("accept", "drop"):
                    default.add_metric([direction, verdict], d[verdict]["packets"])
            yield default
            drops = CounterMetricFamily("netctl_drops", "packets the datapath dropped, by "
                                        "reason", labels=["reason"])
            for d in report["drops"]:
                drops.add_metric([d["reason"]], d["packets"])
            yield drops
            ct = report.get("conntrack") or {}
            if ct.get("enabled"):
                waiting = ct["unconfirmed"]
                for name, help_text, confirmed, unconfirmed in (
                        ("netctl_conntrack_entries", "tracked flows now, by table",
                         ct["entries"], waiting["entries"]),
                        ("netctl_conntrack_capacity", "tracked flows at most, by table",
                         ct["capacity"], waiting["capacity"])):
                    g = GaugeMetricFamily(name, help_text, labels=["table"])
                    g.add_metric(["confirmed"], confirmed)
                    g.add_metric(["unconfirmed"], unconfirmed)
                    yield g
                evicted = CounterMetricFamily("netctl_conntrack_evicted", "tracked flows "
                                              "evicted by a full table, by table",
                                              labels=["table"])
                evicted.add_metric(["confirmed"], ct["evicted"])
                evicted.add_metric(["unconfirmed"], waiting["evicted"])
                yield evicted
                accepted = CounterMetricFamily("netctl_conntrack_accepted", "packets "
                                               "connection tracking accepted before the "
                                               "rules, by kind", labels=["kind"])
                accepted.add_metric(["reply"], ct["replies_accepted"])
                accepted.add_metric(["related"], ct["related_accepted"])
                yield accepted
                invalid = CounterMetricFamily("netctl_conntrack_invalid", "packets of "
                                              "tracked flows refused as replies (left to "
                                              "the rules)")
                invalid.add_metric([], ct["invalid"])
                yield invalid
            events = CounterMetricFamily("netctl_events", "datapath events for monitor, by "
                                         "outcome", labels=["outcome"])
            for outcome in ("sent", "lost", "sampled_out"):
                events.add_metric([outcome], report["events"][outcome])
            yield events
            if report.get("routes"):
                fwd = CounterMetricFamily("netctl_route_packets", "packets forwarded by a "
                                          "route", labels=["dst", "dev"])
                for r in report["routes"]:
                    fwd.add_metric([r["dst"], r["dev"]], r["packets"])
                yield fwd
        yield from self._kernel()

    def _kernel(self):
        from prometheus_client.core import CounterMetricFamily

        lost = CounterMetricFamily("netctl_tracer_events_lost", "tracer events the ring "
                                   "buffer could not take", labels=["tracer"])
        for tracer in self.tracers:
            counts = tracer.counts()
            if tracer.kind == "drop":
                m = CounterMetricFamily("netctl_kernel_drops", "packets the kernel dropped, "
                                        "by the kernel's drop reason", labels=["reason"])
                for reason, n in sorted(counts.get("reason", {}).items()):
                    m.add_metric([reason], n)
                yield m
            elif tracer.kind == "retrans":
                m = CounterMetricFamily("netctl_tcp_retransmits", "TCP segments retransmitted")
                m.add_metric([], sum(counts.get("flows", {}).values())
                             + sum(counts.get("sockets", {}).values()))
                yield m
            lost.add_metric([tracer.kind], tracer.lost())
        if self.tracers:
            yield lost


def serve(listen: str = DEFAULT_LISTEN, kinds=("drop", "retrans"), once: bool = False,
          out=print, err=None) -> int:
    """Serve until SIGINT/SIGTERM (``once``: return the text of one scrape, for tests)."""
    from prometheus_client import generate_latest, start_http_server
    from prometheus_client.registry import CollectorRegistry

    from . import trace
    from .datapath.control import require_privilege

    require_privilege("exporter")
    host, port = parse_listen(listen)
    tracers = []
    try:
        try:
            tracers = trace.open_tracers(list(kinds))
        except NetctlError as exc:
            print(f"netctl exporter: kernel tracers unavailable ({exc}); serving datapath "
                  "metrics only", file=err or sys.stderr)
        registry = CollectorRegistry()
        registry.register(Collector(tracers))
        if once:
            out(generate_latest(registry).decode())
            return 0
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise NetctlError(f"--listen {listen}: cannot serve there: {exc.strerror or exc} "
                              f"(errno {exc.errno})") from None
        kernel = ", ".join(f"{t.kind} via {t.hook}" for t in tracers) or "no kernel tracers"
        out(f"netctl exporter: serving http://{host}:{port}/metrics ({kernel})")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set():
            for t in tracers:   # keep the tracers' ring buffers drained
                t.poll(100)
            stop.wait(0.5)
        server.shutdown()
        thread.join(timeout=5)
        return 0
    finally:
        for t in tracers:
            t.close()
