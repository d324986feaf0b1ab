#!/bin/sh
# The switch to rpal stays small and its documentation stays true:
#  - examples/rpal_echo_{server,client}.c differ from uds_echo_{server,client}.c
#    in at most 20 changed lines each (lines removed plus lines added, as
#    `diff -u | grep -c '^[-+][^-+]'` counts them);
#  - the diffs shown in docs/compat.md are exactly `diff -u` of the sources.
# With --update (`make docs-diff`) it rewrites those diffs in docs/compat.md
# instead of checking them. Each diff sits between
#   <!-- begin diff NAME -->  and  <!-- end diff NAME -->.
set -u
cd "$(dirname "$0")/.." || exit 1
MAX=20
doc=docs/compat.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

for side in server client; do
  a=examples/uds_echo_$side.c b=examples/rpal_echo_$side.c
  if [ ! -f "$a" ] || [ ! -f "$b" ]; then
    echo "no $a or $b"
    exit 1
  fi
  diff -u --label "$a" --label "$b" "$a" "$b" >"$tmp/$side.diff"
  n=$(grep -c '^[-+][^-+]' "$tmp/$side.diff")
  echo "$side: $n changed lines (at most $MAX)"
  [ "$n" -le $MAX ] || fail "$b differs from $a in $n lines, more than $MAX"
done

# Prints $doc with every diff block replaced by the diff of the sources.
render() {
  awk -v dir="$tmp" '
    /^<!-- begin diff [a-z]+ -->$/ {
      print; name = $4; skip = 1
      print "```diff"
      file = dir "/" name ".diff"
      if ((getline line < file) <= 0) { print "no diff named " name > "/dev/stderr"; exit 1 }
      do print line; while ((getline line < file) > 0)
      close(file)
      print "```"
      next
    }
    /^<!-- end diff [a-z]+ -->$/ { skip = 0 }
    !skip { print }
  ' "$doc"
}

if [ ! -f $doc ]; then
  fail "no $doc"
elif ! render >"$tmp/doc"; then
  fail "cannot render the diffs of $doc"
elif [ "${1:-}" = --update ]; then
  if cmp -s "$tmp/doc" $doc; then
    echo "$doc: diffs already up to date"
  else
    cp "$tmp/doc" $doc && echo "$doc: diffs rewritten"
  fi
else
  for side in server client; do
    grep -qx "<!-- begin diff $side -->" $doc || fail "$doc shows no diff of the ${side}s"
  done
  if ! cmp -s "$tmp/doc" $doc; then
    fail "the diffs in $doc are not those of the sources (run make docs-diff):"
    diff -u $doc "$tmp/doc" | sed 's/^/    /' | head -n 40
  fi
fi

if [ $failures -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "compat diffs: small, and docs/compat.md shows them as they are"
exit 0
