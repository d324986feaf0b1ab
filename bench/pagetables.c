/* Page tables paid once: what N processes that map one region pay in page
 * tables, with 4 KiB pages and with a huge region (RPAL_REGION_HUGE).
 *
 * For each case the benchmark creates a region of SIZE bytes in a namespace
 * directory of its own, forks N children and waits until they all sit idle;
 * then it reads PageTables from /proc/meminfo (the baseline), lets the
 * children attach the region and write one byte in every 4 KiB page of it,
 * waits until all of them are done and still hold the mapping, and reads
 * PageTables again. The growth, divided by N, is what one process pays in
 * page tables for the region. Both readings are taken after folding the
 * per-CPU vmstat counters (writing /proc/sys/vm/stat_refresh, as root) and
 * after PageTables has stopped moving (page tables of exited processes are
 * freed after an RCU grace period), so the children of the previous case do
 * not count. Each case runs --rounds times; the median round is reported.
 *
 * With --huge, the huge case needs SIZE / 2 MiB free huge pages and a
 * hugetlbfs: if there is none and we are root, one is mounted in a private
 * mount namespace, and vm.nr_hugepages is raised by the shortfall and put
 * back at exit (tests/hugesetup.h). If that cannot be done the benchmark
 * exits 77 with the reason.
 *
 * Usage: pagetables [--procs N] [--size SIZE] [--huge] [--json] [--rounds R]
 *                   [--max-ratio R]
 *   --procs N      processes (default 64)
 *   --size SIZE    region size, K/M/G suffixes (default 1G; with --huge a
 *                  multiple of 1 GiB)
 *   --huge         also the huge case, and the ratio of the two
 *   --json         one JSON object per line per case
 *   --rounds R     rounds per case, the median is reported (default 3)
 *   --max-ratio R  exit 1 if huge per-process growth > R x the 4 KiB one
 */
#include "rpal.h"
/* rpal__prim_huge_dir(): the hugetlbfs the library uses, which hugesetup.h needs
 * too; an internal of the library. */
#include "../src/internal.h"
#include "../tests/hugesetup.h" /* test and benchmark support: mounts hugetlbfs */

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct huge_setup hs;
static int have_hs;
static char cur_name[64]; /* the region of the round under way */

static long long parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-')
        return -1;
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    }
    if (*end || v > (1ull << 50) >> shift)
        return -1;
    return (long long)(v << shift);
}

/* PageTables in KiB, after folding the per-CPU counters when we may. */
static long pagetables_kib(void)
{
    int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        /* -EINVAL when some counter is transiently negative: harmless. */
        ssize_t w = write(fd, "1", 1);
        (void)w;
        close(fd);
    }
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "PageTables: %ld kB", &v) == 1)
            break;
    fclose(f);
    return v;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Wait (up to 5 s) until PageTables reads the same three times 50 ms apart;
 * the last reading. */
static long settled_kib(void)
{
    long last = pagetables_kib();
    int same = 0;
    for (int i = 0; i < 100 && same < 2; i++) {
        sleep_ms(50);
        long v = pagetables_kib();
        same = v == last ? same + 1 : 0;
        last = v;
    }
    return last;
}

static int read_n(int fd, int n, char *bad)
{
    for (int got = 0; got < n;) {
        char c;
        ssize_t k = read(fd, &c, 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        if (c != 'a' && c != 'r')
            *bad = c;
        got++;
    }
    return 0;
}

/* Write one byte in every 4 KiB page. Not instrumented by AddressSanitizer:
 * its check of every store would fault in the shadow of the whole region
 * (1/8 of its size), whose page tables would count too. */
__attribute__((no_sanitize_address, noinline))
static void touch(volatile char *p, uint64_t size)
{
    for (uint64_t off = 0; off < size; off += 4096)
        p[off + 64] = 1;
}

static void child(const char *name, uint64_t size, int rfd_go, int rfd_quit, int wfd,
                  uint64_t mark)
{
    char c = 'a';
    if (write(wfd, &c, 1) != 1)
        _exit(1);
    while (read(rfd_go, &c, 1) < 0 && errno == EINTR)
        ; /* end of file: go */
    rpal_region *r;
    int err = rpal_region_attach(name, 0, &r);
    c = 'E';
    if (err == 0) {
        volatile char *p = rpal_region_addr(r);
        if (*(volatile uint64_t *)p == mark) {
            touch(p, size);
            c = 'r';
        } else {
            c = 'M';
        }
    }
    if (write(wfd, &c, 1) != 1)
        _exit(1);
    while (read(rfd_quit, &c, 1) < 0 && errno == EINTR)
        ; /* end of file: done; the mapping goes with the process */
    _exit(err == 0 ? 0 : 1);
}

#define FAILED LONG_MIN

/* One round: the growth of PageTables, in KiB, with PROCS processes that
 * hold the region (noise can make it negative); FAILED on failure. */
static long round_once(int huge, int procs, uint64_t size, int k, double *secs)
{
    char *name = cur_name;
    snprintf(name, sizeof cur_name, "pagetables-%d-%d", (int)getpid(), k);
    rpal_region *r;
    int err = rpal_region_create(name, size, 0600, huge ? RPAL_REGION_HUGE : 0, &r);
    if (err < 0) {
        fprintf(stderr, "pagetables: create %s%s: %s\n", name, huge ? " (huge)" : "",
                rpal_strerror(err));
        return FAILED;
    }
    uint64_t mark = 0x5061676554616231ull ^ (uint64_t)k;
    *(uint64_t *)rpal_region_addr(r) = mark;
    rpal_region_detach(r);

    int go[2], quit[2], ready[2];
    if (pipe2(go, O_CLOEXEC) || pipe2(quit, O_CLOEXEC) || pipe2(ready, O_CLOEXEC)) {
        perror("pipe");
        exit(1);
    }
    pid_t *pids = calloc((size_t)procs, sizeof *pids);
    if (!pids)
        exit(1);
    int started = 0;
    for (; started < procs; started++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            break;
        }
        if (pid == 0) {
            if (have_hs)
                huge_setup_child(&hs);
            close(go[1]), close(quit[1]), close(ready[0]);
            child(name, size, go[0], quit[0], ready[1], mark);
        }
        pids[started] = pid;
    }
    close(go[0]), close(quit[0]), close(ready[1]);
    long growth = FAILED;
    char bad = 0;
    if (started == procs && read_n(ready[0], procs, &bad) == 0) {
        long before = settled_kib();
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        close(go[1]);
        go[1] = -1;
        if (read_n(ready[0], procs, &bad) == 0 && !bad) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            growth = pagetables_kib() - before;
            *secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        } else {
            fprintf(stderr, "pagetables: a child %s\n",
                    bad == 'M' ? "saw other contents than the creator wrote"
                    : bad      ? "could not attach the region"
                               : "died");
        }
    } else {
        fprintf(stderr, "pagetables: could not start %d processes\n", procs);
    }
    if (go[1] >= 0)
        close(go[1]);
    close(quit[1]);
    close(ready[0]);
    for (int i = 0; i < started; i++)
        waitpid(pids[i], NULL, 0);
    free(pids);
    err = rpal_region_unlink(name);
    if (err < 0)
        fprintf(stderr, "pagetables: unlink %s: %s\n", name, rpal_strerror(err));
    name[0] = 0;
    return growth;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

struct result {
    long total_kib, min_kib, max_kib;
    double per_proc, secs;
};

static int run_case(int huge, int procs, uint64_t size, int rounds, struct result *res)
{
    long v[64];
    double secs = 0, s;
    for (int k = 0; k < rounds; k++) {
        v[k] = round_once(huge, procs, size, k + (huge ? 1000 : 0), &s);
        if (v[k] == FAILED)
            return -1;
        secs += s;
    }
    qsort(v, (size_t)rounds, sizeof *v, cmp_long);
    res->total_kib = v[rounds / 2];
    res->min_kib = v[0];
    res->max_kib = v[rounds - 1];
    res->per_proc = (double)res->total_kib / procs;
    res->secs = secs / rounds;
    return 0;
}

static char ns_dir[64];

static void cleanup(void)
{
    if (getpid() != hs.owner)
        return;
    if (cur_name[0])
        rpal_region_unlink(cur_name);
    if (have_hs)
        huge_teardown(&hs);
    if (ns_dir[0] && getpid() == hs.owner) {
        char reg[128];
        snprintf(reg, sizeof reg, "%s/.rpal-registry", ns_dir);
        unlink(reg);
        rmdir(ns_dir);
    }
}

/* Interrupted: the main thread sits in read() or waitpid(), so cleaning up
 * from here is safe in practice. Killed by SIGKILL, the guardian still puts
 * vm.nr_hugepages back and removes the mount point, but the namespace
 * directory (/dev/shm/rpal-bench-*) and its region stay. */
static void on_signal(int sig)
{
    cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

struct args {
    int procs, huge, json, rounds;
    long long size;
    double max_ratio;
};

static void usage(const char *argv0, int code)
{
    fprintf(code ? stderr : stdout, "usage: %s [--procs N] [--size SIZE] [--huge] [--json] "
            "[--rounds R] [--max-ratio R]\n", argv0);
    exit(code);
}

/* --help: the usage on stdout, exit 0; a bad option: on stderr, exit 2. */
static void parse_args(int argc, char **argv, struct args *o)
{
    *o = (struct args){.procs = 64, .rounds = 3, .size = 1ll << 30};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            usage(argv[0], 0);
        else if (!strcmp(a, "--huge"))
            o->huge = 1;
        else if (!strcmp(a, "--json"))
            o->json = 1;
        else if (!strcmp(a, "--procs") && i + 1 < argc)
            o->procs = atoi(argv[++i]);
        else if (!strcmp(a, "--rounds") && i + 1 < argc)
            o->rounds = atoi(argv[++i]);
        else if (!strcmp(a, "--size") && i + 1 < argc)
            o->size = parse_size(argv[++i]);
        else if (!strcmp(a, "--max-ratio") && i + 1 < argc)
            o->max_ratio = atof(argv[++i]);
        else
            usage(argv[0], 2);
    }
    if (o->procs < 1 || o->procs > 4096 || o->rounds < 1 || o->rounds > 64 ||
        o->size <= 0 || o->size % 4096)
        usage(argv[0], 2);
    if (o->huge && o->size % (long long)RPAL_HUGE_ALIGN) {
        fprintf(stderr, "pagetables: with --huge, --size is a multiple of 1 GiB\n");
        exit(2);
    }
}

static void print_results(const struct args *o, const struct result *res, double ratio)
{
    if (!o->json) {
        printf("%-6s %12s %16s %14s %10s\n", "pages", "total KiB", "per process KiB",
               "rounds min..max", "attach+touch s");
    }
    for (int c = 0; c <= o->huge; c++) {
        const struct result *r = &res[c];
        if (o->json) {
            printf("{\"procs\":%d,\"size\":%lld,\"huge\":%s,\"page_size\":%llu,"
                   "\"rounds\":%d,\"pagetables_kib_total\":%ld,"
                   "\"pagetables_kib_per_proc\":%.1f,\"pagetables_kib_total_min\":%ld,"
                   "\"pagetables_kib_total_max\":%ld,\"seconds\":%.3f",
                   o->procs, o->size, c ? "true" : "false",
                   (unsigned long long)(c ? RPAL_HUGE_PAGE : 4096), o->rounds, r->total_kib,
                   r->per_proc, r->min_kib, r->max_kib, r->secs);
            if (c)
                printf(",\"ratio_to_4k\":%.4f", ratio);
            printf("}\n");
        } else {
            char mm[48];
            snprintf(mm, sizeof mm, "%ld..%ld", r->min_kib, r->max_kib);
            printf("%-6s %12ld %16.1f %14s %10.3f\n", c ? "2 MiB" : "4 KiB", r->total_kib,
                   r->per_proc, mm, r->secs);
        }
    }
    if (o->huge && !o->json)
        printf("huge / 4 KiB per process: %.2f%%\n", 100 * ratio);
}

int main(int argc, char **argv)
{
    struct args o;
    parse_args(argc, argv, &o);
    int procs = o.procs, huge = o.huge, json = o.json, rounds = o.rounds;
    long long size = o.size;
    setvbuf(stdout, NULL, _IOLBF, 0);
    hs.owner = getpid();
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);

    /* A namespace directory of our own, unless one is given. */
    const char *dir = getenv("RPAL_DIR");
    if (!dir || !*dir) {
        snprintf(ns_dir, sizeof ns_dir, "/dev/shm/rpal-bench-XXXXXX");
        if (!mkdtemp(ns_dir)) {
            perror("mkdtemp");
            return 1;
        }
        setenv("RPAL_DIR", ns_dir, 1);
    }
    atexit(cleanup);

    long nr_before = huge_nr_read();
    if (huge) {
        if (huge_setup(&hs, (uint64_t)size / RPAL_HUGE_PAGE) < 0) {
            printf("pagetables --huge: %s\n", hs.why);
            return 77;
        }
        have_hs = 1;
    }
    char hdir[HUGE_DIR_MAX] = "-";
    if (huge)
        rpal__prim_huge_dir(hdir, sizeof hdir);

    struct utsname u;
    uname(&u);
    FILE *info = json ? stderr : stdout;
    fprintf(info, "pagetables: %d processes, region of %lld MiB, every 4 KiB page "
            "written; kernel %s %s\n", procs, size >> 20, u.release, u.machine);
    if (huge)
        fprintf(info, "hugetlbfs: %s%s; vm.nr_hugepages %ld -> %ld (put back at exit)\n",
                hdir, hs.mnt[0] ? " (private mount)" : "", nr_before, huge_nr_read());

    struct result res[2];
    for (int c = 0; c <= huge; c++) {
        if (run_case(c, procs, (uint64_t)size, rounds, &res[c]) < 0)
            return 1;
    }
    double ratio = huge ? res[1].per_proc / res[0].per_proc : 0;
    print_results(&o, res, ratio);
    if (huge && o.max_ratio > 0 && ratio > o.max_ratio) {
        fprintf(stderr, "pagetables: huge per-process growth %.1f KiB is over %.3f x "
                "the 4 KiB case's %.1f KiB\n", res[1].per_proc, o.max_ratio, res[0].per_proc);
        return 1;
    }
    return 0;
}
