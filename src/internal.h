/* Internal declarations shared by the layers of librpal. Not installed. */
#ifndef RPAL_INTERNAL_H
#define RPAL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define RPAL_HIDDEN __attribute__((visibility("hidden")))

/* The address window that every rpal process agrees on. Nothing outside it is
 * ever mapped by rpal. It sits above AddressSanitizer's shadow memory
 * (which ends below 0x100000000000 on x86-64) and far below the area where
 * the kernel places ordinary mmap()s and stacks (0x7f..). The first half
 * holds named regions; the second half is kept for domains. */
#define RPAL_WINDOW_BASE        0x200000000000ull
#define RPAL_REGION_WINDOW_SIZE 0x100000000000ull /* 16 TiB */

/* Granule of region placement: data starts on a granule boundary and the
 * granule before it holds the region's header page (the rest is a guard). */
#define RPAL_REGION_GRANULE (2ull << 20)
#define RPAL_PAGE 4096ull

/* ---- prim: thin wrappers over the OS (src/prim.c) ---- */

/* mmap at exactly ADDR; -EADDRINUSE if any of the range is already mapped. */
RPAL_HIDDEN int prim_map_fixed(uint64_t addr, size_t len, int prot, int flags,
                               int fd, off_t off);
/* Start time of PID in clock ticks since boot (field 22 of /proc/PID/stat),
 * which with the pid names a process uniquely; -ESRCH if there is none. */
RPAL_HIDDEN int prim_proc_start(pid_t pid, uint64_t *start);
/* 1 if the process PID that started at START still runs, else 0. */
RPAL_HIDDEN int prim_proc_alive(pid_t pid, uint64_t start);
/* The calling process's start time (cached per pid, so valid after fork). */
RPAL_HIDDEN uint64_t prim_self_start(void);

/* Every file mapped by a live process (that we may read): FN is called for
 * each mapping line, grouped by pid; a file mapped several times by one
 * process is reported several times in a row of that pid's calls. */
RPAL_HIDDEN int prim_maps_scan(void (*fn)(pid_t pid, uint64_t dev,
                                          uint64_t ino, void *arg),
                               void *arg);

/* Open DIRFD/PATH with openat2(2) confined beneath DIRFD and refusing every
 * symlink on the way (-ELOOP), with O_CLOEXEC added. */
RPAL_HIDDEN int prim_open_beneath(int dirfd, const char *path, int flags,
                                  unsigned create_mode);
/* mkdir -p of PATH beneath DIRFD, never following a symlink; new
 * directories get exactly MODE. */
RPAL_HIDDEN int prim_mkdirs_beneath(int dirfd, const char *path,
                                    unsigned mode, size_t *made);
/* Undo prim_mkdirs_beneath: remove the empty directories of PATH whose
 * prefix is longer than MADE bytes (what it reported it created). */
RPAL_HIDDEN void prim_rmdirs_beneath(int dirfd, const char *path, size_t keep);

RPAL_HIDDEN uint64_t prim_now_realtime_ns(void);

/* ---- heap: the allocator of a member's own slot (src/heap.c) ---- */

struct heap;
/* Manage [BASE, BASE+LEN) (mapped read-write, reading as zeros, touched only
 * as blocks are handed out). LEN is a multiple of 64 KiB. */
RPAL_HIDDEN int heap_create(void *base, uint64_t len, struct heap **out);
RPAL_HIDDEN void heap_destroy(struct heap *h);
RPAL_HIDDEN void *heap_malloc(struct heap *h, size_t size);
RPAL_HIDDEN void *heap_calloc(struct heap *h, size_t n, size_t size);
RPAL_HIDDEN void *heap_realloc(struct heap *h, void *p, size_t size);
/* -EINVAL for anything that is not a live block of H; H is left intact. */
RPAL_HIDDEN int heap_free(struct heap *h, void *p);
/* Walk every internal structure and check its invariants: 0 or -EUCLEAN. */
RPAL_HIDDEN int heap_check(struct heap *h);
/* The heap behind rpal_malloc() and friends (NULL: not in a domain). */
RPAL_HIDDEN void heap_set_current(struct heap *h);

#endif
