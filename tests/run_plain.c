/* rpal run (src/run.c): descriptors that are not upgraded behave as
 * without it. The test re-executes itself under librpal-run.so and checks
 * pipes, a regular file, a socketpair and a connection to a server that is
 * not under rpal run (this process, without the library): they keep the
 * kernel's semantics, and the log says the connection was left plain (no
 * byte of a hello reached the server: it echoes what it reads, and the
 * client checks the echo). A skip without the library. */
#include "testlib.h"

#include <fcntl.h>
#include <sys/select.h>
#include <sys/un.h>

static void under_run(const char *path, const char *file)
{
    int p[2];
    char b[64];
    REQUIRE(pipe(p) == 0);
    CHECK(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
    errno = 0;
    CHECK(read(p[0], b, 1) == -1 && errno == EAGAIN);
    CHECK(write(p[1], "pq", 2) == 2);
    struct pollfd pf = {p[0], POLLIN, 0};
    CHECK(poll(&pf, 1, 0) == 1 && pf.revents == POLLIN);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7}, out[2];
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) == 0);
    CHECK(epoll_wait(ep, out, 2, 1000) == 1 && out[0].data.u64 == 7);
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(p[0], &rs);
    CHECK(select(p[0] + 1, &rs, NULL, NULL, NULL) == 1 && FD_ISSET(p[0], &rs));
    CHECK(read(p[0], b, 8) == 2 && !memcmp(b, "pq", 2));
    int f = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(f >= 0 && write(f, "file", 4) == 4 && lseek(f, 0, SEEK_SET) == 0);
    CHECK(read(f, b, 8) == 4 && !memcmp(b, "file", 4));
    int d = dup(f);
    CHECK(d >= 0 && lseek(d, 1, SEEK_SET) == 1 && read(f, b, 1) == 1 && b[0] == 'i');
    close(d);
    close(f);
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    CHECK(send(sp[0], "sp", 2, 0) == 2 && recv(sp[1], b, 8, 0) == 2 && !memcmp(b, "sp", 2));
    /* A server not under rpal run: a plain connection, echoed. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    REQUIRE(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(write(fd, "plain", 5) == 5);
    size_t got = 0;
    while (got < 5) {
        ssize_t r = read(fd, b + got, 5 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    CHECK(got == 5 && !memcmp(b, "plain", 5));
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc == 3) {
        under_run(argv[1], argv[2]);
        return t_failures ? 1 : 0;
    }
    char lib[512], dir[] = "/tmp/rpal-run-plain-XXXXXX", path[100], logp[100], file[100];
    t_run_lib(lib, sizeof lib);
    REQUIRE(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s", dir);
    snprintf(logp, sizeof logp, "%s/log", dir);
    snprintf(file, sizeof file, "%s/f", dir);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    REQUIRE(bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 4) == 0);
    pid_t kid = fork();
    if (kid == 0) {
        setenv("LD_PRELOAD", lib, 1);
        setenv("RPAL_RUN_LOG", logp, 1);
        execl("/proc/self/exe", argv[0], path, file, (char *)NULL);
        _exit(127);
    }
    int c = accept(l, NULL, NULL);
    char b[64];
    ssize_t n = c >= 0 ? read(c, b, sizeof b) : -1;
    /* all of it in one read: five bytes written at once */
    CHECK(n == 5 && !memcmp(b, "plain", 5));
    CHECK(n > 0 && write(c, b, (size_t)n) == n);
    int st;
    waitpid(kid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "grep -q '^plain ' %s && ! grep -q '^up ' %s", logp, logp);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    (void)!system(cmd);
    return t_failures ? 1 : 0;
}
