#!/usr/bin/env bash
# The Debian package on this machine, as an operator meets it: install it with dpkg, check
# what it put where, validate the shipped config with the installed binary, verify the
# installed units with systemd-analyze, read a man page, then remove it (conffiles stay) and
# purge it (they go). Needs root, dpkg, systemd-analyze and a package that is not
# installed already. Usage: deploy/debian/check.sh target/debian/ringlb_*.deb
set -euo pipefail
deb=$(realpath "${1:?usage: deploy/debian/check.sh PACKAGE.deb}")
fail() { echo "deb check: $*" >&2; exit 1; }
step() { echo "== $*"; }

if dpkg -s ringlb >/dev/null 2>&1; then
  fail "ringlb is installed already; this check installs and purges its own"
fi
trap 'dpkg -P ringlb >/dev/null 2>&1 || true' EXIT

step "dpkg -i"
dpkg -i "$deb"
[ "$(command -v ringlb)" = /usr/bin/ringlb ] || fail "ringlb is not /usr/bin/ringlb"
getent passwd ringlb >/dev/null || fail "postinst made no ringlb user"
for f in /etc/ringlb/ringlb.toml /etc/ringlb/scaler.toml /lib/systemd/system/ringlb.service \
  /lib/systemd/system/ringlb-scaler.service /usr/share/man/man1/ringlb.1.gz \
  /usr/share/man/man1/ringlb-ctl.1.gz /usr/share/bash-completion/completions/ringlb \
  /usr/share/zsh/vendor-completions/_ringlb /usr/share/fish/vendor_completions.d/ringlb.fish; do
  [ -s "$f" ] || fail "$f is missing or empty"
done
dpkg-query -W -f='${Conffiles}\n' ringlb | grep -q '/etc/ringlb/ringlb.toml' \
  || fail "/etc/ringlb/ringlb.toml is not a conffile"
# Nothing is enabled or started by the package.
if [ -d /run/systemd/system ] && systemctl is-enabled ringlb.service >/dev/null 2>&1; then
  fail "the package enabled ringlb.service"
fi

step "the installed binary checks the installed configs"
ringlb --version
ringlb check --config /etc/ringlb/ringlb.toml
ringlb scale --check --config /etc/ringlb/scaler.toml >/dev/null

step "systemd-analyze verify the installed units (any warning fails)"
out=$(systemd-analyze verify /lib/systemd/system/ringlb.service \
  /lib/systemd/system/ringlb-scaler.service 2>&1 || true)
[ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify complained"; }

step "man page and completions"
gzip -dc /usr/share/man/man1/ringlb.1.gz | grep -q '^\.TH ringlb 1' || fail "ringlb.1 is no man page"
bash -c 'source /usr/share/bash-completion/completions/ringlb && complete -p ringlb' >/dev/null \
  || fail "the bash completion does not load"

step "dpkg -r: the binary goes, the conffiles stay"
dpkg -r ringlb
[ ! -e /usr/bin/ringlb ] || fail "/usr/bin/ringlb is still there after dpkg -r"
[ ! -e /lib/systemd/system/ringlb.service ] || fail "the unit is still there after dpkg -r"
[ -e /etc/ringlb/ringlb.toml ] || fail "dpkg -r removed the conffile"

step "dpkg -P: nothing is left"
dpkg -P ringlb
[ ! -e /etc/ringlb/ringlb.toml ] || fail "dpkg -P left /etc/ringlb/ringlb.toml"
if dpkg -s ringlb >/dev/null 2>&1; then fail "ringlb is still known to dpkg"; fi
trap - EXIT
echo "ok: $(basename "$deb") installs, checks, verifies, removes and purges"
