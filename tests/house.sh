#!/bin/sh
# The house rules a maintainer can check (issue 15), on the objects of the
# build under test ($RPAL_BIN, set by tests/run.sh):
#  1. layers: each file of src/ calls only files of the layers above it in
#     docs/design.md's table, or files named after it in its own row (so
#     region.c may call layout.c, never the reverse): no circles;
#  2. no function in src/ is longer than 80 lines;
#  3. librpal.a defines no global symbol outside rpal_* (the API) and
#     rpal__* (internal), so that a program's own heap_create or ns_open
#     can neither clash with nor replace one of ours;
#  4. the version is written once (include/rpal.h) and the man pages say it.
set -u
B=${RPAL_BIN:-build}
fail=0
bad() { echo "$*"; fail=1; }
for t in nm awk; do
  command -v $t >/dev/null || { echo "$t is not installed"; exit 77; }
done
[ -d "$B/obj" ] || { echo "no objects in $B/obj: run make first"; exit 77; }

# 1. The layer table: every `src/NAME.c` of docs/design.md's "Layers" table
# in order, with its row number. A file may call files of earlier rows, and
# files after it in its own row.
order=$(awk '/^## Layers/ { on = 1; next } on && /^## / { on = 0 }
  on && /^\| [a-z]/ { row++; line = $0
    while (match(line, /`src\/[a-z_]+\.c`/)) {
      f = substr(line, RSTART + 5, RLENGTH - 8); line = substr(line, RSTART + RLENGTH)
      if (!(f in seen)) { seen[f] = 1; print f, row, ++pos }
    } }' docs/design.md)
[ -n "$order" ] || bad "docs/design.md: no layer table found"
for c in src/*.c; do
  f=$(basename "$c" .c)
  echo "$order" | grep -q "^$f " || bad "src/$f.c is in no row of docs/design.md's layer table"
done
defs=$(mktemp)
trap 'rm -f "$defs"' EXIT
for o in "$B"/obj/*.o; do
  # (only rpal_*: run.o defines read, write... in the place of libc's, which
  # the layers below call through the kernel, not through run.c)
  nm --defined-only -g "$o" | awk -v f="$(basename "$o" .o)" 'NF == 3 && $3 ~ /^rpal_/ { print $3, f }'
done >"$defs"
for o in "$B"/obj/*.o; do
  f=$(basename "$o" .o)
  nm -u "$o" | awk '{ print $NF }' | while read -r sym; do
    to=$(awk -v s="$sym" '$1 == s { print $2; exit }' "$defs")
    [ -n "$to" ] && [ "$to" != "$f" ] || continue
    echo "$order" | awk -v a="$f" -v b="$to" -v s="$sym" '
      $1 == a { ra = $2; pa = $3 } $1 == b { rb = $2; pb = $3 }
      END { if (ra && rb && (rb > ra || (rb == ra && pb < pa)))
              printf "src/%s.c calls %s of src/%s.c, a layer above it\n", a, s, b }'
  done
done >"$defs.up"
if [ -s "$defs.up" ]; then cat "$defs.up"; fail=1; fi
rm -f "$defs.up"

# 2. Function length: from the `{` in column 0 to the `}` in column 0.
long=$(awk 'FNR == 1 { prev = "" }
  /^\{/ { start = FNR; name = prev }
  /^\}/ && start { if (FNR - start + 1 > 80) printf "%s:%d: %d lines: %s\n", FILENAME, start, FNR - start + 1, name; start = 0 }
  { if ($0 !~ /^\{/) prev = $0 }' src/*.c)
[ -z "$long" ] || bad "functions over 80 lines:
$long"

# 3. What the static library defines for the world.
lib="$B/librpal.a"
if [ -f "$lib" ]; then
  # (__odr_asan.NAME: AddressSanitizer's marker of our global NAME)
  other=$(nm -g --defined-only "$lib" 2>/dev/null |
    awk 'NF == 3 && $3 !~ /^rpal_/ && $3 !~ /^__odr_asan[.]rpal_/ { print $3 }' | sort -u)
  [ -z "$other" ] || bad "librpal.a defines globals outside rpal_*: $(echo $other)"
else
  bad "no $lib"
fi
# 3b. The version script lists exactly the header's functions.
hdr=$(grep -oE '\brpal_[a-z0-9_]+ *\(' include/rpal.h | sed 's/ *(//' | sort -u)
map=$(grep -oE '^ +rpal_[a-z0-9_]+;' src/librpal.map | tr -d ' ;' | sort -u)
[ "$hdr" = "$map" ] || bad "src/librpal.map and include/rpal.h differ: $(printf '%s\n' "$hdr" "$map" | sort | uniq -u | tr '\n' ' ')"

# 4. One version: the header's, which the Makefile reads; the man pages'
# titles must name it.
v=$(awk '/^#define RPAL_VERSION_(MAJOR|MINOR|PATCH) / { v = v (v == "" ? "" : ".") $3 } END { print v }' include/rpal.h)
stale=$(grep -L "^\.TH .*\"rpal $v\"" man/*.[137] 2>/dev/null | while read -r f; do [ -L "$f" ] || echo "$f"; done)
[ -z "$stale" ] || bad "man pages whose title does not say rpal $v: $(echo $stale)"

[ $fail = 0 ] && echo "layers, function lengths and exported names as docs/design.md says"
exit $fail
