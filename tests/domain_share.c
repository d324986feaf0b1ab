/* Cross-process pointer walk. A service process joins the default domain,
 * builds a linked list of 10,000 nodes with rpal_malloc in its own slot
 * (plain pointers, some nodes pointing to strings), registers a service and
 * hands its key to a client: this very program, forked and exec'd with the
 * argument "client", so that it inherits nothing of the service. The client
 * joins the same domain (by its explicit name "default"), asks for sharing
 * with the key, and finds the service's slot at the address the service
 * reports; inside an access window it walks the list through the service's
 * own pointers and checks every value. The service, from its dispatch loop,
 * gets RPAL_EV_PEER_ACCEPTED and sees the client's slot read-only at the
 * client's address. Both slots differ, in index and address.
 */
#include "testlib.h"
#include "internal.h"

#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>

#define NNODES 10000
#define NAMED_EVERY 97 /* every so many nodes carry a string */
#define CLIENT_BLOCK 8192

struct node {
    struct node *next;
    char *name; /* NULL, or an rpal_malloc'd string */
    uint64_t value;
    uint32_t index;
};

static uint64_t value_of(uint32_t i) { return (i + 1) * 0x9e3779b97f4a7c15ull ^ 0x5eedull; }
static uint8_t client_byte(size_t i) { return (uint8_t)(i * 31 + 7); }





static int in_range(const void *p, uint64_t base, uint64_t size, size_t len)
{
    uint64_t a = (uint64_t)(uintptr_t)p;
    return a >= base && a - base <= size && size - (a - base) >= len;
}

/* ---- the client (exec'd with: client RFD WFD) ---- */

static int client(int rfd, int wfd)
{
    alarm(30);
    char line[512];
    REQUIRE(t_get_line(rfd, line, sizeof line, 10000) == 0);
    char keytext[64];
    uint64_t head, sbase, ssize;
    unsigned sslot;
    int spid;
    REQUIRE(sscanf(line, "KEY %40s HEAD %" SCNx64 " BASE %" SCNx64 " SLOT %u SIZE %" SCNu64
                   " PID %d", keytext, &head, &sbase, &sslot, &ssize, &spid) == 6);
    rpal_key key;
    CHECK_ERR(rpal_key_parse(keytext, &key), 0);
    CHECK(spid == getppid());

    /* The same domain as the service's rpal_domain_join(NULL, ...). */
    rpal_domain *d;
    int err = rpal_domain_join("default", NULL, &d);
    if (err < 0) {
        fprintf(stderr, "client: join: %s\n", rpal_strerror(err));
        return 1;
    }
    unsigned slot;
    void *base;
    uint64_t size;
    CHECK_ERR(rpal_domain_slot(d, &slot, &base, &size), 0);
    CHECK(size == ssize && size == RPAL_DEFAULT_SLOT_SIZE);
    CHECK(slot != sslot);
    CHECK((uint64_t)(uintptr_t)base != sbase);
    CHECK((uint64_t)(uintptr_t)base == DOM_WINDOW_BASE + (uint64_t)slot * size);
    CHECK(sbase == DOM_WINDOW_BASE + (uint64_t)sslot * size);

    /* Something of ours for the service to read. */
    uint8_t *blk = rpal_malloc(CLIENT_BLOCK);
    REQUIRE(blk);
    CHECK(in_range(blk, (uint64_t)(uintptr_t)base, size, CLIENT_BLOCK));
    for (size_t i = 0; i < CLIENT_BLOCK; i++)
        blk[i] = client_byte(i);
    t_put_line(wfd, "CLIENT SLOT %u BASE %" PRIx64 " BLOCK %" PRIx64 "\n", slot,
             (uint64_t)(uintptr_t)base, (uint64_t)(uintptr_t)blk);

    rpal_peer *p = NULL;
    err = rpal_service_request(d, "svc", &key, 5000, &p);
    if (err < 0) {
        fprintf(stderr, "client: request: %s\n", rpal_strerror(err));
        t_put_line(wfd, "DONE 1\n");
        return 1;
    }
    REQUIRE(p);
    const char *pb = rpal_peer_base(p);
    CHECK((uint64_t)(uintptr_t)pb == sbase);
    CHECK(rpal_peer_size(p) == ssize);
    struct rpal_peer_info info;
    CHECK_ERR(rpal_peer_info(p, &info), 0);
    CHECK(info.pid == spid);
    CHECK(info.uid == getuid());
    CHECK(info.slot == sslot);
    CHECK(strcmp(info.service, "svc") == 0);

    /* The service's slot is here read-only, backed by its memfd. */
    char perms[5], path[256];
    CHECK(t_map_of(sbase, perms, path, sizeof path) == 0 && strcmp(perms, "r--s") == 0 &&
          strstr(path, "memfd:rpal-slot"));

    /* The walk: the service's pointers, followed as they are. */
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    const struct slot_hdr *h = (const void *)pb;
    CHECK(h->magic == SLOT_MAGIC && h->slot == sslot && h->pid == spid);
    uint32_t n = 0, bad = 0, named = 0;
    for (const struct node *x = (const void *)(uintptr_t)head; x; x = x->next, n++) {
        if (n >= NNODES || !in_range(x, sbase, ssize, sizeof *x)) {
            fprintf(stderr, "client: node %u at %p is out of the list\n", n, (void *)x);
            bad++;
            break;
        }
        if (x->index != n || x->value != value_of(n))
            bad++;
        if (n % NAMED_EVERY == 0) {
            char want[32];
            snprintf(want, sizeof want, "node %u", n);
            if (!x->name || !in_range(x->name, sbase, ssize, sizeof want) ||
                strcmp(x->name, want) != 0)
                bad++;
            else
                named++;
        } else if (x->name) {
            bad++;
        }
    }
    /* Windows nest. */
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(((const struct node *)(uintptr_t)head)->value == value_of(0));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(((const struct node *)(uintptr_t)head)->index == 0);
    CHECK_ERR(rpal_peer_access_end(p), 0);
    if (n != NNODES || bad)
        fprintf(stderr, "client: walked %u nodes, %u bad\n", n, bad);
    CHECK(n == NNODES);
    CHECK(bad == 0);
    CHECK(named == (NNODES + NAMED_EVERY - 1) / NAMED_EVERY);

    t_put_line(wfd, "DONE %d\n", t_failures);
    /* Stay a peer until the service has read our block. */
    CHECK(t_get_line(rfd, line, sizeof line, 10000) == 0 && strcmp(line, "BYE") == 0);
    CHECK_ERR(rpal_peer_release(p), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}

/* ---- the service (the test's own process) ---- */

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "client") == 0)
        return client(atoi(argv[2]), atoi(argv[3]));
    t_init();
    alarm(60);

    rpal_domain *d;
    int err = rpal_domain_join(NULL, NULL, &d);
    if (err < 0) {
        fprintf(stderr, "join: %s\n", rpal_strerror(err));
        return 1;
    }
    unsigned slot;
    void *basep;
    uint64_t size;
    CHECK_ERR(rpal_domain_slot(d, &slot, &basep, &size), 0);
    uint64_t base = (uint64_t)(uintptr_t)basep;
    CHECK(size == RPAL_DEFAULT_SLOT_SIZE);
    CHECK(base == DOM_WINDOW_BASE + (uint64_t)slot * size);
    char perms[5], path[256];
    CHECK(t_map_of(base, perms, path, sizeof path) == 0 && strcmp(perms, "rw-s") == 0 &&
          strstr(path, "memfd:rpal-slot"));

    /* The list, built back to front so that the head is node 0. */
    struct node *head = NULL;
    for (uint32_t i = NNODES; i-- > 0;) {
        struct node *x = rpal_malloc(sizeof *x);
        REQUIRE(x);
        REQUIRE(in_range(x, base, size, sizeof *x));
        x->name = NULL;
        if (i % NAMED_EVERY == 0) {
            char s[32];
            int len = snprintf(s, sizeof s, "node %u", i);
            x->name = rpal_malloc((size_t)len + 1);
            REQUIRE(x->name && in_range(x->name, base, size, (size_t)len + 1));
            memcpy(x->name, s, (size_t)len + 1);
        }
        x->next = head;
        x->value = value_of(i);
        x->index = i;
        head = x;
    }

    rpal_service *s;
    CHECK_ERR(rpal_service_register(d, "svc", 0600, NULL, NULL, &s), 0);
    REQUIRE(s);
    rpal_key key;
    char keytext[33];
    CHECK_ERR(rpal_service_key(s, &key), 0);
    CHECK_ERR(rpal_key_format(&key, keytext), 0);
    CHECK(strlen(keytext) == 32);
    rpal_key back;
    CHECK_ERR(rpal_key_parse(keytext, &back), 0);
    CHECK(memcmp(&back, &key, sizeof key) == 0);

    int down[2], up[2]; /* service -> client, client -> service */
    REQUIRE(pipe(down) == 0 && pipe(up) == 0);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        char r[16], w[16];
        close(down[1]);
        close(up[0]);
        snprintf(r, sizeof r, "%d", down[0]);
        snprintf(w, sizeof w, "%d", up[1]);
        execl("/proc/self/exe", argv[0], "client", r, w, (char *)NULL);
        _exit(127);
    }
    close(down[0]);
    close(up[1]);
    t_put_line(down[1], "KEY %s HEAD %" PRIx64 " BASE %" PRIx64 " SLOT %u SIZE %" PRIu64
             " PID %d\n", keytext, (uint64_t)(uintptr_t)head, base, slot, size, (int)getpid());

    /* The client's own report comes before its request. */
    char line[512];
    unsigned cslot = 0;
    uint64_t cbase = 0, cblock = 0;
    REQUIRE(t_get_line(up[0], line, sizeof line, 10000) == 0);
    REQUIRE(sscanf(line, "CLIENT SLOT %u BASE %" SCNx64 " BLOCK %" SCNx64, &cslot, &cbase,
                   &cblock) == 3);

    /* Dispatch until the client is accepted. */
    rpal_peer *p = NULL;
    int64_t deadline = t_now_ms() + 10000;
    while (!p && t_now_ms() < deadline) {
        struct rpal_event ev[8];
        int n = rpal_domain_dispatch(d, ev, 8, 100);
        CHECK(n >= 0);
        for (int i = 0; i < n; i++) {
            if (ev[i].type == RPAL_EV_PEER_ACCEPTED && !p) {
                p = ev[i].peer;
            } else {
                fprintf(stderr, "unexpected event %d (reason %d)\n", ev[i].type, ev[i].reason);
                t_failures++;
            }
        }
    }
    if (!p) {
        fprintf(stderr, "no RPAL_EV_PEER_ACCEPTED within 10 s\n");
        kill(child, SIGKILL);
        t_wait(child);
        return 1;
    }
    struct rpal_peer_info info;
    CHECK_ERR(rpal_peer_info(p, &info), 0);
    CHECK(info.pid == child);
    CHECK(info.uid == getuid());
    CHECK(info.slot == cslot);
    CHECK(info.slot != slot);
    CHECK(strcmp(info.service, "svc") == 0);
    const uint8_t *pb = rpal_peer_base(p);
    CHECK((uint64_t)(uintptr_t)pb == cbase);
    CHECK(cbase == DOM_WINDOW_BASE + (uint64_t)cslot * size);
    CHECK(cbase != base);
    CHECK(rpal_peer_size(p) == size);
    /* The client's slot is here read-only. */
    CHECK(t_map_of(cbase, perms, path, sizeof path) == 0 && strcmp(perms, "r--s") == 0 &&
          strstr(path, "memfd:rpal-slot"));

    CHECK_ERR(rpal_peer_access_begin(p), 0);
    const struct slot_hdr *h = (const void *)pb;
    CHECK(h->magic == SLOT_MAGIC && h->slot == cslot && h->pid == child);
    if (in_range((void *)(uintptr_t)cblock, cbase, size, CLIENT_BLOCK)) {
        const uint8_t *b = (const void *)(uintptr_t)cblock;
        size_t bad = 0;
        for (size_t i = 0; i < CLIENT_BLOCK; i++)
            bad += b[i] != client_byte(i);
        CHECK(bad == 0);
    } else {
        fprintf(stderr, "the client's block %#" PRIx64 " is not in its slot\n", cblock);
        t_failures++;
    }
    CHECK_ERR(rpal_peer_access_end(p), 0);

    /* The client walks the list meanwhile. */
    REQUIRE(t_get_line(up[0], line, sizeof line, 20000) == 0);
    int cfail = -1;
    CHECK(sscanf(line, "DONE %d", &cfail) == 1 && cfail == 0);
    t_put_line(down[1], "BYE\n");
    CHECK(t_wait(child) == 0);

    /* Its release (or exit) reaches us; its slot is gone from here. */
    int gone = 0;
    deadline = t_now_ms() + 5000;
    while (!gone && t_now_ms() < deadline) {
        struct rpal_event ev[8];
        int n = rpal_domain_dispatch(d, ev, 8, 100);
        for (int i = 0; i < n; i++)
            if (ev[i].type == RPAL_EV_PEER_GONE && ev[i].peer == p)
                gone = 1;
    }
    CHECK(gone);
    CHECK(rpal_peer_base(p) == NULL);
    CHECK(t_map_of(cbase, perms, path, sizeof path) == 0 && strcmp(perms, "---p") == 0 &&
          path[0] == 0);
    CHECK_ERR(rpal_peer_release(p), 0);

    /* The list is still ours and intact. */
    uint32_t n = 0;
    for (struct node *x = head; x; x = x->next)
        n += x->value == value_of(x->index) && x->index == n;
    CHECK(n == NNODES);
    CHECK_ERR(rpal_service_unregister(s), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}
