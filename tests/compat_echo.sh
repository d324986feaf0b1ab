#!/bin/sh
# The echo examples (the RPAL paper's sample benchmark), quickly: the
# epoll + Unix-socket pair and the rpal pair with 2000 messages each, and
# each rpal program against the other's Unix-socket peer (not a member: the
# connection must stay a plain socket and work). The client checks every
# echo byte for byte; here we check exit codes and the output lines. Then
# the failures: a bad socket path, a server that is not there, a server that
# goes away mid-run, each an error message and exit 1, quickly.
# Run by tests/run.sh with RPAL_BIN (the build directory) and RPAL_DIR.
set -u

EX="${RPAL_BIN:-$(pwd)/build}/examples"
for p in uds_echo_server uds_echo_client rpal_echo_server rpal_echo_client; do
  if [ ! -x "$EX/$p" ]; then
    echo "no $p in $EX (set RPAL_BIN to the build directory)"
    exit 77
  fi
done
tmp=$(mktemp -d)
own_dir=
if [ -z "${RPAL_DIR:-}" ]; then
  RPAL_DIR=$tmp/rpal
  own_dir=1
fi
export RPAL_DIR
trap 'kill $spid 2>/dev/null; rm -rf "$tmp"' EXIT
spid=
COUNT=2000
sock=$tmp/echo.sock

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# start_server PROG ARGS...: in the background (pid in $spid), its stdout in
# $tmp/server.out; returns once its socket is there.
start_server() {
  rm -f "$sock"
  prog=$1
  shift
  "$EX/$prog" --socket "$sock" --timeout 5000 "$@" >"$tmp/server.out" 2>"$tmp/server.err" &
  spid=$!
  i=0
  while [ ! -S "$sock" ] && [ $i -lt 500 ]; do
    kill -0 $spid 2>/dev/null || break
    sleep 0.01
    i=$((i + 1))
  done
}

# pair NAME SERVER CLIENT: one run of COUNT messages, and the lines checked.
pair() {
  name=$1
  start_server "$2"
  "$EX/$3" --socket "$sock" --count $COUNT --timeout 5000 >"$tmp/client.out" 2>"$tmp/client.err"
  crc=$?
  wait $spid
  src=$?
  spid=
  [ $crc -eq 0 ] || { fail "$name: $3 exit $crc"; sed 's/^/    /' "$tmp/client.err"; }
  [ $src -eq 0 ] || { fail "$name: $2 exit $src"; sed 's/^/    /' "$tmp/server.err"; }
  line=$(cat "$tmp/server.out")
  echo "$name: $line"
  echo "$line" | grep -Eqx "Message length: 32 bytes, Total TSC cycles: [0-9]+, Message count: $COUNT, Average latency: [0-9]+ cycles" ||
    fail "$name: server line '$line'"
  # The average is the total over the count, rounded down.
  echo "$line" | awk -F'[:,] ' -v n=$COUNT '{
      total = $4; avg = $8 + 0
      if (avg != int(total / n) || avg <= 0) exit 1 }' ||
    fail "$name: average is not total / count in '$line'"
  grep -Eqx "Echoed: $COUNT messages of 32 bytes, all correct, average round trip: [0-9]+ ns" "$tmp/client.out" ||
    fail "$name: client line '$(cat "$tmp/client.out")'"
}

pair "epoll+uds" uds_echo_server uds_echo_client
pair "rpal" rpal_echo_server rpal_echo_client
pair "rpal server, uds client" rpal_echo_server uds_echo_client
pair "uds server, rpal client" uds_echo_server rpal_echo_client

# --json: the same figures as one object (and another size than 32).
start_server rpal_echo_server --json --size 100
"$EX/rpal_echo_client" --socket "$sock" --count 100 --size 100 --json >"$tmp/client.out" 2>&1 ||
  fail "json: client failed: $(cat "$tmp/client.out")"
wait $spid
spid=
grep -Eqx '\{"size":100,"total_cycles":[0-9]+,"count":100,"avg_cycles":[0-9]+\}' "$tmp/server.out" ||
  fail "json: server printed '$(cat "$tmp/server.out")'"
grep -Eqx '\{"size":100,"count":100,"rtt_ns":[0-9]+\}' "$tmp/client.out" ||
  fail "json: client printed '$(cat "$tmp/client.out")'"

# expect_error NAME WANT CMD...: exit 1 within 10 s, with WANT in stderr.
expect_error() {
  name=$1 want=$2
  shift 2
  start=$(date +%s)
  timeout 20 "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  secs=$(($(date +%s) - start))
  [ $rc -eq 1 ] || fail "$name: exit $rc, want 1"
  [ $secs -le 10 ] || fail "$name: took $secs s"
  grep -q "$want" "$tmp/err" || fail "$name: stderr '$(cat "$tmp/err")', want '$want'"
}
for kind in uds rpal; do
  expect_error "$kind server, bad path" "No such file or directory" \
    "$EX/${kind}_echo_server" --socket "$tmp/no/such/dir/echo.sock"
  expect_error "$kind client, no server" "No such file or directory" \
    "$EX/${kind}_echo_client" --socket "$tmp/nobody.sock" --count 10
  expect_error "$kind server, no client" "nothing happened for 300 ms" \
    "$EX/${kind}_echo_server" --socket "$tmp/alone.sock" --timeout 300
  # The server goes away in the middle of a long run (later under an
  # emulator, where the client may need more than 0.3 s to connect).
  start_server ${kind}_echo_server
  kill_after=0.3
  [ -z "${RPAL_EMULATED:-}" ] || kill_after=2
  (sleep $kill_after; kill $spid) &
  expect_error "$kind client, server killed" "closed the connection\|Connection reset\|Broken pipe" \
    "$EX/${kind}_echo_client" --socket "$sock" --count 100000000 --timeout 3000
  wait $spid 2>/dev/null
  spid=
done

if [ $failures -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "echo examples: uds, rpal and mixed pairs correct; failures reported"
exit 0
