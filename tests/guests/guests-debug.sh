#!/usr/bin/env bash
# Suite guests-debug (TAP): the guest side of the series under KASAN,
# lockdep and the netns reference tracker.  One nested guest runs the
# guest-debug kernel (scripts/vm-run --guest --profile guest-debug) with a
# vhost-vsock device opened in a local netns of this VM (itself the debug
# kernel: make check-debug, or CHECK_SUITES=guests-debug make check), CID
# 10, and runs there:
#   V2  the guest boots with its CID in a local netns
#   G1  a local netns of the guest connecting to the host: STREAM
#       ENETUNREACH, SEQPACKET ESOCKTNOSUPPORT
#   G1  vsock_ns_reassign (the series' kselftest): a socket in a local netns
#       of the guest refused the host's CID, then connected to loopback,
#       bound and closed, in a loop (the transport-reassignment pattern of
#       public vsock use-after-free bugs)
#   V3  a host socket in the same local netns reaches the guest's listener
#   C4  lockdep is still on at the end (/proc/lockdep_stats: debug_locks 1),
#       and the guest exits: vm-run fails it on any splat in its kernel log
# env: REASSIGN_ROUNDS (vsock_ns_reassign rounds per variant, 30 here: 100
#      take 11 min in this guest), GUEST_BOOT_TIMEOUT (1200 s), GUEST_DEBUG_MEM
#      (the guest's memory, 512M)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NTESTS=7
echo "TAP version 13"
echo "1..$NTESTS"
SUITE=guests-debug
# shellcheck source=tests/guests/lib-checks.sh
. "$ROOT/tests/guests/lib-checks.sh"

KDIR=$ROOT/build/kernels/guest-debug
[ -r /proc/sys/net/vsock/ns_mode ] || skip_all "not the patched kernel"
[ -c /dev/vhost-vsock ] || skip_all "no /dev/vhost-vsock"
[ -f "$KDIR/arch/x86/boot/bzImage" ] ||
    skip_all "no guest-debug kernel (scripts/build-kernel guest-debug)"
[ -f "$KDIR/initramfs.cpio" ] ||
    skip_all "no guest-debug initramfs (scripts/guest-initramfs guest-debug)"

GUEST_DIR=$(mktemp -d /tmp/guests-debug.XXXXXX)
L=vgd_local
# shellcheck source=scripts/lib-guest.sh
. "$ROOT/scripts/lib-guest.sh"
cleanup() {
    guest_kill_all
    wait 2>/dev/null || true
    ip netns del "$L" 2>/dev/null || true
    rm -rf "$GUEST_DIR"
}
trap cleanup EXIT
unshare --net bash -c "echo local > /proc/sys/net/vsock/child_ns_mode && ip netns add $L"

# KASAN and lockdep make the guest kernel a few times slower
GUEST_BOOT_TIMEOUT=${GUEST_BOOT_TIMEOUT:-1200}
# KASAN's shadow is an eighth of the memory; lockdep wants room too
export VM_MEM=${GUEST_DEBUG_MEM:-512M}
if guest_start gD "$L" 10 --profile guest-debug; then
    ok "V2 guest gD (guest-debug kernel, netns $L, CID 10) boots and answers its console after $GUEST_BOOT_SECS s"
else
    notok "V2 guest gD (guest-debug kernel) did not come up: $GUEST_ERR"
    bail "the guest did not come up"
fi

guest_check_g1 gD
guest_check_reassign gD "${REASSIGN_ROUNDS:-30}" 1500

# host to guest, in the guest's own local netns
if guest_exec gD "listen_vsock 1234 /tmp/h2g"; then
    rc=0
    out=$(echo "h2g from $L" | ip netns exec "$L" timeout 60 nc --send-only --vsock 10 1234 2>&1) || rc=$?
    sleep 3
    guest_exec gD "cat /tmp/h2g" || true
    if [ "$rc" = 0 ] && [ "$GOUT" = "h2g from $L" ]; then
        ok "V3 $L -> CID 10: connects and the guest receives"
    else
        notok "V3 $L -> CID 10: nc exit $rc ($out), the guest got: $GOUT"
    fi
else
    guest_exec gD "cat /tmp/h2g.log" || true
    notok "V3 the listener in gD did not start: $GOUT"
fi

guest_exec gD "grep '^ *debug_locks:' /proc/lockdep_stats" || true
case $GOUT in
*"debug_locks:"*" 1") ok "C4 lockdep is still on in gD at the end: debug_locks 1" ;;
*) notok "C4 lockdep in gD at the end: want debug_locks 1, got: $GOUT" ;;
esac

rc=0
# the guest's dmesg goes out over an emulated serial port: slow here
guest_stop gD 600 || rc=$?
if [ "$rc" = 0 ]; then
    ok "C4 guest gD exits with status 0 and a clean kernel log (KASAN, lockdep)"
else
    notok "guest gD: vm-run exit $rc: $(tail -n 8 "$GUEST_DIR/gD.err" | tr '\n' ' ')"
fi
[ "$n" = "$NTESTS" ] || notok "plan: ran $n checks, planned $NTESTS"
[ "$FAILS" = 0 ]
