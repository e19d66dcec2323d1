"""The state file, typed: what was applied in a network namespace, as apply left it.

``STATE_ROOT/ns<cookie>/state.json`` is read by every verb that finds the live datapath
again (status, conntrack, monitor, set, detach, the next apply).  On disk it is one JSON
object, version 1 since netctl's first release::

    {"version": 1,
     "build": {"id", "constants", "source", "limits", "verifier", "created"},
     "generations": {"0": GENERATION, "1": GENERATION},
     "interfaces": {NAME: INTERFACE},
     "carried": {"rules": {RULE: [packets, bytes]}, "stats": [[packets, bytes], ...]},
     "netns": NAME, "epoch": N,
     "request": {"devs": [...] or null, "xdp_mode": MODE or null, "attach": "legacy"},
     "pending": {"build": BUILD, "generation": GENERATION, "interfaces": {...}},
     "confirm": {"gen", "deadline", "wall_deadline", "policy", "previous", "watcher"},
     "rollbacks": N, "last_rollback": {"at", "policy", "restored"}}

(``pending`` only while a rebuild's programs are being attached: docs/reliability.md).

Compatibility both ways: files written by older netctl lack keys added since (an
interface's ``link``, a build's ``limits``, a generation's ``contents`` and ``nexthops``,
``epoch``, ``request``, an interface's ``tc_attach`` and ``xdp_attach``, a request's
``attach``); they load with the defaults the code has always assumed.  Keys this
netctl does not know (written by a newer one at the same version) are kept in ``extra`` and
written back, so neither loses what the other wrote.  A file of another version is refused:
an older netctl must not act on a layout it cannot read.

This module is pure: no kernel, no files but the one it is asked to read or write.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NetctlError

STATE_VERSION = 1


def _extra(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    return value


# ---- the parts ---------------------------------------------------------------------------------

@dataclass
class Build:
    """The programs and maps pinned in ``ns<cookie>/<id>/``."""

    id: str
    constants: dict[str, int]
    source: str | None = None          # build.source_digest() of the programs' text
    limits: dict[str, int] | None = None   # policy.plan.Limits as a dict (None: defaults)
    verifier: dict[str, Any] = field(default_factory=dict)
    created: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("id", "constants", "source", "limits", "verifier", "created")

    @classmethod
    def from_json(cls, data: Any) -> Build:
        data = _object(data, "build")
        if not isinstance(data["id"], str) or not isinstance(data["constants"], dict):
            raise ValueError("build id or constants malformed")
        return cls(id=data["id"], constants=data["constants"], source=data.get("source"),
                   limits=data.get("limits"), verifier=data.get("verifier") or {},
                   created=data.get("created"), extra=_extra(data, cls._KEYS))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "constants": self.constants}
        # Absent in builds recorded before they were kept: stay absent.
        if self.source is not None:
            out["source"] = self.source
        if self.limits is not None:
            out["limits"] = self.limits
        out["verifier"] = self.verifier
        if self.created is not None:
            out["created"] = self.created
        return {**out, **self.extra}

    def capacities(self):
        """The capacities (policy.plan.Limits) the build was made with: the defaults for
        builds recorded before capacities could grow, which had them."""
        from ..policy.plan import Limits

        try:
            return Limits(**self.limits) if self.limits else Limits()
        except (TypeError, ValueError):
            return Limits()


@dataclass
class NextHop:
    """A route's next hop as resolved at apply time (status shows it with its counters)."""

    dst: str
    via: str
    dev: str
    ifindex: int
    smac: str | None
    dmac: str | None
    cc: str | None = None
    judge_egress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("dst", "via", "dev", "ifindex", "smac", "dmac", "cc", "judge_egress")

    @classmethod
    def from_json(cls, data: Any) -> NextHop:
        data = _object(data, "next hop")
        return cls(dst=data["dst"], via=data["via"], dev=data["dev"], ifindex=data["ifindex"],
                   smac=data.get("smac"), dmac=data.get("dmac"), cc=data.get("cc"),
                   judge_egress=bool(data.get("judge_egress", False)),
                   extra=_extra(data, cls._KEYS))

    def to_json(self) -> dict[str, Any]:
        return {"dst": self.dst, "via": self.via, "dev": self.dev, "ifindex": self.ifindex,
                "smac": self.smac, "dmac": self.dmac, "cc": self.cc,
                "judge_egress": self.judge_egress, **self.extra}


@dataclass
class Generation:
    """What one generation of the maps holds: the policy written there and how to read its
    counters back (rule names and actions by rule index)."""

    policy: str = ""                   # absolute path, or "<stdin>"
    policy_sha256: str | None = None   # None for standard input
    digest: str | None = None          # the plan's digest; None: nothing vouches for it
    contents: dict[str, str] | None = None   # per-map fingerprints (read-back check)
    applied_at: float = 0.0
    rules: list[str] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)   # 0 accept, 1 drop, by rule index
    metrics: list[int] = field(default_factory=list)   # indexes of rules marked metrics
    # Per named set: policy.sets.sets_record (file, sha256, sizes, live edits add/del).
    # None (absent on disk) when the policy defines no sets.
    sets: dict[str, dict[str, Any]] | None = None
    snapshot: str | None = None        # token of the saved policy (datapath.setctl)
    nexthops: list[NextHop] = field(default_factory=list)
    # sha256 of the policy text as applied, saved beside the state (`netctl show`); None
    # in records written before the text was kept.
    text_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("policy", "policy_sha256", "digest", "contents", "applied_at", "rules",
             "actions", "metrics", "sets", "snapshot", "nexthops", "text_sha256")

    @classmethod
    def from_json(cls, data: Any) -> Generation:
        data = _object(data, "generation")
        lists = {k: data.get(k) or [] for k in ("rules", "actions", "metrics")}
        if not all(isinstance(v, list) for v in lists.values()):
            raise ValueError("generation rules, actions or metrics malformed")
        return cls(policy=data.get("policy", ""), policy_sha256=data.get("policy_sha256"),
                   digest=data.get("digest"), contents=data.get("contents"),
                   applied_at=data.get("applied_at", 0.0), **lists,
                   sets=data.get("sets"), snapshot=data.get("snapshot"),
                   nexthops=[NextHop.from_json(n) for n in data.get("nexthops") or []],
                   text_sha256=data.get("text_sha256"), extra=_extra(data, cls._KEYS))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy, "policy_sha256": self.policy_sha256, "digest": self.digest,
            "contents": self.contents, "applied_at": self.applied_at, "rules": self.rules,
            "actions": self.actions, "metrics": self.metrics}
        if self.sets is not None:
            out["sets"] = self.sets
        out["nexthops"] = [n.to_json() for n in self.nexthops]
        if self.snapshot is not None:   # added last by the apply (datapath.setctl)
            out["snapshot"] = self.snapshot
        if self.text_sha256 is not None:
            out["text_sha256"] = self.text_sha256
        return {**out, **self.extra}

    def unvouched(self) -> Generation:
        """This record with nothing vouching for what the maps hold (a generation being
        rewritten, or one changed by hand): read back from the kernel next time."""
        return dataclasses.replace(self, digest=None, contents=None)

    def set_edits(self) -> dict[str, dict[str, list[str]]]:
        """The overlay of each set in force (``netctl set add/del``): {set: {add, del}}."""
        return {name: {"add": rec.get("add", []), "del": rec.get("del", [])}
                for name, rec in (self.sets or {}).items()
                if rec.get("add") or rec.get("del")}


@dataclass
class Interface:
    """Where netctl enforces on one interface, and what it created there."""

    name: str
    ifindex: int | None = None
    kind: str | None = None            # rtnetlink link kind (None: a NIC or loopback)
    ingress: str | None = None         # a hooks.HOOK_* or None (not enforced)
    egress: str | None = None
    why: str | None = None
    created_clsact: bool = False
    link: str | None = None            # attach.LAYER_*; absent in older records: Ethernet
    # How the hooks are reached (attach.TC_*, attach.XDP_*), set for the hooks used; absent
    # in older records, whose netctl used cls_bpf filters and netlink only.
    tc_attach: str | None = None
    xdp_attach: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("name", "ifindex", "kind", "ingress", "egress", "why", "created_clsact", "link",
             "tc_attach", "xdp_attach")

    @classmethod
    def from_json(cls, data: Any) -> Interface:
        data = _object(data, "interface")
        return cls(name=data["name"], ifindex=data.get("ifindex"), kind=data.get("kind"),
                   ingress=data.get("ingress"), egress=data.get("egress"),
                   why=data.get("why"), created_clsact=bool(data.get("created_clsact")),
                   link=data.get("link"), tc_attach=data.get("tc_attach"),
                   xdp_attach=data.get("xdp_attach"), extra=_extra(data, cls._KEYS))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "ifindex": self.ifindex, "kind": self.kind,
            "ingress": self.ingress, "egress": self.egress, "why": self.why,
            "created_clsact": self.created_clsact}
        if self.link is not None:
            out["link"] = self.link
        if self.tc_attach is not None:
            out["tc_attach"] = self.tc_attach
        if self.xdp_attach is not None:
            out["xdp_attach"] = self.xdp_attach
        return {**out, **self.extra}

    @property
    def tc_path(self) -> str | None:
        """The way netctl's tc hooks are reached here ("tcx" or "cls_bpf"), None without
        one."""
        if "tc" not in (self.ingress, self.egress):
            return None
        return self.tc_attach or "cls_bpf"

    @property
    def xdp_path(self) -> str | None:
        """The way netctl's XDP program is attached here ("link" or "netlink"), None
        without one."""
        if not (self.ingress or "").startswith("xdp"):
            return None
        return self.xdp_attach or "netlink"


@dataclass
class Carried:
    """Counters carried over from generations and builds packets have left: per rule name
    [packets, bytes], per stat slot [packets, bytes]."""

    rules: dict[str, list[int]] = field(default_factory=dict)
    stats: list[list[int]] | None = None   # None: all zero (abi.STAT_MAX slots)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Carried:
        data = _object(data or {}, "carried")
        rules, stats = data.get("rules") or {}, data.get("stats") or None
        if not isinstance(rules, dict) or not isinstance(stats, list | None):
            raise ValueError("carried counters malformed")
        return cls(rules=rules, stats=stats, extra=_extra(data, ("rules", "stats")))

    def to_json(self) -> dict[str, Any]:
        return {"rules": self.rules, "stats": self.all_stats(), **self.extra}

    def all_stats(self) -> list[list[int]]:
        from .. import abi

        return self.stats if self.stats is not None else [[0, 0]] * abi.STAT_MAX

    def copy(self) -> Carried:
        return Carried(dict(self.rules), list(self.all_stats()), dict(self.extra))


@dataclass
class Request:
    """How the live policy was last applied (--dev, --xdp-mode, NETCTL_ATTACH): a set edit
    applies the same way, and the same-file shortcut needs the same request."""

    devs: list[str] | None = None
    xdp_mode: str | None = None
    attach: str | None = None          # NETCTL_ATTACH when it asked for "legacy"

    @classmethod
    def from_json(cls, data: Any) -> Request:
        data = _object(data, "request")
        return cls(devs=data.get("devs"), xdp_mode=data.get("xdp_mode"),
                   attach=data.get("attach"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"devs": self.devs, "xdp_mode": self.xdp_mode}
        if self.attach is not None:
            out["attach"] = self.attach
        return out


@dataclass
class Pending:
    """A rebuild whose programs are being attached (recorded first: a kill after the
    attach leaves interfaces running it, and status must know what they run)."""

    build: Build
    generation: Generation
    interfaces: dict[str, Interface]

    @classmethod
    def from_json(cls, data: Any) -> Pending:
        data = _object(data, "pending")
        return cls(build=Build.from_json(data["build"]),
                   generation=Generation.from_json(data["generation"]),
                   interfaces=_interfaces(data.get("interfaces")))

    def to_json(self) -> dict[str, Any]:
        return {"build": self.build.to_json(), "generation": self.generation.to_json(),
                "interfaces": {n: i.to_json() for n, i in self.interfaces.items()}}


@dataclass
class Confirm:
    """An apply awaiting `netctl confirm` (apply --confirm SECONDS): generation ``gen`` judges
    until ``deadline`` (seconds of the monotonic clock, as the programs read it), then the
    other one, which still holds the policy before (``previous``; None: nothing was live,
    and the other generation lets everything pass)."""

    gen: int
    deadline: int
    wall_deadline: float           # the same moment in wall-clock time, for people
    policy: str
    previous: str | None = None
    watcher: int | None = None     # pid of the process that records the rollback on time
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("gen", "deadline", "wall_deadline", "policy", "previous", "watcher")

    @classmethod
    def from_json(cls, data: Any) -> Confirm:
        data = _object(data, "confirm")
        return cls(gen=int(data["gen"]), deadline=int(data["deadline"]),
                   wall_deadline=float(data["wall_deadline"]), policy=data["policy"],
                   previous=data.get("previous"), watcher=data.get("watcher"),
                   extra=_extra(data, cls._KEYS))

    def to_json(self) -> dict[str, Any]:
        return {"gen": self.gen, "deadline": self.deadline,
                "wall_deadline": self.wall_deadline, "policy": self.policy,
                "previous": self.previous, "watcher": self.watcher, **self.extra}


def _interfaces(data: Any) -> dict[str, Interface]:
    return {name: Interface.from_json(rec)
            for name, rec in _object(data or {}, "interfaces").items()}


# ---- the whole file ----------------------------------------------------------------------------

@dataclass
class State:
    """The state file.  ``build`` None: nothing applied (or only a pending rebuild)."""

    build: Build | None = None
    generations: dict[int, Generation] = field(default_factory=dict)
    interfaces: dict[str, Interface] = field(default_factory=dict)
    carried: Carried | None = None
    netns: str | None = None
    epoch: int = 0                     # the flow cache's epoch of the last flip
    request: Request | None = None
    pending: Pending | None = None
    confirm: Confirm | None = None     # an apply awaiting `netctl confirm`
    rollbacks: int = 0                 # applies rolled back for want of a confirmation
    last_rollback: dict[str, Any] | None = None   # {"at", "policy", "restored"}
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("version", "build", "generations", "interfaces", "carried", "netns", "epoch",
             "request", "pending", "confirm", "rollbacks", "last_rollback")

    @classmethod
    def from_json(cls, data: Any, where: str = "the state file") -> State:
        """Parse a decoded state file; NetctlError for another version or a malformed one."""
        if not isinstance(data, dict):
            raise NetctlError(f"{where} is corrupt (not a JSON object); 'netctl detach "
                              "--all' removes netctl's state and datapath")
        version = data.get("version")
        if type(version) is not int or version != STATE_VERSION:
            newer = type(version) is int and version > STATE_VERSION
            by = "a newer netctl" if newer else "an unknown writer"
            raise NetctlError(
                f"{where} has state version {version!r}, written by {by}; this netctl reads "
                f"version {STATE_VERSION} only and changes nothing: use the netctl that "
                "wrote it, or remove the file to start over (what is attached stays until "
                "'netctl detach --all')")
        try:
            gens = _object(data.get("generations") or {}, "generations")
            return cls(
                build=Build.from_json(data["build"]) if data.get("build") is not None
                else None,
                generations={int(g): Generation.from_json(rec) for g, rec in gens.items()},
                interfaces=_interfaces(data.get("interfaces")),
                carried=Carried.from_json(data["carried"]) if "carried" in data else None,
                netns=data.get("netns"), epoch=int(data.get("epoch", 0)),
                request=Request.from_json(data["request"]) if data.get("request") is not None
                else None,
                pending=Pending.from_json(data["pending"]) if data.get("pending") else None,
                confirm=Confirm.from_json(data["confirm"]) if data.get("confirm") else None,
                rollbacks=int(data.get("rollbacks", 0)),
                last_rollback=data.get("last_rollback"),
                extra=_extra(data, cls._KEYS))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NetctlError(f"{where} is corrupt ({type(exc).__name__}: {exc}); 'netctl "
                              "detach --all' removes netctl's state and datapath") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.build is not None:     # older netctl tests "build" in state: absent, never null
            out["build"] = self.build.to_json()
        out["generations"] = {str(g): rec.to_json() for g, rec in self.generations.items()}
        out["interfaces"] = {n: i.to_json() for n, i in self.interfaces.items()}
        if self.carried is not None:
            out["carried"] = self.carried.to_json()
        out["netns"] = self.netns
        out["epoch"] = self.epoch
        if self.request is not None:
            out["request"] = self.request.to_json()
        if self.pending is not None:   # absent, never null, once an apply completes
            out["pending"] = self.pending.to_json()
        if self.confirm is not None:
            out["confirm"] = self.confirm.to_json()
        if self.rollbacks:
            out["rollbacks"] = self.rollbacks
            out["last_rollback"] = self.last_rollback
        return {**out, **self.extra, "version": STATE_VERSION}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))  # the C encoder

    @classmethod
    def loads(cls, text: str, where: str = "the state file") -> State:
        try:
            data = json.loads(text)
        except ValueError:
            raise NetctlError(f"{where} is corrupt; 'netctl detach --all' removes netctl's "
                              "state and datapath") from None
        return cls.from_json(data, where)

    def generation(self, gen: int) -> Generation | None:
        return self.generations.get(gen)


def read(path: Path) -> State | None:
    """The state file at ``path``, or None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return State.loads(text, str(path))


def write(path: Path, state: State) -> None:
    """Atomically (write a temporary file next to it, then rename it over the old one),
    root-only (0600 in a 0700 directory)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.parent / f".state.{os.getpid()}.tmp"
    text = state.dumps()
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
