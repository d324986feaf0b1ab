/* peer: the life of a sharing with another member, from its mapping to its
 * end, and the windows through which this process reads it.
 *
 * A peer is another member whose slot this process maps read-only, once
 * the consent handshake (service.c) or an upgraded connection (compat.c)
 * has checked it. Its end comes from a release (a byte on the handshake's
 * connection, then EOF), from its death (its pidfd), or from this side
 * (rpal_peer_release); channels that still hold it keep the memory of the
 * handle, not the mapping. With protection keys its pages sit under a key
 * that this process's threads open only inside access windows.
 * See docs/domains.md.
 */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define REL_BYTE "R" /* sent on the connection by a release */

/* ---- the sharing's life ---- */

/* Per thread: the windows this thread has open, so that windows nest and
 * one thread's window does not open a peer for the others. */
#define PEER_WINDOWS_MAX 16 /* peers one thread may have windows open on at once */
static __thread struct {
    const rpal_peer *peer;
    int depth;
    int keyslot; /* index in d->pkeys this window opened, or -1 */
} t_windows[PEER_WINDOWS_MAX];


/* The peer's connection (a release byte, or EOF) or its pidfd (its death)
 * became readable: the sharing ends and the application hears of it. */
static int peer_watch(rpal_domain *d, struct watch *w, uint32_t events, struct rpal_event *ev)
{
    rpal_peer *p = w->obj;
    if (rpal_load_relaxed(&p->gone))
        return 0;
    int reason = -ESRCH;
    if (w == &p->wsock) {
        char b[64];
        ssize_t n = recv(p->sock, b, sizeof b, MSG_DONTWAIT);
        if (n > 0 && memchr(b, REL_BYTE[0], (size_t)n))
            reason = 0; /* released */
        else if (n > 0 || (n < 0 && errno == EAGAIN && !(events & (EPOLLHUP | EPOLLRDHUP))))
            return 0; /* nothing else is expected on it: ignore */
    }
    rpal__peer_gone(d, p, reason);
    ev->type = RPAL_EV_PEER_GONE;
    ev->reason = reason;
    ev->peer = p;
    return 1;
}

/* In a forked child: the windows of the forking thread were its parent's,
 * and the peers' connections and pidfds are the parent's (a live child
 * would otherwise keep the parent's sharing open after it released). */
static void peers_fork_child(rpal_domain *d)
{
    memset(t_windows, 0, sizeof t_windows);
    for (rpal_peer *q = d->peers; q; q = q->next)
        if (!rpal_load_relaxed(&q->gone)) {
            close(q->sock);
            close(q->pidfd);
        }
}

static int peers_leave(rpal_domain *d)
{
    while (d->peers)
        rpal_peer_release(d->peers);
    return 0;
}

static const struct dom_layer peer_layer = {peers_leave, peers_fork_child};

/* The memfd of a peer's slot must be sealed so that it cannot shrink (no
 * SIGBUS for us on what we have seen of it), nor be written through a new
 * mapping, nor have its seals changed; that is what makes our read-only
 * mapping of it safe. Its size is not the slot's: the file grows with its
 * owner's heap (F_SEAL_GROW is not set), and what lies past its end is
 * never read (rpal__peer_readable). SIZE, the slot's, is what we map. */
int rpal__peer_fd_check(int fd, uint64_t size)
{
    struct stat st;
    (void)size;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return -EBADMSG;
    int seals = fcntl(fd, F_GET_SEALS);
    int need = F_SEAL_SHRINK | F_SEAL_SEAL;
    if (seals < 0 || (seals & need) != need ||
        !(seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)))
        return -EBADMSG;
    return 0;
}

/* The part of P's slot that its file backs: the file only grows (sealed
 * against shrinking), so what was backed once stays backed, and a length
 * learnt once is kept. A span past it is asked of the kernel, which reads
 * its last byte for us (-EFAULT past the end of the file, not SIGBUS):
 * once per growth step of an honest peer, at every call for a peer that
 * points past its end (the call fails anyway). */
int rpal__peer_readable(rpal_peer *p, uint64_t addr, uint64_t len)
{
    uint64_t known = rpal_load_relaxed(&p->readable);
    if (span_inside(addr, len, p->base, known))
        return 1;
    if (!span_inside(addr, len, p->base, p->size))
        return 0;
    if (len == 0)
        return 1; /* nothing is read */
    char b;
    if (rpal__prim_mem_read(&b, (const void *)(uintptr_t)(addr + len - 1), 1) < 0)
        return 0;
    /* Whole pages: the page that holds a backed byte is readable. */
    uint64_t end = (addr - p->base + len + RPAL_PAGE - 1) & ~(uint64_t)(RPAL_PAGE - 1);
    if (end > p->size)
        end = p->size;
    while (known < end && !rpal_cas_acq_rel(&p->readable, &known, end))
        ;
    return 1;
}

rpal_peer *rpal__peer_at_slot(rpal_domain *d, unsigned slot)
{
    for (rpal_peer *p = d->peers; p; p = p->next)
        if (!rpal_load_relaxed(&p->gone) && p->info.slot == slot)
            return p;
    return NULL;
}

/* Check a peer's claimed slot against its claim record and credentials. */
int rpal__peer_claim_check(rpal_domain *d, unsigned slot, uint64_t size,
                     pid_t pid, const char *service)
{
    return rpal__peer_claim_check_who(d, slot, size, pid, 0, service);
}

int rpal__peer_claim_check_who(rpal_domain *d, unsigned slot, uint64_t size,
                               pid_t pid, uint64_t ino, const char *service)
{
    if (slot >= d->nslots || slot == d->slot || size != d->slot_size)
        return -EINVAL;
    if (rpal__peer_at_slot(d, slot))
        return -EBUSY;
    struct member_rec *rec = malloc(sizeof *rec);
    if (!rec)
        return -ENOMEM;
    int err = rpal__dom_read_member(d->dirfd, slot, rec);
    if (err == 0)
        err = rpal__peer_rec_match_who(rec, pid, ino, service);
    free(rec);
    return err;
}

int rpal__peer_rec_match(const struct member_rec *rec, pid_t pid, const char *service)
{
    return rpal__peer_rec_match_who(rec, pid, 0, service);
}

int rpal__peer_rec_match_who(const struct member_rec *rec, pid_t pid, uint64_t ino,
                             const char *service)
{
    if (!rpal__dom_rec_is(rec, pid, ino))
        return -EACCES;
    if (!service)
        return 0;
    for (unsigned i = 0; i < rec->nservices && i < MEMBER_MAX_SERVICES; i++)
        if (!strcmp(rec->services[i], service))
            return 0;
    return -EACCES;
}

static void unmap_peer(rpal_domain *d, rpal_peer *p)
{
    if (!p->mapped)
        return;
    /* Put the reservation back rather than leave a hole in the window. A
     * receiver or caller thread may be reading the slot through a channel
     * right now: then the range reads as zeros instead (which the channel
     * code takes for a broken ring), so that no thread faults. */
    int busy = rpal_load_acquire(&p->nchans) > 0 || rpal_load_acquire(&p->windows) > 0;
    mmap((void *)(uintptr_t)p->base, p->size, busy ? PROT_READ : PROT_NONE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    madvise((void *)(uintptr_t)p->base, p->size, MADV_DONTFORK);
    rpal__peer_unguard(d, p);
    p->mapped = 0;
}

int rpal__peer_is(const rpal_peer *p, pid_t pid, uint64_t ino)
{
    /* The pidfd we watch it by names it in every namespace (pidfs). */
    uint64_t mine = ino ? rpal__prim_pidfd_ino(p->pidfd) : 0;
    if (mine)
        return mine == ino;
    return pid > 0 && p->info.pid == pid;
}

/* Map the peer at SLOT and start watching it. Takes SOCK; not MEMFD. */
int rpal__peer_create(rpal_domain *d, int sock, int memfd, const struct ucred *cr,
                unsigned slot, const char *service, rpal_peer **out)
{
    return rpal__peer_create_pidfd(d, sock, memfd, cr, -1, slot, service, out);
}

int rpal__peer_create_pidfd(rpal_domain *d, int sock, int memfd, const struct ucred *cr,
                            int pidfd, unsigned slot, const char *service, rpal_peer **out)
{
    rpal_peer *p = calloc(1, sizeof *p);
    if (!p) {
        if (pidfd >= 0)
            close(pidfd);
        return -ENOMEM;
    }
    p->d = d;
    p->sock = sock;
    p->pidfd = pidfd;
    p->pkey = -1;
    rpal_store_relaxed(&p->keyslot, -1);
    p->info.pid = cr->pid;
    p->info.uid = cr->uid;
    p->info.gid = cr->gid;
    p->info.slot = slot;
    snprintf(p->info.service, sizeof p->info.service, "%s", service);
    p->base = rpal__dom_slot_addr(d, slot);
    p->size = d->slot_size;
    struct stat st;
    if (fstat(memfd, &st) == 0 && st.st_size > 0)
        rpal_store_relaxed(&p->readable, (uint64_t)st.st_size < p->size
                                             ? (uint64_t)st.st_size & ~(uint64_t)(RPAL_PAGE - 1)
                                             : p->size);
    int err = 0;
    void *m = mmap((void *)(uintptr_t)p->base, p->size, PROT_READ,
                   MAP_SHARED | MAP_FIXED, memfd, 0);
    if (m == MAP_FAILED) {
        err = -errno;
        goto fail;
    }
    p->mapped = 1;
    madvise(m, p->size, MADV_DONTFORK);
    if ((err = rpal__peer_guard(d, p)) < 0)
        goto fail;
    /* Not pidfd_open(pid): across pid namespaces the pid is another's or
     * 0; the kernel's pidfd of the connection's other end is its own. */
    if (p->pidfd < 0)
        p->pidfd = rpal__prim_peer_pidfd(sock, cr->pid);
    if (p->pidfd < 0) {
        err = p->pidfd == -ESRCH ? -ECONNREFUSED : p->pidfd;
        goto fail;
    }
    p->wsock = (struct watch){.obj = p, .handle = peer_watch};
    p->wpid = (struct watch){.obj = p, .handle = peer_watch};
    struct epoll_event es = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &p->wsock};
    struct epoll_event ep = {.events = EPOLLIN, .data.ptr = &p->wpid};
    /* SOCK is -1 for a peer met through rpal_uds_fdmap: the application's
     * connection is not ours to watch; its death still shows on the pidfd. */
    if ((sock >= 0 && epoll_ctl(d->epfd, EPOLL_CTL_ADD, sock, &es) < 0) ||
        epoll_ctl(d->epfd, EPOLL_CTL_ADD, p->pidfd, &ep) < 0) {
        err = -errno;
        if (sock >= 0)
            epoll_ctl(d->epfd, EPOLL_CTL_DEL, sock, NULL);
        goto fail;
    }
    p->next = d->peers;
    d->peers = p;
    rpal__dom_layer_attach(d, DOM_LAYER_PEER, &peer_layer);
    rpal__dom_publish(d);
    *out = p;
    return 0;
fail:
    unmap_peer(d, p);
    if (p->pidfd >= 0)
        close(p->pidfd);
    free(p);
    return err;
}

/* The sharing with P ends: unmap, stop watching, tell the app. */
void rpal__peer_gone(rpal_domain *d, rpal_peer *p, int reason)
{
    if (rpal_load_relaxed(&p->gone))
        return;
    unmap_peer(d, p);
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, p->pidfd, NULL);
    /* A release says so before closing: an EOF alone means the process
     * went (its socket closes a moment before its pidfd turns readable).
     * shutdown() reaches the other side even if a forked child of ours
     * still holds a copy of the socket. */
    if (p->sock >= 0) {
        epoll_ctl(d->epfd, EPOLL_CTL_DEL, p->sock, NULL);
        if (reason == 0)
            (void)send(p->sock, REL_BYTE, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        shutdown(p->sock, SHUT_RDWR);
        close(p->sock);
    }
    close(p->pidfd);
    p->sock = p->pidfd = -1;
    /* The reason first: a channel that sees GONE (acquire) reads it. */
    p->reason = reason;
    rpal_store_release(&p->gone, 1);
    rpal__dom_publish(d);
}

/* For rpal_uds_fdmap: the peer at SLOT, met on a connection whose other
 * end the kernel says is CR, which sent MEMFD as its slot. An existing
 * peer there is returned as it is (*CREATED 0); otherwise the slot is
 * checked like a service's answer and mapped (*CREATED 1). */
int rpal__peer_adopt(rpal_domain *d, int memfd, const struct ucred *cr,
                   unsigned slot, uint64_t slot_size, rpal_peer **out, int *created)
{
    return rpal__peer_adopt_who(d, memfd, cr, -1, 0, slot, slot_size, out, created);
}

int rpal__peer_adopt_who(rpal_domain *d, int memfd, const struct ucred *cr, int pidfd,
                         uint64_t ino, unsigned slot, uint64_t slot_size, rpal_peer **out,
                         int *created)
{
    pthread_mutex_lock(&d->lock);
    int err = 0;
    rpal_peer *p = slot < d->nslots ? rpal__peer_at_slot(d, slot) : NULL;
    *created = 0;
    if (p) {
        if (!rpal__peer_is(p, cr->pid, ino) || slot_size != d->slot_size)
            err = -EPROTO;
        else
            *out = p;
    } else {
        err = rpal__peer_claim_check_who(d, slot, slot_size, cr->pid, ino, NULL);
        if (err == 0)
            err = rpal__peer_fd_check(memfd, d->slot_size);
        if (err == 0) {
            err = rpal__peer_create_pidfd(d, -1, memfd, cr, pidfd, slot, "", out);
            pidfd = -1; /* taken */
        }
        if (err == -EBADMSG || err == -EINVAL || err == -EBUSY)
            err = -EPROTO;
        *created = err == 0;
    }
    pthread_mutex_unlock(&d->lock);
    if (pidfd >= 0)
        close(pidfd);
    return err;
}

/* ---- release and accessors ---- */

int rpal_peer_release(rpal_peer *p)
{
    if (!p)
        return -EINVAL;
    rpal_domain *d = p->d;
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    pthread_mutex_lock(&d->lock);
    rpal_peer **pp = &d->peers;
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    if (!*pp) {
        pthread_mutex_unlock(&d->lock);
        return -EINVAL;
    }
    rpal__peer_gone(d, p, 0);
    *pp = p->next;
    rpal__dom_publish(d);
    /* Channels and connections still holding P keep the memory (not the
     * mapping) until the last lets go: rpal__peer_put(). */
    int held = rpal_load_acquire(&p->nchans) > 0;
    if (held)
        p->released = 1;
    pthread_mutex_unlock(&d->lock);
    if (!held)
        free(p);
    return 0;
}

void rpal__peer_put(rpal_peer *p, int locked)
{
    rpal_domain *d = p->d;
    if (!locked)
        pthread_mutex_lock(&d->lock);
    int last = rpal_fetch_add_acq_rel(&p->nchans, -1) == 1 && p->released;
    if (!locked)
        pthread_mutex_unlock(&d->lock);
    if (last)
        free(p);
}

int rpal_peer_info(const rpal_peer *p, struct rpal_peer_info *info)
{
    if (!p || !info)
        return -EINVAL;
    *info = p->info;
    return 0;
}

const void *rpal_peer_base(const rpal_peer *p)
{
    return p && p->mapped && rpal__dom_check(p->d) == 0 ? (const void *)(uintptr_t)p->base : NULL;
}

uint64_t rpal_peer_size(const rpal_peer *p)
{
    return p && p->mapped && rpal__dom_check(p->d) == 0 ? p->size : 0;
}

/* ---- access windows and protection keys ---- */

static int *t_depth(const rpal_peer *p, int create)
{
    int free_i = -1;
    for (int i = 0; i < PEER_WINDOWS_MAX; i++) {
        if (t_windows[i].peer == p && t_windows[i].depth > 0)
            return &t_windows[i].depth;
        if (free_i < 0 && t_windows[i].depth == 0)
            free_i = i;
    }
    if (!create || free_i < 0)
        return NULL;
    t_windows[free_i].peer = p;
    t_windows[free_i].keyslot = -1;
    return &t_windows[free_i].depth;
}

static int *t_keyslot(int *depth)
{
    /* depth points into a t_windows entry; its keyslot sits beside it. */
    for (int i = 0; i < PEER_WINDOWS_MAX; i++)
        if (&t_windows[i].depth == depth)
            return &t_windows[i].keyslot;
    return NULL;
}

/* The always-closed key, allocated on first need. */
static int lockkey_get(rpal_domain *d)
{
    if (!d->have_lockkey) {
        d->lockkey = pkey_alloc(0, PKEY_DISABLE_ACCESS);
        if (d->lockkey < 0)
            return -errno;
        d->have_lockkey = 1;
    }
    return 0;
}

/* A key is reassigned only when no thread has a window open under it, not
 * even one on a peer that has gone meanwhile (whose thread will close that
 * key in its own PKRU when it ends the window). The lock-free begin
 * (rpal__peer_access_begin_locked) counts itself into key_windows first and checks the
 * owner after; the reassigner claims the count from 0 to KEY_CLAIMED, so
 * that of the two exactly one wins: a begin that finds the count negative
 * backs off to the locked path. d->lock held. */
#define KEY_CLAIMED (INT_MIN / 2)
static int key_claim(rpal_domain *d, int i)
{
    int zero = 0;
    return rpal_cas_acq_rel(&d->key_windows[i], &zero, KEY_CLAIMED);
}

static void key_unclaim(rpal_domain *d, int i)
{
    /* release: the new owner and keyslot before a begin that sees the count */
    rpal_fetch_add_acq_rel(&d->key_windows[i], -KEY_CLAIMED);
}

/* Give P a key of its own, taking one from a peer with no open window if
 * all are in use; that peer goes back under the always-closed key.
 * d->lock held. */
static int key_assign(rpal_domain *d, rpal_peer *p)
{
    if (p->pkey >= 0)
        return 0;
    int err = lockkey_get(d);
    if (err < 0)
        return err;
    int slot = -1;
    for (int i = 0; i < DOM_PKEYS && slot < 0; i++) {
        if (d->pkeys[i] < 0) {
            d->pkeys[i] = pkey_alloc(0, PKEY_DISABLE_ACCESS);
            if (d->pkeys[i] >= 0 && key_claim(d, i))
                slot = i;
        } else if (!rpal_load_relaxed(&d->pkey_owner[i]) && key_claim(d, i)) {
            slot = i;
        }
    }
    for (int i = 0; i < DOM_PKEYS && slot < 0; i++) {
        rpal_peer *o = rpal_load_relaxed(&d->pkey_owner[i]);
        if (o && key_claim(d, i)) {
            if (o->mapped)
                pkey_mprotect((void *)(uintptr_t)o->base, o->size, PROT_READ, d->lockkey);
            o->pkey = -1;
            rpal_store_relaxed(&o->keyslot, -1);
            rpal_store_relaxed(&d->pkey_owner[i], NULL);
            slot = i;
        }
    }
    if (slot < 0)
        return -EBUSY; /* every key is in an open window */
    if (pkey_mprotect((void *)(uintptr_t)p->base, p->size, PROT_READ, d->pkeys[slot]) < 0) {
        err = -errno;
        key_unclaim(d, slot);
        return err;
    }
    rpal_store_relaxed(&d->pkey_owner[slot], p);
    p->pkey = d->pkeys[slot];
    rpal_store_relaxed(&p->keyslot, slot);
    key_unclaim(d, slot);
    return 0;
}

/* A newly mapped peer slot starts under the always-closed key. */
int rpal__peer_guard(rpal_domain *d, rpal_peer *p)
{
    if (!(rpal_capabilities() & RPAL_CAP_PKU))
        return 0;
    int err = lockkey_get(d);
    if (err < 0)
        return err;
    return pkey_mprotect((void *)(uintptr_t)p->base, p->size, PROT_READ, d->lockkey) < 0
               ? -errno : 0;
}

/* P gives up its key (d->lock held). A window open under it keeps it
 * reserved (key_windows) until that window ends. */
void rpal__peer_unguard(rpal_domain *d, rpal_peer *p)
{
    for (int i = 0; i < DOM_PKEYS; i++)
        if (rpal_load_relaxed(&d->pkey_owner[i]) == p)
            rpal_store_release(&d->pkey_owner[i], NULL);
    p->pkey = -1;
    rpal_store_relaxed(&p->keyslot, -1);
}

/* P's pages leave key 0 (d->lock held): back under the closed key, once
 * nothing needs them open to every thread, neither a pin nor a window that
 * was opened while they were (such a window holds no key of its own).
 * Against the lock-free begin, which counts itself into p->windows and then
 * reads zero_key, this clears zero_key and then reads p->windows (all
 * seq_cst): either it sees that window and puts zero_key back, or that
 * begin sees zero_key clear and takes the locked path. RELOCKING tells an
 * end that comes meanwhile to look again under the lock. */
static void zero_key_end(rpal_domain *d, rpal_peer *p)
{
    if (!rpal_load_relaxed(&p->zero_key) || p->pins > 0)
        return;
    rpal_store_seq_cst(&p->relocking, 1);
    rpal_store_seq_cst(&p->zero_key, 0);
    if (rpal_load_seq_cst(&p->windows) > 0 ||
        (p->mapped && !rpal_load_relaxed(&p->gone) &&
         (lockkey_get(d) < 0 ||
          pkey_mprotect((void *)(uintptr_t)p->base, p->size, PROT_READ, d->lockkey) < 0)))
        rpal_store_seq_cst(&p->zero_key, 1); /* a window still needs it open */
    rpal_store_seq_cst(&p->relocking, 0);
}

/* A window on P for every thread, for readers that live long and may run
 * in any thread (channels, connections): while a pin holds, P's pages are
 * under key 0, which every thread's PKRU opens. Without protection keys
 * this only counts. */
int rpal__peer_pin(rpal_peer *p)
{
    rpal_domain *d = p->d;
    int err = 0;
    pthread_mutex_lock(&d->lock);
    if (rpal_load_relaxed(&p->gone)) {
        err = p->reason ? p->reason : -ESHUTDOWN;
    } else if (p->pins++ == 0 && (rpal_capabilities() & RPAL_CAP_PKU) && p->mapped &&
               !rpal_load_relaxed(&p->zero_key)) {
        if (pkey_mprotect((void *)(uintptr_t)p->base, p->size, PROT_READ, 0) < 0) {
            err = -errno;
            p->pins--;
        } else {
            rpal__peer_unguard(d, p);
            rpal_store_seq_cst(&p->zero_key, 1);
        }
    }
    pthread_mutex_unlock(&d->lock);
    return err;
}

void rpal__peer_unpin(rpal_peer *p, int locked)
{
    rpal_domain *d = p->d;
    if (!locked)
        pthread_mutex_lock(&d->lock);
    /* A thread may be inside a window opened while the pin held, which gave
     * it no key: the pages stay under key 0 until its window ends. */
    if (p->pins > 0 && --p->pins == 0)
        zero_key_end(d, p);
    if (!locked)
        pthread_mutex_unlock(&d->lock);
}

/* The outermost window of this thread on P, with protection keys. Without
 * the lock in the common cases: P's pages are open to every thread
 * (zero_key), or P holds a key that stays its own while we count ourselves
 * into key_windows (see key_claim); then only PKRU is written. */
static int key_window_begin(rpal_domain *d, rpal_peer *p, int locked, int *keyslot)
{
    *keyslot = -1;
    if (rpal_load_seq_cst(&p->zero_key))
        return 0; /* pairs with zero_key_end: seen before it closes them */
    int ks = rpal_load_acquire(&p->keyslot);
    if (ks >= 0) {
        if (rpal_fetch_add_acq_rel(&d->key_windows[ks], 1) >= 0 &&
            rpal_load_acquire(&d->pkey_owner[ks]) == p && pkey_set(d->pkeys[ks], 0) == 0) {
            *keyslot = ks;
            return 0;
        }
        rpal_fetch_add_relaxed(&d->key_windows[ks], -1); /* lost it: the locked way */
    }
    if (!locked)
        pthread_mutex_lock(&d->lock);
    int err = 0;
    ks = -1;
    if (!rpal_load_relaxed(&p->zero_key) && (err = key_assign(d, p)) == 0) {
        ks = rpal_load_relaxed(&p->keyslot);
        rpal_fetch_add_relaxed(&d->key_windows[ks], 1);
    }
    if (!locked)
        pthread_mutex_unlock(&d->lock);
    if (ks >= 0 && pkey_set(d->pkeys[ks], 0) < 0) {
        err = -errno;
        rpal_fetch_add_relaxed(&d->key_windows[ks], -1);
        ks = -1;
    }
    *keyslot = ks;
    return err;
}

int rpal__peer_access_begin_locked(rpal_peer *p, int locked)
{
    if (!p)
        return -EINVAL;
    int err = rpal__dom_check(p->d);
    if (err < 0)
        return err; /* -ECHILD in a forked child */
    if (rpal_load_relaxed(&p->gone))
        return p->reason ? p->reason : -ESHUTDOWN;
    int *depth = t_depth(p, 1);
    if (!depth)
        return -EMFILE; /* more than PEER_WINDOWS_MAX peers open in one thread */
    if ((*depth)++ > 0)
        return 0;
    /* seq_cst: before the read of zero_key in key_window_begin */
    rpal_fetch_add_seq_cst(&p->windows, 1);
    *t_keyslot(depth) = -1;
    if (!(rpal_capabilities() & RPAL_CAP_PKU))
        return 0;
    int ks;
    if ((err = key_window_begin(p->d, p, locked, &ks)) < 0) {
        (*depth)--;
        rpal_fetch_add_seq_cst(&p->windows, -1);
        return err;
    }
    *t_keyslot(depth) = ks;
    return 0;
}

int rpal__peer_access_end_locked(rpal_peer *p, int locked)
{
    if (!p)
        return -EINVAL;
    int *depth = t_depth(p, 0);
    if (!depth)
        return rpal__dom_check(p->d) < 0 ? -ECHILD : -EINVAL; /* no window open here */
    if (--(*depth) > 0)
        return 0;
    /* Close the key this window opened, even if the peer has gone and lost
     * it meanwhile: it is still open in this thread's PKRU. */
    int ks = *t_keyslot(depth);
    if (ks >= 0) {
        pkey_set(p->d->pkeys[ks], PKEY_DISABLE_ACCESS);
        rpal_fetch_add_acq_rel(&p->d->key_windows[ks], -1);
    }
    /* The last window on pages left under key 0 by an unpin puts them back
     * under the closed key (zero_key_end, which looks again under the lock;
     * RELOCKING first: see there). */
    if (rpal_fetch_add_seq_cst(&p->windows, -1) == 1 && (rpal_capabilities() & RPAL_CAP_PKU) &&
        (rpal_load_seq_cst(&p->relocking) || rpal_load_seq_cst(&p->zero_key))) {
        if (!locked)
            pthread_mutex_lock(&p->d->lock);
        zero_key_end(p->d, p);
        if (!locked)
            pthread_mutex_unlock(&p->d->lock);
    }
    return 0;
}

int rpal_peer_access_begin(rpal_peer *p)
{
    return rpal__peer_access_begin_locked(p, 0);
}

int rpal_peer_access_end(rpal_peer *p)
{
    return rpal__peer_access_end_locked(p, 0);
}
