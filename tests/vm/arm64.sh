#!/bin/sh
# make test-arm64: the whole suite, cross-compiled for arm64 (build-arm64/,
# Debian's gcc-aarch64-linux-gnu), run under QEMU's user-mode emulation
# (qemu-aarch64, 8.1 or later), where the host kernel serves the system calls. The kernel runs
# an arm64 program through binfmt_misc (below). What user mode cannot do is
# a skip with its reason (docs/portability.md).
# Environment: B (build-arm64), ARM64_TEST_TIMEOUT (per test, 300 s),
# CHAOS_TRIALS (10), and test names as for tests/run.sh.
set -u
cd "$(dirname "$0")/../.."
B=${B:-build-arm64}
skip() { echo "$*"; exit 77; }

[ -x "$B/rpal" ] || skip "no arm64 build in $B (make ARCH=arm64)"
file "$B/rpal" 2>/dev/null | grep -q aarch64 || skip "$B/rpal is not an arm64 program"

# QEMU 8.1 or later: 7.2 (Debian 12's) keeps a descriptor per guest page of
# every mapping, so a domain's 16 TiB reservation takes it minutes and tens
# of GiB (the issue's chan_call hang). Where the system's is older, the
# newest qemu-user of the release's backports is downloaded into
# $B/qemu (apt-get download with a private package list; nothing is
# installed).
qemu_new() {
  v=$("$1" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n 1)
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 8 ] || { [ "$1" -eq 8 ] && [ "$2" -ge 1 ]; }
}
Q=${QEMU_AARCH64:-}
if [ -z "$Q" ]; then
  for q in "$(command -v qemu-aarch64-static)" "$(command -v qemu-aarch64)" "$B/qemu/usr/bin/qemu-aarch64"; do
    if [ -n "$q" ] && [ -x "$q" ] && qemu_new "$q"; then Q=$q; break; fi
  done
fi
if [ -z "$Q" ]; then
  command -v apt-get >/dev/null || skip "no qemu-aarch64 8.1 or later (set QEMU_AARCH64)"
  code=$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")
  [ -n "$code" ] || skip "no qemu-aarch64 8.1 or later, and no release name to find backports by"
  a=$B/qemu/apt
  mkdir -p $a/lists/partial $a/cache/archives/partial
  echo "deb http://deb.debian.org/debian $code-backports main" >$a/sources.list
  a=$(pwd)/$a
  apt_bp() {
    apt-get -o Dir::Etc::sourcelist="$a/sources.list" -o Dir::Etc::sourceparts=- \
      -o Dir::State::Lists="$a/lists" -o Dir::Cache="$a/cache" "$@"
  }
  echo "== fetching qemu-user from $code-backports (apt-get download; not installed)"
  apt_bp update -qq >/dev/null 2>&1 || skip "apt-get update of $code-backports failed"
  (cd $B/qemu && apt_bp download qemu-user >/dev/null 2>&1) ||
    skip "apt-get download qemu-user from $code-backports failed"
  dpkg-deb -x $B/qemu/qemu-user_*.deb $B/qemu && rm -f $B/qemu/qemu-user_*.deb ||
    skip "could not unpack qemu-user"
  Q=$B/qemu/usr/bin/qemu-aarch64
  qemu_new "$Q" || skip "$code-backports has no qemu-user 8.1 or later"
fi
Q=$(cd "$(dirname "$Q")" && pwd)/$(basename "$Q")

# binfmt_misc runs arm64 programs through QEMU, so that a test may exec
# another (`rpal chaos`, the shell tests, the examples). Unless the entry
# the system has (qemu-user-static's qemu-aarch64) runs a new enough QEMU,
# one of ours is registered for this run (F: QEMU is opened now) and
# removed at the end; binfmt_misc tries the newest entry first.
bf=/proc/sys/fs/binfmt_misc
[ -e $bf/register ] || [ "$(id -u)" != 0 ] || mount -t binfmt_misc binfmt_misc $bf 2>/dev/null
sysq=$(sed -n 's/^interpreter //p' $bf/qemu-aarch64 2>/dev/null)
if grep -qx enabled $bf/qemu-aarch64 2>/dev/null && [ -n "$sysq" ] && qemu_new "$sysq"; then
  :
else
  [ "$(id -u)" = 0 ] && [ -e $bf/register ] ||
    skip "no binfmt_misc entry for arm64 programs with QEMU 8.1 or later, and not root (or no binfmt_misc) to register one"
  entry=rpal-aarch64-$$
  trap '[ -e $bf/$entry ] && echo -1 >$bf/$entry' EXIT
  trap 'exit 1' INT TERM
  printf ':%s:M::%s:%s:%s:F\n' $entry \
    '\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00' \
    '\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' \
    "$Q" >$bf/register || skip "could not register a binfmt_misc entry for $Q"
fi

# The cross libc, for dynamically linked programs.
[ -d /usr/aarch64-linux-gnu/lib ] && export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
"$B/rpal" version >/dev/null 2>&1 || skip "$B/rpal does not run under qemu-aarch64-static"

echo "== arm64 under $("$Q" --version | head -n 1)"
export CHAOS_TRIALS=${CHAOS_TRIALS:-10}
export RPAL_EMULATED=qemu-user
B=$B TEST_TIMEOUT=${ARM64_TEST_TIMEOUT:-300} sh tests/run.sh "$@"
exit $?
