#!/usr/bin/env bash
# weldr against HAProxy and nginx, each a reverse proxy in front of the same nginx origin, with
# wrk, on 127.0.0.1 only. Not part of CI. Run it as root on an otherwise quiet machine:
#
#   bench/compare.sh
#   DURATION=30 ROUNDS=5 bench/compare.sh
#
# Environment (defaults in brackets):
#   DURATION     seconds per wrk run [10]
#   ROUNDS       rounds; each round runs every scenario against every target in turn [3]
#   TARGETS      which targets, in the order of each round ["direct weldr haproxy nginx weldr-2t"]
#   SCENARIOS    which scenarios ["idle small close large"]
#   WRK_THREADS  wrk -t [2]
#   IDLE_CONNS   idle connections of the idle scenario [1000]
#   BASE_PORT    first of the ports used, BASE_PORT..BASE_PORT+4 and +11, +12 [18200]
#   RESULTS      results directory [bench/results/<timestamp>]
#   JOBS         build jobs [nproc]
#   WELDR_BASELINE  another weldr-cli binary (say, one built from an earlier commit): adds the
#                target weldr-base (--threads 1) to TARGETS, for before/after figures from one run
#
# Targets: direct (the origin itself), weldr (weldr-cli --threads 1), haproxy (nbthread 1),
# nginx (one worker, proxy_pass with an upstream keepalive pool), weldr-2t (--threads 2),
# weldr-base (WELDR_BASELINE, --threads 1).
# Scenarios: small (GET / 11 B, 64 keep-alive connections), close (GET / with Connection: close,
# 64 connections), large (GET /large 1 MiB, 16 connections), idle (GET / over 8 connections while
# IDLE_CONNS idle keep-alive connections are held open; RSS per idle connection).
#
# Every process it starts runs in its own process group and is stopped on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# Ctrl-C and SIGTERM end the script at any point; the EXIT trap, set below, stops what it started.
trap 'printf "\ncompare.sh: interrupted\n" >&2; exit 130' INT
trap 'exit 143' TERM

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-direct weldr haproxy nginx weldr-2t}
# idle comes first: its first round measures the RSS of idle connections in processes that have
# not yet held (and freed) thousands of connections, which later rounds would reuse.
SCENARIOS=${SCENARIOS:-idle small close large}
WRK_THREADS=${WRK_THREADS:-2}
IDLE_CONNS=${IDLE_CONNS:-1000}
BASE_PORT=${BASE_PORT:-18200}
JOBS=${JOBS:-$(nproc)}
WELDR_BASELINE=${WELDR_BASELINE:-}
if [ -n "$WELDR_BASELINE" ]; then
  [ -x "$WELDR_BASELINE" ] || { echo "compare.sh: WELDR_BASELINE=$WELDR_BASELINE is not an executable" >&2; exit 1; }
  WELDR_BASELINE=$(realpath "$WELDR_BASELINE")
  case " $TARGETS " in *" weldr-base "*) ;; *) TARGETS="$TARGETS weldr-base" ;; esac
fi
stamp=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-bench/results/$stamp}

die() { echo "compare.sh: $*" >&2; exit 1; }

# --- ports: refuse to run next to anything that listens on them ---------------------------------
origin_port=$BASE_PORT
declare -A port=([direct]=$BASE_PORT [weldr]=$((BASE_PORT + 1)) [weldr-2t]=$((BASE_PORT + 2))
                 [haproxy]=$((BASE_PORT + 3)) [nginx]=$((BASE_PORT + 4)) [weldr-base]=$((BASE_PORT + 5)))
admin_port_1=$((BASE_PORT + 11))
admin_port_2=$((BASE_PORT + 12))
admin_port_3=$((BASE_PORT + 13))
for t in $TARGETS; do [ -n "${port[$t]:-}" ] || die "unknown target '$t'"; done
for s in $SCENARIOS; do
  case $s in small | close | large | idle) ;; *) die "unknown scenario '$s'" ;; esac
done
for p in "${port[@]}" "$admin_port_1" "$admin_port_2" "$admin_port_3"; do
  if [ -n "$(ss -Htln "sport = :$p")" ]; then die "port $p is in use; stop what listens there or set BASE_PORT"; fi
done

# --- what is missing: Debian packages, then the Release build -----------------------------------
scripts/install-deps.sh
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; run as root to install them"
  echo "compare.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
  case " ${missing[*]} " in *" nginx-light "* | *" haproxy "*)
    echo "compare.sh: note: on a systemd host Debian starts the nginx/haproxy services it installs;" \
      "this script does not use them (systemctl disable --now nginx haproxy if unwanted)" >&2 ;;
  esac
fi
PATH=$PATH:/usr/sbin
[ "$(id -u)" -eq 0 ] || die "run as root (nginx runs with 'user root' from a private prefix)"

build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DWELDR_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$JOBS" --target weldr-cli >/dev/null

# 1,000 idle connections plus wrk's need more descriptors than some defaults allow.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- processes: each in its own process group, all stopped on exit -------------------------------
work=$(mktemp -d /tmp/weldr-compare.XXXXXX)
mkdir -p "$RESULTS/raw"
# shellcheck source=procs.sh
. "$repo/bench/procs.sh"
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_started 30
  # Keep the configurations and logs with the results, then remove the rest.
  cp "$work"/*.conf "$work"/*.cfg "$work"/*.log "$RESULTS/" 2>/dev/null || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

start() {  # start LOGNAME COMMAND...: runs COMMAND in a new process group, logs to $work/LOGNAME.log
  local log=$1
  shift
  start_in_group "$work/$log.log" "$@"
}

wait_http() {  # wait_http PORT: until GET / answers Hello World
  for _ in $(seq 100); do
    [ "$(curl -s --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null)" = "Hello World" ] && return 0
    sleep 0.1
  done
  die "nothing answers Hello World on 127.0.0.1:$1 (see the logs in $RESULTS)"
}

mkdir -p "$work/www" "$work/tmp"
printf 'Hello World' >"$work/www/hello"
head -c 1048576 /dev/zero | tr '\0' 'a' >"$work/www/large"

# nginx: one worker, root, everything under $work (-p), no access log.
nginx_common() {  # nginx_common NAME
  cat <<EOF
user root;
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid $work/$1.pid;
error_log $work/$1-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type application/octet-stream;
  keepalive_requests 100000000;
  keepalive_timeout 3600s;
  client_body_temp_path $work/tmp/$1-body;
  proxy_temp_path $work/tmp/$1-proxy;
EOF
}
{
  nginx_common origin
  cat <<EOF
  sendfile on;
  server {
    listen 127.0.0.1:$origin_port;
    root $work/www;
    location = / { default_type text/plain; return 200 "Hello World"; }
    location = /large { }
  }
}
EOF
} >"$work/origin-nginx.conf"
{
  nginx_common proxy
  cat <<EOF
  upstream origin {
    server 127.0.0.1:$origin_port;
    keepalive 128;
    keepalive_requests 100000000;
    keepalive_timeout 3600s;
  }
  server {
    listen 127.0.0.1:${port[nginx]};
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_max_temp_file_size 0;
    }
  }
}
EOF
} >"$work/proxy-nginx.conf"

cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  timeout http-request 60s
  http-reuse always
  maxconn 5000
frontend fe
  bind 127.0.0.1:${port[haproxy]}
  default_backend be
backend be
  server origin 127.0.0.1:$origin_port
EOF

declare -A pid_of  # the process that serves the target's traffic, for its RSS
nginx -t -q -p "$work" -c "$work/origin-nginx.conf" -e "$work/origin-error.log" 2>"$work/nginx-test.log" ||
  { cat "$work/nginx-test.log" >&2; die "nginx refused the origin configuration"; }
start origin-nginx nginx -p "$work" -c "$work/origin-nginx.conf" -e "$work/origin-error.log"
origin_master=$last_pid
wait_http "$origin_port"
pid_of[direct]=$(pgrep -P "$origin_master" | head -1)

# Limits as generous as HAProxy's and nginx's here: long keep-alive, 5,000 connections.
weldr_flags=(--server "http://127.0.0.1:$origin_port" --log-level error --connect-timeout 5s
             --client-timeout 60s --client-idle-timeout 300s --max-connections 5000 --shutdown-timeout 1s)
for t in $TARGETS; do
  case $t in
    weldr)
      start weldr "$build/weldr-cli" --ip "127.0.0.1:${port[weldr]}" --admin-ip "127.0.0.1:$admin_port_1" \
        --threads 1 "${weldr_flags[@]}"
      pid_of[weldr]=$last_pid ;;
    weldr-2t)
      start weldr-2t "$build/weldr-cli" --ip "127.0.0.1:${port[weldr-2t]}" --admin-ip "127.0.0.1:$admin_port_2" \
        --threads 2 "${weldr_flags[@]}"
      pid_of[weldr-2t]=$last_pid ;;
    weldr-base)
      [ -n "$WELDR_BASELINE" ] || die "the target weldr-base needs WELDR_BASELINE=path/to/weldr-cli"
      start weldr-base "$WELDR_BASELINE" --ip "127.0.0.1:${port[weldr-base]}" --admin-ip "127.0.0.1:$admin_port_3" \
        --threads 1 "${weldr_flags[@]}"
      pid_of[weldr-base]=$last_pid ;;
    haproxy)
      haproxy -c -q -f "$work/haproxy.cfg" || die "haproxy refused its configuration"
      start haproxy haproxy -db -f "$work/haproxy.cfg"
      pid_of[haproxy]=$last_pid ;;
    nginx)
      nginx -t -q -p "$work" -c "$work/proxy-nginx.conf" -e "$work/proxy-error.log" 2>"$work/nginx-test.log" ||
        { cat "$work/nginx-test.log" >&2; die "nginx refused the proxy configuration"; }
      start proxy-nginx nginx -p "$work" -c "$work/proxy-nginx.conf" -e "$work/proxy-error.log"
      proxy_master=$last_pid ;;
  esac
done
for t in $TARGETS; do
  wait_http "${port[$t]}"
  size=$(curl -s "http://127.0.0.1:${port[$t]}/large" | wc -c)
  [ "$size" -eq 1048576 ] || die "$t: /large returned $size bytes, not 1048576"
done
[ -n "${proxy_master:-}" ] && pid_of[nginx]=$(pgrep -P "$proxy_master" | head -1)
for t in $TARGETS; do [ -n "${pid_of[$t]:-}" ] || die "no process found for $t"; done

# --- measuring ------------------------------------------------------------------------------------
# CPU time, user and system, of every thread of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }  # rss_kib PID VmRSS|VmHWM
reset_peak() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }   # VmHWM := VmRSS

run_wrk() {  # run_wrk OUTFILE ARGS...: wrk in its own process group, interruptible
  local out=$1
  shift
  setsid wrk "$@" >"$out" 2>&1 </dev/null &
  local p=$!
  pids+=($p)
  wait $p || true
}

versions() {
  echo "weldr:     $("$build/weldr-cli" --version) (commit $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- lib include cli || echo ', modified'))"
  echo "haproxy:   $(haproxy -v 2>&1 | head -1)"
  echo "nginx:     $(nginx -v 2>&1)"
  echo "wrk:       $(wrk -v 2>&1 | head -1)"
  [ -z "$WELDR_BASELINE" ] || echo "weldr-base: $WELDR_BASELINE ($("$WELDR_BASELINE" --version))"
}
header() {
  echo "# bench/compare.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  versions
  echo "runs: DURATION=${DURATION}s per run, ROUNDS=$ROUNDS, wrk -t$WRK_THREADS, targets alternating per round: $TARGETS"
  echo "origin: nginx, 1 worker, keep-alive; weldr --threads 1 (weldr-2t: --threads 2), haproxy nbthread 1, nginx proxy 1 worker"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ "$(nproc)" -le 2 ]; then
    echo "NOTE: $(nproc) cores: wrk, the proxy and the origin share them, so absolute figures are low;"
    echo "      read the ratios. weldr-2t cannot scale much here: its second thread competes with wrk and the origin."
  fi
  echo
}
header | tee "$RESULTS/header.txt"

printf 'round\tscenario\ttarget\traw\tpeak_kib\trss_before_kib\trss_after_kib\tidle_open\tidle_closed\tcpu_ticks\ttick_hz\n' \
  >"$RESULTS/runs.tsv"

for round in $(seq "$ROUNDS"); do
  for s in $SCENARIOS; do
    for t in $TARGETS; do
      p=${port[$t]}
      pid=${pid_of[$t]}
      raw=raw/$s.$t.r$round.txt
      before="" after="" open="" closed=""
      wrk_args=(-t "$WRK_THREADS" --latency --timeout 5s -d "${DURATION}s")
      case $s in
        small) wrk_args+=(-c 64 "http://127.0.0.1:$p/") ;;
        close) wrk_args+=(-c 64 -H 'Connection: close' "http://127.0.0.1:$p/") ;;
        large) wrk_args+=(-c 16 "http://127.0.0.1:$p/large") ;;
        idle) wrk_args+=(-c 8 "http://127.0.0.1:$p/") ;;
      esac
      if [ "$s" = idle ]; then
        before=$(rss_kib "$pid" VmRSS)
        reset_peak "$pid"
        idle_out=$work/idle.$t.r$round.out
        setsid python3 "$repo/bench/idle_conns.py" "$p" "$IDLE_CONNS" 30 >"$idle_out" 2>&1 </dev/null &
        idle_pid=$!
        pids+=($idle_pid)
        for _ in $(seq 600); do
          grep -q '^ready' "$idle_out" && break
          kill -0 $idle_pid 2>/dev/null || break
          sleep 0.1
        done
        grep -q '^ready' "$idle_out" || { cat "$idle_out" >&2; die "$t: could not open $IDLE_CONNS idle connections"; }
        sleep 1
        after=$(rss_kib "$pid" VmRSS)
      else
        reset_peak "$pid"
      fi
      printf '%-8s round %s/%s  %-9s ' "$s" "$round" "$ROUNDS" "$t"
      ticks_before=$(cpu_ticks "$pid")
      run_wrk "$RESULTS/$raw" "${wrk_args[@]}"
      ticks=$(($(cpu_ticks "$pid") - ticks_before))
      peak=$(rss_kib "$pid" VmHWM)
      if [ "$s" = idle ]; then
        kill -TERM "$idle_pid" 2>/dev/null || true
        wait "$idle_pid" 2>/dev/null || true
        read -r _ open _ closed _ < <(grep '^open' "$idle_out" || echo "open - closed -")
        echo "idle holder: $(cat "$idle_out" | tr '\n' ' ')" >>"$RESULTS/$raw"
      fi
      awk -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" \
        '/Requests\/sec/ {r=$2} /Transfer\/sec/ {b=$2} $1 == "99%" {l=$2} / requests in / {n=$1}
         /Socket errors|Non-2xx/ {e=e " [" $0 "]"}
         END {c = n > 0 ? sprintf("%.1f", ticks * 1e6 / hz / n) : "-"
              printf "%10s req/s %9s/s  p99 %8s  cpu %6s us/req%s\n", r, b, l, c, e}' "$RESULTS/$raw"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$s" "$t" "$raw" "$peak" "$before" "$after" \
        "$open" "$closed" "$ticks" "$(getconf CLK_TCK)" >>"$RESULTS/runs.tsv"
      sleep 1  # let closed connections drain between runs
    done
  done
done

{
  cat "$RESULTS/header.txt"
  python3 "$repo/bench/compare_table.py" "$RESULTS"
} >"$RESULTS/table.md"
echo
python3 "$repo/bench/compare_table.py" "$RESULTS"
echo
echo "results: $RESULTS/ (table.md, runs.tsv, raw/ wrk outputs, configurations and logs)"
