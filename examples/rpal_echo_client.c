/* The RPAL paper's sample benchmark, client side, in two versions that
 * differ in a few lines: uds_echo_client.c over a Unix-domain stream socket
 * and epoll, and rpal_echo_client.c, the same program switched to rpal
 * (`diff -u` them, or read docs/compat.md).
 *
 * It connects to the server, then sends COUNT messages of SIZE bytes one at
 * a time: each carries the TSC (__rdtsc(), read just before the write) in its
 * first 8 bytes and a pattern particular to the message in the rest; the
 * client waits (epoll_wait, blocking) for the echo, checks that it is the
 * message sent, and only then sends the next. The server times the one-way
 * trip; this side prints the round trip:
 *
 *   Echoed: N messages of S bytes, all correct, average round trip: R ns
 *
 *   {uds,rpal}_echo_client [--socket PATH] [--count N] [--size BYTES] [--cpu N]
 *                          [--timeout MS] [--json]
 *
 * --timeout: give up (exit 1) when an echo takes longer than MS milliseconds
 * (default 10000). A server that is not there, goes away or echoes something
 * else is an error message and exit 1.
 */
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <rpal.h>

#include "echo_common.h"

/* Writes all LEN bytes: a stream socket may take part of them. */
static int io_write_all(int fd, const void *buf, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = rpal_write(fd, (const char *)buf + done, len - done);
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
    int err = rpal_epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    if (err < 0)
        fail("epoll_ctl", err);
}

/* Connects to PATH. A server that is starting may have bound its socket
 * but not be listening yet (ECONNREFUSED): that is retried for a second. */
static int connect_to(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    strcpy(addr.sun_path, path);
    for (int tries = 0;; tries++) {
        int fd = sys(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (fd < 0)
            fail("socket", fd);
        int err = sys(connect(fd, (struct sockaddr *)&addr, sizeof addr));
        if (err == 0)
            return fd;
        close(fd);
        if (err != -ECONNREFUSED || tries == 100)
            fail(path, err);
        usleep(10000);
    }
}

/* Message I's bytes after the stamp, so that an echo of another message, or
 * of a torn one, shows. */
static void fill(unsigned char *msg, size_t size, uint64_t i)
{
    for (size_t j = sizeof(uint64_t); j < size; j++)
        msg[j] = (unsigned char)(i * 31 + j);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv, 1);
    pin(opt.cpu);
    signal(SIGPIPE, SIG_IGN); /* a server gone is an error from write, not a signal */

    int err;
    rpal_domain *dom;
    if ((err = rpal_domain_join(NULL, NULL, &dom)) < 0)
        fail("rpal_domain_join", err);
    int fd = connect_to(opt.path);
    if ((err = rpal_uds_fdmap(dom, fd, opt.timeout_ms)) < 0)
        fail("rpal_uds_fdmap", err);
    int ep = sys(epoll_create1(EPOLL_CLOEXEC));
    if (ep < 0)
        fail("epoll_create1", ep);
    watch(ep, fd);

    static unsigned char msg[MAX_SIZE], echo[MAX_SIZE];
    double start = now_ns();
    for (uint64_t i = 0; i < opt.count; i++) {
        fill(msg, opt.size, i);
        uint64_t t = stamp();
        memcpy(msg, &t, sizeof t);
        err = io_write_all(fd, msg, opt.size);
        if (err < 0)
            fail("write", err);
        for (size_t have = 0; have < opt.size;) {
            struct epoll_event ev;
            int n = rpal_epoll_wait(ep, &ev, 1, opt.timeout_ms);
            if (n == -EINTR)
                continue;
            if (n < 0)
                fail("epoll_wait", n);
            if (n == 0) {
                fprintf(stderr, "%s: no echo of message %" PRIu64 " within %d ms\n",
                        program_invocation_short_name, i + 1, opt.timeout_ms);
                exit(1);
            }
            ssize_t r = rpal_read(fd, echo + have, opt.size - have);
            if (r == -EINTR || r == -EAGAIN)
                continue;
            if (r < 0)
                fail("read", (int)r);
            if (r == 0) {
                fprintf(stderr, "%s: the server closed the connection after %" PRIu64
                        " of %" PRIu64 " messages\n", program_invocation_short_name, i, opt.count);
                exit(1);
            }
            have += r;
        }
        if (memcmp(msg, echo, opt.size) != 0) {
            fprintf(stderr, "%s: the echo of message %" PRIu64 " differs from it\n",
                    program_invocation_short_name, i + 1);
            exit(1);
        }
    }
    double rtt = opt.count ? (now_ns() - start) / opt.count : 0;
    rpal_close(fd);
    close(ep);

    if (opt.json)
        printf("{\"size\":%zu,\"count\":%" PRIu64 ",\"rtt_ns\":%.0f}\n", opt.size, opt.count, rtt);
    else
        printf("Echoed: %" PRIu64 " messages of %zu bytes, all correct, average round trip: %.0f ns\n",
               opt.count, opt.size, rtt);
    return 0;
}
