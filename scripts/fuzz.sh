#!/usr/bin/env bash
# Builds weldr's libFuzzer targets with clang into build/fuzz, runs every saved regression input
# (fuzz/regressions/<target>/*) once, then fuzzes each target for FUZZ_SECONDS (default 60)
# seconds on a copy of its seed corpus (fuzz/corpus/<target>, copied to build/fuzz/corpus; the
# repository is not written to). Exit code 0 only if no input crashed or broke an invariant.
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh fuzz_request
#
# Environment: FUZZ_SECONDS, FUZZ_JOBS (build parallelism, default 2), FUZZ_MAX_LEN (default
# 8192), FUZZ_ARGS (more libFuzzer flags). See fuzz/README.md.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-2}
max_len=${FUZZ_MAX_LEN:-8192}
build=build/fuzz
all_targets=(fuzz_request fuzz_response fuzz_chunked fuzz_json)
targets=("$@")
[ $# -gt 0 ] || targets=("${all_targets[@]}")

for t in "${targets[@]}"; do
  if [ ! -f "fuzz/$t.cpp" ]; then
    echo "fuzz.sh: no target $t (targets: ${all_targets[*]})" >&2
    exit 2
  fi
done

# The library is instrumented for coverage (fuzzer-no-link) and checked by ASan and UBSan;
# "-O1 -g" without NDEBUG keeps the asserts of the headers it uses (RapidJSON, Asio).
cmake -S . -B "$build" -G Ninja \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DWELDR_FUZZ=ON -DWELDR_SANITIZE=fuzzer-no-link,address,undefined \
  -DWELDR_BUILD_TESTS=OFF -DWELDR_BUILD_EXAMPLES=OFF -DWELDR_BUILD_CLI=OFF -DWELDR_INSTALL=OFF >/dev/null || exit 1
cmake --build "$build" -j "$jobs" --target "${targets[@]}" || exit 1

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
summary=()

# 1. Regression inputs: each one runs once, and must pass (no known issue tolerated).
unset WELDR_FUZZ_KNOWN
for t in "${targets[@]}"; do
  dir=fuzz/regressions/$t
  [ -d "$dir" ] || continue
  while IFS= read -r -d '' input; do
    log=$build/logs/regression-$t-$(basename "$input").log
    mkdir -p "$build/logs"
    if "$build/fuzz/$t" "$input" >"$log" 2>&1; then
      echo "fuzz.sh: regression $input: ok"
    else
      echo "fuzz.sh: REGRESSION FAILS: $input (log: $log)" >&2
      grep -E "invariant violated|ERROR: AddressSanitizer|runtime error|ERROR: libFuzzer" -A3 "$log" | head -20 >&2
      failed+=("$t: regression $input (reproduce: $build/fuzz/$t $input)")
    fi
  done < <(find "$dir" -type f ! -name '*.md' -print0 | sort -z)
done

# 2. Fuzzing, on a copy of the seeds that keeps what earlier runs found. Known, unfixed bugs
# (fuzz/known-issues.txt; their regression inputs failed above) are tolerated here, so that
# they do not hide new ones.
WELDR_FUZZ_KNOWN=$(grep -Ev '^[[:space:]]*(#|$)' fuzz/known-issues.txt 2>/dev/null | awk '{print $1}' | paste -sd, -)
export WELDR_FUZZ_KNOWN
[ -z "$WELDR_FUZZ_KNOWN" ] || echo "fuzz.sh: tolerating known issues while fuzzing: $WELDR_FUZZ_KNOWN"
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t
  artifacts=$build/artifacts/$t
  log=$build/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$build/logs"
  cp -p fuzz/corpus/"$t"/* "$corpus"/
  dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  find "$artifacts" -type f | sort >"$build/logs/$t.artifacts-before"
  echo "fuzz.sh: fuzzing $t for ${seconds}s (log: $log)"
  # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
  "$build/fuzz/$t" "$corpus" "${dict[@]}" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
    -rss_limit_mb=2560 -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
  [ -n "$stats" ] || stats=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -1)
  execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  summary+=("$t: rc=$rc ${execs:-?} exec/s; ${stats:-no stats}")
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: $t FAILED (exit $rc); last lines of $log:" >&2
    grep -E "invariant violated|ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error|ERROR: libFuzzer" -A3 "$log" |
      head -20 >&2
    new=$(find "$artifacts" -type f | sort | comm -13 "$build/logs/$t.artifacts-before" -)
    for a in $new; do
      echo "fuzz.sh: crashing input: $a" >&2
      echo "         reproduce: $build/fuzz/$t $a" >&2
      echo "         keep it as a regression input: cp $a fuzz/regressions/$t/" >&2
      failed+=("$t: $a (reproduce: $build/fuzz/$t $a)")
    done
    [ -n "$new" ] || failed+=("$t: exit $rc, see $log")
  fi
done

echo
echo "fuzz.sh: summary"
for s in "${summary[@]}"; do echo "  $s"; done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: FAILED:" >&2
  for f in "${failed[@]}"; do echo "  $f" >&2; done
  exit 1
fi
echo "fuzz.sh: no crash"
