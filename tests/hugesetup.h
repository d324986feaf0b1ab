/* Test and benchmark support, not part of the library: make 2 MiB huge pages
 * usable for the life of the calling process, and put the machine back as it
 * was afterwards, however the process ends.
 *
 * huge_setup(s, pages) makes sure that
 *   - a hugetlbfs with 2 MiB pages is there for rpal (rpal__prim_huge_dir()): if
 *     none is, and we are root, one is mounted on a fresh directory in a
 *     private mount namespace (unshare(CLONE_NEWNS), / made MS_PRIVATE), so
 *     nothing is mounted for the rest of the machine, and RPAL_HUGE_DIR names
 *     it for this process and its children;
 *   - PAGES huge pages are free and unreserved: if fewer are, and we may,
 *     vm.nr_hugepages is raised by exactly the shortfall.
 * huge_teardown(s) unmounts, removes the directory and writes the old
 * vm.nr_hugepages back. A guardian process (forked first, outside the
 * private namespace) does the same if the caller dies without tearing down,
 * even by SIGKILL: it waits for the end of a pipe that only the caller
 * holds (forked children must call huge_setup_child(); exec closes it).
 *
 * Returns 0, or -1 with the reason in s->why (the caller skips with it).
 * Include after <rpal.h> and "internal.h" (needs rpal__prim_huge_dir/avail). */
#ifndef RPAL_HUGESETUP_H
#define RPAL_HUGESETUP_H

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define HUGE_NR_PATH "/proc/sys/vm/nr_hugepages"

struct huge_setup {
    char mnt[64];   /* the private mount point we made, or "" */
    long old_nr;    /* vm.nr_hugepages before we raised it, or -1 */
    int guard_fd;   /* the guardian's pipe, or -1 */
    pid_t guard_pid, owner;
    char why[300];  /* why huge pages are not available */
};

static long huge_nr_read(void)
{
    char buf[32];
    int fd = open(HUGE_NR_PATH, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return atol(buf);
}

/* Async-signal-safe enough for the guardian: open, write, close. */
static int huge_nr_write(long v)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", v);
    int fd = open(HUGE_NR_PATH, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int ok = write(fd, buf, (size_t)n) == n;
    int e = errno;
    close(fd);
    return ok ? 0 : -e;
}

/* The guardian: reads records ("N<old nr_hugepages>", "M<mount point>",
 * "D" for done) until the end of the pipe; without a "D", it undoes. */
static void huge_guardian(int rfd)
{
    char buf[512], mnt[64] = "";
    long old = -1;
    size_t len = 0;
    int done = 0;
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0), dup2(null, 1), dup2(null, 2);
        if (null > 2)
            close(null);
    }
    for (;;) {
        ssize_t n = read(rfd, buf + len, sizeof buf - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = 0;
        char *nl;
        while ((nl = strchr(buf, '\n'))) {
            *nl = 0;
            if (buf[0] == 'N')
                old = atol(buf + 1);
            else if (buf[0] == 'M')
                snprintf(mnt, sizeof mnt, "%.63s", buf + 1);
            else if (buf[0] == 'D')
                done = 1;
            len -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len + 1);
        }
    }
    if (!done) {
        if (mnt[0])
            rmdir(mnt); /* in our namespace it is an empty directory */
        if (old >= 0)
            huge_nr_write(old);
    }
    _exit(0);
}

static void huge_tell(struct huge_setup *s, char kind, const char *what)
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "%c%s\n", kind, what);
    /* A guardian gone: teardown by the owner still happens. */
    if (s->guard_fd >= 0 && write(s->guard_fd, buf, (size_t)n) != n)
        s->guard_fd = s->guard_fd;
}

static int huge_guard(struct huge_setup *s)
{
    if (s->guard_fd >= 0)
        return 0;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = -errno;
        close(p[0]), close(p[1]);
        return e;
    }
    if (pid == 0) {
        close(p[1]);
        huge_guardian(p[0]);
    }
    close(p[0]);
    s->guard_fd = p[1];
    s->guard_pid = pid;
    return 0;
}

static void huge_teardown(struct huge_setup *s)
{
    if (getpid() != s->owner)
        return;
    if (s->mnt[0]) {
        umount2(s->mnt, MNT_DETACH);
        rmdir(s->mnt);
        s->mnt[0] = 0;
    }
    if (s->old_nr >= 0) {
        huge_nr_write(s->old_nr);
        s->old_nr = -1;
    }
    if (s->guard_fd >= 0) {
        huge_tell(s, 'D', "");
        close(s->guard_fd);
        s->guard_fd = -1;
        waitpid(s->guard_pid, NULL, 0);
    }
}

/* In a child forked (without exec) after huge_setup(). */
static void huge_setup_child(struct huge_setup *s)
{
    if (s->guard_fd >= 0)
        close(s->guard_fd);
    s->guard_fd = -1;
}

/* vm.nr_hugepages raised so that PAGES are free (AVAIL are): the old value
 * told to the guardian first, so that it can put it back; 0 or -1. */
static int huge_raise(struct huge_setup *s, uint64_t pages, uint64_t avail)
{
    long old = huge_nr_read();
    if (old < 0) {
        snprintf(s->why, sizeof s->why, "cannot read %s", HUGE_NR_PATH);
        huge_teardown(s);
        return -1;
    }
    char v[32];
    snprintf(v, sizeof v, "%ld", old);
    huge_tell(s, 'N', v); /* before the change: the guardian can undo it */
    s->old_nr = old;
    int err = huge_nr_write(old + (long)(pages - avail));
    if (err < 0 || rpal__prim_huge_avail(&avail) < 0 || avail < pages) {
        snprintf(s->why, sizeof s->why, "asked the kernel for %llu more 2 MiB "
                 "huge pages and got %llu free in all (%s)",
                 (unsigned long long)(pages), (unsigned long long)avail,
                 err < 0 ? strerror(-err) : "memory too fragmented?");
        huge_teardown(s);
        return -1;
    }
    return 0;
}

/* A hugetlbfs with 2 MiB pages mounted on a fresh directory in a private
 * mount namespace, named by RPAL_HUGE_DIR; 0 or -1. */
static int huge_mount(struct huge_setup *s)
{
    char dir[HUGE_DIR_MAX];
    snprintf(s->mnt, sizeof s->mnt, "/tmp/rpal-hugetlbfs-XXXXXX");
    if (!mkdtemp(s->mnt)) {
        snprintf(s->why, sizeof s->why, "mkdtemp: %s", strerror(errno));
        s->mnt[0] = 0;
        huge_teardown(s);
        return -1;
    }
    huge_tell(s, 'M', s->mnt);
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("rpal-hugetlbfs", s->mnt, "hugetlbfs", MS_NOSUID | MS_NODEV,
              "pagesize=2M,mode=1777") < 0) {
        snprintf(s->why, sizeof s->why, "mounting a private hugetlbfs: %s",
                 strerror(errno));
        huge_teardown(s);
        return -1;
    }
    setenv("RPAL_HUGE_DIR", s->mnt, 1);
    if (rpal__prim_huge_dir(dir, sizeof dir) < 0) {
        snprintf(s->why, sizeof s->why, "the hugetlbfs mounted on %s is not "
                 "usable", s->mnt);
        huge_teardown(s);
        return -1;
    }
    return 0;
}

static int huge_setup(struct huge_setup *s, uint64_t pages)
{
    memset(s, 0, sizeof *s);
    s->old_nr = -1;
    s->guard_fd = -1;
    s->owner = getpid();
    char dir[HUGE_DIR_MAX];
    uint64_t avail;
    if (rpal__prim_huge_avail(&avail) < 0) {
        snprintf(s->why, sizeof s->why, "no 2 MiB huge pages in this kernel "
                 "(/sys/kernel/mm/hugepages/hugepages-2048kB)");
        return -1;
    }
    int have_dir = rpal__prim_huge_dir(dir, sizeof dir) == 0;
    const char *env = getenv("RPAL_HUGE_DIR");
    if (!have_dir && env && *env) {
        snprintf(s->why, sizeof s->why, "RPAL_HUGE_DIR=%.200s is not a hugetlbfs "
                 "directory with 2 MiB pages", env);
        return -1;
    }
    if (!have_dir && geteuid() != 0) {
        snprintf(s->why, sizeof s->why, "no hugetlbfs with 2 MiB pages mounted, "
                 "and mounting one needs root");
        return -1;
    }
    if (avail < pages && access(HUGE_NR_PATH, W_OK) != 0) {
        snprintf(s->why, sizeof s->why, "%llu free 2 MiB huge pages, %llu needed, "
                 "and raising vm.nr_hugepages needs root",
                 (unsigned long long)avail, (unsigned long long)pages);
        return -1;
    }
    if ((avail < pages || !have_dir) && huge_guard(s) < 0) {
        snprintf(s->why, sizeof s->why, "fork: %s", strerror(errno));
        return -1;
    }
    if (avail < pages && huge_raise(s, pages, avail) < 0)
        return -1;
    if (!have_dir && huge_mount(s) < 0)
        return -1;
    return 0;
}

#endif
