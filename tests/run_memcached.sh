#!/bin/sh
# rpal run with memcached, unmodified (docs/run.md): memcached on a Unix
# socket only (-s), a multi-threaded libevent server, driven by memcslap
# (set, then get; 1 and 4 threads) under rpal run; memccp stores 20 files
# and memccat reads every one back, under rpal run and in the mixed pairs.
# The interposer's log must show connections upgraded and messages through
# the rings, and none upgraded with a process not under rpal run.
set -u
. tests/apps.inc
apps_need "memcached libmemcached-tools" memcached memcslap memccp memccat
tmp=$(mktemp -d)
export RPAL_DIR=${RPAL_DIR:-$tmp/ns} RPAL_RUN_LOG=$tmp/log
pids=
trap 'for p in $pids; do kill $p 2>/dev/null; done; rm -rf "$tmp"' EXIT
RUN="$BIN/rpal run --"
user=; [ "$(id -u)" = 0 ] && user="-u root"

start() { # NAME [rpal]
  pre=; [ "${2:-}" = rpal ] && pre=$RUN
  $pre memcached -s "$tmp/$1.sock" $user -t 2 &
  pids="$pids $!"
  for i in $(seq 100); do [ -S "$tmp/$1.sock" ] && return 0; sleep 0.05; done
  bad "memcached $1 did not start"; exit 1
}
# check LABEL SOCK [rpal] [rpal]: store 20 files (client 1), read them back (client 2)
check() {
  p1=; p2=; [ "${3:-}" = rpal ] && p1=$RUN; [ "${4:-}" = rpal ] && p2=$RUN
  (cd "$tmp/files" && timeout 30 $p1 memccp --servers="$2" f*) || bad "$1: memccp"
  n=0
  for i in $(seq 0 19); do
    [ "$(timeout 30 $p2 memccat --servers="$2" f$i)" = "value $i of $1" ] && n=$((n + 1))
  done
  [ $n = 20 ] || bad "$1: $n of 20 values read back"
}
mkdir "$tmp/files"
set_files() { for i in $(seq 0 19); do echo "value $i of $1" >"$tmp/files/f$i"; done; }

start both rpal
for c in 1 4; do
  for t in set get; do
    out=$(timeout 60 $RUN memcslap --servers="$tmp/both.sock" --concurrency=$c --execute-number=2000 --test=$t 2>&1)
    echo "$out" | grep -q "Time to $t  *$((2000 * c)) keys" || bad "memcslap $t -c $c: $out"
    echo "$out" | grep -qi 'error' && bad "memcslap $t -c $c: $out"
  done
done
set_files both; check both "$tmp/both.sock" rpal rpal
ups=$(grep -c '^up ' "$tmp/log")
msgs=$(awk '/^close / { n += $4 + $5 } END { print n + 0 }' "$tmp/log")
[ "$ups" -ge 20 ] || bad "only $ups connection ends upgraded"
[ "$msgs" -gt 1000 ] || bad "only $msgs messages counted through the rings"
grep -q '^broken ' "$tmp/log" && bad "a connection broke: $(grep '^broken ' "$tmp/log" | head -3)"

: >"$tmp/log"
start plain
set_files mixed1; check mixed1 "$tmp/plain.sock" rpal rpal
set_files mixed2; check mixed2 "$tmp/both.sock" "" ""
grep -q '^up ' "$tmp/log" && bad "a connection with a process not under rpal run was upgraded"
[ $fail = 0 ] && echo "memcached under rpal run: $ups connection ends upgraded, $msgs messages on the rings; mixed pairs plain"
exit $fail
