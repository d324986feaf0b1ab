#!/bin/sh
# `rpal chaos`: 60 trials (12 of each kind of victim; CHAOS_TRIALS) must end with every
# count at 0, which the exit status says; and the tool must be able to fail:
# each --self-test (a survivor that corrupts a reply, leaks a region,
# crashes, hangs in a call) must be counted as such and make it exit 1.
# Run by tests/run.sh with RPAL_BIN (the build directory).
set -u

R="${RPAL_BIN:-$(pwd)/build}/rpal"
if [ ! -x "$R" ] || [ ! -x "${RPAL_BIN:-$(pwd)/build}/chaos" ]; then
  echo "no rpal or chaos program in ${RPAL_BIN:-build} (set RPAL_BIN to the build directory)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# A fixed seed, so that a failure here can be replayed by hand. CHAOS_TRIALS
# (a multiple of the 5 kinds; 60 by default) is fewer under emulation
# (tests/vm/pku.sh, tests/vm/arm64.sh).
n=${CHAOS_TRIALS:-60}
k5=$((n / 5))
"$R" chaos --trials $n --seed 0x5eed --json >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -ne 0 ]; then
  fail "$n trials: exit $rc"
  cat "$tmp/out" "$tmp/err"
fi
for k in "\"trials\":$n" '"hangs":0' '"crashes":0' '"leaks":0' '"corrupt":0' \
         "\"caller\":{\"trials\":$k5" "\"receiver\":{\"trials\":$k5" \
         "\"region-owner\":{\"trials\":$k5" "\"handshake\":{\"trials\":$k5" \
         "\"region-change\":{\"trials\":$k5"; do
  grep -qF "$k" "$tmp/out" || fail "$n trials: the JSON lacks $k"
done
grep -q '"seed":"0x0000000000005eed"' "$tmp/out" || fail "the seed is not reported"

# Each failure class is detected. Two trials each (a caller and a receiver
# trial: the misbehaving survivor is a service or a caller).
for st in corrupt leak crash hang; do
  case $st in
    crash) count=crashes ;; hang) count=hangs ;; leak) count=leaks ;; *) count=$st ;;
  esac
  # The crash self-test raises SIGSEGV on purpose: under ThreadSanitizer
  # its report goes to a file of this test's own, not to the runner's
  # report directory (where any report fails the test).
  TSAN_OPTIONS="${TSAN_OPTIONS:-} log_path=$tmp/tsan-selftest" \
    "$R" chaos --trials 2 --seed 7 --json --self-test $st >"$tmp/st" 2>"$tmp/sterr"
  rc=$?
  [ $rc -eq 1 ] || fail "--self-test $st: exit $rc, want 1"
  # The totals come before "kinds": one kind may count nothing (under
  # emulation a trial can end before its survivor misbehaves).
  if sed 's/"kinds".*//' "$tmp/st" | grep -qF "\"$count\":0,"; then
    fail "--self-test $st: not counted in $count"
    cat "$tmp/st"
  fi
done

# Human output: the table and the seed on stdout.
"$R" chaos --trials 1 --kind handshake --seed 3 >"$tmp/h" 2>/dev/null || fail "one handshake trial failed"
grep -q '^handshake  *1  *0  *0  *0  *0 ' "$tmp/h" || { fail "human output"; cat "$tmp/h"; }
grep -q 'seed 0x0000000000000003' "$tmp/h" || fail "human output lacks the seed"
"$R" chaos --kind nosuch >/dev/null 2>&1 && fail "an unknown kind is accepted"

[ $failures -eq 0 ]
