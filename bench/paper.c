/* The RPAL paper's measurement, reproduced: its sample benchmark (a client
 * sends 32-byte messages stamped with the TSC, one at a time; the server,
 * blocking in epoll_wait, adds "TSC at receipt - stamp" for each and echoes
 * it back) run over epoll + a Unix-domain socket and over rpal, with the two
 * example pairs examples/{uds,rpal}_echo_{server,client}, which differ in a
 * few lines (docs/compat.md).
 *
 * Each pair runs as two real processes started with exec, client pinned to
 * CPU 0 and server to CPU 1 (or the first two CPUs we may use), with a
 * private socket path and namespace directory (RPAL_DIR) under a temporary
 * directory ($TMPDIR or /tmp) that is removed at the end, also when the run
 * is interrupted (the children are stopped first). Printed: the server's line as the
 * paper prints it, for each transport; the ratio of the average latencies
 * against the paper's 19616 / 1703 = 11.5; and the CPU time per message of
 * each process (user + system over the process's whole life, from wait4),
 * which says what the latency costs.
 *
 * Usage: paper [--count N] [--size BYTES] [--json] [--transport uds|rpal|uds,rpal]
 *              [--pidns] [--rounds N]
 *   --count N    messages per transport (default 1000000, as the paper)
 *   --json       one JSON object per transport, then one with the ratio
 *   --pidns      also the rpal pair with the server in a pid and mount
 *                namespace of its own (a container's; root), and the ratio
 *                of its latency to the pair's in one namespace
 *   --rounds N   run the pairs N times, alternated, and report each one's
 *                median run (default 1; 3 with --pidns)
 * Progress goes to stderr. Exit 1 if a pair failed.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../examples/echo_common.h" /* stamp(): the clock of the examples */

/* The paper's figures (RPAL RFC v2 cover letter). */
#define PAPER_UDS 19616.0
#define PAPER_RPAL 1703.0
/* How long a child may stay silent before it gives up (its --timeout). */
#define CHILD_TIMEOUT_MS "10000"

struct transport {
    const char *name, *label, *server, *client;
    int pidns; /* the server in a pid (and mount) namespace of its own */
};
static const struct transport transports[] = {
    {"epoll+uds", "epoll+UDS", "uds_echo_server", "uds_echo_client", 0},
    {"rpal", "rpal", "rpal_echo_server", "rpal_echo_client", 0},
    {"rpal-pidns", "rpal/pidns", "rpal_echo_server", "rpal_echo_client", 1},
};
#define NTRANSPORTS (sizeof transports / sizeof transports[0])

struct result {
    int ok;
    char line[256];                      /* the server's line, as printed */
    uint64_t total, count, avg;
    double rtt_ns, client_cpu_ns, server_cpu_ns, secs;
};

static char bindir[PATH_MAX];            /* where the example programs are */
/* $TMPDIR/rpal-paper-XXXXXX, or under /tmp when $TMPDIR is unset or too
 * long for the socket path that goes in it. */
static char tmpdir[80];
static int cpu_client, cpu_server;
static double hz;
/* Ctrl-C or a kill: the children are stopped and the temporary directory
 * removed before we go. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig) { interrupted = sig; }

static double mono_s(void) { return now_ns() / 1e9; }

/* Ticks of stamp() per second, over 100 ms of CLOCK_MONOTONIC. */
static double calibrate_hz(void)
{
    double t0 = mono_s();
    uint64_t c0 = stamp();
    struct timespec d = {0, 100 * 1000 * 1000};
    while (nanosleep(&d, &d) < 0 && errno == EINTR)
        ;
    uint64_t c1 = stamp();
    return (double)(c1 - c0) / (mono_s() - t0);
}

/* The example programs: beside this one's build directory (build/bench/paper
 * and build/examples/), or beside it when installed (libexec/rpal/). */
static int find_programs(void)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = 0;
    *strrchr(self, '/') = 0;
    const char *tries[] = {"%s/../examples", "%s"};
    for (size_t i = 0; i < 2; i++) {
        char probe[PATH_MAX + 64];
        snprintf(bindir, sizeof bindir, tries[i], self);
        snprintf(probe, sizeof probe, "%s/%s", bindir, transports[0].server);
        if (access(probe, X_OK) == 0)
            return 0;
    }
    fprintf(stderr, "paper: no %s in %s/../examples or %s\n", transports[0].server, self, self);
    return -1;
}

/* Client and server CPUs: 0 and 1 if we may use them, else the first two we
 * may (one CPU: both on it). */
static void choose_cpus(void)
{
    cpu_set_t set;
    int found[2] = {0, 0}, n = 0;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        return;
    for (int i = 0; i < CPU_SETSIZE && n < 2; i++)
        if (CPU_ISSET(i, &set))
            found[n++] = i;
    cpu_client = found[0];
    cpu_server = n > 1 ? found[1] : found[0];
}

/* In the child about to exec the server of a PIDNS transport: new pid and
 * mount namespaces, as a container's, with a /proc of its own; the server
 * runs as their pid 1, this process waits for it and exits as it did (its
 * CPU time counts in ours: wait4 adds a reaped child's). Returns in the
 * server's process; exits on failure. */
static void enter_pidns(void)
{
    if (unshare(CLONE_NEWPID | CLONE_NEWNS) < 0) {
        fprintf(stderr, "paper: --pidns: unshare: %s (root is needed)\n", strerror(errno));
        _exit(126);
    }
    pid_t init = fork();
    if (init > 0) {
        int st;
        while (waitpid(init, &st, 0) < 0 && errno == EINTR)
            ;
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* stopped with us */
    if (init < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
        fprintf(stderr, "paper: --pidns: %s\n", strerror(errno));
        _exit(126);
    }
}

/* Starts PROG ARGS... with its stdout into a pipe; *OUT gets the read end. */
static pid_t start(const char *prog, char *const *args, int *out, int pidns)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        if (pidns)
            enter_pidns();
        dup2(p[1], 1);
        char path[PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/%s", bindir, prog);
        execv(path, args);
        fprintf(stderr, "paper: %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return -1;
    }
    *out = p[0];
    return pid;
}

static void read_line(int fd, char *buf, size_t len)
{
    size_t have = 0;
    ssize_t n;
    while (have + 1 < len && (n = read(fd, buf + have, len - 1 - have)) > 0)
        have += (size_t)n;
    buf[have] = 0;
    buf[strcspn(buf, "\n")] = 0;
    close(fd);
}

static double cpu_ns(const struct rusage *ru)
{
    return (ru->ru_utime.tv_sec + ru->ru_stime.tv_sec) * 1e9 +
           (ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) * 1e3;
}

/* Did the child end well? Says why not on stderr. */
static int exited_ok(const char *prog, int status)
{
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;
    if (WIFEXITED(status))
        fprintf(stderr, "paper: %s exited with status %d\n", prog, WEXITSTATUS(status));
    else
        fprintf(stderr, "paper: %s killed by signal %d\n", prog, WTERMSIG(status));
    return 0;
}

/* Waits for the server and the client of T, whichever ends first: if it
 * failed, the other is stopped rather than left to time out (the server
 * normally ends just after the client). Their CPU times go to R; 1 if both
 * ended well. */
static int wait_both(const struct transport *t, pid_t server, pid_t client, struct result *r)
{
    int ok = 1, status;
    struct rusage ru;
    while (server > 0 || client > 0) {
        pid_t pid = wait4(-1, &status, 0, &ru);
        if (pid < 0 && errno == EINTR) { /* interrupted: stop them both */
            if (server > 0)
                kill(server, SIGTERM);
            if (client > 0)
                kill(client, SIGTERM);
            continue;
        }
        if (pid < 0)
            break;
        int is_client = pid == client;
        if (!exited_ok(is_client ? t->client : t->server, status)) {
            ok = 0;
            pid_t other = is_client ? server : client;
            if (other > 0)
                kill(other, SIGTERM);
        }
        if (is_client) {
            r->client_cpu_ns = cpu_ns(&ru);
            client = 0;
        } else {
            r->server_cpu_ns = cpu_ns(&ru);
            server = 0;
        }
    }
    return ok;
}

/* Checks the lines the server (R->line) and the client (CLINE) of T
 * printed and takes the figures from them into R; 1 if they are right. */
static int parse_lines(const struct transport *t, const char *count, const char *cline,
                       struct result *r)
{
    size_t len;
    if (sscanf(r->line, "Message length: %zu bytes, Total TSC cycles: %" SCNu64
               ", Message count: %" SCNu64 ", Average latency: %" SCNu64 " cycles",
               &len, &r->total, &r->count, &r->avg) != 4) {
        fprintf(stderr, "paper: %s printed \"%s\", not the paper's line\n", t->server, r->line);
        return 0;
    }
    if (sscanf(cline, "Echoed: %*u messages of %*u bytes, all correct, average round trip: %lf ns",
               &r->rtt_ns) != 1) {
        fprintf(stderr, "paper: %s printed \"%s\"\n", t->client, cline);
        return 0;
    }
    if (r->count != strtoull(count, NULL, 0)) {
        fprintf(stderr, "paper: %s counted %" PRIu64 " messages, not %s\n", t->server, r->count, count);
        return 0;
    }
    if (r->count) {
        r->client_cpu_ns /= r->count;
        r->server_cpu_ns /= r->count;
    }
    return 1;
}

static void run(const struct transport *t, const char *count, const char *size, struct result *r)
{
    char sock[sizeof tmpdir + 16], ccpu[16], scpu[16]; /* fits sun_path (108) */
    snprintf(sock, sizeof sock, "%s/echo.sock", tmpdir);
    snprintf(ccpu, sizeof ccpu, "%d", cpu_client);
    snprintf(scpu, sizeof scpu, "%d", cpu_server);
    char *sargs[] = {(char *)t->server, "--socket", sock, "--size", (char *)size,
                     "--cpu", scpu, "--timeout", CHILD_TIMEOUT_MS, NULL};
    char *cargs[] = {(char *)t->client, "--socket", sock, "--count", (char *)count,
                     "--size", (char *)size, "--cpu", ccpu, "--timeout", CHILD_TIMEOUT_MS, NULL};
    memset(r, 0, sizeof *r);
    fprintf(stderr, "paper: %s: %s messages ...\n", t->label, count);
    double t0 = mono_s();

    int sout, cout, status;
    pid_t server = start(t->server, sargs, &sout, t->pidns);
    if (server < 0) {
        fprintf(stderr, "cannot start %s: %s\n", t->server, strerror(errno));
        return;
    }
    /* The client starts once the server's socket is there. */
    struct stat st;
    unlink(sock); /* a server of an earlier pair that died left it */
    while (stat(sock, &st) < 0) {
        if (interrupted)
            kill(server, SIGTERM);
        if (waitpid(server, &status, WNOHANG) == server) {
            exited_ok(t->server, status);
            close(sout);
            return;
        }
        usleep(1000);
    }
    pid_t client = start(t->client, cargs, &cout, 0);
    if (client < 0) {
        fprintf(stderr, "cannot start %s: %s\n", t->client, strerror(errno));
        kill(server, SIGTERM);
        waitpid(server, &status, 0);
        close(sout);
        return;
    }
    int ok = wait_both(t, server, client, r);
    char cline[256];
    read_line(sout, r->line, sizeof r->line);
    read_line(cout, cline, sizeof cline);
    r->secs = mono_s() - t0;
    r->ok = ok && parse_lines(t, count, cline, r);
    fprintf(stderr, "paper: %s: %s (%.1f s)\n", t->label, r->ok ? "done" : "FAILED", r->secs);
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *f)
{
    (void)st, (void)type, (void)f;
    return remove(path);
}

static void usage(int code)
{
    fprintf(code ? stderr : stdout, "usage: rpal bench paper [--count N] [--size BYTES] [--json] "
                                    "[--transport uds|rpal|uds,rpal] [--pidns] [--rounds N]\n");
    exit(code);
}

struct paper_opts {
    const char *count, *size;
    int json, want[NTRANSPORTS], rounds;
};

/* --help: the usage on stdout, exit 0; a bad option: on stderr, exit 2. */
static void paper_args(int argc, char **argv, struct paper_opts *o)
{
    *o = (struct paper_opts){.count = "1000000", .size = "32", .want = {1, 1, 0}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(0);
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--count") && v) {
            unsigned long long n = strtoull(v, &end, 0);
            if (*end || n < 1 || n > 1000000000)
                usage(2);
            o->count = argv[++i];
        } else if (!strcmp(a, "--size") && v) {
            unsigned long s = strtoul(v, &end, 0);
            if (*end || s < 8 || s > 65536)
                usage(2);
            o->size = argv[++i];
        } else if (!strcmp(a, "--pidns")) {
            o->want[2] = 1;
        } else if (!strcmp(a, "--rounds") && v) {
            unsigned long n = strtoul(v, &end, 0);
            if (*end || n < 1 || n > 99)
                usage(2);
            o->rounds = (int)n;
            i++;
        } else if (!strcmp(a, "--transport") && v) {
            o->want[0] = strstr(v, "uds") != NULL;
            o->want[1] = strstr(v, "rpal") != NULL;
            if (!o->want[0] && !o->want[1])
                usage(2);
            i++;
        } else {
            usage(2);
        }
    }
    if (!o->rounds)
        o->rounds = o->want[2] ? 3 : 1;
    if (o->want[2] && !o->want[1])
        usage(2); /* the pidns pair is compared with the one-namespace pair */
}

/* A private directory for the socket and the children's namespace
 * directory, removed at the end; 0 or -1. */
static int make_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base || strlen(base) > sizeof tmpdir - sizeof "/rpal-paper-XXXXXX")
        base = "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/rpal-paper-XXXXXX", base);
    if (!mkdtemp(tmpdir)) {
        perror("paper: mkdtemp");
        return -1;
    }
    /* The children's namespace directory: private, so that nothing of
     * another run or user is in the way, and removed with the rest. */
    char nsdir[sizeof tmpdir + 8];
    snprintf(nsdir, sizeof nsdir, "%s/rpal", tmpdir);
    setenv("RPAL_DIR", nsdir, 1);
    return 0;
}

/* The servers' lines (or JSON objects), the ratio, then a table. */
static void print_results(const struct paper_opts *o, const struct result *res)
{
    const int *want = o->want;
    for (size_t t = 0; t < NTRANSPORTS; t++) {
        const struct result *r = &res[t];
        if (!want[t] || !r->ok)
            continue;
        char label[32];
        snprintf(label, sizeof label, "%s:", transports[t].label);
        if (o->json)
            printf("{\"transport\":\"%s\",\"size\":%s,\"count\":%" PRIu64 ",\"total_cycles\":%" PRIu64
                   ",\"avg_cycles\":%" PRIu64 ",\"avg_ns\":%.1f,\"rtt_ns\":%.0f"
                   ",\"client_cpu_ns_per_msg\":%.0f,\"server_cpu_ns_per_msg\":%.0f}\n",
                   transports[t].name, o->size, r->count, r->total, r->avg, r->avg * 1e9 / hz,
                   r->rtt_ns, r->client_cpu_ns, r->server_cpu_ns);
        else
            printf("%-10s %s\n", label, r->line);
    }
    int both = want[0] && want[1] && res[0].ok && res[1].ok && res[1].avg > 0;
    double ratio = both ? (double)res[0].avg / res[1].avg : 0;
    int ns = want[2] && res[1].ok && res[2].ok && res[1].avg > 0;
    double nsratio = ns ? (double)res[2].avg / res[1].avg : 0;
    double nsuds = ns && want[0] && res[0].ok && res[2].avg ? (double)res[0].avg / res[2].avg : 0;
    if (o->json) {
        if (both)
            printf("{\"ratio\":%.2f,\"target\":%.1f}\n", ratio, PAPER_UDS / PAPER_RPAL);
        if (ns && nsuds > 0)
            printf("{\"pidns_ratio\":%.3f,\"pidns_target\":1.1,\"uds_over_pidns\":%.1f}\n",
                   nsratio, nsuds);
        else if (ns)
            printf("{\"pidns_ratio\":%.3f,\"pidns_target\":1.1}\n", nsratio);
        return;
    }
    if (ns)
        printf("pidns ratio (rpal, server in its own pid namespace / in ours): %.3f (target: <= 1.1)\n",
               nsratio);
    if (ns && nsuds > 0)
        printf("epoll+UDS / rpal across pid namespaces: %.1f (target: >= 10)\n", nsuds);
    if (both)
        printf("ratio (epoll+UDS / rpal average latency): %.1f (target: %.1f, the paper's %.0f / %.0f cycles)\n",
               ratio, PAPER_UDS / PAPER_RPAL, PAPER_UDS, PAPER_RPAL);
    printf("\n%-10s %12s %12s %14s %18s %18s\n", "transport", "avg cycles", "avg ns",
           "round trip ns", "client CPU ns/msg", "server CPU ns/msg");
    for (size_t t = 0; t < NTRANSPORTS; t++) {
        const struct result *r = &res[t];
        if (want[t] && r->ok)
            printf("%-10s %12" PRIu64 " %12.0f %14.0f %18.0f %18.0f\n", transports[t].label,
                   r->avg, r->avg * 1e9 / hz, r->rtt_ns, r->client_cpu_ns, r->server_cpu_ns);
    }
    printf("(CPU: user + system time of each process over its whole run, per message)\n");
}

static int by_avg(const void *a, const void *b)
{
    const struct result *x = a, *y = b;
    return (x->avg > y->avg) - (x->avg < y->avg);
}

/* O->rounds rounds of every wanted pair, one after the other in each round
 * (so that a change of the machine's load reaches them alike); RES[t] gets
 * pair t's median round. 1 if a run failed. */
static int run_rounds(const struct paper_opts *o, struct result *res)
{
    struct result *all = calloc((size_t)o->rounds * NTRANSPORTS, sizeof *all);
    int failed = 0;
    if (!all)
        return 1;
    for (int k = 0; k < o->rounds && !interrupted; k++)
        for (size_t t = 0; t < NTRANSPORTS && !interrupted; t++) {
            if (!o->want[t])
                continue;
            struct result *r = &all[t * (size_t)o->rounds + (size_t)k];
            run(&transports[t], o->count, o->size, r);
            failed |= !r->ok;
        }
    for (size_t t = 0; t < NTRANSPORTS; t++) {
        struct result *rs = &all[t * (size_t)o->rounds];
        qsort(rs, (size_t)o->rounds, sizeof *rs, by_avg);
        res[t] = rs[o->rounds / 2];
        if (o->rounds > 1 && o->want[t] && !o->json)
            for (int k = 0; k < o->rounds; k++)
                fprintf(stderr, "paper: %s round: %" PRIu64 " cycles\n", transports[t].label,
                        rs[k].avg);
    }
    free(all);
    return failed;
}

int main(int argc, char **argv)
{
    struct paper_opts o;
    paper_args(argc, argv, &o);
    const char *count = o.count, *size = o.size;
    int json = o.json;
    if (find_programs() < 0)
        return 1;
    if (make_tmpdir() < 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: wait4 returns */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    choose_cpus();
    hz = calibrate_hz();

    FILE *info = json ? stderr : stdout;
    const char *spin = getenv("RPAL_SPIN_US");
    fprintf(info, "# the RPAL paper's sample benchmark: %s messages of %s bytes, one at a time;\n"
                  "# client on CPU %d, server on CPU %d waiting in epoll_wait (blocking) or\n"
                  "# rpal_epoll_wait (%s%s%s); %s %.1f MHz\n",
            count, size, cpu_client, cpu_server,
            spin ? "RPAL_SPIN_US=" : "the learned wait: spin, yield or sleep",
            spin ? spin : "", spin ? "" : "", STAMP_CLOCK, hz / 1e6);
    fflush(info);

    struct result res[NTRANSPORTS] = {0};
    int failed = run_rounds(&o, res);
    if (nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
        fprintf(stderr, "paper: could not remove %s: %s\n", tmpdir, strerror(errno));
    if (interrupted) {
        fprintf(stderr, "paper: interrupted\n");
        return 128 + interrupted;
    }

    print_results(&o, res);
    return failed;
}
