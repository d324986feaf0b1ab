#!/bin/sh
# rpal bench paper, quickly: 500 messages per transport. With --json, one
# object per transport with every figure positive and the count asked for,
# then the ratio with its target; in text, the paper's line for each, the
# ratio line and the table. Nothing may be left in the temporary directory.
# Run by tests/run.sh with RPAL_BIN (the build directory).
set -u

R="${RPAL_BIN:-$(pwd)/build}/rpal"
if [ ! -x "$R" ] || [ ! -x "${RPAL_BIN:-$(pwd)/build}/bench/paper" ]; then
  echo "no rpal command or bench/paper in ${RPAL_BIN:-build} (set RPAL_BIN to the build directory)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/t"
export TMPDIR="$tmp/t" # where the benchmark makes its directory, and must remove it

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

"$R" bench paper --count 500 --json >"$tmp/json" 2>"$tmp/err" || {
  fail "--json: exit $?"
  sed 's/^/    err: /' "$tmp/err" | tail -n 20
}
sed 's/^/    /' "$tmp/json"
awk '
  NR <= 2 {
    want = NR == 1 ? "epoll+uds" : "rpal"
    if (index($0, "{\"transport\":\"" want "\",\"size\":32,\"count\":500,") != 1) { print "line " NR ": " $0; bad++ }
    n = split("total_cycles avg_cycles avg_ns rtt_ns client_cpu_ns_per_msg server_cpu_ns_per_msg", k, " ")
    for (i = 1; i <= n; i++)
      if (!match($0, "\"" k[i] "\":[0-9.]+") || substr($0, RSTART + length(k[i]) + 3, RLENGTH - length(k[i]) - 3) + 0 <= 0) {
        print want ": " k[i] " missing or not positive"; bad++
      }
    next
  }
  NR == 3 { if ($0 !~ /^\{"ratio":[0-9.]+,"target":11\.5\}$/) { print "line 3: " $0; bad++ } ; next }
  { print "extra line: " $0; bad++ }
  END { if (NR != 3) { print NR " lines, want 3"; bad++ } ; exit bad > 0 }
' "$tmp/json" >"$tmp/check" || { fail "--json output"; sed 's/^/    /' "$tmp/check"; }

"$R" bench paper --count 500 >"$tmp/text" 2>"$tmp/err" || {
  fail "text: exit $?"
  sed 's/^/    err: /' "$tmp/err" | tail -n 20
}
grep -Eq '^epoll\+UDS: Message length: 32 bytes, Total TSC cycles: [0-9]+, Message count: 500, Average latency: [0-9]+ cycles$' "$tmp/text" ||
  fail "text: no epoll+UDS line"
grep -Eq '^rpal: +Message length: 32 bytes, Total TSC cycles: [0-9]+, Message count: 500, Average latency: [0-9]+ cycles$' "$tmp/text" ||
  fail "text: no rpal line"
grep -Eq '^ratio \(epoll\+UDS / rpal average latency\): [0-9.]+ \(target: 11\.5' "$tmp/text" ||
  fail "text: no ratio line"
grep -q 'client CPU ns/msg' "$tmp/text" || fail "text: no CPU table"
grep -q 'paper: rpal: done' "$tmp/err" || fail "text: no progress on stderr"

"$R" bench paper --count 0 >/dev/null 2>&1
[ $? -eq 2 ] || fail "--count 0: not a usage error"

# --pidns: the rpal pair once more with the server in a pid and mount
# namespace of its own (root: CI runs as root), and its ratio to the pair
# in one namespace.
# A kernel (before 6.9) or an emulator (qemu-user) that cannot name a
# process across pid namespaces: tests/container_ns --probe says why, and
# the test ends as a skip with that reason once the rest has passed.
pidns_skip=
probe="${RPAL_BIN:-$(pwd)/build}/tests/container_ns"
if [ "$(id -u)" = 0 ] && [ -x "$probe" ]; then
  pidns_skip=$("$probe" --probe) && pidns_skip=
fi
if [ -n "$pidns_skip" ]; then
  echo "--pidns not run: $pidns_skip"
elif [ "$(id -u)" = 0 ]; then
  "$R" bench paper --count 500 --pidns --rounds 1 --json >"$tmp/ns" 2>"$tmp/err" || {
    fail "--pidns: exit $?"
    sed 's/^/    err: /' "$tmp/err" | tail -n 20
  }
  sed 's/^/    /' "$tmp/ns"
  grep -Eq '^\{"transport":"rpal-pidns","size":32,"count":500,' "$tmp/ns" || fail "--pidns: no rpal-pidns object"
  grep -Eq '^\{"pidns_ratio":[0-9.]+,"pidns_target":1\.1,"uds_over_pidns":[0-9.]+\}$' "$tmp/ns" ||
    fail "--pidns: no pidns_ratio object"
else
  echo "not root: --pidns not run (it needs root to make the namespaces)"
fi
"$R" bench paper --pidns --transport uds >/dev/null 2>&1
[ $? -eq 2 ] || fail "--pidns without the rpal pair: not a usage error"

left=$(ls -A "$tmp/t")
[ -z "$left" ] || fail "left in \$TMPDIR: $left"

if [ $failures -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
if [ -n "$pidns_skip" ]; then
  echo "the rest passed; --pidns not run: $pidns_skip"
  exit 77
fi
echo "bench/paper: json and text checked"
exit 0
