#!/usr/bin/env bash
# Installs what is missing, builds weldr with AddressSanitizer and UndefinedBehaviorSanitizer,
# and runs every test. Exit code 0 only if every test passed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=build/asan
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DWELDR_SANITIZE=address,undefined
cmake --build "$build" -j "$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 300
