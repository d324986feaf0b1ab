#!/bin/sh
# rpal bench load --quick --json: the output is well formed and complete,
# not fast. Every line is one JSON object; there is one result per
# transport x placement x point (one round in --quick) with every figure
# positive (context switches may be zero), the server's count of the window
# equal to the client's, the rate consistent with the count and the time,
# and the CPU the sum of its two parts; then a median per result, a ratio
# per rpal transport and point, and one targets line per rpal transport and
# placement. Bad options are usage errors that name the bad word, and
# nothing is left in $TMPDIR. The performance targets are the benchmark's
# business, not this test's.
# Run by tests/run.sh with RPAL_BIN (the build directory).
set -u

B="${RPAL_BIN:-$(pwd)/build}"
R="$B/rpal"
if [ ! -x "$R" ] || [ ! -x "$B/bench/load" ]; then
  echo "no rpal command or bench/load in $B (set RPAL_BIN to the build directory)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/t"
export TMPDIR="$tmp/t" # where the benchmark makes its directory, and must remove it
ncpu=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1) # CPUs we may use

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

start=$(date +%s)
"$R" bench load --quick --json >"$tmp/json" 2>"$tmp/err"
rc=$?
secs=$(($(date +%s) - start))
if [ $rc -ne 0 ]; then
  fail "--quick --json: exit $rc"
  sed 's/^/    err: /' "$tmp/err" | tail -n 30
fi
echo "--quick --json: $(wc -l <"$tmp/json") lines in ${secs}s"
grep -q '^load: \[ *24/24\]' "$tmp/err" || fail "no progress on stderr up to run 24/24"

awk -v ncpu="$ncpu" '
  function val(key,    s) {
    if (!match($0, "\"" key "\":-?[0-9][0-9.eE+-]*[,}]")) return "missing"
    return substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 4) + 0
  }
  function str(key) {
    if (!match($0, "\"" key "\":\"[^\"]*\"")) return ""
    return substr($0, RSTART + length(key) + 4, RLENGTH - length(key) - 5)
  }
  function err(msg) { print msg ": " $0; bad++ }
  function positive(keys,    k, n, i, v) {
    n = split(keys, k, " ")
    for (i = 1; i <= n; i++) {
      v = val(k[i])
      if (v == "missing" || v <= 0) err(k[i] " missing or not positive")
    }
  }
  function nonneg(keys,    k, n, i, v) {
    n = split(keys, k, " ")
    for (i = 1; i <= n; i++) {
      v = val(k[i])
      if (v == "missing" || v < 0) err(k[i] " missing or negative")
    }
  }
  # The point: its kind and its parameter agree with its label.
  function point_ok(    p, l) {
    p = str("point"); l = str("load")
    if (l == "open") {
      if (val("offered_per_s") != (p == "1k/s" ? 1000 : p == "100k/s" ? 100000 : -1))
        err("open point " p " with offered_per_s " val("offered_per_s"))
    } else if (l == "closed") {
      if (val("think_us") != (p == "sat" ? 0 : p == "think 50us" ? 50 : -1))
        err("closed point " p " with think_us " val("think_us"))
    } else {
      err("load is neither open nor closed")
    }
    return str("transport") "/" str("placement") "/" p
  }
  BEGIN {
    nt = split("uds-epoll rpal-compat rpal-call", T, " ")
    np = split("split shared", P, " ")
    nq = split("1k/s|100k/s|sat|think 50us", Q, "|")
  }
  $0 !~ /^\{.*\}$/ { err("not a JSON object"); next }
  str("summary") == "" {
    key = point_ok()
    if (val("round") != 1) err("round is not 1")
    if (str("placement") == "split" && ncpu < 2) {
      if ($0 !~ /"skipped":"/) err("split on one CPU, not skipped")
      result[key]++; next
    }
    if ($0 ~ /"error":/ || $0 ~ /"skipped":/) { err("did not run"); next }
    result[key]++
    if (val("size") != 32) err("size is not 32")
    positive("msgs server_msgs warmup_msgs seconds achieved_per_s p50_ns p99_ns rtt_p50_ns rtt_p99_ns client_cpu_ns_per_msg server_cpu_ns_per_msg cpu_ns_per_msg")
    nonneg("client_vcsw_per_msg client_ivcsw_per_msg server_vcsw_per_msg server_ivcsw_per_msg")
    n = val("msgs")
    if (n != val("server_msgs")) err("server counted " val("server_msgs") ", client " n)
    if (n < 100) err("fewer than the 100 messages of --quick")
    if (val("p99_ns") < val("p50_ns")) err("p99 below p50")
    if (val("rtt_p50_ns") > val("p50_ns")) err("round trip above the latency from the due time")
    if (str("load") == "closed" && val("rtt_p50_ns") != val("p50_ns")) err("closed loop: rtt_p50_ns is not p50_ns")
    r = n / val("seconds"); a = val("achieved_per_s")
    if (a < r * 0.99 || a > r * 1.01) err("achieved_per_s " a " but msgs/seconds " r)
    c = val("client_cpu_ns_per_msg") + val("server_cpu_ns_per_msg"); t = val("cpu_ns_per_msg")
    if (t < c - 0.2 || t > c + 0.2) err("cpu_ns_per_msg is not client + server")
    if (str("load") == "open" && a > val("offered_per_s") * 1.01) err("achieved above offered")
    next
  }
  str("summary") == "median" {
    median[point_ok()]++
    positive("rounds msgs achieved_per_s p50_ns p99_ns rtt_p50_ns cpu_ns_per_msg")
    next
  }
  str("summary") == "ratio" {
    key = point_ok()
    ratio[key]++
    if (str("vs") != "uds-epoll") err("ratio not against uds-epoll")
    if (str("transport") == "uds-epoll") err("a ratio of uds-epoll to itself")
    positive("rounds cpu_ratio p50_ratio p99_ratio rtt_p50_ratio")
    if ($0 !~ /"cpu_target_met":(true|false),"p50_target_met":(true|false)\}$/) err("no target flags")
    next
  }
  str("summary") == "targets" {
    targets[str("transport") "/" str("placement")]++
    if (val("points") != (str("placement") == "split" && ncpu < 2 ? 0 : nq)) err("targets over " val("points") " points")
    if (val("cpu_met") > val("points") || val("p50_met") > val("points")) err("more points met than measured")
    next
  }
  { err("unknown summary") }
  END {
    for (i = 1; i <= nt; i++)
      for (j = 1; j <= np; j++) {
        for (k = 1; k <= nq; k++) {
          key = T[i] "/" P[j] "/" Q[k]
          if (result[key] != 1) { print "results for " key ": " result[key] + 0; bad++ }
          ran = !(P[j] == "split" && ncpu < 2)
          if (median[key] != ran) { print "medians for " key ": " median[key] + 0; bad++ }
          if (ratio[key] != (ran && i > 1)) { print "ratios for " key ": " ratio[key] + 0; bad++ }
        }
        if (i > 1 && targets[T[i] "/" P[j]] != 1) { print "no targets line for " T[i] "/" P[j]; bad++ }
      }
    exit bad > 0
  }
' "$tmp/json" >"$tmp/check" || {
  fail "--json output"
  sed 's/^/    /' "$tmp/check" | head -n 40
}

# Bad options: exit 2, naming the word.
check_usage() {
  want=$1
  shift
  "$B/bench/load" "$@" >"$tmp/out" 2>&1
  rc=$?
  [ $rc -eq 2 ] || fail "$*: exit $rc, not 2"
  grep -qF -- "$want" "$tmp/out" || fail "$*: the message does not name '$want': $(cat "$tmp/out")"
}
check_usage "'10x'" --rates 1k,10x
check_usage "'ipc'" --transport uds-epoll,ipc
check_usage "'middle'" --placement middle
check_usage "'-5'" --think-us 10,-5
check_usage "'8'" --size 8
check_usage "--bogus" --bogus

left=$(ls -A "$tmp/t")
[ -z "$left" ] || fail "left in \$TMPDIR: $left"

if [ $failures -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "bench/load: --quick --json complete and well formed"
exit 0
