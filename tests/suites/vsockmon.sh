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
set -euo pipefail
export LC_ALL=C

PLAN=19
DEV=k6mon0 # the vsockmon device in each netns
T=$(mktemp -d /tmp/vsockmon.XXXXXX)
NS=()
CAPS=()    # every tcpdump started, stopped on exit
INIT_DEV=  # set once init_net's device exists: deleted on exit
cleanup() {
    local n p
    for p in "${CAPS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${CAPS[@]}"; do wait "$p" 2>/dev/null || true; done
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
# cap_start NETNS TAG: tcpdump on NETNS's device into $T/TAG.pcap; returns
# once it listens (its stderr, $T/TAG.err, says so and names the link type)
cap_start() {
    local i
    ns_exec "$1"
    # -Z root: write the file as root, whatever user tcpdump drops to;
    # --immediate-mode -U: take each packet from the kernel and write it at
    # once (else a TPACKET_V3 block that is not yet retired when SIGINT
    # comes is counted "received by filter" but never written)
    "${NSX[@]}" tcpdump -i "$DEV" -nn --immediate-mode -U -Z root -w "$T/$2.pcap" >/dev/null 2>"$T/$2.err" </dev/null &
    CAP[$2]=$!
    CAPS+=("$!")
    for i in $(seq 100); do
        grep -q "listening on" "$T/$2.err" 2>/dev/null && return 0
        kill -0 "${CAP[$2]}" 2>/dev/null || break
        sleep 0.2
    done
    return 1
}
cap_stop() { # TAG: SIGINT (tcpdump flushes and exits), SIGKILL after 10 s
    local p=${CAP[$1]:-} i
    [ -n "$p" ] || return 0
    kill -INT "$p" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
# cap_count TAG PORT: packets of the capture that involve PORT (with the
# vsock decode: "1.PORT" as source or destination), or every packet when
# tcpdump has no vsock decode; -1 if the capture is unreadable
cap_count() {
    if ! tcpdump -nn -r "$T/$1.pcap" >"$T/$1.txt" 2>/dev/null; then
        echo -1
    elif grep -q "link-type VSOCK" "$T/$1.err"; then
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
