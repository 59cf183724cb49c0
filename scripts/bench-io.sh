#!/usr/bin/env bash
# bench-io.sh: page cache and bytes written by `atorrent download` (release build) of a 1 GiB
# torrent with --direct-io auto (the default), on and off (BENCH_IO_MODES) (issue 6, part 5: with
# O_DIRECT at most 5% of the file may stay cached; write_bytes at most 1.01x the payload).
#
#   BENCH_IO_MB     torrent size, MiB (default 1024)
#   BENCH_PEERS     seeders (daemons on 127.0.1.x, as in bench-memory.sh; default 10)
#   BENCH_DIR       where the data goes (default /var/tmp: on tmpfs the page cache IS the file)
#   BENCH_DL_CONFIG extra config.ini lines for the downloader, e.g. 'block_buffers = 1024'
#   BENCH_KEEP=1    keep the work directory
# Cached %: `fincore` on the downloaded file right after the downloader exits (before anything
# reads it). write_bytes: the downloader's exact /proc I/O counter to its exit
# (scripts/procstat.py); the payload is the torrent's length.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/bench-swarm.sh

MB=${BENCH_IO_MB:-1024}
PEERS=${BENCH_PEERS:-10}
BIN=$PWD/target/release/atorrent
DL_IP=127.0.2.1

command -v fincore >/dev/null || {
  echo "bench-io: fincore (util-linux) is missing" >&2
  exit 2
}
if [ ! -x "$BIN" ] || [ -n "$(find src Cargo.toml -newer "$BIN" -print -quit)" ]; then
  echo "bench-io: cargo build --release" >&2
  cargo build --release
fi

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/atorrent-bench-io.XXXXXX")
cleanup() {
  swarm_stop
  if [ -z "${BENCH_KEEP:-}" ]; then rm -rf "$work"; else echo "bench-io: kept $work" >&2; fi
}
trap cleanup EXIT
echo "bench-io: $MB MiB torrent, $PEERS seeders, data under $work ($(stat -f -c %T "$work"))" >&2

swarm_make "$work" "$MB"
swarm_start "$work" "$PEERS"
payload=$(stat -c %s "$work/data/payload.bin")

printf '%-10s %12s %9s %14s %9s %8s %8s\n' direct_io cached_bytes cached% write_bytes write/payload "RSS kB" "time s"
for mode in ${BENCH_IO_MODES:-auto on off}; do
  d=$work/dl-$mode
  mkdir -p "$d/dl" "$d/state"
  cat >"$d/dl.ini" <<EOF
state_dir = $d/state
log_file = $d/dl.log
enable_dht = false
enable_ipv6 = false
${BENCH_DL_CONFIG:-}
EOF
  port=$(free_port $DL_IP)
  t0=$(now)
  run_sampled "$d/sample" 1800 "$BIN" --config "$d/dl.ini" download "$work/t.torrent" \
    --dir "$d/dl" --no-dht --bind $DL_IP --port "$port" --direct-io "$mode" "${SWARM_PEERS[@]}" \
    >"$d/dl.out" 2>"$d/dl.err"
  t1=$(now)
  # fincore first: comparing the bytes reads the file and would fill the cache.
  cached=$(fincore --bytes --noheadings --output RES "$d/dl/payload.bin" | tr -d ' ')
  # shellcheck disable=SC1091
  source "$d/sample"
  if [ "$rc" != 0 ] || ! cmp -s "$work/data/payload.bin" "$d/dl/payload.bin"; then
    echo "bench-io: download with --direct-io $mode failed (exit $rc)" >&2
    tail -5 "$d/dl.err" "$d/dl.log" >&2 || true
    exit 1
  fi
  python3 -c "
c, w, p = $cached, $write_bytes, $payload
print(f'{\"$mode\":<10} {c:>12} {c / p:>8.1%} {w:>14} {w / p:>13.4f} {$hwm_kb:>8} {$t1 - $t0:>8.1f}')"
  rm -rf "$d/dl"
done
