"""Never lock the operator out: would a policy drop the SSH connection `netctl apply` runs
from?

sshd puts ``SSH_CONNECTION="CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT"`` in the
environment of the session.  Its packets are judged as the datapath will judge them once
the policy is live: the client's segments arriving (ingress) and this host's replies
leaving (egress), as TCP segments of an established connection.  A stateful policy does not
know the connection (it began before the policy), so its packets meet the rules like any
other.  Pure: the reference model decides, nothing is read but the variable's text.
"""

from __future__ import annotations

import ipaddress

from ..errors import NetctlError
from .evaluate import evaluate
from .model import Action, Direction, Packet, Policy


class LockoutError(NetctlError):
    """The policy would cut the SSH connection the apply runs from."""

    exit_code = 6


def ssh_connection(value: str | None) -> tuple[Packet, Packet] | None:
    """The session's packets (client -> here, here -> client) from SSH_CONNECTION, or None
    when it is unset or not four fields of addresses and ports."""
    parts = (value or "").split()
    if len(parts) != 4:
        return None
    try:
        client, server = (ipaddress.ip_address(parts[0].split("%")[0]),
                          ipaddress.ip_address(parts[2].split("%")[0]))
        cport, sport = int(parts[1]), int(parts[3])
    except ValueError:
        return None
    if client.version != server.version or not (0 < cport < 65536 and 0 < sport < 65536):
        return None
    return (Packet(src=client, dst=server, proto=6, sport=cport, dport=sport),
            Packet(src=server, dst=client, proto=6, sport=sport, dport=cport))


def lockout(policy: Policy, value: str | None) -> str | None:
    """Why ``policy`` would drop the SSH connection described by ``value`` (the text of
    SSH_CONNECTION), or None when it keeps it (or there is none)."""
    packets = ssh_connection(value)
    if packets is None:
        return None
    for packet, direction in zip(packets, (Direction.INGRESS, Direction.EGRESS), strict=True):
        decision = evaluate(policy, packet, direction)
        if decision.verdict is Action.DROP:
            by = (f"rule {decision.rule.name!r} (line {decision.rule.line})"
                  if decision.rule is not None else f"the {direction.value} default (drop)")
            return (f"{policy.source}: {by} would drop this SSH session's "
                    f"{'packets from' if direction is Direction.INGRESS else 'replies to'} "
                    f"{packets[0].src} port {packets[0].sport} ({direction.value}, TCP to "
                    f"{packet.dst} port {packet.dport}); add a rule that accepts it, apply "
                    "with --confirm SECONDS to have it undone unless confirmed, or --force")
    return None
