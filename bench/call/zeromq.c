/* zeromq (bench/call): REQ/REP over ipc://, libzmq loaded at run time. */
#include "call.h"

#include <dlfcn.h>

#if __has_include(<zmq.h>)
#include <zmq.h>

#define ZMQ_FUNCS(X)                                                          \
    X(zmq_ctx_new) X(zmq_ctx_term) X(zmq_socket) X(zmq_close) X(zmq_bind)     \
    X(zmq_connect) X(zmq_send) X(zmq_recv) X(zmq_setsockopt) X(zmq_strerror)
static struct {
    int loaded;
    ZMQ_FUNCS(FN_PTR)
} zq;
static struct {
    void *ctx, *sock;
    char path[108], endpoint[128];
} zs;

static const char *zmq_load(void)
{
    static char why[300];
    const char *soname = "libzmq.so.5";
    if (zq.loaded)
        return NULL;
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(why, sizeof why, "%s (Debian package libzmq5)", dlerror());
        return why;
    }
    __typeof__(&zq) lib = &zq;
    ZMQ_FUNCS(FN_LOAD)
    zq.loaded = 1;
    return NULL;
}

static void zmq_die(const char *what)
{
    die_msg("%s: %s", what, zq.zmq_strerror(errno));
}

static const char *zmq_skip(const struct ctx *c)
{
    (void)c;
    return zmq_load();
}

static const char *zmq_waits(const struct ctx *c)
{
    (void)c;
    /* zmq_recv(ZMQ_DONTWAIT) in a loop would starve the process's own I/O
     * thread, which is pinned to the same CPU: blocking in every mode. */
    return "both blocking zmq_recv (REQ/REP; an I/O thread per process)";
}

static int zmq_setup(struct ctx *c)
{
    snprintf(zs.path, sizeof zs.path, "/tmp/rpal-bench-call-%d.ipc", (int)getpid());
    snprintf(zs.endpoint, sizeof zs.endpoint, "ipc://%s", zs.path);
    unlink(zs.path);
    (void)c;
    return 0;
}

static void zmq_init_side(struct ctx *c, int side)
{
    alloc_bufs(c);
    zs.ctx = zq.zmq_ctx_new(); /* its I/O thread inherits our CPU */
    if (!zs.ctx)
        zmq_die("zmq_ctx_new");
    zs.sock = zq.zmq_socket(zs.ctx, side == SERVER ? ZMQ_REP : ZMQ_REQ);
    if (!zs.sock)
        zmq_die("zmq_socket");
    /* The server's last reply may still be queued for the I/O thread when
     * it closes: linger until it is delivered (but not forever). */
    int linger = 10000;
    zq.zmq_setsockopt(zs.sock, ZMQ_LINGER, &linger, sizeof linger);
    if (side == SERVER ? zq.zmq_bind(zs.sock, zs.endpoint)
                       : zq.zmq_connect(zs.sock, zs.endpoint))
        zmq_die(side == SERVER ? "zmq_bind" : "zmq_connect");
}

static void zmq_send_side(struct ctx *c, int side)
{
    (void)side;
    while (zq.zmq_send(zs.sock, txbuf, c->size, 0) != (int)c->size)
        if (errno != EINTR)
            zmq_die("zmq_send");
}

static const void *zmq_recv_side(struct ctx *c, int side)
{
    (void)side;
    for (;;) {
        int n = zq.zmq_recv(zs.sock, rxbuf, c->size, 0);
        if (n == (int)c->size)
            return rxbuf;
        if (n >= 0)
            die_msg("zmq_recv: %d bytes, not %zu", n, c->size);
        if (errno != EINTR)
            zmq_die("zmq_recv");
    }
}

static void zmq_fini(struct ctx *c, int side)
{
    (void)c, (void)side;
    zq.zmq_close(zs.sock);
    zq.zmq_ctx_term(zs.ctx);
}

static void zmq_teardown(struct ctx *c)
{
    (void)c;
    unlink(zs.path);
}

const struct transport tr_zmq = {
    .name = "zeromq", .skip = zmq_skip, .waits = zmq_waits,
    .setup = zmq_setup, .init = zmq_init_side, .buf = local_buf,
    .send = zmq_send_side, .recv = zmq_recv_side, .fini = zmq_fini,
    .teardown = zmq_teardown,
};
#else
static const char *zmq_missing(const struct ctx *c)
{
    (void)c;
    return "built without <zmq.h> (Debian package libzmq3-dev)";
}
const struct transport tr_zmq = {.name = "zeromq", .skip = zmq_missing};
#endif
