"""A systemd unit file read as systemd reads it, as far as netctl's unit needs: sections of
`Key=value` settings (a key may repeat), the service's environment (Environment=,
EnvironmentFile=, a leading '-' making the file optional) and its Exec command lines turned
into argument vectors (prefixes such as '-' dropped, quotes, `$$` for a literal '$',
`${NAME}` and a lone `$NAME` word replaced from the environment), so a test can run what
systemctl start, reload and stop would run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # systemd's


def settings(text: str) -> dict[str, list[tuple[str, str]]]:
    """section -> [(key, value)] in file order (continuation lines joined)."""
    out: dict[str, list[tuple[str, str]]] = {}
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        out.setdefault(section, []).append((key.strip(), value.strip()))
    return out


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def words(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    """A list setting (Before=, Wants=...): every value's words."""
    return [w for v in values(unit, section, key) for w in v.split()]


def environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    env = {"PATH": BASE_PATH}
    for value in values(unit, "Service", "Environment"):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    for value in values(unit, "Service", "EnvironmentFile"):
        optional = value.startswith("-")
        path = Path(value.lstrip("-"))
        if not path.exists():
            if optional:
                continue
            raise FileNotFoundError(f"EnvironmentFile {path} is missing")
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            key, _, val = line.partition("=")
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
                val = val[1:-1]
            env[key.strip()] = val
    return env


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)\}")


def command(line: str, env: dict[str, str]) -> list[str]:
    """An Exec*= value as the argument vector systemd would execute."""
    while line and line[0] in "-@:+!":
        line = line[1:]
    argv: list[str] = []
    for word in shlex.split(line):
        bare = re.fullmatch(r"\$(\w+)", word)
        if bare:   # a lone $NAME word becomes that variable's words
            argv.extend(env.get(bare.group(1), "").split())
            continue
        argv.append(_VARIABLE.sub(
            lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""), word))
    return argv
