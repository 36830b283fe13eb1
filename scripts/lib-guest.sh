# shellcheck shell=bash disable=SC2034 # GOUT, GUEST_ERR, ...: for the caller
# Sourced (bash) by scripts/demo-guest, tests/guests/guests.sh and
# tests/guests/guests-debug.sh, inside a scripts/vm-run test VM: real nested
# guests (scripts/vm-run --guest), each a QEMU microvm whose vhost-vsock
# device is opened in a given netns, driven over its virtio console by a
# one-line command loop.
#
#   guest_start NAME NETNS|- CID [OPTION...]
#                                  boot it (NETNS "-" = init_net; OPTIONs for
#                                  vm-run, as --net); 0 once its command loop
#                                  answers, 1 if QEMU or the boot failed
#                                  (GUEST_ERR says why)
#   guest_boot NAME NETNS|- CID [OPTION...]
#   guest_wait NAME                the same in two halves, to boot several
#                                  guests at once
#   guest_exec NAME CMD [SECS]     run one shell line in the guest (up to
#                                  SECS, 300): its exit status is ours, its
#                                  output in GOUT; 124 on timeout, 125 when
#                                  the guest is gone, 2 for more than one
#                                  line or a call from a subshell
#   guest_listen NAME PORT FILE [CMD...]
#                                  start "nc -v --vsock -l PORT" in the guest,
#                                  data to FILE, its messages to FILE.log, or
#                                  CMD (which runs such an nc, without -v),
#                                  all to FILE; 0 once it listens
#   guest_stop NAME [SECS]         end the command loop and wait up to SECS
#                                  (120) for vm-run: its status (125: a
#                                  splat in the guest log, 124: killed)
#   guest_kill NAME                kill it (QEMU exits: the device is released)
#
# The caller provides GUEST_DIR (a writable directory) and may set
# GUEST_BOOT_TIMEOUT (s, default 600).  Commands a test runs in the guest
# must not write to their stdout after they return (background listeners
# write to files): the loop's "@@done STATUS" lines frame each command's
# output.
GUEST_ROOT=${GUEST_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
declare -A GUEST_PID=() GUEST_FD=() GUEST_RFD=() GUEST_PART=() GUEST_T0=()
GUEST_ERR=
GOUT=
# The command loop: bash in the guest, reading "ID CMD" lines; each CMD runs
# with stdin from /dev/null and is answered by "@@done ID STATUS" on a line
# of its own.  Helpers for CMD, each waiting up to 120 s:
#   listen_vsock PORT FILE [NC-OPTION...]
#                         empty FILE.log, start "nc -v --vsock -l
#                         [NC-OPTION...] PORT" in the background (data
#                         to FILE, messages to FILE.log) and
#                         wait_listening FILE.log
#   listen_seqpacket PORT FILE
#                         the same for SOCK_SEQPACKET, with socat: every
#                         connection's messages appended to FILE, socat's
#                         own (-d -d) to FILE.log
#   wait_listening FILE   until FILE (the stderr of an "nc -v ... -l" or a
#                         "socat -d -d VSOCK-LISTEN") says it listens: bash
#                         builtins only
#   wait_vsock_listen PORT
#                         until some nc in some netns listens on PORT (ss
#                         only shows its own netns: it runs in each); slow
#                         (ss and nsenter take seconds to start here)
# shellcheck disable=SC2016 # expanded in the guest
GUEST_LOOP='listen_vsock() { local p=$1 f=$2; shift 2; : >"$f.log"; nc -v --vsock -l "$@" "$p" >"$f" 2>"$f.log" </dev/null & wait_listening "$f.log"; }
listen_seqpacket() { local p=$1 f=$2; : >"$f" && : >"$f.log"; socat -d -d -u VSOCK-LISTEN:"$p",socktype=5,fork STDOUT >>"$f" 2>"$f.log" </dev/null & wait_listening "$f.log"; }
wait_listening() { local t=$((SECONDS + 120)) x; while [ $SECONDS -lt $t ]; do while IFS= read -r x; do case $x in *"Ncat: Listening on"* | *" listening on AF=40 "*) return 0 ;; esac; done <"$1"; sleep 0.3; done; return 1; }
wait_vsock_listen() { local t=$((SECONDS + 120)) p; while [ $SECONDS -lt $t ]; do for p in $(pidof nc ncat); do nsenter --net=/proc/$p/ns/net ss -Hl --vsock 2>/dev/null | grep -q ":$1\b" && return 0; done; sleep 0.5; done; return 1; }
echo @@ready; while IFS= read -r l; do eval "${l#* }" </dev/null; printf "\n@@done %s %s\n" "${l%% *}" "$?"; done'

# The host side reads each guest's output file through a file descriptor of
# its own, line by line, with bash builtins only: in the test VM every fork
# and exec costs a fifth of a second.  A line still being written is kept in
# GUEST_PART until its end arrives.
guest_read_line() { # NAME: 0 and GLINE = the next complete line, 1 if none yet
    local part
    if IFS= read -r part <&"${GUEST_RFD[$1]}"; then
        GLINE=${GUEST_PART[$1]:-}$part
        GLINE=${GLINE%$'\r'}
        GUEST_PART[$1]=
        return 0
    fi
    GUEST_PART[$1]=${GUEST_PART[$1]:-}$part
    return 1
}

# sleep without a fork: a read that times out on a FIFO nobody writes to
# (sleep(1) when that FIFO cannot be made)
guest_nap() { # SECONDS
    if [ -z "${GUEST_TICK:-}" ]; then
        { mkfifo "${GUEST_DIR:?}/.tick" 2>/dev/null || [ -p "$GUEST_DIR/.tick" ]; } &&
            exec {GUEST_TICK}<>"$GUEST_DIR/.tick" || GUEST_TICK=none
    fi
    if [ "$GUEST_TICK" = none ]; then
        sleep "$1"
    else
        read -r -t "$1" -u "$GUEST_TICK" _ || true
    fi
}

# The QEMU command line vm-run ran for a guest (it prints it on stderr).
guest_qemu_line() { # NAME
    sed -n 's/^vm-run: qemu-system/qemu-system/p' "${GUEST_DIR:?}/$1.err" | head -n 1
}

guest_start() { # NAME NETNS|- CID [VM-RUN-OPTION...]
    guest_boot "$@" && guest_wait "$1"
}

guest_boot() { # NAME NETNS|- CID [VM-RUN-OPTION...]
    local name=$1 ns=$2 cid=$3 pre=() fd rfd
    shift 3
    [ "$ns" = - ] || pre=(ip netns exec "$ns")
    GUEST_ERR=
    : "${GUEST_DIR:?GUEST_DIR: a writable directory}"
    rm -f "$GUEST_DIR/$name".{in,out,err}
    mkfifo "$GUEST_DIR/$name.in"
    : >"$GUEST_DIR/$name.out"
    exec {fd}<>"$GUEST_DIR/$name.in" {rfd}<"$GUEST_DIR/$name.out"
    GUEST_FD[$name]=$fd
    GUEST_RFD[$name]=$rfd
    GUEST_PART[$name]=
    # in a subshell that first closes every descriptor of the guests (this
    # one's too: its input is a copy), so that no QEMU holds another's
    (
        for f in "${GUEST_FD[@]}" "${GUEST_RFD[@]}" "${GUEST_TICK:-}"; do
            [[ $f != [0-9]* ]] || exec {f}>&-
        done
        exec "${pre[@]}" env VM_SHOW_QEMU=1 "$GUEST_ROOT/scripts/vm-run" --guest --timeout 3000 \
            --device "vhost-vsock-device,guest-cid=$cid" "$@" -- bash -c "$GUEST_LOOP"
    ) <&"$fd" >>"$GUEST_DIR/$name.out" 2>"$GUEST_DIR/$name.err" &
    GUEST_PID[$name]=$!
    GUEST_T0[$name]=$SECONDS
}

# forget a guest whose vm-run has ended: its PID and descriptors
guest_forget() { # NAME
    local fd=${GUEST_FD[$1]:-} rfd=${GUEST_RFD[$1]:-}
    unset "GUEST_PID[$1]" "GUEST_FD[$1]" "GUEST_RFD[$1]" "GUEST_PART[$1]" "GUEST_T0[$1]"
    [ -z "$fd" ] || exec {fd}>&-
    [ -z "$rfd" ] || exec {rfd}<&-
}

guest_wait() { # NAME
    local name=$1 t0=${GUEST_T0[$1]:-$SECONDS}
    [ -n "${GUEST_PID[$name]:-}" ] || return 1
    while :; do
        while guest_read_line "$name"; do
            [ "$GLINE" != @@ready ] || break 2
        done
        if ! kill -0 "${GUEST_PID[$name]}" 2>/dev/null; then
            wait "${GUEST_PID[$name]}" 2>/dev/null || true
            GUEST_ERR=$(tr -d '\r' <"$GUEST_DIR/$name.err" | grep -v '^  |\|^vm-run: qemu-system' | head -n 3)
            guest_forget "$name"
            return 1
        fi
        if [ $((SECONDS - t0)) -ge "${GUEST_BOOT_TIMEOUT:-600}" ]; then
            GUEST_ERR="no command loop after ${GUEST_BOOT_TIMEOUT:-600} s"
            guest_kill "$name"
            return 1
        fi
        guest_nap 0.5
    done
    GUEST_BOOT_SECS=$((SECONDS - t0))
    return 0
}

guest_exec() { # NAME CMD [SECS]
    local name=$1 cmd=$2 secs=${3:-300} id t0 out='' dead=0
    if [ -z "${GUEST_PID[$name]:-}" ]; then GOUT="guest $name is not running"; return 125; fi
    case $cmd in *$'\n'*) GOUT="guest_exec: one line only: $cmd"; return 2 ;; esac
    # The reader's file offset is shared with subshells, its partial line
    # (GUEST_PART) is not: a call from a subshell would lose lines.
    if [ "$BASHPID" != "$$" ]; then GOUT="guest_exec: not from a subshell"; return 2; fi
    # what the guest wrote since the last answer is not this command's
    while guest_read_line "$name"; do :; done
    # a unique id: a late answer to an earlier (timed-out) command can
    # never be taken for this one's
    id=$BASHPID.$RANDOM.$SECONDS
    printf '%s %s\n' "$id" "$cmd" >&"${GUEST_FD[$name]}"
    t0=$SECONDS
    while :; do
        while guest_read_line "$name"; do
            case $GLINE in
            "@@done $id "*)
                # the loop's "\n@@done": drop the newlines it added
                while [ "${out%$'\n'}" != "$out" ]; do out=${out%$'\n'}; done
                GOUT=$out
                return "${GLINE##* }"
                ;;
            @@done\ *) ;; # the answer to an earlier, timed-out command
            *) out+=$GLINE$'\n' ;;
            esac
        done
        if [ "$dead" = 1 ]; then
            GOUT="guest $name exited: $(tail -n 3 "$GUEST_DIR/$name.err" | tr '\n' ' ')"
            return 125
        fi
        # once more through the file after vm-run has gone: its last lines
        if ! kill -0 "${GUEST_PID[$name]}" 2>/dev/null; then dead=1; continue; fi
        if [ $((SECONDS - t0)) -ge "$secs" ]; then
            GOUT="guest $name: no answer to '$cmd' after $((SECONDS - t0)) s"
            return 124
        fi
        guest_nap 0.1
    done
}

guest_listen() { # NAME PORT FILE [CMD...]
    local name=$1 port=$2 file=$3 c
    shift 3
    if [ $# = 0 ]; then
        # -v: ncat says "Listening on" on stderr once it listens
        c="listen_vsock $port $file"
    else
        c="$(printf '%q ' "$@") >$file 2>&1 </dev/null & wait_vsock_listen $port"
    fi
    # One listener per guest at a time: an older nc keeps its listening
    # socket until it exits (even after its one connection), so it would
    # answer the wait and then vanish.  Kill it and wait until it is gone.
    guest_exec "$name" "kill \$(pidof nc ncat) 2>/dev/null; while pidof nc ncat >/dev/null; do sleep 0.2; done; $c"
}

guest_stop() { # NAME [SECS]: up to SECS (120) for a clean exit, then kill (124)
    local name=$1 secs=${2:-120} rc=0 t0=$SECONDS
    [ -n "${GUEST_PID[$name]:-}" ] || return 0
    printf 'x exit 0\n' >&"${GUEST_FD[$name]}"
    while kill -0 "${GUEST_PID[$name]}" 2>/dev/null; do
        if [ $((SECONDS - t0)) -ge "$secs" ]; then
            guest_kill "$name"
            return 124
        fi
        guest_nap 0.2
    done
    wait "${GUEST_PID[$name]}" || rc=$?
    guest_forget "$name"
    return "$rc"
}

guest_kill() { # NAME
    local name=$1 p
    [ -n "${GUEST_PID[$name]:-}" ] || return 0
    p=${GUEST_PID[$name]}
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    guest_forget "$name"
}

guest_kill_all() {
    local n
    for n in "${!GUEST_PID[@]}"; do guest_kill "$n"; done
}
