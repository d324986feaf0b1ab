/* prim: thin wrappers over the operating system. Every function returns 0 or
 * a negative errno; nothing above this layer touches errno. */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <ctype.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <mntent.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/statfs.h>
#include <sys/sysinfo.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

int rpal__prim_map_fixed(uint64_t addr, size_t len, int prot, int flags, int fd,
                   off_t off)
{
    /* Offsets, guards and header pages are laid out in 4 KiB pages (the
     * page of x86-64 and of Debian's arm64 kernels); an arm64 kernel built
     * with 16 or 64 KiB pages is refused here, where every mapping in the
     * window begins, rather than half working. */
    static _Atomic long page;
    long pg = rpal_load_relaxed(&page);
    if (!pg)
        rpal_store_relaxed(&page, pg = sysconf(_SC_PAGESIZE));
    if (pg != (long)RPAL_PAGE)
        return -EOPNOTSUPP;
    void *want = (void *)(uintptr_t)addr;
    void *p = mmap(want, len, prot, flags | MAP_FIXED_NOREPLACE, fd, off);
    if (p == MAP_FAILED)
        return errno == EEXIST ? -EADDRINUSE : -errno;
    if (p != want) {
        /* Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat the
         * address as a hint: the range was taken. */
        munmap(p, len);
        return -EADDRINUSE;
    }
    return 0;
}

/* Field 22 of /proc/PID/stat. The command name (field 2) may hold spaces
 * and parentheses, so fields are counted from the last ')'. */
int rpal__prim_proc_start(pid_t pid, uint64_t *start)
{
    char path[64], buf[1024];
    if (pid <= 0)
        return -ESRCH;
    /* The thread group leader's own stat, whose start time is the
     * process's: the same file for Linux, but not one that qemu-user
     * replaces with its own for the emulated process (its /proc/self/stat
     * and /proc/<own pid>/stat give 0 for the start time, which would make
     * every process look dead to its peers). */
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ESRCH : -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n <= 0)
        return n < 0 ? -e : -ESRCH;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -EIO;
    /* p+1 is the space before field 3; step to the space before field 22. */
    p++;
    for (int field = 3; field < 22 && p; field++)
        p = strchr(p + 1, ' ');
    if (!p)
        return -EIO;
    char *end;
    unsigned long long v = strtoull(p + 1, &end, 10);
    if (end == p + 1)
        return -EIO;
    /* A zombie still has its stat file but is no longer running code. */
    char *st = strrchr(buf, ')') + 2;
    if (*st == 'Z' || *st == 'X')
        return -ESRCH;
    *start = v;
    return 0;
}

int rpal__prim_proc_alive(pid_t pid, uint64_t start)
{
    uint64_t now;
    if (rpal__prim_proc_start(pid, &now) < 0)
        return 0;
    return now == start;
}

/* getpid() is a system call (glibc stopped caching it), and the layout
 * code needs our pid for every copy through the kernel and every record
 * lock: cached, and forgotten in a forked child by a fork handler that is
 * registered when the library is loaded, so before any other of rpal's. */
static _Atomic pid_t g_self_pid;

static void self_pid_forget(void)
{
    rpal_store_relaxed(&g_self_pid, 0);
}

__attribute__((constructor)) static void self_pid_init(void)
{
    pthread_atfork(NULL, NULL, self_pid_forget);
}

pid_t rpal__prim_getpid(void)
{
    pid_t p = rpal_load_relaxed(&g_self_pid);
    if (!p) {
        p = getpid();
        rpal_store_relaxed(&g_self_pid, p);
    }
    return p;
}

/* A value of the calling process, cached per pid, so that a forked child
 * computes its own. Threads may race to fill the cache: both compute the
 * same value; the value is published before the pid (release) and read
 * after it (acquire). COMPUTE gives 0 and *V, or < 0: nothing is cached
 * (and 0 returned). */
struct self_cache {
    _Atomic pid_t pid;
    _Atomic uint64_t v;
};

static uint64_t self_cached(struct self_cache *c, int (*compute)(pid_t me, uint64_t *v))
{
    pid_t me = rpal__prim_getpid();
    if (rpal_load_acquire(&c->pid) == me)
        return rpal_load_relaxed(&c->v);
    uint64_t v = 0;
    if (compute(me, &v) == 0) {
        rpal_store_relaxed(&c->v, v);
        rpal_store_release(&c->pid, me); /* pairs with the acquire above */
    }
    return v;
}

uint64_t rpal__prim_self_start(void)
{
    static struct self_cache c;
    return self_cached(&c, rpal__prim_proc_start);
}

/* ---- identity across pid namespaces ------------------------------------ */

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; glibc 2.36's headers lack it */
#endif

uint64_t rpal__prim_pidfd_ino(int pidfd)
{
    struct statfs sf;
    struct stat st;
    if (pidfd < 0 || fstatfs(pidfd, &sf) < 0 || (uint32_t)sf.f_type != PRIM_PIDFS_MAGIC ||
        fstat(pidfd, &st) < 0)
        return 0;
    return (uint64_t)st.st_ino;
}

int rpal__prim_sock_pidfd(int sock)
{
    int fd = -1;
    socklen_t l = sizeof fd;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &fd, &l) < 0)
        return -errno;
    if (fd < 0)
        return -ESRCH;
    /* The kernel makes it O_CLOEXEC already; said again for older ones. */
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

uint64_t rpal__prim_sock_peer_ino(int sock)
{
    int fd = rpal__prim_sock_pidfd(sock);
    uint64_t ino = rpal__prim_pidfd_ino(fd);
    if (fd >= 0)
        close(fd);
    return ino;
}

int rpal__prim_peer_pidfd(int sock, pid_t pid)
{
    int fd = sock >= 0 ? rpal__prim_sock_pidfd(sock) : -ENOTSOCK;
    if (fd >= 0)
        return fd;
    if (pid <= 0)
        return -ESRCH; /* not visible from here, and the kernel cannot say */
    fd = (int)syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : fd;
}

static int self_ino_compute(pid_t me, uint64_t *v)
{
    int fd = (int)syscall(SYS_pidfd_open, me, 0);
    *v = rpal__prim_pidfd_ino(fd);
    if (fd >= 0)
        close(fd);
    return 0;
}

static int self_pidns_compute(pid_t me, uint64_t *v)
{
    (void)me;
    struct stat st;
    *v = stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
    return 0;
}

/* Both cached per pid, as rpal__prim_self_start (a forked child is another
 * process; unshare(CLONE_NEWPID) changes only its children's namespace). */
uint64_t rpal__prim_self_ino(void)
{
    static struct self_cache c;
    return self_cached(&c, self_ino_compute);
}

uint64_t rpal__prim_self_pidns(void)
{
    static struct self_cache c;
    return self_cached(&c, self_pidns_compute);
}

/* ---- space on limited volumes --------------------------------------------- */

int rpal__prim_reserve(int fd, uint64_t off, uint64_t len)
{
    int r;
    do
        r = fallocate(fd, 0, (off_t)off, (off_t)len);
    while (r < 0 && errno == EINTR);
    if (r == 0 || errno == EOPNOTSUPP)
        return 0;
    return errno == ENOSPC || errno == EDQUOT ? -ENOSPC : -errno;
}

int rpal__prim_fs_limited(int fd)
{
    struct statfs sf;
    struct sysinfo si;
    if (fstatfs(fd, &sf) < 0 || (uint32_t)sf.f_type != 0x01021994u /* TMPFS_MAGIC */ ||
        sysinfo(&si) < 0)
        return 0;
    uint64_t fs = (uint64_t)sf.f_blocks * (uint64_t)sf.f_bsize;
    uint64_t ram = (uint64_t)si.totalram * si.mem_unit;
    /* The kernel's default for a tmpfs is half the memory, rounded down to
     * pages: only a smaller one was given its size on purpose. */
    return fs && fs + (64ull << 20) < ram / 2;
}

/* ---- hugetlb ------------------------------------------------------------- */

/* 0 if DIR is a directory on hugetlbfs whose pages are 2 MiB. */
static int huge_dir_ok(const char *dir)
{
    struct statfs sf;
    struct stat st;
    if (dir[0] != '/' || statfs(dir, &sf) < 0 || stat(dir, &st) < 0 ||
        !S_ISDIR(st.st_mode))
        return -ENODEV;
    if ((uint32_t)sf.f_type != PRIM_HUGETLBFS_MAGIC || (uint64_t)sf.f_bsize != RPAL_HUGE_PAGE)
        return -ENODEV;
    return 0;
}

int rpal__prim_huge_dir(char *out, size_t size)
{
    const char *env = getenv("RPAL_HUGE_DIR");
    if (env && *env) {
        int err = huge_dir_ok(env);
        if (err == 0 && strlen(env) >= size)
            err = -ENAMETOOLONG;
        if (err == 0)
            snprintf(out, size, "%s", env);
        return err;
    }
    FILE *f = setmntent("/proc/self/mounts", "re");
    if (!f)
        return -ENODEV;
    int err = -ENODEV;
    struct mntent me;
    char buf[4096];
    while (err == -ENODEV && getmntent_r(f, &me, buf, sizeof buf)) {
        if (strcmp(me.mnt_type, "hugetlbfs") || huge_dir_ok(me.mnt_dir) < 0)
            continue;
        if (strlen(me.mnt_dir) >= size)
            err = -ENAMETOOLONG;
        else {
            snprintf(out, size, "%s", me.mnt_dir);
            err = 0;
        }
    }
    endmntent(f);
    return err;
}

static int read_u64_file(const char *path, uint64_t *v)
{
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n <= 0)
        return n < 0 ? -e : -EIO;
    buf[n] = 0;
    char *end;
    *v = strtoull(buf, &end, 10);
    return end == buf ? -EIO : 0;
}

int rpal__prim_huge_avail(uint64_t *pages)
{
    uint64_t free_p, resv;
    const char *d = "/sys/kernel/mm/hugepages/hugepages-2048kB";
    char p[128];
    snprintf(p, sizeof p, "%s/free_hugepages", d);
    int err = read_u64_file(p, &free_p);
    if (err == 0) {
        snprintf(p, sizeof p, "%s/resv_hugepages", d);
        err = read_u64_file(p, &resv);
    }
    if (err == 0)
        *pages = free_p > resv ? free_p - resv : 0;
    return err;
}

uint64_t rpal__prim_fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

uint64_t rpal__prim_now_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int parse_maps_line(const char *line, uint64_t *dev, uint64_t *ino)
{
    /* start-end perms offset major:minor inode [path] */
    unsigned long maj, min;
    unsigned long long inode;
    if (sscanf(line, "%*x-%*x %*4s %*x %lx:%lx %llu", &maj, &min, &inode) != 3)
        return -1;
    *dev = makedev(maj, min);
    *ino = inode;
    return inode ? 0 : -1;
}

int rpal__prim_maps_scan(void (*fn)(pid_t, uint64_t, uint64_t, void *), void *arg)
{
    DIR *d = opendir("/proc");
    if (!d)
        return -errno;
    struct dirent *de;
    char path[64], line[512];
    while ((de = readdir(d))) {
        if (!isdigit((unsigned char)de->d_name[0]))
            continue;
        pid_t pid = (pid_t)atoi(de->d_name);
        snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
        FILE *f = fopen(path, "re");
        if (!f)
            continue; /* gone, or another user's process we may not read */
        while (fgets(line, sizeof line, f)) {
            uint64_t dev, ino;
            size_t l = strlen(line);
            if (l && line[l - 1] != '\n') { /* skip the rest of a long path */
                int c;
                while ((c = fgetc(f)) != EOF && c != '\n')
                    ;
            }
            if (parse_maps_line(line, &dev, &ino) < 0)
                continue;
            fn(pid, dev, ino, arg);
        }
        fclose(f);
    }
    closedir(d);
    return 0;
}

static int sys_openat2(int dirfd, const char *path, int flags, unsigned mode)
{
    struct open_how how = {
        .flags = (uint64_t)(flags | O_CLOEXEC),
        .mode = (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
                   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
}

/* What sys_openat2 does, for where openat2(2) answers ENOSYS: Linux before
 * 5.6, a seccomp filter older than it, or valgrind 3.19 (Debian 12's, which
 * `make valgrind` uses). One component at a time from DIRFD, each opened
 * with O_NOFOLLOW: a symlink anywhere is -ELOOP like RESOLVE_NO_SYMLINKS
 * (which also covers the magic links of /proc); an absolute path or ".." is
 * -EXDEV like RESOLVE_BENEATH (stricter: even a ".." that stays beneath);
 * a component on another device than DIRFD is -EXDEV like RESOLVE_NO_XDEV. */
static int walk_beneath(int dirfd, const char *path, int flags, unsigned mode)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return -ENAMETOOLONG;
    if (path[0] == '/')
        return -EXDEV;
    memcpy(buf, path, len + 1);
    struct stat st;
    if (fstat(dirfd, &st) < 0)
        return -errno;
    dev_t dev = st.st_dev;
    int cur = dirfd, err = 0;
    char *comp = buf;
    for (;;) {
        char *slash = strchr(comp, '/');
        while (slash && slash[1] == '/') /* "a//b" is "a/b" */
            *slash++ = 0;
        if (slash)
            *slash = 0;
        int last = !slash || slash[1] == 0;
        if (!strcmp(comp, "..")) {
            err = -EXDEV;
            break;
        }
        int fd;
        if (last)
            fd = openat(cur, comp[0] ? comp : ".", flags | O_NOFOLLOW | O_CLOEXEC,
                        (flags & (O_CREAT | __O_TMPFILE)) ? mode : 0);
        else
            fd = openat(cur, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            err = -errno;
            /* A link where a directory was wanted (O_DIRECTORY's ENOTDIR,
             * also for a trailing slash) is refused as openat2 does. */
            struct stat ls;
            if (err == -ENOTDIR && fstatat(cur, comp, &ls, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISLNK(ls.st_mode))
                err = -ELOOP;
            break;
        }
        /* O_PATH | O_NOFOLLOW opens a link itself instead of failing. */
        if (fstat(fd, &st) < 0)
            err = -errno;
        else if (S_ISLNK(st.st_mode))
            err = -ELOOP;
        else if (st.st_dev != dev)
            err = -EXDEV;
        if (err < 0) {
            close(fd);
            break;
        }
        if (cur != dirfd)
            close(cur);
        cur = fd;
        if (last)
            return fd;
        comp = slash + 1;
    }
    if (cur != dirfd)
        close(cur);
    return err;
}

int rpal__prim_open_beneath(int dirfd, const char *path, int flags,
                      unsigned create_mode)
{
    static _Atomic int no_openat2; /* set once openat2 said ENOSYS */
    if (!rpal_load_relaxed(&no_openat2)) {
        int fd = sys_openat2(dirfd, path, flags, create_mode);
        if (fd != -ENOSYS)
            return fd;
        rpal_store_relaxed(&no_openat2, 1);
    }
    return walk_beneath(dirfd, path, flags, create_mode);
}

int rpal__prim_mkdirs_beneath(int dirfd, const char *path, unsigned mode,
                        size_t *made)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    *made = SIZE_MAX;
    /* Each prefix is checked (or made) from a descriptor of its parent that
     * was itself opened without following links. */
    for (char *end = buf;; end++) {
        if (*end != '/' && *end != 0)
            continue;
        char saved = *end;
        *end = 0;
        int fd = rpal__prim_open_beneath(dirfd, buf, O_PATH | O_DIRECTORY, 0);
        if (fd == -ENOENT) {
            char *leaf = strrchr(buf, '/');
            int parent = dirfd;
            if (leaf) {
                *leaf = 0;
                parent = rpal__prim_open_beneath(dirfd, buf, O_PATH | O_DIRECTORY, 0);
                *leaf = '/';
                if (parent < 0)
                    return parent;
            }
            const char *name = leaf ? leaf + 1 : buf;
            fd = mkdirat(parent, name, mode) < 0 ? -errno : 0;
            /* mkdir applied the umask; the caller asked for MODE. */
            if (fd == 0 && fchmodat(parent, name, mode, 0) < 0)
                fd = -errno;
            if (fd == 0 && *made == SIZE_MAX)
                *made = leaf ? (size_t)(leaf - buf) : 0;
            if (parent != dirfd)
                close(parent);
            if (fd < 0 && fd != -EEXIST)
                return fd;
        } else if (fd < 0) {
            return fd;
        } else {
            close(fd);
        }
        if (saved == 0)
            return 0;
        *end = saved;
    }
}

void rpal__prim_rmdirs_beneath(int dirfd, const char *path, size_t keep)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return;
    memcpy(buf, path, len + 1);
    /* Deepest first; rmdir fails harmlessly on a directory that someone
     * else has meanwhile put something in. */
    while (strlen(buf) > keep) {
        char *leaf = strrchr(buf, '/');
        int parent = dirfd;
        if (leaf) {
            *leaf = 0;
            parent = rpal__prim_open_beneath(dirfd, buf, O_PATH | O_DIRECTORY, 0);
            if (parent < 0)
                return;
        }
        int r = unlinkat(parent, leaf ? leaf + 1 : buf, AT_REMOVEDIR);
        if (parent != dirfd)
            close(parent);
        if (r < 0 || !leaf)
            return;
    }
}

/* Futexes on memory another process maps too are "shared" (keyed by the
 * file and offset); ones only our threads see are private (cheaper). */
int rpal__prim_futex_wait(const _Atomic uint32_t *addr, uint32_t val, int shared,
                    int64_t timeout_ns)
{
    struct timespec ts, *tp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        tp = &ts;
    }
    long r = syscall(SYS_futex, addr, shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, val, tp,
                     NULL, 0);
    return r < 0 ? -errno : 0;
}

/* The socket FILE beneath DIRFD (a service's rendezvous) as an O_PATH
 * descriptor, refusing a symlink at its name (-ELOOP) and anything that is
 * not a socket (-ENOENT). connect() and chmod() by name follow links; the
 * callers below act through /proc/self/fd/N of this descriptor instead, so
 * that a link planted (or swapped in) under the name never leads them to a
 * socket or file elsewhere. */
int rpal__prim_sock_open_beneath(int dirfd, const char *file, char proc[PRIM_FD_PATH])
{
    int fd = rpal__prim_open_beneath(dirfd, file, O_PATH, 0);
    if (fd < 0)
        return fd;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        close(fd);
        return -ENOENT;
    }
    rpal__prim_fd_path(proc, fd);
    return fd;
}

int rpal__prim_connect_beneath(int dirfd, const char *file, int sock)
{
    char proc[PRIM_FD_PATH];
    int fd = rpal__prim_sock_open_beneath(dirfd, file, proc);
    if (fd < 0)
        return fd;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", proc);
    int err = connect(sock, (struct sockaddr *)&a, sizeof a) < 0 ? -errno : 0;
    close(fd);
    return err;
}

int rpal__prim_is_eventfd(int fd)
{
    char path[PRIM_FD_PATH], link[32];
    rpal__prim_fd_path(path, fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    return n == (ssize_t)strlen("anon_inode:[eventfd]") && !memcmp(link, "anon_inode:[eventfd]", (size_t)n);
}

int rpal__prim_futex_wake(const _Atomic uint32_t *addr, int n, int shared)
{
    long r = syscall(SYS_futex, addr, shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE, n, NULL,
                     NULL, 0);
    return r < 0 ? -errno : (int)r;
}

int rpal__prim_futex_waitv(struct futex_waitv *w, unsigned n, int64_t timeout_ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t abs = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + timeout_ns;
    ts.tv_sec = abs / 1000000000;
    ts.tv_nsec = abs % 1000000000;
    long r = syscall(SYS_futex_waitv, w, n, 0, &ts, CLOCK_MONOTONIC);
    return r < 0 ? -errno : (int)r;
}

#ifndef FUTEX_LOCK_PI2
#define FUTEX_LOCK_PI2 13 /* Linux 5.14: FUTEX_LOCK_PI on CLOCK_MONOTONIC */
#endif

/* A priority-inheritance futex used as a lock between processes: the
 * kernel keeps the waiters in a queue (in arrival order among tasks of
 * normal priority), hands the lock to the first one when the owner
 * unlocks, and also when the owner dies with waiters queued (the word then
 * carries FUTEX_OWNER_DIED). The word must be in writable shared memory;
 * the kernel reads and writes it, so a page cut from its file is -EFAULT,
 * never SIGBUS. */
int rpal__prim_futex_lock_pi(_Atomic uint32_t *addr, uint64_t deadline_ns)
{
    for (;;) {
        struct timespec ts = {(time_t)(deadline_ns / 1000000000),
                              (long)(deadline_ns % 1000000000)};
        long r = syscall(SYS_futex, addr, FUTEX_LOCK_PI2, 0, &ts, NULL, 0);
        if (r < 0 && errno == ENOSYS) {
            /* Before 5.14 (and under valgrind 3.19): FUTEX_LOCK_PI takes
             * its deadline on CLOCK_REALTIME. */
            uint64_t now = rpal__prim_now_ns(), left = deadline_ns > now ? deadline_ns - now : 0;
            uint64_t abs = rpal__prim_now_realtime_ns() + left;
            ts.tv_sec = (time_t)(abs / 1000000000);
            ts.tv_nsec = (long)(abs % 1000000000);
            r = syscall(SYS_futex, addr, FUTEX_LOCK_PI, 0, &ts, NULL, 0);
        }
        if (r == 0)
            return 0;
        if (errno != EAGAIN)
            return -errno;
        /* The owner is exiting: the kernel says to try again shortly. */
        if (rpal__prim_now_ns() >= deadline_ns)
            return -ETIMEDOUT;
        sched_yield();
    }
}

int rpal__prim_futex_unlock_pi(_Atomic uint32_t *addr)
{
    long r = syscall(SYS_futex, addr, FUTEX_UNLOCK_PI, 0, NULL, NULL, 0);
    return r < 0 ? -errno : 0;
}

/* OFD locks (F_OFD_*): owned by the open file description, so two
 * descriptors of one process conflict like two processes do, and a lock
 * goes away with the last descriptor of its description (at death too). */
int rpal__prim_ofd_test(int fd, uint64_t off, uint64_t len, uint64_t *start,
                  uint64_t *llen)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                       .l_start = (off_t)off, .l_len = (off_t)len};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    if (fl.l_type == F_UNLCK)
        return 0;
    if (start)
        *start = (uint64_t)fl.l_start;
    if (llen)
        *llen = (uint64_t)fl.l_len;
    return 1;
}

int rpal__prim_ofd_lock(int fd, int type, uint64_t off, uint64_t len,
                  int64_t timeout_ns)
{
    struct flock fl = {.l_type = (short)type, .l_whence = SEEK_SET,
                       .l_start = (off_t)off, .l_len = (off_t)len};
    uint64_t deadline = rpal__prim_now_ns() + (uint64_t)(timeout_ns > 0 ? timeout_ns : 0);
    int64_t nap = 20000; /* 20 us, doubling to 5 ms: a lock is held briefly */
    for (;;) {
        if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
            return 0;
        if (errno != EAGAIN && errno != EACCES && errno != EINTR)
            return -errno;
        uint64_t now = rpal__prim_now_ns();
        if (now >= deadline)
            return timeout_ns > 0 ? -ETIMEDOUT : -EAGAIN;
        if ((uint64_t)nap > deadline - now)
            nap = (int64_t)(deadline - now);
        struct timespec ts = {nap / 1000000000, nap % 1000000000};
        nanosleep(&ts, NULL);
        if (nap < 5000000)
            nap *= 2;
    }
}

uint64_t rpal__prim_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t rpal__prim_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? UINT64_MAX : rpal__prim_now_ns() + (uint64_t)timeout_ms * 1000000;
}

int rpal__prim_ms_left(uint64_t deadline)
{
    if (deadline == UINT64_MAX)
        return -1;
    uint64_t now = rpal__prim_now_ns();
    if (now >= deadline)
        return 0;
    uint64_t left = (deadline - now + 999999) / 1000000;
    return left > INT_MAX ? INT_MAX : (int)left;
}

int rpal__prim_poll_until(int fd, short ev, uint64_t deadline)
{
    for (;;) {
        int left = rpal__prim_ms_left(deadline);
        if (left == 0)
            return -ETIMEDOUT;
        struct pollfd pf = {fd, ev, 0};
        /* At most a second at a time: a deadline far off is not held in an
         * int of milliseconds forever, and the clock is read again. */
        int r = poll(&pf, 1, left < 0 || left > 1000 ? 1000 : left);
        if (r > 0)
            return (pf.revents & (POLLERR | POLLNVAL)) ? -ECONNRESET : 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

static _Atomic int g_no_vm_copy; /* process_vm_readv/writev refused here */

/* The same through a pipe, where process_vm_readv/writev are refused
 * (ENOSYS: qemu-user, tests/vm/arm64.sh; EPERM: a seccomp profile such as
 * Docker's default without CAP_SYS_PTRACE): write() copies from SRC and
 * read() into DST with the kernel's user copies, which give EFAULT for a
 * page that is gone. A page at a time: an empty pipe always has room. */
static int pipe_copy(void *dst, const void *src, size_t len)
{
    int pp[2];
    if (pipe2(pp, O_CLOEXEC) < 0)
        return -errno;
    int err = 0;
    for (size_t done = 0; done < len;) {
        size_t k = len - done < RPAL_PAGE ? len - done : RPAL_PAGE;
        ssize_t w = write(pp[1], (const char *)src + done, k);
        if (w <= 0) {
            err = w < 0 && errno == EINTR ? 0 : -EFAULT;
            if (err)
                break;
            continue;
        }
        ssize_t r = read(pp[0], (char *)dst + done, (size_t)w);
        if (r != w) {
            err = -EFAULT;
            break;
        }
        done += (size_t)w;
    }
    close(pp[0]);
    close(pp[1]);
    return err;
}

/* Copy between two ranges of our own address space through the kernel:
 * a page that is gone (past the end of its file, unmapped, or without the
 * permission) makes the call fail with -EFAULT instead of raising SIGBUS or
 * SIGSEGV. For the library's own reads and writes of shared memory that
 * another process can cut (a region's header); no descriptor is needed. */
static int mem_copy(void *dst, const void *src, size_t len, int write)
{
    if (rpal_load_relaxed(&g_no_vm_copy))
        return pipe_copy(dst, src, len);
    struct iovec local = {write ? (void *)src : dst, len};
    struct iovec remote = {write ? dst : (void *)src, len};
    ssize_t n = write ? process_vm_writev(rpal__prim_getpid(), &local, 1, &remote, 1, 0)
                      : process_vm_readv(rpal__prim_getpid(), &local, 1, &remote, 1, 0);
    if (n < 0 && (errno == ENOSYS || errno == EPERM)) {
        rpal_store_relaxed(&g_no_vm_copy, 1);
        return pipe_copy(dst, src, len);
    }
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EFAULT;
}

int rpal__prim_mem_read(void *dst, const void *src, size_t len)
{
    return mem_copy(dst, src, len, 0);
}

int rpal__prim_mem_read2(void *dst1, const void *src1, size_t len1, void *dst2, const void *src2,
                   size_t len2)
{
    if (!rpal_load_relaxed(&g_no_vm_copy)) {
        struct iovec local[2] = {{dst1, len1}, {dst2, len2}};
        struct iovec remote[2] = {{(void *)src1, len1}, {(void *)src2, len2}};
        ssize_t n = process_vm_readv(rpal__prim_getpid(), local, 2, remote, 2, 0);
        if (n >= 0)
            return (size_t)n == len1 + len2 ? 0 : -EFAULT;
        if (errno != ENOSYS && errno != EPERM)
            return -errno;
    }
    /* No process_vm_readv here (qemu-user): one range at a time, which
     * mem_copy knows how to do without it. */
    int err = mem_copy(dst1, src1, len1, 0);
    return err < 0 ? err : mem_copy(dst2, src2, len2, 0);
}

int rpal__prim_mem_write(void *dst, const void *src, size_t len)
{
    return mem_copy(dst, src, len, 1);
}

/* ---- protection keys ------------------------------------------------------ */

#if defined(__x86_64__)
int rpal__prim_pku_cpu(void)
{
    static _Atomic int cached = -1;
    int c = rpal_load_relaxed(&cached);
    if (c < 0) {
        unsigned a, b, cx = 0, dx;
        /* CPUID.(EAX=7,ECX=0):ECX bit 4, OSPKE: PKU present and CR4.PKE set. */
        c = __get_cpuid_count(7, 0, &a, &b, &cx, &dx) && (cx & (1u << 4)) ? 1 : 0;
        rpal_store_relaxed(&cached, c);
    }
    return c;
}
/* RDPKRU and WRPKRU by their encodings: assemblers before binutils 2.26
 * do not know the names. Both need ECX = 0 (and WRPKRU EDX = 0). */
uint32_t rpal__prim_pkru_read(void)
{
    uint32_t eax, edx;
    __asm__ volatile(".byte 0x0f, 0x01, 0xee" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}
void rpal__prim_pkru_write(uint32_t v)
{
    __asm__ volatile(".byte 0x0f, 0x01, 0xef" : : "a"(v), "c"(0), "d"(0) : "memory");
}
#else
int rpal__prim_pku_cpu(void) { return 0; }
uint32_t rpal__prim_pkru_read(void) { return 0; }
void rpal__prim_pkru_write(uint32_t v) { (void)v; }
#endif

/* ---- recovery points ------------------------------------------------------
 * A guard is a frame on the calling thread's stack, linked from a
 * thread-local top pointer: the fault handler runs on the faulting thread, so
 * it sees exactly that thread's guards and needs no lock. The handler is
 * installed once, on first use, never by merely using the rest of the
 * library: a library that takes over SIGSEGV behind the application's back
 * breaks runtimes that rely on their own handler. */

struct guard_frame {
    sigjmp_buf jb;
    uintptr_t lo[2], hi[2];    /* page-rounded ranges; empty when lo == hi */
    struct guard_frame *up;
    uint32_t pkru;             /* the thread's key rights when the guard began */
};

/* initial-exec: reading a dynamic TLS variable may allocate the first time
 * in a thread, which a signal handler must not do. */
static __thread struct guard_frame *g_guard_top __attribute__((tls_model("initial-exec")));
static struct sigaction g_guard_old[2]; /* SIGSEGV, SIGBUS before ours */
static pthread_once_t g_guard_once = PTHREAD_ONCE_INIT;
static int g_guard_err;

static void guard_chain(int sig, siginfo_t *si, void *uc)
{
    const struct sigaction *o = &g_guard_old[sig == SIGBUS];
    if (o->sa_flags & SA_SIGINFO) {
        o->sa_sigaction(sig, si, uc);
    } else if (o->sa_handler != SIG_DFL && o->sa_handler != SIG_IGN) {
        o->sa_handler(sig);
    } else {
        /* Default (an ignored fault would only repeat forever): restore it
         * and return, so the faulting instruction runs again and the process
         * dies of the original fault, core dump and all. A sent signal does
         * not repeat: send it again. */
        struct sigaction d = {.sa_handler = SIG_DFL};
        sigemptyset(&d.sa_mask);
        sigaction(sig, &d, NULL);
        if (si->si_code <= 0)
            raise(sig);
    }
}

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    /* si_code > 0: a fault the kernel raised, not kill() or sigqueue(). */
    if (si->si_code > 0)
        for (struct guard_frame *f = g_guard_top; f; f = f->up)
            for (int i = 0; i < 2; i++)
                if (a >= f->lo[i] && a < f->hi[i]) {
                    g_guard_top = f; /* inner frames are abandoned with their fn */
                    siglongjmp(f->jb, sig);
                }
    guard_chain(sig, si, uc);
}

static void guard_install(void)
{
    /* SA_NODEFER: the handler leaves by siglongjmp, and sigsetjmp does not
     * save the mask (that would be a system call per guard); so the signal
     * must not be blocked while the handler runs. SA_ONSTACK: use the
     * application's alternate stack if it set one (stack overflow). */
    struct sigaction sa = {.sa_sigaction = guard_handler,
                           .sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &g_guard_old[0]) < 0 ||
        sigaction(SIGBUS, &sa, &g_guard_old[1]) < 0)
        g_guard_err = -errno;
}

static void guard_range(struct guard_frame *f, int i, const void *addr, size_t len)
{
    /* Whole pages: a string or vector routine may fault at an aligned
     * address below the first byte it was asked for, never outside the
     * pages it was asked for. */
    uintptr_t a = (uintptr_t)addr;
    f->lo[i] = len ? a & ~(uintptr_t)(RPAL_PAGE - 1) : 0;
    f->hi[i] = len ? ((a + len - 1) | (RPAL_PAGE - 1)) + 1 : 0;
    if (f->hi[i] == 0 && len) /* the last page of the address space */
        f->hi[i] = UINTPTR_MAX;
}

/* Run fn(arg) with frame f (its ranges set) on top of this thread's guards.
 * sigsetjmp is here, in the frame that stays live while fn runs. */
static int guard_run(struct guard_frame *f, int (*fn)(void *), void *arg)
{
    pthread_once(&g_guard_once, guard_install);
    if (g_guard_err)
        return g_guard_err;
    f->up = g_guard_top;
    /* The kernel runs a signal handler with its default key rights (every
     * key but 0 closed) and siglongjmp does not restore them: without this,
     * a recovered fault would close the thread's open access windows
     * (rpal_peer_access_begin) behind rpal's back. */
    int pku = rpal__prim_pku_cpu();
    if (pku)
        f->pkru = rpal__prim_pkru_read();
    int sig = sigsetjmp(f->jb, 0);
    if (sig) {
        if (pku)
            rpal__prim_pkru_write(f->pkru);
        g_guard_top = f->up;
        return sig == SIGBUS ? -EIO : -EFAULT;
    }
    g_guard_top = f;
    /* The handler must see the frame before fn's first access and until its
     * last: signal fences order these stores against code on this thread. */
    atomic_signal_fence(memory_order_seq_cst);
    int ret = fn(arg);
    atomic_signal_fence(memory_order_seq_cst);
    g_guard_top = f->up;
    return ret;
}

int rpal_guard(const void *addr, size_t len, int (*fn)(void *arg), void *arg)
{
    if (!fn || (uintptr_t)addr + len < (uintptr_t)addr)
        return -EINVAL;
    struct guard_frame f;
    guard_range(&f, 0, addr, len);
    guard_range(&f, 1, NULL, 0);
    return guard_run(&f, fn, arg);
}

struct guard_copy {
    void *dst;
    const void *src;
    size_t len;
};

static int guard_copy_fn(void *arg)
{
    struct guard_copy *c = arg;
    memcpy(c->dst, c->src, c->len);
    return 0;
}

int rpal_guard_copy(void *dst, const void *src, size_t len)
{
    if (!len)
        return 0;
    if (!dst || !src || (uintptr_t)dst + len < (uintptr_t)dst ||
        (uintptr_t)src + len < (uintptr_t)src)
        return -EINVAL;
    struct guard_frame f;
    guard_range(&f, 0, src, len);
    guard_range(&f, 1, dst, len);
    struct guard_copy c = {dst, src, len};
    return guard_run(&f, guard_copy_fn, &c);
}

const char *rpal_version(void)
{
#define RPAL_STR2(x) #x
#define RPAL_STR(x) RPAL_STR2(x)
    return RPAL_STR(RPAL_VERSION_MAJOR) "." RPAL_STR(RPAL_VERSION_MINOR) "." RPAL_STR(
        RPAL_VERSION_PATCH);
}

int rpal_harden(unsigned flags)
{
    if (flags & ~RPAL_HARDEN_NO_PTRACE)
        return -EINVAL;
    /* Not dumpable: the kernel's ptrace check (behind /proc/PID/mem,
     * process_vm_writev, /proc/PID/fd and map_files) then wants
     * CAP_SYS_PTRACE even from a process of our own user. */
    if ((flags & RPAL_HARDEN_NO_PTRACE) && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return -errno;
    return 0;
}

/* 1 if UID is what the kernel shows for an owner outside our user
 * namespace (the overflow uid, while we are not in the initial one): the
 * host's root or any other user, which cannot be told apart from inside. A
 * rootless container sees the volume its runtime (root) made that way. */
static int uid_unmapped(uid_t uid)
{
    char buf[64];
    int fd = open("/proc/sys/kernel/overflowuid", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0)
        close(fd);
    if (n <= 0 || (buf[n] = 0, (uid_t)strtoul(buf, NULL, 10) != uid))
        return 0;
    unsigned long in = 0, out = 0, count = 0;
    FILE *f = fopen("/proc/self/uid_map", "re");
    int initial = !f || (fscanf(f, "%lu %lu %lu", &in, &out, &count) == 3 && in == 0 &&
                         out == 0 && count == 4294967295ul);
    if (f)
        fclose(f);
    return !initial;
}

int rpal__prim_dir_trusted(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (st.st_uid != geteuid() && st.st_uid != 0 && !uid_unmapped(st.st_uid))
        return -EPERM;
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
        return -EPERM;
    return 0;
}

const char *rpal_strerror(int err)
{
    switch (-err) {
    case 0:
        return "success";
    case EBADMSG:
        return "not an rpal object, or a corrupt header (region, registry or domain)";
    case EPROTO:
        return "format or protocol version not understood (region header, handshake or ring)";
    case EADDRINUSE:
        return "the address range (region or domain window) is already in use in this process";
    case ELOOP:
        return "a symbolic link in the namespace (never followed)";
    case EPERM:
        return "operation not permitted, or a namespace, .domains or domain directory not "
               "trusted: owned by another user (not root), or writable by others without "
               "the sticky bit (rpal ls names it; have root make it, or use a private "
               "RPAL_DIR)";
    case EFBIG:
        return "size larger than the address window";
    case ENOSPC:
        return "no room left (address window, registry, the filesystem, or free huge pages)";
    case EDQUOT:
        return "another user's region beyond that user's quota of the shared namespace "
               "(RPAL_QUOTA_WINDOW, RPAL_QUOTA_REGIONS): its address range may be in use "
               "by another region; or a filesystem quota";
    case ENODEV:
        return "no hugetlbfs with 2 MiB pages here (mount one, or set RPAL_HUGE_DIR)";
    case ENAMETOOLONG:
        return "name too long";
    case EOPNOTSUPP:
        return "not supported here: a layout change on a huge region (one object, no layout), "
               "a namespace directory without O_TMPFILE, or pages other than 4 KiB";
    default:
        return err < 0 ? strerror(-err) : "unknown error";
    }
}

const char *rpal__prim_fd_path(char *buf, int fd)
{
    snprintf(buf, PRIM_FD_PATH, "/proc/self/fd/%d", fd);
    return buf;
}

/* RPAL_DEFAULT_SLOT_SIZE (rpal.h): decided here, where RPAL_TSAN and
 * RPAL_VALGRIND say which window this library was built with, so that a
 * program built with other flags gets the size the library really uses:
 * 64 slots of 4 GiB in the small window's 256 GiB of domain, 256 of 64 GiB
 * in the usual 16 TiB. */
uint64_t rpal_default_slot_size(void)
{
#if defined(RPAL_TSAN) || defined(RPAL_VALGRIND)
    return 4ull << 30;
#else
    return 64ull << 30;
#endif
}
