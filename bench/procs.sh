# Process handling shared by the bench scripts (sourced, not run): every process a script starts
# gets a process group of its own, so that stopping it also stops what it started.

pids=()

# start_in_group FILE COMMAND...: runs COMMAND in a new process group, stdout and stderr to FILE;
# its pid is added to pids and left in last_pid.
start_in_group() {
  local file=$1
  shift
  setsid "$@" >"$file" 2>&1 </dev/null &
  pids+=($!)
  last_pid=$!
}

# stop_started TENTHS: SIGTERM to every process group in pids, up to TENTHS tenths of a second
# for them to end, then SIGKILL to what is left.
stop_started() {
  local p
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq "$1"); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
