/* What a protection key changes beyond the windows themselves (principle 4;
 * tests/domain_pkeys has the windows, nesting, threads and rotation).
 * Skipped where the CPU or the kernel has no PKU: without keys none of this
 * can be seen. A service process S with a receiver thread, and this process,
 * its requester:
 *
 *  - a recovery point turns a read of S's slot outside a window into -EFAULT
 *    (the fault is SEGV_PKUERR) and lets it through inside one;
 *  - a fault that a recovery point recovers does not close the thread's
 *    open windows (the kernel runs the handler with its default key rights,
 *    and siglongjmp does not give the old ones back: rpal_guard does);
 *  - a thread made inside a window inherits it (it reads the slot without
 *    one), a thread made outside faults;
 *  - a channel pins S's slot: while it is open every thread reads the slot
 *    without a window, a thread that never opened one among them, and calls
 *    work both ways (S's receiver reads our ring through its own pin);
 *  - a window opened while the pin held (it has no key of its own) still
 *    reads after the channel closes, until it ends; so does one opened
 *    before the pin; after both, a read outside a window faults again;
 *  - a forked child gets -ECHILD from the window calls, and gets every key
 *    back: after joining on its own it can allocate as many keys as a fresh
 *    process (the parent's allocations were copied into it at fork).
 */
#include "testlib.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define DOMAIN "tpins"
#define MAGIC 0x736e69706c617072ull

struct block {
    uint64_t magic;
    int64_t pid;
};

static int to_parent[2], to_svc[2];
static rpal_service *svc;
static atomic_int stop_recv;

static void *receiver_main(void *arg)
{
    (void)arg;
    rpal_receiver *r;
    REQUIRE(rpal_receiver_create(svc, NULL, &r) == 0);
    while (!atomic_load(&stop_recv)) {
        int err = t_serve_xor(r, 50);
        REQUIRE(err == 0 || err == -ETIMEDOUT || err == -ESHUTDOWN);
    }
    rpal_receiver_destroy(r);
    return NULL;
}

static int service(void)
{
    alarm(120);
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
    struct block *b = rpal_malloc(sizeof *b);
    REQUIRE(b);
    b->magic = MAGIC;
    b->pid = getpid();
    REQUIRE(rpal_service_register(d, "echo", 0600, NULL, NULL, &svc) == 0);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, receiver_main, NULL) == 0);
    rpal_key k;
    char text[33];
    REQUIRE(rpal_service_key(svc, &k) == 0 && rpal_key_format(&k, text) == 0);
    t_put_line(to_parent[1], "%s %" PRIx64 "\n", text, (uint64_t)(uintptr_t)&b->pid);
    t_dispatch_until(d, to_svc[0]);
    atomic_store(&stop_recv, 1);
    pthread_join(th, NULL);
    rpal_domain_leave(d);
    return 0;
}

static int read_fn(void *arg)
{
    return (int)(*(volatile int64_t *)arg & 0x7fffffff);
}

struct reader {
    const char *what;
    uint64_t addr, want;
    int fault; /* 1: the read must fault (SEGV_PKUERR), 0: it must read WANT */
    int ok;
};

/* A thread that never opens a window: what may it read? */
static void *reader_main(void *arg)
{
    struct reader *r = arg;
    r->ok = r->fault ? t_pku_faults(r->what, r->addr) : t_reads(r->what, r->addr, r->want);
    return NULL;
}

static int thread_reads(const char *what, uint64_t addr, uint64_t want, int fault)
{
    struct reader rd = {.what = what, .addr = addr, .want = want, .fault = fault};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, reader_main, &rd) == 0);
    REQUIRE(pthread_join(th, NULL) == 0);
    return rd.ok;
}

/* How many keys this process can still allocate (all given back after). */
static int free_keys(void)
{
    int k[16], n = 0;
    while (n < 16 && (k[n] = pkey_alloc(0, PKEY_DISABLE_ACCESS)) >= 0)
        n++;
    for (int i = 0; i < n; i++)
        pkey_free(k[i]);
    return n;
}

static int fork_child(rpal_peer *p, int fresh_keys)
{
    alarm(60);
    CHECK_ERR(rpal_peer_access_begin(p), -ECHILD);
    CHECK_ERR(rpal_peer_access_end(p), -ECHILD);
    rpal_domain *d;
    CHECK_ERR(rpal_domain_join(DOMAIN, NULL, &d), 0);
    int n = free_keys();
    if (n != fresh_keys) {
        fprintf(stderr, "forked child: %d keys free, a fresh process has %d\n", n,
                fresh_keys);
        t_failures++;
    }
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}

int main(void)
{
    t_init();
    alarm(120);
#if !defined(__x86_64__)
    t_skip("protection keys are used on x86-64 only (arm64's overlays are not)");
#endif
    if (!(rpal_capabilities() & RPAL_CAP_PKU))
        t_skip("no protection keys (pku) on this CPU or kernel");
    int fresh_keys = free_keys();
    REQUIRE(pipe(to_parent) == 0 && pipe(to_svc) == 0);
    pid_t spid = fork();
    REQUIRE(spid >= 0);
    if (spid == 0)
        _exit(service());
    t_catch_faults(); /* before rpal_guard's handler, which chains to it */

    char line[128], keytext[33];
    uint64_t addr;
    REQUIRE(t_get_line(to_parent[0], line, sizeof line, 30000) == 0);
    REQUIRE(sscanf(line, "%32s %" SCNx64, keytext, &addr) == 2);
    rpal_key key;
    REQUIRE(rpal_key_parse(keytext, &key) == 0);
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
    rpal_peer *p;
    REQUIRE(rpal_service_request(d, "echo", &key, 10000, &p) == 0);
    uint64_t want = (uint64_t)spid;

    /* Recovery points: outside a window the key's fault is an error code. */
    CHECK(t_pku_faults("outside a window", addr));
    CHECK_ERR(rpal_guard((void *)(uintptr_t)addr, 8, read_fn, (void *)(uintptr_t)addr),
              -EFAULT);
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK_ERR(rpal_guard((void *)(uintptr_t)addr, 8, read_fn, (void *)(uintptr_t)addr),
              (int)want);

    /* A recovered fault elsewhere leaves the window open. */
    void *none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(none != MAP_FAILED);
    CHECK_ERR(rpal_guard(none, 8, read_fn, none), -EFAULT);
    CHECK(t_reads("in the window after a recovered fault", addr, want));
    CHECK_ERR(rpal_guard((void *)(uintptr_t)addr, 8, read_fn, (void *)(uintptr_t)addr),
              (int)want);
    /* A thread inherits its creator's key rights (docs/domains.md): made
     * inside the window it reads the peer without one of its own; made
     * outside, it faults. */
    CHECK(thread_reads("a thread made inside a window", addr, want, 0));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(t_pku_faults("after the window", addr));
    CHECK(thread_reads("a thread made outside windows", addr, want, 1));
    munmap(none, 4096);

    /* A channel pins the service's slot for every thread. */
    rpal_chan *c;
    int err;
    for (int tries = 0; (err = rpal_chan_open(p, NULL, 5000, &c)) == -EAGAIN && tries < 200;
         tries++)
        usleep(10000); /* the receiver thread may not exist yet */
    REQUIRE(err == 0);
    unsigned char req[48], rep[48];
    size_t rlen = 0;
    for (size_t i = 0; i < sizeof req; i++)
        req[i] = (unsigned char)i;
    CHECK_ERR(rpal_call(c, req, sizeof req, rep, sizeof rep, &rlen, 10000), 0);
    CHECK(t_xor_ok(req, sizeof req, rep, rlen));
    CHECK(t_reads("no window, the channel open", addr, want));
    CHECK(thread_reads("a thread without a window, the channel open", addr, want, 0));

    /* A window opened under the pin outlives it. */
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK_ERR(rpal_chan_close(c), 0);
    CHECK(t_reads("a window opened under the pin, the channel closed", addr, want));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(t_pku_faults("that window ended", addr));

    /* So does one opened before the pin. */
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    for (int tries = 0; (err = rpal_chan_open(p, NULL, 5000, &c)) == -EAGAIN && tries < 200;
         tries++)
        usleep(10000);
    REQUIRE(err == 0);
    CHECK_ERR(rpal_call(c, req, sizeof req, rep, sizeof rep, &rlen, 10000), 0);
    CHECK(t_xor_ok(req, sizeof req, rep, rlen));
    CHECK_ERR(rpal_chan_close(c), 0);
    CHECK(t_reads("a window opened before the pin, the channel closed", addr, want));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(t_pku_faults("no pin, no window", addr));

    /* A forked child, forked with a window open. */
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0)
        _exit(fork_child(p, fresh_keys));
    CHECK(t_wait(child) == 0);
    CHECK(t_reads("the parent's window after the fork", addr, want));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(t_pku_faults("the parent, after the fork", addr));

    t_put(to_svc[1], 'q');
    CHECK(t_wait(spid) == 0);
    CHECK_ERR(rpal_peer_release(p), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}
