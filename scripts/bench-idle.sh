#!/usr/bin/env bash
# Benchmark: many idle seeding torrents in the daemon (issue 8: 1000 torrents, < 1% of one
# core, <= 2 KiB RSS per torrent beyond metadata). Creates BENCH_IDLE_TORRENTS (1000) files of
# BENCH_IDLE_KB (64) KiB, one `atorrent create` torrent each (no tracker; the DHT is off, so
# nothing talks to them), starts a private daemon, measures its RSS empty, adds every torrent
# with `atorrent start`, waits until all are seeding, then samples /proc/PID/stat utime+stime
# over BENCH_IDLE_SECS (60) of idling. Prints CPU % of one core, RSS empty and loaded, RSS per
# torrent and the .torrent (metadata) bytes per torrent for scale.
#
# Env: BENCH_IDLE_TORRENTS (1000), BENCH_IDLE_KB (64), BENCH_IDLE_SECS (60),
#      BENCH_PROFILE (release), BENCH_DIR parent of the scratch dir.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

N=${BENCH_IDLE_TORRENTS:-1000}
KB=${BENCH_IDLE_KB:-64}
SECS=${BENCH_IDLE_SECS:-60}
PROFILE=${BENCH_PROFILE:-release}

BIN=$(bench_bin "$PROFILE")
echo "bench: measuring $BIN" >&2

work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/atorrent-bench-idle.XXXXXX")
cfg=$work/config.ini
pidfile=$work/atorrent.pid
cleanup() {
  if [ -s "$pidfile" ]; then
    "$BIN" --config "$cfg" shutdown >/dev/null 2>&1 || true
    dpid=$(cat "$pidfile" 2>/dev/null || true)
    for _ in $(seq 100); do
      [ -n "$dpid" ] && kill -0 "$dpid" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$dpid" ] && kill -9 "$dpid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

IP=127.0.0.40
port=$(free_port $IP)
echo "bench-idle: $N torrents of $KB KiB, $SECS s idle, scratch $work"
mkdir -p "$work/data" "$work/torrents"
for i in $(seq -w 1 "$N"); do
  head -c $((KB * 1024)) /dev/urandom >"$work/data/t$i.bin"
  "$BIN" -q create "$work/data/t$i.bin" -o "$work/torrents/t$i.torrent" >/dev/null
done
meta_bytes=$(cat "$work"/torrents/*.torrent | wc -c)

cat >"$cfg" <<INI
download_dir = $work/data
state_dir = $work/state
log_file = $work/atorrent.log
log_level = warn
listen_port = $port
bind_address = $IP
enable_dht = false
enable_pex = false
enable_ipv6 = false
max_active_seeds = 1000
INI
"$BIN" --config "$cfg" daemon --detach --pid-file "$pidfile"
pid=$(cat "$pidfile")
sleep 1

rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status"; }
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat"; }

rss0=$(rss_kib)
t0=$(now)
for f in "$work"/torrents/*.torrent; do
  "$BIN" --config "$cfg" start "$f" >/dev/null
done
t1=$(now)
end=$((SECONDS + 300))
while :; do
  seeding=$("$BIN" --config "$cfg" list | grep -c ' seeding ' || true)
  [ "$seeding" -ge "$N" ] && break
  if ((SECONDS >= end)); then
    echo "bench-idle: only $seeding of $N torrents seeding after 300 s" >&2
    tail -5 "$work/atorrent.log" >&2 || true
    exit 1
  fi
  sleep 1
done
sleep 5
c0=$(ticks)
sleep "$SECS"
c1=$(ticks)
rss1=$(rss_kib)
hwm=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status")
hz=$(getconf CLK_TCK)

echo
echo "== idle: $N seeding torrents of $KB KiB in the daemon, $SECS s"
python3 - "$N" "$SECS" "$hz" "$c0" "$c1" "$rss0" "$rss1" "$hwm" "$meta_bytes" "$t0" "$t1" <<'PY'
import sys
n, secs, hz = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
c0, c1, rss0, rss1, hwm, meta = (int(x) for x in sys.argv[4:10])
t0, t1 = float(sys.argv[10]), float(sys.argv[11])
cpu = (c1 - c0) / hz
print()
print("%-36s %12s" % ("measure", "value"))
print("-" * 49)
print("%-36s %12.3f" % ("daemon CPU % of one core (idle)", 100.0 * cpu / secs))
print("%-36s %12.2f" % ("daemon CPU s over the idle window", cpu))
print("%-36s %12.1f" % ("RSS empty daemon (KiB)", rss0))
print("%-36s %12.1f" % ("RSS with %d torrents (KiB)" % n, rss1))
print("%-36s %12.1f" % ("VmHWM (KiB)", hwm))
print("%-36s %12.2f" % ("RSS per torrent (KiB)", (rss1 - rss0) / float(n)))
print("%-36s %12.2f" % (".torrent bytes per torrent (KiB)", meta / 1024.0 / n))
print("%-36s %12.2f" % ("`atorrent start` ms per torrent", (t1 - t0) * 1000.0 / n))
PY
