#!/usr/bin/env python3
"""Prints bench.sh's table from its results file (client, exit code, ok, GNU time -v file)."""

import sys


def parse_time(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, val = line.strip().rpartition(": ")
                out[key] = val
    except OSError:
        return None
    wall = out.get("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    if wall is None:
        return None
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    return {
        "wall": secs,
        "cpu": float(out.get("User time (seconds)", 0)) + float(out.get("System time (seconds)", 0)),
        "rss_mib": int(out.get("Maximum resident set size (kbytes)", 0)) / 1024.0,
    }


def main():
    results, size = sys.argv[1], int(sys.argv[2])
    gib = size / float(1 << 30)
    rows = []
    with open(results) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            client, rc, ok, tfile = fields[:4]
            t = parse_time(tfile)
            if t is not None and len(fields) > 4 and fields[4]:
                # CPU the seeders used while this client downloaded (all their threads).
                t["seed_cpu"] = float(fields[4])
            rows.append((client, rc, ok, t))

    print()
    print(
        "%-13s %5s %9s %9s %12s %13s %16s"
        % ("client", "ok", "wall s", "MB/s", "CPU s/GiB", "peak RSS MiB", "seeder CPU s/GiB")
    )
    print("-" * 83)
    for client, rc, ok, t in rows:
        if t is None or ok != "yes":
            t = t or {"wall": 0.0}
            print("%-13s %5s %9.2f %9s %12s %13s" % (client, "no" if rc == "0" else "rc=" + rc, t["wall"], "-", "-", "-"))
            continue
        rate = size / 1e6 / max(t["wall"], 1e-9)
        seed = "%.2f" % (t["seed_cpu"] / gib) if "seed_cpu" in t else "-"
        print(
            "%-13s %5s %9.2f %9.1f %12.2f %13.1f %16s"
            % (client, ok, t["wall"], rate, t["cpu"] / gib, t["rss_mib"], seed)
        )

    mine = next((t for c, rc, ok, t in rows if c == "atorrent" and ok == "yes" and t), None)
    if mine is None:
        print("\n(no successful atorrent run: no ratios)")
        return 0
    print("\natorrent / other (below 1.0 means atorrent uses less):")
    print("%-13s %9s %12s %13s" % ("vs", "wall", "CPU", "peak RSS"))
    for client, rc, ok, t in rows:
        if client == "atorrent" or t is None or ok != "yes":
            continue

        def ratio(a, b):
            return "%.2f" % (a / b) if b > 0 else "-"

        print(
            "%-13s %9s %12s %13s"
            % (client, ratio(mine["wall"], t["wall"]), ratio(mine["cpu"], t["cpu"]), ratio(mine["rss_mib"], t["rss_mib"]))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
