"""The network namespace netctl acts in: its identity, its pins, its state file, its lock.

Every verb is a short process, so what a datapath is made of must be found again from
outside: its maps and programs are pinned in ``PIN_ROOT/ns<cookie>/<build>/`` and what was
applied (policy, generations, interfaces, carried counters) is in
``STATE_ROOT/ns<cookie>/state.json``; the bpf_links that hold its programs on the interfaces
are pinned in ``PIN_ROOT/ns<cookie>/links/``.  The netns cookie (SO_NETNS_COOKIE) names the
namespace: unlike an inode number it is never reused, so a new namespace never adopts a
dead one's state.  Both directories are root-only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import pickle
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import NetctlError, PrivilegeError
from ..paths import PIN_ROOT, STATE_ROOT
from . import state as statefile
from .state import State

SO_NETNS_COOKIE = 71
BPF_FS_MAGIC = 0xCAFE4A11
LINK_DIR_NAME = "links"     # the pins of the links that hold the programs on the hooks


def netns_cookie() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def netns_name() -> str | None:
    """The `ip netns` name of the current namespace, when it has one."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None
    if mine == _init_netns_inode():
        return "(host)"
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir("/run/netns")):
            with contextlib.suppress(OSError):
                if os.stat(f"/run/netns/{name}").st_ino == mine:
                    return name
    return None


def _init_netns_inode() -> int | None:
    try:
        return os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return None


def is_bpffs(path: str) -> bool:
    """Whether ``path`` is a mounted bpffs (its statfs magic)."""
    import ctypes

    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]

    libc = ctypes.CDLL(None, use_errno=True)
    buf = _Statfs()
    if libc.statfs(path.encode(), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def ensure_pin_root() -> None:
    """Make sure PIN_ROOT is a bpffs that outlives this process.

    Mounted in the host's mount namespace it is seen by every later `ip netns exec` (which
    copies the mount tree).  A bpffs mounted inside `ip netns exec` (which always runs the
    command in a private mount namespace) would be an empty instance that vanishes with the
    process, taking the pins with it: refuse there, and say how to mount it once.
    """
    if is_bpffs(PIN_ROOT):
        return
    if os.geteuid() != 0:
        raise PrivilegeError(f"{PIN_ROOT} is not mounted and mounting it needs root "
                             "(CAP_SYS_ADMIN): run 'make setup' or netctl as root")
    name = netns_name()
    if name not in (None, "(host)"):
        raise NetctlError(f"{PIN_ROOT} (bpffs for netctl's pins) is not mounted, and a mount "
                          f"made inside 'ip netns exec {name}' would vanish with this "
                          f"process; mount it once on the host: 'make setup', or "
                          f"mkdir -p {PIN_ROOT} && mount -t bpf bpf {PIN_ROOT}")
    os.makedirs(PIN_ROOT, mode=0o700, exist_ok=True)
    _mount_bpffs(PIN_ROOT)


def _mount_bpffs(path: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", path.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise NetctlError(f"could not mount bpffs at {path}: {os.strerror(err)}")


@dataclass
class Namespace:
    """The current network namespace's pin and state directories."""

    cookie: int

    @classmethod
    def current(cls) -> Namespace:
        return cls(netns_cookie())

    @property
    def key(self) -> str:
        return f"ns{self.cookie}"

    @property
    def pin_dir(self) -> str:
        return f"{PIN_ROOT}/{self.key}"

    @property
    def state_dir(self) -> Path:
        return Path(STATE_ROOT) / self.key

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    # -- state
    def read_state(self) -> State | None:
        """The state file (netctl.datapath.state), or None when there is none; NetctlError
        when it is corrupt or of another version."""
        return statefile.read(self.state_file)

    def write_state(self, state: State) -> None:
        """Atomically (write a temporary file, then rename it over the old one)."""
        statefile.write(self.state_file, state)

    # -- the policy text as applied (netctl show), named by its digest
    def save_text(self, text: str) -> str:
        """Keep ``text`` beside the state (root-only, written atomically); its sha256."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        target = self.text_file(digest)
        if not target.exists():
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.state_dir / f".applied.{os.getpid()}.tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                      encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, target)
        return digest

    def text_file(self, digest: str) -> Path:
        return self.state_dir / f"applied-{digest[:16]}.yaml"

    def remove_texts_but(self, keep: set[str]) -> None:
        """Remove the kept texts no generation names any more."""
        wanted = {self.text_file(d).name for d in keep}
        for path in self.state_dir.glob("applied-*.yaml"):
            if path.name not in wanted:
                path.unlink(missing_ok=True)

    # -- what each generation holds, so an apply need not read it back from the kernel
    def save_plan(self, gen: int, plan) -> None:
        """Record the plan just written into generation ``gen`` (a pickle in the root-only
        state directory, replaced atomically).  A plan this process saved or loaded already
        is linked to that file, not pickled again (both generations hold the same plan after
        every apply: pickling a million entries costs a second)."""
        from ..policy.plan import dump_plan

        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.state_dir / f".gen{gen}.{os.getpid()}.tmp"
        target = self.state_dir / f"gen{gen}.plan"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        linked = False
        for other in (self.state_dir / f"gen{1 - gen}.plan", target):
            if self._known_plan(other) is plan:
                with contextlib.suppress(OSError):
                    os.link(other, tmp)
                    linked = True
                    break
        if not linked:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                dump_plan(plan, f)
        os.replace(tmp, target)
        self._remember_plan(target, plan)

    def forget_plan(self, gen: int) -> None:
        """Before generation ``gen`` is rewritten: until the new plan is saved, nothing vouches
        for what it holds (an apply killed half-way leaves a mix that must be read back)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_dir / f"gen{gen}.plan")

    def load_plan(self, gen: int, digest: str | None):
        """The plan recorded for generation ``gen`` if its digest is ``digest`` (what the state
        file says the generation holds), else None: the caller reads the maps instead."""
        if not digest:
            return None
        path = self.state_dir / f"gen{gen}.plan"
        plan = self._known_plan(path)
        if plan is None:
            try:
                with open(path, "rb") as f:
                    plan = pickle.load(f)
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
                return None
            self._remember_plan(path, plan)
        return plan if plan.digest() == digest else None

    # Plans this process saved or loaded, by the file (device, inode) that holds them: a
    # file is only ever replaced, never rewritten, so the same inode is the same plan.
    def _remember_plan(self, path: Path, plan) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            known = self.__dict__.setdefault("_plans", {})
            known[(st.st_dev, st.st_ino)] = plan
            while len(known) > 4:
                known.pop(next(iter(known)))

    def _known_plan(self, path: Path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return self.__dict__.get("_plans", {}).get((st.st_dev, st.st_ino))

    def remove_state(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_file)

    @property
    def lock_file(self) -> Path:
        return Path(STATE_ROOT) / f"{self.key}.lock"

    @contextlib.contextmanager
    def lock(self, timeout: float = 60.0) -> Iterator[None]:
        """Serialize the verbs that change the datapath (apply, detach) in this namespace."""
        os.makedirs(STATE_ROOT, mode=0o700, exist_ok=True)
        path = self.lock_file
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() > deadline:
                        raise NetctlError(f"another netctl holds {path} for more than "
                                          f"{timeout:.0f} s") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # -- pins
    def build_dir(self, build: str) -> str:
        os.makedirs(self.pin_dir, mode=0o700, exist_ok=True)
        return f"{self.pin_dir}/{build}"

    def ct_pin(self, constants: dict[str, int]) -> str:
        """The conntrack table's pin: per namespace, outside any build, so tracked flows
        survive a rebuild of the programs.  A new size or a new entry layout (CT_LAYOUT)
        means a new table; the table of unconfirmed flows is pinned next to it."""
        from ..abi import CT_LAYOUT

        os.makedirs(self.pin_dir, mode=0o700, exist_ok=True)
        return (f"{self.pin_dir}/conntrack-{constants.get('NETCTL_CT_ENTRIES', 0)}"
                f"-v{CT_LAYOUT}")

    @property
    def link_dir(self) -> str:
        """Where the bpf_links that hold netctl's programs on the interfaces are pinned
        (netctl.datapath.attach): outside any build, so a rebuild swaps the program in
        them."""
        return f"{self.pin_dir}/{LINK_DIR_NAME}"

    def builds(self) -> list[str]:
        """The builds (and conntrack tables) pinned here; the link directory is none."""
        return pinned_builds(self.pin_dir)

    def remove_build(self, build: str) -> None:
        path = self.build_dir(build)
        if os.path.isdir(path):
            remove_pins(path)
        else:  # a pinned map (an old conntrack table)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def remove_all_pins(self) -> None:
        remove_pins(self.pin_dir)


def pinned_builds(pin_dir: str) -> list[str]:
    """The builds (and conntrack tables) pinned in a namespace's ``pin_dir``; the link
    directory is none."""
    try:
        return sorted(n for n in os.listdir(pin_dir) if n != LINK_DIR_NAME)
    except FileNotFoundError:
        return []


def remove_pins(path: str) -> None:
    """Unlink a pin directory (bpffs files are plain unlinks; the objects go when their
    last reference does)."""
    shutil.rmtree(path, ignore_errors=True)
