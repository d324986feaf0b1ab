/* rpal chaos: kill one process of a working group with SIGKILL at a random
 * point and check that the others live on (principle 5: a peer's death is an
 * error code, never a crash or a hang) and that nothing is left behind.
 *
 * Every trial runs real processes in a private namespace directory: the
 * orchestrator forks and execs this program again as each worker
 * (`chaos --worker ROLE INDEX BOARDFD`), so that a worker starts as a fresh
 * program that attaches and joins by name, as an application would, and
 * inherits nothing of rpal. The victim is one of five kinds, in rotation:
 *
 *   caller         a process calling two services (rpal_call, and pipelined
 *                  rpal_send + rpal_complete), next to a second caller;
 *   receiver       one of those two services (rpal_receive + rpal_reply);
 *   region-owner   the creator of a transient region whose layout it and two
 *                  attachers keep changing; it also creates and removes a
 *                  scratch region over and over;
 *   handshake      a process looping join, request, channel open, one call,
 *                  close, release, leave; or (every other time, at random)
 *                  the service it asks;
 *   region-change  an attacher looping rpal_region_map/protect/unmap.
 *
 * It is killed at a random moment from its start (the seed decides), while
 * the survivors keep working; they stop 150 ms after the kill and exit
 * cleanly (close, release, leave, detach). Counted:
 *
 *   hangs    a survivor's call that did not return within its deadline
 *            + 1 s: seen by the call itself when it returns late, or by
 *            the orchestrator's watchdog (which then kills the worker), and
 *            a survivor that does not exit within 10 s of being told to;
 *   crashes  a worker that dies other than by our SIGKILL (a signal, an
 *            exit status other than 0: sanitizer reports included);
 *   leaks    after every worker is gone and rpal_gc() ran, anything in the
 *            namespace directory but its fixed furniture (the empty address
 *            registry, .domains/NAME/meta);
 *   corrupt  a reply whose bytes do not match what its request determines,
 *            a request whose checksum fails at the service (unless its
 *            caller is the victim, whose slot may read as zeros once it is
 *            dead), a region page that does not read back what its sharer
 *            wrote, or a new anonymous object that does not read as zeros.
 *
 * `errors` (informational) counts calls between two live processes that
 * failed anyway (e.g. -ETIMEDOUT on a starved machine); `victim_errors`
 * counts, by errno, the survivors' calls that failed because of the death
 * (-ESRCH is expected; -ETIMEDOUT would say the death was not seen).
 *
 * --self-test corrupt|leak|hang|crash makes one worker misbehave on purpose,
 * so that each failure class can be seen to be detected.
 */
#include "rpal.h"
#include "json.h"

#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Parameters                                                                */
/* ------------------------------------------------------------------------ */

#define KILL_WINDOW_MS 200  /* the victim dies within this of its start */
#define POST_MS 150         /* survivors go on this long after the kill */
#define CALL_MS 1000        /* deadline of a call, a request, an open */
#define CHANGE_MS 1000      /* sharers' deadline of a layout change */
#define LOCK_MS 5000        /* a change also waits this for the change lock */
#define SLACK_MS 1000       /* "within its deadline + 1 s" */
#define EXIT_MS 10000       /* a told-to-stop worker must be gone by then */
#define MAXW 6
#define NSERVICES 2 /* workers 0 and 1 are the services S1 and S2 */
#define DOMAIN "chaos"
#define REGION "chaos"
#define REGION_PAGES 16      /* each sharer changes its own 16 pages */
#define PAGE 4096
#define REQ_MAX 4096
#define REPLY_MAX (16 + 3000)
#define DEPTH 4
#define NERRNO 134 /* errno values counted (EHWPOISON is 133) */

enum kind { K_CALLER, K_RECEIVER, K_OWNER, K_HANDSHAKE, K_CHANGE, NKINDS };
static const char *const kind_names[NKINDS] = {"caller", "receiver", "region-owner",
                                               "handshake", "region-change"};
enum role { R_SERVICE, R_CALLER, R_HANDSHAKER, R_OWNER, R_ATTACHER };
static const char *const role_names[] = {"service", "caller", "handshaker", "owner",
                                         "attacher"};
enum selftest { ST_NONE, ST_CORRUPT, ST_LEAK, ST_HANG, ST_CRASH };
static const char *const selftest_names[] = {"", "corrupt", "leak", "hang", "crash"};

/* ------------------------------------------------------------------------ */
/* The board: one shared page between the orchestrator and the workers       */
/* ------------------------------------------------------------------------ */

struct wslot {
    _Atomic int started;          /* main() runs */
    _Atomic int ready;            /* set up, working */
    _Atomic int stop;             /* told to finish */
    _Atomic int pid;
    struct opslot {               /* per thread: a service has two */
        _Atomic int64_t start_ns; /* the library call in progress, 0: none */
        _Atomic int deadline_ms;
        char name[32];
    } op[2];
    _Atomic uint64_t ops, errors, corrupt, hangs, torn;
    _Atomic uint32_t expected[NERRNO]; /* errors from the victim, by errno */
    char note[160];               /* the first failure, for the report */
};

struct board {
    uint64_t seed;
    int kind, victim, selftest;
    _Atomic int killed;           /* the victim is dead */
    _Atomic int key_ready[2];
    char key[2][33];
    struct wslot w[MAXW];
};

static struct board *B;
static struct wslot *W; /* this worker's slot */
static int my_idx;

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&t, &t) < 0 && errno == EINTR)
        ;
}

/* ------------------------------------------------------------------------ */
/* Randomness and checksums                                                  */
/* ------------------------------------------------------------------------ */

static uint64_t mix(uint64_t x) /* splitmix64's finaliser */
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rnd_state;
static uint64_t rnd(void) { return rnd_state = mix(rnd_state); }
static unsigned rnd_below(unsigned n) { return (unsigned)(rnd() % n); }

static uint64_t fnv(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* N bytes that only SEED determines. */
static void fill(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0)
            v = mix(seed + i);
        p[i] = (unsigned char)(v >> (8 * (i % 8)));
    }
}

/* A request: [u32 seq][u32 sender][bytes][u64 fnv of what precedes]. */
static size_t make_request(unsigned char *p, uint32_t seq)
{
    size_t len = 16 + (rnd_below(4) == 0 ? rnd_below(REQ_MAX - 16) : rnd_below(40));
    memcpy(p, &seq, 4);
    uint32_t who = (uint32_t)my_idx;
    memcpy(p + 4, &who, 4);
    fill(p + 8, len - 16, mix(((uint64_t)my_idx << 32) ^ seq ^ B->seed));
    uint64_t h = fnv(p, len - 8);
    memcpy(p + len - 8, &h, 8);
    return len;
}

/* The reply a request determines: its hash, then bytes from the hash;
 * inline (up to 40 bytes) or large, as the hash decides. */
static size_t make_reply(const unsigned char *req, size_t len, unsigned char *out)
{
    uint64_t h = fnv(req, len);
    size_t rl = 8 + (h % 5 == 0 ? h % 3000 : h % 33);
    memcpy(out, &h, 8);
    fill(out + 8, rl - 8, h);
    return rl;
}

/* ------------------------------------------------------------------------ */
/* Worker side: every library call is an "op" with a deadline               */
/* ------------------------------------------------------------------------ */

static void note(const char *fmt, ...)
{
    if (W->note[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(W->note, sizeof W->note, fmt, ap);
    va_end(ap);
}

static __thread int op_thread; /* which of W->op this thread uses */

static void op_begin(const char *name, int deadline_ms)
{
    struct opslot *o = &W->op[op_thread];
    snprintf(o->name, sizeof o->name, "%s", name);
    atomic_store(&o->deadline_ms, deadline_ms);
    atomic_store(&o->start_ns, now_ns());
}

/* A call that returned, but later than its deadline + 1 s, hung too. */
static long op_end(long ret)
{
    struct opslot *o = &W->op[op_thread];
    int64_t took = now_ns() - atomic_load(&o->start_ns);
    if (took > (int64_t)(atomic_load(&o->deadline_ms) + SLACK_MS) * 1000000) {
        atomic_fetch_add(&W->hangs, 1);
        note("%s took %lld ms (deadline %d ms)", o->name, (long long)(took / 1000000),
             atomic_load(&o->deadline_ms));
    }
    atomic_store(&o->start_ns, 0);
    atomic_fetch_add(&W->ops, 1);
    return ret;
}

#define OP(name, ms, call) (op_begin(name, ms), op_end((long)(call)))

static int stopping(void) { return atomic_load(&W->stop); }
static int victim_dead(void) { return atomic_load(&B->killed); }

/* A failure between live processes: not one of the four counts, shown. */
static void error(const char *what, long err)
{
    atomic_fetch_add(&W->errors, 1);
    note("%s: %s", what, rpal_strerror((int)err));
}

/* A failure caused by the victim's death: expected, counted by errno so
 * that a slow death detection (-ETIMEDOUT instead of -ESRCH) shows. */
static void expected(long err)
{
    if (err < 0 && -err < NERRNO)
        atomic_fetch_add(&W->expected[-err], 1);
}

static void corrupt(const char *fmt, ...)
{
    atomic_fetch_add(&W->corrupt, 1);
    if (W->note[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(W->note, sizeof W->note, fmt, ap);
    va_end(ap);
}

/* The self-tests: one survivor misbehaves, once. */
static void selftest_point(void)
{
    static int done;
    if (done || my_idx == B->victim || atomic_load(&W->ops) < 20)
        return;
    done = 1;
    if (B->selftest == ST_HANG) { /* a call that never returns */
        op_begin("self-test hang", 100);
        for (;;)
            pause();
    }
    if (B->selftest == ST_CRASH)
        raise(SIGSEGV);
}

/* ---- services: S1 (index 0) and S2 (index 1) ---- */

struct svc {
    rpal_domain *d;
    rpal_service *s;
    rpal_receiver *r;
};

static void *dispatch_thread(void *arg)
{
    struct svc *sv = arg;
    op_thread = 1;
    while (!stopping()) {
        struct rpal_event ev[8];
        int n = (int)OP("rpal_domain_dispatch", 20, rpal_domain_dispatch(sv->d, ev, 8, 20));
        if (n < 0 && n != -EINTR && n != -ETIMEDOUT) {
            error("rpal_domain_dispatch", n);
            sleep_ms(1);
        }
        for (int i = 0; i < n; i++)
            if (ev[i].type == RPAL_EV_PEER_GONE)
                OP("rpal_peer_release", CALL_MS, rpal_peer_release(ev[i].peer));
    }
    return NULL;
}

static void service_main(void)
{
    struct svc sv;
    int err;
    while ((err = (int)OP("rpal_domain_join", CALL_MS, rpal_domain_join(DOMAIN, NULL, &sv.d))) < 0) {
        error("rpal_domain_join", err);
        if (stopping())
            return;
        sleep_ms(2);
    }
    char name[16];
    snprintf(name, sizeof name, "s%d", my_idx);
    if ((err = (int)OP("rpal_service_register", CALL_MS,
                       rpal_service_register(sv.d, name, 0600, NULL, NULL, &sv.s))) < 0 ||
        (err = (int)OP("rpal_receiver_create", CALL_MS, rpal_receiver_create(sv.s, NULL, &sv.r))) < 0) {
        error("rpal_service_register", err);
        OP("rpal_domain_leave", CALL_MS, rpal_domain_leave(sv.d));
        return;
    }
    rpal_key k;
    rpal_service_key(sv.s, &k);
    rpal_key_format(&k, B->key[my_idx]);
    atomic_store(&B->key_ready[my_idx], 1);
    pthread_t th;
    if (pthread_create(&th, NULL, dispatch_thread, &sv) != 0)
        _exit(3);
    atomic_store(&W->ready, 1);
    static unsigned char reply[REPLY_MAX];
    unsigned replies = 0;
    while (!stopping()) {
        struct rpal_msg m;
        err = (int)OP("rpal_receive", 50, rpal_receive(sv.r, &m, 50));
        if (err == -ETIMEDOUT || err == -EINTR)
            continue;
        if (err < 0) {
            error("rpal_receive", err);
            sleep_ms(1);
            continue;
        }
        const unsigned char *q = m.data;
        uint64_t h = 0;
        uint32_t who = (uint32_t)-1;
        if (m.len >= 16) {
            memcpy(&h, q + m.len - 8, 8);
            memcpy(&who, q + 4, 4);
        }
        if (m.len < 16 || m.len > REQ_MAX || fnv(q, m.len - 8) != h) {
            /* A dead caller's slot may read as zeros: not corruption.
             * (Read in place, its request turns to zeros when the
             * dispatcher unmaps the slot, before or after we read WHO:
             * then WHO reads 0, a service's index, which no caller
             * has; seen once in 200 trials under TSan.) */
            if (victim_dead() && (who < NSERVICES || who >= MAXW || (int)who == B->victim))
                atomic_fetch_add(&W->torn, 1);
            else
                corrupt("request of %zu bytes from worker %u fails its checksum", m.len, who);
        }
        size_t rl = m.len >= 16 ? make_reply(q, m.len, reply) : 8;
        if (B->selftest == ST_CORRUPT && my_idx == 1 && ++replies == 10)
            reply[rl - 1] ^= 1;
        err = (int)OP("rpal_reply", CALL_MS, rpal_reply(sv.r, &m, reply, rl));
        if (err == -ESHUTDOWN || err == -ESRCH)
            expected(err); /* the caller is gone */
        else if (err < 0)
            error("rpal_reply", err);
        selftest_point();
    }
    pthread_join(th, NULL);
    OP("rpal_receiver_destroy", CALL_MS, rpal_receiver_destroy(sv.r));
    OP("rpal_service_unregister", CALL_MS, rpal_service_unregister(sv.s));
    OP("rpal_domain_leave", CALL_MS, rpal_domain_leave(sv.d));
}

/* ---- callers ---- */

struct link {
    rpal_peer *peer;
    rpal_chan *chan;
};

/* Is service K the victim (so its failures are expected)? */
static int service_is_victim(int k) { return B->victim == k; }

static int link_open(rpal_domain *d, int k, struct link *l, int ms)
{
    if (!atomic_load(&B->key_ready[k]))
        return -EAGAIN;
    rpal_key key;
    char name[16];
    snprintf(name, sizeof name, "s%d", k);
    rpal_key_parse(B->key[k], &key);
    int err = (int)OP("rpal_service_request", ms, rpal_service_request(d, name, &key, ms, &l->peer));
    if (err < 0)
        return err;
    err = (int)OP("rpal_chan_open", ms, rpal_chan_open(l->peer, NULL, ms, &l->chan));
    if (err < 0) {
        OP("rpal_peer_release", CALL_MS, rpal_peer_release(l->peer));
        l->peer = NULL;
    }
    return err;
}

static void link_close(struct link *l)
{
    if (l->chan)
        OP("rpal_chan_close", CALL_MS, rpal_chan_close(l->chan));
    if (l->peer)
        OP("rpal_peer_release", CALL_MS, rpal_peer_release(l->peer));
    l->chan = NULL;
    l->peer = NULL;
}

static int check_reply(const unsigned char *req, size_t len, const unsigned char *got,
                       size_t glen, int k)
{
    static unsigned char want[REPLY_MAX];
    size_t wl = make_reply(req, len, want);
    if (glen != wl || memcmp(got, want, wl) != 0) {
        corrupt("reply from s%d: %zu bytes, want %zu%s", k, glen, wl,
                glen == wl ? " (bytes differ)" : "");
        return -1;
    }
    return 0;
}

/* One synchronous call or a pipelined burst on L; a negative errno when
 * the channel failed (the link is then closed). Requests sometimes live in
 * our own slot (rpal_malloc: passed by pointer, read in place). */
static int exercise(struct link *l, int k, uint32_t *seq)
{
    static unsigned char reply[REPLY_MAX];
    struct {
        unsigned char *p;
        size_t len;
        int heap;
    } q[DEPTH];
    static unsigned char local[DEPTH][REQ_MAX];
    int n = rnd_below(3) == 0 ? 1 + (int)rnd_below(DEPTH) : 0; /* 0: rpal_call */
    int count = n ? n : 1, err = 0;
    for (int i = 0; i < count; i++) {
        q[i].heap = rnd_below(2) == 0;
        q[i].p = q[i].heap ? rpal_malloc(REQ_MAX) : NULL;
        if (!q[i].p) {
            q[i].heap = 0;
            q[i].p = local[i];
        }
        q[i].len = make_request(q[i].p, ++*seq);
    }
    size_t rl = 0;
    int done = 0;
    if (!n) {
        err = (int)OP("rpal_call", CALL_MS,
                      rpal_call(l->chan, q[0].p, q[0].len, reply, sizeof reply, &rl, CALL_MS));
        if (err == 0) {
            check_reply(q[0].p, q[0].len, reply, rl, k);
            done = 1;
        }
    } else {
        int sent = 0;
        for (; sent < n && !err; sent++)
            err = (int)OP("rpal_send", CALL_MS, rpal_send(l->chan, q[sent].p, q[sent].len, (uint64_t)sent));
        if (err)
            sent--;
        for (; done < sent; done++) {
            uint64_t tag = 0;
            int e = (int)OP("rpal_complete", CALL_MS,
                            rpal_complete(l->chan, &tag, reply, sizeof reply, &rl, CALL_MS));
            if (e < 0) {
                err = e;
                break;
            }
            if (tag != (uint64_t)done)
                corrupt("reply from s%d tagged %llu, want %d", k, (unsigned long long)tag, done);
            else
                check_reply(q[done].p, q[done].len, reply, rl, k);
        }
    }
    /* After a failure the service may still read a request in place:
     * such buffers stay allocated (they go with our slot). */
    for (int i = 0; i < count; i++)
        if (q[i].heap && (!err || i < done))
            rpal_free(q[i].p);
    return err;
}

static void caller_main(void)
{
    rpal_domain *d;
    int err;
    while ((err = (int)OP("rpal_domain_join", CALL_MS, rpal_domain_join(DOMAIN, NULL, &d))) < 0) {
        error("rpal_domain_join", err);
        if (stopping())
            return;
        sleep_ms(2);
    }
    struct link l[2] = {{0}};
    int gone[2] = {0, 0};
    uint32_t seq = 0;
    while (!stopping()) {
        int active = 0;
        for (int k = 0; k < 2 && !stopping(); k++) {
            if (gone[k])
                continue;
            if (!l[k].chan) {
                err = link_open(d, k, &l[k], CALL_MS);
                if (err < 0) {
                    if (err != -EAGAIN && !service_is_victim(k))
                        error("connect", err);
                    else if (err != -EAGAIN)
                        expected(err);
                    if (service_is_victim(k) && victim_dead())
                        gone[k] = 1;
                    continue;
                }
            }
            active = 1;
            atomic_store(&W->ready, 1);
            err = exercise(&l[k], k, &seq);
            if (err < 0) {
                if (!service_is_victim(k))
                    error("call", err);
                else
                    expected(err);
                link_close(&l[k]);
                if (service_is_victim(k) && victim_dead())
                    gone[k] = 1;
            }
            selftest_point();
        }
        if (!active)
            sleep_ms(1);
    }
    link_close(&l[0]);
    link_close(&l[1]);
    if (B->selftest == ST_LEAK && my_idx != B->victim) {
        /* A persistent region nobody removes: gc must leave it. */
        rpal_region *r;
        if (rpal_region_create("selftest-leak", PAGE, 0600, 0, &r) == 0)
            rpal_region_detach(r);
    }
    OP("rpal_domain_leave", CALL_MS, rpal_domain_leave(d));
}

/* ---- handshakers: the whole life of a client, over and over ---- */

static void handshaker_main(void)
{
    uint32_t seq = 0;
    while (!stopping()) {
        rpal_domain *d;
        int err = (int)OP("rpal_domain_join", CALL_MS, rpal_domain_join(DOMAIN, NULL, &d));
        if (err < 0) {
            error("rpal_domain_join", err);
            sleep_ms(1);
            continue;
        }
        struct link l = {0};
        err = link_open(d, 0, &l, CALL_MS);
        if (err == 0) {
            atomic_store(&W->ready, 1);
            err = exercise(&l, 0, &seq);
            if (err < 0 && !service_is_victim(0))
                error("call", err);
            else
                expected(err);
        } else if (err != -EAGAIN && !service_is_victim(0)) {
            error("connect", err);
        } else if (err != -EAGAIN) {
            expected(err);
        }
        link_close(&l);
        OP("rpal_domain_leave", CALL_MS, rpal_domain_leave(d));
        if (err < 0)
            sleep_ms(1);
        selftest_point();
    }
}

/* ---- region sharers: the owner (index 0) and attachers ---- */

/* Unmap whatever objects are left in our range (after a failed change). */
static void range_clear(rpal_region *r, uint64_t lo)
{
    struct rpal_region_object o[64];
    int n = rpal_region_layout(REGION, NULL, o, 64);
    for (int i = 0; i < n && i < 64; i++)
        if (o[i].offset >= lo && o[i].offset < lo + REGION_PAGES * PAGE) {
            struct rpal_region_change c = {.timeout_ms = CHANGE_MS};
            OP("rpal_region_unmap", CHANGE_MS + LOCK_MS,
               rpal_region_unmap(r, o[i].offset, o[i].length, &c));
        }
}

/* Map, fill, protect, check, unmap some pages of our own range. 0, or the
 * error of the change that failed. */
static int change_cycle(rpal_region *r, uint64_t lo, uint32_t seq)
{
    unsigned first = rnd_below(REGION_PAGES), n = 1 + rnd_below(REGION_PAGES - first);
    uint64_t off = lo + (uint64_t)first * PAGE, len = (uint64_t)n * PAGE;
    unsigned char *p = (unsigned char *)rpal_region_addr(r) + off;
    struct rpal_region_change c = {.timeout_ms = CHANGE_MS};
    int err = (int)OP("rpal_region_map", CHANGE_MS + LOCK_MS,
                      rpal_region_map(r, off, len, PROT_READ | PROT_WRITE, -1, 0, &c));
    if (err < 0)
        return err;
    for (uint64_t i = 0; i < len; i++)
        if (p[i]) {
            corrupt("a new anonymous object at +0x%llx reads %#x at byte %llu, not 0",
                    (unsigned long long)off, p[i], (unsigned long long)i);
            break;
        }
    uint64_t s = mix(((uint64_t)my_idx << 40) ^ seq ^ B->seed);
    fill(p, len, s);
    err = (int)OP("rpal_region_protect", CHANGE_MS + LOCK_MS,
                  rpal_region_protect(r, off, len, PROT_READ, &c));
    if (err < 0)
        return err;
    uint64_t want = 0, got = fnv(p, len);
    unsigned char *tmp = malloc(len);
    if (tmp) {
        fill(tmp, len, s);
        want = fnv(tmp, len);
        free(tmp);
        if (got != want)
            corrupt("region pages at +0x%llx changed under their writer",
                    (unsigned long long)off);
    }
    return (int)OP("rpal_region_unmap", CHANGE_MS + LOCK_MS, rpal_region_unmap(r, off, len, &c));
}

static void sharer_main(int owner)
{
    rpal_region *r = NULL;
    int err;
    while (!r && !stopping()) {
        if (owner)
            err = (int)OP("rpal_region_create", LOCK_MS,
                          rpal_region_create(REGION, 3 * REGION_PAGES * PAGE, 0600,
                                             RPAL_REGION_TRANSIENT | RPAL_REGION_EMPTY, &r));
        else
            err = (int)OP("rpal_region_attach", LOCK_MS, rpal_region_attach(REGION, 0, &r));
        if (err < 0) {
            if (err != -ENOENT || owner)
                error(owner ? "rpal_region_create" : "rpal_region_attach", err);
            r = NULL;
            sleep_ms(1);
        }
    }
    atomic_store(&W->ready, 1);
    uint64_t lo = (uint64_t)my_idx * REGION_PAGES * PAGE;
    uint32_t seq = 0;
    int stale = 0;
    while (r && !stopping() && !stale) {
        err = change_cycle(r, lo, ++seq);
        if (err == -ESTALE) {
            /* Detached for not answering in time (a starved machine). */
            error("region change (this process was detached)", err);
            stale = 1;
        } else if (err < 0) {
            error("region change", err);
            range_clear(r, lo);
        }
        if (owner && seq % 4 == 0) {
            /* Region creation and removal, killed in the middle too. */
            rpal_region *t;
            err = (int)OP("rpal_region_create", LOCK_MS,
                          rpal_region_create("chaos-scratch", 16 * PAGE, 0600,
                                             RPAL_REGION_TRANSIENT, &t));
            if (err == 0) {
                OP("rpal_region_detach", CALL_MS, rpal_region_detach(t));
                OP("rpal_region_unlink", CALL_MS, rpal_region_unlink("chaos-scratch"));
            } else {
                error("rpal_region_create", err);
            }
        }
        selftest_point();
    }
    if (r)
        OP("rpal_region_detach", CALL_MS, rpal_region_detach(r));
}

/* RPAL_CHAOS_BACKTRACE=1: a worker that faults prints where, then dies of
 * the signal as before (off by default: a sanitizer's handler says more). */
static void on_fault(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    char b[160];
    int n = snprintf(b, sizeof b, "rpal chaos: worker %d (pid %d): signal %d, code %d, address %p\n",
                     my_idx, (int)getpid(), sig, si->si_code, si->si_addr);
    if (write(2, b, (size_t)n) < 0)
        return;
    void *bt[32];
    backtrace_symbols_fd(bt, backtrace(bt, 32), 2);
}

static int worker_main(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    int role = atoi(argv[2]);
    my_idx = atoi(argv[3]);
    int fd = atoi(argv[4]);
    B = mmap(NULL, sizeof *B, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (B == MAP_FAILED || my_idx < 0 || my_idx >= MAXW)
        return 2;
    close(fd);
    W = &B->w[my_idx];
    atomic_store(&W->pid, (int)getpid());
    atomic_store(&W->started, 1);
    if (getenv("RPAL_CHAOS_BACKTRACE")) {
        struct sigaction sa = {0};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
        sigaction(SIGSEGV, &sa, NULL);
        sigaction(SIGBUS, &sa, NULL);
    }
    rnd_state = mix(B->seed ^ ((uint64_t)my_idx << 56));
    switch (role) {
    case R_SERVICE: service_main(); break;
    case R_CALLER: caller_main(); break;
    case R_HANDSHAKER: handshaker_main(); break;
    case R_OWNER: sharer_main(1); break;
    case R_ATTACHER: sharer_main(0); break;
    default: return 2;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The orchestrator                                                          */
/* ------------------------------------------------------------------------ */

enum { C_HANGS, C_CRASHES, C_LEAKS, C_CORRUPT, C_ERRORS, NCOUNTS };
static const char *const count_names[NCOUNTS] = {"hangs", "crashes", "leaks", "corrupt", "errors"};

#define MAX_POINTS 24
struct tally {
    long trials;
    long c[NCOUNTS];
    uint64_t ops, torn;
    long expected[NERRNO];
    /* Where the victims were when they were killed: the library call in
     * progress, or between calls, or before main(). */
    int npoints;
    char point[MAX_POINTS][32];
    long at_point[MAX_POINTS];
};

static void count_point(struct tally *t, const char *where)
{
    int i = 0;
    while (i < t->npoints && strcmp(t->point[i], where))
        i++;
    if (i == t->npoints) {
        if (i == MAX_POINTS)
            return;
        snprintf(t->point[t->npoints++], sizeof t->point[0], "%s", where);
    }
    t->at_point[i]++;
}

#define MAX_FAILS 200
struct failure {
    long trial;
    int kind, count;
    char what[300];
};

static struct {
    int json, verbose;
    long trials, from;
    uint64_t seed;
    int only_kind, selftest;
    char self[4096];
    int boardfd;
    struct tally total, per[NKINDS];
    struct failure fails[MAX_FAILS];
    int nfails, fails_left_off;
} G;

static void record(long trial, int kind, int count, const char *fmt, ...)
{
    G.total.c[count]++;
    G.per[kind].c[count]++;
    char what[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (G.verbose && !G.json)
        printf("trial %ld (%s): %s: %s\n", trial, kind_names[kind], count_names[count], what);
    if (G.nfails < MAX_FAILS) {
        struct failure *f = &G.fails[G.nfails++];
        f->trial = trial;
        f->kind = kind;
        f->count = count;
        snprintf(f->what, sizeof f->what, "%s", what);
    } else {
        G.fails_left_off++;
    }
}

/* ---- leaks: what is left in the namespace directory after gc ---- */

static const char *leak_root;
static long leak_trial;
static int leak_kind, leak_count;

/* The registry's shape (docs/regions.md; struct reg_entry in src/region.c):
 * a 64-byte header and 4096 entries of 256 bytes; an entry is held when its
 * state word (byte 36) is not 0 (free), and names its region at byte 40.
 * (A creator killed while filling a free entry leaves bytes in it, but the
 * entry stays free: that is no leak.) */
#define REG_HDR 64
#define REG_ENTRY 256
#define REG_ENTRIES 4096
#define REG_STATE_AT 36
#define REG_NAME_AT 40

static void registry_leaks(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size != REG_HDR + REG_ENTRY * REG_ENTRIES) {
        record(leak_trial, leak_kind, C_LEAKS, "%s: not a registry file", path);
        leak_count++;
        if (fd >= 0)
            close(fd);
        return;
    }
    unsigned char e[REG_ENTRY];
    for (unsigned i = 0; i < REG_ENTRIES; i++) {
        uint32_t state;
        if (pread(fd, e, sizeof e, REG_HDR + (off_t)i * REG_ENTRY) != (ssize_t)sizeof e)
            break;
        memcpy(&state, e + REG_STATE_AT, 4);
        if (state != 0) {
            char name[RPAL_NAME_MAX + 1];
            memcpy(name, e + REG_NAME_AT, RPAL_NAME_MAX);
            name[RPAL_NAME_MAX] = 0;
            record(leak_trial, leak_kind, C_LEAKS, "registry entry %u still held (region '%s', state %u)",
                   i, name, state);
            leak_count++;
        }
    }
    close(fd);
}

static int leak_walk(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    const char *rel = path + strlen(leak_root);
    if (*rel == '/')
        rel++;
    if (!*rel || type == FTW_DP)
        return 0; /* the directory itself; directories are checked below */
    const char *leaf = path + ftw->base;
    if (!strcmp(rel, ".rpal-registry")) {
        registry_leaks(path);
        return 0;
    }
    /* The furniture of a domain: its directory and its geometry. */
    if (!strcmp(rel, ".domains") || (type == FTW_D && !strncmp(rel, ".domains/", 9) &&
                                     !strchr(rel + 9, '/')))
        return 0;
    if (!strncmp(rel, ".domains/", 9) && !strcmp(leaf, "meta") &&
        strchr(rel + 9, '/') == strrchr(rel, '/'))
        return 0;
    const char *what = type == FTW_D ? "directory" : S_ISSOCK(st->st_mode) ? "socket"
                                                  : !strncmp(leaf, "slot.", 5) ? "slot claim"
                                                  : leaf[0] == '.' && strstr(leaf, ".lock") ? "lock file"
                                                  : "file";
    record(leak_trial, leak_kind, C_LEAKS, "%s %s left after gc", what, rel);
    leak_count++;
    return 0;
}

static void gc_note(const char *kind, const char *name, void *arg)
{
    (void)arg;
    if (G.verbose > 1 && !G.json)
        printf("  gc removed %s %s\n", kind, name);
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return type == FTW_DP ? rmdir(path) : unlink(path);
}

/* ---- one trial ---- */

struct worker {
    int role, idx;
    pid_t pid;
    int reaped, killed_by_us, hung;
};

static pid_t spawn(int role, int idx)
{
    pid_t pid = fork();
    if (pid == 0) {
        char r[8], i[8], f[16];
        snprintf(r, sizeof r, "%d", role);
        snprintf(i, sizeof i, "%d", idx);
        snprintf(f, sizeof f, "%d", G.boardfd);
        execl(G.self, G.self, "--worker", r, i, f, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* A trial in progress, as the supervisor sees it. */
struct trial {
    long t;
    int kind, n, v;      /* v: the victim's index in w[] */
    struct worker w[MAXW];
    int kill_after_ms;   /* after the victim starts (or 2 s) */
    int64_t t0, kill_at, stop_at, stopped_at;
    int phase, alive;    /* phase: 0 running, 1 clients told to stop, 2 all told */
};

/* The workers of T's kind, and which of them is the victim. */
static void cast(struct trial *T)
{
    struct worker *w = T->w;
    int n = 0, kind = T->kind;
    switch (kind) {
    case K_CALLER:
    case K_RECEIVER:
        w[n++] = (struct worker){R_SERVICE, 0, 0, 0, 0, 0};
        w[n++] = (struct worker){R_SERVICE, 1, 0, 0, 0, 0};
        w[n++] = (struct worker){R_CALLER, 2, 0, 0, 0, 0};
        w[n++] = (struct worker){R_CALLER, 3, 0, 0, 0, 0};
        B->victim = kind == K_CALLER ? 2 : 0;
        break;
    case K_HANDSHAKE:
        w[n++] = (struct worker){R_SERVICE, 0, 0, 0, 0, 0};
        w[n++] = (struct worker){R_HANDSHAKER, 1, 0, 0, 0, 0};
        w[n++] = (struct worker){R_HANDSHAKER, 2, 0, 0, 0, 0};
        B->victim = rnd_below(2) ? 1 : 0;
        break;
    default:
        w[n++] = (struct worker){R_OWNER, 0, 0, 0, 0, 0};
        w[n++] = (struct worker){R_ATTACHER, 1, 0, 0, 0, 0};
        w[n++] = (struct worker){R_ATTACHER, 2, 0, 0, 0, 0};
        B->victim = kind == K_OWNER ? 0 : 1;
        break;
    }
    T->n = n;
}

/* The trial's namespace directory DIR (under RUNDIR), and its workers
 * started in it. */
static void start_workers(struct trial *T, const char *rundir, char *dir, size_t len)
{
    snprintf(dir, len, "%s/t%ld", rundir, T->t);
    if (mkdir(dir, 0700) < 0) {
        fprintf(stderr, "rpal chaos: mkdir %s: %s\n", dir, strerror(errno));
        exit(2);
    }
    setenv("RPAL_DIR", dir, 1);
    for (int i = 0; i < T->n; i++) {
        T->w[i].pid = spawn(T->w[i].role, T->w[i].idx);
        if (T->w[i].pid < 0) {
            fprintf(stderr, "rpal chaos: fork: %s\n", strerror(errno));
            exit(2);
        }
    }
    T->t0 = now_ns();
    T->alive = T->n;
    T->v = -1;
    for (int i = 0; i < T->n; i++)
        if (T->w[i].idx == B->victim)
            T->v = i;
}

/* The kill: once the victim has started (or after 2 s), kill_after_ms
 * later; counted by where the victim was. */
static void maybe_kill(struct trial *T, int64_t now)
{
    struct wslot *vs = &B->w[B->victim];
    if (!T->kill_at && (atomic_load(&vs->started) || now - T->t0 > 2000000000ll))
        T->kill_at = now + (int64_t)T->kill_after_ms * 1000000;
    if (!T->kill_at || atomic_load(&B->killed) || now < T->kill_at)
        return;
    if (!T->w[T->v].reaped)
        kill(T->w[T->v].pid, SIGKILL);
    char where[32] = "(between calls)";
    if (!atomic_load(&vs->started))
        snprintf(where, sizeof where, "(before main)");
    else if (atomic_load(&vs->op[0].start_ns))
        snprintf(where, sizeof where, "%s", vs->op[0].name);
    else if (atomic_load(&vs->op[1].start_ns))
        snprintf(where, sizeof where, "%s", vs->op[1].name);
    count_point(&G.total, where);
    count_point(&G.per[T->kind], where);
    T->w[T->v].killed_by_us = 1;
    atomic_store(&B->killed, 1);
    T->stop_at = now + (int64_t)POST_MS * 1000000;
}

/* Clients stop first, services once their clients are gone, so that no
 * survivor's last call meets a service that left. */
static void stop_in_order(struct trial *T, int64_t now)
{
    if (T->stop_at && now >= T->stop_at && T->phase == 0) {
        for (int i = 0; i < T->n; i++)
            if (T->w[i].role != R_SERVICE)
                atomic_store(&B->w[T->w[i].idx].stop, 1);
        T->phase = 1;
        T->stopped_at = now;
    }
    if (T->phase == 1) {
        int clients = 0;
        for (int i = 0; i < T->n; i++)
            clients += T->w[i].role != R_SERVICE && !T->w[i].reaped;
        if (!clients) {
            for (int i = 0; i < T->n; i++)
                atomic_store(&B->w[T->w[i].idx].stop, 1);
            T->phase = 2;
        }
    }
}

/* The watchdog: a call past its deadline + 1 s is a hang, and so is a
 * worker that does not exit once told to stop; either is killed. */
static void watchdog(struct trial *T, int64_t now)
{
    for (int i = 0; i < T->n; i++) {
        struct worker *w = &T->w[i];
        struct wslot *s = &B->w[w->idx];
        if (w->reaped || w->hung || (w->killed_by_us && i == T->v))
            continue;
        const char *why = NULL;
        char buf[64];
        int limit_ms = EXIT_MS;
        for (int o = 0; o < 2 && !why; o++) {
            int64_t start = atomic_load(&s->op[o].start_ns);
            int lim = atomic_load(&s->op[o].deadline_ms) + SLACK_MS;
            if (start && now - start > (int64_t)(lim + 50) * 1000000) { /* 50: polling */
                snprintf(buf, sizeof buf, "%.31s", s->op[o].name);
                why = buf;
                limit_ms = lim;
            }
        }
        if (!why && T->stopped_at && now - T->stopped_at > (int64_t)EXIT_MS * 1000000)
            why = "(did not exit after being told to stop)";
        if (why) {
            record(T->t, T->kind, C_HANGS, "%s %d (pid %d) stuck in %s for over %d ms",
                   role_names[w->role], w->idx, (int)w->pid, why, limit_ms);
            w->hung = w->killed_by_us = 1;
            kill(w->pid, SIGKILL);
        }
    }
}

/* Workers that ended: any but the victim we killed that died of a signal
 * or exited non-zero is a crash. */
static void reap(struct trial *T)
{
    for (int i = 0; i < T->n; i++) {
        struct worker *w = &T->w[i];
        int st;
        if (w->reaped || waitpid(w->pid, &st, WNOHANG) != w->pid)
            continue;
        w->reaped = 1;
        T->alive--;
        if (w->killed_by_us && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
            continue;
        if (WIFSIGNALED(st) || WEXITSTATUS(st) != 0)
            record(T->t, T->kind, C_CRASHES, "%s %d (pid %d%s) %s %d", role_names[w->role],
                   w->idx, (int)w->pid, i == T->v ? ", the victim, before its kill" : "",
                   WIFSIGNALED(st) ? "died of signal" : "exited with status",
                   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
}

/* What each worker reported on the board, into the tallies. */
static void tally_workers(const struct trial *T)
{
    long t = T->t;
    int kind = T->kind;
    for (int i = 0; i < T->n; i++) {
        const struct worker *w = &T->w[i];
        struct wslot *s = &B->w[w->idx];
        uint64_t c = atomic_load(&s->corrupt), h = atomic_load(&s->hangs), e = atomic_load(&s->errors);
        for (uint64_t k = 0; k < c; k++)
            record(t, kind, C_CORRUPT, "%s %d: %s", role_names[w->role], w->idx, s->note);
        for (uint64_t k = 0; k < h; k++)
            record(t, kind, C_HANGS, "%s %d: %s", role_names[w->role], w->idx, s->note);
        G.total.c[C_ERRORS] += (long)e;
        G.per[kind].c[C_ERRORS] += (long)e;
        if (e && G.verbose && !G.json)
            printf("trial %ld (%s): %s %d: %llu error(s), first: %s\n", t, kind_names[kind],
                   role_names[w->role], w->idx, (unsigned long long)e, s->note);
        G.total.ops += atomic_load(&s->ops);
        G.per[kind].ops += atomic_load(&s->ops);
        G.total.torn += atomic_load(&s->torn);
        G.per[kind].torn += atomic_load(&s->torn);
        for (int e = 0; e < NERRNO; e++) {
            G.total.expected[e] += atomic_load(&s->expected[e]);
            G.per[kind].expected[e] += atomic_load(&s->expected[e]);
        }
    }
}

/* Everyone is gone: what gc leaves in DIR is leaked. */
static void check_leaks(long t, int kind, const char *dir)
{
    int removed = rpal_gc(gc_note, NULL);
    if (removed < 0)
        record(t, kind, C_LEAKS, "rpal_gc: %s", rpal_strerror(removed));
    leak_root = dir;
    leak_trial = t;
    leak_kind = kind;
    leak_count = 0;
    nftw(dir, leak_walk, 16, FTW_PHYS | FTW_DEPTH);
    nftw(dir, rm_one, 16, FTW_PHYS | FTW_DEPTH);
}

static void run_trial(long t, const char *rundir)
{
    uint64_t tseed = mix(G.seed ^ mix((uint64_t)t));
    rnd_state = tseed;
    struct trial T = {.t = t, .kind = G.only_kind >= 0 ? G.only_kind : (int)(t % NKINDS)};
    memset(B, 0, sizeof *B);
    B->seed = tseed;
    B->kind = T.kind;
    B->selftest = G.selftest;
    cast(&T);
    T.kill_after_ms = (int)rnd_below(KILL_WINDOW_MS + 1);
    char dir[4200];
    start_workers(&T, rundir, dir, sizeof dir);
    while (T.alive) {
        int64_t now = now_ns();
        maybe_kill(&T, now);
        stop_in_order(&T, now);
        watchdog(&T, now);
        reap(&T);
        if (T.alive)
            sleep_ms(1);
    }
    tally_workers(&T);
    check_leaks(t, T.kind, dir);
    G.total.trials++;
    G.per[T.kind].trials++;
}

static void json_tally(const struct tally *t)
{
    printf("\"trials\":%ld", t->trials);
    for (int c = 0; c < NCOUNTS; c++)
        printf(",\"%s\":%ld", count_names[c], t->c[c]);
    printf(",\"ops\":%llu,\"torn_requests\":%llu,\"killed_in\":{", (unsigned long long)t->ops,
           (unsigned long long)t->torn);
    for (int i = 0; i < t->npoints; i++)
        printf("%s\"%s\":%ld", i ? "," : "", t->point[i], t->at_point[i]);
    printf("},\"victim_errors\":{");
    for (int e = 0, first = 1; e < NERRNO; e++)
        if (t->expected[e]) {
            printf("%s\"%s\":%ld", first ? "" : ",", strerrorname_np(e), t->expected[e]);
            first = 0;
        }
    printf("}");
}

static void report(double secs)
{
    if (G.json) {
        printf("{\"seed\":\"0x%016llx\",\"first_trial\":%ld,\"seconds\":%.1f,",
               (unsigned long long)G.seed, G.from, secs);
        json_tally(&G.total);
        if (G.selftest)
            printf(",\"self_test\":\"%s\"", selftest_names[G.selftest]);
        printf(",\"kinds\":{");
        for (int k = 0, first = 1; k < NKINDS; k++) {
            if (!G.per[k].trials)
                continue;
            printf("%s\"%s\":{", first ? "" : ",", kind_names[k]);
            json_tally(&G.per[k]);
            printf("}");
            first = 0;
        }
        printf("},\"failures\":[");
        for (int i = 0; i < G.nfails; i++) {
            printf("%s{\"trial\":%ld,\"kind\":\"%s\",\"count\":\"%s\",\"what\":", i ? "," : "",
                   G.fails[i].trial, kind_names[G.fails[i].kind], count_names[G.fails[i].count]);
            json_str(G.fails[i].what);
            printf("}");
        }
        printf("],\"failures_left_off\":%d}\n", G.fails_left_off);
        return;
    }
    printf("rpal chaos: %ld trials from %ld, seed 0x%016llx, %.1f s%s%s\n", G.total.trials,
           G.from, (unsigned long long)G.seed, secs, G.selftest ? ", self-test " : "",
           G.selftest ? selftest_names[G.selftest] : "");
    printf("%-14s %7s %6s %8s %6s %8s %8s %10s\n", "KIND", "TRIALS", "HANGS", "CRASHES", "LEAKS",
           "CORRUPT", "ERRORS", "OPS");
    for (int k = 0; k <= NKINDS; k++) {
        const struct tally *t = k < NKINDS ? &G.per[k] : &G.total;
        if (k < NKINDS && !t->trials)
            continue;
        printf("%-14s %7ld %6ld %8ld %6ld %8ld %8ld %10llu\n", k < NKINDS ? kind_names[k] : "total",
               t->trials, t->c[C_HANGS], t->c[C_CRASHES], t->c[C_LEAKS], t->c[C_CORRUPT],
               t->c[C_ERRORS], (unsigned long long)t->ops);
    }
    if (G.verbose)
        for (int k = 0; k < NKINDS; k++) {
            if (!G.per[k].trials)
                continue;
            printf("%s victims killed in:", kind_names[k]);
            for (int i = 0; i < G.per[k].npoints; i++)
                printf("%s %s %ld", i ? "," : "", G.per[k].point[i], G.per[k].at_point[i]);
            printf("\n  survivors' calls failed by the death:");
            for (int e = 0, first = 1; e < NERRNO; e++)
                if (G.per[k].expected[e]) {
                    printf("%s %s %ld", first ? "" : ",", strerrorname_np(e), G.per[k].expected[e]);
                    first = 0;
                }
            putchar('\n');
        }
    int shown = 0;
    for (int i = 0; i < G.nfails && shown < 20; i++, shown++)
        printf("  trial %ld (%s): %s: %s\n", G.fails[i].trial, kind_names[G.fails[i].kind],
               count_names[G.fails[i].count], G.fails[i].what);
    if (G.nfails > shown || G.fails_left_off)
        printf("  ... and %d more (--json lists up to %d)\n",
               G.nfails - shown + G.fails_left_off, MAX_FAILS);
    if (G.nfails)
        printf("replay one trial: rpal chaos --seed 0x%016llx --from TRIAL --trials 1 -v\n",
               (unsigned long long)G.seed);
}

static const char *const usage_text =
    "usage: rpal chaos [--trials N] [--seed S] [--from I] [--kind KIND] [--json] [-v]\n"
    "                  [--progress N] [--self-test corrupt|leak|crash|hang]\n"
    "KIND: caller, receiver, region-owner, handshake, region-change\n"
    "(see rpal(1): what each trial does and what is counted)\n";

/* What was wrong with the arguments, then the usage: exit status 2. */
static int usage(const char *fmt, const char *word)
{
    fprintf(stderr, "rpal chaos: ");
    fprintf(stderr, fmt, word);
    fprintf(stderr, "\n%s", usage_text);
    return 2;
}

/* The options into G and *PROGRESS (a random seed unless one is given):
 * -1 to go on, else the exit status (0 after --help, 2 after a bad option,
 * said on stderr). */
static int parse_args(int argc, char **argv, long *progress)
{
    int have_seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        int takes = !strcmp(a, "--trials") || !strcmp(a, "--from") || !strcmp(a, "--progress") ||
                    !strcmp(a, "--seed") || !strcmp(a, "--kind") || !strcmp(a, "--self-test");
        if (takes && !val)
            return usage("%s needs a value", a);
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            G.json = 1;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            G.verbose++;
        } else if (!strcmp(a, "-vv")) {
            G.verbose += 2;
        } else if (!strcmp(a, "--trials")) {
            G.trials = strtol(val, &end, 10);
            i++;
            if (*end || G.trials < 1)
                return usage("bad --trials '%s': a number of at least 1", val);
        } else if (!strcmp(a, "--from")) {
            G.from = strtol(val, &end, 10);
            i++;
            if (*end || G.from < 0)
                return usage("bad --from '%s': a trial number, from 0", val);
        } else if (!strcmp(a, "--progress")) {
            *progress = strtol(val, &end, 10);
            i++;
            if (*end || *progress < 0)
                return usage("bad --progress '%s': every how many trials, 0 for never", val);
        } else if (!strcmp(a, "--seed")) {
            G.seed = strtoull(val, &end, 0);
            i++;
            have_seed = 1;
            if (*end)
                return usage("bad --seed '%s': a number (0x... as it is printed)", val);
        } else if (!strcmp(a, "--kind")) {
            i++;
            for (int k = 0; k < NKINDS; k++)
                if (!strcmp(val, kind_names[k]))
                    G.only_kind = k;
            if (G.only_kind < 0)
                return usage("no kind '%s'", val);
        } else if (!strcmp(a, "--self-test")) {
            i++;
            for (int k = 1; k <= ST_CRASH; k++)
                if (!strcmp(val, selftest_names[k]))
                    G.selftest = k;
            if (!G.selftest)
                return usage("no self-test '%s'", val);
        } else {
            return usage(a[0] == '-' ? "unknown option '%s'" : "unexpected argument '%s'", a);
        }
    }
    if (!have_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        G.seed = mix((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid());
    }
    return -1;
}

/* Our own path (workers are exec'd from it) and the board the workers
 * report on, shared through an inherited descriptor; 0 or -1. */
static int setup_board(void)
{
    ssize_t len = readlink("/proc/self/exe", G.self, sizeof G.self - 1);
    if (len <= 0) {
        perror("rpal chaos: /proc/self/exe");
        return -1;
    }
    G.self[len] = 0;
    /* The board crosses exec as an inherited descriptor. */
    G.boardfd = memfd_create("rpal-chaos-board", 0);
    if (G.boardfd < 0 || ftruncate(G.boardfd, sizeof *B) < 0 ||
        (B = mmap(NULL, sizeof *B, PROT_READ | PROT_WRITE, MAP_SHARED, G.boardfd, 0)) == MAP_FAILED) {
        perror("rpal chaos: board");
        return -1;
    }
    return 0;
}

/* Every trial asked for, with progress on stderr (every PROGRESS trials,
 * or a line kept up to date on a terminal). */
static void run_trials(const char *rundir, long progress)
{
    int tty = isatty(2);
    if (!progress)
        progress = 100;
    int64_t t0 = now_ns();
    for (long t = G.from; t < G.from + G.trials; t++) {
        run_trial(t, rundir);
        fflush(stdout);
        long done = t - G.from + 1;
        long bad = G.total.c[C_HANGS] + G.total.c[C_CRASHES] + G.total.c[C_LEAKS] +
                   G.total.c[C_CORRUPT];
        if (tty)
            fprintf(stderr, "\r%ld/%ld trials, %ld failures", done, G.trials, bad);
        else if (done % progress == 0 || done == G.trials)
            fprintf(stderr, "rpal chaos: %ld/%ld trials, %ld failures, %.0f s\n", done, G.trials,
                    bad, (double)(now_ns() - t0) / 1e9);
    }
    if (tty)
        fputc('\n', stderr);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--worker"))
        return worker_main(argc, argv);
    G.trials = 100;
    G.only_kind = -1;
    long progress = 0;
    int rc = parse_args(argc, argv, &progress);
    if (rc >= 0)
        return rc;
    if (setup_board() < 0)
        return 2;
    const char *tmp = getenv("TMPDIR");
    char rundir[4096];
    snprintf(rundir, sizeof rundir, "%s/rpal-chaos-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : tmp ? tmp : "/tmp");
    if (!mkdtemp(rundir)) {
        perror("rpal chaos: mkdtemp");
        return 2;
    }
    if (!G.json)
        printf("rpal chaos: seed 0x%016llx\n", (unsigned long long)G.seed);
    fprintf(stderr, "rpal chaos: %ld trials, seed 0x%016llx, namespaces in %s\n", G.trials,
            (unsigned long long)G.seed, rundir);
    fflush(stdout);
    int64_t t0 = now_ns();
    run_trials(rundir, progress);
    rmdir(rundir);
    report((double)(now_ns() - t0) / 1e9);
    long bad = G.total.c[C_HANGS] + G.total.c[C_CRASHES] + G.total.c[C_LEAKS] +
               G.total.c[C_CORRUPT];
    return bad ? 1 : 0;
}
