#!/usr/bin/env bash
# Runs every test of the project: installs the host tools the tests use (if missing), then
# builds the monitor and all guests and runs the whole suite against real KVM, real taps in
# throw-away network namespaces, and real files; then the end-to-end suites once more against
# the statically linked tender, and the suites that run guests again with --mode=process. With
# arguments, only `cargo test` with those arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v curl >/dev/null || need+=(curl)
command -v gdb >/dev/null || need+=(gdb)
command -v dig >/dev/null || need+=(dnsutils)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
# tests/oci.rs: real engines around tender-oci. Named explicitly: without recommends podman
# brings crun, not runc, and iptables (its NAT rules for -p) is only a suggestion.
for pkg in podman runc containerd iptables; do
    command -v "$pkg" >/dev/null || need+=("$pkg")
done
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: missing tools (${need[*]}) and not root to install them" >&2
        exit 1
    fi
    echo "test.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

status=0
cargo test --release --workspace --no-fail-fast "$@" || status=$?
if [ $# -eq 0 ]; then
    # The static build (`cargo build-static`, for deployment) through every suite that runs the
    # tender binary end to end (TENDER_BIN: the harness then runs no other tender).
    cargo build-static -q
    TENDER_BIN="$PWD/target/x86_64-unknown-linux-gnu/release/tender" cargo test --release -p tender-tests \
        --no-fail-fast --test boot --test exit_codes --test block --test network --test services \
        --test sandbox --test hostile --test host_faults --test jail --test report || status=$?
    # The suites that run guests, once more with --mode=process (docs/PROCESS_MODE.md): the same
    # guests as a seccomp-jailed process, without KVM. The tests of what only KVM has skip
    # themselves there (`kvm_only`, listed in docs/PROCESS_MODE.md).
    TENDER_MODE=process cargo test --release -p tender-tests --no-fail-fast --test boot --test exit_codes --test block \
        --test network --test services --test report --test sandbox --test hostile \
        || status=$?
    # The density benchmark at a small N: every service answers and ends cleanly on SIGTERM.
    N=20 PER_BRIDGE=10 scripts/density.sh >/dev/null || { echo "test.sh: scripts/density.sh N=20 failed" >&2; status=1; }
fi
exit "$status"
