#!/usr/bin/env bash
# Installs, from Debian 12 packages, whatever weldr needs to build, test and run its demo and
# is not installed yet. Nothing is downloaded from anywhere else.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config   # toolchain
  libasio-dev node-llhttp rapidjson-dev libfmt-dev libcli11-dev  # libraries
  catch2                                          # tests
  curl                                            # the demo's and the tests' client
  etcd-server etcd-client                         # cluster mode: the tests start real etcd members
  iproute2                                        # cluster tests: network namespaces for the virtual IP
  help2man file                                   # the Debian package: man page; CPack's shlibdeps needs file
  python3                                         # tests: docs/configuration.md is generated and compared
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo=(sudo); else
    echo "install-deps: missing packages (${missing[*]}) and not root; run as root" >&2
    exit 1
  fi
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian's etcd-server enables and starts a system-wide etcd on ports 2379/2380. weldr's tests
# start their own members on free ports and need only the binary: when this script installed
# it, it does not leave a service running that nobody asked for.
if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  "${sudo[@]}" systemctl disable --now etcd >/dev/null 2>&1 || true
fi
