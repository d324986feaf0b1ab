/* uv_rpal_echo: rpal_echo_server inside a libuv event loop.
 *
 * The server's rpal epoll set is handed to libuv as one descriptor, the way
 * libuv itself is embedded in other loops (uv_backend_fd, uv_backend_timeout):
 *
 *   - a uv_poll_t watches the set's descriptor: it turns readable when the
 *     kernel has an event (a new connection, a wake-up sent by a peer that
 *     saw us sleeping); its callback takes the events with
 *     rpal_epoll_wait(set, ..., 0), which never blocks;
 *   - a uv_prepare_t runs before every time libuv would block and asks
 *     rpal_epoll_timeout(set): 0 means events are pending in the rings that
 *     the descriptor does not show, so a uv_idle_t is started, which keeps
 *     libuv from blocking and takes those events; -1 means nothing is pending
 *     and peers will wake the descriptor up, so the idle handle stops and
 *     libuv may sleep.
 *
 * The rest is rpal_echo_server's: one client, every SIZE-byte message timed
 * on receipt against the TSC stamp in its first 8 bytes and echoed; the
 * paper's line when the client closes. Run it with rpal_echo_client.
 *
 *   uv_rpal_echo [--socket PATH] [--size BYTES] [--cpu N] [--timeout MS] [--json]
 */
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <rpal.h>
#include <uv.h>

#include "echo_common.h"

#define MAX_EVENTS 16

static uv_loop_t *loop;
static uv_poll_t set_watch;  /* the rpal epoll set's descriptor */
static uv_prepare_t before_block;
static uv_idle_t pending;    /* active while rpal events are pending */
static uv_timer_t watchdog;  /* --timeout */

static rpal_domain *dom;
static int ep, lfd, cfd = -1, done;
static char buf[MAX_SIZE];
static size_t have;          /* bytes of the current message read so far */
static uint64_t total, count, activity, activity_seen;

static void watch(int fd)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    int err = rpal_epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    if (err < 0)
        fail("rpal_epoll_ctl", err);
}

static void stop(int how)
{
    done = how;
    uv_stop(loop);
}

static void on_connection(void)
{
    int fd = sys(accept4(lfd, NULL, NULL, SOCK_CLOEXEC));
    if (fd < 0)
        fail("accept", fd);
    if (cfd >= 0) { /* one client per run: turn others away */
        close(fd);
        return;
    }
    cfd = fd;
    int err = rpal_uds_fdmap(dom, cfd, opt.timeout_ms);
    if (err < 0)
        fail("rpal_uds_fdmap", err);
    watch(cfd);
}

static void on_readable(void)
{
    ssize_t r = rpal_read(cfd, buf + have, opt.size - have);
    uint64_t now = stamp(); /* the message (or part of it) is here */
    if (r == -EINTR || r == -EAGAIN)
        return;
    if (r < 0)
        fail("read", (int)r);
    if (r == 0) { /* the client closed: the end of the run */
        if (have)
            fprintf(stderr, "%s: client left in the middle of a message\n",
                    program_invocation_short_name);
        stop(have ? 2 : 1);
        return;
    }
    have += r;
    if (have < opt.size)
        return;
    uint64_t sent;
    memcpy(&sent, buf, sizeof sent);
    total += now - sent;
    count++;
    have = 0;
    for (size_t off = 0; off < opt.size;) {
        ssize_t n = rpal_write(cfd, buf + off, opt.size - off);
        if (n == -EINTR)
            continue;
        if (n < 0)
            fail("write", (int)n);
        off += n;
    }
}

/* Takes what the set has now, without blocking. */
static void take_events(void)
{
    struct epoll_event events[MAX_EVENTS];
    int n = rpal_epoll_wait(ep, events, MAX_EVENTS, 0);
    if (n < 0 && n != -EINTR)
        fail("rpal_epoll_wait", n);
    for (int i = 0; i < n && !done; i++) {
        activity++;
        if (events[i].data.fd == lfd)
            on_connection();
        else
            on_readable();
    }
}

static void on_set_readable(uv_poll_t *h, int status, int events)
{
    (void)h, (void)events;
    if (status < 0) {
        fprintf(stderr, "%s: polling the rpal set: %s\n", program_invocation_short_name,
                uv_strerror(status));
        stop(2);
        return;
    }
    take_events();
}

static void on_pending(uv_idle_t *h)
{
    (void)h;
    take_events();
}

/* Before libuv blocks: if rpal has events that the descriptor does not
 * show, the idle handle keeps the loop from blocking until they are taken. */
static void on_before_block(uv_prepare_t *h)
{
    (void)h;
    if (rpal_epoll_timeout(ep) == 0)
        uv_idle_start(&pending, on_pending);
    else
        uv_idle_stop(&pending);
}

static void on_watchdog(uv_timer_t *h)
{
    (void)h;
    if (activity != activity_seen) {
        activity_seen = activity;
        return;
    }
    fprintf(stderr, "%s: nothing happened for %d ms (%s); giving up\n",
            program_invocation_short_name, opt.timeout_ms,
            cfd < 0 ? "no client" : "client silent");
    stop(2);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv, 0);
    pin(opt.cpu);
    signal(SIGPIPE, SIG_IGN); /* a client gone is an error from write, not a signal */
    int err = rpal_domain_join(NULL, NULL, &dom);
    if (err < 0)
        fail("rpal_domain_join", err);

    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    strcpy(addr.sun_path, opt.path);
    lfd = sys(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (lfd < 0)
        fail("socket", lfd);
    unlink(opt.path); /* a socket file left by an earlier run */
    if ((err = sys(bind(lfd, (struct sockaddr *)&addr, sizeof addr))) < 0)
        fail(opt.path, err);
    if ((err = sys(listen(lfd, 1))) < 0)
        fail("listen", err);
    ep = sys(epoll_create1(EPOLL_CLOEXEC));
    if (ep < 0)
        fail("epoll_create1", ep);
    watch(lfd);

    loop = uv_default_loop();
    if ((err = uv_poll_init(loop, &set_watch, ep)) < 0 ||
        (err = uv_poll_start(&set_watch, UV_READABLE, on_set_readable)) < 0 ||
        (err = uv_prepare_init(loop, &before_block)) < 0 ||
        (err = uv_prepare_start(&before_block, on_before_block)) < 0 ||
        (err = uv_idle_init(loop, &pending)) < 0 ||
        (err = uv_timer_init(loop, &watchdog)) < 0 ||
        (err = uv_timer_start(&watchdog, on_watchdog, opt.timeout_ms, opt.timeout_ms)) < 0) {
        fprintf(stderr, "%s: libuv: %s\n", program_invocation_short_name, uv_strerror(err));
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);

    uv_close((uv_handle_t *)&set_watch, NULL);
    uv_close((uv_handle_t *)&before_block, NULL);
    uv_close((uv_handle_t *)&pending, NULL);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_run(loop, UV_RUN_DEFAULT); /* lets the closes finish */
    uv_loop_close(loop);
    if (cfd >= 0)
        rpal_close(cfd);
    close(ep);
    close(lfd);
    unlink(opt.path);

    print_result(total, count);
    return done == 1 ? 0 : 1;
}
