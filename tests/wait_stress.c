/* No lost wake-up: callers and services (and both ends of an upgraded
 * connection) that pause at random, so that every mix of spinning,
 * yielding, sleeping and waking happens, exchange a million messages
 * (WAIT_STRESS_COUNT) and every one is
 * answered within 5 s. A wake-up lost between a publisher's look at the
 * sleeper's flag and the sleeper's last look would leave a side asleep with
 * a message waiting: the call times out and the test fails. The processes
 * are not pinned half of the time, and pinned to one CPU or two otherwise,
 * so that the learned policy changes under them. */
#include "testlib.h"

#include <sys/epoll.h>
#include <sys/socket.h>

/* A million messages also under ThreadSanitizer: its slower code opens
 * the windows between a publisher's look and a sleeper's last look wider. */
#define DEFAULT_COUNT 1000000

static long count;
static cpu_set_t all_cpus;

/* A pause now and then: 1 in 64 messages, up to 60 us; 1 in 4096, 2 ms. */
static void maybe_pause(unsigned *seed)
{
    unsigned r = (unsigned)rand_r(seed);
    if (r % 4096 == 0)
        t_sleep_us(2000);
    else if (r % 64 == 0)
        t_sleep_us(r / 64 % 61);
}

static void placement(int round, int *ccpu, int *scpu)
{
    int a, b;
    *ccpu = *scpu = -1;
    if (round % 2 == 0 || t_two_cpus(&a, &b) < 0)
        return; /* anywhere: the scheduler moves them */
    *ccpu = a;
    *scpu = round % 4 == 1 ? a : b;
}

static void stress_calls(long n, int round)
{
    int ccpu, scpu;
    placement(round, &ccpu, &scpu);
    struct rpal_chan_opts o = {0};
    struct t_svc sv = t_svc_start("stress", &o, scpu, 64, 60);
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        REQUIRE(t_pin(ccpu) == 0);
        rpal_domain *d;
        rpal_chan *c = t_svc_open(&sv, "stress", &o, &d);
        unsigned seed = (unsigned)getpid();
        unsigned char req[16], rep[16];
        size_t rlen;
        for (long i = 0; i < n; i++) {
            memcpy(req, &i, sizeof i);
            memset(req + 8, (int)i, 8);
            int err = rpal_call(c, req, sizeof req, rep, sizeof rep, &rlen, 5000);
            if (err < 0) {
                fprintf(stderr, "call %ld of %ld (round %d, CPUs %d/%d): %s\n", i, n, round,
                        ccpu, scpu, rpal_strerror(err));
                _exit(1);
            }
            if (!t_xor_ok(req, sizeof req, rep, rlen))
                _exit(1);
            maybe_pause(&seed);
        }
        struct rpal_stats s;
        rpal_chan_stats(c, &s);
        printf("calls, round %d, CPUs %d/%d: %ld answered; waits %llu: spun %llu, yielded %llu, "
               "slept %llu; wake-ups %llu, not needed %llu\n",
               round, ccpu, scpu, n, (unsigned long long)s.waits,
               (unsigned long long)s.spin_hits, (unsigned long long)s.yields,
               (unsigned long long)s.sleeps, (unsigned long long)s.wakes,
               (unsigned long long)s.wakes_skipped);
        CHECK(s.msgs_out == (uint64_t)n && s.msgs_in == (uint64_t)n);
        CHECK(s.wakes + s.wakes_skipped == (uint64_t)n);
        rpal_chan_close(c);
        rpal_domain_leave(d);
        _exit(t_failures ? 1 : 0);
    }
    CHECK(t_wait(p) == 0);
    CHECK(t_svc_stop(&sv) == 0);
}

/* Both ends of an upgraded connection pause at random; the client checks
 * every echo. The server waits in an rpal epoll set, the client in a
 * blocking read. */
static void stress_conn(long n, int round)
{
    int ccpu, scpu;
    placement(round, &ccpu, &scpu);
    rpal_domain *d;
    REQUIRE(rpal_domain_join("stress-conn", NULL, &d) == 0);
    int sv[1];
    pid_t p = t_echo_fork("stress-conn", d, scpu, maybe_pause, &sv[0]);
    REQUIRE(t_pin(ccpu) == 0);
    unsigned seed = (unsigned)getpid();
    alarm(120); /* a blocking read has no deadline: a lost wake-up would hang */
    for (long i = 0; i < n; i++) {
        long m[2] = {i, ~i}, r[2];
        REQUIRE(rpal_write(sv[0], m, sizeof m) == sizeof m);
        for (size_t got = 0; got < sizeof r;) {
            ssize_t k = rpal_read(sv[0], (char *)r + got, sizeof r - got);
            REQUIRE(k > 0);
            got += (size_t)k;
        }
        if (r[0] != i || r[1] != ~i) {
            fprintf(stderr, "echo %ld: got %ld\n", i, r[0]);
            t_failures++;
            break;
        }
        maybe_pause(&seed);
    }
    alarm(0);
    struct rpal_stats s;
    rpal_fd_stats(sv[0], &s);
    printf("conn, round %d, CPUs %d/%d: %ld echoed; waits %llu: spun %llu, yielded %llu, "
           "slept %llu; wake-ups %llu, not needed %llu\n",
           round, ccpu, scpu, n, (unsigned long long)s.waits, (unsigned long long)s.spin_hits,
           (unsigned long long)s.yields, (unsigned long long)s.sleeps,
           (unsigned long long)s.wakes, (unsigned long long)s.wakes_skipped);
    rpal_close(sv[0]);
    CHECK(t_wait(p) == 0);
    rpal_domain_leave(d);
    sched_setaffinity(0, sizeof all_cpus, &all_cpus); /* for the next round */
}

int main(void)
{
    t_init();
    REQUIRE(sched_getaffinity(0, sizeof all_cpus, &all_cpus) == 0);
    const char *e = getenv("WAIT_STRESS_COUNT");
    /* Under an emulator (tests/vm/) a message costs a thousand times more:
     * the mixes still all happen with fewer. */
    count = e ? atol(e) : getenv("RPAL_EMULATED") ? 40000 : DEFAULT_COUNT;
    REQUIRE(count >= 8);
    /* Four rounds each: anywhere, one CPU, anywhere, two CPUs. */
    for (int round = 0; round < 4 && !t_failures; round++)
        stress_calls(count / 8, round);
    for (int round = 0; round < 4 && !t_failures; round++)
        stress_conn(count / 8, round);
    return t_done();
}
