#!/usr/bin/env bash
# Suite vsock-test (TAP): the kernel's own tools/testing/vsock/vsock_test,
# unchanged, over vsock loopback (server and client both talk to CID 1, the
# control channel is TCP on 127.0.0.1) in three places:
#   1. init_net (global)
#   2. a global netns (ip netns add from init_net)
#   3. a local netns (made from a throw-away `unshare --net` parent; SPEC L2:
#      STREAM and SEQPACKET loopback work inside one local netns)
# Each place is one TAP line: ok iff both server and client exit 0; the
# counts of vsock_test's own sub-tests go in a "#" comment.
#
# vsock_test is built on the host by scripts/build-vsock-test (run-check does
# that) into build/vsock-test/vsock_test; VSOCK_TEST=PATH overrides it.
# VSOCK_TEST_SKIP="ID ..." passes --skip=ID for each (see vsock_test --list).
# VSOCK_TEST_TIMEOUT (default 300 s) bounds each run.
#
# init_net's child_ns_mode is never written (write-once for the whole boot).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VT=${VSOCK_TEST:-$ROOT/build/vsock-test/vsock_test}
VT_TIMEOUT=${VSOCK_TEST_TIMEOUT:-300}
T=$(mktemp -d /tmp/vsock-test.XXXXXX)
NS_G=vt_global$$
NS_L=vt_local$$
NSES=()
BG=()
N=0
FAILS=0
NTESTS=3

# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local p
    for p in "${BG[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for p in "${NSES[@]}"; do ip netns del "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

diag() { printf '# %s\n' "$@"; }
indent() { sed 's/^/#   /'; }

echo "TAP version 13"
echo "1..$NTESTS"

names=("vsock_test over loopback in init_net (global)"
    "vsock_test over loopback in a global netns"
    "vsock_test over loopback in a local netns (L2)")
why=
if [ "$(id -u)" != 0 ]; then
    why="needs root"
elif [ ! -x "$VT" ]; then
    why="$VT not built (scripts/build-vsock-test builds it; scripts/run-check runs that)"
elif [ ! -r /proc/sys/net/vsock/ns_mode ]; then
    why="no /proc/sys/net/vsock/ns_mode: not a kernel with vsock namespaces"
fi
if [ -n "$why" ]; then
    for i in 1 2 3; do echo "ok $i - ${names[$((i - 1))]} # SKIP $why"; done
    exit 0
fi

# The test list (vsock_test --list prints it and exits 1)
"$VT" --list >"$T/list" 2>&1 || true
total=$(awk -F'\t' 'NR > 1 && $1 ~ /^[0-9]+$/' "$T/list" | wc -l)
diag "vsock_test has $total tests:"
tail -n +2 "$T/list" | indent

# Nothing is skipped by default: a whole run takes well under a minute even
# under TCG (about 6 s measured), so the suite stays far below 3 minutes.
SKIP_ARGS=()
for id in ${VSOCK_TEST_SKIP:-}; do SKIP_ARGS+=("--skip=$id"); done
if [ "${#SKIP_ARGS[@]}" -gt 0 ]; then
    diag "skipping test IDs (VSOCK_TEST_SKIP): ${VSOCK_TEST_SKIP:-}"
else
    diag "skipping no test: a full run is fast enough (time printed per run below)"
fi

# run_vt TEST-NAME CONTROL-PORT PEER-PORT [PREFIX-CMD...]
run_vt() {
    local name=$1 cport=$2 pport=$3 srv rc=0 src=0 t0 secs pass skipped failed_at
    shift 3
    local pre=("$@")
    t0=$(date +%s)
    "${pre[@]}" timeout "$VT_TIMEOUT" "$VT" --mode=server --control-port="$cport" \
        --peer-cid=1 --peer-port="$pport" "${SKIP_ARGS[@]}" >"$T/server" 2>&1 </dev/null &
    srv=$!
    BG+=("$srv")
    # the client does not retry: wait for the server's TCP control socket
    for _ in $(seq 100); do
        "${pre[@]}" ss -Htln "sport = :$cport" 2>/dev/null | grep -q . && break
        kill -0 "$srv" 2>/dev/null || break
        sleep 0.1
    done
    "${pre[@]}" timeout "$VT_TIMEOUT" "$VT" --mode=client --control-host=127.0.0.1 \
        --control-port="$cport" --peer-cid=1 --peer-port="$pport" "${SKIP_ARGS[@]}" \
        >"$T/client" 2>&1 </dev/null || rc=$?
    wait "$srv" || src=$?
    secs=$(($(date +%s) - t0))
    diag "client (exit $rc):"
    indent <"$T/client"
    if [ "$src" != 0 ] || [ "$rc" != 0 ]; then
        diag "server (exit $src):"
        indent <"$T/server"
    fi
    pass=$(grep -c '^[0-9]* - .*\.\.\.ok$' "$T/client" || true)
    skipped=$(grep -c '^[0-9]* - .*\.\.\.skipped$' "$T/client" || true)
    N=$((N + 1))
    if [ "$rc" = 0 ] && [ "$src" = 0 ]; then
        echo "ok $N - $name # $pass passed, $skipped skipped of $total in $secs s"
    else
        # vsock_test exits at the first failure: the test that was running
        failed_at=$(grep '^[0-9]* - ' "$T/client" | grep -v '\.\.\.\(ok\|skipped\)$' | tail -n 1 || true)
        failed_at=${failed_at%%...*}
        [ "$rc" != 124 ] && [ "$src" != 124 ] || failed_at="$failed_at (timed out after $VT_TIMEOUT s)"
        echo "not ok $N - $name # $pass passed, $skipped skipped of $total; failed at: ${failed_at:-start-up}; client exit $rc, server exit $src"
        FAILS=$((FAILS + 1))
    fi
}

# 1. init_net
diag "init_net: ns_mode $(cat /proc/sys/net/vsock/ns_mode)"
run_vt "${names[0]}" 15001 20001

# run_vt_in_netns TEST-NAME NETNS MODE CONTROL-PORT PEER-PORT: run_vt inside
# NETNS (already created) once it has lo up and the expected vsock mode
run_vt_in_netns() {
    local name=$1 ns=$2 mode=$3
    NSES+=("$ns")
    if ip netns exec "$ns" ip link set lo up &&
        [ "$(ip netns exec "$ns" cat /proc/sys/net/vsock/ns_mode)" = "$mode" ]; then
        diag "$ns: ns_mode $mode"
        run_vt "$name" "$4" "$5" ip netns exec "$ns"
    else
        N=$((N + 1)) FAILS=$((FAILS + 1))
        echo "not ok $N - $name # could not make a $mode netns with lo up"
    fi
}

# 2. a global netns
ip netns add "$NS_G" || true
run_vt_in_netns "${names[1]}" "$NS_G" global 15002 20011

# 3. a local netns, made from a throw-away global parent
unshare --net bash -c "echo local > /proc/sys/net/vsock/child_ns_mode && ip netns add $NS_L" || true
run_vt_in_netns "${names[2]}" "$NS_L" local 15003 20021

[ "$FAILS" = 0 ]
