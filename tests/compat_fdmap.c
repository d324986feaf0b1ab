/* Compat: a connected Unix stream socket between two processes is upgraded
 * with rpal_uds_fdmap and used through rpal_read/rpal_write and
 * rpal_epoll_wait, next to a plain descriptor in the same epoll set.
 * Checked: byte-exact echo of every size class (inline, copied, larger than
 * a read), level- and edge-triggered EPOLLIN, EPOLLOUT once a full ring
 * drains (non-blocking writes get -EAGAIN first), the end of the
 * connection after the last bytes (close, and SIGKILL: no hang), a peer
 * that is not a member (nothing is sent: the socket works as before), and a
 * forked child's -ECHILD. */
#include "testlib.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>

static int read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = rpal_read(fd, (char *)buf + got, len - got);
        if (n == -EAGAIN) {
            struct pollfd pf = {fd, POLLIN, 0};
            poll(&pf, 1, 10); /* also the rpal wake-up byte */
            continue;
        }
        if (n <= 0)
            return n == 0 ? -EPIPE : (int)n;
        got += (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = rpal_write(fd, (const char *)buf + done, len - done);
        if (n == -EAGAIN) {
            usleep(100);
            continue;
        }
        if (n < 0)
            return (int)n;
        done += (size_t)n;
    }
    return 0;
}

/* The server: echoes frames ([u32 len][bytes]) on the mapped socket; takes
 * commands on a pipe watched in the same epoll set: 'P' stop reading for
 * 300 ms, 'T' send two unasked 8-byte frames, 'Q' quit, 'K' quit without
 * closing (the client kills us). */
static int server(int sock, int cmd)
{
    rpal_domain *d;
    REQUIRE(rpal_domain_join("compat", NULL, &d) == 0);
    REQUIRE(write(sock, "J", 1) == 1); /* joined: both must have, before fdmap */
    char j;
    REQUIRE(read(sock, &j, 1) == 1);
    REQUIRE(rpal_uds_fdmap(d, sock, 5000) == 1);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    REQUIRE(ep >= 0);
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = 111};
    REQUIRE(rpal_epoll_ctl(ep, EPOLL_CTL_ADD, sock, &e) == 0);
    e.data.u64 = 222;
    REQUIRE(rpal_epoll_ctl(ep, EPOLL_CTL_ADD, cmd, &e) == 0);
    static unsigned char buf[1 << 18];
    for (;;) {
        struct epoll_event ev[4];
        int n = rpal_epoll_wait(ep, ev, 4, 10000);
        REQUIRE(n > 0);
        for (int i = 0; i < n; i++) {
            if (ev[i].data.u64 == 222) {
                char c;
                REQUIRE(read(cmd, &c, 1) == 1);
                if (c == 'Q') {
                    rpal_close(sock);
                    return 0;
                }
                if (c == 'K')
                    pause();
                if (c == 'P')
                    usleep(300000);
                if (c == 'T') {
                    unsigned char f[12] = {8, 0, 0, 0, 'u', 'n', 'a', 's', 'k', 'e', 'd', '!'};
                    REQUIRE(write_full(sock, f, 12) == 0);
                    REQUIRE(write_full(sock, f, 12) == 0);
                }
                continue;
            }
            REQUIRE(ev[i].data.u64 == 111);
            REQUIRE(ev[i].events & EPOLLIN);
            uint32_t len;
            int r = read_full(sock, &len, 4);
            if (r == -EPIPE)
                return 0; /* the client closed */
            REQUIRE(r == 0 && len <= sizeof buf);
            REQUIRE(read_full(sock, buf, len) == 0);
            REQUIRE(write_full(sock, &len, 4) == 0);
            REQUIRE(write_full(sock, buf, len) == 0);
        }
    }
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed * 31 + i * 7);
}

int main(void)
{
    t_init();
    int sv[2], cp[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    REQUIRE(pipe2(cp, O_CLOEXEC) == 0);
    pid_t spid = fork();
    REQUIRE(spid >= 0);
    if (spid == 0) {
        close(sv[0]);
        close(cp[1]);
        _exit(server(sv[1], cp[0]));
    }
    close(sv[1]);
    close(cp[0]);
    int s = sv[0];
    rpal_domain *d;
    REQUIRE(rpal_domain_join("compat", NULL, &d) == 0);
    char j;
    REQUIRE(read(s, &j, 1) == 1 && j == 'J');
    REQUIRE(write(s, "J", 1) == 1);
    CHECK_ERR(rpal_uds_fdmap(d, s, 5000), 1);
    CHECK_ERR(rpal_uds_fdmap(d, s, 5000), 1); /* again: already */

    /* Echo, every size class, blocking descriptor. */
    static unsigned char out[1 << 18], in[1 << 18];
    for (unsigned i = 0; i < 3000; i++) {
        uint32_t len = (uint32_t[]){0, 1, 8, 32, 36, 37, 40, 100, 4000, 200000}[i % 10];
        fill(out, len, i);
        REQUIRE(write_full(s, &len, 4) == 0);
        REQUIRE(write_full(s, out, len) == 0);
        uint32_t back;
        CHECK_ERR(read_full(s, &back, 4), 0);
        CHECK(back == len);
        memset(in, 0, len);
        CHECK_ERR(read_full(s, in, len), 0);
        CHECK(memcmp(in, out, len) == 0);
    }

    /* Level- and edge-triggered EPOLLIN on the client's side. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN | EPOLLET, .data.u64 = 7}, ev[4];
    CHECK_ERR(rpal_epoll_ctl(ep, EPOLL_CTL_ADD, s, &e), 0);
    CHECK_ERR(rpal_epoll_wait(ep, ev, 4, 50), 0);
    REQUIRE(write(cp[1], "T", 1) == 1);
    usleep(100000); /* both frames are there by now (each arrival is an edge) */
    CHECK_ERR(rpal_epoll_wait(ep, ev, 4, 2000), 1);
    CHECK(ev[0].data.u64 == 7 && (ev[0].events & EPOLLIN));
    int again = rpal_epoll_wait(ep, ev, 4, 50);
    CHECK(again == 0); /* edge-triggered: nothing new since the last report */
    e.events = EPOLLIN; /* level-triggered: reported while unread */
    CHECK_ERR(rpal_epoll_ctl(ep, EPOLL_CTL_MOD, s, &e), 0);
    CHECK_ERR(rpal_epoll_wait(ep, ev, 4, 0), 1);
    CHECK_ERR(rpal_epoll_wait(ep, ev, 4, 0), 1);
    unsigned char f[24];
    CHECK_ERR(read_full(s, f, 24), 0);
    CHECK(memcmp(f + 4, "unasked!", 8) == 0 && memcmp(f + 16, "unasked!", 8) == 0);
    CHECK_ERR(rpal_epoll_wait(ep, ev, 4, 0), 0);

    /* Non-blocking: a full ring says -EAGAIN; EPOLLOUT once the server
     * reads again. */
    fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
    e.events = EPOLLOUT;
    CHECK_ERR(rpal_epoll_ctl(ep, EPOLL_CTL_MOD, s, &e), 0);
    REQUIRE(write(cp[1], "P", 1) == 1);
    usleep(50000);
    uint32_t one = 1;
    int full = 0, frames = 0;
    for (int i = 0; i < 100000 && !full; i++) {
        ssize_t n = rpal_write(s, &one, 4);
        if (n == -EAGAIN)
            full = 1;
        else if (n == 4 && rpal_write(s, "x", 1) == 1)
            frames++;
        else
            CHECK(n == 4);
    }
    CHECK(full);
    int64_t t0 = t_now_ms();
    int got = rpal_epoll_wait(ep, ev, 4, 3000);
    CHECK(got == 1 && (ev[0].events & EPOLLOUT));
    CHECK(t_now_ms() - t0 < 2500);
    fcntl(s, F_SETFL, fcntl(s, F_GETFL) & ~O_NONBLOCK);
    for (int i = 0; i < frames; i++) { /* collect the echoes */
        unsigned char b[5];
        CHECK_ERR(read_full(s, b, 5), 0);
    }

    /* A forked child holds copies, not the connection. */
    pid_t kid = fork();
    if (kid == 0) {
        char b[4];
        _exit(rpal_read(s, b, 4) == -ECHILD && rpal_write(s, b, 4) == -ECHILD ? 0 : 1);
    }
    CHECK(t_wait(kid) == 0);

    /* The end: the server quits, the client reads 0 after the last bytes. */
    REQUIRE(write(cp[1], "Q", 1) == 1);
    char b[4];
    CHECK_ERR(rpal_read(s, b, 4), 0);
    CHECK(t_wait(spid) == 0);
    CHECK_ERR(rpal_close(s), 0);
    close(ep);

    /* A killed peer: a blocked read returns the end, no hang. */
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    spid = fork();
    if (spid == 0) {
        close(sv[0]);
        close(cp[1]);
        rpal_domain *d2;
        REQUIRE(rpal_domain_join("compat", NULL, &d2) == 0);
        REQUIRE(write(sv[1], "J", 1) == 1);
        REQUIRE(rpal_uds_fdmap(d2, sv[1], 5000) == 1);
        pause();
        _exit(0);
    }
    close(sv[1]);
    REQUIRE(read(sv[0], &j, 1) == 1 && j == 'J');
    CHECK_ERR(rpal_uds_fdmap(d, sv[0], 5000), 1);
    ep = epoll_create1(EPOLL_CLOEXEC);
    e.events = EPOLLIN | EPOLLRDHUP;
    CHECK_ERR(rpal_epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &e), 0);
    kill(spid, SIGKILL);
    t0 = t_now_ms();
    got = rpal_epoll_wait(ep, ev, 4, 3000);
    CHECK(got == 1 && (ev[0].events & (EPOLLHUP | EPOLLRDHUP)));
    CHECK_ERR(rpal_read(sv[0], b, 4), 0);
    CHECK(t_now_ms() - t0 < 1000);
    waitpid(spid, NULL, 0);
    rpal_close(sv[0]);
    close(ep);

    /* A peer that is not a member: nothing is sent, the socket is as it was. */
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    spid = fork();
    if (spid == 0) {
        close(sv[0]);
        char m[6] = {0};
        int ok = read(sv[1], m, 5) == 5 && !memcmp(m, "hello", 5) && write(sv[1], "world", 5) == 5;
        _exit(ok ? 0 : 1);
    }
    close(sv[1]);
    CHECK_ERR(rpal_uds_fdmap(d, sv[0], 1000), 0);
    CHECK_ERR(rpal_write(sv[0], "hello", 5), 5);
    char m[6] = {0};
    CHECK_ERR(read_full(sv[0], m, 5), 0);
    CHECK(!memcmp(m, "world", 5));
    CHECK(t_wait(spid) == 0);
    CHECK_ERR(rpal_close(sv[0]), 0);

    /* Not a Unix stream socket. */
    int pp[2];
    REQUIRE(pipe(pp) == 0);
    CHECK(rpal_uds_fdmap(d, pp[0], 100) < 0);
    close(pp[0]);
    close(pp[1]);
    int dg[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0);
    CHECK_ERR(rpal_uds_fdmap(d, dg[0], 100), -EPROTOTYPE);
    close(dg[0]);
    close(dg[1]);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}
