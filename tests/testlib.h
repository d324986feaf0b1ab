/* Helpers shared by the test programs. Each test is one program: exit 0 on
 * pass, 1 on fail, 77 on skip (with the reason on stdout). */
#ifndef RPAL_TESTLIB_H
#define RPAL_TESTLIB_H

#include "rpal.h"

#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <inttypes.h>
#include <poll.h>
#include <time.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define T_SKIP 77

static int t_failures;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            t_failures++;                                                      \
        }                                                                      \
    } while (0)

/* CHECK_ERR(call, -EXXX): the call returns exactly that negative errno. */
#define CHECK_ERR(call, want)                                                  \
    do {                                                                       \
        long got_ = (long)(call);                                              \
        if (got_ != (long)(want)) {                                            \
            fprintf(stderr, "%s:%d: %s returned %ld (%s), want %ld (%s)\n",     \
                    __FILE__, __LINE__, #call, got_,                           \
                    rpal_strerror((int)got_), (long)(want),                    \
                    rpal_strerror((int)(want)));                               \
            t_failures++;                                                      \
        }                                                                      \
    } while (0)

#define REQUIRE(cond)                                                          \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: required: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                    \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static inline void t_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    exit(T_SKIP);
}

/* A private namespace directory for this test, removed at exit. The runner
 * gives each test its own RPAL_DIR; a test run by hand gets one here. */
static char t_dir[256];
static pid_t t_dir_owner;

static inline void t_cleanup_dir(void)
{
    if (t_dir[0] && getpid() == t_dir_owner) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", t_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", t_dir);
    }
}

static inline void t_init(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *d = getenv("RPAL_DIR");
    if (d && *d)
        return;
    snprintf(t_dir, sizeof t_dir, "/dev/shm/rpal-test-XXXXXX");
    REQUIRE(mkdtemp(t_dir) != NULL);
    setenv("RPAL_DIR", t_dir, 1);
    t_dir_owner = getpid();
    atexit(t_cleanup_dir);
}

static inline int t_done(void)
{
    if (t_failures)
        fprintf(stderr, "%d check(s) failed\n", t_failures);
    return t_failures ? 1 : 0;
}

/* Wait for CHILD; returns its exit code, or 128 + signal number. */
static inline int t_wait(pid_t child)
{
    int st;
    while (waitpid(child, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

/* ---- helpers shared by the multi-process tests ---- */

/* Serve one message of R within MS milliseconds with the XOR echo (each
 * byte ^ 0x5A, at most 256 bytes) that t_xor_ok() checks: rpal_receive's
 * error (-ETIMEDOUT: nothing came), or rpal_reply's. */
static inline int t_serve_xor(rpal_receiver *r, int ms)
{
    struct rpal_msg m;
    int err = rpal_receive(r, &m, ms);
    if (err < 0)
        return err;
    unsigned char out[256];
    size_t n = m.len < sizeof out ? m.len : sizeof out;
    const unsigned char *in = m.data;
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)(in[i] ^ 0x5A);
    return rpal_reply(r, &m, out, n);
}

/* Is REP (RLEN bytes) the XOR echo of REQ (LEN bytes)? If not, says where. */
static inline int t_xor_ok(const unsigned char *req, size_t len, const unsigned char *rep,
                           size_t rlen)
{
    if (rlen != len) {
        fprintf(stderr, "pid %d: a reply of %zu bytes to a request of %zu\n", (int)getpid(),
                rlen, len);
        return 0;
    }
    for (size_t i = 0; i < len; i++)
        if (rep[i] != (req[i] ^ 0x5A)) {
            fprintf(stderr, "pid %d: reply byte %zu of %zu is %#x, want %#x\n", (int)getpid(),
                    i, len, rep[i], req[i] ^ 0x5A);
            return 0;
        }
    return 1;
}

static inline void t_put(int fd, char c)
{
    while (write(fd, &c, 1) < 0)
        if (errno != EINTR)
            _exit(3);
}

/* One byte from FD, or 0 at end of file. */
static inline char t_get(int fd)
{
    char c;
    ssize_t n;
    while ((n = read(fd, &c, 1)) < 0 && errno == EINTR)
        ;
    return n == 1 ? c : 0;
}

static inline int64_t t_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void t_put_line(int fd, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    REQUIRE(n > 0 && (size_t)n < sizeof buf);
    for (int off = 0; off < n;) {
        ssize_t k = write(fd, buf + off, (size_t)(n - off));
        if (k < 0 && errno == EINTR)
            continue;
        REQUIRE(k > 0);
        off += (int)k;
    }
}

/* One line from FD (without its newline) within MS milliseconds; 0, or -1
 * at end of file or on timeout. */
static inline int t_get_line(int fd, char *buf, size_t size, int ms)
{
    int64_t deadline = t_now_ms() + ms;
    size_t n = 0;
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        int64_t left = deadline - t_now_ms();
        if (left < 0 || poll(&pf, 1, (int)left) == 0)
            return -1;
        char c;
        ssize_t k = read(fd, &c, 1);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (k <= 0)
            return -1;
        if (c == '\n') {
            buf[n] = 0;
            return 0;
        }
        if (n + 1 < size)
            buf[n++] = c;
    }
}

/* The permissions and file of the /proc/self/maps line covering ADDR
 * (path "" for anonymous memory); 0, or -1 if nothing covers it. */
static inline int t_map_of(uint64_t addr, char perms[5], char *path, size_t pathsize)
{
    FILE *f = fopen("/proc/self/maps", "r");
    REQUIRE(f);
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        uint64_t lo, hi;
        int off = 0;
        char p[5];
        if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %4s %*s %*s %*s %n", &lo, &hi, p, &off) < 3)
            continue;
        if (addr < lo || addr >= hi)
            continue;
        memcpy(perms, p, 5);
        line[strcspn(line, "\n")] = 0;
        snprintf(path, pathsize, "%s", off ? line + off : "");
        found = 0;
        break;
    }
    fclose(f);
    return found;
}

/* Catching a fault per thread: t_try_read() reads a word and returns 0, or
 * the signal it raised with its si_code and address. Install t_on_fault
 * with SA_SIGINFO for SIGSEGV (and SIGBUS) first. */
static __thread sigjmp_buf *volatile t_fault_jb;
static __thread volatile int t_fault_code;
static __thread void *volatile t_fault_addr;

static inline void t_on_fault(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    sigjmp_buf *jb = t_fault_jb;
    if (!jb) {
        signal(sig, SIG_DFL);
        return;
    }
    t_fault_jb = NULL;
    t_fault_code = si->si_code;
    t_fault_addr = si->si_addr;
    siglongjmp(*jb, sig);
}

static inline int t_try_read(uint64_t addr, uint64_t *v, int *code, uint64_t *where)
{
    sigjmp_buf jb;
    int sig = sigsetjmp(jb, 1);
    if (sig) {
        *code = t_fault_code;
        *where = (uint64_t)(uintptr_t)t_fault_addr;
        return sig;
    }
    t_fault_jb = &jb;
    *v = *(volatile uint64_t *)(uintptr_t)addr;
    t_fault_jb = NULL;
    return 0;
}

/* The signal that writing V to ADDR raises (0 if it was written). */
static inline int t_write_faults(uint64_t addr, uint64_t v)
{
    sigjmp_buf jb;
    int sig = sigsetjmp(jb, 1);
    if (sig)
        return sig;
    t_fault_jb = &jb;
    *(volatile uint64_t *)(uintptr_t)addr = v;
    t_fault_jb = NULL;
    return 0;
}

/* Catch SIGSEGV and SIGBUS with t_on_fault (for t_try_read and friends). */
static inline void t_catch_faults(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = t_on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
}

/* The signal that reading ADDR raises (0 if none), *CODE its si_code. */
static inline int t_read_faults(uint64_t addr, int *code)
{
    uint64_t v, where;
    return t_try_read(addr, &v, code, &where);
}

/* In a freshly forked child: close every descriptor inherited from the test
 * (its domain's among them) but stdio and KEEP1 to KEEP3 (-1: none). */
static inline void t_close_inherited(int keep1, int keep2, int keep3)
{
    int fds[256], n = 0;
    DIR *dir = opendir("/proc/self/fd");
    REQUIRE(dir);
    struct dirent *de;
    while ((de = readdir(dir)) && n < 256) {
        int fd = atoi(de->d_name);
        if (de->d_name[0] != '.' && fd > 2 && fd != keep1 && fd != keep2 &&
            fd != keep3 && fd != dirfd(dir))
            fds[n++] = fd;
    }
    closedir(dir);
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

/* ---- helpers of the region layout tests ---- */

/* Stop PID (a child) and wait until it is stopped. */
static inline void t_stop(pid_t pid)
{
    int st;
    REQUIRE(kill(pid, SIGSTOP) == 0);
    REQUIRE(waitpid(pid, &st, WUNTRACED) == pid && WIFSTOPPED(st));
}

/* The change counter of region NAME (see rpal_region_layout). */
static inline uint32_t t_region_gen(const char *name)
{
    uint32_t g = 0;
    struct rpal_region_object o[8];
    REQUIRE(rpal_region_layout(name, &g, o, 8) >= 0);
    return g;
}

/* In a forked child: be killed when the test (the parent) exits, so that a
 * test that stops on a failed REQUIRE leaves no child behind. */
static inline void t_die_with_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
}

/* A child that shares this process's regions (through fork) and only
 * waits, until it is stopped or killed. Returns once fork's handlers are
 * done in it: it holds nothing of a region's then (stopped earlier, it
 * would hold off every change). */
static inline pid_t t_fork_sharer(void)
{
    int u[2];
    REQUIRE(pipe(u) == 0);
    pid_t parent = getpid(), pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        t_die_with_parent(parent);
        t_put(u[1], 'r');
        for (;;)
            pause();
    }
    REQUIRE(t_get(u[0]) == 'r');
    close(u[0]);
    close(u[1]);
    return pid;
}

/* The lock file of region NAME (a name at the top of the namespace):
 * `.NAME.INODE.lock` beside it (docs/regions.md, "Layout"). */
static inline void t_lock_path(const char *name, char *buf, size_t size)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", rpal_ns_dir(), name);
    REQUIRE(stat(p, &st) == 0);
    snprintf(buf, size, "%s/.%s.%llu.lock", rpal_ns_dir(), name, (unsigned long long)st.st_ino);
}

/* Bytes of memory that region NAME's files hold (the region file and its
 * lock file): what unmapped objects must give back. */
static inline long long t_region_bytes(const char *name)
{
    char p[512], lk[600];
    struct stat a, b;
    snprintf(p, sizeof p, "%s/%s", rpal_ns_dir(), name);
    t_lock_path(name, lk, sizeof lk);
    REQUIRE(stat(p, &a) == 0 && stat(lk, &b) == 0);
    return ((long long)a.st_blocks + (long long)b.st_blocks) * 512;
}

#endif
