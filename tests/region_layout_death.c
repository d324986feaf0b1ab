/* A sharer that died, or that stopped answering, does not block a change:
 * the call returns within its deadline and says what happened (dead,
 * detached). A detached sharer that runs again has the region unmapped and
 * its handle refuses changes. A process that attaches later gets the
 * current layout, file objects included (by path), and is told about the
 * ones it could not open. The sharers here come from fork(): a child is
 * registered before fork() returns in it.
 */
#include "testlib.h"

#include <fcntl.h>
#include <sys/mman.h>

#define NAME "dead"
#define SIZE (1u << 20)
#define PAGE 4096u
#define FILEAT 0x20000u
#define MEMAT  0x30000u

static rpal_region *r;
static uint64_t base;

static int64_t ms_since(int64_t t0) { return t_now_ms() - t0; }

/* A forked sharer: answers commands until told to quit. */
static int sharer(int up, int down)
{
    t_catch_faults();
    t_put(up, 'r');
    for (;;) {
        char c = t_get(down), res = '?';
        int code;
        switch (c) {
        case 'p': /* ping: the first page is read-only now */
            res = t_write_faults(base, 1) == SIGSEGV ? 'P' : 'x';
            break;
        case 'd': /* we were detached while stopped */
            res = t_read_faults(base + 8, &code) == SIGSEGV &&
                          rpal_region_protect(r, 0, PAGE, PROT_READ, NULL) == -ESTALE
                      ? 'D' : 'x';
            break;
        case 0:
        case 'q':
            return 0;
        }
        t_put(up, res);
    }
}

struct kid {
    pid_t pid;
    int up, down;
};

static struct kid spawn(void)
{
    int u[2], d[2];
    REQUIRE(pipe(u) == 0 && pipe(d) == 0);
    struct kid k;
    k.pid = fork();
    REQUIRE(k.pid >= 0);
    if (k.pid == 0) {
        close(u[0]);
        close(d[1]);
        _exit(sharer(u[1], d[0]));
    }
    close(u[1]);
    close(d[0]);
    k.up = u[0];
    k.down = d[1];
    REQUIRE(t_get(k.up) == 'r');
    return k;
}

static char ask(struct kid *k, char c)
{
    t_put(k->down, c);
    return t_get(k->up);
}

static void stop(pid_t pid)
{
    int st;
    REQUIRE(kill(pid, SIGSTOP) == 0);
    REQUIRE(waitpid(pid, &st, WUNTRACED) == pid && WIFSTOPPED(st));
}

/* The late attacher: a fresh process, attaching by name. */
static int late(const char *file)
{
    t_catch_faults();
    rpal_region *lr;
    int n = rpal_region_attach(NAME, 0, &lr);
    if (n != 1) { /* the memfd object has no path to open it by */
        fprintf(stderr, "late: attach returned %d, want 1\n", n);
        return 1;
    }
    uint64_t b = (uint64_t)(uintptr_t)rpal_region_addr(lr);
    int code, bad = 0;
    bad += *(volatile uint64_t *)(uintptr_t)b != 0x5a5a;        /* data kept */
    bad += t_write_faults(b, 1) != SIGSEGV;                     /* page 0: read-only */
    bad += t_write_faults(b + PAGE, 2) != 0;                    /* page 1: read-write */
    bad += t_read_faults(b + 0x10000, &code) != SIGSEGV;        /* unmapped */
    bad += memcmp((void *)(uintptr_t)(b + FILEAT), file, 8) != 0; /* file, by path */
    bad += t_read_faults(b + MEMAT, &code) != SIGSEGV;          /* memfd: unavailable */
    rpal_region_detach(lr);
    /* Read-only attachers follow too, and cannot change anything. */
    n = rpal_region_attach(NAME, RPAL_REGION_RDONLY, &lr);
    bad += n != 1;
    if (n >= 0) {
        bad += t_write_faults(b + PAGE, 2) != SIGSEGV;
        bad += *(volatile uint64_t *)(uintptr_t)(b + PAGE) != 2;
        bad += rpal_region_protect(lr, 0, PAGE, PROT_READ, NULL) != -EBADF;
        rpal_region_detach(lr);
    }
    if (bad)
        fprintf(stderr, "late: %d checks failed\n", bad);
    return bad ? 1 : 0;
}

int main(void)
{
    t_init();
    alarm(60);
    t_catch_faults();
    REQUIRE(rpal_region_create(NAME, SIZE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    base = (uint64_t)(uintptr_t)rpal_region_addr(r);
    REQUIRE(rpal_region_map(r, 0, 0x10000, PROT_READ | PROT_WRITE, -1, 0, NULL) == 0);
    *(volatile uint64_t *)(uintptr_t)base = 0x5a5a;

    struct kid killed = spawn(), stopped = spawn(), dying = spawn();
    struct rpal_region_change chg = {.timeout_ms = 2000};

    /* 1. A sharer killed before the change: not waited for at all. */
    kill(killed.pid, SIGKILL);
    CHECK(t_wait(killed.pid) == 128 + SIGKILL);
    int64_t t0 = t_now_ms();
    CHECK_ERR(rpal_region_protect(r, 0, PAGE, PROT_READ, &chg), 0);
    CHECK(ms_since(t0) < 1000);
    CHECK(chg.applied == 2 && chg.dead == 0 && chg.detached == 0 && chg.failed == 0);
    CHECK(ask(&stopped, 'p') == 'P');
    CHECK(ask(&dying, 'p') == 'P');

    /* 2. A stopped sharer: detached at the deadline. */
    stop(stopped.pid);
    struct rpal_region_change c2 = {.timeout_ms = 300};
    t0 = t_now_ms();
    CHECK_ERR(rpal_region_protect(r, PAGE, PAGE, PROT_READ, &c2), 1); /* detached one */
    int64_t took = ms_since(t0);
    CHECK(took >= 250 && took < 2000);
    CHECK(c2.applied == 1 && c2.detached == 1 && c2.dead == 0);

    /* 3. A sharer that dies while the change waits for it (stopped first,
     * killed 100 ms later): counted dead, the call returns then. The
     * stopped one is already detached: not waited for again. */
    stop(dying.pid);
    int kp[2];
    REQUIRE(pipe(kp) == 0);
    pid_t killer = fork();
    REQUIRE(killer >= 0);
    if (killer == 0) {
        rpal_region_detach(r); /* not a sharer itself */
        t_put(kp[1], 'k');
        usleep(100000);
        kill(dying.pid, SIGKILL);
        _exit(0);
    }
    CHECK(t_get(kp[0]) == 'k');
    close(kp[0]);
    close(kp[1]);
    struct rpal_region_change c3 = {.timeout_ms = 5000};
    t0 = t_now_ms();
    CHECK_ERR(rpal_region_protect(r, PAGE, PAGE, PROT_READ | PROT_WRITE, &c3), 1);
    took = ms_since(t0);
    CHECK(took >= 50 && took < 3000);
    CHECK(c3.dead == 1 && c3.detached == 1 && c3.applied == 0);
    CHECK(t_wait(killer) == 0);
    CHECK(t_wait(dying.pid) == 128 + SIGKILL);

    /* 4. The stopped sharer runs again: its agent unmaps the region. */
    REQUIRE(kill(stopped.pid, SIGCONT) == 0);
    char got = '?';
    for (int i = 0; i < 100 && got != 'D'; i++) {
        usleep(10000);
        got = ask(&stopped, 'd');
    }
    CHECK(got == 'D');

    /* 5. A late attacher gets the layout: file objects by their path, and
     * one without a path (a memfd) is reported. */
    char path[64] = "/dev/shm/rpal-layfile-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, "LATEFILE", 8) == 8 && ftruncate(fd, 4 * PAGE) == 0);
    CHECK_ERR(rpal_region_map(r, FILEAT, 4 * PAGE, PROT_READ, fd, 0, NULL), 0);
    close(fd);
    int mfd = memfd_create("rpal-test", MFD_CLOEXEC);
    REQUIRE(mfd >= 0 && ftruncate(mfd, PAGE) == 0);
    CHECK_ERR(rpal_region_map(r, MEMAT, PAGE, PROT_READ | PROT_WRITE, mfd, 0, &chg), 0);
    CHECK(chg.applied == 0 && chg.detached == 0); /* only the detached one is left */
    close(mfd);
    pid_t lp = fork();
    REQUIRE(lp >= 0);
    if (lp == 0) {
        rpal_region_detach(r); /* the inherited attachment: attach anew */
        _exit(late("LATEFILE"));
    }
    CHECK(t_wait(lp) == 0);

    t_put(stopped.down, 'q');
    CHECK(t_wait(stopped.pid) == 0);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
    unlink(path);
    return t_done();
}
