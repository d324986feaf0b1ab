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
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t stamp(void) { return __rdtsc(); } /* as the paper */
#elif defined(__aarch64__)
static inline uint64_t stamp(void)
{
    uint64_t v;
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v) : : "memory");
    return v;
}
#else
static inline uint64_t stamp(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
#endif

#define MAX_SIZE 65536

static struct {
    const char *path;
    uint64_t count;
    size_t size;
    int cpu, timeout_ms, json;
} opt = { "/tmp/echo.sock", 1000000, 32, -1, 10000, 0 };

/* ERR is a negative errno. */
static void fail(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what, strerror(-err));
    exit(1);
}

/* The result of a system call, with its error as a negative errno (as
 * the rest of this program passes errors). */
static long sys(long ret)
{
    return ret < 0 ? -errno : ret;
}

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

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "socket", required_argument, NULL, 's' },
        { "count", required_argument, NULL, 'n' },
        { "size", required_argument, NULL, 'z' },
        { "cpu", required_argument, NULL, 'c' },
        { "timeout", required_argument, NULL, 't' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "s:n:z:c:t:jh", longopts, NULL)) != -1) {
        switch (c) {
        case 's': opt.path = optarg; break;
        case 'n': opt.count = strtoull(optarg, NULL, 0); break;
        case 'z': opt.size = strtoul(optarg, NULL, 0); break;
        case 'c': opt.cpu = atoi(optarg); break;
        case 't': opt.timeout_ms = atoi(optarg); break;
        case 'j': opt.json = 1; break;
        default:
            fprintf(stderr, "usage: %s [--socket PATH] [--count N] [--size BYTES] [--cpu N] "
                    "[--timeout MS] [--json]\n", program_invocation_short_name);
            exit(c == 'h' ? 0 : 2);
        }
    }
    if (opt.size < sizeof(uint64_t) || opt.size > MAX_SIZE) {
        fprintf(stderr, "%s: --size must be 8 to %d bytes\n", program_invocation_short_name, MAX_SIZE);
        exit(2);
    }
    struct sockaddr_un sun;
    if (strlen(opt.path) >= sizeof sun.sun_path) {
        fprintf(stderr, "%s: socket path too long: %s\n", program_invocation_short_name, opt.path);
        exit(2);
    }
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int err = cpu >= 0 ? sys(sched_setaffinity(0, sizeof set, &set)) : 0;
    if (err < 0)
        fail("--cpu", err);
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

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    pin(opt.cpu);
    signal(SIGPIPE, SIG_IGN); /* a server gone is an error from write, not a signal */

    int err;
    int fd = connect_to(opt.path);
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
            int n = sys(epoll_wait(ep, &ev, 1, opt.timeout_ms));
            if (n == -EINTR)
                continue;
            if (n < 0)
                fail("epoll_wait", n);
            if (n == 0) {
                fprintf(stderr, "%s: no echo of message %" PRIu64 " within %d ms\n",
                        program_invocation_short_name, i + 1, opt.timeout_ms);
                exit(1);
            }
            ssize_t r = sys(read(fd, echo + have, opt.size - have));
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
    close(fd);
    close(ep);

    if (opt.json)
        printf("{\"size\":%zu,\"count\":%" PRIu64 ",\"rtt_ns\":%.0f}\n", opt.size, opt.count, rtt);
    else
        printf("Echoed: %" PRIu64 " messages of %zu bytes, all correct, average round trip: %.0f ns\n",
               opt.count, opt.size, rtt);
    return 0;
}
