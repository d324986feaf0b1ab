/* One process calls another: round trips between two real processes over
 * every transport people use for that today, and rpal's call.
 *
 * Per transport the benchmark forks a client and a server process and pins
 * them by mode:
 *   poll         client on CPU 0, server on CPU 1; waiting is busy-polling
 *                (kernel transports spin on their non-blocking call);
 *   shared-core  both on CPU 0; waiting blocks (the hand-off is a switch);
 *   idle         client on CPU 0, server started on CPU 1 but free to run on
 *                both (as an unpinned server is); calls start 100 us apart,
 *                so the server is asleep when each call arrives.
 * One call: the client builds SIZE bytes, stamps the TSC into the first 8 at
 * send and sends; the server stamps the TSC when the message is there (read
 * into its buffer, or visible in shared memory for the in-place transports),
 * records receipt - send (one-way latency, TSC cycles), echoes the stamp in
 * a SIZE-byte reply; the client checks the echo before the next call. After
 * a warm-up (10%), N calls are measured: p50/p99 one-way latency, calls/s
 * (client wall time over N) and CPU time per call of both processes
 * (getrusage RUSAGE_SELF in each, over the measured calls only; zeromq's I/O
 * threads count, iox-roudi does not).
 *
 * --throughput instead streams messages one way (producer CPU 0, consumer
 * CPU 1, both polling): pipelined SIZE-byte messages in msgs/s, and large
 * messages (4 KiB .. 1 MiB) in GB/s against memcpy of the same size.
 *
 * Transports are entries of transports[] (and stream_transports[]); rpal's
 * entries are the ones under RPAL_HAVE_CALL. Shared-memory transports keep
 * principle 2: each side's block is mapped read-only in the peer
 * (mprotect after fork), so each side writes only its own cache lines.
 * zeromq and iceoryx are compiled when their headers are found and loaded
 * with dlopen at run time, so the program needs no extra link flags; a
 * missing header, library or iox-roudi makes them "skipped" with the reason.
 *
 * Usage: call [--mode poll|shared-core|idle|all] [--size BYTES] [--count N]
 *             [--json] [--transport NAME[,NAME...]] [--plot FILE.png]
 *             [--wait auto|block|poll] [--throughput]
 * See docs/benchmarks.md.
 */
#include "bench.h" /* rpal.h, atomics.h, json_str(), the helpers shared with bench/load */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if __has_include(<zmq.h>)
#include <zmq.h>
#define HAVE_ZMQ 1
#endif
#if __has_include(<iceoryx_binding_c/runtime.h>)
#include <iceoryx_binding_c/client.h>
#include <iceoryx_binding_c/log.h>
#include <iceoryx_binding_c/runtime.h>
#include <iceoryx_binding_c/server.h>
#include <iceoryx_binding_c/wait_set.h>
#define HAVE_ICEORYX 1
#endif

/* ------------------------------------------------------------------------ */
/* Clocks                                                                    */
/* ------------------------------------------------------------------------ */

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define CLOCK_NAME "TSC"
/* At send: LFENCE keeps RDTSC from running before the message was built;
 * the stamp is stored into the message, so the store that publishes it
 * comes after. */
static inline uint64_t tsc_send(void)
{
    _mm_lfence();
    return __rdtsc();
}
/* At receipt: RDTSCP waits for the loads before it (the one that saw the
 * message); LFENCE keeps later work from starting before it. */
static inline uint64_t tsc_recv(void)
{
    unsigned aux;
    uint64_t t = __rdtscp(&aux);
    _mm_lfence();
    return t;
}
static inline void cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
#define CLOCK_NAME "CNTVCT"
static inline uint64_t cntvct(void)
{
    uint64_t v;
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v) : : "memory");
    return v;
}
static inline uint64_t tsc_send(void) { return cntvct(); }
static inline uint64_t tsc_recv(void) { return cntvct(); }
static inline void cpu_relax(void) { __asm__ volatile("yield" ::: "memory"); }
#else
#define CLOCK_NAME "CLOCK_MONOTONIC"
static inline uint64_t tsc_send(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
static inline uint64_t tsc_recv(void) { return tsc_send(); }
static inline void cpu_relax(void) { __asm__ volatile("" ::: "memory"); }
#endif

/* Ticks per second of the stamp clock, against CLOCK_MONOTONIC over 100 ms. */
static double calibrate_hz(void)
{
    int64_t n0 = mono_ns();
    uint64_t c0 = tsc_send();
    int64_t n0b = mono_ns();
    struct timespec d = {0, 100 * 1000 * 1000};
    while (nanosleep(&d, &d) < 0 && errno == EINTR)
        ;
    int64_t n1 = mono_ns();
    uint64_t c1 = tsc_recv();
    int64_t n1b = mono_ns();
    double ns = (double)((n1 + n1b) / 2 - (n0 + n0b) / 2);
    return (double)(c1 - c0) * 1e9 / ns;
}

#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

/* ------------------------------------------------------------------------ */
/* Options, shared state, the transport interface                            */
/* ------------------------------------------------------------------------ */

enum { MODE_POLL, MODE_SHARED, MODE_IDLE, NMODES };
static int cpu_a = 0, cpu_b = 1, ncpus_ok = 2; /* client, server CPUs */
static const char *const mode_names[NMODES] = {"poll", "shared-core", "idle"};
enum { CLIENT = 0, SERVER = 1 };
#define IDLE_GAP_NS 100000 /* idle mode: calls start 100 us apart */
#define MAX_SIZE (1u << 20)

struct opts {
    int modes[NMODES], nmodes;
    size_t size;
    long count;        /* 0: the mode's default */
    int json;
    const char *plot;
    char *list;        /* --transport, or NULL for all */
    int wait;          /* -1 auto, 0 block, 1 poll */
    int throughput;
};

/* One page of harness state shared by the orchestrator and both children,
 * followed by the latency array. The server writes lat[] and server_*, the
 * client client_*. */
struct shared {
    _Atomic int server_ready;  /* the server's init has returned */
    _Atomic int client_ready;  /* the client's init and connect have returned */
    _Atomic int client_done;   /* the client has its last reply */
    char scratch[256];         /* for a transport: what the server publishes
                                  for the client before server_ready */
    int64_t client_wall_ns, client_cpu_ns, server_cpu_ns, negatives;
    int64_t lat[];             /* one-way latency of call i, stamp ticks */
};

struct ctx {
    const char *name;
    int mode;            /* MODE_* */
    int poll;            /* kernel transports busy-poll instead of blocking */
    size_t size;
    long warm, count;
    struct shared *sh;
    char msg[256];       /* setup: why it is skipped or failed */
};

/* A transport. Hot-path functions do not return errors: on failure they
 * print why and end the process (die), and the orchestrator reports the
 * transport as failed. Optional members may be NULL. */
struct transport {
    const char *name;
    /* NULL if the transport can run in c->mode, else why not (a skip). */
    const char *(*skip)(const struct ctx *c);
    /* How each side waits, for the table. */
    const char *(*waits)(const struct ctx *c);
    /* In the orchestrator before fork: 0, 1 (skip: c->msg says why) or -1
     * (failed: c->msg says why). */
    int (*setup)(struct ctx *c);
    /* In each child after pinning. The server's runs first; the client's
     * after the server's has returned (sh->server_ready). */
    void (*init)(struct ctx *c, int side);
    /* Optional, after init: e.g. a handshake. The server's may run before
     * the client's init; it may wait for c->sh->client_ready (set after the
     * client's connect returns), answering the client meanwhile. */
    void (*connect)(struct ctx *c, int side);
    /* Where the next outgoing message of c->size bytes is built. */
    void *(*buf)(struct ctx *c, int side);
    /* Publish the message built in buf(). */
    void (*send)(struct ctx *c, int side);
    /* Wait for the peer's next message; it stays valid until done(). */
    const void *(*recv)(struct ctx *c, int side);
    /* Optional, client only, for a synchronous call API: send the message
     * built in buf() and wait for the reply in one step (then send and
     * recv are not used by the client). */
    const void *(*call)(struct ctx *c);
    /* Optional: the message from recv() is no longer used. The server calls
     * it after sending its reply. */
    void (*done)(struct ctx *c, int side);
    /* Optional: in each child before it exits. The server's runs after the
     * client has its last reply (c->sh->client_done). */
    void (*fini)(struct ctx *c, int side);
    /* Optional: in the orchestrator after both children are gone. */
    void (*teardown)(struct ctx *c);
};

/* Children: who we are, for messages. */
static const char *who_name = "call", *who_side = "";

/* A child's fatal error (bench.h's die_msg prints it through this). */
static void bench_died(const char *msg)
{
    fprintf(stderr, "call: %s%s%s: %s\n", who_name, *who_side ? " " : "",
            who_side, msg);
}

static void die(const char *what) __attribute__((noreturn));
static void die(const char *what)
{
    die_msg("%s: %s", what, strerror(errno));
}

static void read_full(int fd, void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r == 0) {
            die_msg("read: the peer closed");
        } else if (errno == EAGAIN) {
            cpu_relax(); /* poll mode: the descriptor is non-blocking */
        } else if (errno != EINTR) {
            die("read");
        }
    }
}

static void write_full(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r < 0 && errno == EAGAIN) {
            cpu_relax();
        } else if (r < 0 && errno != EINTR) {
            die("write");
        }
    }
}

static long futex(_Atomic uint32_t *word, int op, uint32_t val)
{
    /* Not FUTEX_PRIVATE_FLAG: the word is in memory shared between
     * processes. */
    return syscall(SYS_futex, (uint32_t *)word, op, val, NULL, NULL, 0);
}

/* Private message buffers of the copying transports. */
static unsigned char *txbuf, *rxbuf;

static void alloc_bufs(struct ctx *c)
{
    txbuf = aligned_alloc(64, page_round(c->size));
    rxbuf = aligned_alloc(64, page_round(c->size));
    if (!txbuf || !rxbuf)
        die_msg("out of memory");
    memset(txbuf, 0, c->size);
    memset(rxbuf, 0, c->size);
}

static void *local_buf(struct ctx *c, int side)
{
    (void)c, (void)side;
    return txbuf;
}

/* ------------------------------------------------------------------------ */
/* uds-epoll: the RPAL paper's baseline                                      */
/* ------------------------------------------------------------------------ */

/* A Unix stream socketpair; each side write()s its message. The server
 * waits in epoll_wait, then read()s; the client read()s the reply on its
 * socket (a blocking read; in poll mode a non-blocking read in a loop). In
 * poll mode the server calls epoll_wait with timeout 0 in a loop. */
static struct {
    int sv[2], ep;
} uds = {{-1, -1}, -1};

static const char *uds_waits(const struct ctx *c)
{
    return c->poll ? "server epoll_wait(0) loop + read; client non-blocking read loop"
                   : "server epoll_wait + read; client blocking read";
}

static int uds_setup(struct ctx *c)
{
    int type = SOCK_STREAM | SOCK_CLOEXEC | (c->poll ? SOCK_NONBLOCK : 0);
    if (socketpair(AF_UNIX, type, 0, uds.sv) < 0) {
        snprintf(c->msg, sizeof c->msg, "socketpair: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static void uds_init(struct ctx *c, int side)
{
    alloc_bufs(c);
    close(uds.sv[!side]);
    if (side == SERVER) {
        uds.ep = epoll_create1(EPOLL_CLOEXEC);
        if (uds.ep < 0)
            die("epoll_create1");
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = uds.sv[SERVER]};
        if (epoll_ctl(uds.ep, EPOLL_CTL_ADD, uds.sv[SERVER], &ev) < 0)
            die("epoll_ctl");
    }
}

static void uds_send(struct ctx *c, int side)
{
    write_full(uds.sv[side], txbuf, c->size);
}

static const void *uds_recv(struct ctx *c, int side)
{
    if (side == SERVER) {
        struct epoll_event ev;
        for (;;) {
            int n = epoll_wait(uds.ep, &ev, 1, c->poll ? 0 : -1);
            if (n > 0)
                break;
            if (n < 0 && errno != EINTR)
                die("epoll_wait");
        }
    }
    read_full(uds.sv[side], rxbuf, c->size);
    return rxbuf;
}

static void uds_teardown(struct ctx *c)
{
    (void)c;
    for (int i = 0; i < 2; i++)
        if (uds.sv[i] >= 0)
            close(uds.sv[i]);
    uds.sv[0] = uds.sv[1] = -1;
}

static const struct transport tr_uds = {
    .name = "uds-epoll", .waits = uds_waits, .setup = uds_setup,
    .init = uds_init, .buf = local_buf, .send = uds_send, .recv = uds_recv,
    .teardown = uds_teardown,
};

/* ------------------------------------------------------------------------ */
/* pipe                                                                      */
/* ------------------------------------------------------------------------ */

/* Two pipes, one per direction; blocking read and write (in poll mode the
 * read ends are non-blocking and read in a loop). */
static struct {
    int p[2][2]; /* p[side]: side writes p[side][1], the peer reads p[side][0] */
} pp = {{{-1, -1}, {-1, -1}}};

static const char *pipe_waits(const struct ctx *c)
{
    return c->poll ? "both non-blocking read loop" : "both blocking read";
}

static int pipe_setup(struct ctx *c)
{
    for (int s = 0; s < 2; s++) {
        if (pipe2(pp.p[s], O_CLOEXEC) < 0) {
            snprintf(c->msg, sizeof c->msg, "pipe2: %s", strerror(errno));
            return -1;
        }
        if (c->poll && fcntl(pp.p[s][0], F_SETFL, O_NONBLOCK) < 0) {
            snprintf(c->msg, sizeof c->msg, "fcntl: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void pipe_init(struct ctx *c, int side)
{
    alloc_bufs(c);
    close(pp.p[side][0]);
    close(pp.p[!side][1]);
}

static void pipe_send(struct ctx *c, int side)
{
    write_full(pp.p[side][1], txbuf, c->size);
}

static const void *pipe_recv(struct ctx *c, int side)
{
    read_full(pp.p[!side][0], rxbuf, c->size);
    return rxbuf;
}

static void pipe_teardown(struct ctx *c)
{
    (void)c;
    for (int s = 0; s < 2; s++)
        for (int e = 0; e < 2; e++) {
            if (pp.p[s][e] >= 0)
                close(pp.p[s][e]);
            pp.p[s][e] = -1;
        }
}

static const struct transport tr_pipe = {
    .name = "pipe", .waits = pipe_waits, .setup = pipe_setup,
    .init = pipe_init, .buf = local_buf, .send = pipe_send,
    .recv = pipe_recv, .teardown = pipe_teardown,
};

/* ------------------------------------------------------------------------ */
/* Shared-memory transports: spin-shm, yield-shm, futex-shm, eventfd-shm     */
/* ------------------------------------------------------------------------ */

/* Each side owns one block, written only by it and mapped read-only in the
 * peer. A message is published by writing the payload and then the block's
 * sequence number (release); the receiver waits until the peer's sequence
 * reaches the next value (acquire) and reads the payload in place. A
 * 32-byte message shares its 64-byte line with the sequence number. */
struct shm_block {
    _Atomic uint32_t seq;      /* messages published by the owner; futex word */
    _Atomic uint32_t sleeping; /* futex-shm: the owner sleeps (or is about
                                  to) waiting for the peer's seq */
    uint64_t pad;
    unsigned char payload[];   /* offset 16 */
};

static struct {
    struct shm_block *blk[2];
    size_t len;
    uint32_t sent, seen; /* per process: our seq, the peer's seq consumed */
    int efd[2];          /* eventfd-shm: efd[side] signals side's messages */
} shm = {{NULL, NULL}, 0, 0, 0, {-1, -1}};

static int shm_setup(struct ctx *c)
{
    shm.len = page_round(sizeof(struct shm_block) + c->size);
    for (int s = 0; s < 2; s++) {
        shm.blk[s] = map_shared(shm.len);
        if (!shm.blk[s]) {
            snprintf(c->msg, sizeof c->msg, "mmap: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void shm_init(struct ctx *c, int side)
{
    (void)c;
    /* Principle 2: the peer's block is read-only here (kernel-enforced). */
    if (mprotect(shm.blk[!side], shm.len, PROT_READ) < 0)
        die("mprotect");
    shm.sent = shm.seen = 0;
}

static void *shm_buf(struct ctx *c, int side)
{
    (void)c;
    return shm.blk[side]->payload;
}

static void shm_send_release(struct ctx *c, int side)
{
    (void)c;
    /* Release: the payload written before is visible to whoever sees the new
     * seq; pairs with the acquire load in the receiver's recv. */
    rpal_store_release(&shm.blk[side]->seq, ++shm.sent);
}

static const void *spin_recv(struct ctx *c, int side)
{
    (void)c;
    const struct shm_block *peer = shm.blk[!side];
    uint32_t want = ++shm.seen;
    /* Acquire: pairs with the release store of seq in the sender. */
    while (rpal_load_acquire(&peer->seq) != want)
        cpu_relax();
    return peer->payload;
}

static const void *yield_recv(struct ctx *c, int side)
{
    (void)c;
    const struct shm_block *peer = shm.blk[!side];
    uint32_t want = ++shm.seen;
    while (rpal_load_acquire(&peer->seq) != want) /* pairs as in spin_recv */
        sched_yield();
    return peer->payload;
}

static void futex_send(struct ctx *c, int side)
{
    (void)c;
    struct shm_block *me = shm.blk[side];
    rpal_store_release(&me->seq, ++shm.sent); /* pairs with the acquire in futex_recv */
    /* Dekker with the waiter: our seq store, this fence, then its flag load;
     * it stores its flag, fences, then loads our seq. One of us sees the
     * other's store: it sees the new seq and does not sleep, or we see its
     * flag and wake it. Pairs with the fence in futex_recv. */
    rpal_fence_seq_cst();
    if (rpal_load_relaxed(&shm.blk[!side]->sleeping))
        futex(&me->seq, FUTEX_WAKE, 1);
}

static const void *futex_recv(struct ctx *c, int side)
{
    (void)c;
    const struct shm_block *peer = shm.blk[!side];
    struct shm_block *me = shm.blk[side];
    uint32_t want = ++shm.seen;
    while (rpal_load_acquire(&peer->seq) != want) { /* pairs with futex_send */
        rpal_store_relaxed(&me->sleeping, 1);
        rpal_fence_seq_cst(); /* pairs with the fence in futex_send */
        uint32_t v = rpal_load_relaxed(&peer->seq);
        if (v != want && futex((_Atomic uint32_t *)&peer->seq, FUTEX_WAIT, v) < 0 &&
            errno != EAGAIN && errno != EINTR)
            die("futex wait");
        rpal_store_relaxed(&me->sleeping, 0);
    }
    return peer->payload;
}

static const char *spin_skip(const struct ctx *c)
{
    if (c->mode == MODE_SHARED)
        return "a spinning waiter on the shared CPU holds it until the "
               "scheduler preempts it (ms per call); yield-shm is this "
               "mode's floor";
    return NULL;
}

static const char *spin_waits(const struct ctx *c)
{
    (void)c;
    return "both spin on the peer's seq (pause)";
}

static const char *yield_waits(const struct ctx *c)
{
    (void)c;
    return "both sched_yield() between checks of the peer's seq";
}

static const char *futex_waits(const struct ctx *c)
{
    (void)c;
    return "both FUTEX_WAIT on the peer's seq; wake only a sleeper";
}

static void shm_teardown(struct ctx *c)
{
    (void)c;
    for (int s = 0; s < 2; s++) {
        if (shm.blk[s])
            munmap(shm.blk[s], shm.len);
        shm.blk[s] = NULL;
        if (shm.efd[s] >= 0)
            close(shm.efd[s]);
        shm.efd[s] = -1;
    }
}

static const struct transport tr_spin = {
    .name = "spin-shm", .skip = spin_skip, .waits = spin_waits,
    .setup = shm_setup, .init = shm_init, .buf = shm_buf,
    .send = shm_send_release, .recv = spin_recv, .teardown = shm_teardown,
};

static const struct transport tr_yield = {
    .name = "yield-shm", .waits = yield_waits, .setup = shm_setup,
    .init = shm_init, .buf = shm_buf, .send = shm_send_release,
    .recv = yield_recv, .teardown = shm_teardown,
};

static const struct transport tr_futex = {
    .name = "futex-shm", .waits = futex_waits, .setup = shm_setup,
    .init = shm_init, .buf = shm_buf, .send = futex_send,
    .recv = futex_recv, .teardown = shm_teardown,
};

/* eventfd-shm: the payload in the shared blocks above, an eventfd per
 * direction to signal; the waiter blocks in read(eventfd) (poll mode: a
 * non-blocking read in a loop). */
static const char *efd_waits(const struct ctx *c)
{
    return c->poll ? "both non-blocking read(eventfd) loop; payload in place"
                   : "both blocking read(eventfd); payload in place";
}

static int efd_setup(struct ctx *c)
{
    int err = shm_setup(c);
    if (err)
        return err;
    for (int s = 0; s < 2; s++) {
        shm.efd[s] = eventfd(0, EFD_CLOEXEC | (c->poll ? EFD_NONBLOCK : 0));
        if (shm.efd[s] < 0) {
            snprintf(c->msg, sizeof c->msg, "eventfd: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void efd_send(struct ctx *c, int side)
{
    shm_send_release(c, side);
    uint64_t one = 1;
    write_full(shm.efd[side], &one, sizeof one);
}

static const void *efd_recv(struct ctx *c, int side)
{
    (void)c;
    uint64_t n;
    read_full(shm.efd[!side], &n, sizeof n);
    const struct shm_block *peer = shm.blk[!side];
    uint32_t want = ++shm.seen;
    /* The eventfd orders the payload before us; the acquire load checks it
     * (pairs with the release in shm_send_release). */
    uint32_t got = rpal_load_acquire(&peer->seq);
    if (got != want)
        die_msg("eventfd said ready, but seq is %u, not %u", got, want);
    return peer->payload;
}

static const struct transport tr_efd = {
    .name = "eventfd-shm", .waits = efd_waits, .setup = efd_setup,
    .init = shm_init, .buf = shm_buf, .send = efd_send, .recv = efd_recv,
    .teardown = shm_teardown,
};

/* ------------------------------------------------------------------------ */
/* zeromq: REQ/REP over ipc://, libzmq loaded at run time                    */
/* ------------------------------------------------------------------------ */

#define FN_PTR(f) __typeof__(&f) f;
#define FN_LOAD(f)                                                            \
    if (!(lib->f = (__typeof__(lib->f))dlsym(h, #f))) {                       \
        snprintf(why, sizeof why, "%s: no symbol %s", soname, #f);           \
        return why;                                                           \
    }

#ifdef HAVE_ZMQ
#define ZMQ_FUNCS(X)                                                          \
    X(zmq_ctx_new) X(zmq_ctx_term) X(zmq_socket) X(zmq_close) X(zmq_bind)     \
    X(zmq_connect) X(zmq_send) X(zmq_recv) X(zmq_setsockopt) X(zmq_strerror)
static struct {
    int loaded;
    ZMQ_FUNCS(FN_PTR)
} zq;
static struct {
    void *ctx, *sock;
    char path[108], endpoint[128];
} zs;

static const char *zmq_load(void)
{
    static char why[300];
    const char *soname = "libzmq.so.5";
    if (zq.loaded)
        return NULL;
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(why, sizeof why, "%s (Debian package libzmq5)", dlerror());
        return why;
    }
    __typeof__(&zq) lib = &zq;
    ZMQ_FUNCS(FN_LOAD)
    zq.loaded = 1;
    return NULL;
}

static void zmq_die(const char *what)
{
    die_msg("%s: %s", what, zq.zmq_strerror(errno));
}

static const char *zmq_skip(const struct ctx *c)
{
    (void)c;
    return zmq_load();
}

static const char *zmq_waits(const struct ctx *c)
{
    (void)c;
    /* zmq_recv(ZMQ_DONTWAIT) in a loop would starve the process's own I/O
     * thread, which is pinned to the same CPU: blocking in every mode. */
    return "both blocking zmq_recv (REQ/REP; an I/O thread per process)";
}

static int zmq_setup(struct ctx *c)
{
    snprintf(zs.path, sizeof zs.path, "/tmp/rpal-bench-call-%d.ipc", (int)getpid());
    snprintf(zs.endpoint, sizeof zs.endpoint, "ipc://%s", zs.path);
    unlink(zs.path);
    (void)c;
    return 0;
}

static void zmq_init_side(struct ctx *c, int side)
{
    alloc_bufs(c);
    zs.ctx = zq.zmq_ctx_new(); /* its I/O thread inherits our CPU */
    if (!zs.ctx)
        zmq_die("zmq_ctx_new");
    zs.sock = zq.zmq_socket(zs.ctx, side == SERVER ? ZMQ_REP : ZMQ_REQ);
    if (!zs.sock)
        zmq_die("zmq_socket");
    /* The server's last reply may still be queued for the I/O thread when
     * it closes: linger until it is delivered (but not forever). */
    int linger = 10000;
    zq.zmq_setsockopt(zs.sock, ZMQ_LINGER, &linger, sizeof linger);
    if (side == SERVER ? zq.zmq_bind(zs.sock, zs.endpoint)
                       : zq.zmq_connect(zs.sock, zs.endpoint))
        zmq_die(side == SERVER ? "zmq_bind" : "zmq_connect");
}

static void zmq_send_side(struct ctx *c, int side)
{
    (void)side;
    while (zq.zmq_send(zs.sock, txbuf, c->size, 0) != (int)c->size)
        if (errno != EINTR)
            zmq_die("zmq_send");
}

static const void *zmq_recv_side(struct ctx *c, int side)
{
    (void)side;
    for (;;) {
        int n = zq.zmq_recv(zs.sock, rxbuf, c->size, 0);
        if (n == (int)c->size)
            return rxbuf;
        if (n >= 0)
            die_msg("zmq_recv: %d bytes, not %zu", n, c->size);
        if (errno != EINTR)
            zmq_die("zmq_recv");
    }
}

static void zmq_fini(struct ctx *c, int side)
{
    (void)c, (void)side;
    zq.zmq_close(zs.sock);
    zq.zmq_ctx_term(zs.ctx);
}

static void zmq_teardown(struct ctx *c)
{
    (void)c;
    unlink(zs.path);
}

static const struct transport tr_zmq = {
    .name = "zeromq", .skip = zmq_skip, .waits = zmq_waits,
    .setup = zmq_setup, .init = zmq_init_side, .buf = local_buf,
    .send = zmq_send_side, .recv = zmq_recv_side, .fini = zmq_fini,
    .teardown = zmq_teardown,
};
#else
static const char *zmq_missing(const struct ctx *c)
{
    (void)c;
    return "built without <zmq.h> (Debian package libzmq3-dev)";
}
static const struct transport tr_zmq = {.name = "zeromq", .skip = zmq_missing};
#endif

/* ------------------------------------------------------------------------ */
/* iceoryx: classic request/response through its C binding                  */
/* ------------------------------------------------------------------------ */

#ifdef HAVE_ICEORYX
#define IOX_FUNCS(X)                                                          \
    X(iox_set_loglevel) X(iox_runtime_init) X(iox_runtime_shutdown)          \
    X(iox_client_options_init) X(iox_client_init) X(iox_client_deinit)       \
    X(iox_client_loan_request) X(iox_client_send)                            \
    X(iox_client_get_connection_state) X(iox_client_take_response)           \
    X(iox_client_release_response) X(iox_server_options_init)               \
    X(iox_server_init) X(iox_server_deinit) X(iox_server_take_request)       \
    X(iox_server_release_request) X(iox_server_loan_response)               \
    X(iox_server_send) X(iox_ws_init) X(iox_ws_deinit) X(iox_ws_wait)        \
    X(iox_ws_attach_client_event) X(iox_ws_attach_server_event)
static struct {
    int loaded;
    IOX_FUNCS(FN_PTR)
} ix;

static pid_t roudi_pid; /* the iox-roudi we started, until reaped */
static char roudi_log[64];

static struct {
    char event[64];
    iox_client_storage_t client_st;
    iox_server_storage_t server_st;
    iox_ws_storage_t ws_st;
    iox_client_t client;
    iox_server_t server;
    iox_ws_t ws;
    const void *req;  /* server: the request being answered */
    const void *resp; /* client: the response being read */
    void *out;        /* the loaned outgoing chunk */
} io;

static const char *iox_load(void)
{
    static char why[300];
    const char *soname = "libiceoryx_binding_c.so.2";
    if (ix.loaded)
        return NULL;
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(why, sizeof why, "%s (Debian package libiceoryx-binding-c2)",
                 dlerror());
        return why;
    }
    __typeof__(&ix) lib = &ix;
    IOX_FUNCS(FN_LOAD)
    ix.loaded = 1;
    return NULL;
}

static const char *iox_skip(const struct ctx *c)
{
    (void)c;
    const char *why = iox_load();
    if (why)
        return why;
    if (!find_in_path("iox-roudi"))
        return "iox-roudi not found in PATH (Debian package iceoryx)";
    return NULL;
}

static const char *iox_waits(const struct ctx *c)
{
    return c->poll ? "both take loop (pause); request/response"
                   : "both iox_ws_wait (waitset); request/response";
}

static void stop_roudi(void)
{
    if (roudi_pid > 0) {
        kill(roudi_pid, SIGTERM);
        for (int i = 0; i < 500; i++) { /* 5 s */
            pid_t p = waitpid(roudi_pid, NULL, WNOHANG);
            if (p == roudi_pid || (p < 0 && errno == ECHILD))
                break;
            usleep(10000);
            if (i == 499) {
                kill(roudi_pid, SIGKILL);
                waitpid(roudi_pid, NULL, 0);
            }
        }
        roudi_pid = 0;
    }
    if (roudi_log[0])
        unlink(roudi_log);
    roudi_log[0] = 0;
}

/* The last non-empty line of roudi's log, for a skip reason. */
static void roudi_last_line(char *out, size_t len)
{
    char buf[4096];
    FILE *f = fopen(roudi_log, "r");
    out[0] = 0;
    if (!f)
        return;
    while (fgets(buf, sizeof buf, f))
        if (strspn(buf, " \t\r\n") < strlen(buf)) {
            buf[strcspn(buf, "\r\n")] = 0;
            snprintf(out, len, "%s", buf);
        }
    fclose(f);
}

static int iox_setup(struct ctx *c)
{
    snprintf(io.event, sizeof io.event, "call-%d", (int)getpid());
    snprintf(roudi_log, sizeof roudi_log, "/tmp/rpal-bench-roudi-XXXXXX");
    int fd = mkstemp(roudi_log);
    if (fd < 0) {
        roudi_log[0] = 0;
        snprintf(c->msg, sizeof c->msg, "mkstemp: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(c->msg, sizeof c->msg, "fork: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fd, 1);
        dup2(fd, 2);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        execlp("iox-roudi", "iox-roudi", (char *)NULL);
        _exit(127);
    }
    close(fd);
    roudi_pid = pid;
    /* Ready when it says so (10 s at most). */
    for (int i = 0; i < 1000; i++) {
        char buf[8192];
        FILE *f = fopen(roudi_log, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        if (strstr(buf, "RouDi is ready for clients"))
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            char line[200];
            roudi_pid = 0;
            roudi_last_line(line, sizeof line);
            snprintf(c->msg, sizeof c->msg,
                     "iox-roudi exited (%s) before it was ready: %s",
                     WIFEXITED(st) ? "status" : "signal",
                     line[0] ? line : "no output (another RouDi running?)");
            stop_roudi();
            return 1;
        }
        usleep(10000);
    }
    snprintf(c->msg, sizeof c->msg, "iox-roudi was not ready after 10 s");
    stop_roudi();
    return 1;
}

static void iox_init(struct ctx *c, int side)
{
    char name[64];
    snprintf(name, sizeof name, "rpal-bench-%s-%d",
             side == SERVER ? "server" : "client", (int)getpid());
    ix.iox_set_loglevel(Iceoryx_LogLevel_Warn);
    ix.iox_runtime_init(name);
    if (!c->poll)
        io.ws = ix.iox_ws_init(&io.ws_st);
    if (side == SERVER) {
        iox_server_options_t o;
        ix.iox_server_options_init(&o);
        o.offerOnCreate = true;
        io.server = ix.iox_server_init(&io.server_st, "rpal-bench", "call",
                                       io.event, &o);
        if (!io.server)
            die_msg("iox_server_init failed");
        if (io.ws && ix.iox_ws_attach_server_event(io.ws, io.server,
                                                   ServerEvent_REQUEST_RECEIVED,
                                                   0, NULL) != WaitSetResult_SUCCESS)
            die_msg("iox_ws_attach_server_event failed");
    } else {
        iox_client_options_t o;
        ix.iox_client_options_init(&o);
        o.connectOnCreate = true;
        io.client = ix.iox_client_init(&io.client_st, "rpal-bench", "call",
                                       io.event, &o);
        if (!io.client)
            die_msg("iox_client_init failed");
        if (io.ws && ix.iox_ws_attach_client_event(io.ws, io.client,
                                                   ClientEvent_RESPONSE_RECEIVED,
                                                   0, NULL) != WaitSetResult_SUCCESS)
            die_msg("iox_ws_attach_client_event failed");
    }
}

static void iox_connect(struct ctx *c, int side)
{
    (void)c;
    if (side == SERVER)
        return;
    for (int i = 0; i < 10000; i++) { /* 10 s */
        if (ix.iox_client_get_connection_state(io.client) == ConnectionState_CONNECTED)
            return;
        usleep(1000);
    }
    die_msg("the client did not connect to the server in 10 s");
}

static void *iox_buf(struct ctx *c, int side)
{
    enum iox_AllocationResult r =
        side == SERVER
            ? ix.iox_server_loan_response(io.server, io.req, &io.out, (uint32_t)c->size)
            : ix.iox_client_loan_request(io.client, &io.out, (uint32_t)c->size);
    if (r != AllocationResult_SUCCESS)
        die_msg("loaning a %zu-byte chunk failed (%d)", c->size, (int)r);
    return io.out;
}

static void iox_send(struct ctx *c, int side)
{
    (void)c;
    if (side == SERVER) {
        enum iox_ServerSendResult r = ix.iox_server_send(io.server, io.out);
        if (r != ServerSendResult_SUCCESS)
            die_msg("iox_server_send: %d", (int)r);
    } else {
        enum iox_ClientSendResult r = ix.iox_client_send(io.client, io.out);
        if (r != ClientSendResult_SUCCESS)
            die_msg("iox_client_send: %d", (int)r);
    }
}

static void iox_wait(void)
{
    iox_notification_info_t ni[2];
    uint64_t missed = 0;
    ix.iox_ws_wait(io.ws, ni, 2, &missed);
}

static const void *iox_recv(struct ctx *c, int side)
{
    for (;;) {
        if (side == SERVER) {
            enum iox_ServerRequestResult r = ix.iox_server_take_request(io.server, &io.req);
            if (r == ServerRequestResult_SUCCESS)
                return io.req;
            if (r != ServerRequestResult_NO_PENDING_REQUESTS)
                die_msg("iox_server_take_request: %d", (int)r);
        } else {
            enum iox_ChunkReceiveResult r = ix.iox_client_take_response(io.client, &io.resp);
            if (r == ChunkReceiveResult_SUCCESS)
                return io.resp;
            if (r != ChunkReceiveResult_NO_CHUNK_AVAILABLE)
                die_msg("iox_client_take_response: %d", (int)r);
        }
        if (c->poll)
            cpu_relax();
        else
            iox_wait();
    }
}

static void iox_done(struct ctx *c, int side)
{
    (void)c;
    if (side == SERVER)
        ix.iox_server_release_request(io.server, io.req);
    else
        ix.iox_client_release_response(io.client, io.resp);
}

static void iox_fini(struct ctx *c, int side)
{
    (void)c;
    if (io.ws)
        ix.iox_ws_deinit(io.ws);
    if (side == SERVER)
        ix.iox_server_deinit(io.server);
    else
        ix.iox_client_deinit(io.client);
    ix.iox_runtime_shutdown();
}

static void iox_teardown(struct ctx *c)
{
    (void)c;
    stop_roudi();
}

static const struct transport tr_iox = {
    .name = "iceoryx", .skip = iox_skip, .waits = iox_waits,
    .setup = iox_setup, .init = iox_init, .connect = iox_connect,
    .buf = iox_buf, .send = iox_send, .recv = iox_recv, .done = iox_done,
    .fini = iox_fini, .teardown = iox_teardown,
};
#else
static void stop_roudi(void) {}
static const char *iox_missing(const struct ctx *c)
{
    (void)c;
    return "built without the iceoryx C binding headers (Debian package "
           "libiceoryx-binding-c-dev; -I/usr/include/iceoryx/v2.0.3)";
}
static const struct transport tr_iox = {.name = "iceoryx", .skip = iox_missing};
#endif

/* ------------------------------------------------------------------------ */
/* rpal: the call (src/channel.c)                                            */
/* ------------------------------------------------------------------------ */

#ifdef RPAL_HAVE_CALL
/* ===== RPAL TRANSPORT =====
 * The client calls with rpal_call; the server answers on its main thread
 * with rpal_receive + rpal_reply. Server init: join the domain, register a
 * service named for this run, create the receiver, publish "NAME KEY" in
 * c->sh->scratch. Client connect: request the service, open a channel. The
 * server's connect answers the handshakes (rpal_domain_dispatch) until the
 * client is connected. Wait policy by mode: poll -> RPAL_WAIT_POLL;
 * shared-core and idle -> the default (RPAL_WAIT_ADAPTIVE), which finds out
 * by itself that the other side runs on its CPU (it yields instead of
 * spinning) or that waits are long (it sleeps at once, and its receiver
 * follows the caller's CPU). The request is
 * built in the client's own slot (rpal_malloc): passed in the ring up to
 * RPAL_INLINE_MAX bytes, by pointer (zero copy) above. rpal_call copies the
 * reply into a private buffer, as read() does for the kernel transports. */
#define RPAL_BENCH_DOMAIN "bench-call"
#define RPAL_BENCH_TIMEOUT_MS 10000

static struct {
    char service[64];
    struct bench_rpal b;
    unsigned char *req;
} rp;

static struct rpal_chan_opts rpal_bench_opts(int mode)
{
    struct rpal_chan_opts o = {.wait = RPAL_WAIT_ADAPTIVE};
    if (mode == MODE_POLL)
        o.wait = RPAL_WAIT_POLL;
    return o;
}

static const char *rpal_waits(const struct ctx *c)
{
    return c->mode == MODE_POLL     ? "rpal_call / rpal_receive, RPAL_WAIT_POLL"
           : c->mode == MODE_SHARED ? "rpal_call / rpal_receive, default wait (finds the shared CPU: yields)"
                                    : "rpal_call / rpal_receive, default wait (learns to sleep; follows the caller)";
}

static int rpal_setup(struct ctx *c)
{
    (void)c;
    snprintf(rp.service, sizeof rp.service, "call-%d", (int)getpid());
    return 0;
}

/* Join, register, publish "NAME KEY" in SCRATCH (server); join (client). */
static void rpal_join_side(int side, int mode, char *scratch, size_t len)
{
    struct rpal_chan_opts o = rpal_bench_opts(mode);
    if (side == SERVER)
        bench_rpal_serve(&rp.b, RPAL_BENCH_DOMAIN, rp.service, &o, scratch, len);
    else
        bench_rpal_join(RPAL_BENCH_DOMAIN, &rp.b);
}

/* Client: request the service named in SCRATCH and open a channel. */
static void rpal_open_side(int mode, unsigned depth, const char *scratch)
{
    struct rpal_chan_opts o = rpal_bench_opts(mode);
    o.depth = depth;
    bench_rpal_open(&rp.b, scratch, &o, RPAL_BENCH_TIMEOUT_MS);
}

/* Server: answer handshakes until FLAG is set (30 s at most). */
static void rpal_dispatch_until(_Atomic int *flag)
{
    bench_rpal_dispatch_until(&rp.b, flag, 30);
}

static void rpal_init(struct ctx *c, int side)
{
    alloc_bufs(c);
    rpal_join_side(side, c->mode, c->sh->scratch, sizeof c->sh->scratch);
    if (side == CLIENT) {
        rp.req = rpal_malloc(c->size);
        if (!rp.req)
            die_msg("rpal_malloc(%zu) failed", c->size);
        memset(rp.req, 0, c->size);
    }
}

static void rpal_connect(struct ctx *c, int side)
{
    if (side == SERVER)
        rpal_dispatch_until(&c->sh->client_ready);
    else
        rpal_open_side(c->mode, 0, c->sh->scratch);
}

static void *rpal_buf(struct ctx *c, int side)
{
    (void)c;
    return side == CLIENT ? rp.req : txbuf;
}

static const void *rpal_call_side(struct ctx *c)
{
    size_t len;
    int err = rpal_call(rp.b.chan, rp.req, c->size, rxbuf, c->size, &len,
                        RPAL_BENCH_TIMEOUT_MS);
    if (err < 0)
        rpal_die("rpal_call", err);
    if (len != c->size)
        die_msg("rpal_call: a %zu-byte reply, not %zu", len, c->size);
    return rxbuf;
}

/* Server only: the client uses rpal_call_side. */
static void rpal_send_side(struct ctx *c, int side)
{
    (void)side;
    int err = rpal_reply(rp.b.r, &rp.b.m, txbuf, c->size);
    if (err < 0)
        rpal_die("rpal_reply", err);
}

static const void *rpal_recv_side(struct ctx *c, int side)
{
    (void)side;
    return bench_rpal_receive(&rp.b, c->size, RPAL_BENCH_TIMEOUT_MS);
}

static void rpal_fini(struct ctx *c, int side)
{
    (void)c;
    if (side == CLIENT)
        rpal_free(rp.req);
    bench_rpal_fini(&rp.b);
}

static const struct transport tr_rpal = {
    .name = "rpal", .waits = rpal_waits, .setup = rpal_setup,
    .init = rpal_init, .connect = rpal_connect, .buf = rpal_buf,
    .send = rpal_send_side, .recv = rpal_recv_side, .call = rpal_call_side,
    .fini = rpal_fini,
};

/* rpal-serve: the same, but the service is one loop on one thread
 * (rpal_serve): the handshakes and the requests come through the same call,
 * as a service that has no second thread runs. */
static const char *rpal_serve_waits(const struct ctx *c)
{
    (void)c;
    return "rpal_call / rpal_serve (one loop: requests and the domain's events), as rpal";
}

static int serve_stashed; /* the first request came while connecting */

static void rpal_serve_connect(struct ctx *c, int side)
{
    if (side == CLIENT) {
        rpal_open_side(c->mode, 0, c->sh->scratch);
        return;
    }
    int64_t end = mono_ns() + 30 * 1000000000LL;
    while (!rpal_load_acquire(&c->sh->client_ready)) { /* pairs with the client's release */
        struct rpal_event ev;
        int err = rpal_serve(rp.b.r, &rp.b.m, &ev, 5);
        if (err == RPAL_SERVE_MSG) { /* the client calls right after it opens */
            serve_stashed = 1;
            return;
        }
        if (err < 0 && err != -ETIMEDOUT && err != -EINTR)
            rpal_die("rpal_serve", err);
        if (mono_ns() > end)
            die_msg("the client did not connect in 30 s");
    }
}

static const void *rpal_serve_recv(struct ctx *c, int side)
{
    (void)side;
    for (;;) {
        struct rpal_event ev;
        int err = serve_stashed ? RPAL_SERVE_MSG
                                : rpal_serve(rp.b.r, &rp.b.m, &ev, RPAL_BENCH_TIMEOUT_MS);
        serve_stashed = 0;
        if (err == RPAL_SERVE_EVENT || err == -EINTR)
            continue;
        if (err < 0)
            rpal_die("rpal_serve", err);
        if (rp.b.m.len != c->size)
            die_msg("rpal_serve: a %zu-byte request, not %zu", rp.b.m.len, c->size);
        return rp.b.m.data;
    }
}

static const struct transport tr_rpal_serve = {
    .name = "rpal-serve", .waits = rpal_serve_waits, .setup = rpal_setup,
    .init = rpal_init, .connect = rpal_serve_connect, .buf = rpal_buf,
    .send = rpal_send_side, .recv = rpal_serve_recv, .call = rpal_call_side,
    .fini = rpal_fini,
};
#else
static const char *rpal_missing(const struct ctx *c)
{
    (void)c;
    return "the rpal call path is not built yet (RPAL_HAVE_CALL undefined)";
}
static const struct transport tr_rpal = {.name = "rpal", .skip = rpal_missing};
static const struct transport tr_rpal_serve = {.name = "rpal-serve", .skip = rpal_missing};
#endif

static const struct transport *const transports[] = {
    &tr_rpal, /* RPAL_HAVE_CALL: the real entry, else listed as skipped */
    &tr_rpal_serve, &tr_uds, &tr_pipe, &tr_efd, &tr_spin, &tr_yield, &tr_futex, &tr_zmq,
    &tr_iox,
};
#define NTRANSPORTS (sizeof transports / sizeof transports[0])

/* ------------------------------------------------------------------------ */
/* The harness: client and server loops, the orchestrator                    */
/* ------------------------------------------------------------------------ */

/* The payload after the stamp: a fixed pattern, copied in before stamping. */
static unsigned char *pattern;

static void client_loop(const struct transport *T, struct ctx *c)
{
    struct shared *sh = c->sh;
    long total = c->warm + c->count;
    int idle = c->mode == MODE_IDLE;
    int64_t t0 = mono_ns(), cpu0 = cpu_ns(), next = t0;
    for (long i = 0; i < total; i++) {
        if (idle) {
            struct timespec ts = {next / 1000000000, next % 1000000000};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
            next = mono_ns() + IDLE_GAP_NS;
        }
        unsigned char *p = T->buf(c, CLIENT);
        if (!p)
            die_msg("no buffer to send call %ld", i);
        memcpy(p + 8, pattern + 8, c->size - 8);
        uint64_t stamp = tsc_send();
        memcpy(p, &stamp, 8);
        const unsigned char *q;
        if (T->call) {
            q = T->call(c);
        } else {
            T->send(c, CLIENT);
            q = T->recv(c, CLIENT);
        }
        if (!q)
            die_msg("no reply to call %ld", i);
        uint64_t echo;
        memcpy(&echo, q, 8);
        if (echo != stamp)
            die_msg("the reply to call %ld echoes %" PRIx64 ", not its stamp %" PRIx64,
                    i, echo, stamp);
        if (T->done)
            T->done(c, CLIENT);
        if (i + 1 == c->warm) {
            t0 = mono_ns();
            cpu0 = cpu_ns();
        }
    }
    sh->client_wall_ns = mono_ns() - t0;
    sh->client_cpu_ns = cpu_ns() - cpu0;
}

static void server_loop(const struct transport *T, struct ctx *c)
{
    struct shared *sh = c->sh;
    long total = c->warm + c->count, neg = 0;
    int64_t cpu0 = cpu_ns();
    for (long i = 0; i < total; i++) {
        const unsigned char *m = T->recv(c, SERVER);
        uint64_t now = tsc_recv();
        if (!m)
            die_msg("no message %ld", i);
        uint64_t stamp;
        memcpy(&stamp, m, 8);
        int64_t d = (int64_t)(now - stamp);
        if (i >= c->warm) {
            sh->lat[i - c->warm] = d;
            neg += d < 0;
        }
        unsigned char *p = T->buf(c, SERVER);
        if (!p)
            die_msg("no buffer to reply to %ld", i);
        memcpy(p + 8, pattern + 8, c->size - 8);
        memcpy(p, &stamp, 8);
        T->send(c, SERVER);
        if (T->done)
            T->done(c, SERVER);
        if (i + 1 == c->warm)
            cpu0 = cpu_ns();
    }
    sh->server_cpu_ns = cpu_ns() - cpu0;
    sh->negatives = neg;
}

static void child_main(const struct transport *T, struct ctx *c, int side,
                       int cpu)
{
    who_name = T->name;
    who_side = side == SERVER ? "server" : "client";
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(2, 1); /* stdout is the orchestrator's results only */
    signal(SIGALRM, SIG_DFL);
    if (pin_cpu(cpu) < 0)
        die("sched_setaffinity");
    if (c->mode == MODE_IDLE)
        prctl(PR_SET_TIMERSLACK, 1UL); /* sleep 100 us, not 150 */
    if (c->mode == MODE_IDLE && side == SERVER && ncpus_ok == 2) {
        /* Started on its own CPU, but free to run on the client's, as a
         * server that nobody pinned is: the kernel may move it there at a
         * wake-up, and so may the transport (rpal's receiver follows its
         * caller while it sleeps). Every transport alike. */
        cpu_set_t both;
        CPU_ZERO(&both);
        CPU_SET(cpu_a, &both);
        CPU_SET(cpu_b, &both);
        if (sched_setaffinity(0, sizeof both, &both) < 0)
            die("sched_setaffinity");
    }
    if (side == SERVER) {
        /* Fault the latency array in now, not during the calls. */
        memset(c->sh->lat, 0, (size_t)c->count * sizeof c->sh->lat[0]);
        T->init(c, side);
        /* Release: what init published (scratch) is visible to the client
         * once it sees the flag; pairs with the acquire load below. */
        rpal_store_release(&c->sh->server_ready, 1);
    } else {
        int64_t end = mono_ns() + 30 * 1000000000LL;
        while (!rpal_load_acquire(&c->sh->server_ready)) {
            if (mono_ns() > end)
                die_msg("the server was not ready in 30 s");
            usleep(100);
        }
        T->init(c, side);
    }
    if (T->connect)
        T->connect(c, side);
    if (side == SERVER) {
        server_loop(T, c);
        /* Stay until the client has taken the last reply: closing may throw
         * away a reply still on its way (zmq) or unmap it (rpal). */
        int64_t end = mono_ns() + 30 * 1000000000LL;
        while (!rpal_load_acquire(&c->sh->client_done) && mono_ns() < end)
            usleep(100);
    } else {
        /* Release, both: pair with the server's acquire loads (in its
         * connect, and in the wait above). */
        rpal_store_release(&c->sh->client_ready, 1);
        client_loop(T, c);
        rpal_store_release(&c->sh->client_done, 1);
    }
    if (T->fini)
        T->fini(c, side);
    /* exit, not _exit: libraries' destructors run (iceoryx's runtime
     * unregisters from RouDi in its own). Our stdio was flushed before the
     * fork. */
    exit(0);
}

#ifdef HAVE_ICEORYX
static void roudi_reaped(pid_t pid)
{
    if (pid == roudi_pid)
        roudi_pid = 0;
}
#else
#define roudi_reaped NULL
#endif

/* Wait for both children; if one fails, kill the other. Returns 0 if both
 * exited 0, else -1 with WHY. */
static int wait_pair(pid_t a, pid_t b, const char *const names[2], int timeout_s,
                     char *why, size_t len)
{
    pid_t pids[2] = {a, b};
    return bench_wait_pair(pids, names, NULL, timeout_s, NULL, roudi_reaped, why, len);
}

struct result {
    const char *name;
    const char *waits;
    int mode;
    int status;           /* 0 ran, 1 skipped, -1 failed */
    char why[300];
    double p50c, p99c, p50ns, p99ns, calls_s, cpu_ns;
    double c2c;           /* probe_c2c() just before, ns (0: not measured) */
    int64_t *lat;         /* sorted, in ticks; for the plot */
    long n, negatives;
};

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double hz;
static double probe_c2c(void);

static void run_latency(const struct transport *T, const struct opts *o,
                        int mode, long count, struct result *r)
{
    memset(r, 0, sizeof *r);
    r->name = T->name;
    r->mode = mode;
    struct ctx c = {.name = T->name, .mode = mode, .size = o->size,
                    .warm = count / 10, .count = count};
    c.poll = o->wait >= 0 ? o->wait : mode == MODE_POLL;
    const char *why = NULL;
    if (mode != MODE_SHARED && ncpus_ok < 2)
        why = "this mode needs two CPUs";
    if (!why && T->skip)
        why = T->skip(&c);
    if (why) {
        r->status = 1;
        snprintf(r->why, sizeof r->why, "%s", why);
        return;
    }
    r->waits = T->waits ? T->waits(&c) : "";
    size_t shlen = page_round(sizeof(struct shared) + (size_t)count * sizeof(int64_t));
    c.sh = map_shared(shlen);
    if (!c.sh) {
        r->status = -1;
        snprintf(r->why, sizeof r->why, "mmap: %s", strerror(errno));
        return;
    }
    int rc = T->setup ? T->setup(&c) : 0;
    if (rc) {
        r->status = rc > 0 ? 1 : -1;
        snprintf(r->why, sizeof r->why, "%s", c.msg);
        if (T->teardown)
            T->teardown(&c);
        munmap(c.sh, shlen);
        return;
    }
    int64_t start = mono_ns();
    if (mode != MODE_SHARED)
        r->c2c = probe_c2c();
    fflush(NULL);
    int scpu = mode == MODE_SHARED ? cpu_a : cpu_b;
    pid_t server = fork();
    if (server == 0)
        child_main(T, &c, SERVER, scpu);
    pid_t client = server < 0 ? -1 : fork();
    if (client == 0)
        child_main(T, &c, CLIENT, cpu_a);
    if (server < 0 || client < 0) {
        r->status = -1;
        snprintf(r->why, sizeof r->why, "fork: %s", strerror(errno));
        if (server > 0) {
            kill(server, SIGKILL);
            waitpid(server, NULL, 0);
        }
    } else {
        int timeout = 30 + (int)((c.warm + count) / 1000);
        static const char *const names[2] = {"server", "client"};
        if (wait_pair(server, client, names, timeout, r->why, sizeof r->why) < 0)
            r->status = -1;
    }
    if (T->teardown)
        T->teardown(&c);
    if (r->status == 0) {
        long n = count;
        r->lat = malloc((size_t)n * sizeof(int64_t));
        if (!r->lat) {
            r->status = -1;
            snprintf(r->why, sizeof r->why, "out of memory");
        } else {
            memcpy(r->lat, c.sh->lat, (size_t)n * sizeof(int64_t));
            qsort(r->lat, (size_t)n, sizeof(int64_t), cmp_i64);
            r->n = n;
            r->p50c = (double)r->lat[n / 2];
            r->p99c = (double)r->lat[(long)((double)n * 0.99)];
            r->p50ns = r->p50c * 1e9 / hz;
            r->p99ns = r->p99c * 1e9 / hz;
            r->calls_s = c.sh->client_wall_ns > 0
                             ? (double)n * 1e9 / (double)c.sh->client_wall_ns : 0;
            r->cpu_ns = (double)(c.sh->client_cpu_ns + c.sh->server_cpu_ns) / (double)n;
            r->negatives = c.sh->negatives;
        }
    }
    munmap(c.sh, shlen);
    fprintf(stderr, "call: %-11s %-11s %s (%.1f s)\n", T->name, mode_names[mode],
            r->status == 0 ? "done" : r->status > 0 ? "skipped" : "FAILED",
            (double)(mono_ns() - start) / 1e9);
    if (r->negatives)
        fprintf(stderr, "call: %s: %ld calls were received before they were "
                        "sent by the %s: the CPUs' clocks are not in sync\n",
                T->name, r->negatives, CLOCK_NAME);
}

/* ------------------------------------------------------------------------ */
/* Output                                                                    */
/* ------------------------------------------------------------------------ */

static void print_result(const struct result *r, const struct opts *o)
{
    if (o->json) {
        printf("{\"transport\":");
        json_str(r->name);
        if (r->status) {
            json_not_run(r->status > 0, r->why);
            return;
        }
        printf(",\"mode\":\"%s\",\"size\":%zu,\"p50_cycles\":%.0f,"
               "\"p99_cycles\":%.0f,\"p50_ns\":%.1f,\"p99_ns\":%.1f,"
               "\"calls_per_s\":%.0f,\"cpu_ns_per_call\":%.1f}\n",
               mode_names[r->mode], o->size, r->p50c, r->p99c, r->p50ns,
               r->p99ns, r->calls_s, r->cpu_ns);
        return;
    }
    if (r->status) {
        printf("%-12s %-11s %6zu  %s: %s\n", r->name, mode_names[r->mode], o->size,
               r->status > 0 ? "skipped" : "FAILED", r->why);
        return;
    }
    char c2c[16] = "-";
    if (r->c2c > 0)
        snprintf(c2c, sizeof c2c, "%.0f", r->c2c);
    printf("%-12s %-11s %6zu %9.0f %9.0f %9.1f %9.1f %10.0f %10.1f %6s  %s\n",
           r->name, mode_names[r->mode], o->size, r->p50c, r->p99c, r->p50ns,
           r->p99ns, r->calls_s, r->cpu_ns, c2c, r->waits);
}

/* Where the host put our two CPUs: the median round trip of one cache line
 * between them (two processes, 20,000 round trips), in ns; 0 if it cannot
 * be measured. On a VM it changes from run to run (same L3 or not), and
 * every shared-memory number moves with it. */
static double probe_c2c(void)
{
    enum { ROUNDS = 20000 };
    if (ncpus_ok < 2)
        return 0;
    struct probe {
        _Atomic uint32_t ping __attribute__((aligned(64)));
        _Atomic uint32_t pong __attribute__((aligned(64)));
        int64_t rtt[ROUNDS];
    } *pr = map_shared(page_round(sizeof *pr));
    if (!pr)
        return 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (pin_cpu(cpu_b) < 0)
            _exit(1);
        for (uint32_t i = 1; i <= ROUNDS; i++) {
            while (rpal_load_acquire(&pr->ping) != i) /* pairs with the release below */
                cpu_relax();
            rpal_store_release(&pr->pong, i); /* pairs with the acquire below */
        }
        _exit(0);
    }
    double v = 0;
    if (pid > 0) {
        cpu_set_t old;
        sched_getaffinity(0, sizeof old, &old);
        pin_cpu(cpu_a);
        for (uint32_t i = 1; i <= ROUNDS; i++) {
            uint64_t t = tsc_send();
            rpal_store_release(&pr->ping, i);
            while (rpal_load_acquire(&pr->pong) != i)
                cpu_relax();
            pr->rtt[i - 1] = (int64_t)(tsc_recv() - t);
        }
        sched_setaffinity(0, sizeof old, &old);
        int st;
        waitpid(pid, &st, 0);
        qsort(pr->rtt, ROUNDS, sizeof pr->rtt[0], cmp_i64);
        v = (double)pr->rtt[ROUNDS / 2] * 1e9 / hz;
    }
    munmap(pr, page_round(sizeof *pr));
    return v;
}

/* A header: what the numbers are and what they were taken on. On stdout
 * for the table, on stderr with --json. */
static void print_header(const struct opts *o, FILE *f)
{
    char model[256] = "unknown CPU", line[4096];
    int ctsc = 0, ntsc = 0;
    FILE *ci = fopen("/proc/cpuinfo", "r");
    if (ci) {
        while (fgets(line, sizeof line, ci)) {
            if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
                snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
                model[strcspn(model, "\n")] = 0;
            }
            if (!strncmp(line, "flags", 5)) {
                ctsc = strstr(line, " constant_tsc") != NULL;
                ntsc = strstr(line, " nonstop_tsc") != NULL;
            }
        }
        fclose(ci);
    }
    struct utsname u;
    uname(&u);
    char sib[64] = "";
    snprintf(line, sizeof line,
             "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list", cpu_a);
    FILE *sf = fopen(line, "r");
    if (sf) {
        if (fgets(sib, sizeof sib, sf))
            sib[strcspn(sib, "\n")] = 0;
        fclose(sf);
    }
    fprintf(f, "# %s, Linux %s; client CPU %d, server CPU %d (CPU %d's SMT "
               "siblings: %s)\n",
            model, u.release, cpu_a, cpu_b, cpu_a, sib[0] ? sib : "?");
    double rtt = probe_c2c();
    if (rtt > 0)
        fprintf(f, "# one cache line between CPUs %d and %d: %.0f ns round trip (median; "
                   "it moves with the host's placement of the CPUs, and so does every "
                   "shared-memory number)\n", cpu_a, cpu_b, rtt);
    fprintf(f, "# %s %.1f MHz (calibrated against CLOCK_MONOTONIC over 100 ms)",
            CLOCK_NAME, hz / 1e6);
#if defined(__x86_64__) || defined(__i386__)
    if (ctsc && ntsc)
        fprintf(f, "; constant_tsc nonstop_tsc: invariant, one clock on all CPUs\n");
    else
        fprintf(f, "; WARNING: %s%s missing in /proc/cpuinfo: cross-CPU "
                   "latencies may be skewed\n",
                ctsc ? "" : "constant_tsc ", ntsc ? "" : "nonstop_tsc");
#else
    (void)ctsc, (void)ntsc;
    fprintf(f, "\n");
#endif
    (void)o;
}

static void print_table_head(int mode, const struct opts *o, long count)
{
    char buf[200];
    if (mode == MODE_POLL)
        snprintf(buf, sizeof buf, "client CPU %d, server CPU %d; waiters busy-poll",
                 cpu_a, cpu_b);
    else if (mode == MODE_SHARED)
        snprintf(buf, sizeof buf, "client and server both on CPU %d; waiters "
                 "block or yield", cpu_a);
    else
        snprintf(buf, sizeof buf, "client CPU %d, server started on CPU %d, free to "
                 "run on both; calls start 100 us apart, waiters block", cpu_a, cpu_b);
    printf("\nmode %s: %s\n%zu-byte messages, %ld calls after %ld warm-up; "
           "one-way latency (send stamp to receipt);\ncalls/s over the "
           "client's wall time; CPU of both processes per call; c2c: one cache\n"
           "line's round trip between the two CPUs just before (where the host "
           "placed them)\n",
           mode_names[mode], buf, o->size, count, count / 10);
    printf("%-12s %-11s %6s %9s %9s %9s %9s %10s %10s %6s  %s\n", "transport",
           "mode", "size", "p50 cyc", "p99 cyc", "p50 ns", "p99 ns", "calls/s",
           "cpu ns/call", "c2c ns", "how they wait");
}

/* ------------------------------------------------------------------------ */
/* --plot: latency CDFs with gnuplot                                         */
/* ------------------------------------------------------------------------ */

/* Write FILE (with "-MODE" before the extension when MULTI) from the results
 * of one mode: the per-call latencies go to temp files, gnuplot draws their
 * CDFs. Returns 0, or -1 with a message printed. */
static int plot(const char *file, int multi, int mode, const struct opts *o,
                const struct result *res, int nres, long count)
{
    if (!find_in_path("gnuplot")) {
        fprintf(stderr, "call: --plot: gnuplot is missing (Debian package "
                        "gnuplot-nox); no plot written\n");
        return -1;
    }
    char out[4096];
    const char *dot = strrchr(file, '.');
    if (multi && dot && !strchr(dot, '/'))
        snprintf(out, sizeof out, "%.*s-%s%s", (int)(dot - file), file,
                 mode_names[mode], dot);
    else if (multi)
        snprintf(out, sizeof out, "%s-%s", file, mode_names[mode]);
    else
        snprintf(out, sizeof out, "%s", file);
    if (strchr(out, '\'')) {
        fprintf(stderr, "call: --plot: no quote in the file name, please\n");
        return -1;
    }
    char dir[] = "/tmp/rpal-bench-plot-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("call: mkdtemp");
        return -1;
    }
    char path[4200], script[4200], cmd[8192];
    size_t cl = 0;
    int nplots = 0;
    cmd[0] = 0;
    for (int k = 0; k < nres; k++) {
        const struct result *r = &res[k];
        if (r->status || !r->n)
            continue;
        snprintf(path, sizeof path, "%s/%d.dat", dir, k);
        FILE *d = fopen(path, "w");
        if (!d)
            continue;
        /* At most ~20,000 points per curve, and the top 1% in full. */
        long step = r->n > 20000 ? r->n / 20000 : 1;
        long tail = (long)((double)r->n * 0.99);
        for (long i = 0; i < r->n; i += (i >= tail ? 1 : step)) {
            double ns = (double)r->lat[i] * 1e9 / hz;
            fprintf(d, "%.1f %.6f\n", ns < 1 ? 1 : ns,
                    (double)(i + 1) / (double)r->n);
        }
        fclose(d);
        cl += (size_t)snprintf(cmd + cl, sizeof cmd - cl,
                               "%s'%s' using 1:2 with lines lw %d lc rgb '%s' title '%s'",
                               nplots ? ", \\\n  " : "plot ", path,
                               strcmp(r->name, "rpal") ? 2 : 4,
                               bench_color(nplots), r->name);
        if (cl >= sizeof cmd)
            break;
        nplots++;
    }
    int rc = -1;
    snprintf(script, sizeof script, "%s/plot.gp", dir);
    /* pngcairo first; the plain png terminal if this gnuplot lacks it. */
    for (int attempt = 0; nplots && attempt < 2 && rc; attempt++) {
        FILE *gp = fopen(script, "w");
        if (!gp)
            break;
        fprintf(gp,
                "set terminal %s size 1100,650\n"
                "set output '%s'\n"
                "set title 'rpal bench call: one-way latency, mode %s, %zu-byte "
                "messages, %ld calls per transport' noenhanced\n"
                "set xlabel 'one-way latency (ns, log scale)'\n"
                "set ylabel 'fraction of calls at or below'\n"
                "set logscale x\nset format x '%%g'\nset grid\nset key bottom right noenhanced\n"
                "set yrange [0:1]\n%s\n",
                attempt ? "png" : "pngcairo", out, mode_names[mode], o->size,
                count, cmd);
        fclose(gp);
        rc = run_gnuplot(script);
    }
    for (int k = 0; k < nres; k++) {
        snprintf(path, sizeof path, "%s/%d.dat", dir, k);
        unlink(path);
    }
    unlink(script);
    rmdir(dir);
    if (!nplots)
        fprintf(stderr, "call: --plot: no transport ran; no plot written\n");
    else if (rc)
        fprintf(stderr, "call: --plot: gnuplot failed; no plot written\n");
    else
        fprintf(stderr, "call: latency CDFs written to %s\n", out);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* --throughput: pipelined one-way streams                                   */
/* ------------------------------------------------------------------------ */

/* The producer owns a ring of NSLOTS slots and its tail (messages
 * published); the consumer owns its head (messages consumed). Each side
 * caches the other's index and reads it again only when the ring looks full
 * (producer) or empty (consumer). Message i carries i in its first 8 bytes,
 * checked by the consumer. */
struct stream_shared {
    _Atomic int consumer_ready;
    _Atomic int producer_ready; /* rpal: the producer's channel is open */
    _Atomic int producer_done;  /* rpal: the producer has every completion */
    char scratch[256];          /* rpal: the service's name and key */
    int64_t t0, t1;    /* consumer: receipt of the first measured message,
                          and of the last */
    uint64_t sum;      /* consumer: what it read, so that the reads happen */
};

struct sctx {
    size_t size, stride;
    uint64_t nslots, warm, count;
    int copy_out;      /* the consumer copies each message out (else reads in place) */
    struct stream_shared *sh;
    char msg[256];
};

struct stream_transport {
    const char *name;
    const char *what;
    int copy_out;
    const char *(*skip)(const struct sctx *c);
    int (*setup)(struct sctx *c);
    void (*producer)(struct sctx *c);
    void (*consumer)(struct sctx *c);
    void (*teardown)(struct sctx *c);
};

static struct {
    _Atomic uint64_t *tail; /* producer's block: tail line, then the slots */
    unsigned char *slots;
    _Atomic uint64_t *head; /* consumer's block */
    size_t plen, clen;
} ring;

static int ring_setup(struct sctx *c)
{
    ring.plen = page_round(4096 + (size_t)c->nslots * c->stride);
    ring.clen = page_round(64);
    void *p = map_shared(ring.plen), *q = map_shared(ring.clen);
    if (!p || !q) {
        snprintf(c->msg, sizeof c->msg, "mmap: %s", strerror(errno));
        return -1;
    }
    ring.tail = p;
    ring.slots = (unsigned char *)p + 4096;
    ring.head = q;
    return 0;
}

static void ring_teardown(struct sctx *c)
{
    (void)c;
    if (ring.tail)
        munmap((void *)ring.tail, ring.plen);
    if (ring.head)
        munmap((void *)ring.head, ring.clen);
    ring.tail = ring.head = NULL;
}

/* Sum of the message's 64-bit words: the consumer reads all of it. Four
 * 16-byte accumulators (GCC/clang vector extension): a plain word loop
 * reads slower than memcpy copies with gcc -O2 (34 vs 43 GB/s here), which
 * would make reading in place look worse than it is. */
typedef uint64_t v2u64 __attribute__((vector_size(16)));
static uint64_t sum_words(const unsigned char *p, size_t n)
{
    v2u64 a = {0, 0}, b = a, c = a, d = a, w[4];
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        memcpy(w, p + i, 64);
        a += w[0];
        b += w[1];
        c += w[2];
        d += w[3];
    }
    a += b + c + d;
    uint64_t s = a[0] + a[1], x;
    for (; i + 8 <= n; i += 8) {
        memcpy(&x, p + i, 8);
        s += x;
    }
    return s;
}

static void ring_producer(struct sctx *c)
{
    if (mprotect((void *)ring.head, ring.clen, PROT_READ) < 0)
        die("mprotect");
    unsigned char *src = aligned_alloc(64, page_round(c->size));
    if (!src)
        die_msg("out of memory");
    for (size_t i = 0; i < c->size; i++)
        src[i] = (unsigned char)i;
    uint64_t total = c->warm + c->count, head = 0, mask = c->nslots - 1;
    for (uint64_t i = 0; i < total; i++) {
        while (i - head >= c->nslots) {
            /* Acquire: the consumer is done with the slot we reuse; pairs
             * with its release store of head. */
            head = rpal_load_acquire(ring.head);
            if (i - head >= c->nslots)
                cpu_relax();
        }
        unsigned char *slot = ring.slots + (i & mask) * c->stride;
        memcpy(slot + 8, src + 8, c->size - 8);
        memcpy(slot, &i, 8);
        /* Release: the slot's bytes before the new tail; pairs with the
         * consumer's acquire load of tail. */
        rpal_store_release(ring.tail, i + 1);
    }
    free(src);
}

static void ring_consumer(struct sctx *c)
{
    if (mprotect((void *)ring.tail, ring.plen, PROT_READ) < 0)
        die("mprotect");
    unsigned char *dst = aligned_alloc(64, page_round(c->size));
    if (!dst)
        die_msg("out of memory");
    memset(dst, 0, c->size);
    uint64_t total = c->warm + c->count, tail = 0, mask = c->nslots - 1, sum = 0;
    for (uint64_t i = 0; i < total; i++) {
        while (tail <= i) {
            tail = rpal_load_acquire(ring.tail); /* pairs with the producer's release */
            if (tail <= i)
                cpu_relax();
        }
        const unsigned char *slot = ring.slots + (i & mask) * c->stride;
        uint64_t seq;
        memcpy(&seq, slot, 8);
        if (seq != i)
            die_msg("message %" PRIu64 " carries %" PRIu64, i, seq);
        if (c->copy_out) {
            memcpy(dst, slot, c->size);
            ESCAPE(dst);
        } else {
            sum += sum_words(slot, c->size);
        }
        /* Release: our reads of the slot are done before the producer may
         * reuse it; pairs with the producer's acquire load of head. */
        rpal_store_release(ring.head, i + 1);
        if (i + 1 == c->warm)
            c->sh->t0 = mono_ns();
    }
    c->sh->t1 = mono_ns();
    c->sh->sum = sum;
    free(dst);
}

#ifdef RPAL_HAVE_CALL
/* ===== RPAL STREAM =====
 * Producer: pipelined rpal_send (up to the ring's depth outstanding) and
 * rpal_complete; a message of at most RPAL_INLINE_MAX bytes travels in the
 * ring, a larger one from private memory is copied once into the producer's
 * slot (the one copy spin-shm's producer makes too). Consumer: the service,
 * rpal_receive, reads the message in place (or copies it out), replies with
 * an empty message. */
static void rpal_stream_consumer(struct sctx *c)
{
    struct stream_shared *sh = c->sh;
    snprintf(rp.service, sizeof rp.service, "stream-%d", (int)getppid());
    rpal_join_side(SERVER, MODE_POLL, sh->scratch, sizeof sh->scratch);
    /* Release: the scratch before the flag; pairs with the producer's
     * acquire. */
    rpal_store_release(&sh->consumer_ready, 2);
    rpal_dispatch_until(&sh->producer_ready);
    unsigned char *dst = aligned_alloc(64, page_round(c->size));
    if (!dst)
        die_msg("out of memory");
    uint64_t total = c->warm + c->count, sum = 0;
    for (uint64_t i = 0; i < total; i++) {
        const void *data = bench_rpal_receive(&rp.b, c->size, RPAL_BENCH_TIMEOUT_MS);
        uint64_t seq;
        memcpy(&seq, data, 8);
        if (seq != i)
            die_msg("message %" PRIu64 " carries %" PRIu64, i, seq);
        if (c->copy_out) {
            memcpy(dst, data, c->size);
            ESCAPE(dst);
        } else {
            sum += sum_words(data, c->size);
        }
        int err;
        if ((err = rpal_reply(rp.b.r, &rp.b.m, NULL, 0)) < 0)
            rpal_die("rpal_reply", err);
        if (i + 1 == c->warm)
            sh->t0 = mono_ns();
    }
    sh->t1 = mono_ns();
    sh->sum = sum;
    free(dst);
    int64_t end = mono_ns() + 30 * 1000000000LL;
    while (!rpal_load_acquire(&sh->producer_done) && mono_ns() < end)
        usleep(100);
    bench_rpal_fini(&rp.b);
}

static void rpal_stream_producer(struct sctx *c)
{
    struct stream_shared *sh = c->sh;
    while (rpal_load_acquire(&sh->consumer_ready) != 2) /* pairs with the consumer */
        usleep(100);
    rpal_join_side(CLIENT, MODE_POLL, NULL, 0);
    unsigned depth = c->nslots > 1024 ? 1024 : (unsigned)c->nslots;
    rpal_open_side(MODE_POLL, depth, sh->scratch);
    rpal_store_release(&sh->producer_ready, 1); /* pairs with rpal_dispatch_until */
    unsigned char *src = aligned_alloc(64, page_round(c->size));
    if (!src)
        die_msg("out of memory");
    for (size_t i = 0; i < c->size; i++)
        src[i] = (unsigned char)i;
    uint64_t total = c->warm + c->count, sent = 0, done = 0;
    while (done < total) {
        while (sent < total) {
            memcpy(src, &sent, 8);
            int err = rpal_send(rp.b.chan, src, c->size, sent);
            if (err == -EAGAIN)
                break;
            if (err < 0)
                rpal_die("rpal_send", err);
            sent++;
        }
        size_t len;
        int err = rpal_complete(rp.b.chan, NULL, NULL, 0, &len, RPAL_BENCH_TIMEOUT_MS);
        if (err < 0)
            rpal_die("rpal_complete", err);
        done++;
    }
    free(src);
    rpal_store_release(&sh->producer_done, 1);
    bench_rpal_fini(&rp.b);
}

static const struct stream_transport st_rpal = {
    .name = "rpal", .what = "rpal_send + rpal_complete, depth 1024",
    .producer = rpal_stream_producer, .consumer = rpal_stream_consumer,
};
static const struct stream_transport st_rpal_copy = {
    .name = "rpal-copy", .what = "the same, the consumer copies out",
    .copy_out = 1, .producer = rpal_stream_producer,
    .consumer = rpal_stream_consumer,
};
#else
static const char *rpal_stream_missing(const struct sctx *c)
{
    (void)c;
    return "the rpal call path is not built yet (RPAL_HAVE_CALL undefined)";
}
static const struct stream_transport st_rpal = {.name = "rpal", .skip = rpal_stream_missing};
#endif

static const struct stream_transport st_spin = {
    .name = "spin-shm", .what = "ring in shared memory, reads in place",
    .setup = ring_setup, .producer = ring_producer, .consumer = ring_consumer,
    .teardown = ring_teardown,
};
static const struct stream_transport st_spin_copy = {
    .name = "spin-shm-copy", .what = "same ring, the consumer copies out",
    .copy_out = 1, .setup = ring_setup, .producer = ring_producer,
    .consumer = ring_consumer, .teardown = ring_teardown,
};

static const struct stream_transport *const stream_transports[] = {
    &st_rpal, /* RPAL_HAVE_CALL: the real entry, else listed as skipped */
#ifdef RPAL_HAVE_CALL
    &st_rpal_copy,
#endif
    &st_spin, &st_spin_copy,
};
#define NSTREAMS (sizeof stream_transports / sizeof stream_transports[0])
#define NSTREAMS_MAX 8

/* Runs one stream; returns bytes per second of payload delivered (or
 * messages per second with BY_MSG), 0 with WHY if skipped, -1 if failed. */
static double run_stream(const struct stream_transport *T, size_t size,
                         uint64_t nslots, uint64_t count, int by_msg,
                         char *why, size_t wlen, int *skipped)
{
    struct sctx c = {.size = size, .nslots = nslots, .count = count,
                     .warm = count / 10, .copy_out = T->copy_out};
    c.stride = size <= 64 ? size : page_round(size);
    *skipped = 0;
    const char *s = ncpus_ok < 2 ? "needs two CPUs" : T->skip ? T->skip(&c) : NULL;
    if (s) {
        snprintf(why, wlen, "%s", s);
        *skipped = 1;
        return 0;
    }
    c.sh = map_shared(page_round(sizeof *c.sh));
    if (!c.sh) {
        snprintf(why, wlen, "mmap: %s", strerror(errno));
        return -1;
    }
    int rc = T->setup ? T->setup(&c) : 0;
    double v = -1;
    if (rc) {
        snprintf(why, wlen, "%s", c.msg);
        *skipped = rc > 0;
        v = rc > 0 ? 0 : -1;
    } else {
        fflush(NULL);
        pid_t cons = fork();
        if (cons == 0) {
            who_name = T->name, who_side = "consumer";
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(2, 1);
            if (pin_cpu(cpu_b) < 0)
                die("sched_setaffinity");
            rpal_store_release(&c.sh->consumer_ready, 1); /* pairs below */
            T->consumer(&c);
            _exit(0);
        }
        pid_t prod = cons < 0 ? -1 : fork();
        if (prod == 0) {
            who_name = T->name, who_side = "producer";
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(2, 1);
            if (pin_cpu(cpu_a) < 0)
                die("sched_setaffinity");
            while (!rpal_load_acquire(&c.sh->consumer_ready))
                usleep(100);
            T->producer(&c);
            _exit(0);
        }
        if (cons < 0 || prod < 0) {
            snprintf(why, wlen, "fork: %s", strerror(errno));
            if (cons > 0) {
                kill(cons, SIGKILL);
                waitpid(cons, NULL, 0);
            }
        } else if (wait_pair(cons, prod, (const char *const[2]){"consumer", "producer"},
                             60 + (int)(count / 100000), why, wlen) == 0) {
            double secs = (double)(c.sh->t1 - c.sh->t0) / 1e9;
            v = secs > 0 ? (double)count * (by_msg ? 1.0 : (double)size) / secs : -1;
            if (v < 0)
                snprintf(why, wlen, "no time measured");
        }
    }
    if (T->teardown)
        T->teardown(&c);
    munmap(c.sh, page_round(sizeof *c.sh));
    return v;
}

/* memcpy of SIZE bytes between two private buffers, in this process pinned
 * to the producer's CPU; bytes per second. */
static double memcpy_rate(size_t size, uint64_t count)
{
    cpu_set_t old;
    sched_getaffinity(0, sizeof old, &old);
    pin_cpu(cpu_a);
    unsigned char *src = aligned_alloc(64, page_round(size));
    unsigned char *dst = aligned_alloc(64, page_round(size));
    double v = 0;
    if (src && dst) {
        memset(src, 1, size);
        memset(dst, 2, size);
        for (uint64_t i = 0; i < count / 10; i++) {
            memcpy(dst, src, size);
            ESCAPE(dst);
        }
        int64_t t = mono_ns();
        for (uint64_t i = 0; i < count; i++) {
            memcpy(dst, src, size);
            ESCAPE(dst);
        }
        v = (double)count * (double)size * 1e9 / (double)(mono_ns() - t);
    }
    free(src);
    free(dst);
    sched_setaffinity(0, sizeof old, &old);
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define STREAM_REPS_MSG 3
#define STREAM_REPS_BW 5

/* Runs every transport of LIST (N of them) REPS times, alternating
 * transports run by run so that a change of the host's placement of our
 * CPUs or of its load hits them alike, and leaves in V[i] the median of
 * LIST[i]'s runs (or 0 and SKIPPED[i]/WHY[i] if it was skipped, -1 if a
 * run failed). With MEMCPY_SIZE, entry N is memcpy of that size. */
static void alternate_streams(const struct stream_transport *const *list, int n,
                              size_t size, uint64_t nslots, uint64_t count,
                              int by_msg, int reps, size_t memcpy_size,
                              double *v, int *skipped, char (*why)[300])
{
    double runs[NSTREAMS_MAX + 1][STREAM_REPS_BW];
    int m = n + (memcpy_size > 0);
    for (int i = 0; i < m; i++) {
        v[i] = 1;
        skipped[i] = 0;
        why[i][0] = 0;
    }
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < m; i++) {
            if (v[i] <= 0)
                continue; /* skipped or failed */
            runs[i][r] = i == n ? memcpy_rate(memcpy_size, count)
                                : run_stream(list[i], size, nslots, count, by_msg,
                                             why[i], sizeof why[i], &skipped[i]);
            if (runs[i][r] <= 0)
                v[i] = runs[i][r];
        }
    for (int i = 0; i < m; i++)
        if (v[i] > 0) {
            qsort(runs[i], (size_t)reps, sizeof runs[i][0], cmp_double);
            v[i] = runs[i][reps / 2];
        }
}

static int want_name(const struct opts *o, const char *name)
{
    if (!o->list)
        return 1;
    size_t n = strlen(name);
    for (const char *p = o->list; *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && !strncmp(p, name, n))
            return 1;
        p += k + (p[k] == ',');
    }
    return 0;
}

/* A "-copy" variant runs when its base transport is asked for. */
static int stream_wanted(const struct opts *o, const struct stream_transport *T)
{
    char base[64];
    size_t n = strlen(T->name);
    if (want_name(o, T->name))
        return 1;
    if (!T->copy_out || n < 5 || n - 5 >= sizeof base)
        return 0;
    snprintf(base, sizeof base, "%.*s", (int)(n - 5), T->name);
    return want_name(o, base);
}

/* One row of --throughput output: V is msgs/s (BW 0) or bytes/s (BW 1, MC
 * is memcpy's bytes/s); V <= 0 is a skip (SKIPPED) or a failure, WHY. */
static void stream_row(const struct opts *o, const struct stream_transport *T,
                       size_t size, int bw, double v, double mc, int skipped,
                       const char *why)
{
    if (o->json) {
        printf("{\"transport\":");
        json_str(T->name);
        if (v <= 0) {
            json_not_run(skipped, why);
        } else if (!bw) {
            printf(",\"mode\":\"throughput\",\"size\":%zu,\"msgs_per_s\":%.0f}\n",
                   size, v);
        } else {
            printf(",\"mode\":\"bandwidth\",\"size\":%zu,\"gb_per_s\":%.2f,"
                   "\"memcpy_gb_per_s\":%.2f,\"ratio\":%.3f}\n",
                   size, v / 1e9, mc / 1e9, v / mc);
        }
    } else if (v <= 0) {
        printf("%-14s %7zu  %s: %s\n", T->name, size,
               skipped ? "skipped" : "FAILED", why);
    } else if (!bw) {
        printf("%-14s %7zu %14.0f %9.2f  %s\n", T->name, size, v, 1e9 / v, T->what);
    } else {
        printf("%-14s %7zu %9.2f %12.2f %7.3f\n", T->name, size, v / 1e9,
               mc / 1e9, v / mc);
    }
    fflush(stdout);
}

static int run_throughput(const struct opts *o)
{
    int failed = 0, n = 0, skipped[NSTREAMS_MAX + 1];
    uint64_t count = o->count > 0 ? (uint64_t)o->count : 10000000;
    const struct stream_transport *list[NSTREAMS_MAX];
    double v[NSTREAMS_MAX + 1];
    static char why[NSTREAMS_MAX + 1][300];

    for (size_t t = 0; t < NSTREAMS && n < NSTREAMS_MAX; t++)
        if (want_name(o, stream_transports[t]->name) && !stream_transports[t]->copy_out)
            list[n++] = stream_transports[t];
    if (!o->json)
        printf("\npipelined one-way messages: producer CPU %d, consumer CPU %d, "
               "both busy-poll; %" PRIu64 " %zu-byte messages after %" PRIu64
               " warm-up,\nmedian of %d runs (transports alternate run by run)\n"
               "%-14s %7s %14s %9s  %s\n",
               cpu_a, cpu_b, count, o->size, count / 10, STREAM_REPS_MSG,
               "transport", "size", "msgs/s", "ns/msg", "what");
    fprintf(stderr, "call: throughput, %d transports x %d runs\n", n, STREAM_REPS_MSG);
    alternate_streams(list, n, o->size, 4096, count, 1, STREAM_REPS_MSG, 0, v,
                      skipped, why);
    for (int i = 0; i < n; i++) {
        failed |= v[i] < 0;
        stream_row(o, list[i], o->size, 0, v[i], 0, skipped[i], why[i]);
    }

    static const size_t sizes[] = {4096, 16384, 65536, 262144, 1048576};
    const uint64_t bytes = 256ull << 20; /* per run */
    n = 0;
    for (size_t t = 0; t < NSTREAMS && n < NSTREAMS_MAX; t++)
        if (stream_wanted(o, stream_transports[t]))
            list[n++] = stream_transports[t];
    if (!o->json)
        printf("\nlarge messages one way, %d MiB per run, median of %d runs "
               "(transports and memcpy alternate run by run):\nthe producer "
               "copies each message from private memory into its ring of 4 "
               "buffers; the consumer reads it\nin place (sums its words) or "
               "copies it out (-copy). memcpy: the same size, private to "
               "private,\nin one process on CPU %d\n%-14s %7s %9s %12s %7s\n",
               (int)(bytes >> 20), STREAM_REPS_BW, cpu_a, "transport", "size",
               "GB/s", "memcpy GB/s", "ratio");
    int said_skip[NSTREAMS_MAX] = {0};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t size = sizes[k];
        fprintf(stderr, "call: bandwidth %zu bytes\n", size);
        alternate_streams(list, n, size, 4, bytes / size, 0, STREAM_REPS_BW, size,
                          v, skipped, why);
        for (int i = 0; i < n; i++) {
            if (said_skip[i])
                continue;
            failed |= v[i] < 0;
            said_skip[i] = v[i] <= 0 && skipped[i];
            stream_row(o, list[i], size, 1, v[i], v[n], skipped[i], why[i]);
        }
    }
    return failed;
}

/* ------------------------------------------------------------------------ */
/* main                                                                      */
/* ------------------------------------------------------------------------ */

/* On stdout with exit 0 when asked for (--help), else on stderr with 2. */
static void usage_exit(const char *argv0, int code)
{
    FILE *f = code ? stderr : stdout;
    fprintf(f,
            "usage: %s [--mode poll|shared-core|idle|all] [--size BYTES] "
            "[--count N]\n"
            "          [--json] [--transport NAME[,NAME...]] [--plot FILE.png]\n"
            "          [--wait auto|block|poll] [--throughput]\n"
            "transports:",
            argv0);
    for (size_t t = 0; t < NTRANSPORTS; t++)
        fprintf(f, " %s", transports[t]->name);
    fprintf(f, "\n");
    exit(code);
}

static void usage(const char *argv0) { usage_exit(argv0, 2); }

static int known_name(const char *p, size_t k)
{
    for (size_t t = 0; t < NTRANSPORTS; t++)
        if (strlen(transports[t]->name) == k && !strncmp(p, transports[t]->name, k))
            return 1;
    for (size_t t = 0; t < NSTREAMS; t++)
        if (strlen(stream_transports[t]->name) == k &&
            !strncmp(p, stream_transports[t]->name, k))
            return 1;
    return 0;
}

/* The client and server CPUs: 0 and 1 if we may use them, else the first
 * two we may. */
static void choose_cpus(void)
{
    ncpus_ok = bench_choose_cpus(&cpu_a, &cpu_b);
}

int main(int argc, char **argv)
{
    struct opts o = {.size = 32, .wait = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_exit(argv[0], 0);
        } else if (!strcmp(a, "--json")) {
            o.json = 1;
        } else if (!strcmp(a, "--throughput")) {
            o.throughput = 1;
        } else if (!strcmp(a, "--mode") && v) {
            i++;
            o.nmodes = 0;
            for (int m = 0; m < NMODES; m++)
                if (!strcmp(v, mode_names[m]) || !strcmp(v, "all"))
                    o.modes[o.nmodes++] = m;
            if (!o.nmodes)
                usage(argv[0]);
        } else if (!strcmp(a, "--size") && v) {
            i++;
            char *end;
            unsigned long long s = strtoull(v, &end, 0);
            if (*end || s < 8 || s > MAX_SIZE) {
                fprintf(stderr, "call: --size is 8 to %u bytes\n", MAX_SIZE);
                return 2;
            }
            o.size = (size_t)s;
        } else if (!strcmp(a, "--count") && v) {
            i++;
            char *end;
            long n = strtol(v, &end, 0);
            if (*end || n < 1 || n > 100000000) {
                fprintf(stderr, "call: --count is 1 to 100000000\n");
                return 2;
            }
            o.count = n;
        } else if (!strcmp(a, "--transport") && v) {
            i++;
            o.list = strdup(v);
            for (const char *p = v; *p;) {
                size_t k = strcspn(p, ",");
                if (!known_name(p, k)) {
                    fprintf(stderr, "call: unknown transport '%.*s'\n", (int)k, p);
                    usage(argv[0]);
                }
                p += k + (p[k] == ',');
            }
        } else if (!strcmp(a, "--plot") && v) {
            o.plot = argv[++i];
        } else if (!strcmp(a, "--wait") && v) {
            i++;
            o.wait = !strcmp(v, "block") ? 0 : !strcmp(v, "poll") ? 1
                   : !strcmp(v, "auto") ? -1 : -2;
            if (o.wait == -2)
                usage(argv[0]);
        } else {
            usage(argv[0]);
        }
    }
    if (!o.nmodes)
        o.modes[o.nmodes++] = MODE_POLL;

    struct sigaction sa = {.sa_handler = bench_on_alarm}; /* no SA_RESTART */
    sigaction(SIGALRM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    choose_cpus();
    hz = calibrate_hz();
    print_header(&o, o.json ? stderr : stdout);
    fflush(stdout);
    pattern = malloc(MAX_SIZE);
    if (!pattern)
        return 1;
    for (size_t i = 0; i < MAX_SIZE; i++)
        pattern[i] = (unsigned char)(i * 7 + 1);

    int failed = 0;
    if (o.throughput) {
        failed = run_throughput(&o);
    } else {
        for (int mi = 0; mi < o.nmodes; mi++) {
            int mode = o.modes[mi];
            long count = o.count ? o.count : mode == MODE_IDLE ? 10000 : 100000;
            struct result res[NTRANSPORTS];
            int nres = 0;
            if (!o.json)
                print_table_head(mode, &o, count);
            for (size_t t = 0; t < NTRANSPORTS; t++) {
                if (!want_name(&o, transports[t]->name))
                    continue;
                struct result *r = &res[nres++];
                run_latency(transports[t], &o, mode, count, r);
                failed |= r->status < 0;
                print_result(r, &o);
                fflush(stdout);
            }
            if (o.plot && plot(o.plot, o.nmodes > 1, mode, &o, res, nres, count))
                failed = 1;
            for (int k = 0; k < nres; k++)
                free(res[k].lat);
        }
    }
    double rtt = probe_c2c();
    if (rtt > 0)
        fprintf(o.json ? stderr : stdout, "\n# one cache line between CPUs %d and %d at "
                "the end: %.0f ns round trip\n", cpu_a, cpu_b, rtt);
    stop_roudi();
    free(pattern);
    free(o.list);
    return failed ? 1 : 0;
}
