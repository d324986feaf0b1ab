#!/bin/sh
# rpal run with Redis, unmodified (docs/run.md): redis-server on a Unix
# socket in a directory of its own (no TCP port), redis-benchmark -s with
# GET, SET and LPUSH, 1 and 50 clients, with and without -P 16, every pair
# both under `rpal run`; then redis-cli reads back every key written (a
# known value per key, written under rpal run); then the mixed pairs (the
# server under rpal run and the client not, and the reverse). The log of
# the interposer (RPAL_RUN_LOG) must show the connections upgraded and
# messages through the rings, and no connection with a process that is not
# under rpal run upgraded. Everything is bounded by timeouts.
set -u
. tests/apps.inc
apps_need "redis-server redis-tools" redis-server redis-benchmark redis-cli
tmp=$(mktemp -d)
export RPAL_DIR=${RPAL_DIR:-$tmp/ns} RPAL_RUN_LOG=$tmp/log
pids=
trap 'for p in $pids; do kill $p 2>/dev/null; done; rm -rf "$tmp"' EXIT
RUN="$BIN/rpal run --"

# start_server NAME [rpal]: a redis-server on $tmp/NAME.sock
start_server() {
  pre=; [ "${2:-}" = rpal ] && pre=$RUN
  $pre redis-server --port 0 --unixsocket "$tmp/$1.sock" --save '' --appendonly no \
    --dir "$tmp" --logfile "$tmp/$1.log" &
  pids="$pids $!"
  for i in $(seq 100); do [ -S "$tmp/$1.sock" ] && return 0; sleep 0.05; done
  bad "redis-server $1 did not start"; cat "$tmp/$1.log"; exit 1
}

start_server both rpal
for c in 1 50; do
  for P in 1 16; do
    out=$(timeout 60 $RUN redis-benchmark -s "$tmp/both.sock" -n 2000 -c $c -P $P \
      -t get,set,lpush -r 1000 -q 2>&1 | tr '\r' '\n' | grep 'requests per second')
    n=$(echo "$out" | grep -c 'requests per second')
    [ "$n" = 3 ] || bad "redis-benchmark -c $c -P $P: $n of 3 tests ran: $out"
  done
done
# Every key written reads back (with a value that says which key it is).
timeout 60 $RUN sh -c "i=0; while [ \$i -lt 200 ]; do echo \"SET k\$i v\$i\"; i=\$((i + 1)); done |
  redis-cli -s '$tmp/both.sock' >/dev/null"
got=$(timeout 60 $RUN sh -c "i=0; while [ \$i -lt 200 ]; do echo \"GET k\$i\"; i=\$((i + 1)); done |
  redis-cli -s '$tmp/both.sock'" | awk '$0 == "v" NR - 1 { n++ } END { print n + 0 }')
[ "$got" = 200 ] || bad "$got of 200 keys read back as written"
ups=$(grep -c '^up ' "$tmp/log")
msgs=$(awk '/^close / { n += $4 + $5 } END { print n + 0 }' "$tmp/log")
[ "$ups" -ge 20 ] || bad "only $ups connections upgraded"
[ "$msgs" -gt 1000 ] || bad "only $msgs messages counted through the rings"
grep -q '^broken ' "$tmp/log" && bad "a connection broke: $(grep '^broken ' "$tmp/log" | head -3)"

# BGSAVE forks with every client connection on the rings: Redis's are
# close-on-exec, so none goes back to the socket (docs/run.md, fork), and
# the clients go on.
$RUN redis-benchmark -s "$tmp/both.sock" -n 200000 -c 4 -t get -q >"$tmp/bg.out" 2>&1 &
bp=$!
sleep 0.3
[ "$(timeout 20 $RUN redis-cli -s "$tmp/both.sock" BGSAVE)" = "Background saving started" ] ||
  bad "BGSAVE was not started"
timeout 60 sh -c "while kill -0 $bp 2>/dev/null; do sleep 0.1; done" || { kill -9 $bp; bad "redis-benchmark hung across BGSAVE"; }
wait $bp || bad "redis-benchmark across BGSAVE: $(tr '\r' '\n' <"$tmp/bg.out" | tail -2)"
for i in $(seq 100); do grep -q 'Background saving terminated with success' "$tmp/both.log" && break; sleep 0.1; done
grep -q 'Background saving terminated with success' "$tmp/both.log" || bad "BGSAVE did not finish: $(tail -3 "$tmp/both.log")"
grep -q '^down ' "$tmp/log" && bad "a connection went back to the socket at BGSAVE's fork: $(grep '^down ' "$tmp/log" | head -3)"

# Kills: a client killed mid-run leaves the server serving; a server killed
# mid-run ends its clients' runs with the error the kernel gives (the end of
# the connection, ECONNRESET or EPIPE), never a hang. The killed client is
# redis-benchmark itself (not a timeout wrapper, which would leave it
# running). The clients that judge a server's death are redis-cli -r -1
# (blocking calls): redis-benchmark 7.0 spins for ever, on a plain socket
# too, when a write fails (its writeHandler retries while errno is EAGAIN,
# and cliWriteConn sets EAGAIN on every error of a non-blocking context;
# seen in 2 of 40 plain runs here), so it is only load there, stopped after.
$RUN redis-benchmark -s "$tmp/both.sock" -n 10000000 -c 4 -t get -q >/dev/null 2>&1 &
bp=$!
sleep 1
kill -9 $bp
wait $bp 2>/dev/null
[ "$(timeout 20 $RUN redis-cli -s "$tmp/both.sock" GET k9)" = v9 ] || bad "the server after a client was killed"
start_server victim rpal
vp=$!
$RUN redis-benchmark -s "$tmp/victim.sock" -n 10000000 -c 4 -t get -q >/dev/null 2>&1 &
bp=$!
timeout 60 $RUN redis-cli -s "$tmp/victim.sock" -r -1 SET k v >/dev/null 2>"$tmp/c1.err" &
c1=$!
timeout 60 $RUN redis-cli -s "$tmp/victim.sock" -r -1 GET k >/dev/null 2>"$tmp/c2.err" &
c2=$!
sleep 1
kill -9 $vp
t0=$(date +%s)
for c in c1 c2; do
  eval "wait \$$c"
  rc=$?
  msg=$(cat "$tmp/$c.err")
  [ $rc = 124 ] && bad "redis-cli ($c) hung after its server was killed"
  # 141: SIGPIPE, as a write to a socket whose other end is gone gives.
  case "$rc:$msg" in
  141:* | 1:*"Server closed the connection"* | 1:*"Connection reset by peer"*) ;;
  *) bad "redis-cli ($c) after its server was killed: exit $rc, '$msg'" ;;
  esac
done
[ $(($(date +%s) - t0)) -le 20 ] || bad "redis-cli took more than 20 s to see its server killed"
kill -9 $bp 2>/dev/null
wait $bp 2>/dev/null

# Mixed pairs: nothing upgraded, everything answered.
: >"$tmp/log"
start_server plain
out=$(timeout 60 $RUN redis-benchmark -s "$tmp/plain.sock" -n 2000 -c 4 -t get,set -q 2>&1 |
  tr '\r' '\n' | grep -c 'requests per second')
[ "$out" = 2 ] || bad "client under rpal run, server not: $out of 2 tests ran"
out=$(timeout 60 redis-benchmark -s "$tmp/both.sock" -n 2000 -c 4 -t get,set -q 2>&1 |
  tr '\r' '\n' | grep -c 'requests per second')
[ "$out" = 2 ] || bad "server under rpal run, client not: $out of 2 tests ran"
[ "$(timeout 20 redis-cli -s "$tmp/both.sock" GET k7)" = v7 ] || bad "plain redis-cli: k7"
[ "$(timeout 20 $RUN redis-cli -s "$tmp/plain.sock" PING)" = PONG ] || bad "redis-cli under rpal run to a plain server"
grep -q '^up ' "$tmp/log" && bad "a connection to a process not under rpal run was upgraded"
grep -q '^plain ' "$tmp/log" || bad "no connection was seen and left plain"
[ $fail = 0 ] && echo "redis under rpal run: $ups connections upgraded, $msgs messages on the rings; mixed pairs plain"
exit $fail
