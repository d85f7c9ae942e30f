#!/usr/bin/env bash
# Reproduces the figures of docs/PERFORMANCE.md on this machine. Needs root and /dev/kvm;
# installs hyperfine and GNU time from Debian's packages if missing. Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --workspace -q
T=target/release/tender
img=$(mktemp /tmp/tender-bench.XXXXXX)
trap 'rm -f "$img"' EXIT
dd if=/dev/zero of="$img" bs=1M count=64 status=none

echo "== machine"
uname -r; nproc; grep -m1 "model name" /proc/cpuinfo || true
(dmesg 2>/dev/null | grep -i -m1 "kvm-pvm") || true

echo "== exit floor (bare KVM loop, no tender code)"
cargo bench -q -p tender --bench exit_floor 2>/dev/null | grep "exit floor"

echo "== hypercalls, timed inside the guest (2000 each)"
$T --block:storage="$img" target/release/bench calls 2000

echo "== sequential block I/O, guest (64 MiB image, page cache warm)"
for batch in 512 65536 1048576; do
    $T --block:storage="$img" target/release/bench seq $batch
done
echo "== the same on the host (dd, same file and request sizes)"
for bs in 512 64K 1M; do
    count=$((64 * 1024 * 1024 / $(numfmt --from=iec $bs)))
    echo "host read  bs=$bs: $(dd if="$img" of=/dev/null bs=$bs 2>&1 | tail -1)"
    echo "host write bs=$bs: $(dd if=/dev/zero of="$img" bs=$bs count=$count conv=notrunc 2>&1 | tail -1)"
done

echo "== start-up: tender's start to the first guest instruction (median of 50, from --report)"
for i in $(seq 50); do
    $T --report=/dev/stderr target/release/hello 2>&1 >/dev/null | grep -o '"time_to_first_instruction_us":[0-9]*' | cut -d: -f2
done | sort -n | sed -n '25p' | sed 's/$/ us/'

echo "== hello end to end (process start to exit)"
hyperfine -N --warmup 10 -r 200 "$T target/release/hello" "$T --version" /bin/true 2>&1 | grep -E "Benchmark|Time \(mean"

echo "== peak RSS, hello, 512 MiB guest"
/usr/bin/time -v $T target/release/hello 2>&1 | grep "Maximum resident"
