/* Helpers shared by the fuzz targets (docs/fuzzing.md).
 *
 * Each target is a libFuzzer LLVMFuzzerTestOneInput that hands a parser of
 * src/ arbitrary bytes standing in for what another process wrote: its slot,
 * a message, a shared file. Everything lives in harness memory (no file, no
 * shared memory, no clock, no pid of ours), so a run is deterministic.
 *
 * Two conventions:
 * - The first input byte is a set of flags. Bit 0 ("fix") asks the target
 *   to repair what a fuzzer cannot guess: checksums, and pointers, which the
 *   input gives as offsets into the peer's slot buffer (a real peer's
 *   pointers are addresses in the shared window; ours are heap addresses
 *   that change from run to run). Without it the bytes are used as they are.
 * - FUZZ_WRITE_SEEDS=DIR makes the binary write its seed inputs, built from
 *   valid structures, into DIR and exit (`make fuzz-seeds`, which refreshes
 *   fuzz/corpus/TARGET/).
 */
#ifndef RPAL_FUZZ_H
#define RPAL_FUZZ_H

#include "rpal.h"
#include "internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_FIX 1u

/* The input, consumed from the front. Reads past its end give zeros, so
 * that a short input is a valid (mostly zero) one. */
struct fz_in {
    const uint8_t *p;
    size_t n;
};

static inline void fz_bytes(struct fz_in *in, void *out, size_t len)
{
    size_t k = len < in->n ? len : in->n;
    memcpy(out, in->p, k);
    memset((uint8_t *)out + k, 0, len - k);
    in->p += k;
    in->n -= k;
}

static inline uint8_t fz_u8(struct fz_in *in)
{
    uint8_t v;
    fz_bytes(in, &v, 1);
    return v;
}

static inline uint16_t fz_u16(struct fz_in *in)
{
    uint16_t v;
    fz_bytes(in, &v, sizeof v);
    return v;
}

static inline uint32_t fz_u32(struct fz_in *in)
{
    uint32_t v;
    fz_bytes(in, &v, sizeof v);
    return v;
}

/* A peer's slot: a buffer of exactly SIZE bytes, 64-aligned (rings are)
 * and so ended that AddressSanitizer reports a read one byte past it. It
 * holds the rest of the input (zeros after it). */
struct fz_slot {
    uint8_t *mem;
    uint64_t base, size;
};

static inline int fz_slot_fill(struct fz_slot *s, struct fz_in *in, size_t min, size_t max)
{
    size_t size = in->n < min ? min : in->n > max ? max : in->n;
    size = (size + 63) & ~(size_t)63; /* aligned_alloc wants a multiple */
    s->mem = aligned_alloc(64, size);
    if (!s->mem)
        return -1;
    fz_bytes(in, s->mem, size);
    s->base = (uint64_t)(uintptr_t)s->mem;
    s->size = size;
    return 0;
}

static inline void fz_slot_free(struct fz_slot *s)
{
    free(s->mem);
    s->mem = NULL;
}

/* With FZ_FIX: an offset read from the input becomes an address in S, as a
 * peer's pointer into its own slot would be (wrapping, like any value a
 * peer may write). */
static inline uint64_t fz_addr(const struct fz_slot *s, uint64_t off, unsigned flags)
{
    return (flags & FZ_FIX) ? s->base + off : off;
}

/* Read every byte of [P, P+N): what a consumer of a checked span does with
 * it. Under AddressSanitizer a span that leaves the buffer it was said to
 * lie in is reported here. */
static inline uint8_t fz_touch(const void *p, size_t n)
{
    const volatile uint8_t *b = p;
    uint8_t x = 0;
    for (size_t i = 0; i < n; i++)
        x ^= b[i];
    return x;
}

/* ---- seeds ---- */

static const char *fz_seed_dir;

/* Write one seed: the flags byte FLAGS, then the N bytes of P (several
 * pieces may follow with fz_seed_more before fz_seed_end). */
static FILE *fz_seed_file;
static inline void fz_seed_begin(const char *name, uint8_t flags)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", fz_seed_dir, name);
    fz_seed_file = fopen(path, "wb");
    if (!fz_seed_file) {
        perror(path);
        exit(1);
    }
    fputc(flags, fz_seed_file);
}

static inline void fz_seed_more(const void *p, size_t n)
{
    fwrite(p, 1, n, fz_seed_file);
}

static inline void fz_seed_end(void)
{
    if (fclose(fz_seed_file) != 0) {
        perror("seed");
        exit(1);
    }
}

/* Each target defines its seeds. */
static void fz_write_seeds(void);

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_seed_dir = getenv("FUZZ_WRITE_SEEDS");
    if (fz_seed_dir) {
        fz_write_seeds();
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
