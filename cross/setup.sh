#!/usr/bin/env bash
# Installs what `make cross`, `make cross-test` and `make size` need on Debian 12, and says
# what it does. Idempotent: each step is skipped when already done.
#   - apt: qemu-user-static (the qemu-*-static runners in .cargo/config.toml), file, and
#     llvm for llvm-strip (cross/size.sh; the only strip here that handles every target)
#   - a local venv .venv-zig (gitignored) with zig and cargo-zigbuild from PyPI; zig's wheel
#     carries musl and libunwind for every target, so no other toolchain is needed
#   - rustup: the rust-src component (for -Zbuild-std) and the targets that ship a rust-std
# Versions are the ones verified in the cross-build notes; change them together.
set -euo pipefail

cd "$(dirname "$0")/.."

ZIG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.1
VENV=.venv-zig
RUSTUP_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

say() { echo "cross/setup: $*"; }

# 1. apt packages
missing=()
apt_pkgs=(qemu-user-static file python3-venv)
if ! command -v llvm-strip >/dev/null; then apt_pkgs+=(llvm); fi
for p in "${apt_pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "apt packages present (${apt_pkgs[*]}; llvm-strip at $(command -v llvm-strip))"
fi

# 2. zig + cargo-zigbuild in a local venv
want_pip() {
  # Capture first: `grep -q` exiting early would break pip's pipe and fail under pipefail.
  local info
  info=$("$VENV/bin/pip" show "$1" 2>/dev/null) || return 1
  grep -qx "Version: $2" <<<"$info"
}
if [ ! -x "$VENV/bin/pip" ]; then
  say "creating venv $VENV"
  python3 -m venv "$VENV"
fi
if want_pip ziglang "$ZIG_VERSION" && want_pip cargo-zigbuild "$ZIGBUILD_VERSION"; then
  say "$VENV has ziglang $ZIG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION"
else
  say "pip install ziglang==$ZIG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION into $VENV"
  "$VENV/bin/pip" install -q "ziglang==$ZIG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
fi

# 3. rustup component and targets (stable toolchain; build-std is enabled with RUSTC_BOOTSTRAP)
if grep -q "^rust-src" <<<"$(rustup component list --installed)"; then
  say "rustup component rust-src present"
else
  say "rustup component add rust-src"
  rustup component add rust-src
fi
installed=$(rustup target list --installed)
for t in "${RUSTUP_TARGETS[@]}"; do
  if grep -qx "$t" <<<"$installed"; then
    say "rustup target $t present"
  else
    say "rustup target add $t"
    rustup target add "$t"
  fi
done

say "done ($("$VENV/bin/python3" -m ziglang version), $("$VENV/bin/cargo-zigbuild" --version))"
