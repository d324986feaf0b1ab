/* pipe: two pipes, one per direction (bench/call). */
#include "call.h"

#include <fcntl.h>

/* Two pipes, one per direction; blocking read and write (in poll mode the
 * read ends are non-blocking and read in a loop). */
static struct {
    int p[2][2]; /* p[side]: side writes p[side][1], the peer reads p[side][0] */
} pp = {{{-1, -1}, {-1, -1}}};

static const char *pipe_waits(const struct ctx *c)
{
    return c->poll ? "both non-blocking read loop" : "both blocking read";
}

static int pipe_setup(struct ctx *c)
{
    for (int s = 0; s < 2; s++) {
        if (pipe2(pp.p[s], O_CLOEXEC) < 0) {
            snprintf(c->msg, sizeof c->msg, "pipe2: %s", strerror(errno));
            return -1;
        }
        if (c->poll && fcntl(pp.p[s][0], F_SETFL, O_NONBLOCK) < 0) {
            snprintf(c->msg, sizeof c->msg, "fcntl: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void pipe_init(struct ctx *c, int side)
{
    alloc_bufs(c);
    close(pp.p[side][0]);
    close(pp.p[!side][1]);
}

static void pipe_send(struct ctx *c, int side)
{
    write_full(pp.p[side][1], txbuf, c->size);
}

static const void *pipe_recv(struct ctx *c, int side)
{
    read_full(pp.p[!side][0], rxbuf, c->size);
    return rxbuf;
}

static void pipe_teardown(struct ctx *c)
{
    (void)c;
    for (int s = 0; s < 2; s++)
        for (int e = 0; e < 2; e++) {
            if (pp.p[s][e] >= 0)
                close(pp.p[s][e]);
            pp.p[s][e] = -1;
        }
}

const struct transport tr_pipe = {
    .name = "pipe", .waits = pipe_waits, .setup = pipe_setup,
    .init = pipe_init, .buf = local_buf, .send = pipe_send,
    .recv = pipe_recv, .teardown = pipe_teardown,
};
