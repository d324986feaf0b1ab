/* Issue 16, attack 1: a requester hands its key to whoever listens. A
 * process able to write the domain directory swaps a live service's socket
 * svc.NAME for its own (unlink + bind), then collects what the next
 * requesters send. It plays two parts: a silent listener (reads what comes)
 * and one that answers with a forged challenge naming the real service's
 * slot. Neither may receive the key (in any form: its bytes are searched
 * in everything received) nor a descriptor (the requester's slot memfd),
 * and each request fails (-ETIMEDOUT, -EPROTO) instead of sharing. Before
 * #16 the first message carried the key in clear and the memfd.
 */
#include "testlib.h"
#include "internal.h"

#include <sys/un.h>

#define DOMAIN "timpostor"

/* What the thief got over all its connections. */
struct loot {
    int conns, fds, keys, bytes;
};

static void take(int c, const rpal_key *key, struct loot *l)
{
    char buf[4096];
    union {
        char b[CMSG_SPACE(sizeof(int) * 8)];
        struct cmsghdr h;
    } u;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                        .msg_controllen = sizeof u.b};
    ssize_t n = recvmsg(c, &mh, MSG_DONTWAIT);
    if (n <= 0)
        return;
    l->bytes += (int)n;
    if (memmem(buf, (size_t)n, key->bytes, sizeof key->bytes))
        l->keys++;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            l->fds += k;
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
                close(fd);
            }
        }
}

/* The thief: listen on D's svc.svc until STOP is readable; connection i
 * gets a forged challenge (naming SVC_SLOT) when i is odd. */
static void thief(int dirfd, uint64_t slot_size, unsigned svc_slot, const rpal_key *key,
                  int ready, int stop, int out)
{
    REQUIRE(unlinkat(dirfd, "svc.svc", 0) == 0);
    int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "/proc/self/fd/%d/svc.svc", dirfd);
    REQUIRE(l >= 0 && bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 8) == 0);
    t_put(ready, 'r');
    struct loot lt = {0};
    int conns[8], nc = 0;
    for (;;) {
        struct pollfd pf[10] = {{stop, POLLIN, 0}, {l, POLLIN, 0}};
        for (int i = 0; i < nc; i++)
            pf[2 + i] = (struct pollfd){conns[i], POLLIN, 0};
        poll(pf, 2 + (nfds_t)nc, 100);
        if (pf[0].revents)
            break;
        if (pf[1].revents && nc < 8) {
            int c = accept(l, NULL, NULL);
            REQUIRE(c >= 0);
            take(c, key, &lt);
            if (nc % 2 == 1) {
                struct hs_rep ch = {.magic = HS_MAGIC, .version = HS_VERSION,
                                    .slot = svc_slot, .slot_size = slot_size};
                (void)!send(c, &ch, sizeof ch, MSG_NOSIGNAL);
            }
            conns[nc++] = c;
            lt.conns++;
        }
        for (int i = 0; i < nc; i++)
            if (pf[2 + i].revents & POLLIN)
                take(conns[i], key, &lt);
    }
    REQUIRE(write(out, &lt, sizeof lt) == (ssize_t)sizeof lt);
    _exit(0);
}

int main(void)
{
    t_init();
    struct t_svc sv = t_svc_start(DOMAIN, NULL, -1, 0, 0);
    rpal_key key = t_svc_key(&sv);
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);

    /* The real service's slot, from its claim (what a forger would name). */
    struct member_rec *rec = malloc(sizeof *rec);
    unsigned svc_slot = 0;
    int found = 0;
    for (unsigned s = 0; s < d->nslots && !found; s++)
        if (s != d->slot && rpal__dom_read_member(d->dirfd, s, rec) == 0 && rec->nservices &&
            !strcmp(rec->services[0], "svc")) {
            svc_slot = s;
            found = 1;
        }
    free(rec);
    REQUIRE(found);

    int rp[2], sp[2], op[2];
    REQUIRE(pipe(rp) == 0 && pipe(sp) == 0 && pipe(op) == 0);
    /* The thief's own descriptor of the directory (a forked member's are
     * closed in the child). */
    int dirfd = dup(d->dirfd);
    pid_t t = fork();
    REQUIRE(t >= 0 && dirfd >= 0);
    if (t == 0) {
        close(sp[1]);
        thief(dirfd, d->slot_size, svc_slot, &key, rp[1], sp[0], op[1]);
    }
    REQUIRE(t_get(rp[0]) == 'r');

    rpal_peer *p = NULL;
    int e1 = rpal_service_request(d, "svc", &key, 500, &p); /* silent thief */
    int e2 = rpal_service_request(d, "svc", &key, 500, &p); /* forged challenge */
    printf("requests to the impostor: %s, %s\n", rpal_strerror(e1), rpal_strerror(e2));
    CHECK(e1 < 0);
    CHECK(e2 < 0);
    t_sleep_us(100000);
    close(sp[1]);
    struct loot lt;
    REQUIRE(read(op[0], &lt, sizeof lt) == (ssize_t)sizeof lt);
    CHECK(t_wait(t) == 0);
    printf("impostor: %d connections, %d bytes, key seen %d times, %d descriptors\n",
           lt.conns, lt.bytes, lt.keys, lt.fds);
    CHECK(lt.conns == 2);
    CHECK(lt.keys == 0);
    CHECK(lt.fds == 0);
    CHECK(e1 == -ETIMEDOUT);
    CHECK(e2 == -EPROTO);

    t_svc_stop(&sv);
    rpal_domain_leave(d);
    return t_done();
}
