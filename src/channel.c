/* channel: single-producer rings between two peers, wait and wake, the call
 * and the reply.
 *
 * The caller's ring (requests) lives in the caller's slot and is written only
 * by the caller; the service's ring (replies) lives in the service's slot and
 * is written only by the service. Each side reads the other's ring through
 * its read-only mapping, and every index, length and pointer read there is
 * checked before use (principle 3: nothing read from a peer is trusted). A
 * waiter spins a bounded time, yields, then sleeps on a futex; the other
 * side wakes it only if it said it sleeps (principle 6: wait smart, never
 * costing more than the socket it replaces). See docs/channels.md.
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
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define TX_MAGIC 0x325854434c415052ull /* "RPALCTX2" */
#define RX_MAGIC 0x325852434c415052ull /* "RPALCRX2" */
#define MAX_DEPTH 1024u
#define MAX_CHANS 120 /* per receiver: futex_waitv takes 128 words */
#define PREFETCH_AHEAD 4 /* entries: see rpal_send */

struct ch_tx { /* in the caller's slot */
    uint64_t magic;
    uint32_t depth, pad0;
    _Alignas(64) _Atomic uint32_t tail;       /* requests published */
    _Alignas(64) struct wt_pub pub;           /* the caller's: asleep? where? */
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
    _Alignas(64) struct wt_pub pub;           /* the receiver's: asleep? where? */
    _Alignas(64) _Atomic uint32_t rtail;      /* replies published */
    /* Per request entry: the sequence number of the last request read from
     * it by pointer and answered, so that the caller frees its copy of a
     * large request as soon as it is answered (replies may come out of
     * order). */
    _Alignas(64) _Atomic uint32_t ack[MAX_DEPTH];
    _Alignas(64) struct ch_entry e[];
};

/* Where the other side's index stood when last read (see prefetch_ahead). */
struct ahead {
    uint32_t at;    /* the other side's index as last read */
    uint32_t flows; /* that look found entries well ahead: a stream */
};

struct rpal_chan {
    rpal_peer *peer;
    struct ch_tx *tx;
    void *tx_raw;
    const struct ch_rx *rx;
    uint64_t rx_id; /* rx->id while the service keeps our ring */
    uint32_t depth, sent, done;
    struct ahead seen_rtail; /* the service's rtail: replies known written */
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
    int bell;   /* the receiver's eventfd, for when it serves (same user), or -1 */
    struct wt_learn learn;
    struct wt_stats st;
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
    struct ahead seen_tail; /* the caller's tail: entries known published */
    uint64_t cbase, csize; /* the caller's slot */
    int sock;
    _Atomic int dead;
    int windows; /* access windows this receiver holds open on the peer */
    int unanswered; /* messages handed out by rpal_receive, not yet replied */
    int ring_window; /* the receiver holds a pin on the caller */
    struct wt_stats st;
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
    _Atomic uint32_t cpu; /* 1 + our CPU as published in every channel's ring */
    unsigned nosys; /* rpal_serve: requests since the domain's set was looked at */
    /* rpal_serve sleeps in the domain's epoll set: callers of our user wake
     * it by writing this eventfd (handed to them when their channel opens),
     * in the set edge-triggered (BELLW, from the first rpal_serve on). */
    int bell;
    struct watch *bellw;
    struct wt_learn learn;
    struct rpal_receiver *next_in_service;
};

static void opts_fill(struct rpal_chan_opts *o, const struct rpal_chan_opts *in)
{
    struct rpal_chan_opts def = {0};
    *o = in ? *in : def;
    if (!o->depth)
        o->depth = 64;
}

static int opts_valid(const struct rpal_chan_opts *o)
{
    return !o || ((unsigned)o->wait <= RPAL_WAIT_SLEEP &&
                  (o->depth == 0 || (o->depth <= MAX_DEPTH && !(o->depth & (o->depth - 1)))));
}

void *rpal__ch_slot_alloc(size_t n, void **raw)
{
    char *p = rpal_calloc(1, n + 64);
    *raw = p;
    return p ? (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63) : NULL;
}

/* Wake the other side, which said it sleeps on the futex WORD (one of our
 * indices); ME is our published line, where we stamp when we published so
 * that it learns how long it really waited. SAME: it runs on our CPU, so
 * the system call includes the switch to it and says nothing of a
 * wake-up's cost. */
static void wake(struct wt_pub *me, const _Atomic uint32_t *word, struct wt_stats *st, int same)
{
    uint64_t t = rpal__prim_now_ns();
    rpal_store_release(&me->woke_ns, t); /* pairs with the sleeper's acquire after it wakes */
    rpal__prim_futex_wake(word, 1, 1);
    if (!same)
        rpal__wt_note_wake(t);
    rpal__wt_woke();
    st->wakes++;
}

/* Reading a stream of entries the other side wrote: each is a transfer
 * from its cache, and taken one by one they would come one after the
 * other. Ask for a few ahead, but only those known to be published (their
 * writer would have to take a line we hold back first): SEEN is the other
 * side's index as last read, refreshed (one more transfer) only once we
 * have caught up with it. An index from the other side is only a hint
 * here: whatever it says, the line asked for lies inside the ring. */
static inline void prefetch_ahead(struct ahead *a, const _Atomic uint32_t *their_tail,
                                  uint32_t next, const struct ch_entry *ring, uint32_t depth)
{
    /* In lockstep (a call at a time) nothing is ever ahead: look at the
     * index only every 64th entry then, not at every one (it is a line the
     * other side writes at every message, and would move at every call).
     * In a stream, look again as soon as we catch up. */
    if ((int32_t)(a->at - next) <= 0 && (a->flows || (next & 63) == 0)) {
        a->at = rpal_load_relaxed(their_tail);
        a->flows = (int32_t)(a->at - next) > PREFETCH_AHEAD;
    }
    if ((int32_t)(a->at - next) > PREFETCH_AHEAD)
        __builtin_prefetch(&ring[(next + PREFETCH_AHEAD) & (depth - 1)], 0, 3);
}

/* Publish CPU (1 + our CPU) in the line PUB if it moved: written only on a
 * change, so that the line stays in both sides' caches. */
static void publish_cpu(struct wt_pub *pub, uint32_t cpu)
{
    if (cpu && rpal_load_relaxed(&pub->cpu) != cpu)
        rpal_store_relaxed(&pub->cpu, cpu);
}

int rpal__ch_entry_fill(struct ch_entry *e, const void *data, size_t len, int in_place,
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

int rpal__ch_entry_take(const struct ch_entry *slot, uint64_t base, uint64_t size,
                  struct ch_entry *e)
{
    *e = *slot; /* one read: the peer may rewrite the entry meanwhile */
    uint32_t kind = FLAG_OF(e->seqf);
    if (kind == E_PTR)
        return span_inside(e->ptr, e->len, base, size) ? (int)E_PTR : -EPROTO;
    return kind == E_INLINE && e->len <= RPAL_INLINE_MAX ? (int)E_INLINE : -EPROTO;
}

/* ---- the caller's side ---- */

static void chan_free(rpal_chan *c);

/* A channel to PEER with options O, its request ring allocated in our slot
 * (D's): NULL if memory ran out. */
static rpal_chan *chan_new(rpal_peer *peer, rpal_domain *d, const struct rpal_chan_opts *opts)
{
    rpal_chan *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    opts_fill(&c->o, opts);
    c->peer = peer;
    c->depth = c->o.depth;
    c->sock = c->pidfd = c->bell = -1;
    c->sbase = peer->base;
    c->ssize = peer->size;
    c->mybase = rpal__dom_slot_addr(d, d->slot);
    c->mysize = d->slot_size;
    c->staging = calloc(c->depth, sizeof *c->staging);
    c->staging_seq = calloc(c->depth, sizeof *c->staging_seq);
    c->tx = rpal__ch_slot_alloc(sizeof *c->tx + c->depth * sizeof(struct ch_entry), &c->tx_raw);
    if (!c->staging || !c->staging_seq || !c->tx) {
        chan_free(c);
        return NULL;
    }
    c->tx->magic = TX_MAGIC;
    c->tx->depth = c->depth;
    return c;
}

/* Undo chan_new and whatever rpal_chan_open did since. */
static void chan_free(rpal_chan *c)
{
    if (c->window)
        rpal__peer_unpin(c->peer, 0);
    if (c->sock >= 0)
        close(c->sock);
    if (c->bell >= 0)
        close(c->bell);
    if (c->tx_raw)
        rpal_free(c->tx_raw);
    free(c->staging);
    free(c->staging_seq);
    free(c);
}

/* Tell the service where our ring is, over a new connection to its socket
 * (c->sock, which stays open: its EOF tells the service the channel is
 * closed), and wait at most TIMEOUT_MS for its answer: *REP, and in *FD
 * the descriptor it sent (-1: none). */
static int chan_handshake(rpal_chan *c, rpal_peer *peer, rpal_domain *d, int timeout_ms,
                          struct hs_rep *rep_out, int *fd_out)
{
    char file[SVC_FILE_MAX];
    rpal__svc_sock_file(file, peer->info.service);
    struct hs_req req = {.magic = HS_MAGIC, .version = HS_VERSION, .slot = d->slot,
                         .slot_size = d->slot_size, .kind = HS_KIND_CHAN,
                         .depth = c->depth, .addr = (uint64_t)(uintptr_t)c->tx};
    memcpy(req.service, peer->info.service, sizeof req.service - 1); /* both one component */
    int err = rpal__svc_exchange(d, file, &req, NULL, -1, timeout_ms, rep_out, fd_out, &c->sock);
    /* The listener proved it holds a live claim offering the service; it
     * must also be the member we share with. */
    if (err == 0 && rep_out->slot != peer->info.slot)
        err = -EPROTO;
    /* Nobody listens: the service is gone. Closed without an answer (it
     * died or unregistered right after accepting us): the sharing ends. */
    if (err == -ECONNREFUSED)
        return -ESRCH;
    return err == -ECONNRESET ? -ESHUTDOWN : err;
}

/* The service's answer REP (and the descriptor FD it sent, -1 none), the
 * other side's word: keep FD only if it is a bell we may write, and take
 * the reply ring only if it lies in the service's slot, aligned, with our
 * depth and a live id. Pins the service (c->window) on the way. */
static int chan_take_reply(rpal_chan *c, rpal_peer *peer, const struct hs_rep *rep, int fd)
{
    int err;
    /* The receiver's bell: kept only from a service of our own user, and
     * only an eventfd (see docs/waiting.md: a write to another user's
     * eventfd could be made to block). */
    if (fd >= 0 && peer->info.uid == getuid() && rpal__prim_is_eventfd(fd))
        c->bell = fd;
    else if (fd >= 0)
        close(fd);
    if (rep->magic != HS_MAGIC || rep->version != HS_VERSION)
        return -EPROTO; /* not an rpal service of our version */
    if (rep->status != 0)
        return rep->status == -ENOTCONN ? -EAGAIN : rep->status < 0 && rep->status > -4096
                                                      ? rep->status : -EPROTO;
    /* The service's ring must lie inside its slot, aligned, with our depth. */
    uint64_t rsize = sizeof(struct ch_rx) + c->depth * sizeof(struct ch_entry);
    if (rep->addr % 64 || !span_inside(rep->addr, rsize, c->sbase, c->ssize) ||
        !rpal__peer_readable(peer, rep->addr, rsize))
        return -EPROTO;
    c->rx = (const struct ch_rx *)(uintptr_t)rep->addr;
    /* The service's ring is read on every call, from whichever thread
     * calls: the service stays open to every thread (a pin) for the
     * channel's life. */
    if ((err = rpal__peer_pin(peer)) < 0)
        return err;
    c->window = 1;
    c->rx_id = rpal_load_relaxed(&c->rx->id);
    if (!(c->rx->magic == RX_MAGIC && c->rx->depth == c->depth) || !c->rx_id)
        return -EPROTO;
    return 0;
}

int rpal_chan_open(rpal_peer *peer, const struct rpal_chan_opts *opts,
                   int timeout_ms, rpal_chan **out)
{
    if (!peer || !out || !opts_valid(opts))
        return -EINVAL;
    rpal_domain *d = peer->d;
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    if (rpal_load_acquire(&peer->gone)) /* pairs with the store in service.c's rpal__peer_gone */
        return peer->reason ? peer->reason : -ESHUTDOWN;
    rpal_chan *c = chan_new(peer, d, opts);
    if (!c)
        return -ENOMEM;
    struct hs_rep rep = {0};
    int fd = -1;
    if ((err = chan_handshake(c, peer, d, timeout_ms, &rep, &fd)) < 0 ||
        (err = chan_take_reply(c, peer, &rep, fd)) < 0)
        goto fail;
    /* The connection's other end as the kernel knows it: its pid here may
     * be 0 (another pid namespace). */
    c->pidfd = rpal__prim_peer_pidfd(c->sock, peer->info.pid);
    if (c->pidfd < 0) {
        err = -ESRCH;
        goto fail;
    }
    rpal_fetch_add_acq_rel(&peer->nchans, 1);
    rpal__wt_learn_init(&c->learn);
    c->st.kind = RPAL_STATS_CALLER;
    c->st.peer_slot = peer->info.slot;
    c->st.peer_pid = peer->info.pid;
    c->st.fd = -1;
    snprintf(c->st.name, sizeof c->st.name, "%.64s", peer->info.service);
    rpal__dom_stats_open(d, &c->st, 0);
    *out = c;
    return 0;
fail:
    chan_free(c);
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
    int err = rpal__dom_check(c->peer->d);
    if (err < 0)
        return err; /* a forked child: the channel is its parent's */
    /* The service sees EOF and drops its side; requests not yet answered
     * are abandoned (their replies would have nowhere to go). */
    shutdown(c->sock, SHUT_RDWR);
    close(c->sock);
    close(c->pidfd);
    if (c->bell >= 0)
        close(c->bell);
    rpal__dom_stats_close(c->peer->d, &c->st, 0);
    staging_release(c);
    free(c->deferred);
    free(c->staging_seq);
    rpal__peer_unpin(c->peer, 0); /* the pin chan_open took */
    rpal__peer_put(c->peer, 0);
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
    if (rpal__dom_check(c->peer->d) < 0)
        return -ECHILD; /* a forked child: our slot is not mapped here */
    if (len > UINT32_MAX)
        return -EMSGSIZE; /* an entry's length is 32 bits */
    if (c->sent - c->done >= c->depth)
        return -EAGAIN;
    uint32_t i = c->sent & (c->depth - 1);
    struct ch_entry *e = &c->tx->e[i];
    int err;
    e->tag = tag;
    e->len = (uint32_t)len;
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
    int kind = rpal__ch_entry_fill(e, req, len, span_inside((uintptr_t)req, len, c->mybase, c->mysize),
                          &c->staging[i]);
    if (kind < 0)
        return kind;
    if (c->staging[i]) {
        c->nstaged++;
        c->staging_seq[i] = SEQ_WANT(c->sent + 1);
    }
    /* The entry's seqf last: pairs with the receiver's acquire of it. */
    rpal_plain_store_release(&e->seqf, SEQF(c->sent + 1, (uint32_t)kind));
    c->sent++;
    /* An entry a few ahead, which the receiver read a lap ago: ours before
     * we write it (not the next one: the receiver polls that). */
    rpal_prefetch_write(&c->tx->e[(c->sent + PREFETCH_AHEAD) & (c->depth - 1)]);
    c->st.msgs_out++;
    c->st.bytes_out += len;
    /* The index is for a sleeping receiver; then see whether it sleeps: the
     * seq_cst fence pairs with the one the receiver issues between raising
     * its sleeps flag and re-reading. */
    rpal_store_release(&c->tx->tail, c->sent);
    rpal_fence_seq_cst();
    uint32_t how = rpal_load_relaxed(&c->rx->pub.sleeps);
    if (how == WT_WAKE_BELL) {
        /* A receiver that also serves its domain (rpal_serve) sleeps in
         * the domain's epoll set: its bell, or a byte on our connection
         * (its dispatch reads it; never blocks: a full socket has bytes
         * that wake it already). */
        rpal_store_release(&c->tx->pub.woke_ns, rpal__prim_now_ns());
        uint64_t one = 1;
        if (c->bell < 0 || write(c->bell, &one, sizeof one) != sizeof one)
            (void)send(c->sock, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        c->st.wakes++;
    } else if (how) {
        wake(&c->tx->pub, &c->tx->tail, &c->st,
             rpal_load_relaxed(&c->rx->pub.cpu) == rpal_load_relaxed(&c->tx->pub.cpu));
    } else {
        c->st.wakes_skipped++;
    }
    return 0;
}

/* Wait until the reply entry SLOT holds sequence number WANT (not there at
 * the first look), at most TIMEOUT_MS (-1: no limit). The way to wait is
 * learned (src/wait.c); liveness is checked every 1,024 spins and after
 * every yield or sleep (sleeps are cut into 20 ms slices). */
static int chan_wait(rpal_chan *c, const struct ch_entry *slot, uint32_t want, int timeout_ms)
{
    struct wt_wait w;
    rpal__wt_begin(&w, &c->learn, &c->st, &c->o, rpal_load_relaxed(&c->rx->pub.cpu));
    uint64_t limit = wt_limit_ns(timeout_ms);
    for (unsigned slow = 0;;) {
        /* pairs with the release store of seqf in rpal_reply */
        if (SEQ_OF(rpal_plain_load_acquire(&slot->seqf)) == want)
            break;
        int step = rpal__wt_pause(&w);
        if (step == 0)
            continue;
        if (step == WT_SLEEP) {
            uint64_t cpu0;
            rpal__wt_sleep_begin(&w, 0, &cpu0);
            publish_cpu(&c->tx->pub, rpal__wt_my_cpu());
            uint32_t t = rpal_load_relaxed(&c->rx->rtail);
            rpal_store_relaxed(&c->tx->pub.sleeps, WT_WAKE_FUTEX);
            rpal_fence_seq_cst(); /* pairs with the fence in rpal_reply */
            if (SEQ_OF(rpal_plain_load_relaxed(&slot->seqf)) != want) {
                /* 20 ms: wake to check liveness now and then */
                int64_t slice = wt_slice_ns(wt_left_ns(w.t0, limit, w.now), 20000000);
                rpal__prim_futex_wait(&c->rx->rtail, t, 1, slice);
            }
            rpal_store_relaxed(&c->tx->pub.sleeps, 0);
            rpal__wt_sleep_end(&w, cpu0);
        }
        /* The clock was read: deadline; after a yield, a sleep or 1,024
         * spins: is the service still there? */
        if (w.now - w.t0 >= limit)
            return -ETIMEDOUT;
        int look = step == WT_SLEEP || (w.mode == WT_SPIN ? w.spins % 1024 == 0 : ++slow % 32 == 0);
        if (look &&
            SEQ_OF(rpal_plain_load_acquire(&slot->seqf)) != want) {
            int err = chan_alive(c->sock, c->pidfd);
            if (err)
                return err;
        }
    }
    /* pairs with the release store in wake() */
    rpal__wt_end(&w, w.slept ? rpal_load_acquire(&c->rx->pub.woke_ns) : 0);
    publish_cpu(&c->tx->pub, w.my_cpu);
    if (rpal__wt_stats_due(&c->st, w.now))
        rpal__dom_stats_flush(c->peer->d, &c->st);
    return 0;
}

int rpal_chan_stats(const rpal_chan *c, struct rpal_stats *out)
{
    if (!c || !out)
        return -EINVAL;
    rpal__wt_stats_copy(&c->st, out);
    return 0;
}

int rpal_complete(rpal_chan *c, uint64_t *tag, void *reply, size_t reply_max,
                  size_t *reply_len, int timeout_ms)
{
    if (!c || c->sent == c->done)
        return -EINVAL;
    if (rpal__dom_check(c->peer->d) < 0)
        return -ECHILD;
    const struct ch_entry *slot = &c->rx->e[c->done & (c->depth - 1)];
    uint32_t want = SEQ_WANT(c->done + 1);
    /* pairs with the release store of seqf in rpal_reply */
    if (SEQ_OF(rpal_plain_load_acquire(&slot->seqf)) != want) {
        int err = chan_wait(c, slot, want, timeout_ms);
        if (err < 0)
            return err;
    }
    struct ch_entry e;
    int kind = rpal__ch_entry_take(slot, c->sbase, c->ssize, &e);
    /* Inside the slot is not enough: past the end of its file a read is
     * SIGBUS. */
    if (kind == E_PTR && !rpal__peer_readable(c->peer, e.ptr, e.len))
        kind = -EPROTO;
    c->done++;
    prefetch_ahead(&c->seen_rtail, &c->rx->rtail, c->done, c->rx->e, c->depth);
    c->st.msgs_in++;
    c->st.bytes_in += e.len;
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
    rpal__dom_stats_close(d, &x->st, 1);
    for (uint32_t i = 0; i < x->depth; i++)
        if (x->bufs[i])
            rpal_free(x->bufs[i]);
    while (x->windows-- > 0)
        rpal__peer_access_end_locked(x->peer, 1);
    if (x->ring_window)
        rpal__peer_unpin(x->peer, 1);
    rpal__peer_put(x->peer, 1);
    /* Before the ring can be reused: pairs with the check in rpal_complete
     * (the reuse's stores come after this one). */
    rpal_store_release(&x->rx->id, 0);
    rpal_free(x->rx_raw);
    free(x->bufs);
    free(x->pend_ptr);
    free(x->pend_seq);
    rpal__dom_watch_retire(d, &x->w); /* frees X */
}

/* The dispatcher saw the channel's connection close. */
static int rxc_hook(rpal_domain *d, struct watch *w, uint32_t events, struct rpal_event *ev)
{
    (void)ev; /* the receiver, not the application's dispatch, sees it */
    struct rx_chan *x = w->obj;
    char b[16];
    if (!(events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) && recv(x->sock, b, sizeof b, MSG_DONTWAIT) != 0)
        return 0;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, x->sock, NULL);
    rpal_store_release(&x->dead, 1);
    rpal_fetch_add_relaxed(&x->r->doorbell, 1);
    rpal__prim_futex_wake(&x->r->doorbell, 1, 0);
    return 0;
}

/* The bytes of the request ring a channel handshake REQ names. */
static uint64_t tx_bytes(const struct hs_req *req)
{
    return sizeof(struct ch_tx) + (uint64_t)req->depth * sizeof(struct ch_entry);
}

int rpal__ch_tx_check(const struct hs_req *req, uint64_t base, uint64_t size)
{
    uint32_t depth = req->depth;
    if (!depth || depth > MAX_DEPTH || (depth & (depth - 1)))
        return -EINVAL;
    if (req->addr % 64 || !span_inside(req->addr, tx_bytes(req), base, size))
        return -EINVAL;
    const struct ch_tx *tx = (const struct ch_tx *)(uintptr_t)req->addr;
    return tx->magic == TX_MAGIC && tx->depth == depth ? 0 : -EINVAL;
}

/* The request ring REQ names in the caller P's slot, checked where it lies
 * (d->lock held: the dispatch). It must be backed by P's file first: past
 * its end a read is SIGBUS. */
static int tx_check_peer(rpal_peer *p, const struct hs_req *req)
{
    if (!rpal__peer_readable(p, req->addr, tx_bytes(req)))
        return -EINVAL;
    rpal__peer_access_begin_locked(p, 1);
    int err = rpal__ch_tx_check(req, p->base, p->size);
    rpal__peer_access_end_locked(p, 1);
    return err;
}

static int chan_accept(rpal_service *s, rpal_peer *p, int sock,
                       const struct hs_req *req, uint64_t *addr, int *fd)
{
    rpal_domain *d = s->d;
    uint32_t depth = req->depth;
    int err = tx_check_peer(p, req);
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
    x->rx = rpal__ch_slot_alloc(sizeof *x->rx + depth * sizeof(struct ch_entry), &x->rx_raw);
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
    x->w = (struct watch){.obj = x, .handle = rxc_hook};
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
    x->st.kind = RPAL_STATS_SERVICE;
    x->st.peer_slot = p->info.slot;
    x->st.peer_pid = p->info.pid;
    x->st.fd = -1;
    snprintf(x->st.name, sizeof x->st.name, "%s", s->name);
    rpal__dom_stats_open(d, &x->st, 1);
    /* Where the receiver waits, for the caller to see. */
    rpal_store_relaxed(&x->rx->pub.cpu, rpal_load_relaxed(&r->cpu));
    pthread_mutex_lock(&r->lock);
    r->ch[r->n++] = x;
    pthread_mutex_unlock(&r->lock);
    rpal_fetch_add_relaxed(&r->doorbell, 1);
    rpal__prim_futex_wake(&r->doorbell, 1, 0);
    *addr = (uint64_t)(uintptr_t)x->rx;
    *fd = r->bell;
    return 0;
}

int rpal_receiver_create(rpal_service *s, const struct rpal_chan_opts *opts,
                         rpal_receiver **out)
{
    if (!s || !out || !opts_valid(opts))
        return -EINVAL;
    int err = rpal__dom_check(s->d);
    if (err < 0)
        return err;
    rpal_receiver *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->s = s;
    opts_fill(&r->o, opts);
    rpal__wt_learn_init(&r->learn);
    /* -1: callers wake us with a byte on their connection */
    r->bell = rpal__wt_bells() ? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) : -1;
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
    int err = rpal__dom_check(r->s->d);
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
    if (r->bellw) {
        epoll_ctl(d->epfd, EPOLL_CTL_DEL, r->bell, NULL);
        rpal__dom_watch_retire(d, r->bellw); /* a dispatch may hold its event */
    }
    pthread_mutex_unlock(&d->lock);
    if (r->bell >= 0)
        close(r->bell);
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

/* May X's ring be read? Not once the dispatcher marked it dead: its caller
 * has gone, and its slot may already hold another member (the next process
 * to take that slot), under a key we hold no window on. Nor if we never
 * pinned it. */
static int readable(struct rx_chan *x)
{
    return x->ring_window && !rpal_load_acquire(&x->dead); /* pairs with rxc_hook */
}

/* The CPU + 1 all of R's callers published, or 0 if they differ (or none
 * did): whom a wait is for, to know whether they run on our CPU. */
static uint32_t callers_cpu(struct rx_chan **chs, int n)
{
    uint32_t cpu = 0;
    for (int k = 0; k < n; k++) {
        if (!readable(chs[k]))
            continue;
        uint32_t c = rpal_load_relaxed(&chs[k]->tx->pub.cpu);
        if (!c || (cpu && c != cpu))
            return 0;
        cpu = c;
    }
    return cpu;
}

/* Publish CPU as where R waits, in every channel's ring, if it moved. */
static void receiver_cpu(rpal_receiver *r, struct rx_chan **chs, int n, uint32_t cpu)
{
    if (!cpu || cpu == rpal_load_relaxed(&r->cpu))
        return;
    rpal_store_relaxed(&r->cpu, cpu); /* read by chan_accept for new channels */
    for (int k = 0; k < n; k++)
        publish_cpu(&chs[k]->rx->pub, cpu);
}

/* Sleep until one of the N channels CHS has a request, the doorbell moves
 * from BELL, or SLICE_NS passes: 0, or -EINTR if a signal came. */
static int receiver_sleep(rpal_receiver *r, struct rx_chan **chs, int n, uint32_t bell,
                          struct wt_wait *w, int64_t slice)
{
    int err = 0;
    struct futex_waitv fw[MAX_CHANS + 1];
    unsigned nw = 0;
    uint64_t cpu0;
    /* A receiver follows its callers' CPU while it sleeps: the next call
     * then hands the CPU over instead of waking an idle one. */
    receiver_cpu(r, chs, n, rpal__wt_sleep_begin(w, 1, &cpu0));
    for (int k = 0; k < n; k++)
        rpal_store_relaxed(&chs[k]->rx->pub.sleeps, WT_WAKE_FUTEX);
    rpal_fence_seq_cst(); /* pairs with the fence in rpal_send */
    int ready = 0;
    for (int k = 0; k < n; k++) {
        if (!readable(chs[k])) {
            /* Not to sleep on; to reap, unless a request of it still
             * waits for its reply (reap keeps it until then). */
            ready |= chs[k]->unanswered == 0;
            continue;
        }
        uint32_t t = rpal_load_relaxed(&chs[k]->tx->tail);
        /* An honest tail is at most DEPTH ahead of our head, and may be one
         * behind: rpal_send publishes the entry (which we may have taken
         * already) before it stores the tail. Sleeping on that tail is
         * safe: its store comes before the caller's look at our flag. */
        int32_t ahead = (int32_t)(t - chs[k]->head);
        if (ahead < -1 || ahead > (int32_t)chs[k]->depth) {
            poison(chs[k]); /* an index no honest caller writes */
            ready = 1;
        } else if (ahead > 0) {
            ready = 1;
        }
        fw[nw++] = (struct futex_waitv){.val = t, .uaddr = (uintptr_t)&chs[k]->tx->tail,
                                        .flags = FUTEX_32};
    }
    fw[nw++] = (struct futex_waitv){.val = bell, .uaddr = (uintptr_t)&r->doorbell,
                                    .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG};
    if (!ready && rpal_load_acquire(&r->doorbell) == bell) {
        /* Where futex_waitv is missing (Linux before 5.16, qemu-user, or
         * valgrind 3.19), wait on the doorbell alone and look at the rings
         * again every millisecond. With no ring to look at, the doorbell
         * is the whole wait: it sleeps the whole slice, so that a signal
         * finds it asleep (-EINTR) rather than between two slices, where
         * the handler runs and the wait goes on to its timeout. */
        err = rpal__prim_futex_waitv(fw, nw, slice);
        if (err == -ENOSYS)
            err = rpal__prim_futex_wait(&r->doorbell, bell, 0,
                                        nw == 1 || slice < 1000000 ? slice : 1000000);
    }
    for (int k = 0; k < n; k++)
        rpal_store_relaxed(&chs[k]->rx->pub.sleeps, 0);
    rpal__wt_sleep_end(w, cpu0);
    return err == -EINTR ? -EINTR : 0;
}

/* Serving the domain too (rpal_serve): look at its epoll set without
 * waiting. 1 and *EV if it gave an event. */
static int serve_look(rpal_receiver *r, struct rpal_event *ev)
{
    r->nosys = 0;
    int n = rpal__dom_dispatch(r->s->d, ev, 1, 0, 1);
    return n > 0;
}

/* A wake-up on the receiver's bell: edge-triggered, nothing to read. */
static int bell_hook(rpal_domain *d, struct watch *w, uint32_t events, struct rpal_event *ev)
{
    (void)d, (void)w, (void)events, (void)ev;
    return 0;
}

/* Serving the domain too: sleep in its epoll set (at most SLICE_NS), where
 * a caller's wake-up is a write to our bell (or a byte on its channel's
 * connection): the callers see WT_WAKE_BELL. 1 and *EV if an event came,
 * 0, or the dispatch's error (-EINTR: a signal). */
static int serve_sleep(rpal_receiver *r, struct rx_chan **chs, int n, struct wt_wait *w,
                       int64_t slice, struct rpal_event *ev)
{
    rpal_domain *d = r->s->d;
    if (r->bell >= 0 && !r->bellw) {
        struct watch *bw = calloc(1, sizeof *bw);
        if (bw) {
            *bw = (struct watch){.obj = bw, .handle = bell_hook};
            struct epoll_event ee = {.events = EPOLLIN | EPOLLET, .data.ptr = bw};
            pthread_mutex_lock(&d->lock);
            if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, r->bell, &ee) == 0)
                r->bellw = bw;
            else
                free(bw);
            pthread_mutex_unlock(&d->lock);
        }
    }
    uint64_t cpu0;
    receiver_cpu(r, chs, n, rpal__wt_sleep_begin(w, 1, &cpu0));
    for (int k = 0; k < n; k++)
        rpal_store_relaxed(&chs[k]->rx->pub.sleeps, WT_WAKE_BELL);
    rpal_fence_seq_cst(); /* pairs with the fence in rpal_send */
    int ready = 0, got = 0;
    for (int k = 0; k < n && !ready; k++) {
        if (!readable(chs[k])) {
            ready = chs[k]->unanswered == 0; /* to reap */
            continue;
        }
        const struct ch_entry *slot = &chs[k]->tx->e[chs[k]->head & (chs[k]->depth - 1)];
        ready = SEQ_OF(rpal_plain_load_relaxed(&slot->seqf)) == SEQ_WANT(chs[k]->head + 1);
    }
    if (!ready) {
        int ms = (int)((slice + 999999) / 1000000);
        got = rpal__dom_dispatch(r->s->d, ev, 1, ms, 1);
    }
    for (int k = 0; k < n; k++)
        rpal_store_relaxed(&chs[k]->rx->pub.sleeps, 0);
    rpal__wt_sleep_end(w, cpu0);
    r->nosys = 0;
    return got;
}

/* A new copy of ch[] for this thread, the doorbell having moved to BELL:
 * the dispatcher appended a channel or marked one dead. Each new channel's
 * caller is pinned (stays open to every thread) for as long as this
 * receiver serves it, since its ring is read on every scan. */
static void snap_take(rpal_receiver *r, uint32_t bell)
{
    pthread_mutex_lock(&r->lock);
    r->nsnap = r->n;
    memcpy(r->snap, r->ch, (size_t)r->n * sizeof *r->snap);
    pthread_mutex_unlock(&r->lock);
    r->snap_bell = bell;
    r->snap_valid = 1;
    for (int k = 0; k < r->nsnap; k++) {
        struct rx_chan *x = r->snap[k];
        if (!x->ring_window && !rpal_load_relaxed(&x->dead)) {
            if (rpal__peer_pin(x->peer) == 0)
                x->ring_window = 1;
            else
                poison(x); /* it has gone */
        }
    }
}

/* Refresh the thread's copy of ch[] if the doorbell moved: 1 if it did.
 * Only this thread removes channels, so ch[] entries stay valid while we
 * scan; the dispatcher only appends (under r->lock). */
static inline int snap_refresh(rpal_receiver *r)
{
    uint32_t bell = rpal_load_acquire(&r->doorbell); /* pairs with chan_accept */
    if (r->snap_valid && bell == r->snap_bell)
        return 0;
    snap_take(r, bell);
    return 1;
}

/* Hand the entry E of kind KIND, just taken from X's ring, to the
 * application as M. */
static inline void msg_give(struct rx_chan *x, const struct ch_entry *e, int kind,
                            struct rpal_msg *m)
{
    if (kind == E_PTR) {
        /* Read in place, inside a window until the reply, which tells the
         * caller (ack) that it may free its copy. */
        rpal_peer_access_begin(x->peer);
        x->windows++;
        if (x->npend < x->depth) {
            x->pend_ptr[x->npend] = e->ptr;
            x->pend_seq[x->npend++] = SEQ_WANT(x->head);
        }
    }
    x->unanswered++;
    x->st.msgs_in++;
    x->st.bytes_in += e->len;
    m->len = e->len;
    m->peer = x->peer;
    m->internal[0] = x;
    m->internal[1] = (void *)(uintptr_t)e->tag;
    if (kind == E_INLINE) {
        /* Inline data is copied out of the peer's ring into the message:
         * the caller may overwrite the entry from now on. */
        memcpy(m->inline_copy, e->data, e->len);
        m->data = m->inline_copy;
    } else {
        m->data = (const void *)(uintptr_t)e->ptr;
    }
}

/* Look once at each of the N channels CHS, round robin from where the
 * last message came from, and hand the first request found out as M: its
 * channel, or NULL if none has one. *REAPED is set when a channel is to be
 * reaped (dead, or its caller broke the ring's rules). */
static inline struct rx_chan *scan(rpal_receiver *r, struct rx_chan **chs, int n,
                                   struct rpal_msg *m, int *reaped)
{
    /* No division: this loop is the poll path. */
    unsigned idx = r->next < (unsigned)n ? r->next : 0;
    for (int k = 0; k < n; k++, idx = idx + 1 == (unsigned)n ? 0 : idx + 1) {
        struct rx_chan *x = chs[idx];
        if (rpal_load_acquire(&x->dead)) { /* pairs with rxc_hook */
            /* Reaped once no request of it waits for its reply: until
             * then it is only passed over (not a reason to loop). */
            *reaped |= x->unanswered == 0;
            continue;
        }
        const struct ch_entry *slot = &x->tx->e[x->head & (x->depth - 1)];
        /* pairs with the release store of seqf in rpal_send */
        if (SEQ_OF(rpal_plain_load_acquire(&slot->seqf)) != SEQ_WANT(x->head + 1))
            continue;
        struct ch_entry e;
        int kind = rpal__ch_entry_take(slot, x->cbase, x->csize, &e);
        if (kind == E_PTR && !rpal__peer_readable(x->peer, e.ptr, e.len))
            kind = -EPROTO; /* past the end of the caller's file: SIGBUS to read */
        if (kind < 0) {
            poison(x);
            *reaped = 1;
            continue;
        }
        /* The entry is copied. The caller reuses it only once it has the
         * reply of a later request, which we give after this. */
        x->head++;
        prefetch_ahead(&x->seen_tail, &x->tx->tail, x->head, x->tx->e, x->depth);
        r->next = idx + 1 == (unsigned)n ? 0 : idx + 1;
        msg_give(x, &e, kind, m);
        return x;
    }
    return NULL;
}

/* The wait W ended with a request from X: it counts for X's channel. */
static void wait_done(rpal_receiver *r, struct wt_wait *w, struct rx_chan *x,
                      struct rx_chan **chs, int n)
{
    w->st = &x->st;
    /* pairs with the release store in wake() */
    rpal__wt_end(w, w->slept ? rpal_load_acquire(&x->tx->pub.woke_ns) : 0);
    x->st.budget_ns = w->budget;
    receiver_cpu(r, chs, n, w->my_cpu);
    if (rpal__wt_stats_due(&x->st, w->now))
        rpal__dom_stats_flush(r->s->d, &x->st);
}

/* Nothing was there: one step of W, the wait of receive() (EV as there).
 * 0 to look again, or what receive() returns: RPAL_SERVE_EVENT, a signal
 * (-EINTR), an error or -ETIMEDOUT at LIMIT. *BELL is the doorbell a
 * sleep waits to move; *NEXT_K when the domain's set is looked at next. */
static int receive_pause(rpal_receiver *r, struct wt_wait *w, struct rx_chan **chs, int n,
                         struct rpal_event *ev, uint64_t limit, uint32_t *bell,
                         uint64_t *next_k)
{
    int step = rpal__wt_pause(w);
    if (step == 0)
        return 0;
    if (step == WT_SLEEP) {
        /* 100 ms slices, not past the deadline (docs/waiting.md) */
        int64_t slice = wt_slice_ns(wt_left_ns(w->t0, limit, w->now), 100000000);
        int got = ev ? serve_sleep(r, chs, n, w, slice, ev)
                     : receiver_sleep(r, chs, n, *bell, w, slice);
        if (got != 0) {
            /* An event, or a signal (as read(2) without SA_RESTART:
             * -EINTR lets a loop look at its flags), or an error. */
            rpal__wt_end_empty(w);
            return got > 0 ? RPAL_SERVE_EVENT : got;
        }
        *bell = rpal_load_acquire(&r->doorbell);
    } else if (ev) {
        /* Spinning or yielding: the domain's set every 10 us. */
        if (*next_k == UINT64_MAX)
            *next_k = w->t0 + 10000;
        if (w->now >= *next_k) {
            *next_k = w->now + 10000;
            if (serve_look(r, ev)) {
                rpal__wt_end_empty(w);
                return RPAL_SERVE_EVENT;
            }
        }
    }
    return w->now - w->t0 >= limit ? -ETIMEDOUT : 0;
}

/* rpal_receive, and rpal_serve when EV is not NULL. */
static int receive(rpal_receiver *r, struct rpal_msg *m, struct rpal_event *ev, int timeout_ms)
{
    uint64_t limit = wt_limit_ns(timeout_ms);
    struct wt_wait w;
    int waiting = 0;
    uint32_t bell = rpal_load_acquire(&r->doorbell);
    int reaped = 0;
    uint64_t next_k = UINT64_MAX;
    /* Serving: the domain's events come first now and then, so that a
     * stream of requests does not keep its handshakes and deaths waiting
     * (the same every 64 requests that compat has for plain descriptors). */
    if (ev && ++r->nosys >= 64 && serve_look(r, ev))
        return RPAL_SERVE_EVENT;
    for (;;) {
        if (snap_refresh(r) && waiting) /* whom we wait for changed */
            w.peer_cpu = callers_cpu(r->snap, r->nsnap);
        int n = r->nsnap;
        struct rx_chan **chs = r->snap;
        struct rx_chan *x = scan(r, chs, n, m, &reaped);
        if (x) {
            if (waiting)
                wait_done(r, &w, x, chs, n);
            return ev ? RPAL_SERVE_MSG : 0;
        }
        if (reaped) {
            reap(r);
            reaped = 0;
            continue;
        }
        if (!waiting) {
            rpal__wt_begin(&w, &r->learn, NULL, &r->o, callers_cpu(chs, n));
            receiver_cpu(r, chs, n, w.my_cpu);
            waiting = 1;
        }
        int got = receive_pause(r, &w, chs, n, ev, limit, &bell, &next_k);
        if (got != 0)
            return got;
    }
}

int rpal_receive(rpal_receiver *r, struct rpal_msg *m, int timeout_ms)
{
    if (!r || !m)
        return -EINVAL;
    if (rpal__dom_check(r->s->d) < 0)
        return -ECHILD;
    return receive(r, m, NULL, timeout_ms);
}

int rpal_serve(rpal_receiver *r, struct rpal_msg *m, struct rpal_event *ev, int timeout_ms)
{
    if (!r || !m || !ev)
        return -EINVAL;
    if (rpal__dom_check(r->s->d) < 0)
        return -ECHILD;
    return receive(r, m, ev, timeout_ms);
}

int rpal_reply(rpal_receiver *r, const struct rpal_msg *m, const void *data, size_t len)
{
    if (!r || !m || !m->internal[0] || (!data && len) || len > UINT32_MAX)
        return -EINVAL;
    if (rpal__dom_check(r->s->d) < 0)
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
    int kind = rpal__ch_entry_fill(e, data, len, 0, &x->bufs[i]);
    if (kind < 0)
        return kind;
    /* seqf last: pairs with the caller's acquire of it in rpal_complete */
    rpal_plain_store_release(&e->seqf, SEQF(x->rtail + 1, (uint32_t)kind));
    x->rtail++;
    rpal_prefetch_write(&x->rx->e[(x->rtail + PREFETCH_AHEAD) & (x->depth - 1)]);
    x->st.msgs_out++;
    x->st.bytes_out += len;
    rpal_store_release(&x->rx->rtail, x->rtail); /* for a sleeping caller */
    rpal_fence_seq_cst(); /* pairs with the caller's fence before it sleeps */
    if (rpal_load_relaxed(&x->tx->pub.sleeps))
        wake(&x->rx->pub, &x->rx->rtail, &x->st,
             rpal_load_relaxed(&x->tx->pub.cpu) == rpal_load_relaxed(&r->cpu));
    else
        x->st.wakes_skipped++;
    return 0;
}
