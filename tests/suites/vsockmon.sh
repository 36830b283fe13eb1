#!/usr/bin/env bash
# Suite vsockmon (TAP): SPEC K6 with real vsockmon devices. A tap in netns T
# sees a packet of a socket in netns S iff T and S can reach each other
# (same netns, or both global). Loopback traffic runs in one netns at a time
# (the local one, init_net, the other global one) while a vsockmon device in
# init_net, in a global and in a local netns listens; each round checks every
# tap twice: through the frames the device counts (rx_packets), and through a
# real capture, tcpdump on the device in its netns, whose decode (link-type
# VSOCK) must show the round's port.
# init_net's child_ns_mode is never written.
#
# Packet sockets do see vsockmon frames on this kernel (CONFIG_PACKET=y is
# all they need): the device must be up (the tap is only registered while it
# is), the capture must run in the device's netns (ip netns exec), bound to
# ETH_P_ALL (a packet socket bound to protocol 0 sees nothing), and it must be
# listening before the traffic starts.
#
# Then K6 for unprivileged users (loopback): uid 65534 makes its own user and
# network namespace (unshare -Urn: a global netns owned by an unprivileged
# user namespace) and a vsockmon device in it; host root has one in init_net.
# (a) ten connections in init_net each carry a secret, (b) connections inside
# uid 65534's netns carry another payload. uid 65534's tap must see all of (b)
# and nothing of (a); root's tap sees both (init_net is owned by the initial
# user namespace, and both namespaces are global: M5). The taps are read by
# rx_packets and by a capture: tcpdump for root's; for uid 65534's, a capture
# made by uid 65534 itself, inside its namespaces, by a tiny python3
# AF_PACKET reader that writes a pcap (tcpdump itself cannot capture there:
# as uid 0 of the namespace it always drops privileges, which needs
# setgroups(2), denied in an `unshare -r` namespace). tcpdump then decodes
# that pcap (link-type VSOCK) and the secrets are looked for in its bytes.
# (b) is the control: zero frames of (a) only count once uid 65534's tap has
# shown (b) and root's tap has shown (a). (c) uid 65534 makes its tap drop
# every frame and puts it first among the taps: its traffic must still
# reach root's tap.
set -euo pipefail
export LC_ALL=C

PLAN=23
DEV=k6mon0 # the vsockmon device in each netns
# wait_listening; the unprivileged user's tap (SPEC K6) further down
# shellcheck source=tests/lib/unpriv-tap.sh
. "$(dirname "$0")/../lib/unpriv-tap.sh"
T=$(mktemp -d /tmp/vsockmon.XXXXXX)
NS=()
CAPS=()    # every tcpdump started, stopped on exit
INIT_DEV=  # set once init_net's device exists: deleted on exit
BG=()      # every other background process (K6 unprivileged part)
RDEV=k6rmon0 # root's tap in init_net for the unprivileged part
RDEV_MADE= # set once it exists: deleted on exit
cleanup() {
    local n p
    for p in "${CAPS[@]}" "${BG[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${CAPS[@]}" "${BG[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -z "$RDEV_MADE" ] || ip link del "$RDEV" 2>/dev/null || true
    for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    [ -z "$INIT_DEV" ] || ip link del "$DEV" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

echo "TAP version 13"
echo "1..$PLAN"
if [ ! -r /proc/sys/net/vsock/ns_mode ] || ! ip link add vsockmon_probe type vsockmon 2>/dev/null; then
    for i in $(seq 1 "$PLAN"); do echo "ok $i - K6 # SKIP needs vsock namespaces and CONFIG_VSOCKMON"; done
    exit 0
fi
ip link del vsockmon_probe

# namespaces: g (global), l (local), plus init_net
ip netns add vmon_g && NS+=(vmon_g)
unshare --net bash -c 'echo local >/proc/sys/net/vsock/child_ns_mode && ip netns add vmon_l'
NS+=(vmon_l)
# ns_exec NETNS: NSX = the prefix that runs a command in NETNS (init_net:
# none), so that "${NSX[@]}" CMD & leaves CMD itself in $!
ns_exec() {
    NSX=()
    [ "$1" = init ] || NSX=(ip netns exec "$1")
}
ip link del "$DEV" 2>/dev/null || true # left by an aborted run
for t in init vmon_g vmon_l; do
    ns_exec "$t"
    "${NSX[@]}" ip link add "$DEV" type vsockmon
    [ "$t" != init ] || INIT_DEV=1
    "${NSX[@]}" ip link set "$DEV" up
done

# frames NETNS: packets handed to NETNS's vsockmon device so far (the
# device counts every frame it is given in rx_packets)
frames() {
    ns_exec "$1"
    "${NSX[@]}" cat "/sys/class/net/$DEV/statistics/rx_packets"
}

# traffic NETNS PORT: one loopback connection with data inside NETNS
traffic() {
    ns_exec "$1"
    rm -f "$T/srv.err"
    "${NSX[@]}" timeout 10 nc -v --vsock -l "$2" >/dev/null 2>"$T/srv.err" &
    local srv=$! i
    for i in $(seq 100); do grep -q "Listening on" "$T/srv.err" 2>/dev/null && break; sleep 0.1; done
    echo "vsockmon test" | "${NSX[@]}" timeout 5 nc --vsock 1 "$2" || true
    wait "$srv" || true
}

# --- captures ---------------------------------------------------------------
HAVE_TCPDUMP=1
command -v tcpdump >/dev/null || HAVE_TCPDUMP=0
declare -A CAP
# cap_start NETNS TAG [DEVICE]: tcpdump on NETNS's device ($DEV unless
# given) into $T/TAG.pcap; returns once it listens (its stderr, $T/TAG.err,
# says so and names the link type)
cap_start() {
    ns_exec "$1"
    # -Z root: write the file as root, whatever user tcpdump drops to;
    # --immediate-mode -U: take each packet from the kernel and write it at
    # once (else a TPACKET_V3 block that is not yet retired when SIGINT
    # comes is counted "received by filter" but never written)
    "${NSX[@]}" tcpdump -i "${3:-$DEV}" -nn --immediate-mode -U -Z root -w "$T/$2.pcap" >/dev/null 2>"$T/$2.err" </dev/null &
    CAP[$2]=$!
    CAPS+=("$!")
    wait_listening "$T/$2.err" "${CAP[$2]}"
}
cap_stop() { # TAG: SIGINT (tcpdump flushes and exits), SIGKILL after 10 s
    local p=${CAP[$1]:-} i
    [ -n "$p" ] || return 0
    kill -INT "$p" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
# cap_count TAG PORT: packets of the capture $T/TAG.pcap that involve PORT
# (with the vsock decode: "1.PORT" as source or destination), or every
# packet when tcpdump has no vsock decode; -1 if the capture is unreadable
cap_count() {
    if ! tcpdump -nn -r "$T/$1.pcap" >"$T/$1.txt" 2>"$T/$1.rerr"; then
        echo -1
    elif grep -q "link-type VSOCK" "$T/$1.rerr"; then
        grep -cE "(^| )1\.$2([ ,:]|$)" "$T/$1.txt" || true
    else
        wc -l <"$T/$1.txt"
    fi
}

n=0
result() { # OK|NOT|SKIP TEXT
    n=$((n + 1))
    case $1 in
    OK) echo "ok $n - $2" ;;
    NOT) echo "not ok $n - $2" ;;
    SKIP) echo "ok $n - $2 # SKIP ${3:-}" ;;
    esac
}
seen_ok() { # WANT COUNT
    { [ "$1" = yes ] && [ "$2" -gt 0 ]; } || { [ "$1" = no ] && [ "$2" = 0 ]; }
}
# run traffic in netns $1 while all three taps listen and are captured;
# then check each, by its counter and by its capture
round() { # TRAFFIC-NETNS PORT WANT-INIT WANT-G WANT-L
    local src=$1 port=$2 t c want tag started=1 skip=
    local -A WANT=([init]=$3 [vmon_g]=$4 [vmon_l]=$5)
    for t in init vmon_g vmon_l; do frames "$t" >"$T/$t"; done
    if [ "$HAVE_TCPDUMP" = 1 ]; then
        for t in init vmon_g vmon_l; do
            cap_start "$t" "$port.$t" || { started=0; sed 's/^/#   /' "$T/$port.$t.err"; }
        done
    fi
    traffic "$src" "$port"
    sleep 0.5
    for t in init vmon_g vmon_l; do
        c=$(($(frames "$t") - $(cat "$T/$t")))
        want=${WANT[$t]}
        if seen_ok "$want" "$c"; then
            result OK "K6 traffic in $src: tap in $t sees it: $want ($c frames)"
        else
            result NOT "K6 traffic in $src: tap in $t sees it: want $want, got $c frames"
        fi
    done
    if [ "$HAVE_TCPDUMP" = 1 ]; then
        for t in init vmon_g vmon_l; do cap_stop "$port.$t"; done
    fi
    # the control: the tap in the traffic's own netns must have captured it,
    # else the capture path does not work here and proves nothing
    if [ "$HAVE_TCPDUMP" = 0 ]; then
        skip="tcpdump is not installed"
    elif [ "$started" = 0 ]; then
        skip="tcpdump did not start on a vsockmon device"
    elif [ "$(cap_count "$port.$src" "$port")" -le 0 ]; then
        skip="tcpdump captured nothing on the tap in $src itself (the control)"
    fi
    for t in init vmon_g vmon_l; do
        tag=$port.$t
        want=${WANT[$t]}
        if [ -n "$skip" ]; then
            result SKIP "K6 traffic in $src: tcpdump on the tap in $t captures it: $want" "$skip"
            continue
        fi
        c=$(cap_count "$tag" "$port")
        if [ "$c" -ge 0 ] && seen_ok "$want" "$c"; then
            result OK "K6 traffic in $src: tcpdump on the tap in $t captures it: $want ($c packets of port $port)"
        else
            sed 's/^/#   /' "$T/$tag.err" "$T/$tag.txt" 2>/dev/null | head -n 20 || true
            result NOT "K6 traffic in $src: tcpdump on the tap in $t captures it: want $want, got $c packets of port $port"
        fi
    done
}
round vmon_l 3101 no no yes
round init 3102 yes yes no
round vmon_g 3103 yes yes no

# --- K6 and unprivileged users (loopback) ------------------------------------
UDEV=vmon0 # uid 65534's tap, in its own netns
# READER (python3 -c READER DEVICE > FILE): a packet socket on DEVICE (bound
# to ETH_P_ALL) writing every frame to stdout as a pcap of link type 271
# (LINKTYPE_VSOCK); it says "listening on" on stderr once bound, and ends on
# SIGTERM
READER='
import signal, socket, struct, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 3))
o = sys.stdout.buffer
o.write(struct.pack("=IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 262144, 271))
o.flush()
print("listening on", sys.argv[1], file=sys.stderr, flush=True)
while True:
    d = s.recv(262144)
    t = time.time()
    o.write(struct.pack("=IIII", int(t), int(t % 1 * 1e6), len(d), len(d)) + d)
    o.flush()
'
SA=K6-init-secret-$$-$RANDOM # the payload of (a), in init_net
SB=K6-own-payload-$$-$RANDOM # the payload of (b), in uid 65534's netns
K6_SKIP=
unpriv_tap_start || K6_SKIP=$UNPRIV_TAP_ERR
# rx_root: frames handed to root's tap so far; -1 if unknown (rx_user: the
# same for uid 65534's)
rx_root() { cat "/sys/class/net/$RDEV/statistics/rx_packets" 2>/dev/null || echo -1; }
# k6_traffic init|user PORT SECRET CLIENTS: a listener on PORT that sends
# SECRET to each connection, in init_net (as root) or in uid 65534's netns
# (as uid 65534), and CLIENTS clients (CID 1) in the same netns; prints how
# many clients got SECRET
k6_traffic() {
    local -a X=()
    local srv i got=0
    [ "$1" = init ] || X=("${UX[@]}")
    rm -f "$T/k6srv.err"
    "${X[@]}" timeout 120 ncat -v --vsock -l -k "$2" -c "echo $3" >/dev/null 2>"$T/k6srv.err" </dev/null &
    srv=$!
    for i in $(seq 100); do grep -q "Listening on" "$T/k6srv.err" 2>/dev/null && break; sleep 0.1; done
    for i in $(seq "$4"); do
        if "${X[@]}" timeout 10 ncat --vsock --recv-only 1 "$2" </dev/null 2>/dev/null | grep -qxF "$3"; then
            got=$((got + 1))
        fi
    done
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
    echo "$got"
}
# settle: wait until root's tap has stopped counting (the loopback worker
# delivers to the taps asynchronously; resets follow the closes)
settle() {
    local a b i
    a=$(rx_root)
    for i in $(seq 20); do
        sleep 0.5
        b=$(rx_root)
        [ "$a" != "$b" ] || break
        a=$b
    done
}
# secrets TAG STRING: copies of STRING in the bytes of $T/TAG.pcap
secrets() { { grep -aoF "$2" "$T/$1.pcap" 2>/dev/null || true; } | wc -l; }

UMODE="?" RCAP=0 UCAP=0 UREAD=
if [ -z "$K6_SKIP" ]; then
    UMODE=$("${UX[@]}" cat /proc/sys/net/vsock/ns_mode 2>/dev/null || echo "?")
    ip link del "$RDEV" 2>/dev/null || true # left by an aborted run
    ip link add "$RDEV" type vsockmon
    RDEV_MADE=1
    ip link set "$RDEV" up
    if [ "$HAVE_TCPDUMP" = 1 ]; then
        if cap_start init k6root "$RDEV"; then RCAP=1; else sed 's/^/#   /' "$T/k6root.err"; fi
    fi
    if unpriv_reader_start "$READER" "$T/k6user.pcap"; then UCAP=1; fi
    r0=$(rx_root) u0=$(rx_user)
    GOT_A=$(k6_traffic init 3201 "$SA" 10) # (a)
    settle
    r1=$(rx_root) u1=$(rx_user)
    GOT_B=$(k6_traffic user 3202 "$SB" 3) # (b)
    settle
    r2=$(rx_root) u2=$(rx_user)
    [ "$RCAP" = 0 ] || cap_stop k6root
    if [ -n "$UREAD" ]; then
        kill -TERM "$UREAD" 2>/dev/null || true
        wait "$UREAD" 2>/dev/null || true
    fi
    # frames of (a) and (b) on each tap, by counter
    RA=$((r1 - r0)) RB=$((r2 - r1)) UA=$((u1 - u0)) UB=$((u2 - u1))
    if [ "$r0" = -1 ] || [ "$r2" = -1 ]; then RA=-1 RB=-1; fi
    if [ "$u0" = -1 ] || [ "$u2" = -1 ]; then UA=-1 UB=-1; fi
    # and by capture: packets of the port, copies of the secret (n/a: no
    # tcpdump or python3 here; -1: the capture did not start)
    RPA=n/a RPB=n/a RSA=n/a RSB=n/a UPA=n/a UPB=n/a USA=n/a USB=n/a
    [ "$HAVE_TCPDUMP" = 0 ] || RPA=-1 RPB=-1 RSA=-1 RSB=-1
    [ -z "$PY" ] || UPA=-1 UPB=-1 USA=-1 USB=-1
    if [ "$RCAP" = 1 ]; then
        RPA=$(cap_count k6root 3201) RPB=$(cap_count k6root 3202)
        RSA=$(secrets k6root "$SA") RSB=$(secrets k6root "$SB")
    fi
    if [ "$UCAP" = 1 ]; then
        UPA=$(cap_count k6user 3201) UPB=$(cap_count k6user 3202)
        USA=$(secrets k6user "$SA") USB=$(secrets k6user "$SB")
    fi
    echo "# K6 unprivileged: netns of uid 65534: ns_mode $UMODE; clients that got the secret: (a) $GOT_A/10, (b) $GOT_B/3"
    echo "# K6 unprivileged: root's tap: (a) $RA frames, $RPA packets of port 3201, $RSA secrets; (b) $RB frames, $RPB packets of port 3202, $RSB payloads"
    echo "# K6 unprivileged: uid 65534's tap: (a) $UA frames, $UPA packets of port 3201, $USA secrets; (b) $UB frames, $UPB packets of port 3202, $USB payloads"
fi
pos() { [ "$1" != n/a ] && [ "$1" -gt 0 ]; }      # a count that saw something
none() { [ "$1" = n/a ] || [ "$1" = 0 ]; }        # a count that saw nothing (or is not there)
seen() { [ "$1" = n/a ] || [ "$1" -gt 0 ]; }      # a count that saw something (or is not there)

# 1. the control: uid 65534's tap works, for its own netns
name=K6_unprivileged_tap_sees_own_netns
if [ -n "$K6_SKIP" ]; then
    result SKIP "$name" "$K6_SKIP"
    U_CTL=0
elif [ "$GOT_B" = 0 ]; then
    result NOT "$name: no traffic: no client in uid 65534's netns got the payload"
    U_CTL=0
elif pos "$UB" && seen "$UPB" && seen "$USB"; then
    result OK "$name ($UB frames, $UPB packets of port 3202, payload read $USB times by uid 65534)"
    U_CTL=1
else
    result NOT "$name: want frames and the payload, got $UB frames, $UPB packets of port 3202, payload read $USB times"
    U_CTL=0
fi

# 2. the hole: nothing of init_net reaches uid 65534's tap
name=K6_unprivileged_tap_sees_no_init_net_traffic
if [ -n "$K6_SKIP" ]; then
    result SKIP "$name" "$K6_SKIP"
elif [ "$GOT_A" = 0 ]; then
    result NOT "$name: no traffic: no client in init_net got the secret"
elif [ "$U_CTL" = 0 ]; then
    result SKIP "$name" "the control failed: uid 65534's tap did not show its own netns's traffic, so seeing nothing of init_net proves nothing"
elif ! pos "$RA"; then
    result SKIP "$name" "root's tap in init_net counted no frames of the init_net traffic ($RA), so seeing none on uid 65534's tap proves nothing"
elif [ "$UA" = 0 ] && none "$UPA" && none "$USA"; then
    result OK "$name (0 frames, $UPA packets of port 3201, $USA secrets; root's tap: $RA frames)"
else
    result NOT "$name: uid 65534's tap got $UA frames of init_net traffic, $UPA packets of port 3201, the secret $USA times (root's tap: $RA frames)"
fi

# 3. root's tap sees init_net and the global netns of uid 65534 (M5)
name=K6_root_tap_sees_init_and_unprivileged_netns
if [ -n "$K6_SKIP" ]; then
    result SKIP "$name" "$K6_SKIP"
elif [ "$GOT_A" = 0 ] || [ "$GOT_B" = 0 ]; then
    result NOT "$name: no traffic: clients that got the secret: init_net $GOT_A/10, uid 65534's netns $GOT_B/3"
elif [ "$UMODE" != global ]; then
    result NOT "$name: uid 65534's netns should be global (init_net's child_ns_mode is never written), ns_mode is $UMODE"
elif pos "$RA" && pos "$RB" && seen "$RPA" && seen "$RPB" && seen "$RSA" && seen "$RSB"; then
    result OK "$name (init_net: $RA frames, $RPA packets, $RSA secrets; uid 65534's netns: $RB frames, $RPB packets, $RSB payloads)"
else
    result NOT "$name: init_net: $RA frames, $RPA packets, $RSA secrets; uid 65534's netns: $RB frames, $RPB packets, $RSB payloads; want all > 0"
fi

# 4. a tap that fails does not hide packets from the taps after it: uid
# 65534 makes its tap drop every frame (a pfifo of limit 0) and brings it
# up again, which puts it first in the kernel's list of taps; traffic in
# its netns must still reach root's tap, registered earlier
name=K6_failing_unprivileged_tap_hides_nothing
if [ -n "$K6_SKIP" ]; then
    result SKIP "$name" "$K6_SKIP"
elif ! "${UX[@]}" sh -c "ip link set $UDEV down && tc qdisc replace dev $UDEV root pfifo limit 0 && ip link set $UDEV up" 2>"$T/k6tc.err"; then
    result NOT "$name: uid 65534 could not put a dropping qdisc on its tap: $(head -c 200 "$T/k6tc.err")"
else
    r3=$(rx_root)
    GOT_C=$(k6_traffic user 3203 "$SB" 3) # (c)
    settle
    r4=$(rx_root)
    RC=$((r4 - r3))
    UDROP=$({ "${UX[@]}" tc -s qdisc show dev "$UDEV" || true; } | sed -n 's/.*(dropped \([0-9]*\).*/\1/p' | head -n 1)
    echo "# K6 failing tap: clients that got the payload: $GOT_C/3; uid 65534's tap dropped ${UDROP:-?} frames, root's tap got $RC"
    if [ "$GOT_C" = 0 ]; then
        result NOT "$name: no traffic: no client in uid 65534's netns got the payload"
    elif [ "${UDROP:-0}" -le 0 ]; then
        result NOT "$name: uid 65534's tap dropped no frame (${UDROP:-no qdisc statistics}): the failing tap was not exercised"
    elif [ "$RC" -ge "$UDROP" ]; then
        # root's tap may see all of uid 65534's netns: every frame the
        # failing tap dropped must have reached it
        result OK "$name (uid 65534's tap dropped $UDROP frames; root's tap got $RC)"
    else
        result NOT "$name: uid 65534's tap dropped $UDROP frames and root's tap got $RC: the failing tap hid them"
    fi
fi

left=""
for p in "${CAPS[@]}"; do if kill -0 "$p" 2>/dev/null; then left+=" $p"; fi; done
if [ "$HAVE_TCPDUMP" = 0 ]; then
    result SKIP "K6 no tcpdump left behind" "tcpdump is not installed"
elif [ -z "$left" ] && ! pgrep -x tcpdump >/dev/null; then
    result OK "K6 no tcpdump left behind"
else
    pgrep -a -x tcpdump | sed 's/^/#   /' || true
    result NOT "K6 no tcpdump left behind:$left"
fi
[ "$n" = "$PLAN" ] || echo "# BUG: $n results for a plan of $PLAN"
