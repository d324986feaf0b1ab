# rpal build. `make bench` builds everything and runs the RPAL paper's
# measurement (then `rpal bench call`), `make` builds everything, `make test`
# runs the suite, `make test SAN=1` runs it under AddressSanitizer + UBSan,
# `make test TSAN=1` under ThreadSanitizer, `make valgrind` runs the examples
# under valgrind's memcheck (docs/sanitizers.md), `make fuzz` runs the fuzz
# targets (fuzz/*.c, docs/fuzzing.md), `make demo` runs the demo,
# `make docs-diff` rewrites the diffs shown in docs/compat.md. Objects go to
# build/ (build-san/ with SAN=1, build-tsan/ with TSAN=1, build-vg/ for
# valgrind, build-fuzz/ for the fuzz targets).

# The version is the public header's (RPAL_VERSION_*), the one place it is
# written; tests/house.sh checks that the man pages say the same.
VERSION := $(shell awk '/ *define RPAL_VERSION_(MAJOR|MINOR|PATCH) / { v = v (v == "" ? "" : ".") $$3 } END { print v }' include/rpal.h)
SOVERSION := 0
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig

CC ?= cc
CFLAGS ?= -O2 -g
ARM64_CC ?= aarch64-linux-gnu-gcc
WARN := -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE
ifeq ($(SAN),1)
B := build-san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else ifeq ($(TSAN),1)
# ThreadSanitizer moves rpal's window out of its shadow (src/internal.h);
# tests/run.sh passes tests/tsan.supp to such builds.
B := build-tsan
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
else ifeq ($(VG),1)
# For valgrind (`make valgrind`): no sanitizer, the small window that
# memcheck can follow and view_dup's mmap for its missing mremap (see
# docs/sanitizers.md).
B := build-vg
SANFLAGS := -DRPAL_VALGRIND
else ifeq ($(ARCH),arm64)
# arm64, cross-compiled (Debian: gcc-aarch64-linux-gnu) into build-arm64/;
# `make test-arm64` runs it under qemu-aarch64-static (docs/portability.md).
B := build-arm64
CC := $(ARM64_CC)
CROSS := 1
SANFLAGS :=
else ifeq ($(PKU),1)
# For the protection-key machine (`make test-pku`): linked statically, so
# that the programs run from an initramfs that holds nothing but busybox.
B := build-pku
SANFLAGS :=
STATIC := -static
else
B := build
SANFLAGS :=
endif
ALLCFLAGS := $(WARN) $(CFLAGS) $(SANFLAGS) -Iinclude
LDFLAGS_SO := $(LDFLAGS) $(SANFLAGS)
LDFLAGS_ALL := $(LDFLAGS_SO) $(STATIC)

LIB_SRC := $(filter $(wildcard src/*.c),src/prim.c src/mac.c src/region.c src/layout.c src/huge.c src/heap.c src/domain.c src/peer.c src/service.c src/wait.c src/channel.c src/compat.c)
LIB_OBJ := $(LIB_SRC:src/%.c=$(B)/obj/%.o)
LIB_PIC := $(LIB_SRC:src/%.c=$(B)/pic/%.o)
HDRS := include/rpal.h src/internal.h src/prim.h src/atomics.h Makefile
# Test and benchmark support (tests/hugesetup.h mounts hugetlbfs for
# tests/region_huge, tests/perm_peer and bench/pagetables; tests/tamper.h runs
# the member processes of the tampering tests).
TEST_HDRS := tests/testlib.h tests/hugesetup.h tests/tamper.h

SO := $(B)/librpal.so.$(VERSION)
A := $(B)/librpal.a
TOOL := $(B)/rpal
# `rpal chaos` execs this program (beside the command, or in libexec).
CHAOS := $(B)/chaos
# examples/uv_rpal_echo.c needs libuv (Debian: libuv1-dev); without it the
# build says so and goes on.
UV_EXAMPLE := examples/uv_rpal_echo.c
# Not for a cross or static build: the host's libuv is neither.
HAVE_LIBUV := $(if $(CROSS)$(STATIC),,$(shell pkg-config --exists libuv 2>/dev/null && echo 1))
EXAMPLES := $(patsubst examples/%.c,$(B)/examples/%,$(filter-out $(UV_EXAMPLE),$(wildcard examples/*.c)))
ifeq ($(HAVE_LIBUV),1)
EXAMPLES += $(B)/examples/uv_rpal_echo
else
EXAMPLES += skip-uv-example
endif
# The echo pairs that `rpal bench paper` runs (and `make install` installs
# beside it).
ECHO_PROGS := uds_echo_server uds_echo_client rpal_echo_server rpal_echo_client
TESTS := $(patsubst tests/%.c,$(B)/tests/%,$(wildcard tests/*.c))
BENCHES := $(patsubst bench/%.c,$(B)/bench/%,$(wildcard bench/*.c))

# librpal-run.so, the interposer of `rpal run` (src/run.c, docs/run.md):
# the library's PIC objects and run.c, exporting only the calls it takes the
# place of (src/run.map). Not for the sanitizer, valgrind or static builds:
# a preloaded sanitizer runtime must come first in an unmodified program.
RUN_SO := $(if $(SANFLAGS)$(STATIC),,$(B)/librpal-run.so)

.PHONY: all lib test test-pku test-arm64 valgrind demo bench docs-diff install uninstall clean skip-uv-example fuzz fuzz-build fuzz-seeds
all: lib $(TOOL) $(CHAOS) $(EXAMPLES) $(TESTS) $(BENCHES) $(RUN_SO) $(B)/obj/run.o $(if $(RUN_SO),$(B)/bench/apps)
lib: $(SO) $(A)

$(B)/obj/%.o: src/%.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) -c -o $@ $<
$(B)/pic/%.o: src/%.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) -fPIC -c -o $@ $<

$(SO): $(LIB_PIC) src/librpal.map
	$(CC) -shared -Wl,-soname,librpal.so.$(SOVERSION) \
	  -Wl,--version-script=src/librpal.map -Wl,-z,defs -o $@ $(LIB_PIC) $(LDFLAGS_SO)
	ln -sf librpal.so.$(VERSION) $(B)/librpal.so.$(SOVERSION)
	ln -sf librpal.so.$(SOVERSION) $(B)/librpal.so
$(B)/librpal-run.so: $(B)/pic/run.o $(LIB_PIC) src/run.map
	$(CC) -shared -Wl,--version-script=src/run.map -Wl,-z,defs -o $@ $(B)/pic/run.o \
	  $(LIB_PIC) -ldl -lpthread $(LDFLAGS_SO)
# `rpal bench apps` drives programs it does not build: a script.
$(B)/bench/apps: bench/apps.sh
	@mkdir -p $(@D)
	cp $< $@ && chmod 755 $@
$(A): $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

# The command and the examples link the static library so that they run from
# the build tree; tests do too, and may reach the library's hidden test hooks.
$(TOOL): tools/rpal.c tools/json.h $(A) include/rpal.h
	$(CC) $(ALLCFLAGS) -o $@ $< $(A) $(LDFLAGS_ALL)
$(CHAOS): tools/chaos.c tools/json.h $(A) include/rpal.h
	$(CC) $(ALLCFLAGS) -o $@ $< $(A) -lpthread $(LDFLAGS_ALL)
$(B)/examples/%: examples/%.c $(wildcard examples/*.h) $(A) include/rpal.h
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) -o $@ $< $(A) $(LDFLAGS_ALL)
$(B)/examples/uv_rpal_echo: $(UV_EXAMPLE) examples/echo_common.h $(A) include/rpal.h
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) $(shell pkg-config --cflags libuv) -o $@ $< $(A) \
	  $(shell pkg-config --libs libuv) $(LDFLAGS_ALL)
skip-uv-example:
	@echo "skipping $(UV_EXAMPLE): no libuv (pkg-config libuv; Debian: apt-get install libuv1-dev)"
# bench/call compares rpal with iceoryx and ZeroMQ when their headers are
# installed (their libraries are dlopen'ed at run time, so nothing to link).
ICEORYX_INC := $(if $(CROSS)$(STATIC),,$(firstword $(wildcard /usr/include/iceoryx/v*)))
# bench/call: the harness (bench/call.c) and one file per transport
# (bench/call/*.c, behind bench/call/call.h).
CALL_SRC := bench/call.c $(sort $(wildcard bench/call/*.c))
$(B)/bench/call: $(CALL_SRC) bench/call/call.h bench/bench.h tools/json.h $(A) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) $(if $(ICEORYX_INC),-I$(ICEORYX_INC)) -o $@ $(CALL_SRC) $(A) $(LDFLAGS_ALL)
$(B)/bench/paper: bench/paper.c examples/echo_common.h $(A) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) -o $@ $< $(LDFLAGS_ALL)
# No -Isrc: a benchmark names the one library internal it needs by path
# (bench.h: ../src/atomics.h; heap, pagetables: ../src/internal.h).
$(B)/bench/pagetables: bench/pagetables.c tests/hugesetup.h $(A) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) -o $@ $< $(A) $(LDFLAGS_ALL)
$(B)/bench/%: bench/%.c bench/bench.h tools/json.h $(A) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) -o $@ $< $(A) $(LDFLAGS_ALL)
$(B)/tests/%: tests/%.c $(TEST_HDRS) $(A) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) -Isrc -o $@ $< $(A) $(LDFLAGS_ALL)

test: all
	B=$(B) sh tests/run.sh

# The tests that protection keys change, on a machine that has them: natively
# where this host has PKU, else in an emulated x86-64 with keys (QEMU TCG,
# -cpu max) booted from an initramfs of static programs (build-pku/).
test-pku:
	sh tests/vm/pku.sh

# The whole suite for arm64: cross-compiled into build-arm64/ and run under
# qemu-aarch64-static (user mode), docs/portability.md.
test-arm64:
	$(MAKE) ARCH=arm64 all
	CC=$(ARM64_CC) sh tests/vm/arm64.sh

# The examples under valgrind's memcheck, built into build-vg/.
valgrind:
	$(MAKE) VG=1 all
	B=build-vg sh tests/valgrind/examples.sh

# The demo: two processes share a list built with plain pointers, then a
# process calls a service in another. It runs in a namespace directory of
# its own, removed after, so that it leaves nothing behind.
demo: all
	@d=$$(mktemp -d /dev/shm/rpal-demo-XXXXXX) && \
	  RPAL_DIR=$$d $(B)/examples/shared_list && RPAL_DIR=$$d $(B)/examples/hello_call; \
	  rc=$$?; rm -rf "$$d"; exit $$rc

# The main job: the RPAL paper's measurement (epoll + Unix socket against
# rpal, 1,000,000 messages each), then every transport compared, then
# latency and CPU against load (rpal against the Unix socket it replaces).
bench: all
	$(TOOL) bench paper
	$(TOOL) bench call
	$(TOOL) bench load

# docs/compat.md shows the diffs between the Unix-socket examples and their
# rpal versions; tests/compat_diff.sh fails when they are out of date.
docs-diff:
	sh tests/compat_diff.sh --update

# The fuzz targets: libFuzzer with AddressSanitizer and UBSan, the library's
# sources compiled into each target with the same flags. Needs clang and its
# runtime (Debian: clang libclang-rt-14-dev). Each target runs FUZZ_SECONDS
# from its seeds (fuzz/corpus/T) plus what earlier runs found
# (build-fuzz/corpus/T); a crash, a leak, an input slower than 10 s or
# 2 GiB of memory fails make, and the input is kept in build-fuzz/artifacts/.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS ?=
FB := build-fuzz
FUZZ_CFLAGS := $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=all -fno-omit-frame-pointer -Iinclude -Isrc
FUZZ_TARGETS := $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FB)/%)
FUZZ_OBJ := $(LIB_SRC:src/%.c=$(FB)/obj/%.o)

$(FB)/obj/%.o: src/%.c $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<
$(FB)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_OBJ) -lpthread

fuzz-build: $(FUZZ_OBJ) $(FUZZ_BINS) # the objects named: not intermediate, kept

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FB)/corpus/$$t $(FB)/artifacts; \
	  $(FB)/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$(FB)/artifacts/$$t- $(FUZZ_FLAGS) \
	    $(FB)/corpus/$$t fuzz/corpus/$$t >$(FB)/$$t.log 2>&1; \
	  rc=$$?; \
	  if [ $$rc -ne 0 ]; then tail -n 60 $(FB)/$$t.log; \
	    echo "FAIL $$t (exit $$rc; log $(FB)/$$t.log)"; exit 1; fi; \
	  printf 'PASS %-16s %s, %s execs/s\n' $$t \
	    "$$(grep -o 'cov: [0-9]*' $(FB)/$$t.log | tail -n 1)" \
	    "$$(sed -n 's/^stat::average_exec_per_sec: *//p' $(FB)/$$t.log)"; \
	done

# Rewrite the seed corpora from valid structures (FUZZ_WRITE_SEEDS, fuzz/fuzz.h).
fuzz-seeds: fuzz-build
	for t in $(FUZZ_TARGETS); do mkdir -p fuzz/corpus/$$t && \
	  FUZZ_WRITE_SEEDS=fuzz/corpus/$$t $(FB)/$$t || exit 1; done

install: lib $(TOOL) $(CHAOS) $(BENCHES) $(RUN_SO) $(if $(RUN_SO),$(B)/bench/apps) $(ECHO_PROGS:%=$(B)/examples/%)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) \
	  $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man7
	install -m 644 include/rpal.h $(DESTDIR)$(INCLUDEDIR)/rpal.h
	install -m 755 $(SO) $(DESTDIR)$(LIBDIR)/
	ln -sf librpal.so.$(VERSION) $(DESTDIR)$(LIBDIR)/librpal.so.$(SOVERSION)
	ln -sf librpal.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/librpal.so
	install -m 644 $(A) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(TOOL) $(DESTDIR)$(BINDIR)/rpal
	install -d $(DESTDIR)$(PREFIX)/libexec/rpal
	$(if $(RUN_SO),install -m 755 $(RUN_SO) $(B)/bench/apps $(DESTDIR)$(PREFIX)/libexec/rpal/)
	for b in $(CHAOS) $(BENCHES) $(ECHO_PROGS:%=$(B)/examples/%); do \
	  install -m 755 $$b $(DESTDIR)$(PREFIX)/libexec/rpal/; done
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCLUDEDIR@|$(INCLUDEDIR)|; s|@VERSION@|$(VERSION)|' \
	  rpal.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/rpal.pc
	# An alias page (man/rpal_calloc.3, a symbolic link to rpal_malloc.3)
	# is installed as a copy of its page: it reads the same with man -l
	# from anywhere, where a .so request would be looked up from the
	# current directory.
	install -m 644 man/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 man/*.3 $(DESTDIR)$(MANDIR)/man3/
	install -m 644 man/*.7 $(DESTDIR)$(MANDIR)/man7/
	@echo "rpal installed under $(DESTDIR)$(PREFIX). A program linked with -lrpal finds"
	@echo "librpal.so.0 at run time once $(LIBDIR) is known to the loader: run ldconfig"
	@echo "as root (Debian lists /usr/local/lib in /etc/ld.so.conf.d), or set"
	@echo "LD_LIBRARY_PATH=$(LIBDIR), or link with -Wl,-rpath,$(LIBDIR). See rpal(7)."

# Removes everything install added, the directory libexec/rpal included
# (the directories that other software shares, such as lib/ and man3/, stay).
uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/rpal.h $(DESTDIR)$(LIBDIR)/librpal.so \
	  $(DESTDIR)$(LIBDIR)/librpal.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/librpal.so.$(VERSION) \
	  $(DESTDIR)$(LIBDIR)/librpal.a $(DESTDIR)$(BINDIR)/rpal $(DESTDIR)$(PKGCONFIGDIR)/rpal.pc
	for b in $(notdir $(CHAOS) $(BENCHES)) $(ECHO_PROGS) librpal-run.so apps; do \
	  rm -f $(DESTDIR)$(PREFIX)/libexec/rpal/$$b; done
	-rmdir $(DESTDIR)$(PREFIX)/libexec/rpal
	cd man && for f in *.[137]; do rm -f $(DESTDIR)$(MANDIR)/man$${f##*.}/$$f; done

clean:
	rm -rf build build-san build-tsan build-vg build-fuzz build-pku build-arm64
