#!/bin/sh
# rpal bench apps: unmodified programs over Unix sockets, plain against
# `rpal run` (docs/run.md), in one invocation. For each workload, a plain
# server and one under rpal run are started once; then the client runs
# alternate (plain client to plain server, client under rpal run to the
# server under it), ROUNDS times each, and the medians are compared:
# operations/s, the latency the tool reports (redis-benchmark: p50;
# pgbench: its average, the only one it prints), and the CPU per operation
# of the client and of the server (user + system, from /proc: the server's
# whole process tree, its reaped children included). Workloads whose
# programs are missing are skipped with the reason.
set -u
usage() {
  cat <<'USAGE'
usage: rpal bench apps [--rounds N] [--quick] [--json] [--plot FILE.png] [--only NAME]
  --rounds N      runs of each side per workload, alternated (default 3)
  --quick         short runs (for the tests): 1 round, small counts
  --json          one JSON object per workload and side, then one per ratio
  --plot FILE     a bar chart of the ratios (rpal run / plain) with gnuplot
  --only NAME     redis, postgres, memcached or plain
Workloads: redis-benchmark -s (GET and SET, 1 client; GET, 50 clients),
pgbench -S (1 and 8 clients), memcslap get (1 thread); plain: what rpal
run costs where it upgrades nothing (64-byte dd through a pipe, and from a
file: operations are 64-byte blocks). PostgreSQL runs as
nobody when run as root. The machine's load is printed first: other work
on it changes every figure.
USAGE
}
ROUNDS=3 QUICK=0 JSON=0 PLOT= ONLY=
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) [ $# -ge 2 ] && [ "$2" -gt 0 ] 2>/dev/null || { echo "rpal bench apps: --rounds needs a positive count" >&2; exit 2; }; ROUNDS=$2; shift ;;
    --quick) QUICK=1 ROUNDS=1 ;;
    --json) JSON=1 ;;
    --plot) [ $# -ge 2 ] || { echo "rpal bench apps: --plot needs a FILE.png" >&2; exit 2; }; PLOT=$2; shift ;;
    --only) [ $# -ge 2 ] || { echo "rpal bench apps: --only needs redis, postgres, memcached or plain" >&2; exit 2; }; ONLY=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "rpal bench apps: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case $ONLY in ''|redis|postgres|memcached|plain) ;; *) echo "rpal bench apps: no workload '$ONLY' (redis, postgres, memcached, plain)" >&2; exit 2 ;; esac
if [ -n "$PLOT" ] && ! command -v gnuplot >/dev/null; then
  echo "rpal bench apps: --plot: gnuplot is missing (Debian package gnuplot-nox)" >&2; exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
RPAL=$here/../rpal; [ -x "$RPAL" ] || RPAL=$here/../../bin/rpal
LIB=$here/../librpal-run.so; [ -r "$LIB" ] || LIB=$here/librpal-run.so
[ -x "$RPAL" ] && [ -r "$LIB" ] || { echo "rpal bench apps: no rpal command or librpal-run.so near $here" >&2; exit 2; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rpal-apps-XXXXXX")
chmod 755 "$tmp"
pids=
# (SIGINT: PostgreSQL's fast shutdown; then SIGTERM for what a shell
# started in the background with SIGINT ignored: sleep)
cleanup() { for p in $pids; do kill -INT $p 2>/dev/null; done; sleep 0.3; for p in $pids; do kill $p 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$RPAL" "$LIB" "$tmp/"
RUN="$tmp/rpal run --"
# space NAME [OWNER]: a namespace directory and a run log of its own for
# workload NAME (a directory made by root is one that nobody, PostgreSQL's
# user here, may not join, and the reverse: rpal refuses both)
space() {
  mkdir -p "$tmp/ns-$1"
  : >"$tmp/log-$1"
  if [ -n "${2:-}" ]; then chown "$2" "$tmp/ns-$1" "$tmp/log-$1"; fi
  export RPAL_DIR=$tmp/ns-$1 RPAL_RUN_LOG=$tmp/log-$1
}
# upgraded NAME PREFIX: unless the rpal side of workload NAME moved a
# connection to the rings, its figures measure nothing of rpal: drop them
# (results starting with PREFIX), and say why
upgraded() {
  grep -q '^up ' "$tmp/log-$1" && return 0
  echo "rpal bench apps: $1: no connection moved to rpal's rings, its figures are left out ($(grep -m1 -E '^(nojoin|plain|broken|parent) ' "$tmp/log-$1" || echo 'rpal run logged no reason'))" >&2
  grep -v "^$2" "$results" >"$results.tmp"; mv "$results.tmp" "$results"
}
HZ=$(getconf CLK_TCK)
say() { [ $JSON = 1 ] || echo "$@"; }
say "load: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min), $(nproc) CPUs; $ROUNDS round(s) per side"

# tree_cpu PID: CPU seconds of PID, its reaped children and its live descendants
tree_cpu() {
  # (cat, not awk's own reading: a process that exits between the glob and
  # the read would end awk)
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v root="$1" -v hz="$HZ" '
    { p = $1; sub(/^[0-9]+ \(.*\) /, ""); par[p] = $2; c[p] = $12 + $13; k[p] = $14 + $15 }
    END {
      t = c[root] + k[root]
      for (p in par) { q = p; while (q in par && q != root && q > 1) q = par[q]; if (q == root && p != root) t += c[p] }
      printf "%.4f\n", t / hz }'
}
# measure CMD...: run the client; sets CLIENT_CPU (s) and OUT
measure() {
  T0=$(date +%s.%N)
  OUT=$( ( "$@" 2>&1; times >&2 ) 2>"$tmp/times" )
  WALL=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  CLIENT_CPU=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } print t }' "$tmp/times")
}
results=$tmp/results
: >"$results"
# one LABEL PARSER SIDE SERVERPID OPS CMD...: a run, its figures parsed by
# parse_PARSER into "ops/s latency_us", appended to the results (OPS < 0:
# a run of -OPS seconds, whose operations are its rate times that)
one() {
  label=$1 parser=$2 side=$3 spid=$4 ops=$5; shift 5
  s0=$(tree_cpu "$spid")
  measure "$@"
  sleep 0.2 # the server reaps what exited
  s1=$(tree_cpu "$spid")
  set -- $(parse_$parser "$OUT" "$ops")
  [ "${1%.*}" -gt 0 ] 2>/dev/null || echo "rpal bench apps: $label ($side) failed: $(echo "$OUT" | tail -n 3)" >&2
  echo "$label $side $1 $2 $CLIENT_CPU $(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }') $ops" >>"$results"
}
parse_redis() { echo "$1" | tr '\r' '\n' | awk '/requests per second/ { r = $2; for (i = 1; i <= NF; i++) if ($i ~ /^p50=/) { sub(/p50=/, "", $i); p = $i * 1000 } } END { print r + 0, p + 0 }'; }
parse_pg() { echo "$1" | awk '/^tps =/ { t = $3 } /^latency average/ { l = $4 * 1000 } /failed transactions: [1-9]/ { t = 0 } END { print t + 0, l + 0 }'; }
parse_mc() { echo "$1" | awk -v n="$2" '/Time to get/ { s = $(NF - 1) } END { print (s > 0 ? n / s : 0), 0 }'; }

parse_wall() { awk -v n="$2" -v w="$WALL" 'BEGIN { print (w > 0 ? n / w : 0), 0 }'; }

wait_sock() { for i in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "rpal bench apps: $1 did not appear" >&2; return 1; }

bench_redis() {
  command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null ||
    { say "redis: skipped (no redis-server/redis-benchmark: apt-get install redis-server redis-tools)"; return; }
  space redis
  redis-server --port 0 --unixsocket "$tmp/rp.sock" --save '' --appendonly no --dir "$tmp" --logfile "$tmp/rp.log" & p0=$!
  $RUN redis-server --port 0 --unixsocket "$tmp/rr.sock" --save '' --appendonly no --dir "$tmp" --logfile "$tmp/rr.log" & p1=$!
  pids="$pids $p0 $p1"
  wait_sock "$tmp/rp.sock" && wait_sock "$tmp/rr.sock" || return
  n=100000; [ $QUICK = 1 ] && n=5000
  for spec in "get 1" "set 1" "get 50"; do
    set -- $spec
    for r in $(seq "$ROUNDS"); do
      one redis-$1-c$2 redis plain $p0 $n redis-benchmark -s "$tmp/rp.sock" -n $n -c $2 -t $1 -q
      one redis-$1-c$2 redis rpal $p1 $n $RUN redis-benchmark -s "$tmp/rr.sock" -n $n -c $2 -t $1 -q
    done
  done
  upgraded redis redis-
}

bench_postgres() {
  PGB=${PG_BIN:-/usr/lib/postgresql/15/bin}
  [ -x "$PGB/postgres" ] && [ -x "$PGB/pgbench" ] ||
    { say "postgres: skipped (no $PGB/postgres: apt-get install postgresql-15)"; return; }
  AS=
  if [ "$(id -u)" = 0 ]; then AS="setpriv --reuid=nobody --regid=nogroup --clear-groups"; space pg nobody; else space pg; fi
  for side in plain rpal; do
    mkdir "$tmp/pg-$side" "$tmp/pgs-$side"
    [ -n "$AS" ] && chown nobody "$tmp/pg-$side" "$tmp/pgs-$side"
    $AS env HOME=$tmp "$PGB/initdb" -D "$tmp/pg-$side" -A trust -U postgres >/dev/null 2>&1 || { echo "rpal bench apps: initdb failed" >&2; return; }
  done
  E="env HOME=$tmp PGUSER=postgres PGDATABASE=postgres"
  $AS $E "$PGB/postgres" -D "$tmp/pg-plain" -k "$tmp/pgs-plain" -c listen_addresses= -c fsync=off >"$tmp/pg.log" 2>&1 & q0=$!
  $AS $E $RUN "$PGB/postgres" -D "$tmp/pg-rpal" -k "$tmp/pgs-rpal" -c listen_addresses= -c fsync=off >>"$tmp/pg.log" 2>&1 & q1=$!
  pids="$pids $q0 $q1"
  wait_sock "$tmp/pgs-plain/.s.PGSQL.5432" && wait_sock "$tmp/pgs-rpal/.s.PGSQL.5432" || return
  sleep 0.5
  $AS $E "$PGB/pgbench" -h "$tmp/pgs-plain" -i -s 1 -q >/dev/null 2>&1
  $AS $E "$PGB/pgbench" -h "$tmp/pgs-rpal" -i -s 1 -q >/dev/null 2>&1
  t=10; [ $QUICK = 1 ] && t=2
  for c in 1 8; do
    for r in $(seq "$ROUNDS"); do
      one pgbench-S-c$c pg plain $q0 -$t $AS $E "$PGB/pgbench" -h "$tmp/pgs-plain" -S -c $c -j $c -T $t
      one pgbench-S-c$c pg rpal $q1 -$t $AS $E $RUN "$PGB/pgbench" -h "$tmp/pgs-rpal" -S -c $c -j $c -T $t
    done
  done
  upgraded pg pgbench-
}

bench_memcached() {
  command -v memcached >/dev/null && command -v memcslap >/dev/null ||
    { say "memcached: skipped (no memcached/memcslap: apt-get install memcached libmemcached-tools)"; return; }
  u=; [ "$(id -u)" = 0 ] && u="-u root"
  space mc
  memcached -s "$tmp/mp.sock" $u -t 1 & m0=$!
  $RUN memcached -s "$tmp/mr.sock" $u -t 1 & m1=$!
  pids="$pids $m0 $m1"
  wait_sock "$tmp/mp.sock" && wait_sock "$tmp/mr.sock" || return
  n=50000; [ $QUICK = 1 ] && n=3000
  for r in $(seq "$ROUNDS"); do
    one memcached-get-c1 mc plain $m0 $n memcslap --servers="$tmp/mp.sock" --concurrency=1 --execute-number=$n --test=get
    one memcached-get-c1 mc rpal $m1 $n $RUN memcslap --servers="$tmp/mr.sock" --concurrency=1 --execute-number=$n --test=get
  done
  upgraded mc memcached-
}

# What rpal run costs where it upgrades nothing: 64-byte reads and writes
# through a pipe between two dd, and a file read 64 bytes at a time. The
# difference sought is a few percent and this machine's speed drifts by
# more within seconds: so several runs per round (3, of about a second
# each: shorter ones would count rpal run's start, an exec and the
# library's loading, 2-3 ms here), alternated, and their median.
bench_plain() {
  space plain
  sleep 100000 & idle=$!
  pids="$pids $idle"
  n=400000 k=3; [ $QUICK = 1 ] && n=40000 k=1
  head -c $((n * 64)) /dev/zero >"$tmp/file"
  for r in $(seq $((ROUNDS * k))); do
    for side in plain rpal; do
      pre=; [ $side = rpal ] && pre=$RUN
      one pipe-dd-64B wall $side $idle $n $pre sh -c "dd if=/dev/zero bs=64 count=$n 2>/dev/null | dd of=/dev/null bs=64 2>/dev/null"
      one file-dd-64B wall $side $idle $n $pre dd if="$tmp/file" of=/dev/null bs=64 status=none
    done
  done
}

[ -z "$ONLY" ] || [ "$ONLY" = plain ] && bench_plain
[ -z "$ONLY" ] || [ "$ONLY" = redis ] && bench_redis
[ -z "$ONLY" ] || [ "$ONLY" = postgres ] && bench_postgres
[ -z "$ONLY" ] || [ "$ONLY" = memcached ] && bench_memcached

# Medians per workload and side, then the ratios (the latency ratio is 0
# where the tool reports none: memcslap).
awk -v json=$JSON -v plot="$tmp/plot.dat" '
  function med(arr, n,    i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && arr[j - 1] > arr[j]; j--) { t = arr[j]; arr[j] = arr[j - 1]; arr[j - 1] = t }
    return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
  }
  { k = $1 SUBSEP $2; n[k]++; i = n[k]
    if (!($1 in seen)) { seen[$1] = 1; order[++nw] = $1 }
    ops = $7 > 0 ? $7 : $3 * -$7
    rate[k, i] = $3; lat[k, i] = $4
    cc[k, i] = ops > 0 ? $5 / ops * 1e6 : 0; sc[k, i] = ops > 0 ? $6 / ops * 1e6 : 0 }
  END {
    if (!json) printf "%-18s %-6s %10s %11s %17s %17s\n", "WORKLOAD", "SIDE", "OPS/S", "LATENCY us", "CLIENT CPU us/op", "SERVER CPU us/op"
    for (w = 1; w <= nw; w++) for (s = 0; s < 2; s++) {
      side = s ? "rpal" : "plain"; k = order[w] SUBSEP side
      m = n[k]; if (!m) continue
      for (i = 1; i <= m; i++) { a[i] = rate[k, i]; b[i] = lat[k, i]; c[i] = cc[k, i]; d[i] = sc[k, i] }
      R[k] = med(a, m); L[k] = med(b, m); C[k] = med(c, m); S[k] = med(d, m)
      if (json) printf "{\"workload\":\"%s\",\"side\":\"%s\",\"runs\":%d,\"ops_per_s\":%.1f,\"latency_us\":%.1f,\"client_cpu_us_per_op\":%.3f,\"server_cpu_us_per_op\":%.3f}\n", order[w], side, m, R[k], L[k], C[k], S[k]
      else printf "%-18s %-6s %10.0f %11.1f %17.2f %17.2f\n", order[w], side, R[k], L[k], C[k], S[k]
    }
    if (!json) printf "\n%-18s %10s %11s %17s\n", "RPAL RUN / PLAIN", "OPS/S", "LATENCY", "CPU PER OP (c+s)"
    for (w = 1; w <= nw; w++) {
      p = order[w] SUBSEP "plain"; r = order[w] SUBSEP "rpal"
      if (!n[p] || !n[r] || R[p] <= 0 || R[r] <= 0) continue
      xr = R[r] / R[p]; xl = L[p] > 0 ? L[r] / L[p] : 0
      xc = C[p] + S[p] > 0 ? (C[r] + S[r]) / (C[p] + S[p]) : 0
      if (json) printf "{\"workload\":\"%s\",\"ratio_ops\":%.3f,\"ratio_latency\":%.3f,\"ratio_cpu_per_op\":%.3f}\n", order[w], xr, xl, xc
      else printf "%-18s %10.2f %11.2f %17.2f\n", order[w], xr, xl, xc
      printf "%s %.3f %.3f\n", order[w], xr, xc >> plot
    }
  }' "$results"
if [ -n "$PLOT" ] && [ -s "$tmp/plot.dat" ]; then
  gnuplot <<GP || { echo "rpal bench apps: gnuplot failed" >&2; exit 1; }
set terminal pngcairo size 900,500
set output "$PLOT"
set title "rpal run / plain, $(cut -d' ' -f1 /proc/loadavg) load"
set style data histograms
set style fill solid 0.7
set ylabel "ratio (rpal run / plain)"
set xtics rotate by -30
set yrange [0:*]
plot "$tmp/plot.dat" using 2:xtic(1) title "ops/s", "" using 3 title "CPU per op"
GP
  say "plot: $PLOT"
fi
