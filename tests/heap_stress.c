/* The slot allocator under load, through its internal interface: several
 * threads allocate, resize and free blocks of random sizes over a 1 GiB
 * mapping, pass blocks to each other, and check a fill pattern before every
 * free (an overlap or a stray write by the allocator shows up as a wrong
 * byte); rpal__heap_check() runs at quiet points. Then every kind of bad free,
 * out-of-memory on a small heap and recovery, a destroyed heap still bound
 * to thread caches, and the public rpal_malloc() family with and without a
 * current heap. */
#include "testlib.h"
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>

#define BIG_HEAP (1ull << 30)
#define SMALL_HEAP (4ull << 20)
#define NTHREADS 6
#define SLOTS 256
#define ROUNDS 3
#define OPS_PER_ROUND 40000
#define MAILBOX 64

struct block {
    unsigned char *p;
    size_t size;
    unsigned char fill;
};

static struct heap *heap;
static pthread_barrier_t barrier;
static pthread_mutex_t mail_lock = PTHREAD_MUTEX_INITIALIZER;
static struct block mailbox[MAILBOX];
static atomic_int failures;

static void *map(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(p != MAP_FAILED);
    return p;
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Mostly small, some up to a span, a few large up to 1 MiB. */
static size_t rnd_size(uint64_t *s)
{
    unsigned r = rnd(s) % 1000;
    if (r < 800)
        return 8 + rnd(s) % 504;
    if (r < 950)
        return 512 + rnd(s) % 32256;
    if (r < 995)
        return 32768 + rnd(s) % (224u << 10);
    return (256u << 10) + rnd(s) % (768u << 10);
}

static int all_bytes(const unsigned char *p, size_t n, unsigned char v)
{
    uint64_t w = 0x0101010101010101ull * v;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        if (x != w)
            return 0;
    }
    for (; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

static void fail(const char *what, const struct block *b)
{
    fprintf(stderr, "%s: block %p size %zu fill %02x\n", what, (void *)b->p,
            b->size, b->fill);
    atomic_fetch_add(&failures, 1);
}

static int in_heap(const void *p, size_t size, uintptr_t base, uint64_t len)
{
    uintptr_t a = (uintptr_t)p;
    return a >= base && a - base <= len && size <= len - (a - base);
}

static void take(struct block *b, void *p, size_t size, unsigned char fill)
{
    b->p = p;
    b->size = size;
    b->fill = fill;
    memset(p, fill, size);
}

static void drop(struct block *b)
{
    if (!all_bytes(b->p, b->size, b->fill))
        fail("pattern overwritten", b);
    int err = rpal__heap_free(heap, b->p);
    if (err)
        fail("free of a live block failed", b);
    b->p = NULL;
}

static uintptr_t big_base;

static void one_op(struct block *slots, uint64_t *rs)
{
    struct block *b = &slots[rnd(rs) % SLOTS];
    unsigned r = rnd(rs) % 100;
    unsigned char fill = (unsigned char)(rnd(rs) | 1);
    if (r < 80 && !b->p) {
        size_t size = rnd_size(rs);
        int zero = rnd(rs) % 4 == 0;
        unsigned char *p = zero ? rpal__heap_calloc(heap, 1, size)
                                : rpal__heap_malloc(heap, size);
        if (!p) {
            fprintf(stderr, "allocation of %zu failed\n", size);
            atomic_fetch_add(&failures, 1);
            return;
        }
        struct block nb = {p, size, 0};
        if ((uintptr_t)p % 16 || !in_heap(p, size, big_base, BIG_HEAP))
            fail("misaligned or outside the heap", &nb);
        if (zero && !all_bytes(p, size, 0))
            fail("calloc block not zeroed", &nb);
        take(b, p, size, fill);
    } else if (r < 80) {
        drop(b);
    } else if (r < 93 && b->p) {
        size_t size = rnd(rs) % 2 ? rnd_size(rs) : b->size + rnd(rs) % 64;
        if (!all_bytes(b->p, b->size, b->fill))
            fail("pattern overwritten before realloc", b);
        unsigned char *p = rpal__heap_realloc(heap, b->p, size);
        if (!p) {
            fail("realloc failed", b);
            return;
        }
        struct block nb = {p, size, b->fill};
        size_t keep = size < b->size ? size : b->size;
        if ((uintptr_t)p % 16 || !all_bytes(p, keep, b->fill))
            fail("realloc lost the contents", &nb);
        take(b, p, size, fill);
    } else if (r >= 93) {
        /* Hand our block to whichever thread takes this mailbox slot next. */
        struct block *m = &mailbox[rnd(rs) % MAILBOX];
        pthread_mutex_lock(&mail_lock);
        struct block t = *m;
        *m = *b;
        *b = t;
        pthread_mutex_unlock(&mail_lock);
    }
}

static void *worker(void *arg)
{
    uint64_t rs = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    struct block *slots = calloc(SLOTS, sizeof *slots);
    REQUIRE(slots);
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < OPS_PER_ROUND; i++)
            one_op(slots, &rs);
        /* Quiet point: the main thread checks while we hold live and
         * cached blocks. */
        pthread_barrier_wait(&barrier);
        pthread_barrier_wait(&barrier);
    }
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].p)
            drop(&slots[i]);
    free(slots);
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    return NULL;
}

static void stress(void)
{
    pthread_t th[NTHREADS];
    REQUIRE(pthread_barrier_init(&barrier, NULL, NTHREADS + 1) == 0);
    for (uintptr_t i = 0; i < NTHREADS; i++)
        REQUIRE(pthread_create(&th[i], NULL, worker, (void *)i) == 0);
    for (int round = 0; round <= ROUNDS; round++) {
        pthread_barrier_wait(&barrier);
        CHECK_ERR(rpal__heap_check(heap), 0);
        pthread_barrier_wait(&barrier);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < MAILBOX; i++)
        if (mailbox[i].p)
            drop(&mailbox[i]);
    CHECK(atomic_load(&failures) == 0);
    /* The workers' caches were flushed at their exit. */
    CHECK_ERR(rpal__heap_check(heap), 0);
    pthread_barrier_destroy(&barrier);
}

/* A thread that frees a block into its own cache and waits, so that the
 * main thread can free the cached block again. */
static void *cache_holder(void *arg)
{
    void **pp = arg;
    *pp = rpal__heap_malloc(heap, 200);
    REQUIRE(*pp);
    CHECK_ERR(rpal__heap_free(heap, *pp), 0);
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    return NULL;
}

static void bad_frees(void)
{
    char *base = (char *)big_base;
    int local;
    CHECK_ERR(rpal__heap_free(heap, NULL), 0);
    /* Outside the heap. */
    CHECK_ERR(rpal__heap_free(heap, &local), -EINVAL);
    CHECK_ERR(rpal__heap_free(heap, base - 16), -EINVAL);
    CHECK_ERR(rpal__heap_free(heap, base + BIG_HEAP), -EINVAL);
    /* A span never handed out. */
    CHECK_ERR(rpal__heap_free(heap, base + BIG_HEAP - 65536), -EINVAL);
    /* Interior and misaligned pointers into a small block. */
    char *p = rpal__heap_malloc(heap, 100);
    REQUIRE(p);
    CHECK_ERR(rpal__heap_free(heap, p + 16), -EINVAL);
    CHECK_ERR(rpal__heap_free(heap, p + 1), -EINVAL);
    /* The unused tail of a run of 448-byte blocks (146 fit in 64 KiB). */
    char *q = rpal__heap_malloc(heap, 448);
    REQUIRE(q);
    char *span = base + ((q - base) & ~(uintptr_t)65535);
    CHECK_ERR(rpal__heap_free(heap, span + 146 * 448), -EINVAL);
    CHECK_ERR(rpal__heap_free(heap, q), 0);
    /* Interior of a large block, and a large double free. */
    char *l = rpal__heap_malloc(heap, 200 << 10);
    REQUIRE(l);
    CHECK_ERR(rpal__heap_free(heap, l + 16), -EINVAL);
    CHECK_ERR(rpal__heap_free(heap, l + 65536), -EINVAL);
    CHECK_ERR(rpal__heap_free(heap, l), 0);
    CHECK_ERR(rpal__heap_free(heap, l), -EINVAL);
    CHECK_ERR(rpal__heap_free(heap, l + 65536), -EINVAL);
    /* A small double free: the block now sits in this thread's cache. */
    CHECK_ERR(rpal__heap_free(heap, p), 0);
    CHECK_ERR(rpal__heap_free(heap, p), -EINVAL);
    CHECK(rpal__heap_realloc(heap, p, 10) == NULL);
    /* A block in another thread's cache, then in the central pool after that
     * thread exits. */
    void *other = NULL;
    pthread_t th;
    REQUIRE(pthread_barrier_init(&barrier, NULL, 2) == 0);
    REQUIRE(pthread_create(&th, NULL, cache_holder, &other) == 0);
    pthread_barrier_wait(&barrier);
    CHECK_ERR(rpal__heap_free(heap, other), -EINVAL);
    CHECK_ERR(rpal__heap_check(heap), 0);
    pthread_barrier_wait(&barrier);
    pthread_join(th, NULL);
    pthread_barrier_destroy(&barrier);
    CHECK_ERR(rpal__heap_free(heap, other), -EINVAL);
    /* Many double frees of cached blocks in a row. */
    void *v[100];
    for (int i = 0; i < 100; i++)
        REQUIRE((v[i] = rpal__heap_malloc(heap, 32)) != NULL);
    for (int i = 0; i < 100; i++)
        CHECK_ERR(rpal__heap_free(heap, v[i]), 0);
    for (int i = 0; i < 100; i++)
        CHECK_ERR(rpal__heap_free(heap, v[i]), -EINVAL);
    CHECK_ERR(rpal__heap_check(heap), 0);
}

static void semantics(void)
{
    /* malloc(0): unique, freeable. */
    void *a = rpal__heap_malloc(heap, 0), *b = rpal__heap_malloc(heap, 0);
    CHECK(a && b && a != b);
    CHECK_ERR(rpal__heap_free(heap, a), 0);
    CHECK_ERR(rpal__heap_free(heap, b), 0);
    /* calloc overflow and requests beyond the heap. */
    CHECK(rpal__heap_calloc(heap, SIZE_MAX / 2, 3) == NULL);
    CHECK(rpal__heap_calloc(heap, (size_t)1 << 33, (size_t)1 << 33) == NULL);
    CHECK(rpal__heap_malloc(heap, BIG_HEAP + 1) == NULL);
    CHECK(rpal__heap_malloc(heap, SIZE_MAX) == NULL);
    CHECK(rpal__heap_malloc(heap, SIZE_MAX - 65535) == NULL);
    /* realloc in place within a class. */
    char *p = rpal__heap_malloc(heap, 100);
    REQUIRE(p);
    CHECK(rpal__heap_realloc(heap, p, 110) == p);
    CHECK(rpal__heap_realloc(heap, p, 60) == p);
    char *r = rpal__heap_realloc(heap, p, 0);
    CHECK(r != NULL);
    CHECK_ERR(rpal__heap_free(heap, r), 0);
    CHECK(rpal__heap_realloc(heap, (char *)big_base + 8, 10) == NULL);
    CHECK_ERR(rpal__heap_check(heap), 0);
}

static void small_heap(void)
{
    char *base = map(SMALL_HEAP);
    struct heap *h;
    REQUIRE(rpal__heap_create(base, SMALL_HEAP, &h) == 0);
    /* Growth in place into untouched space, then a shrink. */
    char *p = rpal__heap_malloc(h, 128 << 10);
    CHECK(p == base);
    memset(p, 0xaa, 128 << 10);
    CHECK(rpal__heap_realloc(h, p, 256 << 10) == p);
    CHECK(rpal__heap_realloc(h, p, 100 << 10) == p);
    CHECK_ERR(rpal__heap_check(h), 0);
    /* A calloc reusing written memory is cleared. */
    CHECK_ERR(rpal__heap_free(h, p), 0);
    char *z = rpal__heap_calloc(h, 1, 128 << 10);
    CHECK(z == p);
    CHECK(z && all_bytes((unsigned char *)z, 128 << 10, 0));
    CHECK_ERR(rpal__heap_free(h, z), 0);
    CHECK(rpal__heap_malloc(h, SMALL_HEAP + 1) == NULL);

    /* Fill the heap with a mix, see NULL, free everything, and find the
     * whole heap in one piece again. */
    enum { MAXB = 20000 };
    void **v = calloc(MAXB, sizeof *v);
    REQUIRE(v);
    int n = 0, nulls = 0;
    uint64_t rs = 12345;
    while (n < MAXB && nulls < 50) {
        size_t size = rnd(&rs) % 3 ? 16 + rnd(&rs) % 2000
                                   : 40000 + rnd(&rs) % 100000;
        void *x = rpal__heap_malloc(h, size);
        if (!x) {
            nulls++;
            continue;
        }
        CHECK(in_heap(x, size, (uintptr_t)base, SMALL_HEAP));
        memset(x, 0x5a, size);
        v[n++] = x;
    }
    CHECK(nulls == 50);
    CHECK(n > 100);
    CHECK(rpal__heap_malloc(h, 1 << 20) == NULL);
    CHECK_ERR(rpal__heap_check(h), 0);
    for (int i = 0; i < n; i++)
        CHECK_ERR(rpal__heap_free(h, v[i]), 0);
    CHECK_ERR(rpal__heap_check(h), 0);
    p = rpal__heap_malloc(h, SMALL_HEAP);
    CHECK(p == base);
    CHECK_ERR(rpal__heap_free(h, p), 0);
    p = rpal__heap_malloc(h, 100);
    CHECK(p != NULL);
    CHECK_ERR(rpal__heap_check(h), 0);
    CHECK_ERR(rpal__heap_free(h, p), 0);

    /* Runs reused by a class with fewer blocks: 16-byte blocks fill whole
     * runs, are freed, the runs go back (the 4 MiB request gathers them),
     * and 1 KiB blocks take the same spans. */
    n = 0;
    while (n < MAXB && (v[n] = rpal__heap_malloc(h, 16)) != NULL)
        n++;
    CHECK(n == MAXB);
    for (int i = 0; i < n; i++)
        CHECK_ERR(rpal__heap_free(h, v[i]), 0);
    p = rpal__heap_malloc(h, SMALL_HEAP);
    CHECK(p == base);
    CHECK_ERR(rpal__heap_free(h, p), 0);
    for (n = 0; n < 500; n++)
        CHECK((v[n] = rpal__heap_malloc(h, 1000)) != NULL);
    CHECK_ERR(rpal__heap_check(h), 0);
    for (int i = 0; i < n; i++)
        CHECK_ERR(rpal__heap_free(h, v[i]), 0);
    CHECK_ERR(rpal__heap_check(h), 0);
    free(v);
    rpal__heap_destroy(h);
    munmap(base, SMALL_HEAP);
}

/* One thread churning a heap of 8 MiB: runs are released and formatted
 * again for other classes, large blocks split and merge, allocations fail and
 * recover; the checker runs every few hundred operations. */
static void churn(void)
{
    enum { LEN = 8 << 20, NB = 512 };
    char *base = map(LEN);
    struct heap *h;
    REQUIRE(rpal__heap_create(base, LEN, &h) == 0);
    struct block *v = calloc(NB, sizeof *v);
    REQUIRE(v);
    uint64_t rs = 4242;
    int nulls = 0;
    for (int op = 0; op < 60000; op++) {
        struct block *b = &v[rnd(&rs) % NB];
        /* Phases favour different sizes, so that spans change hands. */
        unsigned phase = (unsigned)(op / 5000) % 3;
        size_t size = phase == 0 ? 1 + rnd(&rs) % 64
                    : phase == 1 ? 1 + rnd(&rs) % 4096
                    : 1 + rnd(&rs) % (300 << 10);
        if (!b->p) {
            unsigned char *p = rpal__heap_malloc(h, size);
            if (!p) {
                nulls++;
                continue;
            }
            take(b, p, size, (unsigned char)(op | 1));
        } else if (rnd(&rs) % 4 == 0) {
            if (!all_bytes(b->p, b->size, b->fill))
                fail("pattern overwritten before realloc", b);
            unsigned char *p = rpal__heap_realloc(h, b->p, size);
            if (!p) {
                nulls++;
                continue;
            }
            size_t keep = size < b->size ? size : b->size;
            struct block nb = {p, size, b->fill};
            if (!all_bytes(p, keep, b->fill))
                fail("realloc lost the contents", &nb);
            take(b, p, size, (unsigned char)(op | 1));
        } else {
            if (!all_bytes(b->p, b->size, b->fill))
                fail("pattern overwritten", b);
            CHECK_ERR(rpal__heap_free(h, b->p), 0);
            b->p = NULL;
        }
        if (op % 500 == 0 && rpal__heap_check(h) != 0) {
            fprintf(stderr, "rpal__heap_check failed after op %d\n", op);
            t_failures++;
            break;
        }
    }
    for (int i = 0; i < NB; i++)
        if (v[i].p)
            CHECK_ERR(rpal__heap_free(h, v[i].p), 0);
    CHECK(nulls > 0); /* the large phase overfills 8 MiB */
    CHECK(atomic_load(&failures) == 0);
    char *all = rpal__heap_malloc(h, LEN);
    CHECK(all == base);
    CHECK_ERR(rpal__heap_free(h, all), 0);
    CHECK_ERR(rpal__heap_check(h), 0);
    free(v);
    rpal__heap_destroy(h);
    munmap(base, LEN);
}

/* A heap destroyed while thread caches are bound to it; a new heap may take
 * the same memory (and the same address for its handle). */
static void *bound_thread(void *arg)
{
    struct heap *h = arg;
    void *x = rpal__heap_malloc(h, 64);
    CHECK(x != NULL);
    CHECK_ERR(rpal__heap_free(h, x), 0);
    pthread_barrier_wait(&barrier); /* cache bound to H, holding blocks */
    pthread_barrier_wait(&barrier); /* H is gone: exit runs our destructor */
    return NULL;
}

static void destroyed_heap(void)
{
    char *base = map(SMALL_HEAP);
    struct heap *h;
    REQUIRE(rpal__heap_create(base, SMALL_HEAP, &h) == 0);
    pthread_t th;
    REQUIRE(pthread_barrier_init(&barrier, NULL, 2) == 0);
    REQUIRE(pthread_create(&th, NULL, bound_thread, h) == 0);
    pthread_barrier_wait(&barrier);
    void *x = rpal__heap_malloc(h, 64);
    CHECK(x != NULL);
    CHECK_ERR(rpal__heap_free(h, x), 0);
    rpal__heap_destroy(h);
    pthread_barrier_wait(&barrier);
    pthread_join(th, NULL);
    pthread_barrier_destroy(&barrier);

    REQUIRE(rpal__heap_create(base, SMALL_HEAP, &h) == 0);
    void *y = rpal__heap_malloc(h, 64);
    CHECK(y == base); /* nothing of the old heap's cache leaked in */
    CHECK_ERR(rpal__heap_free(h, x), -EINVAL);
    CHECK_ERR(rpal__heap_free(h, y), 0);
    CHECK_ERR(rpal__heap_check(h), 0);
    rpal__heap_destroy(h);
    munmap(base, SMALL_HEAP);
}

/* Two threads free the same blocks at the same time: each block is freed
 * exactly once, the other attempt gets -EINVAL, and the heap stays sound. */
#define RACE_BLOCKS 3000
static void *race_blocks[RACE_BLOCKS];
static atomic_int race_ok, race_einval;

static void *racer(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < RACE_BLOCKS; i++) {
        int err = rpal__heap_free(heap, race_blocks[i]);
        if (err == 0)
            atomic_fetch_add(&race_ok, 1);
        else if (err == -EINVAL)
            atomic_fetch_add(&race_einval, 1);
    }
    return NULL;
}

static void double_free_race(void)
{
    uint64_t rs = 777;
    for (int i = 0; i < RACE_BLOCKS; i++) {
        size_t size = i % 50 ? 16 + rnd(&rs) % 3000 : 40000 + rnd(&rs) % 100000;
        REQUIRE((race_blocks[i] = rpal__heap_malloc(heap, size)) != NULL);
    }
    pthread_t th[2];
    REQUIRE(pthread_barrier_init(&barrier, NULL, 2) == 0);
    for (int i = 0; i < 2; i++)
        REQUIRE(pthread_create(&th[i], NULL, racer, NULL) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    CHECK(atomic_load(&race_ok) == RACE_BLOCKS);
    CHECK(atomic_load(&race_einval) == RACE_BLOCKS);
    CHECK_ERR(rpal__heap_check(heap), 0);
}

static long rss_kib(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

/* A heap the size of a default slot: nothing is touched up front, a large
 * calloc of untouched memory is not cleared by hand, and the checker walks
 * only what was handed out. */
static void slot_sized(void)
{
    uint64_t len = RPAL_DEFAULT_SLOT_SIZE;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        printf("note: no slot-sized mapping here (%s), slot-sized heap not tried\n",
               strerror(errno));
        return;
    }
    long before = rss_kib();
    struct heap *h;
    REQUIRE(rpal__heap_create(m + (1 << 20), len - (1 << 20), &h) == 0);
    /* An eighth of the slot: 8 GiB (512 MiB in a ThreadSanitizer build,
     * whose default slot is 4 GiB). */
    size_t bigsize = (size_t)(len / 8);
    char *big = rpal__heap_calloc(h, 1, bigsize);
    CHECK(big != NULL);
    char *small = rpal__heap_malloc(h, 24);
    CHECK(small != NULL);
    if (big)
        CHECK(big[0] == 0 && big[bigsize - 1] == 0);
    CHECK(rpal__heap_malloc(h, len) == NULL);
    CHECK_ERR(rpal__heap_check(h), 0);
    long grown = rss_kib() - before;
    CHECK(grown < 64 * 1024);
    CHECK_ERR(rpal__heap_free(h, big), 0);
    CHECK_ERR(rpal__heap_free(h, small), 0);
    CHECK_ERR(rpal__heap_check(h), 0);
    rpal__heap_destroy(h);
    munmap(m, len);
}

/* A forked child owns none of its parent's heaps: the current heap is gone,
 * and a heap of its own works even though this thread's cache was bound to
 * the parent's heap. */
static void forked(void)
{
    rpal__heap_set_current(heap);
    void *x = rpal__heap_malloc(heap, 64);
    CHECK(x != NULL);
    CHECK_ERR(rpal__heap_free(heap, x), 0); /* cached, bound to HEAP */
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int bad = rpal_malloc(10) != NULL;
        char *m = map(SMALL_HEAP);
        struct heap *h;
        bad |= rpal__heap_create(m, SMALL_HEAP, &h) != 0;
        void *y = rpal__heap_malloc(h, 64);
        bad |= y != m;
        bad |= rpal__heap_free(h, y) != 0;
        bad |= rpal__heap_check(h) != 0;
        rpal__heap_destroy(h);
        _exit(bad);
    }
    CHECK(t_wait(pid) == 0);
    rpal__heap_set_current(NULL);
    CHECK_ERR(rpal__heap_check(heap), 0);
}

static void public_api(void)
{
    rpal__heap_set_current(NULL);
    int local;
    CHECK(rpal_malloc(10) == NULL);
    CHECK(rpal_calloc(1, 10) == NULL);
    CHECK(rpal_realloc(NULL, 10) == NULL);
    CHECK_ERR(rpal_free(&local), -EINVAL);
    CHECK_ERR(rpal_free(NULL), -EINVAL);
    rpal__heap_set_current(heap);
    char *p = rpal_malloc(10);
    CHECK(p && in_heap(p, 10, big_base, BIG_HEAP));
    char *z = rpal_calloc(10, 10);
    CHECK(z && all_bytes((unsigned char *)z, 100, 0));
    p = rpal_realloc(p, 5000);
    CHECK(p != NULL);
    CHECK_ERR(rpal_free(p), 0);
    CHECK_ERR(rpal_free(p), -EINVAL);
    CHECK_ERR(rpal_free(z), 0);
    CHECK_ERR(rpal_free(&local), -EINVAL);
    rpal__heap_set_current(NULL);
    CHECK(rpal_malloc(10) == NULL);
}

int main(void)
{
    t_init();
    CHECK_ERR(rpal__heap_create(NULL, BIG_HEAP, &heap), -EINVAL);
    char *base = map(BIG_HEAP);
    CHECK_ERR(rpal__heap_create(base + 8, 1 << 20, &heap), -EINVAL);
    CHECK_ERR(rpal__heap_create(base, 1000, &heap), -EINVAL);
    REQUIRE(rpal__heap_create(base, BIG_HEAP, &heap) == 0);
    big_base = (uintptr_t)base;
    CHECK_ERR(rpal__heap_check(heap), 0);

    stress();
    bad_frees();
    semantics();
    small_heap();
    churn();
    destroyed_heap();
    double_free_race();
    slot_sized();
    forked();
    public_api();

    CHECK_ERR(rpal__heap_check(heap), 0);
    rpal__heap_destroy(heap);
    munmap(base, BIG_HEAP);
    printf("heap_stress: %d threads x %d ops\n", NTHREADS, ROUNDS * OPS_PER_ROUND);
    return t_done();
}
