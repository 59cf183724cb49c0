#!/usr/bin/env bash
# cross/build.sh TARGET [cargo args]: builds atorrent as one static musl binary for TARGET,
# e.g. `cross/build.sh mipsel-unknown-linux-musl --release` puts it in
# target/mipsel-unknown-linux-musl/release/atorrent. Run cross/setup.sh once first.
#   cross/build.sh test TARGET [cargo test args]: builds and runs the tests under qemu instead
#   (the runner is set in .cargo/config.toml).
# x86_64 and aarch64 have a rustup rust-std and link with cc / rust-lld. The others have no
# downloadable rust-std: std is built from source (-Zbuild-std, enabled on stable with
# RUSTC_BOOTSTRAP=1) and linked by zig (cargo-zigbuild), which supplies musl and libunwind.
set -euo pipefail

cd "$(dirname "$0")/.."

cmd=build
if [ "${1:-}" = test ]; then
  cmd=test
  shift
fi
target=${1:?usage: cross/build.sh [test] TARGET [cargo args]}
shift

if [ -n "${RUSTFLAGS:-}" ]; then
  # It would replace the [target.X].rustflags of .cargo/config.toml (link-self-contained=no,
  # relocation-model=static) instead of adding to them.
  echo "cross/build: RUSTFLAGS is set; unset it and pass flags with --config instead" >&2
  exit 2
fi

run() {
  echo "cross/build: $*" >&2
  exec "$@"
}

case "$target" in
  x86_64-unknown-linux-musl | aarch64-unknown-linux-musl)
    run cargo "$cmd" --target "$target" "$@"
    ;;
  armv7-unknown-linux-musleabihf | arm-unknown-linux-musleabihf | \
    mipsel-unknown-linux-musl | mips-unknown-linux-musl)
    if [ ! -x .venv-zig/bin/cargo-zigbuild ]; then
      echo "cross/build: .venv-zig/bin/cargo-zigbuild missing; run cross/setup.sh" >&2
      exit 2
    fi
    # cargo-zigbuild finds zig with `python3 -m ziglang`, so the venv's python must come first.
    export PATH="$PWD/.venv-zig/bin:$PATH"
    export RUSTC_BOOTSTRAP=1
    # zig compiles musl and libunwind per target into its global cache (~60 MB each, minutes
    # cold): pin it to one stable place so CI can keep it between runs.
    export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$HOME/.cache/zig}"
    if [ "$cmd" = test ]; then
      # Tests unwind: build all of std (no panic_abort list), and use cargo-zigbuild's own
      # binary (`cargo zigbuild test` is not a subcommand).
      run cargo-zigbuild test --target "$target" -Zbuild-std "$@"
    elif [[ " $* " == *" --release "* ]]; then
      # Release artefacts: panic=immediate-abort drops std's panic formatting and unwinding
      # machinery (about half the binary on MIPS). A panic then ends the process without a
      # message; atorrent does not panic on input (parsers are fuzzed and return errors).
      # Never used for tests, which need unwinding.
      run cargo zigbuild --target "$target" -Zbuild-std=std,panic_abort \
        --config "target.${target}.rustflags=[\"-Zunstable-options\", \"-Cpanic=immediate-abort\"]" "$@"
    else
      run cargo zigbuild --target "$target" -Zbuild-std=std,panic_abort "$@"
    fi
    ;;
  *)
    echo "cross/build: unknown target $target" >&2
    exit 2
    ;;
esac
