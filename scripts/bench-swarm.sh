# Loopback swarm helpers for bench-memory.sh and bench-io.sh (sourced, not run; needs lib.sh).
#
# swarm_make DIR MB [PIECE_LENGTH]: DIR/data/payload.bin (MB MiB of random bytes) and
#   DIR/t.torrent (`atorrent create`, auto piece length unless given).
# swarm_start DIR N: N seeding daemons, each on its own 127.0.1.x with its own state dir and
#   the DHT off; SWARM_PEERS gets "--peer IP:PORT" for each. Only the first daemon hash-checks
#   the data; the others start from a copy of its resume data (trusted without a re-check), so
#   50 seeders of a 4 GiB torrent do not hash 200 GiB. They all read the same data directory.
# swarm_stop: shuts the daemons down (by their process IDs).
# run_sampled OUT SECONDS CMD...: runs CMD (killed after SECONDS) under scripts/procstat.py;
#   OUT gets hwm_kb (peak RSS), write_bytes (exact, to its exit) and rc.
# Uses $BIN (release atorrent).

SWARM_PIDS=()
SWARM_PEERS=()

swarm_make() {
  local dir=$1 mb=$2 pl=${3:-}
  mkdir -p "$dir/data"
  local t0=$SECONDS
  head -c "$((mb * 1024 * 1024))" /dev/urandom >"$dir/data/payload.bin"
  local t1=$SECONDS
  local plarg=()
  if [ -n "$pl" ]; then plarg=(--piece-length "$pl"); fi
  "$BIN" create "$dir/data/payload.bin" -o "$dir/t.torrent" "${plarg[@]}" >/dev/null
  echo "swarm: $mb MiB random data in $((t1 - t0)) s, torrent created in $((SECONDS - t1)) s" >&2
}

# seeder_config DIR I IP PORT: writes DIR/s$I/config.ini.
seeder_config() {
  local dir=$1 i=$2 ip=$3 port=$4
  mkdir -p "$dir/s$i"
  cat >"$dir/s$i/config.ini" <<EOF
download_dir = $dir/data
state_dir = $dir/s$i/state
log_file = $dir/s$i/atorrent.log
log_level = warn
listen_port = $port
bind_address = $ip
enable_dht = false
enable_pex = false
enable_ipv6 = false
enable_encryption = off
max_active_seeds = 5
EOF
}

# seeder_wait_seeding CONFIG SECONDS
seeder_wait_seeding() {
  local cfg=$1 secs=$2 end=$((SECONDS + $2))
  until "$BIN" --config "$cfg" status 1 2>/dev/null | grep -q '^state:.*seeding'; do
    if ((SECONDS >= end)); then
      echo "swarm: seeder ($cfg) not seeding after ${secs}s" >&2
      "$BIN" --config "$cfg" status 1 >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# seeder_daemon DIR I: starts daemon I in the background and waits for its control socket.
seeder_daemon() {
  local dir=$1 i=$2
  rm -f "$dir/s$i/state/control.sock"
  "$BIN" --config "$dir/s$i/config.ini" daemon >"$dir/s$i/out" 2>&1 &
  SWARM_PIDS+=($!)
  local end=$((SECONDS + 30))
  until [ -S "$dir/s$i/state/control.sock" ]; do
    if ((SECONDS >= end)) || ! kill -0 "${SWARM_PIDS[-1]}" 2>/dev/null; then
      echo "swarm: daemon $i did not start" >&2
      tail -5 "$dir/s$i/out" "$dir/s$i/atorrent.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

swarm_start() {
  local dir=$1 n=$2 i ip port
  SWARM_PEERS=()
  for ((i = 1; i <= n; i++)); do
    ip=127.0.1.$i
    port=$(free_port "$ip")
    seeder_config "$dir" "$i" "$ip" "$port"
    SWARM_PEERS+=(--peer "$ip:$port")
  done
  # Seeder 1 checks the data once and writes its resume data at shutdown.
  local t0=$SECONDS
  seeder_daemon "$dir" 1
  "$BIN" --config "$dir/s1/config.ini" start "$dir/t.torrent" --dir "$dir/data" >/dev/null
  seeder_wait_seeding "$dir/s1/config.ini" 900
  "$BIN" --config "$dir/s1/config.ini" shutdown >/dev/null
  wait "${SWARM_PIDS[0]}" || true
  SWARM_PIDS=()
  echo "swarm: seeder 1 checked the data in $((SECONDS - t0)) s" >&2
  for ((i = 2; i <= n; i++)); do
    mkdir -p "$dir/s$i/state"
    cp -r "$dir/s1/state/torrents" "$dir/s1/state/resume" "$dir/s$i/state/"
  done
  for ((i = 1; i <= n; i++)); do
    seeder_daemon "$dir" "$i"
  done
  for ((i = 1; i <= n; i++)); do
    seeder_wait_seeding "$dir/s$i/config.ini" 60
  done
  echo "swarm: $n seeders up on 127.0.1.1-$n" >&2
}

swarm_stop() {
  local p
  for p in "${SWARM_PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${SWARM_PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  SWARM_PIDS=()
}

run_sampled() {
  local out=$1 secs=$2
  shift 2
  python3 scripts/procstat.py "$out" "$secs" "$@"
}
