/* Fuzz target: the compat connection reader (src/compat.c).
 *
 * rpal_uds_fdmap checks the other end's hello (rpal__cx_hello_check) and the ring
 * it names in its slot (rpal__cx_ring_check); rpal_read then takes messages from
 * that ring (rpal__cx_take), possibly in pieces when the caller's buffer is
 * smaller than a message. Here the other end's slot is a buffer holding the
 * input and the reads go into buffers of the sizes the input asks for.
 *
 * Input: flags, the hello (struct fm_hello), the reader's head (u32), eight
 * read sizes (u16 each), then the other end's slot. With FZ_FIX the hello's
 * ring and every entry's ptr are offsets into the slot, and the ring's
 * entries carry the sequence numbers the reader waits for.
 */
#include "fuzz.h"

#define SLOT_MAX (256u << 10)
#define PID 4242          /* what the kernel says the other end is */
#define PSLOT 3u          /* and its claim */
#define SLOT_SIZE (64ull << 20)
#define NREADS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_in in = {data, size};
    unsigned flags = fz_u8(&in);
    struct fm_hello h;
    fz_bytes(&in, &h, sizeof h);
    uint32_t head = fz_u32(&in);
    uint16_t reads[NREADS];
    for (int i = 0; i < NREADS; i++)
        reads[i] = fz_u16(&in);
    struct fz_slot s;
    if (fz_slot_fill(&s, &in, sizeof(struct cx_ring), SLOT_MAX) < 0)
        return 0;
    h.ring = fz_addr(&s, h.ring, flags);
    if (rpal__cx_hello_check(&h, PID, PSLOT, SLOT_SIZE) < 0 || rpal__cx_ring_check(&h, s.base, s.size) < 0)
        goto out;
    struct cx_reader r = {.their = (const struct cx_ring *)(uintptr_t)h.ring,
                          .tdepth = h.depth, .head = head, .sbase = s.base, .ssize = s.size};
    if (flags & FZ_FIX) {
        struct ch_entry *e = (struct ch_entry *)(uintptr_t)r.their->e;
        for (uint32_t k = 0; k < r.tdepth; k++) {
            struct ch_entry *x = &e[(head + k) & (r.tdepth - 1)];
            x->ptr = fz_addr(&s, x->ptr, flags);
            x->seqf = SEQF(head + k + 1, FLAG_OF(x->seqf));
        }
    }
    for (int i = 0; i < NREADS && !r.broken; i++) {
        size_t len = reads[i] ? reads[i] : 1;
        char *buf = malloc(len); /* exactly LEN: an overrun is reported */
        if (!buf)
            break;
        size_t got = rpal__cx_take(&r, buf, len);
        (void)fz_touch(buf, got);
        free(buf);
        if (got == 0)
            break; /* nothing more is there */
    }
out:
    fz_slot_free(&s);
    return 0;
}

/* A hello naming a ring of DEPTH entries at offset 0 of the slot, messages
 * inline and pointed into a data area after the ring. */
static void seed_conn(const char *name, uint32_t depth, uint32_t head, uint16_t rsize,
                      unsigned nptr)
{
    struct fm_hello h = {.magic = FM_MAGIC, .version = FM_VERSION, .slot = PSLOT,
                         .slot_size = SLOT_SIZE, .ring = 0, .depth = depth, .pid = PID};
    size_t data_off = sizeof(struct cx_ring) + depth * sizeof(struct ch_entry), data_len = 600;
    size_t n = data_off + data_len;
    uint8_t *slot = calloc(1, n);
    struct cx_ring *ring = (struct cx_ring *)slot;
    ring->magic = CX_MAGIC;
    ring->depth = depth;
    for (uint32_t k = 0; k < depth; k++) {
        struct ch_entry *e = &ring->e[(head + k) & (depth - 1)];
        if (k < nptr) {
            e->len = 100 + 50 * k;
            e->ptr = data_off + 4 * k;
            e->seqf = SEQF(head + k + 1, E_PTR);
        } else {
            e->len = (k * 5) % (RPAL_INLINE_MAX + 1);
            memset(e->data, 'A' + (int)k % 26, e->len);
            e->seqf = SEQF(head + k + 1, E_INLINE);
        }
    }
    ring->tail = head + depth;
    for (size_t i = 0; i < data_len; i++)
        slot[data_off + i] = (uint8_t)(i * 3);
    fz_seed_begin(name, FZ_FIX);
    fz_seed_more(&h, sizeof h);
    fz_seed_more(&head, sizeof head);
    uint16_t reads[NREADS];
    for (int i = 0; i < NREADS; i++)
        reads[i] = (uint16_t)(rsize + 13 * i);
    fz_seed_more(reads, sizeof reads);
    fz_seed_more(slot, n);
    fz_seed_end();
    free(slot);
}

static void fz_write_seeds(void)
{
    seed_conn("inline-4", 4, 0, 64, 0);
    seed_conn("mixed-8-pieces", 8, 7, 33, 3);
    seed_conn("ptr-2-wrap", 2, 0xffffffffu, 1000, 2);
}
