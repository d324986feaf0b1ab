/* What a layout change and the layout report say (issue 19):
 * 1. a change that detached a sharer says so in its return value (the
 *    number detached), not only in the optional struct: after a protect to
 *    read-only that detached someone, that process may still write;
 * 2. rpal_strerror(-EOPNOTSUPP), which a change on a huge region returns,
 *    speaks of that, not only of O_TMPFILE;
 * 3. rpal_region_layout() gives a file object that has no path (a deleted
 *    file, a memfd) the path "", not "/... (deleted)".
 */
#include "testlib.h"

#include <fcntl.h>
#include <sys/mman.h>

#define NAME "report"
#define SIZE (1u << 20)
#define PAGE 4096u

int main(void)
{
    t_init();
    alarm(60);
    rpal_region *r;
    REQUIRE(rpal_region_create(NAME, SIZE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    CHECK_ERR(rpal_region_map(r, 0, 4 * PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);

    /* 1. */
    pid_t s = t_fork_sharer();
    t_stop(s);
    struct rpal_region_change c = {.timeout_ms = 200};
    CHECK_ERR(rpal_region_protect(r, 0, PAGE, PROT_READ, &c), 1);
    CHECK(c.detached == 1);
    /* It stays detached (not waited for again), and changes keep saying so
     * while it has not let go. */
    c.timeout_ms = 200;
    CHECK_ERR(rpal_region_protect(r, PAGE, PAGE, PROT_READ, &c), 1);
    CHECK(c.detached == 1);
    CHECK_ERR(rpal_region_protect(r, PAGE, PAGE, PROT_READ | PROT_WRITE, NULL), 1);
    kill(s, SIGKILL);
    CHECK(t_wait(s) == 128 + SIGKILL);
    CHECK_ERR(rpal_region_protect(r, PAGE, PAGE, PROT_READ, &c), 0);
    CHECK(c.detached == 0);

    /* 2. */
    const char *m = rpal_strerror(-EOPNOTSUPP);
    if (!strstr(m, "huge")) {
        fprintf(stderr, "rpal_strerror(-EOPNOTSUPP) is \"%s\"\n", m);
        t_failures++;
    }

    /* 3. */
    char path[64] = "/dev/shm/rpal-report-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0 && ftruncate(fd, PAGE) == 0);
    REQUIRE(unlink(path) == 0);
    CHECK_ERR(rpal_region_map(r, 0x10000, PAGE, PROT_READ, fd, 0, NULL), 0);
    close(fd);
    int mfd = memfd_create("rpal-report", MFD_CLOEXEC);
    REQUIRE(mfd >= 0 && ftruncate(mfd, PAGE) == 0);
    CHECK_ERR(rpal_region_map(r, 0x20000, PAGE, PROT_READ, mfd, 0, NULL), 0);
    close(mfd);
    struct rpal_region_object o[8];
    int n = rpal_region_layout(NAME, NULL, o, 8);
    CHECK(n == 4); /* two anonymous (read-only, read-write), two files */
    for (int i = 0; i < n && i < 8; i++)
        if (o[i].kind == RPAL_OBJ_FILE && o[i].path[0]) {
            fprintf(stderr, "the file object at %#llx has the path \"%s\"\n",
                    (unsigned long long)o[i].offset, o[i].path);
            t_failures++;
        }
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
    return t_done();
}
