#!/usr/bin/env bash
# Suite qemu-cid (TAP): vhost-vsock CIDs across network namespaces, with the
# real tool.  QEMU starts paused (-S, no guest OS; the suite guests boots
# real nested guests, these checks need only the device and take seconds),
# which is enough for it to open /dev/vhost-vsock in its netns (V1) and claim
# its CID with VHOST_VSOCK_SET_GUEST_CID (V2).  A host connect that reaches
# such a device times out (the paused guest never answers: "reaches-device",
# never counted as reachable); one that does not see it gets ENODEV, like an
# unused CID (V3).
#
# Runs as root in the vm-run guest (scripts/run-check runs it in its boot, or
# by hand: scripts/vm-run -- tests/suites/qemu-cid.sh).  init_net's
# child_ns_mode is never written (write-once for the whole boot): local
# namespaces come from a throw-away `unshare --net` parent.
set -euo pipefail

T=$(mktemp -d /tmp/qemu-cid.XXXXXX)
PFX=qcid$$
QPIDS=() # running QEMUs (pid of their `timeout` wrapper)
NSES=()  # namespaces made here
HOLDERS=()
N=0
FAILS=0

# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local p
    for p in "${QPIDS[@]}" "${HOLDERS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${QPIDS[@]}" "${HOLDERS[@]}"; do
        for _ in $(seq 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    for p in "${NSES[@]}"; do ip netns del "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

diag() { printf '# %s\n' "$@"; }
ok() { N=$((N + 1)); echo "ok $N - $1"; }
not_ok() { N=$((N + 1)); FAILS=$((FAILS + 1)); echo "not ok $N - $1"; }
skip() { N=$((N + 1)); echo "ok $N - $1 # SKIP $2"; }
result() { # NAME CONDITION-STATUS(0=pass)
    if [ "$2" = 0 ]; then ok "$1"; else not_ok "$1"; fi
}

NTESTS=7
echo "TAP version 13"
echo "1..$NTESTS"

why=
if [ "$(id -u)" != 0 ]; then
    why="needs root"
elif [ ! -r /proc/sys/net/vsock/ns_mode ]; then
    why="no /proc/sys/net/vsock/ns_mode: not a kernel with vsock namespaces"
elif [ ! -c /dev/vhost-vsock ]; then
    why="no /dev/vhost-vsock (CONFIG_VHOST_VSOCK missing)"
elif ! command -v qemu-system-x86_64 >/dev/null; then
    why="qemu-system-x86_64 not installed"
elif ! command -v socat >/dev/null; then
    why="socat not installed (used to wait for QEMU's QMP greeting)"
fi
if [ -n "$why" ]; then
    for i in $(seq "$NTESTS"); do echo "ok $i - qemu-cid test $i # SKIP $why"; done
    exit 0
fi

mkns_global() { # NAME
    ip netns add "$1"
    NSES+=("$1")
    [ "$(ip netns exec "$1" cat /proc/sys/net/vsock/ns_mode)" = global ]
}
mkns_local() { # NAME
    unshare --net bash -c "echo local > /proc/sys/net/vsock/child_ns_mode && ip netns add $1"
    NSES+=("$1")
    [ "$(ip netns exec "$1" cat /proc/sys/net/vsock/ns_mode)" = local ]
}
delns() { ip netns del "$1" 2>/dev/null || true; }

QEMU=(qemu-system-x86_64 -S -nodefaults -display none -machine q35 -accel tcg -m 64)
QEMU_PID=
QEMU_ERR=
QSEQ=0
# Start a paused QEMU with a vhost-vsock device of CID in NETNS ("-" for
# init_net).  Returns 0 once it runs with the device set up, 1 when it
# exited (QEMU_ERR = its message).  "Set up" is an answer to query-status:
# QMP commands run in QEMU's main loop, which starts only after machine
# init has realized the device (and set its CID, or exited); the greeting
# alone can come earlier, from the monitor's own thread, and a test that
# took it for "runs" saw two QEMUs with one CID while the first one was
# still setting its CID up.
start_qemu() { # NETNS CID
    local ns=$1 cid=$2 pre=() pid sock
    QSEQ=$((QSEQ + 1))
    sock=$T/q$QSEQ.qmp
    [ "$ns" = - ] || pre=(ip netns exec "$ns")
    QEMU_PID='' QEMU_ERR=''
    "${pre[@]}" timeout 300 "${QEMU[@]}" -device "vhost-vsock-pci,guest-cid=$cid" \
        -qmp "unix:$sock,server=on,wait=off" >"$T/q$QSEQ.log" 2>&1 </dev/null &
    pid=$!
    QPIDS+=("$pid")
    for _ in $(seq 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            QEMU_ERR=$(cat "$T/q$QSEQ.log")
            diag "QEMU (netns ${ns/#-/init_net}, CID $cid) exited: $QEMU_ERR"
            return 1
        fi
        if [ -S "$sock" ] &&
            printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-status"}' |
            timeout 5 socat -t 2 - "UNIX-CONNECT:$sock" 2>/dev/null | grep -q '"status"'; then
            QEMU_PID=$pid
            diag "QEMU (netns ${ns/#-/init_net}, CID $cid) runs, pid $pid"
            return 0
        fi
        sleep 0.2
    done
    QEMU_ERR="no QMP greeting after 30 s"
    diag "QEMU (netns ${ns/#-/init_net}, CID $cid): $QEMU_ERR"
    return 1
}
# Stop a QEMU started by start_qemu; succeeds iff it exits with status 0
# (QEMU exits 0 on SIGTERM after a clean shutdown).
stop_qemu() { # PID
    local rc=0
    kill -TERM "$1" 2>/dev/null || return 1
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$1" 2>/dev/null && { diag "QEMU $1 still running 10 s after SIGTERM"; kill -KILL "$1"; }
    wait "$1" 2>/dev/null || rc=$?
    [ "$rc" = 0 ] || diag "QEMU $1 exited with status $rc"
    return "$rc"
}
stop_all_qemus() {
    local p
    for p in "${QPIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then stop_qemu "$p" || true; fi
    done
    QPIDS=()
}
addrinuse() { [[ $QEMU_ERR == *"Address already in use"* ]]; }
# after a start_qemu that should have failed: pass iff it failed with EADDRINUSE
result_addrinuse() { # NAME
    if addrinuse; then result "$1" 0; else diag "expected Address already in use"; result "$1" 1; fi
}

# Host connect from a netns to CID:1234 -> reaches (times out against a
# paused guest), enodev, or other.
connect_outcome() { # PREFIX-CMD... -- CID
    local out
    out=$(timeout 20 "$@" 1234 </dev/null 2>&1) || true
    case $out in
    *"Connection timed out"*) echo reaches-device ;;
    *"No such device"*) echo enodev ;;
    *) echo "other: $out" ;;
    esac
}

# 1. V2: two global namespaces, same CID -> the second fails with EADDRINUSE
t="V2: QEMU CID 42 in two global netns: the second fails with Address already in use"
if mkns_global "${PFX}g1" && mkns_global "${PFX}g2" && start_qemu "${PFX}g1" 42; then
    q1=$QEMU_PID q1log=$T/q$QSEQ.log
    if start_qemu "${PFX}g2" 42; then
        # a second owner of CID 42 is a failure either way; say whether the
        # first QEMU had exited (and freed the CID) in the meantime
        if kill -0 "$q1" 2>/dev/null; then
            diag "the first QEMU (pid $q1) still runs: CID 42 given twice"
        else
            diag "the first QEMU (pid $q1) had exited: $(cat "$q1log")"
        fi
        result "$t" 1
    else
        result_addrinuse "$t"
    fi
else
    diag "set-up failed"; result "$t" 1
fi
stop_all_qemus

# 2. V2: two different local namespaces, same CID -> both run
t="V2: QEMU CID 43 in two different local netns: both run (CID reuse)"
if mkns_local "${PFX}l1" && mkns_local "${PFX}l2" && start_qemu "${PFX}l1" 43 && start_qemu "${PFX}l2" 43; then
    result "$t" 0
else
    result "$t" 1
fi
stop_all_qemus

# 3. V2: global then local, same CID -> both run
t="V2: QEMU CID 44 in a global netns, then in a local netns: both run"
if start_qemu "${PFX}g1" 44 && start_qemu "${PFX}l1" 44; then result "$t" 0; else result "$t" 1; fi
stop_all_qemus

# 4. V2: local then global (init_net), same CID -> both run
t="V2: QEMU CID 45 in a local netns, then in init_net: both run"
if start_qemu "${PFX}l1" 45 && start_qemu - 45; then result "$t" 0; else result "$t" 1; fi
stop_all_qemus

# 5. V2: the same local namespace twice -> EADDRINUSE
t="V2: QEMU CID 46 twice in the same local netns: the second fails with Address already in use"
if start_qemu "${PFX}l1" 46; then
    if start_qemu "${PFX}l1" 46; then result "$t" 1; else result_addrinuse "$t"; fi
else
    result "$t" 1
fi
stop_all_qemus

# 6. V6/V1: ip netns del of a local VM's netns while QEMU runs: QEMU keeps
# running, its device stays reachable from a process still in that netns and
# invisible from init_net, and QEMU exits cleanly when killed.
t="V6: ip netns del of a local netns with a running QEMU (CID 47): device still reachable from its netns, QEMU runs on, clean exit"
bad=0
mkns_local "${PFX}l3" || bad=1
ip netns exec "${PFX}l3" timeout 300 sleep 300 &
holder=$!
HOLDERS+=("$holder")
if [ "$bad" = 0 ] && start_qemu "${PFX}l3" 47; then
    q=$QEMU_PID
    ip netns del "${PFX}l3"
    o=$(connect_outcome nsenter --net="/proc/$holder/ns/net" nc --vsock 47)
    diag "connect to CID 47 from the deleted netns (via a process still in it): $o"
    [ "$o" = reaches-device ] || bad=1
    # from now on QEMU's device is the only thing holding the netns (V1)
    kill -TERM "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    sleep 1
    kill -0 "$q" 2>/dev/null || { diag "QEMU died once it alone held its deleted netns"; bad=1; }
    o=$(connect_outcome nc --vsock 47)
    diag "connect to CID 47 from init_net: $o"
    [ "$o" = enodev ] || bad=1
    stop_qemu "$q" || bad=1
else
    bad=1
fi
kill -TERM "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
result "$t" "$bad"
stop_all_qemus

# 7. V6/V2: ip netns del of a global VM's netns while QEMU runs: QEMU runs
# on, the CID stays taken for every global netns until QEMU exits, then it is
# free again.
t="V6: ip netns del of a global netns with a running QEMU (CID 48): QEMU runs on, CID stays taken until it exits, clean exit"
bad=0
mkns_global "${PFX}g3" || bad=1
if [ "$bad" = 0 ] && start_qemu "${PFX}g3" 48; then
    q=$QEMU_PID
    ip netns del "${PFX}g3"
    sleep 1
    kill -0 "$q" 2>/dev/null || { diag "QEMU died after ip netns del"; bad=1; }
    o=$(connect_outcome nc --vsock 48)
    diag "connect to CID 48 from init_net: $o"
    [ "$o" = reaches-device ] || bad=1
    if start_qemu - 48; then
        if kill -0 "$q" 2>/dev/null; then
            diag "a second global QEMU got CID 48 although the first still runs"
        else
            diag "the first QEMU exited before the second started: $(tr '\n' ' ' <"$T/q$((QSEQ - 1)).log")"
        fi
        bad=1
    elif ! addrinuse; then
        bad=1
    fi
    stop_qemu "$q" || bad=1
    if start_qemu - 48; then
        diag "after the first QEMU exited, CID 48 is free again"
    else
        diag "CID 48 still taken after the QEMU that held it exited"
        bad=1
    fi
else
    bad=1
fi
result "$t" "$bad"
stop_all_qemus

# The real-guest matrix (listeners in running guests, both directions, same
# CID in global and local namespaces) is the suite tests/suites/guests.sh.

diag "$((N - FAILS)) of $N ok"
[ "$N" = "$NTESTS" ] || { diag "BUG: planned $NTESTS tests, ran $N"; exit 1; }
[ "$FAILS" = 0 ]
