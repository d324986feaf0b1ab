/* Sharers that change their own ranges of one region at the same time each
 * keep what they changed: an object one of them just mapped read-write is
 * writable, and after it protected it read-only it reads back what it
 * wrote, whatever the others did meanwhile. (The agent thread used to read
 * the generation before taking the region's lock, and could then apply an
 * older layout over a change its own process had just made: the new object
 * was PROT_NONE again. Found by `rpal chaos`.)
 */
#include "testlib.h"

#include <sys/mman.h>

#define NAME "busy"
#define PAGE 4096u
#define PAGES 8u      /* per sharer */
#define SHARERS 4 /* more than CPUs: agents get preempted */
#define ROUNDS 600

/* For US microseconds, write V into every page of [AT, AT + PAGES pages)
 * (WRITE) or check that each reads V: 0, or the signal an access raised
 * (-1: a page read something else). The others' changes reach our agent
 * meanwhile, as they would while a sharer computes. */
static int busy(uint64_t at, uint64_t v, int write, int us)
{
    sigjmp_buf jb;
    int sig = sigsetjmp(jb, 1);
    if (sig)
        return sig;
    t_fault_jb = &jb;
    int64_t end = t_now_ms() * 1000 + us;
    struct timespec ts;
    do {
        for (unsigned p = 0; p < PAGES; p++) {
            volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(at + p * PAGE);
            if (write) {
                *w = v;
            } else if (*w != v) {
                t_fault_jb = NULL;
                return -1;
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &ts);
    } while ((int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 < end);
    t_fault_jb = NULL;
    return 0;
}

static int sharer(int idx)
{
    t_catch_faults();
    rpal_region *r;
    int err = rpal_region_attach(NAME, 0, &r);
    if (err < 0) {
        fprintf(stderr, "sharer %d: attach: %s\n", idx, rpal_strerror(err));
        return 1;
    }
    uint64_t off = (uint64_t)idx * PAGES * PAGE, base = (uint64_t)(uintptr_t)rpal_region_addr(r);
    int bad = 0;
    for (int i = 0; i < ROUNDS && !bad; i++) {
        uint64_t v = ((uint64_t)idx << 32) | (unsigned)i;
        int b1 = 0, b2 = 0;
        struct rpal_region_change c = {.timeout_ms = 5000};
        if ((err = rpal_region_map(r, off, PAGES * PAGE, PROT_READ | PROT_WRITE, -1, 0, &c)) < 0 ||
            (b1 = busy(base + off, v, 1, 300)) != 0 ||
            (err = rpal_region_protect(r, off, PAGES * PAGE, PROT_READ, &c)) < 0 ||
            (b2 = busy(base + off, v, 0, 300)) != 0 ||
            (err = rpal_region_unmap(r, off, PAGES * PAGE, &c)) < 0) {
            fprintf(stderr, "sharer %d, round %d: %s (write: %d, read: %d)\n", idx, i,
                    err < 0 ? rpal_strerror(err) : "a page of our object faulted or changed",
                    b1, b2);
            bad = 1;
        }
    }
    rpal_region_detach(r);
    return bad;
}
int main(void)
{
    t_init();
    rpal_region *r;
    REQUIRE(rpal_region_create(NAME, SHARERS * PAGES * PAGE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    rpal_region_detach(r);
    pid_t kids[SHARERS];
    for (int i = 0; i < SHARERS; i++) {
        kids[i] = fork();
        REQUIRE(kids[i] >= 0);
        if (kids[i] == 0)
            _exit(sharer(i));
    }
    for (int i = 0; i < SHARERS; i++)
        CHECK(t_wait(kids[i]) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
    return t_done();
}
