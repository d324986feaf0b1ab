/* A changer killed in the middle of its change leaves nothing behind: the
 * next anonymous object at the same place reads as zeros, and the old
 * object's memory is given back (issue 19, third reproduction).
 *
 * In an empty region A (this process) maps four anonymous pages Z and
 * fills them. Sharer S is stopped, so that changer Q, another process,
 * calls rpal_region_unmap(Z) with a 3 s timeout and waits for S; Q is
 * killed 300 ms into that wait (its unmap is published, its hole not yet
 * punched). Then:
 *   round 0: S is killed too, and A maps a new object at Z afterwards;
 *   round 1: A's map is already waiting for the change lock when Q dies,
 *            and S stays stopped (A's change detaches it, and once S has
 *            run again and let go, a later change gives its memory back).
 * Either way the new object reads as zeros, and the region's files hold no
 * more memory than before Z was filled. Before the fix, only the changer
 * punched the hole, at the end of its call: the new object read the old
 * data, and the pages stayed allocated until the region was unlinked.
 *
 * Usage: region_changer_killed [ROUNDS] (default 2)
 */
#include "testlib.h"

#include <pthread.h>
#include <sys/mman.h>

#define NAME  "killed"
#define SIZE  (1u << 20)
#define PAGE  4096u
#define Z     0x20000u
#define ZLEN  (4 * PAGE)
#define OTHER 0x40000u /* a page for the changes that follow */

static rpal_region *r;
static uint64_t base;

static int z_zero(void)
{
    const volatile uint8_t *p = (const volatile uint8_t *)(uintptr_t)(base + Z);
    for (unsigned i = 0; i < ZLEN; i++)
        if (p[i]) {
            fprintf(stderr, "the new object at Z reads %#x at byte %u\n", p[i], i);
            return 0;
        }
    return 1;
}

/* A child that shares the region (inherited through fork, registered
 * before fork returns in it: it answers once fork's handlers are done and
 * hold nothing any more); Q also changes it when told. */
static pid_t spawn(int changer, int *down)
{
    int d[2], u[2];
    REQUIRE(pipe(d) == 0 && pipe(u) == 0);
    pid_t parent = getpid(), pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        t_die_with_parent(parent);
        close(d[1]);
        close(u[0]);
        t_put(u[1], 'r');
        if (changer && t_get(d[0]) == 'u') {
            struct rpal_region_change c = {.timeout_ms = 3000};
            rpal_region_unmap(r, Z, ZLEN, &c);
        }
        t_get(d[0]);
        _exit(0);
    }
    close(d[0]);
    close(u[1]);
    REQUIRE(t_get(u[0]) == 'r');
    close(u[0]);
    *down = d[1];
    return pid;
}

struct waiter {
    pthread_t th;
    int err;
    struct rpal_region_change chg;
};

static void *map_z(void *arg)
{
    struct waiter *w = arg;
    w->chg.timeout_ms = 300;
    w->err = rpal_region_map(r, Z, ZLEN, PROT_READ | PROT_WRITE, -1, 0, &w->chg);
    return NULL;
}

static void round_once(int round)
{
    REQUIRE(rpal_region_create(NAME, SIZE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    base = (uint64_t)(uintptr_t)rpal_region_addr(r);
    CHECK_ERR(rpal_region_map(r, OTHER, PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);
    CHECK_ERR(rpal_region_map(r, Z, ZLEN, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);
    long long before = t_region_bytes(NAME);
    memset((void *)(uintptr_t)(base + Z), 0xab, ZLEN);
    CHECK(t_region_bytes(NAME) >= before + ZLEN);

    int sdown, qdown;
    pid_t s = spawn(0, &sdown), q = spawn(1, &qdown);
    t_stop(s);
    uint32_t g = t_region_gen(NAME);
    t_put(qdown, 'u');
    for (int i = 0; i < 2000 && t_region_gen(NAME) == g; i++)
        usleep(1000);
    REQUIRE(t_region_gen(NAME) != g); /* Q's unmap is published; Q waits for S */

    struct waiter w = {0};
    if (round % 2) {
        REQUIRE(pthread_create(&w.th, NULL, map_z, &w) == 0);
        usleep(200000); /* A waits for the change lock */
    } else {
        usleep(300000);
    }
    REQUIRE(kill(q, SIGKILL) == 0);
    CHECK(t_wait(q) == 128 + SIGKILL);
    if (round % 2) {
        pthread_join(w.th, NULL);
        CHECK(w.err >= 0 && w.chg.detached == 1); /* S */
    } else {
        REQUIRE(kill(s, SIGKILL) == 0);
        CHECK(t_wait(s) == 128 + SIGKILL);
        map_z(&w);
        CHECK(w.err == 0 && w.chg.detached == 0 && w.chg.dead == 0);
    }
    if (w.err < 0)
        fprintf(stderr, "round %d: map: %s\n", round, rpal_strerror(w.err));
    if (round % 2) {
        /* S runs again and lets go; a later change frees what it held. */
        REQUIRE(kill(s, SIGCONT) == 0);
        struct rpal_region_change c = {.timeout_ms = 1000};
        for (int i = 0; i < 200; i++) {
            c.timeout_ms = 1000;
            CHECK(rpal_region_protect(r, OTHER, PAGE, i % 2 ? PROT_READ | PROT_WRITE : PROT_READ,
                                      &c) >= 0);
            if (c.detached == 0)
                break;
            usleep(10000);
        }
        CHECK(c.detached == 0);
        t_put(sdown, 'q');
        CHECK(t_wait(s) == 0);
    }
    /* Measured before Z is read: a read fault allocates a tmpfs page. */
    long long after = t_region_bytes(NAME);
    if (after > before) {
        fprintf(stderr, "round %d: the region's files hold %lld bytes, %lld before Z was filled\n",
                round, after, before);
        t_failures++;
    }
    CHECK(z_zero());
    close(sdown);
    close(qdown);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
}

int main(int argc, char **argv)
{
    t_init();
    int rounds = argc > 1 ? atoi(argv[1]) : 2;
    alarm(30 + 10 * rounds);
    for (int i = 0; i < rounds; i++)
        round_once(i);
    return t_done();
}
