# Shared by the cross/ scripts (sourced, not run).

# Every target `make cross` builds, in build order.
ALL_TARGETS=(
  x86_64-unknown-linux-musl
  aarch64-unknown-linux-musl
  armv7-unknown-linux-musleabihf
  arm-unknown-linux-musleabihf
  mipsel-unknown-linux-musl
  mips-unknown-linux-musl
)

# runner TARGET: prints the command prefix that runs a TARGET binary on this host (empty for
# x86_64, which runs natively). Kept in step with the runner entries in .cargo/config.toml.
runner() {
  case "$1" in
    x86_64-unknown-linux-musl) echo "" ;;
    aarch64-unknown-linux-musl) echo "qemu-aarch64-static -cpu cortex-a53" ;;
    armv7-unknown-linux-musleabihf) echo "qemu-arm-static -cpu cortex-a7" ;;
    arm-unknown-linux-musleabihf) echo "qemu-arm-static -cpu arm1176" ;;
    mipsel-unknown-linux-musl) echo "qemu-mipsel-static -cpu 24Kc" ;;
    mips-unknown-linux-musl) echo "qemu-mips-static -cpu 24Kc" ;;
    *)
      echo "cross: unknown target $1" >&2
      return 1
      ;;
  esac
}

# bin TARGET: the release binary `make cross` builds for TARGET.
bin() { echo "target/$1/release/atorrent"; }
