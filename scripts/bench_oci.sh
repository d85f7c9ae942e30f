#!/usr/bin/env bash
# docs/PERFORMANCE.md "Containers": `podman run --rm` of hello through tender-oci against the
# same podman running a static busybox `true` through runc, interleaved in one run, as a ratio
# of medians. Needs root, /dev/kvm, podman, runc and busybox-static (scripts/test.sh installs
# them). podman runs in a network namespace of its own, with its own storage, both removed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-15}
cargo build --release -q -p tender -p tender-oci -p hello
dir=$(mktemp -d /tmp/tender-bench-oci.XXXXXX)
ns=tnd-bench-oci-$$
ip netns add "$ns"
P=(nsenter --net=/run/netns/"$ns" podman --root="$dir/root" --runroot="$dir/run" --storage-driver=vfs
    --cgroup-manager=cgroupfs)
cleanup() {
    "${P[@]}" rm -af -t 0 >/dev/null 2>&1 || true
    "${P[@]}" rmi -af >/dev/null 2>&1 || true
    ip netns del "$ns" || true
    rm -rf "$dir"
}
trap cleanup EXIT
mkdir "$dir/hello" "$dir/busybox"
cp target/release/hello "$dir/hello/hello"
printf 'FROM scratch\nCOPY hello /hello\nENTRYPOINT ["/hello"]\n' >"$dir/hello/Containerfile"
cp /bin/busybox "$dir/busybox/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n' >"$dir/busybox/Containerfile"
"${P[@]}" build -q -t bench-hello "$dir/hello" >/dev/null
"${P[@]}" build -q -t bench-busybox "$dir/busybox" >/dev/null
R=(--rm --pull=never --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
oci=$PWD/target/release/tender-oci
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
: >"$dir/t.oci"; : >"$dir/t.runc"
for _ in $(seq "$runs"); do
    ms "${P[@]}" run --runtime="$oci" "${R[@]}" bench-hello >>"$dir/t.oci"
    ms "${P[@]}" run --runtime=runc "${R[@]}" bench-busybox true >>"$dir/t.runc"
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
o=$(median "$dir/t.oci"); r=$(median "$dir/t.runc")
echo "podman run --rm, median of $runs: hello via tender-oci ${o} ms, busybox true via runc ${r} ms, ratio $(awk -v o="$o" -v r="$r" 'BEGIN {printf "%.2f", o / r}')"
