#!/bin/sh
# The pod shape with unshare(1), as a user would build it: the rpal echo
# server in one "container" (unshare -p -f -m --mount-proc), the client in
# another, a shared tmpfs volume that each bind-mounts at a path of its own
# (RPAL_DIR under it). While they run, `rpal stat --json` and `rpal ls --json`
# from a third container must show the two upgraded connections with their
# counters moving (the rings are used, not the socket) and the members as
# being in other pid namespaces. Then the server is SIGKILLed mid-stream: the client must
# fail at once, and `rpal gc` from a third container removes the dead
# server's claim. Needs root and unshare(1) (util-linux); CI runs as root.
# Run by tests/run.sh with RPAL_BIN (the build directory).
set -u

B="${RPAL_BIN:-$(pwd)/build}"
EX=$B/examples
for p in "$B/rpal" "$EX/rpal_echo_server" "$EX/rpal_echo_client"; do
  [ -x "$p" ] || { echo "no $p (set RPAL_BIN to the build directory)"; exit 77; }
done
command -v unshare >/dev/null || { echo "no unshare(1) (util-linux)"; exit 77; }
[ "$(id -u)" = 0 ] || { echo "needs root to make pid and mount namespaces (CI runs as root)"; exit 77; }
# A kernel without pid or mount namespaces, or an unshare(1) without these
# options (busybox), is a skip; so is a date(1) without nanoseconds.
unshare -p -f -m --mount-proc --propagation private true 2>/dev/null ||
  { echo "unshare(1) here cannot make pid and mount namespaces with their own /proc"; exit 77; }
# Across pid namespaces a member is known by its pidfs inode and pidfds
# (Linux 6.9): the same probe as tests/container_ns, which says why not.
if [ -x "$B/tests/container_ns" ]; then
  why=$("$B/tests/container_ns" --probe)
  [ $? -eq 77 ] && { echo "$why"; exit 77; }
fi
case $(date +%N) in *[!0-9]* | '') echo "date(1) here has no %N"; exit 77 ;; esac
# Everything below in a mount namespace of our own: the volume's mounts go with it.
if [ -z "${RPAL_POD_NS:-}" ]; then
  RPAL_POD_NS=1 exec unshare -m --propagation private sh "$0" "$@"
fi

tmp=$(mktemp -d)
trap 'kill -9 $spid $cpid 2>/dev/null; umount -l "$tmp/vol" 2>/dev/null; rm -rf "$tmp"' EXIT
spid= cpid=
mkdir "$tmp/vol" "$tmp/app" "$tmp/side" "$tmp/ops"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$tmp/vol" || { echo "cannot mount a tmpfs"; exit 1; }

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# in_container NAME CMD...: CMD in new pid and mount namespaces with its own
# /proc, the volume at $tmp/NAME only, RPAL_DIR=$tmp/NAME/rpal.
in_container() {
  name=$1
  shift
  unshare -p -f -m --mount-proc --propagation private sh -c '
    d=$1; v=$2; shift 2
    mount --bind "$v" "$d" && umount -l "$v" || exit 125
    RPAL_DIR=$d/rpal exec "$@"' sh "$tmp/$name" "$tmp/vol" "$@"
}

# stat_until FILE PATTERN N: up to 10 s for `rpal stat --json` from a third
# container to have N matches of PATTERN; the last output in FILE.
stat_until() {
  i=0
  while [ $i -lt 200 ]; do
    in_container ops "$B/rpal" stat --json >"$1" 2>/dev/null
    [ "$(grep -o "$2" "$1" | wc -l)" -ge "$3" ] && return 0
    i=$((i + 1))
    sleep 0.05
  done
  return 1
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# 1. The echo pair, upgraded across the namespaces (the client would run
# for ever: it is stopped by its server's death below).
in_container app "$EX/rpal_echo_server" --socket "$tmp/app/echo.sock" --timeout 20000 >"$tmp/s.out" 2>&1 &
spid=$!
i=0
while [ ! -S "$tmp/vol/echo.sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
in_container side "$EX/rpal_echo_client" --socket "$tmp/side/echo.sock" --count 1000000000 \
  --timeout 20000 >"$tmp/c.out" 2>&1 &
cpid=$!
# Both ends' connections, their counters (in their claim files, published
# every 100 ms) moving.
if stat_until "$tmp/stat" '"kind":"conn".*"msgs_out":[1-9]' 2; then
  sed 's/^/    /' "$tmp/stat"
  # Each end named by its pid in its own namespace, marked, its peer too
  # (the writer saw pid 0 for it: the reader takes it from the peer's claim).
  n=$(grep -o '"pid":[1-9][0-9]*,"other_pidns":true,"kind":"conn","peer_slot":[0-9]*,"peer_pid":[1-9][0-9]*,"peer_other_pidns":true' "$tmp/stat" | wc -l)
  [ "$n" -eq 2 ] || fail "rpal stat from a third pid namespace: $n connections with both pids named and marked, want 2"
  in_container ops "$B/rpal" ls --json >"$tmp/ls" 2>/dev/null
  sed 's/^/    /' "$tmp/ls"
  n=$(grep -o '"other_pidns":true' "$tmp/ls" | wc -l)
  [ "$n" -eq 2 ] || fail "rpal ls from a third pid namespace: $n members in other pid namespaces, want 2"
  in_container ops "$B/rpal" ls >"$tmp/lst" 2>/dev/null
  grep -q 'in another pid namespace' "$tmp/lst" || fail "rpal ls: no note on other pid namespaces"
else
  fail "rpal stat from a third container never showed the two upgraded connections with messages"
  sed 's/^/    /' "$tmp/stat"
fi

# 2. The server killed mid-stream: the client fails at once.
# The server is the child of unshare: pid 1 of its namespace.
server=$(cat /proc/$spid/task/$spid/children 2>/dev/null | awk '{print $1}')
server=$(cat /proc/$server/task/$server/children 2>/dev/null | awk '{print $1}')
[ -n "$server" ] || fail "no server process found"
t0=$(now_ms)
kill -9 "$server"
wait $cpid
rc=$?
t1=$(now_ms)
echo "    server killed: client exit $rc after $((t1 - t0)) ms: $(tail -n 1 "$tmp/c.out")"
[ $rc -ne 0 ] || fail "client: exit 0 after its server was killed"
[ $((t1 - t0)) -lt 1000 ] || fail "client took $((t1 - t0)) ms to see its server die"
wait $spid 2>/dev/null
cpid= spid=
msgs=$(sed -n 's/.*the server closed the connection after \([0-9]*\) of.*/\1/p' "$tmp/c.out")

# 3. rpal gc from a third container: the dead server's claim goes.
in_container ops "$B/rpal" gc --json >"$tmp/gc" 2>&1
sed 's/^/    /' "$tmp/gc"
grep -q '"kind":"member"' "$tmp/gc" || fail "rpal gc from a third pid namespace removed no dead member"
in_container ops "$B/rpal" ls --json >"$tmp/ls" 2>/dev/null
grep -q '"members":\[\]' "$tmp/ls" || fail "members left after gc: $(cat "$tmp/ls")"

if [ $failures -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "echo pair across pid and mount namespaces: upgraded (${msgs:-?} messages), death seen, gc done"
exit 0
