# shellcheck shell=bash
# Sourced by tests/suites/vsockmon.sh and tests/compat/c1-baseline.sh (SPEC
# K6): uid 65534 makes a user+net namespace (unshare -Urn) with a vsockmon
# device in it, as any user of a Debian host can.
#
# The caller sets T (a temporary directory), BG (an array of background
# pids it kills at exit) and UDEV (the device name), then calls
# unpriv_tap_start.

ASU=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
PY=/usr/bin/python3 # not a pyenv shim under /root: uid 65534 runs it
[ -x "$PY" ] || PY=
UX=()
UNPRIV_TAP_ERR=

# unpriv_tap_start: start the holder, which makes the namespaces and the tap
# and then sleeps there so that everything else can nsenter it (the tap lives
# as long as the netns). 0 once the tap is up; sets HOLDER and UX, the
# command prefix that runs as uid 65534 in those namespaces
# (--preserve-credentials: nsenter's own setgroups(2) is denied there; $! of
# "${UX[@]}" CMD & is CMD itself). Non-zero with the reason in
# UNPRIV_TAP_ERR. Call it directly, not in $(...): it sets variables.
unpriv_tap_start() {
    "${ASU[@]}" unshare -Urn sh -c \
        "ip link add $UDEV type vsockmon && ip link set $UDEV up && echo ready && exec sleep 3600" \
        >"$T/k6holder.out" 2>&1 </dev/null &
    HOLDER=$!
    BG+=("$HOLDER")
    for _ in $(seq 100); do
        grep -q ready "$T/k6holder.out" 2>/dev/null && break
        kill -0 "$HOLDER" 2>/dev/null || break
        sleep 0.2
    done
    if grep -q ready "$T/k6holder.out" 2>/dev/null; then
        UX=("${ASU[@]}" nsenter -t "$HOLDER" -U -n --preserve-credentials)
        return 0
    fi
    # shellcheck disable=SC2034 # read by the sourcing script
    UNPRIV_TAP_ERR="uid 65534 could not make a vsockmon device in an unshare -Urn namespace: $(tr '\n' ' ' <"$T/k6holder.out" | head -c 200)"
    return 1
}

# rx_user: frames handed to uid 65534's tap so far (read by uid 65534 from
# /proc/net/dev in its netns); -1 if unknown
rx_user() {
    local v
    v=$("${UX[@]}" cat /proc/net/dev 2>/dev/null | sed -n "s/^ *$UDEV: *//p" | awk '{ print $2 }') || true
    echo "${v:--1}"
}

# unpriv_reader_start PROGRAM OUT: run the python3 PROGRAM (given UDEV as its
# argument) as uid 65534 in its namespaces with stdout to OUT; PROGRAM says
# "listening on" on stderr once its packet socket is bound. 0 once it is;
# sets UREAD to its pid. Non-zero (its stderr shown as TAP comments) if
# python3 is missing or the program did not start.
unpriv_reader_start() {
    UREAD=
    [ -n "$PY" ] || return 1
    "${UX[@]}" "$PY" -c "$1" "$UDEV" >"$2" 2>"$T/k6user.err" </dev/null &
    UREAD=$!
    BG+=("$UREAD")
    wait_listening "$T/k6user.err" "$UREAD" && return 0
    sed 's/^/#   /' "$T/k6user.err"
    UREAD=
    return 1
}

# wait_listening FILE PID: 0 once FILE (the stderr of a capture, tcpdump or
# a reader above) says "listening on"; 1 if PID dies first or after 20 s
wait_listening() {
    for _ in $(seq 100); do
        grep -q "listening on" "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.2
    done
    grep -q "listening on" "$1" 2>/dev/null
}
