# shellcheck shell=bash
# Helpers shared by make-tree and export-series (sourced, not run).
# shellcheck disable=SC2034 # variables are used by the sourcing scripts

ROOT=${ROOT:?}
BUILD=$ROOT/build
TREE=$BUILD/linux
BASETREE=$BUILD/linux-base
PATCHES=${PATCHES_DIR:-$ROOT/patches}
COVER=0000-cover-letter.patch

# Fixed identity/date so the base commit (and so the base-commit: line of the
# series) and re-applied commits hash the same on every machine.
FIXED_NAME="vsock-netns harness"
FIXED_EMAIL="harness@vsock-netns.invalid"
BASE_DATE="2025-01-01T00:00:00+0000"

die() { echo "${0##*/}: error: $*" >&2; exit 1; }

# The series files in application order (no cover letter).
list_patches() {
    [ -d "$PATCHES" ] || return 0
    find "$PATCHES" -maxdepth 1 -type f -name '*.patch' ! -name "$COVER" -print |
        LC_ALL=C sort
}

# A hash of the series as it is in patches/ right now.
patches_hash() {
    local f
    {
        while IFS= read -r f; do
            printf '%s\n' "${f##*/}"
            cat "$f"
        done < <(list_patches)
    } | sha256sum | cut -d' ' -f1
}

# Succeeds when build/linux holds nothing that patches/ lacks: no uncommitted
# edits, and every commit since base has its patch-id in patches/.
check_nothing_unexported() {
    local dirty want have c pid
    [ -d "$TREE/.git" ] || return 0
    git -C "$TREE" rev-parse -q --verify refs/tags/base >/dev/null || {
        echo "${0##*/}: $TREE has no tag base" >&2
        return 1
    }
    dirty=$(git -C "$TREE" status --porcelain --untracked-files=normal | head -n 20)
    if [ -n "$dirty" ]; then
        printf '%s: %s has uncommitted changes (set FORCE=1 to discard):\n%s\n' \
            "${0##*/}" "$TREE" "$dirty" >&2
        return 1
    fi
    # exactly what make-tree / export-series left there: came from patches/
    if [ "$(git -C "$TREE" rev-parse HEAD)" = "$(git -C "$TREE" rev-parse -q --verify refs/harness/applied || true)" ]; then
        return 0
    fi
    have=$(list_patches | while IFS= read -r f; do git -C "$TREE" patch-id --stable <"$f"; done |
        cut -d' ' -f1 | sort -u)
    want=$(git -C "$TREE" rev-list --reverse refs/tags/base..HEAD)
    for c in $want; do
        pid=$(git -C "$TREE" show "$c" | git -C "$TREE" patch-id --stable | cut -d' ' -f1)
        [ -n "$pid" ] || continue # empty commit
        if ! grep -qxF "$pid" <<<"$have"; then
            printf '%s: commit %s is not in patches/ (run make export, or FORCE=1 to drop it)\n' \
                "${0##*/}" "$(git -C "$TREE" log -1 --format='%h "%s"' "$c")" >&2
            return 1
        fi
    done
    return 0
}
