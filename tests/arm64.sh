#!/bin/sh
# make test-arm64: the whole suite, cross-compiled for arm64 (build-arm64/,
# Debian's gcc-aarch64-linux-gnu), run under qemu-aarch64-static: user-mode
# emulation, where the host kernel serves the system calls. The kernel runs
# an arm64 program through binfmt_misc (so that a test may exec another:
# `rpal chaos`, the shell tests, the examples); registered here from the
# qemu-user-static package's entry when it is not, if we are root. What user
# mode cannot do is a skip with its reason (docs/portability.md).
# Environment: B (build-arm64), ARM64_TEST_TIMEOUT (per test, 300 s),
# CHAOS_TRIALS (10), and test names as for tests/run.sh.
set -u
cd "$(dirname "$0")/.."
B=${B:-build-arm64}
skip() { echo "$*"; exit 77; }

command -v qemu-aarch64-static >/dev/null ||
  skip "no qemu-aarch64-static (Debian: apt-get install qemu-user-static)"
[ -x "$B/rpal" ] || skip "no arm64 build in $B (make ARCH=arm64)"
file "$B/rpal" 2>/dev/null | grep -q aarch64 || skip "$B/rpal is not an arm64 program"

# binfmt_misc: qemu-user-static ships the entry; systemd-binfmt or
# binfmt-support loads it at boot, a container or a minimal machine may not.
bf=/proc/sys/fs/binfmt_misc
if [ ! -e $bf/qemu-aarch64 ] && [ "$(id -u)" = 0 ]; then
  [ -e $bf/register ] || mount -t binfmt_misc binfmt_misc $bf 2>/dev/null
  for f in /usr/lib/binfmt.d/qemu-aarch64.conf /lib/binfmt.d/qemu-aarch64.conf; do
    if [ -r $f ] && [ -e $bf/register ]; then
      grep -v '^#' $f | head -n 1 >$bf/register 2>/dev/null && break
    fi
  done
fi
grep -qx enabled $bf/qemu-aarch64 2>/dev/null ||
  skip "no binfmt_misc entry for arm64 programs (qemu-aarch64), and could not register one (not root, or no binfmt_misc)"

# The cross libc, for dynamically linked programs.
[ -d /usr/aarch64-linux-gnu/lib ] && export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
"$B/rpal" version >/dev/null 2>&1 || skip "$B/rpal does not run under qemu-aarch64-static"

echo "== arm64 under $(qemu-aarch64-static --version | head -n 1)"
export CHAOS_TRIALS=${CHAOS_TRIALS:-10}
export RPAL_EMULATED=qemu-user
B=$B TEST_TIMEOUT=${ARM64_TEST_TIMEOUT:-300} sh tests/run.sh "$@"
