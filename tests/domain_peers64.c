/* 64 peers at once. One service (the test process) and 64 client processes
 * (forked; each closes what it inherited and joins on its own) that all ask
 * for sharing at the same time. The service dispatches until it has accepted
 * 64 peers, then checks that every peer has its own slot, at its own
 * address, and reads in each (inside an access window) the block in which
 * that client wrote its pid and slot. Every client reads the service's block
 * too. Then all clients exit, and the service gets 64 RPAL_EV_PEER_GONE
 * events, one per peer, each with its slot unmapped.
 */
#include "testlib.h"
#include "internal.h"

#include <dirent.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>

#define DOMAIN "tpeers64"
#define SLOT_SIZE (1ull << 30)
#define NCLIENTS 64
#define MAGIC 0x3436737265657070ull /* "ppeers64" */

struct block {
    uint64_t magic;
    int32_t pid;
    uint32_t slot;
};

/* What a client tells the service, in one pipe write (atomic). */
struct record {
    int32_t pid;
    int32_t err;   /* of rpal_service_request */
    uint32_t slot;
    int32_t seen;  /* 1: it read the service's block correctly */
    uint64_t base; /* of its slot */
    uint64_t block;
};



static int client(int rec_fd, int go_fd, const rpal_key *key, uint64_t sbase,
                  const struct block *sblock)
{
    alarm(60);
    t_close_inherited(rec_fd, go_fd, -1);
    struct record r = {.pid = getpid(), .err = -1};
    struct rpal_domain_opts o = {.slot_size = SLOT_SIZE};
    rpal_domain *d;
    int err = rpal_domain_join(DOMAIN, &o, &d);
    if (err < 0) {
        fprintf(stderr, "client %d: join: %s\n", (int)getpid(), rpal_strerror(err));
        r.err = err;
        (void)!write(rec_fd, &r, sizeof r);
        return 1;
    }
    void *base;
    REQUIRE(rpal_domain_slot(d, &r.slot, &base, NULL) == 0);
    r.base = (uint64_t)(uintptr_t)base;
    struct block *b = rpal_malloc(sizeof *b);
    REQUIRE(b);
    b->magic = MAGIC;
    b->pid = getpid();
    b->slot = r.slot;
    r.block = (uint64_t)(uintptr_t)b;

    rpal_peer *p = NULL;
    r.err = rpal_service_request(d, "svc", key, 20000, &p);
    if (r.err == 0) {
        r.seen = (uint64_t)(uintptr_t)rpal_peer_base(p) == sbase &&
                 rpal_peer_access_begin(p) == 0;
        if (r.seen) {
            r.seen = sblock->magic == MAGIC && sblock->pid == getppid();
            rpal_peer_access_end(p);
        }
    } else {
        fprintf(stderr, "client %d: request: %s\n", (int)getpid(), rpal_strerror(r.err));
    }
    REQUIRE(write(rec_fd, &r, sizeof r) == (ssize_t)sizeof r);
    /* Stay until the service has looked, then exit without a word. */
    char c;
    while (read(go_fd, &c, 1) < 0 && errno == EINTR)
        ;
    return r.err == 0 && r.seen ? 0 : 1;
}

static int find(rpal_peer *const *set, int n, const rpal_peer *p)
{
    for (int i = 0; i < n; i++)
        if (set[i] == p)
            return i;
    return -1;
}

int main(void)
{
    t_init();
    alarm(90);
    struct rpal_domain_opts o = {.slot_size = SLOT_SIZE};
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, &o, &d) == 0);
    unsigned myslot;
    void *mybase;
    REQUIRE(rpal_domain_slot(d, &myslot, &mybase, NULL) == 0);
    struct block *mine = rpal_malloc(sizeof *mine);
    REQUIRE(mine);
    mine->magic = MAGIC;
    mine->pid = getpid();
    mine->slot = myslot;
    rpal_service *s;
    REQUIRE(rpal_service_register(d, "svc", 0600, NULL, NULL, &s) == 0);
    rpal_key key;
    REQUIRE(rpal_service_key(s, &key) == 0);

    int rec[2], go[2];
    REQUIRE(pipe(rec) == 0 && pipe(go) == 0);
    pid_t kids[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++) {
        kids[i] = fork();
        REQUIRE(kids[i] >= 0);
        if (kids[i] == 0)
            _exit(client(rec[1], go[0], &key, (uint64_t)(uintptr_t)mybase, mine));
    }
    close(rec[1]);
    close(go[0]);

    /* Accept all 64. */
    rpal_peer *peers[NCLIENTS];
    int n = 0;
    int64_t t0 = t_now_ms(), deadline = t0 + 30000;
    while (n < NCLIENTS && t_now_ms() < deadline) {
        struct rpal_event ev[16];
        int k = rpal_domain_dispatch(d, ev, 16, 200);
        CHECK(k >= 0);
        for (int i = 0; i < k; i++) {
            if (ev[i].type != RPAL_EV_PEER_ACCEPTED) {
                fprintf(stderr, "event %d (reason %d) while accepting\n", ev[i].type,
                        ev[i].reason);
                t_failures++;
                continue;
            }
            CHECK(find(peers, n, ev[i].peer) < 0);
            if (n < NCLIENTS)
                peers[n++] = ev[i].peer;
        }
    }
    printf("%d peers accepted in %" PRId64 " ms\n", n, t_now_ms() - t0);
    CHECK(n == NCLIENTS);

    /* Every client's record. */
    struct record recs[NCLIENTS];
    int nrec = 0;
    while (nrec < NCLIENTS) {
        struct pollfd pf = {rec[0], POLLIN, 0};
        if (poll(&pf, 1, 10000) != 1)
            break;
        ssize_t k = read(rec[0], &recs[nrec], sizeof recs[nrec]);
        if (k < 0 && errno == EINTR)
            continue;
        if (k != (ssize_t)sizeof recs[nrec])
            break;
        nrec++;
    }
    CHECK(nrec == NCLIENTS);

    /* Distinct slots, each at its address, each readable. */
    static unsigned char used[DOM_MAX_SLOTS];
    used[myslot] = 1;
    int good = 0;
    for (int i = 0; i < n; i++) {
        rpal_peer *p = peers[i];
        struct rpal_peer_info info;
        CHECK_ERR(rpal_peer_info(p, &info), 0);
        const struct record *r = NULL;
        for (int j = 0; j < nrec; j++)
            if (recs[j].pid == info.pid)
                r = &recs[j];
        if (!r) {
            fprintf(stderr, "no record from peer pid %d\n", (int)info.pid);
            t_failures++;
            continue;
        }
        CHECK(r->err == 0 && r->seen == 1);
        CHECK(info.slot == r->slot);
        CHECK(info.slot < DOM_MAX_SLOTS && !used[info.slot]);
        if (info.slot < DOM_MAX_SLOTS)
            used[info.slot] = 1;
        uint64_t base = (uint64_t)(uintptr_t)rpal_peer_base(p);
        CHECK(base == r->base);
        CHECK(base == DOM_WINDOW_BASE + (uint64_t)info.slot * SLOT_SIZE);
        CHECK(rpal_peer_size(p) == SLOT_SIZE);
        if (r->block < base + SLOT_HDR_SIZE || r->block > base + SLOT_SIZE - sizeof(struct block)) {
            fprintf(stderr, "peer %d: block %#" PRIx64 " outside its slot\n", (int)info.pid,
                    r->block);
            t_failures++;
            continue;
        }
        CHECK_ERR(rpal_peer_access_begin(p), 0);
        const struct slot_hdr *h = (const void *)(uintptr_t)base;
        const struct block *b = (const void *)(uintptr_t)r->block;
        int ok = h->magic == SLOT_MAGIC && h->slot == info.slot && h->pid == info.pid &&
                 b->magic == MAGIC && b->pid == info.pid && b->slot == info.slot;
        CHECK_ERR(rpal_peer_access_end(p), 0);
        CHECK(ok);
        good += ok;
    }
    printf("%d peers checked\n", good);

    /* All clients go; each peer goes once. */
    close(go[1]);
    rpal_peer *gone[NCLIENTS];
    int ngone = 0;
    t0 = t_now_ms();
    deadline = t0 + 20000;
    while (ngone < n && t_now_ms() < deadline) {
        struct rpal_event ev[16];
        int k = rpal_domain_dispatch(d, ev, 16, 200);
        CHECK(k >= 0);
        for (int i = 0; i < k; i++) {
            if (ev[i].type != RPAL_EV_PEER_GONE) {
                fprintf(stderr, "event %d while they leave\n", ev[i].type);
                t_failures++;
                continue;
            }
            CHECK(ev[i].reason == 0 || ev[i].reason == -ESRCH);
            CHECK(find(peers, n, ev[i].peer) >= 0);
            CHECK(find(gone, ngone, ev[i].peer) < 0);
            CHECK(rpal_peer_base(ev[i].peer) == NULL);
            if (ngone < NCLIENTS)
                gone[ngone++] = ev[i].peer;
        }
    }
    printf("%d peers gone in %" PRId64 " ms\n", ngone, t_now_ms() - t0);
    CHECK(ngone == n);
    for (int i = 0; i < n; i++)
        CHECK_ERR(rpal_peer_release(peers[i]), 0);
    int bad = 0;
    for (int i = 0; i < NCLIENTS; i++)
        bad += t_wait(kids[i]) != 0;
    CHECK(bad == 0);
    CHECK_ERR(rpal_service_unregister(s), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}
