/* How waiting behaves between real processes, read from the counters
 * (rpal_chan_stats, rpal_fd_stats, rpal_stats_foreach):
 *   - caller and service on one CPU: no wait spins; they yield or sleep;
 *   - on two CPUs, back to back: waits end in a spin, and since the other
 *     side is awake, most messages send no wake-up (counted as skipped);
 *   - the same for an upgraded connection (compat);
 *   - a caller that pauses 2 ms between calls learns to sleep at once: its
 *     budget falls to 0 and its waits stop spinning;
 *   - the counters are published: `rpal stat`'s source sees both ends;
 *   - a blocking read on an upgraded socket honours SO_RCVTIMEO.
 * Needs two CPUs for the two-CPU parts (skips them, saying so, with one). */
#include "testlib.h"

#include <sys/socket.h>
#include <sys/epoll.h>

#define N 20000

static int calls(rpal_chan *c, int n, unsigned pause_us)
{
    unsigned char req[32], rep[32];
    size_t rlen;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 32; j++)
            req[j] = (unsigned char)(i + j);
        int err = rpal_call(c, req, sizeof req, rep, sizeof rep, &rlen, 5000);
        if (err < 0) {
            fprintf(stderr, "call %d: %s\n", i, rpal_strerror(err));
            return -1;
        }
        if (!t_xor_ok(req, sizeof req, rep, rlen))
            return -1;
        if (pause_us)
            t_sleep_us(pause_us);
    }
    return 0;
}

static void show(const char *what, const struct rpal_stats *s)
{
    printf("%-28s msgs %6llu waits %6llu spun-ok %6llu yields %6llu sleeps %6llu "
           "wakes %6llu skipped %6llu budget %u ns\n",
           what, (unsigned long long)s->msgs_out, (unsigned long long)s->waits,
           (unsigned long long)s->spin_hits, (unsigned long long)s->yields,
           (unsigned long long)s->sleeps, (unsigned long long)s->wakes,
           (unsigned long long)s->wakes_skipped, s->budget_ns);
}

struct seen {
    pid_t pid;
    int kinds; /* bit per RPAL_STATS_* seen for PID's peer */
    uint64_t msgs;
};

static int seen_one(const struct rpal_stats_entry *e, void *arg)
{
    struct seen *s = arg;
    if (e->kind == RPAL_STATS_CALLER && e->pid == s->pid)
        s->kinds |= 1 << e->kind, s->msgs = e->s.msgs_out;
    if (e->kind == RPAL_STATS_SERVICE && e->peer_pid == s->pid)
        s->kinds |= 1 << e->kind;
    return 0;
}

/* A caller on CPU CCPU and a service on SCPU: calls back to back, then
 * with pauses; checks the caller's counters. */
/* 0 passed, 1 failed, 2 the two-CPU proportions were not met (load). */
static int call_pair(int ccpu, int scpu, int same)
{
    struct rpal_chan_opts o = {0}; /* the default: learned */
    struct t_svc sv = t_svc_start("wait", &o, scpu, 0, 0);
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        REQUIRE(t_pin(ccpu) == 0);
        rpal_domain *d;
        rpal_chan *c = t_svc_open(&sv, "wait", &o, &d);
        REQUIRE(calls(c, N / 10, 0) == 0); /* warm up: learn */
        struct rpal_stats a, b;
        rpal_chan_stats(c, &a);
        REQUIRE(calls(c, N, 0) == 0);
        rpal_chan_stats(c, &b);
        show(same ? "call, one CPU:" : "call, two CPUs:", &b);
        uint64_t waits = b.waits - a.waits, hits = b.spin_hits - a.spin_hits;
        uint64_t skipped = b.wakes_skipped - a.wakes_skipped;
        CHECK(b.msgs_out == (uint64_t)N + N / 10 && b.msgs_in == b.msgs_out);
        if (same) {
            /* The service runs on our CPU: spinning would hold it off. */
            CHECK(hits == 0);
            CHECK(b.spin_ns == 0);
            CHECK(b.yields + b.sleeps > 0);
        } else if (!(hits * 2 >= waits && skipped * 2 >= (uint64_t)N && b.budget_ns > 0)) {
            /* Most waits end spinning and the service is awake: unless
             * another load took the service's CPU meanwhile (exit 2: the
             * test tries again). */
            printf("two CPUs: %llu of %llu waits spun, %llu of %d needed no wake-up\n",
                   (unsigned long long)hits, (unsigned long long)waits,
                   (unsigned long long)skipped, N);
            _exit(t_failures ? 1 : 2);
        }
        /* The counters reach the claim file (at a wait that reads the
         * clock 100 ms after the last flush, or every 1,024 waits): what
         * `rpal stat` shows. A call whose reply is there at once reads no
         * clock (so under ThreadSanitizer one call after 150 ms was not
         * always enough): calls 20 ms apart, for up to 2 s. */
        struct seen s = {getpid(), 0, 0};
        for (int i = 0; i < 100 && s.msgs < (uint64_t)N; i++) {
            t_sleep_us(20000);
            REQUIRE(calls(c, 1, 0) == 0);
            s.kinds = 0;
            CHECK(rpal_stats_foreach(seen_one, &s) == 0);
        }
        CHECK(s.kinds & (1 << RPAL_STATS_CALLER));
        CHECK(s.msgs >= (uint64_t)N);
        /* Pauses of 2 ms: the caller's waits are for a sleeping service
         * (it has to be woken) or short; either way nothing spins long
         * once learned, and the service learns to sleep at once. */
        REQUIRE(calls(c, 300, 2000) == 0);
        rpal_chan_stats(c, &a);
        REQUIRE(calls(c, 200, 2000) == 0);
        rpal_chan_stats(c, &b);
        show(same ? "call, one CPU, 2 ms apart:" : "call, two CPUs, 2 ms apart:", &b);
        CHECK(b.wakes - a.wakes >= 150); /* the service slept: woken */
        /* Still published on the service's side of the channel. */
        s.kinds = 0;
        CHECK(rpal_stats_foreach(seen_one, &s) == 0);
        CHECK(s.kinds & (1 << RPAL_STATS_SERVICE));
        rpal_chan_close(c);
        rpal_domain_leave(d);
        _exit(t_failures ? 1 : 0);
    }
    int rc = t_wait(p);
    CHECK(rc == 0 || rc == 2);
    CHECK(t_svc_stop(&sv) == 0);
    return rc;
}

/* An upgraded socketpair, an echo server in an rpal epoll set on SCPU and
 * a blocking client on CCPU. */
static int conn_pair(int ccpu, int scpu, int same)
{
    rpal_domain *d;
    REQUIRE(rpal_domain_join("wait-compat", NULL, &d) == 0); /* before the fork: see fdmap(3) */
    int sv[1];
    pid_t p = t_echo_fork("wait-compat", d, scpu, NULL, &sv[0]);
    REQUIRE(t_pin(ccpu) == 0);
    /* A blocking read honours SO_RCVTIMEO, as on the socket: -EAGAIN. */
    struct timeval tv = {0, 50000};
    REQUIRE(setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    char none[8];
    int64_t t0 = t_now_ms();
    CHECK(rpal_read(sv[0], none, sizeof none) == -EAGAIN);
    int64_t ms = t_now_ms() - t0;
    CHECK(ms >= 45 && ms < 2000);
    tv.tv_usec = 0;
    REQUIRE(setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    struct rpal_stats a, b;
    char m[32] = "0123456789abcdef0123456789abcde", r[32];
    for (int i = 0; i < N + N / 10; i++) {
        if (i == N / 10)
            rpal_fd_stats(sv[0], &a);
        REQUIRE(rpal_write(sv[0], m, sizeof m) == sizeof m);
        for (size_t got = 0; got < sizeof r;) {
            ssize_t n = rpal_read(sv[0], r + got, sizeof r - got);
            REQUIRE(n > 0);
            got += (size_t)n;
        }
        CHECK(!memcmp(m, r, sizeof m));
    }
    rpal_fd_stats(sv[0], &b);
    show(same ? "conn, one CPU:" : "conn, two CPUs:", &b);
    CHECK(b.msgs_out == (uint64_t)N + N / 10 && b.bytes_out == b.msgs_out * sizeof m);
    CHECK(b.bytes_in == b.bytes_out);
    uint64_t waits = b.waits - a.waits, hits = b.spin_hits - a.spin_hits;
    int rc = 0;
    if (same) {
        CHECK(hits == 0 && b.spin_ns == 0);
    } else if (!(hits * 2 >= waits && (b.wakes_skipped - a.wakes_skipped) * 2 >= (uint64_t)N)) {
        printf("two CPUs: %llu of %llu waits spun\n", (unsigned long long)hits,
               (unsigned long long)waits);
        rc = 2;
    }
    CHECK(rpal_fd_stats(1, &b) == -EBADF); /* not an upgraded connection */
    rpal_close(sv[0]);
    CHECK(t_wait(p) == 0);
    rpal_domain_leave(d);
    return rc;
}

int main(void)
{
    t_init();
    int a, b;
    if (t_two_cpus(&a, &b) < 0) {
        a = 0;
        REQUIRE(sched_getcpu() >= 0);
        a = sched_getcpu();
    }
    call_pair(a, a, 1);
    conn_pair(a, a, 1);
    if (b < 0) {
        printf("only one CPU: the two-CPU checks did not run\n");
        return t_failures ? 1 : T_SKIP;
    }
    /* Proportions on two CPUs hold unless another load takes one of them
     * meanwhile: three tries each. Under an emulator (tests/vm/), whose
     * CPUs are threads of one process on a shared host, they are not
     * judged: said, and the rest still checked. */
    if (getenv("RPAL_EMULATED")) {
        call_pair(a, b, 0);
        conn_pair(a, b, 0);
        printf("emulated CPUs (%s): the two-CPU proportions were not judged\n",
               getenv("RPAL_EMULATED"));
        return t_done();
    }
    int tries = 0;
    while (call_pair(a, b, 0) == 2 && ++tries < 3)
        ;
    CHECK(tries < 3);
    tries = 0;
    while (conn_pair(a, b, 0) == 2 && ++tries < 3)
        ;
    CHECK(tries < 3);
    return t_done();
}
