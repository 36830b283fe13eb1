#!/usr/bin/env bash
# Fuzz AF_VSOCK with trinity (Debian package trinity) in every kind of netns
# at once, while the namespace controls churn; run by scripts/fuzz in a
# guest (the debug kernel by default), as root. TAP output.
#
# trinity runs as uid 65534 (never as root) with -P VSOCK, so every socket
# it makes is an AF_VSOCK one, and only socket syscalls (-c), in four places
# at the same time: init_net, a global netns, a local netns, and a netns of
# uid 65534's own user namespace (unshare -Un: an unprivileged user's).
# Meanwhile the load loop creates and drops namespaces (global ones and
# local ones under a parent whose child_ns_mode is written), carries
# loopback connections in the global and local netns, brings vsockmon
# devices up and down, and opens vhost-vsock devices with CIDs in
# throwaway namespaces. At the end every netns is gone, and the
# net_namespace and AF_VSOCK slab counts must come back to where they were
# (as the churn selftest counts them). Splats in the kernel log fail the
# run in scripts/fuzz (vm-run's exit 125).
#
# On a kernel without vsock namespaces (the unpatched base) the same run
# goes without the local netns and the child_ns_mode writes.
#
# env: FUZZ_MINUTES (30), FUZZ_SEED (from the clock; each trinity gets
# SEED+n, printed, so that a run can be replayed with -s), FUZZ_CHILDREN
# (trinity children per place, 2)
set -uo pipefail
export LC_ALL=C

MIN=${FUZZ_MINUTES:-30}
SEED=${FUZZ_SEED:-$(date +%s)}
KIDS=${FUZZ_CHILDREN:-2}
SYSCALLS=(socket bind connect listen accept accept4 getsockname getpeername
          sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg setsockopt
          getsockopt shutdown close ioctl poll read write readv writev
          splice fcntl dup)
ASU=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
T=$(mktemp -d /tmp/fuzz.XXXXXX)
chmod 755 "$T"
PIDS=()
n=0 FAILED=0
result() { # OK|NOT TEXT
    n=$((n + 1))
    if [ "$1" = OK ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; FAILED=1; fi
}
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    pkill -KILL -x trinity 2>/dev/null || true
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip link del fzmon0 2>/dev/null || true
    for ns in fz_g fz_l; do ip netns del "$ns" 2>/dev/null || true; done
    for p in "$T"/*/; do umount "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# slab objects of CACHE now, per-CPU slabs flushed first
slab() {
    echo 1 >"/sys/kernel/slab/$1/shrink" 2>/dev/null || true
    awk -v c="$1" '$1 == c { print $2 }' /proc/slabinfo
}
# a throwaway netns: the kernel frees the last cleanup run's namespaces
# only at the next run
kick() { unshare -n true; }
# counts of net_namespace and AF_VSOCK once two readings in a row agree
settled() {
    local prev="" now i
    for i in $(seq 10); do
        kick
        sleep 3
        now="$(slab net_namespace) $(slab AF_VSOCK)"
        [ "$now" != "$prev" ] || break
        prev=$now
    done
    echo "$now"
}

echo "TAP version 13"
if ! command -v trinity >/dev/null; then
    echo "1..0 # SKIP trinity is not installed (Debian package trinity)"
    exit 0
fi
# The unpatched base (scripts/fuzz with FUZZ_PROFILE=baseline-debug) has
# no vsock namespace modes: the same run there, less the local netns, tells
# a report of the base's own from one the series makes reachable.
BASE=0
KINDS=(init global local userns)
if [ ! -r /proc/sys/net/vsock/ns_mode ]; then
    BASE=1
    KINDS=(init global userns)
fi
echo "1..7"
echo "# seed $SEED, $MIN minutes, $KIDS trinity children per netns kind"
read -r NS0 SK0 <<<"$(settled)"
echo "# before: ${NS0:-?} net_namespace, ${SK0:-?} AF_VSOCK objects"
COUNTED=1
if [ -z "$NS0" ] || [ -z "$SK0" ]; then
    COUNTED=0
    echo "# net_namespace or AF_VSOCK not in /proc/slabinfo: boot with slab_nomerge and CONFIG_SLUB_DEBUG"
fi

NSES=(fz_g fz_l)
ip netns add fz_g
if [ "$BASE" = 1 ]; then
    NSES=(fz_g)
    echo "# no net.vsock.ns_mode: the unpatched base, no local netns"
else
    unshare --net sh -c 'echo local >/proc/sys/net/vsock/child_ns_mode && ip netns add fz_l'
fi
for ns in "${NSES[@]}"; do ip netns exec "$ns" ip link set lo up; done

# --- trinity in each kind of netns ------------------------------------------
END=$(($(date +%s) + MIN * 60))
k=0
for kind in "${KINDS[@]}"; do
    k=$((k + 1))
    d=$T/$kind
    # trinity's working directory on a small tmpfs of its own: whatever
    # the fuzzed writes put there fails with ENOSPC instead of filling the
    # guest's memory (a 30-minute run once filled 4.8 GB of shmem)
    mkdir -p "$d" && mount -t tmpfs -o size=64m,mode=0755 fuzz "$d" &&
        chown 65534:65534 "$d"
    X=()
    case $kind in
    global) X=(ip netns exec fz_g) ;;
    local) X=(ip netns exec fz_l) ;;
    esac
    U=()
    [ "$kind" != userns ] || U=(unshare -Un)
    C=()
    for s in "${SYSCALLS[@]}"; do C+=(-c "$s"); done
    echo "# trinity $kind: seed $((SEED + k))"
    (cd "$d" && exec timeout -s INT -k 60 "$((MIN * 60))" "${X[@]}" "${ASU[@]}" "${U[@]}" \
        trinity -q -P VSOCK -C "$KIDS" -s "$((SEED + k))" "${C[@]}" \
        --disable-fds=testfile,memfd \
        >"$d/out" 2>&1 </dev/null) &
    PIDS+=("$!")
    eval "TRIN_$kind=$! SEED_$kind=$((SEED + k))"
done

# --- the load ----------------------------------------------------------------
VHOST=$(dirname "$0")/../../build/kselftest/vsock/vsock_ns_vhost
LOADED="namespace, loopback and vsockmon"
VHOST_LOAD=0
if [ "$BASE" = 1 ]; then
    echo "# the unpatched base: no vsock_ns_vhost (it needs the series), the load opens no vhost device"
elif [ -x "$VHOST" ]; then
    VHOST_LOAD=1
    LOADED="$LOADED and vhost (vsock_ns_vhost)"
else
    echo "# no $VHOST (make check builds it): the load opens no vhost device"
fi
load() {
    local i=0 p
    while [ "$(date +%s)" -lt "$END" ]; do
        i=$((i + 1))
        # namespaces: a global one with a listener, a local parent and child
        unshare -n sh -c 'timeout 2 ncat --vsock -l 4000 >/dev/null 2>&1 & sleep 0.2; timeout 1 ncat --vsock 1 4000 </dev/null >/dev/null 2>&1; wait' || true
        [ "$BASE" = 1 ] ||
            unshare -n sh -c 'echo local >/proc/sys/net/vsock/child_ns_mode && unshare -n sh -c "timeout 2 ncat --vsock -l 4001 >/dev/null 2>&1 & sleep 0.2; echo x | timeout 1 ncat --vsock 1 4001 >/dev/null 2>&1; wait"' || true
        # loopback connections in the global and local netns
        for p in "${NSES[@]}"; do
            ip netns exec "$p" sh -c 'timeout 2 ncat --vsock -l 4002 >/dev/null 2>&1 & sleep 0.2; echo y | timeout 1 ncat --vsock 1 4002 >/dev/null 2>&1; wait' || true
        done
        # a vsockmon device up and down in init_net
        ip link add fzmon0 type vsockmon 2>/dev/null && ip link set fzmon0 up && sleep 0.5
        ip link del fzmon0 2>/dev/null || true
        # vhost-vsock devices and the guest emulator, every 20th round
        if [ $((i % 20)) = 0 ] && [ "$VHOST_LOAD" = 1 ]; then
            (cd "$(dirname "$VHOST")" && timeout 120 ./vsock_ns_vhost >/dev/null 2>&1) || true
        fi
    done
    echo "$i" >"$T/load.rounds"
}
load &
LOAD=$!
PIDS+=("$LOAD")

wait "$LOAD"
[ "$BASE" = 0 ] || echo "ok $((n += 1)) - trinity in local netns # SKIP the unpatched base has no local mode"
for kind in "${KINDS[@]}"; do
    eval "p=\$TRIN_$kind s=\$SEED_$kind"
    wait "$p"
    rc=$?
    out=$T/$kind/out
    calls=$(grep -oE 'Ran [0-9]+ syscalls' "$out" | tail -n 1 | grep -oE '[0-9]+')
    if [ -n "$calls" ] && [ "$calls" -gt 0 ]; then
        result OK "trinity in $kind netns: $calls syscalls (seed $s, exit $rc)"
    else
        sed 's/^/#   /' "$out" | tail -n 15
        result NOT "trinity in $kind netns: no syscall count in its output (exit $rc)"
    fi
done
rounds=$(cat "$T/load.rounds" 2>/dev/null || echo 0)
if [ "$rounds" -gt 0 ]; then
    result OK "load: $rounds rounds of $LOADED churn"
else
    result NOT "load: no round finished"
fi

pkill -KILL -x trinity 2>/dev/null || true
for ns in "${NSES[@]}"; do ip netns del "$ns"; done
sleep 1
leftover=$(pgrep -x trinity | wc -l)
if [ "$leftover" = 0 ]; then
    result OK "no trinity process left"
else
    result NOT "$leftover trinity processes left"
fi

# --- nothing leaked -------------------------------------------------------------
ok=0
NS1="?" SK1="?"
for i in $(seq "$((30 * COUNTED))"); do
    read -r NS1 SK1 <<<"$(settled)"
    if [ "$NS1" -le "$NS0" ] && [ "$SK1" -le "$SK0" ]; then ok=1; break; fi
    sleep 7
done
if [ "$COUNTED" = 0 ]; then
    result NOT "every netns and vsock socket freed: cannot count them on this kernel"
elif [ "$ok" = 1 ]; then
    result OK "every netns and vsock socket freed (net_namespace $NS0 -> $NS1, AF_VSOCK $SK0 -> $SK1)"
else
    result NOT "objects left after 5 min: net_namespace $NS0 -> $NS1, AF_VSOCK $SK0 -> $SK1"
fi
exit "$FAILED"
