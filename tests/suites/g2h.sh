#!/usr/bin/env bash
# Suite g2h (TAP): SPEC G1 in a guest that has the virtio guest-to-host
# transport registered (our test kernel builds it in; no device is needed):
# from a local netns, STREAM connect to the host fails with ENETUNREACH and
# SEQPACKET with ESOCKTNOSUPPORT; from a global netns STREAM still goes to
# the transport (ENODEV here: there is no virtio-vsock device in this VM).
# init_net's child_ns_mode is never written.
set -euo pipefail

probe() { # TYPE -> errno name of connect(VMADDR_CID_HOST, 1234)
    python3 - "$1" <<'PY'
import errno, socket, sys
t = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET}[sys.argv[1]]
s = socket.socket(socket.AF_VSOCK, t)
try:
    s.connect((socket.VMADDR_CID_HOST, 1234))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
PY
}
export -f probe

echo "TAP version 13"
echo "1..3"
if [ ! -r /proc/sys/net/vsock/ns_mode ] || [ ! -d /sys/bus/virtio/drivers/vmw_vsock_virtio_transport ]; then
    for i in 1 2 3; do
        echo "ok $i - G1 # SKIP needs a kernel with vsock namespaces and the virtio guest transport"
    done
    exit 0
fi

n=0
check() { # NAME GOT WANT
    n=$((n + 1))
    if [ "$2" = "$3" ]; then
        echo "ok $n - $1: $2"
    else
        echo "not ok $n - $1: got $2, want $3"
    fi
}

got=$(unshare --net bash -c 'probe stream')
check "G1 STREAM from a global netns reaches the transport" "$got" ENODEV
got=$(unshare --net bash -c 'echo local >/proc/sys/net/vsock/child_ns_mode && unshare --net bash -c "probe stream"')
check "G1 STREAM from a local netns" "$got" ENETUNREACH
got=$(unshare --net bash -c 'echo local >/proc/sys/net/vsock/child_ns_mode && unshare --net bash -c "probe seqpacket"')
check "G1 SEQPACKET from a local netns" "$got" ESOCKTNOSUPPORT
