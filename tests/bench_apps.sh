#!/bin/sh
# rpal bench apps --quick --json: well formed and complete, not fast. With
# memcached and the plain workloads (the quickest): one object per workload
# and side with a positive rate, then one ratio per workload; bad options
# are usage errors; nothing is left in $TMPDIR. The figures are the
# benchmark's business, not this test's.
set -u
B="${RPAL_BIN:-$(pwd)/build}"
[ -x "$B/rpal" ] && [ -x "$B/bench/apps" ] && [ -r "$B/librpal-run.so" ] ||
  { echo "no rpal, bench/apps or librpal-run.so in $B (the sanitizer builds do not make them)"; exit 77; }
[ -z "${RPAL_EMULATED:-}" ] || { echo "the programs are the host's, not the emulated build's ($RPAL_EMULATED)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/t"
export TMPDIR="$tmp/t"
fail=0
bad() { echo "FAIL: $*"; fail=1; }
only=plain
command -v memcached >/dev/null && command -v memcslap >/dev/null && only="plain memcached"
for o in $only; do
  timeout 120 "$B/rpal" bench apps --quick --json --only $o >"$tmp/$o.json" 2>"$tmp/err" || { bad "--only $o: exit $?"; cat "$tmp/err"; }
done
cat "$tmp"/*.json >"$tmp/all"
want=2; [ "$only" != plain ] && want=3
n=$(grep -c '"side":"rpal"' "$tmp/all"); [ "$n" = $want ] || bad "$n rpal results, want $want"
n=$(grep -c '"side":"plain"' "$tmp/all"); [ "$n" = $want ] || bad "$n plain results, want $want"
n=$(grep -c '"ratio_ops":' "$tmp/all"); [ "$n" = $want ] || bad "$n ratios, want $want"
grep '"ops_per_s"' "$tmp/all" | grep -q '"ops_per_s":0\.0' && bad "a rate of 0: $(cat "$tmp/all")"
awk '!/^\{.*\}$/ { bad = 1 } END { exit bad }' "$tmp/all" || bad "a line that is not one JSON object"
"$B/rpal" bench apps --rounds 0 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc = 2 ] && grep -q rounds "$tmp/err" || bad "--rounds 0: exit $rc"
"$B/rpal" bench apps --only nginx >/dev/null 2>"$tmp/err"; rc=$?
[ $rc = 2 ] && grep -q nginx "$tmp/err" || bad "--only nginx: exit $rc"
[ -z "$(ls "$tmp/t")" ] || bad "left in TMPDIR: $(ls "$tmp/t")"
[ $fail = 0 ] && echo "bench apps --quick --json: $want workloads, well formed"
exit $fail
