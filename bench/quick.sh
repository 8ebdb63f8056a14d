#!/usr/bin/env bash
# A quick, single-machine measurement of weldr against its origin (weldr-test-server), with
# wrk, on 127.0.0.1 only. Not part of CI. The full comparison with HAProxy and nginx is a
# separate, later benchmark; this one answers "what does the proxy hop cost".
#
#   bench/quick.sh [seconds-per-run]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
scripts/install-deps.sh
if ! command -v wrk >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "quick.sh: wrk is missing; run as root to install it" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null
fi
build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DWELDR_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null

origin_port=18081
proxy_port=18080
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$build/weldr-test-server" --port "$origin_port" >/dev/null &
pids+=($!)
"$build/weldr-cli" --ip "127.0.0.1:$proxy_port" --threads 1 --log-level warn \
  --server "http://127.0.0.1:$origin_port" &
pids+=($!)
weldr_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$proxy_port/" >/dev/null && break; sleep 0.1; done

run() {  # name url connections
  local out
  out=$(wrk -t 1 -c "$3" -d "${duration}s" --latency "$2")
  printf '%-34s %12s req/s %10s/s  p50 %8s  p99 %8s\n' "$1" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$(awk '/Transfer\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "weldr-cli --threads 1, weldr-test-server 1 thread, wrk -t 1, ${duration}s per run"
for round in 1 2 3; do
  echo "round $round"
  run "  direct  11 B, 64 keep-alive conns" "http://127.0.0.1:$origin_port/" 64
  run "  weldr   11 B, 64 keep-alive conns" "http://127.0.0.1:$proxy_port/" 64
  run "  direct  1 MiB, 16 conns" "http://127.0.0.1:$origin_port/large" 16
  run "  weldr   1 MiB, 16 conns" "http://127.0.0.1:$proxy_port/large" 16
done
echo "weldr-cli peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$weldr_pid/status")"
