#!/usr/bin/env bash
# Installs what is missing, builds weldr with AddressSanitizer and UndefinedBehaviorSanitizer,
# and runs every test; also checks that the Release build with the tests compiles. Warnings are
# errors here (WELDR_WERROR), not in a user's own build. Exit code 0 only if every test passed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=build/asan
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DWELDR_SANITIZE=address,undefined -DWELDR_WERROR=ON
cmake --build "$build" -j "$(nproc)"
# A user's conventional build (Release, GCC's -O2 warnings) with the tests must compile too,
# warnings as errors: built, not run (the tests run under the sanitizers below).
cmake -S . -B build/release-check -G Ninja -DCMAKE_BUILD_TYPE=Release -DWELDR_WERROR=ON
cmake --build build/release-check -j "$(nproc)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 300
