#!/bin/sh
# rpal run with PostgreSQL 15, unmodified (docs/run.md): initdb in a
# directory of its own, postgres listening on a Unix socket only (-k DIR,
# listen_addresses ''), pgbench -i, then the TPC-B-like script with 8
# clients and a fixed seed and count, first with nothing under rpal run,
# then with the server and pgbench both under it: zero failed transactions
# and the same final sums in both. Then pgbench -S with 1 and 8 clients
# under rpal run, and the mixed pairs (pgbench under rpal run against the
# plain server; psql not under it against the server under it). The
# postmaster accepts and forks a backend per connection, which does all the
# I/O: the test of the upgrade after fork. PostgreSQL refuses root: as root
# the test runs it as nobody (setpriv). Bounded by timeouts.
set -u
. tests/apps.inc
PGB=${PG_BIN:-/usr/lib/postgresql/15/bin}
apps_need postgresql-15 "$PGB/initdb" "$PGB/postgres" "$PGB/pgbench" "$PGB/psql"
tmp=$(mktemp -d)
chmod 755 "$tmp"
pid=
trap '[ -n "$pid" ] && kill -INT $pid 2>/dev/null; sleep 0.5; rm -rf "$tmp"' EXIT
# The library and the command where the unprivileged user can read them.
cp "$BIN/rpal" "$BIN/librpal-run.so" "$tmp/"
mkdir "$tmp/data" "$tmp/sock" "$tmp/ns"
: >"$tmp/log"
chmod 666 "$tmp/log"
AS=
if [ "$(id -u)" = 0 ]; then
  command -v setpriv >/dev/null || { echo "no setpriv to run PostgreSQL as nobody"; exit 77; }
  chown nobody "$tmp/data" "$tmp/sock" "$tmp/ns"
  AS="setpriv --reuid=nobody --regid=nogroup --clear-groups"
fi
ENV="env HOME=$tmp RPAL_DIR=$tmp/ns RPAL_RUN_LOG=$tmp/log PGHOST=$tmp/sock PGUSER=postgres PGDATABASE=postgres"
RUN="$tmp/rpal run --"
AE="$AS $ENV"
timeout 60 $AS $ENV "$PGB/initdb" -D "$tmp/data" -A trust -U postgres >"$tmp/initdb.log" 2>&1 ||
  { cat "$tmp/initdb.log"; echo "initdb failed"; exit 1; }

# start [rpal]: the server, until it answers
start() {
  pre=; [ "${1:-}" = rpal ] && pre=$RUN
  $AE $pre "$PGB/postgres" -D "$tmp/data" -k "$tmp/sock" -c listen_addresses= -c fsync=off \
    -c max_connections=20 >>"$tmp/pg.log" 2>&1 &
  pid=$!
  for i in $(seq 200); do
    timeout 10 $AE "$PGB/psql" -Atc 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$tmp/pg.log"; echo "postgres did not start"; exit 1
}
stop() { kill -INT $pid; wait $pid 2>/dev/null; pid=; }
sums() {
  timeout 30 $AE "$PGB/psql" -Atc "select (select sum(abalance) from pgbench_accounts),
    (select sum(bbalance) from pgbench_branches), (select sum(tbalance) from pgbench_tellers),
    (select sum(delta) from pgbench_history), (select count(*) from pgbench_history)"
}
# bench LABEL [rpal] ARGS: pgbench; no failed transaction, all of them done
bench() {
  label=$1; shift
  pre=; [ "$1" = rpal ] && pre=$RUN; shift
  out=$(timeout 120 $AE $pre "$PGB/pgbench" "$@" 2>&1)
  echo "$out" | grep -q 'number of failed transactions: 0 ' || bad "$label: $(echo "$out" | tail -n 5)"
  echo "$out" | grep -q 'number of transactions actually processed: \([0-9]*\)/\1$' ||
    bad "$label: not every transaction ran: $(echo "$out" | grep processed)"
}

start
timeout 120 $AE "$PGB/pgbench" -i -s 1 -q >/dev/null 2>&1 || bad "pgbench -i"
bench "plain TPC-B" plain -c 8 -t 100 --random-seed=7
plain=$(sums)
bench "pgbench under rpal run, server not" rpal -S -c 2 -t 200
grep -q '^up ' "$tmp/log" && bad "a connection to a server not under rpal run was upgraded"
stop

# The same again with both under rpal run, from the same start.
start rpal
timeout 120 $AE $RUN "$PGB/pgbench" -i -s 1 -q >/dev/null 2>&1 || bad "pgbench -i under rpal run"
bench "TPC-B under rpal run" rpal -c 8 -t 100 --random-seed=7
both=$(sums)
[ -n "$plain" ] && [ "$plain" = "$both" ] || bad "final sums differ: plain '$plain', rpal run '$both'"
bench "pgbench -S -c 1 under rpal run" rpal -S -c 1 -t 2000
bench "pgbench -S -c 8 under rpal run" rpal -S -c 8 -t 500
[ "$(timeout 20 $AE "$PGB/psql" -Atc 'select count(*) from pgbench_branches')" = 1 ] ||
  bad "psql not under rpal run against the server under it"
ups=$(grep -c '^up ' "$tmp/log")
msgs=$(awk '/^close / { n += $4 + $5 } END { print n + 0 }' "$tmp/log")
[ "$ups" -ge 30 ] || bad "only $ups connection ends upgraded"
[ "$msgs" -gt 5000 ] || bad "only $msgs messages counted through the rings"
grep -q '^broken ' "$tmp/log" && bad "a connection broke: $(grep '^broken \|^nojoin ' "$tmp/log" | head -5)"
stop
[ $fail = 0 ] && echo "postgres under rpal run: sums $both as plain; $ups connection ends upgraded, $msgs messages on the rings"
exit $fail
