#!/usr/bin/env bash
# Prepare a Debian 12 machine for netctl: packages, kernel headers for bcc, the kernel
# filesystems BPF needs, a virtual environment, and a `netctl` command on PATH.
#
# Idempotent: each step checks first and changes nothing that is already right, so a
# second run takes a few seconds.  Run as root (`make setup`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$here/.venv"
stamp="$venv/.netctl-setup"
bin_link=/usr/local/bin/netctl

# Debian packages.  python3-bpfcc is bcc itself (PyPI's "bcc" is an unrelated project);
# linux-headers-$arch (amd64, arm64...) is the fallback for kernels that ship no headers;
# systemd brings systemd-analyze, which the tests run on deploy/systemd/netctl.service.
arch=$(dpkg --print-architecture)
packages=(
    python3-bpfcc bpfcc-tools libbpf1 "linux-headers-$arch"
    python3-venv python3-pip python3-yaml
    iproute2 iputils-ping tcpdump ethtool iperf3 systemd
    nftables iptables ipset xdp-tools netsniff-ng
    qemu-system-x86 kmod busybox-static
    etcd-server etcd-client
)
# qemu-system-x86, kmod (depmod), busybox-static: `make test-kernels` boots Debian's stock
# kernels in virtual machines (virtme-ng, installed into the venv below).
# etcd-server, etcd-client (etcdctl): `make test-fleet` runs a real etcd (3.4) of its own on
# free ports and a temporary data directory; the package's own etcd service is not wanted
# here (it would hold 2379 and keep a database in /var/lib/etcd): it is stopped and
# disabled below.

say() { printf 'setup: %s\n' "$*"; }
warn() { printf 'setup: WARNING: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (it installs packages and mounts bpffs): sudo make setup" >&2
    exit 1
fi

# --- 1. packages ------------------------------------------------------------------------
# bookworm-backports: where `make test-kernels` takes its 6.12 kernel from (apt-get download
# only; nothing from it is installed, backports are never preferred by apt).
backports=/etc/apt/sources.list.d/bookworm-backports.sources
added_backports=0
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports to the apt sources ($backports)"
    printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
        "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" > "$backports"
    added_backports=1
fi
missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ "$added_backports" = 1 ]; then
    say "installing Debian packages: ${missing[*]:-none missing}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "Debian packages: all present"
fi

# The etcd-server package starts and enables its etcd.service; netctl's tests start their
# own etcd, and a fleet's etcd is the operator's, configured on its own machines.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet etcd 2>/dev/null || systemctl is-active --quiet etcd; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
        say "etcd.service (from etcd-server): stopped and disabled"
    fi
elif [ -x /etc/init.d/etcd ]; then   # no systemd (a container): the init script's daemon
    /etc/init.d/etcd stop >/dev/null 2>&1 || true
    update-rc.d etcd disable >/dev/null 2>&1 || true
fi

# --- 2. kernel headers for bcc ------------------------------------------------------------
# bcc compiles against /lib/modules/$(uname -r)/build.  Never touch real headers; when there
# are none, link Debian's generic headers.  They do NOT match the running kernel: programs
# must read tracepoint arguments, not kernel struct fields, whose offsets may differ.
release=$(uname -r)
moddir=/lib/modules/$release
if [ -e "$moddir/build" ] || [ -L "$moddir/build" ]; then
    if [ -L "$moddir/build" ] && [[ "$(readlink "$moddir/build")" == /usr/src/linux-headers-* ]] \
        && [[ "$(readlink "$moddir/build")" != *"$release"* ]]; then
        say "kernel headers: fallback link $(readlink "$moddir/build") (kept)"
    else
        say "kernel headers: $moddir/build present (kept)"
    fi
else
    generic=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1 || true)
    common=${generic%-"$arch"}-common
    if [ -z "$generic" ] || [ ! -d "$common" ]; then
        warn "no kernel headers found under /usr/src; bcc cannot compile programs"
    else
        mkdir -p "$moddir"
        ln -s "$generic" "$moddir/build"
        [ -e "$moddir/source" ] || ln -s "$common" "$moddir/source"
        warn "kernel $release has no headers; linked $(basename "$generic") as a FALLBACK."
        warn "They do not match the running kernel: netctl reads tracepoint arguments, never"
        warn "kernel struct fields. 'netctl doctor' reports this as 'fallback'."
    fi
fi

# --- 3. kernel filesystems ------------------------------------------------------------------
mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/self/mounts; }
mount_if_missing() {  # fstype mountpoint
    if mounted "$2"; then
        say "$1: mounted at $2"
    else
        mkdir -p "$2"
        if mount -t "$1" "$1" "$2"; then say "$1: mounted at $2"; else warn "could not mount $1 at $2"; fi
    fi
}
mount_if_missing bpf /sys/fs/bpf
# netctl's own pins live under /run: `ip netns exec` remounts /sys (hiding /sys/fs/bpf), but
# a bpffs mounted here once, on the host, is seen by every `ip netns exec`.
mount_if_missing bpf /run/netctl/bpf
chmod 700 /run/netctl /run/netctl/bpf
mount_if_missing debugfs /sys/kernel/debug
mount_if_missing tracefs /sys/kernel/tracing

# --- 4. virtual environment -----------------------------------------------------------------
# Debian's python3 with --system-site-packages, so the distribution's bcc is importable.
python=/usr/bin/python3
want="$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1) $($python -V 2>&1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$venv/bin/python" -c 'import bcc, pyroute2, scapy, yaml, pytest, hypothesis, etcd3gw, netctl' 2>/dev/null \
    && [ -x "$venv/bin/vng" ]; then
    say "virtual environment: up to date ($venv)"
else
    say "creating the virtual environment in $venv"
    [ -x "$venv/bin/python" ] || $python -m venv --system-site-packages "$venv"
    log=$(mktemp)
    if ! "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[dev]" >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
    "$venv/bin/python" -c 'import bcc, pyroute2, scapy, yaml, pytest, hypothesis, netctl'
    echo "$want" > "$stamp"
fi

# --- 5. netctl on PATH ---------------------------------------------------------------------
if [ "$(readlink "$bin_link" 2>/dev/null)" = "$venv/bin/netctl" ]; then
    say "netctl command: $bin_link"
elif [ -e "$bin_link" ] && [ ! -L "$bin_link" ]; then
    warn "$bin_link exists and is not netctl's link; left alone (use $venv/bin/netctl)"
else
    ln -sfn "$venv/bin/netctl" "$bin_link"
    say "netctl command: $bin_link -> $venv/bin/netctl"
fi
say "done. Try: netctl doctor"
