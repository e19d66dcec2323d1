"""The fleet's key space in etcd, under a versioned prefix (docs/fleet.md, Key space).

    /netctl/v1/policies/NAME/DIGEST   policy text, one key per version (never rewritten)
    /netctl/v1/assignments/NODE       what NODE should run: policy name, digest, generation,
                                      interfaces (JSON)
    /netctl/v1/nodes/NODE             NODE's registration (labels, agent version, start time),
                                      attached to the agent's lease: gone when it dies
    /netctl/v1/status/NODE            what NODE runs: applied digest, generation, error,
                                      counters (JSON, no lease: kept when the agent dies)
    /netctl/v1/push/seq               the number of the last push (its mod revision orders
                                      pushes)
    /netctl/v1/push/lock              held by the running push, under the pusher's lease

A policy version is addressed by its digest, so assigning a new version to the canaries
leaves the other nodes' policy untouched.  Everything here is pure: no etcd, no kernel.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import NetctlError

PREFIX = "/netctl/v1/"
POLICIES = PREFIX + "policies/"
ASSIGNMENTS = PREFIX + "assignments/"
NODES = PREFIX + "nodes/"
STATUS = PREFIX + "status/"
PUSH_SEQ = PREFIX + "push/seq"
PUSH_LOCK = PREFIX + "push/lock"

# Node and policy names become one path element of a key: no slash, nothing odd.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


class FleetError(NetctlError):
    """An expected failure of the fleet verbs: etcd unreachable or refusing, a bad
    selector, a rollout that failed (exit 1)."""


def check_name(name: str, what: str = "node name") -> str:
    if not _NAME.match(name):
        raise FleetError(f"{what} {name!r}: use letters, digits, '.', '_' and '-' (up to 63, "
                         "starting with a letter or digit)")
    return name


def digest(text: str) -> str:
    """A policy version's identity: the SHA-256 of its text (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()


def short(d: str | None) -> str:
    """A digest as shown in tables: its first 12 hex digits."""
    return d[:12] if d else "-"


def policy_key(name: str, policy_digest: str) -> str:
    return f"{POLICIES}{name}/{policy_digest}"


def assignment_key(node: str) -> str:
    return ASSIGNMENTS + node


def node_key(node: str) -> str:
    return NODES + node


def status_key(node: str) -> str:
    return STATUS + node


def node_of(key: str, prefix: str) -> str:
    """The node a key under ``prefix`` (NODES, STATUS, ASSIGNMENTS) is about."""
    return key[len(prefix):]


def policy_of(key: str) -> tuple[str, str]:
    """(name, digest) of a key under POLICIES."""
    name, _, d = key[len(POLICIES):].partition("/")
    return name, d


@dataclass(frozen=True)
class Assignment:
    """What a node should run.  ``generation`` is the number of the push that wrote it."""

    policy: str
    digest: str
    generation: int
    interfaces: tuple[str, ...] | None = None   # None: the policy's own list

    def to_json(self) -> str:
        return json.dumps({"policy": self.policy, "digest": self.digest,
                           "generation": self.generation,
                           "interfaces": list(self.interfaces) if self.interfaces else None},
                          sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Assignment:
        try:
            d = json.loads(raw)
            ifs = d.get("interfaces")
            return cls(str(d["policy"]), str(d["digest"]), int(d["generation"]),
                       tuple(str(i) for i in ifs) if ifs else None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FleetError(f"unreadable assignment: {exc}") from None


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``--label K=V`` options as a dict; a bad one is a FleetError naming it."""
    labels: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not value or "," in value:
            raise FleetError(f"--label {item!r}: expected KEY=VALUE (no comma in the value)")
        labels[key] = value
    return labels


@dataclass(frozen=True)
class Selector:
    """Which nodes a push is for: ``names`` (comma-separated node names), a ``label``
    (KEY=VALUE), or every registered node (both None)."""

    names: tuple[str, ...] | None = None
    label: tuple[str, str] | None = None

    @classmethod
    def parse(cls, text: str | None) -> Selector:
        if text is None or not text.strip():
            return cls()
        text = text.strip()
        if "=" in text:
            key, _, value = text.partition("=")
            key, value = key.strip(), value.strip()
            if not _LABEL_KEY.match(key) or not value or "," in value or "=" in value:
                raise FleetError(f"--nodes {text!r}: a label selector is LABEL=VALUE (one)")
            return cls(label=(key, value))
        names = [n.strip() for n in text.split(",")]
        if any(not n for n in names):
            raise FleetError(f"--nodes {text!r}: an empty node name")
        for n in names:
            check_name(n)
        return cls(names=tuple(dict.fromkeys(names)))

    def pick(self, registered: dict[str, dict[str, Any]]) -> list[str]:
        """The selected nodes, sorted, from the registered ones (name -> registration).  A
        name not registered is a FleetError: a push to it would wait for nothing."""
        if self.names is not None:
            missing = [n for n in self.names if n not in registered]
            if missing:
                raise FleetError(f"not registered (no agent running): {', '.join(missing)}")
            return sorted(self.names)
        if self.label is not None:
            key, value = self.label
            return sorted(n for n, reg in registered.items()
                          if (reg.get("labels") or {}).get(key) == value)
        return sorted(registered)

    def __str__(self) -> str:
        if self.names is not None:
            return ",".join(self.names)
        if self.label is not None:
            return f"{self.label[0]}={self.label[1]}"
        return "every registered node"


def parse_url(url: str) -> tuple[str, str, int]:
    """(protocol, host, port) of one etcd client URL (http[s]://HOST[:PORT], default port
    2379)."""
    m = re.match(r"^(https?)://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(\d+))?/?$", url.strip())
    if not m:
        raise FleetError(f"--etcd {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    host = m.group(2).strip("[]")
    port = int(m.group(3) or 2379)
    if not 0 < port < 65536:
        raise FleetError(f"--etcd {url!r}: port out of range")
    return m.group(1), host, port
