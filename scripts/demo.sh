#!/usr/bin/env bash
# Installs what is missing, builds weldr (Release), starts weldr-test-server on 127.0.0.1:12345
# and weldr-cli on 127.0.0.1:8080 in front of it, and prints what to try. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DWELDR_BUILD_TESTS=OFF
cmake --build "$build" -j "$(nproc)"

"$build/weldr-test-server" --port 12345 &
origin=$!
trap 'kill $origin 2>/dev/null || true' EXIT
cat <<'TXT'

weldr is starting on http://127.0.0.1:8080 in front of weldr-test-server (127.0.0.1:12345).
Try, from another terminal:
  curl -i http://127.0.0.1:8080/
  curl -s http://127.0.0.1:8080/large | wc -c
  curl -s -X POST --data-binary 'hello weldr' http://127.0.0.1:8080/echo
  curl -s http://127.0.0.1:8080/headers
The management API listens on http://127.0.0.1:8687:
  curl -s http://127.0.0.1:8687/servers
  curl -s http://127.0.0.1:8687/stats
  curl -s -X POST http://127.0.0.1:8687/servers -H 'Content-Type: application/json' -d '{"url": "http://127.0.0.1:12346"}'
Ctrl-C stops it.

TXT
"$build/weldr-cli" --ip 127.0.0.1:8080 --server http://127.0.0.1:12345 "$@"
