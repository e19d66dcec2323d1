"""Compiled tracers kept for reuse (NETCTL_TRACER_REUSE=1, netctl/observe/trace/_reuse.py):
a tracer opened again takes the closed one's compile instead of compiling, and starts as a
fresh one does: no counts, no events of its predecessor, nothing attached twice."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from netctl.observe.trace import _reuse, _tracer, open_tracers, probe_hooks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "netns"))
from nsutil import inside, netns  # noqa: E402


def _drops(tracer, n: int) -> None:
    with netns("reuse") as ns, inside(ns), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(n):
            sock.sendto(b"netctl", ("127.0.0.1", 9))


def test_a_reopened_tracer_reuses_the_compile_and_starts_empty(monkeypatch):
    if not probe_hooks(["drop"])["drop"]["tracepoint"]["ok"]:
        pytest.skip("the drop tracer's tracepoint does not attach here")
    monkeypatch.setenv(_reuse.ENV, "1")
    compiles = []
    real = _tracer._bpf_class()

    def counting(*args, **kwargs):
        compiles.append(kwargs.get("cflags"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_tracer, "_bpf_class", lambda: counting)
    first = open_tracers(["drop"], "tracepoint")[0]
    try:
        _drops(first, 5)
        assert first.counts()["reason"].get("NO_SOCKET", 0) >= 5
        bpf = first._bpf
    finally:
        first.close()
    second = open_tracers(["drop"], "tracepoint")[0]
    try:
        assert second._bpf is bpf and len(compiles) <= 1, compiles
        assert second.counts()["reason"] == {} and second.lost() == 0
        assert second.poll(0) == []                  # the first one's events are gone
        _drops(second, 3)
        events = [e for e in second.poll(500) if e["reason"] == "NO_SOCKET"]
        assert len(events) >= 3                      # delivered once each, not twice
        assert second.counts()["reason"]["NO_SOCKET"] >= 3
    finally:
        second.close()
    monkeypatch.delenv(_reuse.ENV)
    for kept in _reuse._pool.pop(bpf._netctl_key, []):
        _tracer._dispose(kept)
