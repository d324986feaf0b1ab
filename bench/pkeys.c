/* What an access window costs: rpal_peer_access_begin + rpal_peer_access_end
 * on a peer, against an empty loop, in one thread pinned to one CPU. A
 * service process (forked, joins the domain and registers) and this one, its
 * requester, share slots; then three cases are timed in batches, alternated
 * batch by batch so that frequency changes hit all alike:
 *
 *   empty    the loop alone (the time base);
 *   window   begin + end on the peer (the caller's "open, read, close" with
 *            no read): where the machine has protection keys, the peer gets
 *            a key of its own on the first window and keeps it, so this is
 *            the common case (two writes of PKRU); without keys the window
 *            only counts;
 *   pinned   the same while a channel pins the peer (its pages under key
 *            0: what the call path does for a reply read in place).
 *
 * Usage: pkeys [--count N] [--json]   (N windows per batch, 100000)
 * Prints ns per window (median and 99th percentile batch) and whether keys
 * were on (RPAL_CAP_PKU). Under an emulator the figures mean nothing.
 */
#include "rpal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BATCHES 200

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static volatile int stop_recv;
static rpal_service *svc;

static void *receiver_main(void *arg)
{
    (void)arg;
    rpal_receiver *r;
    if (rpal_receiver_create(svc, NULL, &r) < 0)
        return NULL;
    while (!stop_recv) {
        struct rpal_msg m;
        if (rpal_receive(r, &m, 50) == 0)
            rpal_reply(r, &m, m.data, m.len);
    }
    rpal_receiver_destroy(r);
    return NULL;
}

static int service(int keyfd, int quitfd)
{
    rpal_domain *d;
    if (rpal_domain_join("bpkeys", NULL, &d) < 0 ||
        rpal_service_register(d, "w", 0600, NULL, NULL, &svc) < 0)
        return 1;
    pthread_t th;
    pthread_create(&th, NULL, receiver_main, NULL);
    rpal_key k;
    char text[33];
    rpal_service_key(svc, &k);
    rpal_key_format(&k, text);
    if (write(keyfd, text, 33) != 33)
        return 1;
    for (;;) {
        struct rpal_event ev[8];
        rpal_domain_dispatch(d, ev, 8, 20);
        struct pollfd pf = {quitfd, POLLIN, 0};
        if (poll(&pf, 1, 0) == 1)
            break;
    }
    stop_recv = 1;
    pthread_join(th, NULL);
    rpal_domain_leave(d);
    return 0;
}

/* ns per iteration of one batch of CASE (0 empty, 1 window). */
static double batch(rpal_peer *p, int what, long count)
{
    double t0 = now_ns();
    if (what == 0) {
        for (long i = 0; i < count; i++)
            __asm__ volatile("" ::: "memory");
    } else {
        for (long i = 0; i < count; i++) {
            rpal_peer_access_begin(p);
            __asm__ volatile("" ::: "memory");
            rpal_peer_access_end(p);
        }
    }
    return (now_ns() - t0) / (double)count;
}

static void report(const char *name, double *v, int n, int json, int pku)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    double med = v[n / 2], p99 = v[n * 99 / 100];
    if (json)
        printf("{\"case\":\"%s\",\"pku\":%d,\"median_ns\":%.2f,\"p99_ns\":%.2f}\n", name, pku,
               med, p99);
    else
        printf("%-8s %8.2f ns %8.2f ns\n", name, med, p99);
}

/* --help: the usage on stdout, exit 0; a bad option: on stderr, exit 2. */
static void parse_args(int argc, char **argv, long *count, int *json)
{
    for (int i = 1; i < argc; i++) {
        int help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
        if (!strcmp(argv[i], "--count") && i + 1 < argc)
            *count = atol(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            *json = 1;
        else {
            fprintf(help ? stdout : stderr, "usage: pkeys [--count N] [--json]\n");
            exit(help ? 0 : 2);
        }
    }
    if (*count < 1)
        *count = 1;
}

/* The three cases, alternated batch by batch, reported; 0, or the error of
 * opening the channel that the pinned case needs (that case not run). */
static int measure(rpal_peer *p, long count, int json)
{
    int pku = (rpal_capabilities() & RPAL_CAP_PKU) != 0;
    if (!json)
        printf("access windows, %ld per batch, %d batches; protection keys %s\n"
               "case       median      p99\n", count, BATCHES, pku ? "on" : "off");
    static double t[3][BATCHES];
    batch(p, 1, count); /* the first window gives the peer its key */
    for (int b = 0; b < BATCHES; b++) {
        t[0][b] = batch(p, 0, count);
        t[1][b] = batch(p, 1, count);
    }
    rpal_chan *c = NULL;
    int err;
    for (int tries = 0; (err = rpal_chan_open(p, NULL, 5000, &c)) == -EAGAIN && tries < 200;
         tries++)
        usleep(10000); /* the receiver thread may not exist yet */
    if (err == 0)
        for (int b = 0; b < BATCHES; b++)
            t[2][b] = batch(p, 1, count);
    report("empty", t[0], BATCHES, json, pku);
    report("window", t[1], BATCHES, json, pku);
    if (err == 0) {
        report("pinned", t[2], BATCHES, json, pku);
        rpal_chan_close(c);
    } else {
        fprintf(stderr, "pkeys: no channel (%s): pinned case not run\n", rpal_strerror(err));
    }
    return err;
}

int main(int argc, char **argv)
{
    long count = 100000;
    int json = 0;
    parse_args(argc, argv, &count, &json);
    char dir[] = "/dev/shm/rpal-bench-pkeys-XXXXXX";
    if (!getenv("RPAL_DIR")) {
        if (!mkdtemp(dir)) {
            perror("pkeys: mkdtemp");
            return 1;
        }
        setenv("RPAL_DIR", dir, 1);
    }
    int kp[2], qp[2];
    if (pipe(kp) < 0 || pipe(qp) < 0)
        return 1;
    pid_t kid = fork();
    if (kid == 0)
        _exit(service(kp[1], qp[0]));
    char text[33];
    rpal_key key;
    rpal_domain *d;
    rpal_peer *p;
    int err = read(kp[0], text, 33) == 33 ? rpal_key_parse(text, &key) : -EIO;
    if (err == 0)
        err = rpal_domain_join("bpkeys", NULL, &d);
    if (err == 0)
        err = rpal_service_request(d, "w", &key, 10000, &p);
    if (err < 0) {
        fprintf(stderr, "pkeys: %s\n", rpal_strerror(err));
        kill(kid, SIGKILL);
        return 1;
    }
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    sched_setaffinity(0, sizeof one, &one);
    err = measure(p, count, json);
    if (write(qp[1], "q", 1) != 1)
        kill(kid, SIGKILL);
    waitpid(kid, NULL, 0);
    rpal_peer_release(p);
    rpal_domain_leave(d);
    if (!strncmp(getenv("RPAL_DIR"), "/dev/shm/rpal-bench-pkeys-", 26)) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", getenv("RPAL_DIR"));
        if (system(cmd) != 0)
            fprintf(stderr, "pkeys: could not remove %s\n", getenv("RPAL_DIR"));
    }
    return err == 0 ? 0 : 1;
}
