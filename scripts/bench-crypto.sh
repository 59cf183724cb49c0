#!/usr/bin/env bash
# Benchmark: the throughput cost of peer encryption (MSE/PE, RC4). An atorrent seeder serves a
# single-file torrent (512 MiB by default) on loopback to an atorrent downloader, with both
# sides `enable_encryption = prefer` (they agree on RC4) and then both `off` (plaintext),
# alternating, BENCH_RUNS times each. Both processes run under /usr/bin/time -v. Prints, per
# run, wall time, MB/s, and user+sys CPU seconds per GiB of the downloader (whole process) and
# of the seeder (from `seeding` on, i.e. without its start-up hash check),
# then the mean per mode and the ratio. Every copy is compared with the original, and each
# run checks the downloader's log for the cipher it was meant to use.
#
# Env: BENCH_SIZE_MB (512), BENCH_PIECE_KB (1024), BENCH_RUNS (2), BENCH_TIMEOUT per run in s
#      (600), BENCH_PROFILE cargo profile (release), BENCH_DIR parent of the scratch dir
#      (TMPDIR or /tmp; use a disk, not tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SIZE_MB=${BENCH_SIZE_MB:-512}
PIECE_KB=${BENCH_PIECE_KB:-1024}
RUNS=${BENCH_RUNS:-2}
TIMEOUT=${BENCH_TIMEOUT:-600}
PROFILE=${BENCH_PROFILE:-release}
PY=${PYTHON:-/usr/bin/python3}
LT_PEER=$PWD/tests/peers/lt_peer.py
TIME=/usr/bin/time

[ -x $TIME ] || { echo "bench-crypto: $TIME missing (package time): run scripts/setup.sh" >&2; exit 1; }

cargo build --profile "$PROFILE" --quiet
if [ "$PROFILE" = dev ]; then BIN=$PWD/target/debug/atorrent; else BIN=$PWD/target/$PROFILE/atorrent; fi

work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/atorrent-bench-crypto.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

SEED_IP=127.0.0.2
DL_IP=127.0.0.3
bytes=$((SIZE_MB * 1024 * 1024))

echo "bench-crypto: ${SIZE_MB} MiB, ${PIECE_KB} KiB pieces, $RUNS runs per mode, profile $PROFILE, scratch $work"
mkdir -p "$work/seed"
head -c "$bytes" /dev/urandom >"$work/seed/bench.bin"
"$PY" "$LT_PEER" --create "$work/seed/bench.bin" -o "$work/bench.torrent" \
  --piece-length $((PIECE_KB * 1024)) >"$work/create.out"

# config MODE NAME LEVEL: an atorrent config file for one process.
config() {
  cat >"$work/$2.ini" <<INI
download_dir = $work/$2
enable_encryption = $1
enable_dht = false
enable_pex = false
enable_ipv6 = false
log_file = -
log_level = $3
INI
  echo "$work/$2.ini"
}

# time_field FILE: user+sys seconds from a /usr/bin/time -v report.
cpu_of() {
  awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u+s}' "$1"
}

# ticks PID: user+sys clock ticks the process has used so far (0 if it is gone).
HZ=$(getconf CLK_TCK)
ticks() {
  if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
    # Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
  else
    echo 0
  fi
}

results=$work/results.tsv
: >"$results"
for run in $(seq 1 "$RUNS"); do
  # Alternate the order so that warm caches and neighbours' load favour neither mode.
  if ((run % 2)); then modes="prefer off"; else modes="off prefer"; fi
  for mode in $modes; do
    seed_port=$(free_port $SEED_IP)
    dl_port=$(free_port $DL_IP)
    scfg=$(config "$mode" "seed-$mode-$run" info)
    # debug: the downloader logs `peer ADDR: encryption rc4` (a few lines per connection).
    dcfg=$(config "$mode" "dl-$mode-$run" debug)
    dl=$work/dl
    rm -rf "$dl"
    mkdir -p "$dl"
    slog=$work/seed-$mode-$run.log
    dlog=$work/dl-$mode-$run.log
    stime=$work/time-seed-$mode-$run.txt
    dtime=$work/time-dl-$mode-$run.txt

    $TIME -v -o "$stime" "$BIN" --config "$scfg" download "$work/bench.torrent" --dir "$work/seed" \
      --bind $SEED_IP --port "$seed_port" --seed >"$slog" 2>&1 &
    spid=$!
    pids+=($spid)
    wait_line "$slog" '^seeding ' 120 $spid
    # The seeder's CPU is counted from here on: its start-up hash check is not encryption.
    child=$(pgrep -P "$spid" || true)
    s0=$(ticks "$child")

    echo "bench-crypto: run $run, $mode ..."
    rc=0
    start=$(now)
    $TIME -v -o "$dtime" timeout "$TIMEOUT" "$BIN" --config "$dcfg" download "$work/bench.torrent" \
      --dir "$dl" --bind $DL_IP --port "$dl_port" --peer "$SEED_IP:$seed_port" >"$dlog" 2>&1 || rc=$?
    end=$(now)

    s1=$(ticks "$child")
    # Stop the seeder itself (the child of time), so that time reports too.
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi
    wait "$spid" 2>/dev/null || true
    scpu=$(echo "($s1 - $s0) / $HZ" | bc -l)

    ok=no
    if [ "$rc" = 0 ] && cmp -s "$work/seed/bench.bin" "$dl/bench.bin"; then ok=yes; fi
    cipher=plaintext
    if grep -q ': encryption rc4' "$dlog"; then cipher=rc4; fi
    want=plaintext
    [ "$mode" = prefer ] && want=rc4
    if [ "$ok" != yes ] || [ "$cipher" != "$want" ]; then
      echo "bench-crypto: $mode run $run failed (exit $rc, bytes ok: $ok, cipher $cipher, want $want); log tail:" >&2
      grep -v '^downloading' "$dlog" | tail -5 >&2 || true
      ok=no
    fi
    wall=$(echo "$end - $start" | bc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$run" "$ok" "$cipher" "$wall" \
      "$(cpu_of "$dtime")" "$scpu" >>"$results"
    rm -rf "$dl"
  done
done

python3 - "$results" "$bytes" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2])
gib = size / 2**30
print()
print("%-7s %3s %-9s %8s %8s %14s %14s" % ("mode", "run", "cipher", "wall s", "MB/s", "dl CPU s/GiB", "seed CPU s/GiB"))
agg = {}
for mode, run, ok, cipher, wall, dcpu, scpu in rows:
    wall, dcpu, scpu = float(wall), float(dcpu), float(scpu)
    mbs = size / 1e6 / wall if wall > 0 else 0.0
    flag = "" if ok == "yes" else "  FAILED"
    print("%-7s %3s %-9s %8.2f %8.1f %14.2f %14.2f%s" % (mode, run, cipher, wall, mbs, dcpu / gib, scpu / gib, flag))
    if ok == "yes":
        agg.setdefault(mode, []).append((mbs, dcpu / gib, scpu / gib))
print()
mean = {}
for mode, v in agg.items():
    n = len(v)
    mean[mode] = tuple(sum(x[i] for x in v) / n for i in range(3))
    print("%-7s mean of %d: %.1f MB/s, downloader %.2f CPU s/GiB, seeder %.2f CPU s/GiB" % ((mode, n) + mean[mode]))
if "prefer" in mean and "off" in mean:
    e, p = mean["prefer"], mean["off"]
    print("rc4 vs plaintext: %.2fx throughput, %.2fx downloader CPU, %.2fx seeder CPU"
          % (e[0] / p[0], e[1] / p[1] if p[1] else float("nan"), e[2] / p[2] if p[2] else float("nan")))
if any(r[2] != "yes" for r in rows):
    sys.exit(1)
PY
