/* fork() holds off changes to every region the process has attached, however
 * many, until the child has registered as a sharer (issue 15: the fork
 * handler held at most 256, so a change to any other region could slip
 * between fork and the child's registration, and the child miss it).
 *
 * The test attaches 300 regions, registers a fork handler of its own
 * before rpal registers its (prepare handlers run in the reverse order, so
 * ours runs after rpal's has taken its holds) and there counts the regions
 * whose lock file has byte 0 read-locked (a change's write lock would
 * conflict with it). After fork, a change to the oldest region reaches the
 * child.
 */
#include "testlib.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>

#define NREG 300
#define PAGE 4096u

static rpal_region *reg[NREG];
static int held = -1;

static void name_of(int i, char *buf, size_t n) { snprintf(buf, n, "fm%03d", i); }

/* Runs inside fork(), after rpal's prepare handler. */
static void count_holds(void)
{
    held = 0;
    for (int i = 0; i < NREG; i++) {
        char name[16], lk[600];
        name_of(i, name, sizeof name);
        t_lock_path(name, lk, sizeof lk);
        int fd = open(lk, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
        if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_RDLCK)
            held++;
        close(fd);
    }
}

int main(void)
{
    t_init();
    alarm(120);
    /* Before rpal's own handlers (the first attach registers them). */
    REQUIRE(pthread_atfork(count_holds, NULL, NULL) == 0);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4 * NREG && rl.rlim_max >= 4 * NREG) {
        rl.rlim_cur = 4 * NREG;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    for (int i = 0; i < NREG; i++) {
        char name[16];
        name_of(i, name, sizeof name);
        int err = rpal_region_create(name, PAGE, 0600, 0, &reg[i]);
        if (err < 0) {
            fprintf(stderr, "create %s: %s\n", name, rpal_strerror(err));
            return 1;
        }
    }
    int u[2], d[2];
    REQUIRE(pipe(u) == 0 && pipe(d) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        /* The first region's page becomes read-only in the parent's change:
         * here too, by the time that change returns. */
        t_catch_faults();
        t_put(u[1], 'r');
        if (t_get(d[0]) != 'c')
            _exit(2);
        uint64_t at = (uint64_t)(uintptr_t)rpal_region_addr(reg[0]);
        t_put(u[1], t_write_faults(at, 1) == SIGSEGV ? 'F' : 'W');
        _exit(0);
    }
    if (held != NREG) {
        fprintf(stderr, "fork held off changes to %d of %d regions\n", held, NREG);
        t_failures++;
    }
    REQUIRE(t_get(u[0]) == 'r');
    struct rpal_region_change c = {.timeout_ms = 5000};
    CHECK_ERR(rpal_region_protect(reg[0], 0, PAGE, PROT_READ, &c), 0);
    CHECK(c.applied == 1);
    t_put(d[1], 'c');
    CHECK(t_get(u[0]) == 'F');
    CHECK(t_wait(pid) == 0);
    for (int i = 0; i < NREG; i++) {
        char name[16];
        name_of(i, name, sizeof name);
        CHECK(rpal_region_detach(reg[i]) == 0);
        CHECK(rpal_region_unlink(name) == 0);
    }
    return t_done();
}
