#!/bin/sh
# The man pages in the source tree: every page reads with `man -l` from
# another directory without a warning (an alias page is a symbolic link to
# its page, never a .so request, which man -l would look up from the
# current directory); every function declared in include/rpal.h has a
# page; a page whose ERRORS list -E constants includes <errno.h> in its
# SYNOPSIS, since comparing a return value with them needs it.
set -u
command -v man >/dev/null || { echo "man is not installed"; exit 77; }
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

for f in "$root"/man/*.[137]; do
  p=${f##*/}
  if [ -L "$f" ]; then
    t=$(readlink "$f")
    case $t in */*) fail "$p links to $t, not to a page beside it" ;; esac
    [ -f "$root/man/$t" ] || fail "$p links to $t, which is not there"
  elif grep -q '^\.so ' "$f"; then
    fail "$p is a .so request: make it a symbolic link to its page"
  fi
  (cd / && man -l --warnings=w "$f" >"$tmp/out" 2>"$tmp/err")
  [ -s "$tmp/err" ] && { fail "man -l $p: $(head -n 3 "$tmp/err")"; }
  grep -q "rpal Manual" "$tmp/out" || fail "man -l $p did not render the page"
  if [ ! -L "$f" ] && grep -q '^\.SH ERRORS' "$f" && grep -q '\\-E[A-Z]' "$f"; then
    sed -n '/^\.SH SYNOPSIS/,/^\.SH DESCRIPTION/p' "$f" | grep -q '#include <errno.h>' ||
      fail "$p lists -E errors but its SYNOPSIS lacks #include <errno.h>"
  fi
done

for fn in $(grep -oE '\brpal_[a-z_0-9]+\(' "$root/include/rpal.h" | tr -d '(' | sort -u); do
  [ -e "$root/man/$fn.3" ] || fail "$fn, declared in rpal.h, has no page man/$fn.3"
done

if [ $failures -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "every page reads with man -l from /; every function has a page"
exit 0
