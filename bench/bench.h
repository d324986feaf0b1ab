/* What the benchmarks that fork a client and a server share, so that they
 * pin, time, account CPU, draw and set up rpal the same way: bench/call
 * (transports compared) and bench/load.c (latency and CPU against load).
 * Everything is static inline, so that each program takes what it uses.
 *
 * A program that includes this defines bench_died(), its report of a fatal
 * error in a child; die_msg() formats the message, calls it and ends the
 * process, for the helpers below and for the programs' own hot paths. */
#ifndef RPAL_BENCH_H
#define RPAL_BENCH_H

#include "rpal.h"
/* The benchmarks' own shared-memory transports and handshakes name the
 * ordering of every shared access, as the library does: its atomics header
 * (the one src/ header they need). */
#include "../src/atomics.h"
#include "../tools/json.h" /* json_str() */

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The including program's report of a fatal error in a child (who it is,
 * what went wrong); die_msg() calls it, then ends the process. Defined once
 * per program (bench/call is several files). */
void bench_died(const char *msg);

static inline void die_msg(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static inline void die_msg(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    bench_died(buf);
    _exit(1);
}

static inline int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* The kernel's accounting of this process, all its threads: CPU time (user +
 * system; the total is the scheduler's exact run time, only its split into
 * user and system is sampled) and context switches. */
struct bench_usage {
    int64_t cpu_ns;
    int64_t nvcsw;  /* voluntary: it blocked (a sleep, a wait) */
    int64_t nivcsw; /* involuntary: the scheduler preempted it */
};

static inline struct bench_usage bench_usage(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    struct bench_usage u = {
        (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
            (int64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000,
        ru.ru_nvcsw, ru.ru_nivcsw};
    return u;
}

/* CPU time of this process (all its threads), user + system. */
static inline int64_t cpu_ns(void) { return bench_usage().cpu_ns; }

static inline int pin_cpu(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

/* The client's and the server's CPUs: 0 and 1 if we may use them, else the
 * first two we may. Returns how many of the two we have (1: both are the
 * one CPU; on an error, 2 with CPUs 0 and 1). */
static inline int bench_choose_cpus(int *a, int *b)
{
    cpu_set_t set;
    int found[2] = {-1, -1}, n = 0;
    *a = 0, *b = 1;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        return 2;
    if (CPU_ISSET(0, &set) && CPU_ISSET(1, &set))
        return 2;
    for (int i = 0; i < CPU_SETSIZE && n < 2; i++)
        if (CPU_ISSET(i, &set))
            found[n++] = i;
    *a = found[0] < 0 ? 0 : found[0];
    *b = found[1] < 0 ? *a : found[1];
    return n;
}

static inline size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

/* Memory shared with the children forked after this. */
static inline void *map_shared(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* 1 if PROG is an executable in $PATH. */
static inline int find_in_path(const char *prog)
{
    const char *path = getenv("PATH");
    char buf[4096];
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        snprintf(buf, sizeof buf, "%.*s/%s", (int)n, path, prog);
        if (n && access(buf, X_OK) == 0)
            return 1;
        path += n + (path[n] == ':');
    }
    return 0;
}

/* Ends the JSON object of something that did not run: ,"skipped":WHY} when
 * SKIPPED, else ,"error":WHY}, and the line. */
static inline void json_not_run(int skipped, const char *why)
{
    printf(",\"%s\":", skipped ? "skipped" : "error");
    json_str(why);
    printf("}\n");
}

/* Runs `gnuplot SCRIPT` (its output to our stderr); 0 if it succeeded. */
static inline int run_gnuplot(const char *script)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(2, 1);
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* The plots' curve colours, the same order in every plot (the first for
 * rpal in bench/call's). */
static inline const char *bench_color(int i)
{
    static const char *const c[] = {
        "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd",
        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    return c[(unsigned)i % 10];
}

/* ---- the orchestrator: two children, a deadline ---- */

/* Set by bench_on_alarm, the SIGALRM handler (installed without
 * SA_RESTART, so that waitpid returns) behind bench_wait_pair's deadline. */
static volatile sig_atomic_t bench_alarm_fired;
static inline void bench_on_alarm(int sig)
{
    (void)sig;
    bench_alarm_fired = 1;
}

/* Waits for the two children PID[0] and PID[1] (NAME[i] for messages),
 * setting each PID[i] to 0 once reaped. The first that fails, the deadline
 * (TIMEOUT_S) or *STOP (if not NULL; set by a signal handler) kills the
 * other. A child that failed is described by ERR[i] when that is a
 * non-empty text it left (ERR may be NULL), else by how it ended. REAPED,
 * if not NULL, is told of any other child reaped meanwhile. Returns 0 if
 * both exited 0, else -1 with WHY. */
static inline int bench_wait_pair(pid_t pid[2], const char *const name[2],
                                  const char *const err[2], int timeout_s,
                                  volatile sig_atomic_t *stop, void (*reaped)(pid_t),
                                  char *why, size_t len)
{
    int left = (pid[0] > 0) + (pid[1] > 0), bad = 0;
    bench_alarm_fired = 0;
    alarm((unsigned)timeout_s);
    while (left) {
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0) {
            if (errno == ECHILD)
                break;
            if ((bench_alarm_fired || (stop && *stop)) && !bad) {
                if (stop && *stop)
                    snprintf(why, len, "interrupted");
                else
                    snprintf(why, len, "no result after %d s (killed)", timeout_s);
                bad = 1;
                for (int i = 0; i < 2; i++)
                    if (pid[i] > 0)
                        kill(pid[i], SIGKILL);
            }
            continue;
        }
        int i = p == pid[0] ? 0 : p == pid[1] ? 1 : -1;
        if (i < 0) {
            if (reaped)
                reaped(p);
            continue;
        }
        pid[i] = 0;
        left--;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            continue;
        if (!bad) {
            if (err && err[i] && *err[i])
                snprintf(why, len, "the %s: %s", name[i], err[i]);
            else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
                snprintf(why, len, "the %s passed its own deadline", name[i]);
            else if (WIFSIGNALED(st))
                snprintf(why, len, "the %s died of signal %d", name[i], WTERMSIG(st));
            else
                snprintf(why, len, "the %s exited with status %d (see stderr)", name[i],
                         WEXITSTATUS(st));
        }
        bad = 1;
        if (pid[!i] > 0)
            kill(pid[!i], SIGKILL);
    }
    alarm(0);
    return bad ? -1 : 0;
}

/* ---- rpal's call: the service in one child, the caller in the other ---- */

static inline void rpal_die(const char *what, int err) __attribute__((noreturn));
static inline void rpal_die(const char *what, int err)
{
    die_msg("%s: %s", what, rpal_strerror(err));
}

/* One side's rpal objects (the server's service and receiver, the
 * client's peer and channel). */
struct bench_rpal {
    rpal_domain *d;
    rpal_service *svc;
    rpal_receiver *r;
    struct rpal_msg m;   /* the server's current request */
    rpal_peer *peer;
    rpal_chan *chan;
};

static inline void bench_rpal_join(const char *domain, struct bench_rpal *b)
{
    int err = rpal_domain_join(domain, NULL, &b->d);
    if (err < 0)
        rpal_die("rpal_domain_join", err);
}

/* Server: join DOMAIN, register SERVICE, create a receiver with O (NULL:
 * the library's defaults) and publish "SERVICE KEY" in SCRATCH for the
 * client. */
static inline void bench_rpal_serve(struct bench_rpal *b, const char *domain,
                                    const char *service, const struct rpal_chan_opts *o,
                                    char *scratch, size_t len)
{
    bench_rpal_join(domain, b);
    int err = rpal_service_register(b->d, service, 0, NULL, NULL, &b->svc);
    if (err < 0)
        rpal_die("rpal_service_register", err);
    if ((err = rpal_receiver_create(b->svc, o, &b->r)) < 0)
        rpal_die("rpal_receiver_create", err);
    rpal_key k;
    char text[33];
    rpal_service_key(b->svc, &k);
    rpal_key_format(&k, text);
    snprintf(scratch, len, "%s %s", service, text);
}

/* Client (joined): request the service named in SCRATCH and open a channel
 * with O (NULL: the defaults), waiting at most TIMEOUT_MS for each. */
static inline void bench_rpal_open(struct bench_rpal *b, const char *scratch,
                                   const struct rpal_chan_opts *o, int timeout_ms)
{
    char name[64], text[33];
    rpal_key k;
    if (sscanf(scratch, "%63s %32s", name, text) != 2 || rpal_key_parse(text, &k) < 0)
        die_msg("no service name and key from the server");
    int err = rpal_service_request(b->d, name, &k, timeout_ms, &b->peer);
    if (err < 0)
        rpal_die("rpal_service_request", err);
    for (int tries = 0;; tries++) {
        err = rpal_chan_open(b->peer, o, timeout_ms, &b->chan);
        if (err != -EAGAIN || tries == 100)
            break;
        usleep(10000);
    }
    if (err < 0)
        rpal_die("rpal_chan_open", err);
}

/* Server: answer handshakes (rpal_domain_dispatch) until FLAG is set by the
 * client, at most TIMEOUT_S seconds. */
static inline void bench_rpal_dispatch_until(struct bench_rpal *b, _Atomic int *flag,
                                             int timeout_s)
{
    int64_t end = mono_ns() + timeout_s * 1000000000LL;
    while (!rpal_load_acquire(flag)) { /* pairs with the client's release */
        struct rpal_event ev[8];
        int n = rpal_domain_dispatch(b->d, ev, 8, 5);
        if (n < 0 && n != -ETIMEDOUT && n != -EINTR)
            rpal_die("rpal_domain_dispatch", n);
        if (mono_ns() > end)
            die_msg("the client did not connect in %d s", timeout_s);
    }
}

/* Server: the next request, of SIZE bytes, into B->m; at most TIMEOUT_MS. */
static inline const void *bench_rpal_receive(struct bench_rpal *b, size_t size,
                                             int timeout_ms)
{
    int err;
    while ((err = rpal_receive(b->r, &b->m, timeout_ms)) == -EINTR)
        ;
    if (err < 0)
        rpal_die("rpal_receive", err);
    if (b->m.len != size)
        die_msg("rpal_receive: a %zu-byte request, not %zu", b->m.len, size);
    return b->m.data;
}

/* Server: close what bench_rpal_serve made; client: the channel. Then leave. */
static inline void bench_rpal_fini(struct bench_rpal *b)
{
    if (b->chan)
        rpal_chan_close(b->chan);
    if (b->r)
        rpal_receiver_destroy(b->r);
    if (b->svc)
        rpal_service_unregister(b->svc);
    rpal_domain_leave(b->d);
}

#endif
