/* channel: single-producer rings between two peers, wait and wake, the call
 * and the reply.
 *
 * The caller's ring (requests) lives in the caller's slot and is written only
 * by the caller; the service's ring (replies) lives in the service's slot and
 * is written only by the service. Each side reads the other's ring through
 * its read-only mapping, and every index, length and pointer read there is
 * checked before use (principle 3). A waiter spins a bounded time, yields,
 * then sleeps on a futex; the other side wakes it only if it said it sleeps
 * (principle 6). See docs/channels.md.
 */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define TX_MAGIC 0x315854434c415052ull /* "RPALCTX1" */
#define RX_MAGIC 0x315852434c415052ull /* "RPALCRX1" */
#define MAX_DEPTH 1024u
#define MAX_CHANS 120 /* per receiver: futex_waitv takes 128 words */

struct ch_tx { /* in the caller's slot */
    uint64_t magic;
    uint32_t depth, pad0;
    _Alignas(64) _Atomic uint32_t tail;       /* requests published */
    _Alignas(64) _Atomic uint32_t caller_sleeps;
    _Alignas(64) struct ch_entry e[];
};

struct ch_rx { /* in the service's slot */
    uint64_t magic;
    uint32_t depth, pad0;
    /* Never the same twice in the service's life, 0 once the channel is
     * closed: a caller still waiting on a ring the service has freed (and
     * perhaps reused for another caller's ring) sees it change, instead of
     * taking someone else's reply for its own. */
    _Atomic uint64_t id;
    _Alignas(64) _Atomic uint32_t recv_sleeps;
    _Alignas(64) _Atomic uint32_t rtail;      /* replies published */
    /* Per request entry: the sequence number of the last request read from
     * it by pointer and answered, so that the caller frees its copy of a
     * large request as soon as it is answered (replies may come out of
     * order). */
    _Alignas(64) _Atomic uint32_t ack[MAX_DEPTH];
    _Alignas(64) struct ch_entry e[];
};

struct rpal_chan {
    rpal_peer *peer;
    struct ch_tx *tx;
    void *tx_raw;
    const struct ch_rx *rx;
    uint64_t rx_id; /* rx->id while the service keeps our ring */
    uint32_t depth, sent, done;
    void **staging; /* per entry: a copy of a large request */
    uint32_t *staging_seq; /* per entry: the sequence number of that request */
    struct deferred { void *p; uint32_t i, seq; } *deferred; /* older copies still owed a reply */
    size_t ndeferred, cdeferred;
    size_t nstaged; /* copies made since staging was last released */
    struct rpal_chan_opts o;
    int sock, pidfd;
    uint64_t sbase, ssize; /* the service's slot */
    uint64_t mybase, mysize; /* ours */
    int window; /* the window on the service this channel holds */
};

struct rx_chan {
    struct watch w;
    struct rpal_receiver *r;
    rpal_peer *peer;
    const struct ch_tx *tx;
    struct ch_rx *rx;
    void *rx_raw;
    void **bufs; /* per reply entry: our copy of a large reply */
    uint64_t *pend_ptr; /* requests read in place, not yet answered: where */
    uint32_t *pend_seq; /* and their sequence numbers */
    uint32_t npend;
    uint32_t depth, head, rtail;
    uint64_t cbase, csize; /* the caller's slot */
    int sock;
    _Atomic int dead;
    int windows; /* access windows this receiver holds open on the peer */
    int unanswered; /* messages handed out by rpal_receive, not yet replied */
    int ring_window; /* the receiver holds a pin on the caller */
};

struct rpal_receiver {
    rpal_service *s;
    struct rpal_chan_opts o;
    pthread_mutex_t lock; /* ch[] and n: the dispatcher adds, we remove */
    struct rx_chan *ch[MAX_CHANS];
    int n;
    _Atomic uint32_t doorbell; /* bumped when ch[] changes; private futex */
    unsigned next;
    /* This thread's copy of ch[], refreshed when the doorbell moves, so
     * that the fast path takes no lock. */
    struct rx_chan *snap[MAX_CHANS];
    int nsnap;
    uint32_t snap_bell;
    int snap_valid;
    struct rpal_receiver *next_in_service;
};

static void opts_fill(struct rpal_chan_opts *o, const struct rpal_chan_opts *in)
{
    struct rpal_chan_opts def = {0};
    *o = in ? *in : def;
    if (!o->spin_us)
        o->spin_us = 20;
    if (!o->depth)
        o->depth = 64;
}

static int opts_valid(const struct rpal_chan_opts *o)
{
    return !o || ((unsigned)o->wait <= RPAL_WAIT_SLEEP &&
                  (o->depth == 0 || (o->depth <= MAX_DEPTH && !(o->depth & (o->depth - 1)))));
}

void *ch_slot_alloc(size_t n, void **raw)
{
    char *p = rpal_calloc(1, n + 64);
    *raw = p;
    return p ? (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63) : NULL;
}

/* The waiting ladder shared by both sides. READY is polled; before sleeping
 * the waiter raises *SLEEPS, then checks READY once more (the other side
 * publishes, then reads *SLEEPS: one of the two sees the other, the seq_cst
 * fences pair), and sleeps on the futex word WORD while it still holds SEEN. */
struct waiter {
    const struct rpal_chan_opts *o;
    uint64_t deadline;  /* CLOCK_MONOTONIC ns, or UINT64_MAX */
    uint64_t spun_until;
    unsigned yields;
};

enum { W_SPIN, W_YIELD, W_SLEEP };

static int ladder_step(struct waiter *w, uint64_t now)
{
    if (w->o->wait == RPAL_WAIT_SLEEP)
        return W_SLEEP;
    if (w->o->same_cpu)
        return w->o->wait == RPAL_WAIT_POLL || w->yields++ < 200 ? W_YIELD : W_SLEEP;
    if (w->o->wait == RPAL_WAIT_POLL)
        return W_SPIN;
    if (!w->spun_until)
        w->spun_until = now + (uint64_t)w->o->spin_us * 1000;
    if (now < w->spun_until)
        return W_SPIN;
    return w->yields++ < 10 ? W_YIELD : W_SLEEP;
}

int ch_entry_fill(struct ch_entry *e, const void *data, size_t len, int in_place,
                      void **copy)
{
    if (len <= RPAL_INLINE_MAX) {
        if (len)
            memcpy(e->data, data, len);
        return E_INLINE;
    }
    if (!in_place) {
        void *c = rpal_malloc(len);
        if (!c)
            return -ENOMEM;
        memcpy(c, data, len);
        *copy = c;
        data = c;
    }
    e->ptr = (uintptr_t)data;
    return E_PTR;
}

int ch_entry_take(const struct ch_entry *slot, uint64_t base, uint64_t size,
                  struct ch_entry *e)
{
    *e = *slot; /* one read: the peer may rewrite the entry meanwhile */
    uint32_t kind = FLAG_OF(e->seqf);
    if (kind == E_PTR)
        return span_inside(e->ptr, e->len, base, size) ? (int)E_PTR : -EPROTO;
    return kind == E_INLINE && e->len <= RPAL_INLINE_MAX ? (int)E_INLINE : -EPROTO;
}

/* Take one spin or yield step of the ladder; 1 if it is time to sleep
 * instead (the caller does that, since what it sleeps on differs). */
static int ladder_pause(struct waiter *w, uint64_t now, int *slow)
{
    int step = ladder_step(w, now);
    if (slow)
        *slow = step != W_SPIN;
    if (step == W_SPIN)
        cpu_relax();
    else if (step == W_YIELD)
        sched_yield();
    return step == W_SLEEP;
}

/* ---- the caller's side ---- */

int rpal_chan_open(rpal_peer *peer, const struct rpal_chan_opts *opts,
                   int timeout_ms, rpal_chan **out)
{
    if (!peer || !out || !opts_valid(opts))
        return -EINVAL;
    rpal_domain *d = peer->d;
    int err = dom_check(d);
    if (err < 0)
        return err;
    if (peer->gone)
        return peer->reason ? peer->reason : -ESHUTDOWN;
    rpal_chan *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    opts_fill(&c->o, opts);
    c->peer = peer;
    c->depth = c->o.depth;
    c->sock = c->pidfd = -1;
    c->sbase = peer->base;
    c->ssize = peer->size;
    c->mybase = dom_slot_addr(d, d->slot);
    c->mysize = d->slot_size;
    c->staging = calloc(c->depth, sizeof *c->staging);
    c->staging_seq = calloc(c->depth, sizeof *c->staging_seq);
    c->tx = ch_slot_alloc(sizeof *c->tx + c->depth * sizeof(struct ch_entry), &c->tx_raw);
    if (!c->staging || !c->staging_seq || !c->tx) {
        err = -ENOMEM;
        goto fail;
    }
    c->tx->magic = TX_MAGIC;
    c->tx->depth = c->depth;

    char file[80];
    snprintf(file, sizeof file, "svc.%.64s", peer->info.service);
    c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->sock < 0) {
        err = -errno;
        goto fail;
    }
    /* Not connect() by name: it would follow a link planted there. */
    if ((err = svc_connect(d->dirfd, file, c->sock)) < 0) {
        err = err == -ECONNREFUSED ? -ESRCH : err;
        goto fail;
    }
    struct hs_req req = {.magic = HS_MAGIC, .version = HS_VERSION, .slot = d->slot,
                         .slot_size = d->slot_size, .kind = HS_KIND_CHAN,
                         .depth = c->depth, .addr = (uint64_t)(uintptr_t)c->tx};
    snprintf(req.service, sizeof req.service, "%.64s", peer->info.service);
    if ((err = svc_send_with_fd(c->sock, &req, sizeof req, -1)) < 0) {
        /* Closed before we sent (the service died or unregistered right
         * after accepting): as a close without an answer below, not a
         * raw -EPIPE (`rpal chaos` saw one). */
        err = err == -EPIPE || err == -ECONNRESET ? -ESHUTDOWN : err;
        goto fail;
    }
    struct pollfd pf = {c->sock, POLLIN, 0};
    int r;
    do
        r = poll(&pf, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    struct hs_rep rep;
    int fd;
    if (r == 0) {
        err = -ETIMEDOUT;
        goto fail;
    }
    if ((err = svc_recv_with_fd(c->sock, &rep, sizeof rep, &fd)) < 0) {
        if (fd >= 0)
            close(fd);
        err = err == -ECONNRESET ? -ESHUTDOWN : err;
        goto fail;
    }
    if (fd >= 0)
        close(fd);
    if (rep.magic != HS_MAGIC || rep.version != HS_VERSION) {
        err = -EPROTO; /* not an rpal service of our version */
        goto fail;
    }
    if (rep.status != 0) {
        err = rep.status == -ENOTCONN ? -EAGAIN : rep.status < 0 && rep.status > -4096
                                                      ? rep.status : -EPROTO;
        goto fail;
    }
    /* The service's ring must lie inside its slot, aligned, with our depth. */
    uint64_t rsize = sizeof(struct ch_rx) + c->depth * sizeof(struct ch_entry);
    if (rep.addr % 64 || !span_inside(rep.addr, rsize, c->sbase, c->ssize)) {
        err = -EPROTO;
        goto fail;
    }
    c->rx = (const struct ch_rx *)(uintptr_t)rep.addr;
    /* The service's ring is read on every call, from whichever thread
     * calls: the service stays open to every thread (a pin) for the
     * channel's life. */
    if ((err = dom_peer_pin(peer)) < 0)
        goto fail;
    c->window = 1;
    c->rx_id = rpal_load_relaxed(&c->rx->id);
    if (!(c->rx->magic == RX_MAGIC && c->rx->depth == c->depth) || !c->rx_id) {
        err = -EPROTO;
        goto fail;
    }
    c->pidfd = (int)syscall(SYS_pidfd_open, peer->info.pid, 0);
    if (c->pidfd < 0) {
        err = -ESRCH;
        goto fail;
    }
    rpal_fetch_add_acq_rel(&peer->nchans, 1);
    *out = c;
    return 0;
fail:
    if (c->window)
        dom_peer_unpin(peer, 0);
    if (c->sock >= 0)
        close(c->sock);
    if (c->tx_raw)
        rpal_free(c->tx_raw);
    free(c->staging);
    free(c->staging_seq);
    free(c);
    return err;
}

static void staging_release(rpal_chan *c)
{
    if (!c->nstaged && !c->ndeferred)
        return; /* the common case: no large request was copied */
    c->nstaged = 0;
    for (uint32_t k = 0; k < c->depth; k++)
        if (c->staging[k]) {
            rpal_free(c->staging[k]);
            c->staging[k] = NULL;
        }
    for (size_t k = 0; k < c->ndeferred; k++)
        rpal_free(c->deferred[k].p);
    c->ndeferred = 0;
}

/* Free the kept copies whose requests the service has answered since. */
static void staging_reclaim(rpal_chan *c)
{
    size_t k = 0;
    while (k < c->ndeferred) {
        struct deferred *x = &c->deferred[k];
        if (rpal_load_acquire(&c->rx->ack[x->i]) == x->seq) { /* pairs with rpal_reply */
            rpal_free(x->p);
            *x = c->deferred[--c->ndeferred];
        } else {
            k++;
        }
    }
}

/* Entry I is reused while its old copy may still be read: keep that copy
 * until it is answered, or nothing is outstanding. */
static int staging_defer(rpal_chan *c, uint32_t i)
{
    if (c->ndeferred == c->cdeferred) {
        size_t n = c->cdeferred ? c->cdeferred * 2 : 16;
        struct deferred *d = realloc(c->deferred, n * sizeof *d);
        if (!d)
            return -ENOMEM;
        c->deferred = d;
        c->cdeferred = n;
    }
    c->deferred[c->ndeferred++] = (struct deferred){c->staging[i], i, c->staging_seq[i]};
    c->staging[i] = NULL;
    return 0;
}

int rpal_chan_close(rpal_chan *c)
{
    if (!c)
        return -EINVAL;
    int err = dom_check(c->peer->d);
    if (err < 0)
        return err; /* a forked child: the channel is its parent's */
    /* The service sees EOF and drops its side; requests not yet answered
     * are abandoned (their replies would have nowhere to go). */
    shutdown(c->sock, SHUT_RDWR);
    close(c->sock);
    close(c->pidfd);
    staging_release(c);
    free(c->deferred);
    free(c->staging_seq);
    dom_peer_unpin(c->peer, 0); /* the pin chan_open took */
    svc_peer_put(c->peer, 0);
    rpal_free(c->tx_raw);
    free(c->staging);
    free(c);
    return 0;
}

/* Is the other end still there? -ESRCH dead, -ESHUTDOWN closed, 0 yes. */
static int chan_alive(int sock, int pidfd)
{
    struct pollfd pf[2] = {{pidfd, POLLIN, 0}, {sock, POLLIN | POLLRDHUP, 0}};
    if (poll(pf, 2, 0) <= 0)
        return 0;
    if (pf[0].revents)
        return -ESRCH;
    return (pf[1].revents & (POLLHUP | POLLRDHUP | POLLERR)) ? -ESHUTDOWN : 0;
}

int rpal_send(rpal_chan *c, const void *req, size_t len, uint64_t tag)
{
    if (!c || (!req && len))
        return -EINVAL;
    if (dom_check(c->peer->d) < 0)
        return -ECHILD; /* a forked child: our slot is not mapped here */
    if (c->sent - c->done >= c->depth)
        return -EAGAIN;
    uint32_t i = c->sent & (c->depth - 1);
    struct ch_entry *e = &c->tx->e[i];
    int err;
    e->tag = tag;
    e->len = (uint32_t)len;
    if (len > UINT32_MAX)
        return -EMSGSIZE;
    if (c->ndeferred)
        staging_reclaim(c);
    /* pairs with the release store of ack[] in rpal_reply */
    if (c->staging[i] && rpal_load_acquire(&c->rx->ack[i]) == c->staging_seq[i]) {
        rpal_free(c->staging[i]); /* answered: the service is done with it */
        c->staging[i] = NULL;
    }
    if (c->staging[i] && (err = staging_defer(c, i)) < 0)
        return err;
    /* Zero copy when the request already lies in our slot: the service
     * reads it in place. */
    int kind = ch_entry_fill(e, req, len, span_inside((uintptr_t)req, len, c->mybase, c->mysize),
                          &c->staging[i]);
    if (kind < 0)
        return kind;
    if (c->staging[i]) {
        c->nstaged++;
        c->staging_seq[i] = SEQ_WANT(c->sent + 1);
    }
    /* The entry's seqf last: pairs with the receiver's acquire of it. */
    __atomic_store_n(&e->seqf, SEQF(c->sent + 1, (uint32_t)kind), __ATOMIC_RELEASE);
    c->sent++;
    /* The index is for a sleeping receiver; then see whether it sleeps: the
     * seq_cst fence pairs with the one the receiver issues between raising
     * recv_sleeps and re-reading. */
    rpal_store_release(&c->tx->tail, c->sent);
    rpal_fence_seq_cst();
    if (rpal_load_relaxed(&c->rx->recv_sleeps))
        prim_futex_wake(&c->tx->tail, 1, 1);
    return 0;
}

int rpal_complete(rpal_chan *c, uint64_t *tag, void *reply, size_t reply_max,
                  size_t *reply_len, int timeout_ms)
{
    if (!c || c->sent == c->done)
        return -EINVAL;
    if (dom_check(c->peer->d) < 0)
        return -ECHILD;
    struct waiter w = {&c->o, timeout_ms < 0 ? UINT64_MAX
                                             : prim_now_ns() + (uint64_t)timeout_ms * 1000000,
                       0, 0};
    unsigned spins = 0;
    int slow = 0; /* the last step yielded or slept: cheap to check liveness */
    const struct ch_entry *slot = &c->rx->e[c->done & (c->depth - 1)];
    uint32_t want = SEQ_WANT(c->done + 1);
    for (;;) {
        /* pairs with the release store of seqf in rpal_reply */
        if (SEQ_OF(__atomic_load_n(&slot->seqf, __ATOMIC_ACQUIRE)) == want)
            break;
        if ((++spins & 1023) == 0 || slow) {
            int err = chan_alive(c->sock, c->pidfd);
            if (err)
                return err;
        }
        uint64_t now = (spins & 63) == 0 || w.o->wait != RPAL_WAIT_POLL ? prim_now_ns() : 0;
        if (now && now >= w.deadline)
            return -ETIMEDOUT;
        if (ladder_pause(&w, now, &slow)) {
            uint32_t t = rpal_load_relaxed(&c->rx->rtail);
            rpal_store_relaxed(&c->tx->caller_sleeps, 1);
            rpal_fence_seq_cst(); /* pairs with the fence in rpal_reply */
            if (SEQ_OF(__atomic_load_n(&slot->seqf, __ATOMIC_RELAXED)) != want) {
                int64_t slice = 20000000; /* wake to check liveness now and then */
                if (w.deadline != UINT64_MAX && (int64_t)(w.deadline - now) < slice)
                    slice = (int64_t)(w.deadline - now);
                prim_futex_wait(&c->rx->rtail, t, 1, slice);
            }
            rpal_store_relaxed(&c->tx->caller_sleeps, 0);
        }
    }
    struct ch_entry e;
    int kind = ch_entry_take(slot, c->sbase, c->ssize, &e);
    c->done++;
    /* Copies of large requests are freed only when nothing is outstanding:
     * replies may come in another order than the requests, and the service
     * reads a request in place until it answers it. */
    if (c->sent == c->done)
        staging_release(c);
    int err = kind < 0 ? kind : 0;
    const void *src = kind == E_PTR ? (const void *)(uintptr_t)e.ptr : e.data;
    if (tag)
        *tag = e.tag;
    if (reply_len)
        *reply_len = e.len;
    if (err == 0 && e.len > reply_max)
        err = -EMSGSIZE;
    if (err == 0 && e.len && kind == E_PTR) {
        rpal_peer_access_begin(c->peer);
        memcpy(reply, src, e.len);
        rpal_peer_access_end(c->peer);
    } else if (err == 0 && e.len) {
        memcpy(reply, src, e.len); /* from our local copy of the entry */
    }
    /* The reply is ours only if the ring still is: rxc_free clears the id
     * before it frees the ring and the copies entries point at, and a ring
     * made there since has another. The fence keeps the loads of the entry
     * and of the copy before the check (no instruction on x86). */
    rpal_fence_acquire();
    if (rpal_load_relaxed(&c->rx->id) != c->rx_id)
        err = -ESHUTDOWN;
    return err;
}

int rpal_call(rpal_chan *c, const void *req, size_t len, void *reply,
              size_t reply_max, size_t *reply_len, int timeout_ms)
{
    if (!c)
        return -EINVAL;
    if (c->sent != c->done)
        return -EBUSY; /* asynchronous sends are outstanding */
    int err = rpal_send(c, req, len, 0);
    return err < 0 ? err : rpal_complete(c, NULL, reply, reply_max, reply_len, timeout_ms);
}

/* ---- the service's side ---- */

/* Close X and free what it holds. The dispatcher may have fetched an event
 * for X's connection just before (the connection turned readable when its
 * caller closed it or we poisoned it) and be waiting for d->lock to hand
 * it to rxc_hook: X itself is freed once that dispatch is over. Every
 * caller holds d->lock. */
static void rxc_free(rpal_domain *d, struct rx_chan *x)
{
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, x->sock, NULL); /* ENOENT if rxc_hook did */
    close(x->sock); /* the caller sees its channel closed */
    for (uint32_t i = 0; i < x->depth; i++)
        if (x->bufs[i])
            rpal_free(x->bufs[i]);
    while (x->windows-- > 0)
        dom_access_end(x->peer, 1);
    if (x->ring_window)
        dom_peer_unpin(x->peer, 1);
    svc_peer_put(x->peer, 1);
    /* Before the ring can be reused: pairs with the check in rpal_complete
     * (the reuse's stores come after this one). */
    rpal_store_release(&x->rx->id, 0);
    rpal_free(x->rx_raw);
    free(x->bufs);
    free(x->pend_ptr);
    free(x->pend_seq);
    dom_watch_retire(d, &x->w); /* frees X */
}

/* The dispatcher saw the channel's connection close. */
static void rxc_hook(rpal_domain *d, struct watch *w, uint32_t events)
{
    struct rx_chan *x = w->obj;
    char b[16];
    if (!(events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) && recv(x->sock, b, sizeof b, MSG_DONTWAIT) != 0)
        return;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, x->sock, NULL);
    rpal_store_release(&x->dead, 1);
    rpal_fetch_add_relaxed(&x->r->doorbell, 1);
    prim_futex_wake(&x->r->doorbell, 1, 0);
}

int ch_tx_check(const struct hs_req *req, uint64_t base, uint64_t size)
{
    uint32_t depth = req->depth;
    if (!depth || depth > MAX_DEPTH || (depth & (depth - 1)))
        return -EINVAL;
    uint64_t tsize = sizeof(struct ch_tx) + depth * sizeof(struct ch_entry);
    if (req->addr % 64 || !span_inside(req->addr, tsize, base, size))
        return -EINVAL;
    const struct ch_tx *tx = (const struct ch_tx *)(uintptr_t)req->addr;
    return tx->magic == TX_MAGIC && tx->depth == depth ? 0 : -EINVAL;
}

static int chan_accept(rpal_service *s, rpal_peer *p, int sock,
                       const struct hs_req *req, uint64_t *addr)
{
    rpal_domain *d = s->d;
    uint32_t depth = req->depth;
    dom_access_begin(p, 1); /* d->lock is held (svc_handle) */
    int err = ch_tx_check(req, p->base, p->size);
    dom_access_end(p, 1);
    if (err < 0)
        return err;
    const struct ch_tx *tx = (const struct ch_tx *)(uintptr_t)req->addr;
    /* Round robin over the receivers that have room. */
    struct rpal_receiver *r = NULL;
    int nrecv = 0;
    for (struct rpal_receiver *q = s->receivers; q; q = q->next_in_service)
        nrecv++;
    for (int k = 0; k < nrecv && !r; k++) {
        struct rpal_receiver *q = s->receivers;
        for (unsigned j = (s->rr + (unsigned)k) % (unsigned)nrecv; j; j--)
            q = q->next_in_service;
        if (q->n < MAX_CHANS)
            r = q;
    }
    if (!r)
        return nrecv ? -ENOSPC : -ENOTCONN;
    s->rr++;
    struct rx_chan *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    x->bufs = calloc(depth, sizeof *x->bufs);
    x->pend_ptr = calloc(depth, sizeof *x->pend_ptr);
    x->pend_seq = calloc(depth, sizeof *x->pend_seq);
    x->rx = ch_slot_alloc(sizeof *x->rx + depth * sizeof(struct ch_entry), &x->rx_raw);
    if (!x->bufs || !x->pend_ptr || !x->pend_seq || !x->rx) {
        free(x->bufs);
        free(x->pend_ptr);
        free(x->pend_seq);
        if (x->rx_raw)
            rpal_free(x->rx_raw);
        free(x);
        return -ENOMEM;
    }
    static _Atomic uint64_t rx_ids;
    x->rx->magic = RX_MAGIC;
    x->rx->depth = depth;
    rpal_store_relaxed(&x->rx->id, rpal_fetch_add_relaxed(&rx_ids, 1) + 1);
    x->r = r;
    x->peer = p;
    x->tx = tx;
    x->depth = depth;
    x->cbase = p->base;
    x->csize = p->size;
    x->sock = sock;
    x->w = (struct watch){.kind = W_HOOK, .obj = x, .hook = rxc_hook};
    struct epoll_event ee = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = &x->w};
    if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, sock, &ee) < 0) {
        err = -errno;
        free(x->bufs);
        free(x->pend_ptr);
        free(x->pend_seq);
        rpal_free(x->rx_raw);
        free(x);
        return err;
    }
    rpal_fetch_add_acq_rel(&p->nchans, 1);
    pthread_mutex_lock(&r->lock);
    r->ch[r->n++] = x;
    pthread_mutex_unlock(&r->lock);
    rpal_fetch_add_relaxed(&r->doorbell, 1);
    prim_futex_wake(&r->doorbell, 1, 0);
    *addr = (uint64_t)(uintptr_t)x->rx;
    return 0;
}

int rpal_receiver_create(rpal_service *s, const struct rpal_chan_opts *opts,
                         rpal_receiver **out)
{
    if (!s || !out || !opts_valid(opts))
        return -EINVAL;
    int err = dom_check(s->d);
    if (err < 0)
        return err;
    rpal_receiver *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->s = s;
    opts_fill(&r->o, opts);
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_lock(&s->d->lock);
    r->next_in_service = s->receivers;
    s->receivers = r;
    s->chan_accept = chan_accept;
    pthread_mutex_unlock(&s->d->lock);
    *out = r;
    return 0;
}

int rpal_receiver_destroy(rpal_receiver *r)
{
    if (!r)
        return -EINVAL;
    int err = dom_check(r->s->d);
    if (err < 0)
        return err; /* a forked child: the receiver is its parent's */
    rpal_domain *d = r->s->d;
    pthread_mutex_lock(&d->lock);
    rpal_receiver **pp = &r->s->receivers;
    while (*pp && *pp != r)
        pp = &(*pp)->next_in_service;
    if (*pp)
        *pp = r->next_in_service;
    if (!r->s->receivers)
        r->s->chan_accept = NULL;
    for (int i = 0; i < r->n; i++)
        rxc_free(d, r->ch[i]);
    pthread_mutex_unlock(&d->lock);
    pthread_mutex_destroy(&r->lock);
    free(r);
    return 0;
}

/* Drop channels the dispatcher marked dead. */
static void reap(rpal_receiver *r)
{
    pthread_mutex_lock(&r->s->d->lock);
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->n;) {
        struct rx_chan *x = r->ch[i];
        /* A dead channel with an unanswered message stays until the reply
         * (which then gets -ESHUTDOWN): the message points at it. */
        if (rpal_load_acquire(&x->dead) && x->unanswered == 0) {
            r->ch[i] = r->ch[--r->n];
            rxc_free(r->s->d, x);
        } else {
            i++;
        }
    }
    r->snap_valid = 0;
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_unlock(&r->s->d->lock);
}

/* A channel whose caller broke the ring's rules is closed. */
static void poison(struct rx_chan *x)
{
    shutdown(x->sock, SHUT_RDWR);
    rpal_store_release(&x->dead, 1);
}

int rpal_receive(rpal_receiver *r, struct rpal_msg *m, int timeout_ms)
{
    if (!r || !m)
        return -EINVAL;
    if (dom_check(r->s->d) < 0)
        return -ECHILD;
    struct waiter w = {&r->o, timeout_ms < 0 ? UINT64_MAX
                                             : prim_now_ns() + (uint64_t)timeout_ms * 1000000,
                       0, 0};
    uint32_t bell = rpal_load_acquire(&r->doorbell);
    int reaped = 0;
    for (unsigned spins = 0;; spins++) {
        /* Only this thread removes channels, so ch[] entries stay valid
         * while we scan; the dispatcher only appends (under r->lock). */
        uint32_t now_bell = rpal_load_acquire(&r->doorbell); /* pairs with chan_accept */
        if (!r->snap_valid || now_bell != r->snap_bell) {
            pthread_mutex_lock(&r->lock);
            r->nsnap = r->n;
            memcpy(r->snap, r->ch, (size_t)r->n * sizeof *r->snap);
            pthread_mutex_unlock(&r->lock);
            r->snap_bell = now_bell;
            r->snap_valid = 1;
            /* The caller's ring is read on every scan: each channel's
             * caller stays open (a pin) for as long as this receiver
             * serves it. */
            for (int k = 0; k < r->nsnap; k++) {
                struct rx_chan *x = r->snap[k];
                if (!x->ring_window && !rpal_load_relaxed(&x->dead)) {
                    if (dom_peer_pin(x->peer) == 0)
                        x->ring_window = 1;
                    else
                        poison(x); /* it has gone */
                }
            }
        }
        int n = r->nsnap;
        struct rx_chan **chs = r->snap;
        /* Round robin from where the last message came from (no division:
         * this loop is the poll path). */
        unsigned idx = r->next < (unsigned)n ? r->next : 0;
        for (int k = 0; k < n; k++, idx = idx + 1 == (unsigned)n ? 0 : idx + 1) {
            struct rx_chan *x = chs[idx];
            if (rpal_load_relaxed(&x->dead)) {
                reaped = 1;
                continue;
            }
            const struct ch_entry *slot = &x->tx->e[x->head & (x->depth - 1)];
            /* pairs with the release store of seqf in rpal_send */
            if (SEQ_OF(__atomic_load_n(&slot->seqf, __ATOMIC_ACQUIRE)) != SEQ_WANT(x->head + 1))
                continue;
            struct ch_entry e;
            int kind = ch_entry_take(slot, x->cbase, x->csize, &e);
            if (kind < 0) {
                poison(x);
                reaped = 1;
                continue;
            }
            const void *data = kind == E_PTR ? (const void *)(uintptr_t)e.ptr : e.data;
            /* The entry is copied. The caller reuses it only once it has
             * the reply of a later request, which we give after this. */
            x->head++;
            r->next = idx + 1 == (unsigned)n ? 0 : idx + 1;
            if (kind == E_PTR) {
                /* Read in place, inside a window until the reply, which
                 * tells the caller (ack) that it may free its copy. */
                rpal_peer_access_begin(x->peer);
                x->windows++;
                if (x->npend < x->depth) {
                    x->pend_ptr[x->npend] = e.ptr;
                    x->pend_seq[x->npend++] = SEQ_WANT(x->head);
                }
            }
            x->unanswered++;
            m->len = e.len;
            m->peer = x->peer;
            m->internal[0] = x;
            m->internal[1] = (void *)(uintptr_t)e.tag;
            if (kind == E_INLINE) {
                /* Inline data is copied out of the peer's ring into the
                 * message: the caller may overwrite the entry from now on. */
                memcpy(m->inline_copy, e.data, e.len);
                m->data = m->inline_copy;
            } else {
                m->data = data;
            }
            return 0;
        }
        if (reaped) {
            reap(r);
            reaped = 0;
            continue;
        }
        uint64_t now = (spins & 63) == 0 || w.o->wait != RPAL_WAIT_POLL ? prim_now_ns() : 0;
        if (now && now >= w.deadline)
            return -ETIMEDOUT;
        if (ladder_pause(&w, now, NULL)) {
            struct futex_waitv fw[MAX_CHANS + 1];
            unsigned nw = 0;
            for (int k = 0; k < n; k++)
                rpal_store_relaxed(&chs[k]->rx->recv_sleeps, 1);
            rpal_fence_seq_cst(); /* pairs with the fence in rpal_send */
            int ready = 0;
            for (int k = 0; k < n; k++) {
                uint32_t t = rpal_load_relaxed(&chs[k]->tx->tail);
                /* An honest tail is at most DEPTH ahead of our head, and
                 * may be one behind: rpal_send publishes the entry (which
                 * we may have taken already) before it stores the tail.
                 * Sleeping on that tail is safe: its store comes before the
                 * caller's look at recv_sleeps. */
                int32_t ahead = (int32_t)(t - chs[k]->head);
                if (ahead < -1 || ahead > (int32_t)chs[k]->depth) {
                    poison(chs[k]); /* an index no honest caller writes */
                    ready = 1;
                } else if (ahead > 0) {
                    ready = 1;
                }
                fw[nw++] = (struct futex_waitv){.val = t,
                                                .uaddr = (uintptr_t)&chs[k]->tx->tail,
                                                .flags = FUTEX_32};
            }
            fw[nw++] = (struct futex_waitv){.val = bell, .uaddr = (uintptr_t)&r->doorbell,
                                            .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG};
            if (!ready && rpal_load_acquire(&r->doorbell) == bell) {
                int64_t slice = 100000000;
                if (w.deadline != UINT64_MAX && (int64_t)(w.deadline - now) < slice)
                    slice = (int64_t)(w.deadline - now);
                /* Where futex_waitv is missing (Linux before 5.16, or
                 * valgrind 3.19), wait on the doorbell alone and look at
                 * the rings again every millisecond. */
                if (prim_futex_waitv(fw, nw, slice) == -ENOSYS)
                    prim_futex_wait(&r->doorbell, bell, 0, slice < 1000000 ? slice : 1000000);
            }
            for (int k = 0; k < n; k++)
                rpal_store_relaxed(&chs[k]->rx->recv_sleeps, 0);
            bell = rpal_load_acquire(&r->doorbell);
            w.spun_until = 0;
            w.yields = 0;
        }
    }
}

int rpal_reply(rpal_receiver *r, const struct rpal_msg *m, const void *data, size_t len)
{
    if (!r || !m || !m->internal[0] || (!data && len) || len > UINT32_MAX)
        return -EINVAL;
    if (dom_check(r->s->d) < 0)
        return -ECHILD;
    struct rx_chan *x = m->internal[0];
    if (x->unanswered <= 0)
        return -EINVAL; /* answered already */
    x->unanswered--;
    if (m->data != m->inline_copy && x->windows > 0) {
        rpal_peer_access_end(x->peer);
        x->windows--;
    }
    for (uint32_t k = 0; m->data != m->inline_copy && k < x->npend; k++)
        if (x->pend_ptr[k] == (uintptr_t)m->data) {
            uint32_t seq = x->pend_seq[k];
            /* pairs with the caller's acquire before it frees its copy */
            rpal_store_release(&x->rx->ack[(seq - 1) & (x->depth - 1)], seq);
            x->pend_ptr[k] = x->pend_ptr[--x->npend];
            x->pend_seq[k] = x->pend_seq[x->npend];
            break;
        }
    if (rpal_load_relaxed(&x->dead))
        return -ESHUTDOWN;
    /* The entry's previous reply was taken: the caller had at most DEPTH
     * requests outstanding, and this reply answers one sent after it took
     * that one (a caller that breaks this only garbles its own replies). */
    uint32_t i = x->rtail & (x->depth - 1);
    if (x->bufs[i]) {
        rpal_free(x->bufs[i]);
        x->bufs[i] = NULL;
    }
    struct ch_entry *e = &x->rx->e[i];
    e->tag = (uint64_t)(uintptr_t)m->internal[1];
    e->len = (uint32_t)len;
    int kind = ch_entry_fill(e, data, len, 0, &x->bufs[i]);
    if (kind < 0)
        return kind;
    /* seqf last: pairs with the caller's acquire of it in rpal_complete */
    __atomic_store_n(&e->seqf, SEQF(x->rtail + 1, (uint32_t)kind), __ATOMIC_RELEASE);
    x->rtail++;
    rpal_store_release(&x->rx->rtail, x->rtail); /* for a sleeping caller */
    rpal_fence_seq_cst(); /* pairs with the caller's fence before it sleeps */
    if (rpal_load_relaxed(&x->tx->caller_sleeps))
        prim_futex_wake(&x->rx->rtail, 1, 1);
    return 0;
}
