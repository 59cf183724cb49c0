#!/usr/bin/env python3
"""procstat.py OUT TIMEOUT CMD...: runs CMD and writes to OUT (shell variable syntax) what it
cost: its peak RSS and the bytes it caused to be written to storage.

- hwm_kb: peak resident set size in kB: VmHWM (a high-water mark) read from /proc/PID/status
  every 50 ms while the child runs; only a rise in its last 50 ms can be missed.
  (getrusage(RUSAGE_CHILDREN).ru_maxrss is no use here: it keeps the RSS of the forked Python
  before exec, ~14 MB.)
- write_bytes: the child's total write_bytes (Linux task I/O accounting): when a child is
  reaped, the kernel adds its I/O counters to the parent's, so the difference of this
  process's /proc/self/io before and after is exactly the child's, counted to its exit
  (buffered writes count when the page is dirtied, O_DIRECT writes when submitted).
- rc: the exit code (124 after TIMEOUT seconds, when CMD is killed).
Stdout/stderr of CMD are inherited.
"""
import subprocess
import sys
import time


def io_write_bytes(path):
    with open(path) as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    out, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    wb0 = io_write_bytes("/proc/self/io")
    p = subprocess.Popen(cmd)
    end = time.monotonic() + timeout
    hwm = 0
    rc = None
    while rc is None:
        hwm = max(hwm, vm_hwm(p.pid))
        try:
            rc = p.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            if time.monotonic() > end:
                p.kill()
                p.wait()
                rc = 124
    wb = io_write_bytes("/proc/self/io") - wb0
    with open(out, "w") as f:
        f.write(f"hwm_kb={hwm}\nwrite_bytes={wb}\nrc={rc}\n")


main()
