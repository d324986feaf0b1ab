/* The transport interface of bench/call (bench/call.c: the options, the
 * harness, the measurement and the report) and what its transports share:
 * one file per transport in this directory, each defining its struct
 * transport (and struct stream_transport for --throughput) for the tables
 * in bench/call.c. Helpers of the hot path are static inline: a call into
 * another file would add its cost to every message measured. */
#ifndef RPAL_BENCH_CALL_H
#define RPAL_BENCH_CALL_H

#include "../bench.h" /* rpal.h, atomics.h, die_msg(), mono_ns(), map_shared() */

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

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

/* Keeps the compiler from dropping a copy whose result nobody reads. */
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

/* ------------------------------------------------------------------------ */
/* The transport interface                                                   */
/* ------------------------------------------------------------------------ */

enum { MODE_POLL, MODE_SHARED, MODE_IDLE, NMODES };
enum { CLIENT = 0, SERVER = 1 };

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

extern const struct transport tr_rpal, tr_rpal_serve, tr_uds, tr_pipe, tr_efd, tr_spin,
    tr_yield, tr_futex, tr_zmq, tr_iox;

/* iceoryx's daemon (iox-roudi), started by the transport's setup: stopped at
 * the end of the run (whatever happened), and forgotten once reaped. */
void stop_roudi(void);
void roudi_reaped(pid_t pid);

/* --throughput: pipelined one-way streams. Message i carries i in its first
 * 8 bytes, checked by the consumer. */
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

extern const struct stream_transport st_rpal, st_spin, st_spin_copy;
#ifdef RPAL_HAVE_CALL
extern const struct stream_transport st_rpal_copy;
#endif

/* ------------------------------------------------------------------------ */
/* Helpers of the transports                                                 */
/* ------------------------------------------------------------------------ */

static inline void die(const char *what) __attribute__((noreturn));
static inline void die(const char *what)
{
    die_msg("%s: %s", what, strerror(errno));
}

static inline void read_full(int fd, void *buf, size_t n)
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

static inline void write_full(int fd, const void *buf, size_t n)
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

static inline long futex(_Atomic uint32_t *word, int op, uint32_t val)
{
    /* Not FUTEX_PRIVATE_FLAG: the word is in memory shared between
     * processes. */
    return syscall(SYS_futex, (uint32_t *)word, op, val, NULL, NULL, 0);
}

/* Private message buffers of the copying transports (call.c): alloc_bufs()
 * in a child's init makes them c->size bytes; local_buf() is the buf() of a
 * transport that sends from txbuf. */
extern unsigned char *txbuf, *rxbuf;
void alloc_bufs(struct ctx *c);
void *local_buf(struct ctx *c, int side);

/* Sum of the message's 64-bit words: the consumer reads all of it. Four
 * 16-byte accumulators (GCC/clang vector extension): a plain word loop
 * reads slower than memcpy copies with gcc -O2 (34 vs 43 GB/s here), which
 * would make reading in place look worse than it is. */
typedef uint64_t v2u64 __attribute__((vector_size(16)));
static inline uint64_t sum_words(const unsigned char *p, size_t n)
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

/* A consumer's use of message I at DATA: its number checked, then copied
 * out to DST (-copy) or its words summed into *SUM (read in place). */
static inline void stream_take(const struct sctx *c, const unsigned char *data, uint64_t i,
                               unsigned char *dst, uint64_t *sum)
{
    uint64_t seq;
    memcpy(&seq, data, 8);
    if (seq != i)
        die_msg("message %" PRIu64 " carries %" PRIu64, i, seq);
    if (c->copy_out) {
        memcpy(dst, data, c->size);
        ESCAPE(dst);
    } else {
        *sum += sum_words(data, c->size);
    }
}

/* A library loaded with dlopen: a member per function (FN_PTR), filled by
 * FN_LOAD in a loader that has void *h, char why[], const char *soname and
 * the struct's pointer as lib. */
#define FN_PTR(f) __typeof__(&f) f;
#define FN_LOAD(f)                                                            \
    if (!(lib->f = (__typeof__(lib->f))dlsym(h, #f))) {                       \
        snprintf(why, sizeof why, "%s: no symbol %s", soname, #f);           \
        return why;                                                           \
    }

#endif
