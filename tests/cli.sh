#!/bin/sh
# The rpal command: region create/info/rm, ls, gc, version, and how it fails.
# Run by tests/run.sh with RPAL_BIN (the build directory) and RPAL_DIR (a
# fresh namespace). Prints every failed check; exits 1 if any failed.
set -u

R="${RPAL_BIN:-$(pwd)/build}/rpal"
if [ ! -x "$R" ]; then
  echo "no rpal command at $R (set RPAL_BIN to the build directory)"
  exit 77
fi
tmp=$(mktemp -d)
own_dir=
if [ -z "${RPAL_DIR:-}" ]; then
  RPAL_DIR=$(mktemp -d /dev/shm/rpal-test-XXXXXX)
  own_dir=$RPAL_DIR
fi
export RPAL_DIR
trap 'rm -rf "$tmp" ${own_dir:+"$own_dir"}' EXIT

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# run ARGS...: runs rpal; sets rc, and leaves stdout and stderr in $out, $err.
out=$tmp/out err=$tmp/err
run() {
  "$R" "$@" >"$out" 2>"$err"
  rc=$?
}
show() { # the last command's output, indented, for a failure report
  sed 's/^/    out: /' "$out"
  sed 's/^/    err: /' "$err"
}
expect_rc() { # expect_rc WANT WHAT
  if [ "$rc" -ne "$1" ]; then
    fail "$2: exit $rc, want $1"
    show
  fi
}
out_has() { # out_has FIXED-STRING WHAT
  if ! grep -qF -- "$1" "$out"; then
    fail "$2: stdout lacks $1"
    show
  fi
}
err_has() {
  if ! grep -qF -- "$1" "$err"; then
    fail "$2: stderr lacks $1"
    show
  fi
}
err_nonempty() {
  if [ ! -s "$err" ]; then
    fail "$1: no message on stderr"
  fi
}

# ---- create with every size form, info --json ------------------------------
for spec in "s64k 64K 65536" "s1m 1M 1048576" "s1g 1G 1073741824" \
            "s4096 4096 4096" "sub/dir/s128k 128K 131072"; do
  set -- $spec
  run region create "$1" --size "$2"
  expect_rc 0 "region create $1 --size $2"
  run region info "$1" --json
  expect_rc 0 "region info $1 --json"
  out_has "\"name\":\"$1\"" "region info $1 --json"
  out_has "\"size\":$3," "region info $1 --json (size $2)"
  out_has "\"mode\":\"0600\"" "region info $1 --json (default mode)"
  run region info "$1"
  expect_rc 0 "region info $1"
  out_has "$3" "region info $1 (human form)"
done

# ---- the layout in region info -----------------------------------------------
run region info s64k
out_has "layout:    generation 0, 1 object" "region info s64k (layout)"
out_has "anon  rw-" "region info s64k (the default object)"
run region info s64k --json
out_has '"generation":0,"objects":[{"offset":0,"length":65536,"kind":"anon","prot":"rw-"}]}' \
  "region info s64k --json (layout)"

run region create m640 --size 64K --mode 0640
expect_rc 0 "region create m640 --mode 0640"
run region info m640 --json
expect_rc 0 "region info m640 --json"
out_has '"mode":"0640"' "region info m640 --json"
if [ "$(stat -c %a "$RPAL_DIR/m640" 2>/dev/null)" != 640 ]; then
  fail "the file of m640 does not have mode 0640"
fi

# ---- bad sizes: an error on stderr, nothing created ------------------------
for s in abc 0 12Q -5 4097 ""; do
  run region create badsize --size "$s"
  if [ "$rc" -eq 0 ]; then
    fail "region create --size '$s' succeeded"
  fi
  err_nonempty "region create --size '$s'"
  if [ -e "$RPAL_DIR/badsize" ]; then
    fail "region create --size '$s' left a file"
    rm -f "$RPAL_DIR/badsize"
  fi
  run region info badsize
  if [ "$rc" -eq 0 ]; then
    fail "region create --size '$s' made a region"
  fi
done
run region create nosize
[ "$rc" -ne 0 ] || fail "region create without --size succeeded"
err_nonempty "region create without --size"
[ -e "$RPAL_DIR/nosize" ] && fail "region create without --size left a file"

# ---- an existing name, a missing name --------------------------------------
run region create s64k --size 64K
expect_rc 1 "region create of an existing name"
err_has "File exists" "region create of an existing name"
run region info s64k --json
out_has '"size":65536,' "s64k after the failed re-create"

run region info nosuch
expect_rc 1 "region info of a missing name"
err_nonempty "region info of a missing name"
run region info nosuch --json
expect_rc 1 "region info --json of a missing name"

# ---- ls ---------------------------------------------------------------------
names="s64k s1m s1g s4096 sub/dir/s128k m640"
count=6
run ls
expect_rc 0 "ls"
for n in $names; do
  if ! awk '{ print $1 }' "$out" | grep -qxF -- "$n"; then
    fail "ls does not list $n"
    show
  fi
done
got=$(grep -cE '^(s|sub/|m640)' "$out")
[ "$got" -eq "$count" ] || { fail "ls shows $got regions, want $count"; show; }

run ls --json
expect_rc 0 "ls --json"
got=$(grep -o '{"name":' "$out" | wc -l)
[ "$got" -eq "$count" ] || { fail "ls --json has $got region objects, want $count"; show; }
for n in $names; do
  line=$(grep -F "{\"name\":\"$n\"," "$out")
  if [ -z "$line" ]; then
    fail "ls --json has no object for $n"
    continue
  fi
  for key in '"size":' '"base":"0x' '"mode":"0' '"creator_pid":' \
             '"creator_alive":' '"attached":['; do
    case $line in
      *"$key"*) ;;
      *) fail "ls --json: the object of $n lacks $key"; echo "    $line" ;;
    esac
  done
  # The creating command has exited and nobody maps the region.
  case $line in
    *'"creator_alive":false'*'"attached":[]'*) ;;
    *) fail "ls --json: $n should have a dead creator and nobody attached"
       echo "    $line" ;;
  esac
done
line=$(grep -F '{"name":"s1g",' "$out")
case $line in
  *'"size":1073741824,'*) ;;
  *) fail "ls --json: s1g has the wrong size"; echo "    $line" ;;
esac
# Every base differs.
nb=$(grep -o '"base":"0x[0-9a-f]*"' "$out" | sort -u | wc -l)
[ "$nb" -eq "$count" ] || fail "ls --json: $nb distinct bases for $count regions"

# ---- rm ---------------------------------------------------------------------
run region rm s4096
expect_rc 0 "region rm s4096"
[ -e "$RPAL_DIR/s4096" ] && fail "region rm left the file"
run ls
if awk '{ print $1 }' "$out" | grep -qxF s4096; then
  fail "ls still lists s4096 after rm"
fi
awk '{ print $1 }' "$out" | grep -qxF s64k || fail "rm s4096 took s64k along"
run ls --json
grep -qF '"name":"s4096"' "$out" && fail "ls --json still lists s4096 after rm"
run region rm s4096
expect_rc 1 "region rm of a removed name"
err_nonempty "region rm of a removed name"
run region info s4096
expect_rc 1 "region info after rm"
run region rm sub/dir/s128k
expect_rc 0 "region rm sub/dir/s128k"

# ---- huge regions: what fails without hugetlb pages (region_huge does more) --
run region create hbad --size 64M --huge
expect_rc 1 "region create --huge --size 64M"
err_has "Invalid argument" "region create --huge --size 64M"
[ -e "$RPAL_DIR/hbad" ] && fail "region create --huge --size 64M left a file"
RPAL_HUGE_DIR=$tmp run region create hbad --size 1G --huge
expect_rc 1 "region create --huge with RPAL_HUGE_DIR not on hugetlbfs"
err_has "hugetlbfs" "region create --huge with RPAL_HUGE_DIR not on hugetlbfs"
[ -e "$RPAL_DIR/hbad" ] && fail "region create --huge without hugetlbfs left a file"
run region info s64k --huge
expect_rc 2 "region info --huge"
run region info s64k --json
out_has '"huge":false' "region info --json of a 4 KiB-page region"

# ---- gc, version, usage -----------------------------------------------------
run gc
expect_rc 0 "gc"
[ -s "$out" ] || fail "gc printed nothing"
run ls
awk '{ print $1 }' "$out" | grep -qxF s64k || fail "gc removed the persistent s64k"

run version
expect_rc 0 "version"
grep -qE '^rpal [0-9]+\.[0-9]+\.[0-9]+$' "$out" || { fail "version output"; show; }

run frobnicate
expect_rc 2 "an unknown command"
err_has "usage" "an unknown command"
[ -s "$out" ] && fail "an unknown command wrote to stdout"
run
expect_rc 2 "no command"
err_has "usage" "no command"
run region frob x
expect_rc 2 "an unknown region subcommand"
err_has "usage" "an unknown region subcommand"

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all cli checks passed"
exit 0
