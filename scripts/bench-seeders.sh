#!/usr/bin/env bash
# Benchmark: the download case with four libtorrent seeders (127.0.0.2-5), same torrent and
# clients as scripts/bench.sh (whose env variables apply; BENCH_SEEDERS overrides the 4).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_SEEDERS=${BENCH_SEEDERS:-4} exec bash scripts/bench.sh
