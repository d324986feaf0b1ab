#!/bin/sh
# Every code block of README.md works as written.
#  - A C block is a complete program: its first line names its file in
#    examples/ ("/* examples/NAME.c"), and the block is that file, byte for
#    byte; it is compiled as a newcomer would (cc, default standard, the
#    warnings as errors) against the build's library, and run.
#  - In a sh block, every line is checked: `make ARGS` must be a target the
#    Makefile has (make -n); `build/examples/PROG` runs (in the background
#    when its comment says to leave it running, else it must exit 0);
#    `rpal ...` runs in a namespace of its own and must exit 0 (a --huge
#    line may fail only with a message that says what the machine lacks;
#    chaos and bench, which take minutes, are checked against their --help).
#    A line of another kind fails: this test would not be checking it.
# The quick start runs with HOME in a temporary directory, so that its key
# file is not the user's. Run by tests/run.sh with RPAL_BIN and RPAL_DIR.
set -u

root=$(cd "$(dirname "$0")/.." && pwd)
B=${RPAL_BIN:-$root/build}
[ -x "$B/rpal" ] || { echo "no rpal in $B (set RPAL_BIN to the build directory)"; exit 77; }
tmp=$(mktemp -d)
[ -n "${RPAL_DIR:-}" ] || RPAL_DIR=$tmp/rpal
export RPAL_DIR
bg=
trap 'kill $bg 2>/dev/null; rm -rf "$tmp"' EXIT
failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# The blocks: $tmp/block.N.LANG, in order.
awk -v dir="$tmp" '
  /^```/ {
    if (inb) { inb = 0; close(f); next }
    lang = substr($0, 4); n++; inb = 1
    f = dir "/block." n "." (lang == "" ? "text" : lang)
    printf "" > f
    next
  }
  inb { print > f }
' "$root/README.md"
ls "$tmp"/block.* >/dev/null 2>&1 || { fail "no code blocks in README.md"; exit 1; }

# Flags to link the build's static library (a sanitized build's needs its
# runtime; a ThreadSanitizer build is left to tests/examples.sh).
cflags=
if grep -q __tsan_init "$B/rpal" 2>/dev/null; then
  cflags=skip
elif grep -q __asan_init "$B/rpal" 2>/dev/null; then
  cflags="-fsanitize=address,undefined"
fi

nc=0 nsh=0
for blk in $(ls "$tmp"/block.* | sort -t. -k2 -n); do
  case $blk in
    *.c)
      nc=$((nc + 1))
      file=$(head -n 1 "$blk" | sed -n 's|^/\* \(examples/[a-z_]*\.c\).*|\1|p')
      if [ -z "$file" ] || [ ! -f "$root/$file" ]; then
        fail "README C block $nc does not start with /* examples/NAME.c of a file there: $(head -n 1 "$blk")"
        continue
      fi
      if ! cmp -s "$blk" "$root/$file"; then
        fail "README C block $nc differs from $file:"
        diff -u "$root/$file" "$blk" | head -n 20 | sed 's/^/    /'
        continue
      fi
      [ "$cflags" = skip ] && continue
      name=$(basename "$file" .c)
      # ($CC: the arm64 run's cross compiler; a newcomer's is cc.)
      if ! ${CC:-cc} -Wall -Wextra -Werror $cflags -I"$root/include" -o "$tmp/$name" "$blk" \
           "$B/librpal.a" 2>"$tmp/cc.err"; then
        fail "README's $file does not compile as a newcomer's cc would:"
        sed 's/^/    /' "$tmp/cc.err"
        continue
      fi
      "$tmp/$name" >"$tmp/run.out" 2>&1 || { fail "README's $file exited $?"; sed 's/^/    /' "$tmp/run.out"; }
      ;;
    *.sh)
      nsh=$((nsh + 1))
      while IFS= read -r line; do
        cmd=${line%%#*}
        cmd=$(echo "$cmd" | sed 's/[[:space:]]*$//')
        [ -z "$cmd" ] && continue
        set -- $cmd
        case $1 in
          make)
            shift
            args=$(echo "$*" | sed 's/-j[^ ]*//')
            (cd "$root" && MAKEFLAGS= make -n $args >/dev/null 2>"$tmp/make.err") ||
              { fail "README: '$cmd': not a target of the Makefile"; sed 's/^/    /' "$tmp/make.err"; }
            ;;
          build/examples/*)
            prog=$B/examples/${1#build/examples/}
            shift
            [ -x "$prog" ] || { fail "README: '$cmd': no $prog"; continue; }
            case $line in
              *"leave it running"*)
                HOME=$tmp XDG_RUNTIME_DIR= "$prog" "$@" >"$tmp/bg.out" 2>&1 &
                bg=$!
                i=0
                while ! grep -q "key in" "$tmp/bg.out" && [ $i -lt 2000 ] && kill -0 $bg 2>/dev/null; do
                  sleep 0.01
                  i=$((i + 1))
                done
                ;;
              *)
                HOME=$tmp XDG_RUNTIME_DIR= "$prog" "$@" >"$tmp/run.out" 2>&1 ||
                  { fail "README: '$cmd' exited $?"; sed 's/^/    /' "$tmp/run.out"; }
                ;;
            esac
            ;;
          rpal)
            shift
            case $1 in
              chaos|bench)
                "$B/rpal" $1 $( [ "$1" = bench ] && echo "$2") --help >"$tmp/help" 2>&1
                for o in $(echo "$*" | grep -o -- '--[a-z-]*'); do
                  grep -qF -- "$o" "$tmp/help" || fail "README: '$cmd': $o is not in rpal $1 --help"
                done
                ;;
              *)
                "$B/rpal" "$@" >"$tmp/run.out" 2>"$tmp/run.err"
                rc=$?
                case "$rc $*" in
                  "0 "*) ;;
                  "1 "*--huge*) grep -qiE "hugetlbfs|huge pages" "$tmp/run.err" ||
                    { fail "README: '$cmd' failed without saying what huge pages lack"; sed 's/^/    /' "$tmp/run.err"; } ;;
                  *) fail "README: '$cmd' exited $rc"; sed 's/^/    /' "$tmp/run.out" "$tmp/run.err" ;;
                esac
                ;;
            esac
            ;;
          *)
            fail "README: a line that tests/readme.sh does not check: $line"
            ;;
        esac
      done <"$blk"
      ;;
  esac
done
# Regions the commands left (a huge one keeps its data on hugetlbfs, which
# removing the namespace directory would not free).
for n in $("$B/rpal" ls --json 2>/dev/null | grep -o '"name":"[^"]*"' | cut -d'"' -f4); do
  "$B/rpal" region rm "$n"
done
if [ -n "$bg" ]; then
  kill $bg
  wait $bg || { fail "the README's service did not stop cleanly"; sed 's/^/    /' "$tmp/bg.out"; }
  bg=
fi

if [ $failures -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "README.md: $nc C programs and $nsh blocks of commands, all as written"
exit 0
