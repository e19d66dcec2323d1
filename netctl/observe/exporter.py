"""`netctl exporter`: Prometheus metrics of the datapath and the kernel tracers.

Every scrape reads the live datapath of this network namespace (rule, default, drop-reason,
conntrack, forwarding and event counters, exactly what `netctl status` shows) and the
aggregates the kernel tracers keep in their maps (kernel drops by reason, TCP retransmits).
It binds to loopback unless told otherwise: metrics name hosts and flows.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
import threading
from typing import Any

from ..errors import NetctlError
from ..kernel import privilege
from .trace.kinds import EXPORTED, KIND_TYPES

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


# ---- the text exposition format -------------------------------------------------------------
#
# Written here rather than through prometheus-client's registry: at 100,000 rules a scrape has
# 200,000 samples, and the client's generic path took about 0.8 s per scrape where string
# formatting takes a tenth of that.  The output is the client's text format (version 0.0.4):
# counters named with `_total`, values as floats; tests read it back with its parser.

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RULE_MODES = ("all", "marked")   # and "top:K"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, labels: tuple[str, ...],
               samples) -> None:
        """One metric family: ``samples`` yields (label values, value)."""
        full = f"{name}_total" if kind == "counter" else name
        out = self.lines
        out.append(f"# HELP {full} {_escape_help(help_text)}")
        out.append(f"# TYPE {full} {kind}")
        for values, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(str(v))}"'
                                 for k, v in zip(labels, values, strict=True))
                out.append(f"{full}{{{inner}}} {float(value)!r}")
            else:
                out.append(f"{full} {float(value)!r}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def parse_rules(text: str) -> tuple[str, int]:
    """--rules: all, marked (rules with `metrics: true`) or top:K (the K busiest)."""
    if text in RULE_MODES:
        return text, 0
    kind, sep, count = text.partition(":")
    if kind == "top" and sep and count.isdigit() and int(count) > 0:
        return "top", int(count)
    raise NetctlError(f"--rules {text!r}: expected all, marked or top:K (K > 0)")


def select_rules(rules: list[dict], mode: str, count: int) -> list[dict]:
    if mode == "marked":
        return [r for r in rules if r.get("metrics")]
    if mode == "top":
        return sorted(rules, key=lambda r: (-r["packets"], r["index"]))[:count]
    return rules


class Collector:
    def __init__(self, tracers: list, rules: tuple[str, int] = ("all", 0)):
        self.tracers = tracers
        self.rules = rules
        self.lock = threading.Lock()

    def scrape(self) -> str:
        from ..datapath.control import status

        with self.lock:
            report: dict[str, Any] = status(verify=False)
        t = _Text()
        t.family("netctl_datapath_up", "gauge", "1 when a netctl datapath is live in this "
                 "network namespace and intact", (),
                 [((), 1.0 if report["applied"] and not report["problems"] else 0.0)])
        if report["applied"]:
            self._datapath(t, report)
        self._kernel(t)
        return t.text()

    def _datapath(self, t: _Text, report: dict) -> None:
        t.family("netctl_generation", "gauge", "the live policy generation (0 or 1)", (),
                 [((), report["generation"])])
        rules = select_rules(report["rules"], *self.rules)
        t.family("netctl_rule_packets", "counter", "packets decided by a rule",
                 ("rule", "action"), (((r["name"], r["action"]), r["packets"]) for r in rules))
        t.family("netctl_rule_bytes", "counter", "bytes decided by a rule", ("rule", "action"),
                 (((r["name"], r["action"]), r["bytes"]) for r in rules))
        t.family("netctl_default_packets", "counter", "packets no rule decided, by direction "
                 "and default verdict", ("direction", "verdict"),
                 [((direction, verdict), d[verdict]["packets"])
                  for direction, d in report["defaults"].items()
                  for verdict in ("accept", "drop")])
        t.family("netctl_drops", "counter", "packets the datapath dropped, by reason",
                 ("reason",), [((d["reason"],), d["packets"]) for d in report["drops"]])
        ct = report.get("conntrack") or {}
        if ct.get("enabled"):
            waiting = ct["unconfirmed"]
            t.family("netctl_conntrack_entries", "gauge", "tracked flows now, by table",
                     ("table",), [(("confirmed",), ct["entries"]),
                                  (("unconfirmed",), waiting["entries"])])
            t.family("netctl_conntrack_capacity", "gauge", "tracked flows at most, by table",
                     ("table",), [(("confirmed",), ct["capacity"]),
                                  (("unconfirmed",), waiting["capacity"])])
            t.family("netctl_conntrack_evicted", "counter", "tracked flows evicted by a full "
                     "table, by table", ("table",),
                     [(("confirmed",), ct["evicted"]), (("unconfirmed",), waiting["evicted"])])
            t.family("netctl_conntrack_accepted", "counter", "packets connection tracking "
                     "accepted before the rules, by kind", ("kind",),
                     [(("reply",), ct["replies_accepted"]),
                      (("related",), ct["related_accepted"])])
            t.family("netctl_conntrack_invalid", "counter", "packets of tracked flows refused "
                     "as replies (left to the rules)", (), [((), ct["invalid"])])
        t.family("netctl_events", "counter", "datapath events for monitor, by outcome",
                 ("outcome",), [((o,), report["events"][o])
                                for o in ("sent", "lost", "sampled_out")])
        cache = report.get("flow_cache")
        if cache:
            t.family("netctl_flow_cache_lookups", "counter", "packets classified from the "
                     "flow cache (hit) or by the lookups (miss)", ("result",),
                     [(("hit",), cache["hits"]), (("miss",), cache["misses"])])
        if report.get("routes"):
            t.family("netctl_route_packets", "counter", "packets forwarded by a route",
                     ("dst", "dev"), [((r["dst"], r["dev"]), r["packets"])
                                      for r in report["routes"]])

    def _kernel(self, t: _Text) -> None:
        lost = []
        for tracer in self.tracers:
            for metric in KIND_TYPES[tracer.kind].metrics(tracer.counts()):
                t.family(*metric)
            lost.append(((tracer.kind,), tracer.lost()))
        if self.tracers:
            t.family("netctl_tracer_events_lost", "counter", "tracer events the ring buffer "
                     "could not take", ("tracer",), lost)


def _http_server(host: str, port: int, collector: Collector):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server interface)
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served here")
                return
            try:
                body = collector.scrape().encode()
            except NetctlError as exc:
                self.send_error(503, str(exc))
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet: a scrape every few seconds is no news
            pass

    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(http.server.ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    server = Server((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def serve(listen: str = DEFAULT_LISTEN, kinds=EXPORTED, once: bool = False,
          out=print, err=None, rules: str = "all") -> int:
    """Serve until SIGINT/SIGTERM (``once``: return the text of one scrape, for tests)."""
    from . import trace

    privilege.require("exporter", *privilege.DATAPATH)
    host, port = parse_listen(listen)
    selection = parse_rules(rules)
    tracers = []
    try:
        try:
            tracers = trace.open_tracers(list(kinds))
        except NetctlError as exc:
            print(f"netctl exporter: kernel tracers unavailable ({exc}); serving datapath "
                  "metrics only", file=err or sys.stderr)
        collector = Collector(tracers, selection)
        if once:
            out(collector.scrape(), end="")
            return 0
        try:
            server, thread = _http_server(host, port, collector)
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
