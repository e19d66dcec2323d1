"""`netctl apply`: from a policy to the interfaces and hooks it goes live on, then the
transaction (netctl.datapath.transaction) under the namespace lock; and the two cheaper
ways out: a dry run, and the same file already live.

In order (each step leaves the previous policy running if it fails):

1. load and compile the policy (pure; an invalid policy changes nothing);
2. find every interface and decide its hooks (a missing interface changes nothing);
3. under the namespace lock, the transaction: open the live datapath from its pins or
   build a new one, write, attach, record, flip, finish.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from ..errors import AttachError, NetctlError
from ..gcpause import without_gc
from ..kernel import privilege
from ..policy.compile import compile_fitting
from ..policy.lockout import LockoutError, lockout, ssh_connection
from ..policy.model import Policy
from ..policy.plan import Limits, MapPlan, diff
from ..policy.plan import constants as plan_constants
from ..policy.sets import file_sha256
from . import attach as att
from .build import source_digest
from .hooks import (
    Found,
    attachments_intact,
    check_link_layer,
    coverage_warnings,
    decide_hooks,
    interface_record,
    targets,
    with_paths,
)
from .instance import contents_plan
from .live import (
    build_limits,
    changed_maps,
    fits,
    larger,
    live_state,
    open_live,
    reusable,
    stale_builds,
)
from .netns import Namespace, ensure_pin_root, netns_name
from .routes import resolve_routes
from .state import Generation, Request, State
from .transaction import ApplyResult, Transaction, as_json


@without_gc
def apply(policy: Policy, devs: list[str] | None = None, xdp_mode: str | None = None,
          dry_run: bool = False, limits: Limits = Limits(),  # noqa: B008
          extra_cflags: tuple[str, ...] = (), max_entries: int | None = None,
          ssh: str | None = None, confirm: int | None = None,
          attach: str | None = None) -> ApplyResult:
    """Make ``policy`` live (or, ``dry_run``, say what would change).  ``attach``: the ways
    onto the hooks (NETCTL_ATTACH: ``auto`` or None, the kernel's best; ``legacy``, cls_bpf
    filters and netlink XDP).  ``ssh``: the text of
    SSH_CONNECTION when the caller runs in an SSH session that must survive the apply (a
    policy that would drop it on an interface it is enforced on is refused: LockoutError;
    a dry run warns).  ``confirm``: seconds within which `netctl confirm` must come, else
    the policy before comes back (netctl/datapath/confirm.py)."""
    started = time.monotonic()
    if confirm is not None:
        from .confirm import check_seconds

        check_seconds(confirm)
    wanted = targets(policy, devs, xdp_mode)
    attach = normal_attach(attach)
    privilege.require("apply", *privilege.LOAD)
    tc_path, xdp_path = att.attach_paths(attach)
    ns = Namespace.current()
    # Capacities only grow: into the live build's when the policy fits there (no rebuild),
    # else as large as the policy needs (a rebuild).
    plan = compile_fitting(policy, larger(limits, build_limits(live_state(ns)[0])),
                           max_entries)
    with att.Links() as links:
        found: list[Found] = []
        for t in wanted:
            link = links.find(t.name)
            if link is None:
                raise AttachError(t.name, errno.ENODEV, "no such interface in this network "
                                  f"namespace ({netns_name() or 'unnamed'})")
            check_link_layer(link)
            found.append((t, link, with_paths(decide_hooks(link, t, bool(policy.routes)),
                                              tc_path, xdp_path)))
        warnings = coverage_warnings(policy, found)
        cut = None if confirm else _cuts_session(links, policy, ssh,
                                                 [t.name for t, _, _ in found])
        if cut and not dry_run:
            raise LockoutError(cut)
        if cut:
            warnings.append(cut)
        nexthops = resolve_routes(links, policy, warnings, found)
        if dry_run:
            return _dry_run(ns, plan, policy, found, warnings, started)
        ensure_pin_root()
        with ns.lock():
            from .confirm import settle

            settle(ns)   # a rollback the deadline made is recorded; a pending one refuses
            result = Transaction(ns, links, policy, plan, found, extra_cflags,
                                 nexthops, confirm).run()
            _record_request(ns, devs, xdp_mode, attach)
    result.warnings = warnings + result.warnings
    result.seconds = time.monotonic() - started
    return result


def _cuts_session(links: att.Links, policy: Policy, ssh: str | None,
                  enforced: list[str]) -> str | None:
    """Why the policy would drop the SSH session ``ssh`` describes, when the session's route
    leaves through an interface the policy is enforced on; else None."""
    session = ssh_connection(ssh)
    if session is None:
        return None
    try:
        routes = links.ipr.route("get", dst=str(session[0].src))
        oif = routes[0].get_attr("RTA_OIF") if routes else None
    except Exception:   # noqa: BLE001 (no route: the session cannot be on an interface here)
        return None
    link = links.info(oif) if oif is not None else None
    if link is None or link.name not in enforced:
        return None
    return lockout(policy, ssh)


def normal_attach(attach: str | None) -> str | None:
    """NETCTL_ATTACH as recorded: None for the default (``auto``), else checked."""
    if attach in (None, "", att.ATTACH_AUTO):
        return None
    if attach not in att.ATTACH_REQUESTS:
        raise NetctlError(f"NETCTL_ATTACH={attach!r}: expected one of "
                          f"{', '.join(att.ATTACH_REQUESTS)}")
    return attach


def _record_request(ns: Namespace, devs: list[str] | None, xdp_mode: str | None,
                    attach: str | None) -> None:
    state = ns.read_state() or State()
    state.request = Request(devs, xdp_mode, attach)
    ns.write_state(state)


def _dry_run(ns: Namespace, plan: MapPlan, policy: Policy, found: list[Found],
             warnings: list[str], started: float) -> ApplyResult:
    state, _notes = live_state(ns)
    live, _ = open_live(ns, state)
    reload = True
    rec = None
    try:
        if live is not None:
            assert state is not None
            rec = state.generation(live.active)
        if live is not None and reusable(state, plan):
            gen = live.active
            current = ns.load_plan(gen, rec.digest if rec is not None else None) \
                or contents_plan(live.read_generation(gen), plan)
            change = diff(current, plan)
            reload = False
        else:
            change = diff(None, plan)
    finally:
        if live is not None:
            live.close()
    interfaces = {t.name: interface_record(t, link, hooks, False) for t, link, hooks in found}
    previous = set(state.interfaces) if state is not None else set()
    return ApplyResult(policy.source, -1, reload, change, as_json(interfaces),
                       detached=sorted(previous - set(interfaces)), warnings=warnings,
                       dry_run=True, seconds=time.monotonic() - started,
                       rules=_rule_changes(ns, rec, policy, live is not None))


def _rule_changes(ns: Namespace, record: Generation | None, policy: Policy,
                  running: bool) -> dict[str, Any]:
    """The rule-level changes from the live policy (``record``, its generation) to
    ``policy``."""
    from ..policy.rulediff import rule_diff
    from .setctl import kept_policy

    if not running:
        return rule_diff(Policy(), policy).as_dict()    # nothing live: every rule is new
    if record is None:
        return {"unknown": "the state file does not describe the live generation"}
    try:
        return rule_diff(kept_policy(ns, record), policy).as_dict()
    except NetctlError as exc:
        return {"unknown": str(exc)}


@without_gc
def already_live(path: str, devs: list[str] | None, xdp_mode: str | None,
                 limits: Limits = Limits(),  # noqa: B008
                 attach: str | None = None) -> dict | None:
    """The live generation's record (as JSON, with ``generation`` and ``interfaces``) when
    the very same file (by content), applied the same way, is live and intact: then there
    is nothing to load, compile or write.  None when anything differs; the caller then does
    a full apply (which may still find nothing to write)."""
    privilege.require("apply", *privilege.LOAD)
    ns = Namespace.current()
    state = ns.read_state()
    if state is None or state.build is None:
        return None
    build = state.build
    built = build.capacities()
    # The same file compiles to the same plan, so what the plan alone chooses (the
    # conntrack size, rule-trie slots keyed by port) is taken from the build; compared is
    # what the file does not decide: the capacities and this netctl's map layout.
    same_plan = plan_constants(built, build.constants.get("NETCTL_CT_ENTRIES", 65536),
                               "NETCTL_DIRECT_PORT" in build.constants)
    if state.request != Request(devs, xdp_mode, normal_attach(attach)) \
            or build.constants != same_plan \
            or not fits(limits, built) or build.source != source_digest():
        return None
    if state.pending is not None or stale_builds(ns, build):
        return None                     # an apply was killed: a full one cleans up after it
    live, _ = open_live(ns, state)
    if live is None:
        return None
    with live:
        record = state.generation(live.active)
        if (record is None or record.policy != os.path.abspath(path)
                or record.policy_sha256 != file_sha256(path)
                or record.nexthops):   # routes: an apply refreshes their next hops
            return None
        for rec in (record.sets or {}).values():   # a set file changed: apply it
            if rec.get("file") and file_sha256(rec["file"]) != rec.get("sha256"):
                return None
        with att.Links() as links:
            for iface in state.interfaces.values():
                link = links.find(iface.name)
                if link is None or link.index != iface.ifindex:
                    return None
            if not attachments_intact(links, live.prog_ids(), state.interfaces):
                return None
        if changed_maps(live, live.active, record):   # changed by hand: apply rewrites
            return None
        return dict(record.to_json(), generation=live.active,
                    interfaces=as_json(state.interfaces))
