/* Latency and CPU against load: what a user asks before putting rpal where
 * a Unix socket was. Three transports, each as two real processes (forked
 * from this one, the orchestrator, which only waits for them):
 *
 *   uds-epoll    a Unix stream socket; the server waits in a blocking
 *                epoll_wait, read()s, echoes with write(); the client
 *                write()s and waits in a blocking read();
 *   rpal-compat  the same server and client switched to rpal's compat layer
 *                as examples/rpal_echo_server.c is: rpal_domain_join,
 *                rpal_uds_fdmap on both ends, rpal_epoll_ctl/rpal_epoll_wait,
 *                rpal_read/rpal_write (the same code with the other calls);
 *   rpal-call    rpal_service_register, rpal_receiver_create, rpal_receive +
 *                rpal_reply in the server; rpal_service_request,
 *                rpal_chan_open and rpal_call in the client.
 *
 * Every rpal object is made with the library's default wait settings;
 * RPAL_SPIN_US from the environment is ignored (and said so) unless
 * --spin-us asks for a value.
 *
 * Loads, one request outstanding at a time:
 *   open loop at a rate R: message i is due at T0 + i/R; the client sends it
 *     then (at once if it is late), waits for the reply with the transport's
 *     blocking wait, then sleeps (clock_nanosleep, TIMER_ABSTIME) until the
 *     next one is due. Latency = reply - due time, so queueing shows;
 *   closed loop with a think time G: the client sleeps until reply + G, then
 *     sends; latency = reply - send. G = 0 is saturation (back to back).
 * The client's sleeping is the same code for every transport; its timer
 * slack is 1 ns so that it wakes when asked.
 *
 * Placements: split (client on the first CPU, server on the second) and
 * shared (both on the first).
 *
 * Per point the client runs a warm-up, then a measured window of N
 * messages (about --seconds, at least a minimum count, or exactly --count).
 * The window is cut by flags in the messages, so that both processes
 * account exactly N message periods: the client from the moment message W
 * is due to the moment message W+N would be (its sleep after the last reply
 * included), the server from its reply to message W-1 to its reply to
 * message W+N-1. Each takes getrusage(RUSAGE_SELF) (all its threads: CPU
 * time, voluntary and involuntary context switches) at both ends of its
 * window: CPU per message is the kernel's accounting, never an estimate.
 *
 * The machine's wake-up costs drift from minute to minute on a VM, so at
 * each point the transports run interleaved, --rounds times (each round
 * starting with the next transport), and the ratios rpal / uds-epoll are
 * taken within each round; the table and the summary show the median per
 * transport and the median of the ratios.
 *
 * Usage: load [--transport LIST] [--placement split|shared|both]
 *             [--rates LIST] [--think-us LIST] [--count N | --seconds S]
 *             [--rounds R] [--size BYTES] [--spin-us N] [--json]
 *             [--plot FILE.png] [--quick]
 * See docs/benchmarks.md, "Latency and CPU against load".
 */
#include "bench.h" /* rpal.h, atomics.h, json_str(), the helpers shared with bench/call */

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>

enum { T_UDS, T_COMPAT, T_CALL, NT };
static const char *const tnames[NT] = {"uds-epoll", "rpal-compat", "rpal-call"};
enum { P_SPLIT, P_SHARED, NP };
static const char *const pnames[NP] = {"split", "shared"};
enum { CLIENT, SERVER };

#define MIN_SIZE 16           /* the header: index and flags, due time */
#define MAX_SIZE 65536
#define OP_TIMEOUT_MS 10000   /* every blocking library call's deadline */
#define MAX_COUNT 20000000L   /* latencies a client keeps, at most */
#define CALL_DOMAIN "bench-load"

/* The first word of a message: its index, and flags that tell the server
 * where the measured window is. */
#define F_START (1ull << 56)  /* the last warm-up message: after replying, the
                                 server starts its window */
#define F_END (1ull << 57)    /* the last measured message: after replying,
                                 the server ends its window */
#define F_STOP (1ull << 58)   /* reply, then leave */
#define F_INDEX ((1ull << 56) - 1)

/* A load point: open loop at RATE messages/s, or closed loop with a think
 * time of THINK_US (0: saturation). */
struct point {
    int closed;
    double rate;
    long think_us;
    char label[32];
};

static struct {
    int want[NT], placements[NP];
    struct point *pts;
    int npts;
    long count;         /* 0: by time */
    double seconds;     /* the window's length when by time */
    long min_count;     /* the window's minimum when by time */
    int rounds;
    size_t size;
    long spin_us;       /* -1: the library's defaults */
    int json, quick;
    const char *plot;
} opt = {.seconds = 0.5, .min_count = 500, .rounds = 3, .size = 32, .spin_us = -1};

/* Shared by the orchestrator and the two children of one run. */
struct run_shared {
    _Atomic int server_ready;  /* scratch is filled, the server listens */
    _Atomic int client_ready;  /* rpal-call: the client's channel is open */
    _Atomic int client_done;   /* the client has its last reply */
    char scratch[256];         /* rpal-call: the service's name and key */
    char err[2][256];          /* why a side failed */
    /* The client's window. */
    int64_t n, wall_ns, p50_ns, p99_ns, warm;
    int64_t rtt_p50_ns, rtt_p99_ns; /* reply - send: the transport alone */
    struct bench_usage cu;
    /* The server's window. */
    int64_t srv_n;
    struct bench_usage su;
};

/* What a child needs: set before the fork. */
static struct {
    int t, side, placement;
    struct point pt;
    int deadline_s;
    char sock[108];
    char service[64];
    struct run_shared *sh;
} run;

static int cpu_a, cpu_b, ncpus;
static char tmpdir[80];
static volatile sig_atomic_t interrupted;
static pid_t kids[2];

/* A child's fatal error: on stderr, and for the orchestrator's report. */
void bench_died(const char *msg)
{
    fprintf(stderr, "load: %s %s: %s\n", tnames[run.t],
            run.side == SERVER ? "server" : "client", msg);
    if (run.sh)
        snprintf(run.sh->err[run.side], sizeof run.sh->err[0], "%.*s",
                 (int)sizeof run.sh->err[0] - 1, msg);
}

static void die_err(const char *what, long err) __attribute__((noreturn));
static void die_err(const char *what, long err)
{
    die_msg("%s: %s", what, rpal_strerror((int)err));
}

/* ------------------------------------------------------------------------ */
/* uds-epoll and rpal-compat: one program, the kernel's calls or rpal's     */
/* ------------------------------------------------------------------------ */

/* The calls a stream transport makes, all returning a negative errno on
 * failure: the kernel's (wrapped) or rpal's compat calls, which take their
 * place one for one (docs/compat.md). */
struct io {
    int (*ctl)(int ep, int op, int fd, struct epoll_event *ev);
    int (*wait)(int ep, struct epoll_event *ev, int max, int timeout_ms);
    ssize_t (*rd)(int fd, void *buf, size_t len);
    ssize_t (*wr)(int fd, const void *buf, size_t len);
    int (*cl)(int fd);
};

static int k_ctl(int ep, int op, int fd, struct epoll_event *ev)
{
    return epoll_ctl(ep, op, fd, ev) < 0 ? -errno : 0;
}
static int k_wait(int ep, struct epoll_event *ev, int max, int timeout_ms)
{
    int n = epoll_wait(ep, ev, max, timeout_ms);
    return n < 0 ? -errno : n;
}
static ssize_t k_read(int fd, void *buf, size_t len)
{
    ssize_t n = read(fd, buf, len);
    return n < 0 ? -errno : n;
}
static ssize_t k_write(int fd, const void *buf, size_t len)
{
    ssize_t n = write(fd, buf, len);
    return n < 0 ? -errno : n;
}
static int k_close(int fd) { return close(fd) < 0 ? -errno : 0; }

static const struct io kernel_io = {k_ctl, k_wait, k_read, k_write, k_close};
static const struct io compat_io = {rpal_epoll_ctl, rpal_epoll_wait, rpal_read,
                                     rpal_write, rpal_close};

static struct {
    const struct io *io;
    struct bench_rpal rp; /* rpal-compat: the domain */
    int lfd, fd, ep;
    unsigned char *rx;
} st = {.lfd = -1, .fd = -1, .ep = -1};

static void write_all(const void *buf, size_t len)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = st.io->wr(st.fd, (const char *)buf + done, len - done);
        if (n == -EINTR)
            continue;
        if (n < 0)
            die_err("write", n);
        done += (size_t)n;
    }
}

/* One read of what is missing of a message of which HAVE bytes are in;
 * returns how many are in now. */
static size_t read_some(unsigned char *buf, size_t have)
{
    ssize_t n = st.io->rd(st.fd, buf + have, opt.size - have);
    if (n == -EINTR || n == -EAGAIN)
        return have;
    if (n < 0)
        die_err("read", n);
    if (n == 0)
        die_msg("the peer closed the connection before the end");
    return have + (size_t)n;
}

static void watch(int fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    int err = st.io->ctl(st.ep, EPOLL_CTL_ADD, fd, &ev);
    if (err < 0)
        die_err("epoll_ctl", err);
}

/* rpal-compat: both ends join (the default domain, as the examples) first,
 * and upgrade the connection right after connect / accept; a connection
 * that stays a plain socket would measure the kernel, not rpal. */
static void stream_join(void)
{
    st.io = run.t == T_COMPAT ? &compat_io : &kernel_io;
    if (run.t == T_COMPAT)
        bench_rpal_join(NULL, &st.rp);
}

static void stream_upgrade(void)
{
    if (run.t != T_COMPAT)
        return;
    int r = rpal_uds_fdmap(st.rp.d, st.fd, OP_TIMEOUT_MS);
    if (r < 0)
        die_err("rpal_uds_fdmap", r);
    if (r == 0)
        die_msg("rpal_uds_fdmap: the connection was not upgraded (the peer is "
                "not a member of the domain)");
}

/* Joins (rpal-compat) and makes a Unix stream socket; ADDR is the run's
 * path. The end of the set-up both sides share. */
static int stream_socket(struct sockaddr_un *addr)
{
    stream_join();
    *addr = (struct sockaddr_un){.sun_family = AF_UNIX};
    snprintf(addr->sun_path, sizeof addr->sun_path, "%s", run.sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die_err("socket", -errno);
    st.rx = malloc(opt.size);
    if (!st.rx)
        die_msg("out of memory");
    return fd;
}

static void stream_server_init(void)
{
    struct sockaddr_un addr;
    st.lfd = stream_socket(&addr);
    if (bind(st.lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die_err(run.sock, -errno);
    if (listen(st.lfd, 1) < 0)
        die_err("listen", -errno);
    st.ep = epoll_create1(EPOLL_CLOEXEC);
    if (st.ep < 0)
        die_err("epoll_create1", -errno);
    watch(st.lfd); /* as the examples: the listening socket stays in the set */
}

static void stream_server_connect(void)
{
    struct pollfd pf = {st.lfd, POLLIN, 0};
    int r;
    while ((r = poll(&pf, 1, OP_TIMEOUT_MS)) < 0 && errno == EINTR)
        ;
    if (r <= 0)
        die_msg("no client within %d ms", OP_TIMEOUT_MS);
    st.fd = accept4(st.lfd, NULL, NULL, SOCK_CLOEXEC);
    if (st.fd < 0)
        die_err("accept", -errno);
    stream_upgrade();
    watch(st.fd);
}

/* The server's wait: epoll_wait (blocking), then read what is there, until
 * the whole message is in. */
static const unsigned char *stream_server_recv(void)
{
    struct epoll_event ev[16];
    size_t have = 0;
    while (have < opt.size) {
        int n = st.io->wait(st.ep, ev, 16, OP_TIMEOUT_MS);
        if (n == -EINTR)
            continue;
        if (n < 0)
            die_err("epoll_wait", n);
        if (n == 0)
            die_msg("no message for %d ms", OP_TIMEOUT_MS);
        for (int i = 0; i < n && have < opt.size; i++) {
            if (ev[i].data.fd == st.lfd) { /* one client per run: turn others away */
                int fd = accept4(st.lfd, NULL, NULL, SOCK_CLOEXEC);
                if (fd >= 0)
                    close(fd);
                continue;
            }
            have = read_some(st.rx, have);
        }
    }
    return st.rx;
}

static void stream_server_reply(const unsigned char *m) { write_all(m, opt.size); }

static void stream_client_init(void)
{
    struct sockaddr_un addr;
    st.fd = stream_socket(&addr);
    if (connect(st.fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die_err(run.sock, -errno);
    stream_upgrade();
}

static const unsigned char *stream_client_call(const unsigned char *m)
{
    write_all(m, opt.size);
    /* The client's wait: a blocking read (rpal_read: the library's wait). */
    for (size_t have = 0; have < opt.size;)
        have = read_some(st.rx, have);
    return st.rx;
}

static void stream_fini(void)
{
    if (st.fd >= 0)
        st.io->cl(st.fd);
    if (st.ep >= 0)
        close(st.ep);
    if (st.lfd >= 0)
        close(st.lfd);
    if (st.rp.d)
        rpal_domain_leave(st.rp.d);
}

/* ------------------------------------------------------------------------ */
/* rpal-call                                                                 */
/* ------------------------------------------------------------------------ */

static struct bench_rpal cl;
static unsigned char *cl_rx; /* the client's copy of the reply */

/* NULL, the library's defaults, unless --spin-us: then the adaptive wait
 * with that spin (0: sleep at once, since spin_us 0 means the default). */
static const struct rpal_chan_opts *call_opts(void)
{
    static struct rpal_chan_opts o;
    if (opt.spin_us < 0)
        return NULL;
    o.wait = opt.spin_us ? RPAL_WAIT_ADAPTIVE : RPAL_WAIT_SLEEP;
    o.spin_us = (unsigned)opt.spin_us;
    return &o;
}

static void call_server_init(void)
{
    bench_rpal_serve(&cl, CALL_DOMAIN, run.service, call_opts(), run.sh->scratch,
                     sizeof run.sh->scratch);
}

static void call_server_connect(void)
{
    bench_rpal_dispatch_until(&cl, &run.sh->client_ready, OP_TIMEOUT_MS / 1000);
}

static const unsigned char *call_server_recv(void)
{
    return bench_rpal_receive(&cl, opt.size, OP_TIMEOUT_MS);
}

/* The reply is the request, read in place (valid until rpal_reply). */
static void call_server_reply(const unsigned char *m)
{
    int err = rpal_reply(cl.r, &cl.m, m, opt.size);
    if (err < 0)
        die_err("rpal_reply", err);
}

static void call_client_init(void)
{
    bench_rpal_join(CALL_DOMAIN, &cl);
    bench_rpal_open(&cl, run.sh->scratch, call_opts(), OP_TIMEOUT_MS);
    cl_rx = malloc(opt.size);
    if (!cl_rx)
        die_msg("out of memory");
}

static const unsigned char *call_client_call(const unsigned char *m)
{
    size_t len;
    int err = rpal_call(cl.chan, m, opt.size, cl_rx, opt.size, &len, OP_TIMEOUT_MS);
    if (err < 0)
        die_err("rpal_call", err);
    if (len != opt.size)
        die_msg("rpal_call: a %zu-byte reply, not %zu", len, opt.size);
    return cl_rx;
}

static void call_fini(void) { bench_rpal_fini(&cl); }

/* ------------------------------------------------------------------------ */
/* The children                                                              */
/* ------------------------------------------------------------------------ */

struct transport {
    void (*server_init)(void);    /* before server_ready: listen / register */
    void (*server_connect)(void); /* until the client is connected */
    const unsigned char *(*server_recv)(void);
    void (*server_reply)(const unsigned char *m);
    void (*client_init)(void);    /* after server_ready: connect / open */
    const unsigned char *(*client_call)(const unsigned char *m); /* send, wait */
    void (*fini)(void);
};

static const struct transport transports[NT] = {
    [T_UDS] = {stream_server_init, stream_server_connect, stream_server_recv,
               stream_server_reply, stream_client_init, stream_client_call, stream_fini},
    [T_COMPAT] = {stream_server_init, stream_server_connect, stream_server_recv,
                  stream_server_reply, stream_client_init, stream_client_call, stream_fini},
    [T_CALL] = {call_server_init, call_server_connect, call_server_recv,
                call_server_reply, call_client_init, call_client_call, call_fini},
};

/* Waits until SH's FLAG is set, at most the run's deadline. */
static void await_flag(_Atomic int *flag, const char *what)
{
    int64_t end = mono_ns() + (int64_t)run.deadline_s * 1000000000;
    while (!rpal_load_acquire(flag)) { /* pairs with the peer's release store */
        if (mono_ns() > end)
            die_msg("%s within %d s", what, run.deadline_s);
        usleep(100);
    }
}

static void server_main(const struct transport *T)
{
    struct run_shared *sh = run.sh;
    T->server_init();
    /* Release: scratch and the listening socket before the flag; pairs with
     * the client's acquire in await_flag. */
    rpal_store_release(&sh->server_ready, 1);
    T->server_connect();
    struct bench_usage u0 = {0};
    int in_window = 0;
    int64_t n = 0;
    for (;;) {
        const unsigned char *m = T->server_recv();
        uint64_t w0;
        memcpy(&w0, m, sizeof w0);
        T->server_reply(m); /* m is not used after this */
        if (in_window)
            n++;
        if (w0 & F_START) {
            u0 = bench_usage();
            in_window = 1;
        }
        if (w0 & F_END) {
            struct bench_usage u1 = bench_usage();
            sh->su.cpu_ns = u1.cpu_ns - u0.cpu_ns;
            sh->su.nvcsw = u1.nvcsw - u0.nvcsw;
            sh->su.nivcsw = u1.nivcsw - u0.nivcsw;
            sh->srv_n = n;
            in_window = 0;
        }
        if (w0 & F_STOP)
            break;
    }
    /* Stay until the client has the last reply: leaving may unmap a reply
     * it is still reading (rpal-call) or close the connection under it. */
    await_flag(&sh->client_done, "the client did not take its last reply");
    T->fini();
}

static void sleep_until(int64_t t)
{
    struct timespec ts = {t / 1000000000, t % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts V (N > 0 values) and takes its median and 99th percentile. */
static void quantiles(int64_t *v, size_t n, int64_t *p50, int64_t *p99)
{
    qsort(v, n, sizeof *v, cmp_i64);
    size_t i99 = (size_t)((double)n * 0.99);
    *p50 = v[n / 2];
    *p99 = v[i99 < n ? i99 : n - 1];
}

/* How long the client warms up and measures at point PT. */
struct plan {
    int64_t warm_ns, window_ns;
    long warm_min, target;
};

static struct plan client_plan(const struct point *pt)
{
    struct plan pl;
    /* Warm-up: a tenth of the window, at least 50 messages (or a tenth of
     * --count), so that a waiter that adapts has seen the load. */
    pl.warm_ns = opt.count ? 0 : (int64_t)(opt.seconds * 1e8);
    pl.warm_min = opt.count ? (opt.count / 10 > 50 ? opt.count / 10 : 50) : 50;
    /* The window: --count, else the messages of --seconds at the offered
     * rate, and by time in any case (at least min_count). */
    pl.target = opt.count ? opt.count
                : pt->closed ? MAX_COUNT
                : (long)(opt.seconds * pt->rate) > opt.min_count
                    ? (long)(opt.seconds * pt->rate) : opt.min_count;
    pl.window_ns = opt.count ? INT64_MAX : (int64_t)(opt.seconds * 1e9);
    return pl;
}

/* The window is over after J messages (I since the start): the client's
 * wall time and usage since T0 and U0 into SH. */
static void window_ended(struct run_shared *sh, int64_t t0, struct bench_usage u0, long j,
                         uint64_t i)
{
    int64_t t1 = mono_ns();
    struct bench_usage u1 = bench_usage();
    sh->wall_ns = t1 - t0;
    sh->cu.cpu_ns = u1.cpu_ns - u0.cpu_ns;
    sh->cu.nvcsw = u1.nvcsw - u0.nvcsw;
    sh->cu.nivcsw = u1.nivcsw - u0.nivcsw;
    sh->n = j;
    sh->warm = (int64_t)i - j;
}

/* Twice the room for the window's latencies. */
static void grow(int64_t **lat, int64_t **rtt, size_t *cap)
{
    *cap *= 2;
    *lat = realloc(*lat, *cap * sizeof **lat);
    *rtt = realloc(*rtt, *cap * sizeof **rtt);
    if (!*lat || !*rtt)
        die_msg("out of memory");
}

/* The client: warm-up, the window, then a stop message. The schedule and
 * the sleeping are the same for every transport; only client_call differs. */
static void client_loop(const struct transport *T)
{
    struct run_shared *sh = run.sh;
    const struct point *pt = &run.pt;
    unsigned char *msg = malloc(opt.size);
    size_t cap = 65536;
    int64_t *lat = malloc(cap * sizeof *lat), *rtt = malloc(cap * sizeof *rtt);
    if (!msg || !lat || !rtt)
        die_msg("out of memory");
    for (size_t j = 16; j < opt.size; j++)
        msg[j] = (unsigned char)(j * 7 + 1);
    double period = pt->closed ? 0 : 1e9 / pt->rate;
    int64_t think = (int64_t)pt->think_us * 1000;
    struct plan pl = client_plan(pt);
    int64_t warm_ns = pl.warm_ns, window_ns = pl.window_ns;
    long warm_min = pl.warm_min, target = pl.target;
    enum { WARM, STARTING, WINDOW, ENDING, STOPPING } phase = WARM;
    int64_t start = mono_ns(), base = start, t0 = 0, next = start;
    long k = 0, j = 0; /* k: messages since BASE; j: in the window */
    struct bench_usage u0 = {0};
    for (uint64_t i = 0;; i++) {
        /* When message i is due, and the sleep until then. */
        if (!pt->closed)
            next = base + (int64_t)((double)k++ * period);
        if (next > mono_ns())
            sleep_until(next);
        int64_t now = mono_ns(), due = pt->closed ? now : next;
        uint64_t flags = 0;
        if (phase == STARTING) { /* message i is the window's first */
            u0 = bench_usage();
            t0 = now = mono_ns();
            if (!pt->closed) { /* a backlog from the warm-up is not the window's */
                base = due = next = now;
                k = 1;
            } else {
                due = now;
            }
            phase = WINDOW;
        } else if (phase == ENDING) { /* message i would be the window's N+1st */
            window_ended(sh, t0, u0, j, i);
            flags = F_STOP;
            phase = STOPPING;
        }
        if (phase == WARM && now - start >= warm_ns && (long)i + 1 >= warm_min) {
            flags = F_START;
            phase = STARTING;
        } else if (phase == WINDOW &&
                   (j + 1 >= target || j + 1 >= MAX_COUNT ||
                    (now - t0 >= window_ns && j + 1 >= opt.min_count))) {
            flags = F_END;
        }
        uint64_t w0 = (i & F_INDEX) | flags;
        memcpy(msg, &w0, 8);
        memcpy(msg + 8, &due, 8);
        const unsigned char *r = T->client_call(msg);
        int64_t back = mono_ns();
        if (memcmp(r, msg, opt.size) != 0)
            die_msg("the reply to message %" PRIu64 " is not its echo", i);
        if (phase == WINDOW) {
            if ((size_t)j == cap)
                grow(&lat, &rtt, &cap);
            rtt[j] = back - now;
            lat[j++] = back - due;
            if (flags & F_END)
                phase = ENDING;
        }
        if (phase == STOPPING)
            break;
        if (pt->closed)
            next = back + think; /* no sleep at all for saturation */
    }
    quantiles(lat, (size_t)j, &sh->p50_ns, &sh->p99_ns);
    quantiles(rtt, (size_t)j, &sh->rtt_p50_ns, &sh->rtt_p99_ns);
    free(lat);
    free(rtt);
    free(msg);
}

static void client_main(const struct transport *T)
{
    await_flag(&run.sh->server_ready, "the server was not ready");
    T->client_init();
    /* Release: pairs with the server's acquire (bench_rpal_dispatch_until). */
    rpal_store_release(&run.sh->client_ready, 1);
    prctl(PR_SET_TIMERSLACK, 1UL); /* wake when the schedule says, not 50 us later */
    client_loop(T);
    /* Release: pairs with the server's acquire in await_flag. */
    rpal_store_release(&run.sh->client_done, 1);
    T->fini();
}

static void child_main(int side, int cpu)
{
    run.side = side;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* The orchestrator's handlers are not ours: a Ctrl-C or the deadline
     * ends a child at once. */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    signal(SIGPIPE, SIG_IGN); /* a peer gone is an error from write */
    if (interrupted)
        _exit(1);
    alarm((unsigned)run.deadline_s);
    dup2(2, 1); /* stdout is the orchestrator's results only */
    if (pin_cpu(cpu) < 0)
        die_err("sched_setaffinity", -errno);
    const struct transport *T = &transports[run.t];
    if (side == SERVER)
        server_main(T);
    else
        client_main(T);
    _exit(0);
}

/* ------------------------------------------------------------------------ */
/* The orchestrator                                                          */
/* ------------------------------------------------------------------------ */

struct result {
    int status;          /* 0 ran, 1 skipped, -1 failed */
    char why[300];
    long n, srv_n, warm;
    double secs, achieved, p50, p99;
    double rtt50, rtt99; /* reply - actual send: without the client's lateness */
    double ccpu, scpu, cpu; /* ns per message */
    double cvcsw, civcsw, svcsw, sivcsw; /* per message */
};

static void on_signal(int sig) { interrupted = sig; }

static void kill_kids(void)
{
    for (int i = 0; i < 2; i++)
        if (kids[i] > 0)
            kill(kids[i], SIGKILL);
}

/* The deadline of one run: its window and warm-up, at the slowest a
 * message takes here (a few hundred us when every wake-up crosses the
 * host), with room for the set-up. */
static int run_deadline(const struct point *pt)
{
    double per = pt->closed ? 300e-6 + (double)pt->think_us * 1e-6
                            : (1.0 / pt->rate > 300e-6 ? 1.0 / pt->rate : 300e-6);
    double msgs = opt.count ? (double)opt.count * 1.1 + 50 : (double)opt.min_count + 50;
    double s = opt.seconds * 1.1 + msgs * per;
    return 20 + (int)(3 * s);
}

static void run_one(int t, int placement, const struct point *pt, struct result *r)
{
    static unsigned serial;
    memset(r, 0, sizeof *r);
    if (placement == P_SPLIT && ncpus < 2) {
        r->status = 1;
        snprintf(r->why, sizeof r->why, "needs two CPUs; this process may use one");
        return;
    }
    struct run_shared *sh = map_shared(page_round(sizeof *sh));
    if (!sh) {
        r->status = -1;
        snprintf(r->why, sizeof r->why, "mmap: %s", strerror(errno));
        return;
    }
    serial++;
    run.t = t;
    run.placement = placement;
    run.pt = *pt;
    run.sh = sh;
    run.deadline_s = run_deadline(pt);
    snprintf(run.sock, sizeof run.sock, "%s/s%u", tmpdir, serial);
    snprintf(run.service, sizeof run.service, "load-%d-%u", (int)getpid(), serial);
    fflush(NULL);
    kids[SERVER] = fork();
    if (kids[SERVER] == 0)
        child_main(SERVER, placement == P_SPLIT ? cpu_b : cpu_a);
    kids[CLIENT] = kids[SERVER] < 0 ? -1 : fork();
    if (kids[CLIENT] == 0)
        child_main(CLIENT, cpu_a);
    if (kids[SERVER] < 0 || kids[CLIENT] < 0) {
        r->status = -1;
        snprintf(r->why, sizeof r->why, "fork: %s", strerror(errno));
        if (kids[CLIENT] < 0)
            kids[CLIENT] = 0;
        if (kids[SERVER] < 0)
            kids[SERVER] = 0;
        kill_kids();
        while (wait(NULL) > 0 || errno == EINTR)
            ;
    } else {
        static const char *const names[2] = {[CLIENT] = "client", [SERVER] = "server"};
        const char *const errs[2] = {sh->err[0], sh->err[1]};
        if (bench_wait_pair(kids, names, errs, run.deadline_s + 2, &interrupted, NULL,
                            r->why, sizeof r->why) < 0)
            r->status = -1;
    }
    kids[SERVER] = kids[CLIENT] = 0;
    unlink(run.sock);
    if (r->status == 0 && (sh->n <= 0 || sh->wall_ns <= 0)) {
        r->status = -1;
        snprintf(r->why, sizeof r->why, "the client measured nothing");
    }
    if (r->status == 0) {
        double n = (double)sh->n;
        r->n = sh->n;
        r->srv_n = sh->srv_n;
        r->warm = sh->warm;
        r->secs = (double)sh->wall_ns / 1e9;
        r->achieved = n / r->secs;
        r->p50 = (double)sh->p50_ns;
        r->p99 = (double)sh->p99_ns;
        r->rtt50 = (double)sh->rtt_p50_ns;
        r->rtt99 = (double)sh->rtt_p99_ns;
        r->ccpu = (double)sh->cu.cpu_ns / n;
        r->scpu = (double)sh->su.cpu_ns / n;
        r->cpu = r->ccpu + r->scpu;
        r->cvcsw = (double)sh->cu.nvcsw / n;
        r->civcsw = (double)sh->cu.nivcsw / n;
        r->svcsw = (double)sh->su.nvcsw / n;
        r->sivcsw = (double)sh->su.nivcsw / n;
        if (sh->srv_n != sh->n) {
            r->status = -1;
            snprintf(r->why, sizeof r->why, "the server counted %" PRId64
                     " messages in the window, the client %" PRId64, sh->srv_n, sh->n);
        }
    }
    munmap(sh, page_round(sizeof *sh));
    run.sh = NULL;
}

/* ------------------------------------------------------------------------ */
/* Output                                                                    */
/* ------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The opening of every JSON object about a point: its kind (SUMMARY, or
 * NULL for a round's result), the transport and the point. */
static void json_point(const char *summary, const char *transport, int placement,
                       const struct point *pt)
{
    printf("{");
    if (summary)
        printf("\"summary\":\"%s\",", summary);
    printf("\"transport\":");
    json_str(transport);
    printf(",\"placement\":\"%s\",\"load\":\"%s\",\"point\":", pnames[placement],
           pt->closed ? "closed" : "open");
    json_str(pt->label);
    if (pt->closed)
        printf(",\"think_us\":%ld", pt->think_us);
    else
        printf(",\"offered_per_s\":%.0f", pt->rate);
}

/* The figures of R, without braces. */
static void json_figures(const struct result *r)
{
    printf(",\"achieved_per_s\":%.1f,\"p50_ns\":%.0f,\"p99_ns\":%.0f,"
           "\"rtt_p50_ns\":%.0f,\"rtt_p99_ns\":%.0f,"
           "\"client_cpu_ns_per_msg\":%.1f,\"server_cpu_ns_per_msg\":%.1f,"
           "\"cpu_ns_per_msg\":%.1f,\"client_vcsw_per_msg\":%.4f,"
           "\"client_ivcsw_per_msg\":%.4f,\"server_vcsw_per_msg\":%.4f,"
           "\"server_ivcsw_per_msg\":%.4f",
           r->achieved, r->p50, r->p99, r->rtt50, r->rtt99, r->ccpu, r->scpu, r->cpu, r->cvcsw, r->civcsw,
           r->svcsw, r->sivcsw);
}

static void json_round(int t, int placement, const struct point *pt, int round,
                       const struct result *r)
{
    json_point(NULL, tnames[t], placement, pt);
    printf(",\"round\":%d", round + 1);
    if (r->status) {
        json_not_run(r->status > 0, r->why);
        return;
    }
    printf(",\"size\":%zu,\"msgs\":%ld,\"server_msgs\":%ld,\"warmup_msgs\":%ld,"
           "\"seconds\":%.4f",
           opt.size, r->n, r->srv_n, r->warm, r->secs);
    if (opt.spin_us >= 0)
        printf(",\"spin_us\":%ld", opt.spin_us);
    json_figures(r);
    printf("}\n");
    fflush(stdout);
}

/* Every run's result: [placement][point][round][transport]. */
static struct result *res;

static struct result *at(int pl, int p, int k, int t)
{
    return &res[(((size_t)pl * (size_t)opt.npts + (size_t)p) * (size_t)opt.rounds +
                 (size_t)k) * NT + (size_t)t];
}

#define MAX_ROUNDS 99

/* One transport at one point over the rounds: the median of each figure
 * over the rounds that ran, and the medians of its ratios to uds-epoll
 * taken within each round where both ran. */
struct summary {
    int rounds;
    struct result med;
    int nratio;
    double cpu_ratio, p50_ratio, p99_ratio, rtt_ratio;
};

static void summarize(int pl, int p, int t, struct summary *s)
{
    enum { NF = 14 };
    double f[NF][MAX_ROUNDS], q[4][MAX_ROUNDS];
    int n = 0, m = 0;
    memset(s, 0, sizeof *s);
    for (int k = 0; k < opt.rounds; k++) {
        const struct result *r = at(pl, p, k, t);
        if (r->status)
            continue;
        const double v[NF] = {r->achieved, r->p50, r->p99, r->ccpu, r->scpu, r->cpu,
                              r->cvcsw, r->civcsw, r->svcsw, r->sivcsw, r->secs,
                              r->rtt50, r->rtt99, (double)r->n};
        for (int i = 0; i < NF; i++)
            f[i][n] = v[i];
        n++;
        const struct result *u = at(pl, p, k, T_UDS);
        if (t != T_UDS && opt.want[T_UDS] && !u->status && u->cpu > 0 && u->p50 > 0 &&
            u->p99 > 0 && u->rtt50 > 0) {
            q[0][m] = r->cpu / u->cpu;
            q[1][m] = r->p50 / u->p50;
            q[2][m] = r->p99 / u->p99;
            q[3][m] = r->rtt50 / u->rtt50;
            m++;
        }
    }
    s->rounds = n;
    s->nratio = m;
    if (n) {
        struct result *d = &s->med;
        double *dst[NF] = {&d->achieved, &d->p50, &d->p99, &d->ccpu, &d->scpu, &d->cpu,
                           &d->cvcsw, &d->civcsw, &d->svcsw, &d->sivcsw, &d->secs,
                           &d->rtt50, &d->rtt99, NULL};
        for (int i = 0; i < NF - 1; i++)
            *dst[i] = median(f[i], n);
        d->n = (long)median(f[NF - 1], n);
    }
    if (m) {
        s->cpu_ratio = median(q[0], m);
        s->p50_ratio = median(q[1], m);
        s->p99_ratio = median(q[2], m);
        s->rtt_ratio = median(q[3], m);
    }
}

static void table_head(int pl)
{
    char where[80];
    if (pl == P_SPLIT && ncpus < 2)
        snprintf(where, sizeof where, "needs two CPUs, this process may use one");
    else if (pl == P_SPLIT)
        snprintf(where, sizeof where, "client on CPU %d, server on CPU %d", cpu_a, cpu_b);
    else
        snprintf(where, sizeof where, "client and server both on CPU %d", cpu_a);
    printf("\nplacement %s: %s; %zu-byte messages; median of %d round%s\n"
           "p50, p99: latency from when the message was due (open loop) or sent; rtt50: "
           "from when it was sent.\nCPU per message, client + server; context switches "
           "per message, client/server; ratios: median of the per-round ratios\n"
           "%-11s %-12s %9s %8s %8s %8s %8s = %7s + %7s %11s %11s %8s %8s\n",
           pnames[pl], where, opt.size, opt.rounds, opt.rounds == 1 ? "" : "s", "load",
           "transport", "msgs/s", "p50 us", "p99 us", "rtt50 us", "CPU us", "client", "server",
           "vcsw c/s", "ivcsw c/s", "CPU/uds", "p50/uds");
}

/* A ratio column: "!" where the target (at most 1.0x) is missed. */
static void ratio_cell(char *buf, size_t len, int have, double v)
{
    if (!have)
        snprintf(buf, len, "%8s", "-");
    else
        snprintf(buf, len, "%7.2f%c", v, v > 1.0 ? '!' : ' ');
}

static void table_point(int pl, int p)
{
    const struct point *pt = &opt.pts[p];
    int first = 1;
    for (int t = 0; t < NT; t++) {
        if (!opt.want[t])
            continue;
        struct summary s;
        summarize(pl, p, t, &s);
        const char *load = first ? pt->label : "";
        first = 0;
        if (!s.rounds) {
            const struct result *r = at(pl, p, 0, t);
            printf("%-11s %-12s %s: %s\n", load, tnames[t],
                   r->status > 0 ? "skipped" : "FAILED", r->why);
            continue;
        }
        const struct result *d = &s.med;
        char c1[16], c2[16];
        ratio_cell(c1, sizeof c1, s.nratio, s.cpu_ratio);
        ratio_cell(c2, sizeof c2, s.nratio, s.p50_ratio);
        printf("%-11s %-12s %9.0f %8.1f %8.1f %8.1f %8.2f = %7.2f + %7.2f %5.2f/%5.2f"
               " %5.2f/%5.2f %s %s\n",
               load, tnames[t], d->achieved, d->p50 / 1e3, d->p99 / 1e3, d->rtt50 / 1e3,
               d->cpu / 1e3,
               d->ccpu / 1e3, d->scpu / 1e3, d->cvcsw, d->svcsw, d->civcsw, d->sivcsw,
               c1, c2);
        if (s.rounds < opt.rounds)
            for (int k = 0; k < opt.rounds; k++)
                if (at(pl, p, k, t)->status)
                    printf("%-11s %-12s (round %d FAILED: %s)\n", "", "", k + 1,
                           at(pl, p, k, t)->why);
    }
    fflush(stdout);
}

/* After the per-round objects: the medians, the ratios and the count of
 * points that meet the targets, per transport and placement. Returns the
 * same counts for the table. */
static void summaries(int json)
{
    if (json)
        for (int pl = 0; pl < NP; pl++)
            for (int p = 0; opt.placements[pl] && p < opt.npts; p++)
                for (int t = 0; t < NT; t++) {
                    struct summary s;
                    if (!opt.want[t])
                        continue;
                    summarize(pl, p, t, &s);
                    if (!s.rounds)
                        continue;
                    json_point("median", tnames[t], pl, &opt.pts[p]);
                    printf(",\"rounds\":%d,\"msgs\":%ld,\"seconds\":%.4f", s.rounds,
                           s.med.n, s.med.secs);
                    json_figures(&s.med);
                    printf("}\n");
                }
    if (!opt.want[T_UDS]) {
        fprintf(json ? stderr : stdout, "\n(no uds-epoll in --transport: no ratios)\n");
        return;
    }
    if (!json)
        printf("\ntargets (issue 12): at every point, rpal's CPU per message and p50 at "
               "most 1.0x uds-epoll's\n(median over the rounds of the ratio within each "
               "round)\n");
    for (int t = T_COMPAT; t < NT; t++) {
        if (!opt.want[t])
            continue;
        for (int pl = 0; pl < NP; pl++) {
            if (!opt.placements[pl])
                continue;
            int pts = 0, cpu_ok = 0, p50_ok = 0;
            double worst_cpu = 0, worst_p50 = 0;
            for (int p = 0; p < opt.npts; p++) {
                struct summary s;
                summarize(pl, p, t, &s);
                if (!s.nratio)
                    continue;
                pts++;
                cpu_ok += s.cpu_ratio <= 1.0;
                p50_ok += s.p50_ratio <= 1.0;
                if (s.cpu_ratio > worst_cpu)
                    worst_cpu = s.cpu_ratio;
                if (s.p50_ratio > worst_p50)
                    worst_p50 = s.p50_ratio;
                if (!json)
                    continue;
                json_point("ratio", tnames[t], pl, &opt.pts[p]);
                printf(",\"vs\":\"%s\",\"rounds\":%d,\"cpu_ratio\":%.4g,\"p50_ratio\":%.4g,"
                       "\"p99_ratio\":%.4g,\"rtt_p50_ratio\":%.4g,\"cpu_target_met\":%s,"
                       "\"p50_target_met\":%s}\n",
                       tnames[T_UDS], s.nratio, s.cpu_ratio, s.p50_ratio, s.p99_ratio,
                       s.rtt_ratio,
                       s.cpu_ratio <= 1.0 ? "true" : "false",
                       s.p50_ratio <= 1.0 ? "true" : "false");
            }
            if (json)
                printf("{\"summary\":\"targets\",\"transport\":\"%s\",\"placement\":\"%s\","
                       "\"points\":%d,\"cpu_met\":%d,\"p50_met\":%d,\"worst_cpu_ratio\":%.4g,"
                       "\"worst_p50_ratio\":%.4g}\n",
                       tnames[t], pnames[pl], pts, cpu_ok, p50_ok, worst_cpu, worst_p50);
            else
                printf("%-12s %-6s CPU met at %d of %d points (worst %.2fx), p50 met at "
                       "%d of %d (worst %.2fx)\n",
                       tnames[t], pnames[pl], cpu_ok, pts, worst_cpu, p50_ok, pts,
                       worst_p50);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* --plot                                                                    */
/* ------------------------------------------------------------------------ */

struct plot_row {
    double x, p50, p99, cpu;
};

static int cmp_row(const void *a, const void *b)
{
    return cmp_double(&((const struct plot_row *)a)->x, &((const struct plot_row *)b)->x);
}

/* What a point is on the plots: a point of the curve (open loop that kept
 * up with its rate, and saturation), a think-time point, or an open-loop
 * point that could not keep up (its latency is the backlog's). */
enum { PK_CURVE, PK_THINK, PK_OVERLOAD, NPK };

static int point_kind(const struct point *pt, const struct summary *s)
{
    if (pt->closed)
        return pt->think_us > 0 ? PK_THINK : PK_CURVE;
    return s->med.achieved < 0.9 * pt->rate ? PK_OVERLOAD : PK_CURVE;
}

/* Writes the medians of transport T in placement PL of the points of KIND
 * to FILE, by achieved load. Returns how many rows. */
static int plot_data(const char *file, int pl, int t, int kind)
{
    struct plot_row rows[256];
    int n = 0;
    for (int p = 0; p < opt.npts && n < 256; p++) {
        struct summary s;
        summarize(pl, p, t, &s);
        if (!s.rounds || point_kind(&opt.pts[p], &s) != kind)
            continue;
        rows[n++] = (struct plot_row){s.med.achieved, s.med.p50 / 1e3, s.med.p99 / 1e3,
                                      s.med.cpu / 1e3};
    }
    if (!n)
        return 0;
    qsort(rows, (size_t)n, sizeof rows[0], cmp_row);
    FILE *f = fopen(file, "w");
    if (!f)
        return 0;
    for (int i = 0; i < n; i++)
        fprintf(f, "%.1f %.4f %.4f %.4f\n", rows[i].x, rows[i].p50, rows[i].p99, rows[i].cpu);
    fclose(f);
    return n;
}

/* Placement PL's two plots (latency, CPU per message) into GP's script,
 * their data into files in tmpdir; -1 if the plot commands do not fit. */
static int plot_placement(FILE *gp, int pl)
{
    char lat[8192] = "", cpu[8192] = "", file[200];
    size_t ll = 0, cl = 0;
    int c = 0;
    for (int t = 0; t < NT; t++, c++) {
        if (!opt.want[t])
            continue;
        for (int kind = 0; kind < NPK; kind++) {
            snprintf(file, sizeof file, "%s/plot-%d-%d-%d.dat", tmpdir, pl, t, kind);
            if (!plot_data(file, pl, t, kind))
                continue;
            const char *col = bench_color(c);
            if (kind == PK_CURVE) {
                ll += (size_t)snprintf(lat + ll, sizeof lat - ll,
                    "%s'%s' using 1:2 with linespoints lw 2 pt 7 lc rgb '%s' title '%s', "
                    "'%s' using 1:3 with lines dt 2 lc rgb '%s' notitle",
                    ll ? ", \\\n  " : "plot ", file, col, tnames[t], file, col);
                cl += (size_t)snprintf(cpu + cl, sizeof cpu - cl,
                    "%s'%s' using 1:4 with linespoints lw 2 pt 7 lc rgb '%s' title '%s'",
                    cl ? ", \\\n  " : "plot ", file, col, tnames[t]);
            } else {
                int pt = kind == PK_THINK ? 6 : 2;
                ll += (size_t)snprintf(lat + ll, sizeof lat - ll,
                    "%s'%s' using 1:2 with points pt %d ps 1.5 lw 2 lc rgb '%s' notitle",
                    ll ? ", \\\n  " : "plot ", file, pt, col);
                cl += (size_t)snprintf(cpu + cl, sizeof cpu - cl,
                    "%s'%s' using 1:4 with points pt %d ps 1.5 lw 2 lc rgb '%s' notitle",
                    cl ? ", \\\n  " : "plot ", file, pt, col);
            }
        }
    }
    if (ll >= sizeof lat || cl >= sizeof cpu)
        return -1;
    fprintf(gp, "set title '%s: latency (p50 solid, p99 dashed)'\n"
                "set ylabel 'microseconds'\n%s\n",
            pnames[pl], ll ? lat : "plot 1/0 notitle");
    fprintf(gp, "set title '%s: CPU per message, client + server'\n"
                "set ylabel 'CPU microseconds per message'\n%s\n",
            pnames[pl], cl ? cpu : "plot 1/0 notitle");
    return 0;
}

/* One PNG: a row per placement, latency and CPU per message against the
 * achieved load, a colour per transport. Returns 0, or -1 with a message. */
static int plot(const char *out)
{
    if (!find_in_path("gnuplot")) {
        fprintf(stderr, "load: --plot: gnuplot is missing (Debian package gnuplot-nox); "
                        "no plot written\n");
        return -1;
    }
    if (strchr(out, '\'')) {
        fprintf(stderr, "load: --plot: no quote in the file name, please\n");
        return -1;
    }
    char file[200], script[200];
    int rows = 0, rc = -1;
    FILE *gp = NULL;
    snprintf(script, sizeof script, "%s/plot.gp", tmpdir);
    for (int attempt = 0; attempt < 2 && rc; attempt++) {
        if (!(gp = fopen(script, "w")))
            break;
        rows = 0;
        for (int pl = 0; pl < NP; pl++)
            rows += opt.placements[pl];
        fprintf(gp,
                "set terminal %s size 1400,%d\nset output '%s'\n"
                "set multiplot layout %d,2 title \"rpal bench load: %zu-byte messages, "
                "median of %d round(s)\\nlines: open loop and saturation; circles: closed "
                "loop with a think time; crosses: open loop that fell behind (achieved < "
                "90%% of offered)\" noenhanced\n"
                "set logscale xy\nset format x '%%g'\nset format y '%%g'\nset grid\n"
                "set key top left opaque noenhanced\nset xlabel 'messages/s achieved'\n",
                attempt ? "png" : "pngcairo", 480 * rows, out, rows, opt.size, opt.rounds);
        for (int pl = 0; pl < NP; pl++)
            if (opt.placements[pl] && plot_placement(gp, pl) < 0)
                break;
        fprintf(gp, "unset multiplot\n");
        fclose(gp);
        rc = run_gnuplot(script);
    }
    for (int pl = 0; pl < NP; pl++)
        for (int t = 0; t < NT; t++)
            for (int kind = 0; kind < NPK; kind++) {
                snprintf(file, sizeof file, "%s/plot-%d-%d-%d.dat", tmpdir, pl, t, kind);
                unlink(file);
            }
    unlink(script);
    if (rc)
        fprintf(stderr, "load: --plot: gnuplot failed; no plot written\n");
    else
        fprintf(stderr, "load: plot written to %s\n", out);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                   */
/* ------------------------------------------------------------------------ */

static void usage(int code)
{
    fprintf(code ? stderr : stdout,
            "usage: rpal bench load [--transport LIST] [--placement split|shared|both]\n"
            "                       [--rates LIST] [--think-us LIST] [--count N | --seconds S]\n"
            "                       [--rounds R] [--size BYTES] [--spin-us N] [--json]\n"
            "                       [--plot FILE.png] [--quick]\n"
            "  --transport   uds-epoll,rpal-compat,rpal-call (default: all three)\n"
            "  --placement   split: client CPU 0, server CPU 1; shared: both on CPU 0\n"
            "                (default: both)\n"
            "  --rates       open-loop rates in messages/s (k and M suffixes), and sat for\n"
            "                saturation (default 1k,10k,50k,100k,500k,sat)\n"
            "  --think-us    closed loop: microseconds the client sleeps after each reply\n"
            "                (default 10,50,200; 0 is saturation); giving --rates or\n"
            "                --think-us replaces the whole default sweep\n"
            "  --seconds     length of each measured window (default 0.5; at least 500\n"
            "                messages); --count N: exactly N messages instead\n"
            "  --rounds      the transports run interleaved R times per point (default 3)\n"
            "  --size        message size, 16 to 65536 bytes (default 32)\n"
            "  --spin-us     RPAL_SPIN_US for the rpal transports (and spin_us of the\n"
            "                call's channel; 0: sleep at once); default: the library's\n"
            "  --quick       a short sweep for tests: 1k,100k,sat and think 50, 0.1 s,\n"
            "                1 round\n");
    exit(code);
}

static void bad(const char *opt_name, const char *word, const char *what)
{
    fprintf(stderr, "load: %s: '%s' %s\n", opt_name, word, what);
    exit(2);
}

/* The next comma-separated word of *P into W; 0 at the end. */
static int next_word(const char **p, char *w, size_t len)
{
    if (!**p)
        return 0;
    size_t k = strcspn(*p, ",");
    snprintf(w, len, "%.*s", (int)(k < len ? k : len - 1), *p);
    *p += k + ((*p)[k] == ',');
    return 1;
}

static void rate_label(double r, char *buf, size_t len)
{
    if (r >= 1e6 && (long long)r % 1000000 == 0)
        snprintf(buf, len, "%gM/s", r / 1e6);
    else if (r >= 1e3 && (long long)r % 1000 == 0)
        snprintf(buf, len, "%gk/s", r / 1e3);
    else
        snprintf(buf, len, "%g/s", r);
}

static void add_point(int closed, double rate, long think)
{
    for (int i = 0; i < opt.npts; i++) { /* sat and think 0 are one point */
        const struct point *q = &opt.pts[i];
        if (q->closed == closed && (closed ? q->think_us == think : q->rate == rate))
            return;
    }
    opt.pts = realloc(opt.pts, (size_t)(opt.npts + 1) * sizeof *opt.pts);
    if (!opt.pts) {
        perror("load");
        exit(1);
    }
    struct point *pt = &opt.pts[opt.npts++];
    *pt = (struct point){.closed = closed, .rate = rate, .think_us = think};
    if (!closed)
        rate_label(rate, pt->label, sizeof pt->label);
    else if (think == 0)
        snprintf(pt->label, sizeof pt->label, "sat");
    else
        snprintf(pt->label, sizeof pt->label, "think %ldus", think);
}

static void parse_rates(const char *list)
{
    char w[64];
    if (!*list)
        bad("--rates", list, "is empty");
    for (const char *p = list; next_word(&p, w, sizeof w);) {
        if (!strcmp(w, "sat")) {
            add_point(1, 0, 0);
            continue;
        }
        char *end;
        errno = 0;
        double v = strtod(w, &end);
        if (end != w && (*end == 'k' || *end == 'K'))
            v *= 1e3, end++;
        else if (end != w && *end == 'M')
            v *= 1e6, end++;
        if (errno || end == w || *end || !(v >= 1 && v <= 1e8))
            bad("--rates", w, "is not a rate (1 to 100M messages/s, with an optional k or M "
                "suffix, or sat)");
        add_point(0, v, 0);
    }
}

static void parse_thinks(const char *list)
{
    char w[64];
    if (!*list)
        bad("--think-us", list, "is empty");
    for (const char *p = list; next_word(&p, w, sizeof w);) {
        char *end;
        errno = 0;
        long v = strtol(w, &end, 10);
        if (errno || end == w || *end || v < 0 || v > 1000000)
            bad("--think-us", w, "is not a think time (0 to 1000000 microseconds)");
        add_point(1, 0, v);
    }
}

static double parse_num(const char *name, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double d = strtod(v ? v : "", &end);
    if (!v || errno || end == v || *end || !(d >= lo && d <= hi)) {
        fprintf(stderr, "load: %s: '%s' is not a number from %g to %g\n", name,
                v ? v : "", lo, hi);
        exit(2);
    }
    return d;
}

/* --transport V: the transports it names. */
static void parse_transports(const char *v)
{
    char w[64];
    memset(opt.want, 0, sizeof opt.want);
    for (const char *p = v; next_word(&p, w, sizeof w);) {
        int t = 0;
        while (t < NT && strcmp(w, tnames[t]))
            t++;
        if (t == NT)
            bad("--transport", w, "is not a transport (uds-epoll, rpal-compat, "
                "rpal-call)");
        opt.want[t] = 1;
    }
    if (!opt.want[0] && !opt.want[1] && !opt.want[2])
        bad("--transport", v, "names no transport");
}

/* After the options: the defaults of what was not given (--quick's
 * among them), and the points of RATES and THINKS. */
static void settle_args(const char *rates, const char *thinks, int seconds_set,
                        int rounds_set)
{
    if (opt.count && seconds_set) {
        fprintf(stderr, "load: --count and --seconds: give one of them\n");
        exit(2);
    }
    if (!opt.want[0] && !opt.want[1] && !opt.want[2])
        opt.want[0] = opt.want[1] = opt.want[2] = 1;
    if (!opt.placements[0] && !opt.placements[1])
        opt.placements[0] = opt.placements[1] = 1;
    if (opt.quick) {
        if (!seconds_set)
            opt.seconds = 0.1;
        if (!rounds_set)
            opt.rounds = 1;
        opt.min_count = 100;
    }
    if (!rates && !thinks) {
        rates = opt.quick ? "1k,100k,sat" : "1k,10k,50k,100k,500k,sat";
        thinks = opt.quick ? "50" : "10,50,200";
    }
    if (rates)
        parse_rates(rates);
    if (thinks)
        parse_thinks(thinks);
}

static void parse_args(int argc, char **argv)
{
    const char *rates = NULL, *thinks = NULL;
    int seconds_set = 0, rounds_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "--json")) {
            opt.json = 1, takes = 0;
        } else if (!strcmp(a, "--quick")) {
            opt.quick = 1, takes = 0;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(0);
        } else if (!v && !strncmp(a, "--", 2)) {
            fprintf(stderr, "load: %s needs a value\n", a);
            usage(2);
        } else if (!strcmp(a, "--transport")) {
            parse_transports(v);
        } else if (!strcmp(a, "--placement")) {
            int s = !strcmp(v, "split"), h = !strcmp(v, "shared"), b = !strcmp(v, "both");
            if (!s && !h && !b)
                bad("--placement", v, "is not split, shared or both");
            opt.placements[P_SPLIT] = s || b;
            opt.placements[P_SHARED] = h || b;
        } else if (!strcmp(a, "--rates")) {
            rates = v;
        } else if (!strcmp(a, "--think-us")) {
            thinks = v;
        } else if (!strcmp(a, "--count")) {
            opt.count = (long)parse_num(a, v, 1, (double)MAX_COUNT);
            if ((double)opt.count != strtod(v, NULL))
                bad("--count", v, "is not a whole number");
        } else if (!strcmp(a, "--seconds")) {
            opt.seconds = parse_num(a, v, 0.001, 3600);
            seconds_set = 1;
        } else if (!strcmp(a, "--rounds")) {
            opt.rounds = (int)parse_num(a, v, 1, MAX_ROUNDS);
            if ((double)opt.rounds != strtod(v, NULL))
                bad("--rounds", v, "is not a whole number");
            rounds_set = 1;
        } else if (!strcmp(a, "--size")) {
            opt.size = (size_t)parse_num(a, v, MIN_SIZE, MAX_SIZE);
            if ((double)opt.size != strtod(v, NULL))
                bad("--size", v, "is not a whole number");
        } else if (!strcmp(a, "--spin-us")) {
            opt.spin_us = (long)parse_num(a, v, 0, 1000000);
            if ((double)opt.spin_us != strtod(v, NULL))
                bad("--spin-us", v, "is not a whole number");
        } else if (!strcmp(a, "--plot")) {
            opt.plot = v;
        } else {
            fprintf(stderr, "load: unknown option '%s'\n", a);
            usage(2);
        }
        i += takes;
    }
    settle_args(rates, thinks, seconds_set, rounds_set);
}

/* ------------------------------------------------------------------------ */
/* main                                                                      */
/* ------------------------------------------------------------------------ */

static int remove_one(const char *path, const struct stat *sb, int type, struct FTW *f)
{
    (void)sb, (void)type, (void)f;
    return remove(path);
}

static void remove_tmpdir(void)
{
    if (tmpdir[0] && nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
        fprintf(stderr, "load: could not remove %s: %s\n", tmpdir, strerror(errno));
    tmpdir[0] = 0;
}

/* What the figures were taken on. */
static void header(FILE *f, const char *spin_env)
{
    char model[200] = "unknown CPU", line[1024], clk[64] = "?";
    FILE *ci = fopen("/proc/cpuinfo", "r");
    while (ci && fgets(line, sizeof line, ci))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = 0;
            break;
        }
    if (ci)
        fclose(ci);
    FILE *cs = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
    if (cs) {
        if (fgets(clk, sizeof clk, cs))
            clk[strcspn(clk, "\n")] = 0;
        fclose(cs);
    }
    struct utsname u;
    uname(&u);
    fprintf(f, "# rpal bench load: %s, Linux %s, %ld CPUs online, clocksource %s; "
               "librpal %s\n",
            model, u.release, sysconf(_SC_NPROCESSORS_ONLN), clk, rpal_version());
    if (opt.spin_us >= 0)
        fprintf(f, "# rpal waits: --spin-us %ld (not the library's defaults)\n",
                opt.spin_us);
    else
        fprintf(f, "# rpal waits: the library's defaults%s%s%s\n",
                spin_env ? " (RPAL_SPIN_US=" : "", spin_env ? spin_env : "",
                spin_env ? " in the environment ignored; --spin-us sets it)" : "");
    fprintf(f, "# one request outstanding; open loop: latency from the due time; "
               "closed loop: sleep after each reply; CPU: getrusage of each process "
               "over its window\n");
}

/* Every placement, point, round and transport asked for (NRUNS runs),
 * each reported as it ends; *DONE counts them. Returns 1 if one failed.
 * Stops early when interrupted. */
static int run_sweep(int nruns, int *done_out)
{
    int failed = 0, done = 0;
    for (int pl = 0; pl < NP && !interrupted; pl++) {
        if (!opt.placements[pl])
            continue;
        if (!opt.json)
            table_head(pl);
        for (int p = 0; p < opt.npts && !interrupted; p++) {
            for (int k = 0; k < opt.rounds && !interrupted; k++) {
                /* Each round starts with the next transport, so that none
                 * always follows the same one. */
                for (int o = 0; o < NT && !interrupted; o++) {
                    int t = (o + k) % NT;
                    if (!opt.want[t])
                        continue;
                    struct result *r = at(pl, p, k, t);
                    int64_t t0 = mono_ns();
                    run_one(t, pl, &opt.pts[p], r);
                    if (interrupted)
                        break;
                    failed |= r->status < 0;
                    done++;
                    fprintf(stderr, "load: [%3d/%d] %-6s %-10s round %d/%d %-11s %s%s%s "
                                    "(%.2f s)\n",
                            done, nruns, pnames[pl], opt.pts[p].label, k + 1, opt.rounds,
                            tnames[t], r->status == 0 ? "done" : r->status > 0 ? "skipped"
                                                                                : "FAILED",
                            r->status ? ": " : "", r->status ? r->why : "",
                            (double)(mono_ns() - t0) / 1e9);
                    if (opt.json)
                        json_round(t, pl, &opt.pts[p], k, r);
                }
            }
            if (!opt.json && !interrupted)
                table_point(pl, p);
        }
    }
    *done_out = done;
    return failed;
}

/* A private directory for the sockets, plots and the children's namespace
 * directory (removed with the rest); 0 or -1. */
static int make_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base || strlen(base) > sizeof tmpdir - sizeof "/rpal-load-XXXXXX" - 16)
        base = "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/rpal-load-XXXXXX", base);
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "load: mkdtemp %s: %s\n", tmpdir, strerror(errno));
        return -1;
    }
    /* The children's namespace directory: private, removed with the rest. */
    char nsdir[sizeof tmpdir + 8];
    snprintf(nsdir, sizeof nsdir, "%s/rpal", tmpdir);
    setenv("RPAL_DIR", nsdir, 1);
    return 0;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    const char *spin_env = getenv("RPAL_SPIN_US");
    char spin_buf[32];
    if (opt.spin_us >= 0) {
        snprintf(spin_buf, sizeof spin_buf, "%ld", opt.spin_us);
        setenv("RPAL_SPIN_US", spin_buf, 1);
    } else {
        unsetenv("RPAL_SPIN_US"); /* the library's defaults, whatever the shell says */
    }
    if (make_tmpdir() < 0)
        return 1;
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: waitpid returns */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = bench_on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    ncpus = bench_choose_cpus(&cpu_a, &cpu_b);

    res = calloc((size_t)NP * (size_t)opt.npts * (size_t)opt.rounds * NT, sizeof *res);
    if (!res) {
        perror("load");
        remove_tmpdir();
        return 1;
    }
    int ntr = opt.want[0] + opt.want[1] + opt.want[2];
    int nruns = (opt.placements[0] + opt.placements[1]) * opt.npts * opt.rounds * ntr;
    header(opt.json ? stderr : stdout, spin_env);
    char each[48] = "";
    if (!opt.count) /* by time: the window, its warm-up and the set-up */
        snprintf(each, sizeof each, ", about %.1f s each", opt.seconds * 1.1 + 0.05);
    fprintf(stderr, "load: %d runs (%d placement%s x %d point%s x %d round%s x %d "
                    "transport%s)%s\n",
            nruns, opt.placements[0] + opt.placements[1],
            opt.placements[0] + opt.placements[1] == 1 ? "" : "s", opt.npts,
            opt.npts == 1 ? "" : "s", opt.rounds, opt.rounds == 1 ? "" : "s", ntr,
            ntr == 1 ? "" : "s", each);
    fflush(NULL);

    int done = 0;
    int64_t t_start = mono_ns();
    int failed = run_sweep(nruns, &done);
    if (interrupted) {
        kill_kids();
        remove_tmpdir();
        fprintf(stderr, "load: interrupted\n");
        return 128 + interrupted;
    }
    summaries(opt.json);
    if (opt.plot && plot(opt.plot))
        failed = 1;
    remove_tmpdir();
    fprintf(stderr, "load: %d runs in %.1f s%s\n", done, (double)(mono_ns() - t_start) / 1e9,
            failed ? "; some FAILED (exit 1)" : "");
    free(res);
    free(opt.pts);
    return failed ? 1 : 0;
}
