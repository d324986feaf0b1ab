/* The call: a client process calls a service process over a channel.
 * Replies are checked for every size class (inline, copied, zero-copy
 * request from the caller's slot, large reply), in every wait policy, with
 * pipelined asynchronous sends, and a dead or stopped service gives an error
 * within the deadline instead of a hang. */
#include "testlib.h"

#include <pthread.h>
#include <stdatomic.h>
#include <poll.h>
#include <time.h>

static int pfd[2], kfd[2]; /* service -> client: key; client -> service: done */

static rpal_service *svc;
static atomic_int stop_recv;

/* Reply: the request's bytes, each plus one, repeated to REPLY_LEN if the
 * request's first byte asks for a long reply. */
static void *receiver_main(void *arg)
{
    struct rpal_chan_opts *o = arg;
    rpal_receiver *r;
    REQUIRE(rpal_receiver_create(svc, o, &r) == 0);
    static unsigned char out[1 << 17];
    while (!atomic_load(&stop_recv)) {
        struct rpal_msg m;
        int err = rpal_receive(r, &m, 50);
        if (err == -ETIMEDOUT)
            continue;
        REQUIRE(err == 0);
        const unsigned char *in = m.data;
        size_t n = m.len;
        if (n >= 1 && in[0] == 0xEE)
            n = sizeof out; /* a large reply */
        for (size_t i = 0; i < n; i++)
            out[i] = (unsigned char)((m.len ? in[i % m.len] : 0) + 1);
        REQUIRE(rpal_reply(r, &m, out, n) == 0);
    }
    rpal_receiver_destroy(r);
    return NULL;
}

static int service(int wait, int same_cpu)
{
    rpal_domain *d;
    REQUIRE(rpal_domain_join("calls", NULL, &d) == 0);
    REQUIRE(rpal_service_register(d, "echo", 0, NULL, NULL, &svc) == 0);
    struct rpal_chan_opts o = {.wait = wait, .same_cpu = same_cpu};
    pthread_t th;
    pthread_create(&th, NULL, receiver_main, &o);
    t_key_send(pfd[1], svc);
    t_dispatch_until(d, kfd[0]); /* until the client says it is done */
    atomic_store(&stop_recv, 1);
    pthread_join(th, NULL);
    rpal_domain_leave(d);
    return 0;
}

static int check_reply(const unsigned char *req, size_t len, const unsigned char *rep,
                       size_t rlen)
{
    if (rlen != len)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (rep[i] != (unsigned char)(req[i] + 1))
            return 0;
    return 1;
}

static void client(pid_t spid, int wait, int same_cpu)
{
    rpal_key k = t_key_recv(pfd[0]);
    rpal_domain *d;
    REQUIRE(rpal_domain_join("calls", NULL, &d) == 0);
    rpal_peer *p;
    REQUIRE(rpal_service_request(d, "echo", &k, 2000, &p) == 0);
    struct rpal_chan_opts o = {.wait = wait, .same_cpu = same_cpu, .depth = 16};
    rpal_chan *c;
    int err;
    for (int tries = 0; (err = rpal_chan_open(p, &o, 2000, &c)) == -EAGAIN && tries < 100; tries++)
        usleep(10000); /* the receiver thread may not exist yet */
    REQUIRE(err == 0);

    static unsigned char req[1 << 17], rep[1 << 17];
    unsigned char *inslot = rpal_malloc(4096);
    REQUIRE(inslot);
    size_t rlen;
    for (int i = 0; i < 3000; i++) {
        size_t len = (size_t[]){0, 1, 8, 32, 40, 41, 100, 4000}[i % 8];
        for (size_t j = 0; j < len; j++)
            req[j] = (unsigned char)(i + j * 7);
        if (len && req[0] == 0xEE)
            req[0] = 1;
        CHECK_ERR(rpal_call(c, req, len, rep, sizeof rep, &rlen, 2000), 0);
        CHECK(check_reply(req, len, rep, rlen));
        /* Zero copy: a request in our own slot is read in place. */
        memcpy(inslot, req, len);
        CHECK_ERR(rpal_call(c, inslot, len, rep, sizeof rep, &rlen, 2000), 0);
        CHECK(check_reply(req, len, rep, rlen));
    }
    /* A large reply, and one that does not fit. */
    req[0] = 0xEE;
    CHECK_ERR(rpal_call(c, req, 1, rep, sizeof rep, &rlen, 2000), 0);
    CHECK(rlen == sizeof rep && rep[0] == 0xEF && rep[77] == 0xEF);
    CHECK_ERR(rpal_call(c, req, 1, rep, 10, &rlen, 2000), -EMSGSIZE);
    CHECK(rlen == sizeof rep);

    /* Pipelined: fill the ring, then collect in order. */
    for (int round = 0; round < 50; round++) {
        for (uint64_t t = 0; t < 16; t++) {
            unsigned char b[8];
            memset(b, (int)(t + round), sizeof b);
            CHECK_ERR(rpal_send(c, b, sizeof b, t), 0);
        }
        CHECK_ERR(rpal_send(c, req, 1, 99), -EAGAIN);
        for (uint64_t t = 0; t < 16; t++) {
            uint64_t tag;
            CHECK_ERR(rpal_complete(c, &tag, rep, sizeof rep, &rlen, 2000), 0);
            CHECK(tag == t && rlen == 8 && rep[3] == (unsigned char)(t + round + 1));
        }
    }
    CHECK_ERR(rpal_call(c, NULL, 0, rep, sizeof rep, &rlen, 2000), 0);

    /* A forked child holds a copy of the handle, not the channel: every
     * use is -ECHILD, and the parent's channel still works. */
    pid_t kid = fork();
    REQUIRE(kid >= 0);
    if (kid == 0) {
        int ok = rpal_call(c, req, 4, rep, sizeof rep, &rlen, 200) == -ECHILD &&
                 rpal_send(c, req, 4, 1) == -ECHILD && rpal_chan_close(c) == -ECHILD;
        _exit(ok ? 0 : 1);
    }
    int kst;
    REQUIRE(waitpid(kid, &kst, 0) == kid);
    CHECK(WIFEXITED(kst) && WEXITSTATUS(kst) == 0);
    CHECK_ERR(rpal_call(c, req, 4, rep, sizeof rep, &rlen, 2000), 0);

    /* A stopped service: the deadline holds. */
    kill(spid, SIGSTOP);
    int st;
    /* Stopping is asynchronous: wait until every thread of it has stopped. */
    REQUIRE(waitpid(spid, &st, WUNTRACED) == spid && WIFSTOPPED(st));
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    CHECK_ERR(rpal_call(c, req, 4, rep, sizeof rep, &rlen, 200), -ETIMEDOUT);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    CHECK(ms >= 190 && ms < 1200);
    kill(spid, SIGCONT);
    /* The late reply is still owed: collect it, then carry on. */
    CHECK_ERR(rpal_complete(c, NULL, rep, sizeof rep, &rlen, 2000), 0);
    CHECK_ERR(rpal_call(c, req, 4, rep, sizeof rep, &rlen, 2000), 0);

    /* A dead service: the pending call fails, it does not hang. */
    kill(spid, SIGKILL);
    clock_gettime(CLOCK_MONOTONIC, &a);
    int e = rpal_call(c, req, 4, rep, sizeof rep, &rlen, 3000);
    clock_gettime(CLOCK_MONOTONIC, &b);
    ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    if (!(e == -ESRCH || e == -ESHUTDOWN || e == -EPROTO) || ms >= 1000)
        fprintf(stderr, "wait %d same_cpu %d: call to a dead service: %d after %.0f ms\n",
                wait, same_cpu, e, ms);
    CHECK(e == -ESRCH || e == -ESHUTDOWN || e == -EPROTO);
    CHECK(ms < 1000);
    rpal_chan_close(c);
    rpal_domain_leave(d);
}

static void run(int wait, int same_cpu)
{
    atomic_store(&stop_recv, 0);
    REQUIRE(pipe(pfd) == 0 && pipe(kfd) == 0);
    pid_t s = fork();
    REQUIRE(s >= 0);
    if (s == 0)
        _exit(service(wait, same_cpu));
    client(s, wait, same_cpu);
    int st = t_wait(s);
    CHECK(st == 128 + SIGKILL);
    close(pfd[0]); close(pfd[1]); close(kfd[0]); close(kfd[1]);
}

int main(void)
{
    t_init();
    run(RPAL_WAIT_ADAPTIVE, 0);
    run(RPAL_WAIT_POLL, 0);
    run(RPAL_WAIT_SLEEP, 0);
    run(RPAL_WAIT_ADAPTIVE, 1);
    return t_done();
}
