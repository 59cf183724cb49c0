# Shared shell helpers for demo.sh and bench.sh (sourced, not run).

# free_port IP: a TCP port that was free on IP a moment ago.
free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

# wait_line FILE REGEX SECONDS [PID]: waits until FILE has a line matching REGEX; fails early
# if PID has exited.
wait_line() {
  local file=$1 re=$2 secs=$3 pid=${4:-}
  local end=$((SECONDS + secs))
  while ! grep -qE "$re" "$file" 2>/dev/null; do
    if ((SECONDS >= end)); then
      echo "timed out after ${secs}s waiting for /$re/ in $file" >&2
      return 1
    fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid exited before /$re/ appeared in $file" >&2
      return 1
    fi
    sleep 0.1
  done
}

# wait_listening IP PORT SECONDS: waits for a listening TCP socket in /proc/net/tcp
# (no connection is made, so the listener sees no bogus peer).
wait_listening() {
  local ip=$1 port=$2 secs=$3 a b c d hex
  IFS=. read -r a b c d <<<"$ip"
  hex=$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$port")
  local end=$((SECONDS + secs))
  until grep -qE "^ *[0-9]+: ($hex|00000000:$(printf '%04X' "$port")) [0-9A-F:]+ 0A " /proc/net/tcp; do
    if ((SECONDS >= end)); then
      echo "nothing listening on $ip:$port after ${secs}s" >&2
      return 1
    fi
    sleep 0.1
  done
}

# now: seconds since the epoch with sub-second precision.
now() { date +%s.%N; }

# bench_bin PROFILE: builds, then prints the path of, the atorrent binary a benchmark measures.
# For the release profile that is the static musl x86_64 build (the binary that ships) when
# that rustup target is installed, else the host build of PROFILE; BENCH_BIN overrides both.
bench_bin() {
  local profile=$1 musl=x86_64-unknown-linux-musl
  if [ -n "${BENCH_BIN:-}" ]; then
    echo "$BENCH_BIN"
  elif [ "$profile" = release ] && [ "$(uname -m)" = x86_64 ] &&
    rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
    bash cross/build.sh "$musl" --release --quiet >&2
    echo "$PWD/target/$musl/release/atorrent"
  else
    cargo build --profile "$profile" --quiet >&2
    if [ "$profile" = dev ]; then echo "$PWD/target/debug/atorrent"; else echo "$PWD/target/$profile/atorrent"; fi
  fi
}
