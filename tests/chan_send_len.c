/* rpal_send refuses a request longer than an entry's 32-bit length field
 * (-EMSGSIZE) before it writes anything into the ring: the entry it would
 * have used is left as it was. The ring is private to src/channel.c, so this
 * test is compiled with that file itself (its definitions take the place of
 * the library's channel.o at link time) to look at the entry. */
#include "testlib.h"
#include "../src/channel.c"

#include <pthread.h>
#include <stdatomic.h>

static int pfd[2], kfd[2]; /* service -> client: key; client -> service: done */
static rpal_service *svc;
static atomic_int stop_recv;

static void *receiver_main(void *arg)
{
    (void)arg;
    rpal_receiver *r;
    REQUIRE(rpal_receiver_create(svc, NULL, &r) == 0);
    while (!atomic_load(&stop_recv)) {
        int err = t_serve_xor(r, 50);
        REQUIRE(err == 0 || err == -ETIMEDOUT);
    }
    rpal_receiver_destroy(r);
    return NULL;
}

static int service(void)
{
    rpal_domain *d;
    REQUIRE(rpal_domain_join("sendlen", NULL, &d) == 0);
    REQUIRE(rpal_service_register(d, "xor", 0, NULL, NULL, &svc) == 0);
    pthread_t th;
    pthread_create(&th, NULL, receiver_main, NULL);
    rpal_key k;
    char text[33];
    rpal_service_key(svc, &k);
    rpal_key_format(&k, text);
    REQUIRE(write(pfd[1], text, 33) == 33);
    t_dispatch_until(d, kfd[0]);
    atomic_store(&stop_recv, 1);
    pthread_join(th, NULL);
    rpal_domain_leave(d);
    return 0;
}

static void client(void)
{
    char text[33];
    REQUIRE(read(pfd[0], text, 33) == 33);
    rpal_key k;
    REQUIRE(rpal_key_parse(text, &k) == 0);
    rpal_domain *d;
    REQUIRE(rpal_domain_join("sendlen", NULL, &d) == 0);
    rpal_peer *p;
    REQUIRE(rpal_service_request(d, "xor", &k, 2000, &p) == 0);
    struct rpal_chan_opts o = {.depth = 4};
    rpal_chan *c;
    int err;
    for (int tries = 0; (err = rpal_chan_open(p, &o, 2000, &c)) == -EAGAIN && tries < 100; tries++)
        usleep(10000); /* the receiver thread may not exist yet */
    REQUIRE(err == 0);

    unsigned char req[8] = {1, 2, 3}, rep[256];
    size_t rlen;
    /* One call first, so that the next entry is not the zeroed one. */
    CHECK_ERR(rpal_call(c, req, 3, rep, sizeof rep, &rlen, 2000), 0);
    CHECK(t_xor_ok(req, 3, rep, rlen));
    struct ch_entry before = c->tx->e[c->sent & (c->depth - 1)];
    /* Only the length is looked at: the bytes behind REQ are never read. */
    CHECK_ERR(rpal_send(c, req, (size_t)UINT32_MAX + 1, 77), -EMSGSIZE);
    CHECK_ERR(rpal_send(c, req, SIZE_MAX, 78), -EMSGSIZE);
    struct ch_entry after = c->tx->e[c->sent & (c->depth - 1)];
    CHECK(memcmp(&before, &after, sizeof before) == 0);
    /* The channel goes on as if nothing had been asked. */
    for (int i = 0; i < 10; i++) {
        req[0] = (unsigned char)i;
        CHECK_ERR(rpal_call(c, req, sizeof req, rep, sizeof rep, &rlen, 2000), 0);
        CHECK(t_xor_ok(req, sizeof req, rep, rlen));
    }
    rpal_chan_close(c);
    REQUIRE(write(kfd[1], "x", 1) == 1);
    rpal_domain_leave(d);
}

int main(void)
{
    t_init();
    REQUIRE(pipe(pfd) == 0 && pipe(kfd) == 0);
    pid_t s = fork();
    REQUIRE(s >= 0);
    if (s == 0)
        _exit(service());
    client();
    CHECK(t_wait(s) == 0);
    return t_done();
}
