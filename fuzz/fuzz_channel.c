/* Fuzz target: the channel ring reader (src/channel.c).
 *
 * rpal_receive (the service reading its caller's request ring) and
 * rpal_complete (the caller reading the service's reply ring) take each
 * entry of the peer's ring with rpal__ch_entry_take(), then use its bytes:
 * inline ones are copied into the message (RPAL_INLINE_MAX bytes), pointed
 * ones are read in place (receive) or copied into the caller's reply buffer
 * (complete). Here the peer's slot is a buffer holding the input, its ring
 * at the start, and the bytes are used the same way, under ASan.
 *
 * Input: flags, log2 of the depth, the reader's head (u32), the reply
 * buffer's size (u16), then the peer's slot: DEPTH entries of 64 bytes and
 * whatever pointed entries point at. With FZ_FIX each entry's ptr is an
 * offset into the slot and its sequence number is the one the reader waits
 * for (its kind bits stay as given).
 */
#include "fuzz.h"

#define SLOT_MAX (256u << 10)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_in in = {data, size};
    unsigned flags = fz_u8(&in);
    uint32_t depth = 1u << (fz_u8(&in) % 11); /* 1..1024, as MAX_DEPTH */
    uint32_t head = fz_u32(&in);
    size_t reply_max = fz_u16(&in);
    struct fz_slot s;
    if (fz_slot_fill(&s, &in, depth * sizeof(struct ch_entry), SLOT_MAX) < 0)
        return 0;
    struct ch_entry *ring = (struct ch_entry *)s.mem;
    if (flags & FZ_FIX)
        for (uint32_t k = 0; k < depth; k++) {
            struct ch_entry *e = &ring[(head + k) & (depth - 1)];
            e->ptr = fz_addr(&s, e->ptr, flags);
            e->seqf = SEQF(head + k + 1, FLAG_OF(e->seqf));
        }
    uint8_t *reply = malloc(reply_max ? reply_max : 1);
    uint8_t inline_copy[RPAL_INLINE_MAX]; /* as struct rpal_msg's */
    /* At most one lap: after it the entry wanted next is one already read. */
    for (uint32_t h = head; reply && h - head <= depth; h++) {
        const struct ch_entry *slot = &ring[h & (depth - 1)];
        if (SEQ_OF(slot->seqf) != SEQ_WANT(h + 1))
            break; /* not published: the reader waits */
        struct ch_entry e;
        int kind = rpal__ch_entry_take(slot, s.base, s.size, &e);
        if (kind < 0)
            break; /* the channel is closed as broken */
        const void *src = kind == E_PTR ? (const void *)(uintptr_t)e.ptr : e.data;
        /* The receiver's side (rpal_receive, then the application). The
         * copies are read back: a copy nobody reads is a dead store the
         * compiler removes, and with it the check of its bounds. */
        if (kind == E_INLINE) {
            memcpy(inline_copy, e.data, e.len);
            (void)fz_touch(inline_copy, e.len);
        } else {
            (void)fz_touch(src, e.len);
        }
        /* The caller's side (rpal_complete). */
        if (e.len <= reply_max && e.len) {
            memcpy(reply, src, e.len);
            (void)fz_touch(reply, e.len);
        }
    }
    free(reply);
    fz_slot_free(&s);
    return 0;
}

/* A ring of DEPTH entries, mixing inline messages (0 to RPAL_INLINE_MAX
 * bytes) and pointed ones into a data area after the ring. */
static void seed_ring(const char *name, uint8_t depth_log, uint32_t head, uint16_t reply_max,
                      unsigned nptr)
{
    uint32_t depth = 1u << depth_log;
    size_t data_off = depth * sizeof(struct ch_entry), data_len = 512;
    size_t n = data_off + data_len;
    uint8_t *slot = calloc(1, n);
    struct ch_entry *ring = (struct ch_entry *)slot;
    for (uint32_t k = 0; k < depth; k++) {
        struct ch_entry *e = &ring[(head + k) & (depth - 1)];
        e->tag = k;
        if (k < nptr) {
            e->len = (uint32_t)(64 + 32 * k) % (uint32_t)data_len;
            e->ptr = data_off + 8 * k; /* an offset: FZ_FIX makes it an address */
            e->seqf = SEQF(head + k + 1, E_PTR);
        } else {
            e->len = (k * 7) % (RPAL_INLINE_MAX + 1);
            memset(e->data, 'a' + (int)k % 26, e->len);
            e->seqf = SEQF(head + k + 1, E_INLINE);
        }
    }
    for (size_t i = 0; i < data_len; i++)
        slot[data_off + i] = (uint8_t)i;
    fz_seed_begin(name, FZ_FIX);
    fz_seed_more(&depth_log, 1);
    fz_seed_more(&head, sizeof head);
    fz_seed_more(&reply_max, sizeof reply_max);
    fz_seed_more(slot, n);
    fz_seed_end();
    free(slot);
}

static void fz_write_seeds(void)
{
    seed_ring("inline-4", 2, 0, 64, 0);
    seed_ring("mixed-8", 3, 5, 256, 3);
    seed_ring("ptr-4-wrap", 2, 0xfffffffeu, 128, 4);
    seed_ring("small-reply-16", 4, 1u << 30, 16, 8);
}
