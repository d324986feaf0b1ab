/* The change lock's turnstile (a PI futex word in the region's control
 * page) recovers from owners that will never let go: a writer of the region
 * (or a changer killed with nobody waiting, or a thread id reused since)
 * can leave it naming
 * 1. a thread that is gone: the next change moves to a fresh word at once;
 * 2. a gone thread that the control page names as the holder, of a process
 *    that is gone: the same, without asking the kernel;
 * 3. a live thread that never took it (an unrelated process): a change
 *    waits until its deadline and fails with -ETIMEDOUT, and the next one
 *    uses a fresh word.
 * Every change after that works, and the layout is what it should be.
 */
#include "testlib.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/mman.h>

#include "internal.h" /* struct lay_ctl: where the turnstile is */

#define NAME "turn"
#define SIZE (1u << 20)
#define PAGE 4096u

static struct lay_ctl *ctl; /* the control page, mapped writable */

static pid_t gone_pid(void)
{
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0)
        _exit(0);
    REQUIRE(t_wait(p) == 0);
    return p;
}

static void put_owner(uint32_t tid)
{
    atomic_store(&ctl->turn[ctl->turn_cur % LAY_TURNS], tid);
}

int main(void)
{
    t_init();
    alarm(60);
    rpal_region *r;
    REQUIRE(rpal_region_create(NAME, SIZE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    CHECK_ERR(rpal_region_map(r, 0, 4 * PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", rpal_ns_dir(), NAME);
    int fd = open(path, O_RDWR);
    REQUIRE(fd >= 0);
    uint8_t *hdr = mmap(NULL, REGION_HDR_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    REQUIRE(hdr != MAP_FAILED);
    close(fd);
    ctl = (struct lay_ctl *)(void *)(hdr + LAY_CTL_OFF);
    REQUIRE(ctl->magic == LAY_MAGIC);

    /* 1. */
    uint32_t cur = ctl->turn_cur;
    put_owner((uint32_t)gone_pid());
    int64_t t0 = t_now_ms();
    CHECK_ERR(rpal_region_protect(r, 0, PAGE, PROT_READ, NULL), 0);
    CHECK(t_now_ms() - t0 < 3000);
    CHECK(ctl->turn_cur != cur);

    /* 2. */
    cur = ctl->turn_cur;
    pid_t g = gone_pid();
    put_owner((uint32_t)g);
    ctl->own_pid = g;
    ctl->own_tid = g;
    CHECK_ERR(rpal_region_protect(r, PAGE, PAGE, PROT_READ, NULL), 0);
    CHECK(ctl->turn_cur != cur);

    /* 3. */
    int u[2];
    REQUIRE(pipe(u) == 0);
    pid_t live = fork();
    REQUIRE(live >= 0);
    if (live == 0) {
        close(u[1]);
        t_get(u[0]);
        _exit(0);
    }
    close(u[0]);
    cur = ctl->turn_cur;
    put_owner((uint32_t)live);
    struct rpal_region_change c = {.timeout_ms = 100};
    t0 = t_now_ms();
    CHECK_ERR(rpal_region_protect(r, 2 * PAGE, PAGE, PROT_READ, &c), -ETIMEDOUT);
    CHECK(t_now_ms() - t0 >= 5000); /* 5 s plus the timeout */
    CHECK(ctl->turn_cur != cur);
    CHECK_ERR(rpal_region_protect(r, 2 * PAGE, PAGE, PROT_READ, NULL), 0);
    close(u[1]);
    CHECK(t_wait(live) == 0);

    /* Every change since went through: pages 0-2 read-only, 3 read-write. */
    struct rpal_region_object o[4];
    CHECK(rpal_region_layout(NAME, NULL, o, 4) == 2);
    CHECK(o[0].offset == 0 && o[0].length == 3 * PAGE && o[0].prot == PROT_READ);
    CHECK(o[1].offset == 3 * PAGE && o[1].prot == (PROT_READ | PROT_WRITE));
    munmap(hdr, REGION_HDR_MAP);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
    return t_done();
}
