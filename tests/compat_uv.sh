#!/bin/sh
# rpal inside a libuv loop: examples/uv_rpal_echo (the rpal echo server run
# by uv_run, with the rpal epoll set watched by a uv_poll_t) against
# rpal_echo_client: 2000 messages; one message; 300 messages with a client
# that never spins, so that both ends sleep and wake each other through the
# socket. Skipped when libuv was not found at build time. Run by
# tests/run.sh with RPAL_BIN and RPAL_DIR.
set -u

EX="${RPAL_BIN:-$(pwd)/build}/examples"
if [ ! -x "$EX/uv_rpal_echo" ]; then
  echo "no $EX/uv_rpal_echo: libuv was not found at build time (Debian: libuv1-dev)"
  exit 77
fi
if [ ! -x "$EX/rpal_echo_client" ]; then
  echo "no $EX/rpal_echo_client (set RPAL_BIN to the build directory)"
  exit 77
fi
tmp=$(mktemp -d)
[ -n "${RPAL_DIR:-}" ] || RPAL_DIR=$tmp/rpal
export RPAL_DIR
spid=
trap 'kill $spid 2>/dev/null; rm -rf "$tmp"' EXIT
sock=$tmp/echo.sock

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

start_server() {
  rm -f "$sock"
  "$EX/uv_rpal_echo" --socket "$sock" --timeout 5000 "$@" >"$tmp/server.out" 2>"$tmp/server.err" &
  spid=$!
  i=0
  while [ ! -S "$sock" ] && [ $i -lt 500 ]; do
    kill -0 $spid 2>/dev/null || break
    sleep 0.01
    i=$((i + 1))
  done
}

# finish NAME COUNT: the server's exit and its line.
finish() {
  wait $spid
  src=$?
  spid=
  [ $src -eq 0 ] || { fail "$1: uv_rpal_echo exit $src"; sed 's/^/    /' "$tmp/server.err"; }
  line=$(cat "$tmp/server.out")
  echo "$1: $line"
  echo "$line" | grep -Eqx "Message length: 32 bytes, Total TSC cycles: [0-9]+, Message count: $2, Average latency: [0-9]+ cycles" ||
    fail "$1: server line '$line'"
}

start_server
"$EX/rpal_echo_client" --socket "$sock" --count 2000 --timeout 5000 >"$tmp/client.out" 2>&1 ||
  fail "back to back: client: $(cat "$tmp/client.out")"
finish "back to back" 2000

# One message: the run ends on the client's close right after its echo.
start_server
"$EX/rpal_echo_client" --socket "$sock" --count 1 >"$tmp/client.out" 2>&1 ||
  fail "one: client: $(cat "$tmp/client.out")"
finish "one" 1

# The loop calls rpal_epoll_wait with timeout 0 only, so it never spins:
# when idle it sleeps in libuv's epoll and every message must wake it
# through the socket. With RPAL_SPIN_US=0 the client does not spin either,
# so every echo wakes the client too.
start_server
RPAL_SPIN_US=0 "$EX/rpal_echo_client" --socket "$sock" --count 300 --timeout 5000 >"$tmp/client.out" 2>&1 ||
  fail "no spinning: client: $(cat "$tmp/client.out")"
finish "no spinning" 300

if [ $failures -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "uv_rpal_echo: served in a libuv loop, awake and asleep"
exit 0
