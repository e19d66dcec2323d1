"""The kernels of the matrix: Debian's stock kernels, fetched with `apt-get download` and
unpacked with `dpkg -x` (never installed as this machine's kernel).

``KERNELS`` is the one list.  An entry is a package apt can resolve, optionally from a
suite: ``linux-image-amd64`` (Debian 12's default kernel, the candidate apt would install),
``linux-image-amd64/bookworm-backports`` (the backports kernel), or an exact
``linux-image-<release>``.  A meta package is followed to the ``linux-image-<release>`` it
depends on.  Each kernel comes with its ``linux-headers-<release>``, the headers' common
package and kbuild package (bcc compiles against them in the guest), all of the image's
version.

Everything lives under ``STORE/<release>`` (the tree as `dpkg -x` leaves it, modules.dep
made by depmod) and the .deb files under ``STORE/debs``.  Not under /var/cache: virtme-ng
puts a fresh tmpfs there in the guest, which would hide the trees the guest needs.  The
modules go to /lib/modules/<release> as links into the tree, with ``build`` and
``source`` linked to the unpacked headers (links already there, e.g. from an installed
linux-headers package of the same release, are kept); inside the tree the same two links
are rewritten to absolute paths, because virtme-ng shows the guest the tree's module
directory as /lib/modules/<release>.

    python -m kernels.fetch [ENTRY...]       # fetch and unpack; prints release and vmlinuz
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KERNELS = ("linux-image-amd64", "linux-image-amd64/bookworm-backports")
STORE = Path("/var/lib/netctl/kernels")
_STAMP = ".netctl-unpacked"


class FetchError(Exception):
    """A kernel of the list cannot be had (or unpacked): the message says which and why."""


@dataclass(frozen=True)
class Kernel:
    entry: str          # as the list names it
    release: str        # uname -r of the kernel: 6.1.0-57-amd64
    version: str        # the Debian package version: 6.1.192-3
    packages: tuple[str, ...]

    @property
    def root(self) -> Path:
        return STORE / self.release

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _run(*args: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)
    except FileNotFoundError as exc:
        raise FetchError(f"{args[0]} is not installed (make setup)") from exc
    if done.returncode != 0:
        raise FetchError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def _version(spec: str) -> str:
    """The version `apt-get download SPEC` would fetch (SPEC: name or name/suite)."""
    out = _run("apt-get", "download", "--print-uris", spec)
    m = re.search(r"\s\S+?_(\S+?)_\w+\.deb\s", out)
    if not m:
        raise FetchError(f"apt offers no package {spec} (is its suite in the apt sources? "
                         "make setup adds bookworm-backports)")
    return m.group(1).replace("%3a", ":")


def _depends(name: str, version: str, prefix: str) -> list[str]:
    out = _run("apt-cache", "depends", f"{name}={version}")
    return [m.group(1) for m in re.finditer(r"^\s*\|?Depends:\s*(" + re.escape(prefix)
                                            + r"\S+)", out, re.M)]


def resolve(entry: str) -> Kernel:
    name = entry.split("/", 1)[0]
    version = _version(entry)
    if not re.match(r"linux-image-\d", name):
        images = _depends(name, version, "linux-image-")
        images = [i for i in images if re.match(r"linux-image-\d", i)
                  and not i.endswith("-unsigned")]
        if not images:
            raise FetchError(f"{entry} {version} depends on no linux-image-<release>")
        name = images[0]
    release = name.removeprefix("linux-image-")
    headers = f"linux-headers-{release}"
    extra = [d for d in _depends(headers, version, "linux-")
             if d.startswith(("linux-headers-", "linux-kbuild-"))]
    return Kernel(entry, release, version, (name, headers, *extra))


def fetch(kernel: Kernel) -> Kernel:
    """Download, unpack and link ``kernel`` (quick when done before)."""
    want = "\n".join(f"{p}={kernel.version}" for p in kernel.packages) + "\n"
    stamp = kernel.root / _STAMP
    if not (stamp.exists() and stamp.read_text() == want and kernel.vmlinuz.exists()):
        debs = STORE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        os.chmod(debs, 0o755)       # apt's download sandbox user reads it
        _run("apt-get", "download", *want.split(), cwd=debs)
        if kernel.root.exists():
            shutil.rmtree(kernel.root)
        kernel.root.mkdir(parents=True)
        for package in kernel.packages:
            files = sorted(debs.glob(f"{package}_{kernel.version.replace(':', '%3a')}_*.deb"))
            if not files:
                raise FetchError(f"{package} {kernel.version}: downloaded, yet no .deb")
            _run("dpkg", "-x", str(files[0]), str(kernel.root))
        if not kernel.vmlinuz.exists():
            raise FetchError(f"{kernel.packages[0]} has no {kernel.vmlinuz.name}")
        _run("depmod", "-b", str(kernel.root), kernel.release)
        stamp.write_text(want)
    _link(kernel)
    return kernel


def _link(kernel: Kernel) -> None:
    src = kernel.root / "usr" / "src"
    headers = {"build": src / f"linux-headers-{kernel.release}",
               "source": next(iter(sorted(src.glob("linux-headers-*-common"))), None)}
    for name, target in headers.items():
        if target is None or not target.is_dir():
            raise FetchError(f"{kernel.release}: no unpacked headers for {name}")
        inside = kernel.moddir / name
        if inside.is_symlink() or inside.exists():
            inside.unlink()
        inside.symlink_to(target)
    host = Path("/lib/modules") / kernel.release
    host.mkdir(parents=True, exist_ok=True)
    for entry in kernel.moddir.iterdir():
        link = host / entry.name
        if entry.name in headers:
            if link.is_dir():          # a real or linked tree of this release: kept
                continue
            target = headers[entry.name]
        else:
            target = entry
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            continue                   # the host's own files are never replaced
        link.symlink_to(target)


def kernels(entries: list[str] | tuple[str, ...] = KERNELS) -> list[Kernel | FetchError]:
    """Each entry resolved and fetched, or the reason it cannot be."""
    out: list[Kernel | FetchError] = []
    for entry in entries:
        try:
            out.append(fetch(resolve(entry)))
        except FetchError as exc:
            out.append(FetchError(f"{entry}: {exc}"))
    return out


def main(argv: list[str]) -> int:
    failed = 0
    for got in kernels(argv or KERNELS):
        if isinstance(got, FetchError):
            print(f"kernels: CANNOT BE HAD: {got}", file=sys.stderr)
            failed += 1
        else:
            print(f"{got.release}\t{got.version}\t{got.vmlinuz}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
