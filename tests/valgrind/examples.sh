#!/bin/sh
# The examples under valgrind's memcheck (`make valgrind`): shared_list
# (regions: create, fork + exec, read-only attach), the epoll + Unix-socket
# echo pair and the rpal echo pair (domain, consent, channels), each with a
# small message count. Every process, the exec'd and forked ones too, runs
# under memcheck; any error (invalid read or write, use of uninitialised
# memory, a definite, indirect or possible leak) fails. Still-reachable
# blocks do not: memory a live structure holds at exit is not a leak.
# tests/valgrind/rpal.supp lists what is hidden, and why.
# Needs the build for valgrind (build-vg/, -DRPAL_VALGRIND: see
# docs/sanitizers.md). Usage: B=build-vg sh tests/valgrind/examples.sh
set -u
B=${B:-build-vg}
EX="$(cd "$B" 2>/dev/null && pwd)/examples"
command -v valgrind >/dev/null || { echo "valgrind is not installed (Debian: apt-get install valgrind)"; exit 77; }
for p in shared_list uds_echo_server uds_echo_client rpal_echo_server rpal_echo_client; do
  [ -x "$EX/$p" ] || { echo "no $p in $EX (make VG=1 first)"; exit 1; }
done
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
RPAL_DIR=$(mktemp -d /dev/shm/rpal-vg-XXXXXX)
export RPAL_DIR
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$tmp" "$RPAL_DIR"' EXIT
COUNT=${VG_COUNT:-200}
LIMIT=${VG_LIMIT:-300} # seconds per process under valgrind
sock=$tmp/echo.sock
failures=0
skipped=

vg() {
  log=$1
  shift
  # Bounded: a process that does not end (memcheck took 20 minutes per
  # process over a slot's unbacked pages once) fails here, not by CI's
  # clock. 124 is timeout's status.
  timeout -k 10 "$LIMIT" valgrind --error-exitcode=1 --leak-check=full \
    --errors-for-leak-kinds=definite,indirect,possible \
    --show-leak-kinds=definite,indirect,possible \
    --suppressions="$here/rpal.supp" --trace-children=yes \
    --log-file="$tmp/$log.%p" "$@"
}

# check NAME RC: exit status 0 and every process's ERROR SUMMARY clean.
check() {
  what=$1 rc=$2
  bad=
  [ "$rc" -eq 0 ] || bad="exit $rc"
  [ "$rc" -eq 124 ] && bad="$bad (killed after $LIMIT s)"
  [ -n "$(ls "$tmp/$what".* 2>/dev/null)" ] || bad="$bad; no valgrind log"
  for f in "$tmp/$what".*; do
    [ -e "$f" ] || continue
    if ! grep -q "ERROR SUMMARY: 0 errors" "$f"; then
      bad="$bad; errors in ${f##*/}"
    fi
  done
  if [ -n "$bad" ]; then
    echo "FAIL $what: $bad"
    for f in "$tmp/$what".*; do
      echo "--- ${f##*/}"
      grep -v "unhandled amd64-linux syscall\|You may be able\|README_MISSING\|Nevertheless we\|valgrind.org/support\|set address range perms" "$f"
    done
    failures=$((failures + 1))
  else
    echo "ok   $what ($(ls "$tmp/$what".* | wc -l) processes clean)"
  fi
}

# shared_list with a 1 GiB large region: memcheck keeps state per mapped
# page, and 64 GiB would take it 20 GiB of memory.
vg shared_list "$EX/shared_list" --nodes 10000 --large 1 >"$tmp/out" 2>&1
check shared_list $?
grep -q "every value checks" "$tmp/out" || { echo "FAIL shared_list: $(cat "$tmp/out")"; failures=$((failures + 1)); }

# pair NAME SERVER CLIENT: as tests/compat_echo.sh does, with COUNT messages.
pair() {
  name=$1
  rm -f "$sock"
  vg "$name-server" "$EX/$2" --socket "$sock" --timeout 60000 >"$tmp/server.out" 2>&1 &
  spid=$!
  i=0
  while [ ! -S "$sock" ] && [ $i -lt 600 ]; do
    kill -0 $spid 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
  done
  vg "$name-client" "$EX/$3" --socket "$sock" --count "$COUNT" --timeout 60000 >"$tmp/client.out" 2>&1
  crc=$?
  wait $spid
  src=$?
  spid=
  # valgrind 3.19 (Debian 12's) has no pidfd_open, which rpal's liveness
  # falls back to where the kernel has no SO_PEERPIDFD (before Linux 6.5):
  # there the rpal pair stops at its first peer. Not an rpal error, and
  # nothing to check; where the pair ran in full, it is checked.
  if ! grep -q "Echoed: $COUNT messages" "$tmp/client.out" &&
    grep -q "unhandled amd64-linux syscall: 434" "$tmp/$name"-*.* 2>/dev/null; then
    echo "skip $name: $(valgrind --version) cannot run it here (no pidfd_open, no SO_PEERPIDFD)"
    skipped="$skipped $name"
    return
  fi
  check "$name-server" $src
  check "$name-client" $crc
  grep -q "Echoed: $COUNT messages of 32 bytes, all correct" "$tmp/client.out" ||
    { echo "FAIL $name: client said '$(cat "$tmp/client.out")'"; failures=$((failures + 1)); }
}
pair uds uds_echo_server uds_echo_client
pair rpal rpal_echo_server rpal_echo_client

if [ $failures -ne 0 ]; then
  echo "valgrind: $failures failure(s)"
  exit 1
fi
echo "valgrind: the examples run clean under memcheck${skipped:+ (skipped:$skipped)}"
