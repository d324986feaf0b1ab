/* A sharer that a change detached (it was stopped) must never write into
 * an object mapped after that change (issue 19, the first two
 * reproductions).
 *
 * In an empty region A (this process) maps a one-page anonymous object Y.
 * Sharer W, attached by name, has four threads writing counters into Y
 * without pause. W is stopped; A unmaps Y with a 100 ms timeout (W is
 * detached) and maps a new anonymous object at the same place, which reads
 * as zeros. W runs again after the new map (even rounds) or just before it
 * (odd rounds): its threads go on writing until its agent thread unmaps
 * the region (W's next write faults, and W exits 0). The new object must
 * still read as zeros, in A and in B, a live sharer. Before the fix both
 * objects were the same pages of the region file, and W's counters showed
 * up in the new one.
 *
 * Usage: region_detached_write [ROUNDS] (default 4)
 */
#include "testlib.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define NAME "detw"
#define SIZE (1u << 20)
#define PAGE 4096u
#define Y    0x10000u
#define NWRITERS 4

static uint64_t base;
static rpal_region *g_r; /* this process's handle */

/* 1 if the page at OFF reads as zeros here. */
static int page_zero(uint64_t off)
{
    const volatile uint64_t *p = (const volatile uint64_t *)(uintptr_t)(base + off);
    for (unsigned i = 0; i < PAGE / 8; i++)
        if (p[i])
            return 0;
    return 1;
}

/* ---- W: writes into Y until its region goes away ---- */

static void *writer(void *arg)
{
    _Atomic uint64_t *p = (_Atomic uint64_t *)(uintptr_t)(base + Y + 64 * (uintptr_t)arg);
    for (uint64_t v = 1;; v++)
        atomic_store_explicit(p, v, memory_order_relaxed);
    return NULL;
}

/* The region was unmapped under the writers: that is the end. */
static void on_fault(int sig)
{
    (void)sig;
    _exit(0);
}

static int w_main(int up)
{
    rpal_region *r;
    if (rpal_region_attach(NAME, 0, &r) != 0)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fault;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    pthread_t th;
    for (uintptr_t i = 0; i < NWRITERS; i++)
        if (pthread_create(&th, NULL, writer, (void *)i) != 0)
            return 3;
    t_put(up, 'r');
    for (;;)
        pause();
}

/* ---- B: a live sharer that answers "does Y read as zeros?" ---- */

static int b_main(int up, int down)
{
    rpal_region *r;
    if (rpal_region_attach(NAME, 0, &r) != 0)
        return 2;
    t_put(up, 'r');
    for (char c; (c = t_get(down)) == 'z';)
        t_put(up, page_zero(Y) ? 'Z' : 'x');
    rpal_region_detach(r);
    return 0;
}

static pid_t spawn(int role, int *up, int *down)
{
    int u[2], d[2];
    REQUIRE(pipe(u) == 0 && pipe(d) == 0);
    pid_t parent = getpid(), pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        t_die_with_parent(parent);
        close(u[0]);
        close(d[1]);
        rpal_region_detach(g_r); /* attach by name, as an unrelated process */
        _exit(role == 'w' ? w_main(u[1]) : b_main(u[1], d[0]));
    }
    close(u[1]);
    close(d[0]);
    *up = u[0];
    *down = d[1];
    REQUIRE(t_get(*up) == 'r');
    return pid;
}

static void round_once(int round)
{
    rpal_region *r;
    REQUIRE(rpal_region_create(NAME, SIZE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    g_r = r;
    base = (uint64_t)(uintptr_t)rpal_region_addr(r);
    CHECK_ERR(rpal_region_map(r, Y, PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);
    int wup, wdown, bup, bdown;
    pid_t w = spawn('w', &wup, &wdown);
    pid_t b = spawn('b', &bup, &bdown);
    const volatile uint64_t *y = (const volatile uint64_t *)(uintptr_t)(base + Y);
    for (int i = 0; i < 5000 && !y[0]; i++)
        usleep(1000);
    REQUIRE(y[0] != 0); /* W writes */

    t_stop(w);
    struct rpal_region_change chg = {.timeout_ms = 100};
    int err = rpal_region_unmap(r, Y, PAGE, &chg);
    CHECK(err >= 0);
    CHECK(chg.detached == 1 && chg.applied == 1);
    /* W runs again, before or after the new map, and writes until its
     * agent unmaps the region. */
    int resume_first = round % 2;
    if (resume_first)
        REQUIRE(kill(w, SIGCONT) == 0);
    /* W may still count as detached (it has not let go yet): >= 0. */
    err = rpal_region_map(r, Y, PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL);
    CHECK(err >= 0);
    if (!resume_first) {
        CHECK(page_zero(Y));
        REQUIRE(kill(w, SIGCONT) == 0);
    }
    CHECK(t_wait(w) == 0);
    for (unsigned i = 0; i < PAGE / 8; i++)
        if (y[i]) {
            fprintf(stderr, "round %d (%s): the new object holds %#llx at byte %u\n", round,
                    resume_first ? "resumed before the map" : "resumed after the map",
                    (unsigned long long)y[i], i * 8);
            t_failures++;
            break;
        }
    t_put(bdown, 'z');
    CHECK(t_get(bup) == 'Z');
    t_put(bdown, 'q');
    CHECK(t_wait(b) == 0);
    close(wup);
    close(wdown);
    close(bup);
    close(bdown);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
}

int main(int argc, char **argv)
{
    t_init();
    int rounds = argc > 1 ? atoi(argv[1]) : 4;
    alarm(30 + 10 * rounds);
    for (int i = 0; i < rounds; i++)
        round_once(i);
    return t_done();
}
