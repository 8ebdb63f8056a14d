#!/usr/bin/env bash
# Soak test: weldr-cli built with AddressSanitizer, LeakSanitizer and UBSan, under mixed traffic
# for SOAK_SECONDS while one of its origins is stopped and restarted over and over, on
# 127.0.0.1 only. Not part of CI.
#
#   bench/soak.sh                    (10 minutes)
#   SOAK_SECONDS=60 bench/soak.sh    (a smoke run)
#
# Origins: 3 steady weldr-test-servers and 1 that is stopped every FLAP_PERIOD seconds for
# FLAP_DOWN seconds (the health checker, every second, takes it out and puts it back), all
# registered through the management API (POST /servers), plus a 5th that is registered and
# deregistered in turn every 15 s. Traffic, all at once: small GETs over 8 keep-alive
# connections (wrk), GETs with Connection: close over 4 connections (wrk), /large downloads of
# 1 KiB to 4 MiB and POST /echo uploads of up to 2 MiB, Content-Length and chunked, both checked
# byte for byte (bench/soak_traffic.py), and management API calls (GET /stats, /servers,
# /metrics every second or so). weldr's RSS, descriptors and /stats go to rss.csv every
# SAMPLE_SECONDS. At the end weldr-cli gets SIGTERM and must exit 0 with nothing from the
# sanitizers on its stderr.
#
# Environment (defaults in brackets):
#   SOAK_SECONDS    length of the traffic [600]
#   FLAP_PERIOD     seconds between two stops of the flapping origin [20]
#   FLAP_DOWN       seconds it stays stopped [8]
#   SAMPLE_SECONDS  RSS sampling interval [10]
#   RSS_TOLERANCE   allowed growth, in %, of the last minute's RSS average over minute 2's [10]
#   BASE_PORT       ports BASE_PORT (proxy), +1 (API), +10..+14 (origins) [18300]
#   RESULTS         results directory [bench/results/soak-<timestamp>]
#   JOBS            build jobs [nproc]
#
# Exit status: 0 if weldr-cli exited 0, the sanitizers said nothing, no response body was
# corrupted and RSS was stable (judged for SOAK_SECONDS >= 180); 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# Ctrl-C and SIGTERM end the script at any point; the EXIT trap, set below, stops what it started.
trap 'printf "\nsoak.sh: interrupted\n" >&2; exit 130' INT
trap 'exit 143' TERM

SOAK_SECONDS=${SOAK_SECONDS:-600}
FLAP_PERIOD=${FLAP_PERIOD:-20}
FLAP_DOWN=${FLAP_DOWN:-8}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}
RSS_TOLERANCE=${RSS_TOLERANCE:-10}
BASE_PORT=${BASE_PORT:-18300}
JOBS=${JOBS:-$(nproc)}
RESULTS=${RESULTS:-bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}

die() { echo "soak.sh: $*" >&2; exit 1; }
[ "$FLAP_DOWN" -lt "$FLAP_PERIOD" ] || die "FLAP_DOWN must be less than FLAP_PERIOD"

proxy_port=$BASE_PORT
admin_port=$((BASE_PORT + 1))
steady_ports=($((BASE_PORT + 10)) $((BASE_PORT + 11)) $((BASE_PORT + 12)))
flap_port=$((BASE_PORT + 13))
extra_port=$((BASE_PORT + 14))
for p in $proxy_port $admin_port "${steady_ports[@]}" $flap_port $extra_port; do
  if [ -n "$(ss -Htln "sport = :$p")" ]; then die "port $p is in use; stop what listens there or set BASE_PORT"; fi
done

# --- build: the sanitizer flags of scripts/test.sh ---------------------------------------------
scripts/install-deps.sh
if ! command -v wrk >/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "wrk is missing; run as root to install it"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null
fi
# SOAK_BUILD=release runs the same soak against a Release build: no sanitizer reports then, but
# RSS without ASan's quarantine, which is what the RSS stability check is really about.
if [ "${SOAK_BUILD:-asan}" = release ]; then
  build=build/release-soak
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DWELDR_BUILD_TESTS=OFF >/dev/null
else
  build=build/asan-soak
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DWELDR_SANITIZE=address,undefined \
    -DWELDR_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build" -j "$JOBS" --target weldr-cli weldr-test-server >/dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- processes: each in its own process group, all stopped on exit -------------------------------
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
cat >"$RESULTS/params" <<EOF
SOAK_SECONDS=$SOAK_SECONDS
FLAP_PERIOD=$FLAP_PERIOD
FLAP_DOWN=$FLAP_DOWN
FLAP_GRACE=5
SAMPLE_SECONDS=$SAMPLE_SECONDS
RSS_TOLERANCE=$RSS_TOLERANCE
ORIGINS=5
EOF
# shellcheck source=procs.sh
. "$repo/bench/procs.sh"
weldr_pid=
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_started 50
  exit "$status"
}
trap cleanup EXIT

start() {  # start LOG COMMAND...: COMMAND in a new process group, stdout and stderr to $RESULTS/LOG
  local log=$1
  shift
  start_in_group "$RESULTS/$log" "$@"
}
wait_for() {  # wait_for URL: until it answers 2xx
  for _ in $(seq 300); do curl -sf --max-time 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "nothing answers $1"
}
api() {  # api METHOD PATH [JSON]: prints the status code
  curl -s -o /dev/null -w '%{http_code}' -X "$1" ${3:+-H 'Content-Type: application/json' --data "$3"} \
    "http://127.0.0.1:$admin_port$2"
}

for p in "${steady_ports[@]}" $extra_port; do
  start "origin-$p.log" env ASAN_OPTIONS=detect_leaks=0 "$build/weldr-test-server" --port "$p"
done
: >"$RESULTS/flaps.log"
# The flapping origin: its loop and the origin share a process group, so both stop together.
start "origin-$flap_port.log" env ASAN_OPTIONS=detect_leaks=0 bash -c '
  while :; do
    "$0" --port "$1" & o=$!
    echo "$(date +%s.%N) start" >>"$2"
    sleep "$3"
    echo "$(date +%s.%N) stop" >>"$2"
    kill -TERM $o; wait $o
    sleep "$4"
  done' "$build/weldr-test-server" "$flap_port" "$RESULTS/flaps.log" $((FLAP_PERIOD - FLAP_DOWN)) "$FLAP_DOWN"

start weldr.stderr "$build/weldr-cli" --ip "127.0.0.1:$proxy_port" --admin-ip "127.0.0.1:$admin_port" \
  --threads 2 --log-level info --health-interval 1s --health-timeout 500ms --health-failures 2 \
  --health-passes 2 --health-path /health --shutdown-timeout 5s
weldr_pid=$last_pid
for p in "${steady_ports[@]}" $flap_port $extra_port; do wait_for "http://127.0.0.1:$p/health"; done
wait_for "http://127.0.0.1:$admin_port/stats"
for p in "${steady_ports[@]}" $flap_port; do
  code=$(api POST /servers "{\"url\": \"http://127.0.0.1:$p\"}")
  [ "$code" = 201 ] || die "POST /servers for port $p answered $code, not 201"
done
wait_for "http://127.0.0.1:$proxy_port/"

echo "soak.sh: ${SOAK_SECONDS} s of traffic against weldr-cli (ASan+UBSan, pid $weldr_pid), results in $RESULTS"
start wrk-keepalive.txt wrk -t 1 -c 8 -d "${SOAK_SECONDS}s" --timeout 10s -s "$repo/bench/soak_status.lua" \
  "http://127.0.0.1:$proxy_port/"
wrk1=$last_pid
start wrk-close.txt wrk -t 1 -c 4 -d "${SOAK_SECONDS}s" --timeout 10s -H 'Connection: close' \
  -s "$repo/bench/soak_status.lua" "http://127.0.0.1:$proxy_port/"
wrk2=$last_pid
setsid python3 "$repo/bench/soak_traffic.py" --port "$proxy_port" --admin-port "$admin_port" \
  --extra-url "http://127.0.0.1:$extra_port" --pid "$weldr_pid" --seconds "$SOAK_SECONDS" \
  --sample-seconds "$SAMPLE_SECONDS" --rss-csv "$RESULTS/rss.csv" --out "$RESULTS/traffic.json" \
  2>"$RESULTS/traffic.stderr" </dev/null &
traffic=$!
pids+=($traffic)
wait $traffic || echo "soak.sh: soak_traffic.py exited with $?" >&2
wait $wrk1 || true
wait $wrk2 || true

# --- stop weldr-cli: it must exit 0, and the sanitizers must have said nothing --------------------
status=0
if kill -0 "$weldr_pid" 2>/dev/null; then
  kill -TERM "$weldr_pid"
  for _ in $(seq 1200); do
    [[ $(ps -o stat= -p "$weldr_pid" 2>/dev/null) == Z* ]] && break  # exited, not reaped yet
    kill -0 "$weldr_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ $(ps -o stat= -p "$weldr_pid" 2>/dev/null) != Z* ]] && kill -0 "$weldr_pid" 2>/dev/null; then
    echo "soak.sh: weldr-cli did not exit within 120 s of SIGTERM; killing it" >&2
    kill -KILL "$weldr_pid"
  fi
  wait "$weldr_pid" || status=$?
else
  wait "$weldr_pid" || status=$?
fi
echo "$status" >"$RESULTS/weldr.exit"
echo
set +e
python3 "$repo/bench/soak_summary.py" "$RESULTS" | tee "$RESULTS/summary.txt"
verdict=${PIPESTATUS[0]}
set -e
echo "results: $RESULTS/ (summary.txt, rss.csv, weldr.stderr, wrk outputs, traffic.json)"
exit "$verdict"
