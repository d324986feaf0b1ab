/* rpal_send refuses a request longer than an entry's 32-bit length field
 * (-EMSGSIZE) before it writes anything into the ring: the entry it would
 * have used is left as it was. The ring is private to src/channel.c, so this
 * test is compiled with that file itself (its definitions take the place of
 * the library's channel.o at link time) to look at the entry. */
#include "testlib.h"
#include "../src/channel.c"

static int pfd[2], kfd[2]; /* service -> client: key; client -> service: done */

/* One loop serves the handshake and the calls (rpal_serve), until the
 * client says it is done. */
static int service(void)
{
    rpal_domain *d;
    rpal_service *svc;
    rpal_receiver *r;
    REQUIRE(rpal_domain_join("sendlen", NULL, &d) == 0);
    REQUIRE(rpal_service_register(d, "xor", 0, NULL, NULL, &svc) == 0);
    REQUIRE(rpal_receiver_create(svc, NULL, &r) == 0);
    t_key_send(pfd[1], svc);
    for (;;) {
        struct rpal_msg m;
        struct rpal_event ev;
        int n = rpal_serve(r, &m, &ev, 20);
        if (n == RPAL_SERVE_MSG) {
            unsigned char out[256];
            size_t len = m.len < sizeof out ? m.len : sizeof out;
            for (size_t i = 0; i < len; i++)
                out[i] = ((const unsigned char *)m.data)[i] ^ 0x5A;
            REQUIRE(rpal_reply(r, &m, out, len) == 0);
        } else if (n == RPAL_SERVE_EVENT && ev.type == RPAL_EV_PEER_GONE) {
            rpal_peer_release(ev.peer);
        } else if (n != RPAL_SERVE_EVENT) {
            REQUIRE(n == -ETIMEDOUT || n == -EINTR);
            if (poll(&(struct pollfd){kfd[0], POLLIN, 0}, 1, 0) == 1)
                break;
        }
    }
    rpal_receiver_destroy(r);
    rpal_domain_leave(d);
    return 0;
}

static void client(void)
{
    rpal_key k = t_key_recv(pfd[0]);
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
