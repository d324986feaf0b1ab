/* A channel closed by its service while the caller still uses it: the
 * caller's next call returns -ESHUTDOWN (rpal_receiver_destroy(3)), and
 * never another caller's reply. The service destroys the receiver that
 * serves caller A and makes a new one, which then serves caller B: B's reply
 * ring is allocated where A's was (the service's heap reuses the block), and
 * B's calls leave replies in it with the sequence numbers A waits for next.
 * A must see that its ring is gone rather than read B's replies as its own.
 * (tests/chan_churn runs dispatch and receiver on two threads.) */
#include "testlib.h"

#include <pthread.h>
#include <stdatomic.h>

#define DOM "closed"
#define CALL_MS 2000

static rpal_service *svc;
static atomic_int phase; /* 0 serve, 1 replace the receiver, 2 replaced, 3 stop */

static rpal_domain *sd;

/* The service's one thread: it dispatches and serves in turns, so that the
 * rings of the destroyed receiver go back to the thread cache that the next
 * channel's ring comes from (the heap reuses the block at once). */
static void *service_main(void *arg)
{
    (void)arg;
    rpal_receiver *r;
    REQUIRE(rpal_receiver_create(svc, NULL, &r) == 0);
    for (;;) {
        int ph = atomic_load(&phase);
        if (ph == 3)
            break;
        if (ph == 1) {
            REQUIRE(rpal_receiver_destroy(r) == 0);
            REQUIRE(rpal_receiver_create(svc, NULL, &r) == 0);
            atomic_store(&phase, 2);
        }
        struct rpal_event ev[8];
        REQUIRE(rpal_domain_dispatch(sd, ev, 8, 0) >= 0);
        int err = t_serve_xor(r, 1);
        REQUIRE(err == 0 || err == -ETIMEDOUT);
    }
    REQUIRE(rpal_receiver_destroy(r) == 0);
    return NULL;
}

/* Call LEN bytes filled with FILL: 0 and a checked reply, or the error. */
static int call(rpal_chan *c, unsigned char fill, size_t len)
{
    unsigned char req[64], rep[64];
    memset(req, fill, len);
    size_t rlen = 0;
    int err = rpal_call(c, req, len, rep, sizeof rep, &rlen, CALL_MS);
    if (err < 0)
        return err;
    return t_xor_ok(req, len, rep, rlen) ? 0 : 1; /* 1: someone else's reply */
}

/* A caller: opens a channel, makes CALLS calls of bytes FILL, says 'r' on
 * TO, then waits for a byte on FROM: 'c' to call once more (and say what it
 * got: 's' -ESHUTDOWN, 'o' a correct reply, 'x' anything else), 'q' to
 * exit. */
static void caller(const rpal_key *k, unsigned char fill, int calls, int to, int from)
{
    /* Forked before the service's thread exists (a child forked from a
     * threaded parent under ThreadSanitizer may inherit its allocator's
     * lock held, and hang at its first malloc): wait to be told to start. */
    if (t_get(from) != 'g')
        _exit(1);
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOM, NULL, &d) == 0);
    rpal_peer *p;
    REQUIRE(rpal_service_request(d, "echo", k, CALL_MS, &p) == 0);
    rpal_chan *c;
    int err;
    for (int tries = 0; (err = rpal_chan_open(p, NULL, CALL_MS, &c)) == -EAGAIN && tries < 100; tries++)
        usleep(10000); /* no receiver at the moment */
    REQUIRE(err == 0);
    /* 41 bytes: past an entry's inline room, so the reply is a copy in
     * the service's slot that the entry points at. */
    for (int i = 0; i < calls; i++)
        REQUIRE(call(c, fill, i % 2 ? 41 : 16) == 0);
    t_put(to, 'r');
    for (;;) {
        char cmd = t_get(from);
        if (cmd == 'c') {
            err = call(c, fill, 16);
            if (err != -ESHUTDOWN && err != 0)
                fprintf(stderr, "pid %d: the call returned %d (%s)\n", (int)getpid(), err,
                        rpal_strerror(err));
            t_put(to, err == -ESHUTDOWN ? 's' : err == 0 ? 'o' : 'x');
        } else {
            rpal_chan_close(c);
            rpal_peer_release(p);
            rpal_domain_leave(d);
            _exit(0);
        }
    }
}

static pid_t spawn(const rpal_key *k, unsigned char fill, int calls, int *to, int *from)
{
    int up[2], down[2];
    REQUIRE(pipe(up) == 0 && pipe(down) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(up[0]);
        close(down[1]);
        caller(k, fill, calls, up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    *from = up[0];
    *to = down[1];
    return pid;
}

int main(void)
{
    t_init();
    REQUIRE(rpal_domain_join(DOM, NULL, &sd) == 0);
    REQUIRE(rpal_service_register(sd, "echo", 0, NULL, NULL, &svc) == 0);
    rpal_key k;
    REQUIRE(rpal_service_key(svc, &k) == 0);
    int a_to, a_from, b_to, b_from;
    /* A: three calls (its next reply is awaited in entry 3, sequence 4). */
    pid_t a = spawn(&k, 0xA1, 3, &a_to, &a_from);
    pid_t b = spawn(&k, 0xB2, 4, &b_to, &b_from);
    pthread_t st;
    REQUIRE(pthread_create(&st, NULL, service_main, NULL) == 0);
    t_put(a_to, 'g');
    CHECK(t_get(a_from) == 'r');
    atomic_store(&phase, 1);
    while (atomic_load(&phase) != 2)
        usleep(1000);
    /* B: four calls on a new channel, served by the new receiver. */
    t_put(b_to, 'g');
    CHECK(t_get(b_from) == 'r');
    t_put(a_to, 'c');
    char got = t_get(a_from);
    if (got != 's')
        fprintf(stderr, "A's call after its channel closed: %s\n",
                got == 'o' ? "a reply" : got == 'x' ? "another error or a wrong reply"
                                                    : "no answer");
    CHECK(got == 's');
    /* B is served as before. */
    t_put(b_to, 'c');
    CHECK(t_get(b_from) == 'o');
    t_put(a_to, 'q');
    t_put(b_to, 'q');
    CHECK(t_wait(a) == 0);
    CHECK(t_wait(b) == 0);
    atomic_store(&phase, 3);
    pthread_join(st, NULL);
    CHECK(rpal_service_unregister(svc) == 0);
    CHECK(rpal_domain_leave(sd) == 0);
    return t_done();
}
