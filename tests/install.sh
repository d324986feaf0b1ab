#!/bin/sh
# `make install` puts the header, both libraries, rpal.pc, the command, its
# benchmarks and the man pages under PREFIX; a program built with pkg-config links against the
# shared library, runs, and sees only the public symbols; every man page,
# the alias pages too, reads with man -l from anywhere; `make uninstall`
# removes all of it.
set -u
command -v pkg-config >/dev/null || { echo "pkg-config is not installed"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if ! eval "$1"; then echo "FAIL: $1"; fail=1; fi; }

# Under `make test SAN=1` (or TSAN=1) the caller's setting reaches us through
# MAKEFLAGS: install the plain build, which a program without the sanitizer
# runtime can load.
# Under tests/vm/arm64.sh the build being tested is the arm64 one: install
# that, and build the program with the cross compiler (it runs through
# binfmt_misc like the rest of that suite).
arch= cc=cc nm=nm
if [ "${RPAL_EMULATED:-}" = qemu-user ]; then
  arch=ARCH=arm64 cc=${ARM64_CC:-aarch64-linux-gnu-gcc} nm=aarch64-linux-gnu-nm
fi
MAKEFLAGS= make -s install SAN=0 TSAN=0 VG=0 $arch PREFIX="$tmp/usr" >"$tmp/log" 2>&1 || { cat "$tmp/log"; exit 1; }
for f in include/rpal.h lib/librpal.a lib/librpal.so lib/librpal.so.0 \
         lib/pkgconfig/rpal.pc bin/rpal share/man/man1/rpal.1 share/man/man7/rpal.7 \
         share/man/man3/rpal_region_create.3; do
  check "[ -e '$tmp/usr/$f' ]"
done
check "readelf -d '$tmp/usr/lib/librpal.so' | grep -q 'SONAME.*librpal.so.0'"
# Exported: the public API only (the version script hides the rest).
syms=$($nm -D --defined-only "$tmp/usr/lib/librpal.so" | awk '$2 == "T" { print $3 }' | sed 's/@.*//')
check "echo '$syms' | grep -qx rpal_region_create"
check "! echo '$syms' | grep -v '^rpal_' | grep -q ."
check "! echo '$syms' | grep -q '^rpal__'"

cat >"$tmp/app.c" <<'C'
#include <rpal.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
    rpal_region *r;
    int err = rpal_region_create("installed", 4096, 0600, 0, &r);
    if (err < 0) { fprintf(stderr, "%s\n", rpal_strerror(err)); return 1; }
    strcpy(rpal_region_addr(r), "hello");
    printf("%s %s\n", rpal_version(), (char *)rpal_region_addr(r));
    rpal_region_detach(r);
    return rpal_region_unlink("installed") == 0 ? 0 : 1;
}
C
export PKG_CONFIG_PATH="$tmp/usr/lib/pkgconfig"
$cc "$tmp/app.c" $(pkg-config --cflags --libs rpal) -o "$tmp/app" || exit 1
out=$(LD_LIBRARY_PATH="$tmp/usr/lib" "$tmp/app") || { echo "app failed"; exit 1; }
check "[ \"$out\" = \"$(pkg-config --modversion rpal) hello\" ]"
# What ldd does, asked of the program's own loader (which ldd cannot run
# for an arm64 program).
check "LD_TRACE_LOADED_OBJECTS=1 LD_LIBRARY_PATH='$tmp/usr/lib' '$tmp/app' | grep -q 'librpal.so.0 => $tmp/usr/lib'"
check "\"$tmp/usr/bin/rpal\" version | grep -q '^rpal '"
# The installed command finds its benchmarks, and `rpal bench paper` the
# echo examples it runs, in PREFIX/libexec/rpal.
check "\"$tmp/usr/bin/rpal\" bench paper --count 50 --transport uds 2>/dev/null | grep -q '^epoll+UDS: Message length: 32 bytes,'"
# What install says about finding the library at run time.
check "grep -q 'ldconfig' '$tmp/log' && grep -q 'LD_LIBRARY_PATH=$tmp/usr/lib' '$tmp/log'"
# Every page reads with man -l from anywhere, an alias page (rpal_calloc(3):
# rpal_malloc's) included, without a warning.
if command -v man >/dev/null; then
  for p in man3/rpal_calloc.3 man3/rpal_serve.3 man3/rpal_region_create.3 man1/rpal.1 man7/rpal.7; do
    check "(cd / && man -l '$tmp/usr/share/man/$p' 2>'$tmp/manerr' | grep -q 'rpal Manual') && [ ! -s '$tmp/manerr' ]"
  done
  check "(cd / && man -l '$tmp/usr/share/man/man3/rpal_calloc.3' 2>/dev/null) | grep -q rpal_calloc"
fi
# uninstall removes everything install added, libexec/rpal/ included.
MAKEFLAGS= make -s uninstall PREFIX="$tmp/usr" >"$tmp/log" 2>&1 || { cat "$tmp/log"; exit 1; }
left=$(cd "$tmp/usr" && find . ! -type d | sort | tr '\n' ' ')
check "[ -z '$left' ]"
check "[ ! -e '$tmp/usr/libexec/rpal' ]"
[ -z "$left" ] || echo "left after make uninstall: $left"
exit $fail
