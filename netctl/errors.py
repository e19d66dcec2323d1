"""netctl's errors: one tree, each mapped to an exit code by the CLI.

    NetctlError                      exit 1, any expected failure
    ├── InstallError                 exit 1, netctl's own files (BPF sources) are missing
    ├── PolicyError                  exit 2, a policy file is invalid (all problems at once)
    ├── CompileError                 exit 2, a valid policy does not fit the datapath's maps
    ├── LoadError                    exit 3, bcc/the verifier refused a program (carries the log)
    ├── AttachError                  exit 4, an interface refused a program (interface, errno)
    ├── MapFullError                 exit 5, a map has no room for the plan
    └── PrivilegeError               exit 77, a capability is missing (CAP_BPF, CAP_NET_ADMIN,
                                     CAP_PERFMON to load programs)

Expected errors print as one line (or one line per problem) with no traceback; anything
else escaping the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class NetctlError(Exception):
    exit_code = 1


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in a policy file, at FILE:LINE[:COLUMN]."""

    source: str
    line: int
    column: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        if self.line and self.column:
            where += f":{self.column}"
        return f"{where}: {self.message}"


class InstallError(NetctlError):
    """A file that ships with netctl (a BPF source or header) is missing or unreadable: the
    installation is incomplete, not the user's input."""


class PolicyError(NetctlError):
    """A policy is invalid.  ``problems`` lists every error found, in file order."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.line, p.column or 0, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class CompileError(NetctlError):
    exit_code = 2


class LoadError(NetctlError):
    exit_code = 3

    def __init__(self, message: str, log: str = ""):
        self.log = log
        super().__init__(message + (f"\n{log.rstrip()}" if log else ""))


class AttachError(NetctlError):
    exit_code = 4

    def __init__(self, interface: str, errno: int | None, message: str):
        self.interface = interface
        self.errno = errno
        super().__init__(f"{interface}: {message}")


class MapFullError(NetctlError):
    """A plan needs more entries than a map holds.  ``limit`` names the capacity (a field of
    ``netctl.policy.plan.Limits``) and ``needed`` the entries wanted, when the compiler knows
    them: `netctl apply` then builds the datapath with room enough (``Limits.grown``), and
    only a need past the ceiling of that capacity is refused."""

    exit_code = 5

    def __init__(self, message: str, limit: str | None = None, needed: int = 0):
        super().__init__(message)
        self.limit = limit
        self.needed = needed


class PrivilegeError(NetctlError):
    exit_code = 77
