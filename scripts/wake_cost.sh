#!/usr/bin/env bash
# The CPU cost of waking one idle service for one frame (docs/PERFORMANCE.md, "Waking an idle
# service"): examples/http on a tap in a throw-away namespace, frames sent from the host side
# one at a time with the guest idle in between, CPU per thread from /proc. Needs root and
# /dev/kvm; about 20 s. COUNT= frames of each kind (300), GAP_MS= between them (10).
# TENDER= the monitor to measure (target/release/tender).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TENDER:-target/release/tender}
[ -x "$T" ] && [ -x target/release/http ] || cargo build --release -q -p tender -p http
ns=tnd-wake-$$
pid=
cleanup() {
    set +e
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns"
ip netns exec "$ns" sh -c 'ip link set lo up; ip tuntap add tap0 mode tap; ip addr add 10.0.0.1/24 dev tap0;
    ip link set tap0 up; sysctl -qw net.ipv6.conf.all.disable_ipv6=1'
mac=02:00:00:00:00:02
ip netns exec "$ns" "$T" --mem=16 --net:service=tap0 --net-mac:service=$mac target/release/http \
    --ipv4=10.0.0.2/24 ${GUEST_ARGS:-} >/dev/null &
pid=$!
for _ in $(seq 100); do ip netns exec "$ns" ping -c1 -W1 10.0.0.2 >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
ip netns exec "$ns" python3 scripts/netprobe.py wake tap0 $mac 10.0.0.2 "$pid" "${COUNT:-300}" "${GAP_MS:-10}"
