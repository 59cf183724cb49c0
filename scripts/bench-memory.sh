#!/usr/bin/env bash
# bench-memory.sh: peak RSS of `atorrent download` (release build, default = router config)
# fetching a small and a big torrent from BENCH_PEERS loopback seeders (issue 6, part 4: the
# peak should be flat between the two, apart from per-piece metadata).
#
#   BENCH_SMALL_MB   small torrent, MiB (default 64)
#   BENCH_BIG_MB     big torrent, MiB (default 4096; 2048 halves the time)
#   BENCH_PEERS      seeders, each a daemon on its own 127.0.1.x (default 50)
#   BENCH_PIECE_LENGTH  e.g. 256K to fix the piece length (default: create's automatic choice,
#                    which gives both torrents about the same piece count)
#   BENCH_DIR        where the data goes (default /var/tmp: a disk, not tmpfs)
#   BENCH_KEEP=1     keep the work directory
# Defaults to the static musl x86_64 build when its rustup target is installed (BENCH_BIN
# overrides). Peak RSS: VmHWM from /proc/PID/status read every 100 ms while the downloader runs, and its
# ru_maxrss once reaped (scripts/procstat.py). Needs ~BIG_MB x 2 of free disk.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/bench-swarm.sh

SMALL_MB=${BENCH_SMALL_MB:-64}
BIG_MB=${BENCH_BIG_MB:-4096}
PEERS=${BENCH_PEERS:-50}
PIECE_LENGTH=${BENCH_PIECE_LENGTH:-}
# BENCH_BIN: measure another build. By default the static musl x86_64 release build (the code
# routers run, without glibc's shared pages) when that rustup target is installed, else the
# glibc release build.
MUSL=x86_64-unknown-linux-musl
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
elif rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
  BIN=$PWD/target/$MUSL/release/atorrent
  echo "bench-memory: building the static $MUSL release binary" >&2
  bash cross/build.sh "$MUSL" --release >&2
else
  BIN=$PWD/target/release/atorrent
  echo "bench-memory: $MUSL not installed; measuring the glibc build (more shared pages)" >&2
  cargo build --release
fi
echo "bench-memory: binary $BIN" >&2
DL_IP=127.0.2.1

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/atorrent-bench-mem.XXXXXX")
cleanup() {
  swarm_stop
  if [ -z "${BENCH_KEEP:-}" ]; then rm -rf "$work"; else echo "bench-memory: kept $work" >&2; fi
}
trap cleanup EXIT

# download_case NAME MB: prints "NAME MB pieces piece_length hwm_kb seconds".
download_case() {
  local name=$1 mb=$2 dir=$work/$1
  swarm_make "$dir" "$mb" "$PIECE_LENGTH"
  swarm_start "$dir" "$PEERS"
  local pieces pl
  read -r pieces pl < <("$BIN" info "$dir/t.torrent" --json |
    python3 -c 'import json,sys; j = json.load(sys.stdin); print(j["pieces"], j["piece_length"])')
  mkdir -p "$dir/dl" "$dir/dlstate"
  cat >"$dir/dl.ini" <<EOF
state_dir = $dir/dlstate
log_file = $dir/dl.log
enable_dht = false
enable_ipv6 = false
EOF
  local port t0 t1
  port=$(free_port $DL_IP)
  t0=$(now)
  run_sampled "$dir/sample" 1800 "$BIN" --config "$dir/dl.ini" download "$dir/t.torrent" \
    --dir "$dir/dl" --no-dht --bind $DL_IP --port "$port" "${SWARM_PEERS[@]}" \
    >"$dir/dl.out" 2>"$dir/dl.err"
  t1=$(now)
  swarm_stop
  # shellcheck disable=SC1091
  source "$dir/sample"
  if [ "$rc" != 0 ] || ! cmp -s "$dir/data/payload.bin" "$dir/dl/payload.bin"; then
    echo "bench-memory: $name download failed (exit $rc)" >&2
    tail -5 "$dir/dl.err" "$dir/dl.log" >&2 || true
    exit 1
  fi
  local secs
  secs=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
  echo "bench-memory: $name: $mb MiB, $pieces pieces of $pl bytes, peak RSS $hwm_kb kB, $secs s" >&2
  echo "$name $mb $pieces $pl $hwm_kb $secs" >>"$work/results"
  # The data is not needed any more: free the disk before the next case.
  rm -rf "$dir/data" "$dir/dl"
}

echo "bench-memory: $PEERS seeders, downloader on $DL_IP with the default config (DHT off)" >&2
"$BIN" daemon --print-memory-budget --config /dev/null 2>/dev/null >"$work/budget" ||
  "$BIN" daemon --print-memory-budget >"$work/budget" 2>/dev/null || true
download_case small "$SMALL_MB"
download_case big "$BIG_MB"

python3 - "$work/results" "$PEERS" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1])]
peers = int(sys.argv[2])
(sn, smb, sp, spl, shwm, ss), (bn, bmb, bp, bpl, bhwm, bs) = rows
sp, bp, shwm, bhwm = int(sp), int(bp), int(shwm), int(bhwm)
print(f"{'torrent':>8} {'MiB':>6} {'pieces':>7} {'piece len':>10} {'peak RSS kB':>12} {'time s':>7}")
for n, mb, p, pl, h, s in rows:
    print(f"{n:>8} {mb:>6} {p:>7} {pl:>10} {h:>12} {s:>7}")
ratio = bhwm / shwm
print(f"peak RSS big/small: {ratio:.3f} ({bhwm - shwm:+d} kB)")
# What atorrent keeps per piece: the 20-byte SHA-1 in Metainfo.pieces; the picker's
# PieceState (pos u32, avail u16, slot u16 = 8 bytes) and its position in `order` (u32 = 4);
# our `have` bitfield (1 bit) and one have bitfield per connected peer (1 bit each, up to
# max_connections_per_torrent = 40). The .torrent bytes themselves (also ~20 B/piece) are read
# at start and freed.
per_piece = 20 + 8 + 4 + (1 + min(peers, 40)) / 8
d = bp - sp
print(f"per-piece metadata: ~{per_piece:.1f} bytes/piece x ({bp} - {sp}) pieces = "
      f"{per_piece * d / 1024:+.1f} kB expected from the piece counts")
print(f"RSS difference beyond per-piece metadata: {bhwm - shwm - per_piece * d / 1024:+.1f} kB "
      f"({(bhwm - per_piece * d / 1024) / shwm - 1:+.1%} of the small peak)")
EOF
if [ -s "$work/budget" ]; then
  echo "memory budget (atorrent daemon --print-memory-budget, default config):"
  cat "$work/budget"
fi
