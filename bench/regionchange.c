/* Latency of one layout change against the number of sharers.
 *
 * For 1, 8 and 64 sharers (forked processes that attached the region by
 * name and then sleep in read(2): their agent threads do the work), the
 * changer, pinned to the CPU it started on, alternates
 * rpal_region_protect() of one page between read-only and read-write and
 * times each call, which returns once every sharer has applied it. The
 * median, 90th and 99th percentiles and the maximum are reported in
 * microseconds, then the ratios the targets are stated in (64 sharers'
 * median over 8 sharers', and each maximum over its median).
 *
 * Each call must return 0: every sharer has the change. With --counts, it
 * also asks for the counts (struct rpal_region_change), which costs the
 * changer about three system calls per sharer, and checks that every
 * sharer applied it.
 *
 * Usage: regionchange [--json] [--changes N] [--counts]
 */
#include "rpal.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NAME "bench-regionchange"

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int pin(void)
{
    int cpu = sched_getcpu();
    if (cpu < 0)
        cpu = 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) < 0 ? -1 : cpu;
}

static int sharer(int ready, int hold)
{
    rpal_region *r;
    if (rpal_region_attach(NAME, 0, &r) != 0)
        return 1;
    char c = 'r';
    if (write(ready, &c, 1) != 1)
        return 1;
    while (read(hold, &c, 1) < 0 && errno == EINTR) /* until the parent closes it */
        ;
    rpal_region_detach(r);
    return 0;
}

struct result {
    double p50, p90, p99, max;
};

static int counts;

/* CHANGES timed protection changes of R's first page (after a tenth more
 * untimed), each seen by NSHARERS sharers: microseconds into V; 0 or a
 * negative errno. */
static int time_changes(rpal_region *r, int nsharers, int changes, double *v)
{
    struct rpal_region_change chg = {.timeout_ms = 5000};
    int warm = changes / 10;
    for (int i = -warm; i < changes; i++) {
        int prot = i & 1 ? PROT_READ | PROT_WRITE : PROT_READ;
        double t = now_us();
        chg.timeout_ms = 5000;
        int err = rpal_region_protect(r, 0, 4096, prot, counts ? &chg : NULL);
        t = now_us() - t;
        if (err < 0)
            return err;
        if (err > 0 || (counts && chg.applied != (unsigned)nsharers)) {
            fprintf(stderr, "regionchange: a change returned %d (%u of %d sharers applied it)\n",
                    err, counts ? chg.applied : 0, nsharers);
            return -EIO;
        }
        if (i >= 0)
            v[i] = t;
    }
    return 0;
}

static int run(int nsharers, int changes, int json, int cpu, struct result *res)
{
    int ready[2], hold[2];
    if (pipe(ready) < 0 || pipe(hold) < 0)
        return -errno;
    rpal_region *r;
    rpal_region_unlink(NAME); /* a leftover of an interrupted run */
    int err = rpal_region_create(NAME, 1 << 20, 0600, RPAL_REGION_TRANSIENT, &r);
    if (err < 0)
        return err;
    pid_t *kids = calloc((size_t)nsharers, sizeof *kids);
    double *v = calloc((size_t)changes, sizeof *v);
    int started = 0;
    if (!kids || !v) {
        err = -ENOMEM;
        goto out;
    }
    for (; started < nsharers; started++) {
        pid_t p = fork();
        if (p < 0) {
            err = -errno;
            goto out;
        }
        if (p == 0) {
            /* The inherited attachment goes; each sharer attaches by name,
             * like an unrelated process would. */
            rpal_region_detach(r);
            cpu_set_t all; /* sharers run anywhere, only the changer is pinned */
            CPU_ZERO(&all);
            for (long c = 0; c < sysconf(_SC_NPROCESSORS_ONLN) && c < CPU_SETSIZE; c++)
                CPU_SET(c, &all);
            sched_setaffinity(0, sizeof all, &all);
            close(ready[0]);
            close(hold[1]);
            _exit(sharer(ready[1], hold[0]));
        }
        kids[started] = p;
    }
    close(ready[1]);
    ready[1] = -1;
    for (int i = 0; i < nsharers; i++) {
        char c;
        if (read(ready[0], &c, 1) != 1) {
            err = -ECHILD;
            goto out;
        }
    }
    err = time_changes(r, nsharers, changes, v);
    if (err < 0)
        goto out;
    qsort(v, (size_t)changes, sizeof *v, cmp_double);
    res->p50 = v[changes / 2];
    res->p90 = v[(int)(changes * 0.9)];
    res->p99 = v[(int)(changes * 0.99)];
    res->max = v[changes - 1];
    if (json)
        printf("{\"bench\":\"regionchange\",\"sharers\":%d,\"changes\":%d,\"cpu\":%d,"
               "\"us_p50\":%.1f,\"us_p90\":%.1f,\"us_p99\":%.1f,\"us_max\":%.1f}\n",
               nsharers, changes, cpu, res->p50, res->p90, res->p99, res->max);
    else
        printf("%8d %8d %10.1f %10.1f %10.1f %10.1f\n", nsharers, changes, res->p50, res->p90,
               res->p99, res->max);
out:
    close(hold[1]); /* the sharers detach and exit */
    close(hold[0]);
    close(ready[0]);
    if (ready[1] >= 0)
        close(ready[1]);
    for (int i = 0; i < started; i++)
        waitpid(kids[i], NULL, 0);
    free(kids);
    free(v);
    rpal_region_detach(r);
    rpal_region_unlink(NAME);
    return err;
}

int main(int argc, char **argv)
{
    int json = 0, changes = 1000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--counts")) {
            counts = 1;
        } else if (!strcmp(argv[i], "--changes") && i + 1 < argc) {
            changes = atoi(argv[++i]);
            if (changes < 10)
                changes = 10;
        } else {
            /* --help: the usage on stdout, exit 0; a bad option: stderr, 2. */
            int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            fprintf(help ? stdout : stderr, "usage: %s [--json] [--changes N] [--counts]\n",
                    argv[0]);
            return help ? 0 : 2;
        }
    }
    int cpu = pin();
    if (!json)
        printf("one rpal_region_protect() of a page%s, changer pinned to CPU %d; microseconds\n"
               "%8s %8s %10s %10s %10s %10s\n",
               counts ? " (with counts)" : "", cpu, "sharers", "changes", "p50", "p90", "p99",
               "max");
    static const int counts[] = {1, 8, 64};
    struct result r[3];
    for (unsigned i = 0; i < sizeof counts / sizeof *counts; i++) {
        int err = run(counts[i], counts[i] == 64 ? changes / 4 : changes, json, cpu, &r[i]);
        if (err < 0) {
            fprintf(stderr, "regionchange: %d sharers: %s\n", counts[i], rpal_strerror(err));
            return 1;
        }
    }
    double scale = r[2].p50 / r[1].p50;
    if (json)
        printf("{\"bench\":\"regionchange\",\"p50_64_over_8\":%.2f,\"max_over_p50\":"
               "[%.2f,%.2f,%.2f]}\n",
               scale, r[0].max / r[0].p50, r[1].max / r[1].p50, r[2].max / r[2].p50);
    else
        printf("p50 64/8 sharers: %.2f; max/p50: %.2f, %.2f, %.2f\n", scale,
               r[0].max / r[0].p50, r[1].max / r[1].p50, r[2].max / r[2].p50);
    return 0;
}
