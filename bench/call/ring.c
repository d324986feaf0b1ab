/* spin-shm for --throughput (bench/call): a ring in shared memory, both
 * sides busy-polling.
 *
 * The producer owns a ring of NSLOTS slots and its tail (messages
 * published); the consumer owns its head (messages consumed). Each side
 * caches the other's index and reads it again only when the ring looks full
 * (producer) or empty (consumer). */
#include "call.h"

#include <stdlib.h>
#include <sys/mman.h>

static struct {
    _Atomic uint64_t *tail; /* producer's block: tail line, then the slots */
    unsigned char *slots;
    _Atomic uint64_t *head; /* consumer's block */
    size_t plen, clen;
} ring;

static int ring_setup(struct sctx *c)
{
    ring.plen = page_round(4096 + (size_t)c->nslots * c->stride);
    ring.clen = page_round(64);
    void *p = map_shared(ring.plen), *q = map_shared(ring.clen);
    if (!p || !q) {
        snprintf(c->msg, sizeof c->msg, "mmap: %s", strerror(errno));
        return -1;
    }
    ring.tail = p;
    ring.slots = (unsigned char *)p + 4096;
    ring.head = q;
    return 0;
}

static void ring_teardown(struct sctx *c)
{
    (void)c;
    if (ring.tail)
        munmap((void *)ring.tail, ring.plen);
    if (ring.head)
        munmap((void *)ring.head, ring.clen);
    ring.tail = ring.head = NULL;
}

static void ring_producer(struct sctx *c)
{
    if (mprotect((void *)ring.head, ring.clen, PROT_READ) < 0)
        die("mprotect");
    unsigned char *src = aligned_alloc(64, page_round(c->size));
    if (!src)
        die_msg("out of memory");
    for (size_t i = 0; i < c->size; i++)
        src[i] = (unsigned char)i;
    uint64_t total = c->warm + c->count, head = 0, mask = c->nslots - 1;
    for (uint64_t i = 0; i < total; i++) {
        while (i - head >= c->nslots) {
            /* Acquire: the consumer is done with the slot we reuse; pairs
             * with its release store of head. */
            head = rpal_load_acquire(ring.head);
            if (i - head >= c->nslots)
                cpu_relax();
        }
        unsigned char *slot = ring.slots + (i & mask) * c->stride;
        memcpy(slot + 8, src + 8, c->size - 8);
        memcpy(slot, &i, 8);
        /* Release: the slot's bytes before the new tail; pairs with the
         * consumer's acquire load of tail. */
        rpal_store_release(ring.tail, i + 1);
    }
    free(src);
}

static void ring_consumer(struct sctx *c)
{
    if (mprotect((void *)ring.tail, ring.plen, PROT_READ) < 0)
        die("mprotect");
    unsigned char *dst = aligned_alloc(64, page_round(c->size));
    if (!dst)
        die_msg("out of memory");
    memset(dst, 0, c->size);
    uint64_t total = c->warm + c->count, tail = 0, mask = c->nslots - 1, sum = 0;
    for (uint64_t i = 0; i < total; i++) {
        while (tail <= i) {
            tail = rpal_load_acquire(ring.tail); /* pairs with the producer's release */
            if (tail <= i)
                cpu_relax();
        }
        const unsigned char *slot = ring.slots + (i & mask) * c->stride;
        stream_take(c, slot, i, dst, &sum);
        /* Release: our reads of the slot are done before the producer may
         * reuse it; pairs with the producer's acquire load of head. */
        rpal_store_release(ring.head, i + 1);
        if (i + 1 == c->warm)
            c->sh->t0 = mono_ns();
    }
    c->sh->t1 = mono_ns();
    c->sh->sum = sum;
    free(dst);
}

const struct stream_transport st_spin = {
    .name = "spin-shm", .what = "ring in shared memory, reads in place",
    .setup = ring_setup, .producer = ring_producer, .consumer = ring_consumer,
    .teardown = ring_teardown,
};
const struct stream_transport st_spin_copy = {
    .name = "spin-shm-copy", .what = "same ring, the consumer copies out",
    .copy_out = 1, .setup = ring_setup, .producer = ring_producer,
    .consumer = ring_consumer, .teardown = ring_teardown,
};
