#!/usr/bin/env bash
# SPEC C1 on the unpatched base: the selftest cases that only use global
# namespaces (init_net and fresh `unshare --net` ones) must give the same
# results on the base kernel as on ours, where the full suite runs them too.
# scripts/run-check boots the `baseline` profile and runs this there.
#
# usage: c1-baseline.sh [KSELFTEST_INSTALL_DIR]   (prints TAP; the default
# is build/kselftest, where run-check installs the kselftests)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KST=${1:-$ROOT/build/kselftest}/vsock
T=$(mktemp -d /tmp/c1.XXXXXX)
trap 'rm -rf "$T"' EXIT

# Binaries from the read-only root run fine; copy them anyway so that a
# test writing next to itself cannot fail on the 9p root.
cp -a "$KST/." "$T/"

kinds=(init global)
cases=()
for c in "${kinds[@]}"; do
    for l in "${kinds[@]}"; do
        for t in stream seqpacket; do
            cases+=("vsock_ns_loopback ${c}_to_${l}_${t}")
        done
    done
done
for v in K1_same_init K1_same_global K1_other_global K1_init_global K1_global_init; do
    for t in stream seqpacket; do
        cases+=("vsock_ns_bind ${v}_${t}")
    done
done

echo "TAP version 13"
echo "1..$((${#cases[@]} + 1))"
n=0
for c in "${cases[@]}"; do
    read -r prog variant <<<"$c"
    n=$((n + 1))
    if (cd "$T" && timeout 120 "./$prog" -v "$variant") >"$T/out" 2>&1; then
        echo "ok $n - C1 $prog $variant"
    else
        sed 's/^/# /' "$T/out"
        echo "not ok $n - C1 $prog $variant"
    fi
done
n=$((n + 1))
if [ -e /proc/sys/net/vsock/ns_mode ]; then
    echo "not ok $n - C1 runs on the unpatched base (found net.vsock.ns_mode)"
else
    echo "ok $n - C1 runs on the unpatched base (no net.vsock sysctls)"
fi
