#!/usr/bin/env bash
# Does this kernel offer a local vsock mode, and if it does, does it isolate?
# (SPEC C6: no prefix of the series may offer a `local` that does not.)
# make lint boots every prefix of the series with it. Runs as root in the
# guest, prints TAP; exit status non-zero on any failure.
#
# A kernel that refuses "local" (EINVAL, as for any unknown value), or that
# has no net.vsock sysctls at all, passes: it offers nothing. A kernel that
# accepts it must isolate two local namespaces from init_net and from each
# other over vsock-loopback (SPEC L1, L2) and vhost-vsock (SPEC V2, V3).
# shellcheck disable=SC2317 # functions run through trap and check()
set -u

N=0
FAILED=0
ok() { N=$((N + 1)); echo "ok $N - $*"; }
not_ok() { N=$((N + 1)); FAILED=1; echo "not ok $N - $*"; }
check() { # NAME COMMAND...
    local name=$1
    shift
    if "$@"; then ok "$name"; else not_ok "$name"; fi
}

P=smoke_parent L1=smoke_l1 L2=smoke_l2
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    for ns in "$L1" "$L2" "$P"; do ip netns del "$ns" 2>/dev/null; done
}
trap cleanup EXIT

echo "TAP version 13"
if [ ! -e /proc/sys/net/vsock/child_ns_mode ]; then
    ok "C6_no_local_offered: no net.vsock.child_ns_mode on this kernel"
    echo "1..$N"
    exit 0
fi

ip netns add "$P" || { not_ok "create netns $P"; exit 1; }
# bash, not sh: dash's echo reports every failed write as "I/O error";
# LC_ALL=C: the error text is matched below
err=$(ip netns exec "$P" env LC_ALL=C bash -c 'echo local > /proc/sys/net/vsock/child_ns_mode' 2>&1)
if [ -n "$err" ]; then
    if [[ $err == *"Invalid argument"* ]]; then
        ok "C6_no_local_offered: child_ns_mode refuses local (EINVAL)"
        echo "1..$N"
        exit 0
    fi
    not_ok "writing local to child_ns_mode of a fresh netns: $err"
    echo "1..$N"
    exit 1
fi
ok "C6 child_ns_mode accepts local: isolation must hold"

# "ip netns add" creates the netns from the caller's: run it inside P (nsenter
# keeps the mount namespace, so the new name is visible to everyone).
nsenter --net=/run/netns/"$P" ip netns add "$L1"
nsenter --net=/run/netns/"$P" ip netns add "$L2"
for ns in "$L1" "$L2"; do
    check "M3 $ns is local" test "$(ip netns exec "$ns" cat /proc/sys/net/vsock/ns_mode)" = local
done

# loopback: a listener in L1 and one in init_net, each answering its name
ip netns exec "$L1" ncat --vsock -l -k 5000 -c 'echo from-L1' &
PIDS+=($!)
ncat --vsock -l -k 5001 -c 'echo from-init' &
PIDS+=($!)
sleep 1
# client NETNS PORT: what a client in NETNS reads from CID 1, PORT
client() {
    if [ "$1" = init ]; then
        timeout 10 ncat --vsock --recv-only 1 "$2" 2>&1
    else
        ip netns exec "$1" timeout 10 ncat --vsock --recv-only 1 "$2" 2>&1
    fi
}
out=$(client "$L1" 5000)
check "L2 STREAM within a local netns works ($out)" test "$out" = from-L1
out=$(client init 5000)
check "L1 init_net cannot reach L1's listener: reset ($out)" \
    grep -q "Connection reset by peer" <<<"$out"
out=$(client "$L2" 5000)
check "L1 another local netns cannot reach L1's listener: reset ($out)" \
    grep -q "Connection reset by peer" <<<"$out"
out=$(client "$L1" 5001)
check "L1 L1 cannot reach init_net's listener: reset ($out)" \
    grep -q "Connection reset by peer" <<<"$out"

# vhost: devices with CID 42 in L1 and L2, CID 43 in init_net
if [ ! -c /dev/vhost-vsock ]; then
    not_ok "vhost: /dev/vhost-vsock missing on a kernel that offers local"
    echo "1..$N"
    exit 1
fi
VHOST_PY='
import errno, fcntl, os, socket, sys, time
VHOST_SET_OWNER = 0xAF01
VHOST_VSOCK_SET_GUEST_CID = 0x4008AF60
def device(cid):
    fd = os.open("/dev/vhost-vsock", os.O_RDWR)
    fcntl.ioctl(fd, VHOST_SET_OWNER)
    fcntl.ioctl(fd, VHOST_VSOCK_SET_GUEST_CID, cid.to_bytes(8, "little"))
    return fd
def set_cid_errno(cid):
    try:
        device(cid)
    except OSError as e:
        return e.errno
    return 0
def connect_errno(cid):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((cid, 1234))
    except socket.timeout:
        return "queued"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "connected"
cmd = sys.argv[1]
if cmd == "hold":
    device(int(sys.argv[2]))
    print("ready", flush=True)
    time.sleep(3600)
elif cmd == "setcid":
    print(errno.errorcode.get(set_cid_errno(int(sys.argv[2])), "0"))
else:
    print(connect_errno(int(sys.argv[2])))
'
vhost() { # NETNS ARGS...: run the helper in NETNS
    local ns=$1
    shift
    if [ "$ns" = init ]; then python3 -c "$VHOST_PY" "$@"
    else ip netns exec "$ns" python3 -c "$VHOST_PY" "$@"; fi
}
hold() { # NETNS CID: keep a device with CID open in NETNS
    local fifo line=
    fifo=$(mktemp -u)
    mkfifo "$fifo"
    vhost "$1" hold "$2" >"$fifo" &
    PIDS+=($!)
    read -r -t 60 line <"$fifo"
    rm -f "$fifo"
    [ "$line" = ready ]
}
check "V2 device with CID 42 in L1" hold "$L1" 42
check "V2 CID 42 reused in L2" hold "$L2" 42
check "V2 global device with CID 43 in init_net" hold init 43
out=$(vhost "$L1" setcid 42)
check "V2 CID 42 again in L1: EADDRINUSE ($out)" test "$out" = EADDRINUSE
out=$(vhost init setcid 42)
check "V2 CID 42 in init_net does not clash with local ones ($out)" test "$out" = 0
# A connect that finds a device is queued for its (absent) guest and waits;
# one that finds none fails at once with ENODEV, as for an unused CID.
out=$(vhost "$L1" connect 42)
check "V3 L1 finds its own device 42 ($out)" test "$out" = queued
out=$(vhost "$L1" connect 43)
check "V3 L1 does not find init_net's device 43: ENODEV ($out)" test "$out" = ENODEV
out=$(vhost init connect 44)
check "V3 control: an unused CID gives ENODEV ($out)" test "$out" = ENODEV

echo "1..$N"
exit "$FAILED"
