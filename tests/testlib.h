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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
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

/* The interposer of `rpal run` in the build under test ($RPAL_BIN) into
 * LIB, or a skip: not under emulation (qemu-user's loader and LD_PRELOAD
 * are not tried yet), nor where the build has none. */
static inline void t_run_lib(char *lib, size_t len)
{
    const char *b = getenv("RPAL_BIN") ? getenv("RPAL_BIN") : "build";
    snprintf(lib, len, "%s/librpal-run.so", b);
    if (getenv("RPAL_EMULATED"))
        t_skip("rpal run under emulation (%s) is not tested yet", getenv("RPAL_EMULATED"));
    if (access(lib, R_OK) != 0)
        t_skip("no %s (the sanitizer, valgrind and static builds do not make it)", lib);
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

/* The threads (tasks) this process has now, or -1. */
static inline int t_ntasks(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Wait (at most 10 s) until this process has at most N threads: call after
 * pthread_join and before a fork whose child starts a thread. pthread_join
 * returns once the thread's id word is cleared; under QEMU's user mode the
 * thread does that while it still holds QEMU's clone lock, and a child
 * forked then inherits the lock held and hangs in its first pthread_create
 * (tests/region_guard hung in 8 runs of 100). On a kernel the wait ends at
 * once or within the thread's last instructions. */
static inline void t_tasks_settle(int n)
{
    for (int i = 0; i < 10000 && t_ntasks() > n; i++)
        usleep(1000);
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

/* Exactly N bytes of FD with blocking read()s (under rpal run: the
 * interposed ones): 0, or -1 at an error or the end. */
static inline int t_read_all(int fd, char *b, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, b + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* The output (standard output and error) of `$B/rpal ARGS` in OUT. */
static inline void t_rpal_out(const char *args, char *out, size_t size)
{
    const char *b = getenv("B");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s/rpal %s 2>&1", b && *b ? b : "build", args);
    FILE *f = popen(cmd, "r");
    REQUIRE(f);
    size_t n = fread(out, 1, size - 1, f);
    out[n] = 0;
    pclose(f);
}

/* Pass the descriptor FD over the Unix socket SOCK (SCM_RIGHTS, one byte
 * along), and take one on the other end. */
/* A message of one byte carrying the descriptor FD (SCM_RIGHTS): fill
 * *M and pass &M->m to sendmsg. */
struct t_fdmsg {
    char byte;
    struct iovec iov;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m;
};

static inline struct msghdr *t_fdmsg(struct t_fdmsg *m, int fd)
{
    memset(m, 0, sizeof *m);
    m->byte = 'F';
    m->iov = (struct iovec){&m->byte, 1};
    m->m = (struct msghdr){.msg_iov = &m->iov, .msg_iovlen = 1, .msg_control = m->u.buf,
                           .msg_controllen = sizeof m->u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m->m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    return &m->m;
}

static inline void t_send_fd(int sock, int fd)
{
    struct t_fdmsg m;
    REQUIRE(sendmsg(sock, t_fdmsg(&m, fd), 0) == 1);
}

static inline int t_recv_fd(int sock)
{
    char b;
    struct iovec iov = {&b, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                        .msg_controllen = sizeof u.buf};
    REQUIRE(recvmsg(sock, &mh, MSG_CMSG_CLOEXEC) == 1);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    REQUIRE(cm && cm->cmsg_type == SCM_RIGHTS);
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return fd;
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

#ifndef SEGV_PKUERR
#define SEGV_PKUERR 4
#endif

/* 1 if reading ADDR faults with SEGV_PKUERR there, as a read of a peer's
 * slot outside an access window does under protection keys (said on
 * stderr otherwise, with WHAT). */
static inline int t_pku_faults(const char *what, uint64_t addr)
{
    uint64_t v = 0, where = 0;
    int code = 0;
    int sig = t_try_read(addr, &v, &code, &where);
    if (sig == SIGSEGV && code == SEGV_PKUERR && where == addr)
        return 1;
    if (sig)
        fprintf(stderr, "%s: read at %#" PRIx64 ": signal %d code %d at %#" PRIx64
                ", want SIGSEGV SEGV_PKUERR\n", what, addr, sig, code, where);
    else
        fprintf(stderr, "%s: read at %#" PRIx64 " outside a window went through (%#" PRIx64
                ")\n", what, addr, v);
    return 0;
}

/* 1 if reading ADDR works and gives WANT (said on stderr otherwise). */
static inline int t_reads(const char *what, uint64_t addr, uint64_t want)
{
    uint64_t v = 0, where = 0;
    int code = 0;
    int sig = t_try_read(addr, &v, &code, &where);
    if (sig == 0 && v == want)
        return 1;
    fprintf(stderr, "%s: read at %#" PRIx64 ": signal %d code %d, value %#" PRIx64
            " want %#" PRIx64 "\n", what, addr, sig, code, v, want);
    return 0;
}

/* A service's main loop in the tests: dispatch D until FD turns readable
 * (the other side's word that it is done). */
static inline void t_dispatch_until(rpal_domain *d, int fd)
{
    for (;;) {
        struct rpal_event ev[8];
        REQUIRE(rpal_domain_dispatch(d, ev, 8, 20) >= 0);
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 0) == 1)
            return;
    }
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

/* ---- a service process and a caller, for the waiting tests ---- */

#include <pthread.h>
#include <sched.h>

/* Pin the calling thread to CPU (no-op for -1); 0, or -1 if CPU is not
 * ours to use. */
static inline int t_pin(int cpu)
{
    if (cpu < 0)
        return 0;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return sched_setaffinity(0, sizeof s, &s) == 0 ? 0 : -1;
}

/* The first two CPUs we may use, or -1 if there are fewer. */
static inline int t_two_cpus(int *a, int *b)
{
    cpu_set_t s;
    *a = *b = -1;
    if (sched_getaffinity(0, sizeof s, &s) < 0)
        return -1;
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &s)) {
            if (*a < 0)
                *a = i;
            else if (*b < 0)
                *b = i;
        }
    return *b >= 0 ? 0 : -1;
}

struct t_svc {
    pid_t pid;
    int key_fd, stop_fd; /* the key comes on KEY_FD; closing STOP_FD ends it */
};

struct t_svc_arg {
    rpal_service *s;
    struct rpal_chan_opts o;
    int cpu;
    /* Before each reply, with probability 1/DELAY_ONE_IN (0: never), sleep
     * up to DELAY_US microseconds: a busy service. */
    unsigned delay_one_in, delay_us;
    _Atomic int stop;
};

static inline void t_sleep_us(unsigned us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static inline void *t_svc_receiver(void *arg)
{
    struct t_svc_arg *a = arg;
    rpal_receiver *r;
    t_pin(a->cpu);
    REQUIRE(rpal_receiver_create(a->s, &a->o, &r) == 0);
    unsigned seed = (unsigned)getpid();
    while (!atomic_load_explicit(&a->stop, memory_order_acquire)) {
        struct rpal_msg m;
        int err = rpal_receive(r, &m, 50);
        if (err == -ETIMEDOUT)
            continue;
        REQUIRE(err == 0);
        if (a->delay_one_in && rand_r(&seed) % a->delay_one_in == 0)
            t_sleep_us((unsigned)rand_r(&seed) % (a->delay_us + 1));
        unsigned char out[256];
        size_t n = m.len < sizeof out ? m.len : sizeof out;
        const unsigned char *in = m.data;
        for (size_t i = 0; i < n; i++)
            out[i] = (unsigned char)(in[i] ^ 0x5A);
        err = rpal_reply(r, &m, out, n);
        REQUIRE(err == 0 || err == -ESHUTDOWN);
    }
    rpal_receiver_destroy(r);
    return NULL;
}

/* Send service S's key as text on FD (33 bytes), as tests hand a key from
 * a service process to its callers through a pipe. */
static inline void t_key_send(int fd, const rpal_service *s)
{
    rpal_key k;
    char text[33];
    REQUIRE(rpal_service_key(s, &k) == 0 && rpal_key_format(&k, text) == 0);
    REQUIRE(write(fd, text, 33) == 33);
}

/* The key that t_key_send wrote on FD. */
static inline rpal_key t_key_recv(int fd)
{
    char text[33];
    rpal_key key;
    REQUIRE(read(fd, text, 33) == 33);
    REQUIRE(rpal_key_parse(text, &key) == 0);
    return key;
}

/* Fork a service process: domain DOMAIN, service "svc", one receiver thread
 * with options O on CPU (-1: anywhere) serving the XOR echo, dispatch on
 * its main thread. */
static inline struct t_svc t_svc_start(const char *domain, const struct rpal_chan_opts *o,
                                       int cpu, unsigned delay_one_in, unsigned delay_us)
{
    int kp[2], sp[2];
    REQUIRE(pipe(kp) == 0 && pipe(sp) == 0);
    struct t_svc sv = {fork(), kp[0], sp[1]};
    REQUIRE(sv.pid >= 0);
    if (sv.pid == 0) {
        close(kp[0]);
        close(sp[1]);
        rpal_domain *d;
        REQUIRE(rpal_domain_join(domain, NULL, &d) == 0);
        static struct t_svc_arg a;
        a.o = o ? *o : (struct rpal_chan_opts){0};
        a.cpu = cpu;
        a.delay_one_in = delay_one_in;
        a.delay_us = delay_us;
        REQUIRE(rpal_service_register(d, "svc", 0, NULL, NULL, &a.s) == 0);
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, t_svc_receiver, &a) == 0);
        t_key_send(kp[1], a.s);
        for (;;) {
            struct rpal_event ev[8];
            int n = rpal_domain_dispatch(d, ev, 8, 20);
            REQUIRE(n >= 0 || n == -ETIMEDOUT || n == -EINTR);
            struct pollfd pf = {sp[0], POLLIN, 0};
            if (poll(&pf, 1, 0) == 1)
                break;
        }
        atomic_store_explicit(&a.stop, 1, memory_order_release);
        pthread_join(th, NULL);
        rpal_service_unregister(a.s);
        rpal_domain_leave(d);
        _exit(t_failures ? 1 : 0);
    }
    close(kp[1]);
    close(sp[0]);
    return sv;
}

/* The key the service SV sent on its key pipe. */
static inline rpal_key t_svc_key(const struct t_svc *sv)
{
    return t_key_recv(sv->key_fd);
}

/* Stop the service; its exit code. */
static inline int t_svc_stop(struct t_svc *sv)
{
    close(sv->stop_fd);
    close(sv->key_fd);
    return t_wait(sv->pid);
}

/* In a caller process: join DOMAIN, request the service "svc" whose key
 * comes on KEY_FD, open a channel with options O. */
static inline rpal_chan *t_svc_open_key(int key_fd, const char *domain,
                                        const struct rpal_chan_opts *o, rpal_domain **dout)
{
    rpal_key k = t_key_recv(key_fd);
    rpal_domain *d;
    REQUIRE(rpal_domain_join(domain, NULL, &d) == 0);
    rpal_peer *p;
    REQUIRE(rpal_service_request(d, "svc", &k, 5000, &p) == 0);
    rpal_chan *c;
    int err;
    for (int tries = 0; (err = rpal_chan_open(p, o, 5000, &c)) == -EAGAIN && tries < 200; tries++)
        usleep(10000); /* the receiver thread may not exist yet */
    REQUIRE(err == 0);
    *dout = d;
    return c;
}

/* The same, for the service process SV of t_svc_start. */
static inline rpal_chan *t_svc_open(const struct t_svc *sv, const char *domain,
                                    const struct rpal_chan_opts *o, rpal_domain **dout)
{
    return t_svc_open_key(sv->key_fd, domain, o, dout);
}

/* An echo server in a child process, on an upgraded socketpair: the caller
 * joined DOMAIN as D first (both ends must be members before either
 * upgrades: rpal_uds_fdmap(3)). The child joins it too, upgrades its end,
 * waits in an rpal epoll set on CPU (-1: anywhere) and echoes what it reads,
 * calling PAUSE (if not NULL) before each echo, until the end of the
 * connection; nothing for 5 s fails it. Returns the child's pid; *FD is our
 * end, upgraded. */
static inline pid_t t_echo_fork(const char *domain, rpal_domain *d, int cpu,
                                void (*pause)(unsigned *seed), int *fd)
{
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        close(sv[0]);
        REQUIRE(t_pin(cpu) == 0);
        rpal_domain *cd;
        REQUIRE(rpal_domain_join(domain, NULL, &cd) == 0);
        REQUIRE(rpal_uds_fdmap(cd, sv[1], 5000) == 1);
        int ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = sv[1]};
        REQUIRE(rpal_epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &ev) == 0);
        unsigned seed = (unsigned)getpid();
        char b[64];
        for (;;) {
            struct epoll_event e[4];
            int k = rpal_epoll_wait(ep, e, 4, 5000);
            if (k <= 0) {
                fprintf(stderr, "echo server: nothing for 5 s: %d\n", k);
                _exit(1);
            }
            ssize_t r = rpal_read(sv[1], b, sizeof b);
            if (r == 0)
                break;
            REQUIRE(r > 0);
            if (pause)
                pause(&seed);
            REQUIRE(rpal_write(sv[1], b, (size_t)r) == r);
        }
        rpal_close(sv[1]);
        _exit(0);
    }
    close(sv[1]);
    REQUIRE(rpal_uds_fdmap(d, sv[0], 5000) == 1);
    *fd = sv[0];
    return p;
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
