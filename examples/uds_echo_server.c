/* The RPAL paper's sample benchmark, server side, in two versions that
 * differ in a few lines: uds_echo_server.c over epoll and a Unix-domain
 * stream socket, and rpal_echo_server.c, the same program switched to rpal
 * (`diff -u` them, or read docs/compat.md).
 *
 * It accepts one client, waits in epoll_wait (blocking), reads each SIZE-byte
 * message, adds "TSC now - the stamp in the message's first 8 bytes" to a
 * total as soon as the whole message is in, and echoes the message back (the
 * echo is not timed). When the client closes the connection it prints the
 * paper's line:
 *
 *   Message length: 32 bytes, Total TSC cycles: T, Message count: N, Average latency: A cycles
 *
 *   {uds,rpal}_echo_server [--socket PATH] [--size BYTES] [--cpu N] [--timeout MS] [--json]
 *
 * --timeout: give up (exit 1) when nothing happens for MS milliseconds
 * (default 10000), so that a client that never comes or hangs cannot hang
 * the server. Exit 0 when a client was served, 1 on any error.
 */
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo_common.h"

#define MAX_EVENTS 16

/* Writes all LEN bytes: a stream socket may take part of them. */
static int io_write_all(int fd, const void *buf, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = sys(write(fd, (const char *)buf + done, len - done));
        if (n == -EINTR)
            continue;
        if (n < 0)
            return (int)n;
        done += n;
    }
    return 0;
}

static void watch(int ep, int fd)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    int err = sys(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    if (err < 0)
        fail("epoll_ctl", err);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv, 0);
    pin(opt.cpu);
    signal(SIGPIPE, SIG_IGN); /* a client gone is an error from write, not a signal */

    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    strcpy(addr.sun_path, opt.path);
    int err;
    int lfd = sys(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (lfd < 0)
        fail("socket", lfd);
    unlink(opt.path); /* a socket file left by an earlier run */
    if ((err = sys(bind(lfd, (struct sockaddr *)&addr, sizeof addr))) < 0)
        fail(opt.path, err);
    if ((err = sys(listen(lfd, 1))) < 0)
        fail("listen", err);
    int ep = sys(epoll_create1(EPOLL_CLOEXEC));
    if (ep < 0)
        fail("epoll_create1", ep);
    watch(ep, lfd);

    static char buf[MAX_SIZE];
    size_t have = 0;    /* bytes of the current message read so far */
    uint64_t total = 0, count = 0;
    int cfd = -1, done = 0;
    struct epoll_event events[MAX_EVENTS];
    while (!done) {
        int n = sys(epoll_wait(ep, events, MAX_EVENTS, opt.timeout_ms));
        if (n == -EINTR)
            continue;
        if (n < 0)
            fail("epoll_wait", n);
        if (n == 0) {
            fprintf(stderr, "%s: nothing happened for %d ms (%s); giving up\n",
                    program_invocation_short_name, opt.timeout_ms,
                    cfd < 0 ? "no client" : "client silent");
            exit(1);
        }
        for (int i = 0; i < n && !done; i++) {
            if (events[i].data.fd == lfd) {
                int fd = sys(accept4(lfd, NULL, NULL, SOCK_CLOEXEC));
                if (fd < 0)
                    fail("accept", fd);
                if (cfd >= 0) { /* one client per run: turn others away */
                    close(fd);
                    continue;
                }
                cfd = fd;
                watch(ep, cfd);
                continue;
            }
            ssize_t r = sys(read(cfd, buf + have, opt.size - have));
            uint64_t now = stamp(); /* the message (or part of it) is here */
            if (r == -EINTR || r == -EAGAIN)
                continue;
            if (r < 0)
                fail("read", (int)r);
            if (r == 0) { /* the client closed: the end of the run */
                if (have)
                    fprintf(stderr, "%s: client left in the middle of a message\n",
                            program_invocation_short_name);
                done = have ? 2 : 1;
                break;
            }
            have += r;
            if (have < opt.size)
                continue;
            uint64_t sent;
            memcpy(&sent, buf, sizeof sent);
            total += now - sent;
            count++;
            have = 0;
            err = io_write_all(cfd, buf, opt.size);
            if (err < 0)
                fail("write", err);
        }
    }
    close(cfd);
    close(ep);
    close(lfd);
    unlink(opt.path);

    print_result(total, count);
    return done == 1 ? 0 : 1;
}
