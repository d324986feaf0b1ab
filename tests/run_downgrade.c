/* rpal run (src/run.c, src/compat.c): the downgrade. A connection on the
 * rings goes back to its kernel socket before an exec that keeps its
 * descriptor open and before a sendmsg that passes it (SCM_RIGHTS), with
 * no byte lost, duplicated or reordered: data in flight both ways, one
 * message half read. The test re-executes itself in the roles below, all
 * under librpal-run.so (LD_PRELOAD, as `rpal run` sets it) but the
 * receiver of one scenario:
 *
 * - pass: the client passes its upgraded connection to the server to a
 *   third process (the receiver, under rpal run and not), over a Unix
 *   socket of its own (itself upgraded when the receiver is under rpal
 *   run: its control data makes it go back to the socket too), and the
 *   receiver reads the rest of the stream and answers;
 * - exec: a failing exec leaves the connection downgraded but working
 *   (the client goes on, on the socket), then an exec of a program that
 *   reads the rest of a second connection and answers;
 * - spawn: the client starts a program that reads the rest of the stream
 *   from the inherited descriptor and answers, with posix_spawn,
 *   posix_spawnp (the descriptor close-on-exec, given to the program by a
 *   file action's adddup2), system or popen; then the client goes on, on
 *   the socket, with the server;
 * - system, twice: a second client process after the first, downgraded,
 *   left: the server's hello with it must not meet the first's record;
 * - fork: the client forks; without FD_CLOEXEC the connection goes back
 *   to the socket and the child reads the rest and answers (or execs a
 *   program that does); with it, it stays the parent's (the child's read
 *   is EIO, its dup2 + exec refused), unless RPAL_RUN_FORK=all;
 * - killed: the server is killed while the client waits for its answer
 *   (the client's sendmsg returns, the receiver reads the end), and the
 *   client is killed during its downgrade (the server reads what it had
 *   written, then the end).
 *
 * The server sleeps while the client leaves, so that the client's last
 * message is still in its ring and the server takes the downgrade at its
 * next read. RPAL_RUN_LOG proves that both ends were upgraded first. */
#include "testlib.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/un.h>

#define M1_LEN 100
#define M2_LEN 50
#define PART   10 /* what the client reads of the first message */
#define BIG    65536 /* T_BIG: the server's large messages, after the second */
#define BIG_N  24

static void fill(char *b, size_t n, char base)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (char)(base + i % 26);
}

/* Exactly N bytes of FD, each wait bounded (5 s): 0, or -1. */
static int read_n(int fd, char *b, size_t n)
{
    for (size_t got = 0; got < n;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 5000) != 1)
            return -1;
        ssize_t r = read(fd, b + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* The rest of the stream from the server, as the client left it: the
 * first message but its first PART bytes, then the second. */
static int read_rest(int fd)
{
    char want[M1_LEN + M2_LEN], got[sizeof want];
    fill(want, M1_LEN, 'A');
    fill(want + M1_LEN, M2_LEN, 'a');
    if (read_n(fd, got, sizeof want - PART) < 0) {
        fprintf(stderr, "the rest of the stream: not all there\n");
        return -1;
    }
    if (memcmp(got, want + PART, sizeof want - PART)) {
        fprintf(stderr, "the rest of the stream: %.*s\n", (int)(sizeof want - PART), got);
        return -1;
    }
    if (!getenv("T_BIG"))
        return 0;
    /* Then BIG_N messages of BIG bytes: more than the socket holds, so that
     * the server's re-send waits for room while the new owner reads. */
    char *b = malloc(BIG), *w = malloc(BIG);
    int bad = !b || !w;
    for (int i = 0; i < BIG_N && !bad; i++) {
        fill(w, BIG, (char)('0' + i % 10));
        bad = read_n(fd, b, BIG) < 0 || memcmp(b, w, BIG);
    }
    if (bad)
        fprintf(stderr, "the rest of the stream: the large messages differ\n");
    free(b);
    free(w);
    return bad ? -1 : 0;
}

/* Whoever has the connection last: reads the rest, answers, reads the
 * server's last word, closes. */
static void finish(int fd)
{
    char b[8];
    CHECK(read_rest(fd) == 0);
    CHECK(write(fd, "from-c", 6) == 6);
    CHECK(read_n(fd, b, 7) == 0 && !memcmp(b, "s-final", 7));
    CHECK(close(fd) == 0);
}

/* Exactly N bytes of FD, waiting in an epoll set (the downgrade is then
 * taken in the wait, and the kernel's set reports the socket after it). */
static int read_epoll(int fd, char *b, size_t n)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -1;
    size_t got = 0;
    while (got < n) {
        if (epoll_wait(ep, &ev, 1, 5000) != 1 || ev.data.fd != fd)
            break;
        ssize_t r = recv(fd, b + got, n - got, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN))
            break;
        got += r > 0 ? (size_t)r : 0;
    }
    close(ep);
    return got == n ? 0 : -1;
}

static int listen_on(const char *path)
{
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    REQUIRE(l >= 0 && bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 4) == 0);
    return l;
}

static int connect_retry(const char *path)
{
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            return fd;
        close(fd);
        usleep(10000);
    }
    REQUIRE(0);
    return -1;
}

static int accept_within(int l, int ms)
{
    struct pollfd p = {l, POLLIN, 0};
    return poll(&p, 1, ms) == 1 ? accept(l, NULL, NULL) : -1;
}

/* The server, ROUNDS connections: after the hello it writes two messages,
 * sleeps SLEEP_MS (the client leaves meanwhile), then reads the client's
 * last message (from its ring, taken at the downgrade) and the answer of
 * whoever has the connection now (from the socket). SLEEP_MS -1: it does
 * not sleep but waits for both in an epoll set, -2 in poll. KILLED 1: the
 * client dies during its downgrade: its last message, then the end; 2:
 * the server execs the exec-server after its sleep, leaving the rings
 * while the client leaves them too; 3: the client's spawned program
 * answers, then the client itself ("parent", answered "s-bye"). */
static void server(const char *path, int sleep_ms, int rounds, int killed)
{
    int l = listen_on(path);
    for (int r = 0; r < rounds; r++) {
        int fd = accept_within(l, 10000);
        REQUIRE(fd >= 0);
        char b[M1_LEN];
        CHECK(read_n(fd, b, 5) == 0 && !memcmp(b, "hello", 5));
        fill(b, M1_LEN, 'A');
        CHECK(write(fd, b, M1_LEN) == M1_LEN);
        fill(b, M2_LEN, 'a');
        CHECK(write(fd, b, M2_LEN) == M2_LEN);
        if (getenv("T_BIG")) {
            char *w = malloc(BIG);
            REQUIRE(w);
            for (int i = 0; i < BIG_N; i++) {
                fill(w, BIG, (char)('0' + i % 10));
                CHECK(write(fd, w, BIG) == BIG);
            }
            free(w);
        }
        if (sleep_ms < 0) {
            CHECK((sleep_ms == -1 ? read_epoll : read_n)(fd, b, 14) == 0 &&
                  !memcmp(b, "a-unreadfrom-c", 14));
            CHECK(write(fd, "s-final", 7) == 7);
            struct pollfd p = {fd, POLLIN, 0};
            CHECK(poll(&p, 1, 5000) == 1 && read(fd, b, 1) == 0);
            CHECK(close(fd) == 0);
            continue;
        }
        usleep((useconds_t)sleep_ms * 1000);
        if (killed == 2) { /* leaves too: both ends at once */
            char a[16];
            snprintf(a, sizeof a, "%d", fd);
            execl("/proc/self/exe", "t", "exec-server", a, (char *)NULL);
            CHECK(!"exec");
        }
        CHECK(t_read_all(fd, b, 8) == 0 && !memcmp(b, "a-unread", 8));
        if (killed == 1) {
            struct pollfd p = {fd, POLLIN, 0};
            CHECK(poll(&p, 1, 5000) == 1 && read(fd, b, 1) <= 0);
        } else {
            CHECK(read_n(fd, b, 6) == 0 && !memcmp(b, "from-c", 6));
            CHECK(write(fd, "s-final", 7) == 7);
            if (killed == 3) {
                CHECK(read_n(fd, b, 6) == 0 && !memcmp(b, "parent", 6));
                CHECK(write(fd, "s-bye", 5) == 5);
            }
            struct pollfd p = {fd, POLLIN, 0};
            CHECK(poll(&p, 1, 5000) == 1 && read(fd, b, 1) == 0);
        }
        CHECK(close(fd) == 0);
    }
    close(l);
}

/* The client's part before it leaves: the hello, part of the first
 * message, and a message the sleeping server has not read. */
static int client_start(const char *path)
{
    int fd = connect_retry(path);
    char b[PART], want[PART];
    CHECK(write(fd, "hello", 5) == 5);
    /* Both messages there before we go on: the server is asleep (or waits)
     * when we leave, not in its write. */
    int n = 0;
    for (int i = 0; i < 500 && n < M1_LEN + M2_LEN; i++)
        if (ioctl(fd, FIONREAD, &n) < 0 || n < M1_LEN + M2_LEN)
            usleep(10000);
    CHECK(n >= M1_LEN + M2_LEN);
    fill(want, PART, 'A');
    CHECK(read_n(fd, b, PART) == 0 && !memcmp(b, want, PART));
    CHECK(write(fd, "a-unread", 8) == 8);
    return fd;
}

/* Pass FD to the receiver listening at CARRIER. SIGFD >= 0: say so on it
 * first (the parent kills someone meanwhile). */
static void pass(int fd, const char *carrier, int sigfd)
{
    int c = connect_retry(carrier);
    struct t_fdmsg m;
    t_fdmsg(&m, fd);
    if (sigfd >= 0)
        CHECK(write(sigfd, "k", 1) == 1);
    int64_t t0 = t_now_ms();
    ssize_t sent = sendmsg(c, &m.m, 0);
    if (sent != 1)
        fprintf(stderr, "sendmsg: %zd %s\n", sent, strerror(errno));
    CHECK(sent == 1);
    CHECK(t_now_ms() - t0 < 5000); /* a dead server: no hang */
    close(c);
    close(fd);
}

/* The receiver: the descriptor passed at CARRIER, then the rest of the
 * stream (EXPECT 'd'), the end (a dead server, 'e'), or nothing comes
 * (a dead client, 'n'). */
static void receiver(const char *carrier, int expect)
{
    int l = listen_on(carrier);
    int c = accept_within(l, expect == 'n' ? 3000 : 10000);
    if (expect == 'n') {
        char x;
        if (c >= 0) /* the client died before or during its sendmsg: the end */
            while (read_n(c, &x, 1) == 0)
                ;
        return;
    }
    REQUIRE(c >= 0);
    char x;
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec one = {&x, 1};
    struct msghdr m = {.msg_iov = &one, .msg_iovlen = 1, .msg_control = cm.b,
                       .msg_controllen = sizeof cm.b};
    CHECK(recvmsg(c, &m, 0) == 1 && x == 'F'); /* t_fdmsg's byte */
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    REQUIRE(h && h->cmsg_type == SCM_RIGHTS);
    int fd;
    memcpy(&fd, CMSG_DATA(h), sizeof fd);
    if (expect == 'd') {
        finish(fd);
    } else {
        /* What the kernel says of a dead peer: the end (or a reset), with
         * no wake-up byte read as data before it. */
        char b[M1_LEN + M2_LEN];
        struct pollfd p = {fd, POLLIN, 0};
        CHECK(poll(&p, 1, 5000) == 1);
        ssize_t r = read(fd, b, sizeof b);
        char want[M1_LEN + M2_LEN];
        fill(want, M1_LEN, 'A');
        fill(want + M1_LEN, M2_LEN, 'a');
        CHECK(r <= 0 || !memcmp(b, want + PART, (size_t)r));
    }
    close(c);
    close(l);
}

/* The exec scenario's client: a failing exec (the connection stays on the
 * socket, working), unless ONCE, then an exec of the exec-child with a
 * second one. */
static void exec_client(const char *path, const char *self, int once)
{
    int fd = client_start(path);
    char *argv[] = {"rpal-no-such-program-downgrade", NULL};
    if (!once) {
        errno = 0;
        CHECK(execvp(argv[0], argv) == -1 && errno == ENOENT);
        finish(fd); /* on the socket now */
        fd = client_start(path);
    }
    char a[16];
    snprintf(a, sizeof a, "%d", fd);
    execl(self, self, "exec-child", a, (char *)NULL);
    CHECK(!"exec");
}

/* The spawn scenario's client: a program started with HOW (spawn,
 * spawnp-dup2, system, popen) reads the rest of the stream and answers
 * (finish(), as exec-child), then the client goes on, on the socket. */
static void spawn_client(const char *path, const char *how)
{
    extern char **environ;
    int fd = client_start(path), dup2 = !strcmp(how, "spawnp-dup2"), st = -1;
    char self[512], a[16], cmd[600];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(n > 0);
    self[n] = 0; /* the shell's /proc/self/exe would be the shell */
    snprintf(a, sizeof a, "%d", dup2 ? 200 : fd);
    char *argv[] = {self, "exec-child", a, NULL};
    if (!strcmp(how, "spawn") || dup2) {
        posix_spawn_file_actions_t fa;
        pid_t p;
        if (dup2) { /* the copy the program gets has no FD_CLOEXEC */
            CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0);
            REQUIRE(posix_spawn_file_actions_init(&fa) == 0 &&
                    posix_spawn_file_actions_adddup2(&fa, fd, 200) == 0);
        }
        int e = dup2 ? posix_spawnp(&p, self, &fa, NULL, argv, environ)
                     : posix_spawn(&p, self, NULL, NULL, argv, environ);
        CHECK(e == 0 && waitpid(p, &st, 0) == p);
        if (dup2)
            posix_spawn_file_actions_destroy(&fa);
    } else {
        snprintf(cmd, sizeof cmd, "%s exec-child %s", self, a);
        if (!strcmp(how, "system")) {
            st = system(cmd);
        } else {
            FILE *f = popen(cmd, "r");
            REQUIRE(f);
            while (fgets(a, sizeof a, f))
                ;
            st = pclose(f);
        }
    }
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char b[8];
    CHECK(write(fd, "parent", 6) == 6);
    CHECK(read_n(fd, b, 5) == 0 && !memcmp(b, "s-bye", 5));
    CHECK(close(fd) == 0);
}

/* The fork scenarios' client: after client_start, fork. HOW "fork": the
 * child reads the rest of the stream and answers (finish()) on the
 * connection itself; "fork-exec": the child execs the exec-child with it;
 * then the client goes on, on the socket. "fork-cloexec": the descriptor
 * has FD_CLOEXEC, so it stays on the rings, the parent's: the child's read
 * is EIO, and an exec that would keep a copy of it is refused (EIO) before
 * the program could read the rings' wake-up bytes; the client reads the
 * rest and answers itself. "fork-all" (RPAL_RUN_FORK=all): FD_CLOEXEC
 * too, and the child execs the exec-child with a copy (dup2), which works:
 * every connection went back to the socket at the fork. */
static void fork_client(const char *path, const char *how)
{
    int fd = client_start(path), st = -1;
    int cloexec = !strcmp(how, "fork-cloexec") || !strcmp(how, "fork-all");
    if (cloexec)
        CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0);
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        char a[16], b[4];
        if (!strcmp(how, "fork")) {
            finish(fd);
        } else if (!strcmp(how, "fork-cloexec")) {
            errno = 0;
            CHECK(read(fd, b, sizeof b) == -1 && errno == EIO);
            CHECK(dup2(fd, 200) == 200);
            snprintf(a, sizeof a, "%d", 200);
            errno = 0;
            CHECK(execl("/proc/self/exe", "t", "exec-child", a, (char *)NULL) == -1 &&
                  errno == EIO);
        } else {
            CHECK(dup2(fd, 200) == 200); /* the copy has no FD_CLOEXEC */
            snprintf(a, sizeof a, "%d", strcmp(how, "fork-exec") ? 200 : fd);
            execl("/proc/self/exe", "t", "exec-child", a, (char *)NULL);
            CHECK(!"exec");
        }
        _exit(t_failures ? 1 : 0);
    }
    CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char b[8];
    if (!strcmp(how, "fork-cloexec")) { /* the parent's part on the rings */
        CHECK(read_rest(fd) == 0);
        CHECK(write(fd, "from-c", 6) == 6);
        CHECK(read_n(fd, b, 7) == 0 && !memcmp(b, "s-final", 7));
    }
    CHECK(write(fd, "parent", 6) == 6);
    CHECK(read_n(fd, b, 5) == 0 && !memcmp(b, "s-bye", 5));
    CHECK(close(fd) == 0);
}

static pid_t spawn(int preload, const char *const args[])
{
    pid_t p = fork();
    if (p == 0) {
        if (!preload)
            unsetenv("LD_PRELOAD");
        execv("/proc/self/exe", (char *const *)args);
        _exit(127);
    }
    REQUIRE(p > 0);
    return p;
}

/* 0 if P exited with 0 (or, KILLED, was killed by SIGKILL). */
static int reap(pid_t p, const char *what, int killed)
{
    int st;
    REQUIRE(waitpid(p, &st, 0) == p);
    if (killed ? WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL : WIFEXITED(st) && !WEXITSTATUS(st))
        return 0;
    fprintf(stderr, "%s: status %#x\n", what, st);
    return -1;
}

/* At least UP lines "up" and DOWN lines "down 0" (a downgrade done) in the
 * log LOG. */
static int log_says(const char *log, int up, int down)
{
    char cmd[1400];
    snprintf(cmd, sizeof cmd,
             "test $(grep -c '^up ' %s) -ge %d && test $(grep -c '^down .* 0 0$' %s) -ge %d",
             log, up, log, down);
    if (system(cmd) == 0)
        return 0;
    fprintf(stderr, "the log %s does not say %d up, %d down:\n", log, up, down);
    snprintf(cmd, sizeof cmd, "cat %s >&2", log);
    (void)!system(cmd);
    return -1;
}

/* One scenario in DIR: NAME pass (RECV_PRELOAD: the receiver under rpal
 * run; the server waits in a sleep, or in epoll or poll for WAIT "-1",
 * "-2"), exec, kill-server or kill-client. 0 if it passed. */
static int scenario(const char *dir, const char *name, int recv_preload, const char *wait)
{
    char path[600], carrier[600], log[600];
    if (getenv("T_ONLY") && strcmp(getenv("T_ONLY"), name))
        return 0; /* one scenario, by hand */
    int big = !strcmp(name, "pass-big");
    if (big)
        setenv("T_BIG", "1", 1); /* otherwise as pass */
    snprintf(path, sizeof path, "%s/s-%s-%d%s", dir, name, recv_preload, wait);
    snprintf(carrier, sizeof carrier, "%s/c-%s-%d%s", dir, name, recv_preload, wait);
    snprintf(log, sizeof log, "%s/log-%s-%d%s", dir, name, recv_preload, wait);
    setenv("RPAL_RUN_LOG", log, 1);
    int fk = !strncmp(name, "fork", 4), twice = !strcmp(name, "system-twice");
    if (twice)
        name = "system";
    int sp = !strcmp(name, "spawn") || !strcmp(name, "spawnp-dup2") ||
             !strcmp(name, "system") || !strcmp(name, "popen") || fk;
    int both = !strcmp(name, "exec-both"), exec = !strcmp(name, "exec") || both,
        ks = !strcmp(name, "kill-server"), kc = !strcmp(name, "kill-client");
    int sig[2] = {-1, -1};
    char sigfd[16];
    REQUIRE(pipe(sig) == 0);
    snprintf(sigfd, sizeof sigfd, "%d", sig[1]);
    if (ks || kc)
        setenv("T_SIGFD", sigfd, 1);
    if (!strcmp(name, "fork-all"))
        setenv("RPAL_RUN_FORK", "all", 1);
    const char *sa[] = {"t", "server", path, ks ? "30000" : kc ? "3000" : wait,
                        exec && !both ? "2" : twice ? "2" : "1", kc ? "1" : both ? "2" : sp ? "3" : "0", NULL};
    const char *ra[] = {"t", "receiver", carrier, ks ? "e" : kc ? "n" : "d", NULL};
    const char *ca[] = {"t", "client", path, carrier, both ? "exec1" : exec ? "exec" : sp ? name : "pass", NULL};
    pid_t s = spawn(1, sa), r = exec || sp ? -1 : spawn(recv_preload, ra), c = spawn(1, ca);
    unsetenv("T_SIGFD");
    unsetenv("T_BIG");
    unsetenv("RPAL_RUN_FORK");
    close(sig[1]);
    if (ks || kc) {
        char x;
        struct pollfd p = {sig[0], POLLIN, 0};
        CHECK(poll(&p, 1, 10000) == 1 && read(sig[0], &x, 1) == 1);
        usleep(300000); /* the client waits for the server's answer by now */
        kill(ks ? s : c, SIGKILL);
    }
    close(sig[0]);
    int bad = reap(c, "client", kc);
    if (twice) {
        /* A second client, a new process (in the first's slot, most
         * likely), while the server still keeps the first's downgraded
         * connection retired: its hello must find no stale record. */
        c = spawn(1, ca);
        bad |= reap(c, "second client", 0);
    }
    bad |= reap(s, "server", ks);
    if (r > 0)
        bad |= reap(r, "receiver", 0);
    /* Both ends were on the rings first, and the client went down (a
     * killed one had no time to say so). */
    if (!kc)
        bad |= log_says(log, exec && !both ? 4 : twice ? 4 : 2, exec ? 2 : !strcmp(name, "fork-cloexec") ? 0 : 1);
    if (!strcmp(name, "fork-cloexec")) { /* it stayed on the rings */
        char cmd[700];
        snprintf(cmd, sizeof cmd, "grep -q '^down ' %s", log);
        if (system(cmd) == 0) {
            fprintf(stderr, "fork-cloexec: a connection went back to the socket\n");
            bad = 1;
        }
    }
    fprintf(stderr, "%s%s%s: %s\n", big ? "pass (1.5 MiB unread)" : twice ? "system, twice" : name, recv_preload ? "" : " (receiver not under rpal run)",
            !strcmp(wait, "-1") ? " (server in epoll)" : !strcmp(wait, "-2") ? " (server in poll)" : "",
            bad ? "FAILED" : "ok");
    return bad;
}

int main(int argc, char **argv)
{
    alarm(60); /* a hang is a failure, not a stuck suite */
    if (argc >= 3 && !strcmp(argv[1], "exec-child")) {
        finish(atoi(argv[2]));
        return t_failures ? 1 : 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "exec-server")) {
        /* The server's part after both left: the client's last message and
         * its answer, all from the socket. */
        int fd = atoi(argv[2]);
        char b[16];
        CHECK(read_n(fd, b, 14) == 0 && !memcmp(b, "a-unreadfrom-c", 14));
        CHECK(write(fd, "s-final", 7) == 7);
        CHECK(read_n(fd, b, 1) < 0);
        return t_failures ? 1 : 0;
    }
    if (argc >= 6 && !strcmp(argv[1], "server")) {
        server(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
        return t_failures ? 1 : 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "receiver")) {
        receiver(argv[2], argv[3][0]);
        return t_failures ? 1 : 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "client")) {
        if (!strncmp(argv[4], "exec", 4))
            exec_client(argv[2], "/proc/self/exe", !strcmp(argv[4], "exec1"));
        else if (!strncmp(argv[4], "fork", 4))
            fork_client(argv[2], argv[4]);
        else if (strcmp(argv[4], "pass"))
            spawn_client(argv[2], argv[4]);
        else
            pass(client_start(argv[2]), argv[3],
                 getenv("T_SIGFD") ? atoi(getenv("T_SIGFD")) : -1);
        return t_failures ? 1 : 0;
    }
    char lib[512], dir[] = "/tmp/rpal-run-down-XXXXXX";
    t_run_lib(lib, sizeof lib);
    REQUIRE(mkdtemp(dir));
    setenv("LD_PRELOAD", lib, 1);
    int bad = scenario(dir, "pass", 1, "300") | scenario(dir, "pass", 0, "300") |
              scenario(dir, "pass", 1, "-1") | scenario(dir, "pass", 1, "-2") |
              scenario(dir, "pass-big", 1, "300") |
              scenario(dir, "exec", 1, "300") | scenario(dir, "exec-both", 1, "300") |
              scenario(dir, "spawn", 1, "300") | scenario(dir, "spawnp-dup2", 1, "300") |
              scenario(dir, "system", 1, "300") | scenario(dir, "popen", 1, "300") |
              scenario(dir, "system-twice", 1, "300") |
              scenario(dir, "fork", 1, "300") | scenario(dir, "fork-exec", 1, "300") |
              scenario(dir, "fork-cloexec", 1, "300") | scenario(dir, "fork-all", 1, "300") |
              scenario(dir, "kill-server", 1, "") |
              scenario(dir, "kill-client", 1, "");
    unsetenv("LD_PRELOAD");
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (!getenv("T_KEEP")) /* the logs, to look at by hand */
        (void)!system(cmd);
    return bad || t_failures ? 1 : 0;
}
