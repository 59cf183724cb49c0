#!/usr/bin/env bash
# `make bench`: the benchmark suite (issue 8). Runs each case in BENCH_CASES in order, each its
# own script printing its own table; a failed case is reported and the rest still run.
#
#   download  scripts/bench.sh          1 GiB, one libtorrent seeder; atorrent, libtorrent,
#                                       aria2c, transmission-cli (and rqbit when installed)
#   seeders   scripts/bench-seeders.sh  the same from four libtorrent seeders
#   files     scripts/bench-files.sh    a 2000-file torrent of ~1 GiB, one seeder
#   seed      scripts/bench-seed.sh     atorrent / transmission / aria2c seeding to libtorrent
#   sha1      scripts/bench-sha1.sh     SHA-1 alone over the same bytes: the CPU floor
#   ctl       scripts/bench-ctl.sh      `atorrent list` p50/p99 while downloading
#   idle      scripts/bench-idle.sh     1000 idle seeding torrents: daemon CPU and RSS
#
# Env: BENCH_CASES (all of the above), plus each script's own (BENCH_SIZE_MB, BENCH_DIR, ...).
set -uo pipefail
cd "$(dirname "$0")/.."

CASES=${BENCH_CASES:-download seeders files seed sha1 ctl idle}
failed=()
echo "bench: $(uname -m), $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(date -u +%Y-%m-%d)"
for c in $CASES; do
  case $c in
    download) script=scripts/bench.sh ;;
    seeders) script=scripts/bench-seeders.sh ;;
    files) script=scripts/bench-files.sh ;;
    seed) script=scripts/bench-seed.sh ;;
    sha1) script=scripts/bench-sha1.sh ;;
    ctl) script=scripts/bench-ctl.sh ;;
    idle) script=scripts/bench-idle.sh ;;
    *)
      echo "bench: unknown case $c (want: download seeders files seed sha1 ctl idle)" >&2
      failed+=("$c")
      continue
      ;;
  esac
  echo
  echo "######## bench case: $c ($script)"
  bash "$script" || failed+=("$c")
done
if ((${#failed[@]})); then
  echo "bench: failed cases: ${failed[*]}" >&2
  exit 1
fi
