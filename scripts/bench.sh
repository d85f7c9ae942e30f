#!/usr/bin/env bash
# Reproduces the figures of docs/PERFORMANCE.md on this machine. Needs root and /dev/kvm;
# installs hyperfine and GNU time from Debian's packages if missing. Takes about two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v wrk >/dev/null || need+=(wrk)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --workspace -q
cargo build-static -q
T=target/release/tender
S=target/x86_64-unknown-linux-gnu/release/tender
img=$(mktemp /tmp/tender-bench.XXXXXX)
trap 'rm -f "$img"' EXIT
dd if=/dev/zero of="$img" bs=1M count=64 status=none

echo "== machine"
uname -r; nproc; grep -m1 "model name" /proc/cpuinfo || true
(dmesg 2>/dev/null | grep -i -m1 "kvm-pvm") || true

echo "== exit floor (bare KVM loop, no tender code)"
cargo bench -q -p tender --bench exit_floor 2>/dev/null | grep "exit floor"

echo "== hypercalls, timed inside the guest (2000 each; block requests by hypercall)"
$T --block:storage="$img" target/release/bench --no-ring calls 2000
echo "== block requests through tender's block ring instead (2000 each)"
$T --block:storage="$img" target/release/bench calls 2000 | grep -i "block_"

echo "== sequential block I/O, guest (64 MiB image, page cache warm; median of 5 passes, 3 for 512 B"
echo "   by hypercall): block ring, then hypercalls"
for ring in "" --no-ring; do
    for batch in 512 65536 1048576; do
        passes=5
        [ "$ring$batch" = "--no-ring512" ] && passes=3
        $T --block:storage="$img" target/release/bench $ring seq $batch $passes | grep -v "block ring"
    done
done
echo "== the same on the host (dd, same file and request sizes; median of 5)"
median_dd() {
    for i in 1 2 3 4 5; do dd "$@" 2>&1 | tail -1 | sed -E 's/.*copied, ([0-9.e-]+) s.*/\1/'; done |
        sort -g | sed -n 3p | awk '{printf "%.0f MB/s (64 MiB in %.0f us)\n", 67108864 / $1 / 1e6, $1 * 1e6}'
}
for bs in 512 64K 1M; do
    count=$((64 * 1024 * 1024 / $(numfmt --from=iec $bs)))
    echo "host read  bs=$bs: $(median_dd if="$img" of=/dev/null bs=$bs)"
    echo "host write bs=$bs: $(median_dd if=/dev/zero of="$img" bs=$bs count=$count conv=notrunc)"
done

echo "== start-up: tender's start to the first guest instruction (median of 50, from --report)"
for bin in $T $S; do
    for i in $(seq 50); do
        $bin --report=/dev/stderr target/release/hello 2>&1 >/dev/null | grep -o '"time_to_first_instruction_us":[0-9]*' | cut -d: -f2
    done | sort -n | sed -n '25p' | sed "s|$| us ($bin)|"
done

echo "== hello end to end (process start to exit); the static build; --version; /bin/true"
hyperfine -N --warmup 10 -r 200 "$T target/release/hello" "$S target/release/hello" "$T --version" "$S --version" \
    /bin/true 2>&1 | grep -E "Benchmark|Time \(mean"

echo "== peak RSS, hello, 512 MiB guest (dynamic, static)"
for bin in $T $S; do
    echo "$bin: $(/usr/bin/time -v $bin target/release/hello 2>&1 | grep "Maximum resident")"
done

echo "== network (guest at 10.0.0.2 on a tap in a throw-away namespace; host side at 10.0.0.1)"
ns=tnd-bench-$$
cleanup() { pkill -f "tender --net:service=tap0" 2>/dev/null || true; ip netns del $ns 2>/dev/null || true; rm -f "$img"; }
trap cleanup EXIT
ip netns add $ns
ip netns exec $ns ip link set lo up
ip netns exec $ns ip tuntap add tap0 mode tap
ip netns exec $ns ip addr add 10.0.0.1/24 dev tap0
ip netns exec $ns ip link set tap0 up
run_guest() { ip netns exec $ns $T --net:service=tap0 "$@" --ipv4=10.0.0.2/24 $RING ${GUEST_ARGS:-} & sleep 1; }
out=$(mktemp)

echo "start-up to the first guest instruction with a net device (the ring's thread included), median of 50: $(
    for i in $(seq 50); do
        ip netns exec $ns $T --report=/dev/stderr --net:service=tap0 target/release/hostile-net empty-read 2>&1 >/dev/null |
            grep -o '"time_to_first_instruction_us":[0-9]*' | cut -d: -f2
    done | sort -n | sed -n '25p') us"

# Each figure twice: frames through the shared net ring (the default when the tender offers it),
# then through the NET_READ/NET_WRITE hypercalls (--no-ring, a guest-rt option).
for RING in "" --no-ring; do
echo "-- ${RING:-with the net ring}"
ip netns exec $ns $T --net:service=tap0 target/release/netperf --ipv4=10.0.0.2/24 $RING frame-costs 20000
GUEST_ARGS="tcp-sink 5002" run_guest target/release/netperf >"$out"
ip netns exec $ns python3 -c '
import socket; s = socket.create_connection(("10.0.0.2", 5002)); b = bytes(1 << 20)
for _ in range(128): s.sendall(b)
s.shutdown(socket.SHUT_WR); s.recv(1)'
sleep 0.5; pkill -f "tcp-sink 5002"; sleep 0.2
echo "TCP host -> guest, 128 MiB: $(grep -o 'received.*' "$out")"

ip netns exec $ns python3 -c '
import socket, time; l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("10.0.0.1", 5001)); l.listen(1); c, _ = l.accept(); n = 0; t = time.time()
while True:
    d = c.recv(1 << 20)
    if not d: break
    n += len(d)
print("TCP guest -> host, %d bytes: %.0f MB/s (host side)" % (n, n / (time.time() - t) / 1e6))' &
sleep 0.5
ip netns exec $ns $T --net:service=tap0 target/release/netperf --ipv4=10.0.0.2/24 $RING tcp-send 10.0.0.1 5001 134217728 | grep sent
wait

GUEST_ARGS="udp-echo 5003" run_guest target/release/netperf >/dev/null
ip netns exec $ns python3 -c '
import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
n = 20000; t = time.time()
for i in range(n):
    s.sendto(b"x" * 64, ("10.0.0.2", 5003)); s.recv(2048)
d = time.time() - t
print("UDP echo, 64-byte datagrams, one in flight: %.0f round trips/s (%.0f us each)" % (n / d, d / n * 1e6))'
pkill -f "udp-echo 5003"; sleep 0.2

# Bursts of 100 with short pauses: on this 2-CPU host an unpaced sender takes a CPU from tender's
# two threads (vCPU and ring) and measures the contention instead.
GUEST_ARGS="udp-sink 5004" run_guest target/release/netperf >"$out"
ip netns exec $ns python3 -c '
import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b = b"x" * 64
t = time.time()
for burst in range(400):
    for i in range(100): s.sendto(b, ("10.0.0.2", 5004))
    time.sleep(0.0005)
d = time.time() - t
time.sleep(0.5); s.sendto(b"end", ("10.0.0.2", 5004)); time.sleep(0.3)
print("UDP to the guest, 40000 64-byte datagrams offered at %.0f per second" % (40000 / d))'
pkill -f "udp-sink 5004"; sleep 0.2
echo "  guest received: $(grep -o '[0-9]* datagrams.*' "$out")"

run_guest target/release/http >/dev/null
# With the ring, also past what the guest once served at once (32 sockets): its connection limit
# is sized from its memory (thousands at the default 512 MiB), and a client beyond the limit
# would wait, not be reset. wrk counts a reset as a read or write error.
conns="1 16"
[ -z "$RING" ] && conns="1 16 32 64 256 1024"
for c in $conns; do
    r=$(ip netns exec $ns wrk -t1 -c$c -d10s http://10.0.0.2/)
    errors=$(grep -E 'Socket errors' <<<"$r" | sed -E 's/ *Socket errors: //' || true)
    echo "HTTP GET / with wrk, $c connection(s), 10 s: $(grep -E 'Requests/sec' <<<"$r" | tr -s ' '), errors: ${errors:-none}"
done
pkill -f "release/http"; sleep 0.2
done
