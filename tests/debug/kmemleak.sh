#!/usr/bin/env bash
# Last suite of a debug-kernel boot (SPEC C4): after every other suite ran,
# ask kmemleak for the objects nothing points to any more. Any leak fails,
# with kmemleak's report (allocation backtraces) in the output. Prints TAP.
set -euo pipefail

KML=/sys/kernel/debug/kmemleak
echo "TAP version 13"
echo "1..1"
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
if [ ! -e "$KML" ]; then
    echo "ok 1 - C4 kmemleak after every suite # SKIP no $KML (CONFIG_DEBUG_KMEMLEAK)"
    exit 0
fi
# objects younger than kmemleak's minimum age (5 s) are never reported:
# let the last suite's frees settle, then scan twice (the first scan only
# marks what the second reports)
sleep 6
echo scan >"$KML"
echo scan >"$KML"
report=$(cat "$KML")
leaks=$(grep -c '^unreferenced object' <<<"$report" || true)
echo "# kmemleak: $leaks unreferenced objects in this boot"
if [ "$leaks" = 0 ]; then
    echo "ok 1 - C4 kmemleak after every suite: no leak"
else
    head -n 200 <<<"$report" | sed "s/^/# /"
    echo "not ok 1 - C4 kmemleak after every suite: $leaks leaks"
fi
