/* The slot allocator against glibc, in one process, pinned to one CPU.
 *
 * Two patterns of 64-byte blocks: "pair" (malloc then free, repeated) and
 * "1000x" (1000 mallocs, then the 1000 frees). Each is timed in many
 * batches, alternating glibc and rpal batch by batch so that frequency
 * changes and noise hit both alike; the median and 99th percentile batch
 * give ns per malloc+free pair. rpal is measured through its public path
 * (rpal_malloc/rpal_free over a heap made current with rpal__heap_set_current).
 *
 * Usage: heap [--json] [--max-ratio R] [--slot]
 *   --json         one JSON object per line per allocator and pattern
 *   --max-ratio R  exit 1 if rpal's median "pair" is more than R x glibc's
 *   --slot         rpal's heap is a real slot's (rpal_domain_join of the
 *                  domain "bench-heap" in $RPAL_DIR), whose file grows with
 *                  it; first, on the fresh heap, "grow64k": 4,096 blocks of
 *                  64 KiB (256 MiB) allocated and touched, in batches of 64
 *                  (one 4 MiB growth step of the slot's file each), then
 *                  freed; ns per block (rpal only)
 */
#include "rpal.h"
/* The allocator is measured directly (rpal__heap_create, rpal__heap_set_current): an
 * internal of the library, so this benchmark alone needs internal.h. */
#include "../src/internal.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define HEAP_LEN (1ull << 30)
#define SIZE 64
#define PAIR_OPS 10000   /* pairs per batch of "pair" */
#define PAIR_BATCHES 400
#define BURST 1000       /* blocks per batch of "1000x" */
#define BURST_BATCHES 1000

static void *blocks[BURST];

/* The pointer escapes into the asm, so that the compiler cannot drop a
 * malloc/free pair it can see through (it may for glibc's). */
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

static inline double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* Both loops are written out per allocator (direct calls, inlined into this
 * function by the compiler as it sees fit), not through a function pointer,
 * which would add an indirect call to every operation. */
static double batch_pair(int rpal)
{
    double t = now_ns();
    if (rpal) {
        for (int i = 0; i < PAIR_OPS; i++) {
            void *p = rpal_malloc(SIZE);
            ESCAPE(p);
            rpal_free(p);
        }
    } else {
        for (int i = 0; i < PAIR_OPS; i++) {
            void *p = malloc(SIZE);
            ESCAPE(p);
            free(p);
        }
    }
    return (now_ns() - t) / PAIR_OPS;
}

static double batch_burst(int rpal)
{
    double t = now_ns();
    if (rpal) {
        for (int i = 0; i < BURST; i++) {
            blocks[i] = rpal_malloc(SIZE);
            ESCAPE(blocks[i]);
        }
        for (int i = 0; i < BURST; i++)
            rpal_free(blocks[i]);
    } else {
        for (int i = 0; i < BURST; i++) {
            blocks[i] = malloc(SIZE);
            ESCAPE(blocks[i]);
        }
        for (int i = 0; i < BURST; i++)
            free(blocks[i]);
    }
    return (now_ns() - t) / BURST;
}

#define GROW_BLOCK (64u << 10)
#define GROW_BATCH 64
#define GROW_BATCHES 64

/* The "grow64k" batches of --slot into V; -1 if memory ran out. */
static int batches_grow(double *v)
{
    static void *big[GROW_BATCH * GROW_BATCHES];
    int n = 0;
    for (int b = 0; b < GROW_BATCHES; b++) {
        double t = now_ns();
        for (int i = 0; i < GROW_BATCH; i++, n++) {
            char *p = rpal_malloc(GROW_BLOCK);
            if (!p)
                return -1;
            *(volatile char *)p = 1; /* a page fault, as an application's first use */
            big[n] = p;
        }
        v[b] = (now_ns() - t) / GROW_BATCH;
    }
    for (int i = 0; i < n; i++)
        rpal_free(big[i]);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct result {
    double p50, p99;
};

static struct result summarize(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    struct result r = {v[n / 2], v[(int)(n * 0.99)]};
    return r;
}

/* Pin to the CPU we are on, so that both allocators run on the same core
 * with the same caches. */
static int pin(void)
{
    int cpu = sched_getcpu();
    if (cpu < 0)
        cpu = 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        return -1;
    return cpu;
}

/* --help prints the usage on stdout (exit 0); a bad option prints it on
 * stderr (exit 2). */
static void parse_args(int argc, char **argv, int *json, double *max_ratio, int *slot)
{
    for (int i = 1; i < argc; i++) {
        int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
        if (!strcmp(argv[i], "--json")) {
            *json = 1;
        } else if (!strcmp(argv[i], "--slot")) {
            *slot = 1;
        } else if (!strcmp(argv[i], "--max-ratio") && i + 1 < argc) {
            *max_ratio = atof(argv[++i]);
        } else {
            fprintf(help ? stdout : stderr, "usage: %s [--json] [--max-ratio R] [--slot]\n",
                    argv[0]);
            exit(help ? 0 : 2);
        }
    }
}

/* Both patterns, glibc and rpal alternated batch by batch: RES[pattern][allocator]. */
static int measure(struct result res[2][2])
{
    int nb[2] = {PAIR_BATCHES, BURST_BATCHES};
    for (int pat = 0; pat < 2; pat++) {
        double *v[2] = {malloc(nb[pat] * sizeof(double)),
                        malloc(nb[pat] * sizeof(double))};
        if (!v[0] || !v[1])
            return -1;
        /* Warm up: caches, page faults, thread caches. */
        for (int i = 0; i < nb[pat] / 10; i++)
            for (int a = 0; a < 2; a++)
                pat ? batch_burst(a) : batch_pair(a);
        for (int i = 0; i < nb[pat]; i++)
            for (int a = 0; a < 2; a++)
                v[a][i] = pat ? batch_burst(a) : batch_pair(a);
        for (int a = 0; a < 2; a++) {
            res[pat][a] = summarize(v[a], nb[pat]);
            free(v[a]);
        }
    }
    return 0;
}

static void print_result(int json, const char *pattern, const char *alloc, struct result r,
                         double ratio)
{
    if (json)
        printf("{\"allocator\":\"%s\",\"pattern\":\"%s\","
               "\"ns_per_pair_p50\":%.2f,\"ns_per_pair_p99\":%.2f,"
               "\"ratio_to_glibc\":%.3f}\n",
               alloc, pattern, r.p50, r.p99, ratio);
    else
        printf("%-8s %-6s %10.2f %10.2f %8.2f\n", pattern, alloc, r.p50, r.p99, ratio);
}

/* --slot: the same over a real slot's heap, after "grow64k" on it fresh. */
static int slot_main(int json, int cpu)
{
    rpal_domain *d;
    int err = rpal_domain_join("bench-heap", NULL, &d);
    if (err < 0) {
        fprintf(stderr, "rpal_domain_join: %s\n", rpal_strerror(err));
        return 1;
    }
    double g[GROW_BATCHES];
    struct result res[2][2];
    if (batches_grow(g) < 0 || measure(res) < 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    rpal_domain_leave(d);
    if (!json)
        printf("64-byte blocks in a slot, pinned to CPU %d; ns per malloc+free pair "
               "(grow64k: ns per 64 KiB block)\n", cpu);
    print_result(json, "grow64k", "rpal", summarize(g, GROW_BATCHES), 0);
    static const char *patterns[2] = {"pair", "1000x"};
    static const char *names[2] = {"glibc", "rpal"};
    for (int pat = 0; pat < 2; pat++)
        for (int a = 0; a < 2; a++)
            print_result(json, patterns[pat], names[a], res[pat][a],
                         res[pat][a].p50 / res[pat][0].p50);
    return 0;
}

int main(int argc, char **argv)
{
    int json = 0, slot = 0;
    double max_ratio = 0;
    parse_args(argc, argv, &json, &max_ratio, &slot);
    int cpu = pin();
    if (slot)
        return slot_main(json, cpu);

    void *base = mmap(NULL, HEAP_LEN, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    struct heap *h;
    int err = rpal__heap_create(base, HEAP_LEN, &h);
    if (err < 0) {
        fprintf(stderr, "rpal__heap_create: %s\n", rpal_strerror(err));
        return 1;
    }
    rpal__heap_set_current(h);

    static const char *patterns[2] = {"pair", "1000x"};
    static const char *names[2] = {"glibc", "rpal"};
    struct result res[2][2];
    if (measure(res) < 0)
        return 1;
    err = rpal__heap_check(h);

    if (!json) {
        printf("64-byte blocks, pinned to CPU %d; ns per malloc+free pair\n", cpu);
        printf("%-8s %-6s %10s %10s %8s\n", "pattern", "alloc", "p50", "p99",
               "ratio");
    }
    for (int pat = 0; pat < 2; pat++)
        for (int a = 0; a < 2; a++)
            print_result(json, patterns[pat], names[a], res[pat][a],
                         res[pat][a].p50 / res[pat][0].p50);
    rpal__heap_set_current(NULL);
    rpal__heap_destroy(h);
    munmap(base, HEAP_LEN);
    if (err) {
        fprintf(stderr, "rpal__heap_check after the run: %s\n", rpal_strerror(err));
        return 1;
    }
    if (max_ratio > 0 && res[0][1].p50 > max_ratio * res[0][0].p50) {
        fprintf(stderr, "rpal pair %.2f ns is over %.2f x glibc's %.2f ns\n",
                res[0][1].p50, max_ratio, res[0][0].p50);
        return 1;
    }
    return 0;
}
