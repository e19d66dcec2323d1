"""Where netctl keeps its live state.

Pins live in a bpffs mounted at PIN_ROOT, under /run rather than /sys/fs/bpf: `ip netns
exec` remounts /sys, so a bpffs under /sys is not visible inside it (and a bpffs mounted
there is a fresh, empty instance that vanishes with the process), while a mount under /run
made once in the host's mount namespace is seen by every `ip netns exec`.  Each network
namespace gets its own directory, named by its netns cookie (never reused, unlike inodes).
"""

from __future__ import annotations

RUN_DIR = "/run/netctl"
PIN_ROOT = f"{RUN_DIR}/bpf"        # bpffs: map and program pins
STATE_ROOT = f"{RUN_DIR}/state"    # regular files: what was applied, per namespace
