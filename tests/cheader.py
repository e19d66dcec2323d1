"""Just enough of a C reader for netctl's own headers and tracer sources, as text: object-like
#defines (with their values evaluated), enums, struct and union field lists, and bcc's map
declarations.  tests/unit/test_abi_headers.py compares what it reads with netctl/abi and
netctl/observe/trace/_events.py; it knows only the forms those files use, and says so (an
AssertionError naming the text) when it meets another."""

from __future__ import annotations

import ast
import ctypes
import re
from dataclasses import dataclass

_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\(?)[ \t]*(.*?)[ \t]*$", re.M)
_IFNDEF = re.compile(r"^[ \t]*#[ \t]*ifndef[ \t]+(\w+)", re.M)
_IDENT = re.compile(r"[A-Za-z_]\w*")
_INT = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b")


def strip_comments(text: str) -> str:
    # Keep the line structure (a comment inside a #define line ends with the line).
    return _COMMENTS.sub(lambda m: "\n" * m.group(0).count("\n") or " ", text)


@dataclass(frozen=True)
class Define:
    name: str
    value: str          # the replacement text, whitespace-normalized
    default: bool       # inside `#ifndef NAME`: a default a -D may override


def defines(text: str) -> dict[str, Define]:
    """Object-like #defines (function-like ones and include guards without a value are left
    out)."""
    text = strip_comments(text)
    guarded = set(_IFNDEF.findall(text))
    out = {}
    for name, paren, value in _DEFINE.findall(text):
        if paren or not value:
            continue
        out[name] = Define(name, " ".join(value.split()), name in guarded)
    return out


def evaluate(expr: str, env: dict[str, int]) -> int:
    """An integer constant expression of the headers: literals (with u/l suffixes), names
    from ``env``, + - * << >> | and parentheses."""
    text = _INT.sub(lambda m: str(int(m.group(1), 0)), expr)

    def name(m: re.Match) -> str:
        if m.group(0) not in env:
            raise KeyError(f"{m.group(0)} (in {expr!r}) is not defined")
        return f"({env[m.group(0)]})"

    text = _IDENT.sub(name, text)
    tree = ast.parse(text, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub,
               ast.Mult, ast.LShift, ast.RShift, ast.BitOr, ast.USub, ast.UAdd)
    for node in ast.walk(tree):
        assert isinstance(node, allowed), f"cannot evaluate {expr!r}"
    return eval(compile(tree, "<define>", "eval"))   # checked above: arithmetic only


def numeric_defines(text: str, env: dict[str, int] | None = None) -> dict[str, int]:
    """Every object-like #define of ``text`` whose value is an integer expression, evaluated
    in order (later ones may use earlier ones and ``env``: the -D constants)."""
    known = dict(env or {})
    out = {}
    for d in defines(text).values():
        try:
            value = evaluate(d.value, known)
        except (KeyError, SyntaxError, AssertionError):
            continue
        known[d.name] = out[d.name] = value
    return out


def enums(text: str) -> dict[str, dict[str, int]]:
    out = {}
    for name, body in re.findall(r"\benum\s+(\w+)\s*\{(.*?)\}\s*;", strip_comments(text), re.S):
        members, value = {}, -1
        for item in filter(None, (i.strip() for i in body.split(","))):
            member, _, given = (p.strip() for p in item.partition("="))
            value = evaluate(given, members) if given else value + 1
            members[member] = value
        out[name] = members
    return out


# ---- structs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    name: str | None          # None: an anonymous union
    type: str                 # "u32", "s32", "char", "struct x"; "union" with ``members``
    dims: tuple[str, ...] = ()    # array lengths as written
    members: tuple[Field, ...] = ()


_SCALARS = {"__u8": "u8", "u8": "u8", "__u16": "u16", "u16": "u16", "__u32": "u32",
            "u32": "u32", "__u64": "u64", "u64": "u64", "__s32": "s32", "s32": "s32",
            "int": "s32", "char": "char", "__s8": "s8", "__s16": "s16", "__s64": "s64"}


def _body_end(text: str, start: int) -> int:
    """The index of the brace closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise AssertionError(f"unbalanced braces after {text[start:start + 40]!r}")


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _fields(body: str) -> tuple[Field, ...]:
    out: list[Field] = []
    for decl in _split_top(body, ";"):
        union = re.fullmatch(r"union\s*\{(.*)\}\s*([\w\s,]*)", decl, re.S)
        if union:
            members = _fields(union.group(1))
            names = [n.strip() for n in union.group(2).split(",")] if union.group(2) else [""]
            out.extend(Field(name or None, "union", (), members) for name in names)
            continue
        m = re.fullmatch(r"((?:struct\s+)?\w+)\s+(.+)", decl, re.S)
        assert m and "(" not in decl, f"cannot read the declaration {decl!r}"
        ctype = m.group(1)
        ctype = ctype if ctype.startswith("struct") else _SCALARS[ctype]
        ctype = " ".join(ctype.split())
        for declarator in _split_top(m.group(2), ","):
            d = re.fullmatch(r"(\w+)((?:\s*\[[^\]]+\])*)", declarator)
            assert d, f"cannot read the declarator {declarator!r}"
            dims = tuple(" ".join(x.split()) for x in re.findall(r"\[([^\]]+)\]", d.group(2)))
            out.append(Field(d.group(1), ctype, dims))
    return tuple(out)


def structs(text: str) -> dict[str, tuple[Field, ...]]:
    """Every ``struct NAME { ... };`` definition with its fields (structs whose members are
    not plain data, such as bcc's table structs with function pointers, are left out)."""
    text = strip_comments(text)
    out = {}
    for m in re.finditer(r"\bstruct\s+(\w+)\s*\{", text):
        end = _body_end(text, m.end() - 1)
        body = text[m.end():end]
        if "(" in body:
            continue
        out[m.group(1)] = _fields(body)
    return out


_CTYPES = {"u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
           "u64": ctypes.c_uint64, "s8": ctypes.c_int8, "s16": ctypes.c_int16,
           "s32": ctypes.c_int32, "s64": ctypes.c_int64, "char": ctypes.c_char}


def mirror_fields(cls, names: dict[type, str]) -> tuple[Field, ...]:
    """A ctypes Structure or Union as ``Field``s, array lengths as decimal text; nested
    structures named by ``names`` (ctypes type -> C struct name), anonymous members as
    unnamed unions."""
    scalars = {v: k for k, v in _CTYPES.items()}
    anonymous = set(getattr(cls, "_anonymous_", ()))
    out = []
    for fname, ftype in cls._fields_:
        dims = []
        while hasattr(ftype, "_length_") and hasattr(ftype, "_type_") \
                and not isinstance(ftype._type_, str):
            dims.append(str(ftype._length_))
            ftype = ftype._type_
        if issubclass(ftype, ctypes.Union):
            out.append(Field(None if fname in anonymous else fname, "union", tuple(dims),
                             mirror_fields(ftype, names)))
        elif issubclass(ftype, ctypes.Structure):
            assert ftype in names, f"{cls.__name__}.{fname}: {ftype.__name__} has no C name"
            out.append(Field(fname, f"struct {names[ftype]}", tuple(dims)))
        else:
            out.append(Field(fname, scalars[ftype], tuple(dims)))
    return tuple(out)


def resolved(fields: tuple[Field, ...], env: dict[str, int]) -> tuple[Field, ...]:
    """``fields`` with array lengths evaluated (to decimal text) in ``env``."""
    return tuple(Field(f.name, f.type, tuple(str(evaluate(d, env)) for d in f.dims),
                       resolved(f.members, env)) for f in fields)


def sizeof(ctype: str, all_structs: dict[str, tuple[Field, ...]], env: dict[str, int]) -> int:
    """The size of a C type of these headers, laid out by ctypes (the C ABI of the host,
    which for these plain fields is the BPF target's)."""
    return ctypes.sizeof(_ctype(ctype, all_structs, env))


def _ctype(ctype: str, all_structs, env):
    if not ctype.startswith("struct "):
        return _CTYPES[_SCALARS.get(ctype, ctype)]
    name = ctype.split()[1]
    return type(name, (ctypes.Structure,), {"_fields_": _ctypes_fields(all_structs[name],
                                                                      all_structs, env)})


def _ctypes_fields(fields, all_structs, env):
    out = []
    for i, f in enumerate(fields):
        if f.type == "union":
            t = type(f"u{i}", (ctypes.Union,), {"_fields_": _ctypes_fields(f.members,
                                                                          all_structs, env)})
        else:
            t = _ctype(f.type, all_structs, env)
        for d in reversed(f.dims):
            t = t * evaluate(d, env)
        out.append((f.name or f"_anon{i}", t))
    return out


# ---- bcc map declarations -----------------------------------------------------------------

@dataclass(frozen=True)
class TableDecl:
    kind: str
    key: str
    value: str
    name: str
    max_entries: str
    pin: str
    flags: str | None


def pinned_tables(text: str) -> list[TableDecl]:
    """``BPF_TABLE_PINNED(...)`` declarations, and the ring buffer declared as a section,
    in the order of the text."""
    text = strip_comments(text)
    out = []
    for m in re.finditer(r"\bBPF_TABLE_PINNED\s*\(", text):
        end = m.end()
        depth = 1
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        args = [" ".join(a.split()) for a in _split_top(text[m.end():end - 1], ",")]
        assert len(args) in (6, 7), f"BPF_TABLE_PINNED with {len(args)} arguments: {args}"
        kind, key, value, name, entries, pin = args[:6]
        out.append((m.start(), TableDecl(kind.strip('"'), key, value, name, entries, pin,
                                         args[6] if len(args) == 7 else None)))
    for m in re.finditer(r'__attribute__\s*\(\(\s*section\s*\(\s*"maps/(\w+):"\s*'
                         r"(NETCTL_PIN\(\w+\))\s*\)\s*\)\)\s*struct\s+\w+\s+(\w+)\s*=\s*"
                         r"\{\s*\.max_entries\s*=\s*(\w+)\s*\}", text):
        out.append((m.start(), TableDecl(m.group(1), "", "", m.group(3), m.group(4),
                                         m.group(2), None)))
    return [decl for _, decl in sorted(out, key=lambda p: p[0])]
