# shellcheck shell=bash disable=SC2034 # GOUT, GUEST_ERR, ...: for the caller
# Sourced (bash) by scripts/demo-guest and tests/guests/guests.sh, inside a
# scripts/vm-run test VM: real nested guests (scripts/vm-run --guest), each a
# QEMU microvm whose vhost-vsock device is opened in a given netns, driven
# over its virtio console by a one-line command loop.
#
#   guest_start NAME NETNS|- CID   boot it (NETNS "-" = init_net); 0 once its
#                                  command loop answers, 1 if QEMU or the boot
#                                  failed (GUEST_ERR says why)
#   guest_boot NAME NETNS|- CID    the same in two halves, to boot several
#   guest_wait NAME                guests at once
#   guest_exec NAME CMD [SECS]     run one shell line in the guest; its exit
#                                  status is ours, its output in GOUT
#   guest_listen NAME PORT FILE [CMD...]
#                                  start "nc --vsock -l PORT" (or CMD, which
#                                  runs such an nc) in the guest, its output
#                                  to FILE; 0 once some nc listens on PORT
#   guest_stop NAME                end the command loop and wait for vm-run:
#                                  its status (125: a splat in the guest log)
#   guest_kill NAME                kill it (QEMU exits: the device is released)
#
# The caller provides GUEST_DIR (a writable directory) and may set
# GUEST_BOOT_TIMEOUT (s, default 600).  Commands a test runs in the guest
# must not write to their stdout after they return (background listeners
# write to files): the loop's "@@done STATUS" lines frame each command's
# output.
GUEST_ROOT=${GUEST_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
declare -A GUEST_PID=() GUEST_FD=() GUEST_T0=()
GUEST_ERR=
GOUT=
# The command loop: bash in the guest, reading "ID CMD" lines; each CMD runs
# with stdin from /dev/null and is answered by "@@done ID STATUS" on a line
# of its own.  Helper: wait_vsock_listen PORT, up to 120 s, until some nc in
# some netns listens on PORT (ss only shows its own netns: it runs in each).
# shellcheck disable=SC2016 # expanded in the guest
GUEST_LOOP='wait_vsock_listen() { local t=$((SECONDS + 120)) p; while [ $SECONDS -lt $t ]; do for p in $(pidof nc ncat); do nsenter --net=/proc/$p/ns/net ss -Hl --vsock 2>/dev/null | grep -q ":$1\b" && return 0; done; sleep 0.5; done; return 1; }
echo @@ready; while IFS= read -r l; do eval "${l#* }" </dev/null; printf "\n@@done %s %s\n" "${l%% *}" "$?"; done'

# The QEMU command line vm-run ran for a guest (it prints it on stderr).
guest_qemu_line() { # NAME
    sed -n 's/^vm-run: qemu-system/qemu-system/p' "${GUEST_DIR:?}/$1.err" | head -n 1
}

guest_start() { # NAME NETNS|- CID
    guest_boot "$@" && guest_wait "$1"
}

guest_boot() { # NAME NETNS|- CID
    local name=$1 ns=$2 cid=$3 pre=() fd
    [ "$ns" = - ] || pre=(ip netns exec "$ns")
    GUEST_ERR=
    : "${GUEST_DIR:?GUEST_DIR: a writable directory}"
    rm -f "$GUEST_DIR/$name".{in,out,err}
    mkfifo "$GUEST_DIR/$name.in"
    exec {fd}<>"$GUEST_DIR/$name.in"
    GUEST_FD[$name]=$fd
    "${pre[@]}" env VM_SHOW_QEMU=1 "$GUEST_ROOT/scripts/vm-run" --guest --timeout 3000 \
        --device "vhost-vsock-device,guest-cid=$cid" -- bash -c "$GUEST_LOOP" \
        <&"$fd" >"$GUEST_DIR/$name.out" 2>"$GUEST_DIR/$name.err" &
    GUEST_PID[$name]=$!
    GUEST_T0[$name]=$SECONDS
}

guest_wait() { # NAME
    local name=$1 t0=${GUEST_T0[$1]}
    [ -n "${GUEST_PID[$name]:-}" ] || return 1
    while ! grep -q '^@@ready' "$GUEST_DIR/$name.out" 2>/dev/null; do
        if ! kill -0 "${GUEST_PID[$name]}" 2>/dev/null; then
            wait "${GUEST_PID[$name]}" 2>/dev/null || true
            GUEST_ERR=$(tr -d '\r' <"$GUEST_DIR/$name.err" | grep -v '^  |\|^vm-run: qemu-system' | head -n 3)
            unset "GUEST_PID[$name]"
            local fd=${GUEST_FD[$name]}
            exec {fd}>&-
            return 1
        fi
        if [ $((SECONDS - t0)) -ge "${GUEST_BOOT_TIMEOUT:-600}" ]; then
            GUEST_ERR="no command loop after ${GUEST_BOOT_TIMEOUT:-600} s"
            guest_kill "$name"
            return 1
        fi
        sleep 0.5
    done
    GUEST_BOOT_SECS=$((SECONDS - t0))
    return 0
}

guest_exec() { # NAME CMD [SECS]
    local name=$1 cmd=$2 secs=${3:-300} id before t0 st
    if [ -z "${GUEST_PID[$name]:-}" ]; then GOUT="guest $name is not running"; return 125; fi
    case $cmd in *$'\n'*) GOUT="guest_exec: one line only: $cmd"; return 2 ;; esac
    # a unique id: a late answer to an earlier (timed-out) command, or a
    # call from a subshell, can never be taken for this one's
    id=$BASHPID.$RANDOM.$SECONDS
    before=$(wc -l <"$GUEST_DIR/$name.out")
    printf '%s %s\n' "$id" "$cmd" >&"${GUEST_FD[$name]}"
    t0=$SECONDS
    until st=$(grep -m1 "^@@done $id " "$GUEST_DIR/$name.out"); do
        if ! kill -0 "${GUEST_PID[$name]}" 2>/dev/null; then
            GOUT="guest $name exited: $(tail -n 3 "$GUEST_DIR/$name.err" | tr '\n' ' ')"
            return 125
        fi
        if [ $((SECONDS - t0)) -ge "$secs" ]; then
            GOUT="guest $name: no answer to '$cmd' after $((SECONDS - t0)) s"
            return 124
        fi
        sleep 0.2
    done
    GOUT=$(tail -n +"$((before + 1))" "$GUEST_DIR/$name.out" | sed "/^@@done $id /q" |
        grep -v '^@@done ' | tr -d '\r')
    st=${st%$'\r'}
    return "${st##* }"
}

guest_listen() { # NAME PORT FILE [CMD...]
    local name=$1 port=$2 file=$3 c
    shift 3
    if [ $# = 0 ]; then c="nc --vsock -l $port"; else c=$(printf '%q ' "$@"); fi
    # One listener per guest at a time: an older nc keeps its listening
    # socket until it exits (even after its one connection), so it would
    # answer the wait and then vanish.  Kill it and wait until it is gone.
    guest_exec "$name" "kill \$(pidof nc ncat) 2>/dev/null; while pidof nc ncat >/dev/null; do sleep 0.2; done; $c >$file 2>&1 </dev/null & wait_vsock_listen $port"
}

guest_stop() { # NAME: up to 120 s for a clean exit, then kill (124)
    local name=$1 rc=0 fd
    [ -n "${GUEST_PID[$name]:-}" ] || return 0
    printf 'x exit 0\n' >&"${GUEST_FD[$name]}"
    for _ in $(seq 600); do kill -0 "${GUEST_PID[$name]}" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "${GUEST_PID[$name]}" 2>/dev/null; then
        guest_kill "$name"
        return 124
    fi
    wait "${GUEST_PID[$name]}" || rc=$?
    unset "GUEST_PID[$name]"
    fd=${GUEST_FD[$name]}
    exec {fd}>&-
    return "$rc"
}

guest_kill() { # NAME
    local name=$1 p
    [ -n "${GUEST_PID[$name]:-}" ] || return 0
    p=${GUEST_PID[$name]}
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "GUEST_PID[$name]"
    local fd=${GUEST_FD[$name]}
    exec {fd}>&-
}

guest_kill_all() {
    local n
    for n in "${!GUEST_PID[@]}"; do guest_kill "$n"; done
}
