/* The OS contract of librpal: thin wrappers over Linux (src/prim.c), the
 * only layer that knows system-call details beyond the obvious. Included by
 * internal.h; not installed. */
#ifndef RPAL_PRIM_H
#define RPAL_PRIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef RPAL_HIDDEN
#define RPAL_HIDDEN __attribute__((visibility("hidden")))
#endif

/* 1 if this CPU has protection keys and the kernel turned them on (x86-64,
 * CPUID OSPKE); then PKRU, the calling thread's key rights, can be read and
 * written. 0 elsewhere: arm64's permission overlays (POE) are not used. */
RPAL_HIDDEN int rpal__prim_pku_cpu(void);
RPAL_HIDDEN uint32_t rpal__prim_pkru_read(void);
RPAL_HIDDEN void rpal__prim_pkru_write(uint32_t v);

/* mmap at exactly ADDR; -EADDRINUSE if any of the range is already mapped. */
RPAL_HIDDEN int rpal__prim_map_fixed(uint64_t addr, size_t len, int prot, int flags,
                               int fd, off_t off);
/* Start time of PID in clock ticks since boot (field 22 of /proc/PID/stat),
 * which with the pid names a process uniquely; -ESRCH if there is none. */
RPAL_HIDDEN int rpal__prim_proc_start(pid_t pid, uint64_t *start);
/* 1 if the process PID that started at START still runs, else 0. */
RPAL_HIDDEN int rpal__prim_proc_alive(pid_t pid, uint64_t start);
/* getpid(), cached (forgotten in a forked child). */
RPAL_HIDDEN pid_t rpal__prim_getpid(void);
/* The calling process's start time (cached per pid, so valid after fork). */
RPAL_HIDDEN uint64_t rpal__prim_self_start(void);

/* Every file mapped by a live process (that we may read): FN is called for
 * each mapping line, grouped by pid; a file mapped several times by one
 * process is reported several times in a row of that pid's calls. */
RPAL_HIDDEN int rpal__prim_maps_scan(void (*fn)(pid_t pid, uint64_t dev,
                                          uint64_t ino, void *arg),
                               void *arg);

/* "/proc/self/fd/FD" in BUF (PRIM_FD_PATH bytes), returned: the path by
 * which the kernel reopens or links the very file FD refers to. */
#define PRIM_FD_PATH 32
RPAL_HIDDEN const char *rpal__prim_fd_path(char *buf, int fd);
/* The socket FILE beneath DIRFD as an O_PATH descriptor (its /proc path in
 * PROC), refusing a symlink at its name (-ELOOP) and anything that is not
 * a socket (-ENOENT); and connect(2) SOCK to it that way. */
RPAL_HIDDEN int rpal__prim_sock_open_beneath(int dirfd, const char *file, char proc[PRIM_FD_PATH]);
RPAL_HIDDEN int rpal__prim_connect_beneath(int dirfd, const char *file, int sock);
/* Open DIRFD/PATH with openat2(2) confined beneath DIRFD and refusing every
 * symlink on the way (-ELOOP), with O_CLOEXEC added. */
RPAL_HIDDEN int rpal__prim_open_beneath(int dirfd, const char *path, int flags,
                                  unsigned create_mode);
/* mkdir -p of PATH beneath DIRFD, never following a symlink; new
 * directories get exactly MODE. */
RPAL_HIDDEN int rpal__prim_mkdirs_beneath(int dirfd, const char *path,
                                    unsigned mode, size_t *made);
/* Undo rpal__prim_mkdirs_beneath: remove the empty directories of PATH whose
 * prefix is longer than MADE bytes (what it reported it created). */
RPAL_HIDDEN void rpal__prim_rmdirs_beneath(int dirfd, const char *path, size_t keep);

/* hugetlb. The directory for huge regions' data files: $RPAL_HUGE_DIR, or
 * the first hugetlbfs mount with 2 MiB pages in /proc/self/mounts; -ENODEV
 * if there is none (or $RPAL_HUGE_DIR is not on one). */
#define PRIM_HUGETLBFS_MAGIC 0x958458f6u /* statfs f_type of hugetlbfs */
#define RPAL_HUGE_PAGE  (2ull << 20)
#define RPAL_HUGE_ALIGN (1ull << 30) /* base and size of huge regions */
RPAL_HIDDEN int rpal__prim_huge_dir(char *out, size_t size);
/* 2 MiB huge pages that are free and not reserved; -errno if unknown. */
RPAL_HIDDEN int rpal__prim_huge_avail(uint64_t *pages);

RPAL_HIDDEN uint64_t rpal__prim_now_realtime_ns(void);
/* FNV-1a 64 of N bytes: the checksum of records read from shared files. */
RPAL_HIDDEN uint64_t rpal__prim_fnv1a(const void *p, size_t n);
/* Open-file-description locks. rpal__prim_ofd_test: 1 and the first conflicting
 * lock's range if some other description holds a lock on [OFF, OFF+LEN)
 * (LEN 0: to the end), 0 if none. rpal__prim_ofd_lock: take a lock of TYPE
 * (F_RDLCK, F_WRLCK, F_UNLCK), retrying with short sleeps for at most
 * TIMEOUT_NS (0: once; then -EAGAIN), -ETIMEDOUT when that ran out. */
RPAL_HIDDEN int rpal__prim_ofd_test(int fd, uint64_t off, uint64_t len,
                              uint64_t *start, uint64_t *llen);
RPAL_HIDDEN int rpal__prim_ofd_lock(int fd, int type, uint64_t off, uint64_t len,
                              int64_t timeout_ns);
/* May we trust the directory FD (ssh's StrictModes)? 0 if it is ours or
 * root's and, when others may write it, sticky; else -EPERM: its owner (or
 * anyone, for a non-sticky writable one) could swap what we find in it. */
RPAL_HIDDEN int rpal__prim_dir_trusted(int fd);
RPAL_HIDDEN uint64_t rpal__prim_now_ns(void); /* CLOCK_MONOTONIC */
/* The rpal__prim_now_ns() at which TIMEOUT_MS (-1: never) runs out, UINT64_MAX
 * for never; and the milliseconds left until DEADLINE (rounded up; 0: it
 * passed; -1: never), for calls that take a timeout. */
RPAL_HIDDEN uint64_t rpal__prim_deadline(int timeout_ms);
RPAL_HIDDEN int rpal__prim_ms_left(uint64_t deadline);
/* Wait until FD has EV (0), an error or hang-up without it (-ECONNRESET)
 * or DEADLINE passes (-ETIMEDOUT); a signal does not restart the wait from
 * the full timeout. */
RPAL_HIDDEN int rpal__prim_poll_until(int fd, short ev, uint64_t deadline);
/* FD is an eventfd (1) or not (0). */
RPAL_HIDDEN int rpal__prim_is_eventfd(int fd);

/* Futex wait/wake; SHARED for words in memory other processes map.
 * TIMEOUT_NS < 0: no timeout. Wait returns 0, -EAGAIN (value differed),
 * -ETIMEDOUT or -EINTR. */
struct futex_waitv;
RPAL_HIDDEN int rpal__prim_futex_wait(const _Atomic uint32_t *addr, uint32_t val,
                                int shared, int64_t timeout_ns);
RPAL_HIDDEN int rpal__prim_futex_wake(const _Atomic uint32_t *addr, int n, int shared);
/* A PI futex as a lock between processes (FUTEX_LOCK_PI): waiters served
 * in the order they came, the lock handed to the first at unlock or at the
 * owner's death. DEADLINE_NS on CLOCK_MONOTONIC. 0, or -ETIMEDOUT, -ESRCH
 * (the owner recorded in the word is gone and handed nothing over),
 * -EDEADLK (the calling thread owns it), -EINVAL or -EPERM (the word is not
 * a consistent lock), -EFAULT, -ENOSYS (no PI futexes). */
RPAL_HIDDEN int rpal__prim_futex_lock_pi(_Atomic uint32_t *addr, uint64_t deadline_ns);
RPAL_HIDDEN int rpal__prim_futex_unlock_pi(_Atomic uint32_t *addr);
/* Copy LEN bytes within our own address space through the kernel
 * (process_vm_readv/writev): 0, or -EFAULT if a page is gone (cut from its
 * file, unmapped, no permission) where a plain access would raise SIGBUS or
 * SIGSEGV. */
RPAL_HIDDEN int rpal__prim_mem_read(void *dst, const void *src, size_t len);
/* Two such reads in one system call, in this order. */
RPAL_HIDDEN int rpal__prim_mem_read2(void *dst1, const void *src1, size_t len1, void *dst2,
                               const void *src2, size_t len2);
RPAL_HIDDEN int rpal__prim_mem_write(void *dst, const void *src, size_t len);
/* Wait on several words at once (Linux 5.16+): index woken, or -errno. */
RPAL_HIDDEN int rpal__prim_futex_waitv(struct futex_waitv *w, unsigned n,
                                 int64_t timeout_ns);

/* Process identity that crosses pid namespaces (docs/containers.md). A
 * pid names a process only inside one pid namespace: across two, the
 * kernel translates it, or gives 0 where the process is not visible. A
 * pidfd names it everywhere, and since Linux 6.9 (pidfs) its inode number
 * is unique for the boot and the same in every namespace. */
#define PRIM_PIDFS_MAGIC 0x50494446u /* statfs f_type of pidfs */
/* The pidfs inode of the process PIDFD refers to; 0 if the kernel has no
 * pidfs (before 6.9 every pidfd shares one anonymous inode). */
RPAL_HIDDEN uint64_t rpal__prim_pidfd_ino(int pidfd);
/* A pidfd (close-on-exec) of the process at the other end of the Unix
 * socket SOCK, as the kernel recorded it at connect() (SO_PEERPIDFD,
 * Linux 6.5+), or -errno (-ENOPROTOOPT before 6.5). */
RPAL_HIDDEN int rpal__prim_sock_pidfd(int sock);
/* rpal__prim_pidfd_ino of SOCK's other end: 0 if unknown. */
RPAL_HIDDEN uint64_t rpal__prim_sock_peer_ino(int sock);
/* Our own pidfs inode, and the inode of our pid namespace
 * (/proc/self/ns/pid); 0 if unknown. Cached per pid (valid after fork). */
RPAL_HIDDEN uint64_t rpal__prim_self_ino(void);
RPAL_HIDDEN uint64_t rpal__prim_self_pidns(void);
/* A pidfd of the process PID of our namespace, or of the other end of
 * SOCK (>= 0) if the kernel can say: that one needs no pid, so works
 * where PID is 0 (not visible here). -errno otherwise. */
RPAL_HIDDEN int rpal__prim_peer_pidfd(int sock, pid_t pid);

/* Space on a volume of limited size (a tmpfs mounted with --size, a
 * Kubernetes emptyDir with a sizeLimit): pages of a shared file are taken
 * from the file system when first touched, and a mapping that touches one
 * the file system cannot give raises SIGBUS. Reserving them up front
 * (fallocate) turns that into -ENOSPC at once. rpal__prim_reserve: 0, or
 * -ENOSPC, or -errno; 0 where the file system cannot reserve (EOPNOTSUPP).
 * rpal__prim_fs_limited: 1 if FD is on a tmpfs given a size below the
 * default (half the machine's memory), where a region's data is reserved
 * at create; 0 otherwise (a region's data stays sparse). */
RPAL_HIDDEN int rpal__prim_reserve(int fd, uint64_t off, uint64_t len);
RPAL_HIDDEN int rpal__prim_fs_limited(int fd);

#endif
