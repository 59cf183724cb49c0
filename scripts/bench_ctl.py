#!/usr/bin/python3
"""Control round-trip sampler for scripts/bench-ctl.sh (issue 8: `atorrent list` p99 while the
daemon downloads at full speed).

Usage: bench_ctl.py BIN CONFIG SOCKET SIZE_BYTES SAMPLES INTERVAL_MS TIMEOUT_S

Called right after `atorrent start` returned. Until the torrent is seeding (or TIMEOUT_S), it
times, every INTERVAL_MS, one `atorrent --config CONFIG list` process (what a script pays:
fork, exec, config load, connect, answer) and one raw request on the control socket (the
daemon's own answer time), keeping the first SAMPLES of each taken while the list still said
`downloading`. Prints p50/p99/max in ms for both and the download's MB/s (size / time from
start to the first `seeding` answer, resolution one loop turn). Exit 1 if the download did not
finish or a `list` failed.
"""

import socket
import subprocess
import sys
import time


def pct(sorted_ms, p):
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[i]


def raw_list(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    s.sendall(b"list\n")
    out = []
    while True:
        b = s.recv(65536)
        if not b:
            break
        out.append(b)
    s.close()
    return b"".join(out)


def main():
    bin_, config, sock, size, samples, interval_ms, timeout = sys.argv[1:8]
    size, samples, timeout = int(size), int(samples), float(timeout)
    interval = int(interval_ms) / 1000.0
    cli_ms, raw_ms = [], []
    t0 = time.monotonic()
    done_at = None
    while time.monotonic() - t0 < timeout:
        a = time.perf_counter()
        p = subprocess.run([bin_, "--config", config, "list"], capture_output=True)
        b = time.perf_counter()
        raw = raw_list(sock)
        c = time.perf_counter()
        if p.returncode != 0 or not raw.startswith(b"ok\n"):
            sys.stderr.write("bench-ctl: list failed: %r %r\n" % (p.stderr, raw[:200]))
            return 1
        text = p.stdout.decode(errors="replace")
        states = [l.split()[1] for l in text.splitlines()[1:] if len(l.split()) > 1]
        if "error" in states:
            sys.stderr.write("bench-ctl: torrent in error:\n%s" % text)
            return 1
        if states and all(s == "seeding" for s in states):
            done_at = time.monotonic()
            break
        if "downloading" in states and len(cli_ms) < samples:
            cli_ms.append((b - a) * 1000.0)
            raw_ms.append((c - b) * 1000.0)
        time.sleep(interval)
    if done_at is None:
        sys.stderr.write("bench-ctl: download not complete after %.0fs\n" % timeout)
        return 1
    secs = done_at - t0
    print("bench-ctl: %d samples while downloading (interval %s ms)" % (len(cli_ms), interval_ms))
    print("%-28s %8s %8s %8s" % ("", "p50 ms", "p99 ms", "max ms"))
    for name, v in (("atorrent list (process)", cli_ms), ("control socket (raw)", raw_ms)):
        v = sorted(v)
        print("%-28s %8.2f %8.2f %8.2f" % (name, pct(v, 50), pct(v, 99), v[-1] if v else float("nan")))
    print("download: %.1f MiB in %.2f s = %.1f MB/s (while being polled)"
          % (size / 1048576.0, secs, size / 1e6 / secs))
    p99 = pct(sorted(cli_ms), 99)
    print("target: atorrent list p99 < 20 ms: %s" % ("met" if p99 < 20 else "MISSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
