"""Tracers: compile a kind's C with bcc, pick the best hook that really loads and attaches,
and read events and counters.

bcc behaviours this module works around (bcc 0.26):

* ``BPF()`` attaches every function named ``kprobe__*``, ``tracepoint__*``, ``kfunc__*``...
  while it compiles (``BPF._trace_autoload``); one failing attach fails the whole
  constructor.  fentry needs the ``kfunc__<function>`` name (bcc derives the BTF id of
  the target from it), so compiles go through a subclass whose autoload does nothing, and
  every program is loaded and attached here, explicitly.
* Its exceptions say little: a refused load reads "Need super-user privileges" for any
  EPERM (we are root: the kernel refuses fentry here), an attach failure has no errno.
  libbcc sets errno and prints the details (verifier log, the tracefs file it could not
  open) to fd 2, so both are captured around every compile, load and attach.
* Every ``BPF`` object registers its cleanup with ``atexit``, which keeps it alive until
  the process ends; ``close()`` unregisters it so a closed tracer's memory goes.
* ``ring_buffer_poll`` (libbpf's ring_buffer__poll) consumes for as long as records keep
  coming, which under a drop flood is forever; the callback ends a poll after a batch.
* bcc rewrites map operations only in the main file of a compile, so the kind's source is
  handed over with its quoted includes inlined (``translation_unit``, as the datapath's
  loader does); bcc also refuses map operations inside macros and, in 0.26, has no
  ``BPF_LRU_HASH`` and an ``increment()`` that never creates a per-CPU hash entry (the C
  spells these out).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno as errno_mod
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

from ...errors import LoadError, NetctlError
from ...kernel.bpfsrc import missing_uapi_structs, translation_unit
from . import _kernel as kernel
from . import _reuse
from ._events import TraceHead
from .kinds import HOOKS, KIND_TYPES, Kind, Program

KINDS = tuple(KIND_TYPES)   # the registry of kinds (kinds/) is the one list


class HookError(LoadError):
    """A tracer could not load or attach under a hook: names the kind, the hook and the
    errno the kernel gave (None when the failure had none)."""

    def __init__(self, kind: str, hook: str, errno: int | None, message: str, log: str = ""):
        self.kind = kind
        self.hook = hook
        self.errno = errno
        super().__init__(f"{kind} tracer: {hook}: {message}", log)


class _HookFailed(Exception):
    def __init__(self, stage: str, text: str, errno: int | None = None, log: str = ""):
        self.stage = stage      # "load" or "attach"
        self.text = text
        self.errno = errno
        self.log = log
        super().__init__(text)


# ---- bcc ----------------------------------------------------------------------------------


@cache
def _bpf_class():
    from bcc import BPF  # the distribution's bcc, imported only where tracers are built

    class ExplicitBPF(BPF):
        """bcc's BPF without its attach-while-compiling (see the module docstring)."""

        def _trace_autoload(self) -> None:
            pass

    return ExplicitBPF


class _Captured:
    text = ""


@contextlib.contextmanager
def _stderr_captured() -> Iterator[_Captured]:
    """Collect what libbcc and LLVM write to fd 2 (they write nowhere else)."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


_uapi_shim: str | None = None   # bpfsrc.missing_uapi_structs(), once bcc is loaded


def _compile(kind: Kind, plan: dict[str, list[Program] | str], hooks: Iterable[str]):
    """bcc's compile of the kind for ``hooks`` (all of them and maybe pooled: _reuse.py)."""
    global _uapi_shim
    if _reuse.enabled():
        hooks = HOOKS
    wanted = {h for h in hooks if not isinstance(plan[h], str)}
    flags = kind.cflags(wanted)
    text = translation_unit(kind.path)
    if (pooled := _reuse.take(key := (kind.name, tuple(flags), text))) is not None:
        return pooled
    cls = _bpf_class()
    if _uapi_shim is None:
        _uapi_shim = missing_uapi_structs()
    bpf = None
    with _stderr_captured() as err:
        try:
            bpf = cls(text=_uapi_shim + text, cflags=flags)
        except Exception as exc:  # bcc raises a bare Exception; the reasons are on fd 2
            failure = str(exc)
    if bpf is None:
        raise LoadError(f"bcc could not compile bpf/trace/{kind.source} "
                        f"({' '.join(flags)}): {failure}", err.text)
    bpf._netctl_key = key
    return _reuse.ring(bpf) and bpf if _reuse.enabled() else bpf


def _dispose(bpf) -> None:
    """Free a compile, or keep it for reuse (its programs are detached by now)."""
    if _reuse.enabled() and hasattr(bpf, "_netctl_key"):
        _reuse.give(bpf._netctl_key, bpf)      # bcc's atexit cleanup stays registered
        return
    with contextlib.suppress(Exception):
        bpf.cleanup()
    atexit.unregister(bpf.cleanup)


def _prog_type(hook: str, program: Program) -> int:
    from bcc import BPF

    if program.raw:
        return BPF.RAW_TRACEPOINT
    return {"fentry": BPF.TRACING, "tracepoint": BPF.TRACEPOINT, "kprobe": BPF.KPROBE}[hook]


def _compiled(bpf, programs: list[Program]) -> bool:
    from bcc.libbcc import lib

    return all(lib.bpf_function_start(bpf.module, p.fn.encode()) for p in programs)


def _load(bpf, hook: str, programs: list[Program]) -> None:
    """Load (not attach) the hook's programs: the kernel's verdict on the program type."""
    for p in programs:
        with _stderr_captured() as err:
            try:
                bpf.load_func(p.fn, _prog_type(hook, p))
                failed = None
            except Exception:
                failed = ctypes.get_errno()
        if failed is None:
            continue
        text = f"refused ({kernel.errno_text(failed)}) loading {p.fn}"
        if hook == "fentry":
            btf_id = kernel.btf_function(p.target)
            text += f" for {p.target} (BTF id {btf_id})"
            if failed == errno_mod.EPERM and os.geteuid() == 0:
                text += (": the kernel refuses fentry programs here although this process "
                         "is root (lockdown or an LSM)")
        elif hint := _last_line(err.text):
            text += f": {hint}"
        raise _HookFailed("load", text, failed, err.text)


def _attach(bpf, hook: str, programs: list[Program]) -> None:
    """Load and attach every program of the hook; on failure detach what was attached."""
    _load(bpf, hook, programs)
    done: list[Program] = []
    for p in programs:
        with _stderr_captured() as err:
            try:
                if p.raw:
                    bpf.attach_raw_tracepoint(tp=p.raw, fn_name=p.fn)
                elif hook == "tracepoint":
                    bpf.attach_tracepoint(tp=p.target, fn_name=p.fn)
                elif hook == "fentry":
                    bpf.attach_kfunc(fn_name=p.fn)
                else:
                    bpf.attach_kprobe(event=p.target, fn_name=p.fn)
                failed = None
            except Exception:
                failed = ctypes.get_errno()
        if failed is None:
            done.append(p)
            continue
        _detach(bpf, hook, done)
        text = f"attaching {p.fn} to {p.target} failed ({kernel.errno_text(failed)})"
        if hook == "kprobe" and (why := kernel.kprobe_support()):
            text = f"unavailable: {why}; {text}"
        elif hint := _last_line(err.text):
            text += f": {hint}"
        raise _HookFailed("attach", text, failed, err.text)


def _attach_first(bpf, kind: Kind, hook: str, programs: list[Program]) -> list[Program]:
    """Attach the first of the kind's variants of the hook's programs that loads and
    attaches (a raw tracepoint before its tracepoint, where the kind has one); the programs
    attached, or _HookFailed saying why each variant failed."""
    failures: list[_HookFailed] = []
    for variant in kind.variants(hook, programs):
        try:
            _attach(bpf, hook, variant)
            return variant
        except _HookFailed as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    last = failures[-1]
    raise _HookFailed(last.stage, "; ".join(f.text for f in failures), last.errno, last.log)


def _detach(bpf, hook: str, programs: list[Program]) -> None:
    for p in programs:
        with contextlib.suppress(Exception):
            if p.raw:
                bpf.detach_raw_tracepoint(tp=p.raw)
            elif hook == "tracepoint":
                bpf.detach_tracepoint(p.target)
            elif hook == "fentry":
                bpf.detach_kfunc(p.fn)
            else:
                bpf.detach_kprobe(p.target, p.fn)


def _what(hook: str, programs: list[Program]) -> str:
    return f"{hook} {', '.join(p.target for p in programs)}"


# ---- the tracer ---------------------------------------------------------------------------


class Tracer:
    """One kernel tracer of one kind, attached with one hook.

    ``poll()`` returns the events that arrived since the last poll (waiting up to the
    timeout for the first), ``counts()`` the aggregates the BPF side keeps (exact even when
    the ring buffer dropped events, which ``lost()`` counts), ``close()`` detaches."""

    # At most this many events per poll(): libbpf's ring_buffer__poll keeps consuming while
    # records keep arriving, which under a flood would be forever; the rest waits for the
    # next poll (and what the ring buffer cannot hold meanwhile is counted by lost()).
    max_batch = 4096

    def __init__(self, kind: Kind, bpf, hook: str, why: str,
                 attached: list[Program] | None = None):
        self.kind = kind.name
        self.hook = hook
        self.why = why
        self._kind = kind
        self._bpf = bpf
        self._pending: list[dict] = []
        self._error: BaseException | None = None
        self._stacks: dict[int, list[str]] = {}
        self._clock = kernel.monotonic_to_unix()
        self._size = ctypes.sizeof(kind.event_type)
        self._deadline = 0.0
        self._attached = attached or []
        _reuse.ring(bpf)[0] = self

    def __repr__(self) -> str:
        state = "closed" if self._bpf is None else "open"
        return f"<Tracer {self.kind} via {self.hook} ({state})>"

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events --

    def _on_event(self, _ctx, data, size) -> int:
        # Called by libbcc from inside ring_buffer_poll: an exception here would be lost
        # (ctypes prints and drops it), so it is kept and raised from poll().  A negative
        # return stops the poll (this record is consumed already).
        try:
            raw = ctypes.string_at(data, min(size, self._size))
            event = self._kind.event_type.from_buffer_copy(raw.ljust(self._size, b"\0"))
            self._pending.append(self._kind.decode(event, self))
        except Exception as exc:  # re-raised by poll()
            if self._error is None:
                self._error = exc
            return -1
        if len(self._pending) >= self.max_batch or time.monotonic() >= self._deadline:
            return -1
        return 0

    def poll(self, timeout_ms: int) -> list[dict]:
        """Events since the last poll, waiting up to ``timeout_ms`` for one to arrive; at
        most ``max_batch`` of them, and no more than fit in the timeout (the rest come with
        the next poll)."""
        if self._bpf is None:
            return []
        timeout_ms = max(0, int(timeout_ms))
        self._deadline = time.monotonic() + max(timeout_ms, 10) / 1000
        self._bpf.ring_buffer_poll(timeout_ms)
        events, self._pending = self._pending, []
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return events

    def lost(self) -> int:
        """Events the ring buffer could not take (it was full)."""
        if self._bpf is None:
            return 0
        table = self._bpf["lost"]
        return int(table.sum(ctypes.c_int(0)).value)

    def counts(self) -> dict:
        """Aggregates kept in BPF maps, by kind:

        drop     {"reason": {name: n}, "location": {"func+0xoff": n}}
        retrans  {"flows": {Flow: n}} (and {"sockets": {skaddr: n}} under fentry/kprobe)
        cong     {"state": {name: n}, "probe": {"seen": n, "sampled": n}}
        socket   {"newstate": {name: n}, "drops": {"rcvqueue_full": n, ...}}"""
        if self._bpf is None:
            return {}
        return self._kind.counts(self)

    def close(self) -> None:
        """Detach and free everything; closing twice is fine."""
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            _detach(bpf, self.hook, self._attached)
            _dispose(bpf)

    # -- for the decoders --

    def base(self, head: TraceHead) -> dict[str, Any]:
        return {"type": self.kind, "time": head.ts_ns / 1e9 + self._clock, "cpu": head.cpu,
                "pid": head.pid, "tid": head.tid,
                "comm": head.comm.decode(errors="replace")}

    def table(self, name: str):
        return self._bpf[name]

    @staticmethod
    def ksym(addr: int) -> str:
        from bcc import BPF

        return BPF.ksym(addr, show_offset=True).decode(errors="replace")

    def stack(self, stack_id: int) -> list[str]:
        """The symbolized frames of a stack id (innermost first), [] when the kernel could
        not store the stack (a negative id).  Ids are cached: the stack map is created
        without BPF_F_REUSE_STACKID, so an id always names the same stack."""
        if stack_id < 0:
            return []
        if stack_id not in self._stacks:
            try:
                frames = [self.ksym(a) for a in self._bpf["stacks"].walk(stack_id)]
            except KeyError:
                frames = []
            self._stacks[stack_id] = frames
        return list(self._stacks[stack_id])


# ---- opening ------------------------------------------------------------------------------


def _check_kinds(kinds: Iterable[str]) -> list[str]:
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise NetctlError(f"unknown tracer kind {', '.join(unknown)} (known: "
                          f"{', '.join(KINDS)})")
    return kinds


def _open_one(name: str, hook: str | None) -> Tracer:
    kind = KIND_TYPES[name]()
    kernel.tracefs()
    plan = kind.plan()
    hooks = (hook,) if hook else HOOKS
    if hook and isinstance(plan[hook], str):
        raise HookError(name, hook, None, f"unavailable: {plan[hook]}")
    if all(isinstance(plan[h], str) for h in hooks):
        raise HookError(name, "any", None, "no hook can exist here: " + "; ".join(
            f"{h} {plan[h]}" for h in hooks))
    bpf = _compile(kind, plan, hooks)
    tried: list[str] = []
    try:
        for h in hooks:
            programs = plan[h]
            if isinstance(programs, str):
                tried.append(f"{h} unavailable ({programs})")
                continue
            try:
                attached = _attach_first(bpf, kind, h, programs)
            except _HookFailed as exc:
                if hook:
                    raise HookError(name, h, exc.errno, exc.text, exc.log) from None
                tried.append(f"{h} {exc.text}")
                continue
            try:
                return Tracer(kind, bpf, h, "; ".join([*tried, _what(h, attached)]),
                              attached)
            except BaseException:
                _detach(bpf, h, attached)
                raise
        raise HookError(name, "any", None, "no hook attaches: " + "; ".join(tried))
    except BaseException:
        _dispose(bpf)
        raise


def open_tracers(kinds: Iterable[str], hook: str | None = None) -> list[Tracer]:
    """One attached tracer per kind, each with the best hook that loads and attaches here
    (fentry, then tracepoint, then kprobe), or with ``hook`` when given: then a hook that
    cannot load raises HookError naming the kind, the hook and the errno.  All or
    nothing: when one kind fails, those already opened are closed."""
    if hook is not None and hook not in HOOKS:
        raise NetctlError(f"unknown hook {hook!r} (known: {', '.join(HOOKS)})")
    tracers: list[Tracer] = []
    try:
        for name in _check_kinds(kinds):
            tracers.append(_open_one(name, hook))
    except BaseException:
        for t in tracers:
            t.close()
        raise
    return tracers


def probe_hooks(kinds: Iterable[str] = KINDS) -> dict[str, dict]:
    """Per kind and hook, whether it loads and attaches here and why not, for `netctl
    doctor`.  Each hook is really tried (compiled, loaded, attached) and detached again;
    nothing stays attached.  An entry:

        {"ok": bool, "why": one line, "errno": int | None, "compiled": bool,
         "loaded": bool, "targets": [tracepoints or kernel functions]}"""
    report: dict[str, dict] = {}
    for name in _check_kinds(kinds):
        kind = KIND_TYPES[name]()
        kernel.tracefs()
        plan = kind.plan()
        entry: dict[str, dict] = {}
        try:
            bpf = _compile(kind, plan, HOOKS)
        except LoadError as exc:
            first = str(exc).splitlines()[0]
            for h in HOOKS:
                entry[h] = {"ok": False, "why": first if not isinstance(plan[h], str)
                            else f"unavailable: {plan[h]}", "errno": None,
                            "compiled": False, "loaded": False, "targets": []}
            report[name] = entry
            continue
        try:
            for h in HOOKS:
                programs = plan[h]
                if isinstance(programs, str):
                    entry[h] = {"ok": False, "why": f"unavailable: {programs}", "errno": None,
                                "compiled": False, "loaded": False, "targets": []}
                    continue
                result = {"ok": False, "why": "", "errno": None,
                          "compiled": _compiled(bpf, programs), "loaded": False,
                          "targets": [p.target for p in programs]}
                attached = programs
                try:
                    attached = _attach_first(bpf, kind, h, programs)
                except _HookFailed as exc:
                    result.update(why=exc.text, errno=exc.errno, loaded=exc.stage != "load")
                else:
                    result.update(ok=True, loaded=True, targets=[p.target for p in attached],
                                  why=f"loads and attaches to "
                                      f"{', '.join(p.target for p in attached)}")
                finally:
                    _detach(bpf, h, attached)
                entry[h] = result
        finally:
            _dispose(bpf)
        report[name] = entry
    return report
