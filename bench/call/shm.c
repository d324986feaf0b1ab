/* Shared-memory transports (bench/call): spin-shm, yield-shm, futex-shm and
 * eventfd-shm, one message block per side; they differ only in how the
 * receiver waits for the peer's next message. */
#include "call.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

/* Each side owns one block, written only by it and mapped read-only in the
 * peer. A message is published by writing the payload and then the block's
 * sequence number (release); the receiver waits until the peer's sequence
 * reaches the next value (acquire) and reads the payload in place. A
 * 32-byte message shares its 64-byte line with the sequence number. */
struct shm_block {
    _Atomic uint32_t seq;      /* messages published by the owner; futex word */
    _Atomic uint32_t sleeping; /* futex-shm: the owner sleeps (or is about
                                  to) waiting for the peer's seq */
    uint64_t pad;
    unsigned char payload[];   /* offset 16 */
};

static struct {
    struct shm_block *blk[2];
    size_t len;
    uint32_t sent, seen; /* per process: our seq, the peer's seq consumed */
    int efd[2];          /* eventfd-shm: efd[side] signals side's messages */
} shm = {{NULL, NULL}, 0, 0, 0, {-1, -1}};

static int shm_setup(struct ctx *c)
{
    shm.len = page_round(sizeof(struct shm_block) + c->size);
    for (int s = 0; s < 2; s++) {
        shm.blk[s] = map_shared(shm.len);
        if (!shm.blk[s]) {
            snprintf(c->msg, sizeof c->msg, "mmap: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void shm_init(struct ctx *c, int side)
{
    (void)c;
    /* Principle 2: the peer's block is read-only here (kernel-enforced). */
    if (mprotect(shm.blk[!side], shm.len, PROT_READ) < 0)
        die("mprotect");
    shm.sent = shm.seen = 0;
}

static void *shm_buf(struct ctx *c, int side)
{
    (void)c;
    return shm.blk[side]->payload;
}

static void shm_send_release(struct ctx *c, int side)
{
    (void)c;
    /* Release: the payload written before is visible to whoever sees the new
     * seq; pairs with the acquire load in the receiver's recv. */
    rpal_store_release(&shm.blk[side]->seq, ++shm.sent);
}

static const void *spin_recv(struct ctx *c, int side)
{
    (void)c;
    const struct shm_block *peer = shm.blk[!side];
    uint32_t want = ++shm.seen;
    /* Acquire: pairs with the release store of seq in the sender. */
    while (rpal_load_acquire(&peer->seq) != want)
        cpu_relax();
    return peer->payload;
}

static const void *yield_recv(struct ctx *c, int side)
{
    (void)c;
    const struct shm_block *peer = shm.blk[!side];
    uint32_t want = ++shm.seen;
    while (rpal_load_acquire(&peer->seq) != want) /* pairs as in spin_recv */
        sched_yield();
    return peer->payload;
}

static void futex_send(struct ctx *c, int side)
{
    (void)c;
    struct shm_block *me = shm.blk[side];
    rpal_store_release(&me->seq, ++shm.sent); /* pairs with the acquire in futex_recv */
    /* Dekker with the waiter: our seq store, this fence, then its flag load;
     * it stores its flag, fences, then loads our seq. One of us sees the
     * other's store: it sees the new seq and does not sleep, or we see its
     * flag and wake it. Pairs with the fence in futex_recv. */
    rpal_fence_seq_cst();
    if (rpal_load_relaxed(&shm.blk[!side]->sleeping))
        futex(&me->seq, FUTEX_WAKE, 1);
}

static const void *futex_recv(struct ctx *c, int side)
{
    (void)c;
    const struct shm_block *peer = shm.blk[!side];
    struct shm_block *me = shm.blk[side];
    uint32_t want = ++shm.seen;
    while (rpal_load_acquire(&peer->seq) != want) { /* pairs with futex_send */
        rpal_store_relaxed(&me->sleeping, 1);
        rpal_fence_seq_cst(); /* pairs with the fence in futex_send */
        uint32_t v = rpal_load_relaxed(&peer->seq);
        if (v != want && futex((_Atomic uint32_t *)&peer->seq, FUTEX_WAIT, v) < 0 &&
            errno != EAGAIN && errno != EINTR)
            die("futex wait");
        rpal_store_relaxed(&me->sleeping, 0);
    }
    return peer->payload;
}

static const char *spin_skip(const struct ctx *c)
{
    if (c->mode == MODE_SHARED)
        return "a spinning waiter on the shared CPU holds it until the "
               "scheduler preempts it (ms per call); yield-shm is this "
               "mode's floor";
    return NULL;
}

static const char *spin_waits(const struct ctx *c)
{
    (void)c;
    return "both spin on the peer's seq (pause)";
}

static const char *yield_waits(const struct ctx *c)
{
    (void)c;
    return "both sched_yield() between checks of the peer's seq";
}

static const char *futex_waits(const struct ctx *c)
{
    (void)c;
    return "both FUTEX_WAIT on the peer's seq; wake only a sleeper";
}

static void shm_teardown(struct ctx *c)
{
    (void)c;
    for (int s = 0; s < 2; s++) {
        if (shm.blk[s])
            munmap(shm.blk[s], shm.len);
        shm.blk[s] = NULL;
        if (shm.efd[s] >= 0)
            close(shm.efd[s]);
        shm.efd[s] = -1;
    }
}

const struct transport tr_spin = {
    .name = "spin-shm", .skip = spin_skip, .waits = spin_waits,
    .setup = shm_setup, .init = shm_init, .buf = shm_buf,
    .send = shm_send_release, .recv = spin_recv, .teardown = shm_teardown,
};

const struct transport tr_yield = {
    .name = "yield-shm", .waits = yield_waits, .setup = shm_setup,
    .init = shm_init, .buf = shm_buf, .send = shm_send_release,
    .recv = yield_recv, .teardown = shm_teardown,
};

const struct transport tr_futex = {
    .name = "futex-shm", .waits = futex_waits, .setup = shm_setup,
    .init = shm_init, .buf = shm_buf, .send = futex_send,
    .recv = futex_recv, .teardown = shm_teardown,
};

/* eventfd-shm: the payload in the shared blocks above, an eventfd per
 * direction to signal; the waiter blocks in read(eventfd) (poll mode: a
 * non-blocking read in a loop). */
static const char *efd_waits(const struct ctx *c)
{
    return c->poll ? "both non-blocking read(eventfd) loop; payload in place"
                   : "both blocking read(eventfd); payload in place";
}

static int efd_setup(struct ctx *c)
{
    int err = shm_setup(c);
    if (err)
        return err;
    for (int s = 0; s < 2; s++) {
        shm.efd[s] = eventfd(0, EFD_CLOEXEC | (c->poll ? EFD_NONBLOCK : 0));
        if (shm.efd[s] < 0) {
            snprintf(c->msg, sizeof c->msg, "eventfd: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void efd_send(struct ctx *c, int side)
{
    shm_send_release(c, side);
    uint64_t one = 1;
    write_full(shm.efd[side], &one, sizeof one);
}

static const void *efd_recv(struct ctx *c, int side)
{
    (void)c;
    uint64_t n;
    read_full(shm.efd[!side], &n, sizeof n);
    const struct shm_block *peer = shm.blk[!side];
    uint32_t want = ++shm.seen;
    /* The eventfd orders the payload before us; the acquire load checks it
     * (pairs with the release in shm_send_release). */
    uint32_t got = rpal_load_acquire(&peer->seq);
    if (got != want)
        die_msg("eventfd said ready, but seq is %u, not %u", got, want);
    return peer->payload;
}

const struct transport tr_efd = {
    .name = "eventfd-shm", .waits = efd_waits, .setup = efd_setup,
    .init = shm_init, .buf = shm_buf, .send = efd_send, .recv = efd_recv,
    .teardown = shm_teardown,
};
