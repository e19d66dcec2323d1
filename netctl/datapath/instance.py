"""One datapath: its maps and programs, pinned together in one directory.

``Datapath.build`` compiles the programs into a new pin directory (bcc creates and pins the
maps there) and pins the programs next to them; ``Datapath.open`` finds them again from
another process.  Writing a policy goes to the inactive generation and becomes visible with
``flip`` (docs/classification.md, "Atomic updates").
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import abi
from ..errors import NetctlError
from ..kernel import bpfsys
from ..policy.plan import MapPlan, PlanDiff, diff
from . import maps as mapio
from .build import ROLES, compile_programs, prog_pin, unconfirmed_pin

# The clock bpf_ktime_get_coarse_ns() reads (Linux's clock id; Python's time module does
# not name it).
CLOCK_MONOTONIC_COARSE = 6

# The maps opened from the pin directory by name (netctl/abi/maps.py: the plan's and the
# runtime state's); conntrack and the event ring buffer are opened apart.
ALL_MAPS = abi.PINNED_MAPS


class PinsMissing(NetctlError):
    """A datapath's pins are gone (removed by hand, bpffs unmounted, or a reboot)."""


@dataclass
class Datapath:
    pin_dir: str
    constants: dict[str, int]
    maps: dict[str, bpfsys.Map]
    programs: dict[str, int]                 # role -> fd
    verifier: dict[str, str] = field(default_factory=dict)

    # -- lifecycle
    @classmethod
    def build(cls, pin_dir: str, constants: dict[str, int],
              extra_cflags: tuple[str, ...] = (), ct_pin: str | None = None) -> Datapath:
        """Compile and load into ``pin_dir`` (created here, removed again on failure).  The
        conntrack table is pinned at ``ct_pin`` (default: inside ``pin_dir``), and adopted
        when a table is pinned there already (with the table of unconfirmed flows next to
        it)."""
        os.makedirs(pin_dir, mode=0o700)
        ct_pin = ct_pin or f"{pin_dir}/conntrack"
        try:
            programs = compile_programs(constants, pin_dir, extra_cflags, ct_pin)
            try:
                opened = {name: bpfsys.Map.open_pinned(f"{pin_dir}/{name}")
                          for name in ALL_MAPS}
                opened["conntrack"] = bpfsys.Map.open_pinned(ct_pin)
                opened["conntrack_unconfirmed"] = bpfsys.Map.open_pinned(
                    unconfirmed_pin(ct_pin))
                opened["events"] = bpfsys.Map.open_pinned(f"{pin_dir}/events")
            except BaseException:
                programs.close()
                raise
        except BaseException:
            from .netns import remove_pins

            remove_pins(pin_dir)
            raise
        return cls(pin_dir, dict(constants), opened, dict(programs.fds),
                   dict(programs.verifier))

    @classmethod
    def open(cls, pin_dir: str, constants: dict[str, int],
             ct_pin: str | None = None) -> Datapath:
        opened: dict[str, bpfsys.Map] = {}
        progs: dict[str, int] = {}
        try:
            for name in ALL_MAPS:
                opened[name] = bpfsys.Map.open_pinned(f"{pin_dir}/{name}")
            ct_pin = ct_pin or f"{pin_dir}/conntrack"
            opened["conntrack"] = bpfsys.Map.open_pinned(ct_pin)
            opened["conntrack_unconfirmed"] = bpfsys.Map.open_pinned(unconfirmed_pin(ct_pin))
            opened["events"] = bpfsys.Map.open_pinned(f"{pin_dir}/events")
            for role in ROLES:
                progs[role] = bpfsys.obj_get(prog_pin(pin_dir, role))
        except OSError as exc:
            for m in opened.values():
                m.close()
            for fd in progs.values():
                os.close(fd)
            raise PinsMissing(f"the datapath's pins in {pin_dir} are incomplete "
                              f"({exc.strerror})") from None
        return cls(pin_dir, dict(constants), opened, progs)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        for fd in self.programs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.programs = {}

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prog_ids(self) -> dict[str, int]:
        return {role: bpfsys.prog_info(fd).id for role, fd in self.programs.items()}

    # -- generations
    @property
    def active(self) -> int:
        """The generation packets are judged by now (past a confirmation deadline, the one
        flipped from: the programs decide so themselves)."""
        return mapio.read_active(self.maps)

    def active_word(self) -> tuple[int, int]:
        """(the generation flipped to, its confirmation deadline in monotonic seconds, or
        0 when none is pending)."""
        return mapio.read_active_word(self.maps)

    def read_generation(self, gen: int, names: Iterable[str] | None = None,
                        whole: bool = False) -> dict[str, dict]:
        return mapio.read_generation(self.maps, gen, self.constants, names, whole)

    def read_config(self, gen: int) -> tuple[int, ...]:
        value = self.maps["config"].lookup(abi.pack_u32(gen))
        return abi.unpack_config(value) if value else (0,) * abi.CFG_WORDS

    def write_plan(self, plan: MapPlan, gen: int, fresh: bool = False,
                   holds: MapPlan | None = None) -> PlanDiff:
        """Make generation ``gen`` hold ``plan``, writing only the difference to what it
        holds now: read back from the maps, unless the caller knows (``holds``: the plan it
        wrote there last; ``fresh``: the maps were just created, empty).  Its counters are
        zeroed first: they belonged to the policy it held before."""
        if fresh:
            change = diff(None, plan)
        else:
            current = holds if holds is not None else contents_plan(
                self.read_generation(gen), plan)
            change = diff(current, plan)
            self.zero_counters(gen)
        for name, map_change in change.maps.items():
            if map_change:
                mapio.write_diff(self.maps, name, gen, map_change, self.constants)
        mapio.write_marks(self.maps, gen)
        return change

    def flip(self, gen: int, deadline: int = 0) -> None:
        """Make ``gen`` live; with ``deadline`` (monotonic seconds), only until then."""
        mapio.set_active(self.maps, gen, deadline)

    # -- counters
    def rule_counters(self, gen: int, count: int) -> list[tuple[int, int]]:
        """(packets, bytes) of the first ``count`` rules of generation ``gen``."""
        if count == 0:
            return []
        base = gen * self.constants["NETCTL_RULES_ENTRIES"]
        m = self.maps["counters"]
        blob = m.read_array(base, count)
        cpus = m.value_size // 16
        flat = memoryview(blob).cast("Q")   # (packets, bytes) per CPU, per rule
        if cpus == 1:
            return list(zip(flat[0::2], flat[1::2], strict=True))
        packets = [sum(flat[i:i + 2 * cpus:2]) for i in range(0, 2 * cpus * count, 2 * cpus)]
        nbytes = [sum(flat[i + 1:i + 2 * cpus:2]) for i in range(0, 2 * cpus * count, 2 * cpus)]
        return list(zip(packets, nbytes, strict=True))

    def zero_counters(self, gen: int) -> None:
        stride = self.constants["NETCTL_RULES_ENTRIES"]
        m = self.maps["counters"]
        zero = bytes(m.value_size)
        base = gen * stride
        keys = b"".join(abi.pack_u32(base + i) for i in range(stride))
        for start in range(0, stride, 8192):
            n = min(8192, stride - start)
            m.update_batch(keys[start * 4:(start + n) * 4], zero * n, n)

    # -- forwarding: runtime state next to the plan
    def write_nexthops(self, gen: int, nexthops: list[bytes]) -> None:
        """Next hop i of generation ``gen`` (the routes' order in the policy)."""
        stride = self.constants["NETCTL_NEXTHOPS_ENTRIES"]
        m = self.maps["nexthops"]
        if nexthops:
            keys = b"".join(abi.pack_u32(gen * stride + i) for i in range(len(nexthops)))
            m.update_batch(keys, b"".join(nexthops), len(nexthops))
        counters = self.maps["route_counters"]
        zero = bytes(counters.value_size)
        n = stride
        keys = b"".join(abi.pack_u32(gen * stride + i) for i in range(n))
        counters.update_batch(keys, zero * n, n)

    def set_epoch(self, gen: int, epoch: int) -> None:
        """The flow cache's epoch for generation ``gen``: written with the generation, before
        the flip, so that its packets never meet a decision an earlier policy made."""
        self.maps["flow_epoch"].update(abi.pack_u32(gen), abi.pack_u32(epoch & 0xFFFFFFFF))

    def set_local_addresses(self, keys: set[bytes]) -> None:
        """Make ``local_addrs`` hold exactly ``keys`` (additions first)."""
        m = self.maps["local_addrs"]
        present = set(m.keys())
        m.update_many((k, abi.pack_u32(1)) for k in keys - present)
        m.delete_many(present - keys)

    def route_counters(self, gen: int, count: int) -> list[tuple[int, int]]:
        if count == 0:
            return []
        stride = self.constants["NETCTL_NEXTHOPS_ENTRIES"]
        m = self.maps["route_counters"]
        blob = m.read_array(gen * stride, count)
        size = m.value_size
        return [abi.sum_counters(blob[i * size:(i + 1) * size]) for i in range(count)]

    def conntrack(self) -> list[dict]:
        """Every tracked flow (abi.unpack_ct), confirmed ones first, with its table and its
        ages in seconds from now."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        out = []
        for table, name in (("confirmed", "conntrack"),
                            ("unconfirmed", "conntrack_unconfirmed")):
            for key, value in self.maps[name].items():
                entry = abi.unpack_ct(key, value)
                entry["table"] = table
                entry["age_s"] = round((now - entry.pop("created_ns")) / 1e9, 3)
                entry["idle_s"] = round((now - entry.pop("seen_ns")) / 1e9, 3)
                out.append(entry)
        return out

    def conntrack_count(self, name: str = "conntrack") -> int:
        """Entries in ``conntrack`` (confirmed flows) or ``conntrack_unconfirmed``."""
        return sum(1 for _ in self.maps[name].keys())  # noqa: SIM118 (a BPF map)

    # -- events: made only while someone listens
    def listen(self, seconds: float) -> None:
        """Hold (or renew) the lease on events for ``seconds`` (CLOCK_MONOTONIC_COARSE, the
        clock the programs read); a listener renews it well before it runs out."""
        until = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE) + int(seconds * 1e9)
        self.maps["events_ctl"].update(abi.pack_u32(0), until.to_bytes(8, "little"))

    def stop_listening(self) -> None:
        self.maps["events_ctl"].update(abi.pack_u32(0), bytes(8))

    def listening(self) -> bool:
        value = self.maps["events_ctl"].lookup(abi.pack_u32(0)) or bytes(8)
        until = int.from_bytes(value[:8], "little")
        return until > time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)

    def stats(self) -> list[tuple[int, int]]:
        m = self.maps["stats"]
        return [abi.sum_counters(m.lookup(abi.pack_u32(i)) or b"") for i in range(abi.STAT_MAX)]


def contents_plan(contents: dict[str, dict], like: MapPlan):
    """Map contents read back from the kernel, shaped like a MapPlan for ``diff``."""
    return _Contents(contents, like)


class _Contents:
    """Duck-types the parts of MapPlan that ``diff`` reads."""

    def __init__(self, contents: dict[str, dict], like: MapPlan):
        self._maps = contents
        self._like = like

    def constants(self) -> dict[str, int]:
        return self._like.constants()


def settle() -> None:
    """Let packets already inside a program on the old generation finish before its
    counters are read (they run to completion within microseconds)."""
    time.sleep(0.02)
