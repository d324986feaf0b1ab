#!/bin/sh
# examples/kv_service and kv_client, as two (and more) processes, KV_RUNS
# times (20): a caller's calls and reads in place, checked by the client;
# four callers at once; a caller killed in the middle of its calls (the
# service reports it dead and serves the next caller); the service stopped
# (SIGTERM) and then killed (SIGKILL) under a running client, which waits
# for each new service and goes on; the key file removed at a clean stop.
# Any failure in any run fails the test. Run by tests/run.sh with RPAL_BIN
# and RPAL_DIR.
set -u

EX="${RPAL_BIN:-$(pwd)/build}/examples"
for p in kv_service kv_client; do
  [ -x "$EX/$p" ] || { echo "no $p in $EX (set RPAL_BIN to the build directory)"; exit 77; }
done
tmp=$(mktemp -d)
[ -n "${RPAL_DIR:-}" ] || RPAL_DIR=$tmp/rpal
export RPAL_DIR
spid= cpid=
trap 'kill -9 $spid $cpid 2>/dev/null; rm -rf "$tmp"' EXIT
RUNS=${KV_RUNS:-20}
key=$tmp/kv.key

failures=0
fail() {
  echo "FAIL (run $run): $*"
  failures=$((failures + 1))
}

# wait_for FILE TEXT: until FILE holds the fixed string TEXT (at most 20 s).
wait_for() {
  i=0
  while ! grep -qF -- "$2" "$1" 2>/dev/null; do
    [ $i -ge 2000 ] && return 1
    sleep 0.01
    i=$((i + 1))
  done
}

# start_service N: kv_service in the background ($spid), its output in
# $tmp/service.N; returns once it said where its key is.
start_service() {
  "$EX/kv_service" --key-file "$key" >"$tmp/service.$1" 2>&1 &
  spid=$!
  wait_for "$tmp/service.$1" "key in $key" || { fail "service $1 did not start"; cat "$tmp/service.$1"; }
}

# stop_service N SIGNAL: and check how it went.
stop_service() {
  kill -"$2" $spid
  { wait $spid; } 2>/dev/null
  rc=$?
  if [ "$2" = TERM ]; then
    [ $rc -eq 0 ] || { fail "service $1 exited $rc after SIGTERM"; cat "$tmp/service.$1"; }
    grep -q "served [0-9]* requests" "$tmp/service.$1" || fail "service $1 did not say what it served"
    [ -e "$key" ] && fail "service $1 left its key file at a clean stop"
  fi
  spid=
}

for run in $(seq 1 "$RUNS"); do
  rm -f "$tmp"/service.* "$tmp"/client.*
  start_service 1
  # One caller: calls, reads in place, every answer checked by the client.
  "$EX/kv_client" --key-file "$key" >"$tmp/client.1" 2>&1 ||
    { fail "kv_client exited $?"; cat "$tmp/client.1"; }
  grep -q "1 round, 0 reconnects: ok" "$tmp/client.1" || { fail "kv_client's last line"; cat "$tmp/client.1"; }
  [ "$(stat -c %a "$key")" = 600 ] || fail "the key file's mode is $(stat -c %a "$key"), not 600"

  # Four callers at once, each a process and a member of its own.
  "$EX/kv_client" --key-file "$key" --callers 4 --rounds 5 >"$tmp/client.4" 2>&1 ||
    { fail "kv_client --callers 4 exited $?"; cat "$tmp/client.4"; }
  grep -q "4 callers, 0 failed" "$tmp/client.4" || { fail "kv_client --callers 4"; cat "$tmp/client.4"; }

  # A caller killed in the middle of its calls.
  "$EX/kv_client" --key-file "$key" --seconds 60 >"$tmp/client.k" 2>&1 &
  cpid=$!
  wait_for "$tmp/client.k" "connected to kv_service" || fail "the caller to kill did not connect"
  sleep 0.05
  kill -9 $cpid
  { wait $cpid; } 2>/dev/null
  wait_for "$tmp/service.1" "caller pid $cpid (slot" && wait_for "$tmp/service.1" "died" ||
    { fail "the service did not report the killed caller"; cat "$tmp/service.1"; }
  cpid=
  "$EX/kv_client" --key-file "$key" >"$tmp/client.2" 2>&1 ||
    { fail "kv_client after a killed caller exited $?"; cat "$tmp/client.2"; }

  # The service stopped, then killed, under a running client.
  "$EX/kv_client" --key-file "$key" --reconnects 2 --seconds 60 >"$tmp/client.r" 2>&1 &
  cpid=$!
  wait_for "$tmp/client.r" "connected to kv_service" || fail "the client of the restarts did not connect"
  sleep 0.05
  stop_service 1 TERM
  start_service 2
  wait_for "$tmp/client.r" "reconnected to kv_service (pid $spid)" ||
    { fail "the client did not come back to service 2"; cat "$tmp/client.r"; }
  sleep 0.05
  stop_service 2 KILL
  start_service 3
  wait $cpid
  rc=$?
  cpid=
  [ $rc -eq 0 ] || { fail "the client of the restarts exited $rc"; cat "$tmp/client.r"; }
  grep -q "2 reconnects: ok" "$tmp/client.r" || { fail "the client of the restarts"; cat "$tmp/client.r"; }
  # Stopped or killed, the service is gone (-ESHUTDOWN or -ESRCH, which a
  # caller cannot always tell apart: a process that closed its channels
  # and exited is also dead by the time the caller looks).
  [ "$(grep -c "kv_service \(left\|died\); waiting for it" "$tmp/client.r")" -eq 2 ] ||
    { fail "the client did not see the service go twice"; cat "$tmp/client.r"; }
  stop_service 3 TERM
  [ $failures -gt 0 ] && break
done

# What the killed processes left, gc removes; nobody is left in the domain.
"${RPAL_BIN:-$(pwd)/build}/rpal" gc >/dev/null
members=$("${RPAL_BIN:-$(pwd)/build}/rpal" ls --json | grep -c '"domain":')
[ "$members" -eq 0 ] || fail "$members domain members left after every process ended"

if [ $failures -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "kv_service and kv_client: $RUNS runs of one caller, four callers, a killed caller and two restarts, all ok"
exit 0
