# shellcheck shell=bash
# TAP output and the checks that both real-guest suites run (guests.sh,
# guests-debug.sh).  Source it after setting SUITE (the suite's name) and
# NTESTS (its plan), and before scripts/lib-guest.sh's guests start.

n=0
FAILS=0
# ("#" in a description would start a TAP directive: quoted output has them)
ok() { local d=$*; n=$((n + 1)); echo "ok $n - ${d//#/%}"; }
notok() { local d=$*; n=$((n + 1)); FAILS=$((FAILS + 1)); echo "not ok $n - ${d//#/%}"; }
check() { # DESC WANT GOT
    if [ "$2" = "$3" ]; then ok "$1: $3"; else notok "$1: want '$2', got '$3'"; fi
}
diag() { printf '# %s\n' "$*"; }
skip_all() {
    local i
    for i in $(seq $((n + 1)) "$NTESTS"); do echo "ok $i - $SUITE test $i # SKIP $1"; done
    exit 0
}
# a failure that leaves nothing to test: every check not run fails with it
bail() {
    local i
    for i in $(seq $((n + 1)) "$NTESTS"); do echo "not ok $i - $SUITE test $i: not run: $1"; done
    exit 1
}

# G1, two checks: inside guest NAME, a nested local netns (its parent set
# child_ns_mode to local) connecting to the host's CID gets ENETUNREACH
# for STREAM and ESOCKTNOSUPPORT for SEQPACKET, whatever listens there.
guest_check_g1() { # NAME
    local g=$1
    guest_exec "$g" "unshare --net bash -c 'echo local > /proc/sys/net/vsock/child_ns_mode && unshare --net nc --vsock 2 2001' </dev/null 2>&1" || true
    case $GOUT in
    *"Network is unreachable"*) ok "G1 in $g, a local netns connecting to the host: ENETUNREACH" ;;
    *) notok "G1 in $g, a local netns connecting to the host: want ENETUNREACH, got: $GOUT" ;;
    esac
    guest_exec "$g" "unshare --net bash -c 'echo local > /proc/sys/net/vsock/child_ns_mode && unshare --net socat -u - VSOCK-CONNECT:2:2001,socktype=5' </dev/null 2>&1" || true
    case $GOUT in
    *"Socket type not supported"*) ok "G1 in $g, a local netns connecting to the host with SEQPACKET: ESOCKTNOSUPPORT" ;;
    *) notok "G1 in $g, a local netns connecting to the host with SEQPACKET: want ESOCKTNOSUPPORT, got: $GOUT" ;;
    esac
}

# G1, one check: the series' vsock_ns_reassign kselftest inside guest NAME
# (ROUNDS per variant, up to SECS): a socket in a local netns of the guest
# refused the host's CID, then connected to loopback, bound and closed, in
# a loop.  All five variants must pass.
guest_check_reassign() { # NAME ROUNDS SECS
    local g=$1 rounds=$2 secs=$3 t0=$SECONDS tot
    local ra=$ROOT/build/kselftest/vsock/vsock_ns_reassign
    if [ ! -x "$ra" ]; then
        notok "G1 vsock_ns_reassign: $ra not built (scripts/build-kselftest)"
        return
    fi
    guest_exec "$g" "VSOCK_NS_REASSIGN_ROUNDS=$rounds $ra 2>&1" "$secs" || true
    tot=$(grep '^# Totals:' <<<"$GOUT" || true)
    case $tot in
    *" pass:5 fail:0 "*"skip:0 "*) ok "G1 vsock_ns_reassign in $g, $rounds rounds: refused, reconnected to loopback, closed, in a loop ($((SECONDS - t0)) s): $tot" ;;
    *) notok "G1 vsock_ns_reassign in $g: $(tail -n 8 <<<"$GOUT" | tr '\n' ' ')" ;;
    esac
}
