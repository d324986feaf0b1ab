/* service: registration, keys, the consent handshake, release and death.
 *
 * A service listens on a SOCK_SEQPACKET socket <domain dir>/svc.NAME whose
 * file mode says who may ask at all. A requester connects and says hello
 * (its slot, a fresh nonce); the service answers with a challenge (its slot,
 * its nonce, a MAC over both nonces under the key). The requester checks
 * that the process the kernel says listens holds the live claim of that
 * slot and knows the key, and only then sends its own MAC and its slot's
 * memfd (SCM_RIGHTS): the key never travels, and nothing of value goes to
 * an impostor. The service checks the MAC, the kernel-given credentials
 * against the requester's slot claim, the memfd's seals, asks its
 * policy, maps the requester's slot read-only and answers with its own
 * memfd. Both ends keep the connection and
 * a pidfd of the other: EOF is a release, a readable pidfd a death.
 * See docs/domains.md.
 */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_PENDING 64
/* A handshake not finished this long after its connection was accepted is
 * dropped (a silent requester cannot hold a place for long), and one
 * process, or one user, holds at most so many places at once: past them a
 * requester is told the service is busy (-EAGAIN), not refused. */
#define HS_PENDING_MS 1000
#define HS_PER_PID 8
#define HS_PER_UID (MAX_PENDING / 2)

/* Defined with the service's side of the handshake, below. */
static const struct dom_layer service_layer;
static int listen_watch(rpal_domain *d, struct watch *w, uint32_t events, struct rpal_event *ev);


/* ---- keys ---- */

int rpal_key_format(const rpal_key *key, char out[33])
{
    if (!key || !out)
        return -EINVAL;
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", key->bytes[i]);
    return 0;
}

int rpal_key_parse(const char *text, rpal_key *key)
{
    if (!text || !key || strlen(text) != 32)
        return -EINVAL;
    rpal_key k;
    for (int i = 0; i < 16; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = text[2 * i + j];
            int x = c >= '0' && c <= '9' ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (x < 0)
                return -EINVAL;
            v = v * 16 + (unsigned)x;
        }
        k.bytes[i] = (uint8_t)v;
    }
    *key = k;
    return 0;
}

void rpal__svc_hs_mac(const uint8_t key[16], const char *label, const uint8_t *nonces,
                      const char *name, uint32_t slot, uint8_t out[HS_MAC])
{
    /* The label keeps a service's answer from being replayed as a
     * requester's; the nonces make every MAC good for one handshake. */
    char nm[COMPONENT_MAX + 1] = {0};
    snprintf(nm, sizeof nm, "%s", name);
    uint8_t sl[4] = {(uint8_t)slot, (uint8_t)(slot >> 8), (uint8_t)(slot >> 16),
                     (uint8_t)(slot >> 24)};
    struct rpal__mac_part parts[] = {{"rpal handshake 2 ", 17}, {label, strlen(label) + 1},
                                     {nonces, 2 * HS_NONCE}, {nm, sizeof nm}, {sl, sizeof sl}};
    rpal__mac_hmac(key, 16, parts, 5, out);
}

/* ---- plumbing ---- */

int rpal__svc_path(const rpal_domain *d, const char *name, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    /* Through the directory's descriptor: a namespace path may be longer
     * than sun_path allows, and this cannot be redirected by a rename. */
    int n = snprintf(a->sun_path, sizeof a->sun_path, "/proc/self/fd/%d/svc.%s",
                     d->dirfd, name);
    return n > 0 && (size_t)n < sizeof a->sun_path ? 0 : -ENAMETOOLONG;
}

int rpal__svc_send_with_fd(int sock, const void *msg, size_t len, int fd)
{
    struct iovec iov = {(void *)msg, len};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        mh.msg_control = u.buf;
        mh.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    return n == (ssize_t)len ? 0 : n < 0 ? -errno : -EIO;
}

int rpal__svc_cmsg_take(struct msghdr *mh, int *fds, int nfd, struct ucred *cr)
{
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level != SOL_SOCKET)
            continue;
        if (c->cmsg_type == SCM_CREDENTIALS && cr && c->cmsg_len >= CMSG_LEN(sizeof *cr))
            memcpy(cr, CMSG_DATA(c), sizeof *cr);
        if (c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int x;
            memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof x);
            if (nfds < nfd && fds[nfds] < 0)
                fds[nfds] = x;
            else
                close(x);
            nfds++;
        }
    }
    return nfds;
}

/* Receive one message of exactly LEN bytes and at most one descriptor
 * (*FD = -1 if none). Anything else a peer sends is closed and refused. */
int rpal__svc_recv_with_fd(int sock, void *msg, size_t len, int *fd)
{
    struct iovec iov = {msg, len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    *fd = -1;
    ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0)
        return -errno;
    int nfds = rpal__svc_cmsg_take(&mh, fd, 1, NULL);
    if (n == 0)
        return -ECONNRESET;
    if ((size_t)n != len || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || nfds > 1) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return -EPROTO;
    }
    return 0;
}

/* ---- registration ---- */

void rpal__svc_sock_file(char file[SVC_FILE_MAX], const char *name)
{
    snprintf(file, SVC_FILE_MAX, "svc.%s", name);
}

/* Bind LFD to A (FILE in D's directory). A name left behind by a dead
 * service (its socket refuses connections) is taken over; one of a live
 * service, or anything that is not a socket, is -EEXIST. */
static int bind_name(rpal_domain *d, int lfd, const struct sockaddr_un *a, const char *file)
{
    int err = 0;
    for (int tries = 0; tries < 2; tries++) {
        if (bind(lfd, (const struct sockaddr *)a, sizeof *a) == 0)
            return 0;
        err = -errno;
        if (err != -EADDRINUSE)
            return err;
        struct stat st;
        if (fstatat(d->dirfd, file, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISSOCK(st.st_mode))
            return -EEXIST;
        int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int live = c >= 0 && rpal__prim_connect_beneath(d->dirfd, file, c) != -ECONNREFUSED;
        if (c >= 0)
            close(c);
        err = -EEXIST;
        if (live || unlinkat(d->dirfd, file, 0) < 0)
            return err;
    }
    return err;
}

/* Give the bound socket FILE its MODE, listen and watch it. The mode goes
 * to the socket file, never to what a link swapped in under its name since
 * bind() points at (fchmodat would follow it). On failure the name is
 * removed. d->lock held. */
static int open_for_requests(rpal_domain *d, rpal_service *s, const char *file, unsigned mode)
{
    char proc[PRIM_FD_PATH];
    int pfd = rpal__prim_sock_open_beneath(d->dirfd, file, proc);
    int err = pfd < 0 ? pfd : chmod(proc, mode) < 0 || listen(s->lfd, 64) < 0 ? -errno : 0;
    if (pfd >= 0)
        close(pfd);
    if (err == 0) {
        s->w = (struct watch){.obj = s, .handle = listen_watch};
        struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &s->w};
        if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, s->lfd, &ee) < 0)
            err = -errno;
    }
    if (err < 0)
        unlinkat(d->dirfd, file, 0);
    return err;
}

static rpal_service *service_new(rpal_domain *d, const char *name, rpal_policy_fn policy,
                                 void *arg, int *err)
{
    rpal_service *s = calloc(1, sizeof *s);
    *err = s ? 0 : -ENOMEM;
    if (!s)
        return NULL;
    s->d = d;
    s->lfd = -1;
    s->policy = policy;
    s->arg = arg;
    snprintf(s->name, sizeof s->name, "%s", name);
    if (getrandom(s->key.bytes, sizeof s->key.bytes, 0) != (ssize_t)sizeof s->key.bytes) {
        free(s);
        *err = -EIO;
        return NULL;
    }
    return s;
}

int rpal_service_register(rpal_domain *d, const char *name, unsigned mode,
                          rpal_policy_fn policy, void *arg, rpal_service **out)
{
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    if ((err = rpal__dom_component_validate(name)) < 0)
        return err;
    if (!out || (mode & ~0777u))
        return -EINVAL;
    struct sockaddr_un a;
    if ((err = rpal__svc_path(d, name, &a)) < 0)
        return err;
    rpal_service *s = service_new(d, name, policy, arg, &err);
    if (!s)
        return err;
    char file[SVC_FILE_MAX];
    rpal__svc_sock_file(file, name);

    pthread_mutex_lock(&d->lock);
    int n = 0;
    for (rpal_service *o = d->services; o; o = o->next)
        n++;
    if (n >= MEMBER_MAX_SERVICES)
        err = -ENOSPC;
    else if ((s->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        err = -errno;
    else if ((err = bind_name(d, s->lfd, &a, file)) == 0)
        err = open_for_requests(d, s, file, mode ? mode : 0600);
    if (err < 0) {
        pthread_mutex_unlock(&d->lock);
        if (s->lfd >= 0)
            close(s->lfd);
        free(s);
        return err;
    }
    s->next = d->services;
    d->services = s;
    rpal__dom_layer_attach(d, DOM_LAYER_SERVICE, &service_layer);
    rpal__dom_publish(d);
    pthread_mutex_unlock(&d->lock);
    *out = s;
    return 0;
}

int rpal_service_key(const rpal_service *s, rpal_key *key)
{
    if (!s || !key)
        return -EINVAL;
    *key = s->key;
    return 0;
}

/* Unlink *Q from d->pending and close its connection (a refusal).
 * d->lock held. */
static void pending_free(rpal_domain *d, struct pending **q)
{
    struct pending *x = *q;
    *q = x->next;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, x->fd, NULL);
    close(x->fd);
    free(x);
    d->npending--;
}

int rpal_service_unregister(rpal_service *s)
{
    if (!s)
        return -EINVAL;
    rpal_domain *d = s->d;
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    pthread_mutex_lock(&d->lock);
    rpal_service **pp = &d->services;
    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (!*pp || s->receivers) {
        pthread_mutex_unlock(&d->lock);
        /* A live receiver reads S (its channels' accept, its list): freeing
         * S under it would hand it freed memory. */
        return *pp ? -EBUSY : -EINVAL;
    }
    *pp = s->next;
    /* Handshakes still waiting for this service are refused by closing. */
    for (struct pending **q = &d->pending; *q;) {
        if ((*q)->svc == s)
            pending_free(d, q);
        else
            q = &(*q)->next;
    }
    char file[SVC_FILE_MAX];
    rpal__svc_sock_file(file, s->name);
    unlinkat(d->dirfd, file, 0);
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, s->lfd, NULL);
    close(s->lfd);
    rpal__dom_publish(d);
    pthread_mutex_unlock(&d->lock);
    free(s);
    return 0;
}

/* The domain is being left: its handshakes in progress are refused by
 * closing. */
static void drop_pending(rpal_domain *d)
{
    pthread_mutex_lock(&d->lock);
    while (d->pending) {
        struct pending *x = d->pending;
        d->pending = x->next;
        close(x->fd);
        free(x);
    }
    d->npending = 0;
    pthread_mutex_unlock(&d->lock);
}

/* Before anything is undone: a service with a live receiver keeps the
 * domain (-EBUSY, as rpal_service_unregister says). */
static int services_leave(rpal_domain *d)
{
    pthread_mutex_lock(&d->lock);
    int busy = 0;
    for (rpal_service *s = d->services; s; s = s->next)
        busy |= s->receivers != NULL;
    pthread_mutex_unlock(&d->lock);
    if (busy)
        return -EBUSY;
    while (d->services)
        rpal_service_unregister(d->services);
    drop_pending(d);
    return 0;
}

/* In a forked child: the listening sockets and the handshakes in progress
 * are the parent's (a live child would keep them open after the parent
 * died or unregistered). */
static void services_fork_child(rpal_domain *d)
{
    for (struct rpal_service *s = d->services; s; s = s->next)
        close(s->lfd);
    for (struct pending *x = d->pending; x; x = x->next)
        close(x->fd);
}

static const struct dom_layer service_layer = {services_leave, services_fork_child};

/* ---- the requester's side ---- */

/* Has the other end of SOCK (pid PID, 0 from another pid namespace) exited,
 * or does it within WAIT_MS? */
static int peer_exited(int sock, pid_t pid, int wait_ms)
{
    int pfd = rpal__prim_peer_pidfd(sock, pid);
    if (pfd < 0)
        return pfd == -ESRCH;
    int gone = poll(&(struct pollfd){pfd, POLLIN, 0}, 1, wait_ms) == 1;
    close(pfd);
    return gone;
}

/* The service closed our handshake connection without an answer: a
 * refusal (-EACCES), unless it died (its socket closed with it): then
 * -ECONNREFUSED, as for a socket nobody listens on, so that a requester
 * whose service was killed mid-handshake is not told its key is wrong. A dying process closes its
 * sockets a moment before it is reaped, so its pidfd gets 100 ms to turn
 * readable (only a refusal without an answer, which is rare, pays that). */
static int closed_unanswered(int sock)
{
    struct ucred cr;
    socklen_t cl = sizeof cr;
    int err = -EACCES;
    /* cr.pid may be 0: another pid namespace (peer_exited asks the socket) */
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0 && peer_exited(sock, cr.pid, 100))
        err = -ECONNREFUSED;
    return err;
}

/* Send MSG (with FD, -1 none) on SOCK and wait until DEADLINE for the
 * answer *REP of exactly its size (with *RFD, -1 none) from an rpal
 * service of our version. */
static int hs_round(int sock, const struct hs_req *msg, int fd, uint64_t deadline,
                    struct hs_rep *rep, int *rfd)
{
    int err = rpal__svc_send_with_fd(sock, msg, sizeof *msg, fd);
    /* Closed before we sent: an answer may be waiting all the same (a
     * busy service answers at once and closes). */
    if (err == -EPIPE || err == -ECONNRESET)
        err = poll(&(struct pollfd){sock, POLLIN, 0}, 1, 0) == 1 ? 0 : -ECONNRESET;
    if (err == 0)
        err = rpal__prim_poll_until(sock, POLLIN, deadline);
    if (err == 0)
        err = rpal__svc_recv_with_fd(sock, rep, sizeof *rep, rfd);
    /* A service that closed with our message unread leaves an error that
     * comes before the answer it queued (a busy one): take it, once. poll
     * reports it (POLLERR) without taking it, so after a poll's
     * -ECONNRESET the first read takes the error and the second the
     * answer (seen under emulation: a busy service's answer lost, and the
     * requester told -EACCES). */
    for (int i = 0; i < 2 && err == -ECONNRESET; i++)
        err = rpal__svc_recv_with_fd(sock, rep, sizeof *rep, rfd);
    if (err == 0 && (rep->magic != HS_MAGIC || rep->version != HS_VERSION))
        err = -EPROTO; /* not an rpal service of our version */
    return err;
}

/* Connect to FILE and say hello: REQ's kind, service and slot and a fresh
 * nonce (NONCES[0..HS_NONCE)), nothing of value; read the challenge into
 * *CH and its nonce into the rest of NONCES. */
static int hs_hello(rpal_domain *d, const char *file, const struct hs_req *req,
                    uint64_t deadline, uint8_t *nonces, struct hs_rep *ch, int *sock)
{
    /* Non-blocking: a full listen queue answers -EAGAIN at once instead
     * of blocking past the deadline. */
    *sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (*sock < 0)
        return -errno;
    struct hs_req hello = {.magic = HS_MAGIC, .version = HS_VERSION, .slot = req->slot,
                           .slot_size = req->slot_size, .kind = req->kind};
    memcpy(hello.service, req->service, sizeof hello.service);
    if (getrandom(nonces, HS_NONCE, 0) != HS_NONCE)
        return -EIO;
    memcpy(hello.nonce, nonces, HS_NONCE);
    /* Not connect() by name: it would follow a link planted there. */
    int err = rpal__prim_connect_beneath(d->dirfd, file, *sock), fd = -1;
    if (err == 0)
        err = hs_round(*sock, &hello, -1, deadline, ch, &fd);
    if (fd >= 0) {
        close(fd);
        err = err < 0 ? err : -EPROTO;
    }
    if (err == 0 && ch->status == -EBUSY)
        err = -EAGAIN; /* too many handshakes in progress: try again */
    else if (err == 0 && ch->status != 0)
        err = -EPROTO;
    if (err == 0)
        memcpy(nonces + HS_NONCE, ch->nonce, HS_NONCE);
    return err;
}

/* Has process PID ended (or is it ending: its pidfd is readable)? */
/* Before anything of value goes out: the process the kernel says listens
 * on SOCK must hold the live claim of the slot the challenge CH names,
 * offering NAME (else -EPROTO: a socket swapped in by someone else), and,
 * given the KEY, prove it holds it (else -EACCES: our key is not this
 * service's). */
static int hs_listener_check(rpal_domain *d, int sock, const char *name, const struct hs_rep *ch,
                             const rpal_key *key, const uint8_t *nonces)
{
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0)
        return -errno;
    if (ch->slot >= d->nslots || ch->slot == d->slot || ch->slot_size != d->slot_size)
        return -EPROTO;
    struct member_rec *rec = malloc(sizeof *rec);
    if (!rec)
        return -ENOMEM;
    int err = rpal__dom_read_member(d->dirfd, ch->slot, rec);
    /* By pid and pidfs inode: the pid is 0 or another's across pid namespaces. */
    if (err == 0)
        err = rpal__peer_rec_match_who(rec, cr.pid, rpal__prim_sock_peer_ino(sock), name);
    free(rec);
    /* A claim released because the service just died is its death
     * (-ESRCH, as after its answer), not an impostor. */
    if (err == -ESRCH && peer_exited(sock, cr.pid, 0))
        return -ESRCH;
    if (err < 0)
        return -EPROTO;
    uint8_t want[HS_MAC];
    if (key) {
        rpal__svc_hs_mac(key->bytes, "service", nonces, name, ch->slot, want);
        if (!rpal__mac_equal(ch->mac, want, HS_MAC))
            return -EACCES;
    }
    return 0;
}

int rpal__svc_exchange(rpal_domain *d, const char *file, const struct hs_req *req,
                       const rpal_key *key, int fd, int timeout_ms, struct hs_rep *rep,
                       int *rfd, int *sock)
{
    uint64_t deadline = rpal__prim_deadline(timeout_ms);
    *rfd = -1;
    uint8_t nonces[2 * HS_NONCE];
    struct hs_rep ch;
    int err = hs_hello(d, file, req, deadline, nonces, &ch, sock);
    /* Busy (too many handshakes in progress): again, until the deadline. */
    for (int ms = 1; err == -EAGAIN && rpal__prim_now_ns() + ms * 1000000ull < deadline;
         ms = ms < 64 ? 2 * ms : ms) {
        close(*sock);
        nanosleep(&(struct timespec){0, ms * 1000000L}, NULL);
        err = hs_hello(d, file, req, deadline, nonces, &ch, sock);
    }
    if (err == 0)
        err = hs_listener_check(d, *sock, req->service, &ch, key, nonces);
    if (err == 0) {
        struct hs_req r = *req;
        memcpy(r.nonce, nonces, HS_NONCE);
        if (key)
            rpal__svc_hs_mac(key->bytes, "requester", nonces, req->service, req->slot, r.mac);
        err = hs_round(*sock, &r, fd, deadline, rep, rfd);
    }
    /* The answer comes from the slot the challenge named, or from nobody. */
    if (err == 0 && rep->slot != ch.slot)
        err = -EPROTO;
    if (err < 0 && *rfd >= 0) {
        close(*rfd);
        *rfd = -1;
    }
    return err;
}

/* The answer REP (with the service's slot MEMFD) came on SOCK from a peer:
 * its slot must be the one its owner claims, held by the process the
 * kernel says we talk to, offering NAME. Then it is mapped; SOCK is the
 * peer's from then on (*SOCK -1). */
static int accept_answer(rpal_domain *d, const char *name, const struct hs_rep *rep,
                         int memfd, int *sock, rpal_peer **out)
{
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(*sock, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0)
        return -errno;
    pthread_mutex_lock(&d->lock);
    /* By pid and pidfs inode: the pid is 0 or another's across pid namespaces. */
    uint64_t ino = rpal__prim_sock_peer_ino(*sock);
    int err = rpal__peer_claim_check_who(d, rep->slot, rep->slot_size, cr.pid, ino, name);
    if (err == 0)
        err = rpal__peer_fd_check(memfd, d->slot_size);
    if (err == 0 && (err = rpal__peer_create(d, *sock, memfd, &cr, rep->slot, name, out)) == 0)
        *sock = -1;
    pthread_mutex_unlock(&d->lock);
    return err == -EBADMSG || err == -EINVAL || err == -EBUSY ? -EPROTO : err;
}

int rpal_service_request(rpal_domain *d, const char *name, const rpal_key *key,
                         int timeout_ms, rpal_peer **out)
{
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    if ((err = rpal__dom_component_validate(name)) < 0)
        return err;
    if (!key || !out)
        return -EINVAL;
    char file[SVC_FILE_MAX];
    rpal__svc_sock_file(file, name);
    struct stat st;
    if (fstatat(d->dirfd, file, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? -ENOENT : -errno;
    if (S_ISLNK(st.st_mode))
        return -ELOOP;
    if (!S_ISSOCK(st.st_mode))
        return -ENOENT;
    struct hs_req req = {.magic = HS_MAGIC, .version = HS_VERSION, .slot = d->slot,
                         .slot_size = d->slot_size};
    snprintf(req.service, sizeof req.service, "%s", name);
    struct hs_rep rep;
    int memfd, sock;
    uint64_t deadline = rpal__prim_deadline(timeout_ms);
    /* -EBUSY: the service still holds our last sharing (its release not
     * handled yet): again, 1 to 64 ms apart, until the deadline (-EAGAIN). */
    for (int ms = 1;; ms = ms < 64 ? 2 * ms : ms) {
        err = rpal__svc_exchange(d, file, &req, key, d->memfd, rpal__prim_ms_left(deadline), &rep,
                                 &memfd, &sock);
        if (err != 0 || rep.status != -EBUSY)
            break;
        if (memfd >= 0)
            close(memfd);
        if (sock >= 0)
            close(sock);
        memfd = sock = -1;
        err = -EAGAIN;
        if (rpal__prim_now_ns() + ms * 1000000ull >= deadline)
            break;
        nanosleep(&(struct timespec){0, ms * 1000000L}, NULL);
    }
    if (err == -ECONNRESET)
        err = closed_unanswered(sock);
    else if (err == 0 && rep.status != 0)
        err = -EACCES; /* wrong key, or the service's policy said no */
    else if (err == 0)
        err = accept_answer(d, name, &rep, memfd, &sock, out);
    if (memfd >= 0)
        close(memfd);
    if (sock >= 0)
        close(sock);
    return err;
}

/* ---- the service's side (from rpal_domain_dispatch, d->lock held) ---- */

static int reply(int sock, const rpal_domain *d, int status, int memfd)
{
    struct hs_rep rep = {.magic = HS_MAGIC, .version = HS_VERSION, .status = status,
                         .slot = d->slot, .slot_size = d->slot_size};
    return rpal__svc_send_with_fd(sock, &rep, sizeof rep, status == 0 ? memfd : -1);
}

int rpal__svc_req_check(struct hs_req *req)
{
    req->service[sizeof req->service - 1] = 0; /* a string whatever the peer sent */
    return req->magic == HS_MAGIC && req->version == HS_VERSION ? 0 : -EPROTO;
}

int rpal__svc_req_admit(const struct hs_req *req, const char *name, const uint8_t *key,
                        const uint8_t *nonces)
{
    if (req->kind != HS_KIND_SHARE)
        return -EPROTO;
    if (strcmp(req->service, name))
        return -EACCES;
    uint8_t want[HS_MAC];
    rpal__svc_hs_mac(key, "requester", nonces, name, req->slot, want);
    return rpal__mac_equal(req->mac, want, HS_MAC) ? 0 : -EACCES;
}

/* A requester's hello came (x->stage 0): answer with our challenge, a
 * fresh nonce and our proof of the key, and wait for its request. Its
 * hello carries nothing we act on but its nonce. */
static int challenge(rpal_domain *d, struct pending *x)
{
    struct hs_req hello;
    int fd = -1;
    int err = rpal__svc_recv_with_fd(x->fd, &hello, sizeof hello, &fd);
    if (err == -EAGAIN)
        return -EAGAIN; /* spurious wake-up: keep waiting */
    if (fd >= 0) {
        close(fd);
        err = err < 0 ? err : -EPROTO;
    }
    if (err == 0)
        err = rpal__svc_req_check(&hello);
    if (err == 0 && strcmp(hello.service, x->svc->name))
        err = -EACCES;
    struct hs_rep ch = {.magic = HS_MAGIC, .version = HS_VERSION, .slot = d->slot,
                        .slot_size = d->slot_size};
    memcpy(x->nonces, hello.nonce, HS_NONCE);
    if (err == 0 && getrandom(x->nonces + HS_NONCE, HS_NONCE, 0) != HS_NONCE)
        err = -EIO;
    if (err == 0) {
        memcpy(ch.nonce, x->nonces + HS_NONCE, HS_NONCE);
        rpal__svc_hs_mac(x->svc->key.bytes, "service", x->nonces, x->svc->name, d->slot, ch.mac);
        err = rpal__svc_send_with_fd(x->fd, &ch, sizeof ch, -1);
    }
    if (err < 0) {
        close(x->fd);
        return err;
    }
    x->stage = 1;
    x->since = rpal__prim_now_ns(); /* its deadline runs from our challenge */
    return -EAGAIN;
}

static int answer(rpal_domain *d, struct pending *x, struct rpal_event *ev)
{
    struct hs_req req;
    int memfd = -1, sock = x->fd;
    rpal_service *s = x->svc;
    int err = rpal__svc_recv_with_fd(sock, &req, sizeof req, &memfd);
    if (err == -EAGAIN)
        return -EAGAIN; /* spurious wake-up: keep waiting */
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (err == 0)
        err = rpal__svc_req_check(&req);
    else
        req.service[sizeof req.service - 1] = 0;
    if (err == 0 && getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0)
        err = -errno;
    uint64_t ino = err == 0 ? rpal__prim_sock_peer_ino(sock) : 0; /* see accept_answer */
    if (err == 0 && req.kind == HS_KIND_CHAN) {
        /* A channel from a peer this service already accepted. */
        if (memfd >= 0)
            close(memfd);
        rpal_peer *p = rpal__peer_at_slot(d, req.slot);
        uint64_t addr = 0;
        int fd = -1;
        if (!p || !rpal__peer_is(p, cr.pid, ino) || strcmp(p->info.service, s->name) ||
            strcmp(req.service, s->name))
            err = -EACCES;
        else if (!s->chan_accept)
            err = -ENOTCONN; /* no receiver yet */
        else
            err = s->chan_accept(s, p, sock, &req, &addr, &fd);
        struct hs_rep rep = {.magic = HS_MAGIC, .version = HS_VERSION, .status = err,
                             .slot = d->slot, .slot_size = d->slot_size, .addr = addr};
        (void)rpal__svc_send_with_fd(sock, &rep, sizeof rep, err < 0 ? -1 : fd);
        if (err < 0)
            close(sock);
        return err < 0 ? err : -EINPROGRESS; /* no event for the app */
    }
    if (err == 0)
        err = rpal__svc_req_admit(&req, s->name, s->key.bytes, x->nonces);
    if (err == 0)
        err = rpal__peer_claim_check_who(d, req.slot, req.slot_size, cr.pid, ino, NULL);
    if (err == 0)
        err = rpal__peer_fd_check(memfd, d->slot_size);
    if (err == 0 && s->policy) {
        struct rpal_peer_info info = {.pid = cr.pid, .uid = cr.uid, .gid = cr.gid,
                                      .slot = req.slot};
        snprintf(info.service, sizeof info.service, "%s", s->name);
        if (s->policy(&info, s->arg) != 0)
            err = -EACCES;
    }
    rpal_peer *p = NULL;
    if (err == 0)
        err = rpal__peer_create(d, sock, memfd, &cr, req.slot, s->name, &p);
    if (memfd >= 0)
        close(memfd);
    if (err < 0) {
        if (err != -ECONNRESET)
            (void)reply(sock, d, err, -1);
        close(sock);
        return err;
    }
    if (reply(sock, d, 0, d->memfd) < 0) {
        /* The requester gave up (timed out) meanwhile: no sharing. */
        rpal__peer_gone(d, p, -ECONNRESET);
        d->peers = p->next; /* rpal__peer_create put it first */
        free(p);
        return -ECONNRESET;
    }
    ev->type = RPAL_EV_PEER_ACCEPTED;
    ev->reason = 0;
    ev->peer = p;
    return 0;
}

/* A requester's message came (or its connection closed): answer it. */
static int pending_watch(rpal_domain *d, struct watch *w, uint32_t events, struct rpal_event *ev)
{
    (void)events;
    struct pending *x = w->obj;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, x->fd, NULL);
    int err = x->stage == 0 ? challenge(d, x) : answer(d, x, ev);
    if (err == -EAGAIN) {
        struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &x->w};
        if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, x->fd, &ee) == 0)
            return 0;
        close(x->fd);
    }
    for (struct pending **q = &d->pending; *q; q = &(*q)->next)
        if (*q == x) {
            *q = x->next;
            break;
        }
    d->npending--;
    free(x);
    return err == 0 ? 1 : 0;
}

/* May the requester CR have one more handshake in progress? Those whose
 * requester has been silent past the deadline are dropped first, whoever
 * made them (one that has spoken waits for us, not we for it). */
static int pending_room(rpal_domain *d, const struct ucred *cr, uint64_t now)
{
    int pid = 0, uid = 0;
    for (struct pending **q = &d->pending; *q;) {
        if (now - (*q)->since > HS_PENDING_MS * 1000000ull &&
            poll(&(struct pollfd){(*q)->fd, POLLIN, 0}, 1, 0) == 0) {
            pending_free(d, q);
            continue;
        }
        pid += cr->pid > 0 && (*q)->pid == cr->pid; /* 0: another pid namespace */
        uid += (*q)->uid == cr->uid;
        q = &(*q)->next;
    }
    return d->npending < MAX_PENDING && pid < HS_PER_PID && uid < HS_PER_UID;
}

/* Requesters are waiting on the service's socket: each connection is kept
 * until its request comes, within a deadline and limits per process and
 * user (pending_room); past them the requester is told we are busy. */
static int listen_watch(rpal_domain *d, struct watch *w, uint32_t events, struct rpal_event *ev)
{
    (void)events;
    (void)ev;
    rpal_service *s = w->obj;
    for (;;) {
        int c = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0)
            break;
        struct ucred cr;
        socklen_t cl = sizeof cr;
        uint64_t now = rpal__prim_now_ns();
        struct pending *x = NULL;
        if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0 && pending_room(d, &cr, now))
            x = calloc(1, sizeof *x);
        if (!x) {
            (void)reply(c, d, -EBUSY, -1);
            /* Its hello read first: closed unread, it would reach the
             * requester as a reset instead of our answer. */
            char buf[sizeof(struct hs_req)];
            for (int i = 0; i < 2 && recv(c, buf, sizeof buf, MSG_DONTWAIT) > 0; i++)
                ;
            close(c);
            continue;
        }
        x->w = (struct watch){.obj = x, .handle = pending_watch};
        x->svc = s;
        x->fd = c;
        x->pid = cr.pid;
        x->uid = cr.uid;
        x->since = now;
        struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &x->w};
        if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, c, &ee) < 0) {
            close(c);
            free(x);
            continue;
        }
        x->next = d->pending;
        d->pending = x;
        d->npending++;
    }
    return 0;
}
