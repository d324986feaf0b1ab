/* rpal run (src/compat.c): a client process exits, and the next client
 * process, which takes the same slot in the domain, connects while the
 * server still holds the first one's connection, unread. The server's
 * record of that slot is the dead process's; before, the new hello met it
 * and was refused as an impostor (the server's end "broken", ECONNRESET
 * at its first read). Now the dead one's connections go back to their
 * socket first, keeping what it wrote: the server reads the second client
 * on the rings, then the first one's last message and the end. The test
 * re-executes itself as the server and the two clients, all under
 * librpal-run.so (LD_PRELOAD, as `rpal run` sets it). */
#include "testlib.h"

#include <fcntl.h>
#include <sys/un.h>

static int sock_at(const char *path, int listening)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    if (listening) {
        REQUIRE(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 8) == 0);
        return fd;
    }
    for (int i = 0; i < 200; i++) {
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            return fd;
        usleep(10000);
    }
    REQUIRE(!"connect");
    return -1;
}

/* Exactly N bytes, or the end: what read() gave in all. */
static ssize_t read_n(int fd, char *b, size_t n)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 5000) != 1)
            return -2;
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static void server(const char *path, const char *ready)
{
    int l = sock_at(path, 1);
    REQUIRE(close(open(ready, O_CREAT | O_WRONLY, 0600)) == 0);
    char b[16];
    int f0 = accept(l, NULL, NULL);
    REQUIRE(f0 >= 0);
    CHECK(read_n(f0, b, 5) == 5 && !memcmp(b, "hello", 5));
    CHECK(write(f0, "one", 3) == 3);
    /* The first client has gone by now (the parent waited for it); its
     * connection stays open here, unread. */
    int f1 = accept(l, NULL, NULL);
    REQUIRE(f1 >= 0);
    errno = 0;
    ssize_t n = read_n(f1, b, 5);
    if (n != 5)
        fprintf(stderr, "the second client's hello: %zd (%s)\n", n, strerror(errno));
    CHECK(n == 5 && !memcmp(b, "hello", 5));
    CHECK(write(f1, "two", 3) == 3);
    /* The first client's last message, written before it exited, then the
     * end, as the kernel's socket would give them. */
    CHECK(read_n(f0, b, 10) == 10 && !memcmp(b, "bye-from-1", 10));
    CHECK(read_n(f0, b, 1) == 0);
    CHECK(read_n(f1, b, 1) == 0);
    close(f0);
    close(f1);
    close(l);
}

static void client(const char *path, const char *answer, int last)
{
    int fd = sock_at(path, 0);
    char b[4];
    CHECK(write(fd, "hello", 5) == 5);
    CHECK(read_n(fd, b, 3) == 3 && !memcmp(b, answer, 3));
    if (last)
        CHECK(write(fd, "bye-from-1", 10) == 10);
    /* exit closes it */
}

static pid_t spawn(const char *const args[])
{
    pid_t p = fork();
    if (p == 0) {
        execv("/proc/self/exe", (char *const *)args);
        _exit(127);
    }
    REQUIRE(p > 0);
    return p;
}

static int reap(pid_t p, const char *what)
{
    int st;
    REQUIRE(waitpid(p, &st, 0) == p);
    if (WIFEXITED(st) && !WEXITSTATUS(st))
        return 0;
    fprintf(stderr, "%s: status %#x\n", what, st);
    return -1;
}

int main(int argc, char **argv)
{
    alarm(60);
    if (argc >= 4 && !strcmp(argv[1], "server")) {
        server(argv[2], argv[3]);
        return t_failures ? 1 : 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "client")) {
        client(argv[2], argv[3], argc >= 5);
        return t_failures ? 1 : 0;
    }
    char lib[512], dir[] = "/tmp/rpal-run-reuse-XXXXXX", path[600], ready[600], log[600],
                   cmd[1400];
    t_run_lib(lib, sizeof lib);
    REQUIRE(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s", dir);
    snprintf(ready, sizeof ready, "%s/ready", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    setenv("LD_PRELOAD", lib, 1);
    setenv("RPAL_RUN_LOG", log, 1);
    const char *sa[] = {"t", "server", path, ready, NULL};
    const char *c1[] = {"t", "client", path, "one", "last", NULL};
    const char *c2[] = {"t", "client", path, "two", NULL};
    pid_t s = spawn(sa);
    for (int i = 0; i < 500 && access(ready, F_OK) != 0; i++)
        usleep(10000);
    int bad = reap(spawn(c1), "first client");
    bad |= reap(spawn(c2), "second client");
    bad |= reap(s, "server");
    unsetenv("LD_PRELOAD");
    /* All four ends on the rings, none broken. */
    snprintf(cmd, sizeof cmd, "test $(grep -c '^up ' %s) -eq 4 && ! grep -q '^broken ' %s", log,
             log);
    if (system(cmd) != 0) {
        fprintf(stderr, "the log does not say 4 up, none broken:\n");
        snprintf(cmd, sizeof cmd, "cat %s >&2", log);
        (void)!system(cmd);
        bad = 1;
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    (void)!system(cmd);
    return bad || t_failures ? 1 : 0;
}
