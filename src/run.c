/* run: an unmodified program's Unix-socket connections moved to rpal.
 *
 * Built into librpal-run.so (never into librpal.a: it defines read, write
 * and the other calls a program makes), which `rpal run -- PROGRAM` puts in
 * LD_PRELOAD. Each call looks its descriptor up in a table of states; a
 * descriptor the table does not know (every pipe, file, TCP socket, and
 * every Unix socket not made by connect() or accept()) goes straight to the
 * next definition (libc's), so that the cost there is one load and one
 * indirect call.
 *
 * The upgrade point: a connected AF_UNIX stream socket made by connect(),
 * accept() or accept4() is a candidate; at its first I/O (or poll, select
 * or epoll that finds it readable) in the process that does it, the compat
 * layer's hello is exchanged if the kernel names a member of the domain at
 * the other end (SO_PEERCRED; the hello's own SCM_CREDENTIALS then say
 * which process answers, which holds after fork). Lazily, so that a server
 * that accepts and forks (PostgreSQL) upgrades in the child that talks. A
 * candidate never touched by a member stays a plain socket: no byte is
 * sent to a process that is not under rpal. See docs/run.md.
 */
#include "rpal.h"
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define RUN_FDS  65536 /* descriptors above are left to the kernel */
#define EXPORT   __attribute__((visibility("default")))
#define GATHER   65536 /* writev/sendmsg: gathered into one message up to this */
/* What the calls on an upgraded descriptor return when its connection went
 * back to the kernel socket meanwhile (the other end left the rings: the
 * downgrade, docs/run.md): the caller makes the kernel's call instead. */
#define DOWNED   (-2)

/* ST_HIDDEN: upgraded, closed by the program while a dup of it is open
 * (the connection lives on: the dup is an alias of this descriptor). */
enum { ST_PLAIN = 0, ST_CAND, ST_HALF, ST_UP, ST_ALIAS, ST_PARENT, ST_BROKEN, ST_HIDDEN };

static _Atomic unsigned char fdst[RUN_FDS];
static int alias_of[RUN_FDS];
static int nalias[RUN_FDS]; /* the open aliases of an upgraded descriptor */
/* Set while rpal's own code runs: its calls go to the kernel. */
static __thread int inside __attribute__((tls_model("initial-exec")));
static pthread_mutex_t join_lock = PTHREAD_MUTEX_INITIALIZER;
static rpal_domain *dom;
static int join_failed, log_fd = -1;
static int hello_ms = 10000, nb_hello_ms = 1;

/* ---- the next definitions (libc's) ---- */

/* The next definition of F (libc's), looked up once: calls can come
 * before our constructor ran (from another library's). The look at the
 * slot is inline: every call on a descriptor that is not ours goes
 * through it (a call to next_sym there was 2-3% of a 64-byte dd's CPU). */
#define REAL(f)                                                                             \
    (__extension__({                                                                        \
        void *p_ = __atomic_load_n((void **)&real_##f, __ATOMIC_ACQUIRE);                   \
        (__typeof__(real_##f))(__builtin_expect(p_ != NULL, 1)                              \
                                   ? p_                                                     \
                                   : next_sym((void **)&real_##f, #f));                     \
    }))
static void *next_sym(void **slot, const char *name)
{
    void *p;
    if (!(p = dlsym(RTLD_NEXT, name))) {
        static const char msg[] = "librpal-run: a libc call is missing\n";
        (void)!syscall(SYS_write, 2, msg, sizeof msg - 1);
        abort();
    }
    __atomic_store_n(slot, p, __ATOMIC_RELEASE);
    return p;
}

static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_readv)(int, const struct iovec *, int);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
static int (*real_recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
static int (*real_socket)(int, int, int);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_listen)(int, int);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_close)(int);
static int (*real_shutdown)(int, int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_poll)(struct pollfd *, nfds_t, int);
static int (*real_ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
static int (*real_select)(int, fd_set *, fd_set *, fd_set *, struct timeval *);
static int (*real_pselect)(int, fd_set *, fd_set *, fd_set *, const struct timespec *,
                           const sigset_t *);
static int (*real_epoll_ctl)(int, int, int, struct epoll_event *);
static int (*real_epoll_wait)(int, struct epoll_event *, int, int);
static int (*real_epoll_pwait)(int, struct epoll_event *, int, int, const sigset_t *);
static int (*real_epoll_pwait2)(int, struct epoll_event *, int, const struct timespec *,
                                const sigset_t *);
static ssize_t (*real_sendfile)(int, int, off_t *, size_t);
static ssize_t (*real_sendfile64)(int, int, off64_t *, size_t);
static ssize_t (*real_splice)(int, loff_t *, int, loff_t *, size_t, unsigned);
static int (*real_execve)(const char *, char *const[], char *const[]);
static int (*real_execv)(const char *, char *const[]);
static int (*real_execvp)(const char *, char *const[]);
static int (*real_execvpe)(const char *, char *const[], char *const[]);
static int (*real_fexecve)(int, char *const[], char *const[]);
static int (*real_posix_spawn_file_actions_adddup2)(posix_spawn_file_actions_t *, int, int);
static int (*real_posix_spawn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                               const posix_spawnattr_t *, char *const[], char *const[]);
static int (*real_posix_spawnp)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                                const posix_spawnattr_t *, char *const[], char *const[]);
static int (*real_system)(const char *);
static FILE *(*real_popen)(const char *, const char *);

/* ---- the table ---- */

static int state(int fd)
{
    return fd >= 0 && fd < RUN_FDS ? fdst[fd] : ST_PLAIN;
}

/* Above every descriptor the table ever held in a state but plain: the
 * scans of the table (fork, exec, aliases) stop there. */
static _Atomic int fd_top;

static void set_state(int fd, int st)
{
    if (fd < 0 || fd >= RUN_FDS)
        return;
    if (st != ST_PLAIN) {
        int top = atomic_load_explicit(&fd_top, memory_order_relaxed);
        while (fd >= top && !atomic_compare_exchange_weak(&fd_top, &top, fd + 1))
            ;
    }
    fdst[fd] = (unsigned char)st;
}

/* A state whose descriptor stands for a connection on the rings. */
static inline int on_rings(int st)
{
    return st == ST_UP || st == ST_ALIAS || st == ST_HIDDEN;
}

/* Ours to handle: known to the table, and not a call rpal itself makes. */
static inline int tracked(int fd)
{
    return fd >= 0 && fd < RUN_FDS && fdst[fd] != ST_PLAIN && !inside;
}

static void run_log(const char *what, int fd, long long a, long long b)
{
    if (log_fd < 0)
        return;
    char line[160];
    int n = snprintf(line, sizeof line, "%s pid=%d fd=%d %lld %lld\n", what, (int)getpid(), fd,
                     a, b);
    (void)!REAL(write)(log_fd, line, (size_t)n);
}

/* Which connections go back to the socket before a fork: those a program
 * the child execs would keep (no FD_CLOEXEC; the default), or all of them
 * (RPAL_RUN_FORK=all, for programs whose children use a connection
 * themselves). See docs/run.md, "fork". */
static int fork_all;
enum { LEAVE_EXEC, LEAVE_SPAWN, LEAVE_FORK };
static int leave_inherited(int how);

static void on_fork_prepare(void)
{
    (void)leave_inherited(LEAVE_FORK);
}

static void acts_fork_child(void);

static void on_fork_child(void)
{
    acts_fork_child();
    /* The rings of connections upgraded here are the parent's: the child
     * joins on its own (lazily) and keeps its inherited candidates. */
    for (int fd = 0; fd < fd_top; fd++) {
        int st = fdst[fd];
        nalias[fd] = 0;
        if (st == ST_UP || st == ST_HALF || st == ST_ALIAS)
            fdst[fd] = ST_PARENT;
        if (st == ST_HIDDEN) { /* the program closed it: so does the child */
            REAL(close)(fd);
            fdst[fd] = ST_PLAIN;
        }
    }
}

__attribute__((constructor)) static void run_init(void)
{
    const char *e = getenv("RPAL_RUN_LOG");
    if (e && *e)
        log_fd = open(e, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if ((e = getenv("RPAL_RUN_HELLO_MS")) && atoi(e) > 0)
        hello_ms = atoi(e);
    fork_all = (e = getenv("RPAL_RUN_FORK")) && !strcmp(e, "all");
    pthread_atfork(on_fork_prepare, NULL, on_fork_child);
    rpal__cx_nb_track(); /* F_SETFL and FIONBIO pass here: nb_forget() */
}

/* The domain, joined at the first candidate (and again in a forked child,
 * whose parent's membership it does not hold). NULL: not a member. */
static rpal_domain *joined(void)
{
    rpal_domain *d = __atomic_load_n(&dom, __ATOMIC_ACQUIRE);
    if (d && rpal__dom_check(d) == 0)
        return d;
    pthread_mutex_lock(&join_lock);
    if (dom && rpal__dom_check(dom) < 0) {
        dom = NULL; /* a forked child */
        join_failed = 0;
    }
    if (!dom && !join_failed) {
        const char *name = getenv("RPAL_RUN_DOMAIN");
        inside++;
        int err = rpal_domain_join(name && *name ? name : NULL, NULL, &d);
        inside--;
        if (err < 0) {
            join_failed = 1;
            run_log("nojoin", -1, err, 0);
        } else {
            __atomic_store_n(&dom, d, __ATOMIC_RELEASE);
            run_log("join", -1, 0, 0);
        }
    }
    d = dom;
    pthread_mutex_unlock(&join_lock);
    return d;
}

static int nonblocking(int fd)
{
    int fl = REAL(fcntl)(fd, F_GETFL);
    return fl >= 0 && (fl & O_NONBLOCK);
}

/* FD's connection (FD upgraded, or hidden) went back to the kernel socket
 * and holds nothing more in user space: FD and its aliases are plain. */
static void down_plain(int t)
{
    int st = fdst[t];
    __atomic_store_n(&nalias[t], 0, __ATOMIC_SEQ_CST);
    for (int a = 0; a < fd_top; a++)
        if (fdst[a] == ST_ALIAS && alias_of[a] == t)
            fdst[a] = ST_PLAIN;
    fdst[t] = ST_PLAIN;
    if (st == ST_HIDDEN)
        REAL(close)(t); /* closed by the program: its aliases hold the socket */
    run_log("kernel", t, 0, 0);
}

/* Connections the other end moved back to the socket (compat took its
 * word at one of our calls): their descriptors are plain once compat
 * holds nothing more of them. Cheap unless one did. */
static void down_sync(void)
{
    static _Atomic unsigned seen;
    unsigned g = atomic_load_explicit(&rpal__cx_down_gen, memory_order_acquire);
    if (atomic_exchange(&seen, g) == g)
        return;
    for (int fd = 0; fd < fd_top; fd++) {
        int st = fdst[fd];
        if ((st == ST_UP || st == ST_HIDDEN) && rpal__cx_state(fd) == 0)
            down_plain(fd);
    }
}

/* Take a candidate or a half-done upgrade one step further; the state it
 * is in then. WAIT: how long the caller may wait for the other end's hello:
 * W_NONE (poll: not at all), W_SHORT (a non-blocking call: then EAGAIN),
 * W_LONG (a blocking call: RPAL_RUN_HELLO_MS). */
enum { W_NONE, W_SHORT, W_LONG };
static int settle(int fd, int wait)
{
    int st = state(fd);
    if (st == ST_UP || st == ST_ALIAS)
        down_sync();
    st = state(fd);
    if (st == ST_ALIAS)
        return state(alias_of[fd]) == ST_UP || state(alias_of[fd]) == ST_HIDDEN ? ST_UP : ST_BROKEN;
    if (st != ST_CAND && st != ST_HALF)
        return st;
    rpal_domain *d = joined();
    inside++;
    int r = 1;
    if (st == ST_CAND) {
        r = d ? rpal__cx_fdmap_begin(d, fd, hello_ms) : 0;
        st = r == 1 ? ST_HALF : r == 0 ? ST_PLAIN : ST_BROKEN;
    }
    if (st == ST_HALF) {
        r = rpal__cx_fdmap_end(fd, wait == W_LONG ? hello_ms : wait == W_SHORT ? nb_hello_ms : 0);
        st = r == 1 ? ST_UP : r == -EAGAIN ? ST_HALF : ST_BROKEN;
    }
    inside--;
    set_state(fd, st);
    if (st != ST_HALF)
        run_log(st == ST_UP ? "up" : st == ST_PLAIN ? "plain" : "broken", fd, r, 0);
    return st;
}

/* The descriptor an alias stands for. */
static int target(int fd)
{
    return state(fd) == ST_ALIAS ? alias_of[fd] : fd;
}

static ssize_t fail(int err)
{
    errno = err;
    return -1;
}

/* The errno for a descriptor that cannot carry data in its state, or 0. */
static int state_err(int st, int nb)
{
    if (st == ST_HALF)
        return nb ? EAGAIN : ETIMEDOUT;
    if (st == ST_BROKEN)
        return ECONNRESET;
    if (st == ST_PARENT)
        return EIO; /* upgraded by the parent before fork: see docs/run.md */
    if (st == ST_HIDDEN)
        return EBADF; /* closed, as far as the program knows */
    return 0;
}

/* Settle FD for a call that may wait for the other end's hello unless NB
 * or O_NONBLOCK: ST_PLAIN (the kernel's), ST_UP, or -1 with errno set for
 * a descriptor that cannot carry data in its state. */
static int settle_io(int fd, int nb)
{
    nb = nb || nonblocking(fd);
    int st = settle(fd, nb ? W_SHORT : W_LONG);
    int err = state_err(st, nb);
    return err ? (int)fail(err) : st;
}

/* ---- reading ---- */

/* Wait until FD (upgraded) is readable (or writable if OUT), or the end,
 * for as long as the socket's own blocking calls would (SO_RCVTIMEO,
 * SO_SNDTIMEO): -1 with EAGAIN once that is over, as theirs. */
static int run_poll(struct pollfd *fds, nfds_t n, int64_t timeout_ns, const sigset_t *mask,
                    int restarts);
static int wait_one(int fd, int out)
{
    struct pollfd p = {fd, (short)(out ? POLLOUT : POLLIN), 0};
    uint64_t t = rpal__cx_sock_timeout(fd, out);
    /* A read or write: an SA_RESTART handler restarts it, unless the
     * socket has a timeout (the kernel's sock_intr_errno). */
    int r = run_poll(&p, 1, t == UINT64_MAX ? -1 : (int64_t)t, NULL, t == UINT64_MAX);
    return r == 0 ? (int)fail(EAGAIN) : r;
}

/* Up to LEN bytes of FD's ring (upgraded) copied without consuming them,
 * waiting for the first unless NB or O_NONBLOCK; 0: the end. MSG_PEEK,
 * and sendfile/splice, which consume only what they could pass on. */
static ssize_t ring_look(int fd, void *buf, size_t len, int nb)
{
    for (;;) {
        inside++;
        ssize_t n = rpal__cx_peek(fd, buf, len);
        int ev = n == 0 ? rpal__cx_poll(fd, POLLIN, 0) : 0;
        inside--;
        if (n == -EXDEV || ev == -ENOENT)
            return DOWNED;
        if (n != 0 || (ev & POLLHUP) || len == 0)
            return n < 0 ? fail((int)-n) : n;
        if (nb || nonblocking(fd))
            return fail(EAGAIN);
        if (wait_one(fd, 0) < 0)
            return -1;
    }
}

static ssize_t up_read(int fd, void *buf, size_t len, int flags)
{
    int nb = (flags & MSG_DONTWAIT) != 0;
    if (flags & MSG_PEEK)
        return ring_look(fd, buf, len, nb);
    size_t got = 0;
    do {
        if (nb || (got && !(flags & MSG_WAITALL))) {
            inside++;
            int ev = rpal__cx_poll(fd, POLLIN, 0);
            inside--;
            if (ev == -ENOENT)
                return got ? (ssize_t)got : DOWNED;
            if (!(ev & (POLLIN | POLLHUP)))
                return got ? (ssize_t)got : fail(EAGAIN);
        }
        inside++;
        ssize_t n = rpal__cx_read(fd, (char *)buf + got, len - got);
        inside--;
        if (n == -EXDEV && got && (flags & MSG_WAITALL)) {
            n = REAL(recv)(fd, (char *)buf + got, len - got, flags); /* the rest: the socket's */
            return n > 0 ? (ssize_t)got + n : (ssize_t)got;
        }
        if (n == -EXDEV)
            return got ? (ssize_t)got : DOWNED;
        if (n < 0)
            return got ? (ssize_t)got : fail((int)-n);
        if (n == 0)
            break;
        got += (size_t)n;
    } while ((flags & MSG_WAITALL) && got < len);
    return (ssize_t)got;
}

/* recvmsg's, while it reads through run_readv: the connection went back
 * to the socket before a byte was read, so recvmsg makes the kernel's
 * call itself, with the control data that may come now. */
static __thread struct msghdr *redo_msg __attribute__((tls_model("initial-exec")));
static __thread int redo_msg_due __attribute__((tls_model("initial-exec")));

/* The kernel's recv, FD's connection being back on the socket. */
static ssize_t recv_redo(int fd, void *buf, size_t len, int flags)
{
    down_sync();
    if (redo_msg) {
        redo_msg_due = 1;
        return fail(EXDEV);
    }
    return REAL(recv)(fd, buf, len, flags);
}

static ssize_t run_recv(int fd, void *buf, size_t len, int flags)
{
    ssize_t n;
    if (state(fd) == ST_UP) { /* O_NONBLOCK is compat's to ask, when it would wait */
        n = up_read(fd, buf, len, flags);
        return n == DOWNED ? recv_redo(fd, buf, len, flags) : n;
    }
    int st = settle_io(fd, flags & MSG_DONTWAIT);
    if (st < 0)
        return -1;
    if (st == ST_PLAIN)
        return REAL(recv)(fd, buf, len, flags);
    n = up_read(target(fd), buf, len, flags);
    return n == DOWNED ? recv_redo(fd, buf, len, flags) : n;
}

EXPORT ssize_t read(int fd, void *buf, size_t len)
{
    if (!tracked(fd))
        return REAL(read)(fd, buf, len);
    return run_recv(fd, buf, len, 0);
}

EXPORT ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    return tracked(fd) ? run_recv(fd, buf, len, flags) : REAL(recv)(fd, buf, len, flags);
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *sa,
                        socklen_t *salen)
{
    if (!tracked(fd) || (sa && salen && settle(fd, W_NONE) == ST_PLAIN))
        return REAL(recvfrom)(fd, buf, len, flags, sa, salen);
    ssize_t n = run_recv(fd, buf, len, flags);
    if (n >= 0 && sa && salen) {
        /* What the kernel says of a connected Unix stream's sender: an
         * unnamed address. */
        if (*salen >= sizeof(sa_family_t))
            sa->sa_family = AF_UNIX;
        *salen = sizeof(sa_family_t);
    }
    return n;
}

/* Scatter into IOV: the first element may wait, the rest take only what
 * is already there (as the kernel fills what it has). */
static ssize_t run_readv(int fd, const struct iovec *iov, int cnt, int flags)
{
    ssize_t got = 0;
    for (int i = 0; i < cnt; i++) {
        if (!iov[i].iov_len)
            continue;
        ssize_t n = run_recv(fd, iov[i].iov_base, iov[i].iov_len,
                             got && !(flags & MSG_WAITALL) ? flags | MSG_DONTWAIT : flags);
        if (n < 0)
            return got ? got : -1;
        got += n;
        if ((size_t)n < iov[i].iov_len)
            break;
    }
    return got;
}

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
    if (!tracked(fd) || settle(fd, W_NONE) == ST_PLAIN)
        return REAL(readv)(fd, iov, cnt);
    return run_readv(fd, iov, cnt, 0);
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *m, int flags)
{
    if (!tracked(fd) || settle(fd, W_NONE) == ST_PLAIN)
        return REAL(recvmsg)(fd, m, flags);
    redo_msg = m;
    redo_msg_due = 0;
    ssize_t n = run_readv(fd, m->msg_iov, (int)m->msg_iovlen, flags);
    redo_msg = NULL;
    if (n < 0 && redo_msg_due)
        return REAL(recvmsg)(fd, m, flags);
    if (n >= 0) {
        m->msg_controllen = 0;
        m->msg_flags = 0;
        if (m->msg_name && m->msg_namelen >= sizeof(sa_family_t))
            ((struct sockaddr *)m->msg_name)->sa_family = AF_UNIX;
        if (m->msg_name)
            m->msg_namelen = sizeof(sa_family_t);
    }
    return n;
}

/* ---- writing ---- */

/* A buffer of GATHER bytes for this thread, made at its first use. */
static char *scratch(void)
{
    static __thread char *buf __attribute__((tls_model("initial-exec")));
    if (!buf)
        buf = malloc(GATHER);
    return buf;
}

static ssize_t up_write(int fd, const void *buf, size_t len, int flags)
{
    if (flags & MSG_DONTWAIT) {
        inside++;
        int ev = rpal__cx_poll(fd, POLLOUT, 0);
        inside--;
        if (ev == -ENOENT)
            return DOWNED;
        if (!(ev & (POLLOUT | POLLHUP)))
            return fail(EAGAIN);
    }
    inside++;
    ssize_t n = rpal__cx_write(fd, buf, len);
    inside--;
    if (n == -EXDEV)
        return DOWNED;
    if (n == -EPIPE && !(flags & MSG_NOSIGNAL))
        raise(SIGPIPE); /* as the kernel does, to this thread */
    return n < 0 ? fail((int)-n) : n;
}

static ssize_t run_send(int fd, const void *buf, size_t len, int flags)
{
    ssize_t n;
    if (state(fd) == ST_UP) {
        n = up_write(fd, buf, len, flags);
    } else {
        int st = settle_io(fd, flags & MSG_DONTWAIT);
        if (st < 0)
            return -1;
        if (st == ST_PLAIN)
            return REAL(send)(fd, buf, len, flags);
        n = up_write(target(fd), buf, len, flags);
    }
    if (n != DOWNED)
        return n;
    down_sync(); /* back on the socket: the kernel's */
    return REAL(send)(fd, buf, len, flags);
}

EXPORT ssize_t write(int fd, const void *buf, size_t len)
{
    if (!tracked(fd))
        return REAL(write)(fd, buf, len);
    return run_send(fd, buf, len, 0);
}

EXPORT ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    return tracked(fd) ? run_send(fd, buf, len, flags) : REAL(send)(fd, buf, len, flags);
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *sa,
                      socklen_t salen)
{
    if (!tracked(fd) || settle(fd, W_NONE) == ST_PLAIN)
        return REAL(sendto)(fd, buf, len, flags, sa, salen);
    if (sa && salen)
        return fail(EISCONN); /* a connected stream, as the kernel says */
    return run_send(fd, buf, len, flags);
}

/* Gather IOV into one message where it is small (one entry in the ring),
 * else one message per element. */
static ssize_t run_writev(int fd, const struct iovec *iov, int cnt, int flags)
{
    size_t total = 0;
    for (int i = 0; i < cnt; i++)
        total += iov[i].iov_len;
    if (total <= GATHER) {
        char *b = scratch();
        if (!b)
            return fail(ENOMEM);
        size_t off = 0;
        for (int i = 0; i < cnt; i++) {
            memcpy(b + off, iov[i].iov_base, iov[i].iov_len);
            off += iov[i].iov_len;
        }
        return run_send(fd, b, total, flags);
    }
    ssize_t done = 0;
    for (int i = 0; i < cnt; i++) {
        if (!iov[i].iov_len)
            continue;
        ssize_t n = run_send(fd, iov[i].iov_base, iov[i].iov_len,
                             done ? flags | MSG_DONTWAIT | MSG_NOSIGNAL : flags);
        if (n < 0)
            return done ? done : -1;
        done += n;
        if ((size_t)n < iov[i].iov_len)
            break;
    }
    return done;
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    if (!tracked(fd) || settle(fd, W_NONE) == ST_PLAIN)
        return REAL(writev)(fd, iov, cnt);
    return run_writev(fd, iov, cnt, 0);
}

/* FD's connection (FD upgraded, an alias of one, or half-way there) goes
 * back to the kernel socket (the downgrade, docs/run.md), so that another
 * process, or the program an exec starts, reads and writes the socket: 0,
 * FD and its aliases plain; or -1 with errno (ETIMEDOUT: the other end did
 * not answer within RPAL_RUN_HELLO_MS). */
static int run_leave(int fd)
{
    int st = state(fd);
    if (st == ST_HALF) /* its hello would reach the receiver */
        st = settle(fd, W_LONG);
    if (st == ST_ALIAS)
        st = settle(fd, W_NONE);
    if (st == ST_HALF)
        return (int)fail(ETIMEDOUT);
    if (st != ST_UP)
        return 0; /* plain, or broken: the kernel's either way */
    int t = target(fd);
    inside++;
    int r = rpal__cx_leave(t, hello_ms);
    int left = rpal__cx_state(t);
    inside--;
    run_log("down", t, r, left);
    if (r < 0 && r != -ENOENT)
        return (int)fail(-r);
    if (left == 0)
        down_plain(t);
    return 0;
}

/* M passes (SCM_RIGHTS) descriptors: each whose connection is on the rings
 * goes back to the kernel socket first (the receiver reads the socket).
 * 0, or the errno for sendmsg. */
static int passes_ring(const struct msghdr *m)
{
    if (!m->msg_control)
        return 0; /* the kernel's EFAULT */
    const char *end = (const char *)m->msg_control + m->msg_controllen;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(m); h; h = CMSG_NXTHDR((struct msghdr *)m, h)) {
        /* The header as the kernel bounds it: within the control buffer. */
        size_t len = h->cmsg_len < (size_t)(end - (const char *)h) ? h->cmsg_len
                                                                    : (size_t)(end - (const char *)h);
        if (len < CMSG_LEN(0))
            break;
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        for (size_t i = 0; i < (len - CMSG_LEN(0)) / sizeof(int); i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(h) + i * sizeof fd, sizeof fd);
            int st = tracked(fd) ? state(fd) : ST_PLAIN;
            if (st == ST_HIDDEN)
                return EBADF; /* closed, as far as the program knows */
            if (st == ST_PARENT)
                return EOPNOTSUPP; /* the rings are the parent's: docs/run.md */
            if ((st == ST_HALF || st == ST_UP || st == ST_ALIAS) && run_leave(fd) < 0)
                return errno;
        }
    }
    return 0;
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *m, int flags)
{
    int err = m && m->msg_controllen && !inside ? passes_ring(m) : 0;
    if (err)
        return fail(err);
    if (!tracked(fd) || settle(fd, W_NONE) == ST_PLAIN)
        return REAL(sendmsg)(fd, m, flags);
    if (m->msg_controllen) {
        /* Control data cannot travel in a ring: the connection goes back
         * to the socket, which carries it. */
        int st = state(fd);
        if (st != ST_UP && st != ST_ALIAS && st != ST_HALF)
            return fail(st == ST_HIDDEN ? EBADF : st == ST_BROKEN ? ECONNRESET : EOPNOTSUPP);
        if (run_leave(fd) < 0)
            return -1;
        return REAL(sendmsg)(fd, m, flags);
    }
    if (m->msg_name && m->msg_namelen)
        return fail(EISCONN);
    return run_writev(fd, m->msg_iov, (int)m->msg_iovlen, flags);
}

/* sendmmsg and recvmmsg on an upgraded descriptor: one sendmsg or
 * recvmsg (above) per message, as the kernel does for a stream socket: the
 * count of those done, or -1 with errno if the first fails. recvmmsg:
 * MSG_WAITFORONE makes every message after the first non-blocking; the
 * timeout, as the kernel's, is looked at only after each message; an end
 * of the stream ends the batch (the kernel would go on counting empty
 * messages). */
EXPORT int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags)
{
    if (!tracked(fd) || settle(fd, W_NONE) == ST_PLAIN)
        return REAL(sendmmsg)(fd, v, n, flags);
    unsigned int i = 0;
    for (; i < n && i < UIO_MAXIOV; i++) {
        ssize_t r = sendmsg(fd, &v[i].msg_hdr, flags);
        if (r < 0)
            return i ? (int)i : -1;
        v[i].msg_len = (unsigned int)r;
    }
    return (int)i;
}

EXPORT int recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags, struct timespec *tmo)
{
    if (!tracked(fd) || settle(fd, W_NONE) == ST_PLAIN)
        return REAL(recvmmsg)(fd, v, n, flags, tmo);
    struct timespec t0;
    if (tmo)
        clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned int i = 0;
    for (; i < n && i < UIO_MAXIOV; i++) {
        int f = (flags & ~MSG_WAITFORONE) | (i && (flags & MSG_WAITFORONE) ? MSG_DONTWAIT : 0);
        ssize_t r = recvmsg(fd, &v[i].msg_hdr, f);
        if (r < 0)
            return i ? (int)i : -1;
        v[i].msg_len = (unsigned int)r;
        if (r == 0) {
            i++;
            break;
        }
        if (tmo) {
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            int64_t used = (int64_t)(t.tv_sec - t0.tv_sec) * 1000000000 + (t.tv_nsec - t0.tv_nsec);
            if (used >= (int64_t)tmo->tv_sec * 1000000000 + tmo->tv_nsec) {
                i++;
                break;
            }
        }
    }
    return (int)i;
}

/* ---- copying between descriptors: sendfile, splice ---- */

/* The kernel would move the socket's bytes, which are only wake-ups once
 * the connection is on the rings: the bytes go through a buffer instead,
 * read and written with our calls for the upgraded end, the kernel's for
 * the other. sendfile from a socket, splice between two sockets, tee and
 * copy_file_range on one are the kernel's EINVAL whether it is upgraded or
 * not, so they are not interposed. See docs/run.md. */

static int is_pipe(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

/* Consume the N bytes that ring_look found at FD (they are there). */
static void ring_drop(int fd, char *buf, size_t n)
{
    inside++;
    for (size_t got = 0; got < n;) {
        ssize_t r = rpal_read(fd, buf, n - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    inside--;
}

/* Up to LEN bytes from IN (read, or pread at *OFF) into the ring of OUT
 * (upgraded), room first so that nothing taken from IN waits for it. As
 * the kernel's: a blocking OUT takes all of LEN unless IN runs short; a
 * pipe IN is waited for only before the first bytes; NB: SPLICE_F_NONBLOCK. */
static ssize_t copy_to_ring(int out, int in, off64_t *off, size_t len, int from_pipe, int nb)
{
    char *b = scratch();
    if (!b)
        return fail(ENOMEM);
    size_t done = 0;
    while (done < len) {
        inside++;
        int ev = rpal__cx_poll(out, POLLOUT, 0);
        inside--;
        if (ev == -ENOENT)
            return done ? (ssize_t)done : DOWNED;
        if (!(ev & (POLLOUT | POLLHUP))) {
            if (nb || nonblocking(out))
                break;
            if (wait_one(out, 1) < 0)
                return done ? (ssize_t)done : -1;
            continue;
        }
        struct pollfd p = {in, POLLIN, 0};
        if (from_pipe && (done || nb) &&
            (REAL(poll)(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR))))
            break;
        size_t want = len - done < GATHER ? len - done : GATHER;
        ssize_t n = off ? pread64(in, b, want, *off) : REAL(read)(in, b, want);
        if (n <= 0)
            return done ? (ssize_t)done : n;
        ssize_t w = up_write(out, b, (size_t)n, 0);
        if (w == DOWNED) /* back on the socket: the rest is the kernel's */
            w = REAL(send)(out, b, (size_t)n, 0);
        if (w < n && !off && !from_pipe) /* give the file back what did not go */
            lseek64(in, -(off64_t)(n - (w > 0 ? w : 0)), SEEK_CUR);
        if (w < 0)
            return done ? (ssize_t)done : -1;
        done += (size_t)w;
        if (off)
            *off += w;
        if (w < n || (size_t)n < want)
            break;
    }
    return done || !len ? (ssize_t)done : fail(EAGAIN);
}

/* Up to LEN bytes of IN's ring (upgraded) into the pipe OUT, consuming
 * only what the pipe took. The pipe takes PIPE_BUF bytes at a time, each
 * when it has a free slot (which holds them whole): as the kernel's
 * splice, it waits (unless NB) for room for the first only, and a thread
 * that drains the pipe itself after the call never waits for itself. */
static ssize_t splice_from_ring(int in, int out, size_t len, int nb)
{
    char *b = scratch();
    if (!b)
        return fail(ENOMEM);
    ssize_t n = ring_look(in, b, len < GATHER ? len : GATHER, nb);
    if (n <= 0)
        return n;
    size_t w = 0;
    while (w < (size_t)n) {
        struct pollfd p = {out, POLLOUT, 0};
        int r = REAL(poll)(&p, 1, w || nb ? 0 : -1);
        ssize_t k = r > 0 ? REAL(write)(out, b + w, (size_t)n - w < PIPE_BUF ? (size_t)n - w : PIPE_BUF)
                          : r == 0 ? fail(EAGAIN) : -1;
        if (k < 0) {
            if (!w)
                return -1;
            break;
        }
        w += (size_t)k;
    }
    ring_drop(in, b, w);
    return (ssize_t)w;
}

static ssize_t run_sendfile(int out, int in, off64_t *off, size_t count)
{
    int st = settle_io(out, 0);
    if (st < 0)
        return -1;
    if (st == ST_PLAIN)
        return REAL(sendfile64)(out, in, off, count);
    /* The kernel's checks of IN (a file, readable; an offset where it
     * seeks) and of OUT: with a count of 0 it moves nothing. */
    if (REAL(sendfile64)(out, in, off, 0) < 0)
        return -1;
    if (count > 0x7ffff000)
        count = 0x7ffff000; /* the kernel's MAX_RW_COUNT */
    ssize_t n = copy_to_ring(target(out), in, off, count, 0, 0);
    if (n != DOWNED)
        return n;
    down_sync();
    return REAL(sendfile64)(out, in, off, count);
}

EXPORT ssize_t sendfile64(int out, int in, off64_t *off, size_t count)
{
    return tracked(out) ? run_sendfile(out, in, off, count) : REAL(sendfile64)(out, in, off, count);
}

EXPORT ssize_t sendfile(int out, int in, off_t *off, size_t count)
{
    if (!tracked(out))
        return REAL(sendfile)(out, in, off, count);
    off64_t o = off ? *off : 0;
    ssize_t n = run_sendfile(out, in, off ? &o : NULL, count);
    if (off)
        *off = (off_t)o;
    return n;
}


EXPORT ssize_t splice(int in, loff_t *offin, int out, loff_t *offout, size_t len, unsigned flags)
{
    if (!len || (!tracked(in) && !tracked(out)))
        return REAL(splice)(in, offin, out, offout, len, flags);
    /* The pipe's O_NONBLOCK makes the whole call non-blocking, as in the
     * kernel's splice. */
    int nb = (flags & SPLICE_F_NONBLOCK) || nonblocking(tracked(in) ? out : in);
    int si = tracked(in) ? settle_io(in, nb) : ST_PLAIN;
    int so = si >= 0 && tracked(out) ? settle_io(out, nb) : ST_PLAIN;
    if (si < 0 || so < 0)
        return -1;
    if (si == ST_PLAIN && so == ST_PLAIN)
        return REAL(splice)(in, offin, out, offout, len, flags);
    /* The kernel's rules: one end a pipe; no offset on a socket (EINVAL)
     * nor on a pipe (ESPIPE). */
    int from_ring = si != ST_PLAIN, other = from_ring ? out : in;
    if ((flags & ~0xfu) || (si != ST_PLAIN && so != ST_PLAIN) || !is_pipe(other) ||
        (from_ring ? offin : offout))
        return fail(EINVAL);
    if (from_ring ? offout : offin)
        return fail(ESPIPE);
    ssize_t n = from_ring ? splice_from_ring(target(in), out, len, nb)
                          : copy_to_ring(target(out), in, NULL, len, 1, nb);
    if (n != DOWNED)
        return n;
    down_sync();
    return REAL(splice)(in, offin, out, offout, len, flags);
}

/* ---- making and ending connections ---- */

static int unix_stream(int fd)
{
    int type = 0;
    socklen_t l = sizeof type;
    struct sockaddr_un sa;
    socklen_t sl = sizeof sa;
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) == 0 && type == SOCK_STREAM &&
           getsockname(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_family == AF_UNIX;
}

EXPORT int socket(int domain, int type, int proto)
{
    int fd = REAL(socket)(domain, type, proto);
    if (fd >= 0 && !inside)
        set_state(fd, ST_PLAIN); /* a number reused after a close we did not see */
    return fd;
}

EXPORT int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    if (inside || !sa || sa->sa_family != AF_UNIX || !unix_stream(fd))
        return REAL(connect)(fd, sa, len);
    /* A member before the other end looks us up at its first I/O. */
    joined();
    int r = REAL(connect)(fd, sa, len);
    int e = errno;
    if (r == 0)
        set_state(fd, ST_CAND);
    errno = e;
    return r;
}

EXPORT int listen(int fd, int backlog)
{
    /* A client looks the listener's maker up (SO_PEERCRED): be a member. */
    if (!inside && unix_stream(fd))
        joined();
    return REAL(listen)(fd, backlog);
}

static int accepted(int fd)
{
    if (fd >= 0 && !inside) {
        int e = errno;
        set_state(fd, unix_stream(fd) && joined() ? ST_CAND : ST_PLAIN);
        errno = e;
    }
    return fd;
}

EXPORT int accept(int fd, struct sockaddr *sa, socklen_t *len)
{
    return accepted(REAL(accept)(fd, sa, len));
}

EXPORT int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
    return accepted(REAL(accept4)(fd, sa, len, flags));
}

/* A descriptor the program cannot use: closed while a dup was open. */
static int hidden(int fd)
{
    return tracked(fd) && state(fd) == ST_HIDDEN;
}

/* End the upgraded connection at FD (the other end reads the end); its
 * aliases, if a dup2 onto FD ends it under them, are broken. */
static int up_close(int fd)
{
    if (__atomic_exchange_n(&nalias[fd], 0, __ATOMIC_SEQ_CST) > 0)
        for (int a = 0; a < fd_top; a++)
            if (fdst[a] == ST_ALIAS && alias_of[a] == fd)
                fdst[a] = ST_BROKEN;
    struct rpal_stats s;
    if (rpal_fd_stats(fd, &s) == 0)
        run_log("close", fd, (long long)s.msgs_in, (long long)s.msgs_out);
    return rpal_close(fd);
}

/* Close the upgraded FD while aliases of it are open: as the kernel keeps
 * a socket until its last descriptor, the connection lives on; the number
 * stays taken (close-on-exec) until the last alias closes. Whoever turns
 * ST_HIDDEN into ST_PLAIN ends it: this call if the aliases went
 * meanwhile, or the close of the last one (seq_cst: one of the two sees
 * the other's store). */
static int up_hide(int fd)
{
    REAL(fcntl)(fd, F_SETFD, FD_CLOEXEC);
    fdst[fd] = ST_HIDDEN;
    unsigned char h = ST_HIDDEN;
    if (__atomic_load_n(&nalias[fd], __ATOMIC_SEQ_CST) == 0 &&
        atomic_compare_exchange_strong(&fdst[fd], &h, ST_PLAIN))
        return up_close(fd);
    return 0;
}

/* An alias of T closed: the last one ends T if the program closed it. */
static void alias_gone(int t)
{
    unsigned char h = ST_HIDDEN;
    if (__atomic_sub_fetch(&nalias[t], 1, __ATOMIC_SEQ_CST) == 0 &&
        atomic_compare_exchange_strong(&fdst[t], &h, ST_PLAIN))
        up_close(t);
}

/* Forget FD before its number can be reused; the kernel's close is the
 * caller's (REAL close or dup2's implicit one), except for an upgraded
 * connection, which rpal_close ends (the other end reads the end), or
 * hides while a dup of it is open. */
static int run_close(int fd, int kernel)
{
    int st = state(fd);
    if (st == ST_HIDDEN && kernel)
        return (int)fail(EBADF);
    inside++;
    int r = 0;
    if (st == ST_UP && kernel && __atomic_load_n(&nalias[fd], __ATOMIC_SEQ_CST) > 0) {
        r = up_hide(fd);
    } else if (st == ST_UP || st == ST_HIDDEN) {
        unsigned char was = (unsigned char)st; /* a hidden one: unless its last alias ends it now */
        r = atomic_compare_exchange_strong(&fdst[fd], &was, ST_PLAIN) ? up_close(fd) : 0;
        if (!kernel)
            r = 0;
    } else {
        set_state(fd, ST_PLAIN);
        if (st == ST_HALF)
            rpal__cx_fdmap_drop(fd);
        r = kernel ? REAL(close)(fd) : 0;
        r = r < 0 ? -errno : 0;
        if (st == ST_ALIAS)
            alias_gone(alias_of[fd]);
    }
    inside--;
    return r < 0 ? (int)fail(-r) : 0;
}

EXPORT int close(int fd)
{
    return tracked(fd) ? run_close(fd, 1) : REAL(close)(fd);
}

EXPORT int shutdown(int fd, int how)
{
    if (hidden(fd))
        return (int)fail(EBADF);
    if (!tracked(fd) || settle(fd, W_NONE) != ST_UP)
        return REAL(shutdown)(fd, how);
    inside++;
    int r = rpal__cx_shutdown(target(fd), how);
    inside--;
    return r < 0 ? (int)fail(-r) : 0;
}

/* NEW is a second descriptor of OLD's connection. A candidate is settled
 * first (two descriptors must not each send a hello). */
static int dup_of(int old, int nfd)
{
    if (nfd < 0 || inside)
        return nfd;
    int st = settle(old, W_NONE);
    if (st == ST_UP || st == ST_ALIAS) {
        alias_of[nfd] = target(old);
        __atomic_add_fetch(&nalias[alias_of[nfd]], 1, __ATOMIC_SEQ_CST);
        set_state(nfd, ST_ALIAS);
    } else {
        /* A copy of a connection the parent upgraded is the parent's too. */
        set_state(nfd, st == ST_PLAIN ? ST_PLAIN : st == ST_PARENT ? ST_PARENT : ST_BROKEN);
    }
    return nfd;
}

EXPORT int dup(int fd)
{
    if (hidden(fd))
        return (int)fail(EBADF);
    return tracked(fd) ? dup_of(fd, REAL(dup)(fd)) : REAL(dup)(fd);
}

EXPORT int dup3(int fd, int nfd, int flags)
{
    if (inside || (!tracked(fd) && !tracked(nfd)))
        return REAL(dup3)(fd, nfd, flags);
    if (hidden(fd))
        return (int)fail(EBADF);
    if (fd != nfd && tracked(nfd))
        run_close(nfd, 0);
    return dup_of(fd, REAL(dup3)(fd, nfd, flags));
}

EXPORT int dup2(int fd, int nfd)
{
    if (inside || (!tracked(fd) && !tracked(nfd)) || fd == nfd)
        return REAL(dup2)(fd, nfd);
    if (hidden(fd))
        return (int)fail(EBADF);
    if (tracked(nfd))
        run_close(nfd, 0);
    return dup_of(fd, REAL(dup2)(fd, nfd));
}

/* FD's O_NONBLOCK changed (it may be a dup of a connection's socket, which
 * shares it): the connection asks again at its next wait. */
static void nb_forget(int fd)
{
    if (!tracked(fd))
        return;
    int st = state(fd);
    if (on_rings(st)) {
        inside++;
        rpal__cx_nb_forget(target(fd));
        inside--;
    }
}

static int run_fcntl(int (*f)(int, int, ...), int fd, int cmd, void *arg)
{
    if (hidden(fd))
        return (int)fail(EBADF);
    int r = f(fd, cmd, arg);
    if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && tracked(fd))
        return dup_of(fd, r);
    if (cmd == F_SETFL)
        nb_forget(fd);
    return r;
}

EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return run_fcntl(REAL(fcntl), fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return run_fcntl(REAL(fcntl64), fd, cmd, arg);
}

EXPORT int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (hidden(fd))
        return (int)fail(EBADF);
    if (req == FIONBIO) {
        int r = REAL(ioctl)(fd, req, arg);
        nb_forget(fd);
        return r;
    }
    if (req != FIONREAD || !tracked(fd) || settle(fd, W_NONE) != ST_UP)
        return REAL(ioctl)(fd, req, arg);
    /* What a read would find now (a hint, as on the socket: at most a
     * buffer's worth is counted). */
    char *b = scratch();
    if (!b)
        return (int)fail(ENOMEM);
    inside++;
    ssize_t n = rpal__cx_peek(target(fd), b, GATHER);
    inside--;
    if (n == -EXDEV) {
        down_sync(); /* back on the socket */
        return REAL(ioctl)(fd, req, arg);
    }
    if (n < 0)
        return (int)fail((int)-n);
    *(int *)arg = (int)n;
    return 0;
}

/* ---- signals: the program's handlers, counted ---- */

/* A call that waits on the rings runs in user space: a handler that runs
 * while it spins, or between two of its sleeps, would not end it as it
 * ends the kernel's sleep (a program whose handler sets a flag and whose
 * loop waits in epoll_wait(-1) would not see it), and a futex sleep ends
 * with EINTR for any handler, also one with SA_RESTART, after which the
 * kernel restarts a read. So the program's handlers are wrapped: tramp()
 * counts each on its thread (rpal__sigs, which the waits look at) and
 * calls the program's. sigaction and friends give the program back its
 * own action. Not wrapped: the signals of a faulting instruction, which
 * never come while a thread waits (and rpal's own fault guard, src/prim.c,
 * takes SIGSEGV and SIGBUS). docs/run.md, "Signals". */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
/* The program's action for each signal: two copies, so that tramp(), on
 * any thread, never reads one half written; the writer fills the one not
 * in use and then flips ACT_CUR (bit 0: the copy; ACT_OURS: tramp() is in
 * the kernel's place). Writers take act_lock with every signal blocked. */
static struct sigaction user_act[NSIG][2];
static _Atomic unsigned char act_cur[NSIG];
static _Atomic unsigned act_seq[NSIG]; /* odd while a copy is written */
#define ACT_OURS 2
static atomic_flag act_lock = ATOMIC_FLAG_INIT;
static sigset_t intr_set; /* siginterrupt(SIG, 1): signal() gives it no SA_RESTART */

/* In a forked child: the lock and a copy may have been another thread's
 * of the parent, in the middle of a write (tramp() would wait for an odd
 * count for ever). */
static void acts_fork_child(void)
{
    atomic_flag_clear(&act_lock);
    for (int sig = 0; sig < NSIG; sig++)
        if (atomic_load_explicit(&act_seq[sig], memory_order_relaxed) & 1)
            atomic_fetch_add_explicit(&act_seq[sig], 1, memory_order_relaxed);
}

static int wrappable(int sig)
{
    return sig > 0 && sig < NSIG && sig != SIGKILL && sig != SIGSTOP && sig != SIGSEGV &&
           sig != SIGBUS && sig != SIGILL && sig != SIGFPE && sig != SIGTRAP && sig != SIGSYS;
}

static void tramp(int sig, siginfo_t *si, void *uc)
{
    int flags;
    void (*fn)(int);
    void (*fn3)(int, siginfo_t *, void *);
    unsigned seq;
    do { /* a copy that no sigaction on another thread changed meanwhile */
        while ((seq = atomic_load_explicit(&act_seq[sig], memory_order_acquire)) & 1)
            ; /* being written: a writer holds act_lock for a few instructions */
        const struct sigaction *a =
            &user_act[sig][atomic_load_explicit(&act_cur[sig], memory_order_acquire) & 1];
        flags = a->sa_flags;
        fn = a->sa_handler;
        fn3 = a->sa_sigaction;
        atomic_thread_fence(memory_order_acquire);
    } while (atomic_load_explicit(&act_seq[sig], memory_order_relaxed) != seq);
    /* Counted before the program's handler runs: it may leave by siglongjmp.
     * (SA_RESETHAND: the kernel put SIG_DFL back; sigaction sees it.) */
    rpal__sigs.all++;
    if (!(flags & SA_RESTART))
        rpal__sigs.intr++;
    if (flags & SA_SIGINFO)
        fn3(sig, si, uc);
    else if (fn != SIG_DFL && fn != SIG_IGN)
        fn(sig);
}

EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    if (!wrappable(sig))
        return REAL(sigaction)(sig, act, old);
    struct sigaction mine;
    if (act) { /* copied before the lock: a bad pointer faults here, not holding it */
        mine = *act;
        act = &mine;
    }
    sigset_t all, mask;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &mask);
    while (atomic_flag_test_and_set_explicit(&act_lock, memory_order_acquire))
        ;
    /* What the program sees: its own action while tramp() is the kernel's
     * (a raw rt_sigaction, or SA_RESETHAND, may have replaced it). */
    struct sigaction now;
    int r = REAL(sigaction)(sig, NULL, &now);
    unsigned cur = atomic_load_explicit(&act_cur[sig], memory_order_relaxed);
    if (r == 0 && (cur & ACT_OURS) && (now.sa_flags & SA_SIGINFO) && now.sa_sigaction == tramp) {
        /* The kernel's, with the program's handler and SA_SIGINFO (the
         * rest is as it gave it, and SA_RESTORER as libc added it). */
        const struct sigaction *u = &user_act[sig][cur & 1];
        now.sa_sigaction = u->sa_sigaction;
        now.sa_flags = (now.sa_flags & ~SA_SIGINFO) | (u->sa_flags & SA_SIGINFO);
    } else {
        cur &= 1;
    }
    if (r == 0 && act && act->sa_handler != SIG_DFL && act->sa_handler != SIG_IGN) {
        unsigned next = (cur & 1) ^ 1;
        atomic_fetch_add_explicit(&act_seq[sig], 1, memory_order_relaxed); /* odd: writing */
        atomic_thread_fence(memory_order_release);
        user_act[sig][next] = *act;
        /* Flipped before the kernel's change: from then on tramp() reads it. */
        atomic_store_explicit(&act_cur[sig], next | ACT_OURS, memory_order_relaxed);
        atomic_fetch_add_explicit(&act_seq[sig], 1, memory_order_release);
        struct sigaction k = *act;
        k.sa_sigaction = tramp;
        k.sa_flags |= SA_SIGINFO;
        if ((r = REAL(sigaction)(sig, &k, NULL)) < 0)
            atomic_store_explicit(&act_cur[sig], cur, memory_order_release);
    } else if (r == 0 && act) {
        if ((r = REAL(sigaction)(sig, act, NULL)) == 0)
            atomic_store_explicit(&act_cur[sig], cur & 1, memory_order_release);
    }
    int e = errno;
    atomic_flag_clear_explicit(&act_lock, memory_order_release);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    if (r == 0 && old)
        *old = now;
    errno = e;
    return r;
}

/* signal() and its kin call libc's sigaction inside libc, where this one
 * is not seen: each is here, with glibc's flags. */
static void (*set_handler(int sig, void (*fn)(int), int flags, int mask_self))(int)
{
    struct sigaction a = {.sa_handler = fn, .sa_flags = flags}, old;
    sigemptyset(&a.sa_mask);
    if (mask_self && sig > 0 && sig < NSIG)
        sigaddset(&a.sa_mask, sig);
    if (fn == SIG_ERR || sigaction(sig, &a, &old) < 0) {
        errno = EINVAL;
        return SIG_ERR;
    }
    return old.sa_handler;
}

EXPORT void (*signal(int sig, void (*fn)(int)))(int)
{
    int intr = sig > 0 && sig < NSIG && sigismember(&intr_set, sig) == 1;
    return set_handler(sig, fn, intr ? 0 : SA_RESTART, 1);
}

EXPORT void (*bsd_signal(int sig, void (*fn)(int)))(int)
{
    return signal(sig, fn);
}

EXPORT void (*sysv_signal(int sig, void (*fn)(int)))(int)
{
    return set_handler(sig, fn, SA_RESETHAND | SA_NODEFER, 0);
}

/* What <signal.h> makes of signal() under a strict standard (-std=c11
 * without _DEFAULT_SOURCE), and the other names glibc exports. */
EXPORT void (*__sysv_signal(int sig, void (*fn)(int)))(int)
{
    return sysv_signal(sig, fn);
}

EXPORT void (*ssignal(int sig, void (*fn)(int)))(int)
{
    return signal(sig, fn);
}

EXPORT int __sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    return sigaction(sig, act, old);
}

EXPORT int siginterrupt(int sig, int flag)
{
    struct sigaction a;
    if (sig <= 0 || sig >= NSIG || sigaction(sig, NULL, &a) < 0)
        return (int)fail(EINVAL);
    if (flag) {
        sigaddset(&intr_set, sig);
        a.sa_flags &= ~SA_RESTART;
    } else {
        sigdelset(&intr_set, sig);
        a.sa_flags |= SA_RESTART;
    }
    return sigaction(sig, &a, NULL);
}

/* ---- waiting: poll, select, epoll ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One look at FDS: the rings of upgraded descriptors into their revents
 * (the count of those ready), and into K what the kernel must watch for
 * each. HOW: CX_POLL_* for the rings. *NUP: how many are upgraded;
 * *SHARED: whether an armed one is in an rpal epoll set too
 * (CX_POLL_SHARED). */
static int poll_look(struct pollfd *fds, struct pollfd *k, nfds_t n, int how, int *nup,
                     int *shared)
{
    int ready = 0;
    *nup = *shared = 0;
    for (nfds_t i = 0; i < n; i++) {
        int fd = fds[i].fd;
        k[i] = fds[i];
        k[i].revents = 0;
        if (!tracked(fd))
            continue;
        int st = state(fd);
        if (st == ST_HALF || (st == ST_CAND && (how & CX_POLL_DRAIN)))
            st = settle(fd, W_NONE); /* the other end's hello may be there */
        if (st == ST_CAND || st == ST_PLAIN)
            continue;
        fds[i].revents = 0;
        if (st == ST_HALF) {
            k[i].events = POLLIN; /* its hello: nothing else counts yet */
            continue;
        }
        if (on_rings(st)) {
            inside++;
            int r = rpal__cx_poll(target(fd), fds[i].events, how);
            inside--;
            if (r == -ENOENT) {
                down_sync(); /* back on the socket: the kernel's to answer */
                continue;
            }
            k[i].fd = -1; /* the kernel looks at it only while we sleep */
            if (r >= 0 && (r & CX_POLL_SHARED)) {
                *shared = 1;
                r &= ~CX_POLL_SHARED;
            }
            fds[i].revents = (short)(r < 0 ? POLLNVAL : r);
            k[i].events = POLLIN | POLLRDHUP;
            (*nup)++;
        } else {
            k[i].fd = -1;
            fds[i].revents = st == ST_BROKEN ? POLLERR | POLLHUP : POLLNVAL;
        }
        ready += fds[i].revents != 0;
    }
    return ready;
}

/* The kernel's answer K for the descriptors it answers for (a negative
 * one is ignored: revents 0, as the kernel's poll says). */
static int poll_merge(struct pollfd *fds, const struct pollfd *k, nfds_t n)
{
    int ready = 0;
    for (nfds_t i = 0; i < n; i++) {
        if (fds[i].fd < 0)
            fds[i].revents = 0;
        else if (k[i].fd >= 0 && state(fds[i].fd) != ST_HALF)
            fds[i].revents = k[i].revents;
        ready += fds[i].revents != 0;
    }
    return ready;
}

/* The connections of FDS (upgraded ones) with HOW: CX_POLL_AWAKE or
 * CX_POLL_IDLE. */
static void poll_mark(const struct pollfd *fds, nfds_t n, int how)
{
    for (nfds_t i = 0; i < n; i++) {
        int st = state(fds[i].fd);
        if (on_rings(st)) {
            inside++;
            (void)rpal__cx_poll(target(fds[i].fd), 0, how);
            inside--;
        }
    }
}

/* Whether K holds a descriptor the kernel must look at. */
static int poll_kernel(const struct pollfd *k, nfds_t n)
{
    for (nfds_t i = 0; i < n; i++)
        if (k[i].fd >= 0)
            return 1;
    return 0;
}

/* Nothing was ready at the first look: wait as rpal_epoll_wait does
 * (docs/waiting.md), on what the first upgraded descriptor's connection
 * learned. While spinning pays, look at the rings, which costs no system
 * call, and at the kernel's descriptors every KCHECK_NS; the count ready,
 * or 0 when it is time to sleep (W->mode WT_SLEEP at once when waits here
 * are long), the deadline is past, or the kernel has something (the
 * caller's kernel poll then says what). *WFD: the descriptor whose
 * connection lent its learning, -1 none. */
static int poll_spin(struct pollfd *fds, struct pollfd *k, nfds_t n, int64_t timeout_ns,
                     struct wt_wait *w, int *wfd, const struct rpal_sigs *sigs, int restarts)
{
    for (nfds_t i = 0; i < n && *wfd < 0; i++) {
        int st = state(fds[i].fd);
        if (!on_rings(st))
            continue;
        inside++;
        if (rpal__cx_wait_begin(target(fds[i].fd), w) == 0)
            *wfd = target(fds[i].fd);
        inside--;
    }
    if (*wfd < 0 || w->mode == WT_SLEEP)
        return 0;
    poll_mark(fds, n, CX_POLL_AWAKE); /* then look: its messages need no wake-up */
    int kern = poll_kernel(k, n), nup, shared, ready;
    uint64_t next_k = UINT64_MAX;
    while ((ready = poll_look(fds, k, n, 0, &nup, &shared)) == 0) {
        if (rpal__sig_ends(sigs, restarts))
            return 0; /* a handler ran: the caller's look says EINTR */
        int step = rpal__wt_pause(w);
        if (step == 0)
            continue;
        if (step == WT_SLEEP || (timeout_ns >= 0 && w->now - w->t0 >= (uint64_t)timeout_ns))
            return 0;
        if (next_k == UINT64_MAX)
            next_k = w->t0 + KCHECK_NS;
        if (kern && w->now >= next_k) {
            struct timespec zero = {0, 0};
            next_k = w->now + KCHECK_NS;
            if (REAL(ppoll)(k, n, &zero, NULL) != 0)
                return 0;
        }
    }
    return ready;
}

/* The kernel's part of a poll: K for LEFT ns (< 0: forever), with the
 * sleep timed for the learned wait W when the rings had nothing; asleep,
 * the upgraded descriptors of FDS are watched on their sockets (wake-ups,
 * the end). */
static int poll_kernel_wait(const struct pollfd *fds, struct pollfd *k, nfds_t n, int64_t left,
                            const sigset_t *mask, int ready, struct wt_wait *w, int wfd)
{
    for (nfds_t i = 0; i < n && !ready; i++)
        if (k[i].fd < 0 && fds[i].fd >= 0 && on_rings(state(fds[i].fd)))
            k[i].fd = fds[i].fd;
    if (ready && !poll_kernel(k, n))
        return 0; /* only rings: no system call */
    struct timespec ts = {left / 1000000000, left % 1000000000};
    uint64_t cpu0 = 0;
    if (!ready && wfd >= 0)
        rpal__wt_sleep_begin(w, 0, &cpu0);
    int r = REAL(ppoll)(k, n, left < 0 ? NULL : &ts, ready ? NULL : mask);
    if (!ready && wfd >= 0) {
        int e = errno;
        rpal__wt_sleep_end(w, cpu0);
        errno = e;
    }
    return r;
}

/* What is left of TIMEOUT_NS (< 0: forever) from T0, never below 0. */
static int64_t poll_left(int64_t timeout_ns, uint64_t t0)
{
    int64_t left = timeout_ns - (int64_t)(now_ns() - t0);
    return timeout_ns < 0 ? -1 : left < 0 ? 0 : left;
}

/* One upgraded descriptor, for reading (a client waiting for its answer):
 * sleep on a futex, as a blocking read does, not on the socket, whose
 * wake-up byte costs the other end a send and us reading it. 1: look
 * again; -1: EINTR (errno); 0: not such a poll, the kernel's sleep. */
static int poll_futex(struct pollfd *fds, nfds_t n, int64_t left, const sigset_t *mask,
                      struct wt_wait *w, int wfd, const struct rpal_sigs *sigs, int restarts)
{
    if (n != 1 || mask || fds[0].fd < 0 || !(fds[0].events & POLLIN) || (fds[0].events & POLLOUT) ||
        !on_rings(state(fds[0].fd)))
        return 0;
    inside++;
    int r = rpal__cx_poll_sleep(target(fds[0].fd), left, wfd >= 0 ? w : NULL, sigs, restarts);
    inside--;
    return r == -EINTR ? (int)fail(EINTR) : r == 0;
}

/* The end of run_poll (HOW, W and WFD as it left them): an armed or
 * spinning poll puts back the way to wake its connections when idle (a
 * set's bell rather than the socket's byte the arming asked for), and the
 * wait is learned. Keeps errno. */
static void poll_done(const struct pollfd *fds, nfds_t n, int how, struct wt_wait *w, int wfd)
{
    if (wfd < 0 && !(how & CX_POLL_ARM))
        return;
    int e = errno;
    poll_mark(fds, n, CX_POLL_IDLE);
    if (wfd >= 0) {
        inside++;
        rpal__cx_wait_end(wfd, w);
        inside--;
    }
    errno = e;
}

/* poll/ppoll over descriptors some of which are upgraded. TIMEOUT_NS < 0:
 * forever. RESTARTS: the wait of a read or write (MSG_PEEK, sendfile,
 * splice), which a handler with SA_RESTART does not end; poll's ends with
 * EINTR for any (rpal__sig_ends). */
static int run_poll(struct pollfd *fds, nfds_t n, int64_t timeout_ns, const sigset_t *mask,
                    int restarts)
{
    struct pollfd kst[32], *k = n <= 32 ? kst : malloc(n * sizeof *k);
    if (!k)
        return (int)fail(ENOMEM);
    uint64_t t0 = now_ns();
    int ready, nup, shared, how = 0, wfd = -1;
    struct wt_wait w;
    struct rpal_sigs sigs = {rpal__sigs.all, rpal__sigs.intr};
    for (;;) {
        ready = poll_look(fds, k, n, how, &nup, &shared);
        if (!ready && !how && nup && timeout_ns != 0)
            ready = poll_spin(fds, k, n, poll_left(timeout_ns, t0), &w, &wfd, &sigs, restarts);
        if (!ready && !(how & CX_POLL_ARM) && timeout_ns != 0) {
            /* then look again: the other end sees it or we see its message (a
             * poll of timeout 0 never sleeps: nothing to arm, nor to put back) */
            how |= CX_POLL_ARM;
            continue;
        }
        int64_t left = ready ? 0 : poll_left(timeout_ns, t0);
        /* A handler ran while we spun or between two sleeps: the kernel's
         * call would have been asleep, and ended. */
        if (!ready && left != 0 && rpal__sig_ends(&sigs, restarts)) {
            ready = (int)fail(EINTR);
            break;
        }
        int f = ready || left == 0 ? 0 : poll_futex(fds, n, left, mask, &w, wfd, &sigs, restarts);
        if (f < 0) {
            ready = -1;
            break;
        }
        if (f > 0) {
            how = CX_POLL_ARM;
            continue;
        }
        /* One in an epoll set too: its wake-up may go to the set's bell
         * instead (CX_POLL_SHARED), so look again every slice. */
        int sliced = !ready && shared && (left < 0 || left > CX_SLICE_NS);
        int r = poll_kernel_wait(fds, k, n, sliced ? CX_SLICE_NS : left, mask, ready, &w,
                                 wfd);
        if (r == 0 && sliced) {
            how = CX_POLL_ARM;
            continue;
        }
        if (r < 0 && errno == EINTR && rpal__sig_restarts(&sigs, restarts)) {
            sigs.all = rpal__sigs.all; /* only SA_RESTART handlers: go on, as the kernel */
            how = CX_POLL_ARM;
            continue;
        }
        if (r < 0) {
            ready = -1;
            break;
        }
        if (ready) {
            ready = poll_merge(fds, k, n);
            break;
        }
        int woke = 0;
        for (nfds_t i = 0; i < n; i++)
            if (k[i].revents && fds[i].fd >= 0 && state(fds[i].fd) != ST_PLAIN && state(fds[i].fd) != ST_CAND)
                woke = 1;
        if (!woke) {
            ready = r > 0 ? poll_merge(fds, k, n) : 0;
            if (r == 0)
                for (nfds_t i = 0; i < n; i++)
                    fds[i].revents = 0;
            break;
        }
        how = CX_POLL_ARM | CX_POLL_DRAIN; /* a ring descriptor's socket spoke */
    }
    poll_done(fds, n, how, &w, wfd);
    if (k != kst)
        free(k);
    return ready;
}

static int any_tracked(const struct pollfd *fds, nfds_t n)
{
    if (inside)
        return 0;
    for (nfds_t i = 0; i < n; i++)
        if (tracked(fds[i].fd))
            return 1;
    return 0;
}

EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout_ms)
{
    if (!any_tracked(fds, n))
        return REAL(poll)(fds, n, timeout_ms);
    return run_poll(fds, n, timeout_ms < 0 ? -1 : (int64_t)timeout_ms * 1000000, NULL, 0);
}

static int64_t ts_ns(const struct timespec *ts)
{
    return ts ? (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec : -1;
}

EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
    if (!any_tracked(fds, n))
        return REAL(ppoll)(fds, n, ts, mask);
    return run_poll(fds, n, ts_ns(ts), mask, 0);
}

/* select and pselect as poll: only when a set holds a descriptor of ours. */
static int run_select(int nfds, fd_set *r, fd_set *w, fd_set *x, int64_t timeout_ns,
                      const sigset_t *mask)
{
    struct pollfd *p = calloc((size_t)nfds + 1, sizeof *p);
    if (!p)
        return (int)fail(ENOMEM);
    nfds_t n = 0;
    for (int fd = 0; fd < nfds; fd++) {
        short ev = (short)((r && FD_ISSET(fd, r) ? POLLIN : 0) | (w && FD_ISSET(fd, w) ? POLLOUT : 0) |
                           (x && FD_ISSET(fd, x) ? POLLPRI : 0));
        if (ev)
            p[n++] = (struct pollfd){fd, ev, 0};
    }
    int got = run_poll(p, n, timeout_ns, mask, 0), count = 0;
    if (got >= 0) {
        for (nfds_t i = 0; i < n; i++) {
            int fd = p[i].fd;
            short rv = p[i].revents;
            if (r && FD_ISSET(fd, r) && !(rv & (POLLIN | POLLHUP | POLLERR)))
                FD_CLR(fd, r);
            if (w && FD_ISSET(fd, w) && !(rv & (POLLOUT | POLLERR)))
                FD_CLR(fd, w);
            if (x && FD_ISSET(fd, x) && !(rv & POLLPRI))
                FD_CLR(fd, x);
            count += (r && FD_ISSET(fd, r)) + (w && FD_ISSET(fd, w)) + (x && FD_ISSET(fd, x));
        }
    }
    free(p);
    return got < 0 ? -1 : count;
}

static int sets_tracked(int nfds, fd_set *r, fd_set *w, fd_set *x)
{
    for (int fd = 0; fd < nfds && fd < RUN_FDS && !inside; fd++)
        if (fdst[fd] != ST_PLAIN &&
            ((r && FD_ISSET(fd, r)) || (w && FD_ISSET(fd, w)) || (x && FD_ISSET(fd, x))))
            return 1;
    return 0;
}

EXPORT int select(int nfds, fd_set *r, fd_set *w, fd_set *x, struct timeval *tv)
{
    if (!sets_tracked(nfds, r, w, x))
        return REAL(select)(nfds, r, w, x, tv);
    return run_select(nfds, r, w, x, tv ? (int64_t)tv->tv_sec * 1000000000 + tv->tv_usec * 1000 : -1,
                      NULL);
}

EXPORT int pselect(int nfds, fd_set *r, fd_set *w, fd_set *x, const struct timespec *ts,
                   const sigset_t *mask)
{
    if (!sets_tracked(nfds, r, w, x))
        return REAL(pselect)(nfds, r, w, x, ts, mask);
    return run_select(nfds, r, w, x, ts_ns(ts), mask);
}

/* Every epoll set goes through rpal's (src/compat.c), which knows which
 * descriptors are upgraded, also those upgraded after they were added. */
EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    if (inside)
        return REAL(epoll_ctl)(epfd, op, fd, ev);
    if (hidden(fd))
        return (int)fail(EBADF);
    inside++;
    int r = rpal_epoll_ctl(epfd, op, fd, ev);
    inside--;
    return r < 0 ? (int)fail(-r) : r;
}

/* MASK holds for the whole call, the spin included: a handler it lets in
 * (one pending already runs as it is set) ends the wait, one it keeps out
 * waits for the call's end, as in the kernel; rpal__ep_wait gives it to
 * the kernel's sleep too, so that no handler runs between the last look
 * and the sleep. */
static int run_epoll_wait(int epfd, struct epoll_event *ev, int max, int timeout_ms,
                          const sigset_t *mask)
{
    if (mask && !rpal__ep_ours(epfd)) /* the kernel's set: its own call, mask and all */
        return REAL(epoll_pwait)(epfd, ev, max, timeout_ms, mask);
    sigset_t old;
    unsigned before = rpal__sigs.all;
    if (mask)
        pthread_sigmask(SIG_SETMASK, mask, &old);
    int r = -EINTR;
    if (rpal__sigs.all == before) {
        inside++;
        r = rpal__ep_wait(epfd, ev, max, timeout_ms, mask, before);
        inside--;
    }
    if (mask)
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    return r < 0 ? (int)fail(-r) : r;
}

EXPORT int epoll_wait(int epfd, struct epoll_event *ev, int max, int timeout_ms)
{
    if (inside)
        return REAL(epoll_wait)(epfd, ev, max, timeout_ms);
    return run_epoll_wait(epfd, ev, max, timeout_ms, NULL);
}

EXPORT int epoll_pwait(int epfd, struct epoll_event *ev, int max, int timeout_ms,
                       const sigset_t *mask)
{
    if (inside)
        return REAL(epoll_pwait)(epfd, ev, max, timeout_ms, mask);
    return run_epoll_wait(epfd, ev, max, timeout_ms, mask);
}

EXPORT int epoll_pwait2(int epfd, struct epoll_event *ev, int max, const struct timespec *ts,
                        const sigset_t *mask)
{
    if (inside)
        return REAL(epoll_pwait2)(epfd, ev, max, ts, mask);
    int64_t ns = ts_ns(ts);
    int ms = ns < 0 ? -1 : (int)((ns + 999999) / 1000000);
    return run_epoll_wait(epfd, ev, max, ms, mask);
}

/* ---- exec: the new program gets the kernel's sockets ---- */

/* Descriptors named as the source of a posix_spawn_file_actions_adddup2:
 * the spawned program gets a copy without FD_CLOEXEC whatever this one
 * has. Never cleared (the actions' object may serve many spawns; its
 * layout is glibc's own): a stale mark costs a downgrade, never a byte. */
static _Atomic unsigned char dup2_src[RUN_FDS];

/* Every connection on the rings whose descriptor (or a dup of it) the next
 * program keeps open: without FD_CLOEXEC, or, HOW LEAVE_SPAWN (a
 * posix_spawn with file actions), marked by an adddup2; at a fork
 * (LEAVE_FORK), the same as for an exec (the child may exec), or every
 * one with RPAL_RUN_FORK=all. Back to the kernel socket: 0, or -1 with
 * errno, and the connections moved so far stay on the socket. A fork
 * cannot fail: one that gets no answer goes on with the next, and stays
 * the parent's in the child (EIO there). In a forked child, a connection
 * the parent upgraded that the next program would keep refuses the exec
 * (EIO): that program would read the wake-up bytes of rings it cannot
 * see. */
static int leave_inherited(int how)
{
    if (inside)
        return 0;
    int err = 0;
    for (int fd = 0; fd < fd_top; fd++) {
        int st = fdst[fd];
        if (st != ST_UP && st != ST_ALIAS && st != ST_HALF && st != ST_PARENT)
            continue;
        int fl = REAL(fcntl)(fd, F_GETFD);
        int kept = fl >= 0 && (!(fl & FD_CLOEXEC) || (how == LEAVE_SPAWN && dup2_src[fd]) ||
                               (how == LEAVE_FORK && fork_all));
        if (!kept)
            continue;
        if (st == ST_PARENT) {
            if (how == LEAVE_FORK)
                continue; /* the grandchild's, as the child's: EIO */
            run_log("parent", fd, 0, 0);
            static const char msg[] = "librpal-run: exec refused (EIO): a descriptor it would "
                                      "keep is a connection upgraded before a fork; see "
                                      "RPAL_RUN_FORK in docs/run.md\n";
            (void)!REAL(write)(2, msg, sizeof msg - 1);
            return (int)fail(EIO);
        }
        if (run_leave(fd) < 0) {
            if (how != LEAVE_FORK)
                return -1;
            err = -1;
        }
    }
    return err;
}

/* Before an exec: every connection on the rings whose descriptor (or a dup
 * of it) stays open in the new program goes back to the kernel socket,
 * which is all the new program will know. 0, or -1 with errno: the exec is
 * not made (the connections moved so far stay on the socket, working).
 * glibc's execvp and execl* call __execve, not execve: each is
 * interposed itself. */
static int exec_prepare(void)
{
    return leave_inherited(LEAVE_EXEC);
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    return exec_prepare() < 0 ? -1 : REAL(execve)(path, argv, envp);
}

EXPORT int execv(const char *path, char *const argv[])
{
    return exec_prepare() < 0 ? -1 : REAL(execv)(path, argv);
}

EXPORT int execvp(const char *file, char *const argv[])
{
    return exec_prepare() < 0 ? -1 : REAL(execvp)(file, argv);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    return exec_prepare() < 0 ? -1 : REAL(execvpe)(file, argv, envp);
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    return exec_prepare() < 0 ? -1 : REAL(fexecve)(fd, argv, envp);
}

/* The list forms: ARG and what follows it up to the NULL, as a vector;
 * then, if ENV is not NULL, the environment into *ENV (execle's). */
#define LIST_ARGV(arg, argv, env)                                            \
    size_t n_ = 1;                                                           \
    va_list ap_;                                                             \
    va_start(ap_, arg);                                                      \
    while (va_arg(ap_, char *))                                              \
        n_++;                                                                \
    va_end(ap_);                                                             \
    char *argv[n_ + 1];                                                      \
    argv[0] = (char *)(arg);                                                 \
    va_start(ap_, arg);                                                      \
    for (size_t i_ = 1; i_ <= n_; i_++)                                      \
        argv[i_] = va_arg(ap_, char *);                                      \
    char *const **env_ = (env);                                              \
    if (env_)                                                                \
        *env_ = va_arg(ap_, char *const *);                                  \
    va_end(ap_)

/* posix_spawn, system and popen start their program from a child that
 * glibc makes with clone (no fork handlers) and that calls __execve inside
 * libc: none of the calls above sees it, so each is interposed itself, and
 * the connections the program inherits go back to the socket first, in
 * the parent, which keeps them there. File actions: an adddup2's source
 * counts as inherited (its copy has no FD_CLOEXEC); addclose, addopen and
 * addclosefrom are not read, so a descriptor they close may be moved back
 * for nothing. */
EXPORT int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *fa, int fd, int newfd)
{
    if (fd >= 0 && fd < RUN_FDS)
        dup2_src[fd] = 1;
    return REAL(posix_spawn_file_actions_adddup2)(fa, fd, newfd);
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    if (leave_inherited(fa ? LEAVE_SPAWN : LEAVE_EXEC) < 0)
        return errno;
    return REAL(posix_spawn)(pid, path, fa, attr, argv, envp);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    if (leave_inherited(fa ? LEAVE_SPAWN : LEAVE_EXEC) < 0)
        return errno;
    return REAL(posix_spawnp)(pid, file, fa, attr, argv, envp);
}

EXPORT int system(const char *cmd)
{
    /* system(NULL) only asks whether a shell exists: nothing is started. */
    return cmd && exec_prepare() < 0 ? -1 : REAL(system)(cmd);
}

EXPORT FILE *popen(const char *cmd, const char *mode)
{
    return exec_prepare() < 0 ? NULL : REAL(popen)(cmd, mode);
}

EXPORT int execl(const char *path, const char *arg, ...)
{
    LIST_ARGV(arg, argv, (char *const **)NULL);
    return execv(path, argv);
}

EXPORT int execlp(const char *file, const char *arg, ...)
{
    LIST_ARGV(arg, argv, (char *const **)NULL);
    return execvp(file, argv);
}

EXPORT int execle(const char *path, const char *arg, ...)
{
    char *const *env = NULL;
    LIST_ARGV(arg, argv, &env);
    return execve(path, argv, env);
}

/* ---- the fortified forms (_FORTIFY_SOURCE), as distributions build ---- */

EXPORT ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen)
{
    if (len > buflen)
        abort();
    return read(fd, buf, len);
}

EXPORT ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags)
{
    if (len > buflen)
        abort();
    return recv(fd, buf, len, flags);
}

EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags,
                              struct sockaddr *sa, socklen_t *salen)
{
    if (len > buflen)
        abort();
    return recvfrom(fd, buf, len, flags, sa, salen);
}

EXPORT int __poll_chk(struct pollfd *fds, nfds_t n, int timeout_ms, size_t fdslen)
{
    if (fdslen / sizeof *fds < n)
        abort();
    return poll(fds, n, timeout_ms);
}

EXPORT int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts,
                       const sigset_t *mask, size_t fdslen)
{
    if (fdslen / sizeof *fds < n)
        abort();
    return ppoll(fds, n, ts, mask);
}
