#!/usr/bin/env bash
# SPEC C3 on the `modules` profile (vsock and every transport as modules):
# the modes, their inheritance and the sysctls do not depend on the modules.
# Runs as root in a fresh guest of its own: it locks init_net's
# child_ns_mode on purpose (the sysctl.d case), which no other suite may do.
# Prints TAP.
set -euo pipefail

T=$(mktemp -d /tmp/c3.XXXXXX)
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
check() { # NAME COMMAND...
    local name=$1
    shift
    if "$@" >"$T/out" 2>&1; then ok "$name"; else sed 's/^/# /' "$T/out"; not_ok "$name"; fi
}
mode_is() { # NETNS FILE WANT
    local got
    got=$(ip netns exec "$1" cat "/proc/sys/net/vsock/$2")
    [ "$got" = "$3" ] || { echo "$1 $2: got $got, want $3"; return 1; }
}
vsock_mods() { lsmod | awk '$1 ~ /vsock/ { print $1 }'; }
no_vsock_mods() { [ -z "$(vsock_mods)" ] || { vsock_mods; return 1; }; }
unload_all() {
    local m i
    # closed sockets keep their transport module busy until their close
    # timeout (up to 8 s) has run
    for i in $(seq 30); do
        for m in vhost_vsock vsock_diag vsock_loopback vmw_vsock_virtio_transport \
            vmw_vsock_virtio_transport_common vsock; do
            if lsmod | grep -q "^$m "; then modprobe -r "$m" 2>/dev/null || true; fi
        done
        if no_vsock_mods >/dev/null; then return 0; fi
        sleep 0.5
    done
    no_vsock_mods
}
# loopback connect from netns $1 to a listener in netns $2 (port $3): prints
# "ok" or ncat's error
lb_connect() {
    ip netns exec "$2" timeout 10 nc --vsock -l "$3" >"$T/srv" 2>&1 &
    local srv=$!
    sleep 1
    if echo c3 | ip netns exec "$1" timeout 5 nc --vsock 1 "$3" >"$T/cli" 2>&1; then
        echo ok
    else
        cat "$T/cli"
    fi
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
}
init_locked_local() {
    [ "$(cat /proc/sys/net/vsock/child_ns_mode)" = local ] &&
        ! echo global 2>/dev/null >/proc/sys/net/vsock/child_ns_mode
}
modes_kept() { mode_is l1 ns_mode local && mode_is g0 ns_mode global; }
reload_keeps_lock() { modprobe vsock_loopback && init_locked_local; }
modes_after_reload() { modes_kept && mode_is l2 ns_mode local; }
cleanup() {
    ip -all netns del 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

echo "TAP version 13"
echo "1..14"
if ! modinfo -F filename vsock 2>/dev/null | grep -q '\.ko'; then
    for i in $(seq 1 14); do echo "ok $i - C3 # SKIP not the modules profile (no vsock module)"; done
    exit 0
fi
ip netns add g0
check "C3 no vsock module loaded at boot" no_vsock_mods
check "C3 the sysctls exist before any module is loaded" mode_is g0 ns_mode global

# sysctl.d applied before any module loads (as systemd-sysctl does at boot)
mkdir -p "$T/sysctl.d"
echo "net.vsock.child_ns_mode = local" >"$T/sysctl.d/90-vsock.conf"
check "C3 sysctl -p of a sysctl.d file with no module loaded" sysctl -q -p "$T/sysctl.d/90-vsock.conf"
check "C3 init_net child_ns_mode is local and locked" init_locked_local
ip netns add l1
check "C3 a netns created with no module loaded is local" mode_is l1 ns_mode local
check "C3 a netns created before the write keeps its mode" mode_is g0 ns_mode global

check "C3 modprobe vsock_loopback" modprobe vsock_loopback
check "C3 modes unchanged by loading" modes_kept
res=$(lb_connect l1 l1 2001)
check "L2 loopback inside the local netns works ($res)" test "$res" = ok
res=$(lb_connect g0 l1 2002)
check "L1 init-side global netns cannot reach the local one ($res)" grep -q "reset by peer" <<<"$res"

check "C3 unload every vsock module" unload_all
ip netns add l2
check "C3 a netns created while the modules are out is local" mode_is l2 ns_mode local
check "C3 reload: the lock survives" reload_keeps_lock
check "C3 reload: every mode survives" modes_after_reload
[ "$failed" = 0 ]
