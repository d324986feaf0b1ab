/* compat: an epoll + Unix-socket program switches to rpal with a few lines.
 *
 * rpal_uds_fdmap() upgrades a connected Unix stream socket between two
 * members of a domain. Each end then owns a ring in its own slot (the
 * messages it writes, the count it has consumed of the other's, and whether
 * it is polling), and reads the other's ring through its read-only mapping,
 * checking every index, length and pointer (principles 2 and 3: a process
 * writes only memory it owns; nothing read from a peer is trusted). The
 * socket stays: it carries a one-byte wake-up when the reader said it is
 * not polling (principle 6: never cost more than the socket it replaces),
 * and the end of the connection, so that kernel epoll sets, poll() and
 * foreign event loops keep working.
 *
 * The epoll half keeps, per epoll set, what the application registered;
 * the kernel set holds every descriptor with our own cookie (the fd), and
 * mapped descriptors only for wake-ups and hang-ups. Ring readiness is
 * computed in user space, so a wait that finds ring events returns without a
 * system call. See docs/compat.md.
 */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CX_DEPTH   256u
#define CX_MAX_MSG (1u << 30)    /* larger writes are split */
#define FD_PAGE    1024          /* two-level fd tables: pages of this many */
#define FD_PAGES   1024          /* so fds below 1,048,576 */
#define BELL_TAG   (1ull << 32)  /* a kernel event's cookie: FD's bell, not FD */

/* The owner's half of a connection, in its slot, is a struct cx_ring
 * (src/internal.h): peers read it only. */

struct conn {
    int fd;
    rpal_domain *d;
    rpal_peer *peer;
    int own_peer;            /* we mapped the peer for this connection */
    struct cx_ring *my;
    void *my_raw;
    struct cx_reader rd;     /* their ring, and how far we read it */
    uint32_t depth;          /* of our ring */
    uint32_t sent;           /* our messages published */
    void **staging;          /* per entry of ours: the copy of a large write */
    int eof;                 /* the socket said the other end is gone */
    int nsets;               /* rpal epoll sets it is registered in */
    /* Wake-ups for an end asleep in an epoll set: an eventfd each end
     * makes and hands the other in its hello. A write to it costs less than
     * a byte on the socket, and with EPOLLET it needs no read to re-arm.
     * Only between processes of one user (see rpal_uds_fdmap), else -1 and
     * the socket carries them. */
    int bell, their_bell;
    uint32_t drained;        /* wake-up bytes read from the socket */
    /* O_NONBLOCK of the socket as last asked (NB_KNOWN | NB_SET), kept
     * only under rpal run, which sees every change (rpal__cx_nb_forget
     * adds NB_GEN: an answer asked before a change is not kept). */
    _Atomic uint32_t nb;
    uint64_t eagain_ns;      /* when a read that found nothing last looked at the socket */
    struct wt_learn learn;   /* of blocking reads and writes */
    /* Of rpal run's poll and select (rpal__cx_wait_begin): apart, since a
     * program that reads until EAGAIN after each poll (libpq) teaches the
     * reads' record that waits end in nothing. */
    struct wt_learn poll_learn;
    struct wt_stats st;
    struct conn *next_zombie;
    /* Threads asleep on it (a blocking read or write, rpal run's poll),
     * and CONN_CLOSING: a close by another thread sets it and wakes them;
     * they leave (the read or write with -EBADF), and the connection is
     * freed only after the last, which reaps it if the close could not.
     * One word, so that the close and the last one's leaving each see the
     * other. */
    _Atomic uint32_t sleepers;
    uint64_t down_until;     /* downgraded: its ring kept until then (down_retire) */
};

/* A table indexed by descriptor that readers use without a lock: pages are
 * allocated once and never freed, and entries are stored with release. */
struct fdtab {
    void **_Atomic pages[FD_PAGES];
};

struct ep_item {
    uint32_t events;         /* as the application asked */
    epoll_data_t data;
    uint32_t seen_tail;      /* EPOLLET: their tail at the last EPOLLIN */
    uint8_t in_use, disabled, was_full, kmapped, end_seen, kbell;
    uint8_t parked;          /* deleted by the application, still in the kernel's set */
};

struct ep_set {
    int epfd;
    struct fdtab *items;     /* fd -> struct ep_item */
    int *mapped;             /* registered fds that are mapped */
    int nmapped, cmapped;
    unsigned gen;            /* conn_gen when MAPPED was computed */
    unsigned nosys;          /* returns without a kernel look, in a row */
    uint64_t next_kcheck;
    int first_fd;            /* collect(): the first descriptor with an event */
    struct wt_learn learn;   /* of the waits on this set */
};

static void *fdtab_get(struct fdtab *t, int fd)
{
    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return NULL;
    /* pairs with the release stores in fdtab_put */
    void **pg = rpal_load_acquire(&t->pages[fd / FD_PAGE]);
    return pg ? rpal_plain_load_acquire(&pg[fd % FD_PAGE]) : NULL;
}

/* cx_lock held. */
static int fdtab_put(struct fdtab *t, int fd, void *v)
{
    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return -EMFILE;
    void **pg = rpal_load_relaxed(&t->pages[fd / FD_PAGE]);
    if (!pg) {
        if (!(pg = calloc(FD_PAGE, sizeof *pg)))
            return -ENOMEM;
        rpal_store_release(&t->pages[fd / FD_PAGE], pg);
    }
    rpal_plain_store_release(&pg[fd % FD_PAGE], v);
    return 0;
}

static pthread_mutex_t cx_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fdtab conns; /* fd -> struct conn */
static struct fdtab sets;  /* epfd -> struct ep_set */
static _Atomic unsigned conn_gen = 1; /* bumped when either table changes */
static struct conn *zombies; /* closed; the other end may still read our ring */

static struct conn *conn_of(int fd) { return fdtab_get(&conns, fd); }

/* The downgrade (at the end of this file). */
struct cx_down;
static struct cx_down *down_of(int fd);
static int down_asked(const struct conn *c);
static int down_take(struct conn *c, int fd);
static ssize_t down_read(int fd, struct cx_down *dn, void *buf, size_t len);
static ssize_t down_write(int fd, struct cx_down *dn);
static int down_poll(int fd, struct cx_down *dn, int events);
static ssize_t down_peek(struct cx_down *dn, void *buf, size_t len);
static void down_drop(int fd, struct cx_down *dn, int force);

/* ---- the rings ---- */

/* One wake-up on the eventfd BELL (an epoll set of one end holds it,
 * edge-triggered: no count is ever read). */
static void ring_bell(int bell)
{
    uint64_t one = 1;
    (void)!write(bell, &one, sizeof one);
}

/* Wake the other end if it said it sleeps (its pub.sleeps), the way it
 * said: a futex on our index WORD (a blocking read or write), its bell (an
 * epoll set), or a byte on the socket (not waiting in rpal: it may poll the
 * socket itself). Our stamp tells it when the message came. */
static void wake_peer(struct conn *c, const _Atomic uint32_t *word)
{
    uint32_t how = rpal_load_relaxed(&c->rd.their->pub.sleeps);
    if (!how) {
        c->st.wakes_skipped++;
        return;
    }
    uint64_t t = rpal__prim_now_ns();
    rpal_store_release(&c->my->pub.woke_ns, t); /* pairs with the acquire in wait_stamp() */
    if (how == WT_WAKE_FUTEX) {
        rpal__prim_futex_wake(word, INT_MAX, 1);
    } else if (how == WT_WAKE_BELL && c->their_bell >= 0) {
        ring_bell(c->their_bell);
    } else if (send(c->fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1) {
        /* Counted, so that the other end reads them only when there are
         * some (see take()). */
        rpal_store_relaxed(&c->my->pub.sock_bytes, rpal_load_relaxed(&c->my->pub.sock_bytes) + 1);
    }
    if (rpal_load_relaxed(&c->rd.their->pub.cpu) != rpal_load_relaxed(&c->my->pub.cpu))
        rpal__wt_note_wake(t); /* on one CPU it included the switch */
    rpal__wt_woke();
    c->st.wakes++;
}

/* When the other end last woke us (its word: rpal__wt_end clamps it). */
static uint64_t wait_stamp(const struct conn *c)
{
    return c ? rpal_load_acquire(&c->rd.their->pub.woke_ns) : 0; /* pairs with wake_peer */
}

/* Our published state: how to wake us (0: awake), written on change. */
static void set_sleeps(struct conn *c, uint32_t how)
{
    if (rpal_load_relaxed(&c->my->pub.sleeps) != how)
        rpal_store_relaxed(&c->my->pub.sleeps, how);
}

static void set_cpu(struct conn *c, uint32_t cpu)
{
    if (cpu && rpal_load_relaxed(&c->my->pub.cpu) != cpu)
        rpal_store_relaxed(&c->my->pub.cpu, cpu);
}

/* How an end not waiting in rpal wants its wake-ups: it may wait in an
 * rpal epoll set (its bell is there), or on the socket itself. */
static uint32_t idle_sleeps(const struct conn *c)
{
    return c->nsets > 0 && c->bell >= 0 ? WT_WAKE_BELL : WT_WAKE_SOCK;
}

/* Read the wake-up bytes; notice the end of the connection. */
static void drain(struct conn *c)
{
    char b[256];
    for (;;) {
        ssize_t r = recv(c->fd, b, sizeof b, MSG_DONTWAIT);
        if (r == 0)
            c->eof = 1;
        if (r > 0)
            c->drained += (uint32_t)r;
        if (r < (ssize_t)sizeof b)
            return;
    }
}

/* Gone without closing (killed), or its half close? Its socket says so. */
static void look_socket(struct conn *c)
{
    struct pollfd pf = {c->fd, POLLIN | POLLRDHUP, 0};
    if (poll(&pf, 1, 0) > 0)
        drain(c);
}

static int cx_ready(const struct cx_reader *r)
{
    const struct ch_entry *e = &r->their->e[r->head & (r->tdepth - 1)];
    /* pairs with the release store of seqf in rpal_write */
    return SEQ_OF(rpal_plain_load_acquire(&e->seqf)) == SEQ_WANT(r->head + 1);
}

static int next_ready(const struct conn *c) { return cx_ready(&c->rd); }

static int at_end(const struct conn *c)
{
    /* pairs with the release store of closed in rpal_close */
    return c->eof || c->rd.broken || rpal_load_acquire(&c->rd.their->closed);
}

/* The end for a writer: the other end closed, broke the ring's rules, or
 * its socket is gone. A half close (shutdown(SHUT_WR), which ends only what
 * we read) leaves it a reader, as on the socket. */
static int write_end(const struct conn *c)
{
    if (c->rd.broken || rpal_load_acquire(&c->rd.their->closed))
        return 1;
    struct pollfd pf = {c->fd, 0, 0};
    return c->eof && poll(&pf, 1, 0) > 0 && (pf.revents & (POLLHUP | POLLERR));
}

static int has_room(struct conn *c)
{
    /* pairs with the release store of head in take() */
    uint32_t used = c->sent - rpal_load_acquire(&c->rd.their->head);
    if (used > c->depth)
        c->rd.broken = 1; /* a count no honest reader writes */
    return used < c->depth;
}

size_t rpal__cx_take(struct cx_reader *r, char *buf, size_t len)
{
    size_t got = 0;
    while (got < len && !r->broken && cx_ready(r)) {
        /* The entry is copied once and checked as the channel's are (the
         * other end may rewrite it meanwhile: nothing it says is trusted). */
        struct ch_entry e;
        int kind = rpal__ch_entry_take(&r->their->e[r->head & (r->tdepth - 1)], r->sbase, r->ssize, &e);
        if (kind == E_PTR && r->peer && !rpal__peer_readable(r->peer, e.ptr, e.len))
            kind = -EPROTO; /* past the end of their slot's file: SIGBUS to read */
        uint32_t elen = e.len;
        if (kind < 0 || r->off > elen) {
            r->broken = 1;
            break;
        }
        const uint8_t *src = kind == E_PTR ? (const uint8_t *)(uintptr_t)e.ptr : e.data;
        size_t n = elen - r->off < len - got ? elen - r->off : len - got;
        memcpy(buf + got, src + r->off, n);
        got += n;
        r->off += (uint32_t)n;
        if (r->off < elen)
            break; /* the buffer is full */
        r->off = 0;
        r->head++;
    }
    return got;
}

/* Copy up to LEN bytes of the messages that are there; 0 if none is. */
static ssize_t take(struct conn *c, char *buf, size_t len)
{
    uint32_t head = c->rd.head;
    size_t got = rpal__cx_take(&c->rd, buf, len);
    if (c->rd.head != head) { /* consumed one or more */
        c->st.msgs_in += c->rd.head - head;
        c->st.bytes_in += got;
        rpal_store_release(&c->my->head, c->rd.head); /* pairs with has_room() */
        rpal_fence_seq_cst(); /* pairs with the fence in conn_wait: it sees our head
                                 or we see it wants room */
        if (rpal_load_relaxed(&c->rd.their->want_room))
            wake_peer(c, &c->my->head);
    }
    if (got == 0 && c->rd.broken)
        return -EPROTO;
    /* Wake-up bytes the other end sent while we were not waiting in rpal:
     * read them, so that a poll() of the socket does not see them again
     * (the count is in a line we read anyway; no system call otherwise). */
    if (got && rpal_load_relaxed(&c->rd.their->pub.sock_bytes) != c->drained)
        drain(c);
    return (ssize_t)got;
}

enum { NB_SET = 1, NB_KNOWN = 2, NB_GEN = 4 };
static int nb_track; /* rpal run: every change of O_NONBLOCK is seen */

void rpal__cx_nb_track(void)
{
    nb_track = 1;
}

void rpal__cx_nb_forget(int fd)
{
    struct conn *c = conn_of(fd);
    if (!c)
        return;
    uint32_t v = rpal_load_relaxed(&c->nb);
    while (!rpal_cas_acq_rel(&c->nb, &v, (v & ~(uint32_t)(NB_SET | NB_KNOWN)) + NB_GEN))
        ;
}

/* O_NONBLOCK as it is now: asked only when we would block (the
 * application may change it at any time, as with a socket): a system call
 * per wait that found nothing, unless rpal run keeps the answer. */
static int nonblocking(struct conn *c)
{
    uint32_t v = rpal_load_relaxed(&c->nb);
    if (nb_track && (v & NB_KNOWN))
        return v & NB_SET;
    int fl = fcntl(c->fd, F_GETFL);
    int nb = fl >= 0 && (fl & O_NONBLOCK);
    if (nb_track && fl >= 0)
        rpal_cas_acq_rel(&c->nb, &v, v | NB_KNOWN | (nb ? NB_SET : 0));
    return nb;
}

/* The socket's SO_RCVTIMEO (SO_SNDTIMEO if FOR_ROOM) in ns, UINT64_MAX if
 * none: a blocking read or write on it gives up with -EAGAIN after that
 * long, as the kernel's would. */
uint64_t rpal__cx_sock_timeout(int fd, int for_room)
{
    struct timeval tv;
    socklen_t l = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, for_room ? SO_SNDTIMEO : SO_RCVTIMEO, &tv, &l) < 0 ||
        (tv.tv_sec <= 0 && tv.tv_usec <= 0))
        return UINT64_MAX;
    return (uint64_t)tv.tv_sec * 1000000000u + (uint64_t)tv.tv_usec * 1000u;
}

/* *LIMIT, rpal__cx_sock_timeout's answer for FD read once (0: not read yet; it
 * never answers 0). */
static uint64_t timeout_once(uint64_t *limit, int fd, int for_room)
{
    if (!*limit)
        *limit = rpal__cx_sock_timeout(fd, for_room);
    return *limit;
}

__thread struct rpal_sigs rpal__sigs __attribute__((tls_model("initial-exec")));

#define CONN_CLOSING 0x80000000u /* in struct conn's sleepers */

static int closing(const struct conn *c)
{
    return (rpal_load_relaxed(&c->sleepers) & CONN_CLOSING) != 0;
}

/* Whether a wait counts itself on C (then nothing frees it). */
static int has_sleepers(const struct conn *c)
{
    return (rpal_load_acquire(&c->sleepers) & ~CONN_CLOSING) != 0;
}

static void zombies_reap(void);

/* A wait on C begins: a close by another thread meanwhile does not free C
 * under it (zombies_reap skips C while it counts). */
static void sleeper_in(struct conn *c)
{
    rpal_fetch_add_acq_rel(&c->sleepers, 1);
}

/* It ends: C is not ours after this. The last one out of a closed C reaps
 * it, since the close's reap had to skip it. */
static void sleeper_out(struct conn *c)
{
    if (rpal_fetch_add_acq_rel(&c->sleepers, (uint32_t)-1) == (CONN_CLOSING | 1))
        zombies_reap();
}

/* Wait until data (or the end), or room when FOR_ROOM. The way to wait is
 * learned (src/wait.c); asleep, we wait on a futex on the other end's
 * index, in 20 ms slices after which the socket says whether the other end
 * is gone. O_NONBLOCK is asked (a system call) only when it is time to
 * sleep: a non-blocking descriptor then gives -EAGAIN, so it may have
 * spun for the learned budget first (which learns that such waits end in
 * nothing, and stops). */
static int conn_wait_in(struct conn *c, int for_room)
{
    static const struct rpal_chan_opts adaptive;
    const _Atomic uint32_t *word = for_room ? &c->rd.their->head : &c->rd.their->tail;
    struct wt_wait w;
    int err = 0;
    uint64_t limit = 0; /* the socket's timeout, read when first needed */
    struct rpal_sigs sigs = {rpal__sigs.all, rpal__sigs.intr};
    rpal__wt_begin(&w, &c->learn, &c->st, &adaptive, rpal_load_relaxed(&c->rd.their->pub.cpu));
    set_cpu(c, w.my_cpu);
    set_sleeps(c, 0);
    for (unsigned slow = 0;;) {
        if (closing(c)) {
            err = -EBADF; /* another thread closed it: before the end it caused */
            break;
        }
        if ((for_room ? has_room(c) : next_ready(c)) || at_end(c) || down_asked(c))
            break;
        if (rpal__sigs.all != sigs.all) {
            /* A handler ran (rpal run counts them): the kernel's call ends
             * with EINTR unless it has SA_RESTART and the socket has no
             * timeout (sock_intr_errno); else it goes on. */
            if ((err = rpal__sig_ends(&sigs, timeout_once(&limit, c->fd, for_room) == UINT64_MAX)))
                break;
            sigs.all = rpal__sigs.all;
        }
        int step = rpal__wt_pause(&w);
        if (step == 0)
            continue;
        int timed_out = 0;
        if (step == WT_SLEEP && !w.slept) {
            if (nonblocking(c)) {
                rpal__wt_end_empty(&w);
                return -EAGAIN;
            }
            timeout_once(&limit, c->fd, for_room);
        }
        if (w.slept && w.now - w.t0 >= limit) {
            rpal__wt_end_empty(&w); /* SO_RCVTIMEO / SO_SNDTIMEO ran out, as on the socket */
            set_sleeps(c, idle_sleeps(c));
            return -EAGAIN;
        }
        if (step == WT_SLEEP) {
            uint64_t cpu0;
            rpal__wt_sleep_begin(&w, 0, &cpu0);
            uint32_t v = rpal_load_relaxed(word);
            if (for_room)
                rpal_store_relaxed(&c->my->want_room, 1);
            set_sleeps(c, WT_WAKE_FUTEX);
            rpal_fence_seq_cst(); /* pairs with the fences in take() and rpal_write */
            if (!(for_room ? has_room(c) : next_ready(c)) && !at_end(c) &&
                rpal__sigs.all == sigs.all && !closing(c)) {
                /* 20 ms: then the socket says whether the other end is gone */
                int64_t slice = wt_slice_ns(wt_left_ns(w.t0, limit, w.now), CX_SLICE_NS);
                int r = rpal__prim_futex_wait(word, v, 1, slice);
                timed_out = r == -ETIMEDOUT;
                /* A handler rpal run did not count (or no rpal run): EINTR,
                 * the futex's answer; a counted one: the look above. */
                if (r == -EINTR && rpal__sigs.all == sigs.all)
                    err = -EINTR;
            }
            set_sleeps(c, 0);
            if (for_room)
                rpal_store_relaxed(&c->my->want_room, 0);
            rpal__wt_sleep_end(&w, cpu0);
            if (err)
                break;
        }
        if ((timed_out || (w.mode == WT_SPIN ? w.spins % 1024 == 0 : ++slow % 32 == 0)) &&
            !closing(c)) /* closed: the number may be another file's */
            look_socket(c);
    }
    rpal__wt_end(&w, w.slept ? wait_stamp(c) : 0);
    set_sleeps(c, idle_sleeps(c)); /* nobody looks after we return */
    if (rpal__wt_stats_due(&c->st, w.now))
        rpal__dom_stats_flush(c->d, &c->st);
    return err;
}

/* conn_wait_in, counted as a sleeper of C. */
static int conn_wait(struct conn *c, int for_room)
{
    sleeper_in(c);
    int err = conn_wait_in(c, for_room);
    sleeper_out(c);
    return err;
}

/* rpal_read; KERNEL 0: -EXDEV instead of the kernel's read. */
static ssize_t cx_read(int fd, void *buf, size_t len, int kernel)
{
    struct conn *c = conn_of(fd);
    if (!c) {
        struct cx_down *dn = down_of(fd);
        ssize_t n = dn ? down_read(fd, dn, buf, len) : -EXDEV;
        if (n != -EXDEV || !kernel)
            return n;
        n = read(fd, buf, len);
        return n < 0 ? -errno : n;
    }
    if (rpal__dom_check(c->d) < 0)
        return -ECHILD; /* a forked child: the rings are not mapped here */
    if (!buf && len)
        return -EFAULT;
    if (!len)
        return 0;
    if (c->nsets == 0)
        set_sleeps(c, 0); /* reading: a message now needs no wake-up */
    for (;;) {
        ssize_t n = take(c, buf, len);
        if (n != 0)
            return n;
        if (down_asked(c)) { /* the other end leaves the rings */
            int err = down_take(c, fd);
            return err < 0 ? err : cx_read(fd, buf, len, kernel);
        }
        if (at_end(c)) {
            /* The closed flag is stored after the last message: one more look. */
            n = take(c, buf, len);
            return n;
        }
        /* In an rpal epoll set, the set is where the application waits:
         * a non-blocking read says so at once, as the socket would. */
        if (c->nsets > 0 && nonblocking(c))
            return -EAGAIN;
        int err = conn_wait(c, 0);
        if (err == -EAGAIN) {
            /* Non-blocking, nothing came: look at the socket for the end
             * (the other end killed), as a read would; at most once a
             * millisecond, since a program that reads until EAGAIN after
             * every message would pay a system call each time. A poll
             * looks at the socket whenever it sleeps. */
            uint64_t now = rpal__prim_now_ns();
            if (now - c->eagain_ns < 1000000)
                return -EAGAIN;
            c->eagain_ns = now;
            drain(c);
            if (!c->eof)
                return -EAGAIN;
            continue;
        }
        if (err < 0)
            return err;
    }
}

ssize_t rpal_read(int fd, void *buf, size_t len)
{
    return cx_read(fd, buf, len, 1);
}

/* rpal_write; KERNEL 0: -EXDEV instead of the kernel's write. */
static ssize_t cx_write(int fd, const void *buf, size_t len, int kernel)
{
    struct conn *c = conn_of(fd);
    struct cx_down *dn = c ? NULL : down_of(fd);
    ssize_t n = dn ? down_write(fd, dn) : -EXDEV;
    if (!c && (n != -EXDEV || !kernel))
        return n;
    if (!c) {
        n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK)
            n = write(fd, buf, len);
        return n < 0 ? -errno : n;
    }
    if (rpal__dom_check(c->d) < 0)
        return -ECHILD;
    if (!buf && len)
        return -EFAULT;
    if (!len)
        return 0;
    if (len > CX_MAX_MSG)
        len = CX_MAX_MSG; /* a short write, as a socket may do */
    for (;;) {
        if (down_asked(c)) { /* the other end leaves the rings */
            int err = down_take(c, fd);
            return err < 0 ? err : cx_write(fd, buf, len, kernel);
        }
        if (write_end(c))
            return c->rd.broken ? -EPROTO : -EPIPE;
        if (has_room(c))
            break;
        if (c->rd.broken)
            return -EPROTO;
        int err = c->nsets > 0 && nonblocking(c) ? -EAGAIN : conn_wait(c, 1);
        if (err == -EAGAIN) {
            /* Ask for a wake-up when the other end makes room (EPOLLOUT). */
            rpal_store_relaxed(&c->my->want_room, 1);
            rpal_fence_seq_cst(); /* pairs with the fence in take() */
            if (!has_room(c))
                return -EAGAIN;
            continue;
        }
        if (err < 0)
            return err;
    }
    if (rpal_load_relaxed(&c->my->want_room))
        rpal_store_relaxed(&c->my->want_room, 0);
    uint32_t i = c->sent & (c->depth - 1);
    if (c->staging[i]) { /* read by the other end: its head passed it */
        rpal_free(c->staging[i]);
        c->staging[i] = NULL;
    }
    struct ch_entry *e = &c->my->e[i];
    e->tag = 0;
    e->len = (uint32_t)len;
    int kind = rpal__ch_entry_fill(e, buf, len, 0, &c->staging[i]);
    if (kind < 0)
        return kind;
    /* seqf last: pairs with the acquire in next_ready() */
    rpal_plain_store_release(&e->seqf, SEQF(c->sent + 1, (uint32_t)kind));
    c->sent++;
    /* An entry a few ahead, which the reader read a lap ago: ours before we
     * write it, so that the barrier below does not wait for it. */
    rpal_prefetch_write(&c->my->e[(c->sent + 4) & (c->depth - 1)]);
    c->st.msgs_out++;
    c->st.bytes_out += len;
    rpal_store_release(&c->my->tail, c->sent); /* for EPOLLET and sleepers */
    rpal_fence_seq_cst(); /* pairs with the fence a reader issues before it
                             sleeps: it sees our message or we see it sleeps */
    wake_peer(c, &c->my->tail);
    return (ssize_t)len;
}

ssize_t rpal_write(int fd, const void *buf, size_t len)
{
    return cx_write(fd, buf, len, 1);
}

/* ---- the upgrade ---- */

/* Send our hello H with our slot's MEMFD and our BELL (-1: none). */
static int hello_send(int fd, const struct fm_hello *h, int memfd, int bell, uint64_t deadline)
{
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(2 * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
    } u = {0};
    int fds[2] = {memfd, bell}, nfds = bell >= 0 ? 2 : 1;
    const char *p = (const char *)h;
    size_t done = 0;
    while (done < sizeof *h) {
        struct iovec iov = {(void *)(p + done), sizeof *h - done};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
        if (done == 0) {
            /* With the first byte: our slot, and our credentials, which the
             * kernel checks (only root may claim another pid). */
            m.msg_control = u.b;
            m.msg_controllen = CMSG_SPACE(nfds * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred));
            struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
            memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
            cm = CMSG_NXTHDR(&m, cm);
            struct ucred cr = {getpid(), getuid(), getgid()};
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_CREDENTIALS;
            cm->cmsg_len = CMSG_LEN(sizeof cr);
            memcpy(CMSG_DATA(cm), &cr, sizeof cr);
        }
        ssize_t r = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r > 0) {
            done += (size_t)r;
            continue;
        }
        if (r < 0 && errno != EAGAIN && errno != EINTR)
            return errno == EPIPE || errno == ECONNRESET ? -ECONNRESET : -errno;
        int err = rpal__prim_poll_until(fd, POLLOUT, deadline);
        if (err < 0)
            return err;
    }
    return 0;
}

/* Wait until the socket's next bytes are a hello's magic (0), other bytes
 * (-EPROTO), the end (-ECONNRESET) or the deadline (-ETIMEDOUT; DEADLINE 0:
 * look once). Nothing is consumed. */
static int hello_peek(int fd, uint64_t deadline)
{
    for (;;) {
        uint64_t magic = 0, want = FM_MAGIC;
        ssize_t r = recv(fd, &magic, sizeof magic, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0)
            return -ECONNRESET;
        if (r > 0 && memcmp(&magic, &want, (size_t)r))
            return -EPROTO;
        if (r == (ssize_t)sizeof magic)
            return 0;
        if (r < 0 && errno != EAGAIN && errno != EINTR)
            return -errno;
        int err = rpal__prim_poll_until(fd, POLLIN, deadline);
        if (err < 0)
            return err;
    }
}

#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76 /* Linux 6.5; glibc 2.36's headers lack them */
#endif
#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

/* The pidfd the kernel attaches to what we read while SO_PASSPIDFD is on
 * (SCM_PIDFD): of the process whose credentials came with the bytes, so
 * its own, whatever pid namespace it is in. Kept in *PIDFD if that is
 * not NULL and still -1; every other one is closed. */
static void cmsg_pidfd_take(struct msghdr *m, int *pidfd)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        int x;
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_PIDFD ||
            c->cmsg_len < CMSG_LEN(sizeof x))
            continue;
        memcpy(&x, CMSG_DATA(c), sizeof x);
        if (pidfd && *pidfd < 0 && x >= 0)
            *pidfd = x;
        else if (x >= 0)
            close(x);
    }
}

/* Receive the other end's hello and the descriptors sent with it (FDS[0]
 * its slot's memfd, FDS[1] its bell, -1 if missing). Its first bytes are
 * only peeked at until they prove to be one, so that anything else is left
 * in the socket. */
static int hello_recv(int fd, struct fm_hello *h, int fds[2], struct ucred *cr, int *pidfd,
                      uint64_t deadline)
{
    fds[0] = fds[1] = -1;
    cr->pid = 0;
    *pidfd = -1;
    int err = hello_peek(fd, deadline);
    if (err < 0)
        return err;
    char *p = (char *)h;
    size_t done = 0;
    while (done < sizeof *h) {
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(struct ucred)) +
                   CMSG_SPACE(sizeof(int))];
        } u;
        struct iovec iov = {p + done, sizeof *h - done};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                           .msg_controllen = sizeof u.b};
        ssize_t r = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r > 0) {
            /* The credentials travel with the first byte only. */
            rpal__svc_cmsg_take(&m, fds, 2, done == 0 ? cr : NULL);
            cmsg_pidfd_take(&m, done == 0 ? pidfd : NULL);
            done += (size_t)r;
            continue;
        }
        if (r == 0)
            return -ECONNRESET;
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        int err = rpal__prim_poll_until(fd, POLLIN, deadline);
        if (err < 0)
            return err;
    }
    return 0;
}

int rpal__cx_hello_check(const struct fm_hello *h, pid_t pid, unsigned pslot, uint64_t slot_size)
{
    if (h->magic != FM_MAGIC || h->version != FM_VERSION || h->slot != pslot ||
        h->pid != pid || h->slot_size != slot_size || !h->depth || h->depth > 1024 ||
        (h->depth & (h->depth - 1)) || h->ring % 64)
        return -EPROTO;
    return 0;
}

/* The bytes of the ring a hello H names. */
static uint64_t cx_ring_bytes(const struct fm_hello *h)
{
    return sizeof(struct cx_ring) + (uint64_t)h->depth * sizeof(struct ch_entry);
}

int rpal__cx_ring_check(const struct fm_hello *h, uint64_t base, uint64_t size)
{
    if (!span_inside(h->ring, cx_ring_bytes(h), base, size))
        return -EPROTO;
    const struct cx_ring *r = (const struct cx_ring *)(uintptr_t)h->ring;
    return r->magic == CX_MAGIC && r->depth == h->depth ? 0 : -EPROTO;
}

static void peer_drop(struct conn *c)
{
    if (!c->peer)
        return;
    rpal_peer *p = c->peer;
    rpal__peer_unpin(p, 0);
    if (p->by_fdmap && rpal_load_acquire(&p->nchans) == 1)
        rpal_peer_release(p); /* its last connection: we mapped it for them */
    rpal__peer_put(p, 0);
    c->peer = NULL;
}

static void conn_free(struct conn *c)
{
    rpal__dom_stats_close(c->d, &c->st, 0);
    if (c->bell >= 0)
        close(c->bell);
    if (c->their_bell >= 0)
        close(c->their_bell);
    peer_drop(c);
    if (c->staging)
        for (uint32_t k = 0; k < c->depth; k++)
            if (c->staging[k])
                rpal_free(c->staging[k]);
    free(c->staging);
    if (c->my_raw)
        rpal_free(c->my_raw);
    free(c);
}

static void retired_reap(uint64_t now);

/* Free the closed connections whose other end read everything or went, and
 * the downgraded ones it can no longer read (before a hello: each holds
 * its peer's record, which a new process in that slot must not find). */
static void zombies_reap(void)
{
    pthread_mutex_lock(&cx_lock);
    retired_reap(rpal__prim_now_ns());
    struct conn **pp = &zombies;
    while (*pp) {
        struct conn *c = *pp;
        if (rpal__dom_check(c->d) == 0 && !has_sleepers(c) &&
            (rpal_load_acquire(&c->peer->gone) || rpal_load_acquire(&c->rd.their->head) == c->sent ||
             poll(&(struct pollfd){c->peer->pidfd, POLLIN, 0}, 1, 0) != 0)) {
            *pp = c->next_zombie;
            conn_free(c);
        } else {
            pp = &c->next_zombie;
        }
    }
    pthread_mutex_unlock(&cx_lock);
}

/* Is FD a connected Unix stream socket whose other end may speak rpal? 1
 * yes, with the kernel's word on who connected in *CR (and that process's
 * slot in *PSLOT if it is a member of D); 0 no (nothing was sent, the
 * socket stays as it was); or a negative errno. DEADLINE bounds the wait
 * for a socketpair's other end to speak first. */
static int fdmap_candidate(rpal_domain *d, int fd, uint64_t deadline, struct ucred *cr,
                           unsigned *pslot)
{
    int type;
    socklen_t l = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0)
        return -errno;
    struct sockaddr_un sa;
    l = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &l) < 0)
        return -errno;
    if (type != SOCK_STREAM || sa.sun_family != AF_UNIX)
        return -EPROTOTYPE;
    l = sizeof *cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cr, &l) < 0)
        return -errno;
    /* The kernel's word on who connected (or, for a socketpair, who made
     * it: then it may be us). Not a member of our domain: nothing is sent,
     * the socket stays as it was. A hello already waiting says the other
     * end speaks rpal whatever the records said a moment ago. */
    uint64_t ino = rpal__prim_sock_peer_ino(fd); /* 0 before Linux 6.9 */
    if (cr->pid <= 0 && !ino)
        return 0; /* another pid namespace, and the kernel cannot say who */
    if (cr->pid == getpid()) {
        /* We made the socketpair: who is at the other end is unknown. Let
         * it speak first; silence until the deadline means it is not rpal
         * (and nothing was sent). */
        int err = hello_peek(fd, deadline);
        if (err < 0)
            return err == -ETIMEDOUT ? 0 : err;
    } else if (rpal__dom_member_find(d, cr->pid, ino, pslot, NULL) < 0 &&
               hello_peek(fd, 0) < 0) {
        return 0;
    }
    return 1;
}

/* A connection for FD of D, its ring allocated in our slot: NULL if memory
 * ran out. */
static struct conn *conn_new(rpal_domain *d, int fd)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->d = d;
    c->depth = CX_DEPTH;
    c->st.idx = -1;
    c->their_bell = -1;
    c->bell = rpal__wt_bells() ? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) : -1;
    c->staging = calloc(c->depth, sizeof *c->staging);
    c->my = rpal__ch_slot_alloc(sizeof *c->my + c->depth * sizeof(struct ch_entry), &c->my_raw);
    if (!c->staging || !c->my) {
        conn_free(c);
        return NULL;
    }
    c->my->magic = CX_MAGIC;
    c->my->depth = c->depth;
    /* Not waiting in rpal yet: a wake-up is a byte on the socket. */
    rpal_store_relaxed(&c->my->pub.sleeps, WT_WAKE_SOCK);
    rpal_store_relaxed(&c->my->pub.cpu, rpal__wt_my_cpu());
    return c;
}

/* Turn SO_PASSPIDFD on FD on (ON 1) or off: returns what it was (1, 0),
 * or -1 where the kernel has none (before 6.5: then pids identify, which
 * holds within one pid namespace only). */
static int pidfd_pass(int fd, int on)
{
    int was = 0;
    socklen_t l = sizeof was;
    if (on && getsockopt(fd, SOL_SOCKET, SO_PASSPIDFD, &was, &l) < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_PASSPIDFD, &on, sizeof on) < 0)
        return -1;
    return was != 0;
}

/* What SO_PASSCRED and SO_PASSPIDFD were before a hello turned them on. */
struct hello_was {
    int passcred, passpidfd;
};

/* Put back what hello_begin turned on. */
static void hello_restore(int fd, const struct hello_was *was)
{
    if (!was->passcred)
        setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &was->passcred, sizeof was->passcred);
    if (was->passpidfd == 0)
        pidfd_pass(fd, 0);
}

/* Send our hello (with our slot's memfd and our bell), SO_PASSCRED and
 * SO_PASSPIDFD on so that the other end's credentials and pidfd come with
 * its hello; *WAS says what they were before (hello_end puts it back). */
static void hello_pass_on(int fd, struct hello_was *was)
{
    /* Credentials ride with the hello (the connection's may be stale: a
     * socketpair's are its maker's); the kernel adds them to what we read
     * only while SO_PASSCRED is on. */
    int one = 1;
    socklen_t l = sizeof was->passcred;
    was->passcred = 0;
    getsockopt(fd, SOL_SOCKET, SO_PASSCRED, &was->passcred, &l);
    setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    was->passpidfd = pidfd_pass(fd, 1);
}

static int hello_send_mine(struct conn *c, uint64_t deadline)
{
    rpal_domain *d = c->d;
    struct fm_hello mine = {.magic = FM_MAGIC, .version = FM_VERSION, .slot = d->slot,
                            .slot_size = d->slot_size, .ring = (uintptr_t)c->my,
                            .depth = c->depth, .pid = d->pid};
    return hello_send(c->fd, &mine, d->memfd, c->bell, deadline);
}

static int hello_begin(struct conn *c, uint64_t deadline, struct hello_was *was)
{
    hello_pass_on(c->fd, was);
    return hello_send_mine(c, deadline);
}

/* Read the other end's hello into *THEIR, with its memfd in *MEMFD (-1:
 * none) and the credentials and pidfd (*PIDFD, -1: none) the kernel
 * attached in *CR; keep its bell if we may write it. -ETIMEDOUT: nothing
 * was consumed, and it may be called again. */
static int hello_end(struct conn *c, uint64_t deadline, const struct hello_was *was,
                     struct fm_hello *their, int *memfd, struct ucred *cr, int *pidfd)
{
    int fds[2] = {-1, -1};
    int err = hello_recv(c->fd, their, fds, cr, pidfd, deadline);
    if (err == -ETIMEDOUT && fds[0] < 0)
        return err;
    *memfd = fds[0];
    /* Its bell, only if it is an eventfd of a process of our own user. A
     * write to an eventfd blocks when its count is full, and its O_NONBLOCK
     * belongs to the file both ends share: another user could make our
     * writes block. One of ours may ptrace us anyway (docs/hardening.md). */
    if (fds[1] >= 0 && cr->uid == getuid() && rpal__prim_is_eventfd(fds[1]))
        c->their_bell = fds[1];
    else if (fds[1] >= 0)
        close(fds[1]);
    hello_restore(c->fd, was);
    return err == -ETIMEDOUT ? -EPROTO : err; /* a hello cut short */
}

/* Who sent the hello: the kernel's credentials CR and pidfd PIDFD (-1:
 * none) name a live member of D other than us, at *PSLOT, which recorded
 * the pid *RECPID in its own pid namespace (the hello says the same). */
static int conn_who(rpal_domain *d, const struct ucred *cr, int pidfd, unsigned *pslot,
                    pid_t *recpid)
{
    uint64_t ino = rpal__prim_pidfd_ino(pidfd);
    if ((cr->pid <= 0 && !ino) || cr->pid == getpid() || (ino && ino == rpal__prim_self_ino()))
        return -EPROTO;
    return rpal__dom_member_find(d, cr->pid, ino, pslot, recpid) < 0 ? -EPROTO : 0;
}

/* The other end's hello came first (always so on a socketpair we made,
 * whose other end may have been passed to anyone): read it, and send ours,
 * our slot's memfd with it, only to a member the kernel's credentials
 * name. */
static int hello_theirs_first(struct conn *c, uint64_t deadline, struct fm_hello *their,
                              int *memfd, struct ucred *cr, int *pidfd)
{
    struct hello_was was;
    unsigned pslot;
    pid_t recpid;
    hello_pass_on(c->fd, &was);
    int err = hello_end(c, deadline, &was, their, memfd, cr, pidfd); /* puts WAS back */
    if (err == 0 && (err = conn_who(c->d, cr, *pidfd, &pslot, &recpid)) == 0)
        err = hello_send_mine(c, deadline);
    return err;
}

/* Both halves at once. */
static int hello_exchange(struct conn *c, uint64_t deadline, struct fm_hello *their,
                          int *memfd, struct ucred *cr, int *pidfd)
{
    struct hello_was was;
    int err;
    *memfd = *pidfd = -1;
    if (hello_peek(c->fd, 0) == 0)
        return hello_theirs_first(c, deadline, their, memfd, cr, pidfd);
    if ((err = hello_begin(c, deadline, &was)) == 0 &&
        (err = hello_end(c, deadline, &was, their, memfd, cr, pidfd)) != -ETIMEDOUT)
        return err;
    hello_restore(c->fd, &was);
    return err;
}

/* Before a hello from the process (PID, INO) in slot PSLOT: if our record
 * of that slot is another process's, which is gone, the connections that
 * still hold it (the application has not read their end yet) go back to
 * their socket here, keeping what it wrote and we did not read (down_take,
 * as when an end leaves); the record goes with them. Otherwise the new
 * process would meet the dead one's record and be refused as an impostor
 * (its connection broken). Like any downgrade, this assumes that no other
 * thread is in a call on one of those connections meanwhile. */
static void stale_evict(rpal_domain *d, unsigned pslot, pid_t pid, uint64_t ino)
{
    pthread_mutex_lock(&d->lock);
    rpal_peer *p = pslot < d->nslots ? rpal__peer_at_slot(d, pslot) : NULL;
    int stale = p && !rpal__peer_is(p, pid, ino) && p->pidfd >= 0 &&
                poll(&(struct pollfd){p->pidfd, POLLIN, 0}, 1, 0) > 0;
    pthread_mutex_unlock(&d->lock);
    while (stale) {
        int fd = -1;
        struct conn *c = NULL;
        pthread_mutex_lock(&cx_lock);
        for (int pg = 0; pg < FD_PAGES && !c; pg++) {
            void **cp = rpal_load_relaxed(&conns.pages[pg]); /* cx_lock: as every store */
            for (int k = 0; cp && k < FD_PAGE && !c; k++) {
                struct conn *x = rpal_plain_load_relaxed(&cp[k]);
                if (x && x->peer == p) {
                    c = x;
                    fd = pg * FD_PAGE + k;
                }
            }
        }
        pthread_mutex_unlock(&cx_lock);
        if (!c || down_take(c, fd) < 0)
            break;
    }
    if (stale)
        zombies_reap(); /* the retired ones: their other end is gone */
}

/* Everything in the hello THEIR is the other process's word: check it
 * against what the kernel says (credentials CR, its claim, its slot's
 * MEMFD), then map its slot (c->peer, pinned: their ring is read on every
 * wait, from whichever thread) and take its ring. */
static int conn_adopt(struct conn *c, const struct fm_hello *their, int memfd,
                      const struct ucred *cr, int pidfd)
{
    rpal_domain *d = c->d;
    unsigned pslot;
    pid_t recpid;
    int err, created;
    if ((err = conn_who(d, cr, pidfd, &pslot, &recpid)) < 0 || memfd < 0 ||
        rpal__cx_hello_check(their, recpid, pslot, d->slot_size) < 0) {
        if (pidfd >= 0)
            close(pidfd);
        return -EPROTO;
    }
    uint64_t ino = rpal__prim_pidfd_ino(pidfd);
    stale_evict(d, pslot, cr->pid, ino);
    if ((err = rpal__peer_adopt_who(d, memfd, cr, pidfd, ino, pslot, their->slot_size, &c->peer,
                                    &created)) < 0) {
        c->peer = NULL;
        return err;
    }
    if (created)
        c->peer->by_fdmap = 1;
    rpal_fetch_add_acq_rel(&c->peer->nchans, 1);
    c->rd.sbase = c->peer->base;
    c->rd.ssize = c->peer->size;
    c->rd.peer = c->peer;
    if ((err = rpal__peer_pin(c->peer)) < 0) {
        if (created)
            rpal_peer_release(c->peer);
        rpal__peer_put(c->peer, 0);
        c->peer = NULL;
        return err;
    }
    if (!rpal__peer_readable(c->peer, their->ring, cx_ring_bytes(their)))
        return -EPROTO; /* not backed by their slot's file: SIGBUS to read */
    if ((err = rpal__cx_ring_check(their, c->rd.sbase, c->rd.ssize)) < 0)
        return err;
    c->rd.their = (const struct cx_ring *)(uintptr_t)their->ring;
    c->rd.tdepth = their->depth;
    c->st.peer_slot = pslot;
    return 0;
}

/* The hello exchange of C failed with ERR: let go of what it brought
 * (MEMFD, PIDFD: -1 none) and of C; the error for the caller. */
static int hello_failed(struct conn *c, int memfd, int pidfd, int err)
{
    if (memfd >= 0)
        close(memfd);
    if (pidfd >= 0)
        close(pidfd);
    conn_free(c);
    return err == -ECONNRESET || err == -EBADMSG || err == -EINVAL ? -EPROTO : err;
}

/* Take the other end's hello THEIR (with its slot's MEMFD, and the
 * credentials CR and pidfd PIDFD): check it, map its ring and enter C in
 * the table of connections. 1, or a negative errno with C freed. */
static int conn_publish(struct conn *c, const struct fm_hello *their, int memfd,
                        const struct ucred *cr, int pidfd)
{
    int err = conn_adopt(c, their, memfd, cr, pidfd); /* takes PIDFD */
    if (memfd >= 0)
        close(memfd);
    if (err == 0) {
        rpal__wt_learn_init(&c->learn);
        rpal__wt_learn_init(&c->poll_learn);
        c->st.kind = RPAL_STATS_CONN;
        c->st.peer_pid = cr->pid;
        c->st.fd = c->fd;
        rpal__dom_stats_open(c->d, &c->st, 0);
        pthread_mutex_lock(&cx_lock);
        err = fdtab_put(&conns, c->fd, c);
        rpal_fetch_add_relaxed(&conn_gen, 1);
        pthread_mutex_unlock(&cx_lock);
    }
    return err < 0 ? hello_failed(c, -1, -1, err) : 1;
}

int rpal_uds_fdmap(rpal_domain *d, int fd, int timeout_ms)
{
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return -EBADF;
    if (conn_of(fd))
        return 1;
    zombies_reap();
    uint64_t deadline = rpal__prim_deadline(timeout_ms);
    struct ucred cr;
    unsigned pslot;
    if ((err = fdmap_candidate(d, fd, deadline, &cr, &pslot)) <= 0)
        return err;
    struct conn *c = conn_new(d, fd);
    if (!c)
        return -ENOMEM;
    struct fm_hello their;
    int memfd = -1, pidfd = -1;
    if ((err = hello_exchange(c, deadline, &their, &memfd, &cr, &pidfd)) < 0)
        return hello_failed(c, memfd, pidfd, err);
    return conn_publish(c, &their, memfd, &cr, pidfd);
}

/* ---- for src/run.c: the upgrade in two halves, and the socket calls ---- */

/* An upgrade begun: our hello is sent, the other end's not read yet. */
struct fdmap_half {
    struct conn *c;
    struct hello_was was;
};
static struct fdtab halves; /* fd -> struct fdmap_half */

int rpal__cx_fdmap_begin(rpal_domain *d, int fd, int timeout_ms)
{
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return -EBADF;
    if (conn_of(fd) || fdtab_get(&halves, fd))
        return 1;
    zombies_reap();
    uint64_t deadline = rpal__prim_deadline(timeout_ms);
    struct ucred cr;
    unsigned pslot;
    if ((err = fdmap_candidate(d, fd, rpal__prim_deadline(0), &cr, &pslot)) <= 0)
        return err;
    struct fdmap_half *h = calloc(1, sizeof *h);
    if (!h || !(h->c = conn_new(d, fd))) {
        free(h);
        return -ENOMEM;
    }
    if ((err = hello_begin(h->c, deadline, &h->was)) == 0) {
        pthread_mutex_lock(&cx_lock);
        err = fdtab_put(&halves, fd, h);
        pthread_mutex_unlock(&cx_lock);
        if (err == 0)
            return 1;
    }
    hello_restore(fd, &h->was);
    conn_free(h->c);
    free(h);
    return err == -ECONNRESET ? -EPROTO : err;
}

int rpal__cx_fdmap_end(int fd, int timeout_ms)
{
    struct fdmap_half *h = fdtab_get(&halves, fd);
    if (!h)
        return conn_of(fd) ? 1 : -ENOENT;
    struct fm_hello their;
    struct ucred cr;
    int memfd = -1, pidfd = -1;
    int err = hello_end(h->c, rpal__prim_deadline(timeout_ms), &h->was, &their, &memfd, &cr,
                        &pidfd);
    if (err == -ETIMEDOUT)
        return -EAGAIN; /* not there yet: call again */
    pthread_mutex_lock(&cx_lock);
    fdtab_put(&halves, fd, NULL);
    pthread_mutex_unlock(&cx_lock);
    struct conn *c = h->c;
    free(h);
    if (err < 0)
        return hello_failed(c, memfd, pidfd, err);
    /* A connection closed a moment ago to a process that has exited since
     * may still hold its peer, in the slot the answering process now has
     * (a client that reconnects to a server forking one process per
     * connection): let it go first. */
    zombies_reap();
    return conn_publish(c, &their, memfd, &cr, pidfd);
}

void rpal__cx_fdmap_drop(int fd)
{
    struct fdmap_half *h = fdtab_get(&halves, fd);
    if (!h)
        return;
    pthread_mutex_lock(&cx_lock);
    fdtab_put(&halves, fd, NULL);
    pthread_mutex_unlock(&cx_lock);
    conn_free(h->c);
    free(h);
}

int rpal__cx_wait_begin(int fd, struct wt_wait *w)
{
    static const struct rpal_chan_opts adaptive;
    struct conn *c = conn_of(fd);
    if (!c || rpal__dom_check(c->d) < 0)
        return -ENOENT;
    /* No counters (W->st) while the poll waits: another thread may close
     * FD meanwhile and free C; rpal__cx_wait_end finds it again. */
    rpal__wt_begin(w, &c->poll_learn, NULL, &adaptive, rpal_load_relaxed(&c->rd.their->pub.cpu));
    return 0;
}

void rpal__cx_wait_end(int fd, struct wt_wait *w)
{
    struct conn *c = conn_of(fd);
    if (!c || w->l != &c->poll_learn)
        return; /* closed meanwhile (by another thread): nothing to learn */
    w->st = &c->st;
    c->st.budget_ns = w->budget;
    rpal__wt_end(w, w->slept ? wait_stamp(c) : 0);
    if (rpal__wt_stats_due(&c->st, w->now))
        rpal__dom_stats_flush(c->d, &c->st);
}

int rpal__cx_poll(int fd, int events, int how)
{
    struct conn *c = conn_of(fd);
    if (!c) {
        struct cx_down *dn = down_of(fd);
        return dn ? down_poll(fd, dn, events) : -ENOENT;
    }
    if (rpal__dom_check(c->d) < 0)
        return POLLNVAL;
    if (down_asked(c)) /* the other end leaves the rings */
        return down_take(c, fd) < 0 ? POLLERR : rpal__cx_poll(fd, events, how);
    /* The socket said something: wake-up bytes, or the end. Bytes that
     * came with a message the caller will now read are left to that read
     * (take() reads them): meanwhile the socket stays readable for any
     * other waiter of the connection (an rpal epoll set, another thread's
     * poll), as it would with the kernel's own data. Bytes read here may
     * have been what a set of ours, asleep in another thread, waits for:
     * its bell passes them on. */
    if ((how & CX_POLL_DRAIN) && !((events & POLLIN) && (c->rd.off || next_ready(c)))) {
        uint32_t before = c->drained;
        drain(c);
        if (c->drained != before && c->nsets > 0 && c->bell >= 0)
            ring_bell(c->bell);
    }
    if (how & CX_POLL_ARM) {
        /* The caller is about to wait outside rpal (poll, select, a set of
         * the kernel's), on the socket: the other end must wake it with a
         * byte there, even if the connection is in an rpal epoll set too
         * (whose bell this caller does not watch; the set watches the
         * socket as well), and say when it makes room. */
        set_sleeps(c, WT_WAKE_SOCK);
        if (events & POLLOUT)
            rpal_store_relaxed(&c->my->want_room, 1);
        rpal_fence_seq_cst(); /* pairs with the fences in rpal_write and take() */
    }
    if (how & CX_POLL_AWAKE) {
        set_cpu(c, rpal__wt_my_cpu());
        /* In a set, whose thread may be asleep on its bell: that stays
         * published (the other end rings it in vain while we spin). */
        if (c->nsets == 0)
            set_sleeps(c, 0);
    }
    if (how & CX_POLL_IDLE)
        set_sleeps(c, idle_sleeps(c)); /* nobody looks after we return */
    int r = 0;
    if (c->rd.off || next_ready(c))
        r |= POLLIN;
    if (at_end(c))
        r |= POLLIN | POLLRDHUP | POLLHUP;
    if (has_room(c) || at_end(c))
        r |= POLLOUT;
    if (c->rd.broken)
        r |= POLLERR;
    r &= events | POLLHUP | POLLERR | POLLNVAL;
    /* In a set as well: the set's thread may publish its own way to wake
     * it while the caller sleeps on the socket. */
    return (how & CX_POLL_ARM) && c->nsets > 0 ? r | CX_POLL_SHARED : r;
}

/* Whether a read of C would not wait: a message, the end, or a downgrade. */
static int read_ready(const struct conn *c)
{
    return c->rd.off || next_ready(c) || at_end(c) || down_asked(c);
}

int rpal__cx_poll_sleep(int fd, int64_t max_ns, struct wt_wait *w, const struct rpal_sigs *sigs,
                        int restarts)
{
    struct conn *c = conn_of(fd);
    if (!c || c->nsets > 0 || rpal__dom_check(c->d) < 0)
        return -EXDEV;
    /* As conn_wait: the other end's tail, our state published, a fence,
     * one more look (one of the two sees the other). */
    const _Atomic uint32_t *word = &c->rd.their->tail;
    uint32_t v = rpal_load_relaxed(word);
    sleeper_in(c);
    set_sleeps(c, WT_WAKE_FUTEX);
    rpal_fence_seq_cst(); /* pairs with the fences in take() and rpal_write */
    int r = 0, ready = read_ready(c);
    if (!ready && rpal__sig_ends(sigs, restarts)) {
        r = -EINTR; /* a handler ran since the call began, before we sleep */
    } else if (!ready && !closing(c)) {
        uint64_t cpu0 = 0;
        if (w)
            rpal__wt_sleep_begin(w, 0, &cpu0);
        /* 20 ms at most: then the socket says whether the other end is gone */
        r = rpal__prim_futex_wait(word, v, 1, wt_slice_ns((uint64_t)max_ns, CX_SLICE_NS));
        if (w)
            rpal__wt_sleep_end(w, cpu0);
        /* Woken with no message: the other end's half close (its end
         * travels on the socket) or its leaving; the slice's end: whether
         * it is gone. */
        if ((r == -ETIMEDOUT || !read_ready(c)) && !closing(c))
            look_socket(c); /* (closed: the number may be another file's now) */
        /* Only SA_RESTART handlers ran (rpal run counted them), and the
         * kernel would restart this call: look again. */
        if (r == -EINTR && rpal__sig_restarts(sigs, restarts))
            r = 0;
    }
    set_sleeps(c, idle_sleeps(c));
    sleeper_out(c);
    return r == -EINTR ? -EINTR : 0; /* closed meanwhile: the look says POLLNVAL */
}

ssize_t rpal__cx_peek(int fd, void *buf, size_t len)
{
    struct conn *c = conn_of(fd);
    if (!c) {
        struct cx_down *dn = down_of(fd);
        return dn ? down_peek(dn, buf, len) : -EXDEV;
    }
    if (rpal__dom_check(c->d) < 0)
        return -ECHILD;
    if (down_asked(c) && down_take(c, fd) == 0)
        return rpal__cx_peek(fd, buf, len);
    struct cx_reader r = c->rd; /* a copy: nothing is consumed */
    size_t got = rpal__cx_take(&r, buf, len);
    return got == 0 && r.broken ? -EPROTO : (ssize_t)got;
}

int rpal__cx_shutdown(int fd, int how)
{
    struct conn *c = conn_of(fd);
    if (shutdown(fd, how) < 0)
        return -errno;
    /* The end of our half travels on the socket (the other end's drain()
     * sees it); a reader asleep on a futex must look now, not in 20 ms. */
    if (c && how != SHUT_RD && rpal__dom_check(c->d) == 0) {
        rpal_fence_seq_cst();
        if (rpal_load_relaxed(&c->rd.their->pub.sleeps) == WT_WAKE_FUTEX)
            rpal__prim_futex_wake(&c->my->tail, INT_MAX, 1);
        else
            wake_peer(c, &c->my->tail);
    }
    return 0;
}

/* FD (C's) leaves the table of connections, and FN runs on FD's item in
 * every epoll set that has one, under cx_lock (with ARG). */
static void conn_forget(struct conn *c, int fd,
                        void (*fn)(struct conn *c, struct ep_set *s, struct ep_item *it, int fd,
                                   int arg),
                        int arg)
{
    pthread_mutex_lock(&cx_lock);
    fdtab_put(&conns, fd, NULL);
    for (int pg = 0; pg < FD_PAGES; pg++) {
        void **sp = rpal_load_relaxed(&sets.pages[pg]); /* cx_lock: as every store */
        for (int k = 0; sp && k < FD_PAGE; k++) {
            struct ep_set *s = rpal_plain_load_relaxed(&sp[k]);
            struct ep_item *it = s ? fdtab_get(s->items, fd) : NULL;
            if (it)
                fn(c, s, it, fd, arg);
        }
    }
    rpal_fetch_add_relaxed(&conn_gen, 1);
    pthread_mutex_unlock(&cx_lock);
}

/* A closed connection's item: its bell out of the set, the item free. */
static void item_closed(struct conn *c, struct ep_set *s, struct ep_item *it, int fd, int arg)
{
    (void)fd, (void)arg;
    if (it->kbell)
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->bell, NULL);
    it->in_use = 0;
    it->kbell = 0;
    it->parked = 0;
}

int rpal_close(int fd)
{
    struct conn *c = conn_of(fd);
    if (c) {
        /* As close() takes a descriptor out of every epoll set. */
        conn_forget(c, fd, item_closed, -1);
        if (rpal__dom_check(c->d) < 0) {
            c = NULL; /* a forked child: the rings are its parent's */
        } else {
            /* After our last message: pairs with the acquire in at_end(). */
            rpal_store_release(&c->my->closed, 1);
            rpal_fence_seq_cst(); /* as after a message: it sees the flag or we
                                     see it sleeps */
            if (rpal_load_relaxed(&c->rd.their->pub.sleeps) == WT_WAKE_FUTEX) {
                rpal__prim_futex_wake(&c->my->tail, INT_MAX, 1);
                rpal__prim_futex_wake(&c->my->head, INT_MAX, 1);
            }
            /* Our threads asleep on it (they look at CONN_CLOSING after
             * the fence before they sleep): they leave. */
            if (atomic_fetch_or_explicit(&c->sleepers, CONN_CLOSING, memory_order_seq_cst) &
                ~CONN_CLOSING) {
                rpal__prim_futex_wake(&c->rd.their->tail, INT_MAX, 1);
                rpal__prim_futex_wake(&c->rd.their->head, INT_MAX, 1);
            }
        }
    }
    struct cx_down *dn = c ? NULL : down_of(fd);
    if (dn)
        down_drop(fd, dn, 1); /* what it held goes with it, as a socket's buffer */
    int r = close(fd);
    int err = r < 0 ? -errno : 0;
    if (c) {
        /* The other end may still be reading our ring: keep it until it
         * has read everything or is gone. */
        pthread_mutex_lock(&cx_lock);
        c->next_zombie = zombies;
        zombies = c;
        pthread_mutex_unlock(&cx_lock);
        zombies_reap();
    }
    return err;
}

/* ---- epoll ---- */

static struct ep_item *item_of(struct ep_set *s, int fd)
{
    return fdtab_get(s->items, fd);
}

/* Put C's bell (FD's) in the kernel set of S, edge-triggered: every wake-up
 * the other end writes is an event, and none needs reading. cx_lock held. */
static void bell_register(struct ep_set *s, struct ep_item *it, struct conn *c, int fd)
{
    if (it->kbell || c->bell < 0)
        return;
    struct epoll_event kev = {.events = EPOLLIN | EPOLLET, .data.u64 = (uint64_t)fd | BELL_TAG};
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, c->bell, &kev) == 0 || errno == EEXIST)
        it->kbell = 1;
}

/* Recompute the set's list of mapped descriptors when any table changed;
 * a descriptor mapped after it was added is re-registered in the kernel
 * for wake-ups and hang-ups only. Only the waiting thread calls this. */
static int set_sync(struct ep_set *s)
{
    unsigned g = rpal_load_acquire(&conn_gen);
    if (g == s->gen)
        return 0;
    pthread_mutex_lock(&cx_lock);
    s->nmapped = 0;
    for (int pg = 0; pg < FD_PAGES; pg++) {
        void **ip = rpal_load_relaxed(&s->items->pages[pg]); /* cx_lock: as every store */
        for (int k = 0; ip && k < FD_PAGE; k++) {
            struct ep_item *it = rpal_plain_load_relaxed(&ip[k]);
            int fd = pg * FD_PAGE + k;
            struct conn *c = it && it->in_use ? conn_of(fd) : NULL;
            if (!c)
                continue;
            /* The kernel's set is the truth: a record it does not hold is
             * stale (the set or the descriptor was closed and its number
             * reused) and is dropped. MOD also re-registers a descriptor
             * mapped after it was added, for wake-ups and hang-ups only. */
            struct epoll_event kev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)fd};
            if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &kev) < 0) {
                if (it->kmapped)
                    c->nsets--;
                it->in_use = 0;
                continue;
            }
            if (!it->kmapped) {
                it->kmapped = 1;
                it->seen_tail = c->rd.head;
                c->nsets++;
            }
            bell_register(s, it, c, fd);
            if (s->nmapped == s->cmapped) {
                int n = s->cmapped ? s->cmapped * 2 : 16;
                int *m = realloc(s->mapped, (size_t)n * sizeof *m);
                if (!m) {
                    pthread_mutex_unlock(&cx_lock);
                    return -ENOMEM; /* retried at the next wait (gen unchanged) */
                }
                s->mapped = m;
                s->cmapped = n;
            }
            s->mapped[s->nmapped++] = fd;
        }
    }
    s->gen = g;
    pthread_mutex_unlock(&cx_lock);
    return 0;
}

/* The ring events of the set's mapped descriptors, into EV (at most MAX).
 * PEEK: only say whether there is one, changing nothing. */
static int collect(struct ep_set *s, struct epoll_event *ev, int max, int peek)
{
    int n = 0;
    for (int k = 0; k < s->nmapped && n < max; k++) {
        int fd = s->mapped[k];
        struct ep_item *it = item_of(s, fd);
        struct conn *c = conn_of(fd);
        if (!c || !it || !it->in_use || it->disabled)
            continue;
        if (down_asked(c)) {
            /* The other end leaves the rings: FD is the kernel's in the
             * set from now on, which reports it. */
            (void)down_take(c, fd);
            continue;
        }
        uint32_t want = it->events, r = 0;
        int end = at_end(c);
        if (want & EPOLLIN) {
            int readable = c->rd.off || next_ready(c);
            if (!(want & EPOLLET)) {
                if (readable || end)
                    r |= EPOLLIN;
            } else if (readable) {
                /* An edge: messages published since the last report. */
                uint32_t t = rpal_load_acquire(&c->rd.their->tail);
                if (t != it->seen_tail) {
                    r |= EPOLLIN;
                    if (!peek)
                        it->seen_tail = t;
                }
            }
        }
        /* The end is reported whatever was asked for, as epoll does
         * (once, with EPOLLET). */
        if (end && (!(want & EPOLLET) || !it->end_seen)) {
            r |= EPOLLHUP | (want & (EPOLLRDHUP | EPOLLIN));
            if (!peek)
                it->end_seen = 1;
        }
        if (want & EPOLLOUT) {
            int room = !end && has_room(c);
            if (!(want & EPOLLET)) {
                if (room)
                    r |= EPOLLOUT;
            } else if (room && it->was_full) {
                r |= EPOLLOUT;
                if (!peek)
                    it->was_full = 0;
            } else if (!room && !peek) {
                it->was_full = 1;
            }
        }
        if (c->rd.broken)
            r |= EPOLLERR;
        if (!r)
            continue;
        if (peek)
            return 1;
        if (n == 0)
            s->first_fd = fd;
        ev[n].events = r;
        ev[n].data = it->data;
        n++;
        if (want & EPOLLONESHOT)
            it->disabled = 1;
    }
    return n;
}

/* One kernel epoll_wait: plain descriptors' events go to EV as they are;
 * mapped ones only had a wake-up or a hang-up, read here; then, if
 * RECOLLECT, their ring events follow. */
static int kernel_wait(struct ep_set *s, struct epoll_event *ev, int max, int timeout_ms,
                       int recollect, const sigset_t *mask)
{
    struct epoll_event kev[64];
    int k = mask && timeout_ms != 0 ? epoll_pwait(s->epfd, kev, max < 64 ? max : 64, timeout_ms, mask)
                                    : epoll_wait(s->epfd, kev, max < 64 ? max : 64, timeout_ms);
    if (k < 0)
        return -errno;
    int n = 0, touched = 0;
    for (int j = 0; j < k; j++) {
        if (kev[j].data.u64 & BELL_TAG) { /* a wake-up: nothing to read */
            touched = 1;
            continue;
        }
        int fd = (int)kev[j].data.u64;
        struct ep_item *it = item_of(s, fd);
        if (!it || !it->in_use)
            continue;
        struct conn *c = conn_of(fd);
        if (c) {
            drain(c);
            touched = 1;
            continue;
        }
        if (it->disabled)
            continue;
        ev[n].events = kev[j].events;
        ev[n].data = it->data;
        n++;
        if (it->events & EPOLLONESHOT)
            it->disabled = 1;
    }
    if (touched && recollect && n < max)
        n += collect(s, ev + n, max - n, 0);
    return n;
}

/* In a forked child the rings are not mapped. A process is a member of one
 * domain at most, so one connection tells for all. */
static int set_forked(const struct ep_set *s)
{
    for (int k = 0; k < s->nmapped; k++) {
        struct conn *c = conn_of(s->mapped[k]);
        if (c)
            return rpal__dom_check(c->d) < 0;
    }
    return 0;
}

/* Tell the other ends of the set's connections how to wake us (HOW; 0:
 * we are awake and look at the rings before we sleep), and where we run
 * (CPU, 0: unchanged). Asleep in this set, a connection's bell wakes us. */
static void set_sleeping(struct ep_set *s, uint32_t how, uint32_t cpu)
{
    for (int k = 0; k < s->nmapped; k++) {
        struct conn *c = conn_of(s->mapped[k]);
        if (!c)
            continue;
        set_sleeps(c, how == WT_WAKE_BELL && c->bell < 0 ? WT_WAKE_SOCK : how);
        set_cpu(c, cpu);
    }
}

/* The CPU + 1 on which the other ends of all the set's connections wait,
 * or 0 if they differ (or said nothing). */
static uint32_t set_peers_cpu(struct ep_set *s)
{
    uint32_t cpu = 0;
    for (int k = 0; k < s->nmapped; k++) {
        struct conn *c = conn_of(s->mapped[k]);
        uint32_t x = c ? rpal_load_relaxed(&c->rd.their->pub.cpu) : 0;
        if (!x || (cpu && x != cpu))
            return 0;
        cpu = x;
    }
    return cpu;
}

/* set_wait's sleep in the kernel: -EINTR if a handler ran since SIGS (the
 * count when the wait began). With MASK (epoll_pwait's, which the caller
 * set on the thread), every signal is blocked for that last look and MASK
 * given to the sleep, so that none runs in between, as with the kernel's
 * epoll_pwait. */
static int set_sleep(struct ep_set *s, struct epoll_event *ev, int max, int timeout_ms,
                     const sigset_t *mask, unsigned sigs)
{
    sigset_t all;
    if (mask) {
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, NULL);
    }
    int n = rpal__sigs.all != sigs ? -EINTR : kernel_wait(s, ev, max, timeout_ms, 1, mask);
    if (mask)
        pthread_sigmask(SIG_SETMASK, mask, NULL);
    return n;
}

/* Wait for the set's events: nothing was there at the first look. The way
 * to wait is learned (src/wait.c): spin on the rings (looking at the kernel
 * every KCHECK_NS), yield when the other ends run on our CPU, or sleep in
 * the kernel, where their bells wake us. */
static int set_wait(struct ep_set *s, struct epoll_event *ev, int max, int timeout_ms,
                    const sigset_t *mask, unsigned sigs)
{
    static const struct rpal_chan_opts adaptive;
    uint64_t limit = wt_limit_ns(timeout_ms);
    uint32_t peers = set_peers_cpu(s);
    struct wt_wait w;
    rpal__wt_begin(&w, &s->learn, NULL, &adaptive, peers);
    set_sleeping(s, 0, w.my_cpu);
    uint64_t next_k = UINT64_MAX;
    /* SIGS: the handlers counted when the call began. epoll_wait is never
     * restarted: any handler since ends it. */
    int n;
    for (;;) {
        if ((n = collect(s, ev, max, 0)) != 0)
            break;
        if (rpal__sigs.all != sigs) {
            n = -EINTR;
            break;
        }
        int step = rpal__wt_pause(&w);
        if (step == 0)
            continue;
        if (w.now - w.t0 >= limit)
            break;
        if (step != WT_SLEEP) {
            if (next_k == UINT64_MAX)
                next_k = w.t0 + KCHECK_NS;
            if (w.now >= next_k) {
                next_k = w.now + KCHECK_NS;
                if ((n = kernel_wait(s, ev, max, 0, 1, NULL)) != 0)
                    break;
            }
            continue;
        }
        uint64_t cpu0;
        /* An event loop follows the other ends' CPU while it sleeps: their
         * next message then hands the CPU over instead of waking an idle
         * one. */
        uint32_t moved = rpal__wt_sleep_begin(&w, peers != 0, &cpu0);
        set_sleeping(s, WT_WAKE_BELL, moved);
        rpal_fence_seq_cst(); /* pairs with the fence in rpal_write: we see its
                                 message, or it sees we sleep */
        if ((n = collect(s, ev, max, 0)) == 0)
            n = set_sleep(s, ev, max, wt_poll_ms(wt_left_ns(w.t0, limit, w.now)), mask, sigs);
        set_sleeping(s, 0, 0);
        rpal__wt_sleep_end(&w, cpu0);
        if (n != 0 || w.now - w.t0 >= limit)
            break;
    }
    /* The wait counts for the connection whose ring ended it. */
    struct conn *c = n > 0 ? conn_of(s->first_fd) : NULL;
    w.st = c ? &c->st : NULL;
    rpal__wt_end(&w, w.slept ? wait_stamp(c) : 0);
    if (c)
        c->st.budget_ns = w.budget;
    if (c && rpal__wt_stats_due(&c->st, w.now))
        rpal__dom_stats_flush(c->d, &c->st);
    return n;
}

/* What the application asked of FD (C if it is mapped) in a set. */
static void item_set(struct ep_item *it, const struct epoll_event *ev, const struct conn *c)
{
    it->events = ev->events;
    it->data = ev->data;
    it->in_use = 1;
    it->disabled = 0;
    it->was_full = 1; /* so that EPOLLET reports room once, as epoll does */
    it->end_seen = 0;
    it->seen_tail = c ? c->rd.head : 0; /* unread messages count as new */
}

/* An upgraded descriptor's registration changed without the kernel: its
 * part (wake-ups, the end) stays in the kernel's set whatever the
 * application asks, so a MOD changes only our record, a DEL parks it
 * (collect() skips it) and an ADD takes a parked one back, with no system
 * call and no resync of the set (event loops that add and drop a
 * descriptor or EPOLLOUT per message). 1 if done; cx_lock held. */
static int item_quick(struct ep_set *s, struct ep_item *it, struct conn *c, int op,
                      struct epoll_event *ev, int fd)
{
    if (op == EPOLL_CTL_MOD && it->in_use) {
        item_set(it, ev, c);
    } else if (op == EPOLL_CTL_DEL && it->in_use) {
        it->in_use = 0;
        it->parked = 1;
        if (--c->nsets == 0)
            set_sleeps(c, WT_WAKE_SOCK); /* it may wait on the socket now */
    } else if (op == EPOLL_CTL_ADD && !it->in_use && it->parked) {
        it->parked = 0;
        /* The kernel's set is the truth (this one may be a new set under
         * an old number): not there, the slow way adds it and its bell. */
        struct epoll_event kev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)fd};
        if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &kev) < 0) {
            it->kbell = 0;
            return 0;
        }
        c->nsets++;
        item_set(it, ev, c);
        int listed = 0; /* still in the set's list, unless a resync dropped it */
        for (int k = 0; k < s->nmapped && !listed; k++)
            listed = s->mapped[k] == fd;
        if (!listed)
            rpal_fetch_add_relaxed(&conn_gen, 1);
    } else {
        return 0;
    }
    return 1;
}

int rpal_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    if ((op != EPOLL_CTL_DEL && !ev) || (op != EPOLL_CTL_ADD && op != EPOLL_CTL_MOD &&
                                         op != EPOLL_CTL_DEL))
        return -EINVAL;
    pthread_mutex_lock(&cx_lock);
    int err = 0;
    struct ep_set *s = fdtab_get(&sets, epfd);
    if (!s) {
        s = calloc(1, sizeof *s + sizeof(struct fdtab));
        if (!s || (err = fdtab_put(&sets, epfd, s)) < 0) {
            free(s);
            pthread_mutex_unlock(&cx_lock);
            return err < 0 ? err : -ENOMEM;
        }
        s->epfd = epfd;
        s->items = (void *)(s + 1);
    }
    struct ep_item *it = item_of(s, fd);
    if (!it && op == EPOLL_CTL_ADD) {
        if (!(it = calloc(1, sizeof *it)) || (err = fdtab_put(s->items, fd, it)) < 0) {
            free(it);
            pthread_mutex_unlock(&cx_lock);
            return err < 0 ? err : -ENOMEM;
        }
    }
    struct conn *c = conn_of(fd);
    if (c && it && it->kmapped && item_quick(s, it, c, op, ev, fd)) {
        pthread_mutex_unlock(&cx_lock);
        return 0;
    }
    struct epoll_event kev = {.events = c ? EPOLLIN | EPOLLRDHUP : (ev ? ev->events : 0),
                              .data.u64 = (uint64_t)fd};
    if (epoll_ctl(epfd, op, fd, op == EPOLL_CTL_DEL ? NULL : &kev) < 0) {
        err = -errno;
    } else if (op == EPOLL_CTL_DEL) {
        if (it) {
            if (it->kmapped && c && --c->nsets == 0)
                set_sleeps(c, WT_WAKE_SOCK); /* it may wait on the socket now */
            if (it->kbell && c)
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->bell, NULL);
            it->in_use = 0;
            it->kbell = 0;
        }
    } else {
        if (c && !(op == EPOLL_CTL_MOD && it->kmapped))
            c->nsets++;
        item_set(it, ev, c);
        it->kmapped = c != NULL;
        if (c)
            bell_register(s, it, c, fd);
    }
    rpal_fetch_add_relaxed(&conn_gen, 1);
    pthread_mutex_unlock(&cx_lock);
    return err;
}

int rpal_epoll_wait(int epfd, struct epoll_event *ev, int max, int timeout_ms)
{
    return rpal__ep_wait(epfd, ev, max, timeout_ms, NULL, rpal__sigs.all);
}

int rpal__ep_ours(int epfd)
{
    return fdtab_get(&sets, epfd) != NULL;
}

int rpal__ep_wait(int epfd, struct epoll_event *ev, int max, int timeout_ms, const sigset_t *mask,
                  unsigned sigs)
{
    if (!ev || max <= 0)
        return -EINVAL;
    struct ep_set *s = fdtab_get(&sets, epfd);
    if (!s) { /* nothing of ours in it */
        int r = mask ? epoll_pwait(epfd, ev, max, timeout_ms, mask) : epoll_wait(epfd, ev, max, timeout_ms);
        return r < 0 ? -errno : r;
    }
    int err = set_sync(s);
    if (err < 0)
        return err;
    if (set_forked(s))
        return -ECHILD;
    /* Ring events cost no system call; look at the kernel's now and then
     * (leaving room for its events) so that plain descriptors are not
     * starved. */
    int due = s->nosys + 1 >= 64;
    int n = collect(s, ev, due && max > 1 ? max - 1 : max, 0);
    if (n > 0) {
        if (++s->nosys < 64)
            return n;
        s->nosys = 0;
        int k = kernel_wait(s, ev + n, max - n, 0, 0, NULL);
        return k > 0 ? n + k : n;
    }
    s->nosys = 0;
    /* Plain descriptors: looked at now if we may not wait, else while
     * waiting (every KCHECK_NS of spinning, and in the sleep). */
    if (timeout_ms == 0 || !s->nmapped) {
        n = kernel_wait(s, ev, max, 0, 1, NULL);
        if (n != 0 || timeout_ms == 0)
            return n;
    }
    if (s->nmapped)
        return set_wait(s, ev, max, timeout_ms, mask, sigs);
    /* Nothing of ours to wait for: the kernel's wait, until an event the
     * application asked for (a stale record's is dropped) or the deadline. */
    uint64_t deadline = rpal__prim_deadline(timeout_ms);
    for (;;) {
        uint64_t left = wt_left_ns(0, deadline, deadline == UINT64_MAX ? 0 : rpal__prim_now_ns());
        if (left == 0)
            return 0;
        if ((n = set_sleep(s, ev, max, wt_poll_ms(left), mask, sigs)) != 0)
            return n;
    }
}

int rpal_fd_stats(int fd, struct rpal_stats *out)
{
    struct conn *c = conn_of(fd);
    if (!out)
        return -EINVAL;
    if (!c)
        return -EBADF;
    rpal__wt_stats_copy(&c->st, out);
    return 0;
}

int rpal_epoll_timeout(int epfd)
{
    struct ep_set *s = fdtab_get(&sets, epfd);
    if (!s)
        return -1;
    if (set_sync(s) < 0)
        return 0; /* let the loop come back and retry */
    if (set_forked(s))
        return -ECHILD;
    set_sleeping(s, WT_WAKE_BELL, 0);
    rpal_fence_seq_cst(); /* as before sleeping in rpal_epoll_wait */
    return collect(s, NULL, 1, 1) ? 0 : -1;
}

/* ---- the downgrade: back to the kernel socket (docs/run.md) ----
 *
 * An end that must leave the rings (rpal run: before an exec that keeps
 * the descriptor, before a sendmsg that passes it) stops, publishes where
 * it stands and its DOWN flag, and waits for the other end's DOWN_ACK.
 * The other end, at its next call on the connection, takes it: it keeps a
 * copy of what it had not read of the leaver's ring, reads exactly the
 * wake-up bytes the leaver counted, acknowledges, and sends on the socket,
 * before anything new, what the leaver had not read of its own ring. Both
 * ends then read and write the socket: its next bytes are data. */

#define CX_DOWN_MS 10000 /* a taker's wait for the socket: the leaver's last byte, room */
#define CX_SKIP_MAX (1u << 24) /* more wake-up bytes than that: not an honest count */

/* What a downgraded connection still holds in user space. At the end that
 * took the downgrade: the leaver's messages it had not read (IN), read
 * before the socket's bytes, and its own the leaver had not read (OUT),
 * sent before anything new; INFD, an eventfd that keeps FD readable in the
 * epoll sets while IN holds bytes. At an end that left and had no answer
 * yet: its connection (LEAVING), and the next call tries again. */
struct cx_down {
    char *in, *out;
    size_t in_len, in_off, out_len, out_off;
    int infd;
    struct conn *leaving;
    int took; /* LEAVING took the other end's own DOWN (both left at once) */
};
static struct fdtab downs;          /* fd -> struct cx_down */
static _Atomic unsigned downs_live; /* entries in DOWNS: none spares the look-up */
_Atomic unsigned rpal__cx_down_gen;

static void down_retire(struct conn *c);

static struct cx_down *down_of(int fd)
{
    return rpal_load_relaxed(&downs_live) ? fdtab_get(&downs, fd) : NULL;
}

static int down_asked(const struct conn *c)
{
    /* pairs with the release store in down_publish: the leaver's tail,
     * head, down_off and sock_bytes are final */
    return rpal_load_acquire(&c->rd.their->down) != 0;
}

/* The other end is gone (closed its socket, or exited). */
static int down_peer_gone(const struct conn *c)
{
    struct pollfd pf[2] = {{c->fd, POLLRDHUP, 0}, {c->peer ? c->peer->pidfd : -1, POLLIN, 0}};
    return poll(pf, 2, 0) > 0 && ((pf[0].revents & (POLLRDHUP | POLLHUP | POLLERR)) || pf[1].revents);
}

/* Read and drop exactly N bytes of FD (the other end's counted wake-ups),
 * waiting for them until DEADLINE: 0, or -ECONNRESET when the socket ends
 * first, -ETIMEDOUT. */
static int sock_skip(int fd, uint32_t n, uint64_t deadline)
{
    char b[256];
    while (n) {
        ssize_t r = recv(fd, b, n < sizeof b ? n : sizeof b, MSG_DONTWAIT);
        if (r > 0) {
            n -= (uint32_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            return -ECONNRESET;
        int err = rpal__prim_poll_until(fd, POLLIN, deadline);
        if (err < 0)
            return err;
    }
    return 0;
}

/* All that R has not read of its ring, into a new buffer *OUT (*LEN
 * bytes; NULL when none): 0, or -ENOMEM. */
static int ring_rest(struct cx_reader *r, char **out, size_t *len)
{
    size_t cap = 0;
    *out = NULL;
    *len = 0;
    for (;;) {
        if (cap - *len < 65536) {
            char *p = realloc(*out, cap + 65536);
            if (!p) {
                free(*out);
                *out = NULL;
                return -ENOMEM;
            }
            *out = p;
            cap += 65536;
        }
        size_t n = rpal__cx_take(r, *out + *len, cap - *len);
        *len += n;
        if (n == 0)
            break;
    }
    if (*len == 0) {
        free(*out);
        *out = NULL;
    }
    return 0;
}

/* Where the other end stopped reading our ring: its final head, and the
 * offset in the message there. */
struct down_pos {
    uint32_t head, off;
};

static void down_pos_take(const struct conn *c, struct down_pos *p)
{
    p->head = rpal_load_acquire(&c->rd.their->head);
    p->off = rpal_load_relaxed(&c->rd.their->down_off);
}

/* What the other end had not read of our ring: from where it stopped (P:
 * its word, checked) to our last message. */
static int ring_unread(struct conn *c, const struct down_pos *p, char **out, size_t *len)
{
    uint32_t head = p->head, off = p->off;
    *out = NULL;
    *len = 0;
    if (c->sent - head > c->depth)
        return -EPROTO;
    /* Our own ring: its entries and staging copies are ours to trust. */
    struct cx_reader r = {.their = c->my, .tdepth = c->depth, .head = head, .off = off,
                          .sbase = 0, .ssize = UINT64_MAX};
    return ring_rest(&r, out, len);
}

/* Send what DN holds for the other end, waiting until DEADLINE (0: do not
 * wait) for room: 0 when all went, -EAGAIN, or the socket's error. */
static int down_flush(int fd, struct cx_down *dn, uint64_t deadline)
{
    while (dn->out_off < dn->out_len) {
        ssize_t r = send(fd, dn->out + dn->out_off, dn->out_len - dn->out_off,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r > 0) {
            dn->out_off += (size_t)r;
            continue;
        }
        if (r < 0 && errno != EAGAIN && errno != EINTR) {
            dn->out_off = dn->out_len; /* the other end is gone: so are its bytes */
            return -errno;
        }
        if (deadline == 0 || rpal__prim_poll_until(fd, POLLOUT, deadline) < 0)
            return -EAGAIN;
    }
    return 0;
}

/* DN (FD's) holds nothing more: forget it. */
static void down_drop(int fd, struct cx_down *dn, int force)
{
    if (!force && (dn->in_off < dn->in_len || dn->out_off < dn->out_len || dn->leaving))
        return;
    pthread_mutex_lock(&cx_lock);
    fdtab_put(&downs, fd, NULL);
    rpal_fetch_add_relaxed(&downs_live, (unsigned)-1);
    pthread_mutex_unlock(&cx_lock);
    if (dn->infd >= 0)
        close(dn->infd); /* out of the epoll sets with it */
    if (dn->leaving)
        down_retire(dn->leaving); /* the other end may still read where we stopped */
    free(dn->in);
    free(dn->out);
    free(dn);
    rpal_fetch_add_relaxed(&rpal__cx_down_gen, 1);
}

/* FD (C's) leaves the table of connections; in every epoll set that held
 * it for the rings, the kernel's registration becomes the application's (a
 * plain descriptor there), with INFD (-1: none) beside it, under FD's
 * cookie, while bytes are held for it. */
static void item_unlisted(struct conn *c, struct ep_set *s, struct ep_item *it, int fd, int infd)
{
    if (!it->kmapped)
        return;
    if (it->kbell)
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->bell, NULL);
    struct epoll_event kev = {.events = it->events, .data.u64 = (uint64_t)fd};
    if (it->in_use) {
        epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &kev);
        kev.events = EPOLLIN | (it->events & (EPOLLET | EPOLLONESHOT));
        if (infd >= 0 && (it->events & EPOLLIN))
            epoll_ctl(s->epfd, EPOLL_CTL_ADD, infd, &kev);
    } else {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL); /* parked: deleted by the application */
    }
    it->kmapped = it->kbell = it->parked = 0;
}

static void conn_unlist(struct conn *c, int fd, int infd)
{
    conn_forget(c, fd, item_unlisted, infd);
}

static void down_enter(int fd, struct cx_down *dn)
{
    pthread_mutex_lock(&cx_lock);
    fdtab_put(&downs, fd, dn);
    rpal_fetch_add_relaxed(&downs_live, 1);
    pthread_mutex_unlock(&cx_lock);
}

/* Rings of downgraded connections, kept CX_DOWN_MS after the downgrade:
 * the other end reads where we stopped (and our counts) after our
 * DOWN_ACK, or after our DOWN when both leave, and must not find the
 * memory reused. Freed at a later downgrade, or when the other end is
 * gone. */
static struct conn *down_retired;

static void down_retire(struct conn *c)
{
    pthread_mutex_lock(&cx_lock);
    uint64_t now = rpal__prim_now_ns();
    retired_reap(now);
    c->down_until = now + (uint64_t)CX_DOWN_MS * 1000000;
    c->next_zombie = down_retired;
    down_retired = c;
    pthread_mutex_unlock(&cx_lock);
}

/* Free the retired connections whose time is up or whose other end is
 * gone (cx_lock held). */
static void retired_reap(uint64_t now)
{
    for (struct conn **pp = &down_retired; *pp;) {
        struct conn *o = *pp;
        /* Its pidfd, not its descriptor: that number may be another's now. */
        struct pollfd pf = {o->peer ? o->peer->pidfd : -1, POLLIN, 0};
        if (!has_sleepers(o) && (now >= o->down_until || poll(&pf, 1, 0) > 0)) {
            *pp = o->next_zombie;
            conn_free(o);
        } else {
            pp = &o->next_zombie;
        }
    }
}

/* Acknowledge the other end's DOWN on C (FD): where it stopped reading
 * our ring into *THEIRS (read before the acknowledgement: it may free its
 * ring once it sees it), its counted wake-up bytes read (all sent before
 * its DOWN), where we stopped reading its ring published (it sends the
 * rest on the socket), our DOWN_ACK set. */
static void down_ack(struct conn *c, int fd, struct down_pos *theirs)
{
    down_pos_take(c, theirs);
    uint32_t skip = rpal_load_relaxed(&c->rd.their->pub.sock_bytes) - c->drained;
    if (skip < CX_SKIP_MAX)
        (void)sock_skip(fd, skip, rpal__prim_deadline(CX_DOWN_MS)); /* an end: the socket says it next */
    rpal_store_relaxed(&c->my->down_off, c->rd.off);
    /* Our head, down_off and sock_bytes are final (C is out of the table:
     * no more reads or wake-ups); pairs with the acquire in leave_finish. */
    rpal_store_release(&c->my->down_ack, 1);
    rpal__prim_futex_wake(&c->my->down_ack, INT_MAX, 1);
}

/* Send on C's socket (FD) what the other end had not read of our ring
 * (from THEIRS) before anything new: waiting for room until DEADLINE, the
 * rest kept in DN. 0, or -EAGAIN if some is left. */
static int down_resend(struct conn *c, int fd, struct cx_down *dn, const struct down_pos *theirs,
                       uint64_t deadline)
{
    if (ring_unread(c, theirs, &dn->out, &dn->out_len) < 0)
        dn->out_len = 0; /* its head was a lie: nothing of ours to give back */
    return down_flush(fd, dn, deadline);
}

/* The other end of C (FD) leaves the rings: take it (above), and send
 * what it had not read of our ring (up to CX_DOWN_MS for room; the rest
 * before anything new). It sends what we had not read of its ring itself;
 * if it is gone already, we keep a copy of that, read before the
 * socket's end. 0 or -ENOMEM (then nothing changed). */
static int down_take(struct conn *c, int fd)
{
    struct cx_down *dn = calloc(1, sizeof *dn);
    struct cx_reader r = c->rd; /* a copy: nothing consumed if memory runs out */
    if (!dn || (down_peer_gone(c) && ring_rest(&r, &dn->in, &dn->in_len) < 0)) {
        free(dn);
        return -ENOMEM;
    }
    /* Readable in the epoll sets while IN holds bytes (a sleeper there is
     * woken by the socket only). */
    dn->infd = dn->in_len ? eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK) : -1;
    conn_unlist(c, fd, dn->infd);
    struct down_pos theirs;
    down_ack(c, fd, &theirs);
    (void)down_resend(c, fd, dn, &theirs, rpal__prim_deadline(CX_DOWN_MS));
    down_enter(fd, dn);
    down_retire(c);
    rpal_fetch_add_relaxed(&rpal__cx_down_gen, 1);
    down_drop(fd, dn, 0);
    return 0;
}

/* Leave the rings (rpal__cx_leave): stop, say where we stand, and wake the
 * other end however it waits, with a counted byte on the socket last. */
static void down_publish(struct conn *c, int fd, uint64_t deadline)
{
    conn_unlist(c, fd, -1);
    rpal_store_relaxed(&c->my->down_off, c->rd.off);
    rpal_store_relaxed(&c->my->pub.sock_bytes, rpal_load_relaxed(&c->my->pub.sock_bytes) + 1);
    rpal_store_release(&c->my->down, 1); /* pairs with the acquire in down_asked */
    rpal_fence_seq_cst();
    rpal__prim_futex_wake(&c->my->tail, INT_MAX, 1);
    rpal__prim_futex_wake(&c->my->head, INT_MAX, 1);
    if (c->their_bell >= 0)
        ring_bell(c->their_bell);
    /* The byte counted above: the other end waits for it before it acks. */
    while (send(fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL) != 1 &&
           (errno == EAGAIN || errno == EINTR) &&
           rpal__prim_poll_until(fd, POLLOUT, deadline) == 0)
        ;
}

/* Wait for the other end's DOWN_ACK until DEADLINE (or its own DOWN: both
 * leave at once, and each acknowledges the other's), read its counted
 * wake-up bytes, send what it had not read of our ring, and forget the
 * connection: 0, or -ETIMEDOUT (no answer; or bytes left to send, kept in
 * DN and sent before anything new). */
static int leave_finish(int fd, struct cx_down *dn, uint64_t deadline)
{
    struct conn *c = dn->leaving;
    struct down_pos theirs;
    int gone = 0;
    for (;;) {
        /* Pairs with the release stores in down_ack (its head, down_off and
         * sock_bytes are final) and down_publish (the same, at its DOWN). */
        if (!dn->took && down_asked(c)) {
            dn->took = 1;
            down_ack(c, fd, &theirs);
        }
        if (dn->took || rpal_load_acquire(&c->rd.their->down_ack) || (gone = down_peer_gone(c)))
            break;
        uint64_t now = rpal__prim_now_ns();
        if (now >= deadline)
            return -ETIMEDOUT;
        int64_t slice = wt_slice_ns(wt_left_ns(0, deadline, now), CX_SLICE_NS);
        rpal__prim_futex_wait(&c->rd.their->down_ack, 0, 1, slice);
    }
    if (!dn->took) {
        /* Its ring stays CX_DOWN_MS after its acknowledgement (down_retire). */
        down_pos_take(c, &theirs);
        uint32_t skip = rpal_load_relaxed(&c->rd.their->pub.sock_bytes) - c->drained;
        if (skip < CX_SKIP_MAX)
            (void)sock_skip(fd, skip, rpal__prim_deadline(CX_DOWN_MS));
    }
    int err = gone ? 0 : down_resend(c, fd, dn, &theirs, deadline);
    dn->leaving = NULL;
    down_retire(c);
    down_drop(fd, dn, 0);
    return err < 0 ? -ETIMEDOUT : 0;
}

int rpal__cx_leave(int fd, int timeout_ms)
{
    struct conn *c = conn_of(fd);
    struct cx_down *dn = down_of(fd);
    uint64_t deadline = rpal__prim_deadline(timeout_ms);
    if (c) {
        if (rpal__dom_check(c->d) < 0)
            return -ECHILD;
        if (!(dn = calloc(1, sizeof *dn)))
            return -ENOMEM;
        dn->infd = -1;
        dn->leaving = c;
        down_publish(c, fd, deadline);
        down_enter(fd, dn);
    }
    if (dn && dn->leaving)
        return leave_finish(fd, dn, deadline);
    if (!dn)
        return -ENOENT;
    /* Back on the socket already: what we still owe the other end goes
     * first. (What a dead one had sent stays readable here.) */
    int err = down_flush(fd, dn, deadline);
    down_drop(fd, dn, 0);
    return err == -EAGAIN ? -ETIMEDOUT : 0;
}

int rpal__cx_state(int fd)
{
    return conn_of(fd) ? 2 : down_of(fd) ? 1 : 0;
}

/* Until the bytes DN holds for the other end went, a read of the socket
 * that would wait sends them as room comes (the other end may wait for
 * them before it writes what we wait for). */
static void down_wait_room(int fd, struct cx_down *dn)
{
    int fl = fcntl(fd, F_GETFL);
    while (dn->out_off < dn->out_len && fl >= 0 && !(fl & O_NONBLOCK)) {
        struct pollfd pf = {fd, POLLIN | POLLOUT, 0};
        if (poll(&pf, 1, -1) < 0 && errno != EINTR)
            return;
        if (pf.revents & (POLLIN | POLLHUP | POLLERR))
            return;
        (void)down_flush(fd, dn, 0);
    }
}

/* A read of FD, which went back to the socket: what DN holds first; an end
 * that left without an answer yet tries again (up to CX_DOWN_MS). -EXDEV:
 * nothing held, the socket's next bytes are the stream's. */
static ssize_t down_read(int fd, struct cx_down *dn, void *buf, size_t len)
{
    if (dn->leaving) {
        int err = leave_finish(fd, dn, rpal__prim_deadline(CX_DOWN_MS));
        return err < 0 ? err : -EXDEV;
    }
    (void)down_flush(fd, dn, 0);
    size_t n = dn->in_len - dn->in_off < len ? dn->in_len - dn->in_off : len;
    memcpy(buf, dn->in + dn->in_off, n);
    dn->in_off += n;
    if (dn->in_off == dn->in_len && dn->infd >= 0) {
        close(dn->infd);
        dn->infd = -1;
    }
    if (!n)
        down_wait_room(fd, dn);
    down_drop(fd, dn, 0);
    return n ? (ssize_t)n : -EXDEV;
}

/* A write of FD, which went back to the socket: what DN holds goes first
 * (-EAGAIN if it cannot all go and FD is non-blocking); -EXDEV: write to
 * the socket now. */
static ssize_t down_write(int fd, struct cx_down *dn)
{
    if (dn->leaving) {
        int err = leave_finish(fd, dn, rpal__prim_deadline(CX_DOWN_MS));
        return err < 0 ? err : -EXDEV;
    }
    int fl = fcntl(fd, F_GETFL);
    if (down_flush(fd, dn, fl >= 0 && (fl & O_NONBLOCK) ? 0 : UINT64_MAX) == -EAGAIN)
        return -EAGAIN;
    down_drop(fd, dn, 0);
    return -EXDEV;
}

/* poll() of FD, which went back to the socket: the kernel's answer, and
 * readable while DN holds bytes. */
static int down_poll(int fd, struct cx_down *dn, int events)
{
    if (dn->leaving)
        return events & (POLLIN | POLLOUT); /* the call then waits for the answer */
    (void)down_flush(fd, dn, 0);
    struct pollfd pf = {fd, (short)events, 0};
    int r = poll(&pf, 1, 0) > 0 ? pf.revents : 0;
    if (dn->in_off < dn->in_len)
        r |= POLLIN;
    down_drop(fd, dn, 0);
    return r & (events | POLLHUP | POLLERR | POLLNVAL);
}

ssize_t rpal__cx_read(int fd, void *buf, size_t len)
{
    return cx_read(fd, buf, len, 0);
}

ssize_t rpal__cx_write(int fd, const void *buf, size_t len)
{
    return cx_write(fd, buf, len, 0);
}

/* MSG_PEEK of FD, which went back to the socket: what DN holds; -EXDEV if
 * nothing (or an end that left: the call then waits for the answer). */
static ssize_t down_peek(struct cx_down *dn, void *buf, size_t len)
{
    size_t n = dn->in_len - dn->in_off < len ? dn->in_len - dn->in_off : len;
    if (dn->leaving || !n)
        return -EXDEV;
    memcpy(buf, dn->in + dn->in_off, n);
    return (ssize_t)n;
}
