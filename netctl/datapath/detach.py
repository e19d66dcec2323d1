"""`netctl detach`: netctl's programs off interfaces, and with ``--all`` (or no interface
named) its pins, state and kernel routes too."""

from __future__ import annotations

import errno
from typing import Any

from ..errors import AttachError, NetctlError
from ..kernel import privilege
from . import attach as att
from .hooks import detach_interface, has_ours
from .netns import Namespace
from .state import Interface, State


def detach(devs: list[str] | None = None, everything: bool = False) -> dict[str, Any]:
    """Remove netctl's programs (and the clsact qdiscs it created) from the given interfaces,
    or from all; with all, remove the pins and the state too."""
    privilege.require("detach", *privilege.DATAPATH)
    ns = Namespace.current()
    with ns.lock():
        unreadable = None
        try:
            state = ns.read_state() or State()
        except NetctlError as exc:
            # The way out its own message names: with --all (or no interface named) a
            # state file that cannot be read is no reason to stay; the sweep below finds
            # netctl's programs on every interface without it.
            if devs and not everything:
                raise
            unreadable, state = str(exc), State()
        recorded = dict(state.interfaces)
        names = list(recorded) if (everything or not devs) else devs
        detached, gone = [], []
        with att.Links() as links:
            for name in names:
                rec = recorded.get(name)
                if rec is None:
                    link = links.find(name)
                    if link is None:
                        raise AttachError(name, errno.ENODEV, "no such interface")
                    rec = Interface(name=name, ifindex=link.index, created_clsact=False)
                if detach_interface(links, rec):
                    detached.append(name)
                else:
                    gone.append(name)
                recorded.pop(name, None)
            if everything or not devs:
                # Anything of netctl's left on an interface the state does not list (a
                # crashed apply, a lost state file) goes too.
                for link_msg in links.ipr.get_links():
                    link = links.info(link_msg["index"])
                    if link is not None and link.name not in detached:
                        rec = Interface(name=link.name, ifindex=link.index,
                                        created_clsact=False)
                        if has_ours(links, link):
                            detach_interface(links, rec)
                            detached.append(link.name)
            if not recorded:
                for family, dst in links.netctl_routes():
                    links.delete_route(family, dst)
            links.sweep_link_pins()   # links of interfaces that are gone hold nothing
        if recorded:
            state.interfaces = recorded
            ns.write_state(state)
        else:
            from .confirm import stop_watcher

            if state.confirm is not None:   # nothing left to roll back
                stop_watcher(state.confirm.watcher)
            ns.remove_all_pins()
            ns.remove_state()
    out: dict[str, Any] = {"detached": detached, "gone": gone, "removed_pins": not recorded}
    if unreadable is not None:
        out["unreadable_state"] = unreadable
    return out
