#!/usr/bin/env bash
# Benchmark: the download case with a 2000-file torrent (varied sizes, BENCH_SIZE_MB in total)
# from one libtorrent seeder, same clients as scripts/bench.sh (whose env variables apply;
# BENCH_FILES overrides the 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_FILES=${BENCH_FILES:-2000} exec bash scripts/bench.sh
