/* huge: the hugetlbfs side of RPAL_REGION_HUGE regions (region layer).
 *
 * A huge region is two files. Its name in the namespace directory is the
 * usual header file (2 MiB, header page only, no data); the data is a file
 * on hugetlbfs, named after the namespace, the header's inode and the
 * creator, so that `rpal gc` can tell whose it is:
 *
 *     <hugetlbfs dir>/rpal.<ns dev>.<ns inode>.<header inode>.<pid>.<start>
 *
 * The header page carries, at HUGE_EXT_OFF, where the data file is and which
 * inode it must be. Like the header, this is read from a file others may
 * write, so it is checked before use: the data file must be a regular file on
 * hugetlbfs with 2 MiB pages, of that device and inode, of the region's size,
 * and owned by the owner of the header file. See docs/regions.md.
 */
#include "rpal.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#define HUGE_MAGIC 0x314755484c415052ull /* "RPALHUG1" little-endian */

static uint64_t ext_check(const struct huge_ext *x)
{
    return rpal__prim_fnv1a(x, offsetof(struct huge_ext, check));
}

int rpal__huge_check_avail(uint64_t size)
{
    char dir[HUGE_DIR_MAX];
    int err = rpal__prim_huge_dir(dir, sizeof dir);
    if (err < 0)
        return err;
    uint64_t avail;
    /* Only a hint (the reservation at mmap time is the real check), but it
     * turns the common case into an error before anything is created. */
    if (rpal__prim_huge_avail(&avail) == 0 && avail < size / RPAL_HUGE_PAGE)
        return -ENOSPC;
    return 0;
}

static int ns_prefix(int nsfd, char *buf, size_t n)
{
    struct stat st;
    if (fstat(nsfd, &st) < 0)
        return -errno;
    snprintf(buf, n, "rpal.%" PRIu64 ".%" PRIu64 ".", (uint64_t)st.st_dev,
             (uint64_t)st.st_ino);
    return 0;
}

int rpal__huge_create(int nsfd, uint64_t hdr_ino, uint64_t size, unsigned mode,
                struct huge_ext *x)
{
    char dir[HUGE_DIR_MAX], prefix[64];
    int err = rpal__prim_huge_dir(dir, sizeof dir);
    if (err < 0)
        return err;
    if ((err = ns_prefix(nsfd, prefix, sizeof prefix)) < 0)
        return err;
    memset(x, 0, sizeof *x);
    int n = snprintf(x->path, sizeof x->path, "%s/%s%" PRIu64 ".%d.%" PRIu64, dir,
                     prefix, hdr_ino, (int)getpid(), rpal__prim_self_start());
    if (n < 0 || (size_t)n >= sizeof x->path)
        return -ENAMETOOLONG;
    int fd = open(x->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    struct stat st;
    /* The umask applied; the region's mode is exact. hugetlbfs sizes a file
     * without reserving pages: the creator's mmap reserves them all. */
    if (fchmod(fd, mode) < 0 || ftruncate(fd, (off_t)size) < 0 || fstat(fd, &st) < 0) {
        err = -errno;
        close(fd);
        unlink(x->path);
        return err;
    }
    x->magic = HUGE_MAGIC;
    x->page_size = RPAL_HUGE_PAGE;
    x->dev = st.st_dev;
    x->ino = st.st_ino;
    return fd;
}

void rpal__huge_seal(struct huge_ext *x, uint64_t hdr_check)
{
    x->hdr_check = hdr_check;
    x->check = ext_check(x);
}

int rpal__huge_read(int hfd, uint64_t hdr_check, struct huge_ext *x)
{
    if (pread(hfd, x, sizeof *x, HUGE_EXT_OFF) != (ssize_t)sizeof *x)
        return -EBADMSG;
    if (x->magic != HUGE_MAGIC || x->check != ext_check(x) ||
        x->hdr_check != hdr_check || x->page_size != RPAL_HUGE_PAGE ||
        x->path[0] != '/' || !memchr(x->path, 0, sizeof x->path))
        return -EBADMSG;
    return 0;
}

int rpal__huge_open(int hfd, uint64_t hdr_check, uint64_t size, uid_t owner,
              int oflags, struct huge_ext *x)
{
    int err = rpal__huge_read(hfd, hdr_check, x);
    if (err < 0)
        return err;
    int fd = open(x->path, oflags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        /* Not there: hugetlbfs is not mounted in this mount namespace, or
         * the file was removed by hand. */
        return errno == ENOENT || errno == ENOTDIR ? -ENODEV : -errno;
    struct stat st;
    struct statfs sf;
    if (fstat(fd, &st) < 0 || fstatfs(fd, &sf) < 0)
        err = -errno;
    else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_dev != x->dev ||
             (uint64_t)st.st_ino != x->ino || (uint64_t)st.st_size != size ||
             st.st_uid != owner || (uint32_t)sf.f_type != PRIM_HUGETLBFS_MAGIC ||
             (uint64_t)sf.f_bsize != RPAL_HUGE_PAGE)
        err = -EBADMSG;
    if (err < 0) {
        close(fd);
        return err;
    }
    return fd;
}

void rpal__huge_remove(const struct huge_ext *x)
{
    struct stat st;
    /* Only the file the header names, not whatever took its path since. */
    if (lstat(x->path, &st) == 0 && (uint64_t)st.st_dev == x->dev &&
        (uint64_t)st.st_ino == x->ino)
        unlink(x->path);
}

int rpal__huge_gc(int nsfd, int (*in_use)(uint64_t hdr_ino, void *arg), void *use_arg,
            void (*fn)(const char *kind, const char *name, void *arg), void *arg)
{
    char dir[HUGE_DIR_MAX], prefix[64];
    if (rpal__prim_huge_dir(dir, sizeof dir) < 0 || ns_prefix(nsfd, prefix, sizeof prefix) < 0)
        return 0; /* no hugetlbfs here: nothing of ours can be in one */
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t pl = strlen(prefix);
    int removed = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, prefix, pl))
            continue;
        uint64_t ino, start;
        int pid, used = 0;
        if (sscanf(de->d_name + pl, "%" SCNu64 ".%d.%" SCNu64 "%n", &ino, &pid, &start,
                   &used) != 3 || de->d_name[pl + (size_t)used] != 0)
            continue;
        /* A live creator may be between making the file and linking the
         * header; a region that still has its name or registry entry is
         * in use. */
        if (rpal__prim_proc_alive(pid, start) || in_use(ino, use_arg))
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) == 0) {
            removed++;
            if (fn) {
                char what[HUGE_DIR_MAX + 300];
                snprintf(what, sizeof what, "%s/%s", dir, de->d_name);
                fn("huge data", what, arg);
            }
        }
    }
    closedir(d);
    return removed;
}
