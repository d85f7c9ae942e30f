#!/usr/bin/env bash
# Latency of one request at a time (docs/PERFORMANCE.md, "Latency of one request at a time"):
# UDP echo through tender (examples/netperf udp-echo, each guest on its own tap in a throw-away
# namespace) with spinning as shipped, with spinning switched off on both sides, with the
# tender's spin alone (the guest's --poll-spin=0) and by hypercalls (--no-ring); and, as the floor
# of the path, the kernel's own ICMP echo from the same client over a veth pair into a second
# namespace. All at once, one client taking turns (scripts/netprobe.py latency), so that every
# figure sees the same host. Needs root and /dev/kvm; about a minute.
# ROUNDS= (5) and COUNT= (2000) round trips per target per round; TENDER= the monitor.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TENDER:-target/release/tender}
[ -x "$T" ] && [ -x target/release/netperf ] || cargo build --release -q -p tender -p netperf
ns=tnd-lat-$$
peer=tnd-latp-$$
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
    ip netns del "$peer" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns"
ip netns add "$peer"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip link add tnd-lat0 netns "$ns" type veth peer name tnd-lat1 netns "$peer"
ip netns exec "$ns" sh -c 'ip addr add 10.0.100.1/24 dev tnd-lat0; ip link set tnd-lat0 up'
ip netns exec "$peer" sh -c 'ip link set lo up; ip addr add 10.0.100.2/24 dev tnd-lat1; ip link set tnd-lat1 up'

# name|tender's options|the guest's options
configs=(
    "spin as shipped||"
    "no spin (--ring-spin=0, --poll-spin=0)|--ring-spin=0|--poll-spin=0"
    "tender's spin only (--poll-spin=0)||--poll-spin=0"
    "hypercalls (--no-ring)||--no-ring"
)
targets=()
for i in "${!configs[@]}"; do
    IFS='|' read -r name topts gopts <<<"${configs[$i]}"
    ip netns exec "$ns" sh -c "ip tuntap add tap$i mode tap; ip addr add 10.0.$i.1/24 dev tap$i; ip link set tap$i up"
    # shellcheck disable=SC2086 # the options are words
    ip netns exec "$ns" "$T" --mem=16 $topts --net:service=tap$i target/release/netperf \
        --ipv4=10.0.$i.2/24 $gopts udp-echo 5003 >/dev/null &
    pids+=($!)
    targets+=("$name=udp:10.0.$i.2:5003:$!")
done
for i in "${!configs[@]}"; do
    for _ in $(seq 100); do ip netns exec "$ns" ping -c1 -W1 10.0.$i.2 >/dev/null 2>&1 && break; sleep 0.1; done
done
echo "== machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
ip netns exec "$ns" python3 scripts/netprobe.py latency "${ROUNDS:-5}" "${COUNT:-2000}" "${targets[@]}" \
    "the kernel's ICMP echo over a veth pair (the floor)=icmp:10.0.100.2"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
