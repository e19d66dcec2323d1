"""`netctl lab run POLICY`: the whole job in one command, on a throwaway namespace lab.

Builds two network namespaces joined by a veth pair (a client and a server), applies the
policy to the server's end exactly as `netctl apply --dev` would, sends every packet of
the policy's `tests:` section as real frames through the interface (ingress tests from the
client side, egress tests out of the server's end), checks that each frame was counted by
the rule (or default) the reference model says decides it, prints the status table, and
removes everything it made, also when something fails.

Frames go through packet sockets: they meet netctl exactly where traffic from a real peer
would (tc or XDP on the server's interface), whatever their addresses.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import NetctlError
from ..kernel import privilege
from ..kernel.netlab import inside, link_mac, netns, veth
from ..policy.evaluate import evaluate
from ..policy.explain import describe_packet
from ..policy.model import Direction, Policy
from ..policy.testing import expectation_met

ETH_P_ALL = 0x0003


@dataclass
class Lab:
    client: str
    server: str
    client_if: str
    server_if: str


@contextlib.contextmanager
def namespaces(say) -> Iterator[Lab]:
    tag = f"{os.getpid() % 100000}"
    lab = Lab(f"nctl-lab{tag}-client", f"nctl-lab{tag}-server", f"lab{tag}c", f"lab{tag}s")
    # No addresses and no IPv6 on the lab's link (quiet): every frame counted is one the lab
    # sent.  Hooks see frames whatever the stack's configuration.
    with netns(lab.client), netns(lab.server), veth(lab.client, lab.server, lab.client_if,
                                                    lab.server_if, quiet=True):
        say(f"lab: namespaces {lab.client} and {lab.server}, veth {lab.client_if} <-> "
            f"{lab.server_if}")
        yield lab


def _netctl(ns: str, *args: str) -> subprocess.CompletedProcess:
    """netctl as a separate short process inside ``ns``, as an operator would run it."""
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "netctl", *args],
                          capture_output=True, text=True, check=False)


def _send(ns: str, ifname: str, frames: list[bytes]) -> None:
    with inside(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with sock:
        sock.bind((ifname, 0))
        for frame in frames:
            try:
                sock.send(frame)
            except OSError as exc:
                # A frame dropped at tc egress makes the send fail with ENOBUFS: it was
                # sent, and judged.
                if exc.errno != errno.ENOBUFS:
                    raise


def _without_routes(policy: Policy, path: str) -> str:
    """The policy file, or a copy without its routes: the lab has no interfaces for them
    (forwarding has its own tests, in a client-router-server lab)."""
    if not policy.routes:
        return path
    import tempfile

    with open(path, encoding="utf-8") as f:
        text = policy_text_without_routes(f.read(), os.path.dirname(os.path.abspath(path)))
    fd, copy = tempfile.mkstemp(prefix="netctl-lab-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return copy


def policy_text_without_routes(text: str, base_dir: str | None = None) -> str:
    """A valid policy's text without its `routes:`, meaning exactly what `text` means
    (relative set files named from ``base_dir``, the original's directory: the copy is
    written elsewhere).

    The text is read the way the loader reads it (yamlsrc: plain decimal integers, nulls,
    and strings for everything else) and written back with every string double-quoted, so
    nothing is read differently the second time: a YAML 1.1 reader would have turned the
    plain `xdp: off` into false, `010` into eight and `1:2:3:4:5:6:7:8` into a number."""
    import yaml

    from ..policy.yamlsrc import YMap, YSeq, compose

    root, problems = compose(text)
    if problems or not isinstance(root, YMap):
        raise NetctlError("the lab rewrites only valid policies")

    def plain(node: object) -> object:
        if isinstance(node, YMap):
            return {key: plain(value) for key, value in node.items()}
        if isinstance(node, YSeq):
            return [plain(item) for item in node]
        return node

    class QuotingDumper(yaml.SafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True   # an alias's target is written out again: no anchors to resolve

    QuotingDumper.add_representer(
        str, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                                           style='"'))
    data = plain(root)
    data.pop("routes", None)
    for spec in (data.get("sets") or {}).values():
        if base_dir and isinstance(spec, dict) and isinstance(spec.get("file"), str) \
                and not os.path.isabs(spec["file"].strip()):
            spec["file"] = os.path.join(base_dir, spec["file"].strip())
    return yaml.dump(data, Dumper=QuotingDumper, sort_keys=False, allow_unicode=True,
                     width=1 << 20)


def run(policy: Policy, path: str, count: int = 10, out=print) -> int:
    """Returns the exit code: 0 when every test packet was counted where expected."""
    from ..datapath.frames import Unrepresentable, frame_for
    from ..present import format_status

    # namespaces and mounts (CAP_SYS_ADMIN), veths (CAP_NET_ADMIN), programs (CAP_BPF)
    privilege.require("lab", privilege.CAP_SYS_ADMIN, *privilege.LOAD)
    if not policy.tests:
        raise NetctlError(f"{path}: the lab sends the policy's tests: packets, and it has none")
    started = time.monotonic()
    failures = 0
    with namespaces(out) as lab:
        applied_path = _without_routes(policy, path)
        applied = _netctl(lab.server, "apply", applied_path, "--dev", lab.server_if)
        if applied_path != path:
            os.unlink(applied_path)
        if applied.returncode != 0:
            raise NetctlError(f"apply failed:\n{applied.stderr.strip()}")
        out("apply: " + applied.stdout.strip().replace("\n", "\n       "))
        try:
            failures = _traffic(lab, policy, count, out, frame_for, Unrepresentable)
            shown = _netctl(lab.server, "status", "-o", "json")
            import json

            out("")
            out(format_status(json.loads(shown.stdout)))
        finally:
            detached = _netctl(lab.server, "detach", "--all")
            out("")
            out("cleanup: " + ("; ".join(detached.stdout.strip().splitlines())
                               if detached.returncode == 0 else detached.stderr.strip())
                + "; namespaces removed")
    verdict = "all counted as expected" if not failures else f"{failures} MISMATCHED"
    out(f"lab: {len(policy.tests)} test packets x {count} frames, {verdict} "
        f"({time.monotonic() - started:.1f} s)")
    return 1 if failures else 0


def _traffic(lab: Lab, policy: Policy, count: int, out, frame_for, unrepresentable) -> int:
    import json

    from scapy.layers.l2 import Ether

    server_mac = link_mac(lab.server, lab.server_if)
    client_mac = link_mac(lab.client, lab.client_if)
    out("")
    out(f"traffic: each tests: packet sent {count} times as real frames")
    failures = 0
    for test in policy.tests:
        decision = evaluate(policy, test.packet, test.direction)
        try:
            frame = frame_for(test.packet)
        except unrepresentable as exc:
            out(f"  skip {describe_packet(test.packet)}: {exc}")
            continue
        ingress = test.direction is Direction.INGRESS
        eth = Ether(frame)
        eth.dst, eth.src = (server_mac, client_mac) if ingress else (client_mac, server_mac)
        before = json.loads(_netctl(lab.server, "status", "-o", "json").stdout)
        if ingress:
            _send(lab.client, lab.client_if, [bytes(eth)] * count)
        else:
            _send(lab.server, lab.server_if, [bytes(eth)] * count)
        time.sleep(0.05)
        after = json.loads(_netctl(lab.server, "status", "-o", "json").stdout)
        counted, where = _delta(before, after, decision, test.direction.value)
        ok = counted == count and expectation_met(test, decision)
        failures += not ok
        by = f"rule {decision.rule.name}" if decision.rule else decision.why
        out(f"  {'ok  ' if ok else 'FAIL'} {describe_packet(test.packet):<58} "
            f"{test.direction.value:<7} {decision.verdict.value:<6} by {by:<20} "
            f"counted {counted}/{count} {where}")
    return failures


def _delta(before: dict, after: dict, decision, direction: str) -> tuple[int, str]:
    if decision.rule is not None:
        name = decision.rule.name
        get = {r["name"]: r["packets"] for r in before["rules"]}
        now = {r["name"]: r["packets"] for r in after["rules"]}
        return now[name] - get[name], f"on rule {name}"
    if decision.why == "ndp":
        return after["passed"]["ndp"] - before["passed"]["ndp"], "as neighbour discovery"
    action = decision.verdict.value
    was = before["defaults"][direction][action]["packets"]
    return after["defaults"][direction][action]["packets"] - was, f"by the {direction} default"
