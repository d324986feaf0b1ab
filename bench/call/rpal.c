/* rpal (bench/call): the call (rpal_call against rpal_receive or rpal_serve)
 * and the pipelined stream (rpal_send + rpal_complete). */
#include "call.h"

#include <stdlib.h>

#ifdef RPAL_HAVE_CALL
/* ===== RPAL TRANSPORT =====
 * The client calls with rpal_call; the server answers on its main thread
 * with rpal_receive + rpal_reply. Server init: join the domain, register a
 * service named for this run, create the receiver, publish "NAME KEY" in
 * c->sh->scratch. Client connect: request the service, open a channel. The
 * server's connect answers the handshakes (rpal_domain_dispatch) until the
 * client is connected. Wait policy by mode: poll -> RPAL_WAIT_POLL;
 * shared-core and idle -> the default (RPAL_WAIT_ADAPTIVE), which finds out
 * by itself that the other side runs on its CPU (it yields instead of
 * spinning) or that waits are long (it sleeps at once, and its receiver
 * follows the caller's CPU). The request is
 * built in the client's own slot (rpal_malloc): passed in the ring up to
 * RPAL_INLINE_MAX bytes, by pointer (zero copy) above. rpal_call copies the
 * reply into a private buffer, as read() does for the kernel transports. */
#define RPAL_BENCH_DOMAIN "bench-call"
#define RPAL_BENCH_TIMEOUT_MS 10000

static struct {
    char service[64];
    struct bench_rpal b;
    unsigned char *req;
} rp;

static struct rpal_chan_opts rpal_bench_opts(int mode)
{
    struct rpal_chan_opts o = {.wait = RPAL_WAIT_ADAPTIVE};
    if (mode == MODE_POLL)
        o.wait = RPAL_WAIT_POLL;
    return o;
}

static const char *rpal_waits(const struct ctx *c)
{
    return c->mode == MODE_POLL     ? "rpal_call / rpal_receive, RPAL_WAIT_POLL"
           : c->mode == MODE_SHARED ? "rpal_call / rpal_receive, default wait (finds the shared CPU: yields)"
                                    : "rpal_call / rpal_receive, default wait (learns to sleep; follows the caller)";
}

static int rpal_setup(struct ctx *c)
{
    (void)c;
    snprintf(rp.service, sizeof rp.service, "call-%d", (int)getpid());
    return 0;
}

/* Join, register, publish "NAME KEY" in SCRATCH (server); join (client). */
static void rpal_join_side(int side, int mode, char *scratch, size_t len)
{
    struct rpal_chan_opts o = rpal_bench_opts(mode);
    if (side == SERVER)
        bench_rpal_serve(&rp.b, RPAL_BENCH_DOMAIN, rp.service, &o, scratch, len);
    else
        bench_rpal_join(RPAL_BENCH_DOMAIN, &rp.b);
}

/* Client: request the service named in SCRATCH and open a channel. */
static void rpal_open_side(int mode, unsigned depth, const char *scratch)
{
    struct rpal_chan_opts o = rpal_bench_opts(mode);
    o.depth = depth;
    bench_rpal_open(&rp.b, scratch, &o, RPAL_BENCH_TIMEOUT_MS);
}

/* Server: answer handshakes until FLAG is set (30 s at most). */
static void rpal_dispatch_until(_Atomic int *flag)
{
    bench_rpal_dispatch_until(&rp.b, flag, 30);
}

static void rpal_init(struct ctx *c, int side)
{
    alloc_bufs(c);
    rpal_join_side(side, c->mode, c->sh->scratch, sizeof c->sh->scratch);
    if (side == CLIENT) {
        rp.req = rpal_malloc(c->size);
        if (!rp.req)
            die_msg("rpal_malloc(%zu) failed", c->size);
        memset(rp.req, 0, c->size);
    }
}

static void rpal_connect(struct ctx *c, int side)
{
    if (side == SERVER)
        rpal_dispatch_until(&c->sh->client_ready);
    else
        rpal_open_side(c->mode, 0, c->sh->scratch);
}

static void *rpal_buf(struct ctx *c, int side)
{
    (void)c;
    return side == CLIENT ? rp.req : txbuf;
}

static const void *rpal_call_side(struct ctx *c)
{
    size_t len;
    int err = rpal_call(rp.b.chan, rp.req, c->size, rxbuf, c->size, &len,
                        RPAL_BENCH_TIMEOUT_MS);
    if (err < 0)
        rpal_die("rpal_call", err);
    if (len != c->size)
        die_msg("rpal_call: a %zu-byte reply, not %zu", len, c->size);
    return rxbuf;
}

/* Server only: the client uses rpal_call_side. */
static void rpal_send_side(struct ctx *c, int side)
{
    (void)side;
    int err = rpal_reply(rp.b.r, &rp.b.m, txbuf, c->size);
    if (err < 0)
        rpal_die("rpal_reply", err);
}

static const void *rpal_recv_side(struct ctx *c, int side)
{
    (void)side;
    return bench_rpal_receive(&rp.b, c->size, RPAL_BENCH_TIMEOUT_MS);
}

static void rpal_fini(struct ctx *c, int side)
{
    (void)c;
    if (side == CLIENT)
        rpal_free(rp.req);
    bench_rpal_fini(&rp.b);
}

const struct transport tr_rpal = {
    .name = "rpal", .waits = rpal_waits, .setup = rpal_setup,
    .init = rpal_init, .connect = rpal_connect, .buf = rpal_buf,
    .send = rpal_send_side, .recv = rpal_recv_side, .call = rpal_call_side,
    .fini = rpal_fini,
};

/* rpal-serve: the same, but the service is one loop on one thread
 * (rpal_serve): the handshakes and the requests come through the same call,
 * as a service that has no second thread runs. */
static const char *rpal_serve_waits(const struct ctx *c)
{
    (void)c;
    return "rpal_call / rpal_serve (one loop: requests and the domain's events), as rpal";
}

static int serve_stashed; /* the first request came while connecting */

static void rpal_serve_connect(struct ctx *c, int side)
{
    if (side == CLIENT) {
        rpal_open_side(c->mode, 0, c->sh->scratch);
        return;
    }
    int64_t end = mono_ns() + 30 * 1000000000LL;
    while (!rpal_load_acquire(&c->sh->client_ready)) { /* pairs with the client's release */
        struct rpal_event ev;
        int err = rpal_serve(rp.b.r, &rp.b.m, &ev, 5);
        if (err == RPAL_SERVE_MSG) { /* the client calls right after it opens */
            serve_stashed = 1;
            return;
        }
        if (err < 0 && err != -ETIMEDOUT && err != -EINTR)
            rpal_die("rpal_serve", err);
        if (mono_ns() > end)
            die_msg("the client did not connect in 30 s");
    }
}

static const void *rpal_serve_recv(struct ctx *c, int side)
{
    (void)side;
    for (;;) {
        struct rpal_event ev;
        int err = serve_stashed ? RPAL_SERVE_MSG
                                : rpal_serve(rp.b.r, &rp.b.m, &ev, RPAL_BENCH_TIMEOUT_MS);
        serve_stashed = 0;
        if (err == RPAL_SERVE_EVENT || err == -EINTR)
            continue;
        if (err < 0)
            rpal_die("rpal_serve", err);
        if (rp.b.m.len != c->size)
            die_msg("rpal_serve: a %zu-byte request, not %zu", rp.b.m.len, c->size);
        return rp.b.m.data;
    }
}

const struct transport tr_rpal_serve = {
    .name = "rpal-serve", .waits = rpal_serve_waits, .setup = rpal_setup,
    .init = rpal_init, .connect = rpal_serve_connect, .buf = rpal_buf,
    .send = rpal_send_side, .recv = rpal_serve_recv, .call = rpal_call_side,
    .fini = rpal_fini,
};

/* ===== RPAL STREAM =====
 * Producer: pipelined rpal_send (up to the ring's depth outstanding) and
 * rpal_complete; a message of at most RPAL_INLINE_MAX bytes travels in the
 * ring, a larger one from private memory is copied once into the producer's
 * slot (the one copy spin-shm's producer makes too). Consumer: the service,
 * rpal_receive, reads the message in place (or copies it out), replies with
 * an empty message. */
static void rpal_stream_consumer(struct sctx *c)
{
    struct stream_shared *sh = c->sh;
    snprintf(rp.service, sizeof rp.service, "stream-%d", (int)getppid());
    rpal_join_side(SERVER, MODE_POLL, sh->scratch, sizeof sh->scratch);
    /* Release: the scratch before the flag; pairs with the producer's
     * acquire. */
    rpal_store_release(&sh->consumer_ready, 2);
    rpal_dispatch_until(&sh->producer_ready);
    unsigned char *dst = aligned_alloc(64, page_round(c->size));
    if (!dst)
        die_msg("out of memory");
    uint64_t total = c->warm + c->count, sum = 0;
    for (uint64_t i = 0; i < total; i++) {
        const void *data = bench_rpal_receive(&rp.b, c->size, RPAL_BENCH_TIMEOUT_MS);
        stream_take(c, data, i, dst, &sum);
        int err;
        if ((err = rpal_reply(rp.b.r, &rp.b.m, NULL, 0)) < 0)
            rpal_die("rpal_reply", err);
        if (i + 1 == c->warm)
            sh->t0 = mono_ns();
    }
    sh->t1 = mono_ns();
    sh->sum = sum;
    free(dst);
    int64_t end = mono_ns() + 30 * 1000000000LL;
    while (!rpal_load_acquire(&sh->producer_done) && mono_ns() < end)
        usleep(100);
    bench_rpal_fini(&rp.b);
}

static void rpal_stream_producer(struct sctx *c)
{
    struct stream_shared *sh = c->sh;
    while (rpal_load_acquire(&sh->consumer_ready) != 2) /* pairs with the consumer */
        usleep(100);
    rpal_join_side(CLIENT, MODE_POLL, NULL, 0);
    unsigned depth = c->nslots > 1024 ? 1024 : (unsigned)c->nslots;
    rpal_open_side(MODE_POLL, depth, sh->scratch);
    rpal_store_release(&sh->producer_ready, 1); /* pairs with rpal_dispatch_until */
    unsigned char *src = aligned_alloc(64, page_round(c->size));
    if (!src)
        die_msg("out of memory");
    for (size_t i = 0; i < c->size; i++)
        src[i] = (unsigned char)i;
    uint64_t total = c->warm + c->count, sent = 0, done = 0;
    while (done < total) {
        while (sent < total) {
            memcpy(src, &sent, 8);
            int err = rpal_send(rp.b.chan, src, c->size, sent);
            if (err == -EAGAIN)
                break;
            if (err < 0)
                rpal_die("rpal_send", err);
            sent++;
        }
        size_t len;
        int err = rpal_complete(rp.b.chan, NULL, NULL, 0, &len, RPAL_BENCH_TIMEOUT_MS);
        if (err < 0)
            rpal_die("rpal_complete", err);
        done++;
    }
    free(src);
    rpal_store_release(&sh->producer_done, 1);
    bench_rpal_fini(&rp.b);
}

const struct stream_transport st_rpal = {
    .name = "rpal", .what = "rpal_send + rpal_complete, depth 1024",
    .producer = rpal_stream_producer, .consumer = rpal_stream_consumer,
};
const struct stream_transport st_rpal_copy = {
    .name = "rpal-copy", .what = "the same, the consumer copies out",
    .copy_out = 1, .producer = rpal_stream_producer,
    .consumer = rpal_stream_consumer,
};
#else
static const char *rpal_missing(const struct ctx *c)
{
    (void)c;
    return "the rpal call path is not built yet (RPAL_HAVE_CALL undefined)";
}
const struct transport tr_rpal = {.name = "rpal", .skip = rpal_missing};
const struct transport tr_rpal_serve = {.name = "rpal-serve", .skip = rpal_missing};
static const char *rpal_stream_missing(const struct sctx *c)
{
    (void)c;
    return "the rpal call path is not built yet (RPAL_HAVE_CALL undefined)";
}
const struct stream_transport st_rpal = {.name = "rpal", .skip = rpal_stream_missing};
#endif
