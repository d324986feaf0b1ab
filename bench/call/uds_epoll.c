/* uds-epoll: the RPAL paper's baseline (bench/call). */
#include "call.h"

#include <sys/epoll.h>
#include <sys/socket.h>

/* A Unix stream socketpair; each side write()s its message. The server
 * waits in epoll_wait, then read()s; the client read()s the reply on its
 * socket (a blocking read; in poll mode a non-blocking read in a loop). In
 * poll mode the server calls epoll_wait with timeout 0 in a loop. */
static struct {
    int sv[2], ep;
} uds = {{-1, -1}, -1};

static const char *uds_waits(const struct ctx *c)
{
    return c->poll ? "server epoll_wait(0) loop + read; client non-blocking read loop"
                   : "server epoll_wait + read; client blocking read";
}

static int uds_setup(struct ctx *c)
{
    int type = SOCK_STREAM | SOCK_CLOEXEC | (c->poll ? SOCK_NONBLOCK : 0);
    if (socketpair(AF_UNIX, type, 0, uds.sv) < 0) {
        snprintf(c->msg, sizeof c->msg, "socketpair: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static void uds_init(struct ctx *c, int side)
{
    alloc_bufs(c);
    close(uds.sv[!side]);
    if (side == SERVER) {
        uds.ep = epoll_create1(EPOLL_CLOEXEC);
        if (uds.ep < 0)
            die("epoll_create1");
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = uds.sv[SERVER]};
        if (epoll_ctl(uds.ep, EPOLL_CTL_ADD, uds.sv[SERVER], &ev) < 0)
            die("epoll_ctl");
    }
}

static void uds_send(struct ctx *c, int side)
{
    write_full(uds.sv[side], txbuf, c->size);
}

static const void *uds_recv(struct ctx *c, int side)
{
    if (side == SERVER) {
        struct epoll_event ev;
        for (;;) {
            int n = epoll_wait(uds.ep, &ev, 1, c->poll ? 0 : -1);
            if (n > 0)
                break;
            if (n < 0 && errno != EINTR)
                die("epoll_wait");
        }
    }
    read_full(uds.sv[side], rxbuf, c->size);
    return rxbuf;
}

static void uds_teardown(struct ctx *c)
{
    (void)c;
    for (int i = 0; i < 2; i++)
        if (uds.sv[i] >= 0)
            close(uds.sv[i]);
    uds.sv[0] = uds.sv[1] = -1;
}

const struct transport tr_uds = {
    .name = "uds-epoll", .waits = uds_waits, .setup = uds_setup,
    .init = uds_init, .buf = local_buf, .send = uds_send, .recv = uds_recv,
    .teardown = uds_teardown,
};
