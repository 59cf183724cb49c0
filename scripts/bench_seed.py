#!/usr/bin/env python3
"""Seeder-side measurement for scripts/bench-seed.sh.

Usage: bench_seed.py measure SEEDER_PID OUT_FILE -- DOWNLOADER_CMD...
       bench_seed.py report RESULTS_TSV SIZE_BYTES

measure: runs the downloader and, until it exits, samples the seeder's /proc/PID/stat
(utime+stime of all its threads) and /proc/PID/status (VmRSS) every 20 ms. Writes one line to
OUT_FILE: downloader wall s, seeder CPU s over the transfer, seeder max VmRSS KiB during the
transfer, seeder VmHWM KiB (whole life, including its start-up hash check), downloader exit
code. Exits with the downloader's code.

report: prints the table (one row per seeder: client, ok, then the measure fields) and
atorrent's ratio to each other seeder.
"""

import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_secs(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    # Fields after the command: state is [0], utime [11], stime [12] (proc(5) 14 and 15).
    return (int(fields[11]) + int(fields[12])) / float(TICK)


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure(argv):
    pid, out = int(argv[0]), argv[1]
    cmd = argv[3:] if argv[2] == "--" else argv[2:]
    cpu0 = cpu_secs(pid)
    rss = status_kib(pid, "VmRSS")
    start = time.monotonic()
    child = subprocess.Popen(cmd)
    while child.poll() is None:
        try:
            rss = max(rss, status_kib(pid, "VmRSS"))
            cpu1 = cpu_secs(pid)
        except OSError:
            break
        time.sleep(0.02)
    rc = child.wait()
    wall = time.monotonic() - start
    try:
        cpu1 = cpu_secs(pid)
        hwm = status_kib(pid, "VmHWM")
    except OSError:
        hwm = 0
    with open(out, "w") as f:
        f.write("%.3f\t%.3f\t%d\t%d\t%d\n" % (wall, cpu1 - cpu0, rss, hwm, rc))
    return rc


def report(argv):
    results, size = argv[0], int(argv[1])
    gib = size / float(1 << 30)
    rows = []
    with open(results) as f:
        for line in f:
            client, ok, mfile = line.rstrip("\n").split("\t")
            try:
                with open(mfile) as m:
                    wall, cpu, rss, hwm, rc = m.read().split()
                rows.append((client, ok, float(wall), float(cpu), int(rss) / 1024.0, int(hwm) / 1024.0))
            except (OSError, ValueError):
                rows.append((client, "no", 0.0, 0.0, 0.0, 0.0))
    print()
    print(
        "%-13s %4s %9s %8s %14s %14s %12s"
        % ("seeder", "ok", "dl wall s", "MB/s", "seed CPU s/GiB", "RSS xfer MiB", "VmHWM MiB")
    )
    print("-" * 80)
    for client, ok, wall, cpu, rss, hwm in rows:
        if ok != "yes":
            print("%-13s %4s %9.2f %8s %14s %14s %12s" % (client, "no", wall, "-", "-", "-", "-"))
            continue
        print(
            "%-13s %4s %9.2f %8.1f %14.2f %14.1f %12.1f"
            % (client, ok, wall, size / 1e6 / max(wall, 1e-9), cpu / gib, rss, hwm)
        )
    mine = next((r for r in rows if r[0] == "atorrent" and r[1] == "yes"), None)
    if mine is None:
        print("\n(no successful atorrent run: no ratios)")
        return 0

    def ratio(a, b):
        return "%.2f" % (a / b) if b > 0 else "-"

    print("\natorrent / other seeder (below 1.0 means atorrent uses less):")
    print("%-13s %9s %12s %13s" % ("vs", "dl wall", "seed CPU", "RSS xfer"))
    for r in rows:
        if r[0] == "atorrent" or r[1] != "yes":
            continue
        print("%-13s %9s %12s %13s" % (r[0], ratio(mine[2], r[2]), ratio(mine[3], r[3]), ratio(mine[4], r[4])))
    return 0


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "measure":
        return measure(sys.argv[2:])
    if len(sys.argv) == 4 and sys.argv[1] == "report":
        return report(sys.argv[2:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
