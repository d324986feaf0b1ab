/* Creation races between real processes.
 *
 * 1. Eight processes, released together by a pipe barrier, all create the
 *    same name: exactly one gets 0, every other one -EEXIST, and the region
 *    that is left attaches and holds the winner's content.
 * 2. Eight processes each create a different name at the same moment, for
 *    several rounds: all succeed, the [base, base + size) ranges of all the
 *    regions are pairwise disjoint, and one process can attach all of them
 *    together (which also proves that the header pages do not collide) and
 *    write each one without clobbering another.
 * 3. The same once the address window is full up to its end, so that the
 *    creators must go round and fit into the holes that unlinked regions
 *    left between live ones. This part knows the window's size and placement
 *    granule from src/internal.h.
 */
#include "testlib.h"
#include "internal.h"

#include <stdint.h>

#define NPROC 8
#define ROUNDS 4

/* A start line: every child says it is ready on READY, then blocks reading
 * GO until the parent closes GO's write end, which wakes them all at once. */
struct barrier {
    int ready[2], go[2];
};

static void barrier_init(struct barrier *b)
{
    REQUIRE(pipe(b->ready) == 0);
    REQUIRE(pipe(b->go) == 0);
}

/* In the child. */
static void barrier_wait(struct barrier *b)
{
    char c = 'r';
    close(b->ready[0]);
    close(b->go[1]);
    if (write(b->ready[1], &c, 1) != 1)
        _exit(3);
    close(b->ready[1]);
    while (read(b->go[0], &c, 1) < 0 && errno == EINTR)
        ;
    close(b->go[0]);
}

/* In the parent, once every child was forked. */
static void barrier_release(struct barrier *b, int n)
{
    char c;
    close(b->ready[1]);
    close(b->go[0]);
    for (int i = 0; i < n; i++) {
        ssize_t k;
        while ((k = read(b->ready[0], &c, 1)) < 0 && errno == EINTR)
            ;
        REQUIRE(k == 1);
    }
    close(b->ready[0]);
    close(b->go[1]); /* everybody's read() returns 0 now */
}

struct report {
    int idx;
    int err;
    uint64_t base, size;
};

static int read_full(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static uint64_t pattern(int idx, size_t word) { return ((uint64_t)idx << 48) ^ (word * 0x9e3779b97f4a7c15ull); }

/* ---- 1: many creators, one name ------------------------------------------ */

static void same_name(const char *name, int round)
{
    struct barrier b;
    int res[2];
    barrier_init(&b);
    REQUIRE(pipe(res) == 0);
    pid_t pids[NPROC];
    const size_t size = 256 * 1024;

    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        REQUIRE(pids[i] >= 0);
        if (pids[i] == 0) {
            close(res[0]);
            barrier_wait(&b);
            rpal_region *r = NULL;
            struct report rep = {i, 0, 0, 0};
            rep.err = rpal_region_create(name, size, 0600, 0, &r);
            if (rep.err == 0) {
                /* Fill the region before telling anyone we won. */
                uint64_t *w = rpal_region_addr(r);
                for (size_t k = 0; k < size / sizeof *w; k++)
                    w[k] = pattern(i + 1, k);
                rep.base = (uint64_t)(uintptr_t)rpal_region_addr(r);
                rep.size = rpal_region_size(r);
                rpal_region_detach(r);
            }
            if (write(res[1], &rep, sizeof rep) != (ssize_t)sizeof rep)
                _exit(3);
            _exit(0);
        }
    }
    close(res[1]);
    barrier_release(&b, NPROC);

    int winners = 0, eexist = 0, winner = -1;
    uint64_t wbase = 0;
    for (int i = 0; i < NPROC; i++) {
        struct report rep;
        REQUIRE(read_full(res[0], &rep, sizeof rep) == 0);
        if (rep.err == 0) {
            winners++;
            winner = rep.idx;
            wbase = rep.base;
            CHECK(rep.size == size);
        } else if (rep.err == -EEXIST) {
            eexist++;
        } else {
            fprintf(stderr, "round %d: creator %d got %d (%s)\n", round,
                    rep.idx, rep.err, rpal_strerror(rep.err));
            t_failures++;
        }
    }
    close(res[0]);
    for (int i = 0; i < NPROC; i++)
        CHECK(t_wait(pids[i]) == 0);
    if (winners != 1 || eexist != NPROC - 1) {
        fprintf(stderr, "round %d on %s: %d winners, %d -EEXIST, want 1 and %d\n",
                round, name, winners, eexist, NPROC - 1);
        t_failures++;
    }
    if (winners != 1)
        return;

    rpal_region *r;
    int err = rpal_region_attach(name, 0, &r);
    CHECK_ERR(err, 0);
    if (err == 0) {
        CHECK((uint64_t)(uintptr_t)rpal_region_addr(r) == wbase);
        CHECK(rpal_region_size(r) == size);
        const uint64_t *w = rpal_region_addr(r);
        size_t bad = 0;
        for (size_t k = 0; k < size / sizeof *w; k++)
            bad += w[k] != pattern(winner + 1, k);
        if (bad) {
            fprintf(stderr, "round %d: %zu words differ from the winner's content\n",
                    round, bad);
            t_failures++;
        }
        CHECK(rpal_region_detach(r) == 0);
    }
    struct rpal_region_info info;
    CHECK_ERR(rpal_region_stat(name, &info), 0);
    CHECK(info.base == wbase && info.size == size);
    /* The region stays: it holds the lowest addresses of the window, which
     * the creators of part 3 must step over. */
}

/* ---- 2 and 3: many creators, many names ---------------------------------- */

/* Create NAMES[i] of SIZES[i] bytes, each in its own process, all released
 * at once. Returns how many failed (each is reported). */
static int race_create(char (*names)[64], const size_t *sizes, int n)
{
    struct barrier b;
    int res[2], failed = 0;
    barrier_init(&b);
    REQUIRE(pipe(res) == 0);
    pid_t pids[NPROC];
    REQUIRE(n <= NPROC);
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        REQUIRE(pids[i] >= 0);
        if (pids[i] == 0) {
            close(res[0]);
            barrier_wait(&b);
            rpal_region *r = NULL;
            struct report rep = {i, 0, 0, 0};
            rep.err = rpal_region_create(names[i], sizes[i], 0600, 0, &r);
            if (rep.err == 0) {
                rep.base = (uint64_t)(uintptr_t)rpal_region_addr(r);
                rep.size = rpal_region_size(r);
                rpal_region_detach(r);
            }
            if (write(res[1], &rep, sizeof rep) != (ssize_t)sizeof rep)
                _exit(3);
            _exit(0);
        }
    }
    close(res[1]);
    barrier_release(&b, n);
    for (int i = 0; i < n; i++) {
        struct report rep;
        REQUIRE(read_full(res[0], &rep, sizeof rep) == 0);
        REQUIRE(rep.idx >= 0 && rep.idx < n);
        if (rep.err != 0) {
            fprintf(stderr, "create %s (%zu bytes): %d (%s)\n", names[rep.idx],
                    sizes[rep.idx], rep.err, rpal_strerror(rep.err));
            failed++;
            continue;
        }
        CHECK(rep.size == sizes[rep.idx]);
        struct rpal_region_info info;
        CHECK_ERR(rpal_region_stat(names[rep.idx], &info), 0);
        CHECK(info.base == rep.base && info.size == rep.size);
    }
    close(res[0]);
    for (int i = 0; i < n; i++)
        CHECK(t_wait(pids[i]) == 0);
    t_failures += failed;
    return failed;
}

#define MAXREG 128

struct all {
    int n;
    char name[MAXREG][RPAL_NAME_MAX + 1];
    uint64_t base[MAXREG], size[MAXREG];
};

static int add(const struct rpal_region_info *info, void *arg)
{
    struct all *a = arg;
    if (a->n == MAXREG)
        return -ENOBUFS;
    snprintf(a->name[a->n], sizeof a->name[0], "%s", info->name);
    a->base[a->n] = info->base;
    a->size[a->n] = info->size;
    a->n++;
    return 0;
}

/* Every region of the namespace: pairwise disjoint, and all attachable at
 * once in this process, each one's memory its own. Returns the count. */
static int check_all(struct all *a, const char *when)
{
    a->n = 0;
    CHECK_ERR(rpal_region_foreach(add, a), 0);
    for (int i = 0; i < a->n; i++)
        for (int j = i + 1; j < a->n; j++)
            if (a->base[i] < a->base[j] + a->size[j] &&
                a->base[j] < a->base[i] + a->size[i]) {
                fprintf(stderr, "%s: %s [0x%llx, +0x%llx) overlaps %s [0x%llx, +0x%llx)\n",
                        when, a->name[i], (unsigned long long)a->base[i],
                        (unsigned long long)a->size[i], a->name[j],
                        (unsigned long long)a->base[j], (unsigned long long)a->size[j]);
                t_failures++;
            }

    static rpal_region *r[MAXREG];
    for (int i = 0; i < a->n; i++) {
        int err = rpal_region_attach(a->name[i], 0, &r[i]);
        if (err) {
            fprintf(stderr, "%s: attach %s with the others: %d (%s)\n", when,
                    a->name[i], err, rpal_strerror(err));
            t_failures++;
            r[i] = NULL;
            continue;
        }
        CHECK((uint64_t)(uintptr_t)rpal_region_addr(r[i]) == a->base[i]);
    }
    for (int i = 0; i < a->n; i++)
        if (r[i]) {
            uint64_t *w = rpal_region_addr(r[i]);
            size_t last = rpal_region_size(r[i]) / sizeof *w - 1;
            w[0] = pattern(i + 100, 0);
            w[last] = pattern(i + 100, last);
        }
    for (int i = 0; i < a->n; i++)
        if (r[i]) {
            uint64_t *w = rpal_region_addr(r[i]);
            size_t last = rpal_region_size(r[i]) / sizeof *w - 1;
            if (w[0] != pattern(i + 100, 0) || w[last] != pattern(i + 100, last)) {
                fprintf(stderr, "%s: %s was written through another region\n",
                        when, a->name[i]);
                t_failures++;
            }
            CHECK(rpal_region_detach(r[i]) == 0);
        }
    return a->n;
}

/* Sizes below, at and above the 2 MiB placement granule. */
static size_t size_of(int round, int i)
{
    static const size_t sizes[] = {4096, 64 * 1024, 2 << 20, (2 << 20) + 4096,
                                   (5 << 20) + 8192, 12288, 1 << 20, 4 << 20};
    return sizes[(i + round) % 8];
}

static struct all all;

static void many_names(void)
{
    char names[ROUNDS][NPROC][64];
    size_t sizes[NPROC];
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < NPROC; i++) {
            /* Half of them in a subdirectory that all of a round create. */
            snprintf(names[round][i], sizeof names[round][i],
                     i % 2 ? "many/r%d/n%d" : "many-r%d-n%d", round, i);
            sizes[i] = size_of(round, i);
        }
        race_create(names[round], sizes, NPROC);
    }
    int n = check_all(&all, "after the rounds");
    CHECK(n == ROUNDS + ROUNDS * NPROC);

    /* 3: fill the window up to its end with one huge region, so that what is
     * left at the end is too small for anything... */
    const uint64_t g = RPAL_REGION_GRANULE;
    const uint64_t hi = RPAL_WINDOW_BASE + RPAL_REGION_WINDOW_SIZE;
    uint64_t top = 0;
    for (int i = 0; i < all.n; i++) {
        uint64_t end = all.base[i] + (all.size[i] + g - 1) / g * g;
        if (end > top)
            top = end;
    }
    rpal_region *big;
    int err = rpal_region_create("wrap/big", hi - top - 2 * g, 0600, 0, &big);
    CHECK_ERR(err, 0);
    if (err == 0) {
        printf("wrap/big: %llu bytes at %p\n",
               (unsigned long long)rpal_region_size(big), rpal_region_addr(big));
        CHECK(rpal_region_detach(big) == 0);
    }
    /* ... and make holes between live regions. */
    for (int round = 0; round < ROUNDS; round++)
        for (int i = 1; i < NPROC; i += 2)
            CHECK(rpal_region_unlink(names[round][i]) == 0);

    /* Now the creators must go round to the start of the window, where the
     * regions of part 1 and the even ones of part 2 still live. */
    char wnames[NPROC][64];
    for (int i = 0; i < NPROC; i++) {
        snprintf(wnames[i], sizeof wnames[i], i % 2 ? "wrap/n%d" : "wrap-n%d", i);
        sizes[i] = i % 3 ? 4096 * (size_t)(i + 1) : (size_t)g;
    }
    race_create(wnames, sizes, NPROC);
    n = check_all(&all, "after going round");
    CHECK(n == ROUNDS + ROUNDS * NPROC / 2 + 1 + NPROC);

    for (int i = 0; i < all.n; i++)
        CHECK(rpal_region_unlink(all.name[i]) == 0);
    all.n = 0;
    CHECK_ERR(rpal_region_foreach(add, &all), 0);
    CHECK(all.n == 0);
}

int main(void)
{
    t_init();
    for (int round = 0; round < ROUNDS; round++) {
        char name[64];
        /* A top-level name, and one whose directories the racers create. */
        snprintf(name, sizeof name, round % 2 ? "race/r%d/same" : "same-%d", round);
        same_name(name, round);
    }
    many_names();
    return t_done();
}
