#!/usr/bin/env bash
# Install netctl on a host (`make install`, as root): the package into its own virtual
# environment, the systemd unit that applies /etc/netctl/netctl.yaml at boot, an example
# policy and /etc/default/netctl when they are absent, and `netctl` on PATH.
#
# A make target rather than a `netctl install-service` verb: the unit must run a netctl
# that stays where it is (a venv of its own under /opt, not the checkout's development
# environment or whatever `netctl` happened to be on PATH), and putting that environment in
# place is a step of installing, taken from the sources, not something the installed
# program does to itself.
#
# Every location can be moved (the tests install into a temporary directory):
#   PREFIX=/opt/netctl  UNIT_DIR=/etc/systemd/system  CONF_DIR=/etc/netctl
#   DEFAULTS=/etc/default/netctl  BIN_LINK=/usr/local/sbin/netctl (empty: no link)
# With `uninstall` as argument: the unit (stopped and disabled first), the link and the
# environment go; the policy and /etc/default/netctl stay.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${PREFIX:-/opt/netctl}
unit_dir=${UNIT_DIR:-/etc/systemd/system}
conf_dir=${CONF_DIR:-/etc/netctl}
defaults=${DEFAULTS:-/etc/default/netctl}
bin_link=${BIN_LINK-/usr/local/sbin/netctl}
python=/usr/bin/python3   # Debian's: with --system-site-packages it sees python3-bpfcc
unit="$unit_dir/netctl.service"

say() { printf 'install: %s\n' "$*"; }
systemd_running() { [ -d /run/systemd/system ] && [ "$unit_dir" = /etc/systemd/system ]; }

if [ "${1:-install}" = uninstall ]; then
    if systemd_running && [ -e "$unit" ]; then
        systemctl disable --now netctl.service || true
    fi
    rm -f "$unit"
    if [ -n "$bin_link" ] && [ "$(readlink "$bin_link" 2>/dev/null)" = "$prefix/bin/netctl" ]; then
        rm -f "$bin_link"
    fi
    rm -rf "$prefix"
    if systemd_running; then systemctl daemon-reload; fi
    say "removed $unit and $prefix; kept $conf_dir/netctl.yaml and $defaults"
    exit 0
fi

# --- the package, in its own environment ------------------------------------------------------
[ -x "$prefix/bin/python" ] || "$python" -m venv --system-site-packages "$prefix"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# From the sources, not editable: the environment keeps working when the checkout moves.
# --force-reinstall --no-deps replaces an installed netctl of the same version.  build/ goes
# first: setuptools packs whatever an earlier build left in it, deleted files included.
rm -rf "$here/build"
if ! { "$prefix/bin/pip" install -q --disable-pip-version-check "$here" \
        && "$prefix/bin/pip" install -q --disable-pip-version-check --force-reinstall \
            --no-deps "$here"; } >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
"$prefix/bin/python" -c 'import bcc, netctl' || {
    echo "install: $prefix cannot import bcc: install Debian's python3-bpfcc (make setup)" >&2
    exit 1
}
say "netctl $("$prefix/bin/netctl" --version | cut -d' ' -f2) in $prefix"

# --- the unit, with this installation's paths ---------------------------------------------------
mkdir -p "$unit_dir"
sed -e "s#/opt/netctl#$prefix#g" -e "s#/etc/netctl#$conf_dir#g" \
    -e "s#/etc/default/netctl#$defaults#g" \
    "$here/deploy/systemd/netctl.service" > "$unit.tmp"
chmod 0644 "$unit.tmp"
mv "$unit.tmp" "$unit"
say "unit: $unit"

# --- configuration: never overwritten -----------------------------------------------------------
mkdir -p "$conf_dir" "$(dirname "$defaults")"
for pair in "$here/deploy/netctl.yaml:$conf_dir/netctl.yaml" \
            "$here/deploy/netctl.default:$defaults"; do
    src=${pair%%:*} dst=${pair#*:}
    if [ -e "$dst" ]; then
        say "kept $dst"
    else
        install -m 0644 "$src" "$dst"
        say "example: $dst"
    fi
done

# --- on PATH ------------------------------------------------------------------------------------
if [ -n "$bin_link" ]; then
    if [ -e "$bin_link" ] && [ ! -L "$bin_link" ]; then
        say "$bin_link exists and is not a link; left alone (use $prefix/bin/netctl)"
    else
        mkdir -p "$(dirname "$bin_link")"
        ln -sfn "$prefix/bin/netctl" "$bin_link"
        say "command: $bin_link -> $prefix/bin/netctl"
    fi
fi

if systemd_running; then systemctl daemon-reload; fi
say "next: edit $conf_dir/netctl.yaml, 'netctl validate $conf_dir/netctl.yaml', then"
say "      'systemctl enable --now netctl' (applied at every boot, before the network)"
