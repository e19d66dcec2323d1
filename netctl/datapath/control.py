"""apply, status, conntrack and detach: the verbs that change or read the live datapath.

The public surface the CLI, the lab, the exporter, top, the bench and the tests call; the
work is done in the modules below it:

=================  ===========================================================================
state              the state file, typed and versioned (dataclasses <-> JSON)
apply              `netctl apply`: interfaces, hooks and routes found, dry run, same file live
transaction        one apply under the lock, as named steps ending in the crash points
hooks              the hook of each direction, attaching (undoably), detaching, checking
routes             next hops resolved at apply time, local addresses, kernel routes
live               what runs: the state as it describes it, the datapath from its pins
status             `netctl status` and `netctl conntrack`
detach             `netctl detach`
=================  ===========================================================================

Callers import from here at call time (``from .datapath.control import apply``), so a test
that replaces one of these names here replaces it for them.
"""

from __future__ import annotations

from .apply import already_live, apply
from .detach import detach
from .hooks import (
    HOOK_TC,
    HOOK_XDP_GENERIC,
    HOOK_XDP_NATIVE,
    Hooks,
    Target,
    check_link_layer,
    decide_hooks,
    role,
    targets,
)
from .live import build_limits, live_state, open_live
from .routes import resolve_routes
from .status import conntrack, show, status
from .transaction import CRASH_POINTS, ApplyResult, crash_point, generation_record

# Older names, kept for scripts that use them (bench readers, tests' helper scripts).
_open_live = open_live
_generation_record = generation_record
_crash_point = crash_point

__all__ = [
    "CRASH_POINTS", "HOOK_TC", "HOOK_XDP_GENERIC", "HOOK_XDP_NATIVE", "ApplyResult", "Hooks",
    "Target", "already_live", "apply", "build_limits", "check_link_layer", "conntrack",
    "crash_point", "decide_hooks", "detach", "generation_record", "live_state", "open_live",
    "resolve_routes", "role", "show", "status", "targets",
]
