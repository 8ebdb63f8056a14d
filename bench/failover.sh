#!/usr/bin/env bash
# Failover of a virtual IP, weldr against keepalived, side by side on the same network namespaces.
#
#   bench/failover.sh [trials]          (default 3 per scenario; TRIALS=N works too)
#   SYSTEMS=weldr bench/failover.sh 20  (only weldr's scenarios; default "weldr keepalived")
#
# Root only: it creates network namespaces joined by a bridge, all on 198.18.0.0/24 with no route
# out, so nothing reaches the host's network:
#
#   E  etcd (weldr only)   198.18.0.1
#   A  node a              198.18.0.2
#   B  node b              198.18.0.3
#   C  client              198.18.0.100     GET http://198.18.0.50:8080/ (the virtual IP)
#
# Scenarios, TRIALS times each:
#   weldr      kill -9   every process of the active node's namespace (weldr-cli and its origin)
#   weldr      SIGTERM   weldr-cli of the active node (it resigns, hands over, then drains)
#   keepalived kill -9   every process of the master's namespace (keepalived and the web server)
#   keepalived SIGTERM   keepalived of the master (it sends a priority 0 advertisement)
#
# weldr: weldr-cli --lease-ttl 1s --vip 198.18.0.50/24, etcd with a 500 ms election timeout (so
# that a 1 s lease is granted as asked), an origin (weldr-test-server) on 127.0.0.1:19000 in each
# node. keepalived: Debian's, with its defaults (VRRPv2, advert_int 1, preempt) and only what a
# two-node setup needs: a MASTER at priority 150 and a BACKUP at 100, each in front of a
# weldr-test-server on 0.0.0.0:8080.
#
# The client (Python, in namespace C) opens a new connection every 20 ms and sends one GET, each
# allowed 200 ms in all. A request fails when it does not get a whole 200 response in time. The
# gap is the time from the first failed request to the first successful one after the last
# failure. Killed nodes are started again between trials (their kernel kept the address, which
# is removed first, as a reboot would).
#
# Binaries: WELDR_CLI and WELDR_TEST_SERVER, else build/release if it has them, else build/asan.
# Results and every process's log: bench/results/failover-<UTC timestamp>/ (RESULTS=DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

trials=${1:-${TRIALS:-3}}
[[ $trials =~ ^[1-9][0-9]*$ ]] || { echo "failover.sh: trials must be a positive number" >&2; exit 2; }
systems=${SYSTEMS:-weldr keepalived}
for system in $systems; do
  [[ $system == weldr || $system == keepalived ]] ||
    { echo "failover.sh: SYSTEMS takes weldr and keepalived, not '$system'" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "failover.sh: run as root (it creates network namespaces)" >&2; exit 1; }

pick() {  # name: the binary from build/release, else build/asan
  local b
  for b in build/release build/asan; do
    [ -x "$b/$1" ] && { echo "$root/$b/$1"; return; }
  done
}
cli=${WELDR_CLI:-$(pick weldr-cli)}
test_server=${WELDR_TEST_SERVER:-$(pick weldr-test-server)}
if [ -z "$cli" ] || [ ! -x "$cli" ]; then
  echo "failover.sh: no weldr-cli (build it, or set WELDR_CLI)" >&2
  exit 1
fi
if [ -z "$test_server" ] || [ ! -x "$test_server" ]; then
  echo "failover.sh: no weldr-test-server (build it, or set WELDR_TEST_SERVER)" >&2
  exit 1
fi
for tool in ip etcd curl python3; do
  command -v "$tool" >/dev/null || { echo "failover.sh: $tool is missing" >&2; exit 1; }
done
python=$(python3 -c 'import sys; print(sys.executable)')
if [[ " $systems " == *" keepalived "* ]] && ! command -v keepalived >/dev/null; then
  # Installed without starting it (policy-rc.d), and not left enabled: it runs here only in the
  # namespaces, with this script's configuration.
  echo "installing keepalived..."
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends keepalived >/dev/null
  [ "$own_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now keepalived >/dev/null 2>&1 || true
  fi
fi

results=${RESULTS:-bench/results/failover-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
results=$(cd "$results" && pwd)
tag=wfo$$
vip=198.18.0.50
tmp=$(mktemp -d /tmp/weldr-failover.XXXXXX)  # binaries and etcd's data (which preallocates 64 MiB)
ns() { echo "$tag-$1"; }

cleanup() {
  local n pids
  trap - EXIT INT TERM
  for n in c a b e s; do
    ip netns list 2>/dev/null | grep -q "^$(ns "$n")\b" || continue
    pids=$(ip netns pids "$(ns "$n")" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  done
  wait 2>/dev/null || true
  for n in c a b e s; do
    ip netns del "$(ns "$n")" 2>/dev/null || true
  done
  rm -rf "$tmp" "$results/stop"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Copies, so that a rebuild while the script runs changes nothing under it.
echo "weldr-cli: $cli"
cp "$cli" "$tmp/weldr-cli"
cp "$test_server" "$tmp/weldr-test-server"
cli=$tmp/weldr-cli
test_server=$tmp/weldr-test-server

# ---- the network -----------------------------------------------------------------------------
ip netns add "$(ns s)"
ip -n "$(ns s)" link set lo up
ip -n "$(ns s)" link add name br0 type bridge
ip -n "$(ns s)" link set br0 up
for spec in e:198.18.0.1 a:198.18.0.2 b:198.18.0.3 c:198.18.0.100; do
  n=${spec%%:*}
  ip netns add "$(ns "$n")"
  ip -n "$(ns "$n")" link set lo up
  ip -n "$(ns s)" link add name "v$n" type veth peer name eth0 netns "$(ns "$n")"
  ip -n "$(ns s)" link set "v$n" master br0 up
  ip -n "$(ns "$n")" addr add "${spec#*:}/24" dev eth0
  ip -n "$(ns "$n")" link set eth0 up
done

# ---- the client ------------------------------------------------------------------------------
cat >"$results/client.py" <<'EOF'
# GET / on HOST:PORT over a new connection every INTERVAL s, each allowed TIMEOUT s in all, until
# the file STOP exists and 50 requests in a row have succeeded since, or LIMIT s have passed.
# Prints one JSON line: requests, failed, gap_ms (first failure to the first success after the
# last one; -1 if none came), the failures by kind.
import json, os, socket, sys, time

host, port, interval, timeout, stop, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    float(sys.argv[4]), sys.argv[5], float(sys.argv[6])
request = b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"

def complete(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False

def one():
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(request)
        data = b""
        while not complete(data):
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            s.settimeout(left)
            chunk = s.recv(4096)
            if not chunk:
                return "closed early"
            data += chunk
        return "ok" if data.startswith(b"HTTP/1.1 200 ") else "status " + data[:12].decode(errors="replace")
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except OSError as e:
        return "error %s" % (e.strerror or e.errno)
    finally:
        s.close()

start = time.monotonic()
events = []
streak_after_stop = 0
next_at = start
while time.monotonic() - start < limit:
    at = time.monotonic()
    outcome = one()
    events.append((at - start, outcome))
    stopping = os.path.exists(stop)
    streak_after_stop = streak_after_stop + 1 if stopping and outcome == "ok" else 0
    if streak_after_stop >= 50:
        break
    next_at += interval
    pause = next_at - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    else:
        next_at = time.monotonic()

failures = [(t, o) for t, o in events if o != "ok"]
gap_ms = 0
if failures:
    after = [t for t, o in events if o == "ok" and t > failures[-1][0]]
    gap_ms = round((after[0] - failures[0][0]) * 1000) if after else -1
kinds = {}
for _, o in failures:
    kinds[o] = kinds.get(o, 0) + 1
print(json.dumps({"requests": len(events), "failed": len(failures), "gap_ms": gap_ms, "kinds": kinds}))
EOF

# ---- helpers ---------------------------------------------------------------------------------
now_ms() { echo $(($(date +%s%N) / 1000000)); }
has_vip() { ip -n "$(ns "$1")" -o -4 addr show dev eth0 | grep -q "inet $vip/24 "; }
other() { [ "$1" = a ] && echo b || echo a; }
holder() {  # the node that holds the address, "none" or "both"
  if has_vip a && has_vip b; then echo both; elif has_vip a; then echo a; elif has_vip b; then echo b; else echo none; fi
}
wait_for() {  # seconds command...: polls every 20 ms
  local deadline=$(($(now_ms) + $1 * 1000))
  shift
  until "$@"; do
    [ "$(now_ms)" -lt "$deadline" ] || return 1
    sleep 0.02
  done
}
wait_stable() {  # seconds: until one node holds the address and has for that long (at most 30 s)
  local need=$(($1 * 1000)) deadline=$(($(now_ms) + 30000)) last="" since h
  since=$(now_ms)
  while [ "$(now_ms)" -lt "$deadline" ]; do
    h=$(holder)
    [ "$h" != "$last" ] && { last=$h; since=$(now_ms); }
    if [[ $h == [ab] ]] && [ $(($(now_ms) - since)) -ge "$need" ]; then
      echo "$h"
      return 0
    fi
    sleep 0.05
  done
  echo "failover.sh: the address did not settle on one node (last: $last)" >&2
  return 1
}
declare -A main_pid

# Starts COMMAND... in the background with its output appended to LOG, and sets $spawned to its
# pid. A subshell waits for it, so that bash does not report each process a trial kills.
spawn() {  # log command...
  local log=$1 pidfile
  shift
  pidfile=$(mktemp "$tmp/pid.XXXXXX")
  ( "$@" >>"$log" 2>&1 &
    echo $! >"$pidfile"
    wait $! ) 2>/dev/null &
  until [ -s "$pidfile" ]; do sleep 0.01; done
  spawned=$(cat "$pidfile")
  rm -f "$pidfile"
}

start_etcd() {
  spawn "$results/etcd.out" ip netns exec "$(ns e)" etcd --name e --data-dir "$tmp/etcd" \
    --listen-client-urls http://198.18.0.1:2379 --advertise-client-urls http://198.18.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster e=http://127.0.0.1:2380 --heartbeat-interval 50 --election-timeout 500 \
    --logger zap --log-outputs "$results/etcd.log"
  wait_for 20 ip netns exec "$(ns a)" curl -sf -m 1 -o /dev/null http://198.18.0.1:2379/health ||
    { echo "failover.sh: etcd did not start; see $results/etcd.log" >&2; exit 1; }
}

start_weldr() {  # node
  local n=$1 log="$results/weldr-$1.log"
  if ! ip netns exec "$(ns "$n")" curl -sf -m 1 -o /dev/null http://127.0.0.1:19000/health; then
    spawn "$results/origin-$n.log" ip netns exec "$(ns "$n")" "$test_server" --port 19000
    wait_for 10 ip netns exec "$(ns "$n")" curl -sf -m 1 -o /dev/null http://127.0.0.1:19000/health
  fi
  echo "--- start $(date -u +%T.%N)" >>"$log"
  local mark
  mark=$(wc -l <"$log")
  spawn "$log" ip netns exec "$(ns "$n")" "$cli" --ip 0.0.0.0:8080 --admin-ip 127.0.0.1:8687 \
    --etcd http://198.18.0.1:2379 --cluster-name bench --node-name "$n" --lease-ttl 1s \
    --vip "$vip/24" --vip-interface eth0 --threads 1 --server http://127.0.0.1:19000
  main_pid[$n]=$spawned
  wait_for 20 bash -c "tail -n +$((mark + 1)) '$log' | grep -q 'management API listening'" ||
    { echo "failover.sh: weldr-cli $n did not start; see $log" >&2; exit 1; }
}

start_keepalived() {  # node
  local n=$1 log="$results/keepalived-$1.log" state=BACKUP priority=100
  [ "$n" = a ] && { state=MASTER; priority=150; }
  cat >"$results/keepalived-$n.conf" <<EOF
global_defs {
  router_id node-$n
}
vrrp_instance bench {
  state $state
  interface eth0
  virtual_router_id 50
  priority $priority
  advert_int 1
  virtual_ipaddress {
    $vip/24
  }
}
EOF
  if ! ip netns exec "$(ns "$n")" curl -sf -m 1 -o /dev/null http://127.0.0.1:8080/health; then
    spawn "$results/web-$n.log" ip netns exec "$(ns "$n")" "$test_server" --host 0.0.0.0 --port 8080
    wait_for 10 ip netns exec "$(ns "$n")" curl -sf -m 1 -o /dev/null http://127.0.0.1:8080/health
  fi
  echo "--- start $(date -u +%T.%N)" >>"$log"
  spawn "$log" ip netns exec "$(ns "$n")" keepalived --dont-fork --log-console --no-syslog --log-detail --vrrp \
    -f "$results/keepalived-$n.conf" -p "$results/keepalived-$n.pid" -r "$results/keepalived-$n-vrrp.pid" \
    -c "$results/keepalived-$n-checkers.pid"
  main_pid[$n]=$spawned
}

start_node() {  # system node
  if [ "$1" = weldr ]; then start_weldr "$2"; else start_keepalived "$2"; fi
}

stop_all_in() {  # node: SIGKILL everything in its namespace, and wait for it
  local pids
  pids=$(ip netns pids "$(ns "$1")" || true)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  wait_for 5 bash -c "[ -z \"\$(ip netns pids $(ns "$1"))\" ]" || true
}

# ---- one trial -------------------------------------------------------------------------------
rows=()
trial() {  # system event number
  local system=$1 event=$2 number=$3 active passive settle=3
  active=$(wait_stable "$settle")
  passive=$(other "$active")
  local stop_file="$results/stop" out="$results/client-$system-$event-$number.json"
  rm -f "$stop_file"
  ip netns exec "$(ns c)" "$python" "$results/client.py" "$vip" 8080 0.02 0.2 "$stop_file" 30 >"$out" &
  local client=$!
  sleep 1.5
  local t0
  t0=$(now_ms)
  if [ "$event" = kill ]; then
    local pids
    pids=$(ip netns pids "$(ns "$active")")
    # shellcheck disable=SC2086
    kill -9 $pids
  else
    kill -TERM "${main_pid[$active]}"
  fi
  local takeover=-1
  wait_for 20 has_vip "$passive" && takeover=$(($(now_ms) - t0))
  if [ "$event" = term ]; then
    # The old node is done once its process has exited (weldr: after the handover and drain).
    wait_for 20 bash -c "! kill -0 ${main_pid[$active]} 2>/dev/null" || true
  fi
  touch "$stop_file"
  wait "$client" || true
  local result
  result=$(cat "$out")
  rows+=("$system $event $number $active $takeover $result")
  printf '%-10s %-7s trial %s: %s was active; %s held the address after %s ms; client: %s\n' \
    "$system" "$event" "$number" "$active" "$passive" "$takeover" "$result"
  # Back to two nodes: what is left of the old one goes (as in a reboot: its address too), and
  # it starts again.
  stop_all_in "$active"
  ip -n "$(ns "$active")" addr del "$vip/24" dev eth0 2>/dev/null || true
  start_node "$system" "$active"
  if [ "$system" = keepalived ] && [ "$active" = a ]; then
    # a has the higher priority and takes the address back (preemption, keepalived's default).
    wait_for 20 has_vip a || true
  fi
}

run_system() {  # system
  local system=$1 i event
  start_node "$system" a
  sleep 0.5
  start_node "$system" b
  for event in kill term; do
    for i in $(seq "$trials"); do
      trial "$system" "$event" "$i"
    done
  done
  stop_all_in a
  stop_all_in b
  ip -n "$(ns a)" addr del "$vip/24" dev eth0 2>/dev/null || true
  ip -n "$(ns b)" addr del "$vip/24" dev eth0 2>/dev/null || true
}

if [[ " $systems " == *" keepalived "* ]]; then echo "keepalived: $(keepalived --version 2>&1 | head -1)"; fi
echo "etcd: $(etcd --version | head -1)"
echo "results: $results"
echo "machine: $(nproc) cores, $(uname -sr)"
echo
start_etcd
for system in $systems; do
  run_system "$system"
done

# ---- the table -------------------------------------------------------------------------------
{
  echo
  echo "client: a new connection every 20 ms, 200 ms per request; gap = first failure to first success after the last"
  echo
  printf '%s\n' "${rows[@]}" | "$python" -c '
import json, statistics, sys
rows = []
for line in sys.stdin:
    system, event, number, active, takeover, result = line.split(" ", 5)
    rows.append((system, event, int(number), active, int(takeover), json.loads(result)))
names = {"kill": "kill -9", "term": "SIGTERM"}
print("| system | event | trial | active | takeover ms | requests | failed | gap ms | failures |")
print("|---|---|---|---|---|---|---|---|---|")
for system, event, number, active, takeover, r in rows:
    kinds = ", ".join("%d %s" % (n, k) for k, n in sorted(r["kinds"].items()))
    print("| %s | %s | %d | %s | %d | %d | %d | %d | %s |" % (system, names[event], number, active, takeover,
          r["requests"], r["failed"], r["gap_ms"], kinds))
print()
print("| system | event | trials | failed (min / median / max) | gap ms (min / median / max) |")
print("|---|---|---|---|---|")
for system in ("weldr", "keepalived"):
    for event in ("kill", "term"):
        sel = [r for s, e, _, _, _, r in rows if s == system and e == event]
        if not sel:
            continue
        f = [r["failed"] for r in sel]
        g = [r["gap_ms"] for r in sel]
        print("| %s | %s | %d | %d / %g / %d | %d / %g / %d |" % (system, names[event], len(sel), min(f),
              statistics.median(f), max(f), min(g), statistics.median(g), max(g)))
'
} | tee "$results/table.md"
