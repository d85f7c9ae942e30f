#!/usr/bin/env bash
# How many services one host carries (docs/PERFORMANCE.md, "Density"): N copies of
# examples/http (N=1000), each on its own tap, PER_BRIDGE taps (250, at most 1000) to a bridge,
# each bridge its own /22 in 10.10.0.0/16, all inside a namespace this script creates and
# removes. Reports: the services that answered, the launch rate beside the bound this machine
# allows, memory per service from /proc/PID/smaps (guest memory and tender's own), the idle
# cost, an ARP storm (the host's neighbour cache flushed, then one ping to every service at
# once: the services' CPU time until they are idle again), and that every service ended cleanly
# on SIGTERM. Needs root and /dev/kvm. MEM= guest MiB (16); TENDER= the monitor
# (target/release/tender). Exit status 0 only if every service answered and ended cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
PER_BRIDGE=${PER_BRIDGE:-250}
MEM=${MEM:-16}
T=$(realpath "${TENDER:-target/release/tender}")
G=$(realpath target/release/http)
[ -x "$T" ] && [ -x "$G" ] || { echo "density.sh: build first (cargo build --release)" >&2; exit 1; }
[ "$N" -ge 1 ] && [ "$PER_BRIDGE" -ge 1 ] && [ "$PER_BRIDGE" -le 1000 ] &&
    [ $(((N + PER_BRIDGE - 1) / PER_BRIDGE)) -le 64 ] ||
    { echo "density.sh: PER_BRIDGE must be 1..1000 and N at most 64 bridges of it" >&2; exit 1; }

ns=tnd-density-$$
dir=$(mktemp -d /tmp/tender-density.XXXXXX)
gc_saved=$(sysctl -n net.ipv4.neigh.default.gc_thresh1 net.ipv4.neigh.default.gc_thresh2 \
    net.ipv4.neigh.default.gc_thresh3 | tr '\n' ' ')
cleanup() {
    set +e
    [ -s "$dir/pids" ] && xargs -r kill -TERM <"$dir/pids" 2>/dev/null
    for _ in $(seq 50); do
        [ -s "$dir/pids" ] && xargs -r -n1 sh -c 'kill -0 "$0" 2>/dev/null && echo x' <"$dir/pids" | grep -q x ||
            break
        sleep 0.2
    done
    [ -s "$dir/pids" ] && xargs -r kill -KILL <"$dir/pids" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    set -- $gc_saved
    sysctl -qw net.ipv4.neigh.default.gc_thresh1="$1" net.ipv4.neigh.default.gc_thresh2="$2" \
        net.ipv4.neigh.default.gc_thresh3="$3"
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bridges=$(((N + PER_BRIDGE - 1) / PER_BRIDGE))
# The host side holds one neighbour entry per service.
sysctl -qw net.ipv4.neigh.default.gc_thresh1=$((N + 1024)) net.ipv4.neigh.default.gc_thresh2=$((2 * N + 2048)) \
    net.ipv4.neigh.default.gc_thresh3=$((4 * N + 4096))
ip netns add "$ns"
{
    echo "link set lo up"
    for b in $(seq 0 $((bridges - 1))); do
        echo "link add br$b type bridge"
        echo "addr add 10.10.$((4 * b)).1/22 dev br$b"
        echo "link set br$b up"
    done
    for i in $(seq 0 $((N - 1))); do
        echo "tuntap add tap$i mode tap"
        echo "link set tap$i master br$((i / PER_BRIDGE))"
        echo "link set tap$i up"
    done
} >"$dir/ip.batch"
ip netns exec "$ns" sh -c "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 &&
    ip -batch $dir/ip.batch"
# Service i: host number h = i % PER_BRIDGE + 2 in bridge b's /22.
addr() { local b=$(($1 / PER_BRIDGE)) h=$(($1 % PER_BRIDGE + 2)); echo "10.10.$((4 * b + h / 256)).$((h % 256))"; }
for i in $(seq 0 $((N - 1))); do addr "$i"; done >"$dir/addrs"

echo "== $N services of examples/http, --mem=$MEM, $PER_BRIDGE to a bridge ($bridges bridges), $(nproc) CPUs"
avail() { awk '/MemAvailable/ {print $2}' /proc/meminfo; }
avail_before=$(avail)
# One shell inside the namespace starts them all (no `ip netns exec` per service); the probe
# starts at the same time and records each service's first answer.
ip netns exec "$ns" python3 scripts/netprobe.py probe "$dir/addrs" 80 $((60 + N / 4)) >"$dir/probe" &
probe=$!
start=$(date +%s.%N)
ip netns exec "$ns" bash -c '
    i=0
    while read -r a; do
        IFS=. read -r o1 o2 o3 o4 <<<"$a"
        printf -v mac "02:00:%02x:%02x:%02x:%02x" "$o1" "$o2" "$o3" "$o4"
        '"$T"' --mem='"$MEM"' --net:service=tap$i --net-mac:service=$mac --report='"$dir"'/report.$i \
            '"$G"' --ipv4=$a/22 >/dev/null 2>'"$dir"'/err.$i </dev/null &
        echo $!
        i=$((i + 1))
    done <'"$dir"'/addrs' >"$dir/pids"
launched=$(date +%s.%N)
wait $probe || true
cat "$dir/probe"
answered=$(awk '/^answered/ {print $2}' "$dir/probe")
last=$(awk -v s="$start" '/^last first answer at/ {print $5 - s}' "$dir/probe")
echo "largest N with every service answering: $([ "$answered" = "$N" ] && echo "$N (all)" || echo "not reached: $answered of $N answered")"
awk -v n="$answered" -v s="$start" -v l="$launched" -v last="$last" 'BEGIN {
    printf "launch: %d started in %.2f s; %.1f services/s from the first start to the last first answer (%.2f s)\n",
        n, l - s, n / last, last }'

python3 scripts/netprobe.py procstats "$dir/pids" $(((MEM + 2) * 1024)) >"$dir/stats"
# CPU time each service has used so far: its start, the probe's one request, and a few seconds
# idle (negligible); the machine's bound is CPUs / that.
awk -v cpus="$(nproc)" -v n="$answered" -v last="$last" '/^cpu_ms_median/ {
    med = $2 / 1000
    printf "CPU time per service so far (start, one request): median %.1f ms; bound %d CPUs / that = %.0f services/s; measured rate is %.0f%% of it\n",
        med * 1000, cpus, cpus / med, 100 * (n / last) / (cpus / med) }' "$dir/stats"
echo "== memory per service (/proc/PID/smaps: the guest's memory, --mem + 2 MiB for the ring, and tender's own)"
grep -v '^cpu_ms' "$dir/stats"
echo "MemAvailable: $((avail_before / 1024)) MiB before, $(($(avail) / 1024)) MiB with every service up ($(((avail_before - $(avail)) / N)) KiB per service)"

echo "== idle: 10 s with nothing sent"
# shellcheck disable=SC2046 # one glob per service
cpu_all() { cat $(sed 's|.*|/proc/&/task/*/schedstat|' "$dir/pids") 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
machine() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
t0=$(cpu_all); m0=$(machine); s0=$(date +%s.%N)
sleep 10
t1=$(cpu_all); m1=$(machine); s1=$(date +%s.%N)
read -r b0 a0 <<<"$m0"; read -r b1 a1 <<<"$m1"
idle_per_s=$(awk -v t="$((t1 - t0))" -v s0="$s0" -v s1="$s1" 'BEGIN {printf "%.0f", t / (s1 - s0)}')
awk -v t="$((t1 - t0))" -v s0="$s0" -v s1="$s1" -v busy="$((b1 - b0))" -v all="$((a1 - a0))" 'BEGIN {
    printf "all services together: %.2f%% of one CPU (their threads, from schedstat); the whole machine was %.1f%% busy (other work included)\n",
        t / (s1 - s0) / 1e7, 100 * busy / all }'

echo "== ARP storm: the host's neighbour cache flushed, then one ping to each of the $N services at once"
ip netns exec "$ns" ip neigh flush all
t0=$(cpu_all); s0=$(date +%s.%N)
ip netns exec "$ns" sh -c "xargs -P $N -I{} ping -c1 -W10 {} <$dir/addrs >$dir/storm 2>&1" || true
# Until the services are idle again: a second in which they used no more than their idle rate
# and 1% of a CPU on top.
prev=$(cpu_all)
for _ in $(seq 120); do
    sleep 1
    now=$(cpu_all)
    [ $((now - prev)) -lt $((idle_per_s + 10000000)) ] && break
    prev=$now
done
s1=$(date +%s.%N)
replies=$(grep -c "1 received" "$dir/storm" || true)
awk -v t="$((now - t0))" -v s0="$s0" -v s1="$s1" -v n="$N" -v r="$replies" -v idle="$idle_per_s" 'BEGIN {
    t -= idle * (s1 - s0)
    printf "%d of %d pings answered; the services used %.2f CPU-seconds above their idle cost until idle again (%.1f s); %.0f us per service pinged\n",
        r, n, t / 1e9, s1 - s0, t / 1e3 / n }'

echo "== SIGTERM to every service"
xargs -r kill -TERM <"$dir/pids"
for _ in $(seq 150); do
    alive=$( (xargs -r -n1 sh -c 'kill -0 "$0" 2>/dev/null && echo x' <"$dir/pids" || true) | wc -l)
    [ "$alive" -eq 0 ] && break
    sleep 0.2
done
clean=$( (grep -l '"signal"' "$dir"/report.* 2>/dev/null || true) | wc -l)
echo "ended: $clean of $N reports say the run ended on the signal; $alive still running"
[ "$answered" = "$N" ] && [ "$clean" = "$N" ] && [ "$alive" = 0 ]
