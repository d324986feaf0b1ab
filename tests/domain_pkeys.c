/* Protection keys on peer slots (principle 4). Skipped where the CPU or the
 * kernel has no PKU. The test process is a service with 20 client peers
 * (forked processes, more peers than there are keys), each of which wrote
 * its pid into a block of its slot. Then, in the service:
 *
 *  - a read of a peer's slot outside an access window faults with SIGSEGV,
 *    si_code SEGV_PKUERR, at the address read; inside a window it reads the
 *    client's pid; our own slot needs no window;
 *  - windows nest: the slot stays open until the outermost end;
 *  - a window is per thread: another thread faults on the peer while this
 *    one has it open, and its own window does not close ours;
 *  - with 20 peers and at most 15 keys, a window on each in turn works and,
 *    after it, a read outside windows still faults for every one of them;
 *    windows open on many peers at once either work or are refused with
 *    -EBUSY, never leave a peer readable outside a window;
 *  - four threads opening windows on random peers at once (keys taken back
 *    from one peer for another all the while, by the lock-free begin
 *    racing the locked one): every window that opens reads its peer;
 *  - a peer that dies while another thread has a window open on it does not
 *    leave that thread able to read the next peer that gets its key.
 *
 * Faults are caught in the process itself (SA_SIGINFO + siglongjmp): peer
 * slots are not inherited by a forked child. The kernel runs the handler
 * with the default key rights, which stay after siglongjmp; the test opens
 * no window across a caught fault.
 */
#include "testlib.h"

#include <dirent.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <time.h>

#define DOMAIN "tpkeys"
#define SLOT_SIZE (1ull << 30)
#define NPEERS 20
#define MAGIC 0x7379656b706c6172ull

struct block {
    uint64_t magic;
    int64_t pid;
};

struct record {
    int32_t pid, err;
    uint64_t block;
};



/* ---- a client ---- */

static int client(int rec_fd, int go_fd, const rpal_key *key)
{
    alarm(60);
    t_close_inherited(rec_fd, go_fd, -1);
    struct record r = {.pid = getpid(), .err = -1};
    struct rpal_domain_opts o = {.slot_size = SLOT_SIZE};
    rpal_domain *d;
    r.err = rpal_domain_join(DOMAIN, &o, &d);
    if (r.err == 0) {
        struct block *b = rpal_malloc(sizeof *b);
        REQUIRE(b);
        b->magic = MAGIC;
        b->pid = getpid();
        r.block = (uint64_t)(uintptr_t)b;
        rpal_peer *p;
        r.err = rpal_service_request(d, "svc", key, 20000, &p);
    }
    REQUIRE(write(rec_fd, &r, sizeof r) == (ssize_t)sizeof r);
    char c;
    while (read(go_fd, &c, 1) < 0 && errno == EINTR)
        ;
    return r.err == 0 ? 0 : 1;
}

/* ---- the other thread ---- */

struct other {
    rpal_peer *p;
    uint64_t addr, want;
    int to_main[2], to_thread[2];
    int failures;
};

static void say(int fd, char c) { REQUIRE(write(fd, &c, 1) == 1); }
static char hear(int fd)
{
    char c = 0;
    struct pollfd pf = {fd, POLLIN, 0};
    REQUIRE(poll(&pf, 1, 10000) == 1);
    REQUIRE(read(fd, &c, 1) == 1);
    return c;
}

static void *other_thread(void *arg)
{
    struct other *o = arg;
    /* 1: the main thread has P open; we do not. */
    REQUIRE(hear(o->to_thread[0]) == '1');
    o->failures += !t_pku_faults("other thread, main's window open", o->addr);
    /* Our own window works, and ends without closing the main thread's. */
    o->failures += rpal_peer_access_begin(o->p) != 0;
    o->failures += !t_reads("other thread, own window", o->addr, o->want);
    o->failures += rpal_peer_access_end(o->p) != 0;
    o->failures += !t_pku_faults("other thread, after its window", o->addr);
    say(o->to_main[1], 'a');
    /* 2: the main thread closed its window; we open ours, it must fault. */
    REQUIRE(hear(o->to_thread[0]) == '2');
    o->failures += rpal_peer_access_begin(o->p) != 0;
    o->failures += !t_reads("other thread, window", o->addr, o->want);
    say(o->to_main[1], 'b');
    REQUIRE(hear(o->to_thread[0]) == '3');
    o->failures += rpal_peer_access_end(o->p) != 0;
    say(o->to_main[1], 'c');
    return NULL;
}

/* Windows on random peers, from several threads at once. */
#define STORM_THREADS 4
#define STORM_WINDOWS 3000
struct storm {
    rpal_peer **peers;
    const uint64_t *addr, *want;
    unsigned seed;
    int opened, busy, failures;
};

static void *storm_thread(void *arg)
{
    struct storm *st = arg;
    for (int k = 0; k < STORM_WINDOWS; k++) {
        st->seed = st->seed * 1103515245u + 12345u;
        int i = (int)((st->seed >> 16) % NPEERS);
        int err = rpal_peer_access_begin(st->peers[i]);
        if (err == -EBUSY) {
            st->busy++;
            continue;
        }
        if (err != 0) {
            fprintf(stderr, "storm: begin on peer %d: %s\n", i, rpal_strerror(err));
            st->failures++;
            continue;
        }
        st->opened++;
        /* No fault may be caught with the window open (the handler's key
         * rights would stay): a failure here ends the thread's storm. */
        uint64_t v = 0, where = 0;
        int code = 0;
        int sig = t_try_read(st->addr[i], &v, &code, &where);
        if (sig || v != st->want[i]) {
            fprintf(stderr, "storm: window on peer %d: signal %d code %d value %#" PRIx64
                    "\n", i, sig, code, v);
            st->failures++;
            return NULL;
        }
        st->failures += rpal_peer_access_end(st->peers[i]) != 0;
    }
    return NULL;
}

/* A thread with a window open on a peer that dies. */
struct dying {
    rpal_peer *x;
    uint64_t xaddr, xwant, yaddr;
    int to_main[2], to_thread[2];
    int failures;
};

static void *dying_thread(void *arg)
{
    struct dying *o = arg;
    REQUIRE(hear(o->to_thread[0]) == '1');
    o->failures += rpal_peer_access_begin(o->x) != 0;
    o->failures += !t_reads("window on the peer that will die", o->xaddr, o->xwant);
    say(o->to_main[1], 'a');
    /* 2: it died and is unmapped; our window ends (however it reports). */
    REQUIRE(hear(o->to_thread[0]) == '2');
    (void)rpal_peer_access_end(o->x);
    say(o->to_main[1], 'b');
    /* 3: another peer got a key meanwhile; we have no window on it. */
    REQUIRE(hear(o->to_thread[0]) == '3');
    o->failures += !t_pku_faults("peer that got the dead peer's key, no window", o->yaddr);
    say(o->to_main[1], 'c');
    return NULL;
}

int main(void)
{
    t_init();
    alarm(60);
#if !defined(__x86_64__)
    t_skip("protection keys are used on x86-64 only (arm64's overlays are not)");
#endif
    if (!(rpal_capabilities() & RPAL_CAP_PKU))
        t_skip("no protection keys (pku) on this CPU or kernel");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = t_on_fault;
    sa.sa_flags = SA_SIGINFO;
    REQUIRE(sigaction(SIGSEGV, &sa, NULL) == 0);

    struct rpal_domain_opts o = {.slot_size = SLOT_SIZE};
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, &o, &d) == 0);
    rpal_service *s;
    REQUIRE(rpal_service_register(d, "svc", 0600, NULL, NULL, &s) == 0);
    rpal_key key;
    REQUIRE(rpal_service_key(s, &key) == 0);
    uint64_t *own = rpal_malloc(sizeof *own);
    REQUIRE(own);
    *own = 0x1234;

    int rec[2], go[2];
    REQUIRE(pipe(rec) == 0 && pipe(go) == 0);
    pid_t kids[NPEERS];
    for (int i = 0; i < NPEERS; i++) {
        kids[i] = fork();
        REQUIRE(kids[i] >= 0);
        if (kids[i] == 0)
            _exit(client(rec[1], go[0], &key));
    }
    close(rec[1]);
    close(go[0]);

    rpal_peer *peers[NPEERS];
    int n = 0;
    int64_t deadline = t_now_ms() + 20000;
    while (n < NPEERS && t_now_ms() < deadline) {
        struct rpal_event ev[16];
        int k = rpal_domain_dispatch(d, ev, 16, 200);
        for (int i = 0; i < k; i++)
            if (ev[i].type == RPAL_EV_PEER_ACCEPTED && n < NPEERS)
                peers[n++] = ev[i].peer;
    }
    REQUIRE(n == NPEERS);
    struct record recs[NPEERS];
    for (int i = 0; i < NPEERS; i++) {
        struct pollfd pf = {rec[0], POLLIN, 0};
        REQUIRE(poll(&pf, 1, 10000) == 1);
        REQUIRE(read(rec[0], &recs[i], sizeof recs[i]) == (ssize_t)sizeof recs[i]);
        CHECK(recs[i].err == 0);
    }
    /* Where each peer's pid is. */
    uint64_t addr[NPEERS], want[NPEERS];
    for (int i = 0; i < NPEERS; i++) {
        struct rpal_peer_info info;
        REQUIRE(rpal_peer_info(peers[i], &info) == 0);
        addr[i] = 0;
        for (int j = 0; j < NPEERS; j++)
            if (recs[j].pid == info.pid)
                addr[i] = recs[j].block + offsetof(struct block, pid);
        REQUIRE(addr[i]);
        uint64_t base = (uint64_t)(uintptr_t)rpal_peer_base(peers[i]);
        REQUIRE(addr[i] > base && addr[i] < base + SLOT_SIZE);
        want[i] = (uint64_t)info.pid;
    }

    /* One peer: outside faults, inside reads; our own slot is free. */
    rpal_peer *p = peers[0];
    CHECK(t_reads("own slot", (uint64_t)(uintptr_t)own, 0x1234));
    CHECK(t_pku_faults("before any window", addr[0]));
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(t_reads("window", addr[0], want[0]));
    CHECK(t_reads("own slot in a window", (uint64_t)(uintptr_t)own, 0x1234));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(t_pku_faults("after the window", addr[0]));

    /* Windows nest. */
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(t_reads("nested window", addr[0], want[0]));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(t_reads("outer window after the inner one ended", addr[0], want[0]));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(t_pku_faults("after nested windows", addr[0]));
    CHECK(rpal_peer_access_end(p) < 0); /* no window left to end */
    CHECK(t_pku_faults("after a stray end", addr[0]));

    /* Per thread. The thread starts before any window is open here (a new
     * thread inherits its creator's key rights). */
    struct other ot = {.p = p, .addr = addr[0], .want = want[0]};
    REQUIRE(pipe(ot.to_main) == 0 && pipe(ot.to_thread) == 0);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, other_thread, &ot) == 0);
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(t_reads("main window", addr[0], want[0]));
    say(ot.to_thread[1], '1');
    CHECK(hear(ot.to_main[0]) == 'a');
    CHECK(t_reads("main window after the other thread's ended", addr[0], want[0]));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(t_pku_faults("main, window closed", addr[0]));
    say(ot.to_thread[1], '2');
    CHECK(hear(ot.to_main[0]) == 'b');
    CHECK(t_pku_faults("main, while the other thread has a window", addr[0]));
    say(ot.to_thread[1], '3');
    CHECK(hear(ot.to_main[0]) == 'c');
    REQUIRE(pthread_join(th, NULL) == 0);
    CHECK(ot.failures == 0);

    /* More peers than keys: each in turn. */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < NPEERS; i++) {
            char what[64];
            snprintf(what, sizeof what, "round %d peer %d", round, i);
            CHECK(t_pku_faults(what, addr[i]));
            CHECK_ERR(rpal_peer_access_begin(peers[i]), 0);
            CHECK(t_reads(what, addr[i], want[i]));
            CHECK_ERR(rpal_peer_access_end(peers[i]), 0);
            CHECK(t_pku_faults(what, addr[i]));
        }
        for (int i = 0; i < NPEERS; i++)
            CHECK(t_pku_faults("after all windows", addr[i]));
    }

    /* Many open at once: each begin works or says -EBUSY (keys run out);
     * every open one reads; closed, all fault again. */
    int opened[NPEERS], nopen = 0;
    for (int i = 0; i < NPEERS; i++) {
        int err = rpal_peer_access_begin(peers[i]);
        opened[i] = err == 0;
        nopen += opened[i];
        if (err != 0 && err != -EBUSY) {
            fprintf(stderr, "begin on peer %d with %d open: %s\n", i, nopen,
                    rpal_strerror(err));
            t_failures++;
        }
    }
    printf("%d peers open at once\n", nopen);
    CHECK(nopen >= 2);
    for (int i = 0; i < NPEERS; i++) {
        if (opened[i])
            CHECK(t_reads("many open", addr[i], want[i]));
    }
    for (int i = 0; i < NPEERS; i++)
        if (opened[i])
            CHECK_ERR(rpal_peer_access_end(peers[i]), 0);
    for (int i = 0; i < NPEERS; i++)
        CHECK(t_pku_faults("after many open", addr[i]));
    /* And a window on any one of them still works after that. */
    CHECK_ERR(rpal_peer_access_begin(peers[NPEERS - 1]), 0);
    CHECK(t_reads("last peer", addr[NPEERS - 1], want[NPEERS - 1]));
    CHECK_ERR(rpal_peer_access_end(peers[NPEERS - 1]), 0);

    /* Four threads at once, on random peers. */
    {
        struct storm st[STORM_THREADS];
        pthread_t ths[STORM_THREADS];
        for (int t = 0; t < STORM_THREADS; t++) {
            st[t] = (struct storm){.peers = peers, .addr = addr, .want = want,
                                   .seed = 7919u * (unsigned)(t + 1)};
            REQUIRE(pthread_create(&ths[t], NULL, storm_thread, &st[t]) == 0);
        }
        int opened = 0, busy = 0;
        for (int t = 0; t < STORM_THREADS; t++) {
            REQUIRE(pthread_join(ths[t], NULL) == 0);
            CHECK(st[t].failures == 0);
            opened += st[t].opened;
            busy += st[t].busy;
        }
        printf("storm: %d windows opened, %d refused (-EBUSY)\n", opened, busy);
        CHECK(opened > STORM_THREADS * STORM_WINDOWS / 2);
        for (int i = 0; i < NPEERS; i++)
            CHECK(t_pku_faults("after the storm", addr[i]));
    }

    /* A peer dies while another thread has a window on it. First a known
     * state: the peers accessed last hold the keys, the first do not. */
    for (int i = 0; i < NPEERS; i++) {
        CHECK_ERR(rpal_peer_access_begin(peers[i]), 0);
        CHECK_ERR(rpal_peer_access_end(peers[i]), 0);
    }
    int x = NPEERS - 1, y = 0, ngone = 0;
    struct rpal_peer_info xinfo;
    REQUIRE(rpal_peer_info(peers[x], &xinfo) == 0);
    struct dying dy = {.x = peers[x], .xaddr = addr[x], .xwant = want[x], .yaddr = addr[y]};
    REQUIRE(pipe(dy.to_main) == 0 && pipe(dy.to_thread) == 0);
    REQUIRE(pthread_create(&th, NULL, dying_thread, &dy) == 0);
    say(dy.to_thread[1], '1');
    CHECK(hear(dy.to_main[0]) == 'a');
    REQUIRE(kill(xinfo.pid, SIGKILL) == 0);
    deadline = t_now_ms() + 5000;
    int xgone = 0;
    while (!xgone && t_now_ms() < deadline) {
        struct rpal_event ev[16];
        int k = rpal_domain_dispatch(d, ev, 16, 200);
        for (int i = 0; i < k; i++)
            if (ev[i].type == RPAL_EV_PEER_GONE) {
                ngone++;
                xgone |= ev[i].peer == peers[x];
            }
    }
    CHECK(xgone);
    say(dy.to_thread[1], '2');
    CHECK(hear(dy.to_main[0]) == 'b');
    CHECK_ERR(rpal_peer_access_begin(peers[y]), 0);
    CHECK(t_reads("peer after the death", addr[y], want[y]));
    CHECK_ERR(rpal_peer_access_end(peers[y]), 0);
    say(dy.to_thread[1], '3');
    CHECK(hear(dy.to_main[0]) == 'c');
    REQUIRE(pthread_join(th, NULL) == 0);
    CHECK(dy.failures == 0);
    CHECK(t_pku_faults("main, after the death", addr[y]));

    /* The clients go. */
    close(go[1]);
    deadline = t_now_ms() + 10000;
    while (ngone < NPEERS && t_now_ms() < deadline) {
        struct rpal_event ev[16];
        int k = rpal_domain_dispatch(d, ev, 16, 200);
        for (int i = 0; i < k; i++)
            ngone += ev[i].type == RPAL_EV_PEER_GONE;
    }
    CHECK(ngone == NPEERS);
    for (int i = 0; i < NPEERS; i++)
        CHECK_ERR(rpal_peer_release(peers[i]), 0);
    for (int i = 0; i < NPEERS; i++)
        CHECK(t_wait(kids[i]) == (kids[i] == xinfo.pid ? 128 + SIGKILL : 0));
    CHECK_ERR(rpal_service_unregister(s), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}
