#!/bin/sh
# make test-pku: the tests that protection keys change, run on a machine
# that has them. Where this host's CPU and kernel have PKU (the `pku` and
# `ospke` flags), they run natively from build/. Otherwise the programs are
# built statically (build-pku/), packed with busybox into an initramfs, and
# booted under QEMU's x86-64 emulator with `-cpu max`, whose TCG CPU
# implements protection keys, on Debian's cloud kernel (6.1, built with
# CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS). The guest's runner lines come
# back over the serial console; the exit status is the guest runner's.
#
# Needs (Debian): qemu-system-x86 busybox-static cpio, and the kernel: the
# newest linux-image-*-cloud-amd64 package, fetched with `apt-get download`
# into build-pku/vm/ and unpacked there (nothing is installed on the host),
# unless PKU_KERNEL names a bzImage. A missing tool or kernel is a skip (77)
# with the reason as the last line.
#
# Environment: PKU_TESTS (test names, as for tests/run.sh), PKU_SMP (2),
# PKU_MEM (MiB, 2048), PKU_TEST_TIMEOUT (per test inside the guest, 300),
# PKU_TIMEOUT (the whole machine, 900 s), CHAOS_TRIALS (10).
set -u
cd "$(dirname "$0")/../.."

# Every test program (domains, services, channels, compat, regions, the
# hostile peer, recovery points) and the shell tests that need nothing but
# our programs: the command, `rpal chaos`, the echo examples, the call
# benchmarks. Not install.sh, compat_diff.sh, compat_uv.sh (they build on the
# host), nor bench_pagetables.sh (page tables, not keys; 2 GiB of memory).
DEFAULT_TESTS="$(cd tests && ls *.c | sed 's/\.c$//') cli.sh chaos.sh compat_echo.sh
bench_call.sh bench_paper.sh"
TESTS=${PKU_TESTS:-$DEFAULT_TESTS}
TESTS=$(echo $TESTS)
export CHAOS_TRIALS=${CHAOS_TRIALS:-10}

skip() { echo "$*"; exit 77; }

if grep -qw pku /proc/cpuinfo && grep -qw ospke /proc/cpuinfo; then
  echo "== this host has protection keys: the tests run natively"
  make -s -j2 all || exit 1
  B=build sh tests/run.sh $TESTS
  exit $?
fi

for t in qemu-system-x86_64 cpio gzip; do
  command -v $t >/dev/null || skip "no $t (Debian: apt-get install qemu-system-x86 cpio)"
done
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] && file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' ||
  { [ -x /bin/busybox ] && ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'; } ||
  skip "no statically linked busybox at $BUSYBOX (Debian: apt-get install busybox-static)"

V=build-pku/vm
mkdir -p $V
KERNEL=${PKU_KERNEL:-}
if [ -z "$KERNEL" ]; then
  KERNEL=$(ls $V/boot/vmlinuz-*-cloud-amd64 2>/dev/null | tail -n 1)
  if [ -z "$KERNEL" ]; then
    command -v apt-get >/dev/null || skip "no kernel: set PKU_KERNEL to an x86-64 bzImage with protection keys"
    # The meta package names the current kernel package; only that one is
    # downloaded and unpacked here, never installed.
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
          awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [ -n "$pkg" ] || skip "no linux-image-cloud-amd64 in the package lists (run apt-get update)"
    echo "== fetching $pkg (apt-get download; not installed)"
    (cd $V && apt-get download "$pkg" >/dev/null 2>&1) ||
      skip "apt-get download $pkg failed"
    dpkg-deb -x $V/"$pkg"_*.deb $V/kx && mkdir -p $V/boot &&
      cp $V/kx/boot/vmlinuz-* $V/kx/boot/config-* $V/boot/ && rm -rf $V/kx $V/*.deb ||
      skip "could not unpack $pkg"
    KERNEL=$(ls $V/boot/vmlinuz-*-cloud-amd64 | tail -n 1)
  fi
fi
[ -r "$KERNEL" ] || skip "no kernel at $KERNEL"

# The programs, static (they run from an initramfs without a libc).
progs="build-pku/rpal build-pku/chaos"
for t in $TESTS; do
  case $t in
    *.sh) ;;
    *) progs="$progs build-pku/tests/$t" ;;
  esac
done
case " $TESTS " in *" compat_echo.sh "*|*" bench_paper.sh "*)
  progs="$progs build-pku/examples/uds_echo_server build-pku/examples/uds_echo_client"
  progs="$progs build-pku/examples/rpal_echo_server build-pku/examples/rpal_echo_client" ;;
esac
case " $TESTS " in *" bench_call.sh "*) progs="$progs build-pku/bench/call" ;; esac
case " $TESTS " in *" bench_paper.sh "*) progs="$progs build-pku/bench/paper" ;; esac
case " $TESTS " in *" bench_pagetables.sh "*) progs="$progs build-pku/bench/pagetables" ;; esac
echo "== building the programs statically (build-pku/)"
make -s -j2 PKU=1 $progs || exit 1

# The initramfs: busybox, /init, the runner, the shell tests, the programs.
R=$V/root
rm -rf $R
mkdir -p $R/bin $R/proc $R/sys $R/dev $R/etc $R/rpal/tests $R/rpal/build-pku/tests \
  $R/rpal/build-pku/examples $R/rpal/build-pku/bench
cp "$BUSYBOX" $R/bin/busybox
for a in $($R/bin/busybox --list); do
  [ "$a" = busybox ] || ln -s busybox $R/bin/$a
done
cp tests/vm/pku-init $R/init
chmod 755 $R/init
echo 'root:x:0:0:root:/:/bin/sh' >$R/etc/passwd
echo 'root:x:0:' >$R/etc/group
cp tests/run.sh tests/*.inc $R/rpal/tests/
for t in $TESTS; do
  case $t in *.sh) cp tests/$t $R/rpal/tests/ ;; esac
done
for p in $progs; do cp "$p" $R/rpal/$p; done
cat >$R/rpal/guest.env <<EOF
GUEST_TESTS="$TESTS"
GUEST_TEST_TIMEOUT=${PKU_TEST_TIMEOUT:-300}
export CHAOS_TRIALS=$CHAOS_TRIALS
EOF
(cd $R && find . | cpio -o -H newc --quiet | gzip -1) >$V/initrd.gz || exit 1

echo "== booting $(basename "$KERNEL") under qemu-system-x86_64 -accel tcg -cpu max"
log=$V/console.log
# No KVM: a host without PKU has none to pass through; TCG's -cpu max has it.
# -smp 2: the channel tests need a peer on another CPU to spin against.
timeout -k 10 "${PKU_TIMEOUT:-900}" qemu-system-x86_64 -accel tcg -cpu max \
  -smp "${PKU_SMP:-2}" -m "${PKU_MEM:-2048}" -no-reboot -display none -monitor none \
  -serial stdio -kernel "$KERNEL" -initrd $V/initrd.gz \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init" </dev/null >$log 2>&1 &
qpid=$!
# The runner's lines as the guest prints them, while it runs.
tail -n +1 -f --pid=$qpid $log 2>/dev/null | sed -u 's/\r$//' |
  sed -u -n '/^rpal-guest: begin/,/^rpal-guest: exit/p' | grep --line-buffered -v '^rpal-guest: begin'
wait $qpid
qrc=$?
tr -d '\r' <$log >$log.txt
st=$(sed -n 's/^rpal-guest: exit \([0-9]*\)$/\1/p' $log.txt | tail -n 1)
if [ -z "$st" ]; then
  echo "the guest gave no exit status (qemu exit $qrc); the console ($log.txt):"
  tail -n 40 $log.txt
  exit 1
fi
grep -q '^rpal-guest: kernel.*flags:.*pku' $log.txt || { echo "the guest has no pku flag"; exit 1; }
exit "$st"
