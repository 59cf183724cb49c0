#!/usr/bin/env bash
# Benchmark: the SHA-1 floor. Hashing every byte is the least CPU a download can cost, so this
# prints the throughput and CPU seconds per GiB of each of atorrent's SHA-1 backends (the
# ignored unit test hash::tests::sha1_throughput: sha1_smol and, where the CPU has it, the
# SHA-NI / ARMv8 path; 256 MiB from a cached 1 MiB buffer, one core, so wall = CPU) and, for
# reference, coreutils `sha1sum` over a BENCH_SIZE_MB file in the page cache (user+sys).
#
# Env: BENCH_SIZE_MB (1024), BENCH_DIR parent of the scratch dir.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${BENCH_SIZE_MB:-1024}
TIME=/usr/bin/time

out=$(mktemp)
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/atorrent-bench-sha1.XXXXXX")
trap 'rm -rf "$out" "$work"' EXIT

echo "bench-sha1: building the release unit tests ..."
cargo test --release --quiet --lib sha1_throughput -- --ignored --nocapture >"$out" 2>&1 || {
  cat "$out" >&2
  exit 1
}

bytes=$((SIZE_MB * 1024 * 1024))
head -c "$bytes" /dev/urandom >"$work/data"
cat "$work/data" >/dev/null
$TIME -f '%e %U %S' -o "$work/time" sha1sum "$work/data" >/dev/null

echo
echo "== SHA-1 floor (one core)"
python3 - "$out" "$work/time" "$bytes" <<'PY'
import re, sys
out, tfile, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = []
for line in open(out):
    m = re.match(r"sha1 (.+?)\s+([0-9.]+) MB/s \((\d+) MiB in ([0-9.]+) s", line)
    if m:
        rows.append(("atorrent " + m.group(1).strip(), float(m.group(2)), int(m.group(3))))
wall, user, sys_ = (float(x) for x in open(tfile).read().split())
cpu = user + sys_
rows.append(("coreutils sha1sum", size / 1e6 / max(cpu, 1e-9), size >> 20))
print()
print("%-30s %9s %12s %9s" % ("SHA-1 path", "MB/s", "CPU s/GiB", "MiB"))
print("-" * 64)
for name, mbs, mib in rows:
    print("%-30s %9.1f %12.2f %9d" % (name, mbs, (1 << 30) / 1e6 / mbs, mib))
PY
