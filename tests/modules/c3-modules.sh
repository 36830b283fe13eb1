#!/usr/bin/env bash
# SPEC C3 on the `modules` profile (vsock and every transport as modules):
# the modes, their inheritance, the locks and the sysctls do not depend on
# the modules, and the modules come and go cleanly with sockets and vhost
# devices in flight (C4: vm-run's exit status 125 catches any splat).
# Runs as root in a fresh guest of its own: it locks init_net's
# child_ns_mode on purpose (the sysctl.d case), which no other suite may do.
# Prints TAP.
#
# Namespaces (the mode each must keep to the end):
#   g0  global, made before the sysctl.d file; child_ns_mode locked global
#   g1  global, made before the sysctl.d file; child_ns_mode left unlocked
#       until after the reload, then written local
#   l1  local, made after the sysctl.d file; child_ns_mode written (locked)
#   l2, l1c      local, made while the modules are out (from init_net, l1)
#   g0c, g1c     global, made while the modules are out (from g0, g1)
#   g1l          local, made from g1 after its child_ns_mode was written
#   ld  local, deleted (ip netns del) while its sockets live
set -euo pipefail
export LC_ALL=C

PLAN=33
T=$(mktemp -d /tmp/c3.XXXXXX)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3 || echo python3)
SYSCTL_D=/run/sysctl.d
SYSCTL_D_MOUNTED=
BG=()                  # every background process, killed on exit
declare -A PAIR_SRV PAIR_CLI PAIR_HOLD HELPER
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
check() { # NAME COMMAND...
    local name=$1
    shift
    # diagnostics are indented past "# " so that no line of them reads as TAP
    if "$@" >"$T/out" 2>&1; then ok "$name"; else sed 's/^/#   /' "$T/out"; not_ok "$name"; fi
}
in_ns() { # NETNS COMMAND...: run COMMAND in NETNS ("init" is init_net)
    if [ "$1" = init ]; then "${@:2}"; else ip netns exec "$1" "${@:2}"; fi
}
# for background jobs: "${NSX[@]}" COMMAND &, so that $! is COMMAND itself
# (a function run with & would be a subshell that a kill leaves COMMAND of)
ns_exec() { # NETNS: NSX=the prefix that runs a command in NETNS
    NSX=()
    [ "$1" = init ] || NSX=(ip netns exec "$1")
}
mode_is() { # NETNS FILE WANT
    local got
    got=$(in_ns "$1" cat "/proc/sys/net/vsock/$2") || return 1
    [ "$got" = "$3" ] || { echo "$1 $2: got $got, want $3"; return 1; }
}
modes_are() { # NETNS:WANT...: ns_mode of each
    local a rc=0
    for a in "$@"; do mode_is "${a%%:*}" ns_mode "${a#*:}" || rc=1; done
    return $rc
}
# write_mode NETNS VALUE: write child_ns_mode; prints ok, EBUSY, EPERM or the
# error
write_mode() {
    local out
    # shellcheck disable=SC2016 # $1 of the inner bash
    if out=$(in_ns "$1" bash -c 'echo "$1" >/proc/sys/net/vsock/child_ns_mode' _ "$2" 2>&1); then
        echo ok
        return
    fi
    case $out in
    *"Device or resource busy"*) echo EBUSY ;;
    *"Operation not permitted"*) echo EPERM ;;
    *) echo "$out" ;;
    esac
}
want_write() { # NETNS VALUE WANT
    local got
    got=$(write_mode "$1" "$2")
    [ "$got" = "$3" ] || { echo "$1: writing $2 to child_ns_mode gave $got, want $3"; return 1; }
}
# a lock is seen by writing the other value (S6: EBUSY, S5: EPERM in a local
# netns) and reading the value back
locked() { # NETNS VALUE WANT-ERRNO-FOR-THE-OTHER-VALUE
    local other=global
    [ "$2" = global ] && other=local
    want_write "$1" "$other" "$3" && mode_is "$1" child_ns_mode "$2"
}
vsock_mods() { lsmod | awk '$1 ~ /vsock|^vhost/ { print $1 }'; }
no_vsock_mods() { [ -z "$(vsock_mods)" ] || { vsock_mods; return 1; }; }
unload_all() {
    local m i
    # closed sockets keep their transport module busy until their close
    # timeout (up to 8 s) has run
    for i in $(seq 40); do
        for m in vhost_vsock vsock_diag vsock_loopback vmw_vsock_virtio_transport \
            vmw_vsock_virtio_transport_common vsockmon vsock vhost vhost_iotlb; do
            if lsmod | grep -q "^$m "; then modprobe -r "$m" 2>/dev/null || true; fi
        done
        if no_vsock_mods >/dev/null; then return 0; fi
        sleep 0.5
    done
    no_vsock_mods
}
wait_line() { # FILE LINE: wait (up to 20 s) until FILE has LINE (a regex)
    local i
    for i in $(seq 100); do
        grep -qx -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "$1: no line '$2' after 20 s:"
    cat "$1" 2>/dev/null
    return 1
}
gone() { # PID...: wait (up to 10 s) until every PID has exited
    local p i
    for p in "$@"; do
        for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$p" 2>/dev/null; then echo "pid $p still alive"; return 1; fi
        wait "$p" 2>/dev/null || true
    done
}
# loopback connect from netns $1 to a listener in netns $2 (port $3): prints
# "ok" or ncat's error
lb_connect() {
    rm -f "$T/srv.err"
    ns_exec "$2"
    "${NSX[@]}" timeout 10 nc -v --vsock -l "$3" >"$T/srv" 2>"$T/srv.err" </dev/null &
    local srv=$!
    wait_line "$T/srv.err" "Ncat: Listening on .*" >/dev/null || true
    if echo c3 | in_ns "$1" timeout 5 nc --vsock 1 "$3" >"$T/cli" 2>&1; then
        echo ok
    else
        cat "$T/cli"
    fi
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
}
lb_works() { # NETNS: loopback inside NETNS works (L2)
    local res
    res=$(lb_connect "$1" "$1" "$2")
    [ "$res" = ok ] || { echo "$res"; return 1; }
}
lb_reset() { # FROM TO PORT: the connect is reset (L1)
    local res
    res=$(lb_connect "$1" "$2" "$3")
    grep -q "reset by peer" <<<"$res" || { echo "$res"; return 1; }
}

# --- sockets and devices kept open across the unload attempts -------------
# pair_open NAME NETNS PORT: an established loopback connection inside
# NETNS (two ncat); what pair_send writes to the client reaches the server.
# A `sleep` holds the client's stdin fifo open, so that the script itself
# never keeps a descriptor that its other children could inherit.
pair_open() {
    local name=$1 ns=$2 port=$3
    mkfifo "$T/$name.in"
    ip netns exec "$ns" nc -v --vsock -l --recv-only "$port" \
        >"$T/$name.out" 2>"$T/$name.err" </dev/null &
    PAIR_SRV[$name]=$!
    BG+=("$!")
    wait_line "$T/$name.err" "Ncat: Listening on .*" || return 1
    # the holder opens the fifo read-write (no blocking) before anyone
    # writes: a fifo that nobody holds open drops what was written to it
    sleep 600 1<>"$T/$name.in" 2>/dev/null &
    PAIR_HOLD[$name]=$!
    BG+=("$!")
    holds "$!" "$T/$name.in" || return 1
    ip netns exec "$ns" nc --vsock --send-only 1 "$port" <"$T/$name.in" >"$T/$name.cli" 2>&1 &
    PAIR_CLI[$name]=$!
    BG+=("$!")
    pair_send "$name" "$name-first"
}
holds() { # PID FILE: wait (up to 10 s) until PID has FILE open as its stdout
    local i
    for i in $(seq 50); do
        [ "$(readlink "/proc/$1/fd/1" 2>/dev/null)" = "$2" ] && return 0
        sleep 0.2
    done
    echo "pid $1 did not open $2"
    return 1
}
pair_send() { # NAME WORD: WORD reaches the server
    # read-write open: never blocks, and no SIGPIPE if the client is gone
    echo "$2" 1<>"$T/$1.in"
    wait_line "$T/$1.out" "$2" || { cat "$T/$1.err" "$T/$1.cli"; return 1; }
}
pair_close() { # NAME: EOF to the client; both ends exit
    local p
    kill "${PAIR_HOLD[$1]:-}" 2>/dev/null || true
    for p in "${PAIR_HOLD[$1]:-}" "${PAIR_CLI[$1]:-}" "${PAIR_SRV[$1]:-}"; do
        [ -z "$p" ] || gone "$p" || return 1
    done
}
# A QEMU-less python helper: vhost CID (open /dev/vhost-vsock and set the
# guest CID as QEMU does), listen PORT, or connect CID PORT (with a 60 s
# connect timeout; "connecting" before connect(), "connected" after). It
# writes its state to READY and then waits for a signal.
PY_HELPER='
import ctypes, fcntl, os, signal, socket, struct, sys
mode, ready = sys.argv[1], sys.argv[2]
def say(word):
    with open(ready, "w") as f:
        f.write(word + "\n")
if mode == "vhost":
    fd = os.open("/dev/vhost-vsock", os.O_RDWR)
    VHOST_VSOCK_SET_GUEST_CID = 0x4008AF60
    fcntl.ioctl(fd, VHOST_VSOCK_SET_GUEST_CID, struct.pack("Q", int(sys.argv[3])))
    say("ready")
elif mode == "listen":
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.bind((socket.VMADDR_CID_ANY, int(sys.argv[3])))
    s.listen()
    say("listening")
elif mode == "connect":
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    tv = struct.pack("qq", 60, 0)  # SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD = 6
    if ctypes.CDLL(None, use_errno=True).setsockopt(s.fileno(), socket.AF_VSOCK, 6, tv, len(tv)):
        sys.exit("setsockopt: errno %d" % ctypes.get_errno())
    say("connecting")
    s.connect((int(sys.argv[3]), int(sys.argv[4])))
    s.sendall(b"in flight\n")
    say("connected")
signal.pause()
'
helper() { # NAME NETNS MODE ARG...: start the python helper in the background
    local name=$1 ns=$2
    shift 2
    rm -f "$T/$name.ready"
    ns_exec "$ns"
    "${NSX[@]}" "$PY" -c "$PY_HELPER" "$1" "$T/$name.ready" "${@:2}" >"$T/$name.log" 2>&1 </dev/null &
    HELPER[$name]=$!
    BG+=("$!")
}
helper_says() { # NAME WORD
    wait_line "$T/$1.ready" "$2" || { cat "$T/$1.log"; return 1; }
}
refused_unload() { # MODULE: modprobe -r fails because it is in use; still loaded
    if modprobe -r "$1" >"$T/rm.out" 2>&1; then echo "modprobe -r $1 succeeded"; return 1; fi
    grep -q "in use" "$T/rm.out" || { cat "$T/rm.out"; return 1; }
    lsmod | grep -q "^$1 " || { echo "$1 is gone"; return 1; }
}

cleanup() {
    local p
    for p in "${BG[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${BG[@]}"; do wait "$p" 2>/dev/null || true; done
    ip -all netns del 2>/dev/null || true
    rm -f "$SYSCTL_D/90-c3-vsock.conf" "$SYSCTL_D/91-c3-vsock.conf" 2>/dev/null || true
    [ -z "$SYSCTL_D_MOUNTED" ] || umount "$SYSCTL_D" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

echo "TAP version 13"
echo "1..$PLAN"
if ! modinfo -F filename vsock 2>/dev/null | grep -q '\.ko'; then
    for i in $(seq 1 "$PLAN"); do echo "ok $i - C3 # SKIP not the modules profile (no vsock module)"; done
    exit 0
fi
ip netns add g0
ip netns add g1
check "C3 no vsock module loaded at boot" no_vsock_mods
check "C3 the sysctls exist before any module is loaded" mode_is g0 ns_mode global

# --- a sysctl.d file applied the way boot applies it, before any module ---
# systemd-sysctl with no argument reads every sysctl.d directory, /run's
# included (as systemd-sysctl.service does at boot); procps' sysctl --system
# is the non-systemd way. /run is a tmpfs in the guest; if it is not
# writable, a tmpfs over /etc/sysctl.d (hiding the host's files) does.
if ! mkdir -p "$SYSCTL_D" 2>/dev/null || ! touch "$SYSCTL_D/.c3" 2>/dev/null; then
    SYSCTL_D=/etc/sysctl.d
    mount -t tmpfs -o mode=755 tmpfs "$SYSCTL_D" && SYSCTL_D_MOUNTED=1
fi
rm -f "$SYSCTL_D/.c3"
echo "net.vsock.child_ns_mode = local" >"$SYSCTL_D/90-c3-vsock.conf"
boot_sysctl=()
for b in /lib/systemd/systemd-sysctl /usr/lib/systemd/systemd-sysctl; do
    if [ -x "$b" ]; then boot_sysctl=("$b"); break; fi
done
[ "${#boot_sysctl[@]}" -gt 0 ] || boot_sysctl=(sysctl --system)
boot_apply() { no_vsock_mods && "${boot_sysctl[@]}" && no_vsock_mods; }
check "C3 ${boot_sysctl[*]##*/} applies $SYSCTL_D/90-c3-vsock.conf with no module loaded" \
    boot_apply
check "C3 init_net child_ns_mode is local and locked (S6)" locked init local EBUSY
check "C3 sysctl --system applies it again: rewriting the locked value succeeds (S6)" \
    sysctl --system
later_global() { # a later sysctl.d file asking for global is refused
    local rc=0
    echo "net.vsock.child_ns_mode = global" >"$SYSCTL_D/91-c3-vsock.conf"
    "${boot_sysctl[@]}" >"$T/sd.out" 2>&1 || rc=$?
    rm -f "$SYSCTL_D/91-c3-vsock.conf"
    cat "$T/sd.out"
    [ "$rc" != 0 ] && grep -qi "busy" "$T/sd.out" && mode_is init child_ns_mode local
}
check "C3 a later sysctl.d file asking for global fails with EBUSY, nothing changes (S6)" later_global
check "C3 still no vsock module loaded after the sysctl.d files" no_vsock_mods
ip netns add l1
check "C3 a netns created with no module loaded is local" mode_is l1 ns_mode local
check "C3 namespaces created before the write keep their mode" modes_are g0:global g1:global
lock_children() {
    want_write g0 global ok && locked g0 global EBUSY &&
        want_write l1 local ok && locked l1 local EPERM && no_vsock_mods
}
check "C3 with no module loaded, writes lock g0 global (EBUSY) and l1 local (EPERM)" lock_children

check "C3 modprobe vsock_loopback" modprobe vsock_loopback
check "C3 modes unchanged by loading" modes_are init:global g0:global g1:global l1:local
check "L2 loopback inside the local netns works" lb_works l1 2001
check "L1 a global netns cannot reach the local one (reset)" lb_reset g0 l1 2002

check "C3 unload every vsock module" unload_all
# new namespaces while the modules are out, from a local and a global parent
new_ns() { # PARENT NAME: create NAME from a task in PARENT's netns
    if [ "$1" = init ]; then
        ip netns add "$2"
    else
        nsenter --net="/run/netns/$1" ip netns add "$2"
    fi
}
made_local() { new_ns init l2 && new_ns l1 l1c && modes_are l2:local l1c:local && no_vsock_mods; }
made_global() { new_ns g1 g1c && new_ns g0 g0c && modes_are g1c:global g0c:global && no_vsock_mods; }
check "C3 netns created while the modules are out from init_net and local l1 are local" made_local
check "C3 netns created while the modules are out from global g1 and g0 are global" made_global
reload_init() { modprobe vsock_loopback && locked init local EBUSY; }
check "C3 reload: init_net's lock survives (EBUSY)" reload_init
check "C3 reload: g0's lock on global survives (EBUSY)" locked g0 global EBUSY
check "C3 reload: l1 still refuses global (EPERM, S5)" locked l1 local EPERM
g1_unlocked() { # the reload did not lock g1: its first write still wins
    want_write g1 local ok && locked g1 local EBUSY &&
        new_ns g1 g1l && modes_are g1l:local g1c:global g1:global
}
check "C3 reload: g1's child_ns_mode is still unlocked (write local, then EBUSY)" g1_unlocked
ALL=(init:global g0:global g1:global l1:local l2:local l1c:local g0c:global g1c:global g1l:local)
check "C3 reload: every mode survives" modes_are "${ALL[@]}"

# --- C3/C4: modules busy while sockets and devices are in flight ----------
check "C3 an established loopback connection in l1 carries data" pair_open l1 l1 2100
check "C3 modprobe -r vsock_loopback fails while it is open (in use)" refused_unload vsock_loopback
check "C3 modprobe -r vsock fails while it is open (in use)" refused_unload vsock
check "K7 the connection still carries data after the refused unloads" pair_send l1 l1-second
hold_vhost() { # CID 42 in init_net and in l1 (V2 reuse), and a bare open fd
    modprobe vhost_vsock || return 1
    helper vh_init init vhost 42
    helper vh_l1 l1 vhost 42
    sleep 600 9<>/dev/vhost-vsock >/dev/null 2>&1 &
    HELPER[vh_bare]=$!
    BG+=("$!")
    helper_says vh_init ready && helper_says vh_l1 ready && kill -0 "${HELPER[vh_bare]}"
}
check "C3 /dev/vhost-vsock held open: CID 42 in init_net and in l1 (V2), one without a CID" hold_vhost
check "C3 modprobe -r vhost_vsock fails while /dev/vhost-vsock is open (in use)" \
    refused_unload vhost_vsock
connect_killed() { # connects to CID 42 wait on the devices; SIGKILL them there
    local h rc=0 st wchan
    helper cn_init init connect 42 1234
    helper cn_l1 l1 connect 42 1234
    for h in cn_init cn_l1; do helper_says "$h" connecting || rc=1; done
    sleep 1
    for h in cn_init cn_l1; do
        if ! grep -qx connecting "$T/$h.ready" || ! kill -0 "${HELPER[$h]}" 2>/dev/null; then
            echo "$h is not waiting in connect():"
            cat "$T/$h.ready" "$T/$h.log"
            rc=1
        fi
        wchan=$(cat "/proc/${HELPER[$h]}/wchan" 2>/dev/null || true)
        case $wchan in "" | 0 | vsock_connect) ;; *) echo "$h waits in $wchan"; rc=1 ;; esac
        kill -KILL "${HELPER[$h]}" 2>/dev/null || true
        st=0
        wait "${HELPER[$h]}" 2>/dev/null || st=$?
        [ "$st" = 137 ] || { echo "$h exited $st, not by SIGKILL"; rc=1; }
    done
    return $rc
}
check "C3 connects to CID 42 from init_net and l1 die by SIGKILL in connect()" connect_killed
netns_deleted() { # ld: connection, listener, unaccepted connection; ip netns del
    new_ns init ld && mode_is ld ns_mode local || return 1
    pair_open ld ld 2300 || return 1
    helper ld_lsn ld listen 2301
    helper_says ld_lsn listening || return 1
    helper ld_cli ld connect 1 2301
    helper_says ld_cli connected || return 1
    ip netns del ld || return 1
    ! ip netns list | grep -qw ld || { echo "ld still listed"; return 1; }
    pair_send ld ld-after-del || return 1
    kill -0 "${HELPER[ld_lsn]}" && kill -0 "${HELPER[ld_cli]}"
}
check "K7 ip netns del with a listener and connections inside: the connection keeps working" \
    netns_deleted
close_all() { # close everything (SIGKILL for ld's listener side), then unload
    local rc=0 h
    for h in l1 ld; do pair_close "$h" || rc=1; done
    for h in ld_lsn ld_cli; do kill -KILL "${HELPER[$h]:-}" 2>/dev/null || true; done
    for h in vh_init vh_l1 vh_bare; do kill "${HELPER[$h]:-}" 2>/dev/null || true; done
    for h in ld_lsn ld_cli vh_init vh_l1 vh_bare; do
        [ -z "${HELPER[$h]:-}" ] || gone "${HELPER[$h]}" || rc=1
    done
    unload_all || rc=1
    return $rc
}
check "C3 after closing everything every vsock and vhost module unloads" close_all

# --- after all of it -------------------------------------------------------
final_modes() {
    no_vsock_mods && modes_are "${ALL[@]}" && locked init local EBUSY && locked g0 global EBUSY &&
        locked g1 local EBUSY && locked l1 local EPERM
}
check "C3 with the modules out again, every live netns keeps its mode and lock" final_modes
final_reload() {
    modprobe vsock_loopback && lb_works l1 2003 && lb_reset g0 l1 2004 && modes_are "${ALL[@]}"
}
check "C3 a last reload: L2 in l1 works, g0 cannot reach l1, modes unchanged" final_reload
[ "$n" = "$PLAN" ] || echo "# BUG: $n results for a plan of $PLAN"
[ "$failed" = 0 ]
