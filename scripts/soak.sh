#!/usr/bin/env bash
# Soak (issue 7, part 7): one atorrent daemon in a churning loopback swarm for SOAK_SECS
# (default 1800; not run in CI). The daemon downloads SOAK_TORRENTS torrents from
# rate-limited atorrent seeders (via opentracker), then seeds them while short-lived atorrent
# leechers (--down 1M) come and go: every SOAK_CHURN seconds one starts (fresh directory,
# --peer daemon)
# and, above SOAK_PEERS running, a random one is stopped (SIGTERM or SIGKILL, alternately).
# Every 5 s the daemon's VmRSS (/proc/PID/status) and open descriptors (/proc/PID/fd) go to a
# CSV; at the end min/max/first-quarter/last-quarter figures are printed. Both should be flat.
#
#   SOAK_SECS=120 scripts/soak.sh          # CSV path printed at the end (SOAK_CSV to choose)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECS=${SOAK_SECS:-1800}
NT=${SOAK_TORRENTS:-3}
SIZE_MB=${SOAK_SIZE_MB:-8}
CHURN=${SOAK_CHURN:-2}
MAXP=${SOAK_PEERS:-4}
BIN=${ATORRENT:-target/debug/atorrent}
[ -x "$BIN" ] || cargo build --quiet
command -v opentracker >/dev/null || { echo "soak: opentracker missing (scripts/setup.sh)" >&2; exit 1; }

W=$(mktemp -d /tmp/atorrent-soak.XXXXXX)
chmod 755 "$W"
CSV=${SOAK_CSV:-/tmp/atorrent-soak-$(date +%Y%m%d-%H%M%S).csv}
PIDS=()
cleanup() {
  exec 2>/dev/null
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "soak: kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

B=$((10 + RANDOM % 200))
ipn=2
next_ip() { ipn=$((ipn + 1)); echo "127.0.$B.$ipn"; }
T_IP=$(next_ip); T_PORT=$(free_port "$T_IP")
D_IP=$(next_ip); D_PORT=$(free_port "$D_IP")
mkdir -p "$W/tracker" "$W/dl" "$W/state" "$W/churn"

: >"$W/tracker/whitelist"
for ((i = 0; i < NT; i++)); do
  mkdir -p "$W/src$i"
  head -c $((SIZE_MB << 20)) /dev/urandom >"$W/src$i/soak$i.bin"
  "$BIN" create "$W/src$i/soak$i.bin" -o "$W/t$i.torrent" --piece-length 65536 \
    --tracker "http://$T_IP:$T_PORT/announce" | awk '{print $1}' >>"$W/tracker/whitelist"
done
chmod 755 "$W/tracker"; chmod 644 "$W/tracker/whitelist"
opentracker -i "$T_IP" -p "$T_PORT" -d "$W/tracker" -w whitelist >"$W/tracker.log" 2>&1 &
PIDS+=($!)
wait_listening "$T_IP" "$T_PORT" 10

for ((i = 0; i < NT; i++)); do
  ip=$(next_ip)
  "$BIN" download "$W/t$i.torrent" --dir "$W/src$i" --bind "$ip" --port "$(free_port "$ip")" \
    --no-dht --seed --up 4M >"$W/seed$i.log" 2>&1 &
  PIDS+=($!)
  wait_line "$W/seed$i.log" '^seeding ' 60 $!
done

CFG=$W/config.ini
cat >"$CFG" <<EOF
download_dir = $W/dl
state_dir = $W/state
log_file = $W/daemon.log
log_max_size = 1M
listen_port = $D_PORT
bind_address = $D_IP
enable_dht = false
enable_pex = false
enable_ipv6 = false
EOF
"$BIN" --config "$CFG" daemon >"$W/daemon.out" 2>&1 &
DPID=$!
PIDS+=("$DPID")
until [ -S "$W/state/control.sock" ]; do sleep 0.05; done
for ((i = 0; i < NT; i++)); do "$BIN" --config "$CFG" start "$W/t$i.torrent" >/dev/null; done

echo "t_s,rss_kib,fds,churn_peers,started,stopped" >"$CSV"
CHURN_PIDS=()
started=0 stopped=0 sig=TERM
T0=$SECONDS
next_sample=0 next_churn=$CHURN
while ((SECONDS - T0 < SECS)); do
  kill -0 "$DPID" 2>/dev/null || { echo "soak: the daemon died" >&2; tail -20 "$W/daemon.log" >&2; exit 1; }
  t=$((SECONDS - T0))
  # reap leechers that finished
  live=()
  for p in "${CHURN_PIDS[@]}"; do if kill -0 "$p" 2>/dev/null; then live+=("$p"); else wait "$p" 2>/dev/null || true; fi; done
  CHURN_PIDS=("${live[@]}")
  if ((t >= next_churn)); then
    next_churn=$((t + CHURN))
    i=$((RANDOM % NT))
    ip=$(next_ip)
    ((ipn < 250)) || ipn=2
    d="$W/churn/$started"
    mkdir -p "$d"
    "$BIN" download "$W/t$i.torrent" --dir "$d" --bind "$ip" --port "$(free_port "$ip")" \
      --no-dht --down 1M --peer "$D_IP:$D_PORT" >"$d.log" 2>&1 &
    CHURN_PIDS+=($!)
    PIDS+=($!)
    started=$((started + 1))
    if ((${#CHURN_PIDS[@]} > MAXP)); then
      k=$((RANDOM % ${#CHURN_PIDS[@]}))
      kill -"$sig" "${CHURN_PIDS[$k]}" 2>/dev/null || true
      [ $sig = TERM ] && sig=KILL || sig=TERM
      stopped=$((stopped + 1))
    fi
    # old leecher directories go (keeps the disk flat too)
    find "$W/churn" -mindepth 1 -maxdepth 1 -mmin +1 -exec rm -rf {} + 2>/dev/null || true
  fi
  if ((t >= next_sample)); then
    next_sample=$((t + 5))
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$DPID/status")
    fds=$(ls "/proc/$DPID/fd" | wc -l)
    echo "$t,$rss,$fds,${#CHURN_PIDS[@]},$started,$stopped" >>"$CSV"
  fi
  sleep 0.5
done

"$BIN" --config "$CFG" list || true
"$BIN" --config "$CFG" shutdown >/dev/null || echo "soak: shutdown failed" >&2
awk -F, 'NR > 1 { n++; r[n] = $2; f[n] = $3 }
END {
  q = int(n / 4); if (q < 1) q = 1
  rmin = rmax = r[1]; fmin = fmax = f[1]
  for (i = 1; i <= n; i++) {
    if (r[i] < rmin) rmin = r[i]; if (r[i] > rmax) rmax = r[i]
    if (f[i] < fmin) fmin = f[i]; if (f[i] > fmax) fmax = f[i]
  }
  for (i = 1; i <= q; i++) { r1 += r[i]; f1 += f[i] }
  for (i = n - q + 1; i <= n; i++) { r2 += r[i]; f2 += f[i] }
  printf "soak: %d samples; RSS KiB min %d max %d (first quarter mean %.0f, last %.0f)\n", n, rmin, rmax, r1 / q, r2 / q
  printf "soak: fds min %d max %d (first quarter mean %.1f, last %.1f)\n", fmin, fmax, f1 / q, f2 / q
}' "$CSV"
echo "soak: $started leechers started, $stopped stopped by signal; CSV $CSV"
