#!/usr/bin/env bash
# Suite vsockmon (TAP): SPEC K6 with real vsockmon devices. A tap in netns T
# sees a packet of a socket in netns S iff T and S can reach each other
# (same netns, or both global). Each vsockmon device counts the frames it is
# given; loopback traffic runs in one netns at a time.
# init_net's child_ns_mode is never written.
set -euo pipefail

T=$(mktemp -d /tmp/vsockmon.XXXXXX)
NS=()
cleanup() {
    local n
    for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

echo "TAP version 13"
echo "1..6"
if [ ! -r /proc/sys/net/vsock/ns_mode ] || ! ip link add vsockmon_probe type vsockmon 2>/dev/null; then
    for i in 1 2 3 4 5 6; do echo "ok $i - K6 # SKIP needs vsock namespaces and CONFIG_VSOCKMON"; done
    exit 0
fi
ip link del vsockmon_probe

# namespaces: g (global), l (local), plus init_net
ip netns add vmon_g && NS+=(vmon_g)
unshare --net bash -c 'echo local >/proc/sys/net/vsock/child_ns_mode && ip netns add vmon_l'
NS+=(vmon_l)
for n in "" vmon_g vmon_l; do
    ex=()
    [ -z "$n" ] || ex=(ip netns exec "$n")
    "${ex[@]}" ip link add vmon0 type vsockmon
    "${ex[@]}" ip link set vmon0 up
done

# frames NETNS: packets handed to NETNS's vsockmon device so far (the
# device counts every frame it is given in rx_packets; packet sockets on a
# vsockmon device see nothing on this tinyconfig kernel, base included)
frames() {
    local ex=()
    [ "$1" = init ] || ex=(ip netns exec "$1")
    "${ex[@]}" cat /sys/class/net/vmon0/statistics/rx_packets
}

# traffic NETNS PORT: one loopback connection with data inside NETNS
traffic() {
    local ex=()
    [ "$1" = init ] || ex=(ip netns exec "$1")
    "${ex[@]}" timeout 10 nc --vsock -l "$2" >/dev/null &
    local srv=$!
    sleep 0.5
    echo "vsockmon test" | "${ex[@]}" timeout 5 nc --vsock 1 "$2" || true
    wait "$srv" || true
}

n=0
# run traffic in netns $1 while all three taps listen; then check each
round() { # TRAFFIC-NETNS PORT WANT-INIT WANT-G WANT-L
    local src=$1 port=$2 t c want
    for t in init vmon_g vmon_l; do frames "$t" >"$T/$t"; done
    traffic "$src" "$port"
    sleep 0.5
    for t in init vmon_g vmon_l; do
        c=$(($(frames "$t") - $(cat "$T/$t")))
        case $t in init) want=$3 ;; vmon_g) want=$4 ;; vmon_l) want=$5 ;; esac
        if { [ "$want" = yes ] && [ "$c" -gt 0 ]; } || { [ "$want" = no ] && [ "$c" = 0 ]; }; then
            n=$((n + 1)); echo "ok $n - K6 traffic in $src: tap in $t sees it: $want ($c frames)"
        else
            n=$((n + 1)); echo "not ok $n - K6 traffic in $src: tap in $t sees it: want $want, got $c frames"
        fi
    done
}
round vmon_l 3101 no no yes
round init 3102 yes yes no
