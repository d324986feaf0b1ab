/* rpal run (src/run.c): each interposed call keeps the kernel's meaning on
 * an upgraded connection. The test re-executes itself twice under
 * librpal-run.so (LD_PRELOAD, as `rpal run` sets it): a server and a client
 * that go through the calls in lockstep, then it checks from RPAL_RUN_LOG
 * that both ends really were upgraded (so that the checks ran on the
 * rings, not on the socket). Without the library built (the sanitizer
 * builds do not make it) it is a skip. */
#include "testlib.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/select.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>

static volatile sig_atomic_t pipes, alarms;
static void on_pipe(int s) { (void)s; pipes++; }
static void on_alarm(int s) { (void)s; alarms++; }

#define FILE_LEN 100000
#define SPLICED 20000

/* A Unix stream socket listening at PATH. */
static int listen_at(const char *path, int backlog)
{
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    REQUIRE(bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, backlog) == 0);
    return l;
}

static char pat(size_t i) { return (char)(i * 7 % 251); }

/* g. sendfile from a file into the ring (with and without an offset);
 * splice from the ring into a pipe and back; what the kernel refuses on a
 * socket, refused the same, nothing consumed. */
static void server_copies(int fd, const char *path)
{
    char fp[600], *big = malloc(FILE_LEN);
    REQUIRE(big);
    snprintf(fp, sizeof fp, "%s.file", path);
    int f = open(fp, O_RDWR | O_CREAT | O_TRUNC, 0600);
    REQUIRE(f >= 0);
    for (size_t i = 0; i < FILE_LEN; i++)
        big[i] = pat(i);
    REQUIRE(write(f, big, FILE_LEN) == FILE_LEN && lseek(f, 0, SEEK_SET) == 0);
    off_t o = 1000;
    CHECK(sendfile(fd, f, &o, 50000) == 50000 && o == 51000 && lseek(f, 0, SEEK_CUR) == 0);
    CHECK(sendfile(fd, f, NULL, 2 * FILE_LEN) == FILE_LEN && lseek(f, 0, SEEK_CUR) == FILE_LEN);
    int p[2];
    REQUIRE(pipe(p) == 0);
    char b[64];
    CHECK(splice(fd, NULL, p[1], NULL, sizeof b, 0) == 9 && read(p[0], b, sizeof b) == 9 &&
          !memcmp(b, "splice-me", 9));
    errno = 0;
    CHECK(splice(fd, NULL, p[1], NULL, sizeof b, SPLICE_F_NONBLOCK) == -1 && errno == EAGAIN);
    CHECK(fcntl(p[1], F_SETFL, O_NONBLOCK) == 0);
    errno = 0;
    CHECK(splice(fd, NULL, p[1], NULL, sizeof b, 0) == -1 && errno == EAGAIN);
    CHECK(fcntl(p[1], F_SETFL, 0) == 0);
    loff_t lo = 0;
    errno = 0;
    CHECK(splice(fd, &lo, p[1], NULL, 4, 0) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(splice(fd, NULL, f, NULL, 4, 0) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(copy_file_range(fd, NULL, f, NULL, 4, 0) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(tee(fd, p[1], 4, 0) == -1 && errno == EINVAL);
    errno = 0;
    CHECK(sendfile(f, fd, NULL, 4) == -1 && errno == EINVAL);
    CHECK(write(p[1], "back", 4) == 4 && splice(p[0], NULL, fd, NULL, sizeof b, 0) == 4);
    /* A pipe with one free slot: a part comes, the call does not wait for
     * this thread to drain the pipe. */
    CHECK(write(p[1], big, 61440) == 61440);
    ssize_t n = splice(fd, NULL, p[1], NULL, SPLICED, 0);
    CHECK(n > 0 && n <= 4096);
    CHECK(t_read_all(p[0], big, 61440) == 0);
    size_t got = 0;
    while (n > 0) {
        CHECK(t_read_all(p[0], big, (size_t)n) == 0 && big[0] == 'q' && big[n - 1] == 'q');
        got += (size_t)n;
        n = got < SPLICED ? splice(fd, NULL, p[1], NULL, SPLICED - got, 0) : 0;
    }
    CHECK(got == SPLICED);
    /* A non-blocking descriptor whose ring is full (the client waits before
     * reading): sendfile sends what has room, the file's position moves
     * by that much. */
    int fl = fcntl(fd, F_GETFL);
    CHECK(fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 && lseek(f, 0, SEEK_SET) == 0);
    memset(big, 'F', 4096);
    while (write(fd, big, 4096) > 0)
        ;
    errno = 0;
    n = sendfile(fd, f, NULL, 1000);
    CHECK((n == -1 && errno == EAGAIN) || (n > 0 && n <= 1000));
    CHECK(lseek(f, 0, SEEK_CUR) == (n > 0 ? n : 0));
    CHECK(fcntl(fd, F_SETFL, fl) == 0 && write(fd, "\xff", 1) == 1);
    close(p[0]);
    close(p[1]);
    close(f);
    unlink(fp);
    free(big);
}

static void client_copies(int fd)
{
    char *big = malloc(FILE_LEN);
    REQUIRE(big);
    int same = t_read_all(fd, big, 50000) == 0;
    for (size_t i = 0; same && i < 50000; i++)
        same = big[i] == pat(i + 1000);
    CHECK(same);
    same = t_read_all(fd, big, FILE_LEN) == 0;
    for (size_t i = 0; same && i < FILE_LEN; i++)
        same = big[i] == pat(i);
    CHECK(same);
    CHECK(write(fd, "splice-me", 9) == 9);
    CHECK(t_read_all(fd, big, 4) == 0 && !memcmp(big, "back", 4));
    memset(big, 'q', SPLICED);
    CHECK(write(fd, big, SPLICED) == SPLICED);
    usleep(300000); /* the server fills the ring meanwhile */
    char c = 0;
    while (read(fd, &c, 1) == 1 && c != '\xff')
        ;
    CHECK(c == '\xff');
    free(big);
}

static void server(const char *path)
{
    int l = listen_at(path, 4);
    sigset_t usr1; /* f.: the client's word that its read was interrupted */
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    int fd = accept(l, NULL, NULL);
    REQUIRE(fd >= 0);
    char b[64] = {0};
    /* a. peek, FIONREAD, read, readv */
    REQUIRE(t_read_all(fd, b, 1) == 0 && b[0] == 'a');
    CHECK(recv(fd, b, 3, MSG_PEEK | MSG_WAITALL) == 3 && !memcmp(b, "bcd", 3));
    int avail = -1;
    CHECK(ioctl(fd, FIONREAD, &avail) == 0 && avail == 5);
    CHECK(read(fd, b, 2) == 2 && !memcmp(b, "bc", 2));
    char x[2], y[2];
    struct iovec iov[2] = {{x, 2}, {y, 2}};
    CHECK(readv(fd, iov, 2) == 3 && !memcmp(x, "de", 2) && y[0] == 'f');
    /* b. nothing there: O_NONBLOCK, MSG_DONTWAIT, poll, select */
    errno = 0;
    CHECK(recv(fd, b, 1, MSG_DONTWAIT) == -1 && errno == EAGAIN);
    int fl = fcntl(fd, F_GETFL);
    CHECK(fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 && (fcntl(fd, F_GETFL) & O_NONBLOCK));
    errno = 0;
    CHECK(read(fd, b, 1) == -1 && errno == EAGAIN);
    struct pollfd p = {fd, POLLIN | POLLOUT, 0};
    CHECK(poll(&p, 1, 0) == 1 && p.revents == POLLOUT);
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(fd, &rs);
    struct timeval tv = {0, 0};
    CHECK(select(fd + 1, &rs, NULL, NULL, &tv) == 0 && !FD_ISSET(fd, &rs));
    CHECK(fcntl(fd, F_SETFL, fl) == 0);
    /* O_NONBLOCK is kept per connection under rpal run: every change, on
     * the descriptor or a dup, by fcntl or FIONBIO, is seen at the next
     * read (a blocking one here waits out its SO_RCVTIMEO of 100 ms). */
    int dn = dup(fd), on = 1, off = 0;
    struct timeval rto = {0, 100000}, none = {0, 0};
    REQUIRE(dn >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rto, sizeof rto) == 0);
    CHECK(ioctl(dn, FIONBIO, &on) == 0);
    int64_t t0 = t_now_ms();
    errno = 0;
    CHECK(read(fd, b, 1) == -1 && errno == EAGAIN && t_now_ms() - t0 < 50);
    CHECK(fcntl(dn, F_SETFL, fl) == 0);
    t0 = t_now_ms();
    errno = 0;
    CHECK(read(fd, b, 1) == -1 && errno == EAGAIN && t_now_ms() - t0 >= 90);
    CHECK(ioctl(fd, FIONBIO, &on) == 0);
    t0 = t_now_ms();
    errno = 0;
    CHECK(read(dn, b, 1) == -1 && errno == EAGAIN && t_now_ms() - t0 < 50);
    CHECK(ioctl(fd, FIONBIO, &off) == 0 && close(dn) == 0);
    /* So does a peek that waits (it waited forever before). */
    t0 = t_now_ms();
    errno = 0;
    CHECK(recv(fd, b, 1, MSG_PEEK) == -1 && errno == EAGAIN && t_now_ms() - t0 >= 90);
    CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none) == 0);
    int err = -1;
    socklen_t el = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0);
    /* c. the client waits in poll; then writev + sendmsg arrive; epoll */
    usleep(50000);
    CHECK(write(fd, "g", 1) == 1);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
    struct epoll_event out[4];
    CHECK(epoll_wait(ep, out, 4, 5000) == 1 && out[0].data.u64 == 42 && (out[0].events & EPOLLIN));
    CHECK(recv(fd, b, 8, MSG_WAITALL) == 8 && !memcmp(b, "12345678", 8));
    CHECK(epoll_wait(ep, out, 4, 0) == 0);
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL) == 0);
    close(ep);
    /* d. a second descriptor of the connection */
    int d2 = dup(fd), d3 = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    CHECK(d2 >= 0 && d3 >= 100);
    CHECK(write(d2, "x", 1) == 1 && send(d3, "y", 1, 0) == 1);
    CHECK(close(d2) == 0 && close(d3) == 0);
    /* The first descriptor closed while a dup is open: the connection goes
     * on through the dup (to the end of the test), the number is closed. */
    int moved = fcntl(fd, F_DUPFD, 300);
    CHECK(moved >= 300 && close(fd) == 0);
    errno = 0;
    CHECK(write(fd, "n", 1) == -1 && errno == EBADF);
    errno = 0;
    CHECK(close(fd) == -1 && errno == EBADF);
    int first = fd;
    fd = moved;
    /* A closed (hidden) descriptor cannot be passed (SCM_RIGHTS): EBADF.
     * An upgraded one goes back to the socket first: tests/run_downgrade.c. */
    int sp[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    struct t_fdmsg pm;
    errno = 0;
    CHECK(sendmsg(sp[0], t_fdmsg(&pm, first), 0) == -1 && errno == EBADF);
    CHECK(sendmsg(sp[0], t_fdmsg(&pm, sp[1]), 0) == 1);
    close(sp[0]);
    close(sp[1]);
    server_copies(fd, path);
    /* sendmmsg from the client, read here; recvmmsg there of ours */
    CHECK(t_read_all(fd, b, 4) == 0 && !memcmp(b, "9abc", 4));
    CHECK(write(fd, "de", 2) == 2 && write(fd, "fg", 2) == 2);
    /* e. the client's half close: the end for us, we may still write */
    CHECK(read(fd, b, 4) == 0);
    CHECK(write(fd, "bye", 3) == 3);
    /* f. the client blocks in a read that a signal interrupts; then we close.
     * Nothing comes before the client says (SIGUSR1) that its read returned
     * EINTR: no timing decides what that read sees. */
    struct timespec ten = {10, 0};
    CHECK(sigtimedwait(&usr1, NULL, &ten) == SIGUSR1);
    CHECK(write(fd, "z", 1) == 1);
    usleep(100000);
    CHECK(close(fd) == 0);
    close(l);
}

/* A connection to the server at PATH, which may not listen yet (5 s). */
static int connect_retry(const char *path)
{
    int fd = -1;
    for (int i = 0; i < 500 && fd < 0; i++) {
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            close(fd);
            fd = -1;
            usleep(10000);
        }
    }
    REQUIRE(fd >= 0);
    return fd;
}

static void client(const char *path)
{
    int fd = connect_retry(path);
    CHECK(write(fd, "abcdef", 6) == 6);
    struct pollfd p = {fd, POLLIN, 0};
    CHECK(poll(&p, 1, 5000) == 1 && (p.revents & POLLIN));
    char b[64];
    CHECK(read(fd, b, sizeof b) == 1 && b[0] == 'g');
    struct iovec iov[3] = {{"12", 2}, {"34", 2}, {"56", 2}};
    CHECK(writev(fd, iov, 3) == 6);
    struct iovec i2 = {"78", 2};
    struct msghdr m = {.msg_iov = &i2, .msg_iovlen = 1};
    CHECK(sendmsg(fd, &m, 0) == 2);
    CHECK(t_read_all(fd, b, 2) == 0 && !memcmp(b, "xy", 2));
    client_copies(fd);
    /* sendmmsg and recvmmsg: through the rings (before they were
     * interposed, the kernel's calls wrote the socket, which carries only
     * wake-ups, and read those) */
    struct iovec mi[4] = {{"9a", 2}, {"bc", 2}, {b, 2}, {b + 2, 2}};
    struct mmsghdr mm[2] = {{.msg_hdr = {.msg_iov = &mi[0], .msg_iovlen = 1}},
                            {.msg_hdr = {.msg_iov = &mi[1], .msg_iovlen = 1}}};
    CHECK(sendmmsg(fd, mm, 2, 0) == 2 && mm[0].msg_len == 2 && mm[1].msg_len == 2);
    mm[0].msg_hdr.msg_iov = &mi[2];
    mm[1].msg_hdr.msg_iov = &mi[3];
    CHECK(recvmmsg(fd, mm, 2, 0, NULL) == 2 && mm[0].msg_len == 2 && mm[1].msg_len == 2 &&
          !memcmp(b, "defg", 4));
    CHECK(shutdown(fd, SHUT_WR) == 0);
    CHECK(t_read_all(fd, b, 3) == 0 && !memcmp(b, "bye", 3));
    struct sigaction sa = {.sa_handler = on_alarm}; /* no SA_RESTART */
    sigaction(SIGALRM, &sa, NULL);
    /* Every 50 ms until the read returns: one that comes before the read
     * sleeps is followed by another, and nothing is written meanwhile. */
    struct itimerval it = {.it_interval = {0, 50000}, .it_value = {0, 50000}}, off = {0};
    struct ucred peer;
    socklen_t pl = sizeof peer;
    REQUIRE(getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &pl) == 0);
    setitimer(ITIMER_REAL, &it, NULL);
    errno = 0;
    CHECK(read(fd, b, 1) == -1 && errno == EINTR && alarms >= 1);
    setitimer(ITIMER_REAL, &off, NULL);
    CHECK(kill(peer.pid, SIGUSR1) == 0);
    CHECK(read(fd, b, 1) == 1 && b[0] == 'z');
    CHECK(read(fd, b, 1) == 0); /* the server closed */
    sa.sa_handler = on_pipe;
    sigaction(SIGPIPE, &sa, NULL);
    errno = 0;
    CHECK(send(fd, "q", 1, MSG_NOSIGNAL) == -1 && errno == EPIPE && pipes == 0);
    errno = 0;
    CHECK(write(fd, "q", 1) == -1 && errno == EPIPE && pipes == 1);
    CHECK(close(fd) == 0);
}

/* h. poll and select in a request/response loop, with the learned wait on
 * (a spin in poll looks at the rings, and at the kernel's descriptors now
 * and then): revents stay exact, a plain descriptor that becomes readable
 * while the ring is quiet is seen, a timeout is kept, a bad descriptor is
 * POLLNVAL, a negative one is ignored. PW: a pipe's write end, given to
 * the server by the parent; PR its read end, the client's. */
static void spin_server(const char *path, int pw)
{
    int l = listen_at(path, 4);
    int fd = accept(l, NULL, NULL);
    REQUIRE(fd >= 0);
    char c;
    for (int i = 0; i < 3000; i++) {
        REQUIRE(read(fd, &c, 1) == 1);
        REQUIRE(write(fd, &c, 1) == 1);
    }
    usleep(20000);
    CHECK(write(pw, "p", 1) == 1); /* the plain descriptor, the ring quiet */
    CHECK(read(fd, &c, 1) == 1 && c == 's');
    usleep(2000);
    CHECK(write(fd, "S", 1) == 1); /* select */
    CHECK(read(fd, &c, 1) == 1 && c == 'q');
    CHECK(close(fd) == 0);
    close(l);
}

static void spin_client(const char *path, int pr)
{
    int fd = connect_retry(path);
    struct pollfd p[3] = {{fd, POLLIN, 0}, {-1, POLLIN, 0}, {pr, POLLIN, 0}};
    int bad = 0;
    for (int i = 0; i < 3000; i++) {
        char c = (char)i, r = 0;
        REQUIRE(write(fd, &c, 1) == 1);
        p[0].revents = p[1].revents = p[2].revents = -1;
        bad += !(poll(p, 3, 5000) == 1 && p[0].revents == POLLIN && p[1].revents == 0 &&
                 p[2].revents == 0);
        bad += !(read(fd, &r, 1) == 1 && r == c);
    }
    CHECK(bad == 0);
    /* The plain descriptor speaks while the ring is quiet. */
    CHECK(poll(p, 3, 5000) == 1 && p[0].revents == 0 && p[1].revents == 0 && p[2].revents == POLLIN);
    char c;
    CHECK(read(pr, &c, 1) == 1 && c == 'p');
    /* A timeout with nothing: all revents 0, not before it. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(poll(p, 3, 30) == 0 && p[0].revents == 0 && p[2].revents == 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) >= 30000000L);
    /* A closed descriptor's number: POLLNVAL, found while the ring is quiet. */
    int gone = dup(pr);
    CHECK(gone >= 0 && close(gone) == 0);
    struct pollfd q[2] = {{fd, POLLIN, 0}, {gone, POLLIN, 0}};
    CHECK(poll(q, 2, 5000) == 1 && q[0].revents == 0 && q[1].revents == POLLNVAL);
    /* select, and the ring's answer after the server's 2 ms. */
    CHECK(write(fd, "s", 1) == 1);
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(fd, &rs);
    FD_SET(pr, &rs);
    struct timeval tv = {5, 0};
    CHECK(select((fd > pr ? fd : pr) + 1, &rs, NULL, NULL, &tv) == 1 && FD_ISSET(fd, &rs) &&
          !FD_ISSET(pr, &rs));
    CHECK(read(fd, &c, 1) == 1 && c == 'S');
    CHECK(write(fd, "q", 1) == 1);
    CHECK(poll(p, 1, 5000) == 1 && (p[0].revents & POLLIN) && read(fd, &c, 1) == 0);
    CHECK(close(fd) == 0);
}

/* i. poll of several upgraded connections, asleep (RPAL_SPIN_US=0): the
 * one that speaks is the one reported, a close on another is its end
 * (POLLIN|POLLHUP), a signal is EINTR, a timeout is kept. Such a poll
 * sleeps in the kernel on the sockets (docs/run.md says why not on
 * futex_waitv). */
#define MANY 3
static void many_server(const char *path)
{
    int l = listen_at(path, MANY);
    int fd[MANY];
    char c;
    for (int i = 0; i < MANY; i++) {
        REQUIRE((fd[i] = accept(l, NULL, NULL)) >= 0);
        REQUIRE(read(fd[i], &c, 1) == 1 && write(fd[i], "H", 1) == 1);
    }
    for (int round = 0; round < 20; round++) { /* the client asks one, then waits */
        int k = round % MANY;
        CHECK(read(fd[k], &c, 1) == 1 && c == (char)round);
        usleep(3000);
        CHECK(write(fd[k], &c, 1) == 1);
    }
    CHECK(read(fd[0], &c, 1) == 1 && c == 'c');
    usleep(20000);
    CHECK(close(fd[1]) == 0); /* while the client sleeps in poll */
    CHECK(read(fd[0], &c, 1) == 0 && close(fd[0]) == 0 && close(fd[2]) == 0);
    close(l);
}

static void many_client(const char *path)
{
    int fd[MANY];
    struct pollfd p[MANY + 1];
    char c;
    for (int i = 0; i < MANY; i++) { /* the first I/O upgrades each */
        fd[i] = connect_retry(path);
        REQUIRE(write(fd[i], "h", 1) == 1 && read(fd[i], &c, 1) == 1 && c == 'H');
        p[i] = (struct pollfd){fd[i], POLLIN, 0};
    }
    p[MANY] = (struct pollfd){-1, POLLIN, 0};
    int bad = 0;
    for (int round = 0; round < 20; round++) {
        int k = round % MANY;
        c = (char)round;
        REQUIRE(write(fd[k], &c, 1) == 1);
        for (int i = 0; i <= MANY; i++)
            p[i].revents = -1;
        bad += !(poll(p, MANY + 1, 5000) == 1 && p[MANY].revents == 0);
        for (int i = 0; i < MANY; i++)
            bad += p[i].revents != (i == k ? POLLIN : 0);
        bad += !(read(fd[k], &c, 1) == 1 && c == (char)round);
    }
    CHECK(bad == 0);
    /* A timeout with nothing: all revents 0, not before it. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(poll(p, MANY, 30) == 0 && p[0].revents == 0 && p[1].revents == 0 && p[2].revents == 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) >= 30000000L);
    /* A signal (no SA_RESTART) ends the sleep with EINTR. */
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    ualarm(5000, 0);
    errno = 0;
    CHECK(poll(p, MANY, 5000) == -1 && errno == EINTR && alarms == 1);
    /* The server closes fd[1] while we sleep: its end, and only there. */
    CHECK(write(fd[0], "c", 1) == 1);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(poll(p, MANY, 5000) == 1 && p[0].revents == 0 && (p[1].revents & (POLLIN | POLLHUP)) &&
          p[2].revents == 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 2000);
    CHECK(read(fd[1], &c, 1) == 0);
    for (int i = 0; i < MANY; i++)
        CHECK(close(fd[i]) == 0);
}

/* j. signals (docs/run.md, "Signals"): rpal run wraps the program's
 * handlers and counts them, so that a wait on the rings ends as the
 * kernel's: with EINTR for a handler without SA_RESTART, also one that
 * runs while the wait spins (MODE "sigspin": RPAL_SPIN_US=fixed:1000000,
 * a second's spin, the two ends on two CPUs; before, the signal was
 * lost); a read goes on after one with SA_RESTART (MODE "sig":
 * RPAL_SPIN_US=0, every wait sleeps on a futex, which any handler ends),
 * poll and epoll_wait never do. The program sees its own actions. The
 * server answers 'w' 300 ms later; after 'e' it writes nothing, unless 2 s
 * pass with no next command: then 'L', which ends the client's read, so
 * a lost signal fails the test instead of hanging it. Alarms come 100 ms
 * after they are set, well after the call began. */
static volatile sig_atomic_t usr2s, usr1s;
static void on_usr2(int s) { (void)s; usr2s++; }
static void on_usr1(int s) { (void)s; usr1s++; }
static void on_rearm(int s)
{
    signal(s, on_rearm);
    alarms++;
}
struct t_reader {
    int fd;
    ssize_t n;
    int err;
};
static void *t_read_one(void *arg)
{
    struct t_reader *r = arg;
    char c;
    r->n = read(r->fd, &c, 1);
    r->err = errno;
    return NULL;
}

/* MODE "sigspin": the server on the first CPU we may use, the client on
 * the second, so that the client spins (not yields); 0 if there is one. */
static int sig_pin(int second)
{
    cpu_set_t set;
    REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set) || seen++ != second)
            continue;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        REQUIRE(sched_setaffinity(0, sizeof set, &set) == 0);
        return 1;
    }
    return 0;
}

static void sig_server(const char *path, int spin)
{
    if (spin)
        sig_pin(0);
    int l = listen_at(path, 1);
    int fd = accept(l, NULL, NULL);
    REQUIRE(fd >= 0);
    struct pollfd p = {fd, POLLIN, 0};
    char c;
    while (poll(&p, 1, 10000) == 1 && read(fd, &c, 1) == 1) {
        if (c == 'w') {
            usleep(300000);
            CHECK(write(fd, "r", 1) == 1);
        } else if (c == 'e' && poll(&p, 1, 2000) == 0) {
            CHECK(write(fd, "L", 1) == 1);
        }
    }
    CHECK(close(fd) == 0);
    close(l);
}

/* SIGALRM to FN with SA_RESTART or not, first in 100 ms, then every
 * EVERY_US (0: once). */
static void alarm_in(void (*fn)(int), int restart, long every_us)
{
    struct sigaction sa = {.sa_handler = fn, .sa_flags = restart ? SA_RESTART : 0};
    sigemptyset(&sa.sa_mask);
    REQUIRE(sigaction(SIGALRM, &sa, NULL) == 0);
    alarms = 0;
    struct itimerval it = {.it_interval = {0, every_us}, .it_value = {0, 100000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static void alarm_off(void)
{
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
}

static void sig_client(const char *path, int spin)
{
    if (spin && !sig_pin(1))
        printf("sigspin: one CPU, the client yields instead of spinning\n");
    int fd = connect_retry(path);
    char c;
    CHECK(write(fd, "w", 1) == 1 && read(fd, &c, 1) == 1 && c == 'r'); /* the upgrade */
    /* No SA_RESTART: the read ends. */
    CHECK(write(fd, "e", 1) == 1);
    alarm_in(on_alarm, 0, 0);
    errno = 0;
    CHECK(read(fd, &c, 1) == -1 && errno == EINTR && alarms == 1);
    /* poll and epoll_wait end even with SA_RESTART. */
    CHECK(write(fd, "e", 1) == 1);
    alarm_in(on_alarm, 1, 0);
    struct pollfd p = {fd, POLLIN, 0};
    errno = 0;
    CHECK(poll(&p, 1, -1) == -1 && errno == EINTR && alarms == 1);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN}, out;
    CHECK(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
    CHECK(write(fd, "e", 1) == 1);
    alarm_in(on_alarm, 1, 0);
    errno = 0;
    CHECK(epoll_wait(ep, &out, 1, -1) == -1 && errno == EINTR && alarms == 1);
    /* epoll_pwait's mask is the kernel's, with its sleep: a pending signal
     * that only the mask lets in ends it (it ran before the wait, and was
     * lost, when the mask was set around the wait). */
    sigset_t usr1, cur;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    struct sigaction su = {.sa_handler = on_usr1};
    sigemptyset(&su.sa_mask);
    REQUIRE(sigaction(SIGUSR1, &su, NULL) == 0 && sigprocmask(SIG_BLOCK, &usr1, &cur) == 0);
    CHECK(raise(SIGUSR1) == 0 && usr1s == 0 && write(fd, "e", 1) == 1);
    errno = 0;
    CHECK(epoll_pwait(ep, &out, 1, 3000, &cur) == -1 && errno == EINTR && usr1s == 1);
    REQUIRE(sigprocmask(SIG_SETMASK, &cur, NULL) == 0);
    /* ... and one it keeps out does not end it, also while it spins: the
     * handler runs once the call returned. */
    sigset_t noalrm = cur;
    sigaddset(&noalrm, SIGALRM);
    CHECK(write(fd, "w", 1) == 1);
    alarm_in(on_alarm, 0, 0);
    CHECK(epoll_pwait(ep, &out, 1, 3000, &noalrm) == 1 && (out.events & EPOLLIN) && alarms == 1);
    CHECK(read(fd, &c, 1) == 1 && c == 'r');
    CHECK(close(ep) == 0);
    /* SA_RESTART: the read goes on through the handlers to its byte. */
    CHECK(write(fd, "w", 1) == 1);
    alarm_in(on_alarm, 1, 10000);
    CHECK(read(fd, &c, 1) == 1 && c == 'r' && alarms >= 3);
    alarm_off();
    /* The same for a read that peeks (it waits as a poll of one). */
    CHECK(write(fd, "w", 1) == 1);
    alarm_in(on_alarm, 1, 10000);
    CHECK(recv(fd, &c, 1, MSG_PEEK) == 1 && c == 'r' && alarms >= 3);
    alarm_off();
    CHECK(read(fd, &c, 1) == 1 && c == 'r');
    /* signal() is BSD's (SA_RESTART), also from the handler itself (the
     * SysV habit of setting it again there), in the middle of a wait ... */
    CHECK(signal(SIGALRM, on_rearm) != SIG_ERR);
    struct itimerval it = {.it_interval = {0, 10000}, .it_value = {0, 100000}};
    CHECK(write(fd, "w", 1) == 1);
    alarms = 0;
    setitimer(ITIMER_REAL, &it, NULL);
    CHECK(read(fd, &c, 1) == 1 && c == 'r' && alarms >= 3);
    alarm_off();
    CHECK(signal(SIGALRM, on_alarm) == on_rearm);
    /* ... until siginterrupt(, 1). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* programs still call it */
    CHECK(siginterrupt(SIGALRM, 1) == 0);
#pragma GCC diagnostic pop
    CHECK(write(fd, "e", 1) == 1);
    it.it_interval.tv_usec = 0;
    alarms = 0;
    setitimer(ITIMER_REAL, &it, NULL);
    errno = 0;
    CHECK(read(fd, &c, 1) == -1 && errno == EINTR && alarms == 1);
    /* The program sees its own actions, not the wrapper. */
    struct sigaction q;
    CHECK(sigaction(SIGALRM, NULL, &q) == 0 && q.sa_handler == on_alarm &&
          !(q.sa_flags & (SA_RESTART | SA_SIGINFO)));
    CHECK(signal(SIGALRM, SIG_IGN) == on_alarm);
    CHECK(sigaction(SIGALRM, NULL, &q) == 0 && q.sa_handler == SIG_IGN);
    struct sigaction once = {.sa_handler = on_usr2, .sa_flags = SA_RESETHAND};
    sigemptyset(&once.sa_mask);
    CHECK(sigaction(SIGUSR2, &once, NULL) == 0 && raise(SIGUSR2) == 0 && usr2s == 1);
    CHECK(sigaction(SIGUSR2, NULL, &q) == 0 && q.sa_handler == SIG_DFL);
    /* k. Another thread closes the descriptor while a read waits on it
     * (asleep in MODE "sig", spinning in "sigspin"): the read leaves with
     * EBADF, and the connection is not freed under it (it was, before).
     * A read that a loaded machine started only as the close began reads
     * the socket, as the kernel's would: the end, once the server saw
     * ours. Never the watchdog's byte, nor a hang. */
    CHECK(write(fd, "e", 1) == 1);
    pthread_t t;
    struct t_reader r = {fd, 0, 0};
    REQUIRE(pthread_create(&t, NULL, t_read_one, &r) == 0);
    usleep(50000);
    CHECK(close(fd) == 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    REQUIRE(pthread_join(t, NULL) == 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK((r.n == -1 && r.err == EBADF) || r.n == 0);
    CHECK((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 1000);
}

/* k. a connection that is in an epoll set and also polled (MODE "shared"):
 * with the set idle, the poll must see the message (it slept on the
 * socket while the other end rang the set's bell, and timed out); with
 * the set's epoll_wait in another thread at the same time, both must see
 * it, as with the kernel's socket (the first to wake read the byte the
 * other was waiting for). The client writes SHARED_ROUNDS bytes, each a
 * few ms after the server's answer, and the server looks with 5 s
 * timeouts: a lost wake-up is a failed check, not a slow one. MODE
 * "sharedspin" (SPIN: RPAL_SPIN_US=fixed:50000): in every other round
 * with both, the set spins its 50 ms and sleeps, then the poll begins and
 * spins while the message comes, which must not take the set's wake-up
 * away (the poll told the other end it was awake). */
#define SHARED_ROUNDS 30
static int shared_ep;
static void *t_shared_epoll(void *arg)
{
    struct epoll_event out;
    *(int *)arg = epoll_wait(shared_ep, &out, 1, 5000) == 1 && (out.events & EPOLLIN);
    return NULL;
}

static void shared_server(const char *path, int spin)
{
    int l = listen_at(path, 1);
    int fd = accept(l, NULL, NULL);
    char c;
    REQUIRE(fd >= 0 && read(fd, &c, 1) == 1 && write(fd, "H", 1) == 1);
    shared_ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    REQUIRE(epoll_ctl(shared_ep, EPOLL_CTL_ADD, fd, &ev) == 0);
    int lost_poll = 0, lost_epoll = 0;
    for (int round = 0; round < SHARED_ROUNDS; round++) {
        int both = round >= SHARED_ROUNDS / 3, got_epoll = 0;
        pthread_t t;
        if (both)
            REQUIRE(pthread_create(&t, NULL, t_shared_epoll, &got_epoll) == 0);
        if (both && round % 2)
            usleep(spin ? 60000 : 2000); /* the set asleep first, then the poll */
        struct pollfd p = {fd, POLLIN, 0};
        lost_poll += !(poll(&p, 1, 5000) == 1 && p.revents == POLLIN);
        if (both) {
            pthread_join(t, NULL);
            lost_epoll += !got_epoll;
        }
        CHECK(read(fd, &c, 1) == 1 && c == (char)round);
        CHECK(write(fd, &c, 1) == 1);
    }
    CHECK(lost_poll == 0);
    CHECK(lost_epoll == 0);
    close(shared_ep);
    close(fd);
    close(l);
}

static void shared_client(const char *path, int spin)
{
    int fd = connect_retry(path);
    char c;
    REQUIRE(write(fd, "h", 1) == 1 && read(fd, &c, 1) == 1 && c == 'H'); /* upgraded */
    for (int round = 0; round < SHARED_ROUNDS; round++) {
        /* The server's waits go to sleep; with SPIN, 20 ms into the poll's spin. */
        int odd = spin && round >= SHARED_ROUNDS / 3 && round % 2;
        usleep(odd ? 80000 : 5000 + round % 4 * 1000);
        c = (char)round;
        REQUIRE(write(fd, &c, 1) == 1);
        CHECK(read(fd, &c, 1) == 1 && c == (char)round);
    }
    close(fd);
}

/* Run the server and the client (MODE "", "spin", "many", "sig", "sigspin",
 * "shared" or "sharedspin") under the library; 0 if both passed and UPS
 * connection ends were upgraded. */
static int run_pair(const char *self, const char *dir, const char *mode, int pr, int pw, int ups)
{
    char path[600], logp[600], a3[16], a4[16];
    snprintf(path, sizeof path, "%s/s%s", dir, mode);
    snprintf(logp, sizeof logp, "%s/log%s", dir, mode);
    snprintf(a3, sizeof a3, "%d", pr);
    snprintf(a4, sizeof a4, "%d", pw);
    setenv("RPAL_RUN_LOG", logp, 1);
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        if ((kids[i] = fork()) == 0) {
            const char *who = i ? "client" : "server";
            if (!strcmp(mode, "many") || !strncmp(mode, "shared", 6) || !strncmp(mode, "sig", 3))
                execl("/proc/self/exe", self, who, path, mode, a3, a4, (char *)NULL);
            else if (*mode)
                execl("/proc/self/exe", self, who, path, a3, a4, (char *)NULL);
            else
                execl("/proc/self/exe", self, who, path, (char *)NULL);
            _exit(127);
        }
    }
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "%s%s failed (status %#x)\n", mode, i ? "client" : "server", st);
            ok = 0;
        }
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "test $(grep -c '^up ' %s) = %d", logp, ups);
    if (system(cmd) != 0) {
        fprintf(stderr, "not both ends upgraded (%s); the log:\n", *mode ? mode : "calls");
        snprintf(cmd, sizeof cmd, "cat %s >&2", logp);
        (void)!system(cmd);
        ok = 0;
    }
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc == 6) {
        int sig = !strncmp(argv[3], "sig", 3), spin = !strcmp(argv[3], "sigspin");
        if (sig)
            (!strcmp(argv[1], "server") ? sig_server : sig_client)(argv[2], spin);
        else if (!strncmp(argv[3], "shared", 6))
            (!strcmp(argv[1], "server") ? shared_server : shared_client)(
                argv[2], !strcmp(argv[3], "sharedspin"));
        else
            (!strcmp(argv[1], "server") ? many_server : many_client)(argv[2]);
        return t_failures ? 1 : 0;
    }
    if (argc == 5) {
        if (!strcmp(argv[1], "server"))
            spin_server(argv[2], atoi(argv[4]));
        else
            spin_client(argv[2], atoi(argv[3]));
        return t_failures ? 1 : 0;
    }
    if (argc == 3) {
        if (!strcmp(argv[1], "server"))
            server(argv[2]);
        else
            client(argv[2]);
        return t_failures ? 1 : 0;
    }
    char lib[512], dir[] = "/tmp/rpal-run-calls-XXXXXX";
    t_run_lib(lib, sizeof lib);
    REQUIRE(mkdtemp(dir));
    int pp[2];
    REQUIRE(pipe(pp) == 0);
    setenv("LD_PRELOAD", lib, 1);
    setenv("RPAL_SPIN_US", "0", 1); /* a signal interrupts a sleep, not a spin: docs/run.md */
    int ok = run_pair(argv[0], dir, "", -1, -1, 2) == 0;
    ok &= run_pair(argv[0], dir, "many", -1, -1, 2 * MANY) == 0;
    ok &= run_pair(argv[0], dir, "sig", -1, -1, 2) == 0;
    setenv("RPAL_SPIN_US", "fixed:1000000", 1); /* a signal lands in the spin */
    setenv("RPAL_FOLLOW", "0", 1);                /* as rpal run sets it */
    ok &= run_pair(argv[0], dir, "sigspin", -1, -1, 2) == 0;
    unsetenv("RPAL_FOLLOW");
    unsetenv("RPAL_SPIN_US"); /* the learned wait, as by default */
    ok &= run_pair(argv[0], dir, "spin", pp[0], pp[1], 2) == 0;
    ok &= run_pair(argv[0], dir, "shared", -1, -1, 2) == 0;
    setenv("RPAL_SPIN_US", "fixed:50000", 1); /* the polls spin while messages come */
    ok &= run_pair(argv[0], dir, "sharedspin", -1, -1, 2) == 0;
    unsetenv("RPAL_SPIN_US");
    unsetenv("LD_PRELOAD");
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    (void)!system(cmd);
    return ok ? 0 : 1;
}
