"""`netctl apply FILE`'s whole path in one call: the same file already live (nothing to
load), else load, validate and apply with the live set edits kept.  The CLI's `apply` verb
and the fleet agent (netctl/fleet/agent.py) both go through here, so a policy from etcd is
applied exactly as one given on the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import NetctlError
from ..kernel import privilege


@dataclass
class AppliedFile:
    """What `apply_file` did: ``live`` (the live record as JSON) when the very same file was
    already live and nothing was loaded; else the loaded ``policy`` and the apply's
    ``result`` (an ApplyResult)."""

    live: dict[str, Any] | None = None
    policy: Any = None
    result: Any = None


def apply_file(path: str, devs: list[str] | None = None, xdp_mode: str | None = None,
               dry_run: bool = False, confirm: int | None = None, force: bool = False,
               max_entries: int | None = None) -> AppliedFile:
    """Apply the policy file ``path`` (or standard input, ``-``) to this network namespace.
    Reads NETCTL_EXTRA_CFLAGS and NETCTL_ATTACH, and SSH_CONNECTION unless ``force``."""
    from ..policy.load import STDIN, load_policy
    from .control import already_live
    from .setctl import apply_keeping_edits

    if not dry_run:   # refused before the file is even read
        privilege.require("apply", *privilege.LOAD)
    extra = tuple(os.environ.get("NETCTL_EXTRA_CFLAGS", "").split())
    # NETCTL_ATTACH=legacy: cls_bpf filters and netlink XDP even where the kernel offers tcx
    # and XDP links (docs/datapath.md, Hooks); recorded, so set edits apply the same way.
    attach = os.environ.get("NETCTL_ATTACH") or None
    if not dry_run and not extra and path != STDIN and confirm is None:
        # The same file, applied the same way, live and intact: nothing to load or compile.
        # (Standard input is no file to compare: it is always loaded, compiled and diffed.)
        live = already_live(path, devs, xdp_mode, attach=attach)
        if live is not None:
            return AppliedFile(live=live)
    policy = load_policy(path)
    # NETCTL_EXTRA_CFLAGS: extra -D flags for the programs (tests use it to force a compile
    # or verifier failure); never needed in normal use.  The live edits of the policy's
    # sets (netctl set add/del) stay in force.
    if max_entries is not None and max_entries < 1:
        raise NetctlError("--max-entries must be a positive number of entries")
    # An apply from an SSH session refuses a policy that would cut that session, unless
    # force (docs: "Never locked out").
    ssh = None if force else os.environ.get("SSH_CONNECTION")
    result = apply_keeping_edits(policy, devs=devs, xdp_mode=xdp_mode, dry_run=dry_run,
                                 extra_cflags=extra, max_entries=max_entries, ssh=ssh,
                                 confirm=confirm, attach=attach)
    return AppliedFile(policy=policy, result=result)
