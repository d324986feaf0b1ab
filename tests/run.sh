#!/bin/sh
# The test runner: every program in $B/tests and every tests/*.sh runs under
# a timeout with its own namespace directory; exit 0 is PASS, 77 SKIP (the
# reason is the test's last line of output), anything else FAIL. The last
# line is "N passed, N failed, N skipped"; any failure makes the exit status 1.
# Usage: B=build sh tests/run.sh [NAME...]
B=${B:-build}
TIMEOUT=${TEST_TIMEOUT:-120}
export RPAL_BIN="$(cd "$B" && pwd)"
# A ThreadSanitizer build (make TSAN=1; its programs call __tsan_init): the
# runtime reads tests/tsan.supp (what it cannot see synchronised across
# processes) and writes its reports to files of their own, one per process,
# so that a report from a child whose stderr a test swallows, or whose exit
# status (66 after a report) nobody checks, still fails the test.
# die_after_fork=0: a forked child of a threaded test attaches regions, which
# starts the region agent thread; glibc allows that and so does rpal (its
# fork handlers reset the per-process state), but TSan by default refuses
# any thread started after a multi-threaded fork.
tsan= norand=
if grep -q __tsan_init "$B/rpal" 2>/dev/null; then
  tsan=1
  tsan_opts="suppressions=$(pwd)/tests/tsan.supp die_after_fork=0 ${TSAN_OPTIONS:-}"
  # gcc 12's and clang 14's TSan runtimes expect a PIE binary between
  # 0x550000000000 and 0x568000000000: true with up to 28 bits of mmap
  # randomisation (vm.mmap_rnd_bits, 28 here), not with the 32 of some
  # distributions' kernels, where the runtime dies ("unexpected memory
  # mapping"). There, run the tests without address randomisation.
  if [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)" -gt 28 ]; then
    norand="setarch $(uname -m) -R"
  fi
fi
pass=0 fail=0 skip=0
failed=""
if [ $# -gt 0 ]; then list="$*"; else
  list="$(ls "$B"/tests/ 2>/dev/null) $(cd tests && ls *.sh 2>/dev/null | grep -v '^run.sh$')"
fi
for t in $list; do
  case $t in
    *.sh) cmd="sh tests/$t" name=${t%.sh} ;;
    *) cmd="$B/tests/$t" name=$t ;;
  esac
  dir=$(mktemp -d /dev/shm/rpal-test-XXXXXX)
  chmod 755 "$dir"
  out=$(mktemp)
  read start _ </proc/uptime # not date +%N: busybox's date (tests/vm) has no %N
  if [ -n "$tsan" ]; then
    tlog=$(mktemp -d)
    export TSAN_OPTIONS="$tsan_opts log_path=$tlog/tsan"
  fi
  RPAL_DIR=$dir timeout -k 5 "$TIMEOUT" $norand $cmd >"$out" 2>&1
  rc=$?
  if [ -n "$tsan" ]; then
    if [ -n "$(ls "$tlog")" ]; then
      for f in "$tlog"/*; do echo "== ThreadSanitizer report, ${f##*/}:"; cat "$f"; done >>"$out"
      [ $rc = 0 ] || [ $rc = 77 ] && rc=66
    fi
    rm -rf "$tlog"
  fi
  read end _ </proc/uptime
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  case $rc in
    0) pass=$((pass + 1)); printf 'PASS %-28s %6ss\n' "$name" "$secs" ;;
    77) skip=$((skip + 1)); printf 'SKIP %-28s (%s)\n' "$name" "$(tail -n 1 "$out")" ;;
    *) fail=$((fail + 1)); failed="$failed $name"
       [ $rc = 124 ] && echo "  (timed out after ${TIMEOUT}s)" >>"$out"
       printf 'FAIL %-28s exit %s\n' "$name" "$rc"; sed 's/^/    /' "$out" | tail -n ${TEST_LOG_LINES:-40} ;;
  esac
  rm -rf "$dir" "$out"
done
[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
