/* heap: the allocator of a member's own slot.
 *
 * The slot is cut into 64 KiB spans. A run of spans is either free, one large
 * block, or a small run that holds blocks of one size class. Blocks reach the
 * application through per-thread caches (stacks of block handles); the caches
 * refill from and flush to per-class central pools under a lock, and those
 * take runs from the page heap (bump pointer plus size-binned free runs).
 *
 * All metadata lives in private memory, never in the slot: a stray write by
 * the application into its own slot cannot corrupt the allocator, peers (who
 * map the slot read-only) see nothing but the blocks, and the slot is touched
 * only by the application and by calloc. Every block has a live bit; freeing
 * clears it with a compare-and-swap, so a pointer that is not the start of a
 * live block (outside, interior, never allocated, already freed, sitting in
 * some thread's cache) is refused with -EINVAL before anything changes. See
 * docs/heap.md for the design, the invariants and the figures.
 */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Live bits use rpal_fetch_or_relaxed: relaxed, because the handing over
 * of a block between threads is ordered by the class locks (see
 * central_take/central_put); the bit only records ownership. */

/* ---- geometry ------------------------------------------------------------ */

#define SPAN_SHIFT 16
#define SPAN ((uint64_t)1 << SPAN_SHIFT)
#define MAX_SMALL 32768u
#define NCLASS 40
#define BI_BITS 12                      /* block index inside a small run */
#define MAX_BLOCKS (1u << BI_BITS)      /* 64 KiB of 16-byte blocks */
#define LIVE_WORDS (MAX_BLOCKS / 32)    /* 32 block bits + 32 epoch bits */
#define AVAIL_WORDS (MAX_BLOCKS / 64)
#define MAX_SPANS ((1u << 29) - 1)      /* the 29-bit count field of info */
#define NIL UINT32_MAX
#define TC_CAP 64                       /* most blocks a thread caches per class */
#define TC_BYTES (128u << 10)           /* ... and most bytes */
#define NBINS 56                        /* free-run bins: exact to 32, then log2 */
#define INV_SHIFT 40

/* A size class. INV is ceil(2^40 / size): (offset * INV) >> 40 is the exact
 * block index for every offset below 2^40 / size, and runs are at most
 * 2 spans (2^17) of blocks of at most 2^15 bytes. CAP is the thread-cache
 * capacity (a refill takes half of it): 64 blocks, and at most 128 KiB, so
 * that an idle thread does not sit on much memory. */
struct sclass {
    uint32_t size, nspans, nblocks, cap;
    uint64_t inv;
};

#define TCAP(s) ((TC_BYTES / (s)) > TC_CAP ? TC_CAP : (TC_BYTES / (s)))
#define CL(s, n) {(s), (n), (uint32_t)((n) * SPAN / (s)), TCAP(s), \
                  (((uint64_t)1 << INV_SHIFT) + (s) - 1) / (s)}

/* 16-byte steps to 128, then four classes per doubling, so that no block
 * wastes more than a quarter of itself. A run is one span unless that wastes
 * more than an eighth of it (24 KiB blocks: two spans hold five). */
static const struct sclass classes[NCLASS] = {
    CL(16, 1),    CL(32, 1),    CL(48, 1),    CL(64, 1),
    CL(80, 1),    CL(96, 1),    CL(112, 1),   CL(128, 1),
    CL(160, 1),   CL(192, 1),   CL(224, 1),   CL(256, 1),
    CL(320, 1),   CL(384, 1),   CL(448, 1),   CL(512, 1),
    CL(640, 1),   CL(768, 1),   CL(896, 1),   CL(1024, 1),
    CL(1280, 1),  CL(1536, 1),  CL(1792, 1),  CL(2048, 1),
    CL(2560, 1),  CL(3072, 1),  CL(3584, 1),  CL(4096, 1),
    CL(5120, 1),  CL(6144, 1),  CL(7168, 1),  CL(8192, 1),
    CL(10240, 1), CL(12288, 1), CL(14336, 1), CL(16384, 1),
    CL(20480, 1), CL(24576, 2), CL(28672, 1), CL(32768, 1),
};
#define MAX_RUN_SPANS 2

static inline unsigned class_of(size_t size)
{
    if (size <= 128)
        return size ? (unsigned)((size - 1) >> 4) : 0;
    unsigned b = 63 - (unsigned)__builtin_clzll((unsigned long long)(size - 1));
    return 8 + (b - 7) * 4 + (unsigned)(((size - 1) >> (b - 2)) & 3);
}

/* ---- per-span information ------------------------------------------------ */

/* info[i] describes span i; the lock-free free path reads it, so it is one
 * atomic word: kind in bits 0-2, a 29-bit value in bits 3-31 (the class of a
 * small head, the length of a large or free run, a tail's distance to its
 * head), the epoch of a small head in bits 32-63.
 *
 * SMALL and SMALL_TAIL entries and LARGE heads are always exact. The head
 * and last span of every run are exact. Interior spans of large and free
 * runs keep stale values of the other kinds (rewriting them would cost time
 * proportional to the run), which the free path refuses. */
enum {
    K_NONE,
    K_SMALL,
    K_SMALL_TAIL,
    K_LARGE,
    K_LARGE_TAIL,
    K_FREE,
    K_FREE_TAIL,
};

static inline uint64_t mkinfo(unsigned kind, uint32_t val, uint32_t epoch)
{
    return (uint64_t)kind | (uint64_t)val << 3 | (uint64_t)epoch << 32;
}
static inline unsigned info_kind(uint64_t v) { return (unsigned)(v & 7); }
static inline uint32_t info_val(uint64_t v)
{
    return (uint32_t)(v >> 3) & MAX_SPANS;
}
static inline uint32_t info_epoch(uint64_t v) { return (uint32_t)(v >> 32); }

/* Private metadata of a run, indexed by its head span. live[] is read and
 * written without a lock (atomically); everything else belongs to the class
 * lock while the run is small and to the page lock while it is free.
 *
 * A live word holds 32 block bits (1: the application owns the block) and,
 * above them, the epoch of the run's format: a free that raced with the run
 * being released and formatted again sees a new epoch and is refused, instead
 * of clearing a bit of the new layout. */
struct meta {
    uint32_t next, prev;   /* class partial list (small) or free bin (free) */
    uint32_t navail;       /* small: blocks in the run's own pool */
    uint32_t pad;
    uint64_t avail[AVAIL_WORDS]; /* small: 1 = in the run's pool */
    _Atomic uint64_t live[LIVE_WORDS];
};

/* ---- the heap ------------------------------------------------------------ */

struct central {
    _Alignas(64) pthread_mutex_t lock;
    uint32_t partial;      /* head of the runs with avail blocks */
    uint32_t nruns;        /* runs formatted for this class */
};

/* Per-thread cache, one stack of handles (head span << 12 | block index) per
 * class. Only its thread changes it; rpal__heap_check reads it, hence atomics
 * (relaxed, which compile to plain moves). */
struct tbin {
    _Atomic uint32_t n;
    uint32_t pad;
    _Atomic uint64_t hd[TC_CAP];
};

struct tcache {
    uint64_t gen;          /* the heap's generation, 0 when unbound */
    struct heap *heap;
    struct tcache *next, *prev; /* in heap->tcs, under heap->tc_lock */
    struct tbin bin[NCLASS];
};

struct heap {
    /* Read-only after rpal__heap_create; all the fast paths need. */
    uintptr_t base;
    uint64_t len;
    uint64_t gen;          /* unique: a dead heap's cache never matches */
    _Atomic uint64_t *info;
    struct meta *meta;
    uint32_t nspans;
    size_t info_bytes, meta_bytes;
    size_t meta_open;      /* bytes of meta made accessible (page lock) */
    int file_fd;           /* the file the heap lies in, or -1 */
    uint64_t file_off;     /* where the heap starts in it */
    uint64_t file_size;    /* how far it reaches (page lock) */
    struct heap *next;     /* live heaps, under heaps_lock */

    _Alignas(64) pthread_mutex_t page_lock;
    uint32_t bump;         /* spans [0, bump) were handed out at least once */
    uint32_t bins[NBINS];  /* free runs by length */

    _Alignas(64) pthread_mutex_t tc_lock;
    struct tcache *tcs;

    struct central cls[NCLASS];
};

static _Atomic(struct heap *) current;
static _Atomic uint64_t next_gen;
static pthread_mutex_t heaps_lock = PTHREAD_MUTEX_INITIALIZER;
static struct heap *heaps;

/* initial-exec: one TLS slot in the static block, no __tls_get_addr call on
 * the fast path even in the shared library. */
static _Thread_local struct tcache *tc_self
    __attribute__((tls_model("initial-exec")));
static pthread_key_t tc_key;
static int tc_key_ok;
static pthread_once_t tc_key_once = PTHREAD_ONCE_INIT;

static inline uint64_t span_addr(const struct heap *h, uint32_t s)
{
    return h->base + ((uint64_t)s << SPAN_SHIFT);
}

static void lock(pthread_mutex_t *m) { pthread_mutex_lock(m); }
static void unlock(pthread_mutex_t *m) { pthread_mutex_unlock(m); }

/* ---- page heap: runs of spans (page_lock held) --------------------------- */

static unsigned bin_of(uint32_t n)
{
    if (n <= 32)
        return n - 1;
    return 32 + (31 - (unsigned)__builtin_clz(n)) - 5;
}

static void bin_insert(struct heap *h, uint32_t s, uint32_t n)
{
    unsigned b = bin_of(n);
    struct meta *m = &h->meta[s];
    m->prev = NIL;
    m->next = h->bins[b];
    if (m->next != NIL)
        h->meta[m->next].prev = s;
    h->bins[b] = s;
}

static void bin_remove(struct heap *h, uint32_t s, uint32_t n)
{
    struct meta *m = &h->meta[s];
    if (m->prev != NIL)
        h->meta[m->prev].next = m->next;
    else
        h->bins[bin_of(n)] = m->next;
    if (m->next != NIL)
        h->meta[m->next].prev = m->prev;
}

static void set_info(struct heap *h, uint32_t s, uint64_t v)
{
    /* Release: pairs with the acquire load in rpal__heap_free, so that a reader of
     * a new small head also sees the live words written before it. */
    rpal_store_release(&h->info[s], v);
}

static void set_run(struct heap *h, uint32_t s, uint32_t n, unsigned kind,
                    unsigned tail)
{
    if (n > 1)
        set_info(h, s + n - 1, mkinfo(tail, n - 1, 0));
    set_info(h, s, mkinfo(kind, n, 0));
}

/* The head of the free run whose last span is S, or NIL. */
static uint32_t free_run_ending_at(struct heap *h, uint32_t s)
{
    uint64_t v = rpal_load_relaxed(&h->info[s]);
    if (info_kind(v) == K_FREE)
        return s;
    if (info_kind(v) == K_FREE_TAIL)
        return s - info_val(v);
    return NIL;
}

/* Give [S, S+N) back, merged with free neighbours. The caller has cleared
 * what made the run live (its head's kind). */
static void run_free(struct heap *h, uint32_t s, uint32_t n)
{
    set_info(h, s, 0);
    if (n > 1)
        set_info(h, s + n - 1, 0);
    if (s > 0) {
        uint32_t l = free_run_ending_at(h, s - 1);
        if (l != NIL) {
            uint32_t ln = info_val(rpal_load_relaxed(&h->info[l]));
            bin_remove(h, l, ln);
            set_info(h, s - 1, 0);
            s = l;
            n += ln;
        }
    }
    if (s + n < h->bump) {
        uint64_t v = rpal_load_relaxed(&h->info[s + n]);
        if (info_kind(v) == K_FREE) {
            uint32_t rn = info_val(v);
            bin_remove(h, s + n, rn);
            set_info(h, s + n, 0);
            n += rn;
        }
    }
    set_run(h, s, n, K_FREE, K_FREE_TAIL);
    bin_insert(h, s, n);
}

/* Spans [0, B) are about to be handed out: make the file the heap lies in
 * (a slot's memfd) reach them. It grows in SLOT_GROW_STEP steps, so at most
 * once per step of the bump pointer, which only moves forward, and is never
 * longer than the high-water mark plus a step: peers that read the slot
 * cannot make pages exist beyond that (docs/heap.md). */
static int file_reach(struct heap *h, uint32_t b)
{
    uint64_t end = h->file_off + ((uint64_t)b << SPAN_SHIFT);
    if (h->file_fd < 0 || end <= h->file_size)
        return 0;
    uint64_t to = (end + SLOT_GROW_STEP - 1) / SLOT_GROW_STEP * SLOT_GROW_STEP;
    if (to > h->file_off + h->len)
        to = h->file_off + h->len;
    if (ftruncate(h->file_fd, (off_t)to) < 0) {
        /* Sealed against shrinking: someone with a writable descriptor
         * (root) made it longer already. Longer is fine. */
        struct stat st;
        if (fstat(h->file_fd, &st) < 0 || (uint64_t)st.st_size < end)
            return -ENOMEM;
        to = (uint64_t)st.st_size;
    }
    RPAL_VG_PRESENT((char *)h->base + (h->file_size - h->file_off), to - h->file_size);
    h->file_size = to;
    return 0;
}

void rpal__heap_set_file(struct heap *h, int fd, uint64_t off)
{
    struct stat st;
    lock(&h->page_lock);
    h->file_fd = fd;
    h->file_off = off;
    h->file_size = fd >= 0 && fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    unlock(&h->page_lock);
}

/* Move the bump pointer to B, first making the metadata of the new spans
 * accessible. The meta table is reserved PROT_NONE and opened in steps as
 * the heap grows, so that a 64 GiB slot does not charge 1.5 GiB of
 * metadata to the commit limit where overcommit is strict. */
static int bump_to(struct heap *h, uint32_t b)
{
    size_t need = (size_t)b * sizeof *h->meta;
    if (need > h->meta_open) {
        size_t step = (size_t)2 << 20, open = (need + step - 1) / step * step;
        if (open > h->meta_bytes)
            open = h->meta_bytes;
        if (mprotect((char *)h->meta + h->meta_open, open - h->meta_open,
                     PROT_READ | PROT_WRITE) < 0)
            return -ENOMEM;
        h->meta_open = open;
    }
    if (file_reach(h, b) < 0)
        return -ENOMEM;
    h->bump = b;
    return 0;
}

/* Take N spans: the smallest binned run that fits, else the last free run
 * extended into untouched space, else untouched space. *DIRTY is how many
 * leading spans may hold old data (untouched spans read as zeros). The
 * caller writes the run's head and tail info. NIL when nothing fits. */
static uint32_t run_alloc(struct heap *h, uint32_t n, uint32_t *dirty)
{
    for (unsigned b = bin_of(n); b < NBINS; b++) {
        for (uint32_t s = h->bins[b]; s != NIL; s = h->meta[s].next) {
            uint32_t m = info_val(rpal_load_relaxed(&h->info[s]));
            if (m < n)
                continue;
            bin_remove(h, s, m);
            if (m > n) {
                set_run(h, s + n, m - n, K_FREE, K_FREE_TAIL);
                bin_insert(h, s + n, m - n);
            }
            *dirty = n;
            return s;
        }
    }
    uint32_t room = h->nspans - h->bump;
    if (h->bump > 0) {
        uint32_t l = free_run_ending_at(h, h->bump - 1);
        if (l != NIL) {
            uint32_t m = h->bump - l;
            if (n - m > room || bump_to(h, l + n) < 0)
                return NIL;
            bin_remove(h, l, m);
            set_info(h, l + m - 1, 0);
            *dirty = m;
            return l;
        }
    }
    uint32_t s = h->bump;
    if (n > room || bump_to(h, s + n) < 0)
        return NIL;
    *dirty = 0;
    return s;
}

/* ---- small runs (class lock held) ---------------------------------------- */

static void partial_push(struct heap *h, struct central *cl, uint32_t s)
{
    struct meta *m = &h->meta[s];
    m->prev = NIL;
    m->next = cl->partial;
    if (m->next != NIL)
        h->meta[m->next].prev = s;
    cl->partial = s;
}

static void partial_unlink(struct heap *h, struct central *cl, uint32_t s)
{
    struct meta *m = &h->meta[s];
    if (m->prev != NIL)
        h->meta[m->prev].next = m->next;
    else
        cl->partial = m->next;
    if (m->next != NIL)
        h->meta[m->next].prev = m->prev;
}

static uint32_t live_words(const struct sclass *k)
{
    return (k->nblocks + 31) / 32;
}

/* Format a new run for class C: every block in its pool, none live. */
static uint32_t run_format(struct heap *h, unsigned c)
{
    const struct sclass *k = &classes[c];
    uint32_t dirty;
    lock(&h->page_lock);
    uint32_t s = run_alloc(h, k->nspans, &dirty);
    if (s != NIL) {
        struct meta *m = &h->meta[s];
        uint32_t e = info_epoch(rpal_load_relaxed(&m->live[0])) + 1;
        if (e == 0)
            e = 1;
        for (uint32_t i = 0; i < live_words(k); i++)
            rpal_store_relaxed(&m->live[i], (uint64_t)e << 32);
        for (uint32_t i = 0; i < k->nblocks / 64; i++)
            m->avail[i] = ~0ull;
        if (k->nblocks % 64)
            m->avail[k->nblocks / 64] = (1ull << (k->nblocks % 64)) - 1;
        m->navail = k->nblocks;
        for (uint32_t j = 1; j < k->nspans; j++)
            set_info(h, s + j, mkinfo(K_SMALL_TAIL, j, 0));
        set_info(h, s, mkinfo(K_SMALL, c, e));
    }
    unlock(&h->page_lock);
    return s;
}

/* Give an empty small run back to the page heap. Its live bits are all
 * clear, so a racing free of one of its old blocks is refused whatever it
 * becomes next. */
static void run_release(struct heap *h, unsigned c, uint32_t s)
{
    const struct sclass *k = &classes[c];
    struct central *cl = &h->cls[c];
    partial_unlink(h, cl, s);
    cl->nruns--;
    /* Every block is back, so every avail bit in use is set: clear them, so
     * that a later format for a class with fewer blocks finds no stale bits
     * past its last block. */
    memset(h->meta[s].avail, 0, (k->nblocks + 63) / 64 * sizeof(uint64_t));
    h->meta[s].navail = 0;
    lock(&h->page_lock);
    for (uint32_t j = 0; j < k->nspans; j++)
        set_info(h, s + j, 0);
    run_free(h, s, k->nspans);
    unlock(&h->page_lock);
}

/* Move up to WANT blocks of class C from the central pool to OUT, in address
 * order. The class lock orders these blocks' previous owner's writes before
 * the next owner's. */
static unsigned central_take(struct heap *h, unsigned c, uint64_t *out,
                             unsigned want)
{
    const struct sclass *k = &classes[c];
    struct central *cl = &h->cls[c];
    unsigned got = 0;
    while (got < want) {
        uint32_t s = cl->partial;
        if (s == NIL) {
            s = run_format(h, c);
            if (s == NIL)
                break;
            cl->nruns++;
            partial_push(h, cl, s);
        }
        struct meta *m = &h->meta[s];
        for (uint32_t w = 0; w < (k->nblocks + 63) / 64 && got < want; w++) {
            uint64_t a = m->avail[w];
            while (a && got < want) {
                unsigned b = (unsigned)__builtin_ctzll(a);
                a &= a - 1;
                out[got++] = (uint64_t)s << BI_BITS | (w * 64 + b);
                m->navail--;
            }
            m->avail[w] = a;
        }
        if (m->navail == 0)
            partial_unlink(h, cl, s);
    }
    return got;
}

/* Take back one cached (not live, not avail) block. A run that becomes
 * empty goes back to the page heap unless it is the class's only partial
 * run (which would be formatted again at the next refill). */
static void central_put(struct heap *h, unsigned c, uint64_t hd)
{
    const struct sclass *k = &classes[c];
    struct central *cl = &h->cls[c];
    uint32_t s = (uint32_t)(hd >> BI_BITS), bi = (uint32_t)(hd & (MAX_BLOCKS - 1));
    struct meta *m = &h->meta[s];
    m->avail[bi / 64] |= 1ull << (bi % 64);
    if (m->navail++ == 0)
        partial_push(h, cl, s);
    if (m->navail == k->nblocks && !(cl->partial == s && m->next == NIL))
        run_release(h, c, s);
}

/* ---- thread caches ------------------------------------------------------- */

static void tc_flush(struct heap *h, struct tbin *b, unsigned c, unsigned count)
{
    unsigned n = rpal_load_relaxed(&b->n);
    if (count > n)
        count = n;
    lock(&h->cls[c].lock);
    for (unsigned i = 0; i < count; i++)
        central_put(h, c, rpal_load_relaxed(&b->hd[i]));
    unlock(&h->cls[c].lock);
    /* The bottom of the stack goes: the top holds the most recently freed,
     * cache-hot blocks. */
    for (unsigned i = count; i < n; i++)
        rpal_store_relaxed(&b->hd[i - count], rpal_load_relaxed(&b->hd[i]));
    rpal_store_relaxed(&b->n, n - count);
}

static void tc_flush_all(struct heap *h, struct tcache *t)
{
    for (unsigned c = 0; c < NCLASS; c++)
        if (rpal_load_relaxed(&t->bin[c].n))
            tc_flush(h, &t->bin[c], c, TC_CAP);
}

/* Flush T into its heap if that heap is still alive, and forget it. The
 * heaps lock keeps rpal__heap_destroy out meanwhile. */
static void tc_unbind(struct tcache *t)
{
    lock(&heaps_lock);
    struct heap *h = heaps;
    while (h && !(h == t->heap && h->gen == t->gen))
        h = h->next;
    if (h) {
        tc_flush_all(h, t);
        lock(&h->tc_lock);
        if (t->prev)
            t->prev->next = t->next;
        else
            h->tcs = t->next;
        if (t->next)
            t->next->prev = t->prev;
        unlock(&h->tc_lock);
    }
    unlock(&heaps_lock);
    for (unsigned c = 0; c < NCLASS; c++)
        rpal_store_relaxed(&t->bin[c].n, 0); /* a dead heap's blocks: dropped */
    t->heap = NULL;
    t->gen = 0;
}

static void tc_destructor(void *arg)
{
    struct tcache *t = arg;
    if (t->heap)
        tc_unbind(t);
    if (tc_self == t)
        tc_self = NULL;
    free(t);
}

static void tc_key_init(void)
{
    tc_key_ok = pthread_key_create(&tc_key, tc_destructor) == 0;
}

/* This thread's cache, bound to H; NULL if it cannot be allocated (the
 * callers then go to the central pool directly). */
static struct tcache *tc_bind(struct heap *h)
{
    struct tcache *t = tc_self;
    if (t && t->gen == h->gen)
        return t;
    if (!t) {
        pthread_once(&tc_key_once, tc_key_init);
        t = calloc(1, sizeof *t);
        if (!t)
            return NULL;
        if (tc_key_ok)
            pthread_setspecific(tc_key, t);
        tc_self = t;
    } else if (t->heap) {
        tc_unbind(t);
    }
    /* Set before linking: rpal__heap_check reads them under the lock. */
    t->heap = h;
    t->gen = h->gen;
    lock(&h->tc_lock);
    t->prev = NULL;
    t->next = h->tcs;
    if (t->next)
        t->next->prev = t;
    h->tcs = t;
    unlock(&h->tc_lock);
    return t;
}

/* Out of spans: give back what this thread caches and every empty small run,
 * so that a retry may find a run. Other threads' caches stay (bounded). */
static void oom_recover(struct heap *h)
{
    struct tcache *t = tc_self;
    if (t && t->gen == h->gen)
        tc_flush_all(h, t);
    for (unsigned c = 0; c < NCLASS; c++) {
        struct central *cl = &h->cls[c];
        lock(&cl->lock);
        for (uint32_t s = cl->partial, next; s != NIL; s = next) {
            next = h->meta[s].next;
            if (h->meta[s].navail == classes[c].nblocks)
                run_release(h, c, s);
        }
        unlock(&cl->lock);
    }
}

/* ---- small blocks -------------------------------------------------------- */

static inline void *block_take(struct heap *h, unsigned c, uint64_t hd)
{
    uint32_t s = (uint32_t)(hd >> BI_BITS), bi = (uint32_t)(hd & (MAX_BLOCKS - 1));
    rpal_fetch_or_relaxed(&h->meta[s].live[bi / 32], 1ull << (bi % 32));
    return (void *)(span_addr(h, s) + (uint64_t)bi * classes[c].size);
}

static unsigned refill(struct heap *h, unsigned c, uint64_t *out, unsigned want)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        lock(&h->cls[c].lock);
        unsigned got = central_take(h, c, out, want);
        unlock(&h->cls[c].lock);
        if (got || attempt)
            return got;
        oom_recover(h);
    }
    return 0;
}

static __attribute__((noinline)) void *small_alloc_slow(struct heap *h, unsigned c)
{
    const struct sclass *k = &classes[c];
    struct tcache *t = tc_bind(h);
    uint64_t tmp[TC_CAP];
    if (!t)
        return refill(h, c, tmp, 1) ? block_take(h, c, tmp[0]) : NULL;
    struct tbin *b = &t->bin[c];
    unsigned n = rpal_load_relaxed(&b->n);
    if (n == 0) {
        unsigned got = refill(h, c, tmp, k->cap > 1 ? k->cap / 2 : 1);
        if (!got)
            return NULL;
        /* Lowest address on top: handed out first. */
        for (unsigned j = 0; j < got; j++)
            rpal_store_relaxed(&b->hd[j], tmp[got - 1 - j]);
        n = got;
    }
    uint64_t hd = rpal_load_relaxed(&b->hd[n - 1]);
    rpal_store_relaxed(&b->n, n - 1);
    return block_take(h, c, hd);
}

static __attribute__((noinline)) int small_free_slow(struct heap *h, unsigned c,
                                                     uint64_t hd)
{
    const struct sclass *k = &classes[c];
    struct tcache *t = tc_bind(h);
    if (!t) {
        lock(&h->cls[c].lock);
        central_put(h, c, hd);
        unlock(&h->cls[c].lock);
        return 0;
    }
    struct tbin *b = &t->bin[c];
    unsigned n = rpal_load_relaxed(&b->n);
    if (n >= k->cap) {
        tc_flush(h, b, c, n / 2 ? n / 2 : 1);
        n = rpal_load_relaxed(&b->n);
    }
    rpal_store_relaxed(&b->hd[n], hd);
    rpal_store_relaxed(&b->n, n + 1);
    return 0;
}

/* ---- large blocks (runs of spans) ---------------------------------------- */

static void *large_alloc(struct heap *h, size_t size, int zero)
{
    if (size > h->len)
        return NULL;
    uint32_t n = (uint32_t)((size + SPAN - 1) >> SPAN_SHIFT);
    for (int attempt = 0; attempt < 2; attempt++) {
        uint32_t dirty;
        lock(&h->page_lock);
        uint32_t s = run_alloc(h, n, &dirty);
        if (s != NIL)
            set_run(h, s, n, K_LARGE, K_LARGE_TAIL);
        unlock(&h->page_lock);
        if (s != NIL) {
            void *p = (void *)span_addr(h, s);
            /* Spans never handed out read as zeros: clearing them would only
             * commit memory. */
            if (zero && dirty) {
                uint64_t d = (uint64_t)dirty << SPAN_SHIFT;
                memset(p, 0, size < d ? size : d);
            }
            return p;
        }
        if (attempt == 0)
            oom_recover(h);
    }
    return NULL;
}

/* The large block that starts at OFF (page lock held): its length in spans
 * and its span in *S, or 0 if OFF is not the start of a live large block. */
static uint32_t large_lookup(struct heap *h, uint64_t off, uint32_t *s)
{
    *s = (uint32_t)(off >> SPAN_SHIFT);
    uint64_t v = rpal_load_relaxed(&h->info[*s]);
    if (info_kind(v) != K_LARGE || (off & (SPAN - 1)))
        return 0;
    return info_val(v);
}

static int large_free(struct heap *h, uint64_t off)
{
    uint32_t s;
    lock(&h->page_lock);
    uint32_t n = large_lookup(h, off, &s);
    if (n)
        run_free(h, s, n);
    unlock(&h->page_lock);
    return n ? 0 : -EINVAL;
}

/* Resize the large block at S of N spans to N2 spans where it lies (page
 * lock held): 1 on success. */
static int large_resize(struct heap *h, uint32_t s, uint32_t n, uint32_t n2)
{
    if (n2 < n) {
        set_run(h, s, n2, K_LARGE, K_LARGE_TAIL);
        run_free(h, s + n2, n - n2);
        return 1;
    }
    uint32_t need = n2 - n, e = s + n, have = 0;
    uint64_t v = e < h->bump ? rpal_load_relaxed(&h->info[e]) : 0;
    if (e < h->bump && info_kind(v) == K_FREE)
        have = info_val(v);
    /* A free neighbour that reaches the untouched space may borrow from it. */
    uint32_t untouched = (e + have == h->bump) ? h->nspans - h->bump : 0;
    if (have + untouched < need)
        return 0;
    if (have < need && bump_to(h, s + n2) < 0)
        return 0;
    if (have) {
        bin_remove(h, e, have);
        set_info(h, e, 0);
        if (have > 1)
            set_info(h, e + have - 1, 0);
    }
    if (have > need) {
        set_run(h, s + n2, have - need, K_FREE, K_FREE_TAIL);
        bin_insert(h, s + n2, have - need);
    }
    if (n > 1)
        set_info(h, s + n - 1, 0);
    set_run(h, s, n2, K_LARGE, K_LARGE_TAIL);
    return 1;
}

/* ---- fork ---------------------------------------------------------------- */

/* A heap belongs to the process that made it: the domain does not pass slots
 * to a child (MADV_DONTFORK), and a child writing a heap it shares with its
 * parent would corrupt it. The child also has only the forking thread, so a
 * lock another thread held at fork() would stay held forever. Forget every
 * heap, and unbind this thread's cache without flushing it. */
static void heap_atfork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    heaps_lock = fresh;
    heaps = NULL;
    rpal_store_relaxed(&current, NULL);
    struct tcache *t = tc_self;
    if (t) {
        for (unsigned c = 0; c < NCLASS; c++)
            rpal_store_relaxed(&t->bin[c].n, 0);
        t->heap = NULL;
        t->gen = 0;
    }
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_init(void)
{
    pthread_atfork(NULL, NULL, heap_atfork_child);
}

/* ---- the interface ------------------------------------------------------- */

int rpal__heap_create(void *base, uint64_t len, struct heap **out)
{
    uintptr_t b = (uintptr_t)base;
    if (!out || !base || b % RPAL_PAGE || len == 0 || len % SPAN ||
        len / SPAN > MAX_SPANS || b + len < b)
        return -EINVAL;
    pthread_once(&atfork_once, atfork_init);
    struct heap *h = aligned_alloc(64, sizeof *h);
    if (!h)
        return -ENOMEM;
    memset(h, 0, sizeof *h);
    h->base = b;
    h->len = len;
    h->nspans = (uint32_t)(len / SPAN);
    h->file_fd = -1;
    /* Both tables cover the whole slot and cost memory only where touched:
     * untouched anonymous memory reads as zeros (K_NONE). info (8 bytes a
     * span) stays readable everywhere, since rpal__heap_free reads it for any
     * pointer in the heap; meta is opened as the bump pointer moves. */
    size_t pg = RPAL_PAGE - 1;
    h->info_bytes = (h->nspans * sizeof *h->info + pg) & ~pg;
    h->meta_bytes = (h->nspans * sizeof *h->meta + pg) & ~pg;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    void *info = mmap(NULL, h->info_bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
    void *meta = mmap(NULL, h->meta_bytes, PROT_NONE, flags, -1, 0);
    if (info == MAP_FAILED || meta == MAP_FAILED) {
        if (info != MAP_FAILED)
            munmap(info, h->info_bytes);
        if (meta != MAP_FAILED)
            munmap(meta, h->meta_bytes);
        free(h);
        return -ENOMEM;
    }
    h->info = info;
    h->meta = meta;
    pthread_mutex_init(&h->page_lock, NULL);
    pthread_mutex_init(&h->tc_lock, NULL);
    for (unsigned i = 0; i < NBINS; i++)
        h->bins[i] = NIL;
    for (unsigned c = 0; c < NCLASS; c++) {
        pthread_mutex_init(&h->cls[c].lock, NULL);
        h->cls[c].partial = NIL;
    }
    h->gen = rpal_fetch_add_relaxed(&next_gen, 1) + 1;
    lock(&heaps_lock);
    h->next = heaps;
    heaps = h;
    unlock(&heaps_lock);
    *out = h;
    return 0;
}

void rpal__heap_destroy(struct heap *h)
{
    if (!h)
        return;
    struct heap *expect = h;
    rpal_cas_acq_rel(&current, &expect, NULL);
    /* Thread caches bound to H keep its generation, which no live heap
     * has: they drop their handles when next used or at thread exit. */
    lock(&heaps_lock);
    struct heap **pp = &heaps;
    while (*pp && *pp != h)
        pp = &(*pp)->next;
    if (*pp)
        *pp = h->next;
    unlock(&heaps_lock);
    munmap((void *)h->info, h->info_bytes);
    munmap(h->meta, h->meta_bytes);
    pthread_mutex_destroy(&h->page_lock);
    pthread_mutex_destroy(&h->tc_lock);
    for (unsigned c = 0; c < NCLASS; c++)
        pthread_mutex_destroy(&h->cls[c].lock);
    free(h);
}

static inline void *do_malloc(struct heap *h, size_t size)
{
    if (likely(size <= MAX_SMALL)) {
        unsigned c = class_of(size);
        struct tcache *t = tc_self;
        if (likely(t && t->gen == h->gen)) {
            struct tbin *b = &t->bin[c];
            uint32_t n = rpal_load_relaxed(&b->n);
            if (likely(n)) {
                uint64_t hd = rpal_load_relaxed(&b->hd[n - 1]);
                rpal_store_relaxed(&b->n, n - 1);
                return block_take(h, c, hd);
            }
        }
        return small_alloc_slow(h, c);
    }
    return large_alloc(h, size, 0);
}

/* The small block at OFF: its class and handle, or -EINVAL. With CLEAR, its
 * live bit is cleared (it is freed), else only checked. */
static inline int small_find(struct heap *h, uint64_t off, uint64_t v,
                             int clear, unsigned *cp, uint64_t *hdp)
{
    uint32_t s = (uint32_t)(off >> SPAN_SHIFT);
    if (info_kind(v) == K_SMALL_TAIL) {
        if (info_val(v) > s)
            return -EINVAL;
        s -= info_val(v);
        v = rpal_load_acquire(&h->info[s]); /* pairs with set_info */
        if (info_kind(v) != K_SMALL)
            return -EINVAL;
    }
    unsigned c = info_val(v);
    if (c >= NCLASS)
        return -EINVAL;
    const struct sclass *k = &classes[c];
    uint64_t boff = off - ((uint64_t)s << SPAN_SHIFT);
    uint64_t bi = (boff * k->inv) >> INV_SHIFT;
    if (bi * k->size != boff || bi >= k->nblocks)
        return -EINVAL;
    _Atomic uint64_t *w = &h->meta[s].live[bi / 32];
    uint64_t bit = 1ull << (bi % 32), epoch = info_epoch(v);
    uint64_t x = rpal_load_relaxed(w);
    do {
        if ((x >> 32) != epoch || !(x & bit))
            return -EINVAL;
    } while (clear && !rpal_cas_acq_rel(w, &x, x & ~bit));
    *cp = c;
    *hdp = (uint64_t)s << BI_BITS | bi;
    return 0;
}

static inline int do_free(struct heap *h, void *p)
{
    uint64_t off = (uintptr_t)p - h->base;
    if (unlikely(off >= h->len))
        return p ? -EINVAL : 0;
    /* Acquire: pairs with set_info's release (a small head's live words). */
    uint64_t v = rpal_load_acquire(&h->info[off >> SPAN_SHIFT]);
    unsigned kind = info_kind(v);
    if (unlikely(kind != K_SMALL && kind != K_SMALL_TAIL))
        return large_free(h, off);
    unsigned c;
    uint64_t hd;
    int err = small_find(h, off, v, 1, &c, &hd);
    if (unlikely(err))
        return err;
    struct tcache *t = tc_self;
    if (likely(t && t->gen == h->gen)) {
        struct tbin *b = &t->bin[c];
        uint32_t n = rpal_load_relaxed(&b->n);
        if (likely(n < classes[c].cap)) {
            rpal_store_relaxed(&b->hd[n], hd);
            rpal_store_relaxed(&b->n, n + 1);
            return 0;
        }
    }
    return small_free_slow(h, c, hd);
}

void *rpal__heap_malloc(struct heap *h, size_t size)
{
    return do_malloc(h, size);
}

int rpal__heap_free(struct heap *h, void *p)
{
    return do_free(h, p);
}

void *rpal__heap_calloc(struct heap *h, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total))
        return NULL;
    if (total > MAX_SMALL)
        return large_alloc(h, total, 1);
    void *p = do_malloc(h, total);
    if (p)
        memset(p, 0, total);
    return p;
}

/* realloc(p, 0) returns a fresh minimal block (like malloc(0)) rather than
 * freeing: a NULL return always means failure and P stays valid. */
void *rpal__heap_realloc(struct heap *h, void *p, size_t size)
{
    if (!p)
        return do_malloc(h, size);
    uint64_t off = (uintptr_t)p - h->base;
    if (off >= h->len || size > h->len)
        return NULL;
    uint64_t v = rpal_load_acquire(&h->info[off >> SPAN_SHIFT]);
    unsigned kind = info_kind(v);
    size_t old;
    if (kind == K_SMALL || kind == K_SMALL_TAIL) {
        unsigned c;
        uint64_t hd;
        if (small_find(h, off, v, 0, &c, &hd) < 0)
            return NULL;
        old = classes[c].size;
        if (size <= old && (class_of(size) == c || size >= old / 2))
            return p;
    } else {
        uint32_t s;
        lock(&h->page_lock);
        uint32_t n = large_lookup(h, off, &s);
        if (!n) {
            unlock(&h->page_lock);
            return NULL;
        }
        old = (size_t)n << SPAN_SHIFT;
        uint32_t n2 = (uint32_t)((size + SPAN - 1) >> SPAN_SHIFT);
        int done = size > MAX_SMALL && (n2 == n || large_resize(h, s, n, n2));
        unlock(&h->page_lock);
        if (done)
            return p;
    }
    void *q = do_malloc(h, size);
    if (!q) {
        if (kind != K_SMALL && kind != K_SMALL_TAIL && size <= MAX_SMALL) {
            /* A large block shrinking below the small classes: keep it. */
            return p;
        }
        return NULL;
    }
    memcpy(q, p, size < old ? size : old);
    do_free(h, p);
    return q;
}

void rpal__heap_set_current(struct heap *h)
{
    /* Release: pairs with the acquire loads in rpal_malloc() and friends, so
     * that a thread that sees H sees it initialised. */
    rpal_store_release(&current, h);
}

void *rpal_malloc(size_t size)
{
    struct heap *h = rpal_load_acquire(&current);
    return h ? do_malloc(h, size) : NULL;
}

void *rpal_calloc(size_t n, size_t size)
{
    struct heap *h = rpal_load_acquire(&current);
    return h ? rpal__heap_calloc(h, n, size) : NULL;
}

void *rpal_realloc(void *p, size_t size)
{
    struct heap *h = rpal_load_acquire(&current);
    return h ? rpal__heap_realloc(h, p, size) : NULL;
}

int rpal_free(void *p)
{
    struct heap *h = rpal_load_acquire(&current);
    return h ? do_free(h, p) : -EINVAL;
}

/* ---- the checker --------------------------------------------------------- */

static int bad(const char *what, uint64_t a, uint64_t b)
{
    fprintf(stderr, "rpal rpal__heap_check: %s (%llu, %llu)\n", what,
            (unsigned long long)a, (unsigned long long)b);
    return -EUCLEAN;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Once per process: the table is constant. */
static int check_classes(void)
{
    static _Atomic int checked;
    if (rpal_load_acquire(&checked)) /* pairs with the store below */
        return 0;
    for (unsigned c = 0; c < NCLASS; c++) {
        const struct sclass *k = &classes[c];
        if (k->size % 16 || k->nblocks > MAX_BLOCKS ||
            k->nspans > MAX_RUN_SPANS ||
            k->nblocks != k->nspans * SPAN / k->size ||
            k->cap == 0 || k->cap > TC_CAP ||
            (c && k->size <= classes[c - 1].size))
            return bad("size class table", c, k->size);
        for (uint64_t off = 0; off < k->nspans * SPAN; off++)
            if (((off * k->inv) >> INV_SHIFT) != off / k->size)
                return bad("block index reciprocal", c, off);
    }
    for (size_t s = 0; s <= MAX_SMALL; s++) {
        unsigned c = class_of(s);
        if (c >= NCLASS || classes[c].size < s || (c && classes[c - 1].size >= s))
            return bad("class_of", s, c);
    }
    rpal_store_release(&checked, 1);
    return 0;
}

static int check_small(struct heap *h, uint32_t s, uint64_t v, uint32_t *cached,
                       uint32_t *partial)
{
    unsigned c = info_val(v);
    if (c >= NCLASS)
        return bad("small run with a bad class", s, c);
    const struct sclass *k = &classes[c];
    if (s + k->nspans > h->bump)
        return bad("small run past the bump pointer", s, k->nspans);
    for (uint32_t j = 1; j < k->nspans; j++) {
        uint64_t t = rpal_load_relaxed(&h->info[s + j]);
        if (info_kind(t) != K_SMALL_TAIL || info_val(t) != j)
            return bad("small run tail", s, j);
    }
    struct meta *m = &h->meta[s];
    uint32_t nlive = 0, navail = 0;
    for (uint32_t w = 0; w < live_words(k); w++) {
        uint64_t x = rpal_load_relaxed(&m->live[w]);
        if ((uint32_t)(x >> 32) != info_epoch(v))
            return bad("live word epoch", s, w);
        uint32_t bits = (uint32_t)x;
        uint32_t av = (uint32_t)(m->avail[w / 2] >> (w % 2 * 32));
        uint32_t valid = k->nblocks - w * 32 >= 32 ? UINT32_MAX
                         : (1u << (k->nblocks - w * 32)) - 1;
        if ((bits | av) & ~valid)
            return bad("bit past the last block", s, w);
        if (bits & av)
            return bad("block both live and available", s, w);
        nlive += (uint32_t)__builtin_popcount(bits);
        navail += (uint32_t)__builtin_popcount(av);
    }
    for (uint32_t w = (live_words(k) + 1) / 2; w < AVAIL_WORDS; w++)
        if (m->avail[w])
            return bad("avail word past the last block", s, w);
    if (navail != m->navail)
        return bad("navail does not match the bitmap", s, m->navail);
    *cached += k->nblocks - nlive - navail;
    if (navail)
        partial[c]++;
    return 0;
}

/* Quiet times only: with other threads allocating in H, counts move under
 * the checker's feet (thread caches change without a lock). */
/* What the walk over the spans counted, for the checks of the lists that
 * must hold exactly those runs and blocks. */
struct tally {
    uint32_t cached;            /* blocks of small runs in thread caches */
    uint32_t partial[NCLASS];   /* small runs with available blocks */
    uint32_t nruns[NCLASS];     /* small runs */
    uint32_t nfree;             /* free runs */
};

/* Every span up to the bump is covered by exactly one run whose head and
 * tail agree, and no two free runs are adjacent (they would have been
 * merged). */
static int check_spans(struct heap *h, struct tally *t)
{
    int err = 0, prev_free = 0;
    uint32_t s = 0;
    if (h->bump > h->nspans)
        err = bad("bump past the end", h->bump, h->nspans);
    while (!err && s < h->bump) {
        uint64_t v = rpal_load_relaxed(&h->info[s]);
        unsigned kind = info_kind(v);
        uint32_t n = info_val(v);
        if (kind == K_SMALL) {
            err = check_small(h, s, v, &t->cached, t->partial);
            n = classes[info_val(v) % NCLASS].nspans;
            t->nruns[info_val(v) % NCLASS]++;
        } else if (kind == K_LARGE || kind == K_FREE) {
            if (n == 0 || n > h->bump - s)
                err = bad("run length", s, n);
            else if (n > 1 && rpal_load_relaxed(&h->info[s + n - 1]) !=
                                  mkinfo(kind + 1, n - 1, 0))
                err = bad("run tail", s, n);
            else if (kind == K_FREE && prev_free)
                err = bad("adjacent free runs", s, n);
            t->nfree += kind == K_FREE;
        } else {
            err = bad("span is no run's head", s, v);
        }
        prev_free = kind == K_FREE;
        s += n;
    }
    return err;
}

/* Free bins: every free run once, in its bin. */
static int check_bins(struct heap *h, const struct tally *t)
{
    int err = 0;
    uint32_t seen = 0;
    for (unsigned b = 0; !err && b < NBINS; b++) {
        uint32_t prev = NIL;
        for (uint32_t r = h->bins[b]; !err && r != NIL;
             r = err ? NIL : h->meta[r].next) {
            uint64_t v = r < h->bump ? rpal_load_relaxed(&h->info[r]) : 0;
            if (info_kind(v) != K_FREE || bin_of(info_val(v)) != b)
                err = bad("free bin holds a wrong run", b, r);
            else if (h->meta[r].prev != prev)
                err = bad("free bin back link", b, r);
            else if (++seen > t->nfree)
                err = bad("free bins hold more runs than exist", seen, t->nfree);
            prev = r;
        }
    }
    if (!err && seen != t->nfree)
        err = bad("free runs missing from the bins", seen, t->nfree);
    return err;
}

/* Partial lists: exactly the small runs with available blocks. */
static int check_partial(struct heap *h, const struct tally *t)
{
    int err = 0;
    for (unsigned c = 0; !err && c < NCLASS; c++) {
        uint32_t count = 0, prev = NIL;
        if (t->nruns[c] != h->cls[c].nruns)
            err = bad("class run count", c, h->cls[c].nruns);
        for (uint32_t r = h->cls[c].partial; !err && r != NIL;
             r = err ? NIL : h->meta[r].next) {
            uint64_t v = r < h->bump ? rpal_load_relaxed(&h->info[r]) : 0;
            if (info_kind(v) != K_SMALL || info_val(v) != c || !h->meta[r].navail)
                err = bad("partial list holds a wrong run", c, r);
            else if (h->meta[r].prev != prev)
                err = bad("partial list back link", c, r);
            else if (++count > t->partial[c])
                err = bad("partial list too long", c, count);
            prev = r;
        }
        if (!err && count != t->partial[c])
            err = bad("partial list misses runs", c, count);
    }
    return err;
}

/* The cached blocks seen so far, to find one cached twice. */
struct hds {
    uint64_t *v;
    size_t n, cap;
};

/* Bin C of the thread cache T: each block in a small run of class C,
 * neither live nor available; each added to D. */
static int check_tcache_bin(struct heap *h, struct tcache *t, unsigned c, struct hds *d)
{
    uint32_t n = rpal_load_relaxed(&t->bin[c].n);
    if (n > classes[c].cap)
        return bad("thread cache over capacity", c, n);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t hd = rpal_load_relaxed(&t->bin[c].hd[i]);
        uint32_t r = (uint32_t)(hd >> BI_BITS);
        uint32_t bi = (uint32_t)(hd & (MAX_BLOCKS - 1));
        uint64_t v = r < h->bump ? rpal_load_relaxed(&h->info[r]) : 0;
        if (info_kind(v) != K_SMALL || info_val(v) != c || bi >= classes[c].nblocks)
            return bad("cached block in a wrong run", c, hd);
        struct meta *m = &h->meta[r];
        if ((rpal_load_relaxed(&m->live[bi / 32]) >> (bi % 32)) & 1 ||
            (m->avail[bi / 64] >> (bi % 64)) & 1)
            return bad("cached block is live or available", c, hd);
        if (d->n == d->cap) {
            size_t nc = d->cap ? d->cap * 2 : 256;
            uint64_t *x = realloc(d->v, nc * sizeof *x);
            if (!x)
                return -ENOMEM;
            d->v = x;
            d->cap = nc;
        }
        d->v[d->n++] = hd;
    }
    return 0;
}

/* Thread caches: every cached block neither live nor available, none
 * twice, and as many as the runs are missing. */
static int check_tcaches(struct heap *h, const struct tally *t)
{
    int err = 0;
    struct hds d = {0};
    for (struct tcache *tc = h->tcs; !err && tc; tc = tc->next) {
        if (tc->gen != h->gen)
            err = bad("thread cache of another heap", tc->gen, h->gen);
        for (unsigned c = 0; !err && c < NCLASS; c++)
            err = check_tcache_bin(h, tc, c, &d);
    }
    if (!err && d.n != t->cached)
        err = bad("cached blocks do not match the runs", d.n, t->cached);
    if (!err && d.n) {
        qsort(d.v, d.n, sizeof *d.v, cmp_u64);
        for (size_t i = 1; !err && i < d.n; i++)
            if (d.v[i] == d.v[i - 1])
                err = bad("block cached twice", d.v[i], i);
    }
    free(d.v);
    return err;
}

int rpal__heap_check(struct heap *h)
{
    if (!h)
        return -EINVAL;
    int err = check_classes();
    if (err)
        return err;
    /* Every lock, so that no thread changes the structures while they
     * are walked. */
    lock(&h->tc_lock);
    for (unsigned c = 0; c < NCLASS; c++)
        lock(&h->cls[c].lock);
    lock(&h->page_lock);
    struct tally t = {0};
    err = check_spans(h, &t);
    if (!err)
        err = check_bins(h, &t);
    if (!err)
        err = check_partial(h, &t);
    if (!err)
        err = check_tcaches(h, &t);
    unlock(&h->page_lock);
    for (unsigned c = NCLASS; c-- > 0;)
        unlock(&h->cls[c].lock);
    unlock(&h->tc_lock);
    return err;
}
