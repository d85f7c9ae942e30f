#!/usr/bin/env bash
# Runs every test of the project: installs the host tools the tests use (if missing), then
# builds the monitor and all guests and runs the whole suite against real KVM, real taps in
# throw-away network namespaces, and real files.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v curl >/dev/null || need+=(curl)
command -v gdb >/dev/null || need+=(gdb)
command -v dig >/dev/null || need+=(dnsutils)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: missing tools (${need[*]}) and not root to install them" >&2
        exit 1
    fi
    echo "test.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

exec cargo test --release --workspace --no-fail-fast "$@"
