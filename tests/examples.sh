#!/bin/sh
# Every program in examples/ runs, EXAMPLE_RUNS times (20; 5 under
# ThreadSanitizer), the two-process ones as two processes, and must work
# every time: hello_region (a list in
# a region, walked by an exec'd program), hello_call (a service and a
# forked caller), shared_list (the demo), the echo pairs of the RPAL
# paper's benchmark over epoll + Unix socket and over rpal (and the rpal
# server in a libuv loop, when built), each with 200 messages. kv_service
# and kv_client have their own test (tests/kv.sh). An example that nobody
# runs fails this test: add it below. Each run must leave the namespace
# as it found it, once `rpal gc` removed what exited processes leave for it
# (the echo programs exit without leaving their domain). Run by
# tests/run.sh with RPAL_BIN and RPAL_DIR.
set -u

B=${RPAL_BIN:-$(pwd)/build}
EX="$B/examples"
[ -x "$EX/hello_call" ] || { echo "no examples in $EX (set RPAL_BIN to the build directory)"; exit 77; }
tmp=$(mktemp -d)
[ -n "${RPAL_DIR:-}" ] || RPAL_DIR=$tmp/rpal
export RPAL_DIR
spid=
trap 'kill -9 $spid 2>/dev/null; rm -rf "$tmp"' EXIT
RUNS=${EXAMPLE_RUNS:-20}
# Under ThreadSanitizer a region example takes 2 s (against 0.1): 5 runs
# each there keep the test within the runner's timeout; the 20 of the
# target are the plain build's (and ASan's).
if [ -z "${EXAMPLE_RUNS:-}" ] && grep -q __tsan_init "$B/rpal" 2>/dev/null; then
  RUNS=5
  echo "(a ThreadSanitizer build: $RUNS runs of each example)"
fi
src=$(cd "$(dirname "$0")/.." && pwd)/examples

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# What the namespace holds, other than what any use of it makes once (the
# address registry, the domains' directories and their meta files).
ns_state() {
  (cd "$RPAL_DIR" 2>/dev/null && find . ! -name .rpal-registry ! -name meta ! -type d | sort)
}

# one NAME CMD...: run CMD, which must exit 0 and print what $want says.
want=
one() {
  name=$1
  shift
  "$@" >"$tmp/out" 2>&1
  rc=$?
  if [ $rc -ne 0 ] || ! grep -q -- "$want" "$tmp/out"; then
    fail "$name (run $run): exit $rc"
    sed 's/^/    /' "$tmp/out"
    return 1
  fi
}

# pair NAME SERVER CLIENT: an echo server in the background, then its
# client with 200 messages; both must exit 0.
pair() {
  sock=$tmp/echo.sock
  rm -f "$sock"
  "$EX/$2" --socket "$sock" --timeout 5000 >"$tmp/server.out" 2>&1 &
  spid=$!
  i=0
  while [ ! -S "$sock" ] && [ $i -lt 1000 ] && kill -0 $spid 2>/dev/null; do
    sleep 0.01
    i=$((i + 1))
  done
  "$EX/$3" --socket "$sock" --count 200 --timeout 5000 >"$tmp/client.out" 2>&1
  crc=$?
  wait $spid
  src_rc=$?
  spid=
  if [ $crc -ne 0 ] || [ $src_rc -ne 0 ] ||
     ! grep -q "Message count: 200," "$tmp/server.out"; then
    fail "$1 (run $run): client exit $crc, server exit $src_rc"
    sed 's/^/    client: /' "$tmp/client.out"
    sed 's/^/    server: /' "$tmp/server.out"
    return 1
  fi
}

before=$(ns_state)
ran=""
for f in "$src"/*.c; do
  ex=$(basename "$f" .c)
  case $ex in
    kv_service|kv_client) ran="$ran $ex"; continue ;; # tests/kv.sh
    uds_echo_client|rpal_echo_client) ran="$ran $ex"; continue ;; # with their servers
  esac
  if [ ! -x "$EX/$ex" ]; then
    if [ "$ex" = uv_rpal_echo ]; then
      echo "(uv_rpal_echo not built: no libuv)"
      ran="$ran $ex"
      continue
    fi
    fail "examples/$ex.c is not built in $EX"
    continue
  fi
  ok=0
  for run in $(seq 1 "$RUNS"); do
    case $ex in
      hello_region) want="sum 285"; one "$ex" "$EX/$ex" ;;
      hello_call) want='"hello, world"'; one "$ex" "$EX/$ex" ;;
      shared_list) want="every value checks"; one "$ex" "$EX/$ex" --nodes 10000 --large 1 ;;
      uds_echo_server) pair "$ex" uds_echo_server uds_echo_client ;;
      rpal_echo_server) pair "$ex" rpal_echo_server rpal_echo_client ;;
      uv_rpal_echo) pair "$ex" uv_rpal_echo rpal_echo_client ;;
      *) fail "examples/$ex.c: nobody runs it (add it to tests/examples.sh)"; break ;;
    esac || break
    "$B/rpal" gc >/dev/null
    after=$(ns_state)
    if [ "$after" != "$before" ]; then
      fail "$ex (run $run) left in the namespace: $(echo "$after" | tr '\n' ' ')"
      break
    fi
    ok=$((ok + 1))
  done
  echo "$ex: $ok of $RUNS runs"
  ran="$ran $ex"
done

if [ $failures -gt 0 ]; then
  echo "$failures example(s) failed"
  exit 1
fi
echo "every example worked $RUNS times out of $RUNS:$ran"
exit 0
