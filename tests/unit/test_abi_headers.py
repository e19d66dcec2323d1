"""The C side of both ABIs against the Python side, read as text: no root, no bcc.

bpf/include/netctl_abi.h and netctl_maps.h against netctl/abi (constants, struct mirrors,
the map registry and the -D constants the plan passes), and the tracers' event structs in
bpf/trace/ against netctl/observe/trace/_events.py.  A number, a field or a map changed on
one side only fails here, naming both sides.  tests/bpf/test_abi.py also compiles the headers with
bcc and compares sizes and offsets.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import cheader
import pytest

from netctl import abi
from netctl.abi import constants as abi_constants
from netctl.observe.trace import _events
from netctl.observe.trace.kinds import KIND_TYPES
from netctl.policy.plan import Limits
from netctl.policy.plan import constants as plan_constants

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "bpf" / "include"
TRACE = ROOT / "bpf" / "trace"
ABI_H = (INCLUDE / "netctl_abi.h").read_text()
MAPS_H = (INCLUDE / "netctl_maps.h").read_text()
TRACE_H = (TRACE / "netctl_trace.h").read_text()
TRACE_SOURCES = {path.name: path.read_text() for path in sorted(TRACE.glob("*.c"))}

# Constants of netctl/abi/constants.py that the headers do not #define, and why.
USER_SPACE_ONLY = {
    "CFG_WORDS": "another name of CFG_SIZE",
    "L4_FIELDS": "a mask of FIELD_* bits, for the compiler",
    "PORT_INDEX_SIZE": "PORT_INDEX times the port slots: a capacity, passed as -D",
    "ICMP_INDEX_SIZE": "ICMP_INDEX times the icmp slots: a capacity, passed as -D",
    "ETH_P_8021Q": "the kernel's (linux/if_ether.h)",
    "ETH_P_8021AD": "the kernel's",
    "ETH_P_IP": "the kernel's",
    "ETH_P_IPV6": "the kernel's",
    "IPV6_FRAGMENT": "the protocol number (the parser spells it out)",
    "CT_LAYOUT": "part of the conntrack pin names, not of the programs",
}
# #defines of the tracer sources that user space has no use for, and why.
TRACE_KERNEL_ONLY = {
    "STATE_SLOTS": "size of the per-CPU state counters, read whole",
    "HEADER_UNSET": "sk_buff's value of a header offset not set yet",
}
# Structs of the tracer sources that never reach user space as events.
TRACE_KERNEL_STRUCTS = {"probe_key", "flow_key", "sock_seen"}


def _header_values() -> dict[str, int]:
    """Every numeric #define of netctl_abi.h and netctl_maps.h, with the ABI's -D values."""
    values = cheader.numeric_defines(ABI_H, abi.BUILD_DEFINES)
    values.update(cheader.numeric_defines(MAPS_H, {**abi.BUILD_DEFINES, **values}))
    return values


HEADER = _header_values()
ENV = {**abi.BUILD_DEFINES, **HEADER}


def _check(problems: list[str]) -> None:
    assert not problems, "\n".join(["the C side and its Python mirror disagree:", *problems])


# ---- constants ---------------------------------------------------------------------------

def test_every_numeric_define_of_netctl_abi_h_has_its_python_twin():
    problems = []
    for name, value in cheader.numeric_defines(ABI_H, abi.BUILD_DEFINES).items():
        twin = name.removeprefix("NETCTL_")
        if not hasattr(abi_constants, twin):
            problems.append(f"{name} = {value} in netctl_abi.h: no {twin} in "
                            f"netctl/abi/constants.py")
        elif getattr(abi_constants, twin) != value:
            problems.append(f"{name} = {value} in netctl_abi.h, but {twin} = "
                            f"{getattr(abi_constants, twin)} in netctl/abi/constants.py")
    _check(problems)


def test_every_abi_constant_is_the_headers():
    known = {name.removeprefix("NETCTL_") for name in HEADER}
    known |= {name.removeprefix("NETCTL_") for name in abi.BUILD_DEFINES}
    known |= {name.removeprefix("NETCTL_") for members in cheader.enums(ABI_H).values()
              for name in members}
    problems = []
    for name, value in vars(abi_constants).items():
        if not name.isupper() or name.startswith("_") or type(value) is not int:
            continue
        if name not in known and name not in USER_SPACE_ONLY:
            problems.append(f"{name} = {value} in netctl/abi/constants.py: no NETCTL_{name} "
                            f"in netctl_abi.h (or say why in USER_SPACE_ONLY)")
    _check(problems)


def test_the_abi_passes_what_the_header_leaves_undefined():
    text = cheader.strip_comments(ABI_H)
    defined = {m.group(1) for m in re.finditer(r"#\s*define\s+(\w+)", text)}
    defined |= {member for members in cheader.enums(ABI_H).values() for member in members}
    needed = set(re.findall(r"\bNETCTL_[A-Z0-9_]+\b", text)) - defined
    assert needed == set(abi.BUILD_DEFINES), (needed, abi.BUILD_DEFINES)
    assert set(abi.BUILD_DEFINES) <= set(plan_constants(Limits()))


def test_drop_reasons_match_enum_netctl_drop():
    header = cheader.enums(ABI_H)["netctl_drop"]
    mirror = {f"NETCTL_DROP_{reason.name}": reason.value for reason in abi.DropReason}
    mirror["NETCTL_DROP_MAX"] = abi.DROP_MAX
    assert header == mirror


def test_named_tables_follow_their_constants():
    assert abi.CT_STATES == {abi.CT_NEW: "new", abi.CT_ESTABLISHED: "established",
                             abi.CT_CLOSING: "closing"}
    assert abi.HOOK_NAMES == {abi.HOOK_XDP: "xdp", abi.HOOK_TC: "tc"}
    assert abi.FLOW_CACHE_MODES == {"off": abi.FLOW_CACHE_OFF, "auto": abi.FLOW_CACHE_AUTO,
                                    "on": abi.FLOW_CACHE_ON}
    positions = [v for k, v in vars(abi_constants).items()
                 if k.startswith("CFG_") and k not in ("CFG_SIZE", "CFG_WORDS")]
    assert max(positions) + 1 == abi.CFG_SIZE
    stats = [v for k, v in vars(abi_constants).items()
             if k.startswith("STAT_") and k != "STAT_MAX"]
    assert len(stats) == len(set(stats)) and max(stats) < abi.STAT_MAX


# ---- structs -----------------------------------------------------------------------------

def _compare_fields(c_name: str, header, mirror, where: str) -> list[str]:
    if header == mirror:
        return []
    lines = [f"struct {c_name} ({where}) and its mirror differ:"]
    for i in range(max(len(header), len(mirror))):
        h = header[i] if i < len(header) else None
        m = mirror[i] if i < len(mirror) else None
        if h != m:
            lines.append(f"  field {i}: header {h}, mirror {m}")
    return ["\n".join(lines)]


def test_every_struct_of_netctl_abi_h_has_its_mirror():
    header = cheader.structs(ABI_H)
    assert set(header) == set(abi.STRUCTS)
    names = {cls: name for name, cls in abi.STRUCTS.items()}
    problems = []
    for name, cls in abi.STRUCTS.items():
        problems += _compare_fields(name, cheader.resolved(header[name], ENV),
                                    cheader.mirror_fields(cls, names), "netctl_abi.h")
    _check(problems)


# ---- maps --------------------------------------------------------------------------------

def _ctype(text: str) -> str:
    return text if text.startswith("struct ") else cheader._SCALARS.get(text, text)


def test_every_map_of_netctl_maps_h_is_in_the_registry_and_the_same():
    decls = cheader.pinned_tables(MAPS_H)
    assert [d.name for d in decls] == list(abi.MAPS), "the registry lists the header's maps"
    problems = []
    for decl in decls:
        d = abi.MAPS[decl.name]
        entries = f"NETCTL_PER_GEN({d.entries})" if d.per_gen else str(d.entries)
        pin = decl.pin == f"NETCTL_PIN({d.name})"
        want = (d.kind, d.key.ctype if d.key else "", d.value.ctype if d.value else "",
                entries, d.flags, pin or d.role == abi.CONNTRACK)
        have = (decl.kind, _ctype(decl.key), _ctype(decl.value), decl.max_entries,
                decl.flags, True)
        if want != have:
            problems.append(f"map {d.name}: netctl_maps.h declares (type, key, value, "
                            f"max_entries, flags, pin) {have}, netctl/abi/maps.py {want}")
    _check(problems)


def test_every_codec_has_the_size_of_its_c_type():
    all_structs = {**cheader.structs(ABI_H), **cheader.structs(MAPS_H)}
    problems = []
    for d in abi.MAPS.values():
        for side, codec in (("key", d.key), ("value", d.value)):
            if codec is None:
                continue
            size = cheader.sizeof(codec.ctype, all_structs, ENV)
            if size != codec.size:
                problems.append(f"map {d.name}: {side} {codec.ctype} is {size} bytes in the "
                                f"headers, its codec says {codec.size}")
    _check(problems)


def test_capacities_are_the_minus_d_constants_the_plan_passes():
    limits = Limits(rules=64, port_intervals=96, lpm_entries=8192, rule_table=16384,
                    routes=7, icmp_intervals=9)
    passed = plan_constants(limits, conntrack_size=1000)
    macros = {d.entries for d in abi.MAPS.values() if isinstance(d.entries, str)}
    given = macros - set(HEADER)          # neither #defined nor defaulted by the headers
    assert given == {m for m in passed if m.endswith("_ENTRIES")}
    for d in abi.MAPS.values():
        if d.size is not None:
            assert d.entries in given, d.name
            assert passed[d.entries] == d.capacity(limits), d.name
        elif isinstance(d.entries, str) and d.entries in HEADER:
            assert abi.HEADER_DEFINED[d.entries] == HEADER[d.entries], d.name
    for name, d in abi.PLAN_MAPS.items():   # every plan map is per generation and sized
        assert d.per_gen and d.size is not None, name
        assert d.max_entries(passed) == abi.GENS * d.capacity(limits), name


# ---- the tracers' events -----------------------------------------------------------------

def _trace_structs() -> dict[str, tuple]:
    out = dict(cheader.structs(TRACE_H))
    for text in TRACE_SOURCES.values():
        out.update(cheader.structs(text))
    return out


def test_every_trace_event_struct_has_its_mirror():
    header = _trace_structs()
    assert set(header) - TRACE_KERNEL_STRUCTS == set(_events.EVENT_STRUCTS)
    names = {cls: name for name, cls in _events.EVENT_STRUCTS.items()}
    problems = []
    for source, text in {"netctl_trace.h": TRACE_H, **TRACE_SOURCES}.items():
        env = cheader.numeric_defines(text)
        for name, fields in cheader.structs(text).items():
            if name in _events.EVENT_STRUCTS:
                problems += _compare_fields(
                    name, cheader.resolved(fields, env),
                    cheader.mirror_fields(_events.EVENT_STRUCTS[name], names), source)
    _check(problems)


def test_every_kind_compiles_against_its_mirror():
    sized = {}
    for text in TRACE_SOURCES.values():
        for struct, macro in re.findall(r"_Static_assert\s*\(\s*sizeof\s*\(\s*struct\s+(\w+)"
                                        r"\s*\)\s*==\s*(\w+)", text):
            sized[macro] = struct
    kinds = {kind.size_macro: kind for kind in KIND_TYPES.values()}
    assert set(kinds) == set(sized)
    for macro, kind in kinds.items():
        assert kind.event_type is _events.EVENT_STRUCTS[sized[macro]], macro


def test_every_trace_constant_has_its_python_twin():
    problems = []
    for source, text in {"netctl_trace.h": TRACE_H, **TRACE_SOURCES}.items():
        values = cheader.numeric_defines(text)
        for name, d in cheader.defines(text).items():
            if d.default or name not in values or name in TRACE_KERNEL_ONLY:
                continue
            twin = name.removeprefix("NETCTL_")
            if getattr(_events, twin, None) != values[name]:
                problems.append(f"{name} = {values[name]} in bpf/trace/{source}, "
                                f"{twin} = {getattr(_events, twin, 'missing')} in "
                                "netctl/observe/trace/_events.py (or say why in "
                                "TRACE_KERNEL_ONLY)")
    _check(problems)


# ---- the ground floor --------------------------------------------------------------------

@pytest.mark.parametrize("path", [*sorted((ROOT / "netctl" / "abi").glob("*.py")),
                                  ROOT / "netctl" / "observe" / "trace" / "_events.py"],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_abi_imports_only_the_standard_library(path):
    """The ABI is the ground floor: the compiler, the datapath and the tools import it, it
    imports none of them (netctl/abi's modules import each other only)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and path.parent.name == "abi", \
                f"{path.name} imports from .{'.' * (node.level - 1)}{node.module or ''}"
            continue
        if isinstance(node, ast.ImportFrom):
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", \
                f"{path.name} imports {module}"
