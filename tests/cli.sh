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

# ---- unknown words are named, not answered with the whole usage ------------
run frobnicate
expect_rc 2 "an unknown command"
err_has "unknown command 'frobnicate'" "an unknown command"
[ -s "$out" ] && fail "an unknown command wrote to stdout"
run
expect_rc 2 "no command"
err_has "usage" "no command"
run region frob x
expect_rc 2 "an unknown region subcommand"
err_has "unknown subcommand 'frob'" "an unknown region subcommand"
run region
expect_rc 2 "region without a subcommand"
err_has "create, info or rm" "region without a subcommand"
for c in "ls --bogus" "gc --dry-run" "stat --bogus" "version --bogus" "region info s64k --bogus" \
         "region rm s64k --bogus" "region create x --size 4K --bogus"; do
  set -- $c
  eval "w=\${$#}"
  run $c
  expect_rc 2 "rpal $c"
  err_has "'$w'" "rpal $c names the bad word"
  [ "$(wc -l <"$err")" -le 2 ] || { fail "rpal $c: more than a line or two on stderr"; show; }
done
for c in "ls extra" "gc extra" "stat extra" "version extra" "region info s64k extra"; do
  run $c
  expect_rc 2 "rpal $c"
  err_has "unexpected argument 'extra'" "rpal $c"
done
run region info s64k --huge
err_has "'--huge' does not apply" "region info --huge"
run region create x --size
expect_rc 2 "region create --size without a value"
err_has "--size needs a value" "region create --size without a value"
run region create x --size 4K --mode 999
expect_rc 2 "region create --mode 999"
err_has "bad mode '999'" "region create --mode 999"
run region create x y --size 4K
expect_rc 2 "region create with two names"
err_has "unexpected argument 'y'" "region create with two names"
[ -e "$RPAL_DIR/x" ] && fail "a refused region create left x"

# ---- --help: per command, to stdout, exit 0, and never taken for a NAME ------
for c in "region" "region create" "region info" "region rm" ls gc stat version bench chaos help; do
  run $c --help
  expect_rc 0 "rpal $c --help"
  out_has "usage: rpal" "rpal $c --help"
done
run help region create
out_has "usage: rpal region create" "rpal help region create"
run help nosuch
expect_rc 2 "rpal help nosuch"
for c in "region create --help" "region create --help --size 4K" "region create -h --size 4K"; do
  run $c
  expect_rc 0 "rpal $c"
  [ -e "$RPAL_DIR/--help" ] || [ -e "$RPAL_DIR/-h" ] && fail "rpal $c made a region named after the option"
done
run region info --help
out_has "usage: rpal region info" "region info --help"
run --help
expect_rc 0 "rpal --help"
for w in "region create" "region info" "region rm" "ls" "stat" "gc" "bench" "chaos" \
         "version" "help"; do
  out_has "rpal $w" "rpal --help lists rpal $w"
done
for b in paper call load heap pagetables regionchange; do
  out_has "$b" "rpal --help names the benchmark $b"
done
# Each benchmark's --help: its usage on stdout, exit 0, nothing on stderr; a
# bad option: exit 2 with the usage on stderr. (The protection-key and arm64
# machines build only some benchmarks: one that was not built is not asked.)
for b in paper call load heap pagetables regionchange pkeys; do
  [ -x "$(dirname "$R")/bench/$b" ] || continue
  run bench $b --help
  expect_rc 0 "rpal bench $b --help"
  out_has "usage:" "rpal bench $b --help"
  [ -s "$err" ] && { fail "rpal bench $b --help writes on stderr"; show; }
  run bench $b --no-such-option
  expect_rc 2 "rpal bench $b --no-such-option"
  err_has "usage:" "rpal bench $b --no-such-option"
done
run bench
expect_rc 2 "rpal bench without a NAME"
err_has "regionchange" "rpal bench without a NAME lists the benchmarks"
run bench nosuch
expect_rc 2 "rpal bench nosuch"
err_has "'nosuch'" "rpal bench nosuch"
run chaos --bogus
expect_rc 2 "rpal chaos --bogus"
err_has "unknown option '--bogus'" "rpal chaos --bogus"
run chaos --trials x
err_has "bad --trials 'x'" "rpal chaos --trials x"

# ---- errors say what was wrong and how to put it right ----------------------
run region create x --size 10
expect_rc 1 "region create --size 10"
err_has "try --size 4K" "region create --size 10"
run region create x --size 5000
err_has "try --size 8K" "region create --size 5000"
run region create /abs --size 4K
err_has "drop the leading '/'" "region create /abs"
run region create "a b" --size 4K
err_has "a space at byte 2" "region create 'a b'"
run region create .hidden --size 4K
err_has "starts with '.'" "region create .hidden"
run region create "a//b" --size 4K
err_has "empty component" "region create a//b"
run region create x --size 64M --huge
err_has "try --size 1G" "region create --huge --size 64M"
run region info nosuch
err_has "rpal ls lists them" "region info of a missing name"
run region create s64k --size 64K
err_has "rpal region rm s64k" "region create of an existing name"

# ---- --json where a script wants it -------------------------------------------
run region create cj --size 64K --json
expect_rc 0 "region create --json"
out_has '{"name":"cj","size":65536,"base":"0x' "region create --json"
out_has '"generation":0,"objects":[{"offset":0,"length":65536,"kind":"anon","prot":"rw-"}]}' \
  "region create --json (layout)"
run region create ce --size 64K --empty --json
out_has '"objects":[]' "region create --empty --json"
run region info ce
out_has "address space only" "region info of an --empty region"
run version --json
expect_rc 0 "version --json"
grep -qE '^\{"version":"[0-9]+\.[0-9]+\.[0-9]+"\}$' "$out" || { fail "version --json"; show; }
if command -v python3 >/dev/null; then
  for c in "region create cj2 --size 4K --json" "region info cj --json" "ls --json" \
           "gc --json" "stat --json" "version --json"; do
    run $c
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$out" 2>/dev/null ||
      { fail "rpal $c: not JSON"; show; }
  done
fi

# ---- rm: empty parents go, a directory is named, rm -r ------------------------
run region create d/e/f --size 4K
run region rm d
expect_rc 1 "region rm of a directory"
err_has "rpal region rm -r d" "region rm of a directory"
run region rm d/e/f
expect_rc 0 "region rm d/e/f"
[ -e "$RPAL_DIR/d" ] && fail "region rm d/e/f left the empty directories d/e"
run region create t/a --size 4K
run region create t/b/c --size 4K
run region create t2 --size 4K
run region rm -r t
expect_rc 0 "region rm -r t"
[ -e "$RPAL_DIR/t" ] && { fail "region rm -r t left t"; ls -laR "$RPAL_DIR/t"; }
[ -e "$RPAL_DIR/t2" ] || fail "region rm -r t removed t2"
run region create u/a --size 4K
: >"$RPAL_DIR/u/stray"
run region rm -r u
expect_rc 1 "region rm -r of a directory with a stray file"
err_has "not empty" "region rm -r of a directory with a stray file"
[ -e "$RPAL_DIR/u/a" ] && fail "region rm -r u left the region u/a"
[ -e "$RPAL_DIR/u/stray" ] || fail "region rm -r u removed a file that is not a region"
run region rm t2 cj ce
expect_rc 0 "region rm of three names"
[ -e "$RPAL_DIR/cj" ] && fail "region rm t2 cj ce left cj"

# ---- the namespace directory: missing, not a directory, not on tmpfs ----------
for c in ls gc stat "region info s64k" "region rm s64k"; do
  RPAL_DIR=/nonexistent/rpal run $c
  expect_rc 1 "RPAL_DIR=/nonexistent/rpal rpal $c"
  err_has "/nonexistent/rpal" "RPAL_DIR=/nonexistent/rpal rpal $c"
done
RPAL_DIR=/nonexistent/rpal run region create x --size 4K
expect_rc 1 "RPAL_DIR=/nonexistent/rpal rpal region create"
err_has "parent directory does not exist" "RPAL_DIR=/nonexistent/rpal rpal region create"
RPAL_DIR=$out run ls
expect_rc 1 "RPAL_DIR naming a file"
err_has "not a directory" "RPAL_DIR naming a file"
run ls
grep -q warning "$err" && { fail "rpal ls warns on tmpfs"; show; }
disk=$(mktemp -d "${RPAL_BIN:-$(pwd)/build}/cli-disk-XXXXXX")
case $(stat -f -c %T "$disk") in
  tmpfs|ramfs|hugetlbfs) echo "(the build directory is on $(stat -f -c %T "$disk"): no disk to warn about)" ;;
  *) RPAL_DIR=$disk run ls
     expect_rc 0 "rpal ls on a disk filesystem"
     err_has "not on tmpfs" "rpal ls on a disk filesystem" ;;
esac
rm -rf "$disk"

# ---- rpal(1) documents every option the command takes -------------------------
man1="$(dirname "$0")/../man/rpal.1"
# (The protection-key machine carries the programs and tests, not the man
# pages: there this part is for the other runs to check.)
[ -f "$man1" ] && for c in "" "region create" "region info" "region rm" ls gc stat version bench chaos; do
  "$R" $c --help 2>/dev/null
done | grep -o -- '--[a-z][a-z-]*' | sort -u >"$tmp/opts"
while read -r opt; do
  pat=$(printf '%s' "$opt" | sed 's/-/\\-/g')
  grep -qF -- "$pat" "$man1" || fail "rpal(1) does not document $opt"
done <"$tmp/opts"
[ ! -f "$man1" ] || grep -qF 'region rm \fR[\fP\-r' "$man1" ||
  fail "rpal(1) does not document region rm -r"

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all cli checks passed"
exit 0
