#!/usr/bin/env bash
# SPEC C1 on the unpatched base: the selftest cases that only use global
# namespaces (init_net and fresh `unshare --net` ones) must give the same
# results on the base kernel as on ours, where the full suite runs them too.
# scripts/run-check boots the `baseline` profile and runs this there.
#
# It also documents a difference the series makes on purpose (SPEC K6):
# K6_hole_on_base expects the hole that the series closes, that a vsockmon
# tap made by an unprivileged user (uid 65534, in its own `unshare -Urn`
# namespaces) sees the vsock traffic of init_net, payload included. It
# passes when the base shows the hole and fails when it does not (the
# patched kernel's tests/suites/vsockmon.sh asserts the opposite there).
#
# usage: c1-baseline.sh [KSELFTEST_INSTALL_DIR]   (prints TAP; the default
# is build/kselftest, where run-check installs the kselftests)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KST=${1:-$ROOT/build/kselftest}/vsock
T=$(mktemp -d /tmp/c1.XXXXXX)
BG=() # background processes of K6_hole_on_base
cleanup() {
    local p
    for p in "${BG[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${BG[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

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
echo "1..$((${#cases[@]} + 2))"
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

# K6_hole_on_base: uid 65534 makes a user+net namespace (unshare -Urn) and a
# vsockmon device there, and reads it by its counter (/proc/net/dev) and by a
# tiny python3 AF_PACKET reader (tcpdump cannot capture in an `unshare -r`
# namespace: it drops privileges with setgroups(2), denied there); root runs
# a listener in init_net that sends a secret to each of ten clients.
n=$((n + 1))
name=K6_hole_on_base
UDEV=vmon0
# shellcheck source=tests/lib/unpriv-tap.sh
. "$ROOT/tests/lib/unpriv-tap.sh"
READER='
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 3))
print("listening on", sys.argv[1], file=sys.stderr, flush=True)
while True:
    sys.stdout.buffer.write(s.recv(262144))
    sys.stdout.buffer.flush()
'
SA=K6-init-secret-$$-$RANDOM
why=
unpriv_tap_start || why=$UNPRIV_TAP_ERR
if [ -z "$why" ]; then
    unpriv_reader_start "$READER" "$T/k6user.bin" || true
    u0=$(rx_user)
    timeout 120 ncat -v --vsock -l -k 3201 -c "echo $SA" >/dev/null 2>"$T/k6srv.err" </dev/null &
    srv=$!
    BG+=("$srv")
    for _ in $(seq 100); do grep -q "Listening on" "$T/k6srv.err" 2>/dev/null && break; sleep 0.1; done
    got=0
    for _ in $(seq 10); do
        if timeout 10 ncat --vsock --recv-only 1 3201 </dev/null 2>/dev/null | grep -qxF "$SA"; then got=$((got + 1)); fi
    done
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
    sleep 2 # the loopback worker hands packets to the taps asynchronously
    u1=$(rx_user)
    frames=$((u1 - u0))
    [ "$u0" != -1 ] && [ "$u1" != -1 ] || frames=-1
    secret=n/a
    if [ -n "$UREAD" ]; then
        kill -TERM "$UREAD" 2>/dev/null || true
        wait "$UREAD" 2>/dev/null || true
        secret=$({ grep -aoF "$SA" "$T/k6user.bin" 2>/dev/null || true; } | wc -l)
    fi
    if [ "$got" = 0 ]; then
        why="no traffic: no client in init_net got the secret"
    elif [ "$frames" -le 0 ] || [ "$secret" = 0 ]; then
        why="want the hole, but uid 65534's tap counted $frames frames of init_net traffic and its reader saw the secret $secret times (clients that got it: $got/10)"
    fi
fi
if [ -z "$why" ]; then
    echo "ok $n - $name: unprivileged tap sees init_net traffic ($frames frames, secret read $secret times by uid 65534) on unpatched 6.12, as expected"
else
    echo "not ok $n - $name: $why"
fi
