#!/bin/sh
# bench/call, quickly: four transports in each mode with 2000 calls and
# --json. Every line must be one JSON object: either all the result keys with
# positive numbers, or (spin-shm in shared-core only, where spinning on the
# one CPU makes no sense) {"transport":...,"skipped":"..."}.
# Run by tests/run.sh with RPAL_BIN (the build directory).
set -u

BIN="${RPAL_BIN:-$(pwd)/build}/bench/call"
if [ ! -x "$BIN" ]; then
  echo "no benchmark program at $BIN (set RPAL_BIN to the build directory)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ncpu=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

transports="uds-epoll pipe spin-shm futex-shm"
ran=0
for mode in poll shared-core idle; do
  if [ "$mode" != shared-core ] && [ "$ncpu" -lt 2 ]; then
    echo "mode $mode needs two CPUs; this machine has $ncpu: not checked"
    continue
  fi
  ran=$((ran + 1))
  out=$tmp/$mode.out err=$tmp/$mode.err
  "$BIN" --mode "$mode" --count 2000 --json \
    --transport uds-epoll,pipe,spin-shm,futex-shm >"$out" 2>"$err"
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "$mode: exit $rc"
    sed 's/^/    err: /' "$err" | tail -n 20
  fi
  # One line per transport, in the order asked for.
  got=$(awk -F'"' '{ printf "%s ", $4 }' "$out")
  if [ "$got" != "$transports " ]; then
    fail "$mode: transports '$got', want '$transports '"
  fi
  # Under qemu-user (tests/vm/arm64.sh) the counter moves in steps of 1 us:
  # a latency below that reads 0 cycles, which is then allowed.
  awk -v mode="$mode" -v coarse="${RPAL_EMULATED:+1}" '
    function num(key,    s) {
      if (!match($0, "\"" key "\":-?[0-9][0-9.eE+-]*[,}]")) return "missing"
      s = substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 4)
      if (coarse && key ~ /^p50_/ && s + 0 == 0) return "ok"
      return s + 0 > 0 ? "ok" : "not positive (" s ")"
    }
    {
      if ($0 !~ /^\{"transport":"[a-z-]+",.*\}$/) {
        print "not a JSON object: " $0; bad++; next
      }
      split($0, f, "\""); name = f[4]
      if ($0 ~ /"skipped":/) {
        if (!(mode == "shared-core" && name == "spin-shm") ||
            $0 !~ /^\{"transport":"[a-z-]+","skipped":"[^"]*"\}$/) {
          print "unexpected skip: " $0; bad++
        }
        next
      }
      if ($0 !~ "\"mode\":\"" mode "\"") { print "mode is not " mode ": " $0; bad++ }
      if ($0 !~ /"size":32[,}]/) { print "size is not 32: " $0; bad++ }
      n = split("p50_cycles p99_cycles p50_ns p99_ns calls_per_s cpu_ns_per_call", k, " ")
      for (i = 1; i <= n; i++) {
        r = num(k[i])
        if (r != "ok") { print name ": " k[i] " " r; bad++ }
      }
      # p99 at least p50; exactly the nine keys.
      if (match($0, /"p50_cycles":[0-9]+/)) p50 = substr($0, RSTART + 13, RLENGTH - 13) + 0
      if (match($0, /"p99_cycles":[0-9]+/)) p99 = substr($0, RSTART + 13, RLENGTH - 13) + 0
      if (p99 < p50) { print name ": p99 " p99 " below p50 " p50; bad++ }
      keys = gsub(/"[a-z0-9_]+":/, "&")
      if (keys != 9) { print name ": " keys " keys, want 9: " $0; bad++ }
    }
    END { exit bad > 0 }
  ' "$out" >"$tmp/check" || {
    fail "$mode: bad lines"
    sed 's/^/    /' "$tmp/check"
  }
done

if [ $ran -eq 0 ]; then
  echo "no mode could run here"
  exit 77
fi
if [ $failures -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "bench/call: $ran modes checked"
exit 0
