#!/usr/bin/env bash
# Installs what the integration tests, `make demo` and `make bench` need on Debian 12:
# the real peers (opentracker, libtorrent's Python binding, aria2, transmission), mktorrent,
# GNU time for measurements, systemd-analyze (package systemd) and man (man-db) for the
# init-script and man-page tests, util-linux (prlimit, mount), dosfstools and e2fsprogs for the
# fd-limit and file-system cases of tests/hardening.rs, and rustfmt/clippy for `make lint`.
# Idempotent and quiet: apt is skipped when every package is already installed.
set -euo pipefail

PKGS=(
  opentracker
  python3
  python3-libtorrent
  aria2
  transmission-cli
  transmission-daemon
  mktorrent
  time
  make
  diffutils
  coreutils
  systemd
  man-db
  util-linux
  dosfstools
  e2fsprogs
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The tests use Debian's python3 (python3-libtorrent lives in its dist-packages).
/usr/bin/python3 -c 'import libtorrent' || {
  echo "setup: /usr/bin/python3 cannot import libtorrent" >&2
  exit 1
}

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
      rustup component add "$c" >/dev/null 2>&1 || echo "setup: could not add $c" >&2
    fi
  done
fi
echo "setup: ok"
