#!/usr/bin/env python3
"""Writes the many-files benchmark tree for scripts/bench.sh (BENCH_FILES > 1).

Usage: bench_mkfiles.py DIR COUNT TOTAL_BYTES

COUNT files of random bytes under DIR, in 20 subdirectories (d00..d19, file fNNNN.bin),
summing to exactly TOTAL_BYTES. Sizes are log-uniform between 1 KiB and 8 MiB (seeded, so
every run builds the same shape), then scaled to the total: most files are small, a few large
ones carry most of the bytes, and nearly every file boundary falls inside a piece.
"""

import os
import random
import sys


def main():
    root, count, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(8)
    raw = [2 ** rng.uniform(10, 23) for _ in range(count)]
    scale = total / sum(raw)
    sizes = [max(1, int(r * scale)) for r in raw]
    sizes[-1] += total - sum(sizes)
    if sizes[-1] < 1:
        raise SystemExit("bench_mkfiles: total too small for %d files" % count)
    for i, size in enumerate(sizes):
        d = os.path.join(root, "d%02d" % (i % 20))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "f%04d.bin" % i), "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
    print("bench_mkfiles: %d files, %d bytes, largest %d, smallest %d" % (count, total, max(sizes), min(sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
