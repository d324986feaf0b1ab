/* Consent, and the ways to get it wrong. The test process is a client in the
 * domain; service processes are forked and driven through pipes.
 *
 *  - a request with a wrong key gets -EACCES, its handle is not set, and
 *    nothing is mapped on either side (the service's slot stays the
 *    PROT_NONE reservation here, and reading it faults);
 *  - a service whose policy refuses gives -EACCES; the policy saw our pid,
 *    uid, gid, slot and the service's name, and is not asked for a wrong key;
 *  - a missing service gives -ENOENT; a stopped one -ETIMEDOUT within the
 *    deadline (and maps nothing);
 *  - a service killed by SIGKILL leaves its socket: a request gets
 *    -ECONNREFUSED (or -ENOENT) and a new process may take the name; a name
 *    held by a live process gives -EEXIST;
 *  - bad names give -EINVAL (or -ENAMETOOLONG); joining twice gives -EBUSY;
 *    a joiner with another slot size than the domain's gets -EINVAL;
 *  - after fork, the child's domain calls give -ECHILD (and do not touch
 *    the parent's membership), rpal_malloc gives NULL, and the child may
 *    join on its own.
 */
#include "testlib.h"
#include "internal.h"

#include <inttypes.h>
#include <poll.h>
#include <setjmp.h>
#include <stdint.h>
#include <time.h>

#define DOMAIN "tconsent"
#define SLOT_SIZE (1ull << 30)

static const struct rpal_domain_opts g_opts = {.slot_size = SLOT_SIZE};





/* 1 if ADDR is covered by nothing but the anonymous PROT_NONE reservation. */
static int only_reserved(uint64_t addr)
{
    char perms[5], path[256];
    if (t_map_of(addr, perms, path, sizeof path) < 0)
        return 0;
    if (strcmp(perms, "---p") != 0 || path[0]) {
        fprintf(stderr, "%#" PRIx64 " is mapped %s %s\n", addr, perms, path);
        return 0;
    }
    return 1;
}

/* ---- catching faults ---- */




/* ---- a service process ---- */

enum { SVC_MAIN, SVC_STALE };

static int g_out; /* the service's line to the test */

/* Refuses everyone, after saying whom. */
static int picky_policy(const struct rpal_peer_info *who, void *arg)
{
    (void)arg;
    t_put_line(g_out, "POLICY %d %u %u %u %s\n", (int)who->pid, who->uid, who->gid, who->slot,
             who->service);
    return -EPERM;
}

static void announce_key(int out, rpal_service *s, const char *name)
{
    rpal_key k;
    char text[33];
    REQUIRE(rpal_service_key(s, &k) == 0 && rpal_key_format(&k, text) == 0);
    t_put_line(out, "KEY %s %s\n", name, text);
}

/* MAIN: registers "svc" (accepts the key) and "picky" (refuses).
 * STALE: registers "stale". Then reports events and answers commands:
 * SYNC n, CHECKMAP addr, QUIT (or end of file). */
static int service_main(int kind, int in, int out)
{
    alarm(60);
    g_out = out;
    rpal_domain *d;
    int err = rpal_domain_join(DOMAIN, &g_opts, &d);
    if (err < 0) {
        t_put_line(out, "FAIL join %d\n", err);
        return 1;
    }
    rpal_service *s;
    if (kind == SVC_MAIN) {
        REQUIRE(rpal_service_register(d, "svc", 0600, NULL, NULL, &s) == 0);
        announce_key(out, s, "svc");
        REQUIRE(rpal_service_register(d, "picky", 0600, picky_policy, NULL, &s) == 0);
        announce_key(out, s, "picky");
    } else {
        err = rpal_service_register(d, "stale", 0600, NULL, NULL, &s);
        t_put_line(out, "REG %d\n", err);
        if (err == 0)
            announce_key(out, s, "stale");
    }
    unsigned slot;
    void *base;
    REQUIRE(rpal_domain_slot(d, &slot, &base, NULL) == 0);
    t_put_line(out, "READY %u %" PRIx64 " %d\n", slot, (uint64_t)(uintptr_t)base, (int)getpid());

    int dfd = rpal_domain_fd(d);
    REQUIRE(dfd >= 0);
    for (;;) {
        struct pollfd pf[2] = {{dfd, POLLIN, 0}, {in, POLLIN, 0}};
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (pf[0].revents) {
            struct rpal_event ev[8];
            int n = rpal_domain_dispatch(d, ev, 8, 0);
            for (int i = 0; i < n; i++) {
                struct rpal_peer_info info;
                rpal_peer_info(ev[i].peer, &info);
                if (ev[i].type == RPAL_EV_PEER_ACCEPTED) {
                    t_put_line(out, "EV ACCEPTED %d %u %s\n", (int)info.pid, info.slot,
                             info.service);
                } else {
                    t_put_line(out, "EV GONE %d\n", ev[i].reason);
                    rpal_peer_release(ev[i].peer);
                }
            }
        }
        if (pf[1].revents) {
            char line[256];
            if (t_get_line(in, line, sizeof line, 5000) < 0 || strcmp(line, "QUIT") == 0)
                break;
            uint64_t addr;
            if (strncmp(line, "SYNC", 4) == 0) {
                t_put_line(out, "SYNCED%s\n", line + 4);
            } else if (sscanf(line, "CHECKMAP %" SCNx64, &addr) == 1) {
                char perms[5], path[256];
                if (t_map_of(addr, perms, path, sizeof path) < 0)
                    t_put_line(out, "MAP none\n");
                else
                    t_put_line(out, "MAP %s %s\n", perms, path[0] ? path : "-");
            }
        }
    }
    rpal_domain_leave(d);
    return 0;
}

struct svc {
    pid_t pid;
    int in, out; /* our ends: commands to it, lines from it */
    unsigned slot;
    uint64_t base;
    rpal_key key[2];
    int nkeys;
};

static pid_t spawn(int kind, struct svc *s)
{
    int down[2], up[2];
    REQUIRE(pipe(down) == 0 && pipe(up) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        _exit(service_main(kind, down[0], up[1]));
    }
    close(down[0]);
    close(up[1]);
    memset(s, 0, sizeof *s);
    s->pid = pid;
    s->in = down[1];
    s->out = up[0];
    return pid;
}

/* Read the service's announcements up to READY; -1 if it failed. */
static int await_ready(struct svc *s, int *regerr)
{
    char line[512];
    for (;;) {
        if (t_get_line(s->out, line, sizeof line, 10000) < 0)
            return -1;
        char name[80], text[80];
        int pid, e;
        if (sscanf(line, "KEY %79s %79s", name, text) == 2 && s->nkeys < 2) {
            REQUIRE(rpal_key_parse(text, &s->key[s->nkeys++]) == 0);
        } else if (sscanf(line, "REG %d", &e) == 1) {
            if (regerr)
                *regerr = e;
        } else if (sscanf(line, "READY %u %" SCNx64 " %d", &s->slot, &s->base, &pid) == 3) {
            CHECK(pid == s->pid);
            return 0;
        } else {
            fprintf(stderr, "service %d: %s\n", (int)s->pid, line);
            return -1;
        }
    }
}

/* Everything the service said up to now, as one string (lines joined by
 * '|'), after a round trip that proves it has handled all before. */
static void sync_svc(struct svc *s, char *all, size_t size)
{
    static int seq;
    char want[32], line[512];
    snprintf(want, sizeof want, "SYNCED %d", ++seq);
    t_put_line(s->in, "SYNC %d\n", seq);
    all[0] = 0;
    for (;;) {
        REQUIRE(t_get_line(s->out, line, sizeof line, 10000) == 0);
        if (strcmp(line, want) == 0)
            return;
        size_t used = strlen(all);
        snprintf(all + used, size - used, "%s|", line);
    }
}

static void stop_svc(struct svc *s)
{
    t_put_line(s->in, "QUIT\n");
    CHECK(t_wait(s->pid) == 0);
    close(s->in);
    close(s->out);
}

/* ---- after fork ---- */

static int fork_child(rpal_domain *d, rpal_service *mine, rpal_peer *p,
                      const rpal_key *key, void *block, unsigned parent_slot)
{
    alarm(30);
    CHECK_ERR(rpal_domain_slot(d, NULL, NULL, NULL), -ECHILD);
    CHECK_ERR(rpal_domain_fd(d), -ECHILD);
    struct rpal_event ev[2];
    CHECK_ERR(rpal_domain_dispatch(d, ev, 2, 0), -ECHILD);
    rpal_service *s = NULL;
    CHECK_ERR(rpal_service_register(d, "child", 0600, NULL, NULL, &s), -ECHILD);
    CHECK(s == NULL);
    rpal_peer *q = NULL;
    CHECK_ERR(rpal_service_request(d, "svc", key, 1000, &q), -ECHILD);
    CHECK(q == NULL);
    /* Nothing of the parent's membership can be undone from here. */
    CHECK_ERR(rpal_peer_release(p), -ECHILD);
    CHECK_ERR(rpal_peer_access_begin(p), -ECHILD);
    CHECK_ERR(rpal_peer_access_end(p), -ECHILD);
    CHECK_ERR(rpal_service_unregister(mine), -ECHILD);
    CHECK_ERR(rpal_domain_leave(d), -ECHILD);
    CHECK(rpal_malloc(16) == NULL);
    CHECK(rpal_calloc(2, 16) == NULL);
    CHECK(rpal_realloc(NULL, 16) == NULL);
    CHECK_ERR(rpal_free(block), -EINVAL);
    /* The slots did not come along (MADV_DONTFORK). */
    char perms[5], path[256];
    CHECK(t_map_of((uint64_t)(uintptr_t)block, perms, path, sizeof path) < 0);
    CHECK(t_map_of((uint64_t)(uintptr_t)rpal_peer_base(p), perms, path, sizeof path) < 0);

    /* The child joins on its own and gets a slot of its own. */
    rpal_domain *cd;
    CHECK_ERR(rpal_domain_join(DOMAIN, &g_opts, &cd), 0);
    unsigned slot;
    void *base;
    uint64_t size;
    if (rpal_domain_slot(cd, &slot, &base, &size) == 0) {
        CHECK(slot != parent_slot);
        char *x = rpal_malloc(100);
        CHECK(x && (uint64_t)(uintptr_t)x >= (uint64_t)(uintptr_t)base &&
              (uint64_t)(uintptr_t)x < (uint64_t)(uintptr_t)base + size);
        if (x) {
            memset(x, 1, 100);
            CHECK_ERR(rpal_free(x), 0);
        }
        /* And its own handle works here. */
        CHECK(rpal_domain_fd(cd) >= 0);
        CHECK_ERR(rpal_domain_leave(cd), 0);
    }
    return t_done();
}

/* A joiner with a slot size other than the domain's. */
static int size_child(unsigned parent_slot)
{
    alarm(30);
    rpal_domain *d = NULL;
    struct rpal_domain_opts o = {.slot_size = 2 * SLOT_SIZE};
    CHECK_ERR(rpal_domain_join(DOMAIN, &o, &d), -EINVAL);
    o.slot_size = 16ull << 20;
    CHECK_ERR(rpal_domain_join(DOMAIN, &o, &d), -EINVAL);
    o.slot_size = RPAL_DEFAULT_SLOT_SIZE;
    CHECK_ERR(rpal_domain_join(DOMAIN, &o, &d), -EINVAL);
    CHECK(d == NULL);
    /* Not a valid size at all. */
    o.slot_size = 3ull << 20;
    CHECK_ERR(rpal_domain_join(DOMAIN, &o, &d), -EINVAL);
    o.slot_size = (1ull << 30) + (1ull << 24);
    CHECK_ERR(rpal_domain_join(DOMAIN, &o, &d), -EINVAL);
    /* The domain's own size, or none (take the domain's). */
    o.slot_size = 0;
    CHECK_ERR(rpal_domain_join(DOMAIN, &o, &d), 0);
    if (d) {
        unsigned slot;
        uint64_t size;
        CHECK_ERR(rpal_domain_slot(d, &slot, NULL, &size), 0);
        CHECK(size == SLOT_SIZE && slot != parent_slot);
        CHECK_ERR(rpal_domain_leave(d), 0);
    }
    d = NULL;
    CHECK_ERR(rpal_domain_join(DOMAIN, &g_opts, &d), 0);
    if (d)
        CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}

int main(void)
{
    t_init();
    alarm(90);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = t_on_fault;
    sa.sa_flags = SA_SIGINFO;
    REQUIRE(sigaction(SIGSEGV, &sa, NULL) == 0);
    signal(SIGPIPE, SIG_IGN);

    /* Bad domain names and sizes, before joining. */
    static const char *const bad[] = {"", "a/b", "/x", "x/", ".x", ".", "..", "a b", "a*"};
    rpal_domain *d = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK_ERR(rpal_domain_join(bad[i], &g_opts, &d), -EINVAL);
    char longname[100];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    int err = rpal_domain_join(longname, &g_opts, &d);
    CHECK(err == -EINVAL || err == -ENAMETOOLONG);
    struct rpal_domain_opts odd = {.slot_size = 3ull << 20};
    CHECK_ERR(rpal_domain_join(DOMAIN, &odd, &d), -EINVAL);
    odd.slot_size = 8ull << 20; /* a power of two, below 16 MiB */
    CHECK_ERR(rpal_domain_join(DOMAIN, &odd, &d), -EINVAL);
    CHECK_ERR(rpal_domain_join(DOMAIN, &g_opts, NULL), -EINVAL);
    CHECK(d == NULL);

    struct svc s1;
    spawn(SVC_MAIN, &s1);
    REQUIRE(await_ready(&s1, NULL) == 0 && s1.nkeys == 2);
    const rpal_key *svc_key = &s1.key[0], *picky_key = &s1.key[1];

    REQUIRE(rpal_domain_join(DOMAIN, &g_opts, &d) == 0);
    unsigned myslot;
    void *mybasep;
    REQUIRE(rpal_domain_slot(d, &myslot, &mybasep, NULL) == 0);
    uint64_t mybase = (uint64_t)(uintptr_t)mybasep;
    CHECK(myslot != s1.slot);

    /* Joining twice, under any name. */
    rpal_domain *d2 = NULL;
    CHECK_ERR(rpal_domain_join(DOMAIN, &g_opts, &d2), -EBUSY);
    CHECK_ERR(rpal_domain_join("other", NULL, &d2), -EBUSY);
    CHECK_ERR(rpal_domain_join(NULL, NULL, &d2), -EBUSY);
    CHECK(d2 == NULL);

    /* Bad service names. */
    rpal_service *ms = NULL;
    rpal_peer *p = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_ERR(rpal_service_register(d, bad[i], 0600, NULL, NULL, &ms), -EINVAL);
        CHECK_ERR(rpal_service_request(d, bad[i], svc_key, 1000, &p), -EINVAL);
    }
    err = rpal_service_register(d, longname, 0600, NULL, NULL, &ms);
    CHECK(err == -EINVAL || err == -ENAMETOOLONG);
    CHECK_ERR(rpal_service_register(d, NULL, 0600, NULL, NULL, &ms), -EINVAL);
    CHECK_ERR(rpal_service_request(d, NULL, svc_key, 1000, &p), -EINVAL);
    CHECK(ms == NULL && p == NULL);

    char said[4096];
    int fcode = 0;

    /* A wrong key: refused, and nothing mapped on either side. */
    rpal_key wrong = *svc_key;
    wrong.bytes[7] ^= 0x10;
    CHECK_ERR(rpal_service_request(d, "svc", &wrong, 3000, &p), -EACCES);
    CHECK(p == NULL);
    CHECK(only_reserved(s1.base));
    CHECK(only_reserved(s1.base + SLOT_SIZE - 1));
    CHECK(t_read_faults(s1.base, &fcode) == SIGSEGV && fcode == SEGV_ACCERR);
    /* The other service's key is no key to this one. */
    CHECK_ERR(rpal_service_request(d, "svc", picky_key, 3000, &p), -EACCES);
    CHECK(p == NULL);
    t_put_line(s1.in, "CHECKMAP %" PRIx64 "\n", mybase);
    sync_svc(&s1, said, sizeof said);
    CHECK(strncmp(said, "MAP ---p -|", 11) == 0);
    CHECK(!strstr(said, "ACCEPTED"));

    /* The policy refuses: -EACCES; it saw who asked. A wrong key never
     * reaches it. */
    CHECK_ERR(rpal_service_request(d, "picky", &wrong, 3000, &p), -EACCES);
    sync_svc(&s1, said, sizeof said);
    CHECK(!strstr(said, "POLICY"));
    CHECK_ERR(rpal_service_request(d, "picky", picky_key, 3000, &p), -EACCES);
    CHECK(p == NULL);
    CHECK(only_reserved(s1.base));
    t_put_line(s1.in, "CHECKMAP %" PRIx64 "\n", mybase);
    sync_svc(&s1, said, sizeof said);
    int ppid = 0;
    unsigned puid = 0, pgid = 0, pslot = 0;
    char pname[80] = "";
    CHECK(sscanf(said, "POLICY %d %u %u %u %79[^|]", &ppid, &puid, &pgid, &pslot, pname) == 5);
    CHECK(ppid == getpid());
    CHECK(puid == getuid());
    CHECK(pgid == getgid());
    CHECK(pslot == myslot);
    CHECK(strcmp(pname, "picky") == 0);
    CHECK(strstr(said, "|MAP ---p -|") != NULL);
    CHECK(!strstr(said, "ACCEPTED"));

    /* The right key works after all that. */
    CHECK_ERR(rpal_service_request(d, "svc", svc_key, 3000, &p), 0);
    REQUIRE(p);
    CHECK((uint64_t)(uintptr_t)rpal_peer_base(p) == s1.base);
    /* Inside a window: under protection keys a peer's slot is closed
     * outside one (tests/domain_pkeys). */
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(t_read_faults(s1.base, &fcode) == 0);
    CHECK_ERR(rpal_peer_access_end(p), 0);
    char perms[5], path[256];
    CHECK(t_map_of(s1.base, perms, path, sizeof path) == 0 && strcmp(perms, "r--s") == 0 &&
          strstr(path, "memfd:rpal-slot"));
    sync_svc(&s1, said, sizeof said);
    char want[128];
    snprintf(want, sizeof want, "EV ACCEPTED %d %u svc|", (int)getpid(), myslot);
    CHECK(strcmp(said, want) == 0);

    /* After fork: -ECHILD for every domain call in the child, NULL from
     * the heap, and the parent's membership untouched. */
    CHECK_ERR(rpal_service_register(d, "mine", 0600, NULL, NULL, &ms), 0);
    void *block = rpal_malloc(64);
    REQUIRE(block);
    memset(block, 0x5a, 64);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0)
        _exit(fork_child(d, ms, p, svc_key, block, myslot));
    CHECK(t_wait(child) == 0);
    CHECK((uint64_t)(uintptr_t)rpal_peer_base(p) == s1.base);
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(t_read_faults(s1.base, &fcode) == 0);
    CHECK_ERR(rpal_peer_access_end(p), 0);
    CHECK(((unsigned char *)block)[63] == 0x5a);
    CHECK_ERR(rpal_free(block), 0);
    void *more = rpal_malloc(64);
    CHECK(more != NULL);
    CHECK_ERR(rpal_free(more), 0);
    rpal_service *dup = NULL;
    CHECK_ERR(rpal_service_register(d, "mine", 0600, NULL, NULL, &dup), -EEXIST);
    CHECK(dup == NULL);
    sync_svc(&s1, said, sizeof said);
    CHECK(said[0] == 0); /* the child's calls reached nobody */
    CHECK_ERR(rpal_service_unregister(ms), 0);
    CHECK_ERR(rpal_peer_release(p), 0);
    p = NULL;
    CHECK(only_reserved(s1.base));
    int64_t t0 = t_now_ms();
    for (;;) {
        sync_svc(&s1, said, sizeof said);
        if (said[0] || t_now_ms() - t0 > 2000)
            break;
        usleep(10000);
    }
    CHECK(strcmp(said, "EV GONE 0|") == 0);

    /* A joiner with another slot size. */
    child = fork();
    REQUIRE(child >= 0);
    if (child == 0)
        _exit(size_child(myslot));
    CHECK(t_wait(child) == 0);

    /* No such service. */
    CHECK_ERR(rpal_service_request(d, "nosuch", svc_key, 1000, &p), -ENOENT);
    CHECK(p == NULL);

    /* A stopped service: -ETIMEDOUT in time, nothing mapped. */
    REQUIRE(kill(s1.pid, SIGSTOP) == 0);
    int st;
    REQUIRE(waitpid(s1.pid, &st, WUNTRACED) == s1.pid && WIFSTOPPED(st));
    t0 = t_now_ms();
    CHECK_ERR(rpal_service_request(d, "svc", svc_key, 400, &p), -ETIMEDOUT);
    int64_t took = t_now_ms() - t0;
    if (took < 390 || took > 1400) {
        fprintf(stderr, "request to a stopped service took %" PRId64 " ms, deadline 400\n", took);
        t_failures++;
    }
    CHECK(p == NULL);
    CHECK(only_reserved(s1.base));
    REQUIRE(kill(s1.pid, SIGCONT) == 0);
    /* It answers the abandoned request late; whatever it makes of it, the
     * requester has nothing mapped. */
    sync_svc(&s1, said, sizeof said);
    if (said[0])
        printf("service after SIGCONT: %s\n", said);
    CHECK(only_reserved(s1.base));

    /* A name held by a live process. */
    rpal_service *taken = NULL;
    CHECK_ERR(rpal_service_register(d, "svc", 0600, NULL, NULL, &taken), -EEXIST);
    CHECK(taken == NULL);

    /* A dead service's socket stays behind. */
    struct svc s2;
    spawn(SVC_STALE, &s2);
    int regerr = -1;
    REQUIRE(await_ready(&s2, &regerr) == 0);
    CHECK(regerr == 0);
    REQUIRE(kill(s2.pid, SIGKILL) == 0);
    CHECK(t_wait(s2.pid) == 128 + SIGKILL);
    close(s2.in);
    close(s2.out);
    err = rpal_service_request(d, "stale", &s2.key[0], 1000, &p);
    if (err != -ECONNREFUSED && err != -ENOENT) {
        fprintf(stderr, "request to a dead service: %s, want ECONNREFUSED or ENOENT\n",
                rpal_strerror(err));
        t_failures++;
    }
    CHECK(p == NULL);
    CHECK(only_reserved(s2.base));
    /* A new process takes the name over. */
    struct svc s3;
    spawn(SVC_STALE, &s3);
    regerr = -1;
    REQUIRE(await_ready(&s3, &regerr) == 0);
    CHECK_ERR(regerr, 0);
    CHECK(s3.nkeys == 1);
    /* ... and holds it now. */
    CHECK_ERR(rpal_service_register(d, "stale", 0600, NULL, NULL, &taken), -EEXIST);
    CHECK(taken == NULL);
    if (s3.nkeys == 1) {
        CHECK_ERR(rpal_service_request(d, "stale", &s2.key[0], 2000, &p), -EACCES);
        CHECK_ERR(rpal_service_request(d, "stale", &s3.key[0], 2000, &p), 0);
        if (p) {
            CHECK((uint64_t)(uintptr_t)rpal_peer_base(p) == s3.base);
            CHECK_ERR(rpal_peer_release(p), 0);
        }
    }
    stop_svc(&s3);
    stop_svc(&s1);
    /* Once its owner left, the name is free for us. */
    CHECK_ERR(rpal_service_register(d, "svc", 0600, NULL, NULL, &ms), 0);
    CHECK_ERR(rpal_service_unregister(ms), 0);

    /* Leaving frees the process for another join. */
    CHECK_ERR(rpal_domain_leave(d), 0);
    CHECK(t_map_of(mybase, perms, path, sizeof path) < 0);
    CHECK_ERR(rpal_domain_join(DOMAIN, &g_opts, &d), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}
