/* One process calls another: round trips between two real processes over
 * every transport people use for that today, and rpal's call.
 *
 * Per transport the benchmark forks a client and a server process and pins
 * them by mode:
 *   poll         client on CPU 0, server on CPU 1; waiting is busy-polling
 *                (kernel transports spin on their non-blocking call);
 *   shared-core  both on CPU 0; waiting blocks (the hand-off is a switch);
 *   idle         client on CPU 0, server started on CPU 1 but free to run on
 *                both (as an unpinned server is); calls start 100 us apart,
 *                so the server is asleep when each call arrives.
 * One call: the client builds SIZE bytes, stamps the TSC into the first 8 at
 * send and sends; the server stamps the TSC when the message is there (read
 * into its buffer, or visible in shared memory for the in-place transports),
 * records receipt - send (one-way latency, TSC cycles), echoes the stamp in
 * a SIZE-byte reply; the client checks the echo before the next call. After
 * a warm-up (10%), N calls are measured: p50/p99 one-way latency, calls/s
 * (client wall time over N) and CPU time per call of both processes
 * (getrusage RUSAGE_SELF in each, over the measured calls only; zeromq's I/O
 * threads count, iox-roudi does not).
 *
 * --throughput instead streams messages one way (producer CPU 0, consumer
 * CPU 1, both polling): pipelined SIZE-byte messages in msgs/s, and large
 * messages (4 KiB .. 1 MiB) in GB/s against memcpy of the same size.
 *
 * Transports are entries of transports[] (and stream_transports[]), one
 * file per transport in bench/call/ behind the interface of
 * bench/call/call.h; rpal's entries are the ones under RPAL_HAVE_CALL. This
 * file holds the options, the harness (client, server, orchestrator), the
 * measurement and the report. Shared-memory transports keep principle 2:
 * each side's block is mapped read-only in the peer (mprotect after fork),
 * so each side writes only its own cache lines. zeromq and iceoryx are
 * compiled when their headers are found and loaded with dlopen at run time,
 * so the program needs no extra link flags; a missing header, library or
 * iox-roudi makes them "skipped" with the reason.
 *
 * Usage: call [--mode poll|shared-core|idle|all] [--size BYTES] [--count N]
 *             [--json] [--transport NAME[,NAME...]] [--plot FILE.png]
 *             [--wait auto|block|poll] [--throughput]
 * See docs/benchmarks.md.
 */
#include "call/call.h" /* the transport interface; bench.h: the helpers shared with bench/load */

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Ticks per second of the stamp clock, against CLOCK_MONOTONIC over 100 ms. */
static double calibrate_hz(void)
{
    int64_t n0 = mono_ns();
    uint64_t c0 = tsc_send();
    int64_t n0b = mono_ns();
    struct timespec d = {0, 100 * 1000 * 1000};
    while (nanosleep(&d, &d) < 0 && errno == EINTR)
        ;
    int64_t n1 = mono_ns();
    uint64_t c1 = tsc_recv();
    int64_t n1b = mono_ns();
    double ns = (double)((n1 + n1b) / 2 - (n0 + n0b) / 2);
    return (double)(c1 - c0) * 1e9 / ns;
}

/* ------------------------------------------------------------------------ */
/* Options, children, the transports                                         */
/* ------------------------------------------------------------------------ */

static int cpu_a = 0, cpu_b = 1, ncpus_ok = 2; /* client, server CPUs */
static const char *const mode_names[NMODES] = {"poll", "shared-core", "idle"};
#define IDLE_GAP_NS 100000 /* idle mode: calls start 100 us apart */
#define MAX_SIZE (1u << 20)

struct opts {
    int modes[NMODES], nmodes;
    size_t size;
    long count;        /* 0: the mode's default */
    int json;
    const char *plot;
    char *list;        /* --transport, or NULL for all */
    int wait;          /* -1 auto, 0 block, 1 poll */
    int throughput;
};

/* Children: who we are, for messages. */
static const char *who_name = "call", *who_side = "";

/* A child's fatal error (bench.h's die_msg prints it through this). */
void bench_died(const char *msg)
{
    fprintf(stderr, "call: %s%s%s: %s\n", who_name, *who_side ? " " : "",
            who_side, msg);
}

unsigned char *txbuf, *rxbuf;

void alloc_bufs(struct ctx *c)
{
    txbuf = aligned_alloc(64, page_round(c->size));
    rxbuf = aligned_alloc(64, page_round(c->size));
    if (!txbuf || !rxbuf)
        die_msg("out of memory");
    memset(txbuf, 0, c->size);
    memset(rxbuf, 0, c->size);
}

void *local_buf(struct ctx *c, int side)
{
    (void)c, (void)side;
    return txbuf;
}

static const struct transport *const transports[] = {
    &tr_rpal, /* RPAL_HAVE_CALL: the real entry, else listed as skipped */
    &tr_rpal_serve, &tr_uds, &tr_pipe, &tr_efd, &tr_spin, &tr_yield, &tr_futex, &tr_zmq,
    &tr_iox,
};
#define NTRANSPORTS (sizeof transports / sizeof transports[0])

/* ------------------------------------------------------------------------ */
/* The harness: client and server loops, the orchestrator                    */
/* ------------------------------------------------------------------------ */

/* The payload after the stamp: a fixed pattern, copied in before stamping. */
static unsigned char *pattern;

static void client_loop(const struct transport *T, struct ctx *c)
{
    struct shared *sh = c->sh;
    long total = c->warm + c->count;
    int idle = c->mode == MODE_IDLE;
    int64_t t0 = mono_ns(), cpu0 = cpu_ns(), next = t0;
    for (long i = 0; i < total; i++) {
        if (idle) {
            struct timespec ts = {next / 1000000000, next % 1000000000};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
            next = mono_ns() + IDLE_GAP_NS;
        }
        unsigned char *p = T->buf(c, CLIENT);
        if (!p)
            die_msg("no buffer to send call %ld", i);
        memcpy(p + 8, pattern + 8, c->size - 8);
        uint64_t stamp = tsc_send();
        memcpy(p, &stamp, 8);
        const unsigned char *q;
        if (T->call) {
            q = T->call(c);
        } else {
            T->send(c, CLIENT);
            q = T->recv(c, CLIENT);
        }
        if (!q)
            die_msg("no reply to call %ld", i);
        uint64_t echo;
        memcpy(&echo, q, 8);
        if (echo != stamp)
            die_msg("the reply to call %ld echoes %" PRIx64 ", not its stamp %" PRIx64,
                    i, echo, stamp);
        if (T->done)
            T->done(c, CLIENT);
        if (i + 1 == c->warm) {
            t0 = mono_ns();
            cpu0 = cpu_ns();
        }
    }
    sh->client_wall_ns = mono_ns() - t0;
    sh->client_cpu_ns = cpu_ns() - cpu0;
}

static void server_loop(const struct transport *T, struct ctx *c)
{
    struct shared *sh = c->sh;
    long total = c->warm + c->count, neg = 0;
    int64_t cpu0 = cpu_ns();
    for (long i = 0; i < total; i++) {
        const unsigned char *m = T->recv(c, SERVER);
        uint64_t now = tsc_recv();
        if (!m)
            die_msg("no message %ld", i);
        uint64_t stamp;
        memcpy(&stamp, m, 8);
        int64_t d = (int64_t)(now - stamp);
        if (i >= c->warm) {
            sh->lat[i - c->warm] = d;
            neg += d < 0;
        }
        unsigned char *p = T->buf(c, SERVER);
        if (!p)
            die_msg("no buffer to reply to %ld", i);
        memcpy(p + 8, pattern + 8, c->size - 8);
        memcpy(p, &stamp, 8);
        T->send(c, SERVER);
        if (T->done)
            T->done(c, SERVER);
        if (i + 1 == c->warm)
            cpu0 = cpu_ns();
    }
    sh->server_cpu_ns = cpu_ns() - cpu0;
    sh->negatives = neg;
}

static void child_main(const struct transport *T, struct ctx *c, int side,
                       int cpu)
{
    who_name = T->name;
    who_side = side == SERVER ? "server" : "client";
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(2, 1); /* stdout is the orchestrator's results only */
    signal(SIGALRM, SIG_DFL);
    if (pin_cpu(cpu) < 0)
        die("sched_setaffinity");
    if (c->mode == MODE_IDLE)
        prctl(PR_SET_TIMERSLACK, 1UL); /* sleep 100 us, not 150 */
    if (c->mode == MODE_IDLE && side == SERVER && ncpus_ok == 2) {
        /* Started on its own CPU, but free to run on the client's, as a
         * server that nobody pinned is: the kernel may move it there at a
         * wake-up, and so may the transport (rpal's receiver follows its
         * caller while it sleeps). Every transport alike. */
        cpu_set_t both;
        CPU_ZERO(&both);
        CPU_SET(cpu_a, &both);
        CPU_SET(cpu_b, &both);
        if (sched_setaffinity(0, sizeof both, &both) < 0)
            die("sched_setaffinity");
    }
    if (side == SERVER) {
        /* Fault the latency array in now, not during the calls. */
        memset(c->sh->lat, 0, (size_t)c->count * sizeof c->sh->lat[0]);
        T->init(c, side);
        /* Release: what init published (scratch) is visible to the client
         * once it sees the flag; pairs with the acquire load below. */
        rpal_store_release(&c->sh->server_ready, 1);
    } else {
        int64_t end = mono_ns() + 30 * 1000000000LL;
        while (!rpal_load_acquire(&c->sh->server_ready)) {
            if (mono_ns() > end)
                die_msg("the server was not ready in 30 s");
            usleep(100);
        }
        T->init(c, side);
    }
    if (T->connect)
        T->connect(c, side);
    if (side == SERVER) {
        server_loop(T, c);
        /* Stay until the client has taken the last reply: closing may throw
         * away a reply still on its way (zmq) or unmap it (rpal). */
        int64_t end = mono_ns() + 30 * 1000000000LL;
        while (!rpal_load_acquire(&c->sh->client_done) && mono_ns() < end)
            usleep(100);
    } else {
        /* Release, both: pair with the server's acquire loads (in its
         * connect, and in the wait above). */
        rpal_store_release(&c->sh->client_ready, 1);
        client_loop(T, c);
        rpal_store_release(&c->sh->client_done, 1);
    }
    if (T->fini)
        T->fini(c, side);
    /* exit, not _exit: libraries' destructors run (iceoryx's runtime
     * unregisters from RouDi in its own). Our stdio was flushed before the
     * fork. */
    exit(0);
}


/* Wait for both children; if one fails, kill the other. Returns 0 if both
 * exited 0, else -1 with WHY. */
static int wait_pair(pid_t a, pid_t b, const char *const names[2], int timeout_s,
                     char *why, size_t len)
{
    pid_t pids[2] = {a, b};
    return bench_wait_pair(pids, names, NULL, timeout_s, NULL, roudi_reaped, why, len);
}

struct result {
    const char *name;
    const char *waits;
    int mode;
    int status;           /* 0 ran, 1 skipped, -1 failed */
    char why[300];
    double p50c, p99c, p50ns, p99ns, calls_s, cpu_ns;
    double c2c;           /* probe_c2c() just before, ns (0: not measured) */
    int64_t *lat;         /* sorted, in ticks; for the plot */
    long n, negatives;
};

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double hz;
static double probe_c2c(void);

/* Forks the server (on its CPU for MODE) and the client of T and waits for
 * both; R->status -1 with R->why if either failed. */
static void run_pair(const struct transport *T, struct ctx *c, int mode, struct result *r)
{
    int scpu = mode == MODE_SHARED ? cpu_a : cpu_b;
    pid_t server = fork();
    if (server == 0)
        child_main(T, c, SERVER, scpu);
    pid_t client = server < 0 ? -1 : fork();
    if (client == 0)
        child_main(T, c, CLIENT, cpu_a);
    if (server < 0 || client < 0) {
        r->status = -1;
        snprintf(r->why, sizeof r->why, "fork: %s", strerror(errno));
        if (server > 0) {
            kill(server, SIGKILL);
            waitpid(server, NULL, 0);
        }
    } else {
        int timeout = 30 + (int)((c->warm + c->count) / 1000);
        static const char *const names[2] = {"server", "client"};
        if (wait_pair(server, client, names, timeout, r->why, sizeof r->why) < 0)
            r->status = -1;
    }
}

/* The figures of a run from what the children left in C->sh: the sorted
 * latencies, their percentiles, calls/s and CPU per call. */
static void summarize(const struct ctx *c, struct result *r)
{
    long n = c->count;
    r->lat = malloc((size_t)n * sizeof(int64_t));
    if (!r->lat) {
        r->status = -1;
        snprintf(r->why, sizeof r->why, "out of memory");
        return;
    }
    memcpy(r->lat, c->sh->lat, (size_t)n * sizeof(int64_t));
    qsort(r->lat, (size_t)n, sizeof(int64_t), cmp_i64);
    r->n = n;
    r->p50c = (double)r->lat[n / 2];
    r->p99c = (double)r->lat[(long)((double)n * 0.99)];
    r->p50ns = r->p50c * 1e9 / hz;
    r->p99ns = r->p99c * 1e9 / hz;
    r->calls_s = c->sh->client_wall_ns > 0
                     ? (double)n * 1e9 / (double)c->sh->client_wall_ns : 0;
    r->cpu_ns = (double)(c->sh->client_cpu_ns + c->sh->server_cpu_ns) / (double)n;
    r->negatives = c->sh->negatives;
}

static void run_latency(const struct transport *T, const struct opts *o,
                        int mode, long count, struct result *r)
{
    memset(r, 0, sizeof *r);
    r->name = T->name;
    r->mode = mode;
    struct ctx c = {.name = T->name, .mode = mode, .size = o->size,
                    .warm = count / 10, .count = count};
    c.poll = o->wait >= 0 ? o->wait : mode == MODE_POLL;
    const char *why = NULL;
    if (mode != MODE_SHARED && ncpus_ok < 2)
        why = "this mode needs two CPUs";
    if (!why && T->skip)
        why = T->skip(&c);
    if (why) {
        r->status = 1;
        snprintf(r->why, sizeof r->why, "%s", why);
        return;
    }
    r->waits = T->waits ? T->waits(&c) : "";
    size_t shlen = page_round(sizeof(struct shared) + (size_t)count * sizeof(int64_t));
    c.sh = map_shared(shlen);
    if (!c.sh) {
        r->status = -1;
        snprintf(r->why, sizeof r->why, "mmap: %s", strerror(errno));
        return;
    }
    int rc = T->setup ? T->setup(&c) : 0;
    if (rc) {
        r->status = rc > 0 ? 1 : -1;
        snprintf(r->why, sizeof r->why, "%s", c.msg);
        if (T->teardown)
            T->teardown(&c);
        munmap(c.sh, shlen);
        return;
    }
    int64_t start = mono_ns();
    if (mode != MODE_SHARED)
        r->c2c = probe_c2c();
    fflush(NULL);
    run_pair(T, &c, mode, r);
    if (T->teardown)
        T->teardown(&c);
    if (r->status == 0)
        summarize(&c, r);
    munmap(c.sh, shlen);
    fprintf(stderr, "call: %-11s %-11s %s (%.1f s)\n", T->name, mode_names[mode],
            r->status == 0 ? "done" : r->status > 0 ? "skipped" : "FAILED",
            (double)(mono_ns() - start) / 1e9);
    if (r->negatives)
        fprintf(stderr, "call: %s: %ld calls were received before they were "
                        "sent by the %s: the CPUs' clocks are not in sync\n",
                T->name, r->negatives, CLOCK_NAME);
}

/* ------------------------------------------------------------------------ */
/* Output                                                                    */
/* ------------------------------------------------------------------------ */

static void print_result(const struct result *r, const struct opts *o)
{
    if (o->json) {
        printf("{\"transport\":");
        json_str(r->name);
        if (r->status) {
            json_not_run(r->status > 0, r->why);
            return;
        }
        printf(",\"mode\":\"%s\",\"size\":%zu,\"p50_cycles\":%.0f,"
               "\"p99_cycles\":%.0f,\"p50_ns\":%.1f,\"p99_ns\":%.1f,"
               "\"calls_per_s\":%.0f,\"cpu_ns_per_call\":%.1f}\n",
               mode_names[r->mode], o->size, r->p50c, r->p99c, r->p50ns,
               r->p99ns, r->calls_s, r->cpu_ns);
        return;
    }
    if (r->status) {
        printf("%-12s %-11s %6zu  %s: %s\n", r->name, mode_names[r->mode], o->size,
               r->status > 0 ? "skipped" : "FAILED", r->why);
        return;
    }
    char c2c[16] = "-";
    if (r->c2c > 0)
        snprintf(c2c, sizeof c2c, "%.0f", r->c2c);
    printf("%-12s %-11s %6zu %9.0f %9.0f %9.1f %9.1f %10.0f %10.1f %6s  %s\n",
           r->name, mode_names[r->mode], o->size, r->p50c, r->p99c, r->p50ns,
           r->p99ns, r->calls_s, r->cpu_ns, c2c, r->waits);
}

/* Where the host put our two CPUs: the median round trip of one cache line
 * between them (two processes, 20,000 round trips), in ns; 0 if it cannot
 * be measured. On a VM it changes from run to run (same L3 or not), and
 * every shared-memory number moves with it. */
static double probe_c2c(void)
{
    enum { ROUNDS = 20000 };
    if (ncpus_ok < 2)
        return 0;
    struct probe {
        _Atomic uint32_t ping __attribute__((aligned(64)));
        _Atomic uint32_t pong __attribute__((aligned(64)));
        int64_t rtt[ROUNDS];
    } *pr = map_shared(page_round(sizeof *pr));
    if (!pr)
        return 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (pin_cpu(cpu_b) < 0)
            _exit(1);
        for (uint32_t i = 1; i <= ROUNDS; i++) {
            while (rpal_load_acquire(&pr->ping) != i) /* pairs with the release below */
                cpu_relax();
            rpal_store_release(&pr->pong, i); /* pairs with the acquire below */
        }
        _exit(0);
    }
    double v = 0;
    if (pid > 0) {
        cpu_set_t old;
        sched_getaffinity(0, sizeof old, &old);
        pin_cpu(cpu_a);
        for (uint32_t i = 1; i <= ROUNDS; i++) {
            uint64_t t = tsc_send();
            rpal_store_release(&pr->ping, i);
            while (rpal_load_acquire(&pr->pong) != i)
                cpu_relax();
            pr->rtt[i - 1] = (int64_t)(tsc_recv() - t);
        }
        sched_setaffinity(0, sizeof old, &old);
        int st;
        waitpid(pid, &st, 0);
        qsort(pr->rtt, ROUNDS, sizeof pr->rtt[0], cmp_i64);
        v = (double)pr->rtt[ROUNDS / 2] * 1e9 / hz;
    }
    munmap(pr, page_round(sizeof *pr));
    return v;
}

/* A header: what the numbers are and what they were taken on. On stdout
 * for the table, on stderr with --json. */
static void print_header(const struct opts *o, FILE *f)
{
    char model[256] = "unknown CPU", line[4096];
    int ctsc = 0, ntsc = 0;
    FILE *ci = fopen("/proc/cpuinfo", "r");
    if (ci) {
        while (fgets(line, sizeof line, ci)) {
            if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
                snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
                model[strcspn(model, "\n")] = 0;
            }
            if (!strncmp(line, "flags", 5)) {
                ctsc = strstr(line, " constant_tsc") != NULL;
                ntsc = strstr(line, " nonstop_tsc") != NULL;
            }
        }
        fclose(ci);
    }
    struct utsname u;
    uname(&u);
    char sib[64] = "";
    snprintf(line, sizeof line,
             "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list", cpu_a);
    FILE *sf = fopen(line, "r");
    if (sf) {
        if (fgets(sib, sizeof sib, sf))
            sib[strcspn(sib, "\n")] = 0;
        fclose(sf);
    }
    fprintf(f, "# %s, Linux %s; client CPU %d, server CPU %d (CPU %d's SMT "
               "siblings: %s)\n",
            model, u.release, cpu_a, cpu_b, cpu_a, sib[0] ? sib : "?");
    double rtt = probe_c2c();
    if (rtt > 0)
        fprintf(f, "# one cache line between CPUs %d and %d: %.0f ns round trip (median; "
                   "it moves with the host's placement of the CPUs, and so does every "
                   "shared-memory number)\n", cpu_a, cpu_b, rtt);
    fprintf(f, "# %s %.1f MHz (calibrated against CLOCK_MONOTONIC over 100 ms)",
            CLOCK_NAME, hz / 1e6);
#if defined(__x86_64__) || defined(__i386__)
    if (ctsc && ntsc)
        fprintf(f, "; constant_tsc nonstop_tsc: invariant, one clock on all CPUs\n");
    else
        fprintf(f, "; WARNING: %s%s missing in /proc/cpuinfo: cross-CPU "
                   "latencies may be skewed\n",
                ctsc ? "" : "constant_tsc ", ntsc ? "" : "nonstop_tsc");
#else
    (void)ctsc, (void)ntsc;
    fprintf(f, "\n");
#endif
    (void)o;
}

static void print_table_head(int mode, const struct opts *o, long count)
{
    char buf[200];
    if (mode == MODE_POLL)
        snprintf(buf, sizeof buf, "client CPU %d, server CPU %d; waiters busy-poll",
                 cpu_a, cpu_b);
    else if (mode == MODE_SHARED)
        snprintf(buf, sizeof buf, "client and server both on CPU %d; waiters "
                 "block or yield", cpu_a);
    else
        snprintf(buf, sizeof buf, "client CPU %d, server started on CPU %d, free to "
                 "run on both; calls start 100 us apart, waiters block", cpu_a, cpu_b);
    printf("\nmode %s: %s\n%zu-byte messages, %ld calls after %ld warm-up; "
           "one-way latency (send stamp to receipt);\ncalls/s over the "
           "client's wall time; CPU of both processes per call; c2c: one cache\n"
           "line's round trip between the two CPUs just before (where the host "
           "placed them)\n",
           mode_names[mode], buf, o->size, count, count / 10);
    printf("%-12s %-11s %6s %9s %9s %9s %9s %10s %10s %6s  %s\n", "transport",
           "mode", "size", "p50 cyc", "p99 cyc", "p50 ns", "p99 ns", "calls/s",
           "cpu ns/call", "c2c ns", "how they wait");
}

/* ------------------------------------------------------------------------ */
/* --plot: latency CDFs with gnuplot                                         */
/* ------------------------------------------------------------------------ */

/* FILE, with "-MODE" before the extension when MULTI (one plot per mode). */
static void plot_name(const char *file, int multi, int mode, char *out, size_t len)
{
    const char *dot = strrchr(file, '.');
    if (multi && dot && !strchr(dot, '/'))
        snprintf(out, len, "%.*s-%s%s", (int)(dot - file), file,
                 mode_names[mode], dot);
    else if (multi)
        snprintf(out, len, "%s-%s", file, mode_names[mode]);
    else
        snprintf(out, len, "%s", file);
}

/* Each result's CDF into DIR/K.dat, and gnuplot's plot command for them
 * into CMD; returns how many curves there are. */
static int write_curves(const char *dir, const struct result *res, int nres, char *cmd,
                        size_t cmdlen)
{
    char path[4200];
    size_t cl = 0;
    int nplots = 0;
    cmd[0] = 0;
    for (int k = 0; k < nres; k++) {
        const struct result *r = &res[k];
        if (r->status || !r->n)
            continue;
        snprintf(path, sizeof path, "%s/%d.dat", dir, k);
        FILE *d = fopen(path, "w");
        if (!d)
            continue;
        /* At most ~20,000 points per curve, and the top 1% in full. */
        long step = r->n > 20000 ? r->n / 20000 : 1;
        long tail = (long)((double)r->n * 0.99);
        for (long i = 0; i < r->n; i += (i >= tail ? 1 : step)) {
            double ns = (double)r->lat[i] * 1e9 / hz;
            fprintf(d, "%.1f %.6f\n", ns < 1 ? 1 : ns,
                    (double)(i + 1) / (double)r->n);
        }
        fclose(d);
        cl += (size_t)snprintf(cmd + cl, cmdlen - cl,
                               "%s'%s' using 1:2 with lines lw %d lc rgb '%s' title '%s'",
                               nplots ? ", \\\n  " : "plot ", path,
                               strcmp(r->name, "rpal") ? 2 : 4,
                               bench_color(nplots), r->name);
        if (cl >= cmdlen)
            break;
        nplots++;
    }
    return nplots;
}

/* Write FILE (with "-MODE" before the extension when MULTI) from the results
 * of one mode: the per-call latencies go to temp files, gnuplot draws their
 * CDFs. Returns 0, or -1 with a message printed. */
static int plot(const char *file, int multi, int mode, const struct opts *o,
                const struct result *res, int nres, long count)
{
    if (!find_in_path("gnuplot")) {
        fprintf(stderr, "call: --plot: gnuplot is missing (Debian package "
                        "gnuplot-nox); no plot written\n");
        return -1;
    }
    char out[4096];
    plot_name(file, multi, mode, out, sizeof out);
    if (strchr(out, '\'')) {
        fprintf(stderr, "call: --plot: no quote in the file name, please\n");
        return -1;
    }
    char dir[] = "/tmp/rpal-bench-plot-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("call: mkdtemp");
        return -1;
    }
    char path[4200], script[4200], cmd[8192];
    int nplots = write_curves(dir, res, nres, cmd, sizeof cmd);
    int rc = -1;
    snprintf(script, sizeof script, "%s/plot.gp", dir);
    /* pngcairo first; the plain png terminal if this gnuplot lacks it. */
    for (int attempt = 0; nplots && attempt < 2 && rc; attempt++) {
        FILE *gp = fopen(script, "w");
        if (!gp)
            break;
        fprintf(gp,
                "set terminal %s size 1100,650\n"
                "set output '%s'\n"
                "set title 'rpal bench call: one-way latency, mode %s, %zu-byte "
                "messages, %ld calls per transport' noenhanced\n"
                "set xlabel 'one-way latency (ns, log scale)'\n"
                "set ylabel 'fraction of calls at or below'\n"
                "set logscale x\nset format x '%%g'\nset grid\nset key bottom right noenhanced\n"
                "set yrange [0:1]\n%s\n",
                attempt ? "png" : "pngcairo", out, mode_names[mode], o->size,
                count, cmd);
        fclose(gp);
        rc = run_gnuplot(script);
    }
    for (int k = 0; k < nres; k++) {
        snprintf(path, sizeof path, "%s/%d.dat", dir, k);
        unlink(path);
    }
    unlink(script);
    rmdir(dir);
    if (!nplots)
        fprintf(stderr, "call: --plot: no transport ran; no plot written\n");
    else if (rc)
        fprintf(stderr, "call: --plot: gnuplot failed; no plot written\n");
    else
        fprintf(stderr, "call: latency CDFs written to %s\n", out);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* --throughput: pipelined one-way streams                                   */
/* ------------------------------------------------------------------------ */

static const struct stream_transport *const stream_transports[] = {
    &st_rpal, /* RPAL_HAVE_CALL: the real entry, else listed as skipped */
#ifdef RPAL_HAVE_CALL
    &st_rpal_copy,
#endif
    &st_spin, &st_spin_copy,
};
#define NSTREAMS (sizeof stream_transports / sizeof stream_transports[0])
#define NSTREAMS_MAX 8

/* Runs one stream; returns bytes per second of payload delivered (or
 * messages per second with BY_MSG), 0 with WHY if skipped, -1 if failed. */
static double run_stream(const struct stream_transport *T, size_t size,
                         uint64_t nslots, uint64_t count, int by_msg,
                         char *why, size_t wlen, int *skipped)
{
    struct sctx c = {.size = size, .nslots = nslots, .count = count,
                     .warm = count / 10, .copy_out = T->copy_out};
    c.stride = size <= 64 ? size : page_round(size);
    *skipped = 0;
    const char *s = ncpus_ok < 2 ? "needs two CPUs" : T->skip ? T->skip(&c) : NULL;
    if (s) {
        snprintf(why, wlen, "%s", s);
        *skipped = 1;
        return 0;
    }
    c.sh = map_shared(page_round(sizeof *c.sh));
    if (!c.sh) {
        snprintf(why, wlen, "mmap: %s", strerror(errno));
        return -1;
    }
    int rc = T->setup ? T->setup(&c) : 0;
    double v = -1;
    if (rc) {
        snprintf(why, wlen, "%s", c.msg);
        *skipped = rc > 0;
        v = rc > 0 ? 0 : -1;
    } else {
        fflush(NULL);
        pid_t cons = fork();
        if (cons == 0) {
            who_name = T->name, who_side = "consumer";
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(2, 1);
            if (pin_cpu(cpu_b) < 0)
                die("sched_setaffinity");
            rpal_store_release(&c.sh->consumer_ready, 1); /* pairs below */
            T->consumer(&c);
            _exit(0);
        }
        pid_t prod = cons < 0 ? -1 : fork();
        if (prod == 0) {
            who_name = T->name, who_side = "producer";
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(2, 1);
            if (pin_cpu(cpu_a) < 0)
                die("sched_setaffinity");
            while (!rpal_load_acquire(&c.sh->consumer_ready))
                usleep(100);
            T->producer(&c);
            _exit(0);
        }
        if (cons < 0 || prod < 0) {
            snprintf(why, wlen, "fork: %s", strerror(errno));
            if (cons > 0) {
                kill(cons, SIGKILL);
                waitpid(cons, NULL, 0);
            }
        } else if (wait_pair(cons, prod, (const char *const[2]){"consumer", "producer"},
                             60 + (int)(count / 100000), why, wlen) == 0) {
            double secs = (double)(c.sh->t1 - c.sh->t0) / 1e9;
            v = secs > 0 ? (double)count * (by_msg ? 1.0 : (double)size) / secs : -1;
            if (v < 0)
                snprintf(why, wlen, "no time measured");
        }
    }
    if (T->teardown)
        T->teardown(&c);
    munmap(c.sh, page_round(sizeof *c.sh));
    return v;
}

/* memcpy of SIZE bytes between two private buffers, in this process pinned
 * to the producer's CPU; bytes per second. */
static double memcpy_rate(size_t size, uint64_t count)
{
    cpu_set_t old;
    sched_getaffinity(0, sizeof old, &old);
    pin_cpu(cpu_a);
    unsigned char *src = aligned_alloc(64, page_round(size));
    unsigned char *dst = aligned_alloc(64, page_round(size));
    double v = 0;
    if (src && dst) {
        memset(src, 1, size);
        memset(dst, 2, size);
        for (uint64_t i = 0; i < count / 10; i++) {
            memcpy(dst, src, size);
            ESCAPE(dst);
        }
        int64_t t = mono_ns();
        for (uint64_t i = 0; i < count; i++) {
            memcpy(dst, src, size);
            ESCAPE(dst);
        }
        v = (double)count * (double)size * 1e9 / (double)(mono_ns() - t);
    }
    free(src);
    free(dst);
    sched_setaffinity(0, sizeof old, &old);
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define STREAM_REPS_MSG 3
#define STREAM_REPS_BW 5

/* Runs every transport of LIST (N of them) REPS times, alternating
 * transports run by run so that a change of the host's placement of our
 * CPUs or of its load hits them alike, and leaves in V[i] the median of
 * LIST[i]'s runs (or 0 and SKIPPED[i]/WHY[i] if it was skipped, -1 if a
 * run failed). With MEMCPY_SIZE, entry N is memcpy of that size. */
static void alternate_streams(const struct stream_transport *const *list, int n,
                              size_t size, uint64_t nslots, uint64_t count,
                              int by_msg, int reps, size_t memcpy_size,
                              double *v, int *skipped, char (*why)[300])
{
    double runs[NSTREAMS_MAX + 1][STREAM_REPS_BW];
    int m = n + (memcpy_size > 0);
    for (int i = 0; i < m; i++) {
        v[i] = 1;
        skipped[i] = 0;
        why[i][0] = 0;
    }
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < m; i++) {
            if (v[i] <= 0)
                continue; /* skipped or failed */
            runs[i][r] = i == n ? memcpy_rate(memcpy_size, count)
                                : run_stream(list[i], size, nslots, count, by_msg,
                                             why[i], sizeof why[i], &skipped[i]);
            if (runs[i][r] <= 0)
                v[i] = runs[i][r];
        }
    for (int i = 0; i < m; i++)
        if (v[i] > 0) {
            qsort(runs[i], (size_t)reps, sizeof runs[i][0], cmp_double);
            v[i] = runs[i][reps / 2];
        }
}

static int want_name(const struct opts *o, const char *name)
{
    if (!o->list)
        return 1;
    size_t n = strlen(name);
    for (const char *p = o->list; *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && !strncmp(p, name, n))
            return 1;
        p += k + (p[k] == ',');
    }
    return 0;
}

/* A "-copy" variant runs when its base transport is asked for. */
static int stream_wanted(const struct opts *o, const struct stream_transport *T)
{
    char base[64];
    size_t n = strlen(T->name);
    if (want_name(o, T->name))
        return 1;
    if (!T->copy_out || n < 5 || n - 5 >= sizeof base)
        return 0;
    snprintf(base, sizeof base, "%.*s", (int)(n - 5), T->name);
    return want_name(o, base);
}

/* One row of --throughput output: V is msgs/s (BW 0) or bytes/s (BW 1, MC
 * is memcpy's bytes/s); V <= 0 is a skip (SKIPPED) or a failure, WHY. */
static void stream_row(const struct opts *o, const struct stream_transport *T,
                       size_t size, int bw, double v, double mc, int skipped,
                       const char *why)
{
    if (o->json) {
        printf("{\"transport\":");
        json_str(T->name);
        if (v <= 0) {
            json_not_run(skipped, why);
        } else if (!bw) {
            printf(",\"mode\":\"throughput\",\"size\":%zu,\"msgs_per_s\":%.0f}\n",
                   size, v);
        } else {
            printf(",\"mode\":\"bandwidth\",\"size\":%zu,\"gb_per_s\":%.2f,"
                   "\"memcpy_gb_per_s\":%.2f,\"ratio\":%.3f}\n",
                   size, v / 1e9, mc / 1e9, v / mc);
        }
    } else if (v <= 0) {
        printf("%-14s %7zu  %s: %s\n", T->name, size,
               skipped ? "skipped" : "FAILED", why);
    } else if (!bw) {
        printf("%-14s %7zu %14.0f %9.2f  %s\n", T->name, size, v, 1e9 / v, T->what);
    } else {
        printf("%-14s %7zu %9.2f %12.2f %7.3f\n", T->name, size, v / 1e9,
               mc / 1e9, v / mc);
    }
    fflush(stdout);
}

static int run_throughput(const struct opts *o)
{
    int failed = 0, n = 0, skipped[NSTREAMS_MAX + 1];
    uint64_t count = o->count > 0 ? (uint64_t)o->count : 10000000;
    const struct stream_transport *list[NSTREAMS_MAX];
    double v[NSTREAMS_MAX + 1];
    static char why[NSTREAMS_MAX + 1][300];

    for (size_t t = 0; t < NSTREAMS && n < NSTREAMS_MAX; t++)
        if (want_name(o, stream_transports[t]->name) && !stream_transports[t]->copy_out)
            list[n++] = stream_transports[t];
    if (!o->json)
        printf("\npipelined one-way messages: producer CPU %d, consumer CPU %d, "
               "both busy-poll; %" PRIu64 " %zu-byte messages after %" PRIu64
               " warm-up,\nmedian of %d runs (transports alternate run by run)\n"
               "%-14s %7s %14s %9s  %s\n",
               cpu_a, cpu_b, count, o->size, count / 10, STREAM_REPS_MSG,
               "transport", "size", "msgs/s", "ns/msg", "what");
    fprintf(stderr, "call: throughput, %d transports x %d runs\n", n, STREAM_REPS_MSG);
    alternate_streams(list, n, o->size, 4096, count, 1, STREAM_REPS_MSG, 0, v,
                      skipped, why);
    for (int i = 0; i < n; i++) {
        failed |= v[i] < 0;
        stream_row(o, list[i], o->size, 0, v[i], 0, skipped[i], why[i]);
    }

    static const size_t sizes[] = {4096, 16384, 65536, 262144, 1048576};
    const uint64_t bytes = 256ull << 20; /* per run */
    n = 0;
    for (size_t t = 0; t < NSTREAMS && n < NSTREAMS_MAX; t++)
        if (stream_wanted(o, stream_transports[t]))
            list[n++] = stream_transports[t];
    if (!o->json)
        printf("\nlarge messages one way, %d MiB per run, median of %d runs "
               "(transports and memcpy alternate run by run):\nthe producer "
               "copies each message from private memory into its ring of 4 "
               "buffers; the consumer reads it\nin place (sums its words) or "
               "copies it out (-copy). memcpy: the same size, private to "
               "private,\nin one process on CPU %d\n%-14s %7s %9s %12s %7s\n",
               (int)(bytes >> 20), STREAM_REPS_BW, cpu_a, "transport", "size",
               "GB/s", "memcpy GB/s", "ratio");
    int said_skip[NSTREAMS_MAX] = {0};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t size = sizes[k];
        fprintf(stderr, "call: bandwidth %zu bytes\n", size);
        alternate_streams(list, n, size, 4, bytes / size, 0, STREAM_REPS_BW, size,
                          v, skipped, why);
        for (int i = 0; i < n; i++) {
            if (said_skip[i])
                continue;
            failed |= v[i] < 0;
            said_skip[i] = v[i] <= 0 && skipped[i];
            stream_row(o, list[i], size, 1, v[i], v[n], skipped[i], why[i]);
        }
    }
    return failed;
}

/* ------------------------------------------------------------------------ */
/* main                                                                      */
/* ------------------------------------------------------------------------ */

/* On stdout with exit 0 when asked for (--help), else on stderr with 2. */
static void usage_exit(const char *argv0, int code)
{
    FILE *f = code ? stderr : stdout;
    fprintf(f,
            "usage: %s [--mode poll|shared-core|idle|all] [--size BYTES] "
            "[--count N]\n"
            "          [--json] [--transport NAME[,NAME...]] [--plot FILE.png]\n"
            "          [--wait auto|block|poll] [--throughput]\n"
            "transports:",
            argv0);
    for (size_t t = 0; t < NTRANSPORTS; t++)
        fprintf(f, " %s", transports[t]->name);
    fprintf(f, "\n");
    exit(code);
}

static void usage(const char *argv0) { usage_exit(argv0, 2); }

static int known_name(const char *p, size_t k)
{
    for (size_t t = 0; t < NTRANSPORTS; t++)
        if (strlen(transports[t]->name) == k && !strncmp(p, transports[t]->name, k))
            return 1;
    for (size_t t = 0; t < NSTREAMS; t++)
        if (strlen(stream_transports[t]->name) == k &&
            !strncmp(p, stream_transports[t]->name, k))
            return 1;
    return 0;
}

/* The client and server CPUs: 0 and 1 if we may use them, else the first
 * two we may. */
static void choose_cpus(void)
{
    ncpus_ok = bench_choose_cpus(&cpu_a, &cpu_b);
}

/* The options into O; --help prints the usage (exit 0), a bad option a
 * message and the usage on stderr (exit 2). */
static void parse_args(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_exit(argv[0], 0);
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--throughput")) {
            o->throughput = 1;
        } else if (!strcmp(a, "--mode") && v) {
            i++;
            o->nmodes = 0;
            for (int m = 0; m < NMODES; m++)
                if (!strcmp(v, mode_names[m]) || !strcmp(v, "all"))
                    o->modes[o->nmodes++] = m;
            if (!o->nmodes)
                usage(argv[0]);
        } else if (!strcmp(a, "--size") && v) {
            i++;
            char *end;
            unsigned long long s = strtoull(v, &end, 0);
            if (*end || s < 8 || s > MAX_SIZE) {
                fprintf(stderr, "call: --size is 8 to %u bytes\n", MAX_SIZE);
                exit(2);
            }
            o->size = (size_t)s;
        } else if (!strcmp(a, "--count") && v) {
            i++;
            char *end;
            long n = strtol(v, &end, 0);
            if (*end || n < 1 || n > 100000000) {
                fprintf(stderr, "call: --count is 1 to 100000000\n");
                exit(2);
            }
            o->count = n;
        } else if (!strcmp(a, "--transport") && v) {
            i++;
            o->list = strdup(v);
            for (const char *p = v; *p;) {
                size_t k = strcspn(p, ",");
                if (!known_name(p, k)) {
                    fprintf(stderr, "call: unknown transport '%.*s'\n", (int)k, p);
                    usage(argv[0]);
                }
                p += k + (p[k] == ',');
            }
        } else if (!strcmp(a, "--plot") && v) {
            o->plot = argv[++i];
        } else if (!strcmp(a, "--wait") && v) {
            i++;
            o->wait = !strcmp(v, "block") ? 0 : !strcmp(v, "poll") ? 1
                   : !strcmp(v, "auto") ? -1 : -2;
            if (o->wait == -2)
                usage(argv[0]);
        } else {
            usage(argv[0]);
        }
    }
    if (!o->nmodes)
        o->modes[o->nmodes++] = MODE_POLL;
}

/* Each mode of O: every transport asked for, a row each (and the plot);
 * returns nonzero if one failed. */
static int run_modes(const struct opts *o)
{
    int failed = 0;
    for (int mi = 0; mi < o->nmodes; mi++) {
        int mode = o->modes[mi];
        long count = o->count ? o->count : mode == MODE_IDLE ? 10000 : 100000;
        struct result res[NTRANSPORTS];
        int nres = 0;
        if (!o->json)
            print_table_head(mode, o, count);
        for (size_t t = 0; t < NTRANSPORTS; t++) {
            if (!want_name(o, transports[t]->name))
                continue;
            struct result *r = &res[nres++];
            run_latency(transports[t], o, mode, count, r);
            failed |= r->status < 0;
            print_result(r, o);
            fflush(stdout);
        }
        if (o->plot && plot(o->plot, o->nmodes > 1, mode, o, res, nres, count))
            failed = 1;
        for (int k = 0; k < nres; k++)
            free(res[k].lat);
    }
    return failed;
}

int main(int argc, char **argv)
{
    struct opts o = {.size = 32, .wait = -1};
    parse_args(argc, argv, &o);

    struct sigaction sa = {.sa_handler = bench_on_alarm}; /* no SA_RESTART */
    sigaction(SIGALRM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    choose_cpus();
    hz = calibrate_hz();
    print_header(&o, o.json ? stderr : stdout);
    fflush(stdout);
    pattern = malloc(MAX_SIZE);
    if (!pattern)
        return 1;
    for (size_t i = 0; i < MAX_SIZE; i++)
        pattern[i] = (unsigned char)(i * 7 + 1);

    int failed = o.throughput ? run_throughput(&o) : run_modes(&o);
    double rtt = probe_c2c();
    if (rtt > 0)
        fprintf(o.json ? stderr : stdout, "\n# one cache line between CPUs %d and %d at "
                "the end: %.0f ns round trip\n", cpu_a, cpu_b, rtt);
    stop_roudi();
    free(pattern);
    free(o.list);
    return failed ? 1 : 0;
}

